#!/bin/sh
# test-local-cache against a Redis of its own (skips, 77, when none is installed).
: "${top_srcdir:=$(dirname "$0")/../..}"
: "${top_builddir:=.}"
exec bash "$top_srcdir/tests/with-servers.sh" redis -- "$top_builddir/tests/unit/test-local-cache"
