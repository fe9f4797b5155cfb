/* Unit tests for json-util: what an untrusted body may and may not be. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json-util.h"

/* Parse a literal (sizeof - 1 so embedded NULs count) with the default
 * depth; return the errno and the code through *code. */
#define PARSE(lit, objp, codep)                                                                    \
        json_parse_object((lit), sizeof(lit) - 1, JSON_DEFAULT_MAX_DEPTH, (objp), (codep))

static void assert_rejected(const char *body, size_t len, unsigned depth, int expected_r,
                            const char *expected_code)
{
        struct json_object *obj = NULL;
        const char *code = NULL;
        int r;

        r = json_parse_object(body, len, depth, &obj, &code);
        ck_assert_msg(r == expected_r, "body %.*s: got %d, expected %d", (int)len, body, r,
                      expected_r);
        ck_assert_ptr_null(obj);
        ck_assert_str_eq(code, expected_code);
}

#define REJECT(lit, r, code)                                                                       \
        assert_rejected((lit), sizeof(lit) - 1, JSON_DEFAULT_MAX_DEPTH, r, code)

static void assert_accepted(const char *body, size_t len)
{
        _cleanup_(json_object_putp) struct json_object *obj = NULL;
        const char *code = NULL;
        int r;

        r = json_parse_object(body, len, JSON_DEFAULT_MAX_DEPTH, &obj, &code);
        ck_assert_msg(r == 0, "body %.*s: got %d (%s)", (int)len, body, r, code ? code : "");
        ck_assert_ptr_nonnull(obj);
}

#define ACCEPT(lit) assert_accepted((lit), sizeof(lit) - 1)

START_TEST(test_parse_accepts_objects_with_surrounding_whitespace)
{
        ACCEPT("{}");
        ACCEPT(" \t\r\n{\"a\":1}\n");
        ACCEPT("{\"a\":[1,2,{\"b\":null}],\"c\":\"\\u00e9\\n\",\"d\":-1.5e3,\"e\":true}");
        ACCEPT("{\"name\":\"Gr\xc3\xbc\xc3\x9f \xf0\x9f\x98\x80\"}");
}
END_TEST

START_TEST(test_parse_accepts_buffer_without_terminating_nul)
{
        _cleanup_(json_object_putp) struct json_object *obj = NULL;
        const char *code = NULL;
        char *buf = malloc(7);

        /* Exactly the bytes, so ASan catches a read past the end. */
        ck_assert_ptr_nonnull(buf);
        memcpy(buf, "{\"a\":5}", 7);
        ck_assert_int_eq(json_parse_object(buf, 7, 0, &obj, &code), 0);
        free(buf);
}
END_TEST

START_TEST(test_parse_rejects_empty_and_blank_bodies)
{
        REJECT("", -EBADMSG, "invalid_json");
        REJECT("   \n", -EBADMSG, "invalid_json");
}
END_TEST

START_TEST(test_parse_rejects_trailing_garbage)
{
        REJECT("{} x", -EBADMSG, "invalid_json");
        REJECT("{}{}", -EBADMSG, "invalid_json");
        REJECT("{\"a\":1}/*c*/", -EBADMSG, "invalid_json");
        REJECT("{\"a\":1}]", -EBADMSG, "invalid_json");
}
END_TEST

START_TEST(test_parse_rejects_nul_bytes_anywhere)
{
        REJECT("{\"a\":1}\0", -EBADMSG, "invalid_json");
        REJECT("{\"a\":\"x\0y\"}", -EBADMSG, "invalid_json");
        REJECT("\0{}", -EBADMSG, "invalid_json");
}
END_TEST

START_TEST(test_parse_rejects_json_c_extensions)
{
        REJECT("{'a':1}", -EBADMSG, "invalid_json");
        REJECT("{\"a\":NaN}", -EBADMSG, "invalid_json");
        REJECT("{\"a\":-Infinity}", -EBADMSG, "invalid_json");
        REJECT("{\"a\":1,}", -EBADMSG, "invalid_json");
        REJECT("{\"a\":01}", -EBADMSG, "invalid_json");
        REJECT("{\"a\":\"x\ty\"}", -EBADMSG, "invalid_json");
        REJECT("{\"a\":\"\\x41\"}", -EBADMSG, "invalid_json");
        REJECT("{\"a\":tru}", -EBADMSG, "invalid_json");
        REJECT("{\"a\":1", -EBADMSG, "invalid_json");
        REJECT("{\"a\":\"abc", -EBADMSG, "invalid_json");
        REJECT("{\"a\":\"abc\\", -EBADMSG, "invalid_json");
}
END_TEST

START_TEST(test_parse_rejects_malformed_utf8)
{
        REJECT("{\"a\":\"\xff\"}", -EILSEQ, "invalid_utf8");
        REJECT("{\"a\":\"\xc0\x80\"}", -EILSEQ, "invalid_utf8");         /* overlong NUL */
        REJECT("{\"a\":\"\xed\xa0\x80\"}", -EILSEQ, "invalid_utf8");     /* surrogate */
        REJECT("{\"a\":\"\xf4\x90\x80\x80\"}", -EILSEQ, "invalid_utf8"); /* > U+10FFFF */
        REJECT("{\"a\":\"\xe2\x82\"}", -EILSEQ, "invalid_utf8");         /* truncated */
        REJECT("{\"a\":1}\xc3", -EILSEQ, "invalid_utf8");
}
END_TEST

START_TEST(test_parse_counts_depth_as_nested_containers)
{
        _cleanup_(json_object_putp) struct json_object *ok1 = NULL, *ok2 = NULL;
        const char *code = NULL;

        ck_assert_int_eq(json_parse_object("{\"a\":[1]}", 9, 2, &ok1, &code), 0);
        ck_assert_int_eq(json_parse_object("{\"a\":[[]]}", 10, 3, &ok2, &code), 0);
        assert_rejected("{\"a\":[1]}", 9, 1, -ELOOP, "too_deep");
        assert_rejected("{\"a\":[[]]}", 10, 2, -ELOOP, "too_deep");
        /* Brackets inside strings do not count. */
        ACCEPT("{\"a\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}");
}
END_TEST

START_TEST(test_parse_rejects_deep_nesting_with_default_depth)
{
        char body[256];
        size_t n = 0;

        /* 16 levels pass, 17 do not. */
        for (int levels = 16; levels <= 17; levels++) {
                _cleanup_(json_object_putp) struct json_object *obj = NULL;
                const char *code = NULL;
                int r;

                n = 0;
                body[n++] = '{';
                memcpy(body + n, "\"a\":", 4);
                n += 4;
                for (int i = 1; i < levels; i++)
                        body[n++] = '[';
                for (int i = 1; i < levels; i++)
                        body[n++] = ']';
                body[n++] = '}';

                r = json_parse_object(body, n, JSON_DEFAULT_MAX_DEPTH, &obj, &code);
                if (levels == 16)
                        ck_assert_int_eq(r, 0);
                else {
                        ck_assert_int_eq(r, -ELOOP);
                        ck_assert_str_eq(code, "too_deep");
                }
        }
}
END_TEST

START_TEST(test_parse_rejects_100k_open_brackets_quickly)
{
        size_t n = 100000;
        char *body = malloc(n);

        ck_assert_ptr_nonnull(body);
        body[0] = '{';
        memcpy(body + 1, "\"a\":", 4);
        memset(body + 5, '[', n - 5);
        assert_rejected(body, n, 0, -ELOOP, "too_deep");
        free(body);
}
END_TEST

START_TEST(test_parse_rejects_valid_json_that_is_not_an_object)
{
        REJECT("5", -EINVAL, "not_an_object");
        REJECT("[1,2]", -EINVAL, "not_an_object");
        REJECT("\"x\"", -EINVAL, "not_an_object");
        REJECT("null", -EINVAL, "not_an_object");
        REJECT(" true ", -EINVAL, "not_an_object");
}
END_TEST

START_TEST(test_get_string_checks_type_length_and_content)
{
        _cleanup_(json_object_putp) struct json_object *obj = NULL;
        const char *code = NULL, *s = NULL;

        ck_assert_int_eq(PARSE("{\"u\":\"alice\",\"n\":5,\"z\":null,\"nul\":\"a\\u0000b\","
                               "\"ctl\":\"a\\u0007\",\"del\":\"\\u007f\",\"e\":\"\","
                               "\"utf\":\"\xc3\xa9\"}",
                               &obj, &code),
                         0);

        ck_assert_int_eq(json_get_string(obj, "u", 1, 32, &s), 0);
        ck_assert_str_eq(s, "alice");
        ck_assert_int_eq(json_get_string(obj, "missing", 1, 32, &s), -ENOENT);
        ck_assert_int_eq(json_get_string(obj, "z", 1, 32, &s), -ENOENT);
        ck_assert_int_eq(json_get_string(obj, "n", 1, 32, &s), -EINVAL);
        ck_assert_int_eq(json_get_string(obj, "u", 6, 32, &s), -ERANGE);
        ck_assert_int_eq(json_get_string(obj, "u", 1, 4, &s), -ERANGE);
        ck_assert_int_eq(json_get_string(obj, "e", 1, 4, &s), -ERANGE);
        ck_assert_int_eq(json_get_string(obj, "e", 0, 4, &s), 0);
        ck_assert_int_eq(json_get_string(obj, "nul", 0, 32, &s), -EINVAL);
        ck_assert_int_eq(json_get_string(obj, "ctl", 0, 32, &s), -EINVAL);
        ck_assert_int_eq(json_get_string(obj, "del", 0, 32, &s), -EINVAL);
        /* Lengths are in bytes. */
        ck_assert_int_eq(json_get_string(obj, "utf", 2, 2, &s), 0);
        ck_assert_int_eq(json_get_string(obj, "utf", 0, 1, &s), -ERANGE);
}
END_TEST

START_TEST(test_get_string_leaves_ret_untouched_on_error)
{
        _cleanup_(json_object_putp) struct json_object *obj = NULL;
        const char *code = NULL, *s = "sentinel";

        ck_assert_int_eq(PARSE("{\"n\":5}", &obj, &code), 0);
        ck_assert_int_eq(json_get_string(obj, "n", 0, 10, &s), -EINVAL);
        ck_assert_str_eq(s, "sentinel");
}
END_TEST

START_TEST(test_get_int64_accepts_only_integer_literals)
{
        _cleanup_(json_object_putp) struct json_object *obj = NULL;
        const char *code = NULL;
        int64_t v = 42;

        ck_assert_int_eq(PARSE("{\"i\":7,\"neg\":-3,\"d\":5.0,\"e\":1e2,\"s\":\"5\",\"b\":true,"
                               "\"z\":null,\"f\":5.5}",
                               &obj, &code),
                         0);

        ck_assert_int_eq(json_get_int64(obj, "i", 0, 10, &v), 0);
        ck_assert_int_eq(v, 7);
        ck_assert_int_eq(json_get_int64(obj, "neg", -10, 10, &v), 0);
        ck_assert_int_eq(v, -3);
        v = 42;
        ck_assert_int_eq(json_get_int64(obj, "d", 0, 10, &v), -EINVAL);
        ck_assert_int_eq(json_get_int64(obj, "e", 0, 1000, &v), -EINVAL);
        ck_assert_int_eq(json_get_int64(obj, "f", 0, 10, &v), -EINVAL);
        ck_assert_int_eq(json_get_int64(obj, "s", 0, 10, &v), -EINVAL);
        ck_assert_int_eq(json_get_int64(obj, "b", 0, 10, &v), -EINVAL);
        ck_assert_int_eq(json_get_int64(obj, "z", 0, 10, &v), -ENOENT);
        ck_assert_int_eq(json_get_int64(obj, "missing", 0, 10, &v), -ENOENT);
        ck_assert_int_eq(v, 42);
}
END_TEST

START_TEST(test_get_int64_enforces_range_including_int64_overflow)
{
        _cleanup_(json_object_putp) struct json_object *obj = NULL;
        const char *code = NULL;
        int64_t v = 0;

        ck_assert_int_eq(PARSE("{\"i\":7,\"max\":9223372036854775807,"
                               "\"over\":9223372036854775808,\"huge\":99999999999999999999,"
                               "\"under\":-9223372036854775809}",
                               &obj, &code),
                         0);
        ck_assert_int_eq(json_get_int64(obj, "i", 8, 10, &v), -ERANGE);
        ck_assert_int_eq(json_get_int64(obj, "i", 0, 6, &v), -ERANGE);
        ck_assert_int_eq(json_get_int64(obj, "i", 7, 7, &v), 0);
        ck_assert_int_eq(json_get_int64(obj, "max", INT64_MIN, INT64_MAX, &v), 0);
        ck_assert(v == INT64_MAX);
        ck_assert_int_eq(json_get_int64(obj, "over", INT64_MIN, INT64_MAX, &v), -ERANGE);
        ck_assert_int_eq(json_get_int64(obj, "huge", INT64_MIN, INT64_MAX, &v), -ERANGE);
        ck_assert_int_eq(json_get_int64(obj, "under", INT64_MIN + 1, INT64_MAX, &v), -ERANGE);
}
END_TEST

START_TEST(test_getters_treat_non_object_as_missing)
{
        _cleanup_(json_object_putp) struct json_object *arr = json_object_new_array();
        const char *s;
        int64_t v;

        ck_assert_int_eq(json_get_string(arr, "a", 0, 1, &s), -ENOENT);
        ck_assert_int_eq(json_get_int64(arr, "a", 0, 1, &v), -ENOENT);
}
END_TEST

START_TEST(test_to_string_dup_is_compact_and_escapes)
{
        _cleanup_(json_object_putp) struct json_object *obj = json_object_new_object();
        _cleanup_free_ char *s = NULL;
        size_t len = 0;

        json_object_object_add(obj, "msg", json_object_new_string("a\"b\n/</script>"));
        json_object_object_add(obj, "n", json_object_new_int64(3));
        s = json_to_string_dup(obj, &len);
        ck_assert_ptr_nonnull(s);
        ck_assert_str_eq(s, "{\"msg\":\"a\\\"b\\n/</script>\",\"n\":3}");
        ck_assert_uint_eq(len, strlen(s));
        free(json_to_string_dup(obj, NULL));
}
END_TEST

static Suite *json_util_suite(void)
{
        Suite *s = suite_create("json-util");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_parse_accepts_objects_with_surrounding_whitespace);
        tcase_add_test(tc, test_parse_accepts_buffer_without_terminating_nul);
        tcase_add_test(tc, test_parse_rejects_empty_and_blank_bodies);
        tcase_add_test(tc, test_parse_rejects_trailing_garbage);
        tcase_add_test(tc, test_parse_rejects_nul_bytes_anywhere);
        tcase_add_test(tc, test_parse_rejects_json_c_extensions);
        tcase_add_test(tc, test_parse_rejects_malformed_utf8);
        tcase_add_test(tc, test_parse_counts_depth_as_nested_containers);
        tcase_add_test(tc, test_parse_rejects_deep_nesting_with_default_depth);
        tcase_add_test(tc, test_parse_rejects_100k_open_brackets_quickly);
        tcase_add_test(tc, test_parse_rejects_valid_json_that_is_not_an_object);
        tcase_add_test(tc, test_get_string_checks_type_length_and_content);
        tcase_add_test(tc, test_get_string_leaves_ret_untouched_on_error);
        tcase_add_test(tc, test_get_int64_accepts_only_integer_literals);
        tcase_add_test(tc, test_get_int64_enforces_range_including_int64_overflow);
        tcase_add_test(tc, test_getters_treat_non_object_as_missing);
        tcase_add_test(tc, test_to_string_dup_is_compact_and_escapes);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(json_util_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
