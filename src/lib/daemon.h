/* The shape every vigil daemon shares (DESIGN.md §1): main() hands its
 * description to daemon_main(), which parses the command line and the
 * configuration, builds the daemon's manager, starts it, tells systemd it
 * is ready, and runs the main loop: watchdog pings while the manager makes
 * progress, SIGHUP reloads, SIGTERM drains and exits 0.
 *
 * It also holds the pieces every daemon builds the same way from its
 * configuration: the shared config keys, the tracer, and the PostgreSQL and
 * Redis pools with their credentials.
 *
 * Thread-safety: daemon_main() runs on the main thread and blocks SIGTERM,
 * SIGINT and SIGHUP before any other thread exists, so every thread the
 * manager starts inherits the mask and signals arrive only at the loop. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

struct http_route;
struct http_server;
struct http_server_options;
struct metrics_registry;
struct tracer;
struct pg_pool;
struct pg_migration;
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
                CONF_STRING("log", "level", "info", 16, type, common.log_level,                    \
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
        char *password_file;
        int64_t pool_size;
        int64_t local_cache_max_age_ms;
        int64_t local_cache_max_kib;
};

#define DAEMON_CONF_REDIS_KEYS(type, field)                                                        \
        CONF_STRING("redis", "address", "127.0.0.1:6379", 1024, type, field.address,               \
                    "host:port or unix:/path of the Redis server"),                                \
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

struct daemon_ops {
        const char *name;           /* "vigil-authd": identifier, service.name */
        const char *description;    /* one line for --help */
        const char *default_config; /* SYSCONFDIR "/vigil/authd.conf" */
        const struct conf_key *conf_table;
        size_t n_conf_keys;
        size_t config_size; /* sizeof the daemon's config struct */

        /* Build the manager from a loaded config (which stays valid until
         * the manager is freed). Failures are logged by the callee. */
        int (*manager_new)(const void *config, void **ret_manager);
        /* Bind the listener and try the dependencies; READY=1 follows. */
        int (*manager_start)(void *manager);
        /* Apply the reloadable settings of a freshly loaded config (which
         * is freed after the call: copy what you keep). */
        int (*manager_reload)(void *manager, const void *config);
        /* Periodic work from the main loop (retrying migrations, refreshing
         * gauges). Returns false when the manager is not making progress,
         * which stops the watchdog pings. May be NULL. */
        bool (*manager_tick)(void *manager);
        /* A short status for STATUS= ("Serving", "Degraded: redis
         * unavailable"); NULL keeps the previous one. May be NULL. */
        const char *(*manager_status)(void *manager);
        /* Drain in-flight work, then free. */
        void (*manager_stop)(void *manager);
        void (*manager_free)(void *manager);
};

/* Run the daemon; returns the process exit status. */
int daemon_main(int argc, char **argv, const struct daemon_ops *ops);

/* Create and start the daemon's HTTP server. opts names the service,
 * metrics, tracer, readiness check and userdata; the listener (the socket
 * systemd passed, else [http] listen), the connection limits and timeouts
 * and the access log come from c. Logs what failed and returns a negative errno. */
int daemon_http_server_start(const struct daemon_config *c, struct http_server_options *opts,
                             const struct http_route *routes, size_t n_routes,
                             struct http_server **ret);

/* The tracer from the shared config keys (export off when the endpoint is
 * empty). */
int daemon_tracer_new(const struct daemon_config *c, const char *service_name,
                      struct metrics_registry *metrics, struct tracer **ret);

/* Pools from their config sections; the postgres-password and
 * redis-password credentials (or the *_file keys) are read here. The pools
 * do not connect yet. */
int daemon_pg_pool_new(const struct daemon_postgres_config *c, const char *application_name,
                       struct metrics_registry *metrics, struct tracer *tracer,
                       struct pg_pool **ret);
int daemon_redis_pool_new(const struct daemon_redis_config *c, struct metrics_registry *metrics,
                          struct tracer *tracer, struct redis_pool **ret);
/* Bring schema up to date unless *migrated says it is, for a tick that
 * retries until PostgreSQL answers: sets *migrated on success, and logs
 * why (PostgreSQL's message) when it cannot yet. */
void daemon_migrate(struct pg_pool *pg, const char *schema, const struct pg_migration *migrations,
                    size_t n_migrations, atomic_bool *migrated);

/* Keep a dependency check's outcome in *state and log when it changed:
 * "<what> is reachable" (notice) or "<what> is unreachable<consequence>"
 * (warning; consequence may be NULL). */
void daemon_note_dependency(atomic_bool *state, bool up, const char *what, const char *consequence);

/* The STATUS= text after a check: "Serving" when ready and every one of
 * the n dependencies is up, else "Degraded: postgres, redis unavailable"
 * naming those down (or "Degraded: schema migration pending"). */
void daemon_format_status(char *buf, size_t size, bool ready, size_t n, const char *const *names,
                          const bool *up);

/* The in-process cache of the keys under prefix that [redis]
 * local_cache_max_age_ms and local_cache_max_kib describe, kept coherent
 * over its own connection to redis's server (see local-cache.h); *ret is
 * NULL, a cache that always misses, when local_cache_max_age_ms is 0. */
int daemon_local_cache_new(const struct daemon_redis_config *c, struct redis_pool *redis,
                           struct metrics_registry *metrics, const char *name, const char *prefix,
                           struct local_cache **ret);
/* The client of vigil-authd from its config section (see auth-client.h). */
int daemon_auth_client_new(const struct daemon_auth_config *c, struct metrics_registry *metrics,
                           struct tracer *tracer, struct auth_client **ret);
/* An AMQP client from its config section; the amqp-password credential (or
 * password_file) is read here and overrides a password in the URL. Does not
 * connect. -ENOKEY when there is no password anywhere. */
int daemon_amqp_client_new(const struct daemon_amqp_config *c, const char *connection_name,
                           struct metrics_registry *metrics, struct tracer *tracer,
                           struct amqp_client **ret);
