#!/bin/sh
# amtool on the shipped alertmanager.yml: the config is valid, every route
# sends the alerts it is meant for to the right receivers (with the alert
# bot's route continuing to the paging/ticket routes), every receiver posts
# to vigil-alertbotd (nothing points at a port where nobody listens), and
# the commented email/Slack/PagerDuty examples are valid once uncommented.
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

# Every notification lands on the host: the bot's webhook, or its /notify
# for pages and tickets (recorded in the journal and GET /notifications).
urls=$(sed -n 's/^ *- url: *//p' "$cfg" | sort | uniq -c | sed 's/^ *//')
if [ "$urls" = "2 http://127.0.0.1:8005/notify
1 http://127.0.0.1:8005/webhook" ]; then
	echo "PASS receivers: escalation and tickets post to the bot's /notify, alertbot to /webhook"
	pass=$((pass + 1))
else
	echo "FAIL receivers: every URL must be the bot's /webhook or /notify (escalation and tickets); got:"
	echo "$urls"
	fail=$((fail + 1))
fi

# The commented destinations are examples an operator uncomments: they
# must be valid as they stand (amtool refuses unknown keys).
examples=$(mktemp)
trap 'rm -f "$examples"' EXIT
sed -E 's/^(    )# ((email|slack|pagerduty)_configs:|  )/\1\2/' "$cfg" >"$examples"
n=0
out=""
for kind in email_configs slack_configs pagerduty_configs; do
	if grep -q "^    $kind:" "$examples" && ! grep -q "^    $kind:" "$cfg"; then
		n=$((n + 1))
	else
		echo "FAIL example: no commented $kind in a receiver"
		fail=$((fail + 1))
	fi
done
if [ "$n" -eq 3 ] && out=$("$AMTOOL" check-config "$examples" 2>&1); then
	echo "PASS amtool check-config with the email, Slack and PagerDuty examples uncommented"
	pass=$((pass + 1))
else
	echo "FAIL the commented examples, uncommented, are not a valid configuration"
	echo "${out:-}"
	fail=$((fail + 1))
fi

echo "test-alertmanager: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
