// norm.cu: residual add + RMSNorm, forward and backward (ops.h: residual_rmsnorm_fwd / _bwd), with
// the formulas of the CPU reference (csrc/cpu/ops_cpu.c); float32 math.
// Layout: blocks of RMS_BLOCK threads as groups of G lanes (G = 32 .. RMS_BLOCK, a power of 2), one
// row per group at a time, R = RMS_BLOCK / G rows a block at once. A row is U units of W elements:
// W = CM_VEC(T) (16-byte loads and stores: 8 bf16 or 4 floats) when C is a multiple of it and the
// rows are aligned, else W = 1 (the same kernels). Lane t of a group holds units t, t + G, ... up to
// MAXV of them in registers (16-byte units: RMS_MAXV in the forward, RMS_MAXV_BWD in the backward;
// single elements: 1; G is the smallest power of 2 with G * MAXV >= U, at least 32), so a row is
// read once: the forward keeps the residual sum it stores in registers for the norm, the backward
// keeps x, g and dres for dx and the weight gradient (C = 1024: a warp a row in the bf16 forward,
// two warps in the float32 forward and in both backwards). Units past G * MAXV (only for C >
// RMS_BLOCK * MAXV * W: forward 8192 bf16 / 4096 floats, backward 4096 / 4096, single elements 256)
// are read again in the second pass (L2).
// Row sums: each lane's sum over its units in order, then the group's warp butterflies and, with
// more than one warp a row, the warps' sums in warp order through shared memory: deterministic.
// dw: the rows are cut into fixed chunks (a function of N only), one block each; a lane sums
// g * x * r over its group's rows in order, the groups' sums are added in group order into the
// chunk's partial (scratch), and a second kernel adds the partials to dw in chunk order. No
// floating-point atomics.
#include "launch.cuh"
#include "common.cuh"

#define RMS_EPS 1e-5f
#define RMS_BLOCK 256          // threads a block
#define RMS_MAXV 4             // 16-byte units a lane keeps in registers (forward)
// backward: x, g, dres and the dw sums of each unit; bf16 units hold 8 floats of dw sums, so 2 units
// (4 spill at 128 registers, which 2 blocks of 256 threads an SM allow)
#define RMS_MAXV_BWD(T) (sizeof(T) == 2 ? 2 : 4)
#define RMS_DW_MIN_ROWS 32     // rows per dw chunk at least
#define RMS_DW_MAX_CHUNKS 256  // dw chunks at most (partials: chunks * C floats)
#define RMS_SUM_W 4            // floats a unit of the partials' sum

// log2 of the lanes of a group for U units of which a lane keeps maxv
static unsigned rms_lg(int U, int maxv) {
    unsigned lg = 5;
    while (((size_t)1 << lg) * (size_t)maxv < (size_t)U && (1u << lg) < RMS_BLOCK) lg++;
    return lg;
}

// The sum of v over a group of 2^lg lanes (every thread of the block calls it, with the same lg):
// the warp's butterfly, then (groups of several warps) the group's warp sums in warp order. buf: 32
// floats of shared memory, alternating between two buffers call after call (the barrier of one call
// keeps a fast warp's next-but-one call from overwriting what a slow warp still reads).
__device__ inline float rms_group_sum(float v, unsigned lg, float *buf) {
    v = cm_warp_sum(v);
    if (lg <= 5) return v;
    const unsigned warp = threadIdx.x >> 5, nw = 1u << (lg - 5), w0 = (threadIdx.x >> lg) << (lg - 5);
    if ((threadIdx.x & 31) == 0) buf[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (unsigned i = 0; i < nw; i++) s += buf[w0 + i];
    return s;
}

// ---- forward ----------------------------------------------------------------------------------
// res_out (N, C) = res_in + branch (bf16: rounded, and the norm reads the rounded sum, the value
// stored); norm_out = x * r * w; rstd (N) = r = 1 / sqrt(mean(x^2) + 1e-5). Rows n0 + k * R * grid.
template <typename T, int W, int MAXV>
__device__ inline void rms_fwd_rows(T *res_out, T *norm_out, float *rstd, const T *res_in, const T *branch, const T *w,
                                    unsigned N, unsigned C, unsigned lg, float (*red)[32]) {
    const unsigned G = 1u << lg, R = RMS_BLOCK >> lg, t = threadIdx.x & (G - 1), U = C / W;
    cm_pack<T, W> wv[MAXV] = {};  // w: the same for every row
#pragma unroll
    for (int j = 0; j < MAXV; j++)
        if (t + j * G < U) wv[j] = cm_ld<W>(w + (size_t)(t + j * G) * W);
    unsigned pass = 0;
    for (unsigned nb = blockIdx.x * R; nb < N; nb += gridDim.x * R, pass ^= 1) {  // the same for the block
        const unsigned n = nb + (threadIdx.x >> lg);
        const bool live = n < N;
        const size_t base = (size_t)n * C;
        cm_pack<T, W> xv[MAXV] = {};  // the norm's input (with a branch: the rounded sum, as stored)
        float ss = 0.0f;
#pragma unroll
        for (int j = 0; j < MAXV; j++)
            if (live && t + j * G < U) xv[j] = cm_ld<W>(res_in + base + (size_t)(t + j * G) * W);
        if (branch) {
            cm_pack<T, W> bv[MAXV] = {};
#pragma unroll
            for (int j = 0; j < MAXV; j++)
                if (live && t + j * G < U) bv[j] = cm_ld<W>(branch + base + (size_t)(t + j * G) * W);
#pragma unroll
            for (int j = 0; j < MAXV; j++)
                if (live && t + j * G < U) {
#pragma unroll
                    for (int e = 0; e < W; e++) xv[j].v[e] = cm_from_f32<T>(cm_f32(xv[j].v[e]) + cm_f32(bv[j].v[e]));
                    cm_st<W>(res_out + base + (size_t)(t + j * G) * W, xv[j]);
                }
        }
#pragma unroll
        for (int j = 0; j < MAXV; j++)
            if (live && t + j * G < U)
#pragma unroll
                for (int e = 0; e < W; e++) ss += cm_f32(xv[j].v[e]) * cm_f32(xv[j].v[e]);
#pragma unroll 1
        for (unsigned u = t + MAXV * G; live && u < U; u += G) {  // past the registers (huge C)
            cm_pack<T, W> x = cm_ld<W>(res_in + base + (size_t)u * W);
            if (branch) {
                const cm_pack<T, W> b = cm_ld<W>(branch + base + (size_t)u * W);
                for (int e = 0; e < W; e++) x.v[e] = cm_from_f32<T>(cm_f32(x.v[e]) + cm_f32(b.v[e]));
                cm_st<W>(res_out + base + (size_t)u * W, x);
            }
            for (int e = 0; e < W; e++) ss += cm_f32(x.v[e]) * cm_f32(x.v[e]);
        }
        ss = rms_group_sum(ss, lg, red[pass]);
        const float r = 1.0f / sqrtf(ss / (float)C + RMS_EPS);
#pragma unroll
        for (int j = 0; j < MAXV; j++)
            if (live && t + j * G < U) {
                float o[W];
#pragma unroll
                for (int e = 0; e < W; e++) o[e] = cm_f32(xv[j].v[e]) * r * cm_f32(wv[j].v[e]);
                cm_st_f32<W>(norm_out + base + (size_t)(t + j * G) * W, o);
            }
#pragma unroll 1
        for (unsigned u = t + MAXV * G; live && u < U; u += G) {
            float xf[W], wf[W], o[W];
            cm_ld_f32<W>(xf, (branch ? (const T *)res_out : res_in) + base + (size_t)u * W);  // written above
            cm_ld_f32<W>(wf, w + (size_t)u * W);
            for (int e = 0; e < W; e++) o[e] = xf[e] * r * wf[e];
            cm_st_f32<W>(norm_out + base + (size_t)u * W, o);
        }
        if (live && t == 0) rstd[n] = r;
    }
}
template <typename T>
__global__ void __launch_bounds__(RMS_BLOCK) rmsnorm_fwd_kernel(T *res_out, T *norm_out, float *rstd, const T *res_in,
                                                                const T *branch, const T *w, unsigned N, unsigned C,
                                                                unsigned lg, int vec) {
    __shared__ float red[2][32];
    if (vec) rms_fwd_rows<T, CM_VEC(T), RMS_MAXV>(res_out, norm_out, rstd, res_in, branch, w, N, C, lg, red);
    else rms_fwd_rows<T, 1, 1>(res_out, norm_out, rstd, res_in, branch, w, N, C, lg, red);
}

// ---- backward ---------------------------------------------------------------------------------
// dres (N, C) += r*w*g - x * r^3/C * sum(w*g*x), and dw (C) += sum over rows of g * x * r, with
// x = res, g = dnorm. Block b takes the rows [b * rows, min((b + 1) * rows, N)) (its chunk), its
// groups R rows at once, and writes its dw sums to row b of part (chunks, C; NULL: no dw). w is read
// again for every row (L1), to save the registers.
template <typename T, int W, int MAXV>
__device__ inline void rms_bwd_rows(T *dres, float *part, const T *dnorm, const T *res, const T *w, const float *rstd,
                                    unsigned N, unsigned C, unsigned rows, unsigned lg, float (*red)[32],
                                    float (*comb)[RMS_BLOCK]) {
    const unsigned G = 1u << lg, R = RMS_BLOCK >> lg, t = threadIdx.x & (G - 1), U = C / W;
    const unsigned n0 = blockIdx.x * rows, n1 = N - n0 < rows ? N : n0 + rows;
    float *out = part ? part + (size_t)blockIdx.x * C : NULL;  // this chunk's dw (aligned for units)
    float acc[MAXV][W] = {};  // dw of the lane's units over its group's rows
    const float zero[W] = {};
    if (out)  // past the registers (huge C, then G = RMS_BLOCK, R = 1): summed in place
#pragma unroll 1
        for (unsigned u = t + MAXV * G; u < U; u += G) cm_st_f32<W>(out + (size_t)u * W, zero);
    unsigned pass = 0;
    for (unsigned nb = n0; nb < n1; nb += R, pass ^= 1) {  // the same for the block
        const unsigned n = nb + (threadIdx.x >> lg);
        const bool live = n < n1;
        const size_t base = (size_t)n * C;
        const float r = live ? rstd[n] : 0.0f;
        cm_pack<T, W> xv[MAXV] = {}, gv[MAXV] = {}, dv[MAXV] = {}, wv[MAXV] = {};
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < MAXV; j++)
            if (live && t + j * G < U) {
                const size_t i = base + (size_t)(t + j * G) * W;
                xv[j] = cm_ld<W>(res + i);
                gv[j] = cm_ld<W>(dnorm + i);
                dv[j] = cm_ld<W>(dres + i);
                wv[j] = cm_ld<W>(w + (size_t)(t + j * G) * W);
            }
#pragma unroll
        for (int j = 0; j < MAXV; j++)
            if (live && t + j * G < U)
#pragma unroll
                for (int e = 0; e < W; e++) dot += cm_f32(wv[j].v[e]) * cm_f32(gv[j].v[e]) * cm_f32(xv[j].v[e]);
#pragma unroll 1
        for (unsigned u = t + MAXV * G; live && u < U; u += G) {
            float xf[W], gf[W], wf[W];
            cm_ld_f32<W>(xf, res + base + (size_t)u * W);
            cm_ld_f32<W>(gf, dnorm + base + (size_t)u * W);
            cm_ld_f32<W>(wf, w + (size_t)u * W);
            for (int e = 0; e < W; e++) dot += wf[e] * gf[e] * xf[e];
        }
        dot = rms_group_sum(dot, lg, red[pass]);
        const float k = dot * r * r * r / (float)C;
#pragma unroll
        for (int j = 0; j < MAXV; j++)
            if (live && t + j * G < U) {
                float df[W];
#pragma unroll
                for (int e = 0; e < W; e++) {
                    const float x = cm_f32(xv[j].v[e]), g = cm_f32(gv[j].v[e]);
                    df[e] = cm_f32(dv[j].v[e]) + (r * cm_f32(wv[j].v[e]) * g - x * k);
                    acc[j][e] += g * x * r;
                }
                cm_st_f32<W>(dres + base + (size_t)(t + j * G) * W, df);
            }
#pragma unroll 1
        for (unsigned u = t + MAXV * G; live && u < U; u += G) {
            float xf[W], gf[W], wf[W], df[W], of[W];
            const size_t i = base + (size_t)u * W;
            cm_ld_f32<W>(xf, res + i);
            cm_ld_f32<W>(gf, dnorm + i);
            cm_ld_f32<W>(wf, w + (size_t)u * W);
            cm_ld_f32<W>(df, dres + i);
            for (int e = 0; e < W; e++) df[e] = df[e] + (r * wf[e] * gf[e] - xf[e] * k);
            cm_st_f32<W>(dres + i, df);
            if (out) {
                cm_ld_f32<W>(of, out + (size_t)u * W);
                for (int e = 0; e < W; e++) of[e] += gf[e] * xf[e] * r;
                cm_st_f32<W>(out + (size_t)u * W, of);
            }
        }
    }
    if (!out) return;
    // the chunk's dw: the groups' sums in group order
#pragma unroll
    for (int j = 0; j < MAXV; j++) {
        const unsigned u = t + j * G;
        if (R > 1) {  // the same for the block
            __syncthreads();  // the previous unit's reads are done
#pragma unroll
            for (int e = 0; e < W; e++) comb[e][threadIdx.x] = acc[j][e];
            __syncthreads();
            if (threadIdx.x < G) {
#pragma unroll
                for (int e = 0; e < W; e++) acc[j][e] = comb[e][t];
#pragma unroll 1
                for (unsigned q = 1; q < R; q++)
#pragma unroll
                    for (int e = 0; e < W; e++) acc[j][e] += comb[e][q * G + t];
            }
        }
        if (threadIdx.x < G && u < U) cm_st_f32<W>(out + (size_t)u * W, acc[j]);
    }
}
template <typename T>
__global__ void __launch_bounds__(RMS_BLOCK, 2)
    rmsnorm_bwd_kernel(T *dres, float *part, const T *dnorm, const T *res, const T *w, const float *rstd, unsigned N,
                       unsigned C, unsigned rows, unsigned lg, int vec) {
    __shared__ float red[2][32];
    __shared__ float comb[CM_VEC(T)][RMS_BLOCK];
    if (vec) rms_bwd_rows<T, CM_VEC(T), RMS_MAXV_BWD(T)>(dres, part, dnorm, res, w, rstd, N, C, rows, lg, red, comb);
    else rms_bwd_rows<T, 1, 1>(dres, part, dnorm, res, w, rstd, N, C, rows, lg, red, comb);
}

// dw (C) += the partials (chunks, C), in chunk order: units of RMS_SUM_W floats (16-byte loads) when
// C and dw allow, else single columns; 4 chunks' loads ahead of their sums
template <int W> __device__ inline void rms_dw_sum_cols(float *dw, const float *part, unsigned C, unsigned chunks) {
    const unsigned u = blockIdx.x * blockDim.x + threadIdx.x;
    if (u >= C / W) return;
    float acc[W];
    cm_ld_f32<W>(acc, dw + (size_t)u * W);
    for (unsigned ch = 0; ch < chunks; ch += 4) {
        float v[4][W] = {};
#pragma unroll
        for (unsigned k = 0; k < 4; k++)
            if (ch + k < chunks) cm_ld_f32<W>(v[k], part + (size_t)(ch + k) * C + (size_t)u * W);
#pragma unroll
        for (unsigned k = 0; k < 4; k++)
#pragma unroll
            for (int e = 0; e < W; e++) acc[e] += v[k][e];  // + 0 past the end: the same sum
    }
    cm_st_f32<W>(dw + (size_t)u * W, acc);
}
__global__ void rmsnorm_bwd_dw_sum_kernel(float *dw, const float *part, unsigned C, unsigned chunks, int vec) {
    if (vec) rms_dw_sum_cols<RMS_SUM_W>(dw, part, C, chunks);
    else rms_dw_sum_cols<1>(dw, part, C, chunks);
}

// Rows per dw chunk for N rows (a function of N only: the same sums on every run), and the chunks
static unsigned rms_chunk_rows(int N) {
    unsigned rows = (unsigned)((N + RMS_DW_MAX_CHUNKS - 1) / RMS_DW_MAX_CHUNKS);
    return rows < RMS_DW_MIN_ROWS ? RMS_DW_MIN_ROWS : rows;
}
static unsigned rms_chunks(int N) { return ((unsigned)N + rms_chunk_rows(N) - 1) / rms_chunk_rows(N); }

// Device scratch that residual_rmsnorm_bwd uses for (N, C) with dw: the chunks' partials, at most
// 256 * C floats. With less in CudaCtx.scratch it allocates its own on the stream (cudaMallocAsync)
// per call.
extern "C" size_t cuda_norm_scratch_bytes(int N, int C) { return (size_t)rms_chunks(N) * (size_t)C * sizeof(float); }

// 16-byte units for rows of C elements when C is a multiple of CM_VEC(T) and the buffers are aligned
template <typename T> static int rms_vec(int C, const void *a, const void *b, const void *c, const void *d) {
    return C % CM_VEC(T) == 0 && cm_aligned(a, 16) && (!b || cm_aligned(b, 16)) && (!c || cm_aligned(c, 16)) &&
           (!d || cm_aligned(d, 16));
}

template <typename T>
static void rmsnorm_fwd(Backend *be, T *res_out, T *norm_out, float *rstd, const T *res_in, const T *branch,
                        const T *w, int N, int C) {
    const int vec = rms_vec<T>(C, norm_out, res_in, w, branch ? res_out : NULL) && (!branch || cm_aligned(branch, 16));
    const unsigned lg = vec ? rms_lg(C / CM_VEC(T), RMS_MAXV) : rms_lg(C, 1), R = RMS_BLOCK >> lg;
    size_t grid = ((size_t)N + R - 1) / R;
    const size_t cap = cuda_ctx(be)->emulated ? 8 : 8192;  // blocks loop over the rows: any grid is right
    if (grid > cap) grid = cap;
    GIVT_LAUNCH(rmsnorm_fwd_kernel<T>, (unsigned)grid, RMS_BLOCK, 0, cuda_stream(be), res_out, norm_out, rstd, res_in,
                branch, w, (unsigned)N, (unsigned)C, lg, vec);
}

extern "C" void cuda_residual_rmsnorm_fwd(Backend *be, cval *res_out, cval *norm_out, float *rstd, const cval *res_in,
                                          const cval *branch, const cval *w, int N, int C) {
    if (N <= 0 || C <= 0) return;
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        rmsnorm_fwd<T>(be, (T *)res_out, (T *)norm_out, rstd, (const T *)res_in, (const T *)branch, (const T *)w, N, C);
    } else {
        typedef float T;
        rmsnorm_fwd<T>(be, (T *)res_out, (T *)norm_out, rstd, (const T *)res_in, (const T *)branch, (const T *)w, N, C);
    }
}

template <typename T>
static void rmsnorm_bwd(Backend *be, T *dres, float *dw, const T *dnorm, const T *res, const T *w, const float *rstd,
                        int N, int C) {
    const int vec = rms_vec<T>(C, dres, dnorm, res, w);
    const unsigned lg = vec ? rms_lg(C / CM_VEC(T), RMS_MAXV_BWD(T)) : rms_lg(C, 1);
    const unsigned chunks = rms_chunks(N), rows = rms_chunk_rows(N);
    int owned = 0;
    float *part = dw ? (float *)cm_scratch_get(be, cuda_norm_scratch_bytes(N, C), &owned) : NULL;
    GIVT_LAUNCH(rmsnorm_bwd_kernel<T>, chunks, RMS_BLOCK, 0, cuda_stream(be), dres, part, dnorm, res, w, rstd,
                (unsigned)N, (unsigned)C, rows, lg, vec);
    if (part) {
        const int v4 = C % RMS_SUM_W == 0 && cm_aligned(dw, 16);
        const size_t units = (size_t)C / (v4 ? RMS_SUM_W : 1);
        GIVT_LAUNCH(rmsnorm_bwd_dw_sum_kernel, cm_div_up(units, 128), 128, 0, cuda_stream(be), dw, (const float *)part,
                    (unsigned)C, chunks, v4);
        cm_scratch_put(be, part, owned);
    }
}

extern "C" void cuda_residual_rmsnorm_bwd(Backend *be, cval *dres, float *dw, const cval *dnorm, const cval *res,
                                          const cval *w, const float *rstd, int N, int C) {
    if (N <= 0 || C <= 0) return;
    if (((CudaCtx *)be->ctx)->dtype == DTYPE_BF16) {
        typedef __nv_bfloat16 T;
        rmsnorm_bwd<T>(be, (T *)dres, dw, (const T *)dnorm, (const T *)res, (const T *)w, rstd, N, C);
    } else {
        typedef float T;
        rmsnorm_bwd<T>(be, (T *)dres, dw, (const T *)dnorm, (const T *)res, (const T *)w, rstd, N, C);
    }
}
