/* Notifications of vigil-notifyd: the payment event a message carries, and
 * recording it exactly once in PostgreSQL (notify.processed_messages, the
 * consumer's idempotency record, and notify.notifications). Knows nothing
 * of AMQP.
 *
 * Thread-safety: every function may be called from any thread; state lives
 * in the pool. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pg.h"

extern const struct pg_schema notifyd_schema;
#define NOTIFYD_SCHEMA "notify"

#define PAYMENT_STATUS_MAX_LENGTH     32
#define PAYMENT_CREATED_AT_MAX_LENGTH 40
#define MESSAGE_ID_MAX_LENGTH         255

/* The body of a payment event (docs/messaging.md). */
struct payment_event {
        int64_t payment_id;   /* >= 1 */
        int64_t user_id;      /* >= 1 */
        int64_t amount_cents; /* >= 1 */
        char status[PAYMENT_STATUS_MAX_LENGTH + 1];
        char created_at[PAYMENT_CREATED_AT_MAX_LENGTH + 1]; /* RFC 3339 */
};

/* Parse and validate an event body (size bytes, not necessarily
 * NUL-terminated). Returns 0, or -EBADMSG when it is not a JSON object,
 * -EINVAL when a field is missing or has the wrong type, -ERANGE when a
 * value is out of range. Any error makes the message poison. */
int notifications_parse_event(const void *body, size_t size, struct payment_event *ret);

/* RFC 3339 date-time, "2026-11-24T04:20:00Z" or with a fraction (1 to 9
 * digits) and an offset. Returns true when s has that shape with fields in
 * range: the day within its month (February 29 only in leap years of the
 * Gregorian calendar), a second of 60 allowed for a leap second. */
bool notifications_timestamp_is_valid(const char *s);

/* The side effect (sending the notification), run inside the transaction
 * after the message id is claimed; returns 0 or a negative errno. */
typedef int (*notifications_send_fn)(const struct payment_event *e, void *userdata);

/* In one transaction: claim message_id in notify.processed_messages; when
 * it was already there, commit and set *ret_duplicate; else call send,
 * insert the notification (with trace_id, 32 hex digits or NULL) and
 * commit. Returns 0, the error of send (rolled back), or a negative errno
 * from the pool (-ECONNREFUSED, -ECONNRESET, -ETIMEDOUT: PostgreSQL is
 * unavailable; -EINVAL, -ERANGE: the data was refused). */
int notifications_record(struct pg_pool *pool, const char *message_id,
                         const struct payment_event *e, const char *channel, const char *trace_id,
                         notifications_send_fn send, void *userdata, bool *ret_duplicate);
