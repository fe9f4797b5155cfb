/* vigil-inventoryd: product catalog with a Redis cache, race-free stock
 * reservation. */
#include "inventoryd-manager.h"

int main(int argc, char **argv)
{
        return daemon_main(argc, argv, &inventoryd_ops);
}
