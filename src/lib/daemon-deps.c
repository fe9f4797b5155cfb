#include "daemon-deps.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "amqp.h"
#include "auth-client.h"
#include "faults.h"
#include "http-server.h"
#include "local-cache.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "pg.h"
#include "redis.h"
#include "sd.h"
#include "trace.h"

#define SECRET_MAX_SIZE 4096
/* postgres, redis and the daemon's own checks */
#define STATUS_NAMES_MAX         8
#define AUTH_CHECK_INTERVAL_USEC (5 * USEC_PER_SEC)

/* ---- building the dependencies from their config sections */

/* A credential that may be absent: returns 0 with *ret NULL when neither it
 * nor the fallback file exists. */
static int read_optional_secret(const char *name, const char *fallback, char **ret)
{
        int r = conf_read_credential(name, fallback, SECRET_MAX_SIZE, ret, NULL);

        if (r == -ENOENT && (!fallback || !*fallback)) {
                *ret = NULL;
                return 0;
        }
        return r;
}

int daemon_pg_pool_new(const struct daemon_postgres_config *c, const char *application_name,
                       struct metrics_registry *metrics, struct tracer *tracer,
                       struct pg_pool **ret)
{
        _cleanup_(erase_and_freep) char *password = NULL;
        int r;

        r = read_optional_secret("postgres-password", c->password_file, &password);
        if (r < 0)
                return r;

        struct pg_pool_options opts = {
                .dsn = c->dsn,
                .password = password,
                .application_name = application_name,
                .size = (unsigned)c->pool_size,
                .metrics = metrics,
                .tracer = tracer,
        };
        return pg_pool_new(&opts, ret);
}

static int redis_pool_from_config(const struct daemon_redis_config *c,
                                  struct metrics_registry *metrics, struct tracer *tracer,
                                  struct redis_pool **ret)
{
        _cleanup_(erase_and_freep) char *password = NULL;
        int r;

        r = read_optional_secret("redis-password", c->password_file, &password);
        if (r < 0)
                return r;

        if (c->username[0] && !password)
                return log_error_errno(-EINVAL, "[redis] username is set but there is no password "
                                                "(redis-password credential or password_file)");

        struct redis_pool_options opts = {
                .address = c->address,
                .username = c->username[0] ? c->username : NULL,
                .password = password,
                .size = (unsigned)c->pool_size,
                .metrics = metrics,
                .tracer = tracer,
        };
        return redis_pool_new(&opts, ret);
}

/* The amqp-password credential (or password_file) overrides a password in
 * the URL; -ENOKEY when there is no password anywhere. */
static int amqp_client_from_config(const struct daemon_amqp_config *c, const char *connection_name,
                                   struct metrics_registry *metrics, struct tracer *tracer,
                                   struct amqp_client **ret)
{
        _cleanup_(erase_and_freep) char *password = NULL;
        int r;

        r = read_optional_secret("amqp-password", c->password_file, &password);
        if (r < 0)
                return r;

        struct amqp_client_options opts = {
                .url = c->url,
                .password = password,
                .connection_name = connection_name,
                .metrics = metrics,
                .tracer = tracer,
        };
        return amqp_client_new(&opts, ret);
}

int daemon_local_cache_new(const struct daemon_redis_config *c, struct redis_pool *redis,
                           struct metrics_registry *metrics, const char *name, const char *prefix,
                           struct local_cache **ret)
{
        struct local_cache_options opts = {
                .redis = redis,
                .name = name,
                .prefix = prefix,
                .max_age_ms = (unsigned)c->local_cache_max_age_ms,
                .max_bytes = (size_t)c->local_cache_max_kib * 1024,
                .metrics = metrics,
        };

        *ret = NULL;
        if (c->local_cache_max_age_ms == 0)
                return 0;
        return local_cache_new(&opts, ret);
}

static const void *section(const struct daemon *d, size_t offset)
{
        return (const char *)d->config + offset;
}

static int observability_new(struct daemon *d)
{
        const struct daemon_config *common = d->config;
        int r;

        r = metrics_registry_new(&d->metrics);
        if (r >= 0)
                r = metrics_register_process(d->metrics);
        if (r >= 0)
                r = metrics_register_build_info(d->metrics, PACKAGE_VERSION);
        if (r < 0)
                return log_error_errno(r, "Failed to set up metrics: %m");

        struct tracer_options opts = {
                .service_name = d->ops->name,
                .service_version = PACKAGE_VERSION,
                .endpoint = common->tracing_otlp_endpoint,
                .sample_ratio = common->tracing_sample_ratio,
                .metrics = d->metrics,
        };
        r = tracer_new(&opts, &d->tracer);
        if (r < 0)
                return log_error_errno(r, "Failed to set up tracing to %s: %m",
                                       common->tracing_otlp_endpoint);

        struct faults_options faults_opts = {
                .metrics = d->metrics,
                .own_error_routes = d->ops->faults_own_error_routes,
        };
        r = faults_new(&faults_opts, &d->faults);
        if (r < 0)
                return log_error_errno(r, "Failed to set up [faults]: %m");
        return 0;
}

int daemon_apply_faults(struct daemon *d, const void *config, bool at_start)
{
        const struct faults_config *c = &((const struct daemon_config *)config)->faults;
        int r;

        r = faults_set(d->faults, c, at_start);
        if (r < 0)
                return r;
        if (d->pg)
                pg_pool_set_failed(d->pg, faults_dependency_failed(d->faults, "postgres"));
        if (d->redis)
                redis_pool_set_failed(d->redis, faults_dependency_failed(d->faults, "redis"));
        if (d->auth)
                auth_client_set_failed(d->auth, faults_dependency_failed(d->faults, "auth"));
        if (d->amqp)
                amqp_client_set_failed(d->amqp, faults_dependency_failed(d->faults, "amqp"));
        if (c->error_ratio > 0 || c->latency_ms > 0 ||
            (c->fail_dependency && *c->fail_dependency) || c->hang_seconds > 0 ||
            c->leak_kib_per_second > 0)
                log_warning("[faults] active: error_ratio %g, latency_ms %" PRId64
                            ", routes \"%s\", fail_dependency \"%s\", hang_seconds %" PRId64
                            ", leak_kib_per_second %" PRId64,
                            c->error_ratio, c->latency_ms, c->routes ? c->routes : "",
                            c->fail_dependency ? c->fail_dependency : "", c->hang_seconds,
                            c->leak_kib_per_second);
        return 0;
}

int daemon_dependencies_new(struct daemon *d)
{
        const struct daemon_dependencies *deps = &d->ops->dependencies;
        const char *name = d->ops->name;
        int r;

        r = observability_new(d);
        if (r < 0)
                return r;
        atomic_store(&d->migrated, !deps->schema);

        if (deps->postgres) {
                r = daemon_pg_pool_new(section(d, deps->postgres), name, d->metrics, d->tracer,
                                       &d->pg);
                if (r < 0)
                        return log_error_errno(r, "Failed to set up PostgreSQL (postgres-password "
                                                  "credential): %m");
        }
        if (deps->redis) {
                r = redis_pool_from_config(section(d, deps->redis), d->metrics, d->tracer,
                                           &d->redis);
                if (r < 0)
                        return log_error_errno(r, "Failed to set up Redis (redis-password "
                                                  "credential): %m");
        }
        if (deps->auth) {
                const struct daemon_auth_config *c = section(d, deps->auth);
                struct auth_client_options opts = {
                        .base_url = c->url,
                        .timeout_ms = (unsigned)c->timeout_ms,
                        .metrics = d->metrics,
                        .tracer = d->tracer,
                };

                r = auth_client_new(&opts, &d->auth);
                if (r < 0)
                        return log_error_errno(r,
                                               "Failed to set up the client of vigil-authd at "
                                               "\"%s\": %m",
                                               c->url);
        }
        if (deps->amqp) {
                const struct daemon_amqp_config *c = section(d, deps->amqp);

                r = amqp_client_from_config(c, name, d->metrics, d->tracer, &d->amqp);
                if (r == -ENOKEY)
                        return log_error_errno(r, "No RabbitMQ password: provide the amqp-password "
                                                  "credential (LoadCredential=amqp-password:…), "
                                                  "[amqp] password_file, or a password in [amqp] "
                                                  "url");
                if (r < 0)
                        return log_error_errno(r,
                                               "Failed to set up RabbitMQ at \"%s\" "
                                               "(amqp-password credential): %m",
                                               c->url);
        }
        r = daemon_apply_faults(d, d->config, true);
        if (r < 0)
                return log_error_errno(r, "Failed to apply [faults]: %m");
        return 0;
}

/* ---- readiness, checks and status */

/* /ready: PostgreSQL with the schema migrated, Redis, authd, then the
 * daemon's own checks, in that order; the first failing is named. */
static int ready(void *userdata, const char **ret_failing)
{
        struct daemon *d = userdata;
        int r;

        if (d->pg) {
                r = pg_pool_ping(d->pg);
                if (r >= 0 && !atomic_load(&d->migrated))
                        r = -EAGAIN;
                if (r < 0) {
                        *ret_failing = "postgres";
                        return r;
                }
        }
        if (d->redis) {
                r = redis_pool_ping(d->redis);
                if (r < 0) {
                        *ret_failing = "redis";
                        return r;
                }
        }
        if (d->auth) {
                r = auth_client_health(d->auth);
                if (r < 0) {
                        *ret_failing = "auth";
                        return r;
                }
        }
        for (size_t i = 0; i < d->ops->n_checks; i++)
                if (!d->ops->checks[i].up(d->manager)) {
                        *ret_failing = d->ops->checks[i].name;
                        return -ENOTCONN;
                }
        return 0;
}

static void intercept(void *userdata, const char *route, unsigned *ret_delay_ms, bool *ret_fail)
{
        faults_decide(userdata, route, ret_delay_ms, ret_fail);
}

int daemon_serve(struct daemon *d)
{
        const struct daemon_config *c = d->config;
        const struct daemon_ops *ops = d->ops;
        struct http_server_options opts = {
                .service_name = ops->name,
                .max_body = ops->max_body,
                .metrics = d->metrics,
                .tracer = d->tracer,
                .ready = ready,
                .userdata = d->manager,
                .ready_userdata = d,
                .listen = c->http_listen,
                .max_connections = (unsigned)c->http_max_connections,
                .max_connections_per_client = (unsigned)c->http_max_connections_per_client,
                .header_timeout_s = (unsigned)c->http_header_timeout_seconds,
                .connection_timeout_s = (unsigned)c->http_idle_timeout_seconds,
                .access_log = c->http_access_log,
                .intercept = intercept,
                .intercept_userdata = d->faults,
        };
        const char *where;
        int fd = -1, r;

        r = sd_daemon_listen_fd(&fd);
        if (r < 0)
                return log_error_errno(r, "Unusable sockets passed by systemd: %m");
        where = fd >= 0 ? "the socket from systemd" : c->http_listen;
        opts.listen_fd = fd;

        r = http_server_new(&opts, ops->routes, ops->n_routes ? *ops->n_routes : 0, &d->http);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the HTTP server: %m");
        r = http_server_start(d->http);
        if (r < 0)
                return log_error_errno(r, "Failed to listen on %s: %m", where);
        log_info("Listening on %s", where);
        return 0;
}

/* Keep a dependency check's outcome in *state and log when it changed. */
static void note_dependency(atomic_bool *state, bool up, const char *what, const char *consequence)
{
        if (atomic_exchange(state, up) == up)
                return;
        if (up)
                log_notice("%s is reachable", what);
        else
                log_warning("%s is unreachable%s", what, consequence ? consequence : "");
}

/* Bring the schema up to date unless it is, for the next tick to retry
 * when it cannot yet. */
int daemon_migrate(struct pg_pool *pg, const struct pg_schema *schema)
{
        char error[256] = "";
        int r;

        r = pg_migrate_with_error(pg, schema->name, schema->migrations, schema->n_migrations, error,
                                  sizeof(error));
        if (r < 0)
                return log_warning_errno(r, "Schema migration not applied yet (%s); will retry",
                                         *error ? error : "no detail");
        log_info("Schema %s is up to date", schema->name);
        return 0;
}

static void migrate(struct daemon *d)
{
        if (!atomic_load(&d->migrated) && daemon_migrate(d->pg, d->ops->dependencies.schema) >= 0)
                atomic_store(&d->migrated, true);
}

static void check_dependencies(struct daemon *d)
{
        const char *redis_down = d->ops->dependencies.redis_down;

        if (d->pg) {
                bool up = pg_pool_ping(d->pg) >= 0;

                note_dependency(&d->postgres_up, up, "PostgreSQL", NULL);
                if (up)
                        migrate(d);
        }
        if (d->redis)
                note_dependency(&d->redis_up, redis_pool_ping(d->redis) >= 0, "Redis", redis_down);
        /* authd answers every check in its access log: every few ticks is
         * enough to keep vigil_dependency_up{dependency="auth"} true when
         * nothing else calls it. */
        if (d->auth && now_usec(CLOCK_MONOTONIC) >= d->auth_next_check) {
                note_dependency(&d->auth_up, auth_client_health(d->auth) >= 0, "vigil-authd",
                                " (requests needing a user fail)");
                d->auth_next_check = now_usec(CLOCK_MONOTONIC) + AUTH_CHECK_INTERVAL_USEC;
        }
}

/* The STATUS= text after a check: "Serving" when ready and every one of
 * the n dependencies is up, else "Degraded: postgres, redis unavailable"
 * naming those down (or "Degraded: schema migration pending"). */
static void format_status(char *buf, size_t size, bool ready, size_t n, const char *const *names,
                          const bool *up)
{
        size_t len;

        len = (size_t)snprintf(buf, size, "Degraded: ");
        for (size_t i = 0; i < n && len < size; i++)
                if (!up[i])
                        len += (size_t)snprintf(buf + len, size - len, "%s%s",
                                                len > strlen("Degraded: ") ? ", " : "", names[i]);
        if (len >= size)
                return;
        if (len > strlen("Degraded: "))
                snprintf(buf + len, size - len, " unavailable");
        else if (ready)
                snprintf(buf, size, "Serving");
        else
                snprintf(buf + len, size - len, "schema migration pending");
}

static void compose_status(struct daemon *d)
{
        const char *names[STATUS_NAMES_MAX];
        bool up[STATUS_NAMES_MAX];
        size_t n = 0;

        if (d->pg) {
                names[n] = "postgres";
                up[n++] = atomic_load(&d->postgres_up);
        }
        if (d->redis) {
                names[n] = "redis";
                up[n++] = atomic_load(&d->redis_up);
        }
        if (d->auth) {
                names[n] = "auth";
                up[n++] = atomic_load(&d->auth_up);
        }
        for (size_t i = 0; i < d->ops->n_checks && n < STATUS_NAMES_MAX; i++) {
                names[n] = d->ops->checks[i].name;
                up[n++] = d->ops->checks[i].up(d->manager);
        }
        format_status(d->status, sizeof(d->status), atomic_load(&d->migrated), n, names, up);
}

bool daemon_tick(struct daemon *d)
{
        const struct daemon_ops *ops = d->ops;
        bool watch = !ops->dependencies.followed_by_manager;
        bool progress = true;
        /* Under a span that is not sampled: a check a second must not
         * start a trace a second. */
        struct span *quiet = span_start_unsampled("dependency check");
        struct span *previous = trace_set_current(quiet);

        if (watch)
                check_dependencies(d);
        if (ops->manager_tick)
                progress = ops->manager_tick(d->manager);
        if (watch)
                compose_status(d);
        if (ops->manager_status)
                ops->manager_status(d->manager, d->status, sizeof(d->status));
        trace_set_current(previous);
        span_end(quiet);
        return http_server_is_healthy(d->http, ops->max_request_usec) && progress;
}

/* ---- stopping */

void daemon_stop(struct daemon *d)
{
        http_server_drain(d->http, d->ops->drain_timeout_ms);
        if (d->ops->manager_stop)
                d->ops->manager_stop(d->manager);
}

void daemon_teardown(struct daemon *d)
{
        http_server_free(d->http);
        d->http = NULL;
        if (d->manager)
                d->ops->manager_done(d->manager);
        free(d->manager);
        d->manager = NULL;
        amqp_client_free(d->amqp);
        auth_client_free(d->auth);
        redis_pool_free(d->redis);
        pg_pool_free(d->pg);
        faults_free(d->faults);
        d->faults = NULL;
        tracer_free(d->tracer);
        metrics_registry_free(d->metrics);
}
