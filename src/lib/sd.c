/* The service manager interface on top of libsystemd. The contracts are in
 * sd.h. Every notification is best effort: outside systemd sd_notify()
 * returns 0 and nothing happens, and a failure to notify is nothing a
 * caller could act on. errno is preserved so that callers may notify
 * between a failing call and their use of %m. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "sd.h"

/* Longest STATUS= text sent; longer ones are cut. */
#define STATUS_MAX 256

int sd_daemon_listen_fd(int *ret_fd)
{
        int n, r;

        /* 1: unset LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES so that children
         * do not take the sockets for theirs. */
        n = sd_listen_fds(1);
        if (n < 0)
                return n;
        if (n == 0)
                return 0;
        if (n > 1)
                return -EINVAL;

        r = sd_is_socket(SD_LISTEN_FDS_START, AF_UNSPEC, SOCK_STREAM, 1);
        if (r < 0)
                return r;
        if (r == 0)
                return -EINVAL;

        *ret_fd = SD_LISTEN_FDS_START;
        return 1;
}

static void notify(const char *message)
{
        int saved_errno = errno;

        (void)sd_notify(0, message);
        errno = saved_errno;
}

/* Send "<prefix>STATUS=<status>" with status made one line and bounded. */
static void notify_with_status(const char *prefix, const char *status)
{
        char message[STATUS_MAX + 32];
        size_t start;

        snprintf(message, sizeof(message), "%sSTATUS=", prefix);
        start = strlen(message);
        snprintf(message + start, STATUS_MAX + 1, "%s", status);
        /* A newline would start a new assignment in the notify protocol. */
        for (char *p = message + start; *p; p++)
                if (*p == '\n' || *p == '\r')
                        *p = ' ';
        notify(message);
}

void sd_daemon_notify_ready(const char *status)
{
        if (status)
                notify_with_status("READY=1\n", status);
        else
                notify("READY=1");
}

void sd_daemon_notify_status(const char *format, ...)
{
        char status[STATUS_MAX + 1];
        int saved_errno = errno;
        va_list ap;

        va_start(ap, format);
        vsnprintf(status, sizeof(status), format, ap);
        va_end(ap);
        errno = saved_errno;

        notify_with_status("", status);
}

void sd_daemon_notify_reloading(void)
{
        char message[64];

        /* Type=notify-reload (systemd 253+) wants the time the reload
         * started along with RELOADING=1; older managers ignore it. */
        snprintf(message, sizeof(message), "RELOADING=1\nMONOTONIC_USEC=%llu",
                 (unsigned long long)now_usec(CLOCK_MONOTONIC));
        notify(message);
}

void sd_daemon_notify_stopping(void)
{
        notify("STOPPING=1");
}

uint64_t sd_daemon_watchdog_usec(void)
{
        uint64_t usec = 0;
        int saved_errno = errno;
        int r;

        /* 0: keep WATCHDOG_USEC/WATCHDOG_PID, so that asking twice gives
         * the same answer (they name this process, children ignore them). */
        r = sd_watchdog_enabled(0, &usec);
        errno = saved_errno;
        return r > 0 ? usec : 0;
}

void sd_daemon_watchdog_ping(void)
{
        notify("WATCHDOG=1");
}
