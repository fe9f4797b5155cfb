/* What the policy decides about an alert: the rule that matches it, the
 * unit's circuit breaker and restart budget, and the decision (see
 * alertbotd-policy.h). Loading the policy is in alertbotd-policy.c. */
#include "alertbotd-policy.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "alertbotd-webhook.h"

const struct policy_rule *policy_match(const struct policy *p, const struct webhook_alert *a)
{
        const char *alertname = webhook_alert_label(a, "alertname");

        if (!alertname)
                return NULL;
        for (size_t i = 0; i < p->n_rules; i++) {
                const struct policy_rule *r = &p->rules[i];
                bool ok = strcmp(r->alertname, alertname) == 0;

                for (size_t j = 0; ok && j < r->n_matches; j++) {
                        const char *v = webhook_alert_label(a, r->matches[j].label);

                        ok = v && strcmp(v, r->matches[j].value) == 0;
                }
                if (ok)
                        return r;
        }
        return NULL;
}

/* The unit a rule names for an alert into unit (STATE_UNIT_MAX + 1 bytes),
 * "" when the label is missing or the result too long. */
static void rule_unit(const struct policy_rule *r, const struct webhook_alert *a, char *unit)
{
        const char *v, *hole;

        unit[0] = '\0';
        if (r->unit) {
                state_set_string(unit, STATE_UNIT_MAX, r->unit);
                return;
        }
        v = webhook_alert_label(a, r->unit_label);
        if (!v || !*v || strlen(v) > STATE_UNIT_MAX)
                return;
        if (!r->unit_format) {
                state_set_string(unit, STATE_UNIT_MAX, v);
                return;
        }
        hole = strstr(r->unit_format, "{}");
        if (strlen(r->unit_format) - 2 + strlen(v) > STATE_UNIT_MAX)
                return;
        {
                size_t prefix = (size_t)(hole - r->unit_format), vlen = strlen(v);

                memcpy(unit, r->unit_format, prefix);
                memcpy(unit + prefix, v, vlen);
                strcpy(unit + prefix + vlen, hole + 2);
        }
}

/* ---- breaker */

static void prune_failures(const struct policy *p, struct state_unit *u, int64_t now)
{
        size_t old = 0;

        while (old < u->n_failures && u->failures[old] <= now - p->breaker_window_seconds)
                old++;
        memmove(u->failures, u->failures + old, (u->n_failures - old) * sizeof(u->failures[0]));
        u->n_failures -= old;
}

static void refresh_breaker(const struct policy *p, struct state_unit *u, int64_t now)
{
        prune_failures(p, u, now);
        if (u->breaker == BREAKER_OPEN && now - u->opened_at >= p->breaker_half_open_after_seconds)
                u->breaker = BREAKER_HALF_OPEN;
}

enum breaker_state policy_breaker_state(const struct policy *p, struct alertbot_state *s,
                                        const char *unit, int64_t now)
{
        struct state_unit *u = state_unit_get(s, unit, false, now);

        if (!u)
                return BREAKER_CLOSED;
        refresh_breaker(p, u, now);
        return u->breaker;
}

/* Count a failure; returns true when it opened the breaker. */
static bool count_failure(const struct policy *p, struct state_unit *u, int64_t now)
{
        bool was_open = u->breaker == BREAKER_OPEN;

        refresh_breaker(p, u, now);
        if (u->n_failures == STATE_MAX_FAILURES)
                memmove(u->failures, u->failures + 1, (--u->n_failures) * sizeof(u->failures[0]));
        u->failures[u->n_failures++] = now;

        if (u->breaker == BREAKER_HALF_OPEN ||
            (u->breaker == BREAKER_CLOSED && u->n_failures >= (size_t)p->breaker_failures)) {
                u->breaker = BREAKER_OPEN;
                u->opened_at = now;
        }
        return !was_open && u->breaker == BREAKER_OPEN;
}

bool policy_record_outcome(const struct policy *p, struct alertbot_state *s, const char *unit,
                           bool success, int64_t now)
{
        struct state_unit *u = state_unit_get(s, unit, true, now);
        bool opened = false;

        if (!u)
                return false;
        if (success) {
                u->awaiting_resolve = true;
                u->awaiting_since = now;
                if (u->breaker == BREAKER_HALF_OPEN) {
                        u->breaker = BREAKER_CLOSED;
                        u->n_failures = 0;
                }
        } else {
                u->awaiting_resolve = false;
                opened = count_failure(p, u, now);
        }
        u->probe_in_flight = false;
        return opened;
}

/* ---- decisions */

static void decided(struct decision *d, struct state_incident *inc, enum decision_kind kind,
                    const char *reason, int64_t now)
{
        const char *action = d->rule ? policy_action_to_string(d->rule->action) : "";

        d->kind = kind;
        d->reason = reason;
        if (inc)
                state_incident_add_action(inc, now, decision_kind_to_string(kind), action, d->unit,
                                          kind == DECISION_ACTED ? "started" : "none");
}

static void decide_resolved(const struct policy *p, struct alertbot_state *s,
                            const struct webhook_alert *a, int64_t now, struct decision *d)
{
        const char *alertname = webhook_alert_label(a, "alertname");
        struct state_incident *inc;
        struct state_unit *u;

        inc = state_incident_find(s, a->fingerprint, a->starts_at);
        if (!inc)
                inc = state_incident_add(s, a->fingerprint, a->starts_at, alertname, now);
        if (d->rule && !inc->unit[0])
                state_set_string(inc->unit, STATE_UNIT_MAX, d->unit);
        inc->resolved = true;
        inc->resolved_at = now;

        /* The restart healed it: it no longer counts as a failure. */
        u = d->unit[0] ? state_unit_get(s, d->unit, false, now) : NULL;
        if (u)
                u->awaiting_resolve = false;
        decided(d, inc, DECISION_RESOLVED, "the alert resolved", now);
}

void policy_decide(const struct policy *p, struct alertbot_state *s, const struct webhook_alert *a,
                   int64_t starts_unix, bool dry_run, int64_t now, struct decision *ret)
{
        const char *alertname = webhook_alert_label(a, "alertname");
        char key[STATE_KEY_MAX + 1];
        struct state_incident *inc;
        struct state_unit *u;
        struct decision d = {};

        assert(p && s && a && ret);

        d.rule = policy_match(p, a);
        if (d.rule)
                rule_unit(d.rule, a, d.unit);

        if (state_dedup_key(a->fingerprint, a->starts_at, a->firing, key) < 0 ||
            state_dedup_contains(s, key)) {
                decided(&d, NULL, DECISION_DUPLICATE, "already received", now);
                *ret = d;
                return;
        }
        state_dedup_add(s, key, now);

        if (!a->firing) {
                decide_resolved(p, s, a, now, &d);
                *ret = d;
                return;
        }

        inc = state_incident_find(s, a->fingerprint, a->starts_at);
        if (!inc)
                inc = state_incident_add(s, a->fingerprint, a->starts_at, alertname, now);
        state_set_string(inc->unit, STATE_UNIT_MAX, d.unit);

        /* A bot heals its own host only: an alert about another host (in
         * a fleet, Alertmanager routes it to that host's bot) is refused
         * before any rule, and audited. */
        if (p->host) {
                const char *host = webhook_alert_label(a, "host");

                if (host && strcmp(host, p->host) != 0) {
                        d.escalate = false;
                        decided(&d, inc, DECISION_REFUSED_HOST, "the alert is about another host",
                                now);
                        goto done;
                }
        }

        if (!d.rule) {
                decided(&d, inc, DECISION_UNMATCHED, "no rule for this alert", now);
                goto done;
        }
        if (!policy_unit_allowed(p, d.unit)) {
                /* A rule that names its unit itself was configured to act:
                 * refusing it needs a person. A unit from a label may just
                 * be an alert we are not meant to handle. */
                d.escalate = d.rule->unit != NULL;
                decided(&d, inc, DECISION_REFUSED_ALLOWLIST,
                        d.unit[0] ? "the unit is not on the allowlist" : "the alert names no unit",
                        now);
                goto done;
        }

        u = state_unit_get(s, d.unit, true, now);
        if (!u) {
                decided(&d, inc, DECISION_REFUSED_ALLOWLIST, "the unit name is too long", now);
                goto done;
        }
        /* The unit fires again after a restart that looked good: that
         * restart did not resolve the alert. */
        if (u->awaiting_resolve && now - u->awaiting_since <= p->breaker_window_seconds &&
            starts_unix >= u->awaiting_since) {
                u->awaiting_resolve = false;
                count_failure(p, u, now);
        }

        refresh_breaker(p, u, now);
        if (u->breaker == BREAKER_OPEN) {
                d.escalate = true;
                decided(&d, inc, DECISION_SKIPPED_BREAKER, "the circuit breaker is open", now);
                goto done;
        }
        if (u->breaker == BREAKER_HALF_OPEN && u->probe_in_flight) {
                decided(&d, inc, DECISION_SKIPPED_BREAKER,
                        "the circuit breaker's trial restart is running", now);
                goto done;
        }
        if (u->last_restart_at > 0 && now - u->last_restart_at < p->cooldown_seconds) {
                decided(&d, inc, DECISION_SKIPPED_COOLDOWN, "the unit is in its cooldown", now);
                goto done;
        }
        if (state_budget_count(s, now, POLICY_BUDGET_WINDOW) >= (size_t)p->budget_per_hour) {
                d.escalate = true;
                decided(&d, inc, DECISION_SKIPPED_BUDGET, "the hourly restart budget is spent",
                        now);
                goto done;
        }
        if (dry_run) {
                decided(&d, inc, DECISION_DRY_RUN, "dry run: would restart", now);
                goto done;
        }

        d.act = true;
        d.probe = u->breaker == BREAKER_HALF_OPEN;
        u->last_restart_at = now;
        u->probe_in_flight = d.probe;
        state_budget_add(s, now);
        decided(&d, inc, DECISION_ACTED,
                d.probe ? "trial restart of a half-open breaker" : "restart", now);

done:
        *ret = d;
}
