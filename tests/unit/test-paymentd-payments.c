/* Unit tests of vigil-paymentd's input rules and encodings (the database
 * paths are covered by tests/integration/test-paymentd.py against a real
 * PostgreSQL). */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "paymentd-manager.h"
#include "paymentd-payments.h"

static int64_t cents_of(const char *text)
{
        int64_t cents = -1;

        ck_assert_msg(payment_parse_amount(text, &cents) == 0, "rejected \"%s\"", text);
        return cents;
}

START_TEST(test_amount_parses_dollars_exactly_into_cents)
{
        ck_assert_int_eq(cents_of("19.99"), 1999);
        ck_assert_int_eq(cents_of("0.01"), 1);
        ck_assert_int_eq(cents_of("0.1"), 10);
        ck_assert_int_eq(cents_of("20"), 2000);
        ck_assert_int_eq(cents_of("1000000"), 100000000);
        ck_assert_int_eq(cents_of("1000000.00"), 100000000);
        /* Values binary floating point gets wrong: 0.29 * 100 = 28.999… */
        ck_assert_int_eq(cents_of("0.29"), 29);
        ck_assert_int_eq(cents_of("1.15"), 115);
        ck_assert_int_eq(cents_of("4.35"), 435);
}
END_TEST

START_TEST(test_amount_accepts_trailing_zeros_and_exponents)
{
        ck_assert_int_eq(cents_of("19.990"), 1999);
        ck_assert_int_eq(cents_of("19.99000000000000000000000000000000"), 1999);
        ck_assert_int_eq(cents_of("000019.99"), 1999);
        ck_assert_int_eq(cents_of("1.999e1"), 1999);
        ck_assert_int_eq(cents_of("1E2"), 10000);
        ck_assert_int_eq(cents_of("1e+2"), 10000);
        ck_assert_int_eq(cents_of("1999e-2"), 1999);
        ck_assert_int_eq(cents_of("1e6"), 100000000);
        ck_assert_int_eq(cents_of("100000000e-2"), 100000000);
}
END_TEST

START_TEST(test_amount_rejects_negative_zero_huge_and_fractional_cents)
{
        const char *bad[] = {
                "-19.99",
                "-0",
                "0",
                "0.00",
                "0e5",
                "-1",
                "19.999",
                "0.001",
                "0.009",
                "1000000.01",
                "1000001",
                "1e7",
                "1e100000000000",
                "99999999999999999999",
                "18446744073709551615",
                "-9223372036854775808",
                "1.5e-3",
                "1e-100000000000",
                "123456789.5",
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int64_t cents = 42;

                ck_assert_msg(payment_parse_amount(bad[i], &cents) == -EINVAL, "accepted \"%s\"",
                              bad[i]);
                ck_assert_int_eq(cents, 42); /* untouched on failure */
        }
}
END_TEST

/* "0.", zeros zeros, then tail: a number whose fraction digits would
 * offset a large exponent. malloc()ed. */
static char *long_fraction(size_t zeros, const char *tail)
{
        size_t tail_len = strlen(tail);
        char *s = malloc(2 + zeros + tail_len + 1);

        ck_assert_ptr_nonnull(s);
        memcpy(s, "0.", 2);
        memset(s + 2, '0', zeros);
        memcpy(s + 2 + zeros, tail, tail_len + 1);
        return s;
}

START_TEST(test_amount_exponent_is_exact_and_never_clamped_into_range)
{
        const char *bad[] = {
                /* 10^(1000000 - 99998) dollars: the exponent used to be
                 * clamped to 100000 and read as 10 000 cents. */
                "1e1000000",
                "1e-1000000",
                "1e99999999999999999999999999999999999999",
                "1e-99999999999999999999999999999999999999",
        };
        char *s;

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int64_t cents = 42;

                s = long_fraction(99997, bad[i]);
                ck_assert_msg(payment_parse_amount(s, &cents) == -EINVAL, "accepted 0.<zeros>%s",
                              bad[i]);
                ck_assert_int_eq(cents, 42);
                free(s);
        }

        /* Exact both ways round: 10^-99998 * 10^99999 is 10 dollars. */
        s = long_fraction(99997, "1e99999");
        ck_assert_int_eq(cents_of(s), 1000);
        free(s);
        s = long_fraction(99997, "1E+100004");
        ck_assert_int_eq(cents_of(s), 100000000);
        free(s);
        s = long_fraction(99997, "1e100005");
        ck_assert_int_eq(payment_parse_amount(s, &(int64_t){0}), -EINVAL);
        free(s);
        /* Leading zeros of an exponent do not count. */
        ck_assert_int_eq(cents_of("1e+0000000000000000000000000000002"), 10000);
        ck_assert_int_eq(cents_of("1234e-000000000000000000000000000002"), 1234);
}
END_TEST

START_TEST(test_amount_rejects_text_that_is_not_a_number)
{
        const char *bad[] = {"",    "abc",      "19.99abc", "19.",    ".5",
                             "1e",  "1e+",      "19,99",    " 19.99", "19.99 ",
                             "NaN", "Infinity", "0x10",     "1..2",   "+5"};

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int64_t cents;

                ck_assert_msg(payment_parse_amount(bad[i], &cents) == -EINVAL, "accepted \"%s\"",
                              bad[i]);
        }
        ck_assert_int_eq(payment_parse_amount(NULL, &(int64_t){0}), -EINVAL);
}
END_TEST

START_TEST(test_amount_from_json_c_keeps_the_source_text)
{
        /* The routes rely on json-c returning a parsed double's source
         * text: 0.29 must not become 0.28999999999999998. */
        struct json_object *o = json_tokener_parse("{\"amount\": 0.29}");
        struct json_object *v;

        ck_assert_ptr_nonnull(o);
        ck_assert(json_object_object_get_ex(o, "amount", &v));
        ck_assert_str_eq(json_object_get_string(v), "0.29");
        ck_assert_int_eq(cents_of(json_object_get_string(v)), 29);
        json_object_put(o);
}
END_TEST

START_TEST(test_amount_formats_with_two_decimals)
{
        char buf[PAYMENT_AMOUNT_TEXT_MAX];

        payment_format_amount(1999, buf);
        ck_assert_str_eq(buf, "19.99");
        payment_format_amount(5, buf);
        ck_assert_str_eq(buf, "0.05");
        payment_format_amount(2000, buf);
        ck_assert_str_eq(buf, "20.00");
        payment_format_amount(PAYMENT_MAX_AMOUNT_CENTS, buf);
        ck_assert_str_eq(buf, "1000000.00");
}
END_TEST

START_TEST(test_idempotency_key_accepts_printable_ascii_up_to_128)
{
        char key[IDEMPOTENCY_KEY_MAX_LENGTH + 1];

        memset(key, 'k', IDEMPOTENCY_KEY_MAX_LENGTH);
        key[IDEMPOTENCY_KEY_MAX_LENGTH] = '\0';
        ck_assert_int_eq(idempotency_key_validate("a"), 0);
        ck_assert_int_eq(idempotency_key_validate("order-42/retry 1~!"), 0);
        ck_assert_int_eq(idempotency_key_validate("3f2b8c1e-0f5d-4a7b-9c3e-2d1f0a9b8c7d"), 0);
        ck_assert_int_eq(idempotency_key_validate(key), 0);
}
END_TEST

START_TEST(test_idempotency_key_rejects_missing_long_and_unprintable)
{
        char key[IDEMPOTENCY_KEY_MAX_LENGTH + 2];
        const char *bad[] = {"tab\there", "nl\nhere", "del\x7f", "caf\xc3\xa9", "\x01"};

        memset(key, 'k', IDEMPOTENCY_KEY_MAX_LENGTH + 1);
        key[IDEMPOTENCY_KEY_MAX_LENGTH + 1] = '\0';
        ck_assert_int_eq(idempotency_key_validate(NULL), -ENOENT);
        ck_assert_int_eq(idempotency_key_validate(""), -ENOENT);
        ck_assert_int_eq(idempotency_key_validate(key), -EINVAL);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(idempotency_key_validate(bad[i]) == -EINVAL, "accepted key %zu", i);
}
END_TEST

START_TEST(test_event_json_follows_the_messaging_contract)
{
        struct payment p = {
                .id = 42,
                .user_id = 7,
                .amount_cents = 1999,
                .status = "success",
                .created_at = "2026-11-24T04:20:00Z",
        };
        struct json_object *o, *v;
        size_t len;
        char *s = payment_event_json(&p, &len);

        ck_assert_ptr_nonnull(s);
        ck_assert_uint_eq(len, strlen(s));
        o = json_tokener_parse(s);
        ck_assert_ptr_nonnull(o);
        ck_assert_int_eq(json_object_object_length(o), 5);
        ck_assert(json_object_object_get_ex(o, "payment_id", &v));
        ck_assert_int_eq(json_object_get_int64(v), 42);
        ck_assert(json_object_object_get_ex(o, "user_id", &v));
        ck_assert_int_eq(json_object_get_int64(v), 7);
        ck_assert(json_object_object_get_ex(o, "amount_cents", &v));
        ck_assert(json_object_is_type(v, json_type_int));
        ck_assert_int_eq(json_object_get_int64(v), 1999);
        ck_assert(json_object_object_get_ex(o, "status", &v));
        ck_assert_str_eq(json_object_get_string(v), "success");
        ck_assert(json_object_object_get_ex(o, "created_at", &v));
        ck_assert_str_eq(json_object_get_string(v), "2026-11-24T04:20:00Z");
        json_object_put(o);
        free(s);
}
END_TEST

START_TEST(test_migrations_create_the_tables_the_code_uses)
{
        const char *tables[] = {"payment.payments", "payment.idempotency_keys", "payment.outbox",
                                "payment.revenue"};

        ck_assert_uint_ge(paymentd_schema.n_migrations, 1);
        for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
                bool found = false;

                for (size_t j = 0; j < paymentd_schema.n_migrations; j++)
                        found = found ||
                                strstr(paymentd_schema.migrations[j].sql, tables[i]) != NULL;
                ck_assert_msg(found, "%s not created", tables[i]);
        }
        for (size_t j = 0; j < paymentd_schema.n_migrations; j++)
                ck_assert_int_eq(paymentd_schema.migrations[j].version, (int)j + 1);
}
END_TEST

static const struct conf_key *find_key(const char *section, const char *key)
{
        for (size_t i = 0; i < paymentd_conf_table_size; i++)
                if (strcmp(paymentd_conf_table[i].section, section) == 0 &&
                    strcmp(paymentd_conf_table[i].key, key) == 0)
                        return &paymentd_conf_table[i];
        return NULL;
}

START_TEST(test_config_table_has_the_documented_keys_and_defaults)
{
        const char *keys[][3] = {
                {"http", "listen", "127.0.0.1:8002"},
                {"postgres", "dsn", NULL},
                {"amqp", "url", NULL},
                {"tracing", "otlp_endpoint", NULL},
                {"log", "level", NULL},
                {"auth", "url", "http://127.0.0.1:8001"},
                {"processor", "latency_ms", "20"},
                {"processor", "decline_ratio", "0.05"},
                {"faults", "error_ratio", "0"},
                {"faults", "latency_ms", "0"},
                {"idempotency", "retention_hours", "48"},
        };

        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                const struct conf_key *k = find_key(keys[i][0], keys[i][1]);

                ck_assert_msg(k, "[%s] %s missing", keys[i][0], keys[i][1]);
                if (keys[i][2])
                        ck_assert_str_eq(k->default_value, keys[i][2]);
        }
        ck_assert_ptr_nonnull(
                strstr(find_key("postgres", "dsn")->default_value, "user=vigil_payment"));
        /* Keys are kept at least 24 hours, whatever the configuration. */
        ck_assert(find_key("idempotency", "retention_hours")->min >= 24);
}
END_TEST

int main(void)
{
        Suite *s = suite_create("paymentd-payments");
        TCase *tc = tcase_create("payments");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_amount_parses_dollars_exactly_into_cents);
        tcase_add_test(tc, test_amount_accepts_trailing_zeros_and_exponents);
        tcase_add_test(tc, test_amount_rejects_negative_zero_huge_and_fractional_cents);
        tcase_add_test(tc, test_amount_exponent_is_exact_and_never_clamped_into_range);
        tcase_add_test(tc, test_amount_rejects_text_that_is_not_a_number);
        tcase_add_test(tc, test_amount_from_json_c_keeps_the_source_text);
        tcase_add_test(tc, test_amount_formats_with_two_decimals);
        tcase_add_test(tc, test_idempotency_key_accepts_printable_ascii_up_to_128);
        tcase_add_test(tc, test_idempotency_key_rejects_missing_long_and_unprintable);
        tcase_add_test(tc, test_event_json_follows_the_messaging_contract);
        tcase_add_test(tc, test_migrations_create_the_tables_the_code_uses);
        tcase_add_test(tc, test_config_table_has_the_documented_keys_and_defaults);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
