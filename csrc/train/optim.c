// optim: AdamW, schedules, clipping, EMA decay, and the optimizer's backend ops through the op profile.
#include "optim.h"

#include <math.h>
#include <string.h>

#include "util.h"

_Static_assert((int)LR_SCHEDULE_INVERSE_SQRT == (int)GIVT_LR_INVERSE_SQRT && (int)LR_SCHEDULE_COSINE == (int)GIVT_LR_COSINE &&
                   (int)LR_SCHEDULE_CONSTANT == (int)GIVT_LR_CONSTANT,
               "optim.h's LrSchedule is ops.h's GIVT_LR_*");

StepSchedule adamw_schedule(const OptimConfig *oc, double ema_power) {
    StepSchedule s = {
        .lr = oc->lr,
        .beta1 = (float)oc->beta1,  // adamw receives them as floats
        .beta2 = (float)oc->beta2,
        .schedule = (int)oc->schedule,
        .warmup_steps = oc->warmup_steps,
        .timescale = oc->timescale,
        .max_steps = oc->max_steps,
        .min_lr_ratio = oc->min_lr_ratio,
        .max_norm = oc->grad_norm,
        .ema_power = ema_power,
    };
    return s;
}

double lr_factor(const OptimConfig *oc, long step) {
    StepSchedule s = adamw_schedule(oc, 0.0);
    return givt_lr_factor(&s, step);
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
// compute copy); adamw reads p, g, m, v and writes p, m, v (and the compute copy), and with the
// EMA also reads and writes ema (and writes its compute copy). All memory bound: flops 0, the
// profile shows their GB/s. Per parameter, e the compute dtype's size (bf16: 2; float32 compute:
// no copy, the copy is the master itself):
//   adamw            7 x 4 + e       = 30 bytes (bf16), 28 (float32)
//   adamw + EMA      9 x 4 + 2e      = 40 bytes (bf16), 36 (float32)  (one pass, givt-train)
//   adamw, then ema_update: 30 + (3 x 4 + e) = 44 bytes (bf16), 40 (float32)  (two passes: ZeRO-1)
static OpCost sumsq_cost(size_t n) { return (OpCost){0, (double)n * sizeof(float)}; }
// f32_passes float32 reads and writes, and `copies` compute copies written, of n elements
static OpCost update_cost(size_t n, int f32_passes, int copies, size_t esize) {
    return (OpCost){0, (double)n * ((double)f32_passes * sizeof(float) + (double)copies * (double)esize)};
}

// The gradient's sum of squares (the clipping's global norm) is a pass of its own, 4 bytes per
// parameter read (float32 gradients), before AdamW's pass: the clipping scale that AdamW applies
// needs the norm over every gradient first (step_check turns it into the scale on the backend;
// adamw_step_ema's host path takes the norm from the host). It cannot
// join an existing pass without changing results or ordering: the gradients are final only after
// the backward's last matmul_bwd (cuBLASLt) and the all-reduce (NCCL or MPI, not our kernels) or
// ZeRO-1's reduce-scatter, and model_zero_grads runs before them; summing per tensor as each
// becomes ready (grads_ready) would change the order of the double sums, hence the norm's bits, and
// under gradient accumulation only the last micro-batch's backward sees final gradients. One pass
// (4 bytes/parameter, against AdamW's 30-40) is the minimum for a global norm. The optimizer's part
// of a step, per parameter (bf16, EMA on):
// 4 (sumsq) + 40 (adamw with the EMA) = 44 bytes, where it was 4 + 30 + 14 = 48 in three passes.
void grad_sumsq_buffer(Backend *be, double *acc, const float *p, size_t n) {
    BACKEND_OPC(be, sumsq_cost(n), sumsq, acc, p, n);
}

void ema_update_weights(Backend *be, float *ema, cval *ema_compute, const float *p, size_t n, float decay,
                        const StepRecord *rec) {
    BACKEND_OPC(be, update_cost(n, 3, ema_compute != NULL, dtype_size(be->compute)), ema_update, ema, ema_compute,
                p, n, decay, rec);
}

void adamw_check_step(const AdamW *opt, Backend *be, StepRecord *rec, const double *loss_norm, double loss_count,
                      double ema_power) {
    StepSchedule s = adamw_schedule(&opt->cfg, ema_power);
    BACKEND_OP(be, step_check, rec, loss_norm, loss_count, &s);
}

void adamw_record_start(const AdamW *opt, Backend *be, StepRecord *rec, long step) {
    StepRecord r = {.step = step, .t = opt->t};
    be->ops->upload(be, rec, &r, sizeof r);
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


// The end of the run of neighbouring tensors from spec i with the same weight decay, padding
// included (the tensors' slots tile the flat buffers; the padding is zero and stays zero: g = m = v
// = p = 0 gives p = 0); *next = the first spec after it. The runs tile [0, table.total).
static size_t run_end(const ParamTable *pt, int i, int *next) {
    const ParamSpec *s = &pt->specs[i];
    size_t end = s->offset + s->slot;
    int j = i + 1;
    for (; j < pt->count; j++) {
        const ParamSpec *n = &pt->specs[j];
        if (n->offset != end || !n->weight_decay != !s->weight_decay) break;
        end = n->offset + n->slot;
    }
    *next = j;
    return end;
}

// A compute buffer of w (or of the EMA) at element a, or NULL when it is the float32 buffer itself
static cval *compute_at(const Weights *w, size_t a, size_t esize) {
    return (void *)w->compute == (void *)w->master ? NULL : (cval *)((char *)w->compute + a * esize);
}

// The update number t (1-based) with clipping scale `scale`, or the scale and the skip of rec
// (backend memory) when rec is not NULL.
static void adamw_enqueue(AdamW *opt, GivtModel *model, const float *grads, double lr, double scale,
                          const StepRecord *rec, long t, const Weights *ema, double ema_power) {
    const OptimConfig *c = &opt->cfg;
    if (ema && (opt->first != 0 || opt->count != model->table.total))
        givt_die("adamw_step_ema: the EMA in AdamW's pass needs the whole table (not a ZeRO-1 part)");
    float decay = ema ? (float)ema_decay(ema_power, t) : 0.0f;
    Backend *be = model->be;
    Weights *w = &model->w;
    size_t esize = dtype_size(be->compute);
    size_t lo = opt->first, hi = opt->first + opt->count;
    // One sweep per run of neighbouring tensors with the same weight decay: a handful of calls for
    // the whole model instead of one per tensor.
    for (int i = 0; i < model->table.count;) {
        const ParamSpec *s = &model->table.specs[i];
        size_t end = run_end(&model->table, i, &i);
        size_t a = s->offset > lo ? s->offset : lo, b = end < hi ? end : hi;  // the run's overlap with the part
        if (a >= b) continue;
        cval *pc = compute_at(w, a, esize), *ec = ema ? compute_at(ema, a, esize) : NULL;
        OpCost cost = update_cost(b - a, ema ? 9 : 7, (pc != NULL) + (ec != NULL), esize);
        BACKEND_OPC(be, cost, adamw, w->master + a, pc, grads + (a - lo), opt->m + (a - lo), opt->v + (a - lo),
                    ema ? ema->master + a : NULL, ec, b - a, (float)lr, (float)c->beta1, (float)c->beta2,
                    (float)c->eps, s->weight_decay ? (float)c->weight_decay : 0.0f, (float)scale, (int)t, decay, rec);
    }
}

void adamw_step_ema(AdamW *opt, GivtModel *model, const float *grads, double lr, double norm, const Weights *ema,
                    double ema_power) {
    opt->t++;
    adamw_enqueue(opt, model, grads, lr, givt_clip_scale(opt->cfg.grad_norm, norm), NULL, opt->t, ema, ema_power);
}

void adamw_update(AdamW *opt, GivtModel *model, const float *grads, const StepRecord *rec, const Weights *ema) {
    // lr 0, scale 1, t 1 and the EMA's decay are placeholders: the op takes the step's from rec
    adamw_enqueue(opt, model, grads, 0.0, 1.0, rec, 1, ema, 0.0);
}

void adamw_step(AdamW *opt, GivtModel *model, const float *grads, double lr, double norm) {
    adamw_step_ema(opt, model, grads, lr, norm, NULL, 0.0);
}

double ema_decay(double power, long updates) { return givt_ema_decay(power, updates); }
