#!/bin/sh
# vigil-authd's configuration surface: the shipped file shows every key at
# its default, --check-config accepts it, and reports file, line and key of
# every error in a bad one.
set -eu
bin=$top_builddir/src/authd/vigil-authd
shipped=$top_srcdir/etc/vigil/authd.conf
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$bin" --dump-config >"$tmp/dump"
diff -u "$shipped" "$tmp/dump" || fail "etc/vigil/authd.conf differs from --dump-config"
echo "PASS: shipped config matches --dump-config"

"$bin" --config "$shipped" --check-config >/dev/null || fail "shipped config rejected"
echo "PASS: shipped config passes --check-config"

printf '[http]\nlisten = 127.0.0.1:8001\nbogus = 1\n[auth]\ntoken_ttl_seconds = ten\n' >"$tmp/bad.conf"
mkdir "$tmp/bad.conf.d"
printf '[log]\nlevel = loud\n' >"$tmp/bad.conf.d/10-level.conf"
if "$bin" --config "$tmp/bad.conf" --check-config >"$tmp/out" 2>&1; then
	fail "bad config accepted"
fi
grep -q "bad.conf:3.*bogus" "$tmp/out" || fail "unknown key not reported with file:line: $(cat "$tmp/out")"
grep -q "bad.conf:5.*token_ttl_seconds" "$tmp/out" || fail "bad integer not reported: $(cat "$tmp/out")"
echo "PASS: --check-config names file, line and key of each error"

if VIGIL_HTTP_MAX_CONNECTIONS=0 "$bin" --config "$shipped" --check-config >"$tmp/out" 2>&1; then
	fail "out-of-range environment override accepted"
fi
grep -q "max_connections" "$tmp/out" || fail "env error does not name the key: $(cat "$tmp/out")"
echo "PASS: environment overrides are validated"

if env -u CREDENTIALS_DIRECTORY VIGIL_LOG_TARGET=stderr "$bin" --config "$shipped" >"$tmp/out" 2>&1; then
	fail "started without a jwt-key"
fi
grep -q "jwt-key" "$tmp/out" || fail "missing key not named: $(cat "$tmp/out")"
echo "PASS: refuses to start without the jwt-key credential"
