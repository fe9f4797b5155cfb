/* Unit tests for the metrics module: exact exposition output in both
 * formats, limits, concurrency, process metrics, and promtool's verdict. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"
#include "metrics.h"
#include "trace.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(struct metrics_registry *, metrics_registry_free);

static struct metrics_registry *registry(void)
{
        struct metrics_registry *r = NULL;

        ck_assert_int_eq(metrics_registry_new(&r), 0);
        ck_assert_ptr_nonnull(r);
        return r;
}

/* Render r in fmt; the caller frees the result. */
static char *render(struct metrics_registry *r, enum metrics_format fmt)
{
        char *text = NULL;
        size_t len = 0;

        ck_assert_int_eq(metrics_render(r, fmt, &text, &len), 0);
        ck_assert_ptr_nonnull(text);
        ck_assert_uint_eq(len, strlen(text));
        return text;
}

static void assert_renders(struct metrics_registry *r, enum metrics_format fmt,
                           const char *expected)
{
        _cleanup_free_ char *text = render(r, fmt);

        ck_assert_str_eq(text, expected);
}

static void assert_contains(const char *haystack, const char *needle)
{
        ck_assert_msg(strstr(haystack, needle), "expected \"%s\" in:\n%s", needle, haystack);
}

static const char *const route_method[] = {"route", "method", NULL};
static const char *const one_label[] = {"dependency", NULL};

START_TEST(test_counter_without_labels_renders_zero_then_total)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct metric_family *f = metrics_counter_new(r, "vigil_jobs_total", "Jobs done.", NULL);
        struct metric *m;

        ck_assert_ptr_nonnull(f);
        assert_renders(r, METRICS_FORMAT_PROMETHEUS,
                       "# HELP vigil_jobs_total Jobs done.\n"
                       "# TYPE vigil_jobs_total counter\n"
                       "vigil_jobs_total 0\n");
        m = metrics_child(f, NULL);
        metrics_counter_inc(m);
        metrics_counter_add(m, 2);
        metrics_counter_add(m, -5);  /* ignored: counters only go up */
        metrics_counter_add(m, NAN); /* ignored */
        ck_assert(metrics_value(m) == 3);
        assert_renders(r, METRICS_FORMAT_PROMETHEUS,
                       "# HELP vigil_jobs_total Jobs done.\n"
                       "# TYPE vigil_jobs_total counter\n"
                       "vigil_jobs_total 3\n");
        assert_renders(r, METRICS_FORMAT_OPENMETRICS,
                       "# HELP vigil_jobs Jobs done.\n"
                       "# TYPE vigil_jobs counter\n"
                       "vigil_jobs_total 3\n"
                       "# EOF\n");
}
END_TEST

START_TEST(test_counter_name_without_total_is_exposed_with_total)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();

        ck_assert_ptr_nonnull(metrics_counter_new(r, "vigil_events", "Events.", NULL));
        /* Same counter under its other spelling. */
        ck_assert_ptr_null(metrics_counter_new(r, "vigil_events_total", "Events.", NULL));
        assert_renders(r, METRICS_FORMAT_PROMETHEUS,
                       "# HELP vigil_events_total Events.\n"
                       "# TYPE vigil_events_total counter\n"
                       "vigil_events_total 0\n");
}
END_TEST

START_TEST(test_counter_with_labels_renders_children_in_creation_order)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct metric_family *f =
                metrics_counter_new(r, "vigil_http_requests_total", "HTTP requests.",
                                    (const char *const[]){"route", "method", "code", NULL});

        ck_assert_ptr_nonnull(f);
        /* A labelled family has no series until one is looked up. */
        assert_renders(r, METRICS_FORMAT_PROMETHEUS,
                       "# HELP vigil_http_requests_total HTTP requests.\n"
                       "# TYPE vigil_http_requests_total counter\n");
        metrics_counter_inc(metrics_child3(f, "/z", "GET", "200"));
        metrics_counter_add(metrics_child3(f, "/a", "POST", "201"), 2);
        metrics_counter_inc(metrics_child3(f, "/z", "GET", "200"));
        ck_assert_ptr_eq(metrics_child3(f, "/z", "GET", "200"),
                         metrics_child(f, (const char *const[]){"/z", "GET", "200"}));
        assert_renders(r, METRICS_FORMAT_PROMETHEUS,
                       "# HELP vigil_http_requests_total HTTP requests.\n"
                       "# TYPE vigil_http_requests_total counter\n"
                       "vigil_http_requests_total{route=\"/z\",method=\"GET\",code=\"200\"} 2\n"
                       "vigil_http_requests_total{route=\"/a\",method=\"POST\",code=\"201\"} 2\n");
        assert_renders(r, METRICS_FORMAT_OPENMETRICS,
                       "# HELP vigil_http_requests HTTP requests.\n"
                       "# TYPE vigil_http_requests counter\n"
                       "vigil_http_requests_total{route=\"/z\",method=\"GET\",code=\"200\"} 2\n"
                       "vigil_http_requests_total{route=\"/a\",method=\"POST\",code=\"201\"} 2\n"
                       "# EOF\n");
}
END_TEST

START_TEST(test_gauge_renders_in_both_formats)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct metric_family *plain =
                metrics_gauge_new(r, "vigil_http_requests_in_flight", "In flight.", NULL);
        struct metric_family *up = metrics_gauge_new(r, "vigil_dependency_up", "Up.", one_label);
        struct metric *m = metrics_child(plain, NULL);

        ck_assert_ptr_nonnull(plain);
        ck_assert_ptr_nonnull(up);
        metrics_gauge_add(m, 3);
        metrics_gauge_add(m, -1);
        ck_assert(metrics_value(m) == 2);
        metrics_gauge_set(metrics_child1(up, "postgres"), 1);
        metrics_gauge_set(metrics_child1(up, "redis"), 0);
        assert_renders(r, METRICS_FORMAT_PROMETHEUS,
                       "# HELP vigil_http_requests_in_flight In flight.\n"
                       "# TYPE vigil_http_requests_in_flight gauge\n"
                       "vigil_http_requests_in_flight 2\n"
                       "# HELP vigil_dependency_up Up.\n"
                       "# TYPE vigil_dependency_up gauge\n"
                       "vigil_dependency_up{dependency=\"postgres\"} 1\n"
                       "vigil_dependency_up{dependency=\"redis\"} 0\n");
        assert_renders(r, METRICS_FORMAT_OPENMETRICS,
                       "# HELP vigil_http_requests_in_flight In flight.\n"
                       "# TYPE vigil_http_requests_in_flight gauge\n"
                       "vigil_http_requests_in_flight 2\n"
                       "# HELP vigil_dependency_up Up.\n"
                       "# TYPE vigil_dependency_up gauge\n"
                       "vigil_dependency_up{dependency=\"postgres\"} 1\n"
                       "vigil_dependency_up{dependency=\"redis\"} 0\n"
                       "# EOF\n");
}
END_TEST

START_TEST(test_values_print_integers_as_integers_and_floats_round_trip)
{
        static const struct {
                double v;
                const char *text;
        } cases[] = {
                {0, "0"},
                {-0.0, "0"},
                {42, "42"},
                {-7, "-7"},
                {123456789, "123456789"},
                {0.1, "0.1"},
                {2.5, "2.5"},
                {1e-05, "1e-05"},
                {1e20, "1e+20"},
                {1.0 / 3, "0.3333333333333333"},
                {0.1 + 0.2, "0.30000000000000004"},
                {INFINITY, "+Inf"},
                {-INFINITY, "-Inf"},
                {NAN, "NaN"},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
                struct metric_family *f = metrics_gauge_new(r, "g", NULL, NULL);
                _cleanup_free_ char *text = NULL;
                char expected[128];

                metrics_gauge_set(metrics_child(f, NULL), cases[i].v);
                text = render(r, METRICS_FORMAT_PROMETHEUS);
                snprintf(expected, sizeof(expected), "# TYPE g gauge\ng %s\n", cases[i].text);
                ck_assert_str_eq(text, expected);
                if (isfinite(cases[i].v))
                        ck_assert(strtod(cases[i].text, NULL) == cases[i].v);
        }
}
END_TEST

START_TEST(test_histogram_renders_cumulative_buckets_sum_and_count)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        static const double buckets[] = {0.25, 1, 2.5};
        struct metric_family *f =
                metrics_histogram_new(r, "vigil_op_duration_seconds", "Operation latency.",
                                      route_method, buckets, ELEMENTSOF(buckets));
        struct metric *m = metrics_child2(f, "/product/{id}", "GET");

        ck_assert_ptr_nonnull(f);
        metrics_histogram_observe(m, 0.25, NULL); /* upper bounds are inclusive */
        metrics_histogram_observe(m, 0.5, NULL);
        metrics_histogram_observe(m, 4, NULL);
        metrics_histogram_observe(m, NAN, NULL); /* ignored */
        ck_assert_uint_eq(metrics_histogram_count(m), 3);
        ck_assert(metrics_histogram_sum(m) == 4.75);
        assert_renders(
                r, METRICS_FORMAT_PROMETHEUS,
                "# HELP vigil_op_duration_seconds Operation latency.\n"
                "# TYPE vigil_op_duration_seconds histogram\n"
                "vigil_op_duration_seconds_bucket{route=\"/product/"
                "{id}\",method=\"GET\",le=\"0.25\"} 1\n"
                "vigil_op_duration_seconds_bucket{route=\"/product/{id}\",method=\"GET\",le=\"1\"} "
                "2\n"
                "vigil_op_duration_seconds_bucket{route=\"/product/"
                "{id}\",method=\"GET\",le=\"2.5\"} 2\n"
                "vigil_op_duration_seconds_bucket{route=\"/product/"
                "{id}\",method=\"GET\",le=\"+Inf\"} 3\n"
                "vigil_op_duration_seconds_sum{route=\"/product/{id}\",method=\"GET\"} 4.75\n"
                "vigil_op_duration_seconds_count{route=\"/product/{id}\",method=\"GET\"} 3\n");
        /* OpenMetrics writes le as a canonical float. */
        assert_renders(
                r, METRICS_FORMAT_OPENMETRICS,
                "# HELP vigil_op_duration_seconds Operation latency.\n"
                "# TYPE vigil_op_duration_seconds histogram\n"
                "vigil_op_duration_seconds_bucket{route=\"/product/"
                "{id}\",method=\"GET\",le=\"0.25\"} 1\n"
                "vigil_op_duration_seconds_bucket{route=\"/product/"
                "{id}\",method=\"GET\",le=\"1.0\"} 2\n"
                "vigil_op_duration_seconds_bucket{route=\"/product/"
                "{id}\",method=\"GET\",le=\"2.5\"} 2\n"
                "vigil_op_duration_seconds_bucket{route=\"/product/"
                "{id}\",method=\"GET\",le=\"+Inf\"} 3\n"
                "vigil_op_duration_seconds_sum{route=\"/product/{id}\",method=\"GET\"} 4.75\n"
                "vigil_op_duration_seconds_count{route=\"/product/{id}\",method=\"GET\"} 3\n"
                "# EOF\n");
}
END_TEST

START_TEST(test_histogram_without_labels_starts_at_zero)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        static const double buckets[] = {1, INFINITY}; /* a trailing +Inf is implied anyway */

        ck_assert_ptr_nonnull(metrics_histogram_new(r, "h_seconds", "H.", NULL, buckets, 2));
        assert_renders(r, METRICS_FORMAT_PROMETHEUS,
                       "# HELP h_seconds H.\n"
                       "# TYPE h_seconds histogram\n"
                       "h_seconds_bucket{le=\"1\"} 0\n"
                       "h_seconds_bucket{le=\"+Inf\"} 0\n"
                       "h_seconds_sum 0\n"
                       "h_seconds_count 0\n");
}
END_TEST

START_TEST(test_latency_buckets_are_the_agreed_ones)
{
        static const double expected[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.2,    0.25,  0.5,    1,     2.5,  5,     10};
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        _cleanup_free_ char *text = NULL;

        ck_assert_uint_eq(metrics_latency_buckets_count, ELEMENTSOF(expected));
        for (size_t i = 0; i < ELEMENTSOF(expected); i++)
                ck_assert(metrics_latency_buckets[i] == expected[i]);
        ck_assert_ptr_nonnull(metrics_histogram_new(r, "lat_seconds", "L.", NULL,
                                                    metrics_latency_buckets,
                                                    metrics_latency_buckets_count));
        text = render(r, METRICS_FORMAT_PROMETHEUS);
        assert_contains(text, "lat_seconds_bucket{le=\"0.0005\"} 0\n");
        assert_contains(text, "lat_seconds_bucket{le=\"0.2\"} 0\n");
        assert_contains(text, "lat_seconds_bucket{le=\"10\"} 0\n");
}
END_TEST

START_TEST(test_label_values_and_help_are_escaped)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct metric_family *f = metrics_counter_new(
                r, "esc_total", "Help with \\ and \"quotes\" and\nnewline.", one_label);

        metrics_counter_inc(metrics_child1(f, "a\\b\"c\nd"));
        assert_renders(r, METRICS_FORMAT_PROMETHEUS,
                       "# HELP esc_total Help with \\\\ and \"quotes\" and\\nnewline.\n"
                       "# TYPE esc_total counter\n"
                       "esc_total{dependency=\"a\\\\b\\\"c\\nd\"} 1\n");
        assert_renders(r, METRICS_FORMAT_OPENMETRICS,
                       "# HELP esc Help with \\\\ and \\\"quotes\\\" and\\nnewline.\n"
                       "# TYPE esc counter\n"
                       "esc_total{dependency=\"a\\\\b\\\"c\\nd\"} 1\n"
                       "# EOF\n");
}
END_TEST

static double realtime_now(void)
{
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_REALTIME, &ts), 0);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

START_TEST(test_exemplars_appear_only_in_openmetrics)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        static const double buckets[] = {0.1, 1};
        struct metric_family *f = metrics_histogram_new(r, "x_seconds", "X.", NULL, buckets, 2);
        struct metric *m = metrics_child(f, NULL);
        struct trace_context sampled = {.flags = 1}, unsampled = {.flags = 0}, zero = {.flags = 1};
        _cleanup_free_ char *prom = NULL, *om = NULL;
        const char *line, *ts;
        double before, after, stamp;

        for (size_t i = 0; i < TRACE_ID_SIZE; i++) {
                sampled.trace_id[i] = (uint8_t)(0xa0 + i);
                unsampled.trace_id[i] = 0x11;
        }
        /* The exemplar's stamp is CLOCK_REALTIME in milliseconds. Not time():
         * it reads the clock of the last tick, which can still be in the
         * second before the one the stamp is in. The stamp is truncated to
         * the millisecond; 2 ms leaves room for rounding too. */
        before = realtime_now() - 0.002;
        metrics_histogram_observe(m, 0.05, &sampled);
        metrics_histogram_observe(m, 0.5, &unsampled); /* not sampled: no exemplar */
        metrics_histogram_observe(m, 5, &zero);        /* all-zero trace id: none */
        after = realtime_now();

        prom = render(r, METRICS_FORMAT_PROMETHEUS);
        ck_assert_ptr_null(strstr(prom, "trace_id"));
        ck_assert_ptr_null(strstr(prom, " # "));

        om = render(r, METRICS_FORMAT_OPENMETRICS);
        line = strstr(om, "x_seconds_bucket{le=\"0.1\"} 1 # "
                          "{trace_id=\"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf\"} 0.05 ");
        ck_assert_msg(line, "no exemplar in:\n%s", om);
        ts = strstr(line, "} 0.05 ") + strlen("} 0.05 ");
        stamp = strtod(ts, NULL);
        ck_assert(stamp >= before && stamp <= after);
        assert_contains(om, "x_seconds_bucket{le=\"1.0\"} 2\n");
        assert_contains(om, "x_seconds_bucket{le=\"+Inf\"} 3\n");
        ck_assert_ptr_null(strstr(om, "11111111"));
}
END_TEST

START_TEST(test_children_past_the_limit_fold_into_overflow)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct metric_family *f = metrics_counter_new(r, "c_total", "C.", route_method);
        struct metric *first = NULL, *overflow, *again;
        _cleanup_free_ char *text = NULL;
        char v[32];

        for (int i = 0; i < METRICS_MAX_CHILDREN; i++) {
                struct metric *m;

                snprintf(v, sizeof(v), "/r%d", i);
                m = metrics_child2(f, v, "GET");
                ck_assert_ptr_nonnull(m);
                if (i == 0)
                        first = m;
        }
        overflow = metrics_child2(f, "/one-too-many", "GET");
        again = metrics_child2(f, "/another", "PUT");
        ck_assert_ptr_nonnull(overflow);
        ck_assert_ptr_eq(overflow, again);
        ck_assert_ptr_ne(overflow, first);
        /* Existing children are still found. */
        ck_assert_ptr_eq(metrics_child2(f, "/r0", "GET"), first);
        metrics_counter_inc(overflow);
        metrics_counter_inc(again);
        text = render(r, METRICS_FORMAT_PROMETHEUS);
        assert_contains(text, "c_total{route=\"overflow\",method=\"overflow\"} 2\n");
        ck_assert_ptr_null(strstr(text, "one-too-many"));
}
END_TEST

START_TEST(test_overflow_reuses_an_existing_overflow_label_set)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct metric_family *f = metrics_gauge_new(r, "g", NULL, one_label);
        struct metric *own = metrics_child1(f, "overflow");
        _cleanup_free_ char *text = NULL;
        char v[32];

        for (int i = 1; i < METRICS_MAX_CHILDREN; i++) {
                snprintf(v, sizeof(v), "d%d", i);
                ck_assert_ptr_nonnull(metrics_child1(f, v));
        }
        ck_assert_ptr_eq(metrics_child1(f, "one-too-many"), own);
        text = render(r, METRICS_FORMAT_PROMETHEUS);
        /* Exactly one series with that label set. */
        ck_assert_ptr_null(strstr(strstr(text, "g{dependency=\"overflow\"}") + 1,
                                  "g{dependency=\"overflow\"}"));
}
END_TEST

START_TEST(test_long_and_invalid_label_values_are_bounded)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct metric_family *f = metrics_gauge_new(r, "g", NULL, one_label);
        char long_value[METRICS_MAX_LABEL_VALUE * 3];
        char expected[METRICS_MAX_LABEL_VALUE + 64];
        char xs[METRICS_MAX_LABEL_VALUE + 1];
        _cleanup_free_ char *text = NULL;

        memset(xs, 'x', METRICS_MAX_LABEL_VALUE);
        xs[METRICS_MAX_LABEL_VALUE] = '\0';
        memset(long_value, 'x', sizeof(long_value) - 1);
        long_value[sizeof(long_value) - 1] = '\0';
        metrics_gauge_set(metrics_child1(f, long_value), 1);
        /* Same prefix, so the same child. */
        long_value[METRICS_MAX_LABEL_VALUE + 5] = 'y';
        metrics_gauge_add(metrics_child1(f, long_value), 1);
        /* "é" straddles the limit: cut before it, never inside it. */
        memcpy(long_value + METRICS_MAX_LABEL_VALUE - 1, "\xc3\xa9", 2);
        long_value[0] = 'z';
        metrics_gauge_set(metrics_child1(f, long_value), 3);
        metrics_gauge_set(metrics_child1(f, "bad\xff\xc3utf8"), 4);
        metrics_gauge_set(metrics_child1(f, NULL), 5);

        text = render(r, METRICS_FORMAT_PROMETHEUS);
        snprintf(expected, sizeof(expected), "g{dependency=\"%s\"} 2\n", xs);
        assert_contains(text, expected);
        snprintf(expected, sizeof(expected), "g{dependency=\"z%.*s\"} 3\n",
                 METRICS_MAX_LABEL_VALUE - 2, long_value + 1);
        assert_contains(text, expected);
        assert_contains(text, "g{dependency=\"bad??utf8\"} 4\n");
        assert_contains(text, "g{dependency=\"\"} 5\n");
}
END_TEST

START_TEST(test_invalid_names_and_definitions_are_rejected)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        static const double good[] = {0.1, 1};
        static const double unsorted[] = {1, 0.1};
        static const double nan_bucket[] = {0.1, NAN};
        static const char *const bad_labels[][3] = {
                {"1abc", NULL}, {"a-b", NULL}, {"__reserved", NULL},
                {"", NULL},     {"a:b", NULL}, {"a", "a"},
        };
        static const char *const bad_names[] = {"", "1abc", "a-b", "a b", "é"};
        char too_long[METRICS_MAX_NAME + 2];

        for (size_t i = 0; i < ELEMENTSOF(bad_names); i++) {
                ck_assert_ptr_null(metrics_counter_new(r, bad_names[i], "x", NULL));
                ck_assert_ptr_null(metrics_gauge_new(r, bad_names[i], "x", NULL));
        }
        ck_assert_ptr_null(metrics_gauge_new(r, NULL, "x", NULL));
        /* A counter's base name must be valid too. */
        ck_assert_ptr_null(metrics_counter_new(r, "_total", "x", NULL));
        memset(too_long, 'a', sizeof(too_long) - 1);
        too_long[sizeof(too_long) - 1] = '\0';
        ck_assert_ptr_null(metrics_gauge_new(r, too_long, "x", NULL));
        for (size_t i = 0; i < ELEMENTSOF(bad_labels); i++)
                ck_assert_ptr_null(metrics_gauge_new(r, "ok", "x", bad_labels[i]));
        ck_assert_ptr_null(metrics_gauge_new(
                r, "ok", "x",
                (const char *const[]){"a", "b", "c", "d", "e", "f", "g", "h", "i", NULL}));
        ck_assert_ptr_null(
                metrics_histogram_new(r, "h", "x", (const char *const[]){"le", NULL}, good, 2));
        ck_assert_ptr_null(metrics_histogram_new(r, "h", "x", NULL, unsorted, 2));
        ck_assert_ptr_null(metrics_histogram_new(r, "h", "x", NULL, nan_bucket, 2));
        ck_assert_ptr_null(metrics_histogram_new(r, "h", "x", NULL, NULL, 2));

        /* Valid ones, then clashes with the series names they expose. */
        ck_assert_ptr_nonnull(metrics_gauge_new(r, "ok:colons_are_fine", "x", NULL));
        ck_assert_ptr_nonnull(metrics_histogram_new(r, "h", "x", NULL, good, 2));
        ck_assert_ptr_null(metrics_histogram_new(r, "h", "x", NULL, good, 2));
        ck_assert_ptr_null(metrics_gauge_new(r, "h_count", "x", NULL));
        ck_assert_ptr_null(metrics_counter_new(r, "h_bucket", "x", NULL));
        ck_assert_ptr_nonnull(metrics_counter_new(r, "c_total", "x", NULL));
        ck_assert_ptr_null(metrics_gauge_new(r, "c", "x", NULL));
        ck_assert_ptr_null(metrics_gauge_new(r, "c_total", "x", NULL));
        ck_assert_ptr_null(metrics_counter_new(NULL, "x_total", "x", NULL));
        ck_assert_ptr_null(metrics_child(NULL, NULL));
}
END_TEST

START_TEST(test_families_are_found_by_name)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct metric_family *c = metrics_counter_new(r, "req_total", "R.", NULL);
        struct metric_family *g = metrics_gauge_new(r, "up", "U.", NULL);
        struct metric_family *h =
                metrics_histogram_new(r, "lat_seconds", "L.", NULL, metrics_latency_buckets,
                                      metrics_latency_buckets_count);

        ck_assert_ptr_eq(metrics_family_find(r, "req_total"), c);
        ck_assert_ptr_eq(metrics_family_find(r, "req"), c);
        ck_assert_ptr_eq(metrics_family_find(r, "up"), g);
        ck_assert_ptr_eq(metrics_family_find(r, "lat_seconds"), h);
        ck_assert_ptr_null(metrics_family_find(r, "up_total"));
        ck_assert_ptr_null(metrics_family_find(r, "lat_seconds_count"));
        ck_assert_ptr_null(metrics_family_find(r, "re"));
        ck_assert_ptr_null(metrics_family_find(r, "nope"));
        ck_assert_ptr_null(metrics_family_find(NULL, "up"));
}
END_TEST

START_TEST(test_updates_accept_null_and_ignore_the_wrong_type)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct metric *g = metrics_child(metrics_gauge_new(r, "g", NULL, NULL), NULL);
        struct metric *c = metrics_child(metrics_counter_new(r, "c_total", NULL, NULL), NULL);

        metrics_counter_add(NULL, 1);
        metrics_gauge_set(NULL, 1);
        metrics_gauge_add(NULL, 1);
        metrics_histogram_observe(NULL, 1, NULL);
        metrics_counter_add(g, 1);
        metrics_gauge_set(c, 5);
        metrics_histogram_observe(c, 1, NULL);
        ck_assert(metrics_value(g) == 0);
        ck_assert(metrics_value(c) == 0);
        ck_assert(isnan(metrics_value(NULL)));
        ck_assert_uint_eq(metrics_histogram_count(c), 0);
        metrics_counter_set(c, 7);
        metrics_counter_set(c, -1); /* ignored */
        ck_assert(metrics_value(c) == 7);
}
END_TEST

START_TEST(test_families_render_in_registration_order)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();

        metrics_gauge_new(r, "zz", NULL, NULL);
        metrics_gauge_new(r, "aa", NULL, NULL);
        metrics_gauge_new(r, "mm", NULL, NULL);
        assert_renders(r, METRICS_FORMAT_PROMETHEUS,
                       "# TYPE zz gauge\nzz 0\n# TYPE aa gauge\naa 0\n# TYPE mm gauge\nmm 0\n");
}
END_TEST

struct counting_collector {
        struct metric *gauge;
        int runs;
};

static void collect(struct metrics_registry *r, void *userdata)
{
        struct counting_collector *c = userdata;

        c->runs++;
        metrics_gauge_set(c->gauge, c->runs * 10);
}

START_TEST(test_collectors_run_before_each_render)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct counting_collector c = {
                .gauge = metrics_child(metrics_gauge_new(r, "refreshed", NULL, NULL), NULL),
        };

        ck_assert_int_eq(metrics_registry_add_collector(r, collect, &c), 0);
        ck_assert_int_eq(metrics_registry_add_collector(r, NULL, NULL), -EINVAL);
        assert_renders(r, METRICS_FORMAT_PROMETHEUS, "# TYPE refreshed gauge\nrefreshed 10\n");
        assert_renders(r, METRICS_FORMAT_PROMETHEUS, "# TYPE refreshed gauge\nrefreshed 20\n");
        ck_assert_int_eq(c.runs, 2);
}
END_TEST

struct hammer {
        struct metric_family *counters;
        struct metric_family *histogram;
        struct metric *shared;
        struct metric *seen_child;
};

#define HAMMER_THREADS    4
#define HAMMER_ITERATIONS 100000

static void *hammer_thread(void *arg)
{
        struct hammer *h = arg;
        struct metric *hist = metrics_child1(h->histogram, "same");
        struct trace_context ctx = {.flags = 1, .trace_id = {1}};

        /* All threads race to create the same child. */
        h->seen_child = metrics_child2(h->counters, "/race", "GET");
        for (int i = 0; i < HAMMER_ITERATIONS; i++) {
                metrics_counter_inc(h->shared);
                if (i % 10 == 0)
                        metrics_histogram_observe(hist, 0.5, &ctx);
        }
        return NULL;
}

START_TEST(test_concurrent_increments_are_exact)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        struct hammer h[HAMMER_THREADS];
        pthread_t threads[HAMMER_THREADS];
        struct metric_family *counters = metrics_counter_new(r, "hits_total", "H.", route_method);
        struct metric_family *histogram =
                metrics_histogram_new(r, "lat_seconds", "L.", one_label, metrics_latency_buckets,
                                      metrics_latency_buckets_count);
        struct metric *shared = metrics_child2(counters, "/shared", "GET");

        for (int i = 0; i < HAMMER_THREADS; i++) {
                h[i] = (struct hammer){
                        .counters = counters, .histogram = histogram, .shared = shared};
                ck_assert_int_eq(pthread_create(&threads[i], NULL, hammer_thread, &h[i]), 0);
        }
        /* Render concurrently too: it must neither crash nor block writers. */
        for (int i = 0; i < 5; i++)
                free(render(r, METRICS_FORMAT_OPENMETRICS));
        for (int i = 0; i < HAMMER_THREADS; i++)
                ck_assert_int_eq(pthread_join(threads[i], NULL), 0);

        ck_assert(metrics_value(shared) == (double)HAMMER_THREADS * HAMMER_ITERATIONS);
        for (int i = 1; i < HAMMER_THREADS; i++)
                ck_assert_ptr_eq(h[i].seen_child, h[0].seen_child);
        ck_assert_uint_eq(metrics_histogram_count(metrics_child1(histogram, "same")),
                          HAMMER_THREADS * HAMMER_ITERATIONS / 10);
        ck_assert(metrics_histogram_sum(metrics_child1(histogram, "same")) ==
                  0.5 * HAMMER_THREADS * HAMMER_ITERATIONS / 10);
}
END_TEST

static double sample_value(const char *text, const char *name)
{
        char needle[128];
        const char *p;

        snprintf(needle, sizeof(needle), "\n%s ", name);
        p = strstr(text, needle);
        ck_assert_msg(p, "no sample %s in:\n%s", name, text);
        return strtod(p + strlen(needle), NULL);
}

START_TEST(test_process_metrics_are_present_and_plausible)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        _cleanup_free_ char *text = NULL;
        double now = realtime_now();

        ck_assert_int_eq(metrics_register_process(r), 0);
        ck_assert_int_eq(metrics_register_process(r), -EEXIST);
        ck_assert_int_eq(metrics_register_build_info(r, "1.2.3"), 0);
        ck_assert_int_eq(metrics_register_build_info(r, "1.2.3"), -EEXIST);
        text = render(r, METRICS_FORMAT_PROMETHEUS);

        assert_contains(text, "# TYPE process_cpu_seconds_total counter\n");
        ck_assert(sample_value(text, "process_cpu_seconds_total") >= 0);
        ck_assert(sample_value(text, "process_resident_memory_bytes") > 0);
        ck_assert(sample_value(text, "process_virtual_memory_bytes") >=
                  sample_value(text, "process_resident_memory_bytes"));
        ck_assert(sample_value(text, "process_open_fds") >= 3);
        ck_assert(sample_value(text, "process_max_fds") >= sample_value(text, "process_open_fds"));
        /* Started within the last hour, and not in the future. */
        ck_assert(sample_value(text, "process_start_time_seconds") > now - 3600);
        ck_assert(sample_value(text, "process_start_time_seconds") <= now + 2);
        assert_contains(text, "# TYPE vigil_build_info gauge\n"
                              "vigil_build_info{version=\"1.2.3\"} 1\n");
}
END_TEST

START_TEST(test_open_fds_follow_the_process)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();
        _cleanup_free_ char *before = NULL, *after = NULL;
        int fds[2];

        ck_assert_int_eq(metrics_register_process(r), 0);
        before = render(r, METRICS_FORMAT_PROMETHEUS);
        ck_assert_int_eq(pipe(fds), 0);
        after = render(r, METRICS_FORMAT_PROMETHEUS);
        close(fds[0]);
        close(fds[1]);
        ck_assert(sample_value(after, "process_open_fds") ==
                  sample_value(before, "process_open_fds") + 2);
}
END_TEST

START_TEST(test_format_is_negotiated_from_accept)
{
        ck_assert_int_eq(metrics_format_from_accept(NULL), METRICS_FORMAT_PROMETHEUS);
        ck_assert_int_eq(metrics_format_from_accept(""), METRICS_FORMAT_PROMETHEUS);
        ck_assert_int_eq(metrics_format_from_accept("*/*"), METRICS_FORMAT_PROMETHEUS);
        ck_assert_int_eq(metrics_format_from_accept("text/plain;version=0.0.4"),
                         METRICS_FORMAT_PROMETHEUS);
        ck_assert_int_eq(
                metrics_format_from_accept(
                        "application/openmetrics-text;version=1.0.0,application/"
                        "openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/"
                        "*;q=0.1"),
                METRICS_FORMAT_OPENMETRICS);
        ck_assert_int_eq(metrics_format_from_accept("text/plain, Application/OpenMetrics-Text"),
                         METRICS_FORMAT_OPENMETRICS);
        ck_assert_int_eq(metrics_format_from_accept("application/openmetrics-text; q=0"),
                         METRICS_FORMAT_PROMETHEUS);
        ck_assert_int_eq(metrics_format_from_accept("application/openmetrics-textual"),
                         METRICS_FORMAT_PROMETHEUS);
        ck_assert_str_eq(metrics_content_type(METRICS_FORMAT_PROMETHEUS),
                         "text/plain; version=0.0.4; charset=utf-8");
        ck_assert_str_eq(metrics_content_type(METRICS_FORMAT_OPENMETRICS),
                         "application/openmetrics-text; version=1.0.0; charset=utf-8");
}
END_TEST

START_TEST(test_empty_registry_renders)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = registry();

        assert_renders(r, METRICS_FORMAT_PROMETHEUS, "");
        assert_renders(r, METRICS_FORMAT_OPENMETRICS, "# EOF\n");
}
END_TEST

static const char *promtool_path(void)
{
        const char *p = getenv("PROMTOOL");

        if (p && *p)
                return access(p, X_OK) == 0 ? p : NULL;
        return access("/usr/bin/promtool", X_OK) == 0 ? "/usr/bin/promtool" : NULL;
}

/* Run argv with text on its standard input; returns its exit status (-1
 * when killed) and sets *ret_output to what it wrote to stdout and stderr. */
static int run_with_input(char *const argv[], const char *text, char **ret_output)
{
        char path[] = "/tmp/test-metrics-XXXXXX";
        _cleanup_close_ int fd = -1;
        int out[2], status;
        char *output = calloc(1, 1);
        size_t len = 0;
        pid_t pid;

        ck_assert_ptr_nonnull(output);
        fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        unlink(path);
        ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
        ck_assert_int_eq(pipe(out), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                dup2(fd, STDIN_FILENO);
                dup2(out[1], STDOUT_FILENO);
                dup2(out[1], STDERR_FILENO);
                execv(argv[0], argv);
                _exit(127);
        }
        close(out[1]);
        for (;;) {
                char chunk[4096];
                ssize_t n = read(out[0], chunk, sizeof(chunk));

                if (n <= 0)
                        break;
                output = realloc(output, len + (size_t)n + 1);
                ck_assert_ptr_nonnull(output);
                memcpy(output + len, chunk, (size_t)n);
                len += (size_t)n;
                output[len] = '\0';
        }
        close(out[0]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        *ret_output = output;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* A registry with every kind of metric vigil exposes: labelled and plain,
 * a label value needing escapes, a family with no series yet, exemplars,
 * process metrics and build info. */
static struct metrics_registry *full_registry(void)
{
        struct metrics_registry *r = registry();
        struct trace_context ctx = {.flags = 1, .trace_id = {0xde, 0xad}};
        struct metric_family *requests, *duration, *in_flight, *up, *empty;

        requests = metrics_counter_new(r, "vigil_http_requests_total",
                                       "HTTP requests by route template, method and code.",
                                       (const char *const[]){"route", "method", "code", NULL});
        duration = metrics_histogram_new(r, "vigil_http_request_duration_seconds",
                                         "HTTP request latency in seconds.", route_method,
                                         metrics_latency_buckets, metrics_latency_buckets_count);
        in_flight = metrics_gauge_new(r, "vigil_http_requests_in_flight", "Requests being served.",
                                      NULL);
        up = metrics_gauge_new(r, "vigil_dependency_up", "Whether a dependency answers.",
                               one_label);
        empty = metrics_counter_new(r, "vigil_dependency_errors_total", "Failed dependency calls.",
                                    route_method);
        ck_assert(requests && duration && in_flight && up && empty);
        metrics_counter_inc(metrics_child3(requests, "/product/{id}", "GET", "200"));
        metrics_counter_add(metrics_child3(requests, "weird \"route\"\\\n", "POST", "500"), 3);
        metrics_histogram_observe(metrics_child2(duration, "/product/{id}", "GET"), 0.042, &ctx);
        metrics_histogram_observe(metrics_child2(duration, "/product/{id}", "GET"), 0.3, &ctx);
        metrics_histogram_observe(metrics_child2(duration, "/product/{id}", "GET"), 12, NULL);
        metrics_gauge_set(metrics_child(in_flight, NULL), 2);
        metrics_gauge_set(metrics_child1(up, "postgres"), 1);
        ck_assert_int_eq(metrics_register_process(r), 0);
        ck_assert_int_eq(metrics_register_build_info(r, "0.1.0"), 0);
        return r;
}

START_TEST(test_promtool_finds_nothing_to_complain_about)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = NULL;
        _cleanup_free_ char *text = NULL, *output = NULL;
        const char *promtool = promtool_path();

        if (!promtool) {
                fprintf(stderr, "promtool not found: skipping the promtool check\n");
                return;
        }
        r = full_registry();
        text = render(r, METRICS_FORMAT_PROMETHEUS);
        ck_assert_int_eq(run_with_input((char *const[]){(char *)promtool, "check", "metrics", NULL},
                                        text, &output),
                         0);
        ck_assert_msg(output[0] == '\0', "promtool complained:\n%s\non:\n%s", output, text);
}
END_TEST

/* promtool reads only the Prometheus text format; the OpenMetrics output is
 * checked with the strict parser of the Python client where it is
 * installed (Debian: python3-prometheus-client). */
static const char openmetrics_check[] =
        "import sys\n"
        "try:\n"
        "    from prometheus_client.openmetrics.parser import text_string_to_metric_families\n"
        "except ImportError:\n"
        "    sys.exit(77)\n"
        "families = list(text_string_to_metric_families(sys.stdin.read()))\n"
        "exemplars = [s.exemplar for f in families for s in f.samples if s.exemplar]\n"
        "print('no exemplar' if not exemplars else '', end='')\n";

START_TEST(test_openmetrics_output_parses_strictly)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = NULL;
        _cleanup_free_ char *text = NULL, *output = NULL;
        int status;

        if (access("/usr/bin/python3", X_OK) != 0) {
                fprintf(stderr, "python3 not found: skipping the OpenMetrics parse check\n");
                return;
        }
        r = full_registry();
        text = render(r, METRICS_FORMAT_OPENMETRICS);
        status = run_with_input(
                (char *const[]){"/usr/bin/python3", "-c", (char *)openmetrics_check, NULL}, text,
                &output);
        if (status == 77) {
                fprintf(stderr, "prometheus_client not installed: skipping the OpenMetrics "
                                "parse check\n");
                return;
        }
        ck_assert_msg(status == 0 && output[0] == '\0', "parser said (%d):\n%s\non:\n%s", status,
                      output, text);
}
END_TEST

/* Label values a client can choose, with every character the text formats
 * escape or could mistake for syntax, and what the registry keeps of each
 * (malformed UTF-8 as '?', at most METRICS_MAX_LABEL_VALUE bytes). */
static const char *const hostile_values[][2] = {
        {"weird \"route\"\\\n", "weird \"route\"\\\n"},
        {"\\n is not a newline", "\\n is not a newline"},
        {"\\\"", "\\\""},
        {"\"", "\""},
        {"\\", "\\"},
        {"\n", "\n"},
        {"}{,=# EOF", "}{,=# EOF"},
        {"caf\xc3\xa9 \xf0\x9f\x98\x80", "caf\xc3\xa9 \xf0\x9f\x98\x80"},
        {"bad \xff byte", "bad ? byte"},
        {"", ""},
};

/* Reads the text on stdin with the parser of the Python client for the
 * format in argv[1] ("prometheus" or "openmetrics") and compares the route
 * label of every vigil_escape_requests_total sample, in order, with the
 * values given in hex in argv[2...]. Exit 77 without the client. */
static const char read_back_check[] =
        "import sys\n"
        "try:\n"
        "    if sys.argv[1] == 'openmetrics':\n"
        "        from prometheus_client.openmetrics.parser import "
        "text_string_to_metric_families\n"
        "    else:\n"
        "        from prometheus_client.parser import text_string_to_metric_families\n"
        "except ImportError:\n"
        "    sys.exit(77)\n"
        "expected = [bytes.fromhex(h).decode('utf-8') for h in sys.argv[2:]]\n"
        "got = [s.labels['route'] for f in text_string_to_metric_families(sys.stdin.read())\n"
        "       for s in f.samples if s.name == 'vigil_escape_requests_total']\n"
        "if got != expected:\n"
        "    print('expected %r, read %r' % (expected, got))\n"
        "    sys.exit(1)\n";

static char *hex_of(const char *s)
{
        size_t len = strlen(s);
        char *out = malloc(2 * len + 1);

        ck_assert_ptr_nonnull(out);
        for (size_t i = 0; i < len; i++)
                snprintf(out + 2 * i, 3, "%02x", (unsigned char)s[i]);
        out[2 * len] = '\0';
        return out;
}

static struct metrics_registry *hostile_registry(char **ret_long_value, char **ret_long_expected)
{
        struct metrics_registry *r = registry();
        struct metric_family *f;
        char *long_value = malloc(301), *long_expected = malloc(METRICS_MAX_LABEL_VALUE + 1);

        ck_assert(long_value && long_expected);
        f = metrics_counter_new(r, "vigil_escape_requests_total", "Requests by route.",
                                (const char *const[]){"route", NULL});
        ck_assert_ptr_nonnull(f);
        for (size_t i = 0; i < ELEMENTSOF(hostile_values); i++)
                metrics_counter_inc(metrics_child1(f, hostile_values[i][0]));
        /* 100 x "\"\\\n" (300 bytes) keeps its first 128 bytes. */
        for (size_t i = 0; i < 300; i++)
                long_value[i] = "\"\\\n"[i % 3];
        long_value[300] = '\0';
        memcpy(long_expected, long_value, METRICS_MAX_LABEL_VALUE);
        long_expected[METRICS_MAX_LABEL_VALUE] = '\0';
        metrics_counter_inc(metrics_child1(f, long_value));
        *ret_long_value = long_value;
        *ret_long_expected = long_expected;
        return r;
}

static void assert_python_reads_back(enum metrics_format fmt)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = NULL;
        _cleanup_free_ char *text = NULL, *output = NULL, *long_value = NULL, *long_expected = NULL;
        char *argv[4 + ELEMENTSOF(hostile_values) + 2] = {
                "/usr/bin/python3", "-c", (char *)read_back_check,
                fmt == METRICS_FORMAT_OPENMETRICS ? "openmetrics" : "prometheus"};
        size_t n = 4;
        int status;

        if (access("/usr/bin/python3", X_OK) != 0) {
                fprintf(stderr, "python3 not found: skipping the read-back check\n");
                return;
        }
        r = hostile_registry(&long_value, &long_expected);
        for (size_t i = 0; i < ELEMENTSOF(hostile_values); i++)
                argv[n++] = hex_of(hostile_values[i][1]);
        argv[n++] = hex_of(long_expected);
        argv[n] = NULL;
        text = render(r, fmt);
        status = run_with_input(argv, text, &output);
        for (size_t i = 4; i < n; i++)
                free(argv[i]);
        if (status == 77) {
                fprintf(stderr, "prometheus_client not installed: skipping the read-back check\n");
                return;
        }
        ck_assert_msg(status == 0, "the client's parser said (%d):\n%s\non:\n%s", status, output,
                      text);
}

START_TEST(test_hostile_label_values_read_back_through_prometheus_parsers)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = NULL;
        _cleanup_free_ char *text = NULL, *output = NULL, *long_value = NULL, *long_expected = NULL;
        const char *promtool = promtool_path();

        assert_python_reads_back(METRICS_FORMAT_PROMETHEUS);
        assert_python_reads_back(METRICS_FORMAT_OPENMETRICS);

        if (!promtool) {
                fprintf(stderr, "promtool not found: skipping the promtool check\n");
                return;
        }
        r = hostile_registry(&long_value, &long_expected);
        text = render(r, METRICS_FORMAT_PROMETHEUS);
        ck_assert_int_eq(run_with_input((char *const[]){(char *)promtool, "check", "metrics", NULL},
                                        text, &output),
                         0);
        ck_assert_msg(output[0] == '\0', "promtool complained:\n%s\non:\n%s", output, text);
}
END_TEST

static Suite *metrics_suite(void)
{
        Suite *s = suite_create("metrics");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_counter_without_labels_renders_zero_then_total);
        tcase_add_test(tc, test_counter_name_without_total_is_exposed_with_total);
        tcase_add_test(tc, test_counter_with_labels_renders_children_in_creation_order);
        tcase_add_test(tc, test_gauge_renders_in_both_formats);
        tcase_add_test(tc, test_values_print_integers_as_integers_and_floats_round_trip);
        tcase_add_test(tc, test_histogram_renders_cumulative_buckets_sum_and_count);
        tcase_add_test(tc, test_histogram_without_labels_starts_at_zero);
        tcase_add_test(tc, test_latency_buckets_are_the_agreed_ones);
        tcase_add_test(tc, test_label_values_and_help_are_escaped);
        tcase_add_test(tc, test_exemplars_appear_only_in_openmetrics);
        tcase_add_test(tc, test_children_past_the_limit_fold_into_overflow);
        tcase_add_test(tc, test_overflow_reuses_an_existing_overflow_label_set);
        tcase_add_test(tc, test_long_and_invalid_label_values_are_bounded);
        tcase_add_test(tc, test_invalid_names_and_definitions_are_rejected);
        tcase_add_test(tc, test_families_are_found_by_name);
        tcase_add_test(tc, test_updates_accept_null_and_ignore_the_wrong_type);
        tcase_add_test(tc, test_families_render_in_registration_order);
        tcase_add_test(tc, test_collectors_run_before_each_render);
        tcase_add_test(tc, test_concurrent_increments_are_exact);
        tcase_add_test(tc, test_process_metrics_are_present_and_plausible);
        tcase_add_test(tc, test_open_fds_follow_the_process);
        tcase_add_test(tc, test_format_is_negotiated_from_accept);
        tcase_add_test(tc, test_empty_registry_renders);
        tcase_add_test(tc, test_promtool_finds_nothing_to_complain_about);
        tcase_add_test(tc, test_openmetrics_output_parses_strictly);
        tcase_add_test(tc, test_hostile_label_values_read_back_through_prometheus_parsers);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(metrics_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
