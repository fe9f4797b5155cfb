#include "alertbotd-systemd.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-bus.h>

#include "alertbotd-escalation.h"
#include "http-client.h"
#include "macro.h"

#define SYSTEMD_SERVICE   "org.freedesktop.systemd1"
#define SYSTEMD_PATH      "/org/freedesktop/systemd1"
#define MANAGER_INTERFACE "org.freedesktop.systemd1.Manager"
#define UNIT_INTERFACE    "org.freedesktop.systemd1.Unit"
#define POLL_USEC         (100 * USEC_PER_MSEC)
#define VERIFY_POLL_USEC  (200 * USEC_PER_MSEC)
#define MAX_REMOVED       16

/* JobRemoved signals seen on this connection (the one we wait for may
 * arrive while other jobs finish too). */
struct job_wait {
        size_t n;
        struct {
                char job[256];
                char result[32];
        } removed[MAX_REMOVED];
};

const char *systemd_outcome_to_string(enum systemd_outcome o)
{
        static const char *const names[] = {
                [SYSTEMD_OUTCOME_DONE] = "done",
                [SYSTEMD_OUTCOME_JOB_FAILED] = "job_failed",
                [SYSTEMD_OUTCOME_NOT_ACTIVE] = "not_active",
                [SYSTEMD_OUTCOME_NOT_READY] = "not_ready",
                [SYSTEMD_OUTCOME_TIMEOUT] = "timeout",
                [SYSTEMD_OUTCOME_DENIED] = "denied",
                [SYSTEMD_OUTCOME_BUS_ERROR] = "bus_error",
                [SYSTEMD_OUTCOME_INTERRUPTED] = "interrupted",
        };

        return (size_t)o < ELEMENTSOF(names) && names[o] ? names[o] : "unknown";
}

static int finish(struct systemd_result *ret, enum systemd_outcome o, int error, uint64_t start,
                  const char *format, ...) _printf_(5, 6);

static int finish(struct systemd_result *ret, enum systemd_outcome o, int error, uint64_t start,
                  const char *format, ...)
{
        va_list ap;

        ret->outcome = o;
        ret->error = error;
        ret->duration_usec = now_usec(CLOCK_MONOTONIC) - start;
        va_start(ap, format);
        vsnprintf(ret->detail, sizeof(ret->detail), format, ap);
        va_end(ap);
        return o == SYSTEMD_OUTCOME_DONE ? 0 : -EIO;
}

static int open_bus(const char *address, sd_bus **ret)
{
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        if (strcmp(address, "system") == 0)
                return sd_bus_open_system(ret);
        if (strcmp(address, "session") == 0 || strcmp(address, "user") == 0)
                return sd_bus_open_user(ret);

        r = sd_bus_new(&bus);
        if (r < 0)
                return r;
        r = sd_bus_set_address(bus, address);
        if (r < 0)
                return r;
        r = sd_bus_set_bus_client(bus, 1);
        if (r < 0)
                return r;
        r = sd_bus_start(bus);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(bus);
        return 0;
}

static int on_job_removed(sd_bus_message *m, void *userdata, sd_bus_error *error)
{
        struct job_wait *w = userdata;
        const char *job, *unit, *result;
        uint32_t id;

        if (sd_bus_message_read(m, "uoss", &id, &job, &unit, &result) < 0)
                return 0;
        if (w->n == MAX_REMOVED) {
                memmove(&w->removed[0], &w->removed[1], sizeof(w->removed[0]) * (MAX_REMOVED - 1));
                w->n--;
        }
        snprintf(w->removed[w->n].job, sizeof(w->removed[0].job), "%s", job);
        snprintf(w->removed[w->n].result, sizeof(w->removed[0].result), "%s", result);
        w->n++;
        return 0;
}

static const char *removed_result(const struct job_wait *w, const char *job)
{
        for (size_t i = 0; i < w->n; i++)
                if (strcmp(w->removed[i].job, job) == 0)
                        return w->removed[i].result;
        return NULL;
}

static bool cancelled(const atomic_bool *cancel)
{
        return cancel && atomic_load(cancel);
}

/* Process and wait on the bus for at most usec. */
static int pump(sd_bus *bus, uint64_t usec)
{
        int r;

        for (;;) {
                r = sd_bus_process(bus, NULL);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
        }
        r = sd_bus_wait(bus, usec);
        return r < 0 && r != -EINTR ? r : 0;
}

static bool is_denied(const sd_bus_error *e)
{
        return sd_bus_error_has_name(e, SD_BUS_ERROR_ACCESS_DENIED) ||
               sd_bus_error_has_name(e, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED) ||
               sd_bus_error_has_name(e, "org.freedesktop.systemd1.UnitMasked");
}

/* Poll the unit's ActiveState until "active", a failed state, or the
 * deadline. */
static int wait_active(sd_bus *bus, const char *unit, uint64_t deadline, const atomic_bool *cancel,
                       struct systemd_result *ret, uint64_t start)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *path = NULL;
        const char *p;
        int r;

        r = sd_bus_call_method(bus, SYSTEMD_SERVICE, SYSTEMD_PATH, MANAGER_INTERFACE, "GetUnit",
                               &error, &reply, "s", unit);
        if (r < 0) {
                finish(ret, SYSTEMD_OUTCOME_NOT_ACTIVE, r, start, "GetUnit(%s) failed: %s", unit,
                       error.message ? error.message : strerror(-r));
                sd_bus_error_free(&error);
                return -EIO;
        }
        r = sd_bus_message_read(reply, "o", &p);
        if (r < 0)
                return finish(ret, SYSTEMD_OUTCOME_BUS_ERROR, r, start, "bad GetUnit reply");
        path = strdup(p);
        if (!path)
                return finish(ret, SYSTEMD_OUTCOME_BUS_ERROR, -ENOMEM, start, "out of memory");

        for (;;) {
                _cleanup_free_ char *state = NULL;

                r = sd_bus_get_property_string(bus, SYSTEMD_SERVICE, path, UNIT_INTERFACE,
                                               "ActiveState", &error, &state);
                if (r < 0) {
                        finish(ret, SYSTEMD_OUTCOME_BUS_ERROR, r, start,
                               "reading ActiveState of %s failed: %s", unit,
                               error.message ? error.message : strerror(-r));
                        sd_bus_error_free(&error);
                        return -EIO;
                }
                snprintf(ret->active_state, sizeof(ret->active_state), "%s", state);
                if (strcmp(state, "active") == 0)
                        return 0;
                if (strcmp(state, "failed") == 0 || strcmp(state, "inactive") == 0 ||
                    now_usec(CLOCK_MONOTONIC) >= deadline)
                        return finish(ret, SYSTEMD_OUTCOME_NOT_ACTIVE, 0, start,
                                      "%s is %s after its restart", unit, state);
                if (cancelled(cancel))
                        return finish(ret, SYSTEMD_OUTCOME_INTERRUPTED, 0, start, "stopping");
                (void)pump(bus, VERIFY_POLL_USEC);
        }
}

/* Poll ready_url until 200 or the deadline. */
static int wait_ready(const char *unit, const char *ready_url, uint64_t deadline,
                      const atomic_bool *cancel, struct systemd_result *ret, uint64_t start)
{
        _cleanup_free_ char *base = NULL, *path = NULL;
        struct http_client *client = NULL;
        long last_status = 0;
        int r, last_error = 0;

        r = escalation_url_split(ready_url, &base, &path);
        if (r < 0)
                return finish(ret, SYSTEMD_OUTCOME_NOT_READY, r, start, "bad ready URL %s",
                              ready_url);
        for (;;) {
                uint64_t now = now_usec(CLOCK_MONOTONIC), left;
                struct http_client_response resp = {};

                if (now >= deadline)
                        break;
                left = deadline - now;
                struct http_client_options opts = {
                        .peer = "ready",
                        .base_url = base,
                        .connect_timeout_ms = 1000,
                        .timeout_ms = left > 2 * USEC_PER_SEC
                                              ? 2000
                                              : (unsigned)(left / USEC_PER_MSEC) + 1,
                        .max_response = 64 * 1024,
                        .max_idle_handles = 1,
                };
                r = http_client_new(&opts, &client);
                if (r < 0)
                        return finish(ret, SYSTEMD_OUTCOME_NOT_READY, r, start,
                                      "cannot check %s: %s", ready_url, strerror(-r));
                r = http_client_request(client, "GET", path, NULL, NULL, 0, &resp);
                http_client_free(client);
                client = NULL;
                if (r >= 0 && resp.status == 200) {
                        http_client_response_done(&resp);
                        return 0;
                }
                last_status = r >= 0 ? resp.status : 0;
                last_error = r < 0 ? r : 0;
                http_client_response_done(&resp);
                if (cancelled(cancel))
                        return finish(ret, SYSTEMD_OUTCOME_INTERRUPTED, 0, start, "stopping");
                now = now_usec(CLOCK_MONOTONIC);
                if (now + VERIFY_POLL_USEC >= deadline)
                        break;
                usleep(VERIFY_POLL_USEC);
        }
        if (last_error)
                return finish(ret, SYSTEMD_OUTCOME_NOT_READY, 0, start, "%s not ready: %s: %s",
                              unit, ready_url, strerror(-last_error));
        return finish(ret, SYSTEMD_OUTCOME_NOT_READY, 0, start, "%s not ready: %s answered %ld",
                      unit, ready_url, last_status);
}

int systemd_restart_unit(const char *bus_address, const char *unit, const char *ready_url,
                         uint64_t timeout_usec, const atomic_bool *cancel,
                         struct systemd_result *ret)
{
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t start = now_usec(CLOCK_MONOTONIC), deadline = start + timeout_usec;
        struct job_wait wait = {};
        const char *job, *result;
        int r;

        assert(bus_address && unit && ret);
        memset(ret, 0, sizeof(*ret));

        r = open_bus(bus_address, &bus);
        if (r < 0)
                return finish(ret, SYSTEMD_OUTCOME_BUS_ERROR, r, start,
                              "cannot connect to the %s bus: %s", bus_address, strerror(-r));
        r = sd_bus_set_method_call_timeout(bus, timeout_usec);
        if (r < 0)
                return finish(ret, SYSTEMD_OUTCOME_BUS_ERROR, r, start, "%s", strerror(-r));

        /* Match before asking, so the signal cannot slip past. */
        r = sd_bus_match_signal(bus, &slot, SYSTEMD_SERVICE, SYSTEMD_PATH, MANAGER_INTERFACE,
                                "JobRemoved", on_job_removed, &wait);
        if (r < 0)
                return finish(ret, SYSTEMD_OUTCOME_BUS_ERROR, r, start,
                              "cannot subscribe to JobRemoved: %s", strerror(-r));
        r = sd_bus_call_method(bus, SYSTEMD_SERVICE, SYSTEMD_PATH, MANAGER_INTERFACE, "Subscribe",
                               &error, NULL, "");
        if (r < 0) {
                finish(ret, SYSTEMD_OUTCOME_BUS_ERROR, r, start, "Subscribe failed: %s",
                       error.message ? error.message : strerror(-r));
                sd_bus_error_free(&error);
                return -EIO;
        }

        r = sd_bus_call_method(bus, SYSTEMD_SERVICE, SYSTEMD_PATH, MANAGER_INTERFACE, "RestartUnit",
                               &error, &reply, "ss", unit, "replace");
        if (r < 0) {
                finish(ret, is_denied(&error) ? SYSTEMD_OUTCOME_DENIED : SYSTEMD_OUTCOME_BUS_ERROR,
                       r, start, "RestartUnit(%s) refused: %s%s%s", unit,
                       error.name ? error.name : strerror(-r), error.message ? ": " : "",
                       error.message ? error.message : "");
                sd_bus_error_free(&error);
                return -EIO;
        }
        r = sd_bus_message_read(reply, "o", &job);
        if (r < 0)
                return finish(ret, SYSTEMD_OUTCOME_BUS_ERROR, r, start, "bad RestartUnit reply");
        snprintf(ret->job, sizeof(ret->job), "%s", job);

        for (;;) {
                uint64_t now;

                result = removed_result(&wait, ret->job);
                if (result)
                        break;
                if (cancelled(cancel))
                        return finish(ret, SYSTEMD_OUTCOME_INTERRUPTED, 0, start,
                                      "stopping while waiting for %s", ret->job);
                now = now_usec(CLOCK_MONOTONIC);
                if (now >= deadline)
                        return finish(ret, SYSTEMD_OUTCOME_TIMEOUT, 0, start,
                                      "job %s of %s did not finish in time", ret->job, unit);
                r = pump(bus, deadline - now < POLL_USEC ? deadline - now : POLL_USEC);
                if (r < 0)
                        return finish(ret, SYSTEMD_OUTCOME_BUS_ERROR, r, start,
                                      "lost the bus while waiting for %s: %s", ret->job,
                                      strerror(-r));
        }
        snprintf(ret->job_result, sizeof(ret->job_result), "%s", result);
        if (strcmp(result, "done") != 0)
                return finish(ret, SYSTEMD_OUTCOME_JOB_FAILED, 0, start,
                              "the restart job of %s ended with \"%s\"", unit, result);

        r = wait_active(bus, unit, deadline, cancel, ret, start);
        if (r < 0)
                return r;
        if (ready_url) {
                r = wait_ready(unit, ready_url, deadline, cancel, ret, start);
                if (r < 0)
                        return r;
        }
        return finish(ret, SYSTEMD_OUTCOME_DONE, 0, start, "%s restarted and %s", unit,
                      ready_url ? "ready" : "active");
}
