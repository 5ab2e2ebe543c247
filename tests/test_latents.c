// test_latents: the latents converter (csrc/io/latents.c): (N, C, H, W) / (N, H, W, C) of every dtype
// and order to (N, H*W, C) sequences in raster order, the statistics file, the exact round trip,
// constant channels, and the errors; npy's streamed writer and any-rank reader it stands on; the
// errors of npy_open that point to the converter.
#define _GNU_SOURCE
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"
#include "half.h"
#include "harness.h"
#include "latents.h"
#include "npy.h"
#include "rng.h"
#include "testutil.h"
#include "util.h"

// A .npy with the given dict text (version 1, padded to a multiple of 64) followed by nbytes of data.
static void put_npy(const char *path, const char *dict, const void *data, size_t nbytes) {
    size_t dl = strlen(dict), total = (10 + dl + 1 + 63) / 64 * 64, hlen = total - 10;
    unsigned char *b = xmalloc(total + nbytes);
    memcpy(b, "\x93NUMPY\x01\x00", 8);
    b[8] = (unsigned char)(hlen & 0xff), b[9] = (unsigned char)(hlen >> 8);
    memcpy(b + 10, dict, dl);
    memset(b + 10 + dl, ' ', hlen - dl - 1);
    b[total - 1] = '\n';
    if (nbytes) memcpy(b + total, data, nbytes);
    tu_put_bytes(path, b, total + nbytes);
    free(b);
}

// The latents of a test: values x[n, c, h, w] (float64, NCHW) as stored (after the dtype's rounding).
typedef struct {
    int64_t n, c, h, w;
    double *x;
} Lat;

static double *lat_at(const Lat *l, int64_t n, int64_t c, int64_t h, int64_t w) {
    return &l->x[((n * l->c + c) * l->h + h) * l->w + w];
}

// Channel c: offset 10^(c-1) * (c odd ? -1 : 1), scale 2^-c, so channels differ in mean and spread.
static void lat_fill(Lat *l, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    l->x = xmalloc((size_t)(l->n * l->c * l->h * l->w) * sizeof(double));
    for (int64_t n = 0; n < l->n; n++)
        for (int64_t c = 0; c < l->c; c++)
            for (int64_t i = 0; i < l->h * l->w; i++)
                *lat_at(l, n, c, i / l->w, i % l->w) =
                    (c % 2 ? -1.0 : 1.0) * pow(10.0, (double)c - 1) + ldexp(rng_normal(&r), -(int)c);
}

// Writes l to path in layout, dtype ("<f2", "<f4", "<f8") and order, rounding l->x to what is stored.
static void lat_write(Lat *l, const char *path, LatentsLayout layout, const char *descr, int fortran) {
    int64_t dims[4] = {l->n, l->c, l->h, l->w};
    if (layout == LATENTS_NHWC) dims[1] = l->h, dims[2] = l->w, dims[3] = l->c;
    size_t isz = descr[2] == '2' ? 2 : descr[2] == '4' ? 4 : 8, numel = (size_t)(l->n * l->c * l->h * l->w);
    unsigned char *raw = xmalloc(numel * isz);
    for (int64_t n = 0; n < l->n; n++)
        for (int64_t c = 0; c < l->c; c++)
            for (int64_t h = 0; h < l->h; h++)
                for (int64_t w = 0; w < l->w; w++) {
                    int64_t idx[4] = {n, c, h, w};
                    if (layout == LATENTS_NHWC) idx[1] = h, idx[2] = w, idx[3] = c;
                    int64_t off = 0;
                    if (fortran)
                        for (int d = 3; d >= 0; d--) off = off * dims[d] + idx[d];
                    else
                        for (int d = 0; d < 4; d++) off = off * dims[d] + idx[d];
                    double *v = lat_at(l, n, c, h, w);
                    if (isz == 8) memcpy(raw + off * 8, v, 8);
                    if (isz == 4) *v = (float)*v, ((float *)raw)[off] = (float)*v;
                    if (isz == 2) {
                        uint16_t hv = half_f32_to_f16((float)*v);
                        ((uint16_t *)raw)[off] = hv;
                        *v = half_f16_to_f32(hv);
                    }
                }
    char dict[256];
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': %s, 'shape': (%lld, %lld, %lld, %lld), }", descr,
             fortran ? "True" : "False", (long long)dims[0], (long long)dims[1], (long long)dims[2], (long long)dims[3]);
    put_npy(path, dict, raw, numel * isz);
    free(raw);
}

// A whole float file of the expected shape (any rank: read as the converter reads) into a new float32
// buffer; NULL (a failed check) else.
static float *read_all(const char *path, int ndim, const int64_t *shape) {
    NpyArray a;
    if (npy_array_open(&a, path) != 0) {
        CHECK(0, "%s", givt_last_error());
        return NULL;
    }
    int ok = a.ndim == ndim && !a.fortran && a.file.dtype == NPY_F32;
    for (int i = 0; ok && i < ndim; i++) ok = a.shape[i] == shape[i];
    CHECK(ok, "%s: unexpected shape or dtype", path);
    double *d = ok ? xmalloc((size_t)a.numel * sizeof *d) : NULL;
    float *v = ok ? xmalloc((size_t)a.numel * sizeof *v) : NULL;
    if (d && npy_array_read_rows_f64(&a, 0, a.shape[0], d) != 0) CHECK(0, "%s", givt_last_error());
    for (int64_t i = 0; d && i < a.numel; i++) v[i] = (float)d[i];
    free(d);
    npy_array_close(&a);
    return v;
}

// Population mean and std of channel c of l, in two passes.
static void lat_moments(const Lat *l, int64_t c, double *mean, double *std) {
    double s = 0, s2 = 0, cnt = (double)(l->n * l->h * l->w);
    for (int64_t n = 0; n < l->n; n++)
        for (int64_t i = 0; i < l->h * l->w; i++) s += *lat_at(l, n, c, i / l->w, i % l->w);
    *mean = s / cnt;
    for (int64_t n = 0; n < l->n; n++)
        for (int64_t i = 0; i < l->h * l->w; i++) {
            double d = *lat_at(l, n, c, i / l->w, i % l->w) - *mean;
            s2 += d * d;
        }
    *std = sqrt(s2 / cnt);
}

// to-sequences of l (written as layout/descr/fortran), then to-latents with the statistics read back:
// the sequences in raster order, the statistics, and the round trip within one float32 rounding of
// the standardised value (exact without standardisation).
static void round_trip(const char *dir, Lat *l, LatentsLayout layout, const char *descr, int fortran, int standardize) {
    char in[512], seq[512], stats[512], back[512];
    snprintf(in, sizeof in, "%s", tu_path(dir, "in.npy"));
    snprintf(seq, sizeof seq, "%s", tu_path(dir, "seq.npy"));
    snprintf(stats, sizeof stats, "%s", tu_path(dir, "seq.stats.json"));
    snprintf(back, sizeof back, "%s", tu_path(dir, "back.npy"));
    lat_write(l, in, layout, descr, fortran);
    LatentsStats st, rd;
    const char *what = layout == LATENTS_NHWC ? "nhwc" : "nchw";
    if (latents_to_sequences(in, seq, stats, layout, standardize, &st) != 0) {
        CHECK(0, "%s %s fortran %d: %s", what, descr, fortran, givt_last_error());
        return;
    }
    CHECK(latents_stats_read(stats, &rd) == 0, "%s", givt_last_error());
    CHECK(rd.channels == l->c && rd.height == l->h && rd.width == l->w && rd.layout == layout &&
          rd.standardized == standardize && rd.n == l->n);
    for (int64_t c = 0; c < l->c && rd.channels == l->c; c++) {
        double m, s;
        lat_moments(l, c, &m, &s);
        CHECK(rd.mean[c] == st.mean[c] && rd.std[c] == st.std[c], "channel %lld: the JSON reads back exactly", (long long)c);
        if (standardize && s == 0) {  // a constant channel
            CHECK(st.constant[c] && st.mean[c] == m && st.std[c] == 1.0, "%s channel %lld: constant", what, (long long)c);
        } else if (standardize) {
            CHECK(fabs(st.mean[c] - m) <= 1e-12 * (fabs(m) + s), "%s channel %lld mean %.17g, want %.17g", what,
                  (long long)c, st.mean[c], m);
            CHECK(fabs(st.std[c] - s) <= 1e-12 * s, "%s channel %lld std %.17g, want %.17g", what, (long long)c,
                  st.std[c], s);
        } else {
            CHECK(st.mean[c] == 0 && st.std[c] == 1);
        }
    }
    int64_t T = l->h * l->w, sshape[3] = {l->n, T, l->c}, lshape[4] = {l->n, l->c, l->h, l->w};
    if (layout == LATENTS_NHWC) lshape[1] = l->h, lshape[2] = l->w, lshape[3] = l->c;
    float *y = read_all(seq, 3, sshape);
    CHECK(latents_to_latents(seq, back, &rd, 0, 0, layout) == 0, "%s", givt_last_error());
    float *xb = read_all(back, 4, lshape);
    int bad_seq = 0, bad_back = 0;
    for (int64_t n = 0; y && xb && n < l->n; n++)
        for (int64_t c = 0; c < l->c; c++)
            for (int64_t h = 0; h < l->h; h++)
                for (int64_t w = 0; w < l->w; w++) {
                    double x = *lat_at(l, n, c, h, w);
                    float want = (float)((x - st.mean[c]) / st.std[c]), x32 = (float)x;
                    bad_seq += y[(n * T + h * l->w + w) * l->c + c] != want;  // raster order: t = h * W + w
                    int64_t o = layout == LATENTS_NCHW ? ((n * l->c + c) * l->h + h) * l->w + w
                                                       : ((n * l->h + h) * l->w + w) * l->c + c;
                    double tol = standardize ? ldexp(fabs(x32) + fabs(x - st.mean[c]), -23) : 0.0;
                    bad_back += !(fabs((double)xb[o] - (double)x32) <= tol);
                }
    CHECK(bad_seq == 0, "%s %s fortran %d: %d sequence values differ from (x - mean) / std", what, descr, fortran, bad_seq);
    CHECK(bad_back == 0, "%s %s fortran %d standardize %d: %d values of the round trip off", what, descr, fortran,
          standardize, bad_back);
    free(y);
    free(xb);
    latents_stats_free(&st);
    latents_stats_free(&rd);
}

// Every layout, dtype and order, odd H and W, with and without standardisation.
TEST(latents_round_trip_every_layout_dtype_and_order) {
    char dir[256];
    tu_mkdtemp(dir, "latents");
    const char *descrs[] = {"<f2", "<f4", "<f8"};
    for (int layout = 0; layout < 2; layout++)
        for (int d = 0; d < 3; d++)
            for (int fortran = 0; fortran < 2; fortran++) {
                Lat l = {.n = 7, .c = 3, .h = 5, .w = 3};
                lat_fill(&l, 10 + (uint64_t)(layout * 6 + d * 2 + fortran));
                round_trip(dir, &l, (LatentsLayout)layout, descrs[d], fortran, 1);
                round_trip(dir, &l, (LatentsLayout)layout, descrs[d], fortran, 0);
                free(l.x);
            }
    tu_rmtree(dir);
}

// Blocks of samples: a file of more samples than one block holds gives the same statistics (Chan's
// merge) and sequences as the reference.
TEST(latents_many_blocks) {
    char dir[256];
    tu_mkdtemp(dir, "latents");
    Lat l = {.n = 600, .c = 2, .h = 64, .w = 64};  // 2^21 values per block: 256 samples per block
    lat_fill(&l, 3);
    round_trip(dir, &l, LATENTS_NCHW, "<f4", 0, 1);
    free(l.x);
    tu_rmtree(dir);
}

// A constant channel (std 0) keeps std 1 and its value as mean: its sequence values are exactly 0 and
// the round trip gives the value back exactly; so does a 1 x 1 grid of one sample (every channel
// constant).
TEST(latents_constant_channel) {
    char dir[256];
    tu_mkdtemp(dir, "latents");
    Lat l = {.n = 4, .c = 3, .h = 3, .w = 5};
    lat_fill(&l, 8);
    for (int64_t n = 0; n < l.n; n++)
        for (int64_t i = 0; i < l.h * l.w; i++) *lat_at(&l, n, 1, i / l.w, i % l.w) = 3.25;
    char in[512], seq[512], stats[512], back[512];
    snprintf(in, sizeof in, "%s", tu_path(dir, "in.npy"));
    snprintf(seq, sizeof seq, "%s", tu_path(dir, "seq.npy"));
    snprintf(stats, sizeof stats, "%s", tu_path(dir, "seq.stats.json"));
    snprintf(back, sizeof back, "%s", tu_path(dir, "back.npy"));
    lat_write(&l, in, LATENTS_NCHW, "<f4", 0);
    LatentsStats st;
    CHECK(latents_to_sequences(in, seq, stats, LATENTS_NCHW, 1, &st) == 0, "%s", givt_last_error());
    CHECK(st.constant[1] && !st.constant[0] && !st.constant[2] && st.mean[1] == 3.25 && st.std[1] == 1.0 &&
          latents_stats_num_constant(&st) == 1);
    char *json = fs_read_text(stats, NULL);
    CHECK(json && strstr(json, "\"constant_channels\": [1]"), "%s", json ? json : "(none)");
    free(json);
    int64_t sshape[3] = {4, 15, 3}, lshape[4] = {4, 3, 3, 5};
    float *y = read_all(seq, 3, sshape);
    for (int64_t i = 0; y && i < 4 * 15; i++) CHECK(y[i * 3 + 1] == 0.0f, "value %lld of the constant channel", (long long)i);
    CHECK(latents_to_latents(seq, back, &st, 0, 0, LATENTS_NCHW) == 0, "%s", givt_last_error());
    float *xb = read_all(back, 4, lshape);
    for (int64_t n = 0; xb && n < 4; n++)
        for (int64_t i = 0; i < 15; i++) CHECK(xb[(n * 3 + 1) * 15 + i] == 3.25f);
    free(y), free(xb);
    latents_stats_free(&st);
    Lat one = {.n = 1, .c = 2, .h = 1, .w = 1};
    lat_fill(&one, 1);
    round_trip(dir, &one, LATENTS_NHWC, "<f8", 0, 1);
    free(one.x);
    free(l.x);
    tu_rmtree(dir);
}

// Expects rc == -1 with a one-line message holding a and b, and nothing at path never.
static void expect_error(int rc, const char *a, const char *b, const char *never, int line) {
    if (rc != -1 || !tu_error_has(a, b))
        t_fail_at(__FILE__, line, NULL, "rc %d, error \"%s\": want \"%s\" and \"%s\"", rc, givt_last_error(), a,
                  b ? b : "");
    if (never && fs_path_exists(never)) t_fail_at(__FILE__, line, NULL, "%s was written", never);
}
#define EXPECT_ERROR(rc, a, b, never) expect_error((rc), (a), (b), (never), __LINE__)

// The inputs to-sequences refuses, each with a message naming the file and what to do; nothing written.
TEST(latents_to_sequences_errors) {
    char dir[256], in[512], out[512], stats[512];
    tu_mkdtemp(dir, "latents");
    snprintf(in, sizeof in, "%s", tu_path(dir, "in.npy"));
    snprintf(out, sizeof out, "%s", tu_path(dir, "out.npy"));
    snprintf(stats, sizeof stats, "%s", tu_path(dir, "out.stats.json"));
    LatentsStats st;
    float v[2 * 3 * 4 * 5] = {0};
    put_npy(in, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }", v, 2 * 3 * 4 * 4);
    EXPECT_ERROR(latents_to_sequences(in, out, stats, LATENTS_NCHW, 1, &st), "in.npy: array has rank 3",
                 "already is (N, T, D) sequences", out);
    put_npy(in, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", v, 12 * 4);
    EXPECT_ERROR(latents_to_sequences(in, out, stats, LATENTS_NCHW, 1, &st), "array has rank 2", "rank 4", out);
    put_npy(in, "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2, 3, 4), }", v, 24 * 4);
    EXPECT_ERROR(latents_to_sequences(in, out, stats, LATENTS_NCHW, 1, &st), "dtype '<i4' not supported",
                 "float64 '<f8'", out);
    put_npy(in, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0, 4, 5), }", v, 0);
    EXPECT_ERROR(latents_to_sequences(in, out, stats, LATENTS_NCHW, 1, &st), "has an empty axis", NULL, out);
    // NaN at [n, c, h, w] = [1, 2, 3, 4] (flat index ((1*3 + 2)*4 + 3)*5 + 4 = 119), as nchw and as nhwc
    v[119] = NAN;
    put_npy(in, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4, 5), }", v, sizeof v);
    EXPECT_ERROR(latents_to_sequences(in, out, stats, LATENTS_NCHW, 1, &st), "in.npy: non-finite value (nan)",
                 "[n, c, h, w] = [1, 2, 3, 4]", out);
    EXPECT_ERROR(latents_to_sequences(in, out, stats, LATENTS_NHWC, 0, &st), "non-finite value (nan)",
                 "[n, h, w, c] = [1, 2, 3, 4]", out);
    double big[2 * 1 * 1 * 2] = {0, 1, 1e300, 2};
    put_npy(in, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1, 1, 2), }", big, sizeof big);
    EXPECT_ERROR(latents_to_sequences(in, out, stats, LATENTS_NHWC, 1, &st), "value 1e+300 at index [n, h, w, c] = [1, 0, 0, 0]",
                 "does not fit in float32", out);
    CHECK(!fs_path_exists(stats));
    tu_rmtree(dir);
}

// The statistics and samples to-latents refuses: another JSON file, a file that is no JSON, a
// damaged statistics file, samples of another T or D; nothing written.
TEST(latents_to_latents_errors) {
    char dir[256], in[512], seq[512], stats[512], out[512], bad[512];
    tu_mkdtemp(dir, "latents");
    snprintf(in, sizeof in, "%s", tu_path(dir, "in.npy"));
    snprintf(seq, sizeof seq, "%s", tu_path(dir, "seq.npy"));
    snprintf(stats, sizeof stats, "%s", tu_path(dir, "seq.stats.json"));
    snprintf(out, sizeof out, "%s", tu_path(dir, "out.npy"));
    snprintf(bad, sizeof bad, "%s", tu_path(dir, "bad.json"));
    CHECK(latents_write_synthetic(in, 3, 2, 3, 4, LATENTS_NCHW, NPY_F16, 1) == 0, "%s", givt_last_error());
    LatentsStats st, rd;
    CHECK(latents_to_sequences(in, seq, stats, LATENTS_NCHW, 1, &st) == 0, "%s", givt_last_error());
    latents_stats_free(&st);
    EXPECT_ERROR(latents_stats_read(in, &rd), "in.npy: invalid JSON", "the .stats.json that givt-latents", NULL);
    tu_put_text(bad, "{\"input_dim\": 4, \"hidden_dim\": 8}");
    EXPECT_ERROR(latents_stats_read(bad, &rd), "bad.json: not a statistics file of givt-latents", NULL, NULL);
    char *good = fs_read_text(stats, NULL);
    const struct {
        const char *from, *to, *want;
    } damage[] = {
        {"\"std\": [", "\"std\": [0, ", "key \"std\": expected an array of 2 numbers"},
        {"\"std\": [", "\"std\": [-1, 1], \"x\": [", "key \"std\", element 0: expected a finite number > 0"},
        {"\"height\": 3", "\"height\": 0", "key \"height\": expected a whole number >= 1"},
        {"\"layout\": \"nchw\"", "\"layout\": \"chw\"", "key \"layout\": expected \"nchw\" or \"nhwc\""},
        {"\"version\": 1", "\"version\": 2", "key \"version\": expected 1"},
    };
    for (size_t i = 0; good && i < sizeof damage / sizeof *damage; i++) {
        char *at = strstr(good, damage[i].from);
        CHECK(at != NULL, "case %zu", i);
        if (!at) continue;
        char text[4096];
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - good), good, damage[i].to, at + strlen(damage[i].from));
        tu_put_text(bad, text);
        EXPECT_ERROR(latents_stats_read(bad, &rd), "bad.json: ", damage[i].want, NULL);
    }
    free(good);
    CHECK(latents_stats_read(stats, &rd) == 0, "%s", givt_last_error());
    float y[3 * 11 * 2] = {0};
    int64_t s11[3] = {3, 11, 2}, s3[3] = {3, 4, 3};
    CHECK(npy_write_f32(seq, y, 3, s11) == 0);
    EXPECT_ERROR(latents_to_latents(seq, out, &rd, 0, 0, LATENTS_NCHW), "seq.npy: sequences have T = 11 vectors",
                 "height x width = 3 x 4 = 12 (sample with --max-len 12)", out);
    CHECK(npy_write_f32(seq, y, 3, s3) == 0);
    EXPECT_ERROR(latents_to_latents(seq, out, &rd, 0, 0, LATENTS_NCHW), "seq.npy: vectors have D = 3",
                 "the latents have 2 channels", out);
    float z[3 * 12 * 2] = {0};
    z[1 * 24 + 5 * 2 + 1] = INFINITY;
    int64_t s12[3] = {3, 12, 2};
    CHECK(npy_write_f32(seq, z, 3, s12) == 0);
    EXPECT_ERROR(latents_to_latents(seq, out, &rd, 0, 0, LATENTS_NCHW), "seq.npy: non-finite value",
                 "[n, t, d] = [1, 5, 1]", out);
    EXPECT_ERROR(latents_to_latents(seq, out, NULL, 0, 4, LATENTS_NCHW), "height and width are needed", NULL, out);
    latents_stats_free(&rd);
    tu_rmtree(dir);
}

// Without standardisation (no statistics): samples become latents value for value.
TEST(latents_to_latents_without_statistics) {
    char dir[256], seq[512], out[512];
    tu_mkdtemp(dir, "latents");
    snprintf(seq, sizeof seq, "%s", tu_path(dir, "seq.npy"));
    snprintf(out, sizeof out, "%s", tu_path(dir, "out.npy"));
    float y[2 * 6 * 3];
    for (int i = 0; i < 36; i++) y[i] = (float)i;
    int64_t s[3] = {2, 6, 3}, o[4] = {2, 3, 2, 3};
    CHECK(npy_write_f32(seq, y, 3, s) == 0);
    CHECK(latents_to_latents(seq, out, NULL, 2, 3, LATENTS_NCHW) == 0, "%s", givt_last_error());
    float *x = read_all(out, 4, o);
    for (int n = 0; x && n < 2; n++)
        for (int c = 0; c < 3; c++)
            for (int t = 0; t < 6; t++) CHECK(x[(n * 3 + c) * 6 + t] == y[(n * 6 + t) * 3 + c]);
    free(x);
    tu_rmtree(dir);
}

// npy_open's errors for what the converter takes point to it (rank 4, in any dtype and order) or give
// the numpy line that fixes the file (float64, Fortran order).
TEST(npy_open_errors_point_to_the_converter) {
    char dir[256], p[512];
    tu_mkdtemp(dir, "latents");
    snprintf(p, sizeof p, "%s", tu_path(dir, "x.npy"));
    float v[2 * 3 * 4 * 5] = {0};
    const struct {
        const char *dict;
        size_t bytes;
        const char *a, *b;
    } cases[] = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4, 5), }", sizeof v,
         "array has rank 4, shape (2, 3, 4, 5)", "givt-latents to-sequences"},
        {"{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3, 2, 5), }", sizeof v, "array has rank 4",
         "Train on your own latents"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3, 10), }", sizeof v, "dtype '<f8' not supported (float64",
         "np.ascontiguousarray(np.load("},
        {"{'descr': '<f2', 'fortran_order': True, 'shape': (2, 3, 4), }", 48, "Fortran-order arrays are not supported",
         "dtype=np.float32))"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        put_npy(p, cases[i].dict, v, cases[i].bytes);
        NpyFile f;
        CHECK(npy_open(&f, p) == -1 && tu_error_has(cases[i].a, cases[i].b), "case %zu: %s", i, givt_last_error());
    }
    tu_rmtree(dir);
}

// The streamed writer: pieces make the same file as npy_write; too many or too few bytes are errors
// and leave no file.
TEST(npy_writer_streams_and_checks_the_size) {
    char dir[256], a[512], b[512];
    tu_mkdtemp(dir, "latents");
    snprintf(a, sizeof a, "%s", tu_path(dir, "a.npy"));
    snprintf(b, sizeof b, "%s", tu_path(dir, "b.npy"));
    float x[2 * 3 * 4];
    for (int i = 0; i < 24; i++) x[i] = (float)i * 0.5f;
    int64_t s[3] = {2, 3, 4};
    CHECK(npy_write_f32(a, x, 3, s) == 0);
    NpyWriter w;
    CHECK(npy_writer_open(&w, b, "<f4", 4, 3, s) == 0);
    CHECK(npy_writer_write(&w, x, 40) == 0 && npy_writer_write(&w, x + 10, 56) == 0 && npy_writer_commit(&w) == 0,
          "%s", givt_last_error());
    CHECK(tu_same_file(a, b));
    unlink(b);
    CHECK(npy_writer_open(&w, b, "<f4", 4, 3, s) == 0);
    CHECK(npy_writer_write(&w, x, 40) == 0);
    EXPECT_ERROR(npy_writer_commit(&w), "b.npy: 40 of the shape's 96 data bytes written", NULL, b);
    CHECK(npy_writer_open(&w, b, "<f4", 4, 3, s) == 0);
    EXPECT_ERROR(npy_writer_write(&w, x, 100), "4 more data bytes than the shape holds", NULL, NULL);
    CHECK(npy_writer_commit(&w) == -1 && !fs_path_exists(b));
    tu_rmtree(dir);
}
