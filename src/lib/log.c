/* Logging to the journal or to stderr as logfmt. The contracts are in
 * log.h.
 *
 * Everything is formatted on the stack into bounded buffers (no malloc),
 * and a stderr line goes out in one write(2), so lines from concurrent
 * threads never interleave. The settings (target, identifier, level) are
 * the module's only state; the level is atomic, the rest is written by
 * log_open() at start-up. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "log.h"
#include "trace.h"

static const char *const level_names[] = {
        [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",     [LOG_CRIT] = "crit",
        [LOG_ERR] = "error",   [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
};

const char *const log_level_choices[] = {
        "debug", "info", "notice", "warning", "err", "error", "crit", "alert", "emerg", NULL,
};

static atomic_int max_level = LOG_INFO;
static atomic_int target = LOG_TARGET_STDERR;
static char identifier[LOG_IDENTIFIER_MAX + 1];

/* True when JOURNAL_STREAM ("<dev>:<inode>", set by systemd for a service
 * whose stderr goes to the journal) names the file stderr is. */
static bool stderr_is_journal_stream(void)
{
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        char *end = NULL;
        struct stat st;

        if (!e || !isdigit((unsigned char)*e))
                return false;
        errno = 0;
        dev = strtoull(e, &end, 10);
        if (errno != 0 || *end != ':' || !isdigit((unsigned char)end[1]))
                return false;
        ino = strtoull(end + 1, &end, 10);
        if (errno != 0 || *end != '\0')
                return false;

        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_open(const char *ident)
{
        const char *forced = getenv("VIGIL_LOG_TARGET");
        int saved_errno = errno;
        enum log_target t;

        snprintf(identifier, sizeof(identifier), "%s",
                 ident && *ident ? ident : program_invocation_short_name);

        if (forced && strcmp(forced, "stderr") == 0)
                t = LOG_TARGET_STDERR;
        else if (forced && strcmp(forced, "journal") == 0)
                t = LOG_TARGET_JOURNAL;
        else
                t = stderr_is_journal_stream() ? LOG_TARGET_JOURNAL : LOG_TARGET_STDERR;
        atomic_store(&target, (int)t);
        errno = saved_errno;
}

enum log_target log_get_target(void)
{
        return (enum log_target)atomic_load_explicit(&target, memory_order_relaxed);
}

void log_set_max_level(int priority)
{
        if (priority < LOG_EMERG || priority > LOG_DEBUG)
                return;
        atomic_store_explicit(&max_level, priority, memory_order_relaxed);
}

int log_get_max_level(void)
{
        return atomic_load_explicit(&max_level, memory_order_relaxed);
}

int log_level_from_string(const char *s)
{
        if (!s)
                return -EINVAL;
        if (strcasecmp(s, "err") == 0)
                return LOG_ERR;
        for (size_t i = 0; i < ELEMENTSOF(level_names); i++)
                if (strcasecmp(s, level_names[i]) == 0)
                        return (int)i;
        return -EINVAL;
}

/* A field name both journald and logfmt take: [A-Za-z0-9_], not starting
 * with a digit or '_' (journald reserves those for trusted fields). */
static bool field_key_is_valid(const char *key)
{
        size_t n;

        if (!key || !*key || *key == '_' || isdigit((unsigned char)*key))
                return false;
        n = strlen(key);
        if (n > LOG_FIELD_KEY_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char)key[i]) && key[i] != '_')
                        return false;
        return true;
}

/* Cut s (of length n, NUL-terminated) before a trailing incomplete UTF-8
 * sequence, as left by a truncating vsnprintf(). */
static void utf8_trim_incomplete(char *s, size_t n)
{
        size_t lead = n, need;
        unsigned char c;

        while (lead > 0 && ((unsigned char)s[lead - 1] & 0xC0) == 0x80 && n - lead < 3)
                lead--;
        if (lead == 0)
                return;
        c = (unsigned char)s[lead - 1];
        if (c < 0xC0)
                return; /* ASCII or a stray continuation byte */
        need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (n - (lead - 1) < need)
                s[lead - 1] = '\0';
}

struct entry {
        int priority;
        int error;
        const char *message;
        const char *trace_id; /* NULL outside a span */
        const char *span_id;
        const struct log_field *fields;
        size_t n_fields;
};

/* ---- stderr: logfmt ---- */

struct line {
        char buf[LOG_LINE_MAX];
        size_t len;
        bool full;
};

/* Space always kept for a closing quote and the newline. */
#define LINE_RESERVE 2

static void line_append(struct line *l, const char *s, size_t n)
{
        if (l->full)
                return;
        if (l->len + n + LINE_RESERVE > sizeof(l->buf)) {
                l->full = true;
                return;
        }
        memcpy(l->buf + l->len, s, n);
        l->len += n;
}

static void line_append_str(struct line *l, const char *s)
{
        line_append(l, s, strlen(s));
}

static bool needs_quotes(const char *v)
{
        if (!*v)
                return true;
        for (const unsigned char *p = (const unsigned char *)v; *p; p++)
                if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
                        return true;
        return false;
}

/* Append v, quoted and escaped when needed (always when quote). A value
 * that does not fit is cut, its quotes still closed. */
static void line_append_value(struct line *l, const char *v, bool quote)
{
        quote = quote || needs_quotes(v);
        if (quote) {
                line_append(l, "\"", 1);
                if (l->full)
                        return; /* no opening quote, so no closing one */
        }
        for (const unsigned char *p = (const unsigned char *)v; *p && !l->full; p++) {
                char esc[5];

                switch (*p) {
                case '"':
                        line_append(l, "\\\"", 2);
                        break;
                case '\\':
                        line_append(l, "\\\\", 2);
                        break;
                case '\n':
                        line_append(l, "\\n", 2);
                        break;
                case '\r':
                        line_append(l, "\\r", 2);
                        break;
                case '\t':
                        line_append(l, "\\t", 2);
                        break;
                default:
                        if (*p < ' ' || *p == 0x7f) {
                                snprintf(esc, sizeof(esc), "\\x%02x", *p);
                                line_append(l, esc, 4);
                        } else
                                line_append(l, (const char *)p, 1);
                }
        }
        if (quote) {
                /* The reserve guarantees room for this quote. */
                l->buf[l->len++] = '"';
        }
}

static void line_append_pair(struct line *l, const char *key, const char *value, bool quote)
{
        if (l->full)
                return;
        line_append(l, " ", 1);
        line_append_str(l, key);
        line_append(l, "=", 1);
        if (!l->full)
                line_append_value(l, value, quote);
}

static void write_all(int fd, const char *buf, size_t n)
{
        while (n > 0) {
                ssize_t k = write(fd, buf, n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return; /* nowhere left to report it */
                buf += k;
                n -= (size_t)k;
        }
}

static void write_stderr(const struct entry *e)
{
        struct line l = {.len = 0};
        char number[16];

        line_append_str(&l, "level=");
        line_append_str(&l, level_names[e->priority]);
        line_append_pair(&l, "msg", e->message, true);
        if (e->trace_id) {
                line_append_pair(&l, "trace_id", e->trace_id, false);
                line_append_pair(&l, "span_id", e->span_id, false);
        }
        if (e->error != 0) {
                snprintf(number, sizeof(number), "%d", e->error);
                line_append_pair(&l, "errno", number, false);
        }
        for (size_t i = 0; i < e->n_fields && i < LOG_MAX_FIELDS; i++) {
                char key[LOG_FIELD_KEY_MAX + 1];
                size_t n;

                if (!field_key_is_valid(e->fields[i].key) || !e->fields[i].value)
                        continue;
                n = strlen(e->fields[i].key);
                for (size_t j = 0; j <= n; j++)
                        key[j] = (char)tolower((unsigned char)e->fields[i].key[j]);
                line_append_pair(&l, key, e->fields[i].value, false);
        }
        l.buf[l.len++] = '\n';

        write_all(STDERR_FILENO, l.buf, l.len);
}

/* ---- journal ---- */

/* Fixed fields: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, TRACE_ID, SPAN_ID,
 * ERRNO. */
#define JOURNAL_FIXED_FIELDS 6

static int send_journal(const struct entry *e)
{
        struct iovec iov[JOURNAL_FIXED_FIELDS + LOG_MAX_FIELDS];
        char message[sizeof("MESSAGE=") + LOG_MESSAGE_MAX];
        char priority[sizeof("PRIORITY=") + 4];
        char ident[sizeof("SYSLOG_IDENTIFIER=") + LOG_IDENTIFIER_MAX];
        char trace_id[sizeof("TRACE_ID=") + 2 * TRACE_ID_SIZE];
        char span_id[sizeof("SPAN_ID=") + 2 * SPAN_ID_SIZE];
        char error[sizeof("ERRNO=") + 12];
        char fields[LOG_FIELDS_BUFFER];
        size_t n = 0, used = 0;

#define ADD(buf, ...)                                                                              \
        do {                                                                                       \
                int _k = snprintf(buf, sizeof(buf), __VA_ARGS__);                                  \
                iov[n++] = (struct iovec){buf, (size_t)_k < sizeof(buf) ? (size_t)_k               \
                                                                        : sizeof(buf) - 1};        \
        } while (0)

        ADD(message, "MESSAGE=%s", e->message);
        ADD(priority, "PRIORITY=%d", e->priority);
        ADD(ident, "SYSLOG_IDENTIFIER=%s",
            *identifier ? identifier : program_invocation_short_name);
        if (e->trace_id) {
                ADD(trace_id, "TRACE_ID=%s", e->trace_id);
                ADD(span_id, "SPAN_ID=%s", e->span_id);
        }
        if (e->error != 0)
                ADD(error, "ERRNO=%d", e->error);
#undef ADD

        for (size_t i = 0; i < e->n_fields && i < LOG_MAX_FIELDS; i++) {
                const char *key = e->fields[i].key, *value = e->fields[i].value;
                size_t key_len, value_len;
                char *p;

                if (!field_key_is_valid(key) || !value)
                        continue;
                key_len = strlen(key);
                value_len = strnlen(value, LOG_FIELD_VALUE_MAX);
                if (used + key_len + 1 + value_len > sizeof(fields))
                        break;
                p = fields + used;
                for (size_t j = 0; j < key_len; j++)
                        p[j] = (char)toupper((unsigned char)key[j]);
                p[key_len] = '=';
                memcpy(p + key_len + 1, value, value_len);
                iov[n++] = (struct iovec){p, key_len + 1 + value_len};
                used += key_len + 1 + value_len;
        }

        return sd_journal_sendv(iov, (int)n);
}

int log_fields(int priority, int error, const struct log_field *fields, size_t n_fields,
               const char *format, ...)
{
        char message[LOG_MESSAGE_MAX];
        char trace_id[2 * TRACE_ID_SIZE + 1], span_id[2 * SPAN_ID_SIZE + 1];
        int saved_errno = errno;
        const struct trace_context *ctx;
        struct entry e;
        va_list ap;
        int k;

        error = error < 0 ? -error : error;
        priority &= LOG_PRIMASK;
        if (priority > log_get_max_level())
                return -error;

        /* %m: the given error, or else errno as the caller left it. */
        errno = error != 0 ? error : saved_errno;
        va_start(ap, format);
        k = vsnprintf(message, sizeof(message), format, ap);
        va_end(ap);
        if (k < 0)
                snprintf(message, sizeof(message), "(unformattable message)");
        else if ((size_t)k >= sizeof(message))
                utf8_trim_incomplete(message, sizeof(message) - 1);

        e = (struct entry){
                .priority = priority,
                .error = error,
                .message = message,
                .fields = fields,
                .n_fields = fields ? n_fields : 0,
        };

        ctx = span_context(trace_current());
        if (trace_context_is_valid(ctx)) {
                trace_format_trace_id(ctx, trace_id);
                trace_format_span_id(ctx, span_id);
                e.trace_id = trace_id;
                e.span_id = span_id;
        }

        /* Should the journal refuse the entry, stderr is the next best
         * place (under systemd it leads to the journal too). */
        if (log_get_target() != LOG_TARGET_JOURNAL || send_journal(&e) < 0)
                write_stderr(&e);

        errno = saved_errno;
        return -error;
}
