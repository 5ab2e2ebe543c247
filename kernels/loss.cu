// loss.cu: the Gaussian NLL head, forward and backward in one kernel, and the sum of squares
// (ops.h: gaussian_nll, sumsq), in double as the CPU reference (csrc/model/ops_cpu.c) computes.
// Deterministic sums: a grid whose size depends only on the element count, each thread summing
// its grid-stride elements in order, a block sum with a fixed tree into one double partial per
// block (scratch), and one final block that sums the partials in a fixed order and adds the total
// to the backend scalar.
#include "launch.cuh"
#include "common.cuh"

#define RED_BLOCK 256
#define RED_ITEMS 8          // elements per thread at least (fewer blocks, longer serial sums)
#define RED_MAX_BLOCKS 1024  // partials: at most 8 KiB of scratch

static unsigned red_blocks(size_t n) {
    size_t g = (n + RED_BLOCK * RED_ITEMS - 1) / (RED_BLOCK * RED_ITEMS);
    if (g > RED_MAX_BLOCKS) g = RED_MAX_BLOCKS;
    return g < 1 ? 1u : (unsigned)g;
}

// *acc += sum of part[0 .. nparts) (one block of RED_BLOCK threads)
__global__ void red_final_kernel(double *acc, const double *part, unsigned nparts) {
    double s = 0.0;
    for (unsigned i = threadIdx.x; i < nparts; i += blockDim.x) s += part[i];
    s = cm_block_sum(s);
    if (threadIdx.x == 0) *acc += s;
}

// y (N, 2D) = [mu | pre], x (N, D); per element, in double: std = softplus(pre) + eps rounded to
// float (as givt_head_std: a float32 tensor in PyTorch; pre > 20 gives pre), var = max(std^2, eps),
// l = 0.5 (log var + (x - mu)^2 / var); dy = scale * dl/dy (the clamp passes the gradient through).
template <typename T>
__global__ void nll_kernel(T *dy, double *part, const T *y, const float *x, size_t total, int D, double eps,
                           float scale) {
    double acc = 0.0;
    CM_GRID_STRIDE(i, total) {
        const size_t n = i / (size_t)D, d = i % (size_t)D, iy = n * 2 * D + d;
        const double mu = cm_f32(y[iy]), pre = cm_f32(y[iy + D]);
        const double sp = pre > 20.0 ? pre : log1p(exp(pre));
        const double sd = (double)(float)((double)(float)sp + eps);
        const double var = sd * sd, varc = var < eps ? eps : var;
        const double diff = (double)x[i] - mu;
        acc += 0.5 * (log(varc) + diff * diff / varc);
        if (dy) {
            const double dvar = 0.5 * (1.0 / varc - diff * diff / (varc * varc));
            const double dsp = pre > 20.0 ? 1.0 : 1.0 / (1.0 + exp(-pre));
            dy[iy] = cm_from_f32<T>((float)(scale * (-diff / varc)));
            dy[iy + D] = cm_from_f32<T>((float)(scale * dvar * 2.0 * sd * dsp));
        }
    }
    acc = cm_block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

__global__ void sumsq_kernel(double *part, const float *p, size_t n) {
    double acc = 0.0;
    CM_GRID_STRIDE(i, n) {
        const double v = p[i];
        acc += v * v;
    }
    acc = cm_block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

extern "C" void cuda_gaussian_nll(Backend *be, cval *dy, double *loss_sum, const cval *y, const float *x, int N,
                                  int D, double eps, float scale) {
    if (N <= 0 || D <= 0) return;
    const size_t total = (size_t)N * D;
    const unsigned grid = red_blocks(total);
    int owned = 0;
    double *part = (double *)cm_scratch_get(be, grid * sizeof(double), &owned);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(nll_kernel<T>, grid, RED_BLOCK, 0, cuda_stream(be), (T *)dy, part, (const T *)y, x, total, D, eps,
                    scale);
    } else {
        typedef float T;
        GIVT_LAUNCH(nll_kernel<T>, grid, RED_BLOCK, 0, cuda_stream(be), (T *)dy, part, (const T *)y, x, total, D, eps,
                    scale);
    }
    GIVT_LAUNCH(red_final_kernel, 1, RED_BLOCK, 0, cuda_stream(be), loss_sum, (const double *)part, grid);
    cm_scratch_put(be, part, owned);
}

extern "C" void cuda_sumsq(Backend *be, double *acc, const float *p, size_t n) {
    if (n == 0) return;
    const unsigned grid = red_blocks(n);
    int owned = 0;
    double *part = (double *)cm_scratch_get(be, grid * sizeof(double), &owned);
    GIVT_LAUNCH(sumsq_kernel, grid, RED_BLOCK, 0, cuda_stream(be), part, p, n);
    GIVT_LAUNCH(red_final_kernel, 1, RED_BLOCK, 0, cuda_stream(be), acc, (const double *)part, grid);
    cm_scratch_put(be, part, owned);
}
