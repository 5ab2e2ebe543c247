// util: error reporting, checked allocation and I/O, atomic file writes, number conversions.
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

// "a FIFO", "a directory", ... for messages about a file of this st_mode.
static const char *file_kind(mode_t m) {
    return S_ISREG(m) ? "a regular file" : S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO"
         : S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket"
         : S_ISLNK(m) ? "a symbolic link" : "of an unknown type";
}

int open_regular_file(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return givt_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc = 0, flags;
    if (fstat(fd, &st) != 0) rc = givt_fail("%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode)) rc = givt_fail("%s: not a regular file (%s)", path, file_kind(st.st_mode));
    else if ((flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
        rc = givt_fail("%s: cannot make the descriptor blocking: %s", path, strerror(errno));
    if (rc == 0) return fd;
    close(fd);
    return -1;
}

int pread_full(int fd, const char *path, void *buf, size_t n, int64_t off) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return givt_fail("%s: read failed at byte %lld: %s", path, (long long)off, strerror(errno));
        if (got == 0)
            return givt_fail("%s: the file ends at byte %lld, before the %zu bytes needed there: it was truncated or "
                             "rewritten while in use", path, (long long)off, n);
        p += got;
        n -= (size_t)got;
        off += got;
    }
    return 0;
}

static int too_large(const char *path, size_t max_bytes) {
    char h[32];
    return givt_fail("%s: larger than the limit of %s (%zu bytes) for this file: not the file meant?", path,
                     human_bytes(h, (double)max_bytes), max_bytes);
}

// All of fd (at most max_bytes) into a NUL-terminated buffer grown as it fills, starting at cap.
static char *read_all(int fd, const char *path, size_t max_bytes, size_t cap, size_t *len_out) {
    size_t len = 0, limit = size_add(max_bytes, 2);  // room for one byte too many and the NUL
    char *buf = xmalloc(cap);
    for (;;) {
        if (len + 1 == cap) {
            cap = size_mul(cap, 2) < limit ? cap * 2 : limit;
            buf = xrealloc(buf, cap);
        }
        ssize_t got = read(fd, buf + len, cap - 1 - len);
        if (got < 0 && errno == EINTR) continue;
        if (got == 0) break;
        int bad = got < 0 ? givt_fail("%s: read failed: %s", path, strerror(errno))
                : (len += (size_t)got) > max_bytes ? too_large(path, max_bytes) : 0;
        if (bad) {
            free(buf);
            return NULL;
        }
    }
    buf[len] = '\0';
    *len_out = len;
    return buf;
}

char *read_file_text_max(const char *path, size_t max_bytes, size_t *len_out) {
    int fd = open_regular_file(path);
    if (fd < 0) return NULL;
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    if (fstat(fd, &st) != 0) givt_fail("%s: cannot stat: %s", path, strerror(errno));
    else if ((uint64_t)st.st_size > max_bytes) too_large(path, max_bytes);
    else buf = read_all(fd, path, max_bytes, (size_t)st.st_size + 64, &len);
    close(fd);
    if (buf && len_out) *len_out = len;
    return buf;
}

char *read_file_text(const char *path, size_t *len_out) {
    return read_file_text_max(path, GIVT_READ_FILE_MAX_BYTES, len_out);
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

// ---- atomic writes ------------------------------------------------------------------------
#define ATOMIC_TMP_PREFIX ".givt-tmp-"
#define ATOMIC_TMP_SUFFIX_LEN 6

// Writes through to path: a device or FIFO (atomic_open checked its type; the open file is checked
// again, so a swap in between is refused rather than written into), or, when in_system (a path of
// /dev or /proc: /dev/stdout redirected to a file), a regular file too, truncated first.
static int open_direct(AtomicFile *af, const char *path, int in_system) {
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | (in_system ? O_TRUNC : 0));
    if (fd < 0) return givt_fail("%s: cannot open for writing: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !(S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode) || (in_system && S_ISREG(st.st_mode)))) {
        close(fd);
        return givt_fail("%s: not a regular file, a character device or a FIFO: will not write into it", path);
    }
    af->fp = fdopen(fd, "wb");
    if (!af->fp) {
        int rc = givt_fail("%s: cannot open for writing: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    af->final_path = xstrdup(path);
    return 0;
}

// Is path's folder, symlinks resolved, /dev itself or in /proc (/dev/stdout, /dev/fd/N,
// /proc/self/fd/N)? No file is ever created or renamed there.
static int in_system_folder(const char *path) {
    char *copy = xstrdup(path), *dir = realpath(dirname(copy), NULL);
    int sys = dir && (!strcmp(dir, "/dev") || !strcmp(dir, "/proc") || !strncmp(dir, "/proc/", 6));
    free(dir);
    free(copy);
    return sys;
}

// A new "<dir of path>/.givt-tmp-<pid>-XXXXXX", created exclusively: a name that exists (a file, or a
// symlink planted there) is never opened, another suffix is tried.
static int open_temp(AtomicFile *af, const char *path) {
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static _Atomic unsigned long counter;
    char *copy = xstrdup(path), name[64], *tmp = NULL;
    const char *dir = dirname(copy);
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 100; attempt++) {
        uint64_t r = mix64((uint64_t)(time_now_s() * 1e9) ^ ((uint64_t)getpid() << 40) ^ counter++);
        char suffix[ATOMIC_TMP_SUFFIX_LEN + 1];
        for (int i = 0; i < ATOMIC_TMP_SUFFIX_LEN; i++, r /= 62) suffix[i] = alnum[r % 62];
        suffix[ATOMIC_TMP_SUFFIX_LEN] = '\0';
        snprintf(name, sizeof name, ATOMIC_TMP_PREFIX "%ld-%s", (long)getpid(), suffix);
        free(tmp);
        tmp = path_join(dir, name);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EEXIST) break;
    }
    int rc = fd < 0 ? givt_fail("%s: cannot create a temporary file in %s: %s", path, dir, strerror(errno)) : 0;
    free(copy);
    if (rc == 0 && !(af->fp = fdopen(fd, "wb"))) {
        rc = givt_fail("%s: cannot open %s: %s", path, tmp, strerror(errno));
        close(fd);
        unlink(tmp);
    }
    if (rc != 0) {
        free(tmp);
        return rc;
    }
    af->final_path = xstrdup(path);
    af->tmp_path = tmp;
    return 0;
}

int atomic_open(AtomicFile *af, const char *path) {
    memset(af, 0, sizeof *af);
    if (in_system_folder(path)) return open_direct(af, path, 1);
    struct stat st;
    if (stat(path, &st) != 0) {  // absent (or a dangling symlink, which the rename replaces)
        if (errno != ENOENT) return givt_fail("%s: cannot write: %s", path, strerror(errno));
        return open_temp(af, path);
    }
    if (S_ISREG(st.st_mode)) return open_temp(af, path);
    if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) return open_direct(af, path, 0);
    return givt_fail("%s: is %s, not a regular file: will not write over it", path, file_kind(st.st_mode));
}

// The name written to: the temporary, or path itself when writing through.
static const char *atomic_name(const AtomicFile *af) { return af->tmp_path ? af->tmp_path : af->final_path; }

int atomic_write(AtomicFile *af, const void *data, size_t n) {
    if (af->failed) return -1;
    if (n && fwrite(data, 1, n, af->fp) != n) {
        af->failed = 1;
        return givt_fail("%s: write failed: %s", atomic_name(af), strerror(errno));
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
    const char *name = atomic_name(af);
    int rc = af->failed ? -1 : 0;
    if (rc == 0 && fflush(af->fp) != 0) rc = givt_fail("%s: flush failed: %s", name, strerror(errno));
    if (rc == 0 && af->tmp_path && fsync(fileno(af->fp)) != 0)
        rc = givt_fail("%s: fsync failed: %s", name, strerror(errno));
    if (fclose(af->fp) != 0 && rc == 0) rc = givt_fail("%s: close failed: %s", name, strerror(errno));
    af->fp = NULL;
    if (af->tmp_path) {
        if (rc == 0 && rename(af->tmp_path, af->final_path) != 0)
            rc = givt_fail("%s: rename to %s failed: %s", af->tmp_path, af->final_path, strerror(errno));
        if (rc == 0) rc = fsync_dir_of(af->final_path);
        if (rc != 0) unlink(af->tmp_path);
    }
    atomic_free(af);
    return rc;
}

// "<digits>" that ends at end, without leading zeros, as a pid (0 when not one).
static long parse_pid(const char *s, const char *end) {
    long pid = 0;
    if (s == end || *s == '0' || end - s > 10) return 0;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9') return 0;
        pid = pid * 10 + (*s - '0');
    }
    return pid <= INT32_MAX ? pid : 0;
}

long atomic_temp_owner(const char *name) {
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    size_t n = strlen(base), plen = strlen(ATOMIC_TMP_PREFIX);
    if (strncmp(base, ATOMIC_TMP_PREFIX, plen) == 0) {  // ".givt-tmp-<pid>-XXXXXX"
        if (n < plen + ATOMIC_TMP_SUFFIX_LEN + 2) return 0;
        const char *dash = base + n - ATOMIC_TMP_SUFFIX_LEN - 1;
        for (const char *c = dash + 1; *c; c++)
            if (!isalnum((unsigned char)*c)) return 0;
        return *dash == '-' ? parse_pid(base + plen, dash) : 0;
    }
    const char *legacy = NULL;  // "<name>.tmp.<pid>": the last ".tmp."
    for (const char *t = strstr(base, ".tmp."); t; t = strstr(t + 1, ".tmp.")) legacy = t;
    return legacy && legacy > base ? parse_pid(legacy + 5, base + n) : 0;
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
