/* libFuzzer target for trace_parse_traceparent(), which reads the
 * untrusted traceparent header of every request and AMQP message.
 *
 * Promises checked: parsing never reads out of bounds (the sanitizers
 * watch), a context it accepts is valid, and formatting an accepted context
 * and parsing it again gives back the same context. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char formatted[TRACEPARENT_LEN + 1];
        struct trace_context ctx, again;
        char *value;

        /* A header value is a C string: stop at the first NUL, as the HTTP
         * server would hand it over. */
        value = malloc(size + 1);
        if (!value)
                return 0;
        memcpy(value, data, size);
        value[size] = '\0';

        if (trace_parse_traceparent(value, &ctx) == 0) {
                if (!trace_context_is_valid(&ctx))
                        abort();
                trace_format_traceparent(&ctx, formatted);
                if (strlen(formatted) != TRACEPARENT_LEN)
                        abort();
                if (trace_parse_traceparent(formatted, &again) != 0)
                        abort();
                if (memcmp(ctx.trace_id, again.trace_id, TRACE_ID_SIZE) != 0 ||
                    memcmp(ctx.span_id, again.span_id, SPAN_ID_SIZE) != 0 ||
                    ctx.flags != again.flags)
                        abort();
        }
        free(value);
        return 0;
}
