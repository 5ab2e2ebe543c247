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

// The decision of one optimizer step, made on the backend from the loss and the gradient norm (the
// step_check op), so that the host need not wait for them: adamw and ema_update read the clipping
// scale and the skip from it in backend memory, and the host reads it back one step later (the
// readback ops) for its log and its rules on non-finite steps.
typedef struct {
    double loss;       // the mean loss: the loss sum / its count
    double norm;       // the global gradient norm: sqrt(the squared norm)
    float grad_scale;  // the clipping factor applied to the gradients (1: none)
    int32_t skip;      // 1: the loss or the norm is not finite, the step updates nothing; else 0
} StepRecord;

// A readback slot: host memory that backend memory is copied into while the host goes on
// (readback_create / readback_start / readback_wait / readback_free).
typedef struct BackendReadback BackendReadback;

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
    // scalars: the loss sum, then the squared gradient norm), *rec (backend memory) = {loss =
    // loss_norm[0] / loss_count, norm = sqrt(loss_norm[1]), skip = 1 when either is not finite (else
    // 0), grad_scale = (float)min(1, max_norm / (norm + 1e-6)), 1 when max_norm <= 0 (clipping as
    // torch.nn.utils.clip_grad_norm_)}, in double as the host computes them (the same bits).
    void (*step_check)(Backend *be, StepRecord *rec, const double *loss_norm, double loss_count, double max_norm);

    // AdamW (PyTorch's formula) on n float32 weights p (n), moments m, v (n), gradients g (n); g is
    // multiplied by grad_scale first (clipping); t is the 1-based update count for the bias
    // corrections. p_compute (n) gets the updated weights in the compute dtype, unless it is NULL (the
    // compute copy is p itself). The EMA of the weights in the same pass, unless ema is NULL:
    // ema (n) = ema_decay * ema + (1 - ema_decay) * p with the updated p, exactly as ema_update on
    // the updated p would (the same float32 arithmetic per element: the same bits); ema_compute (n)
    // as p_compute. One read of p, g, m, v (and ema), one write of p, m, v (and ema) and the copies.
    // rec (backend memory, step_check's) when not NULL: the clipping scale is rec->grad_scale
    // (grad_scale is not used), and when rec->skip is set nothing is read or written.
    void (*adamw)(Backend *be, float *p, cval *p_compute, const float *g, float *m, float *v, float *ema,
                  cval *ema_compute, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                  float grad_scale, int t, float ema_decay, const StepRecord *rec);
    // ema = decay * ema + (1 - decay) * p, on n floats; ema_compute as p_compute of adamw. The EMA as a
    // pass of its own, where it is not adamw's: under ZeRO-1 (after the gather of the weights), and
    // givt-bench --ema. rec (backend memory) when not NULL: nothing is done when rec->skip is set.
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
    X(close) X(readback_create) X(readback_start) X(readback_wait) X(readback_free) X(to_compute)       \
    X(matmul_fwd) X(matmul_bwd) X(residual_rmsnorm_fwd) X(residual_rmsnorm_bwd)                          \
    X(attention_saved_bytes) X(attention_fwd) X(attention_scratch_bytes) X(attention_bwd) X(swiglu_fwd) \
    X(swiglu_bwd) X(shift_bos) X(shift_bos_bwd) X(class_embed_fwd) X(class_embed_bwd) X(gaussian_nll)   \
    X(mixture_nll) X(sumsq) X(step_check) X(adamw) X(ema_update)
#define GIVT_OPS_OPTIONAL(X) X(range_push) X(range_pop) X(stats)

#endif
