// ops_cpu: the float32 CPU backend, the reference for every other backend. Matrix products go to
// OpenBLAS (cblas_sgemm; attention calls it per head from inside an OpenMP loop, where the OpenMP
// build of OpenBLAS runs single-threaded); elementwise and row loops are OpenMP-parallel. Our own
// reductions have a fixed order, independent of the thread count; OpenBLAS's sgemm may round
// differently with another thread count, so bit-exact reproduction (resume) needs the same
// OMP_NUM_THREADS, and holds run to run with it.
#define _POSIX_C_SOURCE 200809L
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"  // givt_head_std
#include "util.h"

// ---- memory -------------------------------------------------------------------------------
static void *cpu_alloc(size_t bytes) {
    void *p = NULL;
    size_t n = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) givt_die("out of memory allocating %zu bytes", bytes);
    memset(p, 0, n);
    return p;
}
static void cpu_free(void *p) { free(p); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void cpu_copy_const(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void cpu_zero(void *p, size_t bytes) { memset(p, 0, bytes); }

// ---- matmul -------------------------------------------------------------------------------
// out (N, M) = inp (N, K) @ w^T, w (M, K)
static void cpu_matmul_fwd(float *out, const float *inp, const float *w, int N, int K, int M) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, K, 1.0f, inp, K, w, K, 0.0f, out, M);
}

// dinp (N, K) = dout (N, M) @ w (M, K); dw (M, K) += dout^T @ inp
static void cpu_matmul_bwd(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                           int N, int K, int M) {
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, M, 1.0f, dout, M, w, K, 0.0f, dinp, K);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, K, N, 1.0f, dout, M, inp, K, 1.0f, dw, K);
}

// ---- rmsnorm ------------------------------------------------------------------------------
#define RMSNORM_EPS 1e-5f

// out (N, C) = inp * rstd * w, rstd (N) = rsqrt(mean(inp^2) + 1e-5)
static void cpu_rmsnorm_fwd(float *out, float *rstd, const float *inp, const float *w, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
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
static void cpu_rmsnorm_bwd(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                            const float *rstd, int N, int C) {
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

// ---- rope ---------------------------------------------------------------------------------
// Rotate-half RoPE on the first n dims of each q and k head: x*cos + cat(-x2, x1)*sin.
// With transpose != 0 it applies the transpose of that linear map (the backward of RoPE).
static void rope_apply(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int C, int H,
                       int n, int transpose) {
    if (n == 0) return;
    int hd = C / H, half = n / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *cs = cos_t + (size_t)t * n, *sn = sin_t + (size_t)t * n;
            float *row = qkv + ((size_t)b * T + t) * 3 * C;
            for (int part = 0; part < 2; part++)  // q, then k
                for (int h = 0; h < H; h++) {
                    float *x = row + part * C + h * hd;
                    for (int i = 0; i < half; i++) {
                        float x1 = x[i], x2 = x[i + half];
                        if (!transpose) {
                            x[i] = x1 * cs[i] - x2 * sn[i];
                            x[i + half] = x2 * cs[i + half] + x1 * sn[i + half];
                        } else {
                            x[i] = x1 * cs[i] + x2 * sn[i + half];
                            x[i + half] = x2 * cs[i + half] - x1 * sn[i];
                        }
                    }
                }
        }
}

static void cpu_rope_fwd(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int C, int H,
                         int n_elem) {
    rope_apply(qkv, cos_t, sin_t, B, T, C, H, n_elem, 0);
}
static void cpu_rope_bwd(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int C, int H,
                         int n_elem) {
    rope_apply(dqkv, cos_t, sin_t, B, T, C, H, n_elem, 1);
}

// ---- attention ----------------------------------------------------------------------------
// One (b, h) slice: Q, K, V are (T, hd) with row stride 3C inside qkv; P (T, T).
#define HEAD_Q(qkv, b, h) ((qkv) + (size_t)(b) * T * 3 * C + (size_t)(h) * hd)
#define HEAD_K(qkv, b, h) (HEAD_Q(qkv, b, h) + C)
#define HEAD_V(qkv, b, h) (HEAD_Q(qkv, b, h) + 2 * C)
#define HEAD_P(att, b, h) ((att) + ((size_t)(b) * H + (h)) * T * T)

// Each (b, h) slice is one task of an OpenMP loop: its products are single-threaded sgemm calls
// (the OpenMP build of OpenBLAS runs serially inside a parallel region), and its T x T slice stays
// in cache from the product to the softmax to the next product. Causal: rows [r0, r1) of P only need
// columns [0, r1), so the products go by row blocks of ATT_BLOCK and skip the upper triangle.
#ifndef ATT_BLOCK
#define ATT_BLOCK 64
#endif
static inline int imin(int a, int b) { return a < b ? a : b; }

// In place on one (T, T) slice: row t becomes the softmax of its entries 0..t, zeros after.
static void causal_softmax_slice(float *p, int T) {
    for (int t = 0; t < T; t++, p += T) {
        float mx = -INFINITY;
        for (int j = 0; j <= t; j++) mx = p[j] > mx ? p[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j <= t; j++) {
            p[j] = expf(p[j] - mx);
            sum += p[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j <= t; j++) p[j] *= inv;
        for (int j = t + 1; j < T; j++) p[j] = 0.0f;
    }
}

// qkv (B, T, 3C) -> out (B, T, C); att (B, H, T, T)
static void cpu_attention_fwd(float *out, float *att, const float *qkv, int B, int T, int C, int H) {
    int hd = C / H;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *q = HEAD_Q(qkv, b, h), *k = HEAD_K(qkv, b, h), *v = HEAD_V(qkv, b, h);
            float *p = HEAD_P(att, b, h), *y = out + (size_t)b * T * C + (size_t)h * hd;
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {  // S = scale * Q K^T, lower block triangle
                int r1 = imin(r0 + ATT_BLOCK, T);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, r1, hd, scale, q + (size_t)r0 * 3 * C,
                            3 * C, k, 3 * C, 0.0f, p + (size_t)r0 * T, T);
            }
            causal_softmax_slice(p, T);
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {  // Y = P V
                int r1 = imin(r0 + ATT_BLOCK, T);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, hd, r1, 1.0f, p + (size_t)r0 * T, T,
                            v, 3 * C, 0.0f, y + (size_t)r0 * C, C);
            }
        }
}

// dqkv (B, T, 3C) = d/dqkv of out = attention(qkv); scratch (B, H, T, T)
static void cpu_attention_bwd(float *dqkv, float *scratch, const float *dout, const float *qkv,
                              const float *att, int B, int T, int C, int H) {
    int hd = C / H;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *q = HEAD_Q(qkv, b, h), *k = HEAD_K(qkv, b, h), *v = HEAD_V(qkv, b, h);
            const float *p = HEAD_P(att, b, h), *dy = dout + (size_t)b * T * C + (size_t)h * hd;
            float *ds = HEAD_P(scratch, b, h);
            float *dq = HEAD_Q(dqkv, b, h), *dk = HEAD_K(dqkv, b, h), *dv = HEAD_V(dqkv, b, h);
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = imin(r0 + ATT_BLOCK, T);
                // dP = dY V^T, rows [r0, r1), columns [0, r1)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, r1, hd, 1.0f, dy + (size_t)r0 * C, C, v,
                            3 * C, 0.0f, ds + (size_t)r0 * T, T);
                // dV = P^T dY, rows [r0, r1) of dV take rows [r0, T) of P (P is 0 above the diagonal)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1 - r0, hd, T - r0, 1.0f,
                            p + (size_t)r0 * T + r0, T, dy + (size_t)r0 * C, C, 0.0f, dv + (size_t)r0 * 3 * C, 3 * C);
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
                            k, 3 * C, 0.0f, dq + (size_t)r0 * 3 * C, 3 * C);
                // dK = scale * dS^T Q, rows [r0, r1) of dK take rows [r0, T) of dS
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1 - r0, hd, T - r0, scale,
                            ds + (size_t)r0 * T + r0, T, q + (size_t)r0 * 3 * C, 3 * C, 0.0f, dk + (size_t)r0 * 3 * C,
                            3 * C);
            }
        }
}

// ---- swiglu -------------------------------------------------------------------------------
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

static inline float sigmoidf(float x) { return 1.0f / (1.0f + exp_vec(-x)); }

// h (N, 2F) = [a | b] -> out (N, F) = silu(a) * b
static void cpu_swiglu_fwd(float *out, const float *h, int N, int F) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *a = h + (size_t)n * 2 * F, *b = a + F;
        float *o = out + (size_t)n * F;
        for (int f = 0; f < F; f++) o[f] = a[f] * sigmoidf(a[f]) * b[f];
    }
}

// dh (N, 2F) = [dout * b * silu'(a) | dout * silu(a)]
static void cpu_swiglu_bwd(float *dh, const float *dout, const float *h, int N, int F) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *a = h + (size_t)n * 2 * F, *b = a + F, *g = dout + (size_t)n * F;
        float *da = dh + (size_t)n * 2 * F, *db = da + F;
        for (int f = 0; f < F; f++) {
            float s = sigmoidf(a[f]);
            db[f] = g[f] * a[f] * s;
            da[f] = g[f] * b[f] * (s + a[f] * s * (1.0f - s));
        }
    }
}

// ---- small ops ----------------------------------------------------------------------------
static void cpu_add(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// in (B, T, D) = [bos, x_0 .. x_{T-2}]
static void cpu_shift_bos(float *in, const float *x, const float *bos, int B, int T, int D) {
    for (int b = 0; b < B; b++) {
        float *dst = in + (size_t)b * T * D;
        memcpy(dst, bos, (size_t)D * sizeof(float));
        memcpy(dst + D, x + (size_t)b * T * D, (size_t)(T - 1) * D * sizeof(float));
    }
}

// dbos (D) += sum_b din[b, 0, :]
static void cpu_shift_bos_bwd(float *dbos, const float *din, int B, int T, int D) {
    for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++) dbos[d] += din[(size_t)b * T * D + d];
}

// ---- gaussian nll -------------------------------------------------------------------------
// Fixed-size chunks summed in order: the result does not depend on the thread count.
#define REDUCE_CHUNKS 64

// y (N, 2D) = [mu | pre], x (N, D). Per element, in double: std = softplus(pre) + eps (PyTorch's
// softplus: pre > 20 gives pre), var = max(std^2, eps), l = 0.5*(log var + (x-mu)^2/var).
static double cpu_gaussian_nll(float *dy, const float *y, const float *x, int N, int D, double eps,
                               float scale) {
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
    return sum;
}

static double cpu_sumsq(const float *p, size_t n) {
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
    return sum;
}

// ---- optimizer ----------------------------------------------------------------------------
static void cpu_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                      float eps, float weight_decay, float grad_scale, int t) {
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

static void cpu_ema_update(float *ema, const float *p, size_t n, float decay) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) ema[i] = decay * ema[i] + (1.0f - decay) * p[i];
}

static const GivtOps g_cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy_const,
    .zero = cpu_zero,
    .matmul_fwd = cpu_matmul_fwd,
    .matmul_bwd = cpu_matmul_bwd,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .rope_fwd = cpu_rope_fwd,
    .rope_bwd = cpu_rope_bwd,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .add = cpu_add,
    .shift_bos = cpu_shift_bos,
    .shift_bos_bwd = cpu_shift_bos_bwd,
    .gaussian_nll = cpu_gaussian_nll,
    .sumsq = cpu_sumsq,
    .adamw = cpu_adamw,
    .ema_update = cpu_ema_update,
};

const GivtOps *ops_cpu(void) { return &g_cpu_ops; }
