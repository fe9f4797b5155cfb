/* vigil-alertbotd's manager: on the metrics registry and tracer the
 * skeleton built (daemon.h), it owns the secrets, the policy, the durable
 * state, its metrics, the escalation sender (or, without [escalation] url,
 * the list of notifications recorded on the host, which POST /notify also
 * feeds) and the remediation worker,
 * created in that order and torn down in reverse. What it does with a
 * webhook is in alertbotd-remediation.h.
 *
 * Thread-safety: HTTP threads and the worker share the fields below the
 * lock under it. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon.h"

struct json_object;
struct webhook;

struct alertbotd_config {
        struct daemon_config common;
        char *policy_file;
        bool dry_run;
        char *webhook_token_file;
        int64_t webhook_max_alerts;
        char *state_directory;
        int64_t incidents_shown;
        char *systemd_bus;
        int64_t worker_queue_size;
        char *escalation_url;
        char *escalation_token_file;
        int64_t escalation_max_attempts;
        int64_t escalation_initial_backoff_ms;
        int64_t escalation_queue_size;
        int64_t notifications_kept;
};

struct remediation_job;

struct alertbotd_manager {
        const struct alertbotd_config *config;
        char *webhook_token;
        char *escalation_token;
        struct escalation *escalation;       /* NULL: escalations go to notifications */
        struct notifications *notifications; /* POST /notify, GET /notifications */

        /* Guards everything below up to the worker's fields. */
        pthread_mutex_t lock;
        pthread_cond_t queue_changed;
        struct policy *policy;
        bool dry_run;
        struct alertbot_state *state;   /* what is on disk */
        struct alertbot_state *scratch; /* the copy a webhook decides on */
        struct remediation_job **queue; /* ring */
        size_t queue_size, queue_head, queue_count;
        bool worker_busy;
        atomic_bool state_ok; /* the last state write succeeded */
        atomic_bool stopping;

        pthread_t worker;
        bool worker_started;

        struct metric_family *actions;      /* vigil_alertbot_actions_total */
        struct metric_family *circuit_open; /* vigil_alertbot_circuit_open */
        struct metric *decision_duration;   /* vigil_alertbot_decision_duration_seconds */
};

extern const struct daemon_ops alertbotd_ops;

/* Exposed for tests: the configuration table of vigil-alertbotd. */
extern const struct conf_key alertbotd_conf_table[];
extern const size_t alertbotd_conf_table_size;
