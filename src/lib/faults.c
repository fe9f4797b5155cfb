/* Runtime fault injection. The contracts are in faults.h. */
#include "faults.h"

#include <errno.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "http-server.h"
#include "macro.h"
#include "metrics.h"

#define LEAK_CHUNK_MAX (4U * 1024U * 1024U) /* bytes per allocation */

static bool streq(const char *a, const char *b)
{
        return strcmp(a, b) == 0;
}

struct leak_chunk {
        struct leak_chunk *next;
        size_t size;
};

struct faults {
        pthread_mutex_t lock;
        uint64_t rng; /* splitmix64 state, under lock */
        double error_ratio;
        unsigned latency_ms;
        char *routes; /* NULL: all */
        char fail_dependency[FAULTS_MAX_DEPENDENCY_LENGTH + 1];
        const char *const *own_error_routes;

        /* The main loop's own. */
        int64_t hang_seconds;
        unsigned hang_armed;
        int64_t leak_kib_per_second;
        uint64_t leak_last_usec;
        uint64_t leak_carry_bytes; /* KiB·µs not yet taken, in bytes × 10^6 */
        size_t leaked, leak_max;
        struct leak_chunk *leak;

        struct metric *active_error_ratio;
        struct metric *active_latency_ms;
        struct metric *active_fail_dependency;
        struct metric *active_hang_seconds;
        struct metric *active_leak;
        struct metric *leaked_bytes;
};

_printf_(3, 4) static int refuse(char *msg, size_t size, const char *format, ...)
{
        va_list ap;

        va_start(ap, format);
        vsnprintf(msg, size, format, ap);
        va_end(ap);
        return -EINVAL;
}

/* The next pattern of a comma list: its start and length, skipping blanks
 * around it; returns false at the end. */
static bool next_pattern(const char **p, const char **ret_start, size_t *ret_len)
{
        const char *s = *p, *end;

        while (*s == ' ' || *s == '\t' || *s == ',')
                s++;
        if (!*s)
                return false;
        end = s;
        while (*end && *end != ',')
                end++;
        *p = end;
        while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
                end--;
        *ret_start = s;
        *ret_len = (size_t)(end - s);
        return true;
}

static bool pattern_matches(const char *pattern, size_t len, const char *route)
{
        char buf[FAULTS_MAX_ROUTES_LENGTH + 1];

        if (len > FAULTS_MAX_ROUTES_LENGTH)
                return false;
        memcpy(buf, pattern, len);
        buf[len] = '\0';
        return fnmatch(buf, route, 0) == 0;
}

int faults_check_routes(const char *value, const void *data, char *msg, size_t size)
{
        const struct faults_scope *scope = data;
        const char *p = value, *pattern;
        size_t len, n = 0;

        while (next_pattern(&p, &pattern, &len)) {
                bool matched = false;

                if (++n > FAULTS_MAX_ROUTE_PATTERNS)
                        return refuse(msg, size, "more than %d patterns",
                                      FAULTS_MAX_ROUTE_PATTERNS);
                if (pattern[0] != '/')
                        return refuse(msg, size, "\"%.*s\" does not start with '/'", (int)len,
                                      pattern);
                for (size_t i = 0; i < len; i++)
                        if ((unsigned char)pattern[i] <= ' ' || pattern[i] == 0x7f)
                                return refuse(msg, size,
                                              "\"%.*s\" contains a blank or control "
                                              "character",
                                              (int)len, pattern);
                for (size_t i = 0; scope && scope->routes && i < *scope->n_routes && !matched; i++)
                        matched = pattern_matches(pattern, len, scope->routes[i].path);
                if (!matched)
                        return refuse(msg, size, "\"%.*s\" matches none of the API routes",
                                      (int)len, pattern);
        }
        return 0;
}

int faults_check_dependency(const char *value, const void *data, char *msg, size_t size)
{
        const struct faults_scope *scope = data;
        char names[256] = "";
        size_t len = 0;

        for (size_t i = 0; scope && scope->dependencies && scope->dependencies[i]; i++) {
                if (streq(value, scope->dependencies[i]))
                        return 0;
                len += (size_t)snprintf(names + len, len < sizeof(names) ? sizeof(names) - len : 0,
                                        "%s%s", i > 0 ? ", " : "", scope->dependencies[i]);
                if (len >= sizeof(names))
                        len = sizeof(names) - 1;
        }
        if (!*names)
                return refuse(msg, size, "this daemon has no dependency to fail");
        return refuse(msg, size, "unknown dependency \"%s\" (expected one of: %s)", value, names);
}

bool faults_routes_select(const char *routes, const char *route)
{
        const char *p = routes, *pattern;
        size_t len;
        bool any = false;

        if (!routes)
                return true;
        while (next_pattern(&p, &pattern, &len)) {
                any = true;
                if (pattern_matches(pattern, len, route))
                        return true;
        }
        return !any;
}

static uint64_t splitmix64(uint64_t *state)
{
        uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));

        z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
        return z ^ (z >> 31);
}

int faults_new(const struct faults_options *opts, struct faults **ret)
{
        static const char *const labels[] = {"fault", NULL};
        struct faults *f;

        f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        pthread_mutex_init(&f->lock, NULL);
        f->rng = opts->seed;
        if (f->rng == 0 && getrandom(&f->rng, sizeof(f->rng), GRND_NONBLOCK) != sizeof(f->rng))
                f->rng = now_usec(CLOCK_REALTIME) ^ (uint64_t)getpid();
        f->own_error_routes = opts->own_error_routes;
        f->leak_max = opts->leak_max_bytes ? opts->leak_max_bytes : FAULTS_LEAK_MAX_BYTES;

        if (opts->metrics) {
                struct metric_family *active, *leaked;

                active = metrics_gauge_new(opts->metrics, "vigil_fault_active",
                                           "Configured value of each [faults] key, 0 when off "
                                           "(fail_dependency: 1 when set)",
                                           labels);
                leaked = metrics_gauge_new(opts->metrics, "vigil_fault_leaked_bytes",
                                           "Memory held by [faults] leak_kib_per_second", NULL);
                if (!active || !leaked) {
                        faults_free(f);
                        return -ENOMEM;
                }
                f->active_error_ratio = metrics_child1(active, "error_ratio");
                f->active_latency_ms = metrics_child1(active, "latency_ms");
                f->active_fail_dependency = metrics_child1(active, "fail_dependency");
                f->active_hang_seconds = metrics_child1(active, "hang_seconds");
                f->active_leak = metrics_child1(active, "leak_kib_per_second");
                f->leaked_bytes = metrics_child(leaked, NULL);
        }
        *ret = f;
        return 0;
}

static void leak_free(struct faults *f)
{
        while (f->leak) {
                struct leak_chunk *c = f->leak;

                f->leak = c->next;
                free(c);
        }
        f->leaked = 0;
        f->leak_carry_bytes = 0;
        metrics_gauge_set(f->leaked_bytes, 0);
}

void faults_free(struct faults *f)
{
        if (!f)
                return;
        leak_free(f);
        free(f->routes);
        pthread_mutex_destroy(&f->lock);
        free(f);
}

int faults_set(struct faults *f, const struct faults_config *c, bool at_start)
{
        char *routes = NULL, *old;

        if (c->routes && *c->routes) {
                routes = strdup(c->routes);
                if (!routes)
                        return -ENOMEM;
        }

        pthread_mutex_lock(&f->lock);
        f->error_ratio = c->error_ratio;
        f->latency_ms = (unsigned)c->latency_ms;
        old = f->routes;
        f->routes = routes;
        snprintf(f->fail_dependency, sizeof(f->fail_dependency), "%s",
                 c->fail_dependency ? c->fail_dependency : "");
        pthread_mutex_unlock(&f->lock);
        free(old);

        if (!at_start && c->hang_seconds > 0 && c->hang_seconds != f->hang_seconds)
                f->hang_armed = (unsigned)c->hang_seconds;
        if (c->hang_seconds == 0)
                f->hang_armed = 0;
        f->hang_seconds = c->hang_seconds;

        if (c->leak_kib_per_second > 0 && f->leak_kib_per_second == 0)
                f->leak_last_usec = now_usec(CLOCK_MONOTONIC);
        f->leak_kib_per_second = c->leak_kib_per_second;
        if (f->leak_kib_per_second == 0)
                leak_free(f);

        metrics_gauge_set(f->active_error_ratio, c->error_ratio);
        metrics_gauge_set(f->active_latency_ms, (double)c->latency_ms);
        metrics_gauge_set(f->active_fail_dependency,
                          c->fail_dependency && *c->fail_dependency ? 1 : 0);
        metrics_gauge_set(f->active_hang_seconds, (double)c->hang_seconds);
        metrics_gauge_set(f->active_leak, (double)c->leak_kib_per_second);
        return 0;
}

static bool is_own_error_route(const struct faults *f, const char *route)
{
        for (size_t i = 0; f->own_error_routes && f->own_error_routes[i]; i++)
                if (streq(f->own_error_routes[i], route))
                        return true;
        return false;
}

void faults_decide(struct faults *f, const char *route, unsigned *ret_delay_ms, bool *ret_fail)
{
        bool fail = false;
        unsigned delay = 0;

        pthread_mutex_lock(&f->lock);
        if ((f->error_ratio > 0 || f->latency_ms > 0) && faults_routes_select(f->routes, route)) {
                delay = f->latency_ms;
                if (f->error_ratio > 0 && !is_own_error_route(f, route)) {
                        /* 53 random bits: a uniform double in [0, 1). */
                        double draw = (double)(splitmix64(&f->rng) >> 11) * 0x1.0p-53;

                        fail = draw < f->error_ratio;
                }
        }
        pthread_mutex_unlock(&f->lock);

        *ret_delay_ms = delay;
        *ret_fail = fail;
}

bool faults_dependency_failed(struct faults *f, const char *dependency)
{
        bool failed;

        if (!f)
                return false;
        pthread_mutex_lock(&f->lock);
        failed = *f->fail_dependency && streq(f->fail_dependency, dependency);
        pthread_mutex_unlock(&f->lock);
        return failed;
}

unsigned faults_take_hang(struct faults *f)
{
        unsigned s = f->hang_armed;

        f->hang_armed = 0;
        return s;
}

size_t faults_leak_tick(struct faults *f)
{
        uint64_t now = now_usec(CLOCK_MONOTONIC), elapsed;
        size_t want;

        if (f->leak_kib_per_second == 0)
                return f->leaked;
        elapsed = now - f->leak_last_usec;
        f->leak_last_usec = now;
        /* bytes = KiB/s × 1024 × µs / 10^6, carried so that short ticks
         * add up. */
        f->leak_carry_bytes += (uint64_t)f->leak_kib_per_second * 1024U * elapsed;
        want = (size_t)(f->leak_carry_bytes / USEC_PER_SEC);
        f->leak_carry_bytes %= USEC_PER_SEC;

        while (want > 0 && f->leaked < f->leak_max) {
                size_t n = want < LEAK_CHUNK_MAX ? want : LEAK_CHUNK_MAX;
                struct leak_chunk *c;

                if (n > f->leak_max - f->leaked)
                        n = f->leak_max - f->leaked;
                if (n < sizeof(*c))
                        break;
                c = malloc(n);
                if (!c)
                        break;
                /* Touch every page, so the leak is resident, not only
                 * reserved. */
                memset(c, 0xa5, n);
                c->size = n;
                c->next = f->leak;
                f->leak = c;
                f->leaked += n;
                want -= n;
        }
        metrics_gauge_set(f->leaked_bytes, (double)f->leaked);
        return f->leaked;
}
