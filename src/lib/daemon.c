#include "daemon.h"

#include <getopt.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>

#include "amqp.h"
#include "auth-client.h"
#include "http-server.h"
#include "local-cache.h"
#include "log.h"
#include "macro.h"
#include "pg.h"
#include "redis.h"
#include "sd.h"
#include "trace.h"

#define SECRET_MAX_SIZE 4096

/* Load config from path into a zeroed struct of ops->config_size. On failure
 * every problem is logged and the struct is freed. */
static int load_config(const struct daemon_ops *ops, const char *path, bool required, void **ret)
{
        _cleanup_free_ void *config = NULL;
        struct conf_diagnostics diag = {0};
        const struct daemon_config *common;
        int r;

        config = calloc(1, ops->config_size);
        if (!config)
                return log_error_errno(ENOMEM, "Out of memory");

        r = conf_load(ops->conf_table, ops->n_conf_keys, path, required, config, &diag);
        for (size_t i = 0; i < diag.n_errors; i++) {
                _cleanup_free_ char *line = conf_error_format(&diag.errors[i]);
                log_error("%s", line ? line : diag.errors[i].message);
        }
        conf_diagnostics_done(&diag);
        if (r == -ENOENT)
                log_error("Configuration file %s not found", path);
        else if (r < 0 && r != -EINVAL)
                log_error_errno(r, "Failed to load %s: %m", path);

        common = config;
        if (r >= 0 && log_level_from_string(common->log_level) < 0) {
                log_error("[log] level: unknown level \"%s\"", common->log_level);
                r = -EINVAL;
        }
        if (r < 0) {
                conf_free(ops->conf_table, ops->n_conf_keys, config);
                return r;
        }

        *ret = TAKE_PTR(config);
        return 0;
}

static void free_config(const struct daemon_ops *ops, void *config)
{
        if (!config)
                return;
        conf_free(ops->conf_table, ops->n_conf_keys, config);
        free(config);
}

static void apply_log_level(const void *config)
{
        const struct daemon_config *common = config;

        log_set_max_level(log_level_from_string(common->log_level));
}

static void reload(const struct daemon_ops *ops, void *manager, const char *path, bool required)
{
        void *config = NULL;
        int r;

        sd_daemon_notify_reloading();
        r = load_config(ops, path, required, &config);
        if (r < 0) {
                log_warning("Reload failed, keeping the running configuration");
        } else {
                r = ops->manager_reload ? ops->manager_reload(manager, config) : 0;
                if (r < 0) {
                        log_warning_errno(r, "Reload refused (%m), keeping the running "
                                             "configuration");
                } else {
                        apply_log_level(config);
                        log_notice("Configuration reloaded from %s", path);
                }
                free_config(ops, config);
        }
        sd_daemon_notify_ready(NULL);
}

/* The main loop: signals through a signalfd, periodic ticks, and watchdog
 * pings only after a tick that reported progress. */
static int run_loop(const struct daemon_ops *ops, void *manager, int sigfd, const char *path,
                    bool required)
{
        _cleanup_free_ char *last_status = NULL;
        uint64_t watchdog_usec = sd_daemon_watchdog_usec();
        int interval_ms = 1000;

        /* Ping at least twice per watchdog period, with room for a slow
         * tick. */
        if (watchdog_usec > 0 && watchdog_usec / 4000 < (uint64_t)interval_ms)
                interval_ms = watchdog_usec / 4000 > 10 ? (int)(watchdog_usec / 4000) : 10;

        for (;;) {
                struct pollfd pfd = {.fd = sigfd, .events = POLLIN};
                int r = poll(&pfd, 1, interval_ms);

                if (r < 0 && errno != EINTR)
                        return log_error_errno(errno, "poll() failed: %m");

                if (r > 0) {
                        struct signalfd_siginfo si;
                        ssize_t n = read(sigfd, &si, sizeof(si));

                        if (n == (ssize_t)sizeof(si)) {
                                if (si.ssi_signo == SIGHUP) {
                                        reload(ops, manager, path, required);
                                } else {
                                        log_info("Received %s, stopping",
                                                 strsignal((int)si.ssi_signo));
                                        return 0;
                                }
                        }
                }

                if (!ops->manager_tick || ops->manager_tick(manager))
                        sd_daemon_watchdog_ping();

                if (ops->manager_status) {
                        const char *status = ops->manager_status(manager);

                        if (status && (!last_status || strcmp(status, last_status) != 0)) {
                                sd_daemon_notify_status("%s", status);
                                free(last_status);
                                last_status = strdup(status);
                        }
                }
        }
}

/* One thread per connection would give glibc a malloc arena per thread,
 * and a freed 16 MiB yescrypt buffer would raise the mmap threshold so the
 * next ones stay in the heap: both keep memory resident after a burst. A
 * fixed threshold returns large buffers to the kernel on free. */
static void limit_heap_growth(void)
{
        mallopt(M_ARENA_MAX, 2);
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        mallopt(M_TRIM_THRESHOLD, 512 * 1024);
}

static void help(const struct daemon_ops *ops)
{
        printf("%s %s — %s\n\n"
               "Usage: %s [OPTIONS]\n\n"
               "  -c, --config PATH   configuration file (default %s;\n"
               "                      drop-ins in PATH.d/*.conf)\n"
               "      --check-config  validate the configuration and exit\n"
               "      --dump-config   print every key at its default, commented\n"
               "  -V, --version       print the version and exit\n"
               "  -h, --help          show this help\n\n"
               "Every key can be overridden with VIGIL_<SECTION>_<KEY> in the environment.\n",
               ops->name, PACKAGE_VERSION, ops->description, ops->name, ops->default_config);
}

int daemon_main(int argc, char **argv, const struct daemon_ops *ops)
{
        enum { ARG_CHECK_CONFIG = 0x100, ARG_DUMP_CONFIG };
        static const struct option options[] = {
                {"config", required_argument, NULL, 'c'},
                {"check-config", no_argument, NULL, ARG_CHECK_CONFIG},
                {"dump-config", no_argument, NULL, ARG_DUMP_CONFIG},
                {"version", no_argument, NULL, 'V'},
                {"help", no_argument, NULL, 'h'},
                {},
        };
        const char *path = ops->default_config;
        bool required = false, check_only = false;
        _cleanup_close_ int sigfd = -1;
        void *config = NULL, *manager = NULL;
        sigset_t mask;
        int c, r;

        while ((c = getopt_long(argc, argv, "c:Vh", options, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        path = optarg;
                        required = true;
                        break;
                case ARG_CHECK_CONFIG:
                        check_only = true;
                        break;
                case ARG_DUMP_CONFIG:
                        return conf_write_defaults(ops->conf_table, ops->n_conf_keys, stdout) < 0
                                       ? EXIT_FAILURE
                                       : EXIT_SUCCESS;
                case 'V':
                        printf("%s %s\n", ops->name, PACKAGE_VERSION);
                        return EXIT_SUCCESS;
                case 'h':
                        help(ops);
                        return EXIT_SUCCESS;
                default:
                        fprintf(stderr, "Try '%s --help'.\n", ops->name);
                        return EXIT_FAILURE;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "%s: unexpected argument '%s'\n", ops->name, argv[optind]);
                return EXIT_FAILURE;
        }

        log_open(ops->name);
        limit_heap_growth();

        r = load_config(ops, path, required, &config);
        if (r < 0)
                return EXIT_FAILURE;
        if (check_only) {
                printf("%s: configuration OK\n", path);
                free_config(ops, config);
                return EXIT_SUCCESS;
        }
        apply_log_level(config);

        /* Before any thread exists, so all inherit the mask. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
        if (sigfd < 0) {
                log_error_errno(errno, "signalfd() failed: %m");
                goto fail;
        }

        r = ops->manager_new(config, &manager);
        if (r < 0)
                goto fail;
        r = ops->manager_start(manager);
        if (r < 0)
                goto fail;

        sd_daemon_notify_ready(ops->manager_status ? ops->manager_status(manager) : "Serving");
        log_info("%s %s started", ops->name, PACKAGE_VERSION);

        r = run_loop(ops, manager, sigfd, path, required);

        sd_daemon_notify_stopping();
        ops->manager_stop(manager);
        ops->manager_free(manager);
        free_config(ops, config);
        log_info("%s stopped", ops->name);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

fail:
        if (manager)
                ops->manager_free(manager);
        free_config(ops, config);
        return EXIT_FAILURE;
}

int daemon_http_server_start(const struct daemon_config *c, struct http_server_options *opts,
                             const struct http_route *routes, size_t n_routes,
                             struct http_server **ret)
{
        struct http_server *s = NULL;
        const char *where;
        int fd = -1, r;

        r = sd_daemon_listen_fd(&fd);
        if (r < 0)
                return log_error_errno(r, "Unusable sockets passed by systemd: %m");
        where = fd >= 0 ? "the socket from systemd" : c->http_listen;

        opts->listen = c->http_listen;
        opts->listen_fd = fd;
        opts->max_connections = (unsigned)c->http_max_connections;
        opts->max_connections_per_client = (unsigned)c->http_max_connections_per_client;
        opts->header_timeout_s = (unsigned)c->http_header_timeout_seconds;
        opts->connection_timeout_s = (unsigned)c->http_idle_timeout_seconds;
        opts->access_log = c->http_access_log;
        r = http_server_new(opts, routes, n_routes, &s);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the HTTP server: %m");
        r = http_server_start(s);
        if (r < 0) {
                http_server_free(s);
                return log_error_errno(r, "Failed to listen on %s: %m", where);
        }
        log_info("Listening on %s", where);
        *ret = s;
        return 0;
}

int daemon_tracer_new(const struct daemon_config *c, const char *service_name,
                      struct metrics_registry *metrics, struct tracer **ret)
{
        struct tracer_options opts = {
                .service_name = service_name,
                .service_version = PACKAGE_VERSION,
                .endpoint = c->tracing_otlp_endpoint,
                .sample_ratio = c->tracing_sample_ratio,
                .metrics = metrics,
        };

        return tracer_new(&opts, ret);
}

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

int daemon_redis_pool_new(const struct daemon_redis_config *c, struct metrics_registry *metrics,
                          struct tracer *tracer, struct redis_pool **ret)
{
        _cleanup_(erase_and_freep) char *password = NULL;
        int r;

        r = read_optional_secret("redis-password", c->password_file, &password);
        if (r < 0)
                return r;

        struct redis_pool_options opts = {
                .address = c->address,
                .password = password,
                .size = (unsigned)c->pool_size,
                .metrics = metrics,
                .tracer = tracer,
        };
        return redis_pool_new(&opts, ret);
}

void daemon_migrate(struct pg_pool *pg, const char *schema, const struct pg_migration *migrations,
                    size_t n_migrations, atomic_bool *migrated)
{
        char error[256] = "";
        int r;

        if (atomic_load(migrated))
                return;
        r = pg_migrate_with_error(pg, schema, migrations, n_migrations, error, sizeof(error));
        if (r < 0) {
                log_warning_errno(r, "Schema migration not applied yet (%s); will retry",
                                  *error ? error : "no detail");
                return;
        }
        atomic_store(migrated, true);
        log_info("Schema %s is up to date", schema);
}

void daemon_note_dependency(atomic_bool *state, bool up, const char *what, const char *consequence)
{
        if (atomic_exchange(state, up) == up)
                return;
        if (up)
                log_notice("%s is reachable", what);
        else
                log_warning("%s is unreachable%s", what, consequence ? consequence : "");
}

void daemon_format_status(char *buf, size_t size, bool ready, size_t n, const char *const *names,
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

int daemon_auth_client_new(const struct daemon_auth_config *c, struct metrics_registry *metrics,
                           struct tracer *tracer, struct auth_client **ret)
{
        struct auth_client_options opts = {
                .base_url = c->url,
                .timeout_ms = (unsigned)c->timeout_ms,
                .metrics = metrics,
                .tracer = tracer,
        };
        return auth_client_new(&opts, ret);
}

int daemon_amqp_client_new(const struct daemon_amqp_config *c, const char *connection_name,
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
