#include "authd-sessions.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "local-cache.h"
#include "macro.h"
#include "redis.h"

#define SESSIONS_SET    "auth:sessions"
#define SESSION_KEY_MAX (sizeof(SESSION_KEY_PREFIX) + SESSION_ID_LENGTH)

static int session_key(const char *session_id, char key[static SESSION_KEY_MAX])
{
        if (strlen(session_id) != SESSION_ID_LENGTH)
                return -ENOENT;
        snprintf(key, SESSION_KEY_MAX, SESSION_KEY_PREFIX "%s", session_id);
        return 0;
}

static void free_replies(redisReply **replies, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (replies[i])
                        freeReplyObject(replies[i]);
}

int sessions_create(struct redis_pool *redis, int64_t user_id, int64_t ttl_seconds, int64_t now,
                    char ret_session_id[static SESSION_ID_LENGTH + 1])
{
        uint8_t raw[SESSION_ID_LENGTH / 2];
        char sid[SESSION_ID_LENGTH + 1], key[SESSION_KEY_MAX];
        char uid[24], ttl[24], expiry[24], cutoff[24];
        redisReply *replies[5] = {0};
        int r;

        if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
                return -EIO;
        for (size_t i = 0; i < sizeof(raw); i++)
                snprintf(sid + 2 * i, 3, "%02x", raw[i]);
        session_key(sid, key);
        snprintf(uid, sizeof(uid), "%" PRId64, user_id);
        snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_seconds);
        snprintf(expiry, sizeof(expiry), "%" PRId64, now + ttl_seconds);
        snprintf(cutoff, sizeof(cutoff), "%" PRId64, now);

        /* One round trip, applied atomically; expired members of the set are
         * trimmed on the way. */
        const char *multi[] = {"MULTI", NULL};
        const char *set[] = {"SET", key, uid, "EX", ttl, NULL};
        const char *zadd[] = {"ZADD", SESSIONS_SET, expiry, sid, NULL};
        const char *trim[] = {"ZREMRANGEBYSCORE", SESSIONS_SET, "-inf", cutoff, NULL};
        const char *exec[] = {"EXEC", NULL};
        const char *const *cmds[] = {multi, set, zadd, trim, exec};

        r = redis_pipeline(redis, ELEMENTSOF(cmds), cmds, replies);
        if (r < 0)
                return r;
        if (!replies[4] || replies[4]->type != REDIS_REPLY_ARRAY)
                r = -EIO;
        free_replies(replies, ELEMENTSOF(replies));
        if (r < 0)
                return r;

        memcpy(ret_session_id, sid, sizeof(sid));
        return 0;
}

int sessions_check(struct redis_pool *redis, struct local_cache *cache, const char *session_id,
                   int64_t user_id)
{
        _cleanup_(freeReplyObjectp) redisReply *reply = NULL;
        _cleanup_free_ char *cached = NULL;
        char key[SESSION_KEY_MAX], uid[24];
        uint64_t ticket;
        int r;

        r = session_key(session_id, key);
        if (r < 0)
                return r;
        snprintf(uid, sizeof(uid), "%" PRId64, user_id);

        r = local_cache_get(cache, key, &cached, NULL, &ticket);
        if (r >= 0)
                return strcmp(cached, uid) == 0 ? 0 : -ENOENT;

        const char *argv[] = {"GET", key};
        r = redis_command_argv(redis, 2, argv, NULL, &reply);
        if (r < 0)
                return r;
        if (reply->type == REDIS_REPLY_NIL)
                return -ENOENT;
        if (reply->type != REDIS_REPLY_STRING)
                return -EIO;

        local_cache_put(cache, key, reply->str, reply->len, ticket, 0);
        return strcmp(reply->str, uid) == 0 ? 0 : -ENOENT;
}

int sessions_revoke(struct redis_pool *redis, struct local_cache *cache, const char *session_id)
{
        redisReply *replies[2] = {0};
        char key[SESSION_KEY_MAX];
        int r;

        r = session_key(session_id, key);
        if (r < 0)
                return r;

        const char *del[] = {"DEL", key, NULL};
        const char *zrem[] = {"ZREM", SESSIONS_SET, session_id, NULL};
        const char *const *cmds[] = {del, zrem};

        r = redis_pipeline(redis, ELEMENTSOF(cmds), cmds, replies);
        /* Whatever Redis said: should the DEL have gone through after all,
         * this process must not go on accepting the session. */
        local_cache_invalidate(cache, key);
        if (r < 0)
                return r;
        if (!replies[0] || replies[0]->type != REDIS_REPLY_INTEGER)
                r = -EIO;
        else if (replies[0]->integer == 0)
                r = -ENOENT;
        free_replies(replies, ELEMENTSOF(replies));
        return r;
}

int sessions_count_active(struct redis_pool *redis, int64_t now, int64_t *ret_count)
{
        redisReply *replies[2] = {0};
        char cutoff[24];
        int r;

        snprintf(cutoff, sizeof(cutoff), "%" PRId64, now);
        const char *trim[] = {"ZREMRANGEBYSCORE", SESSIONS_SET, "-inf", cutoff, NULL};
        const char *card[] = {"ZCARD", SESSIONS_SET, NULL};
        const char *const *cmds[] = {trim, card};

        r = redis_pipeline(redis, ELEMENTSOF(cmds), cmds, replies);
        if (r < 0)
                return r;
        if (!replies[1] || replies[1]->type != REDIS_REPLY_INTEGER)
                r = -EIO;
        else
                *ret_count = replies[1]->integer;
        free_replies(replies, ELEMENTSOF(replies));
        return r;
}
