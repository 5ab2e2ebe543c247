// loss.cu: the Gaussian NLL head and the mixture head, forward and backward in one kernel each, and
// the sum of squares (ops.h: gaussian_nll, mixture_nll, sumsq), in double as the CPU reference
// (csrc/cpu/ops_cpu.c) computes.
// Deterministic sums: a grid whose size depends only on the shapes (and on the alignment of the
// buffers, which picks 16-byte or scalar loads), each thread summing its elements in a fixed order,
// a block sum with a fixed tree into one double partial per block (scratch), and one final block
// that sums the partials in a fixed order and adds the total to the backend scalar.
#include "launch.cuh"
#include "common.cuh"

#define RED_BLOCK 256
#define RED_ITEMS 8          // elements per thread at least (fewer blocks, longer serial sums)
#define RED_MAX_BLOCKS 1024  // partials: at most 8 KiB of scratch
#define MIX_BLOCK 64         // mixture_kernel: threads a block (one row each)

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
// A row kernel (common.cuh cm_rows): a thread takes unit u (W elements of d) of rows n0, n0 + nstep,
// ..., NLL_UNROLL rows loaded at once: W = NLL_W (16-byte loads of x, 16- or 8-byte (bf16) loads of
// mu and pre) where D and the rows allow it, else single elements; no division. Each thread sums
// its elements in order, row after row, then the block sum.
__device__ inline double nll_elem(double mu, double pre, double x, double eps, bool grad, double &dmu, double &dpre) {
    const double sd = givt_head_std(pre, eps);
    const double var = sd * sd, varc = var < eps ? eps : var;
    const double diff = x - mu;
    dmu = dpre = 0.0;
    if (grad) {
        const double dvar = 0.5 * (1.0 / varc - diff * diff / (varc * varc));
        const double dsp = pre > 20.0 ? 1.0 : 1.0 / (1.0 + exp(-pre));
        dmu = -diff / varc;
        dpre = dvar * 2.0 * sd * dsp;
    }
    return 0.5 * (log(varc) + diff * diff / varc);
}
#define NLL_W 4       // elements a unit (x: one 16-byte load a lane, each request contiguous)
#define NLL_UNROLL 4  // rows a thread loads at once
template <typename T, int W, int UR>
__device__ inline double nll_rows(T *dy, const T *y, const float *x, unsigned N, unsigned D, double eps, float scale,
                                  const CmRowIdx &ix) {
    double acc = 0.0;
    if (const unsigned u = ix.u0; u < D / W)
        for (unsigned n = ix.n0; n < N; n += UR * ix.nstep) {
            float mu[UR][W] = {}, pre[UR][W] = {}, xv[UR][W] = {};
#pragma unroll
            for (int k = 0; k < UR; k++)
                if (n + k * ix.nstep < N) {
                    const size_t row = n + k * ix.nstep, iy = row * 2 * D + (size_t)u * W;
                    cm_ld_f32<W>(mu[k], y + iy);
                    cm_ld_f32<W>(pre[k], y + iy + D);
                    cm_ld_f32<W>(xv[k], x + row * D + (size_t)u * W);
                }
#pragma unroll
            for (int k = 0; k < UR; k++)
                if (n + k * ix.nstep < N) {
                    float gm[W], gp[W];
#pragma unroll
                    for (int j = 0; j < W; j++) {
                        double dm, dp;
                        acc += nll_elem(mu[k][j], pre[k][j], xv[k][j], eps, dy != NULL, dm, dp);
                        gm[j] = (float)(scale * dm);
                        gp[j] = (float)(scale * dp);
                    }
                    if (dy) {
                        const size_t iy = (size_t)(n + k * ix.nstep) * 2 * D + (size_t)u * W;
                        cm_st_f32<W>(dy + iy, gm);
                        cm_st_f32<W>(dy + iy + D, gp);
                    }
                }
        }
    return acc;
}
template <typename T>
__global__ void nll_kernel(T *dy, double *part, const T *y, const float *x, unsigned N, unsigned D, double eps,
                           float scale, unsigned lg, int vec) {
    const CmRowIdx ix(lg);
    double acc = vec ? nll_rows<T, NLL_W, NLL_UNROLL>(dy, y, x, N, D, eps, scale, ix)
                     : nll_rows<T, 1, 1>(dy, y, x, N, D, eps, scale, ix);
    acc = cm_block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x + (size_t)gridDim.x * blockIdx.y] = acc;
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

// Units of 4 floats (16-byte loads, RED_UNROLL a thread at once) from element f.head on (cm_flat),
// the scalar rest first; each thread adds its squares in order (unit by unit, element by element).
#define RED_UNROLL 4
__global__ void sumsq_kernel(double *part, const float *p, CmFlat f) {
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    double acc = 0.0;
#pragma unroll 1
    for (size_t j = t0; j < cm_flat_rest(f, 4); j += step) {
        const double v = p[cm_flat_at(f, 4, j)];
        acc += v * v;
    }
    const float *pu = p + f.head;
    for (size_t i = t0; i < f.nv; i += RED_UNROLL * step) {
        float v[RED_UNROLL][4] = {};
#pragma unroll
        for (int k = 0; k < RED_UNROLL; k++)
            if (i + k * step < f.nv) cm_ld_f32<4>(v[k], pu + (i + k * step) * 4);
#pragma unroll
        for (int k = 0; k < RED_UNROLL; k++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc += (double)v[k][j] * v[k][j];  // 0 past the end
    }
    acc = cm_block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// The grid of nll_kernel: a function of N, D and the unit width only (deterministic sums), at most
// RED_MAX_BLOCKS partials, a row a thread while that allows (16384 rows of D = 16: 512 blocks)
#define NLL_BLOCK 128
template <typename T>
static void gaussian_nll(Backend *be, T *dy, double *loss_sum, const T *y, const float *x, int N, int D, double eps,
                         float scale) {
    const size_t a = NLL_W * sizeof(T);  // a unit of y and dy
    const int vec = D % NLL_W == 0 && cm_aligned(y, a) && cm_aligned(x, 16) && (!dy || cm_aligned(dy, a));
    CmRows r = cm_rows((size_t)D / (vec ? NLL_W : 1), (size_t)N, 1, NLL_BLOCK, 1, RED_MAX_BLOCKS);
    const size_t grid = (size_t)r.grid.x * r.grid.y;
    int owned = 0;
    double *part = (double *)cm_scratch_get(be, grid * sizeof(double), &owned);
    GIVT_LAUNCH(nll_kernel<T>, r.grid, NLL_BLOCK, 0, cuda_stream(be), dy, part, y, x, (unsigned)N, (unsigned)D, eps,
                scale, r.lg, vec);
    GIVT_LAUNCH(red_final_kernel, 1, RED_BLOCK, 0, cuda_stream(be), loss_sum, (const double *)part, (unsigned)grid);
    cm_scratch_put(be, part, owned);
}
extern "C" void cuda_gaussian_nll(Backend *be, cval *dy, double *loss_sum, const cval *y, const float *x, int N,
                                  int D, double eps, float scale) {
    if (N <= 0 || D <= 0) return;
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16)
        gaussian_nll(be, (__nv_bfloat16 *)dy, loss_sum, (const __nv_bfloat16 *)y, x, N, D, eps, scale);
    else
        gaussian_nll(be, (float *)dy, loss_sum, (const float *)y, x, N, D, eps, scale);
}

extern "C" void cuda_mixture_nll(Backend *be, cval *dy, double *loss_sum, const cval *y, const float *x, int N,
                                 int D, int K, double eps, float scale) {
    if (N <= 0 || D <= 0 || K <= 0) return;
    // one thread per row: MIX_BLOCK-thread blocks, one row a thread up to RED_MAX_BLOCKS blocks (16384
    // rows: 256 blocks, every SM of an H100/H200 busy; before: 256 threads x 8 rows, 8 blocks)
    const size_t blocks = ((size_t)N + MIX_BLOCK - 1) / MIX_BLOCK;
    const unsigned grid = blocks < RED_MAX_BLOCKS ? (unsigned)blocks : RED_MAX_BLOCKS;
    int owned = 0;
    double *part = (double *)cm_scratch_get(be, grid * sizeof(double), &owned);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(mixture_kernel<T>, grid, MIX_BLOCK, 0, cuda_stream(be), (T *)dy, part, (const T *)y, x, (size_t)N,
                    D, K, eps, scale);
    } else {
        typedef float T;
        GIVT_LAUNCH(mixture_kernel<T>, grid, MIX_BLOCK, 0, cuda_stream(be), (T *)dy, part, (const T *)y, x, (size_t)N,
                    D, K, eps, scale);
    }
    GIVT_LAUNCH(red_final_kernel, 1, RED_BLOCK, 0, cuda_stream(be), loss_sum, (const double *)part, grid);
    cm_scratch_put(be, part, owned);
}

extern "C" void cuda_sumsq(Backend *be, double *acc, const float *p, size_t n) {
    if (n == 0) return;
    const void *ptrs[1] = {p};
    const size_t elem[1] = {sizeof(float)};
    const CmFlat f = cm_flat(n, 4, 1, ptrs, elem);
    const unsigned grid = red_blocks(n);
    int owned = 0;
    double *part = (double *)cm_scratch_get(be, grid * sizeof(double), &owned);
    GIVT_LAUNCH(sumsq_kernel, grid, RED_BLOCK, 0, cuda_stream(be), part, p, f);
    GIVT_LAUNCH(red_final_kernel, 1, RED_BLOCK, 0, cuda_stream(be), acc, (const double *)part, grid);
    cm_scratch_put(be, part, owned);
}
