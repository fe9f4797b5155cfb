"""The SHIPPED nginx gateway (etc/nginx/sites-available/vigil-gateway-dev
with etc/nginx/vigil/*.conf), rendered only to change ports and paths, run
by the real nginx for the tests (test-gateway.py, test-gateway-metrics.py,
test-live-queries.py).

  render_gateway()  the site and its includes written with test ports
  Gateway           nginx running it on 127.0.0.1 (and [::1])
"""

import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess

import harness
from harness import check

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ETC_NGINX = os.path.join(harness.TOP_SRCDIR, "etc", "nginx")



def substitute(text, old, new, count, what):
    """Replace old by new, asserting it occurs exactly count times: when the
    shipped file changes shape, the test says so instead of testing
    something else."""
    n = text.count(old)
    check(n == count, f"{what}: expected {count} × {old!r}, found {n}: the rendering "
                      f"in gatewaylib.py must follow the shipped file")
    return text.replace(old, new)


def render_gateway(directory, port, upstreams, status_port, listen6, rate=None):
    """Write the shipped site and its two includes into directory with test
    ports (upstreams: service -> port), logs under directory/log, and an
    nginx.conf around them as Debian's includes the site. rate (e.g.
    "1000r/s") replaces the per-client request rate, for tests of something
    other than the limiter that send more than a client may. Returns the
    path of nginx.conf."""
    vigil = os.path.join(directory, "vigil")
    for d in ("vigil", "log", "tmp"):
        os.makedirs(os.path.join(directory, d), exist_ok=True)
    os.chmod(os.path.join(directory, "tmp"), 0o1777)

    def read(*path):
        with open(os.path.join(ETC_NGINX, *path), encoding="utf-8") as f:
            return f.read()

    def write(path, text):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    http_conf = read("vigil", "gateway-http.conf")
    for svc, default in (("auth", 8001), ("payment", 8002), ("inventory", 8003)):
        http_conf = substitute(http_conf, f"server 127.0.0.1:{default};",
                               f"server 127.0.0.1:{upstreams[svc]};", 2, "gateway-http.conf")
    http_conf = substitute(http_conf, "listen 127.0.0.1:8081;", f"listen 127.0.0.1:{status_port};",
                           1, "gateway-http.conf")
    if rate:
        http_conf = substitute(http_conf, "rate=10r/s;", f"rate={rate};", 1, "gateway-http.conf")
    # The operator's rate classes: vigil/rate-limit.d/*.conf of the rendering.
    os.makedirs(os.path.join(vigil, "rate-limit.d"), exist_ok=True)
    http_conf = substitute(http_conf, "include /etc/nginx/vigil/rate-limit.d/",
                           f"include {vigil}/rate-limit.d/", 1, "gateway-http.conf")
    write(os.path.join(vigil, "gateway-http.conf"), http_conf)

    server_conf = substitute(read("vigil", "gateway-server.conf"), "/var/log/nginx/",
                             os.path.join(directory, "log") + "/", 2, "gateway-server.conf")
    write(os.path.join(vigil, "gateway-server.conf"), server_conf)

    site = read("sites-available", "vigil-gateway-dev")
    site = substitute(site, "/etc/nginx/vigil/", vigil + "/", 2, "vigil-gateway-dev")
    site = substitute(site, "listen 8080;", f"listen 127.0.0.1:{port};", 1, "vigil-gateway-dev")
    site = substitute(site, "listen [::]:8080;",
                      f"listen {listen6}:{port};" if listen6 else "", 1, "vigil-gateway-dev")
    write(os.path.join(directory, "vigil-gateway-dev"), site)

    tmp = os.path.join(directory, "tmp")
    user = ""
    if os.geteuid() == 0:
        import grp  # noqa: PLC0415
        import pwd  # noqa: PLC0415
        user = f"user nobody {grp.getgrgid(pwd.getpwnam('nobody').pw_gid).gr_name};"
    conf = os.path.join(directory, "nginx.conf")
    write(conf, f"""{user}
worker_processes 2;
pid {directory}/nginx.pid;
error_log {directory}/log/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {directory}/vigil-gateway-dev;
}}
""")
    return conf


class Gateway:
    """nginx running a rendered gateway on 127.0.0.1:port (and [::1] when
    IPv6 loopback works)."""

    def __init__(self, upstreams, listen6, rate=None, rate_classes=None):
        """rate_classes: text of a local rate-limit.d/50-test.conf."""
        self.dir = harness._mkdtemp("vigil-gateway-")
        self.port = harness.free_port()
        self.status_port = harness.free_port()
        self.listen6 = listen6
        self.conf = render_gateway(self.dir, self.port, upstreams, self.status_port, listen6, rate)
        if rate_classes is not None:
            with open(os.path.join(self.dir, "vigil", "rate-limit.d", "50-test.conf"), "w",
                      encoding="utf-8") as f:
                f.write(rate_classes)
        self.access_log = os.path.join(self.dir, "log", "vigil-gateway.access.log")
        self.proc = None

    def nginx(self, *args):
        return subprocess.run([NGINX, "-p", self.dir, "-c", self.conf, *args],
                              capture_output=True, text=True, timeout=30, check=False)

    def start(self):
        t = self.nginx("-t")
        check(t.returncode == 0, f"nginx -t refuses the shipped gateway:\n{t.stderr}")
        self.proc = subprocess.Popen([NGINX, "-p", self.dir, "-c", self.conf, "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "stderr.log"), "wb"),
                                     start_new_session=True)
        harness.wait_until(lambda: self.request("GET", "/health")[0] == 200, 20,
                           what="nginx answers /health")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not harness.KEEP:
            harness._rmtree(self.dir)

    def request(self, method, path, body=None, headers=None, source="127.0.0.1", host="127.0.0.1",
                timeout=10):
        """One request on a new connection from source; returns
        (status, headers (an http.client message), body bytes)."""
        conn = http.client.HTTPConnection(host, self.port, timeout=timeout,
                                          source_address=(source, 0))
        try:
            h = dict(headers or {})
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
                h.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, r.msg, r.read()
        finally:
            conn.close()

    def raw(self, data, source="127.0.0.1"):
        """Bytes on a new connection, read until nginx closes it; returns
        (status, headers, body) like request()."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10,
                                      source_address=(source, 0)) as s:
            s.sendall(data)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        msg = http.client.parse_headers(io.BytesIO("\r\n".join(lines[1:] + ["", ""]).encode("latin-1")))
        return int(lines[0].split()[1]), msg, body

    def log_entry(self, request_id):
        """The access log entry of a request (waits for nginx to write it)."""
        def find():
            with open(self.access_log, encoding="utf-8") as f:
                for line in f:
                    e = json.loads(line)
                    if e["request_id"] == request_id:
                        return e
            return None
        return harness.wait_until(find, 10, what=f"access log entry {request_id}")


# --------------------------------------------------------------------------
# mtail over the gateway's access log

MTAIL = shutil.which("mtail")
MTAIL_PROGS = os.path.join(harness.TOP_SRCDIR, "etc", "mtail")


class Mtail:
    """The real mtail running the shipped etc/mtail programs over log_path,
    serving metrics on 127.0.0.1:port. start() returns once the program is
    loaded and the log is open (mtail reads from the end of a log that
    exists when it starts, as the service does)."""

    def __init__(self, log_path, directory):
        self.log_path = log_path
        self.port = harness.free_port()
        self.stderr = os.path.join(directory, "mtail.stderr")
        self.proc = None

    def start(self):
        check(MTAIL, "mtail not installed (scripts/install-deps.sh installs it)")
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [MTAIL, "--progs", MTAIL_PROGS, "--logs", self.log_path, "--address", "127.0.0.1",
                 "--port", str(self.port), "--logtostderr"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True)

        def ready():
            check(self.proc.poll() is None, f"mtail exited: {self.log_tail()}")
            v = self.vars()
            check(not v.get("prog_load_errors_total"),
                  f"mtail could not load the programs: {v.get('prog_load_errors_total')}")
            return (v.get("prog_loads_total", {}).get("vigil-gateway.mtail")
                    and v.get("log_opens_total", {}).get(self.log_path))
        harness.wait_until(ready, 20, interval=0.1,
                           what=f"mtail loading vigil-gateway.mtail and opening {self.log_path}")

    def get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            check(r.status == 200, f"mtail {path}: {r.status}")
            return body.decode()
        finally:
            conn.close()

    def vars(self):
        return json.loads(self.get("/debug/vars"))

    def samples(self):
        return harness.parse_metrics(self.get("/metrics"))

    def log_tail(self):
        try:
            with open(self.stderr, encoding="utf-8", errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
