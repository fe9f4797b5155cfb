/* vigil-alertbotd: Alertmanager webhook → remediation policy → D-Bus
 * RestartUnit → verification → audit. */
#include "alertbotd-manager.h"

int main(int argc, char **argv)
{
        return daemon_main(argc, argv, &alertbotd_ops);
}
