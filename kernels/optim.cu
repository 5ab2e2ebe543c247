// optim.cu: AdamW with the refresh of the compute copy and, fused into the same pass, the EMA of the
// weights; the EMA as a pass of its own (ops.h: adamw, ema_update), elementwise on float32 with PyTorch's AdamW formula as the CPU reference
// (csrc/cpu/ops_cpu.c) writes it; the bias corrections are computed on the host in double, as
// there, or taken from the step record (ops.h: givt_step_decide, in double). The step's decision (step_check: the loss, the norm, the clipping scale and the skip of a
// non-finite step) is a one-thread kernel in double, as the host computed it, into a StepRecord that
// the update kernels read (no host round trip between the gradients and the update). The compute copy (p_compute, ema_compute) gets the new float32 value rounded to the
// compute dtype (bf16: nearest even); NULL, or the float32 buffer itself, writes nothing more.
// 16-byte loads and stores of units of 4 floats where the arrays are aligned for them (common.cuh
// cm_flat), the same arithmetic per element as the scalar rest.
#include <math.h>

#include "launch.cuh"
#include "common.cuh"

#define OPT_BLOCK 256
#define OPT_W 4       // floats a unit: one 16-byte load or store of each float32 array
#define OPT_UNROLL 2  // units a thread loads before it computes and stores them

// One element of AdamW and of the EMA (the same arithmetic in the vector and the scalar code, and in
// the fused and the separate EMA)
struct AdamwArgs {
    float beta1, beta2, eps, decay, grad_scale, step_size, bc2_sqrt;
    float weight_decay;  // decay = 1 - lr * weight_decay (with a step record: rec->lr's)
};
__device__ inline void adamw_elem(const AdamwArgs &a, float gi, float &mi, float &vi, float &pi) {
    gi *= a.grad_scale;
    mi = a.beta1 * mi + (1.0f - a.beta1) * gi;
    vi = a.beta2 * vi + (1.0f - a.beta2) * gi * gi;
    const float denom = sqrtf(vi) / a.bc2_sqrt + a.eps;
    pi = pi * a.decay - a.step_size * (mi / denom);
}

__device__ inline float ema_elem(float decay, float e, float p) { return decay * e + (1.0f - decay) * p; }

// The EMA fused into AdamW (ema NULL: none): its buffers and decay
template <typename T> struct EmaArgs {
    float *ema;
    T *ec;  // the EMA's compute copy, or NULL
    float decay;
};

// Flat over n elements split by cm_flat (common.cuh): units of OPT_W floats from element f.head on
// (p, g, m, v, ema: 16-byte loads and stores; the compute copies pc, ec: OPT_W elements, 8 or 16
// bytes), and the scalar rest. EMA: the EMA of the updated p in the same pass (ema_elem, as
// ema_kernel: the same bits). No division; size_t indices (n can exceed 2^32).
// The step's decision (ops.h: step_check), in double exactly as the CPU reference (and the host
// before it) computes it: givt_step_decide, the one definition (IEEE division and square root; its
// products rounded one by one, GIVT_DMUL; pow and cos are CUDA's, within an ulp or two of glibc's).
__global__ void step_check_kernel(StepRecord *rec, const double *loss_norm, double loss_count, StepSchedule sched) {
    givt_step_decide(rec, loss_norm, loss_count, &sched);
}

// rec (ops.h: adamw) when not NULL: the clipping scale from it, and nothing done on a skipped step.
template <typename T, bool EMA>
__global__ void adamw_kernel(float *p, T *pc, const float *g, float *m, float *v, EmaArgs<T> e, CmFlat f,
                             AdamwArgs a, const StepRecord *rec) {
    if (rec) {  // the step's scalars from the record: the bits the host's arguments would have had
        if (rec->skip) return;
        a.grad_scale = rec->grad_scale;
        a.step_size = rec->step_size;
        a.bc2_sqrt = rec->bc2_sqrt;
        a.decay = 1.0f - GIVT_FMUL(rec->lr, a.weight_decay);
        if (EMA) e.decay = rec->ema_decay;
    }
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    float *pu = p + f.head, *mu = m + f.head, *vu = v + f.head, *eu = EMA ? e.ema + f.head : NULL;
    const float *gu = g + f.head;
    T *cu = pc ? pc + f.head : NULL, *ecu = EMA && e.ec ? e.ec + f.head : NULL;
    for (size_t i = t0; i < f.nv; i += OPT_UNROLL * step) {
        float gv[OPT_UNROLL][OPT_W] = {}, mv[OPT_UNROLL][OPT_W] = {}, vv[OPT_UNROLL][OPT_W] = {},
              pv[OPT_UNROLL][OPT_W] = {}, ev[OPT_UNROLL][OPT_W] = {};
#pragma unroll
        for (int k = 0; k < OPT_UNROLL; k++)
            if (i + k * step < f.nv) {
                const size_t u = (i + k * step) * OPT_W;
                cm_ld_f32<OPT_W>(gv[k], gu + u);
                cm_ld_f32<OPT_W>(mv[k], mu + u);
                cm_ld_f32<OPT_W>(vv[k], vu + u);
                cm_ld_f32<OPT_W>(pv[k], pu + u);
                if (EMA) cm_ld_f32<OPT_W>(ev[k], eu + u);
            }
#pragma unroll
        for (int k = 0; k < OPT_UNROLL; k++)
            if (i + k * step < f.nv) {
                const size_t u = (i + k * step) * OPT_W;
#pragma unroll
                for (int j = 0; j < OPT_W; j++) adamw_elem(a, gv[k][j], mv[k][j], vv[k][j], pv[k][j]);
                cm_st_f32<OPT_W>(mu + u, mv[k]);
                cm_st_f32<OPT_W>(vu + u, vv[k]);
                cm_st_f32<OPT_W>(pu + u, pv[k]);
                if (cu) cm_st_f32<OPT_W>(cu + u, pv[k]);
                if (EMA) {
#pragma unroll
                    for (int j = 0; j < OPT_W; j++) ev[k][j] = ema_elem(e.decay, ev[k][j], pv[k][j]);
                    cm_st_f32<OPT_W>(eu + u, ev[k]);
                    if (ecu) cm_st_f32<OPT_W>(ecu + u, ev[k]);
                }
            }
    }
#pragma unroll 1
    for (size_t j = t0; j < cm_flat_rest(f, OPT_W); j += step) {
        const size_t i = cm_flat_at(f, OPT_W, j);
        float mi = m[i], vi = v[i], pi = p[i];
        adamw_elem(a, g[i], mi, vi, pi);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        if (pc) pc[i] = cm_from_f32<T>(pi);
        if (EMA) {
            const float ei = ema_elem(e.decay, e.ema[i], pi);
            e.ema[i] = ei;
            if (e.ec) e.ec[i] = cm_from_f32<T>(ei);
        }
    }
}

template <typename T>
__global__ void ema_kernel(float *ema, T *ec, const float *p, CmFlat f, float decay, const StepRecord *rec) {
    if (rec && rec->skip) return;
    if (rec) decay = rec->ema_decay;
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    float *eu = ema + f.head;
    const float *pu = p + f.head;
    T *cu = ec ? ec + f.head : NULL;
    for (size_t i = t0; i < f.nv; i += OPT_UNROLL * step) {
        float ev[OPT_UNROLL][OPT_W] = {}, pv[OPT_UNROLL][OPT_W] = {};
#pragma unroll
        for (int k = 0; k < OPT_UNROLL; k++)
            if (i + k * step < f.nv) {
                cm_ld_f32<OPT_W>(ev[k], eu + (i + k * step) * OPT_W);
                cm_ld_f32<OPT_W>(pv[k], pu + (i + k * step) * OPT_W);
            }
#pragma unroll
        for (int k = 0; k < OPT_UNROLL; k++)
            if (i + k * step < f.nv) {
                const size_t e = (i + k * step) * OPT_W;
#pragma unroll
                for (int j = 0; j < OPT_W; j++) ev[k][j] = ema_elem(decay, ev[k][j], pv[k][j]);
                cm_st_f32<OPT_W>(eu + e, ev[k]);
                if (cu) cm_st_f32<OPT_W>(cu + e, ev[k]);
            }
    }
#pragma unroll 1
    for (size_t j = t0; j < cm_flat_rest(f, OPT_W); j += step) {
        const size_t i = cm_flat_at(f, OPT_W, j);
        const float e = ema_elem(decay, ema[i], p[i]);
        ema[i] = e;
        if (ec) ec[i] = cm_from_f32<T>(e);
    }
}

// The grid for a split: enough threads for the units (OPT_UNROLL a thread) and for the scalar rest
static unsigned opt_grid(Backend *be, const CmFlat &f) {
    const size_t rest = f.n - f.nv * OPT_W, units = (f.nv + OPT_UNROLL - 1) / OPT_UNROLL;
    return cm_grid_elementwise(be, units > rest ? units : rest, OPT_BLOCK);
}

// One launch of adamw_kernel<T, EMA> (EMA: e.ema not NULL)
template <typename T>
static void adamw_launch(Backend *be, const CmFlat &f, float *p, cval *pc, const float *g, float *m, float *v,
                         float *ema, cval *ec, float ema_decay, const AdamwArgs &a, const StepRecord *rec) {
    const EmaArgs<T> e = {ema, (T *)ec, ema_decay};
    auto *k = ema ? adamw_kernel<T, true> : adamw_kernel<T, false>;
    GIVT_LAUNCH(k, opt_grid(be, f), OPT_BLOCK, 0, cuda_stream(be), p, (T *)pc, g, m, v, e, f, a, rec);
}

extern "C" void cuda_step_check(Backend *be, StepRecord *rec, const double *loss_norm, double loss_count,
                                const StepSchedule *sched) {
    GIVT_LAUNCH(step_check_kernel, 1, 1, 0, cuda_stream(be), rec, loss_norm, loss_count, *sched);
}

extern "C" void cuda_adamw(Backend *be, float *p, cval *p_compute, const float *g, float *m, float *v, float *ema,
                           cval *ema_compute, size_t n, float lr, float beta1, float beta2, float eps,
                           float weight_decay, float grad_scale, int t, float ema_decay, const StepRecord *rec) {
    if (n == 0) return;
    const float step_size = givt_adamw_step_size(lr, beta1, t);
    const float bc2_sqrt = givt_adamw_bc2_sqrt(beta2, t);
    const float decay = 1.0f - lr * weight_decay;
    if ((const void *)p_compute == (const void *)p) p_compute = NULL;
    if (!ema || (const void *)ema_compute == (const void *)ema) ema_compute = NULL;
    const AdamwArgs a = {beta1, beta2, eps, decay, grad_scale, step_size, bc2_sqrt, weight_decay};
    const size_t es = dtype_size(cuda_ctx(be)->dtype);
    const void *ptrs[7] = {p, g, m, v, p_compute, ema, ema_compute};
    size_t elem[7] = {4, 4, 4, 4, es, 4, es};
    const CmFlat f = cm_flat(n, OPT_W, 7, ptrs, elem);
    if (cuda_ctx(be)->dtype == DTYPE_BF16)
        adamw_launch<__nv_bfloat16>(be, f, p, p_compute, g, m, v, ema, ema_compute, ema_decay, a, rec);
    else
        adamw_launch<float>(be, f, p, p_compute, g, m, v, ema, ema_compute, ema_decay, a, rec);
}

extern "C" void cuda_ema_update(Backend *be, float *ema, cval *ema_compute, const float *p, size_t n, float decay,
                                const StepRecord *rec) {
    if (n == 0) return;
    if ((const void *)ema_compute == (const void *)ema) ema_compute = NULL;
    const void *ptrs[3] = {ema, p, ema_compute};
    size_t elem[3] = {4, 4, dtype_size(cuda_ctx(be)->dtype)};
    const CmFlat f = cm_flat(n, OPT_W, 3, ptrs, elem);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(ema_kernel<T>, opt_grid(be, f), OPT_BLOCK, 0, cuda_stream(be), ema, (T *)ema_compute, p, f, decay,
                    rec);
    } else {
        typedef float T;
        GIVT_LAUNCH(ema_kernel<T>, opt_grid(be, f), OPT_BLOCK, 0, cuda_stream(be), ema, (T *)ema_compute, p, f, decay,
                    rec);
    }
}
