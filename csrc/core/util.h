// util: error reporting, value ranges, checked allocation and I/O, atomic file writes, float16/bfloat16
// conversions, random numbers.
#ifndef GIVT_UTIL_H
#define GIVT_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// ---- errors -------------------------------------------------------------------------------
// Library functions that can fail on user input return 0 on success and -1 on failure, after
// recording a one-line message that names the thing to fix; programs print it and exit(1).
// The message is kept whole, however long (a long value echoed in it does not cut off the reason
// after it), and givt_last_error() may be passed to givt_fail to prefix the previous message.
int givt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *givt_last_error(void);
// For internal invariants and out-of-memory: print "file:line: message" and exit(1).
void givt_die_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
#define givt_die(...) givt_die_at(__FILE__, __LINE__, __VA_ARGS__)

// ---- checked sizes ------------------------------------------------------------------------
// Counts and byte sizes derived from user input are computed with these: they saturate at SIZE_MAX
// instead of wrapping, and SIZE_MAX stays SIZE_MAX through further products and sums, so one
// comparison against a limit (or an allocation, which then fails) catches an overflow anywhere.
static inline size_t size_mul(size_t a, size_t b) {
    size_t r;
    return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}
static inline size_t size_add(size_t a, size_t b) {
    size_t r;
    return __builtin_add_overflow(a, b, &r) ? SIZE_MAX : r;
}
static inline size_t size_mul3(size_t a, size_t b, size_t c) { return size_mul(size_mul(a, b), c); }

// ---- value ranges ---------------------------------------------------------------------------
// An allowed range: flags against lo / hi (RANGE_GE | RANGE_LE: lo <= v <= hi). Every configuration
// key (model.h's GIVT_CONFIG_KEYS, train_config.c's table) is checked and described with these.
enum { RANGE_GE = 1, RANGE_GT = 2, RANGE_LE = 4, RANGE_LT = 8 };
int range_ok(int range, double lo, double hi, double v);  // NaN fails every bound
// "in [1, 65536]", "> 0", "in [0, 1)", ">= 0" (empty without flags) into buf; returns buf.
const char *range_text(int range, double lo, double hi, char *buf, size_t n);
// The shortest %g text of v that reads back (strtod) to exactly v.
void format_double(double v, char *buf, size_t n);

// ---- memory -------------------------------------------------------------------------------
// Out of memory is fatal: these print the caller's file:line and exit(1) instead of returning NULL.
void *xmalloc_at(size_t n, const char *file, int line);
void *xcalloc_at(size_t count, size_t size, const char *file, int line);
void *xrealloc_at(void *p, size_t n, const char *file, int line);
char *xstrdup_at(const char *s, const char *file, int line);
#define xmalloc(n) xmalloc_at((n), __FILE__, __LINE__)
#define xcalloc(c, s) xcalloc_at((c), (s), __FILE__, __LINE__)
#define xrealloc(p, n) xrealloc_at((p), (n), __FILE__, __LINE__)
#define xstrdup(s) xstrdup_at((s), __FILE__, __LINE__)

// ---- files --------------------------------------------------------------------------------
// Reads a whole file into a NUL-terminated buffer; NULL (with givt_fail) on error.
char *read_file_text(const char *path, size_t *len_out);
// Atomic write: data goes to "path.tmp.<pid>", is flushed and fsync'd, then renamed over path,
// and the directory is fsync'd. A crash leaves either the old file or the new one, never half.
typedef struct {
    FILE *fp;
    char *final_path;
    char *tmp_path;
    int failed;
} AtomicFile;
int atomic_open(AtomicFile *af, const char *path);
int atomic_write(AtomicFile *af, const void *data, size_t n);
int atomic_commit(AtomicFile *af);  // flush, fsync, rename; frees af
void atomic_abort(AtomicFile *af);  // removes the temporary file; frees af
int fsync_dir_of(const char *path);
int path_exists(const char *path);
// mkdir -p: creates path and its missing parents (0 if it already is a directory).
int mkdir_p(const char *path);
// "<dir>/<name>" (no doubled slash), malloc'd.
char *path_join(const char *dir, const char *name);

// ---- number formats -----------------------------------------------------------------------
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);   // round to nearest even
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);  // round to nearest even

// ---- random numbers (deterministic, portable) ----------------------------------------------
typedef struct {
    uint64_t s[4];
} Rng;  // xoshiro256**
void rng_seed(Rng *r, uint64_t seed);  // the four state words from splitmix64 of seed
uint64_t rng_next(Rng *r);
double rng_uniform(Rng *r);  // [0, 1)
double rng_normal(Rng *r);   // standard normal (Box-Muller, no cached second value)
// splitmix64's output function: a bijective 64-bit mix. splitmix64 (rng_seed) applies it to
// state += 0x9e3779b97f4a7c15; data.c hashes (seed, salt, index) into Rng seeds with it.
uint64_t mix64(uint64_t z);

double time_now_s(void);

// A command-line option's whole-number value v in [lo, hi] into *out; -1 (givt_fail "OPT V: expected a
// whole number in [LO, HI]") when v is missing, not a number, or out of range.
int parse_long_option(const char *opt, const char *v, long lo, long hi, long *out);

// Memory this machine can give a new allocation now (MemAvailable of /proc/meminfo, else the
// physical memory), in bytes; 0 when unknown.
double memory_available_bytes(void);
// "1.25 GiB", "12.3 MiB" or, for SIZE_MAX-saturated sizes, "more than 16 EiB", into buf[32].
const char *human_bytes(char *buf, double bytes);

#define GIVT_LOG_2PI 1.8378770664093454836  // log(2*pi)

#endif
