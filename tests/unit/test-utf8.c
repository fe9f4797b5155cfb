/* Unit tests for utf8: the sequence check agrees with a decoder that
 * computes code points, for every sequence of up to three bytes and every
 * lead of four; validity holds across the 8-byte ASCII runs; copies cut
 * between characters and replace malformed bytes within their bound. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "utf8.h"

/* The reference: decode the code point, then reject what RFC 3629 rules
 * out. */
static size_t reference_length(const unsigned char *s, size_t avail)
{
        size_t n;
        uint32_t cp;

        if (s[0] < 0x80)
                return 1;
        if ((s[0] & 0xE0) == 0xC0)
                n = 2, cp = s[0] & 0x1F;
        else if ((s[0] & 0xF0) == 0xE0)
                n = 3, cp = s[0] & 0x0F;
        else if ((s[0] & 0xF8) == 0xF0)
                n = 4, cp = s[0] & 0x07;
        else
                return 0;
        if (avail < n)
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((s[i] & 0xC0) != 0x80)
                        return 0;
                cp = cp << 6 | (s[i] & 0x3F);
        }
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                return 0;
        return n;
}

START_TEST(test_sequence_length_agrees_with_a_decoder)
{
        static const unsigned char edges[] = {0x00, 0x7F, 0x80, 0xBF, 0xC0, 0xFF};
        unsigned char s[4];

        for (uint32_t v = 0; v < (1U << 24); v++) {
                s[0] = (unsigned char)(v >> 16), s[1] = (unsigned char)(v >> 8);
                s[2] = (unsigned char)v, s[3] = 0x80;
                for (size_t avail = 1; avail <= 3; avail++)
                        if (utf8_sequence_length((const char *)s, avail) !=
                            reference_length(s, avail))
                                ck_abort_msg("%02x %02x %02x, %zu readable: %zu, want %zu", s[0],
                                             s[1], s[2], avail,
                                             utf8_sequence_length((const char *)s, avail),
                                             reference_length(s, avail));
        }
        /* Four bytes: every lead and second byte, the rest at the edges of
         * the continuation range. */
        for (uint32_t v = 0xF000; v <= 0xFFFF; v++)
                for (size_t i = 0; i < ELEMENTSOF(edges); i++)
                        for (size_t j = 0; j < ELEMENTSOF(edges); j++) {
                                s[0] = (unsigned char)(v >> 8), s[1] = (unsigned char)v;
                                s[2] = edges[i], s[3] = edges[j];
                                ck_assert_uint_eq(utf8_sequence_length((const char *)s, 4),
                                                  reference_length(s, 4));
                        }
        ck_assert_uint_eq(utf8_sequence_length("\xF4\x8F\xBF\xBF", 4), 4); /* U+10FFFF */
        ck_assert_uint_eq(utf8_sequence_length("\xF4\x90\x80\x80", 4), 0); /* past it */
        ck_assert_uint_eq(utf8_sequence_length("\xED\xA0\x80", 3), 0);     /* a surrogate */
        ck_assert_uint_eq(utf8_sequence_length("\xC0\xAF", 2), 0);         /* overlong '/' */
}
END_TEST

START_TEST(test_validity_holds_across_ascii_runs)
{
        char s[48];

        for (size_t len = 0; len <= 40; len++) {
                memset(s, 'a', len);
                ck_assert(utf8_is_valid(s, len));
                for (size_t i = 0; i < len; i++) {
                        memset(s, 'a', len);
                        s[i] = (char)0xFF;
                        ck_assert_msg(!utf8_is_valid(s, len), "0xff at %zu of %zu", i, len);
                        s[i] = (char)0x80; /* a stray continuation byte */
                        ck_assert(!utf8_is_valid(s, len));
                        if (i + 2 <= len) {
                                memcpy(s + i, "\xC3\xA9", 2);
                                ck_assert_msg(utf8_is_valid(s, len), "é at %zu of %zu", i, len);
                                ck_assert(!utf8_is_valid(s, i + 1)); /* cut inside it */
                        }
                }
        }
        ck_assert(utf8_is_valid("a\0b", 3)); /* NUL is a character */
}
END_TEST

START_TEST(test_copy_cuts_between_characters_and_replaces_malformed_bytes)
{
        char out[64];

        ck_assert_uint_eq(utf8_copy(out, "a\xC3\xA9", 2, "?"), 1); /* é does not fit */
        ck_assert_str_eq(out, "a");
        ck_assert_uint_eq(utf8_copy(out, "a\xC3\xA9", 3, "?"), 3);
        ck_assert_str_eq(out, "a\xC3\xA9");
        ck_assert_uint_eq(utf8_copy(out,
                                    "a\xFF"
                                    "b\xED\xA0\x80",
                                    20, "?"),
                          6);
        ck_assert_str_eq(out, "a?b???");
        ck_assert_uint_eq(utf8_copy(out,
                                    "a\xFF"
                                    "b",
                                    20, "\xEF\xBF\xBD"),
                          5);
        ck_assert_str_eq(out, "a\xEF\xBF\xBD"
                              "b");
        /* A replacement that does not fit ends the copy. */
        ck_assert_uint_eq(utf8_copy(out, "\xFF\xFF", 4, "\xEF\xBF\xBD"), 3);
        ck_assert_uint_eq(utf8_copy(out, "abcdefghijklmnopqrstuvwxyz", 10, "?"), 10);
        ck_assert_str_eq(out, "abcdefghij");
        ck_assert_uint_eq(utf8_copy(out, "", 10, "?"), 0);
        ck_assert_str_eq(out, "");

        /* The bound covers the worst case and never exceeds max. */
        ck_assert_uint_eq(utf8_copy_bound("\xFF\xFF", 10, 3), 6);
        ck_assert_uint_eq(utf8_copy_bound("\xFF\xFF\xFF\xFF", 10, 3), 10);
        ck_assert_uint_eq(utf8_copy_bound("abc", 10, 1), 3);
        ck_assert_uint_le(utf8_copy(out, "\xFF\xFF", 10, "\xEF\xBF\xBD"),
                          utf8_copy_bound("\xFF\xFF", 10, 3));
}
END_TEST

START_TEST(test_copy_cut_drops_the_character_the_cut_falls_in)
{
        char out[8];

        memset(out, 'x', sizeof(out));
        utf8_copy_cut(out, 3, "ab\xC3\xA9"); /* the cut falls inside é */
        ck_assert_str_eq(out, "ab");
        utf8_copy_cut(out, 4, "ab\xC3\xA9");
        ck_assert_str_eq(out, "ab\xC3\xA9");
        utf8_copy_cut(out, 4, "a\xE2\x82\xAC"); /* € ends at the cut */
        ck_assert_str_eq(out, "a\xE2\x82\xAC");
        utf8_copy_cut(out, 3, "a\xE2\x82\xAC");
        ck_assert_str_eq(out, "a");
        utf8_copy_cut(out, 7, "abcdefghij");
        ck_assert_str_eq(out, "abcdefg");
        utf8_copy_cut(out, 7, NULL);
        ck_assert_str_eq(out, "");
        utf8_copy_cut(out, 0, "\xC3\xA9");
        ck_assert_str_eq(out, "");
}
END_TEST

static Suite *utf8_suite(void)
{
        Suite *s = suite_create("utf8");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_sequence_length_agrees_with_a_decoder);
        tcase_add_test(tc, test_validity_holds_across_ascii_runs);
        tcase_add_test(tc, test_copy_cuts_between_characters_and_replaces_malformed_bytes);
        tcase_add_test(tc, test_copy_cut_drops_the_character_the_cut_falls_in);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr = srunner_create(utf8_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
