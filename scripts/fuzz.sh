#!/bin/sh
# Run vigil's libFuzzer targets for a bounded time each.
#
#   scripts/fuzz.sh [SECONDS [BUILDDIR]]
#
# SECONDS   time per target (default 30); CI runs `scripts/fuzz.sh 15`
#           (ten targets: two and a half minutes of fuzzing).
# BUILDDIR  build directory (default ./build-fuzz), created and configured
#           on first use, reused afterwards.
#
# The build is separate from the normal one because the whole tree must be
# compiled for fuzzing: configure runs with
#
#   CC=clang CFLAGS="-fsanitize=fuzzer-no-link,address,undefined
#                    -fno-sanitize-recover=all -g -O1" --enable-fuzzing
#
# so libvigil.a carries libFuzzer's coverage instrumentation and the
# sanitizers, and tests/fuzz/local.mk adds -fsanitize=fuzzer (libFuzzer's
# main) when linking tests/fuzz/fuzz-<name>. Needs clang and libFuzzer
# (Debian: clang, libclang-rt-14-dev).
#
# Each target runs over a copy of its seed corpus, BUILDDIR/fuzz/<name>/corpus
# (seeded from tests/fuzz/corpus/<name>/ and kept between runs, so coverage
# accumulates); nothing is written into the source tree. A crash, leak,
# timeout or out-of-memory input is kept in BUILDDIR/fuzz/<name>/artifacts/,
# its path printed, and the script exits 1. To keep a finding as a regression
# test, fix the bug and copy the file into tests/fuzz/corpus/<name>/: every
# `make check` replays that directory.
#
# Environment: FUZZ_TARGETS (default: every target, "json traceparent conf
# alertmanager amount headers route jwt notify metrics"),
# FUZZ_RSS_LIMIT_MB (default 2048), FUZZ_JOBS for make (default: CPUs).
set -eu

seconds=${1:-30}
builddir=${2:-build-fuzz}
targets=${FUZZ_TARGETS:-json traceparent conf alertmanager amount headers route jwt notify metrics}
rss_limit_mb=${FUZZ_RSS_LIMIT_MB:-2048}
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}

case $seconds in
'' | *[!0-9]*)
        echo "usage: $0 [SECONDS [BUILDDIR]]" >&2
        exit 2
        ;;
esac
if [ "$seconds" -lt 1 ]; then
        echo "$0: SECONDS must be at least 1" >&2
        exit 2
fi

srcdir=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$srcdir/configure" ]; then
        echo "$0: $srcdir/configure is missing: run 'autoreconf -fi' there first" >&2
        exit 1
fi
if ! command -v clang >/dev/null 2>&1; then
        echo "$0: clang not found: install the Debian packages clang and libclang-rt-14-dev" >&2
        exit 1
fi

mkdir -p "$builddir"
builddir=$(cd "$builddir" && pwd)
if [ "$builddir" = "$srcdir" ]; then
        echo "$0: BUILDDIR must not be the source directory" >&2
        exit 2
fi

cd "$builddir"
if [ ! -f config.status ] || ! ./config.status --config | grep -q -- '--enable-fuzzing'; then
        echo "== configuring a fuzzing build in $builddir"
        "$srcdir/configure" -q --enable-fuzzing CC=clang \
                CFLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"
fi

binaries=""
for name in $targets; do
        binaries="$binaries tests/fuzz/fuzz-$name"
done
echo "== building$binaries (log: $builddir/fuzz-build.log)"
# shellcheck disable=SC2086 # a list of make targets
if ! make -j"$jobs" $binaries >"$builddir/fuzz-build.log" 2>&1; then
        tail -n 40 "$builddir/fuzz-build.log" >&2
        echo "$0: the build failed" >&2
        exit 1
fi

# Findings must stop the target: UBSan too (it is built not to recover).
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export UBSAN_OPTIONS

failed=""
for name in $targets; do
        out="$builddir/fuzz/$name"
        seeds="$srcdir/tests/fuzz/corpus/$name"
        mkdir -p "$out/corpus" "$out/artifacts"
        if [ -d "$seeds" ]; then
                cp -R "$seeds/." "$out/corpus/"
        fi

        set -- -max_total_time="$seconds" -rss_limit_mb="$rss_limit_mb" -timeout=10 \
                -artifact_prefix="$out/artifacts/" -print_final_stats=1
        if [ -f "$srcdir/tests/fuzz/$name.dict" ]; then
                set -- "$@" -dict="$srcdir/tests/fuzz/$name.dict"
        fi

        echo "== fuzzing $name for ${seconds}s (corpus $out/corpus, log $out/fuzz.log)"
        touch "$out/.started"
        # libFuzzer stops itself after max_total_time; the outer timeout only
        # bounds a target that hangs where libFuzzer cannot interrupt it.
        rc=0
        timeout -k 10 $((seconds + 120)) "$builddir/tests/fuzz/fuzz-$name" "$@" "$out/corpus" \
                >"$out/fuzz.log" 2>&1 || rc=$?
        grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done [0-9]+ runs)' \
                "$out/fuzz.log" | sed 's/^/   /' || true

        findings=$(find "$out/artifacts" -type f -newer "$out/.started" | sort)
        if [ "$rc" -ne 0 ] || [ -n "$findings" ]; then
                echo "!! $name: fuzzer exited with status $rc; the report (full: $out/fuzz.log):"
                awk '!shown && /ERROR: |runtime error: |==WARNING: / {shown = 1}
                     shown && n < 25 {print; n++; next}
                     /^SUMMARY: / && n >= 25 {print}' "$out/fuzz.log" | sed 's/^/   /'
                echo "!! $name: findings kept in $out/artifacts/:"
                printf '%s\n' "${findings:-(none: see the log)}" | sed 's/^/   /'
                echo "!! reproduce with: $builddir/tests/fuzz/fuzz-$name FILE" \
                        "(or $builddir/tests/fuzz/replay-$name FILE after 'make tests/fuzz/replay-$name')"
                failed="$failed $name"
        fi
done

if [ -n "$failed" ]; then
        echo "== FAILED:$failed"
        exit 1
fi
echo "== no findings in$binaries (${seconds}s each)"
