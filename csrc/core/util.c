// util: error reporting, checked allocation and I/O, atomic file writes, number conversions.
#define _GNU_SOURCE
#include "util.h"

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

int givt_fail(const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *msg = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (msg) vsnprintf(msg, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    if (!msg) msg = strdup(n < 0 ? "error message could not be formatted" : "out of memory formatting an error message");
    free(g_err);
    g_err = msg;
    return -1;
}

const char *givt_last_error(void) { return g_err && g_err[0] ? g_err : "unknown error"; }

void givt_die_at(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "givt: %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

int range_ok(int range, double lo, double hi, double v) {
    if ((range & RANGE_GE) && !(v >= lo)) return 0;
    if ((range & RANGE_GT) && !(v > lo)) return 0;
    if ((range & RANGE_LE) && !(v <= hi)) return 0;
    if ((range & RANGE_LT) && !(v < hi)) return 0;
    return 1;
}

const char *range_text(int range, double lo, double hi, char *buf, size_t n) {
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

void format_double(double v, char *buf, size_t n) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

void *xmalloc_at(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) givt_die_at(file, line, "out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc_at(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) givt_die_at(file, line, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *xrealloc_at(void *p, size_t n, const char *file, int line) {
    void *q = realloc(p, n ? n : 1);
    if (!q) givt_die_at(file, line, "out of memory reallocating to %zu bytes", n);
    return q;
}

char *xstrdup_at(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *d = xmalloc_at(n, file, line);
    memcpy(d, s, n);
    return d;
}

char *read_file_text(const char *path, size_t *len_out) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        givt_fail("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, fp)) > 0) {
        len += got;
        if (cap - len - 1 == 0) {
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
    }
    int err = ferror(fp);
    fclose(fp);
    if (err) {
        free(buf);
        givt_fail("%s: read error", path);
        return NULL;
    }
    buf[len] = '\0';
    if (len_out) *len_out = len;
    return buf;
}

int mkdir_p(const char *path) {
    if (!path[0]) return givt_fail("cannot create a directory with an empty name");
    char *p = xstrdup(path);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0') continue;
        char saved = *s;
        *s = '\0';
        struct stat st;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) rc = givt_fail("%s: cannot create directory: %s", p, strerror(errno));
        else if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) rc = givt_fail("%s: exists and is not a directory", p);
        *s = saved;
        if (rc || saved == '\0') break;
    }
    free(p);
    return rc;
}

int path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir);
    char *p = xmalloc(n + strlen(name) + 2);
    sprintf(p, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", name);
    return p;
}

int fsync_dir_of(const char *path) {
    char *copy = xstrdup(path);
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        int rc = givt_fail("%s: cannot open directory to fsync: %s", dir, strerror(errno));
        free(copy);
        return rc;
    }
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL) rc = givt_fail("%s: fsync failed: %s", dir, strerror(errno));
    close(fd);
    free(copy);
    return rc;
}

int atomic_open(AtomicFile *af, const char *path) {
    memset(af, 0, sizeof *af);
    af->final_path = xstrdup(path);
    size_t n = strlen(path) + 32;
    af->tmp_path = xmalloc(n);
    snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    af->fp = fopen(af->tmp_path, "wb");
    if (!af->fp) {
        int rc = givt_fail("%s: cannot create: %s", af->tmp_path, strerror(errno));
        free(af->final_path);
        free(af->tmp_path);
        af->final_path = af->tmp_path = NULL;
        return rc;
    }
    return 0;
}

int atomic_write(AtomicFile *af, const void *data, size_t n) {
    if (af->failed) return -1;
    if (n && fwrite(data, 1, n, af->fp) != n) {
        af->failed = 1;
        return givt_fail("%s: write failed: %s", af->tmp_path, strerror(errno));
    }
    return 0;
}

static void atomic_free(AtomicFile *af) {
    free(af->final_path);
    free(af->tmp_path);
    af->final_path = af->tmp_path = NULL;
    af->fp = NULL;
}

void atomic_abort(AtomicFile *af) {
    if (af->fp) fclose(af->fp);
    if (af->tmp_path) unlink(af->tmp_path);
    atomic_free(af);
}

int atomic_commit(AtomicFile *af) {
    int rc = af->failed ? -1 : 0;
    if (rc == 0 && fflush(af->fp) != 0) rc = givt_fail("%s: flush failed: %s", af->tmp_path, strerror(errno));
    if (rc == 0 && fsync(fileno(af->fp)) != 0)
        rc = givt_fail("%s: fsync failed: %s", af->tmp_path, strerror(errno));
    if (fclose(af->fp) != 0 && rc == 0) rc = givt_fail("%s: close failed: %s", af->tmp_path, strerror(errno));
    af->fp = NULL;
    if (rc == 0 && rename(af->tmp_path, af->final_path) != 0)
        rc = givt_fail("%s: rename to %s failed: %s", af->tmp_path, af->final_path, strerror(errno));
    if (rc == 0) rc = fsync_dir_of(af->final_path);
    if (rc != 0) unlink(af->tmp_path);
    atomic_free(af);
    return rc;
}

// ---- float16 / bfloat16 -------------------------------------------------------------------
static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));  // inf / nan
    if (exp == 0) {
        if (mant == 0) return bits_f32(sign);
        float v = ldexpf((float)mant, -24);  // subnormal
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0);  // inf / nan
    if (a >= 0x477ff000u) return sign | 0x7c00;                                  // overflow
    if (a < 0x38800000u) {                                                       // subnormal or 0
        float v = bits_f32(a) * 16777216.0f;  // scale by 2^24: exact
        return sign | (uint16_t)lrintf(v);    // lrintf rounds to nearest even
    }
    uint32_t mant = a & 0x7fffff, exp = (a >> 23) - 112;
    uint32_t r = (exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return sign | (uint16_t)r;
}

float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet nan
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

// ---- rng ----------------------------------------------------------------------------------
uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t splitmix64(uint64_t *x) { return mix64(*x += 0x9e3779b97f4a7c15ull); }

void rng_seed(Rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_next(Rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double rng_uniform(Rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

double rng_normal(Rng *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

double time_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double memory_available_bytes(void) {
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

const char *human_bytes(char *buf, double bytes) {
    const double KiB = 1024.0, MiB = KiB * KiB, GiB = MiB * KiB, TiB = GiB * KiB;
    if (bytes >= (double)SIZE_MAX) snprintf(buf, 32, "more than 16 EiB");
    else if (bytes >= TiB) snprintf(buf, 32, "%.2f TiB", bytes / TiB);
    else if (bytes >= GiB) snprintf(buf, 32, "%.2f GiB", bytes / GiB);
    else if (bytes >= MiB) snprintf(buf, 32, "%.1f MiB", bytes / MiB);
    else snprintf(buf, 32, "%.0f KiB", bytes / KiB);
    return buf;
}

int parse_long_option(const char *opt, const char *v, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi)
        return givt_fail("%s %s: expected a whole number in [%ld, %ld]", opt, v ? v : "(missing)", lo, hi);
    *out = x;
    return 0;
}
