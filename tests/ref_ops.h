// ref_ops: the double-precision reference of every compute op of ops.h, written once for the tests:
// test_backend_ops.c compares every backend's ops with them, test_ops_fd64.c differences them to
// check the CPU backend's backward. Plain loops over dense row-major double arrays, straight from the
// formulas of GIVT.md and ops.h (and, for the backward ops, the vector-Jacobian products derived by
// hand); nothing from ops_cpu.c or kernels/. The rope tables, which the ops take in float32, stay
// float32 here too. Outputs are written, never accumulated: for an op that accumulates (dw, dres,
// dbos, dtable, the loss), the reference gives the increment. Shapes are in the comments; N = B*T rows.
//
// Also here: the attention test cases' layout of q, k and v (RefOpAttCase), which both tests use.
#ifndef GIVT_TEST_REF_OPS_H
#define GIVT_TEST_REF_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

#define REFOP_RMSNORM_EPS 1e-5     // ops.h: rstd = rsqrt(mean(x^2) + 1e-5)
#define REFOP_SOFTPLUS_THRESHOLD 20.0  // PyTorch's softplus: z itself above it

// A new double copy of the n floats at f (exact); free it.
double *refop_widen(const float *f, size_t n);
// n doubles, zero; free it.
double *refop_zeros(size_t n);

// ---- matmul ----------------------------------------------------------------------------------------
// out (N, M) = inp (N, K) @ w^T, w (M, K)
void refop_matmul_fwd(double *out, const double *inp, const double *w, int N, int K, int M);
// dinp (N, K) = dout (N, M) @ w; dw (M, K) = dout^T @ inp
void refop_matmul_bwd(double *dinp, double *dw, const double *dout, const double *inp, const double *w, int N, int K,
                      int M);

// ---- residual add + RMSNorm ------------------------------------------------------------------------
// x = in + branch (branch NULL: x = in), res (N, C) = x (res NULL: not stored), r = rstd (N) =
// 1 / sqrt(mean(x^2) + 1e-5) (rstd NULL: not stored), out (N, C) = x * r * w, w (C).
void refop_rmsnorm_fwd(double *out, double *rstd, double *res, const double *in, const double *branch,
                       const double *w, int N, int C);
// The vector-Jacobian product for dout g (N, C) at the norm's input x (N, C), r from x in double:
// dx (N, C) = r w g - x r^3 / C * sum_c(w g x); dw (C) = sum over rows of g x r.
void refop_rmsnorm_bwd(double *dx, double *dw, const double *g, const double *x, const double *w, int N, int C);

// ---- RoPE + causal attention -----------------------------------------------------------------------
// y = rope(x) on one token's H heads of hd: the first n dims of each head rotate-half rotated with
// the table row cs, sn (n): y_i = x_i cos_i + (i < n/2 ? -x_{i+n/2} : x_{i-n/2}) sin_i; the rest copied.
void refop_rope_row(double *y, const double *x, int H, int hd, int n, const float *cs, const float *sn);
// Its transpose (the backward): dx = rope^T(dy) at the same table row.
void refop_rope_row_t(double *dx, const double *dy, int H, int hd, int n, const float *cs, const float *sn);
// The tables (rows, n): angle (t / condense) * base^(-2i/n) at row t for i < n/2, its cos and sin in
// dims i and n/2 + i (GIVT.md's cache with base and condense as given), rounded to float32.
void refop_rope_tables(float *cs, float *sn, int rows, int n, double base, double condense);

// One attention call on dense arrays. s gives B, H, hd, Tq, Tk, pos0 and n_rot (its strides are not
// used); C = H * hd. Queries at positions pos0 + t, keys at 0 .. Tk - 1; query t sees keys
// 0 .. pos0 + t; out = softmax(qr kr^T / sqrt(hd), causal) v.
typedef struct {
    const AttnShape *s;
    const float *cos, *sin;     // (rows >= Tk, n_rot)
    const double *q, *k, *v;    // (B, Tq, C), (B, Tk, C), (B, Tk, C); k rows < pos0 rotated already
    double *qr, *kr, *out;      // written: the rotated q (B, Tq, C) and k (B, Tk, C), and out (B, Tq, C)
    const double *dout;         // NULL: the forward only; else (B, Tq, C), training shapes (pos0 = 0)
    double *dq, *dk, *dv;       // with dout: the gradients w.r.t. the unrotated q, k and v
} RefOpAttn;
void refop_attention(const RefOpAttn *a);

// ---- SwiGLU ----------------------------------------------------------------------------------------
// h (N, 2F) = [a | b] per row -> out (N, F) = silu(a) * b, silu(a) = a * sigmoid(a)
void refop_swiglu_fwd(double *out, const double *h, int N, int F);
// dh (N, 2F) for dout (N, F): da = g b (s + a s (1 - s)), db = g a s, s = sigmoid(a)
void refop_swiglu_bwd(double *dh, const double *dout, const double *h, int N, int F);

// ---- input shift and class embedding ---------------------------------------------------------------
// out (B, T, D) = [bos, x_0 .. x_{T-2}] per sequence; x (B, T, D), bos (D)
void refop_shift_bos(double *out, const double *x, const double *bos, int B, int T, int D);
// dbos (D) = sum over b of din (B, T, D) at t = 0
void refop_shift_bos_bwd(double *dbos, const double *din, int B, int T, int D);
// res (B, T, C), in place: row t = 0 of sequence b = table[labels[b]] (table (rows, C)); the rest kept
void refop_class_embed_fwd(double *res, const double *table, const int32_t *labels, int B, int T, int C);
// dtable (rows, C) = sum over b with labels[b] = row of dres[b, 0, :]; then dres[b, 0, :] = 0 (in place)
void refop_class_embed_bwd(double *dtable, double *dres, const int32_t *labels, int B, int T, int C, int rows);

// ---- the heads' losses -----------------------------------------------------------------------------
double refop_softplus(double z);  // log(1 + e^z); z itself above 20 (PyTorch's threshold)
// y (N, 2D) = [mu | pre], x (N, D); std = softplus(pre) + eps, var = max(std^2, eps). Returns the sum
// over the N*D elements of 0.5 (log var + (x - mu)^2 / var); dy (N, 2D) = scale * dl/dy when not NULL,
// the clamp passing the gradient straight through to std (PyTorch's clamp, and the ops').
double refop_gaussian_nll(double *dy, const double *y, const double *x, int N, int D, double eps, double scale);
// The mixture head: y row width W = K + 2KD ([logits (K) | mu (K, D) | pre (K, D)]; K = 1: 2D, no logit)
size_t refop_mixture_width(int D, int K);
// y (N, W), x (N, D): returns the sum over rows of l = -logsumexp_k(log_softmax(logits)_k -
// sum_d 0.5 (log var_kd + (x_d - mu_kd)^2 / var_kd)), every lp_k kept and shifted by their maximum;
// dy (N, W) = scale * dl/dy when not NULL.
double refop_mixture_nll(double *dy, const double *y, const double *x, int N, int D, int K, double eps, double scale);

// ---- optimizer ops ---------------------------------------------------------------------------------
double refop_sumsq(const double *p, size_t n);  // sum of p_i^2
// PyTorch's AdamW: g' = g * grad_scale, p *= 1 - lr wd, m = b1 m + (1 - b1) g', v = b2 v + (1 - b2) g'^2,
// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps); p, m, v (n) in place. Then, unless ema
// is NULL, the EMA of the updated weights: ema (n) = ema_decay * ema + (1 - ema_decay) * p.
typedef struct {
    double lr, beta1, beta2, eps, weight_decay, grad_scale;
    int t;             // the 1-based update count
    double ema_decay;  // of the EMA (when refop_adamw gets one)
} RefOpAdamW;
void refop_adamw(double *p, double *m, double *v, double *ema, const double *g, size_t n, const RefOpAdamW *h);
// ema (n) = decay * ema + (1 - decay) * p, in place
void refop_ema_update(double *ema, const double *p, size_t n, double decay);

// ---- strided copies ----------------------------------------------------------------------------------
// copy_rows: for b < B and r < rows, the width elements at src + b*src_batch + r*src_row go to
// dst + b*dst_batch + r*dst_row (strides in elements); the rest of dst kept.
void refop_copy_rows(double *dst, size_t dst_row, size_t dst_batch, const double *src, size_t src_row,
                     size_t src_batch, int B, int rows, int width);

// ---- the attention tests' layouts ------------------------------------------------------------------
// A case: B, H, hd, Tq, pos0, n_rot, and the layout: shared = q, k, v the thirds of one (B, Tk, 3C)
// buffer (the model's; with pos0 > 0 the queries are its last Tq rows); otherwise three buffers, q of
// row stride C + qr_pad and batch stride Tq * q_row + qb_pad, k and v of row stride C + kr_pad and
// batch stride (Tk + kcap_pad) * kv_row + kb_pad (a KV cache with room for more tokens).
typedef struct {
    int B, H, hd, Tq, pos0, n;
    int shared, qr_pad, qb_pad, kr_pad, kcap_pad, kb_pad;
} RefOpAttCase;

typedef struct {
    AttnShape s;
    size_t nq, nkv;           // elements of the q buffer and of each k, v buffer (shared: the qkv buffer, 0)
    size_t qoff, koff, voff;  // where the views start in their buffers
} RefOpAttLayout;

RefOpAttLayout refop_att_layout(const RefOpAttCase *ac);
// Element (b, t, j) of a view of row stride row and batch stride batch.
static inline size_t refop_vix(size_t row, size_t batch, int b, int t, int j) {
    return (size_t)b * batch + (size_t)t * row + (size_t)j;
}

#endif
