#!/bin/sh
# vigil-notifyd's configuration surface: the shipped file shows every key at
# its default, --check-config accepts it and reports file, line and key of
# every error in a bad one, and without a RabbitMQ password it refuses to
# start, naming the credential.
set -eu
: "${top_srcdir:=$(dirname "$0")/../..}"
: "${top_builddir:=.}"
bin=$top_builddir/src/notifyd/vigil-notifyd
shipped=$top_srcdir/etc/vigil/notifyd.conf
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$bin" --dump-config >"$tmp/dump"
diff -u "$shipped" "$tmp/dump" || fail "etc/vigil/notifyd.conf differs from --dump-config"
echo "PASS: shipped config matches --dump-config"

"$bin" --config "$shipped" --check-config >/dev/null || fail "shipped config rejected"
echo "PASS: shipped config passes --check-config"

printf '[consumer]\nprefetch = 0\nbogus = 1\n[faults]\nerror_ratio = 1.5\n' >"$tmp/bad.conf"
if "$bin" --config "$tmp/bad.conf" --check-config >"$tmp/out" 2>&1; then
	fail "bad config accepted"
fi
grep -q "bad.conf:2.*prefetch" "$tmp/out" || fail "out-of-range prefetch not reported: $(cat "$tmp/out")"
grep -q "bad.conf:3.*bogus" "$tmp/out" || fail "unknown key not reported: $(cat "$tmp/out")"
grep -q "bad.conf:5.*error_ratio" "$tmp/out" || fail "bad ratio not reported: $(cat "$tmp/out")"
echo "PASS: --check-config names file, line and key of each error"

if VIGIL_CONSUMER_MAX_ATTEMPTS=5 "$bin" --config "$shipped" --check-config >"$tmp/out" 2>&1; then
	fail "max_attempts beyond the retry queues accepted"
fi
grep -q "max_attempts" "$tmp/out" || fail "env error does not name the key: $(cat "$tmp/out")"
echo "PASS: environment overrides are validated"

if env -u CREDENTIALS_DIRECTORY -u VIGIL_AMQP_URL VIGIL_LOG_TARGET=stderr \
	VIGIL_HTTP_LISTEN=127.0.0.1:0 "$bin" --config "$shipped" >"$tmp/out" 2>&1; then
	fail "started without an AMQP password"
fi
grep -q "amqp-password" "$tmp/out" || fail "missing password not named: $(cat "$tmp/out")"
echo "PASS: refuses to start without the amqp-password credential"
