#include "authd-routes.h"

#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "authd-manager.h"
#include "authd-sessions.h"
#include "authd-users.h"
#include "json-util.h"
#include "jwt.h"
#include "log.h"
#include "metrics.h"
#include "password.h"

/* Bound on what a client may send as a username before validation. */
#define USERNAME_INPUT_MAX 1024

static int64_t now_seconds(void)
{
        return (int64_t)time(NULL);
}

/* Answer for an error from the pools, the hasher or the domain code that
 * has no more specific meaning in the handler: a hasher with no free slot
 * is 503 "busy"; a failed statement or command counts as the dependency
 * not answering. */
static void reply_failure(struct http_request *req, int r, const char *dependency)
{
        if (r == -EBUSY) {
                http_reply_add_header(req, "Retry-After", "1");
                http_reply_error(req, 503, "busy", "Too many password checks in progress");
                return;
        }
        http_reply_dependency_error(req, r, dependency, (const int[]){-EIO, 0});
}

/* 400 for a field json_get_string() refused with r. */
static void reply_field_error(struct http_request *req, int r, const char *field, size_t max)
{
        if (r == -ENOENT)
                http_reply_error(req, 400, "missing_field", "Field \"%s\" is required", field);
        else if (r == -ERANGE)
                http_reply_error(req, 400, "invalid_field", "Field \"%s\" must be 1 to %zu bytes",
                                 field, max);
        else
                http_reply_error(req, 400, "invalid_field",
                                 "Field \"%s\" must be a string without control characters", field);
}

/* Decode {"username","password"}; replies 400 itself on failure. */
static int decode_credentials(struct http_request *req, struct json_object **ret_body,
                              const char **ret_username, const char **ret_password)
{
        _cleanup_(json_object_putp) struct json_object *body = NULL;
        const char *fields[] = {"username", "password"};
        const size_t max[] = {USERNAME_INPUT_MAX, PASSWORD_MAX_LENGTH};
        const char *values[2];
        int r;

        r = http_request_json(req, &body);
        if (r < 0)
                return r;

        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                r = json_get_string(body, fields[i], 1, max[i], &values[i]);
                if (r < 0) {
                        reply_field_error(req, r, fields[i], max[i]);
                        return r;
                }
        }

        *ret_username = values[0];
        *ret_password = values[1];
        *ret_body = TAKE_PTR(body);
        return 0;
}

static void handle_register(struct http_request *req, void *userdata)
{
        struct authd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *body = NULL, *answer = NULL;
        const char *username, *password;
        int64_t user_id;
        int r;

        if (decode_credentials(req, &body, &username, &password) < 0)
                return;

        if (users_validate_username(username) < 0) {
                http_reply_error(req, 400, "invalid_field",
                                 "Field \"username\" must be %d to %d characters of "
                                 "A-Z, a-z, 0-9, '_', '.', '-'",
                                 USERNAME_MIN_LENGTH, USERNAME_MAX_LENGTH);
                return;
        }
        if (strlen(password) < PASSWORD_MIN_LENGTH) {
                http_reply_error(req, 400, "invalid_field",
                                 "Field \"password\" must be %d to %d bytes", PASSWORD_MIN_LENGTH,
                                 PASSWORD_MAX_LENGTH);
                return;
        }

        r = users_register(m->daemon->pg, m->hasher, username, password, &user_id);
        if (r == -EEXIST) {
                http_reply_error(req, 409, "username_taken", "Username is already taken");
                return;
        }
        if (r == -EINVAL) {
                http_reply_error(req, 400, "invalid_field", "Invalid username or password");
                return;
        }
        if (r < 0) {
                reply_failure(req, r, "postgres");
                return;
        }

        answer = json_object_new_object();
        json_object_object_add(answer, "user_id", json_object_new_int64(user_id));
        json_object_object_add(answer, "username", json_object_new_string(username));
        http_reply_json(req, 201, answer);
}

static void handle_login(struct http_request *req, void *userdata)
{
        struct authd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *body = NULL, *answer = NULL;
        _cleanup_free_ char *token = NULL;
        char session_id[SESSION_ID_LENGTH + 1];
        const char *username, *password;
        int64_t user_id, now, ttl = m->config->token_ttl_seconds;
        int r;

        if (decode_credentials(req, &body, &username, &password) < 0)
                return;

        r = users_authenticate(m->daemon->pg, m->hasher, username, password, &user_id);
        if (r == -EACCES || r == -EINVAL) {
                metrics_counter_inc(m->logins_failure);
                http_reply_add_header(req, "WWW-Authenticate", "Bearer");
                http_reply_error(req, 401, "invalid_credentials", "Invalid username or password");
                return;
        }
        if (r < 0) {
                metrics_counter_inc(m->logins_error);
                reply_failure(req, r, "postgres");
                return;
        }

        now = now_seconds();
        r = sessions_create(m->daemon->redis, user_id, ttl, now, session_id);
        if (r < 0) {
                metrics_counter_inc(m->logins_error);
                reply_failure(req, r, "redis");
                return;
        }

        struct jwt_claims claims = {
                .user_id = user_id,
                .issued_at = now,
                .not_before = now,
                .expires_at = now + ttl,
        };
        snprintf(claims.username, sizeof(claims.username), "%s", username);
        memcpy(claims.session_id, session_id, sizeof(session_id));
        r = jwt_hs256_issue(m->jwt_key, m->jwt_key_len, &claims, &token);
        if (r < 0) {
                metrics_counter_inc(m->logins_error);
                log_error_errno(r, "Failed to issue a token: %m");
                http_reply_error(req, 500, "internal", "Internal error");
                return;
        }

        metrics_counter_inc(m->logins_success);
        answer = json_object_new_object();
        json_object_object_add(answer, "token", json_object_new_string(token));
        json_object_object_add(answer, "user_id", json_object_new_int64(user_id));
        json_object_object_add(answer, "expires_in", json_object_new_int64(ttl));
        http_reply_json(req, 200, answer);
}

/* Check the bearer token and its session. Replies 401/503 itself and
 * returns negative when the token is not good. */
static int authenticate(struct http_request *req, struct authd_manager *m,
                        struct jwt_claims *ret_claims)
{
        const char *token = http_request_bearer(req);
        int r;

        if (!token)
                r = -EBADMSG;
        else
                r = jwt_hs256_verify_cached(m->token_cache, m->jwt_key, m->jwt_key_len, token,
                                            now_seconds(), ret_claims);
        if (r >= 0) {
                r = sessions_check(m->daemon->redis, m->sessions_cache, ret_claims->session_id,
                                   ret_claims->user_id);
                if (r < 0 && r != -ENOENT) {
                        reply_failure(req, r, "redis");
                        return r;
                }
        }
        if (r < 0) {
                http_reply_add_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
                http_reply_error(req, 401, "invalid_token", "Missing, invalid or revoked token");
                return r;
        }
        return 0;
}

static void handle_verify(struct http_request *req, void *userdata)
{
        struct authd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *answer = NULL;
        struct jwt_claims claims;

        if (authenticate(req, m, &claims) < 0)
                return;

        answer = json_object_new_object();
        json_object_object_add(answer, "valid", json_object_new_boolean(1));
        json_object_object_add(answer, "user_id", json_object_new_int64(claims.user_id));
        json_object_object_add(answer, "username", json_object_new_string(claims.username));
        http_reply_json(req, 200, answer);
}

static void handle_logout(struct http_request *req, void *userdata)
{
        struct authd_manager *m = userdata;
        struct jwt_claims claims;
        int r;

        if (authenticate(req, m, &claims) < 0)
                return;

        r = sessions_revoke(m->daemon->redis, m->sessions_cache, claims.session_id);
        if (r == -ENOENT) {
                /* Revoked by a concurrent logout. */
                http_reply_error(req, 401, "invalid_token", "Missing, invalid or revoked token");
                return;
        }
        if (r < 0) {
                reply_failure(req, r, "redis");
                return;
        }
        http_reply_empty(req, 204);
}

static void handle_stats(struct http_request *req, void *userdata)
{
        struct authd_manager *m = userdata;
        _cleanup_(json_object_putp) struct json_object *answer = NULL;
        int64_t sessions, users;
        int r;

        r = sessions_count_active(m->daemon->redis, now_seconds(), &sessions);
        if (r < 0) {
                reply_failure(req, r, "redis");
                return;
        }
        r = users_count(m->daemon->pg, &users);
        if (r < 0) {
                reply_failure(req, r, "postgres");
                return;
        }
        metrics_gauge_set(m->active_sessions, (double)sessions);

        answer = json_object_new_object();
        json_object_object_add(answer, "active_sessions", json_object_new_int64(sessions));
        json_object_object_add(answer, "total_users", json_object_new_int64(users));
        http_reply_json(req, 200, answer);
}

const struct http_route authd_routes[] = {
        {"POST", "/register", handle_register}, {"POST", "/login", handle_login},
        {"POST", "/verify", handle_verify},     {"POST", "/logout", handle_logout},
        {"GET", "/stats", handle_stats},
};
const size_t authd_routes_count = ELEMENTSOF(authd_routes);
