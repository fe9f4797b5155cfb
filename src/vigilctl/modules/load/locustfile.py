"""vigil's user flows for Locust, run by `vigilctl load` (see vigilctl(8)).

Each simulated user registers once, logs in, then picks one task after
another, with a think time between two (at least the Retry-After of a 429
or 503 it got):

  browse   (weight 5)  GET  /api/v1/inventory/products
  look     (weight 3)  GET  /api/v1/inventory/product/{id}
  buy      (weight 2)  POST /api/v1/inventory/product/{id}/reserve,
                       POST /api/v1/payment/charge (Idempotency-Key, the
                       reservation and its price), GET /api/v1/payment/payment/{id}
  sign in  (weight 1)  POST /api/v1/auth/login (a new session)

Locust's statistics are kept per step, named after it: register, login,
products, product, reserve, charge, payment (never a URL with an id).

What counts as a failure: any answer the API does not document for the
request, a 5xx, a 429, a timeout or a connection error. These documented
answers are outcomes of the flow, not failures: 409 insufficient_stock to a
reservation (the product is sold out: nothing is charged) and 402
payment_declined to a charge (the processor declined it).

A charge that gets 502, 503, 409 idempotency_key_in_progress or no answer is
sent again with the same Idempotency-Key (at most twice, after Retry-After),
as docs/api.md says a client should; each attempt is one "charge" request.

Settings (environment, set by vigilctl load):
  VIGIL_LOAD_THINK_TIME  MIN:MAX seconds between two tasks (default 0.5:1.5)
  VIGIL_LOAD_SEED        seed of the random choices (default: none)
  VIGIL_LOAD_PRODUCTS    comma list of the product ids to look at and buy
                         (default: those the catalogue lists)
  VIGIL_LOAD_REPORT      where to write the run's report (JSON) when Locust quits
  VIGIL_LOAD_TIMEOUT     seconds a request may take (default 30)

Run by hand (the report is vigilctl's; Locust's own output works as usual):
  locust -f locustfile.py --host http://127.0.0.1 --headless -u 5 -r 5 -t 30s
"""

import itertools
import json
import os
import random
import time
import uuid

from locust import FastHttpUser, events, task

API = "/api/v1"
STEPS = ("register", "login", "products", "product", "reserve", "charge", "payment")
PASSWORD = "vigil-load-" + uuid.uuid4().hex
CHARGE_ATTEMPTS = 3


def _think_time():
    text = os.environ.get("VIGIL_LOAD_THINK_TIME") or "0.5:1.5"
    lo, _, hi = text.partition(":")
    lo = float(lo)
    hi = float(hi) if hi else lo
    if not 0 <= lo <= hi <= 3600:
        raise ValueError(f"VIGIL_LOAD_THINK_TIME={text!r}: expected MIN:MAX seconds, 0 <= MIN <= MAX")
    return lo, hi


def _products():
    text = os.environ.get("VIGIL_LOAD_PRODUCTS") or ""
    return [int(x) for x in text.split(",") if x.strip()]


THINK_MIN, THINK_MAX = _think_time()
SEED = os.environ.get("VIGIL_LOAD_SEED") or None
FIXED_PRODUCTS = _products()
TIMEOUT = float(os.environ.get("VIGIL_LOAD_TIMEOUT") or 30)
# Unique per run whatever the seed: user names must not collide with those
# of an earlier run (a 409 username_taken), nor idempotency keys (a replay).
RUN_ID = uuid.uuid4().hex[:12]
if SEED is not None:
    random.seed(f"{SEED}:tasks")  # Locust picks the tasks with the random module

# What the statistics per step do not tell: the outcomes of the flow.
OUTCOMES = {
    "users_started": 0,
    "charges_paid": 0,          # 201, not a replay
    "charges_replayed": 0,      # 201 or 402 with Idempotent-Replayed: true
    "charges_declined": 0,      # 402 payment_declined
    "charges_retried": 0,       # attempts sent again with the same key
    "out_of_stock": 0,          # 409 insufficient_stock to a reservation
    "rate_limited": 0,          # 429 rate_limited: the gateway's limiter
    "rate_limited_by_step": {s: 0 for s in STEPS},
}
_user_numbers = itertools.count(1)


def _error_code(response):
    try:
        return response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - any body that is not our error shape
        return None


def _describe(response):
    """A failure's text: stable (no id), so Locust groups equal ones."""
    if response.status_code == 0 or response.status_code is None:
        return f"no answer: {response.error!r}"[:200]
    code = _error_code(response)
    if response.status_code == 429 and code == "rate_limited":
        return "HTTP 429 rate_limited: refused by the gateway's rate limiter"
    return f"HTTP {response.status_code} {code or 'unexpected answer'}"


class VigilUser(FastHttpUser):
    """One customer of the shop."""

    network_timeout = TIMEOUT
    connection_timeout = min(TIMEOUT, 10.0)

    def wait_time(self):
        # An answer with Retry-After (429, 503) is honoured as clients are
        # told to (docs/api.md): the user waits at least that long.
        backoff, self.backoff = self.backoff, 0.0
        return max(self.rng.uniform(THINK_MIN, THINK_MAX), backoff)

    def on_start(self):
        self.number = next(_user_numbers)
        self.rng = random.Random(f"{SEED}:{self.number}") if SEED is not None else random.Random()
        self.username = f"vigil-load-{RUN_ID}-{self.number}"
        self.registered = False
        self.token = None
        self.backoff = 0.0
        self.products = {pid: None for pid in FIXED_PRODUCTS}  # id -> price_cents
        OUTCOMES["users_started"] += 1
        self.sign_in()

    # ---- one request, classified

    def call(self, method, path, step, expected, body=None, headers=None, outcomes=(),
             valid=None):
        """One request named step. expected: the statuses of a success;
        outcomes: (status, error code) answers that are documented outcomes
        of the flow, not failures; valid(doc): None when the body of a
        success is right, else what is wrong. Returns (status, JSON body or
        None, response headers)."""
        h = dict(headers or {})
        if self.token and step not in ("register", "login"):
            h["Authorization"] = "Bearer " + self.token
        with self.client.request(method, API + path, name=step, json=body, headers=h,
                                 catch_response=True) as r:
            status = r.status_code or 0
            code = _error_code(r) if status >= 400 else None
            if status in (429, 503) and r.headers:
                self.backoff = max(self.backoff, _retry_after(r.headers))
            try:
                doc = r.json() if status and r.content else None
            except Exception:  # noqa: BLE001
                doc = None
            wrong = valid(doc) if valid and status in expected else None
            if wrong:
                r.failure(f"HTTP {status}: {wrong}")
            elif status in expected or (status, code) in outcomes:
                r.success()
            else:
                if status == 429 and code == "rate_limited":
                    OUTCOMES["rate_limited"] += 1
                    OUTCOMES["rate_limited_by_step"][step] += 1
                if status == 401 and step not in ("register", "login"):
                    self.token = None  # expired or revoked: sign in again
                r.failure(_describe(r))
            return status, doc, r.headers or {}

    # ---- the steps

    def sign_in(self):
        """Register (once) and log in; False when either failed."""
        if not self.registered:
            status, _, _ = self.call("POST", "/auth/register", "register", (201,),
                                     {"username": self.username, "password": PASSWORD})
            if status != 201:
                return False
            self.registered = True
        status, doc, _ = self.call("POST", "/auth/login", "login", (200,),
                                   {"username": self.username, "password": PASSWORD},
                                   valid=lambda d: None if isinstance(d, dict) and d.get("token")
                                   else "no token")
        if status != 200 or not isinstance(doc, dict) or not doc.get("token"):
            return False
        self.token = doc["token"]
        return True

    def signed_in(self):
        return self.token is not None or self.sign_in()

    def browse(self):
        status, doc, _ = self.call("GET", "/inventory/products", "products", (200,))
        if status == 200 and isinstance(doc, dict):
            for p in doc.get("products", []):
                if not FIXED_PRODUCTS or p.get("id") in self.products:
                    self.products[p["id"]] = p.get("price_cents")

    def pick_product(self):
        if not self.products:
            self.browse()
        return self.rng.choice(sorted(self.products)) if self.products else None

    @task(5)
    def browse_catalogue(self):
        self.browse()

    @task(3)
    def look_at_product(self):
        pid = self.pick_product()
        if pid is None:
            return
        status, doc, _ = self.call("GET", f"/inventory/product/{pid}", "product", (200,))
        if status == 200 and isinstance(doc, dict):
            self.products[pid] = doc.get("price_cents")

    @task(1)
    def sign_in_again(self):
        if self.registered:  # else the next task that needs a token registers first
            self.sign_in()

    @task(2)
    def buy(self):
        if not self.signed_in():
            return
        pid = self.pick_product()
        if pid is None:
            return
        if self.products.get(pid) is None:
            status, doc, _ = self.call("GET", f"/inventory/product/{pid}", "product", (200,))
            if status != 200 or not isinstance(doc, dict):
                return
            self.products[pid] = doc.get("price_cents")
        status, doc, _ = self.call("POST", f"/inventory/product/{pid}/reserve", "reserve", (200,),
                                   {"quantity": 1}, outcomes=((409, "insufficient_stock"),),
                                   valid=lambda d: None if isinstance(d, dict) and
                                   isinstance(d.get("reservation_id"), int) else "no reservation_id")
        if status == 409 and _error_code_of(doc) == "insufficient_stock":
            OUTCOMES["out_of_stock"] += 1
            return
        price = self.products.get(pid)
        if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("reservation_id"), int) \
                or not isinstance(price, int):
            return
        # Paid by the charge; a reservation left unpaid (the charge declined
        # or failed) expires by itself (15 minutes by default).
        body = {"amount": round(price / 100, 2), "reservation_id": doc["reservation_id"]}
        key = str(uuid.uuid4())
        for attempt in range(CHARGE_ATTEMPTS):
            if attempt:
                OUTCOMES["charges_retried"] += 1
            status, doc, headers = self.call(
                "POST", "/payment/charge", "charge", (201,), body,
                headers={"Idempotency-Key": key},
                outcomes=((402, "payment_declined"),))
            if status == 201 or (status == 402 and _error_code_of(doc) == "payment_declined"):
                if headers.get("Idempotent-Replayed") == "true":
                    OUTCOMES["charges_replayed"] += 1
                elif status == 201:
                    OUTCOMES["charges_paid"] += 1
                else:
                    OUTCOMES["charges_declined"] += 1
                break
            code = _error_code_of(doc)
            if not (status in (0, 502, 503) or (status == 409 and code == "idempotency_key_in_progress")):
                return
            time.sleep(_retry_after(headers))
        else:
            return
        if status != 201 or not isinstance(doc, dict) or "payment_id" not in doc:
            return
        pay_id = doc["payment_id"]
        self.call("GET", f"/payment/payment/{pay_id}", "payment", (200,),
                  valid=lambda d: None if isinstance(d, dict) and d.get("payment_id") == pay_id
                  else "not the payment charged")


def _error_code_of(doc):
    try:
        return doc["error"]["code"]
    except (TypeError, KeyError):
        return None


def _retry_after(headers):
    try:
        return min(max(float(headers.get("Retry-After") or 1), 0.1), 5.0)
    except ValueError:
        return 1.0


@events.quitting.add_listener
def _write_report(environment, **_kw):
    """The run's statistics and outcomes, for vigilctl load."""
    path = os.environ.get("VIGIL_LOAD_REPORT")
    if not path:
        return
    stats = environment.stats
    steps = []
    for (name, method), e in sorted(stats.entries.items()):
        steps.append({
            "step": name, "method": method,
            "requests": e.num_requests, "failures": e.num_failures,
            "rps": e.total_rps,
            "p50_ms": e.get_response_time_percentile(0.5) if e.num_requests else None,
            "p95_ms": e.get_response_time_percentile(0.95) if e.num_requests else None,
            "p99_ms": e.get_response_time_percentile(0.99) if e.num_requests else None,
            "avg_ms": e.avg_response_time if e.num_requests else None,
            "max_ms": e.max_response_time if e.num_requests else None,
        })
    t = stats.total
    total = {
        "requests": t.num_requests, "failures": t.num_failures, "rps": t.total_rps,
        "p50_ms": t.get_response_time_percentile(0.5) if t.num_requests else None,
        "p95_ms": t.get_response_time_percentile(0.95) if t.num_requests else None,
        "p99_ms": t.get_response_time_percentile(0.99) if t.num_requests else None,
        "avg_ms": t.avg_response_time if t.num_requests else None,
        "max_ms": t.max_response_time if t.num_requests else None,
    }
    errors = [{"step": e.name, "method": e.method, "error": str(e.error), "count": e.occurrences}
              for e in stats.errors.values()]
    runner = environment.runner
    report = {
        "steps": steps, "total": total,
        "errors": sorted(errors, key=lambda x: (-x["count"], x["step"], x["error"])),
        "outcomes": OUTCOMES,
        "run_seconds": (t.last_request_timestamp - t.start_time)
        if t.num_requests and t.last_request_timestamp else 0.0,
        "locust_cpu_warning": bool(runner and runner.cpu_warning_emitted),
        "exceptions": [{"count": x["count"], "msg": x["msg"]}
                       for x in (runner.exceptions.values() if runner else ())],
    }
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f)
    os.replace(tmp, path)
