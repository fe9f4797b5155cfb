/* What vigil-alertbotd does with a webhook: decide, record, remediate.
 *
 * Flow: the webhook route decodes a payload and hands it to
 * alertbotd_handle_webhook(), which decides every alert under the
 * manager's lock (policy, on a copy of the state), writes the new state
 * durably and only then swaps it in and queues the restarts for the worker
 * thread. The worker restarts and verifies over D-Bus, records the
 * outcome, writes the audit entry and escalates what did not heal.
 *
 * Thread-safety: alertbotd_handle_webhook() and alertbotd_incidents_json()
 * are called from HTTP threads; they and the worker share the state under
 * the manager's lock. The worker functions are called from the main
 * thread. */
#pragma once

#include "alertbotd-manager.h"

struct json_object;
struct metrics_registry;
struct webhook;

/* Decide, record durably and queue the alerts of one payload. Returns 0
 * and, in *ret_summary, a JSON object {"alerts":n,"decisions":{kind:count}}
 * (new reference); -EAGAIN when the worker queue has no room for the
 * restarts decided (nothing was recorded: Alertmanager will retry), -EIO
 * (or the write's errno) when the state could not be written (nothing was
 * recorded either), -ENOMEM. */
int alertbotd_handle_webhook(struct alertbotd_manager *m, const struct webhook *w,
                             struct json_object **ret_summary);
/* {"incidents":[…]} newest first (at most [state] incidents_shown). */
struct json_object *alertbotd_incidents_json(struct alertbotd_manager *m);

/* vigil_alertbot_* families and the breaker gauge's collector. Returns 0
 * or a negative errno. */
int alertbotd_register_metrics(struct alertbotd_manager *m, struct metrics_registry *metrics);

/* Start the worker thread; a negative errno when it cannot be. */
int alertbotd_worker_start(struct alertbotd_manager *m);
/* Ask the worker to stop (a restart being verified ends as "interrupted");
 * returns at once. */
void alertbotd_worker_stop(struct alertbotd_manager *m);
/* Stop and join the worker if it runs, and free the jobs still queued. */
void alertbotd_worker_done(struct alertbotd_manager *m);
