#include "alertbotd-remediation.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alertbotd-escalation.h"
#include "alertbotd-notifications.h"
#include "alertbotd-policy.h"
#include "alertbotd-state.h"
#include "alertbotd-systemd.h"
#include "alertbotd-webhook.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"
#include "trace.h"

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
        case DECISION_REFUSED_HOST:
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
        if (k == DECISION_REFUSED_ALLOWLIST || k == DECISION_REFUSED_HOST)
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
                struct json_object *o = state_action_json(&inc->actions[i]);

                if (o)
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

int alertbotd_register_metrics(struct alertbotd_manager *m, struct metrics_registry *metrics)
{
        struct metric_family *duration;

        m->actions = metrics_counter_new(metrics, "vigil_alertbot_actions_total",
                                         "Remediation decisions about a unit, by result "
                                         "(success, failure, skipped_*, dry_run, "
                                         "refused_allowlist, refused_host)",
                                         (const char *const[]){"unit", "action", "result", NULL});
        m->circuit_open = metrics_gauge_new(metrics, "vigil_alertbot_circuit_open",
                                            "1 while the unit's circuit breaker is open or "
                                            "half-open",
                                            (const char *const[]){"unit", NULL});
        duration = metrics_histogram_new(metrics, "vigil_alertbot_decision_duration_seconds",
                                         "Time to decide about one alert", NULL,
                                         metrics_latency_buckets, metrics_latency_buckets_count);
        if (!m->actions || !m->circuit_open || !duration)
                return -ENOMEM;
        m->decision_duration = metrics_child(duration, NULL);
        return metrics_registry_add_collector(metrics, collect_breakers, m);
}

/* ---- the worker's life */

int alertbotd_worker_start(struct alertbotd_manager *m)
{
        int r = -pthread_create(&m->worker, NULL, worker, m);

        if (r >= 0)
                m->worker_started = true;
        return r;
}

void alertbotd_worker_stop(struct alertbotd_manager *m)
{
        pthread_mutex_lock(&m->lock);
        atomic_store(&m->stopping, true);
        pthread_cond_broadcast(&m->queue_changed);
        pthread_mutex_unlock(&m->lock);
}

void alertbotd_worker_done(struct alertbotd_manager *m)
{
        if (m->worker_started) {
                alertbotd_worker_stop(m);
                pthread_join(m->worker, NULL);
        }
        for (size_t i = 0; m->queue && i < m->queue_size; i++)
                job_free(m->queue[i]);
        free(m->queue);
}
