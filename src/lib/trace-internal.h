/* What trace-context.c (W3C trace context and ids), trace.c (spans) and
 * trace-export.c (OTLP/JSON and the exporter) share. Not for use outside
 * those files. */
#pragma once

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "trace.h"

#define NSEC_PER_MSEC 1000000ULL
#define NSEC_PER_SEC  1000000000ULL

/* What a malformed byte in a span's text becomes: U+FFFD. */
#define REPLACEMENT     "\xef\xbf\xbd"
#define REPLACEMENT_LEN (sizeof(REPLACEMENT) - 1)

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

/* Lower-case hex of n bytes, NUL-terminated: out has room for 2 n + 1. */
void trace_hex_encode(const uint8_t *p, size_t n, char *out);
uint64_t trace_now_nsec(clockid_t clock);
/* Fill p with random bytes, never all zeros (an invalid id). */
void trace_random_id(uint8_t *p, size_t n);

bool trace_span_recording(const struct span *s);
void trace_span_free(struct span *s);
/* Export s, which has ended, and free it; on t's thread-safe queue. */
void tracer_export_span(struct tracer *t, struct span *s);
