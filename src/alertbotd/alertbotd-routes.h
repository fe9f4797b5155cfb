/* vigil-alertbotd's HTTP API: POST /webhook (Alertmanager, bearer token)
 * and GET /incidents. Decodes requests and encodes answers; the decisions
 * are the manager's and the policy's. */
#pragma once

#include <stddef.h>

#include "http-server.h"

extern const struct http_route alertbotd_routes[];
extern const size_t alertbotd_routes_count;
