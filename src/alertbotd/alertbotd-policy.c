/* The remediation policy: its file, parsed and checked, and what it says
 * about a unit. What it decides about an alert is in alertbotd-decision.c. */
#include "alertbotd-policy.h"

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "alertbotd-webhook.h"
#include "conf.h"
#include "file.h"

static const struct {
        const char *name;
        const char *message_id;
} decision_kinds[_DECISION_MAX] = {
        [DECISION_ACTED] = {"acted", "8fa5e36ef7934bd7ad1a5b385a4e81c8"},
        [DECISION_FAILED] = {"failed", "921e60d90ea547238d9985a44b17dd0e"},
        [DECISION_SKIPPED_COOLDOWN] = {"skipped_cooldown", "57808b0596314f2ab48ee04197ccd8f8"},
        [DECISION_SKIPPED_BUDGET] = {"skipped_budget", "2137a6ab35e043b2b7f4a3707d7d8d7c"},
        [DECISION_SKIPPED_BREAKER] = {"skipped_breaker", "f311ce8ab2da4f9b985235429606b923"},
        [DECISION_DRY_RUN] = {"dry_run", "d02da98cdff5496d94379b01165de0fe"},
        [DECISION_REFUSED_ALLOWLIST] = {"refused_allowlist", "ee06a8d952b040f38852d559d7f94fa7"},
        [DECISION_DUPLICATE] = {"duplicate", "1554b0b6c8fa4baf9cca372d712731bc"},
        [DECISION_RESOLVED] = {"resolved", "2db92e48889241bbbaa31f40d68d21b1"},
        [DECISION_UNMATCHED] = {"unmatched", "fd07560df8274713a952f16a26f6d03c"},
        [DECISION_REFUSED_HOST] = {"refused_host", "5b0f3d7e8a2c4e61b9d4a7c2e0f18b36"},
};

const char *decision_kind_to_string(enum decision_kind k)
{
        return k < _DECISION_MAX ? decision_kinds[k].name : "unknown";
}

const char *decision_kind_message_id(enum decision_kind k)
{
        return k < _DECISION_MAX ? decision_kinds[k].message_id : NULL;
}

const char *policy_action_to_string(enum policy_action a)
{
        return a == POLICY_ACTION_RESTART ? "restart" : "unknown";
}

static void rule_done(struct policy_rule *r)
{
        free(r->name);
        free(r->alertname);
        free(r->unit);
        free(r->unit_label);
        free(r->unit_format);
        for (size_t i = 0; i < r->n_matches; i++) {
                free(r->matches[i].label);
                free(r->matches[i].value);
        }
}

void policy_free(struct policy *p)
{
        if (!p)
                return;
        free(p->host);
        for (size_t i = 0; i < p->n_allowlist; i++)
                free(p->allowlist[i]);
        for (size_t i = 0; i < p->n_rules; i++)
                rule_done(&p->rules[i]);
        for (size_t i = 0; i < p->n_units; i++) {
                free(p->units[i].name);
                free(p->units[i].ready_url);
        }
        free(p);
}

int policy_new(struct policy **ret)
{
        struct policy *p = calloc(1, sizeof(*p));

        if (!p)
                return -ENOMEM;
        p->cooldown_seconds = 600;
        p->budget_per_hour = 6;
        p->breaker_failures = 3;
        p->breaker_window_seconds = 3600;
        p->breaker_half_open_after_seconds = 1800;
        p->verify_timeout_seconds = 60;
        *ret = p;
        return 0;
}

/* ---- loading */

struct loader {
        struct policy *policy;
        struct conf_diagnostics *diag;
        const char *file;
        unsigned line;                         /* of the assignment being handled */
        unsigned rule_lines[POLICY_MAX_RULES]; /* first line of each rule */
        bool oom;
};

/* Record a problem of the current line in [section] key. */
static void fail(struct loader *l, const char *section, const char *key, const char *format, ...)
        _printf_(4, 5);

static void fail(struct loader *l, const char *section, const char *key, const char *format, ...)
{
        _cleanup_free_ char *message = NULL;
        va_list ap;
        int r;

        va_start(ap, format);
        r = vasprintf(&message, format, ap);
        va_end(ap);
        if (r < 0) {
                message = NULL;
                l->oom = true;
                return;
        }
        if (conf_diagnostics_add(l->diag, l->file, l->line, section, key, "%s", message) < 0)
                l->oom = true;
}

static bool valid_unit_name(const char *unit)
{
        size_t len = strlen(unit);
        static const char suffix[] = ".service";

        if (len <= sizeof(suffix) - 1 || len > STATE_UNIT_MAX)
                return false;
        if (strspn(unit, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_.\\@") !=
            len)
                return false;
        return strcmp(unit + len - (sizeof(suffix) - 1), suffix) == 0;
}

static int parse_int(const char *value, int64_t min, int64_t max, int64_t *ret)
{
        char *end;
        long long v;

        errno = 0;
        v = strtoll(value, &end, 10);
        if (errno != 0 || end == value || *end || v < min || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

static void set_policy_key(struct loader *l, const char *name, const char *value)
{
        static const struct {
                const char *key;
                size_t offset;
                int64_t min, max;
        } ints[] = {
                {"cooldown_seconds", offsetof(struct policy, cooldown_seconds), 0, 86400 * 7},
                {"budget_per_hour", offsetof(struct policy, budget_per_hour), 0, STATE_MAX_BUDGET},
                {"breaker_failures", offsetof(struct policy, breaker_failures), 1,
                 STATE_MAX_FAILURES},
                {"breaker_window_seconds", offsetof(struct policy, breaker_window_seconds), 1,
                 86400 * 7},
                {"breaker_half_open_after_seconds",
                 offsetof(struct policy, breaker_half_open_after_seconds), 1, 86400 * 7},
                {"verify_timeout_seconds", offsetof(struct policy, verify_timeout_seconds), 1,
                 3600},
        };
        struct policy *p = l->policy;

        if (strcmp(name, "host") == 0) {
                if (!*value || strlen(value) > STATE_UNIT_MAX || strpbrk(value, " \t,\"\\"))
                        return fail(l, "policy", name, "expected a host name");
                free(p->host);
                p->host = strdup(value);
                if (!p->host)
                        l->oom = true;
                return;
        }
        if (strcmp(name, "allowlist") == 0) {
                _cleanup_free_ char *copy = strdup(value);
                char *save = NULL;

                if (!copy) {
                        l->oom = true;
                        return;
                }
                for (char *w = strtok_r(copy, " \t,", &save); w;
                     w = strtok_r(NULL, " \t,", &save)) {
                        if (p->n_allowlist == POLICY_MAX_ALLOWLIST)
                                return fail(l, "policy", name, "more than %d entries",
                                            POLICY_MAX_ALLOWLIST);
                        if (strlen(w) > STATE_UNIT_MAX) {
                                fail(l, "policy", name, "\"%s\" is too long", w);
                                continue;
                        }
                        /* Exact names, as the polkit rule lists them: a glob
                         * would also match units systemd must refuse. */
                        if (!valid_unit_name(w)) {
                                fail(l, "policy", name,
                                     "\"%s\" is not a service unit name (exact names only, no "
                                     "globs)",
                                     w);
                                continue;
                        }
                        p->allowlist[p->n_allowlist] = strdup(w);
                        if (!p->allowlist[p->n_allowlist]) {
                                l->oom = true;
                                return;
                        }
                        p->n_allowlist++;
                }
                return;
        }
        for (size_t i = 0; i < ELEMENTSOF(ints); i++) {
                if (strcmp(name, ints[i].key) != 0)
                        continue;
                if (parse_int(value, ints[i].min, ints[i].max,
                              (int64_t *)((char *)p + ints[i].offset)) < 0)
                        fail(l, "policy", name, "expected an integer in %" PRId64 "..%" PRId64,
                             ints[i].min, ints[i].max);
                return;
        }
        fail(l, "policy", name, "unknown key");
}

static void set_string(struct loader *l, char **field, const char *section, const char *name,
                       const char *value)
{
        if (strlen(value) > POLICY_MAX_VALUE)
                return fail(l, section, name, "longer than %d bytes", POLICY_MAX_VALUE);
        free(*field);
        *field = strdup(value);
        if (!*field)
                l->oom = true;
}

static struct policy_rule *find_or_add_rule(struct loader *l, const char *section,
                                            const char *rule_name)
{
        struct policy *p = l->policy;
        struct policy_rule *r;

        for (size_t i = 0; i < p->n_rules; i++)
                if (strcmp(p->rules[i].name, rule_name) == 0)
                        return &p->rules[i];
        if (!*rule_name) {
                fail(l, section, NULL, "a rule needs a name");
                return NULL;
        }
        if (p->n_rules == POLICY_MAX_RULES) {
                fail(l, section, NULL, "more than %d rules", POLICY_MAX_RULES);
                return NULL;
        }
        r = &p->rules[p->n_rules];
        r->name = strdup(rule_name);
        if (!r->name) {
                l->oom = true;
                return NULL;
        }
        l->rule_lines[p->n_rules] = l->line;
        p->n_rules++;
        return r;
}

static void set_rule_key(struct loader *l, const char *section, const char *rule_name,
                         const char *name, const char *value)
{
        struct policy_rule *r = find_or_add_rule(l, section, rule_name);

        if (!r)
                return;
        if (strcmp(name, "alertname") == 0)
                return set_string(l, &r->alertname, section, name, value);
        if (strcmp(name, "unit") == 0) {
                if (!valid_unit_name(value))
                        return fail(l, section, name, "\"%s\" is not a service unit name", value);
                return set_string(l, &r->unit, section, name, value);
        }
        if (strcmp(name, "unit_label") == 0)
                return set_string(l, &r->unit_label, section, name, value);
        if (strcmp(name, "unit_format") == 0) {
                const char *hole = strstr(value, "{}");

                if (!hole || strstr(hole + 2, "{}"))
                        return fail(l, section, name, "needs exactly one \"{}\"");
                return set_string(l, &r->unit_format, section, name, value);
        }
        if (strcmp(name, "action") == 0) {
                if (strcmp(value, "restart") != 0)
                        return fail(l, section, name, "only \"restart\" is supported");
                r->action = POLICY_ACTION_RESTART;
                return;
        }
        if (strcmp(name, "match") == 0) {
                _cleanup_free_ char *copy = strdup(value);
                char *save = NULL;

                if (!copy) {
                        l->oom = true;
                        return;
                }
                for (char *w = strtok_r(copy, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
                        char *eq = strchr(w, '=');

                        if (!eq || eq == w)
                                return fail(l, section, name, "expected label=value pairs");
                        if (r->n_matches == POLICY_MAX_MATCHES)
                                return fail(l, section, name, "more than %d pairs",
                                            POLICY_MAX_MATCHES);
                        *eq = '\0';
                        r->matches[r->n_matches].label = strdup(w);
                        r->matches[r->n_matches].value = strdup(eq + 1);
                        r->n_matches++;
                        if (!r->matches[r->n_matches - 1].label ||
                            !r->matches[r->n_matches - 1].value) {
                                l->oom = true;
                                return;
                        }
                }
                return;
        }
        fail(l, section, name, "unknown key");
}

static void set_unit_key(struct loader *l, const char *section, const char *unit, const char *name,
                         const char *value)
{
        struct policy *p = l->policy;
        struct policy_unit *u = NULL;

        if (!valid_unit_name(unit))
                return fail(l, section, NULL, "\"%s\" is not a service unit name", unit);
        for (size_t i = 0; i < p->n_units; i++)
                if (strcmp(p->units[i].name, unit) == 0)
                        u = &p->units[i];
        if (!u) {
                if (p->n_units == POLICY_MAX_UNITS)
                        return fail(l, section, NULL, "more than %d [unit.*] sections",
                                    POLICY_MAX_UNITS);
                u = &p->units[p->n_units];
                u->name = strdup(unit);
                if (!u->name) {
                        l->oom = true;
                        return;
                }
                p->n_units++;
        }
        if (strcmp(name, "ready_url") == 0) {
                if (*value && strncmp(value, "http://", 7) != 0 &&
                    strncmp(value, "https://", 8) != 0)
                        return fail(l, section, name, "expected an http:// URL");
                if (!*value) {
                        free(u->ready_url);
                        u->ready_url = NULL;
                        return;
                }
                return set_string(l, &u->ready_url, section, name, value);
        }
        fail(l, section, name, "unknown key");
}

static void handle_assignment(void *userdata, const char *file, unsigned line, const char *section,
                              const char *name, const char *value)
{
        struct loader *l = userdata;

        (void)file;
        l->line = line;
        if (strcmp(section, "policy") == 0)
                return set_policy_key(l, name, value);
        if (strncmp(section, "rule.", 5) == 0)
                return set_rule_key(l, section, section + 5, name, value);
        if (strncmp(section, "unit.", 5) == 0)
                return set_unit_key(l, section, section + 5, name, value);
        if (!*section)
                return fail(l, NULL, name, "assignment outside of any [section]");
        fail(l, section, name, "unknown section");
}

/* What the rules lack once the whole file is read, at their first line. */
static void check_rules(struct loader *l)
{
        struct policy *p = l->policy;

        for (size_t i = 0; i < p->n_rules; i++) {
                struct policy_rule *r = &p->rules[i];
                _cleanup_free_ char *section = NULL;

                if (asprintf(&section, "rule.%s", r->name) < 0) {
                        section = NULL;
                        l->oom = true;
                        return;
                }
                l->line = l->rule_lines[i];
                if (!r->unit == !r->unit_label)
                        fail(l, section, NULL, "needs exactly one of unit and unit_label");
                if (r->unit_format && !r->unit_label)
                        fail(l, section, NULL, "unit_format needs unit_label");
                if (!r->alertname) {
                        r->alertname = strdup(r->name);
                        if (!r->alertname)
                                l->oom = true;
                }
        }
}

static int load_buffer(const char *name, const char *text, size_t size, struct policy **ret,
                       struct conf_diagnostics *diag)
{
        _cleanup_(policy_freep) struct policy *p = NULL;
        struct conf_diagnostics own_diag = {0};
        struct loader l = {.file = name, .diag = diag ? diag : &own_diag};
        size_t n_found_before = l.diag->n_found;
        int r;

        r = policy_new(&p);
        if (r < 0)
                return r;
        l.policy = p;

        r = conf_parse_ini(name, text, size, POLICY_MAX_LINE, NULL, handle_assignment, &l, l.diag);
        if (r >= 0 && !l.oom)
                check_rules(&l);
        conf_diagnostics_done(&own_diag);
        if (r < 0 || l.oom)
                return -ENOMEM;
        if (l.diag->n_found > n_found_before)
                return -EINVAL;
        *ret = TAKE_PTR(p);
        return 0;
}

int policy_load_string(const char *name, const char *text, struct policy **ret,
                       struct conf_diagnostics *diag)
{
        assert(text);
        return load_buffer(name, text, strlen(text), ret, diag);
}

int policy_load_file(const char *path, struct policy **ret, struct conf_diagnostics *diag)
{
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        int r;

        r = file_read_all(AT_FDCWD, path, 0, 0, POLICY_MAX_FILE_SIZE, &text, &len);
        if (r == -EISDIR)
                return -EINVAL; /* as any other thing that is not a file */
        if (r < 0)
                return r;
        return load_buffer(path, text, len, ret, diag);
}
/* ---- what the policy says about a unit */

bool policy_unit_allowed(const struct policy *p, const char *unit)
{
        if (!valid_unit_name(unit))
                return false;
        for (size_t i = 0; i < p->n_allowlist; i++)
                if (strcmp(p->allowlist[i], unit) == 0)
                        return true;
        return false;
}

const char *policy_unit_ready_url(const struct policy *p, const char *unit)
{
        for (size_t i = 0; i < p->n_units; i++)
                if (strcmp(p->units[i].name, unit) == 0)
                        return p->units[i].ready_url;
        return NULL;
}

int policy_parse_time(const char *s, int64_t *ret)
{
        struct tm tm = {};
        int64_t offset = 0, t;
        const char *p;
        char *end;

        end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!end)
                return -EINVAL;
        p = end;
        if (*p == '.') {
                p++;
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                while (*p >= '0' && *p <= '9')
                        p++;
        }
        if (*p == 'Z' || *p == 'z') {
                p++;
        } else if (*p == '+' || *p == '-') {
                int hh, mm, n = 0;

                if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &n) != 2 || n != 5 || hh > 23 || mm > 59)
                        return -EINVAL;
                offset = (int64_t)(hh * 3600 + mm * 60) * (*p == '+' ? 1 : -1);
                p += 1 + n;
        } else {
                return -EINVAL;
        }
        if (*p)
                return -EINVAL;
        t = (int64_t)timegm(&tm);
        if (t == -1)
                return -EINVAL;
        *ret = t - offset;
        return 0;
}
