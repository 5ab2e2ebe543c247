// util: error reporting, value ranges, checked allocation, time, options, memory size.
#define _GNU_SOURCE
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// The last message, whole (no length limit, so a long value echoed in it never hides the reason
// at its end). Formatted into a new buffer before the old one is freed, so givt_last_error() may
// itself be an argument: givt_fail("%s: %s", path, givt_last_error()).
static _Thread_local char *g_err;

// The bytes of msg with each control character (< 0x20, 0x7f) as \n, \t, \r or \xNN: a new string, or
// msg itself when it has none. NULL when out of memory (msg is then still the caller's).
static char *escape_controls(char *msg) {
    size_t extra = 0, n = 0;
    for (; msg[n]; n++)
        if ((unsigned char)msg[n] < 0x20 || msg[n] == 0x7f) extra += 3;
    if (extra == 0) return msg;
    char *out = malloc(n + extra + 1), *o = out;
    if (!out) return NULL;
    for (const unsigned char *c = (const unsigned char *)msg; *c; c++) {
        if (*c >= 0x20 && *c != 0x7f) *o++ = (char)*c;
        else if (*c == '\n') o += sprintf(o, "\\n");
        else if (*c == '\t') o += sprintf(o, "\\t");
        else if (*c == '\r') o += sprintf(o, "\\r");
        else o += sprintf(o, "\\x%02x", *c);
    }
    *o = '\0';
    free(msg);
    return out;
}

// fmt formatted into a new string with its control characters escaped; NULL when out of memory
// or unformattable (*why then says which).
static char *format_escaped(const char **why, const char *fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    char *msg = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (msg) vsnprintf(msg, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    char *esc = msg ? escape_controls(msg) : NULL;
    if (!esc) free(msg);
    *why = n < 0 ? "error message could not be formatted" : "out of memory formatting an error message";
    return esc;
}

int givt_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const char *why;
    char *msg = format_escaped(&why, fmt, ap);
    va_end(ap);
    if (!msg) msg = strdup(why);
    free(g_err);
    g_err = msg;
    return -1;
}

const char *givt_last_error(void) { return g_err && g_err[0] ? g_err : "unknown error"; }

void givt_error_clear(void) {
    free(g_err);
    g_err = NULL;
}

void givt_die_at(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const char *why;
    char *msg = format_escaped(&why, fmt, ap);
    va_end(ap);
    fprintf(stderr, "givt: %s:%d: %s\n", file, line, msg ? msg : why);
    free(msg);
    exit(1);
}

int util_range_ok(int range, double lo, double hi, double v) {
    if ((range & RANGE_GE) && !(v >= lo)) return 0;
    if ((range & RANGE_GT) && !(v > lo)) return 0;
    if ((range & RANGE_LE) && !(v <= hi)) return 0;
    if ((range & RANGE_LT) && !(v < hi)) return 0;
    return 1;
}

const char *util_range_text(int range, double lo, double hi, char *buf, size_t n) {
    int low = range & (RANGE_GE | RANGE_GT), high = range & (RANGE_LE | RANGE_LT);
    if (low && high)
        snprintf(buf, n, "in %c%.15g, %.15g%c", (range & RANGE_GE) ? '[' : '(', lo, hi, (range & RANGE_LE) ? ']' : ')');
    else if (low)
        snprintf(buf, n, "%s %.15g", (range & RANGE_GE) ? ">=" : ">", lo);
    else if (high)
        snprintf(buf, n, "%s %.15g", (range & RANGE_LE) ? "<=" : "<", hi);
    else
        buf[0] = '\0';
    return buf;
}

void util_format_double(double v, char *buf, size_t n) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

void *util_xmalloc_at(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) givt_die_at(file, line, "out of memory allocating %zu bytes", n);
    return p;
}

void *util_xcalloc_at(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) givt_die_at(file, line, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *util_xrealloc_at(void *p, size_t n, const char *file, int line) {
    void *q = realloc(p, n ? n : 1);
    if (!q) givt_die_at(file, line, "out of memory reallocating to %zu bytes", n);
    return q;
}

char *util_xstrdup_at(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *d = util_xmalloc_at(n, file, line);
    memcpy(d, s, n);
    return d;
}

double util_time_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double util_memory_available_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    if (f) fclose(f);
    if (kb > 0) return kb * 1024.0;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (double)pages * (double)page : 0.0;
}

const char *util_human_bytes(char *buf, double bytes) {
    const double KiB = 1024.0, MiB = KiB * KiB, GiB = MiB * KiB, TiB = GiB * KiB;
    if (bytes >= (double)SIZE_MAX) snprintf(buf, 32, "more than 16 EiB");
    else if (bytes >= TiB) snprintf(buf, 32, "%.2f TiB", bytes / TiB);
    else if (bytes >= GiB) snprintf(buf, 32, "%.2f GiB", bytes / GiB);
    else if (bytes >= MiB) snprintf(buf, 32, "%.1f MiB", bytes / MiB);
    else snprintf(buf, 32, "%.0f KiB", bytes / KiB);
    return buf;
}

int util_parse_long_option(const char *opt, const char *v, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi)
        return givt_fail("%s %s: expected a whole number in [%ld, %ld]", opt, v ? v : "(missing)", lo, hi);
    *out = x;
    return 0;
}

// ---- "did you mean" -------------------------------------------------------------------------
static int levenshtein(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    int *row = xmalloc((lb + 1) * sizeof *row);
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    int d = row[lb];
    free(row);
    return d;
}

// "learning_rate" -> "lr"; empty when the name has no '_'.
static void initials(const char *s, char *out, size_t n) {
    size_t k = 0;
    if (!strchr(s, '_')) {
        out[0] = '\0';
        return;
    }
    for (const char *p = s; *p && k + 1 < n; p++)
        if (*p != '_' && (p == s || p[-1] == '_')) out[k++] = *p;
    out[k] = '\0';
}

int util_name_distance(const char *typed, const char *valid) {
    char it[64], iv[64];
    initials(typed, it, sizeof it);
    initials(valid, iv, sizeof iv);
    if ((it[0] && !strcmp(it, valid)) || (iv[0] && !strcmp(iv, typed))) return 1;
    int d = levenshtein(typed, valid);
    size_t lt = strlen(typed), lv = strlen(valid);
    const char *shorter = lt < lv ? typed : valid, *longer = lt < lv ? valid : typed;
    size_t diff = lt < lv ? lv - lt : lt - lv;
    if (strlen(shorter) >= 3 && strstr(longer, shorter) && 1 + (int)(diff / 3) < d) d = 1 + (int)(diff / 3);
    return d;
}

const char *util_nearest_name(const char *typed, const char *const *names, int n, int max_distance) {
    const char *best = NULL;
    int best_d = max_distance + 1;
    for (int i = 0; i < n; i++) {
        int d = util_name_distance(typed, names[i]);
        if (d < best_d) best_d = d, best = names[i];
    }
    return best;
}
