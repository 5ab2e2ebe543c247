// testutil: helpers shared by the tests: temporary folders, whole-file reads and comparisons.
#ifndef GIVT_TEST_UTIL_H
#define GIVT_TEST_UTIL_H

#include <stddef.h>
#include <sys/types.h>

#include "model.h"

// Makes a fresh folder under $TMPDIR (or /tmp) into dir (at least 256 bytes); dies on failure.
void tu_mkdtemp(char *dir, const char *tag);
// Removes path and everything below it.
void tu_rmtree(const char *path);
// "dir/name" in one of 8 static buffers used in turn, so a few such paths can be alive at once;
// dies when it would not fit (PATH_MAX).
const char *tu_path(const char *dir, const char *name);
// Writes text to path; dies on failure.
void tu_put_text(const char *path, const char *text);
// Writes the n bytes at data to path; dies on failure.
void tu_put_bytes(const char *path, const void *data, size_t n);
// Copies the file src to dst (created or truncated); dies on failure.
void tu_copy_file(const char *src, const char *dst);
// 1 when both files exist and are byte for byte identical.
int tu_same_file(const char *a, const char *b);
// Number of entries of dir whose name starts with prefix (-1 if dir cannot be read).
int tu_count_prefix(const char *dir, const char *prefix);
// 1 when givt_last_error() contains a, and b unless b is NULL, and is a single line.
int tu_error_has(const char *a, const char *b);

// ---- programs as a user runs them ----------------------------------------------------------
// "<GIVT_BIN_DIR>/prog" (the top-level folder by default; the sanitized programs in make
// test-sanitize) into exe of n bytes; 1 when it exists.
int tu_program_path(char *exe, size_t n, const char *prog);
// Starts argv in the background with stdout and stderr into the file log and OMP_NUM_THREADS=threads
// (the rest of the environment as it is); its pid, or -1 (errno-style code in *err when not NULL).
pid_t tu_spawn_logged(char *const argv[], const char *log, int threads, int *err);
// Waits up to timeout_s for pid: its exit status (128 + the signal when one killed it), or -2 after
// the time (the process is then killed, with its process group when it leads one), -1 when it is
// not a child. The timed form also gives the seconds it waited.
int tu_wait_exit(pid_t pid, double timeout_s);
int tu_wait_exit_timed(pid_t pid, double timeout_s, double *took);

// The CPU backend (float32 compute); dies when it cannot be opened. Close with backend_close.
Backend *tu_open_cpu(void);
// A host float array as a compute buffer of the CPU backend (whose compute dtype is float32).
#define TU_CV(p) ((cval *)(void *)(p))
// A small valid model configuration (D 4, C 8, F 12, H 2, L 2, block 16), the rest GIVT.md's defaults.
void tu_tiny_config(GivtConfig *c);
// model_create(m, cfg, be) with every weight drawn from 0.3 * N(0, 1), seeded (non-zero weights
// everywhere, so that the output depends on every layer); dies on error.
void tu_random_model(GivtModel *m, const GivtConfig *cfg, Backend *be, uint64_t seed);

#endif
