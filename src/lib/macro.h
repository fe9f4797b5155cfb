/* Small helpers shared by every module: cleanup attributes, ownership
 * transfer and array sizes. Modelled on systemd's macro.h. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define _cleanup_(f)   __attribute__((cleanup(f)))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _unused_       __attribute__((unused))
#define _likely_(x)    __builtin_expect(!!(x), 1)
#define _unlikely_(x)  __builtin_expect(!!(x), 0)

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

/* Take ownership of the pointer p: return its value and set it to NULL, so
 * a _cleanup_ attribute on p no longer frees it. */
#define TAKE_PTR(p)                                                                                \
        ({                                                                                         \
                __typeof__(p) *_pp = &(p);                                                         \
                __typeof__(p) _ptr = *_pp;                                                         \
                *_pp = NULL;                                                                       \
                _ptr;                                                                              \
        })

#define TAKE_FD(fd)                                                                                \
        ({                                                                                         \
                int *_fdp = &(fd);                                                                 \
                int _fd = *_fdp;                                                                   \
                *_fdp = -1;                                                                        \
                _fd;                                                                               \
        })

/* Define name##p(type **p) calling func(*p) when *p is non-NULL, for use
 * with _cleanup_(). */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                                                    \
        static inline void func##p(type *p)                                                        \
        {                                                                                          \
                if (*p)                                                                            \
                        func(*p);                                                                  \
        }

static inline void freep(void *p)
{
        free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(freep)

/* Wipe a NUL-terminated secret (a password, a token) before freeing it;
 * the "p" form is for _cleanup_() and leaves the pointer NULL. */
static inline void erase_and_free(char *s)
{
        if (s) {
                explicit_bzero(s, strlen(s));
                free(s);
        }
}

static inline void erase_and_freep(char **s)
{
        erase_and_free(*s);
        *s = NULL;
}

/* Whether n bytes at a and b are equal, in a time that depends on n only,
 * for comparing secrets. */
static inline bool equal_constant_time(const void *a, const void *b, size_t n)
{
        const uint8_t *x = a, *y = b;
        volatile uint8_t diff = 0;

        for (size_t i = 0; i < n; i++)
                diff |= x[i] ^ y[i];
        return diff == 0;
}

/* FNV-1a, 64 bits, of n bytes at p, continuing from h (FNV1A64_INIT to
 * start): a fast spread for hash tables, not a defence against chosen
 * collisions. */
#define FNV1A64_INIT 0xcbf29ce484222325ULL
static inline uint64_t fnv1a64(uint64_t h, const void *p, size_t n)
{
        const uint8_t *b = p;

        for (size_t i = 0; i < n; i++)
                h = (h ^ b[i]) * 0x100000001b3ULL;
        return h;
}

static inline void closep(int *fd)
{
        if (*fd >= 0)
                close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

static inline int negative_errno(void)
{
        return errno > 0 ? -errno : -EIO;
}

/* Monotonic and wall clocks in microseconds. */
#include <time.h>
static inline uint64_t now_usec(clockid_t clock)
{
        struct timespec ts;
        clock_gettime(clock, &ts);
        return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000ULL;
}
#define USEC_PER_SEC  1000000ULL
#define USEC_PER_MSEC 1000ULL

/* The CLOCK_MONOTONIC time ms milliseconds from now: the deadline for
 * pthread_cond_timedwait() on a condition variable set to that clock. */
static inline struct timespec monotonic_deadline_ms(unsigned ms)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        return ts;
}
