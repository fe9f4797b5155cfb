/* AMQP 0-9-1 (RabbitMQ) over rabbitmq-c: one connection with one channel,
 * the payment-events topology of docs/messaging.md, confirmed publishing
 * and manual-ack consuming, each with its span and metrics.
 *
 * A client connects lazily and never reconnects by itself: every call that
 * finds the connection broken (socket error, missed heartbeats, the broker
 * closing the channel or the connection) tears it down and returns
 * -ECONNRESET; the caller backs off and calls amqp_client_connect() again,
 * then declares the topology and starts consuming again. Unacknowledged
 * deliveries return to their queue when a connection goes away.
 *
 * Observability: a PRODUCER span "publish <exchange>" per message (its
 * context is what the message's traceparent header carries), a CONSUMER span
 * "process <queue>" per delivery (child of the message's traceparent),
 * both with messaging.system=rabbitmq, messaging.destination.name,
 * messaging.message.id and messaging.operation.type; the shared
 * vigil_dependency_* metrics with dependency="amqp" (operations connect,
 * declare, consume, publish, queue_count), vigil_dependency_up{dependency="amqp"}
 * and vigil_amqp_publish_total{result="ack"|"nack"|"returned"|"error"}.
 *
 * A publisher (the outbox relay) does: amqp_client_new() once; then in its
 * loop amqp_client_connect() + amqp_declare_topology() when not connected
 * (backing off on failure), amqp_publish_batch() of the locked rows with
 * message_id "payment-<id>" and the row's traceparent, marks the rows whose
 * result is ACK as published (a NACK or RETURNED row stays pending and is
 * counted), and amqp_client_keepalive() while idle.
 *
 * Thread-safety: a client is used by one thread at a time (the one that
 * publishes or consumes); only amqp_client_is_connected() may be called
 * from any thread. Several clients may share one metrics registry. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

struct metrics_registry;
struct tracer;
struct span;
struct amqp_client;

/* The topology of docs/messaging.md. */
#define AMQP_EVENTS_EXCHANGE     "vigil.events"
#define AMQP_PAYMENT_ROUTING_KEY "payment.created"
#define AMQP_NOTIFY_QUEUE        "vigil.notify.payments"
#define AMQP_NOTIFY_DEAD_QUEUE   "vigil.notify.dead"
#define AMQP_NOTIFY_RETRY_QUEUES 3 /* vigil.notify.retry.1 … .3 */
#define AMQP_ATTEMPT_HEADER      "x-vigil-attempt"
#define AMQP_REASON_HEADER       "x-vigil-reason"

/* Limits. A delivery whose body is larger than AMQP_MAX_BODY_SIZE is
 * returned with body_too_large set and no body (reject it: the broker
 * dead-letters it to vigil.notify.dead). Header strings (message id,
 * traceparent, tracestate) longer than AMQP_MAX_PROPERTY_LEN are ignored. */
#define AMQP_MAX_BODY_SIZE     (1024U * 1024U)
#define AMQP_MAX_PROPERTY_LEN  255
#define AMQP_PUBLISH_MAX_BATCH 1024
#define AMQP_MAX_PREFETCH      65535

struct amqp_client_options {
        /* amqp://user[:password]@host[:port][/vhost] (default port 5672,
         * vhost "/"); percent-escapes are decoded. */
        const char *url;
        const char *password;             /* overrides the URL's; NULL: the URL's */
        const char *connection_name;      /* shown by the broker ("vigil-notifyd"); may be NULL */
        unsigned connect_timeout_ms;      /* TCP connect and login; 0: 2000 */
        unsigned rpc_timeout_ms;          /* declarations and publisher confirms; 0: 5000 */
        unsigned heartbeat_seconds;       /* 0: 30 */
        struct metrics_registry *metrics; /* may be NULL */
        struct tracer *tracer;            /* may be NULL */
};

/* Create a client; does not connect. Returns 0, -EINVAL for a malformed URL
 * or options out of range (timeouts above one hour, heartbeat above 600 s),
 * -ENOKEY when neither the URL nor opts->password has a password, -EEXIST
 * when metrics holds a family of the same names not made for this purpose,
 * or -ENOMEM. The password is kept in memory only and wiped on free. */
int amqp_client_new(const struct amqp_client_options *opts, struct amqp_client **ret);
/* Close the connection cleanly (when open) and free. Accepts NULL. */
void amqp_client_free(struct amqp_client *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct amqp_client *, amqp_client_free)

/* Open the connection, log in, open the channel and put it into confirm
 * mode. A no-op when connected. Returns 0, -ECONNREFUSED when the broker
 * cannot be reached in time, -EACCES when it refuses the credentials or the
 * vhost, or another negative errno. amqp_client_last_error() says why. */
int amqp_client_connect(struct amqp_client *c);
/* Close the connection cleanly (unacked deliveries go back to their queue).
 * A no-op when not connected. */
void amqp_client_disconnect(struct amqp_client *c);
/* While failed, connecting fails with -ECONNREFUSED and the owner's next
 * receive, publish or keepalive drops the connection with -ECONNRESET, as
 * when the broker is down: for [faults] fail_dependency. Any thread. */
void amqp_client_set_failed(struct amqp_client *c, bool failed);
/* Whether the last call left the connection up. Any thread. */
bool amqp_client_is_connected(const struct amqp_client *c);
/* "host:port/vhost: reason" of the last failure ("" when none) into buf;
 * never the password. */
void amqp_client_last_error(const struct amqp_client *c, char *buf, size_t size);

/* Send pending heartbeats and notice a broker that went away, without
 * blocking. A publisher that stays idle longer than the heartbeat interval
 * should call it (e.g. on every poll timeout). Returns 0, -ENOTCONN, or
 * -ECONNRESET. */
int amqp_client_keepalive(struct amqp_client *c);

/* Declare the topology of docs/messaging.md: the exchange, the queues with
 * their arguments, the binding. Idempotent; both paymentd and notifyd call
 * it after every connect. Returns 0, -ENOTCONN, -ECONNRESET, or -EBADE when
 * the broker holds an entity of the same name with other arguments
 * (PRECONDITION_FAILED: the connection is then closed). */
int amqp_declare_topology(struct amqp_client *c);

/* Messages held in a queue (passive declare), e.g. for tests and dashboards.
 * Returns 0, -ENOENT for no such queue (the connection is then closed), or
 * the errors of amqp_declare_topology(). */
int amqp_queue_message_count(struct amqp_client *c, const char *queue, uint64_t *ret_count);

/* --------------------------------------------------------------- publish */

struct amqp_message {
        const char *exchange;    /* "" for the default exchange */
        const char *routing_key; /* at most 255 bytes */
        const char *message_id;  /* the consumer's idempotency key; may be NULL */
        const void *body;
        size_t body_size;         /* at most AMQP_MAX_BODY_SIZE */
        const char *content_type; /* NULL: "application/json" */
        int64_t timestamp;        /* seconds since the epoch; 0: now */
        /* The trace this message belongs to: the PRODUCER span is its child
         * (NULL or invalid: the thread's current span, else a new trace).
         * The traceparent header carries the PRODUCER span's context;
         * tracestate (may be NULL) is passed through. */
        const char *traceparent;
        const char *tracestate;
        int attempt;        /* x-vigil-attempt header when > 0 */
        const char *reason; /* x-vigil-reason header (why it was parked); may be NULL */
};

enum amqp_publish_result {
        AMQP_PUBLISH_RESULT_ACK,      /* the broker took responsibility for it */
        AMQP_PUBLISH_RESULT_NACK,     /* the broker lost it: publish again */
        AMQP_PUBLISH_RESULT_RETURNED, /* unroutable (mandatory): no queue has it */
};

/* Publish n messages (persistent, mandatory) and wait until the broker has
 * confirmed every one of them, at most rpc_timeout_ms in all. Returns 0 and
 * one result per message in ret_results (an array of n), or -ENOTCONN,
 * -EINVAL (n outside 1..AMQP_PUBLISH_MAX_BATCH, a body or key too long),
 * -ETIMEDOUT (confirms missing: the connection is closed, because late
 * confirms could not be matched any more), or -ECONNRESET. On any error no
 * result is written and every message of the batch must be treated as
 * unconfirmed: it may or may not have reached a queue (publish it again; the
 * consumer deduplicates by message_id). Only an ACK means "stored". */
int amqp_publish_batch(struct amqp_client *c, const struct amqp_message *msgs, size_t n,
                       enum amqp_publish_result *ret_results);
/* One message: amqp_publish_batch() with n = 1. */
int amqp_publish(struct amqp_client *c, const struct amqp_message *msg,
                 enum amqp_publish_result *ret_result);

/* --------------------------------------------------------------- consume */

struct amqp_delivery {
        uint64_t delivery_tag;
        bool redelivered;
        char *exchange;
        char *routing_key;
        char *message_id;   /* NULL when absent */
        char *content_type; /* NULL when absent */
        int64_t timestamp;  /* seconds; 0 when absent */
        char *traceparent;  /* header; NULL when absent */
        char *tracestate;   /* header; NULL when absent */
        int attempt;        /* x-vigil-attempt; 0 when absent or not an integer */
        bool body_too_large;
        void *body; /* NUL-terminated for convenience; NULL when too large */
        size_t body_size;
        /* The CONSUMER span, current on the receiving thread until
         * amqp_delivery_free(); add attributes or an error status to it. */
        struct span *span;
        uint64_t connection_id;     /* internal: the connection it came on */
        struct span *previous_span; /* internal: restored as current on free */
};

/* Copy what vigil reads of a delivered message's properties, as
 * librabbitmq decoded them from the content header frame, into d (whose
 * string fields must be NULL): message_id, content_type and the headers
 * "traceparent" and "tracestate" (each a string of 1..AMQP_MAX_PROPERTY_LEN
 * bytes without NUL, else left NULL; of several headers of one name the
 * first that qualifies counts), the timestamp (0 when absent or beyond
 * INT64_MAX) and AMQP_ATTEMPT_HEADER (the last integer one decides; 0 when
 * it is outside 0..1000000).
 * No I/O: amqp_receive() and tests/fuzz/fuzz-notify.c run it. Returns 0,
 * or -ENOMEM with d partly filled (free its strings). */
struct amqp_basic_properties_t_;
int amqp_delivery_read_properties(const struct amqp_basic_properties_t_ *p,
                                  struct amqp_delivery *d);

/* The value of an AMQP table field of an integer kind (signed or unsigned,
 * 8 to 64 bits), as amqp_delivery_read_properties() reads
 * AMQP_ATTEMPT_HEADER: false for any other kind and for an unsigned value
 * beyond INT64_MAX. */
struct amqp_field_value_t_;
bool amqp_field_int64(const struct amqp_field_value_t_ *v, int64_t *ret);

/* basic.qos prefetch, then basic.consume with manual acks on queue.
 * Returns 0, -EINVAL (prefetch outside 1..AMQP_MAX_PREFETCH), -ENOTCONN,
 * -ENOENT for no such queue (the connection is then closed), or
 * -ECONNRESET. Consuming stops with the connection. */
int amqp_consume_start(struct amqp_client *c, const char *queue, unsigned prefetch);

/* Wait up to timeout_ms for the next delivery. Returns 0 and a delivery in
 * *ret (the caller frees it with amqp_delivery_free(), after settling it
 * with amqp_ack() or amqp_reject()), -ETIMEDOUT when none came,
 * -ENOTCONN, -ECONNRESET, or -ENOMEM. Starts the delivery's CONSUMER span
 * and makes it the thread's current span. */
int amqp_receive(struct amqp_client *c, unsigned timeout_ms, struct amqp_delivery **ret);
/* Acknowledge (the broker forgets it) or reject it (requeue: back to its
 * queue; else dead-lettered by the queue's policy, for vigil.notify.payments
 * into vigil.notify.dead). Returns 0, -ENOTCONN or -ECONNRESET (then the
 * broker requeues it by itself). A delivery from an earlier connection is
 * not settled and gives -ESTALE. */
int amqp_ack(struct amqp_client *c, const struct amqp_delivery *d);
int amqp_reject(struct amqp_client *c, const struct amqp_delivery *d, bool requeue);
/* End its span (restoring the thread's previous current span) and free.
 * Accepts NULL. */
void amqp_delivery_free(struct amqp_delivery *d);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct amqp_delivery *, amqp_delivery_free)
