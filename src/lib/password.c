/* Password hashing with yescrypt through libxcrypt, behind a counting
 * semaphore (a mutex, a condition variable on CLOCK_MONOTONIC and a count)
 * so that at most max_concurrent hashes run at once. */
#include <assert.h>
#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"
#include "password.h"

#define DEFAULT_QUEUE_TIMEOUT_MS 2000u
#define YESCRYPT_PREFIX          "$y$"

/* Hashed against the dummy setting when the user does not exist; never
 * accepted, whatever its value. */
#define DUMMY_PASSWORD "vigil-dummy-password-never-matches"

struct password_hasher {
        pthread_mutex_t lock;
        pthread_cond_t slot_freed;
        unsigned max_concurrent;
        unsigned in_use; /* under lock */
        unsigned queue_timeout_ms;
        unsigned long cost;
        char *dummy_hash; /* same cost as real hashes, so as slow */
};

static void crypt_data_freep(struct crypt_data **p)
{
        if (!*p)
                return;
        /* It held the passphrase's hash and yescrypt's scratch state. */
        explicit_bzero(*p, sizeof(**p));
        free(*p);
}

static bool length_ok(const char *password, size_t min)
{
        size_t len = strnlen(password, PASSWORD_MAX_LENGTH + 1);

        return len >= min && len <= PASSWORD_MAX_LENGTH;
}

/* Wait up to the queue timeout for a slot. Returns 0 holding one, or
 * -EBUSY. */
static int slot_acquire(struct password_hasher *h)
{
        struct timespec deadline;
        int r = 0;

        deadline = monotonic_deadline_ms(h->queue_timeout_ms);

        pthread_mutex_lock(&h->lock);
        while (h->in_use >= h->max_concurrent) {
                int k = pthread_cond_timedwait(&h->slot_freed, &h->lock, &deadline);

                if (k == ETIMEDOUT && h->in_use >= h->max_concurrent) {
                        r = -EBUSY;
                        break;
                }
        }
        if (r == 0)
                h->in_use++;
        pthread_mutex_unlock(&h->lock);
        return r;
}

static void slot_release(struct password_hasher *h)
{
        pthread_mutex_lock(&h->lock);
        assert(h->in_use > 0);
        h->in_use--;
        pthread_cond_signal(&h->slot_freed);
        pthread_mutex_unlock(&h->lock);
}

/* Run yescrypt on password with setting (a "$y$" salt or a full hash).
 * Returns 0 and a malloc()ed "$y$…" string, -EINVAL for a setting libxcrypt
 * does not take, -ENOMEM. Takes no slot; the caller holds one. */
static int run_crypt(const char *password, const char *setting, char **ret_hash)
{
        _cleanup_(crypt_data_freep) struct crypt_data *data = NULL;
        const char *out;
        char *copy;

        /* About 32 KiB: too big for a small thread stack. */
        data = calloc(1, sizeof(*data));
        if (!data)
                return -ENOMEM;

        errno = 0;
        out = crypt_rn(password, setting, data, (int)sizeof(*data));
        if (!out)
                return errno == ENOMEM ? -ENOMEM : -EINVAL;
        /* Failure tokens start with '*'; crypt_rn should not return them,
         * but a hash we hand out must be a yescrypt one. */
        if (strncmp(out, YESCRYPT_PREFIX, strlen(YESCRYPT_PREFIX)) != 0)
                return -EINVAL;

        copy = strdup(out);
        if (!copy)
                return -ENOMEM;
        *ret_hash = copy;
        return 0;
}

/* Compare two NUL-terminated strings in time depending only on their
 * lengths (which are fixed by the hash format, so public). */
static bool equal_strings_constant_time(const char *a, const char *b)
{
        size_t len = strlen(a);

        return strlen(b) == len && equal_constant_time(a, b, len);
}

static int new_setting(unsigned long cost, char **ret)
{
        char *setting;

        errno = 0;
        setting = crypt_gensalt_ra(YESCRYPT_PREFIX, cost, NULL, 0);
        if (!setting)
                return errno == ENOMEM ? -ENOMEM : -EINVAL;
        *ret = setting;
        return 0;
}

int password_hasher_new(unsigned max_concurrent, unsigned queue_timeout_ms, unsigned long cost,
                        struct password_hasher **ret)
{
        _cleanup_(password_hasher_freep) struct password_hasher *h = NULL;
        _cleanup_free_ char *setting = NULL;
        pthread_condattr_t attr;
        int r;

        assert(ret);

        if (max_concurrent == 0) {
                long cpus = sysconf(_SC_NPROCESSORS_ONLN);

                max_concurrent = cpus > 2 ? (unsigned)(cpus - 1) : 1;
        }
        if (queue_timeout_ms == 0)
                queue_timeout_ms = DEFAULT_QUEUE_TIMEOUT_MS;

        /* Also validates cost: libxcrypt refuses one out of range. */
        r = new_setting(cost, &setting);
        if (r < 0)
                return r;

        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->max_concurrent = max_concurrent;
        h->queue_timeout_ms = queue_timeout_ms;
        h->cost = cost;

        r = pthread_mutex_init(&h->lock, NULL);
        if (r != 0) {
                free(TAKE_PTR(h));
                return -r;
        }
        r = pthread_condattr_init(&attr);
        if (r == 0) {
                r = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
                if (r == 0)
                        r = pthread_cond_init(&h->slot_freed, &attr);
                pthread_condattr_destroy(&attr);
        }
        if (r != 0) {
                pthread_mutex_destroy(&h->lock);
                free(TAKE_PTR(h));
                return -r;
        }

        r = run_crypt(DUMMY_PASSWORD, setting, &h->dummy_hash);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(h);
        return 0;
}

void password_hasher_free(struct password_hasher *h)
{
        if (!h)
                return;
        assert(h->in_use == 0);
        free(h->dummy_hash);
        pthread_cond_destroy(&h->slot_freed);
        pthread_mutex_destroy(&h->lock);
        free(h);
}

unsigned password_hasher_in_use(struct password_hasher *h)
{
        unsigned n;

        assert(h);
        pthread_mutex_lock(&h->lock);
        n = h->in_use;
        pthread_mutex_unlock(&h->lock);
        return n;
}

int password_hash(struct password_hasher *h, const char *password, char **ret_hash)
{
        _cleanup_free_ char *setting = NULL;
        int r;

        assert(h);
        assert(password);
        assert(ret_hash);

        if (!length_ok(password, PASSWORD_MIN_LENGTH))
                return -EINVAL;

        /* A fresh random salt; the cost was validated by password_hasher_new(). */
        r = new_setting(h->cost, &setting);
        if (r < 0)
                return r;

        r = slot_acquire(h);
        if (r < 0)
                return r;
        r = run_crypt(password, setting, ret_hash);
        slot_release(h);
        return r;
}

int password_verify(struct password_hasher *h, const char *password, const char *hash)
{
        _cleanup_free_ char *computed = NULL;
        bool dummy = !hash;
        int r;

        assert(h);
        assert(password);

        /* No minimum here: tightening the policy must not lock anyone out.
         * A password too long to have been hashed cannot match; its length
         * is the caller's own knowledge, so answering early leaks nothing. */
        if (!length_ok(password, 0))
                return -EACCES;

        if (dummy)
                hash = h->dummy_hash;
        else if (strncmp(hash, YESCRYPT_PREFIX, strlen(YESCRYPT_PREFIX)) != 0 ||
                 strnlen(hash, CRYPT_OUTPUT_SIZE) >= CRYPT_OUTPUT_SIZE)
                return -EINVAL;

        r = slot_acquire(h);
        if (r < 0)
                return r;
        r = run_crypt(password, hash, &computed);
        slot_release(h);
        if (r < 0)
                return r;

        if (!equal_strings_constant_time(computed, hash) || dummy)
                return -EACCES;
        return 0;
}
