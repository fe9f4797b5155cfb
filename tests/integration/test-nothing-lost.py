#!/usr/bin/env python3
"""Nothing lost (DESIGN.md §8 promise 2; issue 4).

Real PostgreSQL, Redis and RabbitMQ from scripts/dev-stack.sh; vigil-authd,
vigil-paymentd and vigil-notifyd from the build tree. A paced load of
POST /charge (each charge its own Idempotency-Key; a request whose outcome is
unknown — connection error, timeout, 5xx — or that finds its key in flight
(409) is retried later WITH THE SAME KEY, bounded, with backoff) runs while,
in turn:

  RabbitMQ is killed (SIGKILL) and started again,
  PostgreSQL is restarted,
  paymentd is kill -9'ed and restarted,
  notifyd is kill -9'ed and restarted,

and about 1 % of the messages are poison, published straight to the
exchange with tests/integration/amqp-publish. Afterwards, once the outbox is
drained and notifyd is idle, the accounting is printed and asserted:

  every committed charge (201) has exactly one notification, no notification
  lacks its charge, no Idempotency-Key has more than one payment, every
  payment has its outbox row and the outbox is drained, and the dead-letter
  queue holds exactly the injected poison, each message once but those in
  flight when notifyd or RabbitMQ was killed (parking is at least once).

Every loop is bounded in count and time. By hand:
  top_builddir=/path/to/build python3 tests/integration/test-nothing-lost.py
"""

import heapq
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import paymentd_stack as ps  # noqa: E402
from harness import check, check_eq  # noqa: E402

runner = harness.Runner("test-nothing-lost", test_timeout=420)
test = runner.test

PUBLISHER = os.path.join(harness.TOP_BUILDDIR, "tests", "integration", "amqp-publish")
MAIN_QUEUE = "vigil.notify.payments"
DEAD_QUEUE = "vigil.notify.dead"
RETRY_QUEUES = ("vigil.notify.retry.1", "vigil.notify.retry.2")
MAX_ATTEMPTS = 3  # notifyd: first delivery + retry queues 1 (1 s) and 2 (4 s)

# The load: RATE new charges a second from WORKERS threads for as long as the
# chaos runs (plus a tail), never more than MAX_CHARGES nor LOAD_LIMIT_S.
# While a restarting RabbitMQ boots (10 to 40 s on a busy machine), only
# SLOW_RATE: the outage itself sees the full rate, and the total stays near
# a few thousand however slow the broker is.
RATE = 80.0
SLOW_RATE = 20.0
WORKERS = 8
USERS = 4
MAX_CHARGES = 5000
MIN_CHARGES = 2500  # the load runs on after the last fault until this many
LOAD_LIMIT_S = 200.0
TAIL_S = 3.0
REQUEST_TIMEOUT_S = 10.0
# A charge is retried at most KEY_MAX_TRIES times within KEY_DEADLINE_S. A
# claim left by a killed paymentd answers 409 until takeover_seconds (30,
# the least allowed) have passed: the budget covers that with a margin.
TAKEOVER_S = 30
KEY_MAX_TRIES = 80
KEY_DEADLINE_S = 120.0
# After each fault, this many more charges must be committed (the load runs
# on through the recovery) before the next one, within STEP_PROGRESS_S.
STEP_PROGRESS = 150
STEP_PROGRESS_S = 90.0
OUTAGE_S = 3.0  # how long RabbitMQ stays dead
POISON_SHARE = 0.01
DRAIN_TIMEOUT_S = 120.0

PAYMENTD_CONFIG = {
    "processor": {"latency_ms": 1, "decline_ratio": 0},
    "faults": {"error_ratio": 0, "latency_ms": 0},
    "idempotency": {"takeover_seconds": TAKEOVER_S},
    "outbox": {"poll_interval_ms": 200},
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def amqp_password(stack):
    with open(os.path.join(stack.dir, "secrets", "amqp-password"), encoding="utf-8") as f:
        return f.read().strip()


def setup(ctx):
    ctx.stack = harness.Stack(ps.SERVICES)
    ctx.cleanup(ctx.stack.stop)
    ctx.stack.start()
    ctx.authd = harness.new_authd(ctx, env={"VIGIL_LOG_LEVEL": "info",
                                            "VIGIL_HTTP_ACCESS_LOG": "false"})
    ctx.authd.start()
    ctx.paymentd = ps.new_paymentd(ctx, env={"VIGIL_LOG_LEVEL": "info"},
                                   config=PAYMENTD_CONFIG)
    ctx.paymentd.start()

    s = ctx.stack.env
    with open(s["VIGIL_DEV_PG_PASSWORD_FILE_NOTIFY"], "rb") as f:
        pg_password = f.read()
    password = amqp_password(ctx.stack)
    env = {
        "VIGIL_POSTGRES_DSN": s["VIGIL_DEV_PG_DSN_NOTIFY"],
        "VIGIL_AMQP_URL": s["VIGIL_AMQP_URL"].replace(":" + password + "@", "@"),
        "VIGIL_TRACING_OTLP_ENDPOINT": "",
        "VIGIL_CONSUMER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "VIGIL_PROCESSOR_SEND_LATENCY_MS": "1",
        "VIGIL_LOG_LEVEL": "info",
        "VIGIL_HTTP_ACCESS_LOG": "false",
    }
    ctx.notifyd = harness.Daemon("notifyd", env=env, credentials={
        "postgres-password": pg_password, "amqp-password": password})
    ctx.daemons.append(ctx.notifyd)
    ctx.cleanup(ctx.notifyd.close)
    ctx.notifyd.start()
    ctx.tokens = [harness.new_session(ctx.authd)[0] for _ in range(USERS)]


# --------------------------------------------------------------------------
# AMQP through the test tool

def amqp_tool(ctx, *args, stdin=None, timeout=60):
    """Run amqp-publish; returns (exit status, stdout lines, stderr)."""
    env = dict(os.environ, VIGIL_AMQP_URL=ctx.stack.env["VIGIL_AMQP_URL"])
    try:
        p = subprocess.run([PUBLISHER, *args], input=stdin, capture_output=True, text=True,
                           env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return -1, [], f"no answer within {timeout} s"
    return p.returncode, p.stdout.splitlines(), p.stderr


def queue_count(ctx, queue):
    rc, out, err = amqp_tool(ctx, "--count", queue)
    check(rc == 0 and out, f"amqp-publish --count {queue}: {rc} {err}")
    return int(out[0])


def queue_message_ids(ctx, queue):
    rc, out, err = amqp_tool(ctx, "--dump", queue)
    check(rc == 0, f"amqp-publish --dump {queue}: {rc} {err}")
    return [json.loads(line).get("message_id") for line in out]


def poison_body(n):
    """Malformed payment events of several kinds: each must be parked."""
    kind = n % 5
    if kind == 0:
        return "{this is not json"
    if kind == 1:
        return json.dumps({"payment_id": 10 ** 12 + n})  # fields missing
    if kind == 2:
        return json.dumps({"payment_id": str(n), "user_id": 7, "amount_cents": 19.99,
                           "status": "success", "created_at": "2026-11-24T04:20:00Z"})
    if kind == 3:
        return json.dumps([{"payment_id": n}])
    return json.dumps({"payment_id": -n - 1, "user_id": 7, "amount_cents": 1999,
                       "status": "success", "created_at": "2026-11-24T04:20:00Z"})


class Poison:
    """Poison messages published confirmed; acked ones must be parked, ones
    whose publish outcome is unknown (the tool failed) may be."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.next = 0
        self.acked = []
        self.unknown = []
        self.last = []     # the batch published last
        self.at_risk = []  # in flight when notifyd or RabbitMQ was killed

    def inject(self, count, tries=5):
        for _ in range(tries):
            ids = [f"poison-{os.getpid()}-{self.next + i}" for i in range(count)]
            lines = "".join(json.dumps({"message_id": mid, "body": poison_body(self.next + i)})
                            + "\n" for i, mid in enumerate(ids))
            self.next += count
            rc, out, err = amqp_tool(self.ctx, stdin=lines)
            if rc == 0 and out == ["ack"] * count:
                self.acked += ids
                self.last = ids
                log(f"poison: {count} published ({ids[0]} …)")
                return
            # Published or not, nobody knows: other ids next time.
            self.unknown += ids
            log(f"poison: publish failed ({rc}, {out}, {err.strip()}); again with new ids")
            time.sleep(1)
        raise AssertionError(f"could not publish {count} poison messages in {tries} tries")


# --------------------------------------------------------------------------
# The load

class Key:
    __slots__ = ("name", "token", "body", "tries", "first", "payment_ids", "done", "gave_up",
                 "history")

    def __init__(self, name, token, body):
        self.name = name
        self.token = token
        self.body = body
        self.tries = 0
        self.first = None
        self.payment_ids = set()
        self.done = False
        self.gave_up = None
        self.history = []


class Load:
    """Charges at RATE a second; retries due later in a heap. Thread-safe
    counters of every outcome."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.lock = threading.Lock()
        self.keys = []
        self.retries = []  # heap of (due, seq, Key)
        self.seq = 0
        self.stop_issuing = threading.Event()
        self.t0 = None
        self.rate = RATE
        self.next_due = None
        self.requests = 0
        self.outcomes = {}  # "201", "409", "503", "conn", ...
        self.committed = 0
        self.replayed = 0
        self.unexpected = []  # (key, status, body) of statuses outside 201/409/503
        self.threads = []
        self.rng = random.Random(4)

    def count(self, what):
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    def set_rate(self, rate):
        with self.lock:
            self.rate = rate

    def committed_now(self):
        with self.lock:
            return self.committed

    def _next(self):
        """(Key or None, seconds to sleep, finished)."""
        now = time.monotonic()
        with self.lock:
            if self.retries and self.retries[0][0] <= now:
                return heapq.heappop(self.retries)[2], 0, False
            issuing = (not self.stop_issuing.is_set() and len(self.keys) < MAX_CHARGES and
                       now - self.t0 < LOAD_LIMIT_S)
            if issuing:
                due = self.next_due
                if due <= now:
                    # After a stall, catch up by a second's worth at most.
                    self.next_due = max(due, now - 1.0) + 1.0 / self.rate
                    n = len(self.keys)
                    cents = 100 + (n % 997) * 7  # whole cents, written exactly
                    k = Key(f"nl-{os.getpid()}-{n}", self.ctx.tokens[n % USERS],
                            f'{{"amount": {cents // 100}.{cents % 100:02d}}}')
                    self.keys.append(k)
                    return k, 0, False
                wait = due - now
            elif not self.retries:
                return None, 0, True
            else:
                wait = 0.05
            if self.retries:
                wait = min(wait, self.retries[0][0] - now)
        return None, max(0.001, min(wait, 0.05)), False

    def _retry(self, k, delay, why):
        now = time.monotonic()
        with self.lock:
            if k.tries >= KEY_MAX_TRIES or now + delay - k.first > KEY_DEADLINE_S:
                k.gave_up = why
                return
            self.seq += 1
            heapq.heappush(self.retries, (now + delay, self.seq, k))

    def _backoff(self, k):
        return min(2.0, 0.05 * 2 ** min(k.tries, 6)) * (0.5 + self.rng.random() / 2)

    def _attempt(self, k):
        d = self.ctx.paymentd
        if k.first is None:
            k.first = time.monotonic()
        k.tries += 1
        try:
            r = ps.charge(d, k.token, k.name, body=k.body, timeout=REQUEST_TIMEOUT_S)
        except (OSError, http.client.HTTPException, TypeError) as e:
            # Refused, reset, timed out: the outcome is unknown, the key
            # makes the retry safe.
            with self.lock:
                self.requests += 1
                self.count("conn")
            k.history.append(type(e).__name__)
            self._retry(k, self._backoff(k), f"connection: {e!r}")
            return
        with self.lock:
            self.requests += 1
            self.count(str(r.status))
        k.history.append(r.status)
        if r.status == 201:
            try:
                pid = r.json()["payment_id"]
            except (ValueError, KeyError, TypeError):
                with self.lock:
                    self.unexpected.append((k.name, r.status, r.body[:200]))
                return
            with self.lock:
                k.payment_ids.add(pid)
                if not k.done:
                    k.done = True
                    self.committed += 1
                if r.replayed:
                    self.replayed += 1
            return
        if r.status == 409:
            self._retry(k, 1.0 + self.rng.random(), "409 in progress")
            return
        if r.status >= 500:
            if r.status != 503:
                with self.lock:
                    self.unexpected.append((k.name, r.status, r.body[:200]))
            self._retry(k, self._backoff(k), f"{r.status} {r.body[:100]!r}")
            return
        # 4xx other than 409: a refusal that retrying cannot change.
        with self.lock:
            self.unexpected.append((k.name, r.status, r.body[:200]))
            k.gave_up = f"{r.status} {r.body[:100]!r}"

    def _worker(self):
        while True:
            k, wait, finished = self._next()
            if finished:
                return
            if k is None:
                time.sleep(wait)
                continue
            self._attempt(k)

    def start(self):
        self.t0 = time.monotonic()
        self.next_due = self.t0
        for i in range(WORKERS):
            t = threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        check(not any(t.is_alive() for t in self.threads),
              f"the load did not finish within {timeout} s")

    def snapshot(self):
        with self.lock:
            return dict(self.outcomes)


def outcomes_between(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after
            if after.get(k, 0) != before.get(k, 0)}


# --------------------------------------------------------------------------
# The chaos

def wait_progress(ctx, load, what):
    """Wait until STEP_PROGRESS more charges are committed than now."""
    target = load.committed_now() + STEP_PROGRESS
    harness.wait_until(lambda: load.committed_now() >= target, STEP_PROGRESS_S, interval=0.1,
                       what=f"{STEP_PROGRESS} charges committed after {what} "
                            f"(now {load.committed_now()}, outcomes {load.snapshot()})")


def step(ctx, load, poison, what, action, parks_again=False):
    """parks_again: the action kills notifyd or RabbitMQ, so the poison in
    flight may be parked again (the dead queue's confirm came, the original's
    ack was lost with the process or the broker's unsynced state)."""
    if parks_again:
        poison.at_risk += poison.last
    t0 = time.monotonic()
    before = load.snapshot()
    keys_before = len(load.keys)
    log(f"chaos: {what}")
    action()
    took = time.monotonic() - t0
    wait_progress(ctx, load, what)
    after = load.snapshot()
    log(f"chaos: {what}: done in {took:.1f} s, recovered in "
        f"{time.monotonic() - t0:.1f} s; responses meanwhile {outcomes_between(before, after)}")
    # About 1 % poison, published while the broker is known to be up.
    poison.inject(max(1, round((len(load.keys) - keys_before) * POISON_SHARE)))
    ctx.timeline.append((what, took, outcomes_between(before, after)))


def kill_and_start_rabbitmq(ctx, load):
    ctx.stack.kill("rabbitmq")
    time.sleep(OUTAGE_S)  # charges keep committing into the outbox
    load.set_rate(SLOW_RATE)
    try:
        ctx.stack.start_one("rabbitmq")
    finally:
        load.set_rate(RATE)


def restart_postgres(ctx):
    ctx.stack.restart("postgres")


def kill_9(d):
    d.kill()
    d.start(wait_ready=False)
    d.wait_ready(60)


# --------------------------------------------------------------------------
# The accounting

def sql_int(ctx, query):
    return int(ctx.stack.sql(query) or 0)


def sql_list(ctx, query, limit=20):
    out = ctx.stack.sql(f"{query} LIMIT {limit}")
    return out.splitlines() if out else []


def drained(ctx, committed):
    unpublished = sql_int(ctx, "SELECT count(*) FROM payment.outbox WHERE published_at IS NULL")
    notified = sql_int(ctx, "SELECT count(DISTINCT payment_id) FROM notify.notifications")
    if unpublished or notified < committed:
        return None
    queued = sum(queue_count(ctx, q) for q in (MAIN_QUEUE, *RETRY_QUEUES))
    return queued == 0


@test
def test_every_committed_charge_is_notified_exactly_once_across_kills(ctx):
    ctx.timeline = []
    poison = Poison(ctx)
    load = Load(ctx)
    t_start = time.monotonic()
    load.start()
    try:
        wait_progress(ctx, load, "the start")
        poison.inject(2)
        step(ctx, load, poison, "kill -9 RabbitMQ, start it again",
             lambda: kill_and_start_rabbitmq(ctx, load), parks_again=True)
        step(ctx, load, poison, "restart PostgreSQL", lambda: restart_postgres(ctx))
        step(ctx, load, poison, "kill -9 paymentd, start it again", lambda: kill_9(ctx.paymentd))
        step(ctx, load, poison, "kill -9 notifyd, start it again", lambda: kill_9(ctx.notifyd),
             parks_again=True)
        keys_before = len(load.keys)
        harness.wait_until(lambda: len(load.keys) >= MIN_CHARGES, MIN_CHARGES / RATE + 30,
                           interval=0.1, what=f"{MIN_CHARGES} charges issued")
        time.sleep(TAIL_S)
        poison.inject(max(1, round((len(load.keys) - keys_before) * POISON_SHARE)))
    finally:
        load.stop_issuing.set()
    load.join(KEY_DEADLINE_S + 30)
    t_load = time.monotonic() - t_start
    log(f"load finished in {t_load:.1f} s: {len(load.keys)} charges, {load.requests} requests")

    # Bounded wait for the relay and the consumer to catch up.
    client_committed = {pid for k in load.keys for pid in k.payment_ids}
    try:
        harness.wait_until(lambda: drained(ctx, len(client_committed)), DRAIN_TIMEOUT_S,
                           interval=0.5, what="the outbox drained and notifyd idle")
        drain_error = None
    except AssertionError as e:
        drain_error = str(e)
    time.sleep(1.0)  # a late duplicate or a late park would show now
    t_drain = time.monotonic() - t_start - t_load

    # ---- the accounting
    attempted = len(load.keys)
    payments_db = sql_int(ctx, "SELECT count(*) FROM payment.payments")
    notified = sql_int(ctx, "SELECT count(*) FROM notify.notifications")
    lost = sql_list(ctx, "SELECT p.id FROM payment.payments p WHERE NOT EXISTS "
                         "(SELECT 1 FROM notify.notifications n WHERE n.payment_id = p.id) "
                         "ORDER BY p.id")
    lost_n = sql_int(ctx, "SELECT count(*) FROM payment.payments p WHERE NOT EXISTS "
                          "(SELECT 1 FROM notify.notifications n WHERE n.payment_id = p.id)")
    dup_notified = sql_list(ctx, "SELECT payment_id || ':' || count(*) FROM "
                                 "notify.notifications GROUP BY payment_id HAVING count(*) > 1")
    dup_keys = sql_list(ctx, "SELECT user_id || '/' || idempotency_key || ':' || count(*) FROM "
                             "payment.payments GROUP BY user_id, idempotency_key "
                             "HAVING count(*) > 1")
    dup_client = [(k.name, sorted(k.payment_ids)) for k in load.keys if len(k.payment_ids) > 1]
    orphans = sql_list(ctx, "SELECT n.payment_id FROM notify.notifications n WHERE NOT EXISTS "
                            "(SELECT 1 FROM payment.payments p WHERE p.id = n.payment_id)")
    mismatched = sql_list(ctx, "SELECT p.id FROM payment.payments p JOIN notify.notifications n "
                               "ON n.payment_id = p.id WHERE n.user_id <> p.user_id "
                               "OR n.amount_cents <> p.amount_cents "
                               "OR n.message_id <> 'payment-' || p.id")
    no_outbox = sql_list(ctx, "SELECT p.id FROM payment.payments p WHERE NOT EXISTS "
                              "(SELECT 1 FROM payment.outbox o "
                              " WHERE o.message_id = 'payment-' || p.id)")
    unpublished = sql_int(ctx, "SELECT count(*) FROM payment.outbox WHERE published_at IS NULL")
    db_ids = {int(x) for x in ctx.stack.sql("SELECT id FROM payment.payments").split()}
    unanswered = sorted(db_ids - client_committed)  # committed, the client never learned
    phantom = sorted(client_committed - db_ids)     # a 201 without a row
    gave_up = [(k.name, k.gave_up, k.history[-5:]) for k in load.keys if not k.done]
    parked = queue_message_ids(ctx, DEAD_QUEUE)
    parked_set = set(parked)
    parked_dups = sorted({m for m in parked if parked.count(m) > 1})
    missing_poison = sorted(set(poison.acked) - parked_set)
    extra_parked = [m for m in parked if m not in poison.acked and m not in poison.unknown]
    main_left = queue_count(ctx, MAIN_QUEUE)

    print("\n==== nothing-lost accounting ====")
    print(f"attempted   {attempted:6d}  charges (distinct Idempotency-Keys), "
          f"{load.requests} HTTP requests, {load.requests - attempted} retries")
    print(f"responses          {dict(sorted(load.outcomes.items()))} "
          f"({load.replayed} 201s replayed a stored response)")
    print(f"committed   {len(client_committed):6d}  distinct payment ids answered 201 "
          f"({payments_db} payment rows; {len(unanswered)} committed but never answered, "
          f"{len(phantom)} answered without a row)")
    print(f"notified    {notified:6d}  rows in notify.notifications")
    print(f"lost        {lost_n:6d}  committed without a notification {lost[:10]}")
    print(f"duplicated  {len(dup_notified) + len(dup_keys) + len(dup_client):6d}  "
          f"(payments notified twice {dup_notified[:5]}, keys with >1 payment {dup_keys[:5]}, "
          f"keys answered with >1 payment id {dup_client[:5]})")
    print(f"parked      {len(parked):6d}  in {DEAD_QUEUE} (injected poison: {len(poison.acked)} "
          f"confirmed + {len(poison.unknown)} of unknown outcome; "
          f"{len(poison.acked) / max(1, attempted) * 100:.1f} % of the charges)")
    print(f"parked twice {len(parked_dups):5d}  {parked_dups} (a kill between confirm and ack)")
    print(f"orphans     {len(orphans):6d}  notifications without a charge")
    print(f"outbox             {unpublished} unpublished, {len(no_outbox)} payments without a row; "
          f"{main_left} left in {MAIN_QUEUE}")
    print(f"unresolved  {len(gave_up):6d}  charges never answered 201 {gave_up[:5]}")
    print(f"timing             load+chaos {t_load:.1f} s, drain {t_drain:.1f} s")
    for what, took, outcomes in ctx.timeline:
        print(f"  {what}: {took:.1f} s, responses until recovered {outcomes}")
    if load.unexpected:
        print(f"unexpected responses: {len(load.unexpected)}, e.g. {load.unexpected[:5]}")
    print("=================================\n", flush=True)

    check(drain_error is None, f"not drained: {drain_error}")
    check_eq(lost_n, 0, "committed charges without a notification")
    check_eq(dup_notified, [], "payments notified more than once")
    check_eq(dup_keys, [], "Idempotency-Keys with more than one payment")
    check_eq(dup_client, [], "keys answered with more than one payment id")
    check_eq(orphans, [], "notifications without a charge")
    check_eq(mismatched, [], "notifications that disagree with their payment")
    check_eq(no_outbox, [], "payments without an outbox row")
    check_eq(unpublished, 0, "unpublished outbox rows")
    check_eq(phantom, [], "201 answers without a payment row")
    # Parking is at least once (docs/messaging.md): a notifyd or a RabbitMQ
    # killed between the dead queue's confirm and the original's ack parks
    # that message again. Only poison in flight at such a kill may be.
    check(set(parked_dups) <= set(poison.at_risk),
          f"messages parked more than once: {parked_dups}, of which only {poison.at_risk} were in flight "
          f"when notifyd or RabbitMQ was killed")
    check_eq(missing_poison, [], "confirmed poison messages not parked")
    check_eq(extra_parked, [], "parked messages that are not injected poison")
    check_eq(main_left, 0, f"messages left in {MAIN_QUEUE}")
    check_eq(gave_up, [], "charges that never got a 201 within the retry budget")
    check_eq(len(client_committed), attempted, "every charge committed")
    check(len(poison.acked) >= attempted * POISON_SHARE * 0.5,
          f"only {len(poison.acked)} poison messages for {attempted} charges")
    five_xx = [u for u in load.unexpected if u[1] >= 500]
    check_eq([u for u in load.unexpected if u[1] < 500], [], "refusals (4xx other than 409)")
    if five_xx:
        runner.note(f"{len(five_xx)} responses were 5xx other than 503 "
                    f"(retried with the same key), e.g. {five_xx[:3]}")
    runner.note(f"{attempted} charges, {len(client_committed)} committed, {notified} notified, "
                f"0 lost, 0 duplicated, {len(parked)} parked = injected poison; "
                f"load+chaos {t_load:.0f} s, drain {t_drain:.0f} s")


if __name__ == "__main__":
    if not os.path.exists(PUBLISHER):
        print(f"ERROR: {PUBLISHER} is not built", file=sys.stderr)
        sys.exit(harness.HARD_ERROR)
    sys.exit(runner.main(setup, binaries=(ps.paymentd_binary(), harness.authd_binary(),
                                          harness.daemon_binary("notifyd"))))
