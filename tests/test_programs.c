// test_programs: the programs (givt-eval, givt-train) run as a user runs them, on good input and on
// error cases: the exit status, the one-line message, and, in `make test-sanitize` (where
// GIVT_BIN_DIR names the sanitized programs and the sanitizer options are in the environment), no
// sanitizer report: a leak or memory error on any path, error paths included, fails the test.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs.h"
#include "harness.h"
#include "hf.h"
#include "model.h"
#include "npy.h"
#include "rng.h"
#include "testutil.h"
#include "util.h"

// Runs "<GIVT_BIN_DIR>/<prog> <args>" with stdout and stderr captured into files under dir; returns
// the exit status (-1 when it did not exit normally) and the captured text (to be freed).
static int run_prog(const char *dir, const char *prog, const char *args, char **out, char **err) {
    const char *bin = getenv("GIVT_BIN_DIR");
    if (!bin || !*bin) bin = ".";
    char exe[1024], cmd[4096];
    snprintf(exe, sizeof exe, "%s/%s", bin, prog);
    *out = *err = NULL;
    if (!fs_path_exists(exe)) {
        CHECK(0, "%s not found: build it (make all) and run the tests from the repository root", exe);
        return -1;
    }
    const char *o = tu_path(dir, "stdout.txt"), *e = tu_path(dir, "stderr.txt");
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>'%s'", exe, args, o, e);
    int st = system(cmd);
    *out = fs_read_text(o, NULL);
    *err = fs_read_text(e, NULL);
    if (!*out) *out = strdup("");
    if (!*err) *err = strdup("");
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// No AddressSanitizer / LeakSanitizer / UndefinedBehaviorSanitizer report in a program's stderr.
static int no_sanitizer_report(const char *err) {
    return !strstr(err, "Sanitizer") && !strstr(err, "runtime error:");
}


// A model folder dir/name (its path into folder) of configuration cfg, with weights scale * N(0, 1)
// drawn from seed, and NaN at one element of the head when nan. hf_save's result.
static int save_model(char *folder, size_t n, const char *dir, const char *name, const GivtConfig *cfg,
                      uint64_t seed, float scale, int nan) {
    ParamTable pt;
    param_table_build(&pt, cfg);
    float *p = xmalloc(pt.total * sizeof(float));
    Rng rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < pt.total; i++) p[i] = scale * (float)rng_normal(&rng);
    if (nan) p[pt.specs[pt.head].offset + 9] = NAN;  // head [1, 1]
    snprintf(folder, n, "%s", tu_path(dir, name));
    int rc = hf_save(folder, cfg, &pt, p);
    free(p);
    param_table_free(&pt);
    return rc;
}

// The tiny model of most tests (tu_tiny_config, weights 0.1 * N(0, 1) from seed 5), NaN in its head
// when nan.
static void make_model(char *folder, size_t n, const char *dir, const char *name, int nan) {
    GivtConfig cfg;
    tu_tiny_config(&cfg);
    if (save_model(folder, n, dir, name, &cfg, 5, 0.1f, nan) != 0) givt_die("%s", givt_last_error());
}

TEST(givt_eval_good_and_error_cases_exit_cleanly) {
    char dir[256], args[2048];
    tu_mkdtemp(dir, "prog");
    char model[512], nan_model[512];
    make_model(model, sizeof model, dir, "model", 0);
    // (N, T, D) = (5, 6, 4)
    float data[5 * 6 * 4];
    Rng rng;
    rng_seed(&rng, 6);
    for (size_t i = 0; i < sizeof data / sizeof data[0]; i++) data[i] = (float)rng_normal(&rng);
    int64_t shape[3] = {5, 6, 4};
    char good[512];
    snprintf(good, sizeof good, "%s", tu_path(dir, "good.npy"));
    CHECK(npy_write_f32(good, data, 3, shape) == 0, "%s", givt_last_error());
    char *out, *err;

    snprintf(args, sizeof args, "'%s' '%s' --batch-size 2", model, good);
    int rc = run_prog(dir, "givt-eval", args, &out, &err);
    CHECK(rc == 0 && strstr(out, "loss = ") && no_sanitizer_report(err), "exit %d\nstdout: %s\nstderr: %s", rc, out, err);
    free(out);
    free(err);

    // a NaN in the last sequence: the first batches run, then the batch error path (it leaked the
    // model, the activations and the batch buffers)
    data[4 * 6 * 4 + 7] = NAN;
    char bad[512];
    snprintf(bad, sizeof bad, "%s", tu_path(dir, "bad.npy"));
    CHECK(npy_write_f32(bad, data, 3, shape) == 0, "%s", givt_last_error());
    snprintf(args, sizeof args, "'%s' '%s' --batch-size 2", model, bad);
    rc = run_prog(dir, "givt-eval", args, &out, &err);
    CHECK(rc == 1 && strstr(err, "givt-eval: ") && strstr(err, "bad.npy: non-finite value (nan) at index [4, 1, 3]") &&
              no_sanitizer_report(err),
          "exit %d\nstderr: %s", rc, err);
    free(out);
    free(err);

    // NaN weights: named at load, no "loss = nan"
    make_model(nan_model, sizeof nan_model, dir, "nan_model", 1);
    snprintf(args, sizeof args, "'%s' '%s'", nan_model, good);
    rc = run_prog(dir, "givt-eval", args, &out, &err);
    CHECK(rc == 1 && strstr(err, "nan_model/model.safetensors: tensor \"model.head.weight\": element [1, 1] is nan") &&
              !strstr(out, "loss") && no_sanitizer_report(err),
          "exit %d\nstdout: %s\nstderr: %s", rc, out, err);
    free(out);
    free(err);

    // errors before and while loading: bad option, missing folder, data of the wrong D
    float wide[2 * 3 * 5] = {0};
    int64_t wshape[3] = {2, 3, 5};
    char wrong[512];
    snprintf(wrong, sizeof wrong, "%s", tu_path(dir, "wide.npy"));
    CHECK(npy_write_f32(wrong, wide, 3, wshape) == 0, "%s", givt_last_error());
    const char *cases[][2] = {
        {"--batch-size 0 a b", "--batch-size 0: expected a whole number"},
        {"/nonexistent/model x.npy", "/nonexistent/model/config.json: cannot open"},
        {NULL, "input_dim is 4"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i][0]) snprintf(args, sizeof args, "%s", cases[i][0]);
        else snprintf(args, sizeof args, "'%s' '%s'", model, wrong);
        rc = run_prog(dir, "givt-eval", args, &out, &err);
        CHECK(rc == 1 && strstr(err, cases[i][1]) && no_sanitizer_report(err), "case %zu: exit %d\nstderr: %s", i, rc,
              err);
        free(out);
        free(err);
    }
    tu_rmtree(dir);
}

TEST(givt_train_runs_and_error_cases_exit_cleanly) {
    char dir[256], args[2048];
    tu_mkdtemp(dir, "prog");
    char *out, *err;
    // a short run of configs/tiny.ini
    snprintf(args, sizeof args, "configs/tiny.ini train.out_dir='%s' train.max_steps=6 train.save_every=3",
             tu_path(dir, "run"));
    int rc = run_prog(dir, "givt-train", args, &out, &err);
    CHECK(rc == 0 && no_sanitizer_report(err), "exit %d\nstderr: %s", rc, err);
    CHECK(fs_path_exists(tu_path(dir, "run/step_00000006/model.safetensors")), "no final checkpoint\n%s", err);
    free(out);
    free(err);
    // resuming from a checkpoint whose optimizer state is missing (this leaked in load_train_state)
    char ck[512];
    snprintf(ck, sizeof ck, "%s", tu_path(dir, "run/step_00000003"));
    unlink(tu_path(ck, "optimizer.safetensors"));
    snprintf(args, sizeof args, "configs/tiny.ini train.out_dir='%s' train.resume_from_ckpt='%s'", tu_path(dir, "run2"),
             ck);
    rc = run_prog(dir, "givt-train", args, &out, &err);
    CHECK(rc == 1 && strstr(err, "step_00000003/optimizer.safetensors: cannot open") && no_sanitizer_report(err),
          "exit %d\nstderr: %s", rc, err);
    free(out);
    free(err);
    // a config with a NUL byte: an error at its line, not a run on defaults
    char ini[512];
    snprintf(ini, sizeof ini, "%s", tu_path(dir, "nul.ini"));
    static const char nul_text[] = "[data]\nkind = dummy\n\0[train]\nmax_steps = 1\n";
    tu_put_bytes(ini, nul_text, sizeof nul_text - 1);
    snprintf(args, sizeof args, "'%s' train.out_dir='%s'", ini, tu_path(dir, "nul_run"));
    rc = run_prog(dir, "givt-train", args, &out, &err);
    CHECK(rc == 1 && strstr(err, "nul.ini:3: contains a NUL byte") && no_sanitizer_report(err), "exit %d\nstderr: %s",
          rc, err);
    free(out);
    free(err);
    // init_from a folder with NaN weights (same [model] as tiny.ini)
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 4, cfg.hidden_dim = 12, cfg.intermediate_dim = 32, cfg.num_heads = 2, cfg.num_layers = 1;
    cfg.block_size = 8;
    ParamTable pt;
    param_table_build(&pt, &cfg);
    float *p = xcalloc(pt.total, sizeof(float));
    p[pt.specs[pt.embed].offset + 4] = INFINITY;
    char init[512];
    snprintf(init, sizeof init, "%s", tu_path(dir, "init"));
    CHECK(hf_save(init, &cfg, &pt, p) == 0, "%s", givt_last_error());
    free(p);
    param_table_free(&pt);
    snprintf(args, sizeof args, "configs/tiny.ini train.out_dir='%s' train.init_from='%s'", tu_path(dir, "init_run"),
             init);
    rc = run_prog(dir, "givt-train", args, &out, &err);
    CHECK(rc == 1 && strstr(err, "init/model.safetensors: tensor \"model.embed.weight\": element [1, 0] is inf") &&
              no_sanitizer_report(err),
          "exit %d\nstderr: %s", rc, err);
    free(out);
    free(err);
    tu_rmtree(dir);
}

// [train] peak_tflops > 0 adds "MFU x.x%" to the progress line and "mfu" (a fraction: tokens/s x
// FLOPs per token / peak) to metrics.jsonl; the default 0 shows neither.
TEST(givt_train_reports_mfu_only_with_peak_tflops) {
    char dir[256], args[2048];
    tu_mkdtemp(dir, "mfu");
    char *out, *err;
    snprintf(args, sizeof args, "configs/tiny.ini train.out_dir='%s' train.max_steps=5", tu_path(dir, "plain"));
    int rc = run_prog(dir, "givt-train", args, &out, &err);
    char *metrics = fs_read_text(tu_path(dir, "plain/metrics.jsonl"), NULL);
    CHECK(rc == 0 && metrics && strstr(metrics, "\"tokens_per_s\"") && !strstr(metrics, "mfu") && !strstr(err, "MFU"),
          "exit %d\nstderr: %s\nmetrics: %s", rc, err, metrics ? metrics : "(none)");
    free(metrics);
    free(out);
    free(err);
    const double peak = 0.002;  // TFLOP/s: a small peak, so that the fraction is not tiny
    snprintf(args, sizeof args, "configs/tiny.ini train.out_dir='%s' train.max_steps=10 train.peak_tflops=%g",
             tu_path(dir, "mfu"), peak);
    rc = run_prog(dir, "givt-train", args, &out, &err);
    CHECK(rc == 0 && strstr(err, " tok/s | MFU ") && strstr(err, "% | ETA"), "exit %d\nstderr: %s", rc, err);
    metrics = fs_read_text(tu_path(dir, "mfu/metrics.jsonl"), NULL);
    CHECK(metrics != NULL);
    GivtConfig cfg;  // configs/tiny.ini's [model], T = seq_len 8
    givt_config_default(&cfg);
    cfg.input_dim = 4, cfg.hidden_dim = 12, cfg.intermediate_dim = 32, cfg.num_heads = 2, cfg.num_layers = 1;
    cfg.block_size = 8;
    double fpt = givt_config_flops_per_token(&cfg, 8, NULL);
    int lines = 0;
    for (const char *l = metrics; l && (l = strstr(l, "\"tokens_per_s\": ")); l++, lines++) {
        double tok_s = strtod(l + 16, NULL);
        const char *m = strstr(l, "\"mfu\": ");
        const char *nl = strchr(l, '\n');
        CHECK(m && (!nl || m < nl), "line %d has no mfu", lines + 1);
        if (!m) break;
        // tokens_per_s is written with one decimal and mfu with 9 significant digits (up to 5e-9
        // relative): the check allows for both roundings
        double mfu = strtod(m + 7, NULL), want = tok_s * fpt / (peak * 1e12);
        CHECK(fabs(mfu - want) <= 0.05 * fpt / (peak * 1e12) + 1e-8 * want, "mfu %.10g, want %.10g", mfu, want);
    }
    CHECK(lines == 2, "%d logged lines, want 2 (log_every = 5, max_steps = 10)", lines);
    free(metrics);
    free(out);
    free(err);
    tu_rmtree(dir);
}

// dst = tmpl with each of the n names[2k] replaced by names[2k + 1].
static void fill_template(char *dst, size_t size, const char *tmpl, const char *const *names, int n) {
    size_t k = 0;
    for (const char *p = tmpl; *p && k + 1 < size;) {
        int hit = -1;
        for (int j = 0; j < n && hit < 0; j++)
            if (!strncmp(p, names[2 * j], strlen(names[2 * j]))) hit = j;
        if (hit < 0) {
            dst[k++] = *p++;
            continue;
        }
        k += (size_t)snprintf(dst + k, size - k, "%s", names[2 * hit + 1]);
        if (k >= size) k = size - 1;
        p += strlen(names[2 * hit]);
    }
    dst[k] = '\0';
}

// A givt-sample command line (with {X} names for fill_template) and the message it must fail with.
typedef struct {
    const char *args, *want;
} ErrorCase;

// Runs givt-sample on each case: exit status 1, the message on stderr, no sanitizer report, and
// nothing written at out (the path every case names as its output).
static void sample_error_cases(const char *dir, const ErrorCase *cases, size_t n, const char *const *names,
                               int n_names, const char *out_path) {
    char args[4096], *out, *err;
    for (size_t i = 0; i < n; i++) {
        fill_template(args, sizeof args, cases[i].args, names, n_names);
        int rc = run_prog(dir, "givt-sample", args, &out, &err);
        CHECK(rc == 1 && strstr(err, cases[i].want) && no_sanitizer_report(err), "case %zu: exit %d\nstderr: %s", i, rc,
              err);
        free(out), free(err);
        CHECK(!fs_path_exists(out_path), "case %zu wrote an output", i);
    }
}

// givt-sample on a model folder: a good run (the output's shape and the prompt kept), and every bad
// input a one-line error with nothing written (tiny config: D 4, block_size 16).
TEST(givt_sample_good_and_error_cases_exit_cleanly) {
    char dir[256], args[4096], model[512];
    tu_mkdtemp(dir, "sampleprog");
    make_model(model, sizeof model, dir, "model", 0);
    float prompt[2 * 4] = {0.5f, -0.5f, 1, 0, 0.25f, 0.1f, -1, 2}, nanp[2 * 4] = {0, 0, 0, NAN, 0, 0, 0, 0};
    float wide[2 * 5] = {0};
    int64_t ps[2] = {2, 4}, ws[2] = {2, 5};
    char good[512], bad_nan[512], bad_d[512], outp[512];
    snprintf(good, sizeof good, "%s", tu_path(dir, "prompt.npy"));
    snprintf(bad_nan, sizeof bad_nan, "%s", tu_path(dir, "nan.npy"));
    snprintf(bad_d, sizeof bad_d, "%s", tu_path(dir, "wide.npy"));
    snprintf(outp, sizeof outp, "%s", tu_path(dir, "out.npy"));
    CHECK(npy_write_f32(good, prompt, 2, ps) == 0 && npy_write_f32(bad_nan, nanp, 2, ps) == 0 &&
          npy_write_f32(bad_d, wide, 2, ws) == 0);
    char *out, *err;
    snprintf(args, sizeof args, "'%s' --max-len 9 --out '%s' --prompt '%s' --num-samples 3 --batch-size 2 --seed 4", model,
             outp, good);
    int rc = run_prog(dir, "givt-sample", args, &out, &err);
    CHECK(rc == 0 && strstr(err, "wrote") && no_sanitizer_report(err), "exit %d\nstderr: %s", rc, err);
    free(out), free(err);
    NpyFile f;
    CHECK(npy_open(&f, outp) == 0 && f.ndim == 3 && f.shape[0] == 3 && f.shape[1] == 9 && f.shape[2] == 4, "%s",
          givt_last_error());
    float got[3 * 9 * 4];
    if (f.numel == 3 * 9 * 4 && npy_read_f32(&f, 0, f.numel, got) == 0)
        for (int i = 0; i < 3; i++) CHECK(memcmp(got + i * 36, prompt, sizeof prompt) == 0, "sample %d: prompt kept", i);
    npy_close(&f);
    const ErrorCase cases[] = {
        {"'/nonexistent/m' --max-len 4 --out '{O}'", "/nonexistent/m/config.json: cannot open"},
        {"'{M}' --max-len 4 --out '{O}' --prompt '{W}'", "input_dim is 4"},
        {"'{M}' --max-len 4 --out '{O}' --prompt '{N}'", "non-finite value (nan) at index [0, 3]"},
        {"'{M}' --max-len 2 --out '{O}' --prompt '{P}'", "--max-len 2: must be larger than the prompt (2 vectors)"},
        {"'{M}' --max-len 17 --out '{O}'", "at most block_size = 16"},
        {"'{M}' --max-len 4 --out '{O}' --num-samples 0", "--num-samples 0: expected a whole number in [1,"},
        {"'{M}' --max-len 4 --out '{O}' --temperature -1", "--temperature -1: expected a number >= 0"},
        {"'{M}' --max-len 4 --out /nonexistent/dir/x.npy", "--out /nonexistent/dir/x.npy: cannot write in"},
        {"'{M}' --max-len 4 --out '{O}' --ema", "ema.safetensors: no such file"},
        {"'{M}' --max-len 4 --out '{O}' --device tpu", "device \"tpu\": unknown"},
        {"'{M}' --out '{O}'", "--max-len L is required"},
        {"'{M}' --max-len 4 --out /tmp", "--out /tmp: is a folder"},
    };
    char bad_out[512];
    snprintf(bad_out, sizeof bad_out, "%s", tu_path(dir, "never.npy"));
    const char *names[] = {"{M}", model, "{O}", bad_out, "{N}", bad_nan, "{W}", bad_d, "{P}", good};
    sample_error_cases(dir, cases, sizeof cases / sizeof cases[0], names, 5, bad_out);
    tu_rmtree(dir);
}

// givt-sample with a class-conditional mixture model: --class with and without guidance runs and
// reports the rejection sampler's counts; bad class arguments are one-line errors naming the option,
// the file or num_classes, and write nothing.
TEST(givt_sample_classes_and_guidance) {
    char dir[256], args[4096], cond[512], plain[512];
    tu_mkdtemp(dir, "sampleclass");
    make_model(plain, sizeof plain, dir, "plain", 0);
    GivtConfig cfg;
    tu_tiny_config(&cfg);
    cfg.num_mixtures = 2, cfg.num_classes = 3;
    CHECK(save_model(cond, sizeof cond, dir, "cond", &cfg, 8, 0.2f, 0) == 0, "%s", givt_last_error());
    int32_t lab[3] = {0, 2, 1}, big[3] = {0, 3, 1};
    int64_t n3 = 3, n2 = 2;
    float f3[3] = {0, 1, 2};
    char labels[512], wrong_len[512], wrong_dtype[512], out_of_range[512], outp[512], bad_out[512];
    snprintf(labels, sizeof labels, "%s", tu_path(dir, "labels.npy"));
    snprintf(wrong_len, sizeof wrong_len, "%s", tu_path(dir, "two.npy"));
    snprintf(wrong_dtype, sizeof wrong_dtype, "%s", tu_path(dir, "float.npy"));
    snprintf(out_of_range, sizeof out_of_range, "%s", tu_path(dir, "big.npy"));
    snprintf(outp, sizeof outp, "%s", tu_path(dir, "out.npy"));
    snprintf(bad_out, sizeof bad_out, "%s", tu_path(dir, "never.npy"));
    CHECK(npy_write(labels, "<i4", 4, lab, 1, &n3) == 0 && npy_write(wrong_len, "<i4", 4, lab, 1, &n2) == 0 &&
          npy_write(wrong_dtype, "<f4", 4, f3, 1, &n3) == 0 && npy_write(out_of_range, "<i4", 4, big, 1, &n3) == 0);
    char *out, *err;
    snprintf(args, sizeof args, "'%s' --max-len 5 --out '%s' --class 2 --cfg-scale 1.5 --num-samples 3 --seed 2", cond,
             outp);
    int rc = run_prog(dir, "givt-sample", args, &out, &err);
    CHECK(rc == 0 && strstr(err, "DB-CFG w = 1.5: 60 dimensions sampled") && strstr(err, "acceptance rate") &&
              no_sanitizer_report(err),
          "exit %d\nstderr: %s", rc, err);
    free(out), free(err);
    snprintf(args, sizeof args, "'%s' --max-len 5 --out '%s' --labels '%s'", cond, outp, labels);
    rc = run_prog(dir, "givt-sample", args, &out, &err);
    CHECK(rc == 0 && strstr(err, "wrote") && strstr(err, "(3, 5, 4)") && !strstr(err, "DB-CFG w") &&
              no_sanitizer_report(err),
          "exit %d\nstderr: %s", rc, err);
    free(out), free(err);
    const ErrorCase cases[] = {
        {"'{C}' --max-len 4 --out '{O}' --class 3", "--class 3: must be in [0, 2] (the model has num_classes = 3)"},
        {"'{M}' --max-len 4 --out '{O}' --class 0", "is unconditional (num_classes = 0 in its config.json)"},
        {"'{M}' --max-len 4 --out '{O}' --labels '{L}'", "is unconditional (num_classes = 0"},
        {"'{C}' --max-len 4 --out '{O}' --labels '{L}' --num-samples 2", "3 labels for --num-samples 2"},
        {"'{C}' --max-len 4 --out '{O}' --labels '{F}'", "dtype '<f4' not supported for labels"},
        {"'{C}' --max-len 4 --out '{O}' --labels '{B}'", "label 3 at index 1 is not a class of the model"},
        {"'{C}' --max-len 4 --out '{O}' --cfg-scale 1", "--cfg-scale 1 needs --class or --labels"},
        {"'{C}' --max-len 4 --out '{O}' --cfg-scale -2 --class 1", "--cfg-scale -2: expected a number >= 0"},
        {"'{C}' --max-len 4 --out '{O}' --class 1 --labels '{L}'", "--class and --labels: give one of them"},
        {"'{C}' --max-len 4 --out '{O}' --class -1", "--class -1: expected a whole number"},
    };
    const char *names[] = {"{M}", plain, "{O}", bad_out, "{C}", cond, "{L}", labels, "{F}", wrong_dtype,
                           "{B}", out_of_range, "{W}", wrong_len};
    sample_error_cases(dir, cases, sizeof cases / sizeof cases[0], names, 7, bad_out);
    tu_rmtree(dir);
}

// ---- givt-latents and the data errors that point to it ----------------------------------------
// "loss = X" of givt-eval's stdout (NAN when absent).
static double eval_loss_of(const char *out) {
    const char *p = strstr(out, "loss = ");
    return p ? strtod(p + 7, NULL) : NAN;
}

// The last "val_loss" of a run's metrics.jsonl (NAN when none).
static double last_val_loss(const char *run_dir) {
    char *m = fs_read_text(tu_path(run_dir, "metrics.jsonl"), NULL);
    double v = NAN;
    for (const char *p = m; p && (p = strstr(p, "\"val_loss\": ")); p++) v = strtod(p + 12, NULL);
    free(m);
    return v;
}

// Runs prog with args and checks the exit status, that stderr (or stdout, for want_out) holds want,
// and no sanitizer report; returns stdout (to be freed).
static char *expect_run(const char *dir, const char *prog, const char *args, int want_rc, const char *want,
                        const char *want_out, int line) {
    char *out, *err;
    int rc = run_prog(dir, prog, args, &out, &err);
    if (rc != want_rc || (want && !strstr(err, want)) || (want_out && !strstr(out, want_out)) || !no_sanitizer_report(err))
        t_fail_at(__FILE__, line, NULL, "%s %s: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant \"%s\" / \"%s\"", prog,
                  args, rc, want_rc, out, err, want ? want : "", want_out ? want_out : "");
    free(err);
    return out;
}
#define EXPECT_RUN(dir, prog, args, rc, want, want_out) expect_run((dir), (prog), (args), (rc), (want), (want_out), __LINE__)

// givt-latents: synthetic float16 (N, H, W, C) latents to sequences and back with the default
// statistics path, the layout taken from the statistics; every usage error a one-line message; and
// givt-train and givt-eval given the latents themselves point to the converter.
TEST(givt_latents_round_trip_and_errors) {
    char dir[256], args[4096], lat[512], seq[512], back[512], stats[512];
    tu_mkdtemp(dir, "latprog");
    snprintf(lat, sizeof lat, "%s", tu_path(dir, "lat.npy"));
    snprintf(seq, sizeof seq, "%s", tu_path(dir, "seq.npy"));
    snprintf(stats, sizeof stats, "%s", tu_path(dir, "seq.stats.json"));
    snprintf(back, sizeof back, "%s", tu_path(dir, "back.npy"));
    snprintf(args, sizeof args, "synthetic '%s' --shape 6,3,5,3 --layout nhwc --dtype float16 --seed 2", lat);
    free(EXPECT_RUN(dir, "givt-latents", args, 0, NULL, "(N, C, H, W) = (6, 3, 5, 3), stored nhwc, float16"));
    snprintf(args, sizeof args, "to-sequences '%s' '%s' --layout nhwc", lat, seq);
    free(EXPECT_RUN(dir, "givt-latents", args, 0, NULL, "(6, 15, 3) float32"));
    CHECK(fs_path_exists(stats), "no statistics beside the output");
    snprintf(args, sizeof args, "to-latents '%s' '%s' --stats '%s'", seq, back, stats);
    free(EXPECT_RUN(dir, "givt-latents", args, 0, NULL, "(N, H, W, C, float32)"));
    NpyArray a, b;
    CHECK(npy_array_open(&a, lat) == 0 && npy_array_open(&b, back) == 0, "%s", givt_last_error());
    CHECK(a.numel == 6 * 3 * 5 * 3 && b.numel == a.numel && b.ndim == 4 && b.shape[1] == 5 && b.shape[3] == 3);
    if (a.numel == 270 && b.numel == 270) {
        double x[270], y[270], worst = 0;
        CHECK(npy_array_read_rows_f64(&a, 0, 6, x) == 0 && npy_array_read_rows_f64(&b, 0, 6, y) == 0);
        for (int i = 0; i < 270; i++) worst = fmax(worst, fabs(x[i] - y[i]) / (1 + fabs(x[i])));
        CHECK(worst < 1e-6, "round trip off by %g", worst);
    }
    npy_array_close(&a), npy_array_close(&b);
    // usage and data errors
    const ErrorCase cases[] = {
        {"to-sequences '{S}' '{O}'", "array has rank 3, shape (6, 15, 3): it already is (N, T, D) sequences"},
        {"to-latents '{S}' '{O}'", "to-latents: give --stats STATS.json"},
        {"to-latents '{S}' '{O}' --stats '{L}'", "lat.npy: invalid JSON"},
        {"to-latents '{S}' '{O}' --stats '{J}' --height 4", "--height 4 --width 3 but"},
        {"to-sequences '{L}' '{O}' --height 4", "--height/--width: options of to-latents"},
        {"to-sequences '{L}' '{O}' --layout chw", "layout \"chw\": expected nchw"},
        {"to-sequences '{L}'", "to-sequences: expected LATENTS.npy OUT.npy"},
        {"transpose '{L}' '{O}'", "unknown command \"transpose\""},
        {"synthetic '{O}' --shape 2,3,4", "--shape 2,3,4: expected N,C,H,W"},
        {"to-sequences '{L}' '{O}' --frobnicate", "unknown option --frobnicate"},
    };
    char never[512];
    snprintf(never, sizeof never, "%s", tu_path(dir, "never.npy"));
    const char *names[] = {"{S}", seq, "{O}", never, "{L}", lat, "{J}", stats};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        fill_template(args, sizeof args, cases[i].args, names, 4);
        free(EXPECT_RUN(dir, "givt-latents", args, 1, cases[i].want, NULL));
        CHECK(!fs_path_exists(never), "case %zu wrote an output", i);
    }
    snprintf(args, sizeof args, "configs/tiny.ini train.out_dir='%s' data.kind=npy data.path='%s' model.input_dim=3",
             tu_path(dir, "run"), lat);
    free(EXPECT_RUN(dir, "givt-train", args, 1, "givt-latents to-sequences", NULL));
    char model[512];
    make_model(model, sizeof model, dir, "model", 0);
    snprintf(args, sizeof args, "'%s' '%s'", model, lat);
    free(EXPECT_RUN(dir, "givt-eval", args, 1, "array has rank 4, shape (6, 5, 3, 3)", NULL));
    tu_rmtree(dir);
}

// ---- givt-eval: the trainer's split, labels, EMA, windows ---------------------------------------
// (N, T, D) float32 data of normal values (seed) at path.
static void write_data(const char *path, int64_t n, int64_t t, int64_t d, uint64_t seed) {
    float *x = xmalloc((size_t)(n * t * d) * sizeof *x);
    Rng rng;
    rng_seed(&rng, seed);
    for (int64_t i = 0; i < n * t * d; i++) x[i] = (float)rng_normal(&rng);
    int64_t shape[3] = {n, t, d};
    if (npy_write_f32(path, x, 3, shape) != 0) givt_die("%s", givt_last_error());
    free(x);
}

// givt-eval --split val on givt-train's final checkpoint gives the trainer's last val_loss to the 9
// significant digits both print (2e-8 relative: the sums are the same, batch for batch): on dummy data
// (train.ini found in the checkpoint), and on a class-conditional mixture with labels, sequences of
// T = 16 cut into windows of 8, a last validation batch that is not full, and the EMA (--ema; the
// model weights give another loss, with a note that the trainer used the EMA).
TEST(givt_eval_split_val_matches_the_trainers_val_loss) {
    char dir[256], args[4096], run[512], data[512], labels[512];
    tu_mkdtemp(dir, "evalsplit");
    snprintf(run, sizeof run, "%s", tu_path(dir, "dummy"));
    snprintf(args, sizeof args, "configs/tiny.ini train.out_dir='%s' train.max_steps=6 train.save_every=3", run);
    free(EXPECT_RUN(dir, "givt-train", args, 0, NULL, NULL));
    double want = last_val_loss(run);
    snprintf(args, sizeof args, "'%s/step_00000006' --split val", run);
    char *out = EXPECT_RUN(dir, "givt-eval", args, 0, NULL, "split = val: 8 of 64 windows");
    double got = eval_loss_of(out);
    CHECK(isfinite(want) && fabs(got - want) <= 2e-8 * fabs(want), "givt-eval %.9g, trainer %.9g", got, want);
    free(out);

    snprintf(data, sizeof data, "%s", tu_path(dir, "data.npy"));
    snprintf(labels, sizeof labels, "%s", tu_path(dir, "labels.npy"));
    write_data(data, 20, 16, 4, 3);
    int32_t lab[20];
    for (int i = 0; i < 20; i++) lab[i] = (i * 7) % 3;
    int64_t nl = 20;
    CHECK(npy_write(labels, "<i4", 4, lab, 1, &nl) == 0);
    snprintf(run, sizeof run, "%s", tu_path(dir, "cond"));
    snprintf(args, sizeof args,
             "configs/tiny.ini train.out_dir='%s' train.max_steps=8 train.ema=0.67 train.batch_size=3 "
             "model.num_classes=3 model.num_mixtures=2 data.kind=npy data.path='%s' data.labels='%s'",
             run, data, labels);
    free(EXPECT_RUN(dir, "givt-train", args, 0, NULL, NULL));
    want = last_val_loss(run);
    snprintf(args, sizeof args, "'%s/step_00000008' --config '%s/train.ini' --split val --ema", run, run);
    out = EXPECT_RUN(dir, "givt-eval", args, 0, NULL, "split = val: 8 of 40 windows");
    got = eval_loss_of(out);
    CHECK(isfinite(want) && fabs(got - want) <= 2e-8 * fabs(want), "givt-eval --ema %.9g, trainer %.9g", got, want);
    CHECK(strstr(out, "sequences = 8, T = 8, D = 4 (EMA weights)"), "%s", out);
    free(out);
    snprintf(args, sizeof args, "'%s/step_00000008' --config '%s/train.ini' --split val", run, run);
    out = EXPECT_RUN(dir, "givt-eval", args, 0, "the trainer's val_loss is of the EMA weights (--ema", NULL);
    CHECK(fabs(eval_loss_of(out) - want) > 1e-6 * fabs(want), "the model weights give the EMA's loss");
    free(out);
    tu_rmtree(dir);
}

// givt-eval of a class-conditional model: --labels changes the loss; without labels a one-line note
// says it is the "no label" loss. Data as givt-train takes them: an (M, D) stream in windows (of
// block_size by default, or --seq-len), sequences longer than block_size cut into windows, each with
// a note; and the errors of these options.
TEST(givt_eval_labels_windows_and_notes) {
    char dir[256], args[4096], cond[512], plain[512], data[512], labels[512], stream[512], longer[512];
    tu_mkdtemp(dir, "evallab");
    make_model(plain, sizeof plain, dir, "plain", 0);
    GivtConfig cfg;
    tu_tiny_config(&cfg);
    cfg.num_mixtures = 2, cfg.num_classes = 3;
    CHECK(save_model(cond, sizeof cond, dir, "cond", &cfg, 8, 0.3f, 0) == 0, "%s", givt_last_error());
    snprintf(data, sizeof data, "%s", tu_path(dir, "data.npy"));
    snprintf(labels, sizeof labels, "%s", tu_path(dir, "labels.npy"));
    snprintf(stream, sizeof stream, "%s", tu_path(dir, "stream.npy"));
    snprintf(longer, sizeof longer, "%s", tu_path(dir, "long.npy"));
    write_data(data, 5, 6, 4, 4);
    int32_t lab[5] = {0, 2, 1, 1, 0};
    int64_t n5 = 5;
    CHECK(npy_write(labels, "<i4", 4, lab, 1, &n5) == 0);
    snprintf(args, sizeof args, "'%s' '%s'", cond, data);
    char *out = EXPECT_RUN(dir, "givt-eval", args, 0, "is class-conditional (num_classes = 3) and no labels were given",
                           "sequences = 5, T = 6, D = 4");
    double none = eval_loss_of(out);
    free(out);
    snprintf(args, sizeof args, "'%s' '%s' --labels '%s'", cond, data, labels);
    out = EXPECT_RUN(dir, "givt-eval", args, 0, NULL, "sequences = 5");
    double with = eval_loss_of(out);
    CHECK(isfinite(none) && isfinite(with) && fabs(none - with) > 1e-4, "labels %.9g, none %.9g", with, none);
    free(out);
    float s[30 * 4] = {0};
    for (int i = 0; i < 120; i++) s[i] = (float)((i * 37) % 11) / 5.0f - 1.0f;
    int64_t ss[2] = {30, 4};
    CHECK(npy_write_f32(stream, s, 2, ss) == 0);
    snprintf(args, sizeof args, "'%s' '%s'", plain, stream);
    free(EXPECT_RUN(dir, "givt-eval", args, 0, "is an (M, D) stream: windows of block_size = 16",
                    "sequences = 1, T = 16, D = 4"));
    snprintf(args, sizeof args, "'%s' '%s' --seq-len 5", plain, stream);
    free(EXPECT_RUN(dir, "givt-eval", args, 0, NULL, "sequences = 6, T = 5, D = 4"));
    write_data(longer, 3, 40, 4, 5);
    snprintf(args, sizeof args, "'%s' '%s'", plain, longer);
    free(EXPECT_RUN(dir, "givt-eval", args, 0, "cut into 2 windows of 16 vectors, the rest unused",
                    "sequences = 6, T = 16, D = 4"));
    const ErrorCase cases[] = {
        {"'{M}' '{D}' --labels '{L}'", "--labels {L}: the model {M} is unconditional (num_classes = 0"},
        {"'{C}' '{S}' --labels '{L}'", "is an (M, D) stream; labels need (N, T, D) files"},
        {"'{C}' '{X}' --labels '{L}'", "5 labels, but the data hold 3 sequences"},
        {"'{M}' '{D}' --seq-len 17", "--seq-len 17: at most the model's block_size = 16"},
        {"'{M}' '{D}' --seq-len 7", "sequences have T = 6, shorter than seq_len = 7"},
        {"'{M}' --split val", "--split val needs the run's configuration: --config TRAIN.ini"},
        {"'{M}' '{D}' --split test", "--split: split \"test\": expected all, train or val"},
        {"'{M}' --config configs/tiny.ini", "configs/tiny.ini: [model] hidden_dim = 12, but {M}/config.json has"},
        {"'{M}'", "expected FOLDER and DATA.npy, or FOLDER and --config TRAIN.ini"},
        {"'{M}' '{D}' --ema", "--ema: {M}/ema.safetensors: no such file"},
    };
    const char *names[] = {"{M}", plain, "{C}", cond, "{D}", data, "{L}", labels, "{S}", stream, "{X}", longer};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char want[2048];
        fill_template(args, sizeof args, cases[i].args, names, 6);
        fill_template(want, sizeof want, cases[i].want, names, 6);
        free(EXPECT_RUN(dir, "givt-eval", args, 1, want, NULL));
    }
    tu_rmtree(dir);
}
