/* libFuzzer target: webhook_decode() — vigil-alertbotd's decoder of
 * Alertmanager's webhook payload — on arbitrary bytes, then the label and
 * annotation lookups the policy makes on what it accepted. Must never
 * crash, leak or read outside the input, and every refusal carries a code
 * and a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alertbotd-webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct webhook *w = NULL;
        const char *code = NULL;
        char *message = NULL;

        if (webhook_decode((const char *)data, size, &w, &code, &message) < 0) {
                if (!code)
                        abort();
                free(message);
                return 0;
        }
        for (size_t i = 0; i < w->n_alerts; i++) {
                const struct webhook_alert *a = &w->alerts[i];

                if (!webhook_alert_label(a, "alertname") || strlen(a->fingerprint) == 0)
                        abort();
                (void)webhook_alert_label(a, "unit");
                (void)webhook_alert_annotation(a, "summary");
        }
        webhook_free(w);
        return 0;
}
