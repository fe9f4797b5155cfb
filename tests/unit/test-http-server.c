/* Unit tests for http-server: a real server on 127.0.0.1:0 per test, driven
 * by libcurl and, where curl is too polite (chunked overflows), by raw
 * sockets. */
#include <arpa/inet.h>
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http-server.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"
#include "trace.h"

/* ---- what handlers saw, for the test thread to check ---- */

struct ctx {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool slow_entered;
        bool slow_release;
        const char *ready_failing; /* NULL: ready */

        bool saw_span;
        char trace_id[2 * TRACE_ID_SIZE + 1];
        char span_id[2 * SPAN_ID_SIZE + 1];
        char parent_id[2 * SPAN_ID_SIZE + 1];
        bool has_parent;
        bool span_matches_request;

        int add_header_crlf, add_header_ctype, add_header_ok, second_reply;
        unsigned calls;
};

static struct ctx ctx;

static void handle_product(struct http_request *req, void *userdata)
{
        _cleanup_(json_object_putp) struct json_object *o = json_object_new_object();

        (void)userdata;
        json_object_object_add(o, "id", json_object_new_string(http_request_param(req, "id")));
        json_object_object_add(o, "route", json_object_new_string(http_request_route(req)));
        json_object_object_add(o, "path", json_object_new_string(http_request_path(req)));
        json_object_object_add(o, "method", json_object_new_string(http_request_method(req)));
        json_object_object_add(o, "missing",
                               http_request_param(req, "nope") ? json_object_new_boolean(1) : NULL);
        http_reply_json(req, 200, o);
}

static void handle_reserve(struct http_request *req, void *userdata)
{
        char buf[256];

        (void)userdata;
        (void)snprintf(buf, sizeof(buf), "%s/%s", http_request_param(req, "id"),
                       http_request_param(req, "what"));
        http_reply(req, 200, "text/plain", buf, strlen(buf));
}

static void handle_echo(struct http_request *req, void *userdata)
{
        _cleanup_(json_object_putp) struct json_object *body = NULL;

        (void)userdata;
        if (http_request_json(req, &body) < 0)
                return;
        http_reply_json(req, 200, body);
}

static void handle_raw(struct http_request *req, void *userdata)
{
        size_t len = 0;
        const char *body = http_request_body(req, &len);
        char buf[64];

        (void)userdata;
        (void)body;
        (void)snprintf(buf, sizeof(buf), "%zu", len);
        http_reply(req, 200, "text/plain", buf, strlen(buf));
}

static void handle_forgot(struct http_request *req, void *userdata)
{
        (void)req;
        (void)userdata;
}

static void handle_trace(struct http_request *req, void *userdata)
{
        struct span *cur = trace_current();
        uint8_t parent[SPAN_ID_SIZE];

        (void)userdata;
        pthread_mutex_lock(&ctx.lock);
        ctx.saw_span = cur != NULL;
        ctx.span_matches_request = cur == http_request_span(req);
        trace_format_trace_id(span_context(cur), ctx.trace_id);
        trace_format_span_id(span_context(cur), ctx.span_id);
        ctx.has_parent = span_parent_span_id(cur, parent);
        if (ctx.has_parent) {
                struct trace_context p = {0};
                memcpy(p.span_id, parent, SPAN_ID_SIZE);
                trace_format_span_id(&p, ctx.parent_id);
        }
        pthread_mutex_unlock(&ctx.lock);
        http_reply_empty(req, 204);
}

static void handle_headers(struct http_request *req, void *userdata)
{
        (void)userdata;
        ctx.add_header_crlf = http_reply_add_header(req, "X-Bad", "a\r\nSet-Cookie: x=1");
        ctx.add_header_ctype = http_reply_add_header(req, "content-type", "text/html");
        ctx.add_header_ok = http_reply_add_header(req, "X-Test", "yes");
        http_reply_error(req, 418, "teapot", "quote \" and <tag> and \\ and\nnewline");
        ctx.second_reply = http_reply_empty(req, 204);
}

static void handle_bearer(struct http_request *req, void *userdata)
{
        const char *t = http_request_bearer(req);

        (void)userdata;
        http_reply(req, 200, "text/plain", t ? t : "none", strlen(t ? t : "none"));
}

static void handle_slow(struct http_request *req, void *userdata)
{
        (void)userdata;
        pthread_mutex_lock(&ctx.lock);
        ctx.slow_entered = true;
        pthread_cond_broadcast(&ctx.cond);
        while (!ctx.slow_release)
                pthread_cond_wait(&ctx.cond, &ctx.lock);
        pthread_mutex_unlock(&ctx.lock);
        http_reply(req, 200, "text/plain", "done", 4);
}

/* /failure/{errno}: the reply for that errno from "db", with EIO also
 * counting as the database not answering. */
static void handle_failure(struct http_request *req, void *userdata)
{
        (void)userdata;
        http_reply_dependency_error(req, -atoi(http_request_param(req, "errno")), "db",
                                    (const int[]){-EIO, 0});
}

static int ready(void *userdata, const char **ret_failing)
{
        (void)userdata;
        if (!ctx.ready_failing)
                return 0;
        *ret_failing = ctx.ready_failing;
        return -ECONNREFUSED;
}

static const struct http_route routes[] = {
        {"GET", "/product/{id}", handle_product},
        {"DELETE", "/product/{id}", handle_product},
        {"POST", "/product/{id}/{what}", handle_reserve},
        {"POST", "/echo", handle_echo},
        {"POST", "/raw", handle_raw},
        {"GET", "/forgot", handle_forgot},
        {"GET", "/trace", handle_trace},
        {"GET", "/headers", handle_headers},
        {"GET", "/bearer", handle_bearer},
        {"GET", "/slow", handle_slow},
        {"GET", "/failure/{errno}", handle_failure},
};

/* ---- fixture ---- */

static struct metrics_registry *registry;
static struct http_server *server;
static uint16_t port;

#define LIMITS_PER_CLIENT       4
#define LIMITS_HEADER_TIMEOUT_S 1

static void start_server_with(struct http_server_options opts)
{

        ck_assert_int_eq(metrics_registry_new(&registry), 0);
        opts.metrics = registry;
        ck_assert_int_eq(http_server_new(&opts, routes, ELEMENTSOF(routes), &server), 0);
        ck_assert_int_eq(http_server_start(server), 0);
        port = http_server_port(server);
        ck_assert_uint_gt(port, 0);
}

static void start_server(size_t max_body, bool access_log)
{
        start_server_with((struct http_server_options){
                .listen = "127.0.0.1:0",
                .listen_fd = -1,
                .service_name = "vigil-test",
                .max_body = max_body,
                .ready = ready,
                .userdata = &ctx,
                .access_log = access_log,
        });
}

static void setup(void)
{
        memset(&ctx, 0, sizeof(ctx));
        pthread_mutex_init(&ctx.lock, NULL);
        pthread_cond_init(&ctx.cond, NULL);
        log_set_max_level(LOG_CRIT); /* the 500 tests log on purpose */
        start_server(0, false);
}

static void setup_access_log(void)
{
        memset(&ctx, 0, sizeof(ctx));
        pthread_mutex_init(&ctx.lock, NULL);
        pthread_cond_init(&ctx.cond, NULL);
        start_server(0, true);
}

static void setup_small_body(void)
{
        memset(&ctx, 0, sizeof(ctx));
        pthread_mutex_init(&ctx.lock, NULL);
        pthread_cond_init(&ctx.cond, NULL);
        log_set_max_level(LOG_CRIT);
        start_server(1024, false);
}

static void setup_limits(void)
{
        memset(&ctx, 0, sizeof(ctx));
        pthread_mutex_init(&ctx.lock, NULL);
        pthread_cond_init(&ctx.cond, NULL);
        log_set_max_level(LOG_CRIT);
        start_server_with((struct http_server_options){
                .listen = "127.0.0.1:0",
                .listen_fd = -1,
                .service_name = "vigil-test",
                .max_connections_per_client = LIMITS_PER_CLIENT,
                .header_timeout_s = LIMITS_HEADER_TIMEOUT_S,
                .userdata = &ctx,
        });
}

static void teardown(void)
{
        http_server_free(server);
        server = NULL;
        metrics_registry_free(registry);
        registry = NULL;
}

/* ---- client ---- */

struct resp {
        long status;
        char *body;
        size_t len;
        char *headers;
        size_t hlen;
};

struct growbuf {
        char *data;
        size_t len;
};

static size_t append_cb(char *data, size_t size, size_t n, void *userdata)
{
        struct growbuf *b = userdata;
        size_t add = size * n;
        char *p = realloc(b->data, b->len + add + 1);

        if (!p)
                return 0;
        memcpy(p + b->len, data, add);
        b->len += add;
        p[b->len] = '\0';
        b->data = p;
        return add;
}

static void resp_done(struct resp *r)
{
        free(r->body);
        free(r->headers);
        memset(r, 0, sizeof(*r));
}

/* Perform a request; returns curl's result, and fills *ret on CURLE_OK. */
static CURLcode try_request(const char *method, const char *path, const char *const *headers,
                            const char *body, size_t len, struct resp *ret)
{
        CURL *c = curl_easy_init();
        struct curl_slist *list = NULL;
        struct growbuf b = {0}, h = {0};
        char url[512];
        CURLcode cc;

        ck_assert_ptr_nonnull(c);
        (void)snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", port, path);
        curl_easy_setopt(c, CURLOPT_URL, url);
        if (strcmp(method, "HEAD") == 0)
                curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
        else
                curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
        if (body) {
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
        }
        for (const char *const *hp = headers; hp && *hp; hp++)
                list = curl_slist_append(list, *hp);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, append_cb);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, append_cb);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);

        cc = curl_easy_perform(c);
        memset(ret, 0, sizeof(*ret));
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &ret->status);
        ret->body = b.data ? b.data : strdup("");
        ret->len = b.len;
        ret->headers = h.data ? h.data : strdup("");
        ret->hlen = h.len;
        curl_slist_free_all(list);
        curl_easy_cleanup(c);
        if (cc != CURLE_OK)
                resp_done(ret);
        return cc;
}

static void request(const char *method, const char *path, const char *const *headers,
                    const char *body, size_t len, struct resp *ret)
{
        CURLcode cc = try_request(method, path, headers, body, len, ret);

        ck_assert_msg(cc == CURLE_OK, "%s %s: %s", method, path, curl_easy_strerror(cc));
}

static void get(const char *path, struct resp *ret)
{
        request("GET", path, NULL, NULL, 0, ret);
}

/* The error code of a JSON error body, or "" (static buffer). */
static const char *error_code(const struct resp *r)
{
        static char code[128];
        struct json_object *o = json_tokener_parse(r->body), *e = NULL, *c = NULL;

        code[0] = '\0';
        if (o && json_object_object_get_ex(o, "error", &e) &&
            json_object_object_get_ex(e, "code", &c))
                (void)snprintf(code, sizeof(code), "%s", json_object_get_string(c));
        json_object_put(o);
        return code;
}

static bool has_header(const struct resp *r, const char *line)
{
        return strcasestr(r->headers, line) != NULL;
}

/* Wait (up to 10 s) until no request is in flight: the access log line and
 * the metrics of a request are written when it completes, which may be just
 * after the client has its answer. */
static void wait_idle(void)
{
        for (int i = 0; i < 1000; i++) {
                char *text = NULL;
                size_t len;
                bool idle;

                ck_assert_int_eq(metrics_render(registry, METRICS_FORMAT_PROMETHEUS, &text, &len),
                                 0);
                idle = strstr(text, "vigil_http_requests_in_flight 0\n") != NULL;
                free(text);
                if (idle)
                        return;
                usleep(10000);
        }
        ck_abort_msg("requests still in flight after 10 s");
}

/* Send data on a fresh connection and read until the server closes it
 * (or 10 s pass). Returns the malloc()ed response; *ret_sent_all tells
 * whether every byte could be written. */
static char *raw_exchange(const char *data, size_t len, bool *ret_sent_all)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
        struct timeval tv = {.tv_sec = 10};
        struct growbuf b = {0};
        size_t off = 0;
        int fd;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

        while (off < len) {
                ssize_t n = send(fd, data + off, len - off, MSG_NOSIGNAL);
                if (n <= 0)
                        break;
                off += (size_t)n;
        }
        *ret_sent_all = off == len;

        for (;;) {
                char buf[4096];
                ssize_t n = recv(fd, buf, sizeof(buf), 0);
                if (n <= 0)
                        break;
                append_cb(buf, 1, (size_t)n, &b);
        }
        close(fd);
        return b.data ? b.data : strdup("");
}

/* ---- tests ---- */

START_TEST(test_route_params_reach_handler)
{
        struct resp r;

        get("/product/42", &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert(has_header(&r, "Content-Type: application/json"));
        ck_assert_str_eq(r.body,
                         "{\"id\":\"42\",\"route\":\"/product/{id}\",\"path\":\"/product/42\","
                         "\"method\":\"GET\",\"missing\":null}");
        resp_done(&r);

        request("POST", "/product/7/reserve", NULL, "", 0, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_str_eq(r.body, "7/reserve");
        resp_done(&r);
}
END_TEST

START_TEST(test_unknown_path_is_404_json_without_trailing_slash_magic)
{
        const char *paths[] = {"/nope", "/product/42/", "/product", "/product//x", "/", "/health/"};
        struct resp r;

        for (size_t i = 0; i < ELEMENTSOF(paths); i++) {
                get(paths[i], &r);
                ck_assert_msg(r.status == 404, "%s: %ld", paths[i], r.status);
                ck_assert(has_header(&r, "Content-Type: application/json"));
                ck_assert_str_eq(error_code(&r), "not_found");
                resp_done(&r);
        }
}
END_TEST

START_TEST(test_known_path_other_method_is_405_with_allow)
{
        struct resp r;

        request("PUT", "/product/42", NULL, "x", 1, &r);
        ck_assert_int_eq(r.status, 405);
        ck_assert_str_eq(error_code(&r), "method_not_allowed");
        ck_assert(has_header(&r, "Allow: GET, DELETE\r\n"));
        resp_done(&r);

        /* HEAD is not special. */
        request("HEAD", "/health", NULL, NULL, 0, &r);
        ck_assert_int_eq(r.status, 405);
        ck_assert(has_header(&r, "Allow: GET\r\n"));
        resp_done(&r);
}
END_TEST

START_TEST(test_body_over_max_body_by_content_length_is_413)
{
        char *big = calloc(1, 64 * 1024 + 1);
        struct resp r;

        ck_assert_ptr_nonnull(big);
        memset(big, 'a', 64 * 1024 + 1);
        request("POST", "/raw", NULL, big, 64 * 1024 + 1, &r);
        ck_assert_int_eq(r.status, 413);
        ck_assert_str_eq(error_code(&r), "payload_too_large");
        resp_done(&r);

        /* Exactly max_body is fine. */
        request("POST", "/raw", NULL, big, 64 * 1024, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_str_eq(r.body, "65536");
        resp_done(&r);
        free(big);
}
END_TEST

static char *chunked_request(size_t n_chunks, size_t chunk_size, size_t *ret_len)
{
        const char *head = "POST /raw HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
                           "Connection: close\r\n\r\n";
        size_t cap = strlen(head) + n_chunks * (chunk_size + 32) + 16, len;
        char *buf = malloc(cap);

        ck_assert_ptr_nonnull(buf);
        len = (size_t)sprintf(buf, "%s", head);
        for (size_t i = 0; i < n_chunks; i++) {
                len += (size_t)sprintf(buf + len, "%zx\r\n", chunk_size);
                memset(buf + len, 'b', chunk_size);
                len += chunk_size;
                len += (size_t)sprintf(buf + len, "\r\n");
        }
        len += (size_t)sprintf(buf + len, "0\r\n\r\n");
        *ret_len = len;
        return buf;
}

START_TEST(test_chunked_body_over_max_body_is_413)
{
        size_t len;
        char *req = chunked_request(3, 1000, &len), *resp;
        bool sent_all;

        resp = raw_exchange(req, len, &sent_all);
        ck_assert_msg(strncmp(resp, "HTTP/1.1 413", 12) == 0, "%s", resp);
        ck_assert_ptr_nonnull(strstr(resp, "\"code\":\"payload_too_large\""));
        ck_assert_ptr_nonnull(strcasestr(resp, "Content-Type: application/json"));
        free(resp);
        free(req);

        /* Within the limit the same framing works. */
        req = chunked_request(1, 1000, &len);
        resp = raw_exchange(req, len, &sent_all);
        ck_assert_msg(strncmp(resp, "HTTP/1.1 200", 12) == 0, "%s", resp);
        free(resp);
        free(req);
}
END_TEST

START_TEST(test_chunked_body_far_over_max_body_closes_connection)
{
        size_t len;
        char *req = chunked_request(160, 16 * 1024, &len), *resp; /* 2.5 MiB */
        bool sent_all;

        resp = raw_exchange(req, len, &sent_all);
        ck_assert_msg(resp[0] == '\0', "got a response: %.40s", resp);
        free(resp);
        free(req);
}
END_TEST

START_TEST(test_oversized_headers_are_431_json)
{
        char *big = malloc(20 * 1024);
        const char *headers[] = {big, NULL};
        struct resp r;

        ck_assert_ptr_nonnull(big);
        strcpy(big, "X-Big: ");
        memset(big + 7, 'h', 20 * 1024 - 8);
        big[20 * 1024 - 1] = '\0';
        request("GET", "/health", headers, NULL, 0, &r);
        ck_assert_int_eq(r.status, 431);
        ck_assert(has_header(&r, "Content-Type: application/json"));
        ck_assert_str_eq(error_code(&r), "headers_too_large");
        resp_done(&r);
        free(big);
}
END_TEST

START_TEST(test_headers_beyond_connection_memory_are_refused_and_counted)
{
        size_t size = 200 * 1024;
        char *big = malloc(size);
        const char *headers[] = {big, NULL};
        char *text = NULL;
        size_t len;
        struct resp r;
        CURLcode cc;

        ck_assert_ptr_nonnull(big);
        strcpy(big, "X-Big: ");
        memset(big + 7, 'h', size - 8);
        big[size - 1] = '\0';
        /* libmicrohttpd answers 431 by itself (the client may see a reset
         * instead): never a crash, never a leak, and the request still
         * shows up in the metrics. */
        cc = try_request("GET", "/health", headers, NULL, 0, &r);
        if (cc == CURLE_OK) {
                ck_assert_int_ge(r.status, 400);
                resp_done(&r);
        }
        free(big);

        get("/health", &r);
        ck_assert_int_eq(r.status, 200);
        resp_done(&r);
        wait_idle();
        ck_assert_int_eq(metrics_render(registry, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        ck_assert_msg(strstr(text, "vigil_http_requests_total{route=\"unmatched\",method=\"OTHER\","
                                   "code=\"431\"} 1"),
                      "%s", text);
        free(text);
}
END_TEST

START_TEST(test_request_json_rejections_are_400_with_json_util_codes)
{
        static const struct {
                const char *body;
                const char *code;
        } cases[] = {
                {"{\"a\":", "invalid_json"},
                {"", "invalid_json"},
                {"{} x", "invalid_json"},
                {"{\"a\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}", "too_deep"},
                {"{\"a\":\"\xff\xfe\"}", "invalid_utf8"},
                {"[1,2]", "not_an_object"},
        };
        const char *json_ct[] = {"Content-Type: application/json; charset=utf-8", NULL};
        struct resp r;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                request("POST", "/echo", json_ct, cases[i].body, strlen(cases[i].body), &r);
                ck_assert_msg(r.status == 400, "case %zu: %ld", i, r.status);
                ck_assert_str_eq(error_code(&r), cases[i].code);
                resp_done(&r);
        }

        request("POST", "/echo", json_ct, "{\"x\":1}", 7, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_str_eq(r.body, "{\"x\":1}");
        resp_done(&r);
}
END_TEST

START_TEST(test_request_json_with_other_content_type_is_415)
{
        const char *ct[] = {"Content-Type: text/plain", NULL};
        const char *ct2[] = {"Content-Type: application/jsonx", NULL};
        struct resp r;

        request("POST", "/echo", ct, "{}", 2, &r);
        ck_assert_int_eq(r.status, 415);
        ck_assert_str_eq(error_code(&r), "unsupported_media_type");
        resp_done(&r);

        request("POST", "/echo", ct2, "{}", 2, &r);
        ck_assert_int_eq(r.status, 415);
        resp_done(&r);
}
END_TEST

START_TEST(test_content_type_json_is_followed_only_by_parameters)
{
        const char *ct[] = {"Content-Type: application/json x", NULL};
        struct resp r;

        /* A media type is followed by nothing or by ";" parameters. */
        request("POST", "/echo", ct, "{}", 2, &r);
        ck_assert_int_eq(r.status, 415);
        resp_done(&r);

        ck_assert(http_content_type_is_json(NULL));
        ck_assert(http_content_type_is_json("application/json"));
        ck_assert(http_content_type_is_json(" Application/JSON \t; charset=utf-8"));
        ck_assert(http_content_type_is_json("application/json;"));
        ck_assert(!http_content_type_is_json("application/json x"));
        ck_assert(!http_content_type_is_json("application/json json"));
        ck_assert(!http_content_type_is_json("application/json5"));
        ck_assert(!http_content_type_is_json(""));
}
END_TEST

START_TEST(test_handler_without_reply_gets_500_json)
{
        struct resp r;

        get("/forgot", &r);
        ck_assert_int_eq(r.status, 500);
        ck_assert(has_header(&r, "Content-Type: application/json"));
        ck_assert_str_eq(error_code(&r), "internal");
        resp_done(&r);
}
END_TEST

START_TEST(test_dependency_errors_are_503_to_retry_or_500)
{
        static const int unavailable[] = {ETIMEDOUT, ECONNREFUSED, EPIPE, EIO};
        char path[64];
        struct resp r;

        for (size_t i = 0; i < ELEMENTSOF(unavailable); i++) {
                snprintf(path, sizeof(path), "/failure/%d", unavailable[i]);
                get(path, &r);
                ck_assert_int_eq(r.status, 503);
                ck_assert(has_header(&r, "Retry-After: 1"));
                ck_assert_str_eq(error_code(&r), "dependency_unavailable");
                ck_assert_ptr_nonnull(strstr(r.body, "db is not answering"));
                resp_done(&r);
        }
        snprintf(path, sizeof(path), "/failure/%d", EINVAL);
        get(path, &r);
        ck_assert_int_eq(r.status, 500);
        ck_assert(!has_header(&r, "Retry-After"));
        ck_assert_str_eq(error_code(&r), "internal");
        resp_done(&r);
}
END_TEST

START_TEST(test_reply_headers_are_validated_and_error_is_escaped)
{
        struct json_object *o, *e, *m;
        struct resp r;

        get("/headers", &r);
        ck_assert_int_eq(r.status, 418);
        ck_assert_int_eq(ctx.add_header_crlf, -EINVAL);
        ck_assert_int_eq(ctx.add_header_ctype, -EINVAL);
        ck_assert_int_eq(ctx.add_header_ok, 0);
        ck_assert_int_eq(ctx.second_reply, -EALREADY);
        ck_assert(has_header(&r, "X-Test: yes\r\n"));
        ck_assert(!has_header(&r, "Set-Cookie"));
        o = json_tokener_parse(r.body);
        ck_assert_ptr_nonnull(o);
        ck_assert(json_object_object_get_ex(o, "error", &e));
        ck_assert(json_object_object_get_ex(e, "message", &m));
        ck_assert_str_eq(json_object_get_string(m), "quote \" and <tag> and \\ and\nnewline");
        json_object_put(o);
        resp_done(&r);
}
END_TEST

START_TEST(test_bearer_token_parsing)
{
        static const struct {
                const char *header;
                const char *token;
        } cases[] = {
                {"Authorization: Bearer abc.def-ghi", "abc.def-ghi"},
                {"Authorization: bearer  tok", "tok"},
                {"Authorization: Basic dXNlcjpwdw==", "none"},
                {"Authorization: Bearer", "none"},
                {"Authorization: Bearertok", "none"},
                {"Authorization: Bearer a b", "none"},
                {NULL, "none"},
        };
        struct resp r;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                const char *h[] = {cases[i].header, NULL};
                request("GET", "/bearer", h, NULL, 0, &r);
                ck_assert_int_eq(r.status, 200);
                ck_assert_msg(strcmp(r.body, cases[i].token) == 0, "case %zu: %s", i, r.body);
                resp_done(&r);
        }
}
END_TEST

START_TEST(test_health_is_200_ok)
{
        struct resp r;

        get("/health", &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert(has_header(&r, "Content-Type: application/json"));
        ck_assert_str_eq(r.body, "{\"status\":\"ok\"}");
        resp_done(&r);
}
END_TEST

START_TEST(test_ready_reports_failing_dependency_with_503)
{
        struct resp r;

        get("/ready", &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_str_eq(r.body, "{\"status\":\"ready\"}");
        resp_done(&r);

        ctx.ready_failing = "redis";
        get("/ready", &r);
        ck_assert_int_eq(r.status, 503);
        ck_assert(has_header(&r, "Content-Type: application/json"));
        ck_assert_str_eq(r.body, "{\"status\":\"unavailable\",\"failing\":\"redis\",\"error\":{"
                                 "\"code\":\"dependency_unavailable\",\"message\":\"redis is not "
                                 "answering\"}}");
        resp_done(&r);
}
END_TEST

START_TEST(test_metrics_count_route_templates_and_honour_accept)
{
        const char *om[] = {"Accept: application/openmetrics-text; version=1.0.0", NULL};
        struct resp r;

        get("/product/42", &r);
        resp_done(&r);
        get("/product/43", &r);
        resp_done(&r);
        get("/nope/123", &r);
        resp_done(&r);
        request("BREW", "/product/1", NULL, NULL, 0, &r);
        resp_done(&r);
        wait_idle();

        get("/metrics", &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert(has_header(&r, "Content-Type: text/plain; version=0.0.4"));
        ck_assert_msg(strstr(r.body, "vigil_http_requests_total{route=\"/product/{id}\",method="
                                     "\"GET\",code=\"200\"} 2"),
                      "%s", r.body);
        ck_assert(strstr(r.body, "vigil_http_requests_total{route=\"unmatched\",method=\"GET\","
                                 "code=\"404\"} 1"));
        ck_assert(strstr(r.body, "vigil_http_requests_total{route=\"/product/{id}\",method="
                                 "\"OTHER\",code=\"405\"} 1"));
        ck_assert(strstr(r.body, "vigil_http_request_duration_seconds_count{route=\"/product/"
                                 "{id}\",method=\"GET\"} 2"));
        ck_assert(!strstr(r.body, "/product/42"));
        ck_assert(!strstr(r.body, "/nope"));
        /* The scrape itself is in flight while rendering. */
        ck_assert(strstr(r.body, "vigil_http_requests_in_flight 1"));
        resp_done(&r);

        request("GET", "/metrics", om, NULL, 0, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert(has_header(&r, "Content-Type: application/openmetrics-text"));
        ck_assert_uint_ge(r.len, 6);
        ck_assert_str_eq(r.body + r.len - 6, "# EOF\n");
        resp_done(&r);
}
END_TEST

START_TEST(test_traceparent_is_continued_with_new_span)
{
        const char *tp[] = {"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                            NULL};
        struct resp r;

        request("GET", "/trace", tp, NULL, 0, &r);
        ck_assert_int_eq(r.status, 204);
        resp_done(&r);
        ck_assert(ctx.saw_span);
        ck_assert(ctx.span_matches_request);
        ck_assert_str_eq(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        ck_assert_str_ne(ctx.span_id, "00f067aa0ba902b7");
        ck_assert_str_ne(ctx.span_id, "0000000000000000");
        ck_assert(ctx.has_parent);
        ck_assert_str_eq(ctx.parent_id, "00f067aa0ba902b7");
}
END_TEST

START_TEST(test_malformed_traceparent_starts_new_trace)
{
        const char *tp[] = {"traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                            NULL};
        struct resp r;

        request("GET", "/trace", tp, NULL, 0, &r);
        ck_assert_int_eq(r.status, 204);
        resp_done(&r);
        ck_assert(ctx.saw_span);
        ck_assert_str_ne(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        ck_assert_str_ne(ctx.trace_id, "00000000000000000000000000000000");
        ck_assert(!ctx.has_parent);

        get("/trace", &r);
        resp_done(&r);
        ck_assert(ctx.saw_span);
        ck_assert(!ctx.has_parent);
}
END_TEST

static void *slow_client(void *arg)
{
        struct resp *r = arg;
        if (try_request("GET", "/slow", NULL, NULL, 0, r) != CURLE_OK)
                r->status = -1;
        return NULL;
}

struct drain_args {
        unsigned timeout_ms;
        bool done;
};

static void *drainer(void *arg)
{
        struct drain_args *a = arg;
        http_server_drain(server, a->timeout_ms);
        pthread_mutex_lock(&ctx.lock);
        a->done = true;
        pthread_cond_broadcast(&ctx.cond);
        pthread_mutex_unlock(&ctx.lock);
        return NULL;
}

START_TEST(test_drain_waits_for_in_flight_request_and_health_reports_hung_handler)
{
        struct drain_args da = {.timeout_ms = 30000};
        pthread_t client, drain;
        struct resp r = {0};
        char *text = NULL;
        size_t len;

        ck_assert(http_server_is_healthy(server, 1));

        ck_assert_int_eq(pthread_create(&client, NULL, slow_client, &r), 0);
        pthread_mutex_lock(&ctx.lock);
        while (!ctx.slow_entered)
                pthread_cond_wait(&ctx.cond, &ctx.lock);
        pthread_mutex_unlock(&ctx.lock);

        /* The handler has been running for at least 2 ms. */
        usleep(2000);
        ck_assert(!http_server_is_healthy(server, 1000));
        ck_assert(http_server_is_healthy(server, 3600 * USEC_PER_SEC));

        ck_assert_int_eq(metrics_render(registry, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        ck_assert(strstr(text, "vigil_http_requests_in_flight 1"));
        free(text);

        ck_assert_int_eq(pthread_create(&drain, NULL, drainer, &da), 0);
        /* Drain cannot finish while the handler is blocked. */
        usleep(100000);
        pthread_mutex_lock(&ctx.lock);
        ck_assert(!da.done);
        ctx.slow_release = true;
        pthread_cond_broadcast(&ctx.cond);
        pthread_mutex_unlock(&ctx.lock);

        pthread_join(drain, NULL);
        pthread_join(client, NULL);
        ck_assert(da.done);
        ck_assert_int_eq(r.status, 200);
        ck_assert_str_eq(r.body, "done");
        ck_assert(has_header(&r, "Connection: close"));
        resp_done(&r);

        ck_assert(http_server_is_healthy(server, 1));
        ck_assert_int_eq(metrics_render(registry, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        ck_assert_msg(strstr(text, "vigil_http_requests_in_flight 0"), "%s", text);
        ck_assert(strstr(text, "vigil_http_requests_total{route=\"/slow\",method=\"GET\","
                               "code=\"200\"} 1"));
        free(text);

        /* Draining again, and freeing after, are harmless. */
        http_server_drain(server, 0);
        ck_assert_uint_eq(http_server_port(server), 0);
}
END_TEST

/* ---- the intercept ([faults]) and the hold ---- */

struct intercept_state {
        unsigned delay_ms;
        bool fail;
        unsigned calls;
        char last_route[64];
};

static struct intercept_state intercepted;

static void intercept(void *userdata, const char *route, unsigned *ret_delay_ms, bool *ret_fail)
{
        (void)userdata;
        pthread_mutex_lock(&ctx.lock);
        intercepted.calls++;
        snprintf(intercepted.last_route, sizeof(intercepted.last_route), "%s", route);
        *ret_delay_ms = intercepted.delay_ms;
        *ret_fail = intercepted.fail;
        pthread_cond_broadcast(&ctx.cond);
        pthread_mutex_unlock(&ctx.lock);
}

static void setup_intercept(void)
{
        memset(&ctx, 0, sizeof(ctx));
        memset(&intercepted, 0, sizeof(intercepted));
        pthread_mutex_init(&ctx.lock, NULL);
        pthread_cond_init(&ctx.cond, NULL);
        log_set_max_level(LOG_CRIT);
        start_server_with((struct http_server_options){
                .listen = "127.0.0.1:0",
                .listen_fd = -1,
                .service_name = "vigil-test",
                .ready = ready,
                .userdata = &ctx,
                .intercept = intercept,
        });
}

START_TEST(test_intercept_fails_program_routes_only_and_counts_them)
{
        static const char *const builtins[] = {"/health", "/ready", "/metrics"};
        struct resp r = {0};
        char *text = NULL;
        size_t len;

        intercepted.fail = true;
        get("/product/42", &r);
        ck_assert_int_eq(r.status, 503);
        ck_assert_str_eq(error_code(&r), "unavailable");
        ck_assert(has_header(&r, "Retry-After: 1"));
        resp_done(&r);
        ck_assert_uint_eq(intercepted.calls, 1);
        ck_assert_str_eq(intercepted.last_route, "/product/{id}");

        for (size_t i = 0; i < ELEMENTSOF(builtins); i++) {
                get(builtins[i], &r);
                ck_assert_int_eq(r.status, 200);
                resp_done(&r);
        }
        ck_assert_uint_eq(intercepted.calls, 1);

        ck_assert_int_eq(metrics_render(registry, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        ck_assert_msg(strstr(text,
                             "vigil_http_requests_total{route=\"/product/{id}\",method=\"GET\","
                             "code=\"503\"} 1"),
                      "%s", text);
        free(text);

        intercepted.fail = false;
        get("/product/42", &r);
        ck_assert_int_eq(r.status, 200);
        resp_done(&r);
}
END_TEST

static void *product_client(void *arg)
{
        struct resp *r = arg;

        if (try_request("GET", "/product/7", NULL, NULL, 0, r) != CURLE_OK)
                r->status = -1;
        return NULL;
}

START_TEST(test_intercept_delay_is_no_hung_handler_and_a_drain_cuts_it_short)
{
        struct drain_args da = {.timeout_ms = 30000};
        pthread_t client, drain;
        struct resp r = {0}, health = {0};

        intercepted.delay_ms = 120000;
        ck_assert_int_eq(pthread_create(&client, NULL, product_client, &r), 0);
        pthread_mutex_lock(&ctx.lock);
        while (intercepted.calls == 0)
                pthread_cond_wait(&ctx.cond, &ctx.lock);
        pthread_mutex_unlock(&ctx.lock);

        /* Delayed, not handled: /health answers and the server is healthy
         * with the shortest allowance. */
        get("/health", &health);
        ck_assert_int_eq(health.status, 200);
        resp_done(&health);
        ck_assert(http_server_is_healthy(server, 1));

        /* The drain wakes the delayed request, which is answered 503. */
        ck_assert_int_eq(pthread_create(&drain, NULL, drainer, &da), 0);
        pthread_join(client, NULL);
        pthread_join(drain, NULL);
        ck_assert_int_eq(r.status, 503);
        ck_assert_str_eq(error_code(&r), "unavailable");
        resp_done(&r);
}
END_TEST

static void *health_client(void *arg)
{
        struct resp *r = arg;

        if (try_request("GET", "/health", NULL, NULL, 0, r) != CURLE_OK)
                r->status = -1;
        pthread_mutex_lock(&ctx.lock);
        ctx.calls++;
        pthread_cond_broadcast(&ctx.cond);
        pthread_mutex_unlock(&ctx.lock);
        return NULL;
}

START_TEST(test_hold_holds_even_health_until_released)
{
        pthread_t client;
        struct resp r = {0};
        bool answered;

        http_server_hold(server, true);
        ck_assert_int_eq(pthread_create(&client, NULL, health_client, &r), 0);
        /* Not answered in 300 ms, while held. */
        usleep(300000);
        pthread_mutex_lock(&ctx.lock);
        answered = ctx.calls > 0;
        pthread_mutex_unlock(&ctx.lock);
        ck_assert(!answered);

        http_server_hold(server, false);
        pthread_join(client, NULL);
        ck_assert_int_eq(r.status, 200);
        resp_done(&r);
}
END_TEST

/* Connections to 127.0.0.1:p the kernel holds for the listener to accept:
 * the rx_queue of its LISTEN entry in /proc/net/tcp. */
static unsigned accept_queue_len(uint16_t p)
{
        FILE *f = fopen("/proc/net/tcp", "re");
        unsigned lport, state, txq, rxq, n = UINT_MAX;
        char line[512];

        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, " %*u: %*x:%x %*x:%*x %x %x:%x", &lport, &state, &txq, &rxq) ==
                            4 &&
                    lport == p && state == 0x0A /* TCP_LISTEN */) {
                        n = rxq;
                        break;
                }
        fclose(f);
        ck_assert_msg(n != UINT_MAX, "no listener on port %u in /proc/net/tcp", p);
        return n;
}

START_TEST(test_drain_waits_for_a_connection_accepted_before_it)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
        static const char request_text[] = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
        struct timeval tv = {.tv_sec = 10};
        struct drain_args da = {.timeout_ms = 30000};
        pthread_t drain;
        char buf[4096];
        ssize_t n;
        int fd;

        /* A client connected just before the drain (as nginx does on a
         * fresh upstream connection) but has not sent its request yet. */
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        /* Accepted by the server: the listener's accept queue is empty. A
         * connection still in that queue is not the server's yet, and
         * closing the listener resets it. */
        for (int i = 0; accept_queue_len(port) != 0; i++) {
                ck_assert_msg(i < 1000, "connection not accepted within 10 s");
                usleep(10000);
        }

        ck_assert_int_eq(pthread_create(&drain, NULL, drainer, &da), 0);
        usleep(100000);
        pthread_mutex_lock(&ctx.lock);
        ck_assert_msg(!da.done, "drain closed a connection whose request was on its way");
        pthread_mutex_unlock(&ctx.lock);

        ck_assert_int_eq(send(fd, request_text, sizeof(request_text) - 1, MSG_NOSIGNAL),
                         (ssize_t)sizeof(request_text) - 1);
        n = recv(fd, buf, sizeof(buf) - 1, 0);
        ck_assert_int_gt(n, 0);
        buf[n] = '\0';
        ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0, "%s", buf);
        close(fd);

        pthread_join(drain, NULL);
        ck_assert(da.done);
}
END_TEST

START_TEST(test_drain_timeout_closes_connections_and_waits_for_handler)
{
        struct drain_args da = {.timeout_ms = 50};
        pthread_t client, drain;
        struct resp r = {0};

        ck_assert_int_eq(pthread_create(&client, NULL, slow_client, &r), 0);
        pthread_mutex_lock(&ctx.lock);
        while (!ctx.slow_entered)
                pthread_cond_wait(&ctx.cond, &ctx.lock);
        pthread_mutex_unlock(&ctx.lock);

        /* The drain stops waiting after 50 ms and closes the connections;
         * the stop itself joins the handler's thread, so drain returns only
         * once the handler does. Its response is lost. */
        ck_assert_int_eq(pthread_create(&drain, NULL, drainer, &da), 0);
        pthread_join(client, NULL);
        ck_assert_int_eq(r.status, -1);
        pthread_mutex_lock(&ctx.lock);
        ck_assert(!da.done);
        ctx.slow_release = true;
        pthread_cond_broadcast(&ctx.cond);
        pthread_mutex_unlock(&ctx.lock);
        pthread_join(drain, NULL);
        ck_assert(da.done);
        resp_done(&r);
}
END_TEST

static int connect_loopback(uint32_t source)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
        struct timeval tv = {.tv_sec = 10};
        int fd;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        if (source != 0) {
                struct sockaddr_in src = {.sin_family = AF_INET};

                src.sin_addr.s_addr = htonl(source);
                ck_assert_int_eq(bind(fd, (struct sockaddr *)&src, sizeof(src)), 0);
        }
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        return fd;
}

static double monotonic_seconds(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Drain with a 30 s timeout and return how long it took. */
static double timed_drain(void)
{
        double start = monotonic_seconds();

        http_server_drain(server, 30000);
        return monotonic_seconds() - start;
}

START_TEST(test_drain_does_not_wait_for_an_idle_keepalive_connection)
{
        static const char request_text[] = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
        char buf[4096];
        double took;
        ssize_t n;
        int fd = connect_loopback(0);

        /* A kept-alive connection that has had its answer and sends nothing
         * more, as nginx's upstream pool keeps them. */
        ck_assert_int_eq(send(fd, request_text, sizeof(request_text) - 1, MSG_NOSIGNAL),
                         (ssize_t)sizeof(request_text) - 1);
        n = recv(fd, buf, sizeof(buf) - 1, 0);
        ck_assert_int_gt(n, 0);
        buf[n] = '\0';
        ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0, "%s", buf);
        wait_idle();

        took = timed_drain();
        ck_assert_msg(took < 2.0, "drain took %.1f s with an idle connection", took);
        /* ... and the connection was closed. */
        ck_assert_int_eq(recv(fd, buf, sizeof(buf), 0), 0);
        close(fd);
}
END_TEST

START_TEST(test_drain_waits_only_briefly_for_connections_without_a_complete_request)
{
        static const char partial[] = "GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ";
        int silent = connect_loopback(0), stalled = connect_loopback(0);
        double took;

        /* One connection sends nothing, one stops in the middle of its
         * headers: neither is a request the drain owes an answer. */
        ck_assert_int_eq(send(stalled, partial, sizeof(partial) - 1, MSG_NOSIGNAL),
                         (ssize_t)sizeof(partial) - 1);
        usleep(200000); /* accepted, and the request line read */

        took = timed_drain();
        ck_assert_msg(took < 5.0, "drain took %.1f s with stalled connections", took);
        close(silent);
        close(stalled);
}
END_TEST

/* Read until the server closes the connection or timeout_s pass; returns
 * the seconds it took, or -1 on timeout. */
static double seconds_until_closed(int fd, int timeout_s)
{
        struct timeval tv = {.tv_sec = timeout_s};
        double start = monotonic_seconds();
        char buf[4096];

        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        for (;;) {
                ssize_t n = recv(fd, buf, sizeof(buf), 0);

                if (n == 0 || (n < 0 && errno == ECONNRESET))
                        return monotonic_seconds() - start;
                if (n < 0)
                        return -1;
        }
}

/* GET /health from source over a new connection: the status line. */
static void health_from(uint32_t source, char *status_line, size_t size)
{
        static const char text[] = "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        int fd = connect_loopback(source);
        ssize_t n;

        ck_assert_int_eq(send(fd, text, sizeof(text) - 1, MSG_NOSIGNAL), (ssize_t)sizeof(text) - 1);
        n = recv(fd, status_line, size - 1, 0);
        status_line[n > 0 ? n : 0] = '\0';
        status_line[strcspn(status_line, "\r")] = '\0';
        close(fd);
}

START_TEST(test_one_client_cannot_take_every_connection)
{
        static const char partial[] = "GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ";
        const uint32_t attacker = 0x7f000001, other = 0x7f000002; /* 127.0.0.1, .2 */
        int held[LIMITS_PER_CLIENT], refused;
        char status[256];

        /* The attacker fills its share with half-sent headers... */
        for (size_t i = 0; i < ELEMENTSOF(held); i++) {
                held[i] = connect_loopback(attacker);
                ck_assert_int_eq(send(held[i], partial, sizeof(partial) - 1, MSG_NOSIGNAL),
                                 (ssize_t)sizeof(partial) - 1);
        }
        /* ... one more is closed at once, unanswered ... */
        refused = connect_loopback(attacker);
        ck_assert_msg(seconds_until_closed(refused, 5) >= 0, "connection past the limit kept");
        close(refused);
        /* ... and another client is still served. */
        health_from(other, status, sizeof(status));
        ck_assert_str_eq(status, "HTTP/1.1 200 OK");
        for (size_t i = 0; i < ELEMENTSOF(held); i++)
                close(held[i]);
}
END_TEST

START_TEST(test_stalled_header_is_closed_after_header_timeout_but_keepalive_is_not)
{
        static const char partial[] = "GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ";
        static const char request_text[] = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
        int stalled = connect_loopback(0), kept = connect_loopback(0);
        struct timeval tv = {.tv_sec = LIMITS_HEADER_TIMEOUT_S + 2};
        double took;
        char buf[4096];

        ck_assert_int_eq(send(stalled, partial, sizeof(partial) - 1, MSG_NOSIGNAL),
                         (ssize_t)sizeof(partial) - 1);
        ck_assert_int_eq(send(kept, request_text, sizeof(request_text) - 1, MSG_NOSIGNAL),
                         (ssize_t)sizeof(request_text) - 1);
        ck_assert_int_gt(recv(kept, buf, sizeof(buf), 0), 0);

        took = seconds_until_closed(stalled, 10);
        ck_assert_msg(took >= 0 && took < LIMITS_HEADER_TIMEOUT_S + 1.5,
                      "stalled header kept for %.1f s", took);
        close(stalled);

        /* The kept-alive connection had a complete request: the idle timeout
         * (30 s) applies to it, not the header timeout. */
        setsockopt(kept, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        ck_assert_int_lt(recv(kept, buf, sizeof(buf), 0), 0);
        ck_assert_int_eq(errno, EAGAIN);
        ck_assert_int_eq(send(kept, request_text, sizeof(request_text) - 1, MSG_NOSIGNAL),
                         (ssize_t)sizeof(request_text) - 1);
        ck_assert_int_gt(recv(kept, buf, sizeof(buf), 0), 0);
        close(kept);
}
END_TEST

START_TEST(test_every_response_carries_its_trace_id_as_request_id)
{
        const char *tp[] = {"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                            "X-Request-Id: 0af7651916cd43dd8448eb211c80319c", NULL};
        const char *rid[] = {"X-Request-Id: 0af7651916cd43dd8448eb211c80319c", NULL};
        const char *bad_rid[] = {"X-Request-Id: 0AF7651916CD43DD8448EB211C80319C", NULL};
        char line[64];
        struct resp r;

        /* A valid traceparent wins: the response names its trace. */
        request("GET", "/trace", tp, NULL, 0, &r);
        ck_assert(has_header(&r, "X-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n"));
        resp_done(&r);

        /* The gateway's request id names a new trace, of which this is the
         * root span. */
        request("GET", "/trace", rid, NULL, 0, &r);
        ck_assert_int_eq(r.status, 204);
        ck_assert(has_header(&r, "X-Request-Id: 0af7651916cd43dd8448eb211c80319c\r\n"));
        resp_done(&r);
        ck_assert_str_eq(ctx.trace_id, "0af7651916cd43dd8448eb211c80319c");
        ck_assert(!ctx.has_parent);

        /* Anything else is not a trace id: a new random one. */
        request("GET", "/trace", bad_rid, NULL, 0, &r);
        ck_assert_str_ne(ctx.trace_id, "0af7651916cd43dd8448eb211c80319c");
        (void)snprintf(line, sizeof(line), "X-Request-Id: %s\r\n", ctx.trace_id);
        ck_assert_msg(has_header(&r, line), "%s", r.headers);
        resp_done(&r);

        /* Errors and built-in routes carry it too. */
        request("GET", "/nope", rid, NULL, 0, &r);
        ck_assert_int_eq(r.status, 404);
        ck_assert(has_header(&r, "X-Request-Id: 0af7651916cd43dd8448eb211c80319c\r\n"));
        resp_done(&r);
        get("/health", &r);
        ck_assert(has_header(&r, "X-Request-Id: "));
        resp_done(&r);
}
END_TEST

START_TEST(test_new_rejects_bad_templates_and_second_server_on_registry)
{
        struct http_server_options opts = {.listen = "127.0.0.1:0", .listen_fd = -1};
        const struct http_route bad[][1] = {
                {{"GET", "product", handle_forgot}},
                {{"GET", "/product/{}", handle_forgot}},
                {{"GET", "/product/{id", handle_forgot}},
                {{"GET", "/product/x{id}", handle_forgot}},
                {{"GET", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", handle_forgot}},
                {{NULL, "/x", handle_forgot}},
                {{"GET", "/x", NULL}},
        };
        struct metrics_registry *reg = NULL;
        struct http_server *s = NULL;

        ck_assert_int_eq(metrics_registry_new(&reg), 0);
        ck_assert_int_eq(http_server_new(&opts, routes, 1, &s), -EINVAL); /* no metrics */
        opts.metrics = reg;
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                ck_assert_msg(http_server_new(&opts, bad[i], 1, &s) == -EINVAL, "case %zu", i);
        ck_assert_ptr_null(s);

        /* The family names are taken by the fixture's server. */
        opts.metrics = registry;
        ck_assert_int_eq(http_server_new(&opts, routes, 1, &s), -EEXIST);
        ck_assert_ptr_null(s);
        metrics_registry_free(reg);
}
END_TEST

START_TEST(test_start_reports_address_in_use)
{
        struct http_server_options opts = {.listen_fd = -1};
        struct metrics_registry *reg = NULL;
        struct http_server *s = NULL;
        char listen[64];

        (void)snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
        opts.listen = listen;
        ck_assert_int_eq(metrics_registry_new(&reg), 0);
        opts.metrics = reg;
        ck_assert_int_eq(http_server_new(&opts, routes, 1, &s), 0);
        ck_assert_int_eq(http_server_start(s), -EADDRINUSE);
        ck_assert_uint_eq(http_server_port(s), 0);
        http_server_free(s);
        metrics_registry_free(reg);

        ck_assert_int_eq(metrics_registry_new(&reg), 0);
        opts.metrics = reg;
        opts.listen = "not an address";
        ck_assert_int_eq(http_server_new(&opts, routes, 1, &s), 0);
        ck_assert_int_eq(http_server_start(s), -EINVAL);
        http_server_free(s);
        metrics_registry_free(reg);
}
END_TEST

/* Run GET path for each of paths with stderr going to a file; return what
 * was logged (malloc()ed). */
static char *capture_log(const char *const *paths, size_t n)
{
        char name[] = "/tmp/test-http-server-log.XXXXXX";
        int fd = mkstemp(name), saved;
        char *text;
        off_t size;

        ck_assert_int_ge(fd, 0);
        unlink(name);
        log_set_max_level(LOG_INFO);
        fflush(stderr);
        saved = dup(STDERR_FILENO);
        ck_assert_int_ge(saved, 0);
        ck_assert_int_ge(dup2(fd, STDERR_FILENO), 0);
        for (size_t i = 0; i < n; i++) {
                struct resp r;
                get(paths[i], &r);
                resp_done(&r);
        }
        wait_idle();
        ck_assert_int_ge(dup2(saved, STDERR_FILENO), 0);
        close(saved);

        size = lseek(fd, 0, SEEK_END);
        ck_assert_int_ge(size, 0);
        text = calloc(1, (size_t)size + 1);
        ck_assert_ptr_nonnull(text);
        ck_assert_int_eq(pread(fd, text, (size_t)size, 0), size);
        close(fd);
        return text;
}

START_TEST(test_access_log_has_route_status_duration_and_trace)
{
        const char *paths[] = {"/product/42", "/forgot"};
        char *log = capture_log(paths, ELEMENTSOF(paths));

        ck_assert_msg(strstr(log, "level=info msg=\"GET /product/{id} 200 "), "%s", log);
        ck_assert(strstr(log, "http_method=GET http_route=/product/{id} http_status=200 "
                              "duration_ms="));
        ck_assert_msg(strstr(log, "level=error msg=\"GET /forgot 500 "), "%s", log);
        ck_assert(strstr(log, "trace_id="));
        ck_assert(!strstr(log, "/product/42"));
        free(log);
}
END_TEST

START_TEST(test_without_access_log_only_5xx_are_logged)
{
        const char *paths[] = {"/product/42", "/forgot"};
        char *log = capture_log(paths, ELEMENTSOF(paths));

        ck_assert_msg(!strstr(log, "http_status=200"), "%s", log);
        ck_assert(strstr(log, "level=error msg=\"GET /forgot 500 "));
        ck_assert(strstr(log, "Handler for GET /forgot sent no response"));
        free(log);
}
END_TEST

static Suite *http_server_suite(void)
{
        Suite *s = suite_create("http-server");
        TCase *tc = tcase_create("server");
        TCase *small = tcase_create("small-body");
        TCase *logged = tcase_create("access-log");
        TCase *limits = tcase_create("limits");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_route_params_reach_handler);
        tcase_add_test(tc, test_unknown_path_is_404_json_without_trailing_slash_magic);
        tcase_add_test(tc, test_known_path_other_method_is_405_with_allow);
        tcase_add_test(tc, test_body_over_max_body_by_content_length_is_413);
        tcase_add_test(tc, test_oversized_headers_are_431_json);
        tcase_add_test(tc, test_headers_beyond_connection_memory_are_refused_and_counted);
        tcase_add_test(tc, test_request_json_rejections_are_400_with_json_util_codes);
        tcase_add_test(tc, test_request_json_with_other_content_type_is_415);
        tcase_add_test(tc, test_content_type_json_is_followed_only_by_parameters);
        tcase_add_test(tc, test_handler_without_reply_gets_500_json);
        tcase_add_test(tc, test_dependency_errors_are_503_to_retry_or_500);
        tcase_add_test(tc, test_reply_headers_are_validated_and_error_is_escaped);
        tcase_add_test(tc, test_bearer_token_parsing);
        tcase_add_test(tc, test_health_is_200_ok);
        tcase_add_test(tc, test_ready_reports_failing_dependency_with_503);
        tcase_add_test(tc, test_metrics_count_route_templates_and_honour_accept);
        tcase_add_test(tc, test_traceparent_is_continued_with_new_span);
        tcase_add_test(tc, test_malformed_traceparent_starts_new_trace);
        tcase_add_test(tc, test_drain_waits_for_in_flight_request_and_health_reports_hung_handler);
        tcase_add_test(tc, test_drain_timeout_closes_connections_and_waits_for_handler);
        tcase_add_test(tc, test_drain_waits_for_a_connection_accepted_before_it);
        tcase_add_test(tc, test_drain_does_not_wait_for_an_idle_keepalive_connection);
        tcase_add_test(tc,
                       test_drain_waits_only_briefly_for_connections_without_a_complete_request);
        tcase_add_test(tc, test_new_rejects_bad_templates_and_second_server_on_registry);
        tcase_add_test(tc, test_start_reports_address_in_use);
        tcase_add_test(tc, test_without_access_log_only_5xx_are_logged);
        tcase_add_test(tc, test_every_response_carries_its_trace_id_as_request_id);
        suite_add_tcase(s, tc);

        tcase_add_checked_fixture(limits, setup_limits, teardown);
        tcase_set_timeout(limits, 30);
        tcase_add_test(limits, test_one_client_cannot_take_every_connection);
        tcase_add_test(limits,
                       test_stalled_header_is_closed_after_header_timeout_but_keepalive_is_not);
        suite_add_tcase(s, limits);

        tcase_add_checked_fixture(logged, setup_access_log, teardown);
        tcase_set_timeout(logged, 30);
        tcase_add_test(logged, test_access_log_has_route_status_duration_and_trace);
        suite_add_tcase(s, logged);

        tcase_add_checked_fixture(small, setup_small_body, teardown);
        tcase_set_timeout(small, 30);
        tcase_add_test(small, test_chunked_body_over_max_body_is_413);
        tcase_add_test(small, test_chunked_body_far_over_max_body_closes_connection);
        suite_add_tcase(s, small);

        TCase *faults = tcase_create("intercept");
        tcase_add_checked_fixture(faults, setup_intercept, teardown);
        tcase_set_timeout(faults, 60);
        tcase_add_test(faults, test_intercept_fails_program_routes_only_and_counts_them);
        tcase_add_test(faults, test_intercept_delay_is_no_hung_handler_and_a_drain_cuts_it_short);
        tcase_add_test(faults, test_hold_holds_even_health_until_released);
        suite_add_tcase(s, faults);
        return s;
}

int main(void)
{
        SRunner *sr;
        int failed;

        curl_global_init(CURL_GLOBAL_DEFAULT);
        sr = srunner_create(http_server_suite());
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        curl_global_cleanup();
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
