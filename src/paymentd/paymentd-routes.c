#include "paymentd-routes.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "auth-client.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"
#include "paymentd-manager.h"
#include "paymentd-payments.h"
#include "paymentd-processor.h"
#include "trace.h"

/* Answer for an error from the pool that has no more specific meaning: a
 * failed statement or serialisation conflict counts as PostgreSQL not
 * answering. */
static void reply_failure(struct http_request *req, int r, const char *dependency)
{
        http_reply_dependency_error(req, r, dependency, (const int[]){-EIO, -EAGAIN, 0});
}

/* Send stored (or about to be stored) response bytes as they are. */
static void reply_stored(struct http_request *req, unsigned status, const char *body, size_t len,
                         bool replayed)
{
        if (replayed)
                http_reply_add_header(req, "Idempotent-Replayed", "true");
        http_reply(req, status, "application/json", body, len);
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
            (p->reservation_id > 0 &&
             json_object_object_add(o, "reservation_id", json_object_new_int64(p->reservation_id)) <
                     0) ||
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

/* An error body in the shape of every error (http_reply_error's), but as
 * bytes we can store and replay. */
static char *error_body(const char *code, const char *message, size_t *ret_len)
{
        _cleanup_(json_object_putp) struct json_object *o = json_object_new_object();
        struct json_object *e = json_object_new_object();

        if (!o || !e) {
                json_object_put(e);
                return NULL;
        }
        json_object_object_add(e, "code", json_object_new_string(code));
        json_object_object_add(e, "message", json_object_new_string(message));
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

/* End an owned claim with a stored error answer, replayed like any other
 * (the processor has already been asked: a retry must not ask again), and
 * count it in outcome once stored. */
static void finish_stored_error(struct http_request *req, struct paymentd_manager *m,
                                const struct payment_claim *claim, unsigned status,
                                const char *code, const char *message, struct metric *outcome)
{
        _cleanup_free_ char *body = NULL;
        size_t len = 0;
        int r;

        body = error_body(code, message, &len);
        if (!body) {
                (void)payments_release(m->daemon->pg, claim);
                http_reply_error(req, 500, "internal", "Internal error");
                return;
        }
        r = payments_store_response(m->daemon->pg, claim, status, body, len);
        if (r == -ESTALE) {
                http_reply_add_header(req, "Retry-After", "1");
                http_reply_error(req, 409, "idempotency_key_in_progress",
                                 "A request with this Idempotency-Key is in progress");
                return;
        }
        if (r < 0) {
                (void)payments_release(m->daemon->pg, claim);
                reply_failure(req, r, "postgres");
                return;
        }
        metrics_counter_inc(outcome);
        reply_stored(req, status, body, len, false);
}

static void reply_inventory_unavailable(struct http_request *req)
{
        log_warning("Cannot pay reservations: vigil-inventoryd has not granted this role "
                    "inventory.reservation_state() and inventory.pay_reservation() (is it "
                    "running, migrated, with [reservations] payment_role naming this role?)");
        http_reply_unavailable(req, "dependency_unavailable", "inventory");
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
        r = payments_complete(m->daemon->pg, claim, *traceparent ? traceparent : NULL, tracestate,
                              encode_created, &payment, &body, &len);
        if (r == -ESTALE) {
                /* Only after a database stall longer than takeover_seconds:
                 * another request owns the key now and will answer. */
                http_reply_add_header(req, "Retry-After", "1");
                http_reply_error(req, 409, "idempotency_key_in_progress",
                                 "A request with this Idempotency-Key is in progress");
                return;
        }
        if (r == -EKEYEXPIRED) {
                /* Expired or released while the processor was asked: no
                 * payment (a real processor's authorisation is voided). */
                finish_stored_error(req, m, claim, 409, "reservation_not_held",
                                    "The reservation is no longer held", m->transactions_failed);
                return;
        }
        if (r < 0) {
                metrics_counter_inc(m->transactions_failed);
                (void)payments_release(m->daemon->pg, claim);
                if (r == -ENOPKG)
                        reply_inventory_unavailable(req);
                else
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
        finish_stored_error(req, m, claim, 402, "payment_declined", "The payment was declined",
                            m->transactions_declined);
}

/* The optional "reservation_id" the charge pays (0: none); replies 400
 * itself. */
static int decode_reservation_id(struct http_request *req, struct json_object *body,
                                 int64_t *ret_id)
{
        int r;

        r = json_get_int64(body, "reservation_id", 1, INT64_MAX, ret_id);
        if (r == -ENOENT) {
                *ret_id = 0;
                return 0;
        }
        if (r < 0)
                http_reply_error(req, 400, "invalid_field",
                                 "Field \"reservation_id\" must be an integer from 1 to %" PRId64,
                                 INT64_MAX);
        return r;
}

/* Before the processor is asked: is the reservation the owned claim pays
 * still held by this user? Releases the claim and replies itself when not
 * (nothing was charged, so a retry may run afresh). The transaction of the
 * payment checks again (payments_complete()). */
static int check_reservation(struct http_request *req, struct paymentd_manager *m,
                             const struct payment_claim *claim)
{
        char state[PAYMENT_RESERVATION_STATE_MAX];
        int r;

        r = payments_reservation_state(m->daemon->pg, claim->reservation_id, claim->user_id, state);
        if (r >= 0 && strcmp(state, "held") == 0)
                return 0;

        (void)payments_release(m->daemon->pg, claim);
        if (r == -ENOENT)
                http_reply_error(req, 404, "not_found", "No such reservation");
        else if (r == -ENOPKG)
                reply_inventory_unavailable(req);
        else if (r < 0)
                reply_failure(req, r, "postgres");
        else
                http_reply_error(req, 409, "reservation_not_held",
                                 "Reservation %" PRId64 " is %s, not held", claim->reservation_id,
                                 state);
        return r < 0 ? r : -EKEYEXPIRED;
}

static void handle_charge(struct http_request *req, void *userdata)
{
        struct paymentd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *body = NULL;
        _cleanup_(claim_result_done) struct claim_result claim = {0};
        const char *key = http_request_header(req, "Idempotency-Key");
        int64_t cents, user_id, reservation_id;
        int r;

        if (!http_request_bearer(req)) {
                auth_reply_invalid_token(req);
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
        if (decode_reservation_id(req, body, &reservation_id) < 0)
                return;
        if (auth_request_user(m->daemon->auth, req, &user_id) < 0)
                return;

        r = payments_claim(m->daemon->pg, user_id, key, cents, reservation_id,
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
        if (claim.claim.reservation_id > 0 && check_reservation(req, m, &claim.claim) < 0)
                return;

        switch (processor_charge(&m->processor, m->daemon->tracer, user_id, key, cents)) {
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
                (void)payments_release(m->daemon->pg, &claim.claim);
                http_reply_unavailable(req, "processor_unavailable", "The payment processor");
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

        if (auth_request_user(m->daemon->auth, req, &user_id) < 0)
                return;
        /* Not a number, not yours and not there look the same. */
        r = payment_parse_id(http_request_param(req, "id"), &id);
        if (r >= 0)
                r = payments_get(m->daemon->pg, id, user_id, &p);
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
