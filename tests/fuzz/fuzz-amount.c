/* libFuzzer target: payment_parse_amount(), vigil-paymentd's decoder of the
 * "amount" of a charge, checked against an exact decimal reference written
 * here in another way (digit strings shifted by the exponent, no running
 * scale).
 *
 * Promises checked: both agree on accept or reject and, when they accept,
 * on the cents; a rejected input leaves *ret_cents untouched.
 *
 * Input encoding: the bytes are the text, except that 0x01 followed by a
 * 3-byte little-endian count n and a byte c stands for n copies of c (n at
 * most 1 << 17). So a short input can stand for the long digit strings
 * (0.<99997 zeros>1e1000000) where exactness is hardest, and libFuzzer can
 * grow those counts by mutation. The text stops at its first NUL, as the
 * JSON number's source text handed over by json-c does. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "paymentd-payments.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RUN_MARKER   0x01
#define RUN_MAX      (1U << 17)
#define EXPANDED_MAX (1U << 19)
#define UNTOUCHED    INT64_C(0x5a5a5a5a5a5a5a5a)
/* An exponent of more digits than this (leading zeros aside) exceeds any
 * string length in memory, so it decides the result by its sign alone. */
#define EXPONENT_DIGITS_EXACT 15

/* Expand the run markers. Returns a malloc()ed NUL-terminated string, or
 * NULL when the result would exceed EXPANDED_MAX (or on OOM). */
static char *expand(const uint8_t *data, size_t size)
{
        size_t len = 0, cap = size + 1;
        char *s = malloc(cap);

        for (size_t i = 0; s && i < size; i++) {
                size_t n = 1;
                uint8_t c = data[i];

                if (c == RUN_MARKER && i + 4 < size) {
                        n = (size_t)data[i + 1] | (size_t)data[i + 2] << 8 |
                            (size_t)data[i + 3] << 16;
                        if (n > RUN_MAX)
                                n = RUN_MAX;
                        c = data[i + 4];
                        i += 4;
                }
                if (len + n + 1 > EXPANDED_MAX) {
                        free(s);
                        return NULL;
                }
                if (len + n + 1 > cap) {
                        char *bigger;

                        cap = (len + n + 1) * 2;
                        bigger = realloc(s, cap);
                        if (!bigger) {
                                free(s);
                                return NULL;
                        }
                        s = bigger;
                }
                memset(s + len, c, n);
                len += n;
        }
        if (s)
                s[len] = '\0';
        return s;
}

static size_t digit_run(const char *s)
{
        size_t n = 0;

        while (s[n] >= '0' && s[n] <= '9')
                n++;
        return n;
}

/* The reference. Returns true and sets *ret_cents when text is an amount
 * of the header's grammar worth 1 .. PAYMENT_MAX_AMOUNT_CENTS cents. */
static bool reference_amount(const char *text, int64_t *ret_cents)
{
        const char *int_part, *frac_part = "", *exp_digits = "0";
        size_t int_len, frac_len = 0, exp_len = 1, m_len;
        bool exp_negative = false;
        int64_t exponent = 0, shift;
        const char *p = text;
        char *mantissa;
        int64_t cents = 0;

        /* The grammar, piece by piece. */
        int_part = p;
        int_len = digit_run(p);
        if (int_len == 0)
                return false;
        p += int_len;
        if (*p == '.') {
                frac_part = ++p;
                frac_len = digit_run(p);
                if (frac_len == 0)
                        return false;
                p += frac_len;
        }
        if (*p == 'e' || *p == 'E') {
                p++;
                if (*p == '-' || *p == '+')
                        exp_negative = *p++ == '-';
                exp_digits = p;
                exp_len = digit_run(p);
                if (exp_len == 0)
                        return false;
                p += exp_len;
        }
        if (*p != '\0')
                return false;

        /* The mantissa's digits without leading zeros: value is
         * mantissa * 10^(exponent - frac_len) dollars. */
        mantissa = malloc(int_len + frac_len + 1);
        if (!mantissa)
                abort();
        memcpy(mantissa, int_part, int_len);
        memcpy(mantissa + int_len, frac_part, frac_len);
        mantissa[int_len + frac_len] = '\0';
        {
                size_t skip = strspn(mantissa, "0");

                memmove(mantissa, mantissa + skip, int_len + frac_len - skip + 1);
        }
        m_len = strlen(mantissa);
        if (m_len == 0) { /* zero */
                free(mantissa);
                return false;
        }

        while (exp_len > 1 && *exp_digits == '0') {
                exp_digits++;
                exp_len--;
        }
        if (exp_len > EXPONENT_DIGITS_EXACT) {
                /* 10^15 or more: a non-zero mantissa is either huge or a
                 * fraction of a cent. */
                free(mantissa);
                return false;
        }
        for (size_t i = 0; i < exp_len; i++)
                exponent = exponent * 10 + (exp_digits[i] - '0');
        if (exp_negative)
                exponent = -exponent;

        /* cents = mantissa * 10^shift */
        shift = exponent - (int64_t)frac_len + 2;
        if (shift < 0) {
                /* The last -shift digits must be zeros, and go. */
                if ((uint64_t)-shift >= m_len) {
                        free(mantissa);
                        return false;
                }
                for (size_t i = m_len - (size_t)-shift; i < m_len; i++)
                        if (mantissa[i] != '0') {
                                free(mantissa);
                                return false;
                        }
                m_len -= (size_t)-shift;
                shift = 0;
        }
        /* At most 9 digits in all: 100000000 has 9. */
        if ((uint64_t)shift > 9 || m_len + (size_t)shift > 9) {
                free(mantissa);
                return false;
        }
        for (size_t i = 0; i < m_len; i++)
                cents = cents * 10 + (mantissa[i] - '0');
        for (int64_t i = 0; i < shift; i++)
                cents *= 10;
        free(mantissa);
        if (cents < 1 || cents > PAYMENT_MAX_AMOUNT_CENTS)
                return false;
        *ret_cents = cents;
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        int64_t cents = UNTOUCHED, expected = 0;
        bool accepted;
        char *text;
        int r;

        text = expand(data, size);
        if (!text)
                return 0;

        r = payment_parse_amount(text, &cents);
        accepted = reference_amount(text, &expected);
        if (r != 0 && r != -EINVAL)
                abort(); /* the only error the contract names */
        if ((r == 0) != accepted)
                abort(); /* accept/reject disagree */
        if (r == 0 && cents != expected)
                abort(); /* a wrong amount */
        if (r < 0 && cents != UNTOUCHED)
                abort(); /* written on failure */
        free(text);
        return 0;
}
