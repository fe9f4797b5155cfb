/* Configuration: one INI file (parsed by libinih) plus drop-ins in
 * <file>.d/ (*.conf) applied in lexical order (later wins), plus environment
 * overrides VIGIL_<SECTION>_<KEY>, all validated against one declarative
 * table per daemon (section, key, type, range, default).
 *
 * Thread-safety: conf_load() touches only its arguments; it is safe from
 * any thread. Daemons swap a freshly loaded config in on SIGHUP. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum conf_type {
        CONF_TYPE_STRING, /* char *, max length in .max (0: 4096) */
        CONF_TYPE_INT,    /* int64_t within [.min, .max] */
        CONF_TYPE_DOUBLE, /* double within [.min, .max] */
        CONF_TYPE_BOOL,   /* bool: true/false/yes/no/on/off/1/0 */
};

struct conf_key {
        const char *section;
        const char *key;
        enum conf_type type;
        const char *default_value; /* text, parsed like a value from a file */
        double min, max;
        size_t offset; /* of the field in the daemon's config struct */
        const char *help;
};

#define CONF_STRING(sect, name, def, maxlen, type, field, text)                                   \
        { sect, name, CONF_TYPE_STRING, def, 0, maxlen, offsetof(type, field), text }
#define CONF_INT(sect, name, def, lo, hi, type, field, text)                                      \
        { sect, name, CONF_TYPE_INT, def, lo, hi, offsetof(type, field), text }
#define CONF_DOUBLE(sect, name, def, lo, hi, type, field, text)                                   \
        { sect, name, CONF_TYPE_DOUBLE, def, lo, hi, offsetof(type, field), text }
#define CONF_BOOL(sect, name, def, type, field, text)                                             \
        { sect, name, CONF_TYPE_BOOL, def, 0, 1, offsetof(type, field), text }

/* One problem found while loading, e.g.
 * "/etc/vigil/authd.conf:12: [http] listen: expected host:port". For an
 * environment override, file is "environment" and line 0. */
struct conf_error {
        char *file;
        unsigned line;
        char *section;
        char *key;
        char *message;
};

struct conf_diagnostics {
        struct conf_error *errors;
        size_t n_errors;
};

/* Load defaults, then path (when it exists, or always when required is
 * true), then path.d/ drop-ins, then the environment, into config (a struct
 * described by table). Unknown sections or keys, unparsable values and
 * values out of range are errors. Returns 0, or -EINVAL after recording
 * every error in diag (which the caller frees with conf_diagnostics_done),
 * or another negative errno (e.g. -ENOENT for a required missing file).
 * On error config holds a partially loaded state: free it with conf_free(). */
int conf_load(const struct conf_key *table, size_t n_keys, const char *path, bool required,
              void *config, struct conf_diagnostics *diag);
/* Free the strings of a loaded config (not config itself). */
void conf_free(const struct conf_key *table, size_t n_keys, void *config);
void conf_diagnostics_done(struct conf_diagnostics *diag);
/* Format one error as "file:line: [section] key: message" into a malloc()ed
 * string. */
char *conf_error_format(const struct conf_error *e);

/* Read a secret: $CREDENTIALS_DIRECTORY/<name> when it exists, else
 * fallback_path (a *_file config key; NULL or "" for none). Trailing
 * newlines are stripped. Returns 0 and a malloc()ed NUL-terminated *ret,
 * -ENOENT when neither exists, -EFBIG when larger than max_size. The secret
 * is never logged. */
int conf_read_credential(const char *name, const char *fallback_path, size_t max_size,
                         char **ret, size_t *ret_len);

/* Parse "host:port", "[v6]:port" or ":port". Returns 0 or -EINVAL. host is
 * written NUL-terminated into ret_host (size host_size). */
int conf_parse_listen(const char *s, char *ret_host, size_t host_size, uint16_t *ret_port);
