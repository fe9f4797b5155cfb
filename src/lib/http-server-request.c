/* What a handler does with its request: read it (method, path, route
 * parameters, headers, body, JSON) and send exactly one reply. The
 * contracts are in http-server.h. */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http-server-internal.h"
#include "json-util.h"
#include "log.h"
#include "trace.h"

/* ---- responses ---- */

static bool header_name_is_valid(const char *name)
{
        if (!name || !*name)
                return false;
        for (const char *c = name; *c; c++)
                if (!isalnum((unsigned char)*c) && !strchr("!#$%&'*+-.^_`|~", *c))
                        return false;
        return true;
}

static bool header_value_is_valid(const char *value)
{
        if (!value)
                return false;
        for (const unsigned char *c = (const unsigned char *)value; *c; c++)
                if ((*c < 0x20 && *c != '\t') || *c == 0x7F)
                        return false;
        return true;
}

int http_reply_add_header(struct http_request *req, const char *name, const char *value)
{
        struct reply_header *h;

        assert(req);

        if (req->status != 0)
                return -EALREADY;
        if (!header_name_is_valid(name) || !header_value_is_valid(value))
                return -EINVAL;
        if (strcasecmp(name, "Content-Type") == 0 || strcasecmp(name, "Content-Length") == 0)
                return -EINVAL;
        if (req->n_headers >= HTTP_MAX_REPLY_HEADERS)
                return -E2BIG;

        h = &req->headers[req->n_headers];
        h->name = strdup(name);
        h->value = strdup(value);
        if (!h->name || !h->value) {
                free(h->name);
                free(h->value);
                *h = (struct reply_header){0};
                return -ENOMEM;
        }
        req->n_headers++;
        return 0;
}

int http_reply_take(struct http_request *req, unsigned status, const char *content_type, char *body,
                    size_t len)
{
        struct MHD_Response *response;
        bool draining;
        enum MHD_Result q;

        assert(req);

        if (req->status != 0) {
                free(body);
                return -EALREADY;
        }
        req->reply_tried = true;
        if (status < 100 || status > 999 ||
            (content_type && !header_value_is_valid(content_type))) {
                free(body);
                return -EINVAL;
        }

        response = MHD_create_response_from_buffer(len, body ? body : (char *)"",
                                                   body ? MHD_RESPMEM_MUST_FREE
                                                        : MHD_RESPMEM_PERSISTENT);
        if (!response) {
                free(body);
                return -ENOMEM;
        }

        if (content_type && MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE,
                                                    content_type) != MHD_YES)
                goto fail;
        for (size_t i = 0; i < req->n_headers; i++)
                if (MHD_add_response_header(response, req->headers[i].name,
                                            req->headers[i].value) != MHD_YES)
                        goto fail;
        if (req->span && trace_context_is_valid(span_context(req->span))) {
                char trace_id[2 * TRACE_ID_SIZE + 1];

                trace_format_trace_id(span_context(req->span), trace_id);
                if (MHD_add_response_header(response, "X-Request-Id", trace_id) != MHD_YES)
                        goto fail;
        }

        pthread_mutex_lock(&req->server->lock);
        draining = req->server->draining;
        pthread_mutex_unlock(&req->server->lock);
        if (draining &&
            MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION, "close") != MHD_YES)
                goto fail;

        q = MHD_queue_response(req->connection, status, response);
        MHD_destroy_response(response);
        if (q != MHD_YES)
                return -EIO;
        req->status = status;
        return 0;

fail:
        MHD_destroy_response(response);
        return -ENOMEM;
}

int http_reply(struct http_request *req, unsigned status, const char *content_type,
               const char *body, size_t len)
{
        char *copy;

        assert(req);
        assert(body || len == 0);

        if (!content_type)
                return -EINVAL;
        copy = malloc(len + 1);
        if (!copy)
                return -ENOMEM;
        if (len > 0)
                memcpy(copy, body, len);
        copy[len] = '\0';
        return http_reply_take(req, status, content_type, copy, len);
}

int http_reply_json(struct http_request *req, unsigned status, struct json_object *body)
{
        char *s;
        size_t len = 0;

        assert(req);

        s = json_to_string_dup(body, &len);
        if (!s)
                return -ENOMEM;
        return http_reply_take(req, status, "application/json", s, len);
}

int http_reply_error_object(struct http_request *req, unsigned status, const char *code,
                            const char *message, struct json_object *top)
{
        _cleanup_(json_object_putp) struct json_object *owned = NULL;
        struct json_object *error;

        if (!top) {
                owned = json_object_new_object();
                top = owned;
        }
        error = json_object_new_object();
        if (!top || !error) {
                json_object_put(error);
                return -ENOMEM;
        }
        json_object_object_add(error, "code", json_object_new_string(code));
        json_object_object_add(error, "message", json_object_new_string(message));
        json_object_object_add(top, "error", error);
        return http_reply_json(req, status, top);
}

int http_reply_error(struct http_request *req, unsigned status, const char *code,
                     const char *format, ...)
{
        _cleanup_free_ char *message = NULL;
        va_list ap;
        int r;

        assert(req);
        assert(code);
        assert(format);

        va_start(ap, format);
        r = vasprintf(&message, format, ap);
        va_end(ap);
        if (r < 0) {
                message = NULL;
                return -ENOMEM;
        }
        return http_reply_error_object(req, status, code, message, NULL);
}

int http_reply_empty(struct http_request *req, unsigned status)
{
        return http_reply_take(req, status, NULL, NULL, 0);
}

/* ---- request accessors ---- */

const char *http_request_method(const struct http_request *req)
{
        return req->method;
}

const char *http_request_path(const struct http_request *req)
{
        return req->path;
}

const char *http_request_route(const struct http_request *req)
{
        return req->route ? req->route->path : "unmatched";
}

const char *http_request_header(const struct http_request *req, const char *name)
{
        assert(name);
        return MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, name);
}

const char *http_request_param(const struct http_request *req, const char *name)
{
        assert(name);
        for (size_t i = 0; i < req->n_params; i++)
                if (strcmp(req->params[i].name, name) == 0)
                        return req->params[i].value;
        return NULL;
}

const char *http_request_body(const struct http_request *req, size_t *ret_len)
{
        if (ret_len)
                *ret_len = req->body_len;
        return req->body ? req->body : "";
}

struct span *http_request_span(const struct http_request *req)
{
        return req->span;
}

const char *http_request_bearer(const struct http_request *req)
{
        return http_bearer_token(http_request_header(req, "Authorization"));
}

static const char *json_error_message(const char *code)
{
        if (strcmp(code, "invalid_utf8") == 0)
                return "The request body is not valid UTF-8";
        if (strcmp(code, "too_deep") == 0)
                return "The request body is nested too deeply";
        if (strcmp(code, "not_an_object") == 0)
                return "The request body must be a JSON object";
        return "The request body is not valid JSON";
}

int http_request_json(struct http_request *req, struct json_object **ret)
{
        struct json_object *obj = NULL;
        const char *code = NULL;
        int r;

        assert(req);
        assert(ret);

        if (!http_content_type_is_json(http_request_header(req, "Content-Type"))) {
                (void)http_reply_error(req, 415, "unsupported_media_type",
                                       "The request body must be application/json");
                return -EPROTONOSUPPORT;
        }

        r = json_parse_object(req->body ? req->body : "", req->body_len, JSON_DEFAULT_MAX_DEPTH,
                              &obj, &code);
        if (r == -ENOMEM) {
                (void)http_reply_error(req, 500, "internal", "Out of memory");
                return r;
        }
        if (r == -EFBIG) {
                (void)http_reply_error(req, 413, "payload_too_large",
                                       "The request body is too large");
                return r;
        }
        if (r < 0) {
                (void)http_reply_error(req, 400, code, "%s", json_error_message(code));
                return r;
        }

        *ret = obj;
        return 0;
}

int http_reply_unavailable(struct http_request *req, const char *code, const char *what)
{
        http_reply_add_header(req, "Retry-After", "1");
        return http_reply_error(req, 503, code, "%s is not answering", what);
}

/* The errnos of a dependency unreachable or too slow. */
static bool is_unreachable(int r, const int *also)
{
        switch (r) {
        case -ECONNREFUSED:
        case -ECONNRESET:
        case -ETIMEDOUT:
        case -EHOSTDOWN:
        case -EHOSTUNREACH:
        case -ENOTCONN:
        case -EPIPE:
                return true;
        default:
                for (size_t i = 0; also && also[i] != 0; i++)
                        if (r == also[i])
                                return true;
                return false;
        }
}

int http_reply_dependency_error(struct http_request *req, int r, const char *dependency,
                                const int *also_unavailable)
{
        if (is_unreachable(r, also_unavailable))
                return http_reply_unavailable(req, "dependency_unavailable", dependency);
        log_error_errno(r, "Request failed on %s: %m", dependency);
        return http_reply_error(req, 500, "internal", "Internal error");
}
