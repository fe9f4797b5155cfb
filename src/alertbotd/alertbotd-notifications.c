#include "alertbotd-notifications.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alertbotd-webhook.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"
#include "utf8.h"

/* Sizes kept per field (bytes, without the NUL). */
#define RECEIVER_MAX    128
#define ALERTNAME_MAX   128
#define SEVERITY_MAX    64
#define SERVICE_MAX     128
#define SUMMARY_MAX     1024
#define TIMESTAMP_MAX   WEBHOOK_MAX_TIMESTAMP
#define FINGERPRINT_MAX WEBHOOK_MAX_FINGERPRINT
#define RUNBOOK_MAX     512
#define REASON_MAX      512

/* The receivers the shipped alertmanager.yml points here; any other name
 * is counted as "other". */
static const char *const known_receivers[] = {"escalation", "tickets"};

struct entry {
        int64_t received_at;
        bool firing;
        char receiver[RECEIVER_MAX + 1];
        char alertname[ALERTNAME_MAX + 1];
        char severity[SEVERITY_MAX + 1];
        char service[SERVICE_MAX + 1];
        char summary[SUMMARY_MAX + 1];
        char starts_at[TIMESTAMP_MAX + 1];
        char fingerprint[FINGERPRINT_MAX + 1];
        char runbook_url[RUNBOOK_MAX + 1];
        char reason[REASON_MAX + 1];
};

struct notifications {
        pthread_mutex_t lock;
        struct entry *ring;
        size_t kept, next, count; /* next: where the newest goes */
        struct metric_family *total;
};

static const char *bounded_receiver(const char *receiver)
{
        for (size_t i = 0; i < ELEMENTSOF(known_receivers); i++)
                if (receiver && strcmp(receiver, known_receivers[i]) == 0)
                        return known_receivers[i];
        return "other";
}

int notifications_new(size_t kept, struct metrics_registry *metrics, struct notifications **ret)
{
        struct notifications *n;

        if (kept < 1 || kept > NOTIFICATIONS_MAX_KEPT)
                return -EINVAL;
        n = calloc(1, sizeof(*n));
        if (!n)
                return -ENOMEM;
        pthread_mutex_init(&n->lock, NULL);
        n->kept = kept;
        n->ring = calloc(kept, sizeof(*n->ring));
        if (!n->ring) {
                notifications_free(n);
                return -ENOMEM;
        }
        if (metrics) {
                n->total = metrics_counter_new(
                        metrics, "vigil_alertbot_notifications_total",
                        "Notifications recorded on this host (POST /notify and the bot's "
                        "escalations), by receiver (escalation, tickets, other) and status",
                        (const char *const[]){"receiver", "status", NULL});
                if (!n->total) {
                        notifications_free(n);
                        return -ENOMEM;
                }
                /* The known series exist from the start, at 0. */
                for (size_t i = 0; i < ELEMENTSOF(known_receivers); i++) {
                        (void)metrics_child2(n->total, known_receivers[i], "firing");
                        (void)metrics_child2(n->total, known_receivers[i], "resolved");
                }
        }
        *ret = n;
        return 0;
}

void notifications_free(struct notifications *n)
{
        if (!n)
                return;
        free(n->ring);
        pthread_mutex_destroy(&n->lock);
        free(n);
}

static int priority_of(const struct entry *e)
{
        if (!e->firing)
                return LOG_INFO;
        return strcmp(e->severity, "page") == 0 ? LOG_WARNING : LOG_NOTICE;
}

/* One journal entry; fields left empty are still present, so a query on
 * them finds the entry. */
static void log_entry(const struct entry *e)
{
        const struct log_field fields[] = {
                {"MESSAGE_ID",
                 e->firing ? NOTIFICATION_FIRING_MESSAGE_ID : NOTIFICATION_RESOLVED_MESSAGE_ID},
                {"RECEIVER", e->receiver},
                {"STATUS", e->firing ? "firing" : "resolved"},
                {"ALERTNAME", e->alertname},
                {"SEVERITY", e->severity},
                {"SERVICE", e->service},
                {"SUMMARY", e->summary},
                {"STARTS_AT", e->starts_at},
                {"FINGERPRINT", e->fingerprint},
                {"RUNBOOK_URL", e->runbook_url},
                {"REASON", *e->reason ? e->reason : NULL},
        };

        log_fields(priority_of(e), 0, fields, ELEMENTSOF(fields), "%s %s (%s%s%s) to %s: %s%s%s",
                   e->alertname, e->firing ? "firing" : "resolved",
                   *e->severity ? e->severity : "no severity", *e->service ? ", " : "", e->service,
                   e->receiver, *e->summary ? e->summary : "(no summary)", *e->reason ? "; " : "",
                   e->reason);
}

void notifications_record(struct notifications *n, const struct notification *x)
{
        struct entry *e;

        assert(n);
        assert(x);

        pthread_mutex_lock(&n->lock);
        e = &n->ring[n->next];
        e->received_at = (int64_t)time(NULL);
        e->firing = x->firing;
        utf8_copy_cut(e->receiver, RECEIVER_MAX, x->receiver);
        utf8_copy_cut(e->alertname, ALERTNAME_MAX, x->alertname);
        utf8_copy_cut(e->severity, SEVERITY_MAX, x->severity);
        utf8_copy_cut(e->service, SERVICE_MAX, x->service);
        utf8_copy_cut(e->summary, SUMMARY_MAX, x->summary);
        utf8_copy_cut(e->starts_at, TIMESTAMP_MAX, x->starts_at);
        utf8_copy_cut(e->fingerprint, FINGERPRINT_MAX, x->fingerprint);
        utf8_copy_cut(e->runbook_url, RUNBOOK_MAX, x->runbook_url);
        utf8_copy_cut(e->reason, REASON_MAX, x->reason);
        n->next = (n->next + 1) % n->kept;
        if (n->count < n->kept)
                n->count++;
        /* Logged under the lock, so the journal's order is the list's. */
        log_entry(e);
        pthread_mutex_unlock(&n->lock);

        metrics_counter_inc(metrics_child2(n->total, bounded_receiver(x->receiver),
                                           x->firing ? "firing" : "resolved"));
}

size_t notifications_record_webhook(struct notifications *n, const struct webhook *w)
{
        assert(w);

        for (size_t i = 0; i < w->n_alerts; i++) {
                const struct webhook_alert *a = &w->alerts[i];
                const struct notification x = {
                        .receiver = w->receiver,
                        .firing = a->firing,
                        .alertname = webhook_alert_label(a, "alertname"),
                        .severity = webhook_alert_label(a, "severity"),
                        .service = webhook_alert_label(a, "service"),
                        .summary = webhook_alert_annotation(a, "summary"),
                        .starts_at = a->starts_at,
                        .fingerprint = a->fingerprint,
                        .runbook_url = webhook_alert_annotation(a, "runbook_url"),
                };

                notifications_record(n, &x);
        }
        return w->n_alerts;
}

/* The string member key of o, or NULL. */
static const char *member(struct json_object *o, const char *key)
{
        struct json_object *v;

        if (!o || !json_object_object_get_ex(o, key, &v) ||
            !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

static struct json_object *member_object(struct json_object *o, const char *key)
{
        struct json_object *v;

        if (!o || !json_object_object_get_ex(o, key, &v) ||
            !json_object_is_type(v, json_type_object))
                return NULL;
        return v;
}

/* "skipped_breaker vigil-notifyd.service: <reason>" from the last result. */
static void escalation_reason(struct json_object *body, char *buf, size_t size)
{
        struct json_object *results, *r = NULL;
        const char *decision, *unit, *why;
        size_t len;

        if (json_object_object_get_ex(body, "results", &results) &&
            json_object_is_type(results, json_type_array) &&
            (len = json_object_array_length(results)) > 0)
                r = json_object_array_get_idx(results, len - 1);
        if (!r || !json_object_is_type(r, json_type_object)) {
                snprintf(buf, size, "escalated by the alert bot");
                return;
        }
        decision = member(r, "decision");
        unit = member(r, "unit");
        why = member(r, "reason");
        if (!why)
                why = member(r, "detail");
        if (!why || !*why)
                why = member(r, "outcome");
        snprintf(buf, size, "%s%s%s: %s", decision ? decision : "escalated",
                 unit && *unit ? " " : "", unit ? unit : "", why ? why : "");
}

int notifications_record_escalation(struct notifications *n, struct json_object *body)
{
        struct json_object *alert = member_object(body, "alert");
        struct json_object *labels, *annotations;
        char reason[REASON_MAX + 1];
        const char *status;

        if (!alert)
                return -EINVAL;
        labels = member_object(alert, "labels");
        annotations = member_object(alert, "annotations");
        status = member(alert, "status");
        escalation_reason(body, reason, sizeof(reason));

        const struct notification x = {
                .receiver = "escalation",
                .firing = !status || strcmp(status, "resolved") != 0,
                .alertname = member(labels, "alertname"),
                .severity = member(labels, "severity"),
                .service = member(labels, "service"),
                .summary = member(annotations, "summary"),
                .starts_at = member(alert, "startsAt"),
                .fingerprint = member(alert, "fingerprint"),
                .runbook_url = member(annotations, "runbook_url"),
                .reason = reason,
        };
        notifications_record(n, &x);
        return 0;
}

static struct json_object *entry_json(const struct entry *e)
{
        struct json_object *o = json_object_new_object();

        if (!o)
                return NULL;
        json_object_object_add(o, "received_at", json_object_new_int64(e->received_at));
        json_object_object_add(o, "receiver", json_object_new_string(e->receiver));
        json_object_object_add(o, "status",
                               json_object_new_string(e->firing ? "firing" : "resolved"));
        json_object_object_add(o, "alertname", json_object_new_string(e->alertname));
        json_object_object_add(o, "severity", json_object_new_string(e->severity));
        json_object_object_add(o, "service", json_object_new_string(e->service));
        json_object_object_add(o, "summary", json_object_new_string(e->summary));
        json_object_object_add(o, "starts_at", json_object_new_string(e->starts_at));
        json_object_object_add(o, "fingerprint", json_object_new_string(e->fingerprint));
        json_object_object_add(o, "runbook_url", json_object_new_string(e->runbook_url));
        if (*e->reason)
                json_object_object_add(o, "reason", json_object_new_string(e->reason));
        return o;
}

struct json_object *notifications_json(struct notifications *n)
{
        _cleanup_(json_object_putp) struct json_object *o = json_object_new_object();
        struct json_object *list = json_object_new_array();

        if (!o || !list) {
                json_object_put(list);
                return NULL;
        }
        json_object_object_add(o, "notifications", list);
        pthread_mutex_lock(&n->lock);
        for (size_t i = 1; i <= n->count; i++) {
                struct json_object *e = entry_json(&n->ring[(n->next + n->kept - i) % n->kept]);

                if (!e || json_object_array_add(list, e) < 0) {
                        json_object_put(e);
                        pthread_mutex_unlock(&n->lock);
                        return NULL;
                }
        }
        pthread_mutex_unlock(&n->lock);
        return TAKE_PTR(o);
}
