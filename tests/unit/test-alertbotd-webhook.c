/* Unit tests of the Alertmanager webhook decoder: the payload Alertmanager
 * really sends is decoded completely, and everything malformed or
 * oversized is refused with a stable code (so the route answers 400 and
 * Alertmanager does not retry it). */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alertbotd-webhook.h"

/* What Alertmanager 0.25 sends (shape of its webhook notifier). */
static const char sample[] =
        "{\"receiver\":\"alertbot\",\"status\":\"firing\",\"alerts\":[{\"status\":\"firing\","
        "\"labels\":{\"alertname\":\"VigilDaemonDown\",\"job\":\"auth\",\"severity\":\"page\","
        "\"remediation\":\"restart\",\"unit\":\"vigil-authd.service\"},"
        "\"annotations\":{\"summary\":\"vigil-authd does not answer scrapes\"},"
        "\"startsAt\":\"2024-05-01T12:00:00.123456789Z\",\"endsAt\":\"0001-01-01T00:00:00Z\","
        "\"generatorURL\":\"http://prometheus:9090/graph?g0.expr=up\","
        "\"fingerprint\":\"c0ffee0123456789\"}],"
        "\"groupLabels\":{\"alertname\":\"VigilDaemonDown\"},\"commonLabels\":{},"
        "\"commonAnnotations\":{},\"externalURL\":\"http://alertmanager:9093\","
        "\"version\":\"4\",\"groupKey\":\"{}:{alertname=\\\"VigilDaemonDown\\\"}\","
        "\"truncatedAlerts\":0}";

static int decode(const char *body, struct webhook **w, const char **code)
{
        char *message = NULL;
        int r = webhook_decode(body, strlen(body), w, code, &message);

        if (r < 0)
                ck_assert_msg(message && *message, "an error comes with a message");
        free(message);
        return r;
}

/* sample with one substring replaced. */
static char *variant(const char *from, const char *to)
{
        const char *at = strstr(sample, from);
        char *out;

        ck_assert_ptr_nonnull(at);
        ck_assert_int_ge(
                asprintf(&out, "%.*s%s%s", (int)(at - sample), sample, to, at + strlen(from)), 0);
        return out;
}

static void assert_refused(const char *body, const char *want_code)
{
        struct webhook *w = NULL;
        const char *code = NULL;

        ck_assert_int_lt(decode(body, &w, &code), 0);
        ck_assert_ptr_null(w);
        ck_assert_str_eq(code, want_code);
}

START_TEST(test_alertmanager_payload_is_decoded_completely)
{
        struct webhook *w = NULL;
        const char *code = NULL;

        ck_assert_int_eq(decode(sample, &w, &code), 0);
        ck_assert(w->firing);
        ck_assert_str_eq(w->receiver, "alertbot");
        ck_assert_str_eq(w->external_url, "http://alertmanager:9093");
        ck_assert_uint_eq(w->n_alerts, 1);
        ck_assert(w->alerts[0].firing);
        ck_assert_str_eq(w->alerts[0].fingerprint, "c0ffee0123456789");
        ck_assert_str_eq(w->alerts[0].starts_at, "2024-05-01T12:00:00.123456789Z");
        ck_assert_str_eq(w->alerts[0].ends_at, "0001-01-01T00:00:00Z");
        ck_assert_uint_eq(w->alerts[0].n_labels, 5);
        ck_assert_str_eq(webhook_alert_label(&w->alerts[0], "alertname"), "VigilDaemonDown");
        ck_assert_str_eq(webhook_alert_label(&w->alerts[0], "unit"), "vigil-authd.service");
        ck_assert_ptr_null(webhook_alert_label(&w->alerts[0], "missing"));
        ck_assert_str_eq(webhook_alert_annotation(&w->alerts[0], "summary"),
                         "vigil-authd does not answer scrapes");
        webhook_free(w);
}
END_TEST

START_TEST(test_resolved_alerts_and_empty_alert_lists_are_decoded)
{
        struct webhook *w = NULL;
        const char *code = NULL;
        char *body = variant("\"alerts\":[{\"status\":\"firing\"",
                             "\"alerts\":[{\"status\":\"resolved\"");

        ck_assert_int_eq(decode(body, &w, &code), 0);
        ck_assert(!w->alerts[0].firing);
        webhook_free(w);
        free(body);

        ck_assert_int_eq(
                decode("{\"version\":\"4\",\"status\":\"resolved\",\"alerts\":[]}", &w, &code), 0);
        ck_assert_uint_eq(w->n_alerts, 0);
        ck_assert(!w->firing);
        webhook_free(w);
}
END_TEST

START_TEST(test_malformed_json_is_refused)
{
        assert_refused("", "invalid_json");
        assert_refused("{\"version\":\"4\"", "invalid_json");
        assert_refused("[1]", "not_an_object");
        assert_refused("{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[[[[[[[]]]]]]]}",
                       "too_deep");
}
END_TEST

START_TEST(test_other_versions_are_refused)
{
        char *v3 = variant("\"version\":\"4\"", "\"version\":\"3\"");
        char *v4int = variant("\"version\":\"4\"", "\"version\":4");

        assert_refused(v3, "unsupported_version");
        assert_refused(v4int, "unsupported_version");
        free(v3);
        free(v4int);
        assert_refused("{\"status\":\"firing\",\"alerts\":[]}", "missing_field");
}
END_TEST

START_TEST(test_missing_or_mistyped_fields_are_refused)
{
        static const struct {
                const char *from, *to, *code;
        } cases[] = {
                {"\"fingerprint\":\"c0ffee0123456789\"", "\"x\":1", "missing_field"},
                {"\"fingerprint\":\"c0ffee0123456789\"", "\"fingerprint\":\"XYZ\"",
                 "invalid_field"},
                {"\"fingerprint\":\"c0ffee0123456789\"", "\"fingerprint\":\"\"", "invalid_field"},
                {"\"startsAt\":\"2024-05-01T12:00:00.123456789Z\"", "\"startsAt\":\"yesterday\"",
                 "invalid_field"},
                {"\"startsAt\":\"2024-05-01T12:00:00.123456789Z\"", "\"startsAt\":5",
                 "invalid_field"},
                {"\"alertname\":\"VigilDaemonDown\",\"job\"", "\"job\"", "missing_field"},
                {"\"job\":\"auth\"", "\"job\":7", "invalid_field"},
                {"\"job\":\"auth\"", "\"bad-name\":\"x\"", "invalid_field"},
                {"\"job\":\"auth\"", "\"job\":\"a\\u0001b\"", "invalid_field"},
                {"\"alerts\":[{\"status\":\"firing\"", "\"alerts\":[{\"status\":\"burning\"",
                 "invalid_field"},
                {"\"receiver\":\"alertbot\",\"status\":\"firing\"", "\"receiver\":\"alertbot\"",
                 "missing_field"},
                {"\"alerts\":[{", "\"alerts\":\"none\",\"x\":[{", "invalid_field"},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *body = variant(cases[i].from, cases[i].to);
                struct webhook *w = NULL;
                const char *code = NULL;

                ck_assert_msg(decode(body, &w, &code) < 0, "case %zu accepted", i);
                ck_assert_msg(strcmp(code, cases[i].code) == 0, "case %zu: %s, want %s", i, code,
                              cases[i].code);
                free(body);
        }
}
END_TEST

START_TEST(test_more_than_1000_alerts_are_refused)
{
        const char *alert = "{\"status\":\"firing\",\"labels\":{\"alertname\":\"A\"},"
                            "\"startsAt\":\"2024-05-01T12:00:00Z\",\"fingerprint\":\"ab\"},";
        size_t n = WEBHOOK_MAX_ALERTS + 1, len = strlen(alert);
        char *body = malloc(n * len + 128), *p = body;
        struct webhook *w = NULL;
        const char *code = NULL;

        p += sprintf(p, "{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[");
        for (size_t i = 0; i < n; i++)
                p += sprintf(p, "%s", alert);
        sprintf(p - 1, "]}");
        ck_assert_int_eq(decode(body, &w, &code), -E2BIG);
        ck_assert_str_eq(code, "too_many_alerts");

        /* Exactly the limit is fine. */
        p = body + strlen(body) - 2 - len;
        sprintf(p, "]}");
        ck_assert_int_eq(decode(body, &w, &code), 0);
        ck_assert_uint_eq(w->n_alerts, WEBHOOK_MAX_ALERTS);
        webhook_free(w);
        free(body);
}
END_TEST

START_TEST(test_label_count_and_length_are_limited)
{
        char labels[16384], *p = labels, *body, big[WEBHOOK_MAX_LABEL_VALUE + 2];

        p += sprintf(p, "\"labels\":{\"alertname\":\"A\"");
        for (int i = 0; i < WEBHOOK_MAX_LABELS; i++)
                p += sprintf(p, ",\"l%d\":\"v\"", i);
        sprintf(p, "}");
        body = variant("\"labels\":{\"alertname\":\"VigilDaemonDown\",\"job\":\"auth\","
                       "\"severity\":\"page\",\"remediation\":\"restart\","
                       "\"unit\":\"vigil-authd.service\"}",
                       labels);
        assert_refused(body, "too_many_labels");
        free(body);

        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        snprintf(labels, sizeof(labels), "\"job\":\"%s\"", big);
        body = variant("\"job\":\"auth\"", labels);
        assert_refused(body, "invalid_field");
        free(body);
}
END_TEST

START_TEST(test_payload_with_nul_byte_is_refused)
{
        struct webhook *w = NULL;
        const char *code = NULL;
        char body[] = "{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[]}";

        body[5] = '\0';
        ck_assert_int_lt(webhook_decode(body, sizeof(body) - 1, &w, &code, NULL), 0);
        ck_assert_str_eq(code, "invalid_json");
}
END_TEST

int main(void)
{
        Suite *s = suite_create("alertbotd-webhook");
        TCase *tc = tcase_create("decode");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_alertmanager_payload_is_decoded_completely);
        tcase_add_test(tc, test_resolved_alerts_and_empty_alert_lists_are_decoded);
        tcase_add_test(tc, test_malformed_json_is_refused);
        tcase_add_test(tc, test_other_versions_are_refused);
        tcase_add_test(tc, test_missing_or_mistyped_fields_are_refused);
        tcase_add_test(tc, test_more_than_1000_alerts_are_refused);
        tcase_add_test(tc, test_label_count_and_length_are_limited);
        tcase_add_test(tc, test_payload_with_nul_byte_is_refused);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
