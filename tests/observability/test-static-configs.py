#!/usr/bin/env python3
"""Static checks of the log, trace and alerting configs that cannot be run
here (Promtail, Loki, Tempo and Grafana are not Debian packages): every
file parses, the keys each server needs are present, the ports agree with
DESIGN.md section 1, the labels Promtail keeps are the agreed ones (never a
trace id), the Grafana correlations point at the right datasources, and
every Prometheus alert has a severity, summary, description
and a runbook that exists; the gateway's metrics (mtail) and probes
(blackbox exporter) read the log and reach the routes the gateway has."""

import glob
import os
import re
import sys
import urllib.parse

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yaml  # noqa: E402

import obslib  # noqa: E402

TOP = obslib.TOP_SRCDIR
ETC = os.path.join(TOP, "etc")
# DESIGN.md section 1: who listens where.
PORTS = {
    "auth": 8001, "payment": 8002, "inventory": 8003, "notify": 8004, "alertbot": 8005,
    "node": 9100, "postgres": 9187, "redis": 9121, "nginx": 9113, "rabbitmq": 15692,
    "alertmanager": 9093, "prometheus": 9090, "gateway": 3903, "blackbox": 9115,
    "promtail": 9080, "loki": 3100, "tempo": 3200, "otlp-http": 4318, "grafana": 3000,
}
VIGIL_JOBS = ("auth", "payment", "inventory", "notify", "alertbot")
RUNBOOK_BASE = "https://github.com/vigil-sre/vigil/blob/main/"

runner = obslib.TapRunner("test-static-configs")


def load(*parts):
    with open(os.path.join(TOP, *parts), encoding="utf-8") as f:
        return yaml.safe_load(f)


def port_of(url):
    u = urllib.parse.urlparse(url if "//" in url else "//" + url)
    return u.port


def check_prometheus_scrape_config():
    cfg = load("etc", "prometheus", "prometheus.yml")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    for job in list(VIGIL_JOBS) + ["node", "postgres", "redis", "nginx", "gateway", "rabbitmq",
                                   "alertmanager", "prometheus"]:
        assert job in jobs, f"no scrape job {job}"
        targets = [t for sc in jobs[job]["static_configs"] for t in sc["targets"]]
        assert targets == [f"127.0.0.1:{PORTS[job]}"], f"job {job}: targets {targets}"
    for job in VIGIL_JOBS:
        labels = jobs[job]["static_configs"][0].get("labels", {})
        assert labels.get("service") == job, f"job {job}: service label {labels}"
    q = jobs["rabbitmq-queues"]
    assert q["metrics_path"] == "/metrics/detailed" and "queue_coarse_metrics" in q["params"]["family"]
    am = [t for a in cfg["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]]
    assert am == [f"127.0.0.1:{PORTS['alertmanager']}"], am
    assert cfg["rule_files"] == ["rules/*.yml"], cfg["rule_files"]
    assert cfg["storage"]["exemplars"]["max_exemplars"] > 0


def check_prometheus_flags():
    with open(os.path.join(ETC, "prometheus", "prometheus.default"), encoding="utf-8") as f:
        text = f.read()
    args = re.search(r'^ARGS="([^"]*)"', text, re.M).group(1).split()
    assert "--enable-feature=exemplar-storage" in args, args
    assert "--web.enable-remote-write-receiver" in args, args
    ret = [a for a in args if a.startswith("--storage.tsdb.retention.time=")]
    assert ret and int(re.match(r".*=(\d+)d$", ret[0]).group(1)) > 30, \
        "retention must exceed the 30-day SLO window"
    with open(os.path.join(ETC, "prometheus", "prometheus-node-exporter.default"), encoding="utf-8") as f:
        text = f.read()
    args = re.search(r'^ARGS="([^"]*)"', text, re.M).group(1).split()
    assert "--collector.systemd" in args and "--collector.systemd.enable-restarts-metrics" in args, args
    inc = [a for a in args if a.startswith("--collector.systemd.unit-include=")][0]
    regex = inc.split("=", 1)[1].replace("\\\\", "\\")
    for unit in ("vigil-authd.service", "vigil-alertbotd.service", "nginx.service",
                 "postgresql@15-main.service", "redis-server.service"):
        assert re.fullmatch(regex, unit), f"{unit} not included by {regex}"


def check_promtail():
    cfg = load("etc", "promtail", "promtail.yml")
    assert cfg["server"]["http_listen_port"] == PORTS["promtail"]
    (client,) = cfg["clients"]
    assert port_of(client["url"]) == PORTS["loki"] and client["url"].endswith("/loki/api/v1/push")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    j = jobs["journal"]
    assert j["journal"]["json"] is True, "journal entries must be shipped as JSON"
    relabel = {r["target_label"]: r["source_labels"] for r in j["relabel_configs"]}
    assert relabel == {
        "unit": ["__journal__systemd_unit"],
        "priority": ["__journal_priority_keyword"],
        "syslog_identifier": ["__journal_syslog_identifier"],
        "host": ["__journal__hostname"],
    }, relabel
    # Never a trace id (or any per-request value) as a label.
    for job in cfg["scrape_configs"]:
        names = set(job.get("journal", {}).get("labels", {}))
        for sc in job.get("static_configs", []):
            names |= set(sc.get("labels", {}))
        names |= {r.get("target_label", "") for r in job.get("relabel_configs", [])}
        for stage in job.get("pipeline_stages", []) or []:
            names |= set((stage.get("labels") or {}))
        bad = {n for n in names if re.search(r"trace|span|user|route|status", n, re.I)}
        assert not bad, f"promtail job {job['job_name']}: per-request labels {bad}"
    gw = jobs["vigil-gateway"]["static_configs"][0]["labels"]
    assert gw["job"] == "vigil-gateway" and gw["__path__"].startswith("/var/log/nginx/")
    # The gateway site writes its JSON access log where promtail reads it.
    for conf in glob.glob(os.path.join(ETC, "nginx", "**", "*.conf"), recursive=True):
        with open(conf, encoding="utf-8") as f:
            for m in re.finditer(r"^\s*access_log\s+(/\S+)\s+vigil_json", f.read(), re.M):
                assert m.group(1) == gw["__path__"], f"{conf}: access log {m.group(1)} not scraped"


def check_loki():
    cfg = load("etc", "loki", "loki.yml")
    assert cfg["server"]["http_listen_port"] == PORTS["loki"]
    assert cfg["auth_enabled"] is False
    assert cfg["compactor"]["retention_enabled"] is True
    period = cfg["limits_config"]["retention_period"]
    hours = int(re.fullmatch(r"(\d+)h", period).group(1))
    assert hours >= 14 * 24, f"retention {period} shorter than 14 days"
    assert cfg["schema_config"]["configs"][0]["object_store"] == "filesystem"
    # No LogQL alerts: every alert is a Prometheus rule (the gateway's come
    # from mtail's metrics), so no ruler.
    assert "ruler" not in cfg, "a Loki ruler without rules"


def check_tempo():
    cfg = load("etc", "tempo", "tempo.yml")
    assert cfg["server"]["http_listen_port"] == PORTS["tempo"]
    ep = cfg["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert port_of(ep) == PORTS["otlp-http"], ep
    rw = cfg["metrics_generator"]["storage"]["remote_write"]
    assert [w["url"] for w in rw] == [f"http://127.0.0.1:{PORTS['prometheus']}/api/v1/write"], rw
    procs = cfg["overrides"]["metrics_generator_processors"]
    assert set(procs) == {"service-graphs", "span-metrics"}, procs
    assert cfg["storage"]["trace"]["backend"] == "local"
    assert re.fullmatch(r"\d+h", cfg["compactor"]["compaction"]["block_retention"])
    # The daemons' shipped default exporter endpoint is this receiver.
    for conf in glob.glob(os.path.join(ETC, "vigil", "*.conf")):
        with open(conf, encoding="utf-8") as f:
            m = re.search(r"^#?\s*otlp_endpoint\s*=\s*(\S+)", f.read(), re.M)
        if m:
            assert port_of(m.group(1)) == PORTS["otlp-http"], f"{conf}: {m.group(1)}"


def check_grafana_datasources():
    with open(obslib.DATASOURCES, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    ds = {d["uid"]: d for d in doc["datasources"]}
    assert port_of(ds["prometheus"]["url"]) == PORTS["prometheus"]
    assert port_of(ds["loki"]["url"]) == PORTS["loki"]
    assert port_of(ds["tempo"]["url"]) == PORTS["tempo"]
    ex = ds["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert ex == [{"name": "trace_id", "datasourceUid": "tempo"}], ex
    (df,) = ds["loki"]["jsonData"]["derivedFields"]
    assert df["datasourceUid"] == "tempo" and df["name"] == "trace_id"
    assert df["url"] == "$${__value.raw}", "a literal $ must be written $$ in provisioning"
    rx = re.compile(df["matcherRegex"])
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    for line in ('{"MESSAGE":"done","TRACE_ID":"%s","PRIORITY":"6"}' % tid,
                 'level=info TRACE_ID=%s msg="done"' % tid,
                 '{"status":429,"trace_id":"%s"}' % tid):
        m = rx.search(line)
        assert m and m.group(1) == tid, f"derived field misses the trace id in {line}"
    assert not rx.search('{"MESSAGE":"no trace here","SPAN_ID":"00f067aa0ba902b7"}')
    t = ds["tempo"]["jsonData"]
    assert t["tracesToLogsV2"]["datasourceUid"] == "loki" and t["tracesToLogsV2"]["filterByTraceID"]
    assert "${__trace.traceId}" in t["tracesToLogsV2"]["query"]
    assert t["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert t["serviceMap"]["datasourceUid"] == "prometheus"


def all_alerts():
    """(source, alert rule) of every alerting rule (all are Prometheus')."""
    out = []
    for name, rules in obslib.alert_rules().items():
        for r in rules:
            out.append(("prometheus", r))
    assert not glob.glob(os.path.join(ETC, "loki", "rules", "**", "*.yml"), recursive=True), \
        "Loki rule files, but Loki runs no ruler"
    return out


def default_file(*parts):
    """The variables of a /etc/default file shipped in the tree."""
    with open(os.path.join(ETC, *parts), encoding="utf-8") as f:
        return dict(re.findall(r'^([A-Z_]+)="?([^"\n]*)"?$', f.read(), re.M))


def gateway_access_log():
    """The path of the gateway's vigil_json access log (the one log line of
    the shipped nginx configuration)."""
    logs = set()
    for conf in glob.glob(os.path.join(ETC, "nginx", "**", "*.conf"), recursive=True):
        with open(conf, encoding="utf-8") as f:
            logs |= set(re.findall(r"^\s*access_log\s+(/\S+)\s+vigil_json", f.read(), re.M))
    assert len(logs) == 1, logs
    return logs.pop()


def check_gateway_metrics_and_probes():
    # mtail reads the log nginx writes, on the port Prometheus scrapes.
    env = default_file("mtail", "mtail.default")
    assert env["LOGS"] == gateway_access_log(), env
    assert env["HOST"] == "127.0.0.1" and int(env["PORT"]) == PORTS["gateway"], env
    assert os.path.isfile(os.path.join(ETC, "mtail", "vigil-gateway.mtail"))
    # The blackbox exporter reads vigil's modules, on loopback only.
    args = default_file("prometheus", "prometheus-blackbox-exporter.default")["ARGS"].split()
    assert "--config.file=/etc/prometheus/vigil-blackbox.yml" in args, args
    assert f"--web.listen-address=127.0.0.1:{PORTS['blackbox']}" in args, args
    modules = load("etc", "prometheus", "vigil-blackbox.yml")["modules"]
    cfg = load("etc", "prometheus", "prometheus.yml")
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "blackbox"]
    assert job["metrics_path"] == "/probe"
    relabel = {r["target_label"]: r for r in job["relabel_configs"]}
    assert relabel["__address__"]["replacement"] == f"127.0.0.1:{PORTS['blackbox']}"
    assert relabel["__param_target"]["source_labels"] == ["__address__"]
    assert relabel["__param_module"]["source_labels"] == ["module"]
    with open(os.path.join(ETC, "nginx", "vigil", "gateway-server.conf"), encoding="utf-8") as f:
        conf = f.read()
    # Regular-expression routes, and exact ones (location = /api/v1/...).
    routes = re.findall(r"^location ~ (\^/api/v1/\S+\$) \{", conf, re.M)
    routes += [re.escape(p) for p in re.findall(r"^location = (/api/v1/\S+) \{", conf, re.M)]
    assert routes, "no API routes in gateway-server.conf"
    probes = set()
    for sc in job["static_configs"]:
        (url,) = sc["targets"]
        labels = sc["labels"]
        probes.add(labels["probe"])
        assert labels["module"] in modules, f"{url}: no module {labels['module']}"
        assert modules[labels["module"]]["prober"] == "http"
        u = urllib.parse.urlparse(url)
        # Through the gateway's public port, to a route it proxies.
        assert u.hostname == "127.0.0.1" and u.port is None and u.scheme == "http", url
        assert any(re.fullmatch(r, u.path) for r in routes), f"{url}: no gateway route"
    assert len(probes) == len(job["static_configs"]) >= 3, probes


def check_alert_metadata():
    alerts = all_alerts()
    assert len(alerts) > 20, len(alerts)
    for src, r in alerts:
        name = r["alert"]
        assert r.get("labels", {}).get("severity") in ("page", "ticket"), f"{name}: severity"
        ann = r.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert ann.get(key), f"{src} alert {name}: no {key}"
        url = ann["runbook_url"]
        assert url == f"{RUNBOOK_BASE}docs/runbooks/{name}.md", f"{name}: runbook_url {url}"
        path = os.path.join(TOP, "docs", "runbooks", f"{name}.md")
        assert os.path.isfile(path), f"{name}: {path} does not exist"
        if r.get("labels", {}).get("remediation") == "restart":
            assert "unit" in r["expr"], f"{name}: remediable alerts must carry the unit label"


RANGE_FUNCTIONS = {"rate", "irate", "increase", "delta", "changes", "resets"}


def enclosing_function(expr, pos):
    """Name of the innermost function call whose parentheses enclose pos."""
    depth = 0
    i = pos - 1
    while i >= 0:
        c = expr[i]
        if c == ")":
            depth += 1
        elif c == "(":
            if depth == 0:
                m = re.search(r"([a-zA-Z_]+)\s*$", expr[:i])
                return m.group(1) if m else ""
            depth -= 1
        i -= 1
    return None


def counters_outside_range_functions(expr):
    e = re.sub(r'"(\\.|[^"\\])*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", lambda m: " " * len(m.group(0)), e)
    bad = []
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*_total\b", e):
        if enclosing_function(e, m.start()) not in RANGE_FUNCTIONS:
            bad.append(m.group(0))
    return bad


def check_no_counter_threshold():
    # An alert on a raw counter (`x_total > 0`) never resolves.
    assert counters_outside_range_functions("vigil_notify_dead_lettered_total > 0")
    assert counters_outside_range_functions('sum(x_total{a="b"}) > 1')
    assert not counters_outside_range_functions('sum(rate(x_total{a="(b"}[5m])) > 1')
    for _, r in all_alerts():
        if "count_over_time" in r["expr"]:
            continue  # LogQL counts log lines, not counters
        bad = counters_outside_range_functions(r["expr"])
        assert not bad, f"{r['alert']}: counters used without rate()/increase(): {bad}"


duration_seconds = obslib.duration_seconds
RESOLVED_WITHIN = obslib.RESOLVED_WITHIN_SECONDS


def check_alertmanager_config():
    cfg = load("etc", "alertmanager", "alertmanager.yml")
    recv = {r["name"]: r for r in cfg["receivers"]}
    bot_token = "/etc/vigil/alertmanager/webhook-token"
    for name, path in (("alertbot", "webhook"), ("escalation", "notify"), ("tickets", "notify")):
        hooks = recv[name]["webhook_configs"]
        assert len(hooks) == 1, f"{name}: {len(hooks)} webhooks"
        hook = hooks[0]
        assert hook["url"] == f"http://127.0.0.1:{PORTS['alertbot']}/{path}", f"{name}: {hook['url']}"
        auth = hook["http_config"]["authorization"]
        assert auth["credentials_file"] == bot_token, f"{name}: {auth}"
        assert auth.get("type", "Bearer") == "Bearer", f"{name}: {auth}"
        assert hook.get("send_resolved") is True, f"{name}: resolved alerts not sent"
        # The bot answers 400 to more alerts than its [webhook] max_alerts.
        assert 1 <= hook.get("max_alerts", 0) <= 1000, f"{name}: max_alerts {hook.get('max_alerts')}"

    # Resolved within 5 minutes: Prometheus sees the condition clear within
    # one evaluation interval and sends the resolved alert at once;
    # Alertmanager notifies it at the group's next flush, at most
    # group_interval later. Routes inherit what they do not set.
    prom = load("etc", "prometheus", "prometheus.yml")
    evaluation = duration_seconds(prom["global"]["evaluation_interval"])
    root = cfg["route"]

    def walk(route, inherited):
        timers = dict(inherited, **{k: route[k] for k in obslib.AM_TIMER_DEFAULTS if k in route})
        yield route, timers
        for sub in route.get("routes", []):
            yield from walk(sub, timers)
    routes = list(walk(root, obslib.AM_TIMER_DEFAULTS))
    for route, timers in routes:
        latency = evaluation + duration_seconds(timers["group_interval"])
        assert latency <= RESOLVED_WITHIN, (
            f"route {route.get('receiver')}: a resolved alert can take {latency} s to be notified "
            f"(evaluation {evaluation} s + group_interval {timers['group_interval']}), "
            f"more than {RESOLVED_WITHIN} s")
    bot = [t for r, t in routes if r.get("receiver") == "alertbot"]
    assert len(bot) == 1, f"{len(bot)} alertbot routes"
    assert next(r for r, _ in routes if r.get("receiver") == "alertbot")["continue"] is True
    # Firing alerts repeat slowly: the bot decides once per alert anyway,
    # and a person is not re-paged every few minutes.
    for route, timers in routes:
        assert duration_seconds(timers["repeat_interval"]) >= 3600, (
            f"route {route.get('receiver')}: repeat_interval {timers['repeat_interval']} under 1h")
    assert duration_seconds(bot[0]["repeat_interval"]) >= 6 * 3600, \
        f"alertbot route repeat_interval {bot[0]['repeat_interval']}: under 6h"


def check_polkit_matches_allowlist():
    """The polkit rule lets systemd restart exactly the units on the bot's
    shipped allowlist: one list, enforced twice, with no pattern that could
    match more (vigil-alertbotd.service, template instances)."""
    with open(os.path.join(TOP, "units", "polkit", "50-vigil-alertbot.rules"), encoding="utf-8") as f:
        rule = f.read()
    m = re.search(r"var restartable = \[([^\]]*)\]", rule)
    assert m, "polkit rule: no `var restartable = [...]` list"
    polkit_units = re.findall(r'"([^"]+)"', m.group(1))
    assert "test(" not in rule and "match(" not in rule, "polkit rule: a pattern test beside the list"
    allow = []
    with open(os.path.join(ETC, "vigil", "alertbot-policy.conf"), encoding="utf-8") as f:
        section = None
        for line in f:
            line = line.split("#", 1)[0].split(";", 1)[0].strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "policy" and line.startswith("allowlist"):
                allow += line.split("=", 1)[1].replace(",", " ").split()
    assert sorted(polkit_units) == sorted(allow), f"polkit {sorted(polkit_units)} != allowlist {sorted(allow)}"
    assert "vigil-alertbotd.service" not in allow


def main():
    runner.check("prometheus.yml: every job at its DESIGN.md port, service labels, alerting",
                 check_prometheus_scrape_config)
    runner.check("prometheus and node_exporter flags: exemplars, remote write, retention, systemd",
                 check_prometheus_flags)
    runner.check("promtail: port 9080, journal as JSON, labels unit/priority/syslog_identifier/host only",
                 check_promtail)
    runner.check("loki: port 3100, filesystem, retention >= 14d, no ruler", check_loki)
    runner.check("gateway: mtail reads the access log, the blackbox probes reach gateway routes",
                 check_gateway_metrics_and_probes)
    runner.check("tempo: 3200, OTLP/HTTP 4318, metrics generator remote-writes to Prometheus",
                 check_tempo)
    runner.check("grafana datasources: ports and trace/log/metric correlations", check_grafana_datasources)
    runner.check("alerts: severity, summary, description and an existing runbook", check_alert_metadata)
    runner.check("alerts: no threshold on a raw counter", check_no_counter_threshold)
    runner.check("alertmanager: every receiver is the bot's (bearer token file), resolved within 5 min, "
                 "slow repeats", check_alertmanager_config)
    runner.check("polkit rule: exactly the alert bot's allowlist", check_polkit_matches_allowlist)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
