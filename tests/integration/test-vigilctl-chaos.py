#!/usr/bin/env python3
"""`vigilctl chaos` against the dev stack: PostgreSQL, Redis and RabbitMQ
from scripts/dev-stack.sh, vigil-authd, -paymentd, -inventoryd and -notifyd
from the build tree, behind the shipped nginx gateway (as test-vigilctl.py
runs it), and Debian's Prometheus scraping them (with the shipped payment
availability SLO rules) for the drills that read it. systemd is not PID 1
here, so systemctl and systemd-run are stand-ins that record every command
(one JSON line each) and act on the test's processes as systemd would on
the units: `kill --signal=SIG vigil-X.service` sends SIG to the daemon (a
supervisor thread starts a killed daemon again, as Restart=on-failure),
`reload` puts vigilctl's fault drop-in in the daemon's configuration and
sends SIGHUP, `stop`/`start rabbitmq-server.service` kill and start the dev
stack's RabbitMQ.

Asserted: --dry-run prints every drill's commands in order and touches
nothing (no command, no user, no drop-in); kill -9 of notifyd under the
load gives a report whose accounting is what the database holds (charges
committed == notified, 0 lost, 0 duplicated) and says what it cannot know
(--prometheus pointing at nothing: alerts and the error budget are unknown,
not zero);
stop-rabbitmq (the dev stack's RabbitMQ killed and started again by the
stand-in) likewise, with charges committed during the outage notified after;
a SIGSTOPped notifyd makes the test's alert go pending then firing within
the hold, timed from Prometheus; the fault storm fails requests, spends
payment's error budget (> 0, from the SLO rules) and leaves no fault behind;
SIGTERM in the middle of a SIGSTOP drill runs the restoration (SIGCONT,
the safety timer disarmed), the daemon runs again, and the exit is 1; bad
usage and a broken environment exit 2 having run nothing. By hand:
  top_builddir=/path/to/build python3 tests/integration/test-vigilctl-chaos.py [TEST...]
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gatewaylib  # noqa: E402
import harness  # noqa: E402
import paymentd_stack as ps  # noqa: E402
from harness import check, check_eq  # noqa: E402

runner = harness.Runner("test-vigilctl-chaos", test_timeout=300)
test = runner.test

VIGILCTL = os.path.join(harness.TOP_BUILDDIR, "src", "vigilctl", "vigilctl")
MODULES = os.path.join(harness.TOP_SRCDIR, "src", "vigilctl", "modules")
DAEMONS = ("authd", "paymentd", "inventoryd", "notifyd")
PROMETHEUS = shutil.which("prometheus")
# A daemon not scraped for a second: an alert of the test's, quicker than
# the shipped VigilDaemonDown (2 m).
RULES = """groups:
  - name: vigilctl-chaos-test
    rules:
      - alert: VigilChaosTestDown
        expr: up{job="notify"} == 0
        for: 1s
"""

FAKE_SYSTEMCTL = """#!/usr/bin/python3
import json, os, signal, sys
d = os.environ["FAKE_DIR"]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"argv": ["systemctl"] + sys.argv[1:]}) + "\\n")
args = sys.argv[1:]
if args[:1] == ["kill"] and args[1].startswith("--signal="):
    pidfile = os.path.join(d, args[2] + ".pid")
    if os.path.exists(pidfile):
        sig = getattr(signal, "SIG" + args[1].split("=", 1)[1])
        pid = int(open(pidfile).read())
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        # systemd's watchdog: a stopped daemon sends no WATCHDOG=1 and is
        # killed FAKE_WATCHDOG_SECONDS later (the test then restarts it).
        if sig == signal.SIGSTOP and os.environ.get("FAKE_WATCHDOG_SECONDS") and os.fork() == 0:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            import time
            time.sleep(float(os.environ["FAKE_WATCHDOG_SECONDS"]))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os._exit(0)
elif args[:1] == ["reload"]:
    # ExecReload: the daemon rereads its configuration directory, which is
    # the test's own: vigilctl's drop-in is put there, or taken away.
    unit = args[1]
    name = unit[len("vigil-"):-len(".service")]
    src = os.path.join(os.environ["FAKE_ETC"], name + ".conf.d", "50-vigilctl-fault.conf")
    dst_dir = open(os.path.join(d, unit + ".confdir")).read() + ".d"
    dst = os.path.join(dst_dir, "50-vigilctl-fault.conf")
    if os.path.exists(src):
        os.makedirs(dst_dir, exist_ok=True)
        with open(src) as f, open(dst, "w") as g:
            g.write(f.read())
    elif os.path.exists(dst):
        os.unlink(dst)
    os.kill(int(open(os.path.join(d, unit + ".pid")).read()), signal.SIGHUP)
elif args[:1] in (["stop"], ["reset-failed"]) and all(a.startswith("vigil-chaos-restore-") for a in args[1:]):
    # As systemd answers for a transient unit that is not there (never
    # armed, or already gone): exit 5.
    for a in args[1:]:
        sys.stderr.write(f"Failed to {args[0]} {a}: Unit {a} not loaded.\\n")
    sys.exit(5)
elif args[:1] in (["stop"], ["start"]) and args[1:] == ["rabbitmq-server.service"]:
    # The dev stack's RabbitMQ, as systemd would stop and start the unit's.
    import subprocess
    what = ["kill", os.environ["FAKE_STACK"], "rabbitmq"] if args[0] == "stop" else \
        ["start-one", os.environ["FAKE_STACK"], "rabbitmq"]
    r = subprocess.run(["bash", os.environ["FAKE_DEV_STACK"]] + what, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=240)
    if r.returncode:
        sys.stderr.write(r.stderr.decode(errors="replace"))
        sys.exit(1)
"""
FAKE_SYSTEMD_RUN = """#!/usr/bin/python3
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"argv": ["systemd-run"] + sys.argv[1:]}) + "\\n")
"""


def setup(ctx):
    if not os.path.exists(gatewaylib.NGINX) or not shutil.which("psql") or not PROMETHEUS:
        print("SKIP: nginx, psql or prometheus is not installed (scripts/install-deps.sh)")
        sys.exit(harness.SKIP)
    ctx.stack = harness.Stack(ps.SERVICES)
    ctx.cleanup(ctx.stack.stop)
    ctx.stack.start()
    ctx.authd = harness.new_authd(ctx)
    ctx.authd.start()
    ctx.paymentd = ps.new_paymentd(ctx)
    ctx.paymentd.start()
    ctx.inventoryd = harness.new_inventoryd(ctx)
    ctx.inventoryd.start()
    s = ctx.stack.env
    with open(s["VIGIL_DEV_PG_PASSWORD_FILE_NOTIFY"], "rb") as f:
        pg_password = f.read()
    with open(os.path.join(ctx.stack.dir, "secrets", "amqp-password"), encoding="utf-8") as f:
        amqp_password = f.read().strip()
    ctx.notifyd = harness.Daemon("notifyd", env={
        "VIGIL_POSTGRES_DSN": s["VIGIL_DEV_PG_DSN_NOTIFY"],
        "VIGIL_AMQP_URL": s["VIGIL_AMQP_URL"].replace(":" + amqp_password + "@", "@"),
        "VIGIL_TRACING_OTLP_ENDPOINT": "", "VIGIL_PROCESSOR_SEND_LATENCY_MS": "1",
    }, credentials={"postgres-password": pg_password, "amqp-password": amqp_password})
    ctx.daemons.append(ctx.notifyd)
    ctx.cleanup(ctx.notifyd.close)
    ctx.notifyd.start()

    # The load runs faster than the shipped 10 r/s per client: the rate is raised.
    ctx.gateway = gatewaylib.Gateway({"auth": ctx.authd.port, "payment": ctx.paymentd.port,
                                      "inventory": ctx.inventoryd.port}, None, rate="1000r/s")
    ctx.cleanup(ctx.gateway.stop)
    ctx.gateway.start()

    ctx.tmp = tempfile.mkdtemp(prefix="vigil-chaos-")
    ctx.cleanup(lambda: harness._rmtree(ctx.tmp))
    ctx.etc = os.path.join(ctx.tmp, "etc-vigil")
    os.mkdir(ctx.etc)
    for name in DAEMONS:
        with open(os.path.join(ctx.etc, f"{name}.conf"), "w", encoding="utf-8") as f:
            f.write(f"[http]\nlisten = 127.0.0.1:{getattr(ctx, name).port}\n")
    ctx.fake = os.path.join(ctx.tmp, "fake")
    ctx.bin = os.path.join(ctx.fake, "bin")
    os.makedirs(ctx.bin)
    for name, text in (("systemctl", FAKE_SYSTEMCTL), ("systemd-run", FAKE_SYSTEMD_RUN)):
        path = os.path.join(ctx.bin, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o755)
    ctx.log = os.path.join(ctx.fake, "commands.log")
    ctx.dsn = re.sub(r"\bdbname=\S+", "", s["VIGIL_TEST_PG_ADMIN_DSN"]) + " dbname=vigil"
    write_pidfiles(ctx)

    # systemd's Restart=on-failure: a killed daemon is started again.
    ctx.supervising = threading.Event()
    ctx.restarts = {n: 0 for n in DAEMONS}

    def supervise():
        while not ctx.supervising.wait(0.1):
            for name in DAEMONS:
                d = getattr(ctx, name)
                if d.proc is not None and d.proc.poll() is not None:
                    d.kill()
                    d.start(wait_ready=False)
                    ctx.restarts[name] += 1
                    write_pidfiles(ctx)
    t = threading.Thread(target=supervise, daemon=True)
    t.start()
    ctx.cleanup(ctx.supervising.set)


def start_prometheus(ctx):
    """Debian's Prometheus scraping the four daemons every second, with the
    shipped payment availability SLO rules and the test's alert."""
    ctx.prom_port = harness.free_port()
    rules = os.path.join(ctx.tmp, "rules.yml")
    with open(rules, "w", encoding="utf-8") as f:
        f.write(RULES)
    # The shipped rules, their long-window group (the objective's) evaluated
    # every second instead of every 2 minutes, so that it exists at once.
    with open(os.path.join(harness.TOP_SRCDIR, "etc", "prometheus", "rules",
                           "slo-payment-availability.yml"), encoding="utf-8") as f:
        text = f.read()
    check("  interval: 2m\n" in text, "the shipped SLO rules' long-window interval")
    slo = os.path.join(ctx.tmp, "slo-payment-availability.yml")
    with open(slo, "w", encoding="utf-8") as f:
        f.write(text.replace("  interval: 2m\n", "  interval: 1s\n"))
    conf = os.path.join(ctx.tmp, "prometheus.yml")
    jobs = {"auth": ctx.authd, "payment": ctx.paymentd, "inventory": ctx.inventoryd,
            "notify": ctx.notifyd}
    with open(conf, "w", encoding="utf-8") as f:
        f.write(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                f"  evaluation_interval: 1s\nrule_files: [{rules}, {slo}]\nscrape_configs:\n")
        for job, d in jobs.items():
            f.write(f"  - job_name: {job}\n    static_configs:\n"
                    f"      - targets: [\"127.0.0.1:{d.port}\"]\n")
    log = open(os.path.join(ctx.tmp, "prometheus.log"), "ab")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={conf}",
                             f"--storage.tsdb.path={ctx.tmp}/prom-data",
                             f"--web.listen-address=127.0.0.1:{ctx.prom_port}", "--log.level=warn"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, cwd=ctx.tmp)

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
    ctx.cleanup(stop)

    def up():
        check(proc.poll() is None, f"prometheus exited {proc.returncode}")
        try:
            r = harness.request(ctx.prom_port, "GET", "/api/v1/targets?state=active", timeout=2)
        except OSError:
            return False
        ts = r.body["data"]["activeTargets"] if r.status == 200 else []
        return len(ts) == 4 and all(t["health"] == "up" for t in ts)
    harness.wait_until(up, 60, interval=0.2, what="Prometheus scraping the four daemons")


PAYMENT_SERIES = 'count(vigil_http_requests_total{job="payment"})'


def prom_query(ctx, query):
    import urllib.parse  # noqa: PLC0415
    r = harness.request(ctx.prom_port, "GET", "/api/v1/query?" +
                        urllib.parse.urlencode({"query": query}), timeout=5)
    return r.body["data"]["result"] if r.status == 200 else r.status


def wait_slo_series(ctx):
    """Until Prometheus has evaluated payment's SLO ratio (which needs two
    scrapes of paymentd's request counter): a request to paymentd each try."""
    def evaluated():
        harness.request(ctx.paymentd.port, "GET", "/payment/1", timeout=5)
        return bool(prom_query(ctx, "slo:sli_error:ratio_rate5m") and
                    prom_query(ctx, "slo:objective:ratio"))
    harness.wait_until(evaluated, 60, interval=0.5, what="Prometheus evaluating the SLO rules "
                       f"(payment's series: {prom_query(ctx, PAYMENT_SERIES)})")


def write_pidfiles(ctx):
    for name in DAEMONS:
        d = getattr(ctx, name)
        if d.proc is not None:
            with open(os.path.join(ctx.fake, f"vigil-{name}.service.pid"), "w",
                      encoding="utf-8") as f:
                f.write(str(d.proc.pid))
            with open(os.path.join(ctx.fake, f"vigil-{name}.service.confdir"), "w",
                      encoding="utf-8") as f:
                f.write(d.config)


# --------------------------------------------------------------------------
# helpers

def env(ctx):
    e = dict(os.environ)
    e.update({"PATH": ctx.bin + os.pathsep + e.get("PATH", "/usr/bin:/bin"),
              "VIGILCTL_MODULES": MODULES, "FAKE_DIR": ctx.fake, "FAKE_LOG": ctx.log,
              "FAKE_STACK": ctx.stack.dir, "FAKE_DEV_STACK": ctx.stack.script,
              "FAKE_ETC": ctx.etc})
    return e


def argv(ctx, *args):
    return [VIGILCTL, "chaos", "--etc", ctx.etc,
            "--gateway", f"http://127.0.0.1:{ctx.gateway.port}",
            "--prometheus", f"http://127.0.0.1:{harness.closed_port()}",
            "--database", ctx.dsn, *args]


def vigilctl(ctx, *args, timeout=240, prometheus=False, extra_env=None):
    """vigilctl chaos ARGS with the stand-ins; prometheus: the test's own
    Prometheus instead of a closed port."""
    cmd = argv(ctx, *args)
    if prometheus:
        cmd[cmd.index("--prometheus") + 1] = f"http://127.0.0.1:{ctx.prom_port}"
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=dict(env(ctx), **(extra_env or {})), capture_output=True, text=True,
                       timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    print(f"vigilctl chaos {' '.join(args)}: exit {r.returncode} in "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    return r


def one_drill(ctx, drill, *args, **kw):
    """vigilctl chaos --drills DRILL --json ARGS, which must exit 0: its
    drill's report."""
    r = vigilctl(ctx, "--drills", drill, "--json", *args, **kw)
    check(r.returncode in (0, 1), f"exit {r.returncode}: {r.stderr}")
    rep = json.loads(r.stdout)["drills"][0]
    print(json.dumps(summary(rep), indent=1))
    check_eq(r.returncode, 0, f"exit status (stderr: {r.stderr})")
    return rep


def commands(ctx):
    if not os.path.exists(ctx.log):
        return []
    with open(ctx.log, encoding="utf-8") as f:
        return [json.loads(line)["argv"] for line in f]


def reset(ctx):
    if os.path.exists(ctx.log):
        os.unlink(ctx.log)


def summary(rep):
    """A drill's report without its list of every request, for the log."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "requests"} if k == "load" else v)
            for k, v in rep.items()}


def sql_int(ctx, query):
    return int(ctx.stack.sql(query) or 0)


def chaos_users(ctx):
    return sql_int(ctx, "SELECT count(*) FROM auth.users WHERE username LIKE 'vigilctl-chaos-%'")


def proc_state(pid):
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def all_ready(ctx):
    for name in DAEMONS:
        d = getattr(ctx, name)
        try:
            if d.proc is None or harness.request(d.port, "GET", "/ready", timeout=2).status != 200:
                return False
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------
# tests

@test
def test_dry_run_prints_every_command_in_order_and_touches_nothing(ctx):
    reset(ctx)
    users = chaos_users(ctx)
    pids = {n: getattr(ctx, n).proc.pid for n in DAEMONS}
    r = vigilctl(ctx, "--dry-run")
    check_eq(r.returncode, 0, f"--dry-run: {r.stderr}")
    out = r.stdout
    drills = re.findall(r"^\d+\. (\S+)$", out, re.M)
    check_eq(drills, [f"kill-{d}" for d in DAEMONS] + ["stop-postgresql", "stop-redis", "stop-rabbitmq"]
             + [f"hang-{d}" for d in DAEMONS] + ["fault-storm"], "the drills planned (default: all)")
    for line in ("would run: systemctl kill --signal=KILL vigil-notifyd.service",
                 "would run: systemctl stop rabbitmq-server.service",
                 "would run: systemctl start rabbitmq-server.service   (restore; also on any exit)",
                 "would run: systemctl kill --signal=STOP vigil-authd.service",
                 "would run: systemctl kill --signal=CONT vigil-authd.service   (restore; also on any exit)",
                 "would run: systemctl reload vigil-paymentd.service"):
        check(line in out, f"the plan lacks {line!r}:\n{out}")
    # Order: the safety timer before the stop, the stop before the start.
    i_timer = out.index("--unit=vigil-chaos-restore-stop-redis")
    i_stop = out.index("would run: systemctl stop redis-server.service")
    i_start = out.index("would run: systemctl start redis-server.service")
    check(i_timer < i_stop < i_start, "stop-redis: safety timer, stop, start out of order")
    r = vigilctl(ctx, "--dry-run", "--json", "--drills", "stop-postgresql")
    check_eq(r.returncode, 0, f"--dry-run --json: {r.stderr}")
    doc = json.loads(r.stdout)
    check_eq([d["drill"] for d in doc["drills"]], ["stop-postgresql"], "--json drills")
    check_eq(doc["drills"][0]["restore"][0], "systemctl start postgresql.service", "the restore")
    check_eq(commands(ctx), [], "commands run by --dry-run")
    check_eq(chaos_users(ctx), users, "users registered by --dry-run")
    check_eq({n: getattr(ctx, n).proc.pid for n in DAEMONS}, pids, "daemons restarted by --dry-run")
    check(not any(e.endswith(".conf.d") for e in os.listdir(ctx.etc)), "a drop-in directory written")


@test
def test_kill_notifyd_report_accounts_what_the_database_holds(ctx):
    reset(ctx)
    restarts = ctx.restarts["notifyd"]
    r = vigilctl(ctx, "--drills", "kill-notifyd", "--json", "--rate", "40", "--requests", "600",
                 "--threads", "4", "--drill-timeout", "90", "--drain-timeout", "90")
    check(r.returncode in (0, 1), f"exit {r.returncode}: {r.stderr}")
    doc = json.loads(r.stdout)
    print(json.dumps(summary(doc["drills"][0]), indent=1))
    check_eq(r.returncode, 0, f"exit status (stderr: {r.stderr})")
    check_eq(ctx.restarts["notifyd"], restarts + 1, "notifyd killed and started again")
    cmds = commands(ctx)
    check(["systemctl", "kill", "--signal=KILL", "vigil-notifyd.service"] in cmds, f"commands: {cmds}")
    check_eq(cmds[-1], ["systemctl", "start", "vigil-notifyd.service"], "the (no-op) restore last")
    rep = doc["drills"][0]
    check(rep["recovered"] and rep["ready_again_s"] is not None, "recovered")
    check(rep["load"]["sent"] > 0 and rep["load"]["charges_committed_201"] > 0,
          f"load {summary(rep)['load']}")
    # Every request recorded: when (from the fault), what, and its outcome.
    reqs = rep["load"]["requests"]
    check_eq(len(reqs), rep["load"]["sent"], "requests recorded")
    check_eq(sum(1 for _, op, st in reqs if op == "charge" and st == 201),
             rep["load"]["by_status"].get("201"), "201s recorded")
    check(any(t > 0 for t, _, _ in reqs), "no request after the fault")
    # What the database holds for the drill's charges, asked independently.
    mine = (f"p.user_id = {doc['user_id']} AND p.idempotency_key LIKE '{rep['key_prefix']}%'")
    committed = sql_int(ctx, f"SELECT count(*) FROM payment.payments p WHERE {mine}")
    notified = sql_int(ctx, "SELECT count(*) FROM notify.notifications n JOIN payment.payments p "
                            f"ON p.id = n.payment_id WHERE {mine}")
    check(committed > 0, "no charge committed")
    check_eq(rep["charges"], {"committed": committed, "notified": notified, "lost": 0,
                              "duplicated": 0, "committed_201": rep["load"]["charges_committed_201"]},
             "the report's charges")
    check_eq(committed, notified, "every committed charge notified exactly once")
    # No Prometheus here: unknown, said so, never zero.
    check(rep["alert_pending_s"] is None and "Prometheus" in rep["unknown"]["alert_pending"],
          f"alert pending: {rep['unknown']}")
    check(rep["error_budget"] is None and "error_budget" in rep["unknown"], "error budget")
    check(doc["ok"], "the run is ok")


@test
def test_kill_paymentd_markdown_report(ctx):
    reset(ctx)
    r = vigilctl(ctx, "--drills", "kill-paymentd", "--rate", "30", "--requests", "300",
                 "--drill-timeout", "90", "--drain-timeout", "90")
    print(r.stdout)
    check_eq(r.returncode, 0, f"exit status (stderr: {r.stderr})")
    out = r.stdout
    check(out.startswith("# GameDay report"), "a markdown title")
    check("## kill-paymentd: recovered" in out, "the drill's heading")
    check("| alert firing | unknown |" in out, "the unknown alert")
    check(re.search(r"\| charges lost / duplicated \| 0 / 0 \|", out), "0 lost, 0 duplicated")
    m = re.search(r"\| charges committed / notified \| (\d+) / (\d+) ", out)
    check(m and m.group(1) == m.group(2) and int(m.group(1)) > 0, "committed == notified > 0")
    check(re.search(r"^\| kill-paymentd \| yes \|", out, re.M), "the summary row")


@test
def test_stop_rabbitmq_holds_charges_in_the_outbox_and_notifies_them_after(ctx):
    reset(ctx)
    r = vigilctl(ctx, "--drills", "stop-rabbitmq", "--json", "--hold", "4", "--rate", "20",
                 "--requests", "2000", "--drill-timeout", "200", "--drain-timeout", "120")
    check(r.returncode in (0, 1), f"exit {r.returncode}: {r.stderr}")
    doc = json.loads(r.stdout)
    rep = doc["drills"][0]
    print(json.dumps(summary(rep), indent=1))
    check_eq(r.returncode, 0, f"exit status (stderr: {r.stderr})")
    cmds = commands(ctx)
    stop = cmds.index(["systemctl", "stop", "rabbitmq-server.service"])
    check(["systemctl", "start", "rabbitmq-server.service"] in cmds[stop + 1:], f"commands {cmds}")
    check(rep["recovered"], "every daemon ready again")
    mine = (f"p.user_id = {doc['user_id']} AND p.idempotency_key LIKE '{rep['key_prefix']}%'")
    committed = sql_int(ctx, f"SELECT count(*) FROM payment.payments p WHERE {mine}")
    notified = sql_int(ctx, "SELECT count(*) FROM notify.notifications n JOIN payment.payments p "
                            f"ON p.id = n.payment_id WHERE {mine}")
    # Charges committed while RabbitMQ was down: before it was started again.
    during = sql_int(ctx, f"SELECT count(*) FROM payment.payments p WHERE {mine} AND "
                          f"p.created_at < '{rep['started_at']}'::timestamptz + interval '4 s'")
    check(during > 0, "no charge committed while RabbitMQ was down")
    check_eq((rep["charges"]["committed"], rep["charges"]["notified"], rep["charges"]["lost"],
              rep["charges"]["duplicated"]), (committed, notified, 0, 0), "the report's charges")
    check_eq(committed, notified, "every committed charge notified exactly once")


@test
def test_hang_notifyd_times_the_alert_and_the_error_budget_from_prometheus(ctx):
    reset(ctx)
    if not getattr(ctx, "prom_port", None):
        start_prometheus(ctx)
    wait_slo_series(ctx)
    rep = one_drill(ctx, "hang-notifyd", "--hold", "8", "--rate", "20", "--drill-timeout", "90",
                    "--drain-timeout", "90", prometheus=True)
    cmds = commands(ctx)
    stop = cmds.index(["systemctl", "kill", "--signal=STOP", "vigil-notifyd.service"])
    check_eq(cmds[stop + 1], ["systemctl", "kill", "--signal=CONT", "vigil-notifyd.service"],
             "SIGCONT after the hold")
    # The hung notifyd is not scraped: the test's alert goes pending, then
    # fires (for: 1s), within the hold.
    check_eq((rep["alert_pending"], rep["alert_firing"]), ("VigilChaosTestDown",) * 2, "alerts")
    check(0 <= rep["alert_pending_s"] <= rep["alert_firing_s"] <= 8 + 2,
          f"pending {rep['alert_pending_s']} s, firing {rep['alert_firing_s']} s")
    check(rep["ready_again_s"] >= 8, f"ready again {rep['ready_again_s']} s, before the SIGCONT")
    check("alert_pending" not in rep["unknown"], f"unknown: {rep['unknown']}")
    budget = rep["error_budget"] or {}
    check("payment-availability" in budget, f"error budget: {budget} {rep['unknown']}; "
          f"Prometheus has {prom_query(ctx, 'slo:sli_error:ratio_rate5m')} and "
          f"{prom_query(ctx, PAYMENT_SERIES)}")
    pay = budget["payment-availability"]
    check_eq(pay["objective"], 0.999, "the shipped objective")
    # paymentd answered every charge (notifyd is behind the queue): no budget spent.
    check_eq((pay["error_ratio"], pay["budget_spent_percent"]), (0.0, 0.0), "payment's budget")
    check_eq(rep["charges"]["lost"], 0, "lost")
    check_eq(rep["charges"]["committed"], rep["charges"]["notified"], "committed == notified")


@test
def test_hang_restarted_by_the_watchdog_is_ready_again_within_the_hold(ctx):
    """A hung daemon that its watchdog kills and systemd restarts is ready
    again before the hold ends: the report times that, not the hold."""
    reset(ctx)
    restarts = ctx.restarts["notifyd"]
    rep = one_drill(ctx, "hang-notifyd", "--hold", "10", "--drill-timeout", "90",
                    extra_env={"FAKE_WATCHDOG_SECONDS": "2"})
    check_eq(ctx.restarts["notifyd"], restarts + 1, "notifyd killed by the watchdog and started again")
    check(2 <= rep["ready_again_s"] < 10, f"ready again {rep['ready_again_s']} s: the hold, not the restart")
    check(any(ev["event"] == "every daemon ready again (within the hold)" for ev in rep["timeline"]),
          f"timeline: {rep['timeline']}")


@test
def test_bot_action_is_this_drills_not_an_earlier_alerts(ctx):
    """The bot's first record after the fault counts only when its alert
    started with the drill: a re-notified alert of an earlier drill does not."""
    import http.server
    sys.path.insert(0, MODULES)
    from vigilctl import chaos
    t0 = float(int(time.time()))
    stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"  # noqa: E731
    docs = {"/incidents": {"incidents": [
                {"alertname": "EarlierDown", "starts_at": stamp(t0 - 60), "actions": [
                    {"at": int(t0) + 1, "decision": "acted", "action": "restart", "unit": "a.service"}]}]},
            "/notifications": {"notifications": [
                {"received_at": int(t0) + 1, "status": "firing", "receiver": "escalation",
                 "alertname": "EarlierPage", "starts_at": stamp(t0 - 60)},
                {"received_at": int(t0) + 3, "status": "firing", "receiver": "tickets",
                 "alertname": "ThisDrillsTicket", "starts_at": stamp(t0 + 2)}]}}

    class Bot(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps(docs[self.path]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = type("S", (), {})()
        settings.daemons = {"alertbotd": ("vigil-alertbotd.service", f"http://127.0.0.1:{server.server_port}")}
        settings.prometheus = f"http://127.0.0.1:{harness.closed_port()}"
        settings.args = type("A", (), {"timeout": 5.0})()
        w = chaos.Watcher(settings, t0)
        w.prime()
        w.poll_once()
        check_eq(w.bot, (3.0, "notified tickets: ThisDrillsTicket"), "the bot action of this drill")
    finally:
        server.shutdown()


def reloads(d):
    text = d.log_text()
    return text.count("Configuration reloaded") + text.count("Reload failed")


@test
def test_fault_storm_spends_error_budget_and_clears_its_faults(ctx):
    reset(ctx)
    if not getattr(ctx, "prom_port", None):
        start_prometheus(ctx)
    wait_slo_series(ctx)
    before = {n: reloads(getattr(ctx, n)) for n in ("authd", "paymentd", "inventoryd")}
    rep = one_drill(ctx, "fault-storm", "--hold", "8", "--rate", "20", "--drill-timeout", "90",
                    "--drain-timeout", "90", prometheus=True)
    # Each API daemon got its fault and lost it again: two reloads each.
    for n, b in before.items():
        harness.wait_until(lambda n=n, b=b: reloads(getattr(ctx, n)) >= b + 2, 15,
                           what=f"{n} reloaded twice")
        d = getattr(ctx, n)
        check(not os.path.exists(os.path.join(d.config + ".d", "50-vigilctl-fault.conf")),
              f"{n}'s fault left in place")
        check(not os.path.exists(os.path.join(ctx.etc, f"{n}.conf.d", "50-vigilctl-fault.conf")),
              f"vigilctl's drop-in for {n} left in place")
    cmds = commands(ctx)
    armed = [c for c in cmds if c[0] == "systemd-run"]
    check_eq(len(armed), 3, f"clear timers armed: {armed}")
    check(all("--on-active=8s" in c for c in armed), f"bounded by the hold: {armed}")
    check(rep["load"]["failed"] > 0, f"the storm failed no request: {rep['load']}")
    pay = (rep["error_budget"] or {}).get("payment-availability")
    check(pay is not None, f"error budget: {rep['unknown']}")
    check(pay["error_ratio"] > 0 and pay["budget_spent_percent"] > 0, f"payment's budget: {pay}")
    check_eq((rep["charges"]["lost"], rep["charges"]["duplicated"]), (0, 0), "lost, duplicated")
    check_eq(rep["charges"]["committed"], rep["charges"]["notified"], "committed == notified")


@test
def test_sigterm_mid_drill_restores_and_exits_non_zero(ctx):
    reset(ctx)
    harness.wait_until(lambda: all_ready(ctx), 60, what="every daemon ready")
    pid = ctx.notifyd.proc.pid
    p = subprocess.Popen(argv(ctx, "--drills", "hang-notifyd", "--hold", "100",
                              "--drill-timeout", "150", "--rate", "10"),
                         env=env(ctx), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        harness.wait_until(lambda: ["systemctl", "kill", "--signal=STOP", "vigil-notifyd.service"]
                           in commands(ctx), 60, what="the SIGSTOP")
        harness.wait_until(lambda: proc_state(pid) == "T", 10, what="notifyd stopped")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    print(err)
    check(p.returncode not in (0, 2), f"exit {p.returncode}")
    check_eq(p.returncode, 1, "exit status after SIGTERM")
    cmds = commands(ctx)
    stop = cmds.index(["systemctl", "kill", "--signal=STOP", "vigil-notifyd.service"])
    after = cmds[stop + 1:]
    for c in (["systemctl", "kill", "--signal=CONT", "vigil-notifyd.service"],
              ["systemctl", "stop", "vigil-chaos-restore-hang-notifyd.timer",
               "vigil-chaos-restore-hang-notifyd.service"]):
        check(c in after, f"no {c} after the SIGSTOP: {after}")
    armed = [c for c in cmds[:stop] if c[0] == "systemd-run"]
    check(armed and armed[0][-4:] == ["systemctl", "kill", "--signal=CONT", "vigil-notifyd.service"],
          f"the safety timer before the SIGSTOP: {armed}")
    check("interrupted by SIGTERM" in err and "restore" in err, f"stderr: {err}")
    check("interrupted by SIGTERM" in out, "the report says it was interrupted")
    check(proc_state(pid) != "T", "notifyd is still stopped")
    harness.wait_until(lambda: all_ready(ctx), 30, what="every daemon ready again")


@test
def test_bad_usage_and_environment_exit_2_touching_nothing(ctx):
    reset(ctx)
    users = chaos_users(ctx)
    missing = os.path.join(ctx.tmp, "no-such-etc")
    cases = (
        (["--drills", "kill-sshd"], "unknown drill"),
        (["--drills", "stop-nginx"], "unknown drill"),
        (["--drills", "kill-alertbotd"], "not installed"),
        (["--drills", "kill-authd,kill-authd"], "twice"),
        (["--drills", ","], "at least one"),
        (["--hold", "0"], "--hold"),
        (["--hold", "nan"], "--hold"),
        (["--hold", "30", "--drill-timeout", "20"], "longer than"),
        (["--rate", "-1"], "--rate"),
        (["--requests", "0"], "--requests"),
        (["--url", "authd=ftp://x"], "--url"),
        (["--gateway", "localhost"], "--gateway"),
        (["--etc", missing], "does not exist"),
        (["--bogus"], "unrecognized"),
    )
    for args, words in cases:
        r = vigilctl(ctx, "--drills", "kill-notifyd", *args) if "--drills" not in args \
            else vigilctl(ctx, *args)
        check_eq(r.returncode, 2, f"{args}: {r.stdout} {r.stderr}")
        check(words in r.stderr, f"{args}: error does not say {words!r}: {r.stderr!r}")
    # The environment: checked before anything is touched.
    closed = f"http://127.0.0.1:{harness.closed_port()}"
    cmd = argv(ctx, "--drills", "kill-notifyd")
    cmd[cmd.index("--gateway") + 1] = closed
    r = subprocess.run(cmd, env=env(ctx), capture_output=True, text=True, timeout=60, check=False)
    check_eq(r.returncode, 2, f"gateway down: {r.stderr}")
    check("the gateway" in r.stderr, f"gateway down: {r.stderr}")
    cmd = argv(ctx, "--drills", "kill-notifyd")
    cmd[cmd.index("--database") + 1] = "host=/nonexistent dbname=vigil"
    r = subprocess.run(cmd, env=env(ctx), capture_output=True, text=True, timeout=60, check=False)
    check_eq(r.returncode, 2, f"database unreachable: {r.stderr}")
    check("the database" in r.stderr, f"database unreachable: {r.stderr}")
    check_eq(commands(ctx), [], "commands run")
    check_eq(chaos_users(ctx), users, "users registered")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=[VIGILCTL] + [harness.daemon_binary(d) for d in DAEMONS]))
