/* The shared vigil_dependency_* families, one set per registry. */
#include <errno.h>

#include "dependency-metrics.h"
#include "metrics.h"

static const char *const duration_labels[] = {"dependency", "operation", NULL};
static const char *const up_labels[] = {"dependency", NULL};

int dependency_metrics_get(struct metrics_registry *r, struct dependency_metrics *ret)
{
        struct dependency_metrics m;

        if (!r || !ret)
                return -EINVAL;

        m.errors =
                metrics_counter_get(r, "vigil_dependency_errors_total",
                                    "Failed calls to a dependency, by operation.", duration_labels);
        m.duration = metrics_histogram_get(r, "vigil_dependency_request_duration_seconds",
                                           "Duration of calls to a dependency, by operation.",
                                           duration_labels, metrics_latency_buckets,
                                           metrics_latency_buckets_count);
        m.up = metrics_gauge_get(r, "vigil_dependency_up",
                                 "Whether the dependency answered its last check (1) or not (0).",
                                 up_labels);
        if (!m.errors || !m.duration || !m.up)
                return -EEXIST;
        *ret = m;
        return 0;
}

void dependency_metrics_observe(const struct dependency_metrics *m, const char *dependency,
                                const char *operation, double seconds, bool failed,
                                const struct trace_context *exemplar)
{
        if (!m)
                return;
        metrics_histogram_observe(metrics_child2(m->duration, dependency, operation), seconds,
                                  exemplar);
        if (failed)
                metrics_counter_inc(metrics_child2(m->errors, dependency, operation));
}

void dependency_metrics_set_up(const struct dependency_metrics *m, const char *dependency, bool up)
{
        if (!m)
                return;
        metrics_gauge_set(metrics_child1(m->up, dependency), up ? 1.0 : 0.0);
}
