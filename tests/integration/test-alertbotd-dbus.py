#!/usr/bin/env python3
"""vigil-alertbotd against a real D-Bus: a private dbus-daemon, a fake
org.freedesktop.systemd1 (tests/integration/fake-systemd, sd-bus) that
records every call and answers RestartUnit with a job whose JobRemoved
result and delay the test chooses, an escalation receiver and a /ready
endpoint, both in this process.

Covers: call arguments (RestartUnit(unit, "replace") after Subscribe),
waiting for JobRemoved, ActiveState and /ready verification, failed jobs
opening the breaker, escalation with JSON and bearer token, cooldown,
budget, dry-run, allowlist refusals (the bot's own and a polkit-style
AccessDenied), dedup of a redelivered alert, resolved notifications, state
surviving a restart of the bot, /incidents, audit MESSAGE_IDs and metrics.
"""

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (Daemon, Runner, check, check_eq, check_error, metric_value,  # noqa: E402
                     parse_metrics, wait_until)

runner = Runner("test-alertbotd-dbus")

FAKE_SYSTEMD = os.path.join(harness.TOP_BUILDDIR, "tests", "integration", "fake-systemd")
BOT = harness.daemon_binary("alertbotd")
WEBHOOK_TOKEN = "webhook-token-" + os.urandom(12).hex()
ESCALATION_TOKEN = "escalation-token-" + os.urandom(12).hex()

# MESSAGE_IDs of the audit records (docs/alertbot.md).
MSG = {
    "acted": "8fa5e36ef7934bd7ad1a5b385a4e81c8",
    "failed": "921e60d90ea547238d9985a44b17dd0e",
    "skipped_cooldown": "57808b0596314f2ab48ee04197ccd8f8",
    "skipped_budget": "2137a6ab35e043b2b7f4a3707d7d8d7c",
    "skipped_breaker": "f311ce8ab2da4f9b985235429606b923",
    "dry_run": "d02da98cdff5496d94379b01165de0fe",
    "refused_allowlist": "ee06a8d952b040f38852d559d7f94fa7",
    "duplicate": "1554b0b6c8fa4baf9cca372d712731bc",
    "resolved": "2db92e48889241bbbaa31f40d68d21b1",
}

BASE_POLICY = """\
[policy]
allowlist = vigil-authd.service vigil-paymentd.service vigil-inventoryd.service
allowlist = vigil-notifyd.service vigil-flaky.service
allowlist = vigil-budget1.service vigil-budget2.service vigil-budget3.service
cooldown_seconds = {cooldown}
budget_per_hour = {budget}
breaker_failures = 2
breaker_window_seconds = 3600
breaker_half_open_after_seconds = 3600
verify_timeout_seconds = 5

[rule.VigilDaemonDown]
unit_label = unit
action = restart

[rule.ForcedRestart]
unit = sshd.service
action = restart

[unit.vigil-inventoryd.service]
ready_url = http://127.0.0.1:{ready_port}/ready
"""


class Receiver:
    """HTTP server on loopback: POST /escalate records (headers, JSON body);
    GET /ready answers 503 for the first `not_ready` requests, then 200."""

    def __init__(self):
        self.lock = threading.Lock()
        self.escalations = []
        self.ready_requests = 0
        self.not_ready = 0
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status, body=b"{}"):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n).decode())
                with rec.lock:
                    rec.escalations.append((dict(self.headers), body))
                self._reply(200)

            def do_GET(self):  # noqa: N802
                with rec.lock:
                    rec.ready_requests += 1
                    ok = rec.ready_requests > rec.not_ready
                self._reply(200 if ok else 503)

        self.server = http.server.ThreadingHTTPServer((harness.LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def wait_escalation(self, predicate, timeout=15, what="escalation"):
        def find():
            with self.lock:
                for headers, body in self.escalations:
                    if predicate(body):
                        return headers, body
            return None
        return wait_until(find, timeout, interval=0.05, what=what)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Bus:
    """A private dbus-daemon and the fake systemd on it."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "fake")
        os.mkdir(self.dir)
        conf = os.path.join(tmp, "bus.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={tmp}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
""")
        self.daemon = subprocess.Popen(["dbus-daemon", "--config-file", conf, "--print-address",
                                        "--nofork"], stdout=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL)
        self.address = self.daemon.stdout.readline().decode().strip()
        check(self.address.startswith("unix:"), f"dbus-daemon printed {self.address!r}")
        self.fake_log = open(os.path.join(tmp, "fake-systemd.log"), "wb")
        self.fake = subprocess.Popen([FAKE_SYSTEMD, self.address, self.dir],
                                     stdin=subprocess.DEVNULL, stdout=self.fake_log,
                                     stderr=self.fake_log)
        wait_until(lambda: os.path.exists(os.path.join(self.dir, "ready")), 10,
                   what="fake systemd on the bus")

    def behave(self, unit, **kw):
        with open(os.path.join(self.dir, f"{unit}.conf"), "w", encoding="utf-8") as f:
            for k, v in kw.items():
                f.write(f"{k}={v}\n")

    def calls(self):
        try:
            with open(os.path.join(self.dir, "calls.log"), encoding="utf-8") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def restarts(self, unit):
        return [c for c in self.calls() if c.startswith(f"RestartUnit {unit} ")]

    def close(self):
        for p in (self.fake, self.daemon):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.fake_log.close()


_seq = [0]


def alert(unit=None, name="VigilDaemonDown", status="firing", fingerprint=None,
          starts_at=None, labels=None):
    _seq[0] += 1
    lbl = {"alertname": name, "severity": "page", "remediation": "restart"}
    if unit:
        lbl["unit"] = unit
    lbl.update(labels or {})
    return {
        "status": status,
        "labels": lbl,
        "annotations": {"summary": f"{unit} is down"},
        "startsAt": starts_at or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) +
        f".{_seq[0]:06d}Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": fingerprint or f"{os.getpid():x}{_seq[0]:08x}",
    }


def payload(*alerts, status="firing"):
    return {"version": "4", "status": status, "receiver": "alertbot",
            "groupKey": "{}:{alertname=\"VigilDaemonDown\"}", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093", "truncatedAlerts": 0,
            "alerts": list(alerts)}


def post(bot, body, token=WEBHOOK_TOKEN):
    return bot.post("/webhook", body, token=token)


def deliver(bot, *alerts, status="firing"):
    r = post(bot, payload(*alerts, status=status))
    check_eq(r.status, 200, f"webhook answer {r.body!r}")
    return r.body["decisions"]


def incident(bot, fingerprint):
    r = bot.get("/incidents")
    check_eq(r.status, 200, "GET /incidents")
    for inc in r.body["incidents"]:
        if inc["fingerprint"] == fingerprint:
            return inc
    return None


def wait_action(bot, fingerprint, what="action result"):
    """The incident once its last action has a final result."""
    def done():
        inc = incident(bot, fingerprint)
        if inc and inc["actions"] and inc["actions"][-1]["result"] not in ("started",):
            return inc
        return None
    return wait_until(done, 20, interval=0.05, what=what)


def audit_lines(bot, kind):
    return [ln for ln in bot.log_text().splitlines() if f"message_id={MSG[kind]}" in ln]


def metrics(bot):
    r = bot.get("/metrics")
    check_eq(r.status, 200, "GET /metrics")
    return parse_metrics(r.body.decode())


def new_bot(ctx, cooldown=600, budget=20, dry_run=False, state_dir=None, start=True):
    tmp = tempfile.mkdtemp(prefix="vigil-alertbot-test-", dir=ctx.tmp)
    policy = os.path.join(tmp, "policy.conf")
    with open(policy, "w", encoding="utf-8") as f:
        f.write(BASE_POLICY.format(cooldown=cooldown, budget=budget,
                                   ready_port=ctx.receiver.port))
    state = state_dir or os.path.join(tmp, "state")
    os.makedirs(state, exist_ok=True)
    env = {
        "VIGIL_SYSTEMD_BUS": ctx.bus.address,
        "VIGIL_STATE_DIRECTORY": state,
        "VIGIL_POLICY_FILE": policy,
        "VIGIL_POLICY_DRY_RUN": "true" if dry_run else "false",
        "VIGIL_ESCALATION_URL": f"http://{harness.LOOPBACK}:{ctx.receiver.port}/escalate",
        "VIGIL_ESCALATION_INITIAL_BACKOFF_MS": "50",
        "VIGIL_TRACING_OTLP_ENDPOINT": "",
    }
    d = Daemon("alertbotd", env=env, credentials={"webhook-token": WEBHOOK_TOKEN,
                                                  "escalation-token": ESCALATION_TOKEN})
    d.policy_path = policy
    d.state_dir = state
    ctx.daemons.append(d)
    ctx.cleanup(d.close)
    if start:
        d.start()
    return d


def setup(ctx):
    for b in (FAKE_SYSTEMD, BOT):
        if not os.path.exists(b):
            raise AssertionError(f"{b} is not built")
    if not shutil.which("dbus-daemon"):
        print("SKIP: dbus-daemon is not installed (Debian package dbus-daemon)")
        sys.exit(harness.SKIP)
    ctx.tmp = tempfile.mkdtemp(prefix="vigil-alertbotd-dbus-")
    ctx.cleanup(lambda: harness._rmtree(ctx.tmp))
    ctx.receiver = Receiver()
    ctx.cleanup(ctx.receiver.close)
    ctx.bus = Bus(ctx.tmp)
    ctx.cleanup(ctx.bus.close)
    ctx.bot = new_bot(ctx)


@runner.test
def test_refuses_to_start_without_the_webhook_token(ctx):
    d = new_bot(ctx, start=False)
    d.set_credential("webhook-token", None)
    p = d.run("--config", d.config)
    check(p.returncode != 0, "started without a webhook token")
    check("webhook-token" in p.stderr, f"the message names the credential: {p.stderr!r}")


@runner.test
def test_webhook_requires_the_bearer_token(ctx):
    body = payload(alert("vigil-notifyd.service"))
    check_error(post(ctx.bot, body, token=None), 401, "unauthorized")
    check_error(post(ctx.bot, body, token="wrong" + WEBHOOK_TOKEN), 401, "unauthorized")
    check_eq(ctx.bus.restarts("vigil-notifyd.service"), [], "RestartUnit calls")


@runner.test
def test_malformed_payloads_get_400_and_huge_ones_413(ctx):
    check_error(post(ctx.bot, "{not json"), 400, "invalid_json")
    bad = payload(alert("vigil-notifyd.service"))
    bad["version"] = "3"
    check_error(post(ctx.bot, bad), 400, "unsupported_version")
    check_error(post(ctx.bot, payload({"status": "firing", "labels": {}})), 400,
                "missing_field")
    many = payload(*[alert("vigil-notifyd.service") for _ in range(1001)])
    check_error(post(ctx.bot, many), 400, "too_many_alerts")
    huge = b'{"version":"4","pad":"' + b"x" * (1024 * 1024) + b'"}'
    # Raw: the server answers 413 from the Content-Length and may close
    # before the body is sent, which http.client reports as a broken pipe.
    head = (f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {WEBHOOK_TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(huge)}\r\nConnection: close\r\n\r\n").encode()
    check_error(ctx.bot.raw(head + huge), 413, "payload_too_large")
    check_eq(ctx.bus.restarts("vigil-notifyd.service"), [], "RestartUnit calls")


@runner.test
def test_alert_restarts_the_unit_and_waits_for_its_job(ctx):
    bus, bot = ctx.bus, ctx.bot
    bus.behave("vigil-authd.service", result="done", delay_ms=1500, active_state="active")
    a = alert("vigil-authd.service")
    ctx.authd_alert = a
    decisions = deliver(bot, a)
    check_eq(decisions, {"acted": 1}, "decisions")
    inc = wait_action(bot, a["fingerprint"])
    act = inc["actions"][-1]
    check_eq((act["decision"], act["action"], act["unit"], act["result"]),
             ("acted", "restart", "vigil-authd.service", "done"), "recorded action")
    # The job took 1.5 s: the bot waited for its JobRemoved.
    check(act["duration_ms"] >= 1400, f"did not wait for JobRemoved: {act}")
    calls = bus.calls()
    check("RestartUnit vigil-authd.service replace" in calls, f"calls: {calls}")
    i = calls.index("RestartUnit vigil-authd.service replace")
    check("Subscribe" in calls[:i], f"Subscribe before RestartUnit: {calls}")
    check("GetUnit vigil-authd.service" in calls[i:], f"GetUnit after the job: {calls}")
    check("Get vigil-authd.service ActiveState" in calls[i:], f"ActiveState read: {calls}")
    lines = wait_until(lambda: audit_lines(bot, "acted"), 5, what="audit entry")
    check("unit=vigil-authd.service" in lines[-1] and "result=done" in lines[-1] and
          "action=restart" in lines[-1] and f"fingerprint={a['fingerprint']}" in lines[-1] and
          "alert_name=VigilDaemonDown" in lines[-1] and "duration_ms=" in lines[-1],
          f"audit fields: {lines[-1]}")
    m = metrics(bot)
    check_eq(metric_value(m, "vigil_alertbot_actions_total", unit="vigil-authd.service",
                          action="restart", result="success"), 1.0, "actions_total")
    check_eq(metric_value(m, "vigil_alertbot_decision_duration_seconds_count"), 1.0,
             "decision histogram count")


@runner.test
def test_redelivered_alert_is_deduplicated(ctx):
    before = len(ctx.bus.restarts("vigil-authd.service"))
    check_eq(deliver(ctx.bot, ctx.authd_alert), {"duplicate": 1}, "decisions")
    time.sleep(0.3)
    check_eq(len(ctx.bus.restarts("vigil-authd.service")), before, "RestartUnit calls")
    check(audit_lines(ctx.bot, "duplicate"), "duplicate audited")


@runner.test
def test_second_alert_inside_the_cooldown_is_skipped(ctx):
    before = len(ctx.bus.restarts("vigil-authd.service"))
    check_eq(deliver(ctx.bot, alert("vigil-authd.service")), {"skipped_cooldown": 1},
             "decisions")
    time.sleep(0.3)
    check_eq(len(ctx.bus.restarts("vigil-authd.service")), before, "RestartUnit calls")
    check(audit_lines(ctx.bot, "skipped_cooldown"), "cooldown skip audited")


@runner.test
def test_resolved_notification_closes_the_incident(ctx):
    a = dict(ctx.authd_alert, status="resolved", endsAt="2030-01-01T00:00:00Z")
    check_eq(deliver(ctx.bot, a, status="resolved"), {"resolved": 1}, "decisions")
    inc = incident(ctx.bot, a["fingerprint"])
    check_eq(inc["status"], "resolved", "incident status")
    check("resolved_at" in inc, f"resolved_at: {inc}")


@runner.test
def test_unit_is_verified_ready_through_its_ready_url(ctx):
    rec = ctx.receiver
    with rec.lock:
        rec.ready_requests = 0
        rec.not_ready = 3
    a = alert("vigil-inventoryd.service")
    check_eq(deliver(ctx.bot, a), {"acted": 1}, "decisions")
    act = wait_action(ctx.bot, a["fingerprint"])["actions"][-1]
    check_eq(act["result"], "done", "verified once /ready answered 200")
    check(rec.ready_requests >= 4, f"/ready polled {rec.ready_requests} times")


@runner.test
def test_unit_that_never_gets_ready_is_a_failed_remediation(ctx):
    rec = ctx.receiver
    with rec.lock:
        rec.ready_requests = 0
        rec.not_ready = 10 ** 6
    bot = new_bot(ctx, cooldown=0)
    a = alert("vigil-inventoryd.service")
    check_eq(deliver(bot, a), {"acted": 1}, "decisions")
    act = wait_action(bot, a["fingerprint"])["actions"][-1]
    check_eq((act["decision"], act["result"]), ("failed", "not_ready"), "outcome")
    rec.wait_escalation(lambda b: b["alert"]["fingerprint"] == a["fingerprint"])
    with rec.lock:
        rec.not_ready = 0


@runner.test
def test_failed_jobs_open_the_breaker_which_escalates(ctx):
    bus, rec = ctx.bus, ctx.receiver
    unit = "vigil-flaky.service"
    bus.behave(unit, result="failed", delay_ms=20)
    bot = new_bot(ctx, cooldown=0)
    for n in (1, 2):
        a = alert(unit)
        check_eq(deliver(bot, a), {"acted": 1}, f"decision {n}")
        act = wait_action(bot, a["fingerprint"])["actions"][-1]
        check_eq((act["decision"], act["result"]), ("failed", "job_failed"), f"outcome {n}")
        headers, body = rec.wait_escalation(
            lambda b, fp=a["fingerprint"]: b["alert"]["fingerprint"] == fp)
        check_eq(headers.get("Authorization"), f"Bearer {ESCALATION_TOKEN}", "bearer token")
        check_eq(body["results"][0]["outcome"], "job_failed", "escalated result")
        check_eq(body["results"][0]["job_result"], "failed", "JobRemoved result")
        check(body["actions"] and body["actions"][-1]["unit"] == unit, f"actions: {body}")
        check_eq(body["alert"]["labels"]["unit"], unit, "alert labels")
    check_eq(metric_value(metrics(bot), "vigil_alertbot_circuit_open", unit=unit), 1.0,
             "circuit_open gauge")
    a = alert(unit)
    check_eq(deliver(bot, a), {"skipped_breaker": 1}, "third alert")
    _, body = rec.wait_escalation(lambda b: b["alert"]["fingerprint"] == a["fingerprint"])
    check_eq(body["results"][0]["decision"], "skipped_breaker", "escalated decision")
    time.sleep(0.3)
    check_eq(len(bus.restarts(unit)), 2, "RestartUnit calls with the breaker open")
    check(audit_lines(bot, "failed") and audit_lines(bot, "skipped_breaker"), "audited")
    check_eq(metric_value(metrics(bot), "vigil_alertbot_actions_total", unit=unit,
                          action="restart", result="failure"), 2.0, "failures counted")


@runner.test
def test_budget_caps_restarts_and_escalates(ctx):
    bot = new_bot(ctx, cooldown=0, budget=2)
    units = ["vigil-budget1.service", "vigil-budget2.service", "vigil-budget3.service"]
    alerts = [alert(u) for u in units]
    check_eq(deliver(bot, *alerts), {"acted": 2, "skipped_budget": 1}, "decisions")
    ctx.receiver.wait_escalation(lambda b: b["alert"]["fingerprint"] == alerts[2]["fingerprint"]
                                 and b["results"][0]["decision"] == "skipped_budget")
    for a in alerts[:2]:
        wait_action(bot, a["fingerprint"])
    check_eq(len(ctx.bus.restarts(units[2])), 0, "no restart past the budget")
    check(audit_lines(bot, "skipped_budget"), "audited")


@runner.test
def test_dry_run_decides_but_never_calls_restart_unit(ctx):
    bot = new_bot(ctx, dry_run=True)
    a = alert("vigil-notifyd.service")
    check_eq(deliver(bot, a), {"dry_run": 1}, "decisions")
    time.sleep(0.5)
    check_eq(ctx.bus.restarts("vigil-notifyd.service"), [], "RestartUnit calls")
    check(audit_lines(bot, "dry_run"), "audited")
    check_eq(incident(bot, a["fingerprint"])["actions"][-1]["decision"], "dry_run", "recorded")


@runner.test
def test_units_outside_the_allowlist_are_refused(ctx):
    rec = ctx.receiver
    check_eq(deliver(ctx.bot, alert("sshd.service")), {"refused_allowlist": 1}, "label unit")
    check_eq(deliver(ctx.bot, alert("vigil-authd.socket")), {"refused_allowlist": 1}, "socket")
    forced = alert(None, name="ForcedRestart")
    check_eq(deliver(ctx.bot, forced), {"refused_allowlist": 1}, "forced unit")
    _, body = rec.wait_escalation(lambda b: b["alert"]["fingerprint"] == forced["fingerprint"])
    check_eq(body["results"][0]["unit"], "sshd.service", "escalated unit")
    time.sleep(0.3)
    check_eq(ctx.bus.restarts("sshd.service"), [], "RestartUnit calls")
    check(len(audit_lines(ctx.bot, "refused_allowlist")) >= 3, "audited")


@runner.test
def test_refused_unit_names_make_no_metric_series(ctx):
    # Whoever can post an alert chooses its unit label: refusals are counted
    # under one series, unit="other", never one series per name sent.
    bot = new_bot(ctx)
    names = [f"x{i}-{os.getpid()}.service" for i in range(20)]
    for name in names:
        check_eq(deliver(bot, alert(name)), {"refused_allowlist": 1}, name)
    m = metrics(bot)
    series = {s.labels.get("unit") for s in m if s.name == "vigil_alertbot_actions_total"}
    check_eq(series & set(names), set(), "series named after refused units")
    check_eq(metric_value(m, "vigil_alertbot_actions_total", unit="other", action="restart",
                          result="refused_allowlist"), float(len(names)), "refusals counted")


@runner.test
def test_access_denied_by_systemd_is_a_failed_remediation(ctx):
    ctx.bus.behave("vigil-paymentd.service", deny=1)
    a = alert("vigil-paymentd.service")
    check_eq(deliver(ctx.bot, a), {"acted": 1}, "decisions")
    act = wait_action(ctx.bot, a["fingerprint"])["actions"][-1]
    check_eq((act["decision"], act["result"]), ("failed", "denied"), "outcome")
    ctx.receiver.wait_escalation(lambda b: b["alert"]["fingerprint"] == a["fingerprint"])


@runner.test
def test_state_survives_a_restart_of_the_bot(ctx):
    ctx.bot.restart()
    check(incident(ctx.bot, ctx.authd_alert["fingerprint"]), "incident kept")
    # Redelivery still deduplicated, cooldown still in force.
    check_eq(deliver(ctx.bot, ctx.authd_alert), {"duplicate": 1}, "redelivery")
    before = len(ctx.bus.restarts("vigil-authd.service"))
    check_eq(deliver(ctx.bot, alert("vigil-authd.service")), {"skipped_cooldown": 1},
             "cooldown after restart")
    time.sleep(0.3)
    check_eq(len(ctx.bus.restarts("vigil-authd.service")), before, "RestartUnit calls")


@runner.test
def test_incidents_are_listed_newest_first(ctx):
    r = ctx.bot.get("/incidents")
    check_eq(r.status, 200, "status")
    incs = r.body["incidents"]
    check(len(incs) >= 5, f"incidents: {len(incs)}")
    opened = [i["opened_at"] for i in incs]
    check_eq(opened, sorted(opened, reverse=True), "newest first")
    for i in incs:
        check(set(i) >= {"alertname", "fingerprint", "starts_at", "unit", "status",
                         "opened_at", "actions"}, f"fields: {i}")


@runner.test
def test_sighup_with_a_broken_policy_keeps_the_old_one(ctx):
    bot = ctx.bot
    with open(bot.policy_path, encoding="utf-8") as f:
        good = f.read()
    with open(bot.policy_path, "w", encoding="utf-8") as f:
        f.write(good + "\n[rule.Broken]\naction = explode\n")
    bot.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "Invalid policy" in bot.log_text(), 10, what="reload refused")
    check(bot.alive(), "still running")
    check_eq(deliver(bot, alert("vigil-authd.service")), {"skipped_cooldown": 1},
             "old policy in force")
    with open(bot.policy_path, "w", encoding="utf-8") as f:
        f.write(good.replace("cooldown_seconds = 600", "cooldown_seconds = 0"))
    bot.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "Policy reloaded" in bot.log_text(), 10, what="reload")
    ctx.bus.behave("vigil-authd.service", result="done", delay_ms=10)
    a = alert("vigil-authd.service")
    check_eq(deliver(bot, a), {"acted": 1}, "new policy in force")
    wait_action(bot, a["fingerprint"])


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=(BOT, FAKE_SYSTEMD)))
