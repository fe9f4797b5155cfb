/* vigil-paymentd's HTTP API (DESIGN.md §3): decodes requests, verifies the
 * bearer token with vigil-authd, calls the payments code and the simulated
 * processor, encodes answers. */
#pragma once

#include <stddef.h>

#include "http-server.h"

extern const struct http_route paymentd_routes[];
extern const size_t paymentd_routes_count;
