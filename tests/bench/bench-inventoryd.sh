#!/usr/bin/env bash
# Benchmark vigil-inventoryd with wrk against nginx serving a static
# response (the machine's ceiling), measured in the same run. See
# docs/benchmarks.md.
#
#   tests/bench/bench-inventoryd.sh [--builddir DIR] [--duration SECONDS]
#                                   [--connections N] [--products N]
#                                   [--rounds N] [--keep]
#
# It starts PostgreSQL and Redis (scripts/dev-stack.sh), vigil-authd (a
# reservation's token is verified by it), vigil-inventoryd with tracing and
# the access log off, and nginx, all on free loopback ports
# in a temporary directory; then runs, one after the other, with
# `wrk -t2 -cN -dSECONDS --latency`:
#
#   1. nginx GET /static                      the ceiling
#   2. GET /products                          cache hit (warmed first)
#   3. POST /product/1/reserve {quantity:1}   one hot product with huge stock,
#                                             with a bearer token (authd /verify)
#   4. GET /product/{random 1..10}            with 10 products
#   5. --rounds rounds (default 9) of GET /product/2 with 10 products and
#      GET /product/2 with --products products (default 100000), the
#      order alternating from round to round, each with wrk -t1 -c2 so
#      that p99 is the request's own latency rather than the scheduler's
#      (see flat_connections). Before each of these runs the catalog is
#      brought to its size (rows deleted, or inserted with
#      generate_series), PostgreSQL is vacuumed, analysed and
#      checkpointed, and a short wrk run of the same request warms up.
#   6. GET /product/{random 1..N}             with --products products
#   7. pgbench -S -cN -j2 -TSECONDS           PostgreSQL's select-only ceiling
#                                             (100 000 rows, a database of its own)
#
# and reads, for each run, the hit ratios of the cache and of the local
# in-process cache in front of it (/metrics), how often the local cache
# went off (the daemon's log) and how much CPU processes other than the
# benchmark's took (/proc); and the daemon's resident memory (VmRSS,
# VmHWM) after the load. It prints a markdown report to paste into
# docs/benchmarks.md. It reports; it never fails on the figures. It fails
# (non-zero) only when the set-up does or a run serves errors, and
# everything it started is stopped on any exit.
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
rounds=9
keep=no

usage() {
        echo "usage: $prog [--builddir DIR] [--duration SECONDS] [--connections N] [--products N]" \
                "[--rounds N] [--keep]" >&2
        exit 2
}

BENCH_OPTIONS="rounds products"
bench_parse "$@"
if ! [[ "$products" =~ ^[0-9]+$ ]] || [ "$products" -lt 11 ] || [ "$products" -gt 10000000 ]; then
        die "--products must be 11..10000000"
fi
# The warm-up before each run of the flatness comparison.
warmup=$((duration < 2 ? duration : 2))
# The flatness comparison's load: one wrk thread, two connections. With 32
# connections, inventoryd has 32 connection threads on the machine's CPUs
# beside wrk's, and p99 is how long the scheduler leaves one of them
# waiting: on 2 CPUs, identical runs gave p99s from 1.1 to 3.4 ms, a noise
# floor far wider than the 10 % to resolve. With two connections nothing
# queues, and p99 is the request's own latency (about 0.1 ms, identical
# runs within about 10 %).
flat_threads=1
flat_connections=2
# A run of the flatness comparison whose slowest response took this long
# (ms) had a stall: wrk's correction for coordinated omission makes its p99
# a measure of the stall rather than of the catalog (see bench-lib.sh).
stall_ms=100

bench_daemon_binary inventoryd >/dev/null
bench_daemon_binary authd >/dev/null
for tool in wrk nginx python3 curl psql pgbench timeout; do
        command -v "$tool" >/dev/null ||
                die "$tool not found (Debian packages: wrk nginx-light python3 curl postgresql-15 coreutils)"
done

# The whole run is bounded: 6 + 2 × rounds measured windows, as many
# warm-ups but the first five, at most rounds + 1 changes of the catalog
# size (bulk insert or delete, VACUUM, CHECKPOINT), set-up and tear-down.
args=(--builddir "$builddir" --duration "$duration" --connections "$connections"
        --products "$products" --rounds "$rounds")
[ "$keep" = no ] || args+=(--keep)
bench_under_timeout $(((6 + 2 * rounds) * (duration + 5) + 2 * rounds * (warmup + 5) +
        (rounds + 1) * (30 + products / 2000) + 480)) "${args[@]}"

bench_setup inventoryd pgbench_pid daemon_pid authd_pid


# ------------------------------------------------------------------ servers

bench_start_stack postgres redis
admin_dsn=$(printf '%s' "$VIGIL_TEST_PG_ADMIN_DSN" | sed 's/dbname=[^ ]*/dbname=vigil/')

sql() {
        psql "$admin_dsn" -X -q -v ON_ERROR_STOP=1 -Atc "$1" </dev/null
}

inv_url="http://127.0.0.1:$(free_port)"
auth_url="http://127.0.0.1:$(free_port)"

auth_credentials=$(bench_credentials auth)
inventory_credentials=$(bench_credentials inventory)

note "starting vigil-authd on $auth_url"
bench_start_daemon authd authd authd_pid "$auth_url" "$auth_credentials" \
        VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_AUTH"

# The user whose token every reservation carries.
bench_login "$auth_url"

note "starting vigil-inventoryd on $inv_url (tracing off, access log off)"
bench_start_daemon inventoryd inventoryd daemon_pid "$inv_url" "$inventory_credentials" \
        VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_INVENTORY" VIGIL_AUTH_URL="$auth_url"

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
-- POST {"quantity":1} with "Authorization: Bearer $BENCH_TOKEN"
-- (inventoryd's POST /product/{id}/reserve).
local token = os.getenv("BENCH_TOKEN")
if token == nil or token == "" then
        error("BENCH_TOKEN is not set")
end
wrk.method = "POST"
wrk.body = '{"quantity":1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
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

# catalog_size N: the catalog holds products 1..N, and PostgreSQL has
# nothing left to do about it. Rows go with a DELETE or come with
# generate_series; then VACUUM ANALYZE, so that autovacuum and autoanalyze
# do not start during the next run, and CHECKPOINT and sync, so that
# writing the dirty pages does not either. Done before every run of the flatness
# comparison, even when the size stays, so that each run follows the same
# steps.
catalog=10
catalog_size() {
        local n=$1 t0=$SECONDS
        if [ "$n" -lt "$catalog" ]; then
                sql "DELETE FROM inventory.products WHERE id > $n" || die "DELETE failed"
        elif [ "$n" -gt "$catalog" ]; then
                sql "INSERT INTO inventory.products (id, name, price_cents, stock)
                     SELECT g, 'Bench product ' || g, 100, 1000
                     FROM generate_series($((catalog + 1)), $n) g;
                     SELECT setval(pg_get_serial_sequence('inventory.products', 'id'), $n)" \
                        >/dev/null || die "bulk insert failed"
        fi
        sql "VACUUM (ANALYZE) inventory.products" || die "VACUUM failed"
        sql "CHECKPOINT" || die "CHECKPOINT failed"
        # The dev stack runs with fsync off: without this, the kernel
        # writes the checkpoint's pages back during the next run.
        sync
        [ "$(sql 'SELECT count(*) FROM inventory.products')" = "$n" ] ||
                die "expected $n products in the catalog"
        [ "$n" = "$catalog" ] || note "catalog now $n products ($((SECONDS - t0)) s)"
        catalog=$n
}

# ---------------------------------------------------------------------- wrk

# cache_counts: "hits misses local-hits local-misses" from /metrics: the
# lookups of every cache, and of the local in-process cache in front.
cache_counts() {
        curl -sf --max-time 5 "$inv_url/metrics" | awk '
                /^vigil_cache_requests_total\{/ {
                        if ($1 ~ /result="hit"/) h += $2; else if ($1 ~ /result="miss"/) m += $2
                }
                /^vigil_local_cache_lookups_total\{/ {
                        if ($1 ~ /result="hit"/) lh += $2; else if ($1 ~ /result="miss"/) lm += $2
                }
                END {printf "%d %d %d %d\n", h, m, lh, lm}'
}

# local_cache_losses: how often inventoryd turned its local cache off
# because the Redis invalidation connection went silent.
local_cache_losses() {
        grep -c "cache off: lost the Redis invalidation connection" "$tmp/inventoryd.log" || true
}

# cpu_ticks: "all busy ours" in clock ticks since boot: all CPUs' time, the
# busy part of it (all but idle and I/O wait; time stolen by the hypervisor
# counts as busy), and what this benchmark's processes used: the script
# with the children it reaped (wrk, psql, curl), inventoryd, nginx,
# PostgreSQL and Redis, each with its children.
# shellcheck disable=SC2154 # daemon_pid: set by bench_start_daemon
cpu_ticks() {
        local roots="$$ $daemon_pid $nginx_pid" f
        for f in "$tmp/stack/postgres/data/postmaster.pid" "$tmp/stack/redis/redis.pid"; do
                [ ! -r "$f" ] || roots+=" $(head -n 1 "$f")"
        done
        # shellcheck disable=SC2086 # one word per pid
        awk -v ours="$(proc_ticks $roots)" '$1 == "cpu" {
                all = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9
                printf "%d %d %d\n", all, all - $5 - $6, ours
        }' /proc/stat
}

# measure NAME URL [LUA]: wrk_run (with wrk_threads and wrk_connections
# when set, else threads and connections) and record, with what the run did to the
# caches and what the rest of the machine did meanwhile: the cache and
# local cache hit ratios in ROW_HIT[NAME] and ROW_LOCAL_HIT[NAME] ("—" when
# there were no lookups), the times the local cache went off in
# ROW_LOSSES[NAME], and the share of all CPU time that other processes took
# in ROW_OTHER_CPU[NAME] (percent).
declare -A ROW_HIT ROW_LOCAL_HIT ROW_LOSSES ROW_OTHER_CPU
measure() {
        local name=$1 h0 m0 lh0 lm0 h1 m1 lh1 lm1 all0 busy0 ours0 all1 busy1 ours1 losses0 extra
        read -r h0 m0 lh0 lm0 < <(cache_counts)
        losses0=$(local_cache_losses)
        read -r all0 busy0 ours0 < <(cpu_ticks)
        wrk_run "$name" "${wrk_threads:-$threads}" "${wrk_connections:-$connections}" \
                "$duration" "$2" "${3:-}"
        read -r all1 busy1 ours1 < <(cpu_ticks)
        ROW_LOSSES[$name]=$(($(local_cache_losses) - losses0))
        read -r h1 m1 lh1 lm1 < <(cache_counts)
        ROW_HIT[$name]=$(hit_ratio $((h1 - h0)) $((m1 - m0)))
        ROW_LOCAL_HIT[$name]=$(hit_ratio $((lh1 - lh0)) $((lm1 - lm0)))
        ROW_OTHER_CPU[$name]=$(awk -v a=$((all1 - all0)) -v o=$((busy1 - busy0 - ours1 + ours0)) \
                'BEGIN {printf "%.0f\n", (a > 0 && o > 0 ? 100 * o / a : 0)}')
        extra="cache hits ${ROW_HIT[$name]} (local ${ROW_LOCAL_HIT[$name]},"
        extra+=" off ${ROW_LOSSES[$name]} times), other processes ${ROW_OTHER_CPU[$name]} % CPU"
        record "$name" "$extra"
}

# hit_ratio HITS MISSES: "99.9 %", or "—" without lookups.
hit_ratio() {
        awk -v h="$1" -v m="$2" \
                'BEGIN {if (h + m > 0) printf "%.1f %%\n", 100 * h / (h + m); else print "—"}'
}

# flat_run ROUND SIZE: GET /product/2 with SIZE products, recorded as row
# product-2-SIZE-round-ROUND, added to FLAT_ROWS too (in the order run).
FLAT_ROWS=()
flat_run() {
        local name="product-2-$2-round-$1"
        note "GET /product/2 with $2 products, round $1 of $rounds"
        catalog_size "$2"
        wrk_run "$name-warmup" $flat_threads $flat_connections "$warmup" "$inv_url/product/2"
        wrk_threads=$flat_threads wrk_connections=$flat_connections measure "$name" \
                "$inv_url/product/2"
        FLAT_ROWS+=("$name")
}

note "each run: wrk -t$threads -c$connections -d${duration}s --latency"

note "1/7 nginx GET /static (ceiling)"
measure nginx "http://127.0.0.1:$nginx_port/static"

curl -sf --max-time 5 "$inv_url/products" >/dev/null || die "GET /products failed"
curl -sf --max-time 5 "$inv_url/product/2" >/dev/null || die "GET /product/2 failed"

note "2/7 GET /products (cache hit)"
measure products "$inv_url/products"

note "3/7 POST /product/1/reserve (one hot product)"
stock_before=$(sql "SELECT stock FROM inventory.products WHERE id = 1")
measure reserve "$inv_url/product/1/reserve" "$tmp/reserve.lua"
stock_after=$(sql "SELECT stock FROM inventory.products WHERE id = 1")
reserved=$((stock_before - stock_after))

note "4/7 GET /product/{random 1..10}"
measure product-random-10 "$inv_url/product/1" "$tmp/random-10.lua"

note "5/7 GET /product/2 with 10 and $products products, $rounds rounds" \
        "(each run after a ${warmup}s warm-up)"
for round in $(seq "$rounds"); do
        if [ $((round % 2)) -eq 1 ]; then
                flat_run "$round" 10
                flat_run "$round" "$products"
        else
                flat_run "$round" "$products"
                flat_run "$round" 10
        fi
done

note "6/7 GET /product/{random 1..$products}"
catalog_size "$products"
measure product-random-n "$inv_url/product/1" "$tmp/random-$products.lua"

read -r RSS_MB HWM_MB < <(read_memory "$daemon_pid")
read -r ANON_MB FILE_MB < <(read_anon_memory "$daemon_pid")

# What PostgreSQL alone does with reads of one row by key, as many as the
# catalog (scale 1: 100 000 accounts), in a database of its own.
note "7/7 pgbench -S -c$connections -j$threads -T$duration (select-only ceiling)"
psql "$admin_dsn" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE vigil_bench" >/dev/null
bench_dsn=${admin_dsn/dbname=vigil/dbname=vigil_bench}
pgbench -i -q -s 1 "$bench_dsn" >"$tmp/pgbench-init.log" 2>&1 || die "pgbench -i failed"
pgbench -S -c "$connections" -j $threads -T "$duration" "$bench_dsn" </dev/null \
        >"$tmp/pgbench.txt" 2>&1 &
pgbench_pid=$!
wait "$pgbench_pid" || die "pgbench failed: $(tail -n 3 "$tmp/pgbench.txt")"
pgbench_pid=
PG_TPS=$(awk -F'= ' '/^tps = / {split($2, a, " "); print a[1]; exit}' "$tmp/pgbench.txt")
PG_LAT=$(awk -F'= ' '/^latency average = / {split($2, a, " "); print a[1]; exit}' "$tmp/pgbench.txt")
stock_ok=$(sql "SELECT count(*) FROM inventory.products WHERE stock < 0")

# ------------------------------------------------------------------- report

declare -A LABEL=(
        [nginx]="nginx GET /static (ceiling)"
        [products]="GET /products (cache hit)"
        [reserve]="POST /product/1/reserve, one hot product"
        [product-random-10]="GET /product/{random 1..10}"
        [product-random-n]="GET /product/{random 1..$products}"
)

serving_errors=0
for row in "${ROWS[@]}"; do
        serving_errors=$((serving_errors + ${ROW_ERR[$row]}))
done

# The flatness comparison, per catalog size: the medians over the rounds,
# the lowest and highest p99 and the runs that stalled; per round, the p99
# ratio.
declare -A MED_RPS MED_P50 MED_P99 MED_MAX LOW_P99 HIGH_P99 STALLED
for size in 10 "$products"; do
        rps=() p50=() p99=() max=()
        STALLED[$size]=0
        for round in $(seq "$rounds"); do
                row=product-2-$size-round-$round
                rps+=("${ROW_RPS[$row]}") p50+=("${ROW_P50[$row]}")
                p99+=("${ROW_P99[$row]}") max+=("${ROW_MAX[$row]}")
                if awk -v m="${ROW_MAX[$row]:-0}" -v s="$stall_ms" 'BEGIN {exit !(m >= s)}'; then
                        STALLED[$size]=$((STALLED[$size] + 1))
                fi
        done
        MED_RPS[$size]=$(median "${rps[@]}")
        MED_P50[$size]=$(median "${p50[@]}")
        MED_P99[$size]=$(median "${p99[@]}")
        MED_MAX[$size]=$(median "${max[@]}")
        LOW_P99[$size]=$(printf '%s\n' "${p99[@]}" | awk 'NF > 0' | sort -g | head -n 1)
        HIGH_P99[$size]=$(printf '%s\n' "${p99[@]}" | awk 'NF > 0' | sort -g | tail -n 1)
done
round_ratios=
for round in $(seq "$rounds"); do
        round_ratios+="${round_ratios:+, }×$(fmt_ratio "${ROW_P99[product-2-$products-round-$round]}" \
                "${ROW_P99[product-2-10-round-$round]}")"
done
flat_ratio=$(fmt_ratio "${MED_P99[$products]}" "${MED_P99[10]}")
# A median p99 that may come from a stalled run says nothing about the
# catalog.
flat_verdict=$(awk -v r="$flat_ratio" -v a="${STALLED[10]}" -v b="${STALLED[$products]}" \
        -v n="$rounds" 'BEGIN {
        if (r == "n/a") print "no figure"
        else if (2 * a >= n || 2 * b >= n) print "inconclusive: the median run stalled"
        else if (r >= 0.9 && r <= 1.1) print "within 10 %"
        else print "more than 10 % apart"
}')
lowest_hit=$(for row in "${FLAT_ROWS[@]}"; do echo "${ROW_HIT[$row]%% *}"; done | sort -g | head -n 1)

{
        echo
        echo "### vigil-inventoryd, $(date -u +%Y-%m-%d) — $(nproc) CPUs, $(uname -sr)"
        echo
        echo "wrk -t$threads -c$connections -d${duration}s --latency, one run after the other;"
        echo "wrk, nginx, inventoryd, PostgreSQL and Redis share the machine."
        echo
        echo "| test | requests/s | p50 | p99 | max | vs nginx | cache hits | errors |"
        echo "|------|-----------:|----:|----:|----:|---------:|-----------:|-------:|"
        for row in "${ROWS[@]}"; do
                [ -n "${LABEL[$row]:-}" ] || continue
                printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$row]}" \
                        "$(fmt_int "${ROW_RPS[$row]}")" "$(fmt_ms "${ROW_P50[$row]}")" \
                        "$(fmt_ms "${ROW_P99[$row]}")" "$(fmt_ms "${ROW_MAX[$row]}")" \
                        "$(fmt_ratio "${ROW_RPS[$row]}" "${ROW_RPS[nginx]}")" \
                        "${ROW_HIT[$row]}" "${ROW_ERR[$row]}"
        done
        printf '| pgbench -S, %s rows (select-only ceiling) | %s tps | avg %s ms | — | — | — | — | — |\n' \
                "$(fmt_int 100000)" "$(fmt_int "${PG_TPS:-0}")" "${PG_LAT:-?}"
        echo
        echo "GET /product/2 with 10 and with $products products, $rounds interleaved rounds,"
        echo "in the order run; before each run: the catalog resized, VACUUM ANALYZE,"
        echo "CHECKPOINT and a ${warmup} s warm-up of the same request; each with"
        echo "wrk -t$flat_threads -c$flat_connections -d${duration}s --latency:"
        echo
        echo "| round | products | requests/s | p50 | p99 | max | local cache hits | local cache off | other CPU |"
        echo "|------:|---------:|-----------:|----:|----:|----:|-----------------:|----------------:|----------:|"
        for row in "${FLAT_ROWS[@]}"; do
                size=${row#product-2-} size=${size%-round-*}
                printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s %% |\n' "${row##*-}" "$size" \
                        "$(fmt_int "${ROW_RPS[$row]}")" "$(fmt_ms "${ROW_P50[$row]}")" \
                        "$(fmt_ms "${ROW_P99[$row]}")" "$(fmt_ms "${ROW_MAX[$row]}")" \
                        "${ROW_LOCAL_HIT[$row]}" "${ROW_LOSSES[$row]}" "${ROW_OTHER_CPU[$row]}"
        done
        for size in 10 "$products"; do
                printf '| median | %s | %s | %s | %s | %s | | | |\n' "$size" \
                        "$(fmt_int "${MED_RPS[$size]}")" "$(fmt_ms "${MED_P50[$size]}")" \
                        "$(fmt_ms "${MED_P99[$size]}")" "$(fmt_ms "${MED_MAX[$size]}")"
        done
        echo
        echo "- /product/2 median p99 with $products products vs 10: ×$flat_ratio" \
                "($flat_verdict); per round $round_ratios. p99 ranged from" \
                "$(fmt_ms "${LOW_P99[10]}") to $(fmt_ms "${HIGH_P99[10]}") with 10 products," \
                "$(fmt_ms "${LOW_P99[$products]}") to $(fmt_ms "${HIGH_P99[$products]}") with" \
                "$products. Runs with a stall (max ≥ $stall_ms ms): ${STALLED[10]} of $rounds" \
                "with 10 products, ${STALLED[$products]} of $rounds with $products. Cache hits" \
                "(local or Redis) in these runs: at least $lowest_hit %."
        echo "- random ids: p99 $(fmt_ms "${ROW_P99[product-random-n]}") with $products products" \
                "vs $(fmt_ms "${ROW_P99[product-random-10]}") with 10 (×$(fmt_ratio \
                "${ROW_P99[product-random-n]}" "${ROW_P99[product-random-10]}"); the larger" \
                "catalog also misses the cache more, see the hit column); slowest" \
                "$(fmt_ms "${ROW_MAX[product-random-n]}"); $(fmt_int "${ROW_RPS[product-random-n]}")" \
                "requests/s = ×$(fmt_ratio "${ROW_RPS[product-random-n]}" "${PG_TPS:-0}") of" \
                "pgbench -S's tps."
        echo "- reservations: $reserved units reserved by $(fmt_int "${ROW_N[reserve]}")" \
                "requests; products with negative stock afterwards: $stock_ok."
        echo "- inventoryd resident memory after the load: VmRSS $RSS_MB MiB, VmHWM $HWM_MB MiB;" \
                "its own pages (RssAnon) $ANON_MB MiB, mapped files, mostly shared libraries" \
                "(RssFile), $FILE_MB MiB."
        echo "- $SCHEDULER_NOTE."
} | tee "$tmp/report.md"

finished=yes
if [ "$serving_errors" -gt 0 ]; then
        note "$serving_errors requests failed (non-2xx responses or socket errors): the figures are suspect"
        keep=yes
        exit 1
fi
