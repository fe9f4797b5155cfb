/* The metric families every client of a dependency shares (pg, redis, amqp,
 * http-client, readiness): they are created in one place, once per
 * registry, because a registry refuses a second family of the same name.
 *
 *   vigil_dependency_request_duration_seconds{dependency,operation} histogram
 *   vigil_dependency_errors_total{dependency,operation}              counter
 *   vigil_dependency_up{dependency}                                  gauge
 *
 * Thread-safety: every function may be called from any thread. */
#pragma once

#include <stdbool.h>

struct metrics_registry;
struct metric_family;
struct trace_context;

struct dependency_metrics {
        struct metric_family *duration; /* histogram, metrics_latency_buckets */
        struct metric_family *errors;   /* counter */
        struct metric_family *up;       /* gauge */
};

/* The shared families of registry r in *ret: created by the first caller,
 * found in r (metrics_*_get) by every later one, so they live as long as r
 * and every client of r updates the same ones. Returns 0, -EINVAL for a
 * NULL r, or -EEXIST when r holds one of the names as another type (or on
 * OOM; *ret is then unchanged). */
int dependency_metrics_get(struct metrics_registry *r, struct dependency_metrics *ret);

/* Record one call: its duration in seconds under {dependency, operation},
 * and when failed, one error. exemplar (may be NULL) is the span's context.
 * m may be NULL, or hold NULL families (metrics off): then nothing happens. dependency and
 * operation are label values: pass fixed strings, never request data. */
void dependency_metrics_observe(const struct dependency_metrics *m, const char *dependency,
                                const char *operation, double seconds, bool failed,
                                const struct trace_context *exemplar);

/* Set vigil_dependency_up{dependency} to 1 or 0. m may be NULL. */
void dependency_metrics_set_up(const struct dependency_metrics *m, const char *dependency, bool up);
