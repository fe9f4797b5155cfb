/* A growable, always NUL-terminated byte string for building output (an
 * exposition page, an OTLP body, a response). Appending never fails in the
 * caller's eyes: after an allocation failure the buffer stops growing and
 * strbuf_failed() is true, so a renderer checks once at the end.
 *
 * Thread-safety: none; a strbuf belongs to one thread at a time. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "macro.h"

struct strbuf {
        char *data; /* NULL until the first append */
        size_t len; /* bytes, not counting the NUL */
        size_t cap;
        bool failed;
};

/* Room for n more bytes and the NUL; false (and failed set) when memory is
 * short or the size would overflow. */
bool strbuf_reserve(struct strbuf *b, size_t n);
/* The slow path of strbuf_append(): grows the buffer first. */
void strbuf_append_grow(struct strbuf *b, const void *s, size_t n);
/* Inline, so that appending a literal is a copy of known size. */
static inline void strbuf_append(struct strbuf *b, const void *s, size_t n)
{
        if (n >= b->cap - b->len || b->failed) { /* also while cap is 0 */
                strbuf_append_grow(b, s, n);
                return;
        }
        memcpy(b->data + b->len, s, n);
        b->len += n;
        b->data[b->len] = '\0';
}
void strbuf_puts(struct strbuf *b, const char *s);
static inline void strbuf_putc(struct strbuf *b, char c)
{
        strbuf_append(b, &c, 1);
}
void strbuf_put_u64(struct strbuf *b, uint64_t v);
void strbuf_put_i64(struct strbuf *b, int64_t v);
void strbuf_printf(struct strbuf *b, const char *fmt, ...) _printf_(2, 3);
/* A JSON string literal (with its quotes) of the n bytes at s, which must
 * be valid UTF-8: '"', '\\' and control characters are escaped. */
void strbuf_put_json_string(struct strbuf *b, const char *s, size_t n);

static inline bool strbuf_failed(const struct strbuf *b)
{
        return b->failed;
}
/* Empty it for reuse, keeping the memory; clears a failure. */
void strbuf_reset(struct strbuf *b);
/* The string, owned by the caller from now on ("" for a buffer never
 * appended to), or NULL when an append failed; b is left empty. */
char *strbuf_steal(struct strbuf *b);
/* Free the memory; b is left empty and may be used again. */
void strbuf_done(struct strbuf *b);
