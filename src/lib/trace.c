/* Distributed tracing: W3C trace context, spans, and the OTLP/HTTP JSON
 * exporter. The contracts are in trace.h.
 *
 * span_end() renders a recording span as OTLP/JSON on the thread that ends
 * it, while its data is still in that CPU's cache, frees it there, and
 * appends the text under one mutex to the export request being filled. A
 * full request joins a bounded FIFO; one exporter thread per tracer POSTs
 * them with its own curl handle, so span_end() never waits on the network
 * and never waits for more than the queue's mutex. What waits for export is
 * compact text in a few large buffers, not span objects. */
#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <threads.h>
#include <time.h>

#include "macro.h"
#include "metrics.h"
#include "strbuf.h"
#include "trace.h"
#include "utf8.h"

/* Batches are half OpenTelemetry's 512: a request of 256 server spans is
 * about 125 KiB of JSON, and one is filling while one is sent and one is
 * kept spare. At this size a POST per batch costs next to nothing per span. */
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

/* What a malformed byte in a span's text becomes: U+FFFD. */
#define REPLACEMENT     "\xef\xbf\xbd"
#define REPLACEMENT_LEN (sizeof(REPLACEMENT) - 1)

/* ---- spans ---- */

enum attribute_type {
        ATTRIBUTE_STRING,
        ATTRIBUTE_INT,
        ATTRIBUTE_DOUBLE,
        ATTRIBUTE_BOOL,
};

/* A recording span keeps its strings (name, attribute keys and string
 * values, status message) in one text area, referred to by offsets: inside
 * the span while small, which is the common case, so that a span costs one
 * allocation; on the heap once it outgrows that. A replaced value stays
 * behind unused until the area would pass SPAN_MAX_TEXT; then the live
 * strings, which the TRACE_MAX_* limits keep well under it, are compacted. */
#define SPAN_INLINE_TEXT 256
#define SPAN_MAX_TEXT    (64U * 1024U)
#define NO_TEXT          UINT32_MAX

struct attribute {
        uint32_t key;
        uint16_t key_len; /* at most TRACE_MAX_KEY_LEN: compared before the bytes */
        uint8_t type;     /* enum attribute_type */
        union {
                uint32_t string;
                int64_t integer;
                double real;
                bool boolean;
        } value;
};

/* Most spans have a handful of attributes: room for this many is inside
 * the span, and a span with more moves them to the heap. */
#define SPAN_INLINE_ATTRIBUTES 8

/* What only a recording span has: allocated with it, right behind it. */
struct span_record {
        uint32_t name;
        uint32_t status_message; /* NO_TEXT: none */
        uint32_t n_attributes;
        uint32_t n_dropped_attributes;
        struct attribute *attributes; /* inline_attributes, or TRACE_MAX_ATTRIBUTES on the heap */
        char *text;                   /* inline_text, or the heap once it outgrew it */
        uint32_t text_len, text_size;
        struct attribute inline_attributes[SPAN_INLINE_ATTRIBUTES];
        char inline_text[SPAN_INLINE_TEXT];
};

struct span {
        struct tracer *tracer; /* non-NULL only while recording */
        struct trace_context ctx;
        uint8_t parent_span_id[SPAN_ID_SIZE];
        bool has_parent;
        enum span_kind kind;
        enum span_status status;
        uint64_t start_nsec; /* wall clock */
        uint64_t start_monotonic_nsec;
        uint64_t end_nsec;          /* start + monotonic duration: immune to clock steps */
        struct span_record *record; /* NULL unless recording */
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
        pthread_cond_t wake;                   /* on CLOCK_MONOTONIC */
        struct batch *filling;                 /* span_end() appends here; NULL until a span ends */
        struct batch *ready_head, *ready_tail; /* full, oldest first */
        struct batch *spare;                   /* an exported one, kept for reuse */
        size_t queue_len;                      /* spans in filling and ready */
        size_t batch_bytes; /* the longest full request so far: new ones start that large */
        bool stopping;
        bool thread_started;
        pthread_t thread;

        /* Used by the exporter thread only. */
        CURL *curl;
        struct curl_slist *headers;
        char *request_head; /* an export request up to its first span */
        bool curl_initialized;

        atomic_uint_fast64_t dropped;
        atomic_uint_fast64_t exported;
        struct metric *metric_dropped;
        struct metric *metric_exported;
};

static void span_free(struct span *s)
{
        if (!s || s == &span_nonrecording)
                return;
        if (s->record && s->record->text != s->record->inline_text)
                free(s->record->text);
        if (s->record && s->record->attributes != s->record->inline_attributes)
                free(s->record->attributes);
        free(s);
}

static bool span_recording(const struct span *s)
{
        return s && s != &span_nonrecording && s->tracer;
}

static void compact_string(const struct span_record *r, char *to, uint32_t *len, uint32_t *at)
{
        size_t n;

        if (*at == NO_TEXT)
                return;
        n = strlen(r->text + *at) + 1;
        memcpy(to + *len, r->text + *at, n);
        *at = *len;
        *len += (uint32_t)n;
}

/* Copy only the strings in use to a new text area. */
static bool text_compact(struct span_record *r)
{
        char *to = malloc(SPAN_MAX_TEXT);
        uint32_t len = 0;

        if (!to)
                return false;
        compact_string(r, to, &len, &r->name);
        compact_string(r, to, &len, &r->status_message);
        for (uint32_t i = 0; i < r->n_attributes; i++) {
                struct attribute *a = &r->attributes[i];

                compact_string(r, to, &len, &a->key);
                if (a->type == ATTRIBUTE_STRING)
                        compact_string(r, to, &len, &a->value.string);
        }
        if (r->text != r->inline_text)
                free(r->text);
        r->text = to;
        r->text_len = len;
        r->text_size = SPAN_MAX_TEXT;
        return true;
}

/* Room for n more bytes in r's text; false when memory is short. May move
 * the strings in use (their offsets are updated), so an offset not yet
 * stored in r must not be held across it. n is at most what one attribute
 * and its key take. */
static bool text_reserve(struct span_record *r, size_t n)
{
        size_t need = (size_t)r->text_len + n, size = r->text_size;
        char *p;

        if (need <= size)
                return true;
        if (need > SPAN_MAX_TEXT)
                return text_compact(r) && (size_t)r->text_len + n <= SPAN_MAX_TEXT;
        while (size < need)
                size *= 2;
        if (size > SPAN_MAX_TEXT)
                size = SPAN_MAX_TEXT;
        if (r->text == r->inline_text) {
                p = malloc(size);
                if (p)
                        memcpy(p, r->text, r->text_len);
        } else
                p = realloc(r->text, size);
        if (!p)
                return false;
        r->text = p;
        r->text_size = (uint32_t)size;
        return true;
}

/* Room text_append(r, s, max) needs, with the NUL. */
static size_t text_bound(const char *s, size_t max)
{
        return utf8_copy_bound(s, max, REPLACEMENT_LEN) + 1;
}

/* Append a bounded UTF-8 copy of s, for which text_reserve() made room;
 * its offset. */
static uint32_t text_append(struct span_record *r, const char *s, size_t max)
{
        uint32_t at = r->text_len;

        r->text_len += (uint32_t)utf8_copy(r->text + at, s, max, REPLACEMENT) + 1;
        return at;
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

/* Start a span: the child of p, or with p NULL a root in the trace
 * root_trace_id (a new random one when NULL or all zeros). */
static struct span *span_start_in(struct tracer *t, const char *name, enum span_kind kind,
                                  const struct trace_context *p, const uint8_t *root_trace_id)
{
        static const uint8_t zero_id[TRACE_ID_SIZE];
        struct span head = {.kind = kind}, *s;
        struct span_record *r;
        bool recording;

        if (p) {
                memcpy(head.ctx.trace_id, p->trace_id, TRACE_ID_SIZE);
                memcpy(head.parent_span_id, p->span_id, SPAN_ID_SIZE);
                head.has_parent = true;
                head.ctx.flags = p->flags & TRACE_FLAG_SAMPLED;
        } else {
                if (root_trace_id && memcmp(root_trace_id, zero_id, TRACE_ID_SIZE) != 0)
                        memcpy(head.ctx.trace_id, root_trace_id, TRACE_ID_SIZE);
                else
                        random_id(head.ctx.trace_id, TRACE_ID_SIZE);
                head.ctx.flags = sample_root(t, head.ctx.trace_id) ? TRACE_FLAG_SAMPLED : 0;
        }
        random_id(head.ctx.span_id, SPAN_ID_SIZE);

        /* An unrecorded span carries only its ids, for logs and
         * propagation. */
        recording = t && t->exporting && (head.ctx.flags & TRACE_FLAG_SAMPLED);
        s = malloc(sizeof(*s) + (recording ? sizeof(*r) : 0));
        if (!s)
                return &span_nonrecording;
        *s = head;
        if (!recording)
                return s;

        r = (struct span_record *)(s + 1);
        *r = (struct span_record){
                .status_message = NO_TEXT,
                .attributes = r->inline_attributes,
                .text = r->inline_text,
                .text_size = SPAN_INLINE_TEXT,
        };
        if (!name)
                name = "";
        if (!text_reserve(r, text_bound(name, TRACE_MAX_NAME_LEN)))
                return s; /* out of memory: ids only, like an unsampled span */
        r->name = text_append(r, name, TRACE_MAX_NAME_LEN);
        s->record = r;
        s->tracer = t;
        s->start_nsec = now_nsec(CLOCK_REALTIME);
        s->start_monotonic_nsec = now_nsec(CLOCK_MONOTONIC);
        return s;
}

struct span *span_start(struct tracer *t, const char *name, enum span_kind kind,
                        const struct trace_context *parent)
{
        const struct trace_context *p = NULL;

        if (parent) {
                if (trace_context_is_valid(parent))
                        p = parent;
        } else if (current_span && trace_context_is_valid(&current_span->ctx))
                p = &current_span->ctx;
        return span_start_in(t, name, kind, p, NULL);
}

struct span *span_start_root(struct tracer *t, const char *name, enum span_kind kind,
                             const uint8_t trace_id[static TRACE_ID_SIZE])
{
        return span_start_in(t, name, kind, NULL, trace_id);
}

struct span *span_start_unsampled(const char *name)
{
        struct trace_context quiet = {.flags = 0};

        random_id(quiet.trace_id, TRACE_ID_SIZE);
        random_id(quiet.span_id, SPAN_ID_SIZE);
        return span_start(NULL, name, SPAN_KIND_INTERNAL, &quiet);
}

static bool attributes_to_heap(struct span_record *r)
{
        struct attribute *a = malloc(TRACE_MAX_ATTRIBUTES * sizeof(*a));

        if (!a)
                return false;
        memcpy(a, r->inline_attributes, sizeof(r->inline_attributes));
        r->attributes = a;
        return true;
}

/* The attribute slot for key, the existing one or a new one, with the
 * text of a string value (when value is not NULL) appended and its offset
 * in *ret_value; NULL, and the attribute counted as dropped, when the span
 * is full or memory is short. */
static struct attribute *attribute_slot(struct span_record *r, const char *key, const char *value,
                                        uint32_t *ret_value)
{
        size_t need = text_bound(key, TRACE_MAX_KEY_LEN) +
                      (value ? text_bound(value, TRACE_MAX_STRING_LEN) : 0);
        struct attribute *a = NULL;
        uint32_t k, k_len;

        if (!text_reserve(r, need)) {
                r->n_dropped_attributes++;
                return NULL;
        }
        k = text_append(r, key, TRACE_MAX_KEY_LEN);
        k_len = r->text_len - k - 1;
        for (uint32_t i = 0; i < r->n_attributes; i++)
                if (r->attributes[i].key_len == k_len &&
                    memcmp(r->text + r->attributes[i].key, r->text + k, k_len) == 0) {
                        a = &r->attributes[i];
                        r->text_len = k; /* the key is there already */
                        break;
                }
        if (!a) {
                if (r->n_attributes >= TRACE_MAX_ATTRIBUTES ||
                    (r->n_attributes == SPAN_INLINE_ATTRIBUTES && !attributes_to_heap(r))) {
                        r->text_len = k;
                        r->n_dropped_attributes++;
                        return NULL;
                }
                a = &r->attributes[r->n_attributes++];
                a->key = k;
                a->key_len = (uint16_t)k_len;
        }
        if (value)
                *ret_value = text_append(r, value, TRACE_MAX_STRING_LEN);
        return a;
}

void span_set_attribute_string(struct span *s, const char *key, const char *value)
{
        struct attribute *a;
        uint32_t v;

        if (!span_recording(s) || !key)
                return;
        a = attribute_slot(s->record, key, value ? value : "", &v);
        if (!a)
                return;
        a->type = ATTRIBUTE_STRING;
        a->value.string = v;
}

/* The slot for a numeric or boolean attribute, its type set; NULL when s
 * records nothing or has no room. */
static struct attribute *value_slot(struct span *s, const char *key, enum attribute_type type)
{
        struct attribute *a;

        if (!span_recording(s) || !key)
                return NULL;
        a = attribute_slot(s->record, key, NULL, NULL);
        if (a)
                a->type = type;
        return a;
}

void span_set_attribute_int(struct span *s, const char *key, int64_t value)
{
        struct attribute *a = value_slot(s, key, ATTRIBUTE_INT);

        if (a)
                a->value.integer = value;
}

void span_set_attribute_double(struct span *s, const char *key, double value)
{
        struct attribute *a = value_slot(s, key, ATTRIBUTE_DOUBLE);

        if (a)
                a->value.real = value;
}

void span_set_attribute_bool(struct span *s, const char *key, bool value)
{
        struct attribute *a = value_slot(s, key, ATTRIBUTE_BOOL);

        if (a)
                a->value.boolean = value;
}

void span_set_status(struct span *s, enum span_status status, const char *message)
{
        if (!span_recording(s))
                return;
        s->status = status;
        s->record->status_message = NO_TEXT;
        /* OTLP: the message is only meaningful for an error. */
        if (message && status == SPAN_STATUS_ERROR &&
            text_reserve(s->record, text_bound(message, TRACE_MAX_STRING_LEN)))
                s->record->status_message = text_append(s->record, message, TRACE_MAX_STRING_LEN);
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

/* An export request is its head (resource and scope, rendered once), the
 * spans, comma-separated, and the tail. */

#define put_literal(b, s) strbuf_append(b, s, sizeof(s) - 1)

static void put_text(struct strbuf *b, const char *s)
{
        strbuf_put_json_string(b, s, strlen(s));
}

/* An id as a JSON string of lowercase hex, which needs no escaping. */
static void put_hex_id(struct strbuf *b, const uint8_t *id, size_t n)
{
        char hex[2 * TRACE_ID_SIZE + 3];

        hex[0] = '"';
        hex_encode(id, n, hex + 1);
        hex[2 * n + 1] = '"';
        strbuf_append(b, hex, 2 * n + 2);
}

/* The AnyValue of a. OTLP/JSON writes int64 as a decimal string and, as
 * proto3 JSON, non-finite doubles as the strings "NaN", "Infinity". */
static void put_attribute_value(struct strbuf *b, const char *text, const struct attribute *a)
{
        switch (a->type) {
        case ATTRIBUTE_STRING:
                put_literal(b, "{\"stringValue\":");
                put_text(b, text + a->value.string);
                break;
        case ATTRIBUTE_INT:
                put_literal(b, "{\"intValue\":\"");
                strbuf_put_i64(b, a->value.integer);
                strbuf_putc(b, '"');
                break;
        case ATTRIBUTE_DOUBLE:
                put_literal(b, "{\"doubleValue\":");
                if (isnan(a->value.real))
                        put_literal(b, "\"NaN\"");
                else if (isinf(a->value.real))
                        strbuf_puts(b, a->value.real > 0 ? "\"Infinity\"" : "\"-Infinity\"");
                else
                        strbuf_printf(b, "%.17g", a->value.real);
                break;
        case ATTRIBUTE_BOOL:
                put_literal(b, "{\"boolValue\":");
                strbuf_puts(b, a->value.boolean ? "true" : "false");
                break;
        }
        strbuf_putc(b, '}');
}

/* A KeyValue {key, value}; the offsets of a string value are into text. */
static void put_key_value(struct strbuf *b, const char *key, const char *text,
                          const struct attribute *a)
{
        put_literal(b, "{\"key\":");
        put_text(b, key);
        put_literal(b, ",\"value\":");
        put_attribute_value(b, text, a);
        strbuf_putc(b, '}');
}

static void put_span(struct strbuf *b, const struct span *s)
{
        const struct span_record *r = s->record;

        put_literal(b, "{\"traceId\":");
        put_hex_id(b, s->ctx.trace_id, TRACE_ID_SIZE);
        put_literal(b, ",\"spanId\":");
        put_hex_id(b, s->ctx.span_id, SPAN_ID_SIZE);
        if (s->has_parent) {
                put_literal(b, ",\"parentSpanId\":");
                put_hex_id(b, s->parent_span_id, SPAN_ID_SIZE);
        }
        put_literal(b, ",\"name\":");
        put_text(b, r->text + r->name);
        put_literal(b, ",\"kind\":");
        strbuf_put_u64(b, s->kind);
        put_literal(b, ",\"startTimeUnixNano\":\"");
        strbuf_put_u64(b, s->start_nsec);
        put_literal(b, "\",\"endTimeUnixNano\":\"");
        strbuf_put_u64(b, s->end_nsec);
        put_literal(b, "\",\"attributes\":[");
        for (uint32_t i = 0; i < r->n_attributes; i++) {
                const struct attribute *a = &r->attributes[i];

                if (i > 0)
                        strbuf_putc(b, ',');
                put_key_value(b, r->text + a->key, r->text, a);
        }
        strbuf_putc(b, ']');
        if (r->n_dropped_attributes > 0) {
                put_literal(b, ",\"droppedAttributesCount\":");
                strbuf_put_u64(b, r->n_dropped_attributes);
        }
        put_literal(b, ",\"status\":{\"code\":");
        strbuf_put_u64(b, s->status);
        if (r->status_message != NO_TEXT) {
                put_literal(b, ",\"message\":");
                put_text(b, r->text + r->status_message);
        }
        put_literal(b, "}}");
}

/* The start of every export request: the resource, the scope and the
 * opening of its spans array. NULL on OOM. */
static char *render_request_head(const struct tracer_options *opts)
{
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
        /* Each value is a string of its own, so at offset 0. */
        static const struct attribute string_at_start = {.type = ATTRIBUTE_STRING};
        struct strbuf b = {};
        bool first = true;

        put_literal(&b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                char value[TRACE_MAX_STRING_LEN + 1];

                if (!fields[i].value || !fields[i].value[0])
                        continue;
                (void)utf8_copy(value, fields[i].value, TRACE_MAX_STRING_LEN, REPLACEMENT);
                if (!first)
                        strbuf_putc(&b, ',');
                put_key_value(&b, fields[i].key, value, &string_at_start);
                first = false;
        }
        put_literal(&b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"vigil\",\"version\":");
        put_text(&b, PACKAGE_VERSION);
        put_literal(&b, "},\"spans\":[");
        return strbuf_steal(&b);
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

/* An export request being filled with spans, then sent. */
struct batch {
        struct batch *next; /* in the ready FIFO */
        struct strbuf body; /* the request head, then n spans */
        size_t n;
};

static void batch_free(struct batch *b)
{
        if (b) {
                strbuf_done(&b->body);
                free(b);
        }
}

/* An empty request: the spare one, or a new one as large as the longest
 * so far, so that it is not copied while it grows under the lock. Called
 * with the lock held; NULL on OOM. */
static struct batch *batch_new(struct tracer *t)
{
        struct batch *b = t->spare;

        if (b)
                t->spare = NULL;
        else if (!(b = calloc(1, sizeof(*b))))
                return NULL;
        strbuf_reset(&b->body);
        (void)strbuf_reserve(&b->body, t->batch_bytes);
        strbuf_puts(&b->body, t->request_head);
        b->n = 0;
        return b;
}

/* Keep b as the spare (its buffer already has the size of a request) or
 * free it. Called with the lock held. */
static void batch_recycle(struct tracer *t, struct batch *b)
{
        if (!t->spare)
                t->spare = b;
        else
                batch_free(b);
}

/* Append one rendered span to the request being filled, which joins the
 * FIFO once it holds batch_size; drop and count the span when the queue is
 * full or memory ran out. A request whose buffer failed to grow keeps
 * counting its spans, and they are counted as dropped when it is due. */
static void enqueue(struct tracer *t, const struct strbuf *json)
{
        struct batch *b;

        pthread_mutex_lock(&t->lock);
        if (strbuf_failed(json) || t->queue_len >= t->queue_capacity ||
            !(t->filling || (t->filling = batch_new(t)))) {
                pthread_mutex_unlock(&t->lock);
                count_dropped(t, 1);
                return;
        }
        b = t->filling;
        if (b->n > 0)
                strbuf_putc(&b->body, ',');
        strbuf_append(&b->body, json->data, json->len);
        b->n++;
        t->queue_len++;
        if (b->n >= t->batch_size) {
                if (b->body.len + 8 > t->batch_bytes) /* and room for the tail */
                        t->batch_bytes = b->body.len + 8;
                if (t->ready_tail)
                        t->ready_tail->next = b;
                else
                        t->ready_head = b;
                t->ready_tail = b;
                t->filling = NULL;
                pthread_cond_signal(&t->wake);
        }
        pthread_mutex_unlock(&t->lock);
}

/* Most spans render to a few hundred bytes. Room for 1000 makes strbuf
 * allocate 1024, which glibc's per-thread cache serves (up to 1032): one
 * more byte and every span would take a trip through malloc's bins. */
#define SPAN_JSON_TYPICAL 1000

void span_end(struct span *s)
{
        struct strbuf json = {};
        struct tracer *t;

        if (!s || s == &span_nonrecording)
                return;
        if (current_span == s)
                current_span = NULL;

        t = s->tracer;
        if (t) {
                s->end_nsec = s->start_nsec + (now_nsec(CLOCK_MONOTONIC) - s->start_monotonic_nsec);
                if (strbuf_reserve(&json, SPAN_JSON_TYPICAL))
                        put_span(&json, s);
        }
        span_free(s);
        if (t)
                enqueue(t, &json);
        strbuf_done(&json);
}

/* The oldest full request, else the one being filled, else NULL. Called
 * with the lock held. */
static struct batch *take_batch(struct tracer *t)
{
        struct batch *b = t->ready_head;

        if (b) {
                t->ready_head = b->next;
                if (!t->ready_head)
                        t->ready_tail = NULL;
                b->next = NULL;
        } else {
                b = t->filling;
                t->filling = NULL;
        }
        if (b)
                t->queue_len -= b->n;
        return b;
}

/* Finish and POST b within timeout_ms, and count its spans. */
static void export_batch(struct tracer *t, struct batch *b, unsigned timeout_ms)
{
        int r = -ENOMEM;

        put_literal(&b->body, "]}]}]}");
        if (!strbuf_failed(&b->body))
                r = post(t, b->body.data, b->body.len, timeout_ms > 0 ? timeout_ms : 1);
        if (r < 0)
                count_dropped(t, b->n);
        else
                count_exported(t, b->n);
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
        struct batch *b;

        pthread_mutex_lock(&t->lock);
        for (;;) {
                /* A full request goes at once, a partial one at the interval. */
                while (!t->stopping && !t->ready_head && now_nsec(CLOCK_MONOTONIC) < next_flush) {
                        struct timespec ts = timespec_from_nsec(next_flush);

                        pthread_cond_timedwait(&t->wake, &t->lock, &ts);
                }
                if (t->stopping)
                        break;
                b = take_batch(t);
                pthread_mutex_unlock(&t->lock);

                if (b)
                        export_batch(t, b, t->export_timeout_ms);
                next_flush = now_nsec(CLOCK_MONOTONIC) + interval;

                pthread_mutex_lock(&t->lock);
                if (b)
                        batch_recycle(t, b);
        }

        /* Stopping: flush what is queued, but for no longer than one export
         * timeout in all; what is left after that is dropped. */
        deadline = now_nsec(CLOCK_MONOTONIC) + t->export_timeout_ms * NSEC_PER_MSEC;
        while ((b = take_batch(t))) {
                uint64_t now = now_nsec(CLOCK_MONOTONIC);

                pthread_mutex_unlock(&t->lock);
                if (now < deadline)
                        export_batch(t, b, (unsigned)((deadline - now) / NSEC_PER_MSEC));
                else
                        count_dropped(t, b->n);
                pthread_mutex_lock(&t->lock);
                batch_recycle(t, b);
        }
        pthread_mutex_unlock(&t->lock);
        return NULL;
}

static int exporter_setup(struct tracer *t, const struct tracer_options *opts)
{
        struct curl_slist *l;

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return -EIO;
        t->curl_initialized = true;

        t->request_head = render_request_head(opts);
        if (!t->request_head)
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
        struct batch *b;

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
        while ((b = take_batch(t))) {
                count_dropped(t, b->n);
                batch_free(b);
        }
        batch_free(t->spare);

        curl_easy_cleanup(t->curl);
        curl_slist_free_all(t->headers);
        free(t->request_head);
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
