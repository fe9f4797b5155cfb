/* Redis connection pool over hiredis (blocking contexts).
 *
 * A pool is a fixed array of slots, lent out by slot-pool.h. A slot's
 * context is made on first use, and freed as soon as hiredis reports an error on it (after an
 * error the stream may be out of step with the replies) or the server has
 * closed it while idle, so the next use reconnects. */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "dependency-metrics.h"
#include "macro.h"
#include "redis.h"
#include "slot-pool.h"
#include "trace.h"

#define DEFAULT_SIZE               8
#define DEFAULT_CONNECT_TIMEOUT_MS 500
#define DEFAULT_COMMAND_TIMEOUT_MS 1000
#define DEFAULT_ACQUIRE_TIMEOUT_MS 1000
#define MAX_TIMEOUT_MS             (3600U * 1000U)
#define MAX_ADDRESS_LEN            256
#define MAX_PASSWORD_LEN           1024
#define MAX_COMMAND_NAME_LEN       32
#define MAX_OPERATION_LEN          64

struct slot {
        redisContext *ctx;
};

struct redis_pool {
        struct slot_pool sp;
        atomic_bool failed; /* redis_pool_set_failed() */
        struct slot *slots;
        unsigned size;
        unsigned connect_timeout_ms;
        unsigned command_timeout_ms;
        unsigned acquire_timeout_ms;
        char *host; /* or the socket path when unix */
        int port;
        bool unix_socket;
        char *username;
        char *password;
        struct dependency_metrics metrics;
        struct tracer *tracer;
};

static struct timeval timeval_from_ms(unsigned ms)
{
        return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

/* "host:port", "[v6]:port" or "unix:/path". */
static int parse_address(struct redis_pool *p, const char *address)
{
        const char *colon;
        char *end;
        long port;

        if (strncmp(address, "unix:", 5) == 0) {
                if (address[5] != '/')
                        return -EINVAL;
                p->host = strdup(address + 5);
                if (!p->host)
                        return -ENOMEM;
                p->unix_socket = true;
                return 0;
        }
        if (address[0] == '[') {
                const char *close = strchr(address, ']');

                if (!close || close[1] != ':' || close == address + 1)
                        return -EINVAL;
                p->host = strndup(address + 1, (size_t)(close - address - 1));
                colon = close + 1;
        } else {
                colon = strrchr(address, ':');
                if (!colon || colon == address || memchr(address, ':', (size_t)(colon - address)))
                        return -EINVAL;
                p->host = strndup(address, (size_t)(colon - address));
        }
        if (!p->host)
                return -ENOMEM;
        errno = 0;
        port = strtol(colon + 1, &end, 10);
        if (errno != 0 || end == colon + 1 || *end != '\0' || port <= 0 || port > 65535)
                return -EINVAL;
        p->port = (int)port;
        return 0;
}

static bool slot_connected(unsigned i, void *userdata)
{
        const struct redis_pool *p = userdata;

        return p->slots[i].ctx != NULL;
}

/* An idle connection with something to read (an error, a close) or a
 * flagged error is not reused. */
static bool slot_idle_alive(unsigned i, void *userdata)
{
        const redisContext *ctx = ((const struct redis_pool *)userdata)->slots[i].ctx;
        struct pollfd pfd = {.fd = ctx->fd, .events = POLLIN};

        if (ctx->err || ctx->fd < 0)
                return false;
        return poll(&pfd, 1, 0) == 0;
}

static int slot_connect(unsigned i, void *userdata)
{
        struct redis_pool *p = userdata;

        return redis_pool_connect(p, &p->slots[i].ctx);
}

static void slot_disconnect(unsigned i, void *userdata)
{
        struct redis_pool *p = userdata;

        redisFree(p->slots[i].ctx);
        p->slots[i].ctx = NULL;
}

static const struct slot_pool_connections connections = {
        .connected = slot_connected,
        .idle_alive = slot_idle_alive,
        .connect = slot_connect,
        .disconnect = slot_disconnect,
};

int redis_pool_new(const struct redis_pool_options *opts, struct redis_pool **ret)
{
        _cleanup_(redis_pool_freep) struct redis_pool *p = NULL;
        int r;

        if (!opts || !ret || !opts->address)
                return -EINVAL;
        if (strnlen(opts->address, MAX_ADDRESS_LEN + 1) > MAX_ADDRESS_LEN)
                return -EINVAL;
        if (opts->password && strnlen(opts->password, MAX_PASSWORD_LEN + 1) > MAX_PASSWORD_LEN)
                return -EINVAL;
        /* A user without a password could not log in: AUTH needs both. */
        if (opts->username && (!opts->password || opts->username[0] == '\0' ||
                               strnlen(opts->username, MAX_PASSWORD_LEN + 1) > MAX_PASSWORD_LEN))
                return -EINVAL;
        if (opts->size > REDIS_POOL_MAX_SIZE || opts->connect_timeout_ms > MAX_TIMEOUT_MS ||
            opts->command_timeout_ms > MAX_TIMEOUT_MS || opts->acquire_timeout_ms > MAX_TIMEOUT_MS)
                return -EINVAL;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->size = opts->size ?: DEFAULT_SIZE;
        p->connect_timeout_ms = opts->connect_timeout_ms ?: DEFAULT_CONNECT_TIMEOUT_MS;
        p->command_timeout_ms = opts->command_timeout_ms ?: DEFAULT_COMMAND_TIMEOUT_MS;
        p->acquire_timeout_ms = opts->acquire_timeout_ms ?: DEFAULT_ACQUIRE_TIMEOUT_MS;
        p->tracer = opts->tracer;

        p->slots = calloc(p->size, sizeof(*p->slots));
        if (!p->slots)
                return -ENOMEM;
        r = slot_pool_init(&p->sp, "redis", p->size);
        if (r < 0)
                return r;
        r = parse_address(p, opts->address);
        if (r < 0)
                return r;
        if (opts->password) {
                p->password = strdup(opts->password);
                if (!p->password)
                        return -ENOMEM;
        }
        if (opts->username) {
                p->username = strdup(opts->username);
                if (!p->username)
                        return -ENOMEM;
        }
        if (opts->metrics) {
                r = dependency_metrics_get(opts->metrics, &p->metrics);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(p);
        return 0;
}

void redis_pool_free(struct redis_pool *p)
{
        if (!p)
                return;
        if (p->slots)
                slot_pool_disconnect_all(&p->sp, &connections, p);
        slot_pool_done(&p->sp);
        free(p->slots);
        free(p->host);
        free(p->username);
        erase_and_free(p->password);
        free(p);
}

int redis_pool_connect(struct redis_pool *p, redisContext **ret)
{
        struct timeval connect_tv = timeval_from_ms(p->connect_timeout_ms);
        redisContext *ctx;

        if (p->unix_socket)
                ctx = redisConnectUnixWithTimeout(p->host, connect_tv);
        else
                ctx = redisConnectWithTimeout(p->host, p->port, connect_tv);
        if (!ctx)
                return -ENOMEM;
        if (ctx->err) {
                redisFree(ctx);
                return -ECONNREFUSED;
        }
        if (redisSetTimeout(ctx, timeval_from_ms(p->command_timeout_ms)) != REDIS_OK) {
                redisFree(ctx);
                return -ECONNREFUSED;
        }
        if (p->password) {
                /* AUTH username password (an ACL user), or AUTH password
                 * (the default user). */
                const char *argv[3] = {"AUTH", p->username ?: p->password, p->password};
                redisReply *reply = redisCommandArgv(ctx, p->username ? 3 : 2, argv, NULL);
                bool ok = reply && reply->type == REDIS_REPLY_STATUS;

                if (reply)
                        freeReplyObject(reply);
                if (!ok) {
                        redisFree(ctx);
                        return reply ? -EACCES : -ECONNREFUSED;
                }
        }
        *ret = ctx;
        return 0;
}

/* An idle connection has nothing to read: when its socket is readable the
 * server closed it (CLIENT KILL, restart, idle timeout). */
static int acquire(struct redis_pool *p, struct slot **ret)
{
        int i;

        if (atomic_load(&p->failed))
                return -ECONNREFUSED;
        i = slot_pool_acquire(&p->sp, p->acquire_timeout_ms, &connections, p);
        if (i < 0)
                return i;
        *ret = &p->slots[i];
        return 0;
}

static void release(struct redis_pool *p, struct slot *s)
{
        slot_pool_release(&p->sp, (unsigned)(s - p->slots), !s->ctx || !s->ctx->err, &connections,
                          p);
}

/* The errno for a context hiredis has flagged; errno_after is errno right
 * after the failing call. A read timeout shows as EAGAIN. */
static int ctx_error(const redisContext *ctx, int errno_after)
{
        if (ctx->err == REDIS_ERR_IO &&
            (errno_after == EAGAIN || errno_after == EWOULDBLOCK || errno_after == ETIMEDOUT))
                return -ETIMEDOUT;
        if (ctx->err == REDIS_ERR_OOM)
                return -ENOMEM;
        return -EIO;
}

/* Upper-cased command name (letters only) of argv[0]: the operation in
 * spans and metrics. "OTHER" when it is not a plain word. */
static void command_name(const char *arg, size_t len, char buf[static MAX_COMMAND_NAME_LEN + 1])
{
        size_t n = 0;

        if (len == 0 || len > MAX_COMMAND_NAME_LEN) {
                snprintf(buf, MAX_COMMAND_NAME_LEN + 1, "OTHER");
                return;
        }
        for (; n < len; n++) {
                if (!isalpha((unsigned char)arg[n])) {
                        snprintf(buf, MAX_COMMAND_NAME_LEN + 1, "OTHER");
                        return;
                }
                buf[n] = (char)toupper((unsigned char)arg[n]);
        }
        buf[n] = '\0';
}

static struct span *start_span(struct redis_pool *p, const char *operation)
{
        struct span *span = span_start(p->tracer, operation, SPAN_KIND_CLIENT, NULL);

        if (span_is_recording(span)) {
                span_set_attribute_string(span, "db.system", "redis");
                span_set_attribute_string(span, "db.operation.name", operation);
                if (p->unix_socket)
                        span_set_attribute_string(span, "network.transport", "unix");
                else {
                        span_set_attribute_string(span, "server.address", p->host);
                        span_set_attribute_int(span, "server.port", p->port);
                }
        }
        return span;
}

/* Span status and metrics for one call. error_type is the errno's name or
 * the error reply's first word, never an argument. */
static void end_span(struct redis_pool *p, struct span *span, const char *operation, uint64_t start,
                     int r, const redisReply *reply)
{
        const char *error_type = NULL;
        char prefix[MAX_COMMAND_NAME_LEN + 1];

        if (r == -ETIMEDOUT)
                error_type = "timeout";
        else if (r == -ECONNREFUSED)
                error_type = "connection_refused";
        else if (r < 0)
                error_type = "io";
        else if (reply && reply->type == REDIS_REPLY_ERROR) {
                /* "WRONGTYPE Operation against …" → WRONGTYPE */
                command_name(reply->str, strcspn(reply->str, " "), prefix);
                error_type = prefix;
        }
        if (error_type) {
                span_set_attribute_string(span, "error.type", error_type);
                span_set_status(span, SPAN_STATUS_ERROR, error_type);
        }
        dependency_metrics_observe(&p->metrics, "redis", operation,
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   error_type != NULL, span_context(span));
        span_end(span);
}

int redis_command_argv(struct redis_pool *p, int argc, const char **argv, const size_t *argvlen,
                       redisReply **ret)
{
        char operation[MAX_COMMAND_NAME_LEN + 1];
        struct slot *s = NULL;
        struct span *span;
        redisReply *reply = NULL;
        uint64_t start;
        int r;

        if (!p || argc <= 0 || argc > REDIS_MAX_ARGS || !argv || !argv[0])
                return -EINVAL;

        command_name(argv[0], argvlen ? argvlen[0] : strlen(argv[0]), operation);
        span = start_span(p, operation);
        start = now_usec(CLOCK_MONOTONIC);

        r = acquire(p, &s);
        if (r >= 0) {
                reply = redisCommandArgv(s->ctx, argc, argv, argvlen);
                if (!reply)
                        r = ctx_error(s->ctx, errno);
                release(p, s);
        }

        end_span(p, span, operation, start, r, reply);
        if (r < 0 || !ret) {
                if (reply)
                        freeReplyObject(reply);
                return r;
        }
        *ret = reply;
        return 0;
}

/* "MULTI SET EXEC": the commands' names, cut at a word boundary. */
static void pipeline_name(size_t n, const char *const *const *cmds,
                          char buf[static MAX_OPERATION_LEN + 1])
{
        size_t len = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < n; i++) {
                char name[MAX_COMMAND_NAME_LEN + 1];
                size_t l;

                command_name(cmds[i][0], strlen(cmds[i][0]), name);
                l = strlen(name);
                if (len + (len > 0) + l > MAX_OPERATION_LEN)
                        break;
                if (len > 0)
                        buf[len++] = ' ';
                memcpy(buf + len, name, l + 1);
                len += l;
        }
}

int redis_pipeline(struct redis_pool *p, size_t n, const char *const *const *cmds,
                   redisReply **ret_replies)
{
        char operation[MAX_OPERATION_LEN + 1];
        _cleanup_free_ redisReply **replies = NULL;
        struct slot *s = NULL;
        struct span *span;
        uint64_t start;
        size_t got = 0;
        const redisReply *first_error = NULL;
        int r;

        if (!p || n == 0 || n > REDIS_MAX_PIPELINE || !cmds)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                size_t argc = 0;

                if (!cmds[i] || !cmds[i][0])
                        return -EINVAL;
                while (cmds[i][argc])
                        if (++argc > REDIS_MAX_ARGS)
                                return -EINVAL;
        }
        replies = calloc(n, sizeof(*replies));
        if (!replies)
                return -ENOMEM;

        pipeline_name(n, cmds, operation);
        span = start_span(p, operation);
        start = now_usec(CLOCK_MONOTONIC);

        r = acquire(p, &s);
        for (size_t i = 0; r >= 0 && i < n; i++) {
                int argc = 0;

                while (cmds[i][argc])
                        argc++;
                /* Appending only buffers: the round trip is at the first read. */
                if (redisAppendCommandArgv(s->ctx, argc, (const char **)cmds[i], NULL) != REDIS_OK)
                        r = ctx_error(s->ctx, errno);
        }
        for (; r >= 0 && got < n; got++) {
                void *reply = NULL;

                if (redisGetReply(s->ctx, &reply) != REDIS_OK || !reply) {
                        r = ctx_error(s->ctx, errno);
                        break;
                }
                replies[got] = reply;
                if (replies[got]->type == REDIS_REPLY_ERROR && !first_error)
                        first_error = replies[got];
        }
        if (s)
                release(p, s);

        /* An error reply anywhere marks the span, as for one command. */
        end_span(p, span, operation, start, r, first_error);

        if (r < 0 || !ret_replies) {
                for (size_t i = 0; i < got; i++)
                        freeReplyObject(replies[i]);
                return r;
        }
        memcpy(ret_replies, replies, n * sizeof(*replies));
        return 0;
}

void redis_pool_set_failed(struct redis_pool *p, bool failed)
{
        atomic_store(&p->failed, failed);
}

bool redis_pool_is_failed(struct redis_pool *p)
{
        return atomic_load(&p->failed);
}

int redis_pool_ping(struct redis_pool *p)
{
        _cleanup_(freeReplyObjectp) redisReply *reply = NULL;
        const char *argv[1] = {"PING"};
        int r;

        if (!p)
                return -EINVAL;

        /* A probe is not part of any trace. */
        struct span *probe = span_start_unsampled("ping");
        struct span *previous = trace_set_current(probe);

        r = redis_command_argv(p, 1, argv, NULL, &reply);
        trace_set_current(previous);
        span_end(probe);
        if (r >= 0 && (reply->type != REDIS_REPLY_STATUS || strcmp(reply->str, "PONG") != 0))
                r = -EIO;
        dependency_metrics_set_up(&p->metrics, "redis", r >= 0);
        return r;
}
