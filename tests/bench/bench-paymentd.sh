#!/usr/bin/env bash
# Benchmark vigil-paymentd's POST /charge with wrk, next to the machine's
# ceilings measured in the same run: nginx serving a static response, and
# `pgbench -N` (the PostgreSQL write-commit ceiling). See docs/benchmarks.md.
#
#   tests/bench/bench-paymentd.sh [--builddir DIR] [--duration SECONDS]
#                                 [--connections N] [--no-durable] [--keep]
#
# PostgreSQL runs with the durability the packages install (fsync,
# full_page_writes and synchronous_commit on: VIGIL_DEV_PG_DURABLE=1 of
# scripts/dev-stack.sh), its data directory in the temporary directory; with
# --no-durable, as the tests run it (fsync=off, full_page_writes=off), which
# is what the figures before the durable runs were taken with. pgbench -N
# runs on the same server, so both figures have the same settings.
#
# It starts PostgreSQL, Redis and RabbitMQ (scripts/dev-stack.sh),
# vigil-authd and vigil-paymentd (processor latency 0, decline ratio 0,
# tracing and access log off) and nginx, on free loopback ports in a
# temporary directory; then runs, one after the other, with
# `wrk -t2 -cN -dSECONDS --latency`:
#
#   1. nginx GET /static                    the HTTP ceiling
#   2. paymentd GET /health                 the HTTP stack alone
#   3. paymentd POST /charge                a unique Idempotency-Key per request:
#                                           authd /verify + claim + commit
#                                           {payment, outbox, key, revenue} + NOTIFY
#   4. pgbench -N -cN -j2 -TSECONDS         PostgreSQL's write-commit ceiling
#
# and reports POST /charge's ratio to pgbench -N, what each charge cost
# PostgreSQL (statements by operation, from paymentd's
# vigil_dependency_request_duration_seconds; writing transactions and WAL
# syncs, from transaction ids and pg_stat_wal; CPU time of each part, from
# /proc), the outbox backlog at the end (the relay publishes with confirms
# while the charges run) and paymentd's resident memory. After the outbox
# drained, vigil-notifyd (send latency 0) consumes every event the run
# published, and the report gives how fast it did and its resident memory
# meanwhile. The daemons run with the Environment= of their systemd units
# (bench_daemon_env). It prints a markdown report; it never fails on the
# figures, only when the set-up does or the charge run serves errors.
# Everything it started is stopped.
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
durable=yes

usage() {
        echo "usage: $prog [--builddir DIR] [--duration SECONDS] [--connections N] [--no-durable] [--keep]" >&2
        exit 2
}

bench_script_option() {
        case $1 in
        --durable) durable=yes ;;
        --no-durable) durable=no ;;
        *) return 1 ;;
        esac
}
bench_parse "$@"
# pgbench runs with as many clients.
[ "$connections" -le 1024 ] || die "--connections must be 2..1024"

bindir() {
        local b="$builddir/src/$1/vigil-$1"
        [ -x "$b" ] || die "$b not found: build it, or pass --builddir"
        echo "$(cd "$(dirname "$b")" && pwd)/vigil-$1"
}
authd=$(bindir authd)
paymentd=$(bindir paymentd)
notifyd=$(bindir notifyd)
for tool in wrk nginx pgbench psql python3 curl timeout; do
        command -v "$tool" >/dev/null ||
                die "$tool not found (Debian packages: wrk nginx-light postgresql-client postgresql-contrib python3 curl coreutils)"
done
if grep -qa __asan_init "$paymentd"; then
        note "warning: $paymentd is built with sanitizers; its figures are not representative"
fi

# The whole run is bounded; the traps still tear down.
args=(--builddir "$builddir" --duration "$duration" --connections "$connections")
[ "$keep" = no ] || args+=(--keep)
[ "$durable" = yes ] || args+=(--no-durable)
bench_under_timeout $((5 * (duration + 5) + 400)) "${args[@]}"

bench_setup paymentd pgbench_pid notifyd_pid paymentd_pid authd_pid

# ------------------------------------------------------------------ servers

if [ "$durable" = yes ]; then
        export VIGIL_DEV_PG_DURABLE=1
else
        export VIGIL_DEV_PG_DURABLE=0
fi
bench_start_stack postgres redis rabbitmq
admin_dsn=$VIGIL_TEST_PG_ADMIN_DSN
sql() {
        psql "${admin_dsn/dbname=postgres/dbname=vigil}" -X -v ON_ERROR_STOP=1 -Atc "$1"
}

mkdir -p "$tmp/auth-credentials" "$tmp/payment-credentials" "$tmp/notify-credentials"
chmod 700 "$tmp/auth-credentials" "$tmp/payment-credentials" "$tmp/notify-credentials"
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp/auth-credentials/jwt-key"
cp "$VIGIL_DEV_PG_PASSWORD_FILE_AUTH" "$tmp/auth-credentials/postgres-password"
cp "$VIGIL_DEV_PG_PASSWORD_FILE_PAYMENT" "$tmp/payment-credentials/postgres-password"
cp "$VIGIL_DEV_PG_PASSWORD_FILE_NOTIFY" "$tmp/notify-credentials/postgres-password"
: >"$tmp/empty.conf"
auth_port=$(free_port)
pay_port=$(free_port)
auth_url="http://127.0.0.1:$auth_port"
pay_url="http://127.0.0.1:$pay_port"

declare -a authd_env
bench_daemon_env authd authd_env
declare -a paymentd_env notifyd_env
bench_daemon_env paymentd paymentd_env
bench_daemon_env notifyd notifyd_env
bench_settings=(VIGIL_TRACING_OTLP_ENDPOINT= VIGIL_LOG_LEVEL=warning VIGIL_HTTP_ACCESS_LOG=false)

note "starting vigil-authd on $auth_url"
"${authd_env[@]}" "${bench_settings[@]}" VIGIL_HTTP_LISTEN="127.0.0.1:$auth_port" \
        VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_AUTH" VIGIL_REDIS_ADDRESS="$VIGIL_REDIS_ADDRESS" \
        CREDENTIALS_DIRECTORY="$tmp/auth-credentials" \
        "$authd" --config "$tmp/empty.conf" </dev/null >"$tmp/authd.log" 2>&1 &
# shellcheck disable=SC2034 # stopped through BENCH_PIDS
authd_pid=$!
wait_for 60 answers_200 "$auth_url/ready" || die "authd is not ready after 60s"

note "starting vigil-paymentd on $pay_url (processor latency 0, decline ratio 0)"
"${paymentd_env[@]}" "${bench_settings[@]}" VIGIL_HTTP_LISTEN="127.0.0.1:$pay_port" \
        VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_PAYMENT" VIGIL_AMQP_URL="$VIGIL_AMQP_URL" \
        VIGIL_AUTH_URL="$auth_url" VIGIL_PROCESSOR_LATENCY_MS=0 \
        VIGIL_PROCESSOR_DECLINE_RATIO=0 CREDENTIALS_DIRECTORY="$tmp/payment-credentials" \
        "$paymentd" --config "$tmp/empty.conf" </dev/null >"$tmp/paymentd.log" 2>&1 &
paymentd_pid=$!
wait_for 60 answers_200 "$pay_url/ready" || die "paymentd is not ready after 60s"

bench_start_nginx

# ------------------------------------------------------------- user, token

bench_login "$auth_url"
run_id=$(od -An -tx1 -N4 /dev/urandom | tr -d ' \n')

# One charge per request, each with its own Idempotency-Key
# ($BENCH_RUN-<thread>-<counter>), so every request is a new charge.
cat >"$tmp/charge.lua" <<'EOF'
local token = os.getenv("BENCH_TOKEN")
local run = os.getenv("BENCH_RUN") or "run"
local threads = 0
local counter = 0

function setup(thread)
        threads = threads + 1
        thread:set("thread_id", threads)
end

function request()
        counter = counter + 1
        return wrk.format("POST", "/charge", {
                ["Content-Type"] = "application/json",
                ["Authorization"] = "Bearer " .. token,
                ["Idempotency-Key"] = string.format("%s-%d-%d", run, thread_id or 0, counter),
        }, '{"amount": 19.99}')
end
EOF
status=$(http_status -X POST -H 'Content-Type: application/json' \
        -H "Authorization: Bearer $BENCH_TOKEN" -H "Idempotency-Key: $run_id-probe" \
        --data '{"amount": 19.99}' "$pay_url/charge")
[ "$status" = 201 ] || die "a probe POST /charge answered $status, not 201"

# ---------------------------------------------------------------------- wrk

declare -A LABEL

# measure NAME URL [LUA] [SECONDS]: wrk_run (BENCH_RUN names the run, so
# keys are <run>-<name>-<thread>-<n> and no run replays another's).
measure() {
        export BENCH_RUN="$run_id-$1"
        wrk_run "$1" $threads "$connections" "${4:-$duration}" "$2" "${3:-}"
}

note "each run: wrk -t$threads -c$connections -d${duration}s --latency"
note "1/4 nginx GET /static (ceiling)"
LABEL[nginx]="nginx GET /static (ceiling)"
measure nginx "http://127.0.0.1:$nginx_port/static"
record nginx

note "2/4 paymentd GET /health"
LABEL[health]="paymentd GET /health"
measure health "$pay_url/health"
record health

# The next transaction id (so a delta counts the transactions that wrote,
# each with a commit record to flush; read-only ones take none) and
# pg_stat_wal's WAL syncs (the whole server: backends, WAL writer,
# checkpointer), as "xid syncs". A backend sends its WAL counters at most
# once a second (and when idle), so that delta is exact to about a
# second's worth of work.
pg_counters() {
        psql "$admin_dsn" -X -At -F ' ' -c "SELECT
                txid_snapshot_xmax(txid_current_snapshot()), (SELECT wal_sync FROM pg_stat_wal)"
}
# Calls to PostgreSQL paymentd has made, by operation, as "OPERATION COUNT
# SECONDS" lines (its vigil_dependency_request_duration_seconds).
pg_calls() {
        curl -sf --max-time 10 "$pay_url/metrics" | awk '
                /^vigil_dependency_request_duration_seconds_(count|sum)\{/ &&
                    /dependency="postgres"/ {
                        op = $0; sub(/.*operation="/, "", op); sub(/".*/, "", op)
                        if ($1 ~ /_count\{/) n[op] += $2; else t[op] += $2
                }
                END {for (op in n) print op, n[op], t[op] + 0}' | sort
}

# CPU time (clock ticks) used so far by each part of the path, as
# "paymentd authd postgres rabbitmq machine now": the daemons, the
# postmaster with its backends, the RabbitMQ node's processes, every CPU
# of the machine (/proc/stat, all but idle and iowait, whoever used it),
# and the time (seconds).
cpu_ticks() {
        local pg mq
        pg=$(head -n 1 "$tmp/stack/postgres/data/postmaster.pid")
        mapfile -t mq < <(pgrep -f -- "$tmp/stack/rabbitmq/")
        echo "$(proc_ticks "$paymentd_pid") $(proc_ticks "$authd_pid") $(proc_ticks "$pg")" \
                "$(proc_ticks "${mq[@]}")" \
                "$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat)" \
                "${EPOCHREALTIME/,/.}"
}

note "warming up POST /charge (3s, not recorded)"
measure warmup "$pay_url/charge" "$tmp/charge.lua" 3
payments_before=$(sql "SELECT count(*) FROM payment.payments")
pg_calls >"$tmp/pg-calls-before.txt"
read -r commits_before syncs_before < <(pg_counters)
read -r -a cpu_before < <(cpu_ticks)
note "3/4 paymentd POST /charge (unique keys, latency 0, decline 0)"
LABEL[charge]="paymentd POST /charge"
measure charge "$pay_url/charge" "$tmp/charge.lua"
read -r -a cpu_after < <(cpu_ticks)
record charge
payments_after=$(sql "SELECT count(*) FROM payment.payments")
charge_requests=${ROW_N[charge]}
pending_end=$(sql "SELECT count(*) FROM payment.outbox WHERE published_at IS NULL")
drain_start=$SECONDS
outbox_drained() {
        [ "$(sql "SELECT count(*) FROM payment.outbox WHERE published_at IS NULL")" = 0 ]
}
wait_for 120 outbox_drained ||
        note "warning: the outbox did not drain within 120 s"
drain_seconds=$((SECONDS - drain_start))
# The charges' counters, their relay's work included (the backlog drained).
read -r commits_after syncs_after < <(pg_counters)
pg_calls >"$tmp/pg-calls-after.txt"
charges_run=$((payments_after - payments_before))
per_charge() {
        awk -v a="$1" -v n="$charges_run" 'BEGIN {printf "%.2f\n", (n > 0 ? a / n : 0)}'
}
# CPU per charge, in ms, of each part; and how busy the machine was.
hz=$(getconf CLK_TCK)
cpu_ms() {
        awk -v t="$1" -v hz="$hz" -v n="$charges_run" 'BEGIN {printf "%.2f\n", (n > 0 ? t * 1000 / hz / n : 0)}'
}
CPU_PAY=$(cpu_ms $((cpu_after[0] - cpu_before[0])))
CPU_AUTH=$(cpu_ms $((cpu_after[1] - cpu_before[1])))
CPU_PG=$(cpu_ms $((cpu_after[2] - cpu_before[2])))
CPU_MQ=$(cpu_ms $((cpu_after[3] - cpu_before[3])))
# busy TICKS_BEFORE TICKS_AFTER SECONDS_BEFORE SECONDS_AFTER: the
# machine's CPUs busy in between, in %.
busy() {
        awk -v t=$(($2 - $1)) -v hz="$hz" -v s="$(awk -v a="$3" -v b="$4" 'BEGIN {print b - a}')" \
                -v c="$(nproc)" 'BEGIN {printf "%.0f\n", (s > 0 ? t / hz / s / c * 100 : 0)}'
}
CPU_BUSY=$(busy "${cpu_before[4]}" "${cpu_after[4]}" "${cpu_before[5]}" "${cpu_after[5]}")
CHARGE_COMMITS=$(per_charge $((commits_after - commits_before)))
CHARGE_SYNCS=$(per_charge $((syncs_after - syncs_before)))
# "OP n/charge (mean ms)" for each operation, and the totals.
read -r CHARGE_STATEMENTS CHARGE_PG_MS < <(awk -v n="$charges_run" '
        NR == FNR {c[$1] = $2; t[$1] = $3; next}
        {dn = $2 - c[$1]; dt = $3 - t[$1]; sn += dn; st += dt}
        END {printf "%.2f %.2f\n", (n > 0 ? sn / n : 0), (n > 0 ? st * 1000 / n : 0)}' \
        "$tmp/pg-calls-before.txt" "$tmp/pg-calls-after.txt")
CHARGE_OPS=$(awk -v n="$charges_run" '
        NR == FNR {c[$1] = $2; t[$1] = $3; next}
        {dn = $2 - c[$1]; dt = $3 - t[$1]
         if (dn > 0 && n > 0) {
                 printf "%s%s %.2f (%.2f ms)", sep, $1, dn / n, dt * 1000 / dn
                 sep = ", "
         }}' "$tmp/pg-calls-before.txt" "$tmp/pg-calls-after.txt")
read -r RSS_MB HWM_MB < <(read_memory "$paymentd_pid")
read -r ANON_MB FILE_MB < <(read_anon_memory "$paymentd_pid")

# notifyd consumes what the run published: every payment made so far.
notify_port=$(free_port)
note "starting vigil-notifyd on 127.0.0.1:$notify_port (send latency 0) to consume the events"
"${notifyd_env[@]}" "${bench_settings[@]}" VIGIL_HTTP_LISTEN="127.0.0.1:$notify_port" \
        VIGIL_POSTGRES_DSN="$VIGIL_DEV_PG_DSN_NOTIFY" VIGIL_AMQP_URL="$VIGIL_AMQP_URL" \
        VIGIL_PROCESSOR_SEND_LATENCY_MS=0 CREDENTIALS_DIRECTORY="$tmp/notify-credentials" \
        "$notifyd" --config "$tmp/empty.conf" </dev/null >"$tmp/notifyd.log" 2>&1 &
notifyd_pid=$!
notified() {
        sql "SELECT count(*) FROM notify.notifications"
}
# Sampled every half second while it consumes: the largest VmRSS seen.
NOTIFY_RSS_MB=0
notify_consumed() {
        local rss
        read -r rss _ < <(read_memory "$notifyd_pid")
        NOTIFY_RSS_MB=$(awk -v a="$rss" -v b="$NOTIFY_RSS_MB" 'BEGIN {print (a > b ? a : b)}')
        [ "$(notified)" -ge "$payments_after" ]
}
notify_start=$SECONDS
if wait_for 300 notify_consumed; then
        notify_seconds=$((SECONDS - notify_start))
        NOTIFY_RATE=$(awk -v n="$payments_after" -v s="$notify_seconds" \
                'BEGIN {printf "%.0f\n", n / (s > 0 ? s : 1)}')
else
        note "warning: notifyd did not record every event within 300 s"
        notify_seconds=timeout NOTIFY_RATE="?"
fi
NOTIFIED=$(notified)
read -r _ NOTIFY_HWM_MB < <(read_memory "$notifyd_pid")

note "4/4 pgbench -N -c$connections -j$threads -T$duration (write-commit ceiling)"
psql "$admin_dsn" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE vigil_bench" >/dev/null
bench_dsn=${admin_dsn/dbname=postgres/dbname=vigil_bench}
pgbench -i -q -s 10 "$bench_dsn" >"$tmp/pgbench-init.log" 2>&1 || die "pgbench -i failed"
read -r pgb_commits_before pgb_syncs_before < <(pg_counters)
read -r -a pgb_cpu_before < <(cpu_ticks)
pgbench -N -c "$connections" -j $threads -T "$duration" "$bench_dsn" </dev/null \
        >"$tmp/pgbench.txt" 2>&1 &
pgbench_pid=$!
wait "$pgbench_pid" || die "pgbench failed: $(tail -n 3 "$tmp/pgbench.txt")"
pgbench_pid=
read -r pgb_commits_after pgb_syncs_after < <(pg_counters)
read -r -a pgb_cpu_after < <(cpu_ticks)
PG_TPS=$(awk -F'= ' '/^tps = / {split($2, a, " "); print a[1]; exit}' "$tmp/pgbench.txt")
PG_LAT=$(awk -F'= ' '/^latency average = / {split($2, a, " "); print a[1]; exit}' "$tmp/pgbench.txt")
PG_TX=$(awk '/^number of transactions actually processed: / {print $6; exit}' "$tmp/pgbench.txt")
PG_CPU=$(awk -v t=$((pgb_cpu_after[2] - pgb_cpu_before[2])) -v hz="$hz" -v n="${PG_TX:-0}" \
        'BEGIN {printf "%.2f\n", (n > 0 ? t * 1000 / hz / n : 0)}')
PG_BUSY=$(busy "${pgb_cpu_before[4]}" "${pgb_cpu_after[4]}" "${pgb_cpu_before[5]}" \
        "${pgb_cpu_after[5]}")
PG_SYNCS=$(awk -v s=$((pgb_syncs_after - pgb_syncs_before)) -v n="${PG_TX:-0}" \
        'BEGIN {printf "%.2f\n", (n > 0 ? s / n : 0)}')
PG_COMMITS=$(awk -v s=$((pgb_commits_after - pgb_commits_before)) -v n="${PG_TX:-0}" \
        'BEGIN {printf "%.2f\n", (n > 0 ? s / n : 0)}')
PG_SETTINGS=$(psql "$admin_dsn" -X -Atc "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name)
        FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes',
                'wal_sync_method', 'shared_buffers', 'commit_delay')")
PG_FS=$(findmnt -n -o FSTYPE,SOURCE,OPTIONS --target "$tmp/stack/postgres/data" | awk '{print $1 " on " $2 " (" $3 ")"}')

# ------------------------------------------------------------------- report

{
        echo
        echo "### vigil-paymentd, $(date -u +%Y-%m-%d) — $(nproc) CPUs, $(uname -sr)"
        echo
        echo "wrk -t$threads -c$connections -d${duration}s --latency and pgbench -N -c$connections"
        echo "-j$threads -T$duration, one after the other; all servers share the machine."
        if [ "$durable" = yes ]; then
                echo "PostgreSQL durable as the packages install it (\`VIGIL_DEV_PG_DURABLE=1\`)."
        else
                echo "PostgreSQL **not durable** (\`--no-durable\`: fsync=off, full_page_writes=off)."
        fi
        echo
        echo "| test | requests/s | p50 | p99 | vs nginx | errors |"
        echo "|------|-----------:|----:|----:|---------:|-------:|"
        for row in "${ROWS[@]}"; do
                printf '| %s | %s | %s | %s | %s | %s |\n' "${LABEL[$row]}" \
                        "$(fmt_int "${ROW_RPS[$row]}")" "$(fmt_ms "${ROW_P50[$row]}")" \
                        "$(fmt_ms "${ROW_P99[$row]}")" \
                        "$(fmt_ratio "${ROW_RPS[$row]}" "${ROW_RPS[nginx]}")" "${ROW_ERR[$row]}"
        done
        printf '| pgbench -N (write-commit ceiling) | %s tps | avg %s ms | — | — | — |\n' \
                "$(fmt_int "${PG_TPS:-0}")" "${PG_LAT:-?}"
        echo
        echo "- **POST /charge / pgbench -N = $(fmt_ratio "${ROW_RPS[charge]}" "${PG_TPS:-0}")**" \
                "($(fmt_int "${ROW_RPS[charge]}")/s against $(fmt_int "${PG_TPS:-0}") tps, same server," \
                "same settings)."
        echo "- charges committed in the measured run: $charges_run" \
                "for ${charge_requests:-?} requests answered."
        echo "- per charge, paymentd's statements to PostgreSQL (its relay's included):" \
                "$CHARGE_STATEMENTS, $CHARGE_PG_MS ms in all; by operation, calls per charge" \
                "(mean time per call): $CHARGE_OPS."
        echo "- per charge, transactions that wrote (a commit record each): $CHARGE_COMMITS," \
                "WAL syncs: $CHARGE_SYNCS; per pgbench -N transaction: $PG_COMMITS and $PG_SYNCS" \
                "(transaction ids and pg_stat_wal, whole server)."
        echo "- CPU per charge: paymentd $CPU_PAY ms, authd $CPU_AUTH ms, PostgreSQL $CPU_PG ms," \
                "RabbitMQ $CPU_MQ ms; the machine's CPUs were ${CPU_BUSY} % busy (everyone's" \
                "work). Per pgbench -N transaction: PostgreSQL $PG_CPU ms, machine ${PG_BUSY} % busy."
        echo "- outbox backlog when the run ended: $pending_end events, drained" \
                "${drain_seconds}s later (publisher confirms, batches of up to 100)."
        echo "- paymentd resident memory after the load: VmRSS $RSS_MB MiB, VmHWM $HWM_MB MiB;" \
                "its own pages (RssAnon) $ANON_MB MiB, mapped files, mostly shared libraries" \
                "(RssFile), $FILE_MB MiB."
        echo "- notifyd recorded $NOTIFIED notifications for $payments_after payments in" \
                "${notify_seconds}s (about $NOTIFY_RATE/s, one transaction each, send latency 0);" \
                "resident memory while it consumed: VmRSS up to $NOTIFY_RSS_MB MiB, VmHWM" \
                "$NOTIFY_HWM_MB MiB."
        echo "- environment from the units: paymentd ${UNIT_ENV[paymentd]}; notifyd" \
                "${UNIT_ENV[notifyd]}; authd ${UNIT_ENV[authd]}."
        echo "- PostgreSQL settings of the dev stack: $PG_SETTINGS; data directory on $PG_FS."
        echo "- $SCHEDULER_NOTE."
} | tee "$tmp/report.md"

finished=yes
if [ "${ROW_ERR[charge]}" -gt 0 ]; then
        note "${ROW_ERR[charge]} charges failed (non-2xx or socket errors): the figures are suspect"
        keep=yes
        exit 1
fi
