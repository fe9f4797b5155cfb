/* Acting on units through systemd's D-Bus API (org.freedesktop.systemd1):
 * RestartUnit(unit, "replace"), wait for the job's JobRemoved signal, then
 * verify that the unit is active again and, where it has a readiness URL,
 * that it answers 200 there — all within one deadline.
 *
 * Every remediation opens its own bus connection (so a restarted
 * dbus-daemon or a stale connection never wedges the bot), subscribes,
 * and closes it at the end. Blocking: run it on a worker thread.
 *
 * Thread-safety: systemd_restart_unit() may run on any thread; it shares
 * nothing between calls. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum systemd_outcome {
        SYSTEMD_OUTCOME_DONE,        /* restarted, active (and ready) */
        SYSTEMD_OUTCOME_JOB_FAILED,  /* JobRemoved with a result other than "done" */
        SYSTEMD_OUTCOME_NOT_ACTIVE,  /* the job finished but the unit is not active */
        SYSTEMD_OUTCOME_NOT_READY,   /* active, but /ready did not answer 200 in time */
        SYSTEMD_OUTCOME_TIMEOUT,     /* no JobRemoved before the deadline */
        SYSTEMD_OUTCOME_DENIED,      /* systemd (polkit) refused RestartUnit */
        SYSTEMD_OUTCOME_BUS_ERROR,   /* no bus, or another D-Bus error */
        SYSTEMD_OUTCOME_INTERRUPTED, /* the bot is stopping */
};

struct systemd_result {
        enum systemd_outcome outcome;
        int error;              /* negative errno for BUS_ERROR/DENIED, else 0 */
        char job[256];          /* the job object path */
        char job_result[32];    /* "done", "failed", "timeout", … or "" */
        char active_state[32];  /* last ActiveState read, or "" */
        char detail[256];       /* human text for the log */
        uint64_t duration_usec; /* RestartUnit to verdict */
};

/* "done", "job_failed", "not_active", "not_ready", "timeout", "denied",
 * "bus_error", "interrupted". */
const char *systemd_outcome_to_string(enum systemd_outcome o);

/* Restart unit on bus ("system", "session" or a D-Bus address such as
 * "unix:path=/run/…") and verify it within timeout_usec; ready_url may be
 * NULL. cancel (may be NULL) is polled: when it becomes true the wait ends
 * with SYSTEMD_OUTCOME_INTERRUPTED. Fills *ret and returns 0 when the
 * outcome is DONE, otherwise -EIO (the outcome says why). */
int systemd_restart_unit(const char *bus, const char *unit, const char *ready_url,
                         uint64_t timeout_usec, const atomic_bool *cancel,
                         struct systemd_result *ret);
