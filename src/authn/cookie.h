/* authn/cookie.h - the request's Cookie headers in, Set-Cookie out. Gatehouse
 * cookies carry only opaque values (the 256-bit session id, the sealed login
 * state); on TLS they use the __Host- prefix so a sibling host cannot plant
 * or overwrite them. Pure functions, no allocation except into the arena. */
#ifndef GH_AUTHN_COOKIE_H
#define GH_AUTHN_COOKIE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"

#define COOKIE_MAX_HEADER_BYTES 8192
#define COOKIE_MAX_VALUE_BYTES  4096

/* The cookie name on the wire: "__Host-<base>" on TLS, "<base>" otherwise.
 * Writes a NUL-terminated name into buf; false when it does not fit. */
bool cookie_wire_name(const char *base, bool tls, char *buf, size_t n);

/* Looks for cookie `name` in every Cookie header value of the request (HTTP/1.1
 * may send several). *value is a span into the input with surrounding double
 * quotes removed; *found says whether it was there. Errors: ERR_LIMIT for a
 * header over COOKIE_MAX_HEADER_BYTES, ERR_PARSE for the name given twice
 * ("duplicate cookie \"x\"", a cookie-tossing sign) or a value with characters
 * RFC 6265 forbids. */
int cookie_get(const struct str *headers, size_t nheaders, const char *name, struct str *value,
               bool *found, struct err *err) WARN_UNUSED;

/* Formats a Set-Cookie value (without "Set-Cookie: "):
 *   name=value; Path=/; Max-Age=N; HttpOnly; SameSite=Lax[; Secure]
 * max_age_s < 0 omits Max-Age (a browser-session cookie); 0 deletes the cookie.
 * name is the wire name (see cookie_wire_name). Arena-owned; NULL at the cap or
 * when value holds characters a cookie cannot carry. */
char *cookie_format(struct arena *a, const char *name, struct str value, bool tls,
                    int64_t max_age_s);

/* Returns the Cookie header value with the named cookies removed, so the
 * session cookie never reaches the backend. names is NULL-terminated. The
 * result may be empty (drop the header then). Arena-owned; STR_NULL at the cap. */
struct str cookie_strip(struct arena *a, struct str header, const char *const names[]);

#endif
