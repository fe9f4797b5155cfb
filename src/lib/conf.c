/* PLACEHOLDER: to be implemented */
#include "conf.h"
