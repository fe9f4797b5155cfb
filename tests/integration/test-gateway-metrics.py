#!/usr/bin/env python3
"""The gateway's Prometheus metrics: the SHIPPED nginx gateway (gatewaylib)
writes its JSON access log, the real mtail runs the SHIPPED
etc/mtail/vigil-gateway.mtail over it, and what mtail exposes is compared
with what the clients got. The upstreams are a stub answering each route
with the status its last path segment names (200 otherwise), so every
status is provoked on purpose.

What the gateway and mtail promise:
  - the access log names the service of every API request, the requests
    nginx answers itself (429 of its rate limit, 408 of a header that never
    ends) included, and "-" for everything else;
  - vigil_gateway_requests_total counts every answer by service, method
    (a method outside the standard ones is "other") and code, exactly;
  - vigil_gateway_rate_limited_total counts the 429s of the gateway's own
    limits, not a 429 a service answered;
  - the latency histograms count every request (those under a millisecond
    too) and the upstream one only requests a service answered;
  - a line that is not vigil_json is counted as unparsed, and a value in a
    line (a User-Agent) cannot pass for another field.

Run by `make check`; by hand:
  top_builddir=/path/to/build python3 tests/integration/test-gateway-metrics.py [TEST...]
"""

import collections
import http.server
import json
import os
import re
import socket
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gatewaylib  # noqa: E402
import harness  # noqa: E402
from harness import check, check_eq  # noqa: E402

runner = harness.Runner("test-gateway-metrics")
test = runner.test
SKIP = 77
# Sent from one client, more than the burst of 20 the gateway serves at once
# plus what its rate of 10/s lets through while they are sent: they take
# far less than the 4 s that would let all of them through (the stub
# answers at once).
BURST_REQUESTS = 60


class StatusUpstream:
    """An HTTP/1.1 upstream answering /.../<3 digits> with that status and
    everything else with 200, a small JSON body each time."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # Headers and body are two writes: without this, the body
                # waits for the delayed ACK of the headers (40 ms).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                m = re.search(r"/([1-5][0-9][0-9])$", self.path)
                status = int(m.group(1)) if m else 200
                body = b'{"ok":true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = answer

        self.server = http.server.ThreadingHTTPServer((harness.LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


_sources = [0]


def new_source():
    """A loopback address no other request used: its own client for the
    gateway's per-client limits."""
    _sources[0] += 1
    n = _sources[0]
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def setup(ctx):
    if not os.path.exists(gatewaylib.NGINX):
        raise AssertionError(f"{gatewaylib.NGINX} not found "
                             "(scripts/install-deps.sh installs nginx-light)")
    ctx.upstream = StatusUpstream()
    ctx.cleanup(ctx.upstream.stop)
    port = ctx.upstream.port
    ctx.gw = gatewaylib.Gateway({"auth": port, "payment": port, "inventory": port}, None)
    ctx.cleanup(ctx.gw.stop)
    ctx.gw.start()
    ctx.mtail = gatewaylib.Mtail(ctx.gw.access_log, ctx.gw.dir)
    ctx.cleanup(ctx.mtail.stop)
    ctx.mtail.start()

    # (service, method, code) -> answers the clients got; what each
    # request was sent as, to check the log.
    ctx.want = collections.Counter()
    ctx.proxied = collections.Counter()
    ctx.limited = 0
    ctx.sent = []

    def send(service, method, path, body=None, headers=None, source=None, proxied=True):
        status, hdrs, _ = ctx.gw.request(method, path, body=body, headers=headers,
                                         source=source or new_source())
        label = method if method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                     "OPTIONS") else "other"
        ctx.want[(service, label, str(status))] += 1
        if proxied:
            ctx.proxied[service] += 1
        ctx.sent.append((hdrs.get("X-Request-Id"), service, status))
        return status

    # A request whose header never ends: nginx gives up after its
    # client_header_timeout (10 s) and logs a 408 before any phase ran.
    stalled = socket.create_connection(("127.0.0.1", ctx.gw.port), timeout=30,
                                       source_address=(new_source(), 0))
    ctx.cleanup(stalled.close)
    stalled.sendall(b"GET /api/v1/auth/verify HTTP/1.1\r\nHost: x\r\n")

    for _ in range(3):
        check_eq(send("auth", "POST", "/api/v1/auth/login", {"username": "u"}), 200, "login")
        check_eq(send("inventory", "GET", "/api/v1/inventory/products"), 200, "products")
    check_eq(send("inventory", "DELETE", "/api/v1/inventory/reservation/7"), 200, "release")
    check_eq(send("payment", "GET", "/api/v1/payment/payment/503"), 503, "payment 503")
    check_eq(send("payment", "POST", "/api/v1/payment/charge", {"amount": 1}), 200, "charge")
    # A 429 the service answered is not the gateway's rate limiting.
    check_eq(send("payment", "GET", "/api/v1/payment/payment/429"), 429, "payment's own 429")
    # A method outside the label's set: the stub has no handler (501).
    check_eq(send("inventory", "PROPFIND", "/api/v1/inventory/products"), 501, "PROPFIND")
    check_eq(send("-", "GET", "/no/such/route", proxied=False), 404, "unknown route")
    # A User-Agent shaped like the fields after it must stay a User-Agent.
    forged = ('x","service":"auth","method":"GET","status":200,"body_bytes_sent":0,'
              '"request_time":9.000,"upstream_addr":"","upstream_status":"",'
              '"upstream_response_time":"","user_agent":"')
    check_eq(send("-", "GET", "/api/v1/nothing", headers={"User-Agent": forged}, proxied=False),
             404, "forged User-Agent")
    # One client over its burst: the gateway answers 429 itself.
    src = new_source()
    for _ in range(BURST_REQUESTS):
        status, hdrs, _ = ctx.gw.request("GET", "/api/v1/inventory/products", source=src)
        ctx.want[("inventory", "GET", str(status))] += 1
        ctx.sent.append((hdrs.get("X-Request-Id"), "inventory", status))
        if status == 429:
            ctx.limited += 1
        else:
            check_eq(status, 200, "products in the burst")
            ctx.proxied["inventory"] += 1
    check(0 < ctx.limited < BURST_REQUESTS, f"{ctx.limited} of {BURST_REQUESTS} rate-limited")
    check_eq(stalled.recv(1024), b"", "nginx closing the stalled request")
    ctx.want[("auth", "GET", "408")] += 1

    total = sum(ctx.want.values())

    def counted():
        ctx.samples = ctx.mtail.samples()
        return harness.metric_value(ctx.samples, "vigil_gateway_requests_total") == total
    try:
        harness.wait_until(counted, 20, interval=0.1, what=f"mtail counting {total} requests")
    except AssertionError as e:
        got = harness.metric_value(ctx.samples, "vigil_gateway_requests_total")
        raise AssertionError(f"{e}: counted {got}; mtail: {ctx.mtail.log_tail()}") from None


def series(samples, name):
    return {tuple(sorted(s.labels.items())): s.value for s in samples if s.name == name}


@test
def test_the_access_log_names_the_service_of_every_request(ctx):
    entries = {}
    with open(ctx.gw.access_log, encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            entries[e["request_id"]] = e
    for rid, service, status in ctx.sent:
        e = entries.get(rid)
        check(e is not None, f"no access log entry for {rid}")
        check(e["service"] == service and e["status"] == status,
              f"{e['method']} {e['uri']}: logged service {e['service']!r} status {e['status']}, "
              f"want {service!r} {status}")
    with open(os.path.join(ctx.gw.dir, "log", "error.log"), encoding="utf-8") as f:
        bad = [line for line in f if "uninitialized" in line]
    check(not bad, f"nginx warns: {bad[:3]}")


@test
def test_requests_are_counted_by_service_method_and_code(ctx):
    got = {(s.labels["service"], s.labels["method"], s.labels["code"]): s.value
           for s in ctx.samples if s.name == "vigil_gateway_requests_total"}
    want = {k: float(v) for k, v in ctx.want.items()}
    check_eq(got, want, "vigil_gateway_requests_total by (service, method, code)")
    check({s.labels.get("prog") for s in ctx.samples if s.name == "vigil_gateway_requests_total"}
          == {"vigil-gateway.mtail"}, "prog label")


@test
def test_only_the_gateways_own_429s_count_as_rate_limited(ctx):
    got = {s.labels["service"]: s.value for s in ctx.samples
           if s.name == "vigil_gateway_rate_limited_total"}
    check_eq(got, {"inventory": float(ctx.limited)}, "vigil_gateway_rate_limited_total by service")


@test
def test_latency_histograms_count_every_request_and_every_upstream_answer(ctx):
    ctx.logged_times = {"vigil_gateway_request_duration_seconds": collections.defaultdict(list),
                        "vigil_gateway_upstream_duration_seconds": collections.defaultdict(list)}
    with open(ctx.gw.access_log, encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            ctx.logged_times["vigil_gateway_request_duration_seconds"][e["service"]].append(
                e["request_time"])
            if e["upstream_response_time"]:
                # Several attempts: the last one is observed.
                ctx.logged_times["vigil_gateway_upstream_duration_seconds"][e["service"]].append(
                    float(re.split(r"[,:] ", e["upstream_response_time"])[-1]))
    zero = sum(1 for v in ctx.logged_times["vigil_gateway_request_duration_seconds"]["-"] if v == 0)
    check(zero, "no request logged with request_time 0.000")
    per_service = collections.Counter()
    for (service, _, _), n in ctx.want.items():
        per_service[service] += n
    for name, want in (("vigil_gateway_request_duration_seconds", per_service),
                       ("vigil_gateway_upstream_duration_seconds", ctx.proxied)):
        counts = {s.labels["service"]: s.value for s in ctx.samples if s.name == name + "_count"}
        check_eq(counts, {k: float(v) for k, v in want.items()}, f"{name}_count by service")
        for service, n in want.items():
            buckets = sorted(((float(s.labels["le"]), s.value) for s in ctx.samples
                              if s.name == name + "_bucket" and s.labels["service"] == service))
            check(buckets and buckets[-1] == (float("inf"), n),
                  f"{name}{{service={service}}}: +Inf bucket {buckets[-1:]} != count {n}")
            check(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])),
                  f"{name}{{service={service}}}: buckets not cumulative: {buckets}")
            # Each request in the bucket its logged time belongs to, those
            # logged 0.000 (under a millisecond) in the first.
            for le, count in buckets[:-1]:
                check_eq(count, float(sum(1 for v in ctx.logged_times[name][service] if v <= le)),
                         f"{name}_bucket{{service={service},le={le}}}")


@test
def test_a_line_that_is_not_vigil_json_is_counted_unparsed(ctx):
    check_eq(harness.metric_value(ctx.samples, "vigil_gateway_log_lines_unparsed_total"), 0.0,
             "unparsed lines of the real log")
    before = harness.metric_value(ctx.samples, "vigil_gateway_requests_total")
    with open(ctx.gw.access_log, "a", encoding="utf-8") as f:
        f.write('{"time":"2026-01-01T00:00:00+00:00","status":200}\n')
        f.write("127.0.0.1 - - [01/Jan/2026:00:00:00 +0000] \"GET / HTTP/1.1\" 200 0\n")
    harness.wait_until(lambda: harness.metric_value(
        ctx.mtail.samples(), "vigil_gateway_log_lines_unparsed_total") == 2, 10, interval=0.1,
        what="mtail counting 2 unparsed lines")
    check_eq(harness.metric_value(ctx.mtail.samples(), "vigil_gateway_requests_total"), before,
             "requests counted after the foreign lines")


if __name__ == "__main__":
    if not gatewaylib.MTAIL:
        print("SKIP: mtail is not installed (scripts/install-deps.sh installs it)", file=sys.stderr)
        sys.exit(SKIP)
    sys.exit(runner.main(setup))
