// testutil: helpers shared by the tests: temporary folders, whole-file reads and comparisons.
#ifndef GIVT_TEST_UTIL_H
#define GIVT_TEST_UTIL_H

#include <stddef.h>

// Makes a fresh folder under $TMPDIR (or /tmp) into dir (at least 256 bytes); dies on failure.
void tu_mkdtemp(char *dir, const char *tag);
// Removes path and everything below it.
void tu_rmtree(const char *path);
// Writes text to path; dies on failure.
void tu_put_text(const char *path, const char *text);
// 1 when both files exist and are byte for byte identical.
int tu_same_file(const char *a, const char *b);
// Number of entries of dir whose name starts with prefix (-1 if dir cannot be read).
int tu_count_prefix(const char *dir, const char *prefix);

#endif
