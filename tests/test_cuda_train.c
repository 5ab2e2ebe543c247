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

// Trains k_ini on device with precision into dir (and n_more more overrides, at most 4); the last
// logged loss into *loss.
static int train_with(const char *dir, const char *device, const char *precision, int n_more,
                      const char *const *more, double *loss) {
    char out[512], dev[64], prec[64];
    snprintf(out, sizeof out, "train.out_dir=%s", dir);
    snprintf(dev, sizeof dev, "train.device=%s", device);
    snprintf(prec, sizeof prec, "train.mixed_precision=%s", precision);
    char *ov[7] = {out, dev, prec};
    for (int i = 0; i < n_more && i < 4; i++) ov[3 + i] = (char *)more[i];
    TrainConfig *c = malloc(sizeof *c);
    int rc = train_config_load_string(c, k_ini, "cuda_train.ini", 3 + (n_more < 4 ? n_more : 4), ov);
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

static int train(const char *dir, const char *device, const char *precision, double *loss) {
    return train_with(dir, device, precision, 0, NULL, loss);
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

// No host synchronisation in a steady-state training step (issue 21 item 1): the clipping and the
// skip of a non-finite step are decided on the device and the step's loss, norm and skip are read
// back one step late, so the host never drains the device's queue between a step's first op and the
// next step's. Counted by the emulated CUDA backend (backend_stats): two runs of k_ini (grad
// accumulation 2, the EMA in AdamW's pass) that differ only in max_steps (no validation, a checkpoint
// at the end only) differ only by steady-state steps, and by no host synchronisation; each of those
// steps waits once for the previous step's record, with its own work queued behind it (a fence wait).
TEST(cuda_training_step_has_no_host_sync) {
    char why[256] = "";
    if (backend_available("cuda", why, sizeof why) != 2) {
        t_skip(why[0] ? why : "the CUDA backend is not emulated here: nothing counts its waits");
        return;
    }
    Backend *probe = backend_open("cuda", PRECISION_NO);  // reads the emulation's counts (process-wide)
    CHECK(probe != NULL, "%s", givt_last_error());
    if (!probe) return;
    static const char *const precisions[] = {"no", "bf16"};
    for (int p = 0; p < 2; p++) {
        char d[256];
        tu_mkdtemp(d, "cuda_syncs");
        BackendStats s[3];
        double loss;
        const char *steps[2] = {"train.max_steps=2", "train.max_steps=4"};
        backend_stats(probe, &s[0]);
        for (int r = 0; r < 2; r++) {
            // no validation and no checkpoint before the end: max_steps is the only difference
            const char *more[3] = {steps[r], "train.val_every=0", "train.save_every=0"};
            CHECK(train_with(tu_path(d, r ? "long" : "short"), "cuda", precisions[p], 3, more, &loss) == 0, "%s",
                  givt_last_error());
            backend_stats(probe, &s[r + 1]);
        }
        long long syncs = (long long)(s[2].host_syncs - s[1].host_syncs) - (long long)(s[1].host_syncs - s[0].host_syncs);
        long long fences =
            (long long)(s[2].fence_waits - s[1].fence_waits) - (long long)(s[1].fence_waits - s[0].fence_waits);
        long long launches = (long long)(s[2].launches - s[1].launches) - (long long)(s[1].launches - s[0].launches);
        printf("  %s: 2 steady-state steps: %lld host syncs, %lld fence waits, %lld launches (%.1f a step); a run of 2 "
               "steps: %llu host syncs in all (set-up, checkpoint, teardown)\n",
               precisions[p], syncs, fences, launches, launches / 2.0, s[1].host_syncs - s[0].host_syncs);
        CHECK(s[0].counted == 1);
        CHECK(syncs == 0, "%s: %lld host synchronisations in 2 steady-state steps, want 0", precisions[p], syncs);
        CHECK(fences == 2, "%s: %lld fence waits in 2 steady-state steps, want one a step", precisions[p], fences);
        CHECK(launches > 0 && launches % 2 == 0, "%s: %lld launches in 2 steps", precisions[p], launches);
        tu_rmtree(d);
    }
    backend_close(probe);
}
