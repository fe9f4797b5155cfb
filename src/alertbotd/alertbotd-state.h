/* vigil-alertbotd's durable state: the dedup keys of the alerts it has
 * seen, per-unit cooldowns and circuit breakers, the restarts counted
 * against the hourly budget, and the recent incidents with their actions.
 *
 * The state is one flat struct of fixed-size tables, so that it can be
 * copied with state_copy() (the webhook applies its decisions to a copy and
 * swaps it in only once that copy is on disk). Every table is bounded and
 * pruned: old entries make room for new ones, so no input grows memory.
 *
 * On disk it is one JSON snapshot, <directory>/state.json, replaced
 * atomically (write a temporary file, fsync, rename, fsync the directory),
 * so a crash leaves either the old or the new snapshot, never a torn one.
 *
 * Thread-safety: none; the manager serialises access with its lock. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

#define STATE_MAX_DEDUP       4096
#define STATE_DEDUP_TTL       (7 * 24 * 3600) /* seconds a dedup key is kept */
#define STATE_MAX_UNITS       256
#define STATE_MAX_INCIDENTS   500
#define STATE_MAX_ACTIONS     8    /* per incident; the oldest make room */
#define STATE_MAX_BUDGET      1000 /* restarts remembered for the hourly budget */
#define STATE_MAX_FAILURES    100  /* failures remembered per unit (breaker) */
#define STATE_UNIT_MAX        128  /* bytes of a unit name */
#define STATE_ALERTNAME_MAX   128
#define STATE_FINGERPRINT_MAX 64
#define STATE_TIMESTAMP_MAX   64
#define STATE_KEY_MAX         (STATE_FINGERPRINT_MAX + STATE_TIMESTAMP_MAX + 3)
#define STATE_WORD_MAX        31 /* decision, action and result words */
#define STATE_FILE_MAX        (16U * 1024U * 1024U)
#define STATE_FILE_NAME       "state.json"

enum breaker_state {
        BREAKER_CLOSED,
        BREAKER_OPEN,
        BREAKER_HALF_OPEN,
};

struct state_dedup {
        char key[STATE_KEY_MAX + 1]; /* fingerprint|startsAt|f or r */
        int64_t seen_at;
};

struct state_unit {
        char name[STATE_UNIT_MAX + 1];
        int64_t last_restart_at; /* start of the last restart (cooldown), 0: never */
        int64_t last_used;       /* for eviction */
        enum breaker_state breaker;
        int64_t opened_at;      /* when the breaker last opened */
        bool probe_in_flight;   /* half-open: the one trial restart is running */
        bool awaiting_resolve;  /* restarted successfully, the alert not resolved yet */
        int64_t awaiting_since; /* when that restart finished */
        size_t n_failures;
        int64_t failures[STATE_MAX_FAILURES]; /* times of failed remediations, oldest first */
};

struct state_action {
        int64_t at;
        int64_t duration_ms;
        char decision[STATE_WORD_MAX + 1]; /* decision_kind_to_string() */
        char action[STATE_WORD_MAX + 1];   /* "restart" or "" */
        char result[STATE_WORD_MAX + 1];   /* "started", "done", "job_failed", … */
        char unit[STATE_UNIT_MAX + 1];
};

struct state_incident {
        char fingerprint[STATE_FINGERPRINT_MAX + 1];
        char starts_at[STATE_TIMESTAMP_MAX + 1];
        char alertname[STATE_ALERTNAME_MAX + 1];
        char unit[STATE_UNIT_MAX + 1];
        bool resolved;
        int64_t opened_at;
        int64_t resolved_at;
        size_t n_actions;
        struct state_action actions[STATE_MAX_ACTIONS]; /* oldest first */
};

struct alertbot_state {
        size_t n_dedup;
        struct state_dedup dedup[STATE_MAX_DEDUP]; /* oldest first */
        size_t n_units;
        struct state_unit units[STATE_MAX_UNITS];
        size_t n_budget;
        int64_t budget[STATE_MAX_BUDGET]; /* restart times, oldest first */
        size_t n_incidents;
        struct state_incident incidents[STATE_MAX_INCIDENTS]; /* oldest first */
};

/* An empty state. Returns 0 or -ENOMEM. */
int state_new(struct alertbot_state **ret);
void state_free(struct alertbot_state *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct alertbot_state *, state_free)
void state_copy(struct alertbot_state *dst, const struct alertbot_state *src);

/* Copy src into a buffer of size max + 1, refusing (-ENAMETOOLONG) a
 * longer string. */
int state_set_string(char *dst, size_t max, const char *src);

/* "fingerprint|starts_at|f" (firing) or "…|r" (resolved) into key
 * (STATE_KEY_MAX + 1 bytes). -ENAMETOOLONG for oversized parts. */
int state_dedup_key(const char *fingerprint, const char *starts_at, bool firing, char *key);
bool state_dedup_contains(const struct alertbot_state *s, const char *key);
/* Remember key (a key not yet contained). Keys older than STATE_DEDUP_TTL
 * are dropped first; when the table is full the oldest key makes room. */
void state_dedup_add(struct alertbot_state *s, const char *key, int64_t now);

/* The unit called name; with create, a new one (closed breaker) when there
 * is none, evicting the least recently used unit whose breaker is closed
 * (or, all being open, the least recently used) when the table is full.
 * NULL for a name over STATE_UNIT_MAX (or not found without create). */
struct state_unit *state_unit_get(struct alertbot_state *s, const char *name, bool create,
                                  int64_t now);

/* Restarts counted against the budget since now - window_seconds (older
 * ones are dropped). */
size_t state_budget_count(struct alertbot_state *s, int64_t now, int64_t window_seconds);
void state_budget_add(struct alertbot_state *s, int64_t now);

/* Incidents are keyed by fingerprint and startsAt. */
struct state_incident *state_incident_find(struct alertbot_state *s, const char *fingerprint,
                                           const char *starts_at);
/* A new open incident (strings cut to their fields); when the table is
 * full the oldest resolved incident (else the oldest) makes room. */
struct state_incident *state_incident_add(struct alertbot_state *s, const char *fingerprint,
                                          const char *starts_at, const char *alertname,
                                          int64_t now);
/* Append an action; the oldest makes room when full. Returns it. */
struct state_action *state_incident_add_action(struct state_incident *inc, int64_t now,
                                               const char *decision, const char *action,
                                               const char *unit, const char *result);

/* Write the snapshot to directory/state.json atomically and durably.
 * Returns 0, or the negative errno of the failing call (-ENOSPC, -EACCES,
 * -EIO, …); on failure the previous snapshot is left in place. */
int state_save(const struct alertbot_state *s, const char *directory);
/* Read directory/state.json into s (which is reset first). Returns 0,
 * -ENOENT when there is none (s is empty), -EFBIG past STATE_FILE_MAX,
 * -EBADMSG when it is not a snapshot, or the errno of reading it. Entries
 * that do not fit their fields are skipped; tables are cut to their
 * limits. Restarts that were running when the snapshot was written (a
 * half-open probe, an action "started") are marked "interrupted". */
int state_load(struct alertbot_state *s, const char *directory);

struct json_object;
/* {"at","decision","action","unit","result","duration_ms"}, as GET
 * /incidents and escalations show an action; NULL when out of memory. */
struct json_object *state_action_json(const struct state_action *a);
/* {"incidents":[…]} with at most limit incidents, newest first. */
struct json_object *state_incidents_json(const struct alertbot_state *s, size_t limit);
const char *breaker_state_to_string(enum breaker_state b);
