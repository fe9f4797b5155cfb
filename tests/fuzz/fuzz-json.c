/* libFuzzer target: json_parse_object() on arbitrary bytes with the
 * default depth, then the typed getters on the keys vigil's handlers read.
 * Must never crash, leak or read outside the input. */
#include <stddef.h>
#include <stdint.h>

#include "json-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        _cleanup_(json_object_putp) struct json_object *obj = NULL;
        const char *code = NULL, *s = NULL;
        int64_t v = 0;
        size_t len = 0;

        if (json_parse_object((const char *)data, size, JSON_DEFAULT_MAX_DEPTH, &obj, &code) < 0)
                return 0;

        (void)json_get_string(obj, "username", 1, 64, &s);
        (void)json_get_string(obj, "password", 0, 1024, &s);
        (void)json_get_int64(obj, "amount", 1, INT64_MAX, &v);
        (void)json_get_int64(obj, "quantity", INT64_MIN, INT64_MAX, &v);
        free(json_to_string_dup(obj, &len));
        return 0;
}
