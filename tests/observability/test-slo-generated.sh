#!/bin/sh
# The committed SLO rule files are exactly what scripts/slo-gen.py makes of
# slo/slos.yml: regenerate into a temporary directory and compare (a file
# missing, stale or different fails). Also: a scaled (test) generation
# changes only windows and durations, and a bad spec is refused.
set -u
top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
PYTHON3=${PYTHON3:-python3}
if ! "$PYTHON3" -c 'import yaml' 2>/dev/null; then
	echo "SKIP: python3-yaml is not installed" >&2
	exit 77
fi
gen=$top_srcdir/scripts/slo-gen.py
rules=$top_srcdir/etc/prometheus/rules
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok() { echo "PASS $1"; pass=$((pass + 1)); }
ko() { echo "FAIL $1"; fail=$((fail + 1)); }

if "$PYTHON3" "$gen" --out-dir "$tmp/gen"; then
	mkdir "$tmp/committed"
	for f in "$rules"/slo-*.yml; do
		[ -e "$f" ] && cp "$f" "$tmp/committed/"
	done
	if diff -ru "$tmp/committed" "$tmp/gen"; then
		ok "committed etc/prometheus/rules/slo-*.yml match slo/slos.yml"
	else
		ko "committed SLO rules differ from the generator's output: run scripts/slo-gen.py"
	fi
else
	ko "slo-gen.py failed on slo/slos.yml"
fi

if "$PYTHON3" "$gen" --check >/dev/null; then
	ok "slo-gen.py --check agrees"
else
	ko "slo-gen.py --check reports differences"
fi

if "$PYTHON3" "$gen" --windows-scale 1/60 --out-dir "$tmp/scaled" &&
	grep -q 'rate(vigil_http_requests_total{[^}]*}\[5s\])' "$tmp/scaled/slo-auth-availability.yml" &&
	grep -q 'for: 2s' "$tmp/scaled/slo-auth-availability.yml" &&
	grep -q 'record: slo:sli_error:ratio_rate5m' "$tmp/scaled/slo-auth-availability.yml" &&
	grep -q 'TEST ONLY' "$tmp/scaled/slo-auth-availability.yml"; then
	ok "--windows-scale 1/60 scales windows and durations, keeps record names"
else
	ko "--windows-scale output"
fi

cat >"$tmp/bad.yml" <<'SPEC'
slos:
  - name: x
    service: auth
    objective: 100
    sli: {availability: {}}
SPEC
if "$PYTHON3" "$gen" --spec "$tmp/bad.yml" --out-dir "$tmp/bad" 2>"$tmp/err"; then
	ko "an objective of 100 % was accepted"
elif grep -q objective "$tmp/err"; then
	ok "a bad spec is refused with a message naming the key"
else
	ko "bad spec message: $(cat "$tmp/err")"
fi

echo "test-slo-generated: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
