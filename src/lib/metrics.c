/* Prometheus metrics: a registry of counter, gauge and histogram families,
 * their children and updates. Rendering them as Prometheus text 0.0.4 or
 * OpenMetrics 1.0.0 is in metrics-render.c, the process metrics in
 * metrics-process.c.
 *
 * Concurrency: updates touch only atomics (doubles are kept as their bit
 * patterns and changed with compare-and-swap loops). Families and children
 * are appended to singly linked lists whose next pointers are published
 * with release stores, so rendering walks them without taking a lock;
 * nothing is freed before the registry. A family's lock guards only its
 * child hash table; the registry's lock guards family creation. A child's
 * exemplars sit behind a tiny try-lock that observers never wait on. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "metrics-internal.h"
#include "metrics.h"
#include "utf8.h"

const double metrics_latency_buckets[] = {
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2.5, 5, 10,
};
const size_t metrics_latency_buckets_count = ELEMENTSOF(metrics_latency_buckets);

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
bool metrics_name_is_taken(struct metrics_registry *r, enum metric_type type, const char *name)
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

struct metric_family *metrics_family_create(struct metrics_registry *r, enum metric_type type,
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
        if (r->n_families >= METRICS_MAX_FAMILIES || metrics_name_is_taken(r, type, f->name)) {
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
        return metrics_family_create(r, METRIC_COUNTER, name, help, label_names, NULL, 0);
}

struct metric_family *metrics_gauge_new(struct metrics_registry *r, const char *name,
                                        const char *help, const char *const *label_names)
{
        return metrics_family_create(r, METRIC_GAUGE, name, help, label_names, NULL, 0);
}

struct metric_family *metrics_histogram_new(struct metrics_registry *r, const char *name,
                                            const char *help, const char *const *label_names,
                                            const double *buckets, size_t n_buckets)
{
        return metrics_family_create(r, METRIC_HISTOGRAM, name, help, label_names, buckets,
                                     n_buckets);
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

int metrics_add_collector(struct metrics_registry *r, metrics_collector_fn fn, void *userdata,
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
        return metrics_add_collector(r, fn, userdata, NULL);
}
