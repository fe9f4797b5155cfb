#!/usr/bin/env bash
# A Debian 12 machine booted with systemd-nspawn, for the system test and for
# platform-up.sh on hosts where systemd is not PID 1.
#
#   nspawn-machine.sh create               build (or reuse) the cached trees
#   nspawn-machine.sh boot NAME            boot a fresh machine from the cache
#   nspawn-machine.sh exec NAME CMD…       run CMD inside (all namespaces of PID 1)
#   nspawn-machine.sh copy-in NAME SRC DST copy a host file or directory in
#   nspawn-machine.sh install-debs NAME DIR   install DIR/*.deb with apt
#   nspawn-machine.sh status NAME          0 when running
#   nspawn-machine.sh leader NAME          the machine's init as a host PID
#                                          (for nsenter into one namespace)
#   nspawn-machine.sh stop NAME            power off and remove the machine
#
# Caches (under $VIGIL_NSPAWN_CACHE, default /var/cache/vigil/nspawn):
#   bookworm-base       debootstrap --variant=minbase (+ systemd, dbus)
#   bookworm-platform   base + the distro services vigil runs on (built
#                       again when PLATFORM_PKGS changes)
#   bookworm-extra      platform + $VIGIL_NSPAWN_EXTRA_PKGS, with the units
#                       in $VIGIL_NSPAWN_EXTRA_DISABLE disabled (only when
#                       VIGIL_NSPAWN_EXTRA_PKGS is set: the fleet test's
#                       tree, beside the system test's; the platform list
#                       is untouched, so the platform tree is not rebuilt)
# The trees are built under a lock ($CACHE/.lock): tests running side by
# side build them once.
# Machines live in $VIGIL_NSPAWN_DIR/NAME (default /var/tmp/vigil-nspawn): an
# overlayfs over the platform (or extra) cache when the kernel allows it,
# else a copy.
#
# The machine shares the host's network (no --private-network), so what it
# serves on 127.0.0.1 is reachable from the host and apt inside it reaches
# deb.debian.org. Its distro services are on their default ports.
#
# With VIGIL_NSPAWN_BRIDGE=BRIDGE the machine gets its own network namespace
# instead (--network-bridge=BRIDGE, an existing bridge): systemd-networkd in
# it gives its host0 interface VIGIL_NSPAWN_ADDRESS (CIDR) with
# VIGIL_NSPAWN_GATEWAY as its default route; VIGIL_NSPAWN_AUTHORIZED_KEYS
# (a file) becomes root's authorized_keys, and the hostname is NAME.
set -Eeuo pipefail
# A command that fails under set -e says where, so a failed boot is never
# a bare exit status.
trap 'echo "${0##*/}: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)" >&2' ERR

CACHE=${VIGIL_NSPAWN_CACHE:-/var/cache/vigil/nspawn}
RUNDIR=${VIGIL_NSPAWN_DIR:-/var/tmp/vigil-nspawn}
MIRROR=${VIGIL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BOOT_TIMEOUT=${VIGIL_NSPAWN_BOOT_TIMEOUT:-90}
# What vigil runs on, from Debian. polkitd (with its duktape JS engine)
# evaluates the vigil polkit rule; curl and python3 drive tests inside;
# python3-locust is what vigilctl recommends (for `vigilctl load`).
PLATFORM_PKGS=(
	postgresql redis-server rabbitmq-server nginx-light
	prometheus prometheus-alertmanager prometheus-node-exporter
	prometheus-nginx-exporter prometheus-postgres-exporter prometheus-redis-exporter
	prometheus-blackbox-exporter mtail
	polkitd curl python3 ca-certificates procps iproute2 less
	python3-locust
	libjwt0 libmicrohttpd12 libpq5 libhiredis0.14 librabbitmq4 libjson-c5
	libcurl4 libinih1 libcrypt1 libsystemd0
)

EXTRA_PKGS=(${VIGIL_NSPAWN_EXTRA_PKGS:-})
EXTRA_DISABLE=(${VIGIL_NSPAWN_EXTRA_DISABLE:-})

prog=${0##*/}
die() {
	echo "$prog: $*" >&2
	exit 1
}
note() {
	echo "$prog: $*" >&2
}

[ "$(id -u)" -eq 0 ] || die "must run as root"

usage() {
	sed -n '4,13p' "$0" >&2
	exit 2
}

machine_dir() {
	echo "$RUNDIR/$1"
}

valid_name() {
	[[ "$1" =~ ^[a-zA-Z0-9][a-zA-Z0-9_-]{0,30}$ ]] || die "bad machine name: $1"
}

# Commands run inside a tree that is not booted (while building the caches).
chroot_run() { # dir cmd…
	local dir=$1
	shift
	systemd-nspawn -q -D "$dir" --register=no --keep-unit --pipe \
		-E DEBIAN_FRONTEND=noninteractive -E LANG=C.UTF-8 "$@"
}

create_base() {
	local base=$CACHE/$SUITE-base tmp
	[ -f "$base/.vigil-complete" ] && return 0
	command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
	command -v systemd-nspawn >/dev/null || die "systemd-nspawn not found: apt-get install systemd-container"
	mkdir -p "$CACHE"
	tmp=$CACHE/.$SUITE-base.tmp
	rm -rf "$tmp"
	note "debootstrap $SUITE into $base (once; a few minutes)"
	debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
		"$SUITE" "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
		{ tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
	# No login prompts on the console, a hostname, and apt that fails fast.
	echo vigil >"$tmp/etc/hostname"
	printf 'Acquire::Retries "3";\nAcquire::http::Timeout "30";\n' >"$tmp/etc/apt/apt.conf.d/80vigil"
	ln -sf /dev/null "$tmp/etc/systemd/system/console-getty.service"
	ln -sf /dev/null "$tmp/etc/systemd/system/getty@.service"
	rm -f "$tmp/etc/machine-id" && : >"$tmp/etc/machine-id"
	touch "$tmp/.vigil-complete"
	rm -rf "$base"
	mv "$tmp" "$base"
}

# A tree made of LOWER (a copy) with PKG… installed, moved to DEST with
# STAMP in DEST/.vigil-complete; LOG keeps apt's output. Services are
# installed, not started (nothing runs in a chroot): the booted machine
# starts them. With DISABLE set (an array name), those units are disabled.
build_tree() { # lower dest stamp log disable-array pkg…
	local lower=$1 dest=$2 stamp=$3 log=$4 tmp
	local -n disable=$5
	shift 5
	tmp=$CACHE/.${dest##*/}.tmp
	rm -rf "$tmp"
	note "installing $* into $dest (once)"
	cp -a "$lower" "$tmp"
	rm -f "$tmp/.vigil-complete"
	printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
	chmod 755 "$tmp/usr/sbin/policy-rc.d"
	if ! chroot_run "$tmp" sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $* && apt-get clean" \
		>"$log" 2>&1; then
		tail -n 30 "$log" >&2
		die "installing $* failed (log: $log)"
	fi
	if [ ${#disable[@]} -gt 0 ]; then
		chroot_run "$tmp" systemctl disable "${disable[@]}" >>"$log" 2>&1 ||
			die "systemctl disable ${disable[*]} failed (log: $log)"
	fi
	rm -f "$tmp/usr/sbin/policy-rc.d"
	rm -f "$tmp/etc/machine-id" && : >"$tmp/etc/machine-id"
	echo "$stamp" >"$tmp/.vigil-complete"
	rm -rf "$dest"
	mv "$tmp" "$dest"
}

create_platform() {
	local base=$CACHE/$SUITE-base plat=$CACHE/$SUITE-platform none=()
	# A cache of another package list is built again.
	[ "$(cat "$plat/.vigil-complete" 2>/dev/null)" = "${PLATFORM_PKGS[*]}" ] && return 0
	create_base
	build_tree "$base" "$plat" "${PLATFORM_PKGS[*]}" "$CACHE/platform.log" none "${PLATFORM_PKGS[@]}"
}

# The tree machines boot from: the platform's, or the extra one.
lower_tree() {
	if [ ${#EXTRA_PKGS[@]} -gt 0 ]; then
		echo "$CACHE/$SUITE-extra"
	else
		echo "$CACHE/$SUITE-platform"
	fi
}

create_extra() {
	local plat=$CACHE/$SUITE-platform extra=$CACHE/$SUITE-extra stamp
	[ ${#EXTRA_PKGS[@]} -gt 0 ] || return 0
	create_platform
	stamp="${PLATFORM_PKGS[*]} + ${EXTRA_PKGS[*]} - ${EXTRA_DISABLE[*]}"
	[ "$(cat "$extra/.vigil-complete" 2>/dev/null)" = "$stamp" ] && return 0
	build_tree "$plat" "$extra" "$stamp" "$CACHE/extra.log" EXTRA_DISABLE "${EXTRA_PKGS[@]}"
}

# The cached trees, built by one process at a time (the system test and the
# fleet test share them); the lock is never held by a booted machine.
create_trees() {
	mkdir -p "$CACHE"
	(
		flock 9
		create_platform
		create_extra
	) 9>"$CACHE/.lock"
}

cmd_create() {
	create_trees
	lower_tree
}

leader_pid() { # name → the machine's PID 1 as seen from the host
	local dir pid child
	dir=$(machine_dir "$1")
	pid=$(cat "$dir/nspawn.pid" 2>/dev/null) || return 1
	alive "$pid" || return 1
	# systemd-nspawn's child is the container's init.
	child=$(ps -o pid= --ppid "$pid" | head -n1 | tr -d ' ')
	[ -n "$child" ] || return 1
	echo "$child"
}

# True when process $1 exists and is not a zombie (PID 1 here may never
# reap it).
alive() {
	[ -n "${1:-}" ] && [ -e "/proc/$1" ] &&
		[ "$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]
}

# The process start time (in clock ticks since boot) of pid $1: with the
# pid, it names one process, not whichever later reuses the pid.
start_time() {
	sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20
}

# The machine's init as recorded at boot, while it is still that process.
recorded_leader() { # name
	local dir pid start
	dir=$(machine_dir "$1")
	[ -s "$dir/leader.pid" ] || return 1
	read -r pid start <"$dir/leader.pid" || return 1
	# A zombie (its namespace already torn down) is gone for us.
	{ alive "$pid" && [ -n "$start" ] && [ "$(start_time "$pid")" = "$start" ]; } || return 1
	echo "$pid"
}

in_machine() { # name cmd…  (no tty, clean environment)
	local name=$1 leader
	shift
	# A return, not die: callers that poll (boot) run it in $( || true).
	leader=$(leader_pid "$name") || {
		note "machine $name is not running"
		return 1
	}
	nsenter -t "$leader" -m -u -i -n -p -C -r -w \
		env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		LANG=C.UTF-8 HOME=/root TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

unmount_root() {
	local dir=$1
	if mountpoint -q "$dir/root" 2>/dev/null; then
		umount "$dir/root" 2>/dev/null || umount -l "$dir/root" || true
	fi
}

# Every machine in a cgroup of its own. With no systemd on the host to give
# it a scope, systemd-nspawn --keep-unit makes the cgroup it starts in the
# machine's: the machine goes in its "payload", nspawn in its "supervisor".
# Started in the root cgroup, two machines at once would share
# /payload/system.slice/..., and each one's systemd would find the other's
# daemons in its own units: `systemctl kill` fails ("Failed to send signal
# ... to auxiliary processes: Input/output error", reading the pid 0 of a
# process outside its PID namespace) and a stop would wait on them. So
# nspawn starts in vigil-machine-NAME of every hierarchy it uses: the
# cgroup2 one, and the name=systemd one of a hybrid host.
machine_cgroups() { # name -> the directories, a line each
	local root
	for root in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
		[ -w "$root/cgroup.procs" ] && echo "$root/vigil-machine-$1"
	done
	return 0
}

remove_cgroups() { # name: once the machine is gone, its cgroups (deepest first)
	local cg
	while read -r cg; do
		[ -d "$cg" ] || continue
		find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null ||
			note "the cgroup $cg still holds processes; left in place"
	done < <(machine_cgroups "$1")
}

cmd_boot() {
	local name=$1 dir plat pid state leader cg cgroups
	valid_name "$name"
	dir=$(machine_dir "$name")
	plat=$(lower_tree)
	create_trees
	if leader_pid "$name" >/dev/null 2>&1 || recorded_leader "$name" >/dev/null; then
		die "machine $name is already running (stop it first)"
	fi
	unmount_root "$dir"
	rm -rf "$dir"
	mkdir -p "$dir/upper" "$dir/work" "$dir/root"
	if ! mount -t overlay overlay -o "lowerdir=$plat,upperdir=$dir/upper,workdir=$dir/work" "$dir/root" 2>/dev/null; then
		note "overlayfs unavailable: copying the platform tree"
		rmdir "$dir/root"
		cp -a "$plat" "$dir/root"
	fi
	systemd-machine-id-setup --root="$dir/root" >/dev/null 2>&1 ||
		od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$dir/root/etc/machine-id"
	# The host's network is shared; so is its resolver configuration.
	cp -L /etc/resolv.conf "$dir/root/etc/resolv.conf" 2>/dev/null || true
	net=()
	if [ -n "${VIGIL_NSPAWN_BRIDGE:-}" ]; then
		[ -n "${VIGIL_NSPAWN_ADDRESS:-}" ] || die "VIGIL_NSPAWN_BRIDGE needs VIGIL_NSPAWN_ADDRESS"
		ip link show "$VIGIL_NSPAWN_BRIDGE" >/dev/null 2>&1 || die "no bridge $VIGIL_NSPAWN_BRIDGE"
		net=(--network-bridge="$VIGIL_NSPAWN_BRIDGE")
		echo "$name" >"$dir/root/etc/hostname"
		# As Debian's installer does: the hostname resolves (RabbitMQ's
		# node name is rabbit@NAME).
		printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$name" \
			>"$dir/root/etc/hosts"
		mkdir -p "$dir/root/etc/systemd/network" "$dir/root/etc/systemd/system/multi-user.target.wants"
		{
			printf '[Match]\nName=host0\n\n[Network]\nAddress=%s\n' "$VIGIL_NSPAWN_ADDRESS"
			[ -z "${VIGIL_NSPAWN_GATEWAY:-}" ] || printf 'Gateway=%s\n' "$VIGIL_NSPAWN_GATEWAY"
			printf 'LinkLocalAddressing=no\n'
		} >"$dir/root/etc/systemd/network/10-vigil-host0.network"
		ln -sf /lib/systemd/system/systemd-networkd.service \
			"$dir/root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
		if [ -n "${VIGIL_NSPAWN_AUTHORIZED_KEYS:-}" ]; then
			mkdir -p -m 0700 "$dir/root/root/.ssh"
			install -m 0600 "$VIGIL_NSPAWN_AUTHORIZED_KEYS" "$dir/root/root/.ssh/authorized_keys"
		fi
	fi
	note "booting $name"
	remove_cgroups "$name"
	mapfile -t cgroups < <(machine_cgroups "$name")
	for cg in "${cgroups[@]}"; do
		mkdir "$cg" || die "cannot create the cgroup $cg$(
			procs=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')
			[ -z "$procs" ] || echo " (it still holds pids ${procs% }: an earlier $name not stopped?)"
		)"
	done
	(
		for cg in "${cgroups[@]}"; do
			echo "$BASHPID" >"$cg/cgroup.procs" || exit 1
		done
		exec setsid systemd-nspawn -q -D "$dir/root" -M "$name" --boot --register=no --keep-unit \
			--console=read-only --resolv-conf=off --timezone=off "${net[@]}"
	) >"$dir/console.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$dir/nspawn.pid"
	# Booted when systemd says so (degraded is fine: nothing vigil-related
	# has been installed yet).
	for _ in $(seq 1 $((BOOT_TIMEOUT * 2))); do
		if ! alive "$pid"; then
			tail -n 40 "$dir/console.log" >&2
			die "systemd-nspawn exited while booting $name"
		fi
		# Record the machine's init (PID 1 of its own namespace) as soon as
		# it exists: stop kills it should systemd-nspawn be gone.
		if [ ! -s "$dir/leader.pid" ] && leader=$(leader_pid "$name" 2>/dev/null) &&
			grep -qE '^NSpid:[[:space:]]+[0-9]+[[:space:]]+1$' "/proc/$leader/status" 2>/dev/null; then
			echo "$leader $(start_time "$leader")" >"$dir/leader.pid"
		fi
		# Asked only of that init: until nspawn has cloned it, the machine
		# has no systemd to ask.
		state=
		if [ -s "$dir/leader.pid" ]; then
			state=$(in_machine "$name" systemctl is-system-running 2>/dev/null || true)
		fi
		case $state in
		running | degraded)
			note "$name is up ($state)"
			return 0
			;;
		esac
		sleep 0.5
	done
	tail -n 40 "$dir/console.log" >&2
	die "$name did not finish booting within ${BOOT_TIMEOUT}s (state: ${state:-unknown})"
}

cmd_exec() {
	local name=$1
	shift
	[ $# -gt 0 ] || usage
	in_machine "$name" "$@"
}

cmd_copy_in() { # name src dst
	local name=$1 src=$2 dst=$3
	in_machine "$name" mkdir -p "$(dirname "$dst")"
	tar -C "$(dirname "$src")" -cf - "$(basename "$src")" |
		in_machine "$name" tar -C "$(dirname "$dst")" -xf - --no-same-owner
	if [ "$(basename "$src")" != "$(basename "$dst")" ]; then
		in_machine "$name" mv "$(dirname "$dst")/$(basename "$src")" "$dst"
	fi
}

cmd_install_debs() { # name dir
	local name=$1 src=$2 debs
	debs=$(cd "$src" && ls -1 ./*.deb 2>/dev/null | tr '\n' ' ')
	[ -n "$debs" ] || die "no .deb files in $src"
	in_machine "$name" rm -rf /root/debs
	in_machine "$name" mkdir -p /root/debs
	(cd "$src" && tar -cf - ./*.deb) | in_machine "$name" tar -C /root/debs -xf -
	# apt resolves the distro dependencies (already in the cache) itself.
	in_machine "$name" sh -c "cd /root/debs && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold $debs"
}

cmd_status() {
	leader_pid "$1" >/dev/null 2>&1
}

cmd_stop() {
	local name=$1 dir pid leader
	valid_name "$name"
	dir=$(machine_dir "$name")
	pid=$(cat "$dir/nspawn.pid" 2>/dev/null || true)
	alive "$pid" || pid=
	# The machine's init recorded at boot: it outlives a systemd-nspawn that
	# was killed (or lost), with every service of the machine running.
	leader=$(recorded_leader "$name") || leader=
	if [ -n "$pid" ] || [ -n "$leader" ]; then
		note "stopping $name"
		# SIGRTMIN+4 to the machine's init is a clean poweroff.
		if [ -n "$leader" ]; then
			kill -s RTMIN+4 "$leader" 2>/dev/null || true
		else
			(in_machine "$name" systemctl poweroff --no-block) >/dev/null 2>&1 || true
		fi
		for _ in $(seq 1 60); do
			alive "$pid" || alive "$leader" || break
			sleep 0.5
		done
		if alive "$pid" || alive "$leader"; then
			note "$name did not power off in 30s: killing it"
			# SIGKILL to the init ends its whole PID namespace.
			for p in $leader $pid; do
				kill -KILL "$p" 2>/dev/null || true
			done
			for _ in $(seq 1 40); do
				alive "$pid" || alive "$leader" || break
				sleep 0.25
			done
		fi
	fi
	remove_cgroups "$name"
	unmount_root "$dir"
	rm -rf "$dir"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
create) cmd_create ;;
boot) [ $# -eq 1 ] || usage; cmd_boot "$1" ;;
exec) [ $# -ge 2 ] || usage; cmd_exec "$@" ;;
copy-in) [ $# -eq 3 ] || usage; cmd_copy_in "$@" ;;
install-debs) [ $# -eq 2 ] || usage; cmd_install_debs "$@" ;;
status) [ $# -eq 1 ] || usage; cmd_status "$1" ;;
leader) [ $# -eq 1 ] || usage; leader_pid "$1" || die "$1 is not running" ;;
stop) [ $# -eq 1 ] || usage; cmd_stop "$1" ;;
*) usage ;;
esac
