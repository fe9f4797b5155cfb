/* Consuming with manual acknowledgements, each delivery under a consumer
 * span continuing the publisher's trace. See amqp.c for the connection. */
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

/* ---------------------------------------------------------------- consume */

int amqp_consume_start(struct amqp_client *c, const char *queue, unsigned prefetch)
{
        uint64_t start;
        int r;

        if (!c || !queue || strlen(queue) > 255 || prefetch < 1 || prefetch > AMQP_MAX_PREFETCH)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        start = now_usec(CLOCK_MONOTONIC);
        amqp_basic_qos(c->conn, CHANNEL, 0, (uint16_t)prefetch, false);
        r = amqp_client_check_rpc(c, "basic.qos");
        if (r >= 0) {
                amqp_basic_consume(c->conn, CHANNEL, amqp_cstring_bytes(queue), amqp_empty_bytes,
                                   false, false, false, amqp_empty_table);
                r = amqp_client_check_rpc(c, queue);
        }
        dependency_metrics_observe(&c->dependencies, "amqp", "consume",
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, NULL);
        if (r < 0)
                return r;
        free(c->consume_queue);
        c->consume_queue = strdup(queue);
        c->consuming = true;
        return c->consume_queue ? 0 : -ENOMEM;
}

/* The CONSUMER span of a delivery handed out, current on this thread. */
static void start_consumer_span(struct amqp_client *c, struct amqp_delivery *d)
{
        struct trace_context parent;
        bool has_parent = trace_parse_traceparent(d->traceparent, &parent) >= 0;
        const char *queue = c->consume_queue ?: "";
        char name[TRACE_MAX_NAME_LEN];

        snprintf(name, sizeof(name), "process %s", queue);
        /* Without a valid parent, a new trace: never a child of whatever
         * this thread had current. */
        d->previous_span = trace_set_current(NULL);
        d->span = span_start(c->tracer, name, SPAN_KIND_CONSUMER, has_parent ? &parent : NULL);
        if (span_is_recording(d->span)) {
                span_set_attribute_string(d->span, "messaging.system", "rabbitmq");
                span_set_attribute_string(d->span, "messaging.operation.type", "process");
                span_set_attribute_string(d->span, "messaging.operation.name", "process");
                span_set_attribute_string(d->span, "messaging.destination.name", queue);
                span_set_attribute_string(d->span, "messaging.rabbitmq.destination.routing_key",
                                          d->routing_key);
                if (d->message_id)
                        span_set_attribute_string(d->span, "messaging.message.id", d->message_id);
                span_set_attribute_int(d->span, "messaging.rabbitmq.message.delivery_tag",
                                       (int64_t)d->delivery_tag);
                span_set_attribute_int(d->span, "messaging.message.body.size",
                                       (int64_t)d->body_size);
                span_set_attribute_string(d->span, "server.address", c->host);
                span_set_attribute_int(d->span, "server.port", c->port);
        }
        trace_set_current(d->span);
}

int amqp_receive(struct amqp_client *c, unsigned timeout_ms, struct amqp_delivery **ret)
{
        uint64_t deadline;
        amqp_frame_t frame;
        int r;

        if (!c || !ret || timeout_ms > MAX_TIMEOUT_MS)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        r = amqp_client_check_failed(c);
        if (r < 0)
                return r;
        if (!c->stash_head)
                amqp_maybe_release_buffers(c->conn);

        deadline = amqp_deadline_after_ms(timeout_ms);
        while (!c->stash_head) {
                r = amqp_client_wait_frame(c, deadline, &frame);
                if (r < 0)
                        return r;
                r = amqp_client_handle_frame(c, &frame);
                if (r < 0)
                        return r;
        }

        struct stashed *s = c->stash_head;
        struct amqp_delivery *d = s->delivery;

        c->stash_head = s->next;
        if (!c->stash_head)
                c->stash_tail = NULL;
        c->n_stashed--;
        free(s);

        start_consumer_span(c, d);
        *ret = d;
        return 0;
}

static int settle(struct amqp_client *c, const struct amqp_delivery *d, bool ack, bool requeue)
{
        int status;

        if (!c || !d)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        if (d->connection_id != c->connection_id)
                return -ESTALE;
        if (ack)
                status = amqp_basic_ack(c->conn, CHANNEL, d->delivery_tag, false);
        else
                status = amqp_basic_reject(c->conn, CHANNEL, d->delivery_tag, requeue);
        if (status != AMQP_STATUS_OK)
                return amqp_client_fail_status(c, status, ack ? "basic.ack" : "basic.reject");
        return 0;
}

int amqp_ack(struct amqp_client *c, const struct amqp_delivery *d)
{
        return settle(c, d, true, false);
}

int amqp_reject(struct amqp_client *c, const struct amqp_delivery *d, bool requeue)
{
        return settle(c, d, false, requeue);
}

void amqp_delivery_free(struct amqp_delivery *d)
{
        if (!d)
                return;
        if (d->span) {
                span_end(d->span);
                trace_set_current(d->previous_span);
        }
        amqp_delivery_free_contents(d);
        free(d);
}
