/* vigil-paymentd: charges with idempotency keys, a simulated processor and
 * a transactional outbox relayed to RabbitMQ. */
#include "paymentd-manager.h"

int main(int argc, char **argv)
{
        return daemon_main(argc, argv, &paymentd_ops);
}
