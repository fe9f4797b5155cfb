/* Logging: journald-native structured entries when stderr is connected to
 * the journal (JOURNAL_STREAM matches stderr), one logfmt line per event on
 * stderr otherwise. Every entry logged while a span is current on the
 * calling thread carries TRACE_ID and SPAN_ID.
 *
 * Thread-safety: all functions may be called from any thread; log_open()
 * and log_set_max_level() are meant for start-up and reload. */
#pragma once

#include <stddef.h>
#include <syslog.h>

#include "macro.h"

/* Limits: a message is cut at LOG_MESSAGE_MAX - 1 bytes (at a UTF-8
 * character boundary), a stderr line at LOG_LINE_MAX bytes (values cut,
 * quotes kept balanced); at most LOG_MAX_FIELDS caller fields are used, a
 * journal field value is cut at LOG_FIELD_VALUE_MAX bytes and all caller
 * fields of one journal entry share LOG_FIELDS_BUFFER bytes. */
#define LOG_MESSAGE_MAX     4096
#define LOG_LINE_MAX        8192
#define LOG_MAX_FIELDS      32
#define LOG_FIELD_KEY_MAX   64
#define LOG_FIELD_VALUE_MAX 1024
#define LOG_FIELDS_BUFFER   8192
#define LOG_IDENTIFIER_MAX  64

enum log_target {
        LOG_TARGET_STDERR,  /* logfmt lines */
        LOG_TARGET_JOURNAL, /* sd_journal_sendv(), stderr if it fails (it does not
                             * when journald is not running: entries are lost) */
};

/* A field's key must be [A-Za-z0-9_]+, at most LOG_FIELD_KEY_MAX long, and
 * start with a letter; other fields (and NULL values) are left out. On
 * stderr it is written lower-cased ("http_route=/login"). */
struct log_field {
        const char *key; /* upper-case journald field name, e.g. "HTTP_ROUTE" */
        const char *value;
};

/* identifier becomes SYSLOG_IDENTIFIER ("vigil-authd"; NULL: the program
 * name). Decides journal or stderr from JOURNAL_STREAM; VIGIL_LOG_TARGET=
 * stderr|journal forces it. Before log_open() logging goes to stderr. May
 * be called again (e.g. in tests) to decide anew. */
void log_open(const char *identifier);
enum log_target log_get_target(void);
/* Entries less important than priority (numerically greater) are dropped;
 * LOG_INFO until set. Values outside LOG_EMERG..LOG_DEBUG are ignored. */
void log_set_max_level(int priority);
int log_get_max_level(void);
/* "debug", "info", "notice", "warning", "err"/"error", "crit", "alert",
 * "emerg" (any case) → LOG_* priority, or -EINVAL (also for NULL). */
int log_level_from_string(const char *s);
/* The names log_level_from_string() takes, NULL-terminated: the choices of
 * a [log] level key. */
extern const char *const log_level_choices[];

/* Log one entry. error, when non-zero, is an errno (sign ignored) that %m
 * expands to and that is added as ERRNO= (errno= on stderr); with error 0,
 * %m expands to errno. Returns -abs(error), so callers can write
 * `return log_error_errno(r, "…");`. Fields are added to the entry as
 * given; values are escaped for logfmt on stderr. errno is preserved.
 *
 * On stderr: `level=info msg="…" trace_id=… span_id=… errno=N key=value…`
 * in one write(2); a value is quoted when empty or holding a space, '"',
 * '=', '\' or a control character, and inside quotes '"', '\', newlines
 * and control characters are escaped, so one entry is always one line. */
int log_fields(int priority, int error, const struct log_field *fields, size_t n_fields,
               const char *format, ...) _printf_(5, 6);

#define log_full_errno(prio, error, ...) log_fields((prio), (error), NULL, 0, __VA_ARGS__)
/* Whether debug entries are wanted: one relaxed atomic load. */
#define log_debug_enabled() (log_get_max_level() >= LOG_DEBUG)
/* Debug entries cost nothing when the level is above debug: the arguments
 * are not even evaluated. A statement, not an expression. */
#define log_debug(...)                                                                             \
        do {                                                                                       \
                if (log_debug_enabled())                                                           \
                        log_full_errno(LOG_DEBUG, 0, __VA_ARGS__);                                 \
        } while (0)
#define log_info(...)                 log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...)               log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...)              log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...)                log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define log_warning_errno(error, ...) log_full_errno(LOG_WARNING, (error), __VA_ARGS__)
#define log_error_errno(error, ...)   log_full_errno(LOG_ERR, (error), __VA_ARGS__)
