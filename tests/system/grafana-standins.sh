#!/usr/bin/env bash
# Build stand-ins for Grafana's grafana, loki, promtail and tempo packages:
#
#   grafana-standins.sh OUTDIR
#
# STAND-INS, NOT GRAFANA: Grafana's packages are not in Debian's archive and
# Grafana's APT repository cannot be reached from the machines vigil is
# tested on. What the tests check is vigil's wiring of those packages, so
# the stand-ins have what that wiring relies on, as Grafana's own packaging
# has it: the package names, the binary /usr/bin/NAME (Grafana:
# /usr/share/grafana/bin/grafana, run by grafana-server.service with
# cfg:default.paths.provisioning=/etc/grafana/provisioning), the unit
# /etc/systemd/system/NAME.service running as the system user NAME with
# `-config.file /etc/NAME/config.yml`, that file as the package's conffile,
# and a postinst that creates the user and enables and starts the unit.
# The binary is a small Python program: it records how it was started
# (arguments, user, groups, whether it can read its configuration and, for
# promtail, the journal) and serves that as JSON on /standin, and /ready
# (Grafana: /api/health) on the port its configuration names.
set -euo pipefail

out=${1:?usage: $0 OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/vigil-standins.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The program every stand-in runs (its name says which it is).
standin_program() {
	cat <<'PY'
#!/usr/bin/python3
# STAND-IN for one of Grafana's packages (tests/system/grafana-standins.sh):
# records how it was started and answers /ready and /standin.
import glob, grp, http.server, json, os, pwd, re, sys

name = os.path.basename(sys.argv[0])
if name == "grafana":
    name = "grafana-server"
args = sys.argv[1:]


def option(flag):
    for i, a in enumerate(args):
        if a in (flag, "-" + flag.lstrip("-"), "--" + flag.lstrip("-")) and i + 1 < len(args):
            return args[i + 1]
        for prefix in ("-" + flag.lstrip("-") + "=", "--" + flag.lstrip("-") + "="):
            if a.startswith(prefix):
                return a[len(prefix):]
    return None


record = {"name": name, "argv": sys.argv, "user": pwd.getpwuid(os.getuid()).pw_name,
          "groups": sorted(grp.getgrgid(g).gr_name for g in os.getgroups())}
port = None
if name == "grafana-server":
    prov = next((a.split("=", 1)[1] for a in args if a.startswith("cfg:default.paths.provisioning=")), None)
    record["provisioning"] = prov
    record["datasources"], record["dashboards"] = [], {}
    for f in sorted(glob.glob(os.path.join(prov or "/nonexistent", "datasources", "*.y*ml"))):
        record["datasources"] += re.findall(r"^\s*uid:\s*(\S+)", open(f).read(), re.M)
    for f in sorted(glob.glob(os.path.join(prov or "/nonexistent", "dashboards", "*.y*ml"))):
        for path in re.findall(r"^\s*path:\s*(\S+)", open(f).read(), re.M):
            record["dashboards"][path] = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "*.json")))
    port = 3000
else:
    config = option("config.file")
    record["config"] = config
    try:
        text = open(config).read()
        record["config_readable"] = True
        m = re.search(r"http_listen_port:\s*(\d+)", text)
        port = int(m.group(1)) if m else None
    except OSError as e:
        record["config_readable"] = False
        record["config_error"] = str(e)
    if name == "promtail":
        journal = glob.glob("/var/log/journal/*/*.journal") + glob.glob("/run/log/journal/*/*.journal")
        record["journal_readable"] = any(os.access(j, os.R_OK) for j in journal)
if not port:
    print(f"{name} (stand-in): no port in the configuration", file=sys.stderr)
    sys.exit(1)


class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/ready": b"ready\n", "/api/health": b'{"database":"ok"}\n',
                "/standin": json.dumps(record).encode()}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *a):
        pass


print(f"{name} (stand-in) on 127.0.0.1:{port}: {json.dumps(record)}", file=sys.stderr, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
}

build() { # name unit-name binary-path unit-text config-path
	local name=$1 unit=$2 binary=$3 unit_text=$4 config=$5 d=$work/$1
	mkdir -p "$d/DEBIAN" "$d$(dirname "$binary")" "$d/etc/systemd/system" "$d$(dirname "$config")"
	standin_program >"$d$binary"
	chmod 755 "$d$binary"
	printf '%s\n' "$unit_text" >"$d/etc/systemd/system/$unit"
	printf '# %s stand-in: the package'\''s own configuration, never run by vigil.\n' "$name" >"$d$config"
	echo "$config" >"$d/DEBIAN/conffiles"
	cat >"$d/DEBIAN/control" <<EOF
Package: $name
Version: 0.0.0~vigil.standin
Architecture: all
Maintainer: vigil tests <vigil-maintainers@example.org>
Depends: python3
Description: STAND-IN for Grafana's $name package (vigil's tests)
 Not Grafana's software: the package name, binary, unit, user and
 configuration path of Grafana's own package, around a program that records
 how it was started. See tests/system/grafana-standins.sh.
EOF
	cat >"$d/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
	getent passwd $name >/dev/null ||
		useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin $name
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		systemctl enable $unit >/dev/null 2>&1 || true
		systemctl restart $unit
	fi
fi
EOF
	cat >"$d/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
[ -d /run/systemd/system ] && systemctl stop $unit || true
EOF
	chmod 755 "$d/DEBIAN/postinst" "$d/DEBIAN/prerm"
	dpkg-deb --root-owner-group -b "$d" "$out/${name}_0.0.0~vigil.standin_all.deb" >/dev/null
}

for tool in loki promtail tempo; do
	build "$tool" "$tool.service" "/usr/bin/$tool" "[Unit]
Description=$tool (stand-in for Grafana's package)
After=network.target

[Service]
Type=simple
User=$tool
ExecStart=/usr/bin/$tool -config.file /etc/$tool/config.yml
TimeoutSec=120
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target" "/etc/$tool/config.yml"
done
build grafana grafana-server.service /usr/share/grafana/bin/grafana "[Unit]
Description=Grafana instance (stand-in for Grafana's package)
After=network.target

[Service]
User=grafana
Group=grafana
Type=simple
ExecStart=/usr/share/grafana/bin/grafana server --config=/etc/grafana/grafana.ini --packaging=deb cfg:default.paths.provisioning=/etc/grafana/provisioning
Restart=on-failure

[Install]
WantedBy=multi-user.target" /etc/grafana/grafana.ini
echo "$out"
