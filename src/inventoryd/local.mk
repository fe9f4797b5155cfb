# The sources of vigil-inventoryd's library (src/daemons.mk builds it and the
# daemon).
src_inventoryd_libinventoryd_a_SOURCES = \
	src/inventoryd/inventoryd-manager.c src/inventoryd/inventoryd-manager.h \
	src/inventoryd/inventoryd-routes.c src/inventoryd/inventoryd-routes.h \
	src/inventoryd/inventoryd-products.c src/inventoryd/inventoryd-products.h \
	src/inventoryd/inventoryd-reservations.c src/inventoryd/inventoryd-reservations.h \
	src/inventoryd/inventoryd-cache.c src/inventoryd/inventoryd-cache.h \
	src/inventoryd/inventoryd-singleflight.c src/inventoryd/inventoryd-singleflight.h
