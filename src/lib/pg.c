/* PostgreSQL connection pool over libpq.
 *
 * A pool is a fixed array of slots, lent out by slot-pool.h. A slot's
 * PGconn is made on first use and dropped when it breaks, so the server
 * may come and go. Connects
 * are non-blocking (PQconnectStartParams + poll) so connect_timeout_ms is
 * honoured to the millisecond and a dead server costs a bounded wait. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dependency-metrics.h"
#include "macro.h"
#include "metrics.h"
#include "pg.h"
#include "slot-pool.h"
#include "trace.h"

#define DEFAULT_SIZE                 8
#define DEFAULT_ACQUIRE_TIMEOUT_MS   2000
#define DEFAULT_CONNECT_TIMEOUT_MS   2000
#define DEFAULT_STATEMENT_TIMEOUT_MS 5000
#define MAX_TIMEOUT_MS               (3600U * 1000U)
#define MAX_DSN_LEN                  4096
#define MAX_PASSWORD_LEN             1024
#define MAX_APPLICATION_NAME_LEN     63    /* NAMEDATALEN - 1 */
#define MAX_PARAMS                   65535 /* the protocol's limit */
#define MAX_MIGRATIONS               10000
#define MAX_OPERATION_LEN            16
#define MAX_PREPARED                 32 /* statements prepared per connection */
#define STMT_NAME_MAX                24 /* "vigil_<unsigned>" */
#define ERROR_LEN                    256

struct pg_conn {
        struct pg_pool *pool;
        PGconn *conn;
        char sqlstate[6];
        char error[ERROR_LEN];
        /* The statements prepared on conn, by text: prepared[i] is
         * "vigil_<i>". Forgotten when conn is replaced. */
        char *prepared[MAX_PREPARED];
        unsigned n_prepared;
};

struct pg_pool {
        struct slot_pool sp;
        atomic_bool failed;         /* pg_pool_set_failed() */
        pthread_mutex_t error_lock; /* of last_error */
        struct pg_conn *slots;
        unsigned size;
        unsigned acquire_timeout_ms;
        unsigned connect_timeout_ms;
        unsigned statement_timeout_ms;
        /* PQconnectStartParams arguments: defaults before the dsn, which
         * overrides them, then what overrides the dsn. */
        const char *keywords[5];
        const char *values[5];
        char *dsn;
        char *password;
        char *application_name;
        char last_error[ERROR_LEN]; /* of the last failed connect, under lock */
        struct dependency_metrics metrics;
        struct tracer *tracer;
};

static void noop_notice_processor(void *arg, const char *message)
{
        (void)arg;
        (void)message;
}

/* Copy a message into a fixed buffer without its trailing newline. */
static void set_message(char *buf, size_t size, const char *msg)
{
        size_t n;

        snprintf(buf, size, "%s", msg ? msg : "");
        n = strlen(buf);
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
                buf[--n] = '\0';
}

int pg_sqlstate_to_errno(const char *sqlstate)
{
        if (!sqlstate || strlen(sqlstate) != 5)
                return -EIO;
        if (strcmp(sqlstate, "23505") == 0)
                return -EEXIST;
        if (strcmp(sqlstate, "23514") == 0 || strcmp(sqlstate, "22003") == 0)
                return -ERANGE;
        if (strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0)
                return -EINVAL;
        if (strcmp(sqlstate, "40001") == 0 || strcmp(sqlstate, "40P01") == 0)
                return -EAGAIN;
        if (strcmp(sqlstate, "57014") == 0)
                return -ETIMEDOUT;
        /* connection_exception, admin/crash shutdown, cannot connect now */
        if (strncmp(sqlstate, "08", 2) == 0 || strcmp(sqlstate, "57P01") == 0 ||
            strcmp(sqlstate, "57P02") == 0 || strcmp(sqlstate, "57P03") == 0)
                return -ECONNRESET;
        return -EIO;
}

int pg_pool_new(const struct pg_pool_options *opts, struct pg_pool **ret)
{
        _cleanup_(pg_pool_freep) struct pg_pool *p = NULL;
        size_t n = 0;
        int r;

        if (!opts || !ret || !opts->dsn)
                return -EINVAL;
        if (strnlen(opts->dsn, MAX_DSN_LEN + 1) > MAX_DSN_LEN)
                return -EINVAL;
        if (opts->password && strnlen(opts->password, MAX_PASSWORD_LEN + 1) > MAX_PASSWORD_LEN)
                return -EINVAL;
        if (opts->application_name &&
            strnlen(opts->application_name, MAX_APPLICATION_NAME_LEN + 1) >
                    MAX_APPLICATION_NAME_LEN)
                return -EINVAL;
        if (opts->size > PG_POOL_MAX_SIZE || opts->acquire_timeout_ms > MAX_TIMEOUT_MS ||
            opts->connect_timeout_ms > MAX_TIMEOUT_MS ||
            opts->statement_timeout_ms > MAX_TIMEOUT_MS)
                return -EINVAL;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        pthread_mutex_init(&p->error_lock, NULL);
        p->size = opts->size ?: DEFAULT_SIZE;
        p->acquire_timeout_ms = opts->acquire_timeout_ms ?: DEFAULT_ACQUIRE_TIMEOUT_MS;
        p->connect_timeout_ms = opts->connect_timeout_ms ?: DEFAULT_CONNECT_TIMEOUT_MS;
        p->statement_timeout_ms = opts->statement_timeout_ms ?: DEFAULT_STATEMENT_TIMEOUT_MS;
        p->tracer = opts->tracer;

        p->slots = calloc(p->size, sizeof(*p->slots));
        if (!p->slots)
                return -ENOMEM;
        for (unsigned i = 0; i < p->size; i++)
                p->slots[i].pool = p;
        r = slot_pool_init(&p->sp, "postgres", p->size);
        if (r < 0)
                return r;

        p->dsn = strdup(opts->dsn);
        if (!p->dsn)
                return -ENOMEM;
        /* GSSAPI encryption is not tried unless the dsn asks for it:
         * looking for a Kerberos credential cache on every connect costs
         * time and most of a megabyte of resident Kerberos code, and
         * vigil's servers are on loopback or behind TLS. GSSAPI
         * authentication, which the server decides, still works. */
        p->keywords[n] = "gssencmode";
        p->values[n++] = "disable";
        p->keywords[n] = "dbname";
        p->values[n++] = p->dsn;
        if (opts->password) {
                p->password = strdup(opts->password);
                if (!p->password)
                        return -ENOMEM;
                p->keywords[n] = "password";
                p->values[n++] = p->password;
        }
        if (opts->application_name) {
                p->application_name = strdup(opts->application_name);
                if (!p->application_name)
                        return -ENOMEM;
                p->keywords[n] = "application_name";
                p->values[n++] = p->application_name;
        }
        p->keywords[n] = NULL;
        p->values[n] = NULL;

        /* Reject a malformed dsn now rather than at every connect. */
        {
                char *err = NULL;
                PQconninfoOption *info = PQconninfoParse(p->dsn, &err);

                if (!info) {
                        PQfreemem(err);
                        return -EINVAL;
                }
                PQconninfoFree(info);
        }

        if (opts->metrics) {
                r = dependency_metrics_get(opts->metrics, &p->metrics);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(p);
        return 0;
}

/* Wait until fd is ready for what libpq asks, or the deadline passes.
 * Returns 0, -ETIMEDOUT or a negative errno. */
static int wait_socket(int fd, bool for_write, uint64_t deadline_usec)
{
        struct pollfd pfd = {.fd = fd, .events = for_write ? POLLOUT : POLLIN};

        for (;;) {
                uint64_t now = now_usec(CLOCK_MONOTONIC);
                int timeout_ms, n;

                if (now >= deadline_usec)
                        return -ETIMEDOUT;
                timeout_ms = (int)((deadline_usec - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC);
                n = poll(&pfd, 1, timeout_ms);
                if (n > 0)
                        return 0;
                if (n == 0)
                        return -ETIMEDOUT;
                if (errno != EINTR)
                        return -errno;
        }
}

static void forget_prepared(struct pg_conn *c)
{
        for (unsigned i = 0; i < c->n_prepared; i++)
                free(c->prepared[i]);
        c->n_prepared = 0;
}

/* Connect a slot. Returns 0, or -ECONNREFUSED with the reason in
 * p->last_error (the server is down, refuses us, or took too long). */
static int slot_connect(struct pg_pool *p, struct pg_conn *c)
{
        PGconn *conn;
        PostgresPollingStatusType st = PGRES_POLLING_WRITING;
        uint64_t deadline = now_usec(CLOCK_MONOTONIC) + p->connect_timeout_ms * USEC_PER_MSEC;
        char err[ERROR_LEN] = "";
        char set_timeout[64];
        PGresult *res;
        int r = 0;

        conn = PQconnectStartParams(p->keywords, p->values, 1);
        if (!conn)
                return -ENOMEM;
        if (PQstatus(conn) == CONNECTION_BAD) {
                set_message(err, sizeof(err), PQerrorMessage(conn));
                r = -ECONNREFUSED;
                goto fail;
        }
        while (st != PGRES_POLLING_OK) {
                if (st == PGRES_POLLING_FAILED) {
                        set_message(err, sizeof(err), PQerrorMessage(conn));
                        r = -ECONNREFUSED;
                        goto fail;
                }
                r = wait_socket(PQsocket(conn), st == PGRES_POLLING_WRITING, deadline);
                if (r < 0) {
                        snprintf(err, sizeof(err), "connection timed out after %u ms",
                                 p->connect_timeout_ms);
                        r = -ECONNREFUSED;
                        goto fail;
                }
                st = PQconnectPoll(conn);
        }
        /* Notices ("… already exists, skipping") would go to stderr. */
        PQsetNoticeProcessor(conn, noop_notice_processor, NULL);

        snprintf(set_timeout, sizeof(set_timeout), "SET statement_timeout = %u",
                 p->statement_timeout_ms);
        res = PQexec(conn, set_timeout);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                set_message(err, sizeof(err), PQerrorMessage(conn));
                PQclear(res);
                r = -ECONNREFUSED;
                goto fail;
        }
        PQclear(res);

        forget_prepared(c);
        c->conn = conn;
        return 0;
fail:
        PQfinish(conn);
        pthread_mutex_lock(&p->error_lock);
        memcpy(p->last_error, err, sizeof(err));
        pthread_mutex_unlock(&p->error_lock);
        return r;
}

/* An idle connection whose socket is readable has been told something by
 * the server (a termination notice, a notification) or was closed: read
 * what is there without blocking, so the caller never gets a connection
 * known to be dead. A terminated backend sends its error and then closes,
 * so keep reading while there is more; a few reads suffice. */
static bool idle_conn_is_alive(PGconn *conn)
{
        for (int i = 0; i < 4; i++) {
                struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};

                if (PQstatus(conn) != CONNECTION_OK || pfd.fd < 0)
                        return false;
                if (poll(&pfd, 1, 0) <= 0)
                        break;
                if (!PQconsumeInput(conn))
                        return false;
                (void)PQisBusy(conn); /* parses what was read */
        }
        /* Notifications for a LISTEN nobody holds the connection for. */
        for (PGnotify *n = PQnotifies(conn); n; n = PQnotifies(conn))
                PQfreemem(n);
        return PQstatus(conn) == CONNECTION_OK;
}

static bool slot_connected(unsigned i, void *userdata)
{
        const struct pg_pool *p = userdata;

        return p->slots[i].conn != NULL;
}

static bool slot_idle_alive(unsigned i, void *userdata)
{
        const struct pg_pool *p = userdata;

        return idle_conn_is_alive(p->slots[i].conn);
}

static int slot_connect_at(unsigned i, void *userdata)
{
        struct pg_pool *p = userdata;

        return slot_connect(p, &p->slots[i]);
}

static void slot_disconnect(unsigned i, void *userdata)
{
        struct pg_pool *p = userdata;

        PQfinish(p->slots[i].conn);
        p->slots[i].conn = NULL;
}

static const struct slot_pool_connections connections = {
        .connected = slot_connected,
        .idle_alive = slot_idle_alive,
        .connect = slot_connect_at,
        .disconnect = slot_disconnect,
};

int pg_pool_acquire(struct pg_pool *p, struct pg_conn **ret)
{
        struct pg_conn *c;
        int i;

        if (!p || !ret)
                return -EINVAL;
        if (atomic_load(&p->failed)) {
                pthread_mutex_lock(&p->error_lock);
                snprintf(p->last_error, sizeof(p->last_error), "%s",
                         "failed on purpose by [faults] fail_dependency");
                pthread_mutex_unlock(&p->error_lock);
                return -ECONNREFUSED;
        }

        i = slot_pool_acquire(&p->sp, p->acquire_timeout_ms, &connections, p);
        if (i < 0)
                return i;
        c = &p->slots[i];
        c->sqlstate[0] = '\0';
        c->error[0] = '\0';
        *ret = c;
        return 0;
}

/* Whether a connection given back can be lent again: idle, or its
 * transaction rolled back. A command in flight, an unknown state or a
 * pipeline not ended (exec_pipelined()) is not reusable. */
static bool reusable(PGconn *conn)
{
        PGresult *res;
        bool ok;

        if (!conn || PQstatus(conn) != CONNECTION_OK || PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
                return false;
        switch (PQtransactionStatus(conn)) {
        case PQTRANS_IDLE:
                return true;
        case PQTRANS_INTRANS:
        case PQTRANS_INERROR:
                res = PQexec(conn, "ROLLBACK");
                ok = PQresultStatus(res) == PGRES_COMMAND_OK &&
                     PQtransactionStatus(conn) == PQTRANS_IDLE;
                PQclear(res);
                return ok;
        default:
                return false;
        }
}

void pg_pool_release(struct pg_conn *c)
{
        struct pg_pool *p;

        if (!c)
                return;
        p = c->pool;
        slot_pool_release(&p->sp, (unsigned)(c - p->slots), reusable(c->conn), &connections, p);
}

void pg_pool_free(struct pg_pool *p)
{
        if (!p)
                return;
        if (p->slots)
                slot_pool_disconnect_all(&p->sp, &connections, p);
        slot_pool_done(&p->sp);
        pthread_mutex_destroy(&p->error_lock);
        for (unsigned i = 0; p->slots && i < p->size; i++)
                forget_prepared(&p->slots[i]);
        free(p->slots);
        erase_and_free(p->dsn); /* may hold a password */
        erase_and_free(p->password);
        free(p->application_name);
        free(p);
}

/* The first SQL keyword, upper-cased: the operation name in spans and
 * metrics. Skips white space and comments; "QUERY" when there is none. */
static void sql_operation(const char *sql, char buf[static MAX_OPERATION_LEN + 1])
{
        size_t n = 0;

        for (;;) {
                while (isspace((unsigned char)*sql))
                        sql++;
                if (sql[0] == '-' && sql[1] == '-') {
                        sql += strcspn(sql, "\n");
                        continue;
                }
                if (sql[0] == '/' && sql[1] == '*') {
                        const char *end = strstr(sql + 2, "*/");

                        if (!end)
                                break;
                        sql = end + 2;
                        continue;
                }
                break;
        }
        while (n < MAX_OPERATION_LEN && isalpha((unsigned char)sql[n])) {
                buf[n] = (char)toupper((unsigned char)sql[n]);
                n++;
        }
        if (n == 0 || isalpha((unsigned char)sql[n]))
                snprintf(buf, MAX_OPERATION_LEN + 1, "QUERY");
        else
                buf[n] = '\0';
}

/* The results of one query sent in pipeline mode, up to the NULL that
 * ends them: the first (NULL when none came), the others cleared. */
static PGresult *pipeline_result(PGconn *pq)
{
        PGresult *res = NULL, *r;

        while ((r = PQgetResult(pq))) {
                if (!res)
                        res = r;
                else
                        PQclear(r);
        }
        return res;
}

/* Is the next result the end of a pipeline's synchronisation point? */
static bool pipeline_synced(PGconn *pq)
{
        PGresult *r = PQgetResult(pq);
        bool ok = PQresultStatus(r) == PGRES_PIPELINE_SYNC;

        PQclear(r);
        return ok;
}

/* sql (with parameters) and then then_sql (without), each followed by a
 * Sync, so each runs in an implicit transaction of its own, then_sql's
 * once sql's has ended; in one round trip. Returns sql's result (NULL when
 * it could not be sent) and in *ret_then_status then_sql's status. A
 * connection left in pipeline mode (it broke) is not reusable. */
static PGresult *exec_pipelined(PGconn *pq, const char *stmt, const char *sql, int n_params,
                                const char *const *params, const char *then_sql,
                                ExecStatusType *ret_then_status)
{
        PGresult *res, *then;

        *ret_then_status = PGRES_FATAL_ERROR;
        if (PQenterPipelineMode(pq) != 1)
                return NULL;
        if ((stmt[0] ? PQsendQueryPrepared(pq, stmt, n_params, params, NULL, NULL, 0)
                     : PQsendQueryParams(pq, sql, n_params, NULL, params, NULL, NULL, 0)) != 1 ||
            PQpipelineSync(pq) != 1 ||
            PQsendQueryParams(pq, then_sql, 0, NULL, NULL, NULL, NULL, 0) != 1 ||
            PQpipelineSync(pq) != 1)
                return NULL;
        res = pipeline_result(pq);
        if (!pipeline_synced(pq))
                return res;
        then = pipeline_result(pq);
        *ret_then_status = PQresultStatus(then);
        PQclear(then);
        if (pipeline_synced(pq))
                (void)PQexitPipelineMode(pq);
        return res;
}

/* A statement with parameters is prepared on the connection the first
 * time it runs there (one round trip more, once): the server then neither
 * parses nor plans it again, and after five runs may keep a generic plan.
 * Its name goes in stmt ("vigil_<i>"; "" when it runs unnamed, with
 * MAX_PREPARED others prepared or no memory to note it). Returns 0, or -1
 * with in *ret_res the failed result of preparing it: the error running it
 * would have given. */
static int prepare(struct pg_conn *c, const char *sql, int n_params,
                   char stmt[static STMT_NAME_MAX], PGresult **ret_res)
{
        PGresult *res;
        char *copy;

        stmt[0] = '\0';
        if (n_params == 0)
                return 0;
        for (unsigned i = 0; i < c->n_prepared; i++)
                if (strcmp(c->prepared[i], sql) == 0) {
                        snprintf(stmt, STMT_NAME_MAX, "vigil_%u", i);
                        return 0;
                }
        if (c->n_prepared == MAX_PREPARED || !(copy = strdup(sql)))
                return 0;
        snprintf(stmt, STMT_NAME_MAX, "vigil_%u", c->n_prepared);
        res = PQprepare(c->conn, stmt, sql, n_params, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                free(copy);
                *ret_res = res;
                return -1;
        }
        PQclear(res);
        c->prepared[c->n_prepared++] = copy;
        return 0;
}

/* Run sql with parameters (extended protocol), or without (simple protocol,
 * so one string may hold several statements), in a span with metrics; with
 * then_sql, pipelined with it (exec_pipelined()). */
static int exec_statement(struct pg_conn *c, const char *sql, bool extended, int n_params,
                          const char *const *params, const char *then_sql, int *ret_then,
                          PGresult **ret)
{
        struct pg_pool *p = c->pool;
        char operation[MAX_OPERATION_LEN + 1], name[MAX_OPERATION_LEN + 1 + 64];
        char stmt[STMT_NAME_MAX];
        const char *db = PQdb(c->conn);
        struct span *span;
        PGresult *res;
        ExecStatusType st;
        uint64_t start;
        int r = 0;

        sql_operation(sql, operation);
        snprintf(name, sizeof(name), "%s %.63s", operation, db ? db : "");
        span = span_start(p->tracer, name, SPAN_KIND_CLIENT, NULL);
        if (span_is_recording(span)) {
                const char *port = PQport(c->conn);

                span_set_attribute_string(span, "db.system", "postgresql");
                span_set_attribute_string(span, "db.operation.name", operation);
                span_set_attribute_string(span, "db.namespace", db);
                span_set_attribute_string(span, "server.address", PQhost(c->conn));
                if (port && *port)
                        span_set_attribute_int(span, "server.port", strtol(port, NULL, 10));
        }

        start = now_usec(CLOCK_MONOTONIC);
        if (!extended)
                res = PQexec(c->conn, sql);
        else if (prepare(c, sql, n_params, stmt, &res) < 0)
                ; /* res: why it cannot run */
        else if (then_sql) {
                ExecStatusType then_status;

                res = exec_pipelined(c->conn, stmt, sql, n_params, params, then_sql, &then_status);
                *ret_then = then_status == PGRES_COMMAND_OK || then_status == PGRES_TUPLES_OK
                                    ? 0
                                    : -EIO;
        } else if (stmt[0])
                res = PQexecPrepared(c->conn, stmt, n_params, params, NULL, NULL, 0);
        else
                res = PQexecParams(c->conn, sql, n_params, NULL, params, NULL, NULL, 0);
        st = PQresultStatus(res);

        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
                c->sqlstate[0] = '\0';
                c->error[0] = '\0';
        } else {
                const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

                if (PQstatus(c->conn) != CONNECTION_OK) {
                        /* Released connections in this state are closed. */
                        r = -ECONNRESET;
                        snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", state ?: "08006");
                } else {
                        r = pg_sqlstate_to_errno(state);
                        snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", state ?: "XX000");
                }
                set_message(c->error, sizeof(c->error),
                            res && PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                                    ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                                    : PQerrorMessage(c->conn));
                /* The SQLSTATE, never the message: it may quote values. */
                span_set_attribute_string(span, "error.type", c->sqlstate);
                span_set_attribute_string(span, "db.response.status_code", c->sqlstate);
                span_set_status(span, SPAN_STATUS_ERROR, c->sqlstate);
        }

        dependency_metrics_observe(&p->metrics, "postgres", operation,
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, span_context(span));
        span_end(span);

        if (r < 0 || !ret)
                PQclear(res);
        else
                *ret = res;
        return r;
}

int pg_exec(struct pg_conn *c, const char *sql, int n_params, const char *const *params,
            PGresult **ret)
{
        if (!c || !c->conn || !sql || n_params < 0 || n_params > MAX_PARAMS ||
            (n_params > 0 && !params))
                return -EINVAL;
        return exec_statement(c, sql, true, n_params, params, NULL, NULL, ret);
}

int pg_exec_then(struct pg_conn *c, const char *sql, int n_params, const char *const *params,
                 PGresult **ret, const char *then_sql, int *ret_then)
{
        int then = -EIO, r;

        if (!c || !c->conn || !sql || !then_sql || n_params < 0 || n_params > MAX_PARAMS ||
            (n_params > 0 && !params) || PQtransactionStatus(c->conn) != PQTRANS_IDLE)
                return -EINVAL;
        r = exec_statement(c, sql, true, n_params, params, then_sql, &then, ret);
        if (ret_then)
                *ret_then = then;
        return r;
}

const char *pg_conn_sqlstate(const struct pg_conn *c)
{
        return c ? c->sqlstate : "";
}

const char *pg_conn_error(const struct pg_conn *c)
{
        return c ? c->error : "";
}

PGconn *pg_conn_raw(struct pg_conn *c)
{
        return c ? c->conn : NULL;
}

int pg_begin(struct pg_conn *c)
{
        return pg_exec(c, "BEGIN", 0, NULL, NULL);
}

int pg_commit(struct pg_conn *c)
{
        _cleanup_(PQclearp) PGresult *res = NULL;
        int r;

        r = pg_exec(c, "COMMIT", 0, NULL, &res);
        if (r < 0)
                return r;
        /* COMMIT of a failed transaction succeeds as a ROLLBACK. */
        if (strcmp(PQcmdStatus(res), "ROLLBACK") == 0) {
                snprintf(c->sqlstate, sizeof(c->sqlstate), "25P02");
                snprintf(c->error, sizeof(c->error), "transaction was aborted and rolled back");
                return -EIO;
        }
        return 0;
}

int pg_rollback(struct pg_conn *c)
{
        return pg_exec(c, "ROLLBACK", 0, NULL, NULL);
}

void pg_pool_last_error(struct pg_pool *p, char *buf, size_t size)
{
        if (!buf || size == 0)
                return;
        if (!p) {
                buf[0] = '\0';
                return;
        }
        pthread_mutex_lock(&p->error_lock);
        snprintf(buf, size, "%s", p->last_error);
        pthread_mutex_unlock(&p->error_lock);
}

void pg_pool_set_failed(struct pg_pool *p, bool failed)
{
        atomic_store(&p->failed, failed);
}

int pg_pool_ping(struct pg_pool *p)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *c = NULL;
        int r;

        if (!p)
                return -EINVAL;

        /* A probe is not part of any trace. */
        struct span *probe = span_start_unsampled("ping");
        struct span *previous = trace_set_current(probe);

        r = pg_pool_acquire(p, &c);
        if (r >= 0)
                r = pg_exec(c, "SELECT 1", 0, NULL, NULL);
        trace_set_current(previous);
        span_end(probe);
        dependency_metrics_set_up(&p->metrics, "postgres", r >= 0);
        return r < 0 ? r : 0;
}

/* Versions applied so far, as a sorted array in *ret. */
static int applied_versions(struct pg_conn *c, const char *table, int **ret, size_t *ret_n)
{
        _cleanup_(PQclearp) PGresult *res = NULL;
        _cleanup_free_ char *sql = NULL;
        _cleanup_free_ int *versions = NULL;
        int n, r;

        if (asprintf(&sql, "SELECT version FROM %s ORDER BY version", table) < 0)
                return -ENOMEM;
        r = pg_exec(c, sql, 0, NULL, &res);
        if (r < 0)
                return r;
        n = PQntuples(res);
        versions = calloc((size_t)n + 1, sizeof(int));
        if (!versions)
                return -ENOMEM;
        for (int i = 0; i < n; i++)
                versions[i] = (int)strtol(PQgetvalue(res, i, 0), NULL, 10);
        *ret = TAKE_PTR(versions);
        *ret_n = (size_t)n;
        return 0;
}

static bool contains(const int *sorted, size_t n, int v)
{
        for (size_t i = 0; i < n && sorted[i] <= v; i++)
                if (sorted[i] == v)
                        return true;
        return false;
}

/* Apply one migration and record it, in one transaction. */
static int apply_migration(struct pg_conn *c, const char *table, const struct pg_migration *m)
{
        _cleanup_free_ char *insert = NULL;
        char version[16];
        const char *params[2] = {version, m->name};
        int r;

        if (asprintf(&insert, "INSERT INTO %s (version, name) VALUES ($1, $2)", table) < 0)
                return -ENOMEM;
        snprintf(version, sizeof(version), "%d", m->version);

        r = pg_begin(c);
        if (r < 0)
                return r;
        r = exec_statement(c, m->sql, false, 0, NULL, NULL, NULL, NULL);
        if (r >= 0)
                r = pg_exec(c, insert, 2, params, NULL);
        if (r >= 0)
                r = pg_commit(c);
        if (r < 0 && PQstatus(c->conn) == CONNECTION_OK &&
            PQtransactionStatus(c->conn) != PQTRANS_IDLE) {
                /* Keep the migration's error, not the rollback's. */
                char sqlstate[sizeof(c->sqlstate)], error[sizeof(c->error)];

                memcpy(sqlstate, c->sqlstate, sizeof(sqlstate));
                memcpy(error, c->error, sizeof(error));
                (void)pg_rollback(c);
                memcpy(c->sqlstate, sqlstate, sizeof(sqlstate));
                memcpy(c->error, error, sizeof(error));
        }
        return r;
}

int pg_migrate_with_error(struct pg_pool *p, const char *schema,
                          const struct pg_migration *migrations, size_t n_migrations, char *error,
                          size_t error_size)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *c = NULL;
        _cleanup_free_ char *table = NULL, *create = NULL;
        _cleanup_free_ int *applied = NULL;
        const char *lock_params[1] = {schema};
        char *quoted;
        size_t n_applied = 0;
        int r, r2;

        if (error && error_size > 0)
                error[0] = '\0';
        if (!p || !schema || !*schema || strlen(schema) > 63 || (n_migrations > 0 && !migrations) ||
            n_migrations > MAX_MIGRATIONS)
                return -EINVAL;
        for (size_t i = 0; i < n_migrations; i++)
                if (migrations[i].version <= 0 || !migrations[i].name || !migrations[i].sql ||
                    (i > 0 && migrations[i].version <= migrations[i - 1].version))
                        return -EINVAL;

        r = pg_pool_acquire(p, &c);
        if (r < 0) {
                if (error)
                        pg_pool_last_error(p, error, error_size);
                return r;
        }

        quoted = PQescapeIdentifier(c->conn, schema, strlen(schema));
        if (!quoted)
                return -ENOMEM;
        r = asprintf(&table, "%s.schema_migrations", quoted);
        PQfreemem(quoted);
        if (r < 0) {
                table = NULL;
                return -ENOMEM;
        }
        if (asprintf(&create,
                     "CREATE TABLE IF NOT EXISTS %s (version int PRIMARY KEY, name text NOT "
                     "NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                     table) < 0) {
                create = NULL;
                return -ENOMEM;
        }

        /* A session lock on this connection, held across the transactions. */
        r = pg_exec(c, "SELECT pg_advisory_lock(hashtext($1))", 1, lock_params, NULL);
        if (r < 0)
                goto out;
        r = pg_exec(c, create, 0, NULL, NULL);
        if (r >= 0)
                r = applied_versions(c, table, &applied, &n_applied);
        for (size_t i = 0; r >= 0 && i < n_migrations; i++)
                if (!contains(applied, n_applied, migrations[i].version))
                        r = apply_migration(c, table, &migrations[i]);

        if (r < 0 && error && error_size > 0)
                snprintf(error, error_size, "%s (SQLSTATE %s)", c->error, c->sqlstate);
        r2 = pg_exec(c, "SELECT pg_advisory_unlock(hashtext($1))", 1, lock_params, NULL);
        if (r2 < 0 && PQstatus(c->conn) == CONNECTION_OK) {
                /* A lock we cannot drop must not stay with a pooled
                 * connection: closing the session releases it. */
                PQfinish(c->conn);
                c->conn = NULL;
        }
out:
        if (r < 0 && error && error_size > 0 && !error[0])
                snprintf(error, error_size, "%s (SQLSTATE %s)", c->error, c->sqlstate);
        return r;
}

int pg_migrate(struct pg_pool *p, const char *schema, const struct pg_migration *migrations,
               size_t n_migrations)
{
        return pg_migrate_with_error(p, schema, migrations, n_migrations, NULL, 0);
}

void pg_int64_text(int64_t v, char buf[static PG_INT64_TEXT_MAX])
{
        snprintf(buf, PG_INT64_TEXT_MAX, "%" PRId64, v);
}

int pg_value_int64(const char *s, int64_t *ret)
{
        char *end;
        long long v;

        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0')
                return -EIO;
        *ret = v;
        return 0;
}
