// optim: AdamW, schedules, clipping, EMA decay, and the optimizer's backend ops through the op profile.
#include "optim.h"

#include <math.h>
#include <string.h>

double lr_factor(const OptimConfig *oc, long step) {
    if (step < oc->warmup_steps) return (double)step / (double)(oc->warmup_steps > 1 ? oc->warmup_steps : 1);
    switch (oc->schedule) {
    case LR_SCHEDULE_INVERSE_SQRT: {
        double shift = oc->timescale - (double)oc->warmup_steps;
        return 1.0 / sqrt(((double)step + shift) / oc->timescale);
    }
    case LR_SCHEDULE_COSINE: {
        long span = oc->max_steps - oc->warmup_steps;
        double progress = span > 0 ? (double)(step - oc->warmup_steps) / (double)span : 1.0;
        if (progress > 1.0) progress = 1.0;
        return oc->min_lr_ratio + (1.0 - oc->min_lr_ratio) * 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    }
    case LR_SCHEDULE_CONSTANT: return 1.0;
    }
    return 1.0;
}

void adamw_create_part(AdamW *opt, const GivtModel *model, const OptimConfig *cfg, size_t first, size_t count) {
    memset(opt, 0, sizeof *opt);
    opt->cfg = *cfg;
    opt->first = first;
    opt->count = count;
    size_t bytes = count * sizeof(float);  // allocated zeroed
    opt->m = model->be->ops->alloc(model->be, bytes);
    opt->v = model->be->ops->alloc(model->be, bytes);
}

void adamw_create(AdamW *opt, const GivtModel *model, const OptimConfig *cfg) {
    adamw_create_part(opt, model, cfg, 0, model->table.total);
}

void adamw_free(AdamW *opt, const GivtModel *model) {
    if (opt->m) model->be->ops->free(model->be, opt->m);
    if (opt->v) model->be->ops->free(model->be, opt->v);
    memset(opt, 0, sizeof *opt);
}

// ---- the optimizer's ops, through the op profile (ops.h's BACKEND_OPC) ----------------------------
// Bytes moved by each: sumsq reads n floats; ema_update reads ema and p and writes ema (and the
// compute copy); adamw reads p, g, m, v and writes p, m, v (and the compute copy). All memory bound:
// flops 0, the profile shows their GB/s.
static OpCost sumsq_cost(size_t n) { return (OpCost){0, (double)n * sizeof(float)}; }
static OpCost update_cost(size_t n, int f32_passes, const cval *compute, size_t esize) {
    return (OpCost){0, (double)n * ((double)f32_passes * sizeof(float) + (compute ? (double)esize : 0.0))};
}

void grad_sumsq_buffer(Backend *be, double *acc, const float *p, size_t n) {
    BACKEND_OPC(be, sumsq_cost(n), sumsq, acc, p, n);
}

void ema_update_weights(Backend *be, float *ema, cval *ema_compute, const float *p, size_t n, float decay) {
    BACKEND_OPC(be, update_cost(n, 3, ema_compute, dtype_size(be->compute)), ema_update, ema, ema_compute, p, n,
                decay);
}

void grad_sumsq(const GivtModel *model, double *acc) {
    grad_sumsq_buffer(model->be, acc, model->grads, model->table.total);
}

double grad_global_norm(GivtModel *model) {
    Backend *be = model->be;
    double *acc = model->scalars + SCALAR_GRAD_SUMSQ, ss = 0.0;
    be->ops->zero(be, acc, sizeof(double));
    grad_sumsq(model, acc);
    be->ops->download(be, &ss, acc, sizeof(double));
    return sqrt(ss);
}

void adamw_step(AdamW *opt, GivtModel *model, const float *grads, double lr, double norm) {
    const OptimConfig *c = &opt->cfg;
    double scale = 1.0;
    if (c->grad_norm > 0) {
        double coef = c->grad_norm / (norm + 1e-6);
        if (coef < 1.0) scale = coef;
    }
    opt->t++;
    Backend *be = model->be;
    Weights *w = &model->w;
    int separate = (void *)w->compute != (void *)w->master;  // a compute copy to refresh
    size_t esize = dtype_size(be->compute);
    size_t lo = opt->first, hi = opt->first + opt->count;
    // One sweep per run of neighbouring tensors with the same weight decay (the tensors lie end to
    // end in the flat buffers): a handful of calls for the whole model instead of one per tensor.
    for (int i = 0; i < model->table.count;) {
        const ParamSpec *s = &model->table.specs[i];
        size_t end = s->offset + s->numel;
        int j = i + 1;
        for (; j < model->table.count; j++) {
            const ParamSpec *n = &model->table.specs[j];
            if (n->offset != end || !n->weight_decay != !s->weight_decay) break;
            end = n->offset + n->numel;
        }
        i = j;
        size_t a = s->offset > lo ? s->offset : lo, b = end < hi ? end : hi;  // the run's overlap with the part
        if (a >= b) continue;
        cval *pc = separate ? (cval *)((char *)w->compute + a * esize) : NULL;
        BACKEND_OPC(be, update_cost(b - a, 7, pc, esize), adamw, w->master + a, pc, grads + (a - lo), opt->m + (a - lo),
                    opt->v + (a - lo), b - a, (float)lr, (float)c->beta1, (float)c->beta2, (float)c->eps,
                    s->weight_decay ? (float)c->weight_decay : 0.0f, (float)scale, (int)opt->t);
    }
}

double ema_decay(double power, long updates) {
    if (updates <= 2) return 0.0;
    double d = 1.0 - pow((double)(updates - 1), -power);
    return d < 0.9999 ? d : 0.9999;
}
