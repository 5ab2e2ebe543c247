// elementwise.cu: SwiGLU forward and backward, the bos input shift and its backward, the class
// embedding at position 0 and its backward, the float32 -> compute dtype conversion and the strided
// row copy of the KV cache (ops.h: swiglu_fwd / _bwd, shift_bos / _bwd, class_embed_fwd / _bwd,
// to_compute, copy_rows),
// with the formulas of the CPU reference (csrc/cpu/ops_cpu.c); float32 math inside, grid-stride
// loops. shift_bos_bwd sums over the batch in order (b = 0, 1, ...) into dbos: deterministic.
#include "launch.cuh"
#include "common.cuh"

#define EW_BLOCK 256

// 32-bit indices when every index (below span) plus a grid stride fits
static bool ew_idx32(size_t span, unsigned grid) { return span <= (size_t)0xffffffffu - (size_t)grid * EW_BLOCK; }

static __device__ inline float ew_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// h (N, 2F) = [a | b] -> out (N, F) = silu(a) * b
// I: the index type, unsigned when the element count allows (32-bit division is far cheaper)
template <typename T, typename I> __global__ void swiglu_fwd_kernel(T *out, const T *h, I total, int F) {
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const I n = i / (I)F, f = i % (I)F;
        const I ia = n * 2 * (I)F + f;
        const float a = cm_f32(h[ia]), b = cm_f32(h[ia + F]);
        out[i] = cm_from_f32<T>(a * ew_sigmoid(a) * b);
    }
}

// dh (N, 2F) = [dout * b * silu'(a) | dout * silu(a)]
template <typename T, typename I> __global__ void swiglu_bwd_kernel(T *dh, const T *dout, const T *h, I total, int F) {
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const I n = i / (I)F, f = i % (I)F, ia = n * 2 * (I)F + f;
        const float a = cm_f32(h[ia]), b = cm_f32(h[ia + F]), g = cm_f32(dout[i]);
        const float s = ew_sigmoid(a);
        dh[ia + F] = cm_from_f32<T>(g * a * s);
        dh[ia] = cm_from_f32<T>(g * b * (s + a * s * (1.0f - s)));
    }
}

// in (B, T, D) = [bos, x_0 .. x_{T-2}] per sequence
template <typename T, typename I>
__global__ void shift_bos_kernel(T *in, const float *x, const T *bos, I total, int T_, int D) {
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const I d = i % (I)D, t = (i / (I)D) % (I)T_;
        in[i] = t == 0 ? bos[d] : cm_from_f32<T>(x[i - (I)D]);
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

// The KV cache's append: element e of row r of batch b, flattened as i = (b * rows + r) * width + e
template <typename T>
__global__ void copy_rows_kernel(T *dst, size_t dst_row, size_t dst_batch, const T *src, size_t src_row,
                                 size_t src_batch, int rows, int width, size_t total) {
    CM_GRID_STRIDE(i, total) {
        const size_t e = i % (size_t)width, r = (i / (size_t)width) % (size_t)rows, b = i / ((size_t)width * rows);
        dst[b * dst_batch + r * dst_row + e] = src[b * src_batch + r * src_row + e];
    }
}

template <typename T> __global__ void to_compute_kernel(T *dst, const float *src, size_t n) {
    CM_GRID_STRIDE(i, n) dst[i] = cm_from_f32<T>(src[i]);
}

template <typename T> static void swiglu_fwd(Backend *be, T *out, const T *h, size_t total, int F) {
    const unsigned grid = cm_grid_elementwise(be, total, EW_BLOCK);
    if (ew_idx32(2 * total, grid)) {  // h and dh have 2 * total elements
        auto *k = swiglu_fwd_kernel<T, unsigned>;
        GIVT_LAUNCH(k, grid, EW_BLOCK, 0, cuda_stream(be), out, h, (unsigned)total, F);
    } else {
        auto *k = swiglu_fwd_kernel<T, size_t>;
        GIVT_LAUNCH(k, grid, EW_BLOCK, 0, cuda_stream(be), out, h, total, F);
    }
}
template <typename T> static void swiglu_bwd(Backend *be, T *dh, const T *dout, const T *h, size_t total, int F) {
    const unsigned grid = cm_grid_elementwise(be, total, EW_BLOCK);
    if (ew_idx32(2 * total, grid)) {
        auto *k = swiglu_bwd_kernel<T, unsigned>;
        GIVT_LAUNCH(k, grid, EW_BLOCK, 0, cuda_stream(be), dh, dout, h, (unsigned)total, F);
    } else {
        auto *k = swiglu_bwd_kernel<T, size_t>;
        GIVT_LAUNCH(k, grid, EW_BLOCK, 0, cuda_stream(be), dh, dout, h, total, F);
    }
}
template <typename T>
static void shift_bos(Backend *be, T *in, const float *x, const T *bos, size_t total, int T_, int D) {
    const unsigned grid = cm_grid_elementwise(be, total, EW_BLOCK);
    if (ew_idx32(total, grid)) {
        auto *k = shift_bos_kernel<T, unsigned>;
        GIVT_LAUNCH(k, grid, EW_BLOCK, 0, cuda_stream(be), in, x, bos, (unsigned)total, T_, D);
    } else {
        auto *k = shift_bos_kernel<T, size_t>;
        GIVT_LAUNCH(k, grid, EW_BLOCK, 0, cuda_stream(be), in, x, bos, total, T_, D);
    }
}

extern "C" void cuda_swiglu_fwd(Backend *be, cval *out, const cval *h, int N, int F) {
    if (N <= 0 || F <= 0) return;
    const size_t total = (size_t)N * F;
    if (cuda_ctx(be)->dtype == DTYPE_BF16)
        swiglu_fwd(be, (__nv_bfloat16 *)out, (const __nv_bfloat16 *)h, total, F);
    else
        swiglu_fwd(be, (float *)out, (const float *)h, total, F);
}

extern "C" void cuda_swiglu_bwd(Backend *be, cval *dh, const cval *dout, const cval *h, int N, int F) {
    if (N <= 0 || F <= 0) return;
    const size_t total = (size_t)N * F;
    if (cuda_ctx(be)->dtype == DTYPE_BF16)
        swiglu_bwd(be, (__nv_bfloat16 *)dh, (const __nv_bfloat16 *)dout, (const __nv_bfloat16 *)h, total, F);
    else
        swiglu_bwd(be, (float *)dh, (const float *)dout, (const float *)h, total, F);
}

extern "C" void cuda_shift_bos(Backend *be, cval *in, const float *x, const cval *bos, int B, int T_, int D) {
    if (B <= 0 || T_ <= 0 || D <= 0) return;
    const size_t total = (size_t)B * T_ * D;
    if (cuda_ctx(be)->dtype == DTYPE_BF16)
        shift_bos(be, (__nv_bfloat16 *)in, x, (const __nv_bfloat16 *)bos, total, T_, D);
    else
        shift_bos(be, (float *)in, x, (const float *)bos, total, T_, D);
}

extern "C" void cuda_shift_bos_bwd(Backend *be, float *dbos, const cval *din, int B, int T_, int D) {
    if (B <= 0 || T_ <= 0 || D <= 0) return;
    const unsigned grid = cm_div_up((size_t)D, EW_BLOCK);
    if (cuda_ctx(be)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(shift_bos_bwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), dbos, (const T *)din, B, T_, D);
    } else {
        typedef float T;
        GIVT_LAUNCH(shift_bos_bwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), dbos, (const T *)din, B, T_, D);
    }
}

// res[b, 0, c] = table[labels[b], c] for the B*C elements of position 0
template <typename T>
__global__ void class_embed_fwd_kernel(T *res, const T *table, const int32_t *labels, int B, size_t seq, int C) {
    CM_GRID_STRIDE(i, (size_t)B * C) {
        const size_t b = i / (size_t)C, c = i % (size_t)C;
        res[b * seq + c] = table[(size_t)labels[b] * C + c];
    }
}

// One thread per column c: dtable[labels[b], c] += dres[b, 0, c] for b in order (deterministic, and
// no two threads write one element), then dres[b, 0, c] = 0
template <typename T>
__global__ void class_embed_bwd_kernel(float *dtable, T *dres, const int32_t *labels, int B, size_t seq, int C) {
    CM_GRID_STRIDE(c, (size_t)C) {
        for (int b = 0; b < B; b++) {
            T *g = dres + (size_t)b * seq + c;
            dtable[(size_t)labels[b] * C + c] += cm_f32(*g);
            *g = cm_from_f32<T>(0.0f);
        }
    }
}

extern "C" void cuda_class_embed_fwd(Backend *be, cval *res, const cval *table, const int32_t *labels, int B, int T_,
                                     int C) {
    if (B <= 0 || T_ <= 0 || C <= 0) return;
    const size_t seq = (size_t)T_ * C;
    const unsigned grid = cm_grid_elementwise(be, (size_t)B * C, EW_BLOCK);
    if (cuda_ctx(be)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(class_embed_fwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)res, (const T *)table, labels,
                    B, seq, C);
    } else {
        typedef float T;
        GIVT_LAUNCH(class_embed_fwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)res, (const T *)table, labels,
                    B, seq, C);
    }
}

extern "C" void cuda_class_embed_bwd(Backend *be, float *dtable, cval *dres, const int32_t *labels, int B, int T_,
                                     int C) {
    if (B <= 0 || T_ <= 0 || C <= 0) return;
    const size_t seq = (size_t)T_ * C;
    const unsigned grid = cm_grid_elementwise(be, (size_t)C, EW_BLOCK);
    if (cuda_ctx(be)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(class_embed_bwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), dtable, (T *)dres, labels, B, seq,
                    C);
    } else {
        typedef float T;
        GIVT_LAUNCH(class_embed_bwd_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), dtable, (T *)dres, labels, B, seq,
                    C);
    }
}

// Strided copy of compute elements (ops.h copy_rows); source and destination do not overlap
extern "C" void cuda_copy_rows(Backend *be, cval *dst, size_t dst_row, size_t dst_batch, const cval *src,
                               size_t src_row, size_t src_batch, int B, int rows, int width) {
    const size_t total = (size_t)B * rows * width;
    if (total == 0) return;
    const unsigned grid = cm_grid_elementwise(be, total, EW_BLOCK);
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        GIVT_LAUNCH(copy_rows_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)dst, dst_row, dst_batch,
                    (const T *)src, src_row, src_batch, rows, width, total);
    } else {
        typedef float T;
        GIVT_LAUNCH(copy_rows_kernel<T>, grid, EW_BLOCK, 0, cuda_stream(be), (T *)dst, dst_row, dst_batch,
                    (const T *)src, src_row, src_batch, rows, width, total);
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
