/* Unit tests of vigil-authd's input rules (the database paths are covered by
 * the integration tests against a real PostgreSQL). */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "authd-manager.h"
#include "authd-users.h"

START_TEST(test_username_accepts_the_documented_alphabet)
{
        ck_assert_int_eq(users_validate_username("abc"), 0);
        ck_assert_int_eq(users_validate_username("Alice_01.ops-team"), 0);
        ck_assert_int_eq(
                users_validate_username(
                        "a123456789b123456789c123456789d123456789e123456789f123456789ghij"),
                0);
}
END_TEST

START_TEST(test_username_rejects_wrong_lengths)
{
        ck_assert_int_eq(users_validate_username(""), -EINVAL);
        ck_assert_int_eq(users_validate_username("ab"), -EINVAL);
        ck_assert_int_eq(
                users_validate_username(
                        "a123456789b123456789c123456789d123456789e123456789f123456789ghijk"),
                -EINVAL);
}
END_TEST

START_TEST(test_username_rejects_anything_outside_the_alphabet)
{
        const char *bad[] = {"with space", "semi;colon", "quote\"s", "tab\tname", "nl\nname",
                             "caf\xc3\xa9",  "\xff\xfe\xfd", "slash/name", "percent%41",
                             "emoji\xf0\x9f\x98\x80"};

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(users_validate_username(bad[i]) == -EINVAL, "accepted \"%s\"",
                              bad[i]);
}
END_TEST

START_TEST(test_config_table_has_every_shared_key)
{
        const char *keys[][2] = {{"http", "listen"},          {"postgres", "dsn"},
                                 {"redis", "address"},        {"tracing", "otlp_endpoint"},
                                 {"tracing", "sample_ratio"}, {"log", "level"},
                                 {"auth", "jwt_key_file"},    {"auth", "token_ttl_seconds"}};

        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                bool found = false;
                for (size_t j = 0; j < authd_conf_table_size; j++)
                        found = found || (strcmp(authd_conf_table[j].section, keys[i][0]) == 0 &&
                                          strcmp(authd_conf_table[j].key, keys[i][1]) == 0);
                ck_assert_msg(found, "[%s] %s missing", keys[i][0], keys[i][1]);
        }
}
END_TEST

int main(void)
{
        Suite *s = suite_create("authd-users");
        TCase *tc = tcase_create("validation");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_username_accepts_the_documented_alphabet);
        tcase_add_test(tc, test_username_rejects_wrong_lengths);
        tcase_add_test(tc, test_username_rejects_anything_outside_the_alphabet);
        tcase_add_test(tc, test_config_table_has_every_shared_key);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
