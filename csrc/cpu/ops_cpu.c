// ops_cpu: the float32 CPU backend, the reference for every other backend. Matrix products go to
// the BLAS of blas.h, OpenBLAS by default (cblas_sgemm; attention calls it per head from inside an
// OpenMP loop, where the OpenMP build of OpenBLAS runs single-threaded); elementwise and row loops are OpenMP-parallel. Our own
// reductions have a fixed order, independent of the thread count; OpenBLAS's sgemm may round
// differently with another thread count, so bit-exact reproduction (resume) needs the same
// OMP_NUM_THREADS, and holds run to run with it.
#define _POSIX_C_SOURCE 200809L
#include "ops.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <unistd.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "util.h"

// Compute buffers (cval *) are float32 on this backend.
#define FP(p) ((float *)(void *)(p))
#define CFP(p) ((const float *)(const void *)(p))

// ---- memory -------------------------------------------------------------------------------
static void *cpu_alloc(Backend *be, size_t bytes) {
    (void)be;
    void *p = NULL;
    size_t n = (bytes + 63) & ~(size_t)63;
    if (n < bytes || posix_memalign(&p, 64, n ? n : 64) != 0)
        givt_die("out of memory allocating %zu bytes", bytes);
    memset(p, 0, n);
    return p;
}
static void cpu_free(Backend *be, void *p) {
    (void)be;
    free(p);
}
static void cpu_upload(Backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    memcpy(dst, src, bytes);
}
static void cpu_download(Backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    memcpy(dst, src, bytes);
}
static void cpu_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    memmove(dst, src, bytes);
}
static void cpu_copy_rows(Backend *be, cval *dst, size_t dst_row, size_t dst_batch, const cval *src, size_t src_row,
                          size_t src_batch, int B, int rows, int width) {
    (void)be;
    for (int b = 0; b < B; b++)
        for (int r = 0; r < rows; r++)
            memmove(FP(dst) + b * dst_batch + r * dst_row, CFP(src) + b * src_batch + r * src_row,
                    (size_t)width * sizeof(float));
}
// Large buffers (the gradients, every step) are cleared by all threads, in 64 slices.
static void cpu_zero(Backend *be, void *p, size_t bytes) {
    (void)be;
    if (bytes < ((size_t)1 << 20)) {
        memset(p, 0, bytes);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < 64; ch++) {
        size_t b0 = bytes * ch / 64, b1 = bytes * (ch + 1) / 64;
        memset((char *)p + b0, 0, b1 - b0);
    }
}
// MemAvailable and MemTotal of /proc/meminfo (the physical memory when there is none)
static void cpu_mem_info(Backend *be, size_t *free_bytes, size_t *total_bytes) {
    (void)be;
    double avail = util_memory_available_bytes();
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    *free_bytes = (size_t)avail;
    *total_bytes = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
}
static void cpu_synchronize(Backend *be) { (void)be; }  // every op is synchronous
// A readback is a copy (every op is done when it returns): the slot is plain host memory.
struct BackendReadback {
    size_t bytes;
    unsigned char data[];
};
static BackendReadback *cpu_readback_create(Backend *be, size_t bytes) {
    (void)be;
    BackendReadback *r = xcalloc(1, sizeof *r + (bytes ? bytes : 1));
    r->bytes = bytes;
    return r;
}
static void cpu_readback_start(Backend *be, BackendReadback *r, const void *src, size_t bytes) {
    (void)be;
    if (bytes > r->bytes) givt_die("cpu readback_start: %zu bytes into a slot of %zu", bytes, r->bytes);
    memcpy(r->data, src, bytes);
}
static const void *cpu_readback_wait(Backend *be, BackendReadback *r) {
    (void)be;
    return r->data;
}
static void cpu_readback_free(Backend *be, BackendReadback *r) {
    (void)be;
    free(r);
}
static void cpu_close(Backend *be);
static void cpu_to_compute(Backend *be, cval *dst, const float *src, size_t n) {
    (void)be;
    if (FP(dst) != src) memcpy(dst, src, n * sizeof(float));
}

// ---- matmul -------------------------------------------------------------------------------
// out (N, M) = inp (N, K) @ w^T, w (M, K)
static void cpu_matmul_fwd(Backend *be, cval *out, const cval *inp, const cval *w, int N, int K, int M) {
    (void)be;
    if (N == 1) {  // one row (decoding one sequence): a matrix-vector product, bound by reading w
        cblas_sgemv(CblasRowMajor, CblasNoTrans, M, K, 1.0f, CFP(w), K, CFP(inp), 1, 0.0f, FP(out), 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, K, 1.0f, CFP(inp), K, CFP(w), K, 0.0f, FP(out), M);
}

// dinp (N, K) = dout (N, M) @ w (M, K); dw (M, K) += dout^T @ inp
static void cpu_matmul_bwd(Backend *be, cval *dinp, float *dw, const cval *dout, const cval *inp, const cval *w,
                           int N, int K, int M) {
    (void)be;
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, M, 1.0f, CFP(dout), M, CFP(w), K, 0.0f, FP(dinp),
                    K);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, K, N, 1.0f, CFP(dout), M, CFP(inp), K, 1.0f, dw, K);
}

// The dot product of a and b (n floats) in 16 running partial sums (a vector's worth): a fixed
// order, vectorised. The row ops below and the softmax use it.
static float dot16(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += a[j + k] * b[j + k];
    for (; j < n; j++) acc[j & 15] += a[j] * b[j];
    float sum = 0.0f;
    for (int k = 0; k < 16; k++) sum += acc[k];
    return sum;
}

// sum over j of a[j] * b[j] * c[j], as dot16
static float dot3_16(const float *a, const float *b, const float *c, int n) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += a[j + k] * b[j + k] * c[j + k];
    for (; j < n; j++) acc[j & 15] += a[j] * b[j] * c[j];
    float sum = 0.0f;
    for (int k = 0; k < 16; k++) sum += acc[k];
    return sum;
}

// ---- rmsnorm ------------------------------------------------------------------------------
#define RMSNORM_EPS 1e-5f

// res_out (N, C) = res_in + branch (when branch is not NULL); out (N, C) = res * rstd * w,
// rstd (N) = rsqrt(mean(res^2) + 1e-5), res = the sum (or res_in)
static void cpu_residual_rmsnorm_fwd(Backend *be, cval *res_out, cval *norm_out, float *rstd, const cval *res_in,
                                     const cval *branch, const cval *weight, int N, int C) {
    (void)be;
    float *out = FP(norm_out);
    const float *w = CFP(weight);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = CFP(res_in) + (size_t)n * C;
        if (branch) {
            const float *b = CFP(branch) + (size_t)n * C;
            float *r = FP(res_out) + (size_t)n * C;
            for (int c = 0; c < C; c++) r[c] = x[c] + b[c];
            x = r;
        }
        float *o = out + (size_t)n * C;
        float r = 1.0f / sqrtf(dot16(x, x, C) / (float)C + RMSNORM_EPS);
        for (int c = 0; c < C; c++) o[c] = x[c] * r * w[c];
        rstd[n] = r;
    }
}

// dinp (N, C) += r*w*dout - x * r^3/C * sum(w*dout*x); dw (C) += sum_n dout*x*r
// dw: RMS_CHUNKS fixed row chunks each sum their rows into a partial (contiguous, vectorised), and
// the partials are added in chunk order: the same result for any thread count.
#define RMS_CHUNKS 16
static void cpu_residual_rmsnorm_bwd(Backend *be, cval *dres, float *dw, const cval *dnorm, const cval *res,
                                     const cval *weight, const float *rstd, int N, int C) {
    (void)be;
    float *dinp = FP(dres);
    const float *dout = CFP(dnorm), *inp = CFP(res), *w = CFP(weight);
    float *part = xcalloc((size_t)RMS_CHUNKS * C, sizeof(float));
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < RMS_CHUNKS; ch++) {
        int n0 = (int)((long)N * ch / RMS_CHUNKS), n1 = (int)((long)N * (ch + 1) / RMS_CHUNKS);
        float *pw = part + (size_t)ch * C;
        for (int n = n0; n < n1; n++) {
            const float *x = inp + (size_t)n * C, *g = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float r = rstd[n], k = dot3_16(w, g, x, C) * r * r * r / (float)C;
            for (int c = 0; c < C; c++) {
                dx[c] += r * w[c] * g[c] - x[c] * k;
                pw[c] += g[c] * x[c] * r;
            }
        }
    }
    for (int ch = 0; ch < RMS_CHUNKS; ch++)
        for (int c = 0; c < C; c++) dw[c] += part[(size_t)ch * C + c];
    free(part);
}

// ---- rope + attention --------------------------------------------------------------------
// Rotate-half RoPE on the first n dims of one head's rows [0, nrows) (row r at x + r*row, at
// position pos + r): x*cos + cat(-x2, x1)*sin. With transpose != 0 it applies the transpose of that
// linear map (the backward of RoPE).
static void rope_head(float *x, size_t row, int nrows, int pos, int n, const float *cos_t, const float *sin_t,
                      int transpose) {
    int half = n / 2;
    for (int r = 0; r < nrows; r++) {
        const float *cs = cos_t + (size_t)(pos + r) * n, *sn = sin_t + (size_t)(pos + r) * n;
        float *v = x + (size_t)r * row;
        for (int i = 0; i < half; i++) {
            float x1 = v[i], x2 = v[i + half];
            if (!transpose) {
                v[i] = x1 * cs[i] - x2 * sn[i];
                v[i + half] = x2 * cs[i + half] + x1 * sn[i + half];
            } else {
                v[i] = x1 * cs[i] + x2 * sn[i + half];
                v[i + half] = x2 * cs[i + half] - x1 * sn[i];
            }
        }
    }
}

// Attention in the flash style. Each (b, h) slice is one task of an OpenMP loop: it rotates its own
// rows of q and k first (RoPE fused: the head's rows are then in cache for the products), and its
// products are single-threaded sgemm calls (the BLAS runs serially inside a parallel region).
// Queries go in row blocks of ATT_BLOCK: a block [r0, r1) only sees keys [0, pos0 + r1), so its
// scores are one sgemm into a strip of ATT_BLOCK x (pos0 + r1) floats (per thread, in the backend's
// workspace: 128 KiB at T = 512, which stays in the L2 cache from the product through the softmax
// to the next product) and the masked upper triangle is skipped block by block. The whole row is in
// the strip, so its softmax is exact, without the rescaling of an online softmax. No Tq x Tk matrix
// is kept: the forward saves each query row's log-sum-exp L (B, H, Tq floats: 64 KiB a layer at
// B 4, H 8, T 512, where the probabilities took 32 MiB) and the backward recomputes each block's
// probabilities P = exp(S - L) from q, k and L (one product more: five per block instead of four).
// Every sum has a fixed order, whatever the thread count.
#ifndef ATT_BLOCK
#define ATT_BLOCK 64
#endif
static inline int imin(int a, int b) { return a < b ? a : b; }

// The (b, h) views of one attention call: q, k, v (and dq, dk, dv) with their row strides.
#define HEAD(ptr, b, h, batch) ((ptr) + (size_t)(b) * (batch) + (size_t)(h) * s->hd)

// exp(x) in float32 to within 1.4 ulp (measured over [-87, 88]), without a libm call so that the
// loops using it vectorise (with -fno-trapping-math, which the Makefile sets): x = k ln2 + r,
// |r| <= ln2/2, exp(r) by Cephes' polynomial, 2^k through the exponent bits. x is clamped to
// [-87, 88] (the result never overflows, and underflows to about 1.6e-38 instead of 0); a NaN input
// gives a finite value here, and the callers' products with the input keep the result NaN.
static inline float exp_vec(float x) {
    x = x > -87.0f ? x : -87.0f;
    x = x < 88.0f ? x : 88.0f;
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest: + 1.5 * 2^23
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;               // ln2 in two parts
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)k + 127) << 23};
    return p * scale.f;
}

// The largest of n floats, in 16 running maxima (a vector's worth: the loop vectorises); NaN when
// any of them is NaN or infinite (x * 0 is NaN exactly then), so that such a row is NaN throughout.
static float max16(const float *p, int n) {
    float acc[16], bad[16] = {0};
    for (int k = 0; k < 16; k++) acc[k] = -INFINITY;
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) {
            float x = p[j + k];
            acc[k] = x > acc[k] ? x : acc[k];
            bad[k] += x * 0.0f;
        }
    for (; j < n; j++) {
        acc[0] = p[j] > acc[0] ? p[j] : acc[0];
        bad[0] += p[j] * 0.0f;
    }
    float mx = -INFINITY, flag = 0.0f;
    for (int k = 0; k < 16; k++) {
        mx = acc[k] > mx ? acc[k] : mx;
        flag += bad[k];
    }
    return flag == 0.0f ? mx : NAN;
}

// p[j] = exp(p[j] - shift) for j < n, in blocks of 16 lanes, the last one masked (no scalar tail:
// exp_vec one value at a time costs as much as a block); acc[k] += the values of lane k.
static void exp_shift16(float *p, int n, float shift, float acc[16]) {
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += p[j + k] = exp_vec(p[j + k] - shift);
    if (j == n) return;
    float e[16];
    for (int k = 0; k < 16; k++) e[k] = exp_vec(j + k < n ? p[j + k] - shift : -87.0f);
    for (int k = 0; k < 16; k++)
        if (j + k < n) acc[k] += p[j + k] = e[k];
}

// In place on one strip of queries t0 .. t0 + rows - 1 (row i at p + i*ld, keys 0 .. ld - 1): row i
// becomes exp(s - max) on its entries 0 .. pos0 + t0 + i, zeros after (the unnormalised softmax:
// the caller scales the product with V by inv[i] = 1 / the row's sum, a pass over hd columns
// instead of over the row); lse[i] = its log-sum-exp.
static void causal_softmax_strip(float *p, float *lse, float *inv, int rows, int ld, int pos0, int t0) {
    for (int i = 0; i < rows; i++, p += ld) {
        int n = pos0 + t0 + i + 1;
        float mx = max16(p, n);
        if (mx != mx) {  // a NaN or infinite score: the row is NaN (exp_vec would make it finite)
            for (int j = 0; j < ld; j++) p[j] = mx;
            lse[i] = inv[i] = mx;
            continue;
        }
        float acc[16] = {0}, sum = 0.0f;  // the row's sum in 16 lanes (a fixed order), while it is made
        exp_shift16(p, n, mx, acc);
        for (int k = 0; k < 16; k++) sum += acc[k];
        for (int j = n; j < ld; j++) p[j] = 0.0f;
        inv[i] = 1.0f / sum;
        lse[i] = mx + logf(sum);
    }
}

// The backend's workspace: at least floats floats, 64-byte aligned, kept between calls (grown here,
// outside any parallel region; freed by close).
typedef struct {
    float *ws;
    size_t ws_floats;
} CpuCtx;
static float *cpu_workspace(Backend *be, size_t floats) {
    CpuCtx *ctx = be->ctx;
    if (floats > ctx->ws_floats) {
        free(ctx->ws);
        ctx->ws = cpu_alloc(be, size_mul(floats, sizeof(float)));
        ctx->ws_floats = floats;
    }
    return ctx->ws;
}

static size_t cpu_attention_saved_bytes(Backend *be, const AttnShape *s) {
    (void)be;
    return size_mul3((size_t)s->B, (size_t)s->H, (size_t)s->Tq) * sizeof(float);  // L (B, H, Tq)
}

// q (B, Tq, .), k, v (B, Tk, .) strided -> out (B, Tq, H*hd); saved = L (B, H, Tq)
static void cpu_attention_fwd(Backend *be, cval *out_, void *saved, cval *q_, cval *k_, const cval *v_,
                              const float *cos_t, const float *sin_t, const AttnShape *s) {
    int B = s->B, H = s->H, hd = s->hd, Tq = s->Tq, Tk = s->Tk, pos0 = s->pos0, C = H * hd;
    int qr = (int)s->q_row, kr = (int)s->kv_row;
    size_t strip = (size_t)imin(ATT_BLOCK, Tq) * (size_t)Tk;
    float *ws = cpu_workspace(be, size_mul(strip, (size_t)omp_get_max_threads()));
    float *lse_all = saved, scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            float *q = HEAD(FP(q_), b, h, s->q_batch), *k = HEAD(FP(k_), b, h, s->kv_batch);
            const float *v = HEAD(CFP(v_), b, h, s->kv_batch);
            float *y = FP(out_) + (size_t)b * Tq * C + (size_t)h * hd, *p = ws + strip * (size_t)omp_get_thread_num();
            float *lse = lse_all + ((size_t)b * H + h) * Tq;
            rope_head(q, qr, Tq, pos0, s->n_rot, cos_t, sin_t, 0);
            rope_head(k + (size_t)pos0 * kr, kr, Tk - pos0, pos0, s->n_rot, cos_t, sin_t, 0);
            for (int r0 = 0; r0 < Tq; r0 += ATT_BLOCK) {
                int r1 = imin(r0 + ATT_BLOCK, Tq), rows = r1 - r0, n = pos0 + r1;
                // S = scale * Q K^T on the keys the block sees, then P = softmax(S) in place
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, hd, scale, q + (size_t)r0 * qr, qr, k,
                            kr, 0.0f, p, n);
                float inv[ATT_BLOCK];
                causal_softmax_strip(p, lse + r0, inv, rows, n, pos0, r0);
                // Y = P V, P = exp(S - max) / sum
                float *yb = y + (size_t)r0 * C;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, n, 1.0f, p, n, v, kr, 0.0f, yb, C);
                for (int i = 0; i < rows; i++)
                    for (int d = 0; d < hd; d++) yb[(size_t)i * C + d] *= inv[i];
            }
        }
}

static size_t cpu_attention_scratch_bytes(Backend *be, const AttnShape *s) {
    (void)be, (void)s;
    return 0;  // the backward's strips are in the backend's workspace
}

// One block of the backward, queries [r0, r0 + rows) of one head against keys [0, n): p holds the
// block's scores S on entry, dp is a second strip. P = exp(S - L) (zeros past each row's last key),
// dP = dY V^T, dS = P * (dP - rowsum(dP * P)), left in dp.
static void attention_bwd_probs(float *p, float *dp, const float *lse, int rows, int n, int r0) {
    for (int i = 0; i < rows; i++) {
        float *pr = p + (size_t)i * n, *d = dp + (size_t)i * n, L = lse[i];
        int m = r0 + i + 1;
        if (L != L) {  // the forward's row was NaN
            for (int j = 0; j < n; j++) pr[j] = d[j] = L;
            continue;
        }
        float unused[16] = {0};
        exp_shift16(pr, m, L, unused);
        for (int j = m; j < n; j++) pr[j] = 0.0f;
        float dot = dot16(d, pr, m);  // rowsum(dP * P)
        for (int j = 0; j < n; j++) d[j] = pr[j] * (d[j] - dot);
    }
}

// Training shapes (pos0 = 0, Tq = Tk = T): dq, dk, dv (strided as q, k, v) from dout (B, T, H*hd)
// (out unused: D = rowsum(dP * P) comes from the recomputed strips)
static void cpu_attention_bwd(Backend *be, cval *dq_, cval *dk_, cval *dv_, void *scratch, const cval *dout,
                              const cval *out, const cval *q_, const cval *k_, const cval *v_, const void *saved,
                              const float *cos_t, const float *sin_t, const AttnShape *s) {
    (void)scratch, (void)out;
    if (s->pos0 != 0 || s->Tq != s->Tk) givt_die("attention_bwd: training shapes only (pos0 = 0, Tq = Tk)");
    int B = s->B, H = s->H, hd = s->hd, T = s->Tq, C = H * hd, qr = (int)s->q_row, kr = (int)s->kv_row;
    size_t strip = (size_t)imin(ATT_BLOCK, T) * (size_t)T;
    float *ws = cpu_workspace(be, size_mul(2 * strip, (size_t)omp_get_max_threads()));
    const float *lse_all = saved;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *q = HEAD(CFP(q_), b, h, s->q_batch), *k = HEAD(CFP(k_), b, h, s->kv_batch);
            const float *v = HEAD(CFP(v_), b, h, s->kv_batch), *lse = lse_all + ((size_t)b * H + h) * T;
            const float *dy = CFP(dout) + (size_t)b * T * C + (size_t)h * hd;
            float *dq = HEAD(FP(dq_), b, h, s->q_batch), *dk = HEAD(FP(dk_), b, h, s->kv_batch);
            float *dv = HEAD(FP(dv_), b, h, s->kv_batch);
            float *p = ws + 2 * strip * (size_t)omp_get_thread_num(), *dp = p + strip;
            for (int t = 0; t < T; t++) {
                memset(dk + (size_t)t * kr, 0, (size_t)hd * sizeof(float));
                memset(dv + (size_t)t * kr, 0, (size_t)hd * sizeof(float));
            }
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = imin(r0 + ATT_BLOCK, T), rows = r1 - r0, n = r1;
                const float *qb = q + (size_t)r0 * qr, *dyb = dy + (size_t)r0 * C;
                // S = scale * Q K^T and dP = dY V^T on the keys [0, r1) the block sees
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, hd, scale, qb, qr, k, kr, 0.0f, p, n);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, hd, 1.0f, dyb, C, v, kr, 0.0f, dp, n);
                attention_bwd_probs(p, dp, lse + r0, rows, n, r0);
                // dV[0, r1) += P^T dY; dQ = scale * dS K; dK[0, r1) += scale * dS^T Q
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, hd, rows, 1.0f, p, n, dyb, C, 1.0f, dv, kr);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, n, scale, dp, n, k, kr, 0.0f,
                            dq + (size_t)r0 * qr, qr);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, hd, rows, scale, dp, n, qb, qr, 1.0f, dk, kr);
            }
            // back through RoPE: the transpose of the rotation, on this head's dq and dk
            rope_head(dq, qr, T, 0, s->n_rot, cos_t, sin_t, 1);
            rope_head(dk, kr, T, 0, s->n_rot, cos_t, sin_t, 1);
        }
}

// ---- swiglu -------------------------------------------------------------------------------
static inline float sigmoidf(float x) { return 1.0f / (1.0f + exp_vec(-x)); }

// h (N, 2F) = [a | b] -> out (N, F) = silu(a) * b
static void cpu_swiglu_fwd(Backend *be, cval *out, const cval *h, int N, int F) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *a = CFP(h) + (size_t)n * 2 * F, *b = a + F;
        float *o = FP(out) + (size_t)n * F;
        for (int f = 0; f < F; f++) o[f] = a[f] * sigmoidf(a[f]) * b[f];
    }
}

// dh (N, 2F) = [dout * b * silu'(a) | dout * silu(a)]
static void cpu_swiglu_bwd(Backend *be, cval *dh, const cval *dout, const cval *h, int N, int F) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *a = CFP(h) + (size_t)n * 2 * F, *b = a + F, *g = CFP(dout) + (size_t)n * F;
        float *da = FP(dh) + (size_t)n * 2 * F, *db = da + F;
        for (int f = 0; f < F; f++) {
            float s = sigmoidf(a[f]);
            db[f] = g[f] * a[f] * s;
            da[f] = g[f] * b[f] * (s + a[f] * s * (1.0f - s));
        }
    }
}

// ---- small ops ----------------------------------------------------------------------------
// in (B, T, D) = [bos, x_0 .. x_{T-2}]
static void cpu_shift_bos(Backend *be, cval *in, const float *x, const cval *bos, int B, int T, int D) {
    (void)be;
    for (int b = 0; b < B; b++) {
        float *dst = FP(in) + (size_t)b * T * D;
        memcpy(dst, bos, (size_t)D * sizeof(float));
        memcpy(dst + D, x + (size_t)b * T * D, (size_t)(T - 1) * D * sizeof(float));
    }
}

// dbos (D) += sum_b din[b, 0, :]
static void cpu_shift_bos_bwd(Backend *be, float *dbos, const cval *din, int B, int T, int D) {
    (void)be;
    for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++) dbos[d] += CFP(din)[(size_t)b * T * D + d];
}

// res[b, 0, :] = table[labels[b], :]
static void cpu_class_embed_fwd(Backend *be, cval *res, const cval *table, const int32_t *labels, int B, int T,
                                int C) {
    (void)be;
    for (int b = 0; b < B; b++)
        memcpy(FP(res) + (size_t)b * T * C, CFP(table) + (size_t)labels[b] * C, (size_t)C * sizeof(float));
}

// dtable[labels[b], :] += dres[b, 0, :] (b in order), then dres[b, 0, :] = 0
static void cpu_class_embed_bwd(Backend *be, float *dtable, cval *dres, const int32_t *labels, int B, int T, int C) {
    (void)be;
    for (int b = 0; b < B; b++) {
        float *g = FP(dres) + (size_t)b * T * C, *dt = dtable + (size_t)labels[b] * C;
        for (int c = 0; c < C; c++) dt[c] += g[c];
        memset(g, 0, (size_t)C * sizeof(float));
    }
}

// ---- gaussian nll -------------------------------------------------------------------------
// Fixed-size chunks summed in order: the result does not depend on the thread count.
#define REDUCE_CHUNKS 64

// y (N, 2D) = [mu | pre], x (N, D). Per element, in double: std = softplus(pre) + eps (PyTorch's
// softplus: pre > 20 gives pre), var = max(std^2, eps), l = 0.5*(log var + (x-mu)^2/var).
static void cpu_gaussian_nll(Backend *be, cval *dy_, double *loss_sum, const cval *y_, const float *x, int N,
                             int D, double eps, float scale) {
    (void)be;
    float *dy = FP(dy_);
    const float *y = CFP(y_);
    double partial[REDUCE_CHUNKS] = {0};
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) {
        int n0 = (int)((long)N * ch / REDUCE_CHUNKS), n1 = (int)((long)N * (ch + 1) / REDUCE_CHUNKS);
        double acc = 0.0;
        for (int n = n0; n < n1; n++)
            for (int d = 0; d < D; d++) {
                double mu = y[(size_t)n * 2 * D + d], pre = y[(size_t)n * 2 * D + D + d];
                double std = givt_head_std(pre, eps);  // a float32 tensor, as in PyTorch
                double var = std * std, varc = var < eps ? eps : var;
                double diff = (double)x[(size_t)n * D + d] - mu;
                acc += 0.5 * (log(varc) + diff * diff / varc);
                if (dy) {
                    double dvar = 0.5 * (1.0 / varc - diff * diff / (varc * varc));
                    double dsp = pre > 20.0 ? 1.0 : 1.0 / (1.0 + exp(-pre));
                    dy[(size_t)n * 2 * D + d] = (float)(scale * (-diff / varc));
                    dy[(size_t)n * 2 * D + D + d] = (float)(scale * dvar * 2.0 * std * dsp);
                }
            }
        partial[ch] = acc;
    }
    double sum = 0.0;
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) sum += partial[ch];
    *loss_sum += sum;
}

// One row of the mixture head (ops.h mixture_nll): y (K + 2KD, or 2D for K = 1), x (D); returns
// l = -log sum_k pi_k prod_d N(x_d; mu_kd, var_kd) without the constants; dy (same layout as y) =
// scale * dl/dy when not NULL. lp (K) is scratch.
static double mixture_row(float *dy, const float *y, const float *x, int D, int K, double eps, float scale,
                          double *lp) {
    const float *logit = y, *mu = y + (K > 1 ? K : 0), *pre = mu + (size_t)K * D;
    double lmax = -INFINITY, lsum = 0.0, lse_logits = 0.0;  // log sum exp of the logits (K = 1: none, 0)
    if (K > 1) {
        for (int k = 0; k < K; k++) lmax = fmax(lmax, logit[k]);
        for (int k = 0; k < K; k++) lsum += exp(logit[k] - lmax);
        lse_logits = lmax + log(lsum);
    }
    double top = -INFINITY, sum = 0.0;
    for (int k = 0; k < K; k++) {
        double g = K > 1 ? logit[k] - lse_logits : 0.0;
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)k * D + d;
            double sd = givt_head_std(pre[i], eps), var = sd * sd, varc = var < eps ? eps : var;
            double diff = (double)x[d] - mu[i];
            g -= 0.5 * (log(varc) + diff * diff / varc);
        }
        lp[k] = g;
        top = fmax(top, g);
    }
    for (int k = 0; k < K; k++) sum += exp(lp[k] - top);
    double log_p = top + log(sum);
    if (!dy) return -log_p;
    float *dlogit = dy, *dmu = dy + (K > 1 ? K : 0), *dpre = dmu + (size_t)K * D;
    for (int k = 0; k < K; k++) {
        double r = exp(lp[k] - log_p);  // posterior of component k
        if (K > 1) dlogit[k] = (float)(scale * (exp(logit[k] - lse_logits) - r));
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)k * D + d;
            double p = pre[i], sd = givt_head_std(p, eps), var = sd * sd, varc = var < eps ? eps : var;
            double diff = (double)x[d] - mu[i];
            double dvar = 0.5 * (1.0 / varc - diff * diff / (varc * varc));
            double dsp = p > 20.0 ? 1.0 : 1.0 / (1.0 + exp(-p));
            dmu[i] = (float)(scale * r * (-diff / varc));
            dpre[i] = (float)(scale * r * dvar * 2.0 * sd * dsp);
        }
    }
    return -log_p;
}

// y (N, K + 2KD) or (N, 2D) for K = 1, x (N, D): see ops.h. Rows summed in fixed chunks, in order.
static void cpu_mixture_nll(Backend *be, cval *dy_, double *loss_sum, const cval *y_, const float *x, int N, int D,
                            int K, double eps, float scale) {
    (void)be;
    size_t W = K == 1 ? 2 * (size_t)D : (size_t)K + 2 * (size_t)K * D;
    double partial[REDUCE_CHUNKS] = {0};
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) {
        int n0 = (int)((long)N * ch / REDUCE_CHUNKS), n1 = (int)((long)N * (ch + 1) / REDUCE_CHUNKS);
        double acc = 0.0, *lp = xmalloc((size_t)K * sizeof(double));
        for (int n = n0; n < n1; n++)
            acc += mixture_row(dy_ ? FP(dy_) + n * W : NULL, CFP(y_) + n * W, x + (size_t)n * D, D, K, eps, scale, lp);
        free(lp);
        partial[ch] = acc;
    }
    double sum = 0.0;
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) sum += partial[ch];
    *loss_sum += sum;
}

static void cpu_sumsq(Backend *be, double *acc, const float *p, size_t n) {
    (void)be;
    double partial[REDUCE_CHUNKS] = {0};
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) {
        size_t i0 = n * ch / REDUCE_CHUNKS, i1 = n * (ch + 1) / REDUCE_CHUNKS, i = i0;
        double lane[8] = {0};  // 8 running sums, a vector of doubles: the loop vectorises
        for (; i + 8 <= i1; i += 8)
            for (int k = 0; k < 8; k++) lane[k] += (double)p[i + k] * p[i + k];
        for (; i < i1; i++) lane[0] += (double)p[i] * p[i];
        for (int k = 0; k < 8; k++) partial[ch] += lane[k];
    }
    double sum = 0.0;
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) sum += partial[ch];
    *acc += sum;
}

// ---- optimizer ----------------------------------------------------------------------------
static void cpu_step_check(Backend *be, StepRecord *rec, const double *loss_norm, double loss_count,
                           const StepSchedule *sched) {
    (void)be;
    givt_step_decide(rec, loss_norm, loss_count, sched);
}

// The compute copies are the float32 buffers themselves here: p_compute, ema_compute NULL (or p, ema).
// One element of AdamW (PyTorch's formula, the bias corrections in step_size and bc2_sqrt) and of
// the EMA: the same functions for adamw's fused EMA and ema_update, so that the two give the same bits.
typedef struct {
    float beta1, beta2, eps, decay, grad_scale, step_size, bc2_sqrt;
} CpuAdamw;
static inline float cpu_adamw_elem(const CpuAdamw *a, float g, float *m, float *v, float p) {
    float gi = g * a->grad_scale;
    float mi = a->beta1 * *m + (1.0f - a->beta1) * gi;
    float vi = a->beta2 * *v + (1.0f - a->beta2) * gi * gi;
    float denom = sqrtf(vi) / a->bc2_sqrt + a->eps;
    *m = mi;
    *v = vi;
    return p * a->decay - a->step_size * (mi / denom);
}
static inline float cpu_ema_elem(float decay, float e, float p) { return decay * e + (1.0f - decay) * p; }

// p, m, v (n) updated from g (n); ema (n) too when not NULL. Separate loops, so that each
// vectorises over its arrays (restrict: p, g, m, v, ema are distinct buffers).
static void cpu_adamw_loop(const CpuAdamw *a, float *restrict p, const float *restrict g, float *restrict m,
                           float *restrict v, float *restrict ema, size_t n, float ema_decay) {
    if (ema) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            p[i] = cpu_adamw_elem(a, g[i], &m[i], &v[i], p[i]);
            ema[i] = cpu_ema_elem(ema_decay, ema[i], p[i]);
        }
    } else {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) p[i] = cpu_adamw_elem(a, g[i], &m[i], &v[i], p[i]);
    }
}

static void cpu_adamw(Backend *be, float *p, cval *p_compute, const float *g, float *m, float *v, float *ema,
                      cval *ema_compute, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                      float grad_scale, int t, float ema_decay, const StepRecord *rec) {
    (void)be;
    if (p_compute && FP(p_compute) != p) givt_die("cpu adamw: the compute copy of float32 weights is the weights");
    if (ema_compute && (!ema || FP(ema_compute) != ema)) givt_die("cpu adamw: the EMA's compute copy is the EMA");
    if (rec && rec->skip) return;
    CpuAdamw a = {beta1, beta2, eps, 1.0f - lr * weight_decay, grad_scale, givt_adamw_step_size(lr, beta1, t),
                  givt_adamw_bc2_sqrt(beta2, t)};
    if (rec) {  // the step's scalars from the record (the same bits as passing them)
        a = (CpuAdamw){beta1, beta2, eps, 1.0f - rec->lr * weight_decay, rec->grad_scale, rec->step_size, rec->bc2_sqrt};
        ema_decay = rec->ema_decay;
    }
    cpu_adamw_loop(&a, p, g, m, v, ema, n, ema_decay);
}

static void cpu_ema_update(Backend *be, float *ema, cval *ema_compute, const float *p, size_t n, float decay,
                           const StepRecord *rec) {
    (void)be;
    if (ema_compute && FP(ema_compute) != ema) givt_die("cpu ema_update: the compute copy is the EMA weights");
    if (rec && rec->skip) return;
    if (rec) decay = rec->ema_decay;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) ema[i] = cpu_ema_elem(decay, ema[i], p[i]);
}

static const GivtOps g_cpu_ops = {
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .copy_rows = cpu_copy_rows,
    .mem_info = cpu_mem_info,
    .synchronize = cpu_synchronize,
    .close = cpu_close,
    .readback_create = cpu_readback_create,
    .readback_start = cpu_readback_start,
    .readback_wait = cpu_readback_wait,
    .readback_free = cpu_readback_free,
    .host_alloc = cpu_alloc,  // host memory is all this backend has: an upload is a copy, done at once
    .host_free = cpu_free,
    .upload_async = cpu_upload,
    .to_compute = cpu_to_compute,
    .matmul_fwd = cpu_matmul_fwd,
    .matmul_bwd = cpu_matmul_bwd,
    .residual_rmsnorm_fwd = cpu_residual_rmsnorm_fwd,
    .residual_rmsnorm_bwd = cpu_residual_rmsnorm_bwd,
    .attention_saved_bytes = cpu_attention_saved_bytes,
    .attention_fwd = cpu_attention_fwd,
    .attention_scratch_bytes = cpu_attention_scratch_bytes,
    .attention_bwd = cpu_attention_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .shift_bos = cpu_shift_bos,
    .shift_bos_bwd = cpu_shift_bos_bwd,
    .class_embed_fwd = cpu_class_embed_fwd,
    .class_embed_bwd = cpu_class_embed_bwd,
    .gaussian_nll = cpu_gaussian_nll,
    .mixture_nll = cpu_mixture_nll,
    .sumsq = cpu_sumsq,
    .step_check = cpu_step_check,
    .adamw = cpu_adamw,
    .ema_update = cpu_ema_update,
};

static void cpu_close(Backend *be) {
    CpuCtx *ctx = be->ctx;
    if (ctx) free(ctx->ws);
    free(ctx);
    be->ctx = NULL;
}

// float32 compute whatever the precision asked for (bf16 too: ->compute says float32).
Backend *backend_cpu_open(Precision p) {
    (void)p;
    Backend *be = xcalloc(1, sizeof *be);
    be->name = "cpu";
    be->caps = BACKEND_CAP_HOST_MEMORY;
    be->compute = DTYPE_F32;
    be->ops = &g_cpu_ops;
    be->ctx = xcalloc(1, sizeof(CpuCtx));
    blas_init_threads(omp_get_max_threads());
    snprintf(be->device, sizeof be->device, "CPU, %d OpenMP threads, %s", omp_get_max_threads(), blas_description());
    return be;
}
