// launch.cuh: included FIRST by every kernels/*.cu. One source, two builds:
//   - nvcc (the GPU build): <cuda_runtime.h>, <cuda_bf16.h>;
//   - g++ -x c++ -DGIVT_CUDA_EMU (the CPU emulation, kernels/emu/): kernels/emu/cuda_emu.h, which
//     gives the same names on the CPU (blocks run one at a time, the threads of a block as fibers).
// and, in both, the project's C headers (with C linkage), kernels/cuda_backend.h and these macros:
//
//   GIVT_LAUNCH(kernel, grid, block, smem_bytes, stream, args...)
//       kernel<<<grid, block, smem_bytes, stream>>>(args...), then cudaGetLastError checked: a failure
//       exits naming the kernel and file:line. Every launch goes through it (g++ cannot parse <<<>>>).
//       A templated kernel whose arguments hold a comma: name it through a local pointer first,
//       e.g. `auto *k = my_kernel<float, 4>; GIVT_LAUNCH(k, ...)`.
//   CUDA_CHECK(call)
//       a runtime call whose cudaError_t is checked: a failure exits naming the call, file:line, the
//       error and a hint (e.g. "no usable NVIDIA driver" for cudaErrorInsufficientDriver).
//   GIVT_DYNAMIC_SMEM(type, name)
//       inside a kernel: `type *name` = the launch's dynamic shared memory (smem_bytes of GIVT_LAUNCH),
//       aligned to 16 bytes. Use it once per kernel, at function scope.
//   cuda_stream(be), cuda_ctx(be)
//       the cudaStream_t every op is enqueued on, and the backend's CudaCtx.
//
// What kernel code may use (the emulation implements exactly this; anything else is a compile error
// or wrong under emulation, so do not use it):
//   - threadIdx, blockIdx, blockDim, gridDim (x, y, z); warpSize (32);
//   - __syncthreads() (every thread of the block must reach the same barrier: a divergent barrier is
//     an error under emulation);
//   - __shfl_sync, __shfl_xor_sync, __shfl_down_sync, __shfl_up_sync (int, unsigned, float), with the
//     full mask 0xffffffff or an explicit mask of lanes that all make the same call (a lane outside
//     the mask, or a missing lane, is an error under emulation); width argument: 32 or omitted;
//   - __ballot_sync, __any_sync, __all_sync (same mask rules);
//   - static __shared__ arrays (function scope, no initialiser) and GIVT_DYNAMIC_SMEM;
//   - __nv_bfloat16 with __float2bfloat16, __float2bfloat16_rn, __bfloat162float (no bf16 arithmetic
//     operators: convert to float, compute, convert back);
//   - math on float: expf, logf, log1pf, sqrtf, rsqrtf, fmaxf, fminf, fabsf, __expf, __fdividef,
//     and the ordinary operators; double arithmetic where an op needs it;
//   - atomicAdd on int / unsigned (no floating-point atomics: reductions are deterministic);
//   - __device__ / __forceinline__ helpers, __restrict__, __launch_bounds__, #pragma unroll;
//   - WMMA (nvcuda::wmma of <mma.h>, included here), through the documented API only, m16n16k16:
//     fragment<matrix_a | matrix_b, 16, 16, 16, __nv_bfloat16, row_major | col_major>,
//     fragment<accumulator, 16, 16, 16, float>, fill_fragment, load_matrix_sync (the accumulator's with
//     a layout_t), store_matrix_sync (float), mma_sync. load/store/mma_sync are warp collectives: all
//     32 lanes of the warp at the same call (convergent code; an exited or diverged lane is an error
//     under emulation), with the same pointer, ldm and layout; the pointer 32-byte aligned (dynamic
//     shared memory is only 16: round up), ldm a multiple of 16 bytes. Which lane holds which element
//     is unspecified (the emulation draws a random mapping per launch): touch a fragment's x[] only
//     elementwise with operations that need no mapping (scaling all, converting all), never as rows or
//     columns, and never move x[] between fragments of different uses. Memory written by
//     store_matrix_sync and read by other lanes (or written by other lanes and read by
//     load_matrix_sync) needs a __syncthreads between, as any exchange through shared memory.
//   - the PTX instructions of kernels/ptx.cuh, through its functions only (its header documents the
//     fragments): mma_m16n8k16_bf16 (mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32),
//     ldmatrix_x1/x2/x4{_trans} (ldmatrix.sync.aligned.m8n8.x1/x2/x4{.trans}.shared.b16): warp
//     collectives, all 32 lanes at the same call (an exited or diverged lane is an error under
//     emulation), ldmatrix's row addresses 16-byte aligned in shared memory; cp_async_16
//     (cp.async.cg.shared.global, 16 bytes, both addresses 16-byte aligned, global -> shared) with
//     cp_async_commit, cp_async_wait_group<N>, cp_async_wait_all: the destination may be read only
//     after the wait that covers the copy (and, by other threads, a __syncthreads after it): under
//     emulation a copy lands at a random moment before its wait;
// Not allowed: inline PTX outside ptx.cuh, cooperative groups, other warp-level matrix ops (wgmma,
// TMA / cp.async.bulk, mma shapes or types other than ptx.cuh's, WMMA
// shapes or types other than the above), implicit warp-synchronous
// code (lanes exchanging through shared memory without a barrier: use the *_sync intrinsics),
// __syncwarp, clock(), printf from device code, dynamic parallelism, floating-point atomics.
// Results under emulation differ from the GPU in FMA contraction and ulps of expf/rsqrtf: tests
// compare with tolerances.
#ifndef GIVT_LAUNCH_CUH
#define GIVT_LAUNCH_CUH

#ifdef GIVT_CUDA_EMU
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>
#endif
#include "ptx.cuh"

#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "backend.h"
#include "ops.h"
#include "util.h"
}
#include "cuda_backend.h"

// A hint for the errors a user can do something about.
static inline const char *givt_cuda_hint(cudaError_t e) {
    switch (e) {
    case cudaErrorInsufficientDriver: return "no usable NVIDIA driver";
    case cudaErrorNoDevice: return "no CUDA device visible (CUDA_VISIBLE_DEVICES?)";
    case cudaErrorMemoryAllocation: return "out of GPU memory: a smaller batch_size or model";
    case cudaErrorInvalidConfiguration: return "invalid launch configuration (grid, block or shared memory size)";
    case cudaErrorLaunchOutOfResources: return "too many threads or registers per block for this kernel";
    case cudaErrorIllegalAddress: return "a kernel accessed memory out of bounds: run it under compute-sanitizer";
    case cudaErrorNoKernelImageForDevice: return "the binary has no code for this GPU (built for sm_90)";
    case cudaErrorUnsupportedPtxVersion: return "the driver is older than the CUDA toolkit that built this";
    case cudaErrorInvalidValue: return "an invalid argument (a size, pointer or enum)";
    default: return "";
    }
}

[[noreturn]] static inline void givt_cuda_fail(const char *what, const char *name, const char *file, int line,
                                               cudaError_t e) {
    const char *hint = givt_cuda_hint(e);
    givt_die_at(file, line, "CUDA error: %s %s: %s (%s)%s%s", what, name, cudaGetErrorString(e), cudaGetErrorName(e),
                *hint ? ": " : "", hint);
}

#define CUDA_CHECK(call)                                                               \
    do {                                                                               \
        cudaError_t givt_cuda_err_ = (call);                                           \
        if (givt_cuda_err_ != cudaSuccess)                                             \
            givt_cuda_fail("call", #call, __FILE__, __LINE__, givt_cuda_err_);         \
    } while (0)

#ifdef GIVT_CUDA_EMU
#define GIVT_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                                      \
    do {                                                                                               \
        givt_emu::launch(#kernel, __FILE__, __LINE__, (grid), (block), (smem_bytes), (stream), kernel, \
                         __VA_ARGS__);                                                                 \
        cudaError_t givt_cuda_err_ = cudaGetLastError();                                               \
        if (givt_cuda_err_ != cudaSuccess)                                                             \
            givt_cuda_fail("launch of kernel", #kernel, __FILE__, __LINE__, givt_cuda_err_);           \
    } while (0)
#define GIVT_DYNAMIC_SMEM(type, name) type *name = (type *)givt_emu::dynamic_smem()
#else
#define GIVT_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                                      \
    do {                                                                                               \
        kernel<<<(grid), (block), (smem_bytes), (stream)>>>(__VA_ARGS__);                              \
        cudaError_t givt_cuda_err_ = cudaGetLastError();                                               \
        if (givt_cuda_err_ != cudaSuccess)                                                             \
            givt_cuda_fail("launch of kernel", #kernel, __FILE__, __LINE__, givt_cuda_err_);           \
    } while (0)
#define GIVT_DYNAMIC_SMEM(type, name)                              \
    extern __shared__ __align__(16) unsigned char givt_smem_[];    \
    type *name = (type *)givt_smem_
#endif

static inline CudaCtx *cuda_ctx(Backend *be) { return (CudaCtx *)be->ctx; }
static inline cudaStream_t cuda_stream(Backend *be) { return (cudaStream_t)((CudaCtx *)be->ctx)->stream; }

#endif
