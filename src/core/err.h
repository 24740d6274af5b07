/* core/err.h - error codes for the machine, messages for the human.
 * Every fallible function returns 0/ERR_* (or NULL) and may fill a struct err. */
#ifndef GH_CORE_ERR_H
#define GH_CORE_ERR_H

#define PRINTF(f, a) __attribute__((format(printf, f, a)))
#define WARN_UNUSED  __attribute__((warn_unused_result))

#define ERR_MAP(X)                                                                                 \
    X(NOMEM, "out of memory")                                                                      \
    X(LIMIT, "limit exceeded")                                                                     \
    X(PARSE, "malformed input")                                                                    \
    X(CONFIG, "invalid configuration")                                                             \
    X(CRYPTO, "verification failed")                                                               \
    X(IO, "input/output error")                                                                    \
    X(NOTFOUND, "not found")

enum err_code {
    ERR_OK = 0,
#define X(name, text) ERR_##name,
    ERR_MAP(X)
#undef X
};

struct err {
    enum err_code code;
    char msg[256];
};

/* Fills e (may be NULL) and returns c. */
int err_set(struct err *e, enum err_code c, const char *fmt, ...) PRINTF(3, 4);
/* Static text for a code. */
const char *err_str(enum err_code c);

#endif
