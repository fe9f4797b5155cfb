# Observability tests (included from tests/local.mk): configs, rules,
# dashboards and SLO generation checked statically and with promtool/amtool,
# then evaluated against real Prometheus and Alertmanager scraping the daemons.
OBSERVABILITY_TESTS = \
	tests/observability/test-slo-generated.sh \
	tests/observability/test-vigilctl-slo.py \
	tests/observability/test-prometheus-rules.sh \
	tests/observability/test-alertmanager.sh \
	tests/observability/test-static-configs.py \
	tests/observability/test-dashboards.py \
	tests/observability/test-live-queries.py \
	tests/observability/test-alert-e2e.py
TESTS += $(OBSERVABILITY_TESTS)
EXTRA_DIST += $(OBSERVABILITY_TESTS) tests/observability/obslib.py
# The files these tests read from the source tree.
EXTRA_DIST += etc/prometheus etc/alertmanager etc/promtail etc/loki etc/tempo \
	grafana-provisioning slo scripts/slo-gen.py docs/runbooks docs/observability.md
