/* The consumer thread of vigil-notifyd: consumes the payment events of
 * docs/messaging.md and records each notification exactly once.
 *
 * Per delivery: poison (no message id, a body that is not a valid event)
 * is parked in vigil.notify.dead and acked; otherwise one PostgreSQL
 * transaction claims the message id and records the notification, and the
 * delivery is acked after the commit (a duplicate is acked as it is). A
 * failure of this message (the simulated send, a constraint) sends it
 * through vigil.notify.retry.<n> and finally to the dead queue. When
 * PostgreSQL is unavailable the consumer closes its AMQP connection (the
 * broker requeues what it had not acked) and waits for it with backoff, so
 * an outage parks nothing; a lost broker is reconnected with backoff.
 *
 * Thread-safety: new/free/start/stop from the manager's thread; the
 * setters and getters from any thread. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct amqp_client;
struct pg_pool;
struct metrics_registry;
struct notifyd_consumer;

#define NOTIFYD_BACKOFF_MIN_MS 100
#define NOTIFYD_BACKOFF_MAX_MS 5000

struct notifyd_consumer_options {
        struct amqp_client *amqp; /* owned by the caller, used only by the thread */
        struct pg_pool *pg;
        struct metrics_registry *metrics;
        unsigned prefetch;     /* 1..AMQP_MAX_PREFETCH */
        unsigned max_attempts; /* 1..1 + AMQP_NOTIFY_RETRY_QUEUES */
        unsigned send_latency_ms;
        double error_ratio; /* [faults] */
        unsigned fault_latency_ms;
};

/* Returns 0, -EINVAL for options out of range, -EEXIST when metrics already
 * holds the vigil_notify_* families, or -ENOMEM. */
int notifyd_consumer_new(const struct notifyd_consumer_options *opts,
                         struct notifyd_consumer **ret);
/* Stops (when running) and frees. Accepts NULL. */
void notifyd_consumer_free(struct notifyd_consumer *c);

/* Start the thread. Returns 0 or a negative errno. */
int notifyd_consumer_start(struct notifyd_consumer *c);
/* Finish the current message, close the connection cleanly, join. */
void notifyd_consumer_stop(struct notifyd_consumer *c);

/* Reloadable settings, applied from the next message on. */
void notifyd_consumer_set_processing(struct notifyd_consumer *c, unsigned send_latency_ms,
                                     double error_ratio, unsigned fault_latency_ms);

/* Readiness: true while consuming (connected to RabbitMQ, PostgreSQL
 * answering and migrated). */
bool notifyd_consumer_is_consuming(const struct notifyd_consumer *c);
bool notifyd_consumer_postgres_ok(const struct notifyd_consumer *c);
bool notifyd_consumer_amqp_ok(const struct notifyd_consumer *c);
/* Liveness: false when one loop iteration has been running longer than
 * max_usec (a hung thread). */
bool notifyd_consumer_is_healthy(const struct notifyd_consumer *c, uint64_t max_usec);

/* What to do with a message that failed attempt (0 for the first delivery,
 * the x-vigil-attempt header after): > 0, the retry queue number to send
 * it to, or 0 to park it in the dead queue. */
unsigned notifyd_retry_queue_for(unsigned attempt, unsigned max_attempts);
