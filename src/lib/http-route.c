/* Route templates and header values of the HTTP server. The contracts
 * are in http-route.h. */
#include "http-route.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int http_route_template_compile(const char *template, struct http_route_template *ret)
{
        struct http_route_template t = {0};
        size_t n_params = 0;
        char *p;

        if (!template || template[0] != '/')
                return -EINVAL;
        t.buf = strdup(template + 1);
        if (!t.buf)
                return -ENOMEM;

        p = t.buf;
        if (*p == '\0') { /* "/" has no segments */
                *ret = t;
                return 0;
        }
        for (;;) {
                char *slash = strchr(p, '/');
                struct http_route_segment *seg;
                size_t len;

                if (slash)
                        *slash = '\0';
                len = strlen(p);
                if (t.n_segments >= HTTP_MAX_SEGMENTS)
                        goto invalid;
                seg = &t.segments[t.n_segments++];

                if (len > 0 && p[0] == '{') {
                        if (len < 3 || p[len - 1] != '}' || memchr(p + 1, '{', len - 2) ||
                            memchr(p + 1, '}', len - 2))
                                goto invalid;
                        if (++n_params > HTTP_MAX_PARAMS)
                                goto invalid;
                        p[len - 1] = '\0';
                        *seg = (struct http_route_segment){
                                .text = p + 1, .len = len - 2, .param = true};
                } else {
                        if (memchr(p, '{', len) || memchr(p, '}', len))
                                goto invalid;
                        *seg = (struct http_route_segment){.text = p, .len = len, .param = false};
                }

                if (!slash)
                        break;
                p = slash + 1;
        }
        *ret = t;
        return 0;

invalid:
        free(t.buf);
        return -EINVAL;
}

void http_route_template_done(struct http_route_template *t)
{
        free(t->buf);
        t->buf = NULL;
        t->n_segments = 0;
}

bool http_route_template_match(const struct http_route_template *t, const char *path,
                               char *path_buf, struct http_route_param params[HTTP_MAX_PARAMS],
                               size_t *ret_n_params)
{
        const char *p;
        size_t i = 0, n_params = 0;

        if (path[0] != '/')
                return false;
        p = path + 1;
        if (*p == '\0') { /* "/" */
                if (t->n_segments > 0)
                        return false;
                if (ret_n_params)
                        *ret_n_params = 0;
                return true;
        }

        /* First decide, writing nothing; then cut the values out. */
        for (;;) {
                const char *slash = strchr(p, '/');
                size_t len = slash ? (size_t)(slash - p) : strlen(p);
                const struct http_route_segment *seg;

                if (i >= t->n_segments)
                        return false;
                seg = &t->segments[i++];
                if (seg->param) {
                        if (len == 0)
                                return false;
                } else if (len != seg->len || memcmp(p, seg->text, len) != 0)
                        return false;

                if (!slash)
                        break;
                p = slash + 1;
        }
        if (i != t->n_segments)
                return false;

        if (params) {
                p = path + 1;
                for (i = 0; i < t->n_segments; i++) {
                        const char *slash = strchr(p, '/');
                        size_t len = slash ? (size_t)(slash - p) : strlen(p);

                        if (t->segments[i].param) {
                                char *v = path_buf + (p - path);

                                v[len] = '\0';
                                params[n_params++] =
                                        (struct http_route_param){t->segments[i].text, v};
                        }
                        p = slash ? slash + 1 : p + len;
                }
        }
        if (ret_n_params)
                *ret_n_params = n_params;
        return true;
}

const char *http_bearer_token(const char *authorization)
{
        const char *token;

        if (!authorization || strncasecmp(authorization, "Bearer", 6) != 0 ||
            (authorization[6] != ' ' && authorization[6] != '\t'))
                return NULL;
        token = authorization + 6;
        while (*token == ' ' || *token == '\t')
                token++;
        if (*token == '\0')
                return NULL;
        for (const char *c = token; *c; c++)
                if (isspace((unsigned char)*c))
                        return NULL;
        return token;
}

bool http_content_type_is_json(const char *content_type)
{
        static const char json[] = "application/json";
        const char *ct = content_type;
        size_t len;

        if (!ct)
                return true;
        while (*ct == ' ' || *ct == '\t')
                ct++;
        len = strcspn(ct, "; \t");
        if (len != strlen(json) || strncasecmp(ct, json, len) != 0)
                return false;
        ct += len;
        while (*ct == ' ' || *ct == '\t')
                ct++;
        return *ct == '\0' || *ct == ';'; /* "application/json x" is not JSON */
}
