/* PLACEHOLDER: to be implemented */
#include "json-util.h"
