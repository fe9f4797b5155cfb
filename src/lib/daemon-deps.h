/* The dependency half of the skeleton (daemon.h): daemon.c runs the
 * command line, the configuration and the main loop, and calls these in
 * this order. Each logs what failed and returns a negative errno. */
#pragma once

#include <stdbool.h>

#include "daemon.h"

/* Build the metrics registry, the tracer and the dependencies d->ops
 * declares, from d->config. Connects to nothing. */
int daemon_dependencies_new(struct daemon *d);
/* Apply config's [faults] (at_start: the configuration the daemon starts
 * with). Returns 0 or -ENOMEM (nothing changed). */
int daemon_apply_faults(struct daemon *d, const void *config, bool at_start);
/* Serve HTTP on the socket systemd passed, else [http] listen: d->ops'
 * routes with d->manager as their userdata, /ready from the checks. */
int daemon_serve(struct daemon *d);
/* One check: ping the dependencies (logging when one comes or goes),
 * migrate the schema once PostgreSQL answers, run the manager's tick and
 * compose STATUS= in d->status. Returns false when the daemon is not making progress
 * (a hung request, or the manager's tick said so). */
bool daemon_tick(struct daemon *d);
/* Drain HTTP, then stop the manager's threads. */
void daemon_stop(struct daemon *d);
/* Free HTTP, the manager and the dependencies, in reverse of their
 * creation. Accepts a partly built d. */
void daemon_teardown(struct daemon *d);
