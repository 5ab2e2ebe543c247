// attention_mma_fwd.cu: the bf16 causal attention forward, FlashAttention-2 style, on mma.sync
// m16n8k16 (kernels/ptx.cuh) with the tiles and fragments of kernels/mma_tile.cuh. q and k arrive
// already rotated (attention.cu runs RoPE first); the kernel writes out (B, Tq, H * hd) dense bf16 and
// lse (B, H, Tq) = max + log(sum) of the scaled scores per query row (the backward's L).
//
// Work split: grid (ceil(Tq / 64), H, B), 128 threads = 4 warps; a block owns a 64-query tile of one
// head, warp w its rows 16 w .. 16 w + 15 (query i at position pos0 + i sees keys 0 .. pos0 + i);
// blockIdx.x 0 takes the last query tile (the most work starts first).
// hd is 1 .. 128, padded with zeros to hdp = 16 NT; the kernel is a template on NT = hdp / 16 (1 .. 8)
// so that every fragment array has a compile-time size and stays in registers.
//
// Shared memory (dynamic, 5 tiles of 64 rows x (hdp + 8) bf16, mt_tile_bytes): Q, K[2], V[2].
// Pipeline, per key tile kt of 64 keys (keys 64 kt ..):
//   prologue  cp.async Q, K[0], V[0]; commit
//   loop kt   cp.async K, V of tile kt + 1 into the other buffer; commit; wait_group<1> (tile kt has
//             landed, kt + 1 stays in flight; wait_group<0> on the last tile); __syncthreads;
//             (kt = 0: each warp ldmatrix's its 16 Q rows into NT A fragments, kept to the end)
//             compute on tile kt; __syncthreads (the buffer is free for the copy of tile kt + 2).
// Tiles above the block's diagonal are never loaded (the loop stops at the last key the block's last
// query sees); inside a tile a warp skips the 16-key blocks none of its rows sees (warp-uniform).
//
// Fragment flow of one warp and one key tile (g = lane / 4, t = lane % 4; a lane holds rows g and
// g + 8 of the warp's strip):
//   S (16 x 64, fp32: s[8][4], 8-key blocks) = Q (16 x hdp: qa[NT][4]) K^T, K's B fragments by
//     mt_frag_b_nk (ldmatrix.x4 on the K tile rows: two 8-key blocks x 16 dims per load);
//   scale 1/sqrt(hd) (folded into the exponent), causal mask (keys past the row's position, or past
//     Tk, get -1e30: a finite -inf, so no -inf - -inf = NaN for padding rows), online softmax:
//     m (running max, scaled units) per row by mt_quad_max, p = exp(s scale - m), O and the lane's
//     partial row sum l rescaled by exp(m_old - m_new);
//   P (bf16) = mt_c_to_a of the S accumulators, per 16-key block: an A fragment straight from the
//     registers (P never goes through shared memory);
//   O (16 x hdp, fp32: o[2 NT][4]) += P V, V's B fragments by mt_frag_b_kn (ldmatrix.x4.trans).
// Epilogue: l summed over the row's 4 lanes, O / l rounded to bf16 and staged in the Q tile (4-byte
// conflict-free stores), then written to global 16 bytes a thread (mt_load_tile's walk: a quarter-warp
// takes one 16-byte chunk of 8 rows, conflict-free in shared memory, whole sectors in global), or
// elementwise when hd % 8 != 0 or out is not 16-byte aligned; lse for rows < Tq.
// Padding rows (past Tq in the last tile) are zero Q rows, computed and never stored.
#include "launch.cuh"

#include <math.h>
#include <stdint.h>

#include "attention_mma.cuh"
#include "mma_tile.cuh"

#define AMF_BQ 64          // query rows per block
#define AMF_BK 64          // keys per tile
#define AMF_THREADS 128    // 4 warps, 16 query rows each
#define AMF_NEG (-1.0e30f)  // masked score: a finite -inf

namespace {

// The shape of one call as the kernel sees it (strides in elements, AttnShape's).
struct AmfArgs {
    mt_bf16 *out;
    float *lse;
    const mt_bf16 *q, *k, *v;
    int H, hd, Tq, Tk, pos0;
    size_t q_row, q_batch, kv_row, kv_batch;
    float scale;  // 1 / sqrt(hd)
};

// One warp's state: rows 16 w .. 16 w + 15 of the block's tile.
template <int NT>
struct AmfWarp {
    unsigned qa[NT][4];  // Q (16 x hdp) as NT A fragments (k blocks of 16 dims)
    float o[2 * NT][4];  // O (16 x hdp) accumulators, 8-dim blocks
    float m[2], l[2];    // rows g, g + 8: running max (scaled), the lane's part of the sum
};

__device__ __forceinline__ int amf_min(int a, int b) { return a < b ? a : b; }

// Issues the cp.async of key tile k0 (keys k0 .. k0 + 63, zeros past Tk) into Ks, Vs.
__device__ __forceinline__ void amf_load_kv(mt_bf16 *Ks, mt_bf16 *Vs, const mt_bf16 *kb, const mt_bf16 *vb,
                                            const AmfArgs &a, int k0, int tid) {
    const size_t off = (size_t)k0 * a.kv_row;
    mt_load_tile<AMF_BK>(Ks, kb + off, a.kv_row, a.Tk - k0, a.hd, tid, AMF_THREADS);
    mt_load_tile<AMF_BK>(Vs, vb + off, a.kv_row, a.Tk - k0, a.hd, tid, AMF_THREADS);
}

// s (16 x 64, 8-key blocks) = Q K^T for the 16-key blocks jb < nkb; the others AMF_NEG.
template <int NT>
__device__ __forceinline__ void amf_scores(float (&s)[8][4], const unsigned (&qa)[NT][4], const mt_bf16 *Ks,
                                           int ld, int nkb, int lane) {
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[j][e] = (j >> 1) < nkb ? 0.0f : AMF_NEG;
#pragma unroll
    for (int kk = 0; kk < NT; kk++) {
#pragma unroll
        for (int jb = 0; jb < 4; jb++) {
            if (jb < nkb) {
                unsigned b[4];
                mt_frag_b_nk(b, Ks, ld, 16 * jb, 16 * kk, lane);
                mt_mma(s[2 * jb], qa[kk], b, 0);
                mt_mma(s[2 * jb + 1], qa[kk], b, 1);
            }
        }
    }
}

// Causal mask of s: key k0 + 8 j + 2 t + e is visible to local row r iff key <= min(pos0 + q0 + r, Tk - 1).
__device__ __forceinline__ void amf_mask(float (&s)[8][4], int k0, int qpos0, int Tk, int g, int t) {
    const int lim0 = amf_min(qpos0 + g, Tk - 1), lim1 = amf_min(qpos0 + g + 8, Tk - 1);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int key = k0 + 8 * j + 2 * t;
        if (key > lim0) s[j][0] = AMF_NEG;
        if (key + 1 > lim0) s[j][1] = AMF_NEG;
        if (key > lim1) s[j][2] = AMF_NEG;
        if (key + 1 > lim1) s[j][3] = AMF_NEG;
    }
}

// Online softmax: s (raw scores) -> p = exp(s scale - m_new) in place; O and l rescaled.
template <int NT>
__device__ __forceinline__ void amf_softmax(float (&s)[8][4], AmfWarp<NT> &w, float scale) {
    float mx0 = AMF_NEG, mx1 = AMF_NEG;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
        mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
    const float mn0 = fmaxf(w.m[0], mt_quad_max(mx0) * scale), mn1 = fmaxf(w.m[1], mt_quad_max(mx1) * scale);
    const float al0 = __expf(w.m[0] - mn0), al1 = __expf(w.m[1] - mn1);  // finite - finite: no NaN
    w.m[0] = mn0, w.m[1] = mn1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s[j][0] = __expf(fmaf(s[j][0], scale, -mn0)), s[j][1] = __expf(fmaf(s[j][1], scale, -mn0));
        s[j][2] = __expf(fmaf(s[j][2], scale, -mn1)), s[j][3] = __expf(fmaf(s[j][3], scale, -mn1));
        sum0 += s[j][0] + s[j][1], sum1 += s[j][2] + s[j][3];
    }
    w.l[0] = w.l[0] * al0 + sum0, w.l[1] = w.l[1] * al1 + sum1;
#pragma unroll
    for (int n = 0; n < 2 * NT; n++) w.o[n][0] *= al0, w.o[n][1] *= al0, w.o[n][2] *= al1, w.o[n][3] *= al1;
}

// O (16 x hdp) += P (16 x 64, the key blocks jb < nkb) V (64 x hdp).
template <int NT>
__device__ __forceinline__ void amf_pv(float (&o)[2 * NT][4], const float (&p)[8][4], const mt_bf16 *Vs, int ld,
                                       int nkb, int lane) {
#pragma unroll
    for (int jb = 0; jb < 4; jb++) {
        if (jb < nkb) {
            unsigned pa[4];
            mt_c_to_a(pa, p[2 * jb], p[2 * jb + 1]);
            mt_mma_kn_row<NT>(o, pa, Vs, ld, 16 * jb, lane);
        }
    }
}

// One key tile (keys k0 ..) for warp `warp`: rows of the strip at local rows r0 = 16 warp ..
// (positions qpos0 = pos0 + q0 + r0 ..), of which rows_w are < Tq.
template <int NT>
__device__ __forceinline__ void amf_tile(AmfWarp<NT> &w, const mt_bf16 *Ks, const mt_bf16 *Vs, int ld, int k0,
                                         int qpos0, int rows_w, const AmfArgs &a, int lane) {
    // 16-key blocks any valid row of the warp sees (warp-uniform); 0 skips the tile
    const int last = qpos0 + rows_w - 1;  // the warp's last valid row's position (<= Tk - 1)
    const int nkb = rows_w <= 0 || last < k0 ? 0 : amf_min(4, (last - k0) / 16 + 1);
    if (nkb == 0) return;
    float s[8][4];
    amf_scores<NT>(s, w.qa, Ks, ld, nkb, lane);
    if (k0 + AMF_BK - 1 > qpos0)  // some key past the first row's position: mask by element
        amf_mask(s, k0, qpos0, a.Tk, lane >> 2, lane & 3);
    amf_softmax<NT>(s, w, a.scale);
    amf_pv<NT>(w.o, s, Vs, ld, nkb, lane);
}

// out rows [0, nq) of the block (row stride C = H hd, dense) from the staged tile Os (ld): 16 bytes a
// thread when aligned (a quarter-warp: one chunk of 8 rows), else elementwise.
__device__ __forceinline__ void amf_store_out(mt_bf16 *ob, size_t C, const mt_bf16 *Os, int ld, int nq, int hd,
                                              int tid) {
    if ((hd & 7) == 0 && ((uintptr_t)ob & 15) == 0) {
        // walker tid / 8 takes units (band, chunk) tid / 8, + 16, ... (band-major), as mt_load_tile
        const int chunks = hd >> 3, rs = tid & 7, walkers = AMF_THREADS >> 3;
        const int dband = walkers / chunks, dc = walkers - dband * chunks;
        int band = (tid >> 3) / chunks, c = (tid >> 3) - band * chunks;
        for (; band < AMF_BQ / 8; band += dband, c += dc) {
            if (c >= chunks) c -= chunks, band++;
            const int r = 8 * band + rs;
            if (band >= AMF_BQ / 8 || 8 * band >= nq) break;
            if (r < nq) *(uint4 *)(ob + (size_t)r * C + 8 * c) = *(const uint4 *)(Os + r * ld + 8 * c);
        }
    } else {
        const int lane = tid & 31;
        for (int r = tid >> 5; r < nq; r += AMF_THREADS / 32)
            for (int d = lane; d < hd; d += 32) ob[(size_t)r * C + d] = Os[r * ld + d];
    }
}

// Epilogue: O / l -> bf16 staged in Os (the Q tile, free after the loop's last barrier) -> out; lse.
template <int NT>
__device__ __forceinline__ void amf_epilogue(AmfWarp<NT> &w, mt_bf16 *Os, int ld, const AmfArgs &a, int q0,
                                             int nq, int tid) {
    const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const float l0 = mt_quad_sum(w.l[0]), l1 = mt_quad_sum(w.l[1]);
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    const int r = 16 * warp + g;
#pragma unroll
    for (int n = 0; n < 2 * NT; n++) {
        *(unsigned *)(Os + r * ld + 8 * n + 2 * t) = mt_pack(w.o[n][0] * i0, w.o[n][1] * i0);
        *(unsigned *)(Os + (r + 8) * ld + 8 * n + 2 * t) = mt_pack(w.o[n][2] * i1, w.o[n][3] * i1);
    }
    const size_t b = blockIdx.z, h = blockIdx.y, C = (size_t)a.H * a.hd;
    float *lse = a.lse + (b * a.H + h) * a.Tq + q0;
    if (t == 0 && r < nq) lse[r] = w.m[0] + logf(l0);
    if (t == 0 && r + 8 < nq) lse[r + 8] = w.m[1] + logf(l1);
    __syncthreads();
    amf_store_out(a.out + (b * a.Tq + q0) * C + h * a.hd, C, Os, ld, nq, a.hd, tid);
}

// Grid (ceil(Tq / 64), H, B), AMF_THREADS threads, dynamic shared memory 5 mt_tile_bytes(64, hd).
template <int NT>
__global__ void __launch_bounds__(AMF_THREADS) attn_mma_fwd_kernel(AmfArgs a) {
    GIVT_DYNAMIC_SMEM(mt_bf16, smem);
    const int ld = 16 * NT + 8, tile = AMF_BK * ld;
    mt_bf16 *Qs = smem, *Ks = smem + tile, *Vs = smem + 3 * tile;  // Ks[2], Vs[2]: buffers `tile` apart
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // the last query tiles (the most key tiles) first: they start early, the short ones fill the tail
    const int q0 = (gridDim.x - 1 - blockIdx.x) * AMF_BQ, nq = amf_min(AMF_BQ, a.Tq - q0);
    const size_t b = blockIdx.z, hoff = (size_t)blockIdx.y * a.hd;
    const mt_bf16 *qb = a.q + b * a.q_batch + hoff + (size_t)q0 * a.q_row;
    const mt_bf16 *kb = a.k + b * a.kv_batch + hoff, *vb = a.v + b * a.kv_batch + hoff;
    const int nkt = (a.pos0 + q0 + nq + AMF_BK - 1) / AMF_BK;  // key tiles up to the block's last query
    const int qpos0 = a.pos0 + q0 + 16 * warp, rows_w = amf_min(16, nq - 16 * warp);

    AmfWarp<NT> w;
#pragma unroll
    for (int n = 0; n < 2 * NT; n++) w.o[n][0] = w.o[n][1] = w.o[n][2] = w.o[n][3] = 0.0f;
    w.m[0] = w.m[1] = AMF_NEG, w.l[0] = w.l[1] = 0.0f;

    mt_load_tile<AMF_BQ>(Qs, qb, a.q_row, nq, a.hd, tid, AMF_THREADS);
    amf_load_kv(Ks, Vs, kb, vb, a, 0, tid);
    cp_async_commit();
    for (int kt = 0; kt < nkt; kt++) {
        const int cur = (kt & 1) * tile;
        if (kt + 1 < nkt) {
            amf_load_kv(Ks + (tile - cur), Vs + (tile - cur), kb, vb, a, (kt + 1) * AMF_BK, tid);
            cp_async_commit();
            cp_async_wait_group<1>();
        } else {
            cp_async_wait_group<0>();
        }
        __syncthreads();
        if (kt == 0) {
#pragma unroll
            for (int kk = 0; kk < NT; kk++) mt_frag_a(w.qa[kk], Qs, ld, 16 * warp, 16 * kk, lane);
        }
        amf_tile<NT>(w, Ks + cur, Vs + cur, ld, kt * AMF_BK, qpos0, rows_w, a, lane);
        __syncthreads();
    }
    amf_epilogue<NT>(w, Qs, ld, a, q0, nq, tid);
}

template <int NT>
void amf_launch(const AmfArgs &a, dim3 grid, size_t smem, cudaStream_t st) {
    auto *kern = attn_mma_fwd_kernel<NT>;
    if (smem > 48 * 1024)  // opt in above the default 48 KiB (as attention.cu's attn_allow_smem)
        CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    GIVT_LAUNCH(kern, grid, dim3(AMF_THREADS), smem, st, a);
}

}  // namespace

void cuda_attn_mma_fwd(Backend *be, __nv_bfloat16 *out, float *lse, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                       const __nv_bfloat16 *v, const AttnShape *s) {
    if (s->hd < 1 || s->hd > MT_MAX_HD || s->Tk != s->pos0 + s->Tq)
        givt_die("cuda_attn_mma_fwd: unsupported shape (hd %d, 1 .. %d; Tq %d, Tk %d, pos0 %d)", s->hd, MT_MAX_HD,
                 s->Tq, s->Tk, s->pos0);
    if (s->B == 0 || s->H == 0 || s->Tq == 0) return;
    AmfArgs a = {out,    lse,      q,         k,        v,          s->H, s->hd, s->Tq, s->Tk, s->pos0,
                 s->q_row, s->q_batch, s->kv_row, s->kv_batch, 1.0f / sqrtf((float)s->hd)};
    const dim3 grid((s->Tq + AMF_BQ - 1) / AMF_BQ, s->H, s->B);
    const size_t smem = 5 * mt_tile_bytes(AMF_BQ, s->hd);
    const cudaStream_t st = cuda_stream(be);
    switch (mt_hdp(s->hd) / 16) {
    case 1: amf_launch<1>(a, grid, smem, st); break;
    case 2: amf_launch<2>(a, grid, smem, st); break;
    case 3: amf_launch<3>(a, grid, smem, st); break;
    case 4: amf_launch<4>(a, grid, smem, st); break;
    case 5: amf_launch<5>(a, grid, smem, st); break;
    case 6: amf_launch<6>(a, grid, smem, st); break;
    case 7: amf_launch<7>(a, grid, smem, st); break;
    default: amf_launch<8>(a, grid, smem, st); break;
    }
}
