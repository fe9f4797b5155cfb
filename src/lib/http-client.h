/* HTTP client on libcurl for calls between vigil services: keep-alive
 * connection reuse, connect and total timeouts, traceparent injection, a
 * client span and metrics per call (vigil_http_client_requests_total{peer,code},
 * vigil_dependency_request_duration_seconds{dependency=peer,operation=METHOD},
 * vigil_dependency_errors_total).
 *
 * Thread-safety: one struct http_client is shared by all threads; each
 * call borrows a curl handle from an internal pool, so connections are
 * reused across requests and threads. */
#pragma once

#include <stddef.h>

struct metrics_registry;
struct tracer;
struct http_client;

struct http_client_options {
        const char *peer;        /* metric label / span peer.service, e.g. "auth" */
        const char *base_url;    /* "http://127.0.0.1:8001" */
        unsigned connect_timeout_ms; /* 0: 1000 */
        unsigned timeout_ms;     /* total; 0: 5000 */
        size_t max_response;     /* bytes; 0: 1 MiB; larger answers fail with -EFBIG */
        unsigned max_idle_handles; /* 0: 64 */
        struct metrics_registry *metrics; /* may be NULL */
        struct tracer *tracer;   /* may be NULL */
};

struct http_client_response {
        long status;
        char *body; /* NUL-terminated, malloc()ed */
        size_t body_len;
};

int http_client_new(const struct http_client_options *opts, struct http_client **ret);
void http_client_free(struct http_client *c); /* accepts NULL */

/* Perform one request to base_url + path. headers is NULL or a
 * NULL-terminated list of "Name: value" lines. Returns 0 with *ret filled
 * for any HTTP status, or -ETIMEDOUT, -ECONNREFUSED, -EFBIG, -EIO. */
int http_client_request(struct http_client *c, const char *method, const char *path,
                        const char *const *headers, const char *body, size_t body_len,
                        struct http_client_response *ret);
void http_client_response_done(struct http_client_response *r);
