// elementwise.cu: SwiGLU forward and backward, the bos input shift and its backward, and the
// float32 -> compute dtype conversion (ops.h: swiglu_fwd / _bwd, shift_bos / _bwd, to_compute),
// with the formulas of the CPU reference (csrc/model/ops_cpu.c); float32 math inside, grid-stride
// loops. shift_bos_bwd sums over the batch in order (b = 0, 1, ...) into dbos: deterministic.
#include "launch.cuh"
#include "common.cuh"

#define EW_BLOCK 256

static __device__ inline float ew_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// h (N, 2F) = [a | b] -> out (N, F) = silu(a) * b
template <typename T> __global__ void swiglu_fwd_kernel(T *out, const T *h, size_t total, int F) {
    CM_GRID_STRIDE(i, total) {
        const size_t n = i / (size_t)F, f = i % (size_t)F;
        const float a = cm_f32(h[n * 2 * F + f]), b = cm_f32(h[n * 2 * F + F + f]);
        out[i] = cm_from_f32<T>(a * ew_sigmoid(a) * b);
    }
}

// dh (N, 2F) = [dout * b * silu'(a) | dout * silu(a)]
template <typename T> __global__ void swiglu_bwd_kernel(T *dh, const T *dout, const T *h, size_t total, int F) {
    CM_GRID_STRIDE(i, total) {
        const size_t n = i / (size_t)F, f = i % (size_t)F, ia = n * 2 * F + f;
        const float a = cm_f32(h[ia]), b = cm_f32(h[ia + F]), g = cm_f32(dout[i]);
        const float s = ew_sigmoid(a);
        dh[ia + F] = cm_from_f32<T>(g * a * s);
        dh[ia] = cm_from_f32<T>(g * b * (s + a * s * (1.0f - s)));
    }
}

// in (B, T, D) = [bos, x_0 .. x_{T-2}] per sequence
template <typename T>
__global__ void shift_bos_kernel(T *in, const float *x, const T *bos, size_t total, int T_, int D) {
    CM_GRID_STRIDE(i, total) {
        const size_t d = i % (size_t)D, t = (i / (size_t)D) % (size_t)T_;
        in[i] = t == 0 ? bos[d] : cm_from_f32<T>(x[i - (size_t)D]);
    }
}

// dbos (D) += din[b, 0, :] for b = 0 .. B-1, in that order (one thread per d)
template <typename T> __global__ void shift_bos_bwd_kernel(float *dbos, const T *din, int B, int T_, int D) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    float acc = dbos[d];
    for (int b = 0; b < B; b++) acc += cm_f32(din[(size_t)b * T_ * D + d]);
    dbos[d] = acc;
}

template <typename T> __global__ void to_compute_kernel(T *dst, const float *src, size_t n) {
    CM_GRID_STRIDE(i, n) dst[i] = cm_from_f32<T>(src[i]);
}

extern "C" void cuda_swiglu_fwd(Backend *be, cval *out, const cval *h, int N, int F) {
    const size_t total = (size_t)N * F;
    if (N <= 0 || F <= 0) return;
    const unsigned grid = cm_grid_elementwise(be, total, EW_BLOCK);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(swiglu_fwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)out, (const T *)h, total, F);
    } else {
        typedef float T;
        GIVT_LAUNCH(swiglu_fwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)out, (const T *)h, total, F);
    }
}

extern "C" void cuda_swiglu_bwd(Backend *be, cval *dh, const cval *dout, const cval *h, int N, int F) {
    const size_t total = (size_t)N * F;
    if (N <= 0 || F <= 0) return;
    const unsigned grid = cm_grid_elementwise(be, total, EW_BLOCK);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(swiglu_bwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)dh, (const T *)dout, (const T *)h,
                    total, F);
    } else {
        typedef float T;
        GIVT_LAUNCH(swiglu_bwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)dh, (const T *)dout, (const T *)h,
                    total, F);
    }
}

extern "C" void cuda_shift_bos(Backend *be, cval *in, const float *x, const cval *bos, int B, int T_, int D) {
    const size_t total = (size_t)B * T_ * D;
    if (B <= 0 || T_ <= 0 || D <= 0) return;
    const unsigned grid = cm_grid_elementwise(be, total, EW_BLOCK);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(shift_bos_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)in, x, (const T *)bos, total, T_, D);
    } else {
        typedef float T;
        GIVT_LAUNCH(shift_bos_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)in, x, (const T *)bos, total, T_, D);
    }
}

extern "C" void cuda_shift_bos_bwd(Backend *be, float *dbos, const cval *din, int B, int T_, int D) {
    if (B <= 0 || T_ <= 0 || D <= 0) return;
    const unsigned grid = cm_div_up((size_t)D, EW_BLOCK);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(shift_bos_bwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), dbos, (const T *)din, B, T_, D);
    } else {
        typedef float T;
        GIVT_LAUNCH(shift_bos_bwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), dbos, (const T *)din, B, T_, D);
    }
}

// dst (n) = src in the compute dtype: bf16 rounded to nearest even, or a float32 copy (nothing
// when dst is src)
extern "C" void cuda_to_compute(Backend *be, cval *dst, const float *src, size_t n) {
    if (n == 0) return;
    const unsigned grid = cm_grid_elementwise(be, n, EW_BLOCK);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(to_compute_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)dst, src, n);
    } else {
        if ((const void *)dst == (const void *)src) return;
        typedef float T;
        GIVT_LAUNCH(to_compute_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)dst, src, n);
    }
}
