#!/usr/bin/env bash
# Benchmark vigil-authd with wrk against nginx serving a static response
# (the machine's ceiling), measured in the same run. See docs/benchmarks.md.
#
#   tests/bench/bench-authd.sh [--builddir DIR] [--duration SECONDS]
#                              [--connections N] [--keep]
#
# It starts PostgreSQL and Redis (scripts/dev-stack.sh), vigil-authd with
# tracing and the access log off, and nginx, all on free loopback ports in a
# temporary directory; registers a user and logs in; then runs, one after
# the other, with `wrk -t2 -cN -dSECONDS --latency`:
#
#   1. nginx GET /static                  the ceiling
#   2. authd GET /health                  the HTTP stack alone
#   3. authd POST /verify                 JWT check + Redis session lookup
#   4. authd POST /verify during a flood of POST /login (16 connections,
#      yescrypt hashing), both at once
#   5. authd POST /verify with tracing on (sample ratio 1) exporting to a
#      local OTLP sink
#
# and reads authd's resident memory (VmRSS, VmHWM) halfway through the
# /verify run and after the others. It prints
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
keep=no
flood_connections=16
sample_ratio_on=1

usage() {
        echo "usage: $prog [--builddir DIR] [--duration SECONDS] [--connections N] [--keep]" >&2
        exit 2
}

while [ $# -gt 0 ]; do
        case $1 in
        --builddir) [ $# -ge 2 ] || usage; builddir=$2; shift 2 ;;
        --builddir=*) builddir=${1#*=}; shift ;;
        --duration) [ $# -ge 2 ] || usage; duration=$2; shift 2 ;;
        --duration=*) duration=${1#*=}; shift ;;
        --connections) [ $# -ge 2 ] || usage; connections=$2; shift 2 ;;
        --connections=*) connections=${1#*=}; shift ;;
        --keep) keep=yes; shift ;;
        -h | --help) usage ;;
        *) usage ;;
        esac
done
bench_check_options

authd="$builddir/src/authd/vigil-authd"
[ -x "$authd" ] || die "$authd not found: build it, or pass --builddir"
authd=$(cd "$(dirname "$authd")" && pwd)/vigil-authd
for tool in wrk nginx python3 curl timeout; do
        command -v "$tool" >/dev/null || die "$tool not found (Debian packages: wrk nginx-light python3 curl coreutils)"
done
if grep -qa __asan_init "$authd"; then
        note "warning: $authd is built with sanitizers; its figures are not representative"
fi

# The whole run is bounded: six wrk windows (and two short warm-ups) plus
# set-up and tear-down.
args=(--builddir "$builddir" --duration "$duration" --connections "$connections")
[ "$keep" = no ] || args+=(--keep)
bench_under_timeout $((6 * (duration + 5) + 300)) "${args[@]}"

bench_setup authd flood_pid authd_pid sink_pid

# Ready, or dead (so a crash is not waited out).
authd_ready_or_dead() {
        answers_200 "$auth_url/ready" || ! kill -0 "$authd_pid" 2>/dev/null
}

# ------------------------------------------------------------------ servers

bench_start_stack postgres redis

mkdir -p "$tmp/credentials"
chmod 700 "$tmp/credentials"
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp/credentials/jwt-key"
cp "$VIGIL_DEV_PG_PASSWORD_FILE_AUTH" "$tmp/credentials/postgres-password"
: >"$tmp/authd.conf"
auth_port=$(free_port)
auth_url="http://127.0.0.1:$auth_port"

# start_authd LOGNAME OTLP_ENDPOINT SAMPLE_RATIO: start authd and wait until
# it is ready (schema migrated, PostgreSQL and Redis answering).
start_authd() {
        local log="$tmp/$1.log"
        env -u JOURNAL_STREAM -u NOTIFY_SOCKET -u LISTEN_FDS -u LISTEN_PID \
                VIGIL_HTTP_LISTEN="127.0.0.1:$auth_port" \
                VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_AUTH" \
                VIGIL_REDIS_ADDRESS="$VIGIL_REDIS_ADDRESS" \
                VIGIL_TRACING_OTLP_ENDPOINT="$2" \
                VIGIL_TRACING_SAMPLE_RATIO="$3" \
                VIGIL_LOG_LEVEL=warning \
                VIGIL_HTTP_ACCESS_LOG=false \
                CREDENTIALS_DIRECTORY="$tmp/credentials" \
                "$authd" --config "$tmp/authd.conf" </dev/null >"$log" 2>&1 &
        authd_pid=$!
        wait_for 60 authd_ready_or_dead ||
                die "authd is not ready after 60s"
        kill -0 "$authd_pid" 2>/dev/null || die "authd exited during start-up"
}

restart_authd() {
        stop_pid "$authd_pid"
        wait "$authd_pid" 2>/dev/null || true
        authd_pid=
        start_authd "$@"
}

note "starting vigil-authd on $auth_url (tracing off, access log off)"
start_authd authd "" 0

bench_start_nginx

# A minimal OTLP/HTTP collector: answers 200 to POST /v1/traces and counts
# what it received (GET /stats), so the tracing run proves spans went out.
sink_port=$(free_port)
cat >"$tmp/otlp-sink.py" <<'EOF'
import http.server, json, sys, threading

MAX_BODY = 64 * 1024 * 1024
lock = threading.Lock()
stats = {"requests": 0, "bytes": 0}

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, code, body=b"", ctype="application/x-protobuf"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            self.reply(413)
            return
        self.rfile.read(length)
        if self.path != "/v1/traces":
            self.reply(404)
            return
        with lock:
            stats["requests"] += 1
            stats["bytes"] += length
        self.reply(200)

    def do_GET(self):
        with lock:
            body = json.dumps(stats).encode()
        self.reply(200, body, "application/json")

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
python3 "$tmp/otlp-sink.py" "$sink_port" </dev/null >"$tmp/sink.log" 2>&1 &
# shellcheck disable=SC2034 # stopped through BENCH_PIDS
sink_pid=$!
wait_for 20 answers_200 "http://127.0.0.1:$sink_port/stats" ||
        die "the OTLP sink does not answer"

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
read -r RSS_VERIFY_MB HWM_VERIFY_MB < <(read_memory "$authd_pid")
wait "$wrk_pid" || die "wrk failed for verify: $(tail -n 3 "$tmp/verify.txt")"
wrk_pid=
record verify
note "authd memory under /verify load: VmRSS $RSS_VERIFY_MB MiB, VmHWM $HWM_VERIFY_MB MiB"

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

note "5/5 authd POST /verify with tracing on (sample ratio $sample_ratio_on, OTLP to 127.0.0.1:$sink_port)"
restart_authd authd-tracing "http://127.0.0.1:$sink_port/v1/traces" "$sample_ratio_on"
login
wrk_warmup verify-tracing "$auth_url/verify" post-bearer.lua
wrk_run verify-tracing $threads "$connections" "$duration" "$auth_url/verify" post-bearer.lua
record verify-tracing
# Give the exporter's batch timer a moment to flush the last spans.
sleep 2
read -r RSS_ON_MB HWM_ON_MB < <(read_memory "$authd_pid")
sink_stats=$(curl -sf --max-time 5 "http://127.0.0.1:$sink_port/stats" || echo '{}')
read -r SINK_REQUESTS SINK_BYTES < <(printf '%s' "$sink_stats" | python3 -c \
        'import json,sys;d=json.load(sys.stdin);print(d.get("requests",0),d.get("bytes",0))')

# ------------------------------------------------------------------- report

declare -A LABEL=(
        [nginx]="nginx GET /static (ceiling)"
        [health]="authd GET /health"
        [verify]="authd POST /verify"
        [verify-flood]="authd POST /verify, during login flood"
        [login-flood]="authd POST /login (the flood, $flood_connections conns)"
        [verify-tracing]="authd POST /verify, tracing on (ratio $sample_ratio_on)"
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
                ratio=$(fmt_ratio "${ROW_RPS[$row]}" "${ROW_RPS[nginx]}")
                [ "$row" != login-flood ] || ratio="—"
                printf '| %s | %s | %s | %s | %s | %s |\n' "${LABEL[$row]}" \
                        "$(fmt_int "${ROW_RPS[$row]}")" "$(fmt_ms "${ROW_P50[$row]}")" \
                        "$(fmt_ms "${ROW_P99[$row]}")" "$ratio" "${ROW_ERR[$row]}"
        done
        echo
        echo "- /verify p99 during the login flood: $(fmt_ms "${ROW_P99[verify-flood]}")" \
                "vs $(fmt_ms "${ROW_P99[verify]}") unloaded" \
                "(×$(fmt_ratio "${ROW_P99[verify-flood]}" "${ROW_P99[verify]}"));" \
                "throughput ×$(fmt_ratio "${ROW_RPS[verify-flood]}" "${ROW_RPS[verify]}")."
        echo "- tracing cost on /verify: throughput" \
                "×$(fmt_ratio "${ROW_RPS[verify-tracing]}" "${ROW_RPS[verify]}")," \
                "p99 $(fmt_ms "${ROW_P99[verify-tracing]}") vs $(fmt_ms "${ROW_P99[verify]}");" \
                "the sink received $SINK_REQUESTS OTLP export requests" \
                "($(awk -v b="$SINK_BYTES" 'BEGIN {printf "%.1f", b / 1024}') KiB)" \
                "for $(fmt_int "${ROW_N[verify-tracing]}") requests."
        echo "- authd resident memory under /verify load: VmRSS $RSS_VERIFY_MB MiB" \
                "(peak so far, VmHWM, $HWM_VERIFY_MB MiB); after the login flood: VmRSS" \
                "$RSS_OFF_MB MiB, VmHWM $HWM_OFF_MB MiB (each yescrypt hash in flight" \
                "holds its 16 MiB working set); tracing on: VmRSS $RSS_ON_MB MiB," \
                "VmHWM $HWM_ON_MB MiB."
} | tee "$tmp/report.md"

finished=yes
if [ "$serving_errors" -gt 0 ]; then
        note "$serving_errors requests failed (non-2xx responses or socket errors): the figures are suspect"
        keep=yes
        exit 1
fi
