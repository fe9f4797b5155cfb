#include "inventoryd-reservations.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inventoryd-products.h"

#define TIMESTAMP_TEXT(column)                                                                     \
        "to_char(" column " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

const char inventory_reservations_migration_sql[] =
        "CREATE TABLE inventory.reservations ("
        "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        "  product_id bigint NOT NULL REFERENCES inventory.products (id),"
        "  user_id bigint NOT NULL CHECK (user_id > 0),"
        "  quantity integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000),"
        "  state text NOT NULL DEFAULT 'held'"
        "    CHECK (state IN ('held', 'paid', 'released', 'expired')),"
        "  created_at timestamptz NOT NULL DEFAULT now(),"
        "  expires_at timestamptz NOT NULL,"
        "  ended_at timestamptz,"
        "  payment_id bigint,"
        "  CHECK ((state = 'held') = (ended_at IS NULL)),"
        "  CHECK ((state = 'paid') = (payment_id IS NOT NULL))"
        ");"
        /* The sweep's scan: only what is still held. */
        "CREATE INDEX reservations_held_expires_at ON inventory.reservations (expires_at)"
        "  WHERE state = 'held';"
        "CREATE INDEX reservations_product_id ON inventory.reservations (product_id);"
        /* What vigil-paymentd may do here, and nothing more: ask about one
         * of its user's reservations, and mark one paid in the
         * transaction of the payment. SECURITY DEFINER with a fixed
         * search_path, so they run as this schema's owner and cannot be
         * redirected to other objects by the caller. */
        "CREATE FUNCTION inventory.reservation_state(p_reservation bigint, p_user bigint)"
        "  RETURNS text LANGUAGE sql STABLE SECURITY DEFINER"
        "  SET search_path = pg_catalog, pg_temp AS $$"
        "  SELECT CASE WHEN state = 'held' AND expires_at <= now() THEN 'expired'"
        "              ELSE state END"
        "  FROM inventory.reservations WHERE id = p_reservation AND user_id = p_user $$;"
        "CREATE FUNCTION inventory.pay_reservation(p_reservation bigint, p_user bigint,"
        "                                          p_payment bigint)"
        "  RETURNS boolean LANGUAGE sql VOLATILE SECURITY DEFINER"
        "  SET search_path = pg_catalog, pg_temp AS $$"
        "  WITH paid AS ("
        "    UPDATE inventory.reservations"
        "    SET state = 'paid', payment_id = p_payment, ended_at = now()"
        "    WHERE id = p_reservation AND user_id = p_user AND state = 'held'"
        "      AND expires_at > now()"
        "    RETURNING 1)"
        "  SELECT count(*) = 1 FROM paid $$;"
        "REVOKE ALL ON FUNCTION inventory.reservation_state(bigint, bigint) FROM PUBLIC;"
        "REVOKE ALL ON FUNCTION inventory.pay_reservation(bigint, bigint, bigint) FROM PUBLIC";

int inventory_reserve(struct pg_pool *pool, int64_t product_id, int64_t user_id, int64_t quantity,
                      int64_t ttl_seconds, struct reservation *ret)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *conn = NULL;
        _cleanup_(PQclearp) PGresult *res = NULL;
        char id[PG_INT64_TEXT_MAX], user[PG_INT64_TEXT_MAX], n[PG_INT64_TEXT_MAX],
                ttl[PG_INT64_TEXT_MAX];
        struct reservation rv = {.product_id = product_id, .quantity = quantity};
        int r;

        if (quantity < INVENTORY_QUANTITY_MIN || quantity > INVENTORY_QUANTITY_MAX)
                return -EINVAL;
        if (ttl_seconds < 1 || ttl_seconds > 86400 || user_id < 1)
                return -EINVAL;

        r = pg_pool_acquire(pool, &conn);
        if (r < 0)
                return r;

        pg_int64_text(product_id, id);
        pg_int64_text(quantity, n);
        pg_int64_text(user_id, user);
        pg_int64_text(ttl_seconds, ttl);
        const char *params[] = {id, n, user, ttl};
        /* The row lock taken by the UPDATE serialises concurrent
         * reservations of one product; each re-checks stock >= $2 on the
         * row version it finally updates, so none can oversell. The
         * reservation row is written by the same statement: both or
         * neither. */
        r = pg_exec(conn,
                    "WITH p AS ("
                    "  UPDATE inventory.products"
                    "  SET stock = stock - $2, units_sold = units_sold + $2, updated_at = now()"
                    "  WHERE id = $1 AND stock >= $2 RETURNING id, stock),"
                    " r AS ("
                    "  INSERT INTO inventory.reservations"
                    "    (product_id, user_id, quantity, expires_at)"
                    "  SELECT id, $3, $2, now() + make_interval(secs => $4::int) FROM p"
                    "  RETURNING id, expires_at)"
                    " SELECT r.id, p.stock, " TIMESTAMP_TEXT("r.expires_at") " FROM p, r",
                    4, params, &res);
        if (r < 0)
                return r;
        if (PQntuples(res) == 1) {
                r = pg_value_int64(PQgetvalue(res, 0, 0), &rv.id);
                if (r >= 0)
                        r = pg_value_int64(PQgetvalue(res, 0, 1), &rv.remaining);
                if (r < 0)
                        return r;
                snprintf(rv.expires_at, sizeof(rv.expires_at), "%s", PQgetvalue(res, 0, 2));
                *ret = rv;
                return 0;
        }

        /* Nothing updated: tell an unknown product from too little stock. */
        PQclear(TAKE_PTR(res));
        r = pg_exec(conn, "SELECT 1 FROM inventory.products WHERE id = $1", 1, params, &res);
        if (r < 0)
                return r;
        return PQntuples(res) == 0 ? -ENOENT : -ENOSPC;
}

int inventory_release(struct pg_pool *pool, int64_t reservation_id, int64_t user_id,
                      int64_t *ret_product_id)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *conn = NULL;
        _cleanup_(PQclearp) PGresult *res = NULL;
        char id[PG_INT64_TEXT_MAX], user[PG_INT64_TEXT_MAX];
        int r;

        r = pg_pool_acquire(pool, &conn);
        if (r < 0)
                return r;

        pg_int64_text(reservation_id, id);
        pg_int64_text(user_id, user);
        const char *params[] = {id, user};
        /* Only the statement that moves the row out of 'held' returns its
         * stock: a concurrent sweep or payment finds state <> 'held'
         * after waiting for our row lock, and does nothing. */
        r = pg_exec(conn,
                    "WITH r AS ("
                    "  UPDATE inventory.reservations SET state = 'released', ended_at = now()"
                    "  WHERE id = $1 AND user_id = $2 AND state = 'held'"
                    "  RETURNING product_id, quantity),"
                    " p AS ("
                    "  UPDATE inventory.products p"
                    "  SET stock = p.stock + r.quantity, units_sold = p.units_sold - r.quantity,"
                    "      updated_at = now()"
                    "  FROM r WHERE p.id = r.product_id RETURNING p.id)"
                    " SELECT id FROM p",
                    2, params, &res);
        if (r < 0)
                return r;
        if (PQntuples(res) == 1)
                return pg_value_int64(PQgetvalue(res, 0, 0), ret_product_id);

        PQclear(TAKE_PTR(res));
        r = pg_exec(conn, "SELECT state FROM inventory.reservations WHERE id = $1 AND user_id = $2",
                    2, params, &res);
        if (r < 0)
                return r;
        if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "paid") == 0)
                return -EALREADY;
        return -ENOENT;
}

int inventory_expire_due(struct pg_pool *pool, int64_t *ret_expired, int64_t **ret_product_ids,
                         size_t *ret_n_products)
{
        _cleanup_(pg_pool_releasep) struct pg_conn *conn = NULL;
        _cleanup_(PQclearp) PGresult *res = NULL;
        _cleanup_free_ int64_t *ids = NULL;
        char limit[PG_INT64_TEXT_MAX];
        int64_t expired = 0;
        size_t n;
        int r;

        r = pg_pool_acquire(pool, &conn);
        if (r < 0)
                return r;

        pg_int64_text(INVENTORY_SWEEP_BATCH, limit);
        const char *params[] = {limit};
        /* One statement, one transaction. The advisory lock (released at
         * its end) keeps two sweeps from updating the same products in
         * different orders; SKIP LOCKED passes over reservations being
         * released or paid right now, and the UPDATE re-checks 'held' on
         * the rows it locked. */
        r = pg_exec(conn,
                    "WITH due AS ("
                    "  SELECT id FROM inventory.reservations"
                    "  WHERE state = 'held' AND expires_at <= now()"
                    "    AND (SELECT pg_try_advisory_xact_lock("
                    "           hashtext('inventory.reservations expiry')))"
                    "  ORDER BY id LIMIT $1::int FOR UPDATE SKIP LOCKED),"
                    " e AS ("
                    "  UPDATE inventory.reservations r SET state = 'expired', ended_at = now()"
                    "  FROM due WHERE r.id = due.id AND r.state = 'held'"
                    "  RETURNING r.product_id, r.quantity),"
                    " s AS ("
                    "  SELECT product_id, sum(quantity) AS quantity, count(*) AS n"
                    "  FROM e GROUP BY product_id),"
                    " p AS ("
                    "  UPDATE inventory.products p"
                    "  SET stock = p.stock + s.quantity, units_sold = p.units_sold - s.quantity,"
                    "      updated_at = now()"
                    "  FROM s WHERE p.id = s.product_id RETURNING p.id)"
                    " SELECT s.product_id, s.n FROM s JOIN p ON p.id = s.product_id",
                    1, params, &res);
        if (r < 0)
                return r;

        n = (size_t)PQntuples(res);
        if (n > 0) {
                ids = calloc(n, sizeof(*ids));
                if (!ids)
                        return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                int64_t count;

                r = pg_value_int64(PQgetvalue(res, (int)i, 0), &ids[i]);
                if (r >= 0)
                        r = pg_value_int64(PQgetvalue(res, (int)i, 1), &count);
                if (r < 0)
                        return r;
                expired += count;
        }

        *ret_expired = expired;
        *ret_product_ids = TAKE_PTR(ids);
        *ret_n_products = n;
        return 0;
}

bool inventory_role_name_is_valid(const char *name)
{
        size_t n = name ? strlen(name) : 0;

        if (n == 0 || n > INVENTORY_ROLE_NAME_MAX || (name[0] >= '0' && name[0] <= '9'))
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
                      name[i] == '_'))
                        return false;
        return true;
}

int inventory_grant_payment_role(struct pg_pool *pool, const char *role)
{
        static const char *const grants[] = {
                "GRANT USAGE ON SCHEMA inventory TO ",
                "GRANT EXECUTE ON FUNCTION inventory.reservation_state(bigint, bigint) TO ",
                "GRANT EXECUTE ON FUNCTION inventory.pay_reservation(bigint, bigint, bigint) TO ",
        };
        _cleanup_(pg_pool_releasep) struct pg_conn *conn = NULL;
        _cleanup_(PQclearp) PGresult *res = NULL;
        int r;

        if (!inventory_role_name_is_valid(role))
                return -EINVAL;

        r = pg_pool_acquire(pool, &conn);
        if (r < 0)
                return r;

        const char *params[] = {role};
        r = pg_exec(conn,
                    "SELECT CASE WHEN NOT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)"
                    "  THEN 'missing'"
                    "  WHEN has_schema_privilege($1, 'inventory', 'USAGE')"
                    "   AND has_function_privilege($1,"
                    "         'inventory.reservation_state(bigint, bigint)', 'EXECUTE')"
                    "   AND has_function_privilege($1,"
                    "         'inventory.pay_reservation(bigint, bigint, bigint)', 'EXECUTE')"
                    "  THEN 'granted' ELSE 'grant' END",
                    1, params, &res);
        if (r < 0)
                return r;
        if (PQntuples(res) != 1)
                return -EIO;
        if (strcmp(PQgetvalue(res, 0, 0), "missing") == 0)
                return -ENOENT;
        if (strcmp(PQgetvalue(res, 0, 0), "granted") == 0)
                return 0;

        /* The name was checked above: only [a-z0-9_], so quoting it is
         * enough (GRANT takes no parameters). */
        r = pg_begin(conn);
        if (r < 0)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(grants); i++) {
                char sql[192];

                snprintf(sql, sizeof(sql), "%s\"%s\"", grants[i], role);
                r = pg_exec(conn, sql, 0, NULL, NULL);
                if (r < 0)
                        return r; /* the release rolls back */
        }
        r = pg_commit(conn);
        return r < 0 ? r : 1;
}
