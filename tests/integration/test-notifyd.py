#!/usr/bin/env python3
"""Integration tests of vigil-notifyd against real PostgreSQL and RabbitMQ.

Payment events are published straight to the exchange with
tests/integration/amqp-publish (a confirmed publisher built on src/lib/amqp.c),
then the database, the queues and /metrics are checked: one notification per
message, duplicates acknowledged as no-ops, poison parked exactly once,
failing sends walked through the retry queues into the dead queue, and
nothing parked or lost across a PostgreSQL outage, a RabbitMQ restart and a
kill -9 of notifyd. Run by `make check`; by hand:
  top_builddir=/path/to/build python3 tests/integration/test-notifyd.py [TEST...]
"""

import json
import os
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq  # noqa: E402

runner = harness.Runner("test-notifyd", test_timeout=240)
test = runner.test

PUBLISHER = os.path.join(harness.TOP_BUILDDIR, "tests", "integration", "amqp-publish")
DEAD = "vigil.notify.dead"
MAIN = "vigil.notify.payments"
MAX_ATTEMPTS = 3  # first delivery + retry queues 1 (1 s) and 2 (4 s)


def setup(ctx):
    ctx.stack = harness.Stack(("postgres", "rabbitmq"))
    ctx.cleanup(ctx.stack.stop)
    ctx.stack.start()
    s = ctx.stack.env
    with open(s["VIGIL_DEV_PG_PASSWORD_FILE_NOTIFY"], "rb") as f:
        pg_password = f.read()
    env = {
        "VIGIL_POSTGRES_DSN": s["VIGIL_DEV_PG_DSN_NOTIFY"],
        # The URL carries no password: the amqp-password credential does.
        "VIGIL_AMQP_URL": s["VIGIL_AMQP_URL"].replace(":" + amqp_password(ctx) + "@", "@"),
        "VIGIL_TRACING_OTLP_ENDPOINT": "",
        "VIGIL_CONSUMER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "VIGIL_LOG_LEVEL": "info",
    }
    ctx.notifyd = harness.Daemon("notifyd", env=env, credentials={
        "postgres-password": pg_password, "amqp-password": amqp_password(ctx)})
    ctx.daemons.append(ctx.notifyd)
    ctx.cleanup(ctx.notifyd.close)
    ctx.notifyd.start()
    ctx.next_payment = 1000


def amqp_password(ctx):
    with open(os.path.join(ctx.stack.dir, "secrets", "amqp-password"), encoding="utf-8") as f:
        return f.read().strip()


# --------------------------------------------------------------------------
# helpers

def tool(ctx, *args, stdin=None, timeout=60):
    env = dict(os.environ, VIGIL_AMQP_URL=ctx.stack.env["VIGIL_AMQP_URL"])
    p = subprocess.run([PUBLISHER, *args], input=stdin, capture_output=True, text=True,
                       env=env, timeout=timeout, check=False)
    check(p.returncode == 0, f"amqp-publish {' '.join(args)}: {p.returncode} {p.stderr}")
    return p.stdout.splitlines()


def publish(ctx, messages):
    """Publish dicts (message_id, body, …) confirmed; asserts every ack."""
    lines = "".join(json.dumps(m) + "\n" for m in messages)
    results = tool(ctx, stdin=lines)
    check_eq(results, ["ack"] * len(messages), "publisher confirms")


def queue_count(ctx, queue):
    return int(tool(ctx, "--count", queue)[0])


def dump(ctx, queue):
    return [json.loads(line) for line in tool(ctx, "--dump", queue)]


def new_payments(ctx, n):
    first = ctx.next_payment
    ctx.next_payment += n
    return list(range(first, first + n))


def event(pid, **extra):
    body = {"payment_id": pid, "user_id": 7, "amount_cents": 1999, "status": "success",
            "created_at": "2026-11-24T04:20:00Z"}
    m = {"message_id": f"payment-{pid}", "body": json.dumps(body)}
    m.update(extra)
    return m


def rows(ctx, pids):
    """{payment_id: number of notification rows} for pids."""
    out = ctx.stack.sql(
        f"SELECT payment_id, count(*) FROM notify.notifications "
        f"WHERE payment_id BETWEEN {min(pids)} AND {max(pids)} GROUP BY payment_id")
    counts = {}
    for line in out.splitlines():
        pid, n = line.split("|")
        counts[int(pid)] = int(n)
    return counts


def wait_all_notified(ctx, pids, timeout=60):
    def done():
        return len(rows(ctx, pids)) == len(pids)
    harness.wait_until(done, timeout, interval=0.2, what=f"{len(pids)} notifications")
    counts = rows(ctx, pids)
    check(all(counts.get(p) == 1 for p in pids),
          f"not exactly one notification each: {[(p, counts.get(p)) for p in pids if counts.get(p) != 1][:10]}")


def metrics(ctx):
    r = ctx.notifyd.get("/metrics")
    check_eq(r.status, 200, "GET /metrics")
    text = r.body if isinstance(r.body, str) else r.body.decode()
    return harness.parse_metrics(text)


def counter(ctx, name, **labels):
    return harness.metric_value(metrics(ctx), name, **labels)


def reload_config(ctx, text):
    d = ctx.notifyd
    before = d.log_text().count("Configuration reloaded")
    with open(d.config, "w", encoding="utf-8") as f:
        f.write(text)
    d.proc.send_signal(signal.SIGHUP)
    harness.wait_until(lambda: d.log_text().count("Configuration reloaded") > before, 10,
                       what="the reload")


def ready_body(ctx):
    r = ctx.notifyd.get("/ready")
    return r.status, json.dumps(r.body) if not isinstance(r.body, str) else r.body


# --------------------------------------------------------------------------
# tests

@test
def test_each_message_makes_one_notification_in_the_payments_trace(ctx):
    pids = new_payments(ctx, 20)
    before = counter(ctx, "vigil_notify_processed_total", result="processed")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    msgs = [event(p) for p in pids]
    msgs[0]["traceparent"] = f"00-{trace_id}-00f067aa0ba902b7-01"
    publish(ctx, msgs)
    wait_all_notified(ctx, pids)
    harness.wait_until(
        lambda: counter(ctx, "vigil_notify_processed_total", result="processed") >= before + 20,
        10, what="processed counter")
    got = ctx.stack.sql(f"SELECT trace_id FROM notify.notifications WHERE payment_id = {pids[0]}")
    check_eq(got, trace_id, "the notification carries the payment's trace id")
    row = ctx.stack.sql(f"SELECT user_id, amount_cents, status, channel FROM notify.notifications "
                        f"WHERE payment_id = {pids[1]}")
    check_eq(row, "7|1999|success|email", "the notification row")
    check_eq(queue_count(ctx, MAIN), 0, "main queue drained")
    samples = metrics(ctx)
    lag = [s for s in samples if s.name == "vigil_notify_lag_seconds_bucket"]
    check({s.labels.get("le") for s in lag} >= {"1", "5", "10", "30", "60"},
          f"lag histogram buckets: {[s.labels.get('le') for s in lag]}")
    check(harness.metric_value(samples, "vigil_notify_lag_seconds_count") >= 20, "lag observed")
    check_eq(harness.metric_value(samples, "vigil_dependency_up", dependency="amqp"), 1,
             "amqp up gauge")


@test
def test_a_duplicate_message_id_is_acked_without_a_second_row(ctx):
    (pid,) = new_payments(ctx, 1)
    before = counter(ctx, "vigil_notify_processed_total", result="duplicate")
    publish(ctx, [event(pid)])
    wait_all_notified(ctx, [pid])
    publish(ctx, [event(pid), event(pid, body=json.dumps({"payment_id": pid, "user_id": 8,
                                                          "amount_cents": 5, "status": "x",
                                                          "created_at": "2026-11-24T04:20:00Z"}))])
    harness.wait_until(
        lambda: counter(ctx, "vigil_notify_processed_total", result="duplicate") >= before + 2,
        20, what="two duplicates counted")
    check_eq(rows(ctx, [pid]), {pid: 1}, "still one notification")
    check_eq(ctx.stack.sql(f"SELECT user_id FROM notify.notifications WHERE payment_id = {pid}"),
             "7", "the first message's row is kept")
    check_eq(queue_count(ctx, MAIN), 0, "duplicates acked")


@test
def test_poison_messages_are_parked_once_and_never_redelivered(ctx):
    dead_before = queue_count(ctx, DEAD)
    counted_before = counter(ctx, "vigil_notify_dead_lettered_total")
    (ok_pid,) = new_payments(ctx, 1)
    poison = [
        {"message_id": "poison-not-json", "body": "{this is not json"},
        {"message_id": "poison-missing", "body": json.dumps({"payment_id": 5})},
        {"message_id": "poison-types", "body": json.dumps({
            "payment_id": "5", "user_id": 7, "amount_cents": 19.99, "status": "success",
            "created_at": "2026-11-24T04:20:00Z"})},
        {"body": json.dumps({"payment_id": 6})},  # no message_id at all
    ]
    publish(ctx, poison + [event(ok_pid)])
    harness.wait_until(lambda: queue_count(ctx, DEAD) >= dead_before + 4, 30,
                       interval=0.2, what="4 parked messages")
    wait_all_notified(ctx, [ok_pid])
    time.sleep(2)  # a loop would park or redeliver them again
    check_eq(queue_count(ctx, DEAD), dead_before + 4, "parked exactly once")
    check_eq(queue_count(ctx, MAIN), 0, "nothing left in the main queue")
    check_eq(counter(ctx, "vigil_notify_dead_lettered_total"), counted_before + 4,
             "vigil_notify_dead_lettered_total")
    parked = [m["message_id"] for m in dump(ctx, DEAD)]
    for mid in ("poison-not-json", "poison-missing", "poison-types"):
        check_eq(parked.count(mid), 1, f"{mid} in the dead queue")
    log = ctx.notifyd.log_text()
    check_eq(log.count("Parked message poison-types"), 1, "logged once")
    check(rows(ctx, [5, 6]) == {}, "no notification from poison")


@test
def test_failing_sends_retry_with_backoff_then_park_and_recover(ctx):
    dead_before = queue_count(ctx, DEAD)
    retried_before = counter(ctx, "vigil_notify_processed_total", result="retried")
    reload_config(ctx, "[faults]\nerror_ratio = 1.0\n")
    (pid,) = new_payments(ctx, 1)
    t0 = time.monotonic()
    publish(ctx, [event(pid)])
    harness.wait_until(lambda: queue_count(ctx, DEAD) >= dead_before + 1, 60, interval=0.2,
                       what="the failing message parked")
    elapsed = time.monotonic() - t0
    check(elapsed >= 4.5, f"parked after {elapsed:.1f} s: the 1 s and 4 s delays were skipped")
    check_eq(counter(ctx, "vigil_notify_processed_total", result="retried"),
             retried_before + MAX_ATTEMPTS - 1, "retries counted")
    check_eq(rows(ctx, [pid]), {}, "no notification from a failed send")
    attempts = [m["attempt"] for m in dump(ctx, DEAD) if m["message_id"] == f"payment-{pid}"]
    check_eq(attempts, [MAX_ATTEMPTS - 1], "parked with its attempt count")

    reload_config(ctx, "[faults]\nerror_ratio = 0\n")
    (pid2,) = new_payments(ctx, 1)
    publish(ctx, [event(pid2)])
    wait_all_notified(ctx, [pid2], timeout=20)
    check_eq(queue_count(ctx, DEAD), dead_before + 1, "nothing else parked")


@test
def test_fail_dependency_amqp_stops_consuming_until_cleared(ctx):
    reload_config(ctx, "[faults]\nfail_dependency = amqp\n")
    try:
        harness.wait_until(lambda: ready_body(ctx)[0] == 503, 30, interval=0.2,
                           what="/ready 503 with amqp failed on purpose")
        check_eq(ctx.notifyd.get("/ready").body.get("failing"), "amqp", "/ready names amqp")
        check_eq(harness.metric_value(metrics(ctx), "vigil_dependency_up", dependency="amqp"),
                 0, "vigil_dependency_up{amqp}")
        check_eq(harness.metric_value(metrics(ctx), "vigil_fault_active",
                                      fault="fail_dependency"), 1, "vigil_fault_active")
        (pid,) = new_payments(ctx, 1)
        publish(ctx, [event(pid)])
    finally:
        reload_config(ctx, "")
    harness.wait_until(lambda: ready_body(ctx)[0] == 200, 60, interval=0.2,
                       what="/ready 200 once amqp is no longer failed")
    # The message waited in RabbitMQ and is processed once the consumer is back.
    wait_all_notified(ctx, [pid], timeout=30)


@test
def test_postgres_outage_mid_stream_parks_nothing(ctx):
    dead_before = queue_count(ctx, DEAD)
    reload_config(ctx, "[processor]\nsend_latency_ms = 20\n")
    pids = new_payments(ctx, 200)
    publish(ctx, [event(p) for p in pids[:100]])
    time.sleep(0.5)
    ctx.stack.kill("postgres")
    try:
        harness.wait_until(lambda: ready_body(ctx)[0] == 503, 60, what="/ready 503")
        status, body = ready_body(ctx)
        check("postgres" in body, f"/ready names postgres: {status} {body}")
        publish(ctx, [event(p) for p in pids[100:]])
        check(ctx.notifyd.alive(), "notifyd exited during the outage")
        check_eq(ctx.notifyd.get("/health").status, 200, "/health during the outage")
    finally:
        ctx.stack.start_one("postgres")
    ctx.notifyd.wait_ready(60)
    wait_all_notified(ctx, pids, timeout=90)
    check_eq(queue_count(ctx, DEAD), dead_before, "no message parked by the outage")
    reload_config(ctx, "")


@test
def test_rabbitmq_restart_is_survived(ctx):
    ctx.stack.restart("rabbitmq")
    harness.wait_until(lambda: ready_body(ctx)[0] == 200, 150, interval=0.2,
                       what="/ready after the broker restart")
    pids = new_payments(ctx, 10)
    publish(ctx, [event(p) for p in pids])
    wait_all_notified(ctx, pids, timeout=30)
    check("RabbitMQ is unavailable" in ctx.notifyd.log_text(), "the outage was noticed")


@test
def test_kill_9_mid_stream_processes_every_message_exactly_once(ctx):
    dead_before = queue_count(ctx, DEAD)
    reload_config(ctx, "[processor]\nsend_latency_ms = 10\n")
    pids = new_payments(ctx, 300)
    publish(ctx, [event(p) for p in pids])
    time.sleep(1.0)
    ctx.notifyd.kill()
    done_at_kill = len(rows(ctx, pids))
    ctx.notifyd.start()
    wait_all_notified(ctx, pids, timeout=90)
    check_eq(queue_count(ctx, DEAD), dead_before, "nothing parked")
    total = int(ctx.stack.sql(
        f"SELECT count(*) FROM notify.processed_messages WHERE message_id IN "
        f"({','.join(repr(f'payment-{p}') for p in pids)})"))
    check_eq(total, len(pids), "one processed_messages row each")
    runner.note(f"kill -9 after {done_at_kill}/300 notifications; "
                f"duplicates acked after the restart: "
                f"{counter(ctx, 'vigil_notify_processed_total', result='duplicate'):.0f}")
    reload_config(ctx, "")


@test
def test_sigterm_finishes_and_exits_cleanly(ctx):
    pids = new_payments(ctx, 50)
    publish(ctx, [event(p) for p in pids])
    took = ctx.notifyd.stop()  # asserts exit status 0
    check(took < 10, f"stopped in {took:.1f} s")
    ctx.notifyd.start()
    wait_all_notified(ctx, pids, timeout=30)


if __name__ == "__main__":
    if not os.path.exists(PUBLISHER):
        print(f"ERROR: {PUBLISHER} is not built", file=sys.stderr)
        sys.exit(harness.HARD_ERROR)
    sys.exit(runner.main(setup, binaries=[harness.daemon_binary("notifyd")]))
