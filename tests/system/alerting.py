"""Alerting as vigil-monitoring installs it, made fast for the system test:
Prometheus and Alertmanager with short intervals (drop-ins), the shipped
rules with `for:` and windows scaled, the alert bot's escalations sent to a
receiver the test runs; and the helpers the alert checks share (alerts in
Prometheus and Alertmanager, the bot's audit and notifications, its policy)."""

import fractions
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from systest import MSG, TOP, journal, mexec, mwrite, request, state, status_of, wait_until

# Prometheus and Alertmanager as vigil-monitoring configures them, with the
# intervals shortened by drop-ins so an incident takes seconds, not minutes.
PROM_DROPIN = """[Service]
ExecStart=
ExecStart=/usr/bin/prometheus --config.file=/etc/prometheus/systest-prometheus.yml $ARGS
"""
AM_DROPIN = """[Service]
ExecStart=
ExecStart=/usr/bin/prometheus-alertmanager --config.file=/etc/alertmanager/systest-alertmanager.yml --cluster.listen-address= $ARGS
"""
ESCALATION_RECEIVER = r'''
import http.server, json, sys
OUT = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(n, 1 << 20)).decode("utf-8", "replace")
        rec = {"path": self.path, "authorized": self.headers.get("Authorization", "").startswith("Bearer "),
               "body": body}
        with open(OUT, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 9099), H).serve_forever()
'''
ESCALATIONS = "/run/systest-escalations.jsonl"
POLICY = "/etc/vigil/alertbot-policy.conf"
# The bot's escalations go to the test's receiver on 9099 (shipped, the url
# is empty and they are recorded on the host like pages and tickets).
BOT_ESCALATION_DROPIN = "/etc/vigil/alertbotd.conf.d/zz-systest-escalation.conf"


def prom_alerts():
    try:
        conn = http.client.HTTPConnection("127.0.0.1", 9090, timeout=5)
        conn.request("GET", "/api/v1/alerts")
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data["data"]["alerts"]
    except (OSError, ValueError, KeyError):
        return []


def am_post_alert(labels):
    """An alert posted to the real Alertmanager's API (the route and the
    webhook delivery are Alertmanager's own)."""
    conn = http.client.HTTPConnection("127.0.0.1", 9093, timeout=10)
    body = [{"labels": labels, "annotations": {"summary": "vigil system test"},
             "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    conn.request("POST", "/api/v2/alerts", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 200, f"Alertmanager refused the alert: {r.status}"


def audit(kind, unit):
    return [e for e in journal(f"MESSAGE_ID={MSG[kind]}") if e.get("UNIT") == unit]


def wait_audit(kind, unit, count=1, timeout=60):
    return wait_until(f"{count} '{kind}' audit record(s) for {unit}",
                      lambda: (lambda es: es if len(es) >= count else None)(audit(kind, unit)), timeout, 0.5)


def escalations():
    out = mexec("cat", ESCALATIONS, check=False).stdout
    recs = []
    for line in out.splitlines():
        r = json.loads(line)
        try:
            body = json.loads(r["body"])
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("source") == "vigil-alertbotd":
            recs.append((r, body))
    return recs


def bot_notifications(alertname, service, status, receiver="escalation"):
    """Entries of the bot's GET /notifications (newest first) for one alert."""
    try:
        s, b, _ = request("GET", "/notifications", port=8005)
        entries = json.loads(b)["notifications"] if s == 200 else []
    except (OSError, ValueError, KeyError):
        return []
    return [n for n in entries if n.get("alertname") == alertname and n.get("service") == service
            and n.get("status") == status and n.get("receiver") == receiver]


def set_policy(text):
    mwrite(POLICY, text)
    mexec("systemctl", "reload", "vigil-alertbotd.service")
    # SIGHUP is asynchronous: the journal says when the policy is in.
    time.sleep(1)


def bot_metric(name, unit):
    s, b, _ = request("GET", "/metrics", port=8005)
    for line in b.decode().splitlines():
        if line.startswith(name + "{") and f'unit="{unit}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


# The shipped rules, faster: every `for:` of vigil-alerts.yml becomes 6 s and
# every range window a thirtieth (15m -> 30s, at least 10 s: five scrapes);
# the SLO rules are generated again with windows and `for:` a sixtieth, as
# test-alert-e2e.py does. Thresholds stay as shipped unless a check says
# otherwise (write_alert_rules).
WINDOW_SCALE = fractions.Fraction(1, 30)
SLO_SCALE = "1/60"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def scale_windows(text, scale=WINDOW_SCALE):
    def sub(m):
        seconds = max(int(m.group(1)) * UNITS[m.group(2)] * scale, 10)
        return f"[{int(seconds)}s]"
    return re.sub(r"\[(\d+)([smhd])\]", sub, text)


def write_alert_rules(replace=()):
    """vigil-alerts.yml as shipped, scaled, with each (old, new) of replace
    applied, into the rules Prometheus reads (reload: reload_rules)."""
    text = state.setdefault("shipped_rules", mexec("cat", "/etc/prometheus/rules/vigil-alerts.yml").stdout)
    text = scale_windows(re.sub(r"\bfor: \d+[smh]\b", "for: 6s", text))
    for old, new in replace:
        assert old in text, f"no {old!r} in vigil-alerts.yml"
        text = text.replace(old, new)
    mwrite("/etc/prometheus/systest-rules/vigil-alerts.yml", text)


def reload_rules(expect):
    """Reload Prometheus and wait until a loaded rule's query contains expect."""
    mexec("systemctl", "reload", "prometheus.service")

    def loaded():
        conn = http.client.HTTPConnection("127.0.0.1", 9090, timeout=5)
        try:
            conn.request("GET", "/api/v1/rules?type=alert")
            groups = json.loads(conn.getresponse().read())["data"]["groups"]
        except (OSError, ValueError, KeyError):
            return False
        finally:
            conn.close()
        return any(expect in r["query"] for g in groups for r in g["rules"])
    wait_until(f"Prometheus rules with {expect!r}", loaded, 30, 0.5)


def write_slo_rules():
    with tempfile.TemporaryDirectory(prefix="vigil-systest-slo-") as out:
        subprocess.run([sys.executable, os.path.join(TOP, "scripts", "slo-gen.py"), "--windows-scale", SLO_SCALE,
                        "--out-dir", out], check=True, capture_output=True, timeout=60)
        for name in sorted(os.listdir(out)):
            with open(os.path.join(out, name), encoding="utf-8") as f:
                mwrite(f"/etc/prometheus/systest-rules/{name}", f.read())


def setup_alerting():
    write_alert_rules()
    write_slo_rules()
    prom = mexec("cat", "/etc/prometheus/vigil-prometheus.yml").stdout
    prom = re.sub(r"scrape_interval: \S+", "scrape_interval: 2s", prom)
    prom = re.sub(r"scrape_timeout: \S+", "scrape_timeout: 2s", prom)
    prom = re.sub(r"evaluation_interval: \S+", "evaluation_interval: 2s", prom)
    prom = prom.replace("rules/*.yml", "systest-rules/*.yml")
    mwrite("/etc/prometheus/systest-prometheus.yml", prom)
    am = mexec("cat", "/etc/alertmanager/alertmanager.yml").stdout
    am = re.sub(r"group_wait: \S+", "group_wait: 1s", am)
    am = re.sub(r"group_interval: \S+", "group_interval: 3s", am)
    mwrite("/etc/alertmanager/systest-alertmanager.yml", am)
    mwrite("/etc/systemd/system/prometheus.service.d/zz-systest.conf", PROM_DROPIN)
    mwrite("/etc/systemd/system/prometheus-alertmanager.service.d/zz-systest.conf", AM_DROPIN)
    mwrite("/root/escalation-receiver.py", ESCALATION_RECEIVER)
    mwrite("/etc/systemd/system/systest-dummy.service",
           "[Unit]\nDescription=not a vigil unit\n[Service]\nExecStart=/bin/sleep infinity\n")
    mexec("systemctl", "daemon-reload")
    mexec("systemctl", "restart", "prometheus.service", "prometheus-alertmanager.service", timeout=120)
    mexec("systemctl", "start", "systest-dummy.service")
    mexec("systemd-run", "--unit=systest-escalation", "--quiet", "/usr/bin/python3",
          "/root/escalation-receiver.py", ESCALATIONS)
    # [escalation] url is read at start (SIGHUP reloads only the policy).
    mwrite(BOT_ESCALATION_DROPIN, "[escalation]\nurl = http://127.0.0.1:9099/escalate\n")
    mexec("systemctl", "restart", "vigil-alertbotd.service", timeout=60)
    wait_until("vigil-alertbotd ready with its escalation url",
               lambda: status_of("GET", "/ready", port=8005) == 200, 30, 0.5)
    for port in (9090, 9093):
        wait_until(f"{port}/-/ready", lambda port=port: status_of("GET", "/-/ready", port=port) == 200, 60, 0.5)
    wait_until("the escalation receiver", lambda: status_of("POST", "/probe", body={}, port=9099) == 200, 20, 0.5)

    def targets_up():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", 9090, timeout=5)
            conn.request("GET", "/api/v1/query?query=up%7Bjob%3D~%22auth%7Cpayment%7Cinventory%7Cnotify%22%7D")
            res = json.loads(conn.getresponse().read())["data"]["result"]
            conn.close()
            return len(res) == 4 and all(r["value"][1] == "1" for r in res)
        except (OSError, ValueError, KeyError):
            return False
    wait_until("Prometheus scraping every daemon", targets_up, 60, 1)


def teardown_alerting():
    if not state.get("alerting"):
        return
    mexec("rm", "-f", "/etc/systemd/system/prometheus.service.d/zz-systest.conf",
          "/etc/systemd/system/prometheus-alertmanager.service.d/zz-systest.conf",
          BOT_ESCALATION_DROPIN, check=False)
    mexec("rmdir", "--ignore-fail-on-non-empty", os.path.dirname(BOT_ESCALATION_DROPIN), check=False)
    mexec("systemctl", "stop", "systest-escalation.service", "systest-dummy.service", check=False)
    mexec("systemctl", "daemon-reload", check=False)
