/* PostgreSQL: a fixed-size connection pool over libpq with lazy connect and
 * reconnect, parameterised statements only, SQLSTATE-aware errors, embedded
 * versioned migrations under an advisory lock, and a client span plus
 * vigil_dependency_* metrics (dependency="postgres") per statement.
 *
 * Thread-safety: a pool is shared by all threads; a struct pg_conn belongs
 * to the thread that acquired it until pg_pool_release(). */
#pragma once

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

struct metrics_registry;
struct tracer;
struct pg_pool;
struct pg_conn;

#define PG_POOL_MAX_SIZE 256

struct pg_pool_options {
        const char *dsn; /* libpq conninfo, e.g. "host=127.0.0.1 dbname=vigil user=vigil_auth" */
        const char *password;          /* from a credential; NULL: none or in the dsn/.pgpass */
        const char *application_name;  /* "vigil-authd" */
        unsigned size;                 /* connections; 0: 8; at most PG_POOL_MAX_SIZE */
        unsigned acquire_timeout_ms;   /* wait for a free connection; 0: 2000 */
        unsigned connect_timeout_ms;   /* 0: 2000 */
        unsigned statement_timeout_ms; /* server-side statement_timeout; 0: 5000 */
        struct metrics_registry *metrics;
        struct tracer *tracer;
};

DEFINE_TRIVIAL_CLEANUP_FUNC(PGresult *, PQclear)

/* Create the pool. Does not connect: the server may be down at start-up.
 * The dsn is parsed by libpq as a conninfo string; password,
 * application_name override what it says. Returns 0, -EINVAL for a
 * malformed dsn or options out of range (timeouts above one hour, strings
 * too long), -EEXIST when metrics holds a vigil_dependency_* name as
 * another type of metric (see dependency_metrics_get()), or -ENOMEM. The password is kept
 * in memory only, wiped on free, and appears in no error text. */
int pg_pool_new(const struct pg_pool_options *opts, struct pg_pool **ret);
void pg_pool_free(struct pg_pool *p); /* accepts NULL; waits for nothing */
DEFINE_TRIVIAL_CLEANUP_FUNC(struct pg_pool *, pg_pool_free)

/* Borrow a connected connection, connecting or reconnecting as needed.
 * Returns 0, -ETIMEDOUT when every connection stays busy, or
 * -ECONNREFUSED when the server cannot be reached (refused, timed out,
 * authentication failed: pg_pool_last_error() says which). An idle
 * connection the server has closed meanwhile is noticed here, without a
 * round trip, and replaced. */
int pg_pool_acquire(struct pg_pool *p, struct pg_conn **ret);
/* The reason of the last failed connect (libpq's message, never the
 * password), "" when none, copied into buf. */
void pg_pool_last_error(struct pg_pool *p, char *buf, size_t size);
/* Give it back. A connection left inside a transaction is rolled back; a
 * broken one is closed and reconnected on next use. Accepts NULL. */
void pg_pool_release(struct pg_conn *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct pg_conn *, pg_pool_release)

/* Run one parameterised statement (params are text, NULL is SQL NULL).
 * Returns 0 and the result (PGRES_TUPLES_OK or PGRES_COMMAND_OK) in *ret
 * (ret may be NULL to discard it), or a negative errno from the SQLSTATE:
 *   -EEXIST    23505 unique_violation
 *   -ERANGE    23514 check_violation, 22003 numeric out of range
 *   -EINVAL    22xxx other data exceptions, 23xxx other integrity violations
 *   -EAGAIN    40001 serialization failure, 40P01 deadlock
 *   -ETIMEDOUT 57014 query_canceled (statement_timeout)
 *   -ECONNRESET the connection broke (it will be reconnected)
 *   -EIO       anything else
 * pg_conn_sqlstate() and pg_conn_error() describe the last failure (the
 * error text is the server's primary message, which may quote a value: log
 * it, never put it in a span). A span "<OPERATION> <database>" records
 * db.system, db.operation.name, db.namespace, server.address/port and, on
 * failure, error.type=SQLSTATE; statement parameters are never recorded.
 * A statement with parameters is prepared on its connection the first
 * time it runs there (up to 32 per connection; the others run unnamed):
 * the server parses and plans it once. PostgreSQL re-plans it when the
 * tables it reads change, but refuses (SQLSTATE 0A000) one whose result
 * columns would change, so a statement names its result columns. */
int pg_exec(struct pg_conn *c, const char *sql, int n_params, const char *const *params,
            PGresult **ret);
/* Like pg_exec(), outside a transaction block only (-EINVAL inside one),
 * and in the same round trip (libpq's pipeline mode) then_sql, without
 * parameters, in an implicit transaction of its own that starts once
 * sql's has ended, whatever its outcome: for a statement whose outcome
 * matters to nobody waiting, such as a NOTIFY after a commit. Returns
 * sql's outcome as pg_exec() does (its span and metrics are sql's, for
 * the two statements), and in *ret_then (may be NULL) 0 or -EIO for
 * then_sql's. */
int pg_exec_then(struct pg_conn *c, const char *sql, int n_params, const char *const *params,
                 PGresult **ret, const char *then_sql, int *ret_then);
const char *pg_conn_sqlstate(const struct pg_conn *c);
/* The errno pg_exec() returns for a SQLSTATE (see above); -EIO for NULL. */
int pg_sqlstate_to_errno(const char *sqlstate);
const char *pg_conn_error(const struct pg_conn *c);
PGconn *pg_conn_raw(struct pg_conn *c);

int pg_begin(struct pg_conn *c);
/* Also fails, with -EIO and SQLSTATE 25P02, when the transaction had
 * already failed so that COMMIT only rolled it back. */
int pg_commit(struct pg_conn *c);
int pg_rollback(struct pg_conn *c);

/* One round trip on a pooled connection ("SELECT 1"), for /ready. Sets
 * vigil_dependency_up{dependency="postgres"} to the outcome. Returns 0 or
 * the negative errno of pg_pool_acquire()/pg_exec(). */
int pg_pool_ping(struct pg_pool *p);
/* While failed, pg_pool_acquire() fails at once with -ECONNREFUSED, as when
 * the server is down: for [faults] fail_dependency. Any thread. */
void pg_pool_set_failed(struct pg_pool *p, bool failed);

struct pg_migration {
        int version; /* 1, 2, 3, … applied in order, each once */
        const char *name;
        const char *sql; /* may hold several statements */
};

/* One entry of a migration table: PG_MIGRATION(1, "users", "CREATE TABLE …"). */
#define PG_MIGRATION(migration_version, migration_name, migration_sql)                             \
        {                                                                                          \
                .version = (migration_version), .name = (migration_name), .sql = (migration_sql)   \
        }

/* A schema and the migrations that build it, declared once by the domain
 * code that owns its tables: PG_SCHEMA("auth", table) over a static array
 * of PG_MIGRATION entries. */
struct pg_schema {
        const char *name;
        const struct pg_migration *migrations;
        size_t n_migrations;
};

#define PG_SCHEMA(schema_name, migration_table)                                                    \
        {                                                                                          \
                .name = (schema_name), .migrations = (migration_table),                            \
                .n_migrations = ELEMENTSOF(migration_table)                                        \
        }

/* Apply the migrations not yet recorded in <schema>.schema_migrations, each
 * in its own transaction, while holding a session advisory lock keyed on the
 * schema name so concurrent starters apply each exactly once. The schema
 * must exist (the package or dev stack creates it, owned by the service's
 * role). Versions must be positive and strictly increasing (-EINVAL
 * otherwise). A failing migration is rolled back, left unrecorded, and
 * stops the run: the ones before it stay applied. Returns 0 or a negative
 * errno (as pg_exec()). The migrations run under the pool's
 * statement_timeout, and so does waiting for another starter's lock. */
int pg_migrate(struct pg_pool *p, const char *schema, const struct pg_migration *migrations,
               size_t n_migrations);
/* The same, and on failure a description ("message (SQLSTATE xxxxx)") in
 * error, for the caller to log. */
int pg_migrate_with_error(struct pg_pool *p, const char *schema,
                          const struct pg_migration *migrations, size_t n_migrations, char *error,
                          size_t error_size);

/* Room for a bigint parameter's text, and the text itself. */
#define PG_INT64_TEXT_MAX 21
void pg_int64_text(int64_t v, char buf[static PG_INT64_TEXT_MAX]);
/* A bigint column's value (PQgetvalue's text). Returns 0, or -EIO when it
 * is not one: the server sent something the query does not produce. */
int pg_value_int64(const char *s, int64_t *ret);
