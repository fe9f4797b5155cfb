/* vigil-inventoryd's manager: on the PostgreSQL and Redis pools and the
 * authd client the skeleton built (daemon.h), it owns its metrics, the
 * local and shared catalog caches, and the reservation sweep its tick runs,
 * created in that order and torn down in reverse. */
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
        struct daemon *daemon; /* the dependencies the skeleton built */
        struct cache *cache;
        struct local_cache *local_cache;

        atomic_int_least64_t reservations_ttl_seconds; /* reloadable */
        bool purge_failed_logged;
        bool payment_role_missing_logged;
        uint64_t next_grant_usec;

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
