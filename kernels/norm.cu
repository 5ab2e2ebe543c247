// norm.cu: residual add + RMSNorm, forward and backward (ops.h: residual_rmsnorm_fwd / _bwd), with
// the formulas of the CPU reference (csrc/cpu/ops_cpu.c). One warp per row; float32 math; the
// row sums are warp butterflies (fixed order). dw is summed deterministically: fixed row chunks
// give per-column partials (scratch), which a second kernel adds to dw in chunk order.
#include "launch.cuh"
#include "common.cuh"

#define RMS_EPS 1e-5f
#define RMS_ROWS_PER_BLOCK 8  // warps per block: one row each
#define RMS_DW_BLOCK 128      // columns per block of the dw kernels
#define RMS_DW_MIN_ROWS 32    // rows per dw chunk at least
#define RMS_DW_MAX_CHUNKS 128 // dw chunks at most (partials: chunks * C floats)

// res_out (N, C) = res_in + branch (bf16: rounded, and the norm reads the rounded sum, the value
// stored); norm_out = x * r * w; rstd (N) = r = 1 / sqrt(mean(x^2) + 1e-5).
template <typename T>
__global__ void rmsnorm_fwd_kernel(T *res_out, T *norm_out, float *rstd, const T *res_in, const T *branch,
                                   const T *w, int N, int C) {
    const int row = blockIdx.x * RMS_ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;  // the whole warp
    const size_t base = (size_t)row * C;
    const T *x = res_in + base;
    float ss = 0.0f;
    if (branch) {
        const T *b = branch + base;
        T *r = res_out + base;
        for (int c = lane; c < C; c += 32) {
            T s = cm_from_f32<T>(cm_f32(x[c]) + cm_f32(b[c]));
            r[c] = s;  // read back below by this same lane only
            float v = cm_f32(s);
            ss += v * v;
        }
        x = r;
    } else {
        for (int c = lane; c < C; c += 32) {
            float v = cm_f32(x[c]);
            ss += v * v;
        }
    }
    ss = cm_warp_sum(ss);
    const float r = 1.0f / sqrtf(ss / (float)C + RMS_EPS);
    T *o = norm_out + base;
    for (int c = lane; c < C; c += 32) o[c] = cm_from_f32<T>(cm_f32(x[c]) * r * cm_f32(w[c]));
    if (lane == 0) rstd[row] = r;
}

// dres (N, C) += r*w*g - x * r^3/C * sum(w*g*x)
template <typename T>
__global__ void rmsnorm_bwd_dx_kernel(T *dres, const T *dnorm, const T *res, const T *w, const float *rstd, int N,
                                      int C) {
    const int row = blockIdx.x * RMS_ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const size_t base = (size_t)row * C;
    const T *x = res + base, *g = dnorm + base;
    T *dx = dres + base;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int c = lane; c < C; c += 32) dot += cm_f32(w[c]) * cm_f32(g[c]) * cm_f32(x[c]);
    dot = cm_warp_sum(dot);
    const float k = dot * r * r * r / (float)C;
    for (int c = lane; c < C; c += 32)
        dx[c] = cm_from_f32<T>(cm_f32(dx[c]) + (r * cm_f32(w[c]) * cm_f32(g[c]) - cm_f32(x[c]) * k));
}

// dw partials: block (column block, chunk); each thread one column, the chunk's rows in order.
// With one chunk the sum goes straight into dw (dw[c] += rows in order); otherwise part (chunks, C).
template <typename T>
__global__ void rmsnorm_bwd_dw_kernel(float *dw, float *part, const T *dnorm, const T *res, const float *rstd, int N,
                                      int C, int chunks) {
    const int c = blockIdx.x * RMS_DW_BLOCK + threadIdx.x, ch = blockIdx.y;
    if (c >= C) return;
    const int n0 = (int)((long long)N * ch / chunks), n1 = (int)((long long)N * (ch + 1) / chunks);
    float acc = chunks == 1 ? dw[c] : 0.0f;
    for (int n = n0; n < n1; n++) {
        const size_t i = (size_t)n * C + c;
        acc += cm_f32(dnorm[i]) * cm_f32(res[i]) * rstd[n];
    }
    if (chunks == 1) dw[c] = acc;
    else part[(size_t)ch * C + c] = acc;
}

// dw (C) += the partials, in chunk order
__global__ void rmsnorm_bwd_dw_sum_kernel(float *dw, const float *part, int C, int chunks) {
    const int c = blockIdx.x * RMS_DW_BLOCK + threadIdx.x;
    if (c >= C) return;
    float acc = dw[c];
    for (int ch = 0; ch < chunks; ch++) acc += part[(size_t)ch * C + c];
    dw[c] = acc;
}

// The number of dw row chunks for N rows (a function of N only: the same sums on every run)
static int rms_dw_chunks(int N) {
    int ch = (N + RMS_DW_MIN_ROWS - 1) / RMS_DW_MIN_ROWS;
    if (ch > RMS_DW_MAX_CHUNKS) ch = RMS_DW_MAX_CHUNKS;
    return ch < 1 ? 1 : ch;
}

// Device scratch that residual_rmsnorm_bwd uses for (N, C): at most 128 * C floats (0 when N <= 32).
// With less in CudaCtx.scratch it allocates its own on the stream (cudaMallocAsync) per call.
extern "C" size_t cuda_norm_scratch_bytes(int N, int C) {
    int ch = rms_dw_chunks(N);
    return ch > 1 ? (size_t)ch * (size_t)C * sizeof(float) : 0;
}

extern "C" void cuda_residual_rmsnorm_fwd(Backend *be, cval *res_out, cval *norm_out, float *rstd, const cval *res_in,
                                          const cval *branch, const cval *w, int N, int C) {
    if (N <= 0 || C <= 0) return;
    const unsigned grid = cm_div_up((size_t)N, RMS_ROWS_PER_BLOCK), block = 32 * RMS_ROWS_PER_BLOCK;
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(rmsnorm_fwd_kernel<T>, grid, block, 0, cuda_stream(be), (T *)res_out, (T *)norm_out, rstd,
                    (const T *)res_in, (const T *)branch, (const T *)w, N, C);
    } else {
        typedef float T;
        GIVT_LAUNCH(rmsnorm_fwd_kernel<T>, grid, block, 0, cuda_stream(be), (T *)res_out, (T *)norm_out, rstd,
                    (const T *)res_in, (const T *)branch, (const T *)w, N, C);
    }
}

template <typename T>
static void rmsnorm_bwd(Backend *be, T *dres, float *dw, const T *dnorm, const T *res, const T *w, const float *rstd,
                        int N, int C) {
    GIVT_LAUNCH(rmsnorm_bwd_dx_kernel<T>, cm_div_up((size_t)N, RMS_ROWS_PER_BLOCK), 32 * RMS_ROWS_PER_BLOCK, 0,
                cuda_stream(be), dres, dnorm, res, w, rstd, N, C);
    if (!dw) return;
    const int chunks = rms_dw_chunks(N);
    int owned = 0;
    float *part = (float *)cm_scratch_get(be, cuda_norm_scratch_bytes(N, C), &owned);
    GIVT_LAUNCH(rmsnorm_bwd_dw_kernel<T>, dim3(cm_div_up((size_t)C, RMS_DW_BLOCK), (unsigned)chunks), RMS_DW_BLOCK, 0,
                cuda_stream(be), dw, part, dnorm, res, rstd, N, C, chunks);
    if (chunks > 1)
        GIVT_LAUNCH(rmsnorm_bwd_dw_sum_kernel, cm_div_up((size_t)C, RMS_DW_BLOCK), RMS_DW_BLOCK, 0, cuda_stream(be),
                    dw, (const float *)part, C, chunks);
    cm_scratch_put(be, part, owned);
}

extern "C" void cuda_residual_rmsnorm_bwd(Backend *be, cval *dres, float *dw, const cval *dnorm, const cval *res,
                                          const cval *w, const float *rstd, int N, int C) {
    if (N <= 0 || C <= 0) return;
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        rmsnorm_bwd<T>(be, (T *)dres, dw, (const T *)dnorm, (const T *)res, (const T *)w, rstd, N, C);
    } else {
        typedef float T;
        rmsnorm_bwd<T>(be, (T *)dres, dw, (const T *)dnorm, (const T *)res, (const T *)w, rstd, N, C);
    }
}
