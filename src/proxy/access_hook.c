/* proxy/access_hook.c - the access stage as the data plane knows it: the one
 * installed struct access_stage (proxy/access/stage.c installs it at start)
 * and the calls conn.c and admin.c make through it. Nothing installed means
 * deny: a routed request is refused (the caller answers 403), a /.gatehouse/
 * path is unknown (404), and the admin listener's /readyz says ready. */
#include <stdatomic.h>

#include "request.h"

static _Atomic(const struct access_stage *) g_stage;

void access_stage_install(const struct access_stage *stage)
{
    atomic_store(&g_stage, stage);
}

enum access_step access_check(struct request *r)
{
    const struct access_stage *st = atomic_load(&g_stage);

    if (st && st->check) {
        return st->check(r);
    }
    /* Nothing installed: fail closed (the caller answers 403). */
    return ACCESS_RESPOND;
}

bool access_reserved(struct request *r, enum access_step *step)
{
    const struct access_stage *st = atomic_load(&g_stage);

    if (!st || !st->reserved) {
        return false;
    }
    *step = st->reserved(r);
    return true;
}

const char *access_form_action(struct request *r)
{
    const struct access_stage *st = atomic_load(&g_stage);
    return st && st->form_action ? st->form_action(r) : NULL;
}

bool access_ready(void)
{
    const struct access_stage *st = atomic_load(&g_stage);
    return !st || !st->ready || st->ready();
}
