/* vigil-inventoryd's manager: owns the configuration, the metrics registry,
 * the tracer, the PostgreSQL and Redis pools, the authd client, the product
 * cache and the HTTP server, created in that order and torn down in reverse. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon.h"

struct auth_client;
struct cache;
struct local_cache;

struct inventoryd_config {
        struct daemon_config common;
        struct daemon_postgres_config postgres;
        struct daemon_redis_config redis;
        int64_t cache_ttl_seconds;
        int64_t cache_jitter_percent;
        int64_t cache_lock_ms;
        int64_t cache_wait_ms;
        struct daemon_auth_config auth;
        int64_t reservations_ttl_seconds;
        char *reservations_payment_role;
};

struct inventoryd_manager {
        const struct inventoryd_config *config;
        struct metrics_registry *metrics;
        struct tracer *tracer;
        struct pg_pool *pg;
        struct redis_pool *redis;
        struct auth_client *auth;
        struct cache *cache;
        struct local_cache *local_cache;
        struct http_server *http;

        atomic_bool migrated;
        atomic_bool postgres_up;
        atomic_bool redis_up;
        atomic_int_least64_t reservations_ttl_seconds; /* reloadable */
        bool purge_failed_logged;
        bool payment_role_missing_logged;
        uint64_t next_grant_usec;
        char status[128];

        struct metric *cache_products_hit;
        struct metric *cache_products_miss;
        struct metric *cache_product_hit;
        struct metric *cache_product_miss;
        struct metric *reservations_reserved;
        struct metric *reservations_insufficient;
        struct metric *reservations_not_found;
        struct metric *reservations_released;
        struct metric *reservations_expired;
        struct metric_family *sales; /* vigil_inventory_sales_total{product_id} */
};

extern const struct daemon_ops inventoryd_ops;

/* Exposed for tests: the configuration table of vigil-inventoryd. */
extern const struct conf_key inventoryd_conf_table[];
extern const size_t inventoryd_conf_table_size;
