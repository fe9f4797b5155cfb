#!/usr/bin/env bash
# Run a command with real servers from the dev stack:
#
#   tests/with-servers.sh postgres redis -- CMD ARGS...
#
# Starts the named servers (postgres, redis, rabbitmq) in a fresh directory
# under /tmp with scripts/dev-stack.sh, runs CMD with DIR/env sourced (and
# VIGIL_DEV_STACK naming dev-stack.sh, for fault tests), then
# stops them and removes the directory, also when CMD fails or a signal
# arrives. Exits with CMD's status; 77 (skip) when a server's binary is not
# installed; 99 (hard error) when a server does not start.
set -euo pipefail

prog=${0##*/}
here=$(cd "$(dirname "$0")" && pwd -P)
dev_stack="$here/../scripts/dev-stack.sh"

usage() {
	echo "usage: $prog SERVICE... -- CMD [ARGS...]" >&2
	exit 99
}

skip() {
	echo "$prog: SKIP: $*" >&2
	exit 77
}

services=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
	case "$1" in
	postgres | redis | rabbitmq) services+=("$1") ;;
	*) usage ;;
	esac
	shift
done
[ $# -ge 2 ] || usage
shift
[ ${#services[@]} -gt 0 ] || usage

command -v python3 >/dev/null || skip "python3 not installed (needed to pick free ports)"
for s in "${services[@]}"; do
	case "$s" in
	postgres)
		[ -x "${VIGIL_DEV_PG_BIN:-/usr/lib/postgresql/15/bin}/postgres" ] ||
			skip "PostgreSQL 15 server not installed"
		;;
	redis)
		if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
			skip "redis-server not installed"
		fi
		;;
	rabbitmq)
		[ -x "${VIGIL_DEV_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}/rabbitmq-server" ] ||
			skip "rabbitmq-server not installed"
		;;
	esac
done

# A fresh stack on ports of its own, whatever a sourced env file says.
unset VIGIL_DEV_PG_PORT VIGIL_DEV_REDIS_PORT VIGIL_DEV_AMQP_PORT

# Under /tmp, not $TMPDIR: the service users must be able to reach it.
dir=$(mktemp -d /tmp/vigil-servers.XXXXXX)
child=

# shellcheck disable=SC2317 # called by the traps
cleanup() {
	local rc=$?
	trap - EXIT INT TERM HUP
	if [ -n "$child" ]; then
		kill -TERM "$child" 2>/dev/null || true
		wait "$child" 2>/dev/null || true
	fi
	bash "$dev_stack" stop "$dir" >/dev/null 2>&1 || true
	if [ -n "${VIGIL_KEEP_SERVERS_DIR:-}" ]; then
		echo "$prog: kept $dir" >&2
	else
		rm -rf "$dir"
	fi
	exit "$rc"
}
# shellcheck disable=SC2317 # called by the traps
on_signal() {
	echo "$prog: interrupted, stopping the servers" >&2
	exit 130
}
trap cleanup EXIT
trap on_signal INT TERM HUP

if ! bash "$dev_stack" start "$dir" "${services[@]}" >/dev/null; then
	echo "$prog: could not start ${services[*]}" >&2
	exit 99
fi
# shellcheck disable=SC1091
. "$dir/env"
# For fault tests: "$VIGIL_DEV_STACK" restart|kill|start-one "$VIGIL_DEV_DIR" SERVICE
VIGIL_DEV_STACK=$(cd "$here/../scripts" && pwd -P)/dev-stack.sh
export VIGIL_DEV_STACK

# In the background so a signal reaches the trap at once; stdin stays ours.
set +e
"$@" <&0 &
child=$!
wait "$child"
rc=$?
child=
set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
	for s in "${services[@]}"; do
		echo "---- $prog: last lines of the $s log ----" >&2
		tail -n 15 "$dir/$s.log" >&2 2>/dev/null || true
	done
fi
exit "$rc"
