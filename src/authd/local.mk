# The sources of vigil-authd's library (src/daemons.mk builds it and the
# daemon).
src_authd_libauthd_a_SOURCES = \
	src/authd/authd-manager.c src/authd/authd-manager.h \
	src/authd/authd-routes.c src/authd/authd-routes.h \
	src/authd/authd-users.c src/authd/authd-users.h \
	src/authd/authd-sessions.c src/authd/authd-sessions.h
