#include "notifyd-manager.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp.h"
#include "http-server.h"
#include "log.h"
#include "metrics.h"
#include "notifyd-consumer.h"
#include "pg.h"
#include "sd.h"
#include "trace.h"

/* Longer than any loop iteration of the consumer can take: statement,
 * publish-confirm and connect timeouts are all far shorter. */
#define MAX_ITERATION_USEC (60 * USEC_PER_SEC)
#define MAX_REQUEST_USEC   (30 * USEC_PER_SEC)
#define DRAIN_TIMEOUT_MS   10000

const struct conf_key notifyd_conf_table[] = {
        DAEMON_CONF_KEYS(struct notifyd_config, "127.0.0.1:8004"),
        DAEMON_CONF_POSTGRES_KEYS(struct notifyd_config, postgres, "vigil_notify"),
        DAEMON_CONF_AMQP_KEYS(struct notifyd_config, amqp),
        CONF_INT("consumer", "prefetch", "16", 1, 1000, struct notifyd_config, prefetch,
                 "Unacknowledged messages RabbitMQ hands over at once"),
        CONF_INT("consumer", "max_attempts", "4", 1, 4, struct notifyd_config, max_attempts,
                 "Processing attempts before a failing message is parked (1 + delayed "
                 "retries of 1 s, 4 s, 16 s)"),
        CONF_INT("processor", "send_latency_ms", "5", 0, 60000, struct notifyd_config,
                 send_latency_ms, "Simulated time to send one notification (reloadable)"),
        CONF_DOUBLE("faults", "error_ratio", "0.0", 0.0, 1.0, struct notifyd_config,
                    fault_error_ratio, "Share of sends that fail on purpose (reloadable)"),
        CONF_INT("faults", "latency_ms", "0", 0, 60000, struct notifyd_config, fault_latency_ms,
                 "Latency added to every send on purpose (reloadable)"),
};
const size_t notifyd_conf_table_size = ELEMENTSOF(notifyd_conf_table);

static void manager_free(void *userdata)
{
        struct notifyd_manager *m = userdata;

        if (!m)
                return;
        http_server_free(m->http);
        notifyd_consumer_free(m->consumer);
        amqp_client_free(m->amqp);
        pg_pool_free(m->pg);
        tracer_free(m->tracer);
        metrics_registry_free(m->metrics);
        free(m);
}

static int ready(void *userdata, const char **ret_failing)
{
        struct notifyd_manager *m = userdata;
        int r;

        r = pg_pool_ping(m->pg);
        if (r < 0 || !notifyd_consumer_postgres_ok(m->consumer)) {
                *ret_failing = "postgres";
                return r < 0 ? r : -EAGAIN;
        }
        if (!notifyd_consumer_is_consuming(m->consumer)) {
                *ret_failing = "amqp";
                return -ENOTCONN;
        }
        return 0;
}

static int manager_new(const void *config, void **ret)
{
        const struct notifyd_config *c = config;
        struct notifyd_manager *m;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return log_error_errno(ENOMEM, "Out of memory");
        m->config = c;
        snprintf(m->status, sizeof(m->status), "Starting");

        r = metrics_registry_new(&m->metrics);
        if (r < 0)
                goto fail_oom;
        r = metrics_register_process(m->metrics);
        if (r >= 0)
                r = metrics_register_build_info(m->metrics, PACKAGE_VERSION);
        if (r < 0)
                goto fail_oom;

        r = daemon_tracer_new(&c->common, notifyd_ops.name, m->metrics, &m->tracer);
        if (r < 0) {
                log_error_errno(r, "Failed to set up tracing to %s: %m",
                                c->common.tracing_otlp_endpoint);
                goto fail;
        }
        r = daemon_pg_pool_new(&c->postgres, notifyd_ops.name, m->metrics, m->tracer, &m->pg);
        if (r < 0) {
                log_error_errno(r, "Failed to set up PostgreSQL (postgres-password "
                                   "credential): %m");
                goto fail;
        }
        r = daemon_amqp_client_new(&c->amqp, notifyd_ops.name, m->metrics, m->tracer, &m->amqp);
        if (r == -ENOKEY) {
                log_error("No RabbitMQ password: provide the amqp-password credential "
                          "(LoadCredential=amqp-password:…), [amqp] password_file, or a "
                          "password in [amqp] url");
                goto fail;
        }
        if (r < 0) {
                log_error_errno(r, "Failed to set up RabbitMQ from [amqp] url (amqp-password "
                                   "credential): %m");
                goto fail;
        }

        struct notifyd_consumer_options opts = {
                .amqp = m->amqp,
                .pg = m->pg,
                .metrics = m->metrics,
                .prefetch = (unsigned)c->prefetch,
                .max_attempts = (unsigned)c->max_attempts,
                .send_latency_ms = (unsigned)c->send_latency_ms,
                .error_ratio = c->fault_error_ratio,
                .fault_latency_ms = (unsigned)c->fault_latency_ms,
        };
        r = notifyd_consumer_new(&opts, &m->consumer);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the consumer: %m");
                goto fail;
        }

        *ret = m;
        return 0;

fail_oom:
        log_error_errno(ENOMEM, "Out of memory");
        r = -ENOMEM;
fail:
        manager_free(m);
        return r;
}

static void update_status(struct notifyd_manager *m)
{
        bool pg_ok = notifyd_consumer_postgres_ok(m->consumer);
        bool amqp_ok = notifyd_consumer_amqp_ok(m->consumer);

        if (notifyd_consumer_is_consuming(m->consumer))
                snprintf(m->status, sizeof(m->status), "Consuming %s", AMQP_NOTIFY_QUEUE);
        else
                snprintf(m->status, sizeof(m->status), "Degraded: %s unavailable",
                         !pg_ok     ? "postgres"
                         : !amqp_ok ? "amqp"
                                    : "consumer");
}

static int manager_start(void *userdata)
{
        struct notifyd_manager *m = userdata;
        struct http_server_options opts = {
                .service_name = notifyd_ops.name,
                .metrics = m->metrics,
                .tracer = m->tracer,
                .ready = ready,
                .userdata = m,
        };
        int r;

        r = daemon_http_server_start(&m->config->common, &opts, NULL, 0, &m->http);
        if (r < 0)
                return r;

        /* Dependencies come and go: the consumer waits for them itself. */
        r = notifyd_consumer_start(m->consumer);
        if (r < 0)
                return log_error_errno(r, "Failed to start the consumer thread: %m");
        update_status(m);
        return 0;
}

static bool manager_tick(void *userdata)
{
        struct notifyd_manager *m = userdata;

        update_status(m);
        return notifyd_consumer_is_healthy(m->consumer, MAX_ITERATION_USEC) &&
               http_server_is_healthy(m->http, MAX_REQUEST_USEC);
}

static const char *manager_status(void *userdata)
{
        struct notifyd_manager *m = userdata;

        return m->status;
}

static int manager_reload(void *userdata, const void *config)
{
        struct notifyd_manager *m = userdata;
        const struct notifyd_config *c = config;

        /* The simulated processor and the faults; the rest needs a
         * restart. */
        notifyd_consumer_set_processing(m->consumer, (unsigned)c->send_latency_ms,
                                        c->fault_error_ratio, (unsigned)c->fault_latency_ms);
        log_info("Send latency %" PRId64 " ms, fault error ratio %g, fault latency %" PRId64 " ms",
                 c->send_latency_ms, c->fault_error_ratio, c->fault_latency_ms);
        return 0;
}

static void manager_stop(void *userdata)
{
        struct notifyd_manager *m = userdata;

        /* The current message is finished and acked first. */
        notifyd_consumer_stop(m->consumer);
        http_server_drain(m->http, DRAIN_TIMEOUT_MS);
}

const struct daemon_ops notifyd_ops = {
        .name = "vigil-notifyd",
        .description = "payment notifications from RabbitMQ, exactly once",
        .default_config = SYSCONFDIR "/vigil/notifyd.conf",
        .conf_table = notifyd_conf_table,
        .n_conf_keys = ELEMENTSOF(notifyd_conf_table),
        .config_size = sizeof(struct notifyd_config),
        .manager_new = manager_new,
        .manager_start = manager_start,
        .manager_reload = manager_reload,
        .manager_tick = manager_tick,
        .manager_status = manager_status,
        .manager_stop = manager_stop,
        .manager_free = manager_free,
};
