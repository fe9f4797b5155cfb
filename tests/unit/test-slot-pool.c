/* Unit tests for slot-pool: lending prefers connected slots, an empty pool
 * times out, a slot given back wakes a waiter, first come first served
 * (the oldest waiter, not a newcomer), and waits are logged at debug
 * level only. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
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

        ck_assert_int_eq(slot_pool_init(&sp, "test", 4), 0);
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

        ck_assert_int_eq(slot_pool_init(&sp, "test", 1), 0);
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

        ck_assert_int_eq(slot_pool_init(&sp, "test", 1), 0);
        ck_assert_int_eq(slot_pool_take(&sp, 100, is_connected, NULL), 0);
        ck_assert_int_eq(pthread_create(&t, NULL, give_later, &sp), 0);
        ck_assert_int_eq(slot_pool_take(&sp, 10000, is_connected, NULL), 0);
        pthread_join(t, NULL);
        slot_pool_done(&sp);
}
END_TEST

struct taker {
        struct slot_pool *sp;
        int got;
};

static void *take_in_line(void *userdata)
{
        struct taker *t = userdata;

        t->got = slot_pool_take(t->sp, 10000, is_connected, NULL);
        return NULL;
}

/* Wait (bounded: 10 s) until n takers wait in line. */
static void wait_for_waiters(struct slot_pool *sp, unsigned n)
{
        for (int i = 0; i < 10000; i++) {
                unsigned w;

                pthread_mutex_lock(&sp->lock);
                w = sp->waiting;
                pthread_mutex_unlock(&sp->lock);
                if (w == n)
                        return;
                usleep(1000);
        }
        ck_abort_msg("%u takers never waited", n);
}

START_TEST(test_a_slot_given_back_goes_to_the_oldest_waiter_not_to_a_newcomer)
{
        struct slot_pool sp;
        struct taker first = {.sp = &sp, .got = -1}, second = {.sp = &sp, .got = -1};
        pthread_t t1, t2;

        ck_assert_int_eq(slot_pool_init(&sp, "test", 1), 0);
        ck_assert_int_eq(slot_pool_take(&sp, 100, is_connected, NULL), 0);
        ck_assert_int_eq(pthread_create(&t1, NULL, take_in_line, &first), 0);
        wait_for_waiters(&sp, 1);
        ck_assert_int_eq(pthread_create(&t2, NULL, take_in_line, &second), 0);
        wait_for_waiters(&sp, 2);

        /* Given back and asked for again at once: the waiters come first. */
        slot_pool_give(&sp, 0);
        ck_assert_int_eq(slot_pool_take(&sp, 0, is_connected, NULL), -ETIMEDOUT);
        pthread_join(t1, NULL);
        ck_assert_int_eq(first.got, 0);
        ck_assert_int_eq(second.got, -1);
        slot_pool_give(&sp, 0);
        pthread_join(t2, NULL);
        ck_assert_int_eq(second.got, 0);
        slot_pool_give(&sp, 0);
        ck_assert_int_eq(sp.waiting, 0);
        ck_assert_int_eq(slot_pool_take(&sp, 0, is_connected, NULL), 0);
        slot_pool_done(&sp);
}
END_TEST

START_TEST(test_a_waiter_that_gave_up_leaves_the_line)
{
        struct slot_pool sp;
        struct taker late = {.sp = &sp, .got = -1};
        pthread_t t;

        ck_assert_int_eq(slot_pool_init(&sp, "test", 1), 0);
        ck_assert_int_eq(slot_pool_take(&sp, 100, is_connected, NULL), 0);
        ck_assert_int_eq(slot_pool_take(&sp, 20, is_connected, NULL), -ETIMEDOUT);
        ck_assert_int_eq(sp.waiting, 0);
        ck_assert_int_eq(pthread_create(&t, NULL, take_in_line, &late), 0);
        wait_for_waiters(&sp, 1);
        slot_pool_give(&sp, 0);
        pthread_join(t, NULL);
        ck_assert_int_eq(late.got, 0);
        slot_pool_done(&sp);
}
END_TEST

static int capture_fd = -1;

/* Everything written to stderr since the capture started, malloc()ed. */
static char *captured(void)
{
        struct stat st;
        char *out;

        ck_assert_int_eq(fstat(capture_fd, &st), 0);
        out = calloc(1, (size_t)st.st_size + 1);
        ck_assert_ptr_nonnull(out);
        ck_assert_int_eq(pread(capture_fd, out, (size_t)st.st_size, 0), st.st_size);
        return out;
}

/* Give slot 0 back once the waiter said it waits (bounded: 10 s). */
static void *give_when_waiting(void *userdata)
{
        for (int i = 0; i < 1000; i++) {
                _cleanup_free_ char *out = captured();

                if (strstr(out, "waiting up to 10000 ms"))
                        break;
                usleep(10 * 1000);
        }
        slot_pool_give(userdata, 0);
        return NULL;
}

/* Take the only slot of a pool, wait for it while another thread gives it
 * back, then time out on it; what the pool logged at level, malloc()ed. */
static char *wait_logging_at(int level)
{
        char path[] = "/tmp/test-slot-pool-XXXXXX";
        int saved = dup(STDERR_FILENO);
        struct slot_pool sp;
        pthread_t t;
        char *out;

        capture_fd = mkostemp(path, O_APPEND | O_CLOEXEC);
        ck_assert_int_ge(capture_fd, 0);
        unlink(path);
        ck_assert_int_eq(dup2(capture_fd, STDERR_FILENO), STDERR_FILENO);
        log_set_max_level(level);

        ck_assert_int_eq(slot_pool_init(&sp, "test", 1), 0);
        ck_assert_int_eq(slot_pool_take(&sp, 100, is_connected, NULL), 0);
        ck_assert_int_eq(
                pthread_create(&t, NULL, level == LOG_DEBUG ? give_when_waiting : give_later, &sp),
                0);
        ck_assert_int_eq(slot_pool_take(&sp, 10000, is_connected, NULL), 0);
        pthread_join(t, NULL);
        ck_assert_int_eq(slot_pool_take(&sp, 10, is_connected, NULL), -ETIMEDOUT);
        slot_pool_done(&sp);

        dup2(saved, STDERR_FILENO);
        close(saved);
        out = captured();
        close(capture_fd);
        return out;
}

START_TEST(test_waits_are_logged_at_debug_level_only)
{
        _cleanup_free_ char *debug = wait_logging_at(LOG_DEBUG);
        _cleanup_free_ char *info = wait_logging_at(LOG_INFO);

        ck_assert_msg(strstr(debug, "level=debug msg=\"test pool: all 1 connections are in use; "
                                    "waiting up to 10000 ms\"\n"
                                    "level=debug msg=\"test pool: got connection 0 after waiting "),
                      "%s", debug);
        ck_assert_msg(strstr(debug,
                             "level=debug msg=\"test pool: no connection came free within 10 "
                             "ms; giving up\""),
                      "%s", debug);
        ck_assert_str_eq(info, "");
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
        tcase_add_test(tc, test_a_slot_given_back_goes_to_the_oldest_waiter_not_to_a_newcomer);
        tcase_add_test(tc, test_a_waiter_that_gave_up_leaves_the_line);
        tcase_add_test(tc, test_waits_are_logged_at_debug_level_only);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
