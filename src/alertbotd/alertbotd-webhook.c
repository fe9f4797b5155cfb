#include "alertbotd-webhook.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "json-util.h"

struct decode_error {
        const char *code;
        char *message;
};

static int fail(struct decode_error *e, int r, const char *code, const char *format, ...)
        _printf_(4, 5);

static int fail(struct decode_error *e, int r, const char *code, const char *format, ...)
{
        va_list ap;

        e->code = code;
        free(e->message);
        e->message = NULL;
        va_start(ap, format);
        if (vasprintf(&e->message, format, ap) < 0)
                e->message = NULL;
        va_end(ap);
        return r;
}

/* A JSON string value of 0..max_len bytes without NUL or control
 * characters (json_parse_object() has already checked UTF-8). */
static bool valid_text(struct json_object *v, size_t max_len)
{
        const char *s;
        size_t len;

        if (!json_object_is_type(v, json_type_string))
                return false;
        s = json_object_get_string(v);
        len = (size_t)json_object_get_string_len(v);
        if (len > max_len || strlen(s) != len)
                return false;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];

                if (c < 0x20 || c == 0x7f)
                        return false;
        }
        return true;
}

static bool valid_label_name(const char *s)
{
        size_t len = strlen(s);

        if (len == 0 || len > WEBHOOK_MAX_LABEL_NAME)
                return false;
        for (size_t i = 0; i < len; i++) {
                char c = s[i];
                bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';

                if (!alpha && (i == 0 || c < '0' || c > '9'))
                        return false;
        }
        return true;
}

/* RFC 3339 as Alertmanager writes it: "2024-05-01T12:00:00.123456789Z" or
 * with an offset. Checked for shape, not calendar validity. */
static bool valid_timestamp(const char *s)
{
        static const char shape[] = "dddd-dd-ddTdd:dd:dd";
        size_t i;

        for (i = 0; i < sizeof(shape) - 1; i++) {
                char want = shape[i], c = s[i];

                if (want == 'd' ? (c < '0' || c > '9') : c != want)
                        return false;
        }
        for (; s[i]; i++) {
                char c = s[i];

                if (!((c >= '0' && c <= '9') || c == '.' || c == 'Z' || c == '+' || c == '-' ||
                      c == ':'))
                        return false;
        }
        return true;
}

/* An optional text field (missing or null: ""). */
static int get_text(struct json_object *obj, const char *key, size_t max_len, bool required,
                    const char *what, char **ret, struct decode_error *e)
{
        struct json_object *v;
        char *s;

        if (!json_object_object_get_ex(obj, key, &v) || !v) {
                if (required)
                        return fail(e, -EINVAL, "missing_field", "%s: field \"%s\" is required",
                                    what, key);
                s = strdup("");
        } else {
                if (!valid_text(v, max_len))
                        return fail(e, -EINVAL, "invalid_field",
                                    "%s: field \"%s\" must be a string of at most %zu bytes "
                                    "without control characters",
                                    what, key, max_len);
                s = strdup(json_object_get_string(v));
        }
        if (!s)
                return fail(e, -ENOMEM, "internal", "Out of memory");
        *ret = s;
        return 0;
}

static int get_status(struct json_object *obj, const char *what, bool *ret, struct decode_error *e)
{
        struct json_object *v;
        const char *s;

        if (!json_object_object_get_ex(obj, "status", &v) || !v)
                return fail(e, -EINVAL, "missing_field", "%s: field \"status\" is required", what);
        s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
        if (strcmp(s, "firing") == 0)
                *ret = true;
        else if (strcmp(s, "resolved") == 0)
                *ret = false;
        else
                return fail(e, -EINVAL, "invalid_field",
                            "%s: \"status\" must be \"firing\" or \"resolved\"", what);
        return 0;
}

static void pairs_free(struct webhook_pair *p, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                free(p[i].name);
                free(p[i].value);
        }
        free(p);
}

static int get_pairs(struct json_object *obj, const char *key, size_t max_value, bool required,
                     const char *what, struct webhook_pair **ret, size_t *ret_n,
                     struct decode_error *e)
{
        struct json_object *map;
        struct webhook_pair *pairs;
        size_t n = 0, count;

        if (!json_object_object_get_ex(obj, key, &map) || !map) {
                if (required)
                        return fail(e, -EINVAL, "missing_field", "%s: field \"%s\" is required",
                                    what, key);
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        if (!json_object_is_type(map, json_type_object))
                return fail(e, -EINVAL, "invalid_field", "%s: \"%s\" must be an object", what, key);
        count = (size_t)json_object_object_length(map);
        if (count > WEBHOOK_MAX_LABELS)
                return fail(e, -E2BIG, "too_many_labels", "%s: more than %d %s", what,
                            WEBHOOK_MAX_LABELS, key);

        pairs = calloc(count ? count : 1, sizeof(*pairs));
        if (!pairs)
                return fail(e, -ENOMEM, "internal", "Out of memory");
        json_object_object_foreach(map, name, value)
        {
                if (n >= count)
                        break;
                if (!valid_label_name(name) || !valid_text(value, max_value)) {
                        pairs_free(pairs, n);
                        return fail(e, -EINVAL, "invalid_field",
                                    "%s: every %s entry needs a name of [a-zA-Z_][a-zA-Z0-9_]* "
                                    "(at most %d bytes) and a string value of at most %zu bytes",
                                    what, key, WEBHOOK_MAX_LABEL_NAME, max_value);
                }
                pairs[n].name = strdup(name);
                pairs[n].value = strdup(json_object_get_string(value));
                n++;
                if (!pairs[n - 1].name || !pairs[n - 1].value) {
                        pairs_free(pairs, n);
                        return fail(e, -ENOMEM, "internal", "Out of memory");
                }
        }
        *ret = pairs;
        *ret_n = n;
        return 0;
}

static void alert_done(struct webhook_alert *a)
{
        free(a->fingerprint);
        free(a->starts_at);
        free(a->ends_at);
        free(a->generator_url);
        pairs_free(a->labels, a->n_labels);
        pairs_free(a->annotations, a->n_annotations);
}

static int decode_alert(struct json_object *obj, size_t index, struct webhook_alert *a,
                        struct decode_error *e)
{
        char what[32];
        const char *fp;
        int r;

        snprintf(what, sizeof(what), "alerts[%zu]", index);
        if (!json_object_is_type(obj, json_type_object))
                return fail(e, -EINVAL, "invalid_field", "%s must be an object", what);

        r = get_status(obj, what, &a->firing, e);
        if (r < 0)
                return r;
        r = get_pairs(obj, "labels", WEBHOOK_MAX_LABEL_VALUE, true, what, &a->labels, &a->n_labels,
                      e);
        if (r < 0)
                return r;
        if (!webhook_alert_label(a, "alertname") || !*webhook_alert_label(a, "alertname"))
                return fail(e, -EINVAL, "missing_field", "%s: label \"alertname\" is required",
                            what);
        r = get_pairs(obj, "annotations", WEBHOOK_MAX_ANNOTATION, false, what, &a->annotations,
                      &a->n_annotations, e);
        if (r < 0)
                return r;

        r = get_text(obj, "fingerprint", WEBHOOK_MAX_FINGERPRINT, true, what, &a->fingerprint, e);
        if (r < 0)
                return r;
        fp = a->fingerprint;
        if (!*fp || strspn(fp, "0123456789abcdef") != strlen(fp))
                return fail(e, -EINVAL, "invalid_field",
                            "%s: \"fingerprint\" must be 1 to %d lower-case hex digits", what,
                            WEBHOOK_MAX_FINGERPRINT);

        r = get_text(obj, "startsAt", WEBHOOK_MAX_TIMESTAMP, true, what, &a->starts_at, e);
        if (r < 0)
                return r;
        if (!valid_timestamp(a->starts_at))
                return fail(e, -EINVAL, "invalid_field",
                            "%s: \"startsAt\" must be an RFC 3339 time", what);
        r = get_text(obj, "endsAt", WEBHOOK_MAX_TIMESTAMP, false, what, &a->ends_at, e);
        if (r < 0)
                return r;
        if (*a->ends_at && !valid_timestamp(a->ends_at))
                return fail(e, -EINVAL, "invalid_field", "%s: \"endsAt\" must be an RFC 3339 time",
                            what);
        return get_text(obj, "generatorURL", WEBHOOK_MAX_TEXT, false, what, &a->generator_url, e);
}

void webhook_free(struct webhook *w)
{
        if (!w)
                return;
        for (size_t i = 0; i < w->n_alerts; i++)
                alert_done(&w->alerts[i]);
        free(w->alerts);
        free(w->receiver);
        free(w->group_key);
        free(w->external_url);
        free(w);
}

static int decode(struct json_object *root, struct webhook *w, struct decode_error *e)
{
        struct json_object *version, *alerts;
        size_t n;
        int r;

        if (!json_object_object_get_ex(root, "version", &version) || !version)
                return fail(e, -EINVAL, "missing_field", "Field \"version\" is required");
        if (!json_object_is_type(version, json_type_string) ||
            strcmp(json_object_get_string(version), "4") != 0)
                return fail(e, -EPROTONOSUPPORT, "unsupported_version",
                            "Only version \"4\" of Alertmanager's webhook payload is supported");

        r = get_status(root, "payload", &w->firing, e);
        if (r < 0)
                return r;
        r = get_text(root, "receiver", WEBHOOK_MAX_TEXT, false, "payload", &w->receiver, e);
        if (r >= 0)
                r = get_text(root, "groupKey", WEBHOOK_MAX_TEXT, false, "payload", &w->group_key,
                             e);
        if (r >= 0)
                r = get_text(root, "externalURL", WEBHOOK_MAX_TEXT, false, "payload",
                             &w->external_url, e);
        if (r < 0)
                return r;

        if (!json_object_object_get_ex(root, "alerts", &alerts) || !alerts)
                return fail(e, -EINVAL, "missing_field", "Field \"alerts\" is required");
        if (!json_object_is_type(alerts, json_type_array))
                return fail(e, -EINVAL, "invalid_field", "Field \"alerts\" must be an array");
        n = json_object_array_length(alerts);
        if (n > WEBHOOK_MAX_ALERTS)
                return fail(e, -E2BIG, "too_many_alerts", "More than %d alerts in one payload",
                            WEBHOOK_MAX_ALERTS);

        w->alerts = calloc(n ? n : 1, sizeof(*w->alerts));
        if (!w->alerts)
                return fail(e, -ENOMEM, "internal", "Out of memory");
        for (size_t i = 0; i < n; i++) {
                w->n_alerts = i + 1; /* so that webhook_free() frees a partial alert */
                r = decode_alert(json_object_array_get_idx(alerts, i), i, &w->alerts[i], e);
                if (r < 0)
                        return r;
        }
        return 0;
}

int webhook_decode(const char *body, size_t len, struct webhook **ret, const char **ret_error_code,
                   char **ret_message)
{
        _cleanup_(json_object_putp) struct json_object *root = NULL;
        _cleanup_(webhook_freep) struct webhook *w = NULL;
        struct decode_error e = {0};
        const char *code;
        int r;

        assert(ret);
        assert(ret_error_code);

        r = json_parse_object(body, len, WEBHOOK_MAX_DEPTH, &root, &code);
        if (r < 0) {
                fail(&e, r, code, "The body is not a JSON object (%s)", code);
                goto error;
        }

        w = calloc(1, sizeof(*w));
        if (!w) {
                r = fail(&e, -ENOMEM, "internal", "Out of memory");
                goto error;
        }
        r = decode(root, w, &e);
        if (r < 0)
                goto error;

        *ret = TAKE_PTR(w);
        return 0;

error:
        *ret_error_code = e.code;
        if (ret_message)
                *ret_message = e.message;
        else
                free(e.message);
        return r;
}

static const char *pair_lookup(const struct webhook_pair *p, size_t n, const char *name)
{
        for (size_t i = 0; i < n; i++)
                if (strcmp(p[i].name, name) == 0)
                        return p[i].value;
        return NULL;
}

const char *webhook_alert_label(const struct webhook_alert *a, const char *name)
{
        return pair_lookup(a->labels, a->n_labels, name);
}

const char *webhook_alert_annotation(const struct webhook_alert *a, const char *name)
{
        return pair_lookup(a->annotations, a->n_annotations, name);
}
