"""vigilctl validate: check a running vigil install, pillar by pillar.

Each check answers pass, fail (with the fix) or skip (with the reason: what
cannot be checked here, never a silent pass). Checks run concurrently, each
bounded by --timeout; those that need the synthetic flow's trace id (logs
and traces) run after it. Nothing here changes the platform except the
synthetic user, created once and reused (its password is a root-only file
next to the daemons' credentials).
"""

import concurrent.futures
import configparser
import glob
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from vigilctl.cli import EXIT_FAILED, EXIT_OK, UsageError

SUMMARY = "check a running install pillar by pillar"
DESCRIPTION = """\
Check a running vigil install pillar by pillar: units active and ready, a
flow through the gateway as the synthetic user, every Prometheus target up,
rules loaded without evaluation errors, no alert firing, Alertmanager's
receivers reachable, the alert bot answering Alertmanager's token, journal
fields, spans exported (and found in Tempo, logs in Loki, Grafana's
datasources healthy where those are installed).

One line per check: PASS, FAIL (followed by the fix) or SKIP (with why it
cannot be checked here)."""
EPILOG = """\
Every address and path can be overridden, by option or environment variable
(VIGILCTL_GATEWAY, VIGILCTL_PROMETHEUS, VIGILCTL_ALERTMANAGER, VIGILCTL_TEMPO,
VIGILCTL_LOKI, VIGILCTL_GRAFANA, VIGILCTL_GRAFANA_AUTH, VIGILCTL_ETC,
VIGILCTL_CREDENTIALS, VIGILCTL_URL_<DAEMON>), so it runs against a
development stack too.

Exit status: 0 every check passed or was skipped, 1 a check failed,
2 usage or environment error."""

# (config name, unit, Prometheus job, default port): DESIGN.md section 1.
DAEMONS = (
    ("authd", "vigil-authd", "auth", 8001),
    ("paymentd", "vigil-paymentd", "payment", 8002),
    ("inventoryd", "vigil-inventoryd", "inventory", 8003),
    ("notifyd", "vigil-notifyd", "notify", 8004),
    ("alertbotd", "vigil-alertbotd", "alertbot", 8005),
)
SYNTHETIC_USER = "vigil-synthetic"
SYNTHETIC_CREDENTIAL = "synthetic-password"
JOURNAL_FIELDS = ("TRACE_ID", "SPAN_ID", "HTTP_METHOD", "HTTP_ROUTE", "HTTP_STATUS", "DURATION_MS")
PILLARS = ("units", "traffic", "metrics", "alerting", "logs", "traces", "dashboards")
PASS, FAIL, SKIP = "pass", "fail", "skip"


# --------------------------------------------------------------------------
# options

def _env(name, default):
    v = os.environ.get(name)
    return v if v else default


def add_arguments(p, paths):
    etc = os.path.join(paths["sysconfdir"], "vigil")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--timeout", type=float, default=float(_env("VIGILCTL_TIMEOUT", "5")),
                   metavar="SECONDS", help="bound on each request (default 5)")
    p.add_argument("--deadline", type=float, default=25.0, metavar="SECONDS",
                   help="bound on the whole run; checks still running then fail (default 25)")
    p.add_argument("--etc", default=_env("VIGILCTL_ETC", etc), metavar="DIR",
                   help=f"the daemons' configuration (default {etc}): a daemon is checked "
                        "when its DIR/<daemon>.conf exists")
    p.add_argument("--credentials", default=os.environ.get("VIGILCTL_CREDENTIALS"), metavar="DIR",
                   help="secrets: webhook-token, and the synthetic user's password "
                        "(created once) (default ETC/credentials)")
    p.add_argument("--url", action="append", default=[], metavar="DAEMON=URL",
                   help="where a daemon answers, e.g. authd=http://127.0.0.1:18001 "
                        "(default: [http] listen of its configuration)")
    p.add_argument("--gateway", default=_env("VIGILCTL_GATEWAY", "http://127.0.0.1"), metavar="URL")
    p.add_argument("--prometheus", default=_env("VIGILCTL_PROMETHEUS", "http://127.0.0.1:9090"),
                   metavar="URL")
    p.add_argument("--alertmanager", default=_env("VIGILCTL_ALERTMANAGER", "http://127.0.0.1:9093"),
                   metavar="URL")
    p.add_argument("--tempo", default=_env("VIGILCTL_TEMPO", "http://127.0.0.1:3200"), metavar="URL")
    p.add_argument("--loki", default=_env("VIGILCTL_LOKI", "http://127.0.0.1:3100"), metavar="URL")
    p.add_argument("--grafana", default=_env("VIGILCTL_GRAFANA", "http://127.0.0.1:3000"),
                   metavar="URL")
    p.add_argument("--systemd", choices=("auto", "yes", "no"), default="auto",
                   help="check units and the journal with systemctl and journalctl "
                        "(default: when systemd is PID 1)")


class Config:
    """Everything a check needs to know, read once before the checks run."""

    def __init__(self, args, paths):
        self.args = args
        self.paths = paths
        self.timeout = args.timeout
        if not os.path.isdir(args.etc):
            raise UsageError(f"{args.etc} does not exist: is vigil installed here? (--etc DIR)")
        self.etc = args.etc
        self.credentials = args.credentials or os.path.join(args.etc, "credentials")
        overrides = {}
        for item in args.url:
            name, sep, url = item.partition("=")
            if not sep or not url.startswith(("http://", "https://")):
                raise UsageError(f"--url {item}: expected DAEMON=http://HOST:PORT")
            overrides[name] = url.rstrip("/")
        known = {d[0] for d in DAEMONS}
        for name in overrides:
            if name not in known:
                raise UsageError(f"--url {name}=…: unknown daemon (one of {', '.join(sorted(known))})")
        self.daemons = []  # (name, unit, job, url, otlp endpoint)
        for name, unit, job, port in DAEMONS:
            conf = os.path.join(self.etc, f"{name}.conf")
            if not os.path.exists(conf):
                continue
            values = read_conf(conf)
            url = overrides.get(name) or os.environ.get(f"VIGILCTL_URL_{name.upper()}")
            if not url:
                listen = values.get(("http", "listen")) or f"127.0.0.1:{port}"
                url = "http://" + listen
            otlp = values.get(("tracing", "otlp_endpoint"), "http://127.0.0.1:4318/v1/traces")
            self.daemons.append((name, unit, job, url.rstrip("/"), otlp))
        if not self.daemons:
            raise UsageError(f"no daemon configuration in {self.etc} (<daemon>.conf): "
                             "is vigil installed here? (--etc DIR)")
        if args.systemd == "auto":
            self.systemd = (os.path.isdir("/run/systemd/system") and _pid1_is_systemd()
                            and shutil.which("systemctl") is not None)
        else:
            self.systemd = args.systemd == "yes"
        for opt in ("gateway", "prometheus", "alertmanager", "tempo", "loki", "grafana"):
            v = getattr(args, opt)
            if not v.startswith(("http://", "https://")):
                raise UsageError(f"--{opt} {v}: expected an http:// URL")
            setattr(self, opt, v.rstrip("/"))
        self.grafana_auth = os.environ.get("VIGILCTL_GRAFANA_AUTH", "")
        # Shared between checks: the flow's trace id, the alert bot's URL.
        self.flow_trace_id = None
        self.flow_done = threading.Event()

    def daemon(self, name):
        for d in self.daemons:
            if d[0] == name:
                return d
        return None


def _pid1_is_systemd():
    try:
        with open("/proc/1/comm", encoding="utf-8") as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


def read_conf(path):
    """{(section, key): value} of a daemon's INI file and its drop-ins (later
    files win), as the daemons read them; a key only shown commented at its
    default in the shipped file takes that default."""
    values = {}
    files = [path] + sorted(glob.glob(path + ".d/*.conf"))
    section = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"\s*\[([^]]+)\]", line)
            if m:
                section = m.group(1).strip().lower()
                continue
            m = re.match(r"\s*#\s*([a-z_]+)\s*=\s*(.*?)\s*$", line)
            if m and section:
                values.setdefault((section, m.group(1)), m.group(2))
    for fn in files:
        cp = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=("#", ";"),
                                       inline_comment_prefixes=None)
        try:
            with open(fn, encoding="utf-8", errors="replace") as f:
                cp.read_file(f)
        except (OSError, configparser.Error):
            continue  # the daemon's own --check-config names what is wrong
        for s in cp.sections():
            for k, v in cp.items(s):
                values[(s.lower(), k.lower())] = v.strip()
    return values


# --------------------------------------------------------------------------
# plumbing

class Result:
    def __init__(self, pillar, name, status, detail, fix=None):
        self.pillar, self.name, self.status, self.detail, self.fix = pillar, name, status, detail, fix
        self.seconds = 0.0

    def json(self):
        d = {"pillar": self.pillar, "check": self.name, "status": self.status,
             "detail": self.detail, "seconds": round(self.seconds, 3)}
        if self.fix:
            d["fix"] = self.fix
        return d


class HTTPResult:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body.decode("utf-8"))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


_opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def http(method, url, timeout, body=None, headers=None):
    """One request; HTTPResult for any HTTP answer, OSError when none came."""
    data = None
    h = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with _opener.open(req, timeout=timeout) as r:
            return HTTPResult(r.status, r.headers, r.read(4 << 20))
    except urllib.error.HTTPError as e:
        return HTTPResult(e.code, e.headers, e.read(1 << 20))
    except urllib.error.URLError as e:
        reason = e.reason
        raise OSError(str(reason.strerror if isinstance(reason, OSError) and reason.strerror
                          else reason)) from None
    except (socket.timeout, TimeoutError):
        raise OSError(f"no answer within {timeout:g} s") from None


def answers(url, timeout):
    """Whether something accepts TCP connections where url points."""
    u = urllib.parse.urlsplit(url)
    port = u.port or {"https": 443, "smtp": 25}.get(u.scheme, 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def run_cmd(cmd, timeout):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def unit_loaded(cfg, unit):
    """Whether unit is installed (systemd knows its file)."""
    if not cfg.systemd:
        return False
    try:
        r = run_cmd(["systemctl", "show", "-p", "LoadState", "--value", unit], cfg.timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.stdout.strip() == "loaded"


def parse_metrics(text):
    """{name: total over every series} of a Prometheus text exposition."""
    totals = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        totals[m.group(1)] = totals.get(m.group(1), 0.0) + v
    return totals


def prom_api(cfg, path, timeout=None):
    """The data of Prometheus' HTTP API answer to path (cfg.prometheus, the
    base URL), or OSError."""
    r = http("GET", cfg.prometheus + path, cfg.timeout if timeout is None else timeout)
    if r.status != 200:
        raise OSError(f"Prometheus answered {r.status} to {path}")
    doc = r.json()
    if doc.get("status") != "success":
        raise OSError(f"Prometheus: {doc.get('error', 'error')}")
    return doc["data"]


def wait_for(predicate, seconds, interval=0.5):
    """predicate() until true or seconds passed; its last value."""
    end = time.monotonic() + seconds
    while True:
        v = predicate()
        if v or time.monotonic() >= end:
            return v
        time.sleep(interval)


# --------------------------------------------------------------------------
# checks: each returns a Result or a list of them

def check_units(cfg):
    if not cfg.systemd:
        return [Result("units", f"unit {unit}.service", SKIP,
                       "not under systemd (PID 1 is not systemd): readiness is checked over HTTP")
                for _, unit, _, _, _ in cfg.daemons]
    out = []
    for name, unit, _, _, _ in cfg.daemons:
        svc = unit + ".service"
        r = run_cmd(["systemctl", "show", "-p", "LoadState", "-p", "ActiveState", "-p", "SubState",
                     "-p", "StatusText", svc], cfg.timeout)
        props = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
        state = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
        status_text = props.get("StatusText", "")
        fix = f"systemctl restart {svc}; journalctl -u {svc} -n 50 says why it stopped"
        if props.get("LoadState") != "loaded":
            out.append(Result("units", f"unit {svc}", FAIL, f"not loaded ({props.get('LoadState', '?')})",
                              f"install its package ({'vigil-alertbot' if name == 'alertbotd' else 'vigil-' + name})"))
        elif props.get("ActiveState") == "active" and props.get("SubState") == "running":
            out.append(Result("units", f"unit {svc}", PASS,
                              state + (f": {status_text}" if status_text else "")))
        else:
            out.append(Result("units", f"unit {svc}", FAIL,
                              state + (f": {status_text}" if status_text else ""), fix))
    return out


def check_ready(cfg):
    out = []
    for name, unit, _, url, _ in cfg.daemons:
        fix = (f"systemctl restart {unit}.service; journalctl -u {unit}.service -n 50"
               if cfg.systemd else f"start vigil-{name} (it should answer {url}/ready)")
        try:
            r = http("GET", url + "/ready", cfg.timeout)
        except OSError as e:
            out.append(Result("units", f"ready {name}", FAIL, f"{url}/ready: {e}", fix))
            continue
        if r.status == 200:
            out.append(Result("units", f"ready {name}", PASS, f"{url}/ready answered 200"))
        else:
            why = r.body.decode("utf-8", "replace").strip()[:200]
            out.append(Result("units", f"ready {name}", FAIL, f"{url}/ready answered {r.status}: {why}",
                              "the body names the dependency that does not answer: start it"))
    return out


def synthetic_password(cfg):
    """The synthetic user's password: kept in a root-only file, created once.
    (None, why) when it can be neither read nor created."""
    path = os.path.join(cfg.credentials, SYNTHETIC_CREDENTIAL)
    try:
        with open(path, encoding="utf-8") as f:
            pw = f.read().strip()
        if pw:
            return pw, None
    except FileNotFoundError:
        pass
    except PermissionError:
        return None, f"cannot read {path} (run as root)"
    pw = secrets.token_hex(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return synthetic_password(cfg)  # another run made it first
    except OSError as e:
        return None, f"cannot create {path}: {e.strerror} (run as root)"
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(pw + "\n")
    return pw, None


def check_flow(cfg):
    """login (register once) -> verify -> products -> logout through the
    gateway as the synthetic user: no new row per run."""
    name = "flow through the gateway"
    try:
        return _flow(cfg, name)
    finally:
        cfg.flow_done.set()


def _flow(cfg, name):
    if not cfg.daemon("authd") or not cfg.daemon("inventoryd"):
        return Result("traffic", name, SKIP, "vigil-authd and vigil-inventoryd are not both installed here")
    pw, why = synthetic_password(cfg)
    if pw is None:
        return Result("traffic", name, SKIP, f"the synthetic user's password: {why}")
    gw = cfg.gateway + "/api/v1"
    creds = {"username": SYNTHETIC_USER, "password": pw}
    fix_gw = ("systemctl status nginx; nginx -t; the gateway site is "
              "/etc/nginx/sites-enabled/vigil-gateway")
    steps = []

    def step(what, method, path, want, body=None, token=None):
        h = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            r = http(method, gw + path, cfg.timeout, body=body, headers=h)
        except OSError as e:
            raise _FlowError(f"{what}: {cfg.gateway}: {e}", fix_gw) from None
        rid = r.headers.get("X-Request-Id") if r.headers else None
        if rid and cfg.flow_trace_id is None and r.status == want:
            cfg.flow_trace_id = rid
        if r.status != want:
            text = r.body.decode("utf-8", "replace").strip()[:200]
            raise _FlowError(f"{what} answered {r.status} (expected {want}): {text}",
                             _flow_fix(cfg, path, r.status))
        steps.append(what)
        return r

    try:
        r = http("POST", gw + "/auth/login", cfg.timeout, body=creds)
    except OSError as e:
        return Result("traffic", name, FAIL, f"login: {cfg.gateway}: {e}", fix_gw)
    if r.status == 401:
        try:
            step("register", "POST", "/auth/register", 201, body=creds)
        except _FlowError as e:
            if "answered 409" in e.args[0]:
                return Result("traffic", name, FAIL,
                              f"{SYNTHETIC_USER} exists with another password than "
                              f"{os.path.join(cfg.credentials, SYNTHETIC_CREDENTIAL)}",
                              f"delete the user (psql -d vigil -c \"DELETE FROM auth.users WHERE "
                              f"username = '{SYNTHETIC_USER}'\") or restore the file")
            return Result("traffic", name, FAIL, e.args[0], e.args[1])
        try:
            r = http("POST", gw + "/auth/login", cfg.timeout, body=creds)
        except OSError as e:
            return Result("traffic", name, FAIL, f"login: {e}", fix_gw)
    if r.status != 200:
        text = r.body.decode("utf-8", "replace").strip()[:200]
        return Result("traffic", name, FAIL, f"login answered {r.status}: {text}",
                      _flow_fix(cfg, "/auth/login", r.status))
    steps.append("login")
    cfg.flow_trace_id = r.headers.get("X-Request-Id") or cfg.flow_trace_id
    try:
        token = r.json()["token"]
    except (ValueError, KeyError):
        return Result("traffic", name, FAIL, "login answered 200 without a token",
                      "the gateway is routing /api/v1/auth/ to something else than vigil-authd")
    try:
        step("verify", "POST", "/auth/verify", 200, token=token)
        products = step("products", "GET", "/inventory/products", 200)
        step("logout", "POST", "/auth/logout", 204, token=token)
    except _FlowError as e:
        return Result("traffic", name, FAIL, e.args[0], e.args[1])
    try:
        n = len(products.json()["products"])
    except (ValueError, KeyError, TypeError):
        return Result("traffic", name, FAIL, "products answered 200 without a product list",
                      "the gateway is routing /api/v1/inventory/ to something else than vigil-inventoryd")
    return Result("traffic", name, PASS,
                  f"{SYNTHETIC_USER}: {' → '.join(steps)} ({n} products; trace {cfg.flow_trace_id})")


class _FlowError(Exception):
    pass


def _flow_fix(cfg, path, status):
    service = {"auth": "authd", "inventory": "inventoryd"}.get(path.split("/")[1], "")
    if status in (502, 503, 504):
        return f"the gateway cannot reach vigil-{service}: see its ready check and journalctl -u vigil-{service}"
    if status == 429:
        return "the gateway is rate limiting this host: run again in a few seconds"
    if status == 404:
        return "the gateway does not route the public API: is the vigil-gateway site enabled?"
    return f"journalctl -u vigil-{service} -n 50"


def check_targets(cfg):
    name = "Prometheus targets up"
    fix_prom = "systemctl status prometheus; journalctl -u prometheus -n 50"
    try:
        data = prom_api(cfg, "/api/v1/targets?state=active")
    except (OSError, ValueError) as e:
        return Result("metrics", name, FAIL, f"{cfg.prometheus}: {e}", fix_prom)
    targets = data.get("activeTargets", [])
    if not targets:
        return Result("metrics", name, FAIL, "Prometheus scrapes nothing",
                      "its configuration is /etc/prometheus/prometheus.yml (vigil-monitoring)")
    down = [t for t in targets if t.get("health") != "up"]
    if not down:
        return Result("metrics", name, PASS, f"{len(targets)} of {len(targets)} up")
    names = "; ".join(f"{t.get('labels', {}).get('job', '?')} {t.get('labels', {}).get('instance', '?')} "
                      f"{t.get('health')}: {(t.get('lastError') or 'not scraped yet')[:120]}"
                      for t in down)
    return Result("metrics", name, FAIL, f"{len(down)} of {len(targets)} down: {names}",
                  "start what each down target names (its exporter or daemon); "
                  "Prometheus shows the error at /targets")


def check_rules(cfg):
    name = "rules loaded, no evaluation error"
    try:
        data = prom_api(cfg, "/api/v1/rules")
    except (OSError, ValueError) as e:
        return Result("alerting", name, FAIL, f"{cfg.prometheus}: {e}",
                      "systemctl status prometheus")
    groups = data.get("groups", [])
    rules = [(g.get("name", "?"), r) for g in groups for r in g.get("rules", [])]
    if not rules:
        return Result("alerting", name, FAIL, "Prometheus has loaded no rules",
                      "promtool check config /etc/prometheus/prometheus.yml; "
                      "systemctl reload prometheus")
    bad = [(g, r) for g, r in rules if r.get("health") == "err"]
    if bad:
        names = "; ".join(f"{g}/{r.get('name', '?')}: {(r.get('lastError') or '')[:120]}" for g, r in bad)
        return Result("alerting", name, FAIL, f"{len(bad)} of {len(rules)} rules fail: {names}",
                      "fix the expression (promtool test rules), or the series it reads")
    plural = "s" if len(groups) != 1 else ""
    return Result("alerting", name, PASS, f"{len(rules)} rules in {len(groups)} group{plural}, no error")


def check_alerts(cfg):
    name = "no alert firing"
    try:
        data = prom_api(cfg, "/api/v1/alerts")
    except (OSError, ValueError) as e:
        return Result("alerting", name, FAIL, f"{cfg.prometheus}: {e}", "systemctl status prometheus")
    alerts = data.get("alerts", [])
    firing = [a for a in alerts if a.get("state") == "firing"]
    pending = [a for a in alerts if a.get("state") == "pending"]

    def label(a):
        lb = a.get("labels", {})
        extra = ",".join(f"{k}={lb[k]}" for k in ("service", "unit", "slo", "job", "instance") if k in lb)
        return lb.get("alertname", "?") + (f"{{{extra}}}" if extra else "")

    if firing:
        return Result("alerting", name, FAIL,
                      f"{len(firing)} firing: {', '.join(sorted(set(label(a) for a in firing)))}",
                      "each alert's runbook is in docs/runbooks (annotation runbook_url)")
    detail = "none firing"
    if pending:
        detail += f"; {len(pending)} pending: {', '.join(sorted(set(label(a) for a in pending)))}"
    return Result("alerting", name, PASS, detail)


def alertmanager_receivers(text):
    """[(receiver, [(key, value)])] from Alertmanager's configuration (YAML,
    as Alertmanager prints it or as shipped): the URLs and token files of
    each receiver. A line reader, enough for these keys (the standard
    library has no YAML parser)."""
    receivers = []
    inside = False
    item_indent = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if not line.startswith((" ", "-")):
            inside = line.startswith("receivers:")
            continue
        if not inside:
            continue
        m = re.match(r"^(\s*)- name:\s*['\"]?([^'\"]+?)['\"]?\s*$", line)
        if m and (item_indent is None or len(m.group(1)) == item_indent):
            item_indent = len(m.group(1))
            receivers.append((m.group(2), []))
            continue
        m = re.match(r"^\s*(?:- )?(url|api_url|smarthost|credentials_file|url_file|api_url_file)"
                     r":\s*['\"]?([^'\"]*?)['\"]?\s*$", line)
        if m and receivers:
            receivers[-1][1].append((m.group(1), m.group(2)))
    return receivers


def _alertmanager_config(cfg):
    r = http("GET", cfg.alertmanager + "/api/v2/status", cfg.timeout)
    if r.status != 200:
        raise OSError(f"Alertmanager answered {r.status} to /api/v2/status")
    return r.json()["config"]["original"]


def check_receivers(cfg):
    name = "Alertmanager receivers reachable"
    try:
        receivers = alertmanager_receivers(_alertmanager_config(cfg))
    except (OSError, ValueError, KeyError) as e:
        return Result("alerting", name, FAIL, f"{cfg.alertmanager}: {e}",
                      "systemctl status prometheus-alertmanager")
    if not receivers:
        return Result("alerting", name, FAIL, "Alertmanager has no receiver",
                      "its configuration is /etc/prometheus/alertmanager.yml (vigil-monitoring)")
    bad, good, notes = [], [], []
    for rname, items in receivers:
        urls = [(k, v) for k, v in items if k in ("url", "api_url", "smarthost")]
        if not urls:
            notes.append(f"{rname} has no destination")
            continue
        for key, value in urls:
            if value == "<secret>":
                notes.append(f"{rname}: {key} hidden by Alertmanager, not checked")
                continue
            target = value if "://" in value else "smtp://" + value
            u = urllib.parse.urlsplit(target)
            if not u.hostname:
                bad.append(f"{rname}: {value} names no host")
                continue
            if answers(target, cfg.timeout):
                good.append(rname)
            else:
                port = u.port or {"https": 443, "smtp": 25}.get(u.scheme, 80)
                bad.append(f"{rname}: nothing answers {u.hostname}:{port} ({value})")
    if bad:
        return Result("alerting", name, FAIL, "; ".join(bad),
                      "start the receiver, or point it elsewhere in /etc/prometheus/alertmanager.yml "
                      "and systemctl reload prometheus-alertmanager")
    detail = f"{len(receivers)} receivers: {', '.join(r for r, _ in receivers)} answer"
    if notes:
        detail += " (" + "; ".join(notes) + ")"
    return Result("alerting", name, PASS, detail)


def check_alertbot(cfg):
    """The bot accepts the token Alertmanager sends it (an empty
    notification: no alert, no action)."""
    name = "alert bot answers Alertmanager's token"
    bot = cfg.daemon("alertbotd")
    if not bot:
        return Result("alerting", name, SKIP, "vigil-alertbot is not installed here")
    url = bot[3] + "/webhook"
    token_file, where = None, None
    try:
        for rname, items in alertmanager_receivers(_alertmanager_config(cfg)):
            if any(k == "url" and v.rstrip("/").endswith("/webhook") and
                   urllib.parse.urlsplit(v).port == urllib.parse.urlsplit(url).port for k, v in items):
                token_file = next((v for k, v in items if k == "credentials_file"), None)
                where = f"receiver {rname}"
                break
    except (OSError, ValueError, KeyError):
        pass  # reported by the receivers check; fall back to the bot's own credential
    candidates = ([token_file] if token_file else []) + [os.path.join(cfg.credentials, "webhook-token")]
    token, source, denied = None, None, []
    for path in candidates:
        try:
            with open(path, encoding="utf-8") as f:
                token, source = f.read().strip(), path
            break
        except PermissionError:
            denied.append(path)
        except FileNotFoundError:
            continue
    if token is None:
        why = f"cannot read {', '.join(denied)} (run as root)" if denied else \
            f"no webhook token at {' or '.join(candidates)}"
        return Result("alerting", name, SKIP if denied else FAIL, why,
                      None if denied else f"{cfg.paths['libexecdir']}/vigil/vigil-setup alertmanager-token")
    payload = {"version": "4", "status": "resolved", "receiver": "vigilctl-validate",
               "groupKey": "vigilctl-validate", "groupLabels": {}, "commonLabels": {},
               "commonAnnotations": {}, "externalURL": cfg.alertmanager, "truncatedAlerts": 0,
               "alerts": []}
    try:
        r = http("POST", url, cfg.timeout, body=payload, headers={"Authorization": f"Bearer {token}"})
    except OSError as e:
        return Result("alerting", name, FAIL, f"{url}: {e}",
                      "systemctl restart vigil-alertbotd.service" if cfg.systemd else "start vigil-alertbotd")
    tag = f"token of {where} ({source})" if where and source == token_file else f"token {source}"
    if r.status == 200:
        return Result("alerting", name, PASS, f"{url} accepts the {tag}")
    if r.status == 401:
        return Result("alerting", name, FAIL, f"{url} refuses the {tag} (401)",
                      f"{cfg.paths['libexecdir']}/vigil/vigil-setup alertmanager-token "
                      "(copies the bot's webhook-token credential where Alertmanager reads it), "
                      "then systemctl reload prometheus-alertmanager")
    return Result("alerting", name, FAIL, f"{url} answered {r.status}: "
                  f"{r.body.decode('utf-8', 'replace').strip()[:160]}",
                  "journalctl -u vigil-alertbotd.service -n 50")


def check_journal(cfg):
    """Every daemon's request records carry the structured fields; the
    flow's trace is among vigil-authd's."""
    name = "journal fields"
    if not cfg.systemd:
        return Result("logs", name, SKIP, "not under systemd: the daemons log logfmt lines to stderr")
    cfg.flow_done.wait(cfg.args.deadline)
    trace_id = cfg.flow_trace_id

    def records(unit):
        r = run_cmd(["journalctl", "-u", unit + ".service", "-o", "json", "-n", "200",
                     "--no-pager", "-q"], cfg.timeout)
        out = []
        for line in r.stdout.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if "HTTP_ROUTE" in e:
                out.append(e)
        return out

    def flow_logged():
        return any(e.get("TRACE_ID") == trace_id for e in records("vigil-authd"))

    try:
        has_flow = bool(trace_id and cfg.daemon("authd") and
                        wait_for(flow_logged, min(5.0, cfg.args.deadline / 3)))
        per_unit = {unit: records(unit) for _, unit, _, _, _ in cfg.daemons}
    except (OSError, subprocess.TimeoutExpired) as e:
        return Result("logs", name, FAIL, f"journalctl: {e}", "journalctl must be runnable (run as root)")
    if not any(per_unit.values()) and os.geteuid() != 0:
        return Result("logs", name, SKIP, "cannot read the system journal: run as root "
                      "(or in group systemd-journal)")
    silent = sorted(u for u, es in per_unit.items() if not es)
    if len(silent) == len(per_unit):
        return Result("logs", name, FAIL, "no vigil daemon wrote a request record to the journal",
                      "[http] access_log = true in /etc/vigil/<daemon>.conf; journalctl -u 'vigil-*'")
    lacking = {}
    for unit, es in per_unit.items():
        missing = [f for f in JOURNAL_FIELDS if not all(f in e for e in es[-20:])]
        if es and missing:
            lacking[unit] = missing
    if lacking:
        return Result("logs", name, FAIL,
                      "; ".join(f"{u}'s request records lack {', '.join(m)}" for u, m in sorted(lacking.items())),
                      "is the daemon logging to stderr instead of the journal (VIGIL_LOG_TARGET)?")
    detail = f"{', '.join(JOURNAL_FIELDS)} on the request records of {len(per_unit) - len(silent)} daemons"
    if has_flow:
        detail += f"; the flow's trace {trace_id} is in vigil-authd's"
    if silent:
        detail += f"; none yet from {', '.join(silent)}"
    return Result("logs", name, PASS, detail)


def _tracing_endpoints(cfg):
    return sorted({d[4] for d in cfg.daemons if d[4]})


def check_spans(cfg):
    name = "spans exported"
    endpoints = _tracing_endpoints(cfg)
    if not endpoints:
        return Result("traces", name, SKIP, "tracing is disabled ([tracing] otlp_endpoint is empty)")
    cfg.flow_done.wait(cfg.args.deadline)
    totals = {}
    for dname, _, _, url, otlp in cfg.daemons:
        if not otlp:
            continue
        try:
            r = http("GET", url + "/metrics", cfg.timeout)
        except OSError:
            continue  # its ready check says it is down
        if r.status == 200:
            totals[dname] = parse_metrics(r.body.decode("utf-8", "replace"))
    exported = sum(m.get("vigil_trace_spans_exported_total", 0) for m in totals.values())
    dropped = sum(m.get("vigil_trace_spans_dropped_total", 0) for m in totals.values())
    collectors = [e for e in endpoints if answers(e, cfg.timeout)]
    if not collectors:
        if unit_loaded(cfg, "tempo.service"):
            return Result("traces", name, FAIL,
                          f"Tempo is installed but nothing answers {', '.join(endpoints)} "
                          f"({dropped:.0f} spans dropped)", "systemctl restart tempo; journalctl -u tempo")
        return Result("traces", name, SKIP,
                      f"no trace collector (Tempo) at {', '.join(endpoints)}: spans are dropped "
                      f"and counted ({dropped:.0f} dropped, vigil_trace_spans_dropped_total)")
    if exported > 0:
        return Result("traces", name, PASS,
                      f"{exported:.0f} exported, {dropped:.0f} dropped by {len(totals)} daemons")
    return Result("traces", name, FAIL,
                  f"none exported to {', '.join(collectors)} ({dropped:.0f} dropped)",
                  "the collector refuses the spans: journalctl -u tempo; the daemons log the "
                  "exporter's errors")


def not_answering(cfg, pillar, name, title, unit, url, meaning):
    """None when one of Grafana's services answers at url; else FAIL when
    its unit is installed, SKIP (saying what its absence means) when not."""
    if answers(url, cfg.timeout):
        return None
    if unit_loaded(cfg, f"{unit}.service"):
        return Result(pillar, name, FAIL, f"{title} is installed but {url} does not answer",
                      f"systemctl restart {unit}; journalctl -u {unit} -n 50")
    return Result(pillar, name, SKIP, f"{title} is not installed (nothing at {url}): {meaning}")


def after_the_flow(cfg, pillar, name, title, unit, url, meaning):
    """(not_answering()'s Result, None) at once when the service at url
    does not answer; else (None, the flow's trace id or None) once the flow
    through the gateway is done."""
    missing = not_answering(cfg, pillar, name, title, unit, url, meaning)
    if missing:
        return missing, None
    cfg.flow_done.wait(cfg.args.deadline)
    return None, cfg.flow_trace_id


def found_in_time(cfg, pillar, name, found, seen, unseen, fix):
    """PASS (seen) once found() holds, asked for half the deadline (10 s at
    most); FAIL (unseen, after how long, and fix) when it never does."""
    wait = min(10.0, cfg.args.deadline / 2)
    if wait_for(found, wait):
        return Result(pillar, name, PASS, seen)
    return Result(pillar, name, FAIL, f"{unseen} after {wait:g} s", fix)


def check_tempo(cfg):
    name = "trace found in Tempo"
    missing, tid = after_the_flow(cfg, "traces", name, "Tempo", "tempo", cfg.tempo,
                                  "traces are not kept; Grafana's trace links stay empty")
    if missing:
        return missing
    if not tid:
        return Result("traces", name, SKIP, "the flow through the gateway produced no trace id")

    def found():
        try:
            return http("GET", f"{cfg.tempo}/api/traces/{tid}", cfg.timeout).status == 200
        except OSError:
            return False
    return found_in_time(cfg, "traces", name, found, f"trace {tid} of the flow is in Tempo",
                         f"trace {tid} of the flow is not in Tempo",
                         "spans are not reaching Tempo: see the spans check, journalctl -u tempo")


def check_loki(cfg):
    name = "logs found in Loki"
    missing, tid = after_the_flow(cfg, "logs", name, "Loki", "loki", cfg.loki,
                                  "logs stay in the journal (journalctl -u 'vigil-*')")
    if missing:
        return missing
    query = '{unit="vigil-authd.service"}' + (f' |= "{tid}"' if tid else "")
    now = time.time()
    qs = urllib.parse.urlencode({"query": query, "start": int((now - 600) * 1e9),
                                 "end": int((now + 60) * 1e9), "limit": 5})

    def found():
        try:
            r = http("GET", f"{cfg.loki}/loki/api/v1/query_range?{qs}", cfg.timeout)
            return r.status == 200 and any(s.get("values") for s in r.json()["data"]["result"])
        except (OSError, ValueError, KeyError):
            return False
    return found_in_time(cfg, "logs", name, found, f"Loki has {query}",
                         f"Loki has nothing for {query}",
                         "is Promtail running and reading the journal? systemctl status promtail")


def check_grafana(cfg):
    name = "Grafana datasources healthy"
    try:
        r = http("GET", cfg.grafana + "/api/health", cfg.timeout)
    except OSError:
        if unit_loaded(cfg, "grafana-server.service"):
            return Result("dashboards", name, FAIL, f"Grafana is installed but {cfg.grafana} does not answer",
                          "systemctl restart grafana-server; journalctl -u grafana-server -n 50")
        return Result("dashboards", name, SKIP,
                      f"Grafana is not installed (nothing at {cfg.grafana}): no dashboards; "
                      "Prometheus answers queries at its own UI")
    if r.status != 200:
        return Result("dashboards", name, FAIL, f"{cfg.grafana}/api/health answered {r.status}",
                      "journalctl -u grafana-server -n 50")
    if not cfg.grafana_auth:
        return Result("dashboards", name, SKIP,
                      "Grafana is up; its datasources need a login to check "
                      "(VIGILCTL_GRAFANA_AUTH=user:password)")
    import base64  # noqa: PLC0415
    auth = {"Authorization": "Basic " + base64.b64encode(cfg.grafana_auth.encode()).decode()}
    try:
        r = http("GET", cfg.grafana + "/api/datasources", cfg.timeout, headers=auth)
        if r.status != 200:
            return Result("dashboards", name, FAIL, f"/api/datasources answered {r.status}",
                          "check VIGILCTL_GRAFANA_AUTH")
        bad, good = [], []
        for ds in r.json():
            h = http("GET", f"{cfg.grafana}/api/datasources/uid/{ds['uid']}/health", cfg.timeout,
                     headers=auth)
            label = ds.get("name", ds["uid"])
            if h.status == 200:
                good.append(label)
                continue
            try:
                why = h.json().get("message") or h.status
            except ValueError:
                why = h.status
            bad.append(f"{label} ({why})")
    except (OSError, ValueError, KeyError) as e:
        return Result("dashboards", name, FAIL, f"{cfg.grafana}: {e}", "journalctl -u grafana-server")
    if bad:
        return Result("dashboards", name, FAIL, f"unhealthy: {', '.join(bad)}",
                      "start what each datasource points at (/etc/grafana/provisioning/datasources)")
    return Result("dashboards", name, PASS, f"healthy: {', '.join(good)}")


# Each check and what it is called when it gives no verdict of its own.
CHECKS = {
    check_units: ("units", "units"),
    check_ready: ("units", "ready"),
    check_flow: ("traffic", "flow through the gateway"),
    check_targets: ("metrics", "Prometheus targets up"),
    check_rules: ("alerting", "rules loaded, no evaluation error"),
    check_alerts: ("alerting", "no alert firing"),
    check_receivers: ("alerting", "Alertmanager receivers reachable"),
    check_alertbot: ("alerting", "alert bot answers Alertmanager's token"),
    check_journal: ("logs", "journal fields"),
    check_spans: ("traces", "spans exported"),
    check_loki: ("logs", "logs found in Loki"),
    check_tempo: ("traces", "trace found in Tempo"),
    check_grafana: ("dashboards", "Grafana datasources healthy"),
}


# --------------------------------------------------------------------------
# running and printing

def _timed(check, cfg):
    t0 = time.monotonic()
    try:
        res = check(cfg)
    except Exception as e:  # pylint: disable=broad-except
        res = Result(*CHECKS[check], FAIL, f"the check itself failed: {e!r}",
                     "a bug in vigilctl: please report it with this line")
    res = res if isinstance(res, list) else [res]
    for r in res:
        r.seconds = time.monotonic() - t0
    return res


def run_checks(cfg):
    results = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(CHECKS))
    futures = {pool.submit(_timed, c, cfg): c for c in CHECKS}
    done, _ = concurrent.futures.wait(futures, timeout=cfg.args.deadline)
    for f, c in futures.items():
        if f in done:
            results[c] = f.result()
        else:
            cfg.flow_done.set()
            results[c] = [Result(*CHECKS[c], FAIL,
                                 f"no verdict within the {cfg.args.deadline:g} s deadline",
                                 "what it talks to hangs: see the other checks")]
    pool.shutdown(wait=False, cancel_futures=True)
    out = []
    for c in CHECKS:
        out.extend(results[c])
    out.sort(key=lambda r: PILLARS.index(r.pillar) if r.pillar in PILLARS else len(PILLARS))
    return out


def _colour(status, tty):
    word = status.upper()
    if not tty:
        return word
    return {"pass": "\033[32m", "fail": "\033[1;31m", "skip": "\033[33m"}[status] + word + "\033[0m"


def print_text(results, seconds, stream):
    tty = stream.isatty() and not os.environ.get("NO_COLOR")
    width = max(len(r.name) for r in results)
    pwidth = max(len(r.pillar) for r in results)
    for r in results:
        stream.write(f"{_colour(r.status, tty)}{' ' * (5 - len(r.status))}{r.pillar:<{pwidth}}  "
                     f"{r.name:<{width}}  {r.detail}\n")
        if r.fix and r.status == FAIL:
            stream.write(f"{'':5}{'':<{pwidth}}  {'':<{width}}  fix: {r.fix}\n")
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, FAIL, SKIP)}
    stream.write(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped "
                 f"in {seconds:.1f} s\n")


def run(args, paths):
    if args.timeout <= 0 or args.deadline <= 0:
        raise UsageError("--timeout and --deadline must be positive")
    t0 = time.monotonic()
    cfg = Config(args, paths)
    results = run_checks(cfg)
    seconds = time.monotonic() - t0
    failed = any(r.status == FAIL for r in results)
    if args.json:
        counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, FAIL, SKIP)}
        json.dump({"command": "validate", "ok": not failed, "seconds": round(seconds, 3),
                   "systemd": cfg.systemd, "passed": counts[PASS], "failed": counts[FAIL],
                   "skipped": counts[SKIP], "checks": [r.json() for r in results]},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(results, seconds, sys.stdout)
    sys.stdout.flush()
    return EXIT_FAILED if failed else EXIT_OK
