/* vigil-authd: users, password hashing, JWT issue/verify, sessions. */
#include "authd-manager.h"

int main(int argc, char **argv)
{
        return daemon_main(argc, argv, &authd_ops);
}
