/* UTF-8 checks and bounded copies; the contracts are in utf8.h. */
#include <stdint.h>
#include <string.h>

#include "utf8.h"

size_t utf8_sequence_length(const char *s, size_t avail)
{
        const unsigned char *p = (const unsigned char *)s;
        unsigned char c = p[0], lo = 0x80, hi = 0xBF; /* the range of the 2nd byte */
        size_t n;

        if (c < 0x80)
                return 1;
        if (c >= 0xC2 && c <= 0xDF)
                n = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
                n = 3;
                if (c == 0xE0)
                        lo = 0xA0; /* overlong */
                else if (c == 0xED)
                        hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
                n = 4;
                if (c == 0xF0)
                        lo = 0x90; /* overlong */
                else if (c == 0xF4)
                        hi = 0x8F; /* above U+10FFFF */
        } else
                return 0; /* a continuation byte, C0, C1 or F5..FF */
        if (avail < n || p[1] < lo || p[1] > hi)
                return 0;
        for (size_t i = 2; i < n; i++)
                if (p[i] < 0x80 || p[i] > 0xBF)
                        return 0;
        return n;
}

/* Bytes of ASCII at s, at most len: 8 at a time while they last. */
static size_t ascii_run(const unsigned char *s, size_t len)
{
        size_t n = 0;

        for (uint64_t w; n + 8 <= len; n += 8) {
                memcpy(&w, s + n, 8);
                if (w & UINT64_C(0x8080808080808080))
                        break;
        }
        while (n < len && s[n] < 0x80)
                n++;
        return n;
}

bool utf8_is_valid(const char *s, size_t len)
{
        for (size_t i = 0; i < len;) {
                size_t n = ascii_run((const unsigned char *)s + i, len - i);

                if (n == 0 && !(n = utf8_sequence_length(s + i, len - i)))
                        return false;
                i += n;
        }
        return true;
}

size_t utf8_copy(char *out, const char *s, size_t max, const char *replacement)
{
        size_t len = strnlen(s, max + 4), i = 0, o = 0;

        while (i < len) {
                /* A run of ASCII, most text, in one copy. */
                size_t n = ascii_run((const unsigned char *)s + i, len - i);

                if (n > 0) {
                        if (n > max - o)
                                n = max - o;
                        memcpy(out + o, s + i, n);
                        o += n;
                        i += n;
                        if (o == max)
                                break;
                        continue;
                }
                n = utf8_sequence_length(s + i, len - i);
                if (n == 0) {
                        size_t r_len = strlen(replacement);

                        if (r_len > max - o)
                                break;
                        memcpy(out + o, replacement, r_len);
                        o += r_len;
                        i++;
                        continue;
                }
                if (n > max - o)
                        break;
                memcpy(out + o, s + i, n);
                o += n;
                i += n;
        }
        out[o] = '\0';
        return o;
}

size_t utf8_copy_bound(const char *s, size_t max, size_t replacement_len)
{
        size_t len = strnlen(s, max + 4);

        return len > max / replacement_len ? max : replacement_len * len;
}

void utf8_copy_cut(char *dst, size_t max, const char *src)
{
        size_t len = src ? strlen(src) : 0;

        if (len > max) {
                len = max;
                while (len > 0 && ((unsigned char)src[len] & 0xc0) == 0x80)
                        len--;
        }
        memcpy(dst, src ? src : "", len);
        dst[len] = '\0';
}
