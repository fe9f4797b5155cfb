#!/bin/sh
# test-pg against a PostgreSQL of its own (skips, 77, when none is installed).
: "${top_srcdir:=$(dirname "$0")/../..}"
: "${top_builddir:=.}"
exec bash "$top_srcdir/tests/with-servers.sh" postgres -- "$top_builddir/tests/unit/test-pg"
