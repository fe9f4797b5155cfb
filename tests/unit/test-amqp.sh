#!/bin/sh
# test-amqp against a RabbitMQ of its own (skips, 77, when none is installed).
: "${top_srcdir:=$(dirname "$0")/../..}"
: "${top_builddir:=.}"
exec "$top_srcdir/tests/with-servers.sh" rabbitmq -- "$top_builddir/tests/unit/test-amqp"
