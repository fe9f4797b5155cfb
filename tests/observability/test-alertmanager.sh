#!/bin/sh
# amtool on the shipped alertmanager.yml: the config is valid and every
# route sends the alerts it is meant for to the right receivers (with the
# alert bot's route continuing to the paging/ticket routes).
set -u
top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
AMTOOL=${AMTOOL:-amtool}
if ! command -v "$AMTOOL" >/dev/null 2>&1; then
	echo "SKIP: $AMTOOL not found" >&2
	exit 77
fi
cfg=$top_srcdir/etc/alertmanager/alertmanager.yml
pass=0
fail=0

if out=$("$AMTOOL" check-config "$cfg" 2>&1); then
	echo "PASS amtool check-config"
	pass=$((pass + 1))
else
	echo "FAIL amtool check-config"
	echo "$out"
	fail=$((fail + 1))
fi

route() { # expected-receivers label=value...
	want=$1
	shift
	if out=$("$AMTOOL" config routes test --config.file="$cfg" --verify.receivers="$want" "$@" 2>&1); then
		echo "PASS route $* -> $want"
		pass=$((pass + 1))
	else
		echo "FAIL route $* -> expected $want"
		echo "$out"
		fail=$((fail + 1))
	fi
}

# Remediable pages: the bot restarts the unit, a human is paged as well.
route alertbot,escalation alertname=VigilDaemonDown service=auth severity=page remediation=restart unit=vigil-authd.service
route alertbot,escalation alertname=VigilUnitFailed service=payment severity=page remediation=restart unit=vigil-paymentd.service
# A remediable ticket: the bot, then the ticket queue.
route alertbot,tickets alertname=SomeRemediableTicket severity=ticket remediation=restart unit=vigil-notifyd.service
# Pages that are not remediable: escalation only.
route escalation alertname=VigilSLOBudgetBurnPage slo=payment-availability service=payment severity=page
route escalation alertname=VigilPostgresDown dependency=postgres severity=page
route escalation alertname=VigilDaemonRestartLoop service=auth severity=page
# Tickets.
route tickets alertname=VigilSLOBudgetBurnTicket slo=auth-latency service=auth severity=ticket
route tickets alertname=VigilHostDiskWillFill severity=ticket
# Anything unlabelled falls to the ticket queue, never to the bot.
route tickets alertname=Unknown
route tickets alertname=Unknown remediation=none

echo "test-alertmanager: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
