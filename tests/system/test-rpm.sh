#!/bin/sh
# Build rpm/vigil.spec with Debian's rpm: a source tarball of the tree (the
# files scripts/list-sources.sh names, never a build product), rpmbuild -bb with
# --nodeps (Debian's rpm has no database of the build dependencies, which
# are the Debian packages installed here). Checks the split and the units.
# Skips (77) without rpmbuild or a git work tree; VIGIL_RPM_SRC=DIR builds
# another tree.
set -eu

# Run from `make check`, we inherit the outer make's command-line variables
# (TEST_LOGS, the whole suite) through MAKEFLAGS; the package build's own
# `make check TESTS=…` must not see them.
unset MAKEFLAGS MFLAGS MAKEOVERRIDES MAKELEVEL GNUMAKEFLAGS

top=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
src=${VIGIL_RPM_SRC:-$top}
command -v rpmbuild >/dev/null 2>&1 || { echo "SKIP: rpmbuild not installed (apt-get install rpm)"; exit 77; }
if [ -z "${VIGIL_RPM_SRC:-}" ] && ! git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	echo "SKIP: $top is not a git work tree"
	exit 77
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vigil-rpm.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
version=$(sed -n 's/^Version: *//p' "$src/rpm/vigil.spec")
mkdir -p "$work/SOURCES" "$work/vigil-$version"
(cd "$src" && "$top/scripts/list-sources.sh" "$src" | tar --null -T - -cf -) |
	tar -C "$work/vigil-$version" -xf -
tar -C "$work" -czf "$work/SOURCES/vigil-$version.tar.gz" "vigil-$version"
rm -rf "$work/vigil-$version"

if ! rpmbuild -bb --nodeps --define "_topdir $work" --define "_build_id_links none" \
	"$src/rpm/vigil.spec" >"$work/rpmbuild.log" 2>&1; then
	tail -n 60 "$work/rpmbuild.log"
	echo "FAIL: rpmbuild"
	exit 1
fi
rpms=$(find "$work/RPMS" -name '*.rpm' | sort)
echo "$rpms" | sed "s|$work/RPMS/||"
fail=0
for p in vigil vigil-common vigil-authd vigil-paymentd vigil-inventoryd vigil-notifyd vigil-alertbot \
	vigil-gateway vigil-monitoring vigilctl; do
	echo "$rpms" | grep -q "/$p-$version-" || { echo "FAIL: no $p package"; fail=1; }
done
# Every daemon subpackage: binary, units, conffile, and a %post that runs vigil-setup.
for d in authd paymentd inventoryd notifyd alertbotd; do
	case $d in alertbotd) p=vigil-alertbot ;; *) p=vigil-$d ;; esac
	rpm=$(echo "$rpms" | grep "/$p-$version-") || continue
	for f in /usr/sbin/vigil-$d /usr/lib/systemd/system/vigil-$d.service \
		/usr/lib/systemd/system/vigil-$d.socket /etc/vigil/$d.conf; do
		rpm -qlp "$rpm" 2>/dev/null | grep -qx "$f" || { echo "FAIL: $p lacks $f"; fail=1; }
	done
	rpm -qp --scripts "$rpm" 2>/dev/null | grep -q "vigil-setup install $d" ||
		{ echo "FAIL: $p's %post does not run vigil-setup install $d"; fail=1; }
	rpm -qcp "$rpm" 2>/dev/null | grep -qx "/etc/vigil/$d.conf" ||
		{ echo "FAIL: /etc/vigil/$d.conf is not a config file of $p"; fail=1; }
done
alertbot=$(echo "$rpms" | grep "/vigil-alertbot-$version-" || true)
rpm -qcp "$alertbot" 2>/dev/null | grep -qx /etc/vigil/alertbot-policy.conf ||
	{ echo "FAIL: vigil-alertbot lacks the policy /etc/vigil/alertbot-policy.conf"; fail=1; }
vigilctl=$(echo "$rpms" | grep "/vigilctl-$version-" || true)
for f in /usr/sbin/vigilctl /usr/share/vigilctl/vigilctl/validate.py \
	/usr/share/vigilctl/vigilctl/load.py /usr/share/vigilctl/load/locustfile.py; do
	rpm -qlp "$vigilctl" 2>/dev/null | grep -qx "$f" || { echo "FAIL: vigilctl lacks $f"; fail=1; }
done
rpm -qp --recommends "$vigilctl" 2>/dev/null | grep -qx python3-locust ||
	{ echo "FAIL: vigilctl does not recommend python3-locust (vigilctl load)"; fail=1; }
grep -q '^PASS: tests/unit/test-jwt' "$work/rpmbuild.log" || { echo "FAIL: %check did not run the unit tests"; fail=1; }
[ $fail -eq 0 ] && echo "PASS: rpmbuild built the split"
exit $fail
