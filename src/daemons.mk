# The daemons: each is a thin main, src/<d>/<d>.c, on the library of its
# areas, src/<d>/lib<d>.a, which its unit tests link too. src/<d>/local.mk
# lists the library's sources; tests/local.mk and tests/integration/local.mk
# declare the tests.
noinst_LIBRARIES += src/authd/libauthd.a src/paymentd/libpaymentd.a \
	src/inventoryd/libinventoryd.a src/notifyd/libnotifyd.a src/alertbotd/libalertbotd.a
sbin_PROGRAMS += src/authd/vigil-authd src/paymentd/vigil-paymentd \
	src/inventoryd/vigil-inventoryd src/notifyd/vigil-notifyd src/alertbotd/vigil-alertbotd

src_authd_vigil_authd_SOURCES = src/authd/authd.c
src_paymentd_vigil_paymentd_SOURCES = src/paymentd/paymentd.c
src_inventoryd_vigil_inventoryd_SOURCES = src/inventoryd/inventoryd.c
src_notifyd_vigil_notifyd_SOURCES = src/notifyd/notifyd.c
src_alertbotd_vigil_alertbotd_SOURCES = src/alertbotd/alertbotd.c

src_authd_vigil_authd_LDADD = src/authd/libauthd.a $(VIGIL_LIBS)
src_paymentd_vigil_paymentd_LDADD = src/paymentd/libpaymentd.a $(VIGIL_LIBS)
src_inventoryd_vigil_inventoryd_LDADD = src/inventoryd/libinventoryd.a $(VIGIL_LIBS)
src_notifyd_vigil_notifyd_LDADD = src/notifyd/libnotifyd.a $(VIGIL_LIBS)
src_alertbotd_vigil_alertbotd_LDADD = src/alertbotd/libalertbotd.a $(VIGIL_LIBS)
