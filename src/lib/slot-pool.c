#include "slot-pool.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "macro.h"

int slot_pool_init(struct slot_pool *sp, const char *name, unsigned size)
{
        pthread_condattr_t attr;

        pthread_mutex_init(&sp->lock, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&sp->cond, &attr);
        pthread_condattr_destroy(&attr);
        sp->size = size;
        sp->name = name ? name : "connection";
        sp->in_use = calloc(size, sizeof(*sp->in_use));
        return sp->in_use ? 0 : -ENOMEM;
}

void slot_pool_done(struct slot_pool *sp)
{
        pthread_mutex_destroy(&sp->lock);
        pthread_cond_destroy(&sp->cond);
        free(sp->in_use);
        sp->in_use = NULL;
}

int slot_pool_take(struct slot_pool *sp, unsigned timeout_ms,
                   bool (*connected)(unsigned i, void *userdata), void *userdata)
{
        struct timespec deadline;
        uint64_t wait_start = 0;
        int found = -1;

        deadline = monotonic_deadline_ms(timeout_ms);
        pthread_mutex_lock(&sp->lock);
        for (;;) {
                for (unsigned i = 0; i < sp->size; i++) {
                        if (sp->in_use[i])
                                continue;
                        if (connected(i, userdata)) {
                                found = (int)i;
                                break;
                        }
                        if (found < 0)
                                found = (int)i;
                }
                if (found >= 0)
                        break;
                if (wait_start == 0 && log_debug_enabled()) {
                        /* Logged without the lock; then look again. */
                        wait_start = now_usec(CLOCK_MONOTONIC);
                        pthread_mutex_unlock(&sp->lock);
                        log_debug("%s pool: all %u connections are in use; waiting up to %u ms",
                                  sp->name, sp->size, timeout_ms);
                        pthread_mutex_lock(&sp->lock);
                        continue;
                }
                if (pthread_cond_timedwait(&sp->cond, &sp->lock, &deadline) == ETIMEDOUT) {
                        pthread_mutex_unlock(&sp->lock);
                        log_debug("%s pool: no connection came free within %u ms; giving up",
                                  sp->name, timeout_ms);
                        return -ETIMEDOUT;
                }
        }
        sp->in_use[found] = true;
        pthread_mutex_unlock(&sp->lock);
        if (wait_start != 0)
                log_debug("%s pool: got connection %d after waiting %" PRIu64 " ms", sp->name,
                          found, (now_usec(CLOCK_MONOTONIC) - wait_start) / 1000);
        return found;
}

void slot_pool_give(struct slot_pool *sp, unsigned i)
{
        pthread_mutex_lock(&sp->lock);
        sp->in_use[i] = false;
        pthread_cond_signal(&sp->cond);
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
