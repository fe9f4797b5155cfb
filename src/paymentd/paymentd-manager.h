/* vigil-paymentd's manager: on the PostgreSQL pool, the authd client and
 * the AMQP client the skeleton built (daemon.h), it owns the simulated
 * processor, its metrics, one more PostgreSQL connection for the outbox
 * relay and the relay thread, created in that order and torn down in
 * reverse. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon.h"
#include "paymentd-processor.h"

struct paymentd_config {
        struct daemon_config common;
        struct daemon_postgres_config postgres;
        struct daemon_amqp_config amqp;
        struct daemon_auth_config auth;
        int64_t processor_latency_ms;
        double processor_decline_ratio;
        int64_t idempotency_retention_hours;
        int64_t idempotency_takeover_seconds;
        int64_t outbox_batch_size;
        int64_t outbox_poll_interval_ms;
        int64_t outbox_retention_hours;
};

struct paymentd_manager {
        const struct paymentd_config *config;
        struct daemon *daemon;              /* the dependencies the skeleton built */
        struct payment_processor processor; /* reloadable settings (atomics) */
        struct pg_pool *relay_pg;
        struct outbox_relay *relay;

        uint64_t next_prune_usec;

        struct metric *transactions_success;
        struct metric *transactions_declined;
        struct metric *transactions_failed;
        struct metric *amount_cents;
        struct metric *revenue_dollars;
        struct metric *outbox_pending;
        struct metric *outbox_oldest_age;
};

extern const struct daemon_ops paymentd_ops;

/* Exposed for tests: the configuration table of vigil-paymentd. */
extern const struct conf_key paymentd_conf_table[];
extern const size_t paymentd_conf_table_size;

/* The processor settings of a config (what SIGHUP applies). */
void paymentd_processor_settings(const struct paymentd_config *c, struct processor_settings *ret);
