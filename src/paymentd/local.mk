# The sources of vigil-paymentd's library (src/daemons.mk builds it and the
# daemon).
src_paymentd_libpaymentd_a_SOURCES = \
	src/paymentd/paymentd-manager.c src/paymentd/paymentd-manager.h \
	src/paymentd/paymentd-routes.c src/paymentd/paymentd-routes.h \
	src/paymentd/paymentd-payments.c src/paymentd/paymentd-payments.h \
	src/paymentd/paymentd-processor.c src/paymentd/paymentd-processor.h \
	src/paymentd/paymentd-outbox.c src/paymentd/paymentd-outbox.h
