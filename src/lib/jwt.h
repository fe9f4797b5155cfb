/* JSON Web Tokens, HS256 only, on libjwt 1.10. Verification always decodes
 * with the key, then requires alg == HS256 (so "none", "NONE" and other
 * algorithms are rejected), a valid signature, an "exp" in the future, and
 * "nbf"/"iat" not in the future. Expiry is strict (expired from the second
 * "exp" names); JWT_LEEWAY_SECONDS of leeway applies only to "nbf" and
 * "iat", for issuers whose clock runs slightly ahead.
 *
 * Thread-safety: jwt_hs256_issue() and jwt_hs256_verify() are stateless;
 * a struct jwt_cache may be shared by any number of threads. */
#pragma once

/* src/lib is on the quote-only include path (-iquote), so "jwt.h" is this
 * file and <jwt.h> is libjwt's. */

#include <stddef.h>
#include <stdint.h>

struct metrics_registry;

#define JWT_MIN_KEY_SIZE   32
#define JWT_MAX_TOKEN_SIZE 4096
#define JWT_LEEWAY_SECONDS 30
#define JWT_MAX_CLAIM      128

/* username and session_id are required, 1..JWT_MAX_CLAIM bytes. On
 * verification a token without "iat" or "nbf" reads as 0 there. */
struct jwt_claims {
        int64_t user_id;                    /* "sub", as a decimal string, > 0 */
        char username[JWT_MAX_CLAIM + 1];   /* "username" */
        char session_id[JWT_MAX_CLAIM + 1]; /* "sid" */
        int64_t issued_at;                  /* "iat" */
        int64_t not_before;                 /* "nbf" */
        int64_t expires_at;                 /* "exp" */
};

/* Issue a token for claims (iat/nbf/exp are taken from claims and written
 * as integers). key must be at least JWT_MIN_KEY_SIZE bytes. Returns 0 and
 * a malloc()ed token of at most JWT_MAX_TOKEN_SIZE bytes, or -EINVAL for a
 * short key or bad claims (user_id <= 0, empty or unterminated strings,
 * negative times, exp not after iat and nbf), -ENOMEM. */
int jwt_hs256_issue(const uint8_t *key, size_t key_len, const struct jwt_claims *claims,
                    char **ret_token);

/* Verify token at time now (seconds since the epoch). Returns 0 and fills
 * *ret, or:
 *   -EBADMSG  malformed token (not three non-empty base64url segments,
 *             header not a JSON object, "typ" other than "JWT", "crit"
 *             present, signature not 32 bytes), missing or ill-typed
 *             claims (a non-numeric "sub", a non-integer time), longer
 *             than JWT_MAX_TOKEN_SIZE
 *   -EPERM    "alg" other than "HS256", or a token that does not verify
 *             with key (bad signature; a payload libjwt cannot parse)
 *   -ETIME    expired (now >= exp), missing exp, nbf or iat more than
 *             JWT_LEEWAY_SECONDS in the future
 *   -EINVAL   key shorter than JWT_MIN_KEY_SIZE
 *   -ENOMEM */
int jwt_hs256_verify(const uint8_t *key, size_t key_len, const char *token, int64_t now,
                     struct jwt_claims *ret);

/* A cache of tokens that verified, so that a token presented again (the
 * same bytes, under the same key) costs a hash and a compare instead of
 * the base64, JSON and HMAC work of a verification. Only successes are
 * kept, with their claims; a hit checks exp, nbf and iat against now
 * again, so an entry never outlives its token, and an entry made under
 * another key never matches. It holds at most JWT_CACHE_SLOTS tokens of at
 * most JWT_CACHE_MAX_TOKEN bytes; a new token takes the slot of the one
 * that hashes alike. */
#define JWT_CACHE_SLOTS     1024
#define JWT_CACHE_MAX_TOKEN 1024

struct jwt_cache;

/* With registry non-NULL, counts lookups in vigil_cache_requests_total
 * {cache="jwt",result="hit"|"miss"}. Returns 0, or -ENOMEM, or -EEXIST
 * when the registry has that name as another type. */
int jwt_cache_new(struct metrics_registry *registry, struct jwt_cache **ret);
/* Accepts NULL. */
void jwt_cache_free(struct jwt_cache *c);

/* jwt_hs256_verify() through cache c, with the same results. */
int jwt_hs256_verify_cached(struct jwt_cache *c, const uint8_t *key, size_t key_len,
                            const char *token, int64_t now, struct jwt_claims *ret);
