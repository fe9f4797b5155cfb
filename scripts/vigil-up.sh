#!/usr/bin/env bash
# Bring vigil up on this machine and serve it: install the dependencies,
# build, start the dev stack (real PostgreSQL, Redis and RabbitMQ on
# loopback, as their own users) and the daemons built so far, check that
# they answer, and print where to look. `scripts/vigil-down.sh` stops it.
#
# State lives in $VIGIL_DEV_DIR (default /var/tmp/vigil-dev) and survives a
# down/up cycle; the daemons listen on their DESIGN.md ports on 127.0.0.1.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dir=${VIGIL_DEV_DIR:-/var/tmp/vigil-dev}
build=$top/build/dev

"$top/scripts/install-deps.sh"

if [ ! -x "$build/src/authd/vigil-authd" ] || [ -n "$(find "$top/src" -newer "$build/src/authd/vigil-authd" -print -quit)" ]; then
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
creds=$dir/credentials/authd
mkdir -p "$creds"
chmod 700 "$dir/credentials" "$creds"
[ -s "$creds/jwt-key" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$creds/jwt-key"
cp "$VIGIL_DEV_PG_PASSWORD_FILE_AUTH" "$creds/postgres-password"
chmod 600 "$creds"/*

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

# Smoke: register (or reuse) a user, log in, verify the token.
user=smoke-$(date +%s)
curl -fsS -X POST -H 'Content-Type: application/json' \
	-d "{\"username\":\"$user\",\"password\":\"correct horse battery\"}" \
	http://127.0.0.1:8001/register >/dev/null
token=$(curl -fsS -X POST -H 'Content-Type: application/json' \
	-d "{\"username\":\"$user\",\"password\":\"correct horse battery\"}" \
	http://127.0.0.1:8001/login | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -fsS -X POST -H "Authorization: Bearer $token" http://127.0.0.1:8001/verify >/dev/null
echo "Smoke test passed: register → login → verify"

cat <<TEXT

vigil is up. Where to look:
  authd API        http://127.0.0.1:8001/  (POST /register /login /verify /logout, GET /stats)
  health/metrics   http://127.0.0.1:8001/health  /ready  /metrics
  logs             $dir/vigil-authd.log
  PostgreSQL       psql "$VIGIL_TEST_PG_ADMIN_DSN"
  Redis            redis-cli -p $VIGIL_DEV_REDIS_PORT
  stop             scripts/vigil-down.sh
TEXT
