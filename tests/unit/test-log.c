/* Tests for log.c: the logfmt line on stderr (format, escaping, one line per
 * entry, truncation, atomic lines from threads), level filtering, %m and
 * the returned error, fields, the journal/stderr decision, and the trace
 * and span ids of the current span. Each test runs in its own process with
 * stderr sent to a temporary file. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "trace.h"

static int saved_stderr = -1;
static int capture_fd = -1;

/* Send stderr to a fresh temporary file (O_APPEND, as journald's or a
 * shell's redirection would be for concurrent writers). */
static void capture_start(void)
{
        char path[] = "/tmp/test-log-XXXXXX";

        capture_fd = mkostemp(path, O_APPEND | O_CLOEXEC);
        ck_assert_int_ge(capture_fd, 0);
        unlink(path);
        saved_stderr = dup(STDERR_FILENO);
        ck_assert_int_ge(saved_stderr, 0);
        ck_assert_int_eq(dup2(capture_fd, STDERR_FILENO), STDERR_FILENO);
}

/* Everything written to stderr since capture_start(), malloc()ed. */
static char *captured(void)
{
        struct stat st;
        char *buf;
        ssize_t n;

        ck_assert_int_eq(fstat(capture_fd, &st), 0);
        buf = calloc(1, (size_t)st.st_size + 1);
        ck_assert_ptr_nonnull(buf);
        n = pread(capture_fd, buf, (size_t)st.st_size, 0);
        ck_assert_int_eq(n, st.st_size);
        return buf;
}

static void setup(void)
{
        unsetenv("JOURNAL_STREAM");
        setenv("VIGIL_LOG_TARGET", "stderr", 1);
        capture_start();
        log_open("test-log");
}

static void teardown(void)
{
        if (saved_stderr >= 0)
                dup2(saved_stderr, STDERR_FILENO);
}

static size_t count_char(const char *s, char c)
{
        size_t n = 0;

        for (; *s; s++)
                n += *s == c;
        return n;
}

/* ---- the stderr line ---- */

START_TEST(test_stderr_entry_is_one_logfmt_line)
{
        _cleanup_free_ char *out = NULL;

        ck_assert_int_eq(log_info("hello %s", "world"), 0);
        log_warning("careful");
        log_error("broken");
        log_notice("n");
        out = captured();
        ck_assert_str_eq(out, "level=info msg=\"hello world\"\n"
                              "level=warning msg=\"careful\"\n"
                              "level=error msg=\"broken\"\n"
                              "level=notice msg=\"n\"\n");
}
END_TEST

START_TEST(test_message_is_escaped_so_an_entry_stays_one_line)
{
        _cleanup_free_ char *out = NULL;

        log_info("a\nb \"q\" back\\slash\ttab\r\x01\x7f end");
        out = captured();
        ck_assert_str_eq(
                out, "level=info msg=\"a\\nb \\\"q\\\" back\\\\slash\\ttab\\r\\x01\\x7f end\"\n");
        ck_assert_uint_eq(count_char(out, '\n'), 1);
}
END_TEST

START_TEST(test_fields_are_lower_cased_and_quoted_only_when_needed)
{
        static const struct log_field fields[] = {
                {"HTTP_ROUTE", "/product/{id}"},
                {"HTTP_STATUS", "200"},
                {"NOTE", "has space"},
                {"EQ", "a=b"},
                {"EMPTY", ""},
                {"QUOTE", "say \"hi\""},
                {"MULTI", "x\ny"},
                {"UTF8", "h\xc3\xa9llo"},
                {"BAD KEY", "left out"},
                {"_TRUSTED", "left out"},
                {"9LIVES", "left out"},
                {"NULL_VALUE", NULL},
                {NULL, "left out"},
        };
        _cleanup_free_ char *out = NULL;

        log_fields(LOG_INFO, 0, fields, ELEMENTSOF(fields), "request");
        out = captured();
        ck_assert_str_eq(out, "level=info msg=\"request\" http_route=/product/{id} http_status=200 "
                              "note=\"has space\" eq=\"a=b\" empty=\"\" quote=\"say \\\"hi\\\"\" "
                              "multi=\"x\\ny\" utf8=h\xc3\xa9llo\n");
}
END_TEST

START_TEST(test_error_adds_errno_and_percent_m_expands_it)
{
        _cleanup_free_ char *out = NULL;

        errno = EBUSY;
        ck_assert_int_eq(log_error_errno(ENOENT, "open failed: %m"), -ENOENT);
        ck_assert_int_eq(errno, EBUSY); /* preserved */
        /* The sign of the error is ignored. */
        ck_assert_int_eq(log_warning_errno(-EACCES, "denied: %m"), -EACCES);
        out = captured();
        ck_assert_str_eq(out, "level=error msg=\"open failed: No such file or directory\" errno=2\n"
                              "level=warning msg=\"denied: Permission denied\" errno=13\n");
}
END_TEST

START_TEST(test_percent_m_without_error_is_errno)
{
        _cleanup_free_ char *out = NULL;

        errno = ECONNREFUSED;
        log_info("%m");
        out = captured();
        ck_assert_str_eq(out, "level=info msg=\"Connection refused\"\n");
}
END_TEST

START_TEST(test_long_message_is_cut_at_the_message_limit)
{
        _cleanup_free_ char *big = malloc(3 * LOG_MESSAGE_MAX), *out = NULL;
        static const struct log_field fields[] = {{"AFTER", "x"}};

        memset(big, 'x', 3 * LOG_MESSAGE_MAX - 1);
        big[3 * LOG_MESSAGE_MAX - 1] = '\0';
        log_fields(LOG_INFO, 0, fields, 1, "%s", big);
        out = captured();
        ck_assert_uint_eq(strlen(out), strlen("level=info msg=\"") + LOG_MESSAGE_MAX - 1 +
                                               strlen("\" after=x\n"));
        ck_assert_str_eq(out + strlen(out) - 10, "\" after=x\n");
}
END_TEST

START_TEST(test_line_over_the_limit_is_cut_and_stays_one_line)
{
        _cleanup_free_ char *quotes = malloc(LOG_MESSAGE_MAX), *out = NULL;
        static const struct log_field fields[] = {{"LOST", "x"}};
        char *second;

        /* Quotes double in size when escaped: over the line limit. */
        memset(quotes, '"', LOG_MESSAGE_MAX - 1);
        quotes[LOG_MESSAGE_MAX - 1] = '\0';
        log_fields(LOG_INFO, 0, fields, 1, "%s", quotes);
        log_info("next");
        out = captured();

        second = strchr(out, '\n');
        ck_assert_ptr_nonnull(second);
        second++;
        ck_assert_str_eq(second, "level=info msg=\"next\"\n");
        ck_assert_uint_eq((size_t)(second - out), LOG_LINE_MAX);
        /* An escaped quote, then the closing one. */
        ck_assert(strncmp(second - 4, "\\\"\"\n", 4) == 0);
        ck_assert_ptr_null(strstr(out, "lost="));
}
END_TEST

START_TEST(test_field_too_long_for_the_line_is_cut_with_quotes_balanced)
{
        _cleanup_free_ char *value = malloc(2 * LOG_LINE_MAX), *out = NULL;
        struct log_field fields[] = {{"BIG", value}, {"LOST", "y"}};

        memset(value, 'v', 2 * LOG_LINE_MAX - 1);
        value[5] = ' ';
        value[2 * LOG_LINE_MAX - 1] = '\0';
        log_fields(LOG_INFO, 0, fields, 2, "m");
        out = captured();
        ck_assert_uint_eq(strlen(out), LOG_LINE_MAX);
        ck_assert_str_eq(out + LOG_LINE_MAX - 3, "v\"\n");
        ck_assert_ptr_null(strstr(out, "lost="));
        ck_assert_uint_eq(count_char(out, '"'), 4);
}
END_TEST

START_TEST(test_message_is_cut_at_a_utf8_character_boundary)
{
        _cleanup_free_ char *msg = malloc(LOG_MESSAGE_MAX + 8), *out = NULL;

        /* LOG_MESSAGE_MAX - 2 ASCII bytes, then "é": its second byte would
         * be the first one cut off. */
        memset(msg, 'a', LOG_MESSAGE_MAX - 2);
        strcpy(msg + LOG_MESSAGE_MAX - 2, "\xc3\xa9tail");
        log_info("%s", msg);
        out = captured();
        ck_assert_uint_eq(strlen(out),
                          strlen("level=info msg=\"") + LOG_MESSAGE_MAX - 2 + strlen("\"\n"));
        ck_assert_ptr_null(strchr(out, '\xc3'));
}
END_TEST

/* ---- levels ---- */

START_TEST(test_entries_below_the_max_level_are_dropped)
{
        _cleanup_free_ char *out = NULL;

        ck_assert_int_eq(log_get_max_level(), LOG_INFO);
        log_debug("hidden");
        log_set_max_level(LOG_WARNING);
        ck_assert_int_eq(log_get_max_level(), LOG_WARNING);
        log_info("hidden");
        log_notice("hidden");
        /* A dropped entry still returns its error. */
        ck_assert_int_eq(log_full_errno(LOG_INFO, EIO, "hidden"), -EIO);
        log_warning("shown");
        log_set_max_level(-EINVAL); /* ignored */
        log_set_max_level(99);      /* ignored */
        ck_assert_int_eq(log_get_max_level(), LOG_WARNING);
        log_set_max_level(LOG_DEBUG);
        log_debug("shown too");
        out = captured();
        ck_assert_str_eq(out, "level=warning msg=\"shown\"\nlevel=debug msg=\"shown too\"\n");
}
END_TEST

static int evaluations;

static int evaluated(void)
{
        return ++evaluations;
}

START_TEST(test_debug_entries_cost_nothing_above_debug)
{
        _cleanup_free_ char *out = NULL;

        /* Not even the arguments are evaluated (nor formatted). */
        log_debug("call %d", evaluated());
        ck_assert_int_eq(evaluations, 0);
        log_set_max_level(LOG_DEBUG);
        log_debug("call %d", evaluated());
        ck_assert_int_eq(evaluations, 1);
        out = captured();
        ck_assert_str_eq(out, "level=debug msg=\"call 1\"\n");
}
END_TEST

static const struct {
        const char *name;
        int level;
} level_names[] = {
        {"debug", LOG_DEBUG},     {"info", LOG_INFO},       {"notice", LOG_NOTICE},
        {"warning", LOG_WARNING}, {"err", LOG_ERR},         {"error", LOG_ERR},
        {"crit", LOG_CRIT},       {"alert", LOG_ALERT},     {"emerg", LOG_EMERG},
        {"DEBUG", LOG_DEBUG},     {"Warning", LOG_WARNING}, {"", -EINVAL},
        {"verbose", -EINVAL},     {"info ", -EINVAL},       {"7", -EINVAL},
        {NULL, -EINVAL},
};

START_TEST(test_level_from_string)
{
        for (size_t i = 0; i < ELEMENTSOF(level_names); i++)
                ck_assert_msg(log_level_from_string(level_names[i].name) == level_names[i].level,
                              "\"%s\"", level_names[i].name ? level_names[i].name : "(null)");
}
END_TEST

/* ---- target ---- */

static void set_journal_stream_to(int fd)
{
        struct stat st;
        char buf[64];

        ck_assert_int_eq(fstat(fd, &st), 0);
        snprintf(buf, sizeof(buf), "%llu:%llu", (unsigned long long)st.st_dev,
                 (unsigned long long)st.st_ino);
        setenv("JOURNAL_STREAM", buf, 1);
}

START_TEST(test_journal_is_chosen_only_when_journal_stream_is_stderr)
{
        unsetenv("VIGIL_LOG_TARGET");

        unsetenv("JOURNAL_STREAM");
        log_open("t");
        ck_assert_int_eq(log_get_target(), LOG_TARGET_STDERR);

        /* Inherited from a parent whose stderr was the journal. */
        setenv("JOURNAL_STREAM", "1:2", 1);
        log_open("t");
        ck_assert_int_eq(log_get_target(), LOG_TARGET_STDERR);

        setenv("JOURNAL_STREAM", "garbage", 1);
        log_open("t");
        ck_assert_int_eq(log_get_target(), LOG_TARGET_STDERR);

        set_journal_stream_to(saved_stderr); /* not what stderr is now */
        log_open("t");
        ck_assert_int_eq(log_get_target(), LOG_TARGET_STDERR);

        set_journal_stream_to(STDERR_FILENO);
        log_open("t");
        ck_assert_int_eq(log_get_target(), LOG_TARGET_JOURNAL);
}
END_TEST

START_TEST(test_vigil_log_target_forces_the_target)
{
        set_journal_stream_to(STDERR_FILENO);
        setenv("VIGIL_LOG_TARGET", "stderr", 1);
        log_open("t");
        ck_assert_int_eq(log_get_target(), LOG_TARGET_STDERR);

        unsetenv("JOURNAL_STREAM");
        setenv("VIGIL_LOG_TARGET", "journal", 1);
        log_open("t");
        ck_assert_int_eq(log_get_target(), LOG_TARGET_JOURNAL);
}
END_TEST

/* ---- threads ---- */

#define THREADS          4
#define LINES_PER_THREAD 200
#define PAYLOAD          1500

static void *log_lines(void *arg)
{
        char payload[PAYLOAD + 1];
        int id = (int)(intptr_t)arg;

        memset(payload, 'a' + id, PAYLOAD);
        payload[PAYLOAD] = '\0';
        for (int i = 0; i < LINES_PER_THREAD; i++)
                log_info("%d %s", id, payload);
        return NULL;
}

START_TEST(test_lines_from_threads_never_interleave)
{
        pthread_t threads[THREADS];
        _cleanup_free_ char *out = NULL;
        size_t line_len = strlen("level=info msg=\"0 ") + PAYLOAD + strlen("\"\n");
        size_t counts[THREADS] = {0};

        for (int i = 0; i < THREADS; i++)
                ck_assert_int_eq(pthread_create(&threads[i], NULL, log_lines, (void *)(intptr_t)i),
                                 0);
        for (int i = 0; i < THREADS; i++)
                pthread_join(threads[i], NULL);

        out = captured();
        ck_assert_uint_eq(strlen(out), THREADS * LINES_PER_THREAD * line_len);
        /* Plain comparisons: a ck_assert per byte would be slow. */
        for (const char *line = out; *line; line += line_len) {
                int id = line[strlen("level=info msg=\"")] - '0';
                bool whole = id >= 0 && id < THREADS &&
                             strncmp(line, "level=info msg=\"", 16) == 0 &&
                             strncmp(line + line_len - 2, "\"\n", 2) == 0;

                for (size_t j = 18; whole && j < 18 + PAYLOAD; j++)
                        whole = line[j] == 'a' + id;
                ck_assert_msg(whole, "broken line at offset %zu", (size_t)(line - out));
                counts[id]++;
        }
        for (int i = 0; i < THREADS; i++)
                ck_assert_uint_eq(counts[i], LINES_PER_THREAD);
}
END_TEST

/* ---- traces ---- */

START_TEST(test_entries_inside_a_span_carry_its_trace_and_span_id)
{
        char trace_id[2 * TRACE_ID_SIZE + 1], span_id[2 * SPAN_ID_SIZE + 1], expected[256];
        _cleanup_free_ char *out = NULL;
        struct span *s;

        log_info("before");
        s = span_start(NULL, "test", SPAN_KIND_INTERNAL, NULL);
        ck_assert_ptr_null(trace_set_current(s));
        trace_format_trace_id(span_context(s), trace_id);
        trace_format_span_id(span_context(s), span_id);
        log_error_errno(EIO, "inside");
        span_end(s);
        log_info("after");

        out = captured();
        snprintf(expected, sizeof(expected),
                 "level=info msg=\"before\"\n"
                 "level=error msg=\"inside\" trace_id=%s span_id=%s errno=5\n"
                 "level=info msg=\"after\"\n",
                 trace_id, span_id);
        ck_assert_str_eq(out, expected);
}
END_TEST

static Suite *log_suite(void)
{
        Suite *s = suite_create("log");
        TCase *tc;

        tc = tcase_create("stderr");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_stderr_entry_is_one_logfmt_line);
        tcase_add_test(tc, test_message_is_escaped_so_an_entry_stays_one_line);
        tcase_add_test(tc, test_fields_are_lower_cased_and_quoted_only_when_needed);
        tcase_add_test(tc, test_error_adds_errno_and_percent_m_expands_it);
        tcase_add_test(tc, test_percent_m_without_error_is_errno);
        tcase_add_test(tc, test_long_message_is_cut_at_the_message_limit);
        tcase_add_test(tc, test_line_over_the_limit_is_cut_and_stays_one_line);
        tcase_add_test(tc, test_field_too_long_for_the_line_is_cut_with_quotes_balanced);
        tcase_add_test(tc, test_message_is_cut_at_a_utf8_character_boundary);
        tcase_add_test(tc, test_lines_from_threads_never_interleave);
        suite_add_tcase(s, tc);

        tc = tcase_create("levels");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_entries_below_the_max_level_are_dropped);
        tcase_add_test(tc, test_debug_entries_cost_nothing_above_debug);
        tcase_add_test(tc, test_level_from_string);
        suite_add_tcase(s, tc);

        tc = tcase_create("target");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_journal_is_chosen_only_when_journal_stream_is_stderr);
        tcase_add_test(tc, test_vigil_log_target_forces_the_target);
        suite_add_tcase(s, tc);

        tc = tcase_create("trace");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_entries_inside_a_span_carry_its_trace_and_span_id);
        suite_add_tcase(s, tc);

        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(log_suite());
        int failed;

        /* Every test changes stderr, the environment and the log settings:
         * one process each. */
        srunner_set_fork_status(sr, CK_FORK);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
