/* HTTP server on libmicrohttpd. The contracts are in http-server.h.
 *
 * Life of a request, all on its connection's thread:
 *   uri_log_cb        request line read: allocate the request, note the
 *                     start time, count it in flight;
 *   access_cb #1      headers complete: match the route, start the span,
 *                     answer 431/413/404/405 at once when they apply;
 *   access_cb #2..n   body chunks: append up to max_body;
 *   access_cb final   body complete: call the handler (span current);
 *   completed_cb      response sent or connection gone: metrics, access
 *                     log, end the span, leave the in-flight list, free.
 * libmicrohttpd calls completed_cb for every request for which uri_log_cb
 * ran, so nothing leaks when a client disconnects.
 *
 * What a handler does with its request (reading it, replying) is in
 * http-server-request.c. */
#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "conf.h"
#include "http-server-internal.h"
#include "http-server.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"
#include "trace.h"

#define DEFAULT_MAX_BODY           (64U * 1024U)
#define DEFAULT_MAX_HEADER         (16U * 1024U)
#define DEFAULT_MAX_CONNECTIONS    512U
#define DEFAULT_PER_CLIENT         256U
#define DEFAULT_CONNECTION_TIMEOUT 30U
#define DEFAULT_HEADER_TIMEOUT     5U
/* How long a drain waits for connections that have not sent a complete
 * request header: a real client (nginx on a fresh upstream connection)
 * sends its request the moment it connects. */
#define DRAIN_HEADER_GRACE_MS 1000U
/* libmicrohttpd keeps the request line and headers in a per-connection
 * pool: it must hold more than max_header for us to see, and answer, an
 * oversized header ourselves (past the pool libmicrohttpd answers 431
 * itself). The pool is zeroed on every request, so all of it is resident
 * for every open connection: keep it small. */
#define CONNECTION_MEMORY_SLACK (8U * 1024U)
/* Handlers allocate modestly (password hashing uses the heap). */
#define THREAD_STACK_SIZE (512U * 1024U)
/* A chunked body past max_body is read and dropped up to this much more
 * before the connection is closed instead of answered. */
#define BODY_DISCARD_LIMIT (1024U * 1024U)
#define MAX_USER_AGENT     256U
#define MAX_ALLOW          128U

static const char *const known_methods[] = {
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
};

static const char *method_label(const char *method)
{
        for (size_t i = 0; i < ELEMENTSOF(known_methods); i++)
                if (method && strcmp(method, known_methods[i]) == 0)
                        return known_methods[i];
        return "OTHER";
}

/* ---- routes ---- */

static void route_done(struct route *r)
{
        free(r->method);
        free(r->path);
        http_route_template_done(&r->template);
}

/* ---- built-in routes ---- */

static void handle_health(struct http_request *req, void *userdata)
{
        static const char body[] = "{\"status\":\"ok\"}";

        (void)userdata;
        (void)http_reply(req, 200, "application/json", body, sizeof(body) - 1);
}

static void handle_ready(struct http_request *req, void *userdata)
{
        static const char body[] = "{\"status\":\"ready\"}";
        _cleanup_(json_object_putp) struct json_object *top = NULL;
        _cleanup_free_ char *message = NULL;
        struct http_server *s = req->server;
        const char *failing = NULL;
        int r;

        (void)userdata;

        r = s->ready ? s->ready(s->ready_userdata, &failing) : 0;
        if (r >= 0) {
                (void)http_reply(req, 200, "application/json", body, sizeof(body) - 1);
                return;
        }

        if (!failing)
                failing = "unknown";
        top = json_object_new_object();
        if (!top || asprintf(&message, "%s is not answering", failing) < 0) {
                message = NULL;
                (void)http_reply_error(req, 503, "dependency_unavailable",
                                       "A dependency is not answering");
                return;
        }
        json_object_object_add(top, "status", json_object_new_string("unavailable"));
        json_object_object_add(top, "failing", json_object_new_string(failing));
        (void)http_reply_error_object(req, 503, "dependency_unavailable", message, top);
}

static void handle_metrics(struct http_request *req, void *userdata)
{
        enum metrics_format fmt = metrics_format_from_accept(http_request_header(req, "Accept"));
        char *text = NULL;
        size_t len = 0;
        int r;

        (void)userdata;

        r = metrics_render(req->server->metrics, fmt, &text, &len);
        if (r < 0) {
                (void)http_reply_error(req, 500, "internal", "Could not render metrics");
                return;
        }
        (void)http_reply_take(req, 200, metrics_content_type(fmt), text, len);
}

static const struct http_route builtin_routes[] = {
        {"GET", "/health", handle_health},
        {"GET", "/ready", handle_ready},
        {"GET", "/metrics", handle_metrics},
};

/* ---- request life cycle ---- */

static void in_flight_remove(struct http_server *s, struct http_request *req)
{
        if (req->prev)
                req->prev->next = req->next;
        else
                s->head = req->next;
        if (req->next)
                req->next->prev = req->prev;
        else
                s->tail = req->prev;
        req->prev = req->next = NULL;
}

/* Per connection: whether a request has begun on it. A connection the
 * kernel handed us just before a drain has its request on the way; closing
 * it would fail that request (nginx does not retry a POST), so drain waits
 * for such connections as for requests in flight. */
struct connection_state {
        bool started;
};

/* A count drain waits on has dropped; called with the lock held. */
static void drain_notify(struct http_server *s)
{
        if (s->draining)
                pthread_cond_broadcast(&s->idle);
}

static void unstarted_done(struct http_server *s, struct connection_state *c)
{
        if (!c || c->started)
                return;
        c->started = true;
        s->unstarted--;
        drain_notify(s);
}

static void connection_cb(void *cls, struct MHD_Connection *connection, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
        struct http_server *s = cls;
        struct connection_state *c = *socket_context;

        (void)connection;
        if (code == MHD_CONNECTION_NOTIFY_STARTED) {
                c = calloc(1, sizeof(*c));
                if (!c)
                        return; /* not tracked: drain just won't wait for it */
                pthread_mutex_lock(&s->lock);
                s->unstarted++;
                pthread_mutex_unlock(&s->lock);
                *socket_context = c;
        } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
                pthread_mutex_lock(&s->lock);
                unstarted_done(s, c);
                pthread_mutex_unlock(&s->lock);
                free(c);
                *socket_context = NULL;
        }
}

static void *uri_log_cb(void *cls, const char *uri, struct MHD_Connection *connection)
{
        const union MHD_ConnectionInfo *info =
                MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        struct http_server *s = cls;
        struct http_request *req;

        (void)uri; /* raw, with the query: the access callback's url is used */

        req = calloc(1, sizeof(*req));
        if (!req)
                return NULL; /* access_cb refuses the request */
        req->server = s;
        req->connection = connection;
        req->method_label = "OTHER";

        pthread_mutex_lock(&s->lock);
        req->start_usec = now_usec(CLOCK_MONOTONIC);
        req->prev = s->tail;
        if (s->tail)
                s->tail->next = req;
        else
                s->head = req;
        s->tail = req;
        s->in_flight++;
        s->headers_pending++;
        unstarted_done(s, info ? info->socket_context : NULL);
        pthread_mutex_unlock(&s->lock);
        metrics_gauge_add(s->in_flight_gauge, 1);

        return req;
}

static void request_free(struct http_request *req)
{
        for (size_t i = 0; i < req->n_headers; i++) {
                free(req->headers[i].name);
                free(req->headers[i].value);
        }
        free(req->path_buf);
        free(req->body);
        free(req);
}

static void completed_cb(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
        struct http_server *s = cls;
        struct http_request *req = *con_cls;
        const char *route = NULL;
        char code[16], duration_ms[32];
        unsigned status;
        double seconds;

        (void)toe;
        if (!req)
                return;
        *con_cls = NULL;

        status = req->status;
        if (status == 0) {
                /* libmicrohttpd may have answered by itself (e.g. 431 for
                 * headers beyond its memory); otherwise nobody answered. */
                const union MHD_ConnectionInfo *info =
                        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_HTTP_STATUS);
                status = info && info->http_status >= 100 ? info->http_status : 499;
        }
        seconds = (double)(now_usec(CLOCK_MONOTONIC) - req->start_usec) / (double)USEC_PER_SEC;
        route = http_request_route(req);
        (void)snprintf(code, sizeof(code), "%u", status);
        (void)snprintf(duration_ms, sizeof(duration_ms), "%.3f", seconds * 1000.0);

        metrics_counter_inc(metrics_child3(s->requests_total, route, req->method_label, code));
        metrics_histogram_observe(metrics_child2(s->duration, route, req->method_label), seconds,
                                  req->span ? span_context(req->span) : NULL);

        if (req->span) {
                span_set_attribute_int(req->span, "http.response.status_code", status);
                if (status >= 500)
                        span_set_status(req->span, SPAN_STATUS_ERROR, NULL);
        }

        if (s->access_log || status >= 500) {
                const struct log_field fields[] = {
                        {"HTTP_METHOD", req->method_label},
                        {"HTTP_ROUTE", route},
                        {"HTTP_STATUS", code},
                        {"DURATION_MS", duration_ms},
                };
                struct span *prev = trace_set_current(req->span);

                (void)log_fields(status >= 500 ? LOG_ERR : LOG_INFO, 0, fields, ELEMENTSOF(fields),
                                 "%s %s %u %.1fms", req->method_label, route, status,
                                 seconds * 1000.0);
                (void)trace_set_current(prev);
        }

        span_end(req->span);
        req->span = NULL;

        pthread_mutex_lock(&s->lock);
        in_flight_remove(s, req);
        s->in_flight--;
        if (!req->started)
                s->headers_pending--;
        drain_notify(s);
        pthread_mutex_unlock(&s->lock);
        metrics_gauge_add(s->in_flight_gauge, -1);

        request_free(req);
}

/* Match the route and fill req->route/params; when only other methods
 * match, write them to allow (comma-separated) and return false. */
static bool request_route(struct http_request *req, char allow[static MAX_ALLOW])
{
        struct http_server *s = req->server;
        const struct route *path_match = NULL;

        allow[0] = '\0';
        for (size_t i = 0; i < s->n_routes; i++) {
                const struct route *r = &s->routes[i];

                if (!http_route_template_match(&r->template, req->path, NULL, NULL, NULL))
                        continue;
                if (strcmp(r->method, req->method) == 0) {
                        req->route = r;
                        if (r->template.n_segments > 0) {
                                req->path_buf = strdup(req->path);
                                if (!req->path_buf)
                                        return true; /* handled as OOM by the caller */
                                (void)http_route_template_match(&r->template, req->path,
                                                                req->path_buf, req->params,
                                                                &req->n_params);
                        }
                        return true;
                }
                if (!path_match)
                        path_match = r;
                if (!strstr(allow, r->method) &&
                    strlen(allow) + strlen(r->method) + 3 < MAX_ALLOW) {
                        if (allow[0])
                                strcat(allow, ", ");
                        strcat(allow, r->method);
                }
        }
        /* The route label of a 405 is the template: bounded, and useful. */
        req->route = path_match;
        return false;
}

static void request_start_span(struct http_request *req)
{
        struct http_server *s = req->server;
        struct trace_context parent;
        uint8_t trace_id[TRACE_ID_SIZE];
        bool has_parent;
        char name[TRACE_MAX_NAME_LEN];
        const char *ua;

        has_parent = trace_parse_traceparent(http_request_header(req, "traceparent"), &parent) == 0;
        if (req->route)
                (void)snprintf(name, sizeof(name), "%s %s", req->method_label, req->route->path);
        else
                (void)snprintf(name, sizeof(name), "%s", req->method_label);

        /* The connection thread has no current span, so without a valid
         * traceparent this starts a new trace: the one the gateway named
         * in X-Request-Id, else a random one. */
        if (has_parent)
                req->span = span_start(s->tracer, name, SPAN_KIND_SERVER, &parent);
        else if (trace_parse_trace_id(http_request_header(req, "X-Request-Id"), trace_id) == 0)
                req->span = span_start_root(s->tracer, name, SPAN_KIND_SERVER, trace_id);
        else
                req->span = span_start(s->tracer, name, SPAN_KIND_SERVER, NULL);
        if (!span_is_recording(req->span))
                return;

        span_set_attribute_string(req->span, "http.request.method", req->method_label);
        if (req->route)
                span_set_attribute_string(req->span, "http.route", req->route->path);
        span_set_attribute_string(req->span, "url.path", req->path);
        span_set_attribute_int(req->span, "server.port", s->port);
        ua = http_request_header(req, "User-Agent");
        if (ua) {
                char buf[MAX_USER_AGENT + 1];
                (void)snprintf(buf, sizeof(buf), "%s", ua);
                span_set_attribute_string(req->span, "user_agent.original", buf);
        }
}

/* The first call: headers are complete. Answers at once what can be
 * answered from the headers. */
static void request_begin(struct http_request *req, const char *url, const char *method)
{
        struct http_server *s = req->server;
        const union MHD_ConnectionInfo *info;
        const char *cl;
        char allow[MAX_ALLOW];
        bool matched;

        pthread_mutex_lock(&s->lock);
        req->started = true;
        s->headers_pending--;
        drain_notify(s);
        pthread_mutex_unlock(&s->lock);
        req->method = method;
        req->method_label = method_label(method);
        req->path = url;

        /* The header is complete: from now on (its body, and waiting for the
         * next request on a kept-alive connection) the idle timeout applies
         * instead of the header timeout. */
        (void)MHD_set_connection_option(req->connection, MHD_CONNECTION_OPTION_TIMEOUT,
                                        s->connection_timeout_s);

        matched = request_route(req, allow);
        request_start_span(req);

        info = MHD_get_connection_info(req->connection, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
        if (info && info->header_size > s->max_header) {
                (void)http_reply_error(req, 431, "headers_too_large",
                                       "The request headers exceed %zu bytes", s->max_header);
                return;
        }

        cl = http_request_header(req, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
                char *end = NULL;
                unsigned long long n;

                errno = 0;
                n = strtoull(cl, &end, 10);
                if (errno != 0 || end == cl || n > s->max_body) {
                        (void)http_reply_error(req, 413, "payload_too_large",
                                               "The request body exceeds %zu bytes", s->max_body);
                        return;
                }
        }

        if (!matched && !req->route) {
                (void)http_reply_error(req, 404, "not_found", "No such resource");
                return;
        }
        if (!matched) {
                if (http_reply_add_header(req, "Allow", allow) < 0) {
                        (void)http_reply_error(req, 500, "internal", "Out of memory");
                        return;
                }
                (void)http_reply_error(req, 405, "method_not_allowed",
                                       "Method %s is not allowed here", req->method_label);
                return;
        }
        if (req->route->template.n_segments > 0 && !req->path_buf)
                (void)http_reply_error(req, 500, "internal", "Out of memory");
}

/* Append a body chunk. Returns false when the connection must be closed. */
static bool request_append(struct http_request *req, const char *data, size_t size)
{
        struct http_server *s = req->server;

        if (req->too_large || req->body_len + size > s->max_body) {
                req->too_large = true;
                req->discarded += size;
                return req->discarded <= BODY_DISCARD_LIMIT;
        }

        if (req->body_len + size + 1 > req->body_cap) {
                size_t cap = req->body_cap ? req->body_cap : 1024;
                char *p;

                while (cap < req->body_len + size + 1)
                        cap *= 2;
                if (cap > s->max_body + 1)
                        cap = s->max_body + 1;
                p = realloc(req->body, cap);
                if (!p)
                        return false;
                req->body = p;
                req->body_cap = cap;
        }
        memcpy(req->body + req->body_len, data, size);
        req->body_len += size;
        req->body[req->body_len] = '\0';
        return true;
}

/* Wait until until_usec (CLOCK_MONOTONIC), or less when a drain starts
 * (hold: while the server is held instead). Returns false when a drain cut
 * the wait short. */
static bool wait_until(struct http_server *s, uint64_t until_usec, bool hold)
{
        bool drained;

        pthread_mutex_lock(&s->lock);
        for (;;) {
                struct timespec deadline;

                if (s->draining)
                        break;
                if (hold) {
                        if (!s->held)
                                break;
                        pthread_cond_wait(&s->idle, &s->lock);
                        continue;
                }
                if (now_usec(CLOCK_MONOTONIC) >= until_usec)
                        break;
                deadline.tv_sec = (time_t)(until_usec / USEC_PER_SEC);
                deadline.tv_nsec = (long)(until_usec % USEC_PER_SEC) * 1000L;
                (void)pthread_cond_timedwait(&s->idle, &s->lock, &deadline);
        }
        drained = s->draining;
        pthread_mutex_unlock(&s->lock);
        return !drained;
}

/* The intercept's answer for a program route: its delay, then a 503 or
 * nothing. Returns true when it replied. */
static bool request_intercept(struct http_request *req)
{
        struct http_server *s = req->server;
        unsigned delay_ms = 0;
        bool fail = false;

        if (!s->intercept || req->route->builtin)
                return false;
        s->intercept(s->intercept_userdata, req->route->path, &delay_ms, &fail);
        if (delay_ms > 0 &&
            !wait_until(s, now_usec(CLOCK_MONOTONIC) + (uint64_t)delay_ms * USEC_PER_MSEC, false))
                fail = true;
        if (!fail)
                return false;
        (void)http_reply_add_header(req, "Retry-After", "1");
        (void)http_reply_error(req, 503, "unavailable",
                               "The service is unavailable (injected fault)");
        return true;
}

static void request_dispatch(struct http_request *req)
{
        struct http_server *s = req->server;
        struct span *prev;

        if (req->too_large) {
                (void)http_reply_error(req, 413, "payload_too_large",
                                       "The request body exceeds %zu bytes", s->max_body);
                return;
        }
        (void)wait_until(s, 0, true);
        if (request_intercept(req))
                return;

        prev = trace_set_current(req->span);

        pthread_mutex_lock(&s->lock);
        req->handler_start_usec = now_usec(CLOCK_MONOTONIC);
        pthread_mutex_unlock(&s->lock);

        req->route->handler(req, s->userdata);

        pthread_mutex_lock(&s->lock);
        req->handler_start_usec = 0;
        pthread_mutex_unlock(&s->lock);

        /* A handler may have changed the current span; ours is current
         * again for the log line. */
        (void)trace_set_current(req->span);
        if (!req->reply_tried) {
                log_error("Handler for %s %s sent no response", req->method_label,
                          req->route->path);
                (void)http_reply_error(req, 500, "internal", "Internal server error");
        } else if (req->status == 0)
                /* Its reply failed (out of memory, or the connection is
                 * being closed by a stop): try the short answer. */
                (void)http_reply_error(req, 500, "internal", "Internal server error");
        (void)trace_set_current(prev);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *connection, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
        struct http_request *req = *con_cls;

        (void)cls;
        (void)connection;
        (void)version;

        if (!req)
                return MHD_NO; /* out of memory in uri_log_cb */

        if (!req->started) {
                request_begin(req, url, method);
                return MHD_YES;
        }

        if (*upload_data_size > 0) {
                size_t size = *upload_data_size;

                *upload_data_size = 0;
                if (req->status != 0)
                        return MHD_YES; /* answered already; drop */
                return request_append(req, upload_data, size) ? MHD_YES : MHD_NO;
        }

        if (req->status == 0)
                request_dispatch(req);
        /* A response must be queued now, or libmicrohttpd calls again. */
        return req->status != 0 ? MHD_YES : MHD_NO;
}

_printf_(2, 0) static void mhd_logger(void *cls, const char *format, va_list ap)
{
        char buf[512];
        size_t n;

        (void)cls;
        (void)vsnprintf(buf, sizeof(buf), format, ap);
        n = strlen(buf);
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
                buf[--n] = '\0';
        log_debug("libmicrohttpd: %s", buf);
}

/* ---- server ---- */

int http_server_new(const struct http_server_options *opts, const struct http_route *routes,
                    size_t n_routes, struct http_server **ret)
{
        static const char *const requests_labels[] = {"route", "method", "code", NULL};
        static const char *const duration_labels[] = {"route", "method", NULL};
        struct http_server *s;
        pthread_condattr_t attr;
        size_t total;
        int r;

        assert(opts);
        assert(routes || n_routes == 0);
        assert(ret);

        if (!opts->metrics)
                return -EINVAL;
        if (n_routes > SIZE_MAX / 2)
                return -EINVAL;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->listen_fd = opts->listen_fd >= 3 ? opts->listen_fd : -1;
        s->quiesced_fd = -1;
        s->max_body = opts->max_body ? opts->max_body : DEFAULT_MAX_BODY;
        s->max_header = opts->max_header ? opts->max_header : DEFAULT_MAX_HEADER;
        s->max_connections =
                opts->max_connections ? opts->max_connections : DEFAULT_MAX_CONNECTIONS;
        s->max_connections_per_client = opts->max_connections_per_client
                                                ? opts->max_connections_per_client
                                                : DEFAULT_PER_CLIENT;
        s->connection_timeout_s = opts->connection_timeout_s ? opts->connection_timeout_s
                                                             : DEFAULT_CONNECTION_TIMEOUT;
        s->header_timeout_s =
                opts->header_timeout_s ? opts->header_timeout_s : DEFAULT_HEADER_TIMEOUT;
        s->metrics = opts->metrics;
        s->tracer = opts->tracer;
        s->ready = opts->ready;
        s->userdata = opts->userdata;
        s->ready_userdata = opts->ready_userdata ? opts->ready_userdata : opts->userdata;
        s->access_log = opts->access_log;
        s->intercept = opts->intercept;
        s->intercept_userdata = opts->intercept_userdata;

        pthread_mutex_init(&s->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&s->idle, &attr);
        pthread_condattr_destroy(&attr);

        if (opts->listen) {
                s->listen = strdup(opts->listen);
                if (!s->listen) {
                        r = -ENOMEM;
                        goto fail;
                }
        }

        total = n_routes + ELEMENTSOF(builtin_routes);
        s->routes = calloc(total, sizeof(*s->routes));
        if (!s->routes) {
                r = -ENOMEM;
                goto fail;
        }
        for (size_t i = 0; i < total; i++) {
                const struct http_route *src =
                        i < n_routes ? &routes[i] : &builtin_routes[i - n_routes];
                struct route *dst = &s->routes[i];

                if (!src->method || !src->path || !src->handler || !*src->method) {
                        r = -EINVAL;
                        goto fail;
                }
                s->n_routes++;
                dst->handler = src->handler;
                dst->builtin = i >= n_routes;
                dst->method = strdup(src->method);
                dst->path = strdup(src->path);
                if (!dst->method || !dst->path) {
                        r = -ENOMEM;
                        goto fail;
                }
                r = http_route_template_compile(dst->path, &dst->template);
                if (r < 0)
                        goto fail;
        }

        s->requests_total = metrics_counter_new(s->metrics, "vigil_http_requests_total",
                                                "HTTP requests served, by route template, "
                                                "method and status code.",
                                                requests_labels);
        s->duration = metrics_histogram_new(
                s->metrics, "vigil_http_request_duration_seconds",
                "Time from the request line to the end of the response, by route template "
                "and method.",
                duration_labels, metrics_latency_buckets, metrics_latency_buckets_count);
        {
                struct metric_family *g = metrics_gauge_new(
                        s->metrics, "vigil_http_requests_in_flight",
                        "HTTP requests being received, handled or answered.", NULL);
                s->in_flight_gauge = g ? metrics_child(g, NULL) : NULL;
        }
        if (!s->requests_total || !s->duration || !s->in_flight_gauge) {
                r = -EEXIST;
                goto fail;
        }

        *ret = s;
        return 0;

fail:
        http_server_free(s);
        return r;
}

/* Bind and listen on listen_address. Returns the socket or a negative
 * errno. ":port" (no host) prefers the IPv6 wildcard with IPV6_V6ONLY off,
 * so that it listens on IPv4 too, and falls back to 0.0.0.0 where IPv6 is
 * unavailable. */
static int bind_listen(const char *listen_address)
{
        struct addrinfo hints = {
                .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
        };
        struct addrinfo *res = NULL;
        char host[256], port_text[8];
        uint16_t port;
        int r, fd = -1, err = -EADDRNOTAVAIL;

        if (!listen_address)
                return -EINVAL;
        r = conf_parse_listen(listen_address, host, sizeof(host), &port);
        if (r < 0)
                return r;
        (void)snprintf(port_text, sizeof(port_text), "%u", port);

        r = getaddrinfo(host[0] ? host : NULL, port_text, &hints, &res);
        if (r != 0)
                return r == EAI_SYSTEM ? negative_errno() : -EADDRNOTAVAIL;

        /* Pass 0: the IPv6 wildcard for ":port"; pass 1: everything else, in
         * the resolver's order. */
        for (int pass = host[0] ? 1 : 0; pass < 2 && fd < 0; pass++)
                for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                        bool wildcard6 = !host[0] && ai->ai_family == AF_INET6;
                        int one = 1, zero = 0;

                        if (pass == 0 && !wildcard6)
                                continue;
                        if (pass == 1 && wildcard6)
                                continue;
                        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
                        if (fd < 0) {
                                err = negative_errno();
                                continue;
                        }
                        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                        if (wildcard6)
                                (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero,
                                                 sizeof(zero));
                        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
                            listen(fd, SOMAXCONN) == 0)
                                break;
                        err = negative_errno();
                        close(fd);
                        fd = -1;
                }
        freeaddrinfo(res);
        return fd >= 0 ? fd : err;
}

int http_server_start(struct http_server *s)
{
        struct sockaddr_storage sa;
        socklen_t salen = sizeof(sa);
        unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                         MHD_USE_ITC | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
        size_t memory;
        int fd;

        assert(s);

        if (s->daemon)
                return -EALREADY;
        pthread_mutex_lock(&s->lock);
        s->draining = false;
        pthread_mutex_unlock(&s->lock);

        if (s->listen_fd >= 0)
                fd = s->listen_fd;
        else {
                fd = bind_listen(s->listen);
                if (fd < 0)
                        return fd;
        }

        if (getsockname(fd, (struct sockaddr *)&sa, &salen) == 0) {
                if (sa.ss_family == AF_INET)
                        s->port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
                else if (sa.ss_family == AF_INET6) {
                        s->port = ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
                        flags |= MHD_USE_IPv6;
                }
        }

        memory = s->max_header + CONNECTION_MEMORY_SLACK;

        s->daemon = MHD_start_daemon(
                flags, 0, NULL, NULL, access_cb, s, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                MHD_OPTION_CONNECTION_LIMIT, s->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                s->max_connections_per_client,
                /* Until a connection's first request header is complete;
                 * request_begin() switches it to connection_timeout_s. */
                MHD_OPTION_CONNECTION_TIMEOUT, s->header_timeout_s,
                MHD_OPTION_CONNECTION_MEMORY_LIMIT, memory, MHD_OPTION_THREAD_STACK_SIZE,
                (size_t)THREAD_STACK_SIZE, MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s,
                MHD_OPTION_NOTIFY_CONNECTION, connection_cb, s, MHD_OPTION_URI_LOG_CALLBACK,
                uri_log_cb, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s,
                MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_END);
        if (!s->daemon) {
                if (s->listen_fd < 0)
                        close(fd);
                s->port = 0;
                return -EIO;
        }
        s->own_socket = s->listen_fd < 0;
        return 0;
}

uint16_t http_server_port(const struct http_server *s)
{
        return s->daemon ? s->port : 0;
}

void http_server_hold(struct http_server *s, bool hold)
{
        pthread_mutex_lock(&s->lock);
        s->held = hold;
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);
}

bool http_server_is_healthy(struct http_server *s, uint64_t max_request_usec)
{
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        bool healthy = true;

        assert(s);

        pthread_mutex_lock(&s->lock);
        for (struct http_request *req = s->head; req; req = req->next)
                if (req->handler_start_usec != 0 &&
                    now - req->handler_start_usec > max_request_usec) {
                        healthy = false;
                        break;
                }
        pthread_mutex_unlock(&s->lock);
        return healthy;
}

/* Stop the daemon, leaving a socket-activated listener open. */
static void stop_daemon(struct http_server *s)
{
        if (!s->daemon)
                return;

        if (s->quiesced_fd < 0) {
                MHD_socket fd = MHD_quiesce_daemon(s->daemon);
                s->quiesced_fd = fd == MHD_INVALID_SOCKET ? -1 : (int)fd;
        }
        /* Joins every connection thread: waits for running handlers. */
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;

        /* Only after the stop: a connection thread may still use it. */
        if (s->quiesced_fd >= 0 && s->own_socket)
                close(s->quiesced_fd);
        s->quiesced_fd = -1;
}

void http_server_drain(struct http_server *s, unsigned timeout_ms)
{
        uint64_t start, until, grace_until;

        assert(s);

        if (!s->daemon)
                return;

        pthread_mutex_lock(&s->lock);
        s->draining = true;
        /* Wakes requests waiting in wait_until(). */
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);

        if (s->quiesced_fd < 0) {
                MHD_socket fd = MHD_quiesce_daemon(s->daemon);
                s->quiesced_fd = fd == MHD_INVALID_SOCKET ? -1 : (int)fd;
        }

        /* Requests whose header is complete are waited for up to the
         * timeout; connections without one (silent, or stalled in the
         * middle of a header) only for a short grace, so that neither an
         * idle client nor a slow one holds the exit. */
        start = now_usec(CLOCK_MONOTONIC);
        until = start + (uint64_t)timeout_ms * USEC_PER_MSEC;
        grace_until =
                start + (uint64_t)(timeout_ms < DRAIN_HEADER_GRACE_MS ? timeout_ms
                                                                      : DRAIN_HEADER_GRACE_MS) *
                                USEC_PER_MSEC;

        pthread_mutex_lock(&s->lock);
        for (;;) {
                bool requests = s->in_flight > s->headers_pending;
                bool pending = s->unstarted + s->headers_pending > 0;
                uint64_t now = now_usec(CLOCK_MONOTONIC), wait_until;
                struct timespec deadline;

                if (pending && now < grace_until)
                        wait_until = requests ? until : grace_until;
                else if (requests)
                        wait_until = until;
                else
                        break;
                if (now >= wait_until)
                        break;
                deadline.tv_sec = (time_t)(wait_until / USEC_PER_SEC);
                deadline.tv_nsec = (long)(wait_until % USEC_PER_SEC) * 1000L;
                (void)pthread_cond_timedwait(&s->idle, &s->lock, &deadline);
        }
        pthread_mutex_unlock(&s->lock);

        stop_daemon(s);
}

void http_server_free(struct http_server *s)
{
        if (!s)
                return;

        stop_daemon(s);
        for (size_t i = 0; i < s->n_routes; i++)
                route_done(&s->routes[i]);
        free(s->routes);
        free(s->listen);
        pthread_cond_destroy(&s->idle);
        pthread_mutex_destroy(&s->lock);
        free(s);
}
