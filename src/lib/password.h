/* Password hashing with yescrypt (libxcrypt), with a bound on concurrent
 * hashes so a login flood queues (and then gets -EBUSY) instead of starving
 * the CPU, the other requests and the watchdog.
 *
 * Thread-safety: a hasher is shared by all threads. */
#pragma once

#include <stddef.h>

#include "macro.h"

#define PASSWORD_MIN_LENGTH 8
#define PASSWORD_MAX_LENGTH 256

struct password_hasher;

/* max_concurrent hashes run at once (0: number of CPUs minus one, at least
 * 1); a caller waits up to queue_timeout_ms for a slot (0: 2000). cost is
 * the yescrypt cost for crypt_gensalt_ra (0: libxcrypt's default, 5; each
 * step roughly doubles time and memory). Computes the dummy hash once, so
 * it takes as long as one hash. Returns 0, -EINVAL for a cost libxcrypt
 * refuses (above 11), -ENOMEM. */
int password_hasher_new(unsigned max_concurrent, unsigned queue_timeout_ms, unsigned long cost,
                        struct password_hasher **ret);
void password_hasher_free(struct password_hasher *h); /* accepts NULL */
DEFINE_TRIVIAL_CLEANUP_FUNC(struct password_hasher *, password_hasher_free)

/* How many hashes are running right now (for a gauge, and for tests). */
unsigned password_hasher_in_use(struct password_hasher *h);

/* Hash password, with a fresh random salt, into a malloc()ed "$y$…" string
 * (which never contains the password). Returns 0, -EBUSY when no slot freed
 * up in time, -EINVAL for a password shorter than PASSWORD_MIN_LENGTH or
 * longer than PASSWORD_MAX_LENGTH bytes (a C string cannot hold a NUL),
 * -ENOMEM. */
int password_hash(struct password_hasher *h, const char *password, char **ret_hash);

/* Check password against hash in constant time. Returns 0 on a match,
 * -EACCES on a mismatch, -EBUSY as above, -EINVAL when hash is not a
 * yescrypt hash libxcrypt takes, -ENOMEM. With hash NULL it spends the same
 * time against a dummy hash and returns -EACCES, so an unknown user costs
 * as much as a wrong password. Only the maximum length is enforced (a
 * longer password gets -EACCES at once), so raising PASSWORD_MIN_LENGTH
 * never locks out an existing user. */
int password_verify(struct password_hasher *h, const char *password, const char *hash);
