#!/bin/sh
# Every unit's ExecReload= checks the configuration before it signals:
# the commands are run as systemd runs them (in order, stopping at the
# first that fails) with the build's daemons in @sbindir@ and a stand-in
# main process. A bad configuration makes the reload fail and the main
# process is never signalled; a good one is signalled. The check reads what
# ExecStart= reads: the same arguments, the default file with its drop-ins
# (in a private mount namespace over $sysconfdir, when this runs as root)
# and the environment.
set -eu
: "${top_srcdir:=$(dirname "$0")/../..}"
: "${top_builddir:=.}"
: "${sysconfdir:=/etc}"
tmp=$(mktemp -d)
main_pid=
cleanup() {
	[ -z "$main_pid" ] || kill "$main_pid" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
failed=0
fail() { echo "FAIL: $*"; failed=1; }

mkdir "$tmp/sbin"
for d in authd paymentd inventoryd notifyd alertbotd; do
	ln -s "$(cd "$top_builddir/src/$d" && pwd)/vigil-$d" "$tmp/sbin/vigil-$d"
done

# The values of KEY= in unit file $1, @sbindir@ resolved, one a line.
directive() {
	sed -n "s|^$2=||p" "$1" | sed "s|@sbindir@|$tmp/sbin|g"
}

# Run the ExecReload= commands of unit $1 as systemd would, with
# MAINPID set; returns the status of the first that fails, or 0.
reload() {
	directive "$1" ExecReload >"$tmp/reload"
	while IFS= read -r cmd; do
		MAINPID=$main_pid
		export MAINPID
		# shellcheck disable=SC2086 # systemd splits the command line too
		eval "set -- $cmd"
		"$@" >>"$tmp/out" 2>&1 || return $?
	done <"$tmp/reload"
	return 0
}

# A main process that SIGHUP ends, bounded. Its handler is set, not left
# to the default action: a SIGHUP ignored by whoever started the tests
# (nohup) would be ignored by a plain sleep too.
start_main() {
	perl -e '$SIG{HUP} = sub { exit 0 }; sleep 300' &
	main_pid=$!
}

# Whether the stand-in main process was signalled, bounded in time.
signalled() {
	i=0
	while kill -0 "$main_pid" 2>/dev/null; do
		i=$((i + 1))
		[ $i -le 50 ] || return 1
		sleep 0.1
	done
	wait "$main_pid" 2>/dev/null || true
	main_pid=
	return 0
}

for d in authd paymentd inventoryd notifyd alertbotd; do
	unit=$top_srcdir/units/vigil-$d.service.in
	start=$(directive "$unit" ExecStart)
	check=$(directive "$unit" ExecReload | head -n 1)
	if [ "$check" = "$start --check-config" ]; then
		echo "PASS: $d: ExecReload= first checks what ExecStart= reads"
	else
		fail "$d: first ExecReload= is \"$check\", not \"$start --check-config\""
	fi

	# A bad override in the unit's environment (an Environment= drop-in).
	start_main
	: >"$tmp/out"
	if VIGIL_POLICY_FILE=$top_srcdir/etc/vigil/alertbot-policy.conf VIGIL_LOG_LEVEL=loud \
		reload "$unit"; then
		fail "$d: reload with VIGIL_LOG_LEVEL=loud succeeded"
	elif ! kill -0 "$main_pid" 2>/dev/null; then
		fail "$d: the main process was signalled despite the bad configuration"
	elif grep -q 'environment: \[log\] level: expected one of' "$tmp/out"; then
		echo "PASS: $d: a bad configuration fails the reload and is never signalled"
	else
		fail "$d: the failed reload does not say why: $(cat "$tmp/out")"
	fi
	kill "$main_pid"
	wait "$main_pid" 2>/dev/null || true
	main_pid=

	start_main
	: >"$tmp/out"
	if VIGIL_POLICY_FILE=$top_srcdir/etc/vigil/alertbot-policy.conf reload "$unit" &&
		signalled; then
		echo "PASS: $d: a good configuration is checked, then signalled"
	else
		fail "$d: reload with a good configuration: $(cat "$tmp/out")"
	fi
done

# The installed file and its drop-ins, where the daemons look for them:
# a private tmpfs over $sysconfdir, so nothing of this machine is touched.
if [ "$(id -u)" -eq 0 ] && [ -d "$sysconfdir" ] &&
	unshare -m true 2>/dev/null; then
	cat >"$tmp/in-namespace.sh" <<'EOF'
set -eu
mount -t tmpfs vigil-test "$sysconfdir"
mkdir -p "$sysconfdir/vigil/authd.conf.d"
printf '[log]\nlevel = info\n' >"$sysconfdir/vigil/authd.conf"
printf '[http]\nmax_connections = 0\n' >"$sysconfdir/vigil/authd.conf.d/50-local.conf"
"$tmp/sbin/vigil-authd" --check-config
EOF
	if sysconfdir=$sysconfdir tmp=$tmp unshare -m sh "$tmp/in-namespace.sh" >"$tmp/out" 2>&1; then
		fail "authd: --check-config accepted a bad drop-in in $sysconfdir/vigil/authd.conf.d"
	elif grep -q "authd.conf.d/50-local.conf:2: \[http\] max_connections" "$tmp/out"; then
		echo "PASS: authd: the reload's check reads the installed drop-ins"
	else
		fail "authd: bad drop-in not named: $(cat "$tmp/out")"
	fi
else
	echo "NOTE: not root or no mount namespace: the drop-in check above ran on the environment only"
fi
exit $failed
