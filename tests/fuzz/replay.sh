#!/bin/sh
# Replay every fuzz target's corpus (tests/fuzz/corpus/<name>/) through its
# replay-<name> binary: part of `make check`, so inputs that once crashed a
# parser keep being run by every build, under ASan/UBSan in the sanitizer
# build. Fails when a target crashes or a corpus is missing or empty.
#
# Run by the test harness, which exports top_srcdir and top_builddir; by hand:
#   top_srcdir=/path/to/src top_builddir=/path/to/build sh tests/fuzz/replay.sh
set -u

FUZZ_TARGETS="json traceparent conf alertmanager amount headers route jwt notify metrics"

srcdir=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
builddir=${top_builddir:-.}

# Make sanitizer findings fatal and readable even if the build recovers.
ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS UBSAN_OPTIONS

failed=""
for name in $FUZZ_TARGETS; do
        corpus="$srcdir/tests/fuzz/corpus/$name"
        replay="$builddir/tests/fuzz/replay-$name"
        if [ ! -d "$corpus" ] || [ -z "$(ls -A "$corpus")" ]; then
                echo "FAIL $name: no seed corpus in $corpus"
                failed="$failed $name"
                continue
        fi
        if [ ! -x "$replay" ]; then
                echo "FAIL $name: $replay is not built"
                failed="$failed $name"
                continue
        fi
        # On failure, show the output from the last input that started
        # (the culprit) on: the sanitizer report and the exit status.
        out=$("$replay" "$corpus" 2>&1)
        rc=$?
        if [ "$rc" -eq 0 ]; then
                echo "PASS $name: $(printf '%s\n' "$out" | tail -n 1)"
        else
                printf '%s\n' "$out" |
                        awk '/^Running: /{tail = ""} {tail = tail $0 "\n"} END{printf "%s", tail}'
                echo "FAIL $name: $replay $corpus exited with status $rc"
                failed="$failed $name"
        fi
done

if [ -n "$failed" ]; then
        echo "corpus replay failed for:$failed"
        exit 1
fi
exit 0
