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
#include <stdio.h>

#include "macro.h"

enum conf_type {
        CONF_TYPE_STRING, /* char *, max length in .max (0: 4096) */
        CONF_TYPE_INT,    /* int64_t within [.min, .max] */
        CONF_TYPE_DOUBLE, /* double within [.min, .max] */
        CONF_TYPE_BOOL,   /* bool: true/false/yes/no/on/off/1/0 */
        CONF_TYPE_ENUM,   /* char *: one of .choices (any case), stored as written */
};

struct conf_key {
        const char *section;
        const char *key;
        enum conf_type type;
        const char *default_value; /* text, parsed like a value from a file */
        double min, max;
        size_t offset; /* of the field in the daemon's config struct */
        const char *help;
        /* CONF_TYPE_STRING only, may be NULL: returns 0 when value (not
         * empty) is acceptable, else -EINVAL with a message in msg (size
         * bytes). check_data is passed along. */
        int (*check)(const char *value, const void *check_data, char *msg, size_t size);
        const void *check_data;
        const char *const *choices; /* CONF_TYPE_ENUM: the allowed values, NULL-terminated */
};

#define CONF_STRING(sect, name, def, maxlen, struct_type, field, text)                             \
        {                                                                                          \
                .section = sect, .key = name, .type = CONF_TYPE_STRING, .default_value = def,      \
                .max = maxlen, .offset = offsetof(struct_type, field), .help = text                \
        }
/* A string that check(value, data, …) must accept, when not empty. */
#define CONF_STRING_CHECKED(sect, name, def, maxlen, struct_type, field, text, check_fn, data)     \
        {                                                                                          \
                .section = sect, .key = name, .type = CONF_TYPE_STRING, .default_value = def,      \
                .max = maxlen, .offset = offsetof(struct_type, field), .help = text,               \
                .check = check_fn, .check_data = data                                              \
        }
#define CONF_INT(sect, name, def, lo, hi, struct_type, field, text)                                \
        {                                                                                          \
                .section = sect, .key = name, .type = CONF_TYPE_INT, .default_value = def,         \
                .min = lo, .max = hi, .offset = offsetof(struct_type, field), .help = text         \
        }
#define CONF_DOUBLE(sect, name, def, lo, hi, struct_type, field, text)                             \
        {                                                                                          \
                .section = sect, .key = name, .type = CONF_TYPE_DOUBLE, .default_value = def,      \
                .min = lo, .max = hi, .offset = offsetof(struct_type, field), .help = text         \
        }
#define CONF_BOOL(sect, name, def, struct_type, field, text)                                       \
        {                                                                                          \
                .section = sect, .key = name, .type = CONF_TYPE_BOOL, .default_value = def,        \
                .max = 1, .offset = offsetof(struct_type, field), .help = text                     \
        }
/* values: a NULL-terminated array of the allowed values. */
#define CONF_ENUM(sect, name, def, values, struct_type, field, text)                               \
        {                                                                                          \
                .section = sect, .key = name, .type = CONF_TYPE_ENUM, .default_value = def,        \
                .offset = offsetof(struct_type, field), .help = text, .choices = values            \
        }

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
        size_t n_errors; /* stored: at most CONF_MAX_ERRORS + 1 */
        size_t n_found;  /* recorded, stored or not */
};

/* Limits on what one load reads. A longer line is an error (libinih would
 * otherwise split it silently); more errors than CONF_MAX_ERRORS are
 * summarised in one last entry. */
#define CONF_MAX_FILE_SIZE  (1024U * 1024U) /* bytes per file */
#define CONF_MAX_LINE       197             /* characters per line, newline excluded */
#define CONF_MAX_DROPINS    128             /* files in <path>.d/ */
#define CONF_MAX_ERRORS     100
#define CONF_MAX_STRING_LEN 4096 /* a CONF_TYPE_STRING with max 0 */

/* Load defaults, then path (when it exists, or always when required is
 * true), then path.d/ drop-ins, then the environment, into config (a struct
 * described by table). Unknown sections or keys, unparsable values and
 * values out of range are errors. Returns 0, or -EINVAL after recording
 * every error in diag (which the caller frees with conf_diagnostics_done),
 * or another negative errno (e.g. -ENOENT for a required missing file).
 * On error config holds a partially loaded state: free it with conf_free().
 *
 * Details: every table field of config is initialised (its previous
 * contents are not freed: pass a zeroed struct or one conf_free()d). A
 * NULL default leaves a string NULL and a number 0/false. Loading goes on
 * after an error so that diag lists every problem; errors are appended to
 * diag, which may be NULL. A required missing file gives -ENOENT and no
 * entry in diag (the caller names the file); the drop-ins and environment
 * are still applied. A drop-in directory that does not exist is no error.
 * An I/O error (e.g. -EACCES) is recorded in diag and returned. Within a
 * file a later assignment wins. Values are taken literally: no quotes are
 * removed; "key = value ; comment" drops the comment (libinih's inline
 * comments need whitespace before the ';'). path may be NULL: defaults and
 * environment only. The environment is read with getenv() for the names
 * VIGIL_<SECTION>_<KEY> of the table only. */
int conf_load(const struct conf_key *table, size_t n_keys, const char *path, bool required,
              void *config, struct conf_diagnostics *diag);
/* Like conf_load() with the contents of one file in memory: defaults, then
 * data (size bytes, need not be NUL-terminated; errors name it as file
 * name), without drop-ins or environment. For fuzzing and tests. */
int conf_load_buffer(const struct conf_key *table, size_t n_keys, const char *name,
                     const void *data, size_t size, void *config, struct conf_diagnostics *diag);
/* Free the strings of a loaded config (not config itself). */
void conf_free(const struct conf_key *table, size_t n_keys, void *config);
void conf_diagnostics_done(struct conf_diagnostics *diag);
/* Record one error in diag: file (NULL: none), line (0: none), section
 * and key (NULL or "" for none) and a printf-style message. After
 * CONF_MAX_ERRORS stored entries one last entry says that more were left
 * out; later ones are only counted (n_found). Returns 0 or -ENOMEM. */
int conf_diagnostics_add(struct conf_diagnostics *diag, const char *file, unsigned line,
                         const char *section, const char *key, const char *format, ...)
        _printf_(6, 7);

/* Called for each "key = value" of an INI text, with the text's name and
 * the line it is on. Problems it finds it records itself. */
typedef void (*conf_ini_handler_t)(void *userdata, const char *file, unsigned line,
                                   const char *section, const char *key, const char *value);

/* Parse INI text (size bytes, need not be NUL-terminated) with libinih as
 * conf_load() reads every file, calling handler for each assignment, and
 * record every syntax error in diag with name and line: lines longer than
 * max_line characters (long_line_hint, e.g. "; use …", is appended to that
 * message; NULL: nothing), NUL bytes, lines that are neither a comment, a
 * [section] nor key = value. Leading whitespace is dropped, so there are
 * no continuation lines. Parsing always goes on to the end: compare
 * diag->n_found before and after to know whether anything was wrong.
 * Returns 0 or -ENOMEM. */
int conf_parse_ini(const char *name, const void *data, size_t size, size_t max_line,
                   const char *long_line_hint, conf_ini_handler_t handler, void *userdata,
                   struct conf_diagnostics *diag);

/* Format one error as "file:line: [section] key: message" into a malloc()ed
 * string ("file: message" when line is 0, section or key parts left out
 * when NULL). Returns NULL on allocation failure. */
char *conf_error_format(const struct conf_error *e);

/* Write a sample configuration for table to f: a [section] header for each
 * section (in the order of first appearance), then for each of its keys
 * its help (and range, for numbers) as "# " comments and the key at its
 * default, commented out: "#key = default". Returns 0, or -EIO when
 * writing to f failed. */
int conf_write_defaults(const struct conf_key *table, size_t n_keys, FILE *f);

/* Read a secret: $CREDENTIALS_DIRECTORY/<name> when it exists, else
 * fallback_path (a *_file config key; NULL or "" for none). Trailing
 * newlines are stripped. Returns 0 and a malloc()ed NUL-terminated *ret,
 * -ENOENT when neither exists, -EFBIG when larger than max_size. The secret
 * is never logged. ret_len may be NULL. name must be a plain file name
 * (-EINVAL otherwise); the credential is opened with O_NOFOLLOW and must
 * be a regular file (-EINVAL), as must the fallback (which may be a
 * symlink). Buffers that held the secret are wiped before being freed. */
int conf_read_credential(const char *name, const char *fallback_path, size_t max_size, char **ret,
                         size_t *ret_len);

/* Parse "host:port", "[v6]:port" or ":port". Returns 0 or -EINVAL. host is
 * written NUL-terminated into ret_host (size host_size): a host name or
 * IPv4 address (letters, digits, '-', '.', '_'), an IPv6 address without
 * its brackets, or "" for ":port" (any address). port is decimal,
 * 0..65535 (0: any free port). A host that does not fit in host_size is
 * -EINVAL. */
int conf_parse_listen(const char *s, char *ret_host, size_t host_size, uint16_t *ret_port);
