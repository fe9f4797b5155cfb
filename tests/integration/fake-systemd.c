/* A stand-in for systemd's manager on a private D-Bus, for
 * test-alertbotd-dbus.py: owns org.freedesktop.systemd1 and implements the
 * parts of org.freedesktop.systemd1.Manager vigil-alertbotd uses —
 * Subscribe, Unsubscribe, RestartUnit (returns a job path and emits
 * JobRemoved(id, job, unit, result) after a delay), GetUnit — and the
 * ActiveState property of org.freedesktop.systemd1.Unit on unit objects.
 *
 * Usage: fake-systemd BUS-ADDRESS DIRECTORY
 *
 * Behaviour per unit comes from DIRECTORY/<unit>.conf, read at every call
 * (so a test can change it between alerts), lines of key=value:
 *   result=done|failed|timeout|…   the JobRemoved result (default done)
 *   delay_ms=N                     before JobRemoved (default 50)
 *   active_state=active|failed|…   ActiveState after the job (default active)
 *   deny=1                         RestartUnit fails with AccessDenied
 *   silent=1                       never emit JobRemoved
 * Every call is appended to DIRECTORY/calls.log as one line:
 *   Subscribe, RestartUnit <unit> <mode>, GetUnit <unit>, Get <unit> ActiveState
 * "ready" is written to DIRECTORY/ready once the name is owned. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#define UNIT_PREFIX "/org/freedesktop/systemd1/unit"
#define MAX_UNITS   64

struct unit {
        char name[256];
        unsigned pending; /* restart jobs not yet removed */
};

struct job {
        struct fake *fake;
        uint32_t id;
        char path[128];
        char unit[256];
        char result[64];
};

struct fake {
        const char *dir;
        sd_bus *bus;
        sd_event *event;
        uint32_t next_job;
        struct unit units[MAX_UNITS];
        size_t n_units;
};

struct behaviour {
        char result[64];
        char active_state[64];
        unsigned delay_ms;
        bool deny;
        bool silent;
};

static void record(struct fake *f, const char *format, ...) __attribute__((format(printf, 2, 3)));

static void record(struct fake *f, const char *format, ...)
{
        char path[4096];
        va_list ap;
        FILE *out;

        snprintf(path, sizeof(path), "%s/calls.log", f->dir);
        out = fopen(path, "a");
        if (!out)
                return;
        va_start(ap, format);
        vfprintf(out, format, ap);
        va_end(ap);
        fputc('\n', out);
        fclose(out);
}

static void read_behaviour(struct fake *f, const char *unit, struct behaviour *b)
{
        char path[4096], line[256];
        FILE *in;

        snprintf(b->result, sizeof(b->result), "done");
        snprintf(b->active_state, sizeof(b->active_state), "active");
        b->delay_ms = 50;
        b->deny = b->silent = false;
        snprintf(path, sizeof(path), "%s/%s.conf", f->dir, unit);
        in = fopen(path, "r");
        if (!in)
                return;
        while (fgets(line, sizeof(line), in)) {
                char *eq = strchr(line, '='), *nl = strchr(line, '\n');

                if (nl)
                        *nl = '\0';
                if (!eq)
                        continue;
                *eq++ = '\0';
                if (strcmp(line, "result") == 0)
                        snprintf(b->result, sizeof(b->result), "%s", eq);
                else if (strcmp(line, "active_state") == 0)
                        snprintf(b->active_state, sizeof(b->active_state), "%s", eq);
                else if (strcmp(line, "delay_ms") == 0)
                        b->delay_ms = (unsigned)strtoul(eq, NULL, 10);
                else if (strcmp(line, "deny") == 0)
                        b->deny = strcmp(eq, "1") == 0;
                else if (strcmp(line, "silent") == 0)
                        b->silent = strcmp(eq, "1") == 0;
        }
        fclose(in);
}

static struct unit *get_unit(struct fake *f, const char *name)
{
        for (size_t i = 0; i < f->n_units; i++)
                if (strcmp(f->units[i].name, name) == 0)
                        return &f->units[i];
        if (f->n_units == MAX_UNITS)
                return NULL;
        snprintf(f->units[f->n_units].name, sizeof(f->units[0].name), "%s", name);
        f->units[f->n_units].pending = 0;
        return &f->units[f->n_units++];
}

static int emit_job_removed(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct job *j = userdata;
        struct unit *u = get_unit(j->fake, j->unit);
        int r;

        if (u && u->pending > 0)
                u->pending--;
        r = sd_bus_emit_signal(j->fake->bus, "/org/freedesktop/systemd1",
                               "org.freedesktop.systemd1.Manager", "JobRemoved", "uoss", j->id,
                               j->path, j->unit, j->result);
        if (r < 0)
                fprintf(stderr, "fake-systemd: JobRemoved: %s\n", strerror(-r));
        sd_event_source_unref(s);
        free(j);
        return 0;
}

static int method_subscribe(sd_bus_message *m, void *userdata, sd_bus_error *error)
{
        record(userdata, "Subscribe");
        return sd_bus_reply_method_return(m, "");
}

static int method_unsubscribe(sd_bus_message *m, void *userdata, sd_bus_error *error)
{
        record(userdata, "Unsubscribe");
        return sd_bus_reply_method_return(m, "");
}

static int method_restart_unit(sd_bus_message *m, void *userdata, sd_bus_error *error)
{
        struct fake *f = userdata;
        struct behaviour b;
        const char *unit, *mode;
        struct unit *u;
        struct job *j;
        uint64_t now;
        int r;

        r = sd_bus_message_read(m, "ss", &unit, &mode);
        if (r < 0)
                return r;
        record(f, "RestartUnit %s %s", unit, mode);
        read_behaviour(f, unit, &b);
        if (b.deny)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED,
                                        "Access denied (fake polkit)");
        u = get_unit(f, unit);
        j = calloc(1, sizeof(*j));
        if (!u || !j) {
                free(j);
                return -ENOMEM;
        }
        j->fake = f;
        j->id = ++f->next_job;
        snprintf(j->path, sizeof(j->path), "/org/freedesktop/systemd1/job/%" PRIu32, j->id);
        snprintf(j->unit, sizeof(j->unit), "%s", unit);
        snprintf(j->result, sizeof(j->result), "%s", b.result);
        r = sd_bus_reply_method_return(m, "o", j->path);
        if (r < 0 || b.silent) {
                free(j);
                return r;
        }
        u->pending++;
        sd_event_now(f->event, CLOCK_MONOTONIC, &now);
        r = sd_event_add_time(f->event, NULL, CLOCK_MONOTONIC, now + b.delay_ms * 1000ULL, 0,
                              emit_job_removed, j);
        if (r < 0) {
                free(j);
                return r;
        }
        return 1;
}

static int method_get_unit(sd_bus_message *m, void *userdata, sd_bus_error *error)
{
        struct fake *f = userdata;
        char *path = NULL;
        const char *unit;
        int r;

        r = sd_bus_message_read(m, "s", &unit);
        if (r < 0)
                return r;
        record(f, "GetUnit %s", unit);
        r = sd_bus_path_encode(UNIT_PREFIX, unit, &path);
        if (r < 0)
                return r;
        r = sd_bus_reply_method_return(m, "o", path);
        free(path);
        return r;
}

static int property_active_state(sd_bus *bus, const char *path, const char *interface,
                                 const char *property, sd_bus_message *reply, void *userdata,
                                 sd_bus_error *error)
{
        struct fake *f = userdata;
        char *unit = NULL;
        struct behaviour b;
        struct unit *u;
        int r;

        r = sd_bus_path_decode(path, UNIT_PREFIX, &unit);
        if (r <= 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_UNKNOWN_OBJECT, "No such unit");
        record(f, "Get %s ActiveState", unit);
        read_behaviour(f, unit, &b);
        u = get_unit(f, unit);
        r = sd_bus_message_append(reply, "s", u && u->pending ? "activating" : b.active_state);
        free(unit);
        return r;
}

static int find_unit(sd_bus *bus, const char *path, const char *interface, void *userdata,
                     void **found, sd_bus_error *error)
{
        char *unit = NULL;
        int r = sd_bus_path_decode(path, UNIT_PREFIX, &unit);

        free(unit);
        if (r <= 0)
                return 0;
        *found = userdata;
        return 1;
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Subscribe", "", "", method_subscribe, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Unsubscribe", "", "", method_unsubscribe, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("RestartUnit", "ss", "o", method_restart_unit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("GetUnit", "s", "o", method_get_unit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL("JobRemoved", "uoss", 0),
        SD_BUS_VTABLE_END,
};

static const sd_bus_vtable unit_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("ActiveState", "s", property_active_state, 0, 0),
        SD_BUS_VTABLE_END,
};

int main(int argc, char **argv)
{
        struct fake f = {};
        char path[4096];
        FILE *ready;
        int r;

        if (argc != 3) {
                fprintf(stderr, "Usage: %s BUS-ADDRESS DIRECTORY\n", argv[0]);
                return 2;
        }
        f.dir = argv[2];

        r = sd_event_default(&f.event);
        if (r >= 0)
                r = sd_bus_new(&f.bus);
        if (r >= 0)
                r = sd_bus_set_address(f.bus, argv[1]);
        if (r >= 0)
                r = sd_bus_set_bus_client(f.bus, 1);
        if (r >= 0)
                r = sd_bus_start(f.bus);
        if (r >= 0)
                r = sd_bus_add_object_vtable(f.bus, NULL, "/org/freedesktop/systemd1",
                                             "org.freedesktop.systemd1.Manager", manager_vtable,
                                             &f);
        if (r >= 0)
                r = sd_bus_add_fallback_vtable(f.bus, NULL, UNIT_PREFIX,
                                               "org.freedesktop.systemd1.Unit", unit_vtable,
                                               find_unit, &f);
        if (r >= 0)
                r = sd_bus_request_name(f.bus, "org.freedesktop.systemd1", 0);
        if (r >= 0)
                r = sd_bus_attach_event(f.bus, f.event, 0);
        if (r < 0) {
                fprintf(stderr, "fake-systemd: setup failed: %s\n", strerror(-r));
                return 1;
        }
        snprintf(path, sizeof(path), "%s/ready", f.dir);
        ready = fopen(path, "w");
        if (ready) {
                fputs("ready\n", ready);
                fclose(ready);
        }
        r = sd_event_loop(f.event);
        sd_bus_flush_close_unref(f.bus);
        sd_event_unref(f.event);
        return r < 0 ? 1 : 0;
}
