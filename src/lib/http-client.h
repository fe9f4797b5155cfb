/* HTTP client on libcurl for calls between vigil services: keep-alive
 * connection reuse, connect and total timeouts, traceparent injection, a
 * client span and metrics per call (vigil_http_client_requests_total{peer,code},
 * vigil_dependency_request_duration_seconds{dependency=peer,operation=METHOD},
 * vigil_dependency_errors_total, vigil_dependency_up{dependency=peer}).
 *
 * Thread-safety: one struct http_client is shared by all threads; each
 * call borrows a curl handle from an internal pool, so connections are
 * reused across requests and threads. The first http_client_new() of the
 * process calls curl_global_init() (once, under pthread_once; it is never
 * undone): create clients before starting threads that use libcurl in
 * other ways, as libcurl asks.
 *
 * vigil_http_client_requests_total is shared by every client of a
 * registry: the first client creates it, the others find it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define HTTP_CLIENT_MAX_PATH 4096 /* bytes of the path (and query) of one request */

struct metrics_registry;
struct tracer;
struct http_client;

struct http_client_options {
        const char *peer;                 /* metric label / span peer.service, e.g. "auth" */
        const char *base_url;             /* "http://127.0.0.1:8001" */
        unsigned connect_timeout_ms;      /* 0: 1000 */
        unsigned timeout_ms;              /* total; 0: 5000 */
        size_t max_response;              /* bytes; 0: 1 MiB; larger answers fail with -EFBIG */
        unsigned max_idle_handles;        /* 0: 64 */
        struct metrics_registry *metrics; /* may be NULL */
        struct tracer *tracer;            /* may be NULL */
};

struct http_client_response {
        long status;
        char *body; /* NUL-terminated, malloc()ed */
        size_t body_len;
};

/* Returns 0, -EINVAL for a missing peer, a base_url that is not an
 * absolute http:// or https:// URL (a trailing '/' is dropped), -EEXIST
 * when the registry holds the metric names but not from this module, or
 * -ENOMEM. */
int http_client_new(const struct http_client_options *opts, struct http_client **ret);
/* Accepts NULL. No request may be running. */
void http_client_free(struct http_client *c);
/* While failed, every request fails at once with -ECONNREFUSED, recorded
 * as an error (vigil_dependency_up 0), as when the peer is down: for
 * [faults] fail_dependency. Any thread. */
void http_client_set_failed(struct http_client *c, bool failed);

/* Perform one request to base_url + path. headers is NULL or a
 * NULL-terminated list of "Name: value" lines. Returns 0 with *ret filled
 * for any HTTP status, or -ETIMEDOUT (connect or total timeout),
 * -ECONNREFUSED (could not connect), -EFBIG (answer larger than
 * max_response), -EINVAL (method not a token, path not starting with '/'
 * or over HTTP_CLIENT_MAX_PATH, or a header or path with control
 * characters), -ENOMEM, or -EIO for anything else. Redirects are not
 * followed (a 3xx is returned as such); only http and https are spoken.
 *
 * The call is a span of kind client named after the method, a child of
 * the calling thread's current span, and its context is sent as
 * traceparent. A transport failure or a 5xx counts as a dependency error
 * (and code="error" in vigil_http_client_requests_total for the former);
 * vigil_dependency_up{dependency=peer} is 1 after a call that got any
 * answer and 0 after a transport failure. */
int http_client_request(struct http_client *c, const char *method, const char *path,
                        const char *const *headers, const char *body, size_t body_len,
                        struct http_client_response *ret);
/* Free the body and reset r. Accepts a zeroed response. */
void http_client_response_done(struct http_client_response *r);
