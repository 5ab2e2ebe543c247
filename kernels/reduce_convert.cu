// reduce_convert.cu: the gradients between ranks in bfloat16 ([train] grad_reduce_dtype = bf16; used by
// kernels/dist_nccl.cu): float32 -> bf16 (round to nearest even) before the reduction, and the bf16
// sums -> float32 times a scale (1 / world_size: the mean) after it. Elementwise (one rounding, or one
// float32 product, per element: the same bits as the CPU's half_f32_to_bf16 and
// half_bf16_to_f32(x) * scale), 16-byte loads and stores of 8-element units where aligned (common.cuh
// cm_flat), grid-stride, size_t indices, on the stream given (the
// communicator's own, not the backend's). Built for the GPU and for the emulation (tests/test_reduce_convert.cu).
#include "launch.cuh"

#include "common.cuh"

#define RC_BLOCK 256
#define RC_W 8  // elements a unit: 8 bf16 (one 16-byte load or store) and 8 floats (two)

// Units of RC_W elements where both arrays are aligned for them (cm_flat: 16-byte loads and stores
// of the floats, 16 bytes of bf16), the scalar rest one element at a time: the same rounding either way.
__global__ void rc_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, CmFlat f) {
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    for (size_t u = t0; u < f.nv; u += step) {
        const size_t i = f.head + u * RC_W;
        float v[RC_W];
        cm_ld_f32<RC_W>(v, src + i);
        cm_st_f32<RC_W>(dst + i, v);  // (round to nearest even)
    }
    for (size_t j = t0; j < cm_flat_rest(f, RC_W); j += step) {
        const size_t i = cm_flat_at(f, RC_W, j);
        dst[i] = __float2bfloat16_rn(src[i]);
    }
}

__global__ void rc_from_bf16_kernel(float *dst, const __nv_bfloat16 *src, CmFlat f, float scale) {
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    for (size_t u = t0; u < f.nv; u += step) {
        const size_t i = f.head + u * RC_W;
        float v[RC_W];
        cm_ld_f32<RC_W>(v, src + i);
#pragma unroll
        for (int k = 0; k < RC_W; k++) v[k] *= scale;
        cm_st_f32<RC_W>(dst + i, v);
    }
    for (size_t j = t0; j < cm_flat_rest(f, RC_W); j += step) {
        const size_t i = cm_flat_at(f, RC_W, j);
        dst[i] = __bfloat162float(src[i]) * scale;
    }
}

// the split of n elements of a float32 and a bf16 array, and a grid for its units and its rest
static CmFlat rc_flat(const void *f32, const void *bf16, size_t n) {
    const void *ptrs[2] = {f32, bf16};
    const size_t elem[2] = {4, 2};
    return cm_flat(n, RC_W, 2, ptrs, elem);
}
static unsigned rc_grid(Backend *be, const CmFlat &f) {
    const size_t rest = f.n - f.nv * RC_W;
    return cm_grid_elementwise(be, f.nv > rest ? f.nv : rest, RC_BLOCK);
}

extern "C" void cuda_grads_to_bf16(Backend *be, void *stream, void *dst, const float *src, size_t n) {
    if (n == 0) return;
    const CmFlat f = rc_flat(src, dst, n);
    GIVT_LAUNCH(rc_to_bf16_kernel, rc_grid(be, f), RC_BLOCK, 0, (cudaStream_t)stream, (__nv_bfloat16 *)dst, src, f);
}

extern "C" void cuda_grads_from_bf16(Backend *be, void *stream, float *dst, const void *src, size_t n, float scale) {
    if (n == 0) return;
    const CmFlat f = rc_flat(dst, src, n);
    GIVT_LAUNCH(rc_from_bf16_kernel, rc_grid(be, f), RC_BLOCK, 0, (cudaStream_t)stream, dst,
                (const __nv_bfloat16 *)src, f, scale);
}
