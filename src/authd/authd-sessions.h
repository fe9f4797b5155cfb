/* Sessions of vigil-authd in Redis. A session is the key auth:sess:<sid>
 * holding the user id, with the token's lifetime as TTL, plus a member of
 * the sorted set auth:sessions scored by expiry so active sessions can be
 * counted without KEYS. A token is only valid while its session exists, so
 * a logout revokes at once, and a Redis that lost its data (restart without
 * persistence) revokes everything rather than resurrecting anything.
 *
 * A session that was checked is kept in this process's local cache (may
 * be NULL: none) for the next checks; a revocation anywhere drops it (see
 * local-cache.h), one here at once.
 *
 * Thread-safety: as the redis pool. */
#pragma once

#include <stdint.h>

struct local_cache;
struct redis_pool;

#define SESSION_KEY_PREFIX "auth:sess:"
#define SESSION_ID_LENGTH  32 /* hex characters: 128 random bits */

/* Create a session for user_id that expires ttl_seconds after now. Returns
 * 0 and the session id, or a negative errno from Redis. */
int sessions_create(struct redis_pool *redis, int64_t user_id, int64_t ttl_seconds, int64_t now,
                    char ret_session_id[static SESSION_ID_LENGTH + 1]);

/* Returns 0 when the session exists and belongs to user_id, -ENOENT when it
 * was revoked, expired or never existed, or a negative errno from Redis. */
int sessions_check(struct redis_pool *redis, struct local_cache *cache, const char *session_id,
                   int64_t user_id);

/* Revoke a session. Returns 0, -ENOENT when it did not exist (any more), or
 * a negative errno from Redis. */
int sessions_revoke(struct redis_pool *redis, struct local_cache *cache, const char *session_id);

/* Sessions not yet expired at now. */
int sessions_count_active(struct redis_pool *redis, int64_t now, int64_t *ret_count);
