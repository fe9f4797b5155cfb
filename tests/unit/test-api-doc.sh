#!/bin/sh
# docs/api.md stays the whole public API: every route of authd, paymentd
# and inventoryd (but /stats, which the gateway does not serve) has its
# section, and every error code those daemons, the library's HTTP server
# and the gateway can answer is documented.
set -eu
: "${top_srcdir:=$(dirname "$0")/../..}"
doc=$top_srcdir/docs/api.md
failed=0
fail() { echo "FAIL: $*"; failed=1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for f in authd paymentd inventoryd; do
	grep -o '{"[A-Z]*", "/[^"]*", handle_[a-z_]*}' "$top_srcdir/src/$f/$f-routes.c" |
		sed 's/{"\([A-Z]*\)", "\([^"]*\)".*/\1 \2/'
done | sort -u >"$tmp/routes"
while read -r method path; do
	[ "$path" = /stats ] && continue
	n=$((n + 1))
	grep -q "^### \`$method $path\`" "$doc" || fail "docs/api.md has no section \"### \`$method $path\`\""
done <"$tmp/routes"
[ $n -ge 10 ] || fail "found only $n routes in the sources: the extraction is broken"

{
	cat "$top_srcdir"/src/authd/authd-routes.c "$top_srcdir"/src/paymentd/paymentd-routes.c \
		"$top_srcdir"/src/inventoryd/inventoryd-routes.c "$top_srcdir"/src/lib/http-server*.c \
		"$top_srcdir"/src/lib/auth-client.c | tr -d '\n' |
		grep -o 'http_reply_[a-z]*(req, [0-9]*, *"[a-z_]*"' | sed 's/.*"\([a-z_]*\)"$/\1/'
	cat "$top_srcdir"/src/lib/http-server*.c "$top_srcdir"/src/paymentd/paymentd-routes.c |
		grep -o 'http_reply_unavailable(req, "[a-z_]*"' | sed 's/.*"\([a-z_]*\)"$/\1/'
	sed -n 's/.*\*ret_error_code = "\([a-z_]*\)".*/\1/p' "$top_srcdir/src/lib/json-util.c"
	grep -o '"code":"[a-z_]*"' "$top_srcdir/etc/nginx/vigil/gateway-server.conf" |
		sed 's/"code":"\([a-z_]*\)"/\1/'
} | sort -u >"$tmp/codes"
[ "$(wc -l <"$tmp/codes")" -ge 20 ] || fail "found only $(wc -l <"$tmp/codes") error codes: the extraction is broken"
while read -r code; do
	grep -q "\`$code\`" "$doc" || fail "docs/api.md does not document the error code $code"
done <"$tmp/codes"
[ $failed -eq 0 ] && echo "PASS: docs/api.md documents $n routes and $(wc -l <"$tmp/codes") error codes"
exit $failed
