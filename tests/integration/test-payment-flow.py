#!/usr/bin/env python3
"""The charge flow across daemons against real PostgreSQL, Redis and
RabbitMQ: vigil-authd verifies the token, vigil-paymentd commits the
payment and its outbox event, the relay publishes it with publisher
confirms, vigil-notifyd records exactly one notification per payment in the
payment's trace. Also: the outbox keeps every event through a RabbitMQ
outage, a PostgreSQL restart and a kill -9 of paymentd, and drains
afterwards. Without a built vigil-notifyd the notification checks are
skipped (and said so); the events are then counted in the queue.
By hand:
  top_builddir=/path/to/build python3 tests/integration/test-payment-flow.py [TEST...]
"""

import concurrent.futures
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import paymentd_stack as ps  # noqa: E402
from harness import check, check_eq  # noqa: E402

runner = harness.Runner("test-payment-flow", test_timeout=300)
test = runner.test

QUEUE = "vigil.notify.payments"
AMQP_TOOL = os.path.join(harness.TOP_BUILDDIR, "tests", "integration", "amqp-publish")


def amqp_password(ctx):
    with open(os.path.join(ctx.stack.dir, "secrets", "amqp-password"), encoding="utf-8") as f:
        return f.read().strip()


def setup(ctx):
    ps.start_stack(ctx)
    ctx.paymentd = ps.new_paymentd(ctx)
    ctx.paymentd.start()
    ctx.token, ctx.user_id, _ = harness.new_session(ctx.authd)
    ctx.notifyd = None
    if os.path.exists(harness.daemon_binary("notifyd")):
        s = ctx.stack.env
        with open(s["VIGIL_DEV_PG_PASSWORD_FILE_NOTIFY"], "rb") as f:
            pg_password = f.read()
        pw = amqp_password(ctx)
        d = harness.Daemon("notifyd", env={
            "VIGIL_POSTGRES_DSN": s["VIGIL_DEV_PG_DSN_NOTIFY"],
            "VIGIL_AMQP_URL": s["VIGIL_AMQP_URL"].replace(":" + pw + "@", "@"),
            "VIGIL_TRACING_OTLP_ENDPOINT": "",
            "VIGIL_HTTP_ACCESS_LOG": "false",
            "VIGIL_PROCESSOR_SEND_LATENCY_MS": "0",
        }, credentials={"postgres-password": pg_password, "amqp-password": pw})
        ctx.daemons.append(d)
        ctx.cleanup(d.close)
        d.start()
        ctx.notifyd = d
    else:
        runner.note("vigil-notifyd is not built: notification checks skipped, "
                    "events counted in the queue instead")


def charge_many(ctx, n, amount=1.23, workers=8, allow_unavailable=False):
    """n charges with fresh keys; returns the payment ids of the 201s. With
    allow_unavailable, 503s (and only they) are tolerated and not counted."""
    def one(_):
        return ps.charge(ctx.paymentd, ctx.token, ps.unique_key("flow"), amount=amount)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, range(n)))
    ok = [r.json()["payment_id"] for r in results if r.status == 201]
    bad = [r for r in results if r.status != 201 and not (allow_unavailable and r.status == 503)]
    check(not bad, f"unexpected answers: {bad[:5]}")
    return ok


def id_list(ids):
    return ",".join(str(i) for i in ids)


def wait_published(ctx, ids, timeout=60):
    harness.wait_until(
        lambda: int(ctx.stack.sql(
            "SELECT count(*) FROM payment.outbox WHERE published_at IS NULL AND message_id IN "
            f"({','.join(repr('payment-' + str(i)) for i in ids)})")) == 0,
        timeout, interval=0.2, what=f"{len(ids)} events published")


def check_notified_once(ctx, ids, timeout=60):
    """Each payment in ids has exactly one notification (when notifyd runs)."""
    if ctx.notifyd is None:
        return
    harness.wait_until(
        lambda: int(ctx.stack.sql("SELECT count(DISTINCT payment_id) FROM notify.notifications"
                                  f" WHERE payment_id IN ({id_list(ids)})")) == len(ids),
        timeout, interval=0.2, what=f"{len(ids)} payments notified")
    dup = ctx.stack.sql("SELECT count(*) FROM (SELECT payment_id FROM notify.notifications"
                        f" WHERE payment_id IN ({id_list(ids)}) GROUP BY payment_id"
                        " HAVING count(*) > 1) d")
    check_eq(dup, "0", "payments notified more than once")


def queue_count(ctx):
    env = dict(os.environ, VIGIL_AMQP_URL=ctx.stack.env["VIGIL_AMQP_URL"])
    p = subprocess.run([AMQP_TOOL, "--count", QUEUE], env=env, capture_output=True, text=True,
                       timeout=30, check=False)
    check_eq(p.returncode, 0, f"amqp-publish --count: {p.stderr}")
    return int(p.stdout.strip())


def relay_unread_bytes(ctx):
    """Bytes waiting unread in the receive queue of the outbox relay's
    PostgreSQL connection (found by its application_name)."""
    port = ctx.stack.sql("SELECT client_port FROM pg_stat_activity"
                         " WHERE application_name = 'vigil-paymentd-outbox'")
    check(port.isdigit(), f"the relay's connection in pg_stat_activity: {port!r}")
    with open("/proc/net/tcp", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == int(port):
                return int(fields[4].split(":")[1], 16)
    check(False, f"no socket on local port {port} in /proc/net/tcp")
    return None


def accounting(ctx, what):
    row = ctx.stack.sql(
        "SELECT (SELECT count(*) FROM payment.payments),"
        " (SELECT count(*) FROM payment.outbox WHERE published_at IS NULL)")
    payments, pending = (int(x) for x in row.split("|"))
    notified = "n/a"
    if ctx.notifyd is not None:
        notified = ctx.stack.sql("SELECT count(*) FROM notify.notifications")
    runner.note(f"{what}: payments {payments}, outbox pending {pending}, notified {notified}")


# --------------------------------------------------------------------------

@test
def test_a_charge_is_published_and_notified_in_its_trace(ctx):
    trace_id = os.urandom(16).hex()
    r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=19.99,
                  headers={"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"})
    check_eq(r.status, 201, "charge")
    pid = r.json()["payment_id"]
    wait_published(ctx, [pid], timeout=15)
    row = ctx.stack.sql(f"SELECT traceparent FROM payment.outbox WHERE message_id = 'payment-{pid}'")
    check(row.startswith(f"00-{trace_id}-"), f"outbox traceparent {row!r} not in trace {trace_id}")
    if ctx.notifyd is None:
        check(queue_count(ctx) >= 1, "no message in the queue")
        return
    check_notified_once(ctx, [pid], timeout=15)
    row = ctx.stack.sql("SELECT user_id, amount_cents, status, trace_id FROM notify.notifications"
                        f" WHERE payment_id = {pid}")
    check_eq(row, f"{ctx.user_id}|1999|success|{trace_id}", "notification row")


@test
def test_debug_log_follows_the_relay_and_the_consumer_and_info_does_not(ctx):
    """The harness runs both daemons at [log] level = debug: the relay's and
    the consumer's steps for one charge are in their logs. Restarted at
    info, the same flow logs none of them."""
    daemons = [ctx.paymentd] + ([ctx.notifyd] if ctx.notifyd else [])
    starts = [len(d.log_text()) for d in daemons]
    r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=2.50)
    check_eq(r.status, 201, "charge")
    pid = r.json()["payment_id"]
    wait_published(ctx, [pid], timeout=15)
    expected = [(ctx.paymentd, ["Outbox relay: locked ", "confirmed by the broker and marked "
                                "published"])]
    if ctx.notifyd:
        check_notified_once(ctx, [pid], timeout=15)
        expected.append((ctx.notifyd, [f"Consumer: received message payment-{pid} ",
                                       f"Consumer: acknowledged message payment-{pid}"]))

    def logged(d, start, text):
        return any(text in line for line in d.log_text()[start:].splitlines()
                   if line.startswith("level=debug "))
    for d, texts in expected:
        start = starts[daemons.index(d)]
        for text in texts:
            # The ack's entry may follow the notification row by a moment.
            harness.wait_until(lambda d=d, start=start, text=text: logged(d, start, text), 10,
                               what=f"{d.name}'s debug entry {text!r}")

    try:
        for d in daemons:
            d.extra_env["VIGIL_LOG_LEVEL"] = "info"
            d.restart()
        starts = [len(d.log_text()) for d in daemons]
        r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=2.75)
        check_eq(r.status, 201, "charge at info")
        pid = r.json()["payment_id"]
        wait_published(ctx, [pid], timeout=15)
        if ctx.notifyd:
            check_notified_once(ctx, [pid], timeout=15)
        for d, start in zip(daemons, starts):
            log = d.log_text()[start:]
            check("level=debug" not in log, f"{d.name} logs debug entries at info:\n{log[-3000:]}")
    finally:
        for d in daemons:
            d.extra_env.pop("VIGIL_LOG_LEVEL", None)
            if d.alive():
                d.restart()


@test
def test_every_charge_is_notified_exactly_once(ctx):
    ids = charge_many(ctx, 200)
    check_eq(len(ids), 200, "charges")
    wait_published(ctx, ids)
    check_notified_once(ctx, ids)
    harness.wait_until(lambda: ps.metric(ctx.paymentd, "vigil_outbox_pending") == 0, 15,
                       what="vigil_outbox_pending 0")
    check_eq(ps.metric(ctx.paymentd, "vigil_outbox_oldest_age_seconds"), 0, "oldest age")
    accounting(ctx, "after 200 charges")


@test
def test_rabbitmq_outage_keeps_charging_and_drains_afterwards(ctx):
    ctx.stack.kill("rabbitmq")
    try:
        ready = harness.wait_until(
            lambda: (lambda r: r if r.status == 503 else None)(ctx.paymentd.get("/ready")),
            60, interval=0.2, what="/ready 503 while RabbitMQ is down")
        check_eq(ready.body.get("failing"), "amqp", f"/ready names amqp: {ready.body!r}")
        ids = charge_many(ctx, 50)
        check_eq(len(ids), 50, "charges accepted while the broker is down")
        harness.wait_until(lambda: ps.metric(ctx.paymentd, "vigil_outbox_pending") >= 50, 15,
                           what="the backlog in vigil_outbox_pending")
        # The relay reads the NOTIFYs of these commits even while it cannot
        # publish; unread, they would pile up for the whole outage in its
        # socket and in PostgreSQL's notification queue.
        harness.wait_until(lambda: relay_unread_bytes(ctx) == 0, 15,
                           what="the relay's connection read while the broker is down")
        harness.wait_until(
            lambda: ps.metric(ctx.paymentd, "vigil_outbox_oldest_age_seconds") > 0, 15,
            what="vigil_outbox_oldest_age_seconds > 0")
    finally:
        ctx.stack.start_one("rabbitmq")
    wait_published(ctx, ids, timeout=120)
    check_notified_once(ctx, ids, timeout=120)
    ctx.paymentd.wait_ready(60)
    accounting(ctx, "after the RabbitMQ outage")


@test
def test_postgresql_restart_is_survived_by_the_relay(ctx):
    ctx.stack.restart("postgres")
    ctx.paymentd.wait_ready(60)
    ids = charge_many(ctx, 20, allow_unavailable=True)
    check(ids, "no charge succeeded after the PostgreSQL restart")
    wait_published(ctx, ids)
    check_notified_once(ctx, ids)
    if ctx.notifyd is not None:
        ctx.notifyd.wait_ready(60)


@test
def test_paymentd_kill_9_loses_no_committed_event(ctx):
    # Charges are committed; the relay may not have published them yet.
    ids = charge_many(ctx, 100)
    ctx.paymentd.kill()
    ctx.paymentd.start()
    wait_published(ctx, ids)
    check_notified_once(ctx, ids)
    dup = ctx.stack.sql("SELECT count(*) FROM (SELECT idempotency_key FROM payment.payments"
                        " GROUP BY user_id, idempotency_key HAVING count(*) > 1) d")
    check_eq(dup, "0", "keys charged twice")
    accounting(ctx, "after kill -9 of paymentd")


@test
def test_in_the_end_the_outbox_is_empty_and_nothing_is_notified_twice(ctx):
    harness.wait_until(
        lambda: ctx.stack.sql("SELECT count(*) FROM payment.outbox WHERE published_at IS NULL")
        == "0", 60, what="the outbox drained")
    if ctx.notifyd is None:
        return
    ids = [int(x) for x in ctx.stack.sql("SELECT id FROM payment.payments").split()]
    check_notified_once(ctx, ids)
    orphans = ctx.stack.sql("SELECT count(*) FROM notify.notifications n WHERE NOT EXISTS"
                            " (SELECT 1 FROM payment.payments p WHERE p.id = n.payment_id)")
    check_eq(orphans, "0", "notifications without a payment")
    accounting(ctx, "final")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=(ps.paymentd_binary(), harness.authd_binary())))
