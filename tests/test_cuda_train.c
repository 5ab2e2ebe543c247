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

// Trains k_ini on device with precision into dir (and n_more more overrides, at most 8); the last
// logged loss into *loss.
static int train_with(const char *dir, const char *device, const char *precision, int n_more,
                      const char *const *more, double *loss) {
    char out[512], dev[64], prec[64];
    snprintf(out, sizeof out, "train.out_dir=%s", dir);
    snprintf(dev, sizeof dev, "train.device=%s", device);
    snprintf(prec, sizeof prec, "train.mixed_precision=%s", precision);
    char *ov[11] = {out, dev, prec};
    for (int i = 0; i < n_more && i < 8; i++) ov[3 + i] = (char *)more[i];
    TrainConfig *c = malloc(sizeof *c);
    int rc = train_config_load_string(c, k_ini, "cuda_train.ini", 3 + (n_more < 8 ? n_more : 8), ov);
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

// The step's files of two runs' checkpoints of `step` (weights, EMA, optimizer state) byte for byte:
// the number of files that differ (a missing file differs).
static int checkpoint_files_differ(const char *run_a, const char *run_b, long step) {
    static const char *const files[] = {"model.safetensors", "ema.safetensors", "optimizer.safetensors"};
    int bad = 0;
    for (int i = 0; i < 3; i++) {
        char a[1100], b[1100];
        snprintf(a, sizeof a, "%.512s/step_%08ld/%s", run_a, step, files[i]);
        snprintf(b, sizeof b, "%.512s/step_%08ld/%s", run_b, step, files[i]);
        bad += !tu_same_file(a, b);
    }
    return bad;
}

// [train] cuda_graphs (issue 21 item 3): the step recorded once as a CUDA graph and replayed (the
// emulator records the capture and replays it, kernel by kernel) gives the bits of the eager steps:
// k_ini with one micro-batch a step (graphs need it), the EMA in AdamW's pass, validation every 3
// steps between the replays, a learning rate that changes at every replayed step (a warmup of 5 steps)
// read by the replayed update from the step record, as its bias corrections and the EMA's decay. Also: the replayed steps launch one graph each, where the eager ones
// launch every kernel; and a run resumed from a checkpoint with graphs on (step 4, resumed to 6:
// recorded again in the new process) ends with the bits of the uninterrupted one.
TEST(cuda_graph_steps_equal_eager_steps) {
    char why[256] = "";
    if (backend_available("cuda", why, sizeof why) != 2) {
        t_skip(why[0] ? why : "the CUDA backend is not emulated here");
        return;
    }
    Backend *probe = backend_open("cuda", PRECISION_NO);
    CHECK(probe != NULL, "%s", givt_last_error());
    if (!probe) return;
    char d[256];
    tu_mkdtemp(d, "cuda_graphs");
    const char *runs[3] = {"eager", "graphs", "resumed"};
    const char *modes[3] = {"train.cuda_graphs=off", "train.cuda_graphs=on", "train.cuda_graphs=on"};
    double loss[3];
    BackendStats s[4];
    backend_stats(probe, &s[0]);
    for (int r = 0; r < 3; r++) {
        const char *more[6] = {modes[r], "train.grad_accum_steps=1", r == 2 ? "train.max_steps=4" : "train.max_steps=6",
                               "train.resume_from_ckpt=latest", "train.lr_schedule=constant", "train.warmup_steps=5"};
        CHECK(train_with(tu_path(d, runs[r]), "cuda", "bf16", 6, more, &loss[r]) == 0, "%s: %s", runs[r],
              givt_last_error());
        backend_stats(probe, &s[r + 1]);
    }
    const char *more[6] = {modes[2], "train.grad_accum_steps=1", "train.max_steps=6", "train.resume_from_ckpt=latest",
                           "train.lr_schedule=constant", "train.warmup_steps=5"};
    CHECK(train_with(tu_path(d, runs[2]), "cuda", "bf16", 6, more, &loss[2]) == 0, "resume: %s", givt_last_error());
    unsigned long long eager = s[1].launches - s[0].launches, graphs = s[2].launches - s[1].launches;
    printf("  6 steps, bf16: loss eager %.9g, graphs %.9g, resumed at 4 with graphs %.9g; launches eager %llu, with "
           "graphs %llu (replayed steps: one launch each)\n",
           loss[0], loss[1], loss[2], eager, graphs);
    CHECK(memcmp(&loss[0], &loss[1], sizeof loss[0]) == 0 && memcmp(&loss[0], &loss[2], sizeof loss[0]) == 0,
          "losses %.17g, %.17g, %.17g", loss[0], loss[1], loss[2]);
    char a[512], b[512], c[512];
    snprintf(a, sizeof a, "%s", tu_path(d, runs[0]));
    snprintf(b, sizeof b, "%s", tu_path(d, runs[1]));
    snprintf(c, sizeof c, "%s", tu_path(d, runs[2]));
    CHECK(checkpoint_files_differ(a, b, 6) == 0, "graphs vs eager: the step-6 checkpoints differ");
    CHECK(checkpoint_files_differ(a, c, 6) == 0, "resumed with graphs vs eager: the step-6 checkpoints differ");
    CHECK(graphs + 100 < eager, "launches: %llu with graphs, %llu eager", graphs, eager);
    tu_rmtree(d);
    backend_close(probe);
}
