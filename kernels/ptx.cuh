// ptx.cuh: the warp-level tensor-core instructions that fast attention is built from, as device
// functions. Included by launch.cuh (so by every kernels/*.cu). One source, two builds:
//   - nvcc: inline PTX (mma.sync, ldmatrix, cp.async; sm_80+, here sm_90);
//   - g++ -DGIVT_CUDA_EMU: kernels/emu/cuda_emu.cpp implements the PTX ISA's definitions ("Warp Level
//     Matrix Multiply-Accumulate Instructions": the m16n8k16 fragments, ldmatrix, cp.async), with the
//     emulator's misuse checks.
//
// mma_m16n8k16_bf16(d, a, b, c)       mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
//     D (16 x 8, f32) = A (16 x 16, bf16, row) B (16 x 8, bf16, col) + C (16 x 8, f32). A warp
//     collective: all 32 lanes of the warp together (convergent code). d may be c. Fragments (PTX ISA,
//     "Matrix Fragments for mma.m16n8k16 with floating point type"), with g = lane >> 2 (groupID) and
//     t = lane % 4 (threadID_in_group); each .b32 register holds two bf16, the lower-indexed element
//     in the low 16 bits:
//       a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//       a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//       b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//       c[0], c[1] = C[g][2t, 2t+1]     c[2], c[3] = C[g+8][2t, 2t+1]     (d likewise)
//     Emulated: products of bf16 are exact in float; each d = c + sum over k = 0..15 in increasing k,
//     accumulated in float (the GPU's internal order is unspecified: compare with tolerance).
// ldmatrix_x1/x2/x4(r, p), ldmatrix_x1/x2/x4_trans(r, p)
//     ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16: 1, 2 or 4 8x8 matrices of 16-bit
//     elements from shared memory. Each lane passes one row address p (16 bytes: 8 elements): lanes
//     0-7 the rows of matrix 0, 8-15 matrix 1, 16-23 matrix 2, 24-31 matrix 3 (x1 uses only lanes
//     0-7's addresses, x2 lanes 0-15; the others are ignored). Lane l receives in r[i], for matrix i,
//     elements (row l / 4, cols 2 (l % 4) and 2 (l % 4) + 1) (low half first); .trans the transpose:
//     (rows 2 (l % 4) and 2 (l % 4) + 1, col l / 4). A warp collective; every used address 16-byte
//     aligned and in shared memory (checked under emulation). So r[] of an x4 on the rows of a 16x16
//     row-major tile (lane l -> row l % 16, col 8 (l / 16)) is exactly a[] of mma_m16n8k16_bf16.
// cp_async_16(dst, src)               cp.async.cg.shared.global [dst], [src], 16
//     copies 16 bytes from global memory (src, 16-byte aligned, inside a cudaMalloc allocation under
//     emulation) to shared memory (dst, 16-byte aligned) asynchronously: per thread, the copy is in
//     the thread's open group until cp_async_commit() closes it; cp_async_wait_group<N>() waits until
//     at most the N most recent committed groups of this thread are pending; cp_async_wait_all()
//     waits for every copy (committed or not). Another thread sees the data only after its issuer's
//     wait and a __syncthreads. Emulated: a copy lands at a random moment between its issue and the
//     wait that covers it (forward and reverse fiber orders: at the wait; random order: at any
//     scheduling point before, drawn by the launch's seed), so a read of the destination before the
//     wait reads the poison (NaN) in some order.
// Not here (not emulated, so not allowed): wgmma, TMA (cp.async.bulk), other mma shapes and types.
#ifndef GIVT_PTX_CUH
#define GIVT_PTX_CUH

#ifdef GIVT_CUDA_EMU
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif
#include <string.h>

#ifdef GIVT_CUDA_EMU
// (file, line: the caller's, for the emulator's messages; kernels never pass them)
__device__ inline void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                         const float (&c)[4], const char *file = __builtin_FILE(),
                                         int line = __builtin_LINE()) {
    givt_emu::PtxMma m = {d, a, b, c};
    givt_emu::warp_collective("mma.sync.m16n8k16", file, line, givt_emu::ptx_mma, &m);
}
#define GIVT_PTX_LDMATRIX(fn, n, tr, name)                                                                   \
    __device__ inline void fn(unsigned (&r)[n], const void *p, const char *file = __builtin_FILE(),          \
                              int line = __builtin_LINE()) {                                                 \
        givt_emu::PtxLdmatrix m = {r, p, n, tr};                                                             \
        givt_emu::warp_collective(name, file, line, givt_emu::ptx_ldmatrix, &m);                             \
    }
GIVT_PTX_LDMATRIX(ldmatrix_x1, 1, 0, "ldmatrix.x1")
GIVT_PTX_LDMATRIX(ldmatrix_x2, 2, 0, "ldmatrix.x2")
GIVT_PTX_LDMATRIX(ldmatrix_x4, 4, 0, "ldmatrix.x4")
GIVT_PTX_LDMATRIX(ldmatrix_x1_trans, 1, 1, "ldmatrix.x1.trans")
GIVT_PTX_LDMATRIX(ldmatrix_x2_trans, 2, 1, "ldmatrix.x2.trans")
GIVT_PTX_LDMATRIX(ldmatrix_x4_trans, 4, 1, "ldmatrix.x4.trans")
#undef GIVT_PTX_LDMATRIX
__device__ inline void cp_async_16(void *dst, const void *src, const char *file = __builtin_FILE(),
                                   int line = __builtin_LINE()) {
    givt_emu::cp_async(dst, src, file, line);
}
__device__ inline void cp_async_commit(void) { givt_emu::cp_async_commit(); }
template <int N>
__device__ inline void cp_async_wait_group(void) {
    static_assert(N >= 0, "cp.async.wait_group N: N >= 0");
    givt_emu::cp_async_wait(N);
}
__device__ inline void cp_async_wait_all(void) { givt_emu::cp_async_wait(-1); }

#else  // nvcc: inline PTX

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                                  const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}
__device__ __forceinline__ unsigned givt_ptx_smem(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void ldmatrix_x1(unsigned (&r)[1], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(givt_ptx_smem(p))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(givt_ptx_smem(p)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(givt_ptx_smem(p)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned (&r)[1], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0])
                 : "r"(givt_ptx_smem(p)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[2], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(givt_ptx_smem(p)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(givt_ptx_smem(p)) : "memory");
}
__device__ __forceinline__ void cp_async_16(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(givt_ptx_smem(dst)),
                 "l"(__cvta_generic_to_global(src))
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait_group(void) {
    static_assert(N >= 0, "cp.async.wait_group N: N >= 0");
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all(void) { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
#endif

// A 32-bit register of two bf16 (lo: the lower-indexed element), as the fragments hold them.
__device__ __forceinline__ unsigned pack_bf16x2(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    unsigned short l, h;
    memcpy(&l, &lo, 2);
    memcpy(&h, &hi, 2);
    return (unsigned)l | (unsigned)h << 16;
}

#endif
