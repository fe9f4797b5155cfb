/* The one place that talks to the service manager: readiness, status,
 * watchdog and socket activation. Outside systemd (no NOTIFY_SOCKET, no
 * LISTEN_FDS) every call is a harmless no-op, so callers never check.
 *
 * Thread-safety: may be called from any thread. */
#pragma once

#include <stdint.h>

#include "macro.h"

/* The socket passed by systemd, if any. Returns 1 and sets *ret_fd when
 * exactly one listening stream socket was passed, 0 when none, -EINVAL when
 * several or one of the wrong type was passed. Unsets LISTEN_* either way. */
int sd_daemon_listen_fd(int *ret_fd);

void sd_daemon_notify_ready(const char *status);
void sd_daemon_notify_status(const char *format, ...) _printf_(1, 2);
void sd_daemon_notify_reloading(void);
void sd_daemon_notify_stopping(void);

/* The watchdog timeout in microseconds, 0 when the watchdog is off. */
uint64_t sd_daemon_watchdog_usec(void);
void sd_daemon_watchdog_ping(void);
