/* Route templates of the HTTP server, and the request header values it
 * reads for the program: pure functions on strings, no libmicrohttpd, so
 * that the server and tests/fuzz/ run the same code.
 *
 * A template is "/" or "/" followed by segments separated by '/': a
 * literal segment (possibly empty, without '{' or '}') or a parameter
 * "{name}" (a non-empty name without braces). A path matches a template
 * when it starts with '/', has exactly as many segments and every literal
 * segment is equal byte for byte; a parameter matches one non-empty
 * segment. "/a/" does not match "/a", "/" matches only "/".
 *
 * Thread-safety: a compiled template is read-only after compilation; any
 * number of threads may match against it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define HTTP_MAX_SEGMENTS 16 /* per route template */
#define HTTP_MAX_PARAMS   8  /* {name} segments per template */

struct http_route_segment {
        const char *text; /* literal, or the parameter name */
        size_t len;
        bool param;
};

struct http_route_template {
        char *buf; /* the template split into segments, NUL-separated */
        struct http_route_segment segments[HTTP_MAX_SEGMENTS];
        size_t n_segments;
};

struct http_route_param {
        const char *name;  /* points into the template */
        const char *value; /* points into the caller's path_buf */
};

/* Compile template. Returns 0 and fills *ret (release it with
 * http_route_template_done()), -EINVAL for a template that does not start
 * with '/', has a brace outside "{name}", an empty "{}", more than
 * HTTP_MAX_SEGMENTS segments or HTTP_MAX_PARAMS parameters, or -ENOMEM.
 * *ret is written only on success. */
int http_route_template_compile(const char *template, struct http_route_template *ret);
/* Accepts a zeroed template. */
void http_route_template_done(struct http_route_template *t);

/* Does path match t? When it does and params is non-NULL, path_buf must be
 * a copy of path (strlen(path) + 1 bytes): the parameters' values are cut
 * out of it in place (a '/' after each becomes NUL), params[] gets one
 * entry per {name} in template order and *ret_n_params their number.
 * When it does not, nothing is written. */
bool http_route_template_match(const struct http_route_template *t, const char *path,
                               char *path_buf, struct http_route_param params[HTTP_MAX_PARAMS],
                               size_t *ret_n_params);

/* The token of an Authorization header value "Bearer <token>": the scheme
 * case-insensitively, one or more spaces or tabs, then a non-empty token
 * with no whitespace (isspace() in the C locale) up to the end. Returns a
 * pointer into authorization, or NULL (also for NULL). */
const char *http_bearer_token(const char *authorization);

/* Does a Content-Type header value name JSON? True for NULL (no header:
 * a JSON body is assumed) and for "application/json" in any case, with
 * optional spaces or tabs around it, followed by nothing or by parameters
 * (";charset=utf-8", not looked at); false for anything else, such as
 * "application/json5" or "application/json x". */
bool http_content_type_is_json(const char *content_type);
