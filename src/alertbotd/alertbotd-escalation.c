#include "alertbotd-escalation.h"

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http-client.h"
#include "macro.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"

#define MAX_BACKOFF_MS 60000U

struct escalation {
        struct http_client *client;
        char *path;
        char *authorization; /* "Authorization: Bearer …" or NULL */
        unsigned max_attempts;
        unsigned initial_backoff_ms;

        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stopping;
        char **queue; /* ring of serialised bodies */
        size_t queue_size, head, count;
        pthread_t thread;
        bool thread_started;

        struct metric *sent;
        struct metric *failed;
        struct metric *dropped;
};

int escalation_url_split(const char *url, char **ret_base, char **ret_path)
{
        const char *host, *slash;
        char *base, *path;

        if (strncmp(url, "http://", 7) == 0)
                host = url + 7;
        else if (strncmp(url, "https://", 8) == 0)
                host = url + 8;
        else
                return -EINVAL;
        slash = strchr(host, '/');
        if (!slash)
                slash = host + strlen(host);
        if (slash == host)
                return -EINVAL;
        base = strndup(url, (size_t)(slash - url));
        path = strdup(*slash ? slash : "/");
        if (!base || !path) {
                free(base);
                free(path);
                return -ENOMEM;
        }
        *ret_base = base;
        *ret_path = path;
        return 0;
}

/* Wait up to ms unless stopping; returns true when stopping. Called with
 * the lock held. */
static bool wait_stopping(struct escalation *e, unsigned ms)
{
        struct timespec ts;

        ts = monotonic_deadline_ms(ms);
        while (!e->stopping)
                if (pthread_cond_timedwait(&e->cond, &e->lock, &ts) != 0)
                        break;
        return e->stopping;
}

/* One delivery with retries. Returns true when delivered. */
static bool deliver(struct escalation *e, const char *body)
{
        const char *headers[] = {"Content-Type: application/json", e->authorization, NULL};
        unsigned backoff = e->initial_backoff_ms;

        for (unsigned attempt = 1; attempt <= e->max_attempts; attempt++) {
                struct http_client_response resp = {};
                bool retry;
                int r;

                r = http_client_request(e->client, "POST", e->path, headers, body, strlen(body),
                                        &resp);
                if (r >= 0 && resp.status >= 200 && resp.status < 300) {
                        http_client_response_done(&resp);
                        return true;
                }
                retry = r < 0 || resp.status == 408 || resp.status == 429 || resp.status >= 500;
                if (r < 0)
                        log_warning_errno(r, "Escalation attempt %u of %u failed: %m", attempt,
                                          e->max_attempts);
                else
                        log_warning("Escalation attempt %u of %u answered %ld", attempt,
                                    e->max_attempts, resp.status);
                http_client_response_done(&resp);
                if (!retry || attempt == e->max_attempts)
                        break;
                log_debug("Escalation: attempt %u of %u in %u ms", attempt + 1, e->max_attempts,
                          backoff);

                pthread_mutex_lock(&e->lock);
                bool stopping = wait_stopping(e, backoff);
                pthread_mutex_unlock(&e->lock);
                if (stopping)
                        break;
                backoff = backoff > MAX_BACKOFF_MS / 2 ? MAX_BACKOFF_MS : backoff * 2;
        }
        return false;
}

static void *sender(void *userdata)
{
        struct escalation *e = userdata;

        for (;;) {
                char *body;

                pthread_mutex_lock(&e->lock);
                while (!e->stopping && e->count == 0)
                        pthread_cond_wait(&e->cond, &e->lock);
                if (e->stopping) {
                        pthread_mutex_unlock(&e->lock);
                        return NULL;
                }
                body = e->queue[e->head];
                e->queue[e->head] = NULL;
                e->head = (e->head + 1) % e->queue_size;
                e->count--;
                pthread_mutex_unlock(&e->lock);

                if (deliver(e, body)) {
                        metrics_counter_inc(e->sent);
                        log_info("Escalation delivered");
                } else {
                        metrics_counter_inc(e->failed);
                        log_error("Escalation could not be delivered; giving up on it");
                }
                free(body);
        }
}

int escalation_new(const struct escalation_options *opts, struct escalation **ret)
{
        _cleanup_free_ char *base = NULL;
        struct escalation *e;
        struct metric_family *f;
        int r;

        assert(opts && opts->url);

        e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        pthread_mutex_init(&e->lock, NULL);
        {
                pthread_condattr_t attr;

                pthread_condattr_init(&attr);
                pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
                pthread_cond_init(&e->cond, &attr);
                pthread_condattr_destroy(&attr);
        }
        e->max_attempts = opts->max_attempts ? opts->max_attempts : 6;
        e->initial_backoff_ms = opts->initial_backoff_ms ? opts->initial_backoff_ms : 1000;
        e->queue_size = opts->queue_size ? opts->queue_size : 64;
        e->queue = calloc(e->queue_size, sizeof(char *));
        if (!e->queue) {
                r = -ENOMEM;
                goto fail;
        }

        r = escalation_url_split(opts->url, &base, &e->path);
        if (r < 0)
                goto fail;
        if (opts->token && *opts->token &&
            asprintf(&e->authorization, "Authorization: Bearer %s", opts->token) < 0) {
                e->authorization = NULL;
                r = -ENOMEM;
                goto fail;
        }

        struct http_client_options copts = {
                .peer = "escalation",
                .base_url = base,
                .timeout_ms = opts->timeout_ms ? opts->timeout_ms : 5000,
                .max_response = 64 * 1024,
                .max_idle_handles = 2,
                .metrics = opts->metrics,
                .tracer = opts->tracer,
        };
        r = http_client_new(&copts, &e->client);
        if (r < 0)
                goto fail;

        if (opts->metrics) {
                f = metrics_counter_new(opts->metrics, "vigil_alertbot_escalations_total",
                                        "Escalations by outcome",
                                        (const char *const[]){"result", NULL});
                if (!f)
                        f = metrics_family_find(opts->metrics, "vigil_alertbot_escalations_total");
                e->sent = metrics_child1(f, "sent");
                e->failed = metrics_child1(f, "failed");
                e->dropped = metrics_child1(f, "dropped");
        }

        r = -pthread_create(&e->thread, NULL, sender, e);
        if (r < 0)
                goto fail;
        e->thread_started = true;
        *ret = e;
        return 0;

fail:
        escalation_free(e);
        return r;
}

void escalation_free(struct escalation *e)
{
        if (!e)
                return;
        if (e->thread_started) {
                pthread_mutex_lock(&e->lock);
                e->stopping = true;
                pthread_cond_broadcast(&e->cond);
                pthread_mutex_unlock(&e->lock);
                pthread_join(e->thread, NULL);
        }
        if (e->count > 0)
                log_warning("Dropping %zu undelivered escalations at shutdown", e->count);
        for (size_t i = 0; e->queue && i < e->queue_size; i++)
                free(e->queue[i]);
        free(e->queue);
        http_client_free(e->client);
        if (e->authorization) {
                explicit_bzero(e->authorization, strlen(e->authorization));
                free(e->authorization);
        }
        free(e->path);
        pthread_cond_destroy(&e->cond);
        pthread_mutex_destroy(&e->lock);
        free(e);
}

int escalation_submit(struct escalation *e, struct json_object *body)
{
        char *text = json_to_string_dup(body, NULL);
        size_t tail;

        if (!text)
                return -ENOMEM;
        pthread_mutex_lock(&e->lock);
        if (e->count == e->queue_size) {
                /* Drop the oldest: the newest says most about now. */
                free(e->queue[e->head]);
                e->queue[e->head] = NULL;
                e->head = (e->head + 1) % e->queue_size;
                e->count--;
                metrics_counter_inc(e->dropped);
                log_warning("Escalation queue full: dropped the oldest escalation");
        }
        tail = (e->head + e->count) % e->queue_size;
        e->queue[tail] = text;
        e->count++;
        pthread_cond_signal(&e->cond);
        pthread_mutex_unlock(&e->lock);
        return 0;
}
