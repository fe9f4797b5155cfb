/* Tests for jwt.c: HS256 tokens that round-trip, and every way a forged,
 * malformed or stale token must be turned away. Hostile tokens are crafted
 * here by hand (base64url of literal JSON) or signed through libjwt with
 * other algorithms and keys, independently of the code under test. */

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jwt.h>

#include "jwt.h"

#include "macro.h"
#include "metrics.h"

#define NOW 1700000000

static const uint8_t key[JWT_MIN_KEY_SIZE] = "0123456789abcdef0123456789abcdef";
static const uint8_t other_key[JWT_MIN_KEY_SIZE] = "fedcba9876543210fedcba9876543210";

static const struct jwt_claims good_claims = {
        .user_id = 42,
        .username = "alice",
        .session_id = "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        .issued_at = NOW,
        .not_before = NOW,
        .expires_at = NOW + 3600,
};

static char *b64url(const char *s)
{
        static const char alphabet[] =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        size_t len = strlen(s), n = 0;
        char *out = malloc(len / 3 * 4 + 5);
        uint32_t acc = 0;
        unsigned bits = 0;

        ck_assert_ptr_nonnull(out);
        for (size_t i = 0; i < len; i++) {
                acc = (acc << 8) | (uint8_t)s[i];
                bits += 8;
                while (bits >= 6) {
                        bits -= 6;
                        out[n++] = alphabet[(acc >> bits) & 63];
                }
        }
        if (bits > 0)
                out[n++] = alphabet[(acc << (6 - bits)) & 63];
        out[n] = '\0';
        return out;
}

/* header.payload.signature from literal JSON and a literal signature. */
static char *craft(const char *header_json, const char *payload_json, const char *signature)
{
        _cleanup_free_ char *h = b64url(header_json);
        _cleanup_free_ char *p = b64url(payload_json);
        char *token;

        ck_assert_int_ge(asprintf(&token, "%s.%s.%s", h, p, signature), 0);
        return token;
}

/* Sign the claims in payload_json with libjwt, algorithm alg. */
static char *sign_with(jwt_alg_t alg, const uint8_t *k, size_t k_len, const char *payload_json)
{
        jwt_t *jwt = NULL;
        char *token;

        ck_assert_int_eq(jwt_new(&jwt), 0);
        ck_assert_int_eq(jwt_add_grants_json(jwt, payload_json), 0);
        ck_assert_int_eq(jwt_set_alg(jwt, alg, k, (int)k_len), 0);
        token = jwt_encode_str(jwt);
        ck_assert_ptr_nonnull(token);
        jwt_free(jwt);
        return token;
}

static char *sign(const char *payload_json)
{
        return sign_with(JWT_ALG_HS256, key, sizeof(key), payload_json);
}

/* Shared by every test, so tokens of earlier tests are in it too. */
static struct jwt_cache *cache;

/* Verify token, and through the cache twice (a miss, then a hit when it
 * verified): the cache must never answer otherwise than a verification. */
static int verify(const char *token, int64_t now)
{
        struct jwt_claims claims, cached;
        int r;

        r = jwt_hs256_verify(key, sizeof(key), token, now, &claims);
        for (int i = 0; i < 2; i++) {
                ck_assert_int_eq(
                        jwt_hs256_verify_cached(cache, key, sizeof(key), token, now, &cached), r);
                if (r == 0)
                        ck_assert_int_eq(memcmp(&cached, &claims, sizeof(claims)), 0);
        }
        return r;
}

/* A payload with every required claim plus extra JSON members. */
#define PAYLOAD(extra) "{\"sub\":\"42\",\"username\":\"alice\",\"sid\":\"s1\"" extra "}"
#define TIMES          ",\"iat\":1700000000,\"nbf\":1700000000,\"exp\":1700003600"

START_TEST(test_issue_then_verify_round_trips_claims)
{
        _cleanup_free_ char *token = NULL;
        struct jwt_claims got;

        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        ck_assert_ptr_nonnull(token);
        ck_assert_int_eq(jwt_hs256_verify(key, sizeof(key), token, NOW + 10, &got), 0);
        ck_assert_int_eq(got.user_id, 42);
        ck_assert_str_eq(got.username, "alice");
        ck_assert_str_eq(got.session_id, good_claims.session_id);
        ck_assert_int_eq(got.issued_at, NOW);
        ck_assert_int_eq(got.not_before, NOW);
        ck_assert_int_eq(got.expires_at, NOW + 3600);
}
END_TEST

START_TEST(test_verify_accepts_independently_signed_token)
{
        _cleanup_free_ char *token = sign(PAYLOAD(TIMES));
        struct jwt_claims got;

        ck_assert_int_eq(jwt_hs256_verify(key, sizeof(key), token, NOW, &got), 0);
        ck_assert_int_eq(got.user_id, 42);
        ck_assert_str_eq(got.session_id, "s1");
}
END_TEST

START_TEST(test_verify_rejects_alg_none_in_any_case)
{
        static const char *const algs[] = {"none", "NONE", "None", "nOnE"};

        for (size_t i = 0; i < ELEMENTSOF(algs); i++) {
                _cleanup_free_ char *header = NULL, *unsigned_token = NULL;
                _cleanup_free_ char *signed_token = NULL, *genuine = NULL;

                ck_assert_int_ge(asprintf(&header, "{\"alg\":\"%s\",\"typ\":\"JWT\"}", algs[i]), 0);
                /* The classic: no signature at all. */
                unsigned_token = craft(header, PAYLOAD(TIMES), "");
                ck_assert_int_eq(verify(unsigned_token, NOW), -EPERM);

                /* And with a genuine HS256 signature glued on. */
                genuine = sign(PAYLOAD(TIMES));
                signed_token = craft(header, PAYLOAD(TIMES), strrchr(genuine, '.') + 1);
                ck_assert_int_eq(verify(signed_token, NOW), -EPERM);
        }
}
END_TEST

START_TEST(test_verify_rejects_libjwt_alg_none_token)
{
        /* libjwt itself writes alg "none" when asked to. */
        jwt_t *jwt = NULL;
        _cleanup_free_ char *token = NULL;

        ck_assert_int_eq(jwt_new(&jwt), 0);
        ck_assert_int_eq(jwt_add_grants_json(jwt, PAYLOAD(TIMES)), 0);
        ck_assert_int_eq(jwt_set_alg(jwt, JWT_ALG_NONE, NULL, 0), 0);
        token = jwt_encode_str(jwt);
        jwt_free(jwt);
        ck_assert_ptr_nonnull(token);
        ck_assert_int_eq(verify(token, NOW), -EPERM);
}
END_TEST

START_TEST(test_verify_rejects_token_signed_with_empty_key)
{
        /* HS256 over this header and payload with a zero-length key,
         * computed with Python's hmac module (libjwt refuses to sign so). */
        static const char token[] =
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
                "eyJleHAiOjIwMDAsImlhdCI6MTAwMCwibmJmIjoxMDAwLCJzaWQiOiJzMSIsInN1YiI6IjQyIiwidXNl"
                "cm5hbWUiOiJhbGljZSJ9."
                "uXkV9NyPzslYHXrZMJS7YkeGdz6GM2e8Bimf08hrPb8";

        ck_assert_int_eq(verify(token, 1500), -EPERM);
}
END_TEST

START_TEST(test_verify_rejects_token_signed_with_other_key)
{
        _cleanup_free_ char *token = NULL;

        ck_assert_int_eq(jwt_hs256_issue(other_key, sizeof(other_key), &good_claims, &token), 0);
        ck_assert_int_eq(verify(token, NOW), -EPERM);
}
END_TEST

START_TEST(test_verify_rejects_other_hmac_algorithms_even_with_our_key)
{
        _cleanup_free_ char *hs384 = sign_with(JWT_ALG_HS384, key, sizeof(key), PAYLOAD(TIMES));
        _cleanup_free_ char *hs512 = sign_with(JWT_ALG_HS512, key, sizeof(key), PAYLOAD(TIMES));

        ck_assert_int_eq(verify(hs384, NOW), -EPERM);
        ck_assert_int_eq(verify(hs512, NOW), -EPERM);
}
END_TEST

START_TEST(test_verify_rejects_rs256_header)
{
        /* Key confusion: an RS256 header, signed as HS256 with our key. */
        _cleanup_free_ char *genuine = sign(PAYLOAD(TIMES));
        _cleanup_free_ char *token = craft("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", PAYLOAD(TIMES),
                                           strrchr(genuine, '.') + 1);

        ck_assert_int_eq(verify(token, NOW), -EPERM);
}
END_TEST

START_TEST(test_verify_rejects_tampered_payload)
{
        _cleanup_free_ char *token = NULL, *forged = NULL;
        _cleanup_free_ char *payload =
                b64url("{\"sub\":\"1\",\"username\":\"root\",\"sid\":\"s1\"" TIMES "}");
        const char *first_dot, *last_dot;

        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        first_dot = strchr(token, '.');
        last_dot = strrchr(token, '.');
        ck_assert_int_ge(
                asprintf(&forged, "%.*s.%s%s", (int)(first_dot - token), token, payload, last_dot),
                0);
        ck_assert_int_eq(verify(forged, NOW), -EPERM);
}
END_TEST

START_TEST(test_verify_rejects_tampered_signature)
{
        _cleanup_free_ char *token = NULL;
        char *sig;

        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        sig = strrchr(token, '.') + 1;
        sig[0] = sig[0] == 'A' ? 'B' : 'A';
        ck_assert_int_eq(verify(token, NOW), -EPERM);
}
END_TEST

START_TEST(test_verify_rejects_truncated_token)
{
        _cleanup_free_ char *token = NULL;
        size_t len;

        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        len = strlen(token);

        token[len - 1] = '\0'; /* one character of signature short */
        ck_assert_int_eq(verify(token, NOW), -EBADMSG);

        *strrchr(token, '.') = '\0'; /* header.payload */
        ck_assert_int_eq(verify(token, NOW), -EBADMSG);

        *strrchr(token, '.') = '\0'; /* header */
        ck_assert_int_eq(verify(token, NOW), -EBADMSG);

        ck_assert_int_eq(verify("", NOW), -EBADMSG);
        ck_assert_int_eq(verify("..", NOW), -EBADMSG);
}
END_TEST

START_TEST(test_verify_rejects_empty_segments)
{
        _cleanup_free_ char *token = NULL, *no_sig = NULL, *no_payload = NULL;
        const char *first_dot, *last_dot;

        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        first_dot = strchr(token, '.');
        last_dot = strrchr(token, '.');

        ck_assert_int_ge(asprintf(&no_sig, "%.*s.", (int)(last_dot - token), token), 0);
        ck_assert_int_eq(verify(no_sig, NOW), -EBADMSG);

        ck_assert_int_ge(
                asprintf(&no_payload, "%.*s.%s", (int)(first_dot - token), token, last_dot), 0);
        ck_assert_int_eq(verify(no_payload, NOW), -EBADMSG);
}
END_TEST

START_TEST(test_verify_rejects_extra_segments)
{
        _cleanup_free_ char *token = NULL, *extra = NULL, *trailing_dot = NULL;

        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        ck_assert_int_ge(asprintf(&extra, "%s.AAAA", token), 0);
        ck_assert_int_eq(verify(extra, NOW), -EBADMSG);
        ck_assert_int_ge(asprintf(&trailing_dot, "%s.", token), 0);
        ck_assert_int_eq(verify(trailing_dot, NOW), -EBADMSG);
}
END_TEST

START_TEST(test_verify_rejects_characters_outside_base64url)
{
        _cleanup_free_ char *token = NULL, *padded = NULL, *spaced = NULL;
        const char *last_dot;

        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        last_dot = strrchr(token, '.');

        /* Decoders that skip junk would see the same bytes; we do not. */
        ck_assert_int_ge(asprintf(&padded, "%.*s=%s", (int)(last_dot - token), token, last_dot), 0);
        ck_assert_int_eq(verify(padded, NOW), -EBADMSG);
        ck_assert_int_ge(asprintf(&spaced, " %s", token), 0);
        ck_assert_int_eq(verify(spaced, NOW), -EBADMSG);
}
END_TEST

START_TEST(test_verify_rejects_bad_header)
{
        _cleanup_free_ char *genuine = sign(PAYLOAD(TIMES));
        const char *sig = strrchr(genuine, '.') + 1;
        static const char *const headers[] = {
                "{\"typ\":\"JWT\"}",                      /* no alg */
                "{\"alg\":5,\"typ\":\"JWT\"}",            /* alg not a string */
                "{\"alg\":\"HS256\",\"typ\":\"JWE\"}",    /* other typ */
                "{\"alg\":\"HS256\",\"typ\":1}",          /* typ not a string */
                "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", /* extensions we ignore */
                "[\"HS256\"]",                            /* not an object */
                "{\"alg\":\"HS256\"}x",                   /* trailing bytes */
                "{\"alg\":\"HS256\"",                     /* truncated JSON */
        };

        for (size_t i = 0; i < ELEMENTSOF(headers); i++) {
                _cleanup_free_ char *token = craft(headers[i], PAYLOAD(TIMES), sig);

                ck_assert_msg(verify(token, NOW) == -EBADMSG, "header %s accepted", headers[i]);
        }
}
END_TEST

START_TEST(test_verify_rejects_alg_with_suffix)
{
        _cleanup_free_ char *genuine = sign(PAYLOAD(TIMES));
        _cleanup_free_ char *token = craft("{\"alg\":\"HS2560\",\"typ\":\"JWT\"}", PAYLOAD(TIMES),
                                           strrchr(genuine, '.') + 1);

        ck_assert_int_eq(verify(token, NOW), -EPERM);
}
END_TEST

START_TEST(test_verify_requires_exp)
{
        _cleanup_free_ char *token = sign(PAYLOAD(",\"iat\":1700000000,\"nbf\":1700000000"));

        ck_assert_int_eq(verify(token, NOW), -ETIME);
}
END_TEST

START_TEST(test_verify_rejects_expired_token_without_leeway)
{
        _cleanup_free_ char *token = NULL;

        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        ck_assert_int_eq(verify(token, good_claims.expires_at - 1), 0);
        ck_assert_int_eq(verify(token, good_claims.expires_at), -ETIME);
        ck_assert_int_eq(verify(token, good_claims.expires_at + 1), -ETIME);
        ck_assert_int_eq(verify(token, good_claims.expires_at + 10 * JWT_LEEWAY_SECONDS), -ETIME);
}
END_TEST

START_TEST(test_verify_allows_nbf_within_leeway_only)
{
        struct jwt_claims c = good_claims;
        _cleanup_free_ char *within = NULL, *beyond = NULL;

        c.not_before = NOW + JWT_LEEWAY_SECONDS;
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &c, &within), 0);
        ck_assert_int_eq(verify(within, NOW), 0);

        c.not_before = NOW + JWT_LEEWAY_SECONDS + 1;
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &c, &beyond), 0);
        ck_assert_int_eq(verify(beyond, NOW), -ETIME);
        ck_assert_int_eq(verify(beyond, NOW + 1), 0);
}
END_TEST

START_TEST(test_verify_rejects_iat_in_the_future)
{
        struct jwt_claims c = good_claims;
        _cleanup_free_ char *within = NULL, *beyond = NULL;

        c.issued_at = NOW + JWT_LEEWAY_SECONDS;
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &c, &within), 0);
        ck_assert_int_eq(verify(within, NOW), 0);

        c.issued_at = NOW + JWT_LEEWAY_SECONDS + 1;
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &c, &beyond), 0);
        ck_assert_int_eq(verify(beyond, NOW), -ETIME);
}
END_TEST

START_TEST(test_verify_rejects_non_integer_times)
{
        static const char *const payloads[] = {
                PAYLOAD(",\"exp\":1700003600.5"),
                PAYLOAD(",\"exp\":1700003600.0"),
                PAYLOAD(",\"exp\":\"1700003600\""),
                PAYLOAD(",\"exp\":true"),
                PAYLOAD(",\"exp\":[1700003600]"),
                PAYLOAD(",\"exp\":1700003600,\"nbf\":\"0\""),
                PAYLOAD(",\"exp\":1700003600,\"iat\":1.5"),
        };

        for (size_t i = 0; i < ELEMENTSOF(payloads); i++) {
                _cleanup_free_ char *token = sign(payloads[i]);

                ck_assert_msg(verify(token, NOW) == -EBADMSG, "payload %s accepted", payloads[i]);
        }
}
END_TEST

START_TEST(test_verify_rejects_non_numeric_sub)
{
        static const char *const subs[] = {
                "\"abc\"",
                "\"12a\"",
                "\" 12\"",
                "\"+12\"",
                "\"012\"",
                "\"-1\"",
                "\"0\"",
                "\"\"",
                "42",
                "null",
                "\"99999999999999999999\"",
        };

        for (size_t i = 0; i < ELEMENTSOF(subs); i++) {
                _cleanup_free_ char *payload = NULL, *token = NULL;

                ck_assert_int_ge(asprintf(&payload,
                                          "{\"sub\":%s,\"username\":\"alice\",\"sid\":\"s1\"" TIMES
                                          "}",
                                          subs[i]),
                                 0);
                token = sign(payload);
                ck_assert_msg(verify(token, NOW) == -EBADMSG, "sub %s accepted", subs[i]);
        }
}
END_TEST

START_TEST(test_verify_rejects_missing_or_bad_string_claims)
{
        char long_name[JWT_MAX_CLAIM + 2];
        _cleanup_free_ char *too_long = NULL;
        static const char *const payloads[] = {
                "{\"sub\":\"42\",\"sid\":\"s1\"" TIMES "}",
                "{\"sub\":\"42\",\"username\":\"alice\"" TIMES "}",
                "{\"sub\":\"42\",\"username\":\"\",\"sid\":\"s1\"" TIMES "}",
                "{\"sub\":\"42\",\"username\":7,\"sid\":\"s1\"" TIMES "}",
                "{\"username\":\"alice\",\"sid\":\"s1\"" TIMES "}",
        };

        for (size_t i = 0; i < ELEMENTSOF(payloads); i++) {
                _cleanup_free_ char *token = sign(payloads[i]);

                ck_assert_msg(verify(token, NOW) == -EBADMSG, "payload %s accepted", payloads[i]);
        }

        memset(long_name, 'a', sizeof(long_name) - 1);
        long_name[sizeof(long_name) - 1] = '\0';
        ck_assert_int_ge(asprintf(&too_long,
                                  "{\"sub\":\"42\",\"username\":\"%s\",\"sid\":\"s1\"" TIMES "}",
                                  long_name),
                         0);
        _cleanup_free_ char *token = sign(too_long);
        ck_assert_int_eq(verify(token, NOW), -EBADMSG);
}
END_TEST

START_TEST(test_verify_rejects_oversize_token_before_decoding)
{
        _cleanup_free_ char *payload = NULL, *token = NULL;
        char filler[JWT_MAX_TOKEN_SIZE];

        memset(filler, 'x', sizeof(filler) - 1);
        filler[sizeof(filler) - 1] = '\0';
        ck_assert_int_ge(asprintf(&payload, PAYLOAD(TIMES ",\"pad\":\"%s\""), filler), 0);
        token = sign(payload);
        ck_assert_int_gt(strlen(token), JWT_MAX_TOKEN_SIZE);
        ck_assert_int_eq(verify(token, NOW), -EBADMSG);
}
END_TEST

START_TEST(test_short_key_is_refused_on_issue_and_verify)
{
        _cleanup_free_ char *token = NULL, *short_token = NULL;
        struct jwt_claims got;

        ck_assert_int_eq(jwt_hs256_issue(key, JWT_MIN_KEY_SIZE - 1, &good_claims, &short_token),
                         -EINVAL);
        ck_assert_ptr_null(short_token);
        ck_assert_int_eq(jwt_hs256_issue(key, 0, &good_claims, &short_token), -EINVAL);

        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        ck_assert_int_eq(jwt_hs256_verify(key, JWT_MIN_KEY_SIZE - 1, token, NOW, &got), -EINVAL);
        ck_assert_int_eq(jwt_hs256_verify(key, 0, token, NOW, &got), -EINVAL);
}
END_TEST

START_TEST(test_issue_rejects_bad_claims)
{
        struct jwt_claims c;
        char *token = NULL;

        c = good_claims;
        c.user_id = 0;
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &c, &token), -EINVAL);

        c = good_claims;
        c.username[0] = '\0';
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &c, &token), -EINVAL);

        c = good_claims;
        memset(c.session_id, 's', sizeof(c.session_id)); /* unterminated */
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &c, &token), -EINVAL);

        c = good_claims;
        c.expires_at = c.issued_at;
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &c, &token), -EINVAL);

        c = good_claims;
        c.not_before = c.expires_at;
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &c, &token), -EINVAL);

        ck_assert_ptr_null(token);
}
END_TEST

START_TEST(test_verify_leaves_output_untouched_on_failure)
{
        struct jwt_claims got, before;

        memset(&got, 0x5a, sizeof(got));
        before = got;
        ck_assert_int_eq(jwt_hs256_verify(key, sizeof(key), "x.y.z", NOW, &got), -EBADMSG);
        ck_assert_int_eq(memcmp(&got, &before, sizeof(got)), 0);
}
END_TEST

START_TEST(test_cache_serves_a_verified_token_and_counts)
{
        _cleanup_free_ char *token = NULL, *page = NULL;
        struct metrics_registry *registry;
        struct jwt_cache *c;
        struct jwt_claims got;

        ck_assert_int_eq(metrics_registry_new(&registry), 0);
        ck_assert_int_eq(jwt_cache_new(registry, &c), 0);
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        for (int i = 0; i < 3; i++) {
                ck_assert_int_eq(jwt_hs256_verify_cached(c, key, sizeof(key), token, NOW, &got), 0);
                ck_assert_str_eq(got.username, "alice");
        }
        /* Failures are never kept: each is a miss. */
        ck_assert_int_eq(jwt_hs256_verify_cached(c, key, sizeof(key), "a.b.c", NOW, &got),
                         -EBADMSG);
        ck_assert_int_eq(jwt_hs256_verify_cached(c, key, sizeof(key), "a.b.c", NOW, &got),
                         -EBADMSG);
        ck_assert_int_eq(metrics_render(registry, METRICS_FORMAT_PROMETHEUS, &page, NULL), 0);
        ck_assert_ptr_nonnull(
                strstr(page, "vigil_cache_requests_total{cache=\"jwt\",result=\"hit\"} 2\n"));
        ck_assert_ptr_nonnull(
                strstr(page, "vigil_cache_requests_total{cache=\"jwt\",result=\"miss\"} 3\n"));
        jwt_cache_free(c);
        metrics_registry_free(registry);
}
END_TEST

START_TEST(test_cached_token_does_not_verify_under_another_key)
{
        _cleanup_free_ char *token = NULL;
        struct jwt_cache *c;
        struct jwt_claims got;

        ck_assert_int_eq(jwt_cache_new(NULL, &c), 0);
        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &good_claims, &token), 0);
        ck_assert_int_eq(jwt_hs256_verify_cached(c, key, sizeof(key), token, NOW, &got), 0);
        ck_assert_int_eq(jwt_hs256_verify_cached(c, other_key, sizeof(other_key), token, NOW, &got),
                         -EPERM);
        jwt_cache_free(c);
}
END_TEST

START_TEST(test_cache_keeps_the_newest_of_tokens_sharing_a_slot)
{
        struct jwt_cache *c;
        struct jwt_claims claims = good_claims, got;

        /* More tokens than slots: every one still verifies, whether it is
         * found or its slot went to another. */
        ck_assert_int_eq(jwt_cache_new(NULL, &c), 0);
        for (int round = 0; round < 2; round++)
                for (int i = 0; i < 2 * JWT_CACHE_SLOTS; i++) {
                        _cleanup_free_ char *token = NULL;

                        claims.user_id = i + 1;
                        ck_assert_int_eq(jwt_hs256_issue(key, sizeof(key), &claims, &token), 0);
                        ck_assert_int_eq(
                                jwt_hs256_verify_cached(c, key, sizeof(key), token, NOW, &got), 0);
                        ck_assert_int_eq(got.user_id, i + 1);
                }
        jwt_cache_free(c);
}
END_TEST

static Suite *jwt_suite(void)
{
        Suite *s = suite_create("jwt");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_issue_then_verify_round_trips_claims);
        tcase_add_test(tc, test_verify_accepts_independently_signed_token);
        tcase_add_test(tc, test_verify_rejects_alg_none_in_any_case);
        tcase_add_test(tc, test_verify_rejects_libjwt_alg_none_token);
        tcase_add_test(tc, test_verify_rejects_token_signed_with_empty_key);
        tcase_add_test(tc, test_verify_rejects_token_signed_with_other_key);
        tcase_add_test(tc, test_verify_rejects_other_hmac_algorithms_even_with_our_key);
        tcase_add_test(tc, test_verify_rejects_rs256_header);
        tcase_add_test(tc, test_verify_rejects_tampered_payload);
        tcase_add_test(tc, test_verify_rejects_tampered_signature);
        tcase_add_test(tc, test_verify_rejects_truncated_token);
        tcase_add_test(tc, test_verify_rejects_empty_segments);
        tcase_add_test(tc, test_verify_rejects_extra_segments);
        tcase_add_test(tc, test_verify_rejects_characters_outside_base64url);
        tcase_add_test(tc, test_verify_rejects_bad_header);
        tcase_add_test(tc, test_verify_rejects_alg_with_suffix);
        tcase_add_test(tc, test_verify_requires_exp);
        tcase_add_test(tc, test_verify_rejects_expired_token_without_leeway);
        tcase_add_test(tc, test_verify_allows_nbf_within_leeway_only);
        tcase_add_test(tc, test_verify_rejects_iat_in_the_future);
        tcase_add_test(tc, test_verify_rejects_non_integer_times);
        tcase_add_test(tc, test_verify_rejects_non_numeric_sub);
        tcase_add_test(tc, test_verify_rejects_missing_or_bad_string_claims);
        tcase_add_test(tc, test_verify_rejects_oversize_token_before_decoding);
        tcase_add_test(tc, test_short_key_is_refused_on_issue_and_verify);
        tcase_add_test(tc, test_issue_rejects_bad_claims);
        tcase_add_test(tc, test_verify_leaves_output_untouched_on_failure);
        tcase_add_test(tc, test_cache_serves_a_verified_token_and_counts);
        tcase_add_test(tc, test_cached_token_does_not_verify_under_another_key);
        tcase_add_test(tc, test_cache_keeps_the_newest_of_tokens_sharing_a_slot);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr;
        int failed;

        if (jwt_cache_new(NULL, &cache) < 0)
                return EXIT_FAILURE;
        sr = srunner_create(jwt_suite());
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        jwt_cache_free(cache);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
