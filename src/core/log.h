/* core/log.h - one logfmt line per event on stderr:
 *   ts=2026-11-28T06:00:00.123Z level=warn mod=proxy req=7f3a msg="upstream timed out" k=v
 * Never log tokens, cookies, Authorization, secrets, assertions or keys. */
#ifndef GH_CORE_LOG_H
#define GH_CORE_LOG_H

#include "err.h"

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
/* Parses "debug|info|warn|error"; returns -1 when unknown. */
int log_level_parse(const char *s);
/* mod: short module name; req: request id or NULL; msg is quoted for logfmt.
 * extra: optional preformatted " k=v k2=v2" tail (may be NULL). Thread-safe. */
void log_emit(enum log_level lvl, const char *mod, const char *req, const char *extra,
              const char *fmt, ...) PRINTF(5, 6);

#define log_debug(mod, ...) log_emit(LOG_DEBUG, mod, NULL, NULL, __VA_ARGS__)
#define log_info(mod, ...)  log_emit(LOG_INFO, mod, NULL, NULL, __VA_ARGS__)
#define log_warn(mod, ...)  log_emit(LOG_WARN, mod, NULL, NULL, __VA_ARGS__)
#define log_error(mod, ...) log_emit(LOG_ERROR, mod, NULL, NULL, __VA_ARGS__)

#endif
