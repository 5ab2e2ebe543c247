// test_sample: generation with a KV cache: model_decode equals model_forward; cached generation at
// temperature 0 equals a full recompute of every prefix (the means); sample statistics match the
// predicted Normal(mu, (t * std)^2); the same seed gives the same samples at any batch size (the same
// draws; the means to within float rounding).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model.h"
#include "rng.h"
#include "sample.h"
#include "testutil.h"

// A small model with random weights everywhere (zero-initialised tensors included, so that the
// output depends on every layer) on the CPU backend.
static void make_model(GivtModel *m, Backend *be, int block_size, uint64_t seed) {
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 3, cfg.hidden_dim = 16, cfg.intermediate_dim = 20, cfg.num_heads = 2, cfg.num_layers = 2;
    cfg.block_size = block_size, cfg.rope_rotary_percentage = 0.5, cfg.rope_condense_ratio = 2;
    tu_random_model(m, &cfg, be, seed);
}

// The means at every position of x (B, T, D) by the full forward, host (B, T, D).
static void full_means(GivtModel *m, const float *x, int B, int T, float *mu) {
    Backend *be = m->be;
    int D = m->cfg.input_dim;
    size_t n = (size_t)B * T * D;
    float *xd = be->ops->alloc(be, n * sizeof(float)), *sd = xmalloc(n * sizeof(float));
    be->ops->upload(be, xd, x, n * sizeof(float));
    model_forward(m, &m->w, xd, B, T);
    model_get_mu_std(m, mu, sd);
    be->ops->free(be, xd);
    free(sd);
}

static double max_rel(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(scale, 1e-6);
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

TEST(sample_decode_in_pieces_equals_the_full_forward) {
    Backend *be = tu_open_cpu();
    GivtModel full, inc;
    make_model(&full, be, 16, 11);
    make_model(&inc, be, 16, 11);
    int B = 3, T = 13, D = 3;
    size_t n = (size_t)B * T * D;
    Rng r;
    rng_seed(&r, 4);
    float *x = xmalloc(n * sizeof(float)), *want = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)rng_normal(&r);
    model_alloc_acts(&full, B, T, 0, 0);
    full_means(&full, x, B, T, want);
    // the same sequence through the cache: positions [0, 5), then [5, 6), ..., then [9, 13)
    KvCache kc;
    model_cache_alloc(&inc, &kc, B, T, 5);
    const int cuts[] = {0, 5, 6, 7, 8, 9, 13};
    float *got = xcalloc(n, sizeof(float)), *xd = be->ops->alloc(be, n * sizeof(float));
    float *piece = xmalloc(n * sizeof(float)), *y = xmalloc((size_t)B * 5 * 2 * D * sizeof(float));
    for (int c = 0; c + 1 < (int)(sizeof cuts / sizeof cuts[0]); c++) {
        int p0 = cuts[c], Tq = cuts[c + 1] - p0;
        // x rows the positions read: at p0 = 0 model_forward's layout; after, the vectors at p0-1 ..
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Tq; t++)
                memcpy(piece + ((size_t)b * Tq + t) * D, x + ((size_t)b * T + (p0 ? p0 - 1 + t : t)) * D,
                       D * sizeof(float));
        be->ops->upload(be, xd, piece, (size_t)B * Tq * D * sizeof(float));
        const cval *yd = model_decode(&inc, &inc.w, &kc, xd, B, Tq, p0);
        be->ops->download(be, y, yd, (size_t)B * Tq * 2 * D * sizeof(float));
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Tq; t++)
                memcpy(got + ((size_t)b * T + p0 + t) * D, y + ((size_t)b * Tq + t) * 2 * D, D * sizeof(float));
    }
    double err = max_rel(got, want, n);
    printf("  KV-cache decode vs full forward: max rel error %.2e (tol 1e-5)\n", err);
    CHECK(err <= 1e-5, "%.3g", err);
    model_cache_free(&inc, &kc);
    be->ops->free(be, xd);
    free(x), free(want), free(got), free(piece), free(y);
    model_free(&full);
    model_free(&inc);
    backend_close(be);
}

// Temperature 0 returns the means: each generated vector is the mean the full model predicts from
// the sequence before it (a full recompute of every prefix).
TEST(sample_temperature_zero_is_the_mean_of_every_prefix) {
    Backend *be = tu_open_cpu();
    GivtModel gen, full;
    make_model(&gen, be, 12, 21);
    make_model(&full, be, 12, 21);
    int L = 10, s = 3, n = 4, D = 3;
    Rng r;
    rng_seed(&r, 8);
    float *out = xmalloc((size_t)n * L * D * sizeof(float));
    SampleConfig sc = {.max_len = L, .temperature = 0, .seed = 1, .batch_size = 3};
    float *p4 = xmalloc((size_t)n * s * D * sizeof(float));
    for (int i = 0; i < n * s * D; i++) p4[i] = (float)rng_normal(&r);
    CHECK(sample_generate(&gen, &gen.w, &sc, p4, n, s, n, out, NULL, NULL) == 0, "%s", givt_last_error());
    for (int i = 0; i < n; i++) CHECK(memcmp(out + (size_t)i * L * D, p4 + (size_t)i * s * D, s * D * 4) == 0);
    model_alloc_acts(&full, n, L, 0, 0);
    float *mu = xmalloc((size_t)n * L * D * sizeof(float));
    full_means(&full, out, n, L, mu);  // position t's mean given out[0..t-1]
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int t = s; t < L; t++) {
            double e = max_rel(out + ((size_t)i * L + t) * D, mu + ((size_t)i * L + t) * D, D);
            if (!(e <= worst)) worst = e;
        }
    printf("  temperature 0 vs full recompute of each prefix: max rel error %.2e (tol 1e-5)\n", worst);
    CHECK(worst <= 1e-5, "%.3g", worst);
    free(out), free(p4), free(mu);
    model_free(&gen);
    model_free(&full);
    backend_close(be);
}

// Many samples of the first generated vector after a fixed prompt: their mean and variance per
// dim match mu and (t * std)^2 (5 standard errors).
TEST(sample_statistics_match_the_predicted_gaussian) {
    Backend *be = tu_open_cpu();
    GivtModel gen, full;
    make_model(&gen, be, 8, 31);
    make_model(&full, be, 8, 31);
    int L = 3, s = 2, n = 4000, D = 3;
    float prompt[2 * 3] = {0.5f, -1.0f, 0.25f, 1.5f, 0.0f, -0.5f};
    double t = 0.7;
    float *out = xmalloc((size_t)n * L * D * sizeof(float));
    SampleConfig sc = {.max_len = L, .temperature = t, .seed = 5, .batch_size = 500};
    CHECK(sample_generate(&gen, &gen.w, &sc, prompt, 1, s, n, out, NULL, NULL) == 0, "%s", givt_last_error());
    // the prediction at position 2 from the prompt
    model_alloc_acts(&full, 1, L, 0, 0);
    float x[3 * 3], mu[9], sd[9];
    memcpy(x, prompt, sizeof prompt);
    memset(x + 6, 0, 3 * sizeof(float));
    Backend *b = full.be;
    float *xd = b->ops->alloc(b, sizeof x);
    b->ops->upload(b, xd, x, sizeof x);
    model_forward(&full, &full.w, xd, 1, L);
    model_get_mu_std(&full, mu, sd);
    for (int d = 0; d < D; d++) {
        double m1 = 0, m2 = 0;
        for (int i = 0; i < n; i++) m1 += out[((size_t)i * L + 2) * D + d];
        m1 /= n;
        for (int i = 0; i < n; i++) {
            double e = out[((size_t)i * L + 2) * D + d] - m1;
            m2 += e * e;
        }
        m2 /= (n - 1);
        double sigma = t * sd[2 * D + d], var = sigma * sigma;
        double se_mean = sigma / sqrt(n), se_var = var * sqrt(2.0 / (n - 1));
        printf("  dim %d: mean %.4f (mu %.4f, se %.4f), var %.4f ((t std)^2 %.4f, se %.4f)\n", d, m1, mu[2 * D + d],
               se_mean, m2, var, se_var);
        CHECK(fabs(m1 - mu[2 * D + d]) <= 5 * se_mean, "dim %d mean", d);
        CHECK(fabs(m2 - var) <= 5 * se_var, "dim %d variance", d);
    }
    b->ops->free(b, xd);
    free(out);
    model_free(&gen);
    model_free(&full);
    backend_close(be);
}

TEST(sample_same_seed_same_samples_at_any_batch_size) {
    Backend *be = tu_open_cpu();
    int L = 7, n = 8, D = 3;
    float *ref = NULL;
    const int sizes[] = {1, 3, 8};
    for (int k = 0; k < 3; k++) {
        GivtModel m;
        make_model(&m, be, 8, 41);
        float *out = xmalloc((size_t)n * L * D * sizeof(float));
        SampleConfig sc = {.max_len = L, .temperature = 1.0, .seed = 99, .batch_size = sizes[k]};
        CHECK(sample_generate(&m, &m.w, &sc, NULL, 1, 0, n, out, NULL, NULL) == 0, "%s", givt_last_error());
        if (!ref) ref = out;
        else {
            // the same random draws; the means may differ in the last bits, because the BLAS rounds a
            // product of 8 rows differently from one of 1 (its kernels depend on the shape)
            double err = max_rel(out, ref, (size_t)n * L * D);
            printf("  batch size %d vs 1: max rel difference %.2e (tol 1e-5)%s\n", sizes[k], err,
                   memcmp(ref, out, (size_t)n * L * D * sizeof(float)) ? "" : ", bit-identical");
            CHECK(err <= 1e-5, "batch size %d differs from 1 by %.3g", sizes[k], err);
            free(out);
        }
        model_free(&m);
    }
    // another seed gives other samples
    GivtModel m;
    make_model(&m, be, 8, 41);
    float *other = xmalloc((size_t)n * L * D * sizeof(float));
    SampleConfig sc = {.max_len = L, .temperature = 1.0, .seed = 100, .batch_size = 8};
    CHECK(sample_generate(&m, &m.w, &sc, NULL, 1, 0, n, other, NULL, NULL) == 0);
    CHECK(memcmp(ref, other, (size_t)n * L * D * sizeof(float)) != 0);
    free(ref), free(other);
    model_free(&m);
    backend_close(be);
}

TEST(sample_refuses_bad_arguments) {
    Backend *be = tu_open_cpu();
    GivtModel m;
    make_model(&m, be, 8, 1);
    float out[64 * 3], prompt[3] = {0, 0, 0};
    SampleConfig sc = {.max_len = 9, .temperature = 1.0, .batch_size = 4};
    CHECK(sample_generate(&m, &m.w, &sc, NULL, 1, 0, 2, out, NULL, NULL) == -1 && tu_error_has("max_len = 9", NULL));
    sc.max_len = 4;
    CHECK(sample_generate(&m, &m.w, &sc, prompt, 1, 4, 2, out, NULL, NULL) == -1 &&
          tu_error_has("leaves nothing to generate", NULL));
    CHECK(sample_generate(&m, &m.w, &sc, NULL, 1, 0, 0, out, NULL, NULL) == -1 && tu_error_has("0 samples", NULL));
    sc.temperature = -1;
    CHECK(sample_generate(&m, &m.w, &sc, NULL, 1, 0, 2, out, NULL, NULL) == -1 && tu_error_has("temperature", NULL));
    sc.temperature = 1;
    CHECK(sample_generate(&m, &m.w, &sc, prompt, 3, 1, 2, out, NULL, NULL) == -1 && tu_error_has("3 prompts", NULL));
    model_free(&m);
    backend_close(be);
}
