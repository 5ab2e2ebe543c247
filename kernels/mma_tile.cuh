// mma_tile.cuh: bf16 tiles in shared memory and the m16n8k16 fragments read from them, for the
// tensor-core attention kernels (attention_mma*.cu). Include after launch.cuh. Prefix mt_.
//
// A tile is ROWS rows of one head (ROWS a multiple of 8) x hdp = hd rounded up to 16 columns, bf16,
// row-major in shared memory with a row stride of ld = hdp + 8 elements: hdp / 8 + 1 16-byte groups,
// an odd number, so the 8 row addresses of one ldmatrix matrix (8 consecutive rows, same columns)
// fall in 8 different 16-byte bank groups (conflict-free at every hd), and so do the 16-byte stores
// of mt_load_tile. Columns [hd, hdp) and rows past the data are zeros; the 8 padding columns are
// never read.
//
// Fragments (kernels/ptx.cuh has the lane-by-lane layouts; g = lane / 4, t = lane % 4):
//   mt_frag_a        A (16 x 16) = tile rows [r0, r0+16) x cols [k0, k0+16)          (Q in S = Q K^T)
//   mt_frag_a_trans  A (16 x 16) with A[m][k] = tile[k0 + k][m0 + m]                  (dS^T -> dS)
//   mt_frag_b_nk     two B (16 x 8): B_j[k][n] = tile[n0 + 8 j + n][k0 + k], j = 0, 1 (K in Q K^T)
//   mt_frag_b_kn     two B (16 x 8): B_j[k][n] = tile[k0 + k][n0 + 8 j + n]          (V in P V)
//   mt_c_to_a        the accumulators of two adjacent 16 x 8 products (columns 16 j .. 16 j + 15 of
//                    a 16-row strip) as the bf16 A fragment of k block j: P stays in registers.
// mt_mma(d, a, b): d (16 x 8, fp32) += A B (mma.sync m16n8k16, bf16 inputs); mt_mma_kn_row: a 16-row
// strip's accumulators over all its columns += A times one 16-row k block of a k-major tile.
// Rows of an accumulator strip: lane holds rows g (d[0], d[1]) and g + 8 (d[2], d[3]), columns
// 2 t, 2 t + 1 of each 8-column block; the 4 lanes of a row are lanes 4 g .. 4 g + 3 (mt_quad_max,
// mt_quad_sum reduce over them).
#ifndef GIVT_KERNELS_MMA_TILE_CUH
#define GIVT_KERNELS_MMA_TILE_CUH

#include <stddef.h>
#include <stdint.h>

#include "launch.cuh"

typedef __nv_bfloat16 mt_bf16;

#define MT_MAX_HD 128

__host__ __device__ inline int mt_hdp(int hd) { return (hd + 15) & ~15; }
__host__ __device__ inline int mt_ld(int hd) { return mt_hdp(hd) + 8; }
// bytes of one tile of `rows` rows
__host__ __device__ inline size_t mt_tile_bytes(int rows, int hd) { return (size_t)rows * mt_ld(hd) * 2; }

// Whether a tile's rows can be copied in 16-byte chunks: hd whole chunks, every row start 16-byte
// aligned (the source pointer and the row stride, in elements).
__device__ inline bool mt_vec16(const mt_bf16 *src, size_t row, int hd) {
    return (hd & 7) == 0 && (row & 7) == 0 && ((uintptr_t)src & 15) == 0;
}

// Loads tile rows [0, ROWS) x cols [0, hdp): source row r at src + r * row (r < nrows), zeros for rows
// >= nrows and columns >= hd. Threads tid of nthreads (a multiple of 8) share the work. Chunks of 16
// bytes: a quarter-warp takes the same chunk of 8 consecutive rows (a band; 16-byte shared stores in
// 8 different bank groups), the next quarter-warp the next chunk, so a warp reads 8 rows x 64 bytes.
// Aligned sources go by cp_async_16 (the caller commits and waits: the data are there after its
// cp_async_wait and a __syncthreads); zeros and the elementwise fallback (odd strides, hd not a
// multiple of 8) are plain shared stores, visible after the same __syncthreads.
template <int ROWS>
__device__ inline void mt_load_tile(mt_bf16 *dst, const mt_bf16 *src, size_t row, int nrows, int hd, int tid,
                                    int nthreads) {
    const int hdp = mt_hdp(hd), ld = hdp + 8, chunks = hdp >> 3;
    const bool vec = mt_vec16(src, row, hd);
    const int rs = tid & 7, walkers = nthreads >> 3;
    // walker w takes (band, chunk) units w, w + walkers, ... (unit u = band u / chunks, chunk u % chunks)
    int band = (tid >> 3) / chunks, c = (tid >> 3) - band * chunks;
    const int dband = walkers / chunks, dc = walkers - dband * chunks;
    for (; band < ROWS / 8; band += dband, c += dc) {
        if (c >= chunks) c -= chunks, band++;
        if (band >= ROWS / 8) break;
        const int r = 8 * band + rs, d0 = 8 * c;
        mt_bf16 *t = dst + r * ld + d0;
        const mt_bf16 *s = src + (size_t)r * row + d0;
        const bool in = r < nrows && d0 < hd;
        if (in && vec) {
            cp_async_16(t, s);
        } else if (!in) {
            *(uint4 *)t = make_uint4(0u, 0u, 0u, 0u);
        } else {
            const int m = hd - d0;
#pragma unroll 1
            for (int e = 0; e < 8; e++) t[e] = e < m ? s[e] : __float2bfloat16(0.0f);
        }
    }
}

// ---- fragments --------------------------------------------------------------------------------
__device__ __forceinline__ void mt_frag_a(unsigned (&a)[4], const mt_bf16 *tile, int ld, int r0, int k0, int lane) {
    ldmatrix_x4(a, tile + (r0 + (lane & 15)) * ld + k0 + 8 * (lane >> 4));
}
__device__ __forceinline__ void mt_frag_a_trans(unsigned (&a)[4], const mt_bf16 *tile, int ld, int m0, int k0,
                                                int lane) {
    ldmatrix_x4_trans(a, tile + (k0 + (lane & 7) + 8 * (lane >> 4)) * ld + m0 + 8 * ((lane >> 3) & 1));
}
// b[0..1]: the B fragment of columns n0 .. n0 + 7, b[2..3]: of n0 + 8 .. n0 + 15
__device__ __forceinline__ void mt_frag_b_nk(unsigned (&b)[4], const mt_bf16 *tile, int ld, int n0, int k0,
                                             int lane) {
    ldmatrix_x4(b, tile + (n0 + (lane & 7) + 8 * (lane >> 4)) * ld + k0 + 8 * ((lane >> 3) & 1));
}
__device__ __forceinline__ void mt_frag_b_kn(unsigned (&b)[4], const mt_bf16 *tile, int ld, int k0, int n0,
                                             int lane) {
    ldmatrix_x4_trans(b, tile + (k0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + n0 + 8 * (lane >> 4));
}

__device__ __forceinline__ unsigned mt_pack(float lo, float hi) {
    return pack_bf16x2(__float2bfloat16(lo), __float2bfloat16(hi));
}
// c0: columns 16 j .. 16 j + 7 of the strip, c1: 16 j + 8 .. 16 j + 15 -> A fragment of k block j
__device__ __forceinline__ void mt_c_to_a(unsigned (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = mt_pack(c0[0], c0[1]);
    a[1] = mt_pack(c0[2], c0[3]);
    a[2] = mt_pack(c1[0], c1[1]);
    a[3] = mt_pack(c1[2], c1[3]);
}

// d += A B for one B fragment (two registers) out of a pair from mt_frag_b_*: half 0 or 1
__device__ __forceinline__ void mt_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[4], int half) {
    const unsigned bh[2] = {b[2 * half], b[2 * half + 1]};
    mma_m16n8k16_bf16(d, a, bh, d);
}

// acc (16 x 16 NT: 2 NT blocks of 8 columns) += A (16 x 16) B, B = rows [k0, k0 + 16) of a k-major
// tile (all its 16 NT columns, mt_frag_b_kn): one k block of O += P V, dV += P^T dO, dQ += dS K, ...
template <int NT>
__device__ __forceinline__ void mt_mma_kn_row(float (&acc)[2 * NT][4], const unsigned (&a)[4], const mt_bf16 *tile,
                                              int ld, int k0, int lane) {
#pragma unroll
    for (int nb = 0; nb < NT; nb++) {
        unsigned b[4];
        mt_frag_b_kn(b, tile, ld, k0, 16 * nb, lane);
        mt_mma(acc[2 * nb], a, b, 0);
        mt_mma(acc[2 * nb + 1], a, b, 1);
    }
}

// reductions over the 4 lanes that hold one accumulator row
__device__ __forceinline__ float mt_quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float mt_quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

#endif
