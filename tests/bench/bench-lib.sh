# What the tests/bench/bench-*.sh scripts share; sourced, not run.
#
# The script sets prog, srcdir, benchdir, builddir, duration, connections
# and keep (parsing its own options), then calls, in this order:
#
#   bench_check_options                 validate --duration, --connections
#                                       (and --rounds, where the script has it)
#   bench_under_timeout BUDGET ARGS…    re-run itself under timeout(1)
#   bench_setup NAME PIDVAR…            $tmp, and the traps that stop the
#                                       processes in PIDVAR… (in that order),
#                                       the dev stack, and keep or remove $tmp
#
# and then uses the helpers below. Every wrk output lands in $tmp/NAME.txt.
# shellcheck shell=bash disable=SC2154 # prog, duration, … are the script's

threads=2

die() {
        echo "$prog: $*" >&2
        exit 1
}

note() {
        echo "$prog: $*" >&2
}

# bench_option ARGS...: the option at the head of ARGS if it is one every
# script takes, or one of the valued options named in BENCH_OPTIONS (e.g.
# "rounds products"): --NAME VALUE or --NAME=VALUE sets $NAME; --keep sets
# keep=yes. Sets bench_shift to the words it took, 0 when it is none of
# them (the script's own case handles it). A value missing: usage.
# shellcheck disable=SC2034 # bench_shift, keep and the options: read by the script
bench_option() {
        local name=${1%%=*}
        name=${name#--}
        bench_shift=0
        if [ "$1" = --keep ]; then
                keep=yes bench_shift=1
        elif [[ " builddir duration connections ${BENCH_OPTIONS:-} " == *" $name "* ]] &&
                [ "$1" != "${1#--}" ] && [ -n "$name" ]; then
                if [ "$1" != "--$name" ]; then
                        printf -v "$name" '%s' "${1#*=}"
                        bench_shift=1
                else
                        [ $# -ge 2 ] || usage
                        printf -v "$name" '%s' "$2"
                        bench_shift=2
                fi
        fi
}

# bench_parse ARGS...: the command line, with bench_option(); a flag of
# the script's own goes to its bench_script_option FLAG (it returns
# non-zero for one it does not know); anything else: usage. Then
# bench_check_options.
bench_parse() {
        while [ $# -gt 0 ]; do
                bench_option "$@"
                if [ "$bench_shift" -eq 0 ]; then
                        case $1 in -h | --help) usage ;; esac
                        if ! declare -F bench_script_option >/dev/null ||
                                ! bench_script_option "$1"; then
                                usage
                        fi
                        bench_shift=1
                fi
                shift "$bench_shift"
        done
        bench_check_options
}

bench_check_options() {
        if ! [[ "$duration" =~ ^[0-9]+$ ]] || [ "$duration" -lt 1 ] || [ "$duration" -gt 600 ]; then
                die "--duration must be 1..600 seconds"
        fi
        if ! [[ "$connections" =~ ^[0-9]+$ ]] || [ "$connections" -lt 2 ] ||
                [ "$connections" -gt 4096 ]; then
                die "--connections must be 2..4096"
        fi
        # --rounds, for the scripts that compare in interleaved rounds.
        if [ -n "${rounds:-}" ] && { ! [[ "$rounds" =~ ^[0-9]+$ ]] || [ "$rounds" -lt 1 ] ||
                [ "$rounds" -gt 20 ]; }; then
                die "--rounds must be 1..20"
        fi
}

# bench_under_timeout BUDGET ARGS…: the whole run is bounded; the script
# re-runs itself (with ARGS) under timeout(1), and its traps still tear
# down.
bench_under_timeout() {
        local budget=$1
        shift
        [ -z "${VIGIL_BENCH_UNDER_TIMEOUT:-}" ] || return 0
        export VIGIL_BENCH_UNDER_TIMEOUT=$budget
        exec timeout -k 30 "$budget" "$0" "$@"
}

stop_pid() {
        local pid=$1
        [ -n "$pid" ] || return 0
        kill -TERM "$pid" 2>/dev/null || return 0
        for _ in $(seq 100); do
                kill -0 "$pid" 2>/dev/null || return 0
                sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
}

bench_cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        for var in "${BENCH_PIDS[@]}"; do
                stop_pid "${!var}"
        done
        if [ -n "$autogroup_was" ]; then
                echo "$autogroup_was" >"$autogroup_knob" 2>/dev/null ||
                        note "could not restore kernel.sched_autogroup_enabled to $autogroup_was"
        fi
        if [ "$stack_started" = yes ]; then
                "$srcdir/scripts/dev-stack.sh" stop "$tmp/stack" >>"$tmp/stack.log" 2>&1 || true
        fi
        if [ "$finished" != yes ]; then
                note "failed; last lines of the logs:"
                for f in "$tmp"/*.log "$tmp/nginx/error.log"; do
                        [ -s "$f" ] || continue
                        echo "---- $f" >&2
                        tail -n 15 "$f" >&2
                done
        fi
        if [ "$keep" = yes ] || [ "$finished" != yes ]; then
                note "logs and wrk outputs kept in $tmp"
        else
                rm -rf "$tmp"
        fi
        exit "$rc"
}

# bench_setup NAME PIDVAR…: sets tmp, stack_started=no, finished=no (the
# script sets it to yes when its report is out), empties each PIDVAR and
# installs the traps.
bench_setup() {
        tmp=$(mktemp -d "/tmp/vigil-bench-$1.XXXXXX")
        chmod 755 "$tmp"
        shift
        BENCH_PIDS=(wrk_pid "$@" nginx_pid)
        for var in "${BENCH_PIDS[@]}"; do
                printf -v "$var" '%s' ''
        done
        stack_started=no
        finished=no
        autogroup_was=
        trap bench_cleanup EXIT
        trap 'exit 130' INT
        trap 'note "interrupted (time budget ${VIGIL_BENCH_UNDER_TIMEOUT}s exceeded?)"; exit 143' TERM
        bench_scheduler
}

# The kernel's scheduler autogroups (kernel.sched_autogroup_enabled) share
# the CPUs between sessions first, then between the processes of each.
# Every PostgreSQL backend starts a session of its own, while wrk, nginx,
# Redis and the daemons run in the script's: on 2 CPUs each backend then
# gets as much CPU as all of those together, and the tails measured that
# (docs/benchmarks.md). Off for the run, so that every thread competes on
# equal terms, and restored on exit; VIGIL_BENCH_AUTOGROUP=keep leaves it.
# Sets SCHEDULER_NOTE for the report.
autogroup_knob=/proc/sys/kernel/sched_autogroup_enabled
bench_scheduler() {
        local was
        was=$(cat "$autogroup_knob" 2>/dev/null) || was=
        if [ -z "$was" ]; then
                SCHEDULER_NOTE="no scheduler autogroups in this kernel"
        elif [ "$was" = 0 ]; then
                SCHEDULER_NOTE="scheduler autogroups off (kernel.sched_autogroup_enabled 0)"
        elif [ "${VIGIL_BENCH_AUTOGROUP:-}" = keep ]; then
                SCHEDULER_NOTE="scheduler autogroups ON (VIGIL_BENCH_AUTOGROUP=keep): the tails include PostgreSQL's sessions' shares"
        elif echo 0 >"$autogroup_knob" 2>/dev/null; then
                autogroup_was=$was
                SCHEDULER_NOTE="scheduler autogroups off for the run (kernel.sched_autogroup_enabled $was, restored after)"
        else
                SCHEDULER_NOTE="scheduler autogroups ON (kernel.sched_autogroup_enabled could not be set): the tails include PostgreSQL's sessions' shares"
        fi
        note "$SCHEDULER_NOTE"
}

free_port() {
        python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# Wait up to $1 seconds for the command to succeed.
wait_for() {
        local deadline=$((SECONDS + $1))
        shift
        until "$@"; do
                [ "$SECONDS" -lt "$deadline" ] || return 1
                sleep 0.2
        done
}

http_status() {
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true
}

answers_200() {
        [ "$(http_status "$1")" = 200 ]
}

# bench_start_stack SERVICE…: the dev stack in $tmp/stack, its env sourced.
bench_start_stack() {
        note "starting $* (scripts/dev-stack.sh)"
        stack_started=yes
        # Its stdout is the env file, which holds passwords: not kept in the log.
        "$srcdir/scripts/dev-stack.sh" start "$tmp/stack" "$@" >/dev/null 2>"$tmp/stack.log" ||
                die "the dev stack did not start"
        # shellcheck disable=SC1091
        . "$tmp/stack/env"
}

# bench_start_nginx: nginx serving GET /static on nginx_port (the ceiling).
bench_start_nginx() {
        local user=
        nginx_port=$(free_port)
        mkdir -p "$tmp/nginx"
        if [ "$(id -u)" -eq 0 ]; then
                # Workers drop to an unprivileged user; its group is distro-specific.
                user="user nobody $(id -gn nobody);"
        fi
        sed -e "s|@PREFIX@|$tmp/nginx|g" -e "s|@PORT@|$nginx_port|g" -e "s|@USER@|$user|g" \
                "$benchdir/nginx-static.conf.in" >"$tmp/nginx/nginx.conf"
        note "starting nginx on 127.0.0.1:$nginx_port"
        nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -g 'daemon off;' </dev/null \
                >"$tmp/nginx/stdout.log" 2>&1 &
        # shellcheck disable=SC2034 # stopped through BENCH_PIDS
        nginx_pid=$!
        wait_for 20 answers_200 "http://127.0.0.1:$nginx_port/static" ||
                die "nginx does not answer on 127.0.0.1:$nginx_port"
}

# bench_login AUTH_URL: register a new user with authd and export its
# token as BENCH_TOKEN (the bearer token the Lua scripts send).
bench_login() {
	local user password credentials status body
	user="bench_$(od -An -tx1 -N6 /dev/urandom | tr -d ' \n')"
	password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
	credentials="{\"username\":\"$user\",\"password\":\"$password\"}"
	status=$(http_status -X POST -H 'Content-Type: application/json' --data "$credentials" \
		"$1/register")
	[ "$status" = 201 ] || die "POST /register answered $status, not 201"
	body=$(curl -sf --max-time 10 -X POST -H 'Content-Type: application/json' \
		--data "$credentials" "$1/login") || die "POST /login failed"
	export BENCH_TOKEN
	BENCH_TOKEN=$(printf '%s' "$body" | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
}

# bench_daemon_env NAME ARRAY: sets ARRAY to an env(1) command that clears
# what systemd hands a service (JOURNAL_STREAM, NOTIFY_SOCKET, LISTEN_*)
# and sets what units/vigil-NAME.service.in sets with Environment=, so
# that the benchmark runs the daemon as its unit does. The settings, for
# the report, go to UNIT_ENV[NAME] ("none" without any).
declare -A UNIT_ENV
bench_daemon_env() {
        local -n out=$2
        local unit="$srcdir/units/vigil-$1.service.in" line settings=()
        [ -r "$unit" ] || die "$unit not found"
        while IFS= read -r line; do
                [[ "$line" =~ ^[A-Za-z_][A-Za-z0-9_]*=[^[:space:]\"\']*$ ]] ||
                        die "$unit: Environment=$line is not one unquoted VAR=value"
                settings+=("$line")
        done < <(sed -n 's/^Environment=//p' "$unit")
        # shellcheck disable=SC2034 # for the caller
        out=(env -u JOURNAL_STREAM -u NOTIFY_SOCKET -u LISTEN_FDS -u LISTEN_PID "${settings[@]}")
        # shellcheck disable=SC2034 # for the caller
        UNIT_ENV[$1]=${settings[*]:-none}
}

# bench_daemon_binary NAME: the absolute path of vigil-NAME in $builddir;
# dies when it is not built, warns when it has sanitizers.
bench_daemon_binary() {
        local bin="$builddir/src/$1/vigil-$1"
        [ -x "$bin" ] || die "$bin not found: build it, or pass --builddir"
        bin=$(cd "$(dirname "$bin")" && pwd)/vigil-$1
        if grep -qa __asan_init "$bin"; then
                note "warning: $bin is built with sanitizers; its figures are not representative"
        fi
        echo "$bin"
}

# bench_credentials NAME: the directory $tmp/NAME-credentials (made on the
# first call) that vigil-NAMEd's CREDENTIALS_DIRECTORY points to: the dev
# stack's PostgreSQL password of the service, and for auth a random 32-byte
# jwt-key (64 hex characters). Prints its path.
bench_credentials() {
        local dir="$tmp/$1-credentials" password_file
        if [ ! -d "$dir" ]; then
                mkdir -p "$dir"
                chmod 700 "$dir"
                password_file=VIGIL_DEV_PG_PASSWORD_FILE_${1^^}
                cp "${!password_file}" "$dir/postgres-password"
                [ "$1" != auth ] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$dir/jwt-key"
        fi
        echo "$dir"
}

# bench_start_daemon NAME LOG PIDVAR URL CREDENTIALS [VAR=value…]: start
# vigil-NAME from the build (checked by bench_daemon_binary) as its unit does (bench_daemon_env), with an
# empty --config, listening at URL (http://127.0.0.1:PORT), its
# credentials from the directory CREDENTIALS, Redis from the dev stack,
# tracing export and the access log off and the log level warning, then
# VAR=value… (which override those); its output in $tmp/LOG.log, its pid in
# PIDVAR. Returns once GET /ready answers 200 (schema migrated,
# dependencies answering), and dies when it does not within 60 s or the
# process exits.
bench_start_daemon() {
        local name=$1 log=$2 pidvar=$3 url=$4 credentials=$5 pid
        shift 5
        local -a daemon_env
        bench_daemon_env "$name" daemon_env
        : >"$tmp/empty.conf"
        "${daemon_env[@]}" \
                VIGIL_HTTP_LISTEN="${url#http://}" \
                VIGIL_REDIS_ADDRESS="$VIGIL_REDIS_ADDRESS" \
                VIGIL_TRACING_OTLP_ENDPOINT= \
                VIGIL_LOG_LEVEL=warning \
                VIGIL_HTTP_ACCESS_LOG=false \
                CREDENTIALS_DIRECTORY="$credentials" \
                "$@" "$builddir/src/$name/vigil-$name" --config "$tmp/empty.conf" </dev/null >"$tmp/$log.log" 2>&1 &
        pid=$!
        printf -v "$pidvar" '%s' "$pid"
        wait_for 60 bench_ready_or_dead "$url" "$pid" || die "$log is not ready after 60s"
        kill -0 "$pid" 2>/dev/null || die "$log exited during start-up"
}

# bench_ready_or_dead URL PID: ready, or dead (so a crash is not waited out).
bench_ready_or_dead() {
        answers_200 "$1/ready" || ! kill -0 "$2" 2>/dev/null
}

# Convert a wrk duration (123.45us, 1.23ms, 2.00s, 1.50m) to milliseconds.
to_ms() {
        awk -v t="$1" 'BEGIN {
                if (match(t, /^[0-9.]+/) == 0) { print ""; exit }
                v = substr(t, 1, RLENGTH); u = substr(t, RLENGTH + 1)
                if (u == "us") f = 0.001
                else if (u == "ms") f = 1
                else if (u == "s") f = 1000
                else if (u == "m") f = 60000
                else if (u == "h") f = 3600000
                else { print ""; exit }
                printf "%.3f\n", v * f
        }'
}

# wrk_start NAME THREADS CONNECTIONS SECONDS URL [LUA]: wrk in the
# background, output in $tmp/NAME.txt. LUA is a path, or a file name in
# tests/bench.
wrk_start() {
        local name=$1 threads=$2 conns=$3 secs=$4 url=$5 lua=${6:-}
        local args=(-t"$threads" -c"$conns" -d"${secs}s" --timeout 10s --latency)
        [ -z "$lua" ] || [[ "$lua" == /* ]] || lua=$benchdir/$lua
        [ -z "$lua" ] || args+=(-s "$lua")
        wrk "${args[@]}" "$url" </dev/null >"$tmp/$name.txt" 2>&1 &
}

# wrk_run: wrk_start, then wait (in the background, so a TERM is handled
# at once).
wrk_run() {
        wrk_start "$@"
        wrk_pid=$!
        wait "$wrk_pid" || die "wrk failed for $1: $(tail -n 3 "$tmp/$1.txt")"
        wrk_pid=
}

# record NAME [EXTRA]: adds NAME to ROWS with its requests/s, p50, p99 and
# maximum latency (ms), errors (non-2xx/3xx responses plus socket errors)
# and request count in ROW_RPS, ROW_P50, ROW_P99, ROW_MAX, ROW_ERR and
# ROW_N; notes them, and EXTRA.
#
# wrk corrects its percentiles for coordinated omission: with T the mean
# time between two requests of one connection, a response that took S adds
# about S/T samples spread evenly between T and S. One stall of a few
# hundred ms in a run of 0.5 ms responses thus moves the p99 by tens or
# hundreds of ms, and ROW_MAX shows that it happened.
declare -A ROW_RPS ROW_P50 ROW_P99 ROW_MAX ROW_ERR ROW_N
ROWS=()
record() {
        local f="$tmp/$1.txt"
        ROWS+=("$1")
        ROW_RPS[$1]=$(awk '/^Requests\/sec:/ {print $2}' "$f")
        ROW_N[$1]=$(awk '/ requests in / {print $1}' "$f")
        ROW_P50[$1]=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
        ROW_P99[$1]=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
        ROW_MAX[$1]=$(to_ms "$(awk '$1 == "Latency" && $2 != "Distribution" {print $4}' "$f")")
        ROW_ERR[$1]=$(awk '
                /Non-2xx or 3xx responses:/ {n += $NF}
                /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10}
                END {print n + 0}' "$f")
        ROW_RPS[$1]=${ROW_RPS[$1]:-0} ROW_N[$1]=${ROW_N[$1]:-0}
        note "$1: ${ROW_RPS[$1]} req/s, p50 ${ROW_P50[$1]:-?} ms, p99 ${ROW_P99[$1]:-?} ms," \
                "max ${ROW_MAX[$1]:-?} ms, ${ROW_ERR[$1]} errors${2:+, $2}"
}

# read_status_mib PID FIELD...: the /proc/PID/status fields (kB), in MiB,
# space-separated in the order asked.
read_status_mib() {
        local pid=$1
        shift
        awk -v fields="$*" 'BEGIN {n = split(fields, want, " ")}
             {sub(":", "", $1); kb[$1] = $2}
             END {for (i = 1; i <= n; i++) printf "%.1f%s", kb[want[i]] / 1024, i < n ? " " : "\n"}' \
                "/proc/$pid/status"
}

# read_memory PID: "VmRSS VmHWM" in MiB.
read_memory() {
        read_status_mib "$1" VmRSS VmHWM
}

# read_anon_memory PID: "RssAnon RssFile" in MiB: the process's own pages,
# and the pages of files it maps (mostly shared libraries, shared with every
# process that uses them), which VmRSS adds up.
read_anon_memory() {
        read_status_mib "$1" RssAnon RssFile
}

# proc_ticks PID...: the CPU time (user and system, in clock ticks) the
# processes have used so far, with that of the children they reaped and of
# those still running.
proc_ticks() {
        # A process that exits between the glob and the read makes cat fail,
        # which pipefail would turn into this function's failure.
        { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$*" '
                BEGIN {n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1}
                {
                        pid = $1
                        sub(/^.*\) /, "")      # after "pid (comm) ": state ppid … utime
                        if (pid in root) ticks += $12 + $13 + $14 + $15
                        else if ($2 in root) ticks += $12 + $13
                }
                END {print ticks + 0}'
}

# fmt_ratio A B: A / B to two significant places at least, or "n/a".
fmt_ratio() {
        awk -v a="$1" -v b="$2" 'BEGIN {
                if (a == "" || b == "" || b + 0 == 0) print "n/a"
                else if (a / b >= 0.1) printf "%.2f\n", a / b
                else printf "%.3f\n", a / b
        }'
}

# median V…: the median of the numbers given, empty ones left out (the mean
# of the middle two for an even count); nothing when none is left.
median() {
        printf '%s\n' "$@" | awk 'NF > 0' | sort -g | awk '{v[NR] = $1}
                END {
                        if (NR == 0) exit
                        if (NR % 2) print v[(NR + 1) / 2]
                        else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
                }'
}

fmt_int() {
        awk -v v="$1" 'BEGIN {printf "%.0f\n", v}'
}

fmt_ms() {
        [ -n "$1" ] && awk -v v="$1" 'BEGIN {printf "%.2f ms\n", v}' || echo "n/a"
}
