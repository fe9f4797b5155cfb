/* vigil-paymentd's simulated payment processor: a configurable latency, a
 * share of declined charges (a business outcome, answered 402), and the
 * [faults] of chaos drills (added latency and a share of injected
 * processor errors, answered 503), all changeable at run time on SIGHUP.
 *
 * The settings are atomics, so a reload on the main thread is seen by the
 * next charge on any request thread without a lock; one charge may see a
 * mix of old and new values while a reload happens, which is harmless.
 *
 * Thread-safety: every function may be called from any thread. */
#pragma once

#include <stdatomic.h>
#include <stdint.h>

struct tracer;

#define PROCESSOR_MAX_LATENCY_MS 10000 /* each of latency_ms and fault_latency_ms */
/* "u<user id>:<Idempotency-Key>" and NUL: 1 + 19 + 1 + 128 + 1, rounded up. */
#define PROCESSOR_REFERENCE_MAX 160

struct processor_settings {
        int64_t latency_ms;       /* 0..PROCESSOR_MAX_LATENCY_MS */
        double decline_ratio;     /* 0..1 */
        int64_t fault_latency_ms; /* added on top, 0..PROCESSOR_MAX_LATENCY_MS */
        double fault_error_ratio; /* 0..1: share of charges failing with an injected error */
};

struct payment_processor {
        atomic_int_least64_t latency_ms;
        _Atomic double decline_ratio;
        atomic_int_least64_t fault_latency_ms;
        _Atomic double fault_error_ratio;
};

enum processor_outcome {
        PROCESSOR_APPROVED,
        PROCESSOR_DECLINED,
        PROCESSOR_FAILED, /* injected fault: the processor did not charge */
};

/* Store new settings (values out of range are clamped). */
void processor_configure(struct payment_processor *p, const struct processor_settings *s);
/* The settings in effect now. */
void processor_settings_get(const struct payment_processor *p, struct processor_settings *ret);

/* The outcome for two uniform draws in [0, 1): the fault draw decides first
 * (fault_draw < fault_error_ratio fails), then the decline draw
 * (decline_draw < decline_ratio declines). Pure, for tests. */
enum processor_outcome processor_decide(const struct processor_settings *s, double fault_draw,
                                        double decline_draw);

/* The reference a charge is known by at the processor, which real
 * processors use as their idempotency key: "u<user_id>:<key>". An
 * Idempotency-Key is only unique per user (two users may well both send
 * "order-1"), so the reference is scoped to the user: one user's retry is
 * one charge at the processor, and two users' charges never collide
 * there. key is at most IDEMPOTENCY_KEY_MAX_LENGTH (128) bytes. Returns 0,
 * or -EINVAL when it would not fit. */
int processor_reference(int64_t user_id, const char *key, char buf[static PROCESSOR_REFERENCE_MAX]);

/* Charge amount_cents for user_id's request with Idempotency-Key key: wait
 * latency_ms + fault_latency_ms, then decide with fresh random draws. The
 * processor is given processor_reference(user_id, key), so that a retried
 * call for the same charge (after a takeover) is one charge at a real
 * processor. Records a client span "charge processor" (child of the
 * thread's current span) on tracer (may be NULL). Returns the outcome;
 * never fails (a reference that does not fit fails the charge). */
enum processor_outcome processor_charge(struct payment_processor *p, struct tracer *tracer,
                                        int64_t user_id, const char *key, int64_t amount_cents);

const char *processor_outcome_to_string(enum processor_outcome o);
