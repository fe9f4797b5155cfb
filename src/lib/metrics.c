/* Prometheus metrics: a registry of counter, gauge and histogram families,
 * rendered as Prometheus text 0.0.4 or OpenMetrics 1.0.0.
 *
 * Concurrency: updates touch only atomics (doubles are kept as their bit
 * patterns and changed with compare-and-swap loops). Families and children
 * are appended to singly linked lists whose next pointers are published
 * with release stores, so rendering walks them without taking a lock;
 * nothing is freed before the registry. A family's lock guards only its
 * child hash table; the registry's lock guards family creation. A child's
 * exemplars sit behind a tiny try-lock that observers never wait on. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"
#include "metrics.h"
#include "strbuf.h"
#include "trace.h"
#include "utf8.h"

const double metrics_latency_buckets[] = {
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2.5, 5, 10,
};
const size_t metrics_latency_buckets_count = ELEMENTSOF(metrics_latency_buckets);

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

/* ---- atomics on doubles ---- */

static uint64_t double_to_bits(double v)
{
        uint64_t b;

        memcpy(&b, &v, sizeof(b));
        return b;
}

static double bits_to_double(uint64_t b)
{
        double v;

        memcpy(&v, &b, sizeof(v));
        return v;
}

static void atomic_add_double(_Atomic uint64_t *p, double v)
{
        uint64_t old = atomic_load_explicit(p, memory_order_relaxed);

        while (!atomic_compare_exchange_weak_explicit(p, &old,
                                                      double_to_bits(bits_to_double(old) + v),
                                                      memory_order_relaxed, memory_order_relaxed))
                ;
}

static double atomic_load_double(const _Atomic uint64_t *p)
{
        return bits_to_double(atomic_load_explicit((_Atomic uint64_t *)p, memory_order_relaxed));
}

/* ---- validation ---- */

static bool name_is_valid(const char *s, bool colons)
{
        size_t n;

        if (!s || !*s)
                return false;
        n = strnlen(s, METRICS_MAX_NAME + 1);
        if (n > METRICS_MAX_NAME)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                          (colons && c == ':') || (i > 0 && c >= '0' && c <= '9');
                if (!ok)
                        return false;
        }
        return true;
}

static bool metric_name_is_valid(const char *s)
{
        return name_is_valid(s, true);
}

/* Label names starting with "__" are reserved for Prometheus itself. */
static bool label_name_is_valid(const char *s)
{
        return name_is_valid(s, false) && strncmp(s, "__", 2) != 0;
}

static bool streq(const char *a, const char *b)
{
        return strcmp(a, b) == 0;
}

static bool has_suffix(const char *s, const char *suffix)
{
        size_t n = strlen(s), k = strlen(suffix);

        return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Copy v into buf (METRICS_MAX_LABEL_VALUE + 1 bytes): truncated at a
 * character boundary, invalid UTF-8 bytes replaced by '?'. */
static void sanitize_label_value(const char *v, char buf[static METRICS_MAX_LABEL_VALUE + 1])
{
        (void)utf8_copy(buf, v ? v : "", METRICS_MAX_LABEL_VALUE, "?");
}

/* ---- children ---- */

static uint64_t hash_label_values(char *const *values, size_t n)
{
        uint64_t h = 14695981039346656037ULL; /* FNV-1a */

        for (size_t i = 0; i < n; i++) {
                for (const unsigned char *p = (const unsigned char *)values[i]; *p; p++)
                        h = (h ^ *p) * 1099511628211ULL;
                h = (h ^ 0xff) * 1099511628211ULL; /* never in UTF-8: separates values */
        }
        return h;
}

static void metric_free(struct metric *m)
{
        if (!m)
                return;
        if (m->label_values)
                for (size_t i = 0; i < m->family->n_labels; i++)
                        free(m->label_values[i]);
        free(m->label_values);
        free((void *)m->bucket_counts);
        free(m->exemplars);
        free(m);
}

static struct metric *metric_new(struct metric_family *f, char *const *values, uint64_t hash)
{
        struct metric *m;

        m = calloc(1, sizeof(*m));
        if (!m)
                return NULL;
        m->family = f;
        m->hash = hash;
        atomic_init(&m->next, NULL);
        atomic_init(&m->value_bits, double_to_bits(0.0));
        atomic_flag_clear(&m->exemplar_lock);

        if (f->n_labels > 0) {
                m->label_values = calloc(f->n_labels, sizeof(char *));
                if (!m->label_values)
                        goto fail;
                for (size_t i = 0; i < f->n_labels; i++) {
                        m->label_values[i] = strdup(values[i]);
                        if (!m->label_values[i])
                                goto fail;
                }
        }
        if (f->type == METRIC_HISTOGRAM) {
                m->bucket_counts = calloc(f->n_buckets + 1, sizeof(_Atomic uint64_t));
                m->exemplars = calloc(f->n_buckets + 1, sizeof(struct exemplar));
                if (!m->bucket_counts || !m->exemplars)
                        goto fail;
                for (size_t i = 0; i <= f->n_buckets; i++)
                        atomic_init(&m->bucket_counts[i], 0);
        }
        return m;
fail:
        metric_free(m);
        return NULL;
}

static struct metric *table_find(struct metric_family *f, char *const *values, uint64_t hash)
{
        for (struct metric *m = f->table[hash & (f->table_size - 1)]; m; m = m->hash_next) {
                size_t i;

                if (m->hash != hash)
                        continue;
                for (i = 0; i < f->n_labels; i++)
                        if (strcmp(m->label_values[i], values[i]) != 0)
                                break;
                if (i == f->n_labels)
                        return m;
        }
        return NULL;
}

static void table_insert(struct metric_family *f, struct metric *m)
{
        size_t i = m->hash & (f->table_size - 1);

        m->hash_next = f->table[i];
        f->table[i] = m;
}

/* Double the table once it is fuller than one child per slot. Failing to
 * grow only makes chains longer. */
static void table_maybe_grow(struct metric_family *f)
{
        struct metric **old = f->table;
        size_t old_size = f->table_size;

        if (f->n_children < f->table_size)
                return;
        f->table = calloc(old_size * 2, sizeof(struct metric *));
        if (!f->table) {
                f->table = old;
                return;
        }
        f->table_size = old_size * 2;
        for (size_t i = 0; i < old_size; i++)
                for (struct metric *m = old[i], *next; m; m = next) {
                        next = m->hash_next;
                        table_insert(f, m);
                }
        free(old);
}

/* Publish m at the end of the creation-order list. Called with f->lock. */
static void family_append_child(struct metric_family *f, struct metric *m)
{
        if (f->last)
                atomic_store_explicit(&f->last->next, m, memory_order_release);
        else
                atomic_store_explicit(&f->first, m, memory_order_release);
        f->last = m;
}

struct metric *metrics_child(struct metric_family *f, const char *const *label_values)
{
        char buf[METRICS_MAX_LABELS][METRICS_MAX_LABEL_VALUE + 1];
        char *values[METRICS_MAX_LABELS];
        struct metric *m;
        uint64_t hash;

        if (!f)
                return NULL;
        for (size_t i = 0; i < f->n_labels; i++) {
                sanitize_label_value(label_values ? label_values[i] : NULL, buf[i]);
                values[i] = buf[i];
        }
        hash = hash_label_values(values, f->n_labels);

        pthread_mutex_lock(&f->lock);
        m = table_find(f, values, hash);
        if (m)
                goto out;

        if (f->n_children >= METRICS_MAX_CHILDREN) {
                if (!f->overflow) {
                        for (size_t i = 0; i < f->n_labels; i++)
                                values[i] = (char *)"overflow";
                        hash = hash_label_values(values, f->n_labels);
                        /* A caller may have used "overflow" itself: one
                         * series per label set, always. */
                        f->overflow = table_find(f, values, hash);
                        if (!f->overflow) {
                                f->overflow = metric_new(f, values, hash);
                                if (f->overflow)
                                        family_append_child(f, f->overflow);
                        }
                }
                m = f->overflow;
                goto out;
        }

        m = metric_new(f, values, hash);
        if (!m)
                goto out;
        table_insert(f, m);
        f->n_children++;
        table_maybe_grow(f);
        family_append_child(f, m);
out:
        pthread_mutex_unlock(&f->lock);
        return m;
}

struct metric *metrics_child1(struct metric_family *f, const char *v1)
{
        const char *v[] = {v1};

        return metrics_child(f, v);
}

struct metric *metrics_child2(struct metric_family *f, const char *v1, const char *v2)
{
        const char *v[] = {v1, v2};

        return metrics_child(f, v);
}

struct metric *metrics_child3(struct metric_family *f, const char *v1, const char *v2,
                              const char *v3)
{
        const char *v[] = {v1, v2, v3};

        return metrics_child(f, v);
}

/* ---- families ---- */

static void family_free(struct metric_family *f)
{
        struct metric *m, *next;

        if (!f)
                return;
        for (m = atomic_load_explicit(&f->first, memory_order_relaxed); m; m = next) {
                next = atomic_load_explicit(&m->next, memory_order_relaxed);
                metric_free(m);
        }
        if (f->label_names)
                for (size_t i = 0; i < f->n_labels; i++)
                        free(f->label_names[i]);
        free(f->label_names);
        free(f->buckets);
        free(f->table);
        free(f->name);
        free(f->help);
        pthread_mutex_destroy(&f->lock);
        free(f);
}

/* The names of the series a family exposes, and the family name itself. */
static size_t family_series_names(enum metric_type type, const char *name,
                                  char out[static 5][METRICS_MAX_NAME + 16])
{
        size_t n = 0;

        snprintf(out[n++], METRICS_MAX_NAME + 16, "%s", name);
        switch (type) {
        case METRIC_COUNTER:
                snprintf(out[n++], METRICS_MAX_NAME + 16, "%s_total", name);
                break;
        case METRIC_GAUGE:
                break;
        case METRIC_HISTOGRAM:
                snprintf(out[n++], METRICS_MAX_NAME + 16, "%s_bucket", name);
                snprintf(out[n++], METRICS_MAX_NAME + 16, "%s_sum", name);
                snprintf(out[n++], METRICS_MAX_NAME + 16, "%s_count", name);
                break;
        }
        return n;
}

/* Called with r->lock. */
static bool name_is_taken(struct metrics_registry *r, enum metric_type type, const char *name)
{
        char mine[5][METRICS_MAX_NAME + 16], theirs[5][METRICS_MAX_NAME + 16];
        size_t n_mine = family_series_names(type, name, mine);

        for (struct metric_family *f = atomic_load_explicit(&r->first, memory_order_relaxed); f;
             f = atomic_load_explicit(&f->next, memory_order_relaxed)) {
                size_t n_theirs = family_series_names(f->type, f->name, theirs);

                for (size_t i = 0; i < n_mine; i++)
                        for (size_t j = 0; j < n_theirs; j++)
                                if (strcmp(mine[i], theirs[j]) == 0)
                                        return true;
        }
        return false;
}

static struct metric_family *family_new(struct metrics_registry *r, enum metric_type type,
                                        const char *name, const char *help,
                                        const char *const *label_names, const double *buckets,
                                        size_t n_buckets)
{
        struct metric_family *f = NULL;
        size_t n_labels = 0;

        if (!r || !metric_name_is_valid(name))
                return NULL;
        if (label_names)
                for (; label_names[n_labels]; n_labels++) {
                        if (n_labels >= METRICS_MAX_LABELS ||
                            !label_name_is_valid(label_names[n_labels]))
                                return NULL;
                        if (type == METRIC_HISTOGRAM && strcmp(label_names[n_labels], "le") == 0)
                                return NULL;
                        for (size_t j = 0; j < n_labels; j++)
                                if (strcmp(label_names[j], label_names[n_labels]) == 0)
                                        return NULL;
                }
        if (type == METRIC_HISTOGRAM) {
                if (n_buckets > 0 && !buckets)
                        return NULL;
                if (n_buckets > 0 && isinf(buckets[n_buckets - 1]) && buckets[n_buckets - 1] > 0)
                        n_buckets--; /* +Inf is implied */
                if (n_buckets > METRICS_MAX_BUCKETS)
                        return NULL;
                for (size_t i = 0; i < n_buckets; i++)
                        if (!isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1]))
                                return NULL;
        }

        f = calloc(1, sizeof(*f));
        if (!f)
                return NULL;
        f->registry = r;
        f->type = type;
        f->n_labels = n_labels;
        pthread_mutex_init(&f->lock, NULL);
        atomic_init(&f->first, NULL);
        atomic_init(&f->next, NULL);

        if (type == METRIC_COUNTER && has_suffix(name, "_total"))
                f->name = strndup(name, strlen(name) - strlen("_total"));
        else
                f->name = strdup(name);
        if (!f->name)
                goto fail;
        /* "_total" alone leaves nothing; "1_total" leaves an invalid name. */
        if (!metric_name_is_valid(f->name))
                goto fail;
        if (help) {
                f->help = strndup(help, METRICS_MAX_HELP);
                if (!f->help)
                        goto fail;
        }
        if (n_labels > 0) {
                f->label_names = calloc(n_labels, sizeof(char *));
                if (!f->label_names)
                        goto fail;
                for (size_t i = 0; i < n_labels; i++) {
                        f->label_names[i] = strdup(label_names[i]);
                        if (!f->label_names[i])
                                goto fail;
                }
        }
        if (type == METRIC_HISTOGRAM && n_buckets > 0) {
                f->buckets = calloc(n_buckets, sizeof(double));
                if (!f->buckets)
                        goto fail;
                memcpy(f->buckets, buckets, n_buckets * sizeof(double));
        }
        f->n_buckets = n_buckets;
        f->table_size = 16;
        f->table = calloc(f->table_size, sizeof(struct metric *));
        if (!f->table)
                goto fail;
        /* A family without labels exists from the start, with value 0. */
        if (n_labels == 0 && !metrics_child(f, NULL))
                goto fail;

        pthread_mutex_lock(&r->lock);
        if (r->n_families >= METRICS_MAX_FAMILIES || name_is_taken(r, type, f->name)) {
                pthread_mutex_unlock(&r->lock);
                goto fail;
        }
        if (r->last)
                atomic_store_explicit(&r->last->next, f, memory_order_release);
        else
                atomic_store_explicit(&r->first, f, memory_order_release);
        r->last = f;
        r->n_families++;
        pthread_mutex_unlock(&r->lock);
        return f;
fail:
        family_free(f);
        return NULL;
}

struct metric_family *metrics_counter_new(struct metrics_registry *r, const char *name,
                                          const char *help, const char *const *label_names)
{
        return family_new(r, METRIC_COUNTER, name, help, label_names, NULL, 0);
}

struct metric_family *metrics_gauge_new(struct metrics_registry *r, const char *name,
                                        const char *help, const char *const *label_names)
{
        return family_new(r, METRIC_GAUGE, name, help, label_names, NULL, 0);
}

struct metric_family *metrics_histogram_new(struct metrics_registry *r, const char *name,
                                            const char *help, const char *const *label_names,
                                            const double *buckets, size_t n_buckets)
{
        return family_new(r, METRIC_HISTOGRAM, name, help, label_names, buckets, n_buckets);
}

struct metric_family *metrics_family_find(struct metrics_registry *r, const char *name)
{
        if (!r || !name)
                return NULL;
        for (struct metric_family *f = atomic_load_explicit(&r->first, memory_order_acquire); f;
             f = atomic_load_explicit(&f->next, memory_order_acquire)) {
                size_t n = strlen(f->name);

                if (strncmp(name, f->name, n) != 0)
                        continue;
                if (name[n] == '\0' || (f->type == METRIC_COUNTER && streq(name + n, "_total")))
                        return f;
        }
        return NULL;
}

/* created, the family just found or made under name; when that failed
 * (a concurrent caller made it first) the one r now holds. NULL unless it
 * has this type. */
static struct metric_family *family_get(struct metrics_registry *r, const char *name,
                                        enum metric_type type, struct metric_family *created)
{
        struct metric_family *f = created ? created : metrics_family_find(r, name);

        return f && f->type == type ? f : NULL;
}

struct metric_family *metrics_counter_get(struct metrics_registry *r, const char *name,
                                          const char *help, const char *const *label_names)
{
        struct metric_family *f = metrics_family_find(r, name);

        return family_get(r, name, METRIC_COUNTER,
                          f ? f : metrics_counter_new(r, name, help, label_names));
}

struct metric_family *metrics_gauge_get(struct metrics_registry *r, const char *name,
                                        const char *help, const char *const *label_names)
{
        struct metric_family *f = metrics_family_find(r, name);

        return family_get(r, name, METRIC_GAUGE,
                          f ? f : metrics_gauge_new(r, name, help, label_names));
}

struct metric_family *metrics_histogram_get(struct metrics_registry *r, const char *name,
                                            const char *help, const char *const *label_names,
                                            const double *buckets, size_t n_buckets)
{
        struct metric_family *f = metrics_family_find(r, name);

        return family_get(
                r, name, METRIC_HISTOGRAM,
                f ? f : metrics_histogram_new(r, name, help, label_names, buckets, n_buckets));
}

/* ---- updates ---- */

static bool metric_is(const struct metric *m, enum metric_type type)
{
        return m && m->family->type == type;
}

void metrics_counter_add(struct metric *m, double v)
{
        if (!metric_is(m, METRIC_COUNTER) || !(v >= 0))
                return;
        atomic_add_double(&m->value_bits, v);
}

void metrics_counter_set(struct metric *m, double v)
{
        if (!metric_is(m, METRIC_COUNTER) || !(v >= 0))
                return;
        atomic_store_explicit(&m->value_bits, double_to_bits(v), memory_order_relaxed);
}

void metrics_gauge_set(struct metric *m, double v)
{
        if (!metric_is(m, METRIC_GAUGE))
                return;
        atomic_store_explicit(&m->value_bits, double_to_bits(v), memory_order_relaxed);
}

void metrics_gauge_add(struct metric *m, double v)
{
        if (!metric_is(m, METRIC_GAUGE))
                return;
        atomic_add_double(&m->value_bits, v);
}

static bool exemplar_context_is_usable(const struct trace_context *ctx)
{
        if (!ctx || !(ctx->flags & 1))
                return false;
        for (size_t i = 0; i < TRACE_ID_SIZE; i++)
                if (ctx->trace_id[i] != 0)
                        return true;
        return false;
}

void metrics_histogram_observe(struct metric *m, double v, const struct trace_context *exemplar)
{
        const struct metric_family *f;
        size_t lo = 0, hi;

        if (!metric_is(m, METRIC_HISTOGRAM) || isnan(v))
                return;
        f = m->family;
        /* The first bucket whose upper bound is >= v; n_buckets is +Inf. */
        hi = f->n_buckets;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (v <= f->buckets[mid])
                        hi = mid;
                else
                        lo = mid + 1;
        }
        atomic_fetch_add_explicit(&m->bucket_counts[lo], 1, memory_order_relaxed);
        atomic_add_double(&m->value_bits, v);

        if (!exemplar_context_is_usable(exemplar))
                return;
        if (atomic_flag_test_and_set_explicit(&m->exemplar_lock, memory_order_acquire))
                return; /* another thread is writing one; an exemplar is a sample */
        m->exemplars[lo].set = true;
        memcpy(m->exemplars[lo].trace_id, exemplar->trace_id, TRACE_ID_SIZE);
        m->exemplars[lo].value = v;
        m->exemplars[lo].timestamp_usec = now_usec(CLOCK_REALTIME);
        atomic_flag_clear_explicit(&m->exemplar_lock, memory_order_release);
}

double metrics_value(const struct metric *m)
{
        if (!metric_is(m, METRIC_COUNTER) && !metric_is(m, METRIC_GAUGE))
                return NAN;
        return atomic_load_double(&m->value_bits);
}

uint64_t metrics_histogram_count(const struct metric *m)
{
        uint64_t n = 0;

        if (!metric_is(m, METRIC_HISTOGRAM))
                return 0;
        for (size_t i = 0; i <= m->family->n_buckets; i++)
                n += atomic_load_explicit(&m->bucket_counts[i], memory_order_relaxed);
        return n;
}

double metrics_histogram_sum(const struct metric *m)
{
        if (!metric_is(m, METRIC_HISTOGRAM))
                return NAN;
        return atomic_load_double(&m->value_bits);
}

/* ---- registry ---- */

int metrics_registry_new(struct metrics_registry **ret)
{
        struct metrics_registry *r;

        if (!ret)
                return -EINVAL;
        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        pthread_mutex_init(&r->lock, NULL);
        pthread_mutex_init(&r->collectors_lock, NULL);
        atomic_init(&r->first, NULL);
        *ret = r;
        return 0;
}

void metrics_registry_free(struct metrics_registry *r)
{
        struct metric_family *f, *next;

        if (!r)
                return;
        for (size_t i = 0; i < r->n_collectors; i++)
                if (r->collectors[i].free_userdata)
                        r->collectors[i].free_userdata(r->collectors[i].userdata);
        for (f = atomic_load_explicit(&r->first, memory_order_relaxed); f; f = next) {
                next = atomic_load_explicit(&f->next, memory_order_relaxed);
                family_free(f);
        }
        pthread_mutex_destroy(&r->collectors_lock);
        pthread_mutex_destroy(&r->lock);
        free(r);
}

static int add_collector(struct metrics_registry *r, metrics_collector_fn fn, void *userdata,
                         void (*free_userdata)(void *userdata))
{
        int ret = 0;

        if (!r || !fn)
                return -EINVAL;
        pthread_mutex_lock(&r->collectors_lock);
        if (r->n_collectors >= METRICS_MAX_COLLECTORS)
                ret = -E2BIG;
        else
                r->collectors[r->n_collectors++] = (struct collector){
                        .fn = fn,
                        .userdata = userdata,
                        .free_userdata = free_userdata,
                };
        pthread_mutex_unlock(&r->collectors_lock);
        return ret;
}

int metrics_registry_add_collector(struct metrics_registry *r, metrics_collector_fn fn,
                                   void *userdata)
{
        return add_collector(r, fn, userdata, NULL);
}

/* ---- process metrics ---- */

struct process_metrics {
        struct metric *cpu_seconds;
        struct metric *resident_bytes;
        struct metric *virtual_bytes;
        struct metric *open_fds;
        struct metric *max_fds;
        struct metric *start_time;
        long clock_ticks;
        long page_size;
};

/* Read a small /proc file into buf, NUL-terminated. */
static int read_proc_file(const char *path, char *buf, size_t size)
{
        _cleanup_close_ int fd = -1;
        size_t n = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        while (n < size - 1) {
                ssize_t k = read(fd, buf + n, size - 1 - n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (k == 0)
                        break;
                n += (size_t)k;
        }
        buf[n] = '\0';
        return 0;
}

/* Fields 14 (utime), 15 (stime), 22 (starttime), 23 (vsize) and 24 (rss)
 * of /proc/self/stat, counted from 1 (the pid). */
struct proc_stat {
        unsigned long long utime, stime, starttime, vsize, rss;
};

static int read_proc_self_stat(struct proc_stat *ret)
{
        char buf[2048];
        unsigned long long field[25] = {0};
        const char *p;
        int r;

        r = read_proc_file("/proc/self/stat", buf, sizeof(buf));
        if (r < 0)
                return r;
        /* The command name may contain anything, ')' included. */
        p = strrchr(buf, ')');
        if (!p)
                return -EIO;
        p++;
        /* p now points at " S ppid ...": field 3 is the state letter. */
        while (*p == ' ')
                p++;
        if (!*p)
                return -EIO;
        p++;
        for (int i = 4; i <= 24; i++) {
                char *end;

                errno = 0;
                field[i] = strtoull(p, &end, 10);
                if (end == p || errno != 0)
                        return -EIO;
                p = end;
        }
        *ret = (struct proc_stat){
                .utime = field[14],
                .stime = field[15],
                .starttime = field[22],
                .vsize = field[23],
                .rss = field[24],
        };
        return 0;
}

static int read_boot_time(unsigned long long *ret)
{
        char buf[16384];
        const char *p;
        int r;

        r = read_proc_file("/proc/stat", buf, sizeof(buf));
        if (r < 0)
                return r;
        p = strstr(buf, "\nbtime ");
        if (!p)
                return -EIO;
        *ret = strtoull(p + strlen("\nbtime "), NULL, 10);
        return 0;
}

static int count_open_fds(void)
{
        DIR *d;
        struct dirent *de;
        int n = 0;

        d = opendir("/proc/self/fd");
        if (!d)
                return negative_errno();
        while ((de = readdir(d)))
                if (de->d_name[0] != '.' && atoi(de->d_name) != dirfd(d))
                        n++;
        closedir(d);
        return n;
}

static void process_collect(struct metrics_registry *r, void *userdata)
{
        struct process_metrics *p = userdata;
        struct proc_stat st;
        struct rlimit rl;
        int n;

        if (read_proc_self_stat(&st) >= 0) {
                metrics_counter_set(p->cpu_seconds,
                                    (double)(st.utime + st.stime) / (double)p->clock_ticks);
                metrics_gauge_set(p->virtual_bytes, (double)st.vsize);
                metrics_gauge_set(p->resident_bytes, (double)st.rss * (double)p->page_size);
        }
        n = count_open_fds();
        if (n >= 0)
                metrics_gauge_set(p->open_fds, n);
        if (getrlimit(RLIMIT_NOFILE, &rl) >= 0)
                metrics_gauge_set(p->max_fds,
                                  rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur);
}

int metrics_register_process(struct metrics_registry *r)
{
        static const struct {
                enum metric_type type;
                const char *name;
                const char *help;
        } specs[] = {
                {METRIC_COUNTER, "process_cpu_seconds_total",
                 "Total user and system CPU time spent in seconds."},
                {METRIC_GAUGE, "process_resident_memory_bytes", "Resident memory size in bytes."},
                {METRIC_GAUGE, "process_virtual_memory_bytes", "Virtual memory size in bytes."},
                {METRIC_GAUGE, "process_open_fds", "Number of open file descriptors."},
                {METRIC_GAUGE, "process_max_fds", "Maximum number of open file descriptors."},
                {METRIC_GAUGE, "process_start_time_seconds",
                 "Start time of the process since unix epoch in seconds."},
        };
        _cleanup_free_ struct process_metrics *p = NULL;
        struct metric *children[ELEMENTSOF(specs)];
        unsigned long long btime;
        struct proc_stat st;
        int ret = 0;

        if (!r)
                return -EINVAL;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->clock_ticks = sysconf(_SC_CLK_TCK);
        p->page_size = sysconf(_SC_PAGESIZE);
        if (p->clock_ticks <= 0 || p->page_size <= 0)
                return -EIO;
        ret = read_proc_self_stat(&st);
        if (ret < 0)
                return ret;
        ret = read_boot_time(&btime);
        if (ret < 0)
                return ret;

        pthread_mutex_lock(&r->lock);
        for (size_t i = 0; i < ELEMENTSOF(specs); i++)
                if (name_is_taken(r, specs[i].type, specs[i].name))
                        ret = -EEXIST;
        pthread_mutex_unlock(&r->lock);
        if (ret < 0)
                return ret;

        for (size_t i = 0; i < ELEMENTSOF(specs); i++) {
                struct metric_family *f =
                        family_new(r, specs[i].type, specs[i].name, specs[i].help, NULL, NULL, 0);

                children[i] = metrics_child(f, NULL);
                if (!children[i])
                        return -ENOMEM;
        }
        p->cpu_seconds = children[0];
        p->resident_bytes = children[1];
        p->virtual_bytes = children[2];
        p->open_fds = children[3];
        p->max_fds = children[4];
        p->start_time = children[5];
        metrics_gauge_set(p->start_time,
                          (double)btime + (double)st.starttime / (double)p->clock_ticks);

        ret = add_collector(r, process_collect, p, free);
        if (ret < 0)
                return ret;
        TAKE_PTR(p);
        return 0;
}

int metrics_register_build_info(struct metrics_registry *r, const char *version)
{
        struct metric_family *f;
        const char *labels[] = {"version", NULL};

        if (!r || !version)
                return -EINVAL;
        f = metrics_gauge_new(r, "vigil_build_info",
                              "A metric with a constant '1' value labeled by the version vigil "
                              "was built from.",
                              labels);
        if (!f) {
                int ret;

                pthread_mutex_lock(&r->lock);
                ret = name_is_taken(r, METRIC_GAUGE, "vigil_build_info") ? -EEXIST : -ENOMEM;
                pthread_mutex_unlock(&r->lock);
                return ret;
        }
        metrics_gauge_set(metrics_child1(f, version), 1);
        return 0;
}

/* ---- content negotiation ---- */

enum metrics_format metrics_format_from_accept(const char *accept)
{
        static const char om[] = "application/openmetrics-text";
        const char *p = accept;

        if (!p)
                return METRICS_FORMAT_PROMETHEUS;
        /* A header longer than any server accepts tells us nothing more. */
        for (size_t guard = 0; *p && guard < 64; guard++) {
                const char *end = strchr(p, ','), *semi;
                size_t len;
                bool refused = false;

                if (!end)
                        end = p + strlen(p);
                while (p < end && (*p == ' ' || *p == '\t'))
                        p++;
                semi = memchr(p, ';', (size_t)(end - p));
                len = (size_t)((semi ? semi : end) - p);
                while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
                        len--;
                if (len == strlen(om) && strncasecmp(p, om, len) == 0) {
                        /* Parameters: only q=0 (a refusal) matters here. */
                        for (const char *q = semi; q && q < end;) {
                                const char *next = memchr(q + 1, ';', (size_t)(end - q - 1));

                                q++;
                                while (q < end && (*q == ' ' || *q == '\t'))
                                        q++;
                                if (end - q >= 2 && (q[0] == 'q' || q[0] == 'Q') && q[1] == '=') {
                                        char *qend;
                                        double weight = strtod(q + 2, &qend);

                                        if (qend > q + 2 && weight <= 0)
                                                refused = true;
                                }
                                q = next;
                        }
                        if (!refused)
                                return METRICS_FORMAT_OPENMETRICS;
                }
                p = *end ? end + 1 : end;
        }
        return METRICS_FORMAT_PROMETHEUS;
}

const char *metrics_content_type(enum metrics_format fmt)
{
        if (fmt == METRICS_FORMAT_OPENMETRICS)
                return "application/openmetrics-text; version=1.0.0; charset=utf-8";
        return "text/plain; version=0.0.4; charset=utf-8";
}

/* ---- rendering ---- */

/* Escape backslash and newline, and double quotes when quotes is set. */
static void buf_put_escaped(struct strbuf *b, const char *s, bool quotes)
{
        const char *start = s;

        for (; *s; s++) {
                const char *esc = NULL;

                if (*s == '\\')
                        esc = "\\\\";
                else if (*s == '\n')
                        esc = "\\n";
                else if (*s == '"' && quotes)
                        esc = "\\\"";
                if (!esc)
                        continue;
                strbuf_append(b, start, (size_t)(s - start));
                strbuf_puts(b, esc);
                start = s + 1;
        }
        strbuf_append(b, start, (size_t)(s - start));
}

/* Format v so that integers print as integers and anything else with the
 * fewest digits that read back as the same double. With force_decimal
 * (OpenMetrics le values), integers get ".0", as canonical numbers do. */
static void format_double(double v, bool force_decimal, char buf[static 32])
{
        if (isnan(v)) {
                strcpy(buf, "NaN");
                return;
        }
        if (isinf(v)) {
                strcpy(buf, v > 0 ? "+Inf" : "-Inf");
                return;
        }
        if (v == 0)
                v = 0; /* no "-0" */
        if (v == trunc(v) && fabs(v) < 1e15) {
                snprintf(buf, 32, force_decimal ? "%.1f" : "%.0f", v);
                return;
        }
        for (int precision = 15; precision <= 17; precision++) {
                snprintf(buf, 32, "%.*g", precision, v);
                if (strtod(buf, NULL) == v)
                        break;
        }
}

static void buf_put_double(struct strbuf *b, double v)
{
        char s[32];

        format_double(v, false, s);
        strbuf_puts(b, s);
}

/* {a="x",b="y",le="0.5"}, or nothing without labels. */
static void put_labels(struct strbuf *b, const struct metric *m, const char *le)
{
        const struct metric_family *f = m->family;

        if (f->n_labels == 0 && !le)
                return;
        strbuf_puts(b, "{");
        for (size_t i = 0; i < f->n_labels; i++) {
                if (i > 0)
                        strbuf_puts(b, ",");
                strbuf_puts(b, f->label_names[i]);
                strbuf_puts(b, "=\"");
                buf_put_escaped(b, m->label_values[i], true);
                strbuf_puts(b, "\"");
        }
        if (le) {
                if (f->n_labels > 0)
                        strbuf_puts(b, ",");
                strbuf_puts(b, "le=\"");
                strbuf_puts(b, le);
                strbuf_puts(b, "\"");
        }
        strbuf_puts(b, "}");
}

static void put_sample_name(struct strbuf *b, const struct metric_family *f, const char *suffix)
{
        strbuf_puts(b, f->name);
        strbuf_puts(b, suffix);
}

static void put_exemplar(struct strbuf *b, const struct exemplar *e)
{
        static const char hex[] = "0123456789abcdef";
        char id[2 * TRACE_ID_SIZE + 1], ts[48];

        for (size_t i = 0; i < TRACE_ID_SIZE; i++) {
                id[2 * i] = hex[e->trace_id[i] >> 4];
                id[2 * i + 1] = hex[e->trace_id[i] & 0xf];
        }
        id[2 * TRACE_ID_SIZE] = '\0';
        strbuf_puts(b, " # {trace_id=\"");
        strbuf_puts(b, id);
        strbuf_puts(b, "\"} ");
        buf_put_double(b, e->value);
        snprintf(ts, sizeof(ts), " %" PRIu64 ".%03" PRIu64,
                 (uint64_t)(e->timestamp_usec / USEC_PER_SEC),
                 (uint64_t)(e->timestamp_usec % USEC_PER_SEC / USEC_PER_MSEC));
        strbuf_puts(b, ts);
}

static void render_histogram_child(struct strbuf *b, struct metric *m, enum metrics_format fmt)
{
        const struct metric_family *f = m->family;
        bool om = fmt == METRICS_FORMAT_OPENMETRICS;
        struct exemplar ex[METRICS_MAX_BUCKETS + 1];
        uint64_t cumulative = 0;
        double sum;

        if (om) {
                while (atomic_flag_test_and_set_explicit(&m->exemplar_lock, memory_order_acquire))
                        sched_yield();
                memcpy(ex, m->exemplars, (f->n_buckets + 1) * sizeof(struct exemplar));
                atomic_flag_clear_explicit(&m->exemplar_lock, memory_order_release);
        }
        for (size_t i = 0; i <= f->n_buckets; i++) {
                char le[32];

                if (i < f->n_buckets)
                        format_double(f->buckets[i], om, le);
                else
                        strcpy(le, "+Inf");
                cumulative += atomic_load_explicit(&m->bucket_counts[i], memory_order_relaxed);
                put_sample_name(b, f, "_bucket");
                put_labels(b, m, le);
                strbuf_puts(b, " ");
                strbuf_put_u64(b, cumulative);
                if (om && ex[i].set)
                        put_exemplar(b, &ex[i]);
                strbuf_puts(b, "\n");
        }
        sum = atomic_load_double(&m->value_bits);
        put_sample_name(b, f, "_sum");
        put_labels(b, m, NULL);
        strbuf_puts(b, " ");
        buf_put_double(b, sum);
        strbuf_puts(b, "\n");
        put_sample_name(b, f, "_count");
        put_labels(b, m, NULL);
        strbuf_puts(b, " ");
        strbuf_put_u64(b, cumulative);
        strbuf_puts(b, "\n");
}

static void render_family(struct strbuf *b, struct metric_family *f, enum metrics_format fmt)
{
        static const char *const type_names[] = {
                [METRIC_COUNTER] = "counter",
                [METRIC_GAUGE] = "gauge",
                [METRIC_HISTOGRAM] = "histogram",
        };
        bool om = fmt == METRICS_FORMAT_OPENMETRICS;
        /* Prometheus text names a counter family by its sample name;
         * OpenMetrics by the name without _total. */
        const char *suffix = f->type == METRIC_COUNTER && !om ? "_total" : "";

        if (f->help) {
                strbuf_puts(b, "# HELP ");
                put_sample_name(b, f, suffix);
                strbuf_puts(b, " ");
                buf_put_escaped(b, f->help, om);
                strbuf_puts(b, "\n");
        }
        strbuf_puts(b, "# TYPE ");
        put_sample_name(b, f, suffix);
        strbuf_puts(b, " ");
        strbuf_puts(b, type_names[f->type]);
        strbuf_puts(b, "\n");

        for (struct metric *m = atomic_load_explicit(&f->first, memory_order_acquire); m;
             m = atomic_load_explicit(&m->next, memory_order_acquire)) {
                if (f->type == METRIC_HISTOGRAM) {
                        render_histogram_child(b, m, fmt);
                        continue;
                }
                put_sample_name(b, f, f->type == METRIC_COUNTER ? "_total" : "");
                put_labels(b, m, NULL);
                strbuf_puts(b, " ");
                buf_put_double(b, atomic_load_double(&m->value_bits));
                strbuf_puts(b, "\n");
        }
}

int metrics_render(struct metrics_registry *r, enum metrics_format fmt, char **ret, size_t *ret_len)
{
        struct strbuf b = {};
        char *page;
        size_t len;

        if (!r || !ret)
                return -EINVAL;

        pthread_mutex_lock(&r->collectors_lock);
        for (size_t i = 0; i < r->n_collectors; i++)
                r->collectors[i].fn(r, r->collectors[i].userdata);
        pthread_mutex_unlock(&r->collectors_lock);

        for (struct metric_family *f = atomic_load_explicit(&r->first, memory_order_acquire); f;
             f = atomic_load_explicit(&f->next, memory_order_acquire))
                render_family(&b, f, fmt);
        if (fmt == METRICS_FORMAT_OPENMETRICS)
                strbuf_puts(&b, "# EOF\n");
        len = b.len;
        page = strbuf_steal(&b); /* an empty registry yields "" */
        if (!page)
                return -ENOMEM;
        *ret = page;
        if (ret_len)
                *ret_len = len;
        return 0;
}
