/* JSON helpers for untrusted input. The contracts are in json-util.h.
 *
 * json-c (0.16) is lenient even with JSON_TOKENER_STRICT: it accepts
 * single-quoted strings, NaN and Infinity, raw control characters inside
 * strings, and its UTF-8 check lets overlong forms and surrogates through;
 * its depth limit also counts scalars inside containers but not the
 * contents of empty ones. So a linear pre-scan decides what json-c cannot:
 * well-formed UTF-8, the bytes allowed outside strings, escapes and raw
 * control characters inside strings, and container nesting. json-c then
 * checks the grammar and builds the tree. */
#include <assert.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include "json-util.h"
#include "utf8.h"

/* Bytes that may appear outside strings: whitespace, structure, numbers
 * and the letters of true, false and null. */
static bool is_allowed_outside_string(unsigned char c)
{
        return strchr(" \t\n\r{}[],:0123456789+-.eEtruefalsn", c) && c != '\0';
}

/* The pre-scan described at the top of the file. Returns 0, -EBADMSG or
 * -ELOOP. body is valid UTF-8 and free of NUL bytes. */
static int prescan(const char *body, size_t len, unsigned max_depth)
{
        unsigned depth = 0;
        bool in_string = false;

        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)body[i];

                if (in_string) {
                        if (c < 0x20)
                                return -EBADMSG;
                        if (c == '"')
                                in_string = false;
                        else if (c == '\\') {
                                if (i + 1 >= len || !strchr("\"\\/bfnrtu", body[i + 1]))
                                        return -EBADMSG;
                                i++;
                        }
                        continue;
                }

                if (c == '"')
                        in_string = true;
                else if (c == '{' || c == '[') {
                        if (depth >= max_depth)
                                return -ELOOP;
                        depth++;
                } else if (c == '}' || c == ']') {
                        if (depth == 0)
                                return -EBADMSG;
                        depth--;
                } else if (!is_allowed_outside_string(c))
                        return -EBADMSG;
        }

        return 0;
}

static int parse_error(int r, const char **ret_error_code)
{
        switch (r) {
        case -EILSEQ:
                *ret_error_code = "invalid_utf8";
                break;
        case -ELOOP:
                *ret_error_code = "too_deep";
                break;
        case -EINVAL:
                *ret_error_code = "not_an_object";
                break;
        case -EFBIG:
                *ret_error_code = "payload_too_large";
                break;
        case -ENOMEM:
                *ret_error_code = "internal";
                break;
        default:
                r = -EBADMSG;
                *ret_error_code = "invalid_json";
                break;
        }
        return r;
}

static void tokener_freep(struct json_tokener **tok)
{
        if (*tok)
                json_tokener_free(*tok);
}

int json_parse_object(const char *body, size_t len, unsigned max_depth, struct json_object **ret,
                      const char **ret_error_code)
{
        _cleanup_(tokener_freep) struct json_tokener *tok = NULL;
        _cleanup_(json_object_putp) struct json_object *obj = NULL;
        enum json_tokener_error jerr;
        size_t end;
        int r;

        assert(body || len == 0);
        assert(ret);
        assert(ret_error_code);

        if (max_depth == 0)
                max_depth = JSON_DEFAULT_MAX_DEPTH;
        if (max_depth > JSON_MAX_DEPTH_LIMIT)
                max_depth = JSON_MAX_DEPTH_LIMIT;

        if (len > INT_MAX)
                return parse_error(-EFBIG, ret_error_code);
        if (len == 0 || memchr(body, '\0', len))
                return parse_error(-EBADMSG, ret_error_code);
        if (!utf8_is_valid(body, len))
                return parse_error(-EILSEQ, ret_error_code);
        r = prescan(body, len, max_depth);
        if (r < 0)
                return parse_error(r, ret_error_code);

        /* The pre-scan bounded container nesting to max_depth; json-c's own
         * count also includes a scalar inside the innermost container. */
        tok = json_tokener_new_ex((int)max_depth + 1);
        if (!tok)
                return parse_error(-ENOMEM, ret_error_code);
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);

        obj = json_tokener_parse_ex(tok, body, (int)len);
        jerr = json_tokener_get_error(tok);
        end = json_tokener_get_parse_end(tok);
        if (!obj && jerr == json_tokener_continue) {
                /* A top-level scalar such as 5 or null may continue in the
                 * next chunk: tell json-c the input ends here. */
                obj = json_tokener_parse_ex(tok, "", 1);
                jerr = json_tokener_get_error(tok);
                if (jerr == json_tokener_success && !obj)
                        return parse_error(-EINVAL, ret_error_code); /* null */
        }
        if (jerr == json_tokener_error_depth)
                return parse_error(-ELOOP, ret_error_code);
        if (jerr == json_tokener_error_parse_utf8_string)
                return parse_error(-EILSEQ, ret_error_code);
        if (jerr != json_tokener_success || !obj)
                return parse_error(-EBADMSG, ret_error_code);
        /* Without JSON_TOKENER_ALLOW_TRAILING_CHARS strict mode rejects
         * anything but whitespace after the value; check anyway. */
        for (size_t i = end; i < len; i++)
                if (!strchr(" \t\n\r", body[i]))
                        return parse_error(-EBADMSG, ret_error_code);

        if (!json_object_is_type(obj, json_type_object))
                return parse_error(-EINVAL, ret_error_code);

        *ret = TAKE_PTR(obj);
        return 0;
}

/* The value of key in obj, or NULL when obj is not an object, the key is
 * missing or its value is null. */
static struct json_object *field(struct json_object *obj, const char *key)
{
        struct json_object *v = NULL;

        if (!json_object_is_type(obj, json_type_object))
                return NULL;
        if (!json_object_object_get_ex(obj, key, &v))
                return NULL;
        return v;
}

int json_get_string(struct json_object *obj, const char *key, size_t min_len, size_t max_len,
                    const char **ret)
{
        struct json_object *v;
        const char *s;
        int n;

        assert(key);
        assert(ret);

        v = field(obj, key);
        if (!v)
                return -ENOENT;
        if (!json_object_is_type(v, json_type_string))
                return -EINVAL;

        s = json_object_get_string(v);
        n = json_object_get_string_len(v);
        if (!s || n < 0)
                return -EINVAL;
        if ((size_t)n < min_len || (size_t)n > max_len)
                return -ERANGE;
        for (int i = 0; i < n; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c < 0x20 || c == 0x7F)
                        return -EINVAL;
        }
        if (!utf8_is_valid(s, (size_t)n))
                return -EINVAL;

        *ret = s;
        return 0;
}

int json_get_int64(struct json_object *obj, const char *key, int64_t min, int64_t max, int64_t *ret)
{
        struct json_object *v;
        int64_t i;

        assert(key);
        assert(ret);

        v = field(obj, key);
        if (!v)
                return -ENOENT;
        /* json_object_get_int64() converts doubles, strings and booleans
         * silently; only a JSON integer literal is an integer here. */
        if (!json_object_is_type(v, json_type_int))
                return -EINVAL;

        i = json_object_get_int64(v);
        /* json-c keeps 2^63..2^64-1 as uint64 and saturates the int64 view
         * (and saturates larger literals to UINT64_MAX). */
        if (i == INT64_MAX && json_object_get_uint64(v) > (uint64_t)INT64_MAX)
                return -ERANGE;
        if (i < min || i > max)
                return -ERANGE;

        *ret = i;
        return 0;
}

char *json_to_string_dup(struct json_object *obj, size_t *ret_len)
{
        const char *s;
        size_t len = 0;
        char *copy;

        s = json_object_to_json_string_length(
                obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
        if (!s)
                return NULL;

        copy = malloc(len + 1);
        if (!copy)
                return NULL;
        memcpy(copy, s, len);
        copy[len] = '\0';

        if (ret_len)
                *ret_len = len;
        return copy;
}
