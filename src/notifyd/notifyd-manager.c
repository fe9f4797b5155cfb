#include "notifyd-manager.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp.h"
#include "log.h"
#include "notifyd-consumer.h"

/* Longer than any loop iteration of the consumer can take: statement,
 * publish-confirm and connect timeouts are all far shorter. */
#define MAX_ITERATION_USEC (60 * USEC_PER_SEC)
#define MAX_REQUEST_USEC   (30 * USEC_PER_SEC)
#define DRAIN_TIMEOUT_MS   10000

/* No API routes: [faults] error_ratio and latency_ms apply to the sends. */
static const struct faults_scope faults_scope = {
        .dependencies = (const char *const[]){"postgres", "amqp", NULL},
};

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
        DAEMON_CONF_FAULTS_KEYS(struct notifyd_config, &faults_scope),
};
const size_t notifyd_conf_table_size = ELEMENTSOF(notifyd_conf_table);

static void manager_done(void *userdata)
{
        struct notifyd_manager *m = userdata;

        notifyd_consumer_free(m->consumer);
}

static bool postgres_ok(void *userdata)
{
        struct notifyd_manager *m = userdata;

        return notifyd_consumer_postgres_ok(m->consumer);
}

static bool consuming(void *userdata)
{
        struct notifyd_manager *m = userdata;

        return notifyd_consumer_is_consuming(m->consumer);
}

static int manager_init(struct daemon *d, void *userdata)
{
        const struct notifyd_config *c = d->config;
        struct notifyd_manager *m = userdata;
        int r;

        struct notifyd_consumer_options opts = {
                .amqp = d->amqp,
                .pg = d->pg,
                .metrics = d->metrics,
                .prefetch = (unsigned)c->prefetch,
                .max_attempts = (unsigned)c->max_attempts,
                .send_latency_ms = (unsigned)c->send_latency_ms,
                .error_ratio = c->common.faults.error_ratio,
                .fault_latency_ms = (unsigned)c->common.faults.latency_ms,
        };
        r = notifyd_consumer_new(&opts, &m->consumer);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the consumer: %m");
        return 0;
}

/* Dependencies come and go: the consumer waits for them itself. */
static int manager_start(void *userdata)
{
        struct notifyd_manager *m = userdata;
        int r;

        r = notifyd_consumer_start(m->consumer);
        if (r < 0)
                return log_error_errno(r, "Failed to start the consumer thread: %m");
        return 0;
}

static bool manager_tick(void *userdata)
{
        struct notifyd_manager *m = userdata;

        return notifyd_consumer_is_healthy(m->consumer, MAX_ITERATION_USEC);
}

static void manager_status(void *userdata, char *status, size_t size)
{
        struct notifyd_manager *m = userdata;
        bool pg_ok = notifyd_consumer_postgres_ok(m->consumer);
        bool amqp_ok = notifyd_consumer_amqp_ok(m->consumer);

        if (notifyd_consumer_is_consuming(m->consumer))
                snprintf(status, size, "Consuming %s", AMQP_NOTIFY_QUEUE);
        else
                snprintf(status, size, "Degraded: %s unavailable",
                         !pg_ok     ? "postgres"
                         : !amqp_ok ? "amqp"
                                    : "consumer");
}

static int manager_reload(void *userdata, const void *config)
{
        struct notifyd_manager *m = userdata;
        const struct notifyd_config *c = config;

        /* The simulated processor and the faults; the rest needs a
         * restart. */
        notifyd_consumer_set_processing(m->consumer, (unsigned)c->send_latency_ms,
                                        c->common.faults.error_ratio,
                                        (unsigned)c->common.faults.latency_ms);
        log_info("Send latency %" PRId64 " ms, fault error ratio %g, fault latency %" PRId64 " ms",
                 c->send_latency_ms, c->common.faults.error_ratio, c->common.faults.latency_ms);
        return 0;
}

/* The message in hand is finished and acked before the consumer stops. */
static void manager_stop(void *userdata)
{
        struct notifyd_manager *m = userdata;

        notifyd_consumer_stop(m->consumer);
}

/* /ready: PostgreSQL answers and the consumer reaches it, and consumes. */
static const struct daemon_check notifyd_checks[] = {
        {"postgres", postgres_ok},
        {"amqp", consuming},
};

/* HTTP serves only /health, /ready and /metrics. */
const struct daemon_ops notifyd_ops = {
        .name = "vigil-notifyd",
        .description = "payment notifications from RabbitMQ, exactly once",
        .default_config = SYSCONFDIR "/vigil/notifyd.conf",
        DAEMON_CONF(notifyd_conf_table, struct notifyd_config),
        .dependencies =
                {
                        .postgres = DAEMON_SECTION(struct notifyd_config, postgres),
                        .amqp = DAEMON_SECTION(struct notifyd_config, amqp),
                        .followed_by_manager = true,
                },
        .checks = notifyd_checks,
        .n_checks = ELEMENTSOF(notifyd_checks),
        .max_request_usec = MAX_REQUEST_USEC,
        .drain_timeout_ms = DRAIN_TIMEOUT_MS,
        .manager_size = sizeof(struct notifyd_manager),
        .manager_init = manager_init,
        .manager_start = manager_start,
        .manager_tick = manager_tick,
        .manager_status = manager_status,
        .manager_reload = manager_reload,
        .manager_stop = manager_stop,
        .manager_done = manager_done,
};
