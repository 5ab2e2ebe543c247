// test_optim: learning-rate schedules against their formulas, AdamW against a hand-computed step,
// clipping, the EMA decay, and AdamW with the EMA in one pass against the two passes, bit for bit.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "harness.h"
#include "optim.h"
#include "util.h"

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
        be->ops->adamw(be, p, NULL, gs[t - 1], m, v, NULL, NULL, 2, (float)lr, (float)b1, (float)b2, (float)eps,
                       (float)wd, 0.5f, t, 0.0f, NULL);
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

// One weight set's bytes (master and compute copy) from the backend into a new host buffer
static unsigned char *weights_bytes(GivtModel *m, const Weights *w, size_t *bytes) {
    size_t n = m->table.total, f = n * sizeof(float), c = n * dtype_size(m->be->compute);
    unsigned char *h = malloc(f + c);
    m->be->ops->download(m->be, h, w->master, f);
    m->be->ops->download(m->be, h + f, w->compute, c);
    *bytes = f + c;
    return h;
}

// Two models from the same weights, EMA and gradients: one steps as givt-train did (adamw_step,
// then ema_update_weights), the other with the EMA in AdamW's pass (adamw_step_ema).
typedef struct {
    GivtModel m;
    AdamW opt;
    Weights ema;
} EmaRun;

static void ema_run_open(EmaRun *r, Backend *be, const GivtConfig *cfg, const OptimConfig *oc) {
    model_create(&r->m, cfg, be);
    model_alloc_grads(&r->m);
    Rng rng;
    rng_seed(&rng, 7);
    model_init_params(&r->m, &rng);
    model_weights_alloc(&r->m, &r->ema);
    model_weights_copy(&r->m, &r->ema, &r->m.w);
    adamw_create(&r->opt, &r->m, oc);
}

static void ema_run_close(EmaRun *r) {
    model_weights_free(&r->m, &r->ema);
    adamw_free(&r->opt, &r->m);
    model_free(&r->m);
}

// Steps both runs with the same gradients (seeded by the step) and counts the bytes that differ
static size_t ema_runs_step(EmaRun *two, EmaRun *one, int steps, double power) {
    size_t n = two->m.table.total, diff = 0;
    float *g = malloc(n * sizeof(float));
    Rng rng;
    rng_seed(&rng, 11);
    for (int s = 0; s < steps; s++) {
        for (size_t i = 0; i < n; i++) g[i] = (float)rng_normal(&rng);
        param_table_zero_padding(&two->m.table, g);  // as backward leaves it
        two->m.be->ops->upload(two->m.be, two->m.grads, g, n * sizeof(float));
        one->m.be->ops->upload(one->m.be, one->m.grads, g, n * sizeof(float));
        adamw_step(&two->opt, &two->m, two->m.grads, 1e-2, 3.0);
        cval *ec = (void *)two->ema.compute == (void *)two->ema.master ? NULL : two->ema.compute;
        ema_update_weights(two->m.be, two->ema.master, ec, two->m.w.master, n, (float)ema_decay(power, two->opt.t),
                           NULL);
        adamw_step_ema(&one->opt, &one->m, one->m.grads, 1e-2, 3.0, &one->ema, power);
    }
    const Weights *w2[2] = {&two->m.w, &two->ema}, *w1[2] = {&one->m.w, &one->ema};
    for (int k = 0; k < 2; k++) {
        size_t b2, b1;
        unsigned char *h2 = weights_bytes(&two->m, w2[k], &b2), *h1 = weights_bytes(&one->m, w1[k], &b1);
        for (size_t i = 0; i < b2; i++) diff += h2[i] != h1[i];
        free(h2), free(h1);
    }
    free(g);
    return diff;
}

// Elements of the padding between tensors (model.h: PARAM_ALIGN) that are not zero in w's master
static size_t padding_nonzero(GivtModel *m, const Weights *w) {
    float *h = malloc(m->table.total * sizeof(float));
    model_weights_download(m, w, h);
    size_t bad = 0;
    for (int i = 0; i < m->table.count; i++) {
        const ParamSpec *s = &m->table.specs[i];
        for (size_t j = s->numel; j < s->slot; j++) bad += h[s->offset + j] != 0.0f;
    }
    free(h);
    return bad;
}

// A case of the tests below: a small model and AdamW's settings, on backend be (name: its name)
typedef void (*OptimCase)(Backend *be, const char *name, const GivtConfig *cfg, const OptimConfig *oc);

// Runs body on every backend here (cpu, and cuda with its kernels emulated), in float32 and in bf16
// compute, with a 2-layer model of width 16 and AdamW with clipping at 1.
static void for_each_optim_backend(OptimCase body) {
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 3, cfg.hidden_dim = 16, cfg.intermediate_dim = 24, cfg.num_heads = 2, cfg.num_layers = 2;
    cfg.block_size = 8;
    OptimConfig oc = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1, .grad_norm = 1.0};
    const char *names[2] = {"cpu", "cuda"};
    for (int b = 0; b < 2; b++) {
        char why[256];
        if (!backend_available(names[b], why, sizeof why)) continue;
        for (int prec = 0; prec < 2; prec++) {
            Backend *be = backend_open(names[b], prec ? PRECISION_BF16 : PRECISION_NO);
            CHECK(be != NULL, "%s: %s", names[b], givt_last_error());
            if (!be) continue;
            body(be, names[b], &cfg, &oc);
            backend_close(be);
        }
    }
}

static void ema_in_adamw_case(Backend *be, const char *name, const GivtConfig *cfg, const OptimConfig *oc) {
    EmaRun two, one;
    ema_run_open(&two, be, cfg, oc);
    ema_run_open(&one, be, cfg, oc);
    size_t diff = ema_runs_step(&two, &one, 5, 2.0 / 3.0);
    CHECK(diff == 0, "%s/%s: %zu bytes differ", name, dtype_name(be->compute), diff);
    CHECK(one.opt.t == 5 && two.opt.t == 5);
    size_t pad = padding_nonzero(&one.m, &one.m.w) + padding_nonzero(&one.m, &one.ema);
    CHECK(pad == 0, "%s: %zu elements of the padding are not zero after AdamW and the EMA", name, pad);
    ema_run_close(&two), ema_run_close(&one);
}

// AdamW with the EMA in one pass gives the bits of AdamW then the EMA's pass (the weights, the EMA
// and both compute copies), on every backend here (the CUDA kernels emulated, in bf16 too); the
// padding between the tensors (which AdamW's runs cross) stays zero.
TEST(adamw_step_ema_is_adamw_then_ema_update) { for_each_optim_backend(ema_in_adamw_case); }

// The moments' bytes of a run (m then v) from the backend into a new host buffer
static unsigned char *moments_bytes(EmaRun *r, size_t *bytes) {
    size_t f = r->opt.count * sizeof(float);
    unsigned char *h = malloc(2 * f + 1);
    r->m.be->ops->download(r->m.be, h, r->opt.m, f);
    r->m.be->ops->download(r->m.be, h + f, r->opt.v, f);
    *bytes = 2 * f;
    return h;
}

static void record_case(Backend *be, const char *name, const GivtConfig *cfg, const OptimConfig *base) {
    EmaRun host, dev;
    OptimConfig oc = *base;  // a learning rate that changes every step: warmup, then the cosine decay
    oc.schedule = LR_SCHEDULE_COSINE, oc.warmup_steps = 2, oc.max_steps = 6, oc.min_lr_ratio = 0.1;
    ema_run_open(&host, be, cfg, &oc);
    ema_run_open(&dev, be, cfg, &oc);
    size_t n = host.m.table.total, diff = 0;
    float *g = malloc(n * sizeof(float));
    StepRecord *rec = be->ops->alloc(be, sizeof *rec), r;
    Rng rng;
    rng_seed(&rng, 11);
    int skipped = 0;
    for (int s = 0; s < 5; s++) {
        for (size_t i = 0; i < n; i++) g[i] = (float)rng_normal(&rng);
        param_table_zero_padding(&host.m.table, g);
        be->ops->upload(be, host.m.grads, g, n * sizeof(float));
        be->ops->upload(be, dev.m.grads, g, n * sizeof(float));
        double sc[2] = {s == 2 ? NAN : 100.0 + s, s == 4 ? 0.25 : 9.0 + s};  // clipped but at step 4
        double lr = host.opt.cfg.lr * lr_factor(&host.opt.cfg, s);  // the schedule's, step s (0-based)
        if (isfinite(sc[0])) adamw_step_ema(&host.opt, &host.m, host.m.grads, lr, sqrt(sc[1]), &host.ema, 0.5);
        be->ops->upload(be, dev.m.scalars + SCALAR_LOSS_SUM, sc, sizeof sc);
        if (s == 0) adamw_record_start(&dev.opt, be, rec, 0);
        adamw_check_step(&dev.opt, be, rec, dev.m.scalars + SCALAR_LOSS_SUM, 7.0, 0.5);
        adamw_update(&dev.opt, &dev.m, dev.m.grads, rec, &dev.ema);
        be->ops->download(be, &r, rec, sizeof r);
        adamw_note_step(&dev.opt, &r);
        skipped += r.skip;
        CHECK(r.skip == (s == 2) && (s == 2 || r.loss == sc[0] / 7.0) && r.norm == sqrt(sc[1]),
              "step %d: skip %d, loss %g, norm %g", s, (int)r.skip, r.loss, r.norm);
        CHECK(r.step == s + 1 && r.t == dev.opt.t && r.lr == (float)lr, "step %d: record step %lld, t %lld, lr %g",
              s, (long long)r.step, (long long)r.t, (double)r.lr);
    }
    const Weights *wh[2] = {&host.m.w, &host.ema}, *wd[2] = {&dev.m.w, &dev.ema};
    for (int k = 0; k < 3; k++) {
        size_t bh, bd;
        unsigned char *hh = k < 2 ? weights_bytes(&host.m, wh[k], &bh) : moments_bytes(&host, &bh);
        unsigned char *hd = k < 2 ? weights_bytes(&dev.m, wd[k], &bd) : moments_bytes(&dev, &bd);
        for (size_t i = 0; i < bh; i++) diff += hh[i] != hd[i];
        free(hh), free(hd);
    }
    CHECK(diff == 0, "%s/%s: %zu bytes differ", name, dtype_name(be->compute), diff);
    CHECK(skipped == 1 && host.opt.t == 4 && dev.opt.t == 4, "t %ld and %ld, %d skipped", host.opt.t,
          dev.opt.t, skipped);
    free(g);
    be->ops->free(be, rec);
    ema_run_close(&host), ema_run_close(&dev);
}

// givt-train's step (issue 21): the clipping and the skip decided on the backend (adamw_check_step)
// and applied by the update kernels (adamw_update), the update counted when the record is read
// (adamw_note_step), gives the bits of the host's step (adamw_step_ema with the norm, nothing on a
// non-finite step), on every backend here, with the EMA in the pass, a clipped norm and a step whose
// loss is not finite (skipped: nothing changes, t included).
TEST(adamw_update_from_a_step_record_is_the_hosts_step) { for_each_optim_backend(record_case); }

TEST(ema_decay_follows_ema_pytorch_warmup) {
    CHECK(ema_decay(2.0 / 3.0, 1) == 0.0);
    CHECK(ema_decay(2.0 / 3.0, 2) == 0.0);
    CHECK_CLOSE(ema_decay(2.0 / 3.0, 3), 1.0 - pow(2.0, -2.0 / 3.0), 1e-15);
    CHECK_CLOSE(ema_decay(1.0, 11), 0.9, 1e-15);
    CHECK_CLOSE(ema_decay(2.0 / 3.0, 100000000), 0.9999, 1e-15);
}
