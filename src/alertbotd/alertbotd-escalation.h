/* Escalation: when the policy refuses to act (breaker open, budget spent,
 * a forced unit off the allowlist) or a restart does not heal, vigil-
 * alertbotd POSTs {"alert":…,"actions":[…],"results":[…]} to a webhook (a
 * paging bridge) with the escalation-token as bearer token.
 *
 * The bot never waits for it: escalation_submit() puts the body in a
 * bounded queue (the oldest is dropped, and counted, when full) drained by
 * one thread that retries failures (transport errors, 408, 429 and 5xx)
 * with exponential backoff, then gives up and counts it.
 * vigil_alertbot_escalations_total{result="sent"|"failed"|"dropped"}.
 *
 * Thread-safety: escalation_submit() may be called from any thread;
 * new/free from the owner. */
#pragma once

#include <stddef.h>

struct metrics_registry;
struct tracer;
struct json_object;
struct escalation;

struct escalation_options {
        const char *url;             /* http(s)://host:port/path; required */
        const char *token;           /* bearer token; NULL or "": none */
        size_t queue_size;           /* 0: 64 */
        unsigned max_attempts;       /* 0: 6 */
        unsigned initial_backoff_ms; /* 0: 1000; doubles per attempt, at most 60 s */
        unsigned timeout_ms;         /* per attempt; 0: 5000 */
        struct metrics_registry *metrics;
        struct tracer *tracer;
};

/* Start the sender thread. Returns 0, -EINVAL for a bad URL, -ENOMEM, or
 * the errno of creating the thread or the HTTP client. */
int escalation_new(const struct escalation_options *opts, struct escalation **ret);
/* Stop the thread (a request in flight finishes or times out; what is
 * still queued is dropped and counted) and free. Accepts NULL. */
void escalation_free(struct escalation *e);
/* Queue body (serialised now; the caller keeps its reference). Returns 0,
 * or -ENOMEM. Never blocks on the network. */
int escalation_submit(struct escalation *e, struct json_object *body);

/* Split "http://host:port/path?q" into a malloc()ed base "http://host:port"
 * and path "/path?q" ("/" when empty). Returns 0 or -EINVAL (not http or
 * https, no host) or -ENOMEM. Also used for readiness URLs. */
int escalation_url_split(const char *url, char **ret_base, char **ret_path);
