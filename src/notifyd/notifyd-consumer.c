#include "notifyd-consumer.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "amqp.h"
#include "daemon.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "notifyd-notifications.h"
#include "pg.h"
#include "trace.h"

#define RECEIVE_TIMEOUT_MS 500
#define CHANNEL            "email"

static const double lag_buckets[] = {0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800};

struct notifyd_consumer {
        struct amqp_client *amqp;
        struct pg_pool *pg;
        unsigned prefetch;
        unsigned max_attempts;

        _Atomic unsigned send_latency_ms;
        _Atomic unsigned fault_latency_ms;
        _Atomic double error_ratio;

        pthread_t thread;
        bool running;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stop; /* under lock */

        atomic_bool consuming;
        atomic_bool postgres_ok;
        atomic_bool amqp_ok;
        atomic_uint_fast64_t iteration_started; /* CLOCK_MONOTONIC µs; 0: idle */

        bool migrated;
        unsigned backoff_ms;
        uint64_t random_state;

        struct metric *processed, *duplicate, *dead_lettered, *retried;
        struct metric *dead_total;
        struct metric *lag;
};

/* What became of a delivery. */
enum outcome {
        OUTCOME_SETTLED, /* acked or parked: go on */
        OUTCOME_OUTAGE,  /* PostgreSQL unavailable: stop consuming */
        OUTCOME_BROKEN,  /* the AMQP connection is gone */
};

unsigned notifyd_retry_queue_for(unsigned attempt, unsigned max_attempts)
{
        if (attempt + 1 >= max_attempts || attempt + 1 > AMQP_NOTIFY_RETRY_QUEUES)
                return 0;
        return attempt + 1;
}

/* The consumer's metrics; -EEXIST when they are registered already. */
static int register_metrics(struct notifyd_consumer *c, struct metrics_registry *metrics)
{
        struct metric_family *processed, *dead, *lag;

        processed = metrics_counter_new(metrics, "vigil_notify_processed_total",
                                        "Payment events handled, by result",
                                        (const char *const[]){"result", NULL});
        dead = metrics_counter_new(metrics, "vigil_notify_dead_lettered_total",
                                   "Messages parked in vigil.notify.dead", NULL);
        lag = metrics_histogram_new(metrics, "vigil_notify_lag_seconds",
                                    "Time from the payment's commit to its processing", NULL,
                                    lag_buckets, ELEMENTSOF(lag_buckets));
        if (!processed || !dead || !lag)
                return -EEXIST;
        c->processed = metrics_child1(processed, "processed");
        c->duplicate = metrics_child1(processed, "duplicate");
        c->dead_lettered = metrics_child1(processed, "dead_lettered");
        c->retried = metrics_child1(processed, "retried");
        c->dead_total = metrics_child(dead, NULL);
        c->lag = metrics_child(lag, NULL);
        return 0;
}

int notifyd_consumer_new(const struct notifyd_consumer_options *opts, struct notifyd_consumer **ret)
{
        struct notifyd_consumer *c;
        pthread_condattr_t attr;

        if (!opts || !opts->amqp || !opts->pg || opts->prefetch < 1 ||
            opts->prefetch > AMQP_MAX_PREFETCH || opts->max_attempts < 1 ||
            opts->max_attempts > 1 + AMQP_NOTIFY_RETRY_QUEUES || !(opts->error_ratio >= 0.0) ||
            opts->error_ratio > 1.0)
                return -EINVAL;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->amqp = opts->amqp;
        c->pg = opts->pg;
        c->prefetch = opts->prefetch;
        c->max_attempts = opts->max_attempts;
        atomic_init(&c->send_latency_ms, opts->send_latency_ms);
        atomic_init(&c->fault_latency_ms, opts->fault_latency_ms);
        atomic_init(&c->error_ratio, opts->error_ratio);
        atomic_init(&c->consuming, false);
        atomic_init(&c->postgres_ok, false);
        atomic_init(&c->amqp_ok, false);
        atomic_init(&c->iteration_started, 0);
        c->backoff_ms = NOTIFYD_BACKOFF_MIN_MS;
        if (getrandom(&c->random_state, sizeof(c->random_state), 0) !=
            (ssize_t)sizeof(c->random_state))
                c->random_state = now_usec(CLOCK_REALTIME);
        c->random_state |= 1;

        pthread_mutex_init(&c->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&c->cond, &attr);
        pthread_condattr_destroy(&attr);

        if (opts->metrics && register_metrics(c, opts->metrics) < 0) {
                notifyd_consumer_free(c);
                return -EEXIST;
        }

        *ret = c;
        return 0;
}

void notifyd_consumer_free(struct notifyd_consumer *c)
{
        if (!c)
                return;
        notifyd_consumer_stop(c);
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->cond);
        free(c);
}

void notifyd_consumer_set_processing(struct notifyd_consumer *c, unsigned send_latency_ms,
                                     double error_ratio, unsigned fault_latency_ms)
{
        atomic_store(&c->send_latency_ms, send_latency_ms);
        atomic_store(&c->fault_latency_ms, fault_latency_ms);
        if (error_ratio >= 0.0 && error_ratio <= 1.0)
                atomic_store(&c->error_ratio, error_ratio);
}

bool notifyd_consumer_is_consuming(const struct notifyd_consumer *c)
{
        return atomic_load(&c->consuming);
}

bool notifyd_consumer_postgres_ok(const struct notifyd_consumer *c)
{
        return atomic_load(&c->postgres_ok);
}

bool notifyd_consumer_amqp_ok(const struct notifyd_consumer *c)
{
        return atomic_load(&c->amqp_ok);
}

bool notifyd_consumer_is_healthy(const struct notifyd_consumer *c, uint64_t max_usec)
{
        uint64_t started = atomic_load(&c->iteration_started);

        return started == 0 || now_usec(CLOCK_MONOTONIC) - started <= max_usec;
}

static bool stopping(struct notifyd_consumer *c)
{
        bool stop;

        pthread_mutex_lock(&c->lock);
        stop = c->stop;
        pthread_mutex_unlock(&c->lock);
        return stop;
}

/* Sleep ms unless asked to stop; returns false when stopping. */
static bool sleep_unless_stopped(struct notifyd_consumer *c, unsigned ms)
{
        struct timespec deadline;
        bool stop;

        deadline = monotonic_deadline_ms(ms);
        pthread_mutex_lock(&c->lock);
        while (!c->stop && pthread_cond_timedwait(&c->cond, &c->lock, &deadline) == 0)
                ;
        stop = c->stop;
        pthread_mutex_unlock(&c->lock);
        return !stop;
}

/* Wait the current backoff (with ±25 % jitter) and double it. */
static bool back_off(struct notifyd_consumer *c)
{
        unsigned ms = c->backoff_ms;

        c->random_state ^= c->random_state << 13;
        c->random_state ^= c->random_state >> 7;
        c->random_state ^= c->random_state << 17;
        ms = ms * 3 / 4 + (unsigned)(c->random_state % (ms / 2 + 1));
        c->backoff_ms = c->backoff_ms * 2 > NOTIFYD_BACKOFF_MAX_MS ? NOTIFYD_BACKOFF_MAX_MS
                                                                   : c->backoff_ms * 2;
        log_debug("Consumer: trying again in %u ms", ms);
        return sleep_unless_stopped(c, ms);
}

static double random_unit(struct notifyd_consumer *c)
{
        c->random_state ^= c->random_state << 13;
        c->random_state ^= c->random_state >> 7;
        c->random_state ^= c->random_state << 17;
        return (double)(c->random_state >> 11) / (double)(1ULL << 53);
}

/* The simulated send: latency, and a failure per [faults] error_ratio. */
static int simulated_send(const struct payment_event *e, void *userdata)
{
        struct notifyd_consumer *c = userdata;
        unsigned latency = atomic_load(&c->send_latency_ms) + atomic_load(&c->fault_latency_ms);
        double ratio = atomic_load(&c->error_ratio);

        (void)e;
        if (latency > 0) {
                struct timespec ts = {.tv_sec = latency / 1000,
                                      .tv_nsec = (long)(latency % 1000) * 1000000L};
                nanosleep(&ts, NULL);
        }
        if (ratio > 0.0 && random_unit(c) < ratio)
                return -EREMOTEIO;
        return 0;
}

static void set_postgres_ok(struct notifyd_consumer *c, bool ok)
{
        if (atomic_exchange(&c->postgres_ok, ok) != ok)
                log_full_errno(ok ? LOG_NOTICE : LOG_WARNING, 0, "PostgreSQL is %s",
                               ok ? "reachable again: consuming" : "unavailable: not consuming");
}

static void set_amqp_ok(struct notifyd_consumer *c, bool ok, int error)
{
        char reason[256];

        if (atomic_exchange(&c->amqp_ok, ok) == ok)
                return;
        if (ok) {
                log_notice("Consuming from RabbitMQ queue %s", AMQP_NOTIFY_QUEUE);
                return;
        }
        amqp_client_last_error(c->amqp, reason, sizeof(reason));
        if (*reason)
                log_warning("RabbitMQ is unavailable (%s); reconnecting with backoff", reason);
        else
                log_warning_errno(error, "RabbitMQ is unavailable (%m); reconnecting with "
                                         "backoff");
}

/* Republish a copy of d to queue (default exchange), confirmed. Returns 0,
 * -EPROTO when the broker did not take it (nack, unroutable), or an amqp
 * error. */
static int republish(struct notifyd_consumer *c, const struct amqp_delivery *d, const char *queue,
                     int attempt, const char *reason)
{
        enum amqp_publish_result result;
        struct amqp_message m = {
                .exchange = "",
                .routing_key = queue,
                .message_id = d->message_id,
                .body = d->body,
                .body_size = d->body_size,
                .content_type = d->content_type,
                .timestamp = d->timestamp,
                .tracestate = d->tracestate,
                .attempt = attempt,
                .reason = reason,
        };
        int r;

        /* The producer span is a child of the delivery's (current) span. */
        r = amqp_publish(c->amqp, &m, &result);
        if (r < 0)
                return r;
        return result == AMQP_PUBLISH_RESULT_ACK ? 0 : -EPROTO;
}

static enum outcome settle_ack(struct notifyd_consumer *c, const struct amqp_delivery *d)
{
        int r = amqp_ack(c->amqp, d);

        if (r < 0)
                log_debug("Consumer: ack of message %s failed (%s); it will be redelivered",
                          d->message_id ?: "(no id)", strerror(-r));
        else
                log_debug("Consumer: acknowledged message %s", d->message_id ?: "(no id)");

        /* A failed ack is redelivered later: a duplicate, a no-op. */
        return r < 0 ? OUTCOME_BROKEN : OUTCOME_SETTLED;
}

/* Park d in the dead queue (confirmed), then ack it. */
static enum outcome park(struct notifyd_consumer *c, const struct amqp_delivery *d,
                         const char *reason)
{
        int r;

        r = republish(c, d, AMQP_NOTIFY_DEAD_QUEUE, d->attempt, reason);
        if (r < 0) {
                log_warning_errno(r,
                                  "Could not park message %s in %s: %m; it will be "
                                  "redelivered",
                                  d->message_id ?: "(no id)", AMQP_NOTIFY_DEAD_QUEUE);
                amqp_client_disconnect(c->amqp);
                return OUTCOME_BROKEN;
        }
        log_warning("Parked message %s in %s: %s", d->message_id ?: "(no id)",
                    AMQP_NOTIFY_DEAD_QUEUE, reason);
        span_set_attribute_string(d->span, "vigil.notify.result", "dead_lettered");
        span_set_status(d->span, SPAN_STATUS_ERROR, reason);
        metrics_counter_inc(c->dead_lettered);
        metrics_counter_inc(c->dead_total);
        return settle_ack(c, d);
}

/* This attempt failed: next retry queue, or the dead queue at the end. */
static enum outcome retry(struct notifyd_consumer *c, const struct amqp_delivery *d, int error)
{
        unsigned n = notifyd_retry_queue_for((unsigned)d->attempt, c->max_attempts);
        char queue[64], reason[128];
        int r;

        snprintf(reason, sizeof(reason), "processing failed: %s", strerror(-error));
        if (n == 0) {
                snprintf(reason, sizeof(reason), "processing failed %d times, last: %s",
                         d->attempt + 1, strerror(-error));
                return park(c, d, reason);
        }
        snprintf(queue, sizeof(queue), "vigil.notify.retry.%u", n);
        log_debug("Consumer: message %s failed attempt %d of %u; republishing to %s", d->message_id,
                  d->attempt + 1, c->max_attempts, queue);
        r = republish(c, d, queue, (int)n, reason);
        if (r < 0) {
                log_warning_errno(r,
                                  "Could not send message %s to %s: %m; it will be "
                                  "redelivered",
                                  d->message_id, queue);
                amqp_client_disconnect(c->amqp);
                return OUTCOME_BROKEN;
        }
        log_info("Message %s failed (%s); retrying through %s", d->message_id, strerror(-error),
                 queue);
        span_set_attribute_string(d->span, "vigil.notify.result", "retried");
        span_set_status(d->span, SPAN_STATUS_ERROR, reason);
        metrics_counter_inc(c->retried);
        return settle_ack(c, d);
}

static bool is_outage(int r)
{
        return r == -ECONNREFUSED || r == -ECONNRESET || r == -ETIMEDOUT || r == -EAGAIN ||
               r == -ENOMEM;
}

static enum outcome handle(struct notifyd_consumer *c, const struct amqp_delivery *d)
{
        struct payment_event e;
        char trace_id[2 * TRACE_ID_SIZE + 1], reason[128];
        const char *trace = NULL;
        bool duplicate = false;
        int r;

        if (d->timestamp > 0) {
                double lag = (double)now_usec(CLOCK_REALTIME) / USEC_PER_SEC - (double)d->timestamp;
                metrics_histogram_observe(c->lag, lag > 0 ? lag : 0, span_context(d->span));
        }
        log_debug("Consumer: received message %s from %s (attempt %d, %zu bytes%s)",
                  d->message_id ?: "(no id)", d->routing_key ?: "?", d->attempt + 1, d->body_size,
                  d->redelivered ? ", redelivered" : "");

        if (d->body_too_large) {
                /* Not held in memory: the queue's dead-letter policy parks
                 * it, body and all. */
                log_warning("Parked message %s in %s: body larger than %u bytes",
                            d->message_id ?: "(no id)", AMQP_NOTIFY_DEAD_QUEUE, AMQP_MAX_BODY_SIZE);
                r = amqp_reject(c->amqp, d, false);
                if (r < 0)
                        return OUTCOME_BROKEN;
                metrics_counter_inc(c->dead_lettered);
                metrics_counter_inc(c->dead_total);
                return OUTCOME_SETTLED;
        }
        if (!d->message_id)
                return park(c, d, "poison: no message_id");
        r = notifications_parse_event(d->body, d->body_size, &e);
        if (r == -ENOMEM)
                return OUTCOME_OUTAGE;
        if (r < 0) {
                snprintf(reason, sizeof(reason), "poison: %s",
                         r == -EBADMSG  ? "not a JSON object"
                         : r == -ERANGE ? "a field is out of range"
                                        : "a field is missing or has the wrong type");
                return park(c, d, reason);
        }

        if (trace_context_is_valid(span_context(d->span))) {
                trace_format_trace_id(span_context(d->span), trace_id);
                trace = trace_id;
        }
        r = notifications_record(c->pg, d->message_id, &e, CHANNEL, trace, simulated_send, c,
                                 &duplicate);
        if (r < 0 && is_outage(r)) {
                char error[256];

                pg_pool_last_error(c->pg, error, sizeof(error));
                log_warning_errno(r,
                                  "PostgreSQL failed on message %s (%m%s%s); stopping "
                                  "consumption until it answers",
                                  d->message_id, *error ? ": " : "", error);
                return OUTCOME_OUTAGE;
        }
        if (r < 0)
                return retry(c, d, r);

        span_set_attribute_string(d->span, "vigil.notify.result",
                                  duplicate ? "duplicate" : "processed");
        metrics_counter_inc(duplicate ? c->duplicate : c->processed);
        /* One entry per event, like an access log: it carries the payment's
         * TRACE_ID (the delivery's span is current), so journalctl finds a
         * charge's notification by its trace. */
        if (duplicate)
                log_info("Message %s was already processed; acknowledging the duplicate",
                         d->message_id);
        else
                log_info("Notified user %" PRId64 " of %s", e.user_id, d->message_id);
        return settle_ack(c, d);
}

/* Connect, declare, consume. Returns 0 or a negative errno. */
static int start_consuming(struct notifyd_consumer *c)
{
        int r;

        r = amqp_client_connect(c->amqp);
        if (r >= 0)
                r = amqp_declare_topology(c->amqp);
        if (r >= 0)
                r = amqp_consume_start(c->amqp, AMQP_NOTIFY_QUEUE, c->prefetch);
        if (r < 0)
                amqp_client_disconnect(c->amqp);
        return r;
}

static int wait_for_postgres(struct notifyd_consumer *c)
{
        int r;

        r = pg_pool_ping(c->pg);
        if (r < 0)
                return r;
        if (!c->migrated) {
                r = daemon_migrate(c->pg, &notifyd_schema);
                if (r < 0)
                        return r;
                c->migrated = true;
        }
        return 0;
}

static void *run(void *userdata)
{
        struct notifyd_consumer *c = userdata;

        while (!stopping(c)) {
                struct amqp_delivery *d = NULL;
                enum outcome outcome;
                int r;

                atomic_store(&c->iteration_started, now_usec(CLOCK_MONOTONIC));

                if (!atomic_load(&c->postgres_ok) || !c->migrated) {
                        atomic_store(&c->consuming, false);
                        r = wait_for_postgres(c);
                        if (r < 0) {
                                atomic_store(&c->iteration_started, 0);
                                if (!back_off(c))
                                        break;
                                continue;
                        }
                        set_postgres_ok(c, true);
                        c->backoff_ms = NOTIFYD_BACKOFF_MIN_MS;
                }

                if (!amqp_client_is_connected(c->amqp)) {
                        atomic_store(&c->consuming, false);
                        r = start_consuming(c);
                        if (r < 0) {
                                set_amqp_ok(c, false, r);
                                atomic_store(&c->iteration_started, 0);
                                if (!back_off(c))
                                        break;
                                continue;
                        }
                        set_amqp_ok(c, true, 0);
                        c->backoff_ms = NOTIFYD_BACKOFF_MIN_MS;
                        atomic_store(&c->consuming, true);
                }

                r = amqp_receive(c->amqp, RECEIVE_TIMEOUT_MS, &d);
                if (r == -ETIMEDOUT)
                        continue;
                if (r < 0) {
                        atomic_store(&c->consuming, false);
                        set_amqp_ok(c, false, r);
                        continue;
                }

                outcome = handle(c, d);
                amqp_delivery_free(d);
                if (outcome == OUTCOME_OUTAGE) {
                        /* Unacked deliveries go back to the queue. */
                        atomic_store(&c->consuming, false);
                        amqp_client_disconnect(c->amqp);
                        set_postgres_ok(c, false);
                        atomic_store(&c->iteration_started, 0);
                        if (!back_off(c))
                                break;
                } else if (outcome == OUTCOME_BROKEN) {
                        atomic_store(&c->consuming, false);
                        set_amqp_ok(c, false, -ECONNRESET);
                }
        }

        atomic_store(&c->consuming, false);
        amqp_client_disconnect(c->amqp);
        atomic_store(&c->iteration_started, 0);
        return NULL;
}

int notifyd_consumer_start(struct notifyd_consumer *c)
{
        int r;

        if (c->running)
                return -EALREADY;
        r = pthread_create(&c->thread, NULL, run, c);
        if (r != 0)
                return -r;
        c->running = true;
        return 0;
}

void notifyd_consumer_stop(struct notifyd_consumer *c)
{
        if (!c || !c->running)
                return;
        pthread_mutex_lock(&c->lock);
        c->stop = true;
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->lock);
        pthread_join(c->thread, NULL);
        c->running = false;
}
