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
// Bytes echoed from a file cannot break the one line: control characters (below 0x20, and 0x7f) are
// stored escaped, as \n, \t, \r or \xNN (backslashes are kept as they are, so a message that
// already went through givt_fail is not escaped twice). Join parts of a message with "; ", not "\n".
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
// Opens a file the user named, for reading: O_NONBLOCK for the open itself (so a FIFO cannot block
// it), then anything but a regular file is refused ("PATH: not a regular file (a FIFO)"), and the
// descriptor is made blocking again. Returns the descriptor (O_CLOEXEC), or -1 with givt_fail.
int open_regular_file(const char *path);
// Reads exactly n bytes at byte offset off of fd (pread, resuming short reads). A file that ends
// first is an error naming path ("...: it was truncated or rewritten while in use"), never a crash.
int pread_full(int fd, const char *path, void *buf, size_t n, int64_t off);
// Configuration text (INI files, config.json) is read with this limit: real ones are a few KiB.
#define GIVT_TEXT_MAX_BYTES ((size_t)16 << 20)
// What read_file_text allows: whole-file reads of anything else (metrics.jsonl on resume, test data).
#define GIVT_READ_FILE_MAX_BYTES ((size_t)1 << 30)
// Reads a whole regular file (open_regular_file) into a NUL-terminated buffer; NULL (with givt_fail)
// on error. A file of more than max_bytes is an error naming the limit, found from its size before
// anything is allocated and while reading (for a file that grows).
char *read_file_text_max(const char *path, size_t max_bytes, size_t *len_out);
char *read_file_text(const char *path, size_t *len_out);  // limit GIVT_READ_FILE_MAX_BYTES
// Atomic write of path.
// - path absent, or a regular file (or a symlink, dangling or to a regular file: the link itself is
//   then replaced by the new file): data goes to a new temporary "<dir of path>/.givt-tmp-<pid>-XXXXXX",
//   created exclusively (O_EXCL | O_NOFOLLOW: a file or symlink planted at that name is never written
//   through), is flushed and fsync'd, then renamed over path, and the directory is fsync'd. A crash
//   leaves either the old file or the new one, never half; the short temporary name works for any
//   legal path.
// - path a character device or a FIFO (/dev/null, /dev/stdout on a pipe), or any path whose folder
//   is /dev or in /proc (/dev/stdout redirected to a file, /dev/fd/N: nothing is ever created or
//   renamed there): written through directly, no temporary, no rename (opening a FIFO waits for
//   its reader; a regular file there is truncated); commit flushes and closes.
// - path a directory or anything else: refused (-1, givt_fail) before any temporary is made.
typedef struct {
    FILE *fp;
    char *final_path;
    char *tmp_path;  // NULL when writing through to a device or FIFO
    int failed;
} AtomicFile;
int atomic_open(AtomicFile *af, const char *path);
int atomic_write(AtomicFile *af, const void *data, size_t n);
int atomic_commit(AtomicFile *af);  // flush, fsync, rename; frees af
void atomic_abort(AtomicFile *af);  // removes the temporary file; frees af
// The pid in the file name of an atomic_open temporary: ".givt-tmp-<pid>-XXXXXX", and the
// "<name>.tmp.<pid>" of earlier versions (so their leftovers are recognised too); 0 when name (a file
// name or a path) is not one of these. Lets a cleanup remove the temporaries of dead processes only.
long atomic_temp_owner(const char *name);
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
