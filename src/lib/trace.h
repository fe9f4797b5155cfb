/* Distributed tracing: W3C trace context, spans, and an OTLP/HTTP (JSON)
 * exporter.
 *
 * Thread-safety: a struct tracer is shared by all threads; span_start(),
 * span_end() and tracer_*() may be called from any thread. A single struct
 * span is owned by the thread that started it until span_end(). The
 * "current span" is thread-local: the HTTP server sets it for the duration
 * of a request so that libraries (pg, redis, http-client, log) can attach
 * child spans and log lines to it without passing it around. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct metrics_registry;

#define TRACE_ID_SIZE 16
#define SPAN_ID_SIZE 8
#define TRACEPARENT_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */

struct trace_context {
        uint8_t trace_id[TRACE_ID_SIZE];
        uint8_t span_id[SPAN_ID_SIZE];
        uint8_t flags; /* bit 0: sampled */
};

enum span_kind {
        SPAN_KIND_INTERNAL = 1,
        SPAN_KIND_SERVER = 2,
        SPAN_KIND_CLIENT = 3,
        SPAN_KIND_PRODUCER = 4,
        SPAN_KIND_CONSUMER = 5,
};

enum span_status {
        SPAN_STATUS_UNSET = 0,
        SPAN_STATUS_OK = 1,
        SPAN_STATUS_ERROR = 2,
};

/* Parse a W3C traceparent header value. Returns 0 and fills *ret, or
 * -EINVAL for anything malformed (wrong length, bad hex, all-zero ids,
 * version ff, upper-case hex); the caller then starts a new trace. */
int trace_parse_traceparent(const char *value, struct trace_context *ret);

/* Format ctx as a traceparent value into buf (at least TRACEPARENT_LEN + 1
 * bytes). */
void trace_format_traceparent(const struct trace_context *ctx, char buf[static TRACEPARENT_LEN + 1]);

/* Lower-case hex of the ids; buf sizes include the NUL. */
void trace_format_trace_id(const struct trace_context *ctx, char buf[static 2 * TRACE_ID_SIZE + 1]);
void trace_format_span_id(const struct trace_context *ctx, char buf[static 2 * SPAN_ID_SIZE + 1]);

bool trace_context_is_valid(const struct trace_context *ctx);

struct tracer_options {
        const char *service_name; /* "vigil-authd" */
        const char *service_version;
        const char *endpoint;     /* OTLP/HTTP traces URL; NULL or "" disables export */
        double sample_ratio;      /* 0..1, for new root traces only */
        size_t queue_capacity;    /* spans; 0 means the default (4096) */
        size_t batch_size;        /* spans per export request; 0: default (256) */
        unsigned flush_interval_ms; /* 0: default (1000) */
        unsigned export_timeout_ms; /* 0: default (2000) */
        struct metrics_registry *metrics; /* may be NULL; else registers
                                           * vigil_trace_spans_dropped_total and
                                           * vigil_trace_spans_exported_total */
};

struct tracer;

/* Create a tracer and start its exporter thread (when an endpoint is set). */
int tracer_new(const struct tracer_options *opts, struct tracer **ret);
/* Stop the exporter, trying to flush queued spans for up to the export
 * timeout, and free. Accepts NULL. */
void tracer_free(struct tracer *t);
/* Counters, for tests and metrics. */
uint64_t tracer_spans_dropped(const struct tracer *t);
uint64_t tracer_spans_exported(const struct tracer *t);

struct span;

/* Start a span. parent may be NULL: then the thread's current span is the
 * parent, and without one a new trace is started (sampled per
 * sample_ratio). Never fails: on allocation failure a non-recording span
 * is returned that every function accepts. t may be NULL (tracing off):
 * ids are still generated so logs and propagation work. */
struct span *span_start(struct tracer *t, const char *name, enum span_kind kind,
                        const struct trace_context *parent);
void span_set_attribute_string(struct span *s, const char *key, const char *value);
void span_set_attribute_int(struct span *s, const char *key, int64_t value);
void span_set_attribute_double(struct span *s, const char *key, double value);
void span_set_attribute_bool(struct span *s, const char *key, bool value);
void span_set_status(struct span *s, enum span_status status, const char *message);
/* The span's own context (its span id, its trace id). */
const struct trace_context *span_context(const struct span *s);
/* End the span and hand it to the exporter (or drop and count it when the
 * queue is full). Never blocks on the network. Accepts NULL. */
void span_end(struct span *s);

/* Thread-local current span; span_start() with parent NULL uses it. Returns
 * the previous one so nesting can restore it. */
struct span *trace_set_current(struct span *s);
struct span *trace_current(void);
