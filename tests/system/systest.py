"""The plumbing of vigil's system tests: the machine (scripts/nspawn-machine.sh),
commands and files in it, requests to its services on the shared loopback,
bounded waits, and the check decorator that records results. Imported by
test-system.py and alerts.py."""

import http.client
import json
import os
import re
import subprocess
import sys
import time

TOP = os.path.abspath(os.environ.get("top_srcdir") or os.path.join(os.path.dirname(__file__), "..", ".."))
MACHINE = os.environ.get("VIGIL_SYSTEST_MACHINE", "vigil-systest")
NSPAWN = os.path.join(TOP, "scripts", "nspawn-machine.sh")
BUILD = os.path.join(TOP, "scripts", "build-packages.sh")
PKG_DIR = os.environ.get("VIGIL_SYSTEST_PACKAGES", os.path.join(TOP, "build", "packages"))
UPGRADE_DIR = os.environ.get("VIGIL_SYSTEST_UPGRADE_PACKAGES", os.path.join(TOP, "build", "packages-upgrade"))
# Both directories already hold packages (the second a newer version): no build.
PREBUILT = os.environ.get("VIGIL_SYSTEST_PREBUILT") == "1"
GATEWAY = ("127.0.0.1", 80)
# The daemons: unit name stem, package, port, gateway prefix (None: not routed).
DAEMONS = {
    "authd": ("vigil-authd", 8001, "/api/v1/auth"),
    "paymentd": ("vigil-paymentd", 8002, "/api/v1/payment"),
    "inventoryd": ("vigil-inventoryd", 8003, "/api/v1/inventory"),
    "notifyd": ("vigil-notifyd", 8004, None),
    "alertbotd": ("vigil-alertbot", 8005, None),
}
PACKAGES = [pkg for pkg, _, _ in DAEMONS.values()]
# Ports the machine's services take on the shared network.
PORTS = {80: "nginx", 8001: "vigil-authd", 8002: "vigil-paymentd", 8003: "vigil-inventoryd",
         8004: "vigil-notifyd", 8005: "vigil-alertbotd", 5432: "PostgreSQL", 6379: "Redis",
         5672: "RabbitMQ", 9090: "Prometheus", 9093: "Alertmanager", 9094: "Alertmanager cluster",
         9100: "node_exporter", 9099: "the escalation receiver", 9113: "the nginx exporter",
         9121: "the Redis exporter", 9187: "the PostgreSQL exporter", 15692: "RabbitMQ's metrics",
         8081: "nginx stub_status", 3903: "mtail", 9115: "the blackbox exporter", 3000: "Grafana",
         3100: "Loki", 3200: "Tempo", 9080: "Promtail"}
DEADLINE = time.monotonic() + float(os.environ.get("VIGIL_SYSTEST_TIMEOUT", "3000"))
# The alert bot's audit MESSAGE_IDs (docs/alertbot.md).
MSG = {
    "acted": "8fa5e36ef7934bd7ad1a5b385a4e81c8",
    "failed": "921e60d90ea547238d9985a44b17dd0e",
    "skipped_cooldown": "57808b0596314f2ab48ee04197ccd8f8",
    "skipped_breaker": "f311ce8ab2da4f9b985235429606b923",
    "refused_allowlist": "ee06a8d952b040f38852d559d7f94fa7",
    "resolved": "2db92e48889241bbbaa31f40d68d21b1",
}
# Notifications the bot records on the host (POST /notify), docs/alertbot.md.
NOTIFY_MSG = {"firing": "9ce3b8577a8c4d90bad16258fec98df9",
              "resolved": "70cba75ecd174fc7b6ac1ae697f97c3c"}

results = []


def log(msg):
    print(msg, flush=True)


def skip(why):
    log(f"SKIP: {why}")
    sys.exit(77)


def check_time():
    if time.monotonic() > DEADLINE:
        raise RuntimeError("the system test ran out of time")


def run(cmd, check=True, timeout=600, capture=True, input=None):
    check_time()
    p = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout or ''}{p.stderr or ''}")
    return p


def build_packages():
    """The packages of this tree (PKG_DIR) and the same sources as a newer
    version (UPGRADE_DIR), reused when up to date. The fleet test calls
    this too: the builds take turns (build-packages.sh locks its output
    directory), so tests running side by side build once."""
    t0 = time.monotonic()
    base = run(["dpkg-parsechangelog", "-l", os.path.join(TOP, "debian", "changelog"), "-S", "Version"]).stdout.strip()
    log(f"# building packages {base} (reused when up to date)")
    run([BUILD, "--if-stale", "--no-dbgsym", "--out", PKG_DIR], timeout=1800, capture=False)
    log(f"# building the upgrade {base}+systest1")
    run([BUILD, "--if-stale", "--no-dbgsym", "--no-check", "--no-lintian", "--version", f"{base}+systest1",
         "--out", UPGRADE_DIR], timeout=1800, capture=False)
    log(f"# packages ready ({time.monotonic() - t0:.0f}s)")


def mexec(*args, check=True, timeout=300, input=None):
    return run([NSPAWN, "exec", MACHINE, *args], check=check, timeout=timeout, input=input)


def mwrite(path, text):
    mexec("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat >"$1"', "sh", path, input=text)


def show(unit, *props):
    out = mexec("systemctl", "show", "-p", ",".join(props), unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def vigil_units():
    out = mexec("systemctl", "list-units", "--all", "--plain", "--no-legend", "vigil*").stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def vigil_services():
    return [u for u in vigil_units() if u.endswith(".service")]


def service(d):
    return f"vigil-{d}.service"


def wait_until(what, fn, timeout, interval=0.2):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def request(method, path, body=None, headers=None, source="127.0.0.1", timeout=10, port=None):
    """One request to the gateway (or to port on loopback directly) from a
    loopback source address. Every 127.0.0.x is its own client for the
    per-IP rate limit."""
    conn = http.client.HTTPConnection(GATEWAY[0], port or GATEWAY[1], timeout=timeout, source_address=(source, 0))
    try:
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = conn.getresponse()
        data = r.read()
        return r.status, data, dict(r.getheaders())
    finally:
        conn.close()


def metric_sum(port, name, **labels):
    """The sum of name's samples carrying labels, from the daemon on port's
    own /metrics; None when there is no such sample."""
    _, body, _ = request("GET", "/metrics", port=port)
    total = None
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def status_of(method, path, **kw):
    try:
        return request(method, path, **kw)[0]
    except OSError:
        return 0


def psql(sql, db="postgres"):
    return mexec("runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-q", "-d", db,
                 "-c", sql).stdout.strip()


def journal(*match):
    out = mexec("journalctl", "-o", "json", "--no-pager", *match, timeout=120).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def parse_usec(v):
    """systemctl show prints e.g. 10s, 2s, 1min 30s, 500ms."""
    total = 0.0
    for num, unit in re.findall(r"([0-9.]+)(min|ms|us|s|h)", v):
        total += float(num) * {"h": 3600, "min": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def test(name):
    def wrap(fn):
        def runner():
            t0 = time.monotonic()
            try:
                detail = fn()
                results.append((name, True))
                log(f"ok - {name} ({time.monotonic() - t0:.1f}s){': ' + detail if detail else ''}")
            except Exception as e:  # noqa: BLE001 - every failure is reported
                results.append((name, False))
                log(f"not ok - {name} ({time.monotonic() - t0:.1f}s): {e}")
        runner.__name__ = fn.__name__
        return runner
    return wrap


# ---------------------------------------------------------------- the checks

USER = f"systest{os.getpid()}"
PASSWORD = f"correct horse battery {os.urandom(6).hex()}"
state = {}


def prometheus_api(path):
    conn = http.client.HTTPConnection("127.0.0.1", 9090, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())["data"]
    finally:
        conn.close()
