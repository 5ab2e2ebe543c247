// common.cuh: device helpers shared by the hand-written kernel groups (norm.cu, elementwise.cu,
// loss.cu, optim.cu; attention.cu may include it too): loads and stores of the compute dtype with
// float math, 16-byte vector loads and stores (cm_pack), warp and block sums with a fixed reduction
// tree (deterministic: the same bits on every run, whatever order the threads run in), and launch
// shapes: 1-D grid-stride loops, flat streams split into an aligned vector part and a scalar rest
// (cm_flat), and row kernels whose lanes cover a row without dividing (cm_rows). Include after
// launch.cuh.
// Owner: K1. Everything here is header-only (inline or templates) and has a cm_ prefix.
#ifndef GIVT_KERNELS_COMMON_CUH
#define GIVT_KERNELS_COMMON_CUH

#include <stddef.h>
#include <stdint.h>

#include "launch.cuh"

// ---- compute dtype <-> float ----------------------------------------------------------------
// Math is float32 inside the kernels; a bf16 store rounds to nearest even (__float2bfloat16).
__device__ inline float cm_f32(float x) { return x; }
__device__ inline float cm_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ inline T cm_from_f32(float x);
template <> __device__ inline float cm_from_f32<float>(float x) { return x; }
template <> __device__ inline __nv_bfloat16 cm_from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// ---- vectors ----------------------------------------------------------------------------------
// cm_pack<T, W>: W consecutive elements aligned to their size, moved by one load or store instruction
// (W * sizeof(T) = 16: LDG.E.128 / STG.E.128; 8: .64). A bandwidth-bound kernel moves units of
// CM_VEC(T) elements (16 bytes: 8 bf16 or 4 float) where the rows and pointers are aligned for it, and
// single elements (W = 1) otherwise, in the same kernel. The host checks the alignment (cm_aligned).
template <typename T, int W> struct alignas(sizeof(T) * W) cm_pack {
    T v[W];
};
#define CM_VEC(T) ((int)(16 / sizeof(T)))
static inline bool cm_aligned(const void *p, size_t bytes) { return (uintptr_t)p % bytes == 0; }

template <int W, typename T> __device__ inline cm_pack<T, W> cm_ld(const T *p) {
    return *reinterpret_cast<const cm_pack<T, W> *>(p);
}
template <int W, typename T> __device__ inline void cm_st(T *p, const cm_pack<T, W> &v) {
    *reinterpret_cast<cm_pack<T, W> *>(p) = v;
}
// The W elements at p (aligned to min(16, W * sizeof(T)) bytes) as floats: 16-byte loads (two for 8
// floats), and their store from floats (bf16: rounded to nearest even).
template <int W, typename T> __device__ inline void cm_ld_f32(float (&f)[W], const T *p) {
    constexpr int P = CM_VEC(T) < W ? CM_VEC(T) : W;  // elements a load
#pragma unroll
    for (int i = 0; i < W; i += P) {
        const cm_pack<T, P> v = cm_ld<P>(p + i);
#pragma unroll
        for (int j = 0; j < P; j++) f[i + j] = cm_f32(v.v[j]);
    }
}
template <int W, typename T> __device__ inline void cm_st_f32(T *p, const float (&f)[W]) {
    constexpr int P = CM_VEC(T) < W ? CM_VEC(T) : W;
#pragma unroll
    for (int i = 0; i < W; i += P) {
        cm_pack<T, P> v;
#pragma unroll
        for (int j = 0; j < P; j++) v.v[j] = cm_from_f32<T>(f[i + j]);
        cm_st<P>(p + i, v);
    }
}
template <int W, typename T> __device__ inline void cm_unpack(float (&f)[W], const cm_pack<T, W> &v) {
#pragma unroll
    for (int j = 0; j < W; j++) f[j] = cm_f32(v.v[j]);
}

// ---- reductions -----------------------------------------------------------------------------
// The sum over the 32 lanes of a warp (all lanes active), by an xor butterfly: every lane ends
// with the same bits (each step adds the same two values in either lane, and + is commutative).
// (double: shuffled as its two 32-bit halves, launch.cuh allowing int/unsigned/float shuffles.)
__device__ inline float cm_shfl_xor(float v, int o) { return __shfl_xor_sync(0xffffffffu, v, o); }
__device__ inline double cm_shfl_xor(double v, int o) {
    union {
        double d;
        int i[2];
    } u;
    u.d = v;
    u.i[0] = __shfl_xor_sync(0xffffffffu, u.i[0], o);
    u.i[1] = __shfl_xor_sync(0xffffffffu, u.i[1], o);
    return u.d;
}
template <typename T> __device__ inline T cm_warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += cm_shfl_xor(v, o);
    return v;
}

// The sum over a block (blockDim.x a multiple of 32, at most 1024, 1-D, every thread calling):
// warp sums, then the warp sums in warp order. Every thread gets the result. Safe to call more
// than once in a row (the leading barrier keeps a later call from overwriting buf while a slower
// warp still reads the earlier call's values).
template <typename T> __device__ inline T cm_block_sum(T v) {
    __shared__ T cm_buf[32];
    v = cm_warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) cm_buf[warp] = v;
    __syncthreads();
    v = lane < nwarps ? cm_buf[lane] : (T)0;
    return cm_warp_sum(v);
}

// ---- launch sizes -----------------------------------------------------------------------------
static inline unsigned cm_div_up(size_t n, size_t d) { return (unsigned)((n + d - 1) / d); }

// Blocks for a grid-stride loop over n elements of an elementwise kernel (no reduction: the
// result does not depend on the grid). Capped: on the GPU a few waves of blocks; in the CPU
// emulation few blocks, so that the loops are exercised and emulated threads stay cheap.
static inline unsigned cm_grid_elementwise(Backend *be, size_t n, unsigned block) {
    const size_t cap = ((CudaCtx *)be->ctx)->emulated ? 8 : 8192;
    size_t g = (n + block - 1) / block;
    if (g > cap) g = cap;
    return g < 1 ? 1u : (unsigned)g;
}

// Grid-stride index helpers (size_t: n can exceed 2^31)
#define CM_GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// ---- flat streams: an aligned vector part and a scalar rest --------------------------------------
// n elements of several arrays, moved as units of W elements from element `head` on: head (< W) is
// the number of leading elements before every array is aligned for a unit at once (arrays whose
// starts are not congruent: head = n, all scalar), nv units follow, and the scalar rest is the head
// and the tail [head + nv * W, n). The same split for the same pointers: deterministic.
typedef struct {
    size_t head, nv, n;
} CmFlat;
// ptrs[i] with elem[i] bytes an element; each must reach a W-element alignment (W * elem[i], at most 16
// bytes) after the same head.
static inline CmFlat cm_flat(size_t n, int W, int count, const void *const *ptrs, const size_t *elem) {
    CmFlat f = {n, 0, n};
    size_t head = 0;
    for (; head < (size_t)W && head < n; head++) {
        int ok = 1;
        for (int i = 0; i < count && ok; i++) {
            const size_t a = (size_t)W * elem[i] < 16 ? (size_t)W * elem[i] : 16;
            ok = !ptrs[i] || cm_aligned((const char *)ptrs[i] + head * elem[i], a);
        }
        if (ok) break;
    }
    if (head < (size_t)W && head < n) f.head = head, f.nv = (n - head) / (size_t)W;
    return f;
}
// The scalar elements of a split: j = 0 .. cm_flat_rest(f) - 1 is element cm_flat_at(f, W, j)
__device__ inline size_t cm_flat_rest(const CmFlat &f, int W) { return f.n - f.nv * (size_t)W; }
__device__ inline size_t cm_flat_at(const CmFlat &f, int W, size_t j) {
    return j < f.head ? j : j + f.nv * (size_t)W;
}

// ---- row kernels: groups of lanes over a row, no division -------------------------------------
// A 1-D block of `block` threads as groups of G = 2^lg lanes (G the power of 2 >= the units of a row,
// at most block), one row per group: R = block / G rows a block. Grid x covers a row's units (all of
// them: a thread has one unit, u0, if below the row's units; a loop over units around the row loop
// makes nvcc split 16-byte stores into 32-bit words), y the rows and z an outer index (a batch), over
// which the kernel loops with the grid's strides (rows n0 + k * nstep, outer z0 + k * zstep); the
// grid is capped there (max_blocks: the grid's blocks at most, unless x alone needs more).
typedef struct {
    unsigned lg;
    dim3 grid;
} CmRows;
// rows_per_thread: rows a thread takes at least (its unrolling); max_blocks: the grid at most
static inline CmRows cm_rows(size_t units, size_t rows, size_t outer, unsigned block, unsigned rows_per_thread,
                             size_t max_blocks) {
    CmRows r;
    r.lg = 0;
    while ((1u << r.lg) < units && (1u << r.lg) < block) r.lg++;
    const size_t G = (size_t)1 << r.lg, R = block / G;
    size_t gx = (units + G - 1) / G, gz = outer, gy = (rows + R * rows_per_thread - 1) / (R * rows_per_thread);
    if (gx < 1) gx = 1;
    if (gz > 65535) gz = 65535;
    if (gz > max_blocks / gx) gz = max_blocks / gx;
    if (gz < 1) gz = 1;
    if (gy > 65535) gy = 65535;
    if (gy > max_blocks / (gx * gz)) gy = max_blocks / (gx * gz);
    if (gy < 1) gy = 1;
    r.grid = dim3((unsigned)gx, (unsigned)gy, (unsigned)gz);
    return r;
}
struct CmRowIdx {
    unsigned u0, ustep, n0, nstep, z0, zstep;
    __device__ explicit CmRowIdx(unsigned lg)
        : u0((blockIdx.x << lg) + (threadIdx.x & ((1u << lg) - 1))), ustep(gridDim.x << lg),
          n0(blockIdx.y * (blockDim.x >> lg) + (threadIdx.x >> lg)), nstep(gridDim.y * (blockDim.x >> lg)),
          z0(blockIdx.z), zstep(gridDim.z) {}
};

// ---- device scratch for partial sums ---------------------------------------------------------
// CudaCtx.scratch when it holds bytes; otherwise memory of the stream's own (cudaMallocAsync),
// given back by cm_scratch_put after the kernels that use it (stream order). *owned says which.
static inline void *cm_scratch_get(Backend *be, size_t bytes, int *owned) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    *owned = 0;
    if (bytes == 0) return NULL;
    if (ctx->scratch && bytes <= ctx->scratch_bytes) return ctx->scratch;
    void *p = NULL;
    CUDA_CHECK(cudaMallocAsync(&p, bytes, cuda_stream(be)));  // (emulated: plain, without a wait)
    *owned = 1;
    return p;
}
static inline void cm_scratch_put(Backend *be, void *p, int owned) {
    if (owned) CUDA_CHECK(cudaFreeAsync(p, cuda_stream(be)));
}

#endif
