/* policy/dl_syslog.c - sends a decision log checkpoint to syslog. On its own because
 * syslog.h's LOG_* names clash with the logger's (core/log.h). */
#include <syslog.h>

void dl_syslog_checkpoint(const char *json);

void dl_syslog_checkpoint(const char *json)
{
    syslog(LOG_AUTHPRIV | LOG_NOTICE, "gatehouse decision-log checkpoint %s", json);
}
