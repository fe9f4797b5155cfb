# Integration tests against real servers (owned by the integration work).
# Each file starts its own PostgreSQL and Redis with scripts/dev-stack.sh
# and the daemon from the build tree; they skip (77) when it is not built.
TESTS += \
	tests/integration/test-authd.py \
	tests/integration/test-authd-tracing.py \
	tests/integration/test-authd-metrics.py \
	tests/integration/test-gateway.py \
	tests/integration/test-gateway-metrics.py \
	tests/integration/test-vigilctl.py \
	tests/integration/test-faults.py \
	tests/integration/test-vigilctl-fault.py \
	tests/integration/test-vigilctl-load.py \
	tests/integration/test-vigilctl-chaos.py
EXTRA_DIST += \
	tests/integration/harness.py \
	tests/integration/gatewaylib.py \
	tests/integration/test-authd.py \
	tests/integration/test-authd-tracing.py \
	tests/integration/test-authd-metrics.py \
	tests/integration/test-gateway.py \
	tests/integration/test-gateway-metrics.py \
	tests/integration/test-vigilctl.py \
	tests/integration/test-faults.py \
	tests/integration/test-vigilctl-fault.py \
	tests/integration/test-vigilctl-load.py \
	tests/integration/test-vigilctl-chaos.py

# paymentd (and the payment flow, with vigil-authd and vigil-notifyd),
# inventoryd, notifyd with a small confirmed publisher (Python's standard
# library has no AMQP client), and alertbotd with a fake
# org.freedesktop.systemd1 on a private dbus-daemon (sd-bus, so the test
# needs no D-Bus bindings for Python).
check_PROGRAMS += tests/integration/amqp-publish tests/integration/fake-systemd
TESTS += \
	tests/integration/test-paymentd.py \
	tests/integration/test-payment-flow.py \
	tests/integration/test-inventoryd.py \
	tests/integration/test-notifyd.py \
	tests/integration/test-alertbotd-dbus.py \
	tests/integration/test-alertbotd-notify.py
EXTRA_DIST += \
	tests/integration/paymentd_stack.py \
	tests/integration/test-paymentd.py \
	tests/integration/test-payment-flow.py \
	tests/integration/test-inventoryd.py \
	tests/bench/bench-inventoryd.sh \
	tests/integration/test-notifyd.py \
	tests/integration/test-alertbotd-dbus.py \
	tests/integration/test-alertbotd-notify.py
