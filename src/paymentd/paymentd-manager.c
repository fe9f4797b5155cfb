#include "paymentd-manager.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp.h"
#include "auth-client.h"
#include "http-server.h"
#include "log.h"
#include "metrics.h"
#include "paymentd-outbox.h"
#include "paymentd-payments.h"
#include "paymentd-routes.h"
#include "pg.h"
#include "sd.h"
#include "trace.h"

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
        CONF_DOUBLE("faults", "error_ratio", "0", 0.0, 1.0, struct paymentd_config,
                    faults_error_ratio,
                    "Share of charges failing with an injected processor error, 503 (reloadable)"),
        CONF_INT("faults", "latency_ms", "0", 0, PROCESSOR_MAX_LATENCY_MS, struct paymentd_config,
                 faults_latency_ms, "Latency added to every charge (reloadable)"),
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
                .fault_latency_ms = c->faults_latency_ms,
                .fault_error_ratio = c->faults_error_ratio,
        };
}

static void manager_free(void *userdata)
{
        struct paymentd_manager *m = userdata;

        if (!m)
                return;
        http_server_free(m->http);
        outbox_relay_free(m->relay);
        amqp_client_free(m->amqp);
        auth_client_free(m->auth);
        pg_pool_free(m->relay_pg);
        pg_pool_free(m->pg);
        tracer_free(m->tracer);
        metrics_registry_free(m->metrics);
        free(m);
}

/* One query per scrape: the revenue aggregate and the outbox backlog. */
static void collect_payments(struct metrics_registry *r, void *userdata)
{
        struct paymentd_manager *m = userdata;
        struct payment_stats s;

        if (!atomic_load(&m->migrated))
                return;
        if (payments_stats(m->pg, &s) < 0)
                return; /* keep the last values; vigil_dependency_up tells why */
        metrics_gauge_set(m->revenue_dollars, (double)s.revenue_cents / 100.0);
        metrics_gauge_set(m->outbox_pending, (double)s.outbox_pending);
        metrics_gauge_set(m->outbox_oldest_age, s.outbox_oldest_age_seconds);
}

static int ready(void *userdata, const char **ret_failing)
{
        struct paymentd_manager *m = userdata;
        int r;

        r = pg_pool_ping(m->pg);
        if (r >= 0 && !atomic_load(&m->migrated))
                r = -EAGAIN;
        if (r < 0) {
                *ret_failing = "postgres";
                return r;
        }
        r = auth_client_health(m->auth);
        if (r < 0) {
                *ret_failing = "auth";
                return r;
        }
        if (!outbox_relay_amqp_up(m->relay)) {
                *ret_failing = "amqp";
                return -ENOTCONN;
        }
        return 0;
}

static int new_metrics(struct paymentd_manager *m)
{
        struct metric_family *transactions, *amount, *revenue, *pending, *age;
        int r;

        r = metrics_registry_new(&m->metrics);
        if (r < 0)
                return r;
        r = metrics_register_process(m->metrics);
        if (r >= 0)
                r = metrics_register_build_info(m->metrics, PACKAGE_VERSION);
        if (r < 0)
                return r;
        transactions = metrics_counter_new(m->metrics, "vigil_payment_transactions_total",
                                           "Charges by outcome (replays not counted)",
                                           (const char *const[]){"status", NULL});
        amount = metrics_counter_new(m->metrics, "vigil_payment_amount_cents_total",
                                     "Cents charged successfully", NULL);
        revenue = metrics_gauge_new(m->metrics, "vigil_revenue_dollars",
                                    "Revenue of all successful charges, from the aggregate row",
                                    NULL);
        pending = metrics_gauge_new(m->metrics, "vigil_outbox_pending",
                                    "Payment events committed but not yet confirmed by RabbitMQ",
                                    NULL);
        age = metrics_gauge_new(m->metrics, "vigil_outbox_oldest_age_seconds",
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
        return 0;
}

static int manager_new(const void *config, void **ret)
{
        const struct paymentd_config *c = config;
        struct paymentd_manager *m;
        struct processor_settings settings;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return log_error_errno(ENOMEM, "Out of memory");
        m->config = c;
        paymentd_processor_settings(c, &settings);
        processor_configure(&m->processor, &settings);

        r = new_metrics(m);
        if (r < 0) {
                log_error_errno(r, "Failed to set up metrics: %m");
                goto fail;
        }

        r = daemon_tracer_new(&c->common, paymentd_ops.name, m->metrics, &m->tracer);
        if (r < 0) {
                log_error_errno(r, "Failed to set up tracing to %s: %m",
                                c->common.tracing_otlp_endpoint);
                goto fail;
        }
        r = daemon_pg_pool_new(&c->postgres, paymentd_ops.name, m->metrics, m->tracer, &m->pg);
        if (r >= 0) {
                /* The relay keeps one connection (it LISTENs on it). */
                struct daemon_postgres_config relay = c->postgres;

                relay.pool_size = 1;
                r = daemon_pg_pool_new(&relay, "vigil-paymentd-outbox", m->metrics, m->tracer,
                                       &m->relay_pg);
        }
        if (r < 0) {
                log_error_errno(r, "Failed to set up PostgreSQL (postgres-password "
                                   "credential): %m");
                goto fail;
        }

        r = daemon_auth_client_new(&c->auth, m->metrics, m->tracer, &m->auth);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the client of vigil-authd at \"%s\": %m",
                                c->auth.url);
                goto fail;
        }

        r = daemon_amqp_client_new(&c->amqp, paymentd_ops.name, m->metrics, m->tracer, &m->amqp);
        if (r == -ENOKEY) {
                log_error("No RabbitMQ password: provide the amqp-password credential "
                          "(LoadCredential=amqp-password:…) or [amqp] password_file");
                goto fail;
        }
        if (r < 0) {
                log_error_errno(r,
                                "Failed to set up RabbitMQ at \"%s\" (amqp-password "
                                "credential): %m",
                                c->amqp.url);
                goto fail;
        }

        struct outbox_relay_options relay = {
                .pool = m->relay_pg,
                .amqp = m->amqp,
                .tracer = m->tracer,
                .batch_size = (unsigned)c->outbox_batch_size,
                .poll_interval_ms = (unsigned)c->outbox_poll_interval_ms,
        };
        r = outbox_relay_new(&relay, &m->relay);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the outbox relay: %m");
                goto fail;
        }

        r = metrics_registry_add_collector(m->metrics, collect_payments, m);
        if (r < 0) {
                log_error_errno(r, "Failed to set up metrics: %m");
                goto fail;
        }

        *ret = m;
        return 0;

fail:
        manager_free(m);
        return r;
}

static void prune(struct paymentd_manager *m)
{
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        int64_t deleted;
        int r;

        if (!atomic_load(&m->migrated) || now < m->next_prune_usec)
                return;
        r = payments_prune(m->pg, m->config->idempotency_retention_hours,
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

static void check_dependencies(struct paymentd_manager *m)
{
        static const char *const names[] = {"postgres", "amqp"};
        bool up[] = {pg_pool_ping(m->pg) >= 0, outbox_relay_amqp_up(m->relay)};

        daemon_note_dependency(&m->postgres_up, up[0], "PostgreSQL", NULL);
        atomic_store(&m->amqp_up, up[1]);
        if (up[0]) {
                daemon_migrate(m->pg, PAYMENTD_SCHEMA, paymentd_migrations,
                               paymentd_migrations_count, &m->migrated);
                prune(m);
        }
        daemon_format_status(m->status, sizeof(m->status), atomic_load(&m->migrated),
                             ELEMENTSOF(names), names, up);
}

/* Periodic checks under a span that is not sampled: a ping a second must
 * not start a trace a second. */
static void check_dependencies_quietly(struct paymentd_manager *m)
{
        struct span *quiet = span_start_unsampled("dependency check");
        struct span *previous = trace_set_current(quiet);

        check_dependencies(m);
        trace_set_current(previous);
        span_end(quiet);
}

static int manager_start(void *userdata)
{
        struct paymentd_manager *m = userdata;
        struct http_server_options opts = {
                .service_name = paymentd_ops.name,
                .metrics = m->metrics,
                .tracer = m->tracer,
                .ready = ready,
                .userdata = m,
        };
        int r;

        r = daemon_http_server_start(&m->config->common, &opts, paymentd_routes,
                                     paymentd_routes_count, &m->http);
        if (r < 0)
                return r;

        /* Dependencies are tried before READY=1, but being down is a
         * degraded state, not a failure: they may come up later. Trying
         * them first migrates the schema before the relay reads it. */
        check_dependencies_quietly(m);

        r = outbox_relay_start(m->relay);
        if (r < 0)
                return log_error_errno(r, "Failed to start the outbox relay: %m");
        return 0;
}

static bool manager_tick(void *userdata)
{
        struct paymentd_manager *m = userdata;

        check_dependencies_quietly(m);
        return http_server_is_healthy(m->http, MAX_REQUEST_USEC) &&
               outbox_relay_is_healthy(m->relay, MAX_RELAY_STALL_USEC);
}

static const char *manager_status(void *userdata)
{
        struct paymentd_manager *m = userdata;

        return m->status;
}

static int manager_reload(void *userdata, const void *config)
{
        struct paymentd_manager *m = userdata;
        const struct paymentd_config *c = config;
        struct processor_settings s;

        /* The processor and fault settings apply to the next charge; the
         * rest needs a restart, which socket activation makes lossless. */
        paymentd_processor_settings(c, &s);
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

        http_server_drain(m->http, DRAIN_TIMEOUT_MS);
        outbox_relay_stop(m->relay);
}

const struct daemon_ops paymentd_ops = {
        .name = "vigil-paymentd",
        .description = "charges with idempotency keys and a transactional outbox",
        .default_config = SYSCONFDIR "/vigil/paymentd.conf",
        .conf_table = paymentd_conf_table,
        .n_conf_keys = ELEMENTSOF(paymentd_conf_table),
        .config_size = sizeof(struct paymentd_config),
        .manager_new = manager_new,
        .manager_start = manager_start,
        .manager_reload = manager_reload,
        .manager_tick = manager_tick,
        .manager_status = manager_status,
        .manager_stop = manager_stop,
        .manager_free = manager_free,
};
