#!/usr/bin/env python3
"""Integration tests of vigil-authd's /metrics: promtool-clean text format,
OpenMetrics negotiation with trace_id exemplars, route labels that are
templates, and the auth counters and gauges counting what happened."""

import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq  # noqa: E402

runner = harness.Runner("test-authd-metrics")
test = runner.test

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
ROUTES = {"/register", "/login", "/verify", "/logout", "/stats", "/health", "/ready", "/metrics"}


def setup(ctx):
    ctx.receiver = harness.OtlpReceiver()
    ctx.cleanup(ctx.receiver.close)
    harness.start_authd_stack(ctx, env={
        "VIGIL_TRACING_OTLP_ENDPOINT": ctx.receiver.url,
        "VIGIL_TRACING_SAMPLE_RATIO": "1",
    })
    traffic(ctx.authd)


def traffic(d):
    """A bit of everything, so every family has samples."""
    token, _, name = harness.new_session(d)
    d.post("/verify", token=token)
    d.post("/login", {"username": name, "password": "wrong password"})
    d.post("/login", {"username": "x", "password": 5})
    d.get("/stats")
    d.get("/no-such-route")
    d.get("/register")
    d.post("/logout", token=token)
    d.get("/ready")


def scrape(d, accept=None):
    r = d.get("/metrics", headers={"Accept": accept} if accept else None)
    check_eq(r.status, 200, "GET /metrics")
    return r, r.body.decode("utf-8")


def samples_of(d, accept=None):
    return harness.parse_metrics(scrape(d, accept)[1])


def promtool_check(text):
    p = subprocess.run([harness.PROMTOOL, "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30, check=False)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace").strip()


# --------------------------------------------------------------------------

@test
def test_text_format_passes_promtool_check_metrics(ctx):
    r, text = scrape(ctx.authd)
    ctype = r.headers.get("content-type") or ""
    check(ctype.startswith("text/plain") and "version=0.0.4" in ctype,
          f"Content-Type {ctype!r}")
    check("# EOF" not in text, "the text format carries an OpenMetrics # EOF")
    rc, out = promtool_check(text)
    check(rc == 0 and not out, f"promtool check metrics exited {rc}:\n{out}")


@test
def test_documented_families_are_exposed(ctx):
    _, text = scrape(ctx.authd)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    want = {
        "vigil_http_requests_total": "counter",
        "vigil_http_request_duration_seconds": "histogram",
        "vigil_http_requests_in_flight": "gauge",
        "vigil_auth_logins_total": "counter",
        "vigil_auth_active_sessions": "gauge",
        "vigil_build_info": "gauge",
        "vigil_dependency_up": "gauge",
        "process_cpu_seconds_total": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_open_fds": "gauge",
        "process_start_time_seconds": "gauge",
    }
    for name, typ in want.items():
        check_eq(types.get(name), typ, f"# TYPE of {name}")
    samples = harness.parse_metrics(text)
    build = [s for s in samples if s.name == "vigil_build_info"]
    check(len(build) == 1 and build[0].value == 1 and build[0].labels.get("version"),
          f"vigil_build_info: {build!r}")
    version = ctx.authd.run("--version").stdout
    check(build[0].labels["version"] in version,
          f"vigil_build_info version {build[0].labels['version']!r} not in --version {version!r}")
    for dep in ("postgres", "redis"):
        check_eq(harness.metric_value(samples, "vigil_dependency_up", dependency=dep), 1.0,
                 f"vigil_dependency_up{{dependency={dep!r}}}")
    check(harness.metric_value(samples, "process_resident_memory_bytes") > 0, "process RSS")
    les = [s.labels.get("le") for s in samples
           if s.name == "vigil_http_request_duration_seconds_bucket"
           and s.labels.get("route") == "/login"]
    check("+Inf" in les and "0.0005" in les and ("10" in les or "10.0" in les),
          f"duration buckets for /login do not span 0.0005..10 s: {sorted(set(les))}")


def samples_when(d, counted, what):
    """The samples once counted(samples) holds: a request is counted when it
    completes, just after its answer was sent, so a scrape right after the
    answer may not see it yet. Exact assertions follow the wait."""
    return harness.wait_until(lambda: (lambda s: s if counted(s) else None)(samples_of(d)), 10, interval=0.05,
                              what=what)


@test
def test_requests_total_counts_by_route_method_and_code(ctx):
    d = ctx.authd
    before = samples_of(d)
    for _ in range(3):
        d.post("/login", {"username": harness.unique_name("nobody"), "password": "whatever1"})
    d.post("/verify")

    def delta(**labels):
        return (harness.metric_value(after, "vigil_http_requests_total", **labels) -
                harness.metric_value(before, "vigil_http_requests_total", **labels))

    def counted(s):
        n = (harness.metric_value(s, "vigil_http_requests_total", route="/login", method="POST", code="401") -
             harness.metric_value(before, "vigil_http_requests_total", route="/login", method="POST", code="401"))
        v = (harness.metric_value(s, "vigil_http_requests_total", route="/verify", method="POST", code="401") -
             harness.metric_value(before, "vigil_http_requests_total", route="/verify", method="POST", code="401"))
        return n >= 3 and v >= 1
    after = samples_when(d, counted, "the four requests counted")
    check_eq(delta(route="/login", method="POST", code="401"), 3, "POST /login 401 delta")
    check_eq(delta(route="/verify", method="POST", code="401"), 1, "POST /verify 401 delta")
    check_eq(delta(route="/login", method="POST", code="200"), 0, "POST /login 200 delta")
    count_delta = (harness.metric_value(after, "vigil_http_request_duration_seconds_count",
                                        route="/login", method="POST") -
                   harness.metric_value(before, "vigil_http_request_duration_seconds_count",
                                        route="/login", method="POST"))
    check_eq(count_delta, 3, "duration histogram count delta for POST /login")


@test
def test_route_labels_are_templates_not_raw_paths(ctx):
    d = ctx.authd
    junk = "zz" + os.urandom(6).hex()
    for path in (f"/{junk}", f"/register/{junk}", f"/{junk}/{junk}?q={junk}"):
        check_eq(d.get(path).status, 404, f"GET {path}")
    samples = samples_of(d)
    routes = set()
    for s in samples:
        if s.name.startswith("vigil_http_request"):
            check(junk not in "".join(s.labels.values()), f"a raw path leaked into {s!r}")
            if "route" in s.labels:
                routes.add(s.labels["route"])
    unknown = routes - ROUTES
    check(len(unknown) <= 1, f"route labels beyond the route table: {sorted(unknown)}")
    if unknown:
        runner.note(f"requests matching no route are labelled route={unknown.pop()!r}")


@test
def test_logins_total_counts_successes_and_failures(ctx):
    d = ctx.authd
    _, name, pw = harness.register(d)
    before = samples_of(d)
    harness.login(d, name, pw)
    harness.login(d, name, pw)
    for _ in range(3):
        r = d.post("/login", {"username": name, "password": "not the password"})
        check_eq(r.status, 401, "wrong password")
    after = samples_when(d, lambda s: sum(x.value for x in s if x.name == "vigil_auth_logins_total") -
                         sum(x.value for x in before if x.name == "vigil_auth_logins_total") >= 5,
                         "the five logins counted")
    results = {s.labels.get("result") for s in after if s.name == "vigil_auth_logins_total"}

    def delta(result):
        return (harness.metric_value(after, "vigil_auth_logins_total", result=result) -
                harness.metric_value(before, "vigil_auth_logins_total", result=result))
    check_eq(delta("success"), 2, f"success delta (results seen: {sorted(results)})")
    failures = sum(delta(r) for r in results if r != "success")
    check_eq(failures, 3, f"failure delta over results {sorted(results - {'success'})}")
    if "failure" not in results:
        runner.note(f"vigil_auth_logins_total result values: {sorted(results)}")


@test
def test_active_sessions_gauge_follows_stats(ctx):
    d = ctx.authd

    def agrees():
        stats = d.get("/stats").body["active_sessions"]
        gauge = harness.metric_value(samples_of(d), "vigil_auth_active_sessions")
        return (stats, gauge) if gauge == stats else None
    s0, _ = harness.wait_until(agrees, 20, interval=0.5, what="gauge == /stats")
    token, _, _ = harness.new_session(d)
    s1, _ = harness.wait_until(agrees, 20, interval=0.5, what="gauge == /stats after login")
    check_eq(s1, s0 + 1, "active sessions after a login")
    d.post("/logout", token=token)
    s2, _ = harness.wait_until(agrees, 20, interval=0.5, what="gauge == /stats after logout")
    check_eq(s2, s0, "active sessions after the logout")


@test
def test_openmetrics_is_negotiated_with_trace_id_exemplars(ctx):
    d = ctx.authd
    _, name, pw = harness.register(d)
    tid = os.urandom(16).hex()
    harness.login(d, name, pw, headers={"traceparent": f"00-{tid}-{os.urandom(8).hex()}-01"})

    r, text = scrape(d, accept=OPENMETRICS)
    ctype = r.headers.get("content-type") or ""
    check(ctype.startswith("application/openmetrics-text"), f"Content-Type {ctype!r}")
    check(text.endswith("# EOF\n"), f"OpenMetrics does not end with '# EOF\\n': {text[-60:]!r}")
    check(re.search(r"^# TYPE vigil_http_requests counter$", text, re.M),
          "OpenMetrics counter family must be named without _total "
          "('# TYPE vigil_http_requests counter')")
    samples = harness.parse_metrics(text)
    exemplars = [s for s in samples if s.exemplar is not None]
    check(exemplars, "no exemplars at all")
    check(any(s.name == "vigil_http_request_duration_seconds_bucket" for s in exemplars),
          "no exemplar on vigil_http_request_duration_seconds_bucket")
    for s in exemplars:
        check(s.name.endswith("_bucket") or s.name.endswith("_total"),
              f"exemplar on {s.name}: OpenMetrics allows them on buckets and counters only")
        tid_ex = s.exemplar[0].get("trace_id", "")
        check(re.match(r"^[0-9a-f]{32}$", tid_ex), f"exemplar trace_id {tid_ex!r}")
        check(0 <= s.exemplar[1] <= 60, f"exemplar value {s.exemplar[1]!r}")
    ours = [s for s in exemplars
            if s.labels.get("route") == "/login" and s.exemplar[0].get("trace_id") == tid]
    check(ours, f"no /login bucket carries the exemplar of our trace {tid}")
    # The exemplar's bucket holds its value.
    le = ours[0].labels["le"]
    check(ours[0].exemplar[1] <= float(le.replace("+Inf", "inf")),
          f"exemplar {ours[0].exemplar[1]} above its bucket le={le}")

    # Asking for text (or nothing in particular) gives text.
    for accept in ("text/plain", "*/*", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"):
        r, text = scrape(d, accept=accept)
        check((r.headers.get("content-type") or "").startswith("text/plain"),
              f"Accept {accept!r} gave {r.headers.get('content-type')!r}")
        check("# EOF" not in text, f"Accept {accept!r} gave OpenMetrics")


@test
def test_promtool_still_clean_after_more_traffic(ctx):
    for _ in range(3):
        traffic(ctx.authd)
    rc, out = promtool_check(scrape(ctx.authd)[1])
    check(rc == 0 and not out, f"promtool check metrics exited {rc}:\n{out}")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=[harness.authd_binary()]))
