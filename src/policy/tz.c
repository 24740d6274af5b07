/* policy/tz.c - UTC offsets for the `time` criterion without touching TZ or
 * localtime (neither is thread-safe to switch per policy). Reads the TZif file
 * from /usr/share/zoneinfo once at policy load: its transition table, then its
 * POSIX TZ footer (e.g. "CET-1CEST,M3.5.0,M10.5.0/3") for instants past the table. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

#define TZ_DIR "/usr/share/zoneinfo/"

struct tzrule {
    int month, week, wday; /* Mm.w.d */
    int32_t secs;          /* local time of the change */
};

struct tzinfo {
    char *name;
    int64_t *trans;     /* transition instants, ascending */
    int32_t *trans_off; /* offset in force from trans[i] */
    size_t ntrans;
    int32_t first_off; /* before the first transition */
    bool has_footer, footer_dst;
    int32_t std_off, dst_off;
    struct tzrule start, end;
};

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* POSIX offset "[+-]hh[:mm[:ss]]"; returns seconds or false. */
static bool parse_hms(const char **sp, int32_t *out)
{
    const char *s = *sp;
    int sign = 1;
    long v[3] = { 0, 0, 0 };
    int n = 0;

    if (*s == '+' || *s == '-') {
        sign = *s == '-' ? -1 : 1;
        s++;
    }
    while (n < 3) {
        if (*s < '0' || *s > '9') {
            return false;
        }
        char *e;
        v[n++] = strtol(s, &e, 10);
        s = e;
        if (*s != ':') {
            break;
        }
        s++;
    }
    if (v[0] > 167 || v[1] > 59 || v[2] > 59) {
        return false;
    }
    *out = (int32_t)(sign * (v[0] * 3600 + v[1] * 60 + v[2]));
    *sp = s;
    return true;
}

static bool parse_name(const char **sp)
{
    const char *s = *sp;
    if (*s == '<') {
        const char *e = strchr(s, '>');
        if (!e) {
            return false;
        }
        *sp = e + 1;
        return true;
    }
    size_t n = 0;
    while ((s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= 'a' && s[n] <= 'z')) {
        n++;
    }
    if (n < 3) {
        return false;
    }
    *sp = s + n;
    return true;
}

static bool parse_rule(const char **sp, struct tzrule *r)
{
    const char *s = *sp;
    char *e;
    /* Only the Mm.w.d form: the Julian forms do not occur in the tz database's footers. */
    if (*s != 'M') {
        return false;
    }
    r->month = (int)strtol(s + 1, &e, 10);
    if (*e != '.') {
        return false;
    }
    r->week = (int)strtol(e + 1, &e, 10);
    if (*e != '.') {
        return false;
    }
    r->wday = (int)strtol(e + 1, &e, 10);
    s = e;
    if (r->month < 1 || r->month > 12 || r->week < 1 || r->week > 5 || r->wday < 0 || r->wday > 6) {
        return false;
    }
    r->secs = 7200;
    if (*s == '/') {
        s++;
        if (!parse_hms(&s, &r->secs)) {
            return false;
        }
    }
    *sp = s;
    return true;
}

static bool parse_footer(struct tzinfo *tz, const char *s)
{
    int32_t off;
    if (!parse_name(&s) || !parse_hms(&s, &off)) {
        return false;
    }
    tz->std_off = -off; /* POSIX counts west of Greenwich as positive */
    tz->has_footer = true;
    if (*s == '\0') {
        return true;
    }
    if (!parse_name(&s)) {
        return false;
    }
    tz->dst_off = tz->std_off + 3600;
    if (*s != ',' && *s != '\0') {
        if (!parse_hms(&s, &off)) {
            return false;
        }
        tz->dst_off = -off;
    }
    if (*s != ',') {
        return false;
    }
    s++;
    if (!parse_rule(&s, &tz->start) || *s != ',') {
        return false;
    }
    s++;
    if (!parse_rule(&s, &tz->end) || *s != '\0') {
        return false;
    }
    tz->footer_dst = true;
    return true;
}

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int64_t year_of(int64_t t)
{
    int64_t z = (t >= 0 ? t : t - 86399) / 86400 + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    return yoe + era * 400 + (m <= 2);
}

/* Local instant (seconds since epoch as if local were UTC) of rule r in year y. */
static int64_t rule_local(const struct tzrule *r, int64_t y)
{
    static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int64_t first = days_from_civil(y, r->month, 1);
    int wday_first = (int)(((first % 7) + 11) % 7); /* 1970-01-01 was a Thursday (4) */
    int day = 1 + (r->wday - wday_first + 7) % 7 + (r->week - 1) * 7;
    int dim =
        mdays[r->month - 1] + (r->month == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
    while (day > dim) {
        day -= 7;
    }
    return days_from_civil(y, r->month, day) * 86400 + r->secs;
}

int32_t tz_offset(const struct tzinfo *tz, int64_t t)
{
    if (!tz) {
        return 0;
    }
    if (tz->ntrans > 0 && t < tz->trans[0]) {
        return tz->first_off;
    }
    if (tz->ntrans > 0 && (t < tz->trans[tz->ntrans - 1] || !tz->has_footer)) {
        size_t lo = 0, hi = tz->ntrans; /* last transition <= t */
        while (hi - lo > 1) {
            size_t mid = (lo + hi) / 2;
            if (tz->trans[mid] <= t) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        return tz->trans_off[lo];
    }
    if (!tz->has_footer) {
        return tz->first_off;
    }
    if (!tz->footer_dst) {
        return tz->std_off;
    }
    int64_t y = year_of(t + tz->std_off);
    int64_t start = rule_local(&tz->start, y) - tz->std_off;
    int64_t end = rule_local(&tz->end, y) - tz->dst_off;
    bool dst = start < end ? (t >= start && t < end) : !(t >= end && t < start);
    return dst ? tz->dst_off : tz->std_off;
}

void tz_free(struct tzinfo *tz)
{
    if (!tz) {
        return;
    }
    free(tz->name);
    free(tz->trans);
    free(tz->trans_off);
    free(tz);
}

const char *tz_name(const struct tzinfo *tz)
{
    return tz ? tz->name : "UTC";
}

static bool valid_tz_name(const char *name)
{
    if (!*name || name[0] == '/' || strstr(name, "..") || strlen(name) > 64) {
        return false;
    }
    for (const char *c = name; *c; c++) {
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '/' || *c == '_' || *c == '-' || *c == '+')) {
            return false;
        }
    }
    return true;
}

static bool parse_tzif(struct tzinfo *tz, const unsigned char *b, size_t n)
{
    if (n < 44 || memcmp(b, "TZif", 4) != 0) {
        return false;
    }
    int version = b[4];
    const unsigned char *h = b;
    int tsize = 4;
    for (int pass = 0; pass < 2; pass++) {
        uint32_t isut = be32(h + 20), isstd = be32(h + 24), leap = be32(h + 28);
        uint32_t timecnt = be32(h + 32), typecnt = be32(h + 36), charcnt = be32(h + 40);
        size_t body = (size_t)timecnt * tsize + timecnt + (size_t)typecnt * 6 + charcnt +
                      (size_t)leap * (tsize + 4) + isstd + isut;
        if (typecnt == 0 || timecnt > 100000 || (size_t)(h - b) + 44 + body > n) {
            return false;
        }
        if (pass == 0 && version >= '2') {
            h += 44 + body; /* skip the 32-bit block: the 64-bit one follows */
            tsize = 8;
            if ((size_t)(h - b) + 44 > n || memcmp(h, "TZif", 4) != 0) {
                return false;
            }
            continue;
        }
        const unsigned char *p = h + 44;
        const unsigned char *idx = p + (size_t)timecnt * tsize;
        const unsigned char *types = idx + timecnt;
        tz->ntrans = timecnt;
        tz->trans = xcalloc(timecnt ? timecnt : 1, sizeof *tz->trans);
        tz->trans_off = xcalloc(timecnt ? timecnt : 1, sizeof *tz->trans_off);
        for (uint32_t i = 0; i < timecnt; i++) {
            tz->trans[i] = tsize == 8 ? be64(p + (size_t)i * 8) : (int32_t)be32(p + (size_t)i * 4);
            if (idx[i] >= typecnt) {
                return false;
            }
            tz->trans_off[i] = (int32_t)be32(types + (size_t)idx[i] * 6);
        }
        tz->first_off = (int32_t)be32(types);
        if (tsize == 8) {
            const unsigned char *f = h + 44 + body;
            if (f < b + n && *f == '\n') {
                const unsigned char *e = memchr(f + 1, '\n', (size_t)(b + n - f - 1));
                if (e && e > f + 1) {
                    char foot[128];
                    size_t fl = (size_t)(e - f - 1);
                    if (fl >= sizeof foot) {
                        return false;
                    }
                    memcpy(foot, f + 1, fl);
                    foot[fl] = '\0';
                    if (!parse_footer(tz, foot)) {
                        return false;
                    }
                }
            }
        }
        return true;
    }
    return false;
}

struct tzinfo *tz_load(const char *name, struct err *err)
{
    if (!valid_tz_name(name)) {
        err_set(err, ERR_CONFIG, "unknown time zone \"%s\"", name);
        return NULL;
    }
    char path[256];
    snprintf(path, sizeof path, "%s%s", TZ_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set(err, ERR_CONFIG, "unknown time zone \"%s\"", name);
        return NULL;
    }
    unsigned char *buf = xmalloc(1 << 20);
    size_t n = fread(buf, 1, 1 << 20, f);
    fclose(f);
    struct tzinfo *tz = xcalloc(1, sizeof *tz);
    tz->name = xstrdup(name);
    if (!parse_tzif(tz, buf, n)) {
        free(buf);
        tz_free(tz);
        err_set(err, ERR_CONFIG, "unknown time zone \"%s\" (unreadable zone file)", name);
        return NULL;
    }
    free(buf);
    return tz;
}
