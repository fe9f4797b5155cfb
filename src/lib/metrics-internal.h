/* What metrics.c, metrics-process.c and metrics-render.c share: the
 * registry's structures (see metrics.c for their concurrency rules) and
 * the helpers that create families and collectors under the registry's
 * lock. Not for use outside those files. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "metrics.h"
#include "trace.h"

enum metric_type {
        METRIC_COUNTER,
        METRIC_GAUGE,
        METRIC_HISTOGRAM,
};

struct exemplar {
        bool set;
        uint8_t trace_id[TRACE_ID_SIZE];
        double value;
        uint64_t timestamp_usec; /* CLOCK_REALTIME */
};

struct metric {
        struct metric_family *family;
        char **label_values;           /* n_labels, sanitised */
        uint64_t hash;                 /* of label_values */
        struct metric *hash_next;      /* chain in the family's table */
        _Atomic(struct metric *) next; /* creation order */

        _Atomic uint64_t value_bits; /* counter, gauge; histogram: sum */
        /* Histogram only: n_buckets + 1 non-cumulative counts (last: +Inf)
         * and one exemplar per bucket. */
        _Atomic uint64_t *bucket_counts;
        struct exemplar *exemplars;
        atomic_flag exemplar_lock;
};

struct metric_family {
        struct metrics_registry *registry;
        enum metric_type type;
        char *name; /* counters: the base, without _total */
        char *help; /* NULL: no HELP line */
        char **label_names;
        size_t n_labels;
        double *buckets; /* finite upper bounds; +Inf implied */
        size_t n_buckets;

        pthread_mutex_t lock; /* guards the fields below */
        struct metric **table;
        size_t table_size; /* power of two */
        size_t n_children; /* excluding the overflow child */
        struct metric *overflow;
        struct metric *last;

        _Atomic(struct metric *) first;
        _Atomic(struct metric_family *) next;
};

struct collector {
        metrics_collector_fn fn;
        void *userdata;
        void (*free_userdata)(void *userdata);
};

struct metrics_registry {
        pthread_mutex_t lock; /* guards family creation */
        _Atomic(struct metric_family *) first;
        struct metric_family *last;
        size_t n_families;

        pthread_mutex_t collectors_lock; /* also serialises collector runs */
        struct collector collectors[METRICS_MAX_COLLECTORS];
        size_t n_collectors;
};

static inline double atomic_load_double(const _Atomic uint64_t *p)
{
        uint64_t b = atomic_load_explicit((_Atomic uint64_t *)p, memory_order_relaxed);
        double v;

        memcpy(&v, &b, sizeof(v));
        return v;
}

/* Whether a family of r already exposes one of the series names a family
 * of this type and name would. Call with r->lock held. */
bool metrics_name_is_taken(struct metrics_registry *r, enum metric_type type, const char *name);
/* A new family in r; NULL when the name is invalid or taken, or on OOM. */
struct metric_family *metrics_family_create(struct metrics_registry *r, enum metric_type type,
                                            const char *name, const char *help,
                                            const char *const *label_names, const double *buckets,
                                            size_t n_buckets);
/* Run fn at every render; free_userdata (may be NULL) frees userdata with r. */
int metrics_add_collector(struct metrics_registry *r, metrics_collector_fn fn, void *userdata,
                          void (*free_userdata)(void *userdata));
