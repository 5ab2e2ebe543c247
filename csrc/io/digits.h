// digits: the bundled handwritten-digits set (data/digits/digits.bin, see data/digits/README.md)
// converted into an .npy of patch sequences, with the constants of its transform and a baseline loss.
#ifndef GIVT_DIGITS_H
#define GIVT_DIGITS_H

#include <stdint.h>

typedef struct {
    int64_t n;          // images (1797)
    int T, D;           // tokens per image (8/patch)^2 and vector size patch^2
    double pixel_mean;  // mean and (population) std of all pixel values 0..16 used by the transform
    double pixel_std;
    double baseline;    // mean NLL (without 0.5*log(2*pi)) under the per-position diagonal Gaussian
    int constant_dims;  // (t, d) entries with zero variance over the set (their variance is clamped)
    double min_value, max_value;
} DigitsInfo;

// Converts digits.bin into npy_out: (n, T, D) float32 where image i's patch j (patches of
// patch x patch pixels in raster order over the image, pixels in raster order inside a patch) is
// token j, and x = (level - pixel_mean) / pixel_std with the mean and std over all values of the set.
// level is the pixel value 0..16, plus u ~ U(0, 1) when dequant_seed >= 0 (uniform dequantization,
// one stream seeded by dequant_seed in pixel order): a continuous density on discrete data, so that no
// always-zero pixel lets the loss run to -inf through the variance clamp.
// patch must divide the image side (1, 2, 4, 8). labels_out (NULL to skip) gets (n,) int32 labels.
// info (may be NULL) receives the sizes, the transform's constants and the baseline loss: for each
// position t and dim d, the mean and variance over the set (variance clamped at 1e-8 as in the
// model's loss), and the mean of 0.5*(log var + (x - mu)^2 / var) over all n*T*D values.
int digits_to_npy(const char *bin_path, const char *npy_out, const char *labels_out, int patch,
                  int64_t dequant_seed, DigitsInfo *info);

#endif
