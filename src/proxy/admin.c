/* proxy/admin.c - the admin listener's endpoints, served by worker 0's loop:
 * /healthz (the process is up), /readyz (503 while draining or while the
 * shared state database is unreachable), /metrics
 * (Prometheus text from metrics.c, which pulls its registered providers).
 * Anything else is 404. A handler of the connection layer (conn_admin_install):
 * conn.c does not know this file. */
#include <stdlib.h>

#include <string.h>

#include "io.h"
#include "metrics.h"

void admin_handle(struct request *r)
{
    if (!str_eq_cstr(r->method, "GET") && !str_eq_cstr(r->method, "HEAD")) {
        request_respond(r, 405, "text/plain", STR("method not allowed\n"), "Allow: GET, HEAD\r\n");
        return;
    }
    if (str_eq_cstr(r->path, "/healthz")) {
        request_respond(r, 200, "text/plain", STR("ok\n"), NULL);
    } else if (str_eq_cstr(r->path, "/readyz")) {
        if (atomic_load(&io_g.draining)) {
            request_respond(r, 503, "text/plain", STR("draining\n"), NULL);
        } else if (!access_ready()) {
            request_respond(r, 503, "text/plain", STR("state database unreachable\n"), NULL);
        } else {
            request_respond(r, 200, "text/plain", STR("ready\n"), NULL);
        }
    } else if (str_eq_cstr(r->path, "/metrics") && io_g.metrics) {
        size_t n = 0;
        /* Sign-in, policy and decision-log series come from their providers. */
        char *text = metrics_render(io_g.metrics, &n);
        request_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", (struct str){ text, n },
                        NULL);
        free(text);
    } else {
        request_respond(r, 404, "text/plain", STR("not found\n"), NULL);
    }
}
