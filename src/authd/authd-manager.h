/* vigil-authd's manager: on the PostgreSQL and Redis pools the skeleton
 * built (daemon.h), it owns the JWT key, its metrics, the session and token
 * caches and the password hasher, created in that order and torn down in
 * reverse. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon.h"
#include "jwt.h"

struct authd_config {
        struct daemon_config common;
        struct daemon_postgres_config postgres;
        struct daemon_redis_config redis;
        char *jwt_key_file;
        int64_t token_ttl_seconds;
        int64_t hash_max_concurrent;
        int64_t hash_queue_timeout_ms;
        int64_t hash_cost;
};

struct authd_manager {
        const struct authd_config *config;
        struct daemon *daemon; /* the dependencies the skeleton built */
        struct local_cache *sessions_cache;
        struct jwt_cache *token_cache; /* tokens that verified */
        struct password_hasher *hasher;
        uint8_t *jwt_key;
        size_t jwt_key_len;

        struct metric *logins_success;
        struct metric *logins_failure;
        struct metric *logins_error;
        struct metric *active_sessions;
};

extern const struct daemon_ops authd_ops;

/* Exposed for tests: the configuration table of vigil-authd. */
extern const struct conf_key authd_conf_table[];
extern const size_t authd_conf_table_size;
