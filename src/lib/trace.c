/* PLACEHOLDER: to be implemented */
#include "trace.h"
