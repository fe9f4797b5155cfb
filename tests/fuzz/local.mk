# Fuzz targets: one libFuzzer entry point (LLVMFuzzerTestOneInput) per parser
# of untrusted input, each with a seed corpus in tests/fuzz/corpus/<name>/.
#
# Every build links each target with replay-main.c into tests/fuzz/replay-<name>
# and `make check` replays the corpus through it (under ASan/UBSan with
# --enable-sanitizers), so a crash once found and added to the corpus stays
# fixed. With --enable-fuzzing (clang only) the same targets are also linked
# against libFuzzer as tests/fuzz/fuzz-<name>; scripts/fuzz.sh configures such
# a build with the whole tree instrumented and runs them.
#
# Adding a target: write tests/fuzz/fuzz-<name>.c and corpus/<name>/, add
# <name> to FUZZ_TARGETS in replay.sh and scripts/fuzz.sh, and a block to
# each half below. docs/testing.md lists the targets and their oracles.

FUZZ_CFLAGS = $(VIGIL_CFLAGS)
FUZZ_LDADD = $(VIGIL_LIBS)

check_PROGRAMS += \
	tests/fuzz/replay-json \
	tests/fuzz/replay-traceparent \
	tests/fuzz/replay-conf \
	tests/fuzz/replay-alertmanager \
	tests/fuzz/replay-amount \
	tests/fuzz/replay-headers \
	tests/fuzz/replay-route \
	tests/fuzz/replay-jwt \
	tests/fuzz/replay-notify \
	tests/fuzz/replay-metrics
# tests/fuzz/replay.sh is one of UNIT_TESTS (tests/local.mk).
EXTRA_DIST += tests/fuzz/replay.sh tests/fuzz/corpus

tests_fuzz_replay_json_SOURCES = tests/fuzz/fuzz-json.c tests/fuzz/replay-main.c
tests_fuzz_replay_json_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_replay_json_LDADD = $(FUZZ_LDADD)
tests_fuzz_replay_traceparent_SOURCES = tests/fuzz/fuzz-traceparent.c tests/fuzz/replay-main.c
tests_fuzz_replay_traceparent_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_replay_traceparent_LDADD = $(FUZZ_LDADD)
tests_fuzz_replay_conf_SOURCES = tests/fuzz/fuzz-conf.c tests/fuzz/replay-main.c
tests_fuzz_replay_conf_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_replay_conf_LDADD = $(FUZZ_LDADD)
# The Alertmanager webhook payload decoder lives in vigil-alertbotd.
tests_fuzz_replay_alertmanager_SOURCES = tests/fuzz/fuzz-alertmanager.c tests/fuzz/replay-main.c
tests_fuzz_replay_alertmanager_CFLAGS = $(FUZZ_CFLAGS) -iquote $(top_srcdir)/src/alertbotd
tests_fuzz_replay_alertmanager_LDADD = src/alertbotd/libalertbotd.a $(FUZZ_LDADD)
# The amount decoder and header checks live in vigil-paymentd.
tests_fuzz_replay_amount_SOURCES = tests/fuzz/fuzz-amount.c tests/fuzz/replay-main.c
tests_fuzz_replay_amount_CFLAGS = $(FUZZ_CFLAGS) -iquote $(top_srcdir)/src/paymentd
tests_fuzz_replay_amount_LDADD = src/paymentd/libpaymentd.a $(FUZZ_LDADD)
tests_fuzz_replay_headers_SOURCES = tests/fuzz/fuzz-headers.c tests/fuzz/replay-main.c
tests_fuzz_replay_headers_CFLAGS = $(FUZZ_CFLAGS) -iquote $(top_srcdir)/src/paymentd
tests_fuzz_replay_headers_LDADD = src/paymentd/libpaymentd.a $(FUZZ_LDADD)
tests_fuzz_replay_route_SOURCES = tests/fuzz/fuzz-route.c tests/fuzz/replay-main.c
tests_fuzz_replay_route_CFLAGS = $(FUZZ_CFLAGS) -iquote $(top_srcdir)/src/inventoryd -iquote $(top_srcdir)/src/paymentd
tests_fuzz_replay_route_LDADD = src/inventoryd/libinventoryd.a src/paymentd/libpaymentd.a $(FUZZ_LDADD)
tests_fuzz_replay_jwt_SOURCES = tests/fuzz/fuzz-jwt.c tests/fuzz/replay-main.c
tests_fuzz_replay_jwt_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_replay_jwt_LDADD = $(FUZZ_LDADD)
# The event decoder lives in vigil-notifyd; its round trip uses paymentd's encoder.
tests_fuzz_replay_notify_SOURCES = tests/fuzz/fuzz-notify.c tests/fuzz/replay-main.c
tests_fuzz_replay_notify_CFLAGS = $(FUZZ_CFLAGS) -iquote $(top_srcdir)/src/notifyd -iquote $(top_srcdir)/src/paymentd
tests_fuzz_replay_notify_LDADD = src/notifyd/libnotifyd.a src/paymentd/libpaymentd.a $(FUZZ_LDADD)
tests_fuzz_replay_metrics_SOURCES = tests/fuzz/fuzz-metrics.c tests/fuzz/replay-main.c
tests_fuzz_replay_metrics_CFLAGS = $(FUZZ_CFLAGS)
tests_fuzz_replay_metrics_LDADD = $(FUZZ_LDADD)

if ENABLE_FUZZING
# libFuzzer binaries. Only the link step adds -fsanitize=fuzzer (libFuzzer's
# main); coverage instrumentation comes from -fsanitize=fuzzer-no-link, which
# scripts/fuzz.sh puts in CFLAGS so libvigil.a is instrumented too. The
# targets' own objects get it here as well, so a plain
# `configure --enable-fuzzing CC=clang` still produces working fuzzers.
FUZZ_SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZER_CFLAGS = $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(FUZZ_SANITIZE)
FUZZER_LINKFLAGS = $(AM_LDFLAGS) -fsanitize=fuzzer $(FUZZ_SANITIZE)

noinst_PROGRAMS += \
	tests/fuzz/fuzz-json \
	tests/fuzz/fuzz-traceparent \
	tests/fuzz/fuzz-conf \
	tests/fuzz/fuzz-alertmanager \
	tests/fuzz/fuzz-amount \
	tests/fuzz/fuzz-headers \
	tests/fuzz/fuzz-route \
	tests/fuzz/fuzz-jwt \
	tests/fuzz/fuzz-notify \
	tests/fuzz/fuzz-metrics

tests_fuzz_fuzz_json_SOURCES = tests/fuzz/fuzz-json.c
tests_fuzz_fuzz_json_CFLAGS = $(FUZZER_CFLAGS)
tests_fuzz_fuzz_json_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_json_LDADD = $(FUZZ_LDADD)
tests_fuzz_fuzz_traceparent_SOURCES = tests/fuzz/fuzz-traceparent.c
tests_fuzz_fuzz_traceparent_CFLAGS = $(FUZZER_CFLAGS)
tests_fuzz_fuzz_traceparent_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_traceparent_LDADD = $(FUZZ_LDADD)
tests_fuzz_fuzz_conf_SOURCES = tests/fuzz/fuzz-conf.c
tests_fuzz_fuzz_conf_CFLAGS = $(FUZZER_CFLAGS)
tests_fuzz_fuzz_conf_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_conf_LDADD = $(FUZZ_LDADD)
tests_fuzz_fuzz_alertmanager_SOURCES = tests/fuzz/fuzz-alertmanager.c
tests_fuzz_fuzz_alertmanager_CFLAGS = $(FUZZER_CFLAGS) -iquote $(top_srcdir)/src/alertbotd
tests_fuzz_fuzz_alertmanager_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_alertmanager_LDADD = src/alertbotd/libalertbotd.a $(FUZZ_LDADD)
tests_fuzz_fuzz_amount_SOURCES = tests/fuzz/fuzz-amount.c
tests_fuzz_fuzz_amount_CFLAGS = $(FUZZER_CFLAGS) -iquote $(top_srcdir)/src/paymentd
tests_fuzz_fuzz_amount_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_amount_LDADD = src/paymentd/libpaymentd.a $(FUZZ_LDADD)
tests_fuzz_fuzz_headers_SOURCES = tests/fuzz/fuzz-headers.c
tests_fuzz_fuzz_headers_CFLAGS = $(FUZZER_CFLAGS) -iquote $(top_srcdir)/src/paymentd
tests_fuzz_fuzz_headers_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_headers_LDADD = src/paymentd/libpaymentd.a $(FUZZ_LDADD)
tests_fuzz_fuzz_route_SOURCES = tests/fuzz/fuzz-route.c
tests_fuzz_fuzz_route_CFLAGS = $(FUZZER_CFLAGS) -iquote $(top_srcdir)/src/inventoryd -iquote $(top_srcdir)/src/paymentd
tests_fuzz_fuzz_route_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_route_LDADD = src/inventoryd/libinventoryd.a src/paymentd/libpaymentd.a $(FUZZ_LDADD)
tests_fuzz_fuzz_jwt_SOURCES = tests/fuzz/fuzz-jwt.c
tests_fuzz_fuzz_jwt_CFLAGS = $(FUZZER_CFLAGS)
tests_fuzz_fuzz_jwt_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_jwt_LDADD = $(FUZZ_LDADD)
tests_fuzz_fuzz_notify_SOURCES = tests/fuzz/fuzz-notify.c
tests_fuzz_fuzz_notify_CFLAGS = $(FUZZER_CFLAGS) -iquote $(top_srcdir)/src/notifyd -iquote $(top_srcdir)/src/paymentd
tests_fuzz_fuzz_notify_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_notify_LDADD = src/notifyd/libnotifyd.a src/paymentd/libpaymentd.a $(FUZZ_LDADD)
tests_fuzz_fuzz_metrics_SOURCES = tests/fuzz/fuzz-metrics.c
tests_fuzz_fuzz_metrics_CFLAGS = $(FUZZER_CFLAGS)
tests_fuzz_fuzz_metrics_LDFLAGS = $(FUZZER_LINKFLAGS)
tests_fuzz_fuzz_metrics_LDADD = $(FUZZ_LDADD)
endif
