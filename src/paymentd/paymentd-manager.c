#include "paymentd-manager.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "paymentd-outbox.h"
#include "paymentd-payments.h"
#include "paymentd-routes.h"
#include "pg.h"

/* A request running longer than this is hung: auth, processor (at most
 * 2 x PROCESSOR_MAX_LATENCY_MS) and statement timeouts are all shorter. */
#define MAX_REQUEST_USEC (30 * USEC_PER_SEC)
/* The relay comes round its loop at least every ~25 s (every wait in it
 * is bounded); twice that means it is stuck. */
#define MAX_RELAY_STALL_USEC (60 * USEC_PER_SEC)
/* Long enough for a charge at the largest configurable latencies. */
#define DRAIN_TIMEOUT_MS    25000
#define PRUNE_INTERVAL_USEC (60 * USEC_PER_SEC)
#define PRUNE_BATCH         1000

/* The charge applies [faults] error_ratio through its processor (503
 * "processor_unavailable", counted as a failed transaction). */
static const char *const faults_own_error_routes[] = {"/charge", NULL};

static const struct faults_scope faults_scope = {
        .routes = paymentd_routes,
        .n_routes = &paymentd_routes_count,
        .dependencies = (const char *const[]){"postgres", "auth", "amqp", NULL},
};

const struct conf_key paymentd_conf_table[] = {
        DAEMON_CONF_KEYS(struct paymentd_config, "127.0.0.1:8002"),
        DAEMON_CONF_POSTGRES_KEYS(struct paymentd_config, postgres, "vigil_payment"),
        DAEMON_CONF_AMQP_KEYS(struct paymentd_config, amqp),
        DAEMON_CONF_AUTH_KEYS(struct paymentd_config, auth),
        CONF_INT("processor", "latency_ms", "20", 0, PROCESSOR_MAX_LATENCY_MS,
                 struct paymentd_config, processor_latency_ms,
                 "Simulated processor latency per charge (reloadable)"),
        CONF_DOUBLE("processor", "decline_ratio", "0.05", 0.0, 1.0, struct paymentd_config,
                    processor_decline_ratio,
                    "Share of charges declined, answered 402 (reloadable)"),
        DAEMON_CONF_FAULTS_KEYS(struct paymentd_config, &faults_scope),
        CONF_INT("idempotency", "retention_hours", "48", 24, 24 * 366, struct paymentd_config,
                 idempotency_retention_hours, "How long a key and its response are kept"),
        CONF_INT("idempotency", "takeover_seconds", "60", 30, 3600, struct paymentd_config,
                 idempotency_takeover_seconds,
                 "Age at which an unfinished key (its request died) may be taken over"),
        CONF_INT("outbox", "batch_size", "100", 1, OUTBOX_MAX_BATCH, struct paymentd_config,
                 outbox_batch_size, "Events published and confirmed per round"),
        CONF_INT("outbox", "poll_interval_ms", "1000", 10, 10000, struct paymentd_config,
                 outbox_poll_interval_ms, "Fallback wake-up when no NOTIFY arrives"),
        CONF_INT("outbox", "retention_hours", "168", 1, 24 * 366, struct paymentd_config,
                 outbox_retention_hours, "How long published events are kept"),
};
const size_t paymentd_conf_table_size = ELEMENTSOF(paymentd_conf_table);

void paymentd_processor_settings(const struct paymentd_config *c, struct processor_settings *ret)
{
        *ret = (struct processor_settings){
                .latency_ms = c->processor_latency_ms,
                .decline_ratio = c->processor_decline_ratio,
                /* [faults] latency_ms is added before the handler, by the
                 * skeleton, as on every route. */
                .fault_latency_ms = 0,
                .fault_error_ratio = faults_routes_select(c->common.faults.routes, "/charge")
                                             ? c->common.faults.error_ratio
                                             : 0,
        };
}

/* [faults] fail_dependency = postgres fails the relay's own pool too. */
static bool postgres_failed(const struct paymentd_config *c)
{
        return c->common.faults.fail_dependency &&
               strcmp(c->common.faults.fail_dependency, "postgres") == 0;
}

static void manager_done(void *userdata)
{
        struct paymentd_manager *m = userdata;

        outbox_relay_free(m->relay);
        pg_pool_free(m->relay_pg);
}

/* One query per scrape: the revenue aggregate and the outbox backlog. */
static void collect_payments(struct metrics_registry *r, void *userdata)
{
        struct paymentd_manager *m = userdata;
        struct payment_stats s;

        if (!atomic_load(&m->daemon->migrated))
                return;
        if (payments_stats(m->daemon->pg, &s) < 0)
                return; /* keep the last values; vigil_dependency_up tells why */
        metrics_gauge_set(m->revenue_dollars, (double)s.revenue_cents / 100.0);
        metrics_gauge_set(m->outbox_pending, (double)s.outbox_pending);
        metrics_gauge_set(m->outbox_oldest_age, s.outbox_oldest_age_seconds);
}

static bool relay_amqp_up(void *userdata)
{
        struct paymentd_manager *m = userdata;

        return outbox_relay_amqp_up(m->relay);
}

static int register_metrics(struct paymentd_manager *m, struct metrics_registry *metrics)
{
        struct metric_family *transactions, *amount, *revenue, *pending, *age;

        transactions = metrics_counter_new(metrics, "vigil_payment_transactions_total",
                                           "Charges by outcome (replays not counted)",
                                           (const char *const[]){"status", NULL});
        amount = metrics_counter_new(metrics, "vigil_payment_amount_cents_total",
                                     "Cents charged successfully", NULL);
        revenue = metrics_gauge_new(metrics, "vigil_revenue_dollars",
                                    "Revenue of all successful charges, from the aggregate row",
                                    NULL);
        pending = metrics_gauge_new(metrics, "vigil_outbox_pending",
                                    "Payment events committed but not yet confirmed by RabbitMQ",
                                    NULL);
        age = metrics_gauge_new(metrics, "vigil_outbox_oldest_age_seconds",
                                "Age of the oldest unpublished payment event (0: none)", NULL);
        if (!transactions || !amount || !revenue || !pending || !age)
                return -ENOMEM;
        m->transactions_success = metrics_child1(transactions, "success");
        m->transactions_declined = metrics_child1(transactions, "declined");
        m->transactions_failed = metrics_child1(transactions, "failed");
        m->amount_cents = metrics_child(amount, NULL);
        m->revenue_dollars = metrics_child(revenue, NULL);
        m->outbox_pending = metrics_child(pending, NULL);
        m->outbox_oldest_age = metrics_child(age, NULL);
        if (!m->transactions_success || !m->transactions_declined || !m->transactions_failed)
                return -ENOMEM;
        return metrics_registry_add_collector(metrics, collect_payments, m);
}

static int manager_init(struct daemon *d, void *userdata)
{
        const struct paymentd_config *c = d->config;
        struct paymentd_manager *m = userdata;
        struct processor_settings settings;
        int r;

        m->config = c;
        m->daemon = d;
        paymentd_processor_settings(c, &settings);
        processor_configure(&m->processor, &settings);

        r = register_metrics(m, d->metrics);
        if (r < 0)
                return log_error_errno(r, "Failed to set up metrics: %m");

        /* The relay keeps one connection (it LISTENs on it). */
        struct daemon_postgres_config relay_pg = c->postgres;

        relay_pg.pool_size = 1;
        r = daemon_pg_pool_new(&relay_pg, "vigil-paymentd-outbox", d->metrics, d->tracer,
                               &m->relay_pg);
        if (r < 0)
                return log_error_errno(r, "Failed to set up PostgreSQL (postgres-password "
                                          "credential): %m");
        pg_pool_set_failed(m->relay_pg, postgres_failed(c));

        struct outbox_relay_options relay = {
                .pool = m->relay_pg,
                .amqp = d->amqp,
                .tracer = d->tracer,
                .batch_size = (unsigned)c->outbox_batch_size,
                .poll_interval_ms = (unsigned)c->outbox_poll_interval_ms,
        };
        r = outbox_relay_new(&relay, &m->relay);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the outbox relay: %m");

        return 0;
}

static void prune(struct paymentd_manager *m)
{
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        int64_t deleted;
        int r;

        if (now < m->next_prune_usec)
                return;
        r = payments_prune(m->daemon->pg, m->config->idempotency_retention_hours,
                           m->config->outbox_retention_hours, PRUNE_BATCH, &deleted);
        if (r < 0) {
                log_warning_errno(r, "Pruning old idempotency keys failed: %m");
                m->next_prune_usec = now + PRUNE_INTERVAL_USEC;
                return;
        }
        if (deleted > 0)
                log_info("Pruned %lld expired idempotency keys and published events",
                         (long long)deleted);
        /* A full batch: more are due, go on at the next tick. */
        m->next_prune_usec = deleted >= 2 * PRUNE_BATCH ? now : now + PRUNE_INTERVAL_USEC;
}

/* Old idempotency keys and published events go once PostgreSQL answers
 * with the schema in place. */
static bool manager_tick(void *userdata)
{
        struct paymentd_manager *m = userdata;

        if (atomic_load(&m->daemon->postgres_up) && atomic_load(&m->daemon->migrated))
                prune(m);
        return outbox_relay_is_healthy(m->relay, MAX_RELAY_STALL_USEC);
}

/* The first check ran: the schema is migrated before the relay reads it. */
static int manager_start(void *userdata)
{
        struct paymentd_manager *m = userdata;
        int r;

        r = outbox_relay_start(m->relay);
        if (r < 0)
                return log_error_errno(r, "Failed to start the outbox relay: %m");
        return 0;
}

static int manager_reload(void *userdata, const void *config)
{
        struct paymentd_manager *m = userdata;
        const struct paymentd_config *c = config;
        struct processor_settings s;

        /* The processor and fault settings apply to the next charge; the
         * rest needs a restart, which socket activation makes lossless. */
        paymentd_processor_settings(c, &s);
        pg_pool_set_failed(m->relay_pg, postgres_failed(c));
        processor_configure(&m->processor, &s);
        log_notice("Processor: latency %lld ms, decline ratio %g; faults: error ratio %g, "
                   "latency %lld ms",
                   (long long)s.latency_ms, s.decline_ratio, s.fault_error_ratio,
                   (long long)s.fault_latency_ms);
        return 0;
}

static void manager_stop(void *userdata)
{
        struct paymentd_manager *m = userdata;

        outbox_relay_stop(m->relay);
}

/* The relay's connection to RabbitMQ: events wait in the outbox without it. */
static const struct daemon_check paymentd_checks[] = {
        {"amqp", relay_amqp_up},
};

const struct daemon_ops paymentd_ops = {
        .name = "vigil-paymentd",
        .description = "charges with idempotency keys and a transactional outbox",
        .default_config = SYSCONFDIR "/vigil/paymentd.conf",
        DAEMON_CONF(paymentd_conf_table, struct paymentd_config),
        .dependencies =
                {
                        .postgres = DAEMON_SECTION(struct paymentd_config, postgres),
                        .schema = &paymentd_schema,
                        .auth = DAEMON_SECTION(struct paymentd_config, auth),
                        .amqp = DAEMON_SECTION(struct paymentd_config, amqp),
                },
        .checks = paymentd_checks,
        .faults_own_error_routes = faults_own_error_routes,
        .n_checks = ELEMENTSOF(paymentd_checks),
        .routes = paymentd_routes,
        .n_routes = &paymentd_routes_count,
        .max_request_usec = MAX_REQUEST_USEC,
        .drain_timeout_ms = DRAIN_TIMEOUT_MS,
        .manager_size = sizeof(struct paymentd_manager),
        .manager_init = manager_init,
        .manager_start = manager_start,
        .manager_tick = manager_tick,
        .manager_reload = manager_reload,
        .manager_stop = manager_stop,
        .manager_done = manager_done,
};
