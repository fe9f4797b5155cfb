/* Redis: a fixed-size connection pool over hiredis with connect and command
 * timeouts and reconnect, and a client span plus vigil_dependency_* metrics
 * (dependency="redis") per command. Argument values are never put in spans
 * or logs (they may be session ids).
 *
 * Thread-safety: a pool is shared by all threads. */
#pragma once

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "macro.h"

struct metrics_registry;
struct tracer;
struct redis_pool;

#define REDIS_POOL_MAX_SIZE 256
#define REDIS_MAX_ARGS      65536 /* arguments of one command */
#define REDIS_MAX_PIPELINE  1024  /* commands in one pipeline */

struct redis_pool_options {
        const char *address;         /* "127.0.0.1:6379" or "unix:/run/redis/redis.sock" */
        const char *username;        /* ACL user (AUTH username password); NULL: the default user */
        const char *password;        /* NULL: no AUTH */
        unsigned size;               /* 0: 8; at most REDIS_POOL_MAX_SIZE */
        unsigned connect_timeout_ms; /* 0: 500 */
        unsigned command_timeout_ms; /* 0: 1000 */
        unsigned acquire_timeout_ms; /* 0: 1000 */
        struct metrics_registry *metrics;
        struct tracer *tracer;
};

DEFINE_TRIVIAL_CLEANUP_FUNC(redisReply *, freeReplyObject)

/* Does not connect; the server may be down at start-up. Returns 0, -EINVAL
 * for a malformed address or options out of range (timeouts above one
 * hour), -EEXIST when metrics holds a vigil_dependency_* name as another
 * type of metric (see dependency_metrics_get()), or -ENOMEM. */
int redis_pool_new(const struct redis_pool_options *opts, struct redis_pool **ret);
void redis_pool_free(struct redis_pool *p); /* accepts NULL */
DEFINE_TRIVIAL_CLEANUP_FUNC(struct redis_pool *, redis_pool_free)

/* A new connection outside the pool, made as the pool makes its own
 * (address, AUTH, connect and command timeouts), for a caller that keeps
 * it to itself (e.g. a subscriber). Returns 0, -ECONNREFUSED (unreachable,
 * timed out), -EACCES (AUTH refused) or -ENOMEM. */
int redis_pool_connect(struct redis_pool *p, redisContext **ret);

/* Run one command given as argv (binary-safe; argvlen may be NULL for
 * NUL-terminated strings). Returns 0 and the reply (which may be a
 * REDIS_REPLY_ERROR: the caller decides), -ECONNREFUSED when Redis cannot
 * be reached, -EACCES when it refuses the password, -ETIMEDOUT when no
 * connection is free within acquire_timeout_ms or no reply comes within
 * command_timeout_ms, or -EIO when the connection broke mid-command. After
 * a timeout or a break the connection is dropped and a new one made on
 * next use; an idle connection the server has closed is noticed before
 * use and replaced. While the server is down a command fails with
 * -ECONNREFUSED, or with -EIO when it went out on a pooled connection whose
 * close had not reached the client yet (which one is a race: callers treat
 * both as "Redis unreachable"); the broken connection is dropped, so once
 * each connected slot has been tried only -ECONNREFUSED remains, and the
 * first command after the server is back succeeds. ret may be NULL to
 * discard the reply. -EINVAL for argc
 * outside 1..REDIS_MAX_ARGS. The span is named by the command ("GET") and
 * records db.system=redis, db.operation.name, server.address/port, and for
 * an error reply error.type = its first word. */
int redis_command_argv(struct redis_pool *p, int argc, const char **argv, const size_t *argvlen,
                       redisReply **ret);

/* Several commands on one connection in one round trip (pipelined), e.g.
 * MULTI … EXEC. cmds[i] is a NULL-terminated argv of NUL-terminated
 * strings. ret_replies (may be NULL) is an array of n that gets n replies,
 * each to be freed by the caller; on failure nothing is returned. Errors
 * as redis_command_argv(); -EINVAL for n outside 1..REDIS_MAX_PIPELINE.
 * One span, named by the commands ("MULTI SET EXEC"). */
int redis_pipeline(struct redis_pool *p, size_t n, const char *const *const *cmds,
                   redisReply **ret_replies);

/* PING on a pooled connection, for /ready. Sets
 * vigil_dependency_up{dependency="redis"} to the outcome. Returns 0 or a
 * negative errno as redis_command_argv(), -EIO for an answer not PONG. */
int redis_pool_ping(struct redis_pool *p);
/* While failed, every command fails at once with -ECONNREFUSED, as when the
 * server is down: for [faults] fail_dependency. Any thread. */
void redis_pool_set_failed(struct redis_pool *p, bool failed);
bool redis_pool_is_failed(struct redis_pool *p);
