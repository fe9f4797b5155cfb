/* libFuzzer target: label values and exemplars as vigil renders them for
 * Prometheus and OpenMetrics. Label values come from requests (a route a
 * client reached, a unit name an alert names); an exemplar names the
 * request's trace and its observed value.
 *
 * Input: 16 bytes of trace id, a flags byte, 8 bytes of a double (the
 * observed value), then up to three label values separated by NUL bytes.
 *
 * Promises checked, in both formats: every line is a comment or a sample
 * that an independent reader (written here from the text formats' rules:
 * a label value is quoted, with \\, \" and \n its only escapes) takes
 * apart completely; each label value reads back as the value given,
 * truncated to METRICS_MAX_LABEL_VALUE bytes between characters with each
 * malformed UTF-8 byte as '?' (a reference computes that here too); every
 * number reads back as the double that was stored; in OpenMetrics the
 * exemplar is {trace_id="<32 lowercase hex>"} with the observed value, on
 * the bucket the value falls in, and the text ends with "# EOF". */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "metrics.h"
#include "trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HEADER_SIZE       (TRACE_ID_SIZE + 1 + 8)
#define MAX_SAMPLE_LABELS 4

/* RFC 3629: the length of the well-formed sequence at s (avail bytes
 * readable), 0 when malformed. Table 3-7 of the Unicode standard. */
static size_t sequence_length(const unsigned char *s, size_t avail)
{
        unsigned char lo = 0x80, hi = 0xbf;
        size_t n;

        if (s[0] < 0x80)
                return 1;
        if (s[0] >= 0xc2 && s[0] <= 0xdf)
                n = 2;
        else if (s[0] >= 0xe0 && s[0] <= 0xef)
                n = 3;
        else if (s[0] >= 0xf0 && s[0] <= 0xf4)
                n = 4;
        else
                return 0;
        if (s[0] == 0xe0)
                lo = 0xa0;
        else if (s[0] == 0xed)
                hi = 0x9f;
        else if (s[0] == 0xf0)
                lo = 0x90;
        else if (s[0] == 0xf4)
                hi = 0x8f;
        if (avail < n || s[1] < lo || s[1] > hi)
                return 0;
        for (size_t i = 2; i < n; i++)
                if (s[i] < 0x80 || s[i] > 0xbf)
                        return 0;
        return n;
}

/* What metrics_child() promises to keep of a label value. */
static void expected_label(const char *v, char out[static METRICS_MAX_LABEL_VALUE + 1])
{
        const unsigned char *s = (const unsigned char *)v;
        size_t len = strlen(v), i = 0, o = 0;

        while (i < len) {
                size_t n = sequence_length(s + i, len - i);

                if (n == 0) {
                        if (o + 1 > METRICS_MAX_LABEL_VALUE)
                                break;
                        out[o++] = '?';
                        i++;
                        continue;
                }
                if (o + n > METRICS_MAX_LABEL_VALUE)
                        break;
                memcpy(out + o, s + i, n);
                o += n;
                i += n;
        }
        out[o] = '\0';
}

struct sample {
        char name[128];
        char label_names[MAX_SAMPLE_LABELS][32];
        char label_values[MAX_SAMPLE_LABELS][4 * METRICS_MAX_LABEL_VALUE + 1];
        size_t n_labels;
        double value;
        bool has_exemplar;
        char exemplar_trace_id[2 * TRACE_ID_SIZE + 1];
        double exemplar_value;
};

static bool parse_number(const char **p, double *ret)
{
        char *end;
        double v;

        if (strncmp(*p, "+Inf", 4) == 0) {
                *ret = INFINITY;
                *p += 4;
                return true;
        }
        if (strncmp(*p, "-Inf", 4) == 0) {
                *ret = -INFINITY;
                *p += 4;
                return true;
        }
        if (strncmp(*p, "NaN", 3) == 0) {
                *ret = NAN;
                *p += 3;
                return true;
        }
        if (!(**p == '-' || (**p >= '0' && **p <= '9')))
                return false;
        v = strtod(*p, &end);
        if (end == *p)
                return false;
        *p = end;
        *ret = v;
        return true;
}

/* A quoted label value at *p (after the opening quote) into out. */
static bool parse_quoted(const char **p, char *out, size_t out_size)
{
        size_t o = 0;
        const char *s = *p;

        for (;;) {
                char c = *s++;

                if (c == '\0' || c == '\n')
                        return false;
                if (c == '"')
                        break;
                if (c == '\\') {
                        c = *s++;
                        if (c == 'n')
                                c = '\n';
                        else if (c != '\\' && c != '"')
                                return false; /* no other escape exists */
                }
                if (o + 1 >= out_size)
                        return false;
                out[o++] = c;
        }
        out[o] = '\0';
        *p = s;
        return true;
}

/* {name="value",...} at *p. */
static bool parse_labels(const char **p, char names[][32],
                         char values[][4 * METRICS_MAX_LABEL_VALUE + 1], size_t max, size_t *ret_n)
{
        const char *s = *p;
        size_t n = 0;

        if (*s != '{')
                return false;
        s++;
        while (*s != '}') {
                size_t len = 0;

                if (n == max)
                        return false;
                while ((s[len] >= 'a' && s[len] <= 'z') || s[len] == '_')
                        len++;
                if (len == 0 || len >= 32 || s[len] != '=' || s[len + 1] != '"')
                        return false;
                memcpy(names[n], s, len);
                names[n][len] = '\0';
                s += len + 2;
                if (!parse_quoted(&s, values[n], sizeof(values[n])))
                        return false;
                n++;
                if (*s == ',')
                        s++;
                else if (*s != '}')
                        return false;
        }
        *p = s + 1;
        *ret_n = n;
        return true;
}

/* One sample line (without its newline). */
static bool parse_sample(const char *line, bool om, struct sample *ret)
{
        const char *p = line;
        size_t len = 0;

        memset(ret, 0, sizeof(*ret));
        while ((p[len] >= 'a' && p[len] <= 'z') || p[len] == '_')
                len++;
        if (len == 0 || len >= sizeof(ret->name))
                return false;
        memcpy(ret->name, p, len);
        p += len;
        if (*p == '{' && !parse_labels(&p, ret->label_names, ret->label_values, MAX_SAMPLE_LABELS,
                                       &ret->n_labels))
                return false;
        if (*p++ != ' ' || !parse_number(&p, &ret->value))
                return false;
        if (*p == '\0')
                return true;
        if (!om || strncmp(p, " # ", 3) != 0)
                return false;
        p += 3;
        {
                char names[1][32];
                char values[1][4 * METRICS_MAX_LABEL_VALUE + 1];
                size_t n;

                if (!parse_labels(&p, names, values, 1, &n) || n != 1 ||
                    strcmp(names[0], "trace_id") != 0 || strlen(values[0]) != 2 * TRACE_ID_SIZE ||
                    strspn(values[0], "0123456789abcdef") != 2 * TRACE_ID_SIZE)
                        return false;
                memcpy(ret->exemplar_trace_id, values[0], sizeof(ret->exemplar_trace_id));
        }
        ret->has_exemplar = true;
        if (*p++ != ' ' || !parse_number(&p, &ret->exemplar_value))
                return false;
        /* The exemplar's timestamp: seconds with three decimals. */
        if (*p++ != ' ' || strspn(p, "0123456789.") != strlen(p) || strlen(p) < 5)
                return false;
        return true;
}

static bool same_double(double a, double b)
{
        return (isnan(a) && isnan(b)) || a == b;
}

static const double buckets[] = {0.005, 0.1, 1, 2.5};

static void check_render(struct metrics_registry *r, enum metrics_format fmt,
                         const char expected[3][METRICS_MAX_LABEL_VALUE + 1], const char *trace_hex,
                         bool exemplar, double observed)
{
        bool om = fmt == METRICS_FORMAT_OPENMETRICS;
        size_t len = 0, counters = 0, buckets_seen = 0, exemplars = 0;
        char *text = NULL, *line, *next;
        static struct sample s;

        if (metrics_render(r, fmt, &text, &len) < 0)
                abort();
        if (strlen(text) != len || len == 0 || text[len - 1] != '\n')
                abort();
        if (om && (len < 6 || strcmp(text + len - 6, "# EOF\n") != 0))
                abort();

        for (line = text; *line; line = next) {
                next = strchr(line, '\n');
                *next++ = '\0';
                if (line[0] == '#') {
                        if (strncmp(line, "# HELP ", 7) != 0 && strncmp(line, "# TYPE ", 7) != 0 &&
                            !(om && strcmp(line, "# EOF") == 0))
                                abort();
                        continue;
                }
                if (!parse_sample(line, om, &s))
                        abort(); /* a line the reader cannot take apart */

                if (strcmp(s.name, "vigil_fuzz_requests_total") == 0) {
                        if (s.n_labels != 3 || strcmp(s.label_names[0], "route") != 0 ||
                            strcmp(s.label_names[1], "method") != 0 ||
                            strcmp(s.label_names[2], "code") != 0 || s.value != 1)
                                abort();
                        for (size_t i = 0; i < 3; i++)
                                if (strcmp(s.label_values[i], expected[i]) != 0)
                                        abort(); /* reads back otherwise */
                        counters++;
                } else if (strcmp(s.name, "vigil_fuzz_duration_seconds_bucket") == 0) {
                        double le;
                        const char *p = s.label_values[1];

                        if (s.n_labels != 2 || strcmp(s.label_values[0], expected[0]) != 0 ||
                            strcmp(s.label_names[1], "le") != 0 || !parse_number(&p, &le) || *p)
                                abort();
                        /* Cumulative: 1 from the bucket the value falls in. */
                        if (s.value != (isnan(observed) ? 0 : observed <= le ? 1 : 0))
                                abort();
                        if (s.has_exemplar) {
                                bool first =
                                        observed <= le &&
                                        (buckets_seen == 0 || observed > buckets[buckets_seen - 1]);

                                if (!om || !exemplar || !first ||
                                    strcmp(s.exemplar_trace_id, trace_hex) != 0 ||
                                    !same_double(s.exemplar_value, observed))
                                        abort();
                                exemplars++;
                        }
                        buckets_seen++;
                } else if (strcmp(s.name, "vigil_fuzz_duration_seconds_sum") == 0) {
                        if (!same_double(s.value, isnan(observed) ? 0 : observed) &&
                            !(observed == 0 && s.value == 0))
                                abort();
                } else if (strcmp(s.name, "vigil_fuzz_duration_seconds_count") == 0) {
                        if (s.value != (isnan(observed) ? 0 : 1))
                                abort();
                } else {
                        abort();
                }
        }
        if (counters != 1 || buckets_seen != ELEMENTSOF(buckets) + 1)
                abort();
        if (exemplars != (om && exemplar && !isnan(observed) ? 1 : 0))
                abort();
        free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const char hex[] = "0123456789abcdef";
        struct metrics_registry *r = NULL;
        struct metric_family *requests, *duration;
        struct trace_context ctx = {0};
        char expected[3][METRICS_MAX_LABEL_VALUE + 1];
        char trace_hex[2 * TRACE_ID_SIZE + 1];
        const char *values[3] = {"", "", ""};
        char *labels;
        bool exemplar = false;
        uint64_t bits = 0;
        double observed;

        if (size < HEADER_SIZE)
                return 0;
        memcpy(ctx.trace_id, data, TRACE_ID_SIZE);
        ctx.flags = data[TRACE_ID_SIZE];
        for (size_t i = 0; i < 8; i++)
                bits = bits << 8 | data[TRACE_ID_SIZE + 1 + i];
        memcpy(&observed, &bits, sizeof(observed));
        for (size_t i = 0; i < TRACE_ID_SIZE; i++) {
                trace_hex[2 * i] = hex[ctx.trace_id[i] >> 4];
                trace_hex[2 * i + 1] = hex[ctx.trace_id[i] & 0xf];
                exemplar = exemplar || ctx.trace_id[i] != 0;
        }
        trace_hex[2 * TRACE_ID_SIZE] = '\0';
        exemplar = exemplar && (ctx.flags & 1);

        /* The label values: NUL-separated C strings. */
        labels = malloc(size - HEADER_SIZE + 1);
        if (!labels)
                abort();
        memcpy(labels, data + HEADER_SIZE, size - HEADER_SIZE);
        labels[size - HEADER_SIZE] = '\0';
        for (size_t i = 0, at = 0; i < 3 && at <= size - HEADER_SIZE; i++) {
                values[i] = labels + at;
                at += strlen(labels + at) + 1;
        }
        for (size_t i = 0; i < 3; i++)
                expected_label(values[i], expected[i]);

        if (metrics_registry_new(&r) < 0)
                abort();
        requests = metrics_counter_new(r, "vigil_fuzz_requests_total", "Requests.",
                                       (const char *const[]){"route", "method", "code", NULL});
        duration = metrics_histogram_new(r, "vigil_fuzz_duration_seconds", "Durations.",
                                         (const char *const[]){"route", NULL}, buckets,
                                         ELEMENTSOF(buckets));
        if (!requests || !duration)
                abort();
        metrics_counter_inc(metrics_child(requests, values));
        metrics_histogram_observe(metrics_child1(duration, values[0]), observed, &ctx);

        check_render(r, METRICS_FORMAT_PROMETHEUS, expected, trace_hex, exemplar, observed);
        check_render(r, METRICS_FORMAT_OPENMETRICS, expected, trace_hex, exemplar, observed);

        metrics_registry_free(r);
        free(labels);
        return 0;
}
