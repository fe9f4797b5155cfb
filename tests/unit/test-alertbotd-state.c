/* Unit tests of vigil-alertbotd's durable state: what is saved comes back
 * after a restart (dedup keys, cooldowns, breakers, budget, incidents),
 * saving is atomic, every table stays within its bound, and a damaged or
 * hostile snapshot is refused or cut to size, never trusted blindly. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alertbotd-state.h"
#include "json-util.h"

#define T0 1700000000LL

static char dir[] = "/tmp/test-alertbotd-state-XXXXXX";

static void setup(void)
{
        strcpy(dir, "/tmp/test-alertbotd-state-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
        char path[256];

        snprintf(path, sizeof(path), "%s/%s", dir, STATE_FILE_NAME);
        unlink(path);
        snprintf(path, sizeof(path), "%s/.%s.tmp", dir, STATE_FILE_NAME);
        unlink(path);
        rmdir(dir);
}

static void write_file(const char *text)
{
        char path[256];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", dir, STATE_FILE_NAME);
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fputs(text, f);
        fclose(f);
}

START_TEST(test_state_survives_save_and_load)
{
        struct alertbot_state *s, *back;
        struct state_incident *inc;
        struct state_unit *u;
        char key[STATE_KEY_MAX + 1];

        ck_assert_int_eq(state_new(&s), 0);
        ck_assert_int_eq(state_new(&back), 0);
        ck_assert_int_eq(state_dedup_key("abc", "2024-01-01T00:00:00Z", true, key), 0);
        state_dedup_add(s, key, T0);
        u = state_unit_get(s, "vigil-authd.service", true, T0);
        u->last_restart_at = T0;
        u->breaker = BREAKER_OPEN;
        u->opened_at = T0 + 5;
        u->failures[u->n_failures++] = T0 + 1;
        u->failures[u->n_failures++] = T0 + 5;
        state_budget_add(s, T0);
        inc = state_incident_add(s, "abc", "2024-01-01T00:00:00Z", "VigilDaemonDown", T0);
        strcpy(inc->unit, "vigil-authd.service");
        state_incident_add_action(inc, T0, "acted", "restart", "vigil-authd.service", "done")
                ->duration_ms = 1234;
        ck_assert_int_eq(state_save(s, dir), 0);

        ck_assert_int_eq(state_load(back, dir), 0);
        ck_assert(state_dedup_contains(back, key));
        ck_assert_uint_eq(back->n_units, 1);
        u = state_unit_get(back, "vigil-authd.service", false, T0);
        ck_assert_ptr_nonnull(u);
        ck_assert_int_eq(u->last_restart_at, T0);
        ck_assert_int_eq(u->breaker, BREAKER_OPEN);
        ck_assert_int_eq(u->opened_at, T0 + 5);
        ck_assert_uint_eq(u->n_failures, 2);
        ck_assert_int_eq(u->failures[1], T0 + 5);
        ck_assert_uint_eq(back->n_budget, 1);
        inc = state_incident_find(back, "abc", "2024-01-01T00:00:00Z");
        ck_assert_ptr_nonnull(inc);
        ck_assert_str_eq(inc->alertname, "VigilDaemonDown");
        ck_assert_uint_eq(inc->n_actions, 1);
        ck_assert_str_eq(inc->actions[0].result, "done");
        ck_assert_int_eq(inc->actions[0].duration_ms, 1234);
        state_free(s);
        state_free(back);
}
END_TEST

START_TEST(test_restarts_running_at_a_crash_load_as_interrupted)
{
        struct alertbot_state *s, *back;
        struct state_incident *inc;
        struct state_unit *u;

        ck_assert_int_eq(state_new(&s), 0);
        ck_assert_int_eq(state_new(&back), 0);
        inc = state_incident_add(s, "ab", "2024-01-01T00:00:00Z", "A", T0);
        state_incident_add_action(inc, T0, "acted", "restart", "vigil-authd.service", "started");
        u = state_unit_get(s, "vigil-authd.service", true, T0);
        u->breaker = BREAKER_HALF_OPEN;
        u->probe_in_flight = true;
        u->last_restart_at = T0;
        ck_assert_int_eq(state_save(s, dir), 0);

        ck_assert_int_eq(state_load(back, dir), 0);
        ck_assert_str_eq(back->incidents[0].actions[0].result, "interrupted");
        u = state_unit_get(back, "vigil-authd.service", false, T0);
        ck_assert_int_eq(u->breaker, BREAKER_OPEN);
        ck_assert(!u->probe_in_flight);
        state_free(s);
        state_free(back);
}
END_TEST

START_TEST(test_missing_snapshot_is_enoent_and_garbage_is_refused)
{
        struct alertbot_state *s;

        ck_assert_int_eq(state_new(&s), 0);
        ck_assert_int_eq(state_load(s, dir), -ENOENT);
        write_file("not json");
        ck_assert_int_eq(state_load(s, dir), -EBADMSG);
        write_file("{\"version\":99}");
        ck_assert_int_eq(state_load(s, dir), -EBADMSG);
        /* Wrong types inside are skipped, not trusted. */
        write_file("{\"version\":1,\"dedup\":[5,[\"k\"],[\"k2\",1]],\"units\":[{\"name\":7},"
                   "{\"name\":\"vigil-a.service\",\"failures\":\"x\"}],\"budget\":{},"
                   "\"incidents\":[{\"fingerprint\":\"a\"}]}");
        ck_assert_int_eq(state_load(s, dir), 0);
        ck_assert_uint_eq(s->n_dedup, 1);
        ck_assert_str_eq(s->dedup[0].key, "k2");
        ck_assert_uint_eq(s->n_units, 1);
        ck_assert_uint_eq(s->units[0].n_failures, 0);
        ck_assert_uint_eq(s->n_budget, 0);
        ck_assert_uint_eq(s->n_incidents, 0);
        state_free(s);
}
END_TEST

START_TEST(test_save_replaces_the_snapshot_atomically)
{
        struct alertbot_state *s;
        char path[256];
        struct stat st;

        ck_assert_int_eq(state_new(&s), 0);
        ck_assert_int_eq(state_save(s, dir), 0);
        state_budget_add(s, T0);
        ck_assert_int_eq(state_save(s, dir), 0);
        snprintf(path, sizeof(path), "%s/.%s.tmp", dir, STATE_FILE_NAME);
        ck_assert_int_eq(stat(path, &st), -1); /* no temporary file left behind */
        snprintf(path, sizeof(path), "%s/%s", dir, STATE_FILE_NAME);
        ck_assert_int_eq(stat(path, &st), 0);
        ck_assert_int_eq(st.st_mode & 0777, 0600);
        ck_assert_int_eq(state_save(s, "/nonexistent-dir-for-test"), -ENOENT);
        state_free(s);
}
END_TEST

START_TEST(test_dedup_table_is_bounded_and_expires)
{
        struct alertbot_state *s;
        char key[STATE_KEY_MAX + 1];

        ck_assert_int_eq(state_new(&s), 0);
        for (int i = 0; i < STATE_MAX_DEDUP + 10; i++) {
                snprintf(key, sizeof(key), "k%d", i);
                state_dedup_add(s, key, T0);
        }
        ck_assert_uint_eq(s->n_dedup, STATE_MAX_DEDUP);
        ck_assert(!state_dedup_contains(s, "k0"));
        ck_assert(state_dedup_contains(s, "k10"));
        state_dedup_add(s, "late", T0 + STATE_DEDUP_TTL + 1);
        ck_assert_uint_eq(s->n_dedup, 1);
        ck_assert(state_dedup_contains(s, "late"));
        ck_assert_int_eq(state_dedup_key("a", "b", false, key), 0);
        ck_assert_str_eq(key, "a|b|r");
        state_free(s);
}
END_TEST

START_TEST(test_incidents_are_bounded_and_resolved_ones_go_first)
{
        struct alertbot_state *s;
        char fp[32];

        ck_assert_int_eq(state_new(&s), 0);
        for (int i = 0; i < STATE_MAX_INCIDENTS; i++) {
                snprintf(fp, sizeof(fp), "%x", i);
                state_incident_add(s, fp, "t", "A", T0 + i);
        }
        s->incidents[10].resolved = true;
        state_incident_add(s, "new", "t", "A", T0 + 1000);
        ck_assert_uint_eq(s->n_incidents, STATE_MAX_INCIDENTS);
        ck_assert_ptr_null(state_incident_find(s, "a", "t")); /* the resolved one, index 10 */
        ck_assert_ptr_nonnull(state_incident_find(s, "0", "t"));
        state_incident_add(s, "newer", "t", "A", T0 + 1001);
        ck_assert_ptr_null(state_incident_find(s, "0", "t")); /* then the oldest */

        for (int i = 0; i < STATE_MAX_ACTIONS + 3; i++)
                state_incident_add_action(&s->incidents[0], T0 + i, "acted", "restart", "u",
                                          "done");
        ck_assert_uint_eq(s->incidents[0].n_actions, STATE_MAX_ACTIONS);
        ck_assert_int_eq(s->incidents[0].actions[0].at, T0 + 3);
        state_free(s);
}
END_TEST

START_TEST(test_units_are_bounded_and_open_breakers_are_kept)
{
        struct alertbot_state *s;
        char name[64];
        struct state_unit *u;

        ck_assert_int_eq(state_new(&s), 0);
        for (int i = 0; i < STATE_MAX_UNITS; i++) {
                snprintf(name, sizeof(name), "u%d.service", i);
                u = state_unit_get(s, name, true, T0 + i);
                if (i == 0)
                        u->breaker = BREAKER_OPEN;
        }
        ck_assert_ptr_nonnull(state_unit_get(s, "extra.service", true, T0 + 1000));
        ck_assert_uint_eq(s->n_units, STATE_MAX_UNITS);
        ck_assert_ptr_nonnull(state_unit_get(s, "u0.service", false, T0)); /* open: kept */
        ck_assert_ptr_null(state_unit_get(s, "u1.service", false, T0));    /* LRU closed: gone */
        {
                char longname[STATE_UNIT_MAX + 2];

                memset(longname, 'x', sizeof(longname) - 1);
                longname[sizeof(longname) - 1] = '\0';
                ck_assert_ptr_null(state_unit_get(s, longname, true, T0));
        }
        state_free(s);
}
END_TEST

START_TEST(test_budget_forgets_restarts_older_than_the_window)
{
        struct alertbot_state *s;

        ck_assert_int_eq(state_new(&s), 0);
        state_budget_add(s, T0);
        state_budget_add(s, T0 + 100);
        ck_assert_uint_eq(state_budget_count(s, T0 + 3599, 3600), 2);
        ck_assert_uint_eq(state_budget_count(s, T0 + 3600, 3600), 1);
        ck_assert_uint_eq(state_budget_count(s, T0 + 3700, 3600), 0);
        for (int i = 0; i < STATE_MAX_BUDGET + 5; i++)
                state_budget_add(s, T0);
        ck_assert_uint_eq(s->n_budget, STATE_MAX_BUDGET);
        state_free(s);
}
END_TEST

START_TEST(test_incidents_json_lists_newest_first_within_the_limit)
{
        struct alertbot_state *s;
        struct json_object *o, *list;

        ck_assert_int_eq(state_new(&s), 0);
        state_incident_add(s, "01", "t", "First", T0);
        state_incident_add(s, "02", "t", "Second", T0 + 1);
        state_incident_add(s, "03", "t", "Third", T0 + 2);
        o = state_incidents_json(s, 2);
        ck_assert(json_object_object_get_ex(o, "incidents", &list));
        ck_assert_uint_eq(json_object_array_length(list), 2);
        ck_assert_str_eq(json_object_get_string(json_object_object_get(
                                 json_object_array_get_idx(list, 0), "alertname")),
                         "Third");
        ck_assert_str_eq(json_object_get_string(json_object_object_get(
                                 json_object_array_get_idx(list, 0), "status")),
                         "firing");
        json_object_put(o);
        state_free(s);
}
END_TEST

int main(void)
{
        Suite *s = suite_create("alertbotd-state");
        TCase *tc = tcase_create("state");
        SRunner *sr;
        int failed;

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_state_survives_save_and_load);
        tcase_add_test(tc, test_restarts_running_at_a_crash_load_as_interrupted);
        tcase_add_test(tc, test_missing_snapshot_is_enoent_and_garbage_is_refused);
        tcase_add_test(tc, test_save_replaces_the_snapshot_atomically);
        tcase_add_test(tc, test_dedup_table_is_bounded_and_expires);
        tcase_add_test(tc, test_incidents_are_bounded_and_resolved_ones_go_first);
        tcase_add_test(tc, test_units_are_bounded_and_open_breakers_are_kept);
        tcase_add_test(tc, test_budget_forgets_restarts_older_than_the_window);
        tcase_add_test(tc, test_incidents_json_lists_newest_first_within_the_limit);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
