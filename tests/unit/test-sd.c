/* Tests for sd.c: the notify messages as a service manager receives them
 * (on a datagram socket named by NOTIFY_SOCKET), socket activation and the
 * watchdog settings. Each test runs in its own process (Check's fork
 * mode), so the environment and fd 3 it changes do not leak. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "macro.h"
#include "sd.h"

/* ---- notify ---- */

#define TMPDIR_TEMPLATE "/tmp/test-sd-XXXXXX"
static char tmpdir[sizeof(TMPDIR_TEMPLATE)];
static char socket_path[sizeof(TMPDIR_TEMPLATE) + 16];
static int notify_fd = -1;

static void notify_setup(void)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};

        memcpy(tmpdir, TMPDIR_TEMPLATE, sizeof(TMPDIR_TEMPLATE));
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
        snprintf(socket_path, sizeof(socket_path), "%s/notify", tmpdir);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", socket_path);

        notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(notify_fd, 0);
        ck_assert_int_eq(bind(notify_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(setenv("NOTIFY_SOCKET", socket_path, 1), 0);
}

static void notify_teardown(void)
{
        if (notify_fd >= 0)
                close(notify_fd);
        unlink(socket_path);
        rmdir(tmpdir);
}

/* The next datagram, NUL-terminated; fails the test after 5 s without. */
static void receive(char *buf, size_t size)
{
        struct pollfd p = {.fd = notify_fd, .events = POLLIN};
        ssize_t n;

        ck_assert_msg(poll(&p, 1, 5000) == 1, "no notification arrived");
        n = recv(notify_fd, buf, size - 1, 0);
        ck_assert_int_ge(n, 0);
        buf[n] = '\0';
}

static void assert_nothing_pending(void)
{
        struct pollfd p = {.fd = notify_fd, .events = POLLIN};

        ck_assert_int_eq(poll(&p, 1, 0), 0);
}

START_TEST(test_notify_ready_sends_ready_and_status)
{
        char buf[512];

        sd_daemon_notify_ready("Serving");
        receive(buf, sizeof(buf));
        ck_assert_str_eq(buf, "READY=1\nSTATUS=Serving");

        sd_daemon_notify_ready(NULL);
        receive(buf, sizeof(buf));
        ck_assert_str_eq(buf, "READY=1");
}
END_TEST

START_TEST(test_notify_status_is_one_line_and_bounded)
{
        char buf[1024], big[600];

        sd_daemon_notify_status("%d of %d dependencies up", 2, 3);
        receive(buf, sizeof(buf));
        ck_assert_str_eq(buf, "STATUS=2 of 3 dependencies up");

        /* A newline would inject another assignment. */
        sd_daemon_notify_status("%s", "evil\nREADY=1");
        receive(buf, sizeof(buf));
        ck_assert_str_eq(buf, "STATUS=evil READY=1");

        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        sd_daemon_notify_status("%s", big);
        receive(buf, sizeof(buf));
        ck_assert_uint_eq(strlen(buf), strlen("STATUS=") + 256);
}
END_TEST

START_TEST(test_notify_reloading_stopping_and_watchdog)
{
        char buf[512];

        sd_daemon_notify_reloading();
        receive(buf, sizeof(buf));
        ck_assert_msg(strncmp(buf, "RELOADING=1\nMONOTONIC_USEC=", 27) == 0, "%s", buf);
        ck_assert_uint_gt(strtoull(buf + 27, NULL, 10), 0);

        sd_daemon_notify_stopping();
        receive(buf, sizeof(buf));
        ck_assert_str_eq(buf, "STOPPING=1");

        sd_daemon_watchdog_ping();
        receive(buf, sizeof(buf));
        ck_assert_str_eq(buf, "WATCHDOG=1");
        assert_nothing_pending();
}
END_TEST

START_TEST(test_notify_preserves_errno)
{
        char buf[64];

        errno = EADDRINUSE;
        sd_daemon_notify_status("x");
        ck_assert_int_eq(errno, EADDRINUSE);
        receive(buf, sizeof(buf));
}
END_TEST

START_TEST(test_notify_outside_systemd_is_a_no_op)
{
        unsetenv("NOTIFY_SOCKET");
        sd_daemon_notify_ready("Serving");
        sd_daemon_notify_status("x");
        sd_daemon_notify_reloading();
        sd_daemon_notify_stopping();
        sd_daemon_watchdog_ping();
        assert_nothing_pending();
}
END_TEST

/* ---- socket activation ----
 *
 * Check itself may hold fd 3 (its message file), so each scenario runs in
 * a child process of the test that reports by exit status, and the test
 * asserts on that. */

/* In a scenario: print the failed condition and fail the child. */
#define EXPECT(cond)                                                                               \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond);         \
                        return 1;                                                                  \
                }                                                                                  \
        } while (0)

static void run_scenario(int (*scenario)(void))
{
        int status = 0;
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0)
                _exit(scenario());
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "scenario failed");
}

/* Put fd at SD_LISTEN_FDS_START + index. */
static bool place_fd(int fd, int index)
{
        int target = SD_LISTEN_FDS_START + index;

        if (fd < 0 || dup2(fd, target) != target)
                return false;
        if (fd != target)
                close(fd);
        return true;
}

/* Announce n fds as passed by systemd to pid. */
static void announce_fds(int n, pid_t pid)
{
        char buf[32];

        snprintf(buf, sizeof(buf), "%d", (int)pid);
        setenv("LISTEN_PID", buf, 1);
        snprintf(buf, sizeof(buf), "%d", n);
        setenv("LISTEN_FDS", buf, 1);
}

static int tcp_socket(bool listening)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        if (fd < 0)
                return -1;
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || (listening && listen(fd, 1) < 0)) {
                close(fd);
                return -1;
        }
        return fd;
}

static int listening_socket_scenario(void)
{
        int fd = -1;

        EXPECT(place_fd(tcp_socket(true), 0));
        announce_fds(1, getpid());
        EXPECT(sd_daemon_listen_fd(&fd) == 1);
        EXPECT(fd == SD_LISTEN_FDS_START);
        /* Children must not think the socket is theirs. */
        EXPECT(!getenv("LISTEN_FDS") && !getenv("LISTEN_PID"));
        /* sd_listen_fds() marks it close-on-exec. */
        EXPECT(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        return 0;
}

START_TEST(test_listen_fd_takes_one_listening_stream_socket)
{
        run_scenario(listening_socket_scenario);
}
END_TEST

static int not_listening_scenario(void)
{
        int fd = -1;

        EXPECT(place_fd(tcp_socket(false), 0));
        announce_fds(1, getpid());
        EXPECT(sd_daemon_listen_fd(&fd) == -EINVAL);
        EXPECT(fd == -1);
        EXPECT(!getenv("LISTEN_FDS"));
        return 0;
}

START_TEST(test_listen_fd_rejects_a_socket_not_listening)
{
        run_scenario(not_listening_scenario);
}
END_TEST

static int datagram_scenario(void)
{
        int fd = -1;

        EXPECT(place_fd(socket(AF_INET, SOCK_DGRAM, 0), 0));
        announce_fds(1, getpid());
        EXPECT(sd_daemon_listen_fd(&fd) == -EINVAL);
        EXPECT(fd == -1);
        return 0;
}

START_TEST(test_listen_fd_rejects_a_datagram_socket)
{
        run_scenario(datagram_scenario);
}
END_TEST

static int several_sockets_scenario(void)
{
        int fd = -1;

        EXPECT(place_fd(tcp_socket(true), 0));
        EXPECT(place_fd(tcp_socket(true), 1));
        announce_fds(2, getpid());
        EXPECT(sd_daemon_listen_fd(&fd) == -EINVAL);
        EXPECT(fd == -1);
        return 0;
}

START_TEST(test_listen_fd_rejects_several_sockets)
{
        run_scenario(several_sockets_scenario);
}
END_TEST

START_TEST(test_listen_fd_without_sockets_returns_0)
{
        int fd = -1;

        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_PID");
        ck_assert_int_eq(sd_daemon_listen_fd(&fd), 0);
        ck_assert_int_eq(fd, -1);
}
END_TEST

START_TEST(test_listen_fd_for_another_process_returns_0)
{
        int fd = -1;

        /* Without touching any fd: the PID does not match. */
        announce_fds(1, getpid() + 1);
        ck_assert_int_eq(sd_daemon_listen_fd(&fd), 0);
        ck_assert_int_eq(fd, -1);
}
END_TEST

/* ---- watchdog ---- */

START_TEST(test_watchdog_usec_from_environment)
{
        char pid[32];

        snprintf(pid, sizeof(pid), "%d", (int)getpid());
        setenv("WATCHDOG_USEC", "30000000", 1);
        setenv("WATCHDOG_PID", pid, 1);
        ck_assert_uint_eq(sd_daemon_watchdog_usec(), 30000000);
        /* The variables stay: asking again gives the same answer. */
        ck_assert_uint_eq(sd_daemon_watchdog_usec(), 30000000);

        unsetenv("WATCHDOG_PID"); /* no PID: meant for us too */
        ck_assert_uint_eq(sd_daemon_watchdog_usec(), 30000000);
}
END_TEST

START_TEST(test_watchdog_off_when_unset_or_for_another_process)
{
        char pid[32];

        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        ck_assert_uint_eq(sd_daemon_watchdog_usec(), 0);

        snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
        setenv("WATCHDOG_USEC", "30000000", 1);
        setenv("WATCHDOG_PID", pid, 1);
        ck_assert_uint_eq(sd_daemon_watchdog_usec(), 0);

        setenv("WATCHDOG_USEC", "garbage", 1);
        unsetenv("WATCHDOG_PID");
        ck_assert_uint_eq(sd_daemon_watchdog_usec(), 0);
}
END_TEST

static Suite *sd_suite(void)
{
        Suite *s = suite_create("sd");
        TCase *tc;

        tc = tcase_create("notify");
        tcase_add_checked_fixture(tc, notify_setup, notify_teardown);
        tcase_add_test(tc, test_notify_ready_sends_ready_and_status);
        tcase_add_test(tc, test_notify_status_is_one_line_and_bounded);
        tcase_add_test(tc, test_notify_reloading_stopping_and_watchdog);
        tcase_add_test(tc, test_notify_preserves_errno);
        tcase_add_test(tc, test_notify_outside_systemd_is_a_no_op);
        suite_add_tcase(s, tc);

        tc = tcase_create("listen");
        tcase_add_test(tc, test_listen_fd_takes_one_listening_stream_socket);
        tcase_add_test(tc, test_listen_fd_rejects_a_socket_not_listening);
        tcase_add_test(tc, test_listen_fd_rejects_a_datagram_socket);
        tcase_add_test(tc, test_listen_fd_rejects_several_sockets);
        tcase_add_test(tc, test_listen_fd_without_sockets_returns_0);
        tcase_add_test(tc, test_listen_fd_for_another_process_returns_0);
        suite_add_tcase(s, tc);

        tc = tcase_create("watchdog");
        tcase_add_test(tc, test_watchdog_usec_from_environment);
        tcase_add_test(tc, test_watchdog_off_when_unset_or_for_another_process);
        suite_add_tcase(s, tc);

        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(sd_suite());
        int failed;

        /* The tests change the environment: one process each, whatever
         * CK_FORK says. */
        srunner_set_fork_status(sr, CK_FORK);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
