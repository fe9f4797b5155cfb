/* A tiny OTLP/HTTP collector for unit tests that check what a module puts
 * in its spans: it accepts POSTs on a loopback port, answers 200 and keeps
 * every request body, concatenated, for string searches. Header-only so
 * each test binary includes what it uses. */
#pragma once

#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define OTLP_SINK_MAX (4U * 1024U * 1024U)

struct otlp_sink {
        int fd;
        uint16_t port;
        pthread_t thread;
        pthread_mutex_t lock;
        bool stop;
        char *bodies; /* NUL-terminated */
        size_t len;
};

static bool otlp_sink_stopping(struct otlp_sink *s)
{
        bool stop;

        pthread_mutex_lock(&s->lock);
        stop = s->stop;
        pthread_mutex_unlock(&s->lock);
        return stop;
}

/* Read until buf holds n bytes; false on EOF, error or stop. */
static bool otlp_sink_fill(struct otlp_sink *s, int fd, char *buf, size_t *len, size_t n)
{
        while (*len < n) {
                struct pollfd p = {.fd = fd, .events = POLLIN};
                ssize_t k;

                if (otlp_sink_stopping(s))
                        return false;
                if (poll(&p, 1, 50) <= 0)
                        continue;
                k = recv(fd, buf + *len, OTLP_SINK_MAX - *len, 0);
                if (k <= 0)
                        return false;
                *len += (size_t)k;
        }
        return true;
}

static void otlp_sink_serve(struct otlp_sink *s, int fd)
{
        static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                    "Content-Length: 2\r\n\r\n{}";
        char *buf = malloc(OTLP_SINK_MAX + 1);
        size_t len = 0;

        ck_assert_ptr_nonnull(buf);
        for (;;) {
                char *end, *cl;
                size_t head_len, body_len = 0, total;

                for (;;) {
                        buf[len] = '\0';
                        end = strstr(buf, "\r\n\r\n");
                        if (end)
                                break;
                        if (len >= OTLP_SINK_MAX || !otlp_sink_fill(s, fd, buf, &len, len + 1))
                                goto out;
                }
                head_len = (size_t)(end - buf) + 4;
                cl = strcasestr(buf, "\r\nContent-Length:");
                if (cl && cl < end)
                        body_len = strtoul(cl + 17, NULL, 10);
                total = head_len + body_len;
                if (total > OTLP_SINK_MAX || !otlp_sink_fill(s, fd, buf, &len, total))
                        goto out;

                pthread_mutex_lock(&s->lock);
                if (s->len + body_len <= OTLP_SINK_MAX) {
                        memcpy(s->bodies + s->len, buf + head_len, body_len);
                        s->len += body_len;
                        s->bodies[s->len] = '\0';
                }
                pthread_mutex_unlock(&s->lock);

                if (send(fd, reply, sizeof(reply) - 1, MSG_NOSIGNAL) != (ssize_t)sizeof(reply) - 1)
                        goto out;
                memmove(buf, buf + total, len - total);
                len -= total;
        }
out:
        free(buf);
}

static void *otlp_sink_thread(void *userdata)
{
        struct otlp_sink *s = userdata;

        while (!otlp_sink_stopping(s)) {
                struct pollfd p = {.fd = s->fd, .events = POLLIN};
                int fd;

                if (poll(&p, 1, 50) <= 0)
                        continue;
                fd = accept(s->fd, NULL, NULL);
                if (fd < 0)
                        continue;
                otlp_sink_serve(s, fd);
                close(fd);
        }
        return NULL;
}

static void otlp_sink_start(struct otlp_sink *s)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof(sa);

        *s = (struct otlp_sink){.bodies = calloc(1, OTLP_SINK_MAX + 1)};
        ck_assert_ptr_nonnull(s->bodies);
        pthread_mutex_init(&s->lock, NULL);
        s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(s->fd, 0);
        ck_assert_int_eq(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(listen(s->fd, 16), 0);
        ck_assert_int_eq(getsockname(s->fd, (struct sockaddr *)&sa, &sl), 0);
        s->port = ntohs(sa.sin_port);
        ck_assert_int_eq(pthread_create(&s->thread, NULL, otlp_sink_thread, s), 0);
}

/* Stop the collector and return what it received (the caller frees). */
static char *otlp_sink_stop(struct otlp_sink *s)
{
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
        close(s->fd);
        pthread_mutex_destroy(&s->lock);
        return s->bodies;
}
