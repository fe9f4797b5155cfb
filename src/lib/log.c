/* PLACEHOLDER: to be implemented */
#include "log.h"
