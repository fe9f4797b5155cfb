#include "authd-manager.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authd-routes.h"
#include "authd-sessions.h"
#include "authd-users.h"
#include "local-cache.h"
#include "log.h"
#include "metrics.h"
#include "password.h"

#define JWT_KEY_MAX_SIZE 4096
/* A request running longer than this is hung: statement, Redis and hashing
 * timeouts are all far shorter. */
#define MAX_REQUEST_USEC (30 * USEC_PER_SEC)
#define DRAIN_TIMEOUT_MS 10000

static const struct faults_scope faults_scope = {
        .routes = authd_routes,
        .n_routes = &authd_routes_count,
        .dependencies = (const char *const[]){"postgres", "redis", NULL},
};

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
        DAEMON_CONF_FAULTS_KEYS(struct authd_config, &faults_scope),
};
const size_t authd_conf_table_size = ELEMENTSOF(authd_conf_table);

static void manager_done(void *userdata)
{
        struct authd_manager *m = userdata;

        if (m->jwt_key) {
                explicit_bzero(m->jwt_key, m->jwt_key_len);
                free(m->jwt_key);
        }
        password_hasher_free(m->hasher);
        local_cache_free(m->sessions_cache);
        jwt_cache_free(m->token_cache);
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

        if (sessions_count_active(m->daemon->redis, (int64_t)time(NULL), &n) >= 0)
                metrics_gauge_set(m->active_sessions, (double)n);
}

static int register_metrics(struct authd_manager *m, struct metrics_registry *metrics)
{
        struct metric_family *logins, *sessions;

        logins = metrics_counter_new(metrics, "vigil_auth_logins_total", "Login attempts by result",
                                     (const char *const[]){"result", NULL});
        sessions = metrics_gauge_new(metrics, "vigil_auth_active_sessions",
                                     "Sessions not yet expired or revoked", NULL);
        if (!logins || !sessions)
                return -ENOMEM;
        m->logins_success = metrics_child1(logins, "success");
        m->logins_failure = metrics_child1(logins, "failure");
        m->logins_error = metrics_child1(logins, "error");
        m->active_sessions = metrics_child(sessions, NULL);
        return metrics_registry_add_collector(metrics, collect_sessions, m);
}

static int manager_init(struct daemon *d, void *userdata)
{
        const struct authd_config *c = d->config;
        struct authd_manager *m = userdata;
        int r;

        m->config = c;
        m->daemon = d;

        r = load_jwt_key(m);
        if (r < 0)
                return r;
        r = register_metrics(m, d->metrics);
        if (r < 0)
                return log_error_errno(r, "Failed to set up metrics: %m");
        r = daemon_local_cache_new(&c->redis, m->daemon->redis, d->metrics, "sessions",
                                   SESSION_KEY_PREFIX, &m->sessions_cache);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the local session cache: %m");
        r = jwt_cache_new(d->metrics, &m->token_cache);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the token cache: %m");
        r = password_hasher_new((unsigned)c->hash_max_concurrent,
                                (unsigned)c->hash_queue_timeout_ms, (unsigned long)c->hash_cost,
                                &m->hasher);
        if (r < 0)
                return log_error_errno(r, "Failed to set up password hashing: %m");

        return 0;
}

/* Only the log level is reloadable (the skeleton applies it); everything
 * else needs a restart, which socket activation makes lossless. */
const struct daemon_ops authd_ops = {
        .name = "vigil-authd",
        .description = "users, passwords, tokens and sessions",
        .default_config = SYSCONFDIR "/vigil/authd.conf",
        DAEMON_CONF(authd_conf_table, struct authd_config),
        .dependencies =
                {
                        .postgres = DAEMON_SECTION(struct authd_config, postgres),
                        .schema = &authd_schema,
                        .redis = DAEMON_SECTION(struct authd_config, redis),
                },
        .routes = authd_routes,
        .n_routes = &authd_routes_count,
        .max_request_usec = MAX_REQUEST_USEC,
        .drain_timeout_ms = DRAIN_TIMEOUT_MS,
        .manager_size = sizeof(struct authd_manager),
        .manager_init = manager_init,
        .manager_done = manager_done,
};
