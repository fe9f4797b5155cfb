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
#define METRICS_MAX_CHILDREN 2000
#define METRICS_MAX_LABELS 8
#define METRICS_MAX_LABEL_VALUE 128

int metrics_registry_new(struct metrics_registry **ret);
void metrics_registry_free(struct metrics_registry *r); /* accepts NULL */

/* Create families. label_names is NULL-terminated (or NULL for none). Names
 * are validated against the Prometheus data model; returns NULL on invalid
 * names, a duplicate name, or OOM. The registry owns the family. */
struct metric_family *metrics_counter_new(struct metrics_registry *r, const char *name,
                                          const char *help, const char *const *label_names);
struct metric_family *metrics_gauge_new(struct metrics_registry *r, const char *name,
                                        const char *help, const char *const *label_names);
struct metric_family *metrics_histogram_new(struct metrics_registry *r, const char *name,
                                            const char *help, const char *const *label_names,
                                            const double *buckets, size_t n_buckets);

/* The child for these label values (as many as the family has label names;
 * NULL for a family without labels). Creates it on first use. Never returns
 * NULL except on OOM; every update function accepts NULL and does nothing. */
struct metric *metrics_child(struct metric_family *f, const char *const *label_values);
/* Shorthands for one and two labels. */
struct metric *metrics_child1(struct metric_family *f, const char *v1);
struct metric *metrics_child2(struct metric_family *f, const char *v1, const char *v2);
struct metric *metrics_child3(struct metric_family *f, const char *v1, const char *v2,
                              const char *v3);

void metrics_counter_add(struct metric *m, double v); /* v >= 0 */
static inline void metrics_counter_inc(struct metric *m)
{
        metrics_counter_add(m, 1.0);
}
void metrics_gauge_set(struct metric *m, double v);
void metrics_gauge_add(struct metric *m, double v);
/* Observe v; when exemplar is a valid sampled context, it becomes the
 * bucket's exemplar {trace_id="…"} with v and the current time. */
void metrics_histogram_observe(struct metric *m, double v, const struct trace_context *exemplar);

/* Current values, for tests and for gauges derived from others. */
double metrics_value(const struct metric *m);          /* counter or gauge */
uint64_t metrics_histogram_count(const struct metric *m);
double metrics_histogram_sum(const struct metric *m);

/* A collector runs at the start of every render, e.g. to refresh gauges
 * read from /proc. */
typedef void (*metrics_collector_fn)(struct metrics_registry *r, void *userdata);
int metrics_registry_add_collector(struct metrics_registry *r, metrics_collector_fn fn,
                                   void *userdata);

/* Standard process_* metrics (cpu seconds, resident and virtual memory,
 * open and max fds, start time) and vigil_build_info{version}. */
int metrics_register_process(struct metrics_registry *r);
int metrics_register_build_info(struct metrics_registry *r, const char *version);

/* Pick the format from an HTTP Accept header (OpenMetrics only when asked
 * for by application/openmetrics-text). */
enum metrics_format metrics_format_from_accept(const char *accept);
const char *metrics_content_type(enum metrics_format fmt);

/* Render every family. *ret is malloc()ed and NUL-terminated; the caller
 * frees it. Returns 0 or -ENOMEM. */
int metrics_render(struct metrics_registry *r, enum metrics_format fmt, char **ret,
                   size_t *ret_len);
