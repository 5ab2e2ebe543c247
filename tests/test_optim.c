// test_optim: learning-rate schedules against their formulas, AdamW against a hand-computed step,
// clipping, and the EMA decay.
#include <math.h>
#include <string.h>

#include "harness.h"
#include "optim.h"

TEST(lr_inverse_sqrt_matches_hf_formula) {
    OptimConfig oc = {.schedule = LR_SCHEDULE_INVERSE_SQRT, .warmup_steps = 1000, .timescale = 1e8};
    CHECK_CLOSE(lr_factor(&oc, 0), 0.0, 1e-15);  // the first update runs at lr 0, as LambdaLR does
    CHECK_CLOSE(lr_factor(&oc, 1), 1e-3, 1e-15);
    CHECK_CLOSE(lr_factor(&oc, 999), 0.999, 1e-15);
    CHECK_CLOSE(lr_factor(&oc, 1000), 1.0, 1e-15);
    for (long s = 1000; s < 5000000; s = s * 3 + 7) {
        double want = 1.0 / sqrt((s + 1e8 - 1000) / 1e8);
        CHECK_CLOSE(lr_factor(&oc, s), want, 1e-14);
    }
    oc.timescale = 100;  // a short timescale makes the decay visible
    CHECK_CLOSE(lr_factor(&oc, 1300), 1.0 / sqrt(4.0), 1e-14);
}

TEST(lr_cosine_and_constant) {
    OptimConfig oc = {.schedule = LR_SCHEDULE_COSINE, .warmup_steps = 10, .max_steps = 110, .min_lr_ratio = 0.1};
    CHECK_CLOSE(lr_factor(&oc, 5), 0.5, 1e-15);
    CHECK_CLOSE(lr_factor(&oc, 10), 1.0, 1e-15);
    CHECK_CLOSE(lr_factor(&oc, 60), 0.1 + 0.9 * 0.5, 1e-14);
    CHECK_CLOSE(lr_factor(&oc, 110), 0.1, 1e-14);
    CHECK_CLOSE(lr_factor(&oc, 500), 0.1, 1e-14);
    oc.schedule = LR_SCHEDULE_CONSTANT;
    CHECK_CLOSE(lr_factor(&oc, 3), 0.3, 1e-15);
    CHECK_CLOSE(lr_factor(&oc, 12345), 1.0, 1e-15);
    oc.warmup_steps = 0;
    CHECK_CLOSE(lr_factor(&oc, 0), 1.0, 1e-15);
}

TEST(adamw_two_steps_by_hand) {
    Backend *be = backend_open("cpu", PRECISION_NO);
    float p[2] = {1.0f, -2.0f}, m[2] = {0}, v[2] = {0};
    const float g1[2] = {0.5f, -0.25f}, g2[2] = {-1.0f, 0.75f};
    double lr = 0.01, b1 = 0.9, b2 = 0.99, eps = 1e-8, wd = 0.1;
    double P[2] = {1.0, -2.0}, M[2] = {0}, V[2] = {0};
    const float *gs[2] = {g1, g2};
    for (int t = 1; t <= 2; t++) {
        be->ops->adamw(be, p, NULL, gs[t - 1], m, v, 2, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, 0.5f, t);
        for (int i = 0; i < 2; i++) {  // PyTorch AdamW, in double
            double g = 0.5 * gs[t - 1][i];
            P[i] *= 1 - lr * wd;
            M[i] = b1 * M[i] + (1 - b1) * g;
            V[i] = b2 * V[i] + (1 - b2) * g * g;
            double denom = sqrt(V[i]) / sqrt(1 - pow(b2, t)) + eps;
            P[i] -= lr / (1 - pow(b1, t)) * M[i] / denom;
        }
    }
    for (int i = 0; i < 2; i++) CHECK_CLOSE(p[i], P[i], 1e-6);
    backend_close(be);
}

TEST(clipping_scales_to_the_max_norm) {
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 2, cfg.hidden_dim = 4, cfg.intermediate_dim = 4, cfg.num_heads = 1, cfg.num_layers = 1;
    cfg.block_size = 4;
    GivtModel m;
    Backend *be = backend_open("cpu", PRECISION_NO);
    CHECK(model_create(&m, &cfg, be) == 0);
    model_alloc_grads(&m);
    for (size_t i = 0; i < m.table.total; i++) m.grads[i] = (i % 2 ? 3.0f : -4.0f);
    double norm = grad_global_norm(&m), want = 0;
    for (size_t i = 0; i < m.table.total; i++) want += (double)m.grads[i] * m.grads[i];
    CHECK_CLOSE(norm, sqrt(want), 1e-12);
    // with lr 0 and no decay nothing moves, but the first moment shows the clipped gradient
    OptimConfig oc = {.lr = 0, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .grad_norm = 1.0};
    AdamW opt;
    adamw_create(&opt, &m, &oc);
    adamw_step(&opt, &m, m.grads, 0.0, norm);
    double coef = 1.0 / (norm + 1e-6);
    CHECK_CLOSE(opt.m[0], 0.1 * -4.0 * coef, 1e-6);
    CHECK_CLOSE(opt.m[1], 0.1 * 3.0 * coef, 1e-6);
    CHECK(opt.t == 1);
    adamw_free(&opt, &m);
    model_free(&m);
    backend_close(be);
}

TEST(ema_decay_follows_ema_pytorch_warmup) {
    CHECK(ema_decay(2.0 / 3.0, 1) == 0.0);
    CHECK(ema_decay(2.0 / 3.0, 2) == 0.0);
    CHECK_CLOSE(ema_decay(2.0 / 3.0, 3), 1.0 - pow(2.0, -2.0 / 3.0), 1e-15);
    CHECK_CLOSE(ema_decay(1.0, 11), 0.9, 1e-15);
    CHECK_CLOSE(ema_decay(2.0 / 3.0, 100000000), 0.9999, 1e-15);
}
