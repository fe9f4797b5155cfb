#include "alertbotd-manager.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alertbotd-escalation.h"
#include "alertbotd-notifications.h"
#include "alertbotd-remediation.h"
#include "alertbotd-policy.h"
#include "alertbotd-routes.h"
#include "alertbotd-state.h"
#include "alertbotd-systemd.h"
#include "alertbotd-webhook.h"
#include "http-server.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"
#include "sd.h"
#include "trace.h"

#define TOKEN_MAX_SIZE   4096
#define TOKEN_MIN_SIZE   16
#define MAX_REQUEST_USEC (30 * USEC_PER_SEC)
#define DRAIN_TIMEOUT_MS 10000

static const struct faults_scope faults_scope = {
        .routes = alertbotd_routes, .n_routes = &alertbotd_routes_count,
        /* Nothing it depends on can be failed on purpose. */
};

const struct conf_key alertbotd_conf_table[] = {
        DAEMON_CONF_KEYS(struct alertbotd_config, "127.0.0.1:8005"),
        CONF_STRING("policy", "file", SYSCONFDIR "/vigil/alertbot-policy.conf", 4096,
                    struct alertbotd_config, policy_file,
                    "Remediation policy: rules, allowlist, cooldown, budget, breaker "
                    "(SIGHUP reloads it)"),
        CONF_BOOL("policy", "dry_run", "false", struct alertbotd_config, dry_run,
                  "Decide and audit every alert, but never restart a unit"),
        CONF_STRING("webhook", "token_file", "", 4096, struct alertbotd_config, webhook_token_file,
                    "Bearer token file when the webhook-token credential is absent"),
        CONF_INT("webhook", "max_alerts", "1000", 1, WEBHOOK_MAX_ALERTS, struct alertbotd_config,
                 webhook_max_alerts, "Alerts accepted in one notification (more: 400)"),
        CONF_STRING("state", "directory", LOCALSTATEDIR "/lib/vigil-alertbot", 4096,
                    struct alertbotd_config, state_directory,
                    "Where dedup keys, cooldowns, breakers and incidents are kept"),
        CONF_INT("state", "incidents_shown", "100", 1, STATE_MAX_INCIDENTS, struct alertbotd_config,
                 incidents_shown, "Incidents listed by GET /incidents, newest first"),
        CONF_STRING("systemd", "bus", "system", 1024, struct alertbotd_config, systemd_bus,
                    "system, session, or a D-Bus address (unix:path=...) to reach systemd on"),
        CONF_INT("worker", "queue_size", "64", 1, 1024, struct alertbotd_config, worker_queue_size,
                 "Restarts waiting for the worker (more: 503, retried)"),
        CONF_STRING("escalation", "url", "", 1024, struct alertbotd_config, escalation_url,
                    "Webhook told when the bot will not or cannot heal; empty: recorded on "
                    "this host (journal, GET /notifications)"),
        CONF_STRING("escalation", "token_file", "", 4096, struct alertbotd_config,
                    escalation_token_file,
                    "Bearer token file when the escalation-token credential is absent"),
        CONF_INT("escalation", "max_attempts", "6", 1, 20, struct alertbotd_config,
                 escalation_max_attempts, "Deliveries tried per escalation"),
        CONF_INT("escalation", "initial_backoff_ms", "1000", 10, 60000, struct alertbotd_config,
                 escalation_initial_backoff_ms, "First retry delay; doubles per attempt"),
        CONF_INT("escalation", "queue_size", "64", 1, 1024, struct alertbotd_config,
                 escalation_queue_size, "Escalations waiting to be sent (the oldest is dropped)"),
        CONF_INT("notifications", "kept", "200", 1, NOTIFICATIONS_MAX_KEPT, struct alertbotd_config,
                 notifications_kept,
                 "Notifications (POST /notify, escalations without a url) listed by GET "
                 "/notifications, newest first; each is also in the journal"),
        DAEMON_CONF_FAULTS_KEYS(struct alertbotd_config, &faults_scope),
};
const size_t alertbotd_conf_table_size = ELEMENTSOF(alertbotd_conf_table);

/* ---- lifecycle */

static void manager_done(void *userdata)
{
        struct alertbotd_manager *m = userdata;

        alertbotd_worker_done(m);
        notifications_free(m->notifications);
        escalation_free(m->escalation);
        state_free(m->scratch);
        state_free(m->state);
        policy_free(m->policy);
        erase_and_free(m->escalation_token);
        erase_and_free(m->webhook_token);
        pthread_cond_destroy(&m->queue_changed);
        pthread_mutex_destroy(&m->lock);
}

static int load_token(const char *credential, const char *file_key, const char *file, char **ret)
{
        size_t len;
        int r;

        r = conf_read_credential(credential, file, TOKEN_MAX_SIZE, ret, &len);
        if (r == -ENOENT)
                return log_error_errno(r,
                                       "No %s: provide the %s credential "
                                       "(LoadCredential=%s:…) or %s",
                                       credential, credential, credential, file_key);
        if (r < 0)
                return log_error_errno(r, "Failed to read the %s credential: %m", credential);
        if (len < TOKEN_MIN_SIZE) {
                erase_and_freep(ret);
                return log_error_errno(EINVAL,
                                       "The %s credential is %zu bytes, at least %d "
                                       "needed",
                                       credential, len, TOKEN_MIN_SIZE);
        }
        return 0;
}

/* Load the policy file, logging every problem in it. */
static int load_policy(const char *path, struct policy **ret)
{
        struct conf_diagnostics diag = {0};
        int r;

        r = policy_load_file(path, ret, &diag);
        for (size_t i = 0; i < diag.n_errors; i++) {
                _cleanup_free_ char *line = conf_error_format(&diag.errors[i]);

                log_error("Invalid policy: %s", line ? line : diag.errors[i].message);
        }
        conf_diagnostics_done(&diag);
        if (r == -EINVAL)
                return r;
        if (r < 0)
                return log_error_errno(r, "Failed to load the policy %s: %m", path);
        return 0;
}

/* --check-config: the policy file the configuration names is checked too. */
static int check_config(const void *config)
{
        const struct alertbotd_config *c = config;
        _cleanup_(policy_freep) struct policy *p = NULL;

        return load_policy(c->policy_file, &p);
}

static bool state_writable(void *userdata)
{
        struct alertbotd_manager *m = userdata;

        return atomic_load(&m->state_ok);
}

static int manager_init(struct daemon *d, void *userdata)
{
        const struct alertbotd_config *c = d->config;
        struct alertbotd_manager *m = userdata;
        int r;

        m->config = c;
        pthread_mutex_init(&m->lock, NULL);
        pthread_cond_init(&m->queue_changed, NULL);
        m->dry_run = c->dry_run;

        r = load_token("webhook-token", "[webhook] token_file", c->webhook_token_file,
                       &m->webhook_token);
        if (r < 0)
                return r;
        if (*c->escalation_url) {
                r = load_token("escalation-token", "[escalation] token_file",
                               c->escalation_token_file, &m->escalation_token);
                if (r < 0)
                        return r;
        }
        r = load_policy(c->policy_file, &m->policy);
        if (r < 0)
                return r;

        if (state_new(&m->state) < 0 || state_new(&m->scratch) < 0)
                return log_error_errno(ENOMEM, "Out of memory");
        r = state_load(m->state, c->state_directory);
        if (r == -ENOENT) {
                log_info("No state in %s yet: starting fresh", c->state_directory);
        } else if (r < 0) {
                return log_error_errno(r,
                                       "Failed to load the state from %s/%s: %m (move the file "
                                       "away to start afresh)",
                                       c->state_directory, STATE_FILE_NAME);
        } else {
                log_info("State loaded from %s: %zu incidents, %zu units", c->state_directory,
                         m->state->n_incidents, m->state->n_units);
        }
        /* Fails early when the directory is not writable. */
        r = state_save(m->state, c->state_directory);
        if (r < 0)
                return log_error_errno(r, "Cannot write the state to %s: %m", c->state_directory);
        atomic_store(&m->state_ok, true);

        m->queue_size = (size_t)c->worker_queue_size;
        m->queue = calloc(m->queue_size, sizeof(*m->queue));
        if (!m->queue)
                return log_error_errno(ENOMEM, "Out of memory");

        r = alertbotd_register_metrics(m, d->metrics);
        if (r < 0)
                return log_error_errno(ENOMEM, "Out of memory");

        if (*c->escalation_url) {
                struct escalation_options eo = {
                        .url = c->escalation_url,
                        .token = m->escalation_token,
                        .queue_size = (size_t)c->escalation_queue_size,
                        .max_attempts = (unsigned)c->escalation_max_attempts,
                        .initial_backoff_ms = (unsigned)c->escalation_initial_backoff_ms,
                        .metrics = d->metrics,
                        .tracer = d->tracer,
                };
                r = escalation_new(&eo, &m->escalation);
                if (r < 0)
                        return log_error_errno(r, "Failed to set up escalation to %s: %m",
                                               c->escalation_url);
        } else {
                log_info("[escalation] url is empty: refusals and failed remediations are "
                         "recorded on this host (journal, GET /notifications)");
        }
        r = notifications_new((size_t)c->notifications_kept, d->metrics, &m->notifications);
        if (r < 0)
                return log_error_errno(r, "Out of memory");

        return 0;
}

static int manager_start(void *userdata)
{
        struct alertbotd_manager *m = userdata;
        int r;

        r = alertbotd_worker_start(m);
        if (r < 0)
                return log_error_errno(r, "Failed to start the remediation worker: %m");
        log_info("%zu rules, %s", m->policy->n_rules,
                 m->dry_run ? "dry run (no restarts)" : "remediating");
        return 0;
}

static void manager_status(void *userdata, char *status, size_t size)
{
        struct alertbotd_manager *m = userdata;

        pthread_mutex_lock(&m->lock);
        snprintf(status, size, "%s%s; %zu restart%s queued%s",
                 atomic_load(&m->state_ok) ? "Serving" : "Degraded: state not writable",
                 m->dry_run ? " (dry run)" : "", m->queue_count + (m->worker_busy ? 1 : 0),
                 m->queue_count + (m->worker_busy ? 1 : 0) == 1 ? "" : "s",
                 m->worker_busy ? ", one running" : "");
        pthread_mutex_unlock(&m->lock);
}

/* SIGHUP: a new policy file and dry_run; on a bad policy keep the old one. */
static int manager_reload(void *userdata, const void *config)
{
        struct alertbotd_manager *m = userdata;
        const struct alertbotd_config *c = config;
        struct policy *p = NULL, *old;
        int r;

        r = load_policy(c->policy_file, &p);
        if (r < 0)
                return r;
        pthread_mutex_lock(&m->lock);
        old = m->policy;
        m->policy = p;
        m->dry_run = c->dry_run;
        pthread_mutex_unlock(&m->lock);
        policy_free(old);
        log_notice("Policy reloaded from %s: %zu rules%s", c->policy_file, p->n_rules,
                   c->dry_run ? ", dry run" : "");
        return 0;
}

static void manager_stop(void *userdata)
{
        struct alertbotd_manager *m = userdata;

        alertbotd_worker_stop(m);
}

/* /ready: the state file takes writes. */
static const struct daemon_check alertbotd_checks[] = {
        {"state", state_writable},
};

const struct daemon_ops alertbotd_ops = {
        .name = "vigil-alertbotd",
        .description = "Alertmanager webhook → remediation policy → systemd restarts",
        .default_config = SYSCONFDIR "/vigil/alertbotd.conf",
        DAEMON_CONF(alertbotd_conf_table, struct alertbotd_config),
        .checks = alertbotd_checks,
        .n_checks = ELEMENTSOF(alertbotd_checks),
        .routes = alertbotd_routes,
        .n_routes = &alertbotd_routes_count,
        .max_body = WEBHOOK_MAX_BODY,
        .max_request_usec = MAX_REQUEST_USEC,
        .drain_timeout_ms = DRAIN_TIMEOUT_MS,
        .check_config = check_config,
        .manager_size = sizeof(struct alertbotd_manager),
        .manager_init = manager_init,
        .manager_start = manager_start,
        .manager_status = manager_status,
        .manager_reload = manager_reload,
        .manager_stop = manager_stop,
        .manager_done = manager_done,
};
