/* PLACEHOLDER: to be implemented */
#include "redis.h"
