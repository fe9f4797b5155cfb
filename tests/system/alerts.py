"""What the installed monitoring says, checked against the truth:

  silent   healthy means silent: ten minutes of steady user traffic through
           the gateway with the shipped rules and intervals, and no alert
           pending or firing, nothing sent to Alertmanager or recorded by the
           bot; meanwhile every Prometheus panel of the installed dashboards
           is evaluated and must return data
  drills   every alert of vigil-alerts.yml and every SLO alert, provoked by
           its real cause on the installed platform (a stopped Redis, a
           crash loop, 429s, a poison message, a filling disk, …) with the
           rules made fast (alerting.setup_alerting): each must fire in
           Prometheus, reach its receiver (the bot's POST /notify records
           pages as `escalation` and tickets as `tickets`, in the journal
           with their MESSAGE_ID and Alertmanager's fingerprint), and be
           recorded resolved once its cause is gone

Two host-wide alerts cannot be provoked at their shipped threshold on a
shared 24 GiB test host without harming it (under 10 % of memory
available, 80 % of the kernel's file handles): for those the drill rewrites
the threshold to a margin below what the machine has now, and then takes
that memory or those file handles for real. Every other threshold is as
shipped.
"""

import http.client
import json
import os
import sys
import tempfile
import threading
import time
import urllib.parse

from alerting import POLICY, am_post_alert, prom_alerts, reload_rules, set_policy, setup_alerting, write_alert_rules
from systest import (MACHINE, NOTIFY_MSG, NSPAWN, PASSWORD, USER, check_time, journal, log, mexec, mwrite,
                     prometheus_api, request, run, show, state, status_of, test, wait_until)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "observability"))
import obslib  # noqa: E402

SILENT_SECONDS = float(os.environ.get("VIGIL_SYSTEST_SILENT_SECONDS", "600"))
DASHBOARDS = "/usr/share/vigil/grafana/dashboards"
# The only alert a busy test host may legitimately hold pending during the
# silent window: the machine's node_exporter reads the host's /proc/stat,
# so a CI host running other tests on both cores is truly over 90 % CPU.
# It must never fire (its `for:` is 15 minutes, longer than the window).
HOST_LOAD_ALERTS = {"VigilHostCPUHigh"}
RECEIVER = {"page": "escalation", "ticket": "tickets"}
# Panels that cannot have data on this machine, and why; every other panel
# of the installed dashboards must.
PANELS_NOT_HERE = {
    ("vigil-infrastructure", "Disk used"): "the machine's filesystems are its overlayfs root and tmpfs, which "
                                           "node_exporter and the panel leave out (a real host has its disks)",
    ("vigil-service-map", "Tempo service graph: requests per edge"): "Tempo is not installed",
    ("vigil-service-map", "Tempo service graph: server latency p95 per edge"): "Tempo is not installed",
    ("vigil-service-map", "Tempo span metrics: calls per service"): "Tempo is not installed",
}


def query(expr):
    return prometheus_api("/api/v1/query?query=" + urllib.parse.quote(expr))["result"]


def am_alerts():
    conn = http.client.HTTPConnection("127.0.0.1", 9093, timeout=5)
    try:
        conn.request("GET", "/api/v2/alerts")
        return json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return []
    finally:
        conn.close()


def machine_now():
    return int(mexec("date", "+%s").stdout)


def bot_notes(since):
    """Notifications the bot recorded in the journal since a time (epoch s)."""
    return journal(f"MESSAGE_ID={NOTIFY_MSG['firing']}", f"MESSAGE_ID={NOTIFY_MSG['resolved']}",
                   f"--since=@{since}")


class Traffic:
    """Requests in a loop on their own thread, bounded in count and time;
    counts the answers by status (0: no answer) and keeps the unexpected."""

    def __init__(self, name, step, seconds, pause, max_requests=20000):
        self.name, self.step, self.pause = name, step, pause
        self.deadline = time.monotonic() + seconds
        self.max = max_requests
        self.stop = threading.Event()
        self.codes = {}
        self.unexpected = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        n = 0
        while not self.stop.is_set() and time.monotonic() < self.deadline and n < self.max:
            try:
                code, ok = self.step(n)
            except OSError as e:
                code, ok = 0, f"{e!r}"
            self.codes[code] = self.codes.get(code, 0) + 1
            if ok is not True and len(self.unexpected) < 20:
                self.unexpected.append(ok)
            n += 1
            self.stop.wait(self.pause)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)

    def total(self):
        return sum(self.codes.values())


def expect_status(s, b, *good):
    return True if s in good else f"{s} {b[:100]!r}"


def smoke_step(token, source):
    """A user's flow through the gateway, one request per call: verify,
    browse, look at one product, reserve and release, charge (a fresh
    Idempotency-Key; a simulated decline is an answer) and read it back."""
    bearer = {"Authorization": f"Bearer {token}"}
    cycle = ["verify", "products", "product", "charge", "payment", "reserve", "release", "products"]
    last = {}

    def step(n):
        what = cycle[n % len(cycle)]
        if what == "verify":
            s, b, _ = request("POST", "/api/v1/auth/verify", headers=bearer, source=source)
            return s, expect_status(s, b, 200)
        if what == "products":
            s, b, _ = request("GET", "/api/v1/inventory/products", source=source)
            return s, expect_status(s, b, 200)
        if what == "product":
            s, b, _ = request("GET", f"/api/v1/inventory/product/{1 + n % 5}", source=source)
            return s, expect_status(s, b, 200)
        if what == "charge":
            h = dict(bearer, **{"Idempotency-Key": f"smoke-{os.urandom(8).hex()}"})
            s, b, _ = request("POST", "/api/v1/payment/charge", {"amount": 3.5}, headers=h, source=source)
            if s == 201:
                last["payment"] = json.loads(b)["payment_id"]
            return s, expect_status(s, b, 201, 402)
        if what == "payment":
            if "payment" not in last:
                return 0, True
            s, b, _ = request("GET", f"/api/v1/payment/payment/{last['payment']}", headers=bearer, source=source)
            return s, expect_status(s, b, 200)
        if what == "reserve":
            s, b, _ = request("POST", "/api/v1/inventory/product/2/reserve", {"quantity": 1}, headers=bearer,
                              source=source)
            if s == 200:
                last["reservation"] = json.loads(b)["reservation_id"]
            return s, expect_status(s, b, 200, 409)
        rid = last.pop("reservation", None)
        if rid is None:
            return 0, True
        s, b, _ = request("DELETE", f"/api/v1/inventory/reservation/{rid}", headers=bearer, source=source)
        return s, expect_status(s, b, 204)
    return step


def login(source):
    s, b, _ = request("POST", "/api/v1/auth/login", {"username": USER, "password": PASSWORD}, source=source)
    assert s == 200, f"login: {s} {b!r}"
    return json.loads(b)["token"]


# ------------------------------------------------------------ panels

def installed_dashboards():
    names = mexec("sh", "-c", f"ls {DASHBOARDS}/*.json").stdout.split()
    return [json.loads(mexec("cat", n).stdout) for n in names]


def panel_data():
    """Every panel of the installed dashboards with a Prometheus query:
    {(dashboard uid, title): True when one of its queries returns data};
    and the panels reading another datasource (Loki, Tempo)."""
    have, other = {}, []
    for d in installed_dashboards():
        for p in obslib.panels(d):
            if p.get("type") in ("row", "text"):
                continue
            targets = [t for t in p.get("targets", []) if t.get("expr")]
            prom = [t for t in targets if obslib.is_prometheus(p, t)]
            key = (d["uid"], p.get("title", ""))
            if not prom:
                if targets:
                    other.append(key)
                continue
            have[key] = any(query(obslib.grafana_to_promql(t["expr"])) for t in prom)
    return have, other


# ------------------------------------------------------------ healthy means silent

def alert_keys():
    return {(a["labels"]["alertname"], tuple(sorted(a["labels"].items()))): a for a in prom_alerts()}


def cpu_seconds():
    """(CPU seconds of the machine's processes, the living and the reaped;
    the host's busy CPU seconds; all its CPU seconds), now."""
    ticks = 0
    for line in mexec("sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null", check=False).stdout.splitlines():
        f = line.rpartition(")")[2].split()  # from the state: utime is the 12th
        if len(f) > 14:
            ticks += sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
    with open("/proc/stat") as stat:
        cpu = [int(x) for x in stat.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return ticks / hz, (sum(cpu) - cpu[3] - cpu[4]) / hz, sum(cpu) / hz


def cpu_shares(before):
    """The platform's share and the host's busy share of all the host's CPU
    since cpu_seconds() gave before."""
    now = cpu_seconds()
    total = max(now[2] - before[2], 1e-9)
    return (now[0] - before[0]) / total, (now[1] - before[1]) / total


def why_failed(since):
    """What the platform itself recorded about failed requests since a time
    (epoch s): calls between daemons that got no answer or a 5xx, and the
    warnings of vigil's units."""
    calls = {f"{m.get('job')}→{m.get('peer')} {m.get('code')}": round(float(v)) for m, (_, v) in (
        (r["metric"], r["value"]) for r in query(
            'sum by (job, peer, code) (increase(vigil_http_client_requests_total{code!~"[234].."}[15m])) > 0'))}
    warnings = [f"{e.get('_SYSTEMD_UNIT')}: {e.get('MESSAGE')}"
                for e in journal("-p", "warning", "-u", "vigil-*", f"--since=@{since}")][-8:]
    return f"failed calls between daemons: {calls}; warnings: {warnings}"


@test("healthy means silent: 10 min of user traffic, shipped rules: nothing pending or firing; every panel has data")
def t_silent():
    token = login("127.0.3.1")
    with Traffic("smoke", smoke_step(token, "127.0.3.1"), SILENT_SECONDS + 300, 0.3) as smoke:
        # Alerts left pending by the installation itself (a target scraped
        # before its package was configured) clear at the next evaluations;
        # none may have fired.
        settle = {}
        cpu0 = cpu_seconds()

        def settled():
            now = alert_keys()
            settle.update(now)
            return not [k for k, a in now.items() if not (k[0] in HOST_LOAD_ALERTS and a["state"] == "pending")]
        t0 = time.monotonic()
        try:
            wait_until("the installation's pending alerts to clear", settled, 180, 5)
        finally:
            fired = [f"{k[0]}: {dict(k[1])}" for k, a in settle.items()
                     if a["state"] == "firing" and k[0] not in HOST_LOAD_ALERTS]
            assert not fired, f"alerts fired on the fresh install: {fired}"
        t_settle = time.monotonic() - t0
        since = machine_now()
        seen = {k: {"states": {a["state"]}, "at": 0, "value": a.get("value")} for k, a in settle.items()
                if k[0] in HOST_LOAD_ALERTS}
        panels = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < SILENT_SECONDS:
            check_time()
            for k, a in alert_keys().items():
                seen.setdefault(k, {"states": set(), "at": time.monotonic() - t0, "value": a.get("value")})
                seen[k]["states"].add(a["state"])
            # The panels, once every rate window of the dashboards has data.
            if panels is None and time.monotonic() - t0 > min(420, SILENT_SECONDS * 0.7):
                panels = panel_data()
            time.sleep(5)
    if panels is None:
        panels = panel_data()
    # The host's load alerts speak of the host, which this machine shares:
    # pending is tolerated; firing only when the host really was saturated
    # and the platform used under half of its CPU (the load was outside:
    # the alert was true, and not about vigil).
    platform, host = cpu_shares(cpu0)
    outside = host > 0.9 and platform < 0.5

    def host_load(name, states=("pending",)):
        return name in HOST_LOAD_ALERTS and (outside or set(states) <= {"pending"})
    problems = []
    false = [f"{k[0]} {sorted(v['states'])} at {v['at']:.0f}s: {dict(k[1])}" for k, v in seen.items()
             if not host_load(k[0], v["states"])]
    busy = [f"{k[0]} {'/'.join(sorted(v['states']))} at {v['at']:.0f}s (value {v['value']})"
            for k, v in seen.items() if host_load(k[0], v["states"])]
    if false:
        problems.append(f"alerts on a healthy install: {false}")
    held = [a for a in am_alerts() if not host_load(a["labels"].get("alertname"), ["firing"])]
    if held:
        problems.append(f"Alertmanager holds alerts: {held}")
    notes = [n.get("ALERTNAME") for n in bot_notes(since) if not host_load(n.get("ALERTNAME"), ["firing"])]
    if notes:
        problems.append(f"notifications on a healthy install: {notes}")
    if smoke.total() < SILENT_SECONDS:
        problems.append(f"only {smoke.total()} requests of smoke traffic")
    if smoke.unexpected:
        problems.append(f"smoke traffic failed: {smoke.unexpected} ({why_failed(since)})")
    have, other = panels
    empty = sorted(k for k, v in have.items() if not v and k not in PANELS_NOT_HERE)
    state["panels"] = (f"{sum(have.values())}/{len(have)} Prometheus panels with data "
                       f"({len(set(PANELS_NOT_HERE) & set(have))} cannot here: Tempo, the disks)")
    if empty:
        problems.append(f"{len(empty)} of {len(have)} panels without data: {empty}")
    unknown = set(PANELS_NOT_HERE) - set(have)
    if unknown:
        problems.append(f"PANELS_NOT_HERE names panels no dashboard has: {sorted(unknown)}")
    assert not problems, "; ".join(problems)
    codes = ", ".join(f"{c}: {n}" for c, n in sorted(smoke.codes.items()))
    return (f"installation settled in {t_settle:.0f}s; {SILENT_SECONDS:.0f}s, {smoke.total()} requests ({codes}), "
            "0 alerts" + (f" (host busy: {busy})" if busy else "")
            + f"; the host's CPU {host:.0%} busy, {platform:.0%} by the platform; {state['panels']}"
            + (f"; {len(other)} panels read Loki/Tempo (not installed)" if other else ""))


# ------------------------------------------------------------ drills

class Expect:
    """One alert the drill must see: firing in Prometheus (labels matching),
    then in the bot's notifications with the receiver its severity routes
    to, then resolved there. Only notifications after the cause count."""

    def __init__(self, alertname, **labels):
        self.alertname, self.labels = alertname, labels
        self.t_cause = self.t_recover = self.t_wall = None
        self.fired = self.delivered = self.resolved = None
        self.fingerprints = set()
        self.receiver = None

    def __str__(self):
        return self.alertname + (str(self.labels) if self.labels else "")

    def matches(self, labels):
        return labels.get("alertname") == self.alertname and all(labels.get(k) == v for k, v in self.labels.items())


class Watch:
    """Polls Prometheus, Alertmanager and the bot's journal entries and
    advances every Expect it was given."""

    def __init__(self, since=None):
        self.expects = []
        self.since = since or machine_now()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def add(self, *expects):
        now, wall = time.monotonic(), machine_now()
        with self.lock:
            for e in expects:
                e.t_cause = now
                e.t_wall = e.t_wall or wall
                self.expects.append(e)

    def run(self):
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - keep polling; a wait reports the outcome
                log(f"# watch: {e!r}")
            self.stop.wait(2)

    def poll(self):
        prom = prom_alerts()
        am = am_alerts()
        notes = bot_notes(self.since)
        now = time.monotonic()
        with self.lock:
            for e in self.expects:
                if e.fired is None:
                    for a in prom:
                        if a["state"] == "firing" and e.matches(a["labels"]):
                            e.fired = now
                            e.receiver = RECEIVER.get(a["labels"].get("severity"))
                if e.fired is not None:
                    e.fingerprints |= {a["fingerprint"] for a in am if e.matches(a["labels"])}
                after = [n for n in notes if int(n["__REALTIME_TIMESTAMP"]) / 1e6 >= e.t_wall
                         and n.get("FINGERPRINT") in e.fingerprints and n.get("RECEIVER") == e.receiver]
                if e.delivered is None and any(n.get("STATUS") == "firing" for n in after):
                    e.delivered = now
                if e.delivered is not None and e.resolved is None and e.t_recover is not None:
                    done = {n.get("FINGERPRINT") for n in after if n.get("STATUS") == "resolved"}
                    fired = {n.get("FINGERPRINT") for n in after if n.get("STATUS") == "firing"}
                    if fired and fired <= done:
                        e.resolved = now

    def wait(self, what, expects, attr, timeout):
        def done():
            with self.lock:
                return all(getattr(e, attr) is not None for e in expects)
        try:
            wait_until(what, done, timeout, 1)
        except AssertionError:
            with self.lock:
                missing = [f"{e} (fired={e.fired is not None}, fingerprints={len(e.fingerprints)}, "
                           f"delivered={e.delivered is not None})" for e in expects if getattr(e, attr) is None]
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {missing}")

    def recovered(self, *expects):
        now = time.monotonic()
        with self.lock:
            for e in expects:
                e.t_recover = now

    def close(self):
        self.stop.set()
        self.thread.join(10)


def drill(watch, name, cause, expects, recover, timeout=150, resolve_timeout=None):
    """cause(); every Expect fires and is delivered; recover(); and, with
    resolve_timeout, each is recorded resolved (else the end waits)."""
    log(f"# drill {name}: {', '.join(map(str, expects))}")
    watch.add(*expects)
    try:
        cause()
        watch.wait(f"{name}: fired and delivered", expects, "delivered", timeout)
    finally:
        recover()
        watch.recovered(*expects)
    if resolve_timeout:
        watch.wait(f"{name}: resolved", expects, "resolved", resolve_timeout)


def daemon_ready(port):
    return status_of("GET", "/ready", port=port) == 200


def wait_ready(*ports, timeout=90):
    for port in ports:
        wait_until(f":{port}/ready 200", lambda port=port: daemon_ready(port), timeout, 0.5)


def stop_units(*units):
    mexec("systemctl", "stop", *units, timeout=120)


def start_units(*units):
    mexec("systemctl", "reset-failed", *units, check=False)
    mexec("systemctl", "start", *units, timeout=180)


# --- the SLOs: injected faults on the three API daemons, traffic straight to them

SLO_DAEMONS = {"auth": 8001, "payment": 8002, "inventory": 8003}


def set_faults(*settings):
    """`vigilctl fault` on the three daemons (bounded by its own timer), or
    --clear with no settings."""
    for d in SLO_DAEMONS:
        if settings:
            mexec("vigilctl", "fault", f"{d}d", *settings, "--for", "20m", timeout=60)
        else:
            mexec("vigilctl", "fault", f"{d}d", "--clear", timeout=60)


def slo_traffic(token):
    bearer = {"Authorization": f"Bearer {token}"}

    def step(n):
        d = ("auth", "payment", "inventory")[n % 3]
        port = SLO_DAEMONS[d]
        if d == "auth":
            s, b, _ = request("POST", "/verify", headers=bearer, port=port, timeout=5)
        elif d == "inventory":
            s, b, _ = request("GET", "/products", port=port, timeout=5)
        else:
            h = dict(bearer, **{"Idempotency-Key": f"slo-{os.urandom(8).hex()}"})
            s, b, _ = request("POST", "/charge", {"amount": 2.5}, headers=h, port=port, timeout=5)
        return s, True
    return step


def drill_slos(watch, token):
    slos = [(d, kind) for d in SLO_DAEMONS for kind in ("availability", "latency")]
    pages = [Expect("VigilSLOBudgetBurnPage", slo=f"{d}-{k}") for d, k in slos]
    tickets = [Expect("VigilSLOBudgetBurnTicket", slo=f"{d}-{k}") for d, k in slos]
    log(f"# drill error budget burn: {', '.join(map(str, pages + tickets))}")
    traffic = [Traffic(f"slo{i}", slo_traffic(token), 600, 0.01) for i in range(6)]
    for t in traffic:
        t.__enter__()
    try:
        watch.add(*pages, *tickets)
        set_faults("error_ratio=0.5", "latency_ms=300")
        try:
            watch.wait("the SLO pages fired and delivered", pages, "delivered", 120)
            # The tickets' windows (1 d and 3 d, here 24 and 72 minutes)
            # hold all the test's earlier traffic: the burn must outweigh it.
            watch.wait("the SLO tickets fired (inhibited by their pages)", tickets, "fired", 300)
        finally:
            set_faults()
            watch.recovered(*pages, *tickets)
        # A page inhibits the ticket of its SLO: the ticket is delivered
        # once the page resolves, while the longer windows still burn.
        watch.wait("the SLO tickets delivered once the pages resolve", tickets, "delivered", 180)
    finally:
        for t in traffic:
            t.__exit__()
    return pages + tickets


# --- RabbitMQ down: payments wait in the outbox, notifications lag

def drill_rabbitmq(watch, token):
    bearer = {"Authorization": f"Bearer {token}"}

    def charge(n):
        h = dict(bearer, **{"Idempotency-Key": f"mq-{os.urandom(8).hex()}"})
        s, b, _ = request("POST", "/charge", {"amount": 1.5}, headers=h, port=8002, timeout=5)
        return s, expect_status(s, b, 201, 402)

    down = [Expect("VigilRabbitMQDown"), Expect("VigilOutboxBacklog", service="payment")]
    late = [Expect("VigilNotifyLag"), Expect("VigilSLOBudgetBurnPage", slo="notify-freshness"),
            Expect("VigilSLOBudgetBurnTicket", slo="notify-freshness")]
    with Traffic("charges", charge, 400, 0.2) as charges:
        drill(watch, "RabbitMQ stopped", lambda: stop_units("rabbitmq-server.service"), down,
              lambda: start_units("rabbitmq-server.service"), timeout=180)
        drill(watch, "notifications late after the outage", lambda: None, late[:2], lambda: None, timeout=180)
        for t in late[2:]:
            t.t_wall = late[0].t_wall
        watch.add(*late[2:])
        watch.recovered(*late[2:])
        watch.wait("the freshness ticket once the page resolves", late[2:], "delivered", 150)
    assert not charges.unexpected, f"charges failed while RabbitMQ was down: {charges.unexpected}"
    return down + late


# --- the host and the processes: CPU, memory, file handles, a filling disk

def transient(name, *cmd):
    mexec("systemd-run", f"--unit={name}", "--quiet", "--collect", "-p", "RuntimeMaxSec=180", *cmd)


def metric(expr):
    r = query(expr)
    assert r, f"no value for {expr}"
    return float(r[0]["value"][1])


class Disk:
    """A 256 MiB ext4 filesystem mounted at /srv/systest-disk in the machine
    (Debian's node_exporter leaves /mnt and /media out): a loop device set up
    by the host, its node made and mounted from the host in the machine's
    mount namespace (the machine itself may not set up loop devices)."""

    MOUNT = "/srv/systest-disk"
    NODE = "/dev/systest-disk"

    def __init__(self):
        self.image = self.loop = None

    def in_mount_ns(self, script, check=True):
        leader = run([NSPAWN, "leader", MACHINE]).stdout.strip()
        return run(["nsenter", "-t", leader, "-m", "sh", "-c", script], check=check)

    def __enter__(self):
        fd, self.image = tempfile.mkstemp(prefix="vigil-systest-disk-", dir="/var/tmp")
        os.close(fd)
        run(["truncate", "-s", "256M", self.image])
        run(["mkfs.ext4", "-q", "-F", self.image])
        self.loop = run(["losetup", "-f", "--show", self.image]).stdout.strip()
        rdev = os.stat(self.loop).st_rdev
        self.in_mount_ns(f"mknod {self.NODE} b {os.major(rdev)} {os.minor(rdev)} && mkdir -p {self.MOUNT} && "
                         f"mount {self.NODE} {self.MOUNT}")
        return self

    def fill(self, mib):
        mexec("dd", "if=/dev/zero", f"of={self.MOUNT}/fill-{os.urandom(3).hex()}", "bs=1M", f"count={mib}",
              "conv=fsync", "status=none", check=False, timeout=120)

    def empty(self):
        mexec("sh", "-c", f"rm -f {self.MOUNT}/fill-*; sync")

    def __exit__(self, *exc):
        self.in_mount_ns(f"umount {self.MOUNT}; rmdir {self.MOUNT}; rm -f {self.NODE}", check=False)
        if self.loop:
            run(["losetup", "-d", self.loop], check=False)
        if self.image:
            os.unlink(self.image)


def drill_host(watch):
    """CPU, memory, file handles (host and process), a disk filling: all at
    once (they do not interact), each taken away when its alert is delivered."""
    gib = 1 << 30
    avail = metric("node_memory_MemAvailable_bytes")
    total = metric("node_memory_MemTotal_bytes")
    handles = metric("node_filefd_allocated")
    maximum = metric("node_filefd_maximum")
    # Rounded so Prometheus prints them back the same (reload_rules).
    mem_threshold = round((avail - 2 * gib) / total, 4)
    fd_threshold = round((handles + 20000) / maximum, 4)
    write_alert_rules([
        ("node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes < 0.1",
         f"node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes < {mem_threshold!r}"),
        ("node_filefd_allocated / node_filefd_maximum > 0.8",
         f"node_filefd_allocated / node_filefd_maximum > {fd_threshold!r}"),
    ])
    reload_rules(f"< {mem_threshold!r}")
    # inventoryd with a file-descriptor limit just above what it has open,
    # then idle keep-alive connections until it holds over 80 % of it.
    open_fds = int(metric('process_open_fds{job="inventory"}'))
    limit = open_fds + 40
    dropin = "/etc/systemd/system/vigil-inventoryd.service.d/zz-systest-nofile.conf"
    mwrite(dropin, f"[Service]\nLimitNOFILE={limit}\n")
    mexec("systemctl", "daemon-reload")
    mexec("systemctl", "restart", "vigil-inventoryd.service", timeout=60)
    wait_ready(8003)
    conns = []

    def hold_connections():
        for i in range(36):
            c = http.client.HTTPConnection("127.0.0.1", 8003, timeout=10, source_address=(f"127.0.6.{1 + i}", 0))
            c.request("GET", "/health")
            c.getresponse().read()
            conns.append(c)

    mem = Expect("VigilHostMemoryLow")
    fds = Expect("VigilHostFdsHigh")
    proc = Expect("VigilProcessFdsHigh", job="inventory")
    fill = Expect("VigilHostDiskAlmostFull", mountpoint=Disk.MOUNT)
    will = Expect("VigilHostDiskWillFill", mountpoint=Disk.MOUNT)
    with Disk() as disk:
        def cause():
            transient("systest-memory", "python3", "-c",
                      "import time; b = bytearray(b'\\x01') * (4 << 30); time.sleep(170)")
            # 30 000 open files in two processes (a service may hold 20 000).
            transient("systest-files", "python3", "-c",
                      "import os, resource, time\n"
                      "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
                      "resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n"
                      "os.fork()\n"
                      "fs = [open('/dev/null') for _ in range(15000)]\n"
                      "time.sleep(170)\n")
            hold_connections()
            # Most of it at once, then at a steady pace (the trend says it
            # will be full), then the rest.
            disk.fill(150)
            for _ in range(4):
                time.sleep(2)
                disk.fill(12)
            disk.fill(64)

        def recover():
            mexec("systemctl", "stop", "systest-memory.service", "systest-files.service", check=False)
            for c in conns:
                c.close()
            disk.empty()

        exps = [mem, fds, proc, fill, will]
        try:
            drill(watch, "host resources", cause, exps, recover, timeout=240, resolve_timeout=120)
        finally:
            mexec("rm", "-f", dropin)
            mexec("systemctl", "daemon-reload")
            mexec("systemctl", "restart", "vigil-inventoryd.service", timeout=60)
            write_alert_rules()
            reload_rules("node_memory_MemTotal_bytes < 0.1")
    wait_ready(8003)
    return exps


def drill_cpu(watch):
    """Both cores busy (at the lowest priority) until the alert is delivered.
    The machine's node_exporter reads the host's CPU: the drill needs a host
    not already saturated by something else."""
    wait_until("the host under 90 % CPU (VigilHostCPUHigh not firing before the drill)",
               lambda: not [a for a in prom_alerts() if a["labels"]["alertname"] == "VigilHostCPUHigh"], 180, 2)
    e = Expect("VigilHostCPUHigh")
    drill(watch, "both cores busy",
          lambda: transient("systest-cpu", "nice", "-n", "19", "sh", "-c", "yes >/dev/null & yes >/dev/null & wait"),
          [e], lambda: mexec("systemctl", "stop", "systest-cpu.service", check=False), timeout=120)
    return [e]


# --- the gateway: one client over its rate limit

def drill_rate_limit(watch):
    def blast(n):
        s, b, _ = request("GET", "/api/v1/inventory/products", source="127.0.7.1", timeout=5)
        return s, expect_status(s, b, 200, 429)
    e = Expect("VigilGatewayRateLimiting")
    box = {}

    def cause():
        box["t"] = Traffic("blast", blast, 150, 0.004, max_requests=40000).__enter__()

    def recover():
        box["t"].__exit__()
    drill(watch, "one client over the rate limit", cause, [e], recover, timeout=120)
    t = box["t"]
    assert t.codes.get(429, 0) > t.total() * 0.2, f"answers: {t.codes}"
    return [e]


# --- a poison message: dead-lettered, parked in the dead queue, purged

def drill_dead_letters(watch):
    vhost = mexec("sh", "-c", "for v in $(rabbitmqctl -q list_vhosts --no-table-headers); do "
                  "rabbitmqctl -q list_queues --vhost \"$v\" --no-table-headers name | grep -qx vigil.notify.dead "
                  "&& echo \"$v\"; done").stdout.split()
    assert len(vhost) == 1, f"vhosts with vigil.notify.dead: {vhost}"
    vhost = vhost[0]
    exps = [Expect("VigilDeadLetters"), Expect("VigilDeadLetterQueueNotEmpty", queue="vigil.notify.dead")]

    def cause():
        psql_vigil("INSERT INTO payment.outbox (message_id, routing_key, body) SELECT "
                   f"'systest-poison-{os.urandom(4).hex()}', routing_key, '{{\"not\": \"a payment\"}}' "
                   "FROM payment.outbox ORDER BY id DESC LIMIT 1")

    def recover():
        mexec("rabbitmqctl", "-q", "purge_queue", "--vhost", vhost, "vigil.notify.dead")
    drill(watch, "a poison message", cause, exps, recover, timeout=120)
    return exps


def psql_vigil(sql):
    return mexec("runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-q", "-d", "vigil",
                 "-v", "ON_ERROR_STOP=1", "-c", sql).stdout.strip()


# --- the alert bot's breaker (opened by t_alertbot_breaker), closed again

def drill_breaker(watch):
    unit = "vigil-notifyd.service"
    e = Expect("VigilAlertbotCircuitOpen", unit=unit)
    shipped = state.setdefault("policy", mexec("cat", POLICY).stdout)

    # Open since the breaker check (half-open only after 30 minutes): its
    # notification counts from then.
    assert state.get("breaker_opened"), "the breaker check did not open the breaker"
    e.t_wall = state["breaker_opened"]

    def cause():
        pass

    def recover():
        # Half-open now: the next incident's restart is the probe; it heals.
        set_policy(shipped.replace("breaker_half_open_after_seconds = 1800", "breaker_half_open_after_seconds = 1")
                   .replace("cooldown_seconds = 600", "cooldown_seconds = 0"))
        am_post_alert({"alertname": "VigilDaemonDown", "remediation": "restart", "severity": "page",
                       "service": "notify", "unit": unit, "systest": "breaker-probe"})
    try:
        drill(watch, "the bot's breaker", cause, [e], recover, timeout=60, resolve_timeout=90)
    finally:
        set_policy(shipped)
    return [e]


# --- outages: the dependencies, a daemon, the gateway, an exporter

def drill_outages(watch):
    shipped = state.setdefault("policy", mexec("cat", POLICY).stdout)
    pg = mexec("sh", "-c", "systemctl list-units --plain --no-legend 'postgresql@*.service' | awk '{print $1}'"
               ).stdout.split() or ["postgresql.service"]
    auth = ["vigil-authd.socket", "vigil-authd.service"]
    exps = [Expect("VigilDaemonDown", job="auth"), Expect("VigilDependencyDown", service="payment", dependency="auth"),
            Expect("VigilRedisDown"), Expect("VigilPostgresDown"), Expect("VigilGatewayDown"),
            Expect("VigilUserFacingProbeFailing", probe="inventory-products"), Expect("VigilTargetDown", job="gateway")]

    def cause():
        # The bot would heal authd: not this time (its allowlist), so the
        # dependency alert of its callers has its minute.
        set_policy(shipped.replace("allowlist = vigil-authd.service vigil-paymentd.service",
                                   "allowlist = vigil-paymentd.service"))
        stop_units(*auth, "redis-server.service", *pg, "nginx.service", "mtail.service")

    def recover():
        start_units(*pg, "redis-server.service", "nginx.service", "mtail.service", *auth)
        set_policy(shipped)
    drill(watch, "outages", cause, exps, recover, timeout=150)
    wait_ready(8001, 8002, 8003, 8004)
    return exps


# --- a crash loop: start limit, failed unit, the bot's restart

def drill_crash_loop(watch):
    unit = "vigil-paymentd.service"
    exps = [Expect("VigilDaemonAutoRestarted", unit=unit), Expect("VigilDaemonRestartLoop", unit=unit),
            Expect("VigilUnitFailed", unit=unit)]

    def back_or_failed(pid):
        q = show(unit, "MainPID", "ActiveState")
        return q["ActiveState"] == "failed" or (q["ActiveState"] == "active" and q["MainPID"] not in ("0", pid))

    def cause():
        # SIGKILL whenever it is back: StartLimitBurst=5 in 60 s, then failed.
        for _ in range(8):
            p = show(unit, "MainPID", "ActiveState")
            if p["ActiveState"] == "failed":
                return
            mexec("kill", "-9", p["MainPID"], check=False)
            wait_until(f"{unit} back after SIGKILL, or failed", lambda pid=p["MainPID"]: back_or_failed(pid), 30, 0.2)
        raise AssertionError(f"{unit} never hit its start limit")

    def recover():
        if show(unit, "ActiveState")["ActiveState"] != "active":
            start_units("vigil-paymentd.socket", unit)
    drill(watch, "a crash loop", cause, exps, recover, timeout=150)
    wait_ready(8002)
    return exps


def together(*drills):
    """Run independent drills at once; every one runs to its end, the first
    failure is raised after."""
    results, errors = [], []

    def one(fn):
        try:
            results.extend(fn())
        except Exception as e:  # noqa: BLE001 - raised below
            errors.append(e)
    threads = [threading.Thread(target=one, args=(fn,), daemon=True) for fn in drills]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if errors:
        raise errors[0]
    return results


@test("every alert fires for its real cause, reaches its receiver and resolves (rules made fast)")
def t_alerts():
    if not state.get("alerting"):
        setup_alerting()
        state["alerting"] = True
    token = login("127.0.3.2")
    # The bot's notifications since the breaker check opened the breaker.
    watch = Watch(since=state.get("breaker_opened"))
    done = []
    t0 = time.monotonic()
    # In this order: RabbitMQ first, while few notifications sit in the
    # freshness SLO's windows (the late ones must outweigh them); the SLO
    # tickets resolve (their 6 h window is 6 min here) while the drills
    # after them run; the independent drills run
    # together; the CPU drill needs the host calm again; the outages burn
    # the SLOs of the services behind them, so they come last. The
    # breaker's drill restarts notifyd, so it ends before the poison
    # message's: a restart within a scrape of the park would take the
    # dead-letter count with it (the dead queue's alert would still fire).
    plan = [("rabbitmq", lambda: drill_rabbitmq(watch, token)),
            ("slos", lambda: drill_slos(watch, token)),
            ("together", lambda: drill_breaker(watch) + together(
                lambda: drill_dead_letters(watch), lambda: drill_rate_limit(watch), lambda: drill_host(watch))),
            ("cpu", lambda: drill_cpu(watch)),
            ("outages", lambda: drill_outages(watch)),
            ("crash_loop", lambda: drill_crash_loop(watch))]
    only = [n for n in os.environ.get("VIGIL_SYSTEST_DRILLS", "").split(",") if n]
    try:
        for name, fn in plan:
            if not only or name in only:
                done += fn()
        watch.wait("every alert resolved", done, "resolved", 480)
    finally:
        watch.close()
    rows = [f"{e}: fired {e.fired - e.t_cause:.0f}s, delivered to {e.receiver} {e.delivered - e.t_cause:.0f}s, "
            f"resolved {e.resolved - e.t_recover:.0f}s after the cause was gone" for e in done]
    state["alert_drills"] = rows
    for r in rows:
        log("#   " + r)
    kinds = sorted({e.alertname for e in done})
    return f"{len(done)} alerts of {len(kinds)} kinds fired → delivered → resolved in {time.monotonic() - t0:.0f}s"
