"""Shared pieces of vigil's observability tests (Python 3 stdlib + PyYAML).

  paths               the shipped config files in the source tree
  dashboards()        (file name, dashboard dict) of every shipped dashboard
  panels(d)           every panel, rows' nested panels included
  dashboard_exprs()   every PromQL expression of every dashboard
  rule_exprs()        every expression of every Prometheus rule file
  grafana_to_promql() Grafana's $variables and $__macros made concrete
  Prometheus          a real Prometheus in a temporary directory
  Alertmanager        a real Alertmanager in a temporary directory
  WebhookReceiver     records Alertmanager webhook notifications
  TapRunner           minimal named-check runner ("N passed, N failed")

Every wait is bounded; every socket has a timeout. Servers listen on
127.0.0.1 only.
"""

import contextlib
import glob
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.normpath(os.path.join(HERE, "..", ".."))
TOP_BUILDDIR = os.environ.get("top_builddir") or TOP_SRCDIR
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool") or "promtool"
KEEP = os.environ.get("VIGIL_TEST_KEEP") == "1"
SKIP = 77

PROM_DIR = os.path.join(TOP_SRCDIR, "etc", "prometheus")
RULES_DIR = os.path.join(PROM_DIR, "rules")
AM_CONFIG = os.path.join(TOP_SRCDIR, "etc", "alertmanager", "alertmanager.yml")
GRAFANA_DIR = os.path.join(TOP_SRCDIR, "grafana-provisioning")
DASHBOARD_DIR = os.path.join(GRAFANA_DIR, "dashboards")
DATASOURCES = os.path.join(GRAFANA_DIR, "datasources", "vigil.yml")


def find_binary(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except Exception as e:  # pylint: disable=broad-except
            last = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last!r})" if last else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# Dashboards and rules

def dashboards():
    out = []
    for path in sorted(glob.glob(os.path.join(DASHBOARD_DIR, "*.json"))):
        with open(path, encoding="utf-8") as f:
            out.append((os.path.basename(path), json.load(f)))
    return out


def panels(dashboard):
    for p in dashboard.get("panels", []):
        yield p
        for sub in p.get("panels", []) or []:
            yield sub


def datasource_uid(ds):
    if isinstance(ds, dict):
        return ds.get("uid")
    return ds


def is_prometheus(panel, target):
    ds = target.get("datasource") or panel.get("datasource")
    return datasource_uid(ds) == "prometheus"


def dashboard_exprs():
    """[(dashboard uid, panel title, refId, expr)] of every PromQL target,
    annotations included (title "annotation: <name>", no refId)."""
    out = []
    for _, d in dashboards():
        for p in panels(d):
            for t in p.get("targets", []) or []:
                if is_prometheus(p, t) and t.get("expr"):
                    out.append((d["uid"], p.get("title", ""), t.get("refId", ""), t["expr"]))
        for a in d.get("annotations", {}).get("list", []):
            if datasource_uid(a.get("datasource")) == "prometheus" and a.get("expr"):
                out.append((d["uid"], f"annotation: {a.get('name', '')}", "", a["expr"]))
    return out


def variable_queries():
    """[(dashboard uid, variable name, query)] of every Prometheus query variable."""
    out = []
    for _, d in dashboards():
        for v in d.get("templating", {}).get("list", []):
            if v.get("type") == "query":
                q = v.get("query")
                if isinstance(q, dict):
                    q = q.get("query")
                out.append((d["uid"], v["name"], q or v.get("definition", "")))
    return out


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$")


def variable_query_to_promql(query):
    """label_values(expr, label) -> expr (whose series carry the label)."""
    m = LABEL_VALUES.match(query)
    if not m:
        return query
    return m.group(1) or f'{{{m.group(2)}!=""}}'


MACROS = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "30s",
    "${__interval}": "30s",
    "$__range": "1h",
    "${__range}": "1h",
}


def grafana_to_promql(expr, variables=None, all_value=".*"):
    """Replace Grafana's macros with durations and each $var/${var} (inside
    label matchers) with all_value, so the expression is plain PromQL."""
    for k, v in MACROS.items():
        expr = expr.replace(k, v)
    names = variables

    def sub(m):
        name = m.group(1) or m.group(2)
        if names is not None and name not in names:
            return m.group(0)
        return all_value
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


def used_variables(text):
    """Names of $var / ${var} used in text, Grafana's $__ macros excluded."""
    names = set()
    for m in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", text):
        n = m.group(1) or m.group(2)
        if not n.startswith("__"):
            names.add(n)
    return names


def rule_files(rules_dir=RULES_DIR):
    return sorted(glob.glob(os.path.join(rules_dir, "*.yml")))


def rule_exprs(rules_dir=RULES_DIR):
    """[(file, group, rule name, expr)] of every recording and alerting rule."""
    out = []
    for path in rule_files(rules_dir):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                out.append((os.path.basename(path), g["name"], r.get("alert") or r.get("record"),
                            r["expr"]))
    return out


def alert_rules(rules_dir=RULES_DIR):
    """{alertname: [rule dict, ...]} of every alerting rule."""
    out = {}
    for path in rule_files(rules_dir):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                if "alert" in r:
                    out.setdefault(r["alert"], []).append(r)
    return out


def promtool_check_exprs(exprs, workdir):
    """Syntax-check PromQL expressions with `promtool check rules` on a
    generated rule file (one recording rule each). Returns (ok, output)."""
    rules = [{"record": f"vigil:check:expr{i}", "expr": e} for i, e in enumerate(exprs)]
    path = os.path.join(workdir, "exprs.yml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}, f)
    p = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True,
                       timeout=60, check=False)
    return p.returncode == 0, p.stdout + p.stderr


# --------------------------------------------------------------------------
# HTTP

def http_json(url, data=None, method=None, timeout=10, headers=None):
    """Request url (data: dict -> JSON body); returns the decoded JSON."""
    body = None
    hdrs = dict(headers or {})
    if data is not None:
        body = json.dumps(data).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw.decode()) if raw else None


class Server:
    """A child process with a temporary directory and a log file."""

    name = "server"
    READY_TIMEOUT = 30

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=f"vigil-{self.name}-")
        self.log_path = os.path.join(self.dir, "log")
        self.port = free_port()
        self.proc = None

    def command(self):
        raise NotImplementedError

    def ready(self):
        raise NotImplementedError

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True, cwd=self.dir)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log_tail()}")
            return self.ready()
        try:
            wait_until(up, self.READY_TIMEOUT, what=f"{self.name} ready")
        except AssertionError as e:
            if self.proc.poll() is not None and "exited" in str(e):
                raise
            raise AssertionError(f"{e}\n{self.log_tail()}") from None
        return self

    def url(self, path=""):
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def close(self):
        try:
            self.stop()
        finally:
            if not KEEP:
                shutil.rmtree(self.dir, ignore_errors=True)


class Prometheus(Server):
    """prometheus from Debian with a config dict; rule files copied in."""

    name = "prometheus"
    BINARY = os.environ.get("PROMETHEUS") or find_binary("prometheus")

    def __init__(self, config, rule_files=(), extra_args=()):
        super().__init__()
        rules_dir = os.path.join(self.dir, "rules")
        os.mkdir(rules_dir)
        for path in rule_files:
            shutil.copy(path, rules_dir)
        config = dict(config)
        if rule_files:
            config["rule_files"] = [os.path.join(rules_dir, "*.yml")]
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        with open(self.config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        self.extra_args = list(extra_args)

    def command(self):
        return [self.BINARY, f"--config.file={self.config_path}",
                f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--enable-feature=exemplar-storage", "--web.enable-remote-write-receiver",
                "--web.enable-lifecycle", "--log.level=warn", *self.extra_args]

    def ready(self):
        with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as r:
            return r.status == 200

    def query(self, expr, timeout=20):
        """Instant query; returns the API's JSON (status, data or error)."""
        url = self.url("/api/v1/query")
        body = urllib.parse.urlencode({"query": expr}).encode()
        req = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            return json.loads(e.read().decode() or "{}") or {"status": "error", "error": str(e)}

    def api(self, path):
        return http_json(self.url(path))

    def targets_up(self):
        data = self.api("/api/v1/targets")["data"]["activeTargets"]
        return data and all(t["health"] == "up" for t in data)

    def alerts(self):
        """[alert dict] of /api/v1/alerts (state pending or firing)."""
        return self.api("/api/v1/alerts")["data"]["alerts"]


class Alertmanager(Server):
    name = "alertmanager"
    BINARY = (os.environ.get("ALERTMANAGER")
              or find_binary("prometheus-alertmanager", "alertmanager"))

    def __init__(self, config):
        super().__init__()
        self.config_path = os.path.join(self.dir, "alertmanager.yml")
        with open(self.config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    def command(self):
        return [self.BINARY, f"--config.file={self.config_path}",
                f"--storage.path={os.path.join(self.dir, 'data')}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=", "--log.level=warn"]

    def ready(self):
        with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as r:
            return r.status == 200

    def post_alerts(self, alerts):
        http_json(self.url("/api/v2/alerts"), alerts, method="POST")

    def alerts(self):
        return http_json(self.url("/api/v2/alerts"))


class WebhookReceiver:
    """Records Alertmanager webhook POSTs: (path, Authorization header, JSON)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n > 10 * 1024 * 1024:
                    self.send_response(413)
                    self.end_headers()
                    return
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw.decode())
                except ValueError:
                    body = None
                with receiver.lock:
                    receiver.received.append((self.path, self.headers.get("Authorization"), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def notifications(self):
        with self.lock:
            return list(self.received)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


BOT_ADDRESS = "127.0.0.1:8005"  # vigil-alertbotd in the shipped alertmanager.yml

# The contract of the shipped routing: a resolved alert shows as resolved
# within this long, wherever it is sent (the bot's /incidents and
# /notifications, a person's pager). test-static-configs.py checks the
# timers against it; test-alert-e2e.py checks it, scaled, end to end.
RESOLVED_WITHIN_SECONDS = 5 * 60

# Alertmanager's own defaults, for routes that set none.
AM_TIMER_DEFAULTS = {"group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"}


def duration_seconds(text):
    """Seconds of a Prometheus duration such as 30s, 5m, 1h30m, 500ms."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * unit[u] for n, u in parts)


def test_alertmanager_config(webhook, token_file, fast=True, bot_port=None, timer_scale=None):
    """The shipped alertmanager.yml with the token file replaced and every
    receiver's URL pointed at a test server, path kept: at bot_port (a
    vigil-alertbotd started by the test) for the URLs of the bot, at
    webhook for any other -- or for every URL when bot_port is None.
    Timers: timer_scale (e.g. 1/60) scales every route's group_wait,
    group_interval and repeat_interval (as inherited, so the shipped
    timing contract is what is tested, only faster); else fast cuts them
    to 1 s and 2 s. Routes, matchers and inhibitions stay as shipped."""
    with open(AM_CONFIG, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    for r in cfg["receivers"]:
        for w in r.get("webhook_configs", []):
            url = urllib.parse.urlparse(w["url"])
            if bot_port is not None and url.netloc == BOT_ADDRESS:
                w["url"] = f"http://127.0.0.1:{bot_port}{url.path}"
            else:
                w["url"] = webhook.url(url.path)
            auth = (w.get("http_config") or {}).get("authorization")
            if auth and "credentials_file" in auth:
                auth["credentials_file"] = token_file
    if timer_scale is not None:
        def scale(route, inherited):
            timers = dict(inherited, **{k: route[k] for k in AM_TIMER_DEFAULTS if k in route})
            for k, v in timers.items():
                route[k] = f"{max(1, round(duration_seconds(v) * timer_scale * 1000))}ms"
            for sub in route.get("routes", []):
                scale(sub, timers)
        scale(cfg["route"], AM_TIMER_DEFAULTS)
    elif fast:
        def cut(route):
            route["group_wait"] = "1s"
            route["group_interval"] = "2s"
            for sub in route.get("routes", []):
                cut(sub)
        cut(cfg["route"])
    return cfg


# --------------------------------------------------------------------------
# Runner

class TapRunner:
    """Named checks in order; prints PASS/FAIL lines and 'N passed, N failed'."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = []

    def check(self, title, fn, *args):
        t0 = time.monotonic()
        try:
            fn(*args)
        except Exception:  # pylint: disable=broad-except
            print(f"FAIL {title} ({time.monotonic() - t0:.2f} s)\n{traceback.format_exc()}", flush=True)
            self.failed.append(title)
            return False
        print(f"PASS {title} ({time.monotonic() - t0:.2f} s)", flush=True)
        self.passed += 1
        return True

    def finish(self):
        print(f"\n{self.name}: {self.passed} passed, {len(self.failed)} failed")
        for t in self.failed:
            print(f"  failed: {t}")
        sys.stdout.flush()
        return 1 if self.failed else 0


@contextlib.contextmanager
def tempdir(prefix="vigil-obs-"):
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        yield d
    finally:
        if not KEEP:
            shutil.rmtree(d, ignore_errors=True)
