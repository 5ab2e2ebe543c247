// util: error reporting, checked sizes, value ranges, checked allocation, time, command-line
// numbers, the machine's free memory. Files are fs.h, float16/bfloat16 half.h, random numbers rng.h.
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
// Bytes echoed from a file cannot break the one line: control characters (below 0x20, and 0x7f) are
// stored escaped, as \n, \t, \r or \xNN (backslashes are kept as they are, so a message that
// already went through givt_fail is not escaped twice). Join parts of a message with "; ", not "\n".
int givt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *givt_last_error(void);
// Frees the calling thread's last message (givt_last_error() then says "unknown error"): a thread that
// may have failed calls it before it ends, so that its message does not leak.
void givt_error_clear(void);
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
int util_range_ok(int range, double lo, double hi, double v);  // NaN fails every bound
// "in [1, 65536]", "> 0", "in [0, 1)", ">= 0" (empty without flags) into buf; returns buf.
const char *util_range_text(int range, double lo, double hi, char *buf, size_t n);
// The shortest %g text of v that reads back (strtod) to exactly v.
void util_format_double(double v, char *buf, size_t n);

// ---- memory -------------------------------------------------------------------------------
// Out of memory is fatal: these print the caller's file:line and exit(1) instead of returning NULL.
void *util_xmalloc_at(size_t n, const char *file, int line);
void *util_xcalloc_at(size_t count, size_t size, const char *file, int line);
void *util_xrealloc_at(void *p, size_t n, const char *file, int line);
char *util_xstrdup_at(const char *s, const char *file, int line);
#define xmalloc(n) util_xmalloc_at((n), __FILE__, __LINE__)
#define xcalloc(c, s) util_xcalloc_at((c), (s), __FILE__, __LINE__)
#define xrealloc(p, n) util_xrealloc_at((p), (n), __FILE__, __LINE__)
#define xstrdup(s) util_xstrdup_at((s), __FILE__, __LINE__)

double util_time_now_s(void);

// A command-line option's whole-number value v in [lo, hi] into *out; -1 (givt_fail "OPT V: expected a
// whole number in [LO, HI]") when v is missing, not a number, or out of range.
int util_parse_long_option(const char *opt, const char *v, long lo, long hi, long *out);

// How far a name the user typed is from a valid one, for "did you mean": the edit distance, except that
// a name and its initials ("learning_rate", "lr") count as 1, and a part of a name ("warmup" of
// "warmup_steps") is closer the more of it it covers.
int util_name_distance(const char *typed, const char *valid);
// The name of names (n of them) nearest to typed, or NULL when none is within max_distance.
const char *util_nearest_name(const char *typed, const char *const *names, int n, int max_distance);

// Memory this machine can give a new allocation now (MemAvailable of /proc/meminfo, else the
// physical memory), in bytes; 0 when unknown.
double util_memory_available_bytes(void);
// "1.25 GiB", "12.3 MiB" or, for SIZE_MAX-saturated sizes, "more than 16 EiB", into buf[32].
const char *util_human_bytes(char *buf, double bytes);

#define GIVT_LOG_2PI 1.8378770664093454836  // log(2*pi)

#endif
