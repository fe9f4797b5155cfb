/* The bookkeeping of a fixed-size connection pool: which slots are lent
 * out, and waiting for a free one with a timeout on the monotonic clock
 * (so wall-clock jumps do not matter). The connections themselves stay
 * with the caller, in its own array indexed like the slots; pg and redis
 * use it.
 *
 * Thread-safety: every function but init and done may be called from any
 * thread. */
#pragma once

#include <pthread.h>
#include <stdbool.h>

struct slot_pool {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool *in_use;
        unsigned size;
};

/* Returns 0 or -ENOMEM. */
int slot_pool_init(struct slot_pool *sp, unsigned size);
void slot_pool_done(struct slot_pool *sp); /* after a failed or no init too, if zeroed */

/* Lend a free slot, preferring one for which connected(i, userdata) is
 * true (called with the pool's lock held), waiting up to timeout_ms for
 * one to be given back. Returns its index, or -ETIMEDOUT. */
int slot_pool_take(struct slot_pool *sp, unsigned timeout_ms,
                   bool (*connected)(unsigned i, void *userdata), void *userdata);

/* Give slot i back and wake one waiter. */
void slot_pool_give(struct slot_pool *sp, unsigned i);
