#!/usr/bin/env bash
# Run every test of vigil (installing what they need first): the build with gcc (warnings are errors), the whole
# `make check` (unit, integration against real servers, fuzz corpus replay),
# the unit suite again under ASan/UBSan, a clang build, a short libFuzzer run
# of every target, and `make distcheck` (with the unit suite). Ends with "N passed, N failed".
#
# Usage: scripts/test.sh [--quick]   (--quick: only the gcc build and make check)
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
quick=0
[ "${1:-}" = --quick ] && quick=1
jobs=$(nproc)
passed=0
failed=0
failed_names=()

# Sum the Automake summary of one `make check` run into the totals.
count_suite() { # builddir
	local log=$1/test-suite.log p f
	[ -f "$log" ] || return 0
	p=$(sed -n 's/^# PASS: *//p' "$log" | head -n1)
	f=$(awk '/^# (FAIL|ERROR|XPASS):/ {n += $3} END {print n + 0}' "$log")
	passed=$((passed + ${p:-0}))
	failed=$((failed + ${f:-0}))
}

step() { # name command…
	local name=$1
	shift
	printf '\n=== %s ===\n' "$name"
	if "$@"; then
		return 0
	fi
	failed_names+=("$name")
	return 1
}

build() { # dir configure-args…
	local dir=$1
	shift
	rm -rf "$dir" && mkdir -p "$dir" &&
		(cd "$dir" && "$top/configure" -q "$@" && make -s -j"$jobs")
}

suite() { # dir make-args…
	local dir=$1 rc
	shift
	(cd "$dir" && make -j"$jobs" check "$@")
	rc=$?
	count_suite "$dir"
	if [ $rc -ne 0 ]; then
		for l in "$dir"/tests/*/*.log; do
			grep -qE '^:test-result: (FAIL|ERROR)' "${l%.log}.trs" 2>/dev/null || continue
			printf '\n--- %s ---\n' "$l"
			tail -n 60 "$l"
		done
	fi
	return $rc
}

"$top/scripts/install-deps.sh" || exit 1
[ -x configure ] || autoreconf -fi || exit 1

step "gcc build" build build/gcc && step "make check" suite build/gcc
if [ $quick -eq 0 ]; then
	step "asan+ubsan build" build build/asan --enable-sanitizers &&
		step "unit suite under asan+ubsan" suite build/asan \
			TESTS="$(make -s -C build/gcc print-unit-tests)"
	step "clang build" build build/clang CC=clang
	step "fuzzing" scripts/fuzz.sh 15
	# The tarball must build and pass the unit suite; the integration tests
	# already ran above from the same sources.
	step "distcheck" bash -c "cd build/gcc && make -s -j$jobs distcheck TESTS=\"\$(make -s print-unit-tests)\""
fi

printf '\n'
if [ ${#failed_names[@]} -gt 0 ]; then
	printf 'Failed steps: %s\n' "${failed_names[*]}"
	failed=$((failed + ${#failed_names[@]}))
fi
printf '%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
