// fuzz_util: what the libFuzzer targets share: a scratch folder per process (created on first use,
// removed at exit) for the readers that take a path, and writing the input to a file in it.
// The folder is $TMPDIR/givt-fuzz-<pid> ($TMPDIR defaults to /tmp; scripts/fuzz.sh points it at
// /dev/shm when it can, where the writers' fsync costs nothing).
#ifndef GIVT_FUZZ_UTIL_H
#define GIVT_FUZZ_UTIL_H

#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char g_fuzz_dir[512];

// Removes the folder's files (it holds no subfolders) and the folder.
static inline void fuzz_cleanup(void) {
    DIR *d = opendir(g_fuzz_dir);
    if (!d) return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", g_fuzz_dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(g_fuzz_dir);
}

static inline const char *fuzz_dir(void) {
    if (!g_fuzz_dir[0]) {
        const char *base = getenv("TMPDIR");
        if (!base || !*base) base = "/tmp";
        snprintf(g_fuzz_dir, sizeof g_fuzz_dir, "%s/givt-fuzz-%ld", base, (long)getpid());
        if (mkdir(g_fuzz_dir, 0700) != 0 && errno != EEXIST) {
            fprintf(stderr, "fuzz: cannot create %s: %s\n", g_fuzz_dir, strerror(errno));
            abort();
        }
        atexit(fuzz_cleanup);
    }
    return g_fuzz_dir;
}

// "<scratch folder>/<name>" in one of a few static buffers.
static inline const char *fuzz_path(const char *name) {
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fuzz_dir(), name);
    return buf[k];
}

static inline void fuzz_write_file(const char *path, const uint8_t *data, size_t size) {
    FILE *fp = fopen(path, "wb");
    if (!fp || (size && fwrite(data, 1, size, fp) != size) || fclose(fp) != 0) {
        fprintf(stderr, "fuzz: cannot write %s: %s\n", path, strerror(errno));
        abort();
    }
}

// The input as a NUL-terminated copy (free it) split at its NUL bytes into at most max parts:
// parts[0] starts at the beginning, each later part after a NUL; parts past max are dropped.
// Returns the number of parts (at least 1: an empty input is one empty part).
static inline char *fuzz_split_at_nul(const uint8_t *data, size_t size, char **parts, int max, int *nparts) {
    char *buf = malloc(size + 1);
    if (size) memcpy(buf, data, size);
    buf[size] = '\0';
    int n = 0;
    char *p = buf, *end = buf + size;
    parts[n++] = p;
    p += strlen(p);
    while (p < end && n < max) {
        p++;  // the NUL that ends the previous part
        parts[n++] = p;
        p += strlen(p);
    }
    *nparts = n;
    return buf;
}

// A property of the code under test does not hold: report and crash, so libFuzzer keeps the input.
#define FUZZ_CHECK(cond, ...)                                                         \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz: %s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
            abort();                                                                  \
        }                                                                             \
    } while (0)

// Guidance for the fuzzer, not a limit: FUZZ_MAGNITUDE(v) runs one more basic block for each power of
// four that v reaches, so that every new order of magnitude is new coverage and libFuzzer keeps (and
// grows) inputs with ever larger sizes. Size arithmetic overflows only at the large end, where the
// code itself gives no signal: param_table_build's num_layers overflow escaped an earlier campaign
// that had no such hint. A macro, so that each use has its own blocks.
static volatile int g_fuzz_magnitude;
#define FUZZ_MAG_STEP_(v, n) \
    if ((v) >> (n)) g_fuzz_magnitude = (n)
#define FUZZ_MAGNITUDE(value)                                                                       \
    do {                                                                                            \
        uint64_t m_ = (uint64_t)(value);                                                            \
        FUZZ_MAG_STEP_(m_, 2); FUZZ_MAG_STEP_(m_, 4); FUZZ_MAG_STEP_(m_, 6); FUZZ_MAG_STEP_(m_, 8);     \
        FUZZ_MAG_STEP_(m_, 10); FUZZ_MAG_STEP_(m_, 12); FUZZ_MAG_STEP_(m_, 14); FUZZ_MAG_STEP_(m_, 16); \
        FUZZ_MAG_STEP_(m_, 18); FUZZ_MAG_STEP_(m_, 20); FUZZ_MAG_STEP_(m_, 22); FUZZ_MAG_STEP_(m_, 24); \
        FUZZ_MAG_STEP_(m_, 26); FUZZ_MAG_STEP_(m_, 28); FUZZ_MAG_STEP_(m_, 30); FUZZ_MAG_STEP_(m_, 32); \
        FUZZ_MAG_STEP_(m_, 36); FUZZ_MAG_STEP_(m_, 40); FUZZ_MAG_STEP_(m_, 44); FUZZ_MAG_STEP_(m_, 48); \
        FUZZ_MAG_STEP_(m_, 52); FUZZ_MAG_STEP_(m_, 56); FUZZ_MAG_STEP_(m_, 60); FUZZ_MAG_STEP_(m_, 63); \
    } while (0)


// ---- for the targets of givt-train's configuration (define FUZZ_WITH_TRAIN_CONFIG before including) ----
#ifdef FUZZ_WITH_TRAIN_CONFIG
#include "train_config.h"
#include "util.h"

// Loads the text train_config_write_ini writes for c into *back (with no overrides) and checks that
// it validates and gives every key of the table the same value as c: the resolved configuration
// round-trips.
static inline void fuzz_check_config_round_trip(const TrainConfig *c) {
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    FUZZ_CHECK(fp != NULL, "open_memstream failed");
    int rc = train_config_write_ini(fp, c);
    fclose(fp);
    FUZZ_CHECK(rc == 0, "train_config_write_ini: %s", givt_last_error());
    TrainConfig *back = malloc(sizeof *back);
    rc = train_config_load_string(back, text, "resolved.ini", 0, NULL);
    FUZZ_CHECK(rc == 0, "the written configuration does not load back: %s\n--- written:\n%s---", givt_last_error(),
               text);
    int nkeys;
    const ConfigKey *keys = train_config_keys(&nkeys);
    static char a[TRAIN_CONFIG_STR_MAX + 64], b[TRAIN_CONFIG_STR_MAX + 64];
    for (int k = 0; k < nkeys; k++) {
        train_config_format(c, &keys[k], a, sizeof a);
        train_config_format(back, &keys[k], b, sizeof b);
        FUZZ_CHECK(strcmp(a, b) == 0, "[%s] %s = \"%s\" loads back as \"%s\"", keys[k].section, keys[k].key, a, b);
    }
    free(back);
    free(text);
}
#endif

#endif
