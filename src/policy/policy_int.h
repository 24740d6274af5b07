/* policy/policy_int.h - the compiled form of a policy, shared by lang.c (which
 * builds it) and eval.c (which walks it). Private to src/policy. */
#ifndef GH_POLICY_POLICY_INT_H
#define GH_POLICY_POLICY_INT_H

#include "policy.h"

#define POLICY_MAX_DEPTH 32
#define POLICY_MAX_NODES 20000
#define PNODE_NONE       UINT32_MAX

enum mkind { M_IS, M_PREFIX, M_SUFFIX, M_CONTAINS, M_IN, M_GLOB, M_REGEX, M_MEMBER };

struct matcher {
    enum mkind kind;
    bool icase;       /* values are lower-cased; inputs compared ASCII case-insensitively */
    struct str *vals; /* 1 value, or the set for M_IN */
    size_t nvals;
    struct regex *re; /* M_REGEX only */
};

/* String fields a matcher applies to. */
enum field {
    F_USER,
    F_EMAIL,
    F_DOMAIN,
    F_METHOD,
    F_PATH,
    F_HOST,
    F_IDP,
    F_DEV_ID,
    F_DEV_OWNER,
    F_DEV_SUBJECT,
    F_DEV_ISSUER,
    F_DEV_SERIAL,
    F_DEV_FINGERPRINT,
    F_DEV_SAN,
    F_GROUPS,
    F_CLAIM,
    F_HEADER,
};

enum op {
    OP_ALL,
    OP_ANY,
    OP_NOT,
    OP_AUTH, /* want */
    OP_STR,  /* field, m, name (claim/header) */
    OP_DEV_PRESENT,
    OP_DEV_TRUSTED,
    OP_DEV_OWNER_IS_USER, /* want */
    OP_IP,                /* cidrs */
    OP_TIME,              /* tm */
    OP_OPA,               /* opa index */
};

struct cidr {
    int family;
    unsigned bits;
    unsigned char addr[16];
};

struct tzinfo;

struct ptime {
    uint8_t weekdays;        /* bit 0 = Sunday; 0x7f = every day */
    int start_min, end_min;  /* [start, end) minutes of the day; -1 = any time */
    const struct tzinfo *tz; /* NULL = UTC */
};

struct pnode {
    uint8_t op;
    uint8_t field;
    bool want;
    uint32_t end;    /* index one past this subtree */
    struct str name; /* claim name, header name (lower-cased) */
    const struct matcher *m;
    const struct cidr *cidrs;
    size_t ncidrs;
    const struct ptime *tm;
    unsigned opa;
};

struct prule {
    char *id;
    char *reason;
    bool deny;
    uint32_t root; /* PNODE_NONE = always matches */
    int line;
    /* Prefilters from the rule's top-level conjuncts, checked before walking the
     * tree: a required exact host (hash of the lower-cased name) and required
     * group memberships (a 64-bit mask of group-name hash bits). */
    bool has_host;
    uint32_t host_hash;
    uint64_t group_mask;
    struct str path_prefix; /* a required path prefix (case-sensitive), or empty */
};

/* FNV-1a, optionally ASCII-lower-casing; used for the prefilters. */
static inline uint32_t policy_hash(const char *p, size_t n, bool lower)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (lower && c >= 'A' && c <= 'Z') {
            c = (unsigned char)(c + 32);
        }
        h = (h ^ c) * 16777619u;
    }
    return h;
}

/* Rule lists (indices, in file order) for one host hash: the rules that require that
 * host plus those that require none. A request only walks its host's lists. */
struct host_rules {
    uint32_t hash;
    uint32_t *deny, *allow;
    size_t ndeny, nallow;
};

struct policy {
    char *file;
    enum policy_mode mode;
    struct prule *rules;
    size_t nrules;
    struct pnode *nodes;
    size_t nnodes;
    char *opa_paths[POLICY_MAX_OPA];
    size_t nopa;
    struct arena *arena;      /* every compiled string, matcher, cidr, time */
    struct matcher **regexes; /* to regex_free */
    size_t nregexes;
    struct tzinfo **tzs;
    size_t ntzs;
    struct host_rules all;      /* every rule (trace mode) */
    struct host_rules any_host; /* rules without a required host */
    struct host_rules *by_host; /* sorted by hash */
    size_t nhosts;
    struct str *claim_names; /* the distinct claims the rules test (policy_uses_claim) */
    size_t nclaim_names;
};

/* Builds the per-host rule lists once the rules are compiled (lang.c). */
void policy_index_build(struct policy *p);

/* Time zones (tz.c): loads /usr/share/zoneinfo/<name>. NULL with a message in err. */
struct tzinfo *tz_load(const char *name, struct err *err);
void tz_free(struct tzinfo *tz);
const char *tz_name(const struct tzinfo *tz);
/* Seconds east of UTC at unix time t. */
int32_t tz_offset(const struct tzinfo *tz, int64_t t);

/* Regexes (regex.c, PCRE2). Limits: a pattern of at most REGEX_MAX_PATTERN bytes and
 * REGEX_PARENS_NEST_LIMIT nested groups; a match examines at most REGEX_MAX_INPUT
 * bytes within the match, depth and heap limits and a JIT stack of at most
 * REGEX_JIT_STACK_BYTES per thread. */
#define REGEX_MAX_PATTERN       4096
#define REGEX_PARENS_NEST_LIMIT 64
#define REGEX_MAX_INPUT         8192
#define REGEX_MATCH_LIMIT       100000
#define REGEX_DEPTH_LIMIT       1000
#define REGEX_HEAP_LIMIT_KIB    1024
#define REGEX_JIT_STACK_BYTES   (256 * 1024)
struct regex;
/* Compiles pat (len bytes; icase: case-insensitive). NULL on error, with PCRE2's
 * message in msg and the pattern offset it points at in *erroff. Free with
 * regex_free() (NULL is a no-op). The result is read-only and thread-safe. */
struct regex *regex_compile(const char *pat, size_t len, bool icase, char *msg, size_t size,
                            size_t *erroff);
void regex_free(struct regex *re);
/* 1: s matches, 0: it does not, -1: s is longer than REGEX_MAX_INPUT or a limit was
 * hit (the caller fails closed). Allocates per-thread match state on first use. */
int regex_match(const struct regex *re, struct str s);

/* Matching helpers (eval.c), also used by the tests: 1 match, 0 no match, -1 could
 * not be evaluated (a regex limit). */
int eval_matcher_match(const struct matcher *m, struct str s);
bool eval_glob_match(struct str pat, struct str s, bool icase);
/* "10.0.0.0/8" into buf. */
void policy_ip_format_cidr(const struct cidr *c, char *buf, size_t size);
/* "10.0.0.0/8", "2001:db8::/32" or a bare address (a /32 or /128). Host bits are
 * cleared (*host_bits tells whether there were any). */
bool policy_cidr_parse(const char *s, struct cidr *out, bool *host_bits);
bool policy_cidr_match(const struct cidr *c, const struct policy_ip *ip);

#endif
