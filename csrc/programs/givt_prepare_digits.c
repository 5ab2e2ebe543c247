// givt-prepare-digits: turns data/digits/digits.bin into an (N, T, D) float32 .npy of patch sequences
// (and optionally the labels) and prints the per-position diagonal Gaussian baseline loss.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digits.h"
#include "util.h"

// The usage text on out; exits with status (0 for --help, 2 for a wrong command line).
static void usage(const char *prog, FILE *out, int status) {
    fprintf(out,
            "usage: %s DIGITS.bin OUT.npy [--patch P] [--labels LABELS.npy] [--no-dequantize]\n"
            "       %s --help\n"
            "  P divides the 8x8 image (1, 2, 4 or 8; default 2): T = (8/P)^2 tokens of D = P*P values\n"
            "  values are level + U(0, 1) noise (seed 0) before scaling, unless --no-dequantize\n",
            prog, prog);
    exit(status);
}

int main(int argc, char **argv) {
    const char *bin = NULL, *out = NULL, *labels = NULL;
    int patch = 2;
    int64_t dequant_seed = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(argv[0], stdout, 0);
        } else if (strcmp(argv[i], "--patch") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 64) {
                fprintf(stderr, "%s: --patch %s: not a patch size\n", argv[0], argv[i]);
                return 2;
            }
            patch = (int)v;
        } else if (strcmp(argv[i], "--labels") == 0 && i + 1 < argc) {
            labels = argv[++i];
        } else if (strcmp(argv[i], "--no-dequantize") == 0) {
            dequant_seed = -1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "%s: %s: unknown option\n", argv[0], argv[i]);
            usage(argv[0], stderr, 2);
        } else if (!bin) {
            bin = argv[i];
        } else if (!out) {
            out = argv[i];
        } else {
            usage(argv[0], stderr, 2);
        }
    }
    if (!bin || !out) usage(argv[0], stderr, 2);
    DigitsInfo info;
    if (digits_to_npy(bin, out, labels, patch, dequant_seed, &info)) {
        fprintf(stderr, "%s: %s\n", argv[0], givt_last_error());
        return 1;
    }
    printf("wrote %s: (%lld, %d, %d) float32, patches of %dx%d in raster order\n", out, (long long)info.n,
           info.T, info.D, patch, patch);
    if (labels) printf("wrote %s: (%lld,) int32 labels\n", labels, (long long)info.n);
    printf("transform: x = (pixel%s - %.17g) / %.17g  (mean and std over the set); range [%.6f, %.6f]\n",
           dequant_seed >= 0 ? " + U(0,1)" : "", info.pixel_mean, info.pixel_std, info.min_value, info.max_value);
    printf("baseline loss (per-position diagonal Gaussian) = %.6f\n", info.baseline);
    if (info.constant_dims)
        printf("note: %d of %d (t, d) entries are constant over the set; their variance is clamped at 1e-8\n",
               info.constant_dims, info.T * info.D);
    return 0;
}
