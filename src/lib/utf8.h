/* UTF-8 as RFC 3629 defines it: no overlong forms, no surrogates, nothing
 * above U+10FFFF. One check for every module that takes text from outside
 * (JSON bodies, metric label values, span attributes).
 *
 * Thread-safety: pure functions. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Length (1-4) of the well-formed sequence at s, of which avail (at least
 * 1) bytes may be read; 0 when it is malformed or truncated. */
size_t utf8_sequence_length(const char *s, size_t avail);

/* True when the len bytes at s are well-formed UTF-8 (NUL included). */
bool utf8_is_valid(const char *s, size_t len);

/* Copy at most max bytes of the NUL-terminated s (reading at most max + 4
 * of them) to out as well-formed UTF-8, cut between characters, each
 * malformed byte replaced by replacement (well-formed, 1 to 3 bytes: "?" or
 * U+FFFD). out has room for utf8_copy_bound() bytes and a NUL. Returns the
 * bytes written, not counting the NUL. */
size_t utf8_copy(char *out, const char *s, size_t max, const char *replacement);

/* The most utf8_copy(out, s, max, replacement) writes, for a replacement
 * of replacement_len bytes. */
size_t utf8_copy_bound(const char *s, size_t max, size_t replacement_len);

/* Copy src (NULL counts as "") into dst (max + 1 bytes), cut at max bytes
 * between characters: continuation bytes at the cut are dropped with the
 * character they belong to. Nothing is checked or replaced: for text that
 * is well-formed already (a string json-c parsed). */
void utf8_copy_cut(char *dst, size_t max, const char *src);
