#!/usr/bin/env python3
"""Integration tests of vigil-paymentd against real PostgreSQL, Redis and
RabbitMQ, with vigil-authd from the build tree verifying tokens.

Idempotency (one charge under 50 concurrent clients repeating one key,
byte-for-byte replays, 422 and 409), declines (402, stored and replayed),
faults applied on SIGHUP, owner-only reads, authd down, takeover of a claim
whose request died, pruning, metrics, charges paying a reservation of
vigil-inventoryd (started for those tests), and every kind of bad input
(status, error code, and no state change). By hand:
  top_builddir=/path/to/build python3 tests/integration/test-paymentd.py [TEST...]
"""

import concurrent.futures
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import paymentd_stack as ps  # noqa: E402
from harness import check, check_eq, check_error  # noqa: E402

runner = harness.Runner("test-paymentd", test_timeout=180)
test = runner.test


def setup(ctx):
    ps.start_stack(ctx)
    ctx.paymentd = ps.new_paymentd(ctx)
    ctx.paymentd.start()
    ctx.token, ctx.user_id, _ = harness.new_session(ctx.authd)
    ctx.other_token, ctx.other_user_id, _ = harness.new_session(ctx.authd)


@contextlib.contextmanager
def unchanged(ctx, what):
    before = ps.state(ctx.stack)
    yield
    after = ps.state(ctx.stack)
    check(before == after, f"{what}: state changed: before {before}, after {after}")


@contextlib.contextmanager
def processor(ctx, processor=None, faults=None):
    """Run with other processor/fault settings, applied and undone by SIGHUP."""
    ps.reload(ctx.paymentd, ps.config_with(processor, faults))
    try:
        yield
    finally:
        ps.reload(ctx.paymentd, ps.QUIET_PROCESSOR)


def payments_with_key(ctx, key, user_id=None):
    uid = ctx.user_id if user_id is None else user_id
    return int(ctx.stack.sql(f"SELECT count(*) FROM payment.payments "
                             f"WHERE user_id = {uid} AND idempotency_key = '{key}'"))


# --------------------------------------------------------------------------
# happy path

@test
def test_health_and_ready_answer_200(ctx):
    check_eq(ctx.paymentd.get("/health").status, 200, "/health")
    check_eq(ctx.paymentd.get("/ready").status, 200, "/ready")


@test
def test_charge_returns_201_with_the_documented_body(ctx):
    r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=19.99)
    check_eq(r.status, 201, f"charge {r!r}")
    check(b'"amount":19.99' in r.body, f"amount not a JSON number with 2 decimals: {r!r}")
    body = r.json()
    check_eq(set(body), {"payment_id", "amount", "status", "user_id"}, "fields")
    check_eq(body["status"], "success", "status")
    check_eq(body["user_id"], ctx.user_id, "user_id")
    check(not r.replayed, "a first charge must not say it was replayed")
    row = ctx.stack.sql(f"SELECT user_id, amount_cents, status FROM payment.payments "
                        f"WHERE id = {body['payment_id']}")
    check_eq(row, f"{ctx.user_id}|1999|success", "payment row")


@test
def test_whole_dollar_amounts_are_answered_with_two_decimals(ctx):
    for amount, text in ((20, b'"amount":20.00'), (0.5, b'"amount":0.50'),
                         (1000000, b'"amount":1000000.00')):
        r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=amount)
        check_eq(r.status, 201, f"charge {amount}")
        check(text in r.body, f"{amount}: expected {text!r} in {r.body!r}")


@test
def test_amount_is_exact_where_floating_point_is_not(ctx):
    # 0.29 * 100 is 28.999999999999996 in binary floating point.
    r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), body=b'{"amount": 0.29}')
    check_eq(r.status, 201, f"charge 0.29 {r!r}")
    cents = ctx.stack.sql(f"SELECT amount_cents FROM payment.payments "
                          f"WHERE id = {r.json()['payment_id']}")
    check_eq(cents, "29", "amount_cents of 0.29")


@test
def test_repeated_key_replays_the_response_byte_for_byte(ctx):
    key = ps.unique_key()
    first = ps.charge(ctx.paymentd, ctx.token, key, amount=42.5)
    check_eq(first.status, 201, "first charge")
    for _ in range(3):
        again = ps.charge(ctx.paymentd, ctx.token, key, amount=42.5)
        check_eq(again.status, 201, "replay status")
        check_eq(again.body, first.body, "replayed body bytes")
        check(again.replayed, f"replay lacks Idempotent-Replayed: true: {again.headers}")
    check_eq(payments_with_key(ctx, key), 1, "payments for the key")


@test
def test_equal_amounts_written_differently_are_the_same_request(ctx):
    key = ps.unique_key()
    first = ps.charge(ctx.paymentd, ctx.token, key, body=b'{"amount": 19.99}')
    again = ps.charge(ctx.paymentd, ctx.token, key, body=b'{"amount": 19.990}')
    check_eq((first.status, again.status), (201, 201), "statuses")
    check(again.replayed and again.body == first.body, f"not replayed: {again!r}")


@test
def test_keys_belong_to_their_user(ctx):
    key = ps.unique_key()
    mine = ps.charge(ctx.paymentd, ctx.token, key, amount=3)
    theirs = ps.charge(ctx.paymentd, ctx.other_token, key, amount=3)
    check_eq((mine.status, theirs.status), (201, 201), "statuses")
    check(not theirs.replayed, "another user's key replayed my response")
    check(mine.json()["payment_id"] != theirs.json()["payment_id"], "one payment for two users")


@test
def test_fifty_clients_repeating_one_key_charge_exactly_once(ctx):
    key = ps.unique_key("storm")
    clients, repeats = 50, 20
    barrier = threading.Barrier(clients, timeout=60)

    def client(_):
        barrier.wait()
        return [ps.charge(ctx.paymentd, ctx.token, key, amount=77.77) for _ in range(repeats)]

    # Some processor latency, so that many repeats arrive while the first
    # is still in flight (409) and the rest after it (replays).
    with processor(ctx, {"latency_ms": 100}):
        with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
            results = [r for rs in pool.map(client, range(clients)) for r in rs]

    statuses = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    check(set(statuses) <= {201, 409}, f"unexpected statuses {statuses}")
    created = [r for r in results if r.status == 201]
    originals = [r for r in created if not r.replayed]
    check_eq(len(originals), 1, f"responses not marked as replays ({statuses})")
    bodies = {r.body for r in created}
    check_eq(len(bodies), 1, f"distinct 201 bodies: {bodies}")
    for r in results:
        if r.status == 409:
            check_eq(r.error_code, "idempotency_key_in_progress", "409 code")
    check_eq(payments_with_key(ctx, key), 1, "payment rows for the key")
    check_eq(int(ctx.stack.sql(f"SELECT count(*) FROM payment.outbox o JOIN payment.payments p"
                               f" ON o.message_id = 'payment-' || p.id"
                               f" WHERE p.idempotency_key = '{key}'")), 1, "outbox rows")
    runner.note(f"50 x 20 repeats of one key: {statuses}")


@test
def test_same_key_with_a_different_body_is_422(ctx):
    key = ps.unique_key()
    check_eq(ps.charge(ctx.paymentd, ctx.token, key, amount=10).status, 201, "first")
    with unchanged(ctx, "422"):
        r = ps.charge(ctx.paymentd, ctx.token, key, amount=10.01)
    ps.check_raw_error(r, 422, "idempotency_key_reused", "same key, other amount")
    check_eq(payments_with_key(ctx, key), 1, "payments for the key")


@test
def test_same_key_while_the_first_is_in_flight_is_409(ctx):
    key = ps.unique_key()
    results = {}
    with processor(ctx, {"latency_ms": 3000}):
        t = threading.Thread(target=lambda: results.setdefault(
            "first", ps.charge(ctx.paymentd, ctx.token, key, amount=5)))
        t.start()
        harness.wait_until(
            lambda: ctx.stack.sql(f"SELECT state FROM payment.idempotency_keys "
                                  f"WHERE key = '{key}'") == "in_progress",
            10, what="the first charge to claim the key")
        second = ps.charge(ctx.paymentd, ctx.token, key, amount=5)
        t.join(30)
    ps.check_raw_error(second, 409, "idempotency_key_in_progress", "concurrent repeat")
    check_eq(second.headers.get("retry-after"), "1", "Retry-After on 409")
    check_eq(results["first"].status, 201, "the first charge")
    later = ps.charge(ctx.paymentd, ctx.token, key, amount=5)
    check(later.status == 201 and later.replayed and later.body == results["first"].body,
          f"after completion the key replays: {later!r}")


@test
def test_decline_is_402_stored_and_replayed(ctx):
    key = ps.unique_key()
    before = ps.metric(ctx.paymentd, "vigil_payment_transactions_total", status="declined")
    payments = ps.state(ctx.stack)[0]
    with processor(ctx, {"decline_ratio": 1}):
        first = ps.charge(ctx.paymentd, ctx.token, key, amount=8)
    ps.check_raw_error(first, 402, "payment_declined", "declined charge")
    # Declines are stored: the replay comes back even now that the
    # processor would approve.
    again = ps.charge(ctx.paymentd, ctx.token, key, amount=8)
    check(again.status == 402 and again.replayed and again.body == first.body,
          f"decline not replayed byte for byte: {again!r} vs {first!r}")
    check_eq(ps.state(ctx.stack)[0], payments, "payments after a decline")
    after = ps.metric(ctx.paymentd, "vigil_payment_transactions_total", status="declined")
    check_eq(after - before, 1, "declined counter (replays do not count)")


@test
def test_injected_faults_via_sighup_are_503_then_recover(ctx):
    key = ps.unique_key()
    before = ps.metric(ctx.paymentd, "vigil_payment_transactions_total", status="failed")
    with processor(ctx, faults={"error_ratio": 1}):
        with unchanged(ctx, "injected fault"):
            for _ in range(3):
                r = ps.charge(ctx.paymentd, ctx.token, key, amount=9)
                ps.check_raw_error(r, 503, "processor_unavailable", "injected fault")
    after = ps.metric(ctx.paymentd, "vigil_payment_transactions_total", status="failed")
    check_eq(after - before, 3, "failed counter")
    # Not stored: the key was released, so the retry charges for real.
    r = ps.charge(ctx.paymentd, ctx.token, key, amount=9)
    check(r.status == 201 and not r.replayed, f"retry after the fault: {r!r}")


@test
def test_fault_latency_is_added_on_reload(ctx):
    with processor(ctx, faults={"latency_ms": 600}):
        t0 = time.monotonic()
        r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=1)
        elapsed = time.monotonic() - t0
    check_eq(r.status, 201, "charge with added latency")
    check(elapsed >= 0.6, f"charge took {elapsed:.3f} s, less than the injected 0.6 s")


@test
def test_a_bad_config_on_reload_keeps_the_running_one(ctx):
    ps.reload(ctx.paymentd, {"processor": {"decline_ratio": 7}})
    try:
        check("Reload failed" in ctx.paymentd.log_text(), "bad reload not logged")
        r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=2)
        check_eq(r.status, 201, "charge after a refused reload")
    finally:
        ps.reload(ctx.paymentd, ps.QUIET_PROCESSOR)


# --------------------------------------------------------------------------
# reading payments

@test
def test_payment_is_visible_to_its_owner_only(ctx):
    created = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=12.34).json()
    pid = created["payment_id"]
    r = ctx.paymentd.get(f"/payment/{pid}", token=ctx.token)
    check_eq(r.status, 200, "owner GET")
    check_eq(r.body["payment_id"], pid, "payment_id")
    check_eq(r.body["amount"], 12.34, "amount")
    check_eq(r.body["user_id"], ctx.user_id, "user_id")
    check_eq(r.body["status"], "success", "status")
    check(r.body.get("created_at", "").endswith("Z"), f"created_at {r.body!r}")
    check_error(ctx.paymentd.get(f"/payment/{pid}", token=ctx.other_token), 404, "not_found",
                "another user's payment")
    for path in ("/payment/999999999", "/payment/abc", "/payment/0", "/payment/-1",
                 "/payment/01", "/payment/99999999999999999999"):
        check_error(ctx.paymentd.get(path, token=ctx.token), 404, "not_found", path)
    check_error(ctx.paymentd.get(f"/payment/{pid}"), 401, "invalid_token", "no token")


# --------------------------------------------------------------------------
# authentication

@test
def test_missing_or_invalid_token_is_401_and_changes_nothing(ctx):
    with unchanged(ctx, "bad tokens"):
        for token in (None, "garbage", ctx.token + "x", "a.b.c"):
            r = ps.charge(ctx.paymentd, token, ps.unique_key())
            ps.check_raw_error(r, 401, "invalid_token", f"token {token!r:.20}")


@test
def test_revoked_token_is_refused_at_once(ctx):
    token, _, _ = harness.new_session(ctx.authd)
    check_eq(ps.charge(ctx.paymentd, token, ps.unique_key(), amount=1).status, 201, "before")
    check_eq(ctx.authd.post("/logout", token=token).status, 204, "logout")
    r = ps.charge(ctx.paymentd, token, ps.unique_key(), amount=1)
    ps.check_raw_error(r, 401, "invalid_token", "after logout")


@test
def test_auth_unreachable_is_503_and_not_ready(ctx):
    d = ps.new_paymentd(ctx, env={"VIGIL_AUTH_URL": f"http://127.0.0.1:{harness.closed_port()}"})
    d.start(wait_ready=False)
    # Until the schema is migrated /ready names postgres; then auth.
    ready = harness.wait_until(
        lambda: (lambda r: r if r.status == 503 and r.body.get("failing") == "auth" else None)(
            d.get("/ready")), 30, what="/ready 503 naming auth")
    check_error(ready, 503, "dependency_unavailable", "/ready with auth down")
    with unchanged(ctx, "auth down"):
        r = ps.charge(d, ctx.token, ps.unique_key())
    ps.check_raw_error(r, 503, "dependency_unavailable", "auth unreachable")
    check_eq(r.headers.get("retry-after"), "1", "Retry-After")
    check_eq(ps.metric(d, "vigil_dependency_up", dependency="auth"), 0, "dependency_up{auth}")
    d.stop()


@test
def test_auth_is_checked_without_traffic(ctx):
    """vigil_dependency_up{dependency="auth"} says authd is down with no
    request at all (no charge, no /ready): the daemon checks it every few
    seconds, so VigilDependencyDown can fire on an idle install."""
    d = ps.new_paymentd(ctx, env={"VIGIL_AUTH_URL": f"http://127.0.0.1:{harness.closed_port()}"})
    d.start(wait_ready=False)

    def auth_gauge():
        _, samples = ps.metrics(d)
        found = [s for s in samples if s.name == "vigil_dependency_up" and s.labels.get("dependency") == "auth"]
        return found[0] if found else None
    harness.wait_until(lambda: (lambda s: s is not None and s.value == 0)(auth_gauge()), 30,
                       what='vigil_dependency_up{dependency="auth"} 0 with no traffic')
    d.stop()


# --------------------------------------------------------------------------
# crash recovery and retention

def insert_claim(ctx, key, claimed_ago_seconds, amount_cents=1000):
    ctx.stack.sql(
        "INSERT INTO payment.idempotency_keys (user_id, key, request_hash, claim_token,"
        " claimed_at, created_at) VALUES"
        f" ({ctx.user_id}, '{key}',"
        f" sha256(convert_to('POST /charge amount_cents={amount_cents}', 'UTF8')), 1,"
        f" now() - interval '{claimed_ago_seconds} seconds', now())")


@test
def test_a_fresh_claim_of_a_dead_request_is_409(ctx):
    # As left by a paymentd killed between the claim and the commit.
    key = ps.unique_key("crash")
    insert_claim(ctx, key, 0)
    r = ps.charge(ctx.paymentd, ctx.token, key, amount=10)
    ps.check_raw_error(r, 409, "idempotency_key_in_progress", "fresh orphaned claim")


@test
def test_a_stale_claim_of_a_dead_request_is_taken_over(ctx):
    key = ps.unique_key("crash")
    insert_claim(ctx, key, 3600)
    r = ps.charge(ctx.paymentd, ctx.token, key, amount=10)
    check(r.status == 201 and not r.replayed, f"stale claim not taken over: {r!r}")
    check_eq(payments_with_key(ctx, key), 1, "payments for the key")
    again = ps.charge(ctx.paymentd, ctx.token, key, amount=10)
    check(again.replayed and again.body == r.body, f"replay after takeover: {again!r}")
    check("Took over idempotency key" in ctx.paymentd.log_text(), "takeover not logged")


@test
def test_a_stale_claim_for_another_request_is_still_422(ctx):
    key = ps.unique_key("crash")
    insert_claim(ctx, key, 3600, amount_cents=1000)
    r = ps.charge(ctx.paymentd, ctx.token, key, amount=99)
    ps.check_raw_error(r, 422, "idempotency_key_reused", "stale claim, other request")


@test
def test_keys_past_retention_are_pruned_and_younger_ones_kept(ctx):
    old, young = ps.unique_key("old"), ps.unique_key("young")
    for key in (old, young):
        check_eq(ps.charge(ctx.paymentd, ctx.token, key, amount=1).status, 201, "charge")
    ctx.stack.sql(f"UPDATE payment.idempotency_keys SET created_at = now() - interval '49 hours'"
                  f" WHERE key = '{old}'")
    ctx.stack.sql(f"UPDATE payment.idempotency_keys SET created_at = now() - interval '47 hours'"
                  f" WHERE key = '{young}'")
    ctx.paymentd.restart()  # prunes at its first tick
    harness.wait_until(
        lambda: ctx.stack.sql(f"SELECT count(*) FROM payment.idempotency_keys "
                              f"WHERE key = '{old}'") == "0", 30, what="the old key pruned")
    check_eq(ctx.stack.sql(f"SELECT count(*) FROM payment.idempotency_keys "
                           f"WHERE key = '{young}'"), "1", "the 47-hour-old key")


# --------------------------------------------------------------------------
# durability: the claim commits without waiting for its WAL flush, the
# answer only once its commit is durable

@contextlib.contextmanager
def synchronous_commits_held(ctx):
    """While inside, every commit that waits for its WAL flush also waits
    for a synchronous standby that never connects: it is held (committed
    locally, invisible to others) until the setting is reset on the way
    out, which releases it. Entered once a probe commit is seen held (the
    checkpointer applies the setting a moment after the reload)."""
    admin = re.sub(r"\bdbname=\S+", "", ctx.stack.env["VIGIL_TEST_PG_ADMIN_DSN"])
    probe = {"proc": None}

    def probe_held():
        if probe["proc"] is None or probe["proc"].poll() is not None:
            probe["proc"] = subprocess.Popen(
                ["psql", f"{admin} dbname=postgres application_name=vigil_sync_probe", "-X",
                 "-Atc", "SELECT pg_logical_emit_message(true, 'vigil_sync_probe', '')"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return ctx.stack.sql("SELECT count(*) FROM pg_stat_activity WHERE"
                             " application_name = 'vigil_sync_probe'"
                             " AND wait_event = 'SyncRep'") != "0"

    ctx.stack.psql("ALTER SYSTEM SET synchronous_standby_names = 'vigil_absent_standby'")
    try:
        ctx.stack.psql("SELECT pg_reload_conf()")
        harness.wait_until(probe_held, 15, what="a probe commit to be held")
        yield
    finally:
        ctx.stack.psql("ALTER SYSTEM RESET synchronous_standby_names")
        ctx.stack.psql("SELECT pg_reload_conf()")
        if probe["proc"] is not None:
            probe["proc"].wait(30)


def held_commits(ctx, role):
    return int(ctx.stack.sql(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"
                             " AND wait_event = 'SyncRep'"))


@test
def test_a_claim_commits_at_once_and_its_201_waits_for_its_durable_commit(ctx):
    key = ps.unique_key("durable")
    results = {}
    with synchronous_commits_held(ctx):
        t = threading.Thread(target=lambda: results.setdefault(
            "first", ps.charge(ctx.paymentd, ctx.token, key, amount=7)))
        t.start()
        # The claim does not wait for its flush: it shows while commits
        # that do wait are held.
        harness.wait_until(
            lambda: ctx.stack.sql(f"SELECT state FROM payment.idempotency_keys "
                                  f"WHERE key = '{key}'") == "in_progress",
            15, what="the claim to commit while synchronous commits are held")
        # The result does wait, and the client is not answered meanwhile.
        harness.wait_until(lambda: held_commits(ctx, "vigil_payment") == 1, 15,
                           what="the charge's result to wait for its synchronous commit")
        check_eq(payments_with_key(ctx, key), 0, "payments visible while the commit is held")
        # A repeat meanwhile waits for that commit (the key row is locked
        # by it), as it always has for one being flushed: no replay of a
        # 201 that is not durable yet. Released well within paymentd's
        # statement timeout (5 s).
        t2 = threading.Thread(target=lambda: results.setdefault(
            "repeat", ps.charge(ctx.paymentd, ctx.token, key, amount=7)))
        t2.start()
        harness.wait_until(
            lambda: ctx.stack.sql("SELECT count(*) FROM pg_stat_activity"
                                  " WHERE usename = 'vigil_payment'"
                                  " AND wait_event_type = 'Lock'") == "1",
            4, what="the repeat to wait for the held commit")
        check(not results, f"answered before the commit was durable: {results}")
    t.join(30)
    t2.join(30)
    check(not t.is_alive() and not t2.is_alive(), "not answered once the commit was released")
    first, repeat = results["first"], results["repeat"]
    check(first.status == 201 and not first.replayed, f"the held charge: {first!r}")
    check(repeat.replayed and repeat.body == first.body, f"the repeat: {repeat!r}")
    check_eq(payments_with_key(ctx, key), 1, "payments for the key")


def relay_wakes(ctx):
    return ctx.paymentd.log_text().count("Outbox relay: woken by a NOTIFY")


@test
def test_a_charge_wakes_the_relay_with_a_notify_after_its_commit(ctx):
    # The NOTIFY is no longer in the charge's transaction but follows its
    # commit, in the same round trip: the relay is still woken by it, not
    # left to find the event at its next poll.
    before = relay_wakes(ctx)
    r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key("wake"), amount=3)
    check_eq(r.status, 201, "charge")
    harness.wait_until(lambda: relay_wakes(ctx) > before, 15,
                       what="the relay to log a wake-up by a NOTIFY")


# --------------------------------------------------------------------------
# metrics

@test
def test_metrics_count_charges_and_track_revenue_from_the_aggregate(ctx):
    before_ok = ps.metric(ctx.paymentd, "vigil_payment_transactions_total", status="success")
    before_cents = ps.metric(ctx.paymentd, "vigil_payment_amount_cents_total")
    for amount in (1.01, 2.02, 3.03):
        check_eq(ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=amount).status, 201,
                 "charge")
    text, samples = ps.metrics(ctx.paymentd)
    check_eq(harness.metric_value(samples, "vigil_payment_transactions_total", status="success")
             - before_ok, 3, "success counter")
    check_eq(harness.metric_value(samples, "vigil_payment_amount_cents_total") - before_cents,
             606, "amount counter")
    total = int(ctx.stack.sql("SELECT COALESCE(sum(amount_cents), 0) FROM payment.payments"))
    revenue = harness.metric_value(samples, "vigil_revenue_dollars")
    check(abs(revenue - total / 100) < 0.005, f"revenue {revenue} vs payments {total / 100}")
    for name in ("vigil_outbox_pending", "vigil_outbox_oldest_age_seconds",
                 'vigil_dependency_up{dependency="amqp"}', 'vigil_payment_transactions_total'
                 '{status="failed"}', 'vigil_http_requests_total{route="/charge"'):
        check(name in text, f"{name} missing from /metrics")
    if os.path.exists(harness.PROMTOOL) or harness.shutil.which(harness.PROMTOOL):
        p = subprocess.run([harness.PROMTOOL, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30, check=False)
        check_eq(p.returncode, 0, f"promtool check metrics: {p.stdout!r} {p.stderr!r}")


@test
def test_outbox_is_drained_by_the_relay(ctx):
    r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=4.56)
    pid = r.json()["payment_id"]
    harness.wait_until(
        lambda: ctx.stack.sql(f"SELECT published_at IS NOT NULL FROM payment.outbox "
                              f"WHERE message_id = 'payment-{pid}'") == "t",
        15, what="the event published")
    harness.wait_until(lambda: ps.metric(ctx.paymentd, "vigil_outbox_pending") == 0, 15,
                       what="vigil_outbox_pending 0")
    row = ctx.stack.sql(f"SELECT traceparent FROM payment.outbox WHERE message_id = 'payment-{pid}'")
    check(row.startswith("00-") and len(row) == 55, f"event traceparent {row!r}")
    # The event is the body of docs/messaging.md and agrees with the payment.
    event = json.loads(ctx.stack.sql(f"SELECT body FROM payment.outbox "
                                     f"WHERE message_id = 'payment-{pid}'"))
    payment = ctx.paymentd.get(f"/payment/{pid}", token=ctx.token).body
    check_eq(event, {"payment_id": pid, "user_id": ctx.user_id, "amount_cents": 456,
                     "status": "success", "created_at": payment["created_at"]}, "event body")


# --------------------------------------------------------------------------
# a charge that pays a reservation of vigil-inventoryd

def inventoryd(ctx):
    """One inventoryd for the reservation tests, started on first use, once
    it has granted vigil_payment its two functions: it does so at its first
    check after the schema is migrated, which may come just after /ready
    answers 200 (until then paymentd answers 503, to be retried)."""
    if getattr(ctx, "inventoryd", None) is None:
        ctx.inventoryd = harness.new_inventoryd(ctx)
        ctx.inventoryd.start()
        granted = ("SELECT count(*) FILTER (WHERE has_function_privilege("
                   "'vigil_payment', p.oid, 'EXECUTE')) FROM pg_proc p "
                   "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'inventory' "
                   "AND p.proname IN ('reservation_state', 'pay_reservation')")
        harness.wait_until(lambda: ctx.stack.sql(granted) == "2", 15,
                           what="inventoryd to grant vigil_payment the payment of reservations")
    return ctx.inventoryd


def new_reservation(ctx, quantity=2, token=None, stock=10):
    """A reservation of quantity units of a product of its own; returns
    (reservation id, product id)."""
    inv = inventoryd(ctx)
    pid = int(ctx.stack.sql("INSERT INTO inventory.products (name, price_cents, stock) "
                            f"VALUES ('paid product', 500, {int(stock)}) RETURNING id"))
    r = inv.post(f"/product/{pid}/reserve", {"quantity": quantity},
                 token=token or ctx.token)
    check_eq(r.status, 200, f"reserve: {r.body!r}")
    return r.body["reservation_id"], pid


def reservation_row(ctx, rid):
    """(state, payment_id) of a reservation."""
    state, payment = ctx.stack.sql("SELECT state, coalesce(payment_id, 0) FROM "
                                   f"inventory.reservations WHERE id = {int(rid)}").split("|")
    return state, int(payment)


def product_stock(ctx, pid):
    return int(ctx.stack.sql(f"SELECT stock FROM inventory.products WHERE id = {int(pid)}"))


@test
def test_charge_pays_reservation(ctx):
    rid, pid = new_reservation(ctx, quantity=2)
    key = ps.unique_key("pay")
    wakes = relay_wakes(ctx)
    r = ps.charge(ctx.paymentd, ctx.token, key, body={"amount": 10, "reservation_id": rid})
    check_eq(r.status, 201, f"charge paying a reservation: {r!r}")
    # Its NOTIFY follows its COMMIT.
    harness.wait_until(lambda: relay_wakes(ctx) > wakes, 15,
                       what="the relay to log a wake-up by a NOTIFY")
    body = r.json()
    check_eq(body.get("reservation_id"), rid, "reservation_id in the answer")
    check_eq(reservation_row(ctx, rid), ("paid", body["payment_id"]), "reservation row")
    check_eq(ctx.stack.sql("SELECT reservation_id FROM payment.payments "
                           f"WHERE id = {body['payment_id']}"), str(rid), "payment row")
    got = ctx.paymentd.get(f"/payment/{body['payment_id']}", token=ctx.token)
    check_eq(got.body.get("reservation_id"), rid, "GET /payment shows the reservation")
    # The key replays byte for byte, and is bound to the reservation.
    again = ps.charge(ctx.paymentd, ctx.token, key, body={"amount": 10, "reservation_id": rid})
    check(again.status == 201 and again.replayed and again.body == r.body,
          f"replay differs: {again!r}")
    ps.check_raw_error(ps.charge(ctx.paymentd, ctx.token, key, body={"amount": 10}), 422,
                       "idempotency_key_reused", "same key without the reservation")
    with unchanged(ctx, "a second payment of a paid reservation"):
        ps.check_raw_error(ps.charge(ctx.paymentd, ctx.token, ps.unique_key(),
                                     body={"amount": 10, "reservation_id": rid}),
                           409, "reservation_not_held", "paying twice")
    # Paid stock is sold: neither its owner nor the sweep returns it.
    check_error(inventoryd(ctx).request("DELETE", f"/reservation/{rid}", token=ctx.token), 409,
                "reservation_paid", "release of a paid reservation")
    marker, _ = new_reservation(ctx, quantity=1)
    ctx.stack.sql("UPDATE inventory.reservations SET expires_at = now() - interval '1 hour' "
                  f"WHERE id IN ({int(rid)}, {int(marker)})")
    harness.wait_until(lambda: reservation_row(ctx, marker)[0] == "expired", 15,
                       what="the sweep to expire the marker reservation")
    check_eq(reservation_row(ctx, rid)[0], "paid", "paid reservation after the sweep")
    check_eq(product_stock(ctx, pid), 8, "stock of the paid product")


@test
def test_charge_for_an_unknown_or_another_users_reservation_is_404(ctx):
    theirs, _ = new_reservation(ctx, token=ctx.other_token)
    for rid, what in ((theirs, "another user's"), (theirs + 1000000, "unknown")):
        key = ps.unique_key("pay")
        with unchanged(ctx, what):
            ps.check_raw_error(ps.charge(ctx.paymentd, ctx.token, key,
                                         body={"amount": 1, "reservation_id": rid}),
                               404, "not_found", f"{what} reservation")
    check_eq(reservation_row(ctx, theirs), ("held", 0), "their reservation")
    for bad in ("7", 0, -1, 1.5, True, [1], 2 ** 63):
        with unchanged(ctx, f"reservation_id {bad!r}"):
            ps.check_raw_error(ps.charge(ctx.paymentd, ctx.token, ps.unique_key(),
                                         body={"amount": 1, "reservation_id": bad}),
                               400, "invalid_field", f"reservation_id {bad!r}")


@test
def test_charge_for_a_released_or_expired_reservation_is_409(ctx):
    released, _ = new_reservation(ctx)
    check_eq(inventoryd(ctx).request("DELETE", f"/reservation/{released}",
                                     token=ctx.token).status, 204, "release")
    expired, _ = new_reservation(ctx)
    ctx.stack.sql("UPDATE inventory.reservations SET expires_at = now() - interval '1 s' "
                  f"WHERE id = {int(expired)}")
    for rid, what in ((released, "released"), (expired, "expired")):
        key = ps.unique_key("pay")
        with unchanged(ctx, what):
            r = ps.charge(ctx.paymentd, ctx.token, key, body={"amount": 1, "reservation_id": rid})
            ps.check_raw_error(r, 409, "reservation_not_held", f"{what} reservation")
        # Nothing was charged and nothing stored: asked again, it is looked
        # at afresh, not replayed.
        again = ps.charge(ctx.paymentd, ctx.token, key,
                          body={"amount": 1, "reservation_id": rid})
        check(again.status == 409 and not again.replayed, f"{what}, again: {again!r}")


@test
def test_reservation_expiring_while_the_processor_runs_is_a_stored_409(ctx):
    rid, pid = new_reservation(ctx, quantity=3)
    key = ps.unique_key("pay")
    # Held when the charge starts, expired by the time the processor
    # answers: the payment's transaction refuses it, and the answer is
    # stored (the processor was asked) and replayed.
    with processor(ctx, {"latency_ms": 3000}):
        ctx.stack.sql("UPDATE inventory.reservations SET expires_at = now() + interval '1 s' "
                      f"WHERE id = {int(rid)}")
        before = ps.state(ctx.stack)
        r = ps.charge(ctx.paymentd, ctx.token, key, body={"amount": 3, "reservation_id": rid})
    ps.check_raw_error(r, 409, "reservation_not_held", "reservation expired meanwhile")
    after = ps.state(ctx.stack)
    check_eq(after[0], before[0], "payments")
    check_eq(after[2], before[2], "outbox events")
    check_eq(after[3], before[3], "revenue")
    again = ps.charge(ctx.paymentd, ctx.token, key, body={"amount": 3, "reservation_id": rid})
    check(again.status == 409 and again.replayed and again.body == r.body,
          f"not replayed byte for byte: {again!r}")
    harness.wait_until(lambda: reservation_row(ctx, rid)[0] == "expired", 15,
                       what="the sweep to expire it")
    check_eq(product_stock(ctx, pid), 10, "stock returned")


# --------------------------------------------------------------------------
# bad input: clear JSON errors, nothing changes

@test
def test_bad_amounts_are_400_and_change_nothing(ctx):
    cases = [
        (b'{"amount": -19.99}', "invalid_field"),
        (b'{"amount": 0}', "invalid_field"),
        (b'{"amount": 0.00}', "invalid_field"),
        (b'{"amount": -0}', "invalid_field"),
        (b'{"amount": 1000000.01}', "invalid_field"),
        (b'{"amount": 1e9}', "invalid_field"),
        (b'{"amount": 99999999999999999999999999}', "invalid_field"),
        (b'{"amount": -99999999999999999999999999}', "invalid_field"),
        (b'{"amount": 19.999}', "invalid_field"),
        (b'{"amount": 0.001}', "invalid_field"),
        (b'{"amount": "19.99"}', "invalid_field"),
        (b'{"amount": "abc"}', "invalid_field"),
        (b'{"amount": true}', "invalid_field"),
        (b'{"amount": [19.99]}', "invalid_field"),
        (b'{"amount": {"value": 19.99}}', "invalid_field"),
        (b'{"amount": null}', "missing_field"),
        (b'{}', "missing_field"),
        (b'{"amt": 19.99}', "missing_field"),
    ]
    with unchanged(ctx, "bad amounts"):
        for body, code in cases:
            r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), body=body)
            ps.check_raw_error(r, 400, code, body.decode())


@test
def test_malformed_bodies_are_400_and_change_nothing(ctx):
    cases = [
        (b'{"amount": 19.99', "invalid_json"),
        (b'', "invalid_json"),
        (b'amount=19.99', "invalid_json"),
        (b'{"amount": NaN}', "invalid_json"),
        (b'{"amount": 19.99} trailing', "invalid_json"),
        (b'[{"amount": 19.99}]', "not_an_object"),
        (b'19.99', "not_an_object"),
        (b'{"amount": 1, "note": "\xff\xfe"}', "invalid_utf8"),
        (b'{"a":' * 40 + b'1' + b'}' * 40, "too_deep"),
    ]
    with unchanged(ctx, "malformed bodies"):
        for body, code in cases:
            r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), body=body)
            ps.check_raw_error(r, 400, code, repr(body[:40]))


@test
def test_missing_or_bad_idempotency_key_is_400_and_changes_nothing(ctx):
    with unchanged(ctx, "bad keys"):
        r = ps.charge(ctx.paymentd, ctx.token, None)
        ps.check_raw_error(r, 400, "missing_field", "no Idempotency-Key")
        r = ps.charge(ctx.paymentd, ctx.token, "k" * 129)
        ps.check_raw_error(r, 400, "invalid_field", "129-byte key")
        raw = harness.build_request("POST", "/charge", b'{"amount": 1}', {
            "Content-Type": "application/json", "Authorization": "Bearer " + ctx.token,
            "Idempotency-Key": "caf\u00e9"})
        check_error(ctx.paymentd.raw(raw), 400, "invalid_field", "non-ASCII key")
        raw = harness.build_request("POST", "/charge", b'{"amount": 1}', {
            "Content-Type": "application/json", "Authorization": "Bearer " + ctx.token,
            "Idempotency-Key": "tab\there"})
        check_error(ctx.paymentd.raw(raw), 400, "invalid_field", "control character in key")
    # 128 bytes is fine.
    check_eq(ps.charge(ctx.paymentd, ctx.token, "k" * 127 + os.urandom(1).hex()[0],
                       amount=1).status, 201, "128-byte key")


@test
def test_huge_bodies_wrong_types_routes_and_methods(ctx):
    with unchanged(ctx, "transport-level refusals"):
        # Raw: the server answers 413 before reading it all.
        raw = harness.build_request("POST", "/charge", b"x" * (1024 * 1024), {
            "Content-Type": "application/json", "Authorization": "Bearer " + ctx.token,
            "Idempotency-Key": ps.unique_key()})
        check_error(ctx.paymentd.raw(raw), 413, "payload_too_large", "1 MiB body")
        r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(),
                      headers={"Content-Type": "text/plain"})
        ps.check_raw_error(r, 415, "unsupported_media_type", "text/plain")
        check_error(ctx.paymentd.get("/charge", token=ctx.token), 405, "method_not_allowed",
                    "GET /charge")
        check_error(ctx.paymentd.request("DELETE", "/payment/1", token=ctx.token), 405,
                    "method_not_allowed", "DELETE /payment/1")
        check_error(ctx.paymentd.post("/payments", {"amount": 1}, token=ctx.token), 404,
                    "not_found", "POST /payments")
        check_error(ctx.paymentd.get("/payment", token=ctx.token), 404, "not_found",
                    "GET /payment")


@test
def test_upgrade_from_the_first_schema_version_keeps_keys_replaying(ctx):
    key = ps.unique_key("old")
    first = ps.charge(ctx.paymentd, ctx.token, key, amount=7.25)
    check_eq(first.status, 201, "charge before the upgrade")
    # The database as the first release left it: migration 1 only, the
    # whole revenue in its one row.
    ctx.paymentd.stop()
    ctx.stack.sql("DROP INDEX payment.payments_reservation_id;"
                  " ALTER TABLE payment.payments DROP COLUMN reservation_id;"
                  " UPDATE payment.revenue SET amount_cents = amount_cents"
                  "   + (SELECT sum(amount_cents) FROM payment.revenue_shards);"
                  " DROP TABLE payment.revenue_shards;"
                  " DELETE FROM payment.schema_migrations WHERE version IN (2, 3)")
    before = ctx.stack.sql("SELECT id, user_id, amount_cents, status FROM payment.payments "
                           "ORDER BY id")
    revenue = ctx.stack.sql("SELECT amount_cents FROM payment.revenue")
    ctx.paymentd.start()
    check_eq(ctx.stack.sql("SELECT string_agg(version::text, ',' ORDER BY version) FROM "
                           "payment.schema_migrations"), "1,2,3", "migrations applied")
    check_eq(ctx.stack.sql("SELECT id, user_id, amount_cents, status FROM payment.payments "
                           "ORDER BY id"), before, "payments after the upgrade")
    check_eq(ps.metric(ctx.paymentd, "vigil_revenue_dollars"), int(revenue) / 100,
             "revenue after the upgrade")
    # A key stored before the upgrade is the same request, and replays.
    again = ps.charge(ctx.paymentd, ctx.token, key, amount=7.25)
    check(again.status == 201 and again.replayed and again.body == first.body,
          f"replay after the upgrade: {again!r}")
    check_eq(payments_with_key(ctx, key), 1, "payments for the key")


@test
def test_sigterm_exits_0_and_restart_serves_again(ctx):
    ctx.paymentd.restart()
    r = ps.charge(ctx.paymentd, ctx.token, ps.unique_key(), amount=1)
    check_eq(r.status, 201, "charge after restart")


if __name__ == "__main__":
    sys.exit(runner.main(setup, binaries=(ps.paymentd_binary(), harness.authd_binary(),
                                          harness.daemon_binary("inventoryd"))))
