#!/usr/bin/env python3
"""Integration tests of vigil-inventoryd against real PostgreSQL and Redis.

The catalog and its cache (hits, misses, stampede protection, no stale
stock after a reservation), reservations that never oversell under
contention, a Redis outage (served from PostgreSQL, /ready degraded, never
a 500, then recovery), and every kind of bad input (status, error code, and
no change of stock). Run by `make check`; by hand:
  top_builddir=/path/to/build python3 tests/integration/test-inventoryd.py [TEST...]
"""

import concurrent.futures
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq, check_error  # noqa: E402

runner = harness.Runner("test-inventoryd", test_timeout=180)
test = runner.test

PRODUCT_FIELDS = {"id", "name", "description", "price_cents", "stock", "updated_at"}
SEEDED = ["Laptop", "Wireless Mouse", "Mechanical Keyboard", "4K Monitor",
          "Noise-Cancelling Headphones"]
JSON = {"Content-Type": "application/json"}


def new_inventoryd(ctx, env=None):
    """An inventoryd (not started) wired to ctx.stack and ctx.authd."""
    # Long enough that the lock tests cannot lose a race on a busy host.
    return harness.new_inventoryd(ctx, {"VIGIL_CACHE_WAIT_MS": "1000", **(env or {})})


# Bearer tokens of two users, set once by setup().
TOKENS = {}


def setup(ctx):
    ctx.stack = harness.Stack(("postgres", "redis"))
    ctx.cleanup(ctx.stack.stop)
    ctx.stack.start()
    ctx.authd = harness.new_authd(ctx)
    ctx.authd.start()
    for who in ("alice", "bob"):
        user_id, name, password = harness.register(ctx.authd)
        TOKENS[who] = harness.login(ctx.authd, name, password)
        TOKENS[who + "_id"] = user_id
    ctx.inv = new_inventoryd(ctx)
    ctx.inv.start()


# --------------------------------------------------------------------------
# helpers

def sql(ctx, query):
    return ctx.stack.sql(query)


def db_stock(ctx, pid):
    return int(sql(ctx, f"SELECT stock FROM inventory.products WHERE id = {int(pid)}"))


def drop_cached(ctx, *keys):
    """Delete keys from Redis behind the daemon's back, as an operator
    would, and wait until inventoryd has heard of it. Its local cache drops
    a key when Redis pushes the invalidation to its tracking connection:
    usually well under a millisecond later, but a read sent before then may
    still be answered from memory, and on a loaded machine the daemon's
    listener thread may wait for a CPU."""
    def heard():
        return harness.metric_value(scrape(ctx.inv), "vigil_local_cache_invalidations_total",
                                    cache="catalog")
    before = heard()
    deleted = ctx.stack.redis("DEL", *keys)
    harness.wait_until(lambda: heard() >= before + deleted, 10,
                       what=f"inventoryd's local cache to drop {' '.join(keys)}")


def set_stock(ctx, pid, stock):
    """Set stock behind the daemon's back (as an operator would), then drop
    the cached copies so the next read sees it."""
    sql(ctx, f"UPDATE inventory.products SET stock = {int(stock)} WHERE id = {int(pid)}")
    drop_cached(ctx, f"inventory:product:{pid}", "inventory:products")


def db_state(ctx):
    """What bad input must leave alone: every product and reservation row."""
    return (sql(ctx, "SELECT id, stock, units_sold, updated_at FROM inventory.products "
                     "ORDER BY id"),
            sql(ctx, "SELECT id, state FROM inventory.reservations ORDER BY id"))


@contextlib.contextmanager
def unchanged(ctx, what):
    before = db_state(ctx)
    yield
    after = db_state(ctx)
    check(before == after, f"{what}: products changed:\nbefore {before}\nafter  {after}")


def reserve(d, pid, quantity, who="alice", **kw):
    """POST /product/{pid}/reserve as who (a key of TOKENS, or None: no token)."""
    token = TOKENS[who] if who else None
    return d.post(f"/product/{pid}/reserve", {"quantity": quantity}, token=token, **kw)


def release(d, rid, who="alice", **kw):
    token = TOKENS[who] if who else None
    return d.request("DELETE", f"/reservation/{rid}", token=token, **kw)


def reservation(ctx, rid):
    """(user_id, state, quantity, product_id) of a reservation row."""
    row = sql(ctx, "SELECT user_id, state, quantity, product_id FROM inventory.reservations "
                   f"WHERE id = {int(rid)}")
    user_id, state, quantity, pid = row.split("|")
    return int(user_id), state, int(quantity), int(pid)


def new_product(ctx, stock):
    """A product of its own for a test (nothing else reserves it)."""
    return int(sql(ctx, "INSERT INTO inventory.products (name, price_cents, stock) "
                        f"VALUES ('test product', 100, {int(stock)}) RETURNING id"
                   ).split("\n")[0])


def get_product(d, pid):
    r = d.get(f"/product/{pid}")
    check_eq(r.status, 200, f"GET /product/{pid}")
    return r


def scrape(d):
    r = d.get("/metrics")
    check_eq(r.status, 200, "GET /metrics")
    return harness.parse_metrics(r.body.decode())


def cache_counts(samples, cache=None):
    labels = {"cache": cache} if cache else {}
    hits = harness.metric_value(samples, "vigil_cache_requests_total", result="hit", **labels)
    misses = harness.metric_value(samples, "vigil_cache_requests_total", result="miss", **labels)
    return hits, misses


def count_5xx(samples):
    """5xx answers of the catalog (/ready's 503 is its job, not a failure,
    and a reservation needs authd, which needs Redis)."""
    return sum(s.value for s in samples
               if s.name == "vigil_http_requests_total"
               and s.labels.get("route") not in ("/ready", "/product/{id}/reserve")
               and s.labels.get("code", "").startswith("5"))


def postgres_selects(samples):
    return harness.metric_value(samples, "vigil_dependency_request_duration_seconds_count",
                                dependency="postgres", operation="SELECT")


# --------------------------------------------------------------------------
# command line, configuration, schema

@test
def test_health_and_ready_answer_200(ctx):
    check_eq(ctx.inv.get("/health").status, 200, "GET /health")
    check_eq(ctx.inv.get("/ready").status, 200, "GET /ready")


@test
def test_migration_seeds_five_products_and_guards_stock(ctx):
    names = sql(ctx, "SELECT name FROM inventory.products WHERE id <= 5 ORDER BY id").split("\n")
    check_eq(names, SEEDED, "seeded products")
    try:
        sql(ctx, "UPDATE inventory.products SET stock = -1 WHERE id = 1")
        refused = False
    except AssertionError as e:
        refused = "check constraint" in str(e)
    check(refused, "PostgreSQL accepted a negative stock")
    check(db_stock(ctx, 1) >= 0, "stock is negative")


# --------------------------------------------------------------------------
# reads through the cache

@test
def test_products_come_from_the_database_then_from_the_cache(ctx):
    drop_cached(ctx, "inventory:products")
    first = ctx.inv.get("/products")
    check_eq(first.status, 200, "GET /products")
    check_eq(first.body.get("source"), "database", "source of the first read")
    second = ctx.inv.get("/products")
    check_eq(second.body.get("source"), "cache", "source of the second read")
    check_eq(second.body["products"], first.body["products"], "cached list")
    products = first.body["products"]
    check([p["name"] for p in products[:5]] == SEEDED, f"catalog: {products!r}")
    for p in products:
        check_eq(set(p), PRODUCT_FIELDS, f"fields of product {p.get('id')}")
        check(isinstance(p["id"], int) and isinstance(p["stock"], int)
              and isinstance(p["price_cents"], int), f"types of {p!r}")
    cached = json.loads(ctx.stack.redis("GET", "inventory:products"))
    check_eq(cached, products, "value stored under inventory:products")


@test
def test_debug_log_shows_cache_and_pool_decisions_and_info_does_not(ctx):
    """[log] level = debug: each cache decision and the pools' connections
    are logged; at info (ctx.inv) the same reads log none of that."""
    d = new_inventoryd(ctx, {"VIGIL_LOG_LEVEL": "debug"})
    d.start()
    ctx.stack.redis("DEL", "inventory:products")
    start = len(d.log_text())
    check_eq(d.get("/products").body.get("source"), "database", "debug: first read")
    check_eq(d.get("/products").body.get("source"), "cache", "debug: second read")
    log = d.log_text()
    for line in ("Cache products: miss", "Cache products: rebuilt from the database",
                 "Cache products: hit in "):
        check(f'level=debug msg="{line}' in log[start:], f"debug log lacks {line!r}:\n"
              f"{log[start:][-3000:]}")
    for line in ("postgres pool: opened connection", "redis pool: opened connection"):
        check(f'level=debug msg="{line}' in log, f"debug log lacks {line!r}")
    d.stop()

    start = len(ctx.inv.log_text())
    drop_cached(ctx, "inventory:products")
    check_eq(ctx.inv.get("/products").body.get("source"), "database", "info: first read")
    check_eq(ctx.inv.get("/products").body.get("source"), "cache", "info: second read")
    log = ctx.inv.log_text()[start:]
    check("level=debug" not in log and "Cache products" not in log,
          f"debug entries at level info:\n{log[-3000:]}")


@test
def test_cache_entries_get_a_jittered_ttl_around_30_seconds(ctx):
    ttls = []
    for pid in range(1, 6):
        drop_cached(ctx, f"inventory:product:{pid}")
        get_product(ctx.inv, pid)
        ttls.append(ctx.stack.redis("PTTL", f"inventory:product:{pid}"))
    # 30 s ± 10 %, minus the moments that passed since the SET.
    for t in ttls:
        check(25000 <= t <= 33000, f"PTTL {t} outside 30 s ± 10 %: {ttls}")


@test
def test_product_by_id_and_unknown_ids(ctx):
    r = get_product(ctx.inv, 2)
    check_eq(r.body["id"], 2, "id")
    check_eq(r.body["name"], "Wireless Mouse", "name")
    check_eq(r.body["stock"], db_stock(ctx, 2), "stock")
    check_error(ctx.inv.get("/product/999999"), 404, "not_found", "unknown id")
    check_error(ctx.inv.get("/product/9223372036854775807"), 404, "not_found", "largest id")


@test
def test_a_cold_key_under_a_stampede_reads_the_database_about_once(ctx):
    drop_cached(ctx, "inventory:product:3")
    before = scrape(ctx.inv)
    n = 40
    barrier = threading.Barrier(n, timeout=30)

    def one(_):
        barrier.wait()
        return ctx.inv.get("/product/3", timeout=30)

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    check(all(r.status == 200 for r in results), f"statuses {[r.status for r in results]}")
    check(len({json.dumps(r.body, sort_keys=True) for r in results}) == 1, "answers differ")
    after = scrape(ctx.inv)
    # One SELECT for the rebuild; the tick's readiness pings (SELECT 1,
    # about one a second) may add a few.
    selects = postgres_selects(after) - postgres_selects(before)
    check(selects <= 4, f"{n} concurrent reads of a cold key made {selects:.0f} SELECTs")
    runner.note(f"stampede: {n} concurrent cold reads -> {selects:.0f} PostgreSQL SELECTs")


@test
def test_a_rebuild_lock_held_elsewhere_makes_readers_wait_for_its_value(ctx):
    key, lock = "inventory:product:4", "lock:inventory:product:4"
    marker = {"id": 4, "name": "filled by the lock holder", "description": "", "price_cents": 1,
              "stock": 4242, "updated_at": "2024-01-01T00:00:00Z"}
    drop_cached(ctx, key)
    check_eq(ctx.stack.redis("SET", lock, "someone-else", "NX", "PX", "5000"), "OK", "lock")
    try:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", ctx.inv.get("/product/4")))
        t.start()
        time.sleep(0.05)
        ctx.stack.redis("SET", key, json.dumps(marker), "PX", "30000")
        t.join(15)
        r = box["r"]
        check_eq(r.status, 200, "GET while another process rebuilds")
        check_eq(r.body, marker, "the reader did not take the lock holder's value")
        check_eq(r.headers.get("x-cache"), "hit", "X-Cache")
        check_eq(ctx.stack.redis("GET", lock), "someone-else", "our lock was touched")
    finally:
        ctx.stack.redis("DEL", key, lock)


@test
def test_a_lock_holder_that_never_fills_costs_at_most_wait_ms(ctx):
    key, lock = "inventory:product:5", "lock:inventory:product:5"
    drop_cached(ctx, key)
    ctx.stack.redis("SET", lock, "a-dead-process", "PX", "10000")
    try:
        t0 = time.monotonic()
        r = get_product(ctx.inv, 5)
        elapsed = time.monotonic() - t0
        check_eq(r.body["stock"], db_stock(ctx, 5), "stock read from PostgreSQL")
        check_eq(r.headers.get("x-cache"), "miss", "X-Cache")
        check(elapsed >= 0.9, f"answered after {elapsed:.3f} s without waiting for the lock")
    finally:
        ctx.stack.redis("DEL", key, lock)


@test
def test_a_rebuild_stores_the_value_and_leaves_no_lock(ctx):
    key, lock = "inventory:product:2", "lock:inventory:product:2"
    drop_cached(ctx, key)
    r = get_product(ctx.inv, 2)
    check_eq(r.headers.get("x-cache"), "miss", "X-Cache of the first read")
    check_eq(json.loads(ctx.stack.redis("GET", key))["stock"], db_stock(ctx, 2), "the stored value")
    check_eq(ctx.stack.redis("EXISTS", lock), 0, "the rebuild's lock left behind")


@test
def test_a_miss_pushes_one_invalidation_its_lock_none(ctx):
    """Redis pushes every write under the tracked prefix to every process's
    local cache; a miss writes its value there, its lock elsewhere."""
    def heard():
        return harness.metric_value(scrape(ctx.inv), "vigil_local_cache_invalidations_total",
                                    cache="catalog")

    key, sentinel = "inventory:product:3", "inventory:test-sentinel"
    drop_cached(ctx, key)
    before = heard()
    check_eq(get_product(ctx.inv, 3).headers.get("x-cache"), "miss", "X-Cache")
    # Pushes arrive in order on one connection: once the sentinel's is
    # counted, every push of the miss before it is too.
    ctx.stack.redis("SET", sentinel, "1")
    try:
        harness.wait_until(lambda: heard() >= before + 2, 10,
                           what="the pushes of the miss and of the sentinel")
        check_eq(heard() - before, 2, "invalidations for one miss and one sentinel write")
    finally:
        ctx.stack.redis("DEL", sentinel)


# --------------------------------------------------------------------------
# reservations

@test
def test_reserve_decrements_stock_and_counts_the_sale(ctx):
    set_stock(ctx, 3, 150)
    before = scrape(ctx.inv)
    sold_before = int(sql(ctx, "SELECT units_sold FROM inventory.products WHERE id = 3"))
    r = reserve(ctx.inv, 3, 2)
    check_eq(r.status, 200, "reserve")
    check_eq(set(r.body), {"reservation_id", "reserved", "product_id", "remaining",
                           "expires_at"}, "answer fields")
    check_eq({k: r.body[k] for k in ("reserved", "product_id", "remaining")},
             {"reserved": 2, "product_id": 3, "remaining": 148}, "answer")
    check_eq(db_stock(ctx, 3), 148, "stock in PostgreSQL")
    check_eq(int(sql(ctx, "SELECT units_sold FROM inventory.products WHERE id = 3")),
             sold_before + 2, "units_sold")
    after = scrape(ctx.inv)
    sales = (harness.metric_value(after, "vigil_inventory_sales_total", product_id="3")
             - harness.metric_value(before, "vigil_inventory_sales_total", product_id="3"))
    check_eq(sales, 2, "vigil_inventory_sales_total{product_id=3} increase")
    reserved = (harness.metric_value(after, "vigil_inventory_reservations_total", result="reserved")
                - harness.metric_value(before, "vigil_inventory_reservations_total",
                                       result="reserved"))
    check_eq(reserved, 1, "vigil_inventory_reservations_total{result=reserved} increase")


@test
def test_insufficient_stock_is_409_and_unknown_product_404_with_nothing_changed(ctx):
    set_stock(ctx, 2, 5)
    before = scrape(ctx.inv)
    with unchanged(ctx, "failed reservations"):
        check_error(reserve(ctx.inv, 2, 6), 409, "insufficient_stock", "6 of 5")
        check_error(reserve(ctx.inv, 999999, 1), 404, "not_found", "unknown product")
    check_eq(reserve(ctx.inv, 2, 5).body.get("remaining"), 0, "all 5")
    check_error(reserve(ctx.inv, 2, 1), 409, "insufficient_stock", "1 of 0")
    after = scrape(ctx.inv)
    for result, n in (("insufficient", 2), ("not_found", 1)):
        got = (harness.metric_value(after, "vigil_inventory_reservations_total", result=result)
               - harness.metric_value(before, "vigil_inventory_reservations_total",
                                      result=result))
        check_eq(got, n, f"reservations{{result={result}}} increase")
    set_stock(ctx, 2, 200)


@test
def test_a_reservation_is_visible_on_the_next_read(ctx):
    set_stock(ctx, 4, 1000)
    for i in range(25):
        # Both entries warm (the second read of each is a hit) ...
        for _ in range(2):
            get_product(ctx.inv, 4)
            ctx.inv.get("/products")
        check_eq(ctx.inv.get("/products").body["source"], "cache", "warm list")
        r = reserve(ctx.inv, 4, 1 + i % 3)
        check_eq(r.status, 200, "reserve")
        remaining = r.body["remaining"]
        # ... and the very next read shows the new stock.
        check_eq(get_product(ctx.inv, 4).body["stock"], remaining,
                 f"GET /product/4 after reservation {i}")
        listed = {p["id"]: p["stock"] for p in ctx.inv.get("/products").body["products"]}
        check_eq(listed[4], remaining, f"GET /products after reservation {i}")
    check_eq(db_stock(ctx, 4), remaining, "stock in PostgreSQL")


@test
def test_concurrent_reservations_never_oversell(ctx):
    set_stock(ctx, 1, 100)
    sold_before = int(sql(ctx, "SELECT units_sold FROM inventory.products WHERE id = 1"))
    stop = threading.Event()
    lowest = [100]
    admin_dsn = ctx.stack.env["VIGIL_TEST_PG_ADMIN_DSN"].replace("dbname=postgres",
                                                                 "dbname=vigil")
    watcher_psql = harness.PsqlSession(admin_dsn)

    def watch():
        while not stop.is_set():
            v = int(watcher_psql.query("SELECT stock FROM inventory.products WHERE id = 1"))
            lowest[0] = min(lowest[0], v)
            time.sleep(0.01)

    retried = [0]

    def one(_):
        # A 503 (no pooled connection free in time on a busy host) changed
        # nothing, so a client may send it again; any other answer is final.
        for _ in range(10):
            r = reserve(ctx.inv, 1, 1, timeout=60)
            if r.status != 503:
                return r
            retried[0] += 1
            time.sleep(0.1)
        return r

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(one, range(500)))
    finally:
        stop.set()
        w.join(10)
        watcher_psql.close()
    statuses = [r.status for r in results]
    ok = [r for r in results if r.status == 200]
    check_eq(statuses.count(200), 100, "successful reservations")
    check_eq(statuses.count(409), 400, f"409 answers (others: "
                                       f"{sorted(set(statuses) - {200, 409})})")
    for r in results:
        if r.status == 409:
            check_error(r, 409, "insufficient_stock")
    check_eq(sorted(r.body["remaining"] for r in ok), list(range(100)),
             "each success saw a distinct remaining stock")
    check_eq(db_stock(ctx, 1), 0, "final stock")
    check(lowest[0] >= 0, f"stock went negative: {lowest[0]}")
    check_eq(int(sql(ctx, "SELECT units_sold FROM inventory.products WHERE id = 1")),
             sold_before + 100, "units_sold")
    check_eq(get_product(ctx.inv, 1).body["stock"], 0, "stock read through the cache")
    if retried[0]:
        runner.note(f"oversell: {retried[0]} reservations answered 503 (pool busy) and were "
                    f"sent again")
    set_stock(ctx, 1, 50)


# --------------------------------------------------------------------------
# reservations: owner, token, expiry, release

def metric_sum(daemons, name, **labels):
    """A counter summed over several instances (each sweeps on its own)."""
    return sum(harness.metric_value(scrape(d), name, **labels) for d in daemons)


@contextlib.contextmanager
def instances(ctx, n, env=None):
    """n more inventoryd instances on the same database, stopped after the
    test (so that only ctx.inv sweeps in the tests that follow)."""
    ds = [new_inventoryd(ctx, env) for _ in range(n)]
    try:
        for d in ds:
            d.start()
        yield ds
    finally:
        for d in ds:
            d.stop()


@test
def test_reserve_without_token_is_401(ctx):
    pid = new_product(ctx, 10)
    _, name, password = harness.register(ctx.authd)
    logged_out = harness.login(ctx.authd, name, password)
    check_eq(ctx.authd.post("/logout", token=logged_out).status, 204, "logout")
    before = scrape(ctx.inv)
    # Without a bearer token nothing else is looked at; with one, authd's
    # verdict comes after the body is found valid (as paymentd's charge).
    cases = [("no Authorization", {}, True),
             ("garbage token", {"Authorization": "Bearer x.y.z"}, False),
             ("revoked token", {"Authorization": "Bearer " + logged_out}, False),
             ("Basic scheme", {"Authorization": "Basic YWxpY2U6cHc="}, True),
             ("empty bearer", {"Authorization": "Bearer "}, True)]
    for what, headers, any_body in cases:
        bodies = [{"quantity": 3}, {"quantity": 1000}] + ([{"quantity": "bad"}] if any_body
                                                          else [])
        for body in bodies:
            with unchanged(ctx, what):
                r = ctx.inv.request("POST", f"/product/{pid}/reserve", body, headers=headers)
                check_error(r, 401, "invalid_token", f"{what}, body {body}")
                check(r.headers.get("www-authenticate", "").startswith("Bearer"),
                      f"{what}: no WWW-Authenticate")
    check_eq(db_stock(ctx, pid), 10, "stock")
    check_eq(int(sql(ctx, f"SELECT count(*) FROM inventory.reservations WHERE product_id = {pid}")),
             0, "reservations")
    after = scrape(ctx.inv)
    check_eq(harness.metric_value(after, "vigil_inventory_reservations_total", result="reserved")
             - harness.metric_value(before, "vigil_inventory_reservations_total",
                                    result="reserved"), 0, "reservations counted")


@test
def test_reservation_belongs_to_its_user_and_expires_after_ttl_seconds(ctx):
    pid = new_product(ctx, 10)
    r = reserve(ctx.inv, pid, 4, who="bob")
    check_eq(r.status, 200, "reserve")
    rid = r.body["reservation_id"]
    check_eq(reservation(ctx, rid), (TOKENS["bob_id"], "held", 4, pid), "reservation row")
    # expires_at is the row's, now() + [reservations] ttl_seconds (900 by default).
    ttl = float(sql(ctx, "SELECT extract(epoch FROM expires_at - created_at) FROM "
                         f"inventory.reservations WHERE id = {int(rid)}"))
    check_eq(ttl, 900.0, "lifetime of a reservation")
    row_expiry = sql(ctx, "SELECT to_char(expires_at AT TIME ZONE 'UTC', "
                          "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM inventory.reservations "
                          f"WHERE id = {int(rid)}")
    check_eq(r.body["expires_at"], row_expiry, "expires_at in the answer")
    check_eq(r.body["remaining"], 6, "remaining")


@test
def test_unpaid_reservation_expires_and_returns_stock(ctx):
    # A second instance on the same database, reservations of 1 s: both
    # sweep, and the stock comes back exactly once.
    with instances(ctx, 1, {"VIGIL_RESERVATIONS_TTL_SECONDS": "1"}) as (quick,):
        pid = new_product(ctx, 10)
        daemons = (ctx.inv, quick)
        expired_before = metric_sum(daemons, "vigil_inventory_reservations_expired_total")
        r = reserve(quick, pid, 3)
        check_eq(r.status, 200, "reserve")
        rid = r.body["reservation_id"]
        # Warm both caches with the reduced stock: expiry must invalidate them.
        for d in daemons:
            for _ in range(2):
                check_eq(get_product(d, pid).body["stock"], 7, "stock while held")
        harness.wait_until(lambda: reservation(ctx, rid)[1] == "expired", 20,
                           what="the reservation to expire")
        check_eq(db_stock(ctx, pid), 10, "stock after expiry")
        check_eq(int(sql(ctx, f"SELECT units_sold FROM inventory.products WHERE id = {pid}")), 0,
                 "units_sold after expiry")
        for d in daemons:
            harness.wait_until(lambda d=d: get_product(d, pid).body["stock"] == 10, 10,
                               what="the cached stock to show the returned units")
        check_eq(metric_sum(daemons, "vigil_inventory_reservations_expired_total")
                 - expired_before, 1, "vigil_inventory_reservations_expired_total increase")
        # Ended: neither releasable nor expired twice.
        check_error(release(quick, rid), 404, "not_found", "release after expiry")
        check_eq(db_stock(ctx, pid), 10, "stock after a late release")


@test
def test_release_returns_stock_owner_only(ctx):
    pid = new_product(ctx, 10)
    r = reserve(ctx.inv, pid, 4)
    check_eq(r.status, 200, "reserve")
    rid = r.body["reservation_id"]
    for _ in range(2):
        check_eq(get_product(ctx.inv, pid).body["stock"], 6, "stock while held")
    before = scrape(ctx.inv)
    with unchanged(ctx, "refused releases"):
        check_error(release(ctx.inv, rid, who=None), 401, "invalid_token", "no token")
        check_error(release(ctx.inv, rid, who="bob"), 404, "not_found", "another user's")
        for bad in (rid + 1000000, "abc", "0", "-1", "99999999999999999999"):
            check_error(release(ctx.inv, bad), 404, "not_found", f"reservation {bad!r}")
    r = release(ctx.inv, rid)
    check_eq(r.status, 204, "release by the owner")
    check_eq(r.body, b"", "204 body")
    check_eq(reservation(ctx, rid)[1], "released", "state")
    check_eq(db_stock(ctx, pid), 10, "stock after release")
    check_eq(get_product(ctx.inv, pid).body["stock"], 10, "stock read through the cache")
    check_error(release(ctx.inv, rid), 404, "not_found", "second release")
    check_eq(db_stock(ctx, pid), 10, "stock after a second release")
    check_eq(harness.metric_value(scrape(ctx.inv), "vigil_inventory_reservations_released_total")
             - harness.metric_value(before, "vigil_inventory_reservations_released_total"), 1,
             "vigil_inventory_reservations_released_total increase")


@test
def test_reserve_release_expire_never_oversell(ctx):
    # Two instances sweeping reservations of 1 s while threads reserve and
    # release, some right when the sweep expires them. A watcher checks in
    # one snapshot that stock + held units is what it was, and stock >= 0.
    stock = 40
    pid = new_product(ctx, stock)
    with instances(ctx, 2, {"VIGIL_RESERVATIONS_TTL_SECONDS": "1"}) as quick:
        expired_before = metric_sum(quick + [ctx.inv],
                                    "vigil_inventory_reservations_expired_total")
        admin_dsn = ctx.stack.env["VIGIL_TEST_PG_ADMIN_DSN"].replace("dbname=postgres",
                                                                     "dbname=vigil")
        watcher_psql = harness.PsqlSession(admin_dsn)
        stop = threading.Event()
        seen = []

        def watch():
            while not stop.is_set():
                row = watcher_psql.query(
                    "SELECT p.stock, p.stock + coalesce((SELECT sum(quantity) FROM"
                    " inventory.reservations r"
                    " WHERE r.product_id = p.id AND r.state = 'held'), 0)"
                    f" FROM inventory.products p WHERE p.id = {pid}")
                seen.append(tuple(int(x) for x in row.split("|")))
                time.sleep(0.005)

        def worker(seed):
            # Bounded in count and time; a 409 (all stock held) waits a little
            # for releases and expiries to bring some back.
            rng = random.Random(seed)
            out = []
            deadline = time.monotonic() + 6
            for _ in range(40):
                if time.monotonic() > deadline:
                    break
                d = quick[rng.randrange(2)]
                r = reserve(d, pid, rng.randint(1, 4), timeout=30)
                out.append(("reserve", r.status))
                if r.status != 200:
                    time.sleep(0.05)
                    continue
                fate = rng.random()
                if fate < 0.2:
                    continue  # left to expire
                # Release at once, or right around the expiry, racing the sweeps.
                time.sleep(0 if fate < 0.6 else rng.uniform(0.9, 1.3))
                out.append(("release", release(quick[rng.randrange(2)],
                                               r.body["reservation_id"], timeout=30).status))
            return out

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                results = [x for out in pool.map(worker, range(8)) for x in out]
            harness.wait_until(lambda: int(sql(ctx, "SELECT count(*) FROM inventory.reservations "
                                                    f"WHERE product_id = {pid} AND state = 'held'"))
                               == 0, 30, what="every reservation to end")
        finally:
            stop.set()
            w.join(10)
            watcher_psql.close()

        reserves = [s for k, s in results if k == "reserve"]
        releases = [s for k, s in results if k == "release"]
        check(set(reserves) <= {200, 409}, f"reserve answers {sorted(set(reserves))}")
        check(set(releases) <= {204, 404}, f"release answers {sorted(set(releases))}")
        check(reserves.count(200) >= 20, f"only {reserves.count(200)} reservations succeeded")
        check(len(seen) >= 20, f"the watcher looked only {len(seen)} times")
        check_eq(min(s for s, _ in seen) >= 0, True, "stock never negative")
        bad = [x for x in seen if x[1] != stock]
        check(not bad, f"stock + held units was not {stock}: {bad[:5]}")
        check_eq(db_stock(ctx, pid), stock, "stock once every reservation ended")
        states = dict(tuple(line.split("|")) for line in sql(
            ctx, "SELECT state, count(*) FROM inventory.reservations "
                 f"WHERE product_id = {pid} GROUP BY state").splitlines())
        check_eq(int(states.get("released", 0)), releases.count(204), "released rows = 204 answers")
        check_eq(int(states.get("released", 0)) + int(states.get("expired", 0)),
                 reserves.count(200), "every reservation released or expired, once")
        check_eq(metric_sum(quick + [ctx.inv], "vigil_inventory_reservations_expired_total")
                 - expired_before, int(states.get("expired", 0)), "expired counted once each")
        runner.note(f"oversell: {reserves.count(200)} reservations, "
                    f"{releases.count(204)} released, "
                    f"{states.get('expired', 0)} expired, {releases.count(404)} releases lost to "
                    f"expiry, {len(seen)} snapshots")


@test
def test_upgrade_from_the_first_schema_version_keeps_the_catalog(ctx):
    # A database as the previous release left it: migration 1 only.
    sql(ctx, "DROP FUNCTION inventory.pay_reservation(bigint, bigint, bigint);"
             " DROP FUNCTION inventory.reservation_state(bigint, bigint);"
             " DROP TABLE inventory.reservations;"
             " DELETE FROM inventory.schema_migrations WHERE version = 2;"
             " UPDATE inventory.products SET stock = 33 WHERE id = 5")
    catalog = sql(ctx, "SELECT id, name, stock, units_sold FROM inventory.products ORDER BY id")
    with instances(ctx, 1) as (d,):
        check_eq(sql(ctx, "SELECT string_agg(version::text, ',' ORDER BY version) FROM "
                          "inventory.schema_migrations"), "1,2", "migrations applied")
        check_eq(sql(ctx, "SELECT id, name, stock, units_sold FROM inventory.products ORDER BY id"),
                 catalog, "catalog after the upgrade")
        drop_cached(ctx, "inventory:product:5", "inventory:products")
        r = reserve(d, 5, 3)
        check_eq(r.status, 200, "reserve after the upgrade")
        check_eq(r.body["remaining"], 30, "remaining")
        check_eq(release(d, r.body["reservation_id"]).status, 204, "release after the upgrade")
        check_eq(db_stock(ctx, 5), 33, "stock")
        # paymentd's role is granted the two functions again.
        harness.wait_until(lambda: sql(ctx, "SELECT has_function_privilege('vigil_payment',"
                                            " 'inventory.pay_reservation(bigint, bigint, bigint)',"
                                            " 'EXECUTE')") == "t", 10,
                           what="vigil_payment to be granted pay_reservation")
        check_eq(sql(ctx, "SELECT has_table_privilege('vigil_payment', 'inventory.reservations',"
                          " 'SELECT')"), "f", "vigil_payment reads no inventory table")
        set_stock(ctx, 5, 100)


@test
def test_payment_role_created_after_start_is_granted_within_seconds(ctx):
    """On a fresh install paymentd's package creates its role after
    inventoryd has started: until inventoryd grants it, charges naming a
    reservation fail with 503, so a missing role is looked for every 2 s,
    not every minute."""
    role = f"vigil_payment_late_{os.getpid()}"
    granted = (f"SELECT has_function_privilege('{role}',"
               " 'inventory.pay_reservation(bigint, bigint, bigint)', 'EXECUTE')")
    sql(ctx, f"DROP ROLE IF EXISTS {role}")
    with instances(ctx, 1, {"VIGIL_RESERVATIONS_PAYMENT_ROLE": role}) as (d,):
        harness.wait_until(lambda: f"PostgreSQL role {role} does not exist" in d.log_text(), 15,
                           what="inventoryd to find the role missing")
        sql(ctx, f"CREATE ROLE {role}")
        try:
            t0 = time.monotonic()
            harness.wait_until(lambda: sql(ctx, granted) == "t", 10, what=f"{role} to be granted pay_reservation")
            print(f"# granted {time.monotonic() - t0:.1f} s after the role was created")
        finally:
            sql(ctx, f"DROP OWNED BY {role}; DROP ROLE {role}")


@test
def test_cache_hit_ratio_after_warm_up_is_at_least_90_percent(ctx):
    set_stock(ctx, 5, 100000)
    paths = ["/products"] + [f"/product/{i}" for i in range(1, 6)]
    for p in paths:  # warm-up
        check_eq(ctx.inv.get(p).status, 200, f"warm-up {p}")
    before = scrape(ctx.inv)
    rng = random.Random(4)
    # 98 % reads over the catalog and five products, 2 % reservations (each
    # one invalidates two entries).
    ops = [("reserve", None) if rng.random() < 0.02 else ("get", rng.choice(paths))
           for _ in range(1500)]

    def run(op):
        kind, path = op
        r = reserve(ctx.inv, 5, 1) if kind == "reserve" else ctx.inv.get(path)
        return r.status

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(run, ops))
    check(all(s == 200 for s in statuses), f"non-200 answers: {set(statuses)}")
    after = scrape(ctx.inv)
    hits = cache_counts(after)[0] - cache_counts(before)[0]
    misses = cache_counts(after)[1] - cache_counts(before)[1]
    ratio = hits / (hits + misses)
    writes = sum(1 for k, _ in ops if k == "reserve")
    runner.note(f"hit ratio {ratio:.3f} ({hits:.0f} hits, {misses:.0f} misses, "
                f"{writes} reservations among {len(ops)} requests)")
    check(ratio >= 0.90, f"hit ratio {ratio:.3f} < 0.90 ({hits:.0f} hits, {misses:.0f} misses)")


@test
def test_reload_changes_the_ttl_of_new_entries(ctx):
    d = ctx.inv

    def reloads():
        return d.log_text().count("Configuration reloaded")

    before = reloads()
    with open(d.config, "w", encoding="utf-8") as f:
        f.write("[cache]\nttl_seconds = 5\njitter_percent = 0\n")
    try:
        d.proc.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: reloads() > before, 10, what="the reload")
        drop_cached(ctx, "inventory:product:2")
        get_product(d, 2)
        ttl = ctx.stack.redis("PTTL", "inventory:product:2")
        check(0 < ttl <= 5000, f"PTTL {ttl} after reloading ttl_seconds = 5")
    finally:
        # The next tests expect the default TTL back: wait for that reload.
        before = reloads()
        with open(d.config, "w", encoding="utf-8"):
            pass
        d.proc.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: reloads() > before, 10, what="the reload back to defaults")


@test
def test_metrics_pass_promtool(ctx):
    text = ctx.inv.get("/metrics").body.decode()
    for name in ("vigil_cache_requests_total", "vigil_inventory_reservations_total",
                 "vigil_inventory_sales_total", "vigil_http_requests_total",
                 "vigil_inventory_reservations_expired_total",
                 "vigil_inventory_reservations_released_total",
                 'vigil_dependency_up{dependency="auth"}'):
        check(name in text, f"{name} missing from /metrics")
    try:
        p = subprocess.run([harness.PROMTOOL, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30, check=False)
    except FileNotFoundError:
        runner.note("promtool not installed: metrics format not checked")
        return
    out = (p.stdout + p.stderr).decode(errors="replace").strip()
    check(p.returncode == 0 and not out, f"promtool check metrics exited {p.returncode}:\n{out}")


# --------------------------------------------------------------------------
# bad input: status, error code, and no change

def expect_bad(ctx, method, path, body, status, code, what, headers=None):
    """A request with alice's token (so that it is the input that is bad)."""
    with unchanged(ctx, what):
        r = ctx.inv.request(method, path, body, headers=headers, token=TOKENS["alice"])
        check_error(r, status, code, what)


@test
def test_malformed_and_non_object_json_is_400(ctx):
    cases = [
        (b"{", "invalid_json"), (b"{\"quantity\": 1", "invalid_json"), (b"", "invalid_json"),
        (b"{'quantity': 1}", "invalid_json"), (b"{\"quantity\": 1} x", "invalid_json"),
        (b"{\"quantity\": NaN}", "invalid_json"), (b"[1]", "not_an_object"),
        (b"1", "not_an_object"), (b"\"quantity\"", "not_an_object"),
        (b"{\"quantity\": \"\xff\"}", "invalid_utf8"),
    ]
    for body, code in cases:
        expect_bad(ctx, "POST", "/product/1/reserve", body, 400, code, f"body {body!r}",
                   headers=JSON)


@test
def test_wrong_types_and_bad_quantities_are_400_invalid_field(ctx):
    bad = ["1", "one", True, False, [1], {"n": 1}, 1.5, 1.0, 0.5, "1e2",
           0, -1, -1000, 1001, 2 ** 31, 2 ** 63, -2 ** 63, 10 ** 30]
    for q in bad:
        expect_bad(ctx, "POST", "/product/1/reserve", {"quantity": q}, 400, "invalid_field",
                   f"quantity {q!r}")
    for raw in (b'{"quantity": 1e2}', b'{"quantity": 2.0}', b'{"quantity": -0.5}',
                b'{"quantity": 99999999999999999999999}', b'{"quantity": 0.01}'):
        expect_bad(ctx, "POST", "/product/1/reserve", raw, 400, "invalid_field",
                   f"body {raw!r}", headers=JSON)


@test
def test_missing_quantity_is_400_missing_field(ctx):
    for body in ({}, {"qty": 1}, {"quantity": None}, {"Quantity": 1}):
        expect_bad(ctx, "POST", "/product/1/reserve", body, 400, "missing_field",
                   f"body {body!r}")


@test
def test_bad_product_ids_are_400_invalid_field_on_every_endpoint(ctx):
    ids = ["abc", "-1", "0", "1.5", "1e3", "+1", "01", "0x10", "99999999999999999999",
           "9223372036854775808", "1%20", "1a"]
    for pid in ids:
        expect_bad(ctx, "GET", f"/product/{pid}", None, 400, "invalid_field", f"GET id {pid!r}")
        expect_bad(ctx, "POST", f"/product/{pid}/reserve", {"quantity": 1}, 400,
                   "invalid_field", f"reserve id {pid!r}")


@test
def test_wrong_content_type_is_415(ctx):
    expect_bad(ctx, "POST", "/product/1/reserve", b'{"quantity": 1}', 415,
               "unsupported_media_type", "text/plain", headers={"Content-Type": "text/plain"})


@test
def test_one_mib_body_is_413(ctx):
    body = b'{"quantity": 1, "pad": "' + b"x" * (1 << 20) + b'"}'
    with unchanged(ctx, "1 MiB body"):
        r = ctx.inv.raw(harness.build_request("POST", "/product/1/reserve", body, JSON))
        check_error(r, 413, "payload_too_large", "1 MiB body")


@test
def test_huge_header_is_431(ctx):
    with unchanged(ctx, "huge header"):
        r = ctx.inv.raw(harness.build_request("GET", "/product/1",
                                              headers={"X-Big": "a" * 20000}))
        check_eq(r.status, 431, "status for a 20 kB header")


@test
def test_unknown_routes_are_404_and_wrong_methods_405(ctx):
    for path in ("/nope", "/products/", "/product", "/product/1/reserve/x", "/product/1/buy",
                 "/api/v1/inventory/products"):
        expect_bad(ctx, "GET", path, None, 404, "not_found", f"GET {path}")
    for method, path in (("POST", "/products"), ("DELETE", "/product/1"), ("PUT", "/product/1"),
                         ("GET", "/product/1/reserve"), ("PATCH", "/product/1/reserve"),
                         ("GET", "/reservation/1"), ("POST", "/reservation/1")):
        with unchanged(ctx, f"{method} {path}"):
            r = ctx.inv.request(method, path, {"quantity": 1}, token=TOKENS["alice"])
            check_error(r, 405, "method_not_allowed", f"{method} {path}")
            check(r.headers.get("allow"), f"{method} {path}: no Allow header")


# --------------------------------------------------------------------------
# Redis outage (last: it restarts Redis)

@test
def test_redis_down_serves_from_postgres_and_degrades_readiness_then_recovers(ctx):
    d = ctx.inv
    set_stock(ctx, 2, 300)
    held = reserve(d, 2, 3)
    check_eq(held.status, 200, "reserve before the outage")
    get_product(d, 2)
    before = scrape(d)
    check_eq(harness.metric_value(before, "vigil_local_cache_active", cache="catalog"), 1,
             "local cache on before the outage")
    ctx.stack.kill("redis")
    try:
        # The local cache serves while its invalidation connection is up;
        # its thread notices the loss (EOF, or two seconds of silence) in
        # its own time, on a busy machine later than the next request.
        # From then on every answer comes from PostgreSQL.
        harness.wait_until(lambda: harness.metric_value(scrape(d), "vigil_local_cache_active",
                                                        cache="catalog") == 0, 10,
                           what="the local cache off after Redis died")
        for _ in range(20):
            r = d.get("/products")
            check_eq(r.status, 200, "GET /products without Redis")
            check_eq(r.body["source"], "database", "source without Redis")
            check_eq(get_product(d, 2).body["stock"], db_stock(ctx, 2), "stock without Redis")
        # authd keeps sessions (and their revocation) in Redis: it cannot
        # vouch for a token now, so nothing is reserved.
        with unchanged(ctx, "reserve without Redis"):
            check_error(reserve(d, 2, 3), 503, "dependency_unavailable", "reserve without Redis")
        # The sweep still returns stock, and its invalidation cannot reach
        # Redis: the purge stays pending.
        sql(ctx, "UPDATE inventory.reservations SET expires_at = now() "
                 f"WHERE id = {int(held.body['reservation_id'])}")
        harness.wait_until(lambda: db_stock(ctx, 2) == 300, 15, what="the expiry without Redis")
        check_eq(get_product(d, 2).body["stock"], 300, "expiry visible without Redis")
        check_error(d.get("/product/999999"), 404, "not_found", "unknown id without Redis")
        ready = d.get("/ready")
        check_error(ready, 503, "dependency_unavailable", "/ready without Redis")
        check_eq(ready.body.get("failing"), "redis", "/ready names the failing dependency")
        check_eq(d.get("/health").status, 200, "/health without Redis")
        after = scrape(d)
        check_eq(count_5xx(after) - count_5xx(before), 0,
                 "5xx answers of the catalog during the outage")
        check_eq(harness.metric_value(after, "vigil_dependency_up", dependency="redis"), 0,
                 "vigil_dependency_up{redis}")
    finally:
        ctx.stack.start_one("redis")
    d.wait_ready(30)
    # The invalidation that could not reach Redis left a purge pending.
    harness.wait_until(lambda: "Cache purged" in d.log_text(), 15, what="the deferred purge")
    remaining = db_stock(ctx, 2)
    harness.wait_until(lambda: d.get("/products").body["source"] == "cache", 15,
                       what="/products served from the cache again")
    listed = {p["id"]: p["stock"] for p in d.get("/products").body["products"]}
    check_eq(listed[2], remaining, "stock listed after the outage")
    check_eq(get_product(d, 2).body["stock"], remaining, "stock read after the outage")
    check_eq(count_5xx(scrape(d)) - count_5xx(before), 0, "5xx answers after the outage")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=[harness.daemon_binary("inventoryd")]))
