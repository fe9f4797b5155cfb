/* Stock reservations of vigil-inventoryd: the inventory.reservations table,
 * owned by a user, expiring, and never overselling. Knows nothing of HTTP
 * or of the cache.
 *
 * A reservation is 'held' from the moment its stock is taken and ends in
 * exactly one of three ways: 'paid' (by vigil-paymentd's charge, through
 * inventory.pay_reservation(), see below), 'released' (by its owner,
 * DELETE /reservation/{id}) or 'expired' (by the sweep, once expires_at has
 * passed unpaid). Every transition is one conditional UPDATE … WHERE
 * state = 'held', and the stock goes back to the product only in the
 * statement that won that transition, so under any interleaving of
 * reserve, release, expiry and payment each unit is either in stock or in
 * exactly one held or paid reservation: stock + units in held and paid
 * reservations is constant (ignoring operators editing stock by hand),
 * and the CHECK (stock >= 0) stays the second line of defence.
 *
 * Lock order, so that none of these can deadlock another: reserving locks
 * a product and inserts a new reservation; releasing and expiring lock
 * reservations first and their products second; paying locks one
 * reservation only. Concurrent sweeps (several inventoryd instances) are
 * serialised by a transaction-level advisory lock, and a sweep skips
 * reservations another transaction holds (FOR UPDATE SKIP LOCKED).
 *
 * vigil-paymentd may pay a reservation in the transaction of its payment
 * through two SECURITY DEFINER functions in the inventory schema, the only
 * thing of this schema it is granted (inventory_grant_payment_role()):
 *   inventory.reservation_state(reservation, user) → 'held', 'expired',
 *       'released', 'paid', or NULL when the user has no such reservation;
 *   inventory.pay_reservation(reservation, user, payment) → true when it
 *       moved the reservation from held (and not yet expired) to paid.
 *
 * Thread-safety: every function may be called from any thread; state lives
 * in the pool. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pg.h"

/* Reservations returned to stock per sweep statement. */
#define INVENTORY_SWEEP_BATCH 1000
/* "2026-11-24T04:20:00Z" and NUL. */
#define INVENTORY_TIMESTAMP_MAX 32
/* Longest PostgreSQL role name (NAMEDATALEN - 1). */
#define INVENTORY_ROLE_NAME_MAX 63

/* Migration 2 of the inventory schema (see inventory_schema). */
extern const char inventory_reservations_migration_sql[];

struct reservation {
        int64_t id;
        int64_t product_id;
        int64_t quantity;
        int64_t remaining; /* the product's stock after the reservation */
        char expires_at[INVENTORY_TIMESTAMP_MAX];
};

/* Reserve quantity units (INVENTORY_QUANTITY_MIN..MAX, else -EINVAL) of a
 * product for user_id, held for ttl_seconds (1..86400, else -EINVAL): in
 * one statement, the conditional UPDATE … WHERE stock >= quantity (which
 * also adds them to units_sold) and the reservation row. Returns 0 and
 * the reservation, -ENOENT for an unknown product, -ENOSPC when the stock
 * is insufficient (nothing changed), or a negative errno from the pool.
 * Not idempotent: calling it twice reserves twice. */
int inventory_reserve(struct pg_pool *pool, int64_t product_id, int64_t user_id, int64_t quantity,
                      int64_t ttl_seconds, struct reservation *ret);

/* Release a held reservation of user_id, returning its stock. Returns 0
 * and the product id, -ENOENT when user_id has no such reservation or it
 * already ended as released or expired, -EALREADY when it is paid (nothing
 * changed), or a negative errno from the pool. */
int inventory_release(struct pg_pool *pool, int64_t reservation_id, int64_t user_id,
                      int64_t *ret_product_id);

/* Expire up to INVENTORY_SWEEP_BATCH held reservations whose expires_at
 * has passed, returning their stock, unless another sweep is running (then
 * 0 expired). Returns 0, the number expired, and the distinct product ids
 * whose stock changed (malloc()ed, *ret_n_products of them, NULL when
 * none); or a negative errno from the pool (nothing changed). When
 * *ret_expired is INVENTORY_SWEEP_BATCH, more may be due. */
int inventory_expire_due(struct pg_pool *pool, int64_t *ret_expired, int64_t **ret_product_ids,
                         size_t *ret_n_products);

/* Is name a plain PostgreSQL role name we can put in a statement:
 * 1..INVENTORY_ROLE_NAME_MAX of [a-z0-9_], not starting with a digit. */
bool inventory_role_name_is_valid(const char *name);

/* Let role (vigil-paymentd's) call the two functions above: USAGE on the
 * schema and EXECUTE on them, nothing else. Does nothing while the role
 * does not exist, or when it has both already. Returns 1 when it granted
 * now, 0 when there was nothing to do, -ENOENT when the role does not
 * exist, -EINVAL for an invalid name, or a negative errno from the pool. */
int inventory_grant_payment_role(struct pg_pool *pool, const char *role);
