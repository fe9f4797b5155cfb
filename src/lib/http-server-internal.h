/* What http-server.c (the server and the life of a request) and
 * http-server-request.c (what a handler does with its request) share.
 * Not for use outside those files. */
#pragma once

#include <microhttpd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http-route.h"
#include "http-server.h"

struct json_object;
struct metric;
struct metric_family;

struct route {
        char *method;
        char *path; /* the template, also the route label */
        http_handler_fn handler;
        struct http_route_template template;
        bool builtin; /* /health, /ready, /metrics */
};

struct reply_header {
        char *name;
        char *value;
};

struct http_request {
        struct http_server *server;
        struct MHD_Connection *connection;
        /* In-flight list (for drain and the watchdog check). */
        struct http_request *prev, *next;
        uint64_t start_usec;
        uint64_t handler_start_usec; /* 0 while no handler runs */

        bool started;   /* headers processed */
        bool too_large; /* body exceeded max_body */
        size_t discarded;

        const char *method;       /* libmicrohttpd's, valid until completion */
        const char *method_label; /* bounded: metrics and logs */
        const char *path;
        const struct route *route; /* NULL: unmatched */
        struct http_route_param params[HTTP_MAX_PARAMS];
        size_t n_params;
        char *path_buf; /* params point into it */

        char *body;
        size_t body_len, body_cap;

        struct span *span;
        unsigned status; /* 0 until a response is queued */
        bool reply_tried;
        struct reply_header headers[HTTP_MAX_REPLY_HEADERS];
        size_t n_headers;
};

struct http_server {
        char *listen;
        int listen_fd;
        size_t max_body;
        size_t max_header;
        unsigned max_connections;
        unsigned max_connections_per_client;
        unsigned connection_timeout_s;
        unsigned header_timeout_s;
        struct metrics_registry *metrics;
        struct tracer *tracer;
        http_ready_fn ready;
        void *ready_userdata;
        void *userdata;
        bool access_log;
        http_intercept_fn intercept;
        void *intercept_userdata;

        struct route *routes;
        size_t n_routes;

        struct metric_family *requests_total;
        struct metric_family *duration;
        struct metric *in_flight_gauge;

        struct MHD_Daemon *daemon;
        int quiesced_fd;
        bool own_socket; /* we bound it; close it after stopping */
        uint16_t port;

        pthread_mutex_t lock;
        pthread_cond_t idle; /* signalled while draining when a count drops */
        unsigned in_flight;
        unsigned unstarted;       /* connections accepted, no request begun yet */
        unsigned headers_pending; /* of in_flight: request line read, headers not */
        struct http_request *head, *tail;
        bool draining;
        bool held; /* http_server_hold(): requests wait while set */
};

/* Queue a response whose body (malloc()ed, or NULL) is taken over in any
 * case. content_type NULL: none. Returns as http_reply(). */
int http_reply_take(struct http_request *req, unsigned status, const char *content_type, char *body,
                    size_t len);
/* {"error":{"code":code,"message":message}} plus extra members on the top
 * level object (may be NULL). */
int http_reply_error_object(struct http_request *req, unsigned status, const char *code,
                            const char *message, struct json_object *extra);
