/* libFuzzer target: the request header values vigil's handlers check
 * themselves, each against a reference written here from its header's
 * contract:
 *
 *   idempotency_key_validate()          paymentd's Idempotency-Key
 *   payment_tracestate_is_forwardable() paymentd's tracestate, carried
 *                                       into the payment's event
 *   http_bearer_token()                 every daemon's Authorization
 *   http_content_type_is_json()         every JSON body's Content-Type
 *   metrics_format_from_accept()        GET /metrics' Accept
 *
 * The input is one header value: a C string, as libmicrohttpd hands it
 * over (it stops at the first NUL). Promises checked: the verdicts agree
 * with the references; a bearer token is a suffix of the value, and
 * "Bearer <token>" gives back the same token. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http-route.h"
#include "metrics.h"
#include "paymentd-payments.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool all_printable_ascii(const char *s, size_t len)
{
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
                        return false;
        return true;
}

/* RFC 7230 whitespace plus what isspace() also counts in the C locale. */
static bool is_white(char c)
{
        return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static bool ascii_case_equal(const char *a, const char *b, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                char x = a[i], y = b[i];

                if (x >= 'A' && x <= 'Z')
                        x = (char)(x - 'A' + 'a');
                if (y >= 'A' && y <= 'Z')
                        y = (char)(y - 'A' + 'a');
                if (x != y)
                        return false;
        }
        return true;
}

/* Returns the offset of the token in value, or -1 for none. */
static long reference_bearer(const char *value, size_t len)
{
        size_t i = 6;

        if (len < 8 || !ascii_case_equal(value, "bearer", 6))
                return -1;
        if (value[i] != ' ' && value[i] != '\t')
                return -1;
        while (i < len && (value[i] == ' ' || value[i] == '\t'))
                i++;
        if (i == len)
                return -1;
        for (size_t j = i; j < len; j++)
                if (is_white(value[j]))
                        return -1;
        return (long)i;
}

static bool reference_content_type_is_json(const char *value, size_t len)
{
        size_t i = 0;

        while (i < len && (value[i] == ' ' || value[i] == '\t'))
                i++;
        if (len - i < 16 || !ascii_case_equal(value + i, "application/json", 16))
                return false;
        i += 16;
        while (i < len && (value[i] == ' ' || value[i] == '\t'))
                i++;
        return i == len || value[i] == ';';
}

static bool contains_openmetrics(const char *value, size_t len)
{
        static const char om[] = "application/openmetrics-text";

        for (size_t i = 0; i + strlen(om) <= len; i++)
                if (ascii_case_equal(value + i, om, strlen(om)))
                        return true;
        return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char *value, *again = NULL;
        const char *token;
        size_t len;
        long expected;
        int r;

        value = malloc(size + 1);
        if (!value)
                return 0;
        memcpy(value, data, size);
        value[size] = '\0';
        len = strlen(value);

        r = idempotency_key_validate(value);
        if (len == 0                                                                 ? r != -ENOENT
            : (len <= IDEMPOTENCY_KEY_MAX_LENGTH && all_printable_ascii(value, len)) ? r != 0
                                                                                     : r != -EINVAL)
                abort();

        if (payment_tracestate_is_forwardable(value) !=
            (len > 0 && len <= PAYMENT_TRACESTATE_MAX && all_printable_ascii(value, len)))
                abort();

        token = http_bearer_token(value);
        expected = reference_bearer(value, len);
        if (expected < 0 ? token != NULL : token != value + expected)
                abort();
        if (token) {
                if (asprintf(&again, "Bearer %s", token) < 0)
                        abort();
                if (!http_bearer_token(again) || strcmp(http_bearer_token(again), token) != 0)
                        abort();
                free(again);
        }
        if (http_content_type_is_json(value) != reference_content_type_is_json(value, len))
                abort();
        /* Prometheus text unless OpenMetrics is asked for. */
        if (metrics_format_from_accept(value) == METRICS_FORMAT_OPENMETRICS &&
            !contains_openmetrics(value, len))
                abort();

        if (idempotency_key_validate(NULL) != -ENOENT || payment_tracestate_is_forwardable(NULL) ||
            http_bearer_token(NULL) || !http_content_type_is_json(NULL) ||
            metrics_format_from_accept(NULL) != METRICS_FORMAT_PROMETHEUS)
                abort();

        free(value);
        return 0;
}
