/* The shape every vigil daemon shares (DESIGN.md §1): main() hands its
 * description to daemon_main(), which parses the command line and the
 * configuration, builds what the daemon declares it depends on (metrics,
 * tracer, PostgreSQL with its migrations, Redis, the authd client, AMQP),
 * builds the daemon's manager, serves HTTP, tries the dependencies, tells
 * systemd it is ready, and runs the main loop: dependency checks for /ready
 * and STATUS=, watchdog pings while the daemon makes progress, SIGHUP
 * reloads, SIGTERM drains and exits 0. It tears everything down in reverse.
 *
 * A manager keeps only what is its daemon's own; the dependencies stay in
 * the struct daemon the skeleton hands it.
 *
 * Thread-safety: daemon_main() runs on the main thread and blocks SIGTERM,
 * SIGINT and SIGHUP before any other thread exists, so every thread the
 * manager starts inherits the mask and signals arrive only at the loop.
 * struct daemon's pointers are set before manager_init and constant until
 * manager_done; its atomics may be read from any thread. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "faults.h"
#include "log.h"
#include "macro.h"

struct http_route;
struct http_server;
struct http_server_options;
struct metrics_registry;
struct tracer;
struct pg_pool;
struct pg_schema;
struct redis_pool;
struct local_cache;
struct amqp_client;
struct auth_client;

/* The keys every daemon has; it must be the first member (named common) of
 * each daemon's config struct. */
struct daemon_config {
        char *http_listen;
        int64_t http_max_connections;
        int64_t http_max_connections_per_client;
        int64_t http_header_timeout_seconds;
        int64_t http_idle_timeout_seconds;
        bool http_access_log;
        char *tracing_otlp_endpoint;
        double tracing_sample_ratio;
        char *log_level;
        struct faults_config faults; /* DAEMON_CONF_FAULTS_KEYS */
};

#define DAEMON_CONF_KEYS(type, default_listen)                                                     \
        CONF_STRING("http", "listen", default_listen, 256, type, common.http_listen,               \
                    "Address and port to listen on when not socket-activated"),                    \
                CONF_INT("http", "max_connections", "512", 1, 65536, type,                         \
                         common.http_max_connections,                                              \
                         "Concurrent client connections (one thread each)"),                       \
                CONF_INT("http", "max_connections_per_client", "256", 1, 65536, type,              \
                         common.http_max_connections_per_client,                                   \
                         "Connections one client address may hold (the gateway is one address "    \
                         "for all proxied traffic: keep this above its upstream connections)"),    \
                CONF_INT("http", "header_timeout_seconds", "5", 1, 300, type,                      \
                         common.http_header_timeout_seconds,                                       \
                         "Close a new connection that falls silent this long before its request "  \
                         "header is complete"),                                                    \
                CONF_INT("http", "idle_timeout_seconds", "30", 1, 3600, type,                      \
                         common.http_idle_timeout_seconds,                                         \
                         "Close a kept-alive connection idle this long (keep it above the "        \
                         "gateway's upstream keepalive_timeout, 20 s)"),                           \
                CONF_BOOL("http", "access_log", "true", type, common.http_access_log,              \
                          "Log every request (errors are always logged)"),                         \
                CONF_STRING("tracing", "otlp_endpoint", "http://127.0.0.1:4318/v1/traces", 1024,   \
                            type, common.tracing_otlp_endpoint,                                    \
                            "OTLP/HTTP traces endpoint; empty disables export"),                   \
                CONF_DOUBLE("tracing", "sample_ratio", "1.0", 0.0, 1.0, type,                      \
                            common.tracing_sample_ratio, "Share of new traces that are recorded"), \
                CONF_ENUM("log", "level", "info", log_level_choices, type, common.log_level,       \
                          "debug, info, notice, warning, err, crit, alert or emerg")

struct daemon_postgres_config {
        char *dsn;
        char *password_file;
        int64_t pool_size;
};

#define DAEMON_CONF_POSTGRES_KEYS(type, field, default_user)                                       \
        CONF_STRING("postgres", "dsn", "host=127.0.0.1 port=5432 dbname=vigil user=" default_user, \
                    1024, type, field.dsn, "libpq connection string (without the password)"),      \
                CONF_STRING("postgres", "password_file", "", 4096, type, field.password_file,      \
                            "Password file when the postgres-password credential is absent"),      \
                CONF_INT("postgres", "pool_size", "8", 1, 256, type, field.pool_size,              \
                         "Connections in the pool")

struct daemon_redis_config {
        char *address;
        char *username;
        char *password_file;
        int64_t pool_size;
        int64_t local_cache_max_age_ms;
        int64_t local_cache_max_kib;
};

#define DAEMON_CONF_REDIS_KEYS(type, field)                                                        \
        CONF_STRING("redis", "address", "127.0.0.1:6379", 1024, type, field.address,               \
                    "host:port or unix:/path of the Redis server"),                                \
                CONF_STRING("redis", "username", "", 256, type, field.username,                    \
                            "ACL user to log in as (with the redis-password credential); empty: "  \
                            "the default user"),                                                   \
                CONF_STRING("redis", "password_file", "", 4096, type, field.password_file,         \
                            "Password file when the redis-password credential is absent"),         \
                CONF_INT("redis", "pool_size", "32", 1, 256, type, field.pool_size,                \
                         "Connections in the pool (a request holds one per command)"),             \
                CONF_INT("redis", "local_cache_max_age_ms", "2000", 0, 60000, type,                \
                         field.local_cache_max_age_ms,                                             \
                         "Serve a value read from Redis from memory for up to this long; a write " \
                         "anywhere drops it at once (Redis client tracking). 0: off"),             \
                CONF_INT("redis", "local_cache_max_kib", "1024", 4, 1048576, type,                 \
                         field.local_cache_max_kib, "Memory for that in-process cache, in KiB")

struct daemon_amqp_config {
        char *url;
        char *password_file;
};

/* The password is not in the default URL: it comes from the amqp-password
 * credential (or password_file), which overrides one in the URL. */
#define DAEMON_CONF_AMQP_KEYS(type, field)                                                         \
        CONF_STRING("amqp", "url", "amqp://vigil@127.0.0.1:5672/vigil", 1024, type, field.url,     \
                    "amqp://user@host:port/vhost of the RabbitMQ broker"),                         \
                CONF_STRING("amqp", "password_file", "", 4096, type, field.password_file,          \
                            "Password file when the amqp-password credential is absent")

/* Where a daemon whose API needs a logged-in user finds vigil-authd. */
struct daemon_auth_config {
        char *url;
        int64_t timeout_ms;
};

#define DAEMON_CONF_AUTH_KEYS(type, field)                                                         \
        CONF_STRING("auth", "url", "http://127.0.0.1:8001", 1024, type, field.url,                 \
                    "Where vigil-authd answers POST /verify"),                                     \
                CONF_INT("auth", "timeout_ms", "2000", 100, 60000, type, field.timeout_ms,         \
                         "Total time allowed for one call to vigil-authd")

/* What a daemon depends on, declared the way its config keys are: each
 * dependency is the offset of its config section in the daemon's config
 * struct (DAEMON_SECTION), 0 when the daemon does without it (offset 0 is
 * always common). The skeleton builds them in the order of this struct
 * before manager_init and frees them in reverse after manager_done. */
struct daemon_dependencies {
        size_t postgres; /* struct daemon_postgres_config */
        /* Brought up to date under the advisory lock, retried every tick
         * until PostgreSQL answers; /ready fails until it is. NULL: none. */
        const struct pg_schema *schema;
        size_t redis;           /* struct daemon_redis_config */
        const char *redis_down; /* appended to "Redis is unreachable" */
        size_t auth;            /* struct daemon_auth_config: /ready checks authd */
        size_t amqp;            /* struct daemon_amqp_config: a client, not connected */
        /* The manager follows its dependencies itself and reports its own
         * status: the skeleton does not ping them every tick. */
        bool followed_by_manager;
};

#define DAEMON_SECTION(config_type, field) offsetof(config_type, field)

/* A check of something the daemon runs itself (a consumer, a relay's
 * connection, a state file), after the dependencies: named in /ready's
 * "failing" when down, and listed in STATUS= after them. */
struct daemon_check {
        const char *name; /* "amqp" */
        bool (*up)(void *manager);
};

/* What the skeleton built for the daemon; the manager reads it and frees
 * none of it. A pointer is NULL when its dependency is not declared. */
struct daemon {
        const struct daemon_ops *ops;
        const void *config; /* the daemon's config struct, valid until the end */
        void *manager;      /* ops->manager_size bytes, for manager_init */
        struct metrics_registry *metrics;
        struct tracer *tracer;
        struct pg_pool *pg;
        struct redis_pool *redis;
        struct auth_client *auth;
        struct amqp_client *amqp;
        struct http_server *http;
        struct faults *faults; /* [faults], applied by the skeleton */

        atomic_bool migrated; /* the schema is up to date (true when none) */
        atomic_bool postgres_up;
        atomic_bool redis_up;
        atomic_bool auth_up;
        uint64_t auth_next_check; /* CLOCK_MONOTONIC µs */
        char status[128];
};

/* Set a daemon_ops' config table and struct size (DAEMON_CONF(authd_conf_table,
 * struct authd_config)). */
#define DAEMON_CONF(table, config_type)                                                            \
        .conf_table = (table), .n_conf_keys = ELEMENTSOF(table), .config_size = sizeof(config_type)

struct daemon_ops {
        const char *name;           /* "vigil-authd": identifier, service.name */
        const char *description;    /* one line for --help */
        const char *default_config; /* SYSCONFDIR "/vigil/authd.conf" */
        const struct conf_key *conf_table;
        size_t n_conf_keys;
        size_t config_size; /* sizeof the daemon's config struct */

        struct daemon_dependencies dependencies;
        const struct daemon_check *checks;
        size_t n_checks;
        /* Routes whose handler applies [faults] error_ratio itself (see
         * faults_options); NULL-terminated, may be NULL. */
        const char *const *faults_own_error_routes;

        /* The HTTP API (besides /health, /ready and /metrics); handlers get
         * the manager as userdata. */
        const struct http_route *routes;
        const size_t *n_routes;
        size_t max_body;           /* 0: the HTTP server's default */
        uint64_t max_request_usec; /* a request running longer is hung */
        unsigned drain_timeout_ms; /* in-flight requests get this long at SIGTERM */

        /* --check-config: check what the loaded configuration names besides
         * its own keys (alertbotd's policy file), logging every problem
         * with its file and line. Returns 0 or a negative errno. May be
         * NULL. */
        int (*check_config)(const void *config);

        /* The manager: manager_size zeroed bytes, filled by manager_init
         * once the dependencies exist (d->config is the daemon's config).
         * Failures are logged by the callee; manager_done is called on
         * what it built either way. */
        size_t manager_size;
        int (*manager_init)(struct daemon *d, void *manager);
        /* Start the manager's own threads, once HTTP serves and the first
         * check ran (the schema is migrated if PostgreSQL answered). May be
         * NULL. */
        int (*manager_start)(void *manager);
        /* The manager's periodic work, after the dependency checks of the
         * tick (under a span that is not sampled). Returns false when the
         * manager is not making progress, which stops the watchdog pings.
         * May be NULL. */
        bool (*manager_tick)(void *manager);
        /* Write the daemon's own STATUS= ("Consuming …") into status,
         * after each tick; NULL: the skeleton's "Serving" or "Degraded:
         * postgres, redis unavailable". */
        void (*manager_status)(void *manager, char *status, size_t size);
        /* Apply the reloadable settings of a freshly loaded config (which
         * is freed after the call: copy what you keep). May be NULL. */
        int (*manager_reload)(void *manager, const void *config);
        /* Stop the manager's threads, after HTTP has drained. May be NULL. */
        void (*manager_stop)(void *manager);
        /* Free what manager_init built (the skeleton frees the manager). */
        void (*manager_done)(void *manager);
};

/* Run the daemon; returns the process exit status. */
int daemon_main(int argc, char **argv, const struct daemon_ops *ops);

/* Bring schema up to date (pg_migrate()), logging that it is, or why it is
 * not yet (PostgreSQL's message) for the caller to retry. Returns 0 or the
 * negative errno of pg_migrate(). */
int daemon_migrate(struct pg_pool *pg, const struct pg_schema *schema);

/* A PostgreSQL pool from its config section; the postgres-password
 * credential (or password_file) is read here. Does not connect. */
int daemon_pg_pool_new(const struct daemon_postgres_config *c, const char *application_name,
                       struct metrics_registry *metrics, struct tracer *tracer,
                       struct pg_pool **ret);

/* The in-process cache of the keys under prefix that [redis]
 * local_cache_max_age_ms and local_cache_max_kib describe, kept coherent
 * over its own connection to redis's server (see local-cache.h); *ret is
 * NULL, a cache that always misses, when local_cache_max_age_ms is 0. */
int daemon_local_cache_new(const struct daemon_redis_config *c, struct redis_pool *redis,
                           struct metrics_registry *metrics, const char *name, const char *prefix,
                           struct local_cache **ret);
