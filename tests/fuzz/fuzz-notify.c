/* libFuzzer target: what vigil-notifyd decodes of a delivered payment
 * event, from the wire on:
 *
 *   librabbitmq's amqp_decode_properties()   the content header's bytes
 *   amqp_delivery_read_properties()           message id, headers
 *   trace_parse_traceparent()                 the trace context (as the
 *                                             delivery's span reads it)
 *   notifications_parse_event()               the body
 *
 * Input: a 2-byte big-endian length n, n bytes of encoded basic
 * properties (flags, then fields, as AMQP 0-9-1 puts them in a content
 * header frame), then the body.
 *
 * Promises checked: the delivery holds exactly what a reference reading of
 * the decoded properties (written here from amqp.h's contract; an integer
 * header's value is read with amqp_field_int64(), which test-amqp checks
 * kind by kind) says; an
 * accepted traceparent formats and parses back to itself; a refused event
 * leaves the output untouched; an accepted event has its fields in the
 * ranges of notifyd-notifications.h, a created_at that a reference RFC 3339
 * check (days per month included) accepts, and survives the round trip
 * through paymentd's encoder (payment_event_json()) unchanged. */
#include <amqp.h>
#include <amqp_framing.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amqp.h"
#include "notifyd-notifications.h"
#include "paymentd-payments.h"
#include "trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool bytes_equal(const char *s, amqp_bytes_t b)
{
        return s && strlen(s) == b.len && memcmp(s, b.bytes, b.len) == 0;
}

static bool qualifies(amqp_bytes_t b)
{
        return b.len >= 1 && b.len <= AMQP_MAX_PROPERTY_LEN && !memchr(b.bytes, '\0', b.len);
}

static bool key_is(amqp_bytes_t key, const char *name)
{
        return key.len == strlen(name) && memcmp(key.bytes, name, key.len) == 0;
}

/* Check d against the contract of amqp_delivery_read_properties(). */
static void check_delivery(const amqp_basic_properties_t *p, const struct amqp_delivery *d)
{
        const amqp_bytes_t *traceparent = NULL, *tracestate = NULL;
        int attempt = 0;

        if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG && qualifies(p->message_id)
                    ? !bytes_equal(d->message_id, p->message_id)
                    : d->message_id != NULL)
                abort();
        if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG && qualifies(p->content_type)
                    ? !bytes_equal(d->content_type, p->content_type)
                    : d->content_type != NULL)
                abort();
        if (d->timestamp != (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG && p->timestamp <= INT64_MAX
                                     ? (int64_t)p->timestamp
                                     : 0))
                abort();

        if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
                for (int i = 0; i < p->headers.num_entries; i++) {
                        const amqp_table_entry_t *e = &p->headers.entries[i];
                        bool string = e->value.kind == AMQP_FIELD_KIND_UTF8 ||
                                      e->value.kind == AMQP_FIELD_KIND_BYTES;
                        int64_t n;

                        if (string && key_is(e->key, "traceparent") && !traceparent &&
                            qualifies(e->value.value.bytes))
                                traceparent = &e->value.value.bytes;
                        if (string && key_is(e->key, "tracestate") && !tracestate &&
                            qualifies(e->value.value.bytes))
                                tracestate = &e->value.value.bytes;
                        if (key_is(e->key, AMQP_ATTEMPT_HEADER) && amqp_field_int64(&e->value, &n))
                                attempt = n >= 0 && n <= 1000000 ? (int)n : 0;
                }
        }
        if (traceparent ? !bytes_equal(d->traceparent, *traceparent) : d->traceparent != NULL)
                abort();
        if (tracestate ? !bytes_equal(d->tracestate, *tracestate) : d->tracestate != NULL)
                abort();
        if (d->attempt != attempt)
                abort();
}

static void check_trace(const char *traceparent)
{
        struct trace_context ctx, again;
        char formatted[TRACEPARENT_LEN + 1];

        if (trace_parse_traceparent(traceparent, &ctx) < 0)
                return;
        if (!trace_context_is_valid(&ctx))
                abort();
        trace_format_traceparent(&ctx, formatted);
        if (trace_parse_traceparent(formatted, &again) < 0 ||
            memcmp(&ctx.trace_id, &again.trace_id, TRACE_ID_SIZE) != 0 ||
            memcmp(&ctx.span_id, &again.span_id, SPAN_ID_SIZE) != 0 || ctx.flags != again.flags)
                abort();
}

static bool two_digits(const char *s, int min, int max, int *ret)
{
        if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
                return false;
        *ret = (s[0] - '0') * 10 + (s[1] - '0');
        return *ret >= min && *ret <= max;
}

/* RFC 3339 date-time as notifyd-notifications.h has it: fields in range,
 * the day within its month, a fraction of 1..9 digits, Z or +-HH:MM. */
static bool reference_timestamp(const char *s)
{
        static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        int year = 0, month, day, v;
        size_t len = strlen(s), i = 19;

        if (len < 20)
                return false;
        for (int k = 0; k < 4; k++) {
                if (s[k] < '0' || s[k] > '9')
                        return false;
                year = year * 10 + (s[k] - '0');
        }
        if (year < 1 || s[4] != '-' || !two_digits(s + 5, 1, 12, &month) || s[7] != '-' ||
            !two_digits(s + 8, 1, 31, &day) || (s[10] != 'T' && s[10] != 't') ||
            !two_digits(s + 11, 0, 23, &v) || s[13] != ':' || !two_digits(s + 14, 0, 59, &v) ||
            s[16] != ':' || !two_digits(s + 17, 0, 60, &v))
                return false;
        if (day >
            days[month - 1] + (month == 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)))
                return false;
        if (s[i] == '.') {
                size_t n = 0;

                while (s[i + 1 + n] >= '0' && s[i + 1 + n] <= '9')
                        n++;
                if (n < 1 || n > 9)
                        return false;
                i += 1 + n;
        }
        if (s[i] == 'Z' || s[i] == 'z')
                return i + 1 == len;
        return (s[i] == '+' || s[i] == '-') && len - i == 6 && two_digits(s + i + 1, 0, 23, &v) &&
               s[i + 3] == ':' && two_digits(s + i + 4, 0, 59, &v);
}

static void check_event(const void *body, size_t size)
{
        struct payment_event e, untouched, again;
        struct payment p = {0};
        size_t json_len = 0;
        char *json;
        int r;

        memset(&e, 0xa5, sizeof(e));
        memcpy(&untouched, &e, sizeof(e));
        r = notifications_parse_event(body, size, &e);
        if (r < 0) {
                if (r != -EBADMSG && r != -EINVAL && r != -ERANGE && r != -ENOMEM)
                        abort();
                if (memcmp(&e, &untouched, sizeof(e)) != 0)
                        abort(); /* written on failure */
                return;
        }
        if (r != 0 || e.payment_id < 1 || e.user_id < 1 || e.amount_cents < 1 ||
            strlen(e.status) < 1 || strlen(e.status) > PAYMENT_STATUS_MAX_LENGTH ||
            !reference_timestamp(e.created_at))
                abort();

        /* paymentd's encoder, then this decoder: the same event. */
        if (strlen(e.status) >= sizeof(p.status) || strlen(e.created_at) >= sizeof(p.created_at))
                return;
        p.id = e.payment_id;
        p.user_id = e.user_id;
        p.amount_cents = e.amount_cents;
        memcpy(p.status, e.status, strlen(e.status) + 1);
        memcpy(p.created_at, e.created_at, strlen(e.created_at) + 1);
        json = payment_event_json(&p, &json_len);
        if (!json)
                return;
        memset(&again, 0, sizeof(again));
        if (notifications_parse_event(json, json_len, &again) != 0)
                abort();
        if (again.payment_id != e.payment_id || again.user_id != e.user_id ||
            again.amount_cents != e.amount_cents || strcmp(again.status, e.status) != 0 ||
            strcmp(again.created_at, e.created_at) != 0)
                abort();
        free(json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        amqp_pool_t pool;
        void *decoded = NULL;
        size_t n;

        if (size < 2)
                return 0;
        n = (size_t)data[0] << 8 | data[1];
        if (n > size - 2)
                n = size - 2;

        init_amqp_pool(&pool, 4096);
        if (amqp_decode_properties(AMQP_BASIC_CLASS, &pool,
                                   (amqp_bytes_t){.len = n, .bytes = (void *)(data + 2)},
                                   &decoded) == AMQP_STATUS_OK &&
            decoded) {
                struct amqp_delivery d = {0};

                if (amqp_delivery_read_properties(decoded, &d) == 0) {
                        check_delivery(decoded, &d);
                        check_trace(d.traceparent);
                }
                free(d.message_id);
                free(d.content_type);
                free(d.traceparent);
                free(d.tracestate);
        }
        empty_amqp_pool(&pool);

        check_event(data + 2 + n, size - 2 - n);
        return 0;
}
