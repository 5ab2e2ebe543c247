// test_cuda_train: a tiny model trained through the CUDA backend (emulated on the CPU in make test,
// the real GPU in make test-gpu) against the same training on the CPU backend: float32 compute within
// 1e-5 relative on the loss and 1e-4 on the weights, bf16 within 2e-2 on the loss.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "fs.h"
#include "harness.h"
#include "hf.h"
#include "testutil.h"
#include "trainer.h"

static const char *k_ini =
    "[model]\ninput_dim = 3\nhidden_dim = 16\nintermediate_dim = 20\nnum_heads = 2\nnum_layers = 2\n"
    "block_size = 8\nrope_condense_ratio = 2\n"
    "[train]\nbatch_size = 3\nlr = 3e-3\nwarmup_steps = 2\nmax_steps = 6\ngrad_accum_steps = 2\nema = 0.67\n"
    "log_every = 1\nval_every = 3\nval_size = 4\nsave_every = 6\nseed = 7\n"
    "[data]\nkind = dummy\nseq_len = 7\ndummy_size = 40\n";

// Trains k_ini on device with precision into dir; the last logged loss into *loss.
static int train(const char *dir, const char *device, const char *precision, double *loss) {
    char out[512], dev[64], prec[64];
    snprintf(out, sizeof out, "train.out_dir=%s", dir);
    snprintf(dev, sizeof dev, "train.device=%s", device);
    snprintf(prec, sizeof prec, "train.mixed_precision=%s", precision);
    char *ov[] = {out, dev, prec};
    TrainConfig *c = malloc(sizeof *c);
    int rc = train_config_load_string(c, k_ini, "cuda_train.ini", 3, ov);
    if (rc == 0) rc = trainer_run(c);
    free(c);
    *loss = NAN;
    char *text = fs_read_text(tu_path(dir, "metrics.jsonl"), NULL);
    if (text) {
        const char *last = NULL;
        for (const char *p = strstr(text, "\"loss\": "); p; p = strstr(p + 1, "\"loss\": ")) last = p;
        if (last) *loss = strtod(last + 8, NULL);
        free(text);
    }
    return rc;
}

// max |a - b| / max |b| over the weights of two checkpoint folders
static double weights_diff(const char *a, const char *b) {
    GivtConfig cfg;
    if (hf_read_config(a, &cfg) != 0) return INFINITY;
    ParamTable pt;
    param_table_build(&pt, &cfg);
    float *wa = xmalloc(pt.total * 4), *wb = xmalloc(pt.total * 4);
    double d = INFINITY;
    if (hf_load_weights(a, &pt, wa) == 0 && hf_load_weights(b, &pt, wb) == 0) {
        double num = 0, den = 0;
        for (size_t i = 0; i < pt.total; i++) {
            num = fmax(num, fabs((double)wa[i] - wb[i]));
            den = fmax(den, fabs((double)wb[i]));
        }
        d = num / fmax(den, 1e-30);
    }
    free(wa), free(wb);
    param_table_free(&pt);
    return d;
}

TEST(cuda_training_matches_the_cpu) {
    char why[256] = "";
    if (!backend_available("cuda", why, sizeof why)) {
        t_skip(why);
        return;
    }
    char d[256];
    tu_mkdtemp(d, "cuda_train");
    double l_cpu, l_f32, l_bf16;
    CHECK(train(tu_path(d, "cpu"), "cpu", "no", &l_cpu) == 0, "%s", givt_last_error());
    CHECK(train(tu_path(d, "f32"), "cuda", "no", &l_f32) == 0, "%s", givt_last_error());
    CHECK(train(tu_path(d, "bf16"), "cuda", "bf16", &l_bf16) == 0, "%s", givt_last_error());
    char a[512], b[512];
    snprintf(a, sizeof a, "%s/cpu/step_00000006", d);
    snprintf(b, sizeof b, "%s/f32/step_00000006", d);
    double rel32 = fabs(l_f32 - l_cpu) / fabs(l_cpu), relbf = fabs(l_bf16 - l_cpu) / fabs(l_cpu);
    double wd = weights_diff(b, a);
    printf("  cuda (%s) vs cpu after 6 steps: loss fp32 rel %.2e (tol 1e-5), bf16 rel %.2e (tol 2e-2); "
           "weights fp32 max rel %.2e (tol 1e-4)\n",
           why[0] ? why : "GPU", rel32, relbf, wd);
    CHECK(rel32 <= 1e-5, "fp32 loss %.9g vs %.9g", l_f32, l_cpu);
    CHECK(relbf <= 2e-2, "bf16 loss %.9g vs %.9g", l_bf16, l_cpu);
    CHECK(wd <= 1e-4, "fp32 weights differ by %.3g", wd);
    tu_rmtree(d);
}
