#!/usr/bin/env bash
# Stop what scripts/platform-up.sh started: vigil.target on a host where
# systemd is PID 1 (the packages stay installed: `apt purge vigil-authd
# vigil-paymentd vigil-inventoryd vigil-notifyd vigil-alertbot ...`
# removes them and their data), otherwise the whole systemd-nspawn machine
# (its disk is thrown away; the cached trees stay for the next start).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
machine=${VIGIL_MACHINE:-vigil}

[ "$(id -u)" -eq 0 ] || { echo "${0##*/}: must run as root" >&2; exit 1; }

if [ -d /run/systemd/system ] && [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
	systemctl stop vigil.target
	echo "vigil.target stopped (packages still installed)"
elif "$top/scripts/nspawn-machine.sh" status "$machine"; then
	"$top/scripts/nspawn-machine.sh" stop "$machine"
	echo "machine '$machine' stopped"
else
	echo "vigil is not running"
fi
