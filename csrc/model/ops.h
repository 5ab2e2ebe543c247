// ops: the backend op table. The model (model.c) is written once against these signatures; the CPU
// backend (ops_cpu.c, float32 reference) and the CUDA backend (kernels/) implement them. All
// pointers are backend memory; shapes are in the comments, row-major, N = B*T rows.
#ifndef GIVT_OPS_H
#define GIVT_OPS_H

#include <stddef.h>

typedef struct GivtOps {
    const char *name;
    // ---- memory ----
    void *(*alloc)(size_t bytes);  // zero-filled
    void (*free)(void *p);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);
    void (*zero)(void *p, size_t bytes);

    // out (N, M) = inp (N, K) @ w^T, w (M, K)
    void (*matmul_fwd)(float *out, const float *inp, const float *w, int N, int K, int M);
    // dinp (N, K) = dout (N, M) @ w (dinp may be NULL); dw (M, K) += dout^T @ inp
    void (*matmul_bwd)(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                       int N, int K, int M);

    // out (N, C) = inp * rsqrt(mean(inp^2) + 1e-5) * w; rstd (N) saved for backward
    void (*rmsnorm_fwd)(float *out, float *rstd, const float *inp, const float *w, int N, int C);
    // dinp (N, C) += d/dinp; dw (C) += d/dw
    void (*rmsnorm_bwd)(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                        const float *rstd, int N, int C);

    // In place on the q and k parts of qkv (B, T, 3C): rotate-half RoPE on the first n_elem dims of
    // each head. cos, sin (T, n_elem). Backward applies the transpose to dqkv in place.
    void (*rope_fwd)(float *qkv, const float *cos, const float *sin, int B, int T, int C, int H,
                     int n_elem);
    void (*rope_bwd)(float *dqkv, const float *cos, const float *sin, int B, int T, int C, int H,
                     int n_elem);

    // Causal softmax attention. qkv (B, T, 3C) -> out (B, T, C); att (B, H, T, T) probabilities,
    // saved for backward (entries above the diagonal are 0).
    void (*attention_fwd)(float *out, float *att, const float *qkv, int B, int T, int C, int H);
    // dqkv (B, T, 3C) = d/dqkv; scratch (B, H, T, T)
    void (*attention_bwd)(float *dqkv, float *scratch, const float *dout, const float *qkv,
                          const float *att, int B, int T, int C, int H);

    // h (N, 2F) holds [a | b] per row -> out (N, F) = silu(a) * b
    void (*swiglu_fwd)(float *out, const float *h, int N, int F);
    // dh (N, 2F) = d/dh
    void (*swiglu_bwd)(float *dh, const float *dout, const float *h, int N, int F);

    // out (N, C) = a + b (out may alias a)
    void (*add)(float *out, const float *a, const float *b, size_t n);

    // Input shift: in (B, T, D) = [bos, x_0 .. x_{T-2}] per sequence; x (B, T, D), bos (D).
    void (*shift_bos)(float *in, const float *x, const float *bos, int B, int T, int D);
    // dbos (D) += sum over b of din (B, T, D) at t = 0
    void (*shift_bos_bwd)(float *dbos, const float *din, int B, int T, int D);

    // Gaussian NLL head. y (N, 2D) = [mu | pre]; std = softplus(pre) + eps; var = max(std^2, eps).
    // Returns the sum over N*D elements of 0.5*(log var + (x - mu)^2 / var) (double accumulation).
    // If dy is not NULL, writes dy (N, 2D) = scale * d(sum)/dy (the clamp passes gradients through).
    double (*gaussian_nll)(float *dy, const float *y, const float *x, int N, int D, double eps,
                           float scale);

    // Sum of squares of n floats (double accumulation, fixed order), for gradient norms.
    double (*sumsq)(const float *p, size_t n);

    // AdamW (PyTorch's formula) on n floats; g is multiplied by grad_scale first (clipping).
    // t is the 1-based update count for the bias corrections.
    void (*adamw)(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, float grad_scale, int t);
    // ema = decay * ema + (1 - decay) * p, on n floats
    void (*ema_update)(float *ema, const float *p, size_t n, float decay);
} GivtOps;

const GivtOps *ops_cpu(void);

#endif
