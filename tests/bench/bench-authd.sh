#!/usr/bin/env bash
# Benchmark vigil-authd with wrk against nginx serving a static response
# (the machine's ceiling), measured in the same run. See docs/benchmarks.md.
#
#   tests/bench/bench-authd.sh [--builddir DIR] [--duration SECONDS]
#                              [--connections N] [--rounds N] [--keep]
#
# It starts PostgreSQL and Redis (scripts/dev-stack.sh), nginx, and two
# vigil-authd processes with the access log off: one with tracing off, one
# recording every request and exporting it over OTLP/HTTP to nginx, all on
# free loopback ports in a temporary directory; registers a user and logs
# in; then runs, one after the other, with `wrk -t2 -cN -dSECONDS --latency`:
#
#   1. nginx GET /static                  the ceiling
#   2. authd GET /health                  the HTTP stack alone
#   3. authd POST /verify                 JWT check + session check
#   4. authd POST /verify during a flood of POST /login (16 connections,
#      yescrypt hashing), both at once
#   5. --rounds rounds (default 3) of POST /verify on both processes, each
#      round off, on, on, off: the cost of tracing is the median of the
#      rounds' throughput ratios
#
# and reads authd's resident memory (VmRSS, VmHWM; RssAnon, RssFile) halfway through the
# /verify run, after the flood, and halfway through the first tracing-on
# run. It prints
# a markdown report to paste into docs/benchmarks.md. It reports; it never
# fails on the figures. It fails (non-zero) only when the set-up does or a
# run serves errors, and everything it started is stopped on any exit.
set -euo pipefail

prog=${0##*/}
srcdir=$(cd "$(dirname "$0")/../.." && pwd)
benchdir="$srcdir/tests/bench"
# shellcheck source=tests/bench/bench-lib.sh
. "$benchdir/bench-lib.sh"

builddir=${top_builddir:-.}
duration=10
connections=32
rounds=3
keep=no
flood_connections=16
sample_ratio_on=1

usage() {
        echo "usage: $prog [--builddir DIR] [--duration SECONDS] [--connections N] [--rounds N] [--keep]" >&2
        exit 2
}

BENCH_OPTIONS="rounds"
bench_parse "$@"

bench_daemon_binary authd >/dev/null
for tool in wrk nginx python3 curl timeout; do
        command -v "$tool" >/dev/null || die "$tool not found (Debian packages: wrk nginx-light python3 curl coreutils)"
done

# The whole run is bounded: four wrk windows and four per round (and two
# short warm-ups) plus set-up and tear-down.
args=(--builddir "$builddir" --duration "$duration" --connections "$connections"
        --rounds "$rounds")
[ "$keep" = no ] || args+=(--keep)
bench_under_timeout $(((4 + 4 * rounds) * (duration + 5) + 300)) "${args[@]}"

bench_setup authd flood_pid authd_pid tracing_pid

# ------------------------------------------------------------------ servers

bench_start_stack postgres redis
bench_start_nginx
# nginx is also the OTLP collector of the tracing-on process: it takes any
# POST /v1/traces without parsing it, so the sink costs the machine as
# little as it can, and logs each export's size (see nginx-static.conf.in).
sink_log="$tmp/nginx/otlp.log"

auth_credentials=$(bench_credentials auth)
auth_url="http://127.0.0.1:$(free_port)"
tracing_url="http://127.0.0.1:$(free_port)"

# start_authd NAME PIDVAR URL OTLP_ENDPOINT SAMPLE_RATIO: start an authd
# listening at URL, its pid in PIDVAR, and wait until it is ready (schema
# migrated, PostgreSQL and Redis answering). Both share the database, Redis
# and the JWT key, so a token works on either.
start_authd() {
        bench_start_daemon authd "$1" "$2" "$3" "$auth_credentials" \
                VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_AUTH" \
                VIGIL_TRACING_OTLP_ENDPOINT="$4" \
                VIGIL_TRACING_SAMPLE_RATIO="$5"
}

TRACING_RATIOS=()
note "starting vigil-authd on $auth_url (tracing off, access log off)"
start_authd authd authd_pid "$auth_url" "" 0
note "starting vigil-authd on $tracing_url (sample ratio $sample_ratio_on," \
        "OTLP to nginx, access log off)"
start_authd authd-tracing tracing_pid "$tracing_url" \
        "http://127.0.0.1:$nginx_port/v1/traces" "$sample_ratio_on"

# ------------------------------------------------------------- user, token

export BENCH_USERNAME BENCH_PASSWORD BENCH_TOKEN
BENCH_USERNAME="bench_$(od -An -tx1 -N6 /dev/urandom | tr -d ' \n')"
BENCH_PASSWORD=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
credentials="{\"username\":\"$BENCH_USERNAME\",\"password\":\"$BENCH_PASSWORD\"}"

status=$(http_status -X POST -H 'Content-Type: application/json' --data "$credentials" \
        "$auth_url/register")
[ "$status" = 201 ] || die "POST /register answered $status, not 201"

# login: sets BENCH_TOKEN from a fresh POST /login.
login() {
        local body
        body=$(curl -sf --max-time 10 -X POST -H 'Content-Type: application/json' \
                --data "$credentials" "$auth_url/login") || die "POST /login failed"
        BENCH_TOKEN=$(printf '%s' "$body" |
                python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])') ||
                die "POST /login answered no token: $body"
        status=$(http_status -X POST -H "Authorization: Bearer $BENCH_TOKEN" "$auth_url/verify")
        [ "$status" = 200 ] || die "POST /verify with a fresh token answered $status, not 200"
}
login

# ---------------------------------------------------------------------- wrk

# A short unrecorded run first, so a fresh process's pools, caches and page
# faults do not count against the first measured row.
warmup_seconds=$((duration < 10 ? 2 : 3))
wrk_warmup() {
        note "warming up ($1, ${warmup_seconds}s, not recorded)"
        wrk_run "warmup-$1" $threads "$connections" "$warmup_seconds" "$2" "${3:-}"
}

note "each run: wrk -t$threads -c$connections -d${duration}s --latency"

note "1/5 nginx GET /static (ceiling)"
wrk_run nginx $threads "$connections" "$duration" "http://127.0.0.1:$nginx_port/static"
record nginx

wrk_warmup verify "$auth_url/verify" post-bearer.lua
note "2/5 authd GET /health"
wrk_run health $threads "$connections" "$duration" "$auth_url/health"
record health

note "3/5 authd POST /verify"
# Memory is read halfway through: resident under load, and the peak so far.
wrk_start verify $threads "$connections" "$duration" "$auth_url/verify" post-bearer.lua
wrk_pid=$!
sleep "$(awk -v d="$duration" 'BEGIN {print d / 2}')"
# shellcheck disable=SC2154 # authd_pid and tracing_pid are set by start_authd
read -r RSS_VERIFY_MB HWM_VERIFY_MB < <(read_memory "$authd_pid")
read -r ANON_VERIFY_MB FILE_VERIFY_MB < <(read_anon_memory "$authd_pid")
wait "$wrk_pid" || die "wrk failed for verify: $(tail -n 3 "$tmp/verify.txt")"
wrk_pid=
record verify
note "authd memory under /verify load: VmRSS $RSS_VERIFY_MB MiB, VmHWM $HWM_VERIFY_MB MiB," \
        "RssAnon $ANON_VERIFY_MB MiB, RssFile $FILE_VERIFY_MB MiB"

note "4/5 authd POST /verify during a POST /login flood ($flood_connections connections)"
# The flood starts first and outlasts the measurement on both sides.
wrk_start login-flood 1 "$flood_connections" $((duration + 4)) "$auth_url/login" post-login.lua
flood_pid=$!
sleep 2
wrk_run verify-flood $threads "$connections" "$duration" "$auth_url/verify" post-bearer.lua
wait "$flood_pid" || die "wrk failed for the login flood: $(tail -n 3 "$tmp/login-flood.txt")"
flood_pid=
record verify-flood
record login-flood

read -r RSS_OFF_MB HWM_OFF_MB < <(read_memory "$authd_pid")
note "authd memory after load: VmRSS $RSS_OFF_MB MiB, VmHWM $HWM_OFF_MB MiB"

# The cost of tracing, as the median of rounds that each measure the two
# processes back to back, so that both see the same machine, in the order
# off, on, on, off: a drift during the round, and whatever favours the
# first or the second of two runs, fall on both alike. (Rounds of two runs
# in alternating order did not cancel it: the process measured first was
# 3 to 4 % slower, and an odd number of rounds favoured one side.)
note "5/5 authd POST /verify, tracing off and on, $rounds rounds"
wrk_warmup verify-tracing "$tracing_url/verify" post-bearer.lua
# verify_run NAME URL [PID]: one /verify run, reading PID's memory halfway.
verify_run() {
        wrk_start "$1" $threads "$connections" "$duration" "$2" post-bearer.lua
        wrk_pid=$!
        if [ -n "${3:-}" ]; then
                sleep "$(awk -v d="$duration" 'BEGIN {print d / 2}')"
                read -r RSS_ON_MB HWM_ON_MB < <(read_memory "$3")
                read -r ANON_ON_MB FILE_ON_MB < <(read_anon_memory "$3")
        fi
        wait "$wrk_pid" || die "wrk failed for $1: $(tail -n 3 "$tmp/$1.txt")"
        wrk_pid=
        record "$1"
}
# add A B: A + B.
add() {
        awk -v a="$1" -v b="$2" 'BEGIN {print a + b}'
}
# CPU time of each process (and of nginx, the OTLP sink) over the rounds.
ticks_off=$(proc_ticks "$authd_pid")
# shellcheck disable=SC2154 # set by start_authd
ticks_on=$(proc_ticks "$tracing_pid")
ticks_sink=$(proc_ticks "$nginx_pid")
for i in $(seq "$rounds"); do
        memory_pid=
        # shellcheck disable=SC2154
        [ "$i" != 1 ] || memory_pid=$tracing_pid
        verify_run "verify-off-$i-a" "$auth_url/verify"
        verify_run "verify-on-$i-a" "$tracing_url/verify" "$memory_pid"
        verify_run "verify-on-$i-b" "$tracing_url/verify"
        verify_run "verify-off-$i-b" "$auth_url/verify"
        TRACING_RATIOS+=("$(fmt_ratio \
                "$(add "${ROW_RPS[verify-on-$i-a]}" "${ROW_RPS[verify-on-$i-b]}")" \
                "$(add "${ROW_RPS[verify-off-$i-a]}" "${ROW_RPS[verify-off-$i-b]}")")")
done
# Give the exporter's batch timer a moment to flush the last spans.
sleep 2
ticks_off=$(($(proc_ticks "$authd_pid") - ticks_off))
ticks_on=$(($(proc_ticks "$tracing_pid") - ticks_on))
ticks_sink=$(($(proc_ticks "$nginx_pid") - ticks_sink))
tracing_metrics=$(curl -sf --max-time 5 "$tracing_url/metrics") ||
        die "the tracing-on authd does not answer /metrics"
SPANS_EXPORTED=$(printf '%s\n' "$tracing_metrics" |
        awk '$1 == "vigil_trace_spans_exported_total" {printf "%.0f", $2}')
SPANS_DROPPED=$(printf '%s\n' "$tracing_metrics" |
        awk '$1 == "vigil_trace_spans_dropped_total" {printf "%.0f", $2}')
read -r SINK_REQUESTS SINK_BYTES < <(awk '$2 == 200 {n++; b += $1} END {print n + 0, b + 0}' \
        "$sink_log" 2>/dev/null || echo 0 0)
TRACED_REQUESTS=0 UNTRACED_REQUESTS=0
for i in $(seq "$rounds"); do
        TRACED_REQUESTS=$((TRACED_REQUESTS + ROW_N[verify-on-$i-a] + ROW_N[verify-on-$i-b]))
        UNTRACED_REQUESTS=$((UNTRACED_REQUESTS + ROW_N[verify-off-$i-a] + ROW_N[verify-off-$i-b]))
done
# usec_per TICKS REQUESTS: CPU microseconds per request.
usec_per() {
        awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" \
                'BEGIN {if (n > 0) printf "%.2f\n", t * 1e6 / hz / n; else print "n/a"}'
}
CPU_OFF=$(usec_per "$ticks_off" "$UNTRACED_REQUESTS")
CPU_ON=$(usec_per "$ticks_on" "$TRACED_REQUESTS")
CPU_SINK=$(usec_per "$ticks_sink" "$TRACED_REQUESTS")

# ------------------------------------------------------------------- report

declare -A LABEL=(
        [nginx]="nginx GET /static (ceiling)"
        [health]="authd GET /health"
        [verify]="authd POST /verify"
        [verify-flood]="authd POST /verify, during login flood"
        [login-flood]="authd POST /login (the flood, $flood_connections conns)"
)

# Errors while serving /health or /verify mean something is broken; the
# login flood may legitimately be shed (bounded hashing concurrency).
serving_errors=0
for row in "${ROWS[@]}"; do
        [ "$row" = login-flood ] || serving_errors=$((serving_errors + ${ROW_ERR[$row]}))
done

{
        echo
        echo "### vigil-authd, $(date -u +%Y-%m-%d) — $(nproc) CPUs, $(uname -sr)"
        echo
        echo "wrk -t$threads -c$connections -d${duration}s --latency, one run after the other;"
        echo "wrk, nginx, authd, PostgreSQL and Redis share the machine."
        echo
        echo "| test | requests/s | p50 | p99 | vs nginx | errors |"
        echo "|------|-----------:|----:|----:|---------:|-------:|"
        for row in "${ROWS[@]}"; do
                [ -n "${LABEL[$row]:-}" ] || continue
                ratio=$(fmt_ratio "${ROW_RPS[$row]}" "${ROW_RPS[nginx]}")
                [ "$row" != login-flood ] || ratio="—"
                printf '| %s | %s | %s | %s | %s | %s |\n' "${LABEL[$row]}" \
                        "$(fmt_int "${ROW_RPS[$row]}")" "$(fmt_ms "${ROW_P50[$row]}")" \
                        "$(fmt_ms "${ROW_P99[$row]}")" "$ratio" "${ROW_ERR[$row]}"
        done
        echo
        echo "Tracing: POST /verify on the tracing-off process and on the one that records"
        echo "every request (sample ratio $sample_ratio_on) and exports it to nginx, back to back"
        echo "in the order off, on, on, off; the ratio is of the sums:"
        echo
        echo "| round | off: requests/s | p99 | on: requests/s | p99 | on / off |"
        echo "|------:|----------------:|----:|---------------:|----:|---------:|"
        for i in $(seq "$rounds"); do
                printf '| %s | %s, %s | %s, %s | %s, %s | %s, %s | %s |\n' "$i" \
                        "$(fmt_int "${ROW_RPS[verify-off-$i-a]}")" \
                        "$(fmt_int "${ROW_RPS[verify-off-$i-b]}")" \
                        "$(fmt_ms "${ROW_P99[verify-off-$i-a]}")" \
                        "$(fmt_ms "${ROW_P99[verify-off-$i-b]}")" \
                        "$(fmt_int "${ROW_RPS[verify-on-$i-a]}")" \
                        "$(fmt_int "${ROW_RPS[verify-on-$i-b]}")" \
                        "$(fmt_ms "${ROW_P99[verify-on-$i-a]}")" \
                        "$(fmt_ms "${ROW_P99[verify-on-$i-b]}")" "${TRACING_RATIOS[$((i - 1))]}"
        done
        echo
        echo "- /verify p99 during the login flood: $(fmt_ms "${ROW_P99[verify-flood]}")" \
                "vs $(fmt_ms "${ROW_P99[verify]}") unloaded" \
                "(×$(fmt_ratio "${ROW_P99[verify-flood]}" "${ROW_P99[verify]}"));" \
                "throughput ×$(fmt_ratio "${ROW_RPS[verify-flood]}" "${ROW_RPS[verify]}")."
        echo "- tracing cost on /verify: throughput ×$(median "${TRACING_RATIOS[@]}")" \
                "(the median of the rounds); $SPANS_EXPORTED spans exported and" \
                "$SPANS_DROPPED dropped for $(fmt_int "$TRACED_REQUESTS") traced requests;" \
                "nginx took $SINK_REQUESTS OTLP export requests" \
                "($(awk -v b="$SINK_BYTES" 'BEGIN {printf "%.1f", b / 1048576}') MiB)."
        echo "- CPU time per /verify request over the rounds (from /proc): tracing off" \
                "$CPU_OFF µs, tracing on $CPU_ON µs (×$(fmt_ratio "$CPU_ON" "$CPU_OFF")), and" \
                "$CPU_SINK µs in nginx taking the exports."
        echo "- authd resident memory under /verify load: VmRSS $RSS_VERIFY_MB MiB" \
                "(peak so far, VmHWM, $HWM_VERIFY_MB MiB); after the login flood: VmRSS" \
                "$RSS_OFF_MB MiB, VmHWM $HWM_OFF_MB MiB (each yescrypt hash in flight" \
                "holds its 16 MiB working set); tracing on, under load: VmRSS $RSS_ON_MB MiB," \
                "VmHWM $HWM_ON_MB MiB."
        echo "- of VmRSS under load, the process's own pages (RssAnon) and those of the" \
                "files it maps, mostly shared libraries (RssFile): tracing off $ANON_VERIFY_MB" \
                "+ $FILE_VERIFY_MB MiB, tracing on $ANON_ON_MB + $FILE_ON_MB MiB."
        echo "- $SCHEDULER_NOTE."
} | tee "$tmp/report.md"

finished=yes
if [ "$serving_errors" -gt 0 ]; then
        note "$serving_errors requests failed (non-2xx responses or socket errors): the figures are suspect"
        keep=yes
        exit 1
fi
