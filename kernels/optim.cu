// optim.cu: AdamW with the refresh of the compute copy, and the EMA of the weights (ops.h: adamw,
// ema_update), elementwise on float32 with PyTorch's AdamW formula as the CPU reference
// (csrc/cpu/ops_cpu.c) writes it; the bias corrections are computed on the host in double, as
// there. The compute copy (p_compute, ema_compute) gets the new float32 value rounded to the
// compute dtype (bf16: nearest even); NULL, or the float32 buffer itself, writes nothing more.
#include <math.h>

#include "launch.cuh"
#include "common.cuh"

#define OPT_BLOCK 256

template <typename T>
__global__ void adamw_kernel(float *p, T *pc, const float *g, float *m, float *v, size_t n, float beta1, float beta2,
                             float eps, float decay, float grad_scale, float step_size, float bc2_sqrt) {
    CM_GRID_STRIDE(i, n) {
        const float gi = g[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        const float pi = p[i] * decay - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        if (pc) pc[i] = cm_from_f32<T>(pi);
    }
}

template <typename T> __global__ void ema_kernel(float *ema, T *ec, const float *p, size_t n, float decay) {
    CM_GRID_STRIDE(i, n) {
        const float e = decay * ema[i] + (1.0f - decay) * p[i];
        ema[i] = e;
        if (ec) ec[i] = cm_from_f32<T>(e);
    }
}

extern "C" void cuda_adamw(Backend *be, float *p, cval *p_compute, const float *g, float *m, float *v, size_t n,
                           float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t) {
    if (n == 0) return;
    const float step_size = (float)(lr / (1.0 - pow(beta1, t)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, t));
    const float decay = 1.0f - lr * weight_decay;
    const unsigned grid = cm_grid_elementwise(be, n, OPT_BLOCK);
    if ((const void *)p_compute == (const void *)p) p_compute = NULL;
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(adamw_kernel<T>, grid, OPT_BLOCK, 0, cuda_stream(be), p, (T *)p_compute, g, m, v, n, beta1, beta2,
                    eps, decay, grad_scale, step_size, bc2_sqrt);
    } else {
        typedef float T;
        GIVT_LAUNCH(adamw_kernel<T>, grid, OPT_BLOCK, 0, cuda_stream(be), p, (T *)p_compute, g, m, v, n, beta1, beta2,
                    eps, decay, grad_scale, step_size, bc2_sqrt);
    }
}

extern "C" void cuda_ema_update(Backend *be, float *ema, cval *ema_compute, const float *p, size_t n, float decay) {
    if (n == 0) return;
    const unsigned grid = cm_grid_elementwise(be, n, OPT_BLOCK);
    if ((const void *)ema_compute == (const void *)ema) ema_compute = NULL;
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(ema_kernel<T>, grid, OPT_BLOCK, 0, cuda_stream(be), ema, (T *)ema_compute, p, n, decay);
    } else {
        typedef float T;
        GIVT_LAUNCH(ema_kernel<T>, grid, OPT_BLOCK, 0, cuda_stream(be), ema, (T *)ema_compute, p, n, decay);
    }
}
