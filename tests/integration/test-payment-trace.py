#!/usr/bin/env python3
"""The charge flow is one distributed trace (DESIGN.md §2, §7; issue 4).

Real PostgreSQL, Redis and RabbitMQ from scripts/dev-stack.sh; vigil-authd,
vigil-paymentd and vigil-notifyd from the build tree, all exporting to the
harness's OTLP/HTTP receiver. One POST /charge with a known incoming
traceparent must yield one trace holding:

  paymentd SERVER "POST /charge"            (child of the incoming context)
    paymentd CLIENT to authd                (http.request.method POST)
      authd SERVER "POST /verify"           (child of that CLIENT span)
    paymentd PostgreSQL CLIENT spans        (db.system postgresql)
    paymentd PRODUCER "publish vigil.events" (the outbox relay; the outbox
                                             row stored the traceparent)
      notifyd CONSUMER "process …"          (parent from the AMQP headers)
        notifyd PostgreSQL CLIENT spans

with service.name per resource, 32/16 hex digit ids, and the semantic
attributes of OpenTelemetry. By hand:
  top_builddir=/path/to/build python3 tests/integration/test-payment-trace.py
"""

import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import paymentd_stack as ps  # noqa: E402
from harness import check, check_eq  # noqa: E402

runner = harness.Runner("test-payment-trace", test_timeout=120)
test = runner.test

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 2, 3, 4, 5
SPANS_TIMEOUT = 30  # export batches, the outbox relay and notifyd's consume


def amqp_password(stack):
    with open(os.path.join(stack.dir, "secrets", "amqp-password"), encoding="utf-8") as f:
        return f.read().strip()


def setup(ctx):
    ctx.receiver = harness.OtlpReceiver()
    ctx.cleanup(ctx.receiver.close)
    tracing = {"VIGIL_TRACING_OTLP_ENDPOINT": ctx.receiver.url,
               "VIGIL_TRACING_SAMPLE_RATIO": "1"}
    ctx.stack = harness.Stack(ps.SERVICES)
    ctx.cleanup(ctx.stack.stop)
    ctx.stack.start()
    ctx.authd = harness.new_authd(ctx, env=tracing)
    ctx.authd.start()
    ctx.paymentd = ps.new_paymentd(ctx, env=tracing)
    ctx.paymentd.start()

    s = ctx.stack.env
    with open(s["VIGIL_DEV_PG_PASSWORD_FILE_NOTIFY"], "rb") as f:
        pg_password = f.read()
    password = amqp_password(ctx.stack)
    env = {
        "VIGIL_POSTGRES_DSN": s["VIGIL_DEV_PG_DSN_NOTIFY"],
        "VIGIL_AMQP_URL": s["VIGIL_AMQP_URL"].replace(":" + password + "@", "@"),
        "VIGIL_LOG_LEVEL": "info",
        **tracing,
    }
    ctx.notifyd = harness.Daemon("notifyd", env=env, credentials={
        "postgres-password": pg_password, "amqp-password": password})
    ctx.daemons.append(ctx.notifyd)
    ctx.cleanup(ctx.notifyd.close)
    ctx.notifyd.start()
    ctx.token, ctx.user_id, _ = harness.new_session(ctx.authd)


# --------------------------------------------------------------------------
# helpers

def attrs(span):
    return harness.attributes(span.get("attributes", []))


def service(span):
    return span["_resource"].get("service.name")


def children(spans, parent, kind=None):
    return [s for s in spans
            if s.get("traceId") == parent["traceId"] and s.get("parentSpanId") == parent["spanId"]
            and (kind is None or s.get("kind") == kind)]


def describe(spans):
    return "\n".join(f"  {service(s)} kind={s.get('kind')} {s.get('name')!r} "
                     f"span={s.get('spanId')} parent={s.get('parentSpanId')}" for s in spans)


def one(spans, what, pred):
    found = [s for s in spans if pred(s)]
    check(len(found) == 1, f"expected one {what}, found {len(found)}:\n{describe(spans)}")
    return found[0]


def check_ids(span, trace_id):
    what = f"{service(span)} {span.get('name')!r}"
    check_eq(span.get("traceId"), trace_id, f"{what}: trace id")
    check(HEX16.match(span.get("spanId", "")), f"{what}: span id {span.get('spanId')!r}")
    parent = span.get("parentSpanId", "")
    check(parent == "" or HEX16.match(parent), f"{what}: parent span id {parent!r}")
    check(int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 0,
          f"{what}: start/end times {span.get('startTimeUnixNano')}/"
          f"{span.get('endTimeUnixNano')}")


# --------------------------------------------------------------------------

@test
def test_one_charge_is_one_trace_from_paymentd_to_notifyd(ctx):
    trace_id = os.urandom(16).hex()
    incoming_parent = os.urandom(8).hex()
    r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key("trace"), amount=12.34,
                  headers={"traceparent": f"00-{trace_id}-{incoming_parent}-01"})
    check_eq(r.status, 201, f"charge {r!r}")
    pid = r.json()["payment_id"]
    message_id = f"payment-{pid}"

    # The outbox row carries the request's context.
    stored = ctx.stack.sql(f"SELECT traceparent FROM payment.outbox "
                           f"WHERE message_id = '{message_id}'")
    check(stored.startswith(f"00-{trace_id}-"), f"outbox traceparent {stored!r}")
    harness.wait_until(
        lambda: ctx.stack.sql(f"SELECT count(*) FROM notify.notifications "
                              f"WHERE payment_id = {pid}") == "1",
        SPANS_TIMEOUT, interval=0.2, what="the notification")
    check_eq(ctx.stack.sql(f"SELECT trace_id FROM notify.notifications WHERE payment_id = {pid}"),
             trace_id, "the notification row's trace id")

    # Each daemon exports in its own batches, in the order spans end: wait
    # for every kind of span the checks below look for.
    def complete(spans):
        mine = [s for s in spans if s.get("traceId") == trace_id]

        def have(kind, name):
            return [s for s in mine if s.get("kind") == kind and service(s) == name]
        consumer = have(KIND_CONSUMER, "vigil-notifyd")
        servers = have(KIND_SERVER, "vigil-paymentd")
        if not (consumer and servers and have(KIND_SERVER, "vigil-authd") and
                have(KIND_PRODUCER, "vigil-paymentd") and
                len(children(mine, servers[0], KIND_CLIENT)) >= 2 and
                children(mine, consumer[0], KIND_CLIENT)):
            return None
        return mine
    try:
        spans = ctx.receiver.wait_spans(complete, SPANS_TIMEOUT, what="the whole trace")
    except AssertionError as e:
        mine = [s for s in ctx.receiver.spans() if s.get("traceId") == trace_id]
        raise AssertionError(f"{e}\nspans of the trace so far:\n{describe(mine)}") from None

    for s in spans:
        check_ids(s, trace_id)
    services = {service(s) for s in spans}
    check_eq(services, {"vigil-paymentd", "vigil-authd", "vigil-notifyd"},
             "service.name of the resources in the trace")

    # paymentd's server span continues the incoming context.
    server = one(spans, "paymentd SERVER span",
                 lambda s: s["kind"] == KIND_SERVER and service(s) == "vigil-paymentd")
    check_eq(server["name"], "POST /charge", "paymentd server span name")
    check_eq(server.get("parentSpanId"), incoming_parent, "parent of POST /charge")
    a = attrs(server)
    check_eq(a.get("http.request.method"), "POST", "POST /charge http.request.method")
    check_eq(a.get("http.route"), "/charge", "POST /charge http.route")
    check_eq(a.get("http.response.status_code"), 201, "POST /charge http.response.status_code")
    raw = harness.raw_attributes(server).get("http.response.status_code", {})
    check("intValue" in raw, f"http.response.status_code is an OTLP int: {raw!r}")

    # paymentd -> authd: a CLIENT span, and authd's SERVER span under it.
    auth_client = one(children(spans, server, KIND_CLIENT), "CLIENT span to authd",
                      lambda s: attrs(s).get("http.request.method") is not None)
    ca = attrs(auth_client)
    check_eq(service(auth_client), "vigil-paymentd", "the auth call's service")
    check_eq(ca.get("http.request.method"), "POST", "auth call http.request.method")
    check_eq(ca.get("http.response.status_code"), 200, "auth call http.response.status_code")
    check(str(ca.get("url.full", "")).endswith("/verify"), f"auth call url.full {ca!r}")
    verify = one(spans, "authd SERVER span",
                 lambda s: s["kind"] == KIND_SERVER and service(s) == "vigil-authd")
    check_eq(verify["name"], "POST /verify", "authd server span name")
    check_eq(verify.get("parentSpanId"), auth_client["spanId"],
             "authd's POST /verify is a child of paymentd's CLIENT span")
    va = attrs(verify)
    check_eq(va.get("http.route"), "/verify", "authd http.route")
    check_eq(va.get("http.response.status_code"), 200, "authd http.response.status_code")

    # paymentd's PostgreSQL statements, inside the request.
    pg = [s for s in children(spans, server, KIND_CLIENT)
          if attrs(s).get("db.system") == "postgresql"]
    check(pg, f"no PostgreSQL CLIENT span under POST /charge:\n{describe(spans)}")
    for s in pg:
        check(attrs(s).get("db.operation.name"), f"db.operation.name of {s['name']!r}")

    # The outbox relay's publish continues the request's trace.
    producer = one(spans, "PRODUCER span", lambda s: s["kind"] == KIND_PRODUCER and
                   service(s) == "vigil-paymentd")
    pa = attrs(producer)
    check_eq(producer.get("parentSpanId"), server["spanId"],
             "the publish is a child of POST /charge (its stored traceparent)")
    check_eq(pa.get("messaging.system"), "rabbitmq", "producer messaging.system")
    check_eq(pa.get("messaging.destination.name"), "vigil.events", "producer destination")
    check_eq(pa.get("messaging.message.id"), message_id, "producer messaging.message.id")

    # notifyd continues from the AMQP headers.
    consumer = one(spans, "CONSUMER span", lambda s: s["kind"] == KIND_CONSUMER)
    check_eq(service(consumer), "vigil-notifyd", "consumer service")
    check_eq(consumer.get("parentSpanId"), producer["spanId"],
             "the consume is a child of the publish (traceparent in the AMQP headers)")
    na = attrs(consumer)
    check_eq(na.get("messaging.system"), "rabbitmq", "consumer messaging.system")
    check_eq(na.get("messaging.message.id"), message_id, "consumer messaging.message.id")
    check_eq(na.get("messaging.destination.name"), "vigil.notify.payments",
             "consumer destination")
    npg = [s for s in children(spans, consumer, KIND_CLIENT)
           if attrs(s).get("db.system") == "postgresql"]
    check(npg, f"no PostgreSQL CLIENT span under the consume:\n{describe(spans)}")
    check(all(service(s) == "vigil-notifyd" for s in npg), "notifyd's PostgreSQL spans")

    # Every span hangs off the tree rooted at POST /charge: nothing orphaned.
    ids = {s["spanId"] for s in spans}
    for s in spans:
        if s is server:
            continue
        check(s.get("parentSpanId") in ids,
              f"{service(s)} {s['name']!r} has a parent outside the trace:\n{describe(spans)}")
    check_eq(len(ids), len(spans), "distinct span ids")

    # One trace: no span of this payment's event lives in another trace.
    others = [s for s in ctx.receiver.spans() if s.get("traceId") != trace_id and
              attrs(s).get("messaging.message.id") == message_id]
    check(not others, f"spans of {message_id} in other traces:\n{describe(others)}")
    runner.note(f"trace {trace_id}: {len(spans)} spans "
                f"({', '.join(sorted(service(s) + ':' + s['name'] for s in spans))})")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=(ps.paymentd_binary(), harness.authd_binary(),
                                          harness.daemon_binary("notifyd"))))
