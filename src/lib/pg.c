/* PLACEHOLDER: to be implemented */
#include "pg.h"
