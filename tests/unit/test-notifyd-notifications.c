/* Unit tests of vigil-notifyd's message rules: what is a valid payment
 * event (anything else is poison), and where a failing message goes next.
 * The database and broker paths are covered by
 * tests/integration/test-notifyd.py against the real servers. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "notifyd-consumer.h"
#include "notifyd-manager.h"
#include "notifyd-notifications.h"

static int parse(const char *body, struct payment_event *e)
{
        return notifications_parse_event(body, strlen(body), e);
}

START_TEST(test_event_of_the_documented_shape_is_parsed)
{
        struct payment_event e;

        ck_assert_int_eq(parse("{\"payment_id\": 42, \"user_id\": 7, \"amount_cents\": 1999,"
                               " \"status\": \"success\", \"created_at\": "
                               "\"2026-11-24T04:20:00Z\"}",
                               &e),
                         0);
        ck_assert_int_eq(e.payment_id, 42);
        ck_assert_int_eq(e.user_id, 7);
        ck_assert_int_eq(e.amount_cents, 1999);
        ck_assert_str_eq(e.status, "success");
        ck_assert_str_eq(e.created_at, "2026-11-24T04:20:00Z");
}
END_TEST

START_TEST(test_unparsable_bodies_are_poison)
{
        struct payment_event e;
        const char *bad[] = {"",     "not json",          "[1,2]", "{\"payment_id\":", "\"x\"",
                             "null", "{\"a\":1} trailing"};

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(parse(bad[i], &e) == -EBADMSG, "accepted %s", bad[i]);
        ck_assert_int_eq(notifications_parse_event(NULL, 0, &e), -EBADMSG);
        ck_assert_int_eq(notifications_parse_event("{\"a\":\0}", 7, &e), -EBADMSG);
}
END_TEST

START_TEST(test_missing_or_mistyped_fields_are_poison)
{
        struct payment_event e;
        const char *bad[] = {
                /* missing each field in turn */
                "{\"user_id\":7,\"amount_cents\":1,\"status\":\"success\",\"created_at\":\"2026-11-"
                "24T04:20:00Z\"}",
                "{\"payment_id\":1,\"amount_cents\":1,\"status\":\"success\",\"created_at\":\"2026-"
                "11-24T04:20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":7,\"status\":\"success\",\"created_at\":\"2026-11-"
                "24T04:20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":7,\"amount_cents\":1,\"created_at\":\"2026-11-24T04:"
                "20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":7,\"amount_cents\":1,\"status\":\"success\"}",
                /* wrong types */
                "{\"payment_id\":\"1\",\"user_id\":7,\"amount_cents\":1,\"status\":\"success\","
                "\"created_at\":\"2026-11-24T04:20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":7,\"amount_cents\":19.99,\"status\":\"success\","
                "\"created_at\":\"2026-11-24T04:20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":true,\"amount_cents\":1,\"status\":\"success\","
                "\"created_at\":\"2026-11-24T04:20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":7,\"amount_cents\":1,\"status\":5,\"created_at\":"
                "\"2026-11-24T04:20:00Z\"}",
                "{\"payment_id\":null,\"user_id\":7,\"amount_cents\":1,\"status\":\"success\","
                "\"created_at\":\"2026-11-24T04:20:00Z\"}",
                /* a created_at that is no RFC 3339 time */
                "{\"payment_id\":1,\"user_id\":7,\"amount_cents\":1,\"status\":\"success\","
                "\"created_at\":\"yesterday at noon ok\"}",
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(parse(bad[i], &e) == -EINVAL, "accepted %s", bad[i]);
}
END_TEST

START_TEST(test_values_out_of_range_are_poison)
{
        struct payment_event e;
        const char *bad[] = {
                "{\"payment_id\":0,\"user_id\":7,\"amount_cents\":1,\"status\":\"success\","
                "\"created_at\":\"2026-11-24T04:20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":-7,\"amount_cents\":1,\"status\":\"success\","
                "\"created_at\":\"2026-11-24T04:20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":7,\"amount_cents\":0,\"status\":\"success\","
                "\"created_at\":\"2026-11-24T04:20:00Z\"}",
                "{\"payment_id\":99999999999999999999,\"user_id\":7,\"amount_cents\":1,\"status\":"
                "\"success\",\"created_at\":\"2026-11-24T04:20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":7,\"amount_cents\":1,\"status\":\"\",\"created_at\":"
                "\"2026-11-24T04:20:00Z\"}",
                "{\"payment_id\":1,\"user_id\":7,\"amount_cents\":1,\"status\":"
                "\"abcdefghijklmnopqrstuvwxyz0123456789\",\"created_at\":\"2026-11-24T04:20:00Z\"}",
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(parse(bad[i], &e) == -ERANGE, "accepted %s", bad[i]);
}
END_TEST

START_TEST(test_timestamps_follow_rfc3339)
{
        const char *good[] = {"2026-11-24T04:20:00Z", "2026-11-24T04:20:00.123456Z",
                              "2026-11-24T04:20:00+01:00", "2026-11-24t04:20:00-05:30",
                              "2026-12-31T23:59:60Z"};
        const char *bad[] = {
                "2026-11-24 04:20:00Z",     "2026-13-24T04:20:00Z",  "2026-11-24T24:20:00Z",
                "2026-11-24T04:20:00",      "2026-11-24T04:20:00.Z", "2026-11-24T04:20:00+0100",
                "2026-11-24T04:20:00Zjunk", "2026-00-24T04:20:00Z",  "20x6-11-24T04:20:00Z"};

        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
                ck_assert_msg(notifications_timestamp_is_valid(good[i]), "rejected %s", good[i]);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(!notifications_timestamp_is_valid(bad[i]), "accepted %s", bad[i]);
}
END_TEST

START_TEST(test_timestamps_have_days_that_exist_in_their_month)
{
        const char *good[] = {"2026-01-31T00:00:00Z", "2024-02-29T00:00:00Z",
                              "2000-02-29T00:00:00Z", "2026-04-30T00:00:00Z",
                              "2026-12-31T00:00:00Z"};
        const char *bad[] = {"2026-02-31T00:00:00Z", "2026-02-29T00:00:00Z",
                             "1900-02-29T00:00:00Z", "2026-04-31T00:00:00Z",
                             "2026-06-31T00:00:00Z", "2026-09-31T00:00:00Z",
                             "2026-11-31T00:00:00Z", "2026-02-30T00:00:00+01:00"};

        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
                ck_assert_msg(notifications_timestamp_is_valid(good[i]), "rejected %s", good[i]);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(!notifications_timestamp_is_valid(bad[i]), "accepted %s", bad[i]);
}
END_TEST

START_TEST(test_failing_messages_walk_the_retry_queues_then_park)
{
        /* Four attempts: first delivery, then retry queues 1, 2, 3. */
        ck_assert_uint_eq(notifyd_retry_queue_for(0, 4), 1);
        ck_assert_uint_eq(notifyd_retry_queue_for(1, 4), 2);
        ck_assert_uint_eq(notifyd_retry_queue_for(2, 4), 3);
        ck_assert_uint_eq(notifyd_retry_queue_for(3, 4), 0);
        /* Fewer attempts park sooner; a header beyond them parks at once. */
        ck_assert_uint_eq(notifyd_retry_queue_for(0, 2), 1);
        ck_assert_uint_eq(notifyd_retry_queue_for(1, 2), 0);
        ck_assert_uint_eq(notifyd_retry_queue_for(0, 1), 0);
        ck_assert_uint_eq(notifyd_retry_queue_for(1000, 4), 0);
}
END_TEST

START_TEST(test_config_table_has_every_shared_key)
{
        const char *keys[][2] = {{"http", "listen"},
                                 {"postgres", "dsn"},
                                 {"amqp", "url"},
                                 {"amqp", "password_file"},
                                 {"tracing", "otlp_endpoint"},
                                 {"tracing", "sample_ratio"},
                                 {"log", "level"},
                                 {"consumer", "prefetch"},
                                 {"consumer", "max_attempts"},
                                 {"processor", "send_latency_ms"},
                                 {"faults", "error_ratio"},
                                 {"faults", "latency_ms"}};

        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                bool found = false;
                for (size_t j = 0; j < notifyd_conf_table_size; j++)
                        found = found || (strcmp(notifyd_conf_table[j].section, keys[i][0]) == 0 &&
                                          strcmp(notifyd_conf_table[j].key, keys[i][1]) == 0);
                ck_assert_msg(found, "[%s] %s missing", keys[i][0], keys[i][1]);
        }
}
END_TEST

int main(void)
{
        Suite *s = suite_create("notifyd-notifications");
        TCase *tc = tcase_create("rules");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_event_of_the_documented_shape_is_parsed);
        tcase_add_test(tc, test_unparsable_bodies_are_poison);
        tcase_add_test(tc, test_missing_or_mistyped_fields_are_poison);
        tcase_add_test(tc, test_values_out_of_range_are_poison);
        tcase_add_test(tc, test_timestamps_follow_rfc3339);
        tcase_add_test(tc, test_timestamps_have_days_that_exist_in_their_month);
        tcase_add_test(tc, test_failing_messages_walk_the_retry_queues_then_park);
        tcase_add_test(tc, test_config_table_has_every_shared_key);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
