/* proxy/upgrade.h - what of a client's request head may reach a backend: the
 * client header names dropped on the way (look-alikes of identity, hop-by-hop
 * and forwarding headers with '_' for '-', every '_' name unless the route
 * opts in, URL and method override headers), and the WebSocket opening
 * handshake (RFC 6455 §4), the only Upgrade ever forwarded, checked on the
 * request and on the 101 that answers it. No sockets here. */
#ifndef GH_PROXY_UPGRADE_H
#define GH_PROXY_UPGRADE_H

#include <stdbool.h>

#include "http.h"
#include "request.h"

struct hdr_policy {
    bool allow_underscores;      /* routes[].headers.allow_underscores */
    bool allow_override_headers; /* routes[].headers.allow_override_headers */
};

/* Whether the client's header named name is kept from the backend. The exact
 * hop-by-hop, forwarding and X-Gatehouse-* names are http.c's; configured
 * identity header names are the access stage's (access/access_conf.c). */
bool hdr_client_dropped(struct str name, const struct hdr_policy *p);

enum ws_check {
    WS_OK,            /* a complete WebSocket handshake: forward with Upgrade */
    WS_NOT_WEBSOCKET, /* another protocol (h2c, TLS/1.0): forward without Upgrade */
    WS_BAD,           /* a WebSocket handshake that is not valid: 400 */
};

/* What the Upgrade headers of r ask for. On WS_BAD, *why is a static text. */
enum ws_check ws_check_request(const struct request *r, const char **why);
/* Whether key is a Sec-WebSocket-Key: 16 bytes in base64 (24 characters). */
bool ws_key_valid(struct str key);
/* base64(SHA-1(key + the RFC 6455 GUID)) into out (28 characters and a NUL).
 * Returns false when key is not valid. */
bool ws_accept_for(struct str key, char out[29]);
/* Whether the parsed 101 response head (h, base) answers r's handshake: one
 * Upgrade: websocket, Connection: upgrade, and one Sec-WebSocket-Accept that
 * matches r's Sec-WebSocket-Key. */
bool ws_check_response(const struct request *r, const struct http_in *h, const char *base);

#endif
