// test_data_hardening: regressions found by attacking the data loader and givt-sample: a glob of
// thousands of files under an ordinary descriptor limit (files opened lazily, at most DATA_MAX_OPEN
// at once, each reopen checked to be the file validated at open), the fingerprint and description
// that let ranks check they read the same data, and givt-sample's range checks of --temperature
// and --cfg-scale.
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data.h"
#include "fs.h"
#include "harness.h"
#include "hf.h"
#include "model.h"
#include "npy.h"
#include "rng.h"
#include "testutil.h"
#include "util.h"

// ---- many small files -------------------------------------------------------------------------
// Every file of these tests is (1, 2, 2) float32: one window of seq_len 2, D 2.
enum { SMALL_T = 2, SMALL_D = 2, SMALL_NUMEL = SMALL_T * SMALL_D };

// Value j of file k: unique, so a window names its file.
static float small_value(int k, int j) { return (float)(k * 10 + j); }

// The bytes of a (1, 2, 2) float32 .npy file with the values of file k (header from npy_write_f32).
typedef struct {
    char *bytes;
    size_t n;
} NpyBytes;

static NpyBytes small_template(const char *dir) {
    float x[SMALL_NUMEL] = {0};
    int64_t shape[3] = {1, SMALL_T, SMALL_D};
    const char *p = tu_path(dir, "template.npy");
    if (npy_write_f32(p, x, 3, shape)) givt_die("%s", givt_last_error());
    NpyBytes b;
    b.bytes = fs_read_text(p, &b.n);
    if (!b.bytes) givt_die("%s", givt_last_error());
    unlink(p);
    return b;
}

// dir/fNNNN.npy for k in [0, n) (plain writes, no fsync: 1100 of them must be quick), named so that
// their sorted order is k's.
static void write_small_files(const char *dir, const NpyBytes *t, int n) {
    for (int k = 0; k < n; k++) {
        float *data = (float *)(void *)(t->bytes + t->n - sizeof(float) * SMALL_NUMEL);
        for (int j = 0; j < SMALL_NUMEL; j++) data[j] = small_value(k, j);
        char name[32];
        snprintf(name, sizeof name, "f%04d.npy", k);
        tu_put_bytes(tu_path(dir, name), t->bytes, t->n);
    }
}

// The same n windows as one (n, 2, 2) file: the reference the many files must match exactly.
static void write_one_file(const char *path, int n) {
    float *x = xmalloc((size_t)n * SMALL_NUMEL * sizeof *x);
    for (int k = 0; k < n; k++)
        for (int j = 0; j < SMALL_NUMEL; j++) x[(size_t)k * SMALL_NUMEL + j] = small_value(k, j);
    int64_t shape[3] = {n, SMALL_T, SMALL_D};
    if (npy_write_f32(path, x, 3, shape)) givt_die("%s", givt_last_error());
    free(x);
}

static DataConfig small_cfg(const char *path, int64_t val_size) {
    DataConfig c;
    data_config_default(&c);
    c.kind = DATA_NPY;
    c.path = path;
    c.seq_len = SMALL_T;
    c.input_dim = SMALL_D;
    c.seed = 7;
    c.val_size = val_size;
    return c;
}

static int open_fd_count(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;  // the DIR's own descriptor
}

// The soft RLIMIT_NOFILE lowered to at most lim (the previous limits into old; 0 when it fails).
static int lower_fd_limit(struct rlimit *old, rlim_t lim) {
    if (getrlimit(RLIMIT_NOFILE, old) != 0) return 0;
    struct rlimit r = *old;
    if (r.rlim_cur == RLIM_INFINITY || r.rlim_cur > lim) r.rlim_cur = lim;
    return setrlimit(RLIMIT_NOFILE, &r) == 0;
}

// Batches of the two datasets must be bit-identical: the training stream over `batches` batches of
// B (several epochs), every validation batch and every in-order batch.
static void check_same_batches(Dataset *a, Dataset *b, int B, int batches) {
    size_t n = (size_t)B * SMALL_NUMEL;
    float *x = xmalloc(n * sizeof *x), *y = xmalloc(n * sizeof *y);
    for (int i = 0; i < batches && !t_failed(); i++) {
        CHECK(data_next_batch(a, B, x) == 0, "batch %d: %s", i, givt_last_error());
        CHECK(data_next_batch(b, B, y) == 0, "batch %d: %s", i, givt_last_error());
        CHECK(memcmp(x, y, n * sizeof *x) == 0, "training batch %d differs", i);
    }
    for (int64_t k = 0; !t_failed(); k++) {
        int ga = data_val_batch(a, k, B, x), gb = data_val_batch(b, k, B, y);
        CHECK(ga == gb && ga >= 0, "val batch %lld: %d vs %d windows", (long long)k, ga, gb);
        if (ga <= 0) break;
        CHECK(memcmp(x, y, (size_t)ga * SMALL_NUMEL * sizeof *x) == 0, "val batch %lld differs", (long long)k);
    }
    for (int64_t k = 0; !t_failed(); k++) {
        int ga = data_all_batch(a, k, B, x), gb = data_all_batch(b, k, B, y);
        CHECK(ga == gb && ga >= 0, "in-order batch %lld: %d vs %d windows", (long long)k, ga, gb);
        if (ga <= 0) break;
        CHECK(memcmp(x, y, (size_t)ga * SMALL_NUMEL * sizeof *x) == 0, "in-order batch %lld differs", (long long)k);
        for (int i = 0; i < ga; i++)  // and each window is its file's values, read straight
            CHECK(x[(size_t)i * SMALL_NUMEL + 3] == small_value((int)(k * B + i), 3), "window %lld", (long long)(k * B + i));
    }
    free(x);
    free(y);
}

// 1100 files under a soft descriptor limit of 256 (data.c kept every file open: "Too many open
// files"): they open, at most DATA_MAX_OPEN stay open, and every batch (shuffled training stream
// over three epochs, validation, in order) is bit-identical to that of the same windows in one file.
TEST(data_hardening_thousands_of_files_under_a_low_descriptor_limit) {
    enum { NFILES = 1100, B = 64 };
    char dir[256], many[512], glob[600], one[600];
    tu_mkdtemp(dir, "manyfiles");
    snprintf(many, sizeof many, "%s", tu_path(dir, "many"));
    CHECK(mkdir(many, 0755) == 0);
    NpyBytes t = small_template(dir);
    write_small_files(many, &t, NFILES);
    free(t.bytes);
    snprintf(glob, sizeof glob, "%s/*.npy", many);
    snprintf(one, sizeof one, "%s", tu_path(dir, "one.npy"));
    write_one_file(one, NFILES);

    struct rlimit old;
    int lowered = lower_fd_limit(&old, 256);
    CHECK(lowered, "could not lower RLIMIT_NOFILE");
    int fds0 = open_fd_count();
    Dataset a, b;
    DataConfig ca = small_cfg(glob, 100), cb = small_cfg(one, 100);
    int ok_a = data_open(&a, &ca) == 0;
    CHECK(ok_a, "%s", givt_last_error());
    int ok_b = data_open(&b, &cb) == 0;
    CHECK(ok_b, "%s", givt_last_error());
    if (ok_a && ok_b) {
        CHECK(a.nfiles == NFILES && data_num_windows(&a) == NFILES && data_num_train(&a) == NFILES - 100);
        int fds = open_fd_count();
        CHECK(fds - fds0 <= DATA_MAX_OPEN + 1, "%d descriptors open after data_open (were %d)", fds, fds0);
        check_same_batches(&a, &b, B, 3 * (NFILES - 100) / B + 1);
        CHECK(open_fd_count() - fds0 <= DATA_MAX_OPEN + 1, "%d descriptors open after reading", open_fd_count());
        CHECK(data_check_finite(&a) == 0, "%s", givt_last_error());
    }
    if (ok_a) data_close(&a);
    if (ok_b) data_close(&b);
    CHECK(open_fd_count() == fds0, "descriptors left open after data_close: %d, were %d", open_fd_count(), fds0);
    if (lowered) setrlimit(RLIMIT_NOFILE, &old);
    tu_rmtree(dir);
}

// A file closed to make room and reopened must be the one validated at open: replaced by rename
// (even with the same size and modification time: another inode) or rewritten with another size, it
// is a one-line error naming it, never silently other data; untouched files reopen and read as before.
TEST(data_hardening_reopened_file_must_be_the_validated_one) {
    enum { NFILES = 2 * DATA_MAX_OPEN };
    char dir[256];
    tu_mkdtemp(dir, "reopen");
    NpyBytes t = small_template(dir);
    write_small_files(dir, &t, NFILES);
    char glob[600];
    snprintf(glob, sizeof glob, "%s/f*.npy", dir);
    Dataset ds;
    DataConfig c = small_cfg(glob, 0);
    int ok = data_open(&ds, &c) == 0;
    CHECK(ok, "%s", givt_last_error());
    if (!ok) {
        free(t.bytes);
        tu_rmtree(dir);
        return;
    }
    float x[SMALL_NUMEL];
    for (int k = 0; k < NFILES; k++) {  // in order: files 0 .. NFILES - DATA_MAX_OPEN - 1 end up closed
        CHECK(data_read_window(&ds, k, x) == 0, "%s", givt_last_error());
        CHECK(x[1] == small_value(k, 1), "window %d", k);
    }
    CHECK(ds.nopen == DATA_MAX_OPEN && ds.files[0].fd < 0 && ds.files[NFILES - 1].fd >= 0);

    // file 0: replaced by rename with other values, the same size and the same modification time
    char f0[600], tmp[600];
    snprintf(f0, sizeof f0, "%s", tu_path(dir, "f0000.npy"));
    snprintf(tmp, sizeof tmp, "%s", tu_path(dir, "new.tmp"));
    struct stat st;
    CHECK(stat(f0, &st) == 0);
    float *data = (float *)(void *)(t.bytes + t.n - sizeof(float) * SMALL_NUMEL);
    for (int j = 0; j < SMALL_NUMEL; j++) data[j] = -1.0f;
    tu_put_bytes(tmp, t.bytes, t.n);
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    CHECK(utimensat(AT_FDCWD, tmp, times, 0) == 0 && rename(tmp, f0) == 0);
    CHECK(data_read_window(&ds, 0, x) == -1, "a replaced file was read: x[0] = %g", x[0]);
    CHECK(tu_error_has("f0000.npy: the file changed since the data were opened", "another file by that name"), "%s",
          givt_last_error());

    // file 1: rewritten in place, longer
    char f1[600];
    snprintf(f1, sizeof f1, "%s", tu_path(dir, "f0001.npy"));
    FILE *fp = fopen(f1, "ab");
    CHECK(fp && fputc(0, fp) == 0 && fclose(fp) == 0);
    CHECK(data_read_window(&ds, 1, x) == -1);
    CHECK(tu_error_has("f0001.npy: the file changed since the data were opened", "another size"), "%s",
          givt_last_error());

    // file 2: untouched, closed, reopens and reads its values
    CHECK(ds.files[2].fd < 0);
    CHECK(data_read_window(&ds, 2, x) == 0 && x[3] == small_value(2, 3), "%s", givt_last_error());
    CHECK(ds.files[2].fd >= 0 && ds.nopen == DATA_MAX_OPEN);
    data_close(&ds);
    free(t.bytes);
    tu_rmtree(dir);
}

// ---- fingerprint -------------------------------------------------------------------------------
// dir/name: an (N, T, 2) file of the given dtype (float32, or float16 with f16) of small values.
static void write_seq_file(const char *dir, const char *name, int64_t N, int64_t T, int f16) {
    int64_t shape[3] = {N, T, 2}, n = N * T * 2;
    float *x = xmalloc((size_t)n * sizeof *x);
    uint16_t *h = xmalloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(i % 7) * 0.25f, h[i] = 0x3c00;  // f16 1.0
    int rc = f16 ? npy_write(tu_path(dir, name), "<f2", 2, h, 3, shape) : npy_write_f32(tu_path(dir, name), x, 3, shape);
    if (rc) givt_die("%s", givt_last_error());
    free(x);
    free(h);
}

// A folder (made under base) holding files a.npy (na, ta) and b.npy (nb, tb), T = 8 windows.
static void make_folder(char *dir, const char *tag, int64_t na, int64_t nb, int64_t tb, int f16) {
    tu_mkdtemp(dir, tag);
    write_seq_file(dir, "a.npy", na, 8, 0);
    write_seq_file(dir, "b.npy", nb, tb, f16);
}

// data_open of c, its fingerprint and description (into desc of n bytes), data_close; 0 (a failed
// check) when it does not open.
static uint64_t open_and_fingerprint(const DataConfig *c, char *desc, size_t n) {
    Dataset ds;
    if (data_open(&ds, c) != 0) {
        CHECK(0, "%s", givt_last_error());
        return 0;
    }
    uint64_t h = data_fingerprint(&ds);
    data_describe(&ds, desc, n);
    data_close(&ds);
    return h;
}

// Opens dir/*.npy (seq_len 8, D 2), with labels dir/labels.npy when labels, and returns the
// fingerprint (0 when opening fails: a failed check) with the description in desc.
static uint64_t fingerprint_of(const char *dir, int64_t val_size, int labels, int rank, char *desc, size_t n) {
    char glob[600], lab[600];
    snprintf(glob, sizeof glob, "%s/*.npy", dir);
    snprintf(lab, sizeof lab, "%s/labels.lab", dir);
    DataConfig c;
    data_config_default(&c);
    c.kind = DATA_NPY, c.path = glob, c.seq_len = 8, c.input_dim = 2, c.val_size = val_size;
    c.rank = rank, c.world_size = 2;
    if (labels) c.labels_path = lab, c.num_classes = 3;
    return open_and_fingerprint(&c, desc, n);
}

static uint64_t dummy_fingerprint(int64_t count, uint64_t seed, int seq_len, char *desc, size_t n) {
    DataConfig c;
    data_config_default(&c);
    c.dummy_count = count, c.seed = seed, c.seq_len = seq_len;
    return open_and_fingerprint(&c, desc, n);
}

// The same data from another folder (another rank's node) give the same fingerprint and
// description, whatever the rank; another shape, count, dtype, file split, labels or validation
// split gives another one; dummy data hash their parameters.
TEST(data_hardening_fingerprint_tells_ranks_data_apart) {
    char base[256], copy[256], other_t[256], other_n[256], half[256], split[256];
    char d0[512], d1[512];
    make_folder(base, "fp_base", 4, 3, 8, 0);
    make_folder(copy, "fp_copy", 4, 3, 8, 0);
    make_folder(other_t, "fp_t", 4, 3, 16, 0);  // b.npy (3, 16, 2): 2 windows per sequence
    make_folder(other_n, "fp_n", 4, 2, 8, 0);
    make_folder(half, "fp_half", 4, 3, 8, 1);   // b.npy float16
    tu_mkdtemp(split, "fp_split");              // the same 7 sequences as a (5) + b (2)
    write_seq_file(split, "a.npy", 5, 8, 0);
    write_seq_file(split, "b.npy", 2, 8, 0);

    uint64_t h0 = fingerprint_of(base, 0, 0, 0, d0, sizeof d0);
    CHECK(h0 == fingerprint_of(copy, 0, 0, 1, d1, sizeof d1), "same data, another folder and rank");
    CHECK(!strcmp(d0, d1), "%s\n%s", d0, d1);
    CHECK(strstr(d0, "npy: 2 files, 7 sequences of 8 x 2 (float32, ") && strstr(d0, "windows 7 (train 7, val 0)"), "%s",
          d0);
    CHECK(h0 != fingerprint_of(other_t, 0, 0, 0, d1, sizeof d1) && strstr(d1, "sequences of 8..16 x 2"), "%s", d1);
    CHECK(h0 != fingerprint_of(other_n, 0, 0, 0, d1, sizeof d1) && strstr(d1, "6 sequences"), "%s", d1);
    CHECK(h0 != fingerprint_of(half, 0, 0, 0, d1, sizeof d1) && strstr(d1, "float32 and float16"), "%s", d1);
    CHECK(h0 != fingerprint_of(split, 0, 0, 0, d1, sizeof d1), "files split differently");
    CHECK(h0 != fingerprint_of(base, 2, 0, 0, d1, sizeof d1) && strstr(d1, "(train 5, val 2)"), "%s", d1);

    // labels: present or not, and how many (labels.lab: not matched by *.npy)
    int32_t lab[7] = {0, 1, 2, 0, 1, 2, 0};
    int64_t n7 = 7;
    CHECK(npy_write(tu_path(base, "labels.lab"), "<i4", 4, lab, 1, &n7) == 0 &&
          npy_write(tu_path(copy, "labels.lab"), "<i4", 4, lab, 1, &n7) == 0);
    uint64_t hl = fingerprint_of(base, 0, 1, 0, d0, sizeof d0);
    CHECK(hl != h0 && hl == fingerprint_of(copy, 0, 1, 1, d1, sizeof d1) && strstr(d0, "labels 7 of 3 classes"), "%s",
          d0);

    // dummy data: count, seed and seq_len
    uint64_t hd = dummy_fingerprint(100, 1, 16, d0, sizeof d0);
    CHECK(hd == dummy_fingerprint(100, 1, 16, d1, sizeof d1) && !strcmp(d0, d1));
    CHECK(strstr(d0, "dummy: 100 sequences of 16 x 16, seed 1, windows 100 (train 100, val 0)"), "%s", d0);
    CHECK(hd != dummy_fingerprint(101, 1, 16, d1, sizeof d1) && hd != dummy_fingerprint(100, 2, 16, d1, sizeof d1) &&
          hd != dummy_fingerprint(100, 1, 8, d1, sizeof d1));

    // a short buffer: truncated and terminated
    char tiny[12];
    memset(tiny, 'x', sizeof tiny);
    dummy_fingerprint(100, 1, 16, tiny, 10);
    CHECK(strlen(tiny) == 9 && tiny[10] == 'x' && !strncmp(tiny, "dummy: 10", 9), "%s", tiny);

    const char *dirs[] = {base, copy, other_t, other_n, half, split};
    for (int i = 0; i < 6; i++) tu_rmtree(dirs[i]);
}

// ---- givt-sample's numeric options ---------------------------------------------------------------
// Runs "<GIVT_BIN_DIR>/givt-sample <args>" with stderr into dir/stderr.txt; the exit status (-1 when
// it did not exit normally) and stderr's text (to be freed).
static int run_sample(const char *dir, const char *args, char **err) {
    const char *bin = getenv("GIVT_BIN_DIR");
    char exe[1024], cmd[4096];
    snprintf(exe, sizeof exe, "%s/givt-sample", bin && *bin ? bin : ".");
    *err = NULL;
    if (!fs_path_exists(exe)) {
        CHECK(0, "%s not found: build it (make all) and run the tests from the repository root", exe);
        return -1;
    }
    const char *e = tu_path(dir, "stderr.txt");
    snprintf(cmd, sizeof cmd, "'%s' %s >/dev/null 2>'%s'", exe, args, e);
    int st = system(cmd);
    *err = fs_read_text(e, NULL);
    if (!*err) *err = strdup("");
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// The tiny model (tu_tiny_config) with weights 0.1 * N(0, 1) into dir/model (its path into folder).
static void tiny_model(char *folder, size_t n, const char *dir, int num_classes) {
    GivtConfig cfg;
    tu_tiny_config(&cfg);
    cfg.num_classes = num_classes;
    ParamTable pt;
    param_table_build(&pt, &cfg);
    float *p = xmalloc(pt.total * sizeof(float));
    Rng rng;
    rng_seed(&rng, 5);
    for (size_t i = 0; i < pt.total; i++) p[i] = 0.1f * (float)rng_normal(&rng);
    snprintf(folder, n, "%s", tu_path(dir, num_classes ? "cond" : "model"));
    if (hf_save(folder, &cfg, &pt, p) != 0) givt_die("%s", givt_last_error());
    free(p);
    param_table_free(&pt);
}

// 1 when path is an .npy file of float32 values that are all finite.
static int all_finite(const char *path) {
    NpyFile f;
    if (npy_open(&f, path) != 0) return 0;
    int ok = npy_check_finite(&f, NULL) == 0;
    npy_close(&f);
    return ok;
}

// --temperature 1e308 wrote non-finite samples: out-of-range temperatures and guidance weights are
// now a one-line error with exit status 1 and nothing written; the bounds themselves still sample,
// and finitely.
TEST(data_hardening_givt_sample_rejects_overflowing_temperature_and_cfg_scale) {
    char dir[256], model[512], cond[512], out[512], args[4096], *err;
    tu_mkdtemp(dir, "sampleopts");
    tiny_model(model, sizeof model, dir, 0);
    tiny_model(cond, sizeof cond, dir, 3);
    snprintf(out, sizeof out, "%s", tu_path(dir, "out.npy"));
    const char *bad[][2] = {
        {"--temperature 1e308", "--temperature 1e308: expected a number >= 0 and at most 100"},
        {"--temperature 100.5", "--temperature 100.5: expected a number >= 0 and at most 100"},
        {"--temperature inf", "--temperature inf: expected a number >= 0"},
        {"--temperature nan", "--temperature nan: expected a number >= 0"},
        {"--temperature -1", "--temperature -1: expected a number >= 0"},
        {"--class 1 --cfg-scale 1e308", "--cfg-scale 1e308: expected a number >= 0 and at most 100"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unlink(out);
        snprintf(args, sizeof args, "'%s' --max-len 6 --num-samples 2 --out '%s' %s", cond, out, bad[i][0]);
        int rc = run_sample(dir, args, &err);
        const char *nl = err ? strchr(err, '\n') : NULL;
        CHECK(rc == 1 && strstr(err, bad[i][1]) && nl && nl[1] == '\0', "%s: exit %d, stderr: %s", bad[i][0], rc, err);
        CHECK(!fs_path_exists(out), "%s wrote %s", bad[i][0], out);
        free(err);
    }
    const char *good[] = {"--temperature 100", "--temperature 0", "--temperature 0.5",
                          "--class 2 --cfg-scale 100 --temperature 100"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        snprintf(args, sizeof args, "'%s' --max-len 6 --num-samples 2 --out '%s' %s", i == 3 ? cond : model, out,
                 good[i]);
        int rc = run_sample(dir, args, &err);
        CHECK(rc == 0 && strstr(err, "wrote"), "%s: exit %d, stderr: %s", good[i], rc, err);
        CHECK(rc != 0 || all_finite(out), "%s: %s", good[i], givt_last_error());
        free(err);
        unlink(out);
    }
    tu_rmtree(dir);
}
