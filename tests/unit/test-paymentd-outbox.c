/* Unit tests of vigil-paymentd's outbox relay that need no server: the
 * backoff schedule, option checking, start/stop without dependencies, and
 * the quiet span of housekeeping work. Publishing against real PostgreSQL
 * and RabbitMQ is covered by tests/integration/test-payment-flow.py. */
#include <check.h>
#include <stdlib.h>

#include "amqp.h"
#include "macro.h"
#include "paymentd-outbox.h"
#include "pg.h"
#include "trace.h"

START_TEST(test_backoff_doubles_from_100ms_up_to_5s)
{
        ck_assert_uint_eq(outbox_backoff_ms(1, 0.0), 100);
        ck_assert_uint_eq(outbox_backoff_ms(2, 0.0), 200);
        ck_assert_uint_eq(outbox_backoff_ms(3, 0.0), 400);
        ck_assert_uint_eq(outbox_backoff_ms(6, 0.0), 3200);
        ck_assert_uint_eq(outbox_backoff_ms(7, 0.0), 5000);
        ck_assert_uint_eq(outbox_backoff_ms(1000000, 0.0), 5000);
}
END_TEST

START_TEST(test_backoff_jitter_takes_off_at_most_a_quarter)
{
        for (double d = 0.0; d < 1.0; d += 0.125) {
                unsigned ms = outbox_backoff_ms(7, d);

                ck_assert_uint_le(ms, 5000);
                ck_assert_uint_ge(ms, 3750);
        }
        ck_assert_uint_lt(outbox_backoff_ms(7, 0.99), 5000);
}
END_TEST

static struct pg_pool *unreachable_pool(void)
{
        struct pg_pool *pool = NULL;
        /* Port 1 on loopback: refused at once. */
        struct pg_pool_options o = {
                .dsn = "host=127.0.0.1 port=1 dbname=vigil user=nobody",
                .size = 1,
                .connect_timeout_ms = 200,
        };

        ck_assert_int_eq(pg_pool_new(&o, &pool), 0);
        return pool;
}

static struct amqp_client *unreachable_amqp(void)
{
        struct amqp_client *c = NULL;
        struct amqp_client_options o = {
                .url = "amqp://vigil:pw@127.0.0.1:1/vigil",
                .connect_timeout_ms = 200,
        };

        ck_assert_int_eq(amqp_client_new(&o, &c), 0);
        return c;
}

START_TEST(test_new_rejects_missing_dependencies_and_bad_sizes)
{
        struct pg_pool *pool = unreachable_pool();
        struct amqp_client *amqp = unreachable_amqp();
        struct outbox_relay *r = NULL;

        ck_assert_int_eq(outbox_relay_new(&(struct outbox_relay_options){.amqp = amqp}, &r),
                         -EINVAL);
        ck_assert_int_eq(outbox_relay_new(&(struct outbox_relay_options){.pool = pool}, &r),
                         -EINVAL);
        ck_assert_int_eq(outbox_relay_new(&(struct outbox_relay_options){.pool = pool,
                                                                         .amqp = amqp,
                                                                         .batch_size = 1001},
                                          &r),
                         -EINVAL);
        ck_assert_int_eq(outbox_relay_new(&(struct outbox_relay_options){.pool = pool,
                                                                         .amqp = amqp,
                                                                         .poll_interval_ms = 60000},
                                          &r),
                         -EINVAL);
        ck_assert_ptr_null(r);
        amqp_client_free(amqp);
        pg_pool_free(pool);
}
END_TEST

START_TEST(test_relay_without_dependencies_stays_healthy_and_stops_promptly)
{
        struct pg_pool *pool = unreachable_pool();
        struct amqp_client *amqp = unreachable_amqp();
        struct outbox_relay *r = NULL;
        uint64_t start;

        ck_assert_int_eq(
                outbox_relay_new(&(struct outbox_relay_options){.pool = pool, .amqp = amqp}, &r),
                0);
        ck_assert(outbox_relay_is_healthy(r, 1)); /* not running yet */
        ck_assert_int_eq(outbox_relay_start(r), 0);
        ck_assert_int_eq(outbox_relay_start(r), -EALREADY);
        usleep(300 * 1000);
        /* Retrying with backoff is progress, not a hang. */
        ck_assert(outbox_relay_is_healthy(r, 30 * USEC_PER_SEC));
        ck_assert(!outbox_relay_amqp_up(r));

        start = now_usec(CLOCK_MONOTONIC);
        outbox_relay_stop(r);
        /* A backoff sleep is cut short by the stop (5 s would be a bug). */
        ck_assert_uint_lt(now_usec(CLOCK_MONOTONIC) - start, 4 * USEC_PER_SEC);
        outbox_relay_stop(r); /* idempotent */
        outbox_relay_free(r);
        outbox_relay_free(NULL);
        amqp_client_free(amqp);
        pg_pool_free(pool);
}
END_TEST

int main(void)
{
        Suite *s = suite_create("paymentd-outbox");
        TCase *tc = tcase_create("outbox");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_backoff_doubles_from_100ms_up_to_5s);
        tcase_add_test(tc, test_backoff_jitter_takes_off_at_most_a_quarter);
        tcase_add_test(tc, test_new_rejects_missing_dependencies_and_bad_sizes);
        tcase_add_test(tc, test_relay_without_dependencies_stays_healthy_and_stops_promptly);
        suite_add_tcase(s, tc);

        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
