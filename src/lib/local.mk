# libvigil: the internal library every daemon and test links. Every C file
# compiles with its dependencies' flags (AM_CFLAGS; a target's own _CFLAGS
# replace them, so they start with $(VIGIL_CFLAGS)), and a program without
# its own _LDADD links libvigil (LDADD).
noinst_LIBRARIES += src/lib/libvigil.a

AM_CFLAGS += $(MHD_CFLAGS) $(PQ_CFLAGS) $(HIREDIS_CFLAGS) $(RABBITMQ_CFLAGS) $(JWT_CFLAGS) \
	$(JSONC_CFLAGS) $(CURL_CFLAGS) $(SYSTEMD_CFLAGS) $(CRYPT_CFLAGS) $(INIH_CFLAGS)
src_lib_libvigil_a_SOURCES = \
	src/lib/macro.h \
	src/lib/log.c src/lib/log.h \
	src/lib/sd.c src/lib/sd.h \
	src/lib/conf.c src/lib/conf.h \
	src/lib/file.c src/lib/file.h \
	src/lib/strbuf.c src/lib/strbuf.h \
	src/lib/utf8.c src/lib/utf8.h \
	src/lib/metrics.c src/lib/metrics.h src/lib/metrics-internal.h \
	src/lib/metrics-process.c src/lib/metrics-render.c \
	src/lib/trace.c src/lib/trace.h src/lib/trace-internal.h \
	src/lib/trace-context.c src/lib/trace-export.c \
	src/lib/json-util.c src/lib/json-util.h \
	src/lib/http-route.c src/lib/http-route.h \
	src/lib/http-server.c src/lib/http-server.h src/lib/http-server-internal.h \
	src/lib/http-server-request.c \
	src/lib/http-client.c src/lib/http-client.h \
	src/lib/auth-client.c src/lib/auth-client.h \
	src/lib/pg.c src/lib/pg.h \
	src/lib/slot-pool.c src/lib/slot-pool.h \
	src/lib/redis.c src/lib/redis.h \
	src/lib/local-cache.c src/lib/local-cache.h \
	src/lib/jwt.c src/lib/jwt.h \
	src/lib/password.c src/lib/password.h \
	src/lib/dependency-metrics.c src/lib/dependency-metrics.h \
	src/lib/faults.c src/lib/faults.h \
	src/lib/daemon.c src/lib/daemon.h \
	src/lib/daemon-deps.c src/lib/daemon-deps.h \
	src/lib/amqp.c src/lib/amqp.h src/lib/amqp-internal.h \
	src/lib/amqp-topology.c src/lib/amqp-publish.c src/lib/amqp-consume.c

# What a program linking libvigil.a needs.
VIGIL_LIBS = src/lib/libvigil.a $(MHD_LIBS) $(PQ_LIBS) $(HIREDIS_LIBS) $(RABBITMQ_LIBS) \
	$(JWT_LIBS) $(JSONC_LIBS) $(CURL_LIBS) $(SYSTEMD_LIBS) $(CRYPT_LIBS) \
	$(INIH_LIBS) -lm
LDADD = $(VIGIL_LIBS)
VIGIL_CFLAGS = $(AM_CFLAGS)
