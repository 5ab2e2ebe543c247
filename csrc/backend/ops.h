// ops: the backend op table, the contract every backend implements. The model (model.c) is written
// once against these signatures; the CPU backend (ops_cpu.c, the float32 reference) and the CUDA
// backend (kernels/) implement them with the same names and argument order. Each op receives its
// Backend first. Pointers are backend memory; shapes are in the comments, row-major, N = B*T rows.
// Buffer types say the dtype: `cval *` is the backend's compute dtype (activations, the compute copy
// of the weights); `float *` is always float32 (master weights, weight gradients, AdamW moments, norm
// statistics, targets); `double *` are backend scalars (loss and norm accumulators).
// The ops are the units a fast GPU backend fuses: residual add + RMSNorm, RoPE + attention, SwiGLU,
// the Gaussian NLL with its gradient, AdamW with the refresh of the compute copy and the EMA; an
// optimizer step's decision (clipping, the skip of a non-finite step) is an op too (step_check), so
// that a training step never waits for the backend (its record is read back one step late).
// Also here: the Backend instance the ops receive, the element types, and the lists of the table's
// members (GIVT_OPS_REQUIRED / GIVT_OPS_OPTIONAL, which backend_open checks). backend.h opens
// backends (the registry) and runs ops (BACKEND_OPC: the profile and NVTX ranges).
#ifndef GIVT_OPS_H
#define GIVT_OPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>


#ifdef __CUDACC__
#define GIVT_HOST_DEVICE __host__ __device__
#else
#define GIVT_HOST_DEVICE
#endif

// Element types. Master weights, AdamW moments, weight gradients, norm statistics and the loss are
// always float32 (or double for the loss scalars); activations and the compute copy of the weights
// are in the backend's compute dtype.
typedef enum { DTYPE_F32, DTYPE_BF16 } DType;
static inline size_t dtype_size(DType t) { return t == DTYPE_BF16 ? 2 : 4; }
static inline const char *dtype_name(DType t) { return t == DTYPE_BF16 ? "bf16" : "float32"; }

// An element in the backend's compute dtype: pointers to it are backend memory that only the
// backend's ops read or write (float on the CPU backend, bf16 or float on the CUDA backend). The
// type is never defined, so the compiler keeps compute buffers and float32 buffers apart.
typedef struct cval cval;

typedef struct GivtOps GivtOps;
typedef struct Backend Backend;

// The compute precision asked of a backend: PRECISION_NO float32 compute; PRECISION_BF16 bfloat16
// compute with float32 master weights where the backend supports it (the CPU backend computes in
// float32 and says so through ->compute). backend.h has the one parse and the one list of names
// (givt-train's [train] mixed_precision and the programs' --precision).
typedef enum { PRECISION_NO, PRECISION_BF16 } Precision;

// Capabilities of a backend (Backend.caps): what callers decide on, instead of its name.
enum {
    // Its buffers are host memory (alloc is malloc): a host communicator (MPI) reduces them in place.
    BACKEND_CAP_HOST_MEMORY = 1u << 0,
    // mem_info describes a device of its own: total - free is what this process (and the device's
    // context) holds. Without it, mem_info is the machine's memory, shared with everything else.
    BACKEND_CAP_DEVICE_MEMORY = 1u << 1,
};

#define BACKEND_NAME_MAX 32  // longest device name ("auto" or a registry name), NUL included

struct Backend {
    const char *name;       // the registry name: "cpu", "cuda" (for messages; decisions use caps)
    char device[128];       // what it runs on, for the start-up line
    unsigned caps;          // BACKEND_CAP_* flags
    DType compute;          // dtype of activations and of the compute copy of the weights
    Precision precision;    // what backend_open was asked for (compute may differ: backend_precision_note)
    const GivtOps *ops;     // every op receives this Backend
    void *ctx;              // the backend's own state (handles, streams, workspaces)
    double peak_flops;      // the device's peak in the compute dtype (FLOP/s); 0 = unknown
    struct BackendProfile *profile;  // per-op timing, when backend_profile_start was called
};

// The head's std = softplus(pre) + eps as PyTorch computes it on float32 tensors: softplus with
// PyTorch's threshold (pre > 20 gives pre) rounded to float32, then + eps rounded to float32. The one
// definition for the loss (every backend's gaussian_nll and mixture_nll), model_get_mu_std and
// sampling; the CUDA kernels call it on the device.
static inline GIVT_HOST_DEVICE float givt_head_std(double pre, double eps) {
    double sp = pre > 20.0 ? pre : log1p(exp(pre));
    return (float)((double)(float)sp + eps);
}

// Float and double products and sums rounded one by one on the device too (nvcc would otherwise
// contract a * b + c into one FMA, another rounding than the host's): the step's scalars below are
// computed the same way on the host and on the device.
#ifdef __CUDA_ARCH__
#define GIVT_FMUL(a, b) __fmul_rn((a), (b))
#define GIVT_DMUL(a, b) __dmul_rn((a), (b))
#else
#define GIVT_FMUL(a, b) ((a) * (b))
#define GIVT_DMUL(a, b) ((a) * (b))
#endif

// The learning-rate schedules (optim.h's LrSchedule has the same values).
enum { GIVT_LR_INVERSE_SQRT, GIVT_LR_COSINE, GIVT_LR_CONSTANT };

// What a run's optimizer steps follow, constant over the run: the schedule of the learning rate,
// AdamW's betas (its bias corrections), the clipping norm and the EMA's power. step_check computes
// each step's scalars from it on the backend (so that a step needs nothing new from the host: a
// step captured once as a CUDA graph replays correctly).
typedef struct {
    double lr;                    // the peak learning rate
    double beta1, beta2;          // AdamW's (as float32 values, widened: adamw receives floats)
    int schedule;                 // GIVT_LR_*
    int64_t warmup_steps;         // linear warmup (every schedule)
    double timescale;             // inverse_sqrt
    int64_t max_steps;            // cosine
    double min_lr_ratio;          // cosine floor, as a share of lr
    double max_norm;              // clip the global gradient norm to this; <= 0: no clipping
    double ema_power;             // the EMA's power (ema_pytorch); 0: no EMA
} StepSchedule;

// The multiplier of lr for optimizer step `step` (0-based, as the scheduler's LambdaLR sees it):
// inverse_sqrt (Hugging Face get_inverse_sqrt_schedule): step / warmup while step < warmup, then
// 1 / sqrt((step + timescale - warmup) / timescale); cosine: the same linear warmup, then min + (1 -
// min) * 0.5 * (1 + cos(pi * progress)) to max_steps; constant: the same warmup, then 1.
static inline GIVT_HOST_DEVICE double givt_lr_factor(const StepSchedule *s, int64_t step) {
    if (step < s->warmup_steps) return (double)step / (double)(s->warmup_steps > 1 ? s->warmup_steps : 1);
    if (s->schedule == GIVT_LR_INVERSE_SQRT) {
        double shift = s->timescale - (double)s->warmup_steps;
        return 1.0 / sqrt(((double)step + shift) / s->timescale);
    }
    if (s->schedule == GIVT_LR_COSINE) {
        int64_t span = s->max_steps - s->warmup_steps;
        double progress = span > 0 ? (double)(step - s->warmup_steps) / (double)span : 1.0;
        if (progress > 1.0) progress = 1.0;
        double c = GIVT_DMUL(0.5, 1.0 + cos(GIVT_DMUL(3.14159265358979323846, progress)));
        return s->min_lr_ratio + GIVT_DMUL(1.0 - s->min_lr_ratio, c);
    }
    return 1.0;
}

// The EMA's decay at its `updates`-th update (1-based), as ema_pytorch's EMA(power=..) computes it when
// updated every step from the start: 0 (a copy) for the first two, then min(0.9999, 1 - (updates-1)^-power).
static inline GIVT_HOST_DEVICE double givt_ema_decay(double power, int64_t updates) {
    if (updates <= 2) return 0.0;
    double d = 1.0 - pow((double)(updates - 1), -power);
    return d < 0.9999 ? d : 0.9999;
}

// The clipping factor of a global gradient norm, as torch.nn.utils.clip_grad_norm_ computes it:
// min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0 (no clipping).
static inline GIVT_HOST_DEVICE double givt_clip_scale(double max_norm, double norm) {
    if (max_norm <= 0) return 1.0;
    double coef = max_norm / (norm + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

// AdamW's bias corrections for update t (1-based), from the float32 arguments adamw receives:
// the step size lr / (1 - beta1^t) and sqrt(1 - beta2^t), in double, rounded to float32.
static inline GIVT_HOST_DEVICE float givt_adamw_step_size(float lr, float beta1, int64_t t) {
    return (float)((double)lr / (1.0 - pow((double)beta1, (double)t)));
}
static inline GIVT_HOST_DEVICE float givt_adamw_bc2_sqrt(float beta2, int64_t t) {
    return (float)sqrt(1.0 - pow((double)beta2, (double)t));
}

// The decision of one optimizer step, made on the backend from the loss and the gradient norm (the
// step_check op), so that the host need not wait for them: adamw and ema_update read the clipping
// scale, the skip, the learning rate and the bias corrections from it in backend memory, and the
// host reads it back one step later (the readback ops) for its log and its rules on non-finite steps.
// The record also carries the counts from one step to the next (step, t): the host writes them once,
// when training starts or resumes.
typedef struct {
    double loss;       // the mean loss: the loss sum / its count
    double norm;       // the global gradient norm: sqrt(the squared norm)
    float grad_scale;  // the clipping factor applied to the gradients (1: none)
    int32_t skip;      // 1: the loss or the norm is not finite, the step updates nothing; else 0
    int64_t step;      // optimizer steps completed, this one included (skipped steps count)
    int64_t t;         // AdamW updates made, this one included unless skipped (the bias corrections' t)
    float lr;          // this step's learning rate: (float)(lr * givt_lr_factor(step - 1))
    float step_size;   // (float)(lr / (1 - beta1^t)): AdamW's step with the first bias correction
    float bc2_sqrt;    // (float)sqrt(1 - beta2^t): the second bias correction
    float ema_decay;   // (float)givt_ema_decay(ema_power, t): the EMA's decay at this update
} StepRecord;

// step_check's arithmetic, the one definition for every backend (the host's before it: the same bits):
// from the loss sum and squared norm (loss_norm), their count and the schedule, *rec becomes this
// step's record, rec->step and rec->t going on from the previous step's.
static inline GIVT_HOST_DEVICE void givt_step_decide(StepRecord *rec, const double *loss_norm, double loss_count,
                                                     const StepSchedule *s) {
    double loss = loss_norm[0] / loss_count, norm = sqrt(loss_norm[1]), scale = givt_clip_scale(s->max_norm, norm);
    int skip = !isfinite(loss) || !isfinite(norm);
    int64_t step = rec->step + 1, t = rec->t + !skip;
    float lr = (float)GIVT_DMUL(s->lr, givt_lr_factor(s, step - 1));
    rec->loss = loss;
    rec->norm = norm;
    rec->grad_scale = (float)scale;
    rec->skip = skip;
    rec->step = step;
    rec->t = t;
    rec->lr = lr;
    // as adamw computes them from its float arguments (beta1, beta2 are float32 values)
    rec->step_size = givt_adamw_step_size(lr, (float)s->beta1, t);
    rec->bc2_sqrt = givt_adamw_bc2_sqrt((float)s->beta2, t);
    rec->ema_decay = (float)givt_ema_decay(s->ema_power, t);
}

// A readback slot: host memory that backend memory is copied into while the host goes on
// (readback_create / readback_start / readback_wait / readback_free).
typedef struct BackendReadback BackendReadback;
// A recorded sequence of ops, replayed as one launch (graph_begin / graph_end / graph_launch / graph_free).
typedef struct BackendGraph BackendGraph;

// What a backend counts of its work (backend_stats): the emulated CUDA backend counts kernel launches
// and the host's waits (kernels/emu/cuda_emu.h); a backend that counts nothing says counted = 0.
typedef struct {
    int counted;                      // 1: the counts are measured (process-wide, since it started)
    unsigned long long launches;      // kernel launches, GEMMs included
    unsigned long long host_syncs;    // host waits that drain the device's queue (nothing queued after)
    unsigned long long fence_waits;   // host waits for work that has later work queued behind it
} BackendStats;

// The shape of one attention call. Queries are the Tq tokens at positions pos0 .. pos0 + Tq - 1;
// keys and values the Tk = pos0 + Tq tokens at positions 0 .. Tk - 1 (a KV cache holds the first
// pos0). Causal: query i sees keys 0 .. pos0 + i. Training is pos0 = 0, Tq = Tk = T.
// q, k and v are (B, tokens, H * hd) views with row strides (elements between consecutive tokens)
// and batch strides (elements between consecutive sequences); out is (B, Tq, H * hd), dense.
typedef struct {
    int B, H, hd;
    int Tq, Tk, pos0;
    int n_rot;                      // RoPE rotates the first n_rot (even) dims of each head
    size_t q_row, q_batch;          // strides of q (and dq)
    size_t kv_row, kv_batch;        // strides of k and v (and dk, dv)
} AttnShape;

struct GivtOps {
    // ---- memory (alloc zero-fills; sizes in bytes) ----
    void *(*alloc)(Backend *be, size_t bytes);
    void (*free)(Backend *be, void *p);
    void (*upload)(Backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(Backend *be, void *host_dst, const void *src, size_t bytes);
    void (*zero)(Backend *be, void *p, size_t bytes);
    void (*copy)(Backend *be, void *dst, const void *src, size_t bytes);  // backend to backend memory
    // Strided copy of compute elements: for b < B and r < rows, the width elements at
    // src + b*src_batch + r*src_row go to dst + b*dst_batch + r*dst_row (strides in elements).
    void (*copy_rows)(Backend *be, cval *dst, size_t dst_row, size_t dst_batch, const cval *src, size_t src_row,
                      size_t src_batch, int B, int rows, int width);
    void (*mem_info)(Backend *be, size_t *free_bytes, size_t *total_bytes);
    void (*synchronize)(Backend *be);
    void (*close)(Backend *be);  // frees ctx
    // Reading backend memory back without waiting for it at once. readback_create: a slot of `bytes`
    // bytes of host memory that the backend can copy into while the host goes on (CUDA: pinned
    // memory and an event). readback_start: enqueues the copy of bytes (at most the slot's) from src
    // (backend memory) into the slot, after every op enqueued before it, and returns. readback_wait:
    // waits until that copy has landed (every op enqueued before readback_start is then done) and
    // returns the slot's memory, valid until the next readback_start on the slot.
    BackendReadback *(*readback_create)(Backend *be, size_t bytes);
    void (*readback_start)(Backend *be, BackendReadback *r, const void *src, size_t bytes);
    const void *(*readback_wait)(Backend *be, BackendReadback *r);
    void (*readback_free)(Backend *be, BackendReadback *r);

    // Host memory that the backend uploads from without waiting (CUDA: pinned memory, which a copy
    // engine reads directly; an upload from ordinary memory may be staged through it and wait for the
    // queue). host_alloc zero-fills.
    void *(*host_alloc)(Backend *be, size_t bytes);
    void (*host_free)(Backend *be, void *p);
    // Enqueues the copy of bytes from src (host_alloc's memory) to dst (backend memory), after every
    // op enqueued before it, and returns at once: src must stay as it is until a wait covers the copy
    // (synchronize, download, or readback_wait of a readback started after it).
    void (*upload_async)(Backend *be, void *dst, const void *src, size_t bytes);
    // Optional (NULL: the backend has no graphs; the CPU backend): a sequence of ops recorded once and
    // replayed. graph_begin: from here on the ops enqueued are recorded, not run (it returns 0, or -1
    // with givt_fail). graph_end: the recording becomes a graph, or NULL with givt_fail when something
    // in it could not be recorded (a wait for the backend, an allocation, a copy from ordinary host
    // memory: these are errors while recording). graph_launch: enqueues the recorded ops again, each
    // with the arguments it was recorded with, on memory as it is when they run. graph_free.
    int (*graph_begin)(Backend *be);
    BackendGraph *(*graph_end)(Backend *be);
    void (*graph_launch)(Backend *be, BackendGraph *g);
    void (*graph_free)(Backend *be, BackendGraph *g);

    // dst (n) = src (n) converted to the compute dtype (the compute copy of float32 weights)
    void (*to_compute)(Backend *be, cval *dst, const float *src, size_t n);

    // out (N, M) = inp (N, K) @ w^T, w (M, K)
    void (*matmul_fwd)(Backend *be, cval *out, const cval *inp, const cval *w, int N, int K, int M);
    // dinp (N, K) = dout (N, M) @ w (dinp may be NULL); dw (M, K) += dout^T @ inp, in float32
    void (*matmul_bwd)(Backend *be, cval *dinp, float *dw, const cval *dout, const cval *inp, const cval *w,
                       int N, int K, int M);

    // Residual add + RMSNorm: res_out (N, C) = res_in + branch (branch NULL: no add, res_out is not
    // written and the norm reads res_in); norm_out (N, C) = r * w * res, rstd (N) = r =
    // rsqrt(mean(res^2) + 1e-5) saved for backward.
    void (*residual_rmsnorm_fwd)(Backend *be, cval *res_out, cval *norm_out, float *rstd, const cval *res_in,
                                 const cval *branch, const cval *w, int N, int C);
    // Backward: the gradient of the residual stream, dres (N, C), gets += the norm's input gradient
    // for dnorm (N, C) (it flows on unchanged to both terms of the add); dw (C) += d/dw. res is the
    // norm's input of the forward (res_out, or res_in without a branch).
    void (*residual_rmsnorm_bwd)(Backend *be, cval *dres, float *dw, const cval *dnorm, const cval *res,
                                 const cval *w, const float *rstd, int N, int C);

    // RoPE + causal attention. Rotates q and rows pos0 .. Tk-1 of k in place (rotate-half RoPE with
    // cos, sin (block_size, n_rot) at each token's position; k rows before pos0 are rotated already),
    // then out = softmax(q k^T / sqrt(hd), causal) v per head. saved (attention_saved_bytes) is what
    // the backward needs besides q, k, v, in a layout of the backend's choosing.
    size_t (*attention_saved_bytes)(Backend *be, const AttnShape *s);
    void (*attention_fwd)(Backend *be, cval *out, void *saved, cval *q, cval *k, const cval *v, const float *cos,
                          const float *sin, const AttnShape *s);
    // Training shapes only (pos0 = 0, Tq = Tk): dq, dk, dv (strided as q, k, v) = the gradients with
    // respect to the unrotated q and k, and v, from dout (B, T, H * hd); out (B, T, H * hd) is the
    // forward's output (a backend may take D = rowsum(dout * out) from it instead of recomputing O);
    // q, k are the rotated ones the forward left. scratch holds attention_scratch_bytes.
    size_t (*attention_scratch_bytes)(Backend *be, const AttnShape *s);
    void (*attention_bwd)(Backend *be, cval *dq, cval *dk, cval *dv, void *scratch, const cval *dout,
                          const cval *out, const cval *q, const cval *k, const cval *v, const void *saved,
                          const float *cos, const float *sin, const AttnShape *s);

    // h (N, 2F) holds [a | b] per row -> out (N, F) = silu(a) * b
    void (*swiglu_fwd)(Backend *be, cval *out, const cval *h, int N, int F);
    // dh (N, 2F) = d/dh
    void (*swiglu_bwd)(Backend *be, cval *dh, const cval *dout, const cval *h, int N, int F);

    // Input shift: in (B, T, D) = [bos, x_0 .. x_{T-2}] per sequence; x (B, T, D) float32, bos (D).
    void (*shift_bos)(Backend *be, cval *in, const float *x, const cval *bos, int B, int T, int D);
    // dbos (D) += sum over b of din (B, T, D) at t = 0
    void (*shift_bos_bwd)(Backend *be, float *dbos, const cval *din, int B, int T, int D);

    // Class conditioning: res (B, T, C) row t = 0 of sequence b = table[labels[b]] (table (rows, C),
    // labels (B) int32 in backend memory, each a valid row); the other rows are left as they are.
    void (*class_embed_fwd)(Backend *be, cval *res, const cval *table, const int32_t *labels, int B, int T, int C);
    // dtable[labels[b]] (C) += dres[b, 0, :] for b = 0, 1, ... in that order (float32; sequences with
    // the same label add up), then dres[b, 0, :] = 0 (position 0's gradient goes to the class
    // embedding only, not on to the input embedding and bos).
    void (*class_embed_bwd)(Backend *be, float *dtable, cval *dres, const int32_t *labels, int B, int T, int C);

    // Gaussian NLL head, forward and backward in one pass. y (N, 2D) = [mu | pre];
    // std = softplus(pre) + eps; var = max(std^2, eps); per element l = 0.5*(log var + (x - mu)^2/var).
    // *loss_sum (a backend scalar) += the sum of l over the N*D elements, accumulated in double in a
    // fixed order. If dy is not NULL, dy (N, 2D) = scale * dl/dy (the clamp passes gradients through).
    void (*gaussian_nll)(Backend *be, cval *dy, double *loss_sum, const cval *y, const float *x, int N, int D,
                         double eps, float scale);
    // The mixture head (GIVT.md): K components, y (N, K + 2KD) = [logits (K) | mu (K, D) | pre (K, D)]
    // per row (K = 1: y (N, 2D) = [mu | pre], no logit, log pi = 0). Per component std, var as
    // gaussian_nll; per row, in double, lp_k = log_softmax(logits)_k - sum_d 0.5*(log var_kd +
    // (x_d - mu_kd)^2 / var_kd) and l = -logsumexp_k lp_k (stable: shifted by the largest term).
    // *loss_sum += the sum of l over the N rows, in a fixed order. If dy is not NULL, dy = scale * dl/dy:
    // with r_k = exp(lp_k + l) (the posterior of component k), d/dlogit_k = pi_k - r_k, and the
    // component's mu and pre get r_k times gaussian_nll's gradients. For K = 1 l is the sum of
    // gaussian_nll's terms over the row.
    void (*mixture_nll)(Backend *be, cval *dy, double *loss_sum, const cval *y, const float *x, int N, int D, int K,
                        double eps, float scale);

    // *acc (a backend scalar) += the sum of squares of p (n), double accumulation in a fixed order.
    void (*sumsq)(Backend *be, double *acc, const float *p, size_t n);

    // An optimizer step's decision, where the loss and the norm are: from loss_norm (two backend
    // scalars: the loss sum, then the squared gradient norm), their count and the run's schedule (host
    // memory, read at the call), *rec (backend memory, holding the previous step's record: its step
    // and t go on) becomes this step's (givt_step_decide: loss = loss_norm[0] / loss_count, norm =
    // sqrt(loss_norm[1]), skip when either is not finite, grad_scale = (float)min(1, max_norm / (norm +
    // 1e-6)) (1 when max_norm <= 0: clipping as torch.nn.utils.clip_grad_norm_), step + 1, t + 1 unless
    // skipped, the step's learning rate, AdamW's bias corrections and the EMA's decay), in double as
    // the host computes them (the same bits).
    void (*step_check)(Backend *be, StepRecord *rec, const double *loss_norm, double loss_count,
                       const StepSchedule *sched);

    // AdamW (PyTorch's formula) on n float32 weights p (n), moments m, v (n), gradients g (n); g is
    // multiplied by grad_scale first (clipping); t is the 1-based update count for the bias
    // corrections. p_compute (n) gets the updated weights in the compute dtype, unless it is NULL (the
    // compute copy is p itself). The EMA of the weights in the same pass, unless ema is NULL:
    // ema (n) = ema_decay * ema + (1 - ema_decay) * p with the updated p, exactly as ema_update on
    // the updated p would (the same float32 arithmetic per element: the same bits); ema_compute (n)
    // as p_compute. One read of p, g, m, v (and ema), one write of p, m, v (and ema) and the copies.
    // rec (backend memory, step_check's) when not NULL: lr, grad_scale, t and ema_decay are not used;
    // the step's come from the record (rec->lr, rec->grad_scale, the bias corrections of rec->t,
    // rec->ema_decay: the same bits as passing them), and when rec->skip is set nothing is read or
    // written.
    void (*adamw)(Backend *be, float *p, cval *p_compute, const float *g, float *m, float *v, float *ema,
                  cval *ema_compute, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                  float grad_scale, int t, float ema_decay, const StepRecord *rec);
    // ema = decay * ema + (1 - decay) * p, on n floats; ema_compute as p_compute of adamw. The EMA as a
    // pass of its own, where it is not adamw's: under ZeRO-1 (after the gather of the weights), and
    // givt-bench --ema. rec (backend memory) when not NULL: decay is rec->ema_decay, and nothing is
    // done when rec->skip is set.
    void (*ema_update)(Backend *be, float *ema, cval *ema_compute, const float *p, size_t n, float decay,
                       const StepRecord *rec);

    // Optional (NULL: none): mark the span of one model op for a profiler (the CUDA backend: NVTX
    // ranges named as the op); backend_op_begin / backend_op_end call them around every op.
    void (*range_push)(Backend *be, const char *name);
    void (*range_pop)(Backend *be);
    // Optional (NULL: counts nothing): what the backend counted so far (BackendStats).
    void (*stats)(Backend *be, BackendStats *out);
};

// The members of GivtOps by name, in order: X(op) for each. The required ones must be set in every
// backend's table (backend_open checks it: backend_check_ops); the optional ones may be NULL.
// backend.c asserts at compile time that the two lists name every member once, so they cannot
// drift from the struct.
#define GIVT_OPS_REQUIRED(X)                                                                            \
    X(alloc) X(free) X(upload) X(download) X(zero) X(copy) X(copy_rows) X(mem_info) X(synchronize)     \
    X(close) X(readback_create) X(readback_start) X(readback_wait) X(readback_free) X(host_alloc)       \
    X(host_free) X(upload_async) X(to_compute)                                                          \
    X(matmul_fwd) X(matmul_bwd) X(residual_rmsnorm_fwd) X(residual_rmsnorm_bwd)                          \
    X(attention_saved_bytes) X(attention_fwd) X(attention_scratch_bytes) X(attention_bwd) X(swiglu_fwd) \
    X(swiglu_bwd) X(shift_bos) X(shift_bos_bwd) X(class_embed_fwd) X(class_embed_bwd) X(gaussian_nll)   \
    X(mixture_nll) X(sumsq) X(step_check) X(adamw) X(ema_update)
#define GIVT_OPS_OPTIONAL(X) X(range_push) X(range_pop) X(stats) X(graph_begin) X(graph_end) X(graph_launch) X(graph_free)

#endif
