// givt-latents: latents (N, C, H, W) or (N, H, W, C) to (N, H*W, C) training sequences with
// per-channel standardisation, generated sequences back to latents, and a synthetic latents file.
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latents.h"
#include "util.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: givt-latents to-sequences LATENTS.npy OUT.npy [--layout nchw|nhwc] [--stats STATS.json]\n"
            "                    [--no-standardize]\n"
            "       givt-latents to-latents SAMPLES.npy OUT.npy (--stats STATS.json | --height H --width W)\n"
            "                    [--layout nchw|nhwc]\n"
            "       givt-latents synthetic OUT.npy [--shape N,C,H,W] [--layout nchw|nhwc]\n"
            "                    [--dtype float16|float32|float64] [--seed S]\n"
            "to-sequences: LATENTS (N, C, H, W) (--layout nchw, the default) or (N, H, W, C) (nhwc), float16,\n"
            "  float32 or float64, C or Fortran order -> OUT (N, H*W, C) float32 in raster order (token\n"
            "  t = h * W + w holds the C channels of position (h, w)), each channel standardised to mean 0,\n"
            "  std 1 (population std over N*H*W values; a constant channel becomes 0). The statistics go to\n"
            "  STATS [OUT with .npy replaced by .stats.json]; --no-standardize only converts (mean 0, std 1).\n"
            "to-latents: SAMPLES (N, H*W, C), e.g. givt-sample's output -> OUT float32 (N, C, H, W) (or\n"
            "  (N, H, W, C)), undoing the standardisation: x = y * std + mean. H, W and the layout come from\n"
            "  STATS (--height/--width, when given too, must agree); without --stats nothing is undone.\n"
            "synthetic: a smooth random latents file for trying the pipeline [--shape 256,4,4,4 (N, C, H, W),\n"
            "  nchw, float32, --seed 0]; channel c has mean about 2c - 1 and its own scale.\n");
}

typedef struct {
    const char *cmd, *in, *out, *stats, *shape;
    LatentsLayout layout;
    int layout_set, no_standardize;
    long height, width, seed;
    NpyDtype dtype;
} Args;

// The value of option argv[*i] (its next argument), or NULL with a message.
static const char *value_of(int argc, char **argv, int *i) {
    if (*i + 1 < argc) return argv[++*i];
    givt_fail("%s: expected a value (see --help)", argv[*i]);
    return NULL;
}

static int parse_dtype(const char *v, NpyDtype *out) {
    if (!strcmp(v, "float16")) *out = NPY_F16;
    else if (!strcmp(v, "float32")) *out = NPY_F32;
    else if (!strcmp(v, "float64")) *out = NPY_F64;
    else return givt_fail("--dtype %s: expected float16, float32 or float64", v);
    return 0;
}

// One option at argv[*i] into a; -1 (givt_fail) for an unknown or bad one.
static int parse_option(int argc, char **argv, int *i, Args *a) {
    const char *o = argv[*i], *v;
    if (!strcmp(o, "--no-standardize")) {
        a->no_standardize = 1;
        return 0;
    }
    static const char *const takes_value[] = {"--layout", "--stats", "--height", "--width", "--shape", "--dtype",
                                              "--seed"};
    int known = 0;
    for (size_t k = 0; k < sizeof takes_value / sizeof *takes_value; k++) known |= !strcmp(o, takes_value[k]);
    if (!known) return givt_fail("unknown option %s (see --help)", o);
    if (!(v = value_of(argc, argv, i))) return -1;
    if (!strcmp(o, "--layout")) return a->layout_set = 1, latents_layout_parse(v, &a->layout);
    if (!strcmp(o, "--stats")) return a->stats = v, 0;
    if (!strcmp(o, "--shape")) return a->shape = v, 0;
    if (!strcmp(o, "--dtype")) return parse_dtype(v, &a->dtype);
    if (!strcmp(o, "--height")) return util_parse_long_option(o, v, 1, INT32_MAX, &a->height);
    if (!strcmp(o, "--width")) return util_parse_long_option(o, v, 1, INT32_MAX, &a->width);
    return util_parse_long_option(o, v, 0, INT32_MAX, &a->seed);
}

// Which options each command takes: an option of another command is an error, not ignored.
static int check_options(const Args *a) {
    int seq = !strcmp(a->cmd, "to-sequences"), lat = !strcmp(a->cmd, "to-latents"), syn = !strcmp(a->cmd, "synthetic");
    if (!seq && !lat && !syn)
        return givt_fail("unknown command \"%s\": expected to-sequences, to-latents or synthetic (see --help)", a->cmd);
    if (a->no_standardize && !seq) return givt_fail("--no-standardize: an option of to-sequences");
    if ((a->height || a->width) && !lat) return givt_fail("--height/--width: options of to-latents");
    if ((a->shape || a->dtype != NPY_F32 || a->seed) && !syn) return givt_fail("--shape/--dtype/--seed: options of synthetic");
    if (a->stats && syn) return givt_fail("--stats: an option of to-sequences and to-latents");
    int want = syn ? 1 : 2, have = (a->in != NULL) + (a->out != NULL);
    if (have != want)
        return givt_fail("%s: expected %s (see --help)", a->cmd, syn ? "OUT.npy" : seq ? "LATENTS.npy OUT.npy" : "SAMPLES.npy OUT.npy");
    if (lat && !a->stats && (!a->height || !a->width))
        return givt_fail("to-latents: give --stats STATS.json (written by to-sequences), or --height and --width when "
                         "the data were not standardised");
    return 0;
}

static int parse_args(int argc, char **argv, Args *a) {
    memset(a, 0, sizeof *a);
    a->dtype = NPY_F32;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            exit(0);
        }
        if (argv[i][0] == '-' && argv[i][1]) {
            if (parse_option(argc, argv, &i, a)) return -1;
        } else if (!a->cmd) {
            a->cmd = argv[i];
        } else if (!a->in) {
            a->in = argv[i];
        } else if (!a->out) {
            a->out = argv[i];
        } else {
            return givt_fail("unexpected argument %s (see --help)", argv[i]);
        }
    }
    if (!a->cmd) return givt_fail("expected a command: to-sequences, to-latents or synthetic (see --help)");
    if (!strcmp(a->cmd, "synthetic") && !a->out) a->out = a->in, a->in = NULL;
    else if (!strcmp(a->cmd, "synthetic")) return givt_fail("synthetic: expected OUT.npy only (see --help)");
    return check_options(a);
}

static void print_channels(const LatentsStats *st) {
    for (int64_t c = 0; c < st->channels; c++) {
        if (st->constant[c])
            printf("channel %lld: constant %.9g: its sequence values are 0 (std 1 kept, so to-latents gives the "
                   "value back)\n",
                   (long long)c, st->mean[c]);
        else if (st->standardized)
            printf("channel %lld: mean %.9g, std %.9g\n", (long long)c, st->mean[c], st->std[c]);
    }
}

static int to_sequences(const Args *a) {
    char *stats = a->stats ? NULL : latents_default_stats_path(a->out);
    const char *stats_path = a->stats ? a->stats : stats;
    LatentsStats st;
    int rc = latents_to_sequences(a->in, a->out, stats_path, a->layout, !a->no_standardize, &st);
    if (rc == 0) {
        printf("wrote %s (%lld, %lld, %lld) float32 from %s (%s, %s), statistics in %s\n", a->out, (long long)st.n,
               (long long)(st.height * st.width), (long long)st.channels, a->in, latents_layout_name(st.layout),
               npy_dtype_name(st.dtype), stats_path);
        print_channels(&st);
        printf("train with: model.input_dim=%lld data.seq_len=%lld (model.block_size >= %lld)\n", (long long)st.channels,
               (long long)(st.height * st.width), (long long)(st.height * st.width));
    }
    latents_stats_free(&st);
    free(stats);
    return rc;
}

static int to_latents(const Args *a) {
    LatentsStats st = {0};
    if (a->stats && latents_stats_read(a->stats, &st)) return -1;
    int rc = 0;
    if (a->stats && ((a->height && a->height != st.height) || (a->width && a->width != st.width)))
        rc = givt_fail("--height %ld --width %ld but %s says height %lld, width %lld", a->height ? a->height : (long)st.height,
                       a->width ? a->width : (long)st.width, a->stats, (long long)st.height, (long long)st.width);
    LatentsLayout layout = a->layout_set || !a->stats ? a->layout : st.layout;
    if (rc == 0) rc = latents_to_latents(a->in, a->out, a->stats ? &st : NULL, a->height, a->width, layout);
    if (rc == 0) printf("wrote %s (%s, float32) from %s\n", a->out, layout == LATENTS_NCHW ? "N, C, H, W" : "N, H, W, C", a->in);
    latents_stats_free(&st);
    return rc;
}

static int synthetic(const Args *a) {
    long d[4] = {256, 4, 4, 4};
    if (a->shape) {
        char extra;
        if (sscanf(a->shape, "%ld,%ld,%ld,%ld%c", &d[0], &d[1], &d[2], &d[3], &extra) != 4)
            return givt_fail("--shape %s: expected N,C,H,W (four whole numbers, e.g. 256,4,4,4)", a->shape);
    }
    if (latents_write_synthetic(a->out, d[0], d[1], d[2], d[3], a->layout, a->dtype, (uint64_t)a->seed)) return -1;
    printf("wrote %s: synthetic latents (N, C, H, W) = (%ld, %ld, %ld, %ld), stored %s, %s\n", a->out, d[0], d[1], d[2],
           d[3], latents_layout_name(a->layout), npy_dtype_name(a->dtype));
    return 0;
}

int main(int argc, char **argv) {
    Args a;
    int rc = parse_args(argc, argv, &a);
    if (rc == 0) rc = !strcmp(a.cmd, "to-sequences") ? to_sequences(&a) : !strcmp(a.cmd, "to-latents") ? to_latents(&a) : synthetic(&a);
    if (rc) fprintf(stderr, "givt-latents: %s\n", givt_last_error());
    return rc ? 1 : 0;
}
