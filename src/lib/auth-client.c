#include "auth-client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http-client.h"
#include "http-server.h"
#include "json-util.h"
#include "log.h"
#include "macro.h"

struct auth_client {
        struct http_client *http;
};

int auth_client_new(const struct auth_client_options *opts, struct auth_client **ret)
{
        struct auth_client *c;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;

        struct http_client_options http = {
                .peer = "auth",
                .base_url = opts->base_url,
                .connect_timeout_ms = opts->timeout_ms < 1000 ? opts->timeout_ms : 1000,
                .timeout_ms = opts->timeout_ms,
                .max_response = 64 * 1024,
                .metrics = opts->metrics,
                .tracer = opts->tracer,
        };
        r = http_client_new(&http, &c->http);
        if (r < 0) {
                free(c);
                return r;
        }
        *ret = c;
        return 0;
}

void auth_client_free(struct auth_client *c)
{
        if (!c)
                return;
        http_client_free(c->http);
        free(c);
}

void auth_client_set_failed(struct auth_client *c, bool failed)
{
        http_client_set_failed(c->http, failed);
}

int auth_client_verify(struct auth_client *c, const char *token, int64_t *ret_user_id)
{
        _cleanup_free_ char *header = NULL;
        _cleanup_(json_object_putp) struct json_object *answer = NULL;
        struct http_client_response resp = {0};
        const char *error_code;
        int64_t user_id;
        int r;

        if (!token || !*token || strlen(token) > AUTH_TOKEN_MAX_LENGTH)
                return -EACCES;
        if (asprintf(&header, "Authorization: Bearer %s", token) < 0) {
                header = NULL;
                return -ENOMEM;
        }

        const char *headers[] = {header, NULL};
        r = http_client_request(c->http, "POST", "/verify", headers, "", 0, &resp);
        if (r == -EINVAL) /* a token authd could not even be asked about */
                return -EACCES;
        if (r < 0)
                return r;
        if (resp.status == 401) {
                http_client_response_done(&resp);
                return -EACCES;
        }
        if (resp.status != 200) {
                http_client_response_done(&resp);
                return -EPROTO;
        }
        r = json_parse_object(resp.body, resp.body_len, 0, &answer, &error_code);
        if (r >= 0)
                r = json_get_int64(answer, "user_id", 1, INT64_MAX, &user_id);
        http_client_response_done(&resp);
        if (r < 0)
                return -EBADMSG;

        *ret_user_id = user_id;
        return 0;
}

int auth_client_health(struct auth_client *c)
{
        struct http_client_response resp = {0};
        int r;

        r = http_client_request(c->http, "GET", "/health", NULL, NULL, 0, &resp);
        if (r >= 0 && resp.status != 200)
                r = -EIO;
        http_client_response_done(&resp);
        return r;
}

void auth_reply_invalid_token(struct http_request *req)
{
        http_reply_add_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        http_reply_error(req, 401, "invalid_token", "Missing, invalid or revoked token");
}

int auth_request_user(struct auth_client *c, struct http_request *req, int64_t *ret_user_id)
{
        int r;

        r = auth_client_verify(c, http_request_bearer(req), ret_user_id);
        if (r == -EACCES) {
                auth_reply_invalid_token(req);
                return r;
        }
        if (r == -ENOMEM) {
                http_reply_error(req, 500, "internal", "Internal error");
                return r;
        }
        if (r < 0) {
                /* Transport failures are counted and traced by the client;
                 * a wrong answer is authd's bug, worth a line. */
                if (r == -EPROTO || r == -EBADMSG)
                        log_warning("vigil-authd answered POST /verify with %s (see "
                                    "vigil_http_client_requests_total{peer=\"auth\"})",
                                    r == -EPROTO ? "an unexpected status" : "no user id");
                http_reply_add_header(req, "Retry-After", "1");
                http_reply_error(req, 503, "dependency_unavailable", "auth is not answering");
                return r;
        }
        return 0;
}
