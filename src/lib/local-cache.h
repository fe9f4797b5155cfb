/* An in-process cache in front of Redis, kept coherent by Redis itself.
 *
 * A process serves hot values (a session, a product) from its own memory
 * instead of asking Redis each time. Coherence comes from Redis's
 * server-assisted client-side caching: a background thread holds one
 * connection with CLIENT TRACKING ON BCAST PREFIX <prefix> redirected to
 * itself and subscribed to __redis__:invalidate, so Redis pushes the name
 * of every key under the prefix that anyone writes, deletes or lets
 * expire, and the thread drops it here.
 *
 * Rules that keep a stale value from ever being served for long:
 *  - a value is served only while that connection is up and answering (a
 *    PING every second when idle; two seconds of silence count as down);
 *    losing it empties the cache, and nothing is cached until it is back;
 *  - a value read from Redis is stored only if no invalidation arrived
 *    since before it was read (the ticket from local_cache_get()), so a
 *    read that raced a write never lands after the write's invalidation;
 *  - a writer drops its own keys at once with local_cache_invalidate();
 *    other processes drop them when Redis's push arrives (typically well
 *    under a millisecond after the write);
 *  - every value expires after max_age_ms whatever happens, and the cache
 *    holds at most max_bytes (oldest values go first).
 *
 * Counts lookups in vigil_local_cache_lookups_total{cache,result} and
 * invalidations in vigil_local_cache_invalidations_total{cache}; exposes
 * vigil_local_cache_entries{cache} and vigil_local_cache_active{cache}.
 *
 * Thread-safety: every function may be called from any thread, except
 * local_cache_free(). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

struct metrics_registry;
struct redis_pool;
struct local_cache;

#define LOCAL_CACHE_MAX_KEY    256
#define LOCAL_CACHE_MAX_PREFIX 64
#define LOCAL_CACHE_MAX_AGE_MS 60000
#define LOCAL_CACHE_MAX_BYTES  ((size_t)1 << 30)
/* The invalidation connection is PINGed after this long without a word,
 * and counts as down when the PING gets no answer within as long again. */
#define LOCAL_CACHE_HEARTBEAT_MS 1000
/* A ticket that local_cache_put() never accepts. */
#define LOCAL_CACHE_NO_TICKET UINT64_MAX

struct local_cache_options {
        struct redis_pool *redis; /* where to connect (address, password, timeouts) */
        const char *name;         /* the cache label in metrics and logs: "sessions" */
        const char *prefix;       /* keys tracked: "auth:sess:" (1..LOCAL_CACHE_MAX_PREFIX) */
        unsigned max_age_ms;      /* 1..LOCAL_CACHE_MAX_AGE_MS */
        size_t max_bytes;         /* keys and values, 4096..LOCAL_CACHE_MAX_BYTES */
        struct metrics_registry *metrics; /* may be NULL */
};

/* Starts the invalidation thread, which connects in the background: the
 * cache serves nothing until it is subscribed. Returns 0, -EINVAL for
 * options out of range, -EEXIST when metrics has a family of the same name
 * of another kind, or -ENOMEM (or another errno from thread creation). */
int local_cache_new(const struct local_cache_options *opts, struct local_cache **ret);
void local_cache_free(struct local_cache *c); /* accepts NULL; stops the thread */
DEFINE_TRIVIAL_CLEANUP_FUNC(struct local_cache *, local_cache_free)

/* Returns 0 and a malloc()ed NUL-terminated copy of the value of key (its
 * length in *ret_len, which may be NULL) when it is cached and fresh.
 * Otherwise returns -ENOENT with *ret_ticket to pass to local_cache_put()
 * after reading the value from Redis (LOCAL_CACHE_NO_TICKET while the
 * invalidation connection is down), or -ENOMEM. c may be NULL (a cache
 * that is switched off: every lookup misses). */
int local_cache_get(struct local_cache *c, const char *key, char **ret_value, size_t *ret_len,
                    uint64_t *ret_ticket);

/* Store value (len bytes) for key, read from Redis after ticket was taken,
 * unless an invalidation has arrived since or the connection went down.
 * It expires at expires_usec (CLOCK_MONOTONIC) or after max_age_ms,
 * whichever is first; 0 means max_age_ms. Values larger than an eighth of
 * max_bytes are not kept. Failures only cost a later miss. */
void local_cache_put(struct local_cache *c, const char *key, const char *value, size_t len,
                     uint64_t ticket, uint64_t expires_usec);

/* Drop key now (after this process wrote it in Redis), and make every
 * ticket taken before this moment void. */
void local_cache_invalidate(struct local_cache *c, const char *key);

/* Whether the invalidation connection is subscribed, i.e. the cache serves. */
bool local_cache_is_active(struct local_cache *c);
