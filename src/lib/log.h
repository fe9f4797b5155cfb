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

struct log_field {
        const char *key;   /* upper-case journald field name, e.g. "HTTP_ROUTE" */
        const char *value;
};

/* identifier becomes SYSLOG_IDENTIFIER ("vigil-authd"). Decides journal or
 * stderr from JOURNAL_STREAM; VIGIL_LOG_TARGET=stderr|journal forces it. */
void log_open(const char *identifier);
void log_set_max_level(int priority);
int log_get_max_level(void);
/* "debug", "info", "notice", "warning", "err"/"error", "crit", "alert",
 * "emerg" → LOG_* priority, or -EINVAL. */
int log_level_from_string(const char *s);

/* Log one entry. error, when non-zero, is an errno (sign ignored) that %m
 * expands to and that is added as ERRNO=. Returns -abs(error), so callers
 * can write `return log_error_errno(r, "…");`. Fields are added to the
 * entry as given; values are escaped for logfmt on stderr. */
int log_fields(int priority, int error, const struct log_field *fields, size_t n_fields,
               const char *format, ...) _printf_(5, 6);

#define log_full_errno(prio, error, ...) log_fields((prio), (error), NULL, 0, __VA_ARGS__)
#define log_debug(...) log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define log_warning_errno(error, ...) log_full_errno(LOG_WARNING, (error), __VA_ARGS__)
#define log_error_errno(error, ...) log_full_errno(LOG_ERR, (error), __VA_ARGS__)
