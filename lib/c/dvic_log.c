/* The compiled half of dvic_log.h for the CMake target dvic_log::dvic_log (README.md): programs that
 * link the target include "dvic_log.h" without defining DVIC_LOG_IMPLEMENTATION themselves. */
#define DVIC_LOG_IMPLEMENTATION
#include "dvic_log.h"
