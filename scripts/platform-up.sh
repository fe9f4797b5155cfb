#!/usr/bin/env bash
# Bring the vigil platform up under systemd, from its Debian packages.
#
# On a host where systemd is PID 1: build the packages, install them with
# apt (which pulls in PostgreSQL, Redis, nginx, Prometheus, ...) and start
# vigil.target. Elsewhere (a container, CI, this machine): boot a Debian 12
# machine with systemd-nspawn from a cached debootstrap tree, install the
# same packages in it and start vigil.target there; the machine shares the
# host's network, so the gateway (:80) and Prometheus (:9090) answer on
# localhost. Either way smoke requests go through the gateway (register →
# login → charge → products → reserve → release; the charge's notification is looked
# for in PostgreSQL), the script prints where to look, and it ends with
# `vigilctl validate`, whose exit status is its own.
#
# scripts/platform-down.sh stops it. Run as root. VIGIL_PACKAGES=DIR installs
# the packages already in DIR instead of building them. Grafana, Loki,
# Promtail and Tempo (Grafana's packages, not Debian's) come from
# VIGIL_GRAFANA_DEBS=DIR (their .deb files) or Grafana's APT repository when
# it answers (VIGIL_GRAFANA=off: neither); the script ends by saying what is
# not installed and what that means.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
machine=${VIGIL_MACHINE:-vigil}
pkgs=${VIGIL_PACKAGES:-$top/build/packages}
nspawn=$top/scripts/nspawn-machine.sh

prog=${0##*/}
note() { echo "$prog: $*" >&2; }
die() { note "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

on_systemd_host() {
	[ -d /run/systemd/system ] && [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]
}

port_busy() {
	python3 -c 'import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null && return 1
	return 0
}

# Packaging and container tools (install-deps.sh adds whatever it lacks).
"$top/scripts/install-deps.sh" debhelper devscripts lintian dpkg-dev fakeroot \
	debootstrap systemd-container git

[ -n "${VIGIL_PACKAGES:-}" ] || "$top/scripts/build-packages.sh" --if-stale --out "$pkgs"
debs=()
for f in "$pkgs"/*.deb; do
	case $f in *-dbgsym_*) ;; *) debs+=("$f") ;; esac
done
[ ${#debs[@]} -gt 0 ] || die "no packages in $pkgs"

if on_systemd_host; then
	mode=host
	run() { "$@"; }
	note "systemd is PID 1: installing on this host"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold "${debs[@]}"
else
	mode=machine
	run() { "$nspawn" exec "$machine" "$@"; }
	if ! "$nspawn" status "$machine"; then
		busy=()
		for p in 80 8001 8002 8003 8004 8005 5432 5672 6379 9090 9093 9100; do
			port_busy "$p" && busy+=("$p")
		done
		[ ${#busy[@]} -eq 0 ] ||
			die "ports ${busy[*]} are in use on this host (the machine shares its network): stop what uses them (scripts/vigil-down.sh?)"
		note "systemd is not PID 1 here: booting the systemd-nspawn machine '$machine'"
		"$nspawn" boot "$machine"
	else
		note "machine '$machine' is running: upgrading its packages"
	fi
	"$nspawn" install-debs "$machine" "$pkgs"
fi

# Grafana, Loki, Promtail and Tempo are Grafana's own packages, not in
# Debian: from a directory of their .deb files (VIGIL_GRAFANA_DEBS=DIR, for
# machines without internet access), else from Grafana's APT repository when
# it answers (VIGIL_GRAFANA=off skips it). vigil-monitoring's drop-ins and
# provisioning make them run vigil's configuration.
grafana_stack=(grafana loki promtail tempo)
if [ -n "${VIGIL_GRAFANA_DEBS:-}" ]; then
	[ -d "$VIGIL_GRAFANA_DEBS" ] || die "VIGIL_GRAFANA_DEBS=$VIGIL_GRAFANA_DEBS is not a directory"
	note "installing Grafana's packages from $VIGIL_GRAFANA_DEBS"
	if [ $mode = host ]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$VIGIL_GRAFANA_DEBS"/*.deb
	else
		"$nspawn" install-debs "$machine" "$VIGIL_GRAFANA_DEBS"
	fi
elif [ "${VIGIL_GRAFANA:-auto}" != off ] &&
	run curl -fsS -m 10 -o /dev/null https://apt.grafana.com/gpg.key 2>/dev/null; then
	note "installing Grafana's packages from Grafana's APT repository"
	run sh -c 'mkdir -p /etc/apt/keyrings &&
		curl -fsS -m 30 -o /etc/apt/keyrings/grafana.asc https://apt.grafana.com/gpg.key &&
		echo "deb [signed-by=/etc/apt/keyrings/grafana.asc] https://apt.grafana.com stable main" \
			>/etc/apt/sources.list.d/grafana.list &&
		apt-get update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"' sh "${grafana_stack[@]}" ||
		note "installing Grafana's packages failed (see above)"
fi
grafana_missing=()
for p in "${grafana_stack[@]}"; do
	run dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		grafana_missing+=("$p")
done

run systemctl start vigil.target
# /ready is not exposed by the gateway: ask each daemon on its own port,
# then check the gateway answers a public route.
all_ready() {
	for p in 8001 8002 8003 8004 8005; do
		curl -fsS -m 2 "http://127.0.0.1:$p/ready" >/dev/null 2>&1 || return 1
	done
	curl -fsS -m 2 http://127.0.0.1/api/v1/inventory/products >/dev/null 2>&1
}
for _ in $(seq 1 90); do
	[ "$(run systemctl is-active vigil.target 2>/dev/null || true)" = active ] && all_ready && break
	sleep 1
done
all_ready || { run systemctl --no-pager status 'vigil-*' || true; die "the daemons are not all ready"; }

# Smoke: register → login → charge → products → reserve → release through the
# gateway, and the charge's notification in PostgreSQL.
json_field() { # field: from the JSON on stdin
	python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
notifications() {
	run runuser -u postgres -- psql -X -A -t -q -d vigil -c 'SELECT count(*) FROM notify.notifications'
}
user=smoke-$(date +%s)-$$
body="{\"username\":\"$user\",\"password\":\"correct horse battery staple\"}"
curl -fsS -m 10 -X POST -H 'Content-Type: application/json' -d "$body" \
	http://127.0.0.1/api/v1/auth/register >/dev/null
token=$(curl -fsS -m 10 -X POST -H 'Content-Type: application/json' -d "$body" \
	http://127.0.0.1/api/v1/auth/login | json_field token)
before=$(notifications)
# The simulated processor declines 5% of charges (402): a few tries.
for i in 1 2 3 4 5; do
	code=$(curl -sS -m 10 -o /tmp/vigil-smoke-charge.$$ -w '%{http_code}' -X POST \
		-H "Authorization: Bearer $token" -H "Idempotency-Key: smoke-$$-$i" \
		-H 'Content-Type: application/json' -d '{"amount":12.34}' http://127.0.0.1/api/v1/payment/charge)
	[ "$code" = 402 ] || break
done
payment=$(json_field payment_id </tmp/vigil-smoke-charge.$$ 2>/dev/null || true)
rm -f /tmp/vigil-smoke-charge.$$
[ "$code" = 201 ] && [ -n "$payment" ] || die "charge through the gateway answered $code"
for _ in $(seq 1 30); do
	[ "$(notifications)" -gt "$before" ] && break
	sleep 0.5
done
[ "$(notifications)" -gt "$before" ] || die "payment $payment produced no notification (vigil-notifyd, RabbitMQ?)"
product=$(curl -fsS -m 10 http://127.0.0.1/api/v1/inventory/products |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["products"][0]["id"])')
# A reservation needs the token; releasing it gives the unit back.
reservation=$(curl -fsS -m 10 -X POST -H "Authorization: Bearer $token" \
	-H 'Content-Type: application/json' -d '{"quantity":1}' \
	"http://127.0.0.1/api/v1/inventory/product/$product/reserve" | json_field reservation_id)
curl -fsS -m 10 -X DELETE -H "Authorization: Bearer $token" \
	"http://127.0.0.1/api/v1/inventory/reservation/$reservation" >/dev/null
echo "Smoke test passed through the gateway: register → login → charge (payment $payment, notified) → products → reserve → release"

if [ $mode = machine ]; then
	in="scripts/nspawn-machine.sh exec $machine "
	where="in the systemd-nspawn machine '$machine' (sharing this host's network)"
else
	in=
	where="on this host"
fi
cat <<TEXT

vigil is up under systemd $where. Where to look:
  gateway        http://127.0.0.1/api/v1/{auth,payment,inventory}/   (nginx :80, JSON access log in /var/log/nginx/vigil-gateway.access.log)
  daemons        http://127.0.0.1:8001 … 8005/metrics    (authd, paymentd, inventoryd, notifyd, alertbotd; socket-activated)
  incidents      http://127.0.0.1:8005/incidents         (the alert bot's remediations)
  Prometheus     http://127.0.0.1:9090                  Alertmanager http://127.0.0.1:9093
  nginx status   http://127.0.0.1:8081/stub_status
  units          ${in}systemctl list-units 'vigil*'
  logs           ${in}journalctl -u vigil-paymentd -o json-pretty
  remediations   ${in}journalctl MESSAGE_ID=8fa5e36ef7934bd7ad1a5b385a4e81c8
  hardening      ${in}systemd-analyze security vigil-alertbotd.service
Stop it with: scripts/platform-down.sh
TEXT
if [ ${#grafana_missing[@]} -eq 0 ]; then
	cat <<TEXT
  Grafana        http://127.0.0.1:3000  (dashboards in the folder "vigil"; Loki :3100, Tempo :3200, Promtail :9080)
TEXT
else
	cat <<TEXT

Not installed: ${grafana_missing[*]} (Grafana's own packages: not in Debian;
Grafana's APT repository did not answer and VIGIL_GRAFANA_DEBS is not set).
What that means: no Grafana dashboards (query Prometheus on :9090 instead);
without Loki and Promtail the logs stay in the journal (journalctl -u 'vigil-*');
without Tempo the daemons' spans are dropped and counted
(vigil_trace_spans_dropped_total). To add them later, put their .deb files
in a directory and run: VIGIL_GRAFANA_DEBS=DIR scripts/platform-up.sh
TEXT
fi

# Last, the whole install checked pillar by pillar (vigilctl(8)): its
# verdict is this script's.
echo
note "checking the install: ${in}vigilctl validate"
if ! run vigilctl validate; then
	die "vigil is up, but vigilctl validate found the problems above (each FAIL line is followed by its fix)"
fi
