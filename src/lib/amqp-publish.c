/* Publishing with publisher confirms, each message under a producer span.
 * See amqp.c for the connection. */
#include <amqp.h>
#include <amqp_framing.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp-internal.h"
#include "amqp.h"
#include "dependency-metrics.h"
#include "macro.h"
#include "metrics.h"
#include "trace.h"

/* ---------------------------------------------------------------- publish */

static struct span *start_producer_span(struct amqp_client *c, const struct amqp_message *m)
{
        struct trace_context parent;
        bool has_parent = trace_parse_traceparent(m->traceparent, &parent) >= 0;
        const char *destination = *m->exchange ? m->exchange : "amq.default";
        char name[TRACE_MAX_NAME_LEN];
        struct span *span;

        snprintf(name, sizeof(name), "publish %s", destination);
        span = span_start(c->tracer, name, SPAN_KIND_PRODUCER, has_parent ? &parent : NULL);
        if (span_is_recording(span)) {
                span_set_attribute_string(span, "messaging.system", "rabbitmq");
                span_set_attribute_string(span, "messaging.operation.type", "publish");
                span_set_attribute_string(span, "messaging.operation.name", "publish");
                span_set_attribute_string(span, "messaging.destination.name", destination);
                span_set_attribute_string(span, "messaging.rabbitmq.destination.routing_key",
                                          m->routing_key);
                if (m->message_id)
                        span_set_attribute_string(span, "messaging.message.id", m->message_id);
                span_set_attribute_int(span, "messaging.message.body.size", (int64_t)m->body_size);
                span_set_attribute_string(span, "server.address", c->host);
                span_set_attribute_int(span, "server.port", c->port);
        }
        return span;
}

static int validate_message(const struct amqp_message *m)
{
        if (!m->exchange || !m->routing_key || strlen(m->exchange) > 255 ||
            strlen(m->routing_key) > 255 || m->body_size > AMQP_MAX_BODY_SIZE ||
            (m->body_size > 0 && !m->body) || m->attempt < 0)
                return -EINVAL;
        if ((m->message_id && strlen(m->message_id) > AMQP_MAX_PROPERTY_LEN) ||
            (m->content_type && strlen(m->content_type) > AMQP_MAX_PROPERTY_LEN) ||
            (m->tracestate && strlen(m->tracestate) > AMQP_MAX_PROPERTY_LEN) ||
            (m->reason && strlen(m->reason) > AMQP_MAX_PROPERTY_LEN))
                return -EINVAL;
        return 0;
}

static int send_message(struct amqp_client *c, const struct amqp_message *m, struct span *span)
{
        char traceparent[TRACEPARENT_LEN + 1];
        amqp_table_entry_t headers[4];
        int n_headers = 0, status;

        if (trace_context_is_valid(span_context(span))) {
                trace_format_traceparent(span_context(span), traceparent);
                headers[n_headers++] = amqp_entry_string("traceparent", traceparent);
        } else if (m->traceparent && strlen(m->traceparent) <= AMQP_MAX_PROPERTY_LEN) {
                headers[n_headers++] = amqp_entry_string("traceparent", m->traceparent);
        }
        if (m->tracestate && *m->tracestate)
                headers[n_headers++] = amqp_entry_string("tracestate", m->tracestate);
        if (m->attempt > 0)
                headers[n_headers++] = amqp_entry_int(AMQP_ATTEMPT_HEADER, m->attempt);
        if (m->reason)
                headers[n_headers++] = amqp_entry_string(AMQP_REASON_HEADER, m->reason);

        amqp_basic_properties_t props = {
                ._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                          AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG,
                .content_type = amqp_cstring_bytes(m->content_type ?: "application/json"),
                .delivery_mode = AMQP_DELIVERY_PERSISTENT,
                .timestamp = m->timestamp > 0 ? (uint64_t)m->timestamp : (uint64_t)time(NULL),
                .headers = {.num_entries = n_headers, .entries = headers},
        };
        if (m->message_id) {
                props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
                props.message_id = amqp_cstring_bytes(m->message_id);
        }

        status = amqp_basic_publish(c->conn, CHANNEL, amqp_cstring_bytes(m->exchange),
                                    amqp_cstring_bytes(m->routing_key), true, false, &props,
                                    (amqp_bytes_t){.len = m->body_size, .bytes = (void *)m->body});
        if (status != AMQP_STATUS_OK)
                return amqp_client_fail_status(c, status, "publish");
        return 0;
}

static size_t count_unconfirmed(const struct amqp_client *c)
{
        size_t n = 0;

        for (size_t i = 0; i < c->n_pending; i++)
                n += !c->pending[i].confirmed;
        return n;
}

static int publish_and_confirm(struct amqp_client *c, const struct amqp_message *msgs, size_t n)
{
        uint64_t deadline = amqp_deadline_after_ms(c->rpc_timeout_ms);
        amqp_frame_t frame;
        int r;

        for (size_t i = 0; i < n; i++) {
                r = send_message(c, &msgs[i], c->pending[i].span);
                if (r < 0)
                        return r;
                c->pending[i].tag = c->next_publish_tag++;
        }
        while (count_unconfirmed(c) > 0) {
                r = amqp_client_wait_frame(c, deadline, &frame);
                if (r == -ETIMEDOUT) {
                        amqp_client_set_error(c, "publisher confirms did not arrive in %u ms",
                                              c->rpc_timeout_ms);
                        amqp_client_teardown(c);
                        return -ETIMEDOUT;
                }
                if (r < 0)
                        return r;
                r = amqp_client_handle_frame(c, &frame);
                if (r < 0)
                        return r;
        }
        return 0;
}

int amqp_publish_batch(struct amqp_client *c, const struct amqp_message *msgs, size_t n,
                       enum amqp_publish_result *ret_results)
{
        _cleanup_free_ struct pending *pending = NULL;
        uint64_t start;
        int r;

        if (!c || !msgs || !ret_results || n == 0 || n > AMQP_PUBLISH_MAX_BATCH)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                r = validate_message(&msgs[i]);
                if (r < 0)
                        return r;
        }
        if (!c->conn)
                return -ENOTCONN;
        r = amqp_client_check_failed(c);
        if (r < 0)
                return r;
        pending = calloc(n, sizeof(*pending));
        if (!pending)
                return -ENOMEM;

        amqp_maybe_release_buffers(c->conn);
        start = now_usec(CLOCK_MONOTONIC);
        for (size_t i = 0; i < n; i++) {
                pending[i].message_id = msgs[i].message_id;
                pending[i].span = start_producer_span(c, &msgs[i]);
        }
        c->pending = pending;
        c->n_pending = n;
        r = publish_and_confirm(c, msgs, n);
        c->pending = NULL;
        c->n_pending = 0;

        for (size_t i = 0; i < n; i++) {
                struct span *span = pending[i].span;

                if (r < 0) {
                        span_set_attribute_string(span, "error.type", "unconfirmed");
                        span_set_status(span, SPAN_STATUS_ERROR, c->last_error);
                        metrics_counter_inc(c->publish_error);
                } else if (pending[i].nacked) {
                        span_set_attribute_string(span, "error.type", "nack");
                        span_set_status(span, SPAN_STATUS_ERROR, "nacked by the broker");
                        metrics_counter_inc(c->publish_nack);
                } else if (pending[i].returned) {
                        span_set_attribute_string(span, "error.type", "returned");
                        span_set_status(span, SPAN_STATUS_ERROR, "unroutable");
                        metrics_counter_inc(c->publish_returned);
                } else {
                        metrics_counter_inc(c->publish_ack);
                }
                span_end(span);
        }
        dependency_metrics_observe(&c->dependencies, "amqp", "publish",
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, NULL);
        if (r < 0)
                return r;

        for (size_t i = 0; i < n; i++)
                ret_results[i] = pending[i].nacked     ? AMQP_PUBLISH_RESULT_NACK
                                 : pending[i].returned ? AMQP_PUBLISH_RESULT_RETURNED
                                                       : AMQP_PUBLISH_RESULT_ACK;
        return 0;
}

int amqp_publish(struct amqp_client *c, const struct amqp_message *msg,
                 enum amqp_publish_result *ret_result)
{
        return amqp_publish_batch(c, msg, 1, ret_result);
}
