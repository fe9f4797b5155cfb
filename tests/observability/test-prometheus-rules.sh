#!/bin/sh
# promtool on vigil's Prometheus files: the shipped prometheus.yml (and the
# rule files it loads) is valid, every rule file is valid, and the unit
# tests in etc/prometheus/tests/ prove every alert fires and resolves.
set -u
top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
PROMTOOL=${PROMTOOL:-promtool}
if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
	echo "SKIP: $PROMTOOL not found" >&2
	exit 77
fi
prom=$top_srcdir/etc/prometheus
pass=0
fail=0

run() { # title command...
	title=$1
	shift
	if out=$("$@" 2>&1); then
		echo "PASS $title"
		pass=$((pass + 1))
	else
		echo "FAIL $title"
		echo "$out"
		fail=$((fail + 1))
	fi
}

run "promtool check config prometheus.yml" "$PROMTOOL" check config "$prom/prometheus.yml"
run "promtool check rules rules/*.yml" "$PROMTOOL" check rules "$prom"/rules/*.yml
for t in "$prom"/tests/*.yml; do
	# promtool resolves rule_files relative to the test file.
	run "promtool test rules tests/${t##*/}" "$PROMTOOL" test rules "$t"
done

# Every alerting rule has at least one firing expectation in the tests.
missing=
for a in $(sed -n 's/^ *- alert: *\([A-Za-z0-9]*\).*/\1/p' "$prom"/rules/*.yml | sort -u); do
	grep -q "alertname: $a\$" "$prom"/tests/*.yml || missing="$missing $a"
done
if [ -z "$missing" ]; then
	echo "PASS every alert has a unit test"
	pass=$((pass + 1))
else
	echo "FAIL alerts without a unit test:$missing"
	fail=$((fail + 1))
fi

echo "test-prometheus-rules: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
