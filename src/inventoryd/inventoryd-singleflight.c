#include "inventoryd-singleflight.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "macro.h"

/* One build in progress. Linked in the table from creation until the
 * leader finishes; freed by whoever drops the last reference after that. */
struct call {
        struct call *next;
        pthread_cond_t done_cond;
        unsigned refs;    /* leader + waiters */
        unsigned waiting; /* waiters blocked on done_cond */
        bool done;
        int result;
        char *value; /* the leader's value, copied for the waiters */
        size_t len;
        char key[];
};

struct singleflight {
        pthread_mutex_t lock;
        struct call *calls;
        size_t n_calls;
};

int singleflight_new(struct singleflight **ret)
{
        struct singleflight *s;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        pthread_mutex_init(&s->lock, NULL);
        *ret = s;
        return 0;
}

static void call_free(struct call *c)
{
        pthread_cond_destroy(&c->done_cond);
        free(c->value);
        free(c);
}

void singleflight_free(struct singleflight *s)
{
        if (!s)
                return;
        while (s->calls) {
                struct call *c = s->calls;
                s->calls = c->next;
                call_free(c);
        }
        pthread_mutex_destroy(&s->lock);
        free(s);
}

static struct call *find(struct singleflight *s, const char *key)
{
        for (struct call *c = s->calls; c; c = c->next)
                if (strcmp(c->key, key) == 0)
                        return c;
        return NULL;
}

static void unlink_call(struct singleflight *s, struct call *c)
{
        for (struct call **p = &s->calls; *p; p = &(*p)->next)
                if (*p == c) {
                        *p = c->next;
                        s->n_calls--;
                        return;
                }
}

static struct call *call_new(const char *key, size_t key_len)
{
        pthread_condattr_t attr;
        struct call *c;

        c = calloc(1, sizeof(*c) + key_len + 1);
        if (!c)
                return NULL;
        memcpy(c->key, key, key_len + 1);
        c->refs = 1;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&c->done_cond, &attr);
        pthread_condattr_destroy(&attr);
        return c;
}

static char *memdup_nul(const char *p, size_t len)
{
        char *d = malloc(len + 1);

        if (!d)
                return NULL;
        memcpy(d, p, len);
        d[len] = '\0';
        return d;
}

/* Wait (lock held) for c's leader; returns true when it finished in time. */
static bool wait_for_leader(struct singleflight *s, struct call *c, unsigned wait_ms)
{
        struct timespec deadline;

        deadline = monotonic_deadline_ms(wait_ms);

        c->waiting++;
        while (!c->done)
                if (pthread_cond_timedwait(&c->done_cond, &s->lock, &deadline) == ETIMEDOUT)
                        break;
        c->waiting--;
        return c->done;
}

/* Drop a reference (lock held); the last one after the build frees it. */
static void call_unref(struct call *c)
{
        c->refs--;
        if (c->refs == 0 && c->done)
                call_free(c);
}

int singleflight_do(struct singleflight *s, const char *key, unsigned wait_ms,
                    singleflight_build_fn build, void *userdata, char **ret_value, size_t *ret_len,
                    bool *ret_shared)
{
        size_t key_len = strlen(key);
        struct call *c = NULL;
        char *value = NULL;
        size_t len = 0;
        int r;

        if (key_len > SINGLEFLIGHT_KEY_MAX)
                goto build_alone;

        pthread_mutex_lock(&s->lock);
        c = find(s, key);
        if (c) {
                bool finished;

                c->refs++;
                finished = wait_for_leader(s, c, wait_ms);
                if (finished) {
                        r = c->result;
                        if (r >= 0) {
                                value = memdup_nul(c->value, c->len);
                                len = c->len;
                                if (!value)
                                        r = -ENOMEM;
                        }
                }
                call_unref(c);
                pthread_mutex_unlock(&s->lock);
                if (!finished)
                        goto build_alone;
                if (r < 0)
                        return r;
                *ret_value = value;
                *ret_len = len;
                if (ret_shared)
                        *ret_shared = true;
                return r;
        }
        if (s->n_calls < SINGLEFLIGHT_MAX_INFLIGHT)
                c = call_new(key, key_len);
        if (c) {
                c->next = s->calls;
                s->calls = c;
                s->n_calls++;
        }
        pthread_mutex_unlock(&s->lock);
        if (!c)
                goto build_alone;

        r = build(userdata, &value, &len);

        pthread_mutex_lock(&s->lock);
        c->result = r;
        if (r >= 0 && c->refs > 1) {
                /* Waiters copy from here after we handed ours back. */
                c->value = memdup_nul(value, len);
                c->len = len;
                if (!c->value)
                        c->result = -ENOMEM;
        }
        c->done = true;
        unlink_call(s, c);
        pthread_cond_broadcast(&c->done_cond);
        call_unref(c);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
                return r;
        *ret_value = value;
        *ret_len = len;
        if (ret_shared)
                *ret_shared = false;
        return 0;

build_alone:
        r = build(userdata, &value, &len);
        if (r < 0)
                return r;
        *ret_value = value;
        *ret_len = len;
        if (ret_shared)
                *ret_shared = false;
        return 0;
}

unsigned singleflight_waiting(struct singleflight *s, const char *key)
{
        struct call *c;
        unsigned n;

        pthread_mutex_lock(&s->lock);
        c = find(s, key);
        n = c ? c->waiting : 0;
        pthread_mutex_unlock(&s->lock);
        return n;
}
