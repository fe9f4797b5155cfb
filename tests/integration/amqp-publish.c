/* A small AMQP tool for the integration tests (Python's standard library
 * has no AMQP client), built on src/lib/amqp.c. The broker is
 * $VIGIL_AMQP_URL.
 *
 *   amqp-publish            read JSON lines from stdin, one message each:
 *                           {"exchange":"vigil.events","routing_key":"payment.created",
 *                            "message_id":"payment-1","body":"{…}","traceparent":"00-…",
 *                            "attempt":0}
 *                           (exchange and routing_key default to the payment events),
 *                           publish them confirmed in batches and print one
 *                           result per line: ack, nack, returned or error
 *   amqp-publish --count Q  print the number of messages in queue Q
 *   amqp-publish --dump Q   print {"message_id":…,"attempt":…} per message of
 *                           queue Q, leaving them in the queue
 *
 * Exits 0, or 1 on any error. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp.h"
#include "macro.h"

#define BATCH    100
#define MAX_LINE (256U * 1024U)

static const char *string_field(struct json_object *o, const char *key, const char *def)
{
        struct json_object *v;

        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
                return def;
        return json_object_get_string(v);
}

static int publish_lines(struct amqp_client *c)
{
        struct json_object *objs[BATCH];
        struct amqp_message msgs[BATCH];
        enum amqp_publish_result results[BATCH];
        char *line = NULL;
        size_t cap = 0, n = 0;
        bool eof = false;
        int status = 0;

        while (!eof) {
                ssize_t len = getline(&line, &cap, stdin);

                if (len < 0)
                        eof = true;
                else if (len > 1 && (size_t)len < MAX_LINE) {
                        struct json_object *o = json_tokener_parse(line);
                        struct json_object *attempt;

                        if (!o) {
                                fprintf(stderr, "amqp-publish: not JSON: %s", line);
                                free(line);
                                return 1;
                        }
                        objs[n] = o;
                        msgs[n] = (struct amqp_message){
                                .exchange = string_field(o, "exchange", AMQP_EVENTS_EXCHANGE),
                                .routing_key =
                                        string_field(o, "routing_key", AMQP_PAYMENT_ROUTING_KEY),
                                .message_id = string_field(o, "message_id", NULL),
                                .body = string_field(o, "body", ""),
                                .traceparent = string_field(o, "traceparent", NULL),
                        };
                        msgs[n].body_size = strlen(msgs[n].body);
                        if (json_object_object_get_ex(o, "attempt", &attempt))
                                msgs[n].attempt = json_object_get_int(attempt);
                        n++;
                }
                if (n == BATCH || (eof && n > 0)) {
                        int r = amqp_publish_batch(c, msgs, n, results);

                        for (size_t i = 0; i < n; i++) {
                                puts(r < 0                                    ? "error"
                                     : results[i] == AMQP_PUBLISH_RESULT_ACK  ? "ack"
                                     : results[i] == AMQP_PUBLISH_RESULT_NACK ? "nack"
                                                                              : "returned");
                                json_object_put(objs[i]);
                        }
                        if (r < 0) {
                                fprintf(stderr, "amqp-publish: %s\n", strerror(-r));
                                status = 1;
                                eof = true;
                        }
                        n = 0;
                }
        }
        free(line);
        fflush(stdout);
        return status;
}

static int dump(struct amqp_client *c, const char *queue)
{
        struct amqp_delivery *d;
        int r;

        r = amqp_consume_start(c, queue, 1000);
        if (r < 0)
                return r;
        while ((r = amqp_receive(c, 500, &d)) == 0) {
                struct json_object *o = json_object_new_object();

                json_object_object_add(o, "message_id",
                                       d->message_id ? json_object_new_string(d->message_id)
                                                     : NULL);
                json_object_object_add(o, "attempt", json_object_new_int(d->attempt));
                json_object_object_add(o, "redelivered", json_object_new_boolean(d->redelivered));
                puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
                json_object_put(o);
                amqp_delivery_free(d);
        }
        /* Unacked: they stay in the queue when the connection closes. */
        return r == -ETIMEDOUT ? 0 : r;
}

int main(int argc, char **argv)
{
        _cleanup_(amqp_client_freep) struct amqp_client *c = NULL;
        struct amqp_client_options opts = {.url = getenv("VIGIL_AMQP_URL"),
                                           .connection_name = "amqp-publish"};
        int r;

        if (!opts.url) {
                fprintf(stderr, "amqp-publish: VIGIL_AMQP_URL is not set\n");
                return 1;
        }
        r = amqp_client_new(&opts, &c);
        if (r >= 0)
                r = amqp_client_connect(c);
        if (r >= 0)
                r = amqp_declare_topology(c);
        if (r < 0) {
                char error[256];

                amqp_client_last_error(c, error, sizeof(error));
                fprintf(stderr, "amqp-publish: %s (%s)\n", strerror(-r), error);
                return 1;
        }

        if (argc == 3 && strcmp(argv[1], "--count") == 0) {
                uint64_t n;

                r = amqp_queue_message_count(c, argv[2], &n);
                if (r >= 0)
                        printf("%" PRIu64 "\n", n);
        } else if (argc == 3 && strcmp(argv[1], "--dump") == 0) {
                r = dump(c, argv[2]);
        } else if (argc == 1) {
                return publish_lines(c);
        } else {
                fprintf(stderr, "usage: amqp-publish [--count QUEUE | --dump QUEUE]\n");
                return 1;
        }
        if (r < 0) {
                fprintf(stderr, "amqp-publish: %s\n", strerror(-r));
                return 1;
        }
        return 0;
}
