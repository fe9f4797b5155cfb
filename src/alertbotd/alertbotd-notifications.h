/* Notifications recorded on the host: until an operator configures a
 * paging, ticketing or chat destination, Alertmanager's `escalation` and
 * `tickets` receivers post to vigil-alertbotd's POST /notify, and the bot's
 * own escalations land here when `[escalation] url` is empty. Every alert
 * is one journal entry with a fixed MESSAGE_ID (one for firing, one for
 * resolved) and structured fields, and one entry of a bounded in-memory
 * list a person reads with GET /notifications, newest first.
 *
 * Journal fields: MESSAGE_ID, RECEIVER, STATUS, ALERTNAME, SEVERITY,
 * SERVICE, SUMMARY, STARTS_AT, FINGERPRINT, RUNBOOK_URL and, for the bot's
 * escalations, REASON. Priority: warning for a firing page, notice for any
 * other firing alert (a ticket), info for a resolved one.
 * Metrics: vigil_alertbot_notifications_total{receiver,status}, receiver
 * one of escalation, tickets or "other" (whoever posts chooses the name).
 *
 * Strings are kept cut to fixed sizes (at a UTF-8 character boundary), so
 * the list's memory is fixed when it is created.
 *
 * Thread-safety: every function may be called from any thread (one mutex
 * inside); new/free from the owner. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "macro.h"

#define NOTIFICATIONS_MAX_KEPT 1000

/* The journal MESSAGE_IDs (docs/alertbot.md). */
#define NOTIFICATION_FIRING_MESSAGE_ID   "9ce3b8577a8c4d90bad16258fec98df9"
#define NOTIFICATION_RESOLVED_MESSAGE_ID "70cba75ecd174fc7b6ac1ae697f97c3c"

struct json_object;
struct metrics_registry;
struct webhook;
struct notifications;

/* One alert as it is recorded; NULL strings count as "". */
struct notification {
        const char *receiver;
        bool firing;
        const char *alertname;
        const char *severity;
        const char *service;
        const char *summary;
        const char *starts_at;
        const char *fingerprint;
        const char *runbook_url;
        const char *reason; /* why the bot escalated; "" for Alertmanager's */
};

/* A list keeping the last kept (1..NOTIFICATIONS_MAX_KEPT) notifications,
 * counted in metrics (may be NULL). Returns 0, -EINVAL for kept out of
 * range, or -ENOMEM. */
int notifications_new(size_t kept, struct metrics_registry *metrics, struct notifications **ret);
void notifications_free(struct notifications *n); /* accepts NULL */
DEFINE_TRIVIAL_CLEANUP_FUNC(struct notifications *, notifications_free)

/* Log, keep and count one notification. Never fails (the oldest entry
 * makes room). */
void notifications_record(struct notifications *n, const struct notification *x);
/* Record every alert of a decoded Alertmanager payload under its receiver.
 * Returns the number of alerts recorded. */
size_t notifications_record_webhook(struct notifications *n, const struct webhook *w);
/* Record one of the bot's escalations, body as sent to an escalation
 * webhook ({"alert":{…},"results":[{"decision","unit","reason"|"outcome",
 * "detail"}]}), under receiver "escalation". Returns 0, or -EINVAL when
 * body has no alert object (nothing recorded). */
int notifications_record_escalation(struct notifications *n, struct json_object *body);

/* {"notifications":[{"received_at","receiver","status","alertname",
 * "severity","service","summary","starts_at","fingerprint","runbook_url"
 * [,"reason"]}…]} newest first (new reference), or NULL on OOM. */
struct json_object *notifications_json(struct notifications *n);
