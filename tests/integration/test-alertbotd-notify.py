#!/usr/bin/env python3
"""vigil-alertbotd's notifications recorded on the host: Alertmanager's
`escalation` and `tickets` receivers post to POST /notify (the webhook's
bearer token); every alert is one log entry with a fixed MESSAGE_ID and
structured fields, and one entry of a bounded list, newest first, at
GET /notifications. Without `[escalation] url` (the default) the bot's own
escalations are recorded the same way (receiver "escalation") instead of
being dropped.

Covers: 401 without the token, 400/415 for bad payloads with nothing
recorded, a page (warning) and a ticket (notice) recorded, a resolved alert
(info), the log fields, the list's bound and order, the metric with its
receiver label bounded, /notify leaving the remediation state alone, and an
escalation of a refused restart recorded without an escalation token.
"""

import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (Daemon, Runner, check, check_eq, check_error, metric_value,  # noqa: E402
                     parse_metrics, wait_until)

runner = Runner("test-alertbotd-notify")

BOT = harness.daemon_binary("alertbotd")
TOKEN = "webhook-token-" + os.urandom(12).hex()
KEPT = 5

# docs/alertbot.md
FIRING_ID = "9ce3b8577a8c4d90bad16258fec98df9"
RESOLVED_ID = "70cba75ecd174fc7b6ac1ae697f97c3c"

POLICY = """\
[policy]
allowlist = vigil-authd.service
cooldown_seconds = 600
budget_per_hour = 6
breaker_failures = 2
breaker_window_seconds = 3600
breaker_half_open_after_seconds = 3600
verify_timeout_seconds = 5

[rule.VigilDaemonDown]
unit_label = unit
action = restart

[rule.VigilSshDown]
unit = sshd.service
action = restart
"""

_seq = [0]


def alert(name="VigilSLOBudgetBurnPage", severity="page", service="payment", status="firing",
          summary=None, extra=None):
    _seq[0] += 1
    labels = {"alertname": name, "severity": severity, "service": service}
    labels.update(extra or {})
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": summary or f"{name} {service} #{_seq[0]}",
                        "runbook_url": f"https://vigil.example/docs/runbooks/{name}.md"},
        "startsAt": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{_seq[0]:06d}Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": f"{os.getpid():x}{_seq[0]:08x}",
    }


def payload(receiver, *alerts, status="firing"):
    return {"version": "4", "status": status, "receiver": receiver,
            "groupKey": "{}:{alertname=\"x\"}", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
            "truncatedAlerts": 0, "alerts": list(alerts)}


def notify(bot, body, token=TOKEN, **kw):
    return bot.post("/notify", body, token=token, **kw)


def listed(bot):
    r = bot.get("/notifications")
    check_eq(r.status, 200, "GET /notifications")
    return r.body["notifications"]


def metrics(bot):
    r = bot.get("/metrics")
    check_eq(r.status, 200, "GET /metrics")
    return parse_metrics(r.body.decode())


LOGFMT = re.compile(r'([a-z0-9_]+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line):
    out = {}
    for k, v in LOGFMT.findall(line):
        if v.startswith('"'):
            v = re.sub(r'\\(.)', r'\1', v[1:-1])
        out[k] = v
    return out


def log_entries(bot, message_id=None):
    """The bot's notification log entries (logfmt on stderr), as dicts."""
    ids = {message_id} if message_id else {FIRING_ID, RESOLVED_ID}
    return [e for e in (logfmt(ln) for ln in bot.log_text().splitlines())
            if e.get("message_id") in ids]


def new_bot(ctx, env=None, credentials=None):
    tmp = tempfile.mkdtemp(prefix="vigil-alertbot-notify-", dir=ctx.tmp)
    policy = os.path.join(tmp, "policy.conf")
    with open(policy, "w", encoding="utf-8") as f:
        f.write(POLICY)
    state = os.path.join(tmp, "state")
    os.mkdir(state)
    e = {
        # Nothing here may restart a unit: no bus to reach.
        "VIGIL_SYSTEMD_BUS": f"unix:path={tmp}/no-bus",
        "VIGIL_STATE_DIRECTORY": state,
        "VIGIL_POLICY_FILE": policy,
        "VIGIL_TRACING_OTLP_ENDPOINT": "",
        "VIGIL_NOTIFICATIONS_KEPT": str(KEPT),
    }
    e.update(env or {})
    d = Daemon("alertbotd", env=e, credentials=credentials or {"webhook-token": TOKEN})
    ctx.cleanup(d.close)
    d.start()
    return d


def setup(ctx):
    ctx.tmp = tempfile.mkdtemp(prefix="vigil-alertbotd-notify-")
    ctx.cleanup(lambda: harness._rmtree(ctx.tmp))  # pylint: disable=protected-access
    ctx.bot = new_bot(ctx)


@runner.test
def test_notify_requires_the_bearer_token(ctx):
    body = payload("escalation", alert())
    check_error(notify(ctx.bot, body, token=None), 401, "unauthorized")
    check_error(notify(ctx.bot, body, token="wrong" + TOKEN), 401, "unauthorized")
    check_eq(listed(ctx.bot), [], "recorded without the token")
    check_eq(log_entries(ctx.bot), [], "logged without the token")


@runner.test
def test_bad_payloads_get_400_and_record_nothing(ctx):
    bot = ctx.bot
    check_error(notify(bot, "{not json"), 400, "invalid_json")
    bad = payload("escalation", alert())
    bad["version"] = "3"
    check_error(notify(bot, bad), 400, "unsupported_version")
    check_error(notify(bot, payload("escalation", {"status": "firing", "labels": {}})), 400,
                "missing_field")
    broken = alert()
    broken["status"] = "sideways"
    check_error(notify(bot, payload("tickets", alert(), broken)), 400, "invalid_field",
                "one bad alert among good ones")
    check_error(notify(bot, payload("tickets", *[alert() for _ in range(1001)])), 400,
                "too_many_alerts")
    check_error(notify(bot, payload("escalation", alert()), headers={"Content-Type": "text/plain"}),
                415, "unsupported_media_type")
    check_eq(listed(bot), [], "recorded from a refused payload")
    check_eq(log_entries(bot), [], "logged from a refused payload")
    check_eq(metric_value(metrics(bot), "vigil_alertbot_notifications_total"), 0.0,
             "notifications counted")


@runner.test
def test_a_page_and_a_ticket_are_recorded_newest_first(ctx):
    bot = ctx.bot
    page = alert("VigilSLOBudgetBurnPage", "page", "payment",
                 summary="payment-availability is burning its budget")
    ticket = alert("VigilHostDiskWillFill", "ticket", "node", summary="disk fills in 4 days")
    r = notify(bot, payload("escalation", page))
    check_eq((r.status, r.body), (200, {"recorded": 1}), "page answer")
    r = notify(bot, payload("tickets", ticket))
    check_eq((r.status, r.body), (200, {"recorded": 1}), "ticket answer")

    got = listed(bot)
    check_eq([(n["receiver"], n["alertname"]) for n in got],
             [("tickets", "VigilHostDiskWillFill"), ("escalation", "VigilSLOBudgetBurnPage")],
             "listed, newest first")
    t, p = got
    check_eq({k: p[k] for k in ("status", "severity", "service", "summary", "starts_at",
                                "fingerprint", "runbook_url")},
             {"status": "firing", "severity": "page", "service": "payment",
              "summary": page["annotations"]["summary"], "starts_at": page["startsAt"],
              "fingerprint": page["fingerprint"], "runbook_url": page["annotations"]["runbook_url"]},
             "the page's entry")
    check(abs(p["received_at"] - time.time()) < 60, f"received_at {p['received_at']}")
    check_eq((t["severity"], t["status"], t["fingerprint"]),
             ("ticket", "firing", ticket["fingerprint"]), "the ticket's entry")

    logs = log_entries(bot, FIRING_ID)
    check_eq(len(logs), 2, f"one log entry per alert: {logs}")
    lp, lt = logs
    check_eq({k: lp.get(k) for k in ("level", "receiver", "alertname", "severity", "service",
                                     "status", "summary", "starts_at", "fingerprint")},
             {"level": "warning", "receiver": "escalation", "alertname": "VigilSLOBudgetBurnPage",
              "severity": "page", "service": "payment", "status": "firing",
              "summary": page["annotations"]["summary"], "starts_at": page["startsAt"],
              "fingerprint": page["fingerprint"]}, "the page's log fields")
    check_eq((lt.get("level"), lt.get("receiver"), lt.get("severity"), lt.get("fingerprint")),
             ("notice", "tickets", "ticket", ticket["fingerprint"]), "the ticket's log fields")
    check("VigilSLOBudgetBurnPage" in lp.get("msg", "") and "payment" in lp.get("msg", ""),
          f"message: {lp.get('msg')}")

    m = metrics(bot)
    check_eq(metric_value(m, "vigil_alertbot_notifications_total", receiver="escalation",
                          status="firing"), 1.0, "escalation firing counted")
    check_eq(metric_value(m, "vigil_alertbot_notifications_total", receiver="tickets",
                          status="firing"), 1.0, "tickets firing counted")
    ctx.page = page


@runner.test
def test_a_resolved_alert_is_recorded_as_resolved(ctx):
    bot = ctx.bot
    resolved = dict(ctx.page, status="resolved", endsAt="2030-01-01T00:00:00Z")
    r = notify(bot, payload("escalation", resolved, status="resolved"))
    check_eq(r.status, 200, "answer")
    newest = listed(bot)[0]
    check_eq((newest["status"], newest["fingerprint"], newest["receiver"]),
             ("resolved", ctx.page["fingerprint"], "escalation"), "newest entry")
    logs = log_entries(bot, RESOLVED_ID)
    check_eq(len(logs), 1, "one resolved log entry")
    check_eq((logs[0].get("level"), logs[0].get("status"), logs[0].get("fingerprint")),
             ("info", "resolved", ctx.page["fingerprint"]), "resolved log fields")
    check_eq(metric_value(metrics(bot), "vigil_alertbot_notifications_total",
                          receiver="escalation", status="resolved"), 1.0, "resolved counted")


@runner.test
def test_receivers_outside_the_shipped_ones_share_one_series(ctx):
    bot = ctx.bot
    names = [f"team-{i}-{os.getpid()}" for i in range(5)]
    for name in names:
        check_eq(notify(bot, payload(name, alert())).status, 200, name)
    check_eq(listed(bot)[0]["receiver"], names[-1], "the receiver's own name is listed")
    m = metrics(bot)
    series = {s.labels.get("receiver") for s in m if s.name == "vigil_alertbot_notifications_total"}
    check_eq(series & set(names), set(), "series named after receivers")
    check_eq(metric_value(m, "vigil_alertbot_notifications_total", receiver="other",
                          status="firing"), float(len(names)), "other receivers counted")


@runner.test
def test_the_list_keeps_only_the_newest(ctx):
    bot = ctx.bot
    before = len(log_entries(bot))
    batch = [alert("VigilBatch", "ticket", f"svc{i}") for i in range(KEPT + 7)]
    r = notify(bot, payload("tickets", *batch))
    check_eq((r.status, r.body), (200, {"recorded": len(batch)}), "answer")
    got = listed(bot)
    check_eq([n["fingerprint"] for n in got], [a["fingerprint"] for a in reversed(batch)][:KEPT],
             f"the last {KEPT}, newest first")
    check_eq(len(log_entries(bot)) - before, len(batch), "every alert logged all the same")


@runner.test
def test_notify_never_touches_the_remediation_state(ctx):
    bot = ctx.bot
    a = alert("VigilDaemonDown", "page", "auth",
              extra={"remediation": "restart", "unit": "vigil-authd.service"})
    check_eq(notify(bot, payload("escalation", a)).status, 200, "answer")
    r = bot.get("/incidents")
    check_eq((r.status, r.body["incidents"]), (200, []), "incidents after /notify")


@runner.test
def test_escalations_without_a_url_are_recorded(ctx):
    # The default [escalation] url is empty: no escalation-token needed,
    # and a refused restart (a rule forcing a unit off the allowlist, which
    # the policy escalates) is recorded here instead of being dropped.
    bot = new_bot(ctx, credentials={"webhook-token": TOKEN})
    a = alert("VigilSshDown", "page", "ssh", summary="sshd is down",
              extra={"remediation": "restart"})
    body = payload("alertbot", a)
    r = bot.post("/webhook", body, token=TOKEN)
    check_eq((r.status, r.body.get("decisions")), (200, {"refused_allowlist": 1}), "decision")

    got = wait_until(lambda: listed(bot), 10, what="the escalation recorded")
    check_eq(len(got), 1, f"entries: {got}")
    n = got[0]
    check_eq((n["receiver"], n["status"], n["alertname"], n["severity"], n["service"],
              n["fingerprint"], n["summary"]),
             ("escalation", "firing", "VigilSshDown", "page", "ssh", a["fingerprint"],
              "sshd is down"), "the escalation's entry")
    check("refused_allowlist" in n["reason"] and "sshd.service" in n["reason"],
          f"reason: {n['reason']}")
    logs = log_entries(bot, FIRING_ID)
    check_eq(len(logs), 1, "one log entry")
    check_eq((logs[0].get("receiver"), logs[0].get("level"), logs[0].get("fingerprint")),
             ("escalation", "warning", a["fingerprint"]), "log fields")
    check("refused_allowlist" in logs[0].get("reason", ""), f"REASON: {logs[0]}")
    check_eq(metric_value(metrics(bot), "vigil_alertbot_notifications_total",
                          receiver="escalation", status="firing"), 1.0, "counted")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=(BOT,)))
