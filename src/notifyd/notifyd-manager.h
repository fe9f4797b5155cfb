/* vigil-notifyd's manager: on the PostgreSQL pool and the AMQP client the
 * skeleton built (daemon.h), it owns the consumer thread, which follows
 * both itself. */
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
};

struct notifyd_manager {
        struct notifyd_consumer *consumer;
};

extern const struct daemon_ops notifyd_ops;

/* Exposed for tests: the configuration table of vigil-notifyd. */
extern const struct conf_key notifyd_conf_table[];
extern const size_t notifyd_conf_table_size;
