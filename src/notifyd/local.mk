# The sources of vigil-notifyd's library (src/daemons.mk builds it and the
# daemon).
src_notifyd_libnotifyd_a_SOURCES = \
	src/notifyd/notifyd-manager.c src/notifyd/notifyd-manager.h \
	src/notifyd/notifyd-consumer.c src/notifyd/notifyd-consumer.h \
	src/notifyd/notifyd-notifications.c src/notifyd/notifyd-notifications.h
