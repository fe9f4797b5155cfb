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
	tests/integration/test-vigilctl-fault.py
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
	tests/integration/test-vigilctl-fault.py
