/* Distributed tracing: W3C trace context, spans, and the OTLP/HTTP JSON
 * exporter. The contracts are in trace.h.
 *
 * A recording span is handed by span_end() to a bounded FIFO (an intrusive
 * list under one mutex); one exporter thread per tracer takes batches off
 * it and POSTs them with its own curl handle, so span_end() never waits on
 * the network and never waits for more than the queue's mutex. */
#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <threads.h>
#include <time.h>

#include "json-util.h"
#include "macro.h"
#include "metrics.h"
#include "trace.h"

#define DEFAULT_QUEUE_CAPACITY    4096
#define DEFAULT_BATCH_SIZE        256
#define DEFAULT_FLUSH_INTERVAL_MS 1000
#define DEFAULT_EXPORT_TIMEOUT_MS 2000
#define MAX_INTERVAL_MS           (3600U * 1000U)
#define NSEC_PER_MSEC             1000000ULL
#define NSEC_PER_SEC              1000000000ULL

/* ---- hex and ids ---- */

static const char hex_digits[] = "0123456789abcdef";

static void hex_encode(const uint8_t *p, size_t n, char *out)
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

void trace_format_traceparent(const struct trace_context *ctx, char buf[static TRACEPARENT_LEN + 1])
{
        assert(ctx);

        memcpy(buf, "00-", 3);
        hex_encode(ctx->trace_id, TRACE_ID_SIZE, buf + TP_TRACE_ID_OFFSET);
        buf[TP_SPAN_ID_OFFSET - 1] = '-';
        hex_encode(ctx->span_id, SPAN_ID_SIZE, buf + TP_SPAN_ID_OFFSET);
        buf[TP_FLAGS_OFFSET - 1] = '-';
        hex_encode(&ctx->flags, 1, buf + TP_FLAGS_OFFSET);
}

void trace_format_trace_id(const struct trace_context *ctx, char buf[static 2 * TRACE_ID_SIZE + 1])
{
        assert(ctx);
        hex_encode(ctx->trace_id, TRACE_ID_SIZE, buf);
}

void trace_format_span_id(const struct trace_context *ctx, char buf[static 2 * SPAN_ID_SIZE + 1])
{
        assert(ctx);
        hex_encode(ctx->span_id, SPAN_ID_SIZE, buf);
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

static uint64_t now_nsec(clockid_t clock)
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
                uint64_t x = now_nsec(CLOCK_REALTIME) ^ (now_nsec(CLOCK_MONOTONIC) << 17) ^
                             ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)r ^
                             (uint64_t)pthread_self();

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

/* Fill p with random bytes, never all zeros (an invalid id). */
static void random_id(uint8_t *p, size_t n)
{
        do {
                for (size_t i = 0; i < n; i += sizeof(uint64_t)) {
                        uint64_t v = rng_next();
                        size_t k = n - i < sizeof(v) ? n - i : sizeof(v);

                        memcpy(p + i, &v, k);
                }
        } while (is_all_zero(p, n));
}

/* ---- bounded UTF-8 strings ---- */

/* Length of the well-formed UTF-8 sequence at s (avail bytes readable), or
 * 0 when it is malformed (bad lead or continuation byte, overlong,
 * surrogate, above U+10FFFF, truncated). */
static size_t utf8_sequence_len(const unsigned char *s, size_t avail)
{
        uint32_t cp, min;
        size_t n;

        if (s[0] < 0x80)
                return 1;
        if ((s[0] & 0xe0) == 0xc0) {
                n = 2, cp = s[0] & 0x1f, min = 0x80;
        } else if ((s[0] & 0xf0) == 0xe0) {
                n = 3, cp = s[0] & 0x0f, min = 0x800;
        } else if ((s[0] & 0xf8) == 0xf0) {
                n = 4, cp = s[0] & 0x07, min = 0x10000;
        } else
                return 0;
        if (avail < n)
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                cp = cp << 6 | (s[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return n;
}

/* A malloc()ed copy of s of at most max bytes (plus NUL) that is valid
 * UTF-8: malformed bytes become U+FFFD, and the cut falls between
 * characters. Reads at most max + 4 bytes of s. NULL on OOM. */
static char *strdup_utf8(const char *s, size_t max)
{
        static const char replacement[] = "\xef\xbf\xbd";
        const unsigned char *in = (const unsigned char *)s;
        size_t len = strnlen(s, max + 4), i = 0, o = 0;
        size_t size = (len > max / 3 ? max : 3 * len) + 1;
        char *out = malloc(size);

        if (!out)
                return NULL;
        while (i < len) {
                size_t n = utf8_sequence_len(in + i, len - i);

                if (n == 0) {
                        if (o + 3 > max)
                                break;
                        memcpy(out + o, replacement, 3);
                        o += 3;
                        i++;
                        continue;
                }
                if (o + n > max)
                        break;
                memcpy(out + o, in + i, n);
                o += n;
                i += n;
        }
        out[o] = '\0';
        return out;
}

/* ---- spans ---- */

enum attribute_type {
        ATTRIBUTE_STRING,
        ATTRIBUTE_INT,
        ATTRIBUTE_DOUBLE,
        ATTRIBUTE_BOOL,
};

struct attribute {
        char *key;
        enum attribute_type type;
        union {
                char *string;
                int64_t integer;
                double real;
                bool boolean;
        } value;
};

struct span {
        struct tracer *tracer; /* non-NULL only while recording */
        struct span *next;     /* in the tracer's queue */
        struct trace_context ctx;
        uint8_t parent_span_id[SPAN_ID_SIZE];
        bool has_parent;
        enum span_kind kind;
        enum span_status status;
        char *name;
        char *status_message;
        uint64_t start_nsec; /* wall clock */
        uint64_t start_monotonic_nsec;
        uint64_t end_nsec; /* start + monotonic duration: immune to clock steps */
        struct attribute *attributes;
        size_t n_attributes;
        size_t n_attributes_allocated;
        unsigned n_dropped_attributes;
};

/* Returned when a span cannot be allocated. Every function recognises it
 * and leaves it alone, so it is never written. */
static struct span span_nonrecording;

static thread_local struct span *current_span;

struct tracer {
        char *endpoint;
        double sample_ratio;
        size_t queue_capacity;
        size_t batch_size;
        unsigned flush_interval_ms;
        unsigned export_timeout_ms;
        bool exporting;

        pthread_mutex_t lock;
        pthread_cond_t wake; /* on CLOCK_MONOTONIC */
        struct span *queue_head, *queue_tail;
        size_t queue_len;
        bool stopping;
        bool thread_started;
        pthread_t thread;

        /* Used by the exporter thread only. */
        CURL *curl;
        struct curl_slist *headers;
        struct json_object *resource;
        bool curl_initialized;

        atomic_uint_fast64_t dropped;
        atomic_uint_fast64_t exported;
        struct metric *metric_dropped;
        struct metric *metric_exported;
};

static void attribute_done(struct attribute *a)
{
        free(a->key);
        if (a->type == ATTRIBUTE_STRING)
                free(a->value.string);
}

static void span_free(struct span *s)
{
        if (!s || s == &span_nonrecording)
                return;
        for (size_t i = 0; i < s->n_attributes; i++)
                attribute_done(&s->attributes[i]);
        free(s->attributes);
        free(s->name);
        free(s->status_message);
        free(s);
}

static bool span_recording(const struct span *s)
{
        return s && s != &span_nonrecording && s->tracer;
}

/* Sample a new root from its trace id, as OpenTelemetry's TraceIdRatioBased
 * sampler does, so the decision is a pure function of the id. */
static bool sample_root(const struct tracer *t, const uint8_t trace_id[static TRACE_ID_SIZE])
{
        uint64_t x = 0;

        if (!t || t->sample_ratio <= 0.0)
                return false;
        if (t->sample_ratio >= 1.0)
                return true;
        for (size_t i = 8; i < TRACE_ID_SIZE; i++)
                x = x << 8 | trace_id[i];
        return (double)(x >> 11) < t->sample_ratio * (double)(1ULL << 53);
}

struct span *span_start(struct tracer *t, const char *name, enum span_kind kind,
                        const struct trace_context *parent)
{
        const struct trace_context *p = NULL;
        struct span *s;

        if (parent) {
                if (trace_context_is_valid(parent))
                        p = parent;
        } else if (current_span && trace_context_is_valid(&current_span->ctx))
                p = &current_span->ctx;

        s = calloc(1, sizeof(*s));
        if (!s)
                return &span_nonrecording;

        if (p) {
                memcpy(s->ctx.trace_id, p->trace_id, TRACE_ID_SIZE);
                memcpy(s->parent_span_id, p->span_id, SPAN_ID_SIZE);
                s->has_parent = true;
                s->ctx.flags = p->flags & TRACE_FLAG_SAMPLED;
        } else {
                random_id(s->ctx.trace_id, TRACE_ID_SIZE);
                s->ctx.flags = sample_root(t, s->ctx.trace_id) ? TRACE_FLAG_SAMPLED : 0;
        }
        random_id(s->ctx.span_id, SPAN_ID_SIZE);
        s->kind = kind;

        if (t && t->exporting && (s->ctx.flags & TRACE_FLAG_SAMPLED)) {
                s->name = strdup_utf8(name ? name : "", TRACE_MAX_NAME_LEN);
                if (s->name)
                        s->tracer = t; /* else: ids only, like an unsampled span */
                s->start_nsec = now_nsec(CLOCK_REALTIME);
                s->start_monotonic_nsec = now_nsec(CLOCK_MONOTONIC);
        }
        return s;
}

struct span *span_start_unsampled(const char *name)
{
        struct trace_context quiet = {.flags = 0};

        random_id(quiet.trace_id, TRACE_ID_SIZE);
        random_id(quiet.span_id, SPAN_ID_SIZE);
        return span_start(NULL, name, SPAN_KIND_INTERNAL, &quiet);
}

/* The attribute slot for key: the existing one (its old value released),
 * a new one, or NULL when the span is full or memory is short. */
static struct attribute *attribute_slot(struct span *s, const char *key)
{
        _cleanup_free_ char *k = NULL;
        struct attribute *a;

        assert(key);

        k = strdup_utf8(key, TRACE_MAX_KEY_LEN);
        if (!k)
                return NULL;
        for (size_t i = 0; i < s->n_attributes; i++) {
                a = &s->attributes[i];
                if (strcmp(a->key, k) == 0) {
                        if (a->type == ATTRIBUTE_STRING)
                                free(a->value.string);
                        a->type = ATTRIBUTE_INT;
                        return a;
                }
        }
        if (s->n_attributes >= TRACE_MAX_ATTRIBUTES) {
                s->n_dropped_attributes++;
                return NULL;
        }
        if (s->n_attributes == s->n_attributes_allocated) {
                size_t n = s->n_attributes_allocated ? 2 * s->n_attributes_allocated : 8;
                struct attribute *m;

                if (n > TRACE_MAX_ATTRIBUTES)
                        n = TRACE_MAX_ATTRIBUTES;
                m = reallocarray(s->attributes, n, sizeof(*m));
                if (!m)
                        return NULL;
                s->attributes = m;
                s->n_attributes_allocated = n;
        }
        a = &s->attributes[s->n_attributes++];
        *a = (struct attribute){.key = TAKE_PTR(k), .type = ATTRIBUTE_INT};
        return a;
}

void span_set_attribute_string(struct span *s, const char *key, const char *value)
{
        struct attribute *a;
        char *v;

        if (!span_recording(s) || !key)
                return;
        v = strdup_utf8(value ? value : "", TRACE_MAX_STRING_LEN);
        if (!v)
                return;
        a = attribute_slot(s, key);
        if (!a) {
                free(v);
                return;
        }
        a->type = ATTRIBUTE_STRING;
        a->value.string = v;
}

void span_set_attribute_int(struct span *s, const char *key, int64_t value)
{
        struct attribute *a;

        if (!span_recording(s) || !key)
                return;
        a = attribute_slot(s, key);
        if (!a)
                return;
        a->type = ATTRIBUTE_INT;
        a->value.integer = value;
}

void span_set_attribute_double(struct span *s, const char *key, double value)
{
        struct attribute *a;

        if (!span_recording(s) || !key)
                return;
        a = attribute_slot(s, key);
        if (!a)
                return;
        a->type = ATTRIBUTE_DOUBLE;
        a->value.real = value;
}

void span_set_attribute_bool(struct span *s, const char *key, bool value)
{
        struct attribute *a;

        if (!span_recording(s) || !key)
                return;
        a = attribute_slot(s, key);
        if (!a)
                return;
        a->type = ATTRIBUTE_BOOL;
        a->value.boolean = value;
}

void span_set_status(struct span *s, enum span_status status, const char *message)
{
        if (!span_recording(s))
                return;
        free(s->status_message);
        s->status_message = NULL;
        s->status = status;
        /* OTLP: the message is only meaningful for an error. */
        if (message && status == SPAN_STATUS_ERROR)
                s->status_message = strdup_utf8(message, TRACE_MAX_STRING_LEN);
}

const struct trace_context *span_context(const struct span *s)
{
        if (!s)
                return &span_nonrecording.ctx;
        return &s->ctx;
}

bool span_parent_span_id(const struct span *s, uint8_t ret[static SPAN_ID_SIZE])
{
        if (!s || !s->has_parent)
                return false;
        memcpy(ret, s->parent_span_id, SPAN_ID_SIZE);
        return true;
}

bool span_is_recording(const struct span *s)
{
        return span_recording(s);
}

static void count_dropped(struct tracer *t, size_t n)
{
        atomic_fetch_add_explicit(&t->dropped, n, memory_order_relaxed);
        if (t->metric_dropped)
                metrics_counter_add(t->metric_dropped, (double)n);
}

static void count_exported(struct tracer *t, size_t n)
{
        atomic_fetch_add_explicit(&t->exported, n, memory_order_relaxed);
        if (t->metric_exported)
                metrics_counter_add(t->metric_exported, (double)n);
}

void span_end(struct span *s)
{
        struct tracer *t;

        if (!s || s == &span_nonrecording)
                return;
        if (current_span == s)
                current_span = NULL;

        t = s->tracer;
        if (!t) {
                span_free(s);
                return;
        }
        s->end_nsec = s->start_nsec + (now_nsec(CLOCK_MONOTONIC) - s->start_monotonic_nsec);
        s->next = NULL;

        pthread_mutex_lock(&t->lock);
        if (t->queue_len >= t->queue_capacity) {
                pthread_mutex_unlock(&t->lock);
                count_dropped(t, 1);
                span_free(s);
                return;
        }
        if (t->queue_tail)
                t->queue_tail->next = s;
        else
                t->queue_head = s;
        t->queue_tail = s;
        t->queue_len++;
        if (t->queue_len >= t->batch_size)
                pthread_cond_signal(&t->wake);
        pthread_mutex_unlock(&t->lock);
}

struct span *trace_set_current(struct span *s)
{
        struct span *previous = current_span;

        current_span = s;
        return previous;
}

struct span *trace_current(void)
{
        return current_span;
}

/* ---- OTLP/JSON ---- */

/* Add val under key, taking ownership of val; -ENOMEM when val is NULL
 * (its constructor failed) or the add fails. */
static int json_add(struct json_object *obj, const char *key, struct json_object *val)
{
        if (!val)
                return -ENOMEM;
        if (json_object_object_add(obj, key, val) < 0) {
                json_object_put(val);
                return -ENOMEM;
        }
        return 0;
}

static int json_append(struct json_object *array, struct json_object *val)
{
        if (!val)
                return -ENOMEM;
        if (json_object_array_add(array, val) < 0) {
                json_object_put(val);
                return -ENOMEM;
        }
        return 0;
}

static struct json_object *json_uint64_string(uint64_t v)
{
        char buf[sizeof("18446744073709551615")];

        snprintf(buf, sizeof(buf), "%" PRIu64, v);
        return json_object_new_string(buf);
}

/* The AnyValue of a. OTLP/JSON writes int64 as a decimal string and, as
 * proto3 JSON, non-finite doubles as the strings "NaN", "Infinity". */
static struct json_object *attribute_value_to_json(const struct attribute *a)
{
        _cleanup_(json_object_putp) struct json_object *v = json_object_new_object();
        char buf[sizeof("-9223372036854775808")];
        int r;

        if (!v)
                return NULL;
        switch (a->type) {
        case ATTRIBUTE_STRING:
                r = json_add(v, "stringValue", json_object_new_string(a->value.string));
                break;
        case ATTRIBUTE_INT:
                snprintf(buf, sizeof(buf), "%" PRId64, a->value.integer);
                r = json_add(v, "intValue", json_object_new_string(buf));
                break;
        case ATTRIBUTE_DOUBLE:
                if (isnan(a->value.real))
                        r = json_add(v, "doubleValue", json_object_new_string("NaN"));
                else if (isinf(a->value.real))
                        r = json_add(v, "doubleValue",
                                     json_object_new_string(a->value.real > 0 ? "Infinity"
                                                                              : "-Infinity"));
                else
                        r = json_add(v, "doubleValue", json_object_new_double(a->value.real));
                break;
        case ATTRIBUTE_BOOL:
                r = json_add(v, "boolValue", json_object_new_boolean(a->value.boolean));
                break;
        default:
                r = -EINVAL;
        }
        if (r < 0)
                return NULL;
        return TAKE_PTR(v);
}

/* A KeyValue {key, value}; takes ownership of value. */
static struct json_object *key_value_to_json(const char *key, struct json_object *value)
{
        _cleanup_(json_object_putp) struct json_object *v = value;
        _cleanup_(json_object_putp) struct json_object *kv = json_object_new_object();

        if (!kv || !v)
                return NULL;
        if (json_add(kv, "key", json_object_new_string(key)) < 0 ||
            json_add(kv, "value", TAKE_PTR(v)) < 0)
                return NULL;
        return TAKE_PTR(kv);
}

static struct json_object *string_key_value_to_json(const char *key, const char *value)
{
        struct attribute a = {.type = ATTRIBUTE_STRING, .value.string = (char *)value};

        return key_value_to_json(key, attribute_value_to_json(&a));
}

static struct json_object *span_to_json(const struct span *s)
{
        _cleanup_(json_object_putp) struct json_object *o = json_object_new_object();
        _cleanup_(json_object_putp) struct json_object *attributes = json_object_new_array();
        _cleanup_(json_object_putp) struct json_object *status = json_object_new_object();
        char trace_id[2 * TRACE_ID_SIZE + 1], span_id[2 * SPAN_ID_SIZE + 1];

        if (!o || !attributes || !status)
                return NULL;

        for (size_t i = 0; i < s->n_attributes; i++) {
                const struct attribute *a = &s->attributes[i];

                if (json_append(attributes, key_value_to_json(a->key, attribute_value_to_json(a))) <
                    0)
                        return NULL;
        }
        if (json_add(status, "code", json_object_new_int(s->status)) < 0)
                return NULL;
        if (s->status_message &&
            json_add(status, "message", json_object_new_string(s->status_message)) < 0)
                return NULL;

        trace_format_trace_id(&s->ctx, trace_id);
        trace_format_span_id(&s->ctx, span_id);
        if (json_add(o, "traceId", json_object_new_string(trace_id)) < 0 ||
            json_add(o, "spanId", json_object_new_string(span_id)) < 0)
                return NULL;
        if (s->has_parent) {
                hex_encode(s->parent_span_id, SPAN_ID_SIZE, span_id);
                if (json_add(o, "parentSpanId", json_object_new_string(span_id)) < 0)
                        return NULL;
        }
        if (json_add(o, "name", json_object_new_string(s->name)) < 0 ||
            json_add(o, "kind", json_object_new_int(s->kind)) < 0 ||
            json_add(o, "startTimeUnixNano", json_uint64_string(s->start_nsec)) < 0 ||
            json_add(o, "endTimeUnixNano", json_uint64_string(s->end_nsec)) < 0 ||
            json_add(o, "attributes", TAKE_PTR(attributes)) < 0 ||
            json_add(o, "status", TAKE_PTR(status)) < 0)
                return NULL;
        if (s->n_dropped_attributes > 0 &&
            json_add(o, "droppedAttributesCount", json_object_new_int64(s->n_dropped_attributes)) <
                    0)
                return NULL;
        return TAKE_PTR(o);
}

static struct json_object *resource_to_json(const struct tracer_options *opts)
{
        _cleanup_(json_object_putp) struct json_object *resource = json_object_new_object();
        _cleanup_(json_object_putp) struct json_object *attributes = json_object_new_array();
        const struct {
                const char *key, *value;
        } fields[] = {
                /* OpenTelemetry's name for a service that did not say. */
                {"service.name", opts->service_name && opts->service_name[0] ? opts->service_name
                                                                             : "unknown_service"},
                {"service.version", opts->service_version},
                {"telemetry.sdk.language", "c"},
                {"telemetry.sdk.name", "vigil"},
                {"telemetry.sdk.version", PACKAGE_VERSION},
        };

        if (!resource || !attributes)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                _cleanup_free_ char *v = NULL;

                if (!fields[i].value || !fields[i].value[0])
                        continue;
                v = strdup_utf8(fields[i].value, TRACE_MAX_STRING_LEN);
                if (!v || json_append(attributes, string_key_value_to_json(fields[i].key, v)) < 0)
                        return NULL;
        }
        if (json_add(resource, "attributes", TAKE_PTR(attributes)) < 0)
                return NULL;
        return TAKE_PTR(resource);
}

/* An ExportTraceServiceRequest holding the n spans from list. */
static struct json_object *request_to_json(struct tracer *t, const struct span *list)
{
        _cleanup_(json_object_putp) struct json_object *request = json_object_new_object();
        _cleanup_(json_object_putp) struct json_object *resource_spans = json_object_new_array();
        _cleanup_(json_object_putp) struct json_object *rs = json_object_new_object();
        _cleanup_(json_object_putp) struct json_object *scope_spans = json_object_new_array();
        _cleanup_(json_object_putp) struct json_object *ss = json_object_new_object();
        _cleanup_(json_object_putp) struct json_object *scope = json_object_new_object();
        _cleanup_(json_object_putp) struct json_object *spans = json_object_new_array();

        if (!request || !resource_spans || !rs || !scope_spans || !ss || !scope || !spans)
                return NULL;

        for (const struct span *s = list; s; s = s->next)
                if (json_append(spans, span_to_json(s)) < 0)
                        return NULL;

        if (json_add(scope, "name", json_object_new_string("vigil")) < 0 ||
            json_add(scope, "version", json_object_new_string(PACKAGE_VERSION)) < 0 ||
            json_add(ss, "scope", TAKE_PTR(scope)) < 0 ||
            json_add(ss, "spans", TAKE_PTR(spans)) < 0 ||
            json_append(scope_spans, TAKE_PTR(ss)) < 0 ||
            json_add(rs, "resource", json_object_get(t->resource)) < 0 ||
            json_add(rs, "scopeSpans", TAKE_PTR(scope_spans)) < 0 ||
            json_append(resource_spans, TAKE_PTR(rs)) < 0 ||
            json_add(request, "resourceSpans", TAKE_PTR(resource_spans)) < 0)
                return NULL;
        return TAKE_PTR(request);
}

/* ---- exporter ---- */

static size_t discard_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        (void)ptr;
        (void)userdata;
        return size * nmemb;
}

/* POST body; 0 on a 2xx answer, else a negative errno. */
static int post(struct tracer *t, const char *body, size_t len, unsigned timeout_ms)
{
        long code = 0;
        CURLcode cc;

        curl_easy_setopt(t->curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(t->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(t->curl, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
        curl_easy_setopt(t->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);

        cc = curl_easy_perform(t->curl);
        switch (cc) {
        case CURLE_OK:
                break;
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_COULDNT_CONNECT:
                return -ECONNREFUSED;
        case CURLE_OUT_OF_MEMORY:
                return -ENOMEM;
        default:
                return -EIO;
        }
        if (curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK)
                return -EIO;
        if (code < 200 || code > 299)
                return -EPROTO;
        return 0;
}

static void free_span_list(struct span *list)
{
        while (list) {
                struct span *next = list->next;

                span_free(list);
                list = next;
        }
}

/* Export the n spans of list (and free them) within timeout_ms. */
static void export_batch(struct tracer *t, struct span *list, size_t n, unsigned timeout_ms)
{
        _cleanup_(json_object_putp) struct json_object *request = request_to_json(t, list);
        const char *body = NULL;
        size_t len = 0;
        int r = -ENOMEM;

        free_span_list(list);
        if (request)
                body = json_object_to_json_string_length(
                        request, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
        if (body)
                r = post(t, body, len, timeout_ms > 0 ? timeout_ms : 1);
        if (r < 0)
                count_dropped(t, n);
        else
                count_exported(t, n);
}

/* Detach up to batch_size spans from the head of the queue. Called with
 * the lock held. */
static struct span *take_batch(struct tracer *t, size_t *ret_n)
{
        struct span *head = t->queue_head, *last = NULL;
        size_t n = 0;

        for (struct span *s = head; s && n < t->batch_size; s = s->next) {
                last = s;
                n++;
        }
        if (last) {
                t->queue_head = last->next;
                if (!t->queue_head)
                        t->queue_tail = NULL;
                last->next = NULL;
        }
        t->queue_len -= n;
        *ret_n = n;
        return n > 0 ? head : NULL;
}

/* Detach the whole queue. Called with the lock held. */
static struct span *take_all(struct tracer *t, size_t *ret_n)
{
        struct span *head = t->queue_head;

        *ret_n = t->queue_len;
        t->queue_head = t->queue_tail = NULL;
        t->queue_len = 0;
        return head;
}

static struct timespec timespec_from_nsec(uint64_t nsec)
{
        return (struct timespec){.tv_sec = (time_t)(nsec / NSEC_PER_SEC),
                                 .tv_nsec = (long)(nsec % NSEC_PER_SEC)};
}

static void *exporter_thread(void *userdata)
{
        struct tracer *t = userdata;
        uint64_t interval = t->flush_interval_ms * NSEC_PER_MSEC;
        uint64_t next_flush = now_nsec(CLOCK_MONOTONIC) + interval, deadline;
        struct span *batch;
        size_t n;

        pthread_mutex_lock(&t->lock);
        for (;;) {
                while (!t->stopping && t->queue_len < t->batch_size &&
                       now_nsec(CLOCK_MONOTONIC) < next_flush) {
                        struct timespec ts = timespec_from_nsec(next_flush);

                        pthread_cond_timedwait(&t->wake, &t->lock, &ts);
                }
                if (t->stopping)
                        break;
                batch = take_batch(t, &n);
                pthread_mutex_unlock(&t->lock);

                if (batch)
                        export_batch(t, batch, n, t->export_timeout_ms);
                next_flush = now_nsec(CLOCK_MONOTONIC) + interval;

                pthread_mutex_lock(&t->lock);
        }
        pthread_mutex_unlock(&t->lock);

        /* Stopping: flush what is queued, but for no longer than one export
         * timeout in all; what is left after that is dropped. */
        deadline = now_nsec(CLOCK_MONOTONIC) + t->export_timeout_ms * NSEC_PER_MSEC;
        for (;;) {
                uint64_t now;

                pthread_mutex_lock(&t->lock);
                batch = take_batch(t, &n);
                pthread_mutex_unlock(&t->lock);
                if (!batch)
                        break;

                now = now_nsec(CLOCK_MONOTONIC);
                if (now >= deadline) {
                        free_span_list(batch);
                        count_dropped(t, n);
                        continue;
                }
                export_batch(t, batch, n, (unsigned)((deadline - now) / NSEC_PER_MSEC));
        }
        return NULL;
}

static int exporter_setup(struct tracer *t, const struct tracer_options *opts)
{
        struct curl_slist *l;

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return -EIO;
        t->curl_initialized = true;

        t->resource = resource_to_json(opts);
        if (!t->resource)
                return -ENOMEM;

        l = curl_slist_append(NULL, "Content-Type: application/json");
        if (!l)
                return -ENOMEM;
        t->headers = l;
        /* Send large batches at once rather than wait for 100-continue. */
        l = curl_slist_append(t->headers, "Expect:");
        if (!l)
                return -ENOMEM;
        t->headers = l;

        t->curl = curl_easy_init();
        if (!t->curl)
                return -ENOMEM;
        if (curl_easy_setopt(t->curl, CURLOPT_URL, t->endpoint) != CURLE_OK ||
            curl_easy_setopt(t->curl, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
            curl_easy_setopt(t->curl, CURLOPT_HTTPHEADER, t->headers) != CURLE_OK ||
            curl_easy_setopt(t->curl, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
            curl_easy_setopt(t->curl, CURLOPT_USERAGENT, "vigil/" PACKAGE_VERSION) != CURLE_OK ||
            curl_easy_setopt(t->curl, CURLOPT_WRITEFUNCTION, discard_body) != CURLE_OK)
                return -EINVAL;
        return 0;
}

static int register_metrics(struct tracer *t, struct metrics_registry *registry)
{
        struct metric_family *dropped, *exported;

        dropped = metrics_counter_new(registry, "vigil_trace_spans_dropped_total",
                                      "Spans dropped: export queue full or export failed.", NULL);
        exported = metrics_counter_new(registry, "vigil_trace_spans_exported_total",
                                       "Spans accepted by the trace collector.", NULL);
        if (!dropped || !exported)
                return -EEXIST;
        t->metric_dropped = metrics_child(dropped, NULL);
        t->metric_exported = metrics_child(exported, NULL);
        if (!t->metric_dropped || !t->metric_exported)
                return -ENOMEM;
        return 0;
}

static int start_thread(struct tracer *t)
{
        sigset_t all, saved;
        int r;

        /* The exporter must never take a signal meant for the daemon (which
         * may wait for them with signalfd), so it starts with all blocked. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &saved);
        r = pthread_create(&t->thread, NULL, exporter_thread, t);
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        if (r != 0)
                return -r;
        (void)pthread_setname_np(t->thread, "vigil-trace");
        t->thread_started = true;
        return 0;
}

DEFINE_TRIVIAL_CLEANUP_FUNC(struct tracer *, tracer_free)

int tracer_new(const struct tracer_options *opts, struct tracer **ret)
{
        _cleanup_(tracer_freep) struct tracer *t = NULL;
        pthread_condattr_t attr;
        int r;

        assert(opts);
        assert(ret);

        if (!(opts->sample_ratio >= 0.0 && opts->sample_ratio <= 1.0))
                return -EINVAL;
        if (opts->queue_capacity > TRACE_MAX_QUEUE_CAPACITY ||
            opts->batch_size > TRACE_MAX_BATCH_SIZE || opts->flush_interval_ms > MAX_INTERVAL_MS ||
            opts->export_timeout_ms > MAX_INTERVAL_MS)
                return -EINVAL;

        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->sample_ratio = opts->sample_ratio;
        t->queue_capacity = opts->queue_capacity ? opts->queue_capacity : DEFAULT_QUEUE_CAPACITY;
        t->batch_size = opts->batch_size ? opts->batch_size : DEFAULT_BATCH_SIZE;
        t->flush_interval_ms =
                opts->flush_interval_ms ? opts->flush_interval_ms : DEFAULT_FLUSH_INTERVAL_MS;
        t->export_timeout_ms =
                opts->export_timeout_ms ? opts->export_timeout_ms : DEFAULT_EXPORT_TIMEOUT_MS;
        atomic_init(&t->dropped, 0);
        atomic_init(&t->exported, 0);

        r = pthread_mutex_init(&t->lock, NULL);
        if (r != 0) {
                free(TAKE_PTR(t));
                return -r;
        }
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        r = pthread_cond_init(&t->wake, &attr);
        pthread_condattr_destroy(&attr);
        if (r != 0) {
                pthread_mutex_destroy(&t->lock);
                free(TAKE_PTR(t));
                return -r;
        }

        if (opts->metrics) {
                r = register_metrics(t, opts->metrics);
                if (r < 0)
                        return r;
        }

        if (opts->endpoint && opts->endpoint[0]) {
                t->endpoint = strdup(opts->endpoint);
                if (!t->endpoint)
                        return -ENOMEM;
                r = exporter_setup(t, opts);
                if (r < 0)
                        return r;
                r = start_thread(t);
                if (r < 0)
                        return r;
                t->exporting = true;
        }

        *ret = TAKE_PTR(t);
        return 0;
}

void tracer_free(struct tracer *t)
{
        struct span *rest;
        size_t n;

        if (!t)
                return;

        if (t->thread_started) {
                pthread_mutex_lock(&t->lock);
                t->stopping = true;
                pthread_cond_signal(&t->wake);
                pthread_mutex_unlock(&t->lock);
                pthread_join(t->thread, NULL);
        }
        /* Spans that ended while the exporter was stopping. */
        pthread_mutex_lock(&t->lock);
        rest = take_all(t, &n);
        pthread_mutex_unlock(&t->lock);
        if (rest) {
                free_span_list(rest);
                count_dropped(t, n);
        }

        curl_easy_cleanup(t->curl);
        curl_slist_free_all(t->headers);
        json_object_put(t->resource);
        if (t->curl_initialized)
                curl_global_cleanup();
        pthread_cond_destroy(&t->wake);
        pthread_mutex_destroy(&t->lock);
        free(t->endpoint);
        free(t);
}

uint64_t tracer_spans_dropped(const struct tracer *t)
{
        return t ? atomic_load_explicit(&t->dropped, memory_order_relaxed) : 0;
}

uint64_t tracer_spans_exported(const struct tracer *t)
{
        return t ? atomic_load_explicit(&t->exported, memory_order_relaxed) : 0;
}
