#include "inventoryd-manager.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http-server.h"
#include "inventoryd-cache.h"
#include "inventoryd-products.h"
#include "inventoryd-routes.h"
#include "local-cache.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"
#include "redis.h"
#include "sd.h"
#include "trace.h"

/* A request running longer than this is hung: statement, Redis and lock
 * timeouts are all far shorter. */
#define MAX_REQUEST_USEC (30 * USEC_PER_SEC)
#define DRAIN_TIMEOUT_MS 10000
#define CACHE_PREFIX     "inventory:"

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
};
const size_t inventoryd_conf_table_size = ELEMENTSOF(inventoryd_conf_table);

static void manager_free(void *userdata)
{
        struct inventoryd_manager *m = userdata;

        if (!m)
                return;
        http_server_free(m->http);
        cache_free(m->cache);
        local_cache_free(m->local_cache);
        redis_pool_free(m->redis);
        pg_pool_free(m->pg);
        tracer_free(m->tracer);
        metrics_registry_free(m->metrics);
        free(m);
}

/* /ready: PostgreSQL with the schema migrated, and Redis. Without Redis the
 * daemon still serves everything (from PostgreSQL), but it is degraded. */
static int ready(void *userdata, const char **ret_failing)
{
        struct inventoryd_manager *m = userdata;
        int r;

        r = pg_pool_ping(m->pg);
        if (r < 0) {
                *ret_failing = "postgres";
                return r;
        }
        if (!atomic_load(&m->migrated)) {
                *ret_failing = "postgres";
                return -EAGAIN;
        }
        r = redis_pool_ping(m->redis);
        if (r < 0) {
                *ret_failing = "redis";
                return r;
        }
        return 0;
}

static int register_metrics(struct inventoryd_manager *m)
{
        struct metric_family *cache_requests, *reservations;
        int r;

        r = metrics_register_process(m->metrics);
        if (r >= 0)
                r = metrics_register_build_info(m->metrics, PACKAGE_VERSION);
        if (r < 0)
                return r;

        cache_requests = metrics_counter_new(m->metrics, "vigil_cache_requests_total",
                                             "Cache lookups by cache and result",
                                             (const char *const[]){"cache", "result", NULL});
        reservations = metrics_counter_new(m->metrics, "vigil_inventory_reservations_total",
                                           "Stock reservations by result",
                                           (const char *const[]){"result", NULL});
        m->sales = metrics_counter_new(m->metrics, "vigil_inventory_sales_total",
                                       "Units reserved (sold) per product",
                                       (const char *const[]){"product_id", NULL});
        if (!cache_requests || !reservations || !m->sales)
                return -ENOMEM;

        m->cache_products_hit = metrics_child2(cache_requests, "products", "hit");
        m->cache_products_miss = metrics_child2(cache_requests, "products", "miss");
        m->cache_product_hit = metrics_child2(cache_requests, "product", "hit");
        m->cache_product_miss = metrics_child2(cache_requests, "product", "miss");
        m->reservations_reserved = metrics_child1(reservations, "reserved");
        m->reservations_insufficient = metrics_child1(reservations, "insufficient");
        m->reservations_not_found = metrics_child1(reservations, "not_found");
        if (!m->cache_products_hit || !m->cache_products_miss || !m->cache_product_hit ||
            !m->cache_product_miss || !m->reservations_reserved || !m->reservations_insufficient ||
            !m->reservations_not_found)
                return -ENOMEM;

        return 0;
}

static int manager_new(const void *config, void **ret)
{
        const struct inventoryd_config *c = config;
        struct inventoryd_manager *m;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return log_error_errno(ENOMEM, "Out of memory");
        m->config = c;

        r = metrics_registry_new(&m->metrics);
        if (r >= 0)
                r = register_metrics(m);
        if (r < 0) {
                log_error_errno(r, "Failed to set up metrics: %m");
                goto fail;
        }

        r = daemon_tracer_new(&c->common, inventoryd_ops.name, m->metrics, &m->tracer);
        if (r < 0) {
                log_error_errno(r, "Failed to set up tracing to %s: %m",
                                c->common.tracing_otlp_endpoint);
                goto fail;
        }
        r = daemon_pg_pool_new(&c->postgres, inventoryd_ops.name, m->metrics, m->tracer, &m->pg);
        if (r < 0) {
                log_error_errno(r, "Failed to set up PostgreSQL (postgres-password "
                                   "credential): %m");
                goto fail;
        }
        r = daemon_redis_pool_new(&c->redis, m->metrics, m->tracer, &m->redis);
        if (r < 0) {
                log_error_errno(r, "Failed to set up Redis (redis-password credential): %m");
                goto fail;
        }

        r = daemon_local_cache_new(&c->redis, m->redis, m->metrics, "catalog", CACHE_PREFIX,
                                   &m->local_cache);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the local catalog cache: %m");
                goto fail;
        }

        struct cache_options cache_opts = {
                .redis = m->redis,
                .local = m->local_cache,
                .prefix = CACHE_PREFIX,
                .ttl_seconds = (unsigned)c->cache_ttl_seconds,
                .jitter_percent = (unsigned)c->cache_jitter_percent,
                .lock_ms = (unsigned)c->cache_lock_ms,
                .wait_ms = (unsigned)c->cache_wait_ms,
        };
        r = cache_new(&cache_opts, &m->cache);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the cache: %m");
                goto fail;
        }

        *ret = m;
        return 0;

fail:
        manager_free(m);
        return r;
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

static void check_dependencies(struct inventoryd_manager *m)
{
        static const char *const names[] = {"postgres", "redis"};
        bool up[] = {pg_pool_ping(m->pg) >= 0, redis_pool_ping(m->redis) >= 0};

        daemon_note_dependency(&m->postgres_up, up[0], "PostgreSQL", NULL);
        daemon_note_dependency(&m->redis_up, up[1], "Redis",
                               ": serving the catalog from PostgreSQL");
        if (up[0])
                daemon_migrate(m->pg, INVENTORY_SCHEMA, inventory_migrations,
                               inventory_migrations_count, &m->migrated);
        if (up[1])
                maintain_cache(m);
        daemon_format_status(m->status, sizeof(m->status), atomic_load(&m->migrated),
                             ELEMENTSOF(names), names, up);
}

static int manager_start(void *userdata)
{
        struct inventoryd_manager *m = userdata;
        struct http_server_options opts = {
                .service_name = inventoryd_ops.name,
                .metrics = m->metrics,
                .tracer = m->tracer,
                .ready = ready,
                .userdata = m,
        };
        int r;

        r = daemon_http_server_start(&m->config->common, &opts, inventoryd_routes,
                                     inventoryd_routes_count, &m->http);
        if (r < 0)
                return r;

        /* Dependencies are tried before READY=1, but being down is a
         * degraded state, not a failure: they may come up later. */
        check_dependencies(m);
        return 0;
}

static bool manager_tick(void *userdata)
{
        struct inventoryd_manager *m = userdata;

        check_dependencies(m);
        return http_server_is_healthy(m->http, MAX_REQUEST_USEC);
}

static const char *manager_status(void *userdata)
{
        struct inventoryd_manager *m = userdata;

        return m->status;
}

static int manager_reload(void *userdata, const void *config)
{
        struct inventoryd_manager *m = userdata;
        const struct inventoryd_config *c = config;

        /* The cache lifetime applies to entries stored from now on; the
         * log level is applied by the caller; everything else needs a
         * restart, which socket activation makes lossless. */
        cache_set_ttl(m->cache, (unsigned)c->cache_ttl_seconds, (unsigned)c->cache_jitter_percent);
        return 0;
}

static void manager_stop(void *userdata)
{
        struct inventoryd_manager *m = userdata;

        http_server_drain(m->http, DRAIN_TIMEOUT_MS);
}

const struct daemon_ops inventoryd_ops = {
        .name = "vigil-inventoryd",
        .description = "product catalog with a Redis cache and race-free stock reservation",
        .default_config = SYSCONFDIR "/vigil/inventoryd.conf",
        .conf_table = inventoryd_conf_table,
        .n_conf_keys = ELEMENTSOF(inventoryd_conf_table),
        .config_size = sizeof(struct inventoryd_config),
        .manager_new = manager_new,
        .manager_start = manager_start,
        .manager_reload = manager_reload,
        .manager_tick = manager_tick,
        .manager_status = manager_status,
        .manager_stop = manager_stop,
        .manager_free = manager_free,
};
