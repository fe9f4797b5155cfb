/* vigil-alertbotd's remediation policy: which alerts lead to which action
 * on which unit, and the guards around acting: the allowlist, a per-unit
 * cooldown, a global budget of restarts per hour, a per-unit circuit
 * breaker (closed → open after breaker_failures failed remediations within
 * breaker_window_seconds → half-open after breaker_half_open_after_seconds,
 * when one trial restart is allowed → closed on its success, open again on
 * its failure), dry-run, deduplication of redelivered notifications and
 * the closing of incidents by resolved notifications.
 *
 * Pure decision logic: no I/O, no clock (the caller passes now, in
 * seconds), no logging. The policy file is the only thing read, by
 * policy_load_file().
 *
 * Policy file (INI):
 *   [policy]
 *   allowlist = vigil-authd.service vigil-paymentd.service   ; exact names
 *   cooldown_seconds = 600
 *   budget_per_hour = 6
 *   breaker_failures = 3
 *   breaker_window_seconds = 3600
 *   breaker_half_open_after_seconds = 1800
 *   verify_timeout_seconds = 60
 *   [rule.VigilDaemonDown]          ; one section per rule, in file order
 *   alertname = VigilDaemonDown      ; default: the section's suffix
 *   match = severity=page            ; optional extra label=value pairs
 *   unit = vigil-authd.service       ; a fixed unit (forced), or:
 *   unit_label = unit                ; the unit from this alert label,
 *   unit_format = vigil-{}d.service  ; optionally through this template
 *   action = restart
 *   [unit.vigil-authd.service]
 *   ready_url = http://127.0.0.1:8001/ready
 *
 * Thread-safety: a loaded policy is immutable; decisions mutate the state
 * passed in, which the caller locks. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alertbotd-state.h"
#include "macro.h"

#define POLICY_MAX_FILE_SIZE (256U * 1024U)
#define POLICY_MAX_RULES     64
#define POLICY_MAX_MATCHES   8 /* label=value pairs per rule */
#define POLICY_MAX_ALLOWLIST 64
#define POLICY_MAX_UNITS     64 /* [unit.*] sections */
#define POLICY_MAX_VALUE     1024
#define POLICY_MAX_LINE      190  /* characters, newline excluded */
#define POLICY_BUDGET_WINDOW 3600 /* seconds: the budget is per hour */

struct webhook_alert;
struct conf_diagnostics;

enum policy_action {
        POLICY_ACTION_RESTART,
};

struct policy_match {
        char *label;
        char *value;
};

struct policy_rule {
        char *name; /* the section suffix */
        char *alertname;
        char *unit; /* fixed unit, or NULL */
        char *unit_label;
        char *unit_format; /* "{}" is replaced by the label value; NULL: as is */
        enum policy_action action;
        struct policy_match matches[POLICY_MAX_MATCHES];
        size_t n_matches;
};

struct policy_unit {
        char *name;
        char *ready_url; /* NULL: no readiness endpoint */
};

struct policy {
        /* The host this bot heals ([policy] host): an alert whose label
         * host names another one is refused (refused_host). NULL: any. */
        char *host;
        char *allowlist[POLICY_MAX_ALLOWLIST];
        size_t n_allowlist;
        int64_t cooldown_seconds;
        int64_t budget_per_hour;
        int64_t breaker_failures;
        int64_t breaker_window_seconds;
        int64_t breaker_half_open_after_seconds;
        int64_t verify_timeout_seconds;
        struct policy_rule rules[POLICY_MAX_RULES];
        size_t n_rules;
        struct policy_unit units[POLICY_MAX_UNITS];
        size_t n_units;
};

/* Every decision kind is one audit record with its own MESSAGE_ID. */
enum decision_kind {
        DECISION_ACTED,  /* restarted, and the unit came back */
        DECISION_FAILED, /* restarted, and it did not heal */
        DECISION_SKIPPED_COOLDOWN,
        DECISION_SKIPPED_BUDGET,
        DECISION_SKIPPED_BREAKER,
        DECISION_DRY_RUN,
        DECISION_REFUSED_ALLOWLIST,
        DECISION_DUPLICATE,
        DECISION_RESOLVED,
        DECISION_UNMATCHED,    /* no rule for this alert */
        DECISION_REFUSED_HOST, /* about another host than [policy] host */
        _DECISION_MAX,
};

/* "acted", "failed", "skipped_cooldown", … */
const char *decision_kind_to_string(enum decision_kind k);
/* The journald MESSAGE_ID of the kind: 32 lower-case hex digits. */
const char *decision_kind_message_id(enum decision_kind k);
const char *policy_action_to_string(enum policy_action a);

struct decision {
        enum decision_kind kind;        /* DECISION_ACTED when a restart must run */
        bool act;                       /* run the restart (kind is ACTED, outcome pending) */
        bool escalate;                  /* tell the escalation webhook */
        bool probe;                     /* the half-open breaker's trial restart */
        const struct policy_rule *rule; /* NULL for duplicates and unmatched alerts */
        char unit[STATE_UNIT_MAX + 1];  /* "" when none could be named */
        const char *reason;             /* human text, static */
};

/* Defaults for every setting and no rules (nothing is allowed). */
int policy_new(struct policy **ret);
void policy_free(struct policy *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct policy *, policy_free)

/* Load a policy file. Returns 0 and *ret, or -ENOENT, -EFBIG (larger than
 * POLICY_MAX_FILE_SIZE), -EINVAL after recording every problem in diag
 * (each with the file, its line, section and key; diag may be NULL),
 * -ENOMEM or another errno of reading. Unknown sections and keys,
 * out-of-range numbers, rules without a unit or unit_label, lines longer
 * than POLICY_MAX_LINE and more than the limits are errors. */
int policy_load_file(const char *path, struct policy **ret, struct conf_diagnostics *diag);
/* The same from memory (NUL-terminated); name appears in errors. */
int policy_load_string(const char *name, const char *text, struct policy **ret,
                       struct conf_diagnostics *diag);

/* Whether unit is a well-formed unit name (letters, digits, ":-_.\@",
 * at most STATE_UNIT_MAX bytes, ending in ".service") on the allowlist,
 * letter for letter: the allowlist holds exact names, never globs, so that
 * it is the same list the polkit rule (units/polkit) lets systemd restart. */
bool policy_unit_allowed(const struct policy *p, const char *unit);
/* The readiness URL of unit, or NULL. */
const char *policy_unit_ready_url(const struct policy *p, const char *unit);
/* The first rule matching the alert's alertname and match labels, or NULL. */
const struct policy_rule *policy_match(const struct policy *p, const struct webhook_alert *a);

/* Decide what to do with one alert at time now and record the decision in
 * s: dedup key, incident (opened for a firing alert, closed by a resolved
 * one) with the decision as an action, cooldown, budget and breaker trial
 * when acting. A firing alert for a unit that was restarted successfully
 * and has not resolved since (and that started after that restart, within
 * the breaker window) counts that restart as a failure. starts_unix is the
 * alert's startsAt in seconds (0 when unknown). Fills *ret. */
void policy_decide(const struct policy *p, struct alertbot_state *s, const struct webhook_alert *a,
                   int64_t starts_unix, bool dry_run, int64_t now, struct decision *ret);

/* Record the outcome of a restart of unit that policy_decide() asked for.
 * success: the unit came back (a half-open breaker closes); else a failure
 * counts toward the breaker (a half-open breaker opens again). Returns
 * true when this opened the breaker. */
bool policy_record_outcome(const struct policy *p, struct alertbot_state *s, const char *unit,
                           bool success, int64_t now);

/* The breaker of unit at time now (open turns half-open after
 * breaker_half_open_after_seconds), updating s. */
enum breaker_state policy_breaker_state(const struct policy *p, struct alertbot_state *s,
                                        const char *unit, int64_t now);

/* Parse an RFC 3339 time ("2024-05-01T12:00:00.5Z", "…+02:00") to Unix
 * seconds. Returns 0 or -EINVAL. */
int policy_parse_time(const char *s, int64_t *ret);
