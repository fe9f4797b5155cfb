/* PLACEHOLDER: to be implemented */
#include "password.h"
