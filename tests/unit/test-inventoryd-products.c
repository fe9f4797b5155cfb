/* Unit tests of vigil-inventoryd's input rules and configuration (the
 * database paths are covered by tests/integration/test-inventoryd.py
 * against a real PostgreSQL). */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "inventoryd-cache.h"
#include "inventoryd-manager.h"
#include "inventoryd-products.h"
#include "inventoryd-reservations.h"

START_TEST(test_product_id_accepts_positive_decimal_integers)
{
        int64_t id = 0;

        ck_assert_int_eq(inventory_parse_product_id("1", &id), 0);
        ck_assert_int_eq(id, 1);
        ck_assert_int_eq(inventory_parse_product_id("17", &id), 0);
        ck_assert_int_eq(id, 17);
        ck_assert_int_eq(inventory_parse_product_id("9223372036854775807", &id), 0);
        ck_assert(id == INT64_MAX);
}
END_TEST

START_TEST(test_product_id_rejects_anything_but_plain_digits)
{
        const char *bad[] = {"",    "abc",  "1a", "-1",  "+1",    " 1", "1 ",          "1.0",
                             "1e3", "0x10", "01", "007", "1,000", "١",  "\xef\xbc\x91"};

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int64_t id = 42;
                ck_assert_msg(inventory_parse_product_id(bad[i], &id) == -EINVAL, "accepted \"%s\"",
                              bad[i]);
                ck_assert_msg(id == 42, "wrote the id for \"%s\"", bad[i]);
        }
}
END_TEST

START_TEST(test_product_id_rejects_zero_and_numbers_beyond_bigint)
{
        const char *bad[] = {"0", "9223372036854775808", "18446744073709551616",
                             "99999999999999999999", "123456789012345678901234567890"};

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int64_t id = 42;
                ck_assert_msg(inventory_parse_product_id(bad[i], &id) == -ERANGE, "accepted \"%s\"",
                              bad[i]);
                ck_assert_int_eq(id, 42);
        }
}
END_TEST

START_TEST(test_product_cache_name_is_a_valid_cache_name_for_every_id)
{
        char name[INVENTORY_CACHE_PRODUCT_NAME_MAX];

        inventory_product_cache_name(17, name);
        ck_assert_str_eq(name, "product:17");
        ck_assert(cache_name_is_valid(name));
        inventory_product_cache_name(INT64_MAX, name);
        ck_assert_str_eq(name, "product:9223372036854775807");
        ck_assert(cache_name_is_valid(name));
        ck_assert(cache_name_is_valid(INVENTORY_CACHE_PRODUCTS));
}
END_TEST

START_TEST(test_reserve_refuses_quantities_out_of_range_before_any_query)
{
        struct reservation rv = {.id = 7};

        /* No pool at all: the quantity must be refused before it is needed. */
        ck_assert_int_eq(inventory_reserve(NULL, 1, 1, 0, 900, &rv), -EINVAL);
        ck_assert_int_eq(inventory_reserve(NULL, 1, 1, -1, 900, &rv), -EINVAL);
        ck_assert_int_eq(inventory_reserve(NULL, 1, 1, INVENTORY_QUANTITY_MAX + 1, 900, &rv),
                         -EINVAL);
        ck_assert_int_eq(inventory_reserve(NULL, 1, 1, INT64_MAX, 900, &rv), -EINVAL);
        /* Nor a reservation without an owner or a lifetime. */
        ck_assert_int_eq(inventory_reserve(NULL, 1, 0, 1, 900, &rv), -EINVAL);
        ck_assert_int_eq(inventory_reserve(NULL, 1, 1, 1, 0, &rv), -EINVAL);
        ck_assert_int_eq(inventory_reserve(NULL, 1, 1, 1, 86401, &rv), -EINVAL);
        ck_assert_int_eq(rv.id, 7);
}
END_TEST

START_TEST(test_reservation_states_change_only_from_held)
{
        const char *sql = inventory_reservations_migration_sql;

        /* Every way out of 'held' is conditional on it (the three
         * statements of inventoryd-reservations.c are checked live by the
         * integration tests); here, that the function paymentd calls is. */
        ck_assert_int_ge(inventory_schema.n_migrations, 2);
        ck_assert_int_eq(inventory_schema.migrations[1].version, 2);
        ck_assert_ptr_eq(inventory_schema.migrations[1].sql, sql);
        ck_assert_ptr_nonnull(strstr(sql, "AND state = 'held'      AND expires_at > now()"));
        ck_assert_ptr_nonnull(strstr(sql, "SECURITY DEFINER"));
        ck_assert_ptr_nonnull(strstr(
                sql, "REVOKE ALL ON FUNCTION inventory.pay_reservation(bigint, bigint, bigint) "
                     "FROM PUBLIC"));
}
END_TEST

START_TEST(test_only_plain_role_names_are_granted)
{
        ck_assert(inventory_role_name_is_valid("vigil_payment"));
        ck_assert(inventory_role_name_is_valid("p2"));
        ck_assert(inventory_role_name_is_valid("_x"));
        ck_assert(!inventory_role_name_is_valid(NULL));
        ck_assert(!inventory_role_name_is_valid(""));
        ck_assert(!inventory_role_name_is_valid("2p"));
        ck_assert(!inventory_role_name_is_valid("Vigil"));
        ck_assert(!inventory_role_name_is_valid("vigil\"; DROP"));
        ck_assert(!inventory_role_name_is_valid("a b"));
        ck_assert(!inventory_role_name_is_valid("a-b"));
        ck_assert(inventory_role_name_is_valid(
                "a23456789012345678901234567890123456789012345678901234567890123"));
        ck_assert(!inventory_role_name_is_valid(
                "a234567890123456789012345678901234567890123456789012345678901234"));
        ck_assert_int_eq(inventory_grant_payment_role(NULL, "bad name"), -EINVAL);
}
END_TEST

START_TEST(test_first_migration_guards_stock_and_seeds_the_five_products)
{
        const char *names[] = {"'Laptop'", "'Wireless Mouse'", "'Mechanical Keyboard'",
                               "'4K Monitor'", "'Noise-Cancelling Headphones'"};
        const char *sql;

        ck_assert_uint_ge(inventory_schema.n_migrations, 1);
        ck_assert_int_eq(inventory_schema.migrations[0].version, 1);
        sql = inventory_schema.migrations[0].sql;
        ck_assert_ptr_nonnull(strstr(sql, "stock integer NOT NULL CHECK (stock >= 0)"));
        ck_assert_ptr_nonnull(strstr(sql, "CHECK (price_cents >= 0)"));
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                ck_assert_msg(strstr(sql, names[i]), "%s not seeded", names[i]);
        for (size_t i = 1; i < inventory_schema.n_migrations; i++)
                ck_assert_int_gt(inventory_schema.migrations[i].version,
                                 inventory_schema.migrations[i - 1].version);
}
END_TEST

START_TEST(test_config_defaults_match_the_design)
{
        struct inventoryd_config c = {0};
        struct conf_diagnostics diag = {0};

        ck_assert_int_eq(conf_load_buffer(inventoryd_conf_table, inventoryd_conf_table_size,
                                          "empty", "", 0, &c, &diag),
                         0);
        ck_assert_str_eq(c.common.http_listen, "127.0.0.1:8003");
        ck_assert_ptr_nonnull(strstr(c.postgres.dsn, "user=vigil_inventory"));
        ck_assert_str_eq(c.redis.address, "127.0.0.1:6379");
        ck_assert_int_eq(c.cache_ttl_seconds, 30);
        ck_assert_int_eq(c.cache_jitter_percent, 10);
        ck_assert_int_eq(c.cache_lock_ms, 2000);
        ck_assert_str_eq(c.auth.url, "http://127.0.0.1:8001");
        ck_assert_int_eq(c.reservations_ttl_seconds, 900);
        ck_assert_str_eq(c.reservations_payment_role, "vigil_payment");
        conf_free(inventoryd_conf_table, inventoryd_conf_table_size, &c);
        conf_diagnostics_done(&diag);
}
END_TEST

START_TEST(test_config_rejects_a_jitter_above_half_the_ttl)
{
        static const char text[] = "[cache]\njitter_percent = 51\n";
        struct inventoryd_config c = {0};
        struct conf_diagnostics diag = {0};

        ck_assert_int_eq(conf_load_buffer(inventoryd_conf_table, inventoryd_conf_table_size,
                                          "bad.conf", text, sizeof(text) - 1, &c, &diag),
                         -EINVAL);
        ck_assert_uint_eq(diag.n_errors, 1);
        ck_assert_str_eq(diag.errors[0].key, "jitter_percent");
        conf_free(inventoryd_conf_table, inventoryd_conf_table_size, &c);
        conf_diagnostics_done(&diag);
}
END_TEST

static Suite *inventoryd_products_suite(void)
{
        Suite *s = suite_create("inventoryd-products");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_product_id_accepts_positive_decimal_integers);
        tcase_add_test(tc, test_product_id_rejects_anything_but_plain_digits);
        tcase_add_test(tc, test_product_id_rejects_zero_and_numbers_beyond_bigint);
        tcase_add_test(tc, test_product_cache_name_is_a_valid_cache_name_for_every_id);
        tcase_add_test(tc, test_reserve_refuses_quantities_out_of_range_before_any_query);
        tcase_add_test(tc, test_reservation_states_change_only_from_held);
        tcase_add_test(tc, test_only_plain_role_names_are_granted);
        tcase_add_test(tc, test_first_migration_guards_stock_and_seeds_the_five_products);
        tcase_add_test(tc, test_config_defaults_match_the_design);
        tcase_add_test(tc, test_config_rejects_a_jitter_above_half_the_ttl);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(inventoryd_products_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
