// test_npy: the .npy reader (good files of every accepted kind, every rejected kind) and writer.
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"
#include "half.h"
#include "harness.h"
#include "npy.h"
#include "testutil.h"
#include "util.h"

// ---- temp dir and raw files -------------------------------------------------------------------
static char g_dir[256];

static void tmpdir_make(void) { tu_mkdtemp(g_dir, "npy"); }
static void tmpdir_remove(void) { tu_rmtree(g_dir); }
static const char *tpath(const char *name) { return tu_path(g_dir, name); }

// A .npy with the given version and dict text (padded with spaces and '\n' to a multiple of 64),
// followed by nbytes of data.
static void write_npy_raw(const char *path, int major, const char *dict, const void *data, size_t nbytes) {
    size_t prefix = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t total = (prefix + dl + 1 + 63) / 64 * 64, hlen = total - prefix;
    unsigned char *b = malloc(total + nbytes);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (unsigned char)major;
    b[7] = 0;
    for (size_t i = 0; i < prefix - 8; i++) b[8 + i] = (unsigned char)(hlen >> (8 * i));
    memcpy(b + prefix, dict, dl);
    memset(b + prefix + dl, ' ', hlen - dl - 1);
    b[total - 1] = '\n';
    if (nbytes) memcpy(b + total, data, nbytes);
    tu_put_bytes(path, b, total + nbytes);
    free(b);
}

// Expects npy_open to fail with a message naming the file and containing `want`.
static void expect_open_error(const char *path, const char *want, int line) {
    NpyFile f;
    int rc = npy_open(&f, path);
    if (rc != -1) {
        t_fail_at(__FILE__, line, NULL, "npy_open(%s) succeeded, want an error containing \"%s\"", path, want);
        npy_close(&f);
        return;
    }
    const char *msg = givt_last_error();
    if (!strstr(msg, path) || !strstr(msg, want))
        t_fail_at(__FILE__, line, NULL, "error \"%s\" should name %s and contain \"%s\"", msg, path, want);
    if (strchr(msg, '\n')) t_fail_at(__FILE__, line, NULL, "error \"%s\" is not one line", msg);
    npy_close(&f);  // harmless after a failed open
}
#define EXPECT_OPEN_ERROR(path, want) expect_open_error((path), (want), __LINE__)

// ---- good files -------------------------------------------------------------------------------
TEST(npy_f32_write_read_roundtrip) {
    tmpdir_make();
    float x[3 * 4 * 5];
    for (int i = 0; i < 60; i++) x[i] = (float)i * 0.25f - 3.0f;
    int64_t shape[3] = {3, 4, 5};
    const char *p = tpath("a.npy");
    CHECK(npy_write_f32(p, x, 3, shape) == 0, "%s", givt_last_error());
    CHECK(!fs_path_exists(tpath("a.npy.tmp")));
    NpyFile f;
    CHECK(npy_open(&f, p) == 0, "%s", givt_last_error());
    CHECK(npy_ndim(&f) == 3 && npy_dim(&f, 0) == 3 && npy_dim(&f, 1) == 4 && npy_dim(&f, 2) == 5);
    CHECK(f.dtype == NPY_F32 && f.itemsize == 4 && f.numel == 60);
    long data_off_mod = (long)(f.data_off % 64);
    CHECK(data_off_mod == 0, "the writer aligns the data to 64 bytes, as NumPy does");
    float y[60];
    CHECK(npy_read_f32(&f, 0, 60, y) == 0);
    CHECK(memcmp(x, y, sizeof x) == 0);
    CHECK(npy_read_f32(&f, 17, 9, y) == 0);
    CHECK(memcmp(x + 17, y, 9 * sizeof(float)) == 0);
    CHECK(npy_read_rows_f32(&f, 1, 2, y) == 0);
    CHECK(memcmp(x + 20, y, 40 * sizeof(float)) == 0);
    CHECK(npy_read_f32(&f, 55, 6, y) == -1, "read past the end is an error");
    CHECK(npy_read_rows_f32(&f, 2, 2, y) == -1);
    CHECK(npy_find_nonfinite(&f, 0, 60) == -1);
    CHECK(npy_check_finite(&f, NULL) == 0);
    int64_t idx[3];
    npy_unravel(&f, 2 * 20 + 3 * 5 + 4, idx);
    CHECK(idx[0] == 2 && idx[1] == 3 && idx[2] == 4);
    npy_close(&f);
    npy_close(&f);  // twice is harmless

    // rank 2, and the header bytes the writer produces
    int64_t s2[2] = {6, 10};
    CHECK(npy_write_f32(p, x, 2, s2) == 0);
    size_t len;
    char *raw = fs_read_text(p, &len);
    CHECK(raw && len == 128 + 240);  // 10 + 61 dict bytes + padding + '\n' = 128
    CHECK(raw && memcmp(raw + 8, "\x76\x00{'descr': '<f4', 'fortran_order': False, 'shape': (6, 10), }", 62) == 0);
    CHECK(raw && raw[70] == ' ' && raw[127] == '\n');
    free(raw);
    CHECK(npy_open(&f, p) == 0 && f.ndim == 2 && f.shape[0] == 6 && f.shape[1] == 10 && f.shape[2] == 1);
    npy_close(&f);
    tmpdir_remove();
}

TEST(npy_f16_v1_v2_v3) {
    tmpdir_make();
    float vals[6] = {0.0f, -1.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f};
    uint16_t h[6];
    for (int i = 0; i < 6; i++) h[i] = half_f32_to_f16(vals[i]);
    for (int major = 1; major <= 3; major++) {
        char name[32];
        snprintf(name, sizeof name, "h%d.npy", major);
        const char *p = tpath(name);
        write_npy_raw(p, major, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", h, sizeof h);
        NpyFile f;
        CHECK(npy_open(&f, p) == 0, "v%d: %s", major, givt_last_error());
        CHECK(f.dtype == NPY_F16 && f.itemsize == 2 && f.ndim == 2 && f.shape[0] == 2 && f.shape[1] == 3);
        float y[6];
        CHECK(npy_read_f32(&f, 0, 6, y) == 0);
        for (int i = 0; i < 6; i++) CHECK(y[i] == vals[i], "v%d element %d: %g != %g", major, i, y[i], vals[i]);
        npy_close(&f);
    }
    // Other spellings NumPy (or Python 2) may produce: double quotes, no trailing comma, key order,
    // 'L' suffixes, a trailing comma in a 3-tuple.
    const char *p = tpath("q.npy");
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    write_npy_raw(p, 1, "{\"shape\": (2L, 2L, 2L,), \"fortran_order\": False, \"descr\": \"<f4\"}", x, sizeof x);
    NpyFile f;
    CHECK(npy_open(&f, p) == 0, "%s", givt_last_error());
    CHECK(f.ndim == 3 && f.shape[0] == 2 && f.shape[1] == 2 && f.shape[2] == 2);
    npy_close(&f);
    // An empty array is a valid file (the loader rejects it for having no windows).
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }", NULL, 0);
    CHECK(npy_open(&f, p) == 0, "%s", givt_last_error());
    CHECK(f.numel == 0);
    npy_close(&f);
    tmpdir_remove();
}

// ---- bad files --------------------------------------------------------------------------------
TEST(npy_rejects_bad_files) {
    tmpdir_make();
    float x[24] = {0};
    const char *good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }";
    const char *p = tpath("bad.npy");

    EXPECT_OPEN_ERROR(tpath("missing.npy"), "cannot open");

    write_npy_raw(p, 1, good, x, sizeof x);
    size_t len;
    char *raw = fs_read_text(p, &len);
    raw[1] = 'X';
    tu_put_bytes(p, raw, len);
    EXPECT_OPEN_ERROR(p, "bad magic");
    tu_put_bytes(p, raw, 5);
    EXPECT_OPEN_ERROR(p, "not a .npy file");
    raw[1] = 'N';
    raw[6] = 4;
    tu_put_bytes(p, raw, len);
    EXPECT_OPEN_ERROR(p, "version 4.0");
    raw[6] = 1;
    raw[8] = (char)0xff;  // header length 0x??ff > file
    raw[9] = (char)0x7f;
    tu_put_bytes(p, raw, len);
    EXPECT_OPEN_ERROR(p, "header length");
    free(raw);

    write_npy_raw(p, 1, good, x, sizeof x - 4);
    EXPECT_OPEN_ERROR(p, "truncated");
    write_npy_raw(p, 1, good, x, 0);
    EXPECT_OPEN_ERROR(p, "truncated");
    write_npy_raw(p, 2, good, x, sizeof x - 1);
    EXPECT_OPEN_ERROR(p, "truncated");
    float y[25] = {0};
    write_npy_raw(p, 1, good, y, sizeof y);
    EXPECT_OPEN_ERROR(p, "unexpected bytes after the data");

    write_npy_raw(p, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3, 2), }", x, sizeof x);
    EXPECT_OPEN_ERROR(p, "dtype '<f8' not supported");
    write_npy_raw(p, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3, 4), }", x, sizeof x);
    EXPECT_OPEN_ERROR(p, "dtype '>f4' not supported");
    write_npy_raw(p, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3, 4), }", x, sizeof x);
    EXPECT_OPEN_ERROR(p, "dtype '<i4'");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3, 4), }", x, sizeof x);
    EXPECT_OPEN_ERROR(p, "Fortran-order");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (24,), }", x, sizeof x);
    EXPECT_OPEN_ERROR(p, "rank 1");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", x, 4);
    EXPECT_OPEN_ERROR(p, "rank 0");
    write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3, 4), }", x, sizeof x);
    EXPECT_OPEN_ERROR(p, "rank 4");

    // header syntax
    const struct {
        const char *dict, *want;
    } bad[] = {
        {"not a dict at all", "expected '{'"},
        {"{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'"},
        {"{'fortran_order': False, 'shape': (2, 3, 4)}", "missing key 'descr'"},
        {"{'descr': '<f4', 'shape': (2, 3, 4)}", "missing key 'fortran_order'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), 'extra': 1}", "unexpected or repeated key 'extra'"},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4)}", "repeated key 'descr'"},
        {"{'descr': '<f4', 'fortran_order': maybe, 'shape': (2, 3, 4)}", "True or False"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, x, 4)}", "tuple of non-negative integers"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3, 4)}", "tuple of non-negative integers"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2 3 4)}", "expected ',' or ')'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3, 4]}", "expected '('"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4)", "expected ',' or '}'"},
        {"{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3, 4)}", "expected ':'"},
        {"{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3, 4)}", "expected ',' or '}'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4)} junk", "unexpected text after"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 1, 1)}", "too large"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296)}", "too large"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_npy_raw(p, 1, bad[i].dict, x, sizeof x);
        EXPECT_OPEN_ERROR(p, bad[i].want);
    }
    // A header dict cut short by the file's end (the length field says more than there is).
    unsigned char shortf[20] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 100, 0, '{', '\'', 'd'};
    tu_put_bytes(p, shortf, sizeof shortf);
    EXPECT_OPEN_ERROR(p, "runs past the end");
    tmpdir_remove();
}

// ---- non-finite values ------------------------------------------------------------------------
TEST(npy_finds_nan_and_inf) {
    tmpdir_make();
    float x[2 * 6 * 3];
    for (int i = 0; i < 36; i++) x[i] = (float)i;
    x[(1 * 6 + 2) * 3 + 1] = NAN;  // [1, 2, 1]
    x[(1 * 6 + 4) * 3 + 0] = INFINITY;
    int64_t shape[3] = {2, 6, 3};
    const char *p = tpath("n.npy");
    CHECK(npy_write_f32(p, x, 3, shape) == 0);
    NpyFile f;
    CHECK(npy_open(&f, p) == 0);
    CHECK(npy_find_nonfinite(&f, 0, 36) == 25);
    CHECK(npy_find_nonfinite(&f, 26, 10) == 30);
    CHECK(npy_find_nonfinite(&f, 31, 5) == -1);
    int64_t idx[3] = {-1, -1, -1};
    CHECK(npy_check_finite(&f, idx) == -1);
    CHECK(idx[0] == 1 && idx[1] == 2 && idx[2] == 1);
    CHECK(strstr(givt_last_error(), p) && strstr(givt_last_error(), "(nan) at index [1, 2, 1]"), "%s",
          givt_last_error());
    npy_close(&f);

    // float16, rank 2: -inf at [3, 1]
    uint16_t h[5 * 2];
    for (int i = 0; i < 10; i++) h[i] = half_f32_to_f16((float)i);
    h[3 * 2 + 1] = 0xfc00;
    write_npy_raw(p, 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (5, 2), }", h, sizeof h);
    CHECK(npy_open(&f, p) == 0);
    CHECK(npy_check_finite(&f, idx) == -1);
    CHECK(idx[0] == 3 && idx[1] == 1);
    CHECK(strstr(givt_last_error(), "(-inf) at index [3, 1]"), "%s", givt_last_error());
    npy_close(&f);
    tmpdir_remove();
}

TEST(npy_write_other_dtypes_and_ranks) {
    tmpdir_make();
    int32_t lab[5] = {0, 1, 2, 3, 9};
    int64_t s1[1] = {5};
    const char *p = tpath("l.npy");
    CHECK(npy_write(p, "<i4", 4, lab, 1, s1) == 0);
    size_t len;
    char *raw = fs_read_text(p, &len);
    CHECK(raw && len == 128 + 20);
    CHECK(raw && strstr(raw + 10, "'shape': (5,), }") != NULL, "rank 1 is written as a Python 1-tuple");
    CHECK(raw && memcmp(raw + 128, lab, 20) == 0);
    free(raw);
    EXPECT_OPEN_ERROR(p, "dtype '<i4'");  // the reader takes float data only
    CHECK(npy_write_f32(tpath("nodir/x.npy"), NULL, 0, NULL) == -1, "an unwritable path is an error");
    tmpdir_remove();
}
