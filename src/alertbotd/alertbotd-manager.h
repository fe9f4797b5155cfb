/* vigil-alertbotd's manager: owns the configuration, the metrics registry,
 * the tracer, the secrets, the policy, the durable state, the remediation
 * worker, the escalation sender (or, without [escalation] url, the list
 * of notifications recorded on the host, which POST /notify also feeds)
 * and the HTTP server, created in that order and torn down in reverse.
 *
 * Flow: the webhook route decodes a payload and hands it to
 * alertbotd_handle_webhook(), which decides every alert under the lock
 * (policy, on a copy of the state), writes the new state durably and only
 * then swaps it in and queues the restarts for the worker thread. The
 * worker restarts and verifies over D-Bus, records the outcome, writes
 * the audit entry and escalates what did not heal.
 *
 * Thread-safety: alertbotd_handle_webhook() and alertbotd_incidents_json()
 * are called from HTTP threads; they and the worker share the state under
 * one mutex. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon.h"

struct json_object;
struct webhook;

struct alertbotd_config {
        struct daemon_config common;
        char *policy_file;
        bool dry_run;
        char *webhook_token_file;
        int64_t webhook_max_alerts;
        char *state_directory;
        int64_t incidents_shown;
        char *systemd_bus;
        int64_t worker_queue_size;
        char *escalation_url;
        char *escalation_token_file;
        int64_t escalation_max_attempts;
        int64_t escalation_initial_backoff_ms;
        int64_t escalation_queue_size;
        int64_t notifications_kept;
};

struct remediation_job;

struct alertbotd_manager {
        const struct alertbotd_config *config;
        struct metrics_registry *metrics;
        struct tracer *tracer;
        char *webhook_token;
        char *escalation_token;
        struct escalation *escalation;       /* NULL: escalations go to notifications */
        struct notifications *notifications; /* POST /notify, GET /notifications */
        struct http_server *http;

        /* Guards everything below up to the worker's fields. */
        pthread_mutex_t lock;
        pthread_cond_t queue_changed;
        struct policy *policy;
        bool dry_run;
        struct alertbot_state *state;   /* what is on disk */
        struct alertbot_state *scratch; /* the copy a webhook decides on */
        struct remediation_job **queue; /* ring */
        size_t queue_size, queue_head, queue_count;
        bool worker_busy;
        atomic_bool state_ok; /* the last state write succeeded */
        atomic_bool stopping;

        pthread_t worker;
        bool worker_started;

        struct metric_family *actions;      /* vigil_alertbot_actions_total */
        struct metric_family *circuit_open; /* vigil_alertbot_circuit_open */
        struct metric *decision_duration;   /* vigil_alertbot_decision_duration_seconds */
        char status[128];
};

extern const struct daemon_ops alertbotd_ops;

/* Exposed for tests: the configuration table of vigil-alertbotd. */
extern const struct conf_key alertbotd_conf_table[];
extern const size_t alertbotd_conf_table_size;

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
