#include "alertbotd-state.h"

#include <assert.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "file.h"
#include "json-util.h"
#include "utf8.h"

#define STATE_VERSION 1

int state_new(struct alertbot_state **ret)
{
        struct alertbot_state *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

void state_free(struct alertbot_state *s)
{
        free(s);
}

void state_copy(struct alertbot_state *dst, const struct alertbot_state *src)
{
        if (dst != src)
                memcpy(dst, src, sizeof(*dst));
}

int state_set_string(char *dst, size_t max, const char *src)
{
        size_t len = src ? strlen(src) : 0;

        if (len > max)
                return -ENAMETOOLONG;
        memcpy(dst, src ? src : "", len);
        dst[len] = '\0';
        return 0;
}

int state_dedup_key(const char *fingerprint, const char *starts_at, bool firing, char *key)
{
        if (strlen(fingerprint) > STATE_FINGERPRINT_MAX || strlen(starts_at) > STATE_TIMESTAMP_MAX)
                return -ENAMETOOLONG;
        snprintf(key, STATE_KEY_MAX + 1, "%s|%s|%c", fingerprint, starts_at, firing ? 'f' : 'r');
        return 0;
}

bool state_dedup_contains(const struct alertbot_state *s, const char *key)
{
        for (size_t i = s->n_dedup; i > 0; i--)
                if (strcmp(s->dedup[i - 1].key, key) == 0)
                        return true;
        return false;
}

static void remove_first(void *array, size_t *n, size_t size, size_t count)
{
        if (count > *n)
                count = *n;
        memmove(array, (char *)array + count * size, (*n - count) * size);
        *n -= count;
}

void state_dedup_add(struct alertbot_state *s, const char *key, int64_t now)
{
        size_t old = 0;

        while (old < s->n_dedup && s->dedup[old].seen_at < now - STATE_DEDUP_TTL)
                old++;
        if (old == 0 && s->n_dedup == STATE_MAX_DEDUP)
                old = 1;
        remove_first(s->dedup, &s->n_dedup, sizeof(s->dedup[0]), old);

        utf8_copy_cut(s->dedup[s->n_dedup].key, STATE_KEY_MAX, key);
        s->dedup[s->n_dedup].seen_at = now;
        s->n_dedup++;
}

struct state_unit *state_unit_get(struct alertbot_state *s, const char *name, bool create,
                                  int64_t now)
{
        struct state_unit *u;
        size_t victim = SIZE_MAX;

        if (strlen(name) > STATE_UNIT_MAX)
                return NULL;
        for (size_t i = 0; i < s->n_units; i++)
                if (strcmp(s->units[i].name, name) == 0) {
                        s->units[i].last_used = now;
                        return &s->units[i];
                }
        if (!create)
                return NULL;

        if (s->n_units < STATE_MAX_UNITS) {
                u = &s->units[s->n_units++];
        } else {
                for (int pass = 0; pass < 2 && victim == SIZE_MAX; pass++)
                        for (size_t i = 0; i < s->n_units; i++) {
                                if (pass == 0 && s->units[i].breaker != BREAKER_CLOSED)
                                        continue;
                                if (victim == SIZE_MAX ||
                                    s->units[i].last_used < s->units[victim].last_used)
                                        victim = i;
                        }
                u = &s->units[victim];
        }
        memset(u, 0, sizeof(*u));
        state_set_string(u->name, STATE_UNIT_MAX, name);
        u->last_used = now;
        return u;
}

size_t state_budget_count(struct alertbot_state *s, int64_t now, int64_t window_seconds)
{
        size_t old = 0;

        while (old < s->n_budget && s->budget[old] <= now - window_seconds)
                old++;
        remove_first(s->budget, &s->n_budget, sizeof(s->budget[0]), old);
        return s->n_budget;
}

void state_budget_add(struct alertbot_state *s, int64_t now)
{
        if (s->n_budget == STATE_MAX_BUDGET)
                remove_first(s->budget, &s->n_budget, sizeof(s->budget[0]), 1);
        s->budget[s->n_budget++] = now;
}

struct state_incident *state_incident_find(struct alertbot_state *s, const char *fingerprint,
                                           const char *starts_at)
{
        for (size_t i = s->n_incidents; i > 0; i--) {
                struct state_incident *inc = &s->incidents[i - 1];

                if (strcmp(inc->fingerprint, fingerprint) == 0 &&
                    strcmp(inc->starts_at, starts_at) == 0)
                        return inc;
        }
        return NULL;
}

struct state_incident *state_incident_add(struct alertbot_state *s, const char *fingerprint,
                                          const char *starts_at, const char *alertname, int64_t now)
{
        struct state_incident *inc;

        if (s->n_incidents == STATE_MAX_INCIDENTS) {
                size_t victim = 0;

                for (size_t i = 0; i < s->n_incidents; i++)
                        if (s->incidents[i].resolved) {
                                victim = i;
                                break;
                        }
                memmove(&s->incidents[victim], &s->incidents[victim + 1],
                        (s->n_incidents - victim - 1) * sizeof(s->incidents[0]));
                s->n_incidents--;
        }
        inc = &s->incidents[s->n_incidents++];
        memset(inc, 0, sizeof(*inc));
        utf8_copy_cut(inc->fingerprint, STATE_FINGERPRINT_MAX, fingerprint);
        utf8_copy_cut(inc->starts_at, STATE_TIMESTAMP_MAX, starts_at);
        utf8_copy_cut(inc->alertname, STATE_ALERTNAME_MAX, alertname);
        inc->opened_at = now;
        return inc;
}

struct state_action *state_incident_add_action(struct state_incident *inc, int64_t now,
                                               const char *decision, const char *action,
                                               const char *unit, const char *result)
{
        struct state_action *a;

        if (inc->n_actions == STATE_MAX_ACTIONS)
                remove_first(inc->actions, &inc->n_actions, sizeof(inc->actions[0]), 1);
        a = &inc->actions[inc->n_actions++];
        memset(a, 0, sizeof(*a));
        a->at = now;
        utf8_copy_cut(a->decision, STATE_WORD_MAX, decision);
        utf8_copy_cut(a->action, STATE_WORD_MAX, action);
        utf8_copy_cut(a->unit, STATE_UNIT_MAX, unit);
        utf8_copy_cut(a->result, STATE_WORD_MAX, result);
        return a;
}

const char *breaker_state_to_string(enum breaker_state b)
{
        switch (b) {
        case BREAKER_OPEN:
                return "open";
        case BREAKER_HALF_OPEN:
                return "half_open";
        default:
                return "closed";
        }
}

static enum breaker_state breaker_state_from_string(const char *s)
{
        if (strcmp(s, "open") == 0)
                return BREAKER_OPEN;
        if (strcmp(s, "half_open") == 0)
                return BREAKER_HALF_OPEN;
        return BREAKER_CLOSED;
}

/* ---- JSON encoding (json_object_new_* return NULL only on OOM, which the
 * adders tolerate; the final serialisation then fails as a whole). */

static void add_str(struct json_object *o, const char *key, const char *v)
{
        json_object_object_add(o, key, json_object_new_string(v));
}

static void add_int(struct json_object *o, const char *key, int64_t v)
{
        json_object_object_add(o, key, json_object_new_int64(v));
}

struct json_object *state_action_json(const struct state_action *a)
{
        struct json_object *o = json_object_new_object();

        if (!o)
                return NULL;
        add_int(o, "at", a->at);
        add_str(o, "decision", a->decision);
        add_str(o, "action", a->action);
        add_str(o, "unit", a->unit);
        add_str(o, "result", a->result);
        add_int(o, "duration_ms", a->duration_ms);
        return o;
}

static struct json_object *incident_json(const struct state_incident *inc)
{
        struct json_object *o = json_object_new_object(), *actions = json_object_new_array();

        if (!o || !actions) {
                json_object_put(o);
                json_object_put(actions);
                return NULL;
        }
        add_str(o, "alertname", inc->alertname);
        add_str(o, "fingerprint", inc->fingerprint);
        add_str(o, "starts_at", inc->starts_at);
        add_str(o, "unit", inc->unit);
        add_str(o, "status", inc->resolved ? "resolved" : "firing");
        add_int(o, "opened_at", inc->opened_at);
        if (inc->resolved)
                add_int(o, "resolved_at", inc->resolved_at);
        for (size_t i = 0; i < inc->n_actions; i++)
                json_object_array_add(actions, state_action_json(&inc->actions[i]));
        json_object_object_add(o, "actions", actions);
        return o;
}

static struct json_object *unit_json(const struct state_unit *u)
{
        struct json_object *o = json_object_new_object(), *failures = json_object_new_array();

        if (!o || !failures) {
                json_object_put(o);
                json_object_put(failures);
                return NULL;
        }
        add_str(o, "name", u->name);
        add_int(o, "last_restart_at", u->last_restart_at);
        add_int(o, "last_used", u->last_used);
        add_str(o, "breaker", breaker_state_to_string(u->breaker));
        add_int(o, "opened_at", u->opened_at);
        json_object_object_add(o, "probe_in_flight", json_object_new_boolean(u->probe_in_flight));
        json_object_object_add(o, "awaiting_resolve", json_object_new_boolean(u->awaiting_resolve));
        add_int(o, "awaiting_since", u->awaiting_since);
        for (size_t i = 0; i < u->n_failures; i++)
                json_object_array_add(failures, json_object_new_int64(u->failures[i]));
        json_object_object_add(o, "failures", failures);
        return o;
}

static struct json_object *state_json(const struct alertbot_state *s)
{
        _cleanup_(json_object_putp) struct json_object *o = json_object_new_object();
        struct json_object *dedup = json_object_new_array(), *units = json_object_new_array(),
                           *budget = json_object_new_array(), *incidents = json_object_new_array();

        if (!o || !dedup || !units || !budget || !incidents) {
                json_object_put(dedup);
                json_object_put(units);
                json_object_put(budget);
                json_object_put(incidents);
                return NULL;
        }
        add_int(o, "version", STATE_VERSION);
        for (size_t i = 0; i < s->n_dedup; i++) {
                struct json_object *pair = json_object_new_array();

                if (pair) {
                        json_object_array_add(pair, json_object_new_string(s->dedup[i].key));
                        json_object_array_add(pair, json_object_new_int64(s->dedup[i].seen_at));
                }
                json_object_array_add(dedup, pair);
        }
        for (size_t i = 0; i < s->n_units; i++)
                json_object_array_add(units, unit_json(&s->units[i]));
        for (size_t i = 0; i < s->n_budget; i++)
                json_object_array_add(budget, json_object_new_int64(s->budget[i]));
        for (size_t i = 0; i < s->n_incidents; i++)
                json_object_array_add(incidents, incident_json(&s->incidents[i]));
        json_object_object_add(o, "dedup", dedup);
        json_object_object_add(o, "units", units);
        json_object_object_add(o, "budget", budget);
        json_object_object_add(o, "incidents", incidents);
        return TAKE_PTR(o);
}

struct json_object *state_incidents_json(const struct alertbot_state *s, size_t limit)
{
        struct json_object *o = json_object_new_object(), *list = json_object_new_array();

        if (!o || !list) {
                json_object_put(o);
                json_object_put(list);
                return NULL;
        }
        for (size_t i = s->n_incidents, n = 0; i > 0 && n < limit; i--, n++)
                json_object_array_add(list, incident_json(&s->incidents[i - 1]));
        json_object_object_add(o, "incidents", list);
        return o;
}

/* ---- files */

static int write_all(int fd, const char *p, size_t len)
{
        while (len > 0) {
                ssize_t n = write(fd, p, len);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

int state_save(const struct alertbot_state *s, const char *directory)
{
        _cleanup_(json_object_putp) struct json_object *o = NULL;
        _cleanup_free_ char *text = NULL, *path = NULL, *tmp = NULL;
        _cleanup_close_ int fd = -1, dfd = -1;
        size_t len;
        int r;

        assert(s);
        assert(directory);

        o = state_json(s);
        if (!o)
                return -ENOMEM;
        text = json_to_string_dup(o, &len);
        if (!text)
                return -ENOMEM;
        if (asprintf(&path, "%s/%s", directory, STATE_FILE_NAME) < 0 ||
            asprintf(&tmp, "%s/.%s.tmp", directory, STATE_FILE_NAME) < 0)
                return -ENOMEM;

        dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return negative_errno();
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        r = write_all(fd, text, len);
        if (r >= 0 && fsync(fd) < 0)
                r = negative_errno();
        if (r >= 0 && close(TAKE_FD(fd)) < 0)
                r = negative_errno();
        if (r >= 0 && rename(tmp, path) < 0)
                r = negative_errno();
        if (r < 0) {
                (void)unlink(tmp);
                return r;
        }
        if (fsync(dfd) < 0)
                return negative_errno();
        return 0;
}

static int64_t get_int(struct json_object *o, const char *key)
{
        struct json_object *v;

        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return 0;
        return json_object_get_int64(v);
}

static bool get_bool(struct json_object *o, const char *key)
{
        struct json_object *v;

        return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_boolean) &&
               json_object_get_boolean(v);
}

/* A string field that fits max bytes, else NULL. */
static const char *get_str(struct json_object *o, const char *key, size_t max)
{
        struct json_object *v;

        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string) ||
            (size_t)json_object_get_string_len(v) > max)
                return NULL;
        return json_object_get_string(v);
}

static struct json_object *get_array(struct json_object *o, const char *key)
{
        struct json_object *v;

        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_array))
                return NULL;
        return v;
}

/* The last max elements of an array are the ones kept: index to start at. */
static size_t first_kept(struct json_object *a, size_t max)
{
        size_t n = a ? json_object_array_length(a) : 0;

        return n > max ? n - max : 0;
}

static void load_units(struct alertbot_state *s, struct json_object *units)
{
        for (size_t i = first_kept(units, STATE_MAX_UNITS);
             units && i < json_object_array_length(units); i++) {
                struct json_object *o = json_object_array_get_idx(units, i), *failures;
                const char *name = get_str(o, "name", STATE_UNIT_MAX), *breaker;
                struct state_unit *u;

                if (!name || !*name)
                        continue;
                u = &s->units[s->n_units++];
                state_set_string(u->name, STATE_UNIT_MAX, name);
                u->last_restart_at = get_int(o, "last_restart_at");
                u->last_used = get_int(o, "last_used");
                breaker = get_str(o, "breaker", 32);
                u->breaker = breaker_state_from_string(breaker ? breaker : "");
                u->opened_at = get_int(o, "opened_at");
                /* A trial restart that was running when we stopped never
                 * reported back: count it as failed, re-opening the
                 * breaker, rather than leave the breaker stuck half-open. */
                if (get_bool(o, "probe_in_flight") && u->breaker == BREAKER_HALF_OPEN) {
                        u->breaker = BREAKER_OPEN;
                        u->opened_at = u->last_restart_at;
                }
                u->awaiting_resolve = get_bool(o, "awaiting_resolve");
                u->awaiting_since = get_int(o, "awaiting_since");
                failures = get_array(o, "failures");
                for (size_t j = first_kept(failures, STATE_MAX_FAILURES);
                     failures && j < json_object_array_length(failures); j++)
                        u->failures[u->n_failures++] =
                                json_object_get_int64(json_object_array_get_idx(failures, j));
        }
}

static void load_incidents(struct alertbot_state *s, struct json_object *incidents)
{
        for (size_t i = first_kept(incidents, STATE_MAX_INCIDENTS);
             incidents && i < json_object_array_length(incidents); i++) {
                struct json_object *o = json_object_array_get_idx(incidents, i), *actions;
                const char *fp = get_str(o, "fingerprint", STATE_FINGERPRINT_MAX);
                const char *starts = get_str(o, "starts_at", STATE_TIMESTAMP_MAX);
                const char *name = get_str(o, "alertname", STATE_ALERTNAME_MAX);
                const char *unit = get_str(o, "unit", STATE_UNIT_MAX), *status;
                struct state_incident *inc;

                if (!fp || !starts || !name)
                        continue;
                inc = state_incident_add(s, fp, starts, name, get_int(o, "opened_at"));
                state_set_string(inc->unit, STATE_UNIT_MAX, unit ? unit : "");
                status = get_str(o, "status", 16);
                inc->resolved = status && strcmp(status, "resolved") == 0;
                inc->resolved_at = get_int(o, "resolved_at");
                actions = get_array(o, "actions");
                for (size_t j = first_kept(actions, STATE_MAX_ACTIONS);
                     actions && j < json_object_array_length(actions); j++) {
                        struct json_object *ao = json_object_array_get_idx(actions, j);
                        const char *decision = get_str(ao, "decision", STATE_WORD_MAX);
                        const char *action = get_str(ao, "action", STATE_WORD_MAX);
                        const char *aunit = get_str(ao, "unit", STATE_UNIT_MAX);
                        const char *result = get_str(ao, "result", STATE_WORD_MAX);
                        struct state_action *a;

                        if (!decision || !result)
                                continue;
                        if (strcmp(result, "started") == 0)
                                result = "interrupted";
                        a = state_incident_add_action(inc, get_int(ao, "at"), decision,
                                                      action ? action : "", aunit ? aunit : "",
                                                      result);
                        a->duration_ms = get_int(ao, "duration_ms");
                }
        }
}

int state_load(struct alertbot_state *s, const char *directory)
{
        _cleanup_(json_object_putp) struct json_object *o = NULL;
        _cleanup_free_ char *path = NULL, *text = NULL;
        struct json_object *dedup, *budget;
        const char *code;
        size_t len = 0;
        int r;

        memset(s, 0, sizeof(*s));
        if (asprintf(&path, "%s/%s", directory, STATE_FILE_NAME) < 0)
                return -ENOMEM;
        r = file_read_all(AT_FDCWD, path, O_NOFOLLOW, 0, STATE_FILE_MAX, &text, &len);
        if (r == -EISDIR || r == -EINVAL)
                return -EBADMSG; /* not a regular file */
        if (r < 0)
                return r;
        if (json_parse_object(text, len, 8, &o, &code) < 0 ||
            get_int(o, "version") != STATE_VERSION)
                return -EBADMSG;

        dedup = get_array(o, "dedup");
        for (size_t i = first_kept(dedup, STATE_MAX_DEDUP);
             dedup && i < json_object_array_length(dedup); i++) {
                struct json_object *pair = json_object_array_get_idx(dedup, i), *k, *t;

                if (!json_object_is_type(pair, json_type_array) ||
                    json_object_array_length(pair) != 2)
                        continue;
                k = json_object_array_get_idx(pair, 0);
                t = json_object_array_get_idx(pair, 1);
                if (!json_object_is_type(k, json_type_string) ||
                    (size_t)json_object_get_string_len(k) > STATE_KEY_MAX)
                        continue;
                state_set_string(s->dedup[s->n_dedup].key, STATE_KEY_MAX,
                                 json_object_get_string(k));
                s->dedup[s->n_dedup].seen_at = json_object_get_int64(t);
                s->n_dedup++;
        }
        load_units(s, get_array(o, "units"));
        budget = get_array(o, "budget");
        for (size_t i = first_kept(budget, STATE_MAX_BUDGET);
             budget && i < json_object_array_length(budget); i++)
                s->budget[s->n_budget++] =
                        json_object_get_int64(json_object_array_get_idx(budget, i));
        load_incidents(s, get_array(o, "incidents"));
        return 0;
}
