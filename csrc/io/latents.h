// latents: image-like arrays (a VAE's latents) as GIVT sequences, and generated sequences back.
//
// to-sequences: (N, C, H, W) ("nchw", PyTorch's order) or (N, H, W, C) ("nhwc"), float16, float32 or
// float64, C or Fortran order -> (N, H*W, C) float32 in raster order: token t = h * W + w holds the C
// channels of position (h, w), rows from the top, each row from the left. Each channel is
// standardised, y = (x - mean_c) / std_c (mean and population std over its N*H*W values, in float64),
// and the statistics go to a JSON file beside the output. A constant channel (std 0) keeps std 1 and
// its value as mean: its sequence values are 0, and the inverse gives the value back exactly.
// to-latents: (N, H*W, C) sequences (e.g. givt-sample's output) -> x = y * std_c + mean_c as float32
// (N, C, H, W) or (N, H, W, C), ready for the decoder. The round trip gives back the float32 input to
// within one rounding of the standardised value: |x' - x| <= 2^-23 (|x| + |x - mean_c|); without
// standardisation it is exact.
// Both stream the data through in blocks of samples: files larger than memory convert.
#ifndef GIVT_LATENTS_H
#define GIVT_LATENTS_H

#include <stdint.h>

#include "npy.h"

typedef enum { LATENTS_NCHW, LATENTS_NHWC } LatentsLayout;
const char *latents_layout_name(LatentsLayout l);              // "nchw", "nhwc"
int latents_layout_parse(const char *s, LatentsLayout *out);  // -1 (givt_fail) for another name

// What to-sequences did, as written to its JSON statistics file; what to-latents undoes.
typedef struct {
    LatentsLayout layout;      // of the latents
    int64_t n, channels, height, width;
    NpyDtype dtype;            // of the latents file
    int standardized;          // 0: mean 0 and std 1 for every channel (the values only became float32)
    double *mean, *std;        // (channels): y = (x - mean) / std
    unsigned char *constant;   // (channels): 1 for a channel with one value (its std is then 1)
} LatentsStats;

void latents_stats_free(LatentsStats *s);  // safe on a zeroed LatentsStats
// mean 0, std 1 for channels channels (no standardisation), the rest as given.
void latents_stats_identity(LatentsStats *s, LatentsLayout layout, int64_t channels, int64_t height, int64_t width);
int64_t latents_stats_num_constant(const LatentsStats *s);
// The JSON file (written atomically): "format": "givt-latents-stats", "version": 1, "layout", "shape",
// "dtype", "height", "width", "channels", "standardized", "mean", "std", "constant_channels", and
// "order" describing the raster order in words. Read back checks every key it needs and names the
// file and key of a problem (another JSON file, a wrong length, a std <= 0, ...).
int latents_stats_write(const char *path, const LatentsStats *s);
int latents_stats_read(const char *path, LatentsStats *s);
// OUT.npy -> OUT.stats.json (OUT + ".stats.json" when it does not end in .npy); malloc'd.
char *latents_default_stats_path(const char *out);

// in (rank 4, layout) -> out (N, H*W, C) float32, standardised when standardize; st gets the
// statistics (caller frees), also written to stats_path. A NaN or Inf, or a float64 value beyond
// float32's range, is an error naming the file and the index [n, c, h, w] (or [n, h, w, c]); rank 3
// says the array already is sequences. Nothing is written on an error.
int latents_to_sequences(const char *in, const char *out, const char *stats_path, LatentsLayout layout,
                         int standardize, LatentsStats *st);

// samples (N, T, D) float32/float16 -> out float32 (N, C, H, W) or (N, H, W, C) (layout), with
// x = y * std + mean per channel. st: the statistics (its height and width; the arguments are then
// unused), or NULL: nothing to undo, height and width as given, C = D. T must be height * width and D
// the channels (errors say which number disagrees); a non-finite sample is an error naming the index
// [n, t, d]. Nothing is written on an error.
int latents_to_latents(const char *samples, const char *out, const LatentsStats *st, int64_t height,
                       int64_t width, LatentsLayout layout);

// A synthetic latents file for examples and tests: shape (N, C, H, W) given as n, c, h, w, written in
// layout as dtype; channel c is offset 2c - 1 plus scale (c % 3 + 1) / 2 times a smooth wave of
// random phase and amplitude per sample, plus 10% noise (seeded). C order.
int latents_write_synthetic(const char *path, int64_t n, int64_t c, int64_t h, int64_t w, LatentsLayout layout,
                            NpyDtype dtype, uint64_t seed);

#endif
