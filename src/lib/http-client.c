/* PLACEHOLDER: to be implemented */
#include "http-client.h"
