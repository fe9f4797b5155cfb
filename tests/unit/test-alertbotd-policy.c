/* Unit tests of the remediation policy: the policy file format, and every
 * guard between an alert and a restart — allowlist, cooldown, hourly
 * budget, circuit breaker (closed, open, half-open, closed again),
 * dedup, dry-run and resolved notifications — driven by an injected clock. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alertbotd-policy.h"
#include "alertbotd-state.h"
#include "alertbotd-webhook.h"
#include "conf.h"
#include "macro.h"

#define T0 1700000000LL

static const char policy_text[] = "# test policy\n"
                                  "[policy]\n"
                                  "allowlist = vigil-authd.service vigil-paymentd.service\n"
                                  "allowlist = vigil-inventoryd.service\n"
                                  "cooldown_seconds = 300\n"
                                  "budget_per_hour = 3\n"
                                  "breaker_failures = 2\n"
                                  "breaker_window_seconds = 3600\n"
                                  "breaker_half_open_after_seconds = 600\n"
                                  "verify_timeout_seconds = 30\n"
                                  "[rule.VigilDaemonDown]\n"
                                  "unit_label = unit\n"
                                  "action = restart\n"
                                  "[rule.ByJob]\n"
                                  "alertname = JobDown\n"
                                  "match = severity=page\n"
                                  "unit_label = job\n"
                                  "unit_format = vigil-{}d.service\n"
                                  "[rule.Forced]\n"
                                  "alertname = ForcedRestart\n"
                                  "unit = sshd.service\n"
                                  "[unit.vigil-authd.service]\n"
                                  "ready_url = http://127.0.0.1:8001/ready\n";

static struct policy *policy;
static struct alertbot_state *state;

/* Load text, which must be refused; every error, formatted, one a line. */
static char *errors_of(const char *name, const char *text)
{
        struct conf_diagnostics d = {0};
        struct policy *p = NULL;
        char *all = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&all, &size);

        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(policy_load_string(name, text, &p, &d), -EINVAL);
        ck_assert_ptr_null(p);
        ck_assert_uint_gt(d.n_errors, 0);
        for (size_t i = 0; i < d.n_errors; i++) {
                _cleanup_free_ char *line = conf_error_format(&d.errors[i]);

                ck_assert_ptr_nonnull(line);
                fprintf(f, "%s\n", line);
        }
        fclose(f);
        conf_diagnostics_done(&d);
        return all;
}

static void setup(void)
{
        struct conf_diagnostics d = {0};

        ck_assert_int_eq(policy_load_string("test", policy_text, &policy, &d), 0);
        ck_assert_uint_eq(d.n_found, 0);
        ck_assert_int_eq(state_new(&state), 0);
}

static void teardown(void)
{
        policy_free(policy);
        state_free(state);
        policy = NULL;
        state = NULL;
}

/* An alert with up to three label pairs (NULL-terminated name, value…). */
struct test_alert {
        struct webhook_alert a;
        struct webhook_pair labels[4];
};

static struct webhook_alert *make_alert(struct test_alert *t, bool firing, const char *fp,
                                        const char *starts_at, const char *alertname,
                                        const char *l1, const char *v1, const char *l2,
                                        const char *v2)
{
        memset(t, 0, sizeof(*t));
        t->a.firing = firing;
        t->a.fingerprint = (char *)fp;
        t->a.starts_at = (char *)starts_at;
        t->a.ends_at = (char *)"";
        t->a.labels = t->labels;
        t->labels[t->a.n_labels++] = (struct webhook_pair){(char *)"alertname", (char *)alertname};
        if (l1)
                t->labels[t->a.n_labels++] = (struct webhook_pair){(char *)l1, (char *)v1};
        if (l2)
                t->labels[t->a.n_labels++] = (struct webhook_pair){(char *)l2, (char *)v2};
        return &t->a;
}

/* A firing VigilDaemonDown for unit with a fresh startsAt per seq. */
static struct decision fire(const char *unit, int seq, int64_t now, bool dry_run)
{
        struct test_alert t;
        struct decision d;
        char fp[32], starts[64];

        snprintf(fp, sizeof(fp), "%08x", (unsigned)seq);
        snprintf(starts, sizeof(starts), "2024-01-01T00:00:%02dZ", seq % 60);
        make_alert(&t, true, fp, starts, "VigilDaemonDown", "unit", unit, NULL, NULL);
        policy_decide(policy, state, &t.a, 0, dry_run, now, &d);
        return d;
}

START_TEST(test_policy_file_is_parsed)
{
        ck_assert_uint_eq(policy->n_allowlist, 3);
        ck_assert_int_eq(policy->cooldown_seconds, 300);
        ck_assert_int_eq(policy->budget_per_hour, 3);
        ck_assert_int_eq(policy->breaker_failures, 2);
        ck_assert_int_eq(policy->breaker_half_open_after_seconds, 600);
        ck_assert_int_eq(policy->verify_timeout_seconds, 30);
        ck_assert_uint_eq(policy->n_rules, 3);
        ck_assert_str_eq(policy->rules[0].alertname, "VigilDaemonDown");
        ck_assert_str_eq(policy->rules[1].alertname, "JobDown");
        ck_assert_str_eq(policy->rules[2].unit, "sshd.service");
        ck_assert_str_eq(policy_unit_ready_url(policy, "vigil-authd.service"),
                         "http://127.0.0.1:8001/ready");
        ck_assert_ptr_null(policy_unit_ready_url(policy, "vigil-paymentd.service"));
}
END_TEST

START_TEST(test_policy_errors_name_file_line_and_key)
{
        static const struct {
                const char *text, *want;
        } cases[] = {
                {"[policy]\ncooldown = 5\n", "p.conf:2: [policy] cooldown: unknown key"},
                {"[policy]\n\nbudget_per_hour = lots\n", "p.conf:3: [policy] budget_per_hour"},
                {"[policy]\nbreaker_failures = 0\n", "p.conf:2: [policy] breaker_failures"},
                {"[rule.X]\naction = restart\n", "needs exactly one of unit and unit_label"},
                {"[rule.X]\nunit = a.service\nunit_label = unit\n", "needs exactly one"},
                {"[rule.X]\nunit = /etc/passwd\n", "p.conf:2: [rule.X] unit"},
                {"[rule.X]\nunit_label = u\naction = stop\n", "only \"restart\""},
                {"[rule.X]\nunit_label = u\nunit_format = vigil-d.service\n", "exactly one \"{}\""},
                {"[weird]\nx = 1\n", "p.conf:2: [weird] x: unknown section"},
                {"[unit.vigil-authd.service]\nready_url = ftp://x/\n", "ready_url"},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                _cleanup_free_ char *error = errors_of("p.conf", cases[i].text);

                ck_assert_msg(strstr(error, cases[i].want), "case %zu: \"%s\" lacks \"%s\"", i,
                              error, cases[i].want);
        }
}
END_TEST

START_TEST(test_policy_refuses_lines_libinih_would_cut)
{
        char text[512];
        _cleanup_free_ char *error = NULL;

        snprintf(text, sizeof(text), "[policy]\nallowlist = %0300d\n", 0);
        error = errors_of("p.conf", text);
        ck_assert_msg(strstr(error, "p.conf:2: line too long"), "%s", error);
}
END_TEST

START_TEST(test_policy_reports_every_error_with_file_and_line)
{
        _cleanup_free_ char *error = errors_of("p.conf", "[policy]\n"
                                                         "cooldown = 5\n"
                                                         "budget_per_hour = lots\n"
                                                         "[rule.X]\n"
                                                         "action = stop\n"
                                                         "nonsense\n"
                                                         "[unit.sshd]\n"
                                                         "ready_url = http://x/\n");

        ck_assert_str_eq(error, "p.conf:2: [policy] cooldown: unknown key\n"
                                "p.conf:3: [policy] budget_per_hour: expected an integer in "
                                "0..1000\n"
                                "p.conf:5: [rule.X] action: only \"restart\" is supported\n"
                                "p.conf:6: expected \"key = value\" or \"[section]\"\n"
                                "p.conf:8: [unit.sshd] \"sshd\" is not a service unit name\n"
                                "p.conf:5: [rule.X] needs exactly one of unit and unit_label\n");
}
END_TEST

START_TEST(test_allowlist_refuses_globs_and_names_that_are_no_service)
{
        _cleanup_free_ char *glob = NULL, *socket = NULL;

        /* A glob would match vigil-alertbotd.service and template instances,
         * which the polkit rule refuses: the file is refused instead. */
        glob = errors_of("p", "[policy]\nallowlist = vigil-*.service\n");
        ck_assert_ptr_nonnull(strstr(glob, "vigil-*.service"));
        socket = errors_of("p", "[policy]\nallowlist = vigil-authd.socket\n");
        ck_assert_ptr_nonnull(strstr(socket, "vigil-authd.socket"));
}
END_TEST

START_TEST(test_allowlist_matches_exact_names_only)
{
        struct policy *p = NULL;

        ck_assert_int_eq(policy_load_string("p",
                                            "[policy]\nallowlist = vigil-authd.service "
                                            "vigil-notifyd.service\n",
                                            &p, NULL),
                         0);
        ck_assert(policy_unit_allowed(p, "vigil-authd.service"));
        ck_assert(policy_unit_allowed(p, "vigil-notifyd.service"));
        ck_assert(!policy_unit_allowed(p, "vigil-alertbotd.service"));
        ck_assert(!policy_unit_allowed(p, "vigil-authd@x.service"));
        ck_assert(!policy_unit_allowed(p, "VIGIL-AUTHD.service"));
        ck_assert(!policy_unit_allowed(p, "sshd.service"));
        ck_assert(!policy_unit_allowed(p, "vigil-authd.socket"));
        ck_assert(!policy_unit_allowed(p, "vigil-a d.service"));
        ck_assert(!policy_unit_allowed(p, "vigil-x/../y.service"));
        ck_assert(!policy_unit_allowed(p, ""));
        policy_free(p);
}
END_TEST

START_TEST(test_firing_alert_for_allowed_unit_is_acted_on)
{
        struct decision d = fire("vigil-authd.service", 1, T0, false);

        ck_assert_int_eq(d.kind, DECISION_ACTED);
        ck_assert(d.act);
        ck_assert(!d.escalate);
        ck_assert_str_eq(d.unit, "vigil-authd.service");
        ck_assert_uint_eq(state->n_incidents, 1);
        ck_assert_str_eq(state->incidents[0].actions[0].result, "started");
        ck_assert_uint_eq(state->n_budget, 1);
}
END_TEST

START_TEST(test_unit_from_label_outside_allowlist_is_refused_without_escalation)
{
        struct decision d = fire("sshd.service", 1, T0, false);

        ck_assert_int_eq(d.kind, DECISION_REFUSED_ALLOWLIST);
        ck_assert(!d.act);
        ck_assert(!d.escalate);
        ck_assert_uint_eq(state->n_budget, 0);
}
END_TEST

START_TEST(test_forced_unit_outside_allowlist_is_refused_and_escalated)
{
        struct test_alert t;
        struct decision d;

        make_alert(&t, true, "aa", "2024-01-01T00:00:00Z", "ForcedRestart", NULL, NULL, NULL, NULL);
        policy_decide(policy, state, &t.a, 0, false, T0, &d);
        ck_assert_int_eq(d.kind, DECISION_REFUSED_ALLOWLIST);
        ck_assert(!d.act);
        ck_assert(d.escalate);
        ck_assert_str_eq(d.unit, "sshd.service");
}
END_TEST

START_TEST(test_alert_about_another_host_is_refused)
{
        _cleanup_(policy_freep) struct policy *p = NULL;
        _cleanup_free_ char *errors = NULL;
        struct conf_diagnostics diag = {0};
        struct test_alert t;
        struct decision d;

        ck_assert_int_eq(policy_load_string("p",
                                            "[policy]\nhost = app1\n"
                                            "allowlist = vigil-authd.service\n"
                                            "[rule.VigilDaemonDown]\nunit_label = unit\n",
                                            &p, &diag),
                         0);
        conf_diagnostics_done(&diag);
        ck_assert_str_eq(p->host, "app1");
        make_alert(&t, true, "h1", "2024-01-01T00:00:00Z", "VigilDaemonDown", "unit",
                   "vigil-authd.service", "host", "app2");
        policy_decide(p, state, &t.a, 0, false, T0, &d);
        ck_assert_int_eq(d.kind, DECISION_REFUSED_HOST);
        ck_assert(!d.act);
        ck_assert_str_eq(decision_kind_to_string(d.kind), "refused_host");
        ck_assert_ptr_nonnull(decision_kind_message_id(d.kind));
        /* Its own host, or no host label (one host): acted on. */
        make_alert(&t, true, "h2", "2024-01-01T00:00:01Z", "VigilDaemonDown", "unit",
                   "vigil-authd.service", "host", "app1");
        policy_decide(p, state, &t.a, 0, false, T0, &d);
        ck_assert_int_eq(d.kind, DECISION_ACTED);
        /* The default policy (no host) acts on any host's alert. */
        make_alert(&t, true, "h3", "2024-01-01T00:00:02Z", "VigilDaemonDown", "unit",
                   "vigil-authd.service", "host", "app2");
        policy_decide(policy, state, &t.a, 0, false, T0 + 10000, &d);
        ck_assert_int_eq(d.kind, DECISION_ACTED);
        /* A bad host name is refused when loading, with its line. */
        errors = errors_of("p", "[policy]\nhost = a b\n");
        ck_assert_str_eq(errors, "p:2: [policy] host: expected a host name\n");
}
END_TEST

START_TEST(test_unit_format_derives_the_unit_from_a_label)
{
        struct test_alert t;
        struct decision d;

        make_alert(&t, true, "bb", "2024-01-01T00:00:00Z", "JobDown", "job", "inventory",
                   "severity", "page");
        policy_decide(policy, state, &t.a, 0, false, T0, &d);
        ck_assert_int_eq(d.kind, DECISION_ACTED);
        ck_assert_str_eq(d.unit, "vigil-inventoryd.service");

        /* The match= label must be there. */
        make_alert(&t, true, "cc", "2024-01-01T00:00:00Z", "JobDown", "job", "inventory",
                   "severity", "ticket");
        policy_decide(policy, state, &t.a, 0, false, T0, &d);
        ck_assert_int_eq(d.kind, DECISION_UNMATCHED);
        ck_assert(!d.act);
}
END_TEST

START_TEST(test_alert_without_unit_label_is_refused)
{
        struct test_alert t;
        struct decision d;

        make_alert(&t, true, "dd", "2024-01-01T00:00:00Z", "VigilDaemonDown", NULL, NULL, NULL,
                   NULL);
        policy_decide(policy, state, &t.a, 0, false, T0, &d);
        ck_assert_int_eq(d.kind, DECISION_REFUSED_ALLOWLIST);
        ck_assert(!d.act);
}
END_TEST

START_TEST(test_redelivered_alert_is_a_duplicate)
{
        ck_assert_int_eq(fire("vigil-authd.service", 1, T0, false).kind, DECISION_ACTED);
        struct decision d = fire("vigil-authd.service", 1, T0 + 1000, false);

        ck_assert_int_eq(d.kind, DECISION_DUPLICATE);
        ck_assert(!d.act);
        ck_assert_uint_eq(state->n_budget, 1);
        ck_assert_uint_eq(state->n_incidents, 1);
}
END_TEST

START_TEST(test_second_alert_inside_cooldown_is_skipped)
{
        ck_assert_int_eq(fire("vigil-authd.service", 1, T0, false).kind, DECISION_ACTED);
        ck_assert_int_eq(fire("vigil-authd.service", 2, T0 + 299, false).kind,
                         DECISION_SKIPPED_COOLDOWN);
        /* Another unit has its own cooldown. */
        ck_assert_int_eq(fire("vigil-paymentd.service", 3, T0 + 299, false).kind, DECISION_ACTED);
        ck_assert_int_eq(fire("vigil-authd.service", 4, T0 + 300, false).kind, DECISION_ACTED);
}
END_TEST

START_TEST(test_budget_caps_restarts_per_hour_and_escalates)
{
        ck_assert_int_eq(fire("vigil-authd.service", 1, T0, false).kind, DECISION_ACTED);
        ck_assert_int_eq(fire("vigil-paymentd.service", 2, T0 + 1, false).kind, DECISION_ACTED);
        ck_assert_int_eq(fire("vigil-inventoryd.service", 3, T0 + 2, false).kind, DECISION_ACTED);
        struct decision d = fire("vigil-authd.service", 4, T0 + 400, false);

        ck_assert_int_eq(d.kind, DECISION_SKIPPED_BUDGET);
        ck_assert(d.escalate);
        ck_assert(!d.act);
        /* An hour after the first restart, one slot is free again. */
        ck_assert_int_eq(fire("vigil-authd.service", 5, T0 + 3600, false).kind, DECISION_ACTED);
        ck_assert_int_eq(fire("vigil-paymentd.service", 6, T0 + 3600, false).kind,
                         DECISION_SKIPPED_BUDGET);
}
END_TEST

START_TEST(test_failed_restarts_open_the_breaker_which_escalates)
{
        const char *u = "vigil-authd.service";

        ck_assert_int_eq(fire(u, 1, T0, false).kind, DECISION_ACTED);
        ck_assert(!policy_record_outcome(policy, state, u, false, T0 + 10));
        ck_assert_int_eq(policy_breaker_state(policy, state, u, T0 + 10), BREAKER_CLOSED);
        ck_assert_int_eq(fire(u, 2, T0 + 400, false).kind, DECISION_ACTED);
        ck_assert(policy_record_outcome(policy, state, u, false, T0 + 410));
        ck_assert_int_eq(policy_breaker_state(policy, state, u, T0 + 410), BREAKER_OPEN);

        struct decision d = fire(u, 3, T0 + 800, false);

        ck_assert_int_eq(d.kind, DECISION_SKIPPED_BREAKER);
        ck_assert(d.escalate);
        ck_assert(!d.act);
        /* Other units are not affected. */
        ck_assert_int_eq(fire("vigil-paymentd.service", 4, T0 + 800, false).kind, DECISION_ACTED);
}
END_TEST

START_TEST(test_failures_outside_the_window_do_not_open_the_breaker)
{
        const char *u = "vigil-authd.service";

        ck_assert_int_eq(fire(u, 1, T0, false).kind, DECISION_ACTED);
        ck_assert(!policy_record_outcome(policy, state, u, false, T0));
        ck_assert_int_eq(fire(u, 2, T0 + 3700, false).kind, DECISION_ACTED);
        ck_assert(!policy_record_outcome(policy, state, u, false, T0 + 3700));
        ck_assert_int_eq(policy_breaker_state(policy, state, u, T0 + 3700), BREAKER_CLOSED);
}
END_TEST

static void open_breaker(const char *u)
{
        ck_assert_int_eq(fire(u, 1, T0, false).kind, DECISION_ACTED);
        policy_record_outcome(policy, state, u, false, T0 + 10);
        ck_assert_int_eq(fire(u, 2, T0 + 400, false).kind, DECISION_ACTED);
        ck_assert(policy_record_outcome(policy, state, u, false, T0 + 410));
}

START_TEST(test_half_open_breaker_allows_one_trial_and_closes_on_success)
{
        const char *u = "vigil-authd.service";
        struct decision d;

        open_breaker(u);
        ck_assert_int_eq(fire(u, 3, T0 + 1009, false).kind, DECISION_SKIPPED_BREAKER);
        ck_assert_int_eq(policy_breaker_state(policy, state, u, T0 + 1010), BREAKER_HALF_OPEN);

        d = fire(u, 4, T0 + 1010, false);
        ck_assert_int_eq(d.kind, DECISION_ACTED);
        ck_assert(d.probe);
        /* While the trial runs, nothing else goes through. */
        d = fire(u, 5, T0 + 1011, false);
        ck_assert_int_eq(d.kind, DECISION_SKIPPED_BREAKER);
        ck_assert(!d.escalate);

        ck_assert(!policy_record_outcome(policy, state, u, true, T0 + 1020));
        ck_assert_int_eq(policy_breaker_state(policy, state, u, T0 + 1020), BREAKER_CLOSED);
        ck_assert_int_eq(fire(u, 6, T0 + 3700, false).kind, DECISION_ACTED);
}
END_TEST

START_TEST(test_half_open_breaker_reopens_when_the_trial_fails)
{
        const char *u = "vigil-authd.service";

        open_breaker(u);
        ck_assert_int_eq(fire(u, 3, T0 + 1010, false).kind, DECISION_ACTED);
        ck_assert(policy_record_outcome(policy, state, u, false, T0 + 1020));
        ck_assert_int_eq(policy_breaker_state(policy, state, u, T0 + 1020), BREAKER_OPEN);
        ck_assert_int_eq(fire(u, 4, T0 + 1500, false).kind, DECISION_SKIPPED_BREAKER);
        /* Half-open again 600 s after re-opening. */
        ck_assert_int_eq(policy_breaker_state(policy, state, u, T0 + 1620), BREAKER_HALF_OPEN);
}
END_TEST

START_TEST(test_refiring_after_a_successful_restart_counts_as_a_failure)
{
        const char *u = "vigil-authd.service";
        struct test_alert t;
        struct decision d;

        ck_assert_int_eq(fire(u, 1, T0, false).kind, DECISION_ACTED);
        policy_record_outcome(policy, state, u, true, T0 + 10);
        ck_assert_int_eq(fire(u, 2, T0 + 400, false).kind, DECISION_ACTED);
        policy_record_outcome(policy, state, u, true, T0 + 410);
        /* Fired again after that restart: the breaker counts both. A
         * firing that started before the restart finished does not. */
        make_alert(&t, true, "ee", "2024-01-01T00:00:00Z", "VigilDaemonDown", "unit", u, NULL,
                   NULL);
        policy_decide(policy, state, &t.a, T0 + 405, false, T0 + 420, &d);
        ck_assert_int_eq(d.kind, DECISION_SKIPPED_COOLDOWN);
        ck_assert_int_eq(policy_breaker_state(policy, state, u, T0 + 420), BREAKER_CLOSED);

        make_alert(&t, true, "ef", "2024-01-01T00:00:00Z", "VigilDaemonDown", "unit", u, NULL,
                   NULL);
        policy_decide(policy, state, &t.a, T0 + 500, false, T0 + 800, &d);
        ck_assert_int_eq(d.kind, DECISION_ACTED); /* first failure counted */
        policy_record_outcome(policy, state, u, true, T0 + 810);
        make_alert(&t, true, "f0", "2024-01-01T00:00:00Z", "VigilDaemonDown", "unit", u, NULL,
                   NULL);
        policy_decide(policy, state, &t.a, T0 + 900, false, T0 + 1200, &d);
        ck_assert_int_eq(d.kind, DECISION_SKIPPED_BREAKER);
        ck_assert(d.escalate);
}
END_TEST

START_TEST(test_resolved_closes_the_incident_and_the_restart_counts_as_healed)
{
        const char *u = "vigil-authd.service";
        struct test_alert t;
        struct decision d;

        make_alert(&t, true, "ab", "2024-01-01T00:00:00Z", "VigilDaemonDown", "unit", u, NULL,
                   NULL);
        policy_decide(policy, state, &t.a, 0, false, T0, &d);
        ck_assert_int_eq(d.kind, DECISION_ACTED);
        policy_record_outcome(policy, state, u, true, T0 + 10);

        t.a.firing = false;
        policy_decide(policy, state, &t.a, 0, false, T0 + 60, &d);
        ck_assert_int_eq(d.kind, DECISION_RESOLVED);
        ck_assert(!d.act);
        ck_assert_uint_eq(state->n_incidents, 1);
        ck_assert(state->incidents[0].resolved);
        ck_assert_int_eq(state->incidents[0].resolved_at, T0 + 60);
        ck_assert(!state_unit_get(state, u, false, T0)->awaiting_resolve);

        /* A redelivered resolved notification is a duplicate. */
        policy_decide(policy, state, &t.a, 0, false, T0 + 61, &d);
        ck_assert_int_eq(d.kind, DECISION_DUPLICATE);

        /* A new firing after the resolve is not a failure of the restart. */
        make_alert(&t, true, "ab", "2024-01-01T01:00:00Z", "VigilDaemonDown", "unit", u, NULL,
                   NULL);
        policy_decide(policy, state, &t.a, T0 + 3000, false, T0 + 3000, &d);
        ck_assert_int_eq(d.kind, DECISION_ACTED);
        ck_assert_uint_eq(state_unit_get(state, u, false, T0)->n_failures, 0);
}
END_TEST

START_TEST(test_dry_run_decides_and_records_but_does_not_act)
{
        struct decision d = fire("vigil-authd.service", 1, T0, true);

        ck_assert_int_eq(d.kind, DECISION_DRY_RUN);
        ck_assert(!d.act);
        ck_assert_uint_eq(state->n_budget, 0);
        ck_assert_str_eq(state->incidents[0].actions[0].decision, "dry_run");
        /* Refusals still win over dry-run. */
        ck_assert_int_eq(fire("sshd.service", 2, T0, true).kind, DECISION_REFUSED_ALLOWLIST);
        /* Turning dry-run off acts at once: no cooldown was consumed. */
        ck_assert_int_eq(fire("vigil-authd.service", 3, T0 + 1, false).kind, DECISION_ACTED);
}
END_TEST

START_TEST(test_unknown_alert_is_unmatched)
{
        struct test_alert t;
        struct decision d;

        make_alert(&t, true, "01", "2024-01-01T00:00:00Z", "SomethingElse", "unit",
                   "vigil-authd.service", NULL, NULL);
        policy_decide(policy, state, &t.a, 0, false, T0, &d);
        ck_assert_int_eq(d.kind, DECISION_UNMATCHED);
        ck_assert(!d.act);
        ck_assert_ptr_null(d.rule);
}
END_TEST

START_TEST(test_shipped_policy_file_is_valid_and_covers_the_restart_alerts)
{
        const char *srcdir = getenv("top_srcdir");
        struct policy *p = NULL;
        struct conf_diagnostics d = {0};
        char path[4096];
        struct test_alert t;

        snprintf(path, sizeof(path), "%s/etc/vigil/alertbot-policy.conf", srcdir ? srcdir : ".");
        ck_assert_msg(policy_load_file(path, &p, &d) == 0, "%s",
                      d.n_errors > 0 ? d.errors[0].message : path);
        ck_assert(policy_unit_allowed(p, "vigil-authd.service"));
        ck_assert(policy_unit_allowed(p, "vigil-notifyd.service"));
        ck_assert(!policy_unit_allowed(p, "vigil-alertbotd.service"));
        make_alert(&t, true, "01", "2024-01-01T00:00:00Z", "VigilDaemonDown", "unit",
                   "vigil-paymentd.service", "remediation", "restart");
        ck_assert_ptr_nonnull(policy_match(p, &t.a));
        make_alert(&t, true, "01", "2024-01-01T00:00:00Z", "VigilUnitFailed", "unit",
                   "vigil-paymentd.service", "remediation", "restart");
        ck_assert_ptr_nonnull(policy_match(p, &t.a));
        ck_assert_str_eq(policy_unit_ready_url(p, "vigil-inventoryd.service"),
                         "http://127.0.0.1:8003/ready");
        policy_free(p);
}
END_TEST

START_TEST(test_every_decision_kind_has_a_distinct_message_id)
{
        for (int i = 0; i < _DECISION_MAX; i++) {
                const char *id = decision_kind_message_id(i);

                ck_assert_uint_eq(strlen(id), 32);
                ck_assert_uint_eq(strspn(id, "0123456789abcdef"), 32);
                for (int j = 0; j < i; j++)
                        ck_assert_str_ne(id, decision_kind_message_id(j));
        }
        ck_assert_str_eq(decision_kind_to_string(DECISION_SKIPPED_COOLDOWN), "skipped_cooldown");
}
END_TEST

START_TEST(test_rfc3339_times_are_parsed)
{
        int64_t t;

        ck_assert_int_eq(policy_parse_time("2024-05-01T12:00:00Z", &t), 0);
        ck_assert_int_eq(t, 1714564800);
        ck_assert_int_eq(policy_parse_time("2024-05-01T12:00:00.123456789Z", &t), 0);
        ck_assert_int_eq(t, 1714564800);
        ck_assert_int_eq(policy_parse_time("2024-05-01T14:00:00+02:00", &t), 0);
        ck_assert_int_eq(t, 1714564800);
        ck_assert_int_eq(policy_parse_time("2024-05-01T12:00:00", &t), -EINVAL);
        ck_assert_int_eq(policy_parse_time("2024-05-01T12:00:00Zjunk", &t), -EINVAL);
        ck_assert_int_eq(policy_parse_time("yesterday", &t), -EINVAL);
}
END_TEST

int main(void)
{
        Suite *s = suite_create("alertbotd-policy");
        TCase *file = tcase_create("file"), *tc = tcase_create("decisions");
        SRunner *sr;
        int failed;

        tcase_add_checked_fixture(file, setup, teardown);
        tcase_add_test(file, test_policy_file_is_parsed);
        tcase_add_test(file, test_policy_errors_name_file_line_and_key);
        tcase_add_test(file, test_policy_reports_every_error_with_file_and_line);
        tcase_add_test(file, test_policy_refuses_lines_libinih_would_cut);
        tcase_add_test(file, test_allowlist_refuses_globs_and_names_that_are_no_service);
        tcase_add_test(file, test_allowlist_matches_exact_names_only);
        tcase_add_test(file, test_every_decision_kind_has_a_distinct_message_id);
        tcase_add_test(file, test_shipped_policy_file_is_valid_and_covers_the_restart_alerts);
        tcase_add_test(file, test_rfc3339_times_are_parsed);
        suite_add_tcase(s, file);

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_firing_alert_for_allowed_unit_is_acted_on);
        tcase_add_test(tc, test_unit_from_label_outside_allowlist_is_refused_without_escalation);
        tcase_add_test(tc, test_forced_unit_outside_allowlist_is_refused_and_escalated);
        tcase_add_test(tc, test_unit_format_derives_the_unit_from_a_label);
        tcase_add_test(tc, test_alert_without_unit_label_is_refused);
        tcase_add_test(tc, test_redelivered_alert_is_a_duplicate);
        tcase_add_test(tc, test_second_alert_inside_cooldown_is_skipped);
        tcase_add_test(tc, test_budget_caps_restarts_per_hour_and_escalates);
        tcase_add_test(tc, test_failed_restarts_open_the_breaker_which_escalates);
        tcase_add_test(tc, test_failures_outside_the_window_do_not_open_the_breaker);
        tcase_add_test(tc, test_half_open_breaker_allows_one_trial_and_closes_on_success);
        tcase_add_test(tc, test_half_open_breaker_reopens_when_the_trial_fails);
        tcase_add_test(tc, test_refiring_after_a_successful_restart_counts_as_a_failure);
        tcase_add_test(tc, test_resolved_closes_the_incident_and_the_restart_counts_as_healed);
        tcase_add_test(tc, test_dry_run_decides_and_records_but_does_not_act);
        tcase_add_test(tc, test_unknown_alert_is_unmatched);
        tcase_add_test(tc, test_alert_about_another_host_is_refused);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
