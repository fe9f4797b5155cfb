#!/bin/sh
# Every daemon's configuration surface: the shipped /etc/vigil file shows
# every key at its default (it is exactly --dump-config), --check-config
# accepts it and names file, line and key of every error in a bad one
# (enums with their allowed values; alertbotd's policy file too),
# environment overrides are validated too, and a daemon missing a required
# secret refuses to start, naming the credential.
set -eu
: "${top_srcdir:=$(dirname "$0")/../..}"
: "${top_builddir:=.}"
: "${sysconfdir:=/etc}"
: "${localstatedir:=/var}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
# alertbotd's --check-config also reads the policy its config names: the
# shipped one, not one installed on this machine.
VIGIL_POLICY_FILE=$top_srcdir/etc/vigil/alertbot-policy.conf
export VIGIL_POLICY_FILE
fail() { echo "FAIL: $*"; failed=1; }

# check NAME BAD-CONFIG "LINE:KEY …" ENV-ASSIGNMENT ENV-KEY CREDENTIAL
check() {
	name=$1 bad=$2 expected=$3 env_bad=$4 env_key=$5 credential=$6
	bin=$top_builddir/src/$name/vigil-$name
	shipped=$top_srcdir/etc/vigil/$name.conf

	# Shipped files carry the packaged paths, whatever this build's prefix.
	"$bin" --dump-config | sed "s|$sysconfdir/|/etc/|g; s|$localstatedir/|/var/|g" >"$tmp/dump"
	if diff -u "$shipped" "$tmp/dump"; then
		echo "PASS: $name: etc/vigil/$name.conf is --dump-config"
	else
		fail "$name: etc/vigil/$name.conf differs from --dump-config"
	fi

	if "$bin" --config "$shipped" --check-config >"$tmp/out" 2>&1; then
		echo "PASS: $name: the shipped file passes --check-config"
	else
		fail "$name: shipped config rejected: $(cat "$tmp/out")"
	fi

	printf "$bad" >"$tmp/bad.conf"
	if "$bin" --config "$tmp/bad.conf" --check-config >"$tmp/out" 2>&1; then
		fail "$name: bad config accepted"
	else
		ok=1
		for e in $expected; do
			grep -q "bad.conf:${e%%:*}: .*${e#*:}" "$tmp/out" || {
				fail "$name: bad.conf line ${e%%:*} (${e#*:}) not reported: $(cat "$tmp/out")"
				ok=0
			}
		done
		[ $ok -eq 1 ] && echo "PASS: $name: --check-config names file, line and key of each error"
	fi

	if env "$env_bad" "$bin" --config "$shipped" --check-config >"$tmp/out" 2>&1; then
		fail "$name: invalid $env_bad accepted"
	elif grep -q "$env_key" "$tmp/out"; then
		echo "PASS: $name: environment overrides are validated"
	else
		fail "$name: env error does not name $env_key: $(cat "$tmp/out")"
	fi

	[ -n "$credential" ] || return 0
	if env -u CREDENTIALS_DIRECTORY VIGIL_LOG_TARGET=stderr VIGIL_TRACING_OTLP_ENDPOINT= \
		VIGIL_HTTP_LISTEN=127.0.0.1:0 timeout 20 "$bin" --config "$shipped" >"$tmp/out" 2>&1; then
		fail "$name: started without the $credential credential"
	elif grep -q "$credential" "$tmp/out"; then
		echo "PASS: $name: refuses to start without the $credential credential"
	else
		fail "$name: missing $credential not named: $(cat "$tmp/out")"
	fi
}

check authd '[http]\nlisten = 127.0.0.1:8001\nbogus = 1\n[auth]\ntoken_ttl_seconds = ten\n[log]\nlevel = loud\n' \
	"3:bogus 5:token_ttl_seconds 7:level" VIGIL_HTTP_MAX_CONNECTIONS=0 max_connections jwt-key
check paymentd '[processor]\ndecline_ratio = 1.5\n[idempotency]\nretention_hours = 23\n[faults]\nbogus = 1\n' \
	"2:decline_ratio 4:retention_hours 6:bogus" VIGIL_FAULTS_ERROR_RATIO=2 error_ratio amqp-password
check inventoryd '[cache]\nttl_seconds = 0\nbogus = 1\n' \
	"2:ttl_seconds 3:bogus" VIGIL_CACHE_TTL_SECONDS=-1 ttl_seconds ""
check notifyd '[consumer]\nprefetch = 0\nbogus = 1\n[faults]\nerror_ratio = 1.5\n' \
	"2:prefetch 3:bogus 5:error_ratio" VIGIL_CONSUMER_MAX_ATTEMPTS=5 max_attempts amqp-password
check alertbotd '[webhook]\nmax_alerts = 0\nbogus = 1\n' \
	"2:max_alerts 3:bogus" VIGIL_WEBHOOK_MAX_ALERTS=5000 max_alerts webhook-token
# An enum names the values it takes.
printf '[log]\nlevel = loud\n' >"$tmp/level.conf"
if "$top_builddir/src/authd/vigil-authd" --config "$tmp/level.conf" --check-config >"$tmp/out" 2>&1; then
	fail "authd: [log] level = loud accepted"
elif grep -q 'level.conf:2: \[log\] level: expected one of debug, info, notice, warning, err, error, crit, alert, emerg, got \\"loud\\"' "$tmp/out"; then
	echo "PASS: a bad [log] level names file, line and the allowed values"
else
	fail "bad [log] level not named with file, line and choices: $(cat "$tmp/out")"
fi

# alertbotd's --check-config checks the policy file its configuration
# names, every error with file and line, even when the configuration
# itself has errors too.
printf '[policy]\nfile = %s/policy.conf\n[log]\nlevel = loud\n' "$tmp" >"$tmp/alertbotd.conf"
printf '[policy]\ncooldown = 5\nbudget_per_hour = lots\n[rule.X]\naction = stop\n' >"$tmp/policy.conf"
if env -u VIGIL_POLICY_FILE "$top_builddir/src/alertbotd/vigil-alertbotd" --config "$tmp/alertbotd.conf" \
	--check-config >"$tmp/out" 2>&1; then
	fail "alertbotd: bad policy accepted by --check-config"
else
	ok=1
	for e in "alertbotd.conf:4: \[log\] level" "policy.conf:2: \[policy\] cooldown: unknown key" \
		"policy.conf:3: \[policy\] budget_per_hour" "policy.conf:5: \[rule.X\] action" \
		"policy.conf:5: \[rule.X\] needs exactly one of unit and unit_label"; do
		grep -q "$e" "$tmp/out" || { fail "alertbotd: \"$e\" not reported: $(cat "$tmp/out")"; ok=0; }
	done
	[ $ok -eq 1 ] && echo "PASS: alertbotd: --check-config reports every error of the config and its policy"
fi
exit $failed
