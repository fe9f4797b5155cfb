/* The one pool mechanism of pg and redis: which slots of a fixed-size
 * connection pool are lent out, waiting for a free one with a timeout on
 * the monotonic clock (so wall-clock jumps do not matter), and lending a
 * slot with a live connection (slot_pool_acquire). Waiting is first come,
 * first served: a slot given back goes straight to the oldest waiter, so a
 * thread that gives one back and asks again at once cannot keep the others
 * waiting (under load they would wait out their timeout). The connections
 * themselves stay with the caller, in its own array indexed like the
 * slots, handled through struct slot_pool_connections.
 *
 * Thread-safety: every function but init and done may be called from any
 * thread. */
#pragma once

#include <pthread.h>
#include <stdbool.h>

struct slot_waiter;

struct slot_pool {
        pthread_mutex_t lock;
        struct slot_waiter *first, *last; /* the takers waiting, oldest first */
        unsigned waiting;                 /* how many */
        bool *in_use;
        unsigned size;
        const char *name; /* "postgres": in debug log entries */
};

/* Returns 0 or -ENOMEM. name (a static string) names the pool in debug
 * log entries: waits for a free slot, connections replaced. */
int slot_pool_init(struct slot_pool *sp, const char *name, unsigned size);
void slot_pool_done(struct slot_pool *sp); /* after a failed or no init too, if zeroed */

/* Lend a free slot, preferring one for which connected(i, userdata) is
 * true (called with the pool's lock held); when none is free, or others
 * already wait, wait in line up to timeout_ms for one to be given back.
 * Returns its index, or -ETIMEDOUT. */
int slot_pool_take(struct slot_pool *sp, unsigned timeout_ms,
                   bool (*connected)(unsigned i, void *userdata), void *userdata);

/* Give slot i back: to the oldest waiter, if one waits. */
void slot_pool_give(struct slot_pool *sp, unsigned i);

/* How the caller handles slot i's connection. Called without the pool's
 * lock, on a slot the calling thread holds, except connected, which
 * slot_pool_take calls with the lock held. */
struct slot_pool_connections {
        bool (*connected)(unsigned i, void *userdata);  /* slot i holds a connection */
        bool (*idle_alive)(unsigned i, void *userdata); /* it is still usable after idling */
        int (*connect)(unsigned i, void *userdata);     /* make one; 0 or a negative errno */
        void (*disconnect)(unsigned i, void *userdata); /* close it and forget it */
};

/* Lend a slot with a usable connection: a connected free slot first, its
 * connection replaced when it died while idle, else a new one. Returns the
 * index, -ETIMEDOUT, or connect's error (the slot is then given back). */
int slot_pool_acquire(struct slot_pool *sp, unsigned timeout_ms,
                      const struct slot_pool_connections *c, void *userdata);
/* Give slot i back; its connection is closed first unless reusable. */
void slot_pool_release(struct slot_pool *sp, unsigned i, bool reusable,
                       const struct slot_pool_connections *c, void *userdata);
/* Close every connection, for the pool's free (no slot may be lent). */
void slot_pool_disconnect_all(struct slot_pool *sp, const struct slot_pool_connections *c,
                              void *userdata);
