/* Tests for password.c: yescrypt hashes that are salted and verify, the
 * dummy hash for unknown users, length limits, and the bound on concurrent
 * hashes. Most tests use cost 1 (tens of milliseconds a hash). */
#include <check.h>
#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "macro.h"
#include "password.h"

#define FAST_COST 1
/* About a quarter of a second a hash: long enough to be caught holding a
 * slot, short enough for a unit test. */
#define SLOW_COST 5

static struct password_hasher *new_hasher(unsigned max_concurrent, unsigned queue_timeout_ms,
                                          unsigned long cost)
{
        struct password_hasher *h = NULL;

        ck_assert_int_eq(password_hasher_new(max_concurrent, queue_timeout_ms, cost, &h), 0);
        ck_assert_ptr_nonnull(h);
        return h;
}

static char *repeat(char c, size_t n)
{
        char *s = malloc(n + 1);

        ck_assert_ptr_nonnull(s);
        memset(s, c, n);
        s[n] = '\0';
        return s;
}

START_TEST(test_hash_is_salted_yescrypt)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 0, FAST_COST);
        _cleanup_free_ char *a = NULL, *b = NULL;

        ck_assert_int_eq(password_hash(h, "correct horse battery", &a), 0);
        ck_assert_int_eq(password_hash(h, "correct horse battery", &b), 0);
        ck_assert_int_eq(strncmp(a, "$y$", 3), 0);
        ck_assert_int_eq(strncmp(b, "$y$", 3), 0);
        ck_assert_str_ne(a, b);
}
END_TEST

START_TEST(test_hash_never_contains_the_password)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 0, FAST_COST);
        _cleanup_free_ char *hash = NULL;
        const char *password = "hunter2hunter2";

        ck_assert_int_eq(password_hash(h, password, &hash), 0);
        ck_assert_ptr_null(strstr(hash, password));
        ck_assert_ptr_null(strstr(hash, "hunter2"));
}
END_TEST

START_TEST(test_verify_accepts_right_password_and_refuses_wrong_one)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(2, 0, FAST_COST);
        _cleanup_free_ char *hash = NULL;

        ck_assert_int_eq(password_hash(h, "s3cret-passw0rd", &hash), 0);
        ck_assert_int_eq(password_verify(h, "s3cret-passw0rd", hash), 0);
        ck_assert_int_eq(password_verify(h, "s3cret-passw0rD", hash), -EACCES);
        ck_assert_int_eq(password_verify(h, "s3cret-passw0r", hash), -EACCES);
        ck_assert_int_eq(password_verify(h, "", hash), -EACCES);
        ck_assert_uint_eq(password_hasher_in_use(h), 0);
}
END_TEST

START_TEST(test_verify_uses_the_stored_cost)
{
        /* A hash made at another cost still verifies after a cost change. */
        _cleanup_(password_hasher_freep) struct password_hasher *old = new_hasher(1, 0, 2);
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 0, FAST_COST);
        _cleanup_free_ char *hash = NULL;

        ck_assert_int_eq(password_hash(old, "long enough", &hash), 0);
        ck_assert_int_eq(password_verify(h, "long enough", hash), 0);
}
END_TEST

START_TEST(test_verify_without_hash_always_refuses)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 0, FAST_COST);

        ck_assert_int_eq(password_verify(h, "any password at all", NULL), -EACCES);
        ck_assert_int_eq(password_verify(h, "", NULL), -EACCES);
        ck_assert_int_eq(password_verify(h, "vigil-dummy-password-never-matches", NULL), -EACCES);
}
END_TEST

START_TEST(test_hash_enforces_length_limits)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 0, FAST_COST);
        _cleanup_free_ char *shortest = repeat('a', PASSWORD_MIN_LENGTH);
        _cleanup_free_ char *too_short = repeat('a', PASSWORD_MIN_LENGTH - 1);
        _cleanup_free_ char *longest = repeat('b', PASSWORD_MAX_LENGTH);
        _cleanup_free_ char *too_long = repeat('b', PASSWORD_MAX_LENGTH + 1);
        _cleanup_free_ char *hash1 = NULL, *hash2 = NULL;
        char *none = NULL;

        ck_assert_int_eq(password_hash(h, too_short, &none), -EINVAL);
        ck_assert_int_eq(password_hash(h, "", &none), -EINVAL);
        ck_assert_int_eq(password_hash(h, too_long, &none), -EINVAL);
        ck_assert_ptr_null(none);

        ck_assert_int_eq(password_hash(h, shortest, &hash1), 0);
        ck_assert_int_eq(password_verify(h, shortest, hash1), 0);
        ck_assert_int_eq(password_hash(h, longest, &hash2), 0);
        ck_assert_int_eq(password_verify(h, longest, hash2), 0);
}
END_TEST

START_TEST(test_verify_refuses_overlong_password)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 0, FAST_COST);
        _cleanup_free_ char *longest = repeat('c', PASSWORD_MAX_LENGTH);
        _cleanup_free_ char *too_long = repeat('c', PASSWORD_MAX_LENGTH + 1);
        _cleanup_free_ char *hash = NULL;

        ck_assert_int_eq(password_hash(h, longest, &hash), 0);
        ck_assert_int_eq(password_verify(h, too_long, hash), -EACCES);
}
END_TEST

START_TEST(test_verify_accepts_password_stored_under_older_shorter_minimum)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 0, FAST_COST);
        _cleanup_free_ char *setting = crypt_gensalt_ra("$y$", FAST_COST, NULL, 0);
        _cleanup_free_ struct crypt_data *data = calloc(1, sizeof(*data));
        const char *stored;

        /* Hashed directly with libxcrypt, as an older policy allowed. */
        ck_assert_ptr_nonnull(setting);
        ck_assert_ptr_nonnull(data);
        stored = crypt_rn("short", setting, data, (int)sizeof(*data));
        ck_assert_ptr_nonnull(stored);
        ck_assert_int_eq(password_verify(h, "short", stored), 0);
        ck_assert_int_eq(password_verify(h, "shorT", stored), -EACCES);
}
END_TEST

START_TEST(test_verify_rejects_stored_hash_that_is_not_yescrypt)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 0, FAST_COST);
        static const char *const bad[] = {
                "", "*0", "*1", "$1$salt$hash", "$6$saltsalt$", "$y$", "$y$garbage", "password",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                ck_assert_msg(password_verify(h, "password", bad[i]) == -EINVAL, "hash '%s'",
                              bad[i]);
        ck_assert_uint_eq(password_hasher_in_use(h), 0);
}
END_TEST

START_TEST(test_hasher_refuses_cost_out_of_range)
{
        struct password_hasher *h = NULL;

        ck_assert_int_eq(password_hasher_new(1, 0, 12, &h), -EINVAL);
        ck_assert_ptr_null(h);
        password_hasher_free(NULL);
}
END_TEST

struct holder {
        struct password_hasher *hasher;
        atomic_bool done;
        int r;
};

static void *hold_slot(void *userdata)
{
        struct holder *holder = userdata;
        char *hash = NULL;

        holder->r = password_hash(holder->hasher, "the holder's password", &hash);
        free(hash);
        atomic_store(&holder->done, true);
        return NULL;
}

/* Start a slow hash in a thread and wait until it holds the only slot.
 * Returns false if it finished before we saw it (a very busy machine). */
static bool start_holder(struct holder *holder, pthread_t *thread)
{
        struct timespec tick = {.tv_nsec = 1000000};

        atomic_store(&holder->done, false);
        holder->r = 1;
        ck_assert_int_eq(pthread_create(thread, NULL, hold_slot, holder), 0);

        /* Bounded: a hash cannot take 10 s at this cost. */
        for (int i = 0; i < 10000; i++) {
                if (password_hasher_in_use(holder->hasher) == 1)
                        return true;
                if (atomic_load(&holder->done))
                        return false;
                nanosleep(&tick, NULL);
        }
        ck_abort_msg("the holder never took a slot");
        return false;
}

START_TEST(test_hash_gets_ebusy_when_slots_stay_taken)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 1, SLOW_COST);
        struct holder holder = {.hasher = h};
        bool busy = false;

        /* The holder needs ~250 ms; we give up after 1 ms. Only if this
         * thread stalls for the whole hash can the slot be free by then,
         * so retry a few times rather than flake. */
        for (int attempt = 0; attempt < 5 && !busy; attempt++) {
                pthread_t thread;
                char *hash = NULL;
                bool held = start_holder(&holder, &thread);
                int r = -1;

                if (held) {
                        r = password_hash(h, "the contender's password", &hash);
                        ck_assert_msg(r == -EBUSY || r == 0, "password_hash: %d", r);
                        busy = r == -EBUSY;
                        if (busy)
                                ck_assert_ptr_null(hash);
                        free(hash);
                }
                ck_assert_int_eq(pthread_join(thread, NULL), 0);
                ck_assert_int_eq(holder.r, 0);
        }
        ck_assert_msg(busy, "a second hash never waited for the only slot");
        ck_assert_uint_eq(password_hasher_in_use(h), 0);
}
END_TEST

START_TEST(test_queued_hash_runs_once_the_slot_frees)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h =
                new_hasher(1, 30000, SLOW_COST);
        struct holder holder = {.hasher = h};
        _cleanup_free_ char *hash = NULL;
        pthread_t thread;

        (void)start_holder(&holder, &thread);
        ck_assert_int_eq(password_hash(h, "the queued password", &hash), 0);
        ck_assert_int_eq(pthread_join(thread, NULL), 0);
        ck_assert_int_eq(holder.r, 0);
        ck_assert_int_eq(password_verify(h, "the queued password", hash), 0);
        ck_assert_uint_eq(password_hasher_in_use(h), 0);
}
END_TEST

START_TEST(test_verify_gets_ebusy_too)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = new_hasher(1, 1, SLOW_COST);
        struct holder holder = {.hasher = h};
        bool busy = false;

        for (int attempt = 0; attempt < 5 && !busy; attempt++) {
                pthread_t thread;
                bool held = start_holder(&holder, &thread);

                if (held) {
                        int r = password_verify(h, "whatever password", NULL);

                        ck_assert_msg(r == -EBUSY || r == -EACCES, "password_verify: %d", r);
                        busy = r == -EBUSY;
                }
                ck_assert_int_eq(pthread_join(thread, NULL), 0);
        }
        ck_assert(busy);
}
END_TEST

static Suite *password_suite(void)
{
        Suite *s = suite_create("password");
        TCase *tc = tcase_create("core");
        TCase *concurrency = tcase_create("concurrency");

        tcase_add_test(tc, test_hash_is_salted_yescrypt);
        tcase_add_test(tc, test_hash_never_contains_the_password);
        tcase_add_test(tc, test_verify_accepts_right_password_and_refuses_wrong_one);
        tcase_add_test(tc, test_verify_uses_the_stored_cost);
        tcase_add_test(tc, test_verify_without_hash_always_refuses);
        tcase_add_test(tc, test_hash_enforces_length_limits);
        tcase_add_test(tc, test_verify_refuses_overlong_password);
        tcase_add_test(tc, test_verify_accepts_password_stored_under_older_shorter_minimum);
        tcase_add_test(tc, test_verify_rejects_stored_hash_that_is_not_yescrypt);
        tcase_add_test(tc, test_hasher_refuses_cost_out_of_range);
        suite_add_tcase(s, tc);

        tcase_add_test(concurrency, test_hash_gets_ebusy_when_slots_stay_taken);
        tcase_add_test(concurrency, test_queued_hash_runs_once_the_slot_frees);
        tcase_add_test(concurrency, test_verify_gets_ebusy_too);
        tcase_set_timeout(concurrency, 60);
        suite_add_tcase(s, concurrency);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(password_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
