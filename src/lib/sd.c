/* PLACEHOLDER: to be implemented */
#include "sd.h"
