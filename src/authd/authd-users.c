#include "authd-users.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "password.h"

static const struct pg_migration migrations[] = {
        PG_MIGRATION(1, "users",
                     "CREATE TABLE auth.users ("
                     "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     "  username text NOT NULL UNIQUE"
                     "    CHECK (username ~ '^[A-Za-z0-9_.-]{3,64}$'),"
                     "  password_hash text NOT NULL CHECK (password_hash LIKE '$y$%'),"
                     "  created_at timestamptz NOT NULL DEFAULT now()"
                     ")"),
};
const struct pg_schema authd_schema = PG_SCHEMA(AUTHD_SCHEMA, migrations);

int users_validate_username(const char *username)
{
        size_t n = strlen(username);

        if (n < USERNAME_MIN_LENGTH || n > USERNAME_MAX_LENGTH)
                return -EINVAL;
        for (const char *p = username; *p; p++) {
                char c = *p;
                bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                          (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
                if (!ok)
                        return -EINVAL;
        }
        return 0;
}

int users_register(struct pg_pool *pool, struct password_hasher *hasher, const char *username,
                   const char *password, int64_t *ret_user_id)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *conn = NULL;
        _cleanup_(PQclearp) PGresult *res = NULL;
        _cleanup_free_ char *hash = NULL;
        int r;

        r = users_validate_username(username);
        if (r < 0)
                return r;

        /* Hash first: the slow part must not hold a pooled connection. */
        r = password_hash(hasher, password, &hash);
        if (r < 0)
                return r;

        r = pg_pool_acquire(pool, &conn);
        if (r < 0)
                return r;

        const char *params[] = {username, hash};
        r = pg_exec(conn,
                    "INSERT INTO auth.users (username, password_hash) VALUES ($1, $2) "
                    "RETURNING id",
                    2, params, &res);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return -EIO;

        return pg_value_int64(PQgetvalue(res, 0, 0), ret_user_id);
}

int users_authenticate(struct pg_pool *pool, struct password_hasher *hasher, const char *username,
                       const char *password, int64_t *ret_user_id)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *conn = NULL;
        _cleanup_(PQclearp) PGresult *res = NULL;
        _cleanup_free_ char *hash = NULL;
        int64_t id = 0;
        int r;

        /* An invalid name cannot exist, but it costs the same as a wrong
         * password so the answer reveals nothing. */
        if (users_validate_username(username) >= 0) {
                r = pg_pool_acquire(pool, &conn);
                if (r < 0)
                        return r;

                const char *params[] = {username};
                r = pg_exec(conn, "SELECT id, password_hash FROM auth.users WHERE username = $1", 1,
                            params, &res);
                if (r < 0)
                        return r;
                if (PQntuples(res) == 1) {
                        r = pg_value_int64(PQgetvalue(res, 0, 0), &id);
                        if (r < 0)
                                return r;
                        hash = strdup(PQgetvalue(res, 0, 1));
                        if (!hash)
                                return -ENOMEM;
                }
                /* Verifying is slow: give the connection back first. */
                pg_pool_release(TAKE_PTR(conn));
        }

        r = password_verify(hasher, password, hash);
        if (r < 0)
                return r;

        *ret_user_id = id;
        return 0;
}

int users_count(struct pg_pool *pool, int64_t *ret_count)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *conn = NULL;
        _cleanup_(PQclearp) PGresult *res = NULL;
        int r;

        r = pg_pool_acquire(pool, &conn);
        if (r < 0)
                return r;
        r = pg_exec(conn, "SELECT count(*) FROM auth.users", 0, NULL, &res);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return -EIO;
        return pg_value_int64(PQgetvalue(res, 0, 0), ret_count);
}
