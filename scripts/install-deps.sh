#!/usr/bin/env bash
# Install everything vigil needs to build, test and run on Debian 12.
# Idempotent: packages already present are left alone.
set -euo pipefail

BUILD_PKGS=(
	build-essential autoconf automake libtool pkg-config clang lld
	libclang-rt-14-dev clang-format
	libmicrohttpd-dev libpq-dev libhiredis-dev librabbitmq-dev libjwt-dev
	libjson-c-dev libcurl4-openssl-dev libsystemd-dev libcrypt-dev
	libinih-dev check
)
RUNTIME_PKGS=(
	postgresql postgresql-contrib redis-server rabbitmq-server nginx-light
	prometheus prometheus-alertmanager prometheus-blackbox-exporter mtail
	wrk curl python3 python3-locust procps psmisc
	iproute2 util-linux python3-prometheus-client python3-yaml
	debhelper devscripts lintian rpm debootstrap systemd-container dbus-daemon
	stress-ng groff-base
	ansible ansible-lint yamllint openssh-client nftables
)

missing=()
for p in "${BUILD_PKGS[@]}" "${RUNTIME_PKGS[@]}" "$@"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: need root to install: ${missing[*]}" >&2
	exit 1
fi

# Packages must not start their distro services on this host: the dev stack
# and the tests run their own instances on loopback ports. policy-rc.d is
# the Debian way to say so; remove ours again afterwards.
own_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod 755 /usr/sbin/policy-rc.d
	own_policy=1
fi
trap '[ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
