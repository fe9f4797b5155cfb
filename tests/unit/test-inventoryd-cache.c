/* Unit tests of vigil-inventoryd's cache that need no Redis: the TTL
 * jitter, names, the in-process single-flight, and the fallback to the
 * source when Redis cannot be reached. Hits, locks and invalidation against
 * a real Redis are covered by tests/integration/test-inventoryd.py. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "inventoryd-cache.h"
#include "inventoryd-singleflight.h"
#include "redis.h"

START_TEST(test_jitter_stays_within_the_configured_spread)
{
        uint64_t lo = UINT64_MAX, hi = 0;

        for (uint64_t i = 0; i < 20000; i++) {
                uint64_t v = cache_jittered_ttl_ms(30, 10, i * 7919);
                ck_assert_uint_ge(v, 27000);
                ck_assert_uint_le(v, 33000);
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
        }
        /* Both ends are reached: entries filled together spread out. */
        ck_assert_uint_eq(cache_jittered_ttl_ms(30, 10, 0), 27000);
        ck_assert_uint_eq(cache_jittered_ttl_ms(30, 10, 6000), 33000);
        ck_assert_uint_lt(lo, 27100);
        ck_assert_uint_gt(hi, 32900);
        ck_assert_uint_le(cache_jittered_ttl_ms(30, 10, UINT64_MAX), 33000);
}
END_TEST

START_TEST(test_jitter_zero_gives_the_exact_ttl_and_never_zero)
{
        ck_assert_uint_eq(cache_jittered_ttl_ms(30, 0, 12345), 30000);
        ck_assert_uint_eq(cache_jittered_ttl_ms(0, 0, 12345), 1);
        ck_assert_uint_ge(cache_jittered_ttl_ms(1, 50, 0), 500);
}
END_TEST

START_TEST(test_names_are_short_and_plain)
{
        char longest[CACHE_NAME_MAX + 2];

        ck_assert(cache_name_is_valid("products"));
        ck_assert(cache_name_is_valid("product:17"));
        ck_assert(!cache_name_is_valid(""));
        ck_assert(!cache_name_is_valid("Product:1"));
        ck_assert(!cache_name_is_valid("product 1"));
        ck_assert(!cache_name_is_valid("product:*"));
        ck_assert(!cache_name_is_valid("a\r\nFLUSHALL"));
        memset(longest, 'a', CACHE_NAME_MAX);
        longest[CACHE_NAME_MAX] = '\0';
        ck_assert(cache_name_is_valid(longest));
        longest[CACHE_NAME_MAX] = 'a';
        longest[CACHE_NAME_MAX + 1] = '\0';
        ck_assert(!cache_name_is_valid(longest));
}
END_TEST

/* ------------------------------------------------------------ single-flight */

struct flight_test {
        struct singleflight *sf;
        const char *key;
        unsigned expected_waiters;
        atomic_uint builds;
        atomic_bool release; /* set by the test to let a blocked build finish */
        int result;
};

static void sleep_ms(unsigned ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
}

/* Blocks until expected_waiters callers wait on the key (or 10 s pass, so
 * a broken single-flight fails the test rather than hanging it). */
static int build_when_everyone_waits(void *userdata, char **ret_value, size_t *ret_len)
{
        struct flight_test *t = userdata;

        atomic_fetch_add(&t->builds, 1);
        for (int i = 0; i < 10000; i++) {
                if (singleflight_waiting(t->sf, t->key) >= t->expected_waiters)
                        break;
                sleep_ms(1);
        }
        if (t->result < 0)
                return t->result;
        *ret_value = strdup("value");
        *ret_len = 5;
        return 0;
}

struct caller {
        struct flight_test *t;
        int r;
        char *value;
        bool shared;
};

static void *call_thread(void *userdata)
{
        struct caller *c = userdata;
        size_t len;

        c->r = singleflight_do(c->t->sf, c->t->key, 20000, build_when_everyone_waits, c->t,
                               &c->value, &len, &c->shared);
        return NULL;
}

static void run_callers(struct flight_test *t, size_t n, struct caller *callers)
{
        pthread_t threads[16];

        ck_assert_uint_le(n, 16);
        for (size_t i = 0; i < n; i++) {
                callers[i] = (struct caller){.t = t, .r = 1};
                ck_assert_int_eq(pthread_create(&threads[i], NULL, call_thread, &callers[i]), 0);
        }
        for (size_t i = 0; i < n; i++)
                pthread_join(threads[i], NULL);
}

START_TEST(test_concurrent_callers_of_one_key_build_once)
{
        struct flight_test t = {.key = "product:1", .expected_waiters = 7};
        struct caller callers[8];
        unsigned shared = 0;

        ck_assert_int_eq(singleflight_new(&t.sf), 0);
        run_callers(&t, 8, callers);
        ck_assert_uint_eq(atomic_load(&t.builds), 1);
        for (size_t i = 0; i < 8; i++) {
                ck_assert_int_eq(callers[i].r, 0);
                ck_assert_str_eq(callers[i].value, "value");
                shared += callers[i].shared;
                free(callers[i].value);
        }
        ck_assert_uint_eq(shared, 7);
        ck_assert_uint_eq(singleflight_waiting(t.sf, t.key), 0);
        singleflight_free(t.sf);
}
END_TEST

START_TEST(test_a_build_error_reaches_every_waiter)
{
        struct flight_test t = {.key = "product:404", .expected_waiters = 3, .result = -ENOENT};
        struct caller callers[4];

        ck_assert_int_eq(singleflight_new(&t.sf), 0);
        run_callers(&t, 4, callers);
        ck_assert_uint_eq(atomic_load(&t.builds), 1);
        for (size_t i = 0; i < 4; i++) {
                ck_assert_int_eq(callers[i].r, -ENOENT);
                ck_assert_ptr_null(callers[i].value);
        }
        singleflight_free(t.sf);
}
END_TEST

static int build_until_released(void *userdata, char **ret_value, size_t *ret_len)
{
        struct flight_test *t = userdata;

        atomic_fetch_add(&t->builds, 1);
        for (int i = 0; i < 10000 && !atomic_load(&t->release); i++)
                sleep_ms(1);
        *ret_value = strdup("slow");
        *ret_len = 4;
        return 0;
}

static void *slow_leader(void *userdata)
{
        struct caller *c = userdata;
        size_t len;

        c->r = singleflight_do(c->t->sf, c->t->key, 20000, build_until_released, c->t, &c->value,
                               &len, &c->shared);
        return NULL;
}

static int build_fast(void *userdata, char **ret_value, size_t *ret_len)
{
        struct flight_test *t = userdata;

        atomic_fetch_add(&t->builds, 1);
        *ret_value = strdup("fast");
        *ret_len = 4;
        return 0;
}

START_TEST(test_a_waiter_stops_waiting_for_a_slow_leader_after_wait_ms)
{
        struct flight_test t = {.key = "products"};
        struct caller leader = {.t = &t};
        pthread_t thread;
        char *value = NULL;
        size_t len = 0;
        bool shared = true;

        ck_assert_int_eq(singleflight_new(&t.sf), 0);
        ck_assert_int_eq(pthread_create(&thread, NULL, slow_leader, &leader), 0);
        for (int i = 0; i < 10000 && atomic_load(&t.builds) == 0; i++)
                sleep_ms(1);
        ck_assert_uint_eq(atomic_load(&t.builds), 1);

        /* The leader is stuck until released: waiting 20 ms must end in a
         * build of our own, not in a hang. */
        ck_assert_int_eq(singleflight_do(t.sf, t.key, 20, build_fast, &t, &value, &len, &shared),
                         0);
        ck_assert_str_eq(value, "fast");
        ck_assert(!shared);
        ck_assert_uint_eq(atomic_load(&t.builds), 2);
        free(value);

        atomic_store(&t.release, true);
        pthread_join(thread, NULL);
        ck_assert_int_eq(leader.r, 0);
        ck_assert_str_eq(leader.value, "slow");
        free(leader.value);
        singleflight_free(t.sf);
}
END_TEST

START_TEST(test_sequential_calls_each_build)
{
        struct flight_test t = {.key = "product:2"};
        char *value;
        size_t len;
        bool shared;

        ck_assert_int_eq(singleflight_new(&t.sf), 0);
        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(
                        singleflight_do(t.sf, t.key, 100, build_fast, &t, &value, &len, &shared),
                        0);
                ck_assert(!shared);
                free(value);
        }
        ck_assert_uint_eq(atomic_load(&t.builds), 3);
        singleflight_free(t.sf);
}
END_TEST

/* ------------------------------------------------------- Redis unreachable */

/* A loopback address where connect() is refused: a bound socket that does
 * not listen. */
static int refusing_address(char *buf, size_t size, int *ret_fd)
{
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
            getsockname(fd, (struct sockaddr *)&a, &len) < 0)
                return -errno;
        snprintf(buf, size, "127.0.0.1:%u", ntohs(a.sin_port));
        *ret_fd = fd;
        return 0;
}

static int build_from_source(void *userdata, char **ret_value, size_t *ret_len)
{
        atomic_uint *builds = userdata;

        atomic_fetch_add(builds, 1);
        *ret_value = strdup("[{\"id\":1}]");
        *ret_len = strlen(*ret_value);
        return 0;
}

static int build_not_found(void *userdata, char **ret_value, size_t *ret_len)
{
        (void)userdata;
        (void)ret_value;
        (void)ret_len;
        return -ENOENT;
}

START_TEST(test_unreachable_redis_serves_from_the_source_and_defers_invalidation)
{
        struct redis_pool *redis = NULL;
        struct cache *cache = NULL;
        char address[64], *value = NULL;
        atomic_uint builds = 0;
        size_t len = 0;
        bool hit = true;
        int fd = -1;

        ck_assert_int_eq(refusing_address(address, sizeof(address), &fd), 0);
        struct redis_pool_options ropts = {.address = address, .size = 2};
        ck_assert_int_eq(redis_pool_new(&ropts, &redis), 0);
        struct cache_options opts = {.redis = redis,
                                     .prefix = "test:",
                                     .ttl_seconds = 30,
                                     .jitter_percent = 10,
                                     .lock_ms = 2000,
                                     .wait_ms = 100};
        ck_assert_int_eq(cache_new(&opts, &cache), 0);

        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(cache_get(cache, "products", build_from_source, &builds, &value,
                                           &len, &hit),
                                 0);
                ck_assert_str_eq(value, "[{\"id\":1}]");
                ck_assert_uint_eq(len, strlen(value));
                ck_assert(!hit);
                free(value);
        }
        ck_assert_uint_eq(atomic_load(&builds), 3);

        ck_assert_int_eq(cache_get(cache, "product:9", build_not_found, NULL, &value, &len, &hit),
                         -ENOENT);
        ck_assert_int_eq(
                cache_get(cache, "bad name", build_from_source, &builds, &value, &len, &hit),
                -EINVAL);

        ck_assert(!cache_purge_pending(cache));
        ck_assert_int_lt(cache_invalidate(cache, (const char *const[]){"product:1", "products"}, 2),
                         0);
        ck_assert(cache_purge_pending(cache));
        ck_assert_int_lt(cache_maintain(cache), 0);
        ck_assert(cache_purge_pending(cache));

        cache_free(cache);
        redis_pool_free(redis);
        close(fd);
}
END_TEST

START_TEST(test_cache_refuses_options_out_of_range)
{
        struct redis_pool *redis = NULL;
        struct cache *cache = NULL;
        struct redis_pool_options ropts = {.address = "127.0.0.1:6379"};
        struct cache_options good = {.prefix = "inventory:",
                                     .ttl_seconds = 30,
                                     .jitter_percent = 10,
                                     .lock_ms = 2000,
                                     .wait_ms = 100};
        struct cache_options bad;

        ck_assert_int_eq(redis_pool_new(&ropts, &redis), 0);
        good.redis = redis;

        bad = good;
        bad.redis = NULL;
        ck_assert_int_eq(cache_new(&bad, &cache), -EINVAL);
        bad = good;
        bad.ttl_seconds = 0;
        ck_assert_int_eq(cache_new(&bad, &cache), -EINVAL);
        bad = good;
        bad.jitter_percent = 51;
        ck_assert_int_eq(cache_new(&bad, &cache), -EINVAL);
        bad = good;
        bad.prefix = "a-prefix-far-longer-than-thirty-two-bytes:";
        ck_assert_int_eq(cache_new(&bad, &cache), -EINVAL);
        ck_assert_ptr_null(cache);

        ck_assert_int_eq(cache_new(&good, &cache), 0);
        cache_set_ttl(cache, 0, 99); /* clamped, not trusted */
        cache_free(cache);
        redis_pool_free(redis);
}
END_TEST

static Suite *inventoryd_cache_suite(void)
{
        Suite *s = suite_create("inventoryd-cache");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_jitter_stays_within_the_configured_spread);
        tcase_add_test(tc, test_jitter_zero_gives_the_exact_ttl_and_never_zero);
        tcase_add_test(tc, test_names_are_short_and_plain);
        tcase_add_test(tc, test_concurrent_callers_of_one_key_build_once);
        tcase_add_test(tc, test_a_build_error_reaches_every_waiter);
        tcase_add_test(tc, test_a_waiter_stops_waiting_for_a_slow_leader_after_wait_ms);
        tcase_add_test(tc, test_sequential_calls_each_build);
        tcase_add_test(tc, test_unreachable_redis_serves_from_the_source_and_defers_invalidation);
        tcase_add_test(tc, test_cache_refuses_options_out_of_range);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(inventoryd_cache_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
