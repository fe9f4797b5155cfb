#!/usr/bin/env python3
"""An SLO burn-rate alert fired end to end, with short windows.

scripts/slo-gen.py generates the shipped payment-availability SLO with every
window scaled by 1/60 (5m -> 5s, 1h -> 1m, `for: 2m` -> 2s); a real
Prometheus scrapes a real vigil-authd and vigil-paymentd of the dev stack
(PostgreSQL, Redis, RabbitMQ) every second and evaluates those rules every
second while a bounded generator sends charges (a share of them declined,
402, which must burn no budget). Errors are injected the way an operator
would: [faults] error_ratio in paymentd's config file and SIGHUP. The page
must go pending, then firing, reach the real Alertmanager (the shipped
alertmanager.yml, the bot's URLs pointed at a real vigil-alertbotd and its
timers scaled by the same 1/60) and be recorded by the bot's POST /notify
(receiver escalation, in GET /notifications and its log) -- and, once
error_ratio is 0 again, show there as resolved within the scaled 5 minutes
the shipped routing promises. A second test posts alerts to a real
Alertmanager and checks the shipped inhibitions: a down database silences
the dependency and SLO alerts of the services using it, and nothing else.
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402
import obslib  # noqa: E402
import paymentd_stack as ps  # noqa: E402
from harness import check  # noqa: E402

runner = harness.Runner("test-alert-e2e", test_timeout=150)
test = runner.test

SCALE = "1/60"
TIMER_SCALE = 1 / 60
# The shipped promise, scaled: resolved within 5 s of Prometheus resolving
# it, plus a second for polling Prometheus and the bot.
RESOLVED_WITHIN = obslib.RESOLVED_WITHIN_SECONDS * TIMER_SCALE + 1
NOTIFICATION_FIRING_ID = "9ce3b8577a8c4d90bad16258fec98df9"  # docs/alertbot.md
NOTIFICATION_RESOLVED_ID = "70cba75ecd174fc7b6ac1ae697f97c3c"
SLO = "payment-availability"
ALERT = "VigilSLOBudgetBurnPage"
# Charges: about 15/s, never longer than this in all.
TRAFFIC_MAX_SECONDS = 240
TRAFFIC_PAUSE = 0.05
DECLINE_RATIO = 0.2
FAULT_RATIO = 0.5
TOKEN = "e2e-test-webhook-token-" + os.urandom(8).hex()


def paymentd_config(error_ratio):
    return ps.config_with(processor={"decline_ratio": DECLINE_RATIO},
                          faults={"error_ratio": error_ratio})


class Traffic:
    """Charges with fresh idempotency keys in a loop, bounded in time;
    counts the answers by status (0: no answer)."""

    def __init__(self, d, token):
        self.d, self.token = d, token
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.codes = {}
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        deadline = time.monotonic() + TRAFFIC_MAX_SECONDS
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                code = ps.charge(self.d, self.token, ps.unique_key("e2e"), amount=4.2,
                                 timeout=5).status
            except OSError:
                code = 0
            with self.lock:
                self.codes[code] = self.codes.get(code, 0) + 1
            self.stop.wait(TRAFFIC_PAUSE)

    def snapshot(self):
        with self.lock:
            return dict(self.codes)

    def wait_for(self, code, more_than, what):
        """Wait until more than more_than answers with code were counted."""
        return obslib.wait_until(lambda: self.snapshot().get(code, 0) > more_than, 30,
                                 interval=0.1, what=what)


def generate_scaled_rules(tmp):
    out = os.path.join(tmp, "rules")
    p = subprocess.run([sys.executable, os.path.join(obslib.TOP_SRCDIR, "scripts", "slo-gen.py"),
                        "--windows-scale", SCALE, "--out-dir", out],
                       capture_output=True, text=True, timeout=60, check=False)
    check(p.returncode == 0, f"slo-gen failed: {p.stderr}")
    path = os.path.join(out, f"slo-{SLO}.yml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    check("[5s]" in text and "for: 2s" in text, "windows were not scaled")
    return path


def setup(ctx):
    check(obslib.Prometheus.BINARY and obslib.Alertmanager.BINARY,
          "prometheus and prometheus-alertmanager must be installed")
    ctx.tmp = harness._mkdtemp("vigil-obs-e2e-")  # pylint: disable=protected-access
    ctx.cleanup(harness._rmtree, ctx.tmp)  # pylint: disable=protected-access
    ctx.token_file = os.path.join(ctx.tmp, "webhook-token")
    with open(ctx.token_file, "w", encoding="utf-8") as f:
        f.write(TOKEN + "\n")
    # The real bot, where the shipped configuration sends every alert: its
    # POST /webhook (remediation) and POST /notify (pages and tickets).
    # Nothing here asks for a restart; no bus is reachable in any case.
    state = os.path.join(ctx.tmp, "bot-state")
    os.mkdir(state)
    ctx.bot = harness.Daemon("alertbotd", env={
        "VIGIL_POLICY_FILE": os.path.join(obslib.TOP_SRCDIR, "etc", "vigil", "alertbot-policy.conf"),
        "VIGIL_STATE_DIRECTORY": state,
        "VIGIL_SYSTEMD_BUS": f"unix:path={ctx.tmp}/no-bus",
        "VIGIL_TRACING_OTLP_ENDPOINT": "",
    }, credentials={"webhook-token": TOKEN})
    ctx.cleanup(ctx.bot.close)
    ctx.bot.start()
    # Any URL not the bot's would go to this receiver: there is none.
    ctx.webhook = obslib.WebhookReceiver()
    ctx.cleanup(ctx.webhook.close)
    ctx.am = obslib.Alertmanager(obslib.test_alertmanager_config(
        ctx.webhook, ctx.token_file, bot_port=ctx.bot.port, timer_scale=TIMER_SCALE))
    ctx.cleanup(ctx.am.close)
    ctx.am.start()

    ps.start_stack(ctx)  # PostgreSQL, Redis, RabbitMQ and authd
    ctx.paymentd = ps.new_paymentd(ctx, config=paymentd_config(0))
    ctx.paymentd.start()
    token, _, _ = harness.new_session(ctx.authd)
    rules = generate_scaled_rules(ctx.tmp)
    cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ctx.am.port}"]}]}]},
        "scrape_configs": [
            {"job_name": "auth", "static_configs": [
                {"targets": [f"127.0.0.1:{ctx.authd.port}"], "labels": {"service": "auth"}}]},
            {"job_name": "payment", "static_configs": [
                {"targets": [f"127.0.0.1:{ctx.paymentd.port}"], "labels": {"service": "payment"}}]},
        ],
    }
    ctx.prom = obslib.Prometheus(cfg, [rules], extra_args=["--rules.alert.resend-delay=1s"])
    ctx.cleanup(ctx.prom.close)
    ctx.prom.start()
    ctx.traffic = Traffic(ctx.paymentd, token)
    ctx.cleanup(ctx.traffic.thread.join, 10)
    ctx.cleanup(ctx.traffic.stop.set)
    ctx.traffic.thread.start()


def prom_alert_state(ctx):
    for a in ctx.prom.alerts():
        if a["labels"].get("alertname") == ALERT and a["labels"].get("slo") == SLO:
            return a["state"]
    return None


def scalar(ctx, expr):
    res = ctx.prom.query(expr)["data"]["result"]
    return float(res[0]["value"][1]) if res else None


def recorded(ctx, status=None, receiver=None):
    """The bot's GET /notifications entries of the page, newest first."""
    r = ctx.bot.get("/notifications")
    check(r.status == 200, f"GET /notifications: {r.status}")
    return [n for n in r.body["notifications"]
            if n["alertname"] == ALERT and n["service"] == "payment"
            and (status is None or n["status"] == status)
            and (receiver is None or n["receiver"] == receiver)]


def bot_log_entries(ctx, message_id):
    return [ln for ln in ctx.bot.log_text().splitlines()
            if f"message_id={message_id}" in ln and f"alertname={ALERT}" in ln]


def incidents_of_the_page(ctx):
    r = ctx.bot.get("/incidents")
    check(r.status == 200, f"GET /incidents: {r.status}")
    return [i for i in r.body["incidents"] if i["alertname"] == ALERT]


@test
def test_burn_rate_alert_goes_pending_then_firing_and_is_recorded_by_the_bot(ctx):
    # Healthy traffic first: the guard is satisfied, declines (402) are
    # counted as events and burn nothing.
    ctx.traffic.wait_for(402, 0, "a declined charge")

    def healthy():
        events = scalar(ctx, f'slo:sli_events:rate1h{{slo="{SLO}"}}')
        ratio = scalar(ctx, f'slo:sli_error:ratio_rate5m{{slo="{SLO}"}}')
        declines = scalar(ctx, 'sum(vigil_http_requests_total{job="payment",code="402"})')
        return events is not None and events > 1 and ratio == 0 and declines
    obslib.wait_until(healthy, 60, interval=0.5, what="healthy traffic with declines recorded")
    check(prom_alert_state(ctx) is None, "alert active before any error")
    check(not recorded(ctx), f"notified before any error: {recorded(ctx)}")

    before = ctx.traffic.snapshot()
    check(not [c for c in before if c >= 500], f"5xx before the fault was injected: {before}")
    ctx.t_fault = time.time()
    ps.reload(ctx.paymentd, paymentd_config(FAULT_RATIO))
    ctx.traffic.wait_for(503, 0, "an injected 503 (error_ratio reloaded)")

    states = []

    def firing():
        s = prom_alert_state(ctx)
        if s and (not states or states[-1] != s):
            states.append(s)
        return s == "firing"
    obslib.wait_until(firing, 60, interval=0.1, what=f"{ALERT} firing in Prometheus")
    # Pending is short (for: 2s); Prometheus' own ALERTS series proves it
    # came before firing even when polling missed it.
    now = time.time()
    q = urllib.parse.urlencode({"query": f'ALERTS{{alertname="{ALERT}",slo="{SLO}"}}',
                                "start": ctx.t_fault - 5, "end": now + 1, "step": "0.5"})
    series = ctx.prom.api(f"/api/v1/query_range?{q}")["data"]["result"]
    first = {s["metric"]["alertstate"]: float(s["values"][0][0]) for s in series}
    check("pending" in first and "firing" in first, f"ALERTS states seen: {first}, polled {states}")
    check(first["pending"] < first["firing"], f"pending at {first['pending']} not before firing "
                                              f"at {first['firing']}")

    got = obslib.wait_until(lambda: recorded(ctx, "firing"), 60, interval=0.2,
                            what=f"{ALERT} recorded by the bot's /notify")
    n = got[-1]
    check(n["receiver"] == "escalation", f"receiver {n['receiver']}")
    check(n["severity"] == "page" and n["service"] == "payment", f"entry {n}")
    check(n["summary"] and n["fingerprint"], f"entry {n}")
    check(n["runbook_url"].endswith(f"/docs/runbooks/{ALERT}.md"), f"entry {n}")
    logged = bot_log_entries(ctx, NOTIFICATION_FIRING_ID)
    check(logged and "receiver=escalation" in logged[-1] and "level=warning" in logged[-1],
          f"the bot's log entry: {logged}")
    print(f"  fault -> recorded by the bot in {time.time() - ctx.t_fault:.1f} s; polled states "
          f"{states}; charges {ctx.traffic.snapshot()}")
    # Not remediable: no incident at the bot; a page is no ticket; no URL
    # of the shipped configuration leads anywhere but the bot.
    check(not incidents_of_the_page(ctx), "an SLO page reached the bot's remediation")
    check(not recorded(ctx, receiver="tickets"), "an SLO page was recorded as a ticket")
    check(not ctx.webhook.notifications(), f"sent elsewhere: {ctx.webhook.notifications()}")


@test
def test_burn_rate_alert_shows_resolved_at_the_bot_within_5_scaled_minutes(ctx):
    check(recorded(ctx, "firing"), "needs the firing alert of the previous test")
    t0 = time.time()
    ps.reload(ctx.paymentd, paymentd_config(0))
    # Every charge answered after the reload succeeds (201) or is declined.
    n = ctx.traffic.snapshot()
    ctx.traffic.wait_for(201, n.get(201, 0) + 20, "charges succeeding again")
    before = ctx.traffic.snapshot()
    ctx.traffic.wait_for(201, before.get(201, 0) + 20, "more charges succeeding")
    after = ctx.traffic.snapshot()
    check(after.get(503, 0) == before.get(503, 0),
          f"503s after error_ratio was set back to 0: {before} -> {after}")
    obslib.wait_until(lambda: prom_alert_state(ctx) is None, 90, interval=0.25,
                      what=f"{ALERT} resolved in Prometheus")
    t_prom = time.time()
    # Newest first: the page's latest entry says resolved.
    obslib.wait_until(lambda: (lambda r: r and r[0]["status"] == "resolved")(recorded(ctx)),
                      RESOLVED_WITHIN, interval=0.1,
                      what=f"the bot's /notifications showing {ALERT} resolved within "
                           f"{RESOLVED_WITHIN:.0f} s (5 min scaled) of Prometheus resolving it")
    t_bot = time.time()
    check(bot_log_entries(ctx, NOTIFICATION_RESOLVED_ID), "no resolved entry in the bot's log")
    print(f"  fault removed -> resolved in Prometheus in {t_prom - t0:.1f} s -> at the bot "
          f"{t_bot - t_prom:.1f} s later (at most {RESOLVED_WITHIN:.0f} s); "
          f"charges {ctx.traffic.snapshot()}")
    ctx.traffic.stop.set()


def post(am, *label_sets, minutes=10):
    """Post alerts in one request, starting now. (An alert that started
    longer than group_wait ago makes Alertmanager flush its new group at
    once, which would race the inhibitor taking in a source posted in the
    same request.)"""
    now = time.time()
    am.post_alerts([{
        "labels": labels,
        "annotations": {"summary": "test"},
        "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + minutes * 60)),
    } for labels in label_sets])


@test
def test_a_down_database_inhibits_the_alerts_it_causes_and_nothing_else(ctx):
    webhook = obslib.WebhookReceiver()
    am = obslib.Alertmanager(obslib.test_alertmanager_config(webhook, ctx.token_file))
    try:
        am.start()
        source = {"alertname": "VigilPostgresDown", "dependency": "postgres", "severity": "page"}
        alerts = []
        for svc in ("payment", "inventory"):
            alerts += [{"alertname": "VigilDependencyDown", "dependency": "postgres",
                        "service": svc, "severity": "page"},
                       {"alertname": "VigilSLOBudgetBurnPage", "slo": f"{svc}-availability",
                        "service": svc, "severity": "page"}]
        alerts += [
            {"alertname": "VigilDependencyDown", "dependency": "redis", "service": "auth",
             "severity": "page"},
            {"alertname": "VigilSLOBudgetBurnPage", "slo": "notify-freshness",
             "service": "notify", "severity": "page"},
            {"alertname": "VigilSLOBudgetBurnTicket", "slo": "payment-availability",
             "service": "payment", "severity": "ticket"},
            {"alertname": "VigilSLOBudgetBurnTicket", "slo": "auth-latency",
             "service": "auth", "severity": "ticket"},
            {"alertname": "VigilSLOBudgetBurnTicket", "slo": "notify-other",
             "service": "notify", "severity": "ticket"},
        ]
        # Alertmanager's inhibitor reads new alerts on a goroutine of its
        # own, beside the dispatcher's. A group is flushed group_wait (cut
        # to 1 s here) after its first alert, and only then does the
        # inhibitor decide; alerts posted as started a minute ago were
        # flushed at once, racing it (seen failing in CI). The source also
        # goes first, as a Postgres outage's own alert does in Prometheus,
        # and the rest follow once Alertmanager holds it.
        post(am, source)
        obslib.wait_until(lambda: any(a["labels"]["alertname"] == "VigilPostgresDown"
                                      for a in am.alerts()), 10, interval=0.2,
                          what="the inhibiting alert stored")
        time.sleep(2)
        post(am, *alerts)

        def key(a):
            lab = a["labels"]
            return (lab["alertname"], lab.get("service") or lab.get("dependency"))

        want = {
            ("VigilPostgresDown", "postgres"): "active",
            ("VigilDependencyDown", "payment"): "suppressed",
            ("VigilDependencyDown", "inventory"): "suppressed",
            ("VigilSLOBudgetBurnPage", "payment"): "suppressed",
            ("VigilSLOBudgetBurnPage", "inventory"): "suppressed",
            ("VigilDependencyDown", "auth"): "active",
            ("VigilSLOBudgetBurnPage", "notify"): "active",
            ("VigilSLOBudgetBurnTicket", "payment"): "suppressed",
            # auth's own Redis is down: its SLO alerts are the outage's
            ("VigilSLOBudgetBurnTicket", "auth"): "suppressed",
            ("VigilSLOBudgetBurnTicket", "notify"): "active",
        }

        def settled():
            got = {key(a): a["status"]["state"] for a in am.alerts()}
            return got if got == want else None
        try:
            obslib.wait_until(settled, 20, interval=0.3, what="inhibitions applied")
        except AssertionError:
            got = {key(a): (a["status"]["state"], a["status"]["inhibitedBy"]) for a in am.alerts()}
            raise AssertionError(f"states {json.dumps({str(k): v for k, v in got.items()}, indent=1)}")
        # Inhibited alerts are never notified.
        time.sleep(3)
        sent = {(a["labels"]["alertname"], a["labels"].get("service"))
                for _, _, body in webhook.notifications() for a in body.get("alerts", [])}
        for (name, who), state in want.items():
            if state == "suppressed":
                check((name, who) not in sent, f"inhibited {name} {who} was notified")
    finally:
        am.close()
        webhook.close()


if __name__ == "__main__":
    if not (obslib.Prometheus.BINARY and obslib.Alertmanager.BINARY):
        print("SKIP: prometheus / prometheus-alertmanager not installed", file=sys.stderr)
        sys.exit(obslib.SKIP)
    sys.exit(runner.main(setup, binaries=(harness.authd_binary(), ps.paymentd_binary(),
                                          harness.daemon_binary("alertbotd"))))
