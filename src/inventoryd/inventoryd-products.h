/* The product catalog of vigil-inventoryd: the inventory.products table,
 * its JSON representation, and the schema's migrations (reservations are in
 * inventoryd-reservations.h). Knows nothing of HTTP or of the cache.
 *
 * A product is represented as
 *   {"id":1,"name":"Laptop","description":"…","price_cents":99999,
 *    "stock":50,"updated_at":"2024-05-01T12:00:00Z"}
 * built by PostgreSQL itself (json_build_object), so the text stored in the
 * cache and sent to clients is exactly what the database produced.
 *
 * Thread-safety: every function may be called from any thread; state lives
 * in the pool. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "pg.h"

#define INVENTORY_SCHEMA "inventory"

/* A reservation asks for 1..INVENTORY_QUANTITY_MAX units. */
#define INVENTORY_QUANTITY_MIN 1
#define INVENTORY_QUANTITY_MAX 1000
/* GET /products lists at most this many products (the first by id). */
#define INVENTORY_LIST_MAX 1000
/* Characters of a product (or reservation) id in a path: INT64_MAX has 19
 * digits. */
#define INVENTORY_PRODUCT_ID_DIGITS_MAX 19

/* Cache names (see inventoryd-cache.h) of the catalog and of one product. */
#define INVENTORY_CACHE_PRODUCTS         "products"
#define INVENTORY_CACHE_PRODUCT_NAME_MAX 32

extern const struct pg_schema inventory_schema;

/* Parse a product id from a path segment: decimal digits only (no sign,
 * space, leading '+' or zero), value 1..INT64_MAX. Returns 0, -EINVAL for
 * anything that is not such a number, or -ERANGE for a number above
 * INT64_MAX or equal to 0. */
int inventory_parse_product_id(const char *s, int64_t *ret_id);

/* "product:<id>" into buf. */
void inventory_product_cache_name(int64_t id, char buf[static INVENTORY_CACHE_PRODUCT_NAME_MAX]);

/* The first INVENTORY_LIST_MAX products by id as a JSON array (malloc()ed,
 * NUL-terminated). Returns 0, or a negative errno from the pool. */
int inventory_list_products_json(struct pg_pool *pool, char **ret_json, size_t *ret_len);

/* One product as a JSON object. Returns 0, -ENOENT for an unknown id, or
 * a negative errno from the pool. */
int inventory_get_product_json(struct pg_pool *pool, int64_t id, char **ret_json, size_t *ret_len);
