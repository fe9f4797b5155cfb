#!/bin/sh
# Every daemon's configuration surface: the shipped /etc/vigil file shows
# every key at its default (it is exactly --dump-config), --check-config
# accepts it and names file, line and key of every error in a bad one,
# environment overrides are validated too, and a daemon missing a required
# secret refuses to start, naming the credential.
set -eu
: "${top_srcdir:=$(dirname "$0")/../..}"
: "${top_builddir:=.}"
: "${sysconfdir:=/etc}"
: "${localstatedir:=/var}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() { echo "FAIL: $*"; failed=1; }

# check NAME BAD-CONFIG "LINE:KEY …" ENV-ASSIGNMENT ENV-KEY CREDENTIAL
check() {
	name=$1 bad=$2 expected=$3 env_bad=$4 env_key=$5 credential=$6
	bin=$top_builddir/src/$name/vigil-$name
	shipped=$top_srcdir/etc/vigil/$name.conf

	# Shipped files carry the packaged paths, whatever this build's prefix.
	"$bin" --dump-config | sed "s|$sysconfdir/|/etc/|g; s|$localstatedir/|/var/|g" >"$tmp/dump"
	if diff -u "$shipped" "$tmp/dump"; then
		echo "PASS: $name: etc/vigil/$name.conf is --dump-config"
	else
		fail "$name: etc/vigil/$name.conf differs from --dump-config"
	fi

	if "$bin" --config "$shipped" --check-config >"$tmp/out" 2>&1; then
		echo "PASS: $name: the shipped file passes --check-config"
	else
		fail "$name: shipped config rejected: $(cat "$tmp/out")"
	fi

	printf "$bad" >"$tmp/bad.conf"
	if "$bin" --config "$tmp/bad.conf" --check-config >"$tmp/out" 2>&1; then
		fail "$name: bad config accepted"
	else
		ok=1
		for e in $expected; do
			grep -q "bad.conf:${e%%:*}: .*${e#*:}" "$tmp/out" || {
				fail "$name: bad.conf line ${e%%:*} (${e#*:}) not reported: $(cat "$tmp/out")"
				ok=0
			}
		done
		[ $ok -eq 1 ] && echo "PASS: $name: --check-config names file, line and key of each error"
	fi

	if env "$env_bad" "$bin" --config "$shipped" --check-config >"$tmp/out" 2>&1; then
		fail "$name: invalid $env_bad accepted"
	elif grep -q "$env_key" "$tmp/out"; then
		echo "PASS: $name: environment overrides are validated"
	else
		fail "$name: env error does not name $env_key: $(cat "$tmp/out")"
	fi

	[ -n "$credential" ] || return 0
	if env -u CREDENTIALS_DIRECTORY VIGIL_LOG_TARGET=stderr VIGIL_TRACING_OTLP_ENDPOINT= \
		VIGIL_HTTP_LISTEN=127.0.0.1:0 timeout 20 "$bin" --config "$shipped" >"$tmp/out" 2>&1; then
		fail "$name: started without the $credential credential"
	elif grep -q "$credential" "$tmp/out"; then
		echo "PASS: $name: refuses to start without the $credential credential"
	else
		fail "$name: missing $credential not named: $(cat "$tmp/out")"
	fi
}

check authd '[http]\nlisten = 127.0.0.1:8001\nbogus = 1\n[auth]\ntoken_ttl_seconds = ten\n' \
	"3:bogus 5:token_ttl_seconds" VIGIL_HTTP_MAX_CONNECTIONS=0 max_connections jwt-key
check paymentd '[processor]\ndecline_ratio = 1.5\n[idempotency]\nretention_hours = 23\n[faults]\nbogus = 1\n' \
	"2:decline_ratio 4:retention_hours 6:bogus" VIGIL_FAULTS_ERROR_RATIO=2 error_ratio amqp-password
check inventoryd '[cache]\nttl_seconds = 0\nbogus = 1\n' \
	"2:ttl_seconds 3:bogus" VIGIL_CACHE_TTL_SECONDS=-1 ttl_seconds ""
check notifyd '[consumer]\nprefetch = 0\nbogus = 1\n[faults]\nerror_ratio = 1.5\n' \
	"2:prefetch 3:bogus 5:error_ratio" VIGIL_CONSUMER_MAX_ATTEMPTS=5 max_attempts amqp-password
check alertbotd '[webhook]\nmax_alerts = 0\nbogus = 1\n' \
	"2:max_alerts 3:bogus" VIGIL_WEBHOOK_MAX_ALERTS=5000 max_alerts webhook-token
exit $failed
