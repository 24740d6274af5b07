/* policy/regex.c - the `regex:` matcher on PCRE2 with bounded cost. Patterns are
 * compiled at policy load under a compile context (pattern length, parenthesis
 * nesting; Debian's 2-byte link size caps the compiled size at 64 KiB), then
 * JIT-compiled; the code is read-only and shared by every worker thread. A match
 * runs under a per-thread match context (match, depth and heap limits, a bounded
 * JIT stack) on at most REGEX_MAX_INPUT bytes: hitting any limit is an error the
 * evaluator turns into a deny, never a silent "no match" under `not:`. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "policy_int.h"

struct regex {
    pcre2_code *code;
};

struct regex_tls {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t tls_key;

static void tls_free(void *arg)
{
    struct regex_tls *t = arg;
    if (!t) {
        return;
    }
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mc);
    pcre2_jit_stack_free(t->js);
    free(t);
}

static void init(void)
{
    if (pthread_key_create(&tls_key, tls_free) != 0) {
        abort();
    }
}

static struct regex_tls *tls_get(void)
{
    pthread_once(&once, init);
    struct regex_tls *t = pthread_getspecific(tls_key);
    if (t) {
        return t;
    }
    t = xcalloc(1, sizeof *t);
    /* One pair of offsets is enough: a policy only asks whether it matched. */
    t->md = pcre2_match_data_create(1, NULL);
    t->mc = pcre2_match_context_create(NULL);
    t->js = pcre2_jit_stack_create(32 * 1024, REGEX_JIT_STACK_BYTES, NULL);
    if (!t->md || !t->mc) {
        abort(); /* out of memory: as xmalloc does */
    }
    pcre2_set_match_limit(t->mc, REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(t->mc, REGEX_DEPTH_LIMIT);
    pcre2_set_heap_limit(t->mc, REGEX_HEAP_LIMIT_KIB);
    if (t->js) {
        pcre2_jit_stack_assign(t->mc, NULL, t->js);
    }
    pthread_setspecific(tls_key, t);
    return t;
}

struct regex *regex_compile(const char *pat, size_t len, bool icase, char *msg, size_t size,
                            size_t *erroff)
{
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!cc) {
        abort();
    }
    pcre2_set_max_pattern_length(cc, REGEX_MAX_PATTERN);
    pcre2_set_parens_nest_limit(cc, REGEX_PARENS_NEST_LIMIT);
    /* POSIX ERE semantics where PCRE differs: `$` only at the very end, `.` matches
     * any byte. No UTF mode (inputs are bytes; invalid UTF-8 would be an error) and
     * no \C. A pattern may lower the match limits with (*LIMIT_...) but never raise
     * them above the context's. */
    uint32_t opts = PCRE2_DOLLAR_ENDONLY | PCRE2_DOTALL | PCRE2_NEVER_UTF |
                    PCRE2_NEVER_BACKSLASH_C | (icase ? PCRE2_CASELESS : 0);
    int rc = 0;
    PCRE2_SIZE off = 0;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)pat, len, opts, &rc, &off, cc);
    pcre2_compile_context_free(cc);
    *erroff = off;
    if (!code) {
        PCRE2_UCHAR buf[160];
        if (pcre2_get_error_message(rc, buf, sizeof buf) < 0) {
            snprintf((char *)buf, sizeof buf, "error %d", rc);
        }
        snprintf(msg, size, "%s", (const char *)buf);
        return NULL;
    }
    /* JIT when the platform has it; the interpreter (with its depth and heap
     * limits) otherwise. A JIT failure is not an error. */
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    struct regex *re = xmalloc(sizeof *re);
    re->code = code;
    return re;
}

void regex_free(struct regex *re)
{
    if (!re) {
        return;
    }
    pcre2_code_free(re->code);
    free(re);
}

int regex_match(const struct regex *re, struct str s)
{
    if (s.len > REGEX_MAX_INPUT) {
        return -1;
    }
    struct regex_tls *t = tls_get();
    int rc = pcre2_match(re->code, (PCRE2_SPTR)(s.p ? s.p : ""), s.len, 0, 0, t->md, t->mc);
    if (rc >= 0) {
        return 1; /* 0: matched, the offsets did not fit (they are not needed) */
    }
    if (rc == PCRE2_ERROR_NOMATCH) {
        return 0;
    }
    /* PCRE2_ERROR_MATCHLIMIT, _DEPTHLIMIT, _HEAPLIMIT, _JIT_STACKLIMIT, _NOMEMORY. */
    return -1;
}
