#include "slot-pool.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "macro.h"

/* A taker waiting in line; on its stack. */
struct slot_waiter {
        pthread_cond_t cond;
        int slot; /* the slot handed to it, -1 until then */
        struct slot_waiter *next;
};

int slot_pool_init(struct slot_pool *sp, const char *name, unsigned size)
{
        pthread_mutex_init(&sp->lock, NULL);
        sp->first = sp->last = NULL;
        sp->waiting = 0;
        sp->size = size;
        sp->name = name ? name : "connection";
        sp->in_use = calloc(size, sizeof(*sp->in_use));
        return sp->in_use ? 0 : -ENOMEM;
}

void slot_pool_done(struct slot_pool *sp)
{
        pthread_mutex_destroy(&sp->lock);
        free(sp->in_use);
        sp->in_use = NULL;
}

static int free_slot(struct slot_pool *sp, bool (*connected)(unsigned i, void *userdata),
                     void *userdata)
{
        int found = -1;

        for (unsigned i = 0; i < sp->size; i++) {
                if (sp->in_use[i])
                        continue;
                if (connected(i, userdata))
                        return (int)i;
                if (found < 0)
                        found = (int)i;
        }
        return found;
}

static void unlink_waiter(struct slot_pool *sp, struct slot_waiter *w)
{
        struct slot_waiter **p = &sp->first, *prev = NULL;

        while (*p && *p != w) {
                prev = *p;
                p = &(*p)->next;
        }
        if (!*p)
                return;
        *p = w->next;
        if (sp->last == w)
                sp->last = prev;
        sp->waiting--;
}

int slot_pool_take(struct slot_pool *sp, unsigned timeout_ms,
                   bool (*connected)(unsigned i, void *userdata), void *userdata)
{
        struct slot_waiter w = {.slot = -1};
        pthread_condattr_t attr;
        struct timespec deadline;
        uint64_t wait_start;
        int found;

        deadline = monotonic_deadline_ms(timeout_ms);
        pthread_mutex_lock(&sp->lock);
        found = sp->first ? -1 : free_slot(sp, connected, userdata);
        if (found >= 0) {
                sp->in_use[found] = true;
                pthread_mutex_unlock(&sp->lock);
                return found;
        }

        /* In line, behind those already waiting. */
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&w.cond, &attr);
        pthread_condattr_destroy(&attr);
        if (sp->last)
                sp->last->next = &w;
        else
                sp->first = &w;
        sp->last = &w;
        sp->waiting++;
        wait_start = now_usec(CLOCK_MONOTONIC);
        if (log_debug_enabled()) {
                /* Logged without the lock: a slot given back meanwhile is
                 * handed to w all the same. */
                pthread_mutex_unlock(&sp->lock);
                log_debug("%s pool: all %u connections are in use; waiting up to %u ms", sp->name,
                          sp->size, timeout_ms);
                pthread_mutex_lock(&sp->lock);
        }
        while (w.slot < 0)
                if (pthread_cond_timedwait(&w.cond, &sp->lock, &deadline) == ETIMEDOUT &&
                    w.slot < 0) {
                        unlink_waiter(sp, &w);
                        break;
                }
        found = w.slot;
        pthread_mutex_unlock(&sp->lock);
        pthread_cond_destroy(&w.cond);

        if (found < 0) {
                log_debug("%s pool: no connection came free within %u ms; giving up", sp->name,
                          timeout_ms);
                return -ETIMEDOUT;
        }
        log_debug("%s pool: got connection %d after waiting %" PRIu64 " ms", sp->name, found,
                  (now_usec(CLOCK_MONOTONIC) - wait_start) / 1000);
        return found;
}

void slot_pool_give(struct slot_pool *sp, unsigned i)
{
        struct slot_waiter *w;

        pthread_mutex_lock(&sp->lock);
        w = sp->first;
        if (w) {
                /* Handed over: the slot stays lent, to the oldest waiter. */
                sp->first = w->next;
                if (!sp->first)
                        sp->last = NULL;
                sp->waiting--;
                w->slot = (int)i;
                pthread_cond_signal(&w->cond);
        } else
                sp->in_use[i] = false;
        pthread_mutex_unlock(&sp->lock);
}

int slot_pool_acquire(struct slot_pool *sp, unsigned timeout_ms,
                      const struct slot_pool_connections *c, void *userdata)
{
        int i, r;

        i = slot_pool_take(sp, timeout_ms, c->connected, userdata);
        if (i < 0)
                return i;
        if (c->connected((unsigned)i, userdata) && !c->idle_alive((unsigned)i, userdata)) {
                log_debug("%s pool: connection %d died while idle; replacing it", sp->name, i);
                c->disconnect((unsigned)i, userdata);
        }
        if (!c->connected((unsigned)i, userdata)) {
                r = c->connect((unsigned)i, userdata);
                if (r < 0) {
                        log_debug("%s pool: connecting slot %d failed: %s", sp->name, i,
                                  strerror(-r));
                        slot_pool_give(sp, (unsigned)i);
                        return r;
                }
                log_debug("%s pool: opened connection %d", sp->name, i);
        }
        return i;
}

void slot_pool_release(struct slot_pool *sp, unsigned i, bool reusable,
                       const struct slot_pool_connections *c, void *userdata)
{
        if (!reusable && c->connected(i, userdata))
                c->disconnect(i, userdata);
        slot_pool_give(sp, i);
}

void slot_pool_disconnect_all(struct slot_pool *sp, const struct slot_pool_connections *c,
                              void *userdata)
{
        for (unsigned i = 0; sp->in_use && i < sp->size; i++)
                if (c->connected(i, userdata))
                        c->disconnect(i, userdata);
}
