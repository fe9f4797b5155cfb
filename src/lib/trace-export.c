/* The OTLP/HTTP JSON exporter of spans (see trace.c for how span_end()
 * hands them over) and the tracer that owns it. */
#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "metrics.h"
#include "strbuf.h"
#include "trace-internal.h"
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
        trace_hex_encode(id, n, hex + 1);
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
        uint64_t next_flush = trace_now_nsec(CLOCK_MONOTONIC) + interval, deadline;
        struct batch *b;

        pthread_mutex_lock(&t->lock);
        for (;;) {
                /* A full request goes at once, a partial one at the interval. */
                while (!t->stopping && !t->ready_head &&
                       trace_now_nsec(CLOCK_MONOTONIC) < next_flush) {
                        struct timespec ts = timespec_from_nsec(next_flush);

                        pthread_cond_timedwait(&t->wake, &t->lock, &ts);
                }
                if (t->stopping)
                        break;
                b = take_batch(t);
                pthread_mutex_unlock(&t->lock);

                if (b)
                        export_batch(t, b, t->export_timeout_ms);
                next_flush = trace_now_nsec(CLOCK_MONOTONIC) + interval;

                pthread_mutex_lock(&t->lock);
                if (b)
                        batch_recycle(t, b);
        }

        /* Stopping: flush what is queued, but for no longer than one export
         * timeout in all; what is left after that is dropped. */
        deadline = trace_now_nsec(CLOCK_MONOTONIC) + t->export_timeout_ms * NSEC_PER_MSEC;
        while ((b = take_batch(t))) {
                uint64_t now = trace_now_nsec(CLOCK_MONOTONIC);

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

/* Most spans render to a few hundred bytes. Room for 1000 makes strbuf
 * allocate 1024, which glibc's per-thread cache serves (up to 1032): one
 * more byte and every span would take a trip through malloc's bins. */
#define SPAN_JSON_TYPICAL 1000

/* Render s as OTLP/JSON while its data is warm, free it, then queue the
 * text. */
void tracer_export_span(struct tracer *t, struct span *s)
{
        struct strbuf json = {};

        if (strbuf_reserve(&json, SPAN_JSON_TYPICAL))
                put_span(&json, s);
        trace_span_free(s);
        enqueue(t, &json);
        strbuf_done(&json);
}
