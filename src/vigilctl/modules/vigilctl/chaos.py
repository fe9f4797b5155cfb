"""vigilctl chaos: GameDay drills under real systemd while a bounded load runs.

Each drill injects one fault (kill -9 a daemon, stop a server, SIGSTOP a
daemon for its watchdog, a fault storm), runs a bounded user-flow load
through the gateway meanwhile, and accounts for it: when the fault went in,
when an alert went pending and firing, when the alert bot acted, when every
daemon was ready again; the requests sent and failed; the charges committed,
notified, lost and duplicated (from the database); the error budget spent
(from Prometheus). Nothing is guessed: what cannot be known is reported as
unknown.

It touches only vigil's own units and the servers it names. Before anything
is touched, everything is validated; before each fault goes in, its undoing
is registered (and, for what systemd would otherwise leave undone, a
transient timer armed), and on any exit (an exception, SIGINT, SIGTERM,
SIGHUP) every registered undoing runs once, logged.
"""

import argparse
import datetime
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

from vigilctl import fault as faultmod
from vigilctl.cli import EXIT_FAILED, EXIT_OK, UsageError, env_default
from vigilctl.validate import DAEMONS, http, prom_api, read_conf

SUMMARY = "run GameDay drills under a bounded load and report what they cost"
DESCRIPTION = """\
Run GameDay drills against this host's vigil under real systemd, each while
a bounded user-flow load runs through the gateway, and print a GameDay
report (markdown, or --json):

  vigilctl chaos --dry-run                  # the plan: every command, in order
  vigilctl chaos --drills kill-paymentd,stop-rabbitmq --hold 20
  vigilctl chaos --json > gameday.json

Drills (default: all of those whose target is installed here):
  kill-DAEMON      systemctl kill --signal=KILL vigil-DAEMON.service
                   (authd, paymentd, inventoryd, notifyd, alertbotd);
                   systemd restarts it
  stop-postgresql  systemctl stop postgresql.service, hold, start
  stop-redis       systemctl stop redis-server.service, hold, start
  stop-rabbitmq    systemctl stop rabbitmq-server.service, hold, start
  hang-DAEMON      SIGSTOP vigil-DAEMON.service: its watchdog (WatchdogSec=)
                   kills and restarts it; SIGCONT after the hold
  fault-storm      vigilctl fault error_ratio=0.2 latency_ms=200 on authd,
                   paymentd and inventoryd for the hold (their clear timers
                   bound it)

For each drill: fault -> alert pending -> firing (Prometheus) -> alert bot
action (its /incidents and /notifications) -> every daemon ready again, in
seconds from the fault; requests sent and failed; charges committed,
notified, lost and duplicated (PostgreSQL, after a bounded drain); error
budget spent (Prometheus' SLO recording rules over the drill)."""
EPILOG = """\
Everything it stops it starts again, everything it SIGSTOPs it SIGCONTs,
every fault it sets it clears: on any exit, SIGINT, SIGTERM and SIGHUP
included, each once and logged on stderr. A stopped server and a stopped
daemon also get a transient timer (vigil-chaos-restore-*.timer) that
undoes it should vigilctl itself be killed.

Exit status: 0 every drill recovered (every daemon ready again) within
--drill-timeout and no charge was lost or duplicated; 1 otherwise, or
interrupted; 2 usage or environment error (nothing touched)."""

API_DAEMONS = ("authd", "paymentd", "inventoryd")
SERVERS = {  # drill suffix -> unit
    "postgresql": "postgresql.service",
    "redis": "redis-server.service",
    "rabbitmq": "rabbitmq-server.service",
}
STORM_SETTINGS = ("error_ratio=0.2", "latency_ms=200")
SLO_PERIOD_S = 30 * 86400  # the SLOs' window (etc/prometheus/rules/slo-*.yml)
KEY_TRIES = 8  # tries of one charge (same Idempotency-Key) within a drill
MAX_DURATION_S = 3600.0


def add_arguments(p, paths):
    etc = os.path.join(paths["sysconfdir"], "vigil")
    p.add_argument("--drills", metavar="NAME,…",
                   help="the drills to run, in this order (default: all that apply here)")
    p.add_argument("--hold", type=float, default=20.0, metavar="SECONDS",
                   help="how long a stop, a SIGSTOP or the fault storm lasts (default 20)")
    p.add_argument("--drill-timeout", type=float, default=180.0, metavar="SECONDS",
                   help="each drill's bound: every daemon ready again within it, from the "
                        "fault (default 180)")
    p.add_argument("--max-duration", type=float, default=1800.0, metavar="SECONDS",
                   help="bound on the whole run: no drill starts after it, and the one "
                        "running is cut short at it (its drain excepted) (default 1800)")
    p.add_argument("--drain-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait, after a drill, for its charges to be notified "
                        "(default 60)")
    p.add_argument("--rate", type=float, default=8.0, metavar="PER_SECOND",
                   help="load requests a second (default 8: under the gateway's 10 r/s per "
                        "client; raise it for a relaxed or exempt client)")
    p.add_argument("--requests", type=int, default=2000, metavar="N",
                   help="at most this many load requests per drill (default 2000)")
    p.add_argument("--threads", type=int, default=4, metavar="N",
                   help="load threads (default 4)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="bound on each request (default 5)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (every command, in order) and touch nothing")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--etc", default=env_default("VIGILCTL_ETC", etc), metavar="DIR",
                   help=f"the daemons' configuration (default {etc})")
    p.add_argument("--url", action="append", default=[], metavar="DAEMON=URL",
                   help="where a daemon answers (default: [http] listen of its configuration)")
    p.add_argument("--gateway", default=env_default("VIGILCTL_GATEWAY", "http://127.0.0.1"), metavar="URL")
    p.add_argument("--prometheus", default=env_default("VIGILCTL_PROMETHEUS", "http://127.0.0.1:9090"),
                   metavar="URL")
    p.add_argument("--database", default=os.environ.get("VIGILCTL_DATABASE"), metavar="DSN",
                   help="libpq connection string of the vigil database, for the accounting "
                        "(default: psql as the postgres user, database vigil)")


# --------------------------------------------------------------------------
# validation: nothing is touched before all of it passed

def _positive(name, v, top=MAX_DURATION_S):
    if not (v > 0 and v <= top) or math.isnan(v):
        raise UsageError(f"{name} {v:g}: must be above 0 and at most {top:g}")


def installed_daemons(etc, url_overrides):
    out = {}
    for name, unit, _job, port in DAEMONS:
        conf = os.path.join(etc, f"{name}.conf")
        if not os.path.exists(conf):
            continue
        url = url_overrides.get(name) or os.environ.get(f"VIGILCTL_URL_{name.upper()}")
        if not url:
            url = "http://" + (read_conf(conf).get(("http", "listen")) or f"127.0.0.1:{port}")
        out[name] = (unit + ".service", url.rstrip("/"))
    return out


def all_drills(daemons):
    names = [f"kill-{d}" for d in daemons]
    names += [f"stop-{s}" for s in SERVERS]
    names += [f"hang-{d}" for d in daemons]
    if any(d in daemons for d in API_DAEMONS):
        names.append("fault-storm")
    return names


def parse_drills(text, daemons):
    known = set(all_drills({d[0]: None for d in DAEMONS})) | {"fault-storm"}
    if text is None:
        return all_drills(daemons)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--drills: give at least one drill name")
    seen = set()
    for n in names:
        if n not in known:
            raise UsageError(f"unknown drill {n!r} (one of: {', '.join(sorted(known))})")
        if n in seen:
            raise UsageError(f"drill {n} given twice")
        seen.add(n)
        kind, _, target = n.partition("-")
        if kind in ("kill", "hang") and target not in daemons:
            raise UsageError(f"{n}: vigil-{target} is not installed here "
                             f"(no {target}.conf in the configuration directory)")
        if n == "fault-storm" and not any(d in daemons for d in API_DAEMONS):
            raise UsageError("fault-storm: none of vigil-authd, -paymentd, -inventoryd is installed")
    return names


class Settings:
    def __init__(self, args):
        for name in ("hold", "drill_timeout", "max_duration", "drain_timeout", "timeout"):
            _positive("--" + name.replace("_", "-"), getattr(args, name))
        _positive("--rate", args.rate, 10000)
        if not 1 <= args.requests <= 1000000:
            raise UsageError("--requests: from 1 to 1000000")
        if not 1 <= args.threads <= 64:
            raise UsageError("--threads: from 1 to 64")
        if args.drill_timeout <= args.hold:
            raise UsageError(f"--drill-timeout {args.drill_timeout:g} must be longer than "
                             f"--hold {args.hold:g}")
        if not os.path.isdir(args.etc):
            raise UsageError(f"{args.etc} does not exist: is vigil installed here? (--etc DIR)")
        overrides = {}
        for item in args.url:
            name, sep, url = item.partition("=")
            if not sep or not url.startswith(("http://", "https://")):
                raise UsageError(f"--url {item}: expected DAEMON=http://HOST:PORT")
            if name not in {d[0] for d in DAEMONS}:
                raise UsageError(f"--url {name}=…: unknown daemon")
            overrides[name] = url
        self.daemons = installed_daemons(args.etc, overrides)
        if not self.daemons:
            raise UsageError(f"no daemon configuration in {args.etc} (<daemon>.conf): "
                             "is vigil installed here? (--etc DIR)")
        for opt in ("gateway", "prometheus"):
            v = getattr(args, opt)
            if not v.startswith(("http://", "https://")):
                raise UsageError(f"--{opt} {v}: expected an http:// URL")
        if args.database is not None and ("\n" in args.database or not args.database.strip()):
            raise UsageError("--database: expected a libpq connection string")
        self.drills = parse_drills(args.drills, self.daemons)
        self.args = args
        self.gateway = args.gateway.rstrip("/") + "/api/v1"
        self.prometheus = args.prometheus.rstrip("/")
        if args.database:
            self.psql = ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", args.database]
        else:
            self.psql = ["runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-q",
                         "-v", "ON_ERROR_STOP=1", "-d", "vigil"]


# --------------------------------------------------------------------------
# the drills: what each does, and what undoes it

def _safety(name, seconds, command):
    """A transient timer that undoes a step should vigilctl be killed."""
    return ["systemd-run", f"--on-active={int(math.ceil(seconds))}s",
            f"--unit=vigil-chaos-restore-{name}",
            f"--description=Undo vigilctl chaos {name} should vigilctl be gone",
            "--timer-property=AccuracySec=1s", "--quiet", *command]


def _disarm(name):
    """Steps that take a safety timer away, whether or not it is there (a
    transient unit that is gone is "not loaded": nothing to undo)."""
    u = f"vigil-chaos-restore-{name}"
    return [("try", ["systemctl", "stop", f"{u}.timer", f"{u}.service"]),
            ("try", ["systemctl", "reset-failed", f"{u}.timer", f"{u}.service"])]


def plan(drill, settings):
    """(inject steps, hold seconds, restore steps) of a drill. A step is
    ("run", argv), ("try", argv) (its failure fails nothing) or
    ("fault-set"/"fault-clear", daemon). Restore steps are
    idempotent and run on any exit once inject began."""
    hold = settings.args.hold
    safety_s = settings.args.drill_timeout + 30
    kind, _, target = drill.partition("-")
    if kind == "kill":
        unit = f"vigil-{target}.service"
        return ([("run", ["systemctl", "kill", "--signal=KILL", unit])], 0.0,
                [("run", ["systemctl", "start", unit])])
    if kind == "stop":
        unit = SERVERS[target]
        start = ["systemctl", "start", unit]
        return (_disarm(drill) + [("run", _safety(drill, safety_s, start)), ("run", ["systemctl", "stop", unit])],
                hold,
                [("run", start)] + _disarm(drill))
    if kind == "hang":
        unit = f"vigil-{target}.service"
        cont = ["systemctl", "kill", "--signal=CONT", unit]
        return (_disarm(drill) + [("run", _safety(drill, safety_s, cont)),
                                  ("run", ["systemctl", "kill", "--signal=STOP", unit])],
                hold,
                [("run", cont)] + _disarm(drill))
    # fault-storm
    targets = [d for d in API_DAEMONS if d in settings.daemons]
    return ([("fault-set", d) for d in targets], hold, [("fault-clear", d) for d in targets])


def describe(step, settings):
    """The commands a step runs, as text."""
    what, arg = step
    if what in ("run", "try"):
        return [shlex.join(arg)]
    log = []
    path = faultmod.dropin_path(settings.args.etc, arg)
    if what == "fault-set":
        faultmod.do_set(_fault_args(settings, arg, False, dry_run=True), arg, log)
        cmds = [shlex.join(c) for c in log]
        return cmds[:-1] + [f"write {path} ([faults] {' '.join(STORM_SETTINGS)})"] + cmds[-1:]
    faultmod.disarm(arg, True, log)
    return [f"rm -f {path}", shlex.join(["systemctl", "reload", faultmod.unit(arg)])] + \
        [shlex.join(c) for c in log]


def _fault_args(settings, daemon, clear, dry_run):
    return argparse.Namespace(daemon=daemon, settings=[] if clear else list(STORM_SETTINGS),
                              duration=f"{int(math.ceil(settings.args.hold))}s", clear=clear,
                              list=False, dry_run=dry_run, json=False, etc=settings.args.etc)


class Restorer:
    """The undoing of every step taken: each runs once, on any exit, logged."""

    def __init__(self, settings, out):
        self.settings = settings
        self.out = out  # where the log lines go (stderr)
        self.pending = []  # [(drill, step)]
        self.log = []  # [{"drill", "command", "ok", "detail"}]
        self.lock = threading.Lock()

    def register(self, drill, steps):
        with self.lock:
            self.pending.extend((drill, s) for s in steps)

    def restore(self, why):
        """Undo every registered step, oldest first. A step is forgotten only
        once it ran: interrupted half-way, it runs again (each is idempotent)."""
        while True:
            with self.lock:
                if not self.pending:
                    return
                drill, step = self.pending[0]
            for entry in self._undo(drill, step):
                entry["why"] = why
                self.log.append(entry)
                mark = "ok" if entry["ok"] else f"FAILED: {entry['detail']}"
                print(f"vigilctl chaos: restore ({why}, {drill}): {entry['command']}: {mark}",
                      file=self.out, flush=True)
            with self.lock:
                if self.pending and self.pending[0] == (drill, step):
                    self.pending.pop(0)

    def _undo(self, drill, step):
        what, arg = step
        if what in ("run", "try"):
            r = run_command(arg)
            return [{"drill": drill, "command": shlex.join(arg), "ok": r.returncode == 0 or what == "try",
                     "detail": (r.stderr or r.stdout).strip()[:300]}]
        log = []
        try:
            faultmod.do_clear(_fault_args(self.settings, arg, True, dry_run=False), arg, log)
            ok, detail = True, ""
        except (UsageError, OSError) as e:
            ok, detail = False, str(e)
        cmds = [f"vigilctl fault {arg} --clear"] + [shlex.join(c) for c in log]
        return [{"drill": drill, "command": "; ".join(cmds), "ok": ok, "detail": detail}]


def run_command(cmd, timeout=60):
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]} not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{cmd[0]} timed out")


def do_step(step, settings):
    """Take one inject step; (ok, command text, detail)."""
    what, arg = step
    if what in ("run", "try"):
        r = run_command(arg)
        return r.returncode == 0 or what == "try", shlex.join(arg), (r.stderr or r.stdout).strip()[:300]
    log = []
    try:
        code, doc = faultmod.do_set(_fault_args(settings, arg, False, dry_run=False), arg, log)
    except UsageError as e:
        return False, f"vigilctl fault {arg}", str(e)
    return code == EXIT_OK, f"vigilctl fault {arg} {' '.join(STORM_SETTINGS)}", doc.get("error", "")


# --------------------------------------------------------------------------
# the load: a user, charges with Idempotency-Key, payment and product reads

class Load:
    """Bounded paced requests through the gateway from a few threads."""

    def __init__(self, settings, user, prefix):
        self.s = settings
        self.token, self.user_id = user
        self.prefix = prefix
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sent = 0
        self.failed = 0  # no answer, or a 5xx
        self.limited = 0  # 429: the gateway's rate limit
        self.by_status = {}
        self.samples = []  # (monotonic time sent, op, status or "error")
        self.keys = {}  # key -> {"tries", "payment_ids", "done"}
        self.retry = []  # keys whose outcome is unknown, to try again
        self.payment_ids = set()
        self.n = 0
        self.budget = settings.args.requests

    def _take(self):
        with self.lock:
            if self.sent >= self.budget or self.stop.is_set():
                return None
            self.sent += 1
            i = self.sent
            if self.retry:
                return ("charge", self.retry.pop(0))
            mix = i % 4
            if mix in (0, 2) or (mix == 1 and not self.payment_ids):
                self.n += 1
                key = f"{self.prefix}{self.n}"
                self.keys[key] = {"tries": 0, "payment_ids": set(), "done": False}
                return ("charge", key)
            if mix == 1:
                return ("payment", sorted(self.payment_ids)[i % len(self.payment_ids)])
            return ("products", None)

    def _one(self, op, arg):
        h = {"Authorization": f"Bearer {self.token}"}
        gw, t = self.s.gateway, self.s.args.timeout
        if op == "charge":
            h["Idempotency-Key"] = arg
            with self.lock:
                self.keys[arg]["tries"] += 1
            return http("POST", gw + "/payment/charge", t, body={"amount": 1.25}, headers=h)
        if op == "payment":
            return http("GET", f"{gw}/payment/payment/{arg}", t, headers=h)
        return http("GET", gw + "/inventory/products", t)

    def _record(self, t0, op, arg, status, body):
        with self.lock:
            self.samples.append((t0, op, status))
            self.by_status[str(status)] = self.by_status.get(str(status), 0) + 1
            if status == "error" or (isinstance(status, int) and status >= 500):
                self.failed += 1
            if status == 429:
                self.limited += 1
            if op != "charge":
                return
            k = self.keys[arg]
            if status == 201:
                try:
                    pid = int(json.loads(body)["payment_id"])
                except (ValueError, KeyError, TypeError):
                    pid = None
                if pid is not None:
                    k["payment_ids"].add(pid)
                    self.payment_ids.add(pid)
                k["done"] = True
            elif status in ("error", 409, 429) or (isinstance(status, int) and status >= 500):
                if k["tries"] < KEY_TRIES and not self.stop.is_set():
                    self.retry.append(arg)  # same key: never a second charge
            else:
                k["done"] = True  # 4xx: a definite answer, nothing charged

    def _worker(self, t0, interval):
        while not self.stop.is_set():
            item = self._take()
            if item is None:
                return
            op, arg = item
            started = time.monotonic()
            try:
                r = self._one(op, arg)
                status, body = r.status, r.body
            except OSError:
                status, body = "error", b""
            self._record(started, op, arg, status, body)
            self.stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def start(self):
        self.t0 = time.monotonic()
        interval = self.s.args.threads / self.s.args.rate
        self.threads = [threading.Thread(target=self._worker, args=(self.t0, interval), daemon=True)
                        for _ in range(self.s.args.threads)]
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(self.s.args.timeout + 5)

    def account(self, t_fault):
        """The figures, and every request: [seconds from the fault when it
        was sent, what, its status or "error"]."""
        with self.lock:
            committed = self.payment_ids
            requests = [[round(t - t_fault, 3), op, st] for t, op, st in self.samples]
            return {"sent": self.sent, "failed": self.failed, "rate_limited": self.limited,
                    "by_status": dict(sorted(self.by_status.items())),
                    "charges_attempted": len(self.keys),
                    "charges_committed_201": len(committed),
                    "charges_unresolved": sum(1 for k in self.keys.values() if not k["done"]),
                    "keys_answered_twice": sum(1 for k in self.keys.values()
                                               if len(k["payment_ids"]) > 1),
                    "requests": requests}


def login_user(settings):
    """Register and log in this run's load user: (token, user id)."""
    gw, t = settings.gateway, settings.args.timeout
    creds = {"username": f"vigilctl-chaos-{secrets.token_hex(6)}",
             "password": secrets.token_hex(16)}
    try:
        r = http("POST", gw + "/auth/register", t, body=creds)
        if r.status != 201:
            raise UsageError(f"registering the load user through {settings.args.gateway} answered "
                             f"{r.status}: {r.body.decode('utf-8', 'replace')[:200]}; "
                             "`vigilctl validate` says what is wrong")
        user_id = r.json()["user_id"]
        r = http("POST", gw + "/auth/login", t, body=creds)
        if r.status != 200:
            raise UsageError(f"the load user's login answered {r.status}")
        return r.json()["token"], int(user_id), creds
    except OSError as e:
        raise UsageError(f"the gateway {settings.args.gateway}: {e}; `vigilctl validate` "
                         "says what is wrong") from None
    except (ValueError, KeyError, TypeError):
        raise UsageError("the gateway answered without a user id or token: is it vigil's?") from None


def relogin(settings, user):
    try:
        r = http("POST", settings.gateway + "/auth/login", settings.args.timeout, body=user[2])
        return r.json()["token"] if r.status == 200 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------
# watching: readiness, alerts, the alert bot

def all_ready(settings):
    for _unit, url in settings.daemons.values():
        try:
            if http("GET", url + "/ready", min(2.0, settings.args.timeout)).status != 200:
                return False
        except OSError:
            return False
    return True


def not_ready(settings):
    out = []
    for name, (_unit, url) in settings.daemons.items():
        try:
            r = http("GET", url + "/ready", min(2.0, settings.args.timeout))
            if r.status != 200:
                out.append(f"{name} ({r.status})")
        except OSError as e:
            out.append(f"{name} ({e})")
    return out


def prom(settings, path):
    return prom_api(settings, path, settings.args.timeout)


def _alert_key(a):
    return json.dumps(a.get("labels", {}), sort_keys=True)


def _parse_time(text):
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


class Watcher:
    """Polls Prometheus' alerts and the alert bot once a second during a
    drill: the first alert new since the drill began (pending, firing) and
    the bot's first action or notification."""

    def __init__(self, settings, t0_wall):
        self.s = settings
        self.t0 = t0_wall
        self.stop = threading.Event()
        self.baseline = None
        self.prom_error = None
        self.bot_error = None if "alertbotd" in settings.daemons else "vigil-alertbotd is not installed"
        self.pending = self.firing = self.bot = None  # (seconds, what)

    def _alerts(self):
        try:
            alerts = prom(self.s, "/api/v1/alerts").get("alerts", [])
            self.prom_error = None
            return alerts
        except (OSError, ValueError, KeyError) as e:
            self.prom_error = f"Prometheus at {self.s.prometheus}: {e}"
            return None

    def prime(self):
        alerts = self._alerts()
        self.baseline = {_alert_key(a) for a in alerts} if alerts is not None else set()

    def _earlier(self, starts_at):
        """An alert that started before the drill (an earlier drill's, still
        notified or acted on): not this drill's bot action."""
        started = _parse_time(starts_at or "")
        return started is not None and started < self.t0 - 1.0

    def poll_once(self):
        now = time.time()
        alerts = self._alerts()
        for a in alerts or ():
            if _alert_key(a) in self.baseline:
                continue
            name = a.get("labels", {}).get("alertname", "?")
            active = _parse_time(a.get("activeAt")) or now
            if self.pending is None:
                self.pending = (round(max(0.0, active - self.t0), 1), name)
            if a.get("state") == "firing" and self.firing is None:
                self.firing = (round(now - self.t0, 1), name)
        if "alertbotd" not in self.s.daemons or self.bot is not None:
            return
        url = self.s.daemons["alertbotd"][1]
        try:
            found = []
            incidents = http("GET", url + "/incidents", self.s.args.timeout).json()["incidents"]
            for inc in incidents:
                if self._earlier(inc.get("starts_at")):
                    continue
                for act in inc.get("actions", []):
                    if act.get("at", 0) >= int(self.t0):
                        found.append((act["at"], f"{act.get('decision')} {act.get('action', '')} "
                                                 f"{act.get('unit', '')} ({inc.get('alertname')})"))
            notes = http("GET", url + "/notifications", self.s.args.timeout).json()["notifications"]
            for n in notes:
                if self._earlier(n.get("starts_at")):
                    continue
                if n.get("received_at", 0) >= int(self.t0) and n.get("status") == "firing":
                    found.append((n["received_at"], f"notified {n.get('receiver')}: "
                                                    f"{n.get('alertname')}"))
            self.bot_error = None
            if found:
                at, what = min(found)
                self.bot = (round(max(0.0, at - self.t0), 1), what.strip())
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.bot_error = f"the alert bot at {url}: {e}"

    def run(self):
        while not self.stop.wait(1.0):
            self.poll_once()

    def start(self):
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def finish(self):
        self.stop.set()
        self.thread.join(2 * self.s.args.timeout + 5)
        self.poll_once()


def budget_spent(settings, t_start, t_end):
    """{slo: {"error_ratio", "burn_rate", "budget_spent_percent"}} over the
    drill: the 5-minute error ratio averaged over the window against the
    objective, as a share of the 30-day budget; or (None, why)."""
    window = max(1, int(math.ceil(t_end - t_start)))
    # `>= 0` drops the NaN of a window without traffic (0/0) from the mean.
    q = f"avg_over_time((slo:sli_error:ratio_rate5m >= 0)[{window}s:5s])"
    try:
        ratios = prom(settings, "/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": t_end}))
        objectives = prom(settings, "/api/v1/query?" + urllib.parse.urlencode(
            {"query": "slo:objective:ratio", "time": t_end}))
    except (OSError, ValueError, KeyError) as e:
        return None, f"Prometheus at {settings.prometheus}: {e}"
    obj = {o["metric"].get("slo"): float(o["value"][1]) for o in objectives.get("result", [])}
    out, missing = {}, []
    for r in ratios.get("result", []):
        slo = r["metric"].get("slo")
        if slo not in obj or obj[slo] >= 1:
            missing.append(str(slo))
            continue
        ratio = float(r["value"][1])
        if math.isnan(ratio):
            missing.append(f"{slo} (no traffic)")
            continue
        burn = ratio / (1 - obj[slo])
        out[slo] = {"error_ratio": round(ratio, 6), "objective": obj[slo], "burn_rate": round(burn, 3),
                    "budget_spent_percent": round(100 * burn * window / SLO_PERIOD_S, 4)}
    if not out:
        return None, ("Prometheus has no SLO series (slo:sli_error:ratio_rate5m with its "
                      "slo:objective:ratio)" + (f"; none for {', '.join(missing)}"
                                                if missing else ""))
    return out, None


# --------------------------------------------------------------------------
# the accounting in PostgreSQL

def sql(settings, query):
    r = run_command(settings.psql + ["-c", query], timeout=settings.args.timeout * 6)
    if r.returncode != 0:
        raise OSError(f"{shlex.join(settings.psql[:5])} …: {(r.stderr or r.stdout).strip()[:200]}")
    return r.stdout.strip()


def accounting(settings, user_id, prefix):
    """(committed, notified, lost, duplicated) of the drill's charges as the
    database holds them."""
    mine = (f"p.user_id = {int(user_id)} AND p.idempotency_key LIKE "
            f"'{prefix.replace(chr(39), '')}%'")
    out = sql(settings, f"""
        SELECT
          (SELECT count(*) FROM payment.payments p WHERE {mine}),
          (SELECT count(DISTINCT n.payment_id) FROM notify.notifications n
             JOIN payment.payments p ON p.id = n.payment_id WHERE {mine}),
          (SELECT count(*) FROM payment.payments p WHERE {mine} AND NOT EXISTS
             (SELECT 1 FROM notify.notifications n WHERE n.payment_id = p.id)),
          (SELECT count(*) FROM (SELECT n.payment_id FROM notify.notifications n
             JOIN payment.payments p ON p.id = n.payment_id WHERE {mine}
             GROUP BY n.payment_id HAVING count(*) > 1) d)
          + (SELECT count(*) FROM (SELECT p.idempotency_key FROM payment.payments p
             WHERE {mine} GROUP BY p.idempotency_key HAVING count(*) > 1) k)""")
    parts = out.replace("|", " ").split()
    if len(parts) != 4:
        raise OSError(f"unexpected answer from psql: {out[:200]!r}")
    return tuple(int(x) for x in parts)


# --------------------------------------------------------------------------
# a drill

class Interrupted(Exception):
    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def watch_readiness(settings, end, interval=0.5):
    """Poll readiness until end (the hold): the moment every daemon is ready
    again after one was not (a hung daemon restarted by its watchdog, a
    killed one by systemd), or None when that did not happen."""
    seen_down = False
    while time.monotonic() < end:
        if not all_ready(settings):
            seen_down = True
        elif seen_down:
            at = time.monotonic()
            time.sleep(max(0.0, end - time.monotonic()))
            return at
        time.sleep(interval)
    return None


def wait_until(pred, deadline, interval=0.5):
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def run_drill(drill, settings, restorer, user, run_id, run_deadline):
    a = settings.args
    inject, hold, restore = plan(drill, settings)
    rep = {"drill": drill, "timeline": [], "recovered": False, "unknown": {}}
    events = []  # (monotonic time, what): the timeline, from the fault once known
    ready_at = None  # when every daemon was ready again within the hold

    def mark(what):
        events.append((time.monotonic(), what))

    if not all_ready(settings):
        rep["error"] = f"not every daemon was ready before the drill: {', '.join(not_ready(settings))}"
        return rep
    prefix = f"vigilctl-chaos-{run_id}-{drill}-"
    rep["key_prefix"] = prefix
    token = relogin(settings, user)  # a fresh token each drill: a run outlasts one
    if token is None:
        rep["error"] = "the load user could not log in before the drill"
        return rep
    load = Load(settings, (token, user[1]), prefix)
    watcher = Watcher(settings, time.time())
    watcher.prime()
    load.start()
    # The fault is the last step (kill, stop, SIGSTOP), or the first of
    # the storm's faults; what comes before it prepares its undoing.
    fault_at = 0 if drill == "fault-storm" else len(inject) - 1
    t0 = time.monotonic()
    deadline = min(t0 + a.drill_timeout, run_deadline)
    watcher.start()
    try:
        restorer.register(drill, restore)  # before the fault: any exit undoes it
        for i, step in enumerate(inject):
            if i == fault_at:
                t0, watcher.t0 = time.monotonic(), time.time()
                rep["started_at"] = datetime.datetime.fromtimestamp(
                    watcher.t0, datetime.timezone.utc).isoformat()
                deadline = min(t0 + a.drill_timeout, run_deadline)
            ok, cmd, detail = do_step(step, settings)
            mark(f"{cmd}{'' if ok else ' FAILED: ' + detail}")
            if not ok:
                rep["error"] = f"{cmd}: {detail or 'failed'}"
                break
        else:
            mark("fault injected")
            if hold:
                ready_at = watch_readiness(settings, min(t0 + hold, deadline))
                if ready_at is not None:
                    events.append((ready_at, "every daemon ready again (within the hold)"))
        if hold or "error" in rep:
            # What was stopped is started, what was hung continued, faults
            # cleared; a killed daemon is systemd's to restart (its restore,
            # a no-op start, runs after the wait).
            restorer.restore("drill over")
            mark("restored")
        if wait_until(lambda: all_ready(settings), deadline):
            rep["recovered"] = True
            rep["ready_again_s"] = round((ready_at or time.monotonic()) - t0, 1)
            if ready_at is None:
                mark("every daemon ready again")
        else:
            rep["not_ready"] = not_ready(settings)
            mark(f"not ready within {a.drill_timeout:g} s: {', '.join(rep['not_ready'])}")
        restorer.restore("drill over")
        # The load runs on a moment after recovery, within the drill's bound.
        settle_end = min(time.monotonic() + 3.0, deadline)
        while time.monotonic() < settle_end and not load.stop.is_set():
            time.sleep(0.2)
    finally:
        load.finish()
        watcher.finish()
        rep["timeline"] = [{"at_s": round(t - t0, 1), "event": what} for t, what in events]
    t_end_wall = time.time()
    rep["duration_s"] = round(time.monotonic() - t0, 1)
    for name, v, why in (("alert_pending", watcher.pending, watcher.prom_error),
                         ("alert_firing", watcher.firing, watcher.prom_error),
                         ("bot_action", watcher.bot, watcher.bot_error)):
        if v is not None:
            rep[name + "_s"], rep[name] = v
        elif why:
            rep[name + "_s"] = None
            rep["unknown"][name] = why
        else:  # asked, and there was none
            rep[name + "_s"] = None
            rep.setdefault("none_seen", []).append(name)
    rep["load"] = load.account(t0)
    # Drain: every committed charge of the drill notified, bounded.
    acct, why = None, None
    drain_end = time.monotonic() + a.drain_timeout

    def drained():
        nonlocal acct, why
        try:
            acct = accounting(settings, user[1], prefix)
            why = None
        except OSError as e:
            why = str(e)
            return False
        return acct[2] == 0
    wait_until(drained, drain_end, interval=1.0)
    if acct is None:
        rep["unknown"]["charges"] = f"the database: {why}"
        rep["charges"] = None
    else:
        committed, notified, lost, duplicated = acct
        # A 201 the client got for a payment the database does not hold is
        # lost too (its row never committed, or went away).
        lost += max(0, rep["load"]["charges_committed_201"] - committed)
        rep["charges"] = {"committed": committed, "notified": notified, "lost": lost,
                          "duplicated": duplicated + rep["load"]["keys_answered_twice"],
                          "committed_201": rep["load"]["charges_committed_201"]}
    budget, why = budget_spent(settings, watcher.t0, t_end_wall)
    rep["error_budget"] = budget
    if budget is None:
        rep["unknown"]["error_budget"] = why
    return rep


def drill_ok(rep):
    c = rep.get("charges")
    return (rep.get("recovered") and "error" not in rep and c is not None
            and c["lost"] == 0 and c["duplicated"] == 0)


# --------------------------------------------------------------------------
# the report

def _s(v):
    return "unknown" if v is None else f"{v:g} s"


def _seen(rep, name):
    """A watched event's cell: its time and what it was, none, or unknown."""
    if rep.get(name + "_s") is not None:
        return f"{rep[name + '_s']:g} s ({rep[name]})"
    return "none within the drill" if name in rep.get("none_seen", ()) else "unknown"


def markdown(doc):
    lines = [f"# GameDay report ({doc['started_at']})", ""]
    for rep in doc["drills"]:
        lines += [f"## {rep['drill']}: {'recovered' if drill_ok(rep) else 'FAILED'}", ""]
        if "error" in rep:
            lines += [f"Error: {rep['error']}", ""]
        c = rep.get("charges")
        ld = rep.get("load") or {}
        rows = [
            ("fault injected", "0 s"),
            ("alert pending", _seen(rep, "alert_pending")),
            ("alert firing", _seen(rep, "alert_firing")),
            ("bot action", _seen(rep, "bot_action")),
            ("every daemon ready again", _s(rep.get("ready_again_s"))),
            ("requests sent / failed", f"{ld.get('sent', 0)} / {ld.get('failed', 0)}"
                                       f" ({ld.get('rate_limited', 0)} rate-limited)"),
            ("charges committed / notified", "unknown" if c is None else f"{c['committed']} / {c['notified']}"
                                             f" ({c['committed_201']} answered 201)"),
            ("charges lost / duplicated", "unknown" if c is None else f"{c['lost']} / {c['duplicated']}"),
        ]
        eb = rep.get("error_budget")
        if eb:
            for slo, v in sorted(eb.items()):
                rows.append((f"error budget {slo}", f"{v['budget_spent_percent']:g} % of 30 d "
                                                     f"(burn rate {v['burn_rate']:g})"))
        else:
            rows.append(("error budget spent", "unknown"))
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
        if rep["timeline"]:
            lines += ["Timeline:", ""] + [f"- {e['at_s']:+g} s {e['event']}" for e in rep["timeline"]] + [""]
        for k, why in rep.get("unknown", {}).items():
            lines.append(f"- unknown {k}: {why}")
        if rep.get("unknown"):
            lines.append("")
    lines += ["## Summary", "", "| drill | recovered | ready again | sent / failed | committed / notified / lost / duplicated |",
              "|---|---|---|---|---|"]
    for rep in doc["drills"]:
        c = rep.get("charges")
        ld = rep.get("load") or {}
        acct = "unknown" if c is None else f"{c['committed']} / {c['notified']} / {c['lost']} / {c['duplicated']}"
        lines.append(f"| {rep['drill']} | {'yes' if drill_ok(rep) else 'NO'} | {_s(rep.get('ready_again_s'))} | "
                     f"{ld.get('sent', 0)} / {ld.get('failed', 0)} | {acct} |")
    for name in doc.get("skipped", []):
        lines.append(f"| {name} | NO (not run: {doc.get('stopped') or 'the run deadline'}) | | | |")
    if doc.get("stopped"):
        lines += ["", f"Stopped: {doc['stopped']}."]
    lines += ["", f"{'All drills recovered' if doc['ok'] else 'NOT all drills recovered'}; "
                  f"{len(doc['restored'])} restoration steps run."]
    return "\n".join(lines) + "\n"


def print_plan(settings, out):
    a = settings.args
    out.write(f"Plan: {len(settings.drills)} drills; each under a load of at most {a.requests} "
              f"requests at {a.rate:g}/s through {settings.gateway} (a user registered once),\n"
              f"bounded by --drill-timeout {a.drill_timeout:g} s; the run by --max-duration "
              f"{a.max_duration:g} s.\n")
    for i, drill in enumerate(settings.drills, 1):
        inject, hold, restore = plan(drill, settings)
        out.write(f"{i}. {drill}\n")
        for step in inject:
            for c in describe(step, settings):
                out.write(f"   would run: {c}\n")
        if hold:
            out.write(f"   hold {hold:g} s\n")
        for step in restore:
            for c in describe(step, settings):
                out.write(f"   would run: {c}   (restore; also on any exit)\n")
        out.write(f"   wait until every daemon's /ready answers 200 "
                  f"({', '.join(settings.daemons)}); then account: {shlex.join(settings.psql)}\n")


def run(args, paths):
    del paths
    settings = Settings(args)
    if args.dry_run:
        if args.json:
            doc = {"command": "chaos", "dry_run": True, "drills": []}
            for drill in settings.drills:
                inject, hold, restore = plan(drill, settings)
                doc["drills"].append({
                    "drill": drill, "hold_s": hold,
                    "inject": [c for s in inject for c in describe(s, settings)],
                    "restore": [c for s in restore for c in describe(s, settings)]})
            print(json.dumps(doc, indent=2))
        else:
            print_plan(settings, sys.stdout)
        return EXIT_OK
    for tool in ("systemctl", "systemd-run", settings.psql[0]):
        if shutil.which(tool) is None:
            raise UsageError(f"{tool} not found: vigilctl chaos needs systemd and psql")
    try:
        sql(settings, "SELECT 1")
    except OSError as e:
        raise UsageError(f"the database, for the accounting: {e} (--database DSN)") from None
    user = login_user(settings)

    restorer = Restorer(settings, sys.stderr)
    run_id = secrets.token_hex(4)
    started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    doc = {"command": "chaos", "started_at": started, "run_id": run_id, "user_id": user[1],
           "drills": [], "skipped": [], "stopped": None}

    def on_signal(signum, _frame):
        raise Interrupted(signum)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    run_deadline = time.monotonic() + args.max_duration
    interrupted = None
    try:
        for i, drill in enumerate(settings.drills):
            if time.monotonic() + 5 >= run_deadline:
                doc["skipped"] = settings.drills[i:]
                doc["stopped"] = f"--max-duration {args.max_duration:g} s reached"
                break
            print(f"vigilctl chaos: drill {drill}", file=sys.stderr, flush=True)
            doc["drills"].append(run_drill(drill, settings, restorer, user, run_id, run_deadline))
    except Interrupted as e:
        interrupted = e
        doc["stopped"] = f"interrupted by {e}"
        done = {r["drill"] for r in doc["drills"]}
        doc["skipped"] = [d for d in settings.drills if d not in done]
        doc["interrupted_drill"] = doc["skipped"][0] if doc["skipped"] else None
    finally:
        # Further signals wait: the restoration must finish.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        restorer.restore(doc["stopped"] or "exit")
        for s, h in old.items():
            signal.signal(s, h)
    doc["restored"] = restorer.log
    doc["ok"] = (interrupted is None and not doc["skipped"]
                 and all(drill_ok(r) for r in doc["drills"]))
    if interrupted is not None:
        print(f"vigilctl chaos: {doc['stopped']}; everything restored", file=sys.stderr)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(markdown(doc))
    return EXIT_OK if doc["ok"] else EXIT_FAILED
