#include "alertbotd-manager.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alertbotd-escalation.h"
#include "alertbotd-notifications.h"
#include "alertbotd-policy.h"
#include "alertbotd-routes.h"
#include "alertbotd-state.h"
#include "alertbotd-systemd.h"
#include "alertbotd-webhook.h"
#include "http-server.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"
#include "sd.h"
#include "trace.h"

#define TOKEN_MAX_SIZE   4096
#define TOKEN_MIN_SIZE   16
#define MAX_REQUEST_USEC (30 * USEC_PER_SEC)
#define DRAIN_TIMEOUT_MS 10000

const struct conf_key alertbotd_conf_table[] = {
        DAEMON_CONF_KEYS(struct alertbotd_config, "127.0.0.1:8005"),
        CONF_STRING("policy", "file", SYSCONFDIR "/vigil/alertbot-policy.conf", 4096,
                    struct alertbotd_config, policy_file,
                    "Remediation policy: rules, allowlist, cooldown, budget, breaker "
                    "(SIGHUP reloads it)"),
        CONF_BOOL("policy", "dry_run", "false", struct alertbotd_config, dry_run,
                  "Decide and audit every alert, but never restart a unit"),
        CONF_STRING("webhook", "token_file", "", 4096, struct alertbotd_config, webhook_token_file,
                    "Bearer token file when the webhook-token credential is absent"),
        CONF_INT("webhook", "max_alerts", "1000", 1, WEBHOOK_MAX_ALERTS, struct alertbotd_config,
                 webhook_max_alerts, "Alerts accepted in one notification (more: 400)"),
        CONF_STRING("state", "directory", LOCALSTATEDIR "/lib/vigil-alertbot", 4096,
                    struct alertbotd_config, state_directory,
                    "Where dedup keys, cooldowns, breakers and incidents are kept"),
        CONF_INT("state", "incidents_shown", "100", 1, STATE_MAX_INCIDENTS, struct alertbotd_config,
                 incidents_shown, "Incidents listed by GET /incidents, newest first"),
        CONF_STRING("systemd", "bus", "system", 1024, struct alertbotd_config, systemd_bus,
                    "system, session, or a D-Bus address (unix:path=...) to reach systemd on"),
        CONF_INT("worker", "queue_size", "64", 1, 1024, struct alertbotd_config, worker_queue_size,
                 "Restarts waiting for the worker (more: 503, retried)"),
        CONF_STRING("escalation", "url", "", 1024, struct alertbotd_config, escalation_url,
                    "Webhook told when the bot will not or cannot heal; empty: recorded on "
                    "this host (journal, GET /notifications)"),
        CONF_STRING("escalation", "token_file", "", 4096, struct alertbotd_config,
                    escalation_token_file,
                    "Bearer token file when the escalation-token credential is absent"),
        CONF_INT("escalation", "max_attempts", "6", 1, 20, struct alertbotd_config,
                 escalation_max_attempts, "Deliveries tried per escalation"),
        CONF_INT("escalation", "initial_backoff_ms", "1000", 10, 60000, struct alertbotd_config,
                 escalation_initial_backoff_ms, "First retry delay; doubles per attempt"),
        CONF_INT("escalation", "queue_size", "64", 1, 1024, struct alertbotd_config,
                 escalation_queue_size, "Escalations waiting to be sent (the oldest is dropped)"),
        CONF_INT("notifications", "kept", "200", 1, NOTIFICATIONS_MAX_KEPT, struct alertbotd_config,
                 notifications_kept,
                 "Notifications (POST /notify, escalations without a url) listed by GET "
                 "/notifications, newest first; each is also in the journal"),
};
const size_t alertbotd_conf_table_size = ELEMENTSOF(alertbotd_conf_table);

/* A restart the worker runs; owns its strings. */
struct remediation_job {
        char unit[STATE_UNIT_MAX + 1];
        char fingerprint[STATE_FINGERPRINT_MAX + 1];
        char starts_at[STATE_TIMESTAMP_MAX + 1];
        char alertname[STATE_ALERTNAME_MAX + 1];
        char *ready_url;
        uint64_t timeout_usec;
        struct json_object *alert; /* for the escalation */
};

static void job_free(struct remediation_job *j)
{
        if (!j)
                return;
        free(j->ready_url);
        json_object_put(j->alert);
        free(j);
}

/* ---- audit and metrics */

static int decision_priority(enum decision_kind k)
{
        switch (k) {
        case DECISION_FAILED:
                return LOG_ERR;
        case DECISION_SKIPPED_BREAKER:
        case DECISION_SKIPPED_BUDGET:
        case DECISION_REFUSED_ALLOWLIST:
                return LOG_WARNING;
        case DECISION_ACTED:
        case DECISION_DRY_RUN:
        case DECISION_SKIPPED_COOLDOWN:
        case DECISION_RESOLVED:
                return LOG_NOTICE;
        default:
                return LOG_INFO;
        }
}

/* One journald entry per decision, with its MESSAGE_ID. */
static void audit(enum decision_kind kind, const char *alertname, const char *fingerprint,
                  const char *unit, const char *action, const char *result, int64_t duration_ms,
                  const char *reason)
{
        char duration[24];

        snprintf(duration, sizeof(duration), "%" PRId64, duration_ms);
        const struct log_field fields[] = {
                {"MESSAGE_ID", decision_kind_message_id(kind)},
                {"DECISION", decision_kind_to_string(kind)},
                {"ALERT_NAME", alertname},
                {"FINGERPRINT", fingerprint},
                {"UNIT", unit},
                {"ACTION", action},
                {"RESULT", result},
                {"DURATION_MS", duration},
        };
        log_fields(decision_priority(kind), 0, fields, ELEMENTSOF(fields),
                   "Alert %s: %s %s%s%s: %s", alertname, decision_kind_to_string(kind),
                   *action ? action : "-", *unit ? " " : "", unit, reason);
}

static const char *action_result(enum decision_kind k)
{
        switch (k) {
        case DECISION_ACTED:
                return "success";
        case DECISION_FAILED:
                return "failure";
        default:
                return decision_kind_to_string(k);
        }
}

/* Decisions about a unit count as actions (taken or not). A refused unit's
 * name comes from whoever posted the alert: refusals share one series,
 * unit="other" (no unit is called that), so no one can add series. */
static void count_action(struct alertbotd_manager *m, enum decision_kind k, const char *unit,
                         const char *action)
{
        if (!*unit || !*action || k == DECISION_DUPLICATE || k == DECISION_RESOLVED ||
            k == DECISION_UNMATCHED)
                return;
        if (k == DECISION_REFUSED_ALLOWLIST)
                unit = "other";
        metrics_counter_inc(metrics_child3(m->actions, unit, action, action_result(k)));
}

static void collect_breakers(struct metrics_registry *r, void *userdata)
{
        struct alertbotd_manager *m = userdata;
        int64_t now = (int64_t)time(NULL);

        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < m->state->n_units; i++) {
                const char *unit = m->state->units[i].name;
                enum breaker_state b = policy_breaker_state(m->policy, m->state, unit, now);

                metrics_gauge_set(metrics_child1(m->circuit_open, unit),
                                  b == BREAKER_CLOSED ? 0.0 : 1.0);
        }
        pthread_mutex_unlock(&m->lock);
}

/* ---- escalation */

static struct json_object *alert_json(const struct webhook_alert *a)
{
        struct json_object *o = json_object_new_object(), *labels = json_object_new_object(),
                           *annotations = json_object_new_object();

        if (!o || !labels || !annotations) {
                json_object_put(o);
                json_object_put(labels);
                json_object_put(annotations);
                return NULL;
        }
        json_object_object_add(o, "status",
                               json_object_new_string(a->firing ? "firing" : "resolved"));
        for (size_t i = 0; i < a->n_labels; i++)
                json_object_object_add(labels, a->labels[i].name,
                                       json_object_new_string(a->labels[i].value));
        for (size_t i = 0; i < a->n_annotations; i++)
                json_object_object_add(annotations, a->annotations[i].name,
                                       json_object_new_string(a->annotations[i].value));
        json_object_object_add(o, "labels", labels);
        json_object_object_add(o, "annotations", annotations);
        json_object_object_add(o, "startsAt", json_object_new_string(a->starts_at));
        json_object_object_add(o, "endsAt", json_object_new_string(a->ends_at));
        json_object_object_add(o, "fingerprint", json_object_new_string(a->fingerprint));
        json_object_object_add(o, "generatorURL", json_object_new_string(a->generator_url));
        return o;
}

/* Send {"alert","actions","results"} for an incident, or record it on the
 * host without [escalation] url. Takes a reference on alert. Call with the
 * lock held (reads the incident). */
static void escalate(struct alertbotd_manager *m, struct json_object *alert,
                     const struct state_incident *inc, struct json_object *result)
{
        _cleanup_(json_object_putp) struct json_object *body = json_object_new_object();
        struct json_object *actions = json_object_new_array(), *results = json_object_new_array();

        if (!body || !actions || !results) {
                json_object_put(actions);
                json_object_put(results);
                json_object_put(result);
                log_error_errno(ENOMEM, "Cannot escalate: out of memory");
                return;
        }
        json_object_object_add(body, "alert", json_object_get(alert));
        for (size_t i = 0; inc && i < inc->n_actions; i++) {
                const struct state_action *a = &inc->actions[i];
                struct json_object *o = json_object_new_object();

                if (!o)
                        continue;
                json_object_object_add(o, "at", json_object_new_int64(a->at));
                json_object_object_add(o, "decision", json_object_new_string(a->decision));
                json_object_object_add(o, "action", json_object_new_string(a->action));
                json_object_object_add(o, "unit", json_object_new_string(a->unit));
                json_object_object_add(o, "result", json_object_new_string(a->result));
                json_object_object_add(o, "duration_ms", json_object_new_int64(a->duration_ms));
                json_object_array_add(actions, o);
        }
        json_object_array_add(results, result);
        json_object_object_add(body, "actions", actions);
        json_object_object_add(body, "results", results);
        json_object_object_add(body, "source", json_object_new_string(alertbotd_ops.name));
        if (!m->escalation) {
                (void)notifications_record_escalation(m->notifications, body);
                return;
        }
        if (escalation_submit(m->escalation, body) < 0)
                log_error_errno(ENOMEM, "Cannot escalate: out of memory");
}

static struct json_object *decision_result(const struct decision *d)
{
        struct json_object *o = json_object_new_object();

        if (!o)
                return NULL;
        json_object_object_add(o, "decision",
                               json_object_new_string(decision_kind_to_string(d->kind)));
        json_object_object_add(o, "unit", json_object_new_string(d->unit));
        json_object_object_add(o, "reason", json_object_new_string(d->reason));
        return o;
}

/* ---- state */

/* Write m->state; logs a failure once per change of state_ok. Call with
 * the lock held. */
static int save_state(struct alertbotd_manager *m, const struct alertbot_state *s)
{
        int r = state_save(s, m->config->state_directory);

        if (r < 0) {
                if (atomic_exchange(&m->state_ok, false))
                        log_error_errno(r, "Failed to write the state to %s: %m",
                                        m->config->state_directory);
                return r;
        }
        if (!atomic_exchange(&m->state_ok, true))
                log_notice("State written to %s again", m->config->state_directory);
        return 0;
}

/* ---- webhook */

int alertbotd_handle_webhook(struct alertbotd_manager *m, const struct webhook *w,
                             struct json_object **ret_summary)
{
        _cleanup_(json_object_putp) struct json_object *summary = json_object_new_object();
        struct json_object *counts = json_object_new_object();
        struct decision *decisions = NULL;
        struct remediation_job **jobs = NULL;
        size_t n_jobs = 0;
        int64_t now = (int64_t)time(NULL);
        int r = 0;

        if (!summary || !counts) {
                json_object_put(counts);
                return -ENOMEM;
        }
        json_object_object_add(summary, "alerts", json_object_new_int64((int64_t)w->n_alerts));
        json_object_object_add(summary, "decisions", counts);
        decisions = calloc(w->n_alerts ? w->n_alerts : 1, sizeof(*decisions));
        jobs = calloc(w->n_alerts ? w->n_alerts : 1, sizeof(*jobs));
        if (!decisions || !jobs) {
                free(decisions);
                free(jobs);
                return -ENOMEM;
        }

        pthread_mutex_lock(&m->lock);
        state_copy(m->scratch, m->state);
        for (size_t i = 0; i < w->n_alerts; i++) {
                const struct webhook_alert *a = &w->alerts[i];
                uint64_t t0 = now_usec(CLOCK_MONOTONIC);
                int64_t starts = 0;

                (void)policy_parse_time(a->starts_at, &starts);
                policy_decide(m->policy, m->scratch, a, starts, m->dry_run, now, &decisions[i]);
                metrics_histogram_observe(m->decision_duration,
                                          (double)(now_usec(CLOCK_MONOTONIC) - t0) / 1e6, NULL);
                if (!decisions[i].act)
                        continue;

                struct remediation_job *j = calloc(1, sizeof(*j));
                const char *ready = policy_unit_ready_url(m->policy, decisions[i].unit);

                if (!j || (ready && !(j->ready_url = strdup(ready)))) {
                        job_free(j);
                        r = -ENOMEM;
                        goto unlock;
                }
                state_set_string(j->unit, STATE_UNIT_MAX, decisions[i].unit);
                state_set_string(j->fingerprint, STATE_FINGERPRINT_MAX, a->fingerprint);
                state_set_string(j->starts_at, STATE_TIMESTAMP_MAX, a->starts_at);
                snprintf(j->alertname, sizeof(j->alertname), "%s",
                         webhook_alert_label(a, "alertname"));
                j->timeout_usec = (uint64_t)m->policy->verify_timeout_seconds * USEC_PER_SEC;
                j->alert = alert_json(a);
                jobs[n_jobs++] = j;
        }

        if (n_jobs > m->queue_size - m->queue_count) {
                r = -EAGAIN;
                goto unlock;
        }
        r = save_state(m, m->scratch);
        if (r < 0)
                goto unlock;

        /* Durable: make it the state, queue the restarts, audit. */
        {
                struct alertbot_state *t = m->state;

                m->state = m->scratch;
                m->scratch = t;
        }
        for (size_t i = 0; i < n_jobs; i++) {
                m->queue[(m->queue_head + m->queue_count) % m->queue_size] = jobs[i];
                m->queue_count++;
                jobs[i] = NULL;
        }
        if (n_jobs > 0)
                pthread_cond_signal(&m->queue_changed);

        for (size_t i = 0; i < w->n_alerts; i++) {
                const struct webhook_alert *a = &w->alerts[i];
                const struct decision *d = &decisions[i];
                const char *alertname = webhook_alert_label(a, "alertname");
                const char *action = d->rule ? policy_action_to_string(d->rule->action) : "";
                struct json_object *c;
                int64_t n = 0;

                if (json_object_object_get_ex(counts, decision_kind_to_string(d->kind), &c))
                        n = json_object_get_int64(c);
                json_object_object_add(counts, decision_kind_to_string(d->kind),
                                       json_object_new_int64(n + 1));
                if (d->act) {
                        log_info("Alert %s: restarting %s (%s)", alertname, d->unit, d->reason);
                        continue; /* audited when the outcome is known */
                }
                audit(d->kind, alertname, a->fingerprint, d->unit, action, "none", 0, d->reason);
                count_action(m, d->kind, d->unit, action);
                if (d->escalate) {
                        _cleanup_(json_object_putp) struct json_object *aj = alert_json(a);

                        escalate(m, aj, state_incident_find(m->state, a->fingerprint, a->starts_at),
                                 decision_result(d));
                }
        }

unlock:
        pthread_mutex_unlock(&m->lock);
        for (size_t i = 0; i < n_jobs; i++)
                job_free(jobs[i]);
        free(jobs);
        free(decisions);
        if (r < 0)
                return r;
        *ret_summary = TAKE_PTR(summary);
        return 0;
}

struct json_object *alertbotd_incidents_json(struct alertbotd_manager *m)
{
        struct json_object *o;

        pthread_mutex_lock(&m->lock);
        o = state_incidents_json(m->state, (size_t)m->config->incidents_shown);
        pthread_mutex_unlock(&m->lock);
        return o;
}

/* ---- worker */

/* Record the outcome of job in the state and the audit log; escalate what
 * did not heal. */
static void finish_job(struct alertbotd_manager *m, struct remediation_job *j,
                       const struct systemd_result *res)
{
        bool healed = res->outcome == SYSTEMD_OUTCOME_DONE;
        bool interrupted = res->outcome == SYSTEMD_OUTCOME_INTERRUPTED;
        enum decision_kind kind = healed ? DECISION_ACTED : DECISION_FAILED;
        const char *result = systemd_outcome_to_string(res->outcome);
        int64_t now = (int64_t)time(NULL), duration_ms = (int64_t)(res->duration_usec / 1000);
        struct state_incident *inc;
        bool opened = false;

        pthread_mutex_lock(&m->lock);
        if (interrupted) {
                struct state_unit *u = state_unit_get(m->state, j->unit, false, now);

                if (u)
                        u->probe_in_flight = false;
        } else {
                opened = policy_record_outcome(m->policy, m->state, j->unit, healed, now);
        }
        inc = state_incident_find(m->state, j->fingerprint, j->starts_at);
        for (size_t i = inc ? inc->n_actions : 0; i > 0; i--) {
                struct state_action *a = &inc->actions[i - 1];

                if (strcmp(a->result, "started") == 0 && strcmp(a->unit, j->unit) == 0) {
                        snprintf(a->decision, sizeof(a->decision), "%s",
                                 decision_kind_to_string(kind));
                        snprintf(a->result, sizeof(a->result), "%s", result);
                        a->duration_ms = duration_ms;
                        break;
                }
        }
        (void)save_state(m, m->state);

        audit(kind, j->alertname, j->fingerprint, j->unit, "restart", result, duration_ms,
              res->detail);
        if (!interrupted)
                count_action(m, kind, j->unit, "restart");
        if (opened)
                log_warning("Circuit breaker for %s opened: its restarts do not heal it; "
                            "escalating instead of restarting",
                            j->unit);
        if (!healed && !interrupted) {
                struct json_object *o = json_object_new_object();

                if (o) {
                        json_object_object_add(o, "decision", json_object_new_string("failed"));
                        json_object_object_add(o, "unit", json_object_new_string(j->unit));
                        json_object_object_add(o, "outcome", json_object_new_string(result));
                        json_object_object_add(o, "job", json_object_new_string(res->job));
                        json_object_object_add(o, "job_result",
                                               json_object_new_string(res->job_result));
                        json_object_object_add(o, "active_state",
                                               json_object_new_string(res->active_state));
                        json_object_object_add(o, "detail", json_object_new_string(res->detail));
                        json_object_object_add(o, "duration_ms",
                                               json_object_new_int64(duration_ms));
                        json_object_object_add(o, "circuit_open", json_object_new_boolean(opened));
                }
                escalate(m, j->alert, inc, o);
        }
        pthread_mutex_unlock(&m->lock);
}

static void *worker(void *userdata)
{
        struct alertbotd_manager *m = userdata;

        for (;;) {
                struct remediation_job *j;
                struct systemd_result res;

                pthread_mutex_lock(&m->lock);
                while (!atomic_load(&m->stopping) && m->queue_count == 0)
                        pthread_cond_wait(&m->queue_changed, &m->lock);
                if (atomic_load(&m->stopping)) {
                        pthread_mutex_unlock(&m->lock);
                        return NULL;
                }
                j = m->queue[m->queue_head];
                m->queue[m->queue_head] = NULL;
                m->queue_head = (m->queue_head + 1) % m->queue_size;
                m->queue_count--;
                m->worker_busy = true;
                pthread_mutex_unlock(&m->lock);

                (void)systemd_restart_unit(m->config->systemd_bus, j->unit, j->ready_url,
                                           j->timeout_usec, &m->stopping, &res);
                finish_job(m, j, &res);
                job_free(j);

                pthread_mutex_lock(&m->lock);
                m->worker_busy = false;
                pthread_mutex_unlock(&m->lock);
        }
}

/* ---- lifecycle */

static void manager_free(void *userdata)
{
        struct alertbotd_manager *m = userdata;

        if (!m)
                return;
        http_server_free(m->http);
        if (m->worker_started) {
                pthread_mutex_lock(&m->lock);
                atomic_store(&m->stopping, true);
                pthread_cond_broadcast(&m->queue_changed);
                pthread_mutex_unlock(&m->lock);
                pthread_join(m->worker, NULL);
        }
        for (size_t i = 0; m->queue && i < m->queue_size; i++)
                job_free(m->queue[i]);
        free(m->queue);
        notifications_free(m->notifications);
        escalation_free(m->escalation);
        state_free(m->scratch);
        state_free(m->state);
        policy_free(m->policy);
        erase_and_free(m->escalation_token);
        erase_and_free(m->webhook_token);
        tracer_free(m->tracer);
        metrics_registry_free(m->metrics);
        pthread_cond_destroy(&m->queue_changed);
        pthread_mutex_destroy(&m->lock);
        free(m);
}

static int load_token(const char *credential, const char *file_key, const char *file, char **ret)
{
        size_t len;
        int r;

        r = conf_read_credential(credential, file, TOKEN_MAX_SIZE, ret, &len);
        if (r == -ENOENT)
                return log_error_errno(r,
                                       "No %s: provide the %s credential "
                                       "(LoadCredential=%s:…) or %s",
                                       credential, credential, credential, file_key);
        if (r < 0)
                return log_error_errno(r, "Failed to read the %s credential: %m", credential);
        if (len < TOKEN_MIN_SIZE) {
                erase_and_freep(ret);
                return log_error_errno(EINVAL,
                                       "The %s credential is %zu bytes, at least %d "
                                       "needed",
                                       credential, len, TOKEN_MIN_SIZE);
        }
        return 0;
}

static int load_policy(const char *path, struct policy **ret)
{
        _cleanup_free_ char *error = NULL;
        int r;

        r = policy_load_file(path, ret, &error);
        if (r == -EINVAL && error)
                return log_error_errno(r, "Invalid policy: %s", error);
        if (r < 0)
                return log_error_errno(r, "Failed to load the policy %s: %m", path);
        return 0;
}

static int ready(void *userdata, const char **ret_failing)
{
        struct alertbotd_manager *m = userdata;

        if (!atomic_load(&m->state_ok)) {
                *ret_failing = "state";
                return -EIO;
        }
        return 0;
}

static int manager_new(const void *config, void **ret)
{
        const struct alertbotd_config *c = config;
        struct alertbotd_manager *m;
        struct metric_family *duration;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return log_error_errno(ENOMEM, "Out of memory");
        m->config = c;
        pthread_mutex_init(&m->lock, NULL);
        pthread_cond_init(&m->queue_changed, NULL);
        m->dry_run = c->dry_run;

        r = load_token("webhook-token", "[webhook] token_file", c->webhook_token_file,
                       &m->webhook_token);
        if (r < 0)
                goto fail;
        if (*c->escalation_url) {
                r = load_token("escalation-token", "[escalation] token_file",
                               c->escalation_token_file, &m->escalation_token);
                if (r < 0)
                        goto fail;
        }
        r = load_policy(c->policy_file, &m->policy);
        if (r < 0)
                goto fail;

        if (state_new(&m->state) < 0 || state_new(&m->scratch) < 0)
                goto fail_oom;
        r = state_load(m->state, c->state_directory);
        if (r == -ENOENT) {
                log_info("No state in %s yet: starting fresh", c->state_directory);
        } else if (r < 0) {
                log_error_errno(r,
                                "Failed to load the state from %s/%s: %m (move the file "
                                "away to start afresh)",
                                c->state_directory, STATE_FILE_NAME);
                goto fail;
        } else {
                log_info("State loaded from %s: %zu incidents, %zu units", c->state_directory,
                         m->state->n_incidents, m->state->n_units);
        }
        /* Fails early when the directory is not writable. */
        r = state_save(m->state, c->state_directory);
        if (r < 0) {
                log_error_errno(r, "Cannot write the state to %s: %m", c->state_directory);
                goto fail;
        }
        atomic_store(&m->state_ok, true);

        m->queue_size = (size_t)c->worker_queue_size;
        m->queue = calloc(m->queue_size, sizeof(*m->queue));
        if (!m->queue)
                goto fail_oom;

        r = metrics_registry_new(&m->metrics);
        if (r < 0)
                goto fail_oom;
        r = metrics_register_process(m->metrics);
        if (r >= 0)
                r = metrics_register_build_info(m->metrics, PACKAGE_VERSION);
        if (r < 0)
                goto fail_oom;
        m->actions = metrics_counter_new(m->metrics, "vigil_alertbot_actions_total",
                                         "Remediation decisions about a unit, by result "
                                         "(success, failure, skipped_*, dry_run, "
                                         "refused_allowlist)",
                                         (const char *const[]){"unit", "action", "result", NULL});
        m->circuit_open = metrics_gauge_new(m->metrics, "vigil_alertbot_circuit_open",
                                            "1 while the unit's circuit breaker is open or "
                                            "half-open",
                                            (const char *const[]){"unit", NULL});
        duration = metrics_histogram_new(m->metrics, "vigil_alertbot_decision_duration_seconds",
                                         "Time to decide about one alert", NULL,
                                         metrics_latency_buckets, metrics_latency_buckets_count);
        if (!m->actions || !m->circuit_open || !duration)
                goto fail_oom;
        m->decision_duration = metrics_child(duration, NULL);
        r = metrics_registry_add_collector(m->metrics, collect_breakers, m);
        if (r < 0)
                goto fail_oom;

        r = daemon_tracer_new(&c->common, alertbotd_ops.name, m->metrics, &m->tracer);
        if (r < 0) {
                log_error_errno(r, "Failed to set up tracing to %s: %m",
                                c->common.tracing_otlp_endpoint);
                goto fail;
        }

        if (*c->escalation_url) {
                struct escalation_options eo = {
                        .url = c->escalation_url,
                        .token = m->escalation_token,
                        .queue_size = (size_t)c->escalation_queue_size,
                        .max_attempts = (unsigned)c->escalation_max_attempts,
                        .initial_backoff_ms = (unsigned)c->escalation_initial_backoff_ms,
                        .metrics = m->metrics,
                        .tracer = m->tracer,
                };
                r = escalation_new(&eo, &m->escalation);
                if (r < 0) {
                        log_error_errno(r, "Failed to set up escalation to %s: %m",
                                        c->escalation_url);
                        goto fail;
                }
        } else {
                log_info("[escalation] url is empty: refusals and failed remediations are "
                         "recorded on this host (journal, GET /notifications)");
        }
        r = notifications_new((size_t)c->notifications_kept, m->metrics, &m->notifications);
        if (r < 0)
                goto fail_oom;

        *ret = m;
        return 0;

fail_oom:
        log_error_errno(ENOMEM, "Out of memory");
        r = -ENOMEM;
fail:
        manager_free(m);
        return r;
}

static int manager_start(void *userdata)
{
        struct alertbotd_manager *m = userdata;
        struct http_server_options opts = {
                .service_name = alertbotd_ops.name,
                .max_body = WEBHOOK_MAX_BODY,
                .metrics = m->metrics,
                .tracer = m->tracer,
                .ready = ready,
                .userdata = m,
        };
        int r;

        r = -pthread_create(&m->worker, NULL, worker, m);
        if (r < 0)
                return log_error_errno(r, "Failed to start the remediation worker: %m");
        m->worker_started = true;

        r = daemon_http_server_start(&m->config->common, &opts, alertbotd_routes,
                                     alertbotd_routes_count, &m->http);
        if (r < 0)
                return r;
        log_info("%zu rules, %s", m->policy->n_rules,
                 m->dry_run ? "dry run (no restarts)" : "remediating");
        return 0;
}

static bool manager_tick(void *userdata)
{
        struct alertbotd_manager *m = userdata;

        pthread_mutex_lock(&m->lock);
        snprintf(m->status, sizeof(m->status), "%s%s; %zu restart%s queued%s",
                 atomic_load(&m->state_ok) ? "Serving" : "Degraded: state not writable",
                 m->dry_run ? " (dry run)" : "", m->queue_count + (m->worker_busy ? 1 : 0),
                 m->queue_count + (m->worker_busy ? 1 : 0) == 1 ? "" : "s",
                 m->worker_busy ? ", one running" : "");
        pthread_mutex_unlock(&m->lock);
        return http_server_is_healthy(m->http, MAX_REQUEST_USEC);
}

static const char *manager_status(void *userdata)
{
        struct alertbotd_manager *m = userdata;

        return m->status[0] ? m->status : "Serving";
}

/* SIGHUP: a new policy file and dry_run; on a bad policy keep the old one. */
static int manager_reload(void *userdata, const void *config)
{
        struct alertbotd_manager *m = userdata;
        const struct alertbotd_config *c = config;
        struct policy *p = NULL, *old;
        int r;

        r = load_policy(c->policy_file, &p);
        if (r < 0)
                return r;
        pthread_mutex_lock(&m->lock);
        old = m->policy;
        m->policy = p;
        m->dry_run = c->dry_run;
        pthread_mutex_unlock(&m->lock);
        policy_free(old);
        log_notice("Policy reloaded from %s: %zu rules%s", c->policy_file, p->n_rules,
                   c->dry_run ? ", dry run" : "");
        return 0;
}

static void manager_stop(void *userdata)
{
        struct alertbotd_manager *m = userdata;

        http_server_drain(m->http, DRAIN_TIMEOUT_MS);
        /* A restart being verified ends as "interrupted". */
        pthread_mutex_lock(&m->lock);
        atomic_store(&m->stopping, true);
        pthread_cond_broadcast(&m->queue_changed);
        pthread_mutex_unlock(&m->lock);
}

const struct daemon_ops alertbotd_ops = {
        .name = "vigil-alertbotd",
        .description = "Alertmanager webhook → remediation policy → systemd restarts",
        .default_config = SYSCONFDIR "/vigil/alertbotd.conf",
        .conf_table = alertbotd_conf_table,
        .n_conf_keys = ELEMENTSOF(alertbotd_conf_table),
        .config_size = sizeof(struct alertbotd_config),
        .manager_new = manager_new,
        .manager_start = manager_start,
        .manager_reload = manager_reload,
        .manager_tick = manager_tick,
        .manager_status = manager_status,
        .manager_stop = manager_stop,
        .manager_free = manager_free,
};
