/* Unit tests for the pg module against a real PostgreSQL started by
 * tests/with-servers.sh (dev-stack.sh): pool behaviour, parameterised
 * statements, SQLSTATE mapping, reconnects, transactions and migrations. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dependency-metrics.h"
#include "macro.h"
#include "metrics.h"
#include "otlp-sink.h"
#include "pg.h"
#include "trace.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(struct metrics_registry *, metrics_registry_free);

static const char *service_dsn; /* vigil_auth, search_path auth */
static char service_password[256];
static const char *admin_dsn;

static void read_password(const char *path, char *buf, size_t size)
{
        FILE *f = fopen(path, "re");
        size_t n;

        if (!f) {
                fprintf(stderr, "cannot read %s\n", path);
                exit(99);
        }
        n = fread(buf, 1, size - 1, f);
        fclose(f);
        buf[n] = '\0';
        buf[strcspn(buf, "\r\n")] = '\0';
}

static struct pg_pool *pool_with(unsigned size, unsigned acquire_timeout_ms,
                                 unsigned statement_timeout_ms, struct metrics_registry *metrics)
{
        struct pg_pool *p = NULL;
        struct pg_pool_options opts = {
                .dsn = service_dsn,
                .password = service_password,
                .application_name = "vigil-test-pg",
                .size = size,
                .acquire_timeout_ms = acquire_timeout_ms,
                .statement_timeout_ms = statement_timeout_ms,
                .metrics = metrics,
        };

        ck_assert_int_eq(pg_pool_new(&opts, &p), 0);
        return p;
}

static struct pg_pool *pool(void)
{
        return pool_with(2, 0, 0, NULL);
}

/* Run sql as the superuser on a connection of its own. */
static void admin_exec(const char *sql)
{
        PGconn *conn = PQconnectdb(admin_dsn);
        PGresult *res;

        ck_assert_msg(PQstatus(conn) == CONNECTION_OK, "admin connect: %s", PQerrorMessage(conn));
        res = PQexec(conn, sql);
        ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK ||
                              PQresultStatus(res) == PGRES_TUPLES_OK,
                      "%s: %s", sql, PQerrorMessage(conn));
        PQclear(res);
        PQfinish(conn);
}

static long query_long(struct pg_conn *c, const char *sql)
{
        _cleanup_(PQclearp) PGresult *res = NULL;

        ck_assert_int_eq(pg_exec(c, sql, 0, NULL, &res), 0);
        ck_assert_int_eq(PQntuples(res), 1);
        return strtol(PQgetvalue(res, 0, 0), NULL, 10);
}

/* A fresh table in the service's own schema for one test. */
static void make_table(struct pg_conn *c, const char *name)
{
        char sql[256];

        snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s", name);
        ck_assert_int_eq(pg_exec(c, sql, 0, NULL, NULL), 0);
        snprintf(sql, sizeof(sql),
                 "CREATE TABLE %s (id serial PRIMARY KEY, email text UNIQUE, "
                 "qty int CHECK (qty >= 0), note text)",
                 name);
        ck_assert_int_eq(pg_exec(c, sql, 0, NULL, NULL), 0);
}

START_TEST(test_released_connection_is_reused)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 0, 0, NULL);
        struct pg_conn *c = NULL;
        int pid;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        pid = PQbackendPID(pg_conn_raw(c));
        ck_assert_int_gt(pid, 0);
        pg_pool_release(c);
        c = NULL;
        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        ck_assert_int_eq(PQbackendPID(pg_conn_raw(c)), pid);
        pg_pool_release(c);
        pg_pool_release(NULL);
}
END_TEST

START_TEST(test_acquire_times_out_when_every_connection_is_busy)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(2, 100, 0, NULL);
        struct pg_conn *a = NULL, *b = NULL, *c = NULL;

        ck_assert_int_eq(pg_pool_acquire(p, &a), 0);
        ck_assert_int_eq(pg_pool_acquire(p, &b), 0);
        ck_assert_int_eq(pg_pool_acquire(p, &c), -ETIMEDOUT);
        ck_assert_ptr_null(c);
        pg_pool_release(b);
        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        pg_pool_release(a);
        pg_pool_release(c);
}
END_TEST

struct release_later {
        struct pg_conn *c;
};

static void *release_after_a_while(void *arg)
{
        struct release_later *rl = arg;

        usleep(100 * 1000);
        pg_pool_release(rl->c);
        return NULL;
}

START_TEST(test_acquire_waits_for_a_released_connection)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 10000, 0, NULL);
        struct release_later rl = {};
        struct pg_conn *c = NULL;
        pthread_t t;

        ck_assert_int_eq(pg_pool_acquire(p, &rl.c), 0);
        ck_assert_int_eq(pthread_create(&t, NULL, release_after_a_while, &rl), 0);
        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        ck_assert_int_eq(query_long(c, "SELECT 7"), 7);
        pthread_join(t, NULL);
        pg_pool_release(c);
}
END_TEST

START_TEST(test_injection_looking_parameter_stays_data)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool();
        _cleanup_(pg_pool_releasep) struct pg_conn *c = NULL;
        _cleanup_(PQclearp) PGresult *res = NULL;
        const char *evil = "x'); DROP TABLE t_inject; --";
        const char *params[2] = {evil, NULL};

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        make_table(c, "t_inject");
        ck_assert_int_eq(
                pg_exec(c, "INSERT INTO t_inject (email, note) VALUES ($1, $2)", 2, params, NULL),
                0);
        ck_assert_int_eq(pg_exec(c, "SELECT email, note IS NULL FROM t_inject WHERE email = $1", 1,
                                 params, &res),
                         0);
        ck_assert_int_eq(PQntuples(res), 1);
        ck_assert_str_eq(PQgetvalue(res, 0, 0), evil);
        ck_assert_str_eq(PQgetvalue(res, 0, 1), "t");
        ck_assert_int_eq(query_long(c, "SELECT count(*) FROM t_inject"), 1);
}
END_TEST

START_TEST(test_sqlstates_map_to_errnos)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool();
        _cleanup_(pg_pool_releasep) struct pg_conn *c = NULL;
        const char *dup[1] = {"a@example.com"};
        const char *bad_int[1] = {"abc"};

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        make_table(c, "t_states");

        ck_assert_int_eq(pg_exec(c, "INSERT INTO t_states (email) VALUES ($1)", 1, dup, NULL), 0);
        ck_assert_int_eq(pg_exec(c, "INSERT INTO t_states (email) VALUES ($1)", 1, dup, NULL),
                         -EEXIST);
        ck_assert_str_eq(pg_conn_sqlstate(c), "23505");
        ck_assert_str_ne(pg_conn_error(c), "");

        ck_assert_int_eq(pg_exec(c, "INSERT INTO t_states (qty) VALUES (-1)", 0, NULL, NULL),
                         -ERANGE);
        ck_assert_str_eq(pg_conn_sqlstate(c), "23514");
        ck_assert_int_eq(pg_exec(c, "SELECT 2147483647::int + 1", 0, NULL, NULL), -ERANGE);
        ck_assert_str_eq(pg_conn_sqlstate(c), "22003");
        ck_assert_int_eq(pg_exec(c, "SELECT $1::int", 1, bad_int, NULL), -EINVAL);
        ck_assert_str_eq(pg_conn_sqlstate(c), "22P02");
        ck_assert_int_eq(pg_exec(c, "SELECT * FROM no_such_table", 0, NULL, NULL), -EIO);
        ck_assert_str_eq(pg_conn_sqlstate(c), "42P01");

        /* A success clears the last failure. */
        ck_assert_int_eq(query_long(c, "SELECT 1"), 1);
        ck_assert_str_eq(pg_conn_sqlstate(c), "");

        ck_assert_int_eq(pg_sqlstate_to_errno("40001"), -EAGAIN);
        ck_assert_int_eq(pg_sqlstate_to_errno("40P01"), -EAGAIN);
        ck_assert_int_eq(pg_sqlstate_to_errno("57P01"), -ECONNRESET);
        ck_assert_int_eq(pg_sqlstate_to_errno(NULL), -EIO);
        ck_assert_int_eq(pg_sqlstate_to_errno("2350"), -EIO);
}
END_TEST

START_TEST(test_statement_timeout_is_etimedout_and_connection_survives)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 0, 50, NULL);
        _cleanup_(pg_pool_releasep) struct pg_conn *c = NULL;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        ck_assert_int_eq(pg_exec(c, "SELECT pg_sleep(5)", 0, NULL, NULL), -ETIMEDOUT);
        ck_assert_str_eq(pg_conn_sqlstate(c), "57014");
        ck_assert_int_eq(query_long(c, "SELECT 3"), 3);
}
END_TEST

static void terminate_backend(int pid)
{
        char sql[256];

        snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d, 5000)", pid);
        admin_exec(sql);
}

START_TEST(test_idle_connection_terminated_by_server_is_replaced)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 0, 0, NULL);
        struct pg_conn *c = NULL;
        int pid;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        pid = PQbackendPID(pg_conn_raw(c));
        pg_pool_release(c);
        c = NULL;

        terminate_backend(pid);

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        ck_assert_int_ne(PQbackendPID(pg_conn_raw(c)), pid);
        ck_assert_int_eq(query_long(c, "SELECT 5"), 5);
        pg_pool_release(c);
}
END_TEST

START_TEST(test_held_connection_terminated_reports_econnreset_then_reconnects)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 0, 0, NULL);
        struct pg_conn *c = NULL;
        int pid;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        pid = PQbackendPID(pg_conn_raw(c));
        terminate_backend(pid);
        ck_assert_int_eq(pg_exec(c, "SELECT 1", 0, NULL, NULL), -ECONNRESET);
        pg_pool_release(c);
        c = NULL;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        ck_assert_int_ne(PQbackendPID(pg_conn_raw(c)), pid);
        ck_assert_int_eq(query_long(c, "SELECT 6"), 6);
        pg_pool_release(c);
}
END_TEST

START_TEST(test_release_rolls_back_an_open_transaction)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 0, 0, NULL);
        struct pg_conn *c = NULL;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        make_table(c, "t_tx");
        ck_assert_int_eq(pg_begin(c), 0);
        ck_assert_int_eq(pg_exec(c, "INSERT INTO t_tx (note) VALUES ('x')", 0, NULL, NULL), 0);
        pg_pool_release(c);
        c = NULL;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        ck_assert_int_eq(PQtransactionStatus(pg_conn_raw(c)), PQTRANS_IDLE);
        ck_assert_int_eq(query_long(c, "SELECT count(*) FROM t_tx"), 0);

        ck_assert_int_eq(pg_begin(c), 0);
        ck_assert_int_eq(pg_exec(c, "INSERT INTO t_tx (note) VALUES ('y')", 0, NULL, NULL), 0);
        ck_assert_int_eq(pg_commit(c), 0);
        ck_assert_int_eq(query_long(c, "SELECT count(*) FROM t_tx"), 1);

        ck_assert_int_eq(pg_begin(c), 0);
        ck_assert_int_eq(pg_exec(c, "INSERT INTO t_tx (note) VALUES ('z')", 0, NULL, NULL), 0);
        ck_assert_int_eq(pg_rollback(c), 0);
        ck_assert_int_eq(query_long(c, "SELECT count(*) FROM t_tx"), 1);
        pg_pool_release(c);
}
END_TEST

START_TEST(test_commit_of_a_failed_transaction_fails)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool();
        _cleanup_(pg_pool_releasep) struct pg_conn *c = NULL;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        ck_assert_int_eq(pg_begin(c), 0);
        ck_assert_int_eq(pg_exec(c, "SELECT 1/0", 0, NULL, NULL), -EINVAL);
        ck_assert_int_eq(pg_commit(c), -EIO);
        ck_assert_str_eq(pg_conn_sqlstate(c), "25P02");
        ck_assert_int_eq(PQtransactionStatus(pg_conn_raw(c)), PQTRANS_IDLE);
}
END_TEST

START_TEST(test_exec_then_runs_both_each_in_a_transaction_of_its_own)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 0, 0, NULL);
        _cleanup_(PQclearp) PGresult *res = NULL;
        struct pg_conn *c = NULL;
        const char *params[] = {"a"};
        int then = 1, pid;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        make_table(c, "t_then");

        /* Both statements ran; the result is the first's. */
        ck_assert_int_eq(pg_exec_then(c, "INSERT INTO t_then (note) VALUES ($1) RETURNING id", 1,
                                      params, &res, "INSERT INTO t_then (note) VALUES ('then')",
                                      &then),
                         0);
        ck_assert_int_eq(then, 0);
        ck_assert_int_eq(PQntuples(res), 1);
        ck_assert_str_eq(PQgetvalue(res, 0, 0), "1");
        ck_assert_int_eq(query_long(c, "SELECT count(*) FROM t_then"), 2);

        /* Each in a transaction of its own: the second runs (and commits)
         * when the first fails, and the first's failure is returned. */
        ck_assert_int_eq(pg_exec_then(c, "INSERT INTO t_then (qty) VALUES (-1)", 0, NULL, NULL,
                                      "INSERT INTO t_then (note) VALUES ('after')", &then),
                         -ERANGE);
        ck_assert_str_eq(pg_conn_sqlstate(c), "23514");
        ck_assert_int_eq(then, 0);
        ck_assert_int_eq(query_long(c, "SELECT count(*) FROM t_then WHERE note = 'after'"), 1);

        /* The second's failure is its own, and rolls back only itself. */
        ck_assert_int_eq(pg_exec_then(c, "INSERT INTO t_then (note) VALUES ('kept')", 0, NULL, NULL,
                                      "SELECT 1/0", &then),
                         0);
        ck_assert_int_eq(then, -EIO);
        ck_assert_int_eq(query_long(c, "SELECT count(*) FROM t_then WHERE note = 'kept'"), 1);

        /* Not inside a transaction block, where a Sync would not commit. */
        ck_assert_int_eq(pg_begin(c), 0);
        ck_assert_int_eq(pg_exec_then(c, "SELECT 1", 0, NULL, NULL, "SELECT 2", NULL), -EINVAL);
        ck_assert_int_eq(pg_rollback(c), 0);

        /* The connection is left out of pipeline mode, and lent again. */
        ck_assert_int_eq(PQpipelineStatus(pg_conn_raw(c)), PQ_PIPELINE_OFF);
        pid = PQbackendPID(pg_conn_raw(c));
        pg_pool_release(c);
        c = NULL;
        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        ck_assert_int_eq(PQbackendPID(pg_conn_raw(c)), pid);
        ck_assert_int_eq(query_long(c, "SELECT 7"), 7);
        pg_pool_release(c);
}
END_TEST

/* The statements prepared on c's connection whose text is sql ("" for all). */
static long prepared_count(struct pg_conn *c, const char *sql)
{
        char q[512];

        snprintf(q, sizeof(q),
                 "SELECT count(*) FROM pg_prepared_statements"
                 " WHERE '%s' = '' OR statement = '%s'",
                 sql, sql);
        return query_long(c, q);
}

static long add_one(struct pg_conn *c, const char *sql, const char *value)
{
        _cleanup_(PQclearp) PGresult *res = NULL;

        ck_assert_int_eq(pg_exec(c, sql, 1, (const char *const[]){value}, &res), 0);
        ck_assert_int_eq(PQntuples(res), 1);
        return strtol(PQgetvalue(res, 0, 0), NULL, 10);
}

START_TEST(test_a_statement_with_parameters_is_prepared_once_per_connection)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 0, 0, NULL);
        _cleanup_(PQclearp) PGresult *res = NULL;
        const char *sql = "SELECT $1::int + 1";
        struct pg_conn *c = NULL;
        int then = 1, pid;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(add_one(c, sql, i == 1 ? "41" : "1"), i == 1 ? 42 : 2);
        ck_assert_int_eq(prepared_count(c, sql), 1);
        /* Without parameters, nothing is prepared: the count's own query. */
        ck_assert_int_eq(prepared_count(c, ""), 1);

        /* The pipelined path runs the prepared statement too. */
        ck_assert_int_eq(
                pg_exec_then(c, sql, 1, (const char *const[]){"9"}, &res, "SELECT 1", &then), 0);
        ck_assert_int_eq(then, 0);
        ck_assert_str_eq(PQgetvalue(res, 0, 0), "10");
        ck_assert_int_eq(prepared_count(c, ""), 1);

        /* Prepared inside a transaction that rolls back, it stays. */
        ck_assert_int_eq(pg_begin(c), 0);
        ck_assert_int_eq(add_one(c, "SELECT $1::int + 2", "1"), 3);
        ck_assert_int_eq(pg_rollback(c), 0);
        ck_assert_int_eq(add_one(c, "SELECT $1::int + 2", "2"), 4);

        /* A new connection prepares again. */
        pid = PQbackendPID(pg_conn_raw(c));
        terminate_backend(pid);
        ck_assert_int_eq(pg_exec(c, sql, 1, (const char *const[]){"0"}, NULL), -ECONNRESET);
        pg_pool_release(c);
        c = NULL;
        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        ck_assert_int_ne(PQbackendPID(pg_conn_raw(c)), pid);
        ck_assert_int_eq(add_one(c, sql, "6"), 7);
        ck_assert_int_eq(prepared_count(c, sql), 1);
        pg_pool_release(c);
}
END_TEST

START_TEST(test_a_statement_that_cannot_be_prepared_fails_with_its_own_error)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 0, 0, NULL);
        const char *bad = "SELECT $1::int FROM no_such_table";
        struct pg_conn *c = NULL;

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        for (int i = 0; i < 2; i++) {
                ck_assert_int_eq(pg_exec(c, bad, 1, (const char *const[]){"1"}, NULL), -EIO);
                ck_assert_str_eq(pg_conn_sqlstate(c), "42P01"); /* not 42P05: none left */
        }
        ck_assert_int_eq(add_one(c, "SELECT $1::int + 1", "1"), 2);
        ck_assert_int_eq(prepared_count(c, ""), 1);
        pg_pool_release(c);
}
END_TEST

START_TEST(test_statements_past_the_prepared_limit_run_unnamed)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool_with(1, 0, 0, NULL);
        struct pg_conn *c = NULL;
        char sql[64];

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        for (int round = 0; round < 2; round++)
                for (int i = 0; i < 40; i++) {
                        snprintf(sql, sizeof(sql), "SELECT $1::int + %d", i);
                        ck_assert_int_eq(add_one(c, sql, "100"), 100 + i);
                }
        ck_assert_int_eq(prepared_count(c, ""), 32); /* MAX_PREPARED in pg.c */
        pg_pool_release(c);
}
END_TEST

/* A schema of its own, owned by the service's role, as the packages make. */
static void make_schema(char *buf, size_t size, const char *tag)
{
        char dsn[512], sql[256];
        PGconn *conn;
        PGresult *res;

        snprintf(buf, size, "mig_%s_%d", tag, (int)getpid());
        /* The admin dsn names database postgres; the schemas live in vigil. */
        snprintf(dsn, sizeof(dsn), "%s dbname=vigil", admin_dsn);
        conn = PQconnectdb(dsn);
        ck_assert_msg(PQstatus(conn) == CONNECTION_OK, "%s", PQerrorMessage(conn));
        res = PQexec(conn, "SET client_min_messages = warning");
        PQclear(res);
        snprintf(sql, sizeof(sql),
                 "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s AUTHORIZATION vigil_auth", buf,
                 buf);
        res = PQexec(conn, sql);
        ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
        PQclear(res);
        PQfinish(conn);
}

static long count_in(struct pg_pool *p, const char *schema, const char *table)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *c = NULL;
        char sql[256];

        snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.%s", schema, table);
        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        return query_long(c, sql);
}

static char migration_sql_1[256], migration_sql_2[256];

static void migrations_for(const char *schema, struct pg_migration m[2])
{
        /* Neither statement may run twice: a re-application fails. */
        snprintf(migration_sql_1, sizeof(migration_sql_1),
                 "CREATE TABLE %s.runs (n int NOT NULL); INSERT INTO %s.runs VALUES (1)", schema,
                 schema);
        snprintf(migration_sql_2, sizeof(migration_sql_2),
                 "CREATE TABLE %s.items (id int PRIMARY KEY); INSERT INTO %s.runs VALUES (2)",
                 schema, schema);
        m[0] = (struct pg_migration){1, "create runs", migration_sql_1};
        m[1] = (struct pg_migration){2, "create items", migration_sql_2};
}

START_TEST(test_migrations_apply_once_and_rerun_is_a_no_op)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool();
        struct pg_migration m[2];
        char schema[64];

        make_schema(schema, sizeof(schema), "once");
        migrations_for(schema, m);
        ck_assert_int_eq(pg_migrate(p, schema, m, 1), 0);
        ck_assert_int_eq(count_in(p, schema, "schema_migrations"), 1);
        ck_assert_int_eq(pg_migrate(p, schema, m, 2), 0);
        ck_assert_int_eq(pg_migrate(p, schema, m, 2), 0);
        ck_assert_int_eq(count_in(p, schema, "schema_migrations"), 2);
        ck_assert_int_eq(count_in(p, schema, "runs"), 2);
        ck_assert_int_eq(count_in(p, schema, "items"), 0);
}
END_TEST

struct migrate_thread {
        const char *schema;
        struct pg_migration *m;
        int r;
};

static void *migrate_in_thread(void *arg)
{
        struct migrate_thread *mt = arg;
        struct pg_pool *p = pool();

        mt->r = pg_migrate(p, mt->schema, mt->m, 2);
        pg_pool_free(p);
        return NULL;
}

START_TEST(test_concurrent_migrations_apply_each_once)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool();
        struct pg_migration m[2];
        struct migrate_thread mt[2];
        pthread_t t[2];
        char schema[64];

        make_schema(schema, sizeof(schema), "concurrent");
        migrations_for(schema, m);
        for (size_t i = 0; i < 2; i++) {
                mt[i] = (struct migrate_thread){.schema = schema, .m = m, .r = 1};
                ck_assert_int_eq(pthread_create(&t[i], NULL, migrate_in_thread, &mt[i]), 0);
        }
        for (size_t i = 0; i < 2; i++) {
                pthread_join(t[i], NULL);
                ck_assert_int_eq(mt[i].r, 0);
        }
        ck_assert_int_eq(count_in(p, schema, "schema_migrations"), 2);
        ck_assert_int_eq(count_in(p, schema, "runs"), 2);
}
END_TEST

START_TEST(test_failing_migration_rolls_back_and_is_not_recorded)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool();
        _cleanup_(pg_pool_releasep) struct pg_conn *c = NULL;
        struct pg_migration m[3];
        char schema[64], bad[256], error[256], sql[256];

        make_schema(schema, sizeof(schema), "failing");
        migrations_for(schema, m);
        snprintf(bad, sizeof(bad), "CREATE TABLE %s.half (id int); SELECT 1/0", schema);
        m[1] = (struct pg_migration){2, "half done", bad};
        m[2] = (struct pg_migration){3, "never reached", "SELECT 1"};

        ck_assert_int_eq(pg_migrate_with_error(p, schema, m, 3, error, sizeof(error)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(error, "22012"));
        ck_assert_int_eq(count_in(p, schema, "schema_migrations"), 1);

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_tables WHERE schemaname = '%s'",
                 schema);
        /* schema_migrations and runs; not half. */
        ck_assert_int_eq(query_long(c, sql), 2);
        /* The advisory lock was let go: another run gets it at once. */
        ck_assert_int_eq(pg_migrate(p, schema, m, 1), 0);
}
END_TEST

START_TEST(test_migrate_rejects_unordered_versions)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = pool();
        struct pg_migration m[2] = {{2, "b", "SELECT 1"}, {1, "a", "SELECT 1"}};

        ck_assert_int_eq(pg_migrate(p, "auth", m, 2), -EINVAL);
        ck_assert_int_eq(pg_migrate(p, NULL, m, 2), -EINVAL);
}
END_TEST

static int closed_port(void)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
        close(fd); /* nobody listens there now */
        return ntohs(sa.sin_port);
}

START_TEST(test_ping_fails_cleanly_against_a_closed_port)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = NULL;
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = NULL;
        _cleanup_free_ char *text = NULL;
        char dsn[128], error[256];
        size_t len;
        struct pg_pool_options opts = {
                .dsn = dsn,
                .password = "hunter2-secret",
                .connect_timeout_ms = 1000,
        };

        ck_assert_int_eq(metrics_registry_new(&r), 0);
        opts.metrics = r;
        snprintf(dsn, sizeof(dsn), "host=127.0.0.1 port=%d dbname=vigil user=x", closed_port());
        ck_assert_int_eq(pg_pool_new(&opts, &p), 0);
        ck_assert_int_eq(pg_pool_ping(p), -ECONNREFUSED);
        pg_pool_last_error(p, error, sizeof(error));
        ck_assert_str_ne(error, "");
        ck_assert_ptr_null(strstr(error, "hunter2"));
        ck_assert_int_eq(metrics_render(r, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        ck_assert_ptr_nonnull(strstr(text, "vigil_dependency_up{dependency=\"postgres\"} 0"));
}
END_TEST

START_TEST(test_pool_new_rejects_bad_options)
{
        struct pg_pool *p = NULL;
        struct pg_pool_options opts = {.dsn = "host=127.0.0.1 port="};

        ck_assert_int_eq(pg_pool_new(NULL, &p), -EINVAL);
        opts.dsn = "host='unterminated";
        ck_assert_int_eq(pg_pool_new(&opts, &p), -EINVAL);
        opts.dsn = "host=127.0.0.1";
        opts.size = PG_POOL_MAX_SIZE + 1;
        ck_assert_int_eq(pg_pool_new(&opts, &p), -EINVAL);
        ck_assert_ptr_null(p);
        pg_pool_free(NULL);
}
END_TEST

START_TEST(test_statements_are_counted_in_dependency_metrics)
{
        _cleanup_(metrics_registry_freep) struct metrics_registry *r = NULL;
        _cleanup_free_ char *text = NULL;
        struct dependency_metrics dm, again;
        struct pg_pool *p, *q;
        struct pg_conn *c = NULL;
        size_t len;

        ck_assert_int_eq(metrics_registry_new(&r), 0);
        /* Two pools on one registry share the families. */
        p = pool_with(1, 0, 0, r);
        q = pool_with(1, 0, 0, r);
        ck_assert_int_eq(pg_pool_ping(p), 0);
        ck_assert_int_eq(pg_pool_acquire(q, &c), 0);
        ck_assert_int_eq(pg_exec(c, " -- leading comment\n select 1", 0, NULL, NULL), 0);
        ck_assert_int_eq(pg_exec(c, "SELECT * FROM nowhere", 0, NULL, NULL), -EIO);
        pg_pool_release(c);

        ck_assert_int_eq(dependency_metrics_get(r, &dm), 0);
        ck_assert_int_eq(dependency_metrics_get(r, &again), 0);
        ck_assert_ptr_eq(dm.duration, again.duration);
        ck_assert_ptr_eq(dm.errors, again.errors);
        ck_assert_ptr_eq(dm.up, again.up);
        ck_assert_uint_eq(
                metrics_histogram_count(metrics_child2(dm.duration, "postgres", "SELECT")), 3);
        ck_assert_double_eq(metrics_value(metrics_child2(dm.errors, "postgres", "SELECT")), 1);
        ck_assert_double_eq(metrics_value(metrics_child1(dm.up, "postgres")), 1);

        ck_assert_int_eq(metrics_render(r, METRICS_FORMAT_PROMETHEUS, &text, &len), 0);
        ck_assert_ptr_nonnull(strstr(text, "vigil_dependency_request_duration_seconds_count{"
                                           "dependency=\"postgres\",operation=\"SELECT\"} 3"));
        pg_pool_free(p);
        pg_pool_free(q);
}
END_TEST

START_TEST(test_spans_name_the_operation_and_never_hold_parameters)
{
        _cleanup_free_ char *bodies = NULL;
        struct otlp_sink sink;
        struct tracer *t = NULL;
        struct pg_pool *p = NULL;
        struct pg_conn *c = NULL;
        char endpoint[64];
        const char *params[1] = {"secret-param-value"};
        struct tracer_options topts = {.service_name = "vigil-test", .sample_ratio = 1.0};
        struct pg_pool_options opts = {
                .dsn = service_dsn,
                .password = service_password,
        };

        otlp_sink_start(&sink);
        snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%u/v1/traces", sink.port);
        topts.endpoint = endpoint;
        ck_assert_int_eq(tracer_new(&topts, &t), 0);
        opts.tracer = t;
        ck_assert_int_eq(pg_pool_new(&opts, &p), 0);

        ck_assert_int_eq(pg_pool_acquire(p, &c), 0);
        make_table(c, "t_spans");
        ck_assert_int_eq(pg_exec(c, "INSERT INTO t_spans (email) VALUES ($1)", 1, params, NULL), 0);
        ck_assert_int_eq(pg_exec(c, "INSERT INTO t_spans (email) VALUES ($1)", 1, params, NULL),
                         -EEXIST);
        pg_pool_release(c);
        pg_pool_free(p);
        tracer_free(t); /* flushes */
        bodies = otlp_sink_stop(&sink);

        ck_assert_ptr_nonnull(strstr(bodies, "\"INSERT vigil\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"postgresql\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"db.operation.name\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"db.namespace\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"server.port\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"error.type\""));
        ck_assert_ptr_nonnull(strstr(bodies, "\"23505\""));
        ck_assert_ptr_null(strstr(bodies, "secret-param-value"));
        ck_assert_ptr_null(strstr(bodies, service_password));
}
END_TEST

START_TEST(test_int64_text_round_trips_and_non_integers_are_eio)
{
        char buf[PG_INT64_TEXT_MAX];
        int64_t v = 0;

        pg_int64_text(INT64_MIN, buf);
        ck_assert_str_eq(buf, "-9223372036854775808");
        ck_assert_int_eq(pg_value_int64(buf, &v), 0);
        ck_assert(v == INT64_MIN);
        ck_assert_int_eq(pg_value_int64("42", &v), 0);
        ck_assert(v == 42);
        v = 7;
        ck_assert_int_eq(pg_value_int64("", &v), -EIO);
        ck_assert_int_eq(pg_value_int64("12x", &v), -EIO);
        ck_assert_int_eq(pg_value_int64("9223372036854775808", &v), -EIO);
        ck_assert(v == 7);
}
END_TEST

static Suite *pg_suite(void)
{
        Suite *s = suite_create("pg");
        TCase *tc = tcase_create("pool");

        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_released_connection_is_reused);
        tcase_add_test(tc, test_int64_text_round_trips_and_non_integers_are_eio);
        tcase_add_test(tc, test_acquire_times_out_when_every_connection_is_busy);
        tcase_add_test(tc, test_acquire_waits_for_a_released_connection);
        tcase_add_test(tc, test_pool_new_rejects_bad_options);
        tcase_add_test(tc, test_ping_fails_cleanly_against_a_closed_port);
        tcase_add_test(tc, test_idle_connection_terminated_by_server_is_replaced);
        tcase_add_test(tc, test_held_connection_terminated_reports_econnreset_then_reconnects);
        suite_add_tcase(s, tc);

        tc = tcase_create("statements");
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_injection_looking_parameter_stays_data);
        tcase_add_test(tc, test_sqlstates_map_to_errnos);
        tcase_add_test(tc, test_statement_timeout_is_etimedout_and_connection_survives);
        tcase_add_test(tc, test_release_rolls_back_an_open_transaction);
        tcase_add_test(tc, test_commit_of_a_failed_transaction_fails);
        tcase_add_test(tc, test_exec_then_runs_both_each_in_a_transaction_of_its_own);
        tcase_add_test(tc, test_a_statement_with_parameters_is_prepared_once_per_connection);
        tcase_add_test(tc, test_a_statement_that_cannot_be_prepared_fails_with_its_own_error);
        tcase_add_test(tc, test_statements_past_the_prepared_limit_run_unnamed);
        tcase_add_test(tc, test_statements_are_counted_in_dependency_metrics);
        tcase_add_test(tc, test_spans_name_the_operation_and_never_hold_parameters);
        suite_add_tcase(s, tc);

        tc = tcase_create("migrations");
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_migrations_apply_once_and_rerun_is_a_no_op);
        tcase_add_test(tc, test_concurrent_migrations_apply_each_once);
        tcase_add_test(tc, test_failing_migration_rolls_back_and_is_not_recorded);
        tcase_add_test(tc, test_migrate_rejects_unordered_versions);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        const char *password_file = getenv("VIGIL_DEV_PG_PASSWORD_FILE_AUTH");
        SRunner *sr;
        int failed;

        service_dsn = getenv("VIGIL_DEV_PG_DSN_AUTH");
        admin_dsn = getenv("VIGIL_TEST_PG_ADMIN_DSN");
        if (!service_dsn || !password_file || !admin_dsn) {
                fprintf(stderr, "SKIP: no PostgreSQL; run through tests/with-servers.sh\n");
                return 77;
        }
        read_password(password_file, service_password, sizeof(service_password));

        sr = srunner_create(pg_suite());
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
