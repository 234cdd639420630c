// C ABI of the percpu layer.
#include <sysref/percpu.h>

#include "percpu.hpp"

extern "C" const char *sysref_percpu_mode(void) { return sysref::percpu::mode_name(); }
