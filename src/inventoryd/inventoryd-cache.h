/* vigil-inventoryd's read-through cache in Redis (DESIGN.md §2 "products").
 *
 * A value lives under <prefix><name> (e.g. inventory:products,
 * inventory:product:17) with a jittered TTL so entries filled together do
 * not expire together. A miss is rebuilt by one caller only: the threads
 * of this process coalesce on an in-process single-flight, and processes
 * coalesce on a Redis lock (SET lock:<prefix><name> <token> NX PX lock_ms,
 * outside the prefix the local caches track);
 * a caller that finds the lock taken polls for the value for up to wait_ms
 * and then reads the database itself.
 *
 * Invalidation never loses to a slow rebuild: every name has a generation
 * counter <prefix>gen:<name>, read together with the value; invalidating
 * bumps it and deletes the value in one script, and a rebuild stores its
 * value only when the generation is still the one it read before asking
 * the database. So a value read before a write never lands in the cache
 * after that write's invalidation.
 *
 * In front of Redis, values are served from this process's memory when
 * opts->local is set (see local-cache.h, which tracks every key under the
 * prefix): a value read from Redis or rebuilt is kept there unless an
 * invalidation raced it, and cache_invalidate() drops it here at once and,
 * through Redis, in every other process.
 *
 * Redis failing is never an error for readers: the value is built from the
 * database, and for a second after a connection failure Redis is bypassed
 * altogether (no connect timeout per request). An invalidation that could
 * not reach Redis leaves a purge pending, done by cache_maintain() once
 * Redis answers again, so no stale value outlives an outage.
 *
 * Knows nothing of HTTP, of products or of metrics.
 *
 * Thread-safety: every function may be called from any thread, except
 * cache_free(). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "inventoryd-singleflight.h"
#include "macro.h"

struct local_cache;
struct redis_pool;
struct cache;

#define CACHE_NAME_MAX   64 /* bytes in a name */
#define CACHE_PREFIX_MAX 32
/* Generation counters outlive any value by far, and expire eventually. */
#define CACHE_GENERATION_TTL_MS (24ULL * 3600 * 1000)
/* How long Redis is bypassed after a connection failure. */
#define CACHE_BYPASS_USEC (1 * USEC_PER_SEC)

struct cache_options {
        struct redis_pool *redis;
        struct local_cache *local; /* may be NULL: values in front of Redis, in memory */
        const char *prefix;        /* "inventory:" */
        unsigned ttl_seconds;      /* 1..86400 */
        unsigned jitter_percent;   /* 0..50: TTL varies by ± this share */
        unsigned lock_ms;          /* lifetime of the rebuild lock, 1..60000 */
        unsigned wait_ms;          /* how long a caller without the lock polls, 0..10000 */
};

/* Builds a value from the source of truth: returns 0 and a malloc()ed,
 * NUL-terminated value of *ret_len bytes, or a negative errno that
 * cache_get() passes through (e.g. -ENOENT, which is not cached). */
typedef singleflight_build_fn cache_build_fn;

/* Returns 0, -EINVAL for options out of range, or -ENOMEM. */
int cache_new(const struct cache_options *opts, struct cache **ret);
void cache_free(struct cache *c); /* accepts NULL */
DEFINE_TRIVIAL_CLEANUP_FUNC(struct cache *, cache_free)

/* Change the TTL of values stored from now on (a reload). Values out of
 * range are clamped. */
void cache_set_ttl(struct cache *c, unsigned ttl_seconds, unsigned jitter_percent);

/* The value of name (1..CACHE_NAME_MAX bytes of [a-z0-9:_-], else -EINVAL):
 * from Redis when it is there (*ret_hit true), otherwise from build, stored
 * for the next caller (*ret_hit false). Returns 0 and a malloc()ed
 * NUL-terminated value, or build's negative errno. Redis errors are not
 * returned: they make this a miss served by build. */
int cache_get(struct cache *c, const char *name, cache_build_fn build, void *userdata,
              char **ret_value, size_t *ret_len, bool *ret_hit);

/* Invalidate names (after the write that changed them has committed).
 * Returns 0, or the negative errno of Redis after leaving a purge pending
 * (the caller may log it; readers are not affected). -EINVAL for an
 * invalid name or n outside 1..CACHE_INVALIDATE_MAX. */
#define CACHE_INVALIDATE_MAX 8
int cache_invalidate(struct cache *c, const char *const *names, size_t n);

/* Periodic work (from the main loop): when an invalidation failed, delete
 * every value under the prefix (SCAN, never KEYS) once Redis answers.
 * Returns 0 when nothing is pending any more, or a negative errno. */
int cache_maintain(struct cache *c);
/* True while an invalidation failed and the purge is still pending. */
bool cache_purge_pending(struct cache *c);

/* The TTL in milliseconds for a value: ttl_seconds ± jitter_percent,
 * spread uniformly by random (any 64 random bits); at least 1. */
uint64_t cache_jittered_ttl_ms(unsigned ttl_seconds, unsigned jitter_percent, uint64_t random);

/* Whether name is a valid cache name (see cache_get()). */
bool cache_name_is_valid(const char *name);
