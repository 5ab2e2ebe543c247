// test_trainer: givt-train's loop: AdamW steps against the PyTorch reference, bit-exact resume,
// keep-N atomic checkpoints, mismatched resume, and the stop after repeated non-finite steps.
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "harness.h"
#include "hf.h"
#include "npy.h"
#include "refdata.h"
#include "rng.h"
#include "safetensors.h"
#include "testutil.h"
#include "trainer.h"

// A tiny run on dummy data with EMA and gradient accumulation, so every piece of state is exercised.
static const char *k_tiny_ini =
    "[model]\ninput_dim = 3\nhidden_dim = 12\nintermediate_dim = 20\nnum_heads = 2\nnum_layers = 2\n"
    "block_size = 8\nrope_condense_ratio = 2\n"
    "[train]\nbatch_size = 3\nlr = 3e-3\nwarmup_steps = 3\ntimescale = 50\nmax_steps = 12\n"
    "grad_accum_steps = 2\nema = 0.67\nlog_every = 1\nval_every = 4\nval_size = 4\nsave_every = 2\n"
    "keep_checkpoints = 3\nseed = 7\n"
    "[data]\nkind = dummy\nseq_len = 6\ndummy_size = 40\n";

static int load_cfg(TrainConfig *c, const char *ini, const char *out_dir, int n, char **extra) {
    char out[600];
    snprintf(out, sizeof out, "train.out_dir=%s", out_dir);
    char *ov[8] = {out};
    for (int i = 0; i < n && i < 7; i++) ov[1 + i] = extra[i];
    return train_config_load_string(c, ini, "test.ini", 1 + (n < 7 ? n : 7), ov);
}

static int run(const char *ini, const char *out_dir, int n, char **extra) {
    TrainConfig *c = malloc(sizeof *c);
    int rc = load_cfg(c, ini, out_dir, n, extra);
    if (rc == 0) rc = trainer_run(c);
    free(c);
    return rc;
}

// metrics.jsonl cut to the fields that must reproduce: each line up to and including "grad_norm"
// (tokens_per_s is a timing; val_loss also comes at the end of every run, so a split run has more).
static char *metrics_core(const char *dir) {
    char path[300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = fs_read_text(path, NULL);
    if (!text) return NULL;
    char *out = xcalloc(strlen(text) + 1, 1), *o = out;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n'), *cut = strstr(line, ", \"tokens_per_s\"");
        size_t keep = cut && (!nl || cut < nl) ? (size_t)(cut - line) : (nl ? (size_t)(nl - line) : strlen(line));
        memcpy(o, line, keep);
        o += keep;
        *o++ = '\n';
        if (!nl) break;
        line = nl + 1;
    }
    free(text);
    return out;
}

// Runs b (and c, when not NULL) ended with the bytes of run a at step 12: the files of its step 12
// checkpoint (the first n of model, ema, optimizer safetensors and config.json) and metrics.jsonl
// (timings cut).
static void check_same_runs(const char *a, const char *b, const char *c, int n) {
    const char *files[] = {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "config.json"};
    for (int i = 0; i < n; i++) {
        char pa[300], pb[300], pc[300];
        snprintf(pa, sizeof pa, "%s/step_00000012/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/step_00000012/%s", b, files[i]);
        CHECK(tu_same_file(pa, pb), "%s differs between the straight and the resumed run", files[i]);
        if (!c) continue;
        snprintf(pc, sizeof pc, "%s/step_00000012/%s", c, files[i]);
        CHECK(tu_same_file(pa, pc), "%s differs with gradient checkpointing", files[i]);
    }
    char *ma = metrics_core(a), *mb = metrics_core(b);
    CHECK(ma && mb && !strcmp(ma, mb), "metrics differ:\n%s\nvs\n%s", ma ? ma : "", mb ? mb : "");
    free(ma);
    free(mb);
}

// Run b: 6 steps, exit, resume, 6 more; run c: 12 steps with gradient checkpointing. Both must end
// with the same bytes as the straight run a.
TEST(trainer_resume_is_bit_exact) {
    char a[256], b[256], c[256];
    tu_mkdtemp(a, "train_a");
    tu_mkdtemp(b, "train_b");
    tu_mkdtemp(c, "train_c");
    CHECK(run(k_tiny_ini, a, 0, NULL) == 0, "%s", givt_last_error());
    char *half[] = {"train.max_steps=6"}, *resume[] = {"train.resume_from_ckpt=latest"};
    CHECK(run(k_tiny_ini, b, 1, half) == 0, "%s", givt_last_error());
    CHECK(run(k_tiny_ini, b, 1, resume) == 0, "%s", givt_last_error());
    char *recompute[] = {"train.gradient_checkpointing=true"};
    CHECK(run(k_tiny_ini, c, 1, recompute) == 0, "%s", givt_last_error());
    check_same_runs(a, b, c, 4);
    tu_rmtree(a);
    tu_rmtree(b);
    tu_rmtree(c);
}

TEST(trainer_keeps_the_newest_checkpoints_and_no_temporaries) {
    char d[256];
    tu_mkdtemp(d, "train_keep");
    CHECK(run(k_tiny_ini, d, 0, NULL) == 0, "%s", givt_last_error());
    CHECK(tu_count_prefix(d, "step_") == 3, "%d checkpoints, want keep_checkpoints = 3", tu_count_prefix(d, "step_"));
    CHECK(tu_count_prefix(d, ".tmp") == 0 && tu_count_prefix(d, ".givt-tmp-") == 0);
    char latest[512], want[300];
    CHECK(trainer_latest_checkpoint(d, latest, sizeof latest) == 0);
    snprintf(want, sizeof want, "%s/step_00000012", d);
    CHECK(!strcmp(latest, want), "latest %s", latest);
    snprintf(want, sizeof want, "%s/step_00000008/model.safetensors", d);
    CHECK(fs_path_exists(want));
    snprintf(want, sizeof want, "%s/step_00000006", d);
    CHECK(!fs_path_exists(want), "step 6 should have been removed");
    // a leftover temporary folder of a killed run is cleaned up by the next run
    snprintf(want, sizeof want, "%s/.tmp-step_00000014-999", d);
    CHECK(fs_mkdir_p(want) == 0);
    snprintf(want, sizeof want, "%s/metrics.jsonl.tmp.12345", d);  // an atomic write cut short
    tu_put_text(want, "{\"step\": 1");
    char *more[] = {"train.resume_from_ckpt=latest", "train.max_steps=14"};
    CHECK(run(k_tiny_ini, d, 2, more) == 0, "%s", givt_last_error());
    CHECK(tu_count_prefix(d, ".tmp") == 0);
    CHECK(!fs_path_exists(want), "%s was left behind", want);
    tu_rmtree(d);
}

TEST(trainer_fresh_start_refuses_an_out_dir_with_checkpoints) {
    char d[256];
    tu_mkdtemp(d, "train_refuse");
    char *short_run[] = {"train.max_steps=2"};
    CHECK(run(k_tiny_ini, d, 1, short_run) == 0, "%s", givt_last_error());
    CHECK(run(k_tiny_ini, d, 1, short_run) == -1);
    CHECK(tu_error_has("already holds checkpoints", "resume_from_ckpt=latest"), "got: %s", givt_last_error());
    char *again[] = {"train.max_steps=2", "train.resume_from_ckpt=latest"};  // at max_steps: nothing to do
    CHECK(run(k_tiny_ini, d, 2, again) == 0, "%s", givt_last_error());
    CHECK(tu_count_prefix(d, "step_") == 1);
    tu_rmtree(d);
}

TEST(trainer_refuses_a_batch_that_cannot_fit_in_memory) {
    char d[256];
    tu_mkdtemp(d, "train_mem");
    // about 2^20 sequences of 64 in a batch: far more activation memory than any test machine has
    const char *ini = "[model]\ninput_dim = 3\nhidden_dim = 12\nintermediate_dim = 20\nnum_heads = 2\n"
                      "num_layers = 2\nblock_size = 64\n[train]\nbatch_size = 1000000\nval_size = 0\n"
                      "[data]\nkind = dummy\nseq_len = 64\ndummy_size = 1000000\n";
    CHECK(run(ini, d, 0, NULL) == -1);
    CHECK(tu_error_has("training needs", "lower [train] batch_size"), "got: %s", givt_last_error());
    CHECK(tu_count_prefix(d, "step_") == 0);
    tu_rmtree(d);
}

TEST(trainer_resume_with_another_model_names_the_key) {
    char d[256];
    tu_mkdtemp(d, "train_mismatch");
    char *short_run[] = {"train.max_steps=2"};
    CHECK(run(k_tiny_ini, d, 1, short_run) == 0, "%s", givt_last_error());
    char *other[] = {"train.resume_from_ckpt=latest", "model.intermediate_dim=24"};
    CHECK(run(k_tiny_ini, d, 2, other) == -1);
    CHECK(strstr(givt_last_error(), "intermediate_dim = 24") && strstr(givt_last_error(), "intermediate_dim = 20"),
          "got: %s", givt_last_error());
    tu_rmtree(d);
}

TEST(trainer_stops_after_ten_non_finite_steps_and_writes_no_checkpoint) {
    char d[256];
    tu_mkdtemp(d, "train_nan");
    // Non-finite weights cannot be loaded (init_from / resume check them), so a learning rate past
    // the float range makes them: the first update sets every weight to +-inf, and from then on every
    // loss and gradient is NaN.
    char *extra[] = {"train.lr=1e39", "train.warmup_steps=0", "train.max_steps=40", "train.save_every=0"};
    CHECK(run(k_tiny_ini, d, 4, extra) == -1);
    CHECK(strstr(givt_last_error(), "10 steps in a row"), "got: %s", givt_last_error());
    CHECK(tu_count_prefix(d, "step_") == 0, "a checkpoint was written");
    char *metrics = fs_read_text(tu_path(d, "metrics.jsonl"), NULL);  // still JSON: null, never nan
    CHECK(metrics && strstr(metrics, "\"loss\": null") && !strstr(metrics, "nan") && !strstr(metrics, "inf"),
          "metrics.jsonl: %s", metrics ? metrics : "(missing)");
    free(metrics);
    tu_rmtree(d);
}

// Training data whose sequences 5, 17 and 29 hold 3e38 (finite, so the data are accepted; the
// forward overflows on them): each pass over the data has non-finite steps, which are skipped.
static void write_poisoned_data(const char *path) {
    enum { N = 40, T = 6, D = 3 };
    float *x = xmalloc((size_t)N * T * D * sizeof(float));
    Rng rng;
    rng_seed(&rng, 5);
    for (size_t i = 0; i < (size_t)N * T * D; i++) x[i] = (float)rng_normal(&rng);
    for (int b = 5; b < N; b += 12)
        for (int i = 0; i < T * D; i++) x[(size_t)b * T * D + i] = 3e38f;
    int64_t shape[3] = {N, T, D};
    CHECK(npy_write_f32(path, x, 3, shape) == 0, "%s", givt_last_error());
    free(x);
}

// A non-finite step is skipped and training goes on: the step is read back one step late (its
// record), so it is said and logged one step later, but metrics.jsonl has exactly one line per step
// (loss null on the skipped ones), the summary counts them, and a run split at step 6 (resumed from
// its checkpoint) ends with the bytes and the metrics of the straight run.
TEST(trainer_skips_non_finite_steps_and_goes_on) {
    char a[256], b[256], data[300], path_ov[400];
    tu_mkdtemp(a, "train_skip_a");
    tu_mkdtemp(b, "train_skip_b");
    snprintf(data, sizeof data, "%s/x.npy", a);
    write_poisoned_data(data);
    snprintf(path_ov, sizeof path_ov, "data.path=%s", data);
    char *straight[] = {"data.kind=npy", path_ov, "train.val_size=0", "train.save_every=3"};
    CHECK(run(k_tiny_ini, a, 4, straight) == 0, "%s", givt_last_error());
    char *metrics = fs_read_text(tu_path(a, "metrics.jsonl"), NULL), *log = fs_read_text(tu_path(a, "train.log"), NULL);
    CHECK(metrics && log);
    int lines = 0, nulls = 0, finite_after_null = 0, said = 0;
    for (const char *l = metrics; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "") {
        lines++;
        char want[32];
        snprintf(want, sizeof want, "{\"step\": %d,", lines);
        CHECK(!strncmp(l, want, strlen(want)), "line %d: %.60s", lines, l);
        int null = !strncmp(strstr(l, "\"loss\": ") + 8, "null", 4);
        nulls += null;
        finite_after_null += !null && nulls > 0;
    }
    for (const char *p = log; p && (p = strstr(p, "update skipped")); p++) said++;
    char summary[64];
    snprintf(summary, sizeof summary, "; %d skipped in all", nulls);
    CHECK(lines == 12 && nulls >= 1 && finite_after_null > 0 && said == nulls && strstr(log, summary),
          "%d lines, %d skipped (%d said), %d finite after a skip:\n%s", lines, nulls, said, finite_after_null,
          metrics ? metrics : "");
    free(metrics);
    free(log);
    char *half[] = {"data.kind=npy", path_ov, "train.val_size=0", "train.save_every=3", "train.max_steps=6"};
    char *resume[] = {"data.kind=npy", path_ov, "train.val_size=0", "train.save_every=3",
                      "train.resume_from_ckpt=latest"};
    CHECK(run(k_tiny_ini, b, 5, half) == 0, "%s", givt_last_error());
    CHECK(run(k_tiny_ini, b, 5, resume) == 0, "%s", givt_last_error());
    check_same_runs(a, b, NULL, 3);
    tu_rmtree(a);
    tu_rmtree(b);
}

// Weights of a reference case in the parameter table's layout (host floats).
static float *ref_params_to_table(const ParamTable *pt, const RefTensor *ts, int n) {
    float *p = xcalloc(pt->total, sizeof(float));
    for (int i = 0; i < pt->count; i++) {
        const RefTensor *t = ref_find(ts, n, pt->specs[i].name);
        if (!t) return free(p), NULL;
        for (size_t j = 0; j < t->numel; j++) p[pt->specs[i].offset + j] = (float)t->data[j];
    }
    return p;
}

static char *config_ini_for_case(const RefCase *rc, const char *data_path, const char *init) {
    const GivtConfig *g = &rc->cfg;
    const RefTrain *tr = &rc->train;
    char *ini;
    if (asprintf(&ini,
                 "[model]\ninput_dim = %d\nhidden_dim = %d\nintermediate_dim = %d\nnum_heads = %d\n"
                 "num_layers = %d\nblock_size = %d\neps = %.17g\nrope_base = %.17g\n"
                 "rope_rotary_percentage = %.17g\nrope_condense_ratio = %.17g\n"
                 "[train]\nbatch_size = %d\nlr = %.17g\nlr_betas = %.17g, %.17g\nlr_eps = %.17g\n"
                 "weight_decay = %.17g\ngrad_norm = %.17g\ntimescale = %.17g\nwarmup_steps = %d\n"
                 "lr_schedule = inverse_sqrt\nmax_steps = %d\nlog_every = 1\nval_every = 0\nval_size = 0\n"
                 "save_every = 0\ninit_from = %s\n"
                 "[data]\nkind = npy\npath = %s\nseq_len = %d\n",
                 g->input_dim, g->hidden_dim, g->intermediate_dim, g->num_heads, g->num_layers, g->block_size, g->eps,
                 g->rope_base, g->rope_rotary_percentage, g->rope_condense_ratio, rc->B, tr->lr, tr->beta1, tr->beta2,
                 tr->adam_eps, tr->weight_decay, tr->grad_clip, tr->timescale, tr->warmup_steps, tr->nsteps, init,
                 data_path, rc->T) < 0)
        givt_die("out of memory");
    return ini;
}

// The reference's AdamW steps, run through the whole trainer: init_from a folder with the reference
// weights, one batch holding the whole data set. Losses and final weights against float64 PyTorch:
// loss relative error <= 1e-5 (float32 forward vs float64), weights ||diff|| / ||ref|| <= 1e-4.
TEST(trainer_adamw_steps_match_pytorch) {
    RefData rd;
    if (refdata_load(&rd, refdata_default_path()) != 0) {
        CHECK(0, "%s", givt_last_error());
        return;
    }
    const RefCase *rc = NULL;
    for (int i = 0; i < rd.ncases; i++)
        if (rd.cases[i].has_train) rc = &rd.cases[i];
    CHECK(rc != NULL, "the reference has no training section");
    if (!rc) return refdata_free(&rd);
    char d[256], init[300], data[300], out[300];
    tu_mkdtemp(d, "train_ref");
    snprintf(init, sizeof init, "%s/init", d);
    snprintf(data, sizeof data, "%s/x.npy", d);
    snprintf(out, sizeof out, "%s/out", d);
    ParamTable pt;
    param_table_build(&pt, &rc->cfg);
    float *w = ref_params_to_table(&pt, rc->params, rc->nparams);
    CHECK(w && hf_save(init, &rc->cfg, &pt, w) == 0, "%s", givt_last_error());
    float *x = xmalloc(rc->x.numel * sizeof(float));
    for (size_t i = 0; i < rc->x.numel; i++) x[i] = (float)rc->x.data[i];
    int64_t shape[3] = {rc->B, rc->T, rc->cfg.input_dim};
    CHECK(npy_write_f32(data, x, 3, shape) == 0, "%s", givt_last_error());
    char *ini = config_ini_for_case(rc, data, init);
    CHECK(run(ini, out, 0, NULL) == 0, "%s", givt_last_error());

    // losses and lr per step from metrics.jsonl (the reference's losses include the constant iff full)
    char path[400];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    char *metrics = fs_read_text(path, NULL);
    CHECK(metrics != NULL);
    const char *line = metrics;
    double constant = rc->full ? 0.5 * GIVT_LOG_2PI : 0.0;
    for (int s = 0; metrics && s < rc->train.nsteps; s++) {
        const char *l = strstr(line, "\"loss\": "), *r = strstr(line, "\"lr\": ");
        CHECK(l && r, "step %d missing from metrics.jsonl", s + 1);
        if (!l || !r) break;
        double loss = strtod(l + 8, NULL) + constant, lr = strtod(r + 6, NULL);
        CHECK(fabs(loss - rc->train.losses[s]) <= 1e-5 * fabs(rc->train.losses[s]), "step %d loss %.9g vs %.9g", s + 1,
              loss, rc->train.losses[s]);
        CHECK(fabs(lr - rc->train.lr_used[s]) <= 1e-7 * fmax(rc->train.lr_used[s], 1e-30), "step %d lr %.9g vs %.9g",
              s + 1, lr, rc->train.lr_used[s]);
        line = strchr(l, '\n');
        if (!line) break;
    }
    // final weights
    snprintf(path, sizeof path, "%s/step_%08d", out, rc->train.nsteps);
    float *got = xmalloc(pt.total * sizeof(float));
    CHECK(hf_load_weights(path, &pt, got) == 0, "%s", givt_last_error());
    double worst = 0;
    for (int i = 0; i < pt.count; i++) {
        const RefTensor *t = ref_find(rc->train.final_params, rc->train.nfinal, pt.specs[i].name);
        CHECK(t != NULL, "final %s missing", pt.specs[i].name);
        if (!t) continue;
        double num = 0, den = 0;
        for (size_t j = 0; j < t->numel; j++) {
            double e = got[pt.specs[i].offset + j] - t->data[j];
            num += e * e;
            den += t->data[j] * t->data[j];
        }
        double ratio = sqrt(num / fmax(den, 1e-300));
        worst = fmax(worst, ratio);
        CHECK(ratio <= 1e-4, "%s: ||diff|| / ||ref|| = %.3g", pt.specs[i].name, ratio);
    }
    printf("  trainer vs PyTorch AdamW (%d steps): worst weight ||diff||/||ref|| = %.2e\n", rc->train.nsteps, worst);
    free(got);
    free(metrics);
    free(ini);
    free(x);
    free(w);
    param_table_free(&pt);
    refdata_free(&rd);
    tu_rmtree(d);
}
