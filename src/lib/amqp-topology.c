/* The payment topology (docs/messaging.md): the exchange, the queue of
 * notifications, its delayed retries and its parking queue, declared the
 * one way RabbitMQ accepts every time; and queue depths. */
#include <amqp.h>
#include <amqp_framing.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp-internal.h"
#include "amqp.h"
#include "dependency-metrics.h"
#include "macro.h"
#include "metrics.h"
#include "trace.h"

static int declare_queue(struct amqp_client *c, const char *name, amqp_table_entry_t *args,
                         int n_args)
{
        amqp_table_t table = {.num_entries = n_args, .entries = args};

        amqp_queue_declare(c->conn, CHANNEL, amqp_cstring_bytes(name), false, true, false, false,
                           table);
        return amqp_client_check_rpc(c, name);
}

static int declare_topology(struct amqp_client *c)
{
        char name[64];
        int r;

        amqp_exchange_declare(c->conn, CHANNEL, amqp_cstring_bytes(AMQP_EVENTS_EXCHANGE),
                              amqp_cstring_bytes("topic"), false, true, false, false,
                              amqp_empty_table);
        r = amqp_client_check_rpc(c, AMQP_EVENTS_EXCHANGE);
        if (r < 0)
                return r;

        /* What the consumer rejects without requeueing is parked by the
         * broker itself. */
        amqp_table_entry_t main_args[] = {
                amqp_entry_string("x-dead-letter-exchange", ""),
                amqp_entry_string("x-dead-letter-routing-key", AMQP_NOTIFY_DEAD_QUEUE),
        };
        r = declare_queue(c, AMQP_NOTIFY_QUEUE, main_args, ELEMENTSOF(main_args));
        if (r < 0)
                return r;
        amqp_queue_bind(c->conn, CHANNEL, amqp_cstring_bytes(AMQP_NOTIFY_QUEUE),
                        amqp_cstring_bytes(AMQP_EVENTS_EXCHANGE), amqp_cstring_bytes("payment.#"),
                        amqp_empty_table);
        r = amqp_client_check_rpc(c, "queue.bind");
        if (r < 0)
                return r;

        for (int n = 1; n <= AMQP_NOTIFY_RETRY_QUEUES; n++) {
                amqp_table_entry_t retry_args[] = {
                        amqp_entry_int("x-message-ttl", 1000 << (2 * (n - 1))),
                        amqp_entry_string("x-dead-letter-exchange", ""),
                        amqp_entry_string("x-dead-letter-routing-key", AMQP_NOTIFY_QUEUE),
                };

                snprintf(name, sizeof(name), "vigil.notify.retry.%d", n);
                r = declare_queue(c, name, retry_args, ELEMENTSOF(retry_args));
                if (r < 0)
                        return r;
        }
        return declare_queue(c, AMQP_NOTIFY_DEAD_QUEUE, NULL, 0);
}

int amqp_declare_topology(struct amqp_client *c)
{
        uint64_t start;
        int r;

        if (!c)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        start = now_usec(CLOCK_MONOTONIC);
        r = declare_topology(c);
        dependency_metrics_observe(&c->dependencies, "amqp", "declare",
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, NULL);
        return r;
}

int amqp_queue_message_count(struct amqp_client *c, const char *queue, uint64_t *ret_count)
{
        amqp_queue_declare_ok_t *ok;
        uint64_t start;
        int r;

        if (!c || !queue || strlen(queue) > 255)
                return -EINVAL;
        if (!c->conn)
                return -ENOTCONN;
        start = now_usec(CLOCK_MONOTONIC);
        ok = amqp_queue_declare(c->conn, CHANNEL, amqp_cstring_bytes(queue), true, false, false,
                                false, amqp_empty_table);
        r = amqp_client_check_rpc(c, queue);
        dependency_metrics_observe(&c->dependencies, "amqp", "queue_count",
                                   (double)(now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                                   r < 0, NULL);
        if (r < 0)
                return r;
        if (ret_count)
                *ret_count = ok->message_count;
        return 0;
}
