#include "alertbotd-routes.h"

#include <inttypes.h>
#include <string.h>
#include <strings.h>

#include "alertbotd-notifications.h"
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

/* Authenticate and decode an Alertmanager payload (POST /webhook and
 * POST /notify). Returns the payload, or NULL once the error is answered. */
static struct webhook *read_payload(struct http_request *req, struct alertbotd_manager *m)
{
        _cleanup_free_ char *message = NULL;
        struct webhook *w = NULL;
        const char *token = http_request_bearer(req), *ctype, *body, *code = NULL;
        size_t len;
        int r;

        if (!token || !token_equal(token, m->webhook_token)) {
                http_reply_add_header(req, "WWW-Authenticate", "Bearer");
                http_reply_error(req, 401, "unauthorized", "A valid bearer token is required");
                return NULL;
        }
        ctype = http_request_header(req, "Content-Type");
        if (ctype && strncasecmp(ctype, "application/json", 16) != 0) {
                http_reply_error(req, 415, "unsupported_media_type",
                                 "The body must be application/json");
                return NULL;
        }

        body = http_request_body(req, &len);
        r = webhook_decode(body, len, &w, &code, &message);
        if (r == -ENOMEM) {
                http_reply_add_header(req, "Retry-After", "1");
                http_reply_error(req, 503, "busy", "Out of memory");
                return NULL;
        }
        if (r < 0) {
                /* 4xx: Alertmanager does not retry what can never succeed. */
                http_reply_error(req, 400, code, "%s", message ? message : "Invalid payload");
                return NULL;
        }
        if (w->n_alerts > (size_t)m->config->webhook_max_alerts) {
                http_reply_error(req, 400, "too_many_alerts", "More than %" PRId64 " alerts",
                                 m->config->webhook_max_alerts);
                webhook_free(w);
                return NULL;
        }
        return w;
}

typedef void payload_handler(struct http_request *req, struct alertbotd_manager *m,
                             const struct webhook *w);

/* The two receivers of Alertmanager's payload: read it once (answering a
 * bad one) and hand it to handle. */
static void serve_payload(struct http_request *req, void *userdata, payload_handler *handle)
{
        struct alertbotd_manager *m = userdata;
        _cleanup_(webhook_freep) struct webhook *w = read_payload(req, m);

        if (w)
                handle(req, m, w);
}

/* The remediation receiver: every alert decided under the policy. */
static void remediate(struct http_request *req, struct alertbotd_manager *m,
                      const struct webhook *w)
{
        _cleanup_(json_object_putp) struct json_object *summary = NULL;
        int r;

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

static void handle_webhook(struct http_request *req, void *userdata)
{
        serve_payload(req, userdata, remediate);
}

/* Alertmanager's escalation and tickets receivers: every alert is logged
 * and kept for GET /notifications. */
static void record(struct http_request *req, struct alertbotd_manager *m, const struct webhook *w)
{
        _cleanup_(json_object_putp) struct json_object *o = NULL;
        size_t n;

        n = notifications_record_webhook(m->notifications, w);
        o = json_object_new_object();
        if (!o) {
                /* Recorded all the same: a retry would record it twice. */
                http_reply_empty(req, 204);
                return;
        }
        json_object_object_add(o, "recorded", json_object_new_int64((int64_t)n));
        http_reply_json(req, 200, o);
}

static void handle_notify(struct http_request *req, void *userdata)
{
        serve_payload(req, userdata, record);
}

/* A JSON document built for a GET, or 503 when there was no memory for it. */
static void reply_json_or_busy(struct http_request *req, struct json_object *o)
{
        if (!o) {
                http_reply_error(req, 503, "busy", "Out of memory");
                return;
        }
        http_reply_json(req, 200, o);
}

static void handle_notifications(struct http_request *req, void *userdata)
{
        struct alertbotd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *o = notifications_json(m->notifications);

        reply_json_or_busy(req, o);
}

static void handle_incidents(struct http_request *req, void *userdata)
{
        struct alertbotd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *o = alertbotd_incidents_json(m);

        reply_json_or_busy(req, o);
}

const struct http_route alertbotd_routes[] = {
        {"POST", "/webhook", handle_webhook},
        {"GET", "/incidents", handle_incidents},
        {"POST", "/notify", handle_notify},
        {"GET", "/notifications", handle_notifications},
};
const size_t alertbotd_routes_count = ELEMENTSOF(alertbotd_routes);
