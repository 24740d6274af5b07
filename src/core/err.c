/* core/err.c - the error table and err_set(). */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

int err_set(struct err *e, enum err_code c, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        e->code = c;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return (int)c;
}

const char *err_str(enum err_code c)
{
    switch (c) {
    case ERR_OK:
        return "ok";
#define X(name, text)                                                                              \
    case ERR_##name:                                                                               \
        return text;
        ERR_MAP(X)
#undef X
    }
    return "unknown error";
}
