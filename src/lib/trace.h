/* Distributed tracing: W3C trace context, spans, and an OTLP/HTTP (JSON)
 * exporter.
 *
 * Thread-safety: a struct tracer is shared by all threads; span_start(),
 * span_end() and tracer_*() may be called from any thread. A single struct
 * span is owned by the thread that started it until span_end(). The
 * "current span" is thread-local: the HTTP server sets it for the duration
 * of a request so that libraries (pg, redis, http-client, log) can attach
 * child spans and log lines to it without passing it around. Trace and
 * span ids come from a per-thread xoshiro256** generator seeded from
 * getrandom() (and reseeded in a forked child), so making an id takes no
 * lock and no system call. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct metrics_registry;

#define TRACE_ID_SIZE      16
#define SPAN_ID_SIZE       8
#define TRACEPARENT_LEN    55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define TRACE_FLAG_SAMPLED 0x01

/* Limits on what one span records, so a value taken from a request cannot
 * grow memory or an export batch without bound. Longer strings are cut at
 * a UTF-8 character boundary; invalid UTF-8 is replaced by U+FFFD (OTLP/JSON
 * must be valid UTF-8). Attributes past TRACE_MAX_ATTRIBUTES are dropped
 * and counted in the span's droppedAttributesCount. */
#define TRACE_MAX_ATTRIBUTES     32
#define TRACE_MAX_NAME_LEN       256  /* span name, bytes */
#define TRACE_MAX_KEY_LEN        128  /* attribute key, bytes */
#define TRACE_MAX_STRING_LEN     1024 /* attribute string value, status message */
#define TRACE_MAX_QUEUE_CAPACITY 1000000
#define TRACE_MAX_BATCH_SIZE     8192

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

/* Parse a W3C traceparent header value (Trace Context Level 1). Returns 0
 * and fills *ret, or -EINVAL for anything malformed (wrong length, bad hex,
 * all-zero ids, version ff, upper-case hex, wrong separators); the caller
 * then starts a new trace. Version 00 must be exactly TRACEPARENT_LEN
 * characters. A higher version is parsed by the version-00 prefix rules: at
 * least TRACEPARENT_LEN characters, and when longer a '-' must follow the
 * flags; of its flags only the sampled bit is kept. value may be NULL. */
int trace_parse_traceparent(const char *value, struct trace_context *ret);

/* Parse a bare trace id: exactly 32 lower-case hex digits, not all zeros
 * (the gateway's X-Request-Id, nginx's $request_id). Returns 0 and fills
 * ret, or -EINVAL. value may be NULL. */
int trace_parse_trace_id(const char *value, uint8_t ret[static TRACE_ID_SIZE]);

/* Format ctx as a version-00 traceparent value into buf (at least
 * TRACEPARENT_LEN + 1 bytes). trace_parse_traceparent() of the result gives
 * back ctx. */
void trace_format_traceparent(const struct trace_context *ctx,
                              char buf[static TRACEPARENT_LEN + 1]);

/* Lower-case hex of the ids; buf sizes include the NUL. */
void trace_format_trace_id(const struct trace_context *ctx, char buf[static 2 * TRACE_ID_SIZE + 1]);
void trace_format_span_id(const struct trace_context *ctx, char buf[static 2 * SPAN_ID_SIZE + 1]);

/* True when ctx is non-NULL and neither id is all zeros. */
bool trace_context_is_valid(const struct trace_context *ctx);

struct tracer_options {
        const char *service_name; /* "vigil-authd"; NULL: "unknown_service" */
        const char *service_version;
        const char *endpoint;             /* OTLP/HTTP traces URL; NULL or "" disables export */
        double sample_ratio;              /* 0..1, for new root traces only */
        size_t queue_capacity;            /* spans; 0 means the default (4096) */
        size_t batch_size;                /* spans per export request; 0: default (256) */
        unsigned flush_interval_ms;       /* 0: default (1000) */
        unsigned export_timeout_ms;       /* 0: default (2000) */
        struct metrics_registry *metrics; /* may be NULL; else registers
                                           * vigil_trace_spans_dropped_total and
                                           * vigil_trace_spans_exported_total */
};

struct tracer;

/* Create a tracer and start its exporter thread (when an endpoint is set).
 * Returns 0, -EINVAL for options out of range (sample_ratio outside 0..1 or
 * NaN, queue_capacity or batch_size above the TRACE_MAX_* limits), -EEXIST when metrics cannot take
 * the two counters (one tracer per registry), or another negative errno. The metrics registry must
 * outlive the tracer.
 *
 * Export: span_end() renders the span into the OTLP/JSON request being
 * filled; a background thread POSTs each request (an
 * ExportTraceServiceRequest) once it holds batch_size spans, or with fewer
 * when flush_interval_ms has passed. queue_capacity bounds the spans
 * rendered and waiting. A batch that fails (connection refused, timeout,
 * non-2xx) is dropped and counted; there is no retry, so a dead collector
 * costs one failed request per batch. */
int tracer_new(const struct tracer_options *opts, struct tracer **ret);
/* Stop the exporter, trying to flush queued spans for up to the export
 * timeout (what is left then is counted as dropped), and free. Accepts
 * NULL. Every span of this tracer must have ended before. */
void tracer_free(struct tracer *t);
/* Counters, for tests and metrics: spans dropped because the queue was
 * full or their export failed, and spans the collector accepted. */
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
/* Start a root span (no parent) in the trace trace_id, which the caller
 * named but did not start: the gateway names each request's trace with its
 * request id and leaves the first span, and the sampling decision, to the
 * daemon. Sampled per sample_ratio from the id, as any new root; an
 * invalid (all-zero) id gets a new random one. Never fails (see
 * span_start). */
struct span *span_start_root(struct tracer *t, const char *name, enum span_kind kind,
                             const uint8_t trace_id[static TRACE_ID_SIZE]);
/* Attributes and status are recorded only when span_is_recording(); a key
 * set twice keeps the last value. All accept a NULL span. */
/* A root span that is never recorded, and neither are the spans started
 * under it: for background probes and pollers (readiness pings, the outbox
 * relay) that would otherwise start a new trace every few seconds. Make it
 * current around the work, then end it. Never fails (see span_start). */
struct span *span_start_unsampled(const char *name);
void span_set_attribute_string(struct span *s, const char *key, const char *value);
void span_set_attribute_int(struct span *s, const char *key, int64_t value);
void span_set_attribute_double(struct span *s, const char *key, double value);
void span_set_attribute_bool(struct span *s, const char *key, bool value);
/* message is kept only with SPAN_STATUS_ERROR, as OTLP defines it. */
void span_set_status(struct span *s, enum span_status status, const char *message);
/* The span's own context (its span id, its trace id). For NULL (or the
 * span returned on allocation failure) an all-zero, invalid context. */
const struct trace_context *span_context(const struct span *s);
/* True, and the parent's span id in ret, when s has a parent (local or
 * remote); false for a root span. */
bool span_parent_span_id(const struct span *s, uint8_t ret[static SPAN_ID_SIZE]);
/* True when the span will be exported: its tracer exports and it is
 * sampled. Callers may skip computing attributes otherwise. */
bool span_is_recording(const struct span *s);
/* End the span and hand it to the exporter (or drop and count it when the
 * queue is full). Never blocks on the network. Accepts NULL. */
void span_end(struct span *s);

/* Thread-local current span; span_start() with parent NULL uses it. Returns
 * the previous one so nesting can restore it. span_end() of the current
 * span resets the current span to NULL rather than leave it dangling. */
struct span *trace_set_current(struct span *s);
struct span *trace_current(void);
