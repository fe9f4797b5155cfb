/* Growable strings; the contracts are in strbuf.h. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strbuf.h"

#define INITIAL_CAPACITY 256

bool strbuf_reserve(struct strbuf *b, size_t n)
{
        size_t cap;
        char *d;

        if (b->failed)
                return false;
        if (n < b->cap - b->len) /* also false while cap is 0 */
                return true;
        if (n > SIZE_MAX / 2 - b->len - 1) {
                b->failed = true;
                return false;
        }
        cap = b->cap ? b->cap : INITIAL_CAPACITY;
        while (cap < b->len + n + 1)
                cap *= 2;
        d = realloc(b->data, cap);
        if (!d) {
                b->failed = true;
                return false;
        }
        b->data = d;
        b->cap = cap;
        return true;
}

void strbuf_append_grow(struct strbuf *b, const void *s, size_t n)
{
        /* With the room made, strbuf_append() copies. */
        if (strbuf_reserve(b, n))
                strbuf_append(b, s, n);
}

void strbuf_puts(struct strbuf *b, const char *s)
{
        strbuf_append(b, s, strlen(s));
}

void strbuf_put_u64(struct strbuf *b, uint64_t v)
{
        char buf[20], *p = buf + sizeof(buf);

        do {
                *--p = (char)('0' + v % 10);
                v /= 10;
        } while (v > 0);
        strbuf_append(b, p, (size_t)(buf + sizeof(buf) - p));
}

void strbuf_put_i64(struct strbuf *b, int64_t v)
{
        if (v < 0) {
                strbuf_putc(b, '-');
                /* -(v + 1) + 1 does not overflow for INT64_MIN. */
                strbuf_put_u64(b, (uint64_t)(-(v + 1)) + 1);
        } else
                strbuf_put_u64(b, (uint64_t)v);
}

void strbuf_printf(struct strbuf *b, const char *fmt, ...)
{
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
                b->failed = true;
                return;
        }
        if (!strbuf_reserve(b, (size_t)n))
                return;
        va_start(ap, fmt);
        (void)vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
        b->len += (size_t)n;
}

/* The bytes a JSON string holds as they are: all but '"', '\\' and the
 * control characters. */
static const bool json_plain[256] = {
        [0x20 ... '"' - 1] = true,
        ['"' + 1 ... '\\' - 1] = true,
        ['\\' + 1 ... 0xff] = true,
};

/* Whether none of the 8 bytes in w needs an escape: none is below 0x20,
 * '"' or '\\' (the has-less-than and has-zero-byte word tricks, exact for
 * whether any byte matches). */
static bool word_plain(uint64_t w)
{
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');

        return ((((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote) |
                 ((backslash - ones) & ~backslash)) &
                highs) == 0;
}

void strbuf_put_json_string(struct strbuf *b, const char *s, size_t n)
{
        static const char hex[] = "0123456789abcdef";
        size_t start = 0, i = 0;

        strbuf_putc(b, '"');
        for (;;) {
                unsigned char c;
                char esc[6];
                size_t len = 2;
                uint64_t w;

                /* Runs that need no escape, 8 bytes at a time. */
                while (i + 8 <= n && (memcpy(&w, s + i, 8), word_plain(w)))
                        i += 8;
                while (i < n && json_plain[(unsigned char)s[i]])
                        i++;
                if (i >= n)
                        break;
                c = (unsigned char)s[i];
                esc[0] = '\\';
                switch (c) {
                case '"':
                case '\\':
                        esc[1] = (char)c;
                        break;
                case '\n':
                        esc[1] = 'n';
                        break;
                case '\r':
                        esc[1] = 'r';
                        break;
                case '\t':
                        esc[1] = 't';
                        break;
                default:
                        memcpy(esc + 1, "u00", 3);
                        esc[4] = hex[c >> 4];
                        esc[5] = hex[c & 0xf];
                        len = 6;
                }
                strbuf_append(b, s + start, i - start);
                strbuf_append(b, esc, len);
                start = ++i;
        }
        strbuf_append(b, s + start, n - start);
        strbuf_putc(b, '"');
}

void strbuf_reset(struct strbuf *b)
{
        b->len = 0;
        b->failed = false;
        if (b->data)
                b->data[0] = '\0';
}

char *strbuf_steal(struct strbuf *b)
{
        char *s = b->data;

        if (b->failed) {
                strbuf_done(b);
                return NULL;
        }
        if (!s)
                s = strdup("");
        *b = (struct strbuf){};
        return s;
}

void strbuf_done(struct strbuf *b)
{
        free(b->data);
        *b = (struct strbuf){};
}
