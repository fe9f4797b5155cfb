/* Prometheus metrics: counters, gauges and histograms with label sets,
 * rendered as Prometheus text format 0.0.4 or as OpenMetrics 1.0 with
 * trace_id exemplars on histogram buckets.
 *
 * Thread-safety: everything here may be called from any thread. Updating a
 * child (metrics_counter_add, metrics_gauge_set, metrics_histogram_observe)
 * is lock-free; looking up or creating a child takes the family's lock, so
 * hot paths should look children up once and keep the pointer: a child
 * lives as long as its registry. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct trace_context;
struct metrics_registry;
struct metric_family;
struct metric; /* one child: a family plus one set of label values */

enum metrics_format {
        METRICS_FORMAT_PROMETHEUS,  /* text/plain; version=0.0.4 */
        METRICS_FORMAT_OPENMETRICS, /* application/openmetrics-text; version=1.0.0 */
};

/* Latency buckets (seconds) every vigil duration histogram uses:
 * 0.0005 … 10, including 0.2 for the latency SLO. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_buckets_count;

/* Limits on what a registry accepts, so a label value taken from a request
 * cannot grow memory without bound: past METRICS_MAX_CHILDREN children a
 * family folds new label sets into one child whose values are all
 * "overflow". */
#define METRICS_MAX_CHILDREN    2000
#define METRICS_MAX_LABELS      8
#define METRICS_MAX_LABEL_VALUE 128 /* bytes; longer values are truncated */
/* Limits on what the program itself registers. */
#define METRICS_MAX_FAMILIES   1024
#define METRICS_MAX_NAME       200  /* bytes, metric and label names */
#define METRICS_MAX_HELP       1024 /* bytes; longer help text is truncated */
#define METRICS_MAX_BUCKETS    64
#define METRICS_MAX_COLLECTORS 64

int metrics_registry_new(struct metrics_registry **ret);
void metrics_registry_free(struct metrics_registry *r); /* accepts NULL */

/* Create families. label_names is NULL-terminated (or NULL for none). Names
 * are validated against the Prometheus data model; returns NULL on invalid
 * names, a duplicate name, or OOM. The registry owns the family.
 *
 * A counter is exposed as <base>_total, where base is name without a
 * trailing "_total" (so "x_total" and "x" name the same counter); the
 * OpenMetrics TYPE line uses base. A histogram's bucket bounds must be
 * finite and strictly increasing (at most METRICS_MAX_BUCKETS; a trailing
 * +Inf is implied and may be given), and it cannot have a label "le". A
 * family without labels has its one child from the start, so it renders 0
 * before its first update; a family with labels renders only children that
 * were looked up. A name clashes with another family when any series name
 * either exposes (x, x_total, x_bucket, x_sum, x_count) is the same. */
struct metric_family *metrics_counter_new(struct metrics_registry *r, const char *name,
                                          const char *help, const char *const *label_names);
struct metric_family *metrics_gauge_new(struct metrics_registry *r, const char *name,
                                        const char *help, const char *const *label_names);
struct metric_family *metrics_histogram_new(struct metrics_registry *r, const char *name,
                                            const char *help, const char *const *label_names,
                                            const double *buckets, size_t n_buckets);

/* The family registered under name (for a counter, either spelling, with
 * or without "_total"), or NULL. Lets modules that share families in one
 * registry (e.g. vigil_dependency_*) find them instead of keeping their
 * own table: create, and on NULL find what another module created. */
struct metric_family *metrics_family_find(struct metrics_registry *r, const char *name);

/* The family of that name when r has one of this type, else a new one:
 * for modules that share a family in one registry (found when another
 * module or a concurrent caller created it first). NULL when the name is
 * taken by a family of another type, or on OOM. */
struct metric_family *metrics_counter_get(struct metrics_registry *r, const char *name,
                                          const char *help, const char *const *label_names);
struct metric_family *metrics_gauge_get(struct metrics_registry *r, const char *name,
                                        const char *help, const char *const *label_names);
struct metric_family *metrics_histogram_get(struct metrics_registry *r, const char *name,
                                            const char *help, const char *const *label_names,
                                            const double *buckets, size_t n_buckets);

/* The child for these label values (as many as the family has label names;
 * NULL for a family without labels). Creates it on first use. Never returns
 * NULL except on OOM (or f == NULL); every update function accepts NULL and
 * does nothing. Values are truncated to METRICS_MAX_LABEL_VALUE bytes (at a
 * character boundary), bytes that are not UTF-8 become '?', and a NULL
 * value counts as "". */
struct metric *metrics_child(struct metric_family *f, const char *const *label_values);
/* Shorthands for one, two and three labels. */
struct metric *metrics_child1(struct metric_family *f, const char *v1);
struct metric *metrics_child2(struct metric_family *f, const char *v1, const char *v2);
struct metric *metrics_child3(struct metric_family *f, const char *v1, const char *v2,
                              const char *v3);

/* Updates are lock-free and ignore a child of another metric type. */
void metrics_counter_add(struct metric *m, double v); /* v >= 0; others ignored */
static inline void metrics_counter_inc(struct metric *m)
{
        metrics_counter_add(m, 1.0);
}
/* Set a counter to v, for collectors that mirror a monotonic count kept
 * elsewhere (e.g. a tracer's dropped spans); v < 0 or NaN is ignored. */
void metrics_counter_set(struct metric *m, double v);
void metrics_gauge_set(struct metric *m, double v);
void metrics_gauge_add(struct metric *m, double v);
/* Observe v; when exemplar is a valid sampled context (flags bit 0 set,
 * trace id not all zero), it becomes the bucket's exemplar {trace_id="…"}
 * with v and the current time. Never blocks: should another thread be
 * writing the same child's exemplar at that moment, this one is skipped.
 * NaN is ignored. */
void metrics_histogram_observe(struct metric *m, double v, const struct trace_context *exemplar);

/* Current values, for tests and for gauges derived from others. For NULL
 * or a child of another type, metrics_value() and metrics_histogram_sum()
 * return NaN and metrics_histogram_count() 0. */
double metrics_value(const struct metric *m); /* counter or gauge */
uint64_t metrics_histogram_count(const struct metric *m);
double metrics_histogram_sum(const struct metric *m);

/* A collector runs at the start of every render, e.g. to refresh gauges
 * read from /proc. Collectors run one render at a time, in the order they
 * were added; a collector must not add collectors. Returns 0, -EINVAL,
 * -E2BIG past METRICS_MAX_COLLECTORS, or -ENOMEM. */
typedef void (*metrics_collector_fn)(struct metrics_registry *r, void *userdata);
int metrics_registry_add_collector(struct metrics_registry *r, metrics_collector_fn fn,
                                   void *userdata);

/* Standard process_* metrics (process_cpu_seconds_total,
 * process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_open_fds, process_max_fds, process_start_time_seconds), read from
 * /proc at every render, and vigil_build_info{version} = 1. Return 0,
 * -EEXIST when already registered, -EINVAL, -ENOMEM, or the errno of
 * reading /proc. */
int metrics_register_process(struct metrics_registry *r);
int metrics_register_build_info(struct metrics_registry *r, const char *version);

/* Pick the format from an HTTP Accept header (OpenMetrics only when one of
 * its media ranges is application/openmetrics-text without q=0; NULL or
 * anything else gives Prometheus text). */
enum metrics_format metrics_format_from_accept(const char *accept);
const char *metrics_content_type(enum metrics_format fmt);

/* Run the collectors, then render every family in registration order and
 * its children in creation order. *ret is malloc()ed and NUL-terminated;
 * the caller frees it; ret_len may be NULL. Returns 0, -EINVAL or -ENOMEM.
 * Counts are read without stopping writers: a histogram's _count is its
 * +Inf bucket, so the two always agree within one render. Integral values
 * print as integers, others with the fewest digits that round-trip;
 * OpenMetrics writes integral le bounds canonically ("1.0"). Exemplars
 * appear only in OpenMetrics. */
int metrics_render(struct metrics_registry *r, enum metrics_format fmt, char **ret,
                   size_t *ret_len);
