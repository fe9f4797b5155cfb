# vigil-alertbotd: a library of its areas (linked by the daemon and the tests)
# and a thin main.
noinst_LIBRARIES += src/alertbotd/libalertbotd.a
src_alertbotd_libalertbotd_a_CFLAGS = $(VIGIL_CFLAGS)
src_alertbotd_libalertbotd_a_SOURCES = \
	src/alertbotd/alertbotd-manager.c src/alertbotd/alertbotd-manager.h \
	src/alertbotd/alertbotd-remediation.c src/alertbotd/alertbotd-remediation.h \
	src/alertbotd/alertbotd-routes.c src/alertbotd/alertbotd-routes.h \
	src/alertbotd/alertbotd-webhook.c src/alertbotd/alertbotd-webhook.h \
	src/alertbotd/alertbotd-policy.c src/alertbotd/alertbotd-policy.h \
	src/alertbotd/alertbotd-decision.c \
	src/alertbotd/alertbotd-state.c src/alertbotd/alertbotd-state.h \
	src/alertbotd/alertbotd-systemd.c src/alertbotd/alertbotd-systemd.h \
	src/alertbotd/alertbotd-escalation.c src/alertbotd/alertbotd-escalation.h \
	src/alertbotd/alertbotd-notifications.c src/alertbotd/alertbotd-notifications.h

sbin_PROGRAMS += src/alertbotd/vigil-alertbotd
src_alertbotd_vigil_alertbotd_SOURCES = src/alertbotd/alertbotd.c
src_alertbotd_vigil_alertbotd_CFLAGS = $(VIGIL_CFLAGS)
src_alertbotd_vigil_alertbotd_LDADD = src/alertbotd/libalertbotd.a $(VIGIL_LIBS)

# Unit tests of its areas (no server needed).
ALERTBOTD_UNIT_TESTS = \
	tests/unit/test-alertbotd-notifications \
	tests/unit/test-alertbotd-policy \
	tests/unit/test-alertbotd-state \
	tests/unit/test-alertbotd-webhook
check_PROGRAMS += $(ALERTBOTD_UNIT_TESTS)
TESTS += $(ALERTBOTD_UNIT_TESTS)

tests_unit_test_alertbotd_notifications_SOURCES = tests/unit/test-alertbotd-notifications.c
tests_unit_test_alertbotd_notifications_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/alertbotd
tests_unit_test_alertbotd_notifications_LDADD = src/alertbotd/libalertbotd.a $(UNIT_LDADD)
tests_unit_test_alertbotd_policy_SOURCES = tests/unit/test-alertbotd-policy.c
tests_unit_test_alertbotd_policy_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/alertbotd
tests_unit_test_alertbotd_policy_LDADD = src/alertbotd/libalertbotd.a $(UNIT_LDADD)
tests_unit_test_alertbotd_state_SOURCES = tests/unit/test-alertbotd-state.c
tests_unit_test_alertbotd_state_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/alertbotd
tests_unit_test_alertbotd_state_LDADD = src/alertbotd/libalertbotd.a $(UNIT_LDADD)
tests_unit_test_alertbotd_webhook_SOURCES = tests/unit/test-alertbotd-webhook.c
tests_unit_test_alertbotd_webhook_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/alertbotd
tests_unit_test_alertbotd_webhook_LDADD = src/alertbotd/libalertbotd.a $(UNIT_LDADD)

# Integration: a fake org.freedesktop.systemd1 on a private dbus-daemon
# (sd-bus, so the test needs no D-Bus bindings for Python), and the test.
check_PROGRAMS += tests/integration/fake-systemd
tests_integration_fake_systemd_SOURCES = tests/integration/fake-systemd.c
tests_integration_fake_systemd_CFLAGS = $(VIGIL_CFLAGS)
tests_integration_fake_systemd_LDADD = $(VIGIL_LIBS)
TESTS += tests/integration/test-alertbotd-dbus.py tests/integration/test-alertbotd-notify.py
EXTRA_DIST += tests/integration/test-alertbotd-dbus.py tests/integration/test-alertbotd-notify.py
