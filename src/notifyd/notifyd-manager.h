/* vigil-notifyd's manager: owns the configuration, the metrics registry,
 * the tracer, the PostgreSQL pool, the AMQP client, the consumer thread and
 * the HTTP server (only /health, /ready and /metrics), created in that
 * order and torn down in reverse. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon.h"

struct notifyd_config {
        struct daemon_config common;
        struct daemon_postgres_config postgres;
        struct daemon_amqp_config amqp;
        int64_t prefetch;
        int64_t max_attempts;
        int64_t send_latency_ms;
        double fault_error_ratio;
        int64_t fault_latency_ms;
};

struct notifyd_manager {
        const struct notifyd_config *config;
        struct metrics_registry *metrics;
        struct tracer *tracer;
        struct pg_pool *pg;
        struct amqp_client *amqp;
        struct notifyd_consumer *consumer;
        struct http_server *http;
        char status[128];
};

extern const struct daemon_ops notifyd_ops;

/* Exposed for tests: the configuration table of vigil-notifyd. */
extern const struct conf_key notifyd_conf_table[];
extern const size_t notifyd_conf_table_size;
