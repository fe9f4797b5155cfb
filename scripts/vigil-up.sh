#!/usr/bin/env bash
# The developer's way to run vigil from the build tree, without packages or
# systemd (scripts/platform-up.sh is the real platform): install the
# dependencies, build, start the dev stack (real PostgreSQL, Redis and
# RabbitMQ on loopback, as their own users) and authd, paymentd, inventoryd
# and notifyd on their DESIGN.md ports, check that they answer, and print
# where to look. `scripts/vigil-down.sh` stops it. (alertbotd needs systemd
# on D-Bus: it runs under scripts/platform-up.sh.)
#
# State lives in $VIGIL_DEV_DIR (default /var/tmp/vigil-dev) and survives a
# down/up cycle; the daemons listen on their DESIGN.md ports on 127.0.0.1.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dir=${VIGIL_DEV_DIR:-/var/tmp/vigil-dev}
build=$top/build/dev

"$top/scripts/install-deps.sh"

if [ ! -x "$build/src/notifyd/vigil-notifyd" ] || [ -n "$(find "$top/src" -newer "$build/src/notifyd/vigil-notifyd" -print -quit)" ]; then
	(cd "$top" && { [ -x configure ] || autoreconf -fi; })
	mkdir -p "$build"
	(cd "$build" && { [ -f Makefile ] || "$top/configure" -q; } && make -s -j"$(nproc)")
fi

if [ -f "$dir/env" ] && "$top/scripts/dev-stack.sh" status "$dir" >/dev/null 2>&1; then
	echo "Dev stack already running in $dir"
else
	"$top/scripts/dev-stack.sh" start "$dir" >/dev/null
fi
# shellcheck disable=SC1091
. "$dir/env"

# Secrets are generated once, like the packages do on first install.
for d in authd paymentd inventoryd notifyd; do
	creds=$dir/credentials/$d
	mkdir -p "$creds"
	chmod 700 "$dir/credentials" "$creds"
	service=${d%d}
	service=${service^^}
	pw_file=VIGIL_DEV_PG_PASSWORD_FILE_$service
	cp "${!pw_file}" "$creds/postgres-password"
	cp "$dir/secrets/amqp-password" "$creds/amqp-password"
	chmod 600 "$creds"/*
done
jwt=$dir/credentials/authd/jwt-key
[ -s "$jwt" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$jwt"

start_daemon() { # name port dsn
	local name=$1 port=$2 dsn=$3 pidfile=$dir/$1.pid
	if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
		echo "$name already running (pid $(cat "$pidfile"))"
		return
	fi
	CREDENTIALS_DIRECTORY=$dir/credentials/${name#vigil-} \
		VIGIL_HTTP_LISTEN=127.0.0.1:$port \
		VIGIL_POSTGRES_DSN=$dsn \
		VIGIL_REDIS_ADDRESS=$VIGIL_REDIS_ADDRESS \
		VIGIL_AMQP_URL="amqp://vigil@127.0.0.1:$VIGIL_DEV_AMQP_PORT/vigil" \
		VIGIL_AUTH_URL=http://127.0.0.1:8001 \
		VIGIL_LOG_TARGET=stderr \
		setsid "$build/src/${name#vigil-}/$name" --config /dev/null \
		>>"$dir/$name.log" 2>&1 </dev/null &
	echo $! >"$pidfile"
	for _ in $(seq 1 100); do
		if curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then
			echo "$name ready on 127.0.0.1:$port"
			return
		fi
		sleep 0.1
	done
	echo "$name did not become ready; last log lines:" >&2
	tail -n 20 "$dir/$name.log" >&2
	exit 1
}

start_daemon vigil-authd 8001 "$VIGIL_DEV_PG_DSN_AUTH"
start_daemon vigil-paymentd 8002 "$VIGIL_DEV_PG_DSN_PAYMENT"
start_daemon vigil-inventoryd 8003 "$VIGIL_DEV_PG_DSN_INVENTORY"
start_daemon vigil-notifyd 8004 "$VIGIL_DEV_PG_DSN_NOTIFY"

# Smoke: register (or reuse) a user, log in, verify the token.
user=smoke-$(date +%s)
curl -fsS -X POST -H 'Content-Type: application/json' \
	-d "{\"username\":\"$user\",\"password\":\"correct horse battery\"}" \
	http://127.0.0.1:8001/register >/dev/null
token=$(curl -fsS -X POST -H 'Content-Type: application/json' \
	-d "{\"username\":\"$user\",\"password\":\"correct horse battery\"}" \
	http://127.0.0.1:8001/login | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -fsS -X POST -H "Authorization: Bearer $token" http://127.0.0.1:8001/verify >/dev/null
curl -fsS -X POST -H "Authorization: Bearer $token" -H "Idempotency-Key: smoke-$user" \
	-H 'Content-Type: application/json' -d '{"amount": 12.50}' http://127.0.0.1:8002/charge >/dev/null
curl -fsS http://127.0.0.1:8003/products >/dev/null
echo "Smoke test passed: register → login → verify → charge, products"

cat <<TEXT

vigil is up. Where to look:
  authd            http://127.0.0.1:8001/  (POST /register /login /verify /logout, GET /stats)
  paymentd         http://127.0.0.1:8002/  (POST /charge, GET /payment/{id})
  inventoryd       http://127.0.0.1:8003/  (GET /products /product/{id}, POST /product/{id}/reserve, DELETE /reservation/{id})
  notifyd          http://127.0.0.1:8004/metrics
  health/metrics   each daemon's /health  /ready  /metrics
  logs             $dir/vigil-*.log
  PostgreSQL       psql "$VIGIL_TEST_PG_ADMIN_DSN"
  Redis            redis-cli -p $VIGIL_DEV_REDIS_PORT
  stop             scripts/vigil-down.sh
TEXT
