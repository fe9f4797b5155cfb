/* Configuration loading: libinih does the INI syntax, this file the table,
 * the layering (defaults, file, drop-ins, environment), value validation
 * and diagnostics. The contracts are in conf.h.
 *
 * libinih is driven through ini_parse_stream() with our own line reader
 * over an in-memory copy of the file. The reader counts lines (libinih's
 * handler gets no line number in Debian's build), refuses lines that would
 * not fit libinih's line buffer (it would split them silently), refuses NUL
 * bytes, and strips leading whitespace so that libinih's multi-line values
 * never apply: an indented "key = value" is an ordinary assignment, never a
 * continuation of the previous value. A key line for which libinih did not
 * call the handler was a syntax error, which is how every syntax error is
 * found, not only the first one that ini_parse_stream() returns. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <assert.h>
#include <unistd.h>

#include "conf.h"
#include "file.h"
#include "macro.h"

#define ENVIRONMENT_NAME "environment"
#define ENV_PREFIX       "VIGIL_"
#define ENV_NAME_MAX     256
/* Longest value quoted back in an error message. */
#define QUOTE_MAX 64

struct loader {
        const struct conf_key *table;
        size_t n_keys;
        void *config;
        struct conf_diagnostics *diag;
        size_t n_found_before; /* diag->n_found when this load started */
        int hard_error;        /* first error that is not a plain -EINVAL */
};

/* One INI text being parsed by libinih through read_line(). */
struct ini_reader {
        const char *file;
        const char *pos, *end;
        unsigned line;
        size_t max_line;
        const char *long_line_hint;
        bool expect_handler; /* the last line read was a key line */
        bool handler_called;
        unsigned last_error_line; /* last line with a syntax/reader error */
        conf_ini_handler_t handler;
        void *userdata;
        struct conf_diagnostics *diag;
        bool oom;
};

static void set_hard_error(struct loader *l, int r)
{
        assert(r < 0);
        if (l->hard_error == 0)
                l->hard_error = r;
}

static char *strdup_or_null(const char *s, bool *oom)
{
        char *d;

        if (!s)
                return NULL;
        d = strdup(s);
        if (!d)
                *oom = true;
        return d;
}

static void error_done(struct conf_error *e)
{
        free(e->file);
        free(e->section);
        free(e->key);
        free(e->message);
}

_printf_(6, 0) static int diagnostics_vadd(struct conf_diagnostics *diag, const char *file,
                                           unsigned line, const char *section, const char *key,
                                           const char *format, va_list ap)
{
        struct conf_error e = {0}, *errors;
        bool oom = false;

        assert(diag);
        diag->n_found++;
        if (diag->n_errors > CONF_MAX_ERRORS)
                return 0;

        if (diag->n_errors == CONF_MAX_ERRORS) {
                /* The last stored entry says that more were left out. */
                e.message = strdup("too many errors, further ones not reported");
                if (!e.message)
                        oom = true;
                file = NULL;
                line = 0;
        } else {
                if (vasprintf(&e.message, format, ap) < 0) {
                        e.message = NULL;
                        oom = true;
                }
                e.section = strdup_or_null(section && *section ? section : NULL, &oom);
                e.key = strdup_or_null(key && *key ? key : NULL, &oom);
        }
        e.file = strdup_or_null(file, &oom);
        e.line = line;

        if (!oom) {
                errors = reallocarray(diag->errors, diag->n_errors + 1, sizeof(*errors));
                if (errors) {
                        diag->errors = errors;
                        diag->errors[diag->n_errors++] = e;
                        return 0;
                }
        }
        error_done(&e);
        return -ENOMEM;
}

int conf_diagnostics_add(struct conf_diagnostics *diag, const char *file, unsigned line,
                         const char *section, const char *key, const char *format, ...)
{
        va_list ap;
        int r;

        va_start(ap, format);
        r = diagnostics_vadd(diag, file, line, section, key, format, ap);
        va_end(ap);
        return r;
}

/* Record one error of this load. section and key may be NULL (or "" for
 * none). */
_printf_(6, 7) static void record_error(struct loader *l, const char *file, unsigned line,
                                        const char *section, const char *key, const char *format,
                                        ...)
{
        va_list ap;
        int r;

        va_start(ap, format);
        r = diagnostics_vadd(l->diag, file, line, section, key, format, ap);
        va_end(ap);
        if (r < 0)
                set_hard_error(l, r);
}

/* The same for the INI reader. */
_printf_(3, 4) static void reader_error(struct ini_reader *ir, unsigned line, const char *format,
                                        ...)
{
        va_list ap;

        ir->last_error_line = line;
        va_start(ap, format);
        if (diagnostics_vadd(ir->diag, ir->file, line, NULL, NULL, format, ap) < 0)
                ir->oom = true;
        va_end(ap);
}

/* Describe value for an error message: quoted when short and printable,
 * so that a secret pasted into the wrong key is not echoed at length. */
static const char *quote_value(const char *value, char buf[static QUOTE_MAX + 3])
{
        size_t n = strlen(value);

        if (n > QUOTE_MAX)
                return "a value too long to show";
        for (size_t i = 0; i < n; i++)
                if (!isprint((unsigned char)value[i]))
                        return "a value with unprintable characters";
        snprintf(buf, QUOTE_MAX + 3, "\"%s\"", value);
        return buf;
}

static void *field_of(const struct conf_key *k, void *config)
{
        return (uint8_t *)config + k->offset;
}

static size_t string_max(const struct conf_key *k)
{
        return k->max > 0 ? (size_t)k->max : CONF_MAX_STRING_LEN;
}

static int parse_int(const char *value, int64_t *ret)
{
        char *end = NULL;
        long long v;

        /* strtoll() would accept leading whitespace and an empty string. */
        if (!*value || isspace((unsigned char)*value))
                return -EINVAL;
        errno = 0;
        v = strtoll(value, &end, 10);
        if (errno != 0 || !end || *end != '\0')
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse_double(const char *value, double *ret)
{
        char *end = NULL;
        double v;

        if (!*value || isspace((unsigned char)*value))
                return -EINVAL;
        errno = 0;
        v = strtod(value, &end);
        if (errno != 0 || !end || *end != '\0' || !isfinite(v))
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse_bool(const char *value, bool *ret)
{
        static const char *const yes[] = {"true", "yes", "on", "1"};
        static const char *const no[] = {"false", "no", "off", "0"};

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcasecmp(value, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
                if (strcasecmp(value, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

/* Put the reason in msg and return -EINVAL. */
static int _printf_(3, 4) refuse(char *msg, size_t msg_size, const char *format, ...)
{
        va_list ap;

        va_start(ap, format);
        vsnprintf(msg, msg_size, format, ap);
        va_end(ap);
        return -EINVAL;
}

static bool choice_is_valid(const struct conf_key *k, const char *value)
{
        for (const char *const *c = k->choices; c && *c; c++)
                if (strcasecmp(value, *c) == 0)
                        return true;
        return false;
}

/* "expected one of debug, info, …, got "loud"": every allowed value, so
 * the operator need not look them up. */
static int refuse_choice(const struct conf_key *k, const char *value, char *msg, size_t msg_size)
{
        char quoted[QUOTE_MAX + 3];
        size_t n;

        n = (size_t)snprintf(msg, msg_size, "expected one of");
        for (const char *const *c = k->choices; c && *c && n < msg_size; c++)
                n += (size_t)snprintf(msg + n, msg_size - n, "%s %s", c == k->choices ? "" : ",",
                                      *c);
        if (n < msg_size)
                snprintf(msg + n, msg_size - n, ", got %s", quote_value(value, quoted));
        return -EINVAL;
}

/* Parse value for k and store it in config. Returns 0, -ENOMEM, or
 * -EINVAL with a message in msg. */
static int apply_value(const struct conf_key *k, const char *value, void *config, char *msg,
                       size_t msg_size)
{
        char quoted[QUOTE_MAX + 3];
        int64_t i;
        double d;
        bool b;

        switch (k->type) {
        case CONF_TYPE_STRING: {
                char **field = field_of(k, config);
                size_t n = strlen(value);
                char *copy;

                if (n > string_max(k))
                        return refuse(msg, msg_size, "value too long (%zu bytes, at most %zu)", n,
                                      string_max(k));
                if (k->check && n > 0 && k->check(value, k->check_data, msg, msg_size) < 0)
                        return -EINVAL;
                copy = strdup(value);
                if (!copy)
                        return -ENOMEM;
                free(*field);
                *field = copy;
                return 0;
        }
        case CONF_TYPE_INT:
                if (parse_int(value, &i) < 0)
                        return refuse(msg, msg_size, "expected an integer, got %s",
                                      quote_value(value, quoted));
                if ((double)i < k->min || (double)i > k->max)
                        return refuse(msg, msg_size, "%" PRId64 " is out of range %.0f..%.0f", i,
                                      k->min, k->max);
                *(int64_t *)field_of(k, config) = i;
                return 0;
        case CONF_TYPE_DOUBLE:
                if (parse_double(value, &d) < 0)
                        return refuse(msg, msg_size, "expected a finite number, got %s",
                                      quote_value(value, quoted));
                if (d < k->min || d > k->max)
                        return refuse(msg, msg_size, "%g is out of range %g..%g", d, k->min,
                                      k->max);
                *(double *)field_of(k, config) = d;
                return 0;
        case CONF_TYPE_ENUM: {
                char **field = field_of(k, config);
                char *copy;

                if (!choice_is_valid(k, value))
                        return refuse_choice(k, value, msg, msg_size);
                copy = strdup(value);
                if (!copy)
                        return -ENOMEM;
                free(*field);
                *field = copy;
                return 0;
        }
        case CONF_TYPE_BOOL:
                if (parse_bool(value, &b) < 0)
                        return refuse(
                                msg, msg_size,
                                "expected a boolean (true/false, yes/no, on/off, 1/0), got %s",
                                quote_value(value, quoted));
                *(bool *)field_of(k, config) = b;
                return 0;
        }

        return refuse(msg, msg_size, "key has an unknown type");
}

/* Apply value from file:line (or the environment variable env) to k,
 * recording any error. */
static void assign(struct loader *l, const struct conf_key *k, const char *value, const char *file,
                   unsigned line, const char *env)
{
        char msg[256];
        int r;

        r = apply_value(k, value, l->config, msg, sizeof(msg));
        if (r == -ENOMEM) {
                set_hard_error(l, r);
                return;
        }
        if (r < 0) {
                if (env)
                        record_error(l, file, line, k->section, k->key, "%s (from $%s)", msg, env);
                else
                        record_error(l, file, line, k->section, k->key, "%s", msg);
        }
}

static void apply_defaults(struct loader *l)
{
        for (size_t i = 0; i < l->n_keys; i++) {
                const struct conf_key *k = &l->table[i];
                void *field = field_of(k, l->config);
                char msg[256];
                int r;

                switch (k->type) {
                case CONF_TYPE_STRING:
                case CONF_TYPE_ENUM:
                        *(char **)field = NULL;
                        break;
                case CONF_TYPE_INT:
                        *(int64_t *)field = 0;
                        break;
                case CONF_TYPE_DOUBLE:
                        *(double *)field = 0.0;
                        break;
                case CONF_TYPE_BOOL:
                        *(bool *)field = false;
                        break;
                }
                if (!k->default_value)
                        continue;

                r = apply_value(k, k->default_value, l->config, msg, sizeof(msg));
                if (r == -ENOMEM) {
                        set_hard_error(l, r);
                        continue;
                }
                /* A default that does not parse is a bug in the table. */
                assert(r == 0);
        }
}

static const struct conf_key *find_key(const struct loader *l, const char *section, const char *key,
                                       bool *ret_section_known)
{
        bool section_known = false;

        for (size_t i = 0; i < l->n_keys; i++) {
                if (strcmp(l->table[i].section, section) != 0)
                        continue;
                section_known = true;
                if (strcmp(l->table[i].key, key) == 0)
                        return &l->table[i];
        }
        *ret_section_known = section_known;
        return NULL;
}

/* One "key = value" of a file being loaded. */
static void handle_assignment(void *userdata, const char *file, unsigned line, const char *section,
                              const char *name, const char *value)
{
        struct loader *l = userdata;
        const struct conf_key *k;
        bool section_known;

        if (!*section) {
                record_error(l, file, line, NULL, name, "assignment outside of any [section]");
                return;
        }
        k = find_key(l, section, name, &section_known);
        if (!k) {
                record_error(l, file, line, section, name, "unknown %s",
                             section_known ? "key" : "section");
                return;
        }
        assign(l, k, value, file, line, NULL);
}

/* libinih's handler: passes the assignment on with its line. Always
 * succeeds: errors are recorded, and parsing goes on. */
static int call_handler(void *user, const char *section, const char *name, const char *value)
{
        struct ini_reader *ir = user;

        ir->handler_called = true;
        if (name && value)
                ir->handler(ir->userdata, ir->file, ir->line, section, name, value);
        return 1;
}

/* After libinih processed a key line, it must have called the handler. */
static void check_key_line(struct ini_reader *ir)
{
        if (ir->expect_handler && !ir->handler_called)
                reader_error(ir, ir->line, "expected \"key = value\" or \"[section]\"");
        ir->expect_handler = false;
        ir->handler_called = false;
}

/* Mirrors libinih's rule for a section header: a ']' before any inline
 * comment (a ';' after whitespace). */
static bool section_header_is_valid(const char *s)
{
        bool was_space = false;

        for (s++; *s; s++) {
                if (*s == ']')
                        return true;
                if (was_space && *s == ';')
                        return false;
                was_space = isspace((unsigned char)*s);
        }
        return false;
}

/* libinih's reader (fgets() semantics): the next line of the buffer, with
 * leading whitespace removed, in str of size num. A line that cannot be
 * handed over whole is recorded as an error and replaced by an empty one,
 * so line numbers stay right. */
static char *read_line(char *str, int num, void *stream)
{
        struct ini_reader *ir = stream;
        const char *start, *eol, *next;
        size_t len, max;

        check_key_line(ir);
        if (ir->pos >= ir->end || num < 3)
                return NULL;

        start = ir->pos;
        eol = memchr(start, '\n', (size_t)(ir->end - start));
        next = eol ? eol + 1 : ir->end;
        if (!eol)
                eol = ir->end;
        ir->pos = next;
        ir->line++;

        /* A UTF-8 byte order mark, as libinih would skip it. */
        if (ir->line == 1 && eol - start >= 3 && memcmp(start, "\xEF\xBB\xBF", 3) == 0)
                start += 3;
        while (start < eol && isspace((unsigned char)*start))
                start++;
        len = (size_t)(eol - start);
        if (len > 0 && start[len - 1] == '\r')
                len--;

        max = (size_t)num - 2 < ir->max_line ? (size_t)num - 2 : ir->max_line;
        if (memchr(start, '\0', len)) {
                reader_error(ir, ir->line, "line contains a NUL byte");
                len = 0;
        } else if (len > max) {
                reader_error(ir, ir->line, "line too long (%zu characters, at most %zu)%s", len,
                             max, ir->long_line_hint ? ir->long_line_hint : "");
                len = 0;
        }

        memcpy(str, start, len);
        str[len] = '\n';
        str[len + 1] = '\0';

        if (len == 0 || strchr(";#", str[0]))
                ; /* blank or comment */
        else if (str[0] == '[') {
                str[len] = '\0';
                if (!section_header_is_valid(str))
                        reader_error(ir, ir->line, "expected \"[section]\"");
                str[len] = '\n';
        } else
                ir->expect_handler = true;

        return str;
}

int conf_parse_ini(const char *name, const void *data, size_t size, size_t max_line,
                   const char *long_line_hint, conf_ini_handler_t handler, void *userdata,
                   struct conf_diagnostics *diag)
{
        struct ini_reader ir = {
                .file = name,
                .pos = data,
                .end = (const char *)data + size,
                .max_line = max_line,
                .long_line_hint = long_line_hint,
                .handler = handler,
                .userdata = userdata,
                .diag = diag,
        };
        int r;

        assert(name);
        assert(data || size == 0);
        assert(handler);
        assert(diag);

        if (size > CONF_MAX_FILE_SIZE)
                return conf_diagnostics_add(diag, name, 0, NULL, NULL,
                                            "file too large (%zu bytes, at most %u)", size,
                                            CONF_MAX_FILE_SIZE);
        if (size == 0)
                ir.pos = ir.end = "";

        r = ini_parse_stream(read_line, &ir, call_handler, &ir);
        check_key_line(&ir);
        if (r == -2)
                return -ENOMEM;
        if (r > 0 && (unsigned)r != ir.last_error_line) {
                /* Caught by libinih but not by the checks above. */
                bool seen = false;

                for (size_t i = 0; i < diag->n_errors; i++)
                        if (diag->errors[i].line == (unsigned)r && diag->errors[i].file &&
                            strcmp(diag->errors[i].file, name) == 0)
                                seen = true;
                if (!seen)
                        reader_error(&ir, (unsigned)r, "syntax error");
        }
        return ir.oom ? -ENOMEM : 0;
}

static void parse_buffer(struct loader *l, const char *file, const char *data, size_t size)
{
        int r;

        r = conf_parse_ini(file, data, size, CONF_MAX_LINE,
                           "; use the environment for longer values", handle_assignment, l,
                           l->diag);
        if (r < 0)
                set_hard_error(l, r);
}
/* Load one file. Returns -ENOENT without recording anything when it does
 * not exist; any other problem is recorded. */
static int load_file(struct loader *l, const char *path)
{
        _cleanup_free_ char *data = NULL;
        size_t size;
        int r;

        r = file_read_all(AT_FDCWD, path, 0, FILE_READ_DEVICES, CONF_MAX_FILE_SIZE, &data, &size);
        if (r == -ENOENT)
                return r;
        if (r == -EFBIG) {
                record_error(l, path, 0, NULL, NULL, "file too large (at most %u bytes)",
                             CONF_MAX_FILE_SIZE);
                return r;
        }
        if (r < 0) {
                record_error(l, path, 0, NULL, NULL, "%s", strerror(-r));
                set_hard_error(l, r);
                return r;
        }

        parse_buffer(l, path, data, size);
        return 0;
}

static int compare_strings(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_dropin_name(const char *name)
{
        size_t n = strlen(name);

        return name[0] != '.' && n > strlen(".conf") && strcmp(name + n - 5, ".conf") == 0;
}

/* Load path.d/ *.conf in strcmp() order. */
static void load_dropins(struct loader *l, const char *path)
{
        _cleanup_free_ char *dir_path = NULL;
        char *names[CONF_MAX_DROPINS];
        size_t n_names = 0;
        bool too_many = false;
        struct dirent *de;
        DIR *dir;

        if (asprintf(&dir_path, "%s.d", path) < 0) {
                dir_path = NULL;
                set_hard_error(l, -ENOMEM);
                return;
        }

        dir = opendir(dir_path);
        if (!dir) {
                int r = negative_errno();

                if (r == -ENOENT || r == -ENOTDIR)
                        return;
                record_error(l, dir_path, 0, NULL, NULL, "%s", strerror(-r));
                set_hard_error(l, r);
                return;
        }

        for (;;) {
                errno = 0;
                de = readdir(dir);
                if (!de) {
                        if (errno != 0) {
                                record_error(l, dir_path, 0, NULL, NULL, "%s", strerror(errno));
                                set_hard_error(l, -errno);
                        }
                        break;
                }
                if (!is_dropin_name(de->d_name))
                        continue;
                if (n_names == CONF_MAX_DROPINS) {
                        too_many = true;
                        continue;
                }
                names[n_names] = strdup(de->d_name);
                if (!names[n_names]) {
                        set_hard_error(l, -ENOMEM);
                        break;
                }
                n_names++;
        }
        closedir(dir);

        if (too_many)
                record_error(l, dir_path, 0, NULL, NULL,
                             "more than %d drop-ins, none of them loaded", CONF_MAX_DROPINS);
        else {
                qsort(names, n_names, sizeof(names[0]), compare_strings);
                for (size_t i = 0; i < n_names; i++) {
                        _cleanup_free_ char *file = NULL;

                        if (asprintf(&file, "%s/%s", dir_path, names[i]) < 0) {
                                file = NULL;
                                set_hard_error(l, -ENOMEM);
                                break;
                        }
                        (void)load_file(l, file); /* one that vanished is skipped */
                }
        }

        for (size_t i = 0; i < n_names; i++)
                free(names[i]);
}

/* VIGIL_<SECTION>_<KEY>, upper case, '-' and '.' as '_'. Returns false
 * when it does not fit. */
static bool env_name(const struct conf_key *k, char buf[static ENV_NAME_MAX])
{
        int n = snprintf(buf, ENV_NAME_MAX, ENV_PREFIX "%s_%s", k->section, k->key);

        if (n < 0 || n >= ENV_NAME_MAX)
                return false;
        for (char *p = buf; *p; p++) {
                if (*p == '-' || *p == '.')
                        *p = '_';
                else
                        *p = (char)toupper((unsigned char)*p);
        }
        return true;
}

static void load_environment(struct loader *l)
{
        for (size_t i = 0; i < l->n_keys; i++) {
                char name[ENV_NAME_MAX];
                const char *value;

                if (!env_name(&l->table[i], name))
                        continue;
                value = getenv(name);
                if (value)
                        assign(l, &l->table[i], value, ENVIRONMENT_NAME, 0, name);
        }
}

/* A loader of table's keys into config, the defaults applied, recording
 * problems in diag. */
static void loader_start(struct loader *l, const struct conf_key *table, size_t n_keys,
                         void *config, struct conf_diagnostics *diag)
{
        assert(table || n_keys == 0);
        assert(config);

        *l = (struct loader){
                .table = table,
                .n_keys = n_keys,
                .config = config,
                .diag = diag,
                .n_found_before = diag->n_found,
        };
        apply_defaults(l);
}

static int finish(struct loader *l, struct conf_diagnostics *own_diag)
{
        bool found = l->diag->n_found > l->n_found_before;

        if (own_diag)
                conf_diagnostics_done(own_diag);
        if (l->hard_error < 0)
                return l->hard_error;
        return found ? -EINVAL : 0;
}

int conf_load(const struct conf_key *table, size_t n_keys, const char *path, bool required,
              void *config, struct conf_diagnostics *diag)
{
        struct conf_diagnostics own_diag = {0};
        struct loader l;
        int r;

        loader_start(&l, table, n_keys, config, diag ? diag : &own_diag);
        if (path) {
                r = load_file(&l, path);
                if (r == -ENOENT && required)
                        set_hard_error(&l, r);
                load_dropins(&l, path);
        }
        load_environment(&l);

        return finish(&l, diag ? NULL : &own_diag);
}

int conf_load_buffer(const struct conf_key *table, size_t n_keys, const char *name,
                     const void *data, size_t size, void *config, struct conf_diagnostics *diag)
{
        struct conf_diagnostics own_diag = {0};
        struct loader l;

        assert(data || size == 0);
        loader_start(&l, table, n_keys, config, diag ? diag : &own_diag);
        parse_buffer(&l, name ? name : "(buffer)", size > 0 ? data : "", size);

        return finish(&l, diag ? NULL : &own_diag);
}

void conf_free(const struct conf_key *table, size_t n_keys, void *config)
{
        if (!config)
                return;
        for (size_t i = 0; i < n_keys; i++) {
                if (table[i].type != CONF_TYPE_STRING && table[i].type != CONF_TYPE_ENUM)
                        continue;
                char **field = field_of(&table[i], config);
                free(*field);
                *field = NULL;
        }
}

void conf_diagnostics_done(struct conf_diagnostics *diag)
{
        if (!diag)
                return;
        for (size_t i = 0; i < diag->n_errors; i++)
                error_done(&diag->errors[i]);
        free(diag->errors);
        diag->errors = NULL;
        diag->n_errors = 0;
        diag->n_found = 0;
}

char *conf_error_format(const struct conf_error *e)
{
        char *s = NULL, location[32] = "";

        if (!e)
                return NULL;
        if (e->line > 0)
                snprintf(location, sizeof(location), ":%u", e->line);
        if (asprintf(&s, "%s%s: %s%s%s%s%s%s", e->file ? e->file : "(unknown)", location,
                     e->section ? "[" : "", e->section ? e->section : "", e->section ? "] " : "",
                     e->key ? e->key : "", e->key ? ": " : "",
                     e->message ? e->message : "error") < 0)
                return NULL;
        return s;
}

/* Write text as "# " comment lines, one per line of text. */
static void write_comment(FILE *f, const char *text)
{
        while (*text) {
                size_t n = strcspn(text, "\n");

                fprintf(f, "# %.*s\n", (int)n, text);
                text += n;
                if (*text == '\n')
                        text++;
        }
}

int conf_write_defaults(const struct conf_key *table, size_t n_keys, FILE *f)
{
        assert(f);

        for (size_t i = 0; i < n_keys; i++) {
                const char *section = table[i].section;
                bool seen = false;

                for (size_t j = 0; j < i; j++)
                        if (strcmp(table[j].section, section) == 0)
                                seen = true;
                if (seen)
                        continue;

                fprintf(f, "%s[%s]\n", i > 0 ? "\n" : "", section);
                for (size_t j = i; j < n_keys; j++) {
                        const struct conf_key *k = &table[j];

                        if (strcmp(k->section, section) != 0)
                                continue;
                        if (k->help)
                                write_comment(f, k->help);
                        if (k->type == CONF_TYPE_INT)
                                fprintf(f, "# Range: %.0f..%.0f\n", k->min, k->max);
                        else if (k->type == CONF_TYPE_DOUBLE)
                                fprintf(f, "# Range: %g..%g\n", k->min, k->max);
                        if (k->default_value && *k->default_value)
                                fprintf(f, "#%s = %s\n", k->key, k->default_value);
                        else
                                fprintf(f, "#%s =\n", k->key);
                }
        }

        if (fflush(f) != 0 || ferror(f))
                return -EIO;
        return 0;
}

static bool credential_name_is_valid(const char *name)
{
        return name && *name && !strchr(name, '/') && strcmp(name, ".") != 0 &&
               strcmp(name, "..") != 0;
}

int conf_read_credential(const char *name, const char *fallback_path, size_t max_size, char **ret,
                         size_t *ret_len)
{
        const char *dir = getenv("CREDENTIALS_DIRECTORY");
        char *data = NULL;
        size_t size = 0, read_size;
        int r = -ENOENT;

        assert(ret);
        if (!credential_name_is_valid(name))
                return -EINVAL;

        if (dir && *dir) {
                _cleanup_close_ int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

                if (dir_fd < 0) {
                        r = negative_errno();
                        if (r != -ENOENT)
                                return r;
                } else
                        r = file_read_all(dir_fd, name, O_NOFOLLOW,
                                          FILE_READ_DEVICES | FILE_READ_WIPE, max_size, &data,
                                          &size);
                if (r == -ELOOP)
                        r = -EINVAL; /* a symlink where a credential should be */
                if (r < 0 && r != -ENOENT)
                        return r;
        }
        if (r == -ENOENT && fallback_path && *fallback_path)
                r = file_read_all(AT_FDCWD, fallback_path, 0, FILE_READ_DEVICES | FILE_READ_WIPE,
                                  max_size, &data, &size);
        if (r < 0)
                return r;

        read_size = size;
        while (size > 0 && data[size - 1] == '\n') {
                size--;
                if (size > 0 && data[size - 1] == '\r')
                        size--;
        }
        explicit_bzero(data + size, read_size - size);

        *ret = data;
        if (ret_len)
                *ret_len = size;
        return 0;
}

static bool host_char_is_valid(char c)
{
        return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

int conf_parse_listen(const char *s, char *ret_host, size_t host_size, uint16_t *ret_port)
{
        const char *host, *port;
        size_t host_len;
        uint64_t p = 0;

        if (!s || !ret_host || host_size == 0)
                return -EINVAL;

        if (s[0] == '[') {
                const char *close = strchr(s, ']');
                char v6[INET6_ADDRSTRLEN];
                struct in6_addr addr;

                if (!close || close[1] != ':')
                        return -EINVAL;
                host = s + 1;
                host_len = (size_t)(close - host);
                if (host_len == 0 || host_len >= sizeof(v6))
                        return -EINVAL;
                memcpy(v6, host, host_len);
                v6[host_len] = '\0';
                if (inet_pton(AF_INET6, v6, &addr) != 1)
                        return -EINVAL;
                port = close + 2;
        } else {
                const char *colon = strrchr(s, ':');

                if (!colon)
                        return -EINVAL;
                host = s;
                host_len = (size_t)(colon - s);
                for (size_t i = 0; i < host_len; i++)
                        if (!host_char_is_valid(host[i]))
                                return -EINVAL;
                port = colon + 1;
        }

        if (!*port || strlen(port) > 5)
                return -EINVAL;
        for (const char *c = port; *c; c++) {
                if (*c < '0' || *c > '9')
                        return -EINVAL;
                p = p * 10 + (uint64_t)(*c - '0');
        }
        if (p > UINT16_MAX)
                return -EINVAL;
        if (host_len >= host_size)
                return -EINVAL;

        memcpy(ret_host, host, host_len);
        ret_host[host_len] = '\0';
        *ret_port = (uint16_t)p;
        return 0;
}
