# vigilctl, the operator's front door (Python 3, standard library only):
# the program in $(sbindir), its subcommands as the vigilctl package in
# $(vigilctlmoduledir) (from src/vigilctl/modules/), its man page in section 8.
vigilctlmoduledir = $(datadir)/vigilctl
vigilctlpkgdir = $(vigilctlmoduledir)/vigilctl
sbin_SCRIPTS = src/vigilctl/vigilctl
dist_vigilctlpkg_DATA = src/vigilctl/modules/vigilctl/__init__.py src/vigilctl/modules/vigilctl/cli.py \
	src/vigilctl/modules/vigilctl/validate.py src/vigilctl/modules/vigilctl/fault.py \
	src/vigilctl/modules/vigilctl/slo.py src/vigilctl/modules/vigilctl/load.py \
	src/vigilctl/modules/vigilctl/chaos.py
# The user flows `vigilctl load` runs with Locust: beside the package, not in
# it (Locust puts the locustfile's directory on its sys.path).
vigilctlloaddir = $(vigilctlmoduledir)/load
dist_vigilctlload_DATA = src/vigilctl/modules/load/locustfile.py
dist_man8_MANS = docs/man/vigilctl.8
EXTRA_DIST += src/vigilctl/vigilctl.in
CLEANFILES += src/vigilctl/vigilctl

src/vigilctl/vigilctl: src/vigilctl/vigilctl.in Makefile
	$(AM_V_GEN)$(MKDIR_P) $(@D) && \
	sed -e 's|[@]vigilctlmoduledir[@]|$(vigilctlmoduledir)|g' \
		-e 's|[@]sysconfdir[@]|$(sysconfdir)|g' -e 's|[@]libexecdir[@]|$(libexecdir)|g' \
		-e 's|[@]PACKAGE_VERSION[@]|$(PACKAGE_VERSION)|g' $(srcdir)/src/vigilctl/vigilctl.in >$@.tmp && \
	chmod +x $@.tmp && mv $@.tmp $@
