// digits: digits.bin -> (n, T, D) float32 .npy of patch sequences (see digits.h).
#define _POSIX_C_SOURCE 200809L
#include "digits.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "npy.h"
#include "rng.h"
#include "util.h"

static uint32_t rd_u32(const unsigned char *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

// The header's n, h, w, maxval, checked against each other, the patch size and the file's size (so a
// lying header is an error before anything it asks for is allocated). -1 with givt_fail.
static int read_digits_header(int fd, const char *bin_path, int patch, uint32_t dims[4]) {
    unsigned char hdr[24];
    struct stat st;
    if (fstat(fd, &st) != 0) return givt_fail("%s: cannot stat: %s", bin_path, strerror(errno));
    if (st.st_size < (off_t)sizeof hdr || fs_pread_full(fd, bin_path, hdr, sizeof hdr, 0) || memcmp(hdr, "GIVTDIG1", 8))
        return givt_fail("%s: not a digits file (bad magic or short header)", bin_path);
    uint32_t n = rd_u32(hdr + 8), h = rd_u32(hdr + 12), w = rd_u32(hdr + 16), maxval = rd_u32(hdr + 20);
    if (n < 1 || n > (1u << 24) || h < 1 || h > 4096 || w < 1 || w > 4096 || maxval < 1 || maxval > 255)
        return givt_fail("%s: implausible header (n %u, %ux%u, maxval %u)", bin_path, n, h, w, maxval);
    if (patch < 1 || h % (uint32_t)patch || w % (uint32_t)patch)
        return givt_fail("patch = %d: must divide the image size %ux%u", patch, h, w);
    uint64_t body = (uint64_t)n * h * w + n, have = (uint64_t)st.st_size - sizeof hdr;
    if (have != body)
        return givt_fail("%s: %s: the header (n %u, %ux%u) needs %llu bytes after it, the file has %llu",
                         bin_path, have < body ? "truncated" : "too long", n, h, w, (unsigned long long)body,
                         (unsigned long long)have);
    dims[0] = n, dims[1] = h, dims[2] = w, dims[3] = maxval;
    return 0;
}

int digits_to_npy(const char *bin_path, const char *npy_out, const char *labels_out, int patch,
                  int64_t dequant_seed, DigitsInfo *info) {
    int fd = fs_open_regular_file(bin_path);
    if (fd < 0) return -1;
    uint32_t dims[4] = {0};
    if (read_digits_header(fd, bin_path, patch, dims)) {
        close(fd);
        return -1;
    }
    uint32_t n = dims[0], h = dims[1], w = dims[2], maxval = dims[3];
    size_t npix = (size_t)h * w, body = (size_t)n * npix + n;
    unsigned char *raw = xmalloc(body);
    int bad = fs_pread_full(fd, bin_path, raw, body, 24);
    close(fd);
    if (bad) {
        free(raw);
        return -1;
    }
    const unsigned char *pix = raw, *lab = raw + (size_t)n * npix;
    // level + u, u ~ U(0, 1) from one seeded stream in pixel order (dequantization), or the level
    double *level = xmalloc((size_t)n * npix * sizeof *level);
    Rng rng;
    rng_seed(&rng, (uint64_t)dequant_seed);
    double sum = 0, sumsq = 0;
    for (size_t i = 0; i < (size_t)n * npix; i++) {
        if (pix[i] > maxval) {
            int rc = givt_fail("%s: pixel %zu of image %zu is %d > maxval %u", bin_path, i % npix, i / npix,
                               pix[i], maxval);
            free(raw);
            free(level);
            return rc;
        }
        level[i] = pix[i] + (dequant_seed >= 0 ? rng_uniform(&rng) : 0.0);
        sum += level[i];
        sumsq += level[i] * level[i];
    }
    double cnt = (double)n * (double)npix, mean = sum / cnt, var = sumsq / cnt - mean * mean;
    double sd = var > 0 ? sqrt(var) : 1.0;

    // (n, T, D): token j = patch (pr, pc) in raster order, dim d = pixel (a, b) inside it.
    int p = patch, pw = (int)w / p, T = (int)(npix / (size_t)(p * p)), D = p * p;
    float *x = xmalloc((size_t)n * npix * sizeof *x);
    for (uint32_t i = 0; i < n; i++)
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++) {
                int row = (t / pw) * p + d / p, col = (t % pw) * p + d % p;
                double v = level[(size_t)i * npix + (size_t)row * w + (size_t)col];
                x[((size_t)i * T + t) * D + d] = (float)((v - mean) / sd);
            }

    // Baseline: one diagonal Gaussian per (t, d), fitted by maximum likelihood over the set.
    size_t TD = (size_t)T * D;
    double *mu = xcalloc(TD, sizeof *mu), *va = xcalloc(TD, sizeof *va);
    for (uint32_t i = 0; i < n; i++)
        for (size_t k = 0; k < TD; k++) mu[k] += x[(size_t)i * TD + k];
    for (size_t k = 0; k < TD; k++) mu[k] /= n;
    for (uint32_t i = 0; i < n; i++)
        for (size_t k = 0; k < TD; k++) {
            double e = x[(size_t)i * TD + k] - mu[k];
            va[k] += e * e;
        }
    int constant = 0;
    for (size_t k = 0; k < TD; k++) {
        va[k] /= n;
        if (va[k] < 1e-8) {
            va[k] = 1e-8;  // the model's loss clamps the variance at eps = 1e-8
            constant++;
        }
    }
    double nll = 0, lo = INFINITY, hi = -INFINITY;
    for (uint32_t i = 0; i < n; i++)
        for (size_t k = 0; k < TD; k++) {
            double v = x[(size_t)i * TD + k], e = v - mu[k];
            nll += 0.5 * (log(va[k]) + e * e / va[k]);
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
    free(mu);
    free(va);
    if (info) {
        info->n = n;
        info->T = T;
        info->D = D;
        info->pixel_mean = mean;
        info->pixel_std = sd;
        info->baseline = nll / ((double)n * (double)TD);
        info->constant_dims = constant;
        info->min_value = lo;
        info->max_value = hi;
    }

    int64_t shape[3] = {n, T, D};
    int rc = npy_write_f32(npy_out, x, 3, shape);
    free(x);
    if (rc == 0 && labels_out) {
        int32_t *labels = xmalloc((size_t)n * sizeof *labels);
        for (uint32_t i = 0; i < n; i++) labels[i] = lab[i];
        int64_t ls[1] = {n};
        rc = npy_write(labels_out, "<i4", 4, labels, 1, ls);
        free(labels);
    }
    free(raw);
    free(level);
    return rc;
}
