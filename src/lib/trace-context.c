/* W3C trace context (traceparent parsing and formatting) and the random
 * trace and span ids: a per-thread xoshiro256** seeded from getrandom(). */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <threads.h>
#include <unistd.h>

#include "macro.h"
#include "trace-internal.h"
#include "trace.h"

/* ---- hex and ids ---- */

static const char hex_digits[] = "0123456789abcdef";

void trace_hex_encode(const uint8_t *p, size_t n, char *out)
{
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = hex_digits[p[i] >> 4];
                out[2 * i + 1] = hex_digits[p[i] & 0xf];
        }
        out[2 * n] = '\0';
}

/* Value of a lower-case hex digit, or -1: W3C trace context allows no
 * upper case. */
static int unhex_lower(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* Decode exactly 2 * n lower-case hex digits from s into ret. */
static int hex_decode_lower(const char *s, size_t n, uint8_t *ret)
{
        for (size_t i = 0; i < n; i++) {
                int hi = unhex_lower(s[2 * i]), lo = unhex_lower(s[2 * i + 1]);

                if (hi < 0 || lo < 0)
                        return -EINVAL;
                ret[i] = (uint8_t)(hi << 4 | lo);
        }
        return 0;
}

static bool is_all_zero(const uint8_t *p, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (p[i] != 0)
                        return false;
        return true;
}

bool trace_context_is_valid(const struct trace_context *ctx)
{
        return ctx && !is_all_zero(ctx->trace_id, TRACE_ID_SIZE) &&
               !is_all_zero(ctx->span_id, SPAN_ID_SIZE);
}

/* Layout: vv-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>; the
 * offsets below are fixed by the version-00 format, which later versions
 * must keep as their prefix. */
#define TP_TRACE_ID_OFFSET 3
#define TP_SPAN_ID_OFFSET  36
#define TP_FLAGS_OFFSET    53

int trace_parse_traceparent(const char *value, struct trace_context *ret)
{
        struct trace_context ctx = {};
        uint8_t version;
        size_t len;

        assert(ret);

        if (!value)
                return -EINVAL;
        len = strnlen(value, TRACEPARENT_LEN + 1);
        if (len < TRACEPARENT_LEN)
                return -EINVAL;
        if (hex_decode_lower(value, 1, &version) < 0 || version == 0xff)
                return -EINVAL;
        if (version == 0 && len != TRACEPARENT_LEN)
                return -EINVAL;
        if (len > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != '-')
                return -EINVAL;
        if (value[TP_TRACE_ID_OFFSET - 1] != '-' || value[TP_SPAN_ID_OFFSET - 1] != '-' ||
            value[TP_FLAGS_OFFSET - 1] != '-')
                return -EINVAL;
        if (hex_decode_lower(value + TP_TRACE_ID_OFFSET, TRACE_ID_SIZE, ctx.trace_id) < 0 ||
            hex_decode_lower(value + TP_SPAN_ID_OFFSET, SPAN_ID_SIZE, ctx.span_id) < 0 ||
            hex_decode_lower(value + TP_FLAGS_OFFSET, 1, &ctx.flags) < 0)
                return -EINVAL;
        /* The meaning of a future version's other flag bits is unknown. */
        if (version != 0)
                ctx.flags &= TRACE_FLAG_SAMPLED;
        if (!trace_context_is_valid(&ctx))
                return -EINVAL;

        *ret = ctx;
        return 0;
}

int trace_parse_trace_id(const char *value, uint8_t ret[static TRACE_ID_SIZE])
{
        struct trace_context ctx = {.span_id = {1}};

        assert(ret);

        if (!value || strnlen(value, 2 * TRACE_ID_SIZE + 1) != 2 * TRACE_ID_SIZE)
                return -EINVAL;
        if (hex_decode_lower(value, TRACE_ID_SIZE, ctx.trace_id) < 0)
                return -EINVAL;
        if (!trace_context_is_valid(&ctx)) /* the trace id is all zeros */
                return -EINVAL;
        memcpy(ret, ctx.trace_id, TRACE_ID_SIZE);
        return 0;
}

void trace_format_traceparent(const struct trace_context *ctx, char buf[static TRACEPARENT_LEN + 1])
{
        assert(ctx);

        memcpy(buf, "00-", 3);
        trace_hex_encode(ctx->trace_id, TRACE_ID_SIZE, buf + TP_TRACE_ID_OFFSET);
        buf[TP_SPAN_ID_OFFSET - 1] = '-';
        trace_hex_encode(ctx->span_id, SPAN_ID_SIZE, buf + TP_SPAN_ID_OFFSET);
        buf[TP_FLAGS_OFFSET - 1] = '-';
        trace_hex_encode(&ctx->flags, 1, buf + TP_FLAGS_OFFSET);
}

void trace_format_trace_id(const struct trace_context *ctx, char buf[static 2 * TRACE_ID_SIZE + 1])
{
        assert(ctx);
        trace_hex_encode(ctx->trace_id, TRACE_ID_SIZE, buf);
}

void trace_format_span_id(const struct trace_context *ctx, char buf[static 2 * SPAN_ID_SIZE + 1])
{
        assert(ctx);
        trace_hex_encode(ctx->span_id, SPAN_ID_SIZE, buf);
}

/* ---- random ids: per-thread xoshiro256** seeded from getrandom() ---- */

struct rng {
        uint64_t s[4];
        unsigned generation;
        bool seeded;
};

static thread_local struct rng thread_rng;
/* Bumped in the child after fork(), so that the child reseeds instead of
 * repeating its parent's ids. */
static atomic_uint fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
        atomic_fetch_add_explicit(&fork_generation, 1, memory_order_relaxed);
}

static void register_atfork(void)
{
        (void)pthread_atfork(NULL, NULL, on_fork_child);
}

static uint64_t splitmix64(uint64_t *x)
{
        uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

uint64_t trace_now_nsec(clockid_t clock)
{
        struct timespec ts;

        clock_gettime(clock, &ts);
        return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

static void rng_seed(struct rng *r)
{
        uint64_t seed[4];
        ssize_t n;

        do
                n = getrandom(seed, sizeof(seed), GRND_NONBLOCK);
        while (n < 0 && errno == EINTR);

        if (n != (ssize_t)sizeof(seed)) {
                /* Entropy pool not ready (early boot) or no getrandom():
                 * ids need to be unique, not secret, so mix what differs
                 * between threads, processes and boots. */
                uint64_t x = trace_now_nsec(CLOCK_REALTIME) ^
                             (trace_now_nsec(CLOCK_MONOTONIC) << 17) ^ ((uint64_t)getpid() << 32) ^
                             (uint64_t)(uintptr_t)r ^ (uint64_t)pthread_self();

                for (size_t i = 0; i < ELEMENTSOF(seed); i++)
                        seed[i] = splitmix64(&x);
        }
        /* xoshiro needs a state that is not all zeros. */
        for (size_t i = 0; i < ELEMENTSOF(seed); i++) {
                uint64_t x = seed[i];

                r->s[i] = splitmix64(&x);
        }
}

static inline uint64_t rotl(uint64_t x, int k)
{
        return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
        struct rng *r = &thread_rng;
        unsigned generation = atomic_load_explicit(&fork_generation, memory_order_relaxed);
        uint64_t result, t;

        if (_unlikely_(!r->seeded || r->generation != generation)) {
                pthread_once(&atfork_once, register_atfork);
                rng_seed(r);
                r->generation = generation;
                r->seeded = true;
        }

        result = rotl(r->s[1] * 5, 7) * 9;
        t = r->s[1] << 17;
        r->s[2] ^= r->s[0];
        r->s[3] ^= r->s[1];
        r->s[1] ^= r->s[2];
        r->s[0] ^= r->s[3];
        r->s[2] ^= t;
        r->s[3] = rotl(r->s[3], 45);
        return result;
}

void trace_random_id(uint8_t *p, size_t n)
{
        do {
                for (size_t i = 0; i < n; i += sizeof(uint64_t)) {
                        uint64_t v = rng_next();
                        size_t k = n - i < sizeof(v) ? n - i : sizeof(v);

                        memcpy(p + i, &v, k);
                }
        } while (is_all_zero(p, n));
}
