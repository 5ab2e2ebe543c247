// attention_mma_bwd.cu: the bf16 attention backward on tensor cores (mma.sync m16n8k16, ldmatrix,
// cp.async: kernels/ptx.cuh through kernels/mma_tile.cuh), FlashAttention-2 style, deterministic.
// Training shapes (pos0 = 0, Tq = Tk = T); q, k are the rotated ones the forward left, out its
// output O, lse its L = max + log(sum) per query row in the scaled domain: P_ij = exp(scale q_i.k_j -
// L_i), scale = 1 / sqrt(hd). dq, dk (through the transpose of RoPE) and dv are overwritten.
//
// Five tile products per (query tile, key tile) pair (64 x 64; hdp = hd rounded up to 16, zero
// padded), no floating-point atomics, every sum in a fixed order (the same bits run after run):
//  1. attn_mma_bwd_d_kernel: D_i = rowsum(dO_i * O_i) (fp32, 16-byte loads of dO and O, a fixed-order
//     sum per (row, head)), and L copied, into the scratch in the padded layout below (rows T ..
//     Tpad-1: L = +inf, D = 0, so a padding query has P = exp(-inf) = 0 and dS = 0: no NaN).
//  2. attn_mma_bwd_kernel<NK = hdp / 16>: grid (G key-tile groups, H, B), 128 threads; block g takes
//     the key tiles j of its group (KPB consecutive ones, see mb_groups) one after the other. Per key
//     tile, warp w owns keys 16w .. 16w+15; K and V tiles come by cp.async, and the warp's 16-row K and
//     V strips are the A operands (in registers for hdp <= 64, by ldmatrix per use above). The block
//     walks the query tiles i = j .. nt-1, the Q and dO tiles (and L, D of their rows) double-buffered
//     by cp.async (tile i + 1 in flight while tile i is used). Per query tile and warp (16 keys), in
//     two passes of 32 queries for the S / dP registers:
//       S^T  (16 x 32) = K_strip Q^T            A: K strip            B: Q tile (mt_frag_b_nk)
//       dP^T (16 x 32) = V_strip dO^T           A: V strip            B: dO tile (mt_frag_b_nk)
//       P^T = exp(scale S^T - L[query]), causal mask (key <= query) on the diagonal tile only;
//       dS^T = P^T (dP^T - D[query]): fp32 in the accumulators, then bf16 A fragments (mt_c_to_a);
//       dV_strip (16 x hdp) += P^T dO          A: P^T (registers)    B: dO tile (mt_frag_b_kn, .trans)
//       dK_strip (16 x hdp) += dS^T Q          A: dS^T (registers)   B: Q tile (mt_frag_b_kn)
//     dS^T also goes to shared memory (bf16 [64 keys][72]); after a barrier warp w takes queries
//     16w .. 16w+15 of the tile:
//       dQ_part (16 x hdp) = dS K              A: dS (mt_frag_a_trans of dS^T)  B: K tile (mt_frag_b_kn)
//     accumulated, fp32, onto the scratch slot of (group g, query tile i) (the group's first key tile
//     stores; 16-byte loads and stores, 512 contiguous bytes a warp; each thread reads back only what
//     it wrote, which stays in L2). Fragments that no (query, key) pair of them can use are skipped
//     warp-uniformly: on the diagonal tile the query blocks before the warp's keys (and, for dQ, the
//     key blocks after its queries), in the last tile the rows past T; so the tensor-core work is the
//     causal triangle at 16 x 16 granularity. After each key tile: dV as bf16 and dK (x scale, fp32,
//     then the RoPE transpose) staged in shared memory, stored by 16-byte rows (elementwise where hd
//     % 8 or a stride does not allow it). Group 0 sees every key tile of query tiles 0 .. KPB-1: after
//     its key tile j, dQ of query tile j is complete, and the block finishes it (x scale, RoPE
//     transpose, bf16 to dq) as the dK epilogue does. With G = 1 (B H >= MB_BLOCKS) that is all of dq.
//  3. attn_mma_bwd_dq_kernel<NK> (only when G > 1): per (query tile i >= KPB, head, sequence): dQ_i =
//     scale x the sum of the slots of groups 0 .. i / KPB in that order (fp32, 16-byte loads), then
//     the RoPE transpose and bf16 to dq, staged as in 2.
//
// Scratch (cuda_attn_mma_bwd_scratch_bytes; floats; nt = ceil(T / 64), Tpad = 64 nt; every part
// starts 256-byte aligned):
//   Lp  [B][H][Tpad]   L per query row, +inf on padding rows
//   Dp  [B][H][Tpad]   D per query row, 0 on padding rows
//   dQp [B][H][S][64 hdp]   S = G nt - KPB G (G - 1) / 2 slots per (b, h): group g has one for each
//       query tile i = g KPB .. nt-1 (slot mb_slot(g, i)), the sum of its key tiles' dQ parts, in mma
//       accumulator order: float4 number (w hdp / 8 + n) 32 + lane holds the lane's c[0..3] of
//       8-column block n of the 16-row strip w (rows 16w + lane / 4 and + 8, columns 8n + 2 (lane %
//       4) and + 1).
//   Total 4 (2 B H Tpad + 64 B H S hdp) bytes. G = 1 (S = nt) when B H >= 512; G = nt (S = nt (nt +
//   1) / 2, one slot per (query tile, key tile) pair) when B H <= 512 / nt.
//
// Shared memory of the main kernel (bf16 tiles of 64 rows x ld = hdp + 8, mma_tile.cuh's layout:
// conflict-free ldmatrix and 16-byte stores): K, V, Q[2], dO[2] (6 tiles), dS^T [64][72], L[2][64],
// D[2][64] (fp32): 64 KiB at hd 64, 112 KiB at hd 128 (opt-in above 48 KiB); the epilogues reuse the
// Q / dO tiles (fp32 [64][hdp + 8] and one bf16 tile). The dQ-sum kernel: the same staging, 3 tiles.
#include "launch.cuh"
#include "common.cuh"
#include "mma_tile.cuh"

#include "attention_mma.cuh"

#include <math.h>
#include <stdint.h>

namespace {

typedef __nv_bfloat16 bf16;

#define MB_TILE 64     // queries per query tile, keys per key tile
#define MB_THREADS 128  // 4 warps
#define MB_LDS 72      // row stride (bf16) of dS^T: 64 queries + 8 (144 bytes: 9 16-byte groups, odd)

// ---- the shape ----------------------------------------------------------------------------------
struct MbDev {
    const bf16 *q, *k, *v, *dout;
    bf16 *dq, *dk, *dv;
    const float *Lp, *Dp;  // (B, H, Tpad)
    float *dQp;            // the partials
    const float *cos_t, *sin_t;
    int H, hd, T, Tpad, nt, n_rot;
    int G, KPB;  // key-tile groups (the main kernel's blocks per head) and key tiles per group
    bool rope2;  // RoPE pairs by float2: n_rot / 2 even and the tables 8-byte aligned
    bool vq, vkv;  // 16-byte rows for dq / for dk, dv (hd % 8 == 0, strides and pointers aligned)
    size_t q_row, q_batch, kv_row, kv_batch;
    float scale;
};

// The key-tile groups: the main kernel runs G blocks per (head, sequence), block g the key tiles
// g KPB .. (g + 1) KPB - 1 one after the other. G = min(nt, ceil(MB_BLOCKS / (B H))): enough blocks
// to fill the GPU (MB_BLOCKS: about 4 per SM of an H100 / H200), and no more, since every group adds
// a dQ partial per query tile that it sees (written and read back through DRAM when they do not fit
// in L2), while within a group the partial of query tile i is accumulated in place (read back by the
// thread that wrote it, from L2). A function of the shape only (not of the device): the same bits on
// every GPU.
#define MB_BLOCKS 512
int mb_blocks_target = MB_BLOCKS;  // (cuda_attn_mma_bwd_set_blocks: tests)
void mb_groups(size_t bh, int nt, int *G, int *KPB) {
    size_t g = ((size_t)mb_blocks_target + bh - 1) / bh;
    g = g < 1 ? 1 : g > (size_t)nt ? (size_t)nt : g;
    *KPB = (int)((nt + g - 1) / g);
    *G = (nt + *KPB - 1) / *KPB;
}
// dQ partial slots (of 64 hdp floats) per (b, h): group g has one for each query tile g KPB .. nt-1
__host__ __device__ inline size_t mb_nslots(int G, int nt, int KPB) {
    return (size_t)G * nt - (size_t)KPB * G * (G - 1) / 2;
}

// where the scratch parts start (floats)
struct MbScratch {
    size_t Lp, Dp, dQp, total;
    int G, KPB;
};
MbScratch mb_scratch(const AttnShape *s) {
    const int nt = (s->Tq + MB_TILE - 1) / MB_TILE;
    const size_t bh = (size_t)s->B * s->H;
    MbScratch r;
    mb_groups(bh, nt, &r.G, &r.KPB);
    r.Lp = 0;
    r.Dp = bh * nt * MB_TILE;
    r.dQp = 2 * r.Dp;
    r.total = r.dQp + bh * mb_nslots(r.G, nt, r.KPB) * MB_TILE * (size_t)mt_hdp(s->hd);
    return r;
}

__device__ __forceinline__ int mb_min(int a, int b) { return a < b ? a : b; }

// A walk over the units of rows of w units (walker id of n takes units id, id + n, ...; unit u =
// row u / w, column u % w) without a division per unit.
struct MbWalk {
    int r, c, w, dr, dc;
    __device__ MbWalk(int w_, int id, int n) : w(w_) {
        dr = n / w;
        dc = n - dr * w;
        r = id / w;
        c = id - r * w;
    }
    __device__ void next() {
        r += dr;
        c += dc;
        if (c >= w) c -= w, r++;
    }
};

typedef cm_pack<bf16, 8> mb_bf8;  // 16 bytes
typedef cm_pack<bf16, 2> mb_bf2;  // 4 bytes

// ==== 1. D = rowsum(dO * O), L copied: the padded statistics ======================================
// Grid (ceil(Tpad / RB), B): rows t0 .. t0 + RB - 1 of sequence b (all heads). VEC (hd % 8 == 0,
// 16-byte aligned dO and O): the block's threads take consecutive 16-byte chunks of the rows (8 dims:
// coalesced), each chunk's 8-term dot product goes to shared memory part [RB][nch | 1] (nch = H hd / 8;
// odd stride: conflict-free column reads), then one thread per (row, head) sums its hd / 8 chunks in
// order. Otherwise the (row, head) thread reads its dims one by one. Rows t >= T: L = +inf, D = 0.
template <bool VEC>
__global__ void __launch_bounds__(MB_THREADS)
    attn_mma_bwd_d_kernel(float *Lp, float *Dp, const bf16 *dout, const bf16 *out, const float *lse, int H, int hd,
                          int T, int Tpad, int RB) {
    GIVT_DYNAMIC_SMEM(float, part);
    const int b = blockIdx.y, t0 = blockIdx.x * RB, tid = threadIdx.x, C = H * hd;
    const int rows = mb_min(RB, T - t0);  // rows with data (<= 0: padding only)
    const size_t row0 = ((size_t)b * T + t0) * C;
    const int nch = C >> 3, ldp = nch | 1, hc = hd >> 3;
    if (VEC) {
        for (MbWalk u(nch, tid, MB_THREADS); u.r < rows; u.next()) {
            const size_t e = row0 + (size_t)u.r * C + 8 * u.c;
            const mb_bf8 a = cm_ld<8>(dout + e), o = cm_ld<8>(out + e);
            float s = 0.0f;
#pragma unroll
            for (int x = 0; x < 8; x++) s += __bfloat162float(a.v[x]) * __bfloat162float(o.v[x]);
            part[u.r * ldp + u.c] = s;
        }
        __syncthreads();
    }
#pragma unroll 1
    for (int idx = tid; idx < RB * H; idx += MB_THREADS) {  // consecutive threads: consecutive rows
        const int h = idx / RB, r = idx - h * RB, t = t0 + r;
        if (t >= Tpad) continue;
        float d = 0.0f, l = INFINITY;
        if (r < rows) {
            if (VEC) {
                const float *pp = part + r * ldp + h * hc;
                for (int c = 0; c < hc; c++) d += pp[c];
            } else {
                const size_t e = row0 + (size_t)r * C + (size_t)h * hd;
                for (int x = 0; x < hd; x++) d += __bfloat162float(dout[e + x]) * __bfloat162float(out[e + x]);
            }
            l = lse[((size_t)b * H + h) * T + t];
        }
        const size_t o = ((size_t)b * H + h) * Tpad + t;
        Dp[o] = d;
        Lp[o] = l;
    }
}

// ==== shared helpers of the epilogues ============================================================
// Accumulator strip w (16 rows x 8 NB2 columns, mma C layout: a[n][0..1] row g, a[n][2..3] row g + 8,
// columns 8n + 2t, + 1) times s into E (fp32, row stride lde = hdp + 8: 8 or 24 banks a row, so the
// 8-byte stores of a half-warp are conflict-free).
template <int NB>
__device__ __forceinline__ void mb_acc_to_f32(float *E, int lde, const float (&a)[NB][4], float s, int w, int lane) {
    float *r0 = E + (16 * w + (lane >> 2)) * lde + 2 * (lane & 3), *r1 = r0 + 8 * lde;
#pragma unroll
    for (int n = 0; n < NB; n++) {
        *(float2 *)(r0 + 8 * n) = make_float2(a[n][0] * s, a[n][1] * s);
        *(float2 *)(r1 + 8 * n) = make_float2(a[n][2] * s, a[n][3] * s);
    }
}
// The same strip as bf16 pairs into Eb (a tile: row stride ld = hdp + 8 bf16, 4-byte stores, a
// warp's 32 in 32 different banks).
template <int NB>
__device__ __forceinline__ void mb_acc_to_bf16(bf16 *Eb, int ld, const float (&a)[NB][4], int w, int lane) {
    bf16 *r0 = Eb + (16 * w + (lane >> 2)) * ld + 2 * (lane & 3), *r1 = r0 + 8 * ld;
#pragma unroll
    for (int n = 0; n < NB; n++) {
        *(unsigned *)(r0 + 8 * n) = mt_pack(a[n][0], a[n][1]);
        *(unsigned *)(r1 + 8 * n) = mt_pack(a[n][2], a[n][3]);
    }
}

// Dim d of row x after the transpose of rotate-half RoPE over its first n dims (cs, sn: the table
// rows of its position), as attn_rope_dim(transpose = true) in attention.cu.
__device__ __forceinline__ float mb_rope_t(const float *x, int d, int n, const float *cs, const float *sn) {
    const int half = n >> 1;
    if (d >= n) return x[d];
    if (d < half) return x[d] * cs[d] + x[d + half] * sn[d + half];
    return x[d] * cs[d] - x[d - half] * sn[d - half];
}

// Rows [0, n) of E (fp32, stride lde) -> Eb (bf16 tile, stride ld), dims [0, hd), through the RoPE
// transpose (n_rot > 0) at positions pos0 + r; threads on consecutive dim pairs of a row (8-byte
// shared reads, 4-byte stores). rope2: a pair and its partner pair lie in one half each, so the
// table reads are float2 too.
__device__ inline void mb_rope_rows(bf16 *Eb, int ld, const float *E, int lde, int n, int hd, int pos0, int n_rot,
                                    bool rope2, const float *cos_t, const float *sin_t) {
    const int hr = n_rot >> 1;
    for (MbWalk u((hd + 1) >> 1, threadIdx.x, MB_THREADS); u.r < n; u.next()) {
        const int d = 2 * u.c;
        const float *x = E + u.r * lde;
        float2 y = *(const float2 *)(x + d);
        if (d < n_rot) {
            const float *cs = cos_t + (size_t)(pos0 + u.r) * n_rot, *sn = sin_t + (size_t)(pos0 + u.r) * n_rot;
            if (rope2) {
                const float2 c = *(const float2 *)(cs + d);
                const int p = d < hr ? d + hr : d - hr;
                const float2 xp = *(const float2 *)(x + p), sp = *(const float2 *)(sn + p);
                const float sg = d < hr ? 1.0f : -1.0f;
                y = make_float2(y.x * c.x + sg * xp.x * sp.x, y.y * c.y + sg * xp.y * sp.y);
            } else {
                y = make_float2(mb_rope_t(x, d, n_rot, cs, sn), mb_rope_t(x, d + 1, n_rot, cs, sn));
            }
        }
        *(unsigned *)(Eb + u.r * ld + d) = mt_pack(y.x, y.y);
    }
}

// Rows [0, n) x dims [0, hd) of the bf16 tile Eb (stride ld) to dst (row stride row): vec, 16-byte
// chunks as mt_load_tile walks them (a quarter-warp on one chunk of 8 rows: conflict-free shared
// reads; a warp stores 8 rows x 64 bytes: whole sectors); else element by element.
__device__ inline void mb_store_rows(bf16 *dst, size_t row, int n, int hd, const bf16 *Eb, int ld, bool vec) {
    const int tid = threadIdx.x;
    if (vec) {
        const int rs = tid & 7;
        for (MbWalk u(hd >> 3, tid >> 3, MB_THREADS / 8); 8 * u.r < n; u.next()) {
            const int r = 8 * u.r + rs;
            if (r < n) cm_st<8>(dst + (size_t)r * row + 8 * u.c, *(const mb_bf8 *)(Eb + r * ld + 8 * u.c));
        }
    } else {
        for (MbWalk u(hd, tid, MB_THREADS); u.r < n; u.next()) dst[(size_t)u.r * row + u.c] = Eb[u.r * ld + u.c];
    }
}

// ==== 2. the main kernel =========================================================================
// NK = hdp / 16 (1 .. 8). KVREG: the warp's K and V strips stay in registers (8 NK registers);
// otherwise they are read by ldmatrix at each use (hdp > 64: the registers hold dK, dV (hdp each)
// instead). QH: query blocks of 16 per pass of the S / dP products: 2, two passes of 32 queries
// (S^T, dP^T: 32 registers instead of 64; ptxas 13: 168 registers at hdp 64 against 235 with one pass
// of 64, so 3 blocks a SM instead of 2; with KVREG the second pass costs no extra loads).
template <int NK>
struct MbCfg {
    static constexpr bool KVREG = NK <= 4;
    static constexpr int QH = 2;
};

// Issues the cp.async loads of query tile i (rows 64 i ..) into buffer Qs / dOs / Ls / Ds: Q and dO
// tiles (mt_load_tile: zero rows past T, zero dims past hd) and 64 L and D values (16 threads each).
__device__ inline void mb_issue_qtile(bf16 *Qs, bf16 *dOs, float *Ls, float *Ds, const MbDev &p, const bf16 *qh,
                                      const bf16 *oh, size_t st0, int i) {
    const int tid = threadIdx.x, q0 = MB_TILE * i, nq = mb_min(MB_TILE, p.T - q0);
    const size_t C = (size_t)p.H * p.hd;
    mt_load_tile<MB_TILE>(Qs, qh + (size_t)q0 * p.q_row, p.q_row, nq, p.hd, tid, MB_THREADS);
    mt_load_tile<MB_TILE>(dOs, oh + (size_t)q0 * C, C, nq, p.hd, tid, MB_THREADS);
    if (tid < 16)
        cp_async_16(Ls + 4 * tid, p.Lp + st0 + q0 + 4 * tid);
    else if (tid < 32)
        cp_async_16(Ds + 4 * (tid - 16), p.Dp + st0 + q0 + 4 * (tid - 16));
}

// The A fragment (16 x 16) of the warp's strip (tile rows 16w ..) at dims 16 kb: from the registers
// (KVREG) or by ldmatrix from the tile.
template <int NK, bool KVREG>
__device__ __forceinline__ void mb_strip_a(unsigned (&a)[4], const unsigned (&reg)[NK][4], const bf16 *tile, int ld,
                                           int w, int kb, int lane) {
    if (KVREG) {
#pragma unroll
        for (int x = 0; x < 4; x++) a[x] = reg[kb][x];
    } else {
        mt_frag_a(a, tile, ld, 16 * w, 16 * kb, lane);
    }
}

// S^T and dP^T (16 keys x 16 QH queries: 2 QH accumulators of 16 x 8 each) of query blocks qb0 ..
// qb0 + QH - 1 that lie in [qlo, qhi): K / V strip (A) against the Q / dO tile rows (B, mt_frag_b_nk).
template <int NK, bool KVREG, int QH>
__device__ __forceinline__ void mb_scores(float (&s)[2 * QH][4], float (&dp)[2 * QH][4], const unsigned (&ka)[NK][4],
                                          const unsigned (&va)[NK][4], const bf16 *Ks, const bf16 *Vs, const bf16 *Qs,
                                          const bf16 *dOs, int ld, int w, int qb0, int qlo, int qhi, int lane) {
#pragma unroll
    for (int n = 0; n < 2 * QH; n++)
#pragma unroll
        for (int x = 0; x < 4; x++) s[n][x] = dp[n][x] = 0.0f;
#pragma unroll
    for (int kb = 0; kb < NK; kb++) {
        unsigned ak[4], av[4];
        mb_strip_a<NK, KVREG>(ak, ka, Ks, ld, w, kb, lane);
        mb_strip_a<NK, KVREG>(av, va, Vs, ld, w, kb, lane);
#pragma unroll
        for (int qq = 0; qq < QH; qq++) {
            const int qb = qb0 + qq;
            if (qb < qlo || qb >= qhi) continue;  // warp-uniform
            unsigned bq[4], bo[4];
            mt_frag_b_nk(bq, Qs, ld, 16 * qb, 16 * kb, lane);
            mt_mma(s[2 * qq], ak, bq, 0);
            mt_mma(s[2 * qq + 1], ak, bq, 1);
            mt_frag_b_nk(bo, dOs, ld, 16 * qb, 16 * kb, lane);
            mt_mma(dp[2 * qq], av, bo, 0);
            mt_mma(dp[2 * qq + 1], av, bo, 1);
        }
    }
}

// P^T = exp(scale S^T - L[query]) (0 where key > query on the diagonal tile) and dS^T = P^T (dP^T -
// D[query]) in place, packed into bf16 A fragments pa, sa (k block = 16 queries), and dS^T stored to
// dSt [key][query] (stride MB_LDS; 4-byte stores in 32 different banks). Lane: keys 16w + g (+ 8),
// queries 16 qb + 8 h + 2t (+ 1).
template <int QH>
__device__ __forceinline__ void mb_grad(float (&s)[2 * QH][4], float (&dp)[2 * QH][4], unsigned (&pa)[QH][4],
                                        unsigned (&sa)[QH][4], bf16 *dSt, const float *Ls, const float *Ds,
                                        float scale, bool diag, int w, int qb0, int qlo, int qhi, int lane) {
    const int g = lane >> 2, t = lane & 3, key0 = 16 * w + g;
#pragma unroll
    for (int qq = 0; qq < QH; qq++) {
        const int qb = qb0 + qq;
        if (qb < qlo || qb >= qhi) continue;
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            float(&sv)[4] = s[2 * qq + hh];
            float(&dv)[4] = dp[2 * qq + hh];
            const int qc = 16 * qb + 8 * hh + 2 * t;
            const float2 L = *(const float2 *)(Ls + qc), D = *(const float2 *)(Ds + qc);
#pragma unroll
            for (int x = 0; x < 4; x++) {
                const int key = key0 + 8 * (x >> 1), qry = qc + (x & 1);
                float pv = __expf(sv[x] * scale - ((x & 1) ? L.y : L.x));
                if (diag && key > qry) pv = 0.0f;
                sv[x] = pv;
                dv[x] = pv * (dv[x] - ((x & 1) ? D.y : D.x));
            }
        }
        mt_c_to_a(pa[qq], s[2 * qq], s[2 * qq + 1]);
        mt_c_to_a(sa[qq], dp[2 * qq], dp[2 * qq + 1]);
        bf16 *r0 = dSt + key0 * MB_LDS + 16 * qb + 2 * t, *r1 = r0 + 8 * MB_LDS;
        *(unsigned *)r0 = sa[qq][0];
        *(unsigned *)r1 = sa[qq][1];
        *(unsigned *)(r0 + 8) = sa[qq][2];
        *(unsigned *)(r1 + 8) = sa[qq][3];
    }
}

// dV_strip += P^T dO and dK_strip += dS^T Q over the pass's query blocks (k blocks): B fragments of
// the dO / Q tile rows 16 qb .. (mt_frag_b_kn: ldmatrix.trans), 2 NK accumulators each.
template <int NK, int QH>
__device__ __forceinline__ void mb_accum(float (&dv)[2 * NK][4], float (&dk)[2 * NK][4], const unsigned (&pa)[QH][4],
                                         const unsigned (&sa)[QH][4], const bf16 *Qs, const bf16 *dOs, int ld,
                                         int qb0, int qlo, int qhi, int lane) {
#pragma unroll
    for (int qq = 0; qq < QH; qq++) {
        const int qb = qb0 + qq;
        if (qb < qlo || qb >= qhi) continue;
        mt_mma_kn_row<NK>(dv, pa[qq], dOs, ld, 16 * qb, lane);
        mt_mma_kn_row<NK>(dk, sa[qq], Qs, ld, 16 * qb, lane);
    }
}

// dQ_part (queries 16w .. 16w+15 x hdp) = dS K over key blocks 0 .. kbmax: A = dS from dSt (the
// transpose, mt_frag_a_trans), B = K tile rows (mt_frag_b_kn), accumulated onto what slot holds
// (first: onto zeros) and stored back as float4 per (n, lane) (the scratch's accumulator order: each
// thread reads back only what it wrote itself).
template <int NK>
__device__ __forceinline__ void mb_dq_part(float *slot, bool first, const bf16 *dSt, const bf16 *Ks, int ld, int w,
                                           int kbmax, int lane) {
    float4 *dst = (float4 *)slot + (size_t)w * (2 * NK) * 32 + lane;
    float acc[2 * NK][4];
#pragma unroll
    for (int n = 0; n < 2 * NK; n++) {
        const float4 o = first ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : dst[32 * n];
        acc[n][0] = o.x, acc[n][1] = o.y, acc[n][2] = o.z, acc[n][3] = o.w;
    }
#pragma unroll
    for (int kb = 0; kb < MB_TILE / 16; kb++) {
        if (kb > kbmax) continue;
        unsigned a[4];
        mt_frag_a_trans(a, dSt, MB_LDS, 16 * w, 16 * kb, lane);
        mt_mma_kn_row<NK>(acc, a, Ks, ld, 16 * kb, lane);
    }
#pragma unroll
    for (int n = 0; n < 2 * NK; n++) dst[32 * n] = make_float4(acc[n][0], acc[n][1], acc[n][2], acc[n][3]);
}

// The dQ partial slot of key-tile group g and query tile i (i >= g KPB), in slots of 64 hdp floats
// from the (b, h) base: group g holds query tiles g KPB .. nt-1.
__host__ __device__ inline size_t mb_slot(int g, int i, int nt, int KPB) {
    return (size_t)g * nt - (size_t)KPB * g * (g - 1) / 2 + (size_t)(i - g * KPB);
}

// dQ of query tile i (rows [0, nq)) = scale x the sum over groups 0 .. ng-1 of their slots of tile i,
// in that order, into E (fp32 [64][ld], the accumulator order undone: 8-byte stores of the C layout,
// conflict-free); then (the caller's barrier) the RoPE transpose and the store (mb_dq_rows_out). Thread
// tid takes float4 units tid, tid + 128, ... (unit u: strip u / (64 NK), 8-column block (u / 32) %
// (2 NK), lane u % 32 = tid % 32). 16-byte loads, 512 contiguous bytes a warp.
template <int NK>
__device__ inline void mb_dq_sum(float *E, const float *base, int i, int ng, int nt, int KPB, int nq, float scale) {
    constexpr int hdp = 16 * NK, ld = hdp + 8, UPW = 2 * NK * 32;  // float4 units a 16-row strip
    const int tid = threadIdx.x, lane = tid & 31;
    const size_t slot4 = (size_t)MB_TILE * hdp / 4;
    const float4 *src = (const float4 *)base + mb_slot(0, i, nt, KPB) * slot4;
    float *r0 = E + (lane >> 2) * ld + 2 * (lane & 3);
    for (int u = tid; u < 4 * UPW; u += MB_THREADS) {
        const int w = u / UPW, n = (u - w * UPW) >> 5;
        if (16 * w >= nq) break;  // the strips past the tile's end (w grows with u)
        float4 a = src[u];
        const float4 *sg = src;
        for (int g = 1; g < ng; g++) {  // slot (g, i) - slot (g - 1, i) = nt - g KPB slots
            sg += (size_t)(nt - g * KPB) * slot4;
            const float4 x = sg[u];
            a.x += x.x, a.y += x.y, a.z += x.z, a.w += x.w;
        }
        float *e = r0 + 16 * w * ld + 8 * n;
        *(float2 *)e = make_float2(a.x * scale, a.y * scale);
        *(float2 *)(e + 8 * ld) = make_float2(a.z * scale, a.w * scale);
    }
}

// Rows [0, nq) of E (dQ of query tile i, fp32) through the RoPE transpose into Eb, and to dq. Begins
// after the barrier that follows E's stores; ends with a barrier.
__device__ inline void mb_dq_rows_out(bf16 *Eb, const float *E, int ld, const MbDev &p, int i, int nq) {
    const int b = blockIdx.z, h = blockIdx.y, q0 = MB_TILE * i;
    mb_rope_rows(Eb, ld, E, ld, nq, p.hd, q0, p.n_rot, p.rope2, p.cos_t, p.sin_t);
    __syncthreads();
    mb_store_rows(p.dq + (size_t)b * p.q_batch + (size_t)h * p.hd + (size_t)q0 * p.q_row, p.q_row, nq, p.hd, Eb, ld,
                  p.vq);
    __syncthreads();
}

size_t mb_main_smem(int hd) {
    return 6 * mt_tile_bytes(MB_TILE, hd) + (size_t)MB_TILE * MB_LDS * 2 + 4 * MB_TILE * sizeof(float);
}

// One key tile j of the block's group (first key tile j0): the loop over query tiles j .. nt-1 and
// the dK, dV epilogue. Shared memory sm as mb_main_smem; slots: the (b, h) base of the partials.
// Begins with the tiles' loads (the previous user of the shared memory passed a barrier) and ends
// with a barrier.
template <int NK>
__device__ inline void mb_key_tile(const MbDev &p, bf16 *sm, float *slots, int j, int j0) {
    constexpr bool KVREG = MbCfg<NK>::KVREG;
    constexpr int QH = MbCfg<NK>::QH, hdp = 16 * NK, ld = hdp + 8, TE = MB_TILE * ld;
    bf16 *Ks = sm, *Vs = Ks + TE, *Qb = Vs + TE, *dOb = Qb + 2 * TE;  // Qb, dOb: [2][64][ld]
    bf16 *dSt = dOb + 2 * TE;                                          // [64 keys][MB_LDS]
    float *Lb = (float *)(dSt + MB_TILE * MB_LDS), *Db = Lb + 2 * MB_TILE;  // [2][64] each
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int h = blockIdx.y, b = blockIdx.z, k0 = MB_TILE * j, nk = mb_min(MB_TILE, p.T - k0);
    const size_t C = (size_t)p.H * p.hd, st0 = ((size_t)b * p.H + h) * p.Tpad;
    const bf16 *qh = p.q + (size_t)b * p.q_batch + (size_t)h * p.hd;
    const bf16 *oh = p.dout + (size_t)b * p.T * C + (size_t)h * p.hd;
    const size_t kvoff = (size_t)b * p.kv_batch + (size_t)h * p.hd + (size_t)k0 * p.kv_row;
    const int g = j0 / p.KPB;

    // prologue: K, V and query tile j (one cp.async group)
    mt_load_tile<MB_TILE>(Ks, p.k + kvoff, p.kv_row, nk, p.hd, tid, MB_THREADS);
    mt_load_tile<MB_TILE>(Vs, p.v + kvoff, p.kv_row, nk, p.hd, tid, MB_THREADS);
    mb_issue_qtile(Qb, dOb, Lb, Db, p, qh, oh, st0, j);
    cp_async_commit();

    float dv[2 * NK][4], dk[2 * NK][4];
#pragma unroll
    for (int n = 0; n < 2 * NK; n++)
#pragma unroll
        for (int x = 0; x < 4; x++) dv[n][x] = dk[n][x] = 0.0f;
    unsigned ka[NK][4], va[NK][4];
    const bool active = 16 * w < nk;  // the warp has keys (only the last tile may have fewer)

    for (int i = j; i < p.nt; i++) {
        const int cur = (i - j) & 1;
        if (i + 1 < p.nt) {  // tile i + 1 into the other buffer (its last reader passed the barrier
                             // after the previous tile's S / dP products)
            mb_issue_qtile(Qb + (cur ^ 1) * TE, dOb + (cur ^ 1) * TE, Lb + (cur ^ 1) * MB_TILE,
                           Db + (cur ^ 1) * MB_TILE, p, qh, oh, st0, i + 1);
            cp_async_commit();
            cp_async_wait_group<1>();
        } else {
            cp_async_wait_group<0>();
        }
        __syncthreads();  // tile i (and at i = j, K and V) visible to all; the previous dQ reads done
        const bf16 *Qs = Qb + cur * TE, *dOs = dOb + cur * TE;
        const float *Ls = Lb + cur * MB_TILE, *Ds = Db + cur * MB_TILE;
        const int nq = mb_min(MB_TILE, p.T - MB_TILE * i);
        const bool diag = i == j;
        if (KVREG && diag) {
#pragma unroll
            for (int kb = 0; kb < NK; kb++) {
                mt_frag_a(ka[kb], Ks, ld, 16 * w, 16 * kb, lane);
                mt_frag_a(va[kb], Vs, ld, 16 * w, 16 * kb, lane);
            }
        }
        // query blocks [qlo, qhi) see the warp's keys
        const int qlo = diag ? w : 0, qhi = (nq + 15) >> 4;
        if (active) {
#pragma unroll
            for (int qb0 = 0; qb0 < MB_TILE / 16; qb0 += QH) {
                if (qb0 + QH <= qlo || qb0 >= qhi) continue;  // warp-uniform
                float s[2 * QH][4], dp[2 * QH][4];
                unsigned pa[QH][4], sa[QH][4];
                mb_scores<NK, KVREG, QH>(s, dp, ka, va, Ks, Vs, Qs, dOs, ld, w, qb0, qlo, qhi, lane);
                mb_grad<QH>(s, dp, pa, sa, dSt, Ls, Ds, p.scale, diag, w, qb0, qlo, qhi, lane);
                mb_accum<NK, QH>(dv, dk, pa, sa, Qs, dOs, ld, qb0, qlo, qhi, lane);
            }
        }
        __syncthreads();  // dS^T complete; Q / dO of tile i no longer read
        if (16 * w < nq)  // the warp's 16 queries exist: this key tile's part of their dQ
            mb_dq_part<NK>(slots + mb_slot(g, i, p.nt, p.KPB) * (MB_TILE * hdp), j == j0, dSt, Ks, ld, w,
                           diag ? w : MB_TILE / 16 - 1, lane);
    }

    // epilogue: dV (bf16) and dK (x scale, fp32, then the RoPE transpose) through the Q / dO tiles
    __syncthreads();
    float *E = (float *)Qb;  // [64][ld] fp32: 2 tiles
    bf16 *EbK = dOb, *EbV = dOb + TE;
    mb_acc_to_bf16<2 * NK>(EbV, ld, dv, w, lane);
    mb_acc_to_f32<2 * NK>(E, ld, dk, p.scale, w, lane);
    __syncthreads();
    mb_rope_rows(EbK, ld, E, ld, nk, p.hd, k0, p.n_rot, p.rope2, p.cos_t, p.sin_t);
    mb_store_rows(p.dv + kvoff, p.kv_row, nk, p.hd, EbV, ld, p.vkv);
    __syncthreads();
    mb_store_rows(p.dk + kvoff, p.kv_row, nk, p.hd, EbK, ld, p.vkv);
    __syncthreads();
}

// Grid (G key-tile groups, H, B), MB_THREADS threads, mb_main_smem(hd) bytes of dynamic shared
// memory. Block g takes key tiles g KPB .. (g + 1) KPB - 1 one after the other, each over the query
// tiles at and after it; its dQ parts of query tile i add up in slot (g, i) in key-tile order (the
// first one stores). Group 0 holds every key tile that query tiles 0 .. KPB-1 see, so after its key
// tile j, dQ of query tile j is complete: the block finishes it (scale, RoPE transpose, bf16) itself.
template <int NK>
__global__ void __launch_bounds__(MB_THREADS) attn_mma_bwd_kernel(MbDev p) {
    constexpr int hdp = 16 * NK, ld = hdp + 8, TE = MB_TILE * ld;
    GIVT_DYNAMIC_SMEM(bf16, sm);
    const int g = blockIdx.x, h = blockIdx.y, b = blockIdx.z, j0 = g * p.KPB, j1 = mb_min(p.nt, j0 + p.KPB);
    float *slots = p.dQp + ((size_t)b * p.H + h) * mb_nslots(p.G, p.nt, p.KPB) * (MB_TILE * hdp);
    for (int j = j0; j < j1; j++) {
        mb_key_tile<NK>(p, sm, slots, j, j0);
        if (g == 0) {  // query tile j is complete (its key tiles 0 .. j are all this block's)
            const int nq = mb_min(MB_TILE, p.T - MB_TILE * j);
            float *E = (float *)(sm + 2 * TE);  // the Q tiles
            mb_dq_sum<NK>(E, slots, j, 1, p.nt, p.KPB, nq, p.scale);
            __syncthreads();
            mb_dq_rows_out(sm + 4 * TE, E, ld, p, j, nq);
        }
    }
}

// ==== 3. dQ of the query tiles that several groups see: the sum of the partials ====================
size_t mb_dq_smem(int hd) { return 3 * mt_tile_bytes(MB_TILE, hd); }

// Grid (nt - KPB, H, B) (only when G > 1), MB_THREADS threads, mb_dq_smem(hd) bytes: query tile i =
// KPB + blockIdx.x, dQ = scale x the sum over groups 0 .. i / KPB of their slots, in group order.
template <int NK>
__global__ void __launch_bounds__(MB_THREADS) attn_mma_bwd_dq_kernel(MbDev p) {
    constexpr int hdp = 16 * NK, ld = hdp + 8, TE = MB_TILE * ld;
    GIVT_DYNAMIC_SMEM(bf16, sm);
    float *E = (float *)sm;  // [64][ld] fp32
    const int i = p.KPB + blockIdx.x, h = blockIdx.y, b = blockIdx.z, nq = mb_min(MB_TILE, p.T - MB_TILE * i);
    const float *slots = p.dQp + ((size_t)b * p.H + h) * mb_nslots(p.G, p.nt, p.KPB) * (MB_TILE * hdp);
    mb_dq_sum<NK>(E, slots, i, i / p.KPB + 1, p.nt, p.KPB, nq, p.scale);
    __syncthreads();
    mb_dq_rows_out(sm + 2 * TE, E, ld, p, i, nq);
}

// ==== host side ==================================================================================
template <typename K>
void mb_allow_smem(K kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int NK>
void mb_launch_main(cudaStream_t st, const MbDev &p, int B) {
    const size_t smem = mb_main_smem(p.hd);
    mb_allow_smem(attn_mma_bwd_kernel<NK>, smem);
    GIVT_LAUNCH(attn_mma_bwd_kernel<NK>, dim3(p.G, p.H, B), dim3(MB_THREADS), smem, st, p);
    if (p.G == 1) return;  // group 0 finished every query tile
    const size_t dsmem = mb_dq_smem(p.hd);
    mb_allow_smem(attn_mma_bwd_dq_kernel<NK>, dsmem);
    GIVT_LAUNCH(attn_mma_bwd_dq_kernel<NK>, dim3(p.nt - p.KPB, p.H, B), dim3(MB_THREADS), dsmem, st, p);
}

bool mb_al(const void *ptr, size_t bytes) { return (uintptr_t)ptr % bytes == 0; }

}  // namespace

// For tests: the number of blocks that the key-tile groups aim at (n <= 0: the default), so that
// small shapes take the paths of several key tiles per block. Not thread-safe; tests only.
void cuda_attn_mma_bwd_set_blocks(int n) { mb_blocks_target = n > 0 ? n : MB_BLOCKS; }

size_t cuda_attn_mma_bwd_scratch_bytes(const AttnShape *s) { return mb_scratch(s).total * sizeof(float); }

void cuda_attn_mma_bwd(Backend *be, __nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv, void *scratch,
                       const __nv_bfloat16 *dout, const __nv_bfloat16 *out, const __nv_bfloat16 *q,
                       const __nv_bfloat16 *k, const __nv_bfloat16 *v, const float *lse, const float *cos_t,
                       const float *sin_t, const AttnShape *s) {
    if (s->hd < 1 || s->hd > MT_MAX_HD || s->pos0 != 0 || s->Tq != s->Tk || s->n_rot < 0 || s->n_rot > s->hd ||
        (s->n_rot & 1))
        givt_die("cuda_attn_mma_bwd: unsupported shape (hd %d, n_rot %d, Tq %d, Tk %d, pos0 %d)", s->hd, s->n_rot,
                 s->Tq, s->Tk, s->pos0);
    if (s->B == 0 || s->H == 0 || s->Tq == 0) return;
    cudaStream_t st = cuda_stream(be);
    const MbScratch L = mb_scratch(s);
    float *f = (float *)scratch;
    MbDev p;
    p.q = q, p.k = k, p.v = v, p.dout = dout, p.dq = dq, p.dk = dk, p.dv = dv;
    p.Lp = f + L.Lp, p.Dp = f + L.Dp, p.dQp = f + L.dQp;
    p.cos_t = cos_t, p.sin_t = sin_t;
    p.H = s->H, p.hd = s->hd, p.T = s->Tq, p.nt = (s->Tq + MB_TILE - 1) / MB_TILE, p.Tpad = MB_TILE * p.nt;
    p.n_rot = s->n_rot;
    p.G = L.G, p.KPB = L.KPB;
    p.rope2 = s->n_rot > 0 && ((s->n_rot >> 1) & 1) == 0 && mb_al(cos_t, 8) && mb_al(sin_t, 8);
    p.q_row = s->q_row, p.q_batch = s->q_batch, p.kv_row = s->kv_row, p.kv_batch = s->kv_batch;
    const bool h8 = (s->hd & 7) == 0;
    p.vq = h8 && s->q_row % 8 == 0 && s->q_batch % 8 == 0 && mb_al(dq, 16);
    p.vkv = h8 && s->kv_row % 8 == 0 && s->kv_batch % 8 == 0 && mb_al(dk, 16) && mb_al(dv, 16);
    p.scale = 1.0f / sqrtf((float)s->hd);

    // 1. D and L
    const int C = s->H * s->hd, nch = C >> 3;
    const bool dvec = h8 && mb_al(dout, 16) && mb_al(out, 16);
    int RB = dvec ? 1024 / (nch > 0 ? nch : 1) : MB_TILE;
    RB = RB < 1 ? 1 : RB > MB_TILE ? MB_TILE : RB;
    const dim3 dgrid((p.Tpad + RB - 1) / RB, s->B);
    if (dvec) {
        const size_t smem = (size_t)RB * (nch | 1) * sizeof(float);
        mb_allow_smem(attn_mma_bwd_d_kernel<true>, smem);
        GIVT_LAUNCH(attn_mma_bwd_d_kernel<true>, dgrid, dim3(MB_THREADS), smem, st, f + L.Lp, f + L.Dp, dout, out,
                    lse, s->H, s->hd, p.T, p.Tpad, RB);
    } else {
        GIVT_LAUNCH(attn_mma_bwd_d_kernel<false>, dgrid, dim3(MB_THREADS), 0, st, f + L.Lp, f + L.Dp, dout, out, lse,
                    s->H, s->hd, p.T, p.Tpad, RB);
    }
    // 2. and 3.
    switch (mt_hdp(s->hd) / 16) {
    case 1: mb_launch_main<1>(st, p, s->B); break;
    case 2: mb_launch_main<2>(st, p, s->B); break;
    case 3: mb_launch_main<3>(st, p, s->B); break;
    case 4: mb_launch_main<4>(st, p, s->B); break;
    case 5: mb_launch_main<5>(st, p, s->B); break;
    case 6: mb_launch_main<6>(st, p, s->B); break;
    case 7: mb_launch_main<7>(st, p, s->B); break;
    default: mb_launch_main<8>(st, p, s->B); break;
    }
}
