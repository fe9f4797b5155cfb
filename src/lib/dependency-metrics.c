/* The shared vigil_dependency_* families, one set per registry. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "dependency-metrics.h"
#include "macro.h"
#include "metrics.h"

/* Registries a process creates over its life: one in a daemon, a few
 * hundred at most in a test binary. Entries are reused when a registry's
 * address comes back. */
#define MAX_REGISTRIES 1024

struct entry {
        struct metrics_registry *registry;
        struct dependency_metrics *metrics;
};

/* The one piece of global state here: see the header for why. */
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry table[MAX_REGISTRIES];
static size_t table_used;

static const char *const duration_labels[] = {"dependency", "operation", NULL};
static const char *const up_labels[] = {"dependency", NULL};

/* Called with table_lock held. Creates the three families in r; the first
 * one failing on a name already taken means r already has them. */
static int create_families(struct metrics_registry *r, struct dependency_metrics **ret)
{
        _cleanup_free_ struct dependency_metrics *m = NULL;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->errors =
                metrics_counter_new(r, "vigil_dependency_errors_total",
                                    "Failed calls to a dependency, by operation.", duration_labels);
        if (!m->errors)
                return -EEXIST;
        m->duration = metrics_histogram_new(r, "vigil_dependency_request_duration_seconds",
                                            "Duration of calls to a dependency, by operation.",
                                            duration_labels, metrics_latency_buckets,
                                            metrics_latency_buckets_count);
        m->up = metrics_gauge_new(r, "vigil_dependency_up",
                                  "Whether the dependency answered its last check (1) or not (0).",
                                  up_labels);
        if (!m->duration || !m->up)
                return -EEXIST;
        *ret = TAKE_PTR(m);
        return 0;
}

int dependency_metrics_get(struct metrics_registry *r, struct dependency_metrics **ret)
{
        struct dependency_metrics *m = NULL;
        struct entry *e = NULL;
        int rc;

        if (!r || !ret)
                return -EINVAL;

        pthread_mutex_lock(&table_lock);
        for (size_t i = 0; i < table_used; i++)
                if (table[i].registry == r) {
                        e = &table[i];
                        break;
                }

        rc = create_families(r, &m);
        if (rc == 0) {
                /* A new registry, perhaps at the address of a freed one. */
                if (!e) {
                        if (table_used >= MAX_REGISTRIES) {
                                /* The families now exist in r but cannot be
                                 * remembered; callers get an error rather
                                 * than a second, unrendered set. */
                                free(m);
                                pthread_mutex_unlock(&table_lock);
                                return -ENOSPC;
                        }
                        e = &table[table_used++];
                        e->registry = r;
                } else
                        free(e->metrics); /* its registry is gone */
                e->metrics = m;
        } else if (rc == -EEXIST && e)
                m = e->metrics; /* created here before */
        else {
                pthread_mutex_unlock(&table_lock);
                return rc;
        }
        pthread_mutex_unlock(&table_lock);

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
