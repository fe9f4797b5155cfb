#!/usr/bin/env bash
# Benchmark the path through the shipped nginx gateway with wrk, beside the
# daemons reached directly and nginx serving a static response (the
# machine's ceiling), all measured in the same run. See docs/benchmarks.md.
#
#   tests/bench/bench-gateway.sh [--builddir DIR] [--duration SECONDS]
#                                [--connections N] [--keep]
#
# It starts PostgreSQL and Redis (scripts/dev-stack.sh), vigil-authd and
# vigil-inventoryd from the build (with their units' Environment=, tracing
# export and the daemons' own access log off), nginx for the ceiling, and a
# second nginx running the SHIPPED gateway: etc/nginx/sites-available/
# vigil-gateway-dev with etc/nginx/vigil/gateway-http.conf and
# gateway-server.conf, rendered by tests/integration/gatewaylib.py (the
# rendering the gateway tests use), which changes only what a benchmark
# must: the listen port, the upstreams' ports, the stub_status port, the
# log directory and the rate-limit.d directory, each by a replacement that
# must match exactly as often as the shipped file has it. Keep-alive
# upstreams, the rate limit, the JSON access log and everything else are
# as shipped. The load source, 127.0.0.1, is made exempt from the rate
# limit as docs/gateway.md tells an operator to: a file of its own,
# rate-limit.d/50-load-test.conf, holding "127.0.0.1 exempt;".
#
# Then, one after the other, with `wrk -t2 -cN -dSECONDS --latency`:
#
#   1. nginx GET /static                        the ceiling
#   2. inventoryd GET /products                 directly, a cache hit
#   3. gateway GET /api/v1/inventory/products   the same through the gateway
#   4. authd POST /verify                       directly, with a bearer token
#   5. gateway POST /api/v1/auth/verify         the same through the gateway
#
# Every request carries "User-Agent: bench-gateway.sh/<row>", and each
# gateway row is checked against its own lines of the gateway's access log:
# how many responses had each status, and how many 200s had a body of
# another length than the daemon's own answer (fetched before the runs and
# compared, body for body, with the gateway's). It also reads the CPU time
# per request of the gateway's nginx and of the daemon in each row. It
# prints a markdown report; it never fails on the figures, only when the
# set-up does or a run serves errors (non-2xx, socket errors, a 429, a 5xx
# or a wrong body in the access log; a 499 only counts beyond one a
# connection, for wrk leaves that many requests in flight when it stops),
# and everything it started is stopped on any exit.
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

usage() {
        echo "usage: $prog [--builddir DIR] [--duration SECONDS] [--connections N] [--keep]" >&2
        exit 2
}

bench_parse "$@"

bench_daemon_binary authd >/dev/null
bench_daemon_binary inventoryd >/dev/null
for tool in wrk nginx python3 curl timeout; do
        command -v "$tool" >/dev/null ||
                die "$tool not found (Debian packages: wrk nginx-light python3 curl coreutils)"
done

# A short unrecorded run before each daemon's first row, so that a fresh
# process's pools, caches, threads and the gateway's upstream connections
# do not count against it.
warmup_seconds=$((duration < 10 ? 2 : 3))

# The whole run is bounded: five measured wrk windows and four warm-ups,
# plus set-up and tear-down.
args=(--builddir "$builddir" --duration "$duration" --connections "$connections")
[ "$keep" = no ] || args+=(--keep)
bench_under_timeout $((5 * (duration + 5) + 4 * (warmup_seconds + 5) + 300)) "${args[@]}"

bench_setup gateway gateway_pid inventoryd_pid authd_pid

# ------------------------------------------------------------------ servers

bench_start_stack postgres redis

auth_port=$(free_port)
inventory_port=$(free_port)
auth_url="http://127.0.0.1:$auth_port"
inv_url="http://127.0.0.1:$inventory_port"
auth_credentials=$(bench_credentials auth)
inventory_credentials=$(bench_credentials inventory)

note "starting vigil-authd on $auth_url"
bench_start_daemon authd authd authd_pid "$auth_url" "$auth_credentials" \
        VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_AUTH"
note "starting vigil-inventoryd on $inv_url"
bench_start_daemon inventoryd inventoryd inventoryd_pid "$inv_url" "$inventory_credentials" \
        VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_INVENTORY" VIGIL_AUTH_URL="$auth_url"

bench_start_nginx

# The shipped gateway, rendered into $tmp/gateway by gatewaylib.py's
# render_gateway() (see the head of this file for what it changes).
# paymentd is not started: its upstream gets a port nobody listens on,
# and no request of the benchmark goes there.
gateway_port=$(free_port)
gateway="$tmp/gateway"
gateway_conf=$(top_srcdir=$srcdir PYTHONPATH="$srcdir/tests/integration" PYTHONDONTWRITEBYTECODE=1 python3 -c '
import sys, gatewaylib
d, port, auth, payment, inventory, status = sys.argv[1:]
print(gatewaylib.render_gateway(d, int(port), {"auth": int(auth), "payment": int(payment),
      "inventory": int(inventory)}, int(status), None))
' "$gateway" "$gateway_port" "$auth_port" "$(free_port)" "$inventory_port" "$(free_port)") ||
        die "rendering the shipped gateway failed"
# The operator's allowlist of the load generator (docs/gateway.md).
echo '127.0.0.1 exempt;    # the load generator: never limited' \
        >"$gateway/vigil/rate-limit.d/50-load-test.conf"
access_log="$gateway/log/vigil-gateway.access.log"
gateway_url="http://127.0.0.1:$gateway_port"

nginx -t -p "$gateway" -c "$gateway_conf" >"$tmp/gateway-check.log" 2>&1 ||
        die "nginx -t refuses the shipped gateway: $(cat "$tmp/gateway-check.log")"
note "starting the shipped gateway (nginx) on 127.0.0.1:$gateway_port"
nginx -p "$gateway" -c "$gateway_conf" -g 'daemon off;' </dev/null >"$tmp/gateway.log" 2>&1 &
gateway_pid=$!
wait_for 20 answers_200 "$gateway_url/health" || die "the gateway does not answer /health"

# ------------------------------------------------------- user, token, answers

bench_login "$auth_url"

# same_answer NAME DIRECT_CURL_ARGS -- GATEWAY_CURL_ARGS: the daemon and
# the gateway both answer 200 with the same body (kept in $tmp/NAME.body),
# or it says how they differ and fails.
same_answer() {
        local name=$1 daemon_args=() a b
        shift
        while [ "$1" != -- ]; do daemon_args+=("$1"); shift; done
        shift
        a=$(curl -s --max-time 10 -o "$tmp/$name.body" -w '%{http_code}' "${daemon_args[@]}") ||
                true
        b=$(curl -s --max-time 10 -o "$tmp/$name.gateway.body" -w '%{http_code}' "$@") ||
                true
        if [ "$a" != 200 ] || [ "$b" != 200 ]; then
                echo "the daemon answered $a, the gateway $b"
                return 1
        fi
        cmp -s "$tmp/$name.body" "$tmp/$name.gateway.body" ||
                { echo "the gateway's body differs from the daemon's:" \
                        "$(tail -c 100 "$tmp/$name.gateway.body")"; return 1; }
}
# expect_same NAME ARGS…: same_answer, tried three times: the cached
# catalog expires every 30 s ± 10 %, and the request that refills it says
# "source":"database" where the others say "cache", so one pair of
# answers may straddle an expiry; two more in a row cannot.
expect_same() {
        local why
        for _ in 1 2 3; do
                why=$(same_answer "$@") && return 0
        done
        die "$1: $why"
}
check_answers() {
        expect_same products "$inv_url/products" -- "$gateway_url/api/v1/inventory/products"
        expect_same verify -X POST -H "Authorization: Bearer $BENCH_TOKEN" "$auth_url/verify" -- \
                -X POST -H "Authorization: Bearer $BENCH_TOKEN" "$gateway_url/api/v1/auth/verify"
}
# The first GET /products fills the cache, and its body says
# "source":"database"; the ones compared, and most measured, are cache
# hits, with "source":"cache". During a run, the request that refills the
# expired entry has the first body, so a 200 of either length is right.
curl -sf --max-time 10 -o "$tmp/products-database.body" "$inv_url/products" ||
        die "GET /products failed"
grep -q '"source":"database"' "$tmp/products-database.body" ||
        die "the first GET /products is not from the database: $(tail -c 100 "$tmp/products-database.body")"
check_answers
grep -q '"id"' "$tmp/products.body" || die "GET /products answered no product"
grep -q '"source":"cache"' "$tmp/products.body" ||
        die "GET /products is not a cache hit: $(tail -c 100 "$tmp/products.body")"
products_bytes="$(wc -c <"$tmp/products.body") $(wc -c <"$tmp/products-database.body")"
verify_bytes=$(wc -c <"$tmp/verify.body")

# ---------------------------------------------------------------------- wrk

# access_counts NAME "BYTES…": "answers 200s-of-BYTES… 429s 5xx 499s others"
# among the lines of run NAME (its User-Agent, see run) in the gateway's
# access log (one JSON object a line, format vigil_json). A 499 is a
# request whose client closed the connection first: wrk does that to the
# requests in flight when its time is up, at most one a connection.
access_counts() {
        awk -v ua="\"user_agent\":\"$prog/$1\"" -v want="$2" '
                BEGIN {k = split(want, w, " "); for (i = 1; i <= k; i++) length_ok[w[i]] = 1}
                index($0, ua) && match($0, /"status":[0-9]+,"body_bytes_sent":[0-9]+/) {
                        split(substr($0, RSTART, RLENGTH), f, /[:,]/)
                        n++
                        if (f[2] == 200 && (f[4] in length_ok)) ok++
                        else if (f[2] == 429) limited++
                        else if (f[2] >= 500) server++
                        else if (f[2] == 499) closed++
                        else other++
                }
                END {printf "%d %d %d %d %d %d\n", n, ok, limited, server, closed, other}' \
                "$access_log"
}

# logged NAME N: the access log has at least N lines of run NAME (nginx
# writes it in batches, at least once a second).
logged() {
        [ "$(access_counts "$1" 0 | cut -d' ' -f1)" -ge "$2" ]
}

# run NAME URL LUA [PID…]: one measured run (wrk_run and record), its
# requests marked with "User-Agent: bench-gateway.sh/NAME" (a wrk script
# that runs LUA, if any, then sets that header), with the CPU time per
# request of the processes PID… (each with its children) in ROW_CPU[NAME];
# for a gateway row (a NAME starting with gateway-), the run's lines of the
# gateway's access log in ROW_LOG[NAME] (from access_counts, with
# ROW_BYTES[NAME] the expected body lengths).
declare -A ROW_CPU ROW_LOG ROW_BYTES
run() {
        local name=$1 url=$2 lua=$3 pid n hz cpu='' i=0
        local -a t0=()
        shift 3
        {
                echo "-- $name of $prog: ${lua:-a GET}, its name in User-Agent"
                [ -z "$lua" ] || echo "dofile(\"$benchdir/$lua\")"
                echo "wrk.headers[\"User-Agent\"] = \"$prog/$name\""
        } >"$tmp/$name.lua"
        # Only this run's lines matter: the log need not grow across runs.
        [[ "$name" != gateway-* ]] || : >"$access_log"
        for pid in "$@"; do t0+=("$(proc_ticks "$pid")"); done
        wrk_run "$name" $threads "$connections" "$duration" "$url" "$tmp/$name.lua"
        n=$(awk '/ requests in / {print $1}' "$tmp/$name.txt")
        hz=$(getconf CLK_TCK)
        for pid in "$@"; do
                cpu+="${cpu:+ }$(awk -v t=$(($(proc_ticks "$pid") - t0[i])) -v hz="$hz" -v n="${n:-0}" \
                        'BEGIN {if (n > 0) printf "%.1f", t * 1e6 / hz / n; else printf "n/a"}')"
                i=$((i + 1))
        done
        ROW_CPU[$name]=$cpu
        if [[ "$name" == gateway-* ]]; then
                wait_for 5 logged "$name" "${n:-0}" ||
                        note "$name: the access log has fewer lines than wrk's ${n:-0} requests"
                ROW_LOG[$name]=$(access_counts "$name" "${ROW_BYTES[$name]}")
                record "$name" "CPU µs per request: $cpu; access log (answers, 200s of" \
                        "${ROW_BYTES[$name]// / or } bytes, 429s, 5xx, 499s, other):" \
                        "${ROW_LOG[$name]}"
        else
                record "$name" "CPU µs per request: $cpu"
        fi
}

# warmup NAME URL [LUA]: an unrecorded run.
warmup() {
        note "warming up ($1, ${warmup_seconds}s, not recorded)"
        wrk_run "warmup-$1" $threads "$connections" "$warmup_seconds" "$2" "${3:-}"
}

ROW_BYTES[gateway-products]=$products_bytes
ROW_BYTES[gateway-verify]=$verify_bytes
note "each run: wrk -t$threads -c$connections -d${duration}s --latency"

note "1/5 nginx GET /static (ceiling)"
run nginx "http://127.0.0.1:$nginx_port/static" "" "$nginx_pid"

warmup products "$inv_url/products"
note "2/5 inventoryd GET /products (cache hit)"
# shellcheck disable=SC2154 # set by bench_start_daemon
run products "$inv_url/products" "" "$inventoryd_pid"
warmup gateway-products "$gateway_url/api/v1/inventory/products"
note "3/5 gateway GET /api/v1/inventory/products"
run gateway-products "$gateway_url/api/v1/inventory/products" "" "$gateway_pid" "$inventoryd_pid"

warmup verify "$auth_url/verify" post-bearer.lua
note "4/5 authd POST /verify"
# shellcheck disable=SC2154 # set by bench_start_daemon
run verify "$auth_url/verify" post-bearer.lua "$authd_pid"
warmup gateway-verify "$gateway_url/api/v1/auth/verify" post-bearer.lua
note "5/5 gateway POST /api/v1/auth/verify"
run gateway-verify "$gateway_url/api/v1/auth/verify" post-bearer.lua "$gateway_pid" "$authd_pid"

# The answers are still the right ones after the load.
check_answers

# ------------------------------------------------------------------- report

declare -A LABEL=(
        [nginx]="nginx GET /static (ceiling)"
        [products]="inventoryd GET /products (direct, cache hit)"
        [gateway-products]="gateway GET /api/v1/inventory/products"
        [verify]="authd POST /verify (direct)"
        [gateway-verify]="gateway POST /api/v1/auth/verify"
)

# Errors: wrk's (non-2xx, socket errors), and in a gateway row every
# logged answer that is not a 200 of the daemon's body length, but for the
# 499s of the requests wrk left in flight (at most one a connection).
serving_errors=0
for row in "${ROWS[@]}"; do
        serving_errors=$((serving_errors + ${ROW_ERR[$row]}))
        if [ -n "${ROW_LOG[$row]:-}" ]; then
                read -r n ok _ _ closed _ <<<"${ROW_LOG[$row]}"
                [ "$closed" -le "$connections" ] || closed=$connections
                serving_errors=$((serving_errors + n - ok - closed))
        fi
done

# cpu_cell ROW: "gateway X + daemon Y" for a gateway row, "Y" for another.
cpu_cell() {
        local -a c
        read -ra c <<<"${ROW_CPU[$1]}"
        if [ "${#c[@]}" -eq 2 ]; then
                echo "nginx ${c[0]} + daemon ${c[1]}"
        else
                echo "${c[0]}"
        fi
}

{
        echo
        echo "### vigil gateway, $(date -u +%Y-%m-%d) — $(nproc) CPUs, $(uname -sr)"
        echo
        echo "wrk -t$threads -c$connections -d${duration}s --latency, one run after the other;"
        echo "wrk, both nginx, authd, inventoryd, PostgreSQL and Redis share the machine."
        echo
        echo "| test | requests/s | p50 | p99 | max | vs nginx | vs direct | CPU µs/request | errors |"
        echo "|------|-----------:|----:|----:|----:|---------:|----------:|---------------:|-------:|"
        for row in "${ROWS[@]}"; do
                [ -n "${LABEL[$row]:-}" ] || continue
                direct="—"
                [[ "$row" != gateway-* ]] ||
                        direct=$(fmt_ratio "${ROW_RPS[$row]}" "${ROW_RPS[${row#gateway-}]}")
                printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$row]}" \
                        "$(fmt_int "${ROW_RPS[$row]}")" "$(fmt_ms "${ROW_P50[$row]}")" \
                        "$(fmt_ms "${ROW_P99[$row]}")" "$(fmt_ms "${ROW_MAX[$row]}")" \
                        "$(fmt_ratio "${ROW_RPS[$row]}" "${ROW_RPS[nginx]}")" "$direct" \
                        "$(cpu_cell "$row")" "${ROW_ERR[$row]}"
        done
        echo
        for row in gateway-products gateway-verify; do
                read -r n ok limited server closed other <<<"${ROW_LOG[$row]}"
                echo "- ${LABEL[$row]}: the access log has $n answers for $(fmt_int \
                        "${ROW_N[$row]}") requests wrk counted: $ok 200s with a body of the" \
                        "daemon's length (${ROW_BYTES[$row]// / or } bytes), $limited 429s," \
                        "$server 5xx, $other" \
                        "other, and $closed 499s (requests in flight when wrk stopped)."
        done
        echo "- load source 127.0.0.1 exempt by rate-limit.d/50-load-test.conf; the gateway" \
                "otherwise as shipped (gatewaylib.py's rendering: ports and paths only)."
        echo "- environment from the units: authd ${UNIT_ENV[authd]}; inventoryd" \
                "${UNIT_ENV[inventoryd]}."
        echo "- $SCHEDULER_NOTE."
} | tee "$tmp/report.md"

finished=yes
if [ "$serving_errors" -gt 0 ]; then
        note "$serving_errors requests failed (non-2xx responses, socket errors, or wrong" \
                "answers in the gateway's access log): the figures are suspect"
        keep=yes
        exit 1
fi
