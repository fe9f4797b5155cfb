/* Unit tests for the amqp module against a real RabbitMQ started by
 * tests/with-servers.sh (dev-stack.sh): topology, publisher confirms and
 * returns, consuming with acks and rejects, trace propagation, failures
 * and a broker restart. */
#include <amqp.h>
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "amqp.h"
#include "macro.h"
#include "metrics.h"
#include "otlp-sink.h"
#include "trace.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(struct metrics_registry *, metrics_registry_free);

static const char *url;       /* amqp://vigil:pw@127.0.0.1:port/vigil */
static const char *dev_dir;   /* the dev stack's directory */
static const char *dev_stack; /* scripts/dev-stack.sh */

static struct amqp_client *client_with(struct metrics_registry *metrics, struct tracer *tracer)
{
        struct amqp_client *c = NULL;
        struct amqp_client_options opts = {
                .url = url,
                .connection_name = "test-amqp",
                .metrics = metrics,
                .tracer = tracer,
        };

        ck_assert_int_eq(amqp_client_new(&opts, &c), 0);
        ck_assert_int_eq(amqp_client_connect(c), 0);
        ck_assert(amqp_client_is_connected(c));
        ck_assert_int_eq(amqp_declare_topology(c), 0);
        return c;
}

static struct amqp_client *client(void)
{
        return client_with(NULL, NULL);
}

static uint64_t queue_count(struct amqp_client *c, const char *queue)
{
        uint64_t n = 0;

        ck_assert_int_eq(amqp_queue_message_count(c, queue, &n), 0);
        return n;
}

/* Consume and ack everything in queue (on a connection of its own), so a
 * test starts from an empty queue whatever ran before. */
static void drain(const char *queue)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = client();
        struct amqp_delivery *d;

        ck_assert_int_eq(amqp_consume_start(c, queue, 64), 0);
        while (amqp_receive(c, 300, &d) == 0) {
                ck_assert_int_eq(amqp_ack(c, d), 0);
                amqp_delivery_free(d);
        }
}

static struct amqp_message payment_message(const char *message_id, const char *body)
{
        return (struct amqp_message){
                .exchange = AMQP_EVENTS_EXCHANGE,
                .routing_key = AMQP_PAYMENT_ROUTING_KEY,
                .message_id = message_id,
                .body = body,
                .body_size = strlen(body),
        };
}

static void publish_acked(struct amqp_client *c, const struct amqp_message *m)
{
        enum amqp_publish_result result;

        ck_assert_int_eq(amqp_publish(c, m, &result), 0);
        ck_assert_int_eq(result, AMQP_PUBLISH_RESULT_ACK);
}

START_TEST(test_declaring_the_topology_twice_is_idempotent)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = client();
        _cleanup_(amqp_client_freep) struct amqp_client *other = client();
        char name[64];

        /* client() declared once each; once more on the same connection. */
        ck_assert_int_eq(amqp_declare_topology(c), 0);
        ck_assert(amqp_client_is_connected(c));
        ck_assert(amqp_client_is_connected(other));
        for (int n = 1; n <= AMQP_NOTIFY_RETRY_QUEUES; n++) {
                snprintf(name, sizeof(name), "vigil.notify.retry.%d", n);
                queue_count(c, name);
        }
        queue_count(c, AMQP_NOTIFY_DEAD_QUEUE);
        queue_count(c, AMQP_NOTIFY_QUEUE);
}
END_TEST

START_TEST(test_confirmed_publish_is_acked_and_lands_in_the_queue)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = NULL;
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        _cleanup_free_ char *text = NULL;
        struct amqp_message m = payment_message("payment-1", "{\"payment_id\":1}");
        uint64_t before;

        drain(AMQP_NOTIFY_QUEUE);
        ck_assert_int_eq(metrics_registry_new(&r), 0);
        c = client_with(r, NULL);
        before = queue_count(c, AMQP_NOTIFY_QUEUE);
        publish_acked(c, &m);
        ck_assert_uint_eq(queue_count(c, AMQP_NOTIFY_QUEUE), before + 1);

        ck_assert_int_eq(metrics_render(r, METRICS_FORMAT_PROMETHEUS, &text, NULL), 0);
        ck_assert_ptr_nonnull(strstr(text, "vigil_amqp_publish_total{result=\"ack\"} 1\n"));
        ck_assert_ptr_nonnull(strstr(text, "vigil_dependency_up{dependency=\"amqp\"} 1\n"));
        ck_assert_ptr_nonnull(
                strstr(text, "vigil_dependency_request_duration_seconds_count{dependency=\"amqp\","
                             "operation=\"publish\"} 1\n"));
}
END_TEST

START_TEST(test_mandatory_publish_to_an_unroutable_key_is_returned)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = NULL;
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        _cleanup_free_ char *text = NULL;
        struct amqp_message msgs[3] = {
                payment_message("routed-1", "{}"),
                payment_message("lost", "{}"),
                payment_message("routed-2", "{}"),
        };
        enum amqp_publish_result results[3];

        ck_assert_int_eq(metrics_registry_new(&r), 0);
        c = client_with(r, NULL);
        msgs[1].routing_key = "nobody.listens.here";
        ck_assert_int_eq(amqp_publish_batch(c, msgs, 3, results), 0);
        ck_assert_int_eq(results[0], AMQP_PUBLISH_RESULT_ACK);
        ck_assert_int_eq(results[1], AMQP_PUBLISH_RESULT_RETURNED);
        ck_assert_int_eq(results[2], AMQP_PUBLISH_RESULT_ACK);
        /* The channel stays usable. */
        ck_assert(amqp_client_is_connected(c));
        publish_acked(c, &msgs[0]);

        ck_assert_int_eq(metrics_render(r, METRICS_FORMAT_PROMETHEUS, &text, NULL), 0);
        ck_assert_ptr_nonnull(strstr(text, "vigil_amqp_publish_total{result=\"returned\"} 1\n"));
        ck_assert_ptr_nonnull(strstr(text, "vigil_amqp_publish_total{result=\"ack\"} 3\n"));
}
END_TEST

START_TEST(test_batch_publish_waits_for_every_confirm)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        struct amqp_message msgs[200];
        enum amqp_publish_result results[200];
        char ids[200][32];
        uint64_t before;

        drain(AMQP_NOTIFY_QUEUE);
        c = client();
        before = queue_count(c, AMQP_NOTIFY_QUEUE);
        for (size_t i = 0; i < ELEMENTSOF(msgs); i++) {
                snprintf(ids[i], sizeof(ids[i]), "batch-%zu", i);
                msgs[i] = payment_message(ids[i], "{}");
        }
        ck_assert_int_eq(amqp_publish_batch(c, msgs, ELEMENTSOF(msgs), results), 0);
        for (size_t i = 0; i < ELEMENTSOF(msgs); i++)
                ck_assert_int_eq(results[i], AMQP_PUBLISH_RESULT_ACK);
        ck_assert_uint_eq(queue_count(c, AMQP_NOTIFY_QUEUE), before + ELEMENTSOF(msgs));
        /* A second batch continues the delivery tags. */
        ck_assert_int_eq(amqp_publish_batch(c, msgs, 10, results), 0);
        ck_assert_int_eq(results[9], AMQP_PUBLISH_RESULT_ACK);
        drain(AMQP_NOTIFY_QUEUE);
}
END_TEST

START_TEST(test_publish_rejects_bad_arguments)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = client();
        struct amqp_message m = payment_message("x", "{}");
        enum amqp_publish_result result;

        ck_assert_int_eq(amqp_publish_batch(c, &m, 0, &result), -EINVAL);
        ck_assert_int_eq(amqp_publish_batch(c, &m, AMQP_PUBLISH_MAX_BATCH + 1, &result), -EINVAL);
        m.body_size = AMQP_MAX_BODY_SIZE + 1;
        ck_assert_int_eq(amqp_publish(c, &m, &result), -EINVAL);
        m = payment_message("x", "{}");
        m.routing_key = NULL;
        ck_assert_int_eq(amqp_publish(c, &m, &result), -EINVAL);
        amqp_client_disconnect(c);
        m = payment_message("x", "{}");
        ck_assert_int_eq(amqp_publish(c, &m, &result), -ENOTCONN);
}
END_TEST

START_TEST(test_consume_receives_message_id_headers_and_continues_the_trace)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        struct amqp_delivery *d = NULL;
        const char *parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        struct amqp_message m = payment_message("payment-42", "{\"payment_id\":42}");
        struct trace_context parent_ctx, header_ctx;
        uint8_t parent_span_id[SPAN_ID_SIZE];

        drain(AMQP_NOTIFY_QUEUE);
        c = client();
        m.traceparent = parent;
        m.tracestate = "vendor=1";
        m.timestamp = 1700000000;
        m.attempt = 2;
        publish_acked(c, &m);

        ck_assert_int_eq(amqp_consume_start(c, AMQP_NOTIFY_QUEUE, 4), 0);
        ck_assert_int_eq(amqp_receive(c, 5000, &d), 0);
        ck_assert_str_eq(d->message_id, "payment-42");
        ck_assert_str_eq(d->content_type, "application/json");
        ck_assert_str_eq(d->exchange, AMQP_EVENTS_EXCHANGE);
        ck_assert_str_eq(d->routing_key, AMQP_PAYMENT_ROUTING_KEY);
        ck_assert_int_eq(d->timestamp, 1700000000);
        ck_assert_int_eq(d->attempt, 2);
        ck_assert_str_eq(d->tracestate, "vendor=1");
        ck_assert_uint_eq(d->body_size, strlen("{\"payment_id\":42}"));
        ck_assert_str_eq(d->body, "{\"payment_id\":42}");
        ck_assert(!d->redelivered);

        /* The header names the PRODUCER span, a child of the given parent;
         * the CONSUMER span is its child and current. */
        ck_assert_ptr_nonnull(d->traceparent);
        ck_assert_int_eq(trace_parse_traceparent(parent, &parent_ctx), 0);
        ck_assert_int_eq(trace_parse_traceparent(d->traceparent, &header_ctx), 0);
        ck_assert_mem_eq(header_ctx.trace_id, parent_ctx.trace_id, TRACE_ID_SIZE);
        ck_assert_mem_ne(header_ctx.span_id, parent_ctx.span_id, SPAN_ID_SIZE);
        ck_assert_mem_eq(span_context(d->span)->trace_id, parent_ctx.trace_id, TRACE_ID_SIZE);
        ck_assert(span_parent_span_id(d->span, parent_span_id));
        ck_assert_mem_eq(parent_span_id, header_ctx.span_id, SPAN_ID_SIZE);
        ck_assert_ptr_eq(trace_current(), d->span);

        ck_assert_int_eq(amqp_ack(c, d), 0);
        amqp_delivery_free(d);
        ck_assert_ptr_null(trace_current());
        ck_assert_int_eq(amqp_receive(c, 200, &d), -ETIMEDOUT);
        ck_assert(amqp_client_is_connected(c));
}
END_TEST

START_TEST(test_first_delivery_has_no_attempt_and_a_fresh_trace)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        struct amqp_delivery *d = NULL;
        struct amqp_message m = payment_message("payment-43", "{}");
        uint8_t parent_span_id[SPAN_ID_SIZE];

        drain(AMQP_NOTIFY_QUEUE);
        c = client();
        publish_acked(c, &m);
        ck_assert_int_eq(amqp_consume_start(c, AMQP_NOTIFY_QUEUE, 4), 0);
        ck_assert_int_eq(amqp_receive(c, 5000, &d), 0);
        ck_assert_int_eq(d->attempt, 0);
        ck_assert_ptr_null(d->tracestate);
        ck_assert_int_gt(d->timestamp, 0);
        /* The producer span was a root; the consumer span is its child. */
        ck_assert_ptr_nonnull(d->traceparent);
        ck_assert(span_parent_span_id(d->span, parent_span_id));
        ck_assert_int_eq(amqp_ack(c, d), 0);
        amqp_delivery_free(d);
}
END_TEST

START_TEST(test_reject_with_requeue_redelivers_and_without_requeue_parks)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        struct amqp_delivery *d = NULL;
        struct amqp_message m = payment_message("payment-reject", "{}");
        uint64_t dead_before;

        drain(AMQP_NOTIFY_QUEUE);
        c = client();
        dead_before = queue_count(c, AMQP_NOTIFY_DEAD_QUEUE);
        publish_acked(c, &m);
        ck_assert_int_eq(amqp_consume_start(c, AMQP_NOTIFY_QUEUE, 1), 0);

        ck_assert_int_eq(amqp_receive(c, 5000, &d), 0);
        ck_assert(!d->redelivered);
        ck_assert_int_eq(amqp_reject(c, d, true), 0);
        amqp_delivery_free(d);

        ck_assert_int_eq(amqp_receive(c, 5000, &d), 0);
        ck_assert_str_eq(d->message_id, "payment-reject");
        ck_assert(d->redelivered);
        ck_assert_int_eq(amqp_reject(c, d, false), 0);
        amqp_delivery_free(d);

        ck_assert_int_eq(amqp_receive(c, 300, &d), -ETIMEDOUT);
        /* Dead-lettered by the queue's policy; the broker moves it
         * asynchronously, so poll a little. */
        for (int i = 0; i < 50 && queue_count(c, AMQP_NOTIFY_DEAD_QUEUE) == dead_before; i++)
                usleep(100 * 1000);
        ck_assert_uint_eq(queue_count(c, AMQP_NOTIFY_DEAD_QUEUE), dead_before + 1);
}
END_TEST

START_TEST(test_unacked_deliveries_return_to_the_queue_on_disconnect)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        struct amqp_delivery *d = NULL;
        struct amqp_message m = payment_message("payment-unacked", "{}");

        drain(AMQP_NOTIFY_QUEUE);
        c = client();
        publish_acked(c, &m);
        ck_assert_int_eq(amqp_consume_start(c, AMQP_NOTIFY_QUEUE, 4), 0);
        ck_assert_int_eq(amqp_receive(c, 5000, &d), 0);
        amqp_client_disconnect(c);
        ck_assert(!amqp_client_is_connected(c));
        ck_assert_int_eq(amqp_ack(c, d), -ENOTCONN);

        ck_assert_int_eq(amqp_client_connect(c), 0);
        ck_assert_int_eq(amqp_ack(c, d), -ESTALE);
        amqp_delivery_free(d);
        ck_assert_int_eq(amqp_consume_start(c, AMQP_NOTIFY_QUEUE, 4), 0);
        ck_assert_int_eq(amqp_receive(c, 5000, &d), 0);
        ck_assert_str_eq(d->message_id, "payment-unacked");
        ck_assert(d->redelivered);
        ck_assert_int_eq(amqp_ack(c, d), 0);
        amqp_delivery_free(d);
}
END_TEST

START_TEST(test_publishing_while_consuming_keeps_deliveries)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        struct amqp_delivery *d = NULL;
        char ids[20][32];
        int seen = 0;

        drain(AMQP_NOTIFY_QUEUE);
        c = client();
        ck_assert_int_eq(amqp_consume_start(c, AMQP_NOTIFY_QUEUE, 16), 0);
        /* Each publish waits for its confirm while deliveries of the
         * earlier ones arrive on the same channel. */
        for (int i = 0; i < 20; i++) {
                snprintf(ids[i], sizeof(ids[i]), "interleaved-%d", i);
                struct amqp_message m = payment_message(ids[i], "{}");
                publish_acked(c, &m);
        }
        while (seen < 20 && amqp_receive(c, 5000, &d) == 0) {
                ck_assert_str_eq(d->message_id, ids[seen]);
                ck_assert_int_eq(amqp_ack(c, d), 0);
                amqp_delivery_free(d);
                seen++;
        }
        ck_assert_int_eq(seen, 20);
}
END_TEST

START_TEST(test_spans_carry_messaging_attributes)
{
        _cleanup_free_ char *bodies = NULL;
        struct otlp_sink sink;
        struct tracer *t = NULL;
        struct amqp_client *c;
        struct amqp_delivery *d = NULL;
        char endpoint[64];
        struct tracer_options topts = {.service_name = "vigil-test", .sample_ratio = 1.0};
        struct amqp_message m = payment_message("payment-span", "{\"secret\":1}");

        drain(AMQP_NOTIFY_QUEUE);
        otlp_sink_start(&sink);
        snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%u/v1/traces", sink.port);
        topts.endpoint = endpoint;
        ck_assert_int_eq(tracer_new(&topts, &t), 0);
        c = client_with(NULL, t);
        publish_acked(c, &m);
        ck_assert_int_eq(amqp_consume_start(c, AMQP_NOTIFY_QUEUE, 4), 0);
        ck_assert_int_eq(amqp_receive(c, 5000, &d), 0);
        ck_assert_int_eq(amqp_ack(c, d), 0);
        amqp_delivery_free(d);
        amqp_client_free(c);
        tracer_free(t); /* flushes */
        bodies = otlp_sink_stop(&sink);

        ck_assert_ptr_nonnull(strstr(bodies, "\"publish vigil.events\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"process vigil.notify.payments\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"messaging.system\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"rabbitmq\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"messaging.destination.name\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"payment-span\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"messaging.operation.type\""));
        ck_assert_ptr_null(strstr(bodies, "secret"));
}
END_TEST

START_TEST(test_field_int64_reads_every_integer_kind_that_fits)
{
        amqp_field_value_t v;
        int64_t n = 42;

        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I8, .value.i8 = -8};
        ck_assert(amqp_field_int64(&v, &n) && n == -8);
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U8, .value.u8 = 200};
        ck_assert(amqp_field_int64(&v, &n) && n == 200);
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I16, .value.i16 = -1600};
        ck_assert(amqp_field_int64(&v, &n) && n == -1600);
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U16, .value.u16 = 65535};
        ck_assert(amqp_field_int64(&v, &n) && n == 65535);
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I32, .value.i32 = INT32_MIN};
        ck_assert(amqp_field_int64(&v, &n) && n == INT32_MIN);
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U32, .value.u32 = UINT32_MAX};
        ck_assert(amqp_field_int64(&v, &n) && n == UINT32_MAX);
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value.i64 = INT64_MIN};
        ck_assert(amqp_field_int64(&v, &n) && n == INT64_MIN);
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U64, .value.u64 = INT64_MAX};
        ck_assert(amqp_field_int64(&v, &n) && n == INT64_MAX);

        /* Beyond int64_t, and the kinds that are not integers. */
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U64, .value.u64 = (uint64_t)INT64_MAX + 1};
        ck_assert(!amqp_field_int64(&v, &n));
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1};
        ck_assert(!amqp_field_int64(&v, &n));
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_F64, .value.f64 = 3.0};
        ck_assert(!amqp_field_int64(&v, &n));
        v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_UTF8,
                                 .value.bytes = amqp_cstring_bytes("3")};
        ck_assert(!amqp_field_int64(&v, &n));
}
END_TEST

START_TEST(test_client_new_validates_its_options)
{
        struct amqp_client *c = NULL;
        struct amqp_client_options opts = {.url = "amqp://vigil@127.0.0.1:5672/vigil"};

        ck_assert_int_eq(amqp_client_new(&opts, &c), -ENOKEY);
        opts.password = "pw";
        ck_assert_int_eq(amqp_client_new(&opts, &c), 0);
        amqp_client_free(c);
        opts.url = "http://vigil@127.0.0.1/";
        ck_assert_int_eq(amqp_client_new(&opts, &c), -EINVAL);
        opts.url = "amqps://vigil@127.0.0.1/";
        ck_assert_int_eq(amqp_client_new(&opts, &c), -EINVAL);
        opts.url = "amqp://vigil@127.0.0.1:99999/";
        ck_assert_int_eq(amqp_client_new(&opts, &c), -EINVAL);
        opts.url = "amqp://vigil@127.0.0.1/";
        opts.heartbeat_seconds = 100000;
        ck_assert_int_eq(amqp_client_new(&opts, &c), -EINVAL);
        amqp_client_free(NULL);
}
END_TEST

START_TEST(test_wrong_password_is_access_refused_and_never_in_the_error)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        struct amqp_client_options opts = {.url = url, .password = "wrong-password-xyz"};
        char error[256];

        ck_assert_int_eq(amqp_client_new(&opts, &c), 0);
        ck_assert_int_eq(amqp_client_connect(c), -EACCES);
        ck_assert(!amqp_client_is_connected(c));
        amqp_client_last_error(c, error, sizeof(error));
        ck_assert_str_ne(error, "");
        ck_assert_ptr_null(strstr(error, "wrong-password-xyz"));
}
END_TEST

START_TEST(test_closed_port_is_connection_refused)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        struct amqp_client_options opts = {.url = "amqp://vigil:pw@127.0.0.1:1/vigil",
                                           .connect_timeout_ms = 500};

        ck_assert_int_eq(amqp_client_new(&opts, &c), 0);
        ck_assert_int_eq(amqp_client_connect(c), -ECONNREFUSED);
        ck_assert_int_eq(amqp_declare_topology(c), -ENOTCONN);
        ck_assert_int_eq(amqp_client_keepalive(c), -ENOTCONN);
}
END_TEST

START_TEST(test_missing_queue_is_enoent_and_closes_the_connection)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = client();
        uint64_t n;

        ck_assert_int_eq(amqp_queue_message_count(c, "vigil.no.such.queue", &n), -ENOENT);
        ck_assert(!amqp_client_is_connected(c));
        ck_assert_int_eq(amqp_client_connect(c), 0);
        ck_assert_int_eq(amqp_consume_start(c, "vigil.no.such.queue", 1), -ENOENT);
        ck_assert_int_eq(amqp_client_connect(c), 0);
        ck_assert_int_eq(amqp_declare_topology(c), 0);
}
END_TEST

/* Wait (bounded) until the broker accepts connections again. */
static void reconnect(struct amqp_client *c)
{
        int r = -1;

        for (int i = 0; i < 600 && r < 0; i++) {
                r = amqp_client_connect(c);
                if (r < 0)
                        usleep(100 * 1000);
        }
        ck_assert_int_eq(r, 0);
}

START_TEST(test_broker_restart_gives_econnreset_then_reconnect_works)
{
        _cleanup_(amqp_client_freep) struct amqp_client *consumer = NULL, *publisher = NULL;
        struct amqp_message m = payment_message("payment-restart", "{}");
        struct amqp_delivery *d = NULL;
        enum amqp_publish_result result;
        char cmd[1024];
        int r;

        if (!dev_stack || !dev_dir) {
                fprintf(stderr, "no dev stack to restart; skipped\n");
                return;
        }
        drain(AMQP_NOTIFY_QUEUE);
        consumer = client();
        publisher = client();
        ck_assert_int_eq(amqp_consume_start(consumer, AMQP_NOTIFY_QUEUE, 4), 0);

        snprintf(cmd, sizeof(cmd), "'%s' restart '%s' rabbitmq >/dev/null 2>&1", dev_stack,
                 dev_dir);
        ck_assert_int_eq(system(cmd), 0);

        r = amqp_receive(consumer, 2000, &d);
        ck_assert_int_eq(r, -ECONNRESET);
        ck_assert(!amqp_client_is_connected(consumer));
        r = amqp_publish(publisher, &m, &result);
        ck_assert(r == -ECONNRESET || r == -ETIMEDOUT);
        ck_assert(!amqp_client_is_connected(publisher));
        ck_assert_int_eq(amqp_publish(publisher, &m, &result), -ENOTCONN);

        reconnect(publisher);
        ck_assert_int_eq(amqp_declare_topology(publisher), 0);
        publish_acked(publisher, &m);
        reconnect(consumer);
        ck_assert_int_eq(amqp_consume_start(consumer, AMQP_NOTIFY_QUEUE, 4), 0);
        ck_assert_int_eq(amqp_receive(consumer, 5000, &d), 0);
        ck_assert_str_eq(d->message_id, "payment-restart");
        ck_assert_int_eq(amqp_ack(consumer, d), 0);
        amqp_delivery_free(d);
}
END_TEST

static Suite *amqp_suite(void)
{
        Suite *s = suite_create("amqp");
        TCase *tc = tcase_create("messages");

        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_declaring_the_topology_twice_is_idempotent);
        tcase_add_test(tc, test_confirmed_publish_is_acked_and_lands_in_the_queue);
        tcase_add_test(tc, test_mandatory_publish_to_an_unroutable_key_is_returned);
        tcase_add_test(tc, test_batch_publish_waits_for_every_confirm);
        tcase_add_test(tc, test_publish_rejects_bad_arguments);
        tcase_add_test(tc, test_consume_receives_message_id_headers_and_continues_the_trace);
        tcase_add_test(tc, test_first_delivery_has_no_attempt_and_a_fresh_trace);
        tcase_add_test(tc, test_reject_with_requeue_redelivers_and_without_requeue_parks);
        tcase_add_test(tc, test_unacked_deliveries_return_to_the_queue_on_disconnect);
        tcase_add_test(tc, test_publishing_while_consuming_keeps_deliveries);
        tcase_add_test(tc, test_spans_carry_messaging_attributes);
        suite_add_tcase(s, tc);

        tc = tcase_create("connection");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_field_int64_reads_every_integer_kind_that_fits);
        tcase_add_test(tc, test_client_new_validates_its_options);
        tcase_add_test(tc, test_wrong_password_is_access_refused_and_never_in_the_error);
        tcase_add_test(tc, test_closed_port_is_connection_refused);
        tcase_add_test(tc, test_missing_queue_is_enoent_and_closes_the_connection);
        tcase_add_test(tc, test_broker_restart_gives_econnreset_then_reconnect_works);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr;
        int failed;

        url = getenv("VIGIL_AMQP_URL");
        dev_dir = getenv("VIGIL_DEV_DIR");
        dev_stack = getenv("VIGIL_DEV_STACK");
        if (!url) {
                fprintf(stderr, "SKIP: no RabbitMQ; run through tests/with-servers.sh\n");
                return 77;
        }

        sr = srunner_create(amqp_suite());
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
