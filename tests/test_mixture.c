// test_mixture: what the paper has beyond the seed (GIVT.md): DB-CFG's rejection sampler against the
// closed-form guided Gaussian, mixture components drawn at their weights, class-conditional
// generation with the KV cache against the full forward, label dropout at its rate and resumable,
// class labels of the data and of the configuration, and the errors of bad class arguments.
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "fs.h"
#include "harness.h"
#include "model.h"
#include "npy.h"
#include "rng.h"
#include "sample.h"
#include "testutil.h"
#include "train_config.h"
#include "trainer.h"

// ---- DB-CFG on 1-D Gaussians ----------------------------------------------------------------------
// p(x) ∝ N(mc, sc^2)^(1+w) / N(mu, su^2)^w is the Gaussian of precision a = (1+w)/sc^2 - w/su^2 and
// mean ((1+w) mc/sc^2 - w mu/su^2) / a when a > 0. n draws: the sample mean within 5 standard errors
// (sd/sqrt(n)) and the sample variance within 5 of its standard errors (var sqrt(2/(n-1))).
TEST(cfg_rejection_sampler_matches_the_closed_form_gaussian) {
    const struct {
        double mc, sc, mu, su, w;
    } cases[] = {
        {0.0, 1.0, 0.5, 1.5, 1.0},    // the proposal (std 3) is wide, the bound exact
        {2.0, 0.5, 1.0, 0.8, 3.0},    // strong guidance, pushed away from the unconditional mean
        {-1.0, 1.2, 1.0, 1.3, 0.5},   // weak guidance, su close to sc
        {0.3, 1.0, -2.0, 4.0, 2.0},   // a broad unconditional density
    };
    const int n = 20000;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double mc = cases[c].mc, sc = cases[c].sc, mu = cases[c].mu, su = cases[c].su, w = cases[c].w;
        double a = (1 + w) / (sc * sc) - w / (su * su), want_mean = ((1 + w) * mc / (sc * sc) - w * mu / (su * su)) / a;
        double want_var = 1.0 / a;
        Rng r;
        rng_seed(&r, 100 + c);
        CfgStats st = {0};
        double m1 = 0, m2 = 0, *xs = xmalloc(n * sizeof(double));
        for (int i = 0; i < n; i++) m1 += xs[i] = sample_cfg_1d(mc, sc, mu, su, w, &r, &st);
        m1 /= n;
        for (int i = 0; i < n; i++) m2 += (xs[i] - m1) * (xs[i] - m1);
        m2 /= n - 1;
        double se_m = sqrt(want_var / n), se_v = want_var * sqrt(2.0 / (n - 1));
        printf("  case %zu: mean %.4f (closed form %.4f, se %.4f), var %.4f (%.4f, se %.4f), acceptance %.1f%%, "
               "fallbacks %lld\n",
               c, m1, want_mean, se_m, m2, want_var, se_v, 100.0 * st.accepted / st.proposals, (long long)st.fallbacks);
        CHECK(fabs(m1 - want_mean) <= 5 * se_m, "case %zu: mean %.5f, closed form %.5f", c, m1, want_mean);
        CHECK(fabs(m2 - want_var) <= 5 * se_v, "case %zu: variance %.5f, closed form %.5f", c, m2, want_var);
        CHECK(st.dims == n && st.accepted + st.fallbacks == n && st.proposals >= n, "case %zu: counts", c);
        CHECK(st.fallbacks == 0, "case %zu: %lld fallbacks", c, (long long)st.fallbacks);
        free(xs);
    }
}

// The sampler is not a plain conditional draw: with w > 0 the mean moves away from the unconditional
// one, beyond the statistical error (guards against a sampler that ignores its target).
TEST(cfg_guidance_moves_the_mean_away_from_the_unconditional) {
    Rng r;
    rng_seed(&r, 7);
    const int n = 20000;
    double plain = 0, guided = 0;
    for (int i = 0; i < n; i++) plain += sample_cfg_1d(0.0, 1.0, -1.0, 1.5, 0.0, &r, NULL);
    for (int i = 0; i < n; i++) guided += sample_cfg_1d(0.0, 1.0, -1.0, 1.5, 2.0, &r, NULL);
    plain /= n, guided /= n;
    // w = 2: a = 3 - 2/2.25 = 2.111, mean = (0 + 2/2.25) / a = 0.421
    CHECK(fabs(plain) < 5 / sqrt(n), "w = 0 mean %.4f", plain);
    CHECK(guided > 0.35 && guided < 0.49, "w = 2 mean %.4f (closed form 0.421)", guided);
}

// When the unconditional density is the narrower one, p_c^(1+w) / p_u^w grows without bound away
// from mc (no density at all); the sampler takes the target on the grid's interval mc +- 4 proposal
// stds (sq = 2 max(sc, su)): every draw lies there. The bound sits at the interval's edge, where
// proposals rarely land, so nearly every dimension falls back to a conditional draw N(mc, sc^2).
TEST(cfg_unbounded_ratio_stays_on_the_grid_interval) {
    Rng r;
    rng_seed(&r, 11);
    CfgStats st = {0};
    const double mc = 1.0, sc = 1.0, mu = 1.2, su = 0.5, w = 2.0, sq = 2.0;
    int outside = 0;
    double m1 = 0;
    for (int i = 0; i < 5000; i++) {
        double x = sample_cfg_1d(mc, sc, mu, su, w, &r, &st);
        outside += fabs(x - mc) > 4 * sq;
        m1 += x / 5000;
    }
    printf("  unbounded ratio: %d of 5000 outside the interval, acceptance %.2f%%, %lld fallbacks, mean %.3f\n",
           outside, 100.0 * st.accepted / st.proposals, (long long)st.fallbacks, m1);
    CHECK(outside == 0, "%d draws outside mc +- 4 sq", outside);
    CHECK(st.fallbacks > 4500 && st.accepted + st.fallbacks == 5000, "%lld fallbacks", (long long)st.fallbacks);
}

// ---- mixtures -----------------------------------------------------------------------------------
// A K = 3 head with weights 1/6, 2/6, 3/6 (logits log 1, log 2, log 3 plus an offset) and components
// 100 apart: each draw belongs to one component; the frequencies within 5 standard errors; within
// a component the values have its mean and std.
TEST(mixture_sampling_picks_components_at_their_weights) {
    GivtConfig c;
    givt_config_default(&c);
    c.input_dim = 2, c.num_mixtures = 3;
    float y[3 + 2 * 3 * 2];
    const double w[3] = {1.0 / 6, 2.0 / 6, 3.0 / 6};
    for (int k = 0; k < 3; k++) y[k] = (float)(log(w[k]) + 5.0);
    for (int k = 0; k < 3; k++)
        for (int d = 0; d < 2; d++) {
            y[3 + k * 2 + d] = (float)(100.0 * (k - 1) + d);  // mu
            y[3 + 6 + k * 2 + d] = 0.5f;                       // pre: std = softplus(0.5) = 0.974
        }
    const int n = 30000;
    int count[3] = {0}, mixed = 0;
    double m0 = 0;
    Rng r;
    rng_seed(&r, 3);
    for (int i = 0; i < n; i++) {
        float x[2];
        sample_head_vector(&c, y, 1.0, &r, x);
        int k0 = (int)lround(x[0] / 100.0) + 1, k1 = (int)lround((x[1] - 1) / 100.0) + 1;
        mixed += k0 != k1;  // both dims from one component
        if (k0 >= 0 && k0 < 3) count[k0]++;
        if (k0 == 0) m0 += x[0];
    }
    CHECK(mixed == 0, "%d vectors mix components", mixed);
    for (int k = 0; k < 3; k++) {
        double f = (double)count[k] / n, se = sqrt(w[k] * (1 - w[k]) / n);
        printf("  component %d: frequency %.4f (weight %.4f, se %.4f)\n", k, f, w[k], se);
        CHECK(fabs(f - w[k]) <= 5 * se, "component %d: frequency %.4f, weight %.4f", k, f, w[k]);
    }
    m0 /= count[0];
    CHECK(fabs(m0 + 100.0) <= 5 * 0.974 / sqrt(count[0]), "component 0 mean %.4f", m0);
    // temperature 0: the mean of the most probable component (2), whatever the random state
    float x[2];
    sample_head_vector(&c, y, 0.0, &r, x);
    CHECK(x[0] == 100.0f && x[1] == 101.0f, "t = 0 gave (%g, %g)", x[0], x[1]);
}

// ---- class-conditional generation -----------------------------------------------------------------
// A small class-conditional mixture model with random weights everywhere.
static void make_cond_model(GivtModel *m, Backend *be, int K, int classes, uint64_t seed) {
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 3, cfg.hidden_dim = 16, cfg.intermediate_dim = 20, cfg.num_heads = 2, cfg.num_layers = 2;
    cfg.block_size = 8, cfg.num_mixtures = K, cfg.num_classes = classes;
    tu_random_model(m, &cfg, be, seed);
}

// At temperature 0 each generated vector is the mean of the most probable component of the full
// forward over the sequence so far, with the sequence's class in place of bos: the KV cache carries
// the class. Another class gives other vectors; guidance at t = 0 changes nothing (points).
TEST(sample_class_conditional_cache_equals_the_full_forward) {
    Backend *be = tu_open_cpu();
    GivtModel gen, full;
    make_cond_model(&gen, be, 2, 4, 21);
    make_cond_model(&full, be, 2, 4, 21);
    int L = 6, n = 3, D = 3, W = givt_config_head_out(&gen.cfg);
    int32_t labels[3] = {0, 3, 4};  // 4: "no label"
    float *out = xmalloc((size_t)n * L * D * sizeof(float)), *out2 = xmalloc((size_t)n * L * D * sizeof(float));
    SampleConfig sc = {.max_len = L, .temperature = 0, .seed = 1, .batch_size = 2, .labels = labels, .n_labels = 3};
    CHECK(sample_generate(&gen, &gen.w, &sc, NULL, 1, 0, n, out, NULL, NULL) == 0, "%s", givt_last_error());
    model_alloc_acts(&full, n, L, 0, 0);
    float *xd = be->ops->alloc(be, (size_t)n * L * D * sizeof(float)), *y = xmalloc((size_t)n * L * W * sizeof(float));
    be->ops->upload(be, xd, out, (size_t)n * L * D * sizeof(float));
    const cval *yd = model_forward_cond(&full, &full.w, xd, labels, n, L);
    be->ops->download(be, y, yd, (size_t)n * L * W * sizeof(float));
    double worst = 0;
    for (int i = 0; i < n * L; i++) {
        float want[3];
        sample_head_vector(&full.cfg, y + (size_t)i * W, 0.0, NULL, want);
        for (int d = 0; d < D; d++) worst = fmax(worst, fabs(out[(size_t)i * D + d] - want[d]) / fmax(1.0, fabs(want[d])));
    }
    printf("  cached vs full forward: max rel difference %.2e (tol 1e-5)\n", worst);
    CHECK(worst <= 1e-5, "cached generation differs from the full forward by %.3g", worst);
    // another class for sample 0: other vectors
    int32_t other[3] = {1, 3, 4};
    sc.labels = other;
    GivtModel g2;
    make_cond_model(&g2, be, 2, 4, 21);
    CHECK(sample_generate(&g2, &g2.w, &sc, NULL, 1, 0, n, out2, NULL, NULL) == 0, "%s", givt_last_error());
    CHECK(memcmp(out, out2, (size_t)L * D * sizeof(float)) != 0, "class 1 gave the vectors of class 0");
    CHECK(memcmp(out + L * D, out2 + L * D, (size_t)2 * L * D * sizeof(float)) == 0, "the other samples changed");
    free(out), free(out2), free(y);
    be->ops->free(be, xd);
    model_free(&gen), model_free(&full), model_free(&g2);
    backend_close(be);
}

// Guided generation end to end: two streams in the batch, every dimension through the rejection
// sampler (the counts add up), the same samples at any batch size, and w = 0 is plain conditional
// sampling (the same draws as without guidance).
TEST(sample_guided_generation_counts_and_batch_invariance) {
    Backend *be = tu_open_cpu();
    int L = 5, n = 5, D = 3;
    int32_t label = 2;
    float *ref = NULL;
    const int sizes[] = {5, 2};
    for (int k = 0; k < 2; k++) {
        GivtModel m;
        make_cond_model(&m, be, 3, 3, 31);
        CfgStats st = {0};
        float *out = xmalloc((size_t)n * L * D * sizeof(float));
        SampleConfig sc = {.max_len = L, .temperature = 1.0, .seed = 9, .batch_size = sizes[k], .labels = &label,
                           .n_labels = 1, .cfg_scale = 1.5, .stats = &st};
        CHECK(sample_generate(&m, &m.w, &sc, NULL, 1, 0, n, out, NULL, NULL) == 0, "%s", givt_last_error());
        CHECK(st.dims == (int64_t)n * L * D && st.accepted + st.fallbacks == st.dims && st.proposals >= st.accepted,
              "counts: %lld dims, %lld proposals, %lld accepted, %lld fallbacks", (long long)st.dims,
              (long long)st.proposals, (long long)st.accepted, (long long)st.fallbacks);
        if (!ref) {
            ref = out;
        } else {
            double worst = 0;
            for (size_t i = 0; i < (size_t)n * L * D; i++) worst = fmax(worst, fabs(out[i] - ref[i]));
            CHECK(worst <= 1e-4, "batch size %d differs by %.3g", sizes[k], worst);
            free(out);
        }
        model_free(&m);
    }
    GivtModel a, b;
    make_cond_model(&a, be, 3, 3, 31);
    make_cond_model(&b, be, 3, 3, 31);
    float *plain = xmalloc((size_t)n * L * D * sizeof(float)), *w0 = xmalloc((size_t)n * L * D * sizeof(float));
    CfgStats st = {0};
    SampleConfig sc = {.max_len = L, .temperature = 1.0, .seed = 9, .batch_size = 5, .labels = &label, .n_labels = 1,
                       .stats = &st};
    CHECK(sample_generate(&a, &a.w, &sc, NULL, 1, 0, n, plain, NULL, NULL) == 0, "%s", givt_last_error());
    sc.cfg_scale = 0.0;
    CHECK(sample_generate(&b, &b.w, &sc, NULL, 1, 0, n, w0, NULL, NULL) == 0, "%s", givt_last_error());
    CHECK(memcmp(plain, w0, (size_t)n * L * D * sizeof(float)) == 0 && st.dims == 0, "w = 0 is not plain sampling");
    CHECK(memcmp(plain, ref, (size_t)n * L * D * sizeof(float)) != 0, "guidance changed nothing");
    free(ref), free(plain), free(w0);
    model_free(&a), model_free(&b);
    backend_close(be);
}

TEST(sample_refuses_bad_class_arguments) {
    Backend *be = tu_open_cpu();
    GivtModel cond, plain;
    make_cond_model(&cond, be, 2, 4, 1);
    make_cond_model(&plain, be, 2, 0, 1);
    float out[4 * 8 * 3];
    int32_t bad = 5, good[2] = {1, 2};
    SampleConfig sc = {.max_len = 4, .temperature = 1.0, .batch_size = 4, .labels = &bad, .n_labels = 1};
    CHECK(sample_generate(&cond, &cond.w, &sc, NULL, 1, 0, 2, out, NULL, NULL) == -1 &&
          tu_error_has("label 5", "[0, 4)"), "%s", givt_last_error());
    sc.labels = good, sc.n_labels = 2;
    CHECK(sample_generate(&plain, &plain.w, &sc, NULL, 1, 0, 2, out, NULL, NULL) == -1 &&
          tu_error_has("unconditional", "num_classes = 0"), "%s", givt_last_error());
    CHECK(sample_generate(&cond, &cond.w, &sc, NULL, 1, 0, 3, out, NULL, NULL) == -1 &&
          tu_error_has("2 labels for 3 samples", NULL), "%s", givt_last_error());
    sc.labels = NULL, sc.n_labels = 0, sc.cfg_scale = 1;
    CHECK(sample_generate(&cond, &cond.w, &sc, NULL, 1, 0, 2, out, NULL, NULL) == -1 &&
          tu_error_has("needs class labels", NULL), "%s", givt_last_error());
    model_free(&cond), model_free(&plain);
    backend_close(be);
}

// ---- label dropout ----------------------------------------------------------------------------------
// The share of dropped labels is the rate (within 5 standard errors over 200000 slots); the decision is
// a function of (seed, step, slot) alone; rates 0 and 1 drop none and all; another seed or step drops
// other slots.
TEST(label_drop_at_the_requested_rate_and_reproducible) {
    const double rates[] = {0.1, 0.5, 0.03};
    const int n = 200000;
    for (int k = 0; k < 3; k++) {
        int dropped = 0;
        for (int i = 0; i < n; i++) dropped += data_label_dropped(42, i / 64, i % 64, rates[k]);
        double f = (double)dropped / n, se = sqrt(rates[k] * (1 - rates[k]) / n);
        printf("  rate %.2f: dropped %.4f (se %.4f)\n", rates[k], f, se);
        CHECK(fabs(f - rates[k]) <= 5 * se, "rate %.2f: dropped %.4f", rates[k], f);
    }
    int none = 0, all = 0, same = 0, other_seed = 0, other_step = 0;
    for (int i = 0; i < 10000; i++) {
        none += data_label_dropped(1, 5, i, 0.0);
        all += data_label_dropped(1, 5, i, 1.0);
        same += data_label_dropped(1, 5, i, 0.5) == data_label_dropped(1, 5, i, 0.5);
        other_seed += data_label_dropped(1, 5, i, 0.5) != data_label_dropped(2, 5, i, 0.5);
        other_step += data_label_dropped(1, 5, i, 0.5) != data_label_dropped(1, 6, i, 0.5);
    }
    CHECK(none == 0 && all == 10000 && same == 10000, "none %d all %d same %d", none, all, same);
    CHECK(other_seed > 4000 && other_step > 4000, "other seed %d, other step %d of 10000 differ", other_seed, other_step);
}

// ---- labels of the data ---------------------------------------------------------------------------
// (N, T, D) = (6, 4, 2) in two files (4 + 2 sequences), seq_len 2: two windows per sequence.
static void write_data(const char *dir) {
    float a[4 * 4 * 2], b[2 * 4 * 2];
    for (int i = 0; i < 32; i++) a[i] = (float)(i / 8);  // sequence index as the value
    for (int i = 0; i < 16; i++) b[i] = (float)(4 + i / 8);
    int64_t sa[3] = {4, 4, 2}, sb[3] = {2, 4, 2};
    if (npy_write_f32(tu_path(dir, "a.npy"), a, 3, sa) || npy_write_f32(tu_path(dir, "b.npy"), b, 3, sb))
        givt_die("%s", givt_last_error());
}

static int open_labeled(Dataset *ds, const char *dir, const char *labels, int classes) {
    char path[1200];
    snprintf(path, sizeof path, "%s,%s", tu_path(dir, "a.npy"), tu_path(dir, "b.npy"));
    DataConfig dc;
    data_config_default(&dc);
    dc.kind = DATA_NPY, dc.path = path, dc.seq_len = 2, dc.input_dim = 2, dc.val_size = 3, dc.seed = 4;
    dc.labels_path = labels, dc.num_classes = classes;
    return data_open(ds, &dc);
}

TEST(data_labels_follow_their_windows_and_bad_files_are_errors) {
    char dir[256];
    tu_mkdtemp(dir, "labels");
    write_data(dir);
    int32_t lab32[6] = {3, 1, 4, 1, 5, 2};
    int64_t lab64[6] = {3, 1, 4, 1, 5, 2}, n6 = 6, n5 = 5, s23[2] = {2, 3};
    const char *p32 = tu_path(dir, "l32.npy");
    CHECK(npy_write(p32, "<i4", 4, lab32, 1, &n6) == 0 && npy_write(tu_path(dir, "l64.npy"), "<i8", 8, lab64, 1, &n6) == 0);
    for (int v = 0; v < 2; v++) {
        Dataset ds;
        CHECK(open_labeled(&ds, dir, tu_path(dir, v ? "l64.npy" : "l32.npy"), 6) == 0, "%s", givt_last_error());
        float buf[4 * 2 * 2];
        int32_t got[4];
        int bad = 0;
        for (int step = 0; step < 5; step++) {  // training batches: each window's label is its sequence's
            CHECK(data_next_batch_labels(&ds, 4, buf, got) == 0, "%s", givt_last_error());
            for (int b = 0; b < 4; b++) bad += got[b] != lab32[(int)buf[b * 4]];
        }
        int cnt = data_val_batch_labels(&ds, 0, 4, buf, got);
        CHECK(cnt == 3, "%d validation windows", cnt);
        for (int b = 0; b < cnt; b++) bad += got[b] != lab32[(int)buf[b * 4]];
        CHECK(bad == 0, "%d windows with the label of another sequence", bad);
        data_close(&ds);
    }
    // bad label files: each a clear error naming the file
    int32_t out_of_range[6] = {0, 1, 2, 3, 4, 6};
    float floats[6] = {0};
    CHECK(npy_write(tu_path(dir, "short.npy"), "<i4", 4, lab32, 1, &n5) == 0 &&
          npy_write(tu_path(dir, "range.npy"), "<i4", 4, out_of_range, 1, &n6) == 0 &&
          npy_write(tu_path(dir, "float.npy"), "<f4", 4, floats, 1, &n6) == 0 &&
          npy_write(tu_path(dir, "rank2.npy"), "<i4", 4, lab32, 2, s23) == 0);
    const struct {
        const char *file, *want1, *want2;
    } cases[] = {
        {"short.npy", "5 labels, but the data hold 6 sequences", NULL},
        {"range.npy", "label 6 at index 5", "[0, num_classes = 6)"},
        {"float.npy", "dtype '<f4' not supported for labels", "int32 '<i4' or int64 '<i8'"},
        {"rank2.npy", "labels have rank 2", "shape (N,)"},
        {"missing.npy", "missing.npy: cannot open", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Dataset ds;
        CHECK(open_labeled(&ds, dir, tu_path(dir, cases[i].file), 6) == -1 &&
              tu_error_has(cases[i].want1, cases[i].want2) && tu_error_has(cases[i].file, NULL),
              "%s: %s", cases[i].file, givt_last_error());
    }
    tu_rmtree(dir);
}

// The configuration: num_classes without labels, labels without num_classes, a missing labels file.
TEST(config_class_keys_are_checked_together) {
    TrainConfig *c = malloc(sizeof *c);
    const char *ini = "[model]\nnum_classes = 10\n[data]\nkind = dummy\n";
    CHECK(train_config_load_string(c, ini, "x.ini", 0, NULL) == -1 &&
          tu_error_has("num_classes = 10 needs [data] labels", "x.ini:2"), "%s", givt_last_error());
    char *ov[] = {"data.labels=/nonexistent/l.npy"};
    CHECK(train_config_load_string(c, "[data]\nkind = dummy\n", "y.ini", 1, ov) == -1 &&
          tu_error_has("[data] labels = \"/nonexistent/l.npy\" but [model] num_classes = 0", "unconditional"),
          "%s", givt_last_error());
    char *ov2[] = {"model.num_classes=3", "data.labels=/nonexistent/l.npy", "data.path=/dev/null"};
    CHECK(train_config_load_string(c, "[data]\nkind = npy\n", "z.ini", 3, ov2) == -1 &&
          tu_error_has("/nonexistent/l.npy\": no such file", NULL), "%s", givt_last_error());
    char *ov3[] = {"train.label_drop=1.5"};
    CHECK(train_config_load_string(c, "[data]\nkind = dummy\n", "w.ini", 1, ov3) == -1 &&
          tu_error_has("label_drop", NULL), "%s", givt_last_error());
    free(c);
}

// ---- class-conditional training ---------------------------------------------------------------------
// A k = 2, 6-class run with label dropout and gradient accumulation: 6 steps, exit, resume, 6 more
// ends with the same bytes as 12 straight steps (the dropped labels come from (seed, step, slot)).
TEST(trainer_class_conditional_resume_is_bit_exact) {
    char dir[256], a[300], b[300], ini[2048];
    tu_mkdtemp(dir, "condtrain");
    write_data(dir);
    int32_t lab[6] = {3, 1, 4, 1, 5, 2};
    int64_t n6 = 6;
    CHECK(npy_write(tu_path(dir, "l.npy"), "<i4", 4, lab, 1, &n6) == 0);
    snprintf(ini, sizeof ini,
             "[model]\ninput_dim = 2\nhidden_dim = 8\nintermediate_dim = 12\nnum_heads = 2\nnum_layers = 1\n"
             "block_size = 4\nnum_mixtures = 2\nnum_classes = 6\n"
             "[train]\nbatch_size = 3\nlr = 3e-3\nwarmup_steps = 2\nmax_steps = 12\ngrad_accum_steps = 2\n"
             "label_drop = 0.4\nlog_every = 1\nval_every = 4\nval_size = 2\nsave_every = 6\nseed = 3\n"
             "[data]\npath = %s,%s\nlabels = %s\nseq_len = 2\n",
             tu_path(dir, "a.npy"), tu_path(dir, "b.npy"), tu_path(dir, "l.npy"));
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    const char *runs[][2] = {{a, NULL}, {b, "train.max_steps=6"}, {b, "train.resume_from_ckpt=latest"}};
    for (int r = 0; r < 3; r++) {
        TrainConfig *c = malloc(sizeof *c);
        char out[400], *ov[2] = {out, (char *)runs[r][1]};
        snprintf(out, sizeof out, "train.out_dir=%s", runs[r][0]);
        int rc = train_config_load_string(c, ini, "cond.ini", runs[r][1] ? 2 : 1, ov);
        CHECK(rc == 0, "%s", givt_last_error());
        if (rc == 0) CHECK(trainer_run(c) == 0, "run %d: %s", r, givt_last_error());
        free(c);
    }
    char pa[400], pb[400];
    snprintf(pa, sizeof pa, "%s/step_00000012/model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/step_00000012/model.safetensors", b);
    CHECK(tu_same_file(pa, pb), "the resumed class-conditional run differs from the straight one");
    snprintf(pa, sizeof pa, "%s/step_00000012/config.json", a);
    char *text = fs_read_text(pa, NULL);
    CHECK(text && strstr(text, "\"num_classes\": 6") && strstr(text, "\"num_mixtures\": 2"), "%s", text ? text : "");
    free(text);
    tu_rmtree(dir);
}

// ---- the CUDA backend (emulated in make test; the GPU in make test-gpu) -----------------------------
// A k = 3, 4-class model: loss and every gradient through the CUDA backend against the CPU backend
// (float32 compute: 1e-5 on the loss, 1e-4 norm-wise on each gradient; bf16: 2e-2 on the loss), and
// guided generation at temperature 0 and at temperature 1 with guidance, float32: the same
// sequences within 1e-4 (the same random numbers; only the float rounding differs).
static void cond_loss_grads(Backend *be, double *loss, float *g, size_t *total) {
    GivtModel m;
    make_cond_model(&m, be, 3, 4, 77);
    int B = 3, T = 5, D = 3;
    int32_t labels[3] = {2, 4, 0};
    float x[3 * 5 * 3];
    Rng r;
    rng_seed(&r, 78);
    for (int i = 0; i < B * T * D; i++) x[i] = (float)rng_normal(&r);
    model_alloc_acts(&m, B, T, 1, 0);
    model_alloc_grads(&m);
    model_zero_grads(&m);
    float *xd = be->ops->alloc(be, sizeof x);
    be->ops->upload(be, xd, x, sizeof x);
    *loss = model_eval_loss_cond(&m, &m.w, xd, labels, B, T, 0).loss;
    model_loss(&m, m.scalars + SCALAR_LOSS_SUM, 1.0f);
    model_backward(&m, &m.w);
    *total = m.table.total;
    be->ops->download(be, g, m.grads, m.table.total * sizeof(float));
    be->ops->free(be, xd);
    model_free(&m);
}

TEST(mixture_and_classes_on_the_cuda_backend_match_the_cpu) {
    char why[256] = "";
    if (!backend_available("cuda", why, sizeof why)) {
        t_skip(why);
        return;
    }
    Backend *cpu = tu_open_cpu(), *f32 = backend_open("cuda", PRECISION_NO), *bf = backend_open("cuda", PRECISION_BF16);
    CHECK(f32 && bf, "%s", givt_last_error());
    if (!f32 || !bf) return;
    float g_cpu[20000], g_f32[20000], g_bf[20000];
    double l_cpu, l_f32, l_bf;
    size_t n;
    cond_loss_grads(cpu, &l_cpu, g_cpu, &n);
    CHECK(n <= 20000, "%zu parameters", n);
    cond_loss_grads(f32, &l_f32, g_f32, &n);
    cond_loss_grads(bf, &l_bf, g_bf, &n);
    GivtModel m;
    make_cond_model(&m, cpu, 3, 4, 77);
    double worst = 0;
    for (int i = 0; i < m.table.count; i++) {
        const ParamSpec *s = &m.table.specs[i];
        double dd = 0, rr = 0;
        for (size_t j = s->offset; j < s->offset + s->numel; j++)
            dd += (g_f32[j] - g_cpu[j]) * (double)(g_f32[j] - g_cpu[j]), rr += (double)g_cpu[j] * g_cpu[j];
        double e = rr > 0 ? sqrt(dd / rr) : sqrt(dd);
        CHECK(e <= 1e-4, "%s: gradient differs by %.3g", s->name, e);
        worst = fmax(worst, e);
    }
    model_free(&m);
    double e32 = fabs(l_f32 - l_cpu) / fabs(l_cpu), ebf = fabs(l_bf - l_cpu) / fabs(l_cpu);
    CHECK(e32 <= 1e-5 && ebf <= 2e-2, "loss cpu %.9g, cuda %.9g, cuda/bf16 %.9g", l_cpu, l_f32, l_bf);
    // guided generation on both backends
    int L = 5, N = 3, D = 3;
    int32_t label = 1;
    float out_cpu[2][3 * 5 * 3], out_cuda[2][3 * 5 * 3];
    const double temps[2] = {0.0, 1.0};
    for (int k = 0; k < 2; k++) {
        Backend *bes[2] = {cpu, f32};
        for (int b = 0; b < 2; b++) {
            GivtModel g;
            make_cond_model(&g, bes[b], 3, 4, 77);
            SampleConfig sc = {.max_len = L, .temperature = temps[k], .seed = 3, .batch_size = 2, .labels = &label,
                               .n_labels = 1, .cfg_scale = 2.0};
            CHECK(sample_generate(&g, &g.w, &sc, NULL, 1, 0, N, b ? out_cuda[k] : out_cpu[k], NULL, NULL) == 0, "%s",
                  givt_last_error());
            model_free(&g);
        }
    }
    double ws = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < N * L * D; i++) ws = fmax(ws, fabs(out_cuda[k][i] - out_cpu[k][i]));
    printf("  cuda (%s) vs cpu: loss fp32 %.2e bf16 %.2e, worst gradient %.2e, guided samples max diff %.2e\n",
           why[0] ? why : "GPU", e32, ebf, worst, ws);
    CHECK(ws <= 1e-4, "guided samples differ by %.3g", ws);
    backend_close(cpu), backend_close(f32), backend_close(bf);
}
