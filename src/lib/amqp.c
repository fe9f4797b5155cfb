/* AMQP client over rabbitmq-c 0.11.
 *
 * One connection, one channel (1) in confirm mode that both publishes and
 * consumes. Every frame is read by one function, handle_frame(), whoever
 * is waiting: deliveries that arrive while a publisher waits for its
 * confirms are read completely and kept in a small FIFO (bounded by the
 * prefetch window) until amqp_receive() hands them out. Message content
 * (header and body frames) is read here rather than by amqp_read_message(),
 * so the announced body size is checked before anything is allocated.
 *
 * After any failure the connection is destroyed: a half-known protocol
 * state (a confirm that may still come, a channel the broker closed) is
 * never reused. */
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "amqp.h"
#include "dependency-metrics.h"
#include "macro.h"
#include "metrics.h"
#include "trace.h"

/* FRAME_MAX: the frames we accept, and so the size of each of the two
 * buffers rabbitmq-c keeps per connection. Larger bodies arrive in several
 * frames; ours are well under a kilobyte. */
#define CHANNEL                    1
#define FRAME_MAX                  32768
#define DEFAULT_CONNECT_TIMEOUT_MS 2000
#define DEFAULT_RPC_TIMEOUT_MS     5000
#define DEFAULT_HEARTBEAT_SECONDS  30
#define MAX_TIMEOUT_MS             (3600U * 1000U)
#define MAX_HEARTBEAT_SECONDS      600
#define MAX_URL_LEN                1024
#define MAX_ERROR_LEN              256
#define MAX_STASHED                (AMQP_MAX_PREFETCH + 16)

struct stashed {
        struct amqp_delivery *delivery;
        struct stashed *next;
};

/* One message of a batch waiting for its confirm. */
struct pending {
        uint64_t tag;
        const char *message_id;
        bool confirmed;
        bool nacked;
        bool returned;
        struct span *span;
};

struct amqp_client {
        amqp_connection_state_t conn;
        atomic_bool connected;
        uint64_t connection_id;
        uint64_t next_publish_tag;
        bool consuming;
        char *consume_queue;

        char *host;
        int port;
        char *vhost;
        char *user;
        char *password;
        char *connection_name;
        unsigned connect_timeout_ms;
        unsigned rpc_timeout_ms;
        unsigned heartbeat_seconds;
        char last_error[MAX_ERROR_LEN];

        struct stashed *stash_head, *stash_tail;
        size_t n_stashed;

        /* The batch being confirmed, for handle_frame(). */
        struct pending *pending;
        size_t n_pending;

        struct tracer *tracer;
        struct dependency_metrics dependencies;
        struct metric *publish_ack, *publish_nack, *publish_returned, *publish_error;
};

static void set_error(struct amqp_client *c, const char *format, ...) _printf_(2, 3);
static void set_error(struct amqp_client *c, const char *format, ...)
{
        va_list ap;
        int n;

        n = snprintf(c->last_error, sizeof(c->last_error), "%s:%d/%s: ", c->host, c->port,
                     c->vhost);
        if (n < 0 || (size_t)n >= sizeof(c->last_error))
                return;
        va_start(ap, format);
        vsnprintf(c->last_error + n, sizeof(c->last_error) - (size_t)n, format, ap);
        va_end(ap);
}

static struct timeval timeval_from_usec(uint64_t usec)
{
        return (struct timeval){.tv_sec = (time_t)(usec / USEC_PER_SEC),
                                .tv_usec = (suseconds_t)(usec % USEC_PER_SEC)};
}

static uint64_t deadline_after_ms(unsigned ms)
{
        return now_usec(CLOCK_MONOTONIC) + (uint64_t)ms * USEC_PER_MSEC;
}

static void delivery_free_contents(struct amqp_delivery *d)
{
        free(d->exchange);
        free(d->routing_key);
        free(d->message_id);
        free(d->content_type);
        free(d->traceparent);
        free(d->tracestate);
        free(d->body);
}

static void stash_clear(struct amqp_client *c)
{
        while (c->stash_head) {
                struct stashed *s = c->stash_head;

                c->stash_head = s->next;
                delivery_free_contents(s->delivery);
                free(s->delivery);
                free(s);
        }
        c->stash_tail = NULL;
        c->n_stashed = 0;
}

/* Drop the connection without a word to the broker (it is broken, or its
 * state is unknown). */
static void teardown(struct amqp_client *c)
{
        if (c->conn) {
                amqp_destroy_connection(c->conn);
                c->conn = NULL;
        }
        stash_clear(c);
        c->consuming = false;
        atomic_store(&c->connected, false);
        dependency_metrics_set_up(&c->dependencies, "amqp", false);
}

/* A library status of a call on an open connection: a timeout or anything
 * else, which means the connection is gone. */
static int fail_status(struct amqp_client *c, int status, const char *what)
{
        set_error(c, "%s: %s", what, amqp_error_string2(status));
        teardown(c);
        return status == AMQP_STATUS_TIMEOUT ? -ETIMEDOUT : -ECONNRESET;
}

static int errno_from_reply_code(int code)
{
        switch (code) {
        case AMQP_ACCESS_REFUSED:
        case AMQP_NOT_ALLOWED:
                return -EACCES;
        case AMQP_NOT_FOUND:
                return -ENOENT;
        case AMQP_PRECONDITION_FAILED:
                return -EBADE;
        default:
                return -ECONNRESET;
        }
}

/* The broker closed the channel or the connection: confirm it, then drop
 * the connection. Returns the errno for the reply code. */
static int broker_closed(struct amqp_client *c, const amqp_method_t *method, const char *what)
{
        int code = 0;

        if (method->id == AMQP_CHANNEL_CLOSE_METHOD) {
                const amqp_channel_close_t *m = method->decoded;
                amqp_channel_close_ok_t ok = {0};

                code = m->reply_code;
                set_error(c, "%s: channel closed by the broker: %d %.*s", what, code,
                          (int)m->reply_text.len, (const char *)m->reply_text.bytes);
                amqp_send_method(c->conn, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
                /* Close the connection politely but without waiting long. */
                struct timeval tv = {.tv_sec = 1};
                amqp_set_rpc_timeout(c->conn, &tv);
                amqp_connection_close(c->conn, AMQP_REPLY_SUCCESS);
        } else if (method->id == AMQP_CONNECTION_CLOSE_METHOD) {
                const amqp_connection_close_t *m = method->decoded;
                amqp_connection_close_ok_t ok = {0};

                code = m->reply_code;
                set_error(c, "%s: connection closed by the broker: %d %.*s", what, code,
                          (int)m->reply_text.len, (const char *)m->reply_text.bytes);
                amqp_send_method(c->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        } else {
                set_error(c, "%s: unexpected method %s", what, amqp_method_name(method->id));
        }
        teardown(c);
        return errno_from_reply_code(code);
}

/* The outcome of a synchronous call (declare, qos, consume, …). */
static int check_rpc(struct amqp_client *c, const char *what)
{
        amqp_rpc_reply_t reply = amqp_get_rpc_reply(c->conn);

        switch (reply.reply_type) {
        case AMQP_RESPONSE_NORMAL:
                return 0;
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
                return fail_status(c, reply.library_error, what);
        case AMQP_RESPONSE_SERVER_EXCEPTION:
                return broker_closed(c, &reply.reply, what);
        default:
                set_error(c, "%s: no reply", what);
                teardown(c);
                return -ECONNRESET;
        }
}

/* Wait for the next frame until deadline (CLOCK_MONOTONIC µs). Returns 0,
 * -ETIMEDOUT (the connection stays), or -ECONNRESET. */
static int wait_frame(struct amqp_client *c, uint64_t deadline, amqp_frame_t *ret)
{
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        struct timeval tv = timeval_from_usec(deadline > now ? deadline - now : 0);
        int status;

        status = amqp_simple_wait_frame_noblock(c->conn, ret, &tv);
        if (status == AMQP_STATUS_TIMEOUT)
                return -ETIMEDOUT;
        if (status != AMQP_STATUS_OK)
                return fail_status(c, status, "receive");
        return 0;
}

static char *bytes_dup(amqp_bytes_t b)
{
        char *s = malloc(b.len + 1);

        if (!s)
                return NULL;
        if (b.len > 0)
                memcpy(s, b.bytes, b.len);
        s[b.len] = '\0';
        return s;
}

/* A short property or header string, or NULL (absent, too long, or
 * containing NUL). Returns -ENOMEM only. */
static int property_dup(amqp_bytes_t b, char **ret)
{
        *ret = NULL;
        if (b.len == 0 || b.len > AMQP_MAX_PROPERTY_LEN || memchr(b.bytes, '\0', b.len))
                return 0;
        *ret = bytes_dup(b);
        return *ret ? 0 : -ENOMEM;
}

static bool field_to_int(const amqp_field_value_t *v, int64_t *ret)
{
        switch (v->kind) {
        case AMQP_FIELD_KIND_I8:
                *ret = v->value.i8;
                return true;
        case AMQP_FIELD_KIND_U8:
                *ret = v->value.u8;
                return true;
        case AMQP_FIELD_KIND_I16:
                *ret = v->value.i16;
                return true;
        case AMQP_FIELD_KIND_U16:
                *ret = v->value.u16;
                return true;
        case AMQP_FIELD_KIND_I32:
                *ret = v->value.i32;
                return true;
        case AMQP_FIELD_KIND_U32:
                *ret = v->value.u32;
                return true;
        case AMQP_FIELD_KIND_I64:
                *ret = v->value.i64;
                return true;
        case AMQP_FIELD_KIND_U64:
                if (v->value.u64 > INT64_MAX)
                        return false;
                *ret = (int64_t)v->value.u64;
                return true;
        default:
                return false;
        }
}

static bool key_is(amqp_bytes_t key, const char *name)
{
        size_t n = strlen(name);

        return key.len == n && memcmp(key.bytes, name, n) == 0;
}

int amqp_delivery_read_properties(const amqp_basic_properties_t *p, struct amqp_delivery *d)
{
        int r;

        if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
                r = property_dup(p->message_id, &d->message_id);
                if (r < 0)
                        return r;
        }
        if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) {
                r = property_dup(p->content_type, &d->content_type);
                if (r < 0)
                        return r;
        }
        if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
                d->timestamp = p->timestamp <= INT64_MAX ? (int64_t)p->timestamp : 0;
        if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
                return 0;
        for (int i = 0; i < p->headers.num_entries; i++) {
                const amqp_table_entry_t *e = &p->headers.entries[i];
                bool is_string = e->value.kind == AMQP_FIELD_KIND_UTF8 ||
                                 e->value.kind == AMQP_FIELD_KIND_BYTES;
                int64_t n;

                if (key_is(e->key, "traceparent") && is_string && !d->traceparent) {
                        r = property_dup(e->value.value.bytes, &d->traceparent);
                        if (r < 0)
                                return r;
                } else if (key_is(e->key, "tracestate") && is_string && !d->tracestate) {
                        r = property_dup(e->value.value.bytes, &d->tracestate);
                        if (r < 0)
                                return r;
                } else if (key_is(e->key, AMQP_ATTEMPT_HEADER) && field_to_int(&e->value, &n)) {
                        d->attempt = n >= 0 && n <= 1000000 ? (int)n : 0;
                }
        }
        return 0;
}

/* Read the header and body frames that follow a basic.deliver or
 * basic.return. The properties go into d (may be NULL: skip them), the
 * body too when keep_body and not larger than AMQP_MAX_BODY_SIZE. */
static int read_content(struct amqp_client *c, struct amqp_delivery *d, bool keep_body)
{
        uint64_t deadline = deadline_after_ms(c->rpc_timeout_ms);
        amqp_frame_t frame;
        uint64_t body_size, received = 0;
        char *body = NULL;
        int r;

        r = wait_frame(c, deadline, &frame);
        if (r == -ETIMEDOUT) {
                set_error(c, "timed out reading a message");
                teardown(c);
                return -ECONNRESET;
        }
        if (r < 0)
                return r;
        if (frame.frame_type != AMQP_FRAME_HEADER || frame.channel != CHANNEL) {
                set_error(c, "protocol error: expected a content header");
                teardown(c);
                return -ECONNRESET;
        }
        body_size = frame.payload.properties.body_size;
        if (d) {
                r = amqp_delivery_read_properties(frame.payload.properties.decoded, d);
                if (r < 0)
                        return r;
                if (keep_body && body_size > AMQP_MAX_BODY_SIZE)
                        d->body_too_large = true;
                else if (keep_body) {
                        body = malloc(body_size + 1);
                        if (!body)
                                return -ENOMEM;
                }
        }

        while (received < body_size) {
                r = wait_frame(c, deadline, &frame);
                if (r == -ETIMEDOUT) {
                        set_error(c, "timed out reading a message body");
                        teardown(c);
                        r = -ECONNRESET;
                }
                if (r < 0) {
                        free(body);
                        return r;
                }
                if (frame.frame_type != AMQP_FRAME_BODY || frame.channel != CHANNEL ||
                    frame.payload.body_fragment.len > body_size - received) {
                        free(body);
                        set_error(c, "protocol error: bad content body");
                        teardown(c);
                        return -ECONNRESET;
                }
                if (body)
                        memcpy(body + received, frame.payload.body_fragment.bytes,
                               frame.payload.body_fragment.len);
                received += frame.payload.body_fragment.len;
        }
        if (body) {
                body[body_size] = '\0';
                d->body = body;
                d->body_size = (size_t)body_size;
        }
        return 0;
}

static int stash_delivery(struct amqp_client *c, const amqp_basic_deliver_t *m)
{
        _cleanup_free_ struct amqp_delivery *d = NULL;
        _cleanup_free_ struct stashed *s = NULL;
        int r;

        d = calloc(1, sizeof(*d));
        s = calloc(1, sizeof(*s));
        if (!d || !s)
                return -ENOMEM;
        d->delivery_tag = m->delivery_tag;
        d->redelivered = m->redelivered;
        d->connection_id = c->connection_id;
        d->exchange = bytes_dup(m->exchange);
        d->routing_key = bytes_dup(m->routing_key);
        if (!d->exchange || !d->routing_key) {
                delivery_free_contents(d);
                return -ENOMEM;
        }
        r = read_content(c, d, true);
        if (r < 0) {
                delivery_free_contents(d);
                return r;
        }
        if (c->n_stashed >= MAX_STASHED) {
                /* The broker sent past the prefetch window. */
                delivery_free_contents(d);
                set_error(c, "protocol error: more deliveries than the prefetch window");
                teardown(c);
                return -ECONNRESET;
        }
        s->delivery = TAKE_PTR(d);
        if (c->stash_tail)
                c->stash_tail->next = s;
        else
                c->stash_head = s;
        c->stash_tail = TAKE_PTR(s);
        c->n_stashed++;
        return 0;
}

static void mark_confirmed(struct amqp_client *c, uint64_t tag, bool multiple, bool nack)
{
        for (size_t i = 0; i < c->n_pending; i++) {
                struct pending *p = &c->pending[i];

                if (p->confirmed || !(p->tag == tag || (multiple && p->tag <= tag)))
                        continue;
                p->confirmed = true;
                p->nacked = nack;
        }
}

/* A basic.return carries no delivery tag: match it by message id, else
 * (returns come in publish order) to the first message not yet returned. */
static int handle_return(struct amqp_client *c)
{
        struct amqp_delivery d = {0};
        struct pending *match = NULL;
        int r;

        r = read_content(c, &d, false);
        if (r < 0) {
                delivery_free_contents(&d);
                return r;
        }
        for (size_t i = 0; i < c->n_pending && !match; i++) {
                struct pending *p = &c->pending[i];

                if (!p->confirmed && !p->returned && p->message_id && d.message_id &&
                    strcmp(p->message_id, d.message_id) == 0)
                        match = p;
        }
        for (size_t i = 0; i < c->n_pending && !match; i++)
                if (!c->pending[i].confirmed && !c->pending[i].returned)
                        match = &c->pending[i];
        if (match)
                match->returned = true;
        delivery_free_contents(&d);
        return 0;
}

/* Act on one frame, whoever waited for it. Returns 0 or a negative errno
 * (the connection is then gone). */
static int handle_frame(struct amqp_client *c, const amqp_frame_t *frame)
{
        if (frame->frame_type != AMQP_FRAME_METHOD) {
                /* Content without a method before it: out of step. */
                set_error(c, "protocol error: unexpected frame type %u", frame->frame_type);
                teardown(c);
                return -ECONNRESET;
        }

        switch (frame->payload.method.id) {
        case AMQP_BASIC_DELIVER_METHOD:
                return stash_delivery(c, frame->payload.method.decoded);
        case AMQP_BASIC_ACK_METHOD: {
                const amqp_basic_ack_t *m = frame->payload.method.decoded;

                mark_confirmed(c, m->delivery_tag, m->multiple, false);
                return 0;
        }
        case AMQP_BASIC_NACK_METHOD: {
                const amqp_basic_nack_t *m = frame->payload.method.decoded;

                mark_confirmed(c, m->delivery_tag, m->multiple, true);
                return 0;
        }
        case AMQP_BASIC_RETURN_METHOD:
                return handle_return(c);
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD:
                return broker_closed(c, &frame->payload.method, "receive");
        case AMQP_BASIC_CANCEL_METHOD:
                /* The queue was deleted under us: reconnecting redeclares it. */
                set_error(c, "the broker cancelled the consumer");
                teardown(c);
                return -ECONNRESET;
        default:
                /* connection.blocked/unblocked and the like: nothing to do. */
                return 0;
        }
}

/* ------------------------------------------------------------------ setup */

static bool url_has_password(const char *url)
{
        const char *p = strstr(url, "://"), *at, *slash;

        if (!p)
                return false;
        p += 3;
        at = strchr(p, '@');
        slash = strchr(p, '/');
        if (!at || (slash && slash < at))
                return false;
        for (const char *q = p; q < at; q++)
                if (*q == ':')
                        return true;
        return false;
}

static int parse_url(struct amqp_client *c, const char *url, const char *password)
{
        _cleanup_(erase_and_freep) char *buf = NULL;
        struct amqp_connection_info info;

        if (!url || strlen(url) > MAX_URL_LEN)
                return -EINVAL;
        if (!password && !url_has_password(url))
                return -ENOKEY;
        buf = strdup(url);
        if (!buf)
                return -ENOMEM;
        amqp_default_connection_info(&info);
        if (amqp_parse_url(buf, &info) != AMQP_STATUS_OK || info.ssl)
                return -EINVAL;
        if (!*info.host || !*info.user || info.port <= 0 || info.port > 65535)
                return -EINVAL;
        c->host = strdup(info.host);
        c->vhost = strdup(info.vhost && *info.vhost ? info.vhost : "/");
        c->user = strdup(info.user);
        c->password = strdup(password ? password : info.password);
        c->port = info.port;
        if (!c->host || !c->vhost || !c->user || !c->password)
                return -ENOMEM;
        return 0;
}

static struct metric_family *publish_family(struct metrics_registry *r)
{
        struct metric_family *f;

        f = metrics_counter_new(r, "vigil_amqp_publish_total",
                                "Messages published to RabbitMQ by broker answer",
                                (const char *const[]){"result", NULL});
        return f ?: metrics_family_find(r, "vigil_amqp_publish_total");
}

int amqp_client_new(const struct amqp_client_options *opts, struct amqp_client **ret)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        int r;

        if (!opts || !ret)
                return -EINVAL;
        if (opts->connect_timeout_ms > MAX_TIMEOUT_MS || opts->rpc_timeout_ms > MAX_TIMEOUT_MS ||
            opts->heartbeat_seconds > MAX_HEARTBEAT_SECONDS)
                return -EINVAL;
        if (opts->connection_name && strlen(opts->connection_name) > AMQP_MAX_PROPERTY_LEN)
                return -EINVAL;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        atomic_init(&c->connected, false);
        c->connect_timeout_ms = opts->connect_timeout_ms ?: DEFAULT_CONNECT_TIMEOUT_MS;
        c->rpc_timeout_ms = opts->rpc_timeout_ms ?: DEFAULT_RPC_TIMEOUT_MS;
        c->heartbeat_seconds = opts->heartbeat_seconds ?: DEFAULT_HEARTBEAT_SECONDS;
        c->tracer = opts->tracer;
        r = parse_url(c, opts->url, opts->password);
        if (r < 0)
                return r;
        if (opts->connection_name) {
                c->connection_name = strdup(opts->connection_name);
                if (!c->connection_name)
                        return -ENOMEM;
        }
        if (opts->metrics) {
                struct metric_family *f;

                r = dependency_metrics_get(opts->metrics, &c->dependencies);
                if (r < 0)
                        return r;
                f = publish_family(opts->metrics);
                if (!f)
                        return -EEXIST;
                c->publish_ack = metrics_child1(f, "ack");
                c->publish_nack = metrics_child1(f, "nack");
                c->publish_returned = metrics_child1(f, "returned");
                c->publish_error = metrics_child1(f, "error");
                dependency_metrics_set_up(&c->dependencies, "amqp", false);
        }

        *ret = TAKE_PTR(c);
        return 0;
}

void amqp_client_free(struct amqp_client *c)
{
        if (!c)
                return;
        amqp_client_disconnect(c);
        stash_clear(c);
        free(c->consume_queue);
        free(c->host);
        free(c->vhost);
        free(c->user);
        erase_and_freep(&c->password);
        free(c->connection_name);
        free(c);
}

static int do_connect(struct amqp_client *c)
{
        struct timeval tv = timeval_from_usec((uint64_t)c->connect_timeout_ms * USEC_PER_MSEC);
        amqp_socket_t *socket;
        amqp_table_entry_t property;
        amqp_table_t properties = {0};
        amqp_rpc_reply_t reply;
        int status;

        c->conn = amqp_new_connection();
        if (!c->conn)
                return -ENOMEM;
        socket = amqp_tcp_socket_new(c->conn);
        if (!socket) {
                teardown(c);
                return -ENOMEM;
        }
        status = amqp_socket_open_noblock(socket, c->host, c->port, &tv);
        if (status != AMQP_STATUS_OK) {
                set_error(c, "connect: %s", amqp_error_string2(status));
                teardown(c);
                return -ECONNREFUSED;
        }
        amqp_set_handshake_timeout(c->conn, &tv);
        tv = timeval_from_usec((uint64_t)c->rpc_timeout_ms * USEC_PER_MSEC);
        amqp_set_rpc_timeout(c->conn, &tv);

        if (c->connection_name) {
                property.key = amqp_cstring_bytes("connection_name");
                property.value.kind = AMQP_FIELD_KIND_UTF8;
                property.value.value.bytes = amqp_cstring_bytes(c->connection_name);
                properties.num_entries = 1;
                properties.entries = &property;
        }
        reply = amqp_login_with_properties(c->conn, c->vhost, 0, FRAME_MAX,
                                           (int)c->heartbeat_seconds, &properties,
                                           AMQP_SASL_METHOD_PLAIN, c->user, c->password);
        if (reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
                int r = broker_closed(c, &reply.reply, "login");
                return r == -EACCES ? r : -ECONNREFUSED;
        }
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
                /* RabbitMQ drops the socket on a bad password unless the
                 * client asks for authentication_failure_close. */
                set_error(c, "login: %s",
                          reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                                  ? amqp_error_string2(reply.library_error)
                                  : "failed");
                teardown(c);
                return reply.library_error == AMQP_STATUS_CONNECTION_CLOSED ? -EACCES
                                                                            : -ECONNREFUSED;
        }

        amqp_channel_open(c->conn, CHANNEL);
        int r = check_rpc(c, "channel.open");
        if (r < 0)
                return r;
        amqp_confirm_select(c->conn, CHANNEL);
        r = check_rpc(c, "confirm.select");
        if (r < 0)
                return r;

        c->connection_id++;
        c->next_publish_tag = 1;
        c->last_error[0] = '\0';
        atomic_store(&c->connected, true);
        return 0;
}

int amqp_client_connect(struct amqp_client *c)
{
        uint64_t start;
        int r;

        if (!c)
                return -EINVAL;
        if (c->conn)
                return 0;
        start = now_usec(CLOCK_MONOTONIC);
        r = do_connect(c);
        dependency_metrics_observe(&c->dependencies, "amqp", "connect",
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, NULL);
        dependency_metrics_set_up(&c->dependencies, "amqp", r >= 0);
        return r;
}

void amqp_client_disconnect(struct amqp_client *c)
{
        if (!c || !c->conn)
                return;
        /* Short timeouts: a broker that does not answer the close is
         * dropped anyway. */
        struct timeval tv = {.tv_sec = 1};
        amqp_set_rpc_timeout(c->conn, &tv);
        amqp_channel_close(c->conn, CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(c->conn, AMQP_REPLY_SUCCESS);
        teardown(c);
}

bool amqp_client_is_connected(const struct amqp_client *c)
{
        return c && atomic_load(&c->connected);
}

void amqp_client_last_error(const struct amqp_client *c, char *buf, size_t size)
{
        if (size == 0)
                return;
        snprintf(buf, size, "%s", c ? c->last_error : "");
}

int amqp_client_keepalive(struct amqp_client *c)
{
        amqp_frame_t frame;
        int r;

        if (!c || !c->conn)
                return -ENOTCONN;
        for (;;) {
                /* A zero timeout still sends a heartbeat that is due. */
                r = wait_frame(c, 0, &frame);
                if (r == -ETIMEDOUT)
                        return 0;
                if (r < 0)
                        return r;
                r = handle_frame(c, &frame);
                if (r < 0)
                        return r;
        }
}

/* --------------------------------------------------------------- topology */

static amqp_table_entry_t string_entry(const char *key, const char *value)
{
        return (amqp_table_entry_t){
                .key = amqp_cstring_bytes(key),
                .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(value)},
        };
}

static amqp_table_entry_t int_entry(const char *key, int32_t value)
{
        return (amqp_table_entry_t){
                .key = amqp_cstring_bytes(key),
                .value = {.kind = AMQP_FIELD_KIND_I32, .value.i32 = value},
        };
}

static int declare_queue(struct amqp_client *c, const char *name, amqp_table_entry_t *args,
                         int n_args)
{
        amqp_table_t table = {.num_entries = n_args, .entries = args};

        amqp_queue_declare(c->conn, CHANNEL, amqp_cstring_bytes(name), false, true, false, false,
                           table);
        return check_rpc(c, name);
}

static int declare_topology(struct amqp_client *c)
{
        char name[64];
        int r;

        amqp_exchange_declare(c->conn, CHANNEL, amqp_cstring_bytes(AMQP_EVENTS_EXCHANGE),
                              amqp_cstring_bytes("topic"), false, true, false, false,
                              amqp_empty_table);
        r = check_rpc(c, AMQP_EVENTS_EXCHANGE);
        if (r < 0)
                return r;

        /* What the consumer rejects without requeueing is parked by the
         * broker itself. */
        amqp_table_entry_t main_args[] = {
                string_entry("x-dead-letter-exchange", ""),
                string_entry("x-dead-letter-routing-key", AMQP_NOTIFY_DEAD_QUEUE),
        };
        r = declare_queue(c, AMQP_NOTIFY_QUEUE, main_args, ELEMENTSOF(main_args));
        if (r < 0)
                return r;
        amqp_queue_bind(c->conn, CHANNEL, amqp_cstring_bytes(AMQP_NOTIFY_QUEUE),
                        amqp_cstring_bytes(AMQP_EVENTS_EXCHANGE), amqp_cstring_bytes("payment.#"),
                        amqp_empty_table);
        r = check_rpc(c, "queue.bind");
        if (r < 0)
                return r;

        for (int n = 1; n <= AMQP_NOTIFY_RETRY_QUEUES; n++) {
                amqp_table_entry_t retry_args[] = {
                        int_entry("x-message-ttl", 1000 << (2 * (n - 1))),
                        string_entry("x-dead-letter-exchange", ""),
                        string_entry("x-dead-letter-routing-key", AMQP_NOTIFY_QUEUE),
                };

                snprintf(name, sizeof(name), "vigil.notify.retry.%d", n);
                r = declare_queue(c, name, retry_args, ELEMENTSOF(retry_args));
                if (r < 0)
                        return r;
        }
        return declare_queue(c, AMQP_NOTIFY_DEAD_QUEUE, NULL, 0);
}

int amqp_declare_topology(struct amqp_client *c)
{
        uint64_t start;
        int r;

        if (!c)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        start = now_usec(CLOCK_MONOTONIC);
        r = declare_topology(c);
        dependency_metrics_observe(&c->dependencies, "amqp", "declare",
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, NULL);
        return r;
}

int amqp_queue_message_count(struct amqp_client *c, const char *queue, uint64_t *ret_count)
{
        amqp_queue_declare_ok_t *ok;
        uint64_t start;
        int r;

        if (!c || !queue || strlen(queue) > 255)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        start = now_usec(CLOCK_MONOTONIC);
        ok = amqp_queue_declare(c->conn, CHANNEL, amqp_cstring_bytes(queue), true, false, false,
                                false, amqp_empty_table);
        r = check_rpc(c, queue);
        dependency_metrics_observe(&c->dependencies, "amqp", "queue_count",
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, NULL);
        if (r < 0)
                return r;
        if (ret_count)
                *ret_count = ok->message_count;
        return 0;
}

/* ---------------------------------------------------------------- publish */

static struct span *start_producer_span(struct amqp_client *c, const struct amqp_message *m)
{
        struct trace_context parent;
        bool has_parent = trace_parse_traceparent(m->traceparent, &parent) >= 0;
        const char *destination = *m->exchange ? m->exchange : "amq.default";
        char name[TRACE_MAX_NAME_LEN];
        struct span *span;

        snprintf(name, sizeof(name), "publish %s", destination);
        span = span_start(c->tracer, name, SPAN_KIND_PRODUCER, has_parent ? &parent : NULL);
        if (span_is_recording(span)) {
                span_set_attribute_string(span, "messaging.system", "rabbitmq");
                span_set_attribute_string(span, "messaging.operation.type", "publish");
                span_set_attribute_string(span, "messaging.operation.name", "publish");
                span_set_attribute_string(span, "messaging.destination.name", destination);
                span_set_attribute_string(span, "messaging.rabbitmq.destination.routing_key",
                                          m->routing_key);
                if (m->message_id)
                        span_set_attribute_string(span, "messaging.message.id", m->message_id);
                span_set_attribute_int(span, "messaging.message.body.size", (int64_t)m->body_size);
                span_set_attribute_string(span, "server.address", c->host);
                span_set_attribute_int(span, "server.port", c->port);
        }
        return span;
}

static int validate_message(const struct amqp_message *m)
{
        if (!m->exchange || !m->routing_key || strlen(m->exchange) > 255 ||
            strlen(m->routing_key) > 255 || m->body_size > AMQP_MAX_BODY_SIZE ||
            (m->body_size > 0 && !m->body) || m->attempt < 0)
                return -EINVAL;
        if ((m->message_id && strlen(m->message_id) > AMQP_MAX_PROPERTY_LEN) ||
            (m->content_type && strlen(m->content_type) > AMQP_MAX_PROPERTY_LEN) ||
            (m->tracestate && strlen(m->tracestate) > AMQP_MAX_PROPERTY_LEN) ||
            (m->reason && strlen(m->reason) > AMQP_MAX_PROPERTY_LEN))
                return -EINVAL;
        return 0;
}

static int send_message(struct amqp_client *c, const struct amqp_message *m, struct span *span)
{
        char traceparent[TRACEPARENT_LEN + 1];
        amqp_table_entry_t headers[4];
        int n_headers = 0, status;

        if (trace_context_is_valid(span_context(span))) {
                trace_format_traceparent(span_context(span), traceparent);
                headers[n_headers++] = string_entry("traceparent", traceparent);
        } else if (m->traceparent && strlen(m->traceparent) <= AMQP_MAX_PROPERTY_LEN) {
                headers[n_headers++] = string_entry("traceparent", m->traceparent);
        }
        if (m->tracestate && *m->tracestate)
                headers[n_headers++] = string_entry("tracestate", m->tracestate);
        if (m->attempt > 0)
                headers[n_headers++] = int_entry(AMQP_ATTEMPT_HEADER, m->attempt);
        if (m->reason)
                headers[n_headers++] = string_entry(AMQP_REASON_HEADER, m->reason);

        amqp_basic_properties_t props = {
                ._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                          AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG,
                .content_type = amqp_cstring_bytes(m->content_type ?: "application/json"),
                .delivery_mode = AMQP_DELIVERY_PERSISTENT,
                .timestamp = m->timestamp > 0 ? (uint64_t)m->timestamp : (uint64_t)time(NULL),
                .headers = {.num_entries = n_headers, .entries = headers},
        };
        if (m->message_id) {
                props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
                props.message_id = amqp_cstring_bytes(m->message_id);
        }

        status = amqp_basic_publish(c->conn, CHANNEL, amqp_cstring_bytes(m->exchange),
                                    amqp_cstring_bytes(m->routing_key), true, false, &props,
                                    (amqp_bytes_t){.len = m->body_size, .bytes = (void *)m->body});
        if (status != AMQP_STATUS_OK)
                return fail_status(c, status, "publish");
        return 0;
}

static size_t count_unconfirmed(const struct amqp_client *c)
{
        size_t n = 0;

        for (size_t i = 0; i < c->n_pending; i++)
                n += !c->pending[i].confirmed;
        return n;
}

static int publish_and_confirm(struct amqp_client *c, const struct amqp_message *msgs, size_t n)
{
        uint64_t deadline = deadline_after_ms(c->rpc_timeout_ms);
        amqp_frame_t frame;
        int r;

        for (size_t i = 0; i < n; i++) {
                r = send_message(c, &msgs[i], c->pending[i].span);
                if (r < 0)
                        return r;
                c->pending[i].tag = c->next_publish_tag++;
        }
        while (count_unconfirmed(c) > 0) {
                r = wait_frame(c, deadline, &frame);
                if (r == -ETIMEDOUT) {
                        set_error(c, "publisher confirms did not arrive in %u ms",
                                  c->rpc_timeout_ms);
                        teardown(c);
                        return -ETIMEDOUT;
                }
                if (r < 0)
                        return r;
                r = handle_frame(c, &frame);
                if (r < 0)
                        return r;
        }
        return 0;
}

int amqp_publish_batch(struct amqp_client *c, const struct amqp_message *msgs, size_t n,
                       enum amqp_publish_result *ret_results)
{
        _cleanup_free_ struct pending *pending = NULL;
        uint64_t start;
        int r;

        if (!c || !msgs || !ret_results || n == 0 || n > AMQP_PUBLISH_MAX_BATCH)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                r = validate_message(&msgs[i]);
                if (r < 0)
                        return r;
        }
        if (!c->conn)
                return -ENOTCONN;
        pending = calloc(n, sizeof(*pending));
        if (!pending)
                return -ENOMEM;

        amqp_maybe_release_buffers(c->conn);
        start = now_usec(CLOCK_MONOTONIC);
        for (size_t i = 0; i < n; i++) {
                pending[i].message_id = msgs[i].message_id;
                pending[i].span = start_producer_span(c, &msgs[i]);
        }
        c->pending = pending;
        c->n_pending = n;
        r = publish_and_confirm(c, msgs, n);
        c->pending = NULL;
        c->n_pending = 0;

        for (size_t i = 0; i < n; i++) {
                struct span *span = pending[i].span;

                if (r < 0) {
                        span_set_attribute_string(span, "error.type", "unconfirmed");
                        span_set_status(span, SPAN_STATUS_ERROR, c->last_error);
                        metrics_counter_inc(c->publish_error);
                } else if (pending[i].nacked) {
                        span_set_attribute_string(span, "error.type", "nack");
                        span_set_status(span, SPAN_STATUS_ERROR, "nacked by the broker");
                        metrics_counter_inc(c->publish_nack);
                } else if (pending[i].returned) {
                        span_set_attribute_string(span, "error.type", "returned");
                        span_set_status(span, SPAN_STATUS_ERROR, "unroutable");
                        metrics_counter_inc(c->publish_returned);
                } else {
                        metrics_counter_inc(c->publish_ack);
                }
                span_end(span);
        }
        dependency_metrics_observe(&c->dependencies, "amqp", "publish",
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, NULL);
        if (r < 0)
                return r;

        for (size_t i = 0; i < n; i++)
                ret_results[i] = pending[i].nacked     ? AMQP_PUBLISH_RESULT_NACK
                                 : pending[i].returned ? AMQP_PUBLISH_RESULT_RETURNED
                                                       : AMQP_PUBLISH_RESULT_ACK;
        return 0;
}

int amqp_publish(struct amqp_client *c, const struct amqp_message *msg,
                 enum amqp_publish_result *ret_result)
{
        return amqp_publish_batch(c, msg, 1, ret_result);
}

/* ---------------------------------------------------------------- consume */

int amqp_consume_start(struct amqp_client *c, const char *queue, unsigned prefetch)
{
        uint64_t start;
        int r;

        if (!c || !queue || strlen(queue) > 255 || prefetch < 1 || prefetch > AMQP_MAX_PREFETCH)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        start = now_usec(CLOCK_MONOTONIC);
        amqp_basic_qos(c->conn, CHANNEL, 0, (uint16_t)prefetch, false);
        r = check_rpc(c, "basic.qos");
        if (r >= 0) {
                amqp_basic_consume(c->conn, CHANNEL, amqp_cstring_bytes(queue), amqp_empty_bytes,
                                   false, false, false, amqp_empty_table);
                r = check_rpc(c, queue);
        }
        dependency_metrics_observe(&c->dependencies, "amqp", "consume",
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, NULL);
        if (r < 0)
                return r;
        free(c->consume_queue);
        c->consume_queue = strdup(queue);
        c->consuming = true;
        return c->consume_queue ? 0 : -ENOMEM;
}

/* The CONSUMER span of a delivery handed out, current on this thread. */
static void start_consumer_span(struct amqp_client *c, struct amqp_delivery *d)
{
        struct trace_context parent;
        bool has_parent = trace_parse_traceparent(d->traceparent, &parent) >= 0;
        const char *queue = c->consume_queue ?: "";
        char name[TRACE_MAX_NAME_LEN];

        snprintf(name, sizeof(name), "process %s", queue);
        /* Without a valid parent, a new trace: never a child of whatever
         * this thread had current. */
        d->previous_span = trace_set_current(NULL);
        d->span = span_start(c->tracer, name, SPAN_KIND_CONSUMER, has_parent ? &parent : NULL);
        if (span_is_recording(d->span)) {
                span_set_attribute_string(d->span, "messaging.system", "rabbitmq");
                span_set_attribute_string(d->span, "messaging.operation.type", "process");
                span_set_attribute_string(d->span, "messaging.operation.name", "process");
                span_set_attribute_string(d->span, "messaging.destination.name", queue);
                span_set_attribute_string(d->span, "messaging.rabbitmq.destination.routing_key",
                                          d->routing_key);
                if (d->message_id)
                        span_set_attribute_string(d->span, "messaging.message.id", d->message_id);
                span_set_attribute_int(d->span, "messaging.rabbitmq.message.delivery_tag",
                                       (int64_t)d->delivery_tag);
                span_set_attribute_int(d->span, "messaging.message.body.size",
                                       (int64_t)d->body_size);
                span_set_attribute_string(d->span, "server.address", c->host);
                span_set_attribute_int(d->span, "server.port", c->port);
        }
        trace_set_current(d->span);
}

int amqp_receive(struct amqp_client *c, unsigned timeout_ms, struct amqp_delivery **ret)
{
        uint64_t deadline;
        amqp_frame_t frame;
        int r;

        if (!c || !ret || timeout_ms > MAX_TIMEOUT_MS)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        if (!c->stash_head)
                amqp_maybe_release_buffers(c->conn);

        deadline = deadline_after_ms(timeout_ms);
        while (!c->stash_head) {
                r = wait_frame(c, deadline, &frame);
                if (r < 0)
                        return r;
                r = handle_frame(c, &frame);
                if (r < 0)
                        return r;
        }

        struct stashed *s = c->stash_head;
        struct amqp_delivery *d = s->delivery;

        c->stash_head = s->next;
        if (!c->stash_head)
                c->stash_tail = NULL;
        c->n_stashed--;
        free(s);

        start_consumer_span(c, d);
        *ret = d;
        return 0;
}

static int settle(struct amqp_client *c, const struct amqp_delivery *d, bool ack, bool requeue)
{
        int status;

        if (!c || !d)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        if (d->connection_id != c->connection_id)
                return -ESTALE;
        if (ack)
                status = amqp_basic_ack(c->conn, CHANNEL, d->delivery_tag, false);
        else
                status = amqp_basic_reject(c->conn, CHANNEL, d->delivery_tag, requeue);
        if (status != AMQP_STATUS_OK)
                return fail_status(c, status, ack ? "basic.ack" : "basic.reject");
        return 0;
}

int amqp_ack(struct amqp_client *c, const struct amqp_delivery *d)
{
        return settle(c, d, true, false);
}

int amqp_reject(struct amqp_client *c, const struct amqp_delivery *d, bool requeue)
{
        return settle(c, d, false, requeue);
}

void amqp_delivery_free(struct amqp_delivery *d)
{
        if (!d)
                return;
        if (d->span) {
                span_end(d->span);
                trace_set_current(d->previous_span);
        }
        delivery_free_contents(d);
        free(d);
}
