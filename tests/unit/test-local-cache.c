/* Unit tests for the local-cache module against a real Redis started by
 * tests/with-servers.sh: values are served from memory only while the
 * invalidation connection is up, writes anywhere drop them, a read that
 * raced a write is never stored, and size and age are bounded. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "local-cache.h"
#include "macro.h"
#include "metrics.h"
#include "redis.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(struct metrics_registry *, metrics_registry_free);

static const char *address;   /* 127.0.0.1:port */
static const char *dev_dir;   /* the dev stack's directory */
static const char *dev_stack; /* scripts/dev-stack.sh */

static char prefix[64];

static struct redis_pool *pool(void)
{
        struct redis_pool *p = NULL;
        struct redis_pool_options opts = {.address = address, .size = 2};

        ck_assert_int_eq(redis_pool_new(&opts, &p), 0);
        return p;
}

static void redis_do(struct redis_pool *p, const char *a0, const char *a1, const char *a2)
{
        const char *argv[] = {a0, a1, a2};
        int argc = a2 ? 3 : a1 ? 2 : 1;

        ck_assert_int_eq(redis_command_argv(p, argc, argv, NULL, NULL), 0);
}

static bool wait_until(bool (*cond)(void *), void *userdata, unsigned ms)
{
        for (unsigned waited = 0; waited < ms; waited += 5) {
                if (cond(userdata))
                        return true;
                usleep(5000);
        }
        return cond(userdata);
}

/* Let CLOCK_MONOTONIC pass t (a deadline of the code under test, not a
 * guess at how long something takes). */
static void sleep_until(uint64_t t)
{
        uint64_t now;

        while ((now = now_usec(CLOCK_MONOTONIC)) < t)
                usleep((useconds_t)(t - now));
}

static bool is_active(void *userdata)
{
        return local_cache_is_active(userdata);
}

static bool is_inactive(void *userdata)
{
        return !local_cache_is_active(userdata);
}

static struct local_cache *cache_with(struct redis_pool *p, unsigned max_age_ms, size_t max_bytes,
                                      struct metrics_registry *metrics)
{
        struct local_cache *c = NULL;
        struct local_cache_options opts = {
                .redis = p,
                .name = "test",
                .prefix = prefix,
                .max_age_ms = max_age_ms,
                .max_bytes = max_bytes,
                .metrics = metrics,
        };

        ck_assert_int_eq(local_cache_new(&opts, &c), 0);
        ck_assert_msg(wait_until(is_active, c, 5000), "the cache never subscribed");
        return c;
}

static struct local_cache *cache(struct redis_pool *p)
{
        return cache_with(p, 10000, 1 << 20, NULL);
}

static void key_of(char *buf, size_t size, const char *name)
{
        snprintf(buf, size, "%s%s", prefix, name);
}

/* Miss, then store value with the miss's ticket. */
static void fill(struct local_cache *c, const char *key, const char *value)
{
        char *v = NULL;
        uint64_t ticket;

        ck_assert_int_eq(local_cache_get(c, key, &v, NULL, &ticket), -ENOENT);
        ck_assert_uint_ne(ticket, LOCAL_CACHE_NO_TICKET);
        local_cache_put(c, key, value, strlen(value), ticket, 0);
}

static bool cached(struct local_cache *c, const char *key, const char *expect)
{
        _cleanup_free_ char *v = NULL;
        size_t len = 0;
        uint64_t ticket;

        if (local_cache_get(c, key, &v, &len, &ticket) < 0)
                return false;
        ck_assert_str_eq(v, expect);
        ck_assert_uint_eq(len, strlen(expect));
        return true;
}

struct probe {
        struct local_cache *cache;
        const char *key;
};

static bool gone(void *userdata)
{
        struct probe *p = userdata;
        _cleanup_free_ char *v = NULL;
        uint64_t ticket;

        return local_cache_get(p->cache, p->key, &v, NULL, &ticket) == -ENOENT;
}

START_TEST(test_serves_what_was_put)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(local_cache_freep) struct local_cache *c = cache(p);
        char key[128];

        key_of(key, sizeof(key), "served");
        fill(c, key, "value-1");
        ck_assert(cached(c, key, "value-1"));
        ck_assert(cached(c, key, "value-1"));
}
END_TEST

START_TEST(test_a_write_by_another_client_drops_the_value)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(local_cache_freep) struct local_cache *c = cache(p);
        char key[128];

        /* Filled without writing Redis first: the push of such a write
         * may land after the ticket and (rightly) void the fill. */
        key_of(key, sizeof(key), "written");
        fill(c, key, "1");
        ck_assert(cached(c, key, "1"));

        redis_do(p, "SET", key, "2");
        ck_assert_msg(wait_until(gone, &(struct probe){c, key}, 1000),
                      "a SET elsewhere did not drop the cached value");

        fill(c, key, "2");
        redis_do(p, "DEL", key, NULL);
        ck_assert_msg(wait_until(gone, &(struct probe){c, key}, 1000),
                      "a DEL elsewhere did not drop the cached value");

        fill(c, key, "3");
        redis_do(p, "FLUSHALL", NULL, NULL);
        ck_assert_msg(wait_until(gone, &(struct probe){c, key}, 1000),
                      "FLUSHALL did not drop the cached value");
}
END_TEST

START_TEST(test_a_write_outside_the_prefix_keeps_the_value)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(local_cache_freep) struct local_cache *c = cache(p);
        char key[128], marker[128], outside[160];

        key_of(key, sizeof(key), "kept");
        key_of(marker, sizeof(marker), "marker");
        snprintf(outside, sizeof(outside), "elsewhere:%s", key);
        fill(c, key, "v");
        fill(c, marker, "m");
        redis_do(p, "SET", outside, "1");
        /* Pushes come in order: once the marker's is in, any for the
         * write before it would have been too. */
        redis_do(p, "SET", marker, "1");
        ck_assert(wait_until(gone, &(struct probe){c, marker}, 1000));
        ck_assert(cached(c, key, "v"));
}
END_TEST

START_TEST(test_a_read_that_raced_a_write_is_not_stored)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(metrics_registry_freep) struct metrics_registry *m = NULL;
        _cleanup_(local_cache_freep) struct local_cache *c = NULL;
        _cleanup_free_ char *v = NULL;
        struct metric *invalidations;
        uint64_t ticket;
        char key[128];

        ck_assert_int_eq(metrics_registry_new(&m), 0);
        c = cache_with(p, 10000, 1 << 20, m);
        invalidations = metrics_child1(
                metrics_family_find(m, "vigil_local_cache_invalidations_total"), "test");
        key_of(key, sizeof(key), "raced");

        /* The reader misses and takes its ticket; then, before it stores
         * what it read, another client writes the key. */
        ck_assert_int_eq(local_cache_get(c, key, &v, NULL, &ticket), -ENOENT);
        redis_do(p, "SET", key, "new");
        for (unsigned i = 0; i < 200 && metrics_value(invalidations) < 1; i++)
                usleep(5000);
        ck_assert_double_ge(metrics_value(invalidations), 1);
        local_cache_put(c, key, "old", 3, ticket, 0);
        ck_assert(!cached(c, key, "old"));

        /* The same for this process's own write. */
        ck_assert_int_eq(local_cache_get(c, key, &v, NULL, &ticket), -ENOENT);
        local_cache_invalidate(c, key);
        local_cache_put(c, key, "old", 3, ticket, 0);
        ck_assert(!cached(c, key, "old"));
}
END_TEST

START_TEST(test_invalidate_drops_at_once)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(local_cache_freep) struct local_cache *c = cache(p);
        char key[128];

        key_of(key, sizeof(key), "mine");
        fill(c, key, "v");
        local_cache_invalidate(c, key);
        ck_assert(!cached(c, key, "v"));
}
END_TEST

START_TEST(test_values_expire)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        const uint64_t max_age = 1000 * USEC_PER_MSEC;
        _cleanup_(local_cache_freep) struct local_cache *c =
                cache_with(p, max_age / USEC_PER_MSEC, 1 << 20, NULL);
        char key[128], early[128];
        uint64_t ticket, before_fill, after_fill, early_expiry;
        char *v = NULL;

        /* The deadlines are the contract's: a value younger than max_age
         * is served and one past its expiry is not, however long this
         * thread is kept off the CPU in between (a busy machine). */
        key_of(key, sizeof(key), "aging");
        key_of(early, sizeof(early), "early");
        before_fill = now_usec(CLOCK_MONOTONIC);
        fill(c, key, "v");
        after_fill = now_usec(CLOCK_MONOTONIC);
        ck_assert_int_eq(local_cache_get(c, early, &v, NULL, &ticket), -ENOENT);
        /* An expiry earlier than max_age wins. */
        early_expiry = now_usec(CLOCK_MONOTONIC) + 5000;
        local_cache_put(c, early, "v", 1, ticket, early_expiry);
        ck_assert(cached(c, key, "v") || now_usec(CLOCK_MONOTONIC) - before_fill >= max_age);
        sleep_until(early_expiry);
        ck_assert(!cached(c, early, "v"));
        ck_assert(cached(c, key, "v") || now_usec(CLOCK_MONOTONIC) - before_fill >= max_age);
        sleep_until(after_fill + max_age);
        ck_assert(!cached(c, key, "v"));
}
END_TEST

START_TEST(test_size_is_bounded)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(metrics_registry_freep) struct metrics_registry *m = NULL;
        _cleanup_(local_cache_freep) struct local_cache *c = NULL;
        char key[128], big[1024], huge[4096];
        struct metric *entries;

        ck_assert_int_eq(metrics_registry_new(&m), 0);
        c = cache_with(p, 10000, 16384, m);
        entries = metrics_child1(metrics_family_find(m, "vigil_local_cache_entries"), "test");
        for (unsigned i = 0; i < 10000; i++) {
                char name[32];

                snprintf(name, sizeof(name), "bound:%u", i);
                key_of(key, sizeof(key), name);
                fill(c, key, "0123456789abcdef0123456789abcdef");
        }
        /* 16 KiB hold at most 16384 / (32 + 32 + the entry's own size). */
        ck_assert_double_gt(metrics_value(entries), 50);
        ck_assert_double_lt(metrics_value(entries), 16384.0 / 64);
        ck_assert(cached(c, key, "0123456789abcdef0123456789abcdef")); /* the newest stays */

        /* A value over an eighth of the budget (2 KiB) is not kept. */
        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        key_of(key, sizeof(key), "small-enough");
        fill(c, key, big);
        ck_assert(cached(c, key, big));
        memset(huge, 'y', sizeof(huge) - 1);
        huge[sizeof(huge) - 1] = '\0';
        key_of(key, sizeof(key), "too-big");
        fill(c, key, huge);
        ck_assert(!cached(c, key, huge));
}
END_TEST

struct worker {
        struct local_cache *cache;
        unsigned seed;
};

static void *hammer(void *userdata)
{
        struct worker *w = userdata;
        char key[128];

        for (unsigned i = 0; i < 20000; i++) {
                char name[32], *v = NULL;
                uint64_t ticket;

                snprintf(name, sizeof(name), "hammer:%u", rand_r(&w->seed) % 64);
                key_of(key, sizeof(key), name);
                if (local_cache_get(w->cache, key, &v, NULL, &ticket) == 0)
                        ck_assert_str_eq(v, name);
                else if (i % 7 == 0)
                        local_cache_invalidate(w->cache, key);
                else
                        local_cache_put(w->cache, key, name, strlen(name), ticket, 0);
                free(v);
        }
        return NULL;
}

START_TEST(test_threads_share_it)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(local_cache_freep) struct local_cache *c = cache_with(p, 10000, 65536, NULL);
        struct worker w[4];
        pthread_t t[4];

        for (unsigned i = 0; i < ELEMENTSOF(t); i++) {
                w[i] = (struct worker){c, i + 1};
                ck_assert_int_eq(pthread_create(&t[i], NULL, hammer, &w[i]), 0);
        }
        for (unsigned i = 0; i < ELEMENTSOF(t); i++)
                pthread_join(t[i], NULL);
}
END_TEST

START_TEST(test_bad_options_are_refused)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        struct local_cache *c = NULL;
        struct local_cache_options opts = {
                .redis = p, .name = "test", .prefix = "x:", .max_age_ms = 1000, .max_bytes = 65536};

        opts.max_age_ms = 0;
        ck_assert_int_eq(local_cache_new(&opts, &c), -EINVAL);
        opts.max_age_ms = LOCAL_CACHE_MAX_AGE_MS + 1;
        ck_assert_int_eq(local_cache_new(&opts, &c), -EINVAL);
        opts.max_age_ms = 1000;
        opts.max_bytes = 100;
        ck_assert_int_eq(local_cache_new(&opts, &c), -EINVAL);
        opts.max_bytes = 65536;
        opts.prefix = "";
        ck_assert_int_eq(local_cache_new(&opts, &c), -EINVAL);
        ck_assert_ptr_null(c);

        /* No cache at all: every lookup misses, nothing is stored. */
        {
                char *v = NULL;
                uint64_t ticket = 0;

                ck_assert_int_eq(local_cache_get(NULL, "k", &v, NULL, &ticket), -ENOENT);
                ck_assert_uint_eq(ticket, LOCAL_CACHE_NO_TICKET);
                local_cache_put(NULL, "k", "v", 1, ticket, 0);
                local_cache_invalidate(NULL, "k");
                ck_assert(!local_cache_is_active(NULL));
        }
}
END_TEST

static void dev_stack_run(const char *action)
{
        char cmd[1024];

        snprintf(cmd, sizeof(cmd), "'%s' %s '%s' redis >/dev/null", dev_stack, action, dev_dir);
        ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
}

START_TEST(test_serves_nothing_while_redis_is_gone)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(local_cache_freep) struct local_cache *c = NULL;
        char key[128];
        uint64_t ticket;
        char *v = NULL;

        if (!dev_stack || !dev_dir)
                return; /* not under with-servers.sh */
        c = cache(p);
        key_of(key, sizeof(key), "outage");
        fill(c, key, "v");

        dev_stack_run("kill");
        ck_assert_msg(wait_until(is_inactive, c, 3000), "still active with Redis killed");
        ck_assert(!cached(c, key, "v"));
        ck_assert_int_eq(local_cache_get(c, key, &v, NULL, &ticket), -ENOENT);
        ck_assert_uint_eq(ticket, LOCAL_CACHE_NO_TICKET);

        dev_stack_run("start-one");
        ck_assert_msg(wait_until(is_active, c, 5000), "not active again after Redis came back");
        /* What was cached before the outage is gone. */
        ck_assert(!cached(c, key, "v"));
        fill(c, key, "w");
        ck_assert(cached(c, key, "w"));
}
END_TEST

static Suite *local_cache_suite(void)
{
        Suite *s = suite_create("local-cache");
        TCase *tc = tcase_create("cache");

        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_serves_what_was_put);
        tcase_add_test(tc, test_a_write_by_another_client_drops_the_value);
        tcase_add_test(tc, test_a_write_outside_the_prefix_keeps_the_value);
        tcase_add_test(tc, test_a_read_that_raced_a_write_is_not_stored);
        tcase_add_test(tc, test_invalidate_drops_at_once);
        tcase_add_test(tc, test_values_expire);
        tcase_add_test(tc, test_size_is_bounded);
        tcase_add_test(tc, test_threads_share_it);
        tcase_add_test(tc, test_bad_options_are_refused);
        tcase_add_test(tc, test_serves_nothing_while_redis_is_gone);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr;
        int failed;

        address = getenv("VIGIL_REDIS_ADDRESS");
        dev_dir = getenv("VIGIL_DEV_DIR");
        dev_stack = getenv("VIGIL_DEV_STACK");
        if (!address) {
                fprintf(stderr, "SKIP: no Redis; run through tests/with-servers.sh\n");
                return 77;
        }
        snprintf(prefix, sizeof(prefix), "test:lc:%d:", (int)getpid());

        sr = srunner_create(local_cache_suite());
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
