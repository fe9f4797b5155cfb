/* Unit tests for the redis module against a real Redis started by
 * tests/with-servers.sh (dev-stack.sh): round trips, binary safety,
 * pipelines, pool exhaustion, timeouts, reconnects and error replies. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dependency-metrics.h"
#include "macro.h"
#include "metrics.h"
#include "otlp-sink.h"
#include "redis.h"
#include "trace.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(struct metrics_registry *, metrics_registry_free);

static const char *address;   /* 127.0.0.1:port */
static const char *dev_dir;   /* the dev stack's directory */
static const char *dev_stack; /* scripts/dev-stack.sh */

static struct redis_pool *pool_with(unsigned size, unsigned command_timeout_ms,
                                    unsigned acquire_timeout_ms, struct metrics_registry *metrics)
{
        struct redis_pool *p = NULL;
        struct redis_pool_options opts = {
                .address = address,
                .size = size,
                .command_timeout_ms = command_timeout_ms,
                .acquire_timeout_ms = acquire_timeout_ms,
                .metrics = metrics,
        };

        ck_assert_int_eq(redis_pool_new(&opts, &p), 0);
        return p;
}

static struct redis_pool *pool(void)
{
        return pool_with(2, 0, 0, NULL);
}

/* Run a command given as NUL-terminated strings; the caller frees. */
static redisReply *command(struct redis_pool *p, int argc, const char **argv)
{
        redisReply *reply = NULL;

        ck_assert_int_eq(redis_command_argv(p, argc, argv, NULL, &reply), 0);
        ck_assert_ptr_nonnull(reply);
        return reply;
}

static long long client_id(struct redis_pool *p)
{
        const char *argv[] = {"CLIENT", "ID"};
        _cleanup_(freeReplyObjectp) redisReply *reply = command(p, 2, argv);

        ck_assert_int_eq(reply->type, REDIS_REPLY_INTEGER);
        return reply->integer;
}

static void test_key(char *buf, size_t size, const char *tag)
{
        snprintf(buf, size, "test:%s:%d", tag, (int)getpid());
}

START_TEST(test_command_round_trip)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(freeReplyObjectp) redisReply *set = NULL, *get = NULL;
        char key[64];

        test_key(key, sizeof(key), "roundtrip");
        set = command(p, 3, (const char *[]){"SET", key, "hello"});
        ck_assert_int_eq(set->type, REDIS_REPLY_STATUS);
        ck_assert_str_eq(set->str, "OK");
        get = command(p, 2, (const char *[]){"get", key});
        ck_assert_int_eq(get->type, REDIS_REPLY_STRING);
        ck_assert_str_eq(get->str, "hello");
        ck_assert_int_eq(redis_pool_ping(p), 0);
        /* A discarded reply is freed by the pool. */
        ck_assert_int_eq(redis_command_argv(p, 2, (const char *[]){"DEL", key}, NULL, NULL), 0);
}
END_TEST

START_TEST(test_values_are_binary_safe)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        _cleanup_(freeReplyObjectp) redisReply *get = NULL;
        char key[64], value[1024];
        const char *argv[3];
        size_t argvlen[3];

        for (size_t i = 0; i < sizeof(value); i++)
                value[i] = (char)(i * 7); /* NULs, CR, LF and high bytes */
        memcpy(value, "\r\n$-1\r\n\0", 8);
        test_key(key, sizeof(key), "binary");
        argv[0] = "SET";
        argvlen[0] = 3;
        argv[1] = key;
        argvlen[1] = strlen(key);
        argv[2] = value;
        argvlen[2] = sizeof(value);
        ck_assert_int_eq(redis_command_argv(p, 3, argv, argvlen, NULL), 0);

        argv[0] = "GET";
        ck_assert_int_eq(redis_command_argv(p, 2, argv, argvlen, &get), 0);
        ck_assert_int_eq(get->type, REDIS_REPLY_STRING);
        ck_assert_uint_eq(get->len, sizeof(value));
        ck_assert_int_eq(memcmp(get->str, value, sizeof(value)), 0);
}
END_TEST

START_TEST(test_pipeline_runs_multi_exec_in_one_round_trip)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool();
        char key[64];
        redisReply *replies[5] = {};

        test_key(key, sizeof(key), "pipeline");
        {
                const char *del[] = {"DEL", key, NULL};
                const char *multi[] = {"MULTI", NULL};
                const char *set[] = {"SET", key, "41", NULL};
                const char *incr[] = {"INCR", key, NULL};
                const char *exec[] = {"EXEC", NULL};
                const char *const *cmds[] = {del, multi, set, incr, exec};

                ck_assert_int_eq(redis_pipeline(p, 5, cmds, replies), 0);
        }
        ck_assert_int_eq(replies[0]->type, REDIS_REPLY_INTEGER);
        ck_assert_str_eq(replies[1]->str, "OK");
        ck_assert_str_eq(replies[2]->str, "QUEUED");
        ck_assert_str_eq(replies[3]->str, "QUEUED");
        ck_assert_int_eq(replies[4]->type, REDIS_REPLY_ARRAY);
        ck_assert_uint_eq(replies[4]->elements, 2);
        ck_assert_str_eq(replies[4]->element[0]->str, "OK");
        ck_assert_int_eq(replies[4]->element[1]->integer, 42);
        for (size_t i = 0; i < 5; i++)
                freeReplyObject(replies[i]);

        ck_assert_int_eq(redis_pipeline(p, 0, NULL, NULL), -EINVAL);
}
END_TEST

struct blocker {
        struct redis_pool *p;
        const char *key;
        int r;
};

static void *block_on_list(void *arg)
{
        struct blocker *b = arg;
        const char *argv[] = {"BLPOP", b->key, "10"};

        b->r = redis_command_argv(b->p, 3, argv, NULL, NULL);
        return NULL;
}

/* Wait (bounded) until Redis reports a client blocked in BLPOP. */
static void wait_for_blocked_client(struct redis_pool *observer)
{
        for (int i = 0; i < 500; i++) {
                const char *argv[] = {"INFO", "clients"};
                _cleanup_(freeReplyObjectp) redisReply *info = command(observer, 2, argv);

                if (!strstr(info->str, "blocked_clients:0"))
                        return;
                usleep(10 * 1000);
        }
        ck_abort_msg("no client blocked in BLPOP within 5 s");
}

START_TEST(test_exhausted_pool_times_out_and_recovers)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool_with(1, 15000, 100, NULL);
        _cleanup_(redis_pool_freep) struct redis_pool *other = pool();
        struct blocker b = {.p = p, .r = 1};
        char key[64];
        pthread_t t;

        test_key(key, sizeof(key), "exhaust");
        b.key = key;
        ck_assert_int_eq(pthread_create(&t, NULL, block_on_list, &b), 0);
        wait_for_blocked_client(other);

        ck_assert_int_eq(redis_pool_ping(p), -ETIMEDOUT);

        ck_assert_int_eq(
                redis_command_argv(other, 3, (const char *[]){"RPUSH", key, "x"}, NULL, NULL), 0);
        pthread_join(t, NULL);
        ck_assert_int_eq(b.r, 0);
        ck_assert_int_eq(redis_pool_ping(p), 0);
}
END_TEST

START_TEST(test_blocking_command_times_out_and_connection_is_replaced)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool_with(1, 200, 0, NULL);
        long long before, after;
        char key[64];

        test_key(key, sizeof(key), "timeout");
        before = client_id(p);
        ck_assert_int_eq(redis_command_argv(p, 3, (const char *[]){"BLPOP", key, "5"}, NULL, NULL),
                         -ETIMEDOUT);
        after = client_id(p);
        ck_assert_int_ne(before, after);
        ck_assert_int_eq(redis_pool_ping(p), 0);
}
END_TEST

START_TEST(test_reconnects_after_client_kill)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool_with(1, 0, 0, NULL);
        _cleanup_(redis_pool_freep) struct redis_pool *killer = pool_with(1, 0, 0, NULL);
        _cleanup_(freeReplyObjectp) redisReply *killed = NULL;
        long long before;

        before = client_id(p);
        killed = command(killer, 4, (const char *[]){"CLIENT", "KILL", "TYPE", "normal"});
        ck_assert_int_eq(killed->type, REDIS_REPLY_INTEGER);
        ck_assert_int_ge(killed->integer, 1);
        /* The closed idle connection is noticed before use. */
        ck_assert_int_eq(redis_pool_ping(p), 0);
        ck_assert_int_ne(client_id(p), before);
}
END_TEST

static void dev_stack_run(const char *action)
{
        char cmd[1024];

        snprintf(cmd, sizeof(cmd), "'%s' %s '%s' redis >/dev/null", dev_stack, action, dev_dir);
        ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
}

START_TEST(test_reconnects_after_server_restart_and_crash)
{
        const unsigned size = 2;
        _cleanup_(redis_pool_freep) struct redis_pool *p = pool_with(size, 0, 0, NULL);

        if (!dev_stack || !dev_dir)
                return; /* not under with-servers.sh */
        ck_assert_int_eq(redis_pool_ping(p), 0);
        dev_stack_run("restart");
        ck_assert_int_eq(redis_pool_ping(p), 0);

        /* While the server is down every ping fails as unreachable: -EIO
         * when a pooled connection is used before its close has reached
         * us, -ECONNREFUSED once no connection can be made. A broken
         * connection is dropped, so within one ping per slot and one more
         * nothing is left but the refused connect. */
        dev_stack_run("kill");
        for (unsigned i = 0;; i++) {
                int r = redis_pool_ping(p);

                ck_assert_msg(r == -ECONNREFUSED || r == -EIO, "ping while down: %d", r);
                if (r == -ECONNREFUSED)
                        break;
                ck_assert_msg(i < size, "-EIO %u times from a pool of %u", i + 1, size);
        }
        dev_stack_run("start-one");
        ck_assert_int_eq(redis_pool_ping(p), 0);
}
END_TEST

START_TEST(test_error_reply_is_returned_as_reply)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = NULL;
        _cleanup_(freeReplyObjectp) redisReply *reply = NULL;
        struct dependency_metrics dm;
        struct redis_pool *p;
        char key[64];

        ck_assert_int_eq(metrics_registry_new(&r), 0);
        p = pool_with(1, 0, 0, r);
        test_key(key, sizeof(key), "wrongtype");
        ck_assert_int_eq(
                redis_command_argv(p, 3, (const char *[]){"SET", key, "not a number"}, NULL, NULL),
                0);
        reply = command(p, 2, (const char *[]){"INCR", key});
        ck_assert_int_eq(reply->type, REDIS_REPLY_ERROR);
        ck_assert_ptr_nonnull(strstr(reply->str, "ERR"));
        /* The connection stays usable after an error reply. */
        ck_assert_int_eq(redis_pool_ping(p), 0);

        ck_assert_int_eq(dependency_metrics_get(r, &dm), 0);
        ck_assert_double_eq(metrics_value(metrics_child2(dm.errors, "redis", "INCR")), 1);
        ck_assert_uint_eq(metrics_histogram_count(metrics_child2(dm.duration, "redis", "SET")), 1);
        ck_assert_double_eq(metrics_value(metrics_child2(dm.errors, "redis", "SET")), 0);
        ck_assert_double_eq(metrics_value(metrics_child1(dm.up, "redis")), 1);
        redis_pool_free(p);
}
END_TEST

static int closed_port(void)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
        close(fd);
        return ntohs(sa.sin_port);
}

START_TEST(test_closed_port_is_connection_refused)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = NULL;
        char addr[64];
        struct redis_pool_options opts = {.address = addr};

        snprintf(addr, sizeof(addr), "127.0.0.1:%d", closed_port());
        ck_assert_int_eq(redis_pool_new(&opts, &p), 0);
        ck_assert_int_eq(redis_pool_ping(p), -ECONNREFUSED);
        ck_assert_int_eq(redis_command_argv(p, 1, (const char *[]){"PING"}, NULL, NULL),
                         -ECONNREFUSED);
}
END_TEST

START_TEST(test_pool_new_rejects_bad_addresses)
{
        static const char *const bad[] = {
                "localhost",     ":6379",    "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
                "127.0.0.1:12x", "::1:6379", "[::1]6379",  "[]:6379",     "unix:relative",
        };
        struct redis_pool *p = NULL;
        struct redis_pool_options opts = {};

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                opts.address = bad[i];
                ck_assert_msg(redis_pool_new(&opts, &p) == -EINVAL, "%s accepted", bad[i]);
        }
        opts.address = "127.0.0.1:6379";
        opts.size = REDIS_POOL_MAX_SIZE + 1;
        ck_assert_int_eq(redis_pool_new(&opts, &p), -EINVAL);
        opts.size = 0;
        opts.address = "[::1]:6379";
        ck_assert_int_eq(redis_pool_new(&opts, &p), 0);
        redis_pool_free(p);
        opts.address = "unix:/run/redis/redis.sock";
        ck_assert_int_eq(redis_pool_new(&opts, &p), 0);
        redis_pool_free(p);
        redis_pool_free(NULL);
        ck_assert_int_eq(redis_command_argv(NULL, 1, (const char *[]){"PING"}, NULL, NULL),
                         -EINVAL);
}
END_TEST

START_TEST(test_password_is_sent_with_auth)
{
        _cleanup_(redis_pool_freep) struct redis_pool *open = pool_with(1, 0, 0, NULL);
        _cleanup_(redis_pool_freep) struct redis_pool *wrong = NULL, *right = NULL;
        struct redis_pool_options opts = {.address = address};

        ck_assert_int_eq(redis_command_argv(open, 4,
                                            (const char *[]){"CONFIG", "SET", "requirepass", "s3"},
                                            NULL, NULL),
                         0);
        opts.password = "nope";
        ck_assert_int_eq(redis_pool_new(&opts, &wrong), 0);
        opts.password = "s3";
        ck_assert_int_eq(redis_pool_new(&opts, &right), 0);

        ck_assert_int_eq(redis_pool_ping(wrong), -EACCES);
        ck_assert_int_eq(redis_pool_ping(right), 0);
        ck_assert_int_eq(redis_command_argv(right, 4,
                                            (const char *[]){"CONFIG", "SET", "requirepass", ""},
                                            NULL, NULL),
                         0);
}
END_TEST

START_TEST(test_acl_user_logs_in_with_username_and_password)
{
        _cleanup_(redis_pool_freep) struct redis_pool *open = pool_with(1, 0, 0, NULL);
        _cleanup_(redis_pool_freep) struct redis_pool *as_default = NULL, *wrong = NULL,
                                                      *right = NULL, *bad = NULL;
        struct redis_pool_options opts = {.address = address};
        char user[64];

        snprintf(user, sizeof(user), "vigil-test-%d", (int)getpid());
        ck_assert_int_eq(redis_command_argv(open, 7,
                                            (const char *[]){"ACL", "SETUSER", user, "on",
                                                             ">s3cret", "~*", "+@all"},
                                            NULL, NULL),
                         0);
        /* The user's password alone is the default user's: refused. */
        opts.password = "s3cret";
        ck_assert_int_eq(redis_pool_new(&opts, &as_default), 0);
        opts.username = user;
        opts.password = "nope";
        ck_assert_int_eq(redis_pool_new(&opts, &wrong), 0);
        opts.password = "s3cret";
        ck_assert_int_eq(redis_pool_new(&opts, &right), 0);

        ck_assert_int_eq(redis_pool_ping(wrong), -EACCES);
        ck_assert_int_eq(redis_pool_ping(right), 0);
        {
                _cleanup_(freeReplyObjectp) redisReply *reply =
                        command(right, 2, (const char *[]){"ACL", "WHOAMI"});
                ck_assert_int_eq(reply->type, REDIS_REPLY_STRING);
                ck_assert_str_eq(reply->str, user);
        }
        /* The default user has no password here: AUTH with one fails. */
        ck_assert_int_eq(redis_pool_ping(as_default), -EACCES);
        /* A user without a password is a configuration error. */
        opts.password = NULL;
        ck_assert_int_eq(redis_pool_new(&opts, &bad), -EINVAL);
        ck_assert_int_eq(
                redis_command_argv(open, 3, (const char *[]){"ACL", "DELUSER", user}, NULL, NULL),
                0);
}
END_TEST

START_TEST(test_spans_name_the_command_and_never_hold_arguments)
{
        _cleanup_free_ char *bodies = NULL;
        struct otlp_sink sink;
        struct tracer *t = NULL;
        struct redis_pool *p = NULL;
        char endpoint[64];
        struct tracer_options topts = {.service_name = "vigil-test", .sample_ratio = 1.0};
        struct redis_pool_options opts = {.address = address};

        otlp_sink_start(&sink);
        snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%u/v1/traces", sink.port);
        topts.endpoint = endpoint;
        ck_assert_int_eq(tracer_new(&topts, &t), 0);
        opts.tracer = t;
        ck_assert_int_eq(redis_pool_new(&opts, &p), 0);

        ck_assert_int_eq(redis_command_argv(p, 3,
                                            (const char *[]){"SET", "secret-key", "secret-value"},
                                            NULL, NULL),
                         0);
        {
                const char *multi[] = {"MULTI", NULL};
                const char *incr[] = {"INCR", "secret-key", NULL};
                const char *exec[] = {"EXEC", NULL};
                const char *const *cmds[] = {multi, incr, exec};

                ck_assert_int_eq(redis_pipeline(p, 3, cmds, NULL), 0);
        }
        redis_pool_free(p);
        tracer_free(t); /* flushes */
        bodies = otlp_sink_stop(&sink);

        ck_assert_ptr_nonnull(strstr(bodies, "\"SET\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"MULTI INCR EXEC\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"redis\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"db.operation.name\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"server.port\""));
        ck_assert_ptr_null(strstr(bodies, "secret-key"));
        ck_assert_ptr_null(strstr(bodies, "secret-value"));
}
END_TEST

static Suite *redis_suite(void)
{
        Suite *s = suite_create("redis");
        TCase *tc = tcase_create("commands");

        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_command_round_trip);
        tcase_add_test(tc, test_values_are_binary_safe);
        tcase_add_test(tc, test_pipeline_runs_multi_exec_in_one_round_trip);
        tcase_add_test(tc, test_error_reply_is_returned_as_reply);
        tcase_add_test(tc, test_password_is_sent_with_auth);
        tcase_add_test(tc, test_acl_user_logs_in_with_username_and_password);
        tcase_add_test(tc, test_spans_name_the_command_and_never_hold_arguments);
        suite_add_tcase(s, tc);

        tc = tcase_create("pool");
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_pool_new_rejects_bad_addresses);
        tcase_add_test(tc, test_exhausted_pool_times_out_and_recovers);
        tcase_add_test(tc, test_blocking_command_times_out_and_connection_is_replaced);
        tcase_add_test(tc, test_reconnects_after_client_kill);
        tcase_add_test(tc, test_closed_port_is_connection_refused);
        tcase_add_test(tc, test_reconnects_after_server_restart_and_crash);
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

        sr = srunner_create(redis_suite());
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
