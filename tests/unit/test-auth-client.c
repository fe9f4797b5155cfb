/* Unit tests for auth-client, the one client of authd's POST /verify that
 * paymentd and inventoryd share: against vigil's own http-server standing
 * in for authd, answering as authd does (and as it must not). */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth-client.h"
#include "http-server.h"
#include "log.h"
#include "metrics.h"

static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned verify_calls;
static char seen_authorization[AUTH_TOKEN_MAX_LENGTH + 64];

/* authd's /verify: "Bearer good" is user 42, "Bearer revoked" is 401,
 * "Bearer broken" a 500, "Bearer nouser" a 200 without a user id. */
static void handle_verify(struct http_request *req, void *userdata)
{
        const char *authorization = http_request_header(req, "Authorization");
        const char *token = http_request_bearer(req);

        (void)userdata;
        pthread_mutex_lock(&seen_lock);
        verify_calls++;
        (void)snprintf(seen_authorization, sizeof(seen_authorization), "%s",
                       authorization ? authorization : "");
        pthread_mutex_unlock(&seen_lock);
        if (token && strcmp(token, "good") == 0) {
                static const char body[] = "{\"valid\":true,\"user_id\":42,\"username\":\"a\"}";

                http_reply(req, 200, "application/json", body, sizeof(body) - 1);
        } else if (token && strcmp(token, "broken") == 0) {
                http_reply_error(req, 500, "internal", "Internal error");
        } else if (token && strcmp(token, "nouser") == 0) {
                static const char body[] = "{\"valid\":true}";

                http_reply(req, 200, "application/json", body, sizeof(body) - 1);
        } else {
                http_reply_error(req, 401, "invalid_token", "Missing, invalid or revoked token");
        }
}

static const struct http_route routes[] = {
        {"POST", "/verify", handle_verify},
};

static struct metrics_registry *server_registry, *client_registry;
static struct http_server *server;
static struct auth_client *client;

static struct auth_client *new_client(uint16_t port)
{
        struct auth_client_options opts = {.timeout_ms = 2000, .metrics = client_registry};
        struct auth_client *c = NULL;
        char url[64];

        (void)snprintf(url, sizeof(url), "http://127.0.0.1:%u", port);
        opts.base_url = url;
        ck_assert_int_eq(auth_client_new(&opts, &c), 0);
        return c;
}

static void setup(void)
{
        struct http_server_options opts = {.listen = "127.0.0.1:0", .listen_fd = -1};

        log_set_max_level(LOG_CRIT);
        ck_assert_int_eq(metrics_registry_new(&server_registry), 0);
        ck_assert_int_eq(metrics_registry_new(&client_registry), 0);
        opts.metrics = server_registry;
        ck_assert_int_eq(http_server_new(&opts, routes, ELEMENTSOF(routes), &server), 0);
        ck_assert_int_eq(http_server_start(server), 0);
        client = new_client(http_server_port(server));
        verify_calls = 0;
        seen_authorization[0] = '\0';
}

static void teardown(void)
{
        auth_client_free(client);
        client = NULL;
        http_server_free(server);
        server = NULL;
        metrics_registry_free(client_registry);
        metrics_registry_free(server_registry);
}

static unsigned calls(void)
{
        unsigned n;

        pthread_mutex_lock(&seen_lock);
        n = verify_calls;
        pthread_mutex_unlock(&seen_lock);
        return n;
}

static char *client_metrics(void)
{
        char *text = NULL;
        size_t len;

        ck_assert_int_eq(metrics_render(client_registry, METRICS_FORMAT_PROMETHEUS, &text, &len),
                         0);
        return text;
}

START_TEST(test_a_valid_token_is_its_user)
{
        int64_t user_id = 0;
        char *text;

        ck_assert_int_eq(auth_client_verify(client, "good", &user_id), 0);
        ck_assert_int_eq(user_id, 42);
        ck_assert_str_eq(seen_authorization, "Bearer good");
        text = client_metrics();
        ck_assert_ptr_nonnull(strstr(text, "vigil_dependency_up{dependency=\"auth\"} 1"));
        ck_assert_ptr_nonnull(
                strstr(text, "vigil_http_client_requests_total{peer=\"auth\",code=\"200\"} 1"));
        free(text);
}
END_TEST

START_TEST(test_a_refused_token_is_eacces)
{
        int64_t user_id = 7;

        ck_assert_int_eq(auth_client_verify(client, "revoked", &user_id), -EACCES);
        ck_assert_int_eq(user_id, 7);
        ck_assert_uint_eq(calls(), 1);
}
END_TEST

START_TEST(test_no_token_or_an_unsendable_one_is_refused_without_asking)
{
        char *huge = malloc(AUTH_TOKEN_MAX_LENGTH + 2);
        int64_t user_id = 7;

        ck_assert_ptr_nonnull(huge);
        memset(huge, 'a', AUTH_TOKEN_MAX_LENGTH + 1);
        huge[AUTH_TOKEN_MAX_LENGTH + 1] = '\0';
        ck_assert_int_eq(auth_client_verify(client, NULL, &user_id), -EACCES);
        ck_assert_int_eq(auth_client_verify(client, "", &user_id), -EACCES);
        ck_assert_int_eq(auth_client_verify(client, huge, &user_id), -EACCES);
        /* A header with a line break cannot be sent at all. */
        ck_assert_int_eq(auth_client_verify(client, "a\r\nX-Evil: 1", &user_id), -EACCES);
        ck_assert_uint_eq(calls(), 0);
        ck_assert_int_eq(user_id, 7);
        free(huge);
}
END_TEST

START_TEST(test_answers_that_break_the_contract_are_not_a_verdict)
{
        int64_t user_id = 7;

        ck_assert_int_eq(auth_client_verify(client, "broken", &user_id), -EPROTO);
        ck_assert_int_eq(auth_client_verify(client, "nouser", &user_id), -EBADMSG);
        ck_assert_int_eq(user_id, 7);
}
END_TEST

START_TEST(test_authd_down_is_neither_a_user_nor_a_refusal)
{
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t salen = sizeof(sa);
        struct auth_client *down;
        int64_t user_id = 7;
        char *text;
        int fd, r;

        /* A port that was just free: bind, learn it, close. */
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &salen), 0);
        close(fd);

        down = new_client(ntohs(sa.sin_port));
        r = auth_client_verify(down, "good", &user_id);
        ck_assert_int_lt(r, 0);
        ck_assert_int_ne(r, -EACCES);
        ck_assert_int_eq(user_id, 7);
        ck_assert_int_lt(auth_client_health(down), 0);
        text = client_metrics();
        ck_assert_ptr_nonnull(strstr(text, "vigil_dependency_up{dependency=\"auth\"} 0"));
        free(text);
        auth_client_free(down);
}
END_TEST

int main(void)
{
        Suite *s = suite_create("auth-client");
        TCase *tc = tcase_create("verify");
        SRunner *sr;
        int failed;

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_a_valid_token_is_its_user);
        tcase_add_test(tc, test_a_refused_token_is_eacces);
        tcase_add_test(tc, test_no_token_or_an_unsendable_one_is_refused_without_asking);
        tcase_add_test(tc, test_answers_that_break_the_contract_are_not_a_verdict);
        tcase_add_test(tc, test_authd_down_is_neither_a_user_nor_a_refusal);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
