"""vigil-paymentd specifics shared by test-paymentd.py and test-payment-flow.py:
the stack (PostgreSQL, Redis, RabbitMQ, authd), a paymentd wired to it,
config reloads over SIGHUP, and charges that keep the response bytes."""

import http.client
import json
import os
import signal
import time

import harness
from harness import check, check_eq

SERVICES = ("postgres", "redis", "rabbitmq")
# Deterministic by default: no latency, no declines, no faults.
QUIET_PROCESSOR = {"processor": {"latency_ms": 0, "decline_ratio": 0},
                   "faults": {"error_ratio": 0, "latency_ms": 0}}


def paymentd_binary():
    return harness.daemon_binary("paymentd")


def start_stack(ctx, services=SERVICES):
    """Start the servers and an authd; fills ctx.stack and ctx.authd."""
    ctx.stack = harness.Stack(services)
    ctx.cleanup(ctx.stack.stop)
    ctx.stack.start()
    ctx.authd = harness.new_authd(ctx)
    ctx.authd.start()


def new_paymentd(ctx, env=None, config=None):
    """A paymentd (not started) wired to ctx.stack and ctx.authd, with its
    config file holding config (a {section: {key: value}} dict, default
    QUIET_PROCESSOR); registered for teardown."""
    s = ctx.stack.env
    with open(s["VIGIL_DEV_PG_PASSWORD_FILE_PAYMENT"], "rb") as f:
        pg_password = f.read()
    e = {
        "VIGIL_POSTGRES_DSN": s["VIGIL_DEV_PG_DSN_PAYMENT"],
        "VIGIL_AMQP_URL": s["VIGIL_AMQP_URL"],
        "VIGIL_AUTH_URL": f"http://{harness.LOOPBACK}:{ctx.authd.port}",
        "VIGIL_TRACING_OTLP_ENDPOINT": "",
        # The access log of thousands of charges is noise in the test log.
        "VIGIL_HTTP_ACCESS_LOG": "false",
    }
    e.update(env or {})
    d = harness.Daemon("paymentd", env=e, credentials={"postgres-password": pg_password})
    write_config(d, QUIET_PROCESSOR if config is None else config)
    ctx.daemons.append(d)
    ctx.cleanup(d.close)
    return d


def write_config(d, sections):
    with open(d.config, "w", encoding="utf-8") as f:
        for section, keys in sections.items():
            f.write(f"[{section}]\n")
            for k, v in keys.items():
                f.write(f"{k} = {v}\n")


def reload(d, sections):
    """Write sections as d's config and SIGHUP it; returns once the daemon
    logged that it applied (or refused) the new configuration."""
    def count():
        text = d.log_text()
        return text.count("Configuration reloaded") + text.count("Reload failed")

    before = count()
    write_config(d, sections)
    d.proc.send_signal(signal.SIGHUP)
    harness.wait_until(lambda: count() > before, 15, what="the reload to be logged")


def config_with(processor=None, faults=None):
    """QUIET_PROCESSOR with some [processor] and [faults] keys changed."""
    return {"processor": {**QUIET_PROCESSOR["processor"], **(processor or {})},
            "faults": {**QUIET_PROCESSOR["faults"], **(faults or {})}}


class Raw:
    """A response with its body bytes exactly as sent."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    @property
    def error_code(self):
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def replayed(self):
        return self.headers.get("idempotent-replayed") == "true"

    def __repr__(self):
        return f"Raw({self.status}, {self.body[:200]!r})"


def charge(d, token, key, body=None, amount=19.99, headers=None, timeout=30.0):
    """POST /charge; body (bytes/str/dict) defaults to {"amount": amount}.
    key None sends no Idempotency-Key. Returns Raw."""
    if body is None:
        body = {"amount": amount}
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    hdrs = {"Content-Type": "application/json"}
    if token is not None:
        hdrs["Authorization"] = "Bearer " + token
    if key is not None:
        hdrs["Idempotency-Key"] = key
    hdrs.update(headers or {})
    conn = http.client.HTTPConnection(harness.LOOPBACK, d.port, timeout=timeout)
    try:
        conn.request("POST", "/charge", body=body, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return Raw(resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw)
    finally:
        conn.close()


def check_raw_error(resp, status, code, what):
    check(resp.status == status and resp.error_code == code,
          f"{what}: expected {status} {code}, got {resp!r}")
    ctype = resp.headers.get("content-type", "")
    check(ctype.startswith("application/json"), f"{what}: Content-Type {ctype!r}")


def unique_key(prefix="key"):
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}-{os.urandom(4).hex()}"


def metrics(d):
    r = d.get("/metrics")
    check_eq(r.status, 200, "GET /metrics")
    text = r.body.decode() if isinstance(r.body, bytes) else r.body
    return text, harness.parse_metrics(text)


def metric(d, name, **labels):
    _, samples = metrics(d)
    return harness.metric_value(samples, name, **labels)


def state(stack):
    """Everything a refused charge must leave alone."""
    row = stack.sql("SELECT (SELECT count(*) FROM payment.payments),"
                    " (SELECT count(*) FROM payment.idempotency_keys),"
                    " (SELECT count(*) FROM payment.outbox),"
                    " (SELECT amount_cents FROM payment.revenue)"
                    "  + (SELECT coalesce(sum(amount_cents), 0) FROM payment.revenue_shards)")
    return tuple(int(x) for x in row.split("|"))
