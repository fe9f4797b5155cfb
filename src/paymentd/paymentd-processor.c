#include "paymentd-processor.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>

#include "trace.h"

static int64_t clamp_ms(int64_t v)
{
        if (v < 0)
                return 0;
        return v > PROCESSOR_MAX_LATENCY_MS ? PROCESSOR_MAX_LATENCY_MS : v;
}

static double clamp_ratio(double v)
{
        if (!(v > 0.0)) /* also NaN */
                return 0.0;
        return v > 1.0 ? 1.0 : v;
}

void processor_configure(struct payment_processor *p, const struct processor_settings *s)
{
        atomic_store(&p->latency_ms, clamp_ms(s->latency_ms));
        atomic_store(&p->decline_ratio, clamp_ratio(s->decline_ratio));
        atomic_store(&p->fault_latency_ms, clamp_ms(s->fault_latency_ms));
        atomic_store(&p->fault_error_ratio, clamp_ratio(s->fault_error_ratio));
}

void processor_settings_get(const struct payment_processor *p, struct processor_settings *ret)
{
        /* The atomics are only read; the casts drop the const C11 would not
         * accept for atomic_load() with some compilers. */
        struct payment_processor *q = (struct payment_processor *)p;

        ret->latency_ms = atomic_load(&q->latency_ms);
        ret->decline_ratio = atomic_load(&q->decline_ratio);
        ret->fault_latency_ms = atomic_load(&q->fault_latency_ms);
        ret->fault_error_ratio = atomic_load(&q->fault_error_ratio);
}

enum processor_outcome processor_decide(const struct processor_settings *s, double fault_draw,
                                        double decline_draw)
{
        if (fault_draw < s->fault_error_ratio)
                return PROCESSOR_FAILED;
        if (decline_draw < s->decline_ratio)
                return PROCESSOR_DECLINED;
        return PROCESSOR_APPROVED;
}

/* A uniform draw in [0, 1) with 53 random bits. getrandom() on the urandom
 * pool does not block once the pool is initialised (long before a daemon
 * starts); should it fail anyway, the clock is a good enough dice for a
 * simulation. */
static double uniform_draw(void)
{
        uint64_t v;

        if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v)) {
                struct timespec ts;

                clock_gettime(CLOCK_MONOTONIC, &ts);
                v = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL;
        }
        return (double)(v >> 11) * 0x1.0p-53;
}

static void sleep_ms(int64_t ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

        while (ms > 0 && nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

int processor_reference(int64_t user_id, const char *key, char buf[static PROCESSOR_REFERENCE_MAX])
{
        int n = snprintf(buf, PROCESSOR_REFERENCE_MAX, "u%" PRId64 ":%s", user_id, key);

        return n < 0 || n >= PROCESSOR_REFERENCE_MAX ? -EINVAL : 0;
}

enum processor_outcome processor_charge(struct payment_processor *p, struct tracer *tracer,
                                        int64_t user_id, const char *key, int64_t amount_cents)
{
        char reference[PROCESSOR_REFERENCE_MAX];
        struct processor_settings s;
        enum processor_outcome outcome;
        struct span *span;

        if (processor_reference(user_id, key, reference) < 0)
                return PROCESSOR_FAILED;
        processor_settings_get(p, &s);
        span = span_start(tracer, "charge processor", SPAN_KIND_CLIENT, NULL);
        span_set_attribute_string(span, "peer.service", "processor");
        span_set_attribute_int(span, "vigil.payment.amount_cents", amount_cents);
        /* reference is what a real processor's idempotency key would be;
         * the simulation decides by chance alone. */

        sleep_ms(s.latency_ms + s.fault_latency_ms);
        outcome = processor_decide(&s, uniform_draw(), uniform_draw());

        span_set_attribute_string(span, "vigil.payment.outcome",
                                  processor_outcome_to_string(outcome));
        if (outcome == PROCESSOR_FAILED)
                span_set_status(span, SPAN_STATUS_ERROR, "injected processor fault");
        span_end(span);
        return outcome;
}

const char *processor_outcome_to_string(enum processor_outcome o)
{
        switch (o) {
        case PROCESSOR_APPROVED:
                return "approved";
        case PROCESSOR_DECLINED:
                return "declined";
        case PROCESSOR_FAILED:
                return "failed";
        }
        return "unknown";
}
