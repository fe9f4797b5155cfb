# vigil-inventoryd: a library of its areas (linked by the daemon and the
# tests) and a thin main.
noinst_LIBRARIES += src/inventoryd/libinventoryd.a
src_inventoryd_libinventoryd_a_CFLAGS = $(VIGIL_CFLAGS)
src_inventoryd_libinventoryd_a_SOURCES = \
	src/inventoryd/inventoryd-manager.c src/inventoryd/inventoryd-manager.h \
	src/inventoryd/inventoryd-routes.c src/inventoryd/inventoryd-routes.h \
	src/inventoryd/inventoryd-products.c src/inventoryd/inventoryd-products.h \
	src/inventoryd/inventoryd-reservations.c src/inventoryd/inventoryd-reservations.h \
	src/inventoryd/inventoryd-cache.c src/inventoryd/inventoryd-cache.h \
	src/inventoryd/inventoryd-singleflight.c src/inventoryd/inventoryd-singleflight.h

sbin_PROGRAMS += src/inventoryd/vigil-inventoryd
src_inventoryd_vigil_inventoryd_SOURCES = src/inventoryd/inventoryd.c
src_inventoryd_vigil_inventoryd_CFLAGS = $(VIGIL_CFLAGS)
src_inventoryd_vigil_inventoryd_LDADD = src/inventoryd/libinventoryd.a $(VIGIL_LIBS)

# Unit tests of the areas that need no server (UNIT_CFLAGS and UNIT_LDADD
# come from tests/local.mk, included later; make resolves them lazily).
INVENTORYD_UNIT_TESTS = \
	tests/unit/test-inventoryd-products \
	tests/unit/test-inventoryd-cache
check_PROGRAMS += $(INVENTORYD_UNIT_TESTS)
TESTS += $(INVENTORYD_UNIT_TESTS)

tests_unit_test_inventoryd_products_SOURCES = tests/unit/test-inventoryd-products.c
tests_unit_test_inventoryd_products_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/inventoryd
tests_unit_test_inventoryd_products_LDADD = src/inventoryd/libinventoryd.a $(UNIT_LDADD)
tests_unit_test_inventoryd_cache_SOURCES = tests/unit/test-inventoryd-cache.c
tests_unit_test_inventoryd_cache_CFLAGS = $(UNIT_CFLAGS) -iquote $(top_srcdir)/src/inventoryd
tests_unit_test_inventoryd_cache_LDADD = src/inventoryd/libinventoryd.a $(UNIT_LDADD)

# Integration tests against a real PostgreSQL and Redis (skip, 77, when the
# daemon is not built).
TESTS += tests/integration/test-inventoryd.py
EXTRA_DIST += \
	tests/integration/test-inventoryd.py \
	tests/bench/bench-inventoryd.sh
