#!/usr/bin/env bash
# Benchmark vigil-inventoryd with wrk against nginx serving a static
# response (the machine's ceiling), measured in the same run. See
# docs/benchmarks.md.
#
#   tests/bench/bench-inventoryd.sh [--builddir DIR] [--duration SECONDS]
#                                   [--connections N] [--products N] [--keep]
#
# It starts PostgreSQL and Redis (scripts/dev-stack.sh), vigil-inventoryd
# with tracing and the access log off, and nginx, all on free loopback ports
# in a temporary directory; then runs, one after the other, with
# `wrk -t2 -cN -dSECONDS --latency`:
#
#   1. nginx GET /static                      the ceiling
#   2. GET /products                          cache hit (warmed first)
#   3. GET /product/2                         one hot product, cache hit
#   4. POST /product/1/reserve {quantity:1}   one hot product with huge stock
#   5. GET /product/{random 1..10}            with 10 products
#   6. GET /product/2 and 7. GET /product/{random 1..N} after inserting
#      products up to --products (default 100000) with generate_series
#
# and reads the cache hit ratio of each read run from /metrics and the
# daemon's resident memory (VmRSS, VmHWM) after the load. It prints a
# markdown report to paste into docs/benchmarks.md. It reports; it never
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
products=100000
keep=no

usage() {
        echo "usage: $prog [--builddir DIR] [--duration SECONDS] [--connections N] [--products N] [--keep]" >&2
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
        --products) [ $# -ge 2 ] || usage; products=$2; shift 2 ;;
        --products=*) products=${1#*=}; shift ;;
        --keep) keep=yes; shift ;;
        -h | --help) usage ;;
        *) usage ;;
        esac
done
bench_check_options
if ! [[ "$products" =~ ^[0-9]+$ ]] || [ "$products" -lt 11 ] || [ "$products" -gt 10000000 ]; then
        die "--products must be 11..10000000"
fi

daemon="$builddir/src/inventoryd/vigil-inventoryd"
[ -x "$daemon" ] || die "$daemon not found: build it, or pass --builddir"
daemon=$(cd "$(dirname "$daemon")" && pwd)/vigil-inventoryd
for tool in wrk nginx python3 curl psql timeout; do
        command -v "$tool" >/dev/null ||
                die "$tool not found (Debian packages: wrk nginx-light python3 curl postgresql-client coreutils)"
done
if grep -qa __asan_init "$daemon"; then
        note "warning: $daemon is built with sanitizers; its figures are not representative"
fi

# The whole run is bounded: seven wrk windows plus set-up, the bulk insert
# and tear-down.
args=(--builddir "$builddir" --duration "$duration" --connections "$connections"
        --products "$products")
[ "$keep" = no ] || args+=(--keep)
bench_under_timeout $((7 * (duration + 5) + 420)) "${args[@]}"

bench_setup inventoryd daemon_pid

daemon_ready_or_dead() {
        answers_200 "$inv_url/ready" || ! kill -0 "$daemon_pid" 2>/dev/null
}

# ------------------------------------------------------------------ servers

bench_start_stack postgres redis
admin_dsn=$(printf '%s' "$VIGIL_TEST_PG_ADMIN_DSN" | sed 's/dbname=[^ ]*/dbname=vigil/')

sql() {
        psql "$admin_dsn" -X -q -v ON_ERROR_STOP=1 -Atc "$1" </dev/null
}

mkdir -p "$tmp/credentials"
chmod 700 "$tmp/credentials"
cp "$VIGIL_DEV_PG_PASSWORD_FILE_INVENTORY" "$tmp/credentials/postgres-password"
: >"$tmp/inventoryd.conf"
inv_port=$(free_port)
inv_url="http://127.0.0.1:$inv_port"

note "starting vigil-inventoryd on $inv_url (tracing off, access log off)"
env -u JOURNAL_STREAM -u NOTIFY_SOCKET -u LISTEN_FDS -u LISTEN_PID \
        VIGIL_HTTP_LISTEN="127.0.0.1:$inv_port" \
        VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_INVENTORY" \
        VIGIL_REDIS_ADDRESS="$VIGIL_REDIS_ADDRESS" \
        VIGIL_TRACING_OTLP_ENDPOINT= \
        VIGIL_LOG_LEVEL=warning \
        VIGIL_HTTP_ACCESS_LOG=false \
        CREDENTIALS_DIRECTORY="$tmp/credentials" \
        "$daemon" --config "$tmp/inventoryd.conf" </dev/null >"$tmp/inventoryd.log" 2>&1 &
daemon_pid=$!
wait_for 60 daemon_ready_or_dead || die "inventoryd is not ready after 60s"
kill -0 "$daemon_pid" 2>/dev/null || die "inventoryd exited during start-up"

bench_start_nginx

# ----------------------------------------------------------- data, scripts

# Ten products; product 1 is the hot one, with stock no run can exhaust.
sql "INSERT INTO inventory.products (name, price_cents, stock)
     SELECT 'Bench product ' || g, 100, 1000 FROM generate_series(6, 10) g" ||
        die "inserting products failed"
sql "UPDATE inventory.products SET stock = 2000000000 WHERE id = 1" || die "UPDATE failed"
[ "$(sql 'SELECT count(*) FROM inventory.products')" = 10 ] ||
        die "expected 10 products after the seed and the insert"

cat >"$tmp/reserve.lua" <<'EOF'
-- POST {"quantity":1} (inventoryd's POST /product/{id}/reserve).
wrk.method = "POST"
wrk.body = '{"quantity":1}'
wrk.headers["Content-Type"] = "application/json"
EOF

# random_ids_lua N: a wrk script asking for /product/{1..N} at random.
random_ids_lua() {
        cat >"$tmp/random-$1.lua" <<EOF
-- GET /product/{id} for ids drawn uniformly from 1..$1.
local n = $1
local counter = 0
function setup(thread)
        counter = counter + 1
        thread:set("seed", counter)
end
function init(args)
        math.randomseed(os.time() * 1000 + seed)
end
function request()
        return wrk.format("GET", "/product/" .. math.random(1, n))
end
EOF
}
random_ids_lua 10
random_ids_lua "$products"

# ---------------------------------------------------------------------- wrk

# cache_counts: "hits misses" summed over every cache, from /metrics.
cache_counts() {
        curl -sf --max-time 5 "$inv_url/metrics" | awk '
                /^vigil_cache_requests_total\{/ {
                        if ($1 ~ /result="hit"/) h += $2; else if ($1 ~ /result="miss"/) m += $2
                }
                END {printf "%d %d\n", h, m}'
}

# measure NAME URL [LUA]: wrk_run and record, with the cache hit ratio of
# the run in ROW_HIT[NAME] ("—" when the run made no lookups).
declare -A ROW_HIT
measure() {
        local name=$1 h0 m0 h1 m1
        read -r h0 m0 < <(cache_counts)
        wrk_run "$name" $threads "$connections" "$duration" "$2" "${3:-}"
        read -r h1 m1 < <(cache_counts)
        ROW_HIT[$name]=$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) \
                'BEGIN {if (h + m > 0) printf "%.1f %%\n", 100 * h / (h + m); else print "—"}')
        record "$name" "cache hits ${ROW_HIT[$name]}"
}

note "each run: wrk -t$threads -c$connections -d${duration}s --latency"

note "1/7 nginx GET /static (ceiling)"
measure nginx "http://127.0.0.1:$nginx_port/static"

curl -sf --max-time 5 "$inv_url/products" >/dev/null || die "GET /products failed"
curl -sf --max-time 5 "$inv_url/product/2" >/dev/null || die "GET /product/2 failed"

note "2/7 GET /products (cache hit)"
measure products "$inv_url/products"

note "3/7 GET /product/2 (10 products)"
measure product-10 "$inv_url/product/2"

note "4/7 POST /product/1/reserve (one hot product)"
stock_before=$(sql "SELECT stock FROM inventory.products WHERE id = 1")
measure reserve "$inv_url/product/1/reserve" "$tmp/reserve.lua"
stock_after=$(sql "SELECT stock FROM inventory.products WHERE id = 1")
reserved=$((stock_before - stock_after))

note "5/7 GET /product/{random 1..10}"
measure product-random-10 "$inv_url/product/1" "$tmp/random-10.lua"

note "inserting products up to $products (generate_series)"
t0=$SECONDS
sql "INSERT INTO inventory.products (name, price_cents, stock)
     SELECT 'Bench product ' || g, 100, 1000 FROM generate_series(11, $products) g;
     ANALYZE inventory.products" || die "bulk insert failed"
note "inserted in $((SECONDS - t0)) s"

note "6/7 GET /product/2 ($products products)"
measure product-n "$inv_url/product/2"

note "7/7 GET /product/{random 1..$products}"
measure product-random-n "$inv_url/product/1" "$tmp/random-$products.lua"

read -r RSS_MB HWM_MB < <(read_memory "$daemon_pid")
stock_ok=$(sql "SELECT count(*) FROM inventory.products WHERE stock < 0")

# ------------------------------------------------------------------- report

declare -A LABEL=(
        [nginx]="nginx GET /static (ceiling)"
        [products]="GET /products (cache hit)"
        [product-10]="GET /product/2, 10 products"
        [reserve]="POST /product/1/reserve, one hot product"
        [product-random-10]="GET /product/{random 1..10}"
        [product-n]="GET /product/2, $products products"
        [product-random-n]="GET /product/{random 1..$products}"
)

serving_errors=0
for row in "${ROWS[@]}"; do
        serving_errors=$((serving_errors + ${ROW_ERR[$row]}))
done

{
        echo
        echo "### vigil-inventoryd, $(date -u +%Y-%m-%d) — $(nproc) CPUs, $(uname -sr)"
        echo
        echo "wrk -t$threads -c$connections -d${duration}s --latency, one run after the other;"
        echo "wrk, nginx, inventoryd, PostgreSQL and Redis share the machine."
        echo
        echo "| test | requests/s | p50 | p99 | vs nginx | cache hits | errors |"
        echo "|------|-----------:|----:|----:|---------:|-----------:|-------:|"
        for row in "${ROWS[@]}"; do
                printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$row]}" \
                        "$(fmt_int "${ROW_RPS[$row]}")" "$(fmt_ms "${ROW_P50[$row]}")" \
                        "$(fmt_ms "${ROW_P99[$row]}")" \
                        "$(fmt_ratio "${ROW_RPS[$row]}" "${ROW_RPS[nginx]}")" \
                        "${ROW_HIT[$row]}" "${ROW_ERR[$row]}"
        done
        echo
        echo "- /product/2 p99 with $products products: $(fmt_ms "${ROW_P99[product-n]}") vs" \
                "$(fmt_ms "${ROW_P99[product-10]}") with 10 (×$(fmt_ratio "${ROW_P99[product-n]}" \
                "${ROW_P99[product-10]}")); random ids: $(fmt_ms "${ROW_P99[product-random-n]}")" \
                "vs $(fmt_ms "${ROW_P99[product-random-10]}") (×$(fmt_ratio \
                "${ROW_P99[product-random-n]}" "${ROW_P99[product-random-10]}"), the larger" \
                "catalog also misses the cache more, see the hit column)."
        echo "- reservations: $reserved units reserved by $(fmt_int "${ROW_N[reserve]}")" \
                "requests; products with negative stock afterwards: $stock_ok."
        echo "- inventoryd resident memory after the load: VmRSS $RSS_MB MiB, VmHWM $HWM_MB MiB."
} | tee "$tmp/report.md"

finished=yes
if [ "$serving_errors" -gt 0 ]; then
        note "$serving_errors requests failed (non-2xx responses or socket errors): the figures are suspect"
        keep=yes
        exit 1
fi
