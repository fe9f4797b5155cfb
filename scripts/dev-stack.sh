#!/usr/bin/env bash
# The dev stack: PostgreSQL, Redis and RabbitMQ from the distro packages,
# each on free loopback ports, with all state in one directory. Used by the
# tests (through tests/with-servers.sh) and by people.
#
#   dev-stack.sh start DIR [postgres] [redis] [rabbitmq]   (none: all three)
#   dev-stack.sh stop DIR                 stop everything started in DIR
#   dev-stack.sh status DIR
#   dev-stack.sh restart DIR SERVICE      clean stop, then start again
#   dev-stack.sh kill DIR SERVICE         SIGKILL (crash), data kept
#   dev-stack.sh start-one DIR SERVICE    start again on the same port and data
#
# `start` writes DIR/env (export VAR=value lines) and prints it. Ports are
# taken from VIGIL_DEV_PG_PORT, VIGIL_DEV_REDIS_PORT and VIGIL_DEV_AMQP_PORT
# when set, else asked from the kernel; once chosen they are kept in
# DIR/state so a restarted server comes back where it was. As root, each
# server runs as its own package user (postgres, redis, rabbitmq).
#
# PostgreSQL runs with fsync=off and full_page_writes=off, which is fast and
# fine for tests (nothing here must survive a machine crash). With
# VIGIL_DEV_PG_DURABLE=1 when its data directory is created, it keeps the
# durability the packages install (fsync, full_page_writes and
# synchronous_commit on, PostgreSQL's defaults): for benchmarks of what a
# production install commits. A later start keeps what the data directory
# was created with, and refuses a VIGIL_DEV_PG_DURABLE that says otherwise.
set -euo pipefail

PG_BIN=${VIGIL_DEV_PG_BIN:-/usr/lib/postgresql/15/bin}
RABBITMQ_BIN=${VIGIL_DEV_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
# Bounded waits (seconds); a loaded 2-core CI machine needs the margin.
PG_TIMEOUT=${VIGIL_DEV_PG_TIMEOUT:-30}
REDIS_TIMEOUT=${VIGIL_DEV_REDIS_TIMEOUT:-30}
RABBITMQ_TIMEOUT=${VIGIL_DEV_RABBITMQ_TIMEOUT:-90}
# RabbitMQ's prometheus plugin (VIGIL_DEV_AMQP_PROMETHEUS=1) costs start-up
# time, so it is off unless asked for.
AMQP_PROMETHEUS=${VIGIL_DEV_AMQP_PROMETHEUS:-0}
# 1: PostgreSQL with production durability (see above); empty: as created.
PG_DURABLE=${VIGIL_DEV_PG_DURABLE:-}
ALL_SERVICES=(postgres redis rabbitmq)
PG_SERVICES=(auth payment inventory notify)

prog=${0##*/}

die() {
	echo "$prog: $*" >&2
	exit 1
}

note() {
	echo "$prog: $*" >&2
}

usage() {
	cat >&2 <<EOF
usage: $prog start DIR [postgres] [redis] [rabbitmq]
       $prog stop DIR
       $prog status DIR
       $prog restart|kill|start-one DIR postgres|redis|rabbitmq
EOF
	exit 2
}

is_root() {
	[ "$(id -u)" -eq 0 ]
}

# Run a command as a service's user (as root), or as ourselves otherwise.
as_user() {
	local user=$1
	shift
	if is_root; then
		runuser -u "$user" -- "$@"
	else
		"$@"
	fi
}

# Give a path to a service's user.
give() {
	local user=$1
	shift
	if is_root; then
		chown -R "$user:" "$@"
	fi
}

# A free port below Linux's ephemeral range (32768-60999): a port the kernel
# hands out for bind(0) is also what it picks for outgoing connections, and
# on a busy machine one of those took a port between our choice and the
# server's bind.
free_port() {
	python3 -c '
import random, socket, sys
for _ in range(200):
    port = random.randrange(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    sys.exit(0)
sys.exit(1)'
}

port_is_free() {
	python3 -c 'import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null
}

port_answers() {
	python3 -c 'import socket,sys;socket.create_connection(("127.0.0.1",int(sys.argv[1])),1).close()' "$1" 2>/dev/null
}

new_password() {
	od -An -tx1 -N16 /dev/urandom | tr -d ' \n'
}

# True when process $1 exists and is not a zombie waiting to be reaped. A
# multi-threaded server (redis-server, beam) shows its main thread as a
# zombie while its other threads are still exiting, and until the last one
# is gone its sockets are open: it counts as alive while it has any thread
# but the zombie one.
pid_alive() {
	local state tasks
	[ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
	state=$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 0
	[ "$state" != Z ] && return 0
	tasks=$(find "/proc/$1/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
	[ "$tasks" -gt 1 ]
}

read_pid() {
	local f=$1
	[ -s "$f" ] || return 1
	head -n 1 "$f" | tr -dc '0-9'
}

# Wait up to $1 seconds for the command to succeed.
wait_for() {
	local timeout=$1
	shift
	local deadline=$((SECONDS + timeout))
	until "$@"; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.2
	done
}

# Wait up to $1 seconds for process $2 to exit.
wait_exit() {
	local timeout=$1 pid=$2
	wait_for "$timeout" eval "! pid_alive $pid"
}

# The last lines of a service's log; with a byte offset, only of what was
# written past it (this start's lines, not those of an earlier run).
log_tail() {
	local svc=$1 from=${2:-0}
	echo "---- last lines of $DIR/$svc.log ----" >&2
	tail -c +"$((from + 1))" "$DIR/$svc.log" 2>/dev/null | tail -n 40 >&2 || true
	echo "----" >&2
}

start_failed() {
	local svc=$1
	shift
	log_tail "$svc"
	die "$svc: $*"
}

# SIGKILL a process and, when it leads one, its whole process group (so a
# postmaster's backends or beam's helpers die with it).
kill_hard() {
	local pid=$1 pgid
	pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') || true
	if [ -n "$pgid" ] && [ "$pgid" = "$pid" ]; then
		kill -KILL -- "-$pid" 2>/dev/null || true
	else
		pkill -KILL -P "$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
	fi
}

make_parents_traversable() {
	local d
	d=$(dirname "$DIR")
	while [ "$d" != / ]; do
		if ! as_user nobody test -x "$d" 2>/dev/null; then
			note "making $d traversable (o+x) for the service users"
			chmod o+x "$d"
		fi
		d=$(dirname "$d")
	done
}

setup_dir() {
	mkdir -p "$DIR"
	DIR=$(cd "$DIR" && pwd -P)
	chmod 755 "$DIR"
	if is_root; then
		make_parents_traversable
	fi
	mkdir -p "$DIR/secrets"
	chmod 700 "$DIR/secrets"
	touch "$DIR/state"
}

load_state() {
	PG_PORT='' REDIS_PORT='' AMQP_PORT='' AMQP_DIST_PORT='' AMQP_EPMD_PORT='' AMQP_PROMETHEUS_PORT=''
	if [ -f "$DIR/state" ]; then
		# shellcheck disable=SC1091
		. "$DIR/state"
	fi
}

save_state() {
	cat >"$DIR/state.tmp" <<EOF
PG_PORT=$PG_PORT
REDIS_PORT=$REDIS_PORT
AMQP_PORT=$AMQP_PORT
AMQP_DIST_PORT=$AMQP_DIST_PORT
AMQP_EPMD_PORT=$AMQP_EPMD_PORT
AMQP_PROMETHEUS_PORT=$AMQP_PROMETHEUS_PORT
EOF
	mv "$DIR/state.tmp" "$DIR/state"
}

# choose_port VAR ENVVAR: keep the port in the state, else take ENVVAR's
# value (checked to be free), else ask the kernel.
choose_port() {
	local var=$1 envvar=$2 port
	[ -z "${!var}" ] || return 0
	port=${!envvar:-}
	if [ -n "$port" ]; then
		[[ "$port" =~ ^[0-9]+$ ]] || die "$envvar=$port is not a port number"
		port_is_free "$port" || die "$envvar=$port: 127.0.0.1:$port is already in use"
	else
		port=$(free_port) || die "cannot find a free port (is python3 installed?)"
	fi
	printf -v "$var" '%s' "$port"
	save_state
}

# ---------------------------------------------------------------- PostgreSQL

pg_data() {
	echo "$DIR/postgres/data"
}

pg_pid() {
	read_pid "$(pg_data)/postmaster.pid"
}

# The pid in postmaster.pid outlives a killed server: check that it is
# still a postgres process, not a reused pid.
pg_running() {
	local pid
	pid=$(pg_pid 2>/dev/null) && pid_alive "$pid" &&
		[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ]
}

pg_psql() {
	as_user postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR/postgres/run" \
		-p "$PG_PORT" -U postgres "$@"
}

# The durability lines of postgresql.conf: what the packages install
# (PostgreSQL's defaults, spelled out), or off for tests.
pg_durability_conf() {
	if [ "$PG_DURABLE" = 1 ]; then
		cat <<EOF
# production durability (VIGIL_DEV_PG_DURABLE=1), as the packages install it
fsync = on
full_page_writes = on
synchronous_commit = on
EOF
	else
		cat <<EOF
fsync = off
full_page_writes = off
EOF
	fi
}

# An existing data directory keeps its durability: refuse to start it with
# a VIGIL_DEV_PG_DURABLE that says otherwise.
pg_check_durability() {
	local created=0
	[ -n "$PG_DURABLE" ] || return 0
	if grep -q '^fsync = on$' "$(pg_data)/postgresql.conf"; then
		created=1
	fi
	[ "$created" = "$PG_DURABLE" ] ||
		die "postgres: VIGIL_DEV_PG_DURABLE=$PG_DURABLE, but $(pg_data) was created with" \
			"VIGIL_DEV_PG_DURABLE=$created (remove $DIR/postgres to create it again)"
}

pg_init() {
	local data pwfile
	data=$(pg_data)
	case "$PG_DURABLE" in
	'' | 0 | 1) ;;
	*) die "VIGIL_DEV_PG_DURABLE=$PG_DURABLE: must be 1 (durable) or 0 (fsync=off)" ;;
	esac
	if [ -f "$data/PG_VERSION" ]; then
		pg_check_durability
		return 0
	fi
	[ -x "$PG_BIN/initdb" ] || die "postgres: $PG_BIN/initdb not found (install postgresql-15)"
	note "postgres: initdb in $data"
	rm -rf "$DIR/postgres"
	mkdir -p "$data" "$DIR/postgres/run"
	chmod 700 "$data"
	new_password >"$DIR/secrets/postgres-password-admin"
	chmod 600 "$DIR/secrets/postgres-password-admin"
	pwfile="$DIR/postgres/pwfile"
	cp "$DIR/secrets/postgres-password-admin" "$pwfile"
	touch "$DIR/postgres.log"
	give postgres "$DIR/postgres" "$DIR/postgres.log"
	if ! as_user postgres "$PG_BIN/initdb" -D "$data" -U postgres --pwfile="$pwfile" \
		-E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 \
		>>"$DIR/postgres.log" 2>&1; then
		rm -f "$pwfile"
		start_failed postgres "initdb failed"
	fi
	rm -f "$pwfile"
	cat >"$data/pg_hba.conf" <<EOF
# vigil dev stack: the superuser over the socket in $DIR/postgres/run,
# everyone else over loopback TCP with a password.
local all postgres trust
host all all 127.0.0.1/32 scram-sha-256
EOF
	cat >>"$data/postgresql.conf" <<EOF

# vigil dev stack
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$DIR/postgres/run'
password_encryption = 'scram-sha-256'
max_connections = 100
log_min_messages = warning
$(pg_durability_conf)
EOF
	give postgres "$data"
	PG_NEEDS_SETUP=1
}

# Database, roles and schemas the way the packages create them.
pg_setup() {
	local svc pw sql
	note "postgres: creating database vigil, roles and schemas"
	pg_psql -d postgres -c "CREATE DATABASE vigil" >/dev/null ||
		start_failed postgres "CREATE DATABASE failed"
	sql="REVOKE CONNECT ON DATABASE vigil FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
"
	for svc in "${PG_SERVICES[@]}"; do
		pw=$(new_password)
		printf '%s' "$pw" >"$DIR/secrets/postgres-password-$svc"
		chmod 600 "$DIR/secrets/postgres-password-$svc"
		sql+="CREATE ROLE vigil_$svc LOGIN PASSWORD '$pw';
GRANT CONNECT ON DATABASE vigil TO vigil_$svc;
CREATE SCHEMA $svc AUTHORIZATION vigil_$svc;
ALTER ROLE vigil_$svc SET search_path = $svc;
"
	done
	# Passwords travel on stdin, never on a command line.
	printf '%s' "$sql" | pg_psql -d vigil -f - >/dev/null ||
		start_failed postgres "role and schema setup failed"
}

pg_start() {
	choose_port PG_PORT VIGIL_DEV_PG_PORT
	PG_NEEDS_SETUP=
	pg_init
	if ! pg_running; then
		note "postgres: starting on 127.0.0.1:$PG_PORT"
		# After a kill -9 the old postmaster may linger as a zombie (when
		# PID 1 does not reap orphans), and PostgreSQL takes a zombie's
		# PID in its lock files for a live server. pg_running said no.
		rm -f "$(pg_data)/postmaster.pid" "$DIR"/postgres/run/.s.PGSQL.*.lock
		mkdir -p "$DIR/postgres/run"
		give postgres "$DIR/postgres/run"
		# pg_ctl -w waits until the server accepts connections.
		as_user postgres "$PG_BIN/pg_ctl" -D "$(pg_data)" -l "$DIR/postgres.log" \
			-w -t "$PG_TIMEOUT" -s start </dev/null >/dev/null 2>&1 ||
			start_failed postgres "did not start within ${PG_TIMEOUT}s"
	fi
	wait_for "$PG_TIMEOUT" pg_psql -d postgres -c "SELECT 1" >/dev/null 2>&1 ||
		start_failed postgres "does not answer SELECT 1"
	wait_for "$PG_TIMEOUT" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" ||
		start_failed postgres "not ready on 127.0.0.1:$PG_PORT"
	if [ -n "$PG_NEEDS_SETUP" ]; then
		pg_setup
	fi
}

pg_stop() {
	pg_running || return 0
	note "postgres: stopping"
	as_user postgres "$PG_BIN/pg_ctl" -D "$(pg_data)" -m fast -w -t "$PG_TIMEOUT" -s stop \
		>/dev/null 2>&1 || pg_kill
}

pg_kill() {
	local pid
	pid=$(pg_pid 2>/dev/null) || return 0
	pid_alive "$pid" || return 0
	kill_hard "$pid"
	# Orphaned backends notice the postmaster is gone and exit.
	wait_exit 10 "$pid" || true
	wait_for 10 eval "! pgrep -u postgres -f -- '-D $(pg_data)' >/dev/null" || true
}

# --------------------------------------------------------------------- Redis

redis_pid() {
	read_pid "$DIR/redis/redis.pid"
}

redis_running() {
	local pid
	pid=$(redis_pid 2>/dev/null) && pid_alive "$pid"
}

redis_cli() {
	redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}

redis_start() {
	command -v redis-server >/dev/null || die "redis: redis-server not found"
	choose_port REDIS_PORT VIGIL_DEV_REDIS_PORT
	mkdir -p "$DIR/redis"
	cat >"$DIR/redis/redis.conf" <<EOF
# vigil dev stack
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
pidfile $DIR/redis/redis.pid
logfile $DIR/redis.log
dir $DIR/redis
save ""
appendonly ${VIGIL_DEV_REDIS_APPENDONLY:-no}
EOF
	touch "$DIR/redis.log"
	give redis "$DIR/redis" "$DIR/redis.log"
	if ! redis_running; then
		note "redis: starting on 127.0.0.1:$REDIS_PORT"
		rm -f "$DIR/redis/redis.pid"
		# Not daemonized: a daemonizing redis-server starts a session of its
		# own, and with autogroup scheduling (kernel.sched_autogroup_enabled)
		# a session is a scheduling group. On a loaded 2-vCPU VM that group
		# was seen to wait seconds for a CPU; in the caller's session Redis
		# competes as one of the stack's processes.
		as_user redis redis-server "$DIR/redis/redis.conf" </dev/null >/dev/null 2>&1 &
	fi
	wait_for "$REDIS_TIMEOUT" eval 'redis_cli ping 2>/dev/null | grep -q PONG' ||
		start_failed redis "does not answer PING within ${REDIS_TIMEOUT}s"
	wait_for 5 redis_running || start_failed redis "no pid file"
}

# redis_stop [nosave|save]
redis_stop() {
	local pid mode=${1:-nosave}
	pid=$(redis_pid 2>/dev/null) || return 0
	pid_alive "$pid" || return 0
	note "redis: stopping"
	redis_cli shutdown "$mode" >/dev/null 2>&1 || true
	wait_exit "$REDIS_TIMEOUT" "$pid" || redis_kill
}

redis_kill() {
	local pid
	pid=$(redis_pid 2>/dev/null) || return 0
	pid_alive "$pid" || return 0
	kill -KILL "$pid" 2>/dev/null || true
	wait_exit 10 "$pid" || true
}

# ------------------------------------------------------------------ RabbitMQ

amqp_node() {
	echo "vigil-$AMQP_PORT@localhost"
}

# The environment every rabbitmq command of this stack runs with: its own
# node, its own epmd on a private port, everything on loopback. Sets the
# array AMQP_ENV to an env(1) command line that prefixes the command.
amqp_env() {
	AMQP_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8
		HOME="$DIR/rabbitmq/home"
		RABBITMQ_NODENAME="$(amqp_node)"
		RABBITMQ_USE_LONGNAME=false
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
		RABBITMQ_NODE_PORT="$AMQP_PORT"
		RABBITMQ_DIST_PORT="$AMQP_DIST_PORT"
		RABBITMQ_MNESIA_BASE="$DIR/rabbitmq/mnesia"
		RABBITMQ_LOG_BASE="$DIR/rabbitmq/log"
		RABBITMQ_LOGS=-
		RABBITMQ_PID_FILE="$DIR/rabbitmq/rabbitmq.pid"
		RABBITMQ_CONFIG_FILE="$DIR/rabbitmq/rabbitmq.conf"
		RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/rabbitmq/advanced.config"
		RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/rabbitmq/enabled_plugins"
		RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq/rabbitmq-env.conf"
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
		RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
		ERL_EPMD_PORT="$AMQP_EPMD_PORT"
		ERL_EPMD_ADDRESS=127.0.0.1)
}

# Sets the array RUN_AS to the command prefix that runs as user $1.
run_as() {
	if is_root; then
		RUN_AS=(runuser -u "$1" --)
	else
		RUN_AS=()
	fi
}

# rabbitmqctl for this stack's node, bounded in time.
amqp_ctl() {
	local timeout=$1
	shift
	amqp_env
	run_as rabbitmq
	(cd "$DIR/rabbitmq" &&
		timeout "$timeout" "${RUN_AS[@]}" "${AMQP_ENV[@]}" "$RABBITMQ_BIN/rabbitmqctl" -q "$@")
}

amqp_pid() {
	read_pid "$DIR/rabbitmq/launcher.pid"
}

# True when process $1 is alive and part of this stack's RabbitMQ. A pid
# file outlives its process, and with a PID 1 that reaps orphans late and
# pid_max at 32768 a recorded pid may name another process by now. The
# launcher (runuser) names $DIR/rabbitmq/ on its command line, the
# processes below it in their environment.
amqp_owns_pid() {
	pid_alive "$1" && grep -qsF -- "$DIR/rabbitmq/" "/proc/$1/cmdline" "/proc/$1/environ"
}

amqp_running() {
	local pid
	pid=$(amqp_pid 2>/dev/null) && amqp_owns_pid "$pid"
}

# The live processes of this stack's node, its epmd aside: the
# rabbitmq-server script, beam.smp and the port programs beam starts
# through erl_child_setup (inet_gethost, the disk monitor's sh), which
# run in sessions of their own, out of reach of a process-group kill.
# All of them carry the node's environment.
amqp_node_pids() {
	local f pid
	{ grep -lsF -- "RABBITMQ_MNESIA_BASE=$DIR/rabbitmq/mnesia" /proc/[0-9]*/environ || true; } |
		while read -r f; do
			pid=${f#/proc/}
			pid=${pid%/environ}
			[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != epmd ] || continue
			if pid_alive "$pid"; then
				echo "$pid"
			fi
		done
}

# True while the node's name is registered with its epmd: until its
# beam.smp has exited. A node started meanwhile stops at boot with
# 'node with name "vigil-…" is already running'.
amqp_name_registered() {
	local node
	[ -n "$AMQP_EPMD_PORT" ] || return 1
	node=$(amqp_node)
	amqp_env
	"${AMQP_ENV[@]}" epmd -port "$AMQP_EPMD_PORT" -names 2>/dev/null |
		grep -q "^name ${node%@*} at port "
}

# True when nothing of the node is left: no launcher, no process, no name
# in epmd (whose own process outlives the node, as it would a crash).
amqp_node_gone() {
	! amqp_running && [ -z "$(amqp_node_pids)" ] && ! amqp_name_registered
}

# What is left of the node, for a message.
amqp_leftovers() {
	local pids left=()
	if amqp_running; then
		left+=("launcher $(amqp_pid)")
	fi
	pids=$(amqp_node_pids)
	if [ -n "$pids" ]; then
		left+=("processes $(echo "$pids" | tr '\n' ' ')")
	fi
	if amqp_name_registered; then
		left+=("$(amqp_node) still registered with epmd on port $AMQP_EPMD_PORT")
	fi
	echo "${left[*]:-nothing}"
}

# The ports a node binds: AMQP, distribution and, with the plugin, prometheus.
amqp_ports() {
	echo "$AMQP_PORT" "$AMQP_DIST_PORT"
	if grep -qs '^prometheus' "$DIR/rabbitmq/rabbitmq.conf"; then
		echo "$AMQP_PROMETHEUS_PORT"
	fi
}

amqp_ports_free() {
	local port
	for port in $(amqp_ports); do
		port_is_free "$port" || return 1
	done
}

# The line of this start's log (from byte offset $1) that says the node
# stopped at boot because its name or a port was still taken, by an
# earlier node not quite gone or by another process: worth a second try.
amqp_taken_reason() {
	{ tail -c +"$(($1 + 1))" "$DIR/rabbitmq.log" 2>/dev/null || true; } |
		awk '/is already running on host|could not bind to distribution port|eaddrinuse|epmd error for host/ {
			if (!n++) { sub(/^.*\] <[^>]*> /, ""); print }
		}'
}

amqp_start_failed() {
	local from=$1
	shift
	log_tail rabbitmq "$from"
	die "rabbitmq: $*"
}

# Start the node in the background once what is left of an earlier one is
# gone and its ports are free; its launcher's pid goes to launcher.pid.
amqp_launch() {
	local from=$1 port busy=()
	if ! amqp_node_gone; then
		note "rabbitmq: an earlier node is not gone ($(amqp_leftovers)); killing it"
		amqp_kill || amqp_start_failed "$from" "cannot get rid of the earlier node"
	fi
	if ! wait_for 30 amqp_ports_free; then
		for port in $(amqp_ports); do
			if ! port_is_free "$port"; then
				busy+=("$port")
				ss -Htanp "( sport = :$port )" >&2 2>/dev/null || true
			fi
		done
		amqp_start_failed "$from" "127.0.0.1 port(s) ${busy[*]} still in use (30s) by another process"
	fi
	note "rabbitmq: starting node $(amqp_node) on 127.0.0.1:$AMQP_PORT"
	rm -f "$DIR/rabbitmq/rabbitmq.pid"
	# Its own session, so kill can take the whole process group.
	amqp_env
	run_as rabbitmq
	(cd "$DIR/rabbitmq" &&
		exec setsid "${RUN_AS[@]}" "${AMQP_ENV[@]}" "$RABBITMQ_BIN/rabbitmq-server") \
		</dev/null >>"$DIR/rabbitmq.log" 2>&1 &
	echo "$!" >"$DIR/rabbitmq/launcher.pid"
}

# The vhost and the user come from the config: RabbitMQ creates them on
# the first boot of an empty node, which saves three CLI round trips.
amqp_init() {
	local pw
	[ -f "$DIR/rabbitmq/rabbitmq.conf" ] && return 0
	mkdir -p "$DIR/rabbitmq/mnesia" "$DIR/rabbitmq/log" "$DIR/rabbitmq/home"
	chmod 700 "$DIR/rabbitmq/home"
	new_password >"$DIR/secrets/amqp-password"
	chmod 600 "$DIR/secrets/amqp-password"
	pw=$(cat "$DIR/secrets/amqp-password")
	(
		umask 077
		cat >"$DIR/rabbitmq/rabbitmq.conf" <<EOF
# vigil dev stack
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
default_vhost = vigil
default_user = vigil
default_pass = $pw
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
log.console = true
log.console.level = warning
log.file = false
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 50MB
EOF
	)
	echo '[].' >"$DIR/rabbitmq/advanced.config"
	if [ "$AMQP_PROMETHEUS" = 1 ]; then
		echo '[rabbitmq_prometheus].' >"$DIR/rabbitmq/enabled_plugins"
		cat >>"$DIR/rabbitmq/rabbitmq.conf" <<EOF
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $AMQP_PROMETHEUS_PORT
EOF
	else
		echo '[].' >"$DIR/rabbitmq/enabled_plugins"
	fi
	: >"$DIR/rabbitmq/rabbitmq-env.conf"
}

# Start the node unless it runs and wait until it has booted. A node that
# stops at boot because its name or a port was still taken is started once
# more; each of the two attempts has RABBITMQ_TIMEOUT.
amqp_start() {
	local from launcher reason attempt=1 deadline
	[ -x "$RABBITMQ_BIN/rabbitmq-server" ] || die "rabbitmq: $RABBITMQ_BIN/rabbitmq-server not found"
	choose_port AMQP_PORT VIGIL_DEV_AMQP_PORT
	choose_port AMQP_DIST_PORT VIGIL_DEV_AMQP_DIST_PORT
	choose_port AMQP_EPMD_PORT VIGIL_DEV_AMQP_EPMD_PORT
	choose_port AMQP_PROMETHEUS_PORT VIGIL_DEV_AMQP_PROMETHEUS_PORT
	amqp_init
	touch "$DIR/rabbitmq.log"
	give rabbitmq "$DIR/rabbitmq" "$DIR/rabbitmq.log"
	from=$(stat -c %s "$DIR/rabbitmq.log")
	if ! amqp_running; then
		amqp_launch "$from"
	fi
	launcher=$(amqp_pid)
	deadline=$((SECONDS + RABBITMQ_TIMEOUT))
	until port_answers "$AMQP_PORT" && amqp_ctl 15 await_startup --timeout 10 >/dev/null 2>&1; do
		if ! pid_alive "$launcher"; then
			reason=$(amqp_taken_reason "$from")
			if [ "$attempt" -gt 1 ] || [ -z "$reason" ]; then
				amqp_start_failed "$from" "the server exited during start-up"
			fi
			note "rabbitmq: the node stopped at boot ($reason); starting it once more"
			attempt=2
			amqp_launch "$from"
			launcher=$(amqp_pid)
			deadline=$((SECONDS + RABBITMQ_TIMEOUT))
			continue
		fi
		[ "$SECONDS" -lt "$deadline" ] ||
			amqp_start_failed "$from" "did not start within ${RABBITMQ_TIMEOUT}s"
		sleep 0.5
	done
}

amqp_beam_pid() {
	read_pid "$DIR/rabbitmq/rabbitmq.pid"
}

# SIGTERM makes the Erlang VM stop gracefully (init:stop), as rabbitmqctl
# stop does, without starting a CLI VM first; SIGKILL if it hangs, and for
# whatever of the node outlived its launcher.
amqp_stop() {
	local pid beam
	if amqp_running; then
		note "rabbitmq: stopping"
		pid=$(amqp_pid)
		if beam=$(amqp_beam_pid 2>/dev/null) && amqp_owns_pid "$beam"; then
			kill -TERM "$beam" 2>/dev/null || true
		else
			amqp_ctl "$RABBITMQ_TIMEOUT" stop >/dev/null 2>&1 || true
		fi
		wait_exit "$RABBITMQ_TIMEOUT" "$pid" || true
	fi
	if ! amqp_node_gone; then
		amqp_kill || true
	fi
	amqp_epmd_stop
}

# SIGKILL the node (a crash: data kept, its epmd left running) and return
# once it is gone. The launcher is only runuser: beam.smp and its port
# programs (in sessions of their own) exit in their own time, and until
# beam.smp has, its name stays registered with epmd and its ports stay
# bound, so a node started then stops at boot ("already running",
# eaddrinuse).
amqp_kill() {
	local pid pids
	[ -n "$AMQP_PORT" ] || return 0
	if pid=$(amqp_pid 2>/dev/null) && amqp_owns_pid "$pid"; then
		kill_hard "$pid"
	fi
	pids=$(amqp_node_pids)
	if [ -n "$pids" ]; then
		# shellcheck disable=SC2086 # one word per pid
		kill -KILL $pids 2>/dev/null || true
	fi
	if ! wait_for 30 amqp_node_gone; then
		note "rabbitmq: not gone 30s after SIGKILL: $(amqp_leftovers)"
		return 1
	fi
}

# Each stack's node registers with its own epmd; stop it with the node.
amqp_epmd_stop() {
	[ -n "$AMQP_EPMD_PORT" ] || return 0
	port_answers "$AMQP_EPMD_PORT" || return 0
	amqp_env
	run_as rabbitmq
	timeout 10 "${RUN_AS[@]}" "${AMQP_ENV[@]}" epmd -port "$AMQP_EPMD_PORT" -kill \
		>/dev/null 2>&1 || true
}

# --------------------------------------------------------------- env, status

write_env() {
	local f="$DIR/env.tmp" svc up
	{
		echo "# vigil dev stack in $DIR; source this file"
		echo "export VIGIL_DEV_DIR=$DIR"
		if [ -f "$(pg_data)/PG_VERSION" ]; then
			echo "export VIGIL_DEV_PG_PORT=$PG_PORT"
			echo "export VIGIL_TEST_PG_ADMIN_DSN='host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres password=$(cat "$DIR/secrets/postgres-password-admin")'"
			for svc in "${PG_SERVICES[@]}"; do
				up=${svc^^}
				echo "export VIGIL_DEV_PG_DSN_$up='host=127.0.0.1 port=$PG_PORT dbname=vigil user=vigil_$svc'"
				echo "export VIGIL_DEV_PG_PASSWORD_FILE_$up=$DIR/secrets/postgres-password-$svc"
			done
		fi
		if [ -f "$DIR/redis/redis.conf" ]; then
			echo "export VIGIL_DEV_REDIS_PORT=$REDIS_PORT"
			echo "export VIGIL_REDIS_ADDRESS=127.0.0.1:$REDIS_PORT"
		fi
		if [ -f "$DIR/secrets/amqp-password" ]; then
			echo "export VIGIL_DEV_AMQP_PORT=$AMQP_PORT"
			echo "export VIGIL_AMQP_URL=amqp://vigil:$(cat "$DIR/secrets/amqp-password")@127.0.0.1:$AMQP_PORT/vigil"
			if grep -q '^prometheus' "$DIR/rabbitmq/rabbitmq.conf"; then
				echo "export VIGIL_DEV_AMQP_PROMETHEUS_PORT=$AMQP_PROMETHEUS_PORT"
			fi
		fi
	} >"$f"
	chmod 600 "$f"
	mv "$f" "$DIR/env"
}

status() {
	local rc=0
	if [ -d "$DIR/postgres" ]; then
		if pg_running; then
			echo "postgres: running (pid $(pg_pid)) on 127.0.0.1:$PG_PORT"
		else
			echo "postgres: stopped"
			rc=3
		fi
	fi
	if [ -d "$DIR/redis" ]; then
		if redis_running; then
			echo "redis: running (pid $(redis_pid)) on 127.0.0.1:$REDIS_PORT"
		else
			echo "redis: stopped"
			rc=3
		fi
	fi
	if [ -d "$DIR/rabbitmq" ]; then
		if amqp_running; then
			echo "rabbitmq: running (pid $(amqp_pid)) on 127.0.0.1:$AMQP_PORT"
		else
			echo "rabbitmq: stopped"
			rc=3
		fi
	fi
	return "$rc"
}

check_service() {
	case "$1" in
	postgres | redis | rabbitmq) ;;
	*) die "unknown service '$1' (postgres, redis or rabbitmq)" ;;
	esac
}

start_service() {
	case "$1" in
	postgres) pg_start ;;
	redis) redis_start ;;
	rabbitmq) amqp_start ;;
	esac
}

stop_service() {
	case "$1" in
	postgres) pg_stop ;;
	redis) redis_stop "${2:-nosave}" ;;
	rabbitmq) amqp_stop ;;
	esac
}

kill_service() {
	case "$1" in
	postgres) pg_kill ;;
	redis) redis_kill ;;
	rabbitmq) amqp_kill ;;
	esac
}

# ---------------------------------------------------------------------- main

[ $# -ge 2 ] || usage
cmd=$1
DIR=$2
shift 2
[ -n "$DIR" ] || usage

case "$cmd" in
start | start-one)
	services=("$@")
	if [ "$cmd" = start-one ]; then
		[ $# -eq 1 ] || usage
	elif [ ${#services[@]} -eq 0 ]; then
		services=("${ALL_SERVICES[@]}")
	fi
	for s in "${services[@]}"; do
		check_service "$s"
	done
	setup_dir
	load_state
	for s in "${services[@]}"; do
		start_service "$s"
	done
	write_env
	cat "$DIR/env"
	;;
stop)
	[ -d "$DIR" ] || exit 0
	DIR=$(cd "$DIR" && pwd -P)
	load_state
	# Reverse order of start.
	amqp_stop
	redis_stop nosave
	pg_stop
	;;
status)
	[ -d "$DIR" ] || die "$DIR: no such directory"
	DIR=$(cd "$DIR" && pwd -P)
	load_state
	status
	;;
restart | kill)
	[ $# -eq 1 ] || usage
	check_service "$1"
	[ -d "$DIR" ] || die "$DIR: no such directory"
	DIR=$(cd "$DIR" && pwd -P)
	load_state
	if [ "$cmd" = kill ]; then
		kill_service "$1"
	else
		stop_service "$1" save
		start_service "$1"
		write_env
	fi
	;;
*)
	usage
	;;
esac
