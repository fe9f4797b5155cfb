# The reliability drills across daemons (issue 4): nothing lost under
# kills and restarts, and the charge flow as one distributed trace. They
# need vigil-authd, vigil-paymentd, vigil-notifyd and
# tests/integration/amqp-publish (a check program of the notifyd fragment)
# built, and start PostgreSQL, Redis and RabbitMQ with scripts/dev-stack.sh.
TESTS += \
	tests/integration/test-nothing-lost.py \
	tests/integration/test-payment-trace.py
EXTRA_DIST += \
	tests/integration/test-nothing-lost.py \
	tests/integration/test-payment-trace.py
