/* vigil-notifyd: consumes payment events and records notifications. */
#include "notifyd-manager.h"

int main(int argc, char **argv)
{
        return daemon_main(argc, argv, &notifyd_ops);
}
