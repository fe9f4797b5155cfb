#include "inventoryd-manager.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inventoryd-cache.h"
#include "inventoryd-products.h"
#include "inventoryd-reservations.h"
#include "inventoryd-routes.h"
#include "local-cache.h"
#include "log.h"
#include "metrics.h"

/* A request running longer than this is hung: statement, Redis and lock
 * timeouts are all far shorter. */
#define MAX_REQUEST_USEC (30 * USEC_PER_SEC)
#define DRAIN_TIMEOUT_MS 10000
#define CACHE_PREFIX     "inventory:"
/* Expired reservations are returned to stock at every tick (a second),
 * up to this many sweep batches at once. */
#define SWEEP_BATCHES_MAX   10
#define GRANT_INTERVAL_USEC (60 * USEC_PER_SEC)
/* While paymentd's role does not exist: its package creates it moments
 * after this one is installed, and charges naming a reservation fail with
 * 503 until it is granted. */
#define GRANT_MISSING_ROLE_INTERVAL_USEC (2 * USEC_PER_SEC)

static const struct faults_scope faults_scope = {
        .routes = inventoryd_routes,
        .n_routes = &inventoryd_routes_count,
        .dependencies = (const char *const[]){"postgres", "redis", "auth", NULL},
};

const struct conf_key inventoryd_conf_table[] = {
        DAEMON_CONF_KEYS(struct inventoryd_config, "127.0.0.1:8003"),
        DAEMON_CONF_POSTGRES_KEYS(struct inventoryd_config, postgres, "vigil_inventory"),
        DAEMON_CONF_REDIS_KEYS(struct inventoryd_config, redis),
        CONF_INT("cache", "ttl_seconds", "30", 1, 86400, struct inventoryd_config,
                 cache_ttl_seconds, "Lifetime of cached catalog entries (reloadable)"),
        CONF_INT("cache", "jitter_percent", "10", 0, 50, struct inventoryd_config,
                 cache_jitter_percent,
                 "Random spread of each entry's lifetime, in percent either way (reloadable)"),
        CONF_INT("cache", "lock_ms", "2000", 10, 60000, struct inventoryd_config, cache_lock_ms,
                 "Lifetime of the Redis lock held by the one process rebuilding an entry"),
        CONF_INT("cache", "wait_ms", "100", 0, 10000, struct inventoryd_config, cache_wait_ms,
                 "How long others poll for a rebuilt entry before reading PostgreSQL "
                 "themselves"),
        DAEMON_CONF_AUTH_KEYS(struct inventoryd_config, auth),
        CONF_INT("reservations", "ttl_seconds", "900", 1, 86400, struct inventoryd_config,
                 reservations_ttl_seconds,
                 "How long a reservation holds its stock unpaid before it returns (reloadable: "
                 "applies to new reservations)"),
        CONF_STRING("reservations", "payment_role", "vigil_payment", INVENTORY_ROLE_NAME_MAX,
                    struct inventoryd_config, reservations_payment_role,
                    "PostgreSQL role of vigil-paymentd, allowed to pay reservations"),
        DAEMON_CONF_FAULTS_KEYS(struct inventoryd_config, &faults_scope),
};
const size_t inventoryd_conf_table_size = ELEMENTSOF(inventoryd_conf_table);

static void manager_done(void *userdata)
{
        struct inventoryd_manager *m = userdata;

        cache_free(m->cache);
        local_cache_free(m->local_cache);
}

static int register_metrics(struct inventoryd_manager *m, struct metrics_registry *metrics)
{
        struct metric_family *cache_requests, *reservations, *released, *expired;

        cache_requests = metrics_counter_new(metrics, "vigil_cache_requests_total",
                                             "Cache lookups by cache and result",
                                             (const char *const[]){"cache", "result", NULL});
        reservations = metrics_counter_new(metrics, "vigil_inventory_reservations_total",
                                           "Stock reservations by result",
                                           (const char *const[]){"result", NULL});
        m->sales = metrics_counter_new(metrics, "vigil_inventory_sales_total",
                                       "Units reserved (sold) per product",
                                       (const char *const[]){"product_id", NULL});
        released = metrics_counter_new(metrics, "vigil_inventory_reservations_released_total",
                                       "Reservations released early by their owner", NULL);
        expired = metrics_counter_new(metrics, "vigil_inventory_reservations_expired_total",
                                      "Reservations not paid in time, their stock returned", NULL);
        if (!cache_requests || !reservations || !m->sales || !released || !expired)
                return -ENOMEM;

        m->cache_products_hit = metrics_child2(cache_requests, "products", "hit");
        m->cache_products_miss = metrics_child2(cache_requests, "products", "miss");
        m->cache_product_hit = metrics_child2(cache_requests, "product", "hit");
        m->cache_product_miss = metrics_child2(cache_requests, "product", "miss");
        m->reservations_reserved = metrics_child1(reservations, "reserved");
        m->reservations_insufficient = metrics_child1(reservations, "insufficient");
        m->reservations_not_found = metrics_child1(reservations, "not_found");
        m->reservations_released = metrics_child(released, NULL);
        m->reservations_expired = metrics_child(expired, NULL);
        if (!m->cache_products_hit || !m->cache_products_miss || !m->cache_product_hit ||
            !m->cache_product_miss || !m->reservations_reserved || !m->reservations_insufficient ||
            !m->reservations_not_found || !m->reservations_released || !m->reservations_expired)
                return -ENOMEM;

        return 0;
}

static int manager_init(struct daemon *d, void *userdata)
{
        const struct inventoryd_config *c = d->config;
        struct inventoryd_manager *m = userdata;
        int r;

        m->config = c;
        m->daemon = d;
        atomic_store(&m->reservations_ttl_seconds, c->reservations_ttl_seconds);
        if (!inventory_role_name_is_valid(c->reservations_payment_role)) {
                log_error("[reservations] payment_role \"%s\" is not a plain role name "
                          "(lower-case letters, digits and _)",
                          c->reservations_payment_role);
                return -EINVAL;
        }

        r = register_metrics(m, d->metrics);
        if (r < 0)
                return log_error_errno(r, "Failed to set up metrics: %m");

        r = daemon_local_cache_new(&c->redis, m->daemon->redis, d->metrics, "catalog", CACHE_PREFIX,
                                   &m->local_cache);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the local catalog cache: %m");

        struct cache_options cache_opts = {
                .redis = m->daemon->redis,
                .local = m->local_cache,
                .prefix = CACHE_PREFIX,
                .ttl_seconds = (unsigned)c->cache_ttl_seconds,
                .jitter_percent = (unsigned)c->cache_jitter_percent,
                .lock_ms = (unsigned)c->cache_lock_ms,
                .wait_ms = (unsigned)c->cache_wait_ms,
        };
        r = cache_new(&cache_opts, &m->cache);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the cache: %m");

        return 0;
}

/* An invalidation that did not reach Redis left a purge pending: do it as
 * soon as Redis answers, so no stale stock outlives an outage. */
static void maintain_cache(struct inventoryd_manager *m)
{
        bool pending = cache_purge_pending(m->cache);
        int r;

        if (!pending)
                return;
        r = cache_maintain(m->cache);
        if (r < 0) {
                if (!m->purge_failed_logged)
                        log_warning_errno(r, "Cache purge after a failed invalidation "
                                             "not done yet (%m); will retry");
                m->purge_failed_logged = true;
                return;
        }
        m->purge_failed_logged = false;
        log_notice("Cache purged after an invalidation that could not reach Redis");
}

/* Drop the cached copies of products whose stock changed, and the list. */
static void invalidate_products(struct inventoryd_manager *m, const int64_t *ids, size_t n)
{
        char names[CACHE_INVALIDATE_MAX][INVENTORY_CACHE_PRODUCT_NAME_MAX];
        const char *list[CACHE_INVALIDATE_MAX];
        size_t k = 0;
        int r;

        list[k++] = INVENTORY_CACHE_PRODUCTS;
        for (size_t i = 0; i <= n; i++) {
                if (k == CACHE_INVALIDATE_MAX || (i == n && k > 0)) {
                        r = cache_invalidate(m->cache, list, k);
                        if (r < 0)
                                log_full_errno(LOG_DEBUG, r,
                                               "Cache invalidation after expiry deferred: %m");
                        k = 0;
                }
                if (i == n)
                        break;
                inventory_product_cache_name(ids[i], names[k]);
                list[k] = names[k];
                k++;
        }
}

/* Return the stock of reservations not paid in time. Safe with several
 * instances on one database (see inventoryd-reservations.h). */
static void expire_reservations(struct inventoryd_manager *m)
{
        for (int batch = 0; batch < SWEEP_BATCHES_MAX; batch++) {
                _cleanup_free_ int64_t *ids = NULL;
                int64_t expired = 0;
                size_t n = 0;
                int r;

                r = inventory_expire_due(m->daemon->pg, &expired, &ids, &n);
                if (r < 0) {
                        log_warning_errno(r, "Returning the stock of expired reservations "
                                             "failed (will retry): %m");
                        return;
                }
                if (expired == 0)
                        return;
                metrics_counter_add(m->reservations_expired, (double)expired);
                invalidate_products(m, ids, n);
                log_info("Returned the stock of %lld expired reservations of %zu products",
                         (long long)expired, n);
                if (expired < INVENTORY_SWEEP_BATCH)
                        return;
        }
}

/* Let vigil-paymentd pay reservations (and nothing else here), once its
 * role exists; checked again every minute (every 2 s while the role is
 * missing), so a role created later, or dropped and created again, is
 * granted without a restart. */
static void grant_payment_role(struct inventoryd_manager *m)
{
        const char *role = m->config->reservations_payment_role;
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        int r;

        if (now < m->next_grant_usec)
                return;
        m->next_grant_usec = now + GRANT_INTERVAL_USEC;
        r = inventory_grant_payment_role(m->daemon->pg, role);
        if (r == -ENOENT) {
                m->next_grant_usec = now + GRANT_MISSING_ROLE_INTERVAL_USEC;
                if (!m->payment_role_missing_logged)
                        log_info("PostgreSQL role %s does not exist (yet): charges cannot pay "
                                 "reservations until it does",
                                 role);
                m->payment_role_missing_logged = true;
                return;
        }
        m->payment_role_missing_logged = false;
        if (r < 0)
                log_warning_errno(r, "Granting role %s the payment of reservations failed: %m",
                                  role);
        else if (r > 0)
                log_notice("Granted PostgreSQL role %s the payment of reservations", role);
}

/* The reservation sweep once the schema is there, the deferred purge once
 * Redis answers. */
static bool manager_tick(void *userdata)
{
        struct inventoryd_manager *m = userdata;
        struct daemon *d = m->daemon;

        if (atomic_load(&d->postgres_up) && atomic_load(&d->migrated)) {
                grant_payment_role(m);
                expire_reservations(m);
        }
        if (atomic_load(&d->redis_up))
                maintain_cache(m);
        return true;
}

static int manager_reload(void *userdata, const void *config)
{
        struct inventoryd_manager *m = userdata;
        const struct inventoryd_config *c = config;

        /* The cache lifetime applies to entries stored from now on, the
         * reservation lifetime to reservations made from now on; the
         * log level is applied by the caller; everything else needs a
         * restart, which socket activation makes lossless. */
        cache_set_ttl(m->cache, (unsigned)c->cache_ttl_seconds, (unsigned)c->cache_jitter_percent);
        atomic_store(&m->reservations_ttl_seconds, c->reservations_ttl_seconds);
        return 0;
}

/* Without Redis the daemon still serves everything (from PostgreSQL), and
 * without authd the catalog, but either way it is not ready. */
const struct daemon_ops inventoryd_ops = {
        .name = "vigil-inventoryd",
        .description =
                "product catalog with a Redis cache and race-free, expiring stock reservations",
        .default_config = SYSCONFDIR "/vigil/inventoryd.conf",
        DAEMON_CONF(inventoryd_conf_table, struct inventoryd_config),
        .dependencies =
                {
                        .postgres = DAEMON_SECTION(struct inventoryd_config, postgres),
                        .schema = &inventory_schema,
                        .redis = DAEMON_SECTION(struct inventoryd_config, redis),
                        .redis_down = ": serving the catalog from PostgreSQL",
                        .auth = DAEMON_SECTION(struct inventoryd_config, auth),
                },
        .routes = inventoryd_routes,
        .n_routes = &inventoryd_routes_count,
        .max_request_usec = MAX_REQUEST_USEC,
        .drain_timeout_ms = DRAIN_TIMEOUT_MS,
        .manager_size = sizeof(struct inventoryd_manager),
        .manager_init = manager_init,
        .manager_tick = manager_tick,
        .manager_reload = manager_reload,
        .manager_done = manager_done,
};
