# systemd units, sysusers/tmpfiles entries, the polkit rule and the shipped
# configuration. Adding a daemon: append its name to VIGIL_DAEMONS and add
# units/vigil-<name>.service.in and units/vigil-<name>.socket.
VIGIL_DAEMONS = authd paymentd inventoryd notifyd alertbotd

# systemdsystemunitdir, sysusersdir and tmpfilesdir come from configure
# (pkg-config systemd).
polkitrulesdir = $(datadir)/polkit-1/rules.d

VIGIL_SERVICE_UNITS = $(VIGIL_DAEMONS:%=units/vigil-%.service)
VIGIL_SOCKET_UNITS = $(VIGIL_DAEMONS:%=units/vigil-%.socket)

systemdsystemunit_DATA = $(VIGIL_SERVICE_UNITS) $(VIGIL_SOCKET_UNITS) units/vigil.target
sysusers_DATA = units/sysusers.d/vigil.conf
tmpfiles_DATA = units/tmpfiles.d/vigil.conf
polkitrules_DATA = units/polkit/50-vigil-alertbot.rules

EXTRA_DIST += $(VIGIL_SERVICE_UNITS:=.in) $(VIGIL_SOCKET_UNITS) units/vigil.target \
	$(sysusers_DATA) $(tmpfiles_DATA) $(polkitrules_DATA)
CLEANFILES += $(VIGIL_SERVICE_UNITS)

# Service units name the installed binaries.
SUFFIXES = .service.in .service
.service.in.service:
	$(AM_V_GEN)$(MKDIR_P) $(@D) && \
	sed -e 's|[@]sbindir[@]|$(sbindir)|g' -e 's|[@]sysconfdir[@]|$(sysconfdir)|g' \
		-e 's|[@]localstatedir[@]|$(localstatedir)|g' $< >$@.tmp && mv $@.tmp $@

# /etc/vigil/*.conf, whatever daemons have shipped so far (conffiles in the
# packages). An existing file is never overwritten by `make install`.
vigilconfdir = $(sysconfdir)/vigil
install-data-local: install-vigil-conf
uninstall-local: uninstall-vigil-conf
install-vigil-conf:
	$(MKDIR_P) '$(DESTDIR)$(vigilconfdir)'
	@for f in $(srcdir)/etc/vigil/*.conf; do \
		[ -f "$$f" ] || continue; \
		b=$${f##*/}; \
		if [ -z '$(DESTDIR)' ] && [ -e '$(vigilconfdir)'/"$$b" ]; then \
			echo "  KEEP     $(vigilconfdir)/$$b"; continue; fi; \
		echo "  INSTALL  $(vigilconfdir)/$$b"; \
		$(INSTALL_DATA) "$$f" '$(DESTDIR)$(vigilconfdir)'/"$$b" || exit 1; \
	done
uninstall-vigil-conf:
	@for f in $(srcdir)/etc/vigil/*.conf; do \
		[ -f "$$f" ] || continue; rm -f '$(DESTDIR)$(vigilconfdir)'/"$${f##*/}"; \
	done

# The gateway (nginx) and monitoring configuration, installed by the
# packages (not by `make install`: they configure distro services).
# Monitoring directories are installed as they are, whatever they hold:
# etc/<tool>/ → $(sysconfdir)/<tool>/, grafana-provisioning/ →
# $(sysconfdir)/grafana/provisioning/, except the dashboards' JSON, which is
# data, not configuration: it goes to $(datadir)/vigil/grafana/dashboards,
# where the provider (grafana-provisioning/dashboards/vigil.yml) looks.
# Missing directories are skipped. The documentation (docs/*.md and the
# alerts' runbooks, docs/runbooks/*.md) goes to $(vigildocsdir), data that
# minimal images which drop /usr/share/doc keep. The SLO file goes to
# $(sysconfdir)/vigil/slos.yml and its generator to $(vigilexecdir)/slo-gen,
# for `vigilctl slo` (the rules generated from it ship in etc/prometheus/rules).
vigilgrafanadashboardsdir = $(datadir)/vigil/grafana/dashboards
vigildocsdir = $(datadir)/vigil/docs
VIGIL_MONITORING_DIRS = prometheus alertmanager promtail loki tempo mtail
install-gateway:
	$(MKDIR_P) '$(DESTDIR)$(sysconfdir)/nginx'
	cp -R $(srcdir)/etc/nginx/. '$(DESTDIR)$(sysconfdir)/nginx/'
	$(MKDIR_P) '$(DESTDIR)$(sysconfdir)/nginx/vigil/rate-limit.d'
install-monitoring:
	@echo "  INSTALL  $(vigilexecdir)/slo-gen, $(vigilconfdir)/slos.yml"; \
	$(MKDIR_P) '$(DESTDIR)$(vigilexecdir)' '$(DESTDIR)$(vigilconfdir)' && \
	sed '1s|^#!.*|#!/usr/bin/python3|' $(srcdir)/scripts/slo-gen.py >'$(DESTDIR)$(vigilexecdir)/slo-gen' && \
	chmod 755 '$(DESTDIR)$(vigilexecdir)/slo-gen' && \
	$(INSTALL_DATA) $(srcdir)/slo/slos.yml '$(DESTDIR)$(vigilconfdir)/slos.yml'
	@echo "  INSTALL  $(vigildocsdir)/, $(vigildocsdir)/runbooks/"; \
	$(MKDIR_P) '$(DESTDIR)$(vigildocsdir)/runbooks' && \
	$(INSTALL_DATA) $(srcdir)/docs/*.md '$(DESTDIR)$(vigildocsdir)/' && \
	$(INSTALL_DATA) $(srcdir)/docs/runbooks/*.md '$(DESTDIR)$(vigildocsdir)/runbooks/'
	@for d in $(VIGIL_MONITORING_DIRS); do \
		[ -d "$(srcdir)/etc/$$d" ] || { echo "  SKIP     etc/$$d (not there yet)"; continue; }; \
		echo "  INSTALL  $(sysconfdir)/$$d/"; \
		$(MKDIR_P) '$(DESTDIR)$(sysconfdir)'/"$$d" && \
		cp -R "$(srcdir)/etc/$$d/." '$(DESTDIR)$(sysconfdir)'/"$$d"/ || exit 1; \
	done
	@if [ -d "$(srcdir)/grafana-provisioning" ]; then \
		echo "  INSTALL  $(sysconfdir)/grafana/provisioning/"; \
		$(MKDIR_P) '$(DESTDIR)$(sysconfdir)/grafana/provisioning' && \
		cp -R "$(srcdir)/grafana-provisioning/." '$(DESTDIR)$(sysconfdir)/grafana/provisioning/' && \
		echo "  INSTALL  $(vigilgrafanadashboardsdir)/"; \
		$(MKDIR_P) '$(DESTDIR)$(vigilgrafanadashboardsdir)' && \
		mv '$(DESTDIR)$(sysconfdir)/grafana/provisioning/dashboards/'*.json \
			'$(DESTDIR)$(vigilgrafanadashboardsdir)/'; \
	else echo "  SKIP     grafana-provisioning (not there yet)"; fi
	@[ ! -d '$(DESTDIR)$(sysconfdir)' ] || \
		find '$(DESTDIR)$(sysconfdir)' \( -name '*~' -o -name '.*.sw?' \) -delete
.PHONY: install-vigil-conf uninstall-vigil-conf install-gateway install-monitoring

# What the packages run on install and purge (credentials, database).
vigilexecdir = $(libexecdir)/vigil
dist_vigilexec_SCRIPTS = units/vigil-setup

# The packaging travels with the source tarball (rpmbuild builds from it).
EXTRA_DIST += debian rpm
