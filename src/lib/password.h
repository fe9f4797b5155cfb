/* Password hashing with yescrypt (libxcrypt), with a bound on concurrent
 * hashes so a login flood queues (and then gets -EBUSY) instead of starving
 * the CPU, the other requests and the watchdog.
 *
 * Thread-safety: a hasher is shared by all threads. */
#pragma once

#include <stddef.h>

#define PASSWORD_MIN_LENGTH 8
#define PASSWORD_MAX_LENGTH 256

struct password_hasher;

/* max_concurrent hashes run at once (0: number of CPUs minus one, at least
 * 1); a caller waits up to queue_timeout_ms for a slot (0: 2000). cost is
 * the yescrypt cost for crypt_gensalt_ra (0: libxcrypt's default). */
int password_hasher_new(unsigned max_concurrent, unsigned queue_timeout_ms, unsigned long cost,
                        struct password_hasher **ret);
void password_hasher_free(struct password_hasher *h); /* accepts NULL */

/* Hash password into a malloc()ed "$y$…" string. Returns 0, -EBUSY when no
 * slot freed up in time, -EINVAL for a password with NUL or out of length
 * bounds, -ENOMEM. */
int password_hash(struct password_hasher *h, const char *password, char **ret_hash);

/* Check password against hash in constant time. Returns 0 on a match,
 * -EACCES on a mismatch, -EBUSY as above. With hash NULL it spends the same
 * time against a dummy hash and returns -EACCES, so an unknown user costs
 * as much as a wrong password. */
int password_verify(struct password_hasher *h, const char *password, const char *hash);
