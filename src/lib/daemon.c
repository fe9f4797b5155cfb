#include "daemon.h"

#include <getopt.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>

#include "daemon-deps.h"
#include "faults.h"
#include "http-server.h"
#include "log.h"
#include "macro.h"
#include "sd.h"

/* Load path into config (zeroed, ops->config_size bytes), logging every
 * problem with its file and line. The caller conf_free()s config. */
static int load_config_into(const struct daemon_ops *ops, const char *path, bool required,
                            void *config)
{
        struct conf_diagnostics diag = {0};
        int r;

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
        return r;
}

/* Load config from path into a zeroed struct of ops->config_size. On failure
 * every problem is logged and the struct is freed. */
static int load_config(const struct daemon_ops *ops, const char *path, bool required, void **ret)
{
        _cleanup_free_ void *config = NULL;
        int r;

        config = calloc(1, ops->config_size);
        if (!config)
                return log_error_errno(ENOMEM, "Out of memory");

        r = load_config_into(ops, path, required, config);
        if (r < 0) {
                conf_free(ops->conf_table, ops->n_conf_keys, config);
                return r;
        }

        *ret = TAKE_PTR(config);
        return 0;
}

/* --check-config: every problem of the configuration and of what it names
 * (ops->check_config), logged. A file with errors still names those other
 * files (the bad values are left at their defaults): they are checked too,
 * so that one run lists every problem. */
static int check_config(const struct daemon_ops *ops, const char *path, bool required)
{
        _cleanup_free_ void *config = NULL;
        int r, q;

        config = calloc(1, ops->config_size);
        if (!config)
                return log_error_errno(ENOMEM, "Out of memory");

        r = load_config_into(ops, path, required, config);
        if ((r >= 0 || r == -EINVAL) && ops->check_config) {
                q = ops->check_config(config);
                if (r >= 0)
                        r = q;
        }
        conf_free(ops->conf_table, ops->n_conf_keys, config);
        return r;
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

static void reload(struct daemon *d, const char *path, bool required)
{
        const struct daemon_ops *ops = d->ops;
        void *config = NULL;
        int r;

        sd_daemon_notify_reloading();
        r = load_config(ops, path, required, &config);
        if (r < 0) {
                log_warning("Reload failed, keeping the running configuration");
        } else {
                r = ops->manager_reload ? ops->manager_reload(d->manager, config) : 0;
                if (r >= 0)
                        r = daemon_apply_faults(d, config, false);
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

/* [faults] hang_seconds: hold every request and send no watchdog ping for
 * seconds, as a hung main loop would (systemd's watchdog is expected to
 * kill the daemon). Signals still end it: returns true when SIGTERM or
 * SIGINT arrived, and sets *ret_reload for a SIGHUP, applied afterwards. */
static bool hang(struct daemon *d, int sigfd, unsigned seconds, bool *ret_reload)
{
        uint64_t until = now_usec(CLOCK_MONOTONIC) + (uint64_t)seconds * USEC_PER_SEC;

        /* Held first: a request sent after the line is held. */
        http_server_hold(d->http, true);
        log_warning("Hanging for %u s on purpose ([faults] hang_seconds): no watchdog pings, "
                    "requests held",
                    seconds);
        for (;;) {
                uint64_t now = now_usec(CLOCK_MONOTONIC);
                struct pollfd pfd = {.fd = sigfd, .events = POLLIN};
                struct signalfd_siginfo si;

                if (now >= until)
                        break;
                if (poll(&pfd, 1, (int)((until - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC)) <= 0)
                        continue;
                if (read(sigfd, &si, sizeof(si)) != (ssize_t)sizeof(si))
                        continue;
                if (si.ssi_signo == SIGHUP) {
                        *ret_reload = true;
                        continue;
                }
                http_server_hold(d->http, false);
                log_info("Received %s while hanging, stopping", strsignal((int)si.ssi_signo));
                return true;
        }
        /* Logged first: a request held until now sees the line. */
        log_notice("Hang of %u s over ([faults] hang_seconds)", seconds);
        http_server_hold(d->http, false);
        return false;
}

/* glibc gives freed heap memory back to the kernel on its own only from
 * the top of a heap. What a burst of connections (a thread each) freed in
 * the middle stays resident, a megabyte or more, until malloc_trim() hands
 * its whole pages back; it holds each arena's lock while it walks it, for
 * microseconds on a daemon's heap, so the loop calls it this often. */
#define TRIM_INTERVAL_USEC (10 * USEC_PER_SEC)

/* The main loop: signals through a signalfd, periodic ticks, and watchdog
 * pings only after a tick that reported progress. */
static int run_loop(struct daemon *d, int sigfd, const char *path, bool required)
{
        _cleanup_free_ char *last_status = NULL;
        uint64_t watchdog_usec = sd_daemon_watchdog_usec();
        uint64_t last_trim = now_usec(CLOCK_MONOTONIC);
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
                                        reload(d, path, required);
                                } else {
                                        log_info("Received %s, stopping",
                                                 strsignal((int)si.ssi_signo));
                                        return 0;
                                }
                        }
                }

                for (unsigned s = faults_take_hang(d->faults); s > 0;
                     s = faults_take_hang(d->faults)) {
                        bool reload_pending = false;

                        if (hang(d, sigfd, s, &reload_pending))
                                return 0;
                        if (reload_pending)
                                reload(d, path, required);
                }
                (void)faults_leak_tick(d->faults);

                if (daemon_tick(d))
                        sd_daemon_watchdog_ping();

                if (now_usec(CLOCK_MONOTONIC) - last_trim >= TRIM_INTERVAL_USEC) {
                        (void)malloc_trim(0);
                        last_trim = now_usec(CLOCK_MONOTONIC);
                }

                if (!last_status || strcmp(d->status, last_status) != 0) {
                        sd_daemon_notify_status("%s", d->status);
                        free(last_status);
                        last_status = strdup(d->status);
                }
        }
}

/* A zeroed manager of the daemon's size, filled by its manager_init. */
static int manager_new(struct daemon *d)
{
        d->manager = calloc(1, d->ops->manager_size);
        if (!d->manager)
                return log_error_errno(ENOMEM, "Out of memory");
        return d->ops->manager_init(d, d->manager);
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
        struct daemon d = {.ops = ops};
        void *config = NULL;
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

        if (check_only) {
                if (check_config(ops, path, required) < 0)
                        return EXIT_FAILURE;
                printf("%s: configuration OK\n", path);
                return EXIT_SUCCESS;
        }
        r = load_config(ops, path, required, &config);
        if (r < 0)
                return EXIT_FAILURE;
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

        /* Dependencies are tried before READY=1, but being down is a
         * degraded state, not a failure: they may come up later. Trying
         * them first migrates the schema before the manager's threads read
         * it. */
        d.config = config;
        r = daemon_dependencies_new(&d);
        if (r >= 0)
                r = manager_new(&d);
        if (r >= 0)
                r = daemon_serve(&d);
        if (r >= 0) {
                (void)daemon_tick(&d);
                if (ops->manager_start)
                        r = ops->manager_start(d.manager);
        }
        if (r < 0) {
                daemon_teardown(&d);
                free_config(ops, config);
                return EXIT_FAILURE;
        }

        sd_daemon_notify_ready(d.status);
        log_info("%s %s started", ops->name, PACKAGE_VERSION);

        r = run_loop(&d, sigfd, path, required);

        sd_daemon_notify_stopping();
        daemon_stop(&d);
        daemon_teardown(&d);
        free_config(ops, config);
        log_info("%s stopped", ops->name);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

fail:
        free_config(ops, config);
        return EXIT_FAILURE;
}
