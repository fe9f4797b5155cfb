/* AMQP client over rabbitmq-c 0.11.
 *
 * One connection, one channel (1) in confirm mode that both publishes and
 * consumes. Every frame is read by one function, amqp_client_handle_frame(), whoever
 * is waiting: deliveries that arrive while a publisher waits for its
 * confirms are read completely and kept in a small FIFO (bounded by the
 * prefetch window) until amqp_receive() hands them out. Message content
 * (header and body frames) is read here rather than by amqp_read_message(),
 * so the announced body size is checked before anything is allocated.
 *
 * After any failure the connection is destroyed: a half-known protocol
 * state (a confirm that may still come, a channel the broker closed) is
 * never reused.
 *
 * This file holds the connection and its frames; amqp-topology.c declares
 * the topology, amqp-publish.c publishes, amqp-consume.c consumes. */
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

#include "amqp-internal.h"
#include "amqp.h"
#include "dependency-metrics.h"
#include "macro.h"
#include "metrics.h"
#include "trace.h"

void amqp_client_set_error(struct amqp_client *c, const char *format, ...)
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

void amqp_delivery_free_contents(struct amqp_delivery *d)
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
                amqp_delivery_free_contents(s->delivery);
                free(s->delivery);
                free(s);
        }
        c->stash_tail = NULL;
        c->n_stashed = 0;
}

/* Drop the connection without a word to the broker (it is broken, or its
 * state is unknown). */
void amqp_client_teardown(struct amqp_client *c)
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

int amqp_client_check_failed(struct amqp_client *c)
{
        if (!atomic_load(&c->failed))
                return 0;
        amqp_client_set_error(c, "failed on purpose by [faults] fail_dependency");
        amqp_client_teardown(c);
        return -ECONNRESET;
}

void amqp_client_set_failed(struct amqp_client *c, bool failed)
{
        atomic_store(&c->failed, failed);
}

/* A library status of a call on an open connection: a timeout or anything
 * else, which means the connection is gone. */
int amqp_client_fail_status(struct amqp_client *c, int status, const char *what)
{
        amqp_client_set_error(c, "%s: %s", what, amqp_error_string2(status));
        amqp_client_teardown(c);
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
                amqp_client_set_error(c, "%s: channel closed by the broker: %d %.*s", what, code,
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
                amqp_client_set_error(c, "%s: connection closed by the broker: %d %.*s", what, code,
                                      (int)m->reply_text.len, (const char *)m->reply_text.bytes);
                amqp_send_method(c->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        } else {
                amqp_client_set_error(c, "%s: unexpected method %s", what,
                                      amqp_method_name(method->id));
        }
        amqp_client_teardown(c);
        return errno_from_reply_code(code);
}

/* The outcome of a synchronous call (declare, qos, consume, …). */
int amqp_client_check_rpc(struct amqp_client *c, const char *what)
{
        amqp_rpc_reply_t reply = amqp_get_rpc_reply(c->conn);

        switch (reply.reply_type) {
        case AMQP_RESPONSE_NORMAL:
                return 0;
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
                return amqp_client_fail_status(c, reply.library_error, what);
        case AMQP_RESPONSE_SERVER_EXCEPTION:
                return broker_closed(c, &reply.reply, what);
        default:
                amqp_client_set_error(c, "%s: no reply", what);
                amqp_client_teardown(c);
                return -ECONNRESET;
        }
}

/* Wait for the next frame until deadline (CLOCK_MONOTONIC µs). Returns 0,
 * -ETIMEDOUT (the connection stays), or -ECONNRESET. */
int amqp_client_wait_frame(struct amqp_client *c, uint64_t deadline, amqp_frame_t *ret)
{
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        struct timeval tv = timeval_from_usec(deadline > now ? deadline - now : 0);
        int status;

        status = amqp_simple_wait_frame_noblock(c->conn, ret, &tv);
        if (status == AMQP_STATUS_TIMEOUT)
                return -ETIMEDOUT;
        if (status != AMQP_STATUS_OK)
                return amqp_client_fail_status(c, status, "receive");
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

bool amqp_field_int64(const amqp_field_value_t *v, int64_t *ret)
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
                } else if (key_is(e->key, AMQP_ATTEMPT_HEADER) && amqp_field_int64(&e->value, &n)) {
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
        uint64_t deadline = amqp_deadline_after_ms(c->rpc_timeout_ms);
        amqp_frame_t frame;
        uint64_t body_size, received = 0;
        char *body = NULL;
        int r;

        r = amqp_client_wait_frame(c, deadline, &frame);
        if (r == -ETIMEDOUT) {
                amqp_client_set_error(c, "timed out reading a message");
                amqp_client_teardown(c);
                return -ECONNRESET;
        }
        if (r < 0)
                return r;
        if (frame.frame_type != AMQP_FRAME_HEADER || frame.channel != CHANNEL) {
                amqp_client_set_error(c, "protocol error: expected a content header");
                amqp_client_teardown(c);
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
                r = amqp_client_wait_frame(c, deadline, &frame);
                if (r == -ETIMEDOUT) {
                        amqp_client_set_error(c, "timed out reading a message body");
                        amqp_client_teardown(c);
                        r = -ECONNRESET;
                }
                if (r < 0) {
                        free(body);
                        return r;
                }
                if (frame.frame_type != AMQP_FRAME_BODY || frame.channel != CHANNEL ||
                    frame.payload.body_fragment.len > body_size - received) {
                        free(body);
                        amqp_client_set_error(c, "protocol error: bad content body");
                        amqp_client_teardown(c);
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
                amqp_delivery_free_contents(d);
                return -ENOMEM;
        }
        r = read_content(c, d, true);
        if (r < 0) {
                amqp_delivery_free_contents(d);
                return r;
        }
        if (c->n_stashed >= MAX_STASHED) {
                /* The broker sent past the prefetch window. */
                amqp_delivery_free_contents(d);
                amqp_client_set_error(c,
                                      "protocol error: more deliveries than the prefetch window");
                amqp_client_teardown(c);
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
                amqp_delivery_free_contents(&d);
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
        amqp_delivery_free_contents(&d);
        return 0;
}

/* Act on one frame, whoever waited for it. Returns 0 or a negative errno
 * (the connection is then gone). */
int amqp_client_handle_frame(struct amqp_client *c, const amqp_frame_t *frame)
{
        if (frame->frame_type != AMQP_FRAME_METHOD) {
                /* Content without a method before it: out of step. */
                amqp_client_set_error(c, "protocol error: unexpected frame type %u",
                                      frame->frame_type);
                amqp_client_teardown(c);
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
                amqp_client_set_error(c, "the broker cancelled the consumer");
                amqp_client_teardown(c);
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
                amqp_client_teardown(c);
                return -ENOMEM;
        }
        status = amqp_socket_open_noblock(socket, c->host, c->port, &tv);
        if (status != AMQP_STATUS_OK) {
                amqp_client_set_error(c, "connect: %s", amqp_error_string2(status));
                amqp_client_teardown(c);
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
                amqp_client_set_error(c, "login: %s",
                                      reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                                              ? amqp_error_string2(reply.library_error)
                                              : "failed");
                amqp_client_teardown(c);
                return reply.library_error == AMQP_STATUS_CONNECTION_CLOSED ? -EACCES
                                                                            : -ECONNREFUSED;
        }

        amqp_channel_open(c->conn, CHANNEL);
        int r = amqp_client_check_rpc(c, "channel.open");
        if (r < 0)
                return r;
        amqp_confirm_select(c->conn, CHANNEL);
        r = amqp_client_check_rpc(c, "confirm.select");
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
        if (amqp_client_check_failed(c) < 0)
                return -ECONNREFUSED;
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
        amqp_client_teardown(c);
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
        r = amqp_client_check_failed(c);
        if (r < 0)
                return r;
        for (;;) {
                /* A zero timeout still sends a heartbeat that is due. */
                r = amqp_client_wait_frame(c, 0, &frame);
                if (r == -ETIMEDOUT)
                        return 0;
                if (r < 0)
                        return r;
                r = amqp_client_handle_frame(c, &frame);
                if (r < 0)
                        return r;
        }
}
