/* JSON Web Tokens, HS256 only, on libjwt 1.10. Verification always decodes
 * with the key, then requires alg == HS256 (so "none", "NONE" and other
 * algorithms are rejected), a valid signature, an "exp" in the future, and
 * "nbf"/"iat" not in the future, each with JWT_LEEWAY_SECONDS of leeway.
 *
 * Thread-safety: stateless; safe from any thread. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define JWT_MIN_KEY_SIZE 32
#define JWT_MAX_TOKEN_SIZE 4096
#define JWT_LEEWAY_SECONDS 30
#define JWT_MAX_CLAIM 128

struct jwt_claims {
        int64_t user_id;                  /* "sub", as a decimal string */
        char username[JWT_MAX_CLAIM + 1]; /* "username" */
        char session_id[JWT_MAX_CLAIM + 1]; /* "sid" */
        int64_t issued_at;                /* "iat" */
        int64_t not_before;               /* "nbf" */
        int64_t expires_at;               /* "exp" */
};

/* Issue a token for claims (iat/nbf/exp are taken from claims). key must be
 * at least JWT_MIN_KEY_SIZE bytes. Returns 0 and a malloc()ed token, or
 * -EINVAL for a short key or bad claims, -ENOMEM. */
int jwt_hs256_issue(const uint8_t *key, size_t key_len, const struct jwt_claims *claims,
                    char **ret_token);

/* Verify token at time now (seconds since the epoch). Returns 0 and fills
 * *ret, or:
 *   -EBADMSG  malformed token, missing or ill-typed claims, too long
 *   -EPERM    bad signature or algorithm other than HS256
 *   -ETIME    expired, missing exp, nbf or iat in the future
 *   -EINVAL   key shorter than JWT_MIN_KEY_SIZE */
int jwt_hs256_verify(const uint8_t *key, size_t key_len, const char *token, int64_t now,
                     struct jwt_claims *ret);
