/* The fault module: the share of failed draws, the routes filter, the
 * checks of bad values (through conf_load, with file and line), the hang
 * armed once, the bounded leak, and vigil_fault_active. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf.h"
#include "faults.h"
#include "http-server.h"
#include "metrics.h"

static void noop(struct http_request *req, void *userdata)
{
        (void)req;
        (void)userdata;
}

static const struct http_route routes[] = {
        {"POST", "/login", noop},
        {"GET", "/products", noop},
        {"GET", "/product/{id}", noop},
        {"POST", "/product/{id}/reserve", noop},
};
static const size_t n_routes = sizeof(routes) / sizeof(routes[0]);

static const struct faults_scope scope = {
        .routes = routes,
        .n_routes = &n_routes,
        .dependencies = (const char *const[]){"postgres", "redis", NULL},
};

struct test_config {
        struct {
                struct faults_config faults;
        } common;
};

static const struct conf_key table[] = {
        DAEMON_CONF_FAULTS_KEYS(struct test_config, &scope),
};

#define LEAK_MAX (8U * 1024U * 1024U)

static struct faults *new_faults(uint64_t seed, struct metrics_registry *metrics,
                                 const char *const *own)
{
        struct faults_options opts = {.metrics = metrics,
                                      .seed = seed,
                                      .own_error_routes = own,
                                      .leak_max_bytes = LEAK_MAX};
        struct faults *f = NULL;

        ck_assert_int_eq(faults_new(&opts, &f), 0);
        return f;
}

static unsigned failures(struct faults *f, const char *route, unsigned n)
{
        unsigned failed = 0;

        for (unsigned i = 0; i < n; i++) {
                unsigned delay;
                bool fail;

                faults_decide(f, route, &delay, &fail);
                failed += fail;
        }
        return failed;
}

START_TEST(test_error_ratio_is_honoured_within_a_statistical_bound)
{
        static const double ratios[] = {0.01, 0.1, 0.25, 0.5, 0.9};
        const unsigned n = 100000;

        for (size_t i = 0; i < sizeof(ratios) / sizeof(ratios[0]); i++) {
                struct faults *f = new_faults(42 + i, NULL, NULL);
                struct faults_config c = {.error_ratio = ratios[i]};
                double p = ratios[i], sd = sqrt(n * p * (1 - p));
                unsigned failed;

                ck_assert_int_eq(faults_set(f, &c, true), 0);
                failed = failures(f, "/login", n);
                /* Six standard deviations: a correct module never fails this
                 * with a fixed seed, a biased one (off by 1 %) does. */
                ck_assert_msg(fabs(failed - n * p) <= 6 * sd, "ratio %g: %u of %u failed", p,
                              failed, n);
                faults_free(f);
        }
}
END_TEST

START_TEST(test_ratios_0_and_1_never_and_always_fail)
{
        struct faults *f = new_faults(7, NULL, NULL);
        struct faults_config c = {.error_ratio = 0, .latency_ms = 5};
        unsigned delay = 0;
        bool fail = true;

        ck_assert_int_eq(faults_set(f, &c, true), 0);
        ck_assert_uint_eq(failures(f, "/login", 10000), 0);
        faults_decide(f, "/login", &delay, &fail);
        ck_assert_uint_eq(delay, 5);
        c.error_ratio = 1;
        ck_assert_int_eq(faults_set(f, &c, false), 0);
        ck_assert_uint_eq(failures(f, "/login", 10000), 10000);
        faults_free(f);
}
END_TEST

START_TEST(test_routes_select_only_matching_route_templates)
{
        struct faults *f = new_faults(1, NULL, NULL);
        struct faults_config c = {
                .error_ratio = 1, .latency_ms = 100, .routes = (char *)" /product/* , /login"};
        unsigned delay;
        bool fail;

        ck_assert_int_eq(faults_set(f, &c, true), 0);
        ck_assert_uint_eq(failures(f, "/product/{id}", 100), 100);
        ck_assert_uint_eq(failures(f, "/product/{id}/reserve", 100), 100);
        ck_assert_uint_eq(failures(f, "/login", 100), 100);
        ck_assert_uint_eq(failures(f, "/products", 100), 0);
        faults_decide(f, "/products", &delay, &fail);
        ck_assert_uint_eq(delay, 0);

        ck_assert(faults_routes_select(NULL, "/anything"));
        ck_assert(faults_routes_select("", "/anything"));
        ck_assert(faults_routes_select(" , ", "/anything"));
        ck_assert(!faults_routes_select("/products", "/product/{id}"));
        faults_free(f);
}
END_TEST

START_TEST(test_own_error_routes_get_the_latency_but_never_fail)
{
        static const char *const own[] = {"/login", NULL};
        struct faults *f = new_faults(3, NULL, own);
        struct faults_config c = {.error_ratio = 1, .latency_ms = 20};
        unsigned delay;
        bool fail;

        ck_assert_int_eq(faults_set(f, &c, true), 0);
        faults_decide(f, "/login", &delay, &fail);
        ck_assert(!fail);
        ck_assert_uint_eq(delay, 20);
        ck_assert_uint_eq(failures(f, "/products", 10), 10);
        faults_free(f);
}
END_TEST

/* Load text as a file named "faults.conf"; returns conf_load's result and
 * the first error formatted into err. */
static int load(const char *text, struct test_config *c, char *err, size_t size)
{
        struct conf_diagnostics diag = {0};
        int r;

        memset(c, 0, sizeof(*c));
        r = conf_load_buffer(table, sizeof(table) / sizeof(table[0]), "faults.conf", text,
                             strlen(text), c, &diag);
        err[0] = '\0';
        if (diag.n_errors > 0) {
                char *line = conf_error_format(&diag.errors[0]);

                snprintf(err, size, "%s", line ? line : "");
                free(line);
        }
        conf_diagnostics_done(&diag);
        return r;
}

START_TEST(test_bad_values_are_refused_with_file_line_and_key)
{
        static const struct {
                const char *text;
                const char *error;
        } bad[] = {
                {"[faults]\nerror_ratio = 1.01\n", "faults.conf:2: [faults] error_ratio:"},
                {"[faults]\nerror_ratio = -0.1\n", "faults.conf:2: [faults] error_ratio:"},
                {"[faults]\n\nlatency_ms = 60001\n", "faults.conf:3: [faults] latency_ms:"},
                {"[faults]\nroutes = login\n", "does not start with '/'"},
                {"[faults]\nroutes = /nowhere\n", "\"/nowhere\" matches none of the API routes"},
                {"[faults]\nroutes = /login,/x y\n", "faults.conf:2: [faults] routes:"},
                {"[faults]\nfail_dependency = amqp\n",
                 "faults.conf:2: [faults] fail_dependency: unknown dependency \"amqp\" "
                 "(expected one of: postgres, redis)"},
                {"[faults]\nhang_seconds = 3601\n", "faults.conf:2: [faults] hang_seconds:"},
                {"[faults]\nleak_kib_per_second = 65537\n",
                 "faults.conf:2: [faults] leak_kib_per_second:"},
        };
        struct test_config c;
        char err[512];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                ck_assert_int_eq(load(bad[i].text, &c, err, sizeof(err)), -EINVAL);
                ck_assert_msg(strstr(err, bad[i].error), "%s: got \"%s\"", bad[i].text, err);
                conf_free(table, sizeof(table) / sizeof(table[0]), &c);
        }

        ck_assert_int_eq(load("[faults]\nerror_ratio = 0.5\nlatency_ms = 60000\nroutes = "
                              "/product/*,/login\nfail_dependency = redis\n",
                              &c, err, sizeof(err)),
                         0);
        ck_assert_str_eq(c.common.faults.routes, "/product/*,/login");
        ck_assert_str_eq(c.common.faults.fail_dependency, "redis");
        conf_free(table, sizeof(table) / sizeof(table[0]), &c);
}
END_TEST

START_TEST(test_a_daemon_without_dependencies_refuses_any)
{
        static const struct faults_scope none = {0};
        char msg[128];

        ck_assert_int_eq(faults_check_dependency("postgres", &none, msg, sizeof(msg)), -EINVAL);
        ck_assert_str_eq(msg, "this daemon has no dependency to fail");
        ck_assert_int_eq(faults_check_routes("/login", &none, msg, sizeof(msg)), -EINVAL);
}
END_TEST

START_TEST(test_fail_dependency_names_one_dependency)
{
        struct faults *f = new_faults(1, NULL, NULL);
        struct faults_config c = {.fail_dependency = (char *)"redis"};

        ck_assert_int_eq(faults_set(f, &c, true), 0);
        ck_assert(faults_dependency_failed(f, "redis"));
        ck_assert(!faults_dependency_failed(f, "postgres"));
        c.fail_dependency = (char *)"";
        ck_assert_int_eq(faults_set(f, &c, false), 0);
        ck_assert(!faults_dependency_failed(f, "redis"));
        ck_assert(!faults_dependency_failed(NULL, "redis"));
        faults_free(f);
}
END_TEST

START_TEST(test_hang_is_armed_once_by_a_reload_never_at_start)
{
        struct faults *f = new_faults(1, NULL, NULL);
        struct faults_config c = {.hang_seconds = 30};

        ck_assert_int_eq(faults_set(f, &c, true), 0);
        ck_assert_uint_eq(faults_take_hang(f), 0);
        c.hang_seconds = 20;
        ck_assert_int_eq(faults_set(f, &c, false), 0);
        ck_assert_uint_eq(faults_take_hang(f), 20);
        ck_assert_uint_eq(faults_take_hang(f), 0);
        /* The same value again is no new drill. */
        ck_assert_int_eq(faults_set(f, &c, false), 0);
        ck_assert_uint_eq(faults_take_hang(f), 0);
        c.hang_seconds = 0;
        ck_assert_int_eq(faults_set(f, &c, false), 0);
        c.hang_seconds = 20;
        ck_assert_int_eq(faults_set(f, &c, false), 0);
        ck_assert_uint_eq(faults_take_hang(f), 20);
        faults_free(f);
}
END_TEST

START_TEST(test_leak_grows_to_its_cap_and_is_freed_when_off)
{
        struct metrics_registry *m = NULL;
        struct faults *f;
        struct faults_config c = {.leak_kib_per_second = FAULTS_MAX_LEAK_KIB_PER_SECOND};
        size_t leaked = 0;

        ck_assert_int_eq(metrics_registry_new(&m), 0);
        f = new_faults(1, m, NULL);
        ck_assert_int_eq(faults_set(f, &c, true), 0);
        /* 64 MiB/s: the 8 MiB cap within ~0.2 s; bounded by iterations. */
        for (unsigned i = 0; i < 2000 && leaked < LEAK_MAX; i++) {
                struct timespec ts = {.tv_nsec = 10 * 1000 * 1000};

                nanosleep(&ts, NULL);
                leaked = faults_leak_tick(f);
        }
        ck_assert_uint_eq(leaked, LEAK_MAX);
        ck_assert_uint_eq(faults_leak_tick(f), LEAK_MAX);
        c.leak_kib_per_second = 0;
        ck_assert_int_eq(faults_set(f, &c, false), 0);
        ck_assert_uint_eq(faults_leak_tick(f), 0);
        faults_free(f);
        metrics_registry_free(m);
}
END_TEST

START_TEST(test_every_key_is_exported_as_vigil_fault_active)
{
        struct metrics_registry *m = NULL;
        struct faults *f;
        struct faults_config c = {.error_ratio = 0.25,
                                  .latency_ms = 300,
                                  .fail_dependency = (char *)"postgres",
                                  .hang_seconds = 0,
                                  .leak_kib_per_second = 16};
        char *text = NULL;
        size_t len;

        ck_assert_int_eq(metrics_registry_new(&m), 0);
        f = new_faults(1, m, NULL);
        ck_assert_int_eq(faults_set(f, &c, true), 0);
        ck_assert_int_eq(metrics_render(m, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        ck_assert_ptr_nonnull(strstr(text, "vigil_fault_active{fault=\"error_ratio\"} 0.25\n"));
        ck_assert_ptr_nonnull(strstr(text, "vigil_fault_active{fault=\"latency_ms\"} 300\n"));
        ck_assert_ptr_nonnull(strstr(text, "vigil_fault_active{fault=\"fail_dependency\"} 1\n"));
        ck_assert_ptr_nonnull(strstr(text, "vigil_fault_active{fault=\"hang_seconds\"} 0\n"));
        ck_assert_ptr_nonnull(
                strstr(text, "vigil_fault_active{fault=\"leak_kib_per_second\"} 16\n"));
        free(text);
        faults_free(f);
        metrics_registry_free(m);
}
END_TEST

static Suite *faults_suite(void)
{
        Suite *s = suite_create("faults");
        TCase *tc = tcase_create("faults");

        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_error_ratio_is_honoured_within_a_statistical_bound);
        tcase_add_test(tc, test_ratios_0_and_1_never_and_always_fail);
        tcase_add_test(tc, test_routes_select_only_matching_route_templates);
        tcase_add_test(tc, test_own_error_routes_get_the_latency_but_never_fail);
        tcase_add_test(tc, test_bad_values_are_refused_with_file_line_and_key);
        tcase_add_test(tc, test_a_daemon_without_dependencies_refuses_any);
        tcase_add_test(tc, test_fail_dependency_names_one_dependency);
        tcase_add_test(tc, test_hang_is_armed_once_by_a_reload_never_at_start);
        tcase_add_test(tc, test_leak_grows_to_its_cap_and_is_freed_when_off);
        tcase_add_test(tc, test_every_key_is_exported_as_vigil_fault_active);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(faults_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
