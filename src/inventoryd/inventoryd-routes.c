#include "inventoryd-routes.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "auth-client.h"
#include "inventoryd-cache.h"
#include "inventoryd-manager.h"
#include "inventoryd-products.h"
#include "inventoryd-reservations.h"
#include "json-util.h"
#include "log.h"
#include "metrics.h"

/* The {id} of the route; replies 400 itself when it is not a product id. */
static int request_product_id(struct http_request *req, int64_t *ret_id)
{
        const char *text = http_request_param(req, "id");
        int r;

        r = inventory_parse_product_id(text ? text : "", ret_id);
        if (r < 0)
                http_reply_error(req, 400, "invalid_field",
                                 "Product id must be a decimal integer from 1 to %" PRId64,
                                 INT64_MAX);
        return r;
}

static int build_products(void *userdata, char **ret_value, size_t *ret_len)
{
        struct inventoryd_manager *m = userdata;

        return inventory_list_products_json(m->daemon->pg, ret_value, ret_len);
}

struct product_build {
        struct inventoryd_manager *manager;
        int64_t id;
};

static int build_product(void *userdata, char **ret_value, size_t *ret_len)
{
        struct product_build *b = userdata;

        return inventory_get_product_json(b->manager->daemon->pg, b->id, ret_value, ret_len);
}

static void handle_products(struct http_request *req, void *userdata)
{
        struct inventoryd_manager *m = userdata;
        _cleanup_free_ char *products = NULL, *body = NULL;
        size_t len;
        bool hit;
        int r, n;

        r = cache_get(m->cache, INVENTORY_CACHE_PRODUCTS, build_products, m, &products, &len, &hit);
        if (r < 0) {
                http_reply_dependency_error(req, r, "postgres", NULL);
                return;
        }
        metrics_counter_inc(hit ? m->cache_products_hit : m->cache_products_miss);

        /* The cached text is spliced in as is: no parse per request. */
        n = asprintf(&body, "{\"products\":%s,\"source\":\"%s\"}", products,
                     hit ? "cache" : "database");
        if (n < 0) {
                body = NULL;
                http_reply_error(req, 500, "internal", "Out of memory");
                return;
        }
        http_reply_add_header(req, "X-Cache", hit ? "hit" : "miss");
        http_reply(req, 200, "application/json", body, (size_t)n);
}

static void handle_product(struct http_request *req, void *userdata)
{
        struct inventoryd_manager *m = userdata;
        _cleanup_free_ char *product = NULL;
        char name[INVENTORY_CACHE_PRODUCT_NAME_MAX];
        struct product_build b = {.manager = m};
        size_t len;
        bool hit;
        int r;

        if (request_product_id(req, &b.id) < 0)
                return;

        inventory_product_cache_name(b.id, name);
        r = cache_get(m->cache, name, build_product, &b, &product, &len, &hit);
        if (r == -ENOENT) {
                metrics_counter_inc(m->cache_product_miss);
                http_reply_error(req, 404, "not_found", "No product with id %" PRId64, b.id);
                return;
        }
        if (r < 0) {
                http_reply_dependency_error(req, r, "postgres", NULL);
                return;
        }
        metrics_counter_inc(hit ? m->cache_product_hit : m->cache_product_miss);
        http_reply_add_header(req, "X-Cache", hit ? "hit" : "miss");
        http_reply(req, 200, "application/json", product, len);
}

/* Decode {"quantity": n}; replies 400 itself on failure. */
static int request_quantity(struct http_request *req, int64_t *ret_quantity)
{
        _cleanup_(json_object_putp) struct json_object *body = NULL;
        int r;

        r = http_request_json(req, &body);
        if (r < 0)
                return r;

        r = json_get_int64(body, "quantity", INVENTORY_QUANTITY_MIN, INVENTORY_QUANTITY_MAX,
                           ret_quantity);
        if (r == -ENOENT)
                http_reply_error(req, 400, "missing_field", "Field \"quantity\" is required");
        else if (r < 0)
                http_reply_error(req, 400, "invalid_field",
                                 "Field \"quantity\" must be an integer from %d to %d",
                                 INVENTORY_QUANTITY_MIN, INVENTORY_QUANTITY_MAX);
        return r;
}

/* Committed: the next read must see it. A failure leaves a purge pending
 * (done once Redis answers), so it is not the client's problem. */
static void invalidate_product(struct inventoryd_manager *m, int64_t id)
{
        char name[INVENTORY_CACHE_PRODUCT_NAME_MAX];
        int r;

        inventory_product_cache_name(id, name);
        r = cache_invalidate(m->cache, (const char *const[]){name, INVENTORY_CACHE_PRODUCTS}, 2);
        if (r < 0)
                log_full_errno(LOG_DEBUG, r,
                               "Cache invalidation for product %" PRId64 " deferred: %m", id);
}

static void handle_reserve(struct http_request *req, void *userdata)
{
        struct inventoryd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *answer = NULL;
        char id_text[24];
        struct reservation rv;
        int64_t id, quantity, user_id;
        int r;

        /* No token, no further look (as paymentd's charge). */
        if (!http_request_bearer(req)) {
                auth_reply_invalid_token(req);
                return;
        }
        if (request_product_id(req, &id) < 0)
                return;
        if (request_quantity(req, &quantity) < 0)
                return;
        if (auth_request_user(m->daemon->auth, req, &user_id) < 0)
                return;

        r = inventory_reserve(m->daemon->pg, id, user_id, quantity,
                              atomic_load(&m->reservations_ttl_seconds), &rv);
        if (r == -ENOENT) {
                metrics_counter_inc(m->reservations_not_found);
                http_reply_error(req, 404, "not_found", "No product with id %" PRId64, id);
                return;
        }
        if (r == -ENOSPC) {
                metrics_counter_inc(m->reservations_insufficient);
                http_reply_error(req, 409, "insufficient_stock",
                                 "Not enough stock for %" PRId64 " units of product %" PRId64,
                                 quantity, id);
                return;
        }
        if (r < 0) {
                http_reply_dependency_error(req, r, "postgres", NULL);
                return;
        }

        metrics_counter_inc(m->reservations_reserved);
        snprintf(id_text, sizeof(id_text), "%" PRId64, id);
        /* product_id values are ids of existing rows: bounded by the
         * catalog, and by the registry's child limit beyond that. */
        metrics_counter_add(metrics_child1(m->sales, id_text), (double)quantity);
        invalidate_product(m, id);

        answer = json_object_new_object();
        json_object_object_add(answer, "reservation_id", json_object_new_int64(rv.id));
        json_object_object_add(answer, "reserved", json_object_new_int64(quantity));
        json_object_object_add(answer, "product_id", json_object_new_int64(id));
        json_object_object_add(answer, "remaining", json_object_new_int64(rv.remaining));
        json_object_object_add(answer, "expires_at", json_object_new_string(rv.expires_at));
        http_reply_json(req, 200, answer);
}

static void handle_release(struct http_request *req, void *userdata)
{
        struct inventoryd_manager *m = userdata;
        const char *text = http_request_param(req, "id");
        int64_t id, user_id, product_id;
        int r;

        if (auth_request_user(m->daemon->auth, req, &user_id) < 0)
                return;
        /* Not a number, not yours, not there and already ended look the
         * same. */
        r = inventory_parse_product_id(text ? text : "", &id);
        if (r >= 0)
                r = inventory_release(m->daemon->pg, id, user_id, &product_id);
        if (r == -EINVAL || r == -ERANGE || r == -ENOENT) {
                http_reply_error(req, 404, "not_found", "No such reservation");
                return;
        }
        if (r == -EALREADY) {
                http_reply_error(req, 409, "reservation_paid",
                                 "Reservation %" PRId64 " is paid and cannot be released", id);
                return;
        }
        if (r < 0) {
                http_reply_dependency_error(req, r, "postgres", NULL);
                return;
        }

        metrics_counter_inc(m->reservations_released);
        invalidate_product(m, product_id);
        http_reply_empty(req, 204);
}

const struct http_route inventoryd_routes[] = {
        {"GET", "/products", handle_products},
        {"GET", "/product/{id}", handle_product},
        {"POST", "/product/{id}/reserve", handle_reserve},
        {"DELETE", "/reservation/{id}", handle_release},
};
const size_t inventoryd_routes_count = ELEMENTSOF(inventoryd_routes);
