/* The client of vigil-authd that every daemon whose API needs a logged-in
 * user shares (paymentd, inventoryd): POST /verify of a bearer token, and
 * GET /health for readiness. It is an http-client (peer "auth"), so each
 * call is a client span whose context goes out as traceparent, and is
 * counted in vigil_http_client_requests_total{peer="auth"},
 * vigil_dependency_request_duration_seconds{dependency="auth"} and
 * vigil_dependency_up{dependency="auth"}.
 *
 * Thread-safety: one struct auth_client is shared by all threads. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct http_request;
struct metrics_registry;
struct tracer;
struct auth_client;

/* Bound on a bearer token forwarded to authd (a real one is ~300 bytes). */
#define AUTH_TOKEN_MAX_LENGTH 4096

struct auth_client_options {
        const char *base_url;             /* "http://127.0.0.1:8001" */
        unsigned timeout_ms;              /* total per call; connecting gets at most 1000 of it */
        struct metrics_registry *metrics; /* may be NULL */
        struct tracer *tracer;            /* may be NULL */
};

/* Returns 0, or -EINVAL/-EEXIST/-ENOMEM as http_client_new(). */
int auth_client_new(const struct auth_client_options *opts, struct auth_client **ret);
void auth_client_free(struct auth_client *c); /* accepts NULL */
/* Treat authd as down (http_client_set_failed()). Any thread. */
void auth_client_set_failed(struct auth_client *c, bool failed);

/* Ask authd whether token is a valid, unrevoked session. Returns 0 and the
 * user id; -EACCES when it is not (NULL, empty, longer than
 * AUTH_TOKEN_MAX_LENGTH, unsendable, or answered 401); or, when authd
 * could not tell, -EPROTO (a status other than 200 and 401), -EBADMSG (a
 * 200 without a user id), -ENOMEM, or a transport error of
 * http_client_request() (-ETIMEDOUT, -ECONNREFUSED, -EIO …). */
int auth_client_verify(struct auth_client *c, const char *token, int64_t *ret_user_id);

/* GET /health. Returns 0 when authd answers 200, else a negative errno. */
int auth_client_health(struct auth_client *c);

/* The user of req's bearer token, for a handler: returns 0 and the user
 * id, or has replied itself and returns negative: 401 "invalid_token" with
 * WWW-Authenticate for a missing, invalid or revoked token, 503
 * "dependency_unavailable" (Retry-After: 1) when authd could not tell.
 * It handles the error, so it logs (once) an answer of authd's that breaks
 * the contract. */
int auth_request_user(struct auth_client *c, struct http_request *req, int64_t *ret_user_id);

/* The 401 auth_request_user() sends, for handlers that refuse a request
 * without a token before looking further. */
void auth_reply_invalid_token(struct http_request *req);
