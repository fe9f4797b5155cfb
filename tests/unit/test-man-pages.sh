#!/bin/sh
# The man pages the packages ship: vigil-<name>(8) of every daemon (as
# assembled by the build), vigil.conf(5) and vigilctl(8) format without a
# groff warning; a daemon's page documents every option its --help lists,
# every credential its unit loads, and its socket's address; vigil.conf(5)
# names every key every daemon shares.
set -eu
: "${top_srcdir:=$(dirname "$0")/../..}"
: "${top_builddir:=.}"
failed=0
fail() { echo "FAIL: $*"; failed=1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! command -v groff >/dev/null 2>&1; then
	echo "SKIP: groff is not installed"
	exit 77
fi

# Text of page $1 (groff's own hyphens and escapes turned to ASCII), and its
# warnings in $tmp/warnings.
render() {
	LC_ALL=C.UTF-8 groff -ww -man -Tascii "$1" 2>"$tmp/warnings" | sed 's/.\x08//g'
}

for page in "$top_srcdir/docs/man/vigil.conf.5" "$top_srcdir/docs/man/vigilctl.8"; do
	render "$page" >/dev/null
	if [ -s "$tmp/warnings" ]; then
		fail "$(basename "$page"): groff warns: $(cat "$tmp/warnings")"
	else
		echo "PASS: $(basename "$page") formats without a warning"
	fi
done

for d in authd paymentd inventoryd notifyd alertbotd; do
	page=$top_builddir/docs/man/vigil-$d.8
	if [ ! -f "$page" ]; then
		fail "vigil-$d.8 was not built"
		continue
	fi
	render "$page" | tr -s ' \n' '  ' >"$tmp/text"
	if [ -s "$tmp/warnings" ]; then
		fail "vigil-$d.8: groff warns: $(cat "$tmp/warnings")"
	fi
	if grep -q '@[a-z_]*@' "$page"; then
		fail "vigil-$d.8 has an unreplaced @KEY@: $(grep -o '@[a-z_]*@' "$page" | head -n 3)"
	fi

	ok=1
	for opt in $("$top_builddir/src/$d/vigil-$d" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
		grep -q -- "$opt" "$tmp/text" || { fail "vigil-$d.8 does not document $opt"; ok=0; }
	done
	unit=$top_srcdir/units/vigil-$d.service.in
	for cred in $(sed -n 's/^LoadCredential=\([^:]*\):.*/\1/p' "$unit"); do
		grep -q -- "credential $cred" "$tmp/text" || {
			fail "vigil-$d.8 does not name its credential $cred"
			ok=0
		}
	done
	listen=$(sed -n 's/^ListenStream=//p' "$top_srcdir/units/vigil-$d.socket")
	grep -q -- "$listen" "$tmp/text" || { fail "vigil-$d.8 does not give its address $listen"; ok=0; }
	for text in "/etc/vigil/$d.conf" "SIGHUP" "SIGTERM" "vigil.conf(5)"; do
		grep -q -- "$text" "$tmp/text" || { fail "vigil-$d.8 lacks $text"; ok=0; }
	done
	[ $ok -eq 1 ] && echo "PASS: vigil-$d.8: every option, credential, its address, files and signals"
done

# vigil.conf(5) names every key the daemons share (those of a daemon
# without sections of its own: the first lines of any --dump-config).
render "$top_srcdir/docs/man/vigil.conf.5" | tr -s ' \n' '  ' >"$tmp/text"
ok=1
"$top_builddir/src/authd/vigil-authd" --dump-config | awk '
	/^\[/ { section = $0 }
	/^#[a-z_]+ =/ && (section == "[http]" || section == "[tracing]" || section == "[log]") {
		key = substr($1, 2); print section " " key
	}' >"$tmp/keys"
while read -r section key; do
	grep -q -- "$key" "$tmp/text" || { fail "vigil.conf.5 does not name $section $key"; ok=0; }
done <"$tmp/keys"
[ -s "$tmp/keys" ] || { fail "no shared keys found in --dump-config"; ok=0; }
[ $ok -eq 1 ] && echo "PASS: vigil.conf.5 names every key every daemon shares"
exit $failed
