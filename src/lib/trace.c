/* Distributed tracing: spans. The contracts are in trace.h; W3C trace
 * context and ids are in trace-context.c, the OTLP/HTTP JSON exporter in
 * trace-export.c.
 *
 * span_end() renders a recording span as OTLP/JSON on the thread that ends
 * it, while its data is still in that CPU's cache, frees it there, and
 * appends the text under one mutex to the export request being filled. A
 * full request joins a bounded FIFO; one exporter thread per tracer POSTs
 * them with its own curl handle, so span_end() never waits on the network
 * and never waits for more than the queue's mutex. What waits for export is
 * compact text in a few large buffers, not span objects. */
#include <stdlib.h>
#include <string.h>
#include <threads.h>
#include <time.h>

#include "macro.h"
#include "trace-internal.h"
#include "trace.h"
#include "utf8.h"

/* ---- spans ---- */

/* Returned when a span cannot be allocated. Every function recognises it
 * and leaves it alone, so it is never written. */
static struct span span_nonrecording;

static thread_local struct span *current_span;

void trace_span_free(struct span *s)
{
        if (!s || s == &span_nonrecording)
                return;
        if (s->record && s->record->text != s->record->inline_text)
                free(s->record->text);
        if (s->record && s->record->attributes != s->record->inline_attributes)
                free(s->record->attributes);
        free(s);
}

bool trace_span_recording(const struct span *s)
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
                        trace_random_id(head.ctx.trace_id, TRACE_ID_SIZE);
                head.ctx.flags = sample_root(t, head.ctx.trace_id) ? TRACE_FLAG_SAMPLED : 0;
        }
        trace_random_id(head.ctx.span_id, SPAN_ID_SIZE);

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
        s->start_nsec = trace_now_nsec(CLOCK_REALTIME);
        s->start_monotonic_nsec = trace_now_nsec(CLOCK_MONOTONIC);
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

        trace_random_id(quiet.trace_id, TRACE_ID_SIZE);
        trace_random_id(quiet.span_id, SPAN_ID_SIZE);
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

        if (!trace_span_recording(s) || !key)
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

        if (!trace_span_recording(s) || !key)
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
        if (!trace_span_recording(s))
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
        return trace_span_recording(s);
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

void span_end(struct span *s)
{
        if (!s || s == &span_nonrecording)
                return;
        if (current_span == s)
                current_span = NULL;
        if (s->tracer) {
                s->end_nsec =
                        s->start_nsec + (trace_now_nsec(CLOCK_MONOTONIC) - s->start_monotonic_nsec);
                tracer_export_span(s->tracer, s);
        } else {
                trace_span_free(s);
        }
}
