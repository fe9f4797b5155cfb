/* The exposition formats: content negotiation, and rendering a registry
 * as Prometheus text 0.0.4 or OpenMetrics 1.0.0 (with exemplars). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "macro.h"
#include "metrics-internal.h"
#include "strbuf.h"
#include "utf8.h"

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
