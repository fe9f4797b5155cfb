/* JSON helpers on top of json-c for untrusted request bodies: bounded
 * depth, strict UTF-8, typed field access with ranges.
 *
 * Thread-safety: stateless; safe from any thread. */
#pragma once

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

#define JSON_DEFAULT_MAX_DEPTH 16
/* Larger max_depth arguments are clamped to this. */
#define JSON_MAX_DEPTH_LIMIT 1024

DEFINE_TRIVIAL_CLEANUP_FUNC(struct json_object *, json_object_put)

/* Parse body (len bytes, not necessarily NUL-terminated) as one JSON
 * object (RFC 8259, nothing more: no single quotes, comments, NaN or
 * Infinity, no raw control characters inside strings). Returns 0 and a new
 * reference in *ret, or a negative errno with *ret_error_code set to a
 * stable API error code:
 *   -EBADMSG "invalid_json"  (syntax, trailing garbage, NUL bytes, empty body)
 *   -EILSEQ  "invalid_utf8"  (any byte sequence that is not well-formed
 *                             UTF-8: overlong forms, surrogates, > U+10FFFF)
 *   -ELOOP   "too_deep"      (more than max_depth nested objects/arrays;
 *                             the top-level object counts as 1)
 *   -EINVAL  "not_an_object" (valid JSON that is not an object)
 *   -EFBIG   "payload_too_large" (len > INT_MAX)
 *   -ENOMEM  "internal"
 * max_depth 0 means JSON_DEFAULT_MAX_DEPTH; values above
 * JSON_MAX_DEPTH_LIMIT are clamped. The first problem found (scanning from
 * the start) decides the code, except that NUL bytes are checked first and
 * UTF-8 second. Duplicate keys are accepted; the last one wins. */
int json_parse_object(const char *body, size_t len, unsigned max_depth, struct json_object **ret,
                      const char **ret_error_code);

/* Field access. Return 0 and set *ret, -ENOENT when the key is missing (or
 * null), -EINVAL when it has the wrong type (a string "5" is not an
 * integer, 5.5 is not an integer, true is not an integer), -ERANGE when out
 * of range. For strings, lengths are in bytes and the value must be free of
 * NUL bytes and control characters. *ret points into obj.
 *
 * json_get_string: the value must be a JSON string of min_len..max_len
 * bytes (else -ERANGE), valid UTF-8 and free of NUL bytes (e.g. from
 * "\u0000") and control characters U+0000..U+001F and U+007F (else
 * -EINVAL).
 *
 * json_get_int64: the value must be a JSON integer literal: a number
 * written with a fraction or exponent is a double and gives -EINVAL even
 * when integral (5.0, 1e2). An integer beyond the int64 range gives -ERANGE
 * when positive; a negative one below INT64_MIN is saturated by json-c to
 * INT64_MIN, so it is only rejected when min > INT64_MIN. */
int json_get_string(struct json_object *obj, const char *key, size_t min_len, size_t max_len,
                    const char **ret);
int json_get_int64(struct json_object *obj, const char *key, int64_t min, int64_t max,
                   int64_t *ret);

/* Serialise compactly into a malloc()ed string (never NULL but on OOM).
 * ret_len may be NULL. "/" is not escaped. */
char *json_to_string_dup(struct json_object *obj, size_t *ret_len);
