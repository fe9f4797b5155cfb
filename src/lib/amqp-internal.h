/* What amqp.c (the connection and its frames), amqp-publish.c (topology
 * and publishing with confirms) and amqp-consume.c (consuming and
 * settling) share. Not for use outside those files. */
#pragma once

#include <amqp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp.h"
#include "dependency-metrics.h"
#include "macro.h"

/* FRAME_MAX: the frames we accept, and so the size of each of the two
 * buffers rabbitmq-c keeps per connection. Larger bodies arrive in several
 * frames; ours are well under a kilobyte. */
#define CHANNEL                    1
#define FRAME_MAX                  32768
#define DEFAULT_CONNECT_TIMEOUT_MS 2000
#define DEFAULT_RPC_TIMEOUT_MS     5000
#define DEFAULT_HEARTBEAT_SECONDS  30
#define MAX_TIMEOUT_MS             (3600U * 1000U)
#define MAX_HEARTBEAT_SECONDS      600
#define MAX_URL_LEN                1024
#define MAX_ERROR_LEN              256
#define MAX_STASHED                (AMQP_MAX_PREFETCH + 16)

struct stashed {
        struct amqp_delivery *delivery;
        struct stashed *next;
};

/* One message of a batch waiting for its confirm. */
struct pending {
        uint64_t tag;
        const char *message_id;
        bool confirmed;
        bool nacked;
        bool returned;
        struct span *span;
};

struct amqp_client {
        amqp_connection_state_t conn;
        atomic_bool connected;
        atomic_bool failed; /* amqp_client_set_failed() */
        uint64_t connection_id;
        uint64_t next_publish_tag;
        bool consuming;
        char *consume_queue;

        char *host;
        int port;
        char *vhost;
        char *user;
        char *password;
        char *connection_name;
        unsigned connect_timeout_ms;
        unsigned rpc_timeout_ms;
        unsigned heartbeat_seconds;
        char last_error[MAX_ERROR_LEN];

        struct stashed *stash_head, *stash_tail;
        size_t n_stashed;

        /* The batch being confirmed, for handle_frame(). */
        struct pending *pending;
        size_t n_pending;

        struct tracer *tracer;
        struct dependency_metrics dependencies;
        struct metric *publish_ack, *publish_nack, *publish_returned, *publish_error;
};

/* The monotonic time ms from now, in microseconds. */
static inline uint64_t amqp_deadline_after_ms(unsigned ms)
{
        return now_usec(CLOCK_MONOTONIC) + (uint64_t)ms * USEC_PER_MSEC;
}

/* Describe the last failure ("host:port/vhost: " then format) for
 * amqp_client_last_error(). */
void amqp_client_set_error(struct amqp_client *c, const char *format, ...) _printf_(2, 3);
/* Destroy the connection after a failure: its protocol state is no longer
 * known. */
void amqp_client_teardown(struct amqp_client *c);
/* 0, or while failed on purpose (amqp_client_set_failed()): drop the
 * connection, if any, and return -ECONNRESET. For the owner thread. */
int amqp_client_check_failed(struct amqp_client *c);
/* Tear down after a library status; returns the errno for it. */
int amqp_client_fail_status(struct amqp_client *c, int status, const char *what);
/* The outcome of the last synchronous call (what names it in errors). */
int amqp_client_check_rpc(struct amqp_client *c, const char *what);
/* Wait for the next frame until deadline (monotonic µs). */
int amqp_client_wait_frame(struct amqp_client *c, uint64_t deadline, amqp_frame_t *ret);
/* Handle a frame whoever waits: confirms, returns, deliveries (stashed),
 * a closing broker. */
int amqp_client_handle_frame(struct amqp_client *c, const amqp_frame_t *frame);
void amqp_delivery_free_contents(struct amqp_delivery *d);

/* Table entries (message headers, queue arguments). */
static inline amqp_table_entry_t amqp_entry_string(const char *key, const char *value)
{
        return (amqp_table_entry_t){
                .key = amqp_cstring_bytes(key),
                .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(value)},
        };
}

static inline amqp_table_entry_t amqp_entry_int(const char *key, int32_t value)
{
        return (amqp_table_entry_t){
                .key = amqp_cstring_bytes(key),
                .value = {.kind = AMQP_FIELD_KIND_I32, .value.i32 = value},
        };
}
