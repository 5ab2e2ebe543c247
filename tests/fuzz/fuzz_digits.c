// fuzz_digits: the digits.bin reader and converter (digits_to_npy: header checks against the file's
// size, pixels against maxval, the patch transform, the statistics and the baseline), writing the
// .npy of patch sequences and the labels into the scratch folder.
//
// Input: a digits.bin file (data/digits/README.md: "GIVTDIG1", uint32 n, height, width, maxval, then
// n*height*width pixels and n labels). Its last byte (a label when the file is valid) picks the
// options: bit 0 dequantization (seed 0) or none (-1), bit 1 patch 2 or 4.
// Properties checked beyond "no crash, no sanitizer report, no exit":
//   - on success the sizes agree with the header: n images of height x width, T = (h/p)(w/p),
//     D = p^2 (T*D = 64 for 8x8 images); mean, std (> 0), baseline, min <= max finite; constant
//     dims in [0, T*D];
//   - the written .npy opens as (n, T, D) float32 with finite values in [min, max], and the labels
//     file holds the n label bytes of the input;
//   - on failure, the message (givt_last_error) is one line.
#include "fuzz_util.h"

#include <math.h>

#include "digits.h"
#include "npy.h"
#include "util.h"

static uint32_t rd_u32(const uint8_t *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void check_output(const uint8_t *data, size_t size, int patch, const DigitsInfo *info, const char *npy_out,
                         const char *labels_out) {
    FUZZ_CHECK(size >= 24, "accepted a %zu-byte file", size);
    uint32_t n = rd_u32(data + 8), h = rd_u32(data + 12), w = rd_u32(data + 16);
    FUZZ_CHECK(info->n == (int64_t)n && n >= 1, "n %lld, header %u", (long long)info->n, n);
    FUZZ_CHECK(h % (uint32_t)patch == 0 && w % (uint32_t)patch == 0, "patch %d of %ux%u accepted", patch, h, w);
    FUZZ_CHECK(info->D == patch * patch && (int64_t)info->T == (int64_t)(h / patch) * (w / patch),
               "T %d, D %d for %ux%u images and patch %d", info->T, info->D, h, w, patch);
    FUZZ_CHECK((int64_t)info->T * info->D == (int64_t)h * w, "T*D = %lld, %ux%u pixels",
               (long long)info->T * info->D, h, w);
    FUZZ_CHECK((uint64_t)size == 24 + (uint64_t)n * h * w + n, "%zu bytes accepted for n %u, %ux%u", size, n, h, w);
    FUZZ_CHECK(isfinite(info->pixel_mean) && isfinite(info->pixel_std) && info->pixel_std > 0,
               "pixel mean %g, std %g", info->pixel_mean, info->pixel_std);
    FUZZ_CHECK(isfinite(info->baseline), "baseline %g", info->baseline);
    FUZZ_CHECK(isfinite(info->min_value) && isfinite(info->max_value) && info->min_value <= info->max_value,
               "values in [%g, %g]", info->min_value, info->max_value);
    FUZZ_CHECK(info->constant_dims >= 0 && info->constant_dims <= info->T * info->D, "constant dims %d",
               info->constant_dims);
    FUZZ_MAGNITUDE(n);
    FUZZ_MAGNITUDE(h);
    FUZZ_MAGNITUDE(w);

    NpyFile f;
    FUZZ_CHECK(npy_open(&f, npy_out) == 0, "the written .npy does not open: %s", givt_last_error());
    FUZZ_CHECK(f.dtype == NPY_F32 && f.ndim == 3 && f.shape[0] == (int64_t)n && f.shape[1] == info->T &&
                   f.shape[2] == info->D,
               "written as (%lld, %lld, %lld), expected (%u, %d, %d)", (long long)f.shape[0],
               (long long)f.shape[1], (long long)f.shape[2], n, info->T, info->D);
    float *x = malloc((size_t)f.numel * sizeof(float) + 1);
    FUZZ_CHECK(npy_read_f32(&f, 0, f.numel, x) == 0, "%s", givt_last_error());
    for (int64_t i = 0; i < f.numel; i++)
        FUZZ_CHECK(isfinite(x[i]) && x[i] >= (float)info->min_value && x[i] <= (float)info->max_value,
                   "element %lld is %g, outside [%g, %g]", (long long)i, (double)x[i], info->min_value,
                   info->max_value);
    free(x);
    npy_close(&f);

    int32_t *labels;
    int64_t nl;
    FUZZ_CHECK(npy_read_labels(labels_out, &labels, &nl) == 0, "the written labels do not read: %s",
               givt_last_error());
    FUZZ_CHECK(nl == (int64_t)n, "%lld labels for %u images", (long long)nl, n);
    const uint8_t *lab = data + size - n;
    for (uint32_t i = 0; i < n; i++) FUZZ_CHECK(labels[i] == lab[i], "label %u: %d, the file has %d", i, labels[i], lab[i]);
    free(labels);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *bin = fuzz_path("digits.bin"), *npy_out = fuzz_path("digits.npy"), *labels_out = fuzz_path("labels.npy");
    fuzz_write_file(bin, data, size);
    uint8_t opt = size ? data[size - 1] : 0;
    int64_t dequant_seed = (opt & 1) ? 0 : -1;
    int patch = (opt & 2) ? 2 : 4;
    DigitsInfo info;
    memset(&info, 0, sizeof info);
    if (digits_to_npy(bin, npy_out, labels_out, patch, dequant_seed, &info) == 0) {
        check_output(data, size, patch, &info, npy_out, labels_out);
    } else {
        const char *msg = givt_last_error();
        FUZZ_CHECK(strchr(msg, '\n') == NULL, "the message is not one line: \"%s\"", msg);
    }
    return 0;
}
