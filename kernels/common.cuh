// common.cuh: device helpers shared by the hand-written kernel groups (norm.cu, elementwise.cu,
// loss.cu, optim.cu; attention.cu may include it too): loads and stores of the compute dtype with
// float math, warp and block sums with a fixed reduction tree (deterministic: the same bits on
// every run, whatever order the threads run in), and 1-D launch sizes. Include after launch.cuh.
// Owner: K1. Everything here is header-only (inline or templates) and has a cm_ prefix.
#ifndef GIVT_KERNELS_COMMON_CUH
#define GIVT_KERNELS_COMMON_CUH

#include <stddef.h>

#include "launch.cuh"

// ---- compute dtype <-> float ----------------------------------------------------------------
// Math is float32 inside the kernels; a bf16 store rounds to nearest even (__float2bfloat16).
__device__ inline float cm_f32(float x) { return x; }
__device__ inline float cm_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ inline T cm_from_f32(float x);
template <> __device__ inline float cm_from_f32<float>(float x) { return x; }
template <> __device__ inline __nv_bfloat16 cm_from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

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

// ---- device scratch for partial sums ---------------------------------------------------------
// CudaCtx.scratch when it holds bytes; otherwise memory of the stream's own (cudaMallocAsync),
// given back by cm_scratch_put after the kernels that use it (stream order). *owned says which.
static inline void *cm_scratch_get(Backend *be, size_t bytes, int *owned) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    *owned = 0;
    if (bytes == 0) return NULL;
    if (ctx->scratch && bytes <= ctx->scratch_bytes) return ctx->scratch;
    void *p = NULL;
#ifdef GIVT_CUDA_EMU  // the emulation's streams are synchronous: the same thing
    CUDA_CHECK(cudaMalloc(&p, bytes));
#else
    CUDA_CHECK(cudaMallocAsync(&p, bytes, cuda_stream(be)));
#endif
    *owned = 1;
    return p;
}
static inline void cm_scratch_put(Backend *be, void *p, int owned) {
#ifdef GIVT_CUDA_EMU
    (void)be;
    if (owned) CUDA_CHECK(cudaFree(p));
#else
    if (owned) CUDA_CHECK(cudaFreeAsync(p, cuda_stream(be)));
#endif
}

#endif
