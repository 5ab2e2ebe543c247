// elementwise.cu: SwiGLU forward and backward, the bos input shift and its backward, the class
// embedding at position 0 and its backward, the float32 -> compute dtype conversion and the strided
// row copy of the KV cache (ops.h: swiglu_fwd / _bwd, shift_bos / _bwd, class_embed_fwd / _bwd,
// to_compute, copy_rows),
// with the formulas of the CPU reference (csrc/cpu/ops_cpu.c); float32 math inside, loops with the
// grid's strides. The bandwidth-bound ones move 16-byte units where the data are aligned for them
// (common.cuh: cm_rows, cm_flat) and divide nothing. shift_bos_bwd sums over the batch in order
// (b = 0, 1, ...) into dbos: deterministic.
#include "launch.cuh"
#include "common.cuh"

#define EW_BLOCK 256
#define EW_UNROLL 2  // rows (or units) a thread loads before it computes and stores them
// Elements a unit of the kernels that read float32 and write the compute dtype (shift_bos,
// to_compute): 4, one 16-byte load of floats and a 16- (float) or 8-byte (bf16) store. (8 bf16 would
// need two 16-byte float loads a lane, at a 32-byte stride: twice the sectors of each request.)
#define EW_WF 4

static __device__ inline float ew_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Grid caps of the elementwise kernels (their results do not depend on the grid): on the GPU a few
// waves of blocks; in the CPU emulation few blocks, so that the loops are exercised and emulated
// threads stay cheap.
static size_t ew_max_blocks(Backend *be) { return cuda_ctx(be)->emulated ? 8 : 8192; }

// Row kernels (SwiGLU, the bos shift, the row copy): a row is `units` units of W elements (W =
// CM_VEC(T), 16 bytes, when the row width is a multiple of it and every row start is aligned; else
// W = 1, in the same kernel) covered by the lanes of a group (common.cuh cm_rows), EW_UNROLL rows a
// thread at once: no division anywhere, offsets (size_t) row * stride.

// h (N, 2F) = [a | b] -> out (N, F) = silu(a) * b
template <typename T, int W>
__device__ inline void swiglu_fwd_rows(T *out, const T *h, unsigned N, unsigned F, const CmRowIdx &ix) {
    if (const unsigned u = ix.u0; u < F / W)
        for (unsigned n = ix.n0; n < N; n += EW_UNROLL * ix.nstep) {
            float a[EW_UNROLL][W] = {}, b[EW_UNROLL][W] = {};
#pragma unroll
            for (int k = 0; k < EW_UNROLL; k++)
                if (n + k * ix.nstep < N) {
                    const T *hr = h + (size_t)(n + k * ix.nstep) * 2 * F + (size_t)u * W;
                    cm_ld_f32<W>(a[k], hr);
                    cm_ld_f32<W>(b[k], hr + F);
                }
#pragma unroll
            for (int k = 0; k < EW_UNROLL; k++)
                if (n + k * ix.nstep < N) {
                    float o[W];
#pragma unroll
                    for (int j = 0; j < W; j++) o[j] = a[k][j] * ew_sigmoid(a[k][j]) * b[k][j];
                    cm_st_f32<W>(out + (size_t)(n + k * ix.nstep) * F + (size_t)u * W, o);
                }
        }
}
template <typename T>
__global__ void swiglu_fwd_kernel(T *out, const T *h, unsigned N, unsigned F, unsigned lg, int vec) {
    const CmRowIdx ix(lg);
    if (vec) swiglu_fwd_rows<T, CM_VEC(T)>(out, h, N, F, ix);
    else swiglu_fwd_rows<T, 1>(out, h, N, F, ix);
}

// dh (N, 2F) = [dout * b * silu'(a) | dout * silu(a)]
template <typename T, int W>
__device__ inline void swiglu_bwd_rows(T *dh, const T *dout, const T *h, unsigned N, unsigned F, const CmRowIdx &ix) {
    if (const unsigned u = ix.u0; u < F / W)
        for (unsigned n = ix.n0; n < N; n += EW_UNROLL * ix.nstep) {
            float a[EW_UNROLL][W] = {}, b[EW_UNROLL][W] = {}, g[EW_UNROLL][W] = {};
#pragma unroll
            for (int k = 0; k < EW_UNROLL; k++)
                if (n + k * ix.nstep < N) {
                    const size_t row = n + k * ix.nstep, ia = row * 2 * F + (size_t)u * W;
                    cm_ld_f32<W>(a[k], h + ia);
                    cm_ld_f32<W>(b[k], h + ia + F);
                    cm_ld_f32<W>(g[k], dout + row * F + (size_t)u * W);
                }
#pragma unroll
            for (int k = 0; k < EW_UNROLL; k++)
                if (n + k * ix.nstep < N) {
                    float da[W], db[W];
#pragma unroll
                    for (int j = 0; j < W; j++) {
                        const float s = ew_sigmoid(a[k][j]);
                        db[j] = g[k][j] * a[k][j] * s;
                        da[j] = g[k][j] * b[k][j] * (s + a[k][j] * s * (1.0f - s));
                    }
                    T *d = dh + (size_t)(n + k * ix.nstep) * 2 * F + (size_t)u * W;
                    cm_st_f32<W>(d + F, db);
                    cm_st_f32<W>(d, da);
                }
        }
}
template <typename T>
__global__ void swiglu_bwd_kernel(T *dh, const T *dout, const T *h, unsigned N, unsigned F, unsigned lg, int vec) {
    const CmRowIdx ix(lg);
    if (vec) swiglu_bwd_rows<T, CM_VEC(T)>(dh, dout, h, N, F, ix);
    else swiglu_bwd_rows<T, 1>(dh, dout, h, N, F, ix);
}

// in (B, T, D) = [bos, x_0 .. x_{T-2}] per sequence: grid y over t, z over b (no division); UR rows
// a thread at once
template <typename T, int W, int UR>
__device__ inline void shift_bos_rows(T *in, const float *x, const T *bos, unsigned B, unsigned T_, unsigned D,
                                      const CmRowIdx &ix) {
    if (const unsigned u = ix.u0; u < D / W)
        for (unsigned b = ix.z0; b < B; b += ix.zstep)
            for (unsigned t = ix.n0; t < T_; t += UR * ix.nstep) {
                float v[UR][W] = {};
#pragma unroll
                for (int k = 0; k < UR; k++) {
                    const unsigned tk = t + k * ix.nstep;
                    if (tk == 0) cm_ld_f32<W>(v[k], bos + (size_t)u * W);
                    else if (tk < T_) cm_ld_f32<W>(v[k], x + ((size_t)b * T_ + tk - 1) * D + (size_t)u * W);
                }
#pragma unroll
                for (int k = 0; k < UR; k++)
                    if (t + k * ix.nstep < T_)
                        cm_st_f32<W>(in + ((size_t)b * T_ + t + k * ix.nstep) * D + (size_t)u * W, v[k]);
            }
}
template <typename T>
__global__ void shift_bos_kernel(T *in, const float *x, const T *bos, unsigned B, unsigned T_, unsigned D, unsigned lg,
                                 int vec) {
    const CmRowIdx ix(lg);
    if (vec) shift_bos_rows<T, EW_WF, EW_UNROLL>(in, x, bos, B, T_, D, ix);
    else shift_bos_rows<T, 1, 1>(in, x, bos, B, T_, D, ix);  // the fallback: no unrolling
}

// dbos (D) += din[b, 0, :] for b = 0 .. B-1, in that order (one thread per d)
template <typename T> __global__ void shift_bos_bwd_kernel(float *dbos, const T *din, int B, int T_, int D) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    float acc = dbos[d];
    for (int b = 0; b < B; b++) acc += cm_f32(din[(size_t)b * T_ * D + d]);
    dbos[d] = acc;
}

// The KV cache's append: row r of batch b, width elements: grid y over r, z over b. A copy of bytes:
// units U of 16 bytes (four 32-bit words: one LDG.E.128 / STG.E.128), or single elements (U = T),
// addressed as U pointers (strides in units: multiples of the unit in the vector path); a thread's
// EW_UNROLL rows are loaded unconditionally (a row past the end loads the last row again, and is
// not stored). (Addressed through T pointers in a loop nest, nvcc splits the stores into words.)
template <typename T, typename U>
__device__ inline void copy_rows_rows(T *dst, size_t dst_row, size_t dst_batch, const T *src, size_t src_row,
                                      size_t src_batch, unsigned B, unsigned rows, unsigned width, const CmRowIdx &ix) {
    constexpr unsigned W = sizeof(U) / sizeof(T);  // elements a unit
    if (const unsigned u = ix.u0; u < width / W)
        for (unsigned b = ix.z0; b < B; b += ix.zstep) {
            const U *s = (const U *)(src + b * src_batch) + u;
            U *d = (U *)(dst + b * dst_batch) + u;
            const size_t ss = src_row / W, ds = dst_row / W;
            for (unsigned r = ix.n0; r < rows; r += EW_UNROLL * ix.nstep) {
                U v[EW_UNROLL];
#pragma unroll
                for (int k = 0; k < EW_UNROLL; k++)
                    v[k] = s[(r + k * ix.nstep < rows ? r + k * ix.nstep : rows - 1) * ss];
#pragma unroll
                for (int k = 0; k < EW_UNROLL; k++)
                    if (r + k * ix.nstep < rows) d[(r + k * ix.nstep) * ds] = v[k];
            }
        }
}
template <typename T>
__global__ void copy_rows_kernel(T *dst, size_t dst_row, size_t dst_batch, const T *src, size_t src_row,
                                 size_t src_batch, unsigned B, unsigned rows, unsigned width, unsigned lg, int vec) {
    const CmRowIdx ix(lg);
    if (vec)
        copy_rows_rows<T, cm_pack<unsigned, 4>>(dst, dst_row, dst_batch, src, src_row, src_batch, B, rows, width, ix);
    else copy_rows_rows<T, T>(dst, dst_row, dst_batch, src, src_row, src_batch, B, rows, width, ix);
}

// dst (n) = src (n) in the compute dtype: units of EW_WF elements (a 16-byte float load, a 16- or
// 8-byte store), EW_UNROLL units a thread at once; the scalar rest of the split
template <typename T> __global__ void to_compute_kernel(T *dst, const float *src, CmFlat f) {
    constexpr int W = EW_WF;
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    T *d = dst + f.head;
    const float *s = src + f.head;
    for (size_t i = t0; i < f.nv; i += EW_UNROLL * step) {
        float v[EW_UNROLL][W] = {};
#pragma unroll
        for (int k = 0; k < EW_UNROLL; k++)
            if (i + k * step < f.nv) cm_ld_f32<W>(v[k], s + (i + k * step) * W);
#pragma unroll
        for (int k = 0; k < EW_UNROLL; k++)
            if (i + k * step < f.nv) cm_st_f32<W>(d + (i + k * step) * W, v[k]);
    }
#pragma unroll 1
    for (size_t j = t0; j < cm_flat_rest(f, W); j += step) {
        const size_t i = cm_flat_at(f, W, j);
        dst[i] = cm_from_f32<T>(src[i]);
    }
}

// 16-byte units for rows of `width` elements: width a multiple of CM_VEC(T) and every buffer 16-byte
// aligned (then so is every row start). Rows, units and batches are 32-bit in the kernels (N, F, the
// widths are ints, and an index plus a grid stride, at most 65535 * 256, stays below 2^32); element
// offsets are size_t products.
template <typename T> static int ew_vec_rows(size_t width, const void *a, const void *b, const void *c) {
    const size_t al = 16;
    return width % CM_VEC(T) == 0 && cm_aligned(a, al) && (!b || cm_aligned(b, al)) && (!c || cm_aligned(c, al));
}

template <typename T> static void swiglu_fwd(Backend *be, T *out, const T *h, int N, int F) {
    const int vec = ew_vec_rows<T>((size_t)F, out, h, NULL);
    const CmRows r = cm_rows((size_t)F / (vec ? CM_VEC(T) : 1), (size_t)N, 1, EW_BLOCK, EW_UNROLL, ew_max_blocks(be));
    GIVT_LAUNCH(swiglu_fwd_kernel<T>, r.grid, EW_BLOCK, 0, cuda_stream(be), out, h, (unsigned)N, (unsigned)F, r.lg,
                vec);
}
template <typename T> static void swiglu_bwd(Backend *be, T *dh, const T *dout, const T *h, int N, int F) {
    const int vec = ew_vec_rows<T>((size_t)F, dh, dout, h);
    const CmRows r = cm_rows((size_t)F / (vec ? CM_VEC(T) : 1), (size_t)N, 1, EW_BLOCK, EW_UNROLL, ew_max_blocks(be));
    GIVT_LAUNCH(swiglu_bwd_kernel<T>, r.grid, EW_BLOCK, 0, cuda_stream(be), dh, dout, h, (unsigned)N, (unsigned)F,
                r.lg, vec);
}
template <typename T> static void shift_bos(Backend *be, T *in, const float *x, const T *bos, int B, int T_, int D) {
    // units of EW_WF: x 16-byte aligned, in and bos aligned to EW_WF elements
    const int vec = D % EW_WF == 0 && cm_aligned(x, 16) && cm_aligned(in, EW_WF * sizeof(T)) &&
                    cm_aligned(bos, EW_WF * sizeof(T));
    const CmRows r = cm_rows((size_t)D / (vec ? EW_WF : 1), (size_t)T_, (size_t)B, EW_BLOCK, EW_UNROLL,
                             ew_max_blocks(be));
    GIVT_LAUNCH(shift_bos_kernel<T>, r.grid, EW_BLOCK, 0, cuda_stream(be), in, x, bos, (unsigned)B, (unsigned)T_,
                (unsigned)D, r.lg, vec);
}

extern "C" void cuda_swiglu_fwd(Backend *be, cval *out, const cval *h, int N, int F) {
    if (N <= 0 || F <= 0) return;
    if (cuda_ctx(be)->dtype == DTYPE_BF16)
        swiglu_fwd(be, (__nv_bfloat16 *)out, (const __nv_bfloat16 *)h, N, F);
    else
        swiglu_fwd(be, (float *)out, (const float *)h, N, F);
}

extern "C" void cuda_swiglu_bwd(Backend *be, cval *dh, const cval *dout, const cval *h, int N, int F) {
    if (N <= 0 || F <= 0) return;
    if (cuda_ctx(be)->dtype == DTYPE_BF16)
        swiglu_bwd(be, (__nv_bfloat16 *)dh, (const __nv_bfloat16 *)dout, (const __nv_bfloat16 *)h, N, F);
    else
        swiglu_bwd(be, (float *)dh, (const float *)dout, (const float *)h, N, F);
}

extern "C" void cuda_shift_bos(Backend *be, cval *in, const float *x, const cval *bos, int B, int T_, int D) {
    if (B <= 0 || T_ <= 0 || D <= 0) return;
    if (cuda_ctx(be)->dtype == DTYPE_BF16)
        shift_bos(be, (__nv_bfloat16 *)in, x, (const __nv_bfloat16 *)bos, B, T_, D);
    else
        shift_bos(be, (float *)in, x, (const float *)bos, B, T_, D);
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
template <typename T>
static void copy_rows(Backend *be, T *dst, size_t dst_row, size_t dst_batch, const T *src, size_t src_row,
                      size_t src_batch, int B, int rows, int width) {
    const size_t W = CM_VEC(T);
    const int vec = ew_vec_rows<T>((size_t)width, dst, src, NULL) && dst_row % W == 0 && dst_batch % W == 0 &&
                    src_row % W == 0 && src_batch % W == 0;
    const CmRows r = cm_rows((size_t)width / (vec ? W : 1), (size_t)rows, (size_t)B, EW_BLOCK, EW_UNROLL,
                             ew_max_blocks(be));
    GIVT_LAUNCH(copy_rows_kernel<T>, r.grid, EW_BLOCK, 0, cuda_stream(be), dst, dst_row, dst_batch, src, src_row,
                src_batch, (unsigned)B, (unsigned)rows, (unsigned)width, r.lg, vec);
}
extern "C" void cuda_copy_rows(Backend *be, cval *dst, size_t dst_row, size_t dst_batch, const cval *src,
                               size_t src_row, size_t src_batch, int B, int rows, int width) {
    if (B <= 0 || rows <= 0 || width <= 0) return;
    if (cuda_ctx(be)->dtype == DTYPE_BF16)
        copy_rows(be, (__nv_bfloat16 *)dst, dst_row, dst_batch, (const __nv_bfloat16 *)src, src_row, src_batch, B,
                  rows, width);
    else
        copy_rows(be, (float *)dst, dst_row, dst_batch, (const float *)src, src_row, src_batch, B, rows, width);
}

// dst (n) = src in the compute dtype: bf16 rounded to nearest even, or a float32 copy (nothing
// when dst is src)
template <typename T> static void to_compute(Backend *be, T *dst, const float *src, size_t n) {
    const void *ptrs[2] = {dst, src};
    const size_t elem[2] = {sizeof(T), sizeof(float)};
    const CmFlat f = cm_flat(n, EW_WF, 2, ptrs, elem);
    const size_t rest = n - f.nv * EW_WF, units = (f.nv + EW_UNROLL - 1) / EW_UNROLL;
    const size_t work = units > rest ? units : rest;  // threads with something to do
    GIVT_LAUNCH(to_compute_kernel<T>, cm_grid_elementwise(be, work, EW_BLOCK), EW_BLOCK, 0, cuda_stream(be), dst, src,
                f);
}
extern "C" void cuda_to_compute(Backend *be, cval *dst, const float *src, size_t n) {
    if (n == 0) return;
    if (cuda_ctx(be)->dtype == DTYPE_BF16) {
        to_compute(be, (__nv_bfloat16 *)dst, src, n);
    } else {
        if ((const void *)dst == (const void *)src) return;
        to_compute(be, (float *)dst, src, n);
    }
}
