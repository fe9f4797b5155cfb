#!/usr/bin/env python3
"""`vigilctl fault` against a real vigil-authd (PostgreSQL, Redis), with
systemctl and systemd-run replaced by fakes (systemd is not PID 1 here):
they record every command, and the fake `systemctl reload vigil-authd.service`
sends SIGHUP to the daemon, as the unit's ExecReload does.

vigilctl arms the clear timer before it writes the drop-in, writes the
keys where the daemon reads them, reloads, and the daemon then answers
with the fault; the timer's command alone (vigilctl gone) removes it; --clear
removes it now; --list shows it with its end; bad input and a refused reload
leave nothing behind. By hand:
  top_builddir=/path/to/build python3 tests/integration/test-vigilctl-fault.py [TEST...]
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq, check_error  # noqa: E402

runner = harness.Runner("test-vigilctl-fault")
test = runner.test

VIGILCTL = os.path.join(harness.TOP_BUILDDIR, "src", "vigilctl", "vigilctl")
MODULES = os.path.join(harness.TOP_SRCDIR, "src", "vigilctl", "modules")
DROPIN = "50-vigilctl-fault.conf"

# Both fakes append their argv as one JSON line to $FAKE_LOG; systemd-run
# also records whether the drop-in ($FAKE_WATCH) existed when it was armed.
FAKE_SYSTEMCTL = """#!/usr/bin/python3
import json, os, signal, sys
d = os.environ["FAKE_DIR"]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:]}) + "\\n")
args = sys.argv[1:]
if args[:1] == ["reload"]:
    if os.path.exists(os.path.join(d, "reload-fails")):
        sys.stderr.write("Job for %s failed.\\n" % args[1])
        sys.exit(1)
    pidfile = os.path.join(d, args[1] + ".pid")
    if os.path.exists(pidfile):
        os.kill(int(open(pidfile).read()), signal.SIGHUP)
elif args[:1] == ["show"]:
    print("active" if os.path.exists(os.path.join(d, "armed")) else "inactive")
elif args[:1] == ["stop"]:
    if os.path.exists(os.path.join(d, "armed")):
        os.unlink(os.path.join(d, "armed"))
"""
FAKE_SYSTEMD_RUN = """#!/usr/bin/python3
import json, os, sys
d = os.environ["FAKE_DIR"]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"argv": ["systemd-run"] + sys.argv[1:],
                        "dropin_existed": os.path.exists(os.environ["FAKE_WATCH"])}) + "\\n")
open(os.path.join(d, "armed"), "w").close()
"""


def setup(ctx):
    harness.start_authd_stack(ctx)
    ctx.etc = ctx.authd.dir  # the daemon reads ctx.etc/authd.conf and authd.conf.d/
    ctx.dropin = os.path.join(ctx.etc, "authd.conf.d", DROPIN)
    ctx.fake = tempfile.mkdtemp(prefix="vigil-fake-systemd-")
    ctx.cleanup(lambda: shutil.rmtree(ctx.fake, ignore_errors=True))
    ctx.bin = os.path.join(ctx.fake, "bin")
    os.mkdir(ctx.bin)
    for name, text in (("systemctl", FAKE_SYSTEMCTL), ("systemd-run", FAKE_SYSTEMD_RUN)):
        path = os.path.join(ctx.bin, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o755)
    with open(os.path.join(ctx.fake, "vigil-authd.service.pid"), "w", encoding="utf-8") as f:
        f.write(str(ctx.authd.proc.pid))
    ctx.log = os.path.join(ctx.fake, "commands.log")


# --------------------------------------------------------------------------
# helpers

def env(ctx):
    e = dict(os.environ)
    e.update({"PATH": ctx.bin + os.pathsep + e.get("PATH", "/usr/bin:/bin"),
              "VIGILCTL_MODULES": MODULES, "FAKE_DIR": ctx.fake, "FAKE_LOG": ctx.log,
              "FAKE_WATCH": ctx.dropin})
    return e


def vigilctl(ctx, *args):
    return subprocess.run([VIGILCTL, "fault", "--etc", ctx.etc, *args], env=env(ctx),
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


def commands(ctx):
    if not os.path.exists(ctx.log):
        return []
    with open(ctx.log, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def reset(ctx):
    for p in (ctx.log, ctx.dropin, os.path.join(ctx.fake, "reload-fails"),
              os.path.join(ctx.fake, "armed")):
        if os.path.exists(p):
            os.unlink(p)


def reloads(ctx):
    text = ctx.authd.log_text()
    return text.count("Configuration reloaded") + text.count("Reload failed")


def wait_reloaded(ctx, before):
    harness.wait_until(lambda: reloads(ctx) > before, 15, what="authd to apply the reload")


def verify_status(ctx):
    return ctx.authd.post("/verify", token=ctx.token).status


def fault_active(ctx, fault):
    samples = harness.parse_metrics(ctx.authd.get("/metrics").body.decode())
    return harness.metric_value(samples, "vigil_fault_active", fault=fault)


def set_fault(ctx, *args):
    before = reloads(ctx)
    r = vigilctl(ctx, "authd", *args)
    check_eq(r.returncode, 0, f"vigilctl fault authd {' '.join(args)}: {r.stderr}")
    wait_reloaded(ctx, before)
    return r


# --------------------------------------------------------------------------
# tests

@test
def test_fault_arms_the_clear_before_writing_then_reloads_and_the_daemon_fails(ctx):
    reset(ctx)
    ctx.token, _, _ = harness.new_session(ctx.authd)
    check_eq(verify_status(ctx), 200, "POST /verify before the fault")
    r = set_fault(ctx, "error_ratio=1", "routes=/verify", "--for", "5m")
    check("until" in r.stdout and "vigil-fault-clear-authd.timer" in r.stdout,
          f"vigilctl's answer: {r.stdout!r}")

    cmds = commands(ctx)
    argvs = [c["argv"] for c in cmds]
    runs = [i for i, a in enumerate(argvs) if a[0] == "systemd-run"]
    reload_i = [i for i, a in enumerate(argvs) if a[:2] == ["reload", "vigil-authd.service"]]
    check_eq(len(runs), 1, f"systemd-run calls in {argvs}")
    check_eq(len(reload_i), 1, f"reloads in {argvs}")
    check(runs[0] < reload_i[0], f"the clear timer was armed after the reload: {argvs}")
    check(cmds[runs[0]]["dropin_existed"] is False,
          "the drop-in was written before the clear timer was armed")
    armed = argvs[runs[0]]
    check("--on-active=300s" in armed, f"--on-active: {armed}")
    check("--unit=vigil-fault-clear-authd" in armed, f"--unit: {armed}")

    with open(ctx.dropin, encoding="utf-8") as f:
        text = f.read()
    check("[faults]\nerror_ratio = 1\nroutes = /verify\n" in text, f"drop-in: {text!r}")
    check_error(ctx.authd.post("/verify", token=ctx.token), 503, "unavailable",
                "POST /verify under the fault")
    check_eq(ctx.authd.get("/ready").status, 200, "/ready under the fault")
    check_eq(fault_active(ctx, "error_ratio"), 1, "vigil_fault_active{error_ratio}")


@test
def test_the_timer_command_alone_removes_the_fault(ctx):
    reset(ctx)
    ctx.token, _, _ = harness.new_session(ctx.authd)
    set_fault(ctx, "error_ratio=1", "--for", "2m")
    check_eq(verify_status(ctx), 503, "POST /verify under the fault")
    # What systemd runs when the timer elapses, with vigilctl long gone.
    armed = [c["argv"] for c in commands(ctx) if c["argv"][0] == "systemd-run"][0]
    command = armed[armed.index("--quiet") + 1:]
    before = reloads(ctx)
    r = subprocess.run(command, env=env(ctx), capture_output=True, text=True, timeout=60,
                       check=False)
    check_eq(r.returncode, 0, f"the timer's command {command}: {r.stderr}")
    wait_reloaded(ctx, before)
    check(not os.path.exists(ctx.dropin), "the drop-in is still there")
    check_eq(verify_status(ctx), 200, "POST /verify after the timer")
    check_eq(fault_active(ctx, "error_ratio"), 0, "vigil_fault_active{error_ratio}")


@test
def test_list_shows_each_fault_and_when_it_ends(ctx):
    reset(ctx)
    r = vigilctl(ctx, "--list")
    check_eq((r.returncode, r.stdout.strip()), (0, "No fault set."), "--list with none")
    t0 = datetime.datetime.now(datetime.timezone.utc)
    set_fault(ctx, "latency_ms=250", "--for", "1h30m")
    r = vigilctl(ctx, "--list", "--json")
    check_eq(r.returncode, 0, f"--list --json: {r.stderr}")
    faults = json.loads(r.stdout)["faults"]
    check_eq([(f["daemon"], f["settings"], f["timer"]) for f in faults],
             [("authd", {"latency_ms": "250"}, "active")], "listed faults")
    ends = datetime.datetime.fromisoformat(faults[0]["ends"])
    check(abs((ends - t0).total_seconds() - 5400) < 120, f"ends {ends}, set at {t0}")
    r = vigilctl(ctx, "--list")
    check(r.stdout.startswith("authd") and "latency_ms=250" in r.stdout, f"--list: {r.stdout!r}")


@test
def test_clear_removes_the_fault_now_and_disarms_the_timer(ctx):
    if not os.path.exists(ctx.dropin):
        set_fault(ctx, "latency_ms=250", "--for", "10m")
    os.unlink(ctx.log)
    before = reloads(ctx)
    r = vigilctl(ctx, "authd", "--clear")
    check_eq(r.returncode, 0, f"--clear: {r.stderr}")
    wait_reloaded(ctx, before)
    check(not os.path.exists(ctx.dropin), "the drop-in is still there")
    argvs = [c["argv"] for c in commands(ctx)]
    check(["reload", "vigil-authd.service"] in argvs, f"no reload in {argvs}")
    check(["stop", "vigil-fault-clear-authd.timer", "vigil-fault-clear-authd.service"] in argvs,
          f"the timer was not stopped: {argvs}")
    check_eq(fault_active(ctx, "latency_ms"), 0, "vigil_fault_active{latency_ms}")


@test
def test_bad_input_is_refused_before_anything_is_touched(ctx):
    reset(ctx)
    for args, words in (
            (["nosuchd", "error_ratio=1", "--for", "5m"], "unknown daemon"),
            (["authd", "error_rate=1", "--for", "5m"], "unknown key"),
            (["authd", "error_ratio=1.5", "--for", "5m"], "out of range"),
            (["authd", "latency_ms=fast", "--for", "5m"], "integer"),
            (["authd", "latency_ms=60001", "--for", "5m"], "out of range"),
            (["authd", "fail_dependency=amqp", "--for", "5m"], "postgres, redis"),
            (["authd", "routes=login", "--for", "5m"], "route pattern"),
            (["authd", "error_ratio=1\nhang_seconds=9", "--for", "5m"], "newline"),
            (["authd", "error_ratio=1"], "--for"),
            (["authd", "error_ratio=1", "--for", "5 fortnights"], "time span"),
            (["authd", "error_ratio=1", "--for", "25h"], "24 h"),
            (["authd", "error_ratio=1", "error_ratio=0", "--for", "5m"], "twice"),
            (["authd", "--for", "5m"], "KEY=VALUE"),
            (["authd", "error_ratio=1", "--clear"], "--clear"),
            (["authd", "--clear", "error_ratio=1"], "unrecognized arguments"),
            (["--list", "authd"], "--list")):
        r = vigilctl(ctx, *args)
        check_eq(r.returncode, 2, f"vigilctl fault {args}: {r.stdout} {r.stderr}")
        check(words in r.stderr, f"{args}: error does not say {words!r}: {r.stderr!r}")
        check_eq(commands(ctx), [], f"commands run for {args}")
        check(not os.path.exists(ctx.dropin), f"drop-in written for {args}")


@test
def test_a_refused_reload_leaves_nothing_behind(ctx):
    reset(ctx)
    open(os.path.join(ctx.fake, "reload-fails"), "w", encoding="utf-8").close()
    r = vigilctl(ctx, "authd", "error_ratio=1", "--for", "5m")
    check_eq(r.returncode, 1, f"vigilctl with a refused reload: {r.stdout} {r.stderr}")
    check("refused" in r.stderr, f"stderr: {r.stderr!r}")
    check(not os.path.exists(ctx.dropin), "the drop-in was left behind")
    argvs = [c["argv"] for c in commands(ctx)]
    armed = max(i for i, a in enumerate(argvs) if a[0] == "systemd-run")
    stops = [i for i, a in enumerate(argvs) if a[:2] == ["stop", "vigil-fault-clear-authd.timer"]]
    check(stops and stops[-1] > armed, f"the timer was not disarmed: {argvs}")
    os.unlink(os.path.join(ctx.fake, "reload-fails"))
    check_eq(verify_status(ctx), 200, "POST /verify after the refused fault")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=[harness.daemon_binary("authd"), VIGILCTL]))
