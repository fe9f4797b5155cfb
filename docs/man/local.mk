# Man pages: vigilctl(8) (src/vigilctl/local.mk), vigil.conf(5), and one
# page per daemon, vigil-<name>(8), assembled from its own part
# (docs/man/vigil-<name>.8.in) and the parts every daemon shares
# (docs/man/daemon-*.8.in) by docs/man/assemble.awk.
VIGIL_DAEMON_MANS = $(VIGIL_DAEMONS:%=docs/man/vigil-%.8)
nodist_man8_MANS = $(VIGIL_DAEMON_MANS)
dist_man5_MANS = docs/man/vigil.conf.5
VIGIL_DAEMON_MAN_PARTS = docs/man/daemon-synopsis.8.in docs/man/daemon-common.8.in \
	docs/man/daemon-files.8.in docs/man/daemon-see-also.8.in
EXTRA_DIST += docs/man/assemble.awk $(VIGIL_DAEMON_MAN_PARTS) $(VIGIL_DAEMON_MANS:=.in)
CLEANFILES += $(VIGIL_DAEMON_MANS)

SUFFIXES += .8.in .8
.8.in.8:
	$(AM_V_GEN)$(MKDIR_P) $(@D) && \
	$(AWK) -v dir=$(srcdir)/docs/man -f $(srcdir)/docs/man/assemble.awk $< >$@.tmp && \
	mv $@.tmp $@
$(VIGIL_DAEMON_MANS): $(srcdir)/docs/man/assemble.awk $(VIGIL_DAEMON_MAN_PARTS:%=$(srcdir)/%)
# docs/ is distributed whole (Makefile.am), which would take the pages
# assembled in a build directory along: the tarball has their parts only.
dist-hook: dist-drop-assembled-mans
dist-drop-assembled-mans:
	rm -f $(VIGIL_DAEMON_MANS:%=$(distdir)/%)
.PHONY: dist-drop-assembled-mans
