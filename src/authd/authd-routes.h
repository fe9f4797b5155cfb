/* vigil-authd's HTTP API (DESIGN.md §3): decodes requests, calls the users
 * and sessions code, encodes answers. */
#pragma once

#include <stddef.h>

#include "http-server.h"

extern const struct http_route authd_routes[];
extern const size_t authd_routes_count;
