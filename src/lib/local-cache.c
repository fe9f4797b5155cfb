/* The cache is 16 shards, each a hash table under its own mutex with its
 * entries also on a list from oldest to newest (eviction order). A global
 * epoch counts invalidations: a ticket is the epoch before a read from
 * Redis, and a put is refused when the epoch has moved since. Bumping the
 * epoch and dropping a key happen under the key's shard lock, where a put
 * checks it, so a put either sees the bump or is undone by the drop. */
#include "local-cache.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "redis.h"

#define N_SHARDS       16
#define N_BUCKETS      256 /* per shard */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define CHANNEL        "__redis__:invalidate"

struct entry {
        struct entry *hash_next;
        struct entry *older, *newer;
        uint64_t hash;
        uint64_t expires_usec;
        size_t key_len, value_len;
        char data[]; /* key, NUL, value, NUL */
};

struct shard {
        pthread_mutex_t lock;
        struct entry *buckets[N_BUCKETS];
        struct entry *oldest, *newest;
        size_t bytes;
};

struct local_cache {
        struct shard shards[N_SHARDS];
        size_t shard_max_bytes;
        size_t max_value;
        uint64_t max_age_usec;
        char *name;
        char *prefix;
        struct redis_pool *redis;

        _Atomic uint64_t epoch;
        atomic_bool active;
        int wake_fd;
        pthread_t thread;
        bool thread_started;

        struct metric *hits, *misses, *invalidations, *entries, *active_gauge;
};

static uint64_t hash_key(const char *key, size_t len)
{
        return fnv1a64(FNV1A64_INIT, key, len);
}

static struct shard *shard_of(struct local_cache *c, uint64_t hash)
{
        return &c->shards[hash >> 60];
}

static size_t entry_bytes(const struct entry *e)
{
        return sizeof(*e) + e->key_len + e->value_len + 2;
}

/* Called with the shard lock held. */
static struct entry **find_slot(struct shard *s, uint64_t hash, const char *key, size_t len)
{
        struct entry **p = &s->buckets[hash % N_BUCKETS];

        for (; *p; p = &(*p)->hash_next)
                if ((*p)->hash == hash && (*p)->key_len == len && memcmp((*p)->data, key, len) == 0)
                        break;
        return p;
}

/* Called with the shard lock held; slot is where e is linked. */
static void entry_remove(struct local_cache *c, struct shard *s, struct entry **slot)
{
        struct entry *e = *slot;

        *slot = e->hash_next;
        if (e->older)
                e->older->newer = e->newer;
        else
                s->oldest = e->newer;
        if (e->newer)
                e->newer->older = e->older;
        else
                s->newest = e->older;
        s->bytes -= entry_bytes(e);
        metrics_gauge_add(c->entries, -1);
        free(e);
}

static void shard_remove_key(struct local_cache *c, struct shard *s, uint64_t hash, const char *key,
                             size_t len)
{
        struct entry **slot = find_slot(s, hash, key, len);

        if (*slot)
                entry_remove(c, s, slot);
}

static void flush(struct local_cache *c)
{
        atomic_fetch_add(&c->epoch, 1);
        for (size_t i = 0; i < N_SHARDS; i++) {
                struct shard *s = &c->shards[i];

                pthread_mutex_lock(&s->lock);
                while (s->oldest)
                        shard_remove_key(c, s, s->oldest->hash, s->oldest->data,
                                         s->oldest->key_len);
                pthread_mutex_unlock(&s->lock);
        }
}

static void invalidate(struct local_cache *c, const char *key, size_t len)
{
        uint64_t hash = hash_key(key, len);
        struct shard *s = shard_of(c, hash);

        pthread_mutex_lock(&s->lock);
        atomic_fetch_add(&c->epoch, 1);
        shard_remove_key(c, s, hash, key, len);
        pthread_mutex_unlock(&s->lock);
        metrics_counter_inc(c->invalidations);
}

void local_cache_invalidate(struct local_cache *c, const char *key)
{
        if (c && key)
                invalidate(c, key, strlen(key));
}

bool local_cache_is_active(struct local_cache *c)
{
        return c && atomic_load(&c->active);
}

int local_cache_get(struct local_cache *c, const char *key, char **ret_value, size_t *ret_len,
                    uint64_t *ret_ticket)
{
        size_t len;
        uint64_t hash, ticket;
        struct shard *s;
        struct entry **slot;
        char *copy = NULL;
        bool found = false;

        *ret_ticket = LOCAL_CACHE_NO_TICKET;
        if (!c || !key)
                return -ENOENT;
        len = strlen(key);
        /* Redis failed on purpose ([faults] fail_dependency): miss, as
         * the cache does when its connection is lost. */
        if (!atomic_load(&c->active) || redis_pool_is_failed(c->redis) ||
            len > LOCAL_CACHE_MAX_KEY) {
                metrics_counter_inc(c->misses);
                return -ENOENT;
        }

        ticket = atomic_load(&c->epoch);
        hash = hash_key(key, len);
        s = shard_of(c, hash);
        pthread_mutex_lock(&s->lock);
        slot = find_slot(s, hash, key, len);
        if (*slot && (*slot)->expires_usec <= now_usec(CLOCK_MONOTONIC))
                entry_remove(c, s, slot);
        else if (*slot) {
                const struct entry *e = *slot;

                found = true;
                copy = malloc(e->value_len + 1);
                if (copy) {
                        memcpy(copy, e->data + e->key_len + 1, e->value_len + 1);
                        if (ret_len)
                                *ret_len = e->value_len;
                }
        }
        pthread_mutex_unlock(&s->lock);

        if (found && !copy)
                return -ENOMEM;
        if (!copy) {
                metrics_counter_inc(c->misses);
                *ret_ticket = ticket;
                return -ENOENT;
        }
        metrics_counter_inc(c->hits);
        *ret_value = copy;
        return 0;
}

void local_cache_put(struct local_cache *c, const char *key, const char *value, size_t len,
                     uint64_t ticket, uint64_t expires_usec)
{
        size_t key_len;
        uint64_t hash, max_expiry;
        struct shard *s;
        struct entry **slot, *e;

        if (!c || !key || !value || ticket == LOCAL_CACHE_NO_TICKET)
                return;
        key_len = strlen(key);
        if (key_len > LOCAL_CACHE_MAX_KEY || len > c->max_value)
                return;
        max_expiry = now_usec(CLOCK_MONOTONIC) + c->max_age_usec;
        if (expires_usec == 0 || expires_usec > max_expiry)
                expires_usec = max_expiry;

        e = malloc(sizeof(*e) + key_len + len + 2);
        if (!e)
                return;
        hash = hash_key(key, key_len);
        *e = (struct entry){
                .hash = hash, .expires_usec = expires_usec, .key_len = key_len, .value_len = len};
        memcpy(e->data, key, key_len + 1);
        memcpy(e->data + key_len + 1, value, len);
        e->data[key_len + 1 + len] = '\0';

        s = shard_of(c, hash);
        pthread_mutex_lock(&s->lock);
        if (!atomic_load(&c->active) || atomic_load(&c->epoch) != ticket) {
                pthread_mutex_unlock(&s->lock);
                free(e);
                return;
        }
        slot = find_slot(s, hash, key, key_len);
        if (*slot)
                entry_remove(c, s, slot);
        while (s->oldest && s->bytes + entry_bytes(e) > c->shard_max_bytes)
                shard_remove_key(c, s, s->oldest->hash, s->oldest->data, s->oldest->key_len);
        e->hash_next = s->buckets[hash % N_BUCKETS];
        s->buckets[hash % N_BUCKETS] = e;
        e->older = s->newest;
        if (s->newest)
                s->newest->newer = e;
        else
                s->oldest = e;
        s->newest = e;
        s->bytes += entry_bytes(e);
        pthread_mutex_unlock(&s->lock);
        metrics_gauge_add(c->entries, 1);
}

/* ---- the invalidation connection ---- */

static void set_active(struct local_cache *c, bool active)
{
        atomic_store(&c->active, active);
        /* Either way no ticket taken before now may be used: reads made
         * while the connection was down may be stale. */
        flush(c);
        metrics_gauge_set(c->active_gauge, active);
}

static bool reply_is(const redisReply *r, int type)
{
        return r && r->type == type;
}

/* CLIENT ID, CLIENT TRACKING ON REDIRECT <own id> BCAST PREFIX, SUBSCRIBE. */
static int subscribe(struct local_cache *c, redisContext **ret)
{
        redisContext *ctx = NULL;
        redisReply *reply;
        char id[24];
        int r;

        r = redis_pool_connect(c->redis, &ctx);
        if (r < 0)
                return r;

        reply = redisCommand(ctx, "CLIENT ID");
        r = reply_is(reply, REDIS_REPLY_INTEGER) ? 0 : -EIO;
        if (r >= 0)
                snprintf(id, sizeof(id), "%lld", reply->integer);
        if (reply)
                freeReplyObject(reply);
        if (r >= 0) {
                const char *argv[] = {"CLIENT", "TRACKING", "ON",     "REDIRECT",
                                      id,       "BCAST",    "PREFIX", c->prefix};

                reply = redisCommandArgv(ctx, (int)ELEMENTSOF(argv), argv, NULL);
                /* An error reply: Redis before 6, or an ACL without CLIENT. */
                r = reply_is(reply, REDIS_REPLY_STATUS) ? 0 : reply ? -EOPNOTSUPP : -EIO;
                if (reply)
                        freeReplyObject(reply);
        }
        if (r >= 0) {
                reply = redisCommand(ctx, "SUBSCRIBE " CHANNEL);
                r = reply_is(reply, REDIS_REPLY_ARRAY) ? 0 : reply ? -EOPNOTSUPP : -EIO;
                if (reply)
                        freeReplyObject(reply);
        }
        if (r < 0) {
                redisFree(ctx);
                return r;
        }
        *ret = ctx;
        return 0;
}

/* A message on the channel: an array of keys, or nil after FLUSHALL. */
static void handle_reply(struct local_cache *c, const redisReply *reply)
{
        const redisReply *keys;

        if (!reply_is(reply, REDIS_REPLY_ARRAY) || reply->elements != 3 ||
            !reply_is(reply->element[0], REDIS_REPLY_STRING) ||
            strcmp(reply->element[0]->str, "message") != 0)
                return; /* a pong */
        keys = reply->element[2];
        if (reply_is(keys, REDIS_REPLY_ARRAY)) {
                for (size_t i = 0; i < keys->elements; i++)
                        if (reply_is(keys->element[i], REDIS_REPLY_STRING))
                                invalidate(c, keys->element[i]->str, keys->element[i]->len);
        } else {
                flush(c);
                metrics_counter_inc(c->invalidations);
        }
}

/* Returns true when woken to stop, false when the connection was lost. */
static bool listen_until_lost(struct local_cache *c, redisContext *ctx)
{
        bool ping_sent = false;

        for (;;) {
                struct pollfd fds[2] = {{.fd = c->wake_fd, .events = POLLIN},
                                        {.fd = ctx->fd, .events = POLLIN}};
                int n = poll(fds, 2, LOCAL_CACHE_HEARTBEAT_MS);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 || fds[0].revents)
                        return n >= 0;
                if (n == 0) {
                        int done = 0;

                        /* Silent for a heartbeat after our PING: gone. */
                        if (ping_sent || redisAppendCommand(ctx, "PING") != REDIS_OK)
                                return false;
                        do
                                if (redisBufferWrite(ctx, &done) != REDIS_OK)
                                        return false;
                        while (!done);
                        ping_sent = true;
                        continue;
                }
                if (redisBufferRead(ctx) != REDIS_OK)
                        return false;
                for (;;) {
                        void *reply = NULL;

                        if (redisGetReplyFromReader(ctx, &reply) != REDIS_OK)
                                return false;
                        if (!reply)
                                break;
                        ping_sent = false;
                        handle_reply(c, reply);
                        freeReplyObject(reply);
                }
        }
}

/* Sleeps ms unless woken; returns true when woken to stop. */
static bool sleep_or_stop(struct local_cache *c, unsigned ms)
{
        struct pollfd pfd = {.fd = c->wake_fd, .events = POLLIN};

        return poll(&pfd, 1, (int)ms) > 0;
}

static void *invalidation_thread(void *userdata)
{
        struct local_cache *c = userdata;
        unsigned backoff = BACKOFF_MIN_MS;
        bool warned = false;

        for (;;) {
                redisContext *ctx = NULL;
                bool stop;
                int r;

                r = subscribe(c, &ctx);
                if (r < 0) {
                        /* Once per outage, not once per retry. */
                        if (!warned)
                                log_warning_errno(r,
                                                  "Local %s cache off: cannot subscribe to Redis "
                                                  "invalidations (%s): %m",
                                                  c->name,
                                                  r == -EOPNOTSUPP ? "CLIENT TRACKING refused"
                                                                   : "unreachable");
                        warned = true;
                        if (sleep_or_stop(c, backoff))
                                return NULL;
                        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                        continue;
                }
                set_active(c, true);
                if (warned)
                        log_notice("Local %s cache on: subscribed to Redis invalidations", c->name);
                warned = false;
                backoff = BACKOFF_MIN_MS;

                stop = listen_until_lost(c, ctx);
                set_active(c, false);
                redisFree(ctx);
                if (stop)
                        return NULL;
                log_warning("Local %s cache off: lost the Redis invalidation connection", c->name);
                warned = true;
        }
}

/* ---- life cycle ---- */

static int make_metrics(struct local_cache *c, struct metrics_registry *r)
{
        static const char *const cache_label[] = {"cache", NULL};
        static const char *const result_labels[] = {"cache", "result", NULL};
        struct metric_family *lookups, *invalidations, *entries, *active;

        if (!r)
                return 0;
        lookups = metrics_counter_get(r, "vigil_local_cache_lookups_total",
                                      "Lookups in an in-process cache, by result (hit, miss).",
                                      result_labels);
        invalidations = metrics_counter_get(
                r, "vigil_local_cache_invalidations_total",
                "Keys dropped from an in-process cache because they changed in Redis.",
                cache_label);
        entries = metrics_gauge_get(r, "vigil_local_cache_entries",
                                    "Values held by an in-process cache.", cache_label);
        active = metrics_gauge_get(r, "vigil_local_cache_active",
                                   "Whether an in-process cache is subscribed to Redis "
                                   "invalidations and serving (1) or not (0).",
                                   cache_label);
        if (!lookups || !invalidations || !entries || !active)
                return -EEXIST;
        c->hits = metrics_child2(lookups, c->name, "hit");
        c->misses = metrics_child2(lookups, c->name, "miss");
        c->invalidations = metrics_child1(invalidations, c->name);
        c->entries = metrics_child1(entries, c->name);
        c->active_gauge = metrics_child1(active, c->name);
        if (!c->hits || !c->misses || !c->invalidations || !c->entries || !c->active_gauge)
                return -ENOMEM;
        return 0;
}

int local_cache_new(const struct local_cache_options *opts, struct local_cache **ret)
{
        _cleanup_(local_cache_freep) struct local_cache *c = NULL;
        int r;

        if (!opts || !ret || !opts->redis || !opts->name || !opts->prefix ||
            opts->prefix[0] == '\0' || strlen(opts->prefix) > LOCAL_CACHE_MAX_PREFIX ||
            opts->max_age_ms < 1 || opts->max_age_ms > LOCAL_CACHE_MAX_AGE_MS ||
            opts->max_bytes < 4096 || opts->max_bytes > LOCAL_CACHE_MAX_BYTES)
                return -EINVAL;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->wake_fd = -1;
        for (size_t i = 0; i < N_SHARDS; i++)
                pthread_mutex_init(&c->shards[i].lock, NULL);
        c->shard_max_bytes = opts->max_bytes / N_SHARDS;
        c->max_value = opts->max_bytes / 8;
        c->max_age_usec = (uint64_t)opts->max_age_ms * USEC_PER_MSEC;
        c->redis = opts->redis;
        c->name = strdup(opts->name);
        c->prefix = strdup(opts->prefix);
        if (!c->name || !c->prefix)
                return -ENOMEM;
        r = make_metrics(c, opts->metrics);
        if (r < 0)
                return r;

        c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (c->wake_fd < 0)
                return -errno;
        r = -pthread_create(&c->thread, NULL, invalidation_thread, c);
        if (r < 0)
                return r;
        c->thread_started = true;

        *ret = TAKE_PTR(c);
        return 0;
}

void local_cache_free(struct local_cache *c)
{
        if (!c)
                return;
        if (c->thread_started) {
                uint64_t one = 1;

                (void)!write(c->wake_fd, &one, sizeof(one));
                pthread_join(c->thread, NULL);
        }
        if (c->wake_fd >= 0)
                close(c->wake_fd);
        for (size_t i = 0; i < N_SHARDS; i++) {
                struct shard *s = &c->shards[i];

                while (s->oldest)
                        shard_remove_key(c, s, s->oldest->hash, s->oldest->data,
                                         s->oldest->key_len);
                pthread_mutex_destroy(&s->lock);
        }
        free(c->name);
        free(c->prefix);
        free(c);
}
