# vigil-authd: a library of its areas (linked by the daemon and the tests)
# and a thin main.
noinst_LIBRARIES += src/authd/libauthd.a
src_authd_libauthd_a_CFLAGS = $(VIGIL_CFLAGS)
src_authd_libauthd_a_SOURCES = \
	src/authd/authd-manager.c src/authd/authd-manager.h \
	src/authd/authd-routes.c src/authd/authd-routes.h \
	src/authd/authd-users.c src/authd/authd-users.h \
	src/authd/authd-sessions.c src/authd/authd-sessions.h

sbin_PROGRAMS += src/authd/vigil-authd
src_authd_vigil_authd_SOURCES = src/authd/authd.c
src_authd_vigil_authd_CFLAGS = $(VIGIL_CFLAGS)
src_authd_vigil_authd_LDADD = src/authd/libauthd.a $(VIGIL_LIBS)
