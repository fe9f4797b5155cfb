#include "inventoryd-cache.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "local-cache.h"
#include "log.h"
#include "redis.h"

#define KEY_MAX          (CACHE_PREFIX_MAX + CACHE_NAME_MAX + 16)
#define LOCK_TOKEN_BYTES 16
/* Polls of a caller waiting for another process's rebuild. */
#define POLL_INTERVAL_MS 5
/* Bounds on one purge: SCAN batches and the calls made. */
#define PURGE_SCAN_COUNT "1000"
#define PURGE_MAX_CALLS  10000

/* Store KEYS[1] = ARGV[1] for ARGV[3] ms only while the generation
 * KEYS[2] is still ARGV[2] (a missing counter is generation "0"); then,
 * in the same round trip, release the lock KEYS[3] when it still holds
 * our token ARGV[4] ("": we hold none). */
static const char SET_IF_GENERATION[] =
        "if (redis.call('GET', KEYS[2]) or '0') == ARGV[2] then "
        "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) end "
        "if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then "
        "redis.call('DEL', KEYS[3]) end return 1";
/* For each pair (value, generation) in KEYS: bump the generation (kept for
 * ARGV[1] ms) and delete the value, atomically. */
static const char INVALIDATE[] = "for i = 1, #KEYS, 2 do "
                                 "redis.call('INCR', KEYS[i + 1]) "
                                 "redis.call('PEXPIRE', KEYS[i + 1], ARGV[1]) "
                                 "redis.call('DEL', KEYS[i]) end return 1";
/* Release the lock KEYS[1] only when it still holds our token ARGV[1]. */
static const char UNLOCK[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                             "return redis.call('DEL', KEYS[1]) end return 0";

struct cache {
        struct redis_pool *redis;
        struct local_cache *local;
        char prefix[CACHE_PREFIX_MAX + 1];
        atomic_uint ttl_seconds;
        atomic_uint jitter_percent;
        unsigned lock_ms;
        unsigned wait_ms;
        struct singleflight *flights;
        _Atomic uint64_t bypass_until_usec;
        atomic_bool purge_pending;
};

uint64_t cache_jittered_ttl_ms(unsigned ttl_seconds, unsigned jitter_percent, uint64_t random)
{
        uint64_t ttl_ms = (uint64_t)ttl_seconds * 1000;
        uint64_t spread, v;

        if (jitter_percent > 100)
                jitter_percent = 100;
        spread = ttl_ms * jitter_percent / 100;
        v = ttl_ms - spread + random % (2 * spread + 1);
        return v > 0 ? v : 1;
}

bool cache_name_is_valid(const char *name)
{
        size_t n = strlen(name);

        if (n == 0 || n > CACHE_NAME_MAX)
                return false;
        for (const char *p = name; *p; p++) {
                char ch = *p;
                if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == ':' ||
                      ch == '_' || ch == '-'))
                        return false;
        }
        return true;
}

int cache_new(const struct cache_options *opts, struct cache **ret)
{
        _cleanup_(cache_freep) struct cache *c = NULL;
        int r;

        if (!opts->redis || !opts->prefix || strlen(opts->prefix) > CACHE_PREFIX_MAX ||
            opts->ttl_seconds < 1 || opts->ttl_seconds > 86400 || opts->jitter_percent > 50 ||
            opts->lock_ms < 1 || opts->lock_ms > 60000 || opts->wait_ms > 10000)
                return -EINVAL;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->redis = opts->redis;
        c->local = opts->local;
        snprintf(c->prefix, sizeof(c->prefix), "%s", opts->prefix);
        atomic_init(&c->ttl_seconds, opts->ttl_seconds);
        atomic_init(&c->jitter_percent, opts->jitter_percent);
        c->lock_ms = opts->lock_ms;
        c->wait_ms = opts->wait_ms;
        r = singleflight_new(&c->flights);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(c);
        return 0;
}

void cache_free(struct cache *c)
{
        if (!c)
                return;
        singleflight_free(c->flights);
        free(c);
}

void cache_set_ttl(struct cache *c, unsigned ttl_seconds, unsigned jitter_percent)
{
        if (ttl_seconds < 1)
                ttl_seconds = 1;
        if (ttl_seconds > 86400)
                ttl_seconds = 86400;
        if (jitter_percent > 50)
                jitter_percent = 50;
        atomic_store(&c->ttl_seconds, ttl_seconds);
        atomic_store(&c->jitter_percent, jitter_percent);
}

bool cache_purge_pending(struct cache *c)
{
        return atomic_load(&c->purge_pending);
}

static uint64_t random_u64(void)
{
        uint64_t v = 0;

        /* The jitter needs spread, not secrecy: should getrandom() fail, the
         * clock will do. */
        if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
                v = now_usec(CLOCK_MONOTONIC) * 0x9E3779B97F4A7C15ULL;
        return v;
}

static void format_key(char buf[static KEY_MAX], const struct cache *c, const char *kind,
                       const char *name)
{
        snprintf(buf, KEY_MAX, "%s%s%s", c->prefix, kind, name);
}

/* The rebuild lock of name: lock:<prefix><name>, outside the prefix the
 * local caches track, so that taking and releasing it (two writes on every
 * miss) pushes no invalidation to every process and leaves their local
 * caches alone. */
static void format_lock_key(char buf[static KEY_MAX], const struct cache *c, const char *name)
{
        snprintf(buf, KEY_MAX, "lock:%s%s", c->prefix, name);
}

static bool bypassed(struct cache *c)
{
        return now_usec(CLOCK_MONOTONIC) < atomic_load(&c->bypass_until_usec);
}

/* A command failed to reach Redis: stop trying for a moment. */
static void redis_failed(struct cache *c)
{
        atomic_store(&c->bypass_until_usec, now_usec(CLOCK_MONOTONIC) + CACHE_BYPASS_USEC);
}

static int command(struct cache *c, int argc, const char **argv, const size_t *argvlen,
                   redisReply **ret)
{
        int r;

        r = redis_command_argv(c->redis, argc, argv, argvlen, ret);
        if (r < 0) {
                redis_failed(c);
                return r;
        }
        if (ret && (*ret)->type == REDIS_REPLY_ERROR) {
                freeReplyObject(*ret);
                *ret = NULL;
                return -EIO;
        }
        return 0;
}

/* MGET value generation: returns 0 with *ret_value (NULL on a miss) and the
 * generation text in gen (size 32, "0" when there is none). */
static int read_value(struct cache *c, const char *name, char **ret_value, size_t *ret_len,
                      char gen[static 32])
{
        _cleanup_(freeReplyObjectp) redisReply *reply = NULL;
        char key[KEY_MAX], gen_key[KEY_MAX];
        const char *argv[] = {"MGET", key, gen_key};
        redisReply *v, *g;
        int r;

        format_key(key, c, "", name);
        format_key(gen_key, c, "gen:", name);
        r = command(c, 3, argv, NULL, &reply);
        if (r < 0)
                return r;
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2)
                return -EIO;
        v = reply->element[0];
        g = reply->element[1];
        if (g->type == REDIS_REPLY_STRING && g->len > 0 && g->len < 32) {
                memcpy(gen, g->str, g->len);
                gen[g->len] = '\0';
        } else
                snprintf(gen, 32, "0");

        if (v->type != REDIS_REPLY_STRING) {
                *ret_value = NULL;
                *ret_len = 0;
                return 0;
        }
        *ret_value = malloc(v->len + 1);
        if (!*ret_value)
                return -ENOMEM;
        memcpy(*ret_value, v->str, v->len);
        (*ret_value)[v->len] = '\0';
        *ret_len = v->len;
        return 0;
}

/* Store value unless name was invalidated since generation gen was read,
 * and release our lock (token, or "" when we took none). Failures only
 * cost a later miss (and the lock its expiry). */
static void store_value(struct cache *c, const char *name, const char *value, size_t len,
                        const char *gen, const char *token)
{
        char key[KEY_MAX], gen_key[KEY_MAX], lock_key[KEY_MAX], ttl[24];
        const char *argv[] = {
                "EVAL", SET_IF_GENERATION, "3", key, gen_key, lock_key, value, gen, ttl, token};
        size_t argvlen[ELEMENTSOF(argv)];

        format_key(key, c, "", name);
        format_key(gen_key, c, "gen:", name);
        format_lock_key(lock_key, c, name);
        snprintf(ttl, sizeof(ttl), "%" PRIu64,
                 cache_jittered_ttl_ms(atomic_load(&c->ttl_seconds),
                                       atomic_load(&c->jitter_percent), random_u64()));
        for (size_t i = 0; i < ELEMENTSOF(argv); i++)
                argvlen[i] = strlen(argv[i]);
        argvlen[6] = len;
        (void)command(c, (int)ELEMENTSOF(argv), argv, argvlen, NULL);
}

/* SET lock NX PX: returns 1 when taken with our token, 0 when someone
 * else holds it, or a negative errno. */
static int lock_take(struct cache *c, const char *name, char token[static 2 * LOCK_TOKEN_BYTES + 1])
{
        _cleanup_(freeReplyObjectp) redisReply *reply = NULL;
        uint8_t raw[LOCK_TOKEN_BYTES];
        char key[KEY_MAX], px[16];
        const char *argv[] = {"SET", key, token, "NX", "PX", px};
        int r;

        for (size_t i = 0; i < sizeof(raw); i += sizeof(uint64_t)) {
                uint64_t v = random_u64();
                memcpy(raw + i, &v, sizeof(v));
        }
        for (size_t i = 0; i < sizeof(raw); i++)
                snprintf(token + 2 * i, 3, "%02x", raw[i]);
        format_lock_key(key, c, name);
        snprintf(px, sizeof(px), "%u", c->lock_ms);

        r = command(c, (int)ELEMENTSOF(argv), argv, NULL, &reply);
        if (r < 0)
                return r;
        return reply->type == REDIS_REPLY_STATUS ? 1 : 0;
}

static void lock_release(struct cache *c, const char *name, const char *token)
{
        char key[KEY_MAX];
        const char *argv[] = {"EVAL", UNLOCK, "1", key, token};

        format_lock_key(key, c, name);
        (void)command(c, (int)ELEMENTSOF(argv), argv, NULL, NULL);
}

struct rebuild {
        struct cache *cache;
        const char *name;
        char gen[32];
        cache_build_fn build;
        void *userdata;
        bool hit; /* the leader found the value after all */
};

/* The single-flight leader's work: take the Redis lock and rebuild, or wait
 * for the process holding it, or (Redis failing) just build. */
static int rebuild(void *userdata, char **ret_value, size_t *ret_len)
{
        struct rebuild *b = userdata;
        struct cache *c = b->cache;
        char token[2 * LOCK_TOKEN_BYTES + 1];
        char *value = NULL;
        size_t len = 0;
        int r, locked;

        if (bypassed(c))
                return b->build(b->userdata, ret_value, ret_len);

        locked = lock_take(c, b->name, token);
        if (locked < 0)
                return b->build(b->userdata, ret_value, ret_len);

        if (locked == 0) {
                log_debug("Cache %s: another process is rebuilding it; waiting up to %u ms",
                          b->name, c->wait_ms);
                /* Another process rebuilds: poll for its value, briefly. */
                for (unsigned waited = 0; waited < c->wait_ms; waited += POLL_INTERVAL_MS) {
                        struct timespec ts = {.tv_nsec = POLL_INTERVAL_MS * 1000000L};

                        nanosleep(&ts, NULL);
                        r = read_value(c, b->name, &value, &len, b->gen);
                        if (r < 0)
                                return b->build(b->userdata, ret_value, ret_len);
                        if (value) {
                                b->hit = true;
                                *ret_value = value;
                                *ret_len = len;
                                return 0;
                        }
                }
        }

        /* Read the source only now: the generation in b->gen was read
         * before, which is what makes the conditional store safe. */
        r = b->build(b->userdata, &value, &len);
        if (r >= 0 && !bypassed(c))
                store_value(c, b->name, value, len, b->gen, locked > 0 ? token : "");
        else if (locked > 0 && !bypassed(c))
                lock_release(c, b->name, token);
        if (r < 0)
                return r;
        *ret_value = value;
        *ret_len = len;
        return 0;
}

int cache_get(struct cache *c, const char *name, cache_build_fn build, void *userdata,
              char **ret_value, size_t *ret_len, bool *ret_hit)
{
        struct rebuild b = {.cache = c, .name = name, .build = build, .userdata = userdata};
        char key[KEY_MAX], *value = NULL;
        size_t len = 0;
        bool shared = false;
        uint64_t ticket;
        int r;

        if (!cache_name_is_valid(name))
                return -EINVAL;

        format_key(key, c, "", name);
        if (local_cache_get(c->local, key, &value, &len, &ticket) >= 0) {
                log_debug("Cache %s: hit in memory", name);
                *ret_value = value;
                *ret_len = len;
                *ret_hit = true;
                return 0;
        }
        if (!bypassed(c)) {
                r = read_value(c, name, &value, &len, b.gen);
                if (r >= 0 && value) {
                        log_debug("Cache %s: hit in Redis", name);
                        local_cache_put(c->local, key, value, len, ticket, 0);
                        *ret_value = value;
                        *ret_len = len;
                        *ret_hit = true;
                        return 0;
                }
                if (r < 0)
                        log_debug("Cache %s: Redis failed (%s); reading the database", name,
                                  strerror(-r));
                else
                        log_debug("Cache %s: miss", name);
        } else
                log_debug("Cache %s: Redis is bypassed after a failure; reading the database",
                          name);

        /* Followers wait as long as the leader may legitimately take. */
        r = singleflight_do(c->flights, name, c->lock_ms + c->wait_ms, rebuild, &b, &value, &len,
                            &shared);
        if (r < 0) {
                log_debug("Cache %s: rebuilding failed: %s", name, strerror(-r));
                return r;
        }
        log_debug("Cache %s: %s", name,
                  shared  ? "took the value another request of this process rebuilt"
                  : b.hit ? "took the value another process rebuilt"
                          : "rebuilt from the database");
        /* Read after the ticket was taken: kept unless invalidated since. */
        local_cache_put(c->local, key, value, len, ticket, 0);
        *ret_value = value;
        *ret_len = len;
        *ret_hit = !shared && b.hit;
        return 0;
}

int cache_invalidate(struct cache *c, const char *const *names, size_t n)
{
        char keys[2 * CACHE_INVALIDATE_MAX][KEY_MAX], ttl[24], n_keys[8];
        const char *argv[3 + 2 * CACHE_INVALIDATE_MAX + 1];
        size_t argc = 0;
        int r = -ECONNREFUSED;

        if (n < 1 || n > CACHE_INVALIDATE_MAX)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (!cache_name_is_valid(names[i]))
                        return -EINVAL;

        snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)CACHE_GENERATION_TTL_MS);
        snprintf(n_keys, sizeof(n_keys), "%zu", 2 * n);
        argv[argc++] = "EVAL";
        argv[argc++] = INVALIDATE;
        argv[argc++] = n_keys;
        for (size_t i = 0; i < n; i++) {
                format_key(keys[2 * i], c, "", names[i]);
                format_key(keys[2 * i + 1], c, "gen:", names[i]);
                argv[argc++] = keys[2 * i];
                argv[argc++] = keys[2 * i + 1];
        }
        argv[argc++] = ttl;

        if (!bypassed(c))
                r = command(c, (int)argc, argv, NULL, NULL);
        if (r < 0)
                atomic_store(&c->purge_pending, true);
        /* After Redis: a reader that got the old value from Redis took its
         * ticket before this, so it cannot store it here any more. */
        for (size_t i = 0; i < n; i++)
                local_cache_invalidate(c->local, keys[2 * i]);
        return r;
}

int cache_maintain(struct cache *c)
{
        char pattern[CACHE_PREFIX_MAX + 2], gen_prefix[KEY_MAX], cursor[32] = "0";
        size_t gen_prefix_len, argc;
        unsigned calls = 0;
        int r;

        if (!atomic_load(&c->purge_pending))
                return 0;

        /* Cleared first: an invalidation failing during the purge sets it
         * again and gets its own purge. */
        atomic_store(&c->purge_pending, false);
        snprintf(pattern, sizeof(pattern), "%s*", c->prefix);
        format_key(gen_prefix, c, "gen:", "");
        gen_prefix_len = strlen(gen_prefix);
        do {
                _cleanup_(freeReplyObjectp) redisReply *reply = NULL;
                const char *argv[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", PURGE_SCAN_COUNT};
                redisReply *keys;

                r = command(c, (int)ELEMENTSOF(argv), argv, NULL, &reply);
                if (r >= 0 && (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
                               reply->element[0]->type != REDIS_REPLY_STRING ||
                               reply->element[0]->len >= sizeof(cursor) ||
                               reply->element[1]->type != REDIS_REPLY_ARRAY))
                        r = -EIO;
                if (r < 0)
                        goto fail;
                memcpy(cursor, reply->element[0]->str, reply->element[0]->len);
                cursor[reply->element[0]->len] = '\0';

                keys = reply->element[1];
                if (keys->elements > 0) {
                        _cleanup_free_ const char **argv_del = NULL;
                        _cleanup_free_ size_t *len_del = NULL;
                        size_t n = keys->elements;

                        if (n > REDIS_MAX_ARGS - 1)
                                n = REDIS_MAX_ARGS - 1;
                        argv_del = calloc(n + 1, sizeof(*argv_del));
                        len_del = calloc(n + 1, sizeof(*len_del));
                        if (!argv_del || !len_del) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        argv_del[0] = "DEL";
                        len_del[0] = 3;
                        argc = 1;
                        for (size_t i = 0; i < n; i++) {
                                redisReply *k = keys->element[i];

                                /* Generations stay: a rebuild in flight
                                 * compares against them. */
                                if (k->type != REDIS_REPLY_STRING ||
                                    (k->len >= gen_prefix_len &&
                                     memcmp(k->str, gen_prefix, gen_prefix_len) == 0))
                                        continue;
                                argv_del[argc] = k->str;
                                len_del[argc] = k->len;
                                argc++;
                        }
                        if (argc > 1) {
                                r = command(c, (int)argc, argv_del, len_del, NULL);
                                if (r < 0)
                                        goto fail;
                        }
                }
        } while (strcmp(cursor, "0") != 0 && ++calls < PURGE_MAX_CALLS);

        if (strcmp(cursor, "0") != 0) {
                r = -E2BIG;
                goto fail;
        }
        return 0;

fail:
        atomic_store(&c->purge_pending, true);
        return r;
}
