#!/usr/bin/env python3
"""`vigilctl load` (Locust, python3-locust) through the shipped nginx gateway
to authd, inventoryd and paymentd from the build tree (PostgreSQL, Redis and
RabbitMQ from scripts/dev-stack.sh; paymentd with the shipped processor
defaults: 20 ms latency, 5 % declines).

Two gateways render the shipped site (gatewaylib.py): one with the load
source, 127.0.0.1, exempt by a rate-limit.d file as docs/gateway.md says to
allowlist a load test, one as shipped (10 requests/s per client).

Asserted:
- through the allowlisted gateway, a 5-user 10 s run exits 0 within its
  bound, every step (register, login, products, product, reserve, charge,
  payment) has requests and no failure, and Locust's count of each step
  equals the increase of vigil_http_requests_total{route} at the daemon
  that serves it; its paid and declined charges equal the increase of
  vigil_payment_transactions_total{status="success"|"declined"};
- through the shipped limits, a run exits 1, says the 429s are the rate
  limiter's and names rate-limit.d and the line that exempts 127.0.0.1;
  every one it counts is the gateway's (a 429 line of its access log), and
  for every step, Locust's count minus its 429s is what the daemon served;
- --web serves Locust's UI on 127.0.0.1 only, while the bounded run goes;
- SIGINT or SIGTERM to vigilctl stops Locust (no process left), prints the
  figures so far and exits 130;
- bad usage (--duration 0, --duration 10h, --users 0, …), Locust missing
  and no gateway exit 2 with a clear error and send no request.

By hand:
  top_builddir=/path/to/build python3 tests/integration/test-vigilctl-load.py [TEST...]
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gatewaylib  # noqa: E402
import harness  # noqa: E402
import paymentd_stack as ps  # noqa: E402
from harness import check, check_eq, wait_until  # noqa: E402

runner = harness.Runner("test-vigilctl-load", test_timeout=240)
test = runner.test

VIGILCTL = os.path.join(harness.TOP_BUILDDIR, "src", "vigilctl", "vigilctl")
MODULES = os.path.join(harness.TOP_SRCDIR, "src", "vigilctl", "modules")
STEPS = ("register", "login", "products", "product", "reserve", "charge", "payment")
# step -> (the daemon that serves it, its route label)
ROUTES = {
    "register": ("authd", "/register"), "login": ("authd", "/login"),
    "products": ("inventoryd", "/products"), "product": ("inventoryd", "/product/{id}"),
    "reserve": ("inventoryd", "/product/{id}/reserve"),
    "charge": ("paymentd", "/charge"), "payment": ("paymentd", "/payment/{id}"),
}
# The shipped processor defaults (etc/vigil/paymentd.conf, commented).
PROCESSOR = {"processor": {"latency_ms": 20, "decline_ratio": 0.05},
             "faults": {"error_ratio": 0, "latency_ms": 0}}


def interpreter():
    with open(VIGILCTL, encoding="utf-8") as f:
        return f.readline()[2:].strip()


def setup(ctx):
    for b in (VIGILCTL, harness.daemon_binary("authd"), harness.daemon_binary("inventoryd"),
              harness.daemon_binary("paymentd")):
        check(os.path.exists(b), f"{b} is not built")
    if not os.path.exists(gatewaylib.NGINX):
        print("SKIP: nginx is not installed (scripts/install-deps.sh)")
        sys.exit(harness.SKIP)
    r = subprocess.run([interpreter(), "-c", "import locust"], capture_output=True, text=True,
                       timeout=120, check=False)
    if r.returncode != 0:
        print(f"SKIP: Locust is not installed for {interpreter()}: python3-locust "
              "(scripts/install-deps.sh)")
        sys.exit(harness.SKIP)

    ps.start_stack(ctx)  # PostgreSQL, Redis, RabbitMQ and authd
    ctx.inventoryd = harness.new_inventoryd(ctx)
    ctx.inventoryd.start()
    ctx.paymentd = ps.new_paymentd(ctx, config=PROCESSOR)
    ctx.paymentd.start()
    ctx.daemon = {"authd": ctx.authd, "inventoryd": ctx.inventoryd, "paymentd": ctx.paymentd}
    upstreams = {"auth": ctx.authd.port, "payment": ctx.paymentd.port,
                 "inventory": ctx.inventoryd.port}
    # The load source allowlisted the way docs/gateway.md tells an operator to.
    ctx.allowed = gatewaylib.Gateway(upstreams, None, rate_classes="127.0.0.1 exempt;\n")
    ctx.cleanup(ctx.allowed.stop)
    ctx.allowed.start()
    ctx.limited = gatewaylib.Gateway(upstreams, None)
    ctx.cleanup(ctx.limited.stop)
    ctx.limited.start()
    ctx.tmp = tempfile.mkdtemp(prefix="vigil-load-test-")
    ctx.cleanup(lambda: harness._rmtree(ctx.tmp))


# --------------------------------------------------------------------------
# helpers

def env(extra=None):
    e = dict(os.environ, VIGILCTL_MODULES=MODULES)
    e.pop("VIGILCTL_GATEWAY", None)
    e.update(extra or {})
    return e


def vigilctl(*args, extra_env=None, timeout=300):
    t0 = time.monotonic()
    r = subprocess.run([VIGILCTL, "load", *args], capture_output=True, text=True, timeout=timeout,
                       env=env(extra_env), stdin=subprocess.DEVNULL, check=False)
    return r, time.monotonic() - t0


def url(gw):
    return f"http://127.0.0.1:{gw.port}"


def daemon_counts(ctx):
    """{step: vigil_http_requests_total of its route}, and the paid and
    declined charges, as the daemons count them."""
    samples = {}
    for name, d in ctx.daemon.items():
        r = d.get("/metrics")
        check_eq(r.status, 200, f"{name} /metrics")
        body = r.body.decode() if isinstance(r.body, bytes) else r.body
        samples[name] = harness.parse_metrics(body)
    counts = {step: int(harness.metric_value(samples[d], "vigil_http_requests_total", route=route))
              for step, (d, route) in ROUTES.items()}
    for status in ("success", "declined"):
        counts[f"charges {status}"] = int(harness.metric_value(
            samples["paymentd"], "vigil_payment_transactions_total", status=status))
    return counts


def delta(ctx, before):
    now = daemon_counts(ctx)
    return {k: now[k] - before[k] for k in now}


def access_log_429s(gw):
    if not os.path.exists(gw.access_log):
        return 0
    with open(gw.access_log, encoding="utf-8") as f:
        return sum(1 for line in f if json.loads(line).get("status") in (429, "429"))


def access_log_size(gw):
    return os.path.getsize(gw.access_log) if os.path.exists(gw.access_log) else 0


# --------------------------------------------------------------------------
# the tests

@test
def test_allowlisted_run_measures_the_platform_and_agrees_with_the_daemons(ctx):
    before = daemon_counts(ctx)
    r, seconds = vigilctl("--host", url(ctx.allowed), "--users", "5", "--spawn-rate", "5",
                          "--duration", "10s", "--think-time", "0.1:0.4", "--seed", "vigil",
                          "--json")
    check_eq(r.returncode, 0, f"exit status; stderr:\n{r.stderr}")
    doc = json.loads(r.stdout)
    check(doc["ok"] and not doc["reasons"], doc["reasons"])
    check(10 <= seconds <= doc["bound_seconds"], f"took {seconds:.1f} s for a 10 s run "
                                                 f"(bound {doc['bound_seconds']} s)")
    check(9 <= doc["run_seconds"] <= 10 + 30, f"Locust ran {doc['run_seconds']} s")
    check(not doc["timed_out"] and doc["completed"], doc)
    steps = {s["step"]: s for s in doc["steps"]}
    check_eq([s["step"] for s in doc["steps"]], list(STEPS), "the steps, in order")
    for name in STEPS:
        s = steps[name]
        check(s["requests"] > 0, f"{name}: no request: {s}")
        check_eq(s["failures"], 0, f"{name} failures ({doc['errors']})")
        check(s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"], f"{name} percentiles {s}")
        check(s["rps"] > 0, f"{name} requests/s {s}")
    check_eq(steps["register"]["requests"], 5, "registrations (one per user)")
    # The processor's 20 ms are in every charge's latency.
    check(steps["charge"]["p50_ms"] >= 20, f"charge p50 {steps['charge']['p50_ms']} ms < 20 ms")
    check_eq(doc["total"]["failures"], 0, "failures")
    check_eq(doc["total"]["requests"], sum(s["requests"] for s in doc["steps"]), "total requests")
    check(doc["rate_limited"] is None, doc["rate_limited"])
    o = doc["outcomes"]
    check_eq(o["users_started"], 5, "users started")
    check_eq((o["charges_replayed"], o["charges_retried"], o["out_of_stock"]), (0, 0, 0),
             "replays, retries, sold out")
    check_eq(o["charges_paid"] + o["charges_declined"], steps["charge"]["requests"],
             "paid + declined charges = charge requests")

    # What Locust counted is what the daemons served (no request is answered
    # by the gateway itself from an exempt source).
    want = {name: steps[name]["requests"] for name in STEPS}
    want["charges success"] = o["charges_paid"]
    want["charges declined"] = o["charges_declined"]
    got = {}

    def agree():
        got.update(delta(ctx, before))
        return got == want
    try:
        wait_until(agree, 10, interval=0.2, what="the daemons' counts")
    except AssertionError:
        raise AssertionError(f"Locust counted {want}, the daemons {got}") from None
    runner.note("5 users, 10 s, through the exempt gateway: "
                f"{doc['total']['requests']} requests, {doc['total']['rps']:.1f}/s, "
                f"p95 {doc['total']['p95_ms']} ms; {o['charges_paid']} paid, "
                f"{o['charges_declined']} declined; counts equal the daemons'")


@test
def test_run_through_the_limiter_names_it_and_fails(ctx):
    before = access_log_429s(ctx.limited)
    counts = daemon_counts(ctx)
    r, seconds = vigilctl("--host", url(ctx.limited), "--users", "10", "--spawn-rate", "10",
                          "--duration", "5s", "--think-time", "0:0")
    check_eq(r.returncode, 1, f"exit status; stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    check(seconds <= 60 + 5 + 30 + 30, f"took {seconds:.1f} s")
    for words in ("rate limiter", "not by the platform", "/etc/nginx/vigil/rate-limit.d/",
                  "echo '127.0.0.1 exempt;' > /etc/nginx/vigil/rate-limit.d/50-load-test.conf",
                  "nginx -t && systemctl reload nginx"):
        check(words in r.stderr, f"{words!r} not in stderr:\n{r.stderr}")
    m = re.search(r"(\d+) of (\d+) requests \([0-9.]+ %\) were answered 429 rate_limited", r.stderr)
    check(m, f"no count of 429s in:\n{r.stderr}")
    limited, total = int(m.group(1)), int(m.group(2))
    check(0 < limited <= total, m.group(0))
    # The table is printed all the same, every step named, and the verdict.
    for name in STEPS + ("total",):
        check(re.search(rf"^{name} +\d+ +\d+ ", r.stdout, re.M), f"no row {name}:\n{r.stdout}")
    check("HTTP 429 rate_limited: refused by the gateway's rate limiter" in r.stdout, r.stdout)
    check(r.stdout.rstrip().endswith("FAIL"), r.stdout)
    # Its 429s are the gateway's: each is a 429 line of its access log. The
    # log may hold a few more than Locust saw: its HTTP client
    # (geventhttpclient) sends a request again, as the same request, when
    # the connection is reset before the answer is read, so a 429 lost
    # that way is one request to Locust and two lines to the gateway.
    wait_until(lambda: access_log_429s(ctx.limited) - before >= limited, 10, interval=0.2,
               what=f"{limited} lines of 429 in the gateway's access log "
                    f"(has {access_log_429s(ctx.limited) - before})")
    surplus = access_log_429s(ctx.limited) - before - limited
    if surplus:
        runner.note(f"the gateway logged {surplus} 429s more than Locust counted ({limited})")
    # The documented difference: what Locust counted of a step is what its
    # daemon served plus what the gateway refused itself.
    requests = {m.group(1): int(m.group(2))
                for m in re.finditer(r"^(\w+) +(\d+) +\d+ ", r.stdout, re.M)}
    refused = {name: 0 for name in STEPS}
    for m in re.finditer(r"^  (\w+) +(\d+) × HTTP 429 rate_limited", r.stdout, re.M):
        refused[m.group(1)] = int(m.group(2))
    check_eq(sum(refused.values()), limited, "the 429s listed per step")
    want = {name: requests[name] - refused[name] for name in STEPS}
    got = {}

    def agree():
        d = delta(ctx, counts)
        got.update({name: d[name] for name in STEPS})
        return got == want
    try:
        wait_until(agree, 10, interval=0.2, what="the daemons' counts")
    except AssertionError:
        raise AssertionError(f"Locust counted {requests} with {refused} refused by the gateway, "
                             f"the daemons served {got}") from None


def listening(port):
    """The local addresses (hex, as /proc/net/tcp*) listening on port."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}", encoding="ascii") as f:
                next(f)
                for line in f:
                    local, st = line.split()[1], line.split()[3]
                    addr, _, p = local.rpartition(":")
                    if st == "0A" and int(p, 16) == port:
                        found.append(addr)
        except FileNotFoundError:
            pass
    return found


@test
def test_web_ui_is_served_on_loopback_while_the_run_goes(ctx):
    port = harness.free_port()
    t0 = time.monotonic()
    with open(os.path.join(ctx.tmp, "web.out"), "w+", encoding="utf-8") as out, \
            open(os.path.join(ctx.tmp, "web.err"), "w+", encoding="utf-8") as err:
        proc = subprocess.Popen([VIGILCTL, "load", "--host", url(ctx.allowed), "--users", "2",
                                 "--spawn-rate", "2", "--duration", "5s", "--think-time", "0.2:0.5",
                                 "--web", "--web-port", str(port), "--web-linger", "3s"],
                                env=env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            def page():
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    conn.request("GET", "/")
                    resp = conn.getresponse()
                    return resp.status == 200 and b"locust" in resp.read().lower()
                finally:
                    conn.close()
            # (Or vigilctl ended: no use waiting for a UI then.)
            wait_until(lambda: proc.poll() is not None or page(), 60, interval=0.2,
                       what=f"Locust's web UI on 127.0.0.1:{port}")
            check(proc.poll() is None, f"vigilctl load --web exited {proc.returncode} before "
                                       "its UI answered")
            addrs = listening(port)
            check(addrs and all(a == "0100007F" for a in addrs),
                  f"the web UI listens on {addrs} (hex), not only 127.0.0.1")
            rc = proc.wait(60 + 5 + 30 + 3 + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    seconds = time.monotonic() - t0
    check_eq(rc, 0, f"exit status; stdout:\n{stdout}\nstderr:\n{stderr}")
    check(f"Locust's web UI: http://127.0.0.1:{port}/" in stderr, stderr)
    check(seconds >= 5 + 3, f"ended after {seconds:.1f} s: before the run and the linger")
    check(stdout.rstrip().endswith("PASS") and re.search(r"^total +\d+ +0 ", stdout, re.M), stdout)
    check(not listening(port), "the web UI is still listening")


def locust_processes(host):
    """Pids of Locust processes loading host."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"locust" in argv and host.encode() in argv:
            pids.append(int(pid))
    return pids


@test
def test_interrupt_stops_locust_and_prints_the_run_so_far(ctx):
    for sig in (signal.SIGINT, signal.SIGTERM):
        host = url(ctx.allowed)
        size = access_log_size(ctx.allowed)
        with open(os.path.join(ctx.tmp, "int.out"), "w+", encoding="utf-8") as out, \
                open(os.path.join(ctx.tmp, "int.err"), "w+", encoding="utf-8") as err:
            proc = subprocess.Popen([VIGILCTL, "load", "--host", host, "--users", "2",
                                     "--spawn-rate", "2", "--duration", "10m",
                                     "--think-time", "0.1:0.3"],
                                    env=env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            try:
                wait_until(lambda: proc.poll() is not None or access_log_size(ctx.allowed) > size,
                           60, interval=0.2, what="the load's first requests")
                check(proc.poll() is None, f"vigilctl load ended: {proc.returncode}")
                check(locust_processes(host), "no Locust process for the run")
                t0 = time.monotonic()
                proc.send_signal(sig)
                rc = proc.wait(60)
                seconds = time.monotonic() - t0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        what = f"vigilctl load after {signal.Signals(sig).name}"
        check_eq(rc, 130, f"{what}: exit status; stdout:\n{stdout}\nstderr:\n{stderr}")
        check(seconds < 45, f"{what} took {seconds:.1f} s to end")
        check("interrupted: the figures are those of the run so far" in stderr, stderr)
        m = re.search(r"^total +(\d+) +0 ", stdout, re.M)
        check(m and int(m.group(1)) > 0, f"{what}: no figures:\n{stdout}")
        check_eq(locust_processes(host), [], f"{what}: Locust left running")


@test
def test_bad_usage_and_environment_exit_2_and_start_nothing(ctx):
    host = url(ctx.allowed)
    fake = os.path.join(ctx.tmp, "no-locust")
    os.makedirs(os.path.join(fake, "locust"), exist_ok=True)
    with open(os.path.join(fake, "locust", "__init__.py"), "w", encoding="utf-8") as f:
        f.write("raise ModuleNotFoundError(\"No module named 'locust'\", name='locust')\n")
    cases = [
        (("--duration", "0"), None, "--duration '0': must be between 1 s and 1 h"),
        (("--duration", "10h"), None, "--duration '10h': must be between 1 s and 1 h"),
        (("--duration", "soon"), None, "expected a time span"),
        (("--users", "0"), None, "--users 0: must be between 1 and 1000"),
        (("--users", "5000"), None, "--users 5000: must be between 1 and 1000"),
        (("--spawn-rate", "0"), None, "--spawn-rate 0: must be between"),
        (("--max-failure-ratio", "2"), None, "--max-failure-ratio 2: must be between 0.0 and 1.0"),
        (("--think-time", "2:1"), None, "--think-time '2:1'"),
        (("--products", "1,x"), None, "--products '1,x': expected product ids"),
        (("--web-linger", "2h"), None, "--web-linger '2h': must be between 0 s and 1 h"),
        (("--locustfile", os.path.join(ctx.tmp, "nowhere.py")), None, "nowhere.py does not exist"),
        (("--frobnicate",), None, "unrecognized arguments"),
        ((), {"PYTHONPATH": fake}, "Locust is not installed"),
    ]
    for args, extra, words in cases:
        size = access_log_size(ctx.allowed)
        before = daemon_counts(ctx)
        r, seconds = vigilctl("--host", host, "--duration", "5s", *args, extra_env=extra)
        what = f"vigilctl load {' '.join(args)} {extra or ''}"
        check_eq(r.returncode, 2, f"{what}: stdout {r.stdout!r} stderr {r.stderr!r}")
        check(words in r.stderr, f"{what}: {words!r} not in {r.stderr!r}")
        check_eq(r.stdout, "", f"{what} wrote to stdout")
        check(seconds < 30, f"{what} took {seconds:.1f} s")
        check_eq(access_log_size(ctx.allowed), size, f"{what}: the gateway's access log grew")
        check_eq(delta(ctx, before), {k: 0 for k in before}, f"{what}: the daemons were asked")
    check("python3-locust" in r.stderr, r.stderr)

    # Nothing answering where --host points.
    r, _ = vigilctl("--host", f"http://127.0.0.1:{harness.closed_port()}", "--duration", "5s")
    check_eq(r.returncode, 2, r.stderr)
    check("nothing answers at http://127.0.0.1:" in r.stderr and "nothing was started" in r.stderr,
          r.stderr)
    check_eq(r.stdout, "", "stdout")


if __name__ == "__main__":
    sys.exit(runner.main(setup))
