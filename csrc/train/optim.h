// optim: AdamW over the parameter table (the seed's decay groups), learning-rate schedules,
// global gradient-norm clipping and the EMA of the weights.
#ifndef GIVT_OPTIM_H
#define GIVT_OPTIM_H

#include "model.h"

typedef enum { LR_SCHEDULE_INVERSE_SQRT, LR_SCHEDULE_COSINE, LR_SCHEDULE_CONSTANT } LrSchedule;

typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    double grad_norm;  // clip the global norm to this; 0 = no clipping
    LrSchedule schedule;
    long warmup_steps;
    double timescale;     // inverse_sqrt
    long max_steps;       // cosine
    double min_lr_ratio;  // cosine floor, as a share of lr
} OptimConfig;

// The multiplier of lr for optimizer step `step` (0-based, as the scheduler's LambdaLR sees it):
// inverse_sqrt (Hugging Face get_inverse_sqrt_schedule): step / warmup while step < warmup, then
//   1 / sqrt((step + timescale - warmup) / timescale);
// cosine: the same linear warmup, then min + (1 - min) * 0.5 * (1 + cos(pi * progress)) to max_steps;
// constant: the same linear warmup, then 1.
double lr_factor(const OptimConfig *oc, long step);

typedef struct {
    OptimConfig cfg;
    // The part of the flat parameter vector this optimizer updates: [first, first + count), the
    // whole table (0, table.total) except under ZeRO-1, where each rank owns one part.
    size_t first, count;
    float *m, *v;  // backend memory, count floats each (float32 always): the moments of the part
    long t;        // updates applied so far (AdamW's step count)
} AdamW;

void adamw_create(AdamW *opt, const GivtModel *model, const OptimConfig *cfg);  // the whole table
// The optimizer of parameters [first, first + count) only (ZeRO-1).
void adamw_create_part(AdamW *opt, const GivtModel *model, const OptimConfig *cfg, size_t first, size_t count);
void adamw_free(AdamW *opt, const GivtModel *model);
// The optimizer's backend ops, called through the op profile (givt-bench --profile, NVTX ranges):
// *acc (a backend scalar) += the sum of squares of p (n floats of backend memory: a part of the
// gradients, or any float32 buffer such as the weights).
void grad_sumsq_buffer(Backend *be, double *acc, const float *p, size_t n);
// ema (n floats) = decay * ema + (1 - decay) * p; ema_compute: ema's compute copy, or NULL when it is
// ema itself (as the op's ema_compute). rec (backend memory, step_check's) when not NULL: nothing on
// a skipped step.
void ema_update_weights(Backend *be, float *ema, cval *ema_compute, const float *p, size_t n, float decay,
                        const StepRecord *rec);
// The run's schedule for step_check (ops.h's StepSchedule) from the optimizer's configuration and the
// EMA's power (0: no EMA).
StepSchedule adamw_schedule(const OptimConfig *oc, double ema_power);
// A step's decision on the backend (ops.h: step_check): *rec (backend memory, the previous step's
// record) becomes this step's: the mean loss (loss_norm[0] / loss_count), the global norm, the
// clipping scale of opt->cfg.grad_norm, the skip of a non-finite loss or norm, the step count, the
// update count t, the step's learning rate and bias corrections and the EMA's decay (ema_power), from
// loss_norm (the loss sum and the squared norm, backend scalars).
void adamw_check_step(const AdamW *opt, Backend *be, StepRecord *rec, const double *loss_norm, double loss_count,
                      double ema_power);
// Before the first step of a run (fresh or resumed): the record's counts become `step` (optimizer
// steps completed) and opt->t (updates made), from which step_check goes on (one upload).
void adamw_record_start(const AdamW *opt, Backend *be, StepRecord *rec, long step);

// *acc (a backend scalar) += the squared L2 norm of model->grads (double accumulation, fixed order).
void grad_sumsq(const GivtModel *model, double *acc);
// Global L2 norm of model->grads, read by the host (one synchronisation).
double grad_global_norm(GivtModel *model);
// One update of the optimizer's part of model->w (master weights and their compute copy) with
// learning rate lr, from grads (backend memory, opt->count floats: the gradients of the part; for
// the whole table, model->grads). The gradients are scaled by min(1, grad_norm / (norm + 1e-6))
// first, as torch.nn.utils.clip_grad_norm_ does, norm being the global norm. Decay applies to
// tensors with more than one dim.
void adamw_step(AdamW *opt, GivtModel *model, const float *grads, double lr, double norm);
// adamw_step with the EMA of the weights in the same pass when ema is not NULL: ema (master and
// compute copy) = d * ema + (1 - d) * the updated weights, d = ema_decay(ema_power, the update count
// after this step), the same bits as adamw_step followed by ema_update_weights. Only for the whole
// table (opt->first 0, count table.total): under ZeRO-1 the EMA is a pass of its own after the gather.
void adamw_step_ema(AdamW *opt, GivtModel *model, const float *grads, double lr, double norm, const Weights *ema,
                    double ema_power);
// The update as adamw_step_ema, everything that varies from step to step read on the backend from rec
// (adamw_check_step's: the clipping scale, the skip, the learning rate, the bias corrections of its t,
// the EMA's decay), so that the host need not know the norm nor the count: the update is the
// rec->t-th when it is not skipped, and opt->t is left as it is until the host, having read rec back,
// calls adamw_note_step. The same bits as adamw_step_ema with rec's norm and lr (skipped: nothing changes).
void adamw_update(AdamW *opt, GivtModel *model, const float *grads, const StepRecord *rec, const Weights *ema);
// rec (host memory: the step's record read back) counts the update adamw_update made, unless skipped.
static inline void adamw_note_step(AdamW *opt, const StepRecord *rec) {
    if (!rec->skip) opt->t++;
}

// EMA decay for the `updates`-th update (1-based), as ema_pytorch's EMA(power=..) computes it when
// updated every step from the start: 0 (a copy) for the first two, then min(0.9999, 1 - (updates-1)^-power).
double ema_decay(double power, long updates);

#endif
