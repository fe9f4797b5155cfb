#!/usr/bin/env bash
# Build vigil's Debian packages from a clean copy of the tree.
#
#   build-packages.sh [--src DIR] [--out DIR] [--version VERSION] [--if-stale]
#                     [--no-lintian] [--no-check] [--no-dbgsym]
#
# The copy holds the source files scripts/list-sources.sh names (tracked and
# untracked-unignored files, never a build product: the package build
# generates every substituted file again with the package's own prefix).
# --src packages another tree (default: this one). The .deb files,
# .changes and .buildinfo land in DIR (default build/packages), with
# lintian's report in DIR/lintian.txt (an error there fails the build).
# --version builds the same tree as another version (a changelog entry is
# added to the copy: used by the system test's upgrade check).
# --if-stale does nothing when DIR already holds packages of these exact
# sources (same content hash, same version, same options). Builds into one
# DIR take turns (a lock in DIR), so tests running side by side build once.
# --no-dbgsym leaves out the -dbgsym packages.
set -euo pipefail

# Run from `make check`, we inherit the outer make's command-line variables
# (TEST_LOGS, the whole suite) through MAKEFLAGS; the package build's own
# `make check TESTS=…` must not see them.
unset MAKEFLAGS MFLAGS MAKEOVERRIDES MAKELEVEL GNUMAKEFLAGS

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=$top/build/packages
version=
if_stale=0
lintian=1
check=1
dbgsym=1
while [ $# -gt 0 ]; do
	case $1 in
	--src) top=$(cd "$2" && pwd); shift 2 ;;
	--out) out=$2; shift 2 ;;
	--version) version=$2; shift 2 ;;
	--if-stale) if_stale=1; shift ;;
	--no-lintian) lintian=0; shift ;;
	--no-check) check=0; shift ;;
	--no-dbgsym) dbgsym=0; shift ;;
	*) echo "usage: $0 [--src DIR] [--out DIR] [--version VERSION] [--if-stale] [--no-lintian] [--no-check] [--no-dbgsym]" >&2; exit 2 ;;
	esac
done

prog=${0##*/}
note() { echo "$prog: $*" >&2; }
die() { note "$*"; exit 1; }

for tool in dpkg-buildpackage dh git; do
	command -v "$tool" >/dev/null || die "$tool not found: apt-get install dpkg-dev debhelper git"
done

list_sources() { "$here/list-sources.sh" "$top"; }

hash=$(cd "$top" && list_sources | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
[ -n "$version" ] || version=$(cd "$top" && dpkg-parsechangelog -S Version)
stamp="$hash $version check=$check lintian=$lintian dbgsym=$dbgsym"
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec 9>"$out/.lock"
flock 9
if [ $if_stale -eq 1 ] && [ "$(cat "$out/.source-stamp" 2>/dev/null)" = "$stamp" ] &&
	ls "$out"/*.deb >/dev/null 2>&1; then
	note "packages in $out are up to date ($version)"
	exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vigil-pkg.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/vigil-$version
mkdir -p "$src"
(cd "$top" && list_sources | tar --null -T - -cf -) | tar -C "$src" -xf -

if [ "$version" != "$(cd "$src" && dpkg-parsechangelog -S Version)" ]; then
	command -v dch >/dev/null || die "dch not found: apt-get install devscripts"
	(cd "$src" && DEBEMAIL=vigil-maintainers@example.org DEBFULLNAME="vigil maintainers" \
		dch --newversion "$version" --distribution bookworm --force-distribution \
		"Rebuild as $version." >/dev/null 2>&1) || die "dch --newversion $version failed"
fi

note "building $version in $src"
opts=(-us -uc -b -j"$(nproc)")
[ $check -eq 1 ] || export DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}"
[ $dbgsym -eq 1 ] || export DEB_BUILD_OPTIONS="noddebs ${DEB_BUILD_OPTIONS:-}"
if ! (cd "$src" && dpkg-buildpackage "${opts[@]}") >"$work/build.log" 2>&1; then
	tail -n 60 "$work/build.log" >&2
	cp "$work/build.log" "$out/build.log"
	die "dpkg-buildpackage failed (log: $out/build.log)"
fi
cp "$work/build.log" "$out/build.log"
if grep -q '^dh_missing: warning' "$work/build.log"; then
	note "installed but in no package (a daemon without its package yet?):"
	grep '^dh_missing: warning' "$work/build.log" | sed 's/^dh_missing: warning: /  /' >&2
fi

rm -f "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo "$out/.source-stamp"
cp "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo "$out/"

if [ $lintian -eq 1 ] && command -v lintian >/dev/null; then
	changes=$(ls "$out"/*.changes | head -n1)
	lintian --no-tag-display-limit "$changes" >"$out/lintian.txt" 2>&1 || true
	if grep -q '^E:' "$out/lintian.txt"; then
		grep '^E:' "$out/lintian.txt" >&2
		die "lintian reports errors (all of it: $out/lintian.txt)"
	fi
	note "lintian: $(grep -c '^E:' "$out/lintian.txt") errors, $(grep -c '^W:' "$out/lintian.txt") warnings ($out/lintian.txt)"
fi
echo "$stamp" >"$out/.source-stamp"
note "packages in $out:"
(cd "$out" && ls -1 ./*.deb) >&2
