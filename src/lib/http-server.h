/* HTTP server on libmicrohttpd: a route table of method + path template
 * ("/product/{id}"), JSON errors for everything that goes wrong (404, 405,
 * 413, 415, 431, 400), built-in /health, /ready and /metrics, and for every
 * request a server span, the vigil_http_* metrics and an access log entry.
 *
 * Threading: one thread per connection (handlers may block on the
 * database), bounded by max_connections. Handlers run on those threads, with
 * the request's span current (trace_current()). The request object is only
 * valid inside the handler. http_server_is_healthy() may be called from any
 * thread; start, drain and free from the thread that owns the server.
 *
 * Routing (http-route.h): a path matches a template when it has exactly as
 * many segments and every literal segment is equal; a {name} segment
 * matches one non-empty segment (after MHD's percent-decoding). "/a/" does
 * not match "/a". A path that matches no template gets 404 "not_found";
 * one that matches only with other methods gets 405 "method_not_allowed"
 * with an Allow header. HEAD is not special (a GET route does not answer HEAD).
 * The built-in routes GET /health, GET /ready and GET /metrics are matched
 * after the program's routes.
 *
 * Limits: a body over max_body gets 413 "payload_too_large" (at once when
 * Content-Length announces it; a chunked body is read and discarded up to
 * 1 MiB past the limit, then answered, and past that the connection is
 * closed, because libmicrohttpd 0.9.75 cannot answer in the middle of an
 * upload). Request line plus headers over max_header get 431
 * "headers_too_large"; headers so large they do not fit
 * libmicrohttpd's per-connection memory (max_header + 8 KiB, zeroed for
 * every request and so resident for every open connection) are answered
 * by libmicrohttpd itself, with an HTML 431.
 *
 * Observability per request: the span "<METHOD> <route>" (kind server,
 * child of an incoming valid traceparent, else a new root) with
 * http.request.method, http.route, url.path, http.response.status_code,
 * server.port and user_agent.original, status error for 5xx;
 * vigil_http_requests_total{route,method,code},
 * vigil_http_request_duration_seconds{route,method} (exemplar: the span)
 * and vigil_http_requests_in_flight. route is the template, or "unmatched";
 * method is one of GET HEAD POST PUT DELETE PATCH OPTIONS, else "OTHER". A
 * request that ends without any response (the client went away) counts
 * with code 499.
 *
 * Connections: at most max_connections, of which at most
 * max_connections_per_client from one client address (libmicrohttpd closes
 * a connection past either limit at once, unanswered), so one client cannot
 * take every connection and starve /health. A new connection that falls
 * silent for header_timeout_s before its first request header is complete
 * is closed; after that (bodies, and idle keep-alive connections between
 * requests) the limit is connection_timeout_s of silence. Both are
 * timeouts of inactivity, not deadlines: a client that trickles bytes
 * keeps its connection, which is what the per-client limit bounds.
 *
 * Request id: every response the server sends carries X-Request-Id, the
 * trace id of the request's span. A request without a valid traceparent
 * but with an X-Request-Id of 32 lower-case hex digits (the gateway's
 * $request_id) starts a new trace with that id, sampled per the tracer's
 * sample_ratio, so the id the gateway logs and returns is the trace id.
 *
 * Every error response has the shape
 *   {"error":{"code":"<stable code>","message":"<human text>"}}. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http-route.h"
#include "macro.h"

#define HTTP_MAX_REPLY_HEADERS 16 /* http_reply_add_header() per response */

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

/* Called on a request's thread before the handler of one of the program's
 * routes (never /health, /ready or /metrics), with its route template: sets
 * a delay to wait first (not counted as handler time for
 * http_server_is_healthy(); cut short by a drain) and whether to answer
 * 503 "unavailable" instead of calling the handler. */
typedef void (*http_intercept_fn)(void *userdata, const char *route, unsigned *ret_delay_ms,
                                  bool *ret_fail);

/* Readiness: return 0 when every dependency answers, else a negative errno
 * and the name of the first failing dependency in *ret_failing
 * ("postgres", "redis", …, a static string). */
typedef int (*http_ready_fn)(void *userdata, const char **ret_failing);

struct http_server_options {
        const char *listen;       /* "127.0.0.1:8001"; ignored when listen_fd >= 0 */
        int listen_fd;            /* socket-activated listener (fd >= 3, as systemd passes
                                   * them), or -1; 0..2 count as none, so that a
                                   * zero-initialised struct binds listen */
        const char *service_name; /* "vigil-authd": span resource, log identifier */
        size_t max_body;          /* bytes; 0: 64 KiB. Larger bodies get 413 */
        size_t max_header;        /* total header bytes; 0: 16 KiB. Larger get 431 */
        unsigned max_connections; /* 0: 512 */
        unsigned max_connections_per_client; /* from one address; 0: 256 */
        unsigned connection_timeout_s;       /* idle keep-alive timeout; 0: 30 */
        unsigned header_timeout_s;           /* silence before a new connection's first
                                              * request header is complete; 0: 5 */
        struct metrics_registry *metrics;    /* required: serves /metrics */
        struct tracer *tracer;               /* may be NULL */
        http_ready_fn ready;                 /* may be NULL: always ready */
        void *userdata;                      /* passed to handlers and ready */
        void *ready_userdata;                /* passed to ready instead, when set */
        bool access_log;                     /* log every request at LOG_INFO; false (the
                                              * zero value) logs none. 5xx responses are
                                              * logged at LOG_ERR either way. */
        http_intercept_fn intercept;         /* may be NULL */
        void *intercept_userdata;
};

/* Create a server (not yet listening). routes is copied. Registers the
 * vigil_http_* families in opts->metrics, so one server per registry.
 * Returns 0, -EINVAL for missing metrics, an invalid route template
 * (not starting with '/', an empty or unterminated {}, more than
 * HTTP_MAX_SEGMENTS segments or HTTP_MAX_PARAMS parameters) or a missing
 * method/handler, -EEXIST when the registry already has the families, or
 * -ENOMEM. */
int http_server_new(const struct http_server_options *opts, const struct http_route *routes,
                    size_t n_routes, struct http_server **ret);
/* Bind (unless given a socket) and start serving. listen is parsed by
 * conf_parse_listen(); a host name is resolved and the first address that
 * binds is used; ":port" listens on every address, IPv6 and IPv4 (falling
 * back to IPv4 only without IPv6). Returns 0, -EINVAL for
 * an unparsable listen address, -EALREADY when already started, the errno
 * of resolving, socket(), bind() or listen() (e.g. -EADDRINUSE), or -EIO
 * when libmicrohttpd refuses to start. */
int http_server_start(struct http_server *s);
/* The port actually bound (useful with ":0"); 0 before start. */
uint16_t http_server_port(const struct http_server *s);
/* For the watchdog: false when a handler has been running longer than
 * max_request_usec (a hung worker). Time spent receiving a request from a
 * slow client does not count, so a client cannot make the server look
 * hung. */
bool http_server_is_healthy(struct http_server *s, uint64_t max_request_usec);
/* Hold every request (the built-in routes too) whose handler has not
 * started yet, until released (hold false): they are answered afterwards.
 * A drain releases them too. Any thread. */
void http_server_hold(struct http_server *s, bool hold);
/* Stop accepting, let in-flight requests finish for up to timeout_ms, then
 * stop. Connections without a complete request header (silent ones, or a
 * header still arriving) are waited for only up to 1 s (a request already
 * on its way arrives in that time), and idle keep-alive connections not at
 * all, so neither holds the exit to the timeout. Responses sent while
 * draining carry "Connection: close". After the
 * timeout every connection is closed; a handler still running is waited
 * for by the stop itself (it cannot be interrupted; systemd's stop timeout
 * is the backstop), and its response is lost.
 * A socket-activated listener is left open for systemd; one the server
 * bound itself is closed. Idempotent. */
void http_server_drain(struct http_server *s, unsigned timeout_ms);
/* Stop (without waiting, as drain with timeout 0) and free. Accepts NULL. */
void http_server_free(struct http_server *s);

/* Request accessors; strings are valid until the handler returns. The
 * body is NUL-terminated (it may contain NUL bytes itself); with no body
 * it is "" and *ret_len 0. ret_len may be NULL. Header lookup is
 * case-insensitive. */
const char *http_request_method(const struct http_request *req);
const char *http_request_path(const struct http_request *req);
const char *http_request_route(const struct http_request *req); /* the template */
const char *http_request_header(const struct http_request *req, const char *name);
const char *http_request_param(const struct http_request *req, const char *name); /* {name} */
const char *http_request_body(const struct http_request *req, size_t *ret_len);
struct span *http_request_span(const struct http_request *req);
/* The bearer token of the Authorization header (http_bearer_token()), or
 * NULL. */
const char *http_request_bearer(const struct http_request *req);

/* Parse the body as a JSON object (json-util limits, JSON_DEFAULT_MAX_DEPTH).
 * The Content-Type must be absent or application/json (parameters such as
 * charset allowed). Returns 0 and a new reference in *ret. On failure the
 * 400 (code from json_parse_object(): invalid_json, invalid_utf8, too_deep,
 * not_an_object) or 415 "unsupported_media_type" has already been sent and
 * a negative errno is returned; the handler just returns. */
int http_request_json(struct http_request *req, struct json_object **ret);

/* Responses: a handler sends exactly one; a second returns -EALREADY. A
 * handler that sends none gets a 500 "internal" on its behalf (and a log
 * line: that is a bug). Every response with a body has a Content-Type;
 * http_reply_json and http_reply_error send application/json, and the
 * error message is escaped by json-c. http_reply_empty sends no body (and
 * no Content-Type). Return 0, -EALREADY, -EINVAL or -ENOMEM/-EIO. */
int http_reply(struct http_request *req, unsigned status, const char *content_type,
               const char *body, size_t len);
/* body is serialised, not consumed: the caller still owns its reference. */
int http_reply_json(struct http_request *req, unsigned status, struct json_object *body);
int http_reply_error(struct http_request *req, unsigned status, const char *code,
                     const char *format, ...) _printf_(4, 5);
int http_reply_empty(struct http_request *req, unsigned status); /* e.g. 204 */
/* 503 with Retry-After: 1, code and "<what> is not answering". */
int http_reply_unavailable(struct http_request *req, const char *code, const char *what);
/* The answer for an error r from a dependency (a pool, a client) that the
 * handler gives no more specific meaning: http_reply_unavailable() with
 * "dependency_unavailable" when r says it is unreachable or too slow
 * (-ECONNREFUSED, -ECONNRESET, -ETIMEDOUT, -EHOSTDOWN, -EHOSTUNREACH,
 * -ENOTCONN, -EPIPE, or one in also_unavailable, a 0-terminated list that
 * may be NULL), else a 500 "internal" and an error logged once. */
int http_reply_dependency_error(struct http_request *req, int r, const char *dependency,
                                const int *also_unavailable);
/* Extra response headers; call before the reply. Names must be tokens and
 * values free of CR, LF and other control characters (-EINVAL);
 * Content-Type and Content-Length are set by the reply functions (-EINVAL
 * here). At most HTTP_MAX_REPLY_HEADERS (-E2BIG). */
int http_reply_add_header(struct http_request *req, const char *name, const char *value);
