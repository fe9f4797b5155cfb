/* Unit tests for the daemon skeleton (daemon.h): a daemon with no
 * dependencies runs in a child process, its hooks write their names to a
 * pipe, and the test reads the order in which the skeleton ran them. */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"
#include "macro.h"

struct test_config {
        struct daemon_config common;
};

static const struct conf_key test_conf_table[] = {
        DAEMON_CONF_KEYS(struct test_config, "127.0.0.1:0"),
};

struct test_manager {
        int magic;
};

enum { FAIL_NONE, FAIL_INIT, FAIL_START };

static int events_fd = -1;
static int fail_at = FAIL_NONE;

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

static int manager_start(void *userdata)
{
        struct test_manager *m = userdata;

        ck_assert_int_eq(m->magic, 42);
        note("start");
        if (fail_at == FAIL_START)
                return -EIO;
        /* Blocked by the skeleton: read by its loop, which then stops. */
        raise(SIGTERM);
        return 0;
}

static bool manager_tick(void *userdata)
{
        (void)userdata;
        note("tick");
        return true;
}

static void manager_stop(void *userdata)
{
        (void)userdata;
        note("stop");
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
        .manager_stop = manager_stop,
        .manager_done = manager_done,
};

/* Run the daemon in a child until it exits; its exit status, and the
 * hooks it ran in order in events ("init,tick,…,"). */
static int run_daemon(int fail, char *events, size_t size)
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
        ck_assert(WIFEXITED(status));
        return WEXITSTATUS(status);
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

static Suite *daemon_suite(void)
{
        Suite *s = suite_create("daemon");
        TCase *tc = tcase_create("lifecycle");

        tcase_add_test(tc, test_hooks_run_in_order_and_are_undone_in_reverse);
        tcase_add_test(tc, test_failed_init_is_undone_and_the_daemon_exits_1);
        tcase_add_test(tc, test_failed_start_is_undone_without_stop_and_the_daemon_exits_1);
        suite_add_tcase(s, tc);
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
