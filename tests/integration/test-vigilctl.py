#!/usr/bin/env python3
"""`vigilctl validate` against a running platform built from this tree, and
one thing broken at a time.

The platform: PostgreSQL and Redis (scripts/dev-stack.sh), authd,
inventoryd and alertbotd from the build tree (the bot on a private D-Bus
with tests/integration/fake-systemd, as test-alertbotd-dbus.py does), the
shipped nginx gateway in front of them (rendered as test-gateway.py does),
an OTLP collector, and a real Prometheus (scraping the daemons and a metric
source this test controls, with a rule file of its own) and Alertmanager
(the bot's receiver with its token file, and a ticket receiver). vigilctl
reads a configuration directory shaped like /etc/vigil (<daemon>.conf with
[http] listen and [tracing] otlp_endpoint, credentials/webhook-token).

Asserted: the healthy platform passes (units and the journal are explicit
skips here: systemd is not PID 1; Tempo, Loki and Grafana explicit skips:
not installed), the synthetic user is created once and reused (no new row
per run); with stand-ins for Tempo, Loki and Grafana (not packaged by
Debian, not downloadable here: their HTTP APIs answered from the real spans
and logs) their checks pass, and lost traces or a broken datasource are
named; with stand-ins for systemctl and journalctl (answering from the
test's processes and the daemons' own log fields) the unit and journal
checks pass and a stopped unit is named; then each break is named by the right check with exit status 1
and a fix, and --json gives the same verdicts as the text: a stopped
daemon, a Prometheus target down, an alert firing, a rule failing to
evaluate, an unreachable Alertmanager receiver, a wrong bot token. A hanging
dependency is bounded by --timeout; usage and environment errors exit 2.
Each run's duration is printed; the whole run must stay under 30 s.

Run by `make check`; by hand:
  top_builddir=/path/to/build python3 tests/integration/test-vigilctl.py [TEST...]
"""

import base64
import http.server
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
from harness import check, check_eq, wait_until  # noqa: E402

runner = harness.Runner("test-vigilctl")
test = runner.test

VIGILCTL = os.path.join(harness.TOP_BUILDDIR, "src", "vigilctl", "vigilctl")
MODULES = os.path.join(harness.TOP_SRCDIR, "src", "vigilctl", "modules")
WEBHOOK_TOKEN = "webhook-token-" + os.urandom(12).hex()
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
# What cannot pass here, and why (anything else must pass on a healthy platform).
SKIPPED_HERE = {
    "unit vigil-authd.service": "not under systemd",
    "unit vigil-inventoryd.service": "not under systemd",
    "unit vigil-alertbotd.service": "not under systemd",
    "journal fields": "not under systemd",
    "trace found in Tempo": "Tempo is not installed",
    "logs found in Loki": "Loki is not installed",
    "Grafana datasources healthy": "Grafana is not installed",
}
RULES = """groups:
  - name: vigilctl-test
    rules:
      - alert: VigilctlTestFiring
        expr: vigilctl_test_fire == 1
        labels: {severity: ticket}
      - record: vigilctl:test_pair
        expr: vigilctl_test_pair + on() vigilctl_test_one
"""


def load(name, filename):
    """A sibling test file as a module (its helpers, not its tests)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, filename))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


import gatewaylib as gateway_test  # noqa: E402
alertbot_test = load("vigil_test_alertbotd_dbus", "test-alertbotd-dbus.py")


# --------------------------------------------------------------------------
# servers this test controls

class MetricSource:
    """A scrape target: vigilctl_test_fire (0 or 1), vigilctl_test_pair (one
    series, or two when dup: a rule joining it then fails) and
    vigilctl_test_one; answers 500 when broken."""

    def __init__(self):
        self.fire, self.dup, self.broken = 0, False, False
        src = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                if src.broken:
                    self.send_error(500, "broken on purpose")
                    return
                body = f"vigilctl_test_fire {src.fire}\nvigilctl_test_one 1\n" \
                       'vigilctl_test_pair{side="a"} 1\n'
                if src.dup:
                    body += 'vigilctl_test_pair{side="b"} 1\n'
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer((harness.LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class TicketReceiver:
    """Alertmanager's ticket receiver on a fixed port, which can stop
    listening and listen again."""

    def __init__(self):
        self.port = harness.free_port()
        self.server = None
        self.listen()

    def listen(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer((harness.LOOPBACK, self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()

    def close(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class GrafanaStandIns:
    """Stand-ins for Tempo, Loki and Grafana, which Debian does not package
    and which cannot be downloaded here: just the HTTP APIs vigilctl reads,
    answered from real data. Tempo's /api/traces/<id> from the spans the
    daemons exported to the test's OTLP collector; Loki's query_range
    ({unit="..."} |= "text") from authd's own log lines; Grafana's
    /api/health, /api/datasources (basic auth) and each datasource's health
    (Prometheus: the real one's /-/ready; Loki and Tempo: the stand-ins,
    unless told to report them broken)."""

    USER, PASSWORD = "admin", "stand-in-" + os.urandom(6).hex()

    def __init__(self, ctx):
        self.ctx = ctx
        self.lose_traces = False
        self.broken_datasource = None
        stand = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, doc):
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                port = self.server.server_address[1]
                status, doc = stand.answer(port, self.path, self.headers.get("Authorization"))
                self.reply(status, doc)

        self.servers = {}
        for name in ("tempo", "loki", "grafana"):
            srv = http.server.ThreadingHTTPServer((harness.LOOPBACK, 0), Handler)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
            self.servers[name] = srv
        self.ports = {n: srv.server_address[1] for n, srv in self.servers.items()}

    def args(self):
        return [a for n in ("tempo", "loki", "grafana") for a in (f"--{n}", f"http://127.0.0.1:{self.ports[n]}")]

    def answer(self, port, path, authorization):
        url = urllib.parse.urlsplit(path)
        if port == self.ports["tempo"]:
            m = re.fullmatch(r"/api/traces/([0-9a-f]{32})", url.path)
            if not m:
                return 404, {"error": "not found"}
            spans = [sp for sp in self.ctx.otlp.spans() if sp.get("traceId") == m.group(1)]
            if not spans or self.lose_traces:
                return 404, {"error": "trace not found"}
            return 200, {"batches": [{"scopeSpans": [{"spans": spans}]}]}
        if port == self.ports["loki"]:
            if url.path != "/loki/api/v1/query_range":
                return 404, {"error": "not found"}
            query = urllib.parse.parse_qs(url.query)["query"][0]
            m = re.fullmatch(r'\{unit="([^"]+)"\}(?: \|= "([^"]*)")?', query)
            if not m:
                return 400, {"error": f"stand-in cannot parse {query}"}
            lines = []
            if m.group(1) == "vigil-authd.service":
                lines = [ln for ln in self.ctx.authd.log_text().splitlines() if (m.group(2) or "") in ln]
            values = [[str(time.time_ns()), ln] for ln in lines[-5:]]
            return 200, {"status": "success", "data": {"resultType": "streams", "result":
                         [{"stream": {"unit": m.group(1)}, "values": values}] if values else []}}
        # Grafana
        if url.path == "/api/health":
            return 200, {"database": "ok", "version": "stand-in"}
        want = "Basic " + base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()
        if authorization != want:
            return 401, {"message": "Unauthorized"}
        if url.path == "/api/datasources":
            return 200, [{"uid": "prometheus", "name": "Prometheus"}, {"uid": "loki", "name": "Loki"},
                         {"uid": "tempo", "name": "Tempo"}]
        m = re.fullmatch(r"/api/datasources/uid/(\w+)/health", url.path)
        if not m:
            return 404, {"message": "Not found"}
        uid = m.group(1)
        if uid == self.broken_datasource:
            return 400, {"status": "ERROR", "message": f"{uid}: connection refused (stand-in)"}
        backend = self.ctx.prom_port if uid == "prometheus" else self.ports[uid]
        try:
            ok = socket.create_connection((harness.LOOPBACK, backend), timeout=2)
            ok.close()
        except OSError as e:
            return 400, {"status": "ERROR", "message": str(e)}
        return 200, {"status": "OK", "message": "Data source is working"}

    def close(self):
        for srv in self.servers.values():
            srv.shutdown()
            srv.server_close()


class Process:
    """Prometheus or Alertmanager from Debian, in a temporary directory."""

    def __init__(self, ctx, name, argv, port):
        self.name = name
        self.log_path = os.path.join(ctx.tmp, f"{name}.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, cwd=ctx.tmp)
        ctx.cleanup(self.stop)

        def up():
            check(self.proc.poll() is None, f"{name} exited {self.proc.returncode}: {self.tail()}")
            try:
                return harness.request(port, "GET", "/-/ready", timeout=2).status == 200
            except OSError:
                return False
        wait_until(up, 60, interval=0.2, what=f"{name} ready")

    def tail(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-2000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def api(port, path):
    r = harness.request(port, "GET", path, timeout=5)
    check_eq(r.status, 200, f"GET {path}")
    return r.body["data"] if isinstance(r.body, dict) else json.loads(r.body)["data"]


# --------------------------------------------------------------------------
# the platform

def setup(ctx):
    for b in (VIGILCTL, alertbot_test.FAKE_SYSTEMD, alertbot_test.BOT):
        if not os.path.exists(b):
            raise AssertionError(f"{b} is not built")
    missing = [n for n, p in (("prometheus", PROMETHEUS), ("prometheus-alertmanager", ALERTMANAGER),
                              ("nginx", os.path.exists(gateway_test.NGINX) and gateway_test.NGINX),
                              ("dbus-daemon", shutil.which("dbus-daemon"))) if not p]
    if missing:
        print(f"SKIP: not installed: {', '.join(missing)} (scripts/install-deps.sh)")
        sys.exit(harness.SKIP)
    ctx.tmp = tempfile.mkdtemp(prefix="vigil-vigilctl-")
    ctx.cleanup(lambda: harness._rmtree(ctx.tmp))
    ctx.daemons = []
    ctx.otlp = harness.OtlpReceiver()
    ctx.cleanup(ctx.otlp.close)
    otlp = {"VIGIL_TRACING_OTLP_ENDPOINT": ctx.otlp.url}
    harness.start_authd_stack(ctx, env=otlp)
    ctx.inventoryd = harness.new_inventoryd(ctx, env=otlp)
    ctx.inventoryd.start()

    ctx.bus = alertbot_test.Bus(ctx.tmp)
    ctx.cleanup(ctx.bus.close)
    state = os.path.join(ctx.tmp, "bot-state")
    os.mkdir(state)
    policy = os.path.join(harness.TOP_SRCDIR, "etc", "vigil", "alertbot-policy.conf")
    ctx.bot = harness.Daemon("alertbotd", env={
        "VIGIL_SYSTEMD_BUS": ctx.bus.address, "VIGIL_STATE_DIRECTORY": state,
        "VIGIL_POLICY_FILE": policy, "VIGIL_ESCALATION_URL": "", "VIGIL_TRACING_OTLP_ENDPOINT": "",
    }, credentials={"webhook-token": WEBHOOK_TOKEN, "escalation-token": "unused"})
    ctx.daemons.append(ctx.bot)
    ctx.cleanup(ctx.bot.close)
    ctx.bot.start()

    # Every test runs validate's flow through the gateway from 127.0.0.1,
    # more often than the shipped 10 requests/s a client may (test-gateway.py
    # tests the limiter): the rate is raised, the rest of the site is shipped.
    ctx.gateway = gateway_test.Gateway({"auth": ctx.authd.port, "payment": harness.closed_port(),
                                        "inventory": ctx.inventoryd.port}, None, rate="1000r/s")
    ctx.cleanup(ctx.gateway.stop)
    ctx.gateway.start()

    # /etc/vigil as vigilctl reads it.
    ctx.etc = os.path.join(ctx.tmp, "etc-vigil")
    creds = os.path.join(ctx.etc, "credentials")
    os.makedirs(creds, 0o700)
    for name, d, otlp_url in (("authd", ctx.authd, ctx.otlp.url),
                              ("inventoryd", ctx.inventoryd, ctx.otlp.url),
                              ("alertbotd", ctx.bot, "")):
        with open(os.path.join(ctx.etc, f"{name}.conf"), "w", encoding="utf-8") as f:
            f.write(f"[http]\nlisten = 127.0.0.1:{d.port}\n[tracing]\notlp_endpoint = {otlp_url}\n")
    with open(os.path.join(creds, "webhook-token"), "w", encoding="utf-8") as f:
        f.write(WEBHOOK_TOKEN + "\n")
    # Alertmanager's copy of the token, as vigil-setup alertmanager-token makes it.
    ctx.am_token = os.path.join(ctx.tmp, "alertmanager-webhook-token")
    with open(ctx.am_token, "w", encoding="utf-8") as f:
        f.write(WEBHOOK_TOKEN + "\n")

    ctx.source = MetricSource()
    ctx.cleanup(ctx.source.close)
    ctx.tickets = TicketReceiver()
    ctx.cleanup(ctx.tickets.close)

    ctx.am_port = harness.free_port()
    am_conf = os.path.join(ctx.tmp, "alertmanager.yml")
    with open(am_conf, "w", encoding="utf-8") as f:
        f.write(f"""route:
  receiver: tickets
  group_wait: 1s
  routes:
    - receiver: alertbot
      matchers: ['remediation="restart"']
receivers:
  - name: alertbot
    webhook_configs:
      - url: http://127.0.0.1:{ctx.bot.port}/webhook
        http_config:
          authorization:
            type: Bearer
            credentials_file: {ctx.am_token}
  - name: tickets
    webhook_configs:
      - url: http://127.0.0.1:{ctx.tickets.port}/ticket
""")
    Process(ctx, "alertmanager", [ALERTMANAGER, f"--config.file={am_conf}",
                                  f"--storage.path={ctx.tmp}/am-data",
                                  f"--web.listen-address=127.0.0.1:{ctx.am_port}",
                                  "--cluster.listen-address=", "--log.level=warn"],
            ctx.am_port)

    ctx.prom_port = harness.free_port()
    rules = os.path.join(ctx.tmp, "rules.yml")
    with open(rules, "w", encoding="utf-8") as f:
        f.write(RULES)
    prom_conf = os.path.join(ctx.tmp, "prometheus.yml")
    jobs = (("auth", ctx.authd.port), ("inventory", ctx.inventoryd.port),
            ("alertbot", ctx.bot.port), ("vigilctl-fire", ctx.source.port))
    with open(prom_conf, "w", encoding="utf-8") as f:
        f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [{rules}]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{ctx.am_port}"]
scrape_configs:
""" + "".join(f"""  - job_name: {job}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
""" for job, port in jobs))
    Process(ctx, "prometheus", [PROMETHEUS, f"--config.file={prom_conf}",
                                f"--storage.tsdb.path={ctx.tmp}/prom-data",
                                f"--web.listen-address=127.0.0.1:{ctx.prom_port}",
                                "--log.level=warn"],
            ctx.prom_port)
    wait_healthy(ctx)


def targets_up(ctx):
    ts = api(ctx.prom_port, "/api/v1/targets?state=active")["activeTargets"]
    return len(ts) == 4 and all(t["health"] == "up" for t in ts)


def rules_ok(ctx):
    rules = [r for g in api(ctx.prom_port, "/api/v1/rules")["groups"] for r in g["rules"]]
    return rules and all(r.get("health") == "ok" for r in rules)


def no_alerts(ctx):
    return not api(ctx.prom_port, "/api/v1/alerts")["alerts"]


def wait_healthy(ctx):
    """Prometheus sees the platform as healthy again (every break undone)."""
    wait_until(lambda: targets_up(ctx) and rules_ok(ctx) and no_alerts(ctx), 60, interval=0.3,
               what="every target up, every rule evaluated, no alert")


# --------------------------------------------------------------------------
# running vigilctl

DURATIONS = []


def vigilctl(ctx, *args, env=None):
    e = dict(os.environ, VIGILCTL_MODULES=MODULES)
    e.pop("NO_COLOR", None)
    e.update(env or {})
    t0 = time.monotonic()
    r = subprocess.run([VIGILCTL, *args], capture_output=True, text=True, timeout=60, env=e,
                       stdin=subprocess.DEVNULL, check=False)
    return r, time.monotonic() - t0


def platform_args(ctx):
    closed = harness.closed_port()
    return ["--etc", ctx.etc, "--gateway", f"http://127.0.0.1:{ctx.gateway.port}",
            "--prometheus", f"http://127.0.0.1:{ctx.prom_port}",
            "--alertmanager", f"http://127.0.0.1:{ctx.am_port}",
            "--tempo", f"http://127.0.0.1:{closed}", "--loki", f"http://127.0.0.1:{closed}",
            "--grafana", f"http://127.0.0.1:{closed}", "--systemd", "no"]


def validate(ctx, want_rc, *extra, env=None):
    """Run validate as text and as --json (extra after the platform's
    arguments, so they win); assert both exit want_rc and give the same
    verdict for every check. Returns {check: json entry}."""
    text, t_text = vigilctl(ctx, "validate", *platform_args(ctx), *extra, env=env)
    js, t_json = vigilctl(ctx, "validate", "--json", *platform_args(ctx), *extra, env=env)
    DURATIONS.extend((t_text, t_json))
    print(f"  vigilctl validate: {t_text:.2f} s (text), {t_json:.2f} s (--json)")
    check_eq(text.returncode, want_rc, f"validate exit status; output:\n{text.stdout}{text.stderr}")
    check_eq(js.returncode, want_rc, f"validate --json exit status; stderr: {js.stderr}")
    doc = json.loads(js.stdout)
    check_eq(doc["ok"], want_rc == 0, "JSON ok")
    checks = {c["check"]: c for c in doc["checks"]}
    check_eq(len(checks), len(doc["checks"]), "check names are unique")
    for name, c in checks.items():
        line = re.compile(rf"^{c['status'].upper()}\s+{c['pillar']}\s+{re.escape(name)}\s", re.M)
        check(line.search(text.stdout), f"text output has no {c['status'].upper()} line for "
                                        f"{name!r} as --json has:\n{text.stdout}")
        if c["status"] == "fail":
            check(c.get("fix"), f"{name}: a failure without a fix: {c}")
            check("fix: " in text.stdout, "text output gives the fix")
    counts = {s: sum(1 for c in doc["checks"] if c["status"] == s) for s in ("pass", "fail", "skip")}
    check_eq((doc["passed"], doc["failed"], doc["skipped"]),
             (counts["pass"], counts["fail"], counts["skip"]), "JSON counts")
    check(re.search(rf"^{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
                    r"in [0-9.]+ s$", text.stdout, re.M), f"summary line:\n{text.stdout}")
    check(doc["seconds"] < 30, f"validate took {doc['seconds']} s (must finish under 30 s)")
    check("\033[" not in text.stdout, "colour codes although stdout is not a terminal")
    return checks


def failed(checks):
    return {n: c for n, c in checks.items() if c["status"] == "fail"}


def expect_only_failure(checks, names, *words):
    """Exactly the checks names fail; each detail mentions every word."""
    got = failed(checks)
    check_eq(sorted(got), sorted(names), f"failing checks (details: {got})")
    for n in names:
        for w in words:
            check(w in got[n]["detail"], f"{n}: {w!r} not in {got[n]['detail']!r}")


# --------------------------------------------------------------------------
# tests

@test
def test_healthy_platform_passes(ctx):
    checks = validate(ctx, 0)
    for name, c in checks.items():
        if name in SKIPPED_HERE:
            check_eq(c["status"], "skip", f"{name}: {c}")
            check(SKIPPED_HERE[name] in c["detail"], f"{name}: the skip says why: {c['detail']!r}")
        else:
            check_eq(c["status"], "pass", f"{name}: {c}")
    for name in ("ready authd", "ready inventoryd", "ready alertbotd", "flow through the gateway",
                 "Prometheus targets up", "rules loaded, no evaluation error", "no alert firing",
                 "Alertmanager receivers reachable", "alert bot answers Alertmanager's token",
                 "spans exported"):
        check(name in checks, f"no check {name!r} in {sorted(checks)}")
    check("4 of 4 up" in checks["Prometheus targets up"]["detail"], checks["Prometheus targets up"])
    check("alertbot, tickets" in checks["Alertmanager receivers reachable"]["detail"],
          checks["Alertmanager receivers reachable"])
    # The daemons not installed here (no paymentd.conf, notifyd.conf) are not checked.
    check(not [n for n in checks if "paymentd" in n or "notifyd" in n], sorted(checks))


@test
def test_synthetic_user_is_created_once(ctx):
    def users():
        return ctx.stack.psql("SELECT count(*) FROM auth.users")

    def synthetic():
        return ctx.stack.psql("SELECT count(*) FROM auth.users WHERE username = 'vigil-synthetic'")

    validate(ctx, 0)
    before = users()
    check_eq(synthetic(), "1", "the synthetic user exists once")
    pw = os.path.join(ctx.etc, "credentials", "synthetic-password")
    check_eq(oct(os.stat(pw).st_mode & 0o777), "0o600", f"mode of {pw}")
    with open(pw, encoding="utf-8") as f:
        first = f.read()
    checks = validate(ctx, 0)
    validate(ctx, 0)
    check_eq(users(), before, "users after two more runs (no new row per run)")
    with open(pw, encoding="utf-8") as f:
        check_eq(f.read(), first, "the password file is kept")
    detail = checks["flow through the gateway"]["detail"]
    check("login → verify → products → logout" in detail and "register" not in detail, detail)
    # Its session is revoked: no session of the synthetic user is left in Redis.
    stats = ctx.authd.get("/stats")
    check_eq(stats.status, 200, "authd /stats")
    check_eq(stats.body["active_sessions"], 0, "sessions left after the runs")


@test
def test_stopped_daemon_is_named(ctx):
    ctx.inventoryd.stop()
    try:
        wait_until(lambda: not targets_up(ctx), 20, what="Prometheus sees inventory down")
        checks = validate(ctx, 1)
        got = failed(checks)
        for n in ("ready inventoryd", "flow through the gateway", "Prometheus targets up"):
            check(n in got, f"{n} does not fail: {checks.get(n)}")
        check(str(ctx.inventoryd.port) in got["ready inventoryd"]["detail"], got["ready inventoryd"])
        check("products answered 502" in got["flow through the gateway"]["detail"],
              got["flow through the gateway"])
        check("inventory 127.0.0.1:" in got["Prometheus targets up"]["detail"], got["Prometheus targets up"])
        check(not [n for n in got if "authd" in n or "alertbot" in n], f"others fail too: {sorted(got)}")
    finally:
        ctx.inventoryd.start()
        wait_healthy(ctx)
    validate(ctx, 0)


@test
def test_down_target_is_named(ctx):
    ctx.source.broken = True
    try:
        wait_until(lambda: not targets_up(ctx), 20, what="Prometheus sees the target down")
        checks = validate(ctx, 1)
        expect_only_failure(checks, ["Prometheus targets up"], "1 of 4 down", "vigilctl-fire",
                            "500")
    finally:
        ctx.source.broken = False
        wait_healthy(ctx)


@test
def test_firing_alert_is_named(ctx):
    ctx.source.fire = 1
    try:
        wait_until(lambda: any(a["state"] == "firing"
                               for a in api(ctx.prom_port, "/api/v1/alerts")["alerts"]), 30,
                   what="VigilctlTestFiring firing")
        checks = validate(ctx, 1)
        expect_only_failure(checks, ["no alert firing"], "1 firing", "VigilctlTestFiring")
    finally:
        ctx.source.fire = 0
        wait_healthy(ctx)


@test
def test_rule_evaluation_error_is_named(ctx):
    ctx.source.dup = True
    try:
        wait_until(lambda: not rules_ok(ctx), 30, what="the rule failing to evaluate")
        checks = validate(ctx, 1)
        expect_only_failure(checks, ["rules loaded, no evaluation error"], "1 of 2 rules fail",
                            "vigilctl-test/vigilctl:test_pair")
    finally:
        ctx.source.dup = False
        wait_healthy(ctx)


@test
def test_unreachable_receiver_is_named(ctx):
    ctx.tickets.close()
    try:
        checks = validate(ctx, 1)
        expect_only_failure(checks, ["Alertmanager receivers reachable"], "tickets",
                            f"127.0.0.1:{ctx.tickets.port}")
        check("alertbot" not in failed(checks)["Alertmanager receivers reachable"]["detail"],
              "the reachable receiver is not named")
    finally:
        ctx.tickets.listen()
    validate(ctx, 0)


@test
def test_wrong_bot_token_is_named(ctx):
    with open(ctx.am_token, "w", encoding="utf-8") as f:
        f.write("not-the-bot-token\n")
    try:
        checks = validate(ctx, 1)
        expect_only_failure(checks, ["alert bot answers Alertmanager's token"], "refuses", "401",
                            ctx.am_token, "receiver alertbot")
        check("vigil-setup alertmanager-token" in checks["alert bot answers Alertmanager's token"]["fix"],
              checks["alert bot answers Alertmanager's token"])
    finally:
        with open(ctx.am_token, "w", encoding="utf-8") as f:
            f.write(WEBHOOK_TOKEN + "\n")
    validate(ctx, 0)


@test
def test_tempo_loki_and_grafana_where_installed(ctx):
    stand = GrafanaStandIns(ctx)
    ctx.cleanup(stand.close)
    auth = {"VIGILCTL_GRAFANA_AUTH": f"{stand.USER}:{stand.PASSWORD}"}
    checks = validate(ctx, 0, *stand.args(), env=auth)
    for name in ("trace found in Tempo", "logs found in Loki", "Grafana datasources healthy"):
        check_eq(checks[name]["status"], "pass", f"{name}: {checks[name]}")
    tid = re.search(r"trace ([0-9a-f]{32})", checks["flow through the gateway"]["detail"]).group(1)
    check(tid in checks["trace found in Tempo"]["detail"], checks["trace found in Tempo"])
    check(tid in checks["logs found in Loki"]["detail"], checks["logs found in Loki"])
    check("Prometheus, Loki, Tempo" in checks["Grafana datasources healthy"]["detail"],
          checks["Grafana datasources healthy"])

    # Without a login, Grafana's datasources are an explicit skip.
    checks = validate(ctx, 0, *stand.args())
    check_eq(checks["Grafana datasources healthy"]["status"], "skip", checks["Grafana datasources healthy"])
    check("VIGILCTL_GRAFANA_AUTH" in checks["Grafana datasources healthy"]["detail"],
          checks["Grafana datasources healthy"])

    # Traces lost on the way to Tempo (a short deadline bounds the wait for them).
    stand.lose_traces = True
    try:
        checks = validate(ctx, 1, *stand.args(), "--deadline", "8", env=auth)
        expect_only_failure(checks, ["trace found in Tempo"], "is not in Tempo after 4 s")
    finally:
        stand.lose_traces = False

    # A datasource Grafana reports broken is named with Grafana's reason.
    stand.broken_datasource = "loki"
    try:
        checks = validate(ctx, 1, *stand.args(), env=auth)
        expect_only_failure(checks, ["Grafana datasources healthy"], "Loki (loki: connection refused")
    finally:
        stand.broken_datasource = None


# Stand-ins for systemctl and journalctl (systemd is not PID 1 here; the
# system test runs vigilctl against the real ones): `systemctl show` answers
# from the test's daemon processes, `journalctl -u UNIT -o json` from the
# daemon's own log, its logfmt fields as the journal fields the daemons send
# under systemd (src/lib/log.c writes the same fields both ways).
FAKE_SYSTEMD_TOOL = r"""#!/usr/bin/python3
import json, os, re, sys
units = json.load(open(os.environ["VIGILCTL_TEST_UNITS"]))
args = sys.argv[1:]
tool = os.path.basename(sys.argv[0])
if tool == "systemctl":
    assert args[0] == "show", args
    names = [a for a in args[1:] if a.endswith(".service")]
    props = [args[i + 1] for i, a in enumerate(args) if a == "-p"]
    u = units.get(names[0])
    alive = False
    if u and u["pid"] > 0:
        try:
            os.kill(u["pid"], 0)
            alive = True
        except OSError:
            pass
    v = {"LoadState": "loaded" if u else "not-found",
         "ActiveState": "active" if alive else "inactive",
         "SubState": "running" if alive else "dead",
         "StatusText": "stand-in: process %d" % u["pid"] if alive else ""}
    for p in props:
        print(v[p] if "--value" in args else "%s=%s" % (p, v[p]))
elif tool == "journalctl":
    unit = args[args.index("-u") + 1]
    n = int(args[args.index("-n") + 1])
    u = units.get(unit)
    lines = open(u["log"], errors="replace").read().splitlines()[-n:] if u else []
    for line in lines:
        f = dict((k, v.strip('"')) for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', line))
        if "msg" not in f:
            continue
        e = {"MESSAGE": f.pop("msg"), "_SYSTEMD_UNIT": unit}
        f.pop("level", None)
        e.update((k.upper(), v) for k, v in f.items())
        print(json.dumps(e))
"""


def fake_systemd_tools(ctx):
    """A directory with the stand-in systemctl and journalctl, and the
    environment that puts them first on PATH."""
    d = os.path.join(ctx.tmp, "fake-bin")
    if not os.path.isdir(d):
        os.mkdir(d)
        for tool in ("systemctl", "journalctl"):
            with open(os.path.join(d, tool), "w", encoding="utf-8") as f:
                f.write(FAKE_SYSTEMD_TOOL)
            os.chmod(os.path.join(d, tool), 0o755)
    units = os.path.join(ctx.tmp, "units.json")
    with open(units, "w", encoding="utf-8") as f:
        json.dump({f"vigil-{d.name}.service": {"pid": d.proc.pid if d.alive() else 0, "log": d.log_path}
                   for d in (ctx.authd, ctx.inventoryd, ctx.bot)}, f)
    return {"PATH": d + os.pathsep + os.environ.get("PATH", ""), "VIGILCTL_TEST_UNITS": units}


@test
def test_units_and_journal_under_systemd(ctx):
    args = [a for a in platform_args(ctx) if a not in ("--systemd", "no")] + ["--systemd", "yes"]

    def run(env):
        r, _ = vigilctl(ctx, "validate", "--json", *args, env=env)
        return r.returncode, {c["check"]: c for c in json.loads(r.stdout)["checks"]}

    rc, checks = run(fake_systemd_tools(ctx))
    check_eq(rc, 0, f"exit status: {failed(checks)}")
    for d in ("authd", "inventoryd", "alertbotd"):
        c = checks[f"unit vigil-{d}.service"]
        check_eq(c["status"], "pass", c)
        check("active (running): stand-in: process" in c["detail"], c)
    c = checks["journal fields"]
    check_eq(c["status"], "pass", c)
    check("request records of 3 daemons" in c["detail"], c)
    tid = re.search(r"trace ([0-9a-f]{32})", checks["flow through the gateway"]["detail"]).group(1)
    check(f"the flow's trace {tid} is in vigil-authd's" in c["detail"], c)

    ctx.inventoryd.stop()
    try:
        rc, checks = run(fake_systemd_tools(ctx))
        check_eq(rc, 1, "exit status with inventoryd stopped")
        c = checks["unit vigil-inventoryd.service"]
        check_eq(c["status"], "fail", c)
        check("inactive (dead)" in c["detail"] and "systemctl restart vigil-inventoryd.service" in c["fix"], c)
    finally:
        ctx.inventoryd.start()
        wait_healthy(ctx)


@test
def test_hanging_prometheus_is_bounded_by_the_timeout(ctx):
    # Accepts connections (the kernel's backlog) and never answers.
    with socket.socket() as s:
        s.bind((harness.LOOPBACK, 0))
        s.listen(16)
        port = s.getsockname()[1]
        args = [a if a != f"http://127.0.0.1:{ctx.prom_port}" else f"http://127.0.0.1:{port}"
                for a in platform_args(ctx)]
        r, seconds = vigilctl(ctx, "validate", "--json", "--timeout", "1", *args)
    check_eq(r.returncode, 1, f"exit status: {r.stderr}")
    got = failed({c["check"]: c for c in json.loads(r.stdout)["checks"]})
    check_eq(sorted(got), ["Prometheus targets up", "no alert firing",
                           "rules loaded, no evaluation error"], "failing checks")
    for c in got.values():
        check("no answer within 1 s" in c["detail"], c)
    check(seconds < 10, f"a hanging Prometheus held validate for {seconds:.1f} s (--timeout 1)")
    # A request bound longer than the run's: the deadline gives the verdict.
    with socket.socket() as s:
        s.bind((harness.LOOPBACK, 0))
        s.listen(16)
        port = s.getsockname()[1]
        args = [a if a != f"http://127.0.0.1:{ctx.prom_port}" else f"http://127.0.0.1:{port}"
                for a in platform_args(ctx)]
        r, seconds = vigilctl(ctx, "validate", "--json", "--timeout", "20", "--deadline", "3", *args)
    check_eq(r.returncode, 1, f"exit status: {r.stderr}")
    got = failed({c["check"]: c for c in json.loads(r.stdout)["checks"]})
    check_eq(sorted(got), ["Prometheus targets up", "no alert firing",
                           "rules loaded, no evaluation error"], "checks without a verdict")
    for c in got.values():
        check("no verdict within the 3 s deadline" in c["detail"], c)
    check(seconds < 10, f"validate --deadline 3 took {seconds:.1f} s")


@test
def test_usage_and_environment_errors_exit_2(ctx):
    cases = [
        ((), "a command is required"),
        (("frobnicate",), "invalid choice"),
        (("validate", "--frobnicate"), "unrecognized arguments"),
        (("validate", "--timeout", "0", *platform_args(ctx)), "must be positive"),
        (("validate", "--timeout", "soon"), "invalid float value"),
        (("validate", "--url", "authd", *platform_args(ctx)), "expected DAEMON=http"),
        (("validate", "--url", "webd=http://127.0.0.1:1", *platform_args(ctx)), "unknown daemon"),
        (("validate", *platform_args(ctx), "--prometheus", "localhost:9090"), "expected an http"),
        (("validate", "--etc", os.path.join(ctx.tmp, "nowhere")), "does not exist"),
        (("validate", "--etc", ctx.tmp), "no daemon configuration"),
    ]
    for args, words in cases:
        r, _ = vigilctl(ctx, *args)
        check_eq(r.returncode, 2, f"vigilctl {' '.join(args)}: stdout {r.stdout!r} stderr {r.stderr!r}")
        check(words in r.stderr, f"vigilctl {' '.join(args)}: {words!r} not in {r.stderr!r}")
        check_eq(r.stdout, "", f"vigilctl {' '.join(args)} wrote to stdout")
    for args, words in ((("--help",), "validate"), (("validate", "--help"), "--json"),
                        (("--version",), "vigilctl ")):
        r, _ = vigilctl(ctx, *args)
        check_eq(r.returncode, 0, f"vigilctl {' '.join(args)}: {r.stderr}")
        check(words in r.stdout, f"vigilctl {' '.join(args)}: {words!r} not in {r.stdout!r}")


@test
def test_durations(ctx):
    check(DURATIONS, "no run measured")
    runner.note(f"vigilctl validate took {min(DURATIONS):.2f}–{max(DURATIONS):.2f} s "
                f"over {len(DURATIONS)} runs (bound: 30 s)")
    check(max(DURATIONS) < 30, f"a run took {max(DURATIONS):.1f} s")


if __name__ == "__main__":
    sys.exit(runner.main(setup))
