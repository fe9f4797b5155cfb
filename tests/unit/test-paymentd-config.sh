#!/bin/sh
# vigil-paymentd's configuration surface: the shipped file shows every key
# at its default, --check-config accepts it and reports file, line and key
# of every error in a bad one, out-of-range values (retention under 24 h,
# ratios above 1) are refused, and the daemon refuses to start without an
# AMQP password rather than run without its outbox relay.
set -eu
: "${top_srcdir:=$(dirname "$0")/../..}"
: "${top_builddir:=.}"
bin=$top_builddir/src/paymentd/vigil-paymentd
shipped=$top_srcdir/etc/vigil/paymentd.conf
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$bin" --dump-config >"$tmp/dump"
diff -u "$shipped" "$tmp/dump" || fail "etc/vigil/paymentd.conf differs from --dump-config"
echo "PASS: shipped config matches --dump-config"

"$bin" --config "$shipped" --check-config >/dev/null || fail "shipped config rejected"
echo "PASS: shipped config passes --check-config"

printf '[processor]\ndecline_ratio = 1.5\n[idempotency]\nretention_hours = 23\n[faults]\nbogus = 1\n' \
	>"$tmp/bad.conf"
if "$bin" --config "$tmp/bad.conf" --check-config >"$tmp/out" 2>&1; then
	fail "bad config accepted"
fi
grep -q "bad.conf:2.*decline_ratio" "$tmp/out" || fail "ratio > 1 not reported: $(cat "$tmp/out")"
grep -q "bad.conf:4.*retention_hours" "$tmp/out" || fail "retention < 24 h not reported: $(cat "$tmp/out")"
grep -q "bad.conf:6.*bogus" "$tmp/out" || fail "unknown key not reported: $(cat "$tmp/out")"
echo "PASS: --check-config names file, line and key of each error"

if VIGIL_FAULTS_ERROR_RATIO=2 "$bin" --config "$shipped" --check-config >"$tmp/out" 2>&1; then
	fail "out-of-range environment override accepted"
fi
grep -q "error_ratio" "$tmp/out" || fail "env error does not name the key: $(cat "$tmp/out")"
echo "PASS: environment overrides are validated"

if env -u CREDENTIALS_DIRECTORY -u VIGIL_AMQP_URL -u VIGIL_AMQP_PASSWORD_FILE \
	VIGIL_LOG_TARGET=stderr VIGIL_TRACING_OTLP_ENDPOINT= \
	VIGIL_HTTP_LISTEN=127.0.0.1:0 \
	timeout 20 "$bin" --config "$shipped" >"$tmp/out" 2>&1; then
	fail "started without an AMQP password"
fi
grep -q "amqp-password" "$tmp/out" || fail "missing password not named: $(cat "$tmp/out")"
echo "PASS: refuses to start without the amqp-password credential"
