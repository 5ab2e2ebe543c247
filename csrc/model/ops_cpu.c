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
#include "model.h"  // givt_head_std
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
static void cpu_zero(Backend *be, void *p, size_t bytes) {
    (void)be;
    memset(p, 0, bytes);
}
// MemAvailable and MemTotal of /proc/meminfo (the physical memory when there is none)
static void cpu_mem_info(Backend *be, size_t *free_bytes, size_t *total_bytes) {
    (void)be;
    double avail = memory_available_bytes();
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    *free_bytes = (size_t)avail;
    *total_bytes = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
}
static void cpu_synchronize(Backend *be) { (void)be; }  // every op is synchronous
static void cpu_close(Backend *be) { (void)be; }
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
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / (float)C + RMSNORM_EPS);
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
            float r = rstd[n], dot = 0.0f;
            for (int c = 0; c < C; c++) dot += w[c] * g[c] * x[c];
            float k = dot * r * r * r / (float)C;
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
// Rotate-half RoPE on the first n dims of each head of rows [0, nrows) of x (B sequences; row r of
// sequence b at x + b*batch + r*row, at position pos + r): x*cos + cat(-x2, x1)*sin. With transpose
// != 0 it applies the transpose of that linear map (the backward of RoPE).
static void rope_rows(float *x, size_t row, size_t batch, int B, int nrows, int pos, int H, int hd, int n,
                      const float *cos_t, const float *sin_t, int transpose) {
    if (n == 0 || nrows <= 0) return;
    int half = n / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int r = 0; r < nrows; r++) {
            const float *cs = cos_t + (size_t)(pos + r) * n, *sn = sin_t + (size_t)(pos + r) * n;
            float *xr = x + (size_t)b * batch + (size_t)r * row;
            for (int h = 0; h < H; h++) {
                float *v = xr + (size_t)h * hd;
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
}

// Each (b, h) slice is one task of an OpenMP loop: its products are single-threaded sgemm calls
// (the OpenMP build of OpenBLAS runs serially inside a parallel region), and its Tq x Tk slice of
// probabilities stays in cache from the product to the softmax to the next product. Causal: query
// rows [r0, r1) only see keys [0, pos0 + r1), so the products go by row blocks of ATT_BLOCK and skip
// the upper triangle. This backend saves the probabilities P (B, H, Tq, Tk) for the backward pass.
#ifndef ATT_BLOCK
#define ATT_BLOCK 64
#endif
static inline int imin(int a, int b) { return a < b ? a : b; }

// The (b, h) views of one attention call: q, k, v (and dq, dk, dv) with their row strides.
#define HEAD(ptr, b, h, batch) ((ptr) + (size_t)(b) * (batch) + (size_t)(h) * s->hd)
#define HEAD_P(att, b, h) ((att) + ((size_t)(b) * s->H + (h)) * (size_t)s->Tq * s->Tk)

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

// The largest of n floats, in 16 running maxima; NaN when any is NaN.
#define MAX_OR_NAN(a, b) ((b) > (a) || (b) != (b) ? (b) : (a))
static float max16(const float *p, int n) {
    float acc[16];
    for (int k = 0; k < 16; k++) acc[k] = -INFINITY;
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] = MAX_OR_NAN(acc[k], p[j + k]);
    for (; j < n; j++) acc[j & 15] = MAX_OR_NAN(acc[j & 15], p[j]);
    float mx = -INFINITY;
    for (int k = 0; k < 16; k++) mx = MAX_OR_NAN(mx, acc[k]);
    return mx;
}

// The sum of n floats in 16 running partial sums (a vector's worth): a fixed order, vectorised.
static float sum16(const float *p, int n) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += p[j + k];
    for (; j < n; j++) acc[j & 15] += p[j];
    float sum = 0.0f;
    for (int k = 0; k < 16; k++) sum += acc[k];
    return sum;
}

// In place on one (Tq, Tk) slice: row t becomes the softmax of its entries 0..pos0+t, zeros after.
static void causal_softmax_slice(float *p, int Tq, int Tk, int pos0) {
    for (int t = 0; t < Tq; t++, p += Tk) {
        int n = pos0 + t + 1;
        float mx = max16(p, n);
        if (mx != mx) {  // a NaN score: the row is NaN (exp_vec alone would make it finite)
            for (int j = 0; j < Tk; j++) p[j] = mx;
            continue;
        }
        for (int j = 0; j < n; j++) p[j] = exp_vec(p[j] - mx);
        float inv = 1.0f / sum16(p, n);
        for (int j = 0; j < n; j++) p[j] *= inv;
        for (int j = n; j < Tk; j++) p[j] = 0.0f;
    }
}

static size_t cpu_attention_saved_bytes(Backend *be, const AttnShape *s) {
    (void)be;
    return size_mul(size_mul3((size_t)s->B, (size_t)s->H, (size_t)s->Tq), (size_t)s->Tk) * sizeof(float);
}

// q (B, Tq, .), k, v (B, Tk, .) strided -> out (B, Tq, H*hd); saved = P (B, H, Tq, Tk)
static void cpu_attention_fwd(Backend *be, cval *out_, void *saved, cval *q_, cval *k_, const cval *v_,
                              const float *cos_t, const float *sin_t, const AttnShape *s) {
    (void)be;
    int B = s->B, H = s->H, hd = s->hd, Tq = s->Tq, Tk = s->Tk, pos0 = s->pos0, C = H * hd;
    int qr = (int)s->q_row, kr = (int)s->kv_row;
    rope_rows(FP(q_), s->q_row, s->q_batch, B, Tq, pos0, H, hd, s->n_rot, cos_t, sin_t, 0);
    rope_rows(FP(k_) + (size_t)pos0 * s->kv_row, s->kv_row, s->kv_batch, B, Tk - pos0, pos0, H, hd, s->n_rot, cos_t,
              sin_t, 0);
    float *att = saved;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *q = HEAD(CFP(q_), b, h, s->q_batch), *k = HEAD(CFP(k_), b, h, s->kv_batch);
            const float *v = HEAD(CFP(v_), b, h, s->kv_batch);
            float *p = HEAD_P(att, b, h), *y = FP(out_) + (size_t)b * Tq * C + (size_t)h * hd;
            for (int r0 = 0; r0 < Tq; r0 += ATT_BLOCK) {  // S = scale * Q K^T, lower block triangle
                int r1 = imin(r0 + ATT_BLOCK, Tq);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, pos0 + r1, hd, scale, q + (size_t)r0 * qr,
                            qr, k, kr, 0.0f, p + (size_t)r0 * Tk, Tk);
            }
            causal_softmax_slice(p, Tq, Tk, pos0);
            for (int r0 = 0; r0 < Tq; r0 += ATT_BLOCK) {  // Y = P V
                int r1 = imin(r0 + ATT_BLOCK, Tq);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, hd, pos0 + r1, 1.0f,
                            p + (size_t)r0 * Tk, Tk, v, kr, 0.0f, y + (size_t)r0 * C, C);
            }
        }
}

static size_t cpu_attention_scratch_bytes(Backend *be, const AttnShape *s) {
    return cpu_attention_saved_bytes(be, s);  // dP, dS (B, H, T, T)
}

// Training shapes (pos0 = 0, Tq = Tk = T): dq, dk, dv (strided as q, k, v) from dout (B, T, H*hd)
static void cpu_attention_bwd(Backend *be, cval *dq_, cval *dk_, cval *dv_, void *scratch, const cval *dout,
                              const cval *q_, const cval *k_, const cval *v_, const void *saved, const float *cos_t,
                              const float *sin_t, const AttnShape *s) {
    (void)be;
    if (s->pos0 != 0 || s->Tq != s->Tk) givt_die("attention_bwd: training shapes only (pos0 = 0, Tq = Tk)");
    int B = s->B, H = s->H, hd = s->hd, T = s->Tq, C = H * hd, qr = (int)s->q_row, kr = (int)s->kv_row;
    const float *att = saved;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *q = HEAD(CFP(q_), b, h, s->q_batch), *k = HEAD(CFP(k_), b, h, s->kv_batch);
            const float *v = HEAD(CFP(v_), b, h, s->kv_batch);
            const float *p = HEAD_P(att, b, h), *dy = CFP(dout) + (size_t)b * T * C + (size_t)h * hd;
            float *ds = HEAD_P(FP(scratch), b, h);
            float *dq = HEAD(FP(dq_), b, h, s->q_batch), *dk = HEAD(FP(dk_), b, h, s->kv_batch);
            float *dv = HEAD(FP(dv_), b, h, s->kv_batch);
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = imin(r0 + ATT_BLOCK, T);
                // dP = dY V^T, rows [r0, r1), columns [0, r1)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, r1, hd, 1.0f, dy + (size_t)r0 * C, C, v,
                            kr, 0.0f, ds + (size_t)r0 * T, T);
                // dV = P^T dY, rows [r0, r1) of dV take rows [r0, T) of P (P is 0 above the diagonal)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1 - r0, hd, T - r0, 1.0f,
                            p + (size_t)r0 * T + r0, T, dy + (size_t)r0 * C, C, 0.0f, dv + (size_t)r0 * kr, kr);
            }
            // dS = P * (dP - rowsum(dP * P)), zeros above the diagonal
            for (int t = 0; t < T; t++) {
                float *d = ds + (size_t)t * T;
                const float *pr = p + (size_t)t * T;
                float dot = 0.0f;
                for (int j = 0; j <= t; j++) dot += d[j] * pr[j];
                for (int j = 0; j <= t; j++) d[j] = pr[j] * (d[j] - dot);
                for (int j = t + 1; j < T; j++) d[j] = 0.0f;
            }
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = imin(r0 + ATT_BLOCK, T);
                // dQ = scale * dS K, rows [r0, r1), columns [0, r1) of dS
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, hd, r1, scale, ds + (size_t)r0 * T, T,
                            k, kr, 0.0f, dq + (size_t)r0 * qr, qr);
                // dK = scale * dS^T Q, rows [r0, r1) of dK take rows [r0, T) of dS
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1 - r0, hd, T - r0, scale,
                            ds + (size_t)r0 * T + r0, T, q + (size_t)r0 * qr, qr, 0.0f, dk + (size_t)r0 * kr, kr);
            }
        }
    // back through RoPE: the transpose of the rotation, on dq and dk
    rope_rows(FP(dq_), s->q_row, s->q_batch, B, T, 0, H, hd, s->n_rot, cos_t, sin_t, 1);
    rope_rows(FP(dk_), s->kv_row, s->kv_batch, B, T, 0, H, hd, s->n_rot, cos_t, sin_t, 1);
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
        size_t i0 = n * ch / REDUCE_CHUNKS, i1 = n * (ch + 1) / REDUCE_CHUNKS;
        double acc = 0.0;
        for (size_t i = i0; i < i1; i++) acc += (double)p[i] * p[i];
        partial[ch] = acc;
    }
    double sum = 0.0;
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) sum += partial[ch];
    *acc += sum;
}

// ---- optimizer ----------------------------------------------------------------------------
// The compute copy is the float32 weights themselves here: p_compute is NULL (or p).
static void cpu_adamw(Backend *be, float *p, cval *p_compute, const float *g, float *m, float *v, size_t n, float lr,
                      float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t) {
    (void)be;
    if (p_compute && FP(p_compute) != p) givt_die("cpu adamw: the compute copy of float32 weights is the weights");
    float step_size = (float)(lr / (1.0 - pow(beta1, t)));
    float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, t));
    float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        p[i] *= decay;
        m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
        v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * (m[i] / denom);
    }
}

static void cpu_ema_update(Backend *be, float *ema, cval *ema_compute, const float *p, size_t n, float decay) {
    (void)be;
    if (ema_compute && FP(ema_compute) != ema) givt_die("cpu ema_update: the compute copy is the EMA weights");
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) ema[i] = decay * ema[i] + (1.0f - decay) * p[i];
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
    .adamw = cpu_adamw,
    .ema_update = cpu_ema_update,
};

// float32 compute whatever the precision asked for ("bf16" too: ->compute says float32).
Backend *backend_cpu_open(const char *precision) {
    (void)precision;
    Backend *be = xcalloc(1, sizeof *be);
    be->name = "cpu";
    be->compute = DTYPE_F32;
    be->ops = &g_cpu_ops;
    blas_init_threads(omp_get_max_threads());
    snprintf(be->device, sizeof be->device, "CPU, %d OpenMP threads, %s", omp_get_max_threads(), blas_description());
    return be;
}
