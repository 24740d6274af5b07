/* core/core.h - the shared base every module may include: errors, spans,
 * memory, arenas, logging, config tree. */
#ifndef GH_CORE_CORE_H
#define GH_CORE_CORE_H

#include "arena.h"
#include "conf.h"
#include "err.h"
#include "log.h"
#include "mem.h"
#include "str.h"

#endif
