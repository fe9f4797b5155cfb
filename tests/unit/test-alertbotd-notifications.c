/* Unit tests of the notifications recorded on the host: the list keeps the
 * newest, in order, whatever wraps; long values are cut at a character
 * boundary; an escalation body is read into the same fields with its
 * reason; the metric's receiver label stays within the known set. */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alertbotd-notifications.h"
#include "log.h"
#include "metrics.h"

static struct json_object *entries(struct notifications *n)
{
        struct json_object *o = notifications_json(n), *list;

        ck_assert_ptr_nonnull(o);
        ck_assert(json_object_object_get_ex(o, "notifications", &list));
        json_object_get(list);
        json_object_put(o);
        return list;
}

static const char *field(struct json_object *list, size_t i, const char *key)
{
        struct json_object *v;

        ck_assert(json_object_object_get_ex(json_object_array_get_idx(list, i), key, &v));
        return json_object_get_string(v);
}

static void record(struct notifications *n, const char *receiver, const char *fingerprint,
                   bool firing)
{
        const struct notification x = {
                .receiver = receiver,
                .firing = firing,
                .alertname = "VigilTest",
                .severity = "page",
                .service = "auth",
                .summary = "a summary",
                .starts_at = "2024-05-01T12:00:00Z",
                .fingerprint = fingerprint,
        };
        notifications_record(n, &x);
}

START_TEST(test_kept_out_of_range_is_refused)
{
        struct notifications *n = NULL;

        ck_assert_int_eq(notifications_new(0, NULL, &n), -EINVAL);
        ck_assert_int_eq(notifications_new(NOTIFICATIONS_MAX_KEPT + 1, NULL, &n), -EINVAL);
        ck_assert_ptr_null(n);
}
END_TEST

START_TEST(test_list_keeps_the_newest_first_across_wraps)
{
        struct notifications *n = NULL;
        struct json_object *list;
        char fp[16];

        ck_assert_int_eq(notifications_new(3, NULL, &n), 0);
        list = entries(n);
        ck_assert_uint_eq(json_object_array_length(list), 0);
        json_object_put(list);

        for (int i = 1; i <= 8; i++) {
                snprintf(fp, sizeof(fp), "%x", i);
                record(n, "tickets", fp, i % 2);
                list = entries(n);
                ck_assert_uint_eq(json_object_array_length(list), i < 3 ? (size_t)i : 3);
                /* Newest first: i, i-1, i-2. */
                for (size_t k = 0; k < json_object_array_length(list); k++) {
                        snprintf(fp, sizeof(fp), "%x", i - (int)k);
                        ck_assert_str_eq(field(list, k, "fingerprint"), fp);
                        ck_assert_str_eq(field(list, k, "status"),
                                         (i - (int)k) % 2 ? "firing" : "resolved");
                }
                json_object_put(list);
        }
        notifications_free(n);
}
END_TEST

START_TEST(test_long_values_are_cut_at_a_character_boundary)
{
        struct notifications *n = NULL;
        struct json_object *list;
        char summary[3000] = "";
        const char *got;

        /* "é" is two bytes: 1500 of them cannot be cut in half of one. */
        for (int i = 0; i < 1400; i++)
                strcat(summary, "\xc3\xa9");
        const struct notification x = {
                .receiver = "escalation",
                .firing = true,
                .alertname = "VigilTest",
                .summary = summary,
        };
        ck_assert_int_eq(notifications_new(2, NULL, &n), 0);
        notifications_record(n, &x);
        list = entries(n);
        got = field(list, 0, "summary");
        ck_assert_uint_le(strlen(got), 1024);
        ck_assert_uint_ge(strlen(got), 1022);
        ck_assert_uint_eq(strlen(got) % 2, 0);
        ck_assert_int_eq(strncmp(got, summary, strlen(got)), 0);
        /* Absent fields are empty, never missing. */
        ck_assert_str_eq(field(list, 0, "service"), "");
        ck_assert(!json_object_object_get_ex(json_object_array_get_idx(list, 0), "reason", NULL));
        json_object_put(list);
        notifications_free(n);
}
END_TEST

START_TEST(test_escalation_body_is_recorded_with_its_reason)
{
        struct notifications *n = NULL;
        struct json_object *list;
        const char *body =
                "{\"alert\":{\"status\":\"firing\",\"labels\":{\"alertname\":\"VigilDaemonDown\","
                "\"severity\":\"page\",\"service\":\"notify\"},\"annotations\":{\"summary\":"
                "\"vigil-notifyd does not "
                "answer\",\"runbook_url\":\"https://x/VigilDaemonDown.md\"},"
                "\"startsAt\":\"2024-05-01T12:00:00Z\",\"fingerprint\":\"c0ffee\"},"
                "\"actions\":[],\"results\":[{\"decision\":\"failed\",\"unit\":"
                "\"vigil-notifyd.service\",\"outcome\":\"job_failed\",\"detail\":\"\"}],"
                "\"source\":\"vigil-alertbotd\"}";
        struct json_object *o = json_tokener_parse(body), *bad = json_tokener_parse("{}");

        ck_assert_int_eq(notifications_new(4, NULL, &n), 0);
        ck_assert_int_eq(notifications_record_escalation(n, bad), -EINVAL);
        ck_assert_int_eq(notifications_record_escalation(n, o), 0);
        list = entries(n);
        ck_assert_uint_eq(json_object_array_length(list), 1);
        ck_assert_str_eq(field(list, 0, "receiver"), "escalation");
        ck_assert_str_eq(field(list, 0, "status"), "firing");
        ck_assert_str_eq(field(list, 0, "alertname"), "VigilDaemonDown");
        ck_assert_str_eq(field(list, 0, "severity"), "page");
        ck_assert_str_eq(field(list, 0, "service"), "notify");
        ck_assert_str_eq(field(list, 0, "summary"), "vigil-notifyd does not answer");
        ck_assert_str_eq(field(list, 0, "runbook_url"), "https://x/VigilDaemonDown.md");
        ck_assert_str_eq(field(list, 0, "fingerprint"), "c0ffee");
        ck_assert_str_eq(field(list, 0, "reason"), "failed vigil-notifyd.service: job_failed");
        json_object_put(list);
        json_object_put(o);
        json_object_put(bad);
        notifications_free(n);
}
END_TEST

START_TEST(test_metric_receiver_label_is_bounded)
{
        struct metrics_registry *r = NULL;
        struct notifications *n = NULL;
        char *text = NULL;
        size_t len;

        ck_assert_int_eq(metrics_registry_new(&r), 0);
        ck_assert_int_eq(notifications_new(2, r, &n), 0);
        record(n, "escalation", "a1", true);
        record(n, "tickets", "a2", false);
        record(n, "team-x", "a3", true);
        record(n, "team-y", "a4", true);
        ck_assert_int_eq(metrics_render(r, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        ck_assert_ptr_nonnull(strstr(text, "vigil_alertbot_notifications_total{receiver="
                                           "\"escalation\",status=\"firing\"} 1\n"));
        ck_assert_ptr_nonnull(strstr(text, "vigil_alertbot_notifications_total{receiver="
                                           "\"tickets\",status=\"resolved\"} 1\n"));
        /* The known series exist from the start. */
        ck_assert_ptr_nonnull(strstr(
                text,
                "vigil_alertbot_notifications_total{receiver=\"tickets\",status=\"firing\"} 0\n"));
        ck_assert_ptr_nonnull(strstr(
                text,
                "vigil_alertbot_notifications_total{receiver=\"other\",status=\"firing\"} 2\n"));
        ck_assert_ptr_null(strstr(text, "team-x"));
        free(text);
        notifications_free(n);
        metrics_registry_free(r);
}
END_TEST

int main(void)
{
        Suite *s = suite_create("alertbotd-notifications");
        TCase *tc = tcase_create("notifications");
        SRunner *sr;
        int failed;

        /* The records' log entries are not what is tested here. */
        log_set_max_level(LOG_ERR);
        tcase_add_test(tc, test_kept_out_of_range_is_refused);
        tcase_add_test(tc, test_list_keeps_the_newest_first_across_wraps);
        tcase_add_test(tc, test_long_values_are_cut_at_a_character_boundary);
        tcase_add_test(tc, test_escalation_body_is_recorded_with_its_reason);
        tcase_add_test(tc, test_metric_receiver_label_is_bounded);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
