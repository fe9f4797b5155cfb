/* PLACEHOLDER: to be implemented */
#include "http-server.h"
