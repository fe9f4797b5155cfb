/* Tests for conf.c: defaults, the file, drop-ins and environment in their
 * order of precedence, every kind of error with its location, the sample
 * config writer, credentials and listen addresses. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "macro.h"

struct test_config {
        char *listen;
        int64_t max_connections;
        bool access_log;
        double sample_ratio;
        char *endpoint;
        char *level;
        int64_t ttl;
        char *free_text;
};

static const char *const levels[] = {"debug", "info",  "notice", "warning", "err",
                                     "crit",  "alert", "emerg",  NULL};

static const struct conf_key table[] = {
        CONF_STRING("http", "listen", "127.0.0.1:8001", 32, struct test_config, listen,
                    "Address and port to listen on"),
        CONF_INT("http", "max_connections", "512", 1, 65536, struct test_config, max_connections,
                 "Concurrent connections"),
        CONF_BOOL("http", "access_log", "true", struct test_config, access_log,
                  "Log every request"),
        CONF_DOUBLE("tracing", "sample_ratio", "0.5", 0.0, 1.0, struct test_config, sample_ratio,
                    "Share of traces recorded"),
        CONF_STRING("tracing", "otlp-endpoint", NULL, 0, struct test_config, endpoint,
                    "OTLP endpoint\nempty disables export"),
        CONF_ENUM("log", "level", "info", levels, struct test_config, level, "Log level"),
        CONF_INT("cache", "ttl.seconds", "60", -5, 3600, struct test_config, ttl, NULL),
        CONF_STRING("misc", "text", "", 0, struct test_config, free_text, "Anything"),
};

#define TMPDIR_TEMPLATE "/tmp/test-conf-XXXXXX"
static char tmpdir[sizeof(TMPDIR_TEMPLATE)];

static void setup(void)
{
        memcpy(tmpdir, TMPDIR_TEMPLATE, sizeof(TMPDIR_TEMPLATE));
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
        /* Environment overrides from the caller's shell must not leak in. */
        unsetenv("VIGIL_HTTP_LISTEN");
        unsetenv("VIGIL_HTTP_MAX_CONNECTIONS");
        unsetenv("VIGIL_LOG_LEVEL");
        unsetenv("VIGIL_TRACING_OTLP_ENDPOINT");
        unsetenv("VIGIL_CACHE_TTL_SECONDS");
        unsetenv("CREDENTIALS_DIRECTORY");
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        return remove(path);
}

static void teardown(void)
{
        nftw(tmpdir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char *path_in_tmp(const char *name)
{
        char *p;

        ck_assert_int_ge(asprintf(&p, "%s/%s", tmpdir, name), 0);
        return p;
}

static void write_file(const char *name, const char *content)
{
        _cleanup_free_ char *p = path_in_tmp(name);
        FILE *f = fopen(p, "we");

        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(fputs(content, f) >= 0, 1);
        ck_assert_int_eq(fclose(f), 0);
}

static void make_dir(const char *name)
{
        _cleanup_free_ char *p = path_in_tmp(name);

        ck_assert_int_eq(mkdir(p, 0755), 0);
}

/* Load from tmpdir/name into c, expecting r. */
static void load(const char *name, bool required, struct test_config *c,
                 struct conf_diagnostics *diag, int expected)
{
        _cleanup_free_ char *p = name ? path_in_tmp(name) : NULL;
        int r;

        memset(c, 0, sizeof(*c));
        r = conf_load(table, ELEMENTSOF(table), p, required, c, diag);
        ck_assert_int_eq(r, expected);
}

static const struct conf_error *find_error_at(const struct conf_diagnostics *d, unsigned line)
{
        for (size_t i = 0; i < d->n_errors; i++)
                if (d->errors[i].line == line)
                        return &d->errors[i];
        return NULL;
}

/* ---- layering ---- */

START_TEST(test_load_without_file_applies_every_default)
{
        struct test_config c;
        struct conf_diagnostics d = {0};

        load(NULL, false, &c, &d, 0);
        ck_assert_str_eq(c.listen, "127.0.0.1:8001");
        ck_assert_int_eq(c.max_connections, 512);
        ck_assert(c.access_log);
        ck_assert_double_eq(c.sample_ratio, 0.5);
        ck_assert_ptr_null(c.endpoint);
        ck_assert_str_eq(c.level, "info");
        ck_assert_int_eq(c.ttl, 60);
        ck_assert_str_eq(c.free_text, "");
        ck_assert_uint_eq(d.n_errors, 0);
        conf_free(table, ELEMENTSOF(table), &c);
        ck_assert_ptr_null(c.listen);
}
END_TEST

START_TEST(test_missing_optional_file_is_not_an_error)
{
        struct test_config c;
        struct conf_diagnostics d = {0};

        load("absent.conf", false, &c, &d, 0);
        ck_assert_str_eq(c.level, "info");
        ck_assert_uint_eq(d.n_errors, 0);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_missing_required_file_returns_enoent)
{
        struct test_config c;
        struct conf_diagnostics d = {0};

        load("absent.conf", true, &c, &d, -ENOENT);
        ck_assert_uint_eq(d.n_errors, 0);
        ck_assert_str_eq(c.level, "info"); /* defaults still applied */
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_file_values_override_defaults)
{
        struct test_config c;
        struct conf_diagnostics d = {0};

        write_file("a.conf", "\xEF\xBB\xBF# a comment\n"
                             "; another comment\n"
                             "[http]\n"
                             "listen = 0.0.0.0:9000 ; inline comment\n"
                             "  max_connections = 7\n"
                             "access_log=off\r\n"
                             "\n"
                             "[tracing]\n"
                             "sample_ratio = 0.25\n"
                             "otlp-endpoint = http://127.0.0.1:4318/v1/traces\n"
                             "[cache]\n"
                             "ttl.seconds = -5\n"
                             "[misc]\n"
                             "text = a # b = c");
        load("a.conf", true, &c, &d, 0);
        ck_assert_uint_eq(d.n_errors, 0);
        ck_assert_str_eq(c.listen, "0.0.0.0:9000");
        ck_assert_int_eq(c.max_connections, 7);
        ck_assert(!c.access_log);
        ck_assert_double_eq(c.sample_ratio, 0.25);
        ck_assert_str_eq(c.endpoint, "http://127.0.0.1:4318/v1/traces");
        ck_assert_str_eq(c.level, "info");
        ck_assert_int_eq(c.ttl, -5);
        ck_assert_str_eq(c.free_text, "a # b = c");
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_later_assignment_wins_without_error)
{
        struct test_config c;
        struct conf_diagnostics d = {0};

        write_file("a.conf", "[log]\nlevel = debug\nlevel = notice\n[http]\n"
                             "listen = :1\n[log]\nlevel = warning\n");
        load("a.conf", false, &c, &d, 0);
        ck_assert_uint_eq(d.n_errors, 0);
        ck_assert_str_eq(c.level, "warning");
        ck_assert_str_eq(c.listen, ":1");
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_dropins_apply_in_lexical_order_after_the_file)
{
        struct test_config c;
        struct conf_diagnostics d = {0};

        write_file("a.conf", "[log]\nlevel = debug\n[http]\nmax_connections = 3\n");
        make_dir("a.conf.d");
        write_file("a.conf.d/20-b.conf", "[log]\nlevel = warning\n");
        write_file("a.conf.d/10-a.conf", "[log]\nlevel = notice\n[http]\nlisten = :2\n");
        write_file("a.conf.d/05.conf", "[http]\nlisten = :1\nmax_connections = 4\n");
        /* Not drop-ins: wrong suffix, hidden. */
        write_file("a.conf.d/30-c.conf.bak", "[log]\nlevel = crit\n");
        write_file("a.conf.d/.40-d.conf", "[log]\nlevel = crit\n");
        write_file("a.conf.d/README", "not ini at all");
        load("a.conf", true, &c, &d, 0);
        ck_assert_uint_eq(d.n_errors, 0);
        ck_assert_str_eq(c.level, "warning");
        ck_assert_str_eq(c.listen, ":2");
        ck_assert_int_eq(c.max_connections, 4);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_dropins_apply_without_main_file)
{
        struct test_config c;
        struct conf_diagnostics d = {0};

        make_dir("a.conf.d");
        write_file("a.conf.d/x.conf", "[log]\nlevel = err\n");
        load("a.conf", false, &c, &d, 0);
        ck_assert_str_eq(c.level, "err");
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_environment_overrides_file_and_dropins)
{
        struct test_config c;
        struct conf_diagnostics d = {0};

        write_file("a.conf", "[log]\nlevel = debug\n[tracing]\notlp-endpoint = x\n");
        make_dir("a.conf.d");
        write_file("a.conf.d/a.conf", "[log]\nlevel = notice\n");
        setenv("VIGIL_LOG_LEVEL", "crit", 1);
        setenv("VIGIL_TRACING_OTLP_ENDPOINT", "", 1);
        setenv("VIGIL_CACHE_TTL_SECONDS", "120", 1);
        setenv("VIGIL_UNRELATED_VARIABLE", "is not ours", 1);
        load("a.conf", true, &c, &d, 0);
        ck_assert_uint_eq(d.n_errors, 0);
        ck_assert_str_eq(c.level, "crit");
        ck_assert_str_eq(c.endpoint, "");
        ck_assert_int_eq(c.ttl, 120);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_bad_environment_value_is_reported_as_environment)
{
        struct test_config c;
        struct conf_diagnostics d = {0};
        _cleanup_free_ char *s = NULL;

        setenv("VIGIL_HTTP_MAX_CONNECTIONS", "lots", 1);
        load(NULL, false, &c, &d, -EINVAL);
        ck_assert_uint_eq(d.n_errors, 1);
        ck_assert_str_eq(d.errors[0].file, "environment");
        ck_assert_uint_eq(d.errors[0].line, 0);
        ck_assert_str_eq(d.errors[0].section, "http");
        ck_assert_str_eq(d.errors[0].key, "max_connections");
        ck_assert_ptr_nonnull(strstr(d.errors[0].message, "VIGIL_HTTP_MAX_CONNECTIONS"));
        ck_assert_int_eq(c.max_connections, 512); /* the bad value is not applied */
        s = conf_error_format(&d.errors[0]);
        ck_assert_ptr_nonnull(s);
        ck_assert_msg(strncmp(s, "environment: [http] max_connections: expected an integer", 56) ==
                              0,
                      "%s", s);
        conf_diagnostics_done(&d);
        ck_assert_ptr_null(d.errors);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

/* ---- errors ---- */

static const struct {
        unsigned line;
        const char *section, *key, *message_part;
} expected_errors[] = {
        {1, NULL, "orphan", "outside of any [section]"},
        {3, "nosuch", "x", "unknown section"},
        {5, "http", "nosuch", "unknown key"},
        {6, "http", "max_connections", "expected an integer, got \"ten\""},
        {7, "http", "max_connections", "expected an integer, got \"1.5\""},
        {8, "http", "max_connections", "expected an integer, got \"12abc\""},
        {9, "http", "max_connections", "0 is out of range 1..65536"},
        {10, "http", "max_connections", "expected an integer"}, /* overflows int64 */
        {11, "http", "access_log", "expected a boolean"},
        {12, "http", "listen", "value too long (33 bytes, at most 32)"},
        {13, NULL, NULL, "expected \"key = value\""},
        {15, "tracing", "sample_ratio", "expected a finite number, got \"nan\""},
        {16, "tracing", "sample_ratio", "expected a finite number, got \"inf\""},
        {17, "tracing", "sample_ratio", "1.5 is out of range 0..1"},
        {18, "tracing", "sample_ratio", "expected a finite number, got \"0.5x\""},
        {19, NULL, NULL, "expected \"[section]\""},
        {20, NULL, NULL, "line too long"},
        {23, "log", "level",
         "expected one of debug, info, notice, warning, err, crit, alert, emerg, got \"loud\""},
};

START_TEST(test_every_error_is_reported_with_file_line_and_key)
{
        struct test_config c;
        struct conf_diagnostics d = {0};
        char long_line[300];
        _cleanup_free_ char *content = NULL, *path = path_in_tmp("bad.conf");

        memset(long_line, 'x', sizeof(long_line) - 1);
        long_line[sizeof(long_line) - 1] = '\0';
        memcpy(long_line, "listen=", 7);
        ck_assert_int_ge(asprintf(&content,
                                  "orphan = 1\n"                                 /* 1 */
                                  "[nosuch]\n"                                   /* 2 */
                                  "x = 1\n"                                      /* 3 */
                                  "[http]\n"                                     /* 4 */
                                  "nosuch = 1\n"                                 /* 5 */
                                  "max_connections = ten\n"                      /* 6 */
                                  "max_connections = 1.5\n"                      /* 7 */
                                  "max_connections = 12abc\n"                    /* 8 */
                                  "max_connections = 0\n"                        /* 9 */
                                  "max_connections = 99999999999999999999999\n"  /* 10 */
                                  "access_log = maybe\n"                         /* 11 */
                                  "listen = 123456789012345678901234567890123\n" /* 12 */
                                  "just some words\n"                            /* 13 */
                                  "[tracing]\n"                                  /* 14 */
                                  "sample_ratio = nan\n"                         /* 15 */
                                  "sample_ratio = inf\n"                         /* 16 */
                                  "sample_ratio = 1.5\n"                         /* 17 */
                                  "sample_ratio = 0.5x\n"                        /* 18 */
                                  "[broken\n"                                    /* 19 */
                                  "%s\n"                                         /* 20 */
                                  "[log]\n"                                      /* 21 */
                                  "level = debug\n"                              /* 22 */
                                  "level = loud\n",                              /* 23 */
                                  long_line),
                         0);
        write_file("bad.conf", content);

        load("bad.conf", false, &c, &d, -EINVAL);
        for (size_t i = 0; i < d.n_errors; i++) {
                _cleanup_free_ char *s = conf_error_format(&d.errors[i]);
                fprintf(stderr, "  %s\n", s);
        }
        ck_assert_uint_eq(d.n_errors, ELEMENTSOF(expected_errors));
        for (size_t i = 0; i < ELEMENTSOF(expected_errors); i++) {
                const struct conf_error *e = find_error_at(&d, expected_errors[i].line);

                ck_assert_msg(e, "no error at line %u", expected_errors[i].line);
                ck_assert_str_eq(e->file, path);
                if (expected_errors[i].section)
                        ck_assert_str_eq(e->section, expected_errors[i].section);
                else
                        ck_assert_ptr_null(e->section);
                if (expected_errors[i].key)
                        ck_assert_str_eq(e->key, expected_errors[i].key);
                else
                        ck_assert_ptr_null(e->key);
                ck_assert_msg(strstr(e->message, expected_errors[i].message_part),
                              "line %u: \"%s\" lacks \"%s\"", e->line, e->message,
                              expected_errors[i].message_part);
        }

        /* Good values around the errors still apply; bad ones do not. */
        ck_assert_str_eq(c.level, "debug");
        ck_assert_int_eq(c.max_connections, 512);
        ck_assert_str_eq(c.listen, "127.0.0.1:8001");
        ck_assert_double_eq(c.sample_ratio, 0.5);

        conf_diagnostics_done(&d);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_enum_takes_its_values_in_any_case_and_names_them_all_otherwise)
{
        struct test_config c;
        struct conf_diagnostics d = {0};
        _cleanup_free_ char *s = NULL;

        write_file("a.conf", "[log]\nlevel = WARNING\n");
        load("a.conf", true, &c, NULL, 0);
        ck_assert_str_eq(c.level, "WARNING");
        conf_free(table, ELEMENTSOF(table), &c);

        /* From the environment too, and the file's value stays. */
        setenv("VIGIL_LOG_LEVEL", "verbose", 1);
        load("a.conf", true, &c, &d, -EINVAL);
        unsetenv("VIGIL_LOG_LEVEL");
        ck_assert_uint_eq(d.n_errors, 1);
        s = conf_error_format(&d.errors[0]);
        ck_assert_str_eq(s, "environment: [log] level: expected one of debug, info, notice, "
                            "warning, err, crit, alert, emerg, got \"verbose\" (from "
                            "$VIGIL_LOG_LEVEL)");
        ck_assert_str_eq(c.level, "WARNING");
        conf_diagnostics_done(&d);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

struct seen_assignment {
        unsigned line;
        char text[64];
};

static void record_assignment(void *userdata, const char *file, unsigned line, const char *section,
                              const char *key, const char *value)
{
        struct seen_assignment *seen = userdata;

        ck_assert_str_eq(file, "x.ini");
        for (; seen->line != 0; seen++)
                ;
        seen->line = line;
        snprintf(seen->text, sizeof(seen->text), "[%s] %s=%s", section, key, value);
}

START_TEST(test_parse_ini_gives_each_assignment_its_line_and_every_syntax_error)
{
        static const char text[] = "# comment\n[a]\nx = 1\nnonsense\n\n  y = 2\n[b\nz = 3\n";
        struct seen_assignment seen[8] = {0};
        struct conf_diagnostics d = {0};

        ck_assert_int_eq(
                conf_parse_ini("x.ini", text, strlen(text), 100, NULL, record_assignment, seen, &d),
                0);
        ck_assert_uint_eq(seen[0].line, 3);
        ck_assert_str_eq(seen[0].text, "[a] x=1");
        ck_assert_uint_eq(seen[1].line, 6);
        ck_assert_str_eq(seen[1].text, "[a] y=2");
        ck_assert_uint_eq(seen[2].line, 8);
        ck_assert_uint_eq(seen[3].line, 0);
        ck_assert_uint_eq(d.n_found, 2);
        ck_assert_uint_eq(d.errors[0].line, 4);
        ck_assert_uint_eq(d.errors[1].line, 7);
        ck_assert_ptr_nonnull(strstr(d.errors[1].message, "[section]"));
        conf_diagnostics_done(&d);
}
END_TEST

START_TEST(test_line_of_the_maximum_length_is_taken_whole)
{
        struct test_config c = {0};
        struct conf_diagnostics d = {0};
        char text[CONF_MAX_LINE + 32];
        size_t prefix = strlen("[misc]\ntext = ");

        /* The longest line libinih's buffer holds, with a CRLF ending. */
        memcpy(text, "[misc]\ntext = ", prefix);
        memset(text + prefix, 'z', CONF_MAX_LINE - strlen("text = "));
        strcpy(text + prefix + CONF_MAX_LINE - strlen("text = "), "\r\n[log]\nlevel = err\n");
        ck_assert_int_eq(
                conf_load_buffer(table, ELEMENTSOF(table), "mem", text, strlen(text), &c, &d), 0);
        ck_assert_uint_eq(strlen(c.free_text), CONF_MAX_LINE - strlen("text = "));
        ck_assert_str_eq(c.level, "err");
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_errors_in_dropins_name_the_dropin)
{
        struct test_config c;
        struct conf_diagnostics d = {0};
        _cleanup_free_ char *dropin = path_in_tmp("a.conf.d/x.conf");

        write_file("a.conf", "[log]\nlevel = debug\n");
        make_dir("a.conf.d");
        write_file("a.conf.d/x.conf", "\n\n[http]\nbogus = 1\n");
        load("a.conf", true, &c, &d, -EINVAL);
        ck_assert_uint_eq(d.n_errors, 1);
        ck_assert_str_eq(d.errors[0].file, dropin);
        ck_assert_uint_eq(d.errors[0].line, 4);
        ck_assert_str_eq(d.errors[0].key, "bogus");
        conf_diagnostics_done(&d);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_error_count_is_capped)
{
        struct test_config c;
        struct conf_diagnostics d = {0};
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);

        ck_assert_ptr_nonnull(f);
        fputs("[http]\n", f);
        for (int i = 0; i < 1000; i++)
                fputs("bogus = 1\n", f);
        fclose(f);
        memset(&c, 0, sizeof(c));
        ck_assert_int_eq(conf_load_buffer(table, ELEMENTSOF(table), "mem", text, size, &c, &d),
                         -EINVAL);
        ck_assert_uint_eq(d.n_errors, CONF_MAX_ERRORS + 1);
        ck_assert_ptr_nonnull(strstr(d.errors[CONF_MAX_ERRORS].message, "too many errors"));
        free(text);
        conf_diagnostics_done(&d);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_buffer_with_nul_byte_is_an_error_not_a_truncation)
{
        static const char data[] = "[log]\nlevel = de\0bug\nlevel = notice\n";
        struct test_config c = {0};
        struct conf_diagnostics d = {0};

        ck_assert_int_eq(
                conf_load_buffer(table, ELEMENTSOF(table), "mem", data, sizeof(data) - 1, &c, &d),
                -EINVAL);
        ck_assert_uint_eq(d.n_errors, 1);
        ck_assert_uint_eq(d.errors[0].line, 2);
        ck_assert_str_eq(c.level, "notice");
        conf_diagnostics_done(&d);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_unreadable_path_is_reported)
{
        struct test_config c;
        struct conf_diagnostics d = {0};

        make_dir("dir.conf");
        load("dir.conf", true, &c, &d, -EISDIR);
        ck_assert_uint_eq(d.n_errors, 1);
        ck_assert_uint_eq(d.errors[0].line, 0);
        conf_diagnostics_done(&d);
        conf_free(table, ELEMENTSOF(table), &c);
}
END_TEST

START_TEST(test_error_format_leaves_out_missing_parts)
{
        struct conf_error full = {"f.conf", 12, "http", "listen", "expected host:port"};
        struct conf_error bare = {"f.conf", 0, NULL, NULL, "file too large"};
        _cleanup_free_ char *a = conf_error_format(&full);
        _cleanup_free_ char *b = conf_error_format(&bare);

        ck_assert_str_eq(a, "f.conf:12: [http] listen: expected host:port");
        ck_assert_str_eq(b, "f.conf: file too large");
}
END_TEST

/* ---- sample config ---- */

START_TEST(test_write_defaults_lists_every_key_commented_out)
{
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);
        struct test_config c = {0};
        struct conf_diagnostics d = {0};

        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(conf_write_defaults(table, ELEMENTSOF(table), f), 0);
        fclose(f);

        ck_assert_ptr_nonnull(strstr(text, "[http]\n# Address and port to listen on\n"
                                           "#listen = 127.0.0.1:8001\n"));
        ck_assert_ptr_nonnull(strstr(text, "# Range: 1..65536\n#max_connections = 512\n"));
        ck_assert_ptr_nonnull(strstr(text, "# OTLP endpoint\n# empty disables export\n"
                                           "#otlp-endpoint =\n"));
        ck_assert_ptr_nonnull(strstr(text, "# Range: 0..1\n#sample_ratio = 0.5\n"));
        ck_assert_ptr_nonnull(strstr(text, "\n[cache]\n# Range: -5..3600\n#ttl.seconds = 60\n"));
        /* Each section once, in table order. */
        ck_assert_ptr_null(strstr(strstr(text, "[tracing]") + 1, "[tracing]"));
        ck_assert(strstr(text, "[http]") < strstr(text, "[tracing]"));

        /* The sample itself is a valid, empty configuration. */
        ck_assert_int_eq(conf_load_buffer(table, ELEMENTSOF(table), "sample", text, size, &c, &d),
                         0);
        conf_free(table, ELEMENTSOF(table), &c);
        free(text);
}
END_TEST

START_TEST(test_write_defaults_uncommented_gives_the_defaults)
{
        char *text = NULL, *uncommented;
        size_t size = 0, n = 0;
        FILE *f = open_memstream(&text, &size);
        struct test_config c = {0};
        struct conf_diagnostics d = {0};

        ck_assert_int_eq(conf_write_defaults(table, ELEMENTSOF(table), f), 0);
        fclose(f);
        /* "#key = value" → "key = value"; "# help" stays a comment. */
        uncommented = calloc(1, size + 1);
        for (size_t i = 0; i < size; i++) {
                if (text[i] == '#' && (i == 0 || text[i - 1] == '\n') && text[i + 1] != ' ')
                        continue;
                uncommented[n++] = text[i];
        }
        ck_assert_int_eq(
                conf_load_buffer(table, ELEMENTSOF(table), "sample", uncommented, n, &c, &d), 0);
        ck_assert_str_eq(c.listen, "127.0.0.1:8001");
        ck_assert_str_eq(c.endpoint, "");
        ck_assert_int_eq(c.ttl, 60);
        conf_free(table, ELEMENTSOF(table), &c);
        free(uncommented);
        free(text);
}
END_TEST

/* ---- credentials ---- */

START_TEST(test_credential_comes_from_credentials_directory_first)
{
        _cleanup_free_ char *secret = NULL, *fallback = path_in_tmp("fallback");
        size_t len = 0;

        make_dir("creds");
        write_file("creds/jwt-key", "from-systemd\r\n");
        write_file("fallback", "from-file\n");
        _cleanup_free_ char *dir = path_in_tmp("creds");
        setenv("CREDENTIALS_DIRECTORY", dir, 1);

        ck_assert_int_eq(conf_read_credential("jwt-key", fallback, 64, &secret, &len), 0);
        ck_assert_str_eq(secret, "from-systemd");
        ck_assert_uint_eq(len, 12);
}
END_TEST

START_TEST(test_credential_falls_back_to_file)
{
        _cleanup_free_ char *secret = NULL, *fallback = path_in_tmp("fallback");
        _cleanup_free_ char *dir = path_in_tmp("creds");
        size_t len = 0;

        make_dir("creds");
        write_file("fallback", "from-file\n\n");
        setenv("CREDENTIALS_DIRECTORY", dir, 1);

        ck_assert_int_eq(conf_read_credential("jwt-key", fallback, 64, &secret, &len), 0);
        ck_assert_str_eq(secret, "from-file");
        ck_assert_uint_eq(len, 9);

        /* Also without CREDENTIALS_DIRECTORY at all, and with ret_len NULL. */
        free(secret);
        secret = NULL;
        unsetenv("CREDENTIALS_DIRECTORY");
        ck_assert_int_eq(conf_read_credential("jwt-key", fallback, 64, &secret, NULL), 0);
        ck_assert_str_eq(secret, "from-file");
}
END_TEST

START_TEST(test_credential_missing_everywhere_is_enoent)
{
        _cleanup_free_ char *dir = path_in_tmp("creds"), *fallback = path_in_tmp("nope");
        char *secret = NULL;

        make_dir("creds");
        setenv("CREDENTIALS_DIRECTORY", dir, 1);
        ck_assert_int_eq(conf_read_credential("jwt-key", NULL, 64, &secret, NULL), -ENOENT);
        ck_assert_int_eq(conf_read_credential("jwt-key", "", 64, &secret, NULL), -ENOENT);
        ck_assert_int_eq(conf_read_credential("jwt-key", fallback, 64, &secret, NULL), -ENOENT);
        ck_assert_ptr_null(secret);
}
END_TEST

START_TEST(test_credential_larger_than_max_is_efbig)
{
        _cleanup_free_ char *dir = path_in_tmp("creds"), *secret = NULL;
        size_t len = 0;

        make_dir("creds");
        write_file("creds/key", "0123456789");
        setenv("CREDENTIALS_DIRECTORY", dir, 1);
        ck_assert_int_eq(conf_read_credential("key", NULL, 9, &secret, &len), -EFBIG);
        ck_assert_ptr_null(secret);
        ck_assert_int_eq(conf_read_credential("key", NULL, 10, &secret, &len), 0);
        ck_assert_uint_eq(len, 10);
}
END_TEST

START_TEST(test_credential_keeps_binary_content_and_inner_newlines)
{
        _cleanup_free_ char *dir = path_in_tmp("creds"), *secret = NULL;
        size_t len = 0;

        make_dir("creds");
        write_file("creds/key", "a\nb\r");
        setenv("CREDENTIALS_DIRECTORY", dir, 1);
        ck_assert_int_eq(conf_read_credential("key", NULL, 64, &secret, &len), 0);
        ck_assert_uint_eq(len, 4);
        ck_assert_int_eq(memcmp(secret, "a\nb\r", 5), 0);
}
END_TEST

START_TEST(test_credential_rejects_path_names_and_symlinks)
{
        _cleanup_free_ char *dir = path_in_tmp("creds"), *target = path_in_tmp("target");
        _cleanup_free_ char *link = path_in_tmp("creds/link");
        char *secret = NULL;

        make_dir("creds");
        write_file("target", "secret");
        ck_assert_int_eq(symlink(target, link), 0);
        setenv("CREDENTIALS_DIRECTORY", dir, 1);
        ck_assert_int_eq(conf_read_credential("../target", NULL, 64, &secret, NULL), -EINVAL);
        ck_assert_int_eq(conf_read_credential("", NULL, 64, &secret, NULL), -EINVAL);
        ck_assert_int_eq(conf_read_credential("..", NULL, 64, &secret, NULL), -EINVAL);
        ck_assert_int_eq(conf_read_credential("link", NULL, 64, &secret, NULL), -EINVAL);
        ck_assert_ptr_null(secret);
}
END_TEST

/* ---- listen addresses ---- */

static const struct {
        const char *input;
        int r;
        const char *host;
        uint16_t port;
} listen_cases[] = {
        {"127.0.0.1:8001", 0, "127.0.0.1", 8001},
        {"localhost:80", 0, "localhost", 80},
        {"my-host.example_1:1", 0, "my-host.example_1", 1},
        {":8080", 0, "", 8080},
        {"[::1]:8001", 0, "::1", 8001},
        {"[2001:db8::17]:65535", 0, "2001:db8::17", 65535},
        {"0.0.0.0:0", 0, "0.0.0.0", 0},
        {"127.0.0.1:65536", -EINVAL, NULL, 0},
        {"127.0.0.1:99999", -EINVAL, NULL, 0},
        {"127.0.0.1:", -EINVAL, NULL, 0},
        {"127.0.0.1", -EINVAL, NULL, 0},
        {"127.0.0.1:80x", -EINVAL, NULL, 0},
        {"127.0.0.1:-1", -EINVAL, NULL, 0},
        {"127.0.0.1:+80", -EINVAL, NULL, 0},
        {"127.0.0.1:000080", -EINVAL, NULL, 0},
        {"::1:8001", -EINVAL, NULL, 0},
        {"[::1]8001", -EINVAL, NULL, 0},
        {"[::1]:", -EINVAL, NULL, 0},
        {"[]:80", -EINVAL, NULL, 0},
        {"[not-v6]:80", -EINVAL, NULL, 0},
        {"[::1:80", -EINVAL, NULL, 0},
        {"bad host:80", -EINVAL, NULL, 0},
        {"host/x:80", -EINVAL, NULL, 0},
        {"", -EINVAL, NULL, 0},
        {"a-very-long-host-name-that-does-not-fit.example.com:80", -EINVAL, NULL, 0},
};

START_TEST(test_parse_listen_table)
{
        for (size_t i = 0; i < ELEMENTSOF(listen_cases); i++) {
                char host[32] = "untouched";
                uint16_t port = 4242;
                int r;

                r = conf_parse_listen(listen_cases[i].input, host, sizeof(host), &port);
                ck_assert_msg(r == listen_cases[i].r, "\"%s\": %d", listen_cases[i].input, r);
                if (r == 0) {
                        ck_assert_str_eq(host, listen_cases[i].host);
                        ck_assert_uint_eq(port, listen_cases[i].port);
                } else {
                        /* Outputs are written only on success. */
                        ck_assert_str_eq(host, "untouched");
                        ck_assert_uint_eq(port, 4242);
                }
        }
}
END_TEST

START_TEST(test_parse_listen_rejects_null)
{
        char host[8];
        uint16_t port;

        ck_assert_int_eq(conf_parse_listen(NULL, host, sizeof(host), &port), -EINVAL);
}
END_TEST

static Suite *conf_suite(void)
{
        Suite *s = suite_create("conf");
        TCase *tc;

        tc = tcase_create("load");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_load_without_file_applies_every_default);
        tcase_add_test(tc, test_missing_optional_file_is_not_an_error);
        tcase_add_test(tc, test_missing_required_file_returns_enoent);
        tcase_add_test(tc, test_file_values_override_defaults);
        tcase_add_test(tc, test_later_assignment_wins_without_error);
        tcase_add_test(tc, test_dropins_apply_in_lexical_order_after_the_file);
        tcase_add_test(tc, test_dropins_apply_without_main_file);
        tcase_add_test(tc, test_environment_overrides_file_and_dropins);
        tcase_add_test(tc, test_bad_environment_value_is_reported_as_environment);
        suite_add_tcase(s, tc);

        tc = tcase_create("errors");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_every_error_is_reported_with_file_line_and_key);
        tcase_add_test(tc, test_enum_takes_its_values_in_any_case_and_names_them_all_otherwise);
        tcase_add_test(tc, test_parse_ini_gives_each_assignment_its_line_and_every_syntax_error);
        tcase_add_test(tc, test_line_of_the_maximum_length_is_taken_whole);
        tcase_add_test(tc, test_errors_in_dropins_name_the_dropin);
        tcase_add_test(tc, test_error_count_is_capped);
        tcase_add_test(tc, test_buffer_with_nul_byte_is_an_error_not_a_truncation);
        tcase_add_test(tc, test_unreadable_path_is_reported);
        tcase_add_test(tc, test_error_format_leaves_out_missing_parts);
        suite_add_tcase(s, tc);

        tc = tcase_create("sample");
        tcase_add_test(tc, test_write_defaults_lists_every_key_commented_out);
        tcase_add_test(tc, test_write_defaults_uncommented_gives_the_defaults);
        suite_add_tcase(s, tc);

        tc = tcase_create("credential");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_credential_comes_from_credentials_directory_first);
        tcase_add_test(tc, test_credential_falls_back_to_file);
        tcase_add_test(tc, test_credential_missing_everywhere_is_enoent);
        tcase_add_test(tc, test_credential_larger_than_max_is_efbig);
        tcase_add_test(tc, test_credential_keeps_binary_content_and_inner_newlines);
        tcase_add_test(tc, test_credential_rejects_path_names_and_symlinks);
        suite_add_tcase(s, tc);

        tc = tcase_create("listen");
        tcase_add_test(tc, test_parse_listen_table);
        tcase_add_test(tc, test_parse_listen_rejects_null);
        suite_add_tcase(s, tc);

        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(conf_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
