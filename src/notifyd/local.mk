# vigil-notifyd: a library of its areas (linked by the daemon and the tests)
# and a thin main.
noinst_LIBRARIES += src/notifyd/libnotifyd.a
src_notifyd_libnotifyd_a_CFLAGS = $(VIGIL_CFLAGS)
src_notifyd_libnotifyd_a_SOURCES = \
	src/notifyd/notifyd-manager.c src/notifyd/notifyd-manager.h \
	src/notifyd/notifyd-consumer.c src/notifyd/notifyd-consumer.h \
	src/notifyd/notifyd-notifications.c src/notifyd/notifyd-notifications.h

sbin_PROGRAMS += src/notifyd/vigil-notifyd
src_notifyd_vigil_notifyd_SOURCES = src/notifyd/notifyd.c
src_notifyd_vigil_notifyd_CFLAGS = $(VIGIL_CFLAGS)
src_notifyd_vigil_notifyd_LDADD = src/notifyd/libnotifyd.a $(VIGIL_LIBS)

# Unit tests of its areas (no server needed).
check_PROGRAMS += tests/unit/test-notifyd-notifications
TESTS += tests/unit/test-notifyd-notifications
tests_unit_test_notifyd_notifications_SOURCES = tests/unit/test-notifyd-notifications.c
tests_unit_test_notifyd_notifications_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/notifyd
tests_unit_test_notifyd_notifications_LDADD = src/notifyd/libnotifyd.a $(UNIT_LDADD)

# Integration: a small confirmed publisher for the tests (Python's standard
# library has no AMQP client), and the test against real servers.
check_PROGRAMS += tests/integration/amqp-publish
tests_integration_amqp_publish_SOURCES = tests/integration/amqp-publish.c
tests_integration_amqp_publish_CFLAGS = $(VIGIL_CFLAGS)
tests_integration_amqp_publish_LDADD = $(VIGIL_LIBS)
TESTS += tests/integration/test-notifyd.py
EXTRA_DIST += tests/integration/test-notifyd.py
