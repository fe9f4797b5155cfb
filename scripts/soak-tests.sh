#!/usr/bin/env bash
# Find flaky tests before CI does: run the unit, integration, observability
# and fuzz-replay suites N times in a row while every core is kept busy by
# stress-ng, keep the log of every test that failed, and print a summary.
#
# Usage: scripts/soak-tests.sh [--system | --system-only] [--report DIR]
#                              [--tests LIST] [--build DIR] [--load-workers K] N
#   N               rounds (1..1000)
#   --system        also run tests/system/test-system.py in each round (boots
#                   systemd-nspawn machines: root, and nothing else may be
#                   using the machine's ports)
#   --system-only   run only tests/system/test-system.py in each round
#   --report DIR    where the failing tests' logs go (default
#                   build/soak-report/<UTC time>)
#   --tests LIST    run only these tests (as in TESTS=, e.g. to soak one
#                   flaky test: --tests tests/unit/test-redis.sh)
#   --build DIR     the build directory (default build/soak); two soaks at
#                   once need two
#   --load-workers K  stress-ng CPU workers (default: one per core; 0: no load)
#
# Builds once, out of tree (configured on first use). Each
# round is one `make check TESTS="…"` with the list from `make
# print-soak-tests`. The load is restarted for each round, bounded by time
# (SOAK_ROUND_TIMEOUT seconds, default 3600, also the bound on one round)
# and killed on any exit. A round is green when every test passed (a
# skipped test counts against it: it did not run). Exits 0 when every
# round was green, 1 when one was not, 2 on bad usage or a failed build.
set -uo pipefail
# Read to the end before running: editing the script (e.g. pulling a newer
# one) during a long soak must not change the running one.
{

top=$(cd "$(dirname "$0")/.." && pwd)
prog=$(basename "$0")
build=$top/build/soak
round_timeout=${SOAK_ROUND_TIMEOUT:-3600}
with_system=0
system_only=0
report=
only_tests=
workers=$(nproc)
rounds=

usage() {
	sed -n '6,19p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
die() {
	echo "$prog: $*" >&2
	exit 2
}
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
is_count() { [[ "$1" =~ ^[0-9]+$ ]] && [ "${#1}" -le 4 ]; }

while [ $# -gt 0 ]; do
	case "$1" in
	--system) with_system=1 ;;
	--system-only) system_only=1 ;;
	--report)
		{ [ $# -ge 2 ] && [ -n "$2" ]; } || usage
		report=$(abspath "$2")
		shift
		;;
	--tests)
		{ [ $# -ge 2 ] && [ -n "$2" ]; } || usage
		only_tests=$2
		shift
		;;
	--build)
		{ [ $# -ge 2 ] && [ -n "$2" ]; } || usage
		build=$(abspath "$2")
		shift
		;;
	--load-workers)
		{ [ $# -ge 2 ] && is_count "$2"; } || die "--load-workers needs a count"
		workers=$2
		shift
		;;
	-h | --help) usage ;;
	-*) die "unknown option $1" ;;
	*)
		[ -z "$rounds" ] || die "one round count only"
		rounds=$1
		;;
	esac
	shift
done
[ -n "$rounds" ] || usage
{ is_count "$rounds" && [ "$rounds" -ge 1 ] && [ "$rounds" -le 1000 ]; } ||
	die "N must be a whole number from 1 to 1000, not '$rounds'"
{ is_count "$round_timeout" && [ "$round_timeout" -ge 60 ]; } ||
	die "SOAK_ROUND_TIMEOUT must be at least 60 seconds"

# ---------------------------------------------------------------- the load
load_pid=
stop_load() {
	[ -n "$load_pid" ] || return 0
	# stress-ng leads its own process group (setsid): end it and its
	# workers together, by force when SIGTERM is not enough within 5 s.
	kill -TERM -- "-$load_pid" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 -- "-$load_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL -- "-$load_pid" 2>/dev/null || true
	wait "$load_pid" 2>/dev/null || true
	load_pid=
}
start_load() {
	[ "$workers" -gt 0 ] || return 0
	setsid stress-ng --cpu "$workers" --timeout "${round_timeout}s" --quiet </dev/null >/dev/null 2>&1 &
	load_pid=$!
}
# shellcheck disable=SC2317 # runs from the trap
on_exit() {
	stop_load
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$workers" -gt 0 ] && ! command -v stress-ng >/dev/null; then
	"$top/scripts/install-deps.sh" stress-ng || die "stress-ng is missing and cannot be installed"
fi

# ---------------------------------------------------------------- build once
cd "$top" || exit 2
{ [ -x configure ] && [ -f Makefile.in ]; } || autoreconf -fi || die "autoreconf failed"
mkdir -p "$build" || exit 2
if [ ! -f "$build/Makefile" ]; then
	(cd "$build" && "$top/configure" -q) || die "configure failed"
fi
echo "$prog: building in $build"
make -s -C "$build" -j"$(nproc)" || die "build failed"
make -s -C "$build" -j"$(nproc)" check TESTS= >/dev/null || die "building the check programs failed"

tests=$only_tests
if [ -z "$tests" ] && [ $system_only -eq 0 ]; then
	tests=$(make -s -C "$build" print-soak-tests) || die "make print-soak-tests failed"
fi
if [ $with_system -eq 1 ] || [ $system_only -eq 1 ]; then
	tests="$tests tests/system/test-system.py"
fi
ntests=$(wc -w <<<"$tests")

[ -n "$report" ] || report=$top/build/soak-report/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$report" || die "cannot create $report"
report=$(cd "$report" && pwd)

# ---------------------------------------------------------------- rounds
# One line per round: "round K: P passed, F failed (S s)".
summary=()
failures=() # "round K: test"
failed_rounds=0
for k in $(seq "$rounds"); do
	start_load
	echo "$prog: round $k/$rounds: $ntests tests, $workers stress-ng CPU workers"
	t0=$SECONDS
	touch "$report/.round-$k.start"
	(cd "$build" && timeout --kill-after=30 "$round_timeout" make -j"$(nproc)" check TESTS="$tests") \
		>"$report/round-$k.out" 2>&1
	rc=$?
	stop_load
	secs=$((SECONDS - t0))
	log=$build/test-suite.log
	p=$(sed -n 's/^# PASS: *//p' "$log" 2>/dev/null | head -n1)
	f=$(awk '/^# (FAIL|ERROR|XPASS):/ {n += $3} END {print n + 0}' "$log" 2>/dev/null)
	sk=$(sed -n 's/^# SKIP: *//p' "$log" 2>/dev/null | head -n1)
	cp "$log" "$report/round-$k-test-suite.log" 2>/dev/null || true
	while IFS= read -r trs; do
		# A skipped test did not run: the round proves nothing about it.
		grep -qE '^:test-result: (FAIL|ERROR|XPASS|SKIP)' "$trs" || continue
		name=${trs#"$build"/}
		name=${name%.trs}
		dest=$report/round-$k/$name.log
		mkdir -p "$(dirname "$dest")"
		cp "${trs%.trs}.log" "$dest" 2>/dev/null || true
		failures+=("$k:$name")
	done < <(find "$build/tests" "$build/src" -name '*.trs' -newer "$report/.round-$k.start" 2>/dev/null |
		sort)
	line="round $k: ${p:-0} passed, ${f:-0} failed, ${sk:-0} skipped (${secs}s)"
	if [ $rc -ne 0 ] || [ "${sk:-0}" -ne 0 ]; then
		failed_rounds=$((failed_rounds + 1))
		[ $rc -eq 124 ] && line="$line, timed out after ${round_timeout}s"
		[ "${f:-0}" -eq 0 ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] && line="$line, make check exited $rc"
	fi
	summary+=("$line")
	echo "$prog: $line"
done

# ---------------------------------------------------------------- summary
{
	printf '\n==== soak summary: %d rounds, %d stress-ng CPU workers ====\n' "$rounds" "$workers"
	printf '%s\n' "${summary[@]}"
	for entry in "${failures[@]}"; do
		k=${entry%%:*}
		name=${entry#*:}
		printf '\n---- round %s: %s (last 40 lines of %s) ----\n' "$k" "$name" \
			"$report/round-$k/$name.log"
		tail -n 40 "$report/round-$k/$name.log" 2>/dev/null
	done
	printf '\n%d of %d rounds green; logs in %s\n' "$((rounds - failed_rounds))" "$rounds" "$report"
} | tee "$report/summary.txt"
[ $failed_rounds -eq 0 ]
exit
}
