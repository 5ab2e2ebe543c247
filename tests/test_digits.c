// test_digits: the conversion of the digits set (layout, transform, baseline, errors, the bundled
// set and its dequantization).
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "digits.h"
#include "fs.h"
#include "harness.h"
#include "npy.h"
#include "testutil.h"
#include "util.h"

static char g_dir[256];

static void tmpdir_make(void) { tu_mkdtemp(g_dir, "digits"); }
static void tmpdir_remove(void) { tu_rmtree(g_dir); }
static const char *tpath(const char *name) { return tu_path(g_dir, name); }

TEST(digits_conversion_layout_on_a_small_file) {
    tmpdir_make();
    // 2 images of 4x4, maxval 16, labels 3 and 7
    unsigned char f[24 + 32 + 2];
    memcpy(f, "GIVTDIG1", 8);
    uint32_t hdr[4] = {2, 4, 4, 16};
    memcpy(f + 8, hdr, 16);
    for (int i = 0; i < 32; i++) f[24 + i] = (unsigned char)(i % 17);
    f[56] = 3;
    f[57] = 7;
    tu_put_bytes(tpath("d.bin"), f, sizeof f);
    DigitsInfo info;
    CHECK(digits_to_npy(tpath("d.bin"), tpath("d.npy"), tpath("l.npy"), 2, -1, &info) == 0, "%s", givt_last_error());
    CHECK(info.n == 2 && info.T == 4 && info.D == 4);
    double s = 0, ss = 0;
    for (int i = 0; i < 32; i++) s += f[24 + i], ss += (double)f[24 + i] * f[24 + i];
    double mean = s / 32, sd = sqrt(ss / 32 - mean * mean);
    CHECK_CLOSE(info.pixel_mean, mean, 1e-12);
    CHECK_CLOSE(info.pixel_std, sd, 1e-12);
    NpyFile nf;
    CHECK(npy_open(&nf, tpath("d.npy")) == 0);
    CHECK(nf.ndim == 3 && nf.shape[0] == 2 && nf.shape[1] == 4 && nf.shape[2] == 4);
    float x[32];
    CHECK(npy_read_f32(&nf, 0, 32, x) == 0);
    // token t = patch (t / 2, t % 2), dim d = pixel (d / 2, d % 2) inside it
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < 4; t++)
            for (int d = 0; d < 4; d++) {
                int row = (t / 2) * 2 + d / 2, col = (t % 2) * 2 + d % 2;
                double want = (f[24 + i * 16 + row * 4 + col] - mean) / sd;
                CHECK_CLOSE(x[(i * 4 + t) * 4 + d], want, 1e-6);
            }
    npy_close(&nf);
    size_t len;
    char *raw = fs_read_text(tpath("l.npy"), &len);
    int32_t lab[2];
    CHECK(raw && len == 128 + 8);
    if (raw) memcpy(lab, raw + 128, 8);
    CHECK(raw && lab[0] == 3 && lab[1] == 7);
    free(raw);
    // the baseline by hand: per (t, d) Gaussian over the 2 images
    double nll = 0;
    for (int k = 0; k < 16; k++) {
        double a = x[k], b = x[16 + k], mu = (a + b) / 2, v = fmax(((a - mu) * (a - mu) + (b - mu) * (b - mu)) / 2, 1e-8);
        nll += 0.5 * (log(v) + (a - mu) * (a - mu) / v) + 0.5 * (log(v) + (b - mu) * (b - mu) / v);
    }
    CHECK_CLOSE(info.baseline, nll / 32, 1e-9);

    CHECK(digits_to_npy(tpath("d.bin"), tpath("e.npy"), NULL, 3, -1, NULL) == -1 && strstr(givt_last_error(), "patch = 3"));
    tu_put_bytes(tpath("d.bin"), f, sizeof f - 1);
    CHECK(digits_to_npy(tpath("d.bin"), tpath("e.npy"), NULL, 2, -1, NULL) == -1 && strstr(givt_last_error(), "truncated"));
    f[30] = 17;
    tu_put_bytes(tpath("d.bin"), f, sizeof f);
    CHECK(digits_to_npy(tpath("d.bin"), tpath("e.npy"), NULL, 2, -1, NULL) == -1 && strstr(givt_last_error(), "> maxval"));
    CHECK(!fs_path_exists(tpath("e.npy")));
    tmpdir_remove();
}

// data/digits/digits.bin, or NULL after marking the test skipped when it is not there.
static const char *bundled_digits(void) {
    const char *bin = "data/digits/digits.bin";
    if (fs_path_exists(bin)) return bin;
    t_skip("data/digits/digits.bin not found (run the tests from the repository root)");
    return NULL;
}

TEST(digits_conversion_of_the_bundled_set) {
    const char *bin = bundled_digits();
    if (!bin) return;
    tmpdir_make();
    DigitsInfo info;
    CHECK(digits_to_npy(bin, tpath("d.npy"), NULL, 2, -1, &info) == 0, "%s", givt_last_error());
    CHECK(info.n == 1797 && info.T == 16 && info.D == 4);
    CHECK(info.min_value > -1 && info.max_value < 2, "range [%g, %g]", info.min_value, info.max_value);
    CHECK(info.constant_dims == 3);
    // independent values: numpy's mean/std of sklearn's digits images, and the baseline computed in numpy
    CHECK_CLOSE(info.pixel_mean, 4.884164579855314, 1e-12);
    CHECK_CLOSE(info.pixel_std, 6.016787548672236, 1e-12);
    CHECK_CLOSE(info.baseline, -0.8622758586335219, 1e-6);
    // loadable as training data: (1797, 16, 4), zero mean, unit variance over the set
    DataConfig c;
    data_config_default(&c);
    c.kind = DATA_NPY;
    c.path = tpath("d.npy");
    c.seq_len = 16;
    c.input_dim = 4;
    c.val_size = 97;
    Dataset ds;
    CHECK(data_open(&ds, &c) == 0, "%s", givt_last_error());
    CHECK(data_num_train(&ds) == 1700 && data_check_finite(&ds) == 0);
    double s = 0, ss = 0;
    float w[64];
    for (int64_t i = 0; i < 1797; i++) {
        CHECK(data_read_window(&ds, i, w) == 0);
        for (int j = 0; j < 64; j++) s += w[j], ss += (double)w[j] * w[j];
    }
    double n = 1797.0 * 64, mean = s / n;
    CHECK(fabs(mean) < 1e-6 && fabs(ss / n - mean * mean - 1) < 1e-5, "mean %g", mean);
    data_close(&ds);
    tmpdir_remove();
}

TEST(digits_dequantization_adds_seeded_uniform_noise) {
    const char *bin = bundled_digits();
    if (!bin) return;
    tmpdir_make();
    DigitsInfo plain, dq, dq2;
    CHECK(digits_to_npy(bin, tpath("p.npy"), NULL, 2, -1, &plain) == 0, "%s", givt_last_error());
    CHECK(digits_to_npy(bin, tpath("q.npy"), NULL, 2, 0, &dq) == 0, "%s", givt_last_error());
    CHECK(digits_to_npy(bin, tpath("r.npy"), NULL, 2, 0, &dq2) == 0, "%s", givt_last_error());
    CHECK(dq.constant_dims == 0, "%d constant dims after dequantization", dq.constant_dims);
    CHECK(fabs(dq.pixel_mean - (plain.pixel_mean + 0.5)) < 0.01, "mean %g", dq.pixel_mean);  // E[u] = 1/2
    CHECK(dq.baseline > plain.baseline, "baseline %g vs %g", dq.baseline, plain.baseline);
    NpyFile p, q, r;
    CHECK(npy_open(&p, tpath("p.npy")) == 0 && npy_open(&q, tpath("q.npy")) == 0 && npy_open(&r, tpath("r.npy")) == 0);
    float a[64], b[64], c[64];
    int same = 1, within = 1;
    for (int64_t i = 0; i < 1797; i += 97) {
        npy_read_f32(&p, i * 64, 64, a);
        npy_read_f32(&q, i * 64, 64, b);
        npy_read_f32(&r, i * 64, 64, c);
        for (int j = 0; j < 64; j++) {
            double level = a[j] * plain.pixel_std + plain.pixel_mean, noisy = b[j] * dq.pixel_std + dq.pixel_mean;
            within &= noisy - level > -1e-4 && noisy - level < 1 + 1e-4;  // level <= value < level + 1
            same &= b[j] == c[j];
        }
    }
    CHECK(within, "dequantized values must lie in [level, level + 1)");
    CHECK(same, "the same seed must give the same values");
    npy_close(&p);
    npy_close(&q);
    npy_close(&r);
    tmpdir_remove();
}
