/* Unit tests of vigil-paymentd's simulated processor: the decision rule,
 * the reloadable settings, and that a charge honours them. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "paymentd-processor.h"

START_TEST(test_decide_applies_faults_before_declines)
{
        struct processor_settings s = {.decline_ratio = 0.5, .fault_error_ratio = 0.25};

        ck_assert_int_eq(processor_decide(&s, 0.0, 0.0), PROCESSOR_FAILED);
        ck_assert_int_eq(processor_decide(&s, 0.2499, 0.9), PROCESSOR_FAILED);
        ck_assert_int_eq(processor_decide(&s, 0.25, 0.0), PROCESSOR_DECLINED);
        ck_assert_int_eq(processor_decide(&s, 0.9, 0.4999), PROCESSOR_DECLINED);
        ck_assert_int_eq(processor_decide(&s, 0.9, 0.5), PROCESSOR_APPROVED);
}
END_TEST

START_TEST(test_decide_with_zero_ratios_always_approves)
{
        struct processor_settings s = {0};

        ck_assert_int_eq(processor_decide(&s, 0.0, 0.0), PROCESSOR_APPROVED);
        ck_assert_int_eq(processor_decide(&s, 0.999999, 0.999999), PROCESSOR_APPROVED);
}
END_TEST

START_TEST(test_decide_with_ratio_one_always_applies)
{
        struct processor_settings declines = {.decline_ratio = 1.0};
        struct processor_settings faults = {.fault_error_ratio = 1.0, .decline_ratio = 1.0};

        ck_assert_int_eq(processor_decide(&declines, 0.999999, 0.999999), PROCESSOR_DECLINED);
        ck_assert_int_eq(processor_decide(&faults, 0.999999, 0.0), PROCESSOR_FAILED);
}
END_TEST

START_TEST(test_configure_clamps_out_of_range_settings)
{
        struct payment_processor p = {0};
        struct processor_settings in = {.latency_ms = -5,
                                        .decline_ratio = 7.0,
                                        .fault_latency_ms = 999999,
                                        .fault_error_ratio = -1.0},
                                  out;

        processor_configure(&p, &in);
        processor_settings_get(&p, &out);
        ck_assert_int_eq(out.latency_ms, 0);
        ck_assert(out.decline_ratio == 1.0);
        ck_assert_int_eq(out.fault_latency_ms, PROCESSOR_MAX_LATENCY_MS);
        ck_assert(out.fault_error_ratio == 0.0);
}
END_TEST

START_TEST(test_reconfigure_replaces_every_setting)
{
        struct payment_processor p = {0};
        struct processor_settings a = {20, 0.05, 0, 0.0}, b = {0, 0.0, 150, 0.5}, out;

        processor_configure(&p, &a);
        processor_configure(&p, &b);
        processor_settings_get(&p, &out);
        ck_assert_int_eq(out.latency_ms, 0);
        ck_assert(out.decline_ratio == 0.0);
        ck_assert_int_eq(out.fault_latency_ms, 150);
        ck_assert(out.fault_error_ratio == 0.5);
}
END_TEST

START_TEST(test_charge_follows_the_configured_ratios)
{
        struct payment_processor p = {0};
        struct processor_settings approve = {0}, decline = {.decline_ratio = 1.0},
                                  fail = {.fault_error_ratio = 1.0};

        /* A NULL tracer is allowed (tracing off). */
        processor_configure(&p, &approve);
        for (int i = 0; i < 50; i++)
                ck_assert_int_eq(processor_charge(&p, NULL, 1, "k", 100), PROCESSOR_APPROVED);
        processor_configure(&p, &decline);
        for (int i = 0; i < 50; i++)
                ck_assert_int_eq(processor_charge(&p, NULL, 1, "k", 100), PROCESSOR_DECLINED);
        processor_configure(&p, &fail);
        for (int i = 0; i < 50; i++)
                ck_assert_int_eq(processor_charge(&p, NULL, 1, "k", 100), PROCESSOR_FAILED);
}
END_TEST

START_TEST(test_charge_waits_at_least_the_configured_latency)
{
        struct payment_processor p = {0};
        struct processor_settings s = {.latency_ms = 30, .fault_latency_ms = 20};
        uint64_t start;

        processor_configure(&p, &s);
        start = now_usec(CLOCK_MONOTONIC);
        processor_charge(&p, NULL, 1, "k", 100);
        /* A lower bound only: a busy machine may sleep longer. */
        ck_assert_uint_ge(now_usec(CLOCK_MONOTONIC) - start, 50 * USEC_PER_MSEC);
}
END_TEST

START_TEST(test_processor_reference_is_scoped_to_the_user)
{
        char a[PROCESSOR_REFERENCE_MAX], b[PROCESSOR_REFERENCE_MAX], c[PROCESSOR_REFERENCE_MAX];
        char longest[129];

        /* Two users, one Idempotency-Key: two charges at the processor. */
        ck_assert_int_eq(processor_reference(1, "order-1", a), 0);
        ck_assert_int_eq(processor_reference(2, "order-1", b), 0);
        ck_assert_str_ne(a, b);
        ck_assert_str_ne(a, "order-1");
        /* One user retrying: one charge. */
        ck_assert_int_eq(processor_reference(1, "order-1", c), 0);
        ck_assert_str_eq(a, c);
        /* The user id ends where the key starts, whatever the key holds. */
        ck_assert_int_eq(processor_reference(1, "2:x", a), 0);
        ck_assert_int_eq(processor_reference(12, ":x", b), 0);
        ck_assert_str_ne(a, b);
        ck_assert_int_eq(processor_reference(12, "x", a), 0);
        ck_assert_int_eq(processor_reference(1, "2x", b), 0);
        ck_assert_str_ne(a, b);
        /* The longest key of the largest user id fits. */
        memset(longest, '~', 128);
        longest[128] = '\0';
        ck_assert_int_eq(processor_reference(INT64_MAX, longest, a), 0);
        ck_assert_uint_eq(strlen(a), 1 + 19 + 1 + 128);
}
END_TEST

START_TEST(test_outcomes_have_names)
{
        ck_assert_str_eq(processor_outcome_to_string(PROCESSOR_APPROVED), "approved");
        ck_assert_str_eq(processor_outcome_to_string(PROCESSOR_DECLINED), "declined");
        ck_assert_str_eq(processor_outcome_to_string(PROCESSOR_FAILED), "failed");
}
END_TEST

int main(void)
{
        Suite *s = suite_create("paymentd-processor");
        TCase *tc = tcase_create("processor");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_decide_applies_faults_before_declines);
        tcase_add_test(tc, test_decide_with_zero_ratios_always_approves);
        tcase_add_test(tc, test_decide_with_ratio_one_always_applies);
        tcase_add_test(tc, test_configure_clamps_out_of_range_settings);
        tcase_add_test(tc, test_reconfigure_replaces_every_setting);
        tcase_add_test(tc, test_charge_follows_the_configured_ratios);
        tcase_add_test(tc, test_charge_waits_at_least_the_configured_latency);
        tcase_add_test(tc, test_processor_reference_is_scoped_to_the_user);
        tcase_add_test(tc, test_outcomes_have_names);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
