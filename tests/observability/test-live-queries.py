#!/usr/bin/env python3
"""Every PromQL expression of every dashboard and every rule file, evaluated
against a real Prometheus (Debian's) scraping a real vigil-authd of the dev
stack (PostgreSQL + Redis) while a bounded traffic generator runs.

Promises:
  - the shipped rule files load into Prometheus and every group evaluates
    without error;
  - no dashboard, variable or rule expression is rejected by Prometheus;
  - every panel meant to show authd traffic returns data, and the service
    and instance variables list authd;
  - exemplars carrying trace_id reach Prometheus (OpenMetrics negotiated
    because exemplar storage is on).
Expressions about daemons and exporters that are not running here may be
empty; they are listed, grouped by the job they belong to.
"""

import collections
import os
import re
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import yaml  # noqa: E402

import harness  # noqa: E402
import obslib  # noqa: E402
from harness import check  # noqa: E402

runner = harness.Runner("test-live-queries", test_timeout=180)
test = runner.test

TRAFFIC_ROUNDS = 25
TRAFFIC_SECONDS = 30

# Panels that must show data when only authd runs (dashboard uid, title).
AUTH_PANELS = {
    ("vigil-overview", "Daemons up (scrape)"),
    ("vigil-overview", "Dependencies up"),
    ("vigil-overview", "Request rate by service"),
    ("vigil-overview", "Error ratio (5xx) by service"),
    ("vigil-overview", "Latency p95 / p99 by service"),
    ("vigil-overview", "Requests by route and code"),
    ("vigil-overview", "In-flight requests"),
    ("vigil-overview", "CPU by daemon"),
    ("vigil-overview", "Resident memory by daemon"),
    ("vigil-overview", "Uptime by daemon"),
    ("vigil-slo", "SLO summary (30 days)"),
    ("vigil-slo", "Compliance (30 days)"),
    ("vigil-slo", "Error budget remaining"),
    ("vigil-slo", "Burn rate per window"),
    ("vigil-slo", "SLI events per second"),
    ("vigil-slo", "Error ratio (5m, 1h)"),
    ("vigil-business", "Active sessions"),
    ("vigil-business", "Logins by result"),
    ("vigil-business", "Active sessions over time"),
    ("vigil-service-map", "Dependency edges (calls/s, errors/s, p95)"),
    ("vigil-service-map", "Dependency call rate"),
    ("vigil-service-map", "Dependency error ratio"),
    ("vigil-service-map", "Dependency latency p95"),
    ("vigil-service-map", "Dependency up"),
    ("vigil-infrastructure", "File descriptors (daemons)"),
    ("vigil-infrastructure", "Scrape targets down"),
    ("vigil-infrastructure", "Failed units"),
}
# Rules that must produce a series when authd serves traffic.
AUTH_RECORDS = re.compile(r"^slo:.*$")
AUTH_SLOS = {"auth-availability", "auth-latency"}

# Which job an expression belongs to, by the metrics it reads.
JOB_OF_METRIC = [
    (r"^vigil_(payment|revenue|outbox|amqp)", "payment"),
    (r"^vigil_(inventory|cache)", "inventory"),
    (r"^vigil_notify", "notify"),
    (r"^vigil_alertbot", "alertbot"),
    (r"^vigil_", "auth"),
    (r"^process_", "auth"),
    (r"^node_", "node"),
    (r"^pg_", "postgres"),
    (r"^redis_", "redis"),
    (r"^nginx_", "nginx"),
    (r"^rabbitmq_", "rabbitmq"),
    (r"^traces_", "tempo"),
    (r"^ALERTS", "alerts (none firing)"),
    (r"^slo:", "slo records"),
]


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr):
    """Metric names an expression reads (strings, label matchers, function
    names, keywords and durations left out)."""
    e = re.sub(r'"(\\.|[^"\\])*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        if m.group(2) or m.group(1) in KEYWORDS:
            continue
        names.append(m.group(1))
    return names


def job_of(expr):
    jobs = []
    for n in metric_names(expr):
        for rx, job in JOB_OF_METRIC:
            if re.match(rx, n):
                jobs.append(job)
                break
        else:
            jobs.append("scrape health (up)" if n == "up" else "other")
    for j in ("payment", "inventory", "notify", "alertbot", "node", "postgres", "redis", "nginx",
              "rabbitmq", "tempo", "alerts (none firing)", "slo records", "auth",
              "scrape health (up)"):
        if j in jobs:
            return j
    return "other"


def traffic(d, stop):
    """Bounded: TRAFFIC_ROUNDS rounds of register/login/verify/bad requests
    or TRAFFIC_SECONDS, whichever ends first."""
    deadline = time.monotonic() + TRAFFIC_SECONDS
    for _ in range(TRAFFIC_ROUNDS):
        if stop.is_set() or time.monotonic() > deadline:
            break
        token, _, name = harness.new_session(d)
        d.post("/verify", token=token)
        d.post("/verify", token="not-a-token")
        d.post("/login", {"username": name, "password": "wrong password"})
        d.post("/login", b"{not json", headers={"Content-Type": "application/json"})
        d.get("/no-such-route")
        d.get("/stats")
        d.post("/logout", token=token)
        time.sleep(0.1)


def prometheus_config(authd_port):
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "auth",
             "static_configs": [{"targets": [f"127.0.0.1:{authd_port}"], "labels": {"service": "auth"}}]},
        ],
    }


def fast_rule_copies(tmp):
    """The shipped rule files with every group interval cut to 2s (rules
    untouched), so the long-window group evaluates within the test."""
    out = []
    for path in obslib.rule_files():
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for g in doc["groups"]:
            if "interval" in g:
                g["interval"] = "2s"
        dst = os.path.join(tmp, os.path.basename(path))
        with open(dst, "w", encoding="utf-8") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        out.append(dst)
    return out


def setup(ctx):
    for b in (obslib.Prometheus.BINARY,):
        if not b:
            raise AssertionError("prometheus not installed")
    ctx.receiver = harness.OtlpReceiver()
    ctx.cleanup(ctx.receiver.close)
    harness.start_authd_stack(ctx, env={
        "VIGIL_TRACING_OTLP_ENDPOINT": ctx.receiver.url,
        "VIGIL_TRACING_SAMPLE_RATIO": "1",
    })
    ctx.tmp = harness._mkdtemp("vigil-obs-rules-")  # pylint: disable=protected-access
    ctx.cleanup(harness._rmtree, ctx.tmp)  # pylint: disable=protected-access
    ctx.prom = obslib.Prometheus(prometheus_config(ctx.authd.port), fast_rule_copies(ctx.tmp))
    ctx.cleanup(ctx.prom.close)
    ctx.prom.start()
    obslib.wait_until(ctx.prom.targets_up, 30, what="authd scraped")
    stop = threading.Event()
    ctx.cleanup(stop.set)
    t = threading.Thread(target=traffic, args=(ctx.authd, stop), daemon=True)
    t.start()
    t.join(TRAFFIC_SECONDS + 30)
    check(not t.is_alive(), "traffic generator did not finish in time")

    # Rate windows need two scrapes after the traffic; the SLO records need
    # their groups to have run.
    def settled():
        r = ctx.prom.query('slo:error_budget:remaining{slo="auth-availability"}')
        s = ctx.prom.query('rate(vigil_http_requests_total{job="auth"}[1m]) > 0')
        return r["data"]["result"] and s["data"]["result"]
    obslib.wait_until(settled, 60, interval=0.5, what="SLO records and rates present")


def evaluate(ctx, expr):
    r = ctx.prom.query(expr)
    if r.get("status") != "success":
        raise AssertionError(f"Prometheus rejected {expr!r}: {r.get('errorType')}: {r.get('error')}")
    res = r["data"]["result"]
    return res if isinstance(res, list) else [res]


@test
def test_rule_files_load_and_every_group_evaluates_without_error(ctx):
    groups = ctx.prom.api("/api/v1/rules")["data"]["groups"]
    names = {g["name"] for g in groups}
    want = set()
    for path in obslib.rule_files():
        with open(path, encoding="utf-8") as f:
            want |= {g["name"] for g in yaml.safe_load(f)["groups"]}
    check(want == names, f"groups loaded {sorted(names)} != shipped {sorted(want)}")
    bad = [(g["name"], r.get("name"), r.get("lastError")) for g in groups for r in g["rules"]
           if r.get("health") == "err" or r.get("lastError")]
    check(not bad, f"rules with evaluation errors: {bad}")


@test
def test_every_dashboard_expression_evaluates_and_auth_panels_have_data(ctx):
    empty = collections.defaultdict(list)
    panel_has_data = collections.defaultdict(bool)
    errors = []
    n = 0
    for uid, title, ref, expr in obslib.dashboard_exprs():
        q = obslib.grafana_to_promql(expr)
        n += 1
        try:
            res = evaluate(ctx, q)
        except AssertionError as e:
            errors.append(f"{uid} / {title} / {ref}: {e}")
            continue
        if res:
            panel_has_data[(uid, title)] = True
        else:
            empty[job_of(q)].append(f"{uid} / {title} / {ref}")
    check(not errors, "expressions rejected:\n" + "\n".join(errors))
    print(f"  {n} dashboard expressions evaluated; empty ones by job:")
    for job in sorted(empty):
        print(f"    {job}: {len(empty[job])}")
        for w in empty[job]:
            print(f"      {w}")
    missing = sorted(p for p in AUTH_PANELS if not panel_has_data[p])
    check(not missing, f"panels meant to show authd traffic returned no data: {missing}")


@test
def test_variables_list_authd(ctx):
    for uid, name, query in obslib.variable_queries():
        q = obslib.grafana_to_promql(obslib.variable_query_to_promql(query))
        res = evaluate(ctx, q)
        m = obslib.LABEL_VALUES.match(query)
        label = m.group(2) if m else None
        values = {s["metric"].get(label) for s in res}
        if name == "service":
            check("auth" in values, f"{uid}: $service values {values}")
        elif name == "instance":
            check(f"127.0.0.1:{ctx.authd.port}" in values, f"{uid}: $instance values {values}")
        elif name == "slo":
            check(AUTH_SLOS <= values, f"{uid}: $slo values {values}")


@test
def test_every_rule_expression_evaluates_and_auth_slo_records_have_data(ctx):
    errors = []
    empty = collections.defaultdict(list)
    for path, group, name, expr in obslib.rule_exprs():
        try:
            res = evaluate(ctx, expr)
        except AssertionError as e:
            errors.append(f"{path} / {name}: {e}")
            continue
        auth_slo = any(f"slo-{s}.yml" == path for s in AUTH_SLOS)
        if auth_slo and AUTH_RECORDS.match(name or "") and not res:
            errors.append(f"{path} / {name}: no data although authd serves traffic")
        if not res:
            empty[job_of(expr) if not path.startswith("slo-") else path].append(name)
    check(not errors, "\n".join(errors))
    print("  rule expressions without data (alerts not firing, daemons not running):")
    for k in sorted(empty):
        print(f"    {k}: {', '.join(sorted(set(empty[k])))}")


@test
def test_exemplars_carry_trace_ids(ctx):
    now = time.time()
    data = ctx.prom.api("/api/v1/query_exemplars?query="
                        + "vigil_http_request_duration_seconds_bucket%7Bjob%3D%22auth%22%7D"
                        + f"&start={now - 600}&end={now + 60}")["data"]
    ids = [e["labels"].get("trace_id") for s in data for e in s.get("exemplars", [])]
    check(ids, "no exemplars stored for authd's latency histogram")
    check(all(re.fullmatch(r"[0-9a-f]{32}", i or "") for i in ids), f"bad trace ids: {ids[:5]}")


if __name__ == "__main__":
    if not obslib.Prometheus.BINARY:
        print("SKIP: prometheus is not installed", file=sys.stderr)
        sys.exit(obslib.SKIP)
    sys.exit(runner.main(setup, binaries=(harness.authd_binary(),)))
