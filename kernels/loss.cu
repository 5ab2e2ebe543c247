// loss.cu: the Gaussian NLL head and the mixture head, forward and backward in one kernel each, and
// the sum of squares (ops.h: gaussian_nll, mixture_nll, sumsq), in double as the CPU reference
// (csrc/cpu/ops_cpu.c) computes.
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

// y (N, 2D) = [mu | pre], x (N, D); per element, in double: std = givt_head_std(pre, eps) (ops.h:
// softplus(pre) + eps as a float32 tensor in PyTorch computes it), var = max(std^2, eps),
// l = 0.5 (log var + (x - mu)^2 / var); dy = scale * dl/dy (the clamp passes the gradient through).
template <typename T>
__global__ void nll_kernel(T *dy, double *part, const T *y, const float *x, size_t total, int D, double eps,
                           float scale) {
    double acc = 0.0;
    CM_GRID_STRIDE(i, total) {
        const size_t n = i / (size_t)D, d = i % (size_t)D, iy = n * 2 * D + d;
        const double mu = cm_f32(y[iy]), pre = cm_f32(y[iy + D]);
        const double sd = givt_head_std(pre, eps);
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

// The log-density term of element (k, d) of a mixture row without the constant, and (dmu, dpre) =
// its gradients times -1 (those of the NLL term), as nll_kernel computes them.
template <typename T>
__device__ inline double mix_term(const T *mu, const T *pre, const float *x, size_t i, int d, double eps,
                                  double *dmu, double *dpre) {
    const double m = cm_f32(mu[i]), p = cm_f32(pre[i]);
    const double sd = givt_head_std(p, eps);
    const double var = sd * sd, varc = var < eps ? eps : var;
    const double diff = (double)x[d] - m;
    if (dmu) {
        const double dvar = 0.5 * (1.0 / varc - diff * diff / (varc * varc));
        const double dsp = p > 20.0 ? 1.0 : 1.0 / (1.0 + exp(-p));
        *dmu = -diff / varc;
        *dpre = dvar * 2.0 * sd * dsp;
    }
    return -0.5 * (log(varc) + diff * diff / varc);
}

// lp_k = log pi_k + sum_d of component k's terms, for row n (row pointers as in mixture_kernel)
template <typename T>
__device__ inline double mix_lp(const T *logit, const T *mu, const T *pre, const float *x, int k, int D, int K,
                                double lse_logits, double eps) {
    double g = K > 1 ? cm_f32(logit[k]) - lse_logits : 0.0;
    for (int d = 0; d < D; d++) g += mix_term(mu, pre, x, (size_t)k * D + d, d, eps, (double *)0, (double *)0);
    return g;
}

// y (N, W) with W = K + 2KD ([logits | mu (K, D) | pre (K, D)]) or 2D for K = 1 ([mu | pre]), x (N, D):
// one thread per row; per row l = -logsumexp_k lp_k by a running maximum (no storage of K values),
// then the gradient in a second pass that recomputes each lp_k (ops.h mixture_nll).
template <typename T>
__global__ void mixture_kernel(T *dy, double *part, const T *y, const float *x, size_t N, int D, int K, double eps,
                               float scale) {
    const size_t W = K == 1 ? 2 * (size_t)D : (size_t)K + 2 * (size_t)K * D;
    double acc = 0.0;
    CM_GRID_STRIDE(n, N) {
        const T *logit = y + n * W, *mu = logit + (K > 1 ? K : 0), *pre = mu + (size_t)K * D;
        const float *xn = x + n * D;
        double lse_logits = 0.0;
        if (K > 1) {
            double lmax = -INFINITY, lsum = 0.0;
            for (int k = 0; k < K; k++) lmax = fmax(lmax, (double)cm_f32(logit[k]));
            for (int k = 0; k < K; k++) lsum += exp(cm_f32(logit[k]) - lmax);
            lse_logits = lmax + log(lsum);
        }
        double top = -INFINITY, sum = 0.0;  // running log-sum-exp: sum of exp(lp_k - top)
        for (int k = 0; k < K; k++) {
            const double lp = mix_lp(logit, mu, pre, xn, k, D, K, lse_logits, eps);
            if (lp > top) {
                sum = sum * exp(top - lp) + 1.0;
                top = lp;
            } else {
                sum += exp(lp - top);
            }
        }
        const double log_p = top + log(sum);
        acc -= log_p;
        if (!dy) continue;
        T *dlogit = dy + n * W, *dmu = dlogit + (K > 1 ? K : 0), *dpre = dmu + (size_t)K * D;
        for (int k = 0; k < K; k++) {
            const double r = exp(mix_lp(logit, mu, pre, xn, k, D, K, lse_logits, eps) - log_p);
            if (K > 1) dlogit[k] = cm_from_f32<T>((float)(scale * (exp(cm_f32(logit[k]) - lse_logits) - r)));
            for (int d = 0; d < D; d++) {
                const size_t i = (size_t)k * D + d;
                double gm, gp;
                mix_term(mu, pre, xn, i, d, eps, &gm, &gp);
                dmu[i] = cm_from_f32<T>((float)(scale * r * gm));
                dpre[i] = cm_from_f32<T>((float)(scale * r * gp));
            }
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

extern "C" void cuda_mixture_nll(Backend *be, cval *dy, double *loss_sum, const cval *y, const float *x, int N,
                                 int D, int K, double eps, float scale) {
    if (N <= 0 || D <= 0 || K <= 0) return;
    const unsigned grid = red_blocks((size_t)N);
    int owned = 0;
    double *part = (double *)cm_scratch_get(be, grid * sizeof(double), &owned);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(mixture_kernel<T>, grid, RED_BLOCK, 0, cuda_stream(be), (T *)dy, part, (const T *)y, x, (size_t)N,
                    D, K, eps, scale);
    } else {
        typedef float T;
        GIVT_LAUNCH(mixture_kernel<T>, grid, RED_BLOCK, 0, cuda_stream(be), (T *)dy, part, (const T *)y, x, (size_t)N,
                    D, K, eps, scale);
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
