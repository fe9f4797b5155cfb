/* libFuzzer target: the bearer-token path of every authenticated request,
 * http_bearer_token() on the Authorization header and then
 * jwt_hs256_verify() (and its cache) on the token, with oracles.
 *
 * The first input byte picks the mode:
 *
 *   even: the rest is an Authorization header value from a client that
 *         does not know the key. No token may verify; each refusal is one
 *         of the documented errors and leaves the claims untouched.
 *   odd:  the rest describes a payload: for each claim (sub, username,
 *         sid, exp, nbf, iat) a type byte (absent, string, integer,
 *         double, boolean, null, object) and its value. It is signed with
 *         our key by libjwt itself (as a correct issuer would) and
 *         verified: accepted exactly when a reference reading of the
 *         claims, written here from jwt.h's contract, accepts, with the
 *         same claims; else with an error the reference names. Under
 *         another key it never verifies. Then one byte of the signed token
 *         is replaced (the position and the new byte come from the input):
 *         the altered token must not verify.
 *
 * In both modes the cache (a miss, then a hit) answers as the plain
 * verification does. */
#include <errno.h>
#include <jwt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "http-route.h"
#include "jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW INT64_C(1800000000)

static const uint8_t key[JWT_MIN_KEY_SIZE] = "0123456789abcdef0123456789abcdef";
static const uint8_t other_key[JWT_MIN_KEY_SIZE] = "0123456789abcdef0123456789abcdeF";
static struct jwt_cache *cache;

struct reader {
        const uint8_t *p;
        size_t left;
};

static uint8_t read_byte(struct reader *r)
{
        if (r->left == 0)
                return 0;
        r->left--;
        return *r->p++;
}

static int64_t read_int64(struct reader *r)
{
        uint64_t v = 0;

        for (int i = 0; i < 8; i++)
                v = v << 8 | read_byte(r);
        return (int64_t)v;
}

/* A length byte, then that many bytes (fewer at the end of the input). */
static size_t read_bytes(struct reader *r, char *buf, size_t max)
{
        size_t n = read_byte(r);

        if (n > max)
                n = max;
        if (n > r->left)
                n = r->left;
        memcpy(buf, r->p, n);
        r->p += n;
        r->left -= n;
        return n;
}

enum claim_type {
        CLAIM_ABSENT,
        CLAIM_STRING,
        CLAIM_INT,
        CLAIM_DOUBLE,
        CLAIM_BOOL,
        CLAIM_NULL,
        CLAIM_OBJECT,
        CLAIM_TYPES
};

struct claim {
        enum claim_type type;
        char text[256];
        size_t len;
        int64_t integer;
};

static const char *const claim_names[] = {"sub", "username", "sid", "exp", "nbf", "iat"};

/* Possible outcomes of the reference, as a set. */
#define OUT_OK     (1u << 0)
#define OUT_BADMSG (1u << 1)
#define OUT_TIME   (1u << 2)

static unsigned outcome_bit(int r)
{
        switch (r) {
        case 0:
                return OUT_OK;
        case -EBADMSG:
                return OUT_BADMSG;
        case -ETIME:
                return OUT_TIME;
        default:
                return 0;
        }
}

static bool reference_user_id(const struct claim *c, int64_t *ret)
{
        int64_t v = 0;

        if (c->type != CLAIM_STRING || c->len == 0 || c->text[0] < '1' || c->text[0] > '9')
                return false;
        for (size_t i = 0; i < c->len; i++) {
                int d = c->text[i] - '0';

                if (d < 0 || d > 9 || v > (INT64_MAX - d) / 10)
                        return false;
                v = v * 10 + d;
        }
        *ret = v;
        return true;
}

static bool reference_string(const struct claim *c, char buf[static JWT_MAX_CLAIM + 1])
{
        if (c->type != CLAIM_STRING || c->len == 0 || c->len > JWT_MAX_CLAIM)
                return false;
        memcpy(buf, c->text, c->len);
        buf[c->len] = '\0';
        return true;
}

static bool more_than_leeway_ahead(int64_t t)
{
        return (__int128)t > (__int128)NOW + JWT_LEEWAY_SECONDS;
}

/* The set of acceptable outcomes for these claims (OUT_OK alone when the
 * token must verify, with *ret the claims). */
static unsigned reference_verify(const struct claim c[6], struct jwt_claims *ret)
{
        struct jwt_claims claims = {0};
        unsigned out = 0;
        bool times_known = true;

        if (!reference_user_id(&c[0], &claims.user_id))
                out |= OUT_BADMSG;
        if (!reference_string(&c[1], claims.username))
                out |= OUT_BADMSG;
        if (!reference_string(&c[2], claims.session_id))
                out |= OUT_BADMSG;
        if (c[3].type == CLAIM_ABSENT) {
                out |= OUT_TIME;
                times_known = false;
        } else if (c[3].type != CLAIM_INT) {
                out |= OUT_BADMSG;
                times_known = false;
        } else {
                claims.expires_at = c[3].integer;
        }
        for (int i = 4; i < 6; i++) {
                int64_t *t = i == 4 ? &claims.not_before : &claims.issued_at;

                if (c[i].type == CLAIM_INT) {
                        *t = c[i].integer;
                } else if (c[i].type != CLAIM_ABSENT) {
                        out |= OUT_BADMSG;
                        times_known = false;
                }
        }
        if (times_known && (NOW >= claims.expires_at || more_than_leeway_ahead(claims.not_before) ||
                            more_than_leeway_ahead(claims.issued_at)))
                out |= OUT_TIME;
        if (out == 0) {
                *ret = claims;
                return OUT_OK;
        }
        return out;
}

static struct json_object *claim_json(const struct claim *c)
{
        switch (c->type) {
        case CLAIM_STRING:
                return json_object_new_string_len(c->text, (int)c->len);
        case CLAIM_INT:
                return json_object_new_int64(c->integer);
        case CLAIM_DOUBLE:
                return json_object_new_double((double)c->integer);
        case CLAIM_BOOL:
                return json_object_new_boolean(c->integer & 1);
        case CLAIM_OBJECT:
                return json_object_new_object();
        default:
                return NULL; /* CLAIM_NULL: JSON null */
        }
}

/* Verify token plainly and through the cache twice; all three must agree
 * and leave *ret alone on failure. Returns the result. */
static int verify_everywhere(const char *token, struct jwt_claims *ret)
{
        struct jwt_claims claims, cached;
        int r;

        memset(&claims, 0xa5, sizeof(claims));
        memset(ret, 0xa5, sizeof(*ret));
        r = jwt_hs256_verify(key, sizeof(key), token, NOW, &claims);
        if (r < 0 && memcmp(&claims, ret, sizeof(claims)) != 0)
                abort(); /* written on failure */
        for (int i = 0; i < 2; i++) {
                memset(&cached, 0xa5, sizeof(cached));
                if (jwt_hs256_verify_cached(cache, key, sizeof(key), token, NOW, &cached) != r)
                        abort();
                if (memcmp(&cached, &claims, sizeof(claims)) != 0)
                        abort();
        }
        *ret = claims;
        return r;
}

static void fuzz_header(const uint8_t *data, size_t size)
{
        struct jwt_claims claims;
        const char *token;
        char *value = strndup((const char *)data, size);
        int r;

        if (!value)
                abort();
        token = http_bearer_token(value);
        if (token) {
                r = verify_everywhere(token, &claims);
                /* Nobody without the key gets in. */
                if (r != -EBADMSG && r != -EPERM && r != -ENOMEM)
                        abort();
        }
        free(value);
}

static void fuzz_signed(const uint8_t *data, size_t size)
{
        struct reader in = {data, size};
        struct claim c[6] = {0};
        struct jwt_claims expected, got;
        struct json_object *payload = json_object_new_object();
        jwt_t *jwt = NULL;
        char *token, *altered;
        size_t len, position;
        unsigned allowed;
        uint8_t replacement;
        int r;

        if (!payload)
                abort();
        for (int i = 0; i < 6; i++) {
                c[i].type = (enum claim_type)(read_byte(&in) % CLAIM_TYPES);
                if (c[i].type == CLAIM_STRING)
                        c[i].len = read_bytes(&in, c[i].text, sizeof(c[i].text));
                else if (c[i].type != CLAIM_ABSENT && c[i].type != CLAIM_NULL)
                        c[i].integer = read_int64(&in);
                /* libjwt reads C strings: an issuer never writes a NUL. */
                if (c[i].type == CLAIM_STRING && memchr(c[i].text, '\0', c[i].len)) {
                        json_object_put(payload);
                        return;
                }
                if (c[i].type != CLAIM_ABSENT)
                        json_object_object_add(payload, claim_names[i], claim_json(&c[i]));
        }
        position = (size_t)read_byte(&in) << 8 | read_byte(&in);
        replacement = read_byte(&in);

        /* Signed by libjwt with our key: what authd's issuer would do. A
         * payload libjwt will not take (not UTF-8, say) ends the case. */
        if (jwt_new(&jwt) != 0)
                abort();
        if (jwt_add_grants_json(
                    jwt, json_object_to_json_string_ext(payload, JSON_C_TO_STRING_PLAIN)) != 0 ||
            jwt_set_alg(jwt, JWT_ALG_HS256, key, sizeof(key)) != 0) {
                jwt_free(jwt);
                json_object_put(payload);
                return;
        }
        token = jwt_encode_str(jwt);
        jwt_free(jwt);
        json_object_put(payload);
        if (!token)
                return;

        allowed = reference_verify(c, &expected);
        r = verify_everywhere(token, &got);
        if (strlen(token) > JWT_MAX_TOKEN_SIZE) {
                if (r != -EBADMSG)
                        abort();
        } else if (r != -ENOMEM && !(outcome_bit(r) & allowed)) {
                abort(); /* accepted what must not be, or the wrong error */
        }
        if (r == 0 && memcmp(&got, &expected, sizeof(got)) != 0)
                abort(); /* wrong claims */
        if (jwt_hs256_verify(other_key, sizeof(other_key), token, NOW, &got) == 0)
                abort(); /* another key's token */

        /* One byte changed: never valid. */
        len = strlen(token);
        altered = strdup(token);
        if (!altered)
                abort();
        position %= len;
        if (replacement == 0 || (uint8_t)altered[position] == replacement)
                replacement = altered[position] == 'A' ? 'B' : 'A';
        altered[position] = (char)replacement;
        if (verify_everywhere(altered, &got) == 0)
                abort();
        free(altered);
        free(token);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (!cache && jwt_cache_new(NULL, &cache) < 0)
                abort();
        if (size == 0)
                return 0;
        if (data[0] & 1)
                fuzz_signed(data + 1, size - 1);
        else
                fuzz_header(data + 1, size - 1);
        return 0;
}
