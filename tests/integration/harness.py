"""Integration test harness for vigil's daemons (Python 3 standard library).

Real servers only: PostgreSQL and Redis come from scripts/dev-stack.sh on
loopback ports in a temporary directory, the daemon under test from the
build tree. Every wait here is bounded; every socket has a timeout.

Pieces:
  Stack         dev-stack.sh start/stop/kill/start-one in a temporary dir
  Daemon        spawn a daemon with env, credentials and an empty config,
                wait for /health then /ready, stop with SIGTERM (exit 0)
  request()     one HTTP request on http.client -> Response(status, headers, body)
  raw_request() bytes on a raw socket, for requests http.client refuses to build
  psql()        run SQL through psql, return the unaligned output
  OtlpReceiver  an OTLP/HTTP JSON collector that can also fail on purpose
  Runner        named tests, PASS/FAIL lines, tracebacks, summary, exit code

Environment: top_srcdir and top_builddir (exported by `make check`); when
run by hand they default to this file's source tree. VIGIL_TEST_KEEP=1 keeps
temporary directories for inspection.
"""

import base64
import contextlib
import gzip
import hashlib
import hmac
import http.client
import http.server
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
TOP_SRCDIR = os.environ.get("top_srcdir") or os.path.normpath(os.path.join(HERE, "..", ".."))
TOP_BUILDDIR = os.environ.get("top_builddir") or TOP_SRCDIR
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool") or "promtool"
KEEP = os.environ.get("VIGIL_TEST_KEEP") == "1"

LOOPBACK = "127.0.0.1"
SKIP = 77
HARD_ERROR = 99  # Automake: an error, not a test failure


def daemon_binary(name):
    """Path of a daemon in the build tree, e.g. daemon_binary("authd")."""
    return os.path.join(TOP_BUILDDIR, "src", name, "vigil-" + name)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def closed_port():
    """A port nobody listens on (bound and released: connect() is refused)."""
    return free_port()


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll predicate() until it returns a true value (returned) or timeout
    seconds pass (AssertionError naming what)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except Exception as e:  # pylint: disable=broad-except
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


def _mkdtemp(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)  # servers run as their own users
    return d


def _rmtree(path):
    if path and not KEEP:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# Dev stack

class Stack:
    """PostgreSQL and Redis (or other services) from scripts/dev-stack.sh.

    stack = Stack(("postgres", "redis")); stack.start(); stack.env["VIGIL_REDIS_ADDRESS"]
    """

    START_TIMEOUT = 180
    OP_TIMEOUT = 60

    def __init__(self, services=("postgres", "redis")):
        self.services = tuple(services)
        self.script = os.path.join(TOP_SRCDIR, "scripts", "dev-stack.sh")
        self.dir = None
        self.env = {}
        self.keep = KEEP
        self._psql = None

    def _run(self, *args, timeout=None):
        cmd = ["bash", self.script, *args]
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=timeout or self.OP_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{' '.join(cmd)}: no answer within {e.timeout} s") from None
        if p.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {p.returncode}\n"
                f"stdout:\n{p.stdout.decode(errors='replace')}\n"
                f"stderr:\n{p.stderr.decode(errors='replace')}")
        return p.stdout.decode(errors="replace")

    def start(self):
        if not os.path.exists(self.script):
            raise AssertionError(f"{self.script} does not exist")
        self.dir = _mkdtemp("vigil-stack-")
        self._run("start", self.dir, *self.services, timeout=self.START_TIMEOUT)
        self.env = parse_env_file(os.path.join(self.dir, "env"))
        return self

    def stop(self):
        if self._psql is not None:
            self._psql.close()
            self._psql = None
        if self.dir is None:
            return
        try:
            self._run("stop", self.dir)
        finally:
            if not self.keep:
                _rmtree(self.dir)
            self.dir = None

    def kill(self, service):
        """SIGKILL one service."""
        self._run("kill", self.dir, service)

    def start_one(self, service):
        """Start one service again, on the same port."""
        self._run("start-one", self.dir, service, timeout=self.START_TIMEOUT)

    def restart(self, service):
        self._run("restart", self.dir, service, timeout=self.START_TIMEOUT)

    def redis(self, *args):
        """One Redis command over RESP on a fresh connection; returns the
        decoded reply (int, str, list or None), raises on an error reply."""
        host, _, port = self.env["VIGIL_REDIS_ADDRESS"].rpartition(":")
        return redis_command((host, int(port)), *args)

    def sql(self, query):
        """Like psql(), through one long-lived psql process (much faster for
        the many before/after snapshots); restarted when it died."""
        if self._psql is None or not self._psql.alive():
            dsn = re.sub(r"\bdbname=\S+", "", self.env["VIGIL_TEST_PG_ADMIN_DSN"])
            self._psql = PsqlSession(f"{dsn} dbname=vigil")
        return self._psql.query(query)

    def redis_cli(self, *args):
        """Run redis-cli against the stack's Redis; returns stdout stripped."""
        host, _, port = self.env["VIGIL_REDIS_ADDRESS"].rpartition(":")
        p = subprocess.run(["redis-cli", "-h", host, "-p", port, *args],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=15, check=False)
        if p.returncode != 0:
            raise AssertionError(f"redis-cli {' '.join(args)}: {p.stderr.decode(errors='replace')}")
        return p.stdout.decode(errors="replace").strip()

    def psql(self, sql, dbname="vigil"):
        """SQL as the PostgreSQL superuser in dbname; returns -At output stripped."""
        dsn = re.sub(r"\bdbname=\S+", "", self.env["VIGIL_TEST_PG_ADMIN_DSN"])
        return psql(f"{dsn} dbname={dbname}", sql)


def parse_env_file(path):
    """Parse `export VAR=value` lines (shell quoting allowed) into a dict."""
    env = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            if words and words[0] == "export":
                words = words[1:]
            for w in words:
                k, sep, v = w.partition("=")
                if sep:
                    env[k] = v
    return env


def psql(dsn, sql, timeout=30):
    """Run sql with `psql dsn -Atc`; returns stdout stripped, raises on error."""
    p = subprocess.run(["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise AssertionError(f"psql {sql!r} exited {p.returncode}: "
                             f"{p.stderr.decode(errors='replace').strip()}")
    return p.stdout.decode(errors="replace").strip()


class PsqlSession:
    """A long-lived `psql -At` reading queries from a pipe. Every read is
    bounded; an error or a dead psql raises AssertionError."""

    MARK = "__vigil_query_done__"

    def __init__(self, dsn):
        self.proc = subprocess.Popen(
            ["psql", dsn, "-X", "-At", "-q", "-v", "ON_ERROR_STOP=0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.buf = b""

    def alive(self):
        return self.proc.poll() is None

    def query(self, sql, timeout=30):
        self.proc.stdin.write(f"{sql.rstrip().rstrip(';')};\n\\echo {self.MARK}\n".encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while (self.MARK.encode() + b"\n") not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise AssertionError(f"psql: no answer to {sql!r} within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"psql exited: {self.buf.decode(errors='replace')}")
                self.buf += chunk
        out, _, self.buf = self.buf.partition(self.MARK.encode() + b"\n")
        text = out.decode(errors="replace").strip()
        if "ERROR:" in text or text.startswith("psql:"):
            raise AssertionError(f"psql {sql!r}: {text}")
        return text

    def close(self):
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _resp_read(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise AssertionError(f"redis: truncated reply {line!r}")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise AssertionError(f"redis error: {rest.decode(errors='replace')}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise AssertionError(f"redis: bad reply {line!r}")


def redis_command(address, *args, timeout=10):
    """Send one command to Redis at (host, port) and return its reply."""
    with socket.create_connection(address, timeout=timeout) as sock:
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
        sock.sendall(b"".join(parts))
        with sock.makefile("rb") as f:
            return _resp_read(f)


# --------------------------------------------------------------------------
# Daemon under test

class DaemonExited(AssertionError):
    pass


class Daemon:
    """A vigil daemon from the build tree with its own port, an empty config
    file, a credentials directory and stderr captured to a log file.

    d = Daemon("authd", env={...}, credentials={"jwt-key": b"..."}); d.start()
    """

    HEALTH_TIMEOUT = 30
    READY_TIMEOUT = 30
    STOP_TIMEOUT = 15

    def __init__(self, name, env=None, credentials=None, binary=None):
        self.name = name
        self.binary = binary or daemon_binary(name)
        self.dir = _mkdtemp(f"vigil-{name}-")
        self.config = os.path.join(self.dir, f"{name}.conf")
        with open(self.config, "w", encoding="utf-8"):
            pass
        self.creds_dir = os.path.join(self.dir, "credentials")
        os.mkdir(self.creds_dir, 0o700)
        for cname, content in (credentials or {}).items():
            self.set_credential(cname, content)
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.extra_env = dict(env or {})
        self.port = None
        self.proc = None
        self.starts = 0

    # ---- configuration

    def set_credential(self, cname, content):
        path = os.path.join(self.creds_dir, cname)
        if content is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        if isinstance(content, str):
            content = content.encode()
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, 0o600)

    def credential(self, cname):
        with open(os.path.join(self.creds_dir, cname), "rb") as f:
            return f.read()

    def environment(self):
        """The daemon's full environment: a clean base plus our settings."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("VIGIL_") and k not in
               ("CREDENTIALS_DIRECTORY", "JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS",
                "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["CREDENTIALS_DIRECTORY"] = self.creds_dir
        env.setdefault("VIGIL_LOG_LEVEL", "debug")
        env.update(self.extra_env)
        if self.port is not None:
            env["VIGIL_HTTP_LISTEN"] = f"{LOOPBACK}:{self.port}"
        return env

    # ---- one-shot runs (--version, --check-config, refusing to start)

    def run(self, *args, timeout=20, env=None):
        """Run the binary to completion; returns CompletedProcess (text)."""
        e = self.environment()
        if env:
            e.update(env)
        return subprocess.run([self.binary, *args], env=e, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, text=True,
                              errors="replace", check=False)

    # ---- lifecycle

    def start(self, wait_ready=True, port=None):
        """Start and wait for /health 200, then (wait_ready) /ready 200. A
        port lost to a race is retried with a new one."""
        if self.proc is not None:
            raise AssertionError(f"{self.name} already running")
        for attempt in range(3):
            self.port = port or self.port or free_port()
            try:
                self._spawn()
                self.wait_health()
                break
            except DaemonExited:
                if attempt < 2 and port is None and "in use" in self.log_tail(5):
                    self.port = None
                    continue
                raise
        if wait_ready:
            self.wait_ready()
        return self

    def _spawn(self):
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start #{self.starts} on port {self.port} ----\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [self.binary, "--config", self.config], env=self.environment(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            rc = self.proc.returncode
            self.proc = None
            raise DaemonExited(f"{self.name} exited with status {rc}:\n{self.log_tail(30)}")

    def wait_status(self, path, status, timeout):
        def probe():
            self._check_alive()
            try:
                return request(self.port, "GET", path, timeout=2).status == status
            except OSError:
                return False
        try:
            wait_until(probe, timeout, interval=0.05, what=f"GET {path} -> {status}")
        except DaemonExited:
            raise
        except AssertionError as e:
            raise AssertionError(f"{self.name}: {e}\n{self.log_tail(30)}") from None

    def wait_health(self, timeout=None):
        self.wait_status("/health", 200, timeout or self.HEALTH_TIMEOUT)

    def wait_ready(self, timeout=None):
        self.wait_status("/ready", 200, timeout or self.READY_TIMEOUT)

    def stop(self, timeout=None):
        """SIGTERM; asserts exit status 0 within timeout (SIGKILL otherwise)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        timeout = timeout or self.STOP_TIMEOUT
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"{self.name} did not exit within {timeout} s of SIGTERM\n"
                                 f"{self.log_tail(30)}") from None
        if rc != 0:
            raise AssertionError(f"{self.name} exited with status {rc} on SIGTERM "
                                 f"(after {time.monotonic() - t0:.2f} s)\n{self.log_tail(30)}")
        return time.monotonic() - t0

    def kill(self):
        """SIGKILL, no assertion (teardown after a failure)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def restart(self, wait_ready=True):
        self.stop()
        return self.start(wait_ready=wait_ready)

    def close(self):
        """Teardown: stop (asserting a clean exit), remove the directory."""
        try:
            self.stop()
        finally:
            self.kill()
            if not KEEP:
                _rmtree(self.dir)

    def log_tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    # ---- HTTP shortcuts

    def request(self, method, path, body=None, **kw):
        return request(self.port, method, path, body, **kw)

    def get(self, path, **kw):
        return request(self.port, "GET", path, **kw)

    def post(self, path, body=None, **kw):
        return request(self.port, "POST", path, body, **kw)

    def raw(self, data, **kw):
        return raw_request(self.port, data, **kw)


# --------------------------------------------------------------------------
# HTTP

class Response(NamedTuple):
    status: int
    headers: object  # case-insensitive: headers.get("content-type")
    body: object     # parsed JSON for application/json, else bytes

    @property
    def error_code(self):
        try:
            return self.body["error"]["code"]
        except (TypeError, KeyError):
            return None


def _decode_body(headers, raw):
    ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype == "application/json" and raw:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return raw
    return raw


def request(port, method, path, body=None, headers=None, token=None, timeout=10.0):
    """One request on a fresh connection. body: dict/list (sent as JSON with
    Content-Type application/json unless headers set one), str or bytes
    (sent as is). token: adds Authorization: Bearer."""
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = json.dumps(body).encode("utf-8")
            if not any(k.lower() == "content-type" for k in hdrs):
                hdrs["Content-Type"] = "application/json"
    if token is not None:
        hdrs["Authorization"] = "Bearer " + token
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        return Response(resp.status, resp.msg, _decode_body(resp.msg, raw))
    finally:
        conn.close()


class _Headers(dict):
    """Lower-cased header dict with a case-insensitive get()."""

    def get(self, key, default=None):
        return super().get(key.lower(), default)


def _parse_raw_response(buf):
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise AssertionError(f"not an HTTP response: {buf[:200]!r}")
    status = int(parts[1])
    headers = _Headers()
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(rest) < n:
            return None
        return Response(status, headers, _decode_body(headers, rest[:n]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            line, sep, after = rest.partition(b"\r\n")
            if not sep:
                return None
            size = int(line.split(b";")[0], 16)
            if len(after) < size + 2:
                return None
            if size == 0:
                return Response(status, headers, _decode_body(headers, body))
            body += after[:size]
            rest = after[size + 2:]
    if status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"")
    return None  # read to EOF


def raw_request(port, data, timeout=10.0):
    """Send raw bytes (a whole request, with "Connection: close" advised) and
    read one response. Sending runs in its own thread so a server that
    answers early (413, 431) and stops reading does not deadlock us.
    Returns a Response; raises AssertionError when the connection closes
    without one."""
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    send_error = []

    def sender():
        try:
            sock.sendall(data)
        except OSError as e:
            send_error.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"no complete response within {timeout} s; got {buf[:300]!r}")
            except ConnectionResetError:
                chunk = b""
            if chunk:
                buf += chunk
                r = _parse_raw_response(buf)
                if r is not None:
                    return r
                continue
            # EOF
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                r = _parse_raw_response(buf)
                if r is not None:
                    return r
                hdrs = _Headers()
                for line in head.decode("iso-8859-1").split("\r\n")[1:]:
                    k, _, v = line.partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                return Response(int(head.split(b" ")[1]), hdrs, _decode_body(hdrs, rest))
            raise AssertionError(f"connection closed without a response (sent error: "
                                 f"{send_error[:1]!r}); got {buf[:300]!r}")
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        t.join(timeout)


def build_request(method, path, body=b"", headers=None):
    """Bytes of an HTTP/1.1 request with Host, Content-Length and Connection: close."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {LOOPBACK}", "Connection: close"]
    hdrs = list((headers or {}).items())
    for k, v in hdrs:
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------
# JWT crafting (tests forge tokens; the daemon must refuse them)

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_parts(token):
    """(header dict, payload dict, signature bytes) of a compact JWT."""
    h, p, s = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p)), b64url_decode(s)


def jwt_sign(header, payload, key):
    """Compact HS256-style JWT signed with key (bytes) over header/payload."""
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(payload, separators=(",", ":")).encode()))
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def jwt_unsigned(header, payload):
    """header.payload. with an empty signature (alg none)."""
    return (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
            b64url(json.dumps(payload, separators=(",", ":")).encode()) + ".")


# --------------------------------------------------------------------------
# Prometheus / OpenMetrics exposition parsing

class Sample(NamedTuple):
    name: str
    labels: dict
    value: float
    exemplar: object  # (labels dict, value, timestamp or None) or None


def _parse_labels(s, i):
    """Parse {a="b",...} starting at s[i] == '{'; returns (dict, index after '}')."""
    assert s[i] == "{"
    i += 1
    labels = {}
    while True:
        while i < len(s) and s[i] in " ,":
            i += 1
        if s[i] == "}":
            return labels, i + 1
        m = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*").match(s, i)
        if not m:
            raise ValueError(f"bad label name at {i}: {s!r}")
        key = m.group(0)
        i = m.end()
        if s[i] != "=" or s[i + 1] != '"':
            raise ValueError(f"bad label syntax at {i}: {s!r}")
        i += 2
        val = []
        while s[i] != '"':
            if s[i] == "\\":
                nxt = s[i + 1]
                val.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
                i += 2
            else:
                val.append(s[i])
                i += 1
        labels[key] = "".join(val)
        i += 1


def _parse_float(s):
    return float({"+Inf": "inf", "-Inf": "-inf", "NaN": "nan"}.get(s, s))


def parse_metrics(text):
    """Samples of a text-format or OpenMetrics exposition (comments skipped)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*").match(line)
        if not m:
            raise ValueError(f"bad sample line: {line!r}")
        name = m.group(0)
        i = m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = _parse_labels(line, i)
        rest = line[i:]
        exemplar = None
        if " # " in rest:
            rest, _, ex = rest.partition(" # ")
            ex = ex.strip()
            ex_labels, j = _parse_labels(ex, 0)
            ex_fields = ex[j:].split()
            exemplar = (ex_labels, _parse_float(ex_fields[0]),
                        _parse_float(ex_fields[1]) if len(ex_fields) > 1 else None)
        fields = rest.split()
        samples.append(Sample(name, labels, _parse_float(fields[0]), exemplar))
    return samples


def metric_value(samples, name, **labels):
    """Sum of the samples called name whose labels include labels."""
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


# --------------------------------------------------------------------------
# OTLP/HTTP receiver

class OtlpReceiver:
    """An OTLP/HTTP JSON trace collector on 127.0.0.1:<ephemeral>.

    mode "ok": store the decoded body, answer 200 {}; "error": answer 500;
    "hang": wait hang_seconds (cut short by close()), then answer 200
    without storing."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bodies = []
        self.paths = []
        self.content_types = []
        self.requests = 0
        self.mode = "ok"
        self.hang_seconds = 10.0
        self._release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                if n > 64 * 1024 * 1024:
                    self.send_error(413)
                    return
                raw = self.rfile.read(n)
                with receiver.lock:
                    receiver.requests += 1
                    mode = receiver.mode
                    hang = receiver.hang_seconds
                if mode == "hang":
                    receiver._release.wait(hang)
                    self._reply(200, b"{}")
                    return
                if mode == "error":
                    self._reply(500, b'{"error":"test collector is broken"}')
                    return
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    raw = gzip.decompress(raw)
                body = json.loads(raw.decode("utf-8"))
                with receiver.lock:
                    receiver.bodies.append(body)
                    receiver.paths.append(self.path)
                    receiver.content_types.append(self.headers.get("Content-Type"))
                self._reply(200, b"{}")

            def _reply(self, status, body):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the exporter gave up on us: fine

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def set_mode(self, mode, hang_seconds=10.0):
        assert mode in ("ok", "error", "hang")
        with self.lock:
            self.mode = mode
            self.hang_seconds = hang_seconds
        if mode != "hang":
            self._release.set()
            self._release = threading.Event()

    def clear(self):
        with self.lock:
            self.bodies.clear()
            self.paths.clear()
            self.content_types.clear()

    def spans(self):
        """Flattened spans: each span dict plus "_resource" (attribute dict)
        and "_scope" (scope dict)."""
        out = []
        with self.lock:
            bodies = list(self.bodies)
        for body in bodies:
            for rs in body.get("resourceSpans", []):
                res = attributes(rs.get("resource", {}).get("attributes", []))
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        d = dict(sp)
                        d["_resource"] = res
                        d["_scope"] = ss.get("scope", {})
                        out.append(d)
        return out

    def wait_spans(self, predicate, timeout=10.0, what="spans"):
        """Poll until predicate(spans) returns a true value; returns it."""
        return wait_until(lambda: predicate(self.spans()), timeout, interval=0.1, what=what)

    def close(self):
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def attribute_value(v):
    """Python value of an OTLP AnyValue."""
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        return int(v["intValue"])  # proto3 JSON may encode int64 as a string
    if "arrayValue" in v:
        return [attribute_value(x) for x in v["arrayValue"].get("values", [])]
    return v


def attributes(attrs):
    """OTLP attribute list -> {key: python value}."""
    return {a["key"]: attribute_value(a.get("value", {})) for a in attrs}


def raw_attributes(span):
    """OTLP attribute list -> {key: AnyValue dict} (to check the value type)."""
    return {a["key"]: a.get("value", {}) for a in span.get("attributes", [])}


# --------------------------------------------------------------------------
# Assertions

def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def check_eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


def check_error(resp, status, code, what=""):
    """resp is the JSON error {"error":{"code":code,"message":"..."}} with status.
    code may be a set of acceptable codes."""
    prefix = f"{what}: " if what else ""
    body = resp.body if not isinstance(resp.body, bytes) else resp.body[:300]
    if resp.status != status:
        raise AssertionError(f"{prefix}expected status {status}, got {resp.status} {body!r}")
    ctype = (resp.headers.get("content-type") or "")
    if not ctype.startswith("application/json"):
        raise AssertionError(f"{prefix}expected a JSON error, got Content-Type {ctype!r}: {body!r}")
    err = resp.body.get("error") if isinstance(resp.body, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("message"), str) or not err["message"]:
        raise AssertionError(f"{prefix}error body lacks error.code/error.message: {body!r}")
    codes = code if isinstance(code, (set, frozenset, tuple)) else {code}
    if err.get("code") not in codes:
        raise AssertionError(f"{prefix}expected error code {code!r}, got {err.get('code')!r} "
                             f"(status {resp.status}, {body!r})")


# --------------------------------------------------------------------------
# Test runner

class TestTimeout(AssertionError):
    pass


class Context:
    """What setup() builds: attributes set freely; cleanups run LIFO."""

    def __init__(self):
        self.exit_stack = contextlib.ExitStack()
        self.daemons = []

    def cleanup(self, fn, *args):
        self.exit_stack.callback(fn, *args)


class Runner:
    """Named test functions run in order against one Context.

        runner = Runner("test-authd")
        @runner.test
        def test_register_returns_201(ctx): ...
        sys.exit(runner.main(setup))

    `python3 test-x.py NAME...` runs only the named tests."""

    def __init__(self, name, test_timeout=120):
        self.name = name
        self.tests = []
        self.notes = []
        self.test_timeout = test_timeout

    def test(self, fn):
        self.tests.append(fn)
        return fn

    def note(self, msg):
        """Something worth telling that is not a failure."""
        print(f"NOTE: {msg}", flush=True)
        self.notes.append(msg)

    def _print_logs(self, ctx):
        for d in getattr(ctx, "daemons", []):
            if not os.path.exists(d.log_path):
                continue
            print(f"---- last lines of {d.name} log ({d.log_path}) ----")
            print(d.log_tail(40))
            print("---- end of log ----", flush=True)

    def _alarm(self, signum, frame):
        raise TestTimeout(f"test exceeded {self.test_timeout} s")

    def main(self, setup, binaries=()):
        """Run; returns the process exit status (0, 1, or 99 when the binary is missing)."""
        for b in binaries:
            if not os.path.exists(b):
                # `make check` builds every daemon first, so a missing
                # binary is a broken build, never a reason to skip.
                print(f"ERROR: {self.name}: daemon binary {b} does not exist",
                      file=sys.stderr, flush=True)
                return HARD_ERROR
        selected = sys.argv[1:]
        tests = [t for t in self.tests if not selected or t.__name__ in selected]
        signal.signal(signal.SIGALRM, self._alarm)
        passed, failed = [], []
        ctx = Context()
        t_all = time.monotonic()
        try:
            signal.alarm(300)
            try:
                setup(ctx)
                print(f"setup done in {time.monotonic() - t_all:.2f} s", flush=True)
            finally:
                signal.alarm(0)
        except BaseException:  # pylint: disable=broad-except
            print(f"FAIL setup\n{traceback.format_exc()}", flush=True)
            self._print_logs(ctx)
            failed.append("setup")
            tests = []
        try:
            for t in tests:
                t0 = time.monotonic()
                signal.alarm(self.test_timeout)
                try:
                    t(ctx)
                    signal.alarm(0)
                    print(f"PASS {t.__name__} ({time.monotonic() - t0:.2f} s)", flush=True)
                    passed.append(t.__name__)
                except BaseException:  # pylint: disable=broad-except
                    signal.alarm(0)
                    print(f"FAIL {t.__name__} ({time.monotonic() - t0:.2f} s)\n"
                          f"{traceback.format_exc()}", flush=True)
                    self._print_logs(ctx)
                    failed.append(t.__name__)
                    if isinstance(sys.exc_info()[1], KeyboardInterrupt):
                        break
        finally:
            signal.alarm(120)
            t0 = time.monotonic()
            try:
                ctx.exit_stack.close()
                print(f"teardown done in {time.monotonic() - t0:.2f} s", flush=True)
            except BaseException:  # pylint: disable=broad-except
                print(f"FAIL teardown\n{traceback.format_exc()}", flush=True)
                failed.append("teardown")
            finally:
                signal.alarm(0)
        print(f"\n{self.name}: {len(passed)} passed, {len(failed)} failed "
              f"in {time.monotonic() - t_all:.1f} s")
        for n in failed:
            print(f"  failed: {n}")
        for n in self.notes:
            print(f"  note: {n}")
        sys.stdout.flush()
        return 1 if failed else 0


# --------------------------------------------------------------------------
# authd specifics shared by the authd test files

def authd_binary():
    return daemon_binary("authd")


def start_authd_stack(ctx, env=None):
    """Start postgres+redis and an authd against them; fills ctx.stack,
    ctx.authd, ctx.jwt_key. Cleanups are registered on ctx."""
    ctx.stack = Stack(("postgres", "redis"))
    ctx.cleanup(ctx.stack.stop)
    ctx.stack.start()
    ctx.authd = new_authd(ctx, env)
    ctx.authd.start()
    ctx.jwt_key = ctx.authd.credential("jwt-key")
    return ctx.authd


def new_authd(ctx, env=None, jwt_key=None):
    """An authd (not started) wired to ctx.stack; registered for teardown."""
    s = ctx.stack.env
    with open(s["VIGIL_DEV_PG_PASSWORD_FILE_AUTH"], "rb") as f:
        pg_password = f.read()
    e = {
        "VIGIL_POSTGRES_DSN": s["VIGIL_DEV_PG_DSN_AUTH"],
        "VIGIL_REDIS_ADDRESS": s["VIGIL_REDIS_ADDRESS"],
        "VIGIL_TRACING_OTLP_ENDPOINT": "",
    }
    e.update(env or {})
    key = jwt_key if jwt_key is not None else os.urandom(32).hex().encode()
    d = Daemon("authd", env=e, credentials={"jwt-key": key, "postgres-password": pg_password})
    ctx.daemons.append(d)
    ctx.cleanup(d.close)
    return d


def new_inventoryd(ctx, env=None):
    """An inventoryd (not started) wired to ctx.stack (PostgreSQL, Redis) and
    ctx.authd; registered for teardown."""
    s = ctx.stack.env
    with open(s["VIGIL_DEV_PG_PASSWORD_FILE_INVENTORY"], "rb") as f:
        pg_password = f.read()
    e = {
        "VIGIL_POSTGRES_DSN": s["VIGIL_DEV_PG_DSN_INVENTORY"],
        "VIGIL_REDIS_ADDRESS": s["VIGIL_REDIS_ADDRESS"],
        "VIGIL_AUTH_URL": f"http://{LOOPBACK}:{ctx.authd.port}",
        "VIGIL_TRACING_OTLP_ENDPOINT": "",
        "VIGIL_LOG_LEVEL": "info",
    }
    e.update(env or {})
    d = Daemon("inventoryd", env=e, credentials={"postgres-password": pg_password})
    ctx.daemons.append(d)
    ctx.cleanup(d.close)
    return d


_counter = [0]


def unique_name(prefix="u"):
    """A fresh valid username (3..64 bytes of [A-Za-z0-9_.-])."""
    _counter[0] += 1
    return f"{prefix}{os.getpid()}_{_counter[0]}_{os.urandom(3).hex()}"


def register(d, username=None, password="correct horse battery"):
    """Register a user (asserting 201); returns (user_id, username, password)."""
    username = username or unique_name()
    r = d.post("/register", {"username": username, "password": password})
    check(r.status == 201, f"register {username}: expected 201, got {r.status} {r.body!r}")
    return r.body["user_id"], username, password


def login(d, username, password, **kw):
    """Log in (asserting 200); returns the token."""
    r = d.post("/login", {"username": username, "password": password}, **kw)
    check(r.status == 200, f"login {username}: expected 200, got {r.status} {r.body!r}")
    return r.body["token"]


def new_session(d):
    """Register and log in a fresh user; returns (token, user_id, username)."""
    uid, name, pw = register(d)
    return login(d, name, pw), uid, name
