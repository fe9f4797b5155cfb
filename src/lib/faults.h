/* Runtime fault injection, the same in every daemon: the [faults] section
 * (DAEMON_CONF_FAULTS_KEYS), read at start and on every SIGHUP, drives
 *
 *   error_ratio          a share of the requests to the API routes answered
 *                        503 (never /health, /ready, /metrics);
 *   latency_ms           latency added before those requests are handled;
 *   routes               comma list of fnmatch(3) patterns of route templates
 *                        ("/login", "/product/" followed by *) the two
 *                        above apply to
 *                        (empty: every API route);
 *   fail_dependency      a dependency the daemon treats as down;
 *   hang_seconds         the main loop hangs once, this long (the watchdog
 *                        drill);
 *   leak_kib_per_second  memory taken and kept, up to FAULTS_LEAK_MAX_BYTES.
 *
 * Each key is exported as vigil_fault_active{fault="<key>"} with the
 * configured value (1 for fail_dependency when set), 0 when off.
 *
 * Thread-safety: faults_set(), faults_take_hang() and faults_leak_tick()
 * are for the main loop; faults_decide() and faults_dependency_failed()
 * may be called from any thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

struct http_route;
struct metrics_registry;
struct faults;

#define FAULTS_MAX_LATENCY_MS          60000
#define FAULTS_MAX_HANG_SECONDS        3600
#define FAULTS_MAX_LEAK_KIB_PER_SECOND 65536
#define FAULTS_LEAK_MAX_BYTES          (256U * 1024U * 1024U)
#define FAULTS_MAX_ROUTE_PATTERNS      16
#define FAULTS_MAX_ROUTES_LENGTH       1024
#define FAULTS_MAX_DEPENDENCY_LENGTH   32

struct faults_config {
        double error_ratio;
        int64_t latency_ms;
        char *routes;
        char *fail_dependency;
        int64_t hang_seconds;
        int64_t leak_kib_per_second;
};

/* What a daemon's [faults] may name: its API routes and the dependencies
 * it can fail (a NULL-terminated list, a subset of postgres, redis, auth,
 * amqp). */
struct faults_scope {
        const struct http_route *routes;
        const size_t *n_routes;
        const char *const *dependencies;
};

/* conf_key checks: routes must be a comma list of patterns each starting
 * with '/' and matching at least one of scope's routes; fail_dependency
 * one of scope's dependencies. */
int faults_check_routes(const char *value, const void *scope, char *msg, size_t size);
int faults_check_dependency(const char *value, const void *scope, char *msg, size_t size);

/* The [faults] keys, for a config struct whose member common.faults is a
 * struct faults_config; scope is a const struct faults_scope *. */
#define DAEMON_CONF_FAULTS_KEYS(type, scope)                                                       \
        CONF_DOUBLE("faults", "error_ratio", "0", 0.0, 1.0, type, common.faults.error_ratio,       \
                    "Share of requests to the API routes answered 503 on purpose (reloadable)"),   \
                CONF_INT("faults", "latency_ms", "0", 0, FAULTS_MAX_LATENCY_MS, type,              \
                         common.faults.latency_ms,                                                 \
                         "Latency added on purpose to requests to the API routes (reloadable)"),   \
                CONF_STRING_CHECKED(                                                               \
                        "faults", "routes", "", FAULTS_MAX_ROUTES_LENGTH, type,                    \
                        common.faults.routes,                                                      \
                        "Comma list of route patterns error_ratio and latency_ms "                 \
                        "apply to (\"/login\", \"/product/*\"); empty: all (reloadable)",          \
                        faults_check_routes, scope),                                               \
                CONF_STRING_CHECKED("faults", "fail_dependency", "", FAULTS_MAX_DEPENDENCY_LENGTH, \
                                    type, common.faults.fail_dependency,                           \
                                    "Dependency treated as down on purpose (reloadable)",          \
                                    faults_check_dependency, scope),                               \
                CONF_INT("faults", "hang_seconds", "0", 0, FAULTS_MAX_HANG_SECONDS, type,          \
                         common.faults.hang_seconds,                                               \
                         "Hang the main loop this long, once, when a reload sets it (watchdog "    \
                         "drill)"),                                                                \
                CONF_INT("faults", "leak_kib_per_second", "0", 0, FAULTS_MAX_LEAK_KIB_PER_SECOND,  \
                         type, common.faults.leak_kib_per_second,                                  \
                         "Memory leaked on purpose per second, up to 256 MiB; 0 frees it "         \
                         "(reloadable)")

/* Whether the patterns of routes (a valid [faults] routes value, or NULL
 * or "" for all) select the route template route. */
bool faults_routes_select(const char *routes, const char *route);

struct faults_options {
        struct metrics_registry *metrics; /* may be NULL */
        uint64_t seed;                    /* of the draws; 0: a random one */
        /* Routes whose handler applies error_ratio itself (paymentd's
         * charge, through its processor): faults_decide() never fails
         * them. NULL-terminated, may be NULL. */
        const char *const *own_error_routes;
        size_t leak_max_bytes; /* 0: FAULTS_LEAK_MAX_BYTES */
};

int faults_new(const struct faults_options *opts, struct faults **ret);
void faults_free(struct faults *f); /* accepts NULL; frees the leak */

/* Apply c (validated by its conf_key checks). at_start: the configuration
 * the daemon started with, whose hang_seconds is ignored (a daemon
 * restarted by the watchdog must not hang again); on a reload a
 * hang_seconds that changed to a value > 0 arms one hang. Returns 0 or
 * -ENOMEM (nothing changed). */
int faults_set(struct faults *f, const struct faults_config *c, bool at_start);

/* For one request to an API route: the latency to add in *ret_delay_ms and
 * whether to answer 503 instead of handling it. */
void faults_decide(struct faults *f, const char *route, unsigned *ret_delay_ms, bool *ret_fail);

/* Whether [faults] fail_dependency names dependency. */
bool faults_dependency_failed(struct faults *f, const char *dependency);

/* The armed hang in seconds, once (0 when none); disarms it. */
unsigned faults_take_hang(struct faults *f);

/* Grow the leak by leak_kib_per_second for the time since the last call
 * (bounded by leak_max_bytes in all). Returns the bytes held. */
size_t faults_leak_tick(struct faults *f);
