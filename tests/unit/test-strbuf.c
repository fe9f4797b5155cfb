/* Unit tests for strbuf: growth keeps every byte and the NUL, numbers are
 * written exactly at their extremes, JSON strings are escaped as RFC 8259
 * asks, and stealing hands over the string. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "strbuf.h"

START_TEST(test_appends_grow_and_keep_every_byte)
{
        struct strbuf b = {};
        char expected[10000];

        for (size_t i = 0; i < sizeof(expected); i++) {
                expected[i] = (char)('a' + i % 26);
                strbuf_putc(&b, expected[i]);
        }
        ck_assert(!strbuf_failed(&b));
        ck_assert_uint_eq(b.len, sizeof(expected));
        ck_assert_int_eq(memcmp(b.data, expected, sizeof(expected)), 0);
        ck_assert_int_eq(b.data[b.len], '\0');
        strbuf_append(&b, "\0x", 2); /* bytes, not C strings */
        ck_assert_uint_eq(b.len, sizeof(expected) + 2);
        ck_assert_int_eq(b.data[b.len - 1], 'x');
        strbuf_done(&b);
        ck_assert_ptr_null(b.data);
}
END_TEST

START_TEST(test_numbers_are_exact_at_their_extremes)
{
        struct strbuf b = {};

        strbuf_put_u64(&b, 0);
        strbuf_putc(&b, ' ');
        strbuf_put_u64(&b, UINT64_MAX);
        strbuf_putc(&b, ' ');
        strbuf_put_i64(&b, INT64_MIN);
        strbuf_putc(&b, ' ');
        strbuf_put_i64(&b, INT64_MAX);
        strbuf_putc(&b, ' ');
        strbuf_put_i64(&b, -7);
        strbuf_printf(&b, " %s=%d", "printf", 42);
        ck_assert_str_eq(b.data, "0 18446744073709551615 -9223372036854775808 "
                                 "9223372036854775807 -7 printf=42");
        strbuf_done(&b);
}
END_TEST

START_TEST(test_json_strings_escape_quotes_backslashes_and_controls)
{
        struct strbuf b = {};
        const char in[] = "a\"b\\c\nd\re\tf\x01g\x1f\x7fh\xc3\xa9/";

        strbuf_put_json_string(&b, in, sizeof(in) - 1);
        ck_assert_str_eq(b.data, "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001f\x7fh\xc3\xa9/\"");
        strbuf_reset(&b);
        strbuf_put_json_string(&b, "", 0);
        ck_assert_str_eq(b.data, "\"\"");
        /* With a length, a NUL is a control character like any other. */
        strbuf_reset(&b);
        strbuf_put_json_string(&b, "x\0y", 3);
        ck_assert_str_eq(b.data, "\"x\\u0000y\"");
        strbuf_done(&b);
}
END_TEST

/* The escaping of one byte, the slow and obvious way. */
static void reference_escape(char *out, unsigned char c)
{
        if (c == '"' || c == '\\')
                sprintf(out, "\\%c", c);
        else if (c == '\n')
                strcpy(out, "\\n");
        else if (c == '\r')
                strcpy(out, "\\r");
        else if (c == '\t')
                strcpy(out, "\\t");
        else if (c < 0x20)
                sprintf(out, "\\u%04x", c);
        else
                sprintf(out, "%c", c);
}

/* Whatever the position of a byte that needs escaping, in or out of an
 * 8-byte word, and whatever the length: the same as byte by byte. */
START_TEST(test_json_escapes_match_a_byte_by_byte_reference)
{
        const unsigned char specials[] = {'"',  '\\', '\n', 0x01, 0x1f, 0x20, 0x21, 0x23,
                                          0x5b, 0x5d, 0x7f, 0x80, 0xc3, 0xff, 0x00};

        for (size_t len = 0; len <= 40; len++)
                for (size_t pos = 0; pos < len; pos++)
                        for (size_t k = 0; k < sizeof(specials); k++) {
                                struct strbuf b = {};
                                char in[41], want[41 * 6 + 3], *w = want;

                                memset(in, 'a', len);
                                in[pos] = (char)specials[k];
                                *w++ = '"';
                                for (size_t i = 0; i < len; i++)
                                        w += strlen((reference_escape(w, (unsigned char)in[i]), w));
                                strcpy(w, "\"");
                                strbuf_put_json_string(&b, in, len);
                                ck_assert_uint_eq(b.len, strlen(want));
                                ck_assert_mem_eq(b.data, want, b.len);
                                strbuf_done(&b);
                        }
}
END_TEST

START_TEST(test_reset_keeps_memory_and_steal_hands_over)
{
        struct strbuf b = {};
        char *data, *s;

        strbuf_puts(&b, "first");
        data = b.data;
        strbuf_reset(&b);
        ck_assert_uint_eq(b.len, 0);
        ck_assert_str_eq(b.data, "");
        strbuf_puts(&b, "second");
        ck_assert_ptr_eq(b.data, data);
        s = strbuf_steal(&b);
        ck_assert_str_eq(s, "second");
        ck_assert_ptr_null(b.data);
        ck_assert_uint_eq(b.len, 0);
        free(s);

        /* Never appended to: an empty string, not NULL. */
        s = strbuf_steal(&b);
        ck_assert_str_eq(s, "");
        free(s);
}
END_TEST

START_TEST(test_a_failed_buffer_ignores_appends_and_steals_nothing)
{
        struct strbuf b = {};

        strbuf_puts(&b, "kept");
        b.failed = true; /* as after an allocation failure */
        strbuf_puts(&b, " lost");
        ck_assert_str_eq(b.data, "kept");
        ck_assert_ptr_null(strbuf_steal(&b));
        ck_assert_ptr_null(b.data);
        ck_assert(!strbuf_failed(&b));
}
END_TEST

static Suite *strbuf_suite(void)
{
        Suite *s = suite_create("strbuf");
        TCase *tc = tcase_create("strbuf");

        tcase_add_test(tc, test_appends_grow_and_keep_every_byte);
        tcase_add_test(tc, test_numbers_are_exact_at_their_extremes);
        tcase_add_test(tc, test_json_strings_escape_quotes_backslashes_and_controls);
        tcase_add_test(tc, test_json_escapes_match_a_byte_by_byte_reference);
        tcase_add_test(tc, test_reset_keeps_memory_and_steal_hands_over);
        tcase_add_test(tc, test_a_failed_buffer_ignores_appends_and_steals_nothing);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(strbuf_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
