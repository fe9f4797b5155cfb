/* vigil-paymentd's transactional outbox relay: a thread of its own that
 * moves committed payment events from payment.outbox to RabbitMQ.
 *
 * Each round, in one PostgreSQL transaction on the relay's own connection:
 * lock up to batch_size unpublished events (ORDER BY id, FOR UPDATE SKIP
 * LOCKED, so several relays never publish the same row at once), publish
 * them persistent and mandatory with message_id and the payment's trace
 * context as headers, wait for the broker's confirms, set published_at on
 * the acknowledged ones, count an attempt on the others, commit. A nack, a
 * return or a lost connection leaves events unpublished: they are sent
 * again after a backoff.
 *
 * Delivery is therefore at least once. Duplicates are possible -- the
 * broker confirmed a message and the relay died (or PostgreSQL went away)
 * before the COMMIT marking it -- and are absorbed by notifyd, which
 * records every message_id ("payment-<id>") in the same transaction as its
 * notification and drops a second delivery (docs/messaging.md).
 *
 * The relay sleeps on LISTEN payment_outbox (each charge NOTIFYs once it
 * has committed) with a poll_interval_ms fallback, so an event is
 * normally published within milliseconds and at worst after one interval.
 * It reconnects to PostgreSQL and RabbitMQ with capped exponential backoff
 * and declares the topology of docs/messaging.md after every connect.
 *
 * Thread-safety: new/start/stop/free from the owning (main) thread;
 * outbox_relay_amqp_up() and outbox_relay_is_healthy() from any thread.
 * The pool and the AMQP client given to the relay are used only by its
 * thread while it runs. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct pg_pool;
struct amqp_client;
struct tracer;
struct span;
struct outbox_relay;

#define OUTBOX_MAX_BATCH 1000

struct outbox_relay_options {
        struct pg_pool *pool;      /* the relay's own (size 1); borrowed */
        struct amqp_client *amqp;  /* borrowed; connected by the relay */
        struct tracer *tracer;     /* may be NULL */
        unsigned batch_size;       /* 1..OUTBOX_MAX_BATCH; 0: 100 */
        unsigned poll_interval_ms; /* fallback wake-up; 0: 1000; at most 10000 */
};

/* Returns 0, -EINVAL (missing pool or amqp, values out of range) or
 * -ENOMEM. Does not start the thread. */
int outbox_relay_new(const struct outbox_relay_options *opts, struct outbox_relay **ret);
/* Start the thread. Returns 0, -EALREADY, or the errno of creating it. */
int outbox_relay_start(struct outbox_relay *r);
/* Ask the thread to stop and wait for it: it finishes (or abandons) the
 * round in progress, closes the AMQP connection and gives its PostgreSQL
 * connection back. Idempotent. */
void outbox_relay_stop(struct outbox_relay *r);
/* Stop and free. Accepts NULL. */
void outbox_relay_free(struct outbox_relay *r);

/* Whether the relay's AMQP connection is up (for /ready). */
bool outbox_relay_amqp_up(const struct outbox_relay *r);
/* False when the thread has not come round its loop for max_stall_usec
 * (stuck): every wait in the loop is bounded far below that. True when the
 * thread is not running. */
bool outbox_relay_is_healthy(const struct outbox_relay *r, uint64_t max_stall_usec);

/* Backoff for the n-th consecutive failure (n >= 1): 100 ms doubling up to
 * 5 s, with up to 25 % random jitter subtracted so relays do not retry in
 * lockstep. jitter_draw is in [0, 1). Pure, for tests. */
unsigned outbox_backoff_ms(unsigned n, double jitter_draw);

