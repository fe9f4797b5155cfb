/* Unit tests for the daemon skeleton (daemon.h): a daemon with no
 * dependencies runs in a child process, its hooks write their names to a
 * pipe, and the test reads the order in which the skeleton ran them; for
 * SIGHUP, what it logged too. */
#include <check.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"
#include "macro.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

struct test_config {
        struct daemon_config common;
};

static const struct conf_key test_conf_table[] = {
        DAEMON_CONF_KEYS(struct test_config, "127.0.0.1:0"),
};

struct test_manager {
        int magic;
};

enum { FAIL_NONE, FAIL_INIT, FAIL_START, RELOAD_GOOD, RELOAD_BAD, HEAP_FREED };

static int events_fd = -1;
static int fail_at = FAIL_NONE;
static const char *config_path;

/* What manager_start writes over the configuration before its SIGHUP. */
static const char good_reload[] = "[http]\nlisten = 127.0.0.1:0\naccess_log = false\n"
                                  "[tracing]\notlp_endpoint =\n[log]\nlevel = debug\n";
static const char bad_reload[] = "[log]\nlevel = loud\n[http]\nmax_connections = 0\n";

static void note(const char *event)
{
        (void)!write(events_fd, event, strlen(event));
        (void)!write(events_fd, ",", 1);
}

static int manager_init(struct daemon *d, void *userdata)
{
        struct test_manager *m = userdata;

        ck_assert_ptr_nonnull(d->metrics);
        ck_assert_ptr_nonnull(d->tracer);
        ck_assert_ptr_null(d->pg);
        m->magic = 42;
        note("init");
        return fail_at == FAIL_INIT ? -EINVAL : 0;
}

/* This process's own resident pages (RssAnon), in KiB. */
static long rss_anon_kib(void)
{
        FILE *f = fopen("/proc/self/status", "re");
        char line[256];
        long kib = -1;

        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "RssAnon: %ld kB", &kib) == 1)
                        break;
        fclose(f);
        ck_assert_int_ge(kib, 0);
        return kib;
}

/* HEAP_FREED: 4 MiB of small blocks, written and freed below a block that
 * stays, so that glibc cannot give them back from the top of the heap. */
#define FREED_BLOCKS     16384
#define FREED_BLOCK_SIZE 256
static void *freed_blocks[FREED_BLOCKS];
static void *heap_pin;
static long anon_after_free = -1;
static unsigned ticks_after_free;

static void free_a_burst(void)
{
        for (size_t i = 0; i < FREED_BLOCKS; i++) {
                freed_blocks[i] = malloc(FREED_BLOCK_SIZE);
                ck_assert_ptr_nonnull(freed_blocks[i]);
                memset(freed_blocks[i], 0x5a, FREED_BLOCK_SIZE);
        }
        heap_pin = malloc(FREED_BLOCK_SIZE);
        ck_assert_ptr_nonnull(heap_pin);
        for (size_t i = 0; i < FREED_BLOCKS; i++)
                free(freed_blocks[i]);
        anon_after_free = rss_anon_kib();
}

static int manager_start(void *userdata)
{
        struct test_manager *m = userdata;

        ck_assert_int_eq(m->magic, 42);
        note("start");
        if (fail_at == FAIL_START)
                return -EIO;
        if (fail_at == HEAP_FREED) {
                free_a_burst();
                return 0; /* manager_tick stops the daemon */
        }
        if (fail_at == RELOAD_GOOD || fail_at == RELOAD_BAD) {
                const char *text = fail_at == RELOAD_GOOD ? good_reload : bad_reload;
                FILE *f = fopen(config_path, "we");

                ck_assert_ptr_nonnull(f);
                ck_assert_int_ge(fputs(text, f), 0);
                ck_assert_int_eq(fclose(f), 0);
                /* The lower signal is read first: reload, then stop. */
                raise(SIGHUP);
        }
        /* Blocked by the skeleton: read by its loop, which then stops. */
        raise(SIGTERM);
        return 0;
}

static bool manager_tick(void *userdata)
{
        (void)userdata;
        note("tick");
        if (fail_at == HEAP_FREED && anon_after_free >= 0) {
                /* Half of what was freed is back with the kernel, or 20 s
                 * (twice the skeleton's interval) have passed. */
                if (rss_anon_kib() < anon_after_free - FREED_BLOCKS * FREED_BLOCK_SIZE / 2048) {
                        note("returned");
                        raise(SIGTERM);
                } else if (++ticks_after_free == 20) {
                        note("kept");
                        raise(SIGTERM);
                }
        }
        return true;
}

static int manager_reload(void *userdata, const void *config)
{
        const struct test_config *c = config;

        (void)userdata;
        ck_assert_str_eq(c->common.log_level, "debug");
        note("reload");
        return 0;
}

static void manager_stop(void *userdata)
{
        (void)userdata;
        note("stop");
}

/* Its own STATUS=, in place of the skeleton's "Serving". */
static void manager_status(void *userdata, char *status, size_t size)
{
        struct test_manager *m = userdata;

        snprintf(status, size, "Testing, magic %d", m->magic);
}

static void manager_done(void *userdata)
{
        struct test_manager *m = userdata;

        ck_assert_int_eq(m->magic, 42);
        note("done");
}

static const struct daemon_ops test_ops = {
        .name = "vigil-test",
        .description = "the skeleton under test",
        .default_config = "/nonexistent/vigil-test.conf",
        DAEMON_CONF(test_conf_table, struct test_config),
        .max_request_usec = 30 * USEC_PER_SEC,
        .drain_timeout_ms = 1000,
        .manager_size = sizeof(struct test_manager),
        .manager_init = manager_init,
        .manager_start = manager_start,
        .manager_tick = manager_tick,
        .manager_status = manager_status,
        .manager_reload = manager_reload,
        .manager_stop = manager_stop,
        .manager_done = manager_done,
};

/* Run the daemon in a child until it exits; its exit status, and the
 * hooks it ran in order in events ("init,tick,…,"). What it logged goes to
 * log_path when not NULL. */
static int run_daemon_logging(int fail, char *events, size_t size, const char *log_path,
                              char *ret_config_path, size_t config_path_size)
{
        char path[] = "/tmp/vigil-test-daemon-XXXXXX";
        static const char conf[] = "[http]\nlisten = 127.0.0.1:0\naccess_log = false\n"
                                   "[tracing]\notlp_endpoint =\n";
        int pipefd[2], fd, status;
        size_t len = 0;
        ssize_t n;
        pid_t pid;

        fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, conf, sizeof(conf) - 1), (ssize_t)sizeof(conf) - 1);
        close(fd);
        ck_assert_int_eq(pipe(pipefd), 0);

        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                char *argv[] = {"vigil-test", "--config", path, NULL};

                close(pipefd[0]);
                events_fd = pipefd[1];
                fail_at = fail;
                config_path = path;
                if (log_path) {
                        int log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

                        if (log_fd < 0 || dup2(log_fd, STDERR_FILENO) < 0)
                                _exit(99);
                        setenv("VIGIL_LOG_TARGET", "stderr", 1);
                }
                _exit(daemon_main(3, argv, &test_ops));
        }
        close(pipefd[1]);
        /* Bounded by the daemon's own exit: the pipe closes with it. */
        while (len + 1 < size && (n = read(pipefd[0], events + len, size - 1 - len)) > 0)
                len += (size_t)n;
        events[len] = '\0';
        close(pipefd[0]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        unlink(path);
        if (ret_config_path)
                snprintf(ret_config_path, config_path_size, "%s", path);
        ck_assert(WIFEXITED(status));
        return WEXITSTATUS(status);
}

static int run_daemon(int fail, char *events, size_t size)
{
        return run_daemon_logging(fail, events, size, NULL, NULL, 0);
}

/* The whole of a small file, NUL-terminated, in buf. */
static void read_log(const char *path, char *buf, size_t size)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n;

        ck_assert_int_ge(fd, 0);
        n = read(fd, buf, size - 1);
        ck_assert_int_ge(n, 0);
        buf[n] = '\0';
        close(fd);
        unlink(path);
}

START_TEST(test_hooks_run_in_order_and_are_undone_in_reverse)
{
        char events[512];

        ck_assert_int_eq(run_daemon(FAIL_NONE, events, sizeof(events)), EXIT_SUCCESS);
        /* The first check runs before the manager's threads start. */
        ck_assert_msg(strncmp(events, "init,tick,start,", 16) == 0, "%s", events);
        ck_assert_msg(strlen(events) >= 10 &&
                              strcmp(events + strlen(events) - 10, "stop,done,") == 0,
                      "%s", events);
}
END_TEST

START_TEST(test_failed_init_is_undone_and_the_daemon_exits_1)
{
        char events[512];

        ck_assert_int_eq(run_daemon(FAIL_INIT, events, sizeof(events)), EXIT_FAILURE);
        ck_assert_str_eq(events, "init,done,");
}
END_TEST

START_TEST(test_failed_start_is_undone_without_stop_and_the_daemon_exits_1)
{
        char events[512];

        ck_assert_int_eq(run_daemon(FAIL_START, events, sizeof(events)), EXIT_FAILURE);
        ck_assert_str_eq(events, "init,tick,start,done,");
}
END_TEST

START_TEST(test_sighup_with_a_good_config_applies_it)
{
        char events[512], log[8192], conf[64], log_path[] = "/tmp/vigil-test-daemon-log-XXXXXX";

        close(mkstemp(log_path));
        ck_assert_int_eq(run_daemon_logging(RELOAD_GOOD, events, sizeof(events), log_path, conf,
                                            sizeof(conf)),
                         EXIT_SUCCESS);
        read_log(log_path, log, sizeof(log));
        ck_assert_msg(strstr(events, "start,reload,"), "%s", events);
        ck_assert_msg(strstr(log, "Configuration reloaded from"), "%s", log);
}
END_TEST

START_TEST(test_sighup_with_a_bad_config_keeps_the_running_one_and_names_file_and_line)
{
        char events[512], log[8192], conf[64], want[128],
                log_path[] = "/tmp/vigil-test-daemon-log-XXXXXX";

        close(mkstemp(log_path));
        ck_assert_int_eq(run_daemon_logging(RELOAD_BAD, events, sizeof(events), log_path, conf,
                                            sizeof(conf)),
                         EXIT_SUCCESS);
        read_log(log_path, log, sizeof(log));
        /* Not applied: the manager never saw it, and the daemon ran on. */
        ck_assert_msg(!strstr(events, "reload"), "%s", events);
        ck_assert_msg(strlen(events) >= 10 &&
                              strcmp(events + strlen(events) - 10, "stop,done,") == 0,
                      "%s", events);
        snprintf(want, sizeof(want), "%s:2: [log] level: expected one of debug, info,", conf);
        ck_assert_msg(strstr(log, want), "no \"%s\" in:\n%s", want, log);
        snprintf(want, sizeof(want), "%s:4: [http] max_connections: 0 is out of range", conf);
        ck_assert_msg(strstr(log, want), "no \"%s\" in:\n%s", want, log);
        ck_assert_msg(strstr(log, "Reload failed, keeping the running configuration"), "%s", log);
        ck_assert_msg(!strstr(log, "Configuration reloaded"), "%s", log);
}
END_TEST

#ifndef UNDER_ASAN
START_TEST(test_heap_memory_freed_after_a_burst_goes_back_to_the_kernel)
{
        char events[512];

        ck_assert_int_eq(run_daemon(HEAP_FREED, events, sizeof(events)), EXIT_SUCCESS);
        ck_assert_msg(strstr(events, ",returned,"), "%s", events);
}
END_TEST
#endif

START_TEST(test_the_manager_status_is_what_systemd_is_told_at_ready)
{
        char dir[] = "/tmp/vigil-test-daemon-notify-XXXXXX", path[64], events[512],
             message[512] = "";
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        struct pollfd p;
        int fd;

        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/notify", dir);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        /* This test's own process (Check forks one per test). */
        ck_assert_int_eq(setenv("NOTIFY_SOCKET", path, 1), 0);

        ck_assert_int_eq(run_daemon(FAIL_NONE, events, sizeof(events)), EXIT_SUCCESS);
        /* The daemon has exited: every message it sent is queued. */
        p = (struct pollfd){.fd = fd, .events = POLLIN};
        while (!strstr(message, "READY=1") && poll(&p, 1, 0) == 1) {
                ssize_t n = recv(fd, message, sizeof(message) - 1, 0);

                ck_assert_int_ge(n, 0);
                message[n] = '\0';
        }
        close(fd);
        unlink(path);
        rmdir(dir);
        ck_assert_str_eq(message, "READY=1\nSTATUS=Testing, magic 42");
}
END_TEST

static Suite *daemon_suite(void)
{
        Suite *s = suite_create("daemon");
        TCase *tc = tcase_create("lifecycle");

        tcase_add_test(tc, test_hooks_run_in_order_and_are_undone_in_reverse);
        tcase_add_test(tc, test_failed_init_is_undone_and_the_daemon_exits_1);
        tcase_add_test(tc, test_failed_start_is_undone_without_stop_and_the_daemon_exits_1);
        tcase_add_test(tc, test_sighup_with_a_good_config_applies_it);
        tcase_add_test(tc,
                       test_sighup_with_a_bad_config_keeps_the_running_one_and_names_file_and_line);
        tcase_add_test(tc, test_the_manager_status_is_what_systemd_is_told_at_ready);
        suite_add_tcase(s, tc);

#ifndef UNDER_ASAN
        /* About TRIM_INTERVAL_USEC (10 s) of the skeleton's loop. Not under
         * AddressSanitizer: its allocator, not glibc's, holds the heap. */
        tc = tcase_create("memory");
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_heap_memory_freed_after_a_burst_goes_back_to_the_kernel);
        suite_add_tcase(s, tc);
#endif
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(daemon_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
