// attention.cu: RoPE + causal attention for the CUDA backend (the GivtOps attention entry points of
// csrc/backend/ops.h, with the math of cpu_attention_fwd/bwd in csrc/cpu/ops_cpu.c): the entry points,
// the RoPE kernel, and the fp32 kernels. Two sets of kernels:
//   - bf16 compute (mixed_precision = bf16): FlashAttention-2 style tensor-core kernels on mma.sync,
//     ldmatrix and cp.async (kernels/ptx.cuh, kernels/mma_tile.cuh): the forward in
//     attention_mma_fwd.cu, the backward (5 tile products per tile pair, D from the forward's output,
//     deterministic dQ) in attention_mma_bwd.cu;
//   - fp32 compute (mixed_precision = no, the mode that matches the CPU to 1e-5): the FMA kernels here.
// RoPE (both): a small kernel rotates q (rows 0 .. Tq-1, positions pos0 ..) and k (rows pos0 .. Tk-1)
// in place before the forward (the backward and the KV cache read the rotated rows; it is not fused
// into the tile loads: see kernels/README.md, "Attention kernels").
//
// fp32 forward: one block per (query tile of ATT_BQ rows, head, sequence) walks the key tiles
// 0 .. pos0 + its last query with an online softmax (running max and sum per row), so no Tq x Tk
// matrix is ever stored. It saves L = max + log(sum) per query row (float, (B, H, Tq)).
// fp32 backward (training shapes, pos0 = 0, Tq = Tk = T), without atomics, in three deterministic
// passes:
//   1. D_i = dO_i . O_i, where O_i = sum_j P_ij v_j is recomputed from q, k, v and L by the forward
//      kernel in its "D" mode (P_ij = exp(s_ij - L_i)), in float32 (the op's out, rounded to the
//      compute dtype, is not used: recomputing keeps the fp32 mode exact); D goes to the scratch
//      (float, (B, H, T)).
//   2. one block per (key tile, head, sequence) loops over the query tiles at and after it:
//      dV_j = sum_i P_ij dO_i, dK_j = scale * sum_i dS_ij q_i with dS_ij = P_ij (dO_i . v_j - D_i);
//   3. one block per (query tile, head, sequence) loops over the key tiles up to it:
//      dQ_i = scale * sum_j dS_ij k_j.
//   dq and dk go back through the transpose of RoPE in the epilogue of their pass, from the float
//   accumulators (one rounding to the compute dtype).
// fp32 tiles: 32 query rows x 32 keys, 128 threads (4 warps); each warp owns 8 rows (queries, or keys
// in pass 2) and, per row, the head dims lane, lane + 32, lane + 64, lane + 96 of its accumulators, so
// hd may be anything up to ATT_MAX_HD = 128 (a runtime value). The dot products of a tile are plain
// FMA loops with one operand broadcast from shared memory and the other read by lane with a padded
// row stride (hd | 1, odd, so no bank conflicts). Tiles are staged in shared memory in float32
// (dynamic shared memory sized from hd: ~36 KiB forward, ~74 KiB backward at hd = 128 in float32,
// which opts in above 48 KiB). Everything accumulates in float32; expf/logf in float32. (The kernels
// are templates on the element type; only their float instantiations are launched.)
#include "launch.cuh"
#include "common.cuh"

#include "attention_mma.cuh"

#include <math.h>
#include <stdint.h>


#define ATT_BQ 32        // query rows per tile
#define ATT_BK 32        // keys per tile
#define ATT_THREADS 128  // 4 warps
#define ATT_RPW 8        // rows per warp (ATT_BQ / 4 = ATT_BK / 4)
#define ATT_MAX_HD 128
#define ATT_DPL 4        // head dims per lane: ATT_MAX_HD / 32
#define ATT_FULL_MASK 0xffffffffu

namespace {

// The shape of one call as the kernels see it.
struct AttnDev {
    int H, hd, Tq, pos0, n_rot;
    size_t q_row, q_batch, kv_row, kv_batch;
    float scale;
};

// Where the data of one block's head (head blockIdx.y of sequence blockIdx.z) starts, in elements:
// its row 0 in q (and dq), in k and v (and dk, dv), in dout (B, Tq, H * hd, dense), and in the
// per-row statistics (B, H, Tq).
struct AttnHeadOff {
    size_t q, kv, o, stat;
};
__device__ inline AttnHeadOff attn_head_off(const AttnDev &p) {
    const size_t b = blockIdx.z, h = blockIdx.y, hd = (size_t)p.hd;
    return {b * p.q_batch + h * hd, b * p.kv_batch + h * hd, b * p.Tq * p.H * hd + h * hd, (b * p.H + h) * p.Tq};
}

__device__ inline int attn_min(int a, int b) { return a < b ? a : b; }
__device__ inline float attn_ld(const float *p) { return *p; }
__device__ inline void attn_st(float *p, float x) { *p = x; }

__device__ inline float attn_warp_max(float x) {
    for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(ATT_FULL_MASK, x, off));
    return x;
}
__device__ inline float attn_warp_sum(float x) {
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(ATT_FULL_MASK, x, off);
    return x;
}

// Dim d of one head row x after rotate-half RoPE over its first n dims (cs, sn: the table rows of
// its position), or after the transpose of that map (the backward), as rope_head in ops_cpu.c.
__device__ inline float attn_rope_dim(const float *x, int d, int n, const float *cs, const float *sn, bool transpose) {
    int half = n / 2;
    if (d >= n) return x[d];
    if (d < half) {
        float x1 = x[d], x2 = x[d + half];
        return transpose ? x1 * cs[d] + x2 * sn[d + half] : x1 * cs[d] - x2 * sn[d];
    }
    int i = d - half;
    float x1 = x[i], x2 = x[d];
    return transpose ? x2 * cs[d] - x1 * sn[i] : x2 * cs[d] + x1 * sn[i];
}

// The rotation of W pairs (x1[j], x2[j]) = (x[i + j], x[i + j + half]) at one position: cs, sn are the
// table rows from element i (c1, s1) and i + half (c2, s2), as rope_head in ops_cpu.c.
template <int W, typename T>
__device__ inline void attn_rope_pairs(T *v1, T *v2, const float *c1, const float *s1, const float *c2,
                                       const float *s2) {
    float x1[W], x2[W], a[W], b[W], c[W], d[W], y1[W], y2[W];
    cm_ld_f32<W>(x1, v1), cm_ld_f32<W>(x2, v2);
    cm_ld_f32<W>(a, c1), cm_ld_f32<W>(b, s1), cm_ld_f32<W>(c, c2), cm_ld_f32<W>(d, s2);
#pragma unroll
    for (int j = 0; j < W; j++) y1[j] = x1[j] * a[j] - x2[j] * b[j], y2[j] = x2[j] * c[j] + x1[j] * d[j];
    cm_st_f32<W>(v1, y1), cm_st_f32<W>(v2, y2);
}

// In place RoPE on rows [0, gridDim.x) of x (sequence blockIdx.y), row r at position pos + r: the
// pairs (i, i + n/2) of each head's first n dims, ATT_ROPE_W = 4 pairs per thread where half = n/2 is a
// multiple of 4 and every row, head and table row is aligned for it (vec: 16-byte loads of the float
// tables, 8-byte (bf16) or 16-byte (float) loads of x, so a warp's requests cover whole sectors), else
// one pair a thread. The block's threads walk the (head, unit) grid of a row without a division per
// unit.
#define ATT_ROPE_W 4
template <typename T>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_rope_kernel(T *x, size_t row, size_t batch, int pos, int H, int hd, int n, const float *cos_t,
                     const float *sin_t, bool vec) {
    constexpr int W = ATT_ROPE_W;
    const int r = blockIdx.x, b = blockIdx.y, half = n / 2, w = vec ? W : 1, per = half / w;
    T *xr = x + (size_t)b * batch + (size_t)r * row;
    const float *cs = cos_t + (size_t)(pos + r) * n, *sn = sin_t + (size_t)(pos + r) * n;
    int h = threadIdx.x / per, u = threadIdx.x - h * per;
    const int dh = blockDim.x / per, du = blockDim.x - dh * per;
    for (; h < H; h += dh, u += du) {
        if (u >= per) u -= per, h++;
        if (h >= H) break;
        const int i = u * w;
        T *v = xr + (size_t)h * hd + i;
        if (vec)
            attn_rope_pairs<W>(v, v + half, cs + i, sn + i, cs + i + half, sn + i + half);
        else
            attn_rope_pairs<1>(v, v + half, cs + i, sn + i, cs + i + half, sn + i + half);
    }
}

// Launches attn_rope_kernel on rows [0, rows) of x (row r at position pos + r)
template <typename T>
void attn_rope_launch(cudaStream_t st, T *x, size_t row, size_t batch, int rows, int B, int pos, int H, int hd,
                      int n, const float *cos_t, const float *sin_t) {
    if (rows <= 0 || n <= 0) return;
    const size_t W = ATT_ROPE_W;
    const bool vec = (n / 2) % W == 0 && row % W == 0 && batch % W == 0 && hd % W == 0 &&
                     cm_aligned(x, W * sizeof(T)) && cm_aligned(cos_t, 16) && cm_aligned(sin_t, 16);
    GIVT_LAUNCH(attn_rope_kernel<T>, dim3(rows, B), dim3(ATT_THREADS), 0, st, x, row, batch, pos, H, hd, n, cos_t,
                sin_t, vec);
}

// Loads rows [0, nrows) of a (ATT_BQ or ATT_BK)-row tile into shared memory as float (row stride ld),
// zeros for rows nrows .. 31. src row r at src + r * row, dims 0 .. hd-1.
template <typename T>
__device__ inline void attn_load_tile(float *dst, int ld, const T *src, size_t row, int nrows, int hd) {
    for (int idx = threadIdx.x; idx < 32 * hd; idx += ATT_THREADS) {
        int r = idx / hd, d = idx - r * hd;
        dst[r * ld + d] = r < nrows ? attn_ld(src + (size_t)r * row + d) : 0.0f;
    }
}

// acc[rr][c] += sum_j W[row][j] * tile[j][lane + 32 c] for the warp's ATT_RPW rows (row = warp *
// ATT_RPW + rr, W row-major with stride ATT_BK) and the lane's dims, over the n rows of tile (stride
// ld, hd dims): the forward's O += P V and the backward's dQ += dS K.
static __device__ __forceinline__ void attn_rows_times_tile(float acc[ATT_RPW][ATT_DPL], const float *W,
                                                            const float *tile, int ld, int n, int hd, int warp,
                                                            int lane) {
    for (int j = 0; j < n; j++) {
        float t[ATT_DPL];
#pragma unroll
        for (int c = 0; c < ATT_DPL; c++) t[c] = lane + 32 * c < hd ? tile[j * ld + lane + 32 * c] : 0.0f;
#pragma unroll
        for (int rr = 0; rr < ATT_RPW; rr++) {
            float w = W[(warp * ATT_RPW + rr) * ATT_BK + j];
#pragma unroll
            for (int c = 0; c < ATT_DPL; c++) acc[rr][c] += w * t[c];
        }
    }
}

size_t attn_fwd_smem(int hd) { return sizeof(float) * ((size_t)ATT_BQ * hd + (size_t)ATT_BK * (hd | 1) + ATT_BQ * ATT_BK); }
size_t attn_bwd_smem(int hd) {
    return sizeof(float) * (2 * (size_t)32 * hd + 2 * (size_t)32 * (hd | 1) + 2 * ATT_BQ * ATT_BK + 2 * ATT_BQ);
}

// Forward (lse == NULL): out (B, Tq, H*hd) and stat = L (B, H, Tq). "D" mode (lse != NULL, training
// shapes): O is recomputed with P = exp(s - lse) and stat = D = dO . O per row; out is not written.
// Grid (query tiles, H, B).
template <typename T>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_fwd_kernel(T *out, float *stat, const float *lse, const T *q, const T *k, const T *v, const T *dout,
                    AttnDev p) {
    GIVT_DYNAMIC_SMEM(float, attn_smem);
    const int hd = p.hd, ldk = hd | 1;
    float *Qs = attn_smem;            // [ATT_BQ][hd], read broadcast
    float *KVs = Qs + ATT_BQ * hd;    // [ATT_BK][ldk], K then V of the current key tile
    float *Ps = KVs + ATT_BK * ldk;   // [ATT_BQ][ATT_BK]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q0 = blockIdx.x * ATT_BQ, h = blockIdx.y, b = blockIdx.z;
    const int nq = attn_min(ATT_BQ, p.Tq - q0);
    const int C = p.H * hd;
    const bool dmode = lse != nullptr;
    const AttnHeadOff off = attn_head_off(p);
    const T *qb = q + off.q, *kb = k + off.kv, *vb = v + off.kv;
    const size_t stat0 = off.stat + q0;  // row 0 of this tile in stat / lse

    attn_load_tile(Qs, hd, qb + (size_t)q0 * p.q_row, p.q_row, nq, hd);

    float m[ATT_RPW], l[ATT_RPW], o[ATT_RPW][ATT_DPL];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        int r = warp * ATT_RPW + rr;
        m[rr] = dmode ? (r < nq ? lse[stat0 + r] : 0.0f) : -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int c = 0; c < ATT_DPL; c++) o[rr][c] = 0.0f;
    }

    const int kend = p.pos0 + q0 + nq;  // the tile's last query sees keys 0 .. kend-1
    for (int k0 = 0; k0 < kend; k0 += ATT_BK) {
        const int nk = attn_min(ATT_BK, kend - k0);
        __syncthreads();  // the previous tile's V (and, the first time, nothing) is no longer read
        attn_load_tile(KVs, ldk, kb + (size_t)k0 * p.kv_row, p.kv_row, nk, hd);
        __syncthreads();

        // S = scale * Q K^T for the warp's 8 rows and the lane's key
        float s[ATT_RPW];
#pragma unroll
        for (int rr = 0; rr < ATT_RPW; rr++) s[rr] = 0.0f;
        const float *kr = KVs + lane * ldk, *qr = Qs + warp * ATT_RPW * hd;
        for (int d = 0; d < hd; d++) {
            float kv = kr[d];
#pragma unroll
            for (int rr = 0; rr < ATT_RPW; rr++) s[rr] += qr[rr * hd + d] * kv;
        }
        const int key = k0 + lane;
#pragma unroll
        for (int rr = 0; rr < ATT_RPW; rr++) {
            int r = warp * ATT_RPW + rr;
            bool valid = r < nq && key <= p.pos0 + q0 + r;  // (key < kend follows)
            float sv = valid ? s[rr] * p.scale : -INFINITY, pr;
            if (dmode) {
                pr = valid ? expf(sv - m[rr]) : 0.0f;
            } else {
                float mnew = fmaxf(m[rr], attn_warp_max(sv));
                float alpha = mnew == -INFINITY ? 1.0f : expf(m[rr] - mnew);
                pr = valid ? expf(sv - mnew) : 0.0f;
                l[rr] = l[rr] * alpha + pr;
#pragma unroll
                for (int c = 0; c < ATT_DPL; c++) o[rr][c] *= alpha;
                m[rr] = mnew;
            }
            Ps[r * ATT_BK + lane] = pr;
        }
        __syncthreads();  // K is no longer read
        attn_load_tile(KVs, ldk, vb + (size_t)k0 * p.kv_row, p.kv_row, nk, hd);
        __syncthreads();

        attn_rows_times_tile(o, Ps, KVs, ldk, nk, hd, warp, lane);  // O += P V
    }

#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        int r = warp * ATT_RPW + rr;  // warp-uniform, so the shuffles below see every lane
        size_t orow = ((size_t)b * p.Tq + q0 + r) * C + (size_t)h * hd;
        if (!dmode) {
            float lsum = attn_warp_sum(l[rr]);
            if (r < nq) {
                float inv = 1.0f / lsum;
#pragma unroll
                for (int c = 0; c < ATT_DPL; c++)
                    if (lane + 32 * c < hd) attn_st(out + orow + lane + 32 * c, o[rr][c] * inv);
                if (lane == 0) stat[stat0 + r] = m[rr] + logf(lsum);
            }
        } else {
            float dot = 0.0f;
            if (r < nq) {
#pragma unroll
                for (int c = 0; c < ATT_DPL; c++)
                    if (lane + 32 * c < hd) dot += o[rr][c] * attn_ld(dout + orow + lane + 32 * c);
            }
            dot = attn_warp_sum(dot);
            if (r < nq && lane == 0) stat[stat0 + r] = dot;
        }
    }
}

// Backward pass 2: dk, dv for the key tile blockIdx.x (grid (key tiles, H, B)).
template <typename T>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dkdv_kernel(T *dk, T *dv, const T *q, const T *k, const T *v, const T *dout, const float *L,
                         const float *D, const float *cos_t, const float *sin_t, AttnDev p) {
    GIVT_DYNAMIC_SMEM(float, attn_smem);
    const int hd = p.hd, ldq = hd | 1, T_ = p.Tq, C = p.H * hd;
    float *Ks = attn_smem;           // [ATT_BK][hd], read broadcast; dK for the epilogue
    float *Vs = Ks + ATT_BK * hd;    // [ATT_BK][hd], read broadcast
    float *Qs = Vs + ATT_BK * hd;    // [ATT_BQ][ldq]
    float *dOs = Qs + ATT_BQ * ldq;  // [ATT_BQ][ldq]
    float *Ps = dOs + ATT_BQ * ldq;  // [ATT_BK][ATT_BQ]
    float *dSs = Ps + ATT_BK * ATT_BQ;
    float *Ls = dSs + ATT_BK * ATT_BQ;  // [ATT_BQ]
    float *Ds = Ls + ATT_BQ;            // [ATT_BQ]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int k0 = blockIdx.x * ATT_BK;
    const int nk = attn_min(ATT_BK, T_ - k0);
    const AttnHeadOff off = attn_head_off(p);
    const size_t kvoff = off.kv, stat0 = off.stat;
    const T *qb = q + off.q, *ob = dout + off.o;

    attn_load_tile(Ks, hd, k + kvoff + (size_t)k0 * p.kv_row, p.kv_row, nk, hd);
    attn_load_tile(Vs, hd, v + kvoff + (size_t)k0 * p.kv_row, p.kv_row, nk, hd);

    float dka[ATT_RPW][ATT_DPL], dva[ATT_RPW][ATT_DPL];
#pragma unroll
    for (int kk = 0; kk < ATT_RPW; kk++)
#pragma unroll
        for (int c = 0; c < ATT_DPL; c++) dka[kk][c] = dva[kk][c] = 0.0f;

    for (int q0 = k0; q0 < T_; q0 += ATT_BQ) {  // queries before k0 see none of these keys
        const int nq = attn_min(ATT_BQ, T_ - q0);
        __syncthreads();  // the previous query tile is no longer read
        attn_load_tile(Qs, ldq, qb + (size_t)q0 * p.q_row, p.q_row, nq, hd);
        attn_load_tile(dOs, ldq, ob + (size_t)q0 * C, (size_t)C, nq, hd);
        if (tid < ATT_BQ) {
            Ls[tid] = tid < nq ? L[stat0 + q0 + tid] : 0.0f;
            Ds[tid] = tid < nq ? D[stat0 + q0 + tid] : 0.0f;
        }
        __syncthreads();

        // the lane's query against the warp's 8 keys: s = q . k, dp = dO . v
        float s[ATT_RPW], dp[ATT_RPW];
#pragma unroll
        for (int kk = 0; kk < ATT_RPW; kk++) s[kk] = dp[kk] = 0.0f;
        const float *qr = Qs + lane * ldq, *orr = dOs + lane * ldq;
        const float *kr = Ks + warp * ATT_RPW * hd, *vr = Vs + warp * ATT_RPW * hd;
        for (int d = 0; d < hd; d++) {
            float qv = qr[d], ov = orr[d];
#pragma unroll
            for (int kk = 0; kk < ATT_RPW; kk++) {
                s[kk] += qv * kr[kk * hd + d];
                dp[kk] += ov * vr[kk * hd + d];
            }
        }
#pragma unroll
        for (int kk = 0; kk < ATT_RPW; kk++) {
            int j = warp * ATT_RPW + kk;
            bool valid = lane < nq && j < nk && k0 + j <= q0 + lane;
            float pr = valid ? expf(s[kk] * p.scale - Ls[lane]) : 0.0f;
            Ps[j * ATT_BQ + lane] = pr;
            dSs[j * ATT_BQ + lane] = pr * (dp[kk] - Ds[lane]);
        }
        __syncthreads();

        // dV += P^T dO, dK += dS^T Q for the warp's 8 keys and the lane's dims
        for (int i = 0; i < nq; i++) {
            float ov[ATT_DPL], qv[ATT_DPL];
#pragma unroll
            for (int c = 0; c < ATT_DPL; c++) {
                bool in = lane + 32 * c < hd;
                ov[c] = in ? dOs[i * ldq + lane + 32 * c] : 0.0f;
                qv[c] = in ? Qs[i * ldq + lane + 32 * c] : 0.0f;
            }
#pragma unroll
            for (int kk = 0; kk < ATT_RPW; kk++) {
                int j = warp * ATT_RPW + kk;
                float pj = Ps[j * ATT_BQ + i], dsj = dSs[j * ATT_BQ + i];
#pragma unroll
                for (int c = 0; c < ATT_DPL; c++) {
                    dva[kk][c] += pj * ov[c];
                    dka[kk][c] += dsj * qv[c];
                }
            }
        }
    }

    __syncthreads();  // Ks becomes dK (scaled), for the RoPE transpose across lanes
#pragma unroll
    for (int kk = 0; kk < ATT_RPW; kk++) {
        int j = warp * ATT_RPW + kk;
#pragma unroll
        for (int c = 0; c < ATT_DPL; c++) {
            int d = lane + 32 * c;
            if (d < hd) {
                Ks[j * hd + d] = dka[kk][c] * p.scale;
                if (j < nk) attn_st(dv + kvoff + (size_t)(k0 + j) * p.kv_row + d, dva[kk][c]);
            }
        }
    }
    __syncthreads();
    for (int idx = tid; idx < nk * hd; idx += ATT_THREADS) {
        int j = idx / hd, d = idx - j * hd, pos = k0 + j;
        float x = attn_rope_dim(Ks + j * hd, d, p.n_rot, cos_t + (size_t)pos * p.n_rot, sin_t + (size_t)pos * p.n_rot,
                                true);
        attn_st(dk + kvoff + (size_t)pos * p.kv_row + d, x);
    }
}

// Backward pass 3: dq for the query tile blockIdx.x (grid (query tiles, H, B)).
template <typename T>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dq_kernel(T *dq, const T *q, const T *k, const T *v, const T *dout, const float *L, const float *D,
                       const float *cos_t, const float *sin_t, AttnDev p) {
    GIVT_DYNAMIC_SMEM(float, attn_smem);
    const int hd = p.hd, ldk = hd | 1, T_ = p.Tq, C = p.H * hd;
    float *Qs = attn_smem;           // [ATT_BQ][hd], read broadcast; dQ for the epilogue
    float *dOs = Qs + ATT_BQ * hd;   // [ATT_BQ][hd], read broadcast
    float *Ks = dOs + ATT_BQ * hd;   // [ATT_BK][ldk]
    float *Vs = Ks + ATT_BK * ldk;   // [ATT_BK][ldk]
    float *dSs = Vs + ATT_BK * ldk;  // [ATT_BQ][ATT_BK]
    float *Ls = dSs + ATT_BQ * ATT_BK;  // [ATT_BQ] (attn_bwd_smem has room for pass 2's larger layout)
    float *Ds = Ls + ATT_BQ;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q0 = blockIdx.x * ATT_BQ;
    const int nq = attn_min(ATT_BQ, T_ - q0);
    const AttnHeadOff off = attn_head_off(p);
    const size_t qoff = off.q, stat0 = off.stat;
    const T *kb = k + off.kv, *vb = v + off.kv, *ob = dout + off.o;

    attn_load_tile(Qs, hd, q + qoff + (size_t)q0 * p.q_row, p.q_row, nq, hd);
    attn_load_tile(dOs, hd, ob + (size_t)q0 * C, (size_t)C, nq, hd);
    if (tid < ATT_BQ) {
        Ls[tid] = tid < nq ? L[stat0 + q0 + tid] : 0.0f;
        Ds[tid] = tid < nq ? D[stat0 + q0 + tid] : 0.0f;
    }

    float dqa[ATT_RPW][ATT_DPL];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++)
#pragma unroll
        for (int c = 0; c < ATT_DPL; c++) dqa[rr][c] = 0.0f;

    const int kend = q0 + nq;
    for (int k0 = 0; k0 < kend; k0 += ATT_BK) {
        const int nk = attn_min(ATT_BK, kend - k0);
        __syncthreads();  // the previous key tile is no longer read
        attn_load_tile(Ks, ldk, kb + (size_t)k0 * p.kv_row, p.kv_row, nk, hd);
        attn_load_tile(Vs, ldk, vb + (size_t)k0 * p.kv_row, p.kv_row, nk, hd);
        __syncthreads();

        // the warp's 8 queries against the lane's key
        float s[ATT_RPW], dp[ATT_RPW];
#pragma unroll
        for (int rr = 0; rr < ATT_RPW; rr++) s[rr] = dp[rr] = 0.0f;
        const float *kr = Ks + lane * ldk, *vr = Vs + lane * ldk;
        const float *qr = Qs + warp * ATT_RPW * hd, *orr = dOs + warp * ATT_RPW * hd;
        for (int d = 0; d < hd; d++) {
            float kv = kr[d], vv = vr[d];
#pragma unroll
            for (int rr = 0; rr < ATT_RPW; rr++) {
                s[rr] += qr[rr * hd + d] * kv;
                dp[rr] += orr[rr * hd + d] * vv;
            }
        }
#pragma unroll
        for (int rr = 0; rr < ATT_RPW; rr++) {
            int r = warp * ATT_RPW + rr;
            bool valid = r < nq && lane < nk && k0 + lane <= q0 + r;
            float pr = valid ? expf(s[rr] * p.scale - Ls[r]) : 0.0f;
            dSs[r * ATT_BK + lane] = pr * (dp[rr] - Ds[r]);
        }
        __syncthreads();

        attn_rows_times_tile(dqa, dSs, Ks, ldk, nk, hd, warp, lane);  // dQ += dS K
    }

    __syncthreads();  // Qs becomes dQ (scaled), for the RoPE transpose across lanes
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        int r = warp * ATT_RPW + rr;
#pragma unroll
        for (int c = 0; c < ATT_DPL; c++)
            if (lane + 32 * c < hd) Qs[r * hd + lane + 32 * c] = dqa[rr][c] * p.scale;
    }
    __syncthreads();
    for (int idx = tid; idx < nq * hd; idx += ATT_THREADS) {
        int r = idx / hd, d = idx - r * hd, pos = q0 + r;
        float x = attn_rope_dim(Qs + r * hd, d, p.n_rot, cos_t + (size_t)pos * p.n_rot, sin_t + (size_t)pos * p.n_rot,
                                true);
        attn_st(dq + qoff + (size_t)pos * p.q_row + d, x);
    }
}

// Kernels whose dynamic shared memory passes the default 48 KiB opt in to it (up to the device's
// limit, 227 KiB on sm_90; the fp32 backward at hd 128 takes ~74 KiB).
template <typename K>
void attn_allow_smem(K kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

AttnDev attn_dev(const AttnShape *s) {
    AttnDev p;
    p.H = s->H;
    p.hd = s->hd;
    p.Tq = s->Tq;
    p.pos0 = s->pos0;
    p.n_rot = s->n_rot;
    p.q_row = s->q_row;
    p.q_batch = s->q_batch;
    p.kv_row = s->kv_row;
    p.kv_batch = s->kv_batch;
    p.scale = 1.0f / sqrtf((float)s->hd);
    return p;
}

void attn_check_shape(const AttnShape *s, const char *what) {
    if (s->hd < 1 || s->hd > ATT_MAX_HD || s->n_rot < 0 || s->n_rot > s->hd || (s->n_rot & 1) ||
        s->Tk != s->pos0 + s->Tq)
        givt_die("%s: unsupported shape (hd %d, the CUDA kernels take 1 .. %d; n_rot %d; Tq %d, Tk %d, pos0 %d)", what,
                 s->hd, ATT_MAX_HD, s->n_rot, s->Tq, s->Tk, s->pos0);
}

// RoPE in place on q (rows 0 .. Tq-1 at positions pos0 ..) and on k's rows pos0 .. Tk-1
template <typename T>
void attn_rope_qk(cudaStream_t st, T *q, T *k, const float *cos_t, const float *sin_t, const AttnShape *s) {
    attn_rope_launch(st, q, s->q_row, s->q_batch, s->Tq, s->B, s->pos0, s->H, s->hd, s->n_rot, cos_t, sin_t);
    attn_rope_launch(st, k + (size_t)s->pos0 * s->kv_row, s->kv_row, s->kv_batch, s->Tk - s->pos0, s->B, s->pos0,
                     s->H, s->hd, s->n_rot, cos_t, sin_t);
}

template <typename T>
void attn_fwd_launch(Backend *be, T *out, float *lse, T *q, T *k, const T *v, const float *cos_t,
                     const float *sin_t, const AttnShape *s) {
    cudaStream_t st = cuda_stream(be);
    AttnDev p = attn_dev(s);
    attn_rope_qk(st, q, k, cos_t, sin_t, s);
    size_t smem = attn_fwd_smem(s->hd);
    attn_allow_smem(attn_fwd_kernel<T>, smem);
    dim3 grid((s->Tq + ATT_BQ - 1) / ATT_BQ, s->H, s->B);
    GIVT_LAUNCH(attn_fwd_kernel<T>, grid, dim3(ATT_THREADS), smem, st, out, lse, (const float *)nullptr,
                (const T *)q, (const T *)k, v, (const T *)nullptr, p);
}

template <typename T>
void attn_bwd_launch(Backend *be, T *dq, T *dk, T *dv, float *Dbuf, const T *dout, const T *q, const T *k, const T *v,
                     const float *lse, const float *cos_t, const float *sin_t, const AttnShape *s) {
    cudaStream_t st = cuda_stream(be);
    AttnDev p = attn_dev(s);
    dim3 grid((s->Tq + ATT_BQ - 1) / ATT_BQ, s->H, s->B), block(ATT_THREADS);
    size_t fsmem = attn_fwd_smem(s->hd), bsmem = attn_bwd_smem(s->hd);
    attn_allow_smem(attn_fwd_kernel<T>, fsmem);
    GIVT_LAUNCH(attn_fwd_kernel<T>, grid, block, fsmem, st, (T *)nullptr, Dbuf, lse, q, k, v, dout, p);
    attn_allow_smem(attn_bwd_dkdv_kernel<T>, bsmem);
    GIVT_LAUNCH(attn_bwd_dkdv_kernel<T>, grid, block, bsmem, st, dk, dv, q, k, v, dout, lse, (const float *)Dbuf,
                cos_t, sin_t, p);
    attn_allow_smem(attn_bwd_dq_kernel<T>, bsmem);
    GIVT_LAUNCH(attn_bwd_dq_kernel<T>, grid, block, bsmem, st, dq, q, k, v, dout, lse, (const float *)Dbuf, cos_t,
                sin_t, p);
}

typedef __nv_bfloat16 bf16_t;

bool attn_bf16(Backend *be) { return ((CudaCtx *)be->ctx)->dtype == DTYPE_BF16; }

}  // namespace

extern "C" {

size_t cuda_attention_saved_bytes(Backend *be, const AttnShape *s) {
    (void)be;
    return (size_t)s->B * s->H * s->Tq * sizeof(float);  // L per query row
}

void cuda_attention_fwd(Backend *be, cval *out, void *saved, cval *q, cval *k, const cval *v, const float *cos,
                        const float *sin, const AttnShape *s) {
    attn_check_shape(s, "attention_fwd");
    if (s->B == 0 || s->H == 0 || s->Tq == 0) return;
    float *lse = (float *)saved;
    if (attn_bf16(be)) {  // RoPE in place, then the tensor-core forward (attention_mma_fwd.cu)
        attn_rope_qk(cuda_stream(be), (bf16_t *)q, (bf16_t *)k, cos, sin, s);
        cuda_attn_mma_fwd(be, (bf16_t *)out, lse, (bf16_t *)q, (bf16_t *)k, (const bf16_t *)v, s);
    } else {
        attn_fwd_launch(be, (float *)out, lse, (float *)q, (float *)k, (const float *)v, cos, sin, s);
    }
}

size_t cuda_attention_scratch_bytes(Backend *be, const AttnShape *s) {
    if (attn_bf16(be)) return cuda_attn_mma_bwd_scratch_bytes(s);  // L, D and the dQ partials
    return (size_t)s->B * s->H * s->Tq * sizeof(float);  // D = rowsum(dO * O) per query row
}

void cuda_attention_bwd(Backend *be, cval *dq, cval *dk, cval *dv, void *scratch, const cval *dout, const cval *out,
                        const cval *q, const cval *k, const cval *v, const void *saved, const float *cos,
                        const float *sin, const AttnShape *s) {
    attn_check_shape(s, "attention_bwd");
    if (s->pos0 != 0 || s->Tq != s->Tk) givt_die("attention_bwd: training shapes only (pos0 = 0, Tq = Tk)");
    if (s->B == 0 || s->H == 0 || s->Tq == 0) return;
    const float *lse = (const float *)saved;
    typedef bf16_t bf;
    if (attn_bf16(be))  // the tensor-core backward (attention_mma_bwd.cu): D from the forward's output
        cuda_attn_mma_bwd(be, (bf *)dq, (bf *)dk, (bf *)dv, scratch, (const bf *)dout, (const bf *)out, (const bf *)q,
                          (const bf *)k, (const bf *)v, lse, cos, sin, s);
    else  // fp32: D recomputed (three passes); out unused
        attn_bwd_launch(be, (float *)dq, (float *)dk, (float *)dv, (float *)scratch, (const float *)dout,
                        (const float *)q, (const float *)k, (const float *)v, lse, cos, sin, s);
}

}  // extern "C"
