/* Charges of vigil-paymentd: amounts, idempotency keys, the payment row,
 * its outbox event and the revenue aggregate, all in the payment schema.
 * Knows nothing of HTTP: a stored response is a status and body bytes the
 * caller encoded.
 *
 * How a charge runs (the idempotency protocol):
 *
 *   1. payments_claim() inserts the key as in_progress with a random claim
 *      token, in its own short statement. The processor call that follows
 *      holds no row lock and no pooled connection, however slow it is. The
 *      claim commits without waiting for its WAL flush (a claim lost in a
 *      crash promises nothing: no client was answered from it); every
 *      answer stored in step 2 commits synchronously, which flushes the
 *      claim with it, before the client gets it.
 *   2. The caller calls the processor, then ends the claim in exactly one
 *      way: payments_complete() (approved: payment row, outbox row, stored
 *      201, revenue in one transaction, then a NOTIFY),
 *      payments_store_response() (declined: the 402 is stored and replayed
 *      like a success), or
 *      payments_release() (an injected processor error: transient, so the
 *      key is deleted and a retry with the same key can succeed).
 *
 * Every write that ends a claim is fenced by its token: it only matches the
 * key row while it is still in_progress with that token, in the same
 * transaction as the payment row, so two requests can never both complete
 * a key. A claim whose owner died (kill -9 between the two steps, a
 * database outage at step 2) is not stuck forever: once it is older than
 * takeover_seconds -- longer than any request can run, because the
 * watchdog kills a daemon whose request hangs for 30 s -- the next request
 * with that key takes it over with a new token, and the late owner, should
 * it come back, loses at the fence. The processor is given a reference
 * made of the user and the key (processor_reference()), as real processors
 * take an idempotency key, so the retried processor call after a takeover
 * is not a second charge there either, and two users who happen to send
 * the same key are two charges.
 *
 * Thread-safety: every function may be called from any thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pg.h"

#define PAYMENTD_SCHEMA "payment"
extern const struct pg_schema paymentd_schema;

#define PAYMENT_MAX_AMOUNT_CENTS   100000000LL /* $1 000 000 */
#define PAYMENT_AMOUNT_TEXT_MAX    24          /* "1000000.00" and NUL, with room */
#define IDEMPOTENCY_KEY_MAX_LENGTH 128
#define PAYMENT_TRACESTATE_MAX     512  /* longer incoming tracestate is dropped */
#define PAYMENT_RESPONSE_MAX       4096 /* bytes of a stored response body */
#define PAYMENT_OUTBOX_CHANNEL     "payment_outbox"

/* Parse a JSON number's source text as an amount of dollars into cents,
 * exactly (decimal digits, no floating point): "19.99", "20", "19.990",
 * "1.999e1" are 1999 and 2000 and 1999 and 1999 cents. The grammar is
 * JSON's number without the sign, and with leading zeros allowed in the
 * integer part (json-c's tokener lets them through):
 *
 *     digit+ ( "." digit+ )? ( ("e" | "E") ("+" | "-")? digit+ )?
 *
 * The value is exact whatever the number of digits of each part: an
 * exponent is not clamped into range ("0.<99997 zeros>1e1000000" is a
 * huge amount, not 100 dollars). Returns 0 and sets *ret_cents, or
 * -EINVAL (leaving *ret_cents alone) for anything that is not 0.01 ..
 * 1 000 000.00 dollars in whole cents: negative, zero, too large,
 * fractional cents ("19.999"), or not in that grammar. */
int payment_parse_amount(const char *text, int64_t *ret_cents);
/* cents as dollars with two decimals ("19.99", "0.05", "1000000.00"). */
void payment_format_amount(int64_t cents, char buf[static PAYMENT_AMOUNT_TEXT_MAX]);

/* The {id} of GET /payment/{id}: 1..18 decimal digits without sign or
 * leading zero. Returns 0 and sets *ret_id, or -EINVAL (NULL too). */
int payment_parse_id(const char *s, int64_t *ret_id);

/* An Idempotency-Key is 1..IDEMPOTENCY_KEY_MAX_LENGTH bytes of printable
 * ASCII (0x20..0x7e). Returns 0, -ENOENT for NULL or "", -EINVAL. */
int idempotency_key_validate(const char *key);

/* Is state, a request's tracestate header, carried into the payment's
 * event? Yes when it is 1..PAYMENT_TRACESTATE_MAX bytes of printable ASCII
 * (0x20..0x7e); anything else (NULL too) is dropped, not refused. */
bool payment_tracestate_is_forwardable(const char *state);

struct payment {
        int64_t id;
        int64_t user_id;
        int64_t amount_cents;
        int64_t reservation_id; /* the reservation it paid; 0: none */
        char status[16];        /* "success" */
        char created_at[32];    /* "2026-11-24T04:20:00Z" */
        int64_t created_epoch;
};

/* The message body of docs/messaging.md for p, malloc()ed, NUL-terminated;
 * NULL on OOM. ret_len may be NULL. */
char *payment_event_json(const struct payment *p, size_t *ret_len);

/* An in-progress claim owned by the caller. */
struct payment_claim {
        int64_t user_id;
        char key[IDEMPOTENCY_KEY_MAX_LENGTH + 1];
        int64_t amount_cents;
        int64_t reservation_id; /* 0: none */
        int64_t token;
        int64_t payment_id; /* the id the payment gets when completed */
        bool taken_over;    /* from a previous owner that never finished */
};

enum claim_state {
        CLAIM_OWNED,       /* go on: call the processor, then end the claim */
        CLAIM_REPLAY,      /* completed before: replay the stored response */
        CLAIM_IN_PROGRESS, /* another request holds it now (409) */
        CLAIM_KEY_REUSED,  /* the key was used with another request (422) */
};

struct claim_result {
        enum claim_state state;
        struct payment_claim claim; /* CLAIM_OWNED */
        unsigned response_status;   /* CLAIM_REPLAY */
        char *response_body;        /* CLAIM_REPLAY, malloc()ed */
        size_t response_len;
};
/* Free what a claim result holds. Accepts a zeroed one. */
void claim_result_done(struct claim_result *r);

/* Claim key for user_id and a charge of amount_cents paying reservation_id
 * (0: none) -- the request the key is bound to, compared by its SHA-256.
 * Returns 0 with *ret filled, or a negative errno from the pool (nothing
 * claimed). takeover_seconds: see above. */
int payments_claim(struct pg_pool *pool, int64_t user_id, const char *key, int64_t amount_cents,
                   int64_t reservation_id, unsigned takeover_seconds, struct claim_result *ret);

/* A charge may pay a stock reservation of vigil-inventoryd. The
 * reservation lives in the inventory schema, which this role cannot read;
 * inventoryd grants it exactly two SECURITY DEFINER functions (see
 * inventoryd-reservations.h), called here: one to look before the
 * processor is called, one to mark the reservation paid in the
 * transaction of the payment.
 *
 * The state of user_id's reservation_id ("held", "expired", "released",
 * "paid") into state. Returns 0, -ENOENT when the user has no such
 * reservation, -ENOPKG when inventoryd has not (yet) granted us its
 * functions (not migrated, or the role is not ours), or a negative errno
 * from the pool. */
#define PAYMENT_RESERVATION_STATE_MAX 16
int payments_reservation_state(struct pg_pool *pool, int64_t reservation_id, int64_t user_id,
                               char state[static PAYMENT_RESERVATION_STATE_MAX]);

/* Encodes the response of a created payment (the body the client gets and
 * every replay repeats). Returns 0 or -ENOMEM. */
typedef int (*payment_encode_fn)(const struct payment *p, char **ret_body, size_t *ret_len);

/* End an owned claim with an approved charge, in one statement (one
 * transaction, committed synchronously): insert the payment (with the
 * claim's payment id), its outbox event (message id "payment-<id>",
 * traceparent and tracestate as given, may be NULL), store status 201 and
 * the encoded body on the key, add the amount to the revenue aggregate;
 * once committed, NOTIFY the relay (in a transaction of its own).
 * When the claim pays a reservation, the reservation is marked paid in the
 * same transaction (one conditional UPDATE WHERE state = 'held' AND it has
 * not expired, so inventoryd's expiry and release can never also return
 * its stock); should it not be held any more, nothing is written.
 * Returns 0 with the payment and the body (malloc()ed) the client gets,
 * -ESTALE when the claim was taken over meanwhile (nothing written),
 * -EKEYEXPIRED when the reservation is no longer held (nothing written),
 * -ENOPKG as payments_reservation_state(), or a negative errno from the
 * pool or the encoder. On an error the commit may
 * still have happened (a connection lost during COMMIT): the key then holds
 * the answer and a retry replays it. */
int payments_complete(struct pg_pool *pool, const struct payment_claim *claim,
                      const char *traceparent, const char *tracestate, payment_encode_fn encode,
                      struct payment *ret_payment, char **ret_body, size_t *ret_len);

/* End an owned claim with a stored answer and no payment (a decline).
 * Returns 0, -ESTALE, -EINVAL for a body over PAYMENT_RESPONSE_MAX, or a
 * negative errno from the pool. */
int payments_store_response(struct pg_pool *pool, const struct payment_claim *claim,
                            unsigned status, const char *body, size_t len);

/* Give an owned claim up: the key is deleted so a retry can run afresh.
 * Returns 0 (also when the claim was already gone or taken over) or a
 * negative errno from the pool; then the key stays in_progress until it
 * can be taken over. */
int payments_release(struct pg_pool *pool, const struct payment_claim *claim);

/* The payment id of user_id. Returns 0, -ENOENT when there is none (also
 * when it belongs to another user), or a negative errno from the pool. */
int payments_get(struct pg_pool *pool, int64_t id, int64_t user_id, struct payment *ret);

struct payment_stats {
        int64_t revenue_cents;
        int64_t outbox_pending;
        double outbox_oldest_age_seconds; /* 0 when nothing is pending */
};

/* The revenue aggregate and the outbox backlog, in one cheap query (the
 * aggregate row and the partial index of unpublished events). */
int payments_stats(struct pg_pool *pool, struct payment_stats *ret);

/* Delete up to limit idempotency keys created more than key_hours ago and
 * up to limit outbox events published more than outbox_hours ago. Returns 0
 * and the number of rows deleted (when that is 2 * limit, call again), or a
 * negative errno from the pool. */
int payments_prune(struct pg_pool *pool, int64_t key_hours, int64_t outbox_hours, unsigned limit,
                   int64_t *ret_deleted);
