/* libFuzzer target for the configuration loader: an arbitrary file's
 * contents through conf_load_buffer() (libinih, the line reader, value
 * validation and diagnostics) against a table with every value type, then
 * every error through conf_error_format() and the listen value through
 * conf_parse_listen(). Must never crash or leak, whatever the input. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "conf.h"
#include "macro.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fuzz_config {
        char *listen;
        int64_t max_connections;
        bool access_log;
        char *endpoint;
        double sample_ratio;
        char *level;
        char *dsn;
        int64_t ttl;
};

static const char *const levels[] = {"debug", "info", "warning", NULL};

static const struct conf_key table[] = {
        CONF_STRING("http", "listen", "127.0.0.1:8001", 256, struct fuzz_config, listen,
                    "Address and port to listen on"),
        CONF_INT("http", "max_connections", "512", 1, 65536, struct fuzz_config, max_connections,
                 "Concurrent client connections"),
        CONF_BOOL("http", "access_log", "true", struct fuzz_config, access_log,
                  "Log every request"),
        CONF_STRING("tracing", "otlp_endpoint", "http://127.0.0.1:4318/v1/traces", 1024,
                    struct fuzz_config, endpoint, "OTLP/HTTP traces endpoint"),
        CONF_DOUBLE("tracing", "sample_ratio", "1.0", 0.0, 1.0, struct fuzz_config, sample_ratio,
                    "Share of new traces that are recorded"),
        CONF_ENUM("log", "level", "info", levels, struct fuzz_config, level, "Log level"),
        CONF_STRING("postgres", "dsn", NULL, 0, struct fuzz_config, dsn, "libpq DSN"),
        CONF_INT("cache", "ttl_seconds", "60", -9.2e18, 9.2e18, struct fuzz_config, ttl,
                 "Cache TTL"),
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct fuzz_config c = {0};
        struct conf_diagnostics diag = {0};
        char host[256];
        uint16_t port;

        (void)conf_load_buffer(table, ELEMENTSOF(table), "fuzz.conf", data, size, &c, &diag);

        for (size_t i = 0; i < diag.n_errors; i++)
                free(conf_error_format(&diag.errors[i]));
        if (c.listen)
                (void)conf_parse_listen(c.listen, host, sizeof(host), &port);

        conf_diagnostics_done(&diag);
        conf_free(table, ELEMENTSOF(table), &c);
        return 0;
}
