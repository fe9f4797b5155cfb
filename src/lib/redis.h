/* Redis: a fixed-size connection pool over hiredis with connect and command
 * timeouts and reconnect, and a client span plus vigil_dependency_* metrics
 * (dependency="redis") per command. Argument values are never put in spans
 * or logs (they may be session ids).
 *
 * Thread-safety: a pool is shared by all threads. */
#pragma once

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "macro.h"

struct metrics_registry;
struct tracer;
struct redis_pool;

struct redis_pool_options {
        const char *address;     /* "127.0.0.1:6379" or "unix:/run/redis/redis.sock" */
        const char *password;    /* NULL: no AUTH */
        unsigned size;           /* 0: 8 */
        unsigned connect_timeout_ms; /* 0: 500 */
        unsigned command_timeout_ms; /* 0: 1000 */
        unsigned acquire_timeout_ms; /* 0: 1000 */
        struct metrics_registry *metrics;
        struct tracer *tracer;
};

DEFINE_TRIVIAL_CLEANUP_FUNC(redisReply *, freeReplyObject)

/* Does not connect; the server may be down at start-up. */
int redis_pool_new(const struct redis_pool_options *opts, struct redis_pool **ret);
void redis_pool_free(struct redis_pool *p); /* accepts NULL */

/* Run one command given as argv (binary-safe; argvlen may be NULL for
 * NUL-terminated strings). Returns 0 and the reply (which may be a
 * REDIS_REPLY_ERROR: the caller decides), -ECONNREFUSED when Redis cannot
 * be reached, -ETIMEDOUT, or -EIO when the connection broke mid-command
 * (it is reconnected on next use). ret may be NULL to discard the reply. */
int redis_command_argv(struct redis_pool *p, int argc, const char **argv, const size_t *argvlen,
                       redisReply **ret);

/* Several commands on one connection in one round trip (pipelined), e.g.
 * MULTI … EXEC. cmds[i] is a NULL-terminated argv. ret_replies (may be NULL)
 * gets n replies, each to be freed by the caller. */
int redis_pipeline(struct redis_pool *p, size_t n, const char *const *const *cmds,
                   redisReply **ret_replies);

/* PING on a pooled connection, for /ready. */
int redis_pool_ping(struct redis_pool *p);
