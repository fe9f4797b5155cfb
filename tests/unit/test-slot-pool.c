/* Unit tests for slot-pool: lending prefers connected slots, an empty pool
 * times out, and a slot given back wakes a waiter. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "macro.h"
#include "slot-pool.h"

static bool connected[4];

static bool is_connected(unsigned i, void *userdata)
{
        (void)userdata;
        return connected[i];
}

START_TEST(test_prefers_a_connected_slot)
{
        struct slot_pool sp;

        ck_assert_int_eq(slot_pool_init(&sp, 4), 0);
        connected[0] = connected[1] = connected[3] = false;
        connected[2] = true;
        ck_assert_int_eq(slot_pool_take(&sp, 100, is_connected, NULL), 2);
        /* With the connected one lent, the first free one. */
        ck_assert_int_eq(slot_pool_take(&sp, 100, is_connected, NULL), 0);
        slot_pool_give(&sp, 2);
        ck_assert_int_eq(slot_pool_take(&sp, 100, is_connected, NULL), 2);
        slot_pool_done(&sp);
}
END_TEST

START_TEST(test_an_empty_pool_times_out)
{
        struct slot_pool sp;
        uint64_t t0;

        ck_assert_int_eq(slot_pool_init(&sp, 1), 0);
        ck_assert_int_eq(slot_pool_take(&sp, 100, is_connected, NULL), 0);
        t0 = now_usec(CLOCK_MONOTONIC);
        ck_assert_int_eq(slot_pool_take(&sp, 50, is_connected, NULL), -ETIMEDOUT);
        ck_assert_uint_ge(now_usec(CLOCK_MONOTONIC) - t0, 50 * USEC_PER_MSEC);
        slot_pool_done(&sp);
}
END_TEST

static void *give_later(void *userdata)
{
        usleep(50 * 1000);
        slot_pool_give(userdata, 0);
        return NULL;
}

START_TEST(test_a_slot_given_back_wakes_a_waiter)
{
        struct slot_pool sp;
        pthread_t t;

        ck_assert_int_eq(slot_pool_init(&sp, 1), 0);
        ck_assert_int_eq(slot_pool_take(&sp, 100, is_connected, NULL), 0);
        ck_assert_int_eq(pthread_create(&t, NULL, give_later, &sp), 0);
        ck_assert_int_eq(slot_pool_take(&sp, 10000, is_connected, NULL), 0);
        pthread_join(t, NULL);
        slot_pool_done(&sp);
}
END_TEST

int main(void)
{
        Suite *s = suite_create("slot-pool");
        TCase *tc = tcase_create("slot-pool");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_prefers_a_connected_slot);
        tcase_add_test(tc, test_an_empty_pool_times_out);
        tcase_add_test(tc, test_a_slot_given_back_wakes_a_waiter);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
