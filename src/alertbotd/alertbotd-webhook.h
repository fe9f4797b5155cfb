/* Decoding of Alertmanager's webhook payload (version "4"), the one input
 * of vigil-alertbotd that comes from the network. Every size is bounded;
 * anything malformed is refused with a stable error code, so the route can
 * answer 400 and Alertmanager does not retry a payload that can never
 * succeed.
 *
 * Thread-safety: stateless; safe from any thread. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "macro.h"

#define WEBHOOK_MAX_BODY        (1024U * 1024U) /* bytes (http-server max_body) */
#define WEBHOOK_MAX_ALERTS      1000
#define WEBHOOK_MAX_LABELS      64   /* labels (and annotations) per alert */
#define WEBHOOK_MAX_LABEL_NAME  128  /* bytes */
#define WEBHOOK_MAX_LABEL_VALUE 1024 /* bytes */
#define WEBHOOK_MAX_ANNOTATION  4096 /* bytes of an annotation value */
#define WEBHOOK_MAX_FINGERPRINT 64   /* bytes, [0-9a-f] */
#define WEBHOOK_MAX_TIMESTAMP   64   /* bytes of an RFC 3339 time */
#define WEBHOOK_MAX_TEXT        4096 /* receiver, groupKey, externalURL, generatorURL */
#define WEBHOOK_MAX_DEPTH       6

struct webhook_pair {
        char *name;
        char *value;
};

struct webhook_alert {
        bool firing;       /* status "firing" (else "resolved") */
        char *fingerprint; /* Alertmanager's label-set hash: [0-9a-f]{1,64} */
        char *starts_at;   /* RFC 3339, as sent */
        char *ends_at;     /* RFC 3339 or "" */
        char *generator_url;
        struct webhook_pair *labels;
        size_t n_labels;
        struct webhook_pair *annotations;
        size_t n_annotations;
};

struct webhook {
        bool firing; /* the group's status */
        char *receiver;
        char *group_key;
        char *external_url;
        struct webhook_alert *alerts;
        size_t n_alerts;
};

/* Decode body (len bytes, need not be NUL-terminated). Returns 0 and a new
 * *ret (free with webhook_free), or a negative errno with *ret_error_code
 * (a stable API code: invalid_json, invalid_utf8, too_deep, not_an_object,
 * unsupported_version, missing_field, invalid_field, too_many_alerts,
 * too_many_labels, internal) and a malloc()ed human message in
 * *ret_message (may be NULL on OOM; ret_message may be NULL):
 *   -EBADMSG etc. from json_parse_object() for bad JSON,
 *   -EPROTONOSUPPORT for a version other than "4",
 *   -EINVAL for a missing or malformed field,
 *   -E2BIG past WEBHOOK_MAX_ALERTS or WEBHOOK_MAX_LABELS,
 *   -ENOMEM.
 * Required: version "4", status and alerts[]; per alert status
 * ("firing"|"resolved"), labels (with alertname), startsAt and fingerprint.
 * Unknown fields are ignored (Alertmanager adds some over time).
 * Label names must match [a-zA-Z_][a-zA-Z0-9_]*; strings must be valid
 * UTF-8 without control characters. */
int webhook_decode(const char *body, size_t len, struct webhook **ret, const char **ret_error_code,
                   char **ret_message);
void webhook_free(struct webhook *w);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct webhook *, webhook_free)

/* The value of label name of a, or NULL. */
const char *webhook_alert_label(const struct webhook_alert *a, const char *name);
/* The value of annotation name of a, or NULL. */
const char *webhook_alert_annotation(const struct webhook_alert *a, const char *name);
