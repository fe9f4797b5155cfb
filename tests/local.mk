# Tests: unit tests (Check) mirror src/, integration and system tests run
# the real servers, fuzz targets replay their corpora in every `make check`.
TEST_EXTENSIONS = .sh .py
SH_LOG_COMPILER = $(SHELL)
PY_LOG_COMPILER = $(PYTHON3)
AM_TESTS_ENVIRONMENT = \
	top_srcdir='$(abs_top_srcdir)'; export top_srcdir; \
	top_builddir='$(abs_top_builddir)'; export top_builddir; \
	PROMTOOL='$(PROMTOOL)'; export PROMTOOL; \
	sysconfdir='$(sysconfdir)'; export sysconfdir; \
	localstatedir='$(localstatedir)'; export localstatedir; \
	CK_DEFAULT_TIMEOUT=60; export CK_DEFAULT_TIMEOUT;

UNIT_CFLAGS = $(VIGIL_CFLAGS) $(CHECK_CFLAGS) -iquote $(top_srcdir)/tests/unit \
	-iquote $(top_srcdir)/src/authd -iquote $(top_srcdir)/src/paymentd \
	-iquote $(top_srcdir)/src/inventoryd -iquote $(top_srcdir)/src/notifyd \
	-iquote $(top_srcdir)/src/alertbotd
UNIT_LDADD = $(VIGIL_LIBS) $(CHECK_LIBS)

# Library modules that need no server.
LIB_UNIT_TESTS = \
	tests/unit/test-log \
	tests/unit/test-sd \
	tests/unit/test-conf \
	tests/unit/test-daemon \
	tests/unit/test-faults \
	tests/unit/test-metrics \
	tests/unit/test-trace \
	tests/unit/test-json-util \
	tests/unit/test-http-server \
	tests/unit/test-http-client \
	tests/unit/test-auth-client \
	tests/unit/test-jwt \
	tests/unit/test-password \
	tests/unit/test-slot-pool \
	tests/unit/test-strbuf \
	tests/unit/test-utf8
# Library modules tested against a real server, started by with-servers.sh.
SERVER_UNIT_TESTS = \
	tests/unit/test-pg \
	tests/unit/test-redis \
	tests/unit/test-local-cache \
	tests/unit/test-amqp

check_PROGRAMS += $(LIB_UNIT_TESTS) $(SERVER_UNIT_TESTS)
# Daemon areas.
DAEMON_UNIT_TESTS = \
	tests/unit/test-authd-users

check_PROGRAMS += $(DAEMON_UNIT_TESTS)
UNIT_TESTS = tests/fuzz/replay.sh $(LIB_UNIT_TESTS) tests/unit/test-pg.sh tests/unit/test-redis.sh \
	tests/unit/test-local-cache.sh tests/unit/test-amqp.sh \
	$(DAEMON_UNIT_TESTS) tests/unit/test-daemon-config.sh tests/unit/test-units-reload.sh \
	tests/unit/test-man-pages.sh tests/unit/test-api-doc.sh
TESTS += $(UNIT_TESTS)
EXTRA_DIST += tests/unit/test-daemon-config.sh tests/unit/test-units-reload.sh \
	tests/unit/test-man-pages.sh tests/unit/test-api-doc.sh
# What the packages run on install (units/vigil-setup), against a real
# PostgreSQL as root: not a unit test of the package builds.
TESTS += tests/unit/test-vigil-setup.sh
EXTRA_DIST += tests/unit/test-vigil-setup.sh

# The other daemons' areas (not in UNIT_TESTS: scripts/test.sh does not run
# them under ASan/UBSan).
AREA_UNIT_TESTS = \
	tests/unit/test-paymentd-payments \
	tests/unit/test-paymentd-processor \
	tests/unit/test-paymentd-outbox \
	tests/unit/test-inventoryd-products \
	tests/unit/test-inventoryd-cache \
	tests/unit/test-notifyd-notifications \
	tests/unit/test-alertbotd-notifications \
	tests/unit/test-alertbotd-policy \
	tests/unit/test-alertbotd-state \
	tests/unit/test-alertbotd-webhook
check_PROGRAMS += $(AREA_UNIT_TESTS)
TESTS += $(AREA_UNIT_TESTS)

# A daemon area's test links its daemon's library.
tests_unit_test_authd_users_LDADD = src/authd/libauthd.a $(UNIT_LDADD)
tests_unit_test_paymentd_payments_LDADD = src/paymentd/libpaymentd.a $(UNIT_LDADD)
tests_unit_test_paymentd_processor_LDADD = src/paymentd/libpaymentd.a $(UNIT_LDADD)
tests_unit_test_paymentd_outbox_LDADD = src/paymentd/libpaymentd.a $(UNIT_LDADD)
tests_unit_test_inventoryd_products_LDADD = src/inventoryd/libinventoryd.a $(UNIT_LDADD)
tests_unit_test_inventoryd_cache_LDADD = src/inventoryd/libinventoryd.a $(UNIT_LDADD)
tests_unit_test_notifyd_notifications_LDADD = src/notifyd/libnotifyd.a $(UNIT_LDADD)
tests_unit_test_alertbotd_notifications_LDADD = src/alertbotd/libalertbotd.a $(UNIT_LDADD)
tests_unit_test_alertbotd_policy_LDADD = src/alertbotd/libalertbotd.a $(UNIT_LDADD)
tests_unit_test_alertbotd_state_LDADD = src/alertbotd/libalertbotd.a $(UNIT_LDADD)
tests_unit_test_alertbotd_webhook_LDADD = src/alertbotd/libalertbotd.a $(UNIT_LDADD)
EXTRA_DIST += tests/unit/test-pg.sh tests/unit/test-redis.sh tests/unit/test-local-cache.sh \
	tests/unit/test-amqp.sh tests/with-servers.sh \
	tests/unit/otlp-sink.h

tests_unit_test_log_SOURCES = tests/unit/test-log.c
tests_unit_test_sd_SOURCES = tests/unit/test-sd.c
tests_unit_test_conf_SOURCES = tests/unit/test-conf.c
tests_unit_test_daemon_SOURCES = tests/unit/test-daemon.c
tests_unit_test_faults_SOURCES = tests/unit/test-faults.c
tests_unit_test_metrics_SOURCES = tests/unit/test-metrics.c
tests_unit_test_trace_SOURCES = tests/unit/test-trace.c
tests_unit_test_json_util_SOURCES = tests/unit/test-json-util.c
tests_unit_test_http_server_SOURCES = tests/unit/test-http-server.c
tests_unit_test_http_client_SOURCES = tests/unit/test-http-client.c
tests_unit_test_auth_client_SOURCES = tests/unit/test-auth-client.c
tests_unit_test_jwt_SOURCES = tests/unit/test-jwt.c
tests_unit_test_password_SOURCES = tests/unit/test-password.c
tests_unit_test_slot_pool_SOURCES = tests/unit/test-slot-pool.c
tests_unit_test_strbuf_SOURCES = tests/unit/test-strbuf.c
tests_unit_test_utf8_SOURCES = tests/unit/test-utf8.c
tests_unit_test_pg_SOURCES = tests/unit/test-pg.c
tests_unit_test_redis_SOURCES = tests/unit/test-redis.c
tests_unit_test_local_cache_SOURCES = tests/unit/test-local-cache.c
tests_unit_test_amqp_SOURCES = tests/unit/test-amqp.c
tests_unit_test_authd_users_SOURCES = tests/unit/test-authd-users.c
tests_unit_test_paymentd_payments_SOURCES = tests/unit/test-paymentd-payments.c
tests_unit_test_paymentd_processor_SOURCES = tests/unit/test-paymentd-processor.c
tests_unit_test_paymentd_outbox_SOURCES = tests/unit/test-paymentd-outbox.c
tests_unit_test_inventoryd_products_SOURCES = tests/unit/test-inventoryd-products.c
tests_unit_test_inventoryd_cache_SOURCES = tests/unit/test-inventoryd-cache.c
tests_unit_test_notifyd_notifications_SOURCES = tests/unit/test-notifyd-notifications.c
tests_unit_test_alertbotd_notifications_SOURCES = tests/unit/test-alertbotd-notifications.c
tests_unit_test_alertbotd_policy_SOURCES = tests/unit/test-alertbotd-policy.c
tests_unit_test_alertbotd_state_SOURCES = tests/unit/test-alertbotd-state.c
tests_unit_test_alertbotd_webhook_SOURCES = tests/unit/test-alertbotd-webhook.c
tests_unit_test_amqp_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_amqp_LDADD = $(UNIT_LDADD)

# Every unit test compiles and links the same way.
tests_unit_test_log_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_sd_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_conf_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_daemon_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_faults_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_metrics_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_trace_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_json_util_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_http_server_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_http_client_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_auth_client_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_jwt_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_password_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_slot_pool_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_strbuf_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_utf8_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_pg_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_redis_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_local_cache_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_authd_users_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_paymentd_payments_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_paymentd_processor_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_paymentd_outbox_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_inventoryd_products_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_inventoryd_cache_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_notifyd_notifications_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_alertbotd_notifications_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_alertbotd_policy_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_alertbotd_state_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_alertbotd_webhook_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_log_LDADD = $(UNIT_LDADD)
tests_unit_test_sd_LDADD = $(UNIT_LDADD)
tests_unit_test_conf_LDADD = $(UNIT_LDADD)
tests_unit_test_daemon_LDADD = $(UNIT_LDADD)
tests_unit_test_faults_LDADD = $(UNIT_LDADD)
tests_unit_test_metrics_LDADD = $(UNIT_LDADD)
tests_unit_test_trace_LDADD = $(UNIT_LDADD)
tests_unit_test_json_util_LDADD = $(UNIT_LDADD)
tests_unit_test_http_server_LDADD = $(UNIT_LDADD)
tests_unit_test_http_client_LDADD = $(UNIT_LDADD)
tests_unit_test_auth_client_LDADD = $(UNIT_LDADD)
tests_unit_test_jwt_LDADD = $(UNIT_LDADD)
tests_unit_test_password_LDADD = $(UNIT_LDADD)
tests_unit_test_slot_pool_LDADD = $(UNIT_LDADD)
tests_unit_test_strbuf_LDADD = $(UNIT_LDADD)
tests_unit_test_utf8_LDADD = $(UNIT_LDADD)
tests_unit_test_pg_LDADD = $(UNIT_LDADD)
tests_unit_test_redis_LDADD = $(UNIT_LDADD)
tests_unit_test_local_cache_LDADD = $(UNIT_LDADD)

include tests/fuzz/local.mk
include tests/integration/local.mk
include tests/integration/chaos.mk

# The tests that need no daemon binary: run again under ASan/UBSan by
# scripts/test.sh.
print-unit-tests:
	@echo $(UNIT_TESTS)
.PHONY: print-unit-tests
include tests/observability/local.mk

# What scripts/soak-tests.sh runs over and over: every test but the system
# tests (which boot machines and build packages).
print-soak-tests:
	@for t in $(TESTS); do \
		case ' $(SYSTEM_TESTS) ' in *" $$t "*) ;; *) printf '%s ' "$$t" ;; esac; \
	done; echo
.PHONY: print-soak-tests
