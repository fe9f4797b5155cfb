#include "paymentd-outbox.h"

#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>

#include "amqp.h"
#include "log.h"
#include "macro.h"
#include "paymentd-payments.h"
#include "pg.h"
#include "trace.h"

#define DEFAULT_BATCH_SIZE       100
#define DEFAULT_POLL_INTERVAL_MS 1000
#define MAX_POLL_INTERVAL_MS     10000
#define BACKOFF_MIN_MS           100
#define BACKOFF_MAX_MS           5000

struct outbox_relay {
        struct pg_pool *pool;
        struct amqp_client *amqp;
        struct tracer *tracer;
        unsigned batch_size;
        unsigned poll_interval_ms;

        pthread_t thread;
        bool running;
        int stop_fd; /* eventfd: readable once stop was asked */
        atomic_bool stopping;
        atomic_uint_least64_t heartbeat_usec; /* CLOCK_MONOTONIC */

        /* Thread-owned state for logging transitions once. */
        bool pg_up;
        bool amqp_up;
};

unsigned outbox_backoff_ms(unsigned n, double jitter_draw)
{
        unsigned ms = BACKOFF_MIN_MS;

        for (unsigned i = 1; i < n && ms < BACKOFF_MAX_MS; i++)
                ms *= 2;
        if (ms > BACKOFF_MAX_MS)
                ms = BACKOFF_MAX_MS;
        if (jitter_draw > 0 && jitter_draw < 1)
                ms -= (unsigned)((double)ms * 0.25 * jitter_draw);
        return ms;
}

static double jitter_draw(void)
{
        uint32_t v = 0;

        (void)getrandom(&v, sizeof(v), GRND_NONBLOCK);
        return (double)v / 4294967296.0;
}

int outbox_relay_new(const struct outbox_relay_options *opts, struct outbox_relay **ret)
{
        struct outbox_relay *r;

        if (!opts || !opts->pool || !opts->amqp || !ret)
                return -EINVAL;
        if (opts->batch_size > OUTBOX_MAX_BATCH || opts->batch_size > AMQP_PUBLISH_MAX_BATCH ||
            opts->poll_interval_ms > MAX_POLL_INTERVAL_MS)
                return -EINVAL;

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->pool = opts->pool;
        r->amqp = opts->amqp;
        r->tracer = opts->tracer;
        r->batch_size = opts->batch_size ? opts->batch_size : DEFAULT_BATCH_SIZE;
        r->poll_interval_ms =
                opts->poll_interval_ms ? opts->poll_interval_ms : DEFAULT_POLL_INTERVAL_MS;
        r->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (r->stop_fd < 0) {
                int e = negative_errno();

                free(r);
                return e;
        }
        *ret = r;
        return 0;
}

/* Sleep up to ms; returns -ECANCELED when stop was asked. */
static int sleep_or_stop(struct outbox_relay *r, unsigned ms)
{
        struct pollfd pfd = {.fd = r->stop_fd, .events = POLLIN};

        if (atomic_load(&r->stopping))
                return -ECANCELED;
        if (poll(&pfd, 1, (int)ms) > 0 || atomic_load(&r->stopping))
                return -ECANCELED;
        return 0;
}

static bool drain_notifications(PGconn *pq)
{
        bool any = false;

        for (PGnotify *n = PQnotifies(pq); n; n = PQnotifies(pq)) {
                any = true;
                PQfreemem(n);
        }
        return any;
}

/* Sleep the backoff of the attempt-th consecutive failure of what. */
static void back_off(struct outbox_relay *r, const char *what, unsigned attempt)
{
        unsigned ms = outbox_backoff_ms(attempt, jitter_draw());

        log_debug("Outbox relay: retrying %s in %u ms (failure %u in a row)", what, ms, attempt);
        (void)sleep_or_stop(r, ms);
}

/* Wait for a NOTIFY, stop, or the poll interval. Returns 1 when notified,
 * 0 on timeout, -ECANCELED on stop, -ECONNRESET when the connection broke. */
static int wait_for_work(struct outbox_relay *r, struct pg_conn *conn)
{
        PGconn *pq = pg_conn_raw(conn);
        struct pollfd pfd[2] = {
                {.fd = r->stop_fd, .events = POLLIN},
                {.fd = PQsocket(pq), .events = POLLIN},
        };
        int n;

        /* Notifications that arrived while the last round ran: a row
         * committed after its SELECT may be waiting. */
        if (drain_notifications(pq))
                return 1;
        if (pfd[1].fd < 0)
                return -ECONNRESET;

        n = poll(pfd, 2, (int)r->poll_interval_ms);
        if (atomic_load(&r->stopping) || (n > 0 && pfd[0].revents))
                return -ECANCELED;
        if (n <= 0)
                return 0;
        if (!PQconsumeInput(pq) || PQstatus(pq) != CONNECTION_OK)
                return -ECONNRESET;
        return drain_notifications(pq) ? 1 : 0;
}

/* "{1,2,3}" of the ids selected by mask (true or false) in the batch. */
static char *id_array(const int64_t *ids, const bool *mask, bool want, size_t n, size_t *ret_count)
{
        char *buf = malloc(n * 21 + 3), *p;
        size_t count = 0;

        if (!buf)
                return NULL;
        p = buf;
        *p++ = '{';
        for (size_t i = 0; i < n; i++) {
                if (mask[i] != want)
                        continue;
                p += sprintf(p, "%s%" PRId64, count ? "," : "", ids[i]);
                count++;
        }
        *p++ = '}';
        *p = '\0';
        *ret_count = count;
        return buf;
}

/* One round. Returns the number of events locked (0 .. batch_size) and in
 * *ret_failed how many of them were not confirmed, or a negative errno
 * with *ret_failing naming the dependency ("postgres" or "amqp"). */
static int relay_round(struct outbox_relay *r, struct pg_conn *conn, size_t *ret_failed,
                       const char **ret_failing)
{
        _cleanup_(PQclearp) PGresult *res = NULL;
        _cleanup_free_ struct amqp_message *msgs = NULL;
        _cleanup_free_ enum amqp_publish_result *results = NULL;
        _cleanup_free_ int64_t *ids = NULL;
        _cleanup_free_ bool *acked = NULL;
        _cleanup_free_ char *acked_ids = NULL, *failed_ids = NULL;
        char limit[16];
        size_t n, n_acked, n_failed;
        int rc;

        *ret_failing = "postgres";
        snprintf(limit, sizeof(limit), "%u", r->batch_size);

        rc = pg_begin(conn);
        if (rc < 0)
                return rc;
        const char *params[] = {limit};
        rc = pg_exec(conn,
                     "SELECT id, message_id, routing_key, body, traceparent, tracestate,"
                     "  floor(extract(epoch FROM created_at))::bigint"
                     " FROM payment.outbox WHERE published_at IS NULL"
                     " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                     1, params, &res);
        if (rc < 0)
                return rc;
        n = (size_t)PQntuples(res);
        if (n == 0) {
                rc = pg_commit(conn);
                *ret_failed = 0;
                log_debug("Outbox relay: no unpublished events");
                return rc < 0 ? rc : 0;
        }
        log_debug("Outbox relay: locked %zu unpublished events, from id %s; publishing", n,
                  PQgetvalue(res, 0, 0));

        msgs = calloc(n, sizeof(*msgs));
        results = calloc(n, sizeof(*results));
        ids = calloc(n, sizeof(*ids));
        acked = calloc(n, sizeof(*acked));
        if (!msgs || !results || !ids || !acked)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                int row = (int)i;
                int64_t timestamp = 0;

                rc = pg_value_int64(PQgetvalue(res, row, 0), &ids[i]);
                if (rc < 0)
                        return rc;
                (void)pg_value_int64(PQgetvalue(res, row, 6), &timestamp);
                msgs[i] = (struct amqp_message){
                        .exchange = AMQP_EVENTS_EXCHANGE,
                        .routing_key = PQgetvalue(res, row, 2),
                        .message_id = PQgetvalue(res, row, 1),
                        .body = PQgetvalue(res, row, 3),
                        .body_size = (size_t)PQgetlength(res, row, 3),
                        .content_type = "application/json",
                        .timestamp = timestamp,
                        .traceparent = PQgetisnull(res, row, 4) ? NULL : PQgetvalue(res, row, 4),
                        .tracestate = PQgetisnull(res, row, 5) ? NULL : PQgetvalue(res, row, 5),
                };
        }

        rc = amqp_publish_batch(r->amqp, msgs, n, results);
        if (rc < 0) {
                /* Nothing is marked (the transaction is rolled back when
                 * the connection is given back): every event of the batch
                 * goes out again, and duplicates are deduplicated by
                 * notifyd. */
                *ret_failing = "amqp";
                return rc;
        }
        for (size_t i = 0; i < n; i++)
                acked[i] = results[i] == AMQP_PUBLISH_RESULT_ACK;

        acked_ids = id_array(ids, acked, true, n, &n_acked);
        failed_ids = id_array(ids, acked, false, n, &n_failed);
        if (!acked_ids || !failed_ids)
                return -ENOMEM;
        if (n_acked > 0) {
                const char *p[] = {acked_ids};

                rc = pg_exec(conn,
                             "UPDATE payment.outbox SET published_at = now()"
                             " WHERE id = ANY($1::bigint[])",
                             1, p, NULL);
                if (rc < 0)
                        return rc;
        }
        if (n_failed > 0) {
                const char *p[] = {failed_ids};

                rc = pg_exec(conn,
                             "UPDATE payment.outbox SET attempts = attempts + 1"
                             " WHERE id = ANY($1::bigint[])",
                             1, p, NULL);
                if (rc < 0)
                        return rc;
        }
        rc = pg_commit(conn);
        if (rc < 0)
                return rc;

        log_debug("Outbox relay: %zu events confirmed by the broker and marked published %s, "
                  "%zu not confirmed %s",
                  n_acked, acked_ids, n_failed, failed_ids);
        *ret_failed = n_failed;
        return (int)n;
}

static void set_pg_up(struct outbox_relay *r, bool up, int error)
{
        if (up == r->pg_up)
                return;
        r->pg_up = up;
        if (up) {
                log_notice("Outbox relay: listening on PostgreSQL channel %s",
                           PAYMENT_OUTBOX_CHANNEL);
        } else {
                char why[256];

                pg_pool_last_error(r->pool, why, sizeof(why));
                log_warning_errno(error, "Outbox relay: PostgreSQL unavailable (%m%s%s), retrying",
                                  *why ? ": " : "", why);
        }
}

static void set_amqp_up(struct outbox_relay *r, bool up, int error)
{
        if (up == r->amqp_up)
                return;
        r->amqp_up = up;
        if (up) {
                log_notice("Outbox relay: connected to RabbitMQ");
        } else {
                char why[256];

                amqp_client_last_error(r->amqp, why, sizeof(why));
                log_warning_errno(error, "Outbox relay: RabbitMQ unavailable (%m%s%s), retrying",
                                  *why ? ": " : "", why);
        }
}

static void *relay_thread(void *userdata)
{
        struct outbox_relay *r = userdata;
        struct span *quiet = span_start_unsampled("outbox relay");
        struct span *previous = trace_set_current(quiet);
        struct pg_conn *conn = NULL;
        unsigned pg_failures = 0, amqp_failures = 0, publish_failures = 0;

        /* Both start "up" so that the first failure is logged. */
        r->pg_up = r->amqp_up = true;

        while (!atomic_load(&r->stopping)) {
                const char *failing = NULL;
                size_t failed = 0;
                int rc;

                atomic_store(&r->heartbeat_usec, now_usec(CLOCK_MONOTONIC));

                if (!conn) {
                        rc = pg_pool_acquire(r->pool, &conn);
                        if (rc >= 0)
                                rc = pg_exec(conn, "LISTEN " PAYMENT_OUTBOX_CHANNEL, 0, NULL, NULL);
                        if (rc < 0) {
                                pg_pool_release(conn);
                                conn = NULL;
                                set_pg_up(r, false, rc);
                                back_off(r, "connecting to PostgreSQL", ++pg_failures);
                                continue;
                        }
                        pg_failures = 0;
                        set_pg_up(r, true, 0);
                }

                /* The round about to run sees the rows of every commit
                 * notified so far, so their NOTIFYs say nothing new. Read
                 * and drop them on every turn: left unread while the
                 * broker is down or a backlog is worked off, they pile up
                 * in libpq (an allocation each) and in PostgreSQL's
                 * notification queue, which fails every NOTIFY when full. */
                if (PQconsumeInput(pg_conn_raw(conn)))
                        (void)drain_notifications(pg_conn_raw(conn));

                if (!amqp_client_is_connected(r->amqp)) {
                        rc = amqp_client_connect(r->amqp);
                        if (rc >= 0)
                                rc = amqp_declare_topology(r->amqp);
                        if (rc < 0) {
                                amqp_client_disconnect(r->amqp);
                                set_amqp_up(r, false, rc);
                                back_off(r, "connecting to RabbitMQ", ++amqp_failures);
                                continue;
                        }
                        amqp_failures = 0;
                        set_amqp_up(r, true, 0);
                }

                rc = relay_round(r, conn, &failed, &failing);
                if (rc < 0) {
                        if (strcmp(failing, "amqp") == 0) {
                                /* A nack-free failure: the connection is
                                 * gone or confirms timed out (which closes
                                 * it). */
                                if (!amqp_client_is_connected(r->amqp))
                                        set_amqp_up(r, false, rc);
                                else
                                        log_warning_errno(rc, "Outbox relay: publishing "
                                                              "failed: %m");
                        } else {
                                log_warning_errno(rc, "Outbox relay: round failed on "
                                                      "PostgreSQL: %m");
                                /* Release rolls back, or closes a broken
                                 * connection to be reconnected. */
                                pg_pool_release(conn);
                                conn = NULL;
                        }
                        back_off(r, "the round", ++publish_failures);
                        continue;
                }
                if (failed > 0) {
                        log_warning("Outbox relay: %zu of %d events not confirmed by the "
                                    "broker; retrying",
                                    failed, rc);
                        back_off(r, "the round", ++publish_failures);
                        continue;
                }
                publish_failures = 0;
                if ((unsigned)rc == r->batch_size)
                        continue; /* more are waiting */

                rc = wait_for_work(r, conn);
                if (rc > 0)
                        log_debug("Outbox relay: woken by a NOTIFY on %s", PAYMENT_OUTBOX_CHANNEL);
                if (rc == -ECONNRESET) {
                        set_pg_up(r, false, rc);
                        pg_pool_release(conn);
                        conn = NULL;
                } else if (rc == 0) {
                        /* Idle: keep the broker's heartbeats going. */
                        (void)amqp_client_keepalive(r->amqp);
                }
        }

        pg_pool_release(conn);
        amqp_client_disconnect(r->amqp);
        trace_set_current(previous);
        span_end(quiet);
        return NULL;
}

int outbox_relay_start(struct outbox_relay *r)
{
        int rc;

        if (r->running)
                return -EALREADY;
        atomic_store(&r->heartbeat_usec, now_usec(CLOCK_MONOTONIC));
        rc = pthread_create(&r->thread, NULL, relay_thread, r);
        if (rc != 0)
                return -rc;
        r->running = true;
        return 0;
}

void outbox_relay_stop(struct outbox_relay *r)
{
        uint64_t one = 1;

        if (!r || !r->running)
                return;
        atomic_store(&r->stopping, true);
        (void)!write(r->stop_fd, &one, sizeof(one));
        pthread_join(r->thread, NULL);
        r->running = false;
}

void outbox_relay_free(struct outbox_relay *r)
{
        if (!r)
                return;
        outbox_relay_stop(r);
        closep(&r->stop_fd);
        free(r);
}

bool outbox_relay_amqp_up(const struct outbox_relay *r)
{
        return r && amqp_client_is_connected(r->amqp);
}

bool outbox_relay_is_healthy(const struct outbox_relay *r, uint64_t max_stall_usec)
{
        struct outbox_relay *q = (struct outbox_relay *)r;

        if (!r || !r->running)
                return true;
        return now_usec(CLOCK_MONOTONIC) - atomic_load(&q->heartbeat_usec) <= max_stall_usec;
}
