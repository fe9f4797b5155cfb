/* vigil-inventoryd's HTTP API (DESIGN.md §3): decodes requests, calls the
 * catalog through the cache, encodes answers. */
#pragma once

#include <stddef.h>

#include "http-server.h"

extern const struct http_route inventoryd_routes[];
extern const size_t inventoryd_routes_count;
