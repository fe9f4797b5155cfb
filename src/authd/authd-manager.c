#include "authd-manager.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authd-routes.h"
#include "authd-sessions.h"
#include "authd-users.h"
#include "http-server.h"
#include "local-cache.h"
#include "log.h"
#include "metrics.h"
#include "password.h"
#include "pg.h"
#include "redis.h"
#include "sd.h"
#include "trace.h"

#define JWT_KEY_MAX_SIZE 4096
/* A request running longer than this is hung: statement, Redis and hashing
 * timeouts are all far shorter. */
#define MAX_REQUEST_USEC (30 * USEC_PER_SEC)
#define DRAIN_TIMEOUT_MS 10000

const struct conf_key authd_conf_table[] = {
        DAEMON_CONF_KEYS(struct authd_config, "127.0.0.1:8001"),
        DAEMON_CONF_POSTGRES_KEYS(struct authd_config, postgres, "vigil_auth"),
        DAEMON_CONF_REDIS_KEYS(struct authd_config, redis),
        CONF_STRING("auth", "jwt_key_file", "", 4096, struct authd_config, jwt_key_file,
                    "JWT signing key file when the jwt-key credential is absent"),
        CONF_INT("auth", "token_ttl_seconds", "3600", 60, 86400 * 30, struct authd_config,
                 token_ttl_seconds, "Lifetime of tokens and their sessions"),
        CONF_INT("password", "max_concurrent", "0", 0, 64, struct authd_config, hash_max_concurrent,
                 "Password hashes computed at once (0: CPUs - 1)"),
        CONF_INT("password", "queue_timeout_ms", "2000", 1, 60000, struct authd_config,
                 hash_queue_timeout_ms, "How long a login waits for a hashing slot before 503"),
        CONF_INT("password", "cost", "0", 0, 11, struct authd_config, hash_cost,
                 "yescrypt cost for new hashes (0: libxcrypt's default)"),
};
const size_t authd_conf_table_size = ELEMENTSOF(authd_conf_table);

static void manager_free(void *userdata)
{
        struct authd_manager *m = userdata;

        if (!m)
                return;
        http_server_free(m->http);
        if (m->jwt_key) {
                explicit_bzero(m->jwt_key, m->jwt_key_len);
                free(m->jwt_key);
        }
        password_hasher_free(m->hasher);
        local_cache_free(m->sessions_cache);
        jwt_cache_free(m->token_cache);
        redis_pool_free(m->redis);
        pg_pool_free(m->pg);
        tracer_free(m->tracer);
        metrics_registry_free(m->metrics);
        free(m);
}

static int load_jwt_key(struct authd_manager *m)
{
        char *key;
        size_t len;
        int r;

        r = conf_read_credential("jwt-key", m->config->jwt_key_file, JWT_KEY_MAX_SIZE, &key, &len);
        if (r == -ENOENT)
                return log_error_errno(r, "No JWT signing key: provide the jwt-key credential "
                                          "(LoadCredential=jwt-key:…) or [auth] jwt_key_file");
        if (r < 0)
                return log_error_errno(r, "Failed to read the jwt-key credential: %m");
        if (len < JWT_MIN_KEY_SIZE) {
                explicit_bzero(key, len);
                free(key);
                return log_error_errno(EINVAL,
                                       "The jwt-key credential is %zu bytes, at least %d needed",
                                       len, JWT_MIN_KEY_SIZE);
        }
        m->jwt_key = (uint8_t *)key;
        m->jwt_key_len = len;
        return 0;
}

static void collect_sessions(struct metrics_registry *r, void *userdata)
{
        struct authd_manager *m = userdata;
        int64_t n;

        if (sessions_count_active(m->redis, (int64_t)time(NULL), &n) >= 0)
                metrics_gauge_set(m->active_sessions, (double)n);
}

static int ready(void *userdata, const char **ret_failing)
{
        struct authd_manager *m = userdata;
        int r;

        r = pg_pool_ping(m->pg);
        if (r < 0) {
                *ret_failing = "postgres";
                return r;
        }
        if (!atomic_load(&m->migrated)) {
                *ret_failing = "postgres";
                return -EAGAIN;
        }
        r = redis_pool_ping(m->redis);
        if (r < 0) {
                *ret_failing = "redis";
                return r;
        }
        return 0;
}

static int manager_new(const void *config, void **ret)
{
        const struct authd_config *c = config;
        struct authd_manager *m;
        struct metric_family *logins, *sessions;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return log_error_errno(ENOMEM, "Out of memory");
        m->config = c;

        r = load_jwt_key(m);
        if (r < 0)
                goto fail;

        r = metrics_registry_new(&m->metrics);
        if (r < 0)
                goto fail_oom;
        r = metrics_register_process(m->metrics);
        if (r >= 0)
                r = metrics_register_build_info(m->metrics, PACKAGE_VERSION);
        if (r < 0)
                goto fail_oom;
        logins = metrics_counter_new(m->metrics, "vigil_auth_logins_total",
                                     "Login attempts by result",
                                     (const char *const[]){"result", NULL});
        sessions = metrics_gauge_new(m->metrics, "vigil_auth_active_sessions",
                                     "Sessions not yet expired or revoked", NULL);
        if (!logins || !sessions)
                goto fail_oom;
        m->logins_success = metrics_child1(logins, "success");
        m->logins_failure = metrics_child1(logins, "failure");
        m->logins_error = metrics_child1(logins, "error");
        m->active_sessions = metrics_child(sessions, NULL);

        r = daemon_tracer_new(&c->common, authd_ops.name, m->metrics, &m->tracer);
        if (r < 0) {
                log_error_errno(r, "Failed to set up tracing to %s: %m",
                                c->common.tracing_otlp_endpoint);
                goto fail;
        }
        r = daemon_pg_pool_new(&c->postgres, authd_ops.name, m->metrics, m->tracer, &m->pg);
        if (r < 0) {
                log_error_errno(r, "Failed to set up PostgreSQL (postgres-password "
                                   "credential): %m");
                goto fail;
        }
        r = daemon_redis_pool_new(&c->redis, m->metrics, m->tracer, &m->redis);
        if (r < 0) {
                log_error_errno(r, "Failed to set up Redis (redis-password credential): %m");
                goto fail;
        }
        r = daemon_local_cache_new(&c->redis, m->redis, m->metrics, "sessions", SESSION_KEY_PREFIX,
                                   &m->sessions_cache);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the local session cache: %m");
                goto fail;
        }
        r = jwt_cache_new(m->metrics, &m->token_cache);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the token cache: %m");
                goto fail;
        }
        r = password_hasher_new((unsigned)c->hash_max_concurrent,
                                (unsigned)c->hash_queue_timeout_ms, (unsigned long)c->hash_cost,
                                &m->hasher);
        if (r < 0) {
                log_error_errno(r, "Failed to set up password hashing: %m");
                goto fail;
        }
        r = metrics_registry_add_collector(m->metrics, collect_sessions, m);
        if (r < 0)
                goto fail_oom;

        *ret = m;
        return 0;

fail_oom:
        log_error_errno(ENOMEM, "Out of memory");
        r = -ENOMEM;
fail:
        manager_free(m);
        return r;
}

static void check_dependencies(struct authd_manager *m)
{
        static const char *const names[] = {"postgres", "redis"};
        bool up[] = {pg_pool_ping(m->pg) >= 0, redis_pool_ping(m->redis) >= 0};

        daemon_note_dependency(&m->postgres_up, up[0], "PostgreSQL", NULL);
        daemon_note_dependency(&m->redis_up, up[1], "Redis", NULL);
        if (up[0])
                daemon_migrate(m->pg, AUTHD_SCHEMA, authd_users_migrations,
                               authd_users_migrations_count, &m->migrated);
        daemon_format_status(m->status, sizeof(m->status), atomic_load(&m->migrated),
                             ELEMENTSOF(names), names, up);
}

static int manager_start(void *userdata)
{
        struct authd_manager *m = userdata;
        struct http_server_options opts = {
                .service_name = authd_ops.name,
                .metrics = m->metrics,
                .tracer = m->tracer,
                .ready = ready,
                .userdata = m,
        };
        int r;

        r = daemon_http_server_start(&m->config->common, &opts, authd_routes, authd_routes_count,
                                     &m->http);
        if (r < 0)
                return r;

        /* Dependencies are tried before READY=1, but being down is a
         * degraded state, not a failure: they may come up later. */
        check_dependencies(m);
        return 0;
}

static bool manager_tick(void *userdata)
{
        struct authd_manager *m = userdata;

        check_dependencies(m);
        return http_server_is_healthy(m->http, MAX_REQUEST_USEC);
}

static const char *manager_status(void *userdata)
{
        struct authd_manager *m = userdata;

        return m->status;
}

static int manager_reload(void *userdata, const void *config)
{
        const struct authd_config *c = config;

        /* The log level is applied by the caller; everything else needs a
         * restart, which socket activation makes lossless. */
        (void)userdata;
        (void)c;
        return 0;
}

static void manager_stop(void *userdata)
{
        struct authd_manager *m = userdata;

        http_server_drain(m->http, DRAIN_TIMEOUT_MS);
}

const struct daemon_ops authd_ops = {
        .name = "vigil-authd",
        .description = "users, passwords, tokens and sessions",
        .default_config = SYSCONFDIR "/vigil/authd.conf",
        .conf_table = authd_conf_table,
        .n_conf_keys = ELEMENTSOF(authd_conf_table),
        .config_size = sizeof(struct authd_config),
        .manager_new = manager_new,
        .manager_start = manager_start,
        .manager_reload = manager_reload,
        .manager_tick = manager_tick,
        .manager_status = manager_status,
        .manager_stop = manager_stop,
        .manager_free = manager_free,
};
