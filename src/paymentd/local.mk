# vigil-paymentd: a library of its areas (linked by the daemon and the tests)
# and a thin main.
noinst_LIBRARIES += src/paymentd/libpaymentd.a
src_paymentd_libpaymentd_a_CFLAGS = $(VIGIL_CFLAGS)
src_paymentd_libpaymentd_a_SOURCES = \
	src/paymentd/paymentd-manager.c src/paymentd/paymentd-manager.h \
	src/paymentd/paymentd-routes.c src/paymentd/paymentd-routes.h \
	src/paymentd/paymentd-payments.c src/paymentd/paymentd-payments.h \
	src/paymentd/paymentd-processor.c src/paymentd/paymentd-processor.h \
	src/paymentd/paymentd-outbox.c src/paymentd/paymentd-outbox.h

sbin_PROGRAMS += src/paymentd/vigil-paymentd
src_paymentd_vigil_paymentd_SOURCES = src/paymentd/paymentd.c
src_paymentd_vigil_paymentd_CFLAGS = $(VIGIL_CFLAGS)
src_paymentd_vigil_paymentd_LDADD = src/paymentd/libpaymentd.a $(VIGIL_LIBS)

# Unit tests of its areas (no server needed).
PAYMENTD_UNIT_TESTS = \
	tests/unit/test-paymentd-payments \
	tests/unit/test-paymentd-processor \
	tests/unit/test-paymentd-outbox
check_PROGRAMS += $(PAYMENTD_UNIT_TESTS)
TESTS += $(PAYMENTD_UNIT_TESTS)

tests_unit_test_paymentd_payments_SOURCES = tests/unit/test-paymentd-payments.c
tests_unit_test_paymentd_payments_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/paymentd
tests_unit_test_paymentd_payments_LDADD = src/paymentd/libpaymentd.a $(UNIT_LDADD)
tests_unit_test_paymentd_processor_SOURCES = tests/unit/test-paymentd-processor.c
tests_unit_test_paymentd_processor_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/paymentd
tests_unit_test_paymentd_processor_LDADD = src/paymentd/libpaymentd.a $(UNIT_LDADD)
tests_unit_test_paymentd_outbox_SOURCES = tests/unit/test-paymentd-outbox.c
tests_unit_test_paymentd_outbox_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/paymentd
tests_unit_test_paymentd_outbox_LDADD = src/paymentd/libpaymentd.a $(UNIT_LDADD)

# Integration tests against real PostgreSQL, Redis and RabbitMQ, with
# vigil-authd (and vigil-notifyd for the flow) from the build tree.
TESTS += \
	tests/integration/test-paymentd.py \
	tests/integration/test-payment-flow.py
EXTRA_DIST += \
	tests/integration/paymentd_stack.py \
	tests/integration/test-paymentd.py \
	tests/integration/test-payment-flow.py
