/* HTTP server on libmicrohttpd: a route table of method + path template
 * ("/product/{id}"), JSON errors for everything that goes wrong (404, 405,
 * 413, 431, 400), built-in /health, /ready and /metrics, and for every
 * request a server span, the vigil_http_* metrics and an access log entry.
 *
 * Threading: one thread per connection (handlers may block on the
 * database), bounded by max_connections. Handlers run on those threads, with
 * the request's span current (trace_current()). The request object is only
 * valid inside the handler.
 *
 * Every error response has the shape
 *   {"error":{"code":"<stable code>","message":"<human text>"}}. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

struct json_object;
struct metrics_registry;
struct tracer;
struct span;
struct http_request;
struct http_server;

typedef void (*http_handler_fn)(struct http_request *req, void *userdata);

struct http_route {
        const char *method; /* "GET", "POST", … */
        const char *path;   /* template: literal segments and {name} segments */
        http_handler_fn handler;
};

/* Readiness: return 0 when every dependency answers, else a negative errno
 * and the name of the first failing dependency in *ret_failing
 * ("postgres", "redis", …, a static string). */
typedef int (*http_ready_fn)(void *userdata, const char **ret_failing);

struct http_server_options {
        const char *listen;        /* "127.0.0.1:8001"; ignored when listen_fd >= 0 */
        int listen_fd;             /* socket-activated listener, or -1 */
        const char *service_name;  /* "vigil-authd": span resource, log identifier */
        size_t max_body;           /* bytes; 0: 64 KiB. Larger bodies get 413 */
        size_t max_header;         /* total header bytes; 0: 16 KiB. Larger get 431 */
        unsigned max_connections;  /* 0: 512 */
        unsigned connection_timeout_s; /* idle keep-alive timeout; 0: 30 */
        struct metrics_registry *metrics; /* required: serves /metrics */
        struct tracer *tracer;     /* may be NULL */
        http_ready_fn ready;       /* may be NULL: always ready */
        void *userdata;            /* passed to handlers and ready */
};

int http_server_new(const struct http_server_options *opts, const struct http_route *routes,
                    size_t n_routes, struct http_server **ret);
/* Bind (unless given a socket) and start serving. */
int http_server_start(struct http_server *s);
/* The port actually bound (useful with ":0"). */
uint16_t http_server_port(const struct http_server *s);
/* For the watchdog: false when a request has been running longer than
 * max_request_usec (a hung worker). */
bool http_server_is_healthy(struct http_server *s, uint64_t max_request_usec);
/* Stop accepting, let in-flight requests finish for up to timeout_ms, then
 * stop. A socket-activated listener is left open for systemd. */
void http_server_drain(struct http_server *s, unsigned timeout_ms);
void http_server_free(struct http_server *s); /* accepts NULL */

/* Request accessors; strings are valid until the handler returns. */
const char *http_request_method(const struct http_request *req);
const char *http_request_path(const struct http_request *req);
const char *http_request_route(const struct http_request *req); /* the template */
const char *http_request_header(const struct http_request *req, const char *name);
const char *http_request_param(const struct http_request *req, const char *name); /* {name} */
const char *http_request_body(const struct http_request *req, size_t *ret_len);
struct span *http_request_span(const struct http_request *req);
/* The bearer token of an "Authorization: Bearer <token>" header, or NULL. */
const char *http_request_bearer(const struct http_request *req);

/* Parse the body as a JSON object (json-util limits). On failure the 400
 * (or 415 for a non-JSON Content-Type) has already been sent and a negative
 * errno is returned; the handler just returns. */
int http_request_json(struct http_request *req, struct json_object **ret);

/* Responses: a handler sends exactly one. A handler that sends none gets a
 * 500 "internal" on its behalf (and a log line: that is a bug). */
int http_reply(struct http_request *req, unsigned status, const char *content_type,
               const char *body, size_t len);
int http_reply_json(struct http_request *req, unsigned status, struct json_object *body);
int http_reply_error(struct http_request *req, unsigned status, const char *code,
                     const char *format, ...) _printf_(4, 5);
int http_reply_empty(struct http_request *req, unsigned status); /* e.g. 204 */
/* Extra response headers; call before the reply. */
int http_reply_add_header(struct http_request *req, const char *name, const char *value);
