"""vigilctl load: user flows through the gateway with Locust, for a bounded time.

Locust (Debian's python3-locust) runs as a subprocess of the same Python,
headless (or with its web UI on request), with the locustfile shipped with
vigilctl (load/locustfile.py next to this package: installed in
/usr/share/vigilctl/load/, in the source tree in src/vigilctl/modules/load/).
The locustfile writes its statistics per step and the flow's outcomes to a
JSON report when Locust quits; this command prints them as a table (or
--json) and gives the verdict. It only imports the standard library: Locust
and gevent stay in their own process.
"""

import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

from vigilctl.cli import EXIT_FAILED, EXIT_OK, UsageError, env_default, parse_span

SUMMARY = "run user flows through the gateway with Locust for a bounded time"
DESCRIPTION = """\
Simulated users go through the gateway as customers do: register, log in,
browse the products, look at one, reserve it, pay for it (POST /charge with
an Idempotency-Key and the reservation) and read the payment back. Tasks are
weighted (browse 5, look 3, buy 2, log in again 1) with a think time between
two. The run is bounded in users and time; at its end the requests, the
requests per second, the p50/p95/p99 latency and the failures of each step
are printed:

  vigilctl load --users 20 --duration 5m
  vigilctl load --users 5 --duration 30s --json
  vigilctl load --web --duration 15m      # Locust's UI on 127.0.0.1:8089

The gateway limits each client address to 10 requests/s: a load from one
address measures the limiter, not the platform. vigilctl says so when the
gateway answered 429, and names the file that exempts the load source
(/etc/nginx/vigil/rate-limit.d/, see vigilctl(8)).

It creates what customers create: users named vigil-load-RUN-N, sessions,
reservations and payments (and takes stock). Run it against a test
installation."""
EPILOG = """\
DURATION is a time span: 90, 90s, 5m, 1h30m (at most 1h). --think-time is
MIN:MAX seconds (e.g. 0.5:1.5; 0:0 for none). --host defaults to
$VIGILCTL_GATEWAY, --locustfile to $VIGILCTL_LOCUSTFILE.

Exit status: 0 the run completed with a failure ratio at most
--max-failure-ratio and no answer from the rate limiter, 1 otherwise (or no
request made, or it did not end in its bound), 2 usage or environment error
(Locust not installed, nothing answering at --host; nothing was started),
130 interrupted (Ctrl-C, SIGTERM, SIGHUP: Locust is stopped and the figures
so far are printed)."""

MAX_DURATION_S = 3600
MAX_USERS = 1000
MAX_SPAWN_RATE = 1000.0
MAX_LINGER_S = 3600
STOP_TIMEOUT_S = 30        # users finish the task they are in (Locust --stop-timeout)
STARTUP_ALLOWANCE_S = 60   # Locust's start before the run begins
EXIT_INTERRUPTED = 130   # as the front door's own Ctrl-C
STEPS = ("register", "login", "products", "product", "reserve", "charge", "payment")
PACKAGE = "python3-locust"
ALLOWLIST_DIR = "/etc/nginx/vigil/rate-limit.d"

def add_arguments(p, paths):
    del paths
    p.add_argument("--host", "--gateway", dest="host",
                   default=env_default("VIGILCTL_GATEWAY", "http://127.0.0.1"), metavar="URL",
                   help="the gateway (default %(default)s)")
    p.add_argument("--users", default="10", metavar="N",
                   help=f"simulated users at the peak, 1..{MAX_USERS} (default %(default)s)")
    p.add_argument("--spawn-rate", default="10", metavar="R",
                   help="users started per second (default %(default)s)")
    p.add_argument("--duration", default="1m", metavar="DURATION",
                   help="how long the load runs, at most 1h (default %(default)s)")
    p.add_argument("--think-time", default="0.5:1.5", metavar="MIN:MAX",
                   help="seconds a user waits between two tasks (default %(default)s)")
    p.add_argument("--seed", metavar="TEXT",
                   help="seed of the random choices (products, tasks, think times)")
    p.add_argument("--products", metavar="ID,...",
                   help="the product ids to look at and buy (default: the catalogue's)")
    p.add_argument("--max-failure-ratio", default="0.01", metavar="RATIO",
                   help="failures allowed, 0..1, of all requests (default %(default)s)")
    p.add_argument("--timeout", default="30", metavar="SECONDS",
                   help="seconds one request may take (default %(default)s)")
    p.add_argument("--web", action="store_true",
                   help="also serve Locust's web UI while the load runs")
    p.add_argument("--web-host", default="127.0.0.1", metavar="ADDRESS",
                   help="the address the web UI listens on (default %(default)s)")
    p.add_argument("--web-port", default="8089", metavar="PORT",
                   help="its port (default %(default)s)")
    p.add_argument("--web-linger", default="5m", metavar="DURATION",
                   help="how long the web UI stays up after the run, at most 1h "
                        "(default %(default)s)")
    p.add_argument("--locustfile", default=env_default("VIGILCTL_LOCUSTFILE", None), metavar="PATH",
                   help="another locustfile (default: the one shipped with vigilctl)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


# --------------------------------------------------------------------------
# validation: nothing starts before all of it passed

def parse_load_span(text, option, max_s, allow_zero=False):
    return parse_span(text, option, max_s, allow_zero, " (a load is always bounded)")


def _number(option, text, lo, hi, integer=False):
    try:
        v = int(text, 10) if integer else float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {text!r}: expected {'an integer' if integer else 'a number'}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise UsageError(f"{option} {text}: must be between {lo} and {hi}")
    return v


def _host(text):
    u = urllib.parse.urlsplit(text or "")
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"--host {text!r}: expected the gateway's URL, http://HOST[:PORT]")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise UsageError(f"--host {text!r}: give the gateway without a path (http://HOST[:PORT]); "
                         "the flows add /api/v1/…")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"--host {text!r}: bad port") from None
    return f"{u.scheme}://{u.netloc}", u.scheme, u.hostname, port


def _think_time(text):
    lo, sep, hi = (text or "").partition(":")
    try:
        lo, hi = float(lo), float(hi if sep else lo)
    except ValueError:
        raise UsageError(f"--think-time {text!r}: expected MIN:MAX seconds, e.g. 0.5:1.5") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi <= 60):
        raise UsageError(f"--think-time {text!r}: expected 0 <= MIN <= MAX <= 60 seconds")
    return lo, hi


def _products(text):
    if text is None:
        return []
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"[1-9][0-9]{0,17}", part):
            raise UsageError(f"--products {text!r}: expected product ids, e.g. 1,2,5")
        ids.append(int(part))
    if len(ids) > 1000:
        raise UsageError("--products: at most 1000 ids")
    return sorted(set(ids))


class Options:
    """The arguments, checked."""

    def __init__(self, args):
        self.host, self.scheme, self.hostname, self.port = _host(args.host)
        self.users = _number("--users", args.users, 1, MAX_USERS, integer=True)
        self.spawn_rate = _number("--spawn-rate", args.spawn_rate, 0.01, MAX_SPAWN_RATE)
        self.duration = parse_load_span(args.duration, "--duration", MAX_DURATION_S)
        self.think = _think_time(args.think_time)
        self.seed = args.seed
        if self.seed is not None and (not self.seed or len(self.seed) > 200 or not self.seed.isprintable()):
            raise UsageError("--seed: 1 to 200 printable characters")
        self.products = _products(args.products)
        self.max_failure_ratio = _number("--max-failure-ratio", args.max_failure_ratio, 0.0, 1.0)
        self.timeout = _number("--timeout", args.timeout, 0.1, 600)
        self.web = args.web
        self.web_host = args.web_host
        self.web_port = _number("--web-port", args.web_port, 1, 65535, integer=True)
        self.web_linger = parse_load_span(args.web_linger, "--web-linger", MAX_LINGER_S, allow_zero=True)
        self.json = args.json
        self.locustfile = args.locustfile

    def bound(self):
        """Seconds after which the run is stopped whatever Locust does."""
        return (STARTUP_ALLOWANCE_S + self.duration + STOP_TIMEOUT_S + 30
                + (self.web_linger if self.web else 0))


# --------------------------------------------------------------------------
# the environment: checked before anything starts

def shipped_locustfile():
    """load/locustfile.py beside the vigilctl package: the installed
    /usr/share/vigilctl/load/locustfile.py, or the source tree's."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(here), "load", "locustfile.py")


def find_locustfile(opt):
    path = opt.locustfile or shipped_locustfile()
    if not os.path.isfile(path):
        how = "--locustfile" if opt.locustfile else "the vigilctl package"
        raise UsageError(f"the locustfile {path} does not exist (from {how}): "
                         "is vigilctl installed completely?")
    return os.path.abspath(path)


def check_locust():
    """Locust runs in this Python, or UsageError naming the package."""
    try:
        r = subprocess.run([sys.executable, "-m", "locust", "--version"], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
                           env=_locustenv_default({}, None))
    except subprocess.TimeoutExpired:
        raise UsageError(f"{sys.executable} -m locust --version did not answer in 120 s") from None
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        raise UsageError(f"Locust is not installed for {sys.executable}: install the {PACKAGE} "
                         f"package (apt-get install {PACKAGE}, dnf install {PACKAGE})"
                         + (f" ({why[-1]})" if why else ""))


def check_web_port(opt):
    try:
        infos = socket.getaddrinfo(opt.web_host, opt.web_port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"--web-host {opt.web_host!r}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as e:
            raise UsageError(f"the web UI cannot listen on {opt.web_host}:{opt.web_port}: "
                             f"{e.strerror} (--web-port)") from None


def check_gateway(opt):
    """The gateway answers its /health, or UsageError."""
    cls = http.client.HTTPSConnection if opt.scheme == "https" else http.client.HTTPConnection
    conn = cls(opt.hostname, opt.port, timeout=10)
    try:
        conn.request("GET", "/health", headers={"User-Agent": "vigilctl-load"})
        r = conn.getresponse()
        r.read()
    except (OSError, http.client.HTTPException) as e:
        raise UsageError(f"nothing answers at {opt.host} ({e}): is the gateway (nginx with the "
                         "vigil-gateway site) running? --host names another; nothing was started") from None
    finally:
        conn.close()
    if r.status != 200:
        raise UsageError(f"{opt.host}/health answered {r.status}, not 200: is it vigil's gateway? "
                         "nothing was started")


def source_address(opt):
    """The address this host sends from to the gateway (what nginx sees as
    $remote_addr unless a proxy or NAT is in between)."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(opt.hostname, opt.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return s.getsockname()[0]
    except OSError:
        return None


# --------------------------------------------------------------------------
# running Locust

def _locustenv_default(extra, home):
    # Locust reads LOCUST_* variables and ~/.locust.conf: neither may change
    # what vigilctl asked for.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "VIGIL_LOAD_"))}
    if home:
        env["HOME"] = home
    env.update(extra)
    return env


def locust_command(opt, locustfile, tmp):
    cmd = [sys.executable, "-m", "locust", "-f", locustfile, "--host", opt.host,
           "--users", str(opt.users), "--spawn-rate", f"{opt.spawn_rate:g}",
           "--run-time", f"{opt.duration}s", "--stop-timeout", str(STOP_TIMEOUT_S),
           "--only-summary", "--loglevel", "INFO", "--logfile", os.path.join(tmp, "locust.log"),
           "--exit-code-on-error", "0"]
    if opt.web:
        cmd += ["--autostart", "--autoquit", str(opt.web_linger),
                "--web-host", opt.web_host, "--web-port", str(opt.web_port)]
    else:
        cmd += ["--headless"]
    return cmd


def _interrupt(signum, frame):
    del signum, frame
    raise KeyboardInterrupt


def _stop(proc, how=signal.SIGTERM, wait=15):
    if proc.poll() is None:
        proc.send_signal(how)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_locust(opt, locustfile, tmp):
    """Run Locust to its end (or its bound); returns (report dict or None,
    exit status, seconds, timed out)."""
    report_path = os.path.join(tmp, "report.json")
    env = _locustenv_default({
        "VIGIL_LOAD_REPORT": report_path,
        "VIGIL_LOAD_THINK_TIME": f"{opt.think[0]:g}:{opt.think[1]:g}",
        "VIGIL_LOAD_PRODUCTS": ",".join(str(i) for i in opt.products),
        "VIGIL_LOAD_TIMEOUT": f"{opt.timeout:g}",
        **({"VIGIL_LOAD_SEED": opt.seed} if opt.seed is not None else {}),
    }, tmp)
    out = open(os.path.join(tmp, "locust.out"), "wb")  # noqa: SIM115 - closed below
    t0 = time.monotonic()
    ended = None  # why the run ended early: "bound" or "interrupted"
    try:
        # Its own session: a Ctrl-C reaches vigilctl only, which stops
        # Locust (SIGTERM: it still writes its report) and prints what was
        # measured.
        proc = subprocess.Popen(locust_command(opt, locustfile, tmp), cwd=tmp, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
        # SIGTERM and SIGHUP (a stopped unit, a closed terminal) as Ctrl-C:
        # Locust, in a session of its own, would not get them.
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            proc.wait(opt.bound())
        except subprocess.TimeoutExpired:
            ended = "bound"
            _stop(proc)
        except KeyboardInterrupt:
            ended = "interrupted"
            _stop(proc)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        out.close()
    seconds = time.monotonic() - t0
    report = None
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    return report, proc.returncode, seconds, ended


def _log_tail(tmp, n=15):
    lines = []
    for name in ("locust.out", "locust.log"):
        try:
            with open(os.path.join(tmp, name), encoding="utf-8", errors="replace") as f:
                lines += f.read().splitlines()
        except OSError:
            pass
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------
# the verdict

def rate_limit_advice(opt, count, total):
    src = source_address(opt) or "ADDRESS"
    share = 100.0 * count / total if total else 0.0
    return (f"{count} of {total} requests ({share:.1f} %) were answered 429 rate_limited by the "
            "gateway's rate limiter, not by the platform: these figures measure the limiter "
            "(10 requests/s per client address by default). To measure the platform, allowlist "
            f"the load source ({src} as the gateway sees it) in {ALLOWLIST_DIR}/:\n"
            f"    echo '{src} exempt;' > {ALLOWLIST_DIR}/50-load-test.conf\n"
            "    nginx -t && systemctl reload nginx\n"
            "and remove the file after the test (vigilctl(8), section load).")


def build_document(opt, locustfile, report, status, seconds, ended, tmp):
    doc = {
        "command": "load", "host": opt.host, "users": opt.users, "spawn_rate": opt.spawn_rate,
        "duration_seconds": opt.duration, "think_time_seconds": list(opt.think), "seed": opt.seed,
        "products": opt.products or None, "locustfile": locustfile,
        "web": web_url(opt) if opt.web else None,
        "elapsed_seconds": round(seconds, 2), "bound_seconds": opt.bound(),
        "timed_out": ended == "bound", "interrupted": ended == "interrupted",
        "locust_exit_status": status,
        "max_failure_ratio": opt.max_failure_ratio,
    }
    reasons = []
    if ended == "interrupted":
        reasons.append("interrupted: the figures are those of the run so far")
    if report is None:
        doc.update(completed=False, steps=[], total=None, errors=[], outcomes=None,
                   failure_ratio=None, rate_limited=None)
        reasons.append(f"Locust ended without a report (exit status {status}"
                       f"{', stopped at its bound' if ended == 'bound' else ''}); its last lines:\n"
                       + _log_tail(tmp))
        doc.update(ok=False, reasons=reasons)
        return doc

    by_name = {s["step"]: s for s in report["steps"]}
    steps = []
    for name in STEPS + tuple(sorted(n for n in by_name if n not in STEPS)):
        s = by_name.get(name) or {"step": name, "method": None, "requests": 0, "failures": 0,
                                  "rps": 0.0, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                                  "avg_ms": None, "max_ms": None}
        steps.append(s)
    total = report["total"]
    ratio = total["failures"] / total["requests"] if total["requests"] else None
    limited = report["outcomes"]["rate_limited"]
    doc.update(completed=ended is None, run_seconds=round(report["run_seconds"], 2), steps=steps,
               total=total, errors=report["errors"], outcomes=report["outcomes"],
               failure_ratio=ratio, locust_cpu_warning=report["locust_cpu_warning"],
               exceptions=report["exceptions"])
    doc["rate_limited"] = None
    if limited:
        advice = rate_limit_advice(opt, limited, total["requests"])
        doc["rate_limited"] = {"count": limited, "source": source_address(opt),
                               "allowlist": ALLOWLIST_DIR, "message": advice}
        reasons.append(advice)
    if ended == "bound":
        reasons.append(f"the run did not end within its bound of {opt.bound()} s and was stopped")
    if not total["requests"]:
        reasons.append("no request was made: " + (_log_tail(tmp) or "see Locust's log"))
    elif ratio > opt.max_failure_ratio:
        reasons.append(f"{total['failures']} of {total['requests']} requests failed "
                       f"({100 * ratio:.2f} %, more than --max-failure-ratio "
                       f"{100 * opt.max_failure_ratio:.2f} %)")
    if report["exceptions"]:
        reasons.append("the locustfile raised: " + "; ".join(
            f"{x['count']} × {x['msg']}" for x in report["exceptions"][:3]))
    doc.update(ok=not reasons, reasons=reasons)
    return doc


def web_url(opt):
    host = f"[{opt.web_host}]" if ":" in opt.web_host else opt.web_host
    return f"http://{host}:{opt.web_port}/"


def _ms(v):
    return "-" if v is None else f"{v:.0f}"


def print_text(doc, stream):
    w = stream.write
    think = doc["think_time_seconds"]
    w(f"{doc['users']} users (spawned {doc['spawn_rate']:g}/s) for {doc['duration_seconds']} s "
      f"against {doc['host']}, think time {think[0]:g}–{think[1]:g} s\n")
    if doc["total"] is not None:
        rows = [("STEP", "REQUESTS", "FAILURES", "REQ/S", "P50 ms", "P95 ms", "P99 ms")]
        for s in doc["steps"] + [dict(doc["total"], step="total")]:
            rows.append((s["step"], str(s["requests"]), str(s["failures"]), f"{s['rps']:.2f}",
                         _ms(s["p50_ms"]), _ms(s["p95_ms"]), _ms(s["p99_ms"])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            w(f"{r[0]:<{widths[0]}}" + "".join(f"  {c:>{widths[i + 1]}}" for i, c in enumerate(r[1:]))
              + "\n")
        o = doc["outcomes"]
        w(f"charges: {o['charges_paid']} paid, {o['charges_declined']} declined, "
          f"{o['charges_replayed']} replayed ({o['charges_retried']} sent again with their key); "
          f"reservations out of stock: {o['out_of_stock']}\n")
        if doc["errors"]:
            w("failures:\n")
            for e in doc["errors"][:20]:
                w(f"  {e['step']:<9} {e['count']:>7} × {e['error']}\n")
        ratio = doc["failure_ratio"]
        w(f"failure ratio {'-' if ratio is None else f'{100 * ratio:.2f} %'} "
          f"(at most {100 * doc['max_failure_ratio']:.2f} %), run {doc.get('run_seconds', 0):.1f} s, "
          f"elapsed {doc['elapsed_seconds']:.1f} s\n")
        if doc.get("locust_cpu_warning"):
            w("note: Locust used over 90 % of a CPU: the load generator, not the platform, may "
              "have limited the rate\n")
    w("PASS\n" if doc["ok"] else "FAIL\n")


def run(args, paths):
    del paths
    opt = Options(args)
    locustfile = find_locustfile(opt)
    check_locust()
    if opt.web:
        check_web_port(opt)
    check_gateway(opt)

    tmp = tempfile.mkdtemp(prefix="vigilctl-load-")
    try:
        print(f"vigilctl load: {opt.users} users for {opt.duration} s against {opt.host} "
              f"(at most {opt.bound()} s)…", file=sys.stderr, flush=True)
        if opt.web:
            print(f"vigilctl load: Locust's web UI: {web_url(opt)} "
                  f"(the run starts at once; the UI stays {opt.web_linger} s after it)",
                  file=sys.stderr, flush=True)
        report, status, seconds, ended = run_locust(opt, locustfile, tmp)
        doc = build_document(opt, locustfile, report, status, seconds, ended, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if opt.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(doc, sys.stdout)
    sys.stdout.flush()
    for reason in doc["reasons"]:
        print(f"vigilctl load: {reason}", file=sys.stderr)
    if doc["interrupted"]:
        return EXIT_INTERRUPTED
    return EXIT_OK if doc["ok"] else EXIT_FAILED
