/* Tests for trace.c: W3C traceparent parsing and formatting, id
 * generation, parent/child linking and sampling, the thread-local current
 * span, and the OTLP/HTTP JSON exporter against an in-process collector. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "json-util.h"
#include "macro.h"
#include "metrics.h"
#include "trace.h"

#define TRACE_ID "4bf92f3577b34da6a3ce929d0e0e4736"
#define SPAN_ID  "00f067aa0ba902b7"

/* ---- traceparent ---- */

static const struct {
        const char *value;
        uint8_t flags;
} valid_traceparents[] = {
        {"00-" TRACE_ID "-" SPAN_ID "-01", 0x01},
        {"00-" TRACE_ID "-" SPAN_ID "-00", 0x00},
        /* Version 00 keeps flag bits it does not know (e.g. level 2's
         * random flag) so they survive propagation. */
        {"00-" TRACE_ID "-" SPAN_ID "-03", 0x03},
        /* A future version is read by the version-00 prefix rules. */
        {"01-" TRACE_ID "-" SPAN_ID "-01", 0x01},
        {"cc-" TRACE_ID "-" SPAN_ID "-01-what-the-future-will-be-like", 0x01},
        {"fe-" TRACE_ID "-" SPAN_ID "-09-", 0x01},
};

static const char *const invalid_traceparents[] = {
        "",
        "00",
        /* wrong lengths */
        "00-" TRACE_ID "-" SPAN_ID "-0",
        "00-" TRACE_ID "-" SPAN_ID "-011",
        "00-" TRACE_ID "-" SPAN_ID "-01-",
        "00-" TRACE_ID "-" SPAN_ID "-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-" SPAN_ID "0-01",
        "00-" TRACE_ID "7-00f067aa0ba902b-01",
        /* forbidden version */
        "ff-" TRACE_ID "-" SPAN_ID "-01",
        "ff-" TRACE_ID "-" SPAN_ID "-01-future",
        /* a future version must have '-' after the flags when longer */
        "01-" TRACE_ID "-" SPAN_ID "-01x",
        "cc-" TRACE_ID "-" SPAN_ID "-01.what-the-future-will-be-like",
        /* upper-case hex */
        "0A-" TRACE_ID "-" SPAN_ID "-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-" SPAN_ID "-01",
        "00-" TRACE_ID "-00F067AA0BA902B7-01",
        "00-" TRACE_ID "-" SPAN_ID "-0A",
        /* all-zero ids */
        "00-00000000000000000000000000000000-" SPAN_ID "-01",
        "00-" TRACE_ID "-0000000000000000-01",
        /* wrong separators */
        "00_" TRACE_ID "-" SPAN_ID "-01",
        "00-" TRACE_ID "_" SPAN_ID "-01",
        "00-" TRACE_ID "-" SPAN_ID "_01",
        "00 " TRACE_ID " " SPAN_ID " 01",
        /* not hex */
        "0g-" TRACE_ID "-" SPAN_ID "-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-" SPAN_ID "-01",
        "00-" TRACE_ID "-00f067aa0ba902bz-01",
        "00-" TRACE_ID "-" SPAN_ID "-0x",
        "00-" TRACE_ID "-" SPAN_ID "- 1",
        " 00-" TRACE_ID "-" SPAN_ID "-01",
        "00-" TRACE_ID "-" SPAN_ID "-01 ",
};

START_TEST(test_parse_accepts_valid_traceparent)
{
        const char *value = valid_traceparents[_i].value;
        struct trace_context ctx;
        char trace_id[2 * TRACE_ID_SIZE + 1], span_id[2 * SPAN_ID_SIZE + 1];

        ck_assert_msg(trace_parse_traceparent(value, &ctx) == 0, "rejected %s", value);
        ck_assert(trace_context_is_valid(&ctx));
        trace_format_trace_id(&ctx, trace_id);
        trace_format_span_id(&ctx, span_id);
        ck_assert_str_eq(trace_id, TRACE_ID);
        ck_assert_str_eq(span_id, SPAN_ID);
        ck_assert_uint_eq(ctx.flags, valid_traceparents[_i].flags);
}
END_TEST

START_TEST(test_parse_rejects_malformed_traceparent)
{
        const char *value = invalid_traceparents[_i];
        struct trace_context ctx = {.flags = 0x5a};

        ck_assert_msg(trace_parse_traceparent(value, &ctx) == -EINVAL, "accepted \"%s\"", value);
        /* ret is written only on success */
        ck_assert_uint_eq(ctx.flags, 0x5a);
}
END_TEST

START_TEST(test_parse_rejects_null)
{
        struct trace_context ctx;

        ck_assert_int_eq(trace_parse_traceparent(NULL, &ctx), -EINVAL);
}
END_TEST

START_TEST(test_format_round_trips_version_00)
{
        const char *value = "00-" TRACE_ID "-" SPAN_ID "-01";
        char buf[TRACEPARENT_LEN + 1];
        struct trace_context ctx, again;

        ck_assert_int_eq(trace_parse_traceparent(value, &ctx), 0);
        trace_format_traceparent(&ctx, buf);
        ck_assert_str_eq(buf, value);
        ck_assert_int_eq(trace_parse_traceparent(buf, &again), 0);
        ck_assert_mem_eq(&ctx, &again, sizeof(ctx));
}
END_TEST

START_TEST(test_format_writes_future_version_as_00)
{
        char buf[TRACEPARENT_LEN + 1];
        struct trace_context ctx;

        ck_assert_int_eq(trace_parse_traceparent("cc-" TRACE_ID "-" SPAN_ID "-ff-x", &ctx), 0);
        trace_format_traceparent(&ctx, buf);
        ck_assert_str_eq(buf, "00-" TRACE_ID "-" SPAN_ID "-01");
}
END_TEST

START_TEST(test_generated_contexts_round_trip)
{
        for (int i = 0; i < 200; i++) {
                struct span *s = span_start(NULL, "x", SPAN_KIND_INTERNAL, NULL);
                char buf[TRACEPARENT_LEN + 1];
                struct trace_context again;

                trace_format_traceparent(span_context(s), buf);
                ck_assert_uint_eq(strlen(buf), TRACEPARENT_LEN);
                ck_assert_int_eq(trace_parse_traceparent(buf, &again), 0);
                ck_assert_mem_eq(span_context(s), &again, sizeof(again));
                span_end(s);
        }
}
END_TEST

START_TEST(test_context_is_valid_requires_nonzero_ids)
{
        struct trace_context ctx = {};

        ck_assert(!trace_context_is_valid(NULL));
        ck_assert(!trace_context_is_valid(&ctx));
        ctx.trace_id[15] = 1;
        ck_assert(!trace_context_is_valid(&ctx));
        ctx.span_id[0] = 1;
        ck_assert(trace_context_is_valid(&ctx));
        ctx.trace_id[15] = 0;
        ck_assert(!trace_context_is_valid(&ctx));
}
END_TEST

/* ---- ids ---- */

#define IDS_PER_THREAD 2000

static void *make_ids(void *userdata)
{
        struct trace_context *out = userdata;

        for (size_t i = 0; i < IDS_PER_THREAD; i++) {
                struct span *s = span_start(NULL, "x", SPAN_KIND_INTERNAL, NULL);

                out[i] = *span_context(s);
                span_end(s);
        }
        return NULL;
}

static int compare_span_ids(const void *a, const void *b)
{
        return memcmp(((const struct trace_context *)a)->span_id,
                      ((const struct trace_context *)b)->span_id, SPAN_ID_SIZE);
}

static int compare_trace_ids(const void *a, const void *b)
{
        return memcmp(((const struct trace_context *)a)->trace_id,
                      ((const struct trace_context *)b)->trace_id, TRACE_ID_SIZE);
}

START_TEST(test_ids_are_valid_and_unique_across_threads)
{
        enum { N_THREADS = 4, N = N_THREADS * IDS_PER_THREAD };
        _cleanup_free_ struct trace_context *ctx = calloc(N, sizeof(*ctx));
        pthread_t threads[N_THREADS];

        ck_assert_ptr_nonnull(ctx);
        for (int i = 0; i < N_THREADS; i++)
                ck_assert_int_eq(
                        pthread_create(&threads[i], NULL, make_ids, ctx + i * IDS_PER_THREAD), 0);
        for (int i = 0; i < N_THREADS; i++)
                pthread_join(threads[i], NULL);

        for (size_t i = 0; i < N; i++)
                ck_assert(trace_context_is_valid(&ctx[i]));
        qsort(ctx, N, sizeof(*ctx), compare_span_ids);
        for (size_t i = 1; i < N; i++)
                ck_assert(compare_span_ids(&ctx[i - 1], &ctx[i]) != 0);
        qsort(ctx, N, sizeof(*ctx), compare_trace_ids);
        for (size_t i = 1; i < N; i++)
                ck_assert(compare_trace_ids(&ctx[i - 1], &ctx[i]) != 0);
}
END_TEST

/* ---- spans, sampling, current span ---- */

static struct tracer *tracer_with_ratio(double ratio)
{
        struct tracer_options opts = {.service_name = "vigil-test", .sample_ratio = ratio};
        struct tracer *t = NULL;

        ck_assert_int_eq(tracer_new(&opts, &t), 0);
        ck_assert_ptr_nonnull(t);
        return t;
}

START_TEST(test_child_shares_trace_id_and_links_to_parent)
{
        struct tracer *t = tracer_with_ratio(1.0);
        struct span *root = span_start(t, "root", SPAN_KIND_SERVER, NULL);
        struct span *child = span_start(t, "child", SPAN_KIND_CLIENT, span_context(root));
        uint8_t parent_id[SPAN_ID_SIZE];

        ck_assert(!span_parent_span_id(root, parent_id));
        ck_assert(span_parent_span_id(child, parent_id));
        ck_assert_mem_eq(parent_id, span_context(root)->span_id, SPAN_ID_SIZE);
        ck_assert_mem_eq(span_context(child)->trace_id, span_context(root)->trace_id,
                         TRACE_ID_SIZE);
        ck_assert(memcmp(span_context(child)->span_id, span_context(root)->span_id, SPAN_ID_SIZE) !=
                  0);
        span_end(child);
        span_end(root);
        tracer_free(t);
}
END_TEST

START_TEST(test_remote_parent_is_continued)
{
        struct tracer *t = tracer_with_ratio(1.0);
        struct trace_context remote;
        struct span *s;
        uint8_t parent_id[SPAN_ID_SIZE];
        char buf[2 * TRACE_ID_SIZE + 1];

        ck_assert_int_eq(trace_parse_traceparent("00-" TRACE_ID "-" SPAN_ID "-01", &remote), 0);
        s = span_start(t, "server", SPAN_KIND_SERVER, &remote);
        trace_format_trace_id(span_context(s), buf);
        ck_assert_str_eq(buf, TRACE_ID);
        ck_assert(span_parent_span_id(s, parent_id));
        ck_assert_mem_eq(parent_id, remote.span_id, SPAN_ID_SIZE);
        span_end(s);
        tracer_free(t);
}
END_TEST

START_TEST(test_invalid_parent_starts_new_trace)
{
        struct trace_context zero = {};
        struct span *s = span_start(NULL, "server", SPAN_KIND_SERVER, &zero);
        uint8_t parent_id[SPAN_ID_SIZE];

        ck_assert(trace_context_is_valid(span_context(s)));
        ck_assert(!span_parent_span_id(s, parent_id));
        span_end(s);
}
END_TEST

START_TEST(test_child_inherits_sampled_flag_from_parent)
{
        struct tracer *never = tracer_with_ratio(0.0), *always = tracer_with_ratio(1.0);
        struct trace_context sampled, unsampled;
        struct span *s;

        ck_assert_int_eq(trace_parse_traceparent("00-" TRACE_ID "-" SPAN_ID "-01", &sampled), 0);
        ck_assert_int_eq(trace_parse_traceparent("00-" TRACE_ID "-" SPAN_ID "-00", &unsampled), 0);

        /* The parent's decision wins over the local ratio both ways. */
        s = span_start(never, "a", SPAN_KIND_SERVER, &sampled);
        ck_assert_uint_eq(span_context(s)->flags & TRACE_FLAG_SAMPLED, TRACE_FLAG_SAMPLED);
        span_end(s);
        s = span_start(always, "b", SPAN_KIND_SERVER, &unsampled);
        ck_assert_uint_eq(span_context(s)->flags & TRACE_FLAG_SAMPLED, 0);
        span_end(s);

        /* Also through the current span. */
        s = span_start(always, "root", SPAN_KIND_SERVER, &unsampled);
        trace_set_current(s);
        {
                struct span *child = span_start(always, "child", SPAN_KIND_CLIENT, NULL);

                ck_assert_uint_eq(span_context(child)->flags & TRACE_FLAG_SAMPLED, 0);
                span_end(child);
        }
        trace_set_current(NULL);
        span_end(s);

        tracer_free(never);
        tracer_free(always);
}
END_TEST

static unsigned count_sampled_roots(struct tracer *t, unsigned n)
{
        unsigned sampled = 0;

        for (unsigned i = 0; i < n; i++) {
                struct span *s = span_start(t, "root", SPAN_KIND_SERVER, NULL);

                if (span_context(s)->flags & TRACE_FLAG_SAMPLED)
                        sampled++;
                span_end(s);
        }
        return sampled;
}

START_TEST(test_new_roots_are_sampled_by_ratio)
{
        struct tracer *never = tracer_with_ratio(0.0), *always = tracer_with_ratio(1.0);
        struct tracer *half = tracer_with_ratio(0.5);
        unsigned n;

        ck_assert_uint_eq(count_sampled_roots(never, 1000), 0);
        ck_assert_uint_eq(count_sampled_roots(always, 1000), 1000);
        /* Binomial(4000, 0.5): 1600..2400 is more than 12 standard
         * deviations wide. */
        n = count_sampled_roots(half, 4000);
        ck_assert_uint_ge(n, 1600);
        ck_assert_uint_le(n, 2400);
        /* Without a tracer new roots are not sampled. */
        ck_assert_uint_eq(count_sampled_roots(NULL, 100), 0);

        tracer_free(never);
        tracer_free(always);
        tracer_free(half);
}
END_TEST

START_TEST(test_trace_id_parsing_takes_32_lower_case_hex_digits)
{
        static const char *const bad[] = {
                "",
                "4bf92f3577b34da6a3ce929d0e0e473",
                "4bf92f3577b34da6a3ce929d0e0e47361",
                "4BF92F3577B34DA6A3CE929D0E0E4736",
                "4bf92f3577b34da6a3ce929d0e0e473g",
                "00000000000000000000000000000000",
                "4bf92f35-7b34da6a3ce929d0e0e4736",
        };
        uint8_t id[TRACE_ID_SIZE], untouched[TRACE_ID_SIZE];
        struct trace_context ctx = {.span_id = {1}};
        char text[2 * TRACE_ID_SIZE + 1];

        ck_assert_int_eq(trace_parse_trace_id(TRACE_ID, id), 0);
        memcpy(ctx.trace_id, id, TRACE_ID_SIZE);
        trace_format_trace_id(&ctx, text);
        ck_assert_str_eq(text, TRACE_ID);

        memset(untouched, 0x5a, sizeof(untouched));
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                memcpy(id, untouched, sizeof(id));
                ck_assert_msg(trace_parse_trace_id(bad[i], id) == -EINVAL, "accepted \"%s\"",
                              bad[i]);
                ck_assert(memcmp(id, untouched, sizeof(id)) == 0);
        }
        ck_assert_int_eq(trace_parse_trace_id(NULL, id), -EINVAL);
}
END_TEST

START_TEST(test_root_in_a_named_trace_is_sampled_by_ratio_not_forced)
{
        struct tracer *never = tracer_with_ratio(0.0), *always = tracer_with_ratio(1.0);
        struct tracer *half = tracer_with_ratio(0.5);
        uint8_t parent_id[SPAN_ID_SIZE], id[TRACE_ID_SIZE];
        char text[2 * TRACE_ID_SIZE + 1];
        unsigned sampled = 0;
        struct span *s;

        ck_assert_int_eq(trace_parse_trace_id(TRACE_ID, id), 0);
        s = span_start_root(always, "GET /x", SPAN_KIND_SERVER, id);
        trace_format_trace_id(span_context(s), text);
        ck_assert_str_eq(text, TRACE_ID);
        ck_assert(!span_parent_span_id(s, parent_id)); /* a root */
        ck_assert(trace_context_is_valid(span_context(s)));
        ck_assert_uint_eq(span_context(s)->flags & TRACE_FLAG_SAMPLED, TRACE_FLAG_SAMPLED);
        span_end(s);

        /* The daemon's ratio decides, not whoever named the trace. */
        s = span_start_root(never, "GET /x", SPAN_KIND_SERVER, id);
        ck_assert_uint_eq(span_context(s)->flags & TRACE_FLAG_SAMPLED, 0);
        span_end(s);
        for (unsigned i = 0; i < 4000; i++) {
                uint8_t random_trace[TRACE_ID_SIZE];
                struct span *r = span_start(NULL, "id source", SPAN_KIND_INTERNAL, NULL);

                memcpy(random_trace, span_context(r)->trace_id, TRACE_ID_SIZE);
                span_end(r);
                s = span_start_root(half, "GET /x", SPAN_KIND_SERVER, random_trace);
                if (span_context(s)->flags & TRACE_FLAG_SAMPLED)
                        sampled++;
                span_end(s);
        }
        ck_assert_uint_ge(sampled, 1600);
        ck_assert_uint_le(sampled, 2400);

        /* An all-zero id gets a random one. */
        memset(id, 0, sizeof(id));
        s = span_start_root(always, "GET /x", SPAN_KIND_SERVER, id);
        ck_assert(trace_context_is_valid(span_context(s)));
        span_end(s);

        tracer_free(never);
        tracer_free(always);
        tracer_free(half);
}
END_TEST

START_TEST(test_tracer_new_rejects_bad_options)
{
        struct tracer_options opts = {.service_name = "vigil-test", .sample_ratio = 1.5};
        struct tracer *t = NULL;

        ck_assert_int_eq(tracer_new(&opts, &t), -EINVAL);
        opts.sample_ratio = -0.1;
        ck_assert_int_eq(tracer_new(&opts, &t), -EINVAL);
        opts.sample_ratio = NAN;
        ck_assert_int_eq(tracer_new(&opts, &t), -EINVAL);
        opts.sample_ratio = 0.5;
        opts.flush_interval_ms = 24 * 3600 * 1000;
        ck_assert_int_eq(tracer_new(&opts, &t), -EINVAL);
        opts.flush_interval_ms = 0;
        opts.queue_capacity = TRACE_MAX_QUEUE_CAPACITY + 1;
        ck_assert_int_eq(tracer_new(&opts, &t), -EINVAL);
        opts.queue_capacity = 0;
        opts.batch_size = TRACE_MAX_BATCH_SIZE + 1;
        ck_assert_int_eq(tracer_new(&opts, &t), -EINVAL);
        ck_assert_ptr_null(t);
}
END_TEST

START_TEST(test_span_without_tracer_has_ids_and_records_nothing)
{
        struct span *s = span_start(NULL, "x", SPAN_KIND_INTERNAL, NULL);

        ck_assert(trace_context_is_valid(span_context(s)));
        ck_assert(!span_is_recording(s));
        span_set_attribute_string(s, "k", "v");
        span_set_attribute_int(s, "k", 1);
        span_set_attribute_double(s, "k", 1.0);
        span_set_attribute_bool(s, "k", true);
        span_set_status(s, SPAN_STATUS_ERROR, "boom");
        span_end(s);
}
END_TEST

START_TEST(test_functions_accept_null_span)
{
        uint8_t id[SPAN_ID_SIZE];

        span_set_attribute_string(NULL, "k", "v");
        span_set_attribute_int(NULL, "k", 1);
        span_set_attribute_double(NULL, "k", 1.0);
        span_set_attribute_bool(NULL, "k", true);
        span_set_status(NULL, SPAN_STATUS_OK, NULL);
        ck_assert(!trace_context_is_valid(span_context(NULL)));
        ck_assert(!span_parent_span_id(NULL, id));
        ck_assert(!span_is_recording(NULL));
        span_end(NULL);
        tracer_free(NULL);
        ck_assert_uint_eq(tracer_spans_dropped(NULL), 0);
}
END_TEST

START_TEST(test_current_span_nests_and_restores)
{
        struct span *outer = span_start(NULL, "outer", SPAN_KIND_SERVER, NULL);
        struct span *inner, *previous;
        uint8_t parent_id[SPAN_ID_SIZE];

        ck_assert_ptr_null(trace_current());
        ck_assert_ptr_null(trace_set_current(outer));
        ck_assert_ptr_eq(trace_current(), outer);

        inner = span_start(NULL, "inner", SPAN_KIND_CLIENT, NULL);
        ck_assert(span_parent_span_id(inner, parent_id));
        ck_assert_mem_eq(parent_id, span_context(outer)->span_id, SPAN_ID_SIZE);
        ck_assert_mem_eq(span_context(inner)->trace_id, span_context(outer)->trace_id,
                         TRACE_ID_SIZE);

        previous = trace_set_current(inner);
        ck_assert_ptr_eq(previous, outer);
        ck_assert_ptr_eq(trace_current(), inner);
        ck_assert_ptr_eq(trace_set_current(previous), inner);
        ck_assert_ptr_eq(trace_current(), outer);
        span_end(inner);

        ck_assert_ptr_eq(trace_set_current(NULL), outer);
        ck_assert_ptr_null(trace_current());
        span_end(outer);
}
END_TEST

START_TEST(test_ending_current_span_clears_it)
{
        struct span *s = span_start(NULL, "x", SPAN_KIND_SERVER, NULL);

        trace_set_current(s);
        span_end(s);
        ck_assert_ptr_null(trace_current());
}
END_TEST

static void *read_current(void *userdata)
{
        *(struct span **)userdata = trace_current();
        return NULL;
}

START_TEST(test_current_span_is_per_thread)
{
        struct span *s = span_start(NULL, "x", SPAN_KIND_SERVER, NULL);
        struct span *seen = s;
        pthread_t thread;

        trace_set_current(s);
        ck_assert_int_eq(pthread_create(&thread, NULL, read_current, &seen), 0);
        pthread_join(thread, NULL);
        ck_assert_ptr_null(seen);
        ck_assert_ptr_eq(trace_current(), s);
        trace_set_current(NULL);
        span_end(s);
}
END_TEST

/* ---- an in-process OTLP/HTTP collector ---- */

#define RECEIVER_MAX_REQUEST (16U << 20)

struct receiver {
        int fd;
        uint16_t port;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t changed;
        int status; /* answered to every request */
        bool hold;  /* keep requests unanswered until cleared */
        bool stop;
        unsigned n_requests;
        unsigned n_bad_requests;      /* not POST /v1/traces with JSON */
        struct json_object *spans;    /* every span received, in order */
        struct json_object *resource; /* of the last request */
        struct json_object *scope;
};

static void receiver_record(struct receiver *r, const char *head, const char *body)
{
        struct json_object *request = NULL, *rs, *ss, *spans;
        const char *error;
        /* Strict: a raw control character or bad escape is a bad request. */
        bool ok = strncmp(head, "POST /v1/traces HTTP/1.1\r\n", 26) == 0 &&
                  strcasestr(head, "\r\nContent-Type: application/json\r\n") &&
                  json_parse_object(body, strlen(body), 16, &request, &error) == 0;

        pthread_mutex_lock(&r->lock);
        r->n_requests++;
        if (ok && json_object_object_get_ex(request, "resourceSpans", &rs) &&
            json_object_array_length(rs) == 1 &&
            json_object_object_get_ex(json_object_array_get_idx(rs, 0), "scopeSpans", &ss) &&
            json_object_array_length(ss) == 1 &&
            json_object_object_get_ex(json_object_array_get_idx(ss, 0), "spans", &spans)) {
                for (size_t i = 0; i < json_object_array_length(spans); i++)
                        json_object_array_add(r->spans,
                                              json_object_get(json_object_array_get_idx(spans, i)));
                json_object_put(r->resource);
                json_object_put(r->scope);
                json_object_object_get_ex(json_object_array_get_idx(rs, 0), "resource",
                                          &r->resource);
                json_object_object_get_ex(json_object_array_get_idx(ss, 0), "scope", &r->scope);
                json_object_get(r->resource);
                json_object_get(r->scope);
        } else
                r->n_bad_requests++;
        pthread_cond_broadcast(&r->changed);
        pthread_mutex_unlock(&r->lock);
        json_object_put(request);
}

/* Read into buf until it holds n bytes; false on EOF, error or stop. */
static bool receiver_fill(struct receiver *r, int fd, char *buf, size_t *len, size_t n)
{
        while (*len < n) {
                struct pollfd p = {.fd = fd, .events = POLLIN};
                ssize_t k;
                bool stop;

                pthread_mutex_lock(&r->lock);
                stop = r->stop;
                pthread_mutex_unlock(&r->lock);
                if (stop)
                        return false;
                if (poll(&p, 1, 50) <= 0)
                        continue;
                k = recv(fd, buf + *len, RECEIVER_MAX_REQUEST - *len, 0);
                if (k <= 0)
                        return false;
                *len += (size_t)k;
        }
        return true;
}

static void receiver_serve(struct receiver *r, int fd)
{
        _cleanup_free_ char *buf = malloc(RECEIVER_MAX_REQUEST + 1);
        size_t len = 0;

        ck_assert_ptr_nonnull(buf);
        for (;;) {
                char *end, *cl, reply[160];
                size_t head_len, body_len = 0, total;
                int status, n;

                /* headers */
                for (;;) {
                        buf[len] = '\0';
                        end = strstr(buf, "\r\n\r\n");
                        if (end)
                                break;
                        if (len >= RECEIVER_MAX_REQUEST ||
                            !receiver_fill(r, fd, buf, &len, len + 1))
                                return;
                }
                head_len = (size_t)(end - buf) + 4;
                cl = strcasestr(buf, "\r\nContent-Length:");
                if (cl && cl < end)
                        body_len = strtoul(cl + 17, NULL, 10);
                total = head_len + body_len;
                if (total > RECEIVER_MAX_REQUEST || !receiver_fill(r, fd, buf, &len, total))
                        return;

                {
                        char saved = buf[total];

                        buf[total] = '\0';
                        end[2] = '\0'; /* head: request line and headers, each ending \r\n */
                        receiver_record(r, buf, buf + head_len);
                        buf[total] = saved;
                }

                pthread_mutex_lock(&r->lock);
                while (r->hold && !r->stop)
                        pthread_cond_wait(&r->changed, &r->lock);
                status = r->status;
                pthread_mutex_unlock(&r->lock);

                n = snprintf(reply, sizeof(reply),
                             "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                             "Content-Length: 2\r\n\r\n{}",
                             status);
                if (send(fd, reply, (size_t)n, MSG_NOSIGNAL) != n)
                        return;
                memmove(buf, buf + total, len - total);
                len -= total;
        }
}

static void *receiver_thread(void *userdata)
{
        struct receiver *r = userdata;

        for (;;) {
                struct pollfd p = {.fd = r->fd, .events = POLLIN};
                bool stop;
                int fd;

                pthread_mutex_lock(&r->lock);
                stop = r->stop;
                pthread_mutex_unlock(&r->lock);
                if (stop)
                        return NULL;
                if (poll(&p, 1, 50) <= 0)
                        continue;
                fd = accept(r->fd, NULL, NULL);
                if (fd < 0)
                        continue;
                receiver_serve(r, fd);
                close(fd);
        }
}

/* A listening socket on 127.0.0.1 with a kernel-chosen port. */
static int listen_loopback(uint16_t *ret_port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(listen(fd, 16), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
        *ret_port = ntohs(sa.sin_port);
        return fd;
}

static void receiver_start(struct receiver *r, int status)
{
        *r = (struct receiver){.status = status, .spans = json_object_new_array()};
        pthread_mutex_init(&r->lock, NULL);
        pthread_cond_init(&r->changed, NULL);
        r->fd = listen_loopback(&r->port);
        ck_assert_int_eq(pthread_create(&r->thread, NULL, receiver_thread, r), 0);
}

static void receiver_stop(struct receiver *r)
{
        pthread_mutex_lock(&r->lock);
        r->stop = true;
        pthread_cond_broadcast(&r->changed);
        pthread_mutex_unlock(&r->lock);
        pthread_join(r->thread, NULL);
        close(r->fd);
        json_object_put(r->spans);
        json_object_put(r->resource);
        json_object_put(r->scope);
        pthread_cond_destroy(&r->changed);
        pthread_mutex_destroy(&r->lock);
}

static void receiver_set_hold(struct receiver *r, bool hold)
{
        pthread_mutex_lock(&r->lock);
        r->hold = hold;
        pthread_cond_broadcast(&r->changed);
        pthread_mutex_unlock(&r->lock);
}

/* Wait (at most 20 s: a bound for a broken build, not a timing
 * assumption) until the receiver has seen n requests; returns the count. */
static unsigned receiver_wait_requests(struct receiver *r, unsigned n)
{
        struct timespec deadline;
        unsigned seen;

        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 20;
        pthread_mutex_lock(&r->lock);
        while (r->n_requests < n)
                if (pthread_cond_timedwait(&r->changed, &r->lock, &deadline) != 0)
                        break;
        seen = r->n_requests;
        pthread_mutex_unlock(&r->lock);
        return seen;
}

static size_t receiver_span_count(struct receiver *r)
{
        size_t n;

        pthread_mutex_lock(&r->lock);
        n = json_object_array_length(r->spans);
        pthread_mutex_unlock(&r->lock);
        return n;
}

/* Poll a tracer counter until it reaches want (at most 20 s). */
static uint64_t wait_counter(uint64_t (*counter)(const struct tracer *), const struct tracer *t,
                             uint64_t want)
{
        for (int i = 0; i < 2000; i++) {
                uint64_t v = counter(t);

                if (v >= want)
                        return v;
                usleep(10 * 1000);
        }
        return counter(t);
}

static struct tracer *exporting_tracer(uint16_t port, struct tracer_options opts)
{
        char endpoint[64];
        struct tracer *t = NULL;

        snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%u/v1/traces", port);
        opts.service_name = "vigil-test";
        opts.service_version = "1.2.3";
        opts.endpoint = endpoint;
        ck_assert_int_eq(tracer_new(&opts, &t), 0);
        return t;
}

static struct json_object *get(struct json_object *o, const char *key)
{
        struct json_object *v = NULL;

        ck_assert_msg(json_object_object_get_ex(o, key, &v), "missing %s in %s", key,
                      json_object_to_json_string(o));
        return v;
}

static const char *get_string(struct json_object *o, const char *key)
{
        struct json_object *v = get(o, key);

        ck_assert_msg(json_object_is_type(v, json_type_string), "%s is not a string", key);
        return json_object_get_string(v);
}

static bool is_lower_hex(const char *s, size_t len)
{
        if (strlen(s) != len)
                return false;
        for (size_t i = 0; i < len; i++)
                if (!strchr("0123456789abcdef", s[i]))
                        return false;
        return true;
}

/* The AnyValue of attribute key in array attributes, or NULL. */
static struct json_object *find_attribute(struct json_object *attributes, const char *key)
{
        for (size_t i = 0; i < json_object_array_length(attributes); i++) {
                struct json_object *kv = json_object_array_get_idx(attributes, i);

                if (strcmp(get_string(kv, "key"), key) == 0)
                        return get(kv, "value");
        }
        return NULL;
}

static struct json_object *find_span(struct json_object *spans, const char *name)
{
        for (size_t i = 0; i < json_object_array_length(spans); i++) {
                struct json_object *s = json_object_array_get_idx(spans, i);

                if (strcmp(get_string(s, "name"), name) == 0)
                        return s;
        }
        ck_abort_msg("no span named %s", name);
        return NULL;
}

START_TEST(test_exporter_posts_otlp_json)
{
        struct receiver r;
        struct tracer *t;
        struct span *root, *child;
        struct json_object *js_root, *js_child, *attributes, *v, *status;
        char trace_id[2 * TRACE_ID_SIZE + 1], span_id[2 * SPAN_ID_SIZE + 1];
        uint64_t start, end;

        receiver_start(&r, 200);
        /* A long flush interval and a large batch: only tracer_free()'s
         * flush sends anything. */
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0,
                                                             .batch_size = 100,
                                                             .flush_interval_ms = 600000});

        root = span_start(t, "GET /product/{id}", SPAN_KIND_SERVER, NULL);
        ck_assert(span_is_recording(root));
        span_set_attribute_string(root, "http.route", "/product/{id}");
        span_set_attribute_int(root, "http.response.status_code", 404);
        span_set_attribute_int(root, "big", INT64_MIN);
        span_set_attribute_double(root, "ratio", 0.25);
        span_set_attribute_bool(root, "cache.hit", true);
        span_set_status(root, SPAN_STATUS_ERROR, "not found");
        child = span_start(t, "SELECT", SPAN_KIND_CLIENT, span_context(root));
        span_set_attribute_string(child, "db.system", "postgresql");
        span_end(child);
        trace_format_trace_id(span_context(root), trace_id);
        trace_format_span_id(span_context(root), span_id);
        span_end(root);

        ck_assert_uint_eq(receiver_span_count(&r), 0);
        tracer_free(t);
        ck_assert_uint_eq(receiver_wait_requests(&r, 1), 1);
        ck_assert_uint_eq(r.n_bad_requests, 0);
        ck_assert_uint_eq(receiver_span_count(&r), 2);

        /* resource and scope */
        attributes = get(r.resource, "attributes");
        ck_assert_str_eq(get_string(find_attribute(attributes, "service.name"), "stringValue"),
                         "vigil-test");
        ck_assert_str_eq(get_string(find_attribute(attributes, "service.version"), "stringValue"),
                         "1.2.3");
        ck_assert_str_eq(
                get_string(find_attribute(attributes, "telemetry.sdk.language"), "stringValue"),
                "c");
        ck_assert_str_eq(
                get_string(find_attribute(attributes, "telemetry.sdk.name"), "stringValue"),
                "vigil");
        ck_assert_str_eq(get_string(r.scope, "name"), "vigil");

        /* spans: ids are lower-case hex; the child points at the root */
        js_root = find_span(r.spans, "GET /product/{id}");
        js_child = find_span(r.spans, "SELECT");
        ck_assert(is_lower_hex(get_string(js_root, "traceId"), 32));
        ck_assert(is_lower_hex(get_string(js_root, "spanId"), 16));
        ck_assert(is_lower_hex(get_string(js_child, "parentSpanId"), 16));
        ck_assert_str_eq(get_string(js_root, "traceId"), trace_id);
        ck_assert_str_eq(get_string(js_root, "spanId"), span_id);
        ck_assert_str_eq(get_string(js_child, "traceId"), trace_id);
        ck_assert_str_eq(get_string(js_child, "parentSpanId"), span_id);
        ck_assert(!json_object_object_get_ex(js_root, "parentSpanId", NULL));
        ck_assert_int_eq(json_object_get_int(get(js_root, "kind")), 2);
        ck_assert_int_eq(json_object_get_int(get(js_child, "kind")), 3);

        /* times are decimal strings of nanoseconds, end >= start */
        start = strtoull(get_string(js_root, "startTimeUnixNano"), NULL, 10);
        end = strtoull(get_string(js_root, "endTimeUnixNano"), NULL, 10);
        ck_assert_uint_gt(start, 1500000000ULL * 1000000000ULL);
        ck_assert_uint_ge(end, start);

        /* attributes are typed */
        attributes = get(js_root, "attributes");
        ck_assert_str_eq(get_string(find_attribute(attributes, "http.route"), "stringValue"),
                         "/product/{id}");
        ck_assert_str_eq(
                get_string(find_attribute(attributes, "http.response.status_code"), "intValue"),
                "404");
        ck_assert_str_eq(get_string(find_attribute(attributes, "big"), "intValue"),
                         "-9223372036854775808");
        v = get(find_attribute(attributes, "ratio"), "doubleValue");
        ck_assert(json_object_is_type(v, json_type_double));
        ck_assert_double_eq(json_object_get_double(v), 0.25);
        v = get(find_attribute(attributes, "cache.hit"), "boolValue");
        ck_assert(json_object_is_type(v, json_type_boolean));
        ck_assert(json_object_get_boolean(v));
        ck_assert_str_eq(
                get_string(find_attribute(get(js_child, "attributes"), "db.system"), "stringValue"),
                "postgresql");

        status = get(js_root, "status");
        ck_assert_int_eq(json_object_get_int(get(status, "code")), 2);
        ck_assert_str_eq(get_string(status, "message"), "not found");

        receiver_stop(&r);
}
END_TEST

START_TEST(test_attributes_are_bounded_and_valid_utf8)
{
        struct receiver r;
        struct tracer *t;
        struct span *s;
        struct json_object *js, *attributes;
        char long_value[3000], key[32];

        receiver_start(&r, 200);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0});
        s = span_start(t, "limits", SPAN_KIND_INTERNAL, NULL);

        /* 1 KiB of 'a' after which a 2-byte character would straddle the
         * limit, so it is cut before that character. */
        memset(long_value, 'a', sizeof(long_value));
        memcpy(long_value + TRACE_MAX_STRING_LEN - 1, "\xc3\xa9", 2);
        long_value[sizeof(long_value) - 1] = '\0';
        span_set_attribute_string(s, "long", long_value);
        span_set_attribute_string(s, "bad-utf8",
                                  "a\xff"
                                  "b\xc0\xaf"
                                  "c");
        span_set_attribute_int(s, "twice", 1);
        span_set_attribute_string(s, "twice", "last");
        for (int i = 0; i < TRACE_MAX_ATTRIBUTES + 8; i++) {
                snprintf(key, sizeof(key), "k%d", i);
                span_set_attribute_bool(s, key, true);
        }
        span_end(s);
        tracer_free(t);

        ck_assert_uint_eq(receiver_wait_requests(&r, 1), 1);
        ck_assert_uint_eq(r.n_bad_requests, 0);
        js = find_span(r.spans, "limits");
        attributes = get(js, "attributes");
        ck_assert_uint_eq(json_object_array_length(attributes), TRACE_MAX_ATTRIBUTES);
        /* 3 named + 29 of the k* fit; 11 k* are dropped and counted */
        ck_assert_int_eq(json_object_get_int(get(js, "droppedAttributesCount")),
                         3 + TRACE_MAX_ATTRIBUTES + 8 - TRACE_MAX_ATTRIBUTES);
        ck_assert_uint_eq(strlen(get_string(find_attribute(attributes, "long"), "stringValue")),
                          TRACE_MAX_STRING_LEN - 1);
        ck_assert_str_eq(get_string(find_attribute(attributes, "bad-utf8"), "stringValue"),
                         "a\xef\xbf\xbd"
                         "b\xef\xbf\xbd\xef\xbf\xbd"
                         "c");
        ck_assert_str_eq(get_string(find_attribute(attributes, "twice"), "stringValue"), "last");
        receiver_stop(&r);
}
END_TEST

START_TEST(test_strings_needing_json_escapes_arrive_intact)
{
        static const char tricky[] = "quote \" backslash \\ newline \n tab \t bell \a del \x7f";
        struct receiver r;
        struct tracer *t;
        struct span *s;
        struct json_object *js, *attributes, *v;

        receiver_start(&r, 200);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0});
        s = span_start(t, tricky, SPAN_KIND_INTERNAL, NULL);
        span_set_attribute_string(s, tricky, tricky);
        span_set_attribute_double(s, "nan", NAN);
        span_set_attribute_double(s, "minus-inf", -INFINITY);
        span_set_attribute_double(s, "tiny", 5e-324);
        span_set_status(s, SPAN_STATUS_ERROR, tricky);
        span_end(s);
        tracer_free(t);

        ck_assert_uint_eq(receiver_wait_requests(&r, 1), 1);
        ck_assert_uint_eq(r.n_bad_requests, 0);
        js = find_span(r.spans, tricky);
        attributes = get(js, "attributes");
        ck_assert_str_eq(get_string(find_attribute(attributes, tricky), "stringValue"), tricky);
        ck_assert_str_eq(get_string(get(js, "status"), "message"), tricky);
        ck_assert_str_eq(get_string(find_attribute(attributes, "nan"), "doubleValue"), "NaN");
        ck_assert_str_eq(get_string(find_attribute(attributes, "minus-inf"), "doubleValue"),
                         "-Infinity");
        v = get(find_attribute(attributes, "tiny"), "doubleValue");
        ck_assert_double_eq(json_object_get_double(v), 5e-324);
        receiver_stop(&r);
}
END_TEST

START_TEST(test_replacing_a_value_many_times_keeps_the_last_and_bounds_memory)
{
        char value[TRACE_MAX_STRING_LEN + 1], key[32];
        struct receiver r;
        struct tracer *t;
        struct span *s;
        struct json_object *js, *attributes;

        receiver_start(&r, 200);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0});
        s = span_start(t, "replaced", SPAN_KIND_INTERNAL, NULL);
        /* Every attribute at its largest, then each replaced 10 times over:
         * far more text than a span keeps, so it must reuse the space of
         * the values replaced, and nothing may be dropped. */
        for (int round = 0; round < 10; round++)
                for (int i = 0; i < TRACE_MAX_ATTRIBUTES; i++) {
                        memset(value, 'a' + round, TRACE_MAX_STRING_LEN);
                        value[TRACE_MAX_STRING_LEN] = '\0';
                        snprintf(value, 16, "%d/%d:", round, i);
                        value[strlen(value)] = 'a' + round;
                        snprintf(key, sizeof(key), "key-%d", i);
                        span_set_attribute_string(s, key, value);
                }
        span_end(s);
        tracer_free(t);

        ck_assert_uint_eq(receiver_wait_requests(&r, 1), 1);
        js = find_span(r.spans, "replaced");
        attributes = get(js, "attributes");
        ck_assert_uint_eq(json_object_array_length(attributes), TRACE_MAX_ATTRIBUTES);
        ck_assert(!json_object_object_get_ex(js, "droppedAttributesCount", NULL));
        for (int i = 0; i < TRACE_MAX_ATTRIBUTES; i++) {
                const char *got;
                char prefix[16];

                snprintf(key, sizeof(key), "key-%d", i);
                snprintf(prefix, sizeof(prefix), "9/%d:", i);
                got = get_string(find_attribute(attributes, key), "stringValue");
                ck_assert_uint_eq(strlen(got), TRACE_MAX_STRING_LEN);
                ck_assert_int_eq(strncmp(got, prefix, strlen(prefix)), 0);
                ck_assert_int_eq(got[TRACE_MAX_STRING_LEN - 1], 'j');
        }
        receiver_stop(&r);
}
END_TEST

START_TEST(test_unsampled_spans_are_not_exported)
{
        struct receiver r;
        struct tracer *t;
        struct trace_context sampled;
        struct span *s;

        receiver_start(&r, 200);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 0.0});
        for (int i = 0; i < 10; i++) {
                s = span_start(t, "unsampled", SPAN_KIND_SERVER, NULL);
                ck_assert(trace_context_is_valid(span_context(s)));
                ck_assert(!span_is_recording(s));
                span_end(s);
        }
        ck_assert_int_eq(trace_parse_traceparent("00-" TRACE_ID "-" SPAN_ID "-01", &sampled), 0);
        s = span_start(t, "sampled", SPAN_KIND_SERVER, &sampled);
        span_end(s);
        tracer_free(t);

        ck_assert_uint_eq(receiver_wait_requests(&r, 1), 1);
        ck_assert_uint_eq(receiver_span_count(&r), 1);
        find_span(r.spans, "sampled");
        receiver_stop(&r);
}
END_TEST

START_TEST(test_exporter_sends_full_batch_without_waiting_for_interval)
{
        struct receiver r;
        struct tracer *t;

        receiver_start(&r, 200);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0,
                                                             .batch_size = 3,
                                                             .flush_interval_ms = 600000});
        for (int i = 0; i < 3; i++)
                span_end(span_start(t, "s", SPAN_KIND_INTERNAL, NULL));
        ck_assert_uint_eq(wait_counter(tracer_spans_exported, t, 3), 3);
        ck_assert_uint_eq(receiver_wait_requests(&r, 1), 1);
        ck_assert_uint_eq(receiver_span_count(&r), 3);
        ck_assert_uint_eq(tracer_spans_dropped(t), 0);
        tracer_free(t);
        receiver_stop(&r);
}
END_TEST

enum { ENDERS = 4, SPANS_PER_ENDER = 1000 };

struct ender {
        struct tracer *tracer;
        int64_t first; /* the value of attribute n of its first span */
};

static void *end_spans(void *userdata)
{
        const struct ender *e = userdata;

        for (int64_t i = 0; i < SPANS_PER_ENDER; i++) {
                struct span *s = span_start(e->tracer, "s", SPAN_KIND_INTERNAL, NULL);

                span_set_attribute_int(s, "n", e->first + i);
                span_end(s);
        }
        return NULL;
}

START_TEST(test_spans_ended_on_many_threads_are_each_exported_once)
{
        enum { N = ENDERS * SPANS_PER_ENDER };
        static bool seen[N];
        struct ender enders[ENDERS];
        pthread_t threads[ENDERS];
        struct receiver r;
        struct tracer *t;

        receiver_start(&r, 200);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0,
                                                             .queue_capacity = N,
                                                             .batch_size = 64,
                                                             .flush_interval_ms = 20});
        for (int k = 0; k < ENDERS; k++) {
                enders[k] = (struct ender){.tracer = t, .first = (int64_t)k * SPANS_PER_ENDER};
                ck_assert_int_eq(pthread_create(&threads[k], NULL, end_spans, &enders[k]), 0);
        }
        for (int k = 0; k < ENDERS; k++)
                pthread_join(threads[k], NULL);
        ck_assert_uint_eq(wait_counter(tracer_spans_exported, t, N), N);
        ck_assert_uint_eq(tracer_spans_dropped(t), 0);
        tracer_free(t);

        /* Whole requests of valid JSON, each span in exactly one of them. */
        ck_assert_uint_eq(r.n_bad_requests, 0);
        ck_assert_uint_ge(r.n_requests, N / 64);
        ck_assert_uint_eq(receiver_span_count(&r), N);
        for (size_t i = 0; i < N; i++) {
                struct json_object *a = get(json_object_array_get_idx(r.spans, i), "attributes");
                long n = strtol(get_string(find_attribute(a, "n"), "intValue"), NULL, 10);

                ck_assert(n >= 0 && n < N);
                ck_assert_msg(!seen[n], "span %ld exported twice", n);
                seen[n] = true;
        }
        receiver_stop(&r);
}
END_TEST

START_TEST(test_exporter_sends_partial_batch_after_interval)
{
        struct receiver r;
        struct tracer *t;

        receiver_start(&r, 200);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0,
                                                             .batch_size = 100,
                                                             .flush_interval_ms = 20});
        span_end(span_start(t, "s", SPAN_KIND_INTERNAL, NULL));
        ck_assert_uint_eq(wait_counter(tracer_spans_exported, t, 1), 1);
        ck_assert_uint_eq(receiver_span_count(&r), 1);
        tracer_free(t);
        receiver_stop(&r);
}
END_TEST

START_TEST(test_rejected_batch_is_counted_as_dropped)
{
        struct receiver r;
        struct tracer *t;

        receiver_start(&r, 500);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0,
                                                             .batch_size = 4,
                                                             .flush_interval_ms = 20});
        for (int i = 0; i < 8; i++)
                span_end(span_start(t, "s", SPAN_KIND_INTERNAL, NULL));
        ck_assert_uint_eq(wait_counter(tracer_spans_dropped, t, 8), 8);
        ck_assert_uint_eq(tracer_spans_exported(t), 0);
        ck_assert_uint_ge(receiver_wait_requests(&r, 2), 2);

        /* and the exporter keeps going once the collector recovers */
        pthread_mutex_lock(&r.lock);
        r.status = 200;
        pthread_mutex_unlock(&r.lock);
        for (int i = 0; i < 4; i++)
                span_end(span_start(t, "s", SPAN_KIND_INTERNAL, NULL));
        ck_assert_uint_eq(wait_counter(tracer_spans_exported, t, 4), 4);
        tracer_free(t);
        receiver_stop(&r);
}
END_TEST

START_TEST(test_dead_endpoint_drops_without_blocking)
{
        enum { N = 10000 };
        struct tracer *t;
        uint16_t port;

        /* A port nobody listens on: connections are refused. */
        close(listen_loopback(&port));
        t = exporting_tracer(port, (struct tracer_options){.sample_ratio = 1.0,
                                                           .flush_interval_ms = 10,
                                                           .export_timeout_ms = 500});
        for (int i = 0; i < N; i++) {
                struct span *s = span_start(t, "s", SPAN_KIND_SERVER, NULL);

                span_set_attribute_int(s, "i", i);
                span_end(s);
        }
        /* every span is accounted for: dropped (queue full or export
         * failed), none exported */
        ck_assert_uint_eq(wait_counter(tracer_spans_dropped, t, N), N);
        ck_assert_uint_eq(tracer_spans_exported(t), 0);
        tracer_free(t);
}
END_TEST

START_TEST(test_full_queue_drops_and_counts_while_collector_hangs)
{
        struct receiver r;
        struct tracer *t;

        receiver_start(&r, 200);
        receiver_set_hold(&r, true);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0,
                                                             .queue_capacity = 4,
                                                             .batch_size = 2,
                                                             .flush_interval_ms = 600000,
                                                             .export_timeout_ms = 30000});

        /* A full batch goes out and the collector sits on it: the exporter
         * is now stuck in its request. */
        span_end(span_start(t, "s", SPAN_KIND_INTERNAL, NULL));
        span_end(span_start(t, "s", SPAN_KIND_INTERNAL, NULL));
        ck_assert_uint_eq(receiver_wait_requests(&r, 1), 1);

        /* span_end() does not wait for it: 4 fit in the queue, 6 are
         * dropped and counted. */
        for (int i = 0; i < 10; i++)
                span_end(span_start(t, "s", SPAN_KIND_INTERNAL, NULL));
        ck_assert_uint_eq(tracer_spans_dropped(t), 6);
        ck_assert_uint_eq(tracer_spans_exported(t), 0);

        /* Once the collector answers, the queue drains. */
        receiver_set_hold(&r, false);
        ck_assert_uint_eq(wait_counter(tracer_spans_exported, t, 6), 6);
        ck_assert_uint_eq(tracer_spans_dropped(t), 6);
        tracer_free(t);
        ck_assert_uint_eq(receiver_span_count(&r), 6);
        receiver_stop(&r);
}
END_TEST

START_TEST(test_counters_are_registered_as_metrics)
{
        struct metrics_registry *registry = NULL;
        struct tracer *t = NULL, *second = NULL;
        _cleanup_free_ char *text = NULL;
        struct tracer_options opts;
        struct receiver r;
        size_t len;

        ck_assert_int_eq(metrics_registry_new(&registry), 0);
        receiver_start(&r, 200);
        t = exporting_tracer(r.port, (struct tracer_options){.sample_ratio = 1.0,
                                                             .queue_capacity = 2,
                                                             .flush_interval_ms = 600000,
                                                             .metrics = registry});
        /* one tracer per registry */
        opts = (struct tracer_options){.service_name = "x", .metrics = registry};
        ck_assert_int_eq(tracer_new(&opts, &second), -EEXIST);

        for (int i = 0; i < 5; i++)
                span_end(span_start(t, "s", SPAN_KIND_INTERNAL, NULL));
        tracer_free(t); /* flushes the 2 queued */

        ck_assert_int_eq(metrics_render(registry, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        ck_assert_msg(strstr(text, "\nvigil_trace_spans_dropped_total 3\n"), "%s", text);
        ck_assert_msg(strstr(text, "\nvigil_trace_spans_exported_total 2\n"), "%s", text);
        metrics_registry_free(registry);
        receiver_stop(&r);
}
END_TEST

START_TEST(test_unsampled_span_and_its_children_are_never_recorded)
{
        struct span *quiet = span_start_unsampled("probe");
        struct span *previous = trace_set_current(quiet);
        struct span *child = span_start(NULL, "SELECT", SPAN_KIND_CLIENT, NULL);

        ck_assert(trace_context_is_valid(span_context(quiet)));
        ck_assert_int_eq(span_context(quiet)->flags & TRACE_FLAG_SAMPLED, 0);
        ck_assert(!span_is_recording(quiet));
        ck_assert(!span_is_recording(child));
        ck_assert(memcmp(span_context(child)->trace_id, span_context(quiet)->trace_id,
                         TRACE_ID_SIZE) == 0);
        span_end(child);
        trace_set_current(previous);
        span_end(quiet);
}
END_TEST

static Suite *trace_suite(void)
{
        Suite *s = suite_create("trace");
        TCase *tc;

        tc = tcase_create("traceparent");
        tcase_add_loop_test(tc, test_parse_accepts_valid_traceparent, 0,
                            (int)ELEMENTSOF(valid_traceparents));
        tcase_add_loop_test(tc, test_parse_rejects_malformed_traceparent, 0,
                            (int)ELEMENTSOF(invalid_traceparents));
        tcase_add_test(tc, test_parse_rejects_null);
        tcase_add_test(tc, test_unsampled_span_and_its_children_are_never_recorded);
        tcase_add_test(tc, test_format_round_trips_version_00);
        tcase_add_test(tc, test_format_writes_future_version_as_00);
        tcase_add_test(tc, test_generated_contexts_round_trip);
        tcase_add_test(tc, test_context_is_valid_requires_nonzero_ids);
        suite_add_tcase(s, tc);

        tc = tcase_create("spans");
        tcase_add_test(tc, test_ids_are_valid_and_unique_across_threads);
        tcase_add_test(tc, test_child_shares_trace_id_and_links_to_parent);
        tcase_add_test(tc, test_remote_parent_is_continued);
        tcase_add_test(tc, test_invalid_parent_starts_new_trace);
        tcase_add_test(tc, test_child_inherits_sampled_flag_from_parent);
        tcase_add_test(tc, test_new_roots_are_sampled_by_ratio);
        tcase_add_test(tc, test_root_in_a_named_trace_is_sampled_by_ratio_not_forced);
        tcase_add_test(tc, test_trace_id_parsing_takes_32_lower_case_hex_digits);
        tcase_add_test(tc, test_tracer_new_rejects_bad_options);
        tcase_add_test(tc, test_span_without_tracer_has_ids_and_records_nothing);
        tcase_add_test(tc, test_functions_accept_null_span);
        tcase_add_test(tc, test_current_span_nests_and_restores);
        tcase_add_test(tc, test_ending_current_span_clears_it);
        tcase_add_test(tc, test_current_span_is_per_thread);
        suite_add_tcase(s, tc);

        tc = tcase_create("exporter");
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_exporter_posts_otlp_json);
        tcase_add_test(tc, test_attributes_are_bounded_and_valid_utf8);
        tcase_add_test(tc, test_strings_needing_json_escapes_arrive_intact);
        tcase_add_test(tc, test_replacing_a_value_many_times_keeps_the_last_and_bounds_memory);
        tcase_add_test(tc, test_unsampled_spans_are_not_exported);
        tcase_add_test(tc, test_exporter_sends_full_batch_without_waiting_for_interval);
        tcase_add_test(tc, test_spans_ended_on_many_threads_are_each_exported_once);
        tcase_add_test(tc, test_exporter_sends_partial_batch_after_interval);
        tcase_add_test(tc, test_rejected_batch_is_counted_as_dropped);
        tcase_add_test(tc, test_dead_endpoint_drops_without_blocking);
        tcase_add_test(tc, test_full_queue_drops_and_counts_while_collector_hangs);
        tcase_add_test(tc, test_counters_are_registered_as_metrics);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(trace_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
