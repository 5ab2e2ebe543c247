// givt-sample: generates sequences from a trained GIVT (a Hugging Face folder or a checkpoint) with
// a KV cache, batched, and writes them to an .npy file.
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hf.h"
#include "model.h"
#include "npy.h"
#include "sample.h"
#include "stop_signal.h"

typedef struct {
    const char *folder, *out, *prompt, *device, *labels;
    Precision precision;
    int max_len, num_samples, batch_size, ema;
    long class_id;  // -1: none
    double temperature, cfg_scale;
    uint64_t seed;
} Args;

static void usage(FILE *out) {
    fprintf(out,
            "usage: givt-sample FOLDER --max-len L --out OUT.npy [options]\n"
            "  FOLDER              a Hugging Face folder (config.json + model.safetensors) or a givt-train\n"
            "                      checkpoint folder (step_XXXXXXXX)\n"
            "  --max-len L         vectors in each generated sequence, the prompt included (<= block_size)\n"
            "  --out OUT.npy       float32 (N, L, D), written atomically\n"
            "options (defaults in brackets):\n"
            "  --prompt P.npy      float32/float16 (s, D): one prompt for every sample, or (N, s, D): one\n"
            "                      per sample [none: start from bos alone]\n"
            "  --num-samples N     sequences to generate [1, or the prompt's N]\n"
            "  --temperature t     x ~ Normal(mu, t * std), 0 <= t <= 100; 0 returns the means [1]\n"
            "  --class c           class-conditional models: every sample of class c (0 .. num_classes - 1)\n"
            "                      [none: the \"no label\" class, i.e. unconditional]\n"
            "  --labels LABELS.npy int32/int64 (N,): the class of each sample (N = --num-samples)\n"
            "  --cfg-scale w       classifier-free guidance (DB-CFG) of weight 0 <= w <= 100, with --class or\n"
            "                      --labels; 0 = plain conditional sampling [0]\n"
            "  --seed S            sample i draws from the stream (S, i), whatever the batch size [0]\n"
            "  --batch-size B      sequences run together [64]\n"
            "  --ema               the checkpoint's EMA weights (ema.safetensors) instead of model.safetensors\n"
            "  --device D          auto | cpu | cuda [auto]\n"
            "  --precision P       no | bf16 [no]\n");
}

// "unknown option --temprature (did you mean --temperature?)", the suggestion when one is near.
static int unknown_option(const char *o) {
    static const char *const k_options[] = {"--help", "--ema", "--max-len", "--num-samples", "--batch-size", "--seed",
                                            "--class", "--temperature", "--cfg-scale", "--out", "--prompt",
                                            "--device", "--precision", "--labels"};
    const char *near = util_nearest_name(o, k_options, (int)(sizeof k_options / sizeof k_options[0]), 3);
    if (near) return givt_fail("unknown option %s (did you mean %s?)", o, near);
    return givt_fail("unknown option %s (see --help)", o);
}

static int parse_args(int argc, char **argv, Args *a) {
    *a = (Args){.device = "auto", .precision = PRECISION_NO, .batch_size = 64, .temperature = 1.0, .class_id = -1};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x = 0;
        int rc = 0, takes = 1;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(o, "--ema")) {
            a->ema = 1, takes = 0;
        } else if (!strcmp(o, "--max-len")) {
            rc = util_parse_long_option(o, v, 1, 1 << 20, &x), a->max_len = (int)x;
        } else if (!strcmp(o, "--num-samples")) {
            rc = util_parse_long_option(o, v, 1, 1 << 30, &x), a->num_samples = (int)x;
        } else if (!strcmp(o, "--batch-size")) {
            rc = util_parse_long_option(o, v, 1, 1 << 20, &x), a->batch_size = (int)x;
        } else if (!strcmp(o, "--seed")) {
            rc = util_parse_long_option(o, v, 0, __LONG_MAX__, &x), a->seed = (uint64_t)x;
        } else if (!strcmp(o, "--class")) {
            rc = util_parse_long_option(o, v, 0, GIVT_MAX_CLASSES, &a->class_id);
        } else if (!strcmp(o, "--temperature") || !strcmp(o, "--cfg-scale")) {
            // Bounded so that sampling stays finite in float32 and meaningful. Temperature t scales
            // every std: x = mu + t * std * z with |z| <= 37.2 (rng_normal's Box-Muller clamps u at
            // 1e-300), so with t <= 100 the draw overflows float32 (3.4e38) only for a std above 9e34,
            // i.e. a broken model, while t = 1e308 overflowed for every model; t > a few is noise.
            // The DB-CFG weight w enters the rejection sampler's log density ratio as (1 + w) * a^2
            // - w * b^2: near w = 1e307 the terms overflow (inf - inf = NaN: the bound and the test
            // of each proposal are meaningless), and long before that the acceptance falls towards
            // 0 (1% at w = 2, README), each dimension then taking 1000 proposals and a fallback;
            // w <= 100 leaves room for any useful guidance.
            const double max = 100.0;
            char *end = NULL;
            double t = v ? strtod(v, &end) : NAN;
            if (!v || !*v || *end || !(t >= 0) || !(t <= max))
                rc = givt_fail("%s %s: expected a number >= 0 and at most %g", o, v ? v : "(missing)", max);
            *(!strcmp(o, "--cfg-scale") ? &a->cfg_scale : &a->temperature) = t;
        } else if (!strcmp(o, "--out") || !strcmp(o, "--prompt") || !strcmp(o, "--device") ||
                   !strcmp(o, "--precision") || !strcmp(o, "--labels")) {
            if (!v) rc = givt_fail("%s: expected a value", o);
            else if (!strcmp(o, "--out")) a->out = v;
            else if (!strcmp(o, "--prompt")) a->prompt = v;
            else if (!strcmp(o, "--labels")) a->labels = v;
            else if (!strcmp(o, "--device")) a->device = v;
            else rc = backend_precision_parse(v, &a->precision);
        } else if (o[0] == '-') {
            rc = unknown_option(o);
        } else if (!a->folder) {
            a->folder = o, takes = 0;
        } else {
            rc = givt_fail("unexpected argument %s (see --help)", o);
        }
        if (rc) return -1;
        i += takes;
    }
    if (!a->folder) return givt_fail("expected a FOLDER (see --help)");
    if (!a->max_len) return givt_fail("--max-len L is required (see --help)");
    if (!a->out) return givt_fail("--out OUT.npy is required (see --help)");
    if (a->labels && a->class_id >= 0) return givt_fail("--class and --labels: give one of them");
    return 0;
}

// The labels of the samples from --class or --labels, checked against the model: *labels NULL (and
// *n_labels 0) when neither is given. Messages name the option, the file and num_classes.
static int read_class_args(const Args *a, const GivtConfig *cfg, int32_t **labels, int *n_labels) {
    int nc = cfg->num_classes;
    *labels = NULL;
    *n_labels = 0;
    const char *what = a->labels ? a->labels : "--class";
    if ((a->labels || a->class_id >= 0) && nc == 0)
        return givt_fail("%s: the model in %s is unconditional (num_classes = 0 in its config.json): it takes no class",
                         what, a->folder);
    if (a->cfg_scale > 0 && !a->labels && a->class_id < 0)
        return givt_fail("--cfg-scale %g needs --class or --labels (guidance is towards a class)", a->cfg_scale);
    if (a->class_id >= 0) {
        if (a->class_id >= nc)
            return givt_fail("--class %ld: must be in [0, %d] (the model has num_classes = %d)", a->class_id, nc - 1, nc);
        *labels = xmalloc(sizeof **labels);
        **labels = (int32_t)a->class_id;
        *n_labels = 1;
        return 0;
    }
    if (!a->labels) return 0;
    int64_t n;
    if (npy_read_labels(a->labels, labels, &n)) return -1;
    int rc = n < 1 || n > (1 << 30) ? givt_fail("%s: %lld labels: need 1 to 2^30", a->labels, (long long)n) : 0;
    for (int64_t i = 0; rc == 0 && i < n; i++)
        if ((*labels)[i] < 0 || (*labels)[i] >= nc)
            rc = givt_fail("%s: label %d at index %lld is not a class of the model: must be in [0, %d]", a->labels,
                           (*labels)[i], (long long)i, nc - 1);
    if (rc == 0 && a->num_samples && a->num_samples != n)
        rc = givt_fail("%s: %lld labels for --num-samples %d: give one label per sample", a->labels, (long long)n,
                       a->num_samples);
    *n_labels = (int)n;
    return rc;
}

// The folder of path must exist and be writable, and path must not be a folder: found before
// generating, not after.
static int check_writable(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return givt_fail("--out %s: is a folder, not a file name", path);
    char *copy = xstrdup(path);
    const char *dir = dirname(copy);
    int rc = access(dir, W_OK) == 0 ? 0 : givt_fail("--out %s: cannot write in %s: %s", path, dir, strerror(errno));
    free(copy);
    return rc;
}

// The prompt (s, D) or (n, s, D) into a host buffer; NaN/Inf and a wrong D are errors naming the file.
static int read_prompt(const char *path, int D, float **data, int *n_prompts, int *s) {
    NpyFile f;
    if (npy_open(&f, path) != 0) return -1;
    int rc = 0;
    int64_t d = f.ndim == 3 ? f.shape[2] : f.shape[1], n = f.ndim == 3 ? f.shape[0] : 1;
    int64_t len = f.ndim == 3 ? f.shape[1] : f.shape[0];
    if (d != D) rc = givt_fail("%s: prompt vectors have D = %lld but the model's input_dim is %d", path, (long long)d, D);
    else if (n < 1 || len < 1) rc = givt_fail("%s: the prompt is empty (shape has a 0)", path);
    else if (len > (1 << 20) || n > (1 << 30)) rc = givt_fail("%s: the prompt is too large", path);
    if (rc == 0 && npy_check_finite(&f, NULL) != 0) rc = -1;
    if (rc == 0) {
        *data = xmalloc((size_t)f.numel * sizeof(float));
        rc = npy_read_f32(&f, 0, f.numel, *data);
        *n_prompts = (int)n;
        *s = (int)len;
    }
    npy_close(&f);
    return rc;
}

typedef struct {
    double t0, last;
    int tty;
    int64_t stopped_at;  // vectors generated when a stop signal ended generation
} Progress;

// The progress line, at most every 0.2 s on a terminal (5 s otherwise); asks generation to stop
// after a stop signal.
static int on_progress(void *user, int64_t done, int64_t total) {
    Progress *p = user;
    double now = util_time_now_s();
    if (stop_requested()) {
        p->stopped_at = done;
        return 1;
    }
    if (done < total && now - p->last < (p->tty ? 0.2 : 5.0)) return 0;
    p->last = now;
    double el = now - p->t0, rate = el > 0 ? (double)done / el : 0, eta = rate > 0 ? (double)(total - done) / rate : 0;
    fprintf(stderr, "%ssample: %lld/%lld vectors | %.0f vectors/s | ETA %.0f s%s", p->tty ? "\r\033[K" : "",
            (long long)done, (long long)total, rate, eta, p->tty && done < total ? "" : "\n");
    fflush(stderr);
    return 0;
}

int main(int argc, char **argv) {
    if (stop_signals_init("givt-sample") != 0) {
        fprintf(stderr, "givt-sample: %s\n", givt_last_error());
        return 1;
    }
    Args a;
    GivtModel m;
    memset(&m, 0, sizeof m);
    Backend *be = NULL;
    float *prompt = NULL, *out = NULL;
    int32_t *labels = NULL;
    int rc = 1, n_prompts = 1, s = 0, n_labels = 0;
    GivtConfig cfg;
    if (parse_args(argc, argv, &a) != 0 || check_writable(a.out) != 0 || hf_read_config(a.folder, &cfg) != 0 ||
        !(be = backend_open(a.device, a.precision)) ||
        (a.prompt && read_prompt(a.prompt, cfg.input_dim, &prompt, &n_prompts, &s) != 0) ||
        read_class_args(&a, &cfg, &labels, &n_labels) != 0)
        goto fail;
    int n = a.num_samples ? a.num_samples : n_labels > 1 ? n_labels : n_prompts;
    if (n_labels > 1 && n_prompts > 1 && n_labels != n_prompts) {
        givt_fail("%d labels in %s but %d prompts in %s: one of each per sample", n_labels, a.labels, n_prompts,
                  a.prompt);
        goto fail;
    }
    if (n_prompts != 1 && n != n_prompts) {
        givt_fail("--num-samples %d with %d prompts in %s: give one prompt (s, D) or one per sample", n, n_prompts,
                  a.prompt);
        goto fail;
    }
    if (a.max_len > cfg.block_size || a.max_len <= s) {
        givt_fail("--max-len %d: must be larger than the prompt (%d vectors) and at most block_size = %d", a.max_len, s,
                  cfg.block_size);
        goto fail;
    }
    int b = a.batch_size < n ? a.batch_size : n, streams = a.cfg_scale > 0 ? 2 : 1;
    size_t need = size_add(sample_memory_bytes(&cfg, be, streams * b, a.max_len, s), model_weights_bytes(&cfg, be)),
           fb, tb;
    size_t out_bytes = size_mul3((size_t)n, (size_t)a.max_len, (size_t)cfg.input_dim * sizeof(float));
    backend_mem_info(be, &fb, &tb);
    if (need == SIZE_MAX || out_bytes == SIZE_MAX || (fb && (double)need + (double)out_bytes > (double)fb)) {
        char nb[32], ob[32], fbs[32];
        givt_fail("generation needs %s on the device and %s of output but %s are free: lower --batch-size or "
                  "--num-samples",
                  util_human_bytes(nb, (double)need), util_human_bytes(ob, (double)out_bytes), util_human_bytes(fbs, (double)fb));
        goto fail;
    }
    if (model_create(&m, &cfg, be) != 0 || hf_model_load_checkpoint_weights(&m, a.folder, a.ema, &m.w) != 0) goto fail;
    CfgStats stats = {0};
    SampleConfig sc = {.max_len = a.max_len, .temperature = a.temperature, .seed = a.seed, .batch_size = b,
                       .labels = labels, .n_labels = n_labels, .cfg_scale = a.cfg_scale, .stats = &stats};
    out = xmalloc(out_bytes);
    Progress p = {.t0 = util_time_now_s(), .tty = isatty(fileno(stderr))};
    char note[128];
    if (backend_precision_note(be, note, sizeof note))
        fprintf(stderr, "givt-sample: note: --precision %s: %s\n", backend_precision_name(be->precision), note);
    fprintf(stderr, "givt-sample: %d sequences of %d vectors (prompt %d), temperature %g, batch %d, backend %s (%s)\n",
            n, a.max_len, s, a.temperature, b, be->name, be->device);
    if (cfg.num_classes > 0)
        fprintf(stderr, "givt-sample: %s, cfg scale %g%s\n",
                a.class_id >= 0 ? "one class for all samples" : labels ? "a class per sample" : "no class given: the \"no label\" class (unconditional)",
                a.cfg_scale, a.cfg_scale > 0 ? " (DB-CFG: a second, unconditional stream in the batch)" : "");
    int gen = sample_generate(&m, &m.w, &sc, prompt, n_prompts, s, n, out, on_progress, &p);
    if (gen < 0) goto fail;
    if (gen == 1 || stop_requested()) {
        fprintf(stderr, "\ngivt-sample: stopped by %s after %lld of %lld vectors: nothing written (%s is written "
                        "only when every sample is done)\n",
                strsignal(stop_requested()), (long long)p.stopped_at, (long long)n * (a.max_len - s), a.out);
        rc = STOP_EXIT_STATUS;
        goto done;
    }
    int64_t shape[3] = {n, a.max_len, cfg.input_dim};
    if (npy_write_f32(a.out, out, 3, shape) != 0) goto fail;
    if (a.cfg_scale > 0)
        fprintf(stderr,
                "givt-sample: DB-CFG w = %g: %lld dimensions sampled, %lld proposals, acceptance rate %.1f%%, %lld "
                "fallbacks (no proposal accepted in %d: a conditional draw)\n",
                a.cfg_scale, (long long)stats.dims, (long long)stats.proposals,
                stats.proposals ? 100.0 * (double)stats.accepted / (double)stats.proposals : 0.0,
                (long long)stats.fallbacks, SAMPLE_CFG_MAX_PROPOSALS);
    fprintf(stderr, "givt-sample: wrote %s (%d, %d, %d) in %.1f s\n", a.out, n, a.max_len, cfg.input_dim,
            util_time_now_s() - p.t0);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "givt-sample: %s\n", givt_last_error());
done:
    free(prompt);
    free(labels);
    free(out);
    model_free(&m);
    backend_close(be);
    return rc;
}
