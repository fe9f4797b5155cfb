#!/usr/bin/env bash
# Stop what scripts/vigil-up.sh started. Data stays in $VIGIL_DEV_DIR;
# pass --purge to delete it too.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dir=${VIGIL_DEV_DIR:-/var/tmp/vigil-dev}

for pidfile in "$dir"/vigil-*.pid; do
	[ -f "$pidfile" ] || continue
	pid=$(cat "$pidfile")
	if kill -TERM "$pid" 2>/dev/null; then
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -f "$pidfile"
done
[ -f "$dir/env" ] && "$top/scripts/dev-stack.sh" stop "$dir"
if [ "${1:-}" = --purge ]; then
	rm -rf "$dir"
fi
echo "vigil stopped"
