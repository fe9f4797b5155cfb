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

DEFINE_TRIVIAL_CLEANUP_FUNC(struct json_object *, json_object_put)

/* Parse body (len bytes, not necessarily NUL-terminated) as one JSON
 * object. Returns 0 and a new reference in *ret, or a negative errno with
 * *ret_error_code set to a stable API error code:
 *   -EBADMSG "invalid_json"  (syntax, trailing garbage, NUL bytes, empty body)
 *   -EILSEQ  "invalid_utf8"
 *   -ELOOP   "too_deep"      (nesting deeper than max_depth)
 *   -EINVAL  "not_an_object" (valid JSON that is not an object) */
int json_parse_object(const char *body, size_t len, unsigned max_depth,
                      struct json_object **ret, const char **ret_error_code);

/* Field access. Return 0 and set *ret, -ENOENT when the key is missing (or
 * null), -EINVAL when it has the wrong type (a string "5" is not an
 * integer, 5.5 is not an integer, true is not an integer), -ERANGE when out
 * of range. For strings, lengths are in bytes and the value must be free of
 * NUL bytes and control characters. *ret points into obj. */
int json_get_string(struct json_object *obj, const char *key, size_t min_len, size_t max_len,
                    const char **ret);
int json_get_int64(struct json_object *obj, const char *key, int64_t min, int64_t max,
                   int64_t *ret);

/* Serialise compactly into a malloc()ed string (never NULL but on OOM). */
char *json_to_string_dup(struct json_object *obj, size_t *ret_len);
