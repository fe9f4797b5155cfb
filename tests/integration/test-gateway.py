#!/usr/bin/env python3
"""Integration tests of the edge: the SHIPPED nginx gateway site
(etc/nginx/sites-available/vigil-gateway-dev with etc/nginx/vigil/*.conf,
rendered only to change ports and paths) run by the real nginx in front of
authd and inventoryd from the build tree and a recording upstream in
paymentd's place; and the daemons' own connection limits and drain.

What the gateway promises: only the public API is proxied (the daemons'
/health, /ready, /metrics, /stats answer 404 through it); a caller's trace
context never becomes the parent, a new trace starts at the edge and its id
is the X-Request-Id of every response, nginx's own errors included;
requests are limited per client, an IPv6 client by its /64.

Run by `make check`; by hand:
  top_builddir=/path/to/build python3 tests/integration/test-gateway.py [TEST...]
"""

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from gatewaylib import NGINX, Gateway  # noqa: E402
from harness import check, check_eq  # noqa: E402

runner = harness.Runner("test-gateway")
test = runner.test

TRACE_ID = re.compile(r"[0-9a-f]{32}")
INTERNAL = ("health", "ready", "metrics", "stats")
SERVICES = ("auth", "payment", "inventory")
# The daemon-side limits the tests provoke (small, so the test is cheap).
PER_CLIENT = 24
HEADER_TIMEOUT_S = 2


class Recorder:
    """An HTTP/1.1 upstream in paymentd's place that records the headers of
    every request (by the X-Request-Id it got) and answers 200 with its own
    X-Request-Id, which the gateway must not pass on. GETs of /payment/hold
    wait until release() (bounded), to keep requests in progress."""

    def __init__(self, port=0):
        self.seen = {}
        self.lock = threading.Lock()
        self.held = 0
        self.release_event = threading.Event()
        self.connections = set()
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with recorder.lock:
                    recorder.connections.add(self.connection)

            def answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                with recorder.lock:
                    recorder.seen[self.headers.get("X-Request-Id")] = {
                        k.lower(): v for k, v in self.headers.items()} | {
                        "path": self.path, "peer": self.client_address}
                if self.path == "/payment/hold":
                    with recorder.lock:
                        recorder.held += 1
                    recorder.release_event.wait(30)
                body = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Request-Id", "from-the-upstream")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = answer

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer((harness.LOOPBACK, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Stop listening and close every connection (nginx keeps some
        alive), so that the gateway finds nobody to answer."""
        self.release_event.set()
        self.server.shutdown()
        self.server.server_close()
        self.close_connections()

    def close_connections(self):
        """Close every connection, as a daemon that restarts does."""
        with self.lock:
            for c in self.connections:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


_sources = [0]


def new_source():
    """A loopback source address no other request used: each is its own
    client for the gateway's limits (127.0.0.x stay for the daemons)."""
    _sources[0] += 1
    n = _sources[0]
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def ipv6_loopback_works():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def setup(ctx):
    if not os.path.exists(NGINX):
        raise AssertionError(f"{NGINX} not found (scripts/install-deps.sh installs nginx-light)")
    ctx.stack = harness.Stack(("postgres", "redis"))
    ctx.cleanup(ctx.stack.stop)
    ctx.stack.start()
    ctx.authd = harness.new_authd(ctx, env={
        "VIGIL_HTTP_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
        "VIGIL_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_S),
    })
    ctx.authd.start()
    ctx.inv = harness.new_inventoryd(ctx)
    ctx.inv.start()
    ctx.recorder = Recorder()
    ctx.cleanup(lambda: ctx.recorder.stop())
    ctx.listen6 = "[::1]" if ipv6_loopback_works() else None
    ctx.gw = Gateway({"auth": ctx.authd.port, "payment": ctx.recorder.port,
                      "inventory": ctx.inv.port}, ctx.listen6)
    ctx.cleanup(ctx.gw.stop)
    ctx.gw.start()


def request_id_of(headers, what):
    """The one X-Request-Id of a response, asserted to be a trace id."""
    ids = headers.get_all("X-Request-Id") or []
    check(len(ids) == 1, f"{what}: X-Request-Id headers {ids}")
    check(TRACE_ID.fullmatch(ids[0]), f"{what}: X-Request-Id {ids[0]!r} is not a trace id")
    return ids[0]


def json_error_code(body, what):
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{what}: not a JSON error: {body[:200]!r}") from None


# --------------------------------------------------------------------------
# exposure

@test
def test_gateway_answers_404_for_every_internal_endpoint(ctx):
    paths = [f"/api/v1/{svc}/{p}" for svc in SERVICES for p in INTERNAL]
    paths += [
        "/api/v1/auth/%6detrics",                      # percent-encoded
        "/api/v1/auth/login/../metrics",               # dot segments
        "/api/v1/inventory/product/1/../../stats",
        "/api/v1/inventory/product/%2e%2e/metrics",
        "/api/v1/auth//metrics",
        "/api/v1/auth/metrics?format=openmetrics",
        "/api/v1/auth/login/",                         # not a route either
        "/api/v1/payment/payment/1/metrics",
        "/api/v1/inventory/product/1/reserve/x",
        "/metrics", "/ready", "/stats",
        "/vigil-error/bad-request",                    # the gateway's own error pages
    ]
    for path in paths:
        for method in ("GET", "POST"):
            what = f"{method} {path}"
            status, headers, body = ctx.gw.request(method, path, source=new_source())
            check_eq(status, 404, what)
            check_eq(json_error_code(body, what), "not_found", what)
            rid = request_id_of(headers, what)
            e = ctx.gw.log_entry(rid)
            check_eq(e["upstream_addr"], "", f"{what}: reached an upstream")


@test
def test_gateway_proxies_every_public_route(ctx):
    public = [
        ("POST", "/api/v1/auth/register", "auth"), ("POST", "/api/v1/auth/login", "auth"),
        ("POST", "/api/v1/auth/verify", "auth"), ("POST", "/api/v1/auth/logout", "auth"),
        ("POST", "/api/v1/payment/charge", "payment"),
        ("GET", "/api/v1/payment/payment/42", "payment"),
        ("GET", "/api/v1/inventory/products", "inventory"),
        ("GET", "/api/v1/inventory/product/1", "inventory"),
        ("POST", "/api/v1/inventory/product/1/reserve", "inventory"),
        ("DELETE", "/api/v1/inventory/reservation/1", "inventory"),
    ]
    ports = {"auth": ctx.authd.port, "payment": ctx.recorder.port, "inventory": ctx.inv.port}
    for method, path, svc in public:
        what = f"{method} {path}"
        body = {} if method == "POST" else None
        status, headers, _ = ctx.gw.request(method, path, body=body, source=new_source())
        rid = request_id_of(headers, what)
        e = ctx.gw.log_entry(rid)
        check_eq(e["upstream_addr"], f"127.0.0.1:{ports[svc]}", f"{what}: upstream")
        check(status < 500, f"{what}: {status}")
    status, _, body = ctx.gw.request("GET", "/api/v1/inventory/products", source=new_source())
    check(status == 200 and json.loads(body)["products"], f"products: {status} {body[:200]!r}")


@test
def test_of_the_posts_only_verify_reuses_upstream_connections(ctx):
    """POST /verify changes nothing, so it goes over the kept-alive upstream
    connections (and is sent again when the daemon closed the one it got);
    every other POST gets a new connection, so that it never reaches one
    that a restarting daemon is closing (gateway-http.conf)."""
    rec = Recorder()
    gw = Gateway({"auth": rec.port, "payment": rec.port, "inventory": rec.port}, None,
                 rate_classes="127.0.0.1 exempt;\n")
    try:
        gw.start()

        def peers(path, n):
            """The upstream connections (the gateway's address and port) of n
            POSTs of path, one after the other."""
            out = []
            for _ in range(n):
                status, headers, _ = gw.request("POST", path, body={})
                check_eq(status, 200, f"POST {path}")
                rid = request_id_of(headers, f"POST {path}")
                with rec.lock:
                    out.append(rec.seen[rid]["peer"])
            return out
        verify = peers("/api/v1/auth/verify", 10)
        # At most one kept-alive connection per nginx worker (two).
        check(len(set(verify)) <= 2, f"10 POST /verify took {len(set(verify))} upstream "
                                     f"connections: {verify}")
        for path in ("/api/v1/auth/login", "/api/v1/inventory/product/1/reserve",
                     "/api/v1/payment/charge"):
            got = peers(path, 5)
            check_eq(len(set(got)), 5, f"upstream connections of 5 POST {path}")
        rec.close_connections()
        status, _, body = gw.request("POST", "/api/v1/auth/verify", body={})
        check_eq(status, 200, f"POST /verify after the upstream closed its connections: {body!r}")
    finally:
        gw.stop()
        rec.stop()


# --------------------------------------------------------------------------
# trace context at the edge

@test
def test_caller_trace_context_is_dropped_and_request_id_names_the_new_trace(ctx):
    caller_trace = os.urandom(16).hex()
    caller_tp = f"00-{caller_trace}-{os.urandom(8).hex()}-01"
    hdrs = {"traceparent": caller_tp, "tracestate": "vendor=forced",
            "X-Request-Id": os.urandom(16).hex()}

    # What reaches a service: no caller context, the gateway's id.
    status, headers, _ = ctx.gw.request("GET", "/api/v1/payment/payment/7", headers=hdrs,
                                        source=new_source())
    check_eq(status, 200, "GET payment through the gateway")
    rid = request_id_of(headers, "GET payment")
    check(rid not in (caller_trace, hdrs["X-Request-Id"]), f"the caller chose the id {rid}")
    with ctx.recorder.lock:
        got = ctx.recorder.seen.get(rid)
    check(got is not None, f"the upstream never saw X-Request-Id {rid}: {list(ctx.recorder.seen)}")
    check("traceparent" not in got and "tracestate" not in got,
          f"caller trace context passed on: {got}")
    e = ctx.gw.log_entry(rid)
    check_eq((e["trace_id"], e["caller_traceparent"]), (rid, caller_tp), "access log")
    # Whatever the case of the names, and however many there are.
    raw = (f"GET /api/v1/payment/payment/8 HTTP/1.1\r\nHost: t\r\nTraceParent: {caller_tp}\r\n"
           f"TRACEPARENT: {caller_tp}\r\nTraceState: a=b\r\nConnection: close\r\n\r\n")
    status, headers, _ = ctx.gw.raw(raw.encode(), source=new_source())
    check_eq(status, 200, "GET payment with repeated trace headers")
    rid = request_id_of(headers, "repeated trace headers")
    with ctx.recorder.lock:
        got = ctx.recorder.seen.get(rid, {})
    check(got and "traceparent" not in got and "tracestate" not in got,
          f"caller trace context passed on: {got}")

    # A daemon starts the trace with the gateway's id, and logs it.
    status, headers, _ = ctx.gw.request("POST", "/api/v1/auth/verify", headers=hdrs,
                                        source=new_source())
    check_eq(status, 401, "verify without a token")
    rid = request_id_of(headers, "POST verify")
    check(rid != caller_trace, "authd continued the caller's trace")
    harness.wait_until(lambda: f"trace_id={rid}" in ctx.authd.log_text(), 10,
                       what=f"authd logs trace_id={rid}")
    check(caller_trace not in ctx.authd.log_text(), "the caller's trace id reached authd's log")

    # Directly (not through the gateway) a daemon answers with its trace id too.
    r = harness.request(ctx.authd.port, "GET", "/health")
    check(TRACE_ID.fullmatch(r.headers.get("X-Request-Id") or ""), f"direct: {r.headers}")


@test
def test_gateway_errors_carry_the_request_id(ctx):
    cases = []
    # 404: no such route.
    cases.append(("404", ctx.gw.request("GET", "/nope", source=new_source()), 404, "not_found"))
    # 413: a body over 64 KiB.
    cases.append(("413", ctx.gw.request("POST", "/api/v1/payment/charge", body=b"x" * 70000,
                                        headers={"Content-Type": "application/json"},
                                        source=new_source()), 413, "payload_too_large"))
    # 431: headers beyond nginx's buffers.
    cases.append(("431", ctx.gw.request("GET", "/api/v1/inventory/products",
                                        headers={"X-Big": "a" * 9000}, source=new_source()),
                  431, "headers_too_large"))
    # 400 and 414: a request line nginx cannot parse, or too long to read.
    cases.append(("400", ctx.gw.raw(b"GARBAGE\r\n\r\n", source=new_source()), 400,
                  "bad_request"))
    cases.append(("414", ctx.gw.raw(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
                                    source=new_source()), 414, "uri_too_long"))
    # 429: one client past 10 r/s with a burst of 20.
    src = new_source()
    for _ in range(60):
        got = ctx.gw.request("GET", "/api/v1/payment/payment/1", source=src)
        if got[0] == 429:
            break
    cases.append(("429", got, 429, "rate_limited"))
    # 502: the service does not answer.
    ctx.recorder.stop()
    try:
        cases.append(("502", ctx.gw.request("GET", "/api/v1/payment/payment/1",
                                            source=new_source()), 502, "bad_gateway"))
    finally:
        ctx.recorder = Recorder(ctx.recorder.port)
    for what, (status, headers, body), want_status, want_code in cases:
        check_eq(status, want_status, what)
        check_eq(json_error_code(body, what), want_code, what)
        rid = request_id_of(headers, what)
        check_eq(ctx.gw.log_entry(rid)["trace_id"], rid, f"{what}: access log trace_id")


# --------------------------------------------------------------------------
# limits per client

@test
def test_gateway_limits_requests_in_progress_per_client(ctx):
    src, other = new_source(), new_source()
    results = []
    lock = threading.Lock()

    def held():
        r = ctx.gw.request("GET", "/api/v1/payment/payment/hold", source=src, timeout=40)
        with lock:
            results.append(r[0])

    ctx.recorder.release_event.clear()
    with ctx.recorder.lock:
        ctx.recorder.held = 0
    threads = [threading.Thread(target=held, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    try:
        harness.wait_until(lambda: ctx.recorder.held == 20, 20, what="20 requests in progress")
        status, headers, body = ctx.gw.request("GET", "/api/v1/payment/payment/1", source=src)
        check_eq((status, json_error_code(body, "21st")), (429, "rate_limited"),
                 "a 21st request in progress from one client")
        request_id_of(headers, "21st")
        check_eq(ctx.gw.request("GET", "/api/v1/payment/payment/1", source=other)[0], 200,
                 "another client meanwhile")
    finally:
        ctx.recorder.release_event.set()
        for t in threads:
            t.join(40)
    check_eq(sorted(results), [200] * 20, "the held requests")


def nginx_dump(ctx):
    t = ctx.gw.nginx("-T")
    check(t.returncode == 0, f"nginx -T: {t.stderr}")
    return t.stdout


@test
def test_gateway_keys_ipv6_clients_by_their_64(ctx):
    # The configuration: both limits count $vigil_client, the /64 of an
    # IPv6 address and the whole of an IPv4 one.
    dump = nginx_dump(ctx)
    check(re.search(r"limit_req_zone \$vigil_limit_standard zone=vigil_per_ip:\S+ rate=10r/s;",
                    dump), "limit_req_zone is not keyed by $vigil_limit_standard")
    check(re.search(r"limit_conn_zone \$vigil_limit_standard zone=vigil_conn_per_ip:", dump),
          "limit_conn_zone is not keyed by $vigil_limit_standard")
    check(re.search(r"map \$vigil_rate_class \$vigil_limit_standard \{[^}]*default +"
                    r"\$vigil_client;", dump),
          "the standard class is not keyed by $vigil_client")
    check(re.search(r"limit_conn vigil_conn_per_ip 20;", dump), "no limit_conn per client")
    check(re.search(r"map \$binary_remote_addr \$vigil_client", dump), "no /64 map")

    if ctx.listen6:
        status, headers, _ = ctx.gw.request("GET", "/api/v1/inventory/products", source="::1",
                                            host="::1")
        check_eq(status, 200, "products over IPv6 loopback")
        request_id_of(headers, "over ::1")
    else:
        runner.note("no IPv6 loopback here: the ::1 request was skipped")

    # Live, several IPv6 addresses: in a network namespace of our own, where
    # fd00::/64 and fd00:0:0:1::/64 can be put on lo.
    probe = subprocess.run(["unshare", "--net", sys.executable, os.path.abspath(__file__),
                            "--ipv6-probe"], capture_output=True, text=True, timeout=120,
                           env=os.environ, check=False)
    if probe.returncode == harness.SKIP or (probe.returncode != 0 and not probe.stdout and
                                            probe.stderr.startswith("unshare:")):
        runner.note("IPv6 /64 keying not checked live (no network namespace here): "
                    f"{(probe.stdout or probe.stderr).strip()}")
        return
    check(probe.returncode == 0, f"probe failed ({probe.returncode}):\n{probe.stdout}\n{probe.stderr}")
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    check(got["first_429_after"] is not None and got["first_429_after"] <= 40,
          f"fd00::1 never limited: {got}")
    check_eq(got["same_64"], 429, "fd00::2 (same /64) right after fd00::1 was limited")
    check(got["other_64"] != 429, f"fd00:0:0:1::1 (another /64) limited: {got}")
    check(got["other_ipv4"] != 429, f"another IPv4 address limited: {got}")


@test
def test_rate_classes_from_a_local_file_exempt_and_relax_sources(ctx):
    """An operator's rate-limit.d/*.conf (no package owns it) puts a load
    generator in class exempt and a partner in relaxed; everyone else keeps
    the shipped 10 r/s with a burst of 20, and so does a source whose class
    is misspelt. Upstreams closed: a 502 is an answer the limits let
    through."""
    closed = harness.closed_port()
    gw = Gateway({"auth": closed, "payment": closed, "inventory": closed}, None,
                 rate_classes="127.0.0.7 exempt;\n\"~^127\\.0\\.0\\.8$\" relaxed;\n"
                              "127.0.0.10 exmept;\n")
    try:
        gw.start()
        # Whatever nginx -T shows is what runs: the local file is included.
        dump = gw.nginx("-T").stdout
        check("127.0.0.7 exempt;" in dump, "the local rate-limit.d file is not included")

        def statuses(source, n):
            return [gw.request("GET", "/api/v1/inventory/products", source=source)[0]
                    for _ in range(n)]
        standard = statuses("127.0.0.9", 40)
        check(429 in standard, f"a standard client was never limited in 40 requests: {standard}")
        status, headers, body = gw.request("GET", "/api/v1/inventory/products", source="127.0.0.9")
        if status == 429:  # still limited (the usual case: no time has passed)
            check_eq((headers.get("Retry-After"), json_error_code(body, "429")), ("1", "rate_limited"),
                     "the 429's Retry-After and error code")
            request_id_of(headers, "429")
        exempt = statuses("127.0.0.7", 60)
        check(429 not in exempt, f"the exempt source was limited: {exempt}")
        relaxed = statuses("127.0.0.8", 60)
        check(429 not in relaxed, f"the relaxed source was limited within its burst: {relaxed}")
        typo = statuses("127.0.0.10", 40)
        check(429 in typo, f"a misspelt class exempted its source: {typo}")
    finally:
        gw.stop()


def ipv6_probe():
    """In a fresh network namespace (unshare --net): put two /64s on lo,
    run the gateway (upstreams closed: a 502 is an answer the limits let
    through), and report on stdout as JSON which source got 429."""
    def sh(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, check=False)
    if sh("ip", "link", "set", "lo", "up").returncode != 0:
        print("cannot bring lo up in a new network namespace")
        return harness.SKIP
    for a in ("fd00::1/64", "fd00::2/64", "fd00:0:0:1::1/64"):
        r = sh("ip", "-6", "addr", "add", a, "dev", "lo", "nodad")
        if r.returncode != 0:
            print(f"cannot add {a}: {r.stderr.strip()}")
            return harness.SKIP
    closed = harness.closed_port()
    gw = Gateway({"auth": closed, "payment": closed, "inventory": closed}, "[::]")
    try:
        gw.start()
        first = None
        for i in range(1, 41):
            if gw.request("GET", "/api/v1/inventory/products", host="fd00::1",
                          source="fd00::1")[0] == 429:
                first = i
                break
        out = {
            "first_429_after": first,
            "same_64": gw.request("GET", "/api/v1/inventory/products", host="fd00::1",
                                  source="fd00::2")[0],
            "other_64": gw.request("GET", "/api/v1/inventory/products", host="fd00::1",
                                   source="fd00:0:0:1::1")[0],
            "other_ipv4": gw.request("GET", "/api/v1/inventory/products", source="127.0.0.9")[0],
        }
        print(json.dumps(out))
    finally:
        gw.stop()
    return 0


# --------------------------------------------------------------------------
# the daemons' own connection limits and drain

PARTIAL = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: "


def connect(port, source, partial=None):
    s = socket.create_connection((harness.LOOPBACK, port), timeout=10, source_address=(source, 0))
    if partial:
        s.sendall(partial)
    return s


def closed_within(sock, timeout):
    """Seconds until the peer closes sock, or None after timeout."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except (socket.timeout, TimeoutError):
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


@test
def test_one_address_cannot_take_every_connection_of_a_daemon(ctx):
    port = ctx.authd.port
    held, refused = [], 0
    try:
        for _ in range(PER_CLIENT + 16):
            held.append(connect(port, "127.0.0.5", PARTIAL))
        # Past the per-client limit a connection is closed at once.
        for s in held[PER_CLIENT:]:
            if closed_within(s, 3) is not None:
                refused += 1
        check_eq(refused, 16, f"connections past {PER_CLIENT} from one address closed")
        # Another address is served meanwhile, directly and through the gateway.
        s = connect(port, "127.0.0.2", b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        s.settimeout(5)
        check(s.recv(64).startswith(b"HTTP/1.1 200"), "/health from 127.0.0.2")
        s.close()
        check_eq(ctx.gw.request("POST", "/api/v1/auth/verify", source=new_source())[0], 401,
                 "verify through the gateway")
        # The stalled headers are closed after the header timeout.
        t0 = time.monotonic()
        for s in held[:PER_CLIENT]:
            check(closed_within(s, HEADER_TIMEOUT_S + 5) is not None,
                  f"a stalled header kept past {HEADER_TIMEOUT_S} s")
        took = time.monotonic() - t0
        check(took < HEADER_TIMEOUT_S + 2, f"stalled headers closed after {took:.1f} s")
    finally:
        for s in held:
            s.close()


@test
def test_sigterm_is_not_held_by_idle_connections(ctx):
    d = harness.new_authd(ctx)
    d.start()
    keepalive = connect(d.port, "127.0.0.1", b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    keepalive.settimeout(5)
    check(keepalive.recv(4096).startswith(b"HTTP/1.1 200"), "the kept-alive request")
    silent = connect(d.port, "127.0.0.1")
    stalled = connect(d.port, "127.0.0.1", PARTIAL)
    try:
        # Let the daemon take the connections, then ask it to stop: its
        # drain timeout is 10 s, and none of these is a request in progress.
        def in_flight():
            text = harness.request(d.port, "GET", "/metrics").body.decode()
            return harness.metric_value(harness.parse_metrics(text),
                                        "vigil_http_requests_in_flight")
        harness.wait_until(lambda: in_flight() == 2, 5,
                           what="the stalled request line read (plus the scrape)")
        took = d.stop()
        check(took < 3, f"SIGTERM took {took:.1f} s with idle connections open")
        for s in (keepalive, silent, stalled):
            check(closed_within(s, 2) is not None, "a connection outlived the daemon")
    finally:
        for s in (keepalive, silent, stalled):
            s.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--ipv6-probe"]:
        sys.exit(ipv6_probe())
    sys.exit(runner.main(setup, binaries=[harness.authd_binary(),
                                          harness.daemon_binary("inventoryd")]))
