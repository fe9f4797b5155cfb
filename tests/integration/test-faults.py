#!/usr/bin/env python3
"""Integration tests of [faults] in vigil-authd and vigil-inventoryd against
real PostgreSQL and Redis, set the way an operator (or `vigilctl fault`)
sets them: a drop-in in <config>.d/ and SIGHUP.

error_ratio answers 503 on the API routes only and those answers count as
5xx in vigil_http_requests_total; latency_ms delays the API, not /ready or
/metrics; routes narrows both; fail_dependency makes /ready fail and
vigil_dependency_up 0 until it is cleared; vigil_fault_active shows what is
set; a bad [faults] is refused with file and line and changes nothing. By
hand:
  top_builddir=/path/to/build python3 tests/integration/test-faults.py [TEST...]
"""

import os
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq, check_error  # noqa: E402

runner = harness.Runner("test-faults", test_timeout=180)
test = runner.test

DROPIN = "50-vigilctl-fault.conf"


def setup(ctx):
    harness.start_authd_stack(ctx)
    ctx.token, _, _ = harness.new_session(ctx.authd)
    ctx.inv = harness.new_inventoryd(ctx)
    ctx.inv.start()


# --------------------------------------------------------------------------
# helpers

def reloads(d):
    text = d.log_text()
    return text.count("Configuration reloaded") + text.count("Reload failed")


def set_faults(d, text):
    """Write text as d's fault drop-in (None removes it), SIGHUP d and wait
    until it logged the outcome; returns True when it was applied."""
    dropin_dir = d.config + ".d"
    os.makedirs(dropin_dir, exist_ok=True)
    path = os.path.join(dropin_dir, DROPIN)
    if text is None:
        if os.path.exists(path):
            os.unlink(path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write("[faults]\n" + text)
    before = reloads(d)
    before_failed = d.log_text().count("Reload failed")
    d.proc.send_signal(signal.SIGHUP)
    harness.wait_until(lambda: reloads(d) > before, 15, what=f"{d.name} to log the reload")
    return d.log_text().count("Reload failed") == before_failed


def apply(d, text):
    check(set_faults(d, text), f"{d.name} refused [faults] {text!r}: {d.log_tail(5)}")


def clear(d):
    check(set_faults(d, None), f"{d.name} refused to clear its faults: {d.log_tail(5)}")


def scrape(d):
    r = d.get("/metrics")
    check_eq(r.status, 200, f"{d.name} /metrics")
    body = r.body.decode() if isinstance(r.body, bytes) else r.body
    return harness.parse_metrics(body)


def requests_total(d, route, method, code):
    return harness.metric_value(scrape(d), "vigil_http_requests_total", route=route,
                                method=method, code=code)


def fault_active(d, fault):
    samples = [s for s in scrape(d) if s.name == "vigil_fault_active"
               and s.labels.get("fault") == fault]
    check_eq(len(samples), 1, f"{d.name} vigil_fault_active{{fault={fault!r}}} samples")
    return samples[0].value


def products(ctx):
    return ctx.inv.get("/products")


# --------------------------------------------------------------------------
# error_ratio

@test
def test_authd_error_ratio_1_answers_503_counted_as_5xx_and_ready_stays_200(ctx):
    d = ctx.authd
    check_eq(fault_active(d, "error_ratio"), 0, "error_ratio before")
    before = requests_total(d, "/verify", "POST", "503")
    apply(d, "error_ratio = 1\n")
    try:
        check_eq(fault_active(d, "error_ratio"), 1, "vigil_fault_active{error_ratio}")
        for _ in range(5):
            r = d.post("/verify", token=ctx.token)
            check_error(r, 503, "unavailable", "POST /verify under error_ratio = 1")
            check_eq(r.headers.get("Retry-After"), "1", "Retry-After")
        check_error(d.post("/login", {"username": "x", "password": "y"}), 503, "unavailable",
                    "POST /login")
        check_eq(d.get("/ready").status, 200, "/ready under error_ratio = 1")
        check_eq(d.get("/health").status, 200, "/health under error_ratio = 1")
        check_eq(requests_total(d, "/verify", "POST", "503") - before, 5,
                 "503s of POST /verify counted in vigil_http_requests_total")
    finally:
        clear(d)
    check_eq(d.post("/verify", token=ctx.token).status, 200, "POST /verify after clearing")
    check_eq(fault_active(d, "error_ratio"), 0, "error_ratio after clearing")


@test
def test_inventoryd_error_ratio_1_answers_503_counted_as_5xx_and_ready_stays_200(ctx):
    d = ctx.inv
    before = requests_total(d, "/products", "GET", "503")
    apply(d, "error_ratio = 1.0\n")
    try:
        check_eq(fault_active(d, "error_ratio"), 1, "vigil_fault_active{error_ratio}")
        for _ in range(4):
            check_error(products(ctx), 503, "unavailable", "GET /products")
        check_eq(d.get("/ready").status, 200, "/ready under error_ratio = 1")
        check_eq(requests_total(d, "/products", "GET", "503") - before, 4,
                 "503s of GET /products counted")
    finally:
        clear(d)
    check_eq(products(ctx).status, 200, "GET /products after clearing")


@test
def test_error_ratio_half_fails_about_half(ctx):
    apply(ctx.inv, "error_ratio = 0.5\n")
    try:
        statuses = [products(ctx).status for _ in range(200)]
    finally:
        clear(ctx.inv)
    failed = statuses.count(503)
    check_eq(failed + statuses.count(200), 200, f"only 200 and 503: {set(statuses)}")
    # Binomial(200, 0.5): mean 100, sd ~7.1; 60..140 is beyond 5.6 sd.
    check(60 <= failed <= 140, f"{failed} of 200 failed under error_ratio = 0.5")


@test
def test_routes_narrows_the_faults_to_matching_routes(ctx):
    apply(ctx.inv, "error_ratio = 1\nroutes = /product/*\n")
    try:
        check_error(ctx.inv.get("/product/1"), 503, "unavailable", "GET /product/1 (selected)")
        check_eq(products(ctx).status, 200, "GET /products (not selected)")
    finally:
        clear(ctx.inv)
    check_eq(ctx.inv.get("/product/1").status, 200, "GET /product/1 after clearing")


# --------------------------------------------------------------------------
# latency_ms

@test
def test_latency_ms_delays_the_api_but_not_ready_or_metrics(ctx):
    d = ctx.inv
    apply(d, "latency_ms = 5000\n")
    try:
        check_eq(fault_active(d, "latency_ms"), 5000, "vigil_fault_active{latency_ms}")
        result = {}

        def slow():
            t0 = time.monotonic()
            result["status"] = products(ctx).status
            result["seconds"] = time.monotonic() - t0

        t = threading.Thread(target=slow)
        t.start()
        # While the delayed request is held, /ready and /metrics answer.
        check_eq(d.get("/ready").status, 200, "/ready during a delayed request")
        check_eq(d.get("/metrics").status, 200, "/metrics during a delayed request")
        check(t.is_alive(), "the delayed request finished before /ready and /metrics answered")
        t.join(30)
        check_eq(result.get("status"), 200, "the delayed request's status")
        check(result["seconds"] >= 5.0, f"GET /products took {result['seconds']:.3f} s < 5 s")
    finally:
        clear(d)
    check_eq(fault_active(d, "latency_ms"), 0, "latency_ms after clearing")


# --------------------------------------------------------------------------
# fail_dependency

@test
def test_inventoryd_fail_dependency_redis_fails_ready_until_cleared(ctx):
    d = ctx.inv
    apply(d, "fail_dependency = redis\n")
    try:
        r = d.get("/ready")
        check_error(r, 503, "dependency_unavailable", "/ready with redis failed")
        check_eq(r.body.get("failing"), "redis", "/ready names the failed dependency")
        check_eq(harness.metric_value(scrape(d), "vigil_dependency_up", dependency="redis"), 0,
                 "vigil_dependency_up{redis}")
        check_eq(fault_active(d, "fail_dependency"), 1, "vigil_fault_active{fail_dependency}")
        check_eq(d.get("/health").status, 200, "/health (liveness) with redis failed")
        # inventoryd serves the catalog from PostgreSQL when Redis is down.
        r = products(ctx)
        check_eq(r.status, 200, "GET /products with redis failed")
        check_eq(r.body["source"], "database", "the catalog's source with redis failed")
    finally:
        clear(d)
    check_eq(d.get("/ready").status, 200, "/ready after clearing")
    check_eq(harness.metric_value(scrape(d), "vigil_dependency_up", dependency="redis"), 1,
             "vigil_dependency_up{redis} after clearing")
    check_eq(fault_active(d, "fail_dependency"), 0, "fail_dependency after clearing")


@test
def test_authd_fail_dependency_postgres_fails_requests_needing_it(ctx):
    d = ctx.authd
    apply(d, "fail_dependency = postgres\n")
    try:
        r = d.get("/ready")
        check_error(r, 503, "dependency_unavailable", "/ready with postgres failed")
        check_eq(r.body.get("failing"), "postgres", "/ready names postgres")
        r = d.post("/register", {"username": harness.unique_name(), "password": "long enough pw"})
        check_eq(r.status, 503, f"POST /register with postgres failed: {r.body!r}")
        check_eq(harness.metric_value(scrape(d), "vigil_dependency_up", dependency="postgres"),
                 0, "vigil_dependency_up{postgres}")
    finally:
        clear(d)
    check_eq(d.get("/ready").status, 200, "/ready after clearing")
    harness.register(d)


# --------------------------------------------------------------------------
# bad values

@test
def test_a_bad_faults_reload_names_file_and_line_and_keeps_the_old_values(ctx):
    d = ctx.inv
    apply(d, "error_ratio = 1\n")
    try:
        for bad, key in (("error_ratio = 0\nroutes = /nowhere\n", "routes"),
                         ("error_ratio = 0\nfail_dependency = amqp\n", "fail_dependency"),
                         ("error_ratio = 1.5\n", "error_ratio"),
                         ("latency_ms = 60001\n", "latency_ms")):
            check(not set_faults(d, bad), f"[faults] {bad!r} accepted")
            where = f"{DROPIN}:"
            lines = [ln for ln in d.log_text().splitlines() if where in ln and f"] {key}:" in ln]
            check(lines, f"no error naming {DROPIN}, its line and {key}: {d.log_tail(5)}")
            check_error(products(ctx), 503, "unavailable", f"after refusing {bad!r}")
            check_eq(fault_active(d, "error_ratio"), 1, f"error_ratio after refusing {bad!r}")
    finally:
        clear(d)
    check_eq(products(ctx).status, 200, "GET /products after clearing")


@test
def test_check_config_names_file_line_and_key_of_bad_faults(ctx):
    path = os.path.join(ctx.inv.dir, "bad-faults.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write("[faults]\nroutes = /products, nowhere\nfail_dependency = rabbit\n")
    r = ctx.inv.run("--config", path, "--check-config")
    check(r.returncode != 0, "bad [faults] passed --check-config")
    for line, key in ((2, "routes"), (3, "fail_dependency")):
        check(f"bad-faults.conf:{line}: [faults] {key}:" in r.stderr,
              f"line {line} ({key}) not named: {r.stderr}")
    check("postgres, redis, auth" in r.stderr, f"the valid dependencies not listed: {r.stderr}")


# --------------------------------------------------------------------------
# hang_seconds and leak_kib_per_second

@test
def test_hang_seconds_holds_every_request_once_then_serves_again(ctx):
    d = ctx.inv
    apply(d, "hang_seconds = 2\n")
    try:
        harness.wait_until(lambda: "Hanging for 2 s" in d.log_text(), 15, what="the hang")
        check_eq(fault_active(d, "hang_seconds"), 2, "vigil_fault_active{hang_seconds}")
        # Held until the hang is over, /health included.
        check_eq(d.get("/health").status, 200, "/health after the hang")
        check("Hang of 2 s over" in d.log_text(), "/health answered during the hang")
        # Once: the next requests are served at once.
        check_eq(d.get("/ready").status, 200, "/ready after the hang")
        check_eq(d.log_text().count("Hanging for"), 1, "hangs")
    finally:
        clear(d)


@test
def test_leak_kib_per_second_grows_resident_memory_and_clearing_frees_it(ctx):
    d = ctx.inv

    def leaked():
        return harness.metric_value(scrape(d), "vigil_fault_leaked_bytes")

    rss_before = harness.metric_value(scrape(d), "process_resident_memory_bytes")
    apply(d, "leak_kib_per_second = 8192\n")
    try:
        harness.wait_until(lambda: leaked() >= 16 * 1024 * 1024, 30, what="16 MiB leaked")
        rss = harness.metric_value(scrape(d), "process_resident_memory_bytes")
        check(rss - rss_before >= 12 * 1024 * 1024,
              f"resident memory grew by {(rss - rss_before) / 2**20:.1f} MiB only")
    finally:
        clear(d)
    check_eq(leaked(), 0, "vigil_fault_leaked_bytes after clearing")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=[harness.daemon_binary("authd"),
                                          harness.daemon_binary("inventoryd")]))
