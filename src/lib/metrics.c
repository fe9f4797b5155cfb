/* PLACEHOLDER: to be implemented */
#include "metrics.h"
