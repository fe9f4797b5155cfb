#include "paymentd-routes.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "http-client.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"
#include "paymentd-manager.h"
#include "paymentd-payments.h"
#include "paymentd-processor.h"
#include "trace.h"

/* Bound on a bearer token forwarded to authd (a real one is ~300 bytes). */
#define TOKEN_MAX_LENGTH 4096

/* 503 "<what> is not answering", to be retried. */
static void reply_unavailable(struct http_request *req, const char *code, const char *what)
{
        http_reply_add_header(req, "Retry-After", "1");
        http_reply_error(req, 503, code, "%s is not answering", what);
}

/* Answer for an error from the pool that has no more specific meaning. */
static void reply_failure(struct http_request *req, int r, const char *dependency)
{
        switch (r) {
        case -ECONNREFUSED:
        case -ECONNRESET:
        case -ETIMEDOUT:
        case -EHOSTDOWN:
        case -EHOSTUNREACH:
        case -ENOTCONN:
        case -EPIPE:
        case -EIO:
        case -EAGAIN:
                reply_unavailable(req, "dependency_unavailable", dependency);
                return;
        default:
                log_error_errno(r, "Request failed on %s: %m", dependency);
                http_reply_error(req, 500, "internal", "Internal error");
        }
}

static void reply_invalid_token(struct http_request *req)
{
        http_reply_add_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        http_reply_error(req, 401, "invalid_token", "Missing, invalid or revoked token");
}

/* Send stored (or about to be stored) response bytes as they are. */
static void reply_stored(struct http_request *req, unsigned status, const char *body, size_t len,
                         bool replayed)
{
        if (replayed)
                http_reply_add_header(req, "Idempotent-Replayed", "true");
        http_reply(req, status, "application/json", body, len);
}

/* Ask authd whether the bearer token is good. Returns 0 and the user id,
 * or replies 401/503 itself and returns negative. */
static int authenticate(struct http_request *req, struct paymentd_manager *m, int64_t *ret_user_id)
{
        const char *token = http_request_bearer(req);
        _cleanup_free_ char *header = NULL;
        _cleanup_(json_object_putp) struct json_object *answer = NULL;
        struct http_client_response resp = {0};
        const char *error_code;
        int64_t user_id;
        int r;

        if (!token || strlen(token) > TOKEN_MAX_LENGTH) {
                reply_invalid_token(req);
                return -EACCES;
        }
        if (asprintf(&header, "Authorization: Bearer %s", token) < 0) {
                http_reply_error(req, 500, "internal", "Internal error");
                return -ENOMEM;
        }

        const char *headers[] = {header, NULL};
        r = http_client_request(m->auth, "POST", "/verify", headers, "", 0, &resp);
        if (r == -EINVAL) { /* a token authd could not even be asked about */
                reply_invalid_token(req);
                return r;
        }
        if (r < 0) {
                reply_unavailable(req, "dependency_unavailable", "auth");
                return r;
        }
        if (resp.status == 401) {
                http_client_response_done(&resp);
                reply_invalid_token(req);
                return -EACCES;
        }
        if (resp.status != 200) {
                log_warning("vigil-authd answered /verify with HTTP %ld", resp.status);
                http_client_response_done(&resp);
                reply_unavailable(req, "dependency_unavailable", "auth");
                return -EIO;
        }
        r = json_parse_object(resp.body, resp.body_len, 0, &answer, &error_code);
        if (r >= 0)
                r = json_get_int64(answer, "user_id", 1, INT64_MAX, &user_id);
        http_client_response_done(&resp);
        if (r < 0) {
                log_warning_errno(r, "vigil-authd answered /verify without a user id: %m");
                reply_unavailable(req, "dependency_unavailable", "auth");
                return -EIO;
        }

        *ret_user_id = user_id;
        return 0;
}

/* The amount as exact cents from the JSON number's own text (json-c keeps
 * a parsed double's source text: json_object_get_string() returns it), so
 * 19.99 never passes through binary floating point. Replies 400 itself. */
static int decode_amount(struct http_request *req, struct json_object *body, int64_t *ret_cents)
{
        struct json_object *v = NULL;
        enum json_type type;

        if (!json_object_object_get_ex(body, "amount", &v) || !v) {
                http_reply_error(req, 400, "missing_field", "Field \"amount\" is required");
                return -ENOENT;
        }
        type = json_object_get_type(v);
        if ((type != json_type_int && type != json_type_double) ||
            payment_parse_amount(json_object_get_string(v), ret_cents) < 0) {
                http_reply_error(req, 400, "invalid_field",
                                 "Field \"amount\" must be a number of dollars above 0 and at "
                                 "most 1000000, in whole cents");
                return -EINVAL;
        }
        return 0;
}

static struct json_object *amount_json(int64_t cents)
{
        char text[PAYMENT_AMOUNT_TEXT_MAX];

        /* The double is what json-c would compute; the text is what it
         * writes, so the answer always shows two decimals. */
        payment_format_amount(cents, text);
        return json_object_new_double_s((double)cents / 100.0, text);
}

static struct json_object *payment_json(const struct payment *p, bool with_created_at)
{
        struct json_object *o = json_object_new_object();

        if (!o)
                return NULL;
        if (json_object_object_add(o, "payment_id", json_object_new_int64(p->id)) < 0 ||
            json_object_object_add(o, "amount", amount_json(p->amount_cents)) < 0 ||
            json_object_object_add(o, "status", json_object_new_string(p->status)) < 0 ||
            json_object_object_add(o, "user_id", json_object_new_int64(p->user_id)) < 0 ||
            (with_created_at &&
             json_object_object_add(o, "created_at", json_object_new_string(p->created_at)) < 0)) {
                json_object_put(o);
                return NULL;
        }
        return o;
}

/* payment_encode_fn: the 201 body every replay repeats. */
static int encode_created(const struct payment *p, char **ret_body, size_t *ret_len)
{
        _cleanup_(json_object_putp) struct json_object *o = payment_json(p, false);
        char *s;

        if (!o)
                return -ENOMEM;
        s = json_to_string_dup(o, ret_len);
        if (!s)
                return -ENOMEM;
        *ret_body = s;
        return 0;
}

/* The 402 body, in the shape of every error (http_reply_error's), but as
 * bytes we can store and replay. */
static char *declined_body(size_t *ret_len)
{
        _cleanup_(json_object_putp) struct json_object *o = json_object_new_object();
        struct json_object *e = json_object_new_object();

        if (!o || !e) {
                json_object_put(e);
                return NULL;
        }
        json_object_object_add(e, "code", json_object_new_string("payment_declined"));
        json_object_object_add(e, "message", json_object_new_string("The payment was declined"));
        json_object_object_add(o, "error", e);
        return json_to_string_dup(o, ret_len);
}

/* The trace context the event carries: the request's span. */
static void current_trace(struct http_request *req, char traceparent[static TRACEPARENT_LEN + 1],
                          const char **ret_tracestate)
{
        const struct trace_context *ctx = span_context(http_request_span(req));
        const char *state = http_request_header(req, "tracestate");

        traceparent[0] = '\0';
        if (trace_context_is_valid(ctx))
                trace_format_traceparent(ctx, traceparent);

        *ret_tracestate = payment_tracestate_is_forwardable(state) ? state : NULL;
}

static void finish_approved(struct http_request *req, struct paymentd_manager *m,
                            const struct payment_claim *claim)
{
        _cleanup_free_ char *body = NULL;
        char traceparent[TRACEPARENT_LEN + 1];
        const char *tracestate;
        struct payment payment;
        size_t len = 0;
        int r;

        current_trace(req, traceparent, &tracestate);
        r = payments_complete(m->pg, claim, *traceparent ? traceparent : NULL, tracestate,
                              encode_created, &payment, &body, &len);
        if (r == -ESTALE) {
                /* Only after a database stall longer than takeover_seconds:
                 * another request owns the key now and will answer. */
                http_reply_add_header(req, "Retry-After", "1");
                http_reply_error(req, 409, "idempotency_key_in_progress",
                                 "A request with this Idempotency-Key is in progress");
                return;
        }
        if (r < 0) {
                metrics_counter_inc(m->transactions_failed);
                (void)payments_release(m->pg, claim);
                reply_failure(req, r, "postgres");
                return;
        }

        metrics_counter_inc(m->transactions_success);
        metrics_counter_add(m->amount_cents, (double)payment.amount_cents);
        reply_stored(req, 201, body, len, false);
}

static void finish_declined(struct http_request *req, struct paymentd_manager *m,
                            const struct payment_claim *claim)
{
        _cleanup_free_ char *body = NULL;
        size_t len = 0;
        int r;

        body = declined_body(&len);
        if (!body) {
                (void)payments_release(m->pg, claim);
                http_reply_error(req, 500, "internal", "Internal error");
                return;
        }
        r = payments_store_response(m->pg, claim, 402, body, len);
        if (r == -ESTALE) {
                http_reply_add_header(req, "Retry-After", "1");
                http_reply_error(req, 409, "idempotency_key_in_progress",
                                 "A request with this Idempotency-Key is in progress");
                return;
        }
        if (r < 0) {
                (void)payments_release(m->pg, claim);
                reply_failure(req, r, "postgres");
                return;
        }
        metrics_counter_inc(m->transactions_declined);
        reply_stored(req, 402, body, len, false);
}

static void handle_charge(struct http_request *req, void *userdata)
{
        struct paymentd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *body = NULL;
        _cleanup_(claim_result_done) struct claim_result claim = {0};
        const char *key = http_request_header(req, "Idempotency-Key");
        int64_t cents, user_id;
        int r;

        if (!http_request_bearer(req)) {
                reply_invalid_token(req);
                return;
        }
        r = idempotency_key_validate(key);
        if (r == -ENOENT) {
                http_reply_error(req, 400, "missing_field", "Header Idempotency-Key is required");
                return;
        }
        if (r < 0) {
                http_reply_error(req, 400, "invalid_field",
                                 "Header Idempotency-Key must be 1 to %d printable ASCII "
                                 "characters",
                                 IDEMPOTENCY_KEY_MAX_LENGTH);
                return;
        }
        if (http_request_json(req, &body) < 0)
                return;
        if (decode_amount(req, body, &cents) < 0)
                return;
        if (authenticate(req, m, &user_id) < 0)
                return;

        r = payments_claim(m->pg, user_id, key, cents,
                           (unsigned)m->config->idempotency_takeover_seconds, &claim);
        if (r < 0) {
                reply_failure(req, r, "postgres");
                return;
        }
        switch (claim.state) {
        case CLAIM_REPLAY:
                reply_stored(req, claim.response_status, claim.response_body, claim.response_len,
                             true);
                return;
        case CLAIM_IN_PROGRESS:
                http_reply_add_header(req, "Retry-After", "1");
                http_reply_error(req, 409, "idempotency_key_in_progress",
                                 "A request with this Idempotency-Key is in progress");
                return;
        case CLAIM_KEY_REUSED:
                http_reply_error(req, 422, "idempotency_key_reused",
                                 "This Idempotency-Key was used with a different request");
                return;
        case CLAIM_OWNED:
                break;
        }
        if (claim.claim.taken_over)
                log_notice("Took over idempotency key of user %" PRId64
                           " left unfinished by an earlier request",
                           user_id);

        switch (processor_charge(&m->processor, m->tracer, key, cents)) {
        case PROCESSOR_APPROVED:
                finish_approved(req, m, &claim.claim);
                return;
        case PROCESSOR_DECLINED:
                finish_declined(req, m, &claim.claim);
                return;
        case PROCESSOR_FAILED:
                /* Transient: not stored. The key is released so that a
                 * retry with the same key can succeed. */
                metrics_counter_inc(m->transactions_failed);
                (void)payments_release(m->pg, &claim.claim);
                reply_unavailable(req, "processor_unavailable", "The payment processor");
                return;
        }
}

static void handle_get_payment(struct http_request *req, void *userdata)
{
        struct paymentd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *answer = NULL;
        struct payment p;
        int64_t id, user_id;
        int r;

        if (authenticate(req, m, &user_id) < 0)
                return;
        /* Not a number, not yours and not there look the same. */
        r = payment_parse_id(http_request_param(req, "id"), &id);
        if (r >= 0)
                r = payments_get(m->pg, id, user_id, &p);
        if (r == -EINVAL || r == -ENOENT) {
                http_reply_error(req, 404, "not_found", "No such payment");
                return;
        }
        if (r < 0) {
                reply_failure(req, r, "postgres");
                return;
        }
        answer = payment_json(&p, true);
        if (!answer) {
                http_reply_error(req, 500, "internal", "Internal error");
                return;
        }
        http_reply_json(req, 200, answer);
}

const struct http_route paymentd_routes[] = {
        {"POST", "/charge", handle_charge},
        {"GET", "/payment/{id}", handle_get_payment},
};
const size_t paymentd_routes_count = ELEMENTSOF(paymentd_routes);
