/* JSON Web Tokens, HS256 only, on libjwt 1.10.
 *
 * libjwt 1.10 is permissive in ways that matter here: decoding without a
 * key (or with an empty one) accepts any token and reports alg "none", and
 * its base64 decoder may skip characters outside the alphabet. So before
 * handing a token to libjwt we check its shape ourselves (size, exactly
 * three non-empty base64url segments, a 32-byte signature) and read the
 * header with json-c (alg exactly "HS256", typ "JWT" if present, no
 * "crit"); after libjwt has verified the signature with the key we check
 * again that it saw HS256. Claims are read through their JSON encoding so
 * that types are strict: 5.0 is not an integer and 5 is not a string. */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <jwt.h>

#include "jwt.h"

#include "macro.h"
#include "metrics.h"

/* base64url of a 32-byte HMAC-SHA256, without padding. */
#define HS256_SIGNATURE_CHARS 43
#define HEADER_MAX_DEPTH      4

static void jwt_freep(jwt_t **p)
{
        jwt_free(*p);
}

static void json_putp(struct json_object **p)
{
        if (*p)
                json_object_put(*p);
}

static void tokener_freep(struct json_tokener **p)
{
        if (*p)
                json_tokener_free(*p);
}

/* libjwt returns positive errno values (or 0). */
static int from_libjwt(int r)
{
        if (r == 0)
                return 0;
        return r > 0 ? -r : -EIO;
}

static int base64url_value(char c)
{
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '-')
                return 62;
        if (c == '_')
                return 63;
        return -1;
}

static bool is_base64url(const char *s, size_t len)
{
        for (size_t i = 0; i < len; i++)
                if (base64url_value(s[i]) < 0)
                        return false;
        return true;
}

/* Decode len base64url characters (no padding) into out, which holds at
 * least len * 3 / 4 bytes. Returns the decoded length, or -EBADMSG. */
static ssize_t base64url_decode(const char *s, size_t len, uint8_t *out)
{
        uint32_t acc = 0;
        unsigned bits = 0;
        size_t n = 0;

        if (len % 4 == 1)
                return -EBADMSG;

        for (size_t i = 0; i < len; i++) {
                int v = base64url_value(s[i]);

                if (v < 0)
                        return -EBADMSG;
                acc = (acc << 6) | (uint32_t)v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[n++] = (uint8_t)(acc >> bits);
                        acc &= (1u << bits) - 1;
                }
        }
        return (ssize_t)n;
}

/* Check the header segment: a JSON object whose "alg" is exactly "HS256",
 * whose "typ", if present, is "JWT", and without "crit" (we understand no
 * extensions, so RFC 7515 says reject). */
static int check_header(const char *segment, size_t len)
{
        _cleanup_(tokener_freep) struct json_tokener *tok = NULL;
        _cleanup_(json_putp) struct json_object *header = NULL;
        struct json_object *alg, *typ;
        uint8_t buf[JWT_MAX_TOKEN_SIZE];
        ssize_t n;

        assert(len <= JWT_MAX_TOKEN_SIZE);

        n = base64url_decode(segment, len, buf);
        if (n <= 0)
                return -EBADMSG;

        tok = json_tokener_new_ex(HEADER_MAX_DEPTH);
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        header = json_tokener_parse_ex(tok, (const char *)buf, (int)n);
        if (!header || json_tokener_get_error(tok) != json_tokener_success ||
            json_tokener_get_parse_end(tok) != (size_t)n)
                return -EBADMSG;
        if (!json_object_is_type(header, json_type_object))
                return -EBADMSG;

        if (!json_object_object_get_ex(header, "alg", &alg) ||
            !json_object_is_type(alg, json_type_string))
                return -EBADMSG;
        if (json_object_get_string_len(alg) != 5 ||
            memcmp(json_object_get_string(alg), "HS256", 5) != 0)
                return -EPERM;

        if (json_object_object_get_ex(header, "typ", &typ) &&
            (!json_object_is_type(typ, json_type_string) || json_object_get_string_len(typ) != 3 ||
             memcmp(json_object_get_string(typ), "JWT", 3) != 0))
                return -EBADMSG;

        if (json_object_object_get_ex(header, "crit", NULL))
                return -EBADMSG;

        return 0;
}

/* Check the token's shape before libjwt sees it: at most
 * JWT_MAX_TOKEN_SIZE bytes, header.payload.signature with every segment
 * non-empty base64url, the header acceptable, and a signature as long as
 * an HMAC-SHA256. The header is looked at first so that "alg":"none" (with
 * its empty signature) is reported as a wrong algorithm. */
static int check_shape(const char *token)
{
        const char *payload, *signature;
        size_t len, header_len, payload_len, signature_len;
        int r;

        len = strnlen(token, JWT_MAX_TOKEN_SIZE + 1);
        if (len > JWT_MAX_TOKEN_SIZE)
                return -EBADMSG;

        payload = memchr(token, '.', len);
        if (!payload)
                return -EBADMSG;
        header_len = (size_t)(payload - token);
        payload++;
        if (header_len == 0 || !is_base64url(token, header_len))
                return -EBADMSG;

        r = check_header(token, header_len);
        if (r < 0)
                return r;

        signature = memchr(payload, '.', len - (size_t)(payload - token));
        if (!signature)
                return -EBADMSG;
        payload_len = (size_t)(signature - payload);
        signature++;
        signature_len = len - (size_t)(signature - token);

        if (payload_len == 0 || !is_base64url(payload, payload_len))
                return -EBADMSG;
        /* A fourth segment shows up here as a '.' outside the alphabet. */
        if (signature_len != HS256_SIGNATURE_CHARS || !is_base64url(signature, signature_len))
                return -EBADMSG;

        return 0;
}

/* Parse a JSON integer's text (as produced by libjwt's encoder) strictly:
 * an optional '-' then digits, nothing else, within int64_t. */
static int parse_json_int64(const char *s, int64_t *ret)
{
        const char *p = s;
        char *end;
        long long v;

        if (*p == '-')
                p++;
        if (*p < '0' || *p > '9')
                return -EBADMSG;
        for (; *p; p++)
                if (*p < '0' || *p > '9')
                        return -EBADMSG;

        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno != 0 || *end != '\0')
                return -EBADMSG;
        *ret = (int64_t)v;
        return 0;
}

/* Read integer claim name. Returns 0 and sets *ret, -ENOENT when absent,
 * -EBADMSG when not an integer, -ENOMEM. */
static int get_int_claim(jwt_t *jwt, const char *name, int64_t *ret)
{
        _cleanup_free_ char *json = NULL;

        errno = 0;
        json = jwt_get_grants_json(jwt, name);
        if (!json)
                return errno == ENOMEM ? -ENOMEM : -ENOENT;
        return parse_json_int64(json, ret);
}

/* Copy string claim name (1..JWT_MAX_CLAIM bytes) into buf. Returns 0,
 * -EBADMSG when absent, not a string, empty or too long. */
static int get_string_claim(jwt_t *jwt, const char *name, char buf[static JWT_MAX_CLAIM + 1])
{
        const char *s;
        size_t len;

        s = jwt_get_grant(jwt, name);
        if (!s)
                return -EBADMSG;
        len = strnlen(s, JWT_MAX_CLAIM + 1);
        if (len == 0 || len > JWT_MAX_CLAIM)
                return -EBADMSG;
        memcpy(buf, s, len + 1);
        return 0;
}

/* A user id: decimal digits without sign or leading zero, > 0. */
static int parse_user_id(const char *s, int64_t *ret)
{
        int64_t v;
        int r;

        if (*s < '1' || *s > '9')
                return -EBADMSG;
        r = parse_json_int64(s, &v);
        if (r < 0)
                return r;
        *ret = v;
        return 0;
}

/* True when t is more than JWT_LEEWAY_SECONDS after now. */
static bool in_future(int64_t t, int64_t now)
{
        return t > now && (uint64_t)t - (uint64_t)now > JWT_LEEWAY_SECONDS;
}

/* Strict on expiry; leeway only for clocks running behind ours. */
static int check_times(const struct jwt_claims *c, int64_t now)
{
        if (now >= c->expires_at)
                return -ETIME;
        if (in_future(c->not_before, now) || in_future(c->issued_at, now))
                return -ETIME;
        return 0;
}

static bool claim_string_ok(const char *s)
{
        size_t len = strnlen(s, JWT_MAX_CLAIM + 1);

        return len > 0 && len <= JWT_MAX_CLAIM;
}

int jwt_hs256_issue(const uint8_t *key, size_t key_len, const struct jwt_claims *claims,
                    char **ret_token)
{
        _cleanup_(jwt_freep) jwt_t *jwt = NULL;
        char sub[sizeof("9223372036854775807")];
        char *token;
        int r;

        assert(key);
        assert(claims);
        assert(ret_token);

        if (key_len < JWT_MIN_KEY_SIZE || key_len > INT_MAX)
                return -EINVAL;
        if (claims->user_id <= 0 || !claim_string_ok(claims->username) ||
            !claim_string_ok(claims->session_id))
                return -EINVAL;
        if (claims->issued_at < 0 || claims->not_before < 0 ||
            claims->expires_at <= claims->issued_at || claims->expires_at <= claims->not_before)
                return -EINVAL;
        /* libjwt takes long; on an ILP32 system that ends in 2038. */
        if (claims->expires_at > LONG_MAX)
                return -EINVAL;

        r = from_libjwt(jwt_new(&jwt));
        if (r < 0)
                return r;

        snprintf(sub, sizeof(sub), "%" PRId64, claims->user_id);
        r = from_libjwt(jwt_add_grant(jwt, "sub", sub));
        if (r >= 0)
                r = from_libjwt(jwt_add_grant(jwt, "username", claims->username));
        if (r >= 0)
                r = from_libjwt(jwt_add_grant(jwt, "sid", claims->session_id));
        if (r >= 0)
                r = from_libjwt(jwt_add_grant_int(jwt, "iat", (long)claims->issued_at));
        if (r >= 0)
                r = from_libjwt(jwt_add_grant_int(jwt, "nbf", (long)claims->not_before));
        if (r >= 0)
                r = from_libjwt(jwt_add_grant_int(jwt, "exp", (long)claims->expires_at));
        if (r >= 0)
                r = from_libjwt(jwt_set_alg(jwt, JWT_ALG_HS256, key, (int)key_len));
        if (r < 0)
                return r;

        /* libjwt 1.10 allocates with malloc(). */
        errno = 0;
        token = jwt_encode_str(jwt);
        if (!token)
                return errno == ENOMEM ? -ENOMEM : -EIO;

        if (strlen(token) > JWT_MAX_TOKEN_SIZE) {
                free(token);
                return -EINVAL;
        }

        *ret_token = token;
        return 0;
}

int jwt_hs256_verify(const uint8_t *key, size_t key_len, const char *token, int64_t now,
                     struct jwt_claims *ret)
{
        _cleanup_(jwt_freep) jwt_t *jwt = NULL;
        struct jwt_claims claims = {};
        const char *s;
        int r;

        assert(key);
        assert(token);
        assert(ret);

        if (key_len < JWT_MIN_KEY_SIZE || key_len > INT_MAX)
                return -EINVAL;

        r = check_shape(token);
        if (r < 0)
                return r;

        /* Always with the key: without one libjwt checks no signature. */
        r = jwt_decode(&jwt, token, key, (int)key_len);
        if (r == ENOMEM)
                return -ENOMEM;
        if (r != 0 || !jwt)
                return -EPERM;

        /* Belt and braces: libjwt must have verified HS256 itself. */
        if (jwt_get_alg(jwt) != JWT_ALG_HS256)
                return -EPERM;
        s = jwt_get_header(jwt, "alg");
        if (!s || strcmp(s, "HS256") != 0)
                return -EPERM;

        s = jwt_get_grant(jwt, "sub");
        if (!s)
                return -EBADMSG;
        r = parse_user_id(s, &claims.user_id);
        if (r < 0)
                return r;
        r = get_string_claim(jwt, "username", claims.username);
        if (r < 0)
                return r;
        r = get_string_claim(jwt, "sid", claims.session_id);
        if (r < 0)
                return r;

        r = get_int_claim(jwt, "exp", &claims.expires_at);
        if (r == -ENOENT)
                return -ETIME;
        if (r < 0)
                return r;
        r = get_int_claim(jwt, "nbf", &claims.not_before);
        if (r < 0 && r != -ENOENT)
                return r;
        r = get_int_claim(jwt, "iat", &claims.issued_at);
        if (r < 0 && r != -ENOENT)
                return r;

        r = check_times(&claims, now);
        if (r < 0)
                return r;
        *ret = claims;
        return 0;
}

/* ---- the cache of verified tokens ---- */

/* Lookups lock one of these stripes, picked by slot, so that threads
 * verifying different tokens rarely wait for each other. */
#define CACHE_STRIPES 16

struct cache_slot {
        uint64_t hash; /* of the key and the token */
        char *token;   /* NULL: empty */
        size_t token_len;
        struct jwt_claims claims;
};

struct jwt_cache {
        pthread_mutex_t stripes[CACHE_STRIPES];
        struct cache_slot *slots; /* JWT_CACHE_SLOTS */
        struct metric *hits, *misses;
};

int jwt_cache_new(struct metrics_registry *registry, struct jwt_cache **ret)
{
        struct jwt_cache *c;

        assert(ret);

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->slots = calloc(JWT_CACHE_SLOTS, sizeof(*c->slots));
        if (!c->slots) {
                free(c);
                return -ENOMEM;
        }
        for (size_t i = 0; i < CACHE_STRIPES; i++)
                pthread_mutex_init(&c->stripes[i], NULL);
        if (registry) {
                struct metric_family *f = metrics_counter_get(
                        registry, "vigil_cache_requests_total", "Cache lookups by cache and result",
                        (const char *const[]){"cache", "result", NULL});

                if (!f) {
                        jwt_cache_free(c);
                        return -EEXIST;
                }
                c->hits = metrics_child2(f, "jwt", "hit");
                c->misses = metrics_child2(f, "jwt", "miss");
        }
        *ret = c;
        return 0;
}

void jwt_cache_free(struct jwt_cache *c)
{
        if (!c)
                return;
        for (size_t i = 0; i < JWT_CACHE_SLOTS; i++)
                erase_and_free(c->slots[i].token); /* bearer tokens are credentials */
        for (size_t i = 0; i < CACHE_STRIPES; i++)
                pthread_mutex_destroy(&c->stripes[i]);
        free(c->slots);
        free(c);
}

int jwt_hs256_verify_cached(struct jwt_cache *c, const uint8_t *key, size_t key_len,
                            const char *token, int64_t now, struct jwt_claims *ret)
{
        size_t len = strnlen(token, JWT_CACHE_MAX_TOKEN + 1), i;
        struct jwt_claims claims;
        struct cache_slot *slot;
        pthread_mutex_t *lock;
        char *copy = NULL;
        bool hit = false;
        uint64_t hash;
        int r;

        if (!c || len > JWT_CACHE_MAX_TOKEN || key_len < JWT_MIN_KEY_SIZE)
                return jwt_hs256_verify(key, key_len, token, now, ret);

        /* Spreads tokens over the slots and tells keys apart; a hit still
         * compares the whole token. */
        hash = fnv1a64(fnv1a64(FNV1A64_INIT, key, key_len), token, len);
        i = hash % JWT_CACHE_SLOTS;
        slot = &c->slots[i];
        lock = &c->stripes[i % CACHE_STRIPES];

        pthread_mutex_lock(lock);
        if (slot->token && slot->hash == hash && slot->token_len == len &&
            equal_constant_time(slot->token, token, len)) {
                claims = slot->claims;
                hit = true;
        }
        pthread_mutex_unlock(lock);
        metrics_counter_inc(hit ? c->hits : c->misses);
        if (hit) {
                r = check_times(&claims, now);
                if (r >= 0)
                        *ret = claims;
                return r;
        }

        r = jwt_hs256_verify(key, key_len, token, now, &claims);
        if (r < 0)
                return r;
        /* A token that verified is kept; without memory it is just not. */
        copy = strndup(token, len);
        if (copy) {
                pthread_mutex_lock(lock);
                erase_and_free(slot->token);
                *slot = (struct cache_slot){
                        .hash = hash, .token = copy, .token_len = len, .claims = claims};
                pthread_mutex_unlock(lock);
        }
        *ret = claims;
        return 0;
}
