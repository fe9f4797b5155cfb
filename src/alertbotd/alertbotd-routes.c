#include "alertbotd-routes.h"

#include <inttypes.h>
#include <string.h>
#include <strings.h>

#include "alertbotd-remediation.h"
#include "alertbotd-webhook.h"
#include "json-util.h"
#include "log.h"

/* Compare the presented token with the expected one in time independent
 * of where they differ. */
static bool token_equal(const char *presented, const char *expected)
{
        size_t a = strlen(presented), b = strlen(expected);
        unsigned char diff = a != b;

        for (size_t i = 0; i < b; i++)
                diff |= (unsigned char)(expected[i] ^ (i < a ? presented[i] : 0));
        return diff == 0;
}

static void handle_webhook(struct http_request *req, void *userdata)
{
        struct alertbotd_manager *m = userdata;
        _cleanup_(webhook_freep) struct webhook *w = NULL;
        _cleanup_(json_object_putp) struct json_object *summary = NULL;
        _cleanup_free_ char *message = NULL;
        const char *token = http_request_bearer(req), *ctype, *body, *code = NULL;
        size_t len;
        int r;

        if (!token || !token_equal(token, m->webhook_token)) {
                http_reply_add_header(req, "WWW-Authenticate", "Bearer");
                http_reply_error(req, 401, "unauthorized", "A valid bearer token is required");
                return;
        }
        ctype = http_request_header(req, "Content-Type");
        if (ctype && strncasecmp(ctype, "application/json", 16) != 0) {
                http_reply_error(req, 415, "unsupported_media_type",
                                 "The body must be application/json");
                return;
        }

        body = http_request_body(req, &len);
        r = webhook_decode(body, len, &w, &code, &message);
        if (r == -ENOMEM) {
                http_reply_add_header(req, "Retry-After", "1");
                http_reply_error(req, 503, "busy", "Out of memory");
                return;
        }
        if (r < 0) {
                /* 4xx: Alertmanager does not retry what can never succeed. */
                http_reply_error(req, 400, code, "%s", message ? message : "Invalid payload");
                return;
        }
        if (w->n_alerts > (size_t)m->config->webhook_max_alerts) {
                http_reply_error(req, 400, "too_many_alerts", "More than %" PRId64 " alerts",
                                 m->config->webhook_max_alerts);
                return;
        }

        r = alertbotd_handle_webhook(m, w, &summary);
        if (r == -EAGAIN) {
                http_reply_add_header(req, "Retry-After", "5");
                http_reply_error(req, 503, "busy", "Too many restarts queued; try again");
                return;
        }
        if (r < 0) {
                http_reply_add_header(req, "Retry-After", "5");
                http_reply_error(req, 503, "state_unavailable",
                                 "The alerts could not be recorded durably; try again");
                return;
        }
        http_reply_json(req, 200, summary);
}

static void handle_incidents(struct http_request *req, void *userdata)
{
        struct alertbotd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *o = alertbotd_incidents_json(m);

        if (!o) {
                http_reply_error(req, 503, "busy", "Out of memory");
                return;
        }
        http_reply_json(req, 200, o);
}

const struct http_route alertbotd_routes[] = {
        {"POST", "/webhook", handle_webhook},
        {"GET", "/incidents", handle_incidents},
};
const size_t alertbotd_routes_count = ELEMENTSOF(alertbotd_routes);
