/* libFuzzer target: the HTTP server's route templates (http-route.h),
 * compiled and matched against request paths, checked against a reference
 * written here from the header's contract (split both on '/', compare
 * segment by segment).
 *
 * Input: a template, a newline, then a path; the path stops at its first
 * NUL as libmicrohttpd's decoded URL does. Promises checked: compile and
 * match agree with the reference; the parameters are the path's segments
 * at the {name} positions, in order, named as in the template; a failed
 * compile leaves *ret alone and a failed match leaves path_buf alone.
 * Every parameter value also goes through the parsers of the ids the
 * daemons take from paths (inventory_parse_product_id(),
 * payment_parse_id()), checked against references. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http-route.h"
#include "inventoryd-products.h"
#include "paymentd-payments.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_PIECES 4096

struct pieces {
        const char *start[MAX_PIECES];
        size_t len[MAX_PIECES];
        size_t n;
};

/* Split s (after its leading '/') on every '/'. */
static bool split(const char *s, struct pieces *ret)
{
        const char *p = s + 1;

        ret->n = 0;
        for (;;) {
                const char *slash = strchr(p, '/');
                size_t len = slash ? (size_t)(slash - p) : strlen(p);

                if (ret->n == MAX_PIECES)
                        return false;
                ret->start[ret->n] = p;
                ret->len[ret->n++] = len;
                if (!slash)
                        return true;
                p = slash + 1;
        }
}

static bool is_param(const char *s, size_t len)
{
        return len > 0 && s[0] == '{';
}

static bool reference_compiles(const char *template, struct pieces *t)
{
        size_t n_params = 0;

        if (template[0] != '/')
                return false;
        if (strcmp(template, "/") == 0) {
                t->n = 0;
                return true;
        }
        if (!split(template, t) || t->n > HTTP_MAX_SEGMENTS)
                return false;
        for (size_t i = 0; i < t->n; i++) {
                const char *s = t->start[i];
                size_t len = t->len[i];
                size_t inner_braces = 0;

                for (size_t j = 1; j + 1 < len; j++)
                        inner_braces += s[j] == '{' || s[j] == '}';
                if (is_param(s, len)) {
                        if (len < 3 || s[len - 1] != '}' || inner_braces > 0)
                                return false;
                        n_params++;
                } else if (memchr(s, '{', len) || memchr(s, '}', len)) {
                        return false;
                }
        }
        return n_params <= HTTP_MAX_PARAMS;
}

static bool reference_matches(const struct pieces *t, const char *path, struct pieces *p)
{
        if (path[0] != '/')
                return false;
        if (t->n == 0)
                return strcmp(path, "/") == 0;
        if (strcmp(path, "/") == 0)
                return false;
        if (!split(path, p) || p->n != t->n)
                return false;
        for (size_t i = 0; i < t->n; i++) {
                if (is_param(t->start[i], t->len[i])) {
                        if (p->len[i] == 0)
                                return false;
                } else if (p->len[i] != t->len[i] ||
                           memcmp(p->start[i], t->start[i], t->len[i]) != 0) {
                        return false;
                }
        }
        return true;
}

/* 0, -EINVAL or -ERANGE, as inventoryd-products.h says, and the value. */
static int reference_product_id(const char *s, int64_t *ret)
{
        static const char max[] = "9223372036854775807";
        size_t n = strlen(s);
        int64_t v = 0;

        if (n == 0 || strspn(s, "0123456789") != n)
                return -EINVAL;
        if (strcmp(s, "0") == 0)
                return -ERANGE;
        if (s[0] == '0')
                return -EINVAL;
        if (n > strlen(max) || (n == strlen(max) && strcmp(s, max) > 0))
                return -ERANGE;
        for (size_t i = 0; i < n; i++)
                v = v * 10 + (s[i] - '0');
        *ret = v;
        return 0;
}

static void check_id_parsers(const char *value)
{
        int64_t got = -42, expected = 0;
        int r, want;

        want = reference_product_id(value, &expected);
        r = inventory_parse_product_id(value, &got);
        if (r != want || (r == 0 ? got != expected : got != -42))
                abort();

        got = -42;
        r = payment_parse_id(value, &got);
        want = want == 0 && strlen(value) <= 18 ? 0 : -EINVAL;
        if (r != want || (r == 0 ? got != expected : got != -42))
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static struct pieces t_pieces, p_pieces;
        struct http_route_template compiled, untouched;
        struct http_route_param params[HTTP_MAX_PARAMS];
        const uint8_t *newline = memchr(data, '\n', size);
        char *template, *path, *path_buf;
        size_t template_len, n_params = 99;
        bool expected, matched;
        int r;

        if (!newline)
                return 0;
        template_len = (size_t)(newline - data);
        template = strndup((const char *)data, template_len);
        path = strndup((const char *)newline + 1, size - template_len - 1);
        if (!template || !path)
                abort();
        if (strlen(template) != template_len) { /* a NUL inside: not a C string */
                free(template);
                free(path);
                return 0;
        }

        memset(&compiled, 0xa5, sizeof(compiled));
        memcpy(&untouched, &compiled, sizeof(compiled));
        r = http_route_template_compile(template, &compiled);
        expected = reference_compiles(template, &t_pieces);
        if (r == -ENOMEM) {
                free(template);
                free(path);
                return 0;
        }
        if ((r == 0) != expected || (r != 0 && r != -EINVAL))
                abort();
        if (r < 0) {
                if (memcmp(&compiled, &untouched, sizeof(compiled)) != 0)
                        abort();
                free(template);
                free(path);
                return 0;
        }
        if (compiled.n_segments != t_pieces.n)
                abort();

        path_buf = strdup(path);
        if (!path_buf)
                abort();
        matched = http_route_template_match(&compiled, path, path_buf, params, &n_params);
        expected = reference_matches(&t_pieces, path, &p_pieces);
        if (matched != expected)
                abort();
        if (matched != http_route_template_match(&compiled, path, NULL, NULL, NULL))
                abort();
        if (!matched) {
                if (strcmp(path_buf, path) != 0 || n_params != 99)
                        abort();
        } else {
                size_t k = 0;

                for (size_t i = 0; i < t_pieces.n; i++) {
                        if (!is_param(t_pieces.start[i], t_pieces.len[i]))
                                continue;
                        if (k >= n_params || strlen(params[k].value) != p_pieces.len[i] ||
                            memcmp(params[k].value, p_pieces.start[i], p_pieces.len[i]) != 0 ||
                            strlen(params[k].name) != t_pieces.len[i] - 2 ||
                            memcmp(params[k].name, t_pieces.start[i] + 1, t_pieces.len[i] - 2) != 0)
                                abort();
                        check_id_parsers(params[k].value);
                        k++;
                }
                if (k != n_params)
                        abort();
        }

        free(path_buf);
        http_route_template_done(&compiled);
        free(template);
        free(path);
        return 0;
}
