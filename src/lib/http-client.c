/* HTTP client on libcurl. The contracts are in http-client.h.
 *
 * A pool of easy handles (a stack under a mutex, most recently used on
 * top) keeps each handle's connection cache warm: curl_easy_reset() clears
 * the options of a borrowed handle but keeps its live connections, so
 * sequential calls reuse one keep-alive connection. */
#include <assert.h>
#include <ctype.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>

#include "dependency-metrics.h"
#include "http-client.h"
#include "macro.h"
#include "metrics.h"
#include "strbuf.h"
#include "trace.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 1000U
#define DEFAULT_TIMEOUT_MS         5000U
#define DEFAULT_MAX_RESPONSE       (1024U * 1024U)
#define DEFAULT_MAX_IDLE_HANDLES   64U
#define MAX_METHOD                 16U

struct http_client {
        char *peer;
        char *base_url;
        char *server_address;
        long server_port;
        long connect_timeout_ms;
        long timeout_ms;
        size_t max_response;
        unsigned max_idle_handles;
        struct tracer *tracer;

        struct metric_family *requests_total; /* NULL: metrics off */
        struct dependency_metrics dependency;
        atomic_bool failed; /* http_client_set_failed() */

        pthread_mutex_t lock;
        CURL **idle;
        size_t n_idle;
};

/* ---- curl_global_init(), once per process: see the header ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* The vigil_http_client_requests_total family of r, shared by every client
 * of r. */
static struct metric_family *requests_family(struct metrics_registry *r)
{
        static const char *const labels[] = {"peer", "code", NULL};

        return metrics_counter_get(r, "vigil_http_client_requests_total",
                                   "Outgoing HTTP requests, by peer and status code "
                                   "(\"error\": no answer).",
                                   labels);
}

/* ---- handles ---- */

static CURL *handle_acquire(struct http_client *c)
{
        CURL *h = NULL;

        pthread_mutex_lock(&c->lock);
        if (c->n_idle > 0)
                h = c->idle[--c->n_idle];
        pthread_mutex_unlock(&c->lock);

        if (h)
                curl_easy_reset(h);
        else
                h = curl_easy_init();
        return h;
}

static void handle_release(struct http_client *c, CURL *h)
{
        if (!h)
                return;
        pthread_mutex_lock(&c->lock);
        if (c->n_idle < c->max_idle_handles) {
                c->idle[c->n_idle++] = h;
                h = NULL;
        }
        pthread_mutex_unlock(&c->lock);
        if (h)
                curl_easy_cleanup(h);
}

/* ---- client ---- */

static char *strip_trailing_slashes(char *s)
{
        size_t n = strlen(s);

        while (n > 0 && s[n - 1] == '/')
                s[--n] = '\0';
        return s;
}

/* Check base_url and extract host and port for span attributes. */
static int parse_base_url(struct http_client *c)
{
        CURLU *u = curl_url();
        char *scheme = NULL, *host = NULL, *port = NULL;
        int r = -EINVAL;

        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, c->base_url, 0) != CURLUE_OK)
                goto out;
        if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
            (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
                goto out;
        if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
                goto out;

        c->server_address = strdup(host);
        if (!c->server_address) {
                r = -ENOMEM;
                goto out;
        }
        c->server_port = strtol(port, NULL, 10);
        r = 0;
out:
        curl_free(scheme);
        curl_free(host);
        curl_free(port);
        curl_url_cleanup(u);
        return r;
}

int http_client_new(const struct http_client_options *opts, struct http_client **ret)
{
        struct http_client *c;
        int r;

        assert(opts);
        assert(ret);

        if (!opts->peer || !*opts->peer || !opts->base_url)
                return -EINVAL;

        (void)pthread_once(&curl_once, curl_init_once);
        if (curl_init_result != CURLE_OK)
                return -EIO;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        pthread_mutex_init(&c->lock, NULL);
        c->connect_timeout_ms =
                opts->connect_timeout_ms ? opts->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
        c->timeout_ms = opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
        c->max_response = opts->max_response ? opts->max_response : DEFAULT_MAX_RESPONSE;
        c->max_idle_handles =
                opts->max_idle_handles ? opts->max_idle_handles : DEFAULT_MAX_IDLE_HANDLES;
        c->tracer = opts->tracer;

        c->peer = strdup(opts->peer);
        c->base_url = strdup(opts->base_url);
        c->idle = calloc(c->max_idle_handles, sizeof(*c->idle));
        if (!c->peer || !c->base_url || !c->idle) {
                r = -ENOMEM;
                goto fail;
        }
        strip_trailing_slashes(c->base_url);
        r = parse_base_url(c);
        if (r < 0)
                goto fail;

        if (opts->metrics) {
                c->requests_total = requests_family(opts->metrics);
                if (!c->requests_total) {
                        r = -ENOMEM;
                        goto fail;
                }
                r = dependency_metrics_get(opts->metrics, &c->dependency);
                if (r < 0)
                        goto fail;
        }

        *ret = c;
        return 0;

fail:
        http_client_free(c);
        return r;
}

void http_client_set_failed(struct http_client *c, bool failed)
{
        atomic_store(&c->failed, failed);
}

void http_client_free(struct http_client *c)
{
        if (!c)
                return;
        for (size_t i = 0; i < c->n_idle; i++)
                curl_easy_cleanup(c->idle[i]);
        free(c->idle);
        free(c->peer);
        free(c->base_url);
        free(c->server_address);
        pthread_mutex_destroy(&c->lock);
        free(c);
}

void http_client_response_done(struct http_client_response *r)
{
        if (!r)
                return;
        free(r->body);
        *r = (struct http_client_response){0};
}

/* ---- one request ---- */

struct body_buffer {
        struct strbuf text;
        size_t max;
        bool too_big;
};

static size_t write_cb(char *data, size_t size, size_t n, void *userdata)
{
        struct body_buffer *b = userdata;
        size_t add = size * n;

        if (add > b->max - b->text.len) {
                b->too_big = true;
                return 0; /* CURLE_WRITE_ERROR */
        }
        strbuf_append(&b->text, data, add);
        return strbuf_failed(&b->text) ? 0 : add;
}

static bool method_is_valid(const char *m)
{
        size_t n = strlen(m);

        if (n == 0 || n > MAX_METHOD)
                return false;
        for (const char *p = m; *p; p++)
                if (!isupper((unsigned char)*p))
                        return false;
        return true;
}

static bool has_control_chars(const char *s)
{
        for (const unsigned char *p = (const unsigned char *)s; *p; p++)
                if (*p < 0x20 || *p == 0x7F)
                        return true;
        return false;
}

static int map_curl_error(CURLcode cc, const struct body_buffer *b, const char **ret_type)
{
        switch (cc) {
        case CURLE_OPERATION_TIMEDOUT:
                *ret_type = "timeout";
                return -ETIMEDOUT;
        case CURLE_COULDNT_CONNECT:
                *ret_type = "connection_refused";
                return -ECONNREFUSED;
        case CURLE_FILESIZE_EXCEEDED:
                *ret_type = "response_too_large";
                return -EFBIG;
        case CURLE_WRITE_ERROR:
                if (b->too_big) {
                        *ret_type = "response_too_large";
                        return -EFBIG;
                }
                *ret_type = "out_of_memory";
                return -ENOMEM;
        case CURLE_OUT_OF_MEMORY:
                *ret_type = "out_of_memory";
                return -ENOMEM;
        default:
                *ret_type = "io";
                return -EIO;
        }
}

static void slist_freep(struct curl_slist **l)
{
        curl_slist_free_all(*l);
}

static bool headers_are_valid(const char *const *headers)
{
        for (const char *const *h = headers; h && *h; h++)
                if (has_control_chars(*h) || !strchr(*h, ':'))
                        return false;
        return true;
}

/* Build the request headers: the caller's, traceparent, and "Expect:"
 * (no 100-continue round trip for bodies between our own services). */
static int build_headers(const char *const *headers, const struct trace_context *ctx,
                         struct curl_slist **ret)
{
        _cleanup_(slist_freep) struct curl_slist *list = NULL;
        char tp[TRACEPARENT_LEN + 1], line[sizeof("traceparent: ") + TRACEPARENT_LEN];
        struct curl_slist *l;

        for (const char *const *h = headers; h && *h; h++) {
                l = curl_slist_append(list, *h);
                if (!l)
                        return -ENOMEM;
                list = l;
        }
        if (trace_context_is_valid(ctx)) {
                trace_format_traceparent(ctx, tp);
                (void)snprintf(line, sizeof(line), "traceparent: %s", tp);
                l = curl_slist_append(list, line);
                if (!l)
                        return -ENOMEM;
                list = l;
        }
        l = curl_slist_append(list, "Expect:");
        if (!l)
                return -ENOMEM;
        list = l;

        *ret = TAKE_PTR(list);
        return 0;
}

static CURLcode setup_handle(struct http_client *c, CURL *h, const char *method, const char *url,
                             struct curl_slist *headers, const char *body, size_t body_len,
                             struct body_buffer *buf)
{
        CURLcode cc = CURLE_OK;

#define SET(opt, val)                                                                              \
        do {                                                                                       \
                if (cc == CURLE_OK)                                                                \
                        cc = curl_easy_setopt(h, opt, val);                                        \
        } while (0)

        SET(CURLOPT_URL, url);
        SET(CURLOPT_PROTOCOLS_STR, "http,https");
        SET(CURLOPT_FOLLOWLOCATION, 0L);
        SET(CURLOPT_NOSIGNAL, 1L);
        SET(CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
        SET(CURLOPT_TIMEOUT_MS, c->timeout_ms);
        SET(CURLOPT_TCP_KEEPALIVE, 1L);
        SET(CURLOPT_USERAGENT, "vigil/" PACKAGE_VERSION);
        SET(CURLOPT_HTTPHEADER, headers);
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->max_response);
        /* A handle's receive buffer lives as long as the handle, and a
         * busy daemon keeps one handle per concurrent call: service answers
         * are small, so 4 KiB rather than curl's 16 KiB. */
        SET(CURLOPT_BUFFERSIZE, 4096L);
        SET(CURLOPT_WRITEFUNCTION, write_cb);
        SET(CURLOPT_WRITEDATA, buf);

        if (body) {
                SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
                SET(CURLOPT_POSTFIELDS, body);
                if (strcmp(method, "POST") != 0)
                        SET(CURLOPT_CUSTOMREQUEST, method);
        } else if (strcmp(method, "GET") == 0)
                SET(CURLOPT_HTTPGET, 1L);
        else if (strcmp(method, "HEAD") == 0)
                SET(CURLOPT_NOBODY, 1L);
        else
                SET(CURLOPT_CUSTOMREQUEST, method);
#undef SET
        return cc;
}

static void record(struct http_client *c, const char *method, struct span *span, long status, int r,
                   const char *error_type, double seconds)
{
        char code[16];

        if (r < 0)
                (void)snprintf(code, sizeof(code), "error");
        else
                (void)snprintf(code, sizeof(code), "%ld", status);

        metrics_counter_inc(metrics_child2(c->requests_total, c->peer, code));
        dependency_metrics_observe(&c->dependency, c->peer, method, seconds, r < 0 || status >= 500,
                                   span_context(span));
        /* Too large an answer is still an answer; running out of memory
         * says nothing about the peer. */
        if (r != -ENOMEM)
                dependency_metrics_set_up(&c->dependency, c->peer, r >= 0 || r == -EFBIG);

        if (r < 0) {
                span_set_attribute_string(span, "error.type", error_type);
                span_set_status(span, SPAN_STATUS_ERROR, error_type);
        } else {
                span_set_attribute_int(span, "http.response.status_code", status);
                /* Semantic conventions: 4xx and 5xx are errors of a client span. */
                if (status >= 400)
                        span_set_status(span, SPAN_STATUS_ERROR, NULL);
        }
}

int http_client_request(struct http_client *c, const char *method, const char *path,
                        const char *const *headers, const char *body, size_t body_len,
                        struct http_client_response *ret)
{
        _cleanup_(slist_freep) struct curl_slist *list = NULL;
        _cleanup_free_ char *url = NULL;
        struct body_buffer buf = {.max = 0};
        char *response_body = NULL;
        size_t response_len = 0;
        const char *error_type = NULL;
        struct span *span;
        uint64_t start;
        long status = 0;
        CURL *h = NULL;
        CURLcode cc;
        int r;

        assert(c);
        assert(method);
        assert(path);
        assert(ret);
        assert(body || body_len == 0);

        if (!method_is_valid(method) || path[0] != '/' || strlen(path) > HTTP_CLIENT_MAX_PATH ||
            has_control_chars(path) || strchr(path, ' ') || !headers_are_valid(headers))
                return -EINVAL;
        if (asprintf(&url, "%s%s", c->base_url, path) < 0) {
                url = NULL;
                return -ENOMEM;
        }

        span = span_start(c->tracer, method, SPAN_KIND_CLIENT, NULL);
        if (span_is_recording(span)) {
                size_t n = strcspn(url, "?#");
                char *full = strndup(url, n);

                span_set_attribute_string(span, "http.request.method", method);
                span_set_attribute_string(span, "server.address", c->server_address);
                span_set_attribute_int(span, "server.port", c->server_port);
                span_set_attribute_string(span, "url.full", full ? full : c->base_url);
                span_set_attribute_string(span, "peer.service", c->peer);
                free(full);
        }
        start = now_usec(CLOCK_MONOTONIC);

        r = build_headers(headers, span_context(span), &list);
        if (r < 0) {
                error_type = "out_of_memory";
                goto finish;
        }

        if (atomic_load(&c->failed)) {
                r = -ECONNREFUSED;
                error_type = "fault_injected";
                goto finish;
        }

        h = handle_acquire(c);
        if (!h) {
                r = -ENOMEM;
                error_type = "out_of_memory";
                goto finish;
        }

        buf.max = c->max_response;
        cc = setup_handle(c, h, method, url, list, body, body_len, &buf);
        if (cc == CURLE_OK)
                cc = curl_easy_perform(h);
        if (cc != CURLE_OK) {
                r = map_curl_error(cc, &buf, &error_type);
                /* A handle whose transfer failed may hold a broken
                 * connection; curl discards those itself, so the handle can
                 * still go back to the pool. */
                goto finish;
        }
        (void)curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        response_len = buf.text.len;
        response_body = strbuf_steal(&buf.text);
        if (!response_body) {
                r = -ENOMEM;
                error_type = "out_of_memory";
                goto finish;
        }
        r = 0;

finish:
        handle_release(c, h);
        record(c, method, span, status, r, error_type,
               (double)(now_usec(CLOCK_MONOTONIC) - start) / (double)USEC_PER_SEC);
        span_end(span);

        strbuf_done(&buf.text);
        if (r < 0)
                return r;
        *ret = (struct http_client_response){
                .status = status,
                .body = response_body,
                .body_len = response_len,
        };
        return 0;
}
