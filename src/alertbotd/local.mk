# The sources of vigil-alertbotd's library (src/daemons.mk builds it and the
# daemon).
src_alertbotd_libalertbotd_a_SOURCES = \
	src/alertbotd/alertbotd-manager.c src/alertbotd/alertbotd-manager.h \
	src/alertbotd/alertbotd-remediation.c src/alertbotd/alertbotd-remediation.h \
	src/alertbotd/alertbotd-routes.c src/alertbotd/alertbotd-routes.h \
	src/alertbotd/alertbotd-webhook.c src/alertbotd/alertbotd-webhook.h \
	src/alertbotd/alertbotd-policy.c src/alertbotd/alertbotd-policy.h \
	src/alertbotd/alertbotd-decision.c \
	src/alertbotd/alertbotd-state.c src/alertbotd/alertbotd-state.h \
	src/alertbotd/alertbotd-systemd.c src/alertbotd/alertbotd-systemd.h \
	src/alertbotd/alertbotd-escalation.c src/alertbotd/alertbotd-escalation.h \
	src/alertbotd/alertbotd-notifications.c src/alertbotd/alertbotd-notifications.h
