/* Single-flight: the threads of one process that want the same missing
 * cache entry at the same moment elect one leader that builds it; the
 * others wait for the leader's result instead of all asking the database
 * (the in-process half of vigil-inventoryd's stampede protection; the Redis
 * lock is the cross-process half). Knows nothing of Redis or HTTP.
 *
 * Thread-safety: every function may be called from any thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "macro.h"

struct singleflight;

/* At most this many bytes in a key, and this many keys being built at
 * once (one per waiting request thread at worst, so the bound is the
 * HTTP server's connection limit; past it callers build on their own). */
#define SINGLEFLIGHT_KEY_MAX      128
#define SINGLEFLIGHT_MAX_INFLIGHT 4096

/* Build the value of key: returns 0 and a malloc()ed value of *ret_len
 * bytes (NUL-terminated for convenience), or a negative errno that is
 * handed to every waiter. */
typedef int (*singleflight_build_fn)(void *userdata, char **ret_value, size_t *ret_len);

int singleflight_new(struct singleflight **ret);
/* Accepts NULL. No call may be in progress. */
void singleflight_free(struct singleflight *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct singleflight *, singleflight_free)

/* Run build(userdata) for key unless another thread already runs it for
 * the same key, in which case wait up to wait_ms for that result and return
 * a copy of it. Returns what build returned (0 with *ret_value and *ret_len, a
 * malloc()ed copy per caller, or its negative errno); *ret_shared is set to
 * true when the result came from another thread's build. When the leader
 * takes longer than wait_ms, or the in-flight table is full, or the key is
 * longer than SINGLEFLIGHT_KEY_MAX, the caller builds on its own (never
 * waits unbounded). ret_shared may be NULL. */
int singleflight_do(struct singleflight *s, const char *key, unsigned wait_ms,
                    singleflight_build_fn build, void *userdata, char **ret_value, size_t *ret_len,
                    bool *ret_shared);

/* Callers currently waiting for the build of key (0 when none is running).
 * For tests and debugging. */
unsigned singleflight_waiting(struct singleflight *s, const char *key);
