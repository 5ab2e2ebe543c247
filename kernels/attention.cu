// attention.cu: RoPE + causal attention for the CUDA backend, flash style (the GivtOps attention
// entry points of csrc/backend/ops.h, with the math of cpu_attention_fwd/bwd in csrc/cpu/ops_cpu.c).
//
// Forward: a small kernel rotates q (rows 0 .. Tq-1, positions pos0 ..) and k (rows pos0 .. Tk-1)
// in place; then one block per (query tile of ATT_BQ rows, head, sequence) walks the key tiles
// 0 .. pos0 + its last query with an online softmax (running max and sum per row), so no Tq x Tk
// matrix is ever stored. It saves L = max + log(sum) per query row (float, (B, H, Tq)).
// Backward (training shapes, pos0 = 0, Tq = Tk = T), without atomics, in three deterministic passes:
//   1. D_i = dO_i . O_i, where O_i = sum_j P_ij v_j is recomputed from q, k, v and L (the op is not
//      given the forward's output) by the forward kernel in its "D" mode (P_ij = exp(s_ij - L_i));
//      D goes to the scratch (float, (B, H, T)).
//   2. one block per (key tile, head, sequence) loops over the query tiles at and after it:
//      dV_j = sum_i P_ij dO_i, dK_j = scale * sum_i dS_ij q_i with dS_ij = P_ij (dO_i . v_j - D_i);
//   3. one block per (query tile, head, sequence) loops over the key tiles up to it:
//      dQ_i = scale * sum_j dS_ij k_j.
//   dq and dk go back through the transpose of RoPE in the epilogue of their pass, from the float
//   accumulators (one rounding to the compute dtype).
//
// Two sets of kernels with these passes: fp32 compute (mixed_precision = no, the mode that matches the
// CPU to 1e-5) runs the FMA kernels described next; bf16 compute runs the WMMA (tensor core) kernels
// of the "bf16 compute" section below (64 x 64 tiles, every hd up to 128 by zero padding to 16s).
//
// fp32 tiles: 32 query rows x 32 keys, 128 threads (4 warps); each warp owns 8 rows (queries, or keys in
// pass 2) and, per row, the head dims lane, lane + 32, lane + 64, lane + 96 of its accumulators, so
// hd may be anything up to ATT_MAX_HD = 128 (a runtime value). The dot products of a tile are plain
// FMA loops with one operand broadcast from shared memory and the other read by lane with a padded
// row stride (hd | 1, odd, so no bank conflicts). Tiles are staged in shared memory in float32
// (dynamic shared memory sized from hd: ~36 KiB forward, ~74 KiB backward at hd = 128 in float32,
// which opts in above 48 KiB). Everything accumulates in float32; expf/logf in float32.
// (These kernels are templates on the element type; they served bf16 too before the WMMA kernels,
// and now only their float instantiations are launched.) Not done: mma.sync / wgmma PTX (FA2/FA3 register layouts, TMA), which
// the emulation cannot run; the WMMA kernels have not been measured on a GPU.
#include "launch.cuh"

#include <math.h>
#include <stdint.h>

#include <type_traits>

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
__device__ inline float attn_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ inline void attn_st(float *p, float x) { *p = x; }
__device__ inline void attn_st(__nv_bfloat16 *p, float x) { *p = __float2bfloat16(x); }

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

// In place RoPE on rows [0, gridDim.x) of x (sequence blockIdx.y), row r at position pos + r.
template <typename T>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_rope_kernel(T *x, size_t row, size_t batch, int pos, int H, int hd, int n, const float *cos_t,
                     const float *sin_t) {
    int r = blockIdx.x, b = blockIdx.y, half = n / 2;
    T *xr = x + (size_t)b * batch + (size_t)r * row;
    const float *cs = cos_t + (size_t)(pos + r) * n, *sn = sin_t + (size_t)(pos + r) * n;
    for (int idx = threadIdx.x; idx < H * half; idx += blockDim.x) {
        int h = idx / half, i = idx - h * half;
        T *v = xr + (size_t)h * hd;
        float x1 = attn_ld(v + i), x2 = attn_ld(v + i + half);
        attn_st(v + i, x1 * cs[i] - x2 * sn[i]);
        attn_st(v + i + half, x2 * cs[i + half] + x1 * sn[i + half]);
    }
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

// ==== bf16 compute: the tile products on tensor cores (WMMA) ====================================
// Tiles of AW_BQ = 64 query rows x AW_BK = 64 keys, AW_THREADS = 128 threads (4 warps); warp w owns
// the 16-row strip w of a tile (query rows in the forward and in pass 3, key rows in pass 2's dK, dV
// products). hd is padded with zeros to hdp = the next multiple of 16 (WMMA's k and n), so every hd
// from 1 to 128 runs here. All operands are staged in shared memory as bf16 (rows of hdp + 8
// elements: 16 bytes of padding against bank conflicts, never read); the products accumulate in
// fp32 fragments; S and dP go from the accumulators to shared memory (fp32, rows of 72), where
// scalar fp32 code does the masking, the online softmax and dS = P (dP - D), and writes P and dS as
// bf16 (rows of 72) for the next products; O (forward) and the epilogue's rows are fp32 rows of
// hdp + 8. Those strides put the rows of an 8-byte accumulator store or load (the mma C layout: 4
// rows x 8 words a half-warp) 8 or 24 banks apart, so they are conflict-free. Fragments are touched
// only through load/store/mma_sync and elementwise scaling (the element-to-lane mapping is
// unspecified: launch.cuh).
//   forward (and pass 1's D mode): S_strip = Q_strip K^T; softmax; O_strip += P_strip V with O kept
//     in shared memory as fp32 (its rows are rescaled by the online softmax in scalar code, so the
//     accumulators are loaded from and stored back to it around the product);
//   pass 2 (per key tile): S = Q K^T, dP = dO V^T (query strips); then, per key strip, dV += P^T dO
//     and dK += dS^T Q with P^T and dS^T read as col_major fragments, accumulated in registers
//     (hdp / 16 fragments each) over the query tiles;
//   pass 3 (per query tile): S, dP as in pass 2; dQ += dS K in registers over the key tiles.
// Memory access (what the SASS shows: scripts/sass_check.sh): the tile pointers stay in the shared
// space (aw_align), so every shared access is LDS/STS except the bf16 WMMA fragment loads, which
// nvcc 13 compiles to generic 32-bit LD whatever the pointer (wmma.load...bf16 never gets .shared;
// the f16 forms would give LDSM): ldmatrix needs the PTX of issue 20. Tiles are loaded in 16-byte
// chunks (aw_load_tiles: LDG.128 + STS.128, coalesced and conflict-free, both tiles of a pair in
// flight together; elementwise where hd is not a multiple of 8 or a row is not 16-byte aligned);
// outputs are stored as bf16 pairs, consecutive lanes on consecutive pairs of a row (aw_store_rows);
// no division per element anywhere. The forward's softmax walks its half rows in a rotated order per
// lane (see there): conflict-free.
// Dynamic shared memory (aw_fwd_smem, aw_bwd_smem; passes 2 and 3 get the same size, pass 3 uses
// 9 KiB less): forward 52 / 72 / 112 KiB and backward 75 / 91 / 123 KiB at hd 32 / 64 / 128, opting
// in above 48 KiB (sm_90 allows 227 KiB a block: two forward blocks or one backward block per SM at
// hd 128). Registers (ptxas 13, sm_90): forward 128, pass 2 236, pass 3 162 a thread, no spills.
// Why 64 x 64 with 4 warps: each warp's strip is one row of WMMA fragments (4 accumulators for S),
// the register file holds pass 2's 2 x 8 accumulators at hd 128 without spilling, a tile pair's
// operands fit twice per SM in the forward, and the causal diagonal wastes at most one tile.
// Work that no row can see is skipped warp-uniformly (fragments of rows past the tile's end or of
// keys past the causal limit). Same passes, same saved state (L) and scratch (D) as the fp32
// kernels, no atomics, fixed order: deterministic.
#define AW_BQ 64
#define AW_BK 64
#define AW_THREADS 128
#define AW_NT (ATT_MAX_HD / 16)  // accumulator fragments per strip at the largest hd
#define AW_LDS (AW_BK + 8)       // fp32 S / dP rows (8 banks apart: conflict-free accumulator stores)
#define AW_LDP (AW_BK + 8)       // bf16 P / dS rows

namespace wmma = nvcuda::wmma;
typedef __nv_bfloat16 bf16_t;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> aw_acc;

__host__ __device__ inline int aw_hdp(int hd) { return (hd + 15) & ~15; }
// WMMA needs 32-byte aligned tiles; GIVT_DYNAMIC_SMEM promises 16: start at the next 128 bytes. The
// padding is computed from the shared address and added to p (never a pointer rebuilt from an
// integer, which would lose the shared space: generic LD/ST for every access), so nvcc still knows
// that every tile pointer derived from it is shared (LDS/STS).
__device__ inline unsigned char *aw_align(unsigned char *p) {
#ifdef GIVT_CUDA_EMU
    const unsigned off = (unsigned)(uintptr_t)p;
#else
    const unsigned off = (unsigned)__cvta_generic_to_shared(p);
#endif
    return p + ((128u - (off & 127u)) & 127u);
}

// A walk over the units (16-byte chunks, pairs or elements) of a tile's rows, w units a row: walker
// id of n takes units id, id + n, id + 2n, ... (unit i = row i / w, unit i % w), without a division
// per unit: this walker's (r, c), then next().
struct AwWalk {
    int r, c, w, dr, dc;
    __device__ AwWalk(int w_, int id, int n) : w(w_) {
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

// 16-byte global loads: the source pointer and the row stride keep every row's start 16-byte aligned,
// and hd is a multiple of 8 (whole chunks)
__device__ inline bool aw_vec16(const bf16_t *src, size_t row, int hd) {
    return (hd & 7) == 0 && (row & 7) == 0 && ((uintptr_t)src & 15) == 0;
}

// one 8-element chunk of a tile, elementwise (the fallback of odd strides and hd): src[0 .. m) and
// zeros for [m, 8)
__device__ inline void aw_chunk_scalar(bf16_t *dst, const bf16_t *src, int m) {
#pragma unroll 1
    for (int e = 0; e < 8; e++) dst[e] = e < m ? src[e] : __float2bfloat16(0.0f);
}

// Rows [0, AW_BQ) x dims [0, hdp) of one or two bf16 tiles (dst1 / src1 NULL: one; row strides in
// shared memory ld, in global memory row0 / row1), zero outside nrows x hd, in 16-byte chunks, both
// tiles' loads issued before their stores. The 8 threads of a quarter-warp take the same chunk of 8
// consecutive rows (a band), the next 8 the next chunk: the rows of ld = hdp + 8 elements are an odd
// number of 16-byte bank groups apart, so the 16-byte shared stores of a quarter-warp hit 8
// different groups (conflict-free at every hd; whole rows per quarter-warp would conflict where a
// row is shorter than 128 bytes), and a warp reads 8 rows x 64 contiguous bytes (coalesced). Chunks
// of rows past nrows or of dims past hd (the padding to hdp) are zeros.
__device__ inline void aw_load_tiles(bf16_t *dst0, const bf16_t *src0, size_t row0, bf16_t *dst1, const bf16_t *src1,
                                     size_t row1, int ld, int nrows, int hd, int hdp) {
    const bool two = dst1 != nullptr;
    const bool v0 = aw_vec16(src0, row0, hd), v1 = two && aw_vec16(src1, row1, hd);
    const int rs = threadIdx.x & 7;  // the thread's row in a band
    // walk over (band, chunk) with AW_THREADS / 8 walkers
    for (AwWalk w(hdp >> 3, threadIdx.x >> 3, AW_THREADS / 8); w.r < AW_BQ / 8; w.next()) {
        const int r = 8 * w.r + rs, d0 = 8 * w.c;
        const bool in = r < nrows && d0 < hd;
        const bf16_t *s0 = src0 + (size_t)r * row0 + d0, *s1 = two ? src1 + (size_t)r * row1 + d0 : nullptr;
        bf16_t *t0 = dst0 + r * ld + d0, *t1 = two ? dst1 + r * ld + d0 : nullptr;
        uint4 a = {0u, 0u, 0u, 0u}, b = {0u, 0u, 0u, 0u};
        if (in && v0) a = *(const uint4 *)s0;
        if (in && v1) b = *(const uint4 *)s1;
        if (v0)
            *(uint4 *)t0 = a;
        else
            aw_chunk_scalar(t0, s0, in ? hd - d0 : 0);
        if (v1)
            *(uint4 *)t1 = b;
        else if (two)
            aw_chunk_scalar(t1, s1, in ? hd - d0 : 0);
    }
}

// two bf16 as one 4-byte store
struct alignas(4) aw_bf2 {
    bf16_t x, y;
};

// Rows [0, n) x dims [0, hd) of dst (bf16, row stride row) from E (fp32, row stride ldo, a multiple of
// 2), each row times inv[r] (inv NULL: 1): the threads of a warp on consecutive pairs of a row (8-byte
// shared reads, 4-byte global stores), or consecutive elements where hd, the row stride or dst is
// odd: coalesced, no division per element.
__device__ inline void aw_store_rows(bf16_t *dst, size_t row, int n, int hd, const float *E, int ldo,
                                     const float *inv) {
    if ((hd & 1) == 0 && (row & 1) == 0 && ((uintptr_t)dst & 3) == 0) {
        for (AwWalk w(hd >> 1, threadIdx.x, AW_THREADS); w.r < n; w.next()) {
            const int d = 2 * w.c;
            const float2 x = *(const float2 *)(E + w.r * ldo + d);
            const float s = inv ? inv[w.r] : 1.0f;
            *(aw_bf2 *)(dst + (size_t)w.r * row + d) = {__float2bfloat16(x.x * s), __float2bfloat16(x.y * s)};
        }
    } else {
        for (AwWalk w(hd, threadIdx.x, AW_THREADS); w.r < n; w.next())
            dst[(size_t)w.r * row + w.c] = __float2bfloat16(E[w.r * ldo + w.c] * (inv ? inv[w.r] : 1.0f));
    }
}

// C (16 x 16 ncol fp32, row stride ldc) = A (16 x kd, bf16 row-major) B^T, B (16 ncol x kd, bf16
// row-major), ncol <= AW_BK / 16: one warp, S = Q K^T and dP = dO V^T of a strip (the columns that
// the strip's rows can see: the others stay as they were and are masked).
__device__ __forceinline__ void aw_strip_abt(float *C, int ldc, const bf16_t *A, int lda, const bf16_t *B, int ldb,
                                             int kd, int ncol) {
    aw_acc acc[AW_BK / 16];
#pragma unroll
    for (int n = 0; n < AW_BK / 16; n++) wmma::fill_fragment(acc[n], 0.0f);
    for (int k = 0; k < kd; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, wmma::row_major> a;
        wmma::load_matrix_sync(a, A + k, lda);
#pragma unroll
        for (int n = 0; n < AW_BK / 16; n++) {
            if (n < ncol) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::col_major> b;  // B^T: (k, key) at B[key][k]
                wmma::load_matrix_sync(b, B + (size_t)n * 16 * ldb + k, ldb);
                wmma::mma_sync(acc[n], a, b, acc[n]);
            }
        }
    }
#pragma unroll
    for (int n = 0; n < AW_BK / 16; n++)
        if (n < ncol) wmma::store_matrix_sync(C + n * 16, acc[n], ldc, wmma::mem_row_major);
}

// How many of a key tile's columns (keys k0 .. k0 + nk - 1) the rows pos0 + q0 + [r0, r1) see, in
// 16-column fragments (causal: key <= query position).
__device__ inline int aw_ncol(int pos0, int q0, int r0, int r1, int k0, int nk) {
    if (r1 <= r0) return 0;
    int n = attn_min(nk, pos0 + q0 + r1 - k0);
    return n > 0 ? (n + 15) / 16 : 0;
}

// acc[n] += A (16 x 64) B[0 .. 64)[16 n .. 16 n + 16) for n < nt: one warp. A is row-major (A[m * lda
// + k]) or, LA = col_major, the transpose of what is stored (A[k * lda + m]); B bf16 row-major. Only
// the k blocks [kk0, kk1) of 16 (the others are zeros of P or dS: masked).
template <typename LA>
__device__ __forceinline__ void aw_strip_ab(aw_acc (&acc)[AW_NT], int nt, const bf16_t *A, int lda, const bf16_t *B,
                                            int ldb, int kk0, int kk1) {
    const bool acol = std::is_same<LA, wmma::col_major>::value;
    for (int kk = kk0; kk < kk1; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, LA> a;
        wmma::load_matrix_sync(a, A + (acol ? (size_t)kk * 16 * lda : (size_t)kk * 16), lda);
#pragma unroll
        for (int n = 0; n < AW_NT; n++) {
            if (n < nt) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::row_major> b;
                wmma::load_matrix_sync(b, B + (size_t)kk * 16 * ldb + n * 16, ldb);
                wmma::mma_sync(acc[n], a, b, acc[n]);
            }
        }
    }
}

size_t aw_fwd_smem(int hd) {
    size_t ldh = aw_hdp(hd) + 8, ldo = aw_hdp(hd) + 8;
    return 128 + 3 * AW_BQ * ldh * 2 + AW_BQ * AW_LDS * 4 + AW_BQ * AW_LDP * 2 + AW_BQ * ldo * 4;
}
size_t aw_bwd_smem(int hd) {  // pass 2 (pass 3 needs one P-sized array less)
    size_t ldh = aw_hdp(hd) + 8;
    return 128 + 4 * AW_BQ * ldh * 2 + 2 * AW_BQ * AW_LDS * 4 + 2 * AW_BQ * AW_LDP * 2 + 2 * AW_BQ * 4;
}

// Forward (lse == NULL) or pass 1's D mode (lse != NULL), as attn_fwd_kernel. Grid (query tiles, H, B).
__global__ void __launch_bounds__(AW_THREADS)
    attn_wmma_fwd_kernel(bf16_t *out, float *stat, const float *lse, const bf16_t *q, const bf16_t *k,
                         const bf16_t *v, const bf16_t *dout, AttnDev p) {
    GIVT_DYNAMIC_SMEM(unsigned char, aw_raw);
    const int hd = p.hd, hdp = aw_hdp(hd), ldh = hdp + 8, ldo = hdp + 8, nt = hdp / 16;
    bf16_t *Qs = (bf16_t *)aw_align(aw_raw);  // [AW_BQ][ldh]
    bf16_t *Ks = Qs + AW_BQ * ldh;            // [AW_BK][ldh]
    bf16_t *Vs = Ks + AW_BK * ldh;            // [AW_BK][ldh]
    float *Ss = (float *)(Vs + AW_BK * ldh);  // [AW_BQ][AW_LDS]
    bf16_t *Ps = (bf16_t *)(Ss + AW_BQ * AW_LDS);  // [AW_BQ][AW_LDP]
    float *Os = (float *)(Ps + AW_BQ * AW_LDP);    // [AW_BQ][ldo]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q0 = blockIdx.x * AW_BQ;
    const int nq = attn_min(AW_BQ, p.Tq - q0);
    const int C = p.H * hd;
    const bool dmode = lse != nullptr;
    const AttnHeadOff off = attn_head_off(p);
    const bf16_t *qb = q + off.q, *kb = k + off.kv, *vb = v + off.kv;
    const size_t stat0 = off.stat + q0;

    aw_load_tiles(Qs, qb + (size_t)q0 * p.q_row, p.q_row, nullptr, nullptr, 0, ldh, nq, hd, hdp);
    for (int idx = tid; idx < AW_BQ * ldo; idx += AW_THREADS) Os[idx] = 0.0f;

    // the softmax: lanes 2 rr and 2 rr + 1 share the strip's row r = 16 warp + rr, keys [32 half,
    // 32 half + 32) of a tile each (as 16 pairs), dims [hdp/2 half, hdp/2 (half + 1)) of its O row.
    // The row strides (S: 72 floats, P: 72 bf16, O: hdp + 8 floats) keep the accumulator stores and
    // loads conflict-free, but rows 4 or 8 apart then share banks: if every lane walked its columns in
    // the same order, 4 lanes would meet in a bank (the old layout's 4-way conflict). So each lane
    // starts its walk rotated: by gs pairs in S and P, by go floats in O (go by hdp's class), chosen so
    // that the 8-byte S reads (two wavefronts, one a half-warp), the 4-byte P stores and the O
    // rescaling (one wavefront) are conflict-free at every hdp (checked by enumeration of the lanes'
    // banks).
    const int rr = lane >> 1, half = lane & 1, r = warp * 16 + rr;
    const int gs = half + 2 * (rr & 3) + 8 * (((rr >> 2) ^ (rr >> 3)) & 1);  // 0 .. 15
    const int go0 = (hdp & 63) == 32 || hdp == 16 ? ((rr >> 2) & 1) + 2 * (rr >> 3) + 4 * (rr & 3)  // 0 .. 15
                                                  : half + 2 * ((rr >> 2) & 1) + 4 * (rr >> 3);     // 0 .. 7
    const int go = go0 < hdp / 2 ? go0 : go0 - hdp / 2;  // < hdp / 2 (>= 8)
    float m = dmode ? (r < nq ? lse[stat0 + r] : 0.0f) : -INFINITY;  // the row's running max (both lanes)
    float l = 0.0f;                                                    // the lane's part of the row's sum
    const int rows_w = attn_min(16, nq - warp * 16);                   // the warp's rows in the tile (<= 0: none)

    const int kend = p.pos0 + q0 + nq;
    for (int k0 = 0; k0 < kend; k0 += AW_BK) {
        const int nk = attn_min(AW_BK, kend - k0);
        __syncthreads();  // the previous tile's K, V, S, P (and O's product) are done with
        aw_load_tiles(Ks, kb + (size_t)k0 * p.kv_row, p.kv_row, Vs, vb + (size_t)k0 * p.kv_row, p.kv_row, ldh, nk, hd,
                      hdp);
        __syncthreads();
        // the key fragments the warp's rows see (warp-uniform; 0: nothing to do in this tile)
        const int ncol = aw_ncol(p.pos0, q0, warp * 16, warp * 16 + rows_w, k0, nk);
        if (ncol > 0)
            aw_strip_abt(Ss + warp * 16 * AW_LDS, AW_LDS, Qs + warp * 16 * ldh, ldh, Ks, ldh, hdp, ncol);  // S = Q K^T
        __syncthreads();

        if (ncol > 0) {  // the online softmax of the warp's rows, P for columns [0, 16 ncol)
            const int jmax = r < nq ? attn_min(nk, p.pos0 + q0 + r - k0 + 1) : 0;  // the row sees keys j < jmax
            // the lane's half row: keys 32 half + j, seen for j < jm, P stored for j < jp (jm <= jp, jp
            // even: a pair is read only when its first key is seen, and then S holds both of its keys)
            const float *Sr = Ss + r * AW_LDS + 32 * half;
            bf16_t *Pr = Ps + r * AW_LDP + 32 * half;
            const int jm = jmax - 32 * half, jp = 16 * ncol - 32 * half;
            float mx = -INFINITY;
            for (int t = 0; t < 16; t++) {
                const int j = 2 * ((t + gs) & 15);
                if (j < jm) {
                    const float2 s2 = *(const float2 *)(Sr + j);
                    mx = fmaxf(mx, s2.x * p.scale);
                    if (j + 1 < jm) mx = fmaxf(mx, s2.y * p.scale);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(ATT_FULL_MASK, mx, 1));
            const float mnew = dmode ? m : fmaxf(m, mx);
            float sum = 0.0f;
            for (int t = 0; t < 16; t++) {
                const int j = 2 * ((t + gs) & 15);
                float p0 = 0.0f, p1 = 0.0f;
                if (j < jm) {
                    const float2 s2 = *(const float2 *)(Sr + j);
                    p0 = expf(s2.x * p.scale - mnew);
                    if (j + 1 < jm) p1 = expf(s2.y * p.scale - mnew);
                }
                sum += p0;
                sum += p1;
                if (j < jp) *(aw_bf2 *)(Pr + j) = {__float2bfloat16(p0), __float2bfloat16(p1)};
            }
            if (!dmode) {
                const float alpha = mnew == -INFINITY ? 1.0f : expf(m - mnew);
                l = l * alpha + sum;
                m = mnew;
                const int W = hdp >> 1;
                float *Or = Os + r * ldo + half * W;
                for (int t = 0; t < W; t++) {
                    const int d = t + go < W ? t + go : t + go - W;
                    Or[d] *= alpha;
                }
            }
        }
        __syncthreads();

        // O_strip += P_strip V, the accumulators through shared memory (rescaled above)
        float *Ow = Os + warp * 16 * ldo;
        for (int n = 0; n < nt && ncol > 0; n++) {
            aw_acc o;
            wmma::load_matrix_sync(o, Ow + n * 16, ldo, wmma::mem_row_major);
            for (int kk = 0; kk < ncol; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::row_major> bv;
                wmma::load_matrix_sync(a, Ps + warp * 16 * AW_LDP + kk * 16, AW_LDP);
                wmma::load_matrix_sync(bv, Vs + kk * 16 * ldh + n * 16, ldh);
                wmma::mma_sync(o, a, bv, o);
            }
            wmma::store_matrix_sync(Ow + n * 16, o, ldo, wmma::mem_row_major);
        }
    }
    __syncthreads();

    const size_t orow0 = off.o + (size_t)q0 * C;  // the tile's row 0 in out and dout (row stride C)
    if (!dmode) {
        // 1 / the row's sum to shared memory (S's place), then the block stores the rows coalesced
        const float lsum = l + __shfl_xor_sync(ATT_FULL_MASK, l, 1);
        float *Inv = Ss;
        if (half == 0) Inv[r] = r < nq ? 1.0f / lsum : 0.0f;
        if (r < nq && half == 0) stat[stat0 + r] = m + logf(lsum);
        __syncthreads();
        aw_store_rows(out + orow0, (size_t)C, nq, hd, Os, ldo, Inv);
    } else {
        // D = dO . O per row: dO's tile staged in shared memory (coalesced, in Q's place: free), then
        // the warp's rows one by one, the lanes on consecutive dims (conflict-free), a warp sum each
        aw_load_tiles(Qs, dout + orow0, (size_t)C, nullptr, nullptr, 0, ldh, nq, hd, hdp);
        __syncthreads();
#pragma unroll 1
        for (int i = warp * 16; i < warp * 16 + rows_w; i++) {  // warp-uniform
            float dot = 0.0f;
            for (int d = lane; d < hdp; d += 32) dot += Os[i * ldo + d] * __bfloat162float(Qs[i * ldh + d]);
            dot = attn_warp_sum(dot);
            if (lane == 0) stat[stat0 + i] = dot;
        }
    }
}

// S = scale Q K^T and dP = dO V^T for the strips of a (query tile, key tile) pair, then the scalar
// pass: P = exp(S - L) (masked: rows < nq, keys < nk, key <= query), dS = P (dP - D), as bf16.
// Ps may be NULL (pass 3 needs only dS).
__device__ __forceinline__ void aw_bwd_tile(float *Ss, float *dPs, bf16_t *Ps, bf16_t *dSs, const bf16_t *Qs,
                                            const bf16_t *dOs, const bf16_t *Ks, const bf16_t *Vs, const float *Ls,
                                            const float *Ds, int ldh, int hdp, int q0, int nq, int k0, int nk,
                                            float scale, int warp) {
    const int ncol = aw_ncol(0, q0, warp * 16, attn_min(warp * 16 + 16, nq), k0, nk);  // warp-uniform
    if (ncol > 0) {
        aw_strip_abt(Ss + warp * 16 * AW_LDS, AW_LDS, Qs + warp * 16 * ldh, ldh, Ks, ldh, hdp, ncol);
        aw_strip_abt(dPs + warp * 16 * AW_LDS, AW_LDS, dOs + warp * 16 * ldh, ldh, Vs, ldh, hdp, ncol);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < AW_BQ * AW_BK; idx += AW_THREADS) {
        int i = idx / AW_BK, j = idx - i * AW_BK;
        bool valid = i < nq && j < nk && k0 + j <= q0 + i;
        float pr = valid ? expf(Ss[i * AW_LDS + j] * scale - Ls[i]) : 0.0f;
        if (Ps) Ps[i * AW_LDP + j] = __float2bfloat16(pr);
        dSs[i * AW_LDP + j] = __float2bfloat16(valid ? pr * (dPs[i * AW_LDS + j] - Ds[i]) : 0.0f);
    }
    __syncthreads();
}

// The epilogue of passes 2 and 3: acc (scaled by s) into E (fp32 [64][ldo], the warp's strip), then
// the RoPE transpose in place on rows [0, n) of E (row r at position pos0 + r; not when rope is
// false), then those rows into dst (aw_store_rows). Begins and ends with a barrier.
__device__ __forceinline__ void aw_epilogue(float *E, int ldo, aw_acc (&acc)[AW_NT], int nt, float s, int warp,
                                            bf16_t *dst, size_t row, int n, int pos0, int hd, bool rope, int n_rot,
                                            const float *cos_t, const float *sin_t) {
#pragma unroll
    for (int f = 0; f < AW_NT; f++) {
        if (f < nt) {
            for (int i = 0; i < acc[f].num_elements; i++) acc[f].x[i] *= s;
            wmma::store_matrix_sync(E + warp * 16 * ldo + f * 16, acc[f], ldo, wmma::mem_row_major);
        }
    }
    __syncthreads();
    if (rope && n_rot > 0) {  // the transpose of RoPE in place on E's rows: pairs (i, i + n_rot / 2), as attn_rope_dim
        const int hr = n_rot >> 1;
        for (AwWalk w(hr, threadIdx.x, AW_THREADS); w.r < n; w.next()) {
            const size_t t = (size_t)(pos0 + w.r) * n_rot;
            const float *cs = cos_t + t, *sn = sin_t + t;
            float *x = E + w.r * ldo;
            const int i = w.c;
            const float x1 = x[i], x2 = x[i + hr];
            x[i] = x1 * cs[i] + x2 * sn[i + hr];
            x[i + hr] = x2 * cs[i + hr] - x1 * sn[i];
        }
        __syncthreads();
    }
    aw_store_rows(dst, row, n, hd, E, ldo, nullptr);
    __syncthreads();
}

// Pass 2: dk, dv for the key tile blockIdx.x (grid (key tiles, H, B)).
__global__ void __launch_bounds__(AW_THREADS)
    attn_wmma_dkdv_kernel(bf16_t *dk, bf16_t *dv, const bf16_t *q, const bf16_t *k, const bf16_t *v,
                          const bf16_t *dout, const float *L, const float *D, const float *cos_t, const float *sin_t,
                          AttnDev p) {
    GIVT_DYNAMIC_SMEM(unsigned char, aw_raw);
    const int hd = p.hd, hdp = aw_hdp(hd), ldh = hdp + 8, ldo = hdp + 8, nt = hdp / 16, T_ = p.Tq, C = p.H * hd;
    unsigned char *base = aw_align(aw_raw);
    bf16_t *Ks = (bf16_t *)base, *Vs = Ks + AW_BK * ldh, *Qs = Vs + AW_BK * ldh, *dOs = Qs + AW_BQ * ldh;
    float *Ss = (float *)(dOs + AW_BQ * ldh), *dPs = Ss + AW_BQ * AW_LDS;
    bf16_t *Ps = (bf16_t *)(dPs + AW_BQ * AW_LDS), *dSs = Ps + AW_BQ * AW_LDP;
    float *Ls = (float *)(dSs + AW_BQ * AW_LDP), *Ds = Ls + AW_BQ;
    const int tid = threadIdx.x, warp = tid >> 5;
    const int k0 = blockIdx.x * AW_BK;
    const int nk = attn_min(AW_BK, T_ - k0);
    const AttnHeadOff off = attn_head_off(p);
    const size_t kvoff = off.kv, stat0 = off.stat;
    const bf16_t *qb = q + off.q, *ob = dout + off.o;

    aw_load_tiles(Ks, k + kvoff + (size_t)k0 * p.kv_row, p.kv_row, Vs, v + kvoff + (size_t)k0 * p.kv_row, p.kv_row, ldh,
                  nk, hd, hdp);
    aw_acc dka[AW_NT], dva[AW_NT];
#pragma unroll
    for (int f = 0; f < AW_NT; f++) wmma::fill_fragment(dka[f], 0.0f), wmma::fill_fragment(dva[f], 0.0f);

    for (int q0 = k0; q0 < T_; q0 += AW_BQ) {  // AW_BQ == AW_BK: queries before k0 see none of these keys
        const int nq = attn_min(AW_BQ, T_ - q0);
        __syncthreads();  // the previous query tile is done with
        aw_load_tiles(Qs, qb + (size_t)q0 * p.q_row, p.q_row, dOs, ob + (size_t)q0 * C, (size_t)C, ldh, nq, hd, hdp);
        if (tid < AW_BQ) {
            Ls[tid] = tid < nq ? L[stat0 + q0 + tid] : 0.0f;
            Ds[tid] = tid < nq ? D[stat0 + q0 + tid] : 0.0f;
        }
        __syncthreads();
        aw_bwd_tile(Ss, dPs, Ps, dSs, Qs, dOs, Ks, Vs, Ls, Ds, ldh, hdp, q0, nq, k0, nk, p.scale, warp);
        // the warp's 16 keys: dV += P^T dO, dK += dS^T Q (P, dS stored [query][key]: col_major reads),
        // over the query blocks that exist and see them (on the diagonal tile, blocks >= warp)
        if (warp * 16 < nk) {
            const int kk0 = q0 == k0 ? warp : 0, kk1 = (nq + 15) / 16;
            aw_strip_ab<wmma::col_major>(dva, nt, Ps + warp * 16, AW_LDP, dOs, ldh, kk0, kk1);
            aw_strip_ab<wmma::col_major>(dka, nt, dSs + warp * 16, AW_LDP, Qs, ldh, kk0, kk1);
        }
    }

    __syncthreads();  // the tiles become the epilogue's fp32 rows: dV, then dK (scaled)
    float *E = (float *)base;
    bf16_t *dvb = dv + kvoff + (size_t)k0 * p.kv_row, *dkb = dk + kvoff + (size_t)k0 * p.kv_row;
    aw_epilogue(E, ldo, dva, nt, 1.0f, warp, dvb, p.kv_row, nk, k0, hd, false, 0, cos_t, sin_t);
    aw_epilogue(E, ldo, dka, nt, p.scale, warp, dkb, p.kv_row, nk, k0, hd, true, p.n_rot, cos_t, sin_t);
}

// Pass 3: dq for the query tile blockIdx.x (grid (query tiles, H, B)).
__global__ void __launch_bounds__(AW_THREADS)
    attn_wmma_dq_kernel(bf16_t *dq, const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *dout,
                        const float *L, const float *D, const float *cos_t, const float *sin_t, AttnDev p) {
    GIVT_DYNAMIC_SMEM(unsigned char, aw_raw);
    const int hd = p.hd, hdp = aw_hdp(hd), ldh = hdp + 8, ldo = hdp + 8, nt = hdp / 16, T_ = p.Tq, C = p.H * hd;
    unsigned char *base = aw_align(aw_raw);
    bf16_t *Qs = (bf16_t *)base, *dOs = Qs + AW_BQ * ldh, *Ks = dOs + AW_BQ * ldh, *Vs = Ks + AW_BK * ldh;
    float *Ss = (float *)(Vs + AW_BK * ldh), *dPs = Ss + AW_BQ * AW_LDS;
    bf16_t *dSs = (bf16_t *)(dPs + AW_BQ * AW_LDS);
    float *Ls = (float *)(dSs + AW_BQ * AW_LDP), *Ds = Ls + AW_BQ;
    const int tid = threadIdx.x, warp = tid >> 5;
    const int q0 = blockIdx.x * AW_BQ;
    const int nq = attn_min(AW_BQ, T_ - q0);
    const AttnHeadOff off = attn_head_off(p);
    const size_t qoff = off.q, stat0 = off.stat;
    const bf16_t *kb = k + off.kv, *vb = v + off.kv, *ob = dout + off.o;

    aw_load_tiles(Qs, q + qoff + (size_t)q0 * p.q_row, p.q_row, dOs, ob + (size_t)q0 * C, (size_t)C, ldh, nq, hd, hdp);
    if (tid < AW_BQ) {
        Ls[tid] = tid < nq ? L[stat0 + q0 + tid] : 0.0f;
        Ds[tid] = tid < nq ? D[stat0 + q0 + tid] : 0.0f;
    }
    aw_acc dqa[AW_NT];
#pragma unroll
    for (int f = 0; f < AW_NT; f++) wmma::fill_fragment(dqa[f], 0.0f);

    const int kend = q0 + nq;
    for (int k0 = 0; k0 < kend; k0 += AW_BK) {
        const int nk = attn_min(AW_BK, kend - k0);
        __syncthreads();  // the previous key tile is done with
        aw_load_tiles(Ks, kb + (size_t)k0 * p.kv_row, p.kv_row, Vs, vb + (size_t)k0 * p.kv_row, p.kv_row, ldh, nk, hd,
                      hdp);
        __syncthreads();
        aw_bwd_tile(Ss, dPs, nullptr, dSs, Qs, dOs, Ks, Vs, Ls, Ds, ldh, hdp, q0, nq, k0, nk, p.scale, warp);
        // dQ += dS K over the key blocks the warp's rows see
        const int ncol = aw_ncol(0, q0, warp * 16, attn_min(warp * 16 + 16, nq), k0, nk);
        aw_strip_ab<wmma::row_major>(dqa, nt, dSs + warp * 16 * AW_LDP, AW_LDP, Ks, ldh, 0, ncol);
    }

    __syncthreads();  // the tiles become the epilogue's fp32 rows
    aw_epilogue((float *)base, ldo, dqa, nt, p.scale, warp, dq + qoff + (size_t)q0 * p.q_row, p.q_row, nq, q0, hd,
                true, p.n_rot, cos_t, sin_t);
}

// Kernels whose dynamic shared memory passes the default 48 KiB opt in to it (up to the device's
// limit, 227 KiB on sm_90; the largest here is ~123 KiB: the bf16 backward at hd 128).
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

template <typename T>
void attn_fwd_launch(Backend *be, T *out, float *lse, T *q, T *k, const T *v, const float *cos_t,
                     const float *sin_t, const AttnShape *s) {
    cudaStream_t st = cuda_stream(be);
    AttnDev p = attn_dev(s);
    if (s->n_rot > 0) {
        if (s->Tq > 0)
            GIVT_LAUNCH(attn_rope_kernel<T>, dim3(s->Tq, s->B), dim3(ATT_THREADS), 0, st, q, s->q_row, s->q_batch,
                        s->pos0, s->H, s->hd, s->n_rot, cos_t, sin_t);
        int nk = s->Tk - s->pos0;
        if (nk > 0)
            GIVT_LAUNCH(attn_rope_kernel<T>, dim3(nk, s->B), dim3(ATT_THREADS), 0, st, k + (size_t)s->pos0 * s->kv_row,
                        s->kv_row, s->kv_batch, s->pos0, s->H, s->hd, s->n_rot, cos_t, sin_t);
    }
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

// bf16: the WMMA kernels (every hd up to ATT_MAX_HD, zero-padded to a multiple of 16)
void aw_fwd_launch(Backend *be, bf16_t *out, float *lse, bf16_t *q, bf16_t *k, const bf16_t *v, const float *cos_t,
                   const float *sin_t, const AttnShape *s) {
    cudaStream_t st = cuda_stream(be);
    AttnDev p = attn_dev(s);
    if (s->n_rot > 0) {  // RoPE in place, as the fp32 path
        if (s->Tq > 0)
            GIVT_LAUNCH(attn_rope_kernel<bf16_t>, dim3(s->Tq, s->B), dim3(ATT_THREADS), 0, st, q, s->q_row,
                        s->q_batch, s->pos0, s->H, s->hd, s->n_rot, cos_t, sin_t);
        int nk = s->Tk - s->pos0;
        if (nk > 0)
            GIVT_LAUNCH(attn_rope_kernel<bf16_t>, dim3(nk, s->B), dim3(ATT_THREADS), 0, st,
                        k + (size_t)s->pos0 * s->kv_row, s->kv_row, s->kv_batch, s->pos0, s->H, s->hd, s->n_rot,
                        cos_t, sin_t);
    }
    size_t smem = aw_fwd_smem(s->hd);
    attn_allow_smem(attn_wmma_fwd_kernel, smem);
    dim3 grid((s->Tq + AW_BQ - 1) / AW_BQ, s->H, s->B);
    GIVT_LAUNCH(attn_wmma_fwd_kernel, grid, dim3(AW_THREADS), smem, st, out, lse, (const float *)nullptr,
                (const bf16_t *)q, (const bf16_t *)k, v, (const bf16_t *)nullptr, p);
}

void aw_bwd_launch(Backend *be, bf16_t *dq, bf16_t *dk, bf16_t *dv, float *Dbuf, const bf16_t *dout, const bf16_t *q,
                   const bf16_t *k, const bf16_t *v, const float *lse, const float *cos_t, const float *sin_t,
                   const AttnShape *s) {
    cudaStream_t st = cuda_stream(be);
    AttnDev p = attn_dev(s);
    dim3 grid((s->Tq + AW_BQ - 1) / AW_BQ, s->H, s->B), block(AW_THREADS);
    size_t fsmem = aw_fwd_smem(s->hd), bsmem = aw_bwd_smem(s->hd);
    attn_allow_smem(attn_wmma_fwd_kernel, fsmem);
    GIVT_LAUNCH(attn_wmma_fwd_kernel, grid, block, fsmem, st, (bf16_t *)nullptr, Dbuf, lse, q, k, v, dout, p);
    attn_allow_smem(attn_wmma_dkdv_kernel, bsmem);
    GIVT_LAUNCH(attn_wmma_dkdv_kernel, grid, block, bsmem, st, dk, dv, q, k, v, dout, lse, (const float *)Dbuf, cos_t,
                sin_t, p);
    attn_allow_smem(attn_wmma_dq_kernel, bsmem);
    GIVT_LAUNCH(attn_wmma_dq_kernel, grid, block, bsmem, st, dq, q, k, v, dout, lse, (const float *)Dbuf, cos_t, sin_t,
                p);
}

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
    if (attn_bf16(be))
        aw_fwd_launch(be, (bf16_t *)out, lse, (bf16_t *)q, (bf16_t *)k, (const bf16_t *)v, cos, sin, s);
    else
        attn_fwd_launch(be, (float *)out, lse, (float *)q, (float *)k, (const float *)v, cos, sin, s);
}

size_t cuda_attention_scratch_bytes(Backend *be, const AttnShape *s) {
    (void)be;
    return (size_t)s->B * s->H * s->Tq * sizeof(float);  // D = rowsum(dO * O) per query row
}

void cuda_attention_bwd(Backend *be, cval *dq, cval *dk, cval *dv, void *scratch, const cval *dout, const cval *out,
                        const cval *q, const cval *k, const cval *v, const void *saved, const float *cos,
                        const float *sin, const AttnShape *s) {
    (void)out;  // (the bf16 kernels take D from it: attention_mma_bwd.cu)
    attn_check_shape(s, "attention_bwd");
    if (s->pos0 != 0 || s->Tq != s->Tk) givt_die("attention_bwd: training shapes only (pos0 = 0, Tq = Tk)");
    if (s->B == 0 || s->H == 0 || s->Tq == 0) return;
    const float *lse = (const float *)saved;
    float *Dbuf = (float *)scratch;
    typedef bf16_t bf;
    if (attn_bf16(be))
        aw_bwd_launch(be, (bf *)dq, (bf *)dk, (bf *)dv, Dbuf, (const bf *)dout, (const bf *)q, (const bf *)k,
                      (const bf *)v, lse, cos, sin, s);
    else
        attn_bwd_launch(be, (float *)dq, (float *)dk, (float *)dv, Dbuf, (const float *)dout, (const float *)q,
                        (const float *)k, (const float *)v, lse, cos, sin, s);
}

}  // extern "C"
