/* Unit tests for http-client: against vigil's own http-server where a real
 * server is wanted, and against a tiny raw-socket server where the test
 * must count connections or misbehave (never answer, answer too much). */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http-client.h"
#include "http-server.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"
#include "trace.h"

/* ---- a vigil http-server to talk to ---- */

static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static char seen_traceparent[TRACEPARENT_LEN + 1];

static void handle_hello(struct http_request *req, void *userdata)
{
        const char *tp = http_request_header(req, "traceparent");

        (void)userdata;
        pthread_mutex_lock(&seen_lock);
        (void)snprintf(seen_traceparent, sizeof(seen_traceparent), "%s", tp ? tp : "");
        pthread_mutex_unlock(&seen_lock);
        http_reply(req, 200, "text/plain", "hi", 2);
}

static void handle_echo(struct http_request *req, void *userdata)
{
        _cleanup_(json_object_putp) struct json_object *body = NULL;

        (void)userdata;
        if (http_request_json(req, &body) < 0)
                return;
        http_reply_json(req, 201, body);
}

static void handle_fail(struct http_request *req, void *userdata)
{
        (void)userdata;
        http_reply_error(req, 503, "dependency_unavailable", "down");
}

static const struct http_route routes[] = {
        {"GET", "/hello", handle_hello},
        {"POST", "/echo", handle_echo},
        {"GET", "/fail", handle_fail},
};

static struct metrics_registry *server_registry;
static struct http_server *server;

static void server_setup(void)
{
        struct http_server_options opts = {.listen = "127.0.0.1:0", .listen_fd = -1};

        log_set_max_level(LOG_CRIT);
        ck_assert_int_eq(metrics_registry_new(&server_registry), 0);
        opts.metrics = server_registry;
        ck_assert_int_eq(http_server_new(&opts, routes, ELEMENTSOF(routes), &server), 0);
        ck_assert_int_eq(http_server_start(server), 0);
        memset(seen_traceparent, 0, sizeof(seen_traceparent));
}

static void server_teardown(void)
{
        http_server_free(server);
        server = NULL;
        metrics_registry_free(server_registry);
        server_registry = NULL;
}

static struct http_client *new_client(struct metrics_registry *reg, const char *peer, uint16_t port,
                                      unsigned timeout_ms, size_t max_response)
{
        struct http_client_options opts = {
                .peer = peer,
                .timeout_ms = timeout_ms,
                .max_response = max_response,
                .metrics = reg,
        };
        struct http_client *c = NULL;
        char url[64];

        (void)snprintf(url, sizeof(url), "http://127.0.0.1:%u/", port);
        opts.base_url = url;
        ck_assert_int_eq(http_client_new(&opts, &c), 0);
        return c;
}

/* ---- a raw server: counts connections, answers as told ---- */

enum raw_mode {
        RAW_OK,          /* keep-alive 200 "ok" for every request */
        RAW_SILENT,      /* read, never answer */
        RAW_BIG_LENGTH,  /* 4096 bytes announced by Content-Length */
        RAW_BIG_CHUNKED, /* 4096 bytes, chunked: the size is unknown up front */
};

#define RAW_MAX_CONNS 16

struct raw_server {
        int listen_fd;
        int wake[2];
        uint16_t port;
        enum raw_mode mode;
        pthread_t thread;
        pthread_mutex_t lock;
        unsigned accepted;
        unsigned requests;
};

static void send_all(int fd, const char *data, size_t len)
{
        while (len > 0) {
                ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
                if (n <= 0)
                        return;
                data += n;
                len -= (size_t)n;
        }
}

static void raw_answer(struct raw_server *s, int fd)
{
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                 "Content-Length: 2\r\n\r\nok";
        char big[4096];

        memset(big, 'x', sizeof(big));
        switch (s->mode) {
        case RAW_OK:
                send_all(fd, ok, sizeof(ok) - 1);
                break;
        case RAW_SILENT:
                break;
        case RAW_BIG_LENGTH: {
                static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n";
                send_all(fd, head, sizeof(head) - 1);
                send_all(fd, big, sizeof(big));
                break;
        }
        case RAW_BIG_CHUNKED: {
                static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                           "1000\r\n";
                send_all(fd, head, sizeof(head) - 1);
                send_all(fd, big, sizeof(big));
                send_all(fd, "\r\n0\r\n\r\n", 7);
                break;
        }
        }
}

static void *raw_thread(void *arg)
{
        struct raw_server *s = arg;
        struct pollfd pfd[2 + RAW_MAX_CONNS];
        char buf[RAW_MAX_CONNS][8192];
        size_t len[RAW_MAX_CONNS] = {0};
        int conns[RAW_MAX_CONNS];
        size_t n_conns = 0;

        for (;;) {
                pfd[0] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
                pfd[1] = (struct pollfd){.fd = s->listen_fd, .events = POLLIN};
                for (size_t i = 0; i < n_conns; i++)
                        pfd[2 + i] = (struct pollfd){.fd = conns[i], .events = POLLIN};
                if (poll(pfd, 2 + n_conns, -1) < 0)
                        continue;
                if (pfd[0].revents)
                        break;

                if ((pfd[1].revents & POLLIN) && n_conns < RAW_MAX_CONNS) {
                        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
                        if (fd >= 0) {
                                len[n_conns] = 0;
                                conns[n_conns++] = fd;
                                pthread_mutex_lock(&s->lock);
                                s->accepted++;
                                pthread_mutex_unlock(&s->lock);
                        }
                }

                for (size_t i = 0; i < n_conns; i++) {
                        ssize_t n;
                        char *end;

                        if (!(pfd[2 + i].revents & (POLLIN | POLLHUP | POLLERR)))
                                continue;
                        n = recv(conns[i], buf[i] + len[i], sizeof(buf[i]) - 1 - len[i], 0);
                        if (n <= 0) {
                                close(conns[i]);
                                conns[i] = conns[n_conns - 1];
                                len[i] = len[n_conns - 1];
                                memcpy(buf[i], buf[n_conns - 1], len[i]);
                                n_conns--;
                                break; /* pfd indices changed: poll again */
                        }
                        len[i] += (size_t)n;
                        buf[i][len[i]] = '\0';
                        /* Requests here have no body: each ends at a blank line. */
                        while ((end = strstr(buf[i], "\r\n\r\n"))) {
                                size_t used = (size_t)(end + 4 - buf[i]);

                                pthread_mutex_lock(&s->lock);
                                s->requests++;
                                pthread_mutex_unlock(&s->lock);
                                raw_answer(s, conns[i]);
                                memmove(buf[i], buf[i] + used, len[i] - used + 1);
                                len[i] -= used;
                        }
                        if (len[i] == sizeof(buf[i]) - 1)
                                len[i] = 0;
                }
        }

        for (size_t i = 0; i < n_conns; i++)
                close(conns[i]);
        return NULL;
}

static void raw_start(struct raw_server *s, enum raw_mode mode)
{
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t salen = sizeof(sa);

        memset(s, 0, sizeof(*s));
        s->mode = mode;
        pthread_mutex_init(&s->lock, NULL);
        ck_assert_int_eq(pipe2(s->wake, O_CLOEXEC), 0);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(s->listen_fd, 0);
        ck_assert_int_eq(bind(s->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(listen(s->listen_fd, 16), 0);
        ck_assert_int_eq(getsockname(s->listen_fd, (struct sockaddr *)&sa, &salen), 0);
        s->port = ntohs(sa.sin_port);
        ck_assert_int_eq(pthread_create(&s->thread, NULL, raw_thread, s), 0);
}

static void raw_stop(struct raw_server *s)
{
        ck_assert_int_eq(write(s->wake[1], "x", 1), 1);
        pthread_join(s->thread, NULL);
        close(s->listen_fd);
        close(s->wake[0]);
        close(s->wake[1]);
}

static char *render(struct metrics_registry *reg)
{
        char *text = NULL;
        size_t len;

        ck_assert_int_eq(metrics_render(reg, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        return text;
}

/* ---- tests ---- */

START_TEST(test_status_and_body_round_trip)
{
        struct http_client *c = new_client(NULL, "test", http_server_port(server), 0, 0);
        const char *json[] = {"Content-Type: application/json", NULL};
        struct http_client_response r = {0};

        ck_assert_int_eq(http_client_request(c, "GET", "/hello", NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 200);
        ck_assert_str_eq(r.body, "hi");
        ck_assert_uint_eq(r.body_len, 2);
        http_client_response_done(&r);

        ck_assert_int_eq(http_client_request(c, "POST", "/echo", json, "{\"a\":[1,2]}", 11, &r), 0);
        ck_assert_int_eq(r.status, 201);
        ck_assert_str_eq(r.body, "{\"a\":[1,2]}");
        http_client_response_done(&r);

        /* Any HTTP status is a successful call. */
        ck_assert_int_eq(http_client_request(c, "DELETE", "/nothing?x=1", NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 404);
        ck_assert_ptr_nonnull(strstr(r.body, "not_found"));
        http_client_response_done(&r);
        http_client_response_done(&r); /* harmless twice */

        http_client_free(c);
}
END_TEST

START_TEST(test_traceparent_carries_callers_trace_in_a_new_span)
{
        struct http_client *c = new_client(NULL, "test", http_server_port(server), 0, 0);
        struct http_client_response r = {0};
        struct span *root = span_start(NULL, "caller", SPAN_KIND_INTERNAL, NULL);
        struct trace_context seen;
        char root_trace[2 * TRACE_ID_SIZE + 1], seen_trace[2 * TRACE_ID_SIZE + 1];

        ck_assert_ptr_null(trace_set_current(root));
        ck_assert_int_eq(http_client_request(c, "GET", "/hello", NULL, NULL, 0, &r), 0);
        http_client_response_done(&r);
        ck_assert_ptr_eq(trace_current(), root);

        pthread_mutex_lock(&seen_lock);
        ck_assert_msg(trace_parse_traceparent(seen_traceparent, &seen) == 0, "%s",
                      seen_traceparent);
        pthread_mutex_unlock(&seen_lock);
        trace_format_trace_id(span_context(root), root_trace);
        trace_format_trace_id(&seen, seen_trace);
        ck_assert_str_eq(seen_trace, root_trace);
        /* The client span is a child, not the caller's span itself. */
        ck_assert(memcmp(seen.span_id, span_context(root)->span_id, SPAN_ID_SIZE) != 0);
        span_end(root);
        ck_assert_ptr_null(trace_current());

        /* Without a current span the call starts its own trace. */
        ck_assert_int_eq(http_client_request(c, "GET", "/hello", NULL, NULL, 0, &r), 0);
        http_client_response_done(&r);
        pthread_mutex_lock(&seen_lock);
        ck_assert_int_eq(trace_parse_traceparent(seen_traceparent, &seen), 0);
        pthread_mutex_unlock(&seen_lock);
        trace_format_trace_id(&seen, seen_trace);
        ck_assert_str_ne(seen_trace, root_trace);

        http_client_free(c);
}
END_TEST

START_TEST(test_sequential_requests_reuse_one_connection)
{
        struct raw_server raw;
        struct http_client *c;

        raw_start(&raw, RAW_OK);
        c = new_client(NULL, "raw", raw.port, 0, 0);
        for (int i = 0; i < 20; i++) {
                struct http_client_response r = {0};
                ck_assert_int_eq(http_client_request(c, "GET", "/x", NULL, NULL, 0, &r), 0);
                ck_assert_int_eq(r.status, 200);
                ck_assert_str_eq(r.body, "ok");
                http_client_response_done(&r);
        }
        http_client_free(c);
        raw_stop(&raw);
        ck_assert_uint_eq(raw.requests, 20);
        ck_assert_uint_eq(raw.accepted, 1);
}
END_TEST

START_TEST(test_silent_server_times_out)
{
        struct http_client_response r = {.status = 42};
        struct raw_server raw;
        struct http_client *c;
        uint64_t start, elapsed;

        raw_start(&raw, RAW_SILENT);
        c = new_client(NULL, "raw", raw.port, 300, 0);
        start = now_usec(CLOCK_MONOTONIC);
        ck_assert_int_eq(http_client_request(c, "GET", "/x", NULL, NULL, 0, &r), -ETIMEDOUT);
        elapsed = now_usec(CLOCK_MONOTONIC) - start;
        ck_assert_int_eq(r.status, 42); /* untouched on error */
        ck_assert_uint_ge(elapsed, 250 * USEC_PER_MSEC);
        ck_assert_uint_lt(elapsed, 5 * USEC_PER_SEC);
        http_client_free(c);
        raw_stop(&raw);
}
END_TEST

START_TEST(test_closed_port_is_connection_refused)
{
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t salen = sizeof(sa);
        struct http_client_response r = {0};
        struct http_client *c;
        int fd;

        /* A port that was just free: bind, learn it, close. */
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &salen), 0);
        close(fd);

        c = new_client(NULL, "closed", ntohs(sa.sin_port), 0, 0);
        ck_assert_int_eq(http_client_request(c, "GET", "/x", NULL, NULL, 0, &r), -ECONNREFUSED);
        http_client_free(c);
}
END_TEST

START_TEST(test_oversized_response_is_efbig)
{
        const enum raw_mode modes[] = {RAW_BIG_LENGTH, RAW_BIG_CHUNKED};

        for (size_t i = 0; i < ELEMENTSOF(modes); i++) {
                struct http_client_response r = {0};
                struct raw_server raw;
                struct http_client *c;

                raw_start(&raw, modes[i]);
                c = new_client(NULL, "raw", raw.port, 0, 1000);
                ck_assert_int_eq(http_client_request(c, "GET", "/x", NULL, NULL, 0, &r), -EFBIG);
                http_client_free(c);

                /* With room for it, the same answer is fine. */
                c = new_client(NULL, "raw", raw.port, 0, 4096);
                ck_assert_int_eq(http_client_request(c, "GET", "/x", NULL, NULL, 0, &r), 0);
                ck_assert_uint_eq(r.body_len, 4096);
                http_client_response_done(&r);
                http_client_free(c);
                raw_stop(&raw);
        }
}
END_TEST

START_TEST(test_metrics_count_calls_by_peer_and_code)
{
        struct metrics_registry *reg = NULL;
        struct http_client *auth, *closed;
        struct http_client_response r = {0};
        char *text;

        ck_assert_int_eq(metrics_registry_new(&reg), 0);
        /* Two clients share one registry. */
        auth = new_client(reg, "auth", http_server_port(server), 0, 0);
        closed = new_client(reg, "closed", 1, 0, 0);

        for (int i = 0; i < 2; i++) {
                ck_assert_int_eq(http_client_request(auth, "GET", "/hello", NULL, NULL, 0, &r), 0);
                http_client_response_done(&r);
        }
        ck_assert_int_eq(http_client_request(auth, "GET", "/fail", NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 503);
        http_client_response_done(&r);
        ck_assert_int_lt(http_client_request(closed, "POST", "/x", NULL, "", 0, &r), 0);

        text = render(reg);
        ck_assert_msg(
                strstr(text, "vigil_http_client_requests_total{peer=\"auth\",code=\"200\"} 2"),
                "%s", text);
        ck_assert(strstr(text, "vigil_http_client_requests_total{peer=\"auth\",code=\"503\"} 1"));
        ck_assert(
                strstr(text, "vigil_http_client_requests_total{peer=\"closed\",code=\"error\"} 1"));
        ck_assert(strstr(text,
                         "vigil_dependency_request_duration_seconds_count{dependency=\"auth\","
                         "operation=\"GET\"} 3"));
        ck_assert(strstr(text, "vigil_dependency_errors_total{dependency=\"auth\","
                               "operation=\"GET\"} 1"));
        ck_assert(strstr(text, "vigil_dependency_errors_total{dependency=\"closed\","
                               "operation=\"POST\"} 1"));
        ck_assert(strstr(text, "vigil_dependency_up{dependency=\"auth\"} 1"));
        ck_assert(strstr(text, "vigil_dependency_up{dependency=\"closed\"} 0"));
        free(text);

        http_client_free(auth);
        http_client_free(closed);
        metrics_registry_free(reg);
}
END_TEST

START_TEST(test_invalid_arguments_are_rejected)
{
        struct http_client_options opts = {.peer = "x"};
        const char *crlf[] = {"X-A: b\r\nX-Injected: 1", NULL};
        const char *nocolon[] = {"X-A", NULL};
        struct http_client_response r = {0};
        struct http_client *c = NULL;

        opts.base_url = "ftp://127.0.0.1/";
        ck_assert_int_eq(http_client_new(&opts, &c), -EINVAL);
        opts.base_url = "not a url";
        ck_assert_int_eq(http_client_new(&opts, &c), -EINVAL);
        opts.base_url = "http://127.0.0.1:1";
        opts.peer = NULL;
        ck_assert_int_eq(http_client_new(&opts, &c), -EINVAL);
        ck_assert_ptr_null(c);

        c = new_client(NULL, "test", http_server_port(server), 0, 0);
        ck_assert_int_eq(http_client_request(c, "get", "/hello", NULL, NULL, 0, &r), -EINVAL);
        ck_assert_int_eq(http_client_request(c, "GET", "hello", NULL, NULL, 0, &r), -EINVAL);
        ck_assert_int_eq(http_client_request(c, "GET", "/a b", NULL, NULL, 0, &r), -EINVAL);
        ck_assert_int_eq(http_client_request(c, "GET", "/a\r\nX: y", NULL, NULL, 0, &r), -EINVAL);
        ck_assert_int_eq(http_client_request(c, "GET", "/hello", crlf, NULL, 0, &r), -EINVAL);
        ck_assert_int_eq(http_client_request(c, "GET", "/hello", nocolon, NULL, 0, &r), -EINVAL);
        http_client_free(c);
        http_client_free(NULL);
}
END_TEST

static Suite *http_client_suite(void)
{
        Suite *s = suite_create("http-client");
        TCase *tc = tcase_create("client");

        tcase_add_checked_fixture(tc, server_setup, server_teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_status_and_body_round_trip);
        tcase_add_test(tc, test_traceparent_carries_callers_trace_in_a_new_span);
        tcase_add_test(tc, test_sequential_requests_reuse_one_connection);
        tcase_add_test(tc, test_silent_server_times_out);
        tcase_add_test(tc, test_closed_port_is_connection_refused);
        tcase_add_test(tc, test_oversized_response_is_efbig);
        tcase_add_test(tc, test_metrics_count_calls_by_peer_and_code);
        tcase_add_test(tc, test_invalid_arguments_are_rejected);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(http_client_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
