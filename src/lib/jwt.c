/* PLACEHOLDER: to be implemented */
#include "jwt.h"
