// test_ops_fd: every CPU op's backward against central finite differences of its forward, the NLL's clamp and softplus threshold, and a whole-model finite-difference check.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model.h"
#include "ops.h"
#include "util.h"

// Finite differences of float32 ops. L = sum_i w_i * out_i is accumulated in double from the
// float32 outputs, so L carries a rounding error of about sqrt(n) * 6e-8 * |out| ~ 1e-6 for these
// sizes; with step h = 1e-2 on O(1) inputs that is ~5e-5 in each difference quotient, and the
// truncation error of the central difference is h^2/6 * f''' ~ 2e-5 for O(1) third derivatives.
// So the gradients are compared norm-wise, ||fd - analytic|| / ||analytic|| <= 2e-3: a wrong
// backward (a missing term, a wrong sign, a transposed index) is off by O(1) in that ratio.
#define FD_H 1e-2
#define FD_TOL 2e-3

static const GivtOps *ops;

static void fill_normal(float *p, size_t n, Rng *r, double scale) {
    for (size_t i = 0; i < n; i++) p[i] = (float)(scale * rng_normal(r));
}

static double project(const float *out, const float *w, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)w[i] * (double)out[i];
    return s;
}

// Evaluates L at the current contents of the inputs that ctx points to.
typedef double (*LossFn)(void *ctx);

// Central differences of f with respect to the n floats at p (restored afterwards); compares with
// the analytic gradient an (n) and returns ||fd - an|| / ||an||.
static double fd_ratio(LossFn f, void *ctx, float *p, size_t n, const double *an) {
    double dd = 0, aa = 0;
    for (size_t i = 0; i < n; i++) {
        float save = p[i];
        float up = (float)(save + FD_H), dn = (float)(save - FD_H);
        p[i] = up;
        double lp = f(ctx);
        p[i] = dn;
        double lm = f(ctx);
        p[i] = save;
        double fd = (lp - lm) / ((double)up - (double)dn);  // the step actually taken in float32
        dd += (fd - an[i]) * (fd - an[i]);
        aa += an[i] * an[i];
    }
    return sqrt(dd) / fmax(sqrt(aa), 1e-30);
}

// an[i] = (g[i] - base) / scale: undoes a prefilled accumulator or a gradient scale
static double *to_double(const float *g, size_t n, double base, double scale) {
    double *a = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) a[i] = ((double)g[i] - base) / scale;
    return a;
}

#define CHECK_FD(name, ratio)                                                                    \
    do {                                                                                         \
        double r_ = (ratio);                                                                     \
        printf("  %-20s fd ratio %.2e\n", name, r_);                                            \
        CHECK(r_ <= FD_TOL, "%s: ||fd - analytic|| / ||analytic|| = %.3g (tol %g)", name, r_, FD_TOL); \
    } while (0)

// ---- matmul -------------------------------------------------------------------------------
typedef struct {
    float *inp, *w, *out, *proj;
    int N, I, O;
} MatmulCtx;

static double matmul_loss(void *p) {
    MatmulCtx *c = p;
    ops->matmul_fwd(c->out, c->inp, c->w, c->N, c->I, c->O);
    return project(c->out, c->proj, (size_t)c->N * c->O);
}

TEST(fd_matmul) {
    ops = ops_cpu();
    Rng r;
    rng_seed(&r, 11);
    MatmulCtx c = {.N = 4, .I = 5, .O = 3};
    size_t ni = (size_t)c.N * c.I, nw = (size_t)c.O * c.I, no = (size_t)c.N * c.O;
    c.inp = xmalloc(ni * 4), c.w = xmalloc(nw * 4), c.out = xmalloc(no * 4), c.proj = xmalloc(no * 4);
    fill_normal(c.inp, ni, &r, 1), fill_normal(c.w, nw, &r, 1), fill_normal(c.proj, no, &r, 1);
    float *dinp = xmalloc(ni * 4), *dw = xmalloc(nw * 4), *dw2 = xmalloc(nw * 4);
    for (size_t i = 0; i < nw; i++) dw[i] = dw2[i] = 0.5f;  // dw accumulates
    for (size_t i = 0; i < ni; i++) dinp[i] = 7.0f;         // dinp is overwritten
    ops->matmul_bwd(dinp, dw, c.proj, c.inp, c.w, c.N, c.I, c.O);
    double *a_inp = to_double(dinp, ni, 0, 1), *a_w = to_double(dw, nw, 0.5, 1);
    CHECK_FD("matmul dinp", fd_ratio(matmul_loss, &c, c.inp, ni, a_inp));
    CHECK_FD("matmul dw", fd_ratio(matmul_loss, &c, c.w, nw, a_w));
    ops->matmul_bwd(NULL, dw2, c.proj, c.inp, c.w, c.N, c.I, c.O);  // dinp may be NULL
    CHECK(memcmp(dw, dw2, nw * 4) == 0, "matmul_bwd with dinp NULL gives a different dw");
    free(a_inp), free(a_w), free(dinp), free(dw), free(dw2);
    free(c.inp), free(c.w), free(c.out), free(c.proj);
}

// ---- rmsnorm ------------------------------------------------------------------------------
typedef struct {
    float *inp, *w, *out, *rstd, *proj;
    int N, C;
} NormCtx;

static double norm_loss(void *p) {
    NormCtx *c = p;
    ops->rmsnorm_fwd(c->out, c->rstd, c->inp, c->w, c->N, c->C);
    return project(c->out, c->proj, (size_t)c->N * c->C);
}

TEST(fd_rmsnorm) {
    ops = ops_cpu();
    Rng r;
    rng_seed(&r, 12);
    NormCtx c = {.N = 3, .C = 6};
    size_t n = (size_t)c.N * c.C;
    c.inp = xmalloc(n * 4), c.w = xmalloc(c.C * 4), c.out = xmalloc(n * 4), c.rstd = xmalloc(c.N * 4);
    c.proj = xmalloc(n * 4);
    fill_normal(c.inp, n, &r, 1), fill_normal(c.proj, n, &r, 1);
    for (int i = 0; i < c.C; i++) c.w[i] = (float)(1.0 + 0.2 * (2 * rng_uniform(&r) - 1));
    norm_loss(&c);  // rstd for the backward
    float *dinp = xmalloc(n * 4), *dw = xmalloc(c.C * 4);
    for (size_t i = 0; i < n; i++) dinp[i] = 0.25f;  // both accumulate
    for (int i = 0; i < c.C; i++) dw[i] = 0.5f;
    ops->rmsnorm_bwd(dinp, dw, c.proj, c.inp, c.w, c.rstd, c.N, c.C);
    double *a_inp = to_double(dinp, n, 0.25, 1), *a_w = to_double(dw, c.C, 0.5, 1);
    CHECK_FD("rmsnorm dinp", fd_ratio(norm_loss, &c, c.inp, n, a_inp));
    CHECK_FD("rmsnorm dw", fd_ratio(norm_loss, &c, c.w, c.C, a_w));
    // forward value: x * rsqrt(mean(x^2) + 1e-5) * w, checked in double on row 1
    norm_loss(&c);  // fd_ratio left the outputs of its last perturbed evaluation
    double ss = 0;
    for (int i = 0; i < c.C; i++) ss += (double)c.inp[c.C + i] * c.inp[c.C + i];
    double rs = 1.0 / sqrt(ss / c.C + 1e-5);
    for (int i = 0; i < c.C; i++) CHECK_CLOSE(c.out[c.C + i], c.inp[c.C + i] * rs * c.w[i], 1e-6);
    free(a_inp), free(a_w), free(dinp), free(dw);
    free(c.inp), free(c.w), free(c.out), free(c.rstd), free(c.proj);
}

// ---- rope ---------------------------------------------------------------------------------
typedef struct {
    float *qkv, *work, *cos, *sin, *proj;
    int B, T, C, H, n;
} RopeCtx;

static double rope_loss(void *p) {
    RopeCtx *c = p;
    size_t n = (size_t)c->B * c->T * 3 * c->C;
    memcpy(c->work, c->qkv, n * 4);
    ops->rope_fwd(c->work, c->cos, c->sin, c->B, c->T, c->C, c->H, c->n);
    return project(c->work, c->proj, n);
}

TEST(fd_rope) {
    ops = ops_cpu();
    Rng r;
    rng_seed(&r, 13);
    RopeCtx c = {.B = 2, .T = 4, .C = 12, .H = 2, .n = 4};  // hd 6, n_elem 4 < hd
    int hd = c.C / c.H, half = c.n / 2;
    size_t n = (size_t)c.B * c.T * 3 * c.C;
    c.qkv = xmalloc(n * 4), c.work = xmalloc(n * 4), c.proj = xmalloc(n * 4);
    c.cos = xmalloc((size_t)c.T * c.n * 4), c.sin = xmalloc((size_t)c.T * c.n * 4);
    fill_normal(c.qkv, n, &r, 1), fill_normal(c.proj, n, &r, 1);
    for (int t = 0; t < c.T; t++)  // GIVT.md's cache, base 100, condense ratio 1.5
        for (int i = 0; i < half; i++) {
            double ang = (t / 1.5) / pow(100.0, 2.0 * i / c.n);
            c.cos[t * c.n + i] = c.cos[t * c.n + half + i] = (float)cos(ang);
            c.sin[t * c.n + i] = c.sin[t * c.n + half + i] = (float)sin(ang);
        }
    float *d = xmalloc(n * 4);
    memcpy(d, c.proj, n * 4);
    ops->rope_bwd(d, c.cos, c.sin, c.B, c.T, c.C, c.H, c.n);
    double *a = to_double(d, n, 0, 1);
    CHECK_FD("rope dqkv", fd_ratio(rope_loss, &c, c.qkv, n, a));
    // forward values: rotate-half on dims < n of q and k heads; other dims and v unchanged
    rope_loss(&c);
    for (int b = 0; b < c.B; b++)
        for (int t = 0; t < c.T; t++)
            for (int j = 0; j < 3 * c.C; j++) {
                size_t row = ((size_t)b * c.T + t) * 3 * c.C;
                int part = j / c.C, i = (j % c.C) % hd, base = j - i;
                double x = c.qkv[row + j], want = x;
                if (part < 2 && i < c.n) {
                    double other = i < half ? -c.qkv[row + base + i + half] : c.qkv[row + base + i - half];
                    want = x * c.cos[t * c.n + i] + other * c.sin[t * c.n + i];
                }
                CHECK_CLOSE(c.work[row + j], want, 1e-6);
            }
    free(a), free(d), free(c.qkv), free(c.work), free(c.proj), free(c.cos), free(c.sin);
}

// ---- attention ----------------------------------------------------------------------------
typedef struct {
    float *qkv, *out, *att, *proj;
    int B, T, C, H;
} AttnCtx;

static double attn_loss(void *p) {
    AttnCtx *c = p;
    ops->attention_fwd(c->out, c->att, c->qkv, c->B, c->T, c->C, c->H);
    return project(c->out, c->proj, (size_t)c->B * c->T * c->C);
}

TEST(fd_attention) {
    ops = ops_cpu();
    Rng r;
    rng_seed(&r, 14);
    AttnCtx c = {.B = 2, .T = 5, .C = 8, .H = 2};
    size_t nq = (size_t)c.B * c.T * 3 * c.C, no = (size_t)c.B * c.T * c.C, na = (size_t)c.B * c.H * c.T * c.T;
    c.qkv = xmalloc(nq * 4), c.out = xmalloc(no * 4), c.att = xmalloc(na * 4), c.proj = xmalloc(no * 4);
    fill_normal(c.qkv, nq, &r, 1), fill_normal(c.proj, no, &r, 1);
    attn_loss(&c);
    // att: causal probabilities, rows sum to 1, zeros above the diagonal
    for (size_t s = 0; s < (size_t)c.B * c.H; s++)
        for (int t = 0; t < c.T; t++) {
            double sum = 0;
            for (int u = 0; u < c.T; u++) {
                float v = c.att[(s * c.T + t) * c.T + u];
                if (u > t) CHECK(v == 0.0f, "att[%zu,%d,%d] = %g above the diagonal", s, t, u, v);
                sum += v;
            }
            CHECK_CLOSE(sum, 1.0, 1e-6);
        }
    float *dqkv = xmalloc(nq * 4), *scratch = xmalloc(na * 4);
    for (size_t i = 0; i < nq; i++) dqkv[i] = 3.0f;  // overwritten, not accumulated (ops.h)
    ops->attention_bwd(dqkv, scratch, c.proj, c.qkv, c.att, c.B, c.T, c.C, c.H);
    double *a = to_double(dqkv, nq, 0, 1);
    CHECK_FD("attention dqkv", fd_ratio(attn_loss, &c, c.qkv, nq, a));
    free(a), free(dqkv), free(scratch), free(c.qkv), free(c.out), free(c.att), free(c.proj);
}

// ---- swiglu -------------------------------------------------------------------------------
typedef struct {
    float *h, *out, *proj;
    int N, F;
} SwiCtx;

static double swiglu_loss(void *p) {
    SwiCtx *c = p;
    ops->swiglu_fwd(c->out, c->h, c->N, c->F);
    return project(c->out, c->proj, (size_t)c->N * c->F);
}

TEST(fd_swiglu) {
    ops = ops_cpu();
    Rng r;
    rng_seed(&r, 15);
    SwiCtx c = {.N = 3, .F = 5};
    size_t nh = (size_t)c.N * 2 * c.F, no = (size_t)c.N * c.F;
    c.h = xmalloc(nh * 4), c.out = xmalloc(no * 4), c.proj = xmalloc(no * 4);
    fill_normal(c.h, nh, &r, 1.5), fill_normal(c.proj, no, &r, 1);
    float *dh = xmalloc(nh * 4);
    for (size_t i = 0; i < nh; i++) dh[i] = 3.0f;  // overwritten
    ops->swiglu_bwd(dh, c.proj, c.h, c.N, c.F);
    double *a = to_double(dh, nh, 0, 1);
    CHECK_FD("swiglu dh", fd_ratio(swiglu_loss, &c, c.h, nh, a));
    swiglu_loss(&c);
    double a0 = c.h[0], b0 = c.h[c.F];
    CHECK_CLOSE(c.out[0], a0 / (1 + exp(-a0)) * b0, 1e-6);  // silu(a) * b
    free(a), free(dh), free(c.h), free(c.out), free(c.proj);
}

// ---- add, shift_bos, sumsq ----------------------------------------------------------------
TEST(fd_add) {
    ops = ops_cpu();
    float a[7], b[7], out[7];
    for (int i = 0; i < 7; i++) a[i] = (float)i - 2.5f, b[i] = 0.25f * (float)i;
    ops->add(out, a, b, 7);
    for (int i = 0; i < 7; i++) CHECK(out[i] == a[i] + b[i]);
    ops->add(a, a, b, 7);  // out may alias a
    for (int i = 0; i < 7; i++) CHECK(a[i] == out[i]);
    // the gradient of add is the identity for both inputs: the model passes dout through unchanged
}

typedef struct {
    float *in, *x, *bos, *proj;
    int B, T, D;
} ShiftCtx;

static double shift_loss(void *p) {
    ShiftCtx *c = p;
    ops->shift_bos(c->in, c->x, c->bos, c->B, c->T, c->D);
    return project(c->in, c->proj, (size_t)c->B * c->T * c->D);
}

TEST(fd_shift_bos) {
    ops = ops_cpu();
    Rng r;
    rng_seed(&r, 16);
    ShiftCtx c = {.B = 2, .T = 4, .D = 3};
    size_t n = (size_t)c.B * c.T * c.D;
    c.in = xmalloc(n * 4), c.x = xmalloc(n * 4), c.bos = xmalloc(c.D * 4), c.proj = xmalloc(n * 4);
    fill_normal(c.x, n, &r, 1), fill_normal(c.bos, c.D, &r, 1), fill_normal(c.proj, n, &r, 1);
    shift_loss(&c);
    for (int b = 0; b < c.B; b++)
        for (int t = 0; t < c.T; t++)
            for (int d = 0; d < c.D; d++) {
                float want = t == 0 ? c.bos[d] : c.x[((size_t)b * c.T + t - 1) * c.D + d];
                CHECK(c.in[((size_t)b * c.T + t) * c.D + d] == want, "in[%d,%d,%d]", b, t, d);
            }
    float dbos[3] = {0.5f, 0.5f, 0.5f};  // accumulates
    ops->shift_bos_bwd(dbos, c.proj, c.B, c.T, c.D);
    double *a = to_double(dbos, c.D, 0.5, 1);
    CHECK_FD("shift_bos dbos", fd_ratio(shift_loss, &c, c.bos, c.D, a));
    free(a), free(c.in), free(c.x), free(c.bos), free(c.proj);
}

TEST(ops_sumsq) {
    ops = ops_cpu();
    Rng r;
    rng_seed(&r, 17);
    size_t n = 1001;
    float *p = xmalloc(n * 4);
    fill_normal(p, n, &r, 1);
    double want = 0;
    for (size_t i = 0; i < n; i++) want += (double)p[i] * p[i];
    CHECK_CLOSE(ops->sumsq(p, n), want, 1e-12);
    free(p);
}

// ---- gaussian nll -------------------------------------------------------------------------
typedef struct {
    float *y, *x;
    int N, D;
    double eps;
} NllCtx;

static double nll_loss(void *p) {
    NllCtx *c = p;
    return ops->gaussian_nll(NULL, c->y, c->x, c->N, c->D, c->eps, 1.0f);
}

TEST(fd_gaussian_nll) {
    ops = ops_cpu();
    Rng r;
    rng_seed(&r, 18);
    NllCtx c = {.N = 4, .D = 3, .eps = 1e-8};
    size_t ny = (size_t)c.N * 2 * c.D, nx = (size_t)c.N * c.D;
    c.y = xmalloc(ny * 4), c.x = xmalloc(nx * 4);
    fill_normal(c.y, ny, &r, 1), fill_normal(c.x, nx, &r, 1);
    float *dy = xmalloc(ny * 4);
    const float scale = 0.37f;  // dy = scale * d(sum)/dy
    double s = ops->gaussian_nll(dy, c.y, c.x, c.N, c.D, c.eps, scale);
    CHECK_CLOSE(s, nll_loss(&c), 1e-12);  // the sum does not depend on dy being asked for
    double *a = to_double(dy, ny, 0, scale);
    CHECK_FD("gaussian_nll dy", fd_ratio(nll_loss, &c, c.y, ny, a));
    free(a), free(dy), free(c.y), free(c.x);
}

// PyTorch semantics in double: softplus(pre) = pre above threshold 20; var = max(std^2, eps) with
// the clamp done under no_grad, so the gradient of the clamped variance flows to std unchanged.
static double nll_ref(double mu, double pre, double x, double eps, double *dmu, double *dpre) {
    double sp = pre > 20 ? pre : log1p(exp(pre));
    double dsp = pre > 20 ? 1.0 : 1.0 / (1.0 + exp(-pre));
    double std = sp + eps, var = fmax(std * std, eps), e = x - mu;
    *dmu = -e / var;
    *dpre = 0.5 * (1.0 / var - e * e / (var * var)) * 2.0 * std * dsp;
    return 0.5 * (log(var) + e * e / var);
}

TEST(gaussian_nll_clamp_and_threshold) {
    ops = ops_cpu();
    // Rows of (mu, pre, x) with D = 1. eps = 1e-2, so std^2 < eps when softplus(pre) < 0.09:
    // pre = -4 and -6 are clamped (var = eps); 20.5, 35 and 100 are above softplus's threshold
    // (exp(100) overflows float32: a naive log1p(exp(pre)) would give inf).
    const float rows[][3] = {{0.3f, -4.0f, 0.5f}, {-0.2f, -6.0f, 0.1f}, {0.1f, 0.7f, -1.2f},
                             {0.5f, 20.5f, 3.0f}, {-1.0f, 35.0f, 40.0f}, {2.0f, 100.0f, -50.0f},
                             {0.0f, 19.5f, 1.0f}};
    const int N = (int)(sizeof rows / sizeof rows[0]), D = 1;
    const double eps = 1e-2;
    float y[2 * 7], x[7], dy[2 * 7];
    for (int i = 0; i < N; i++) y[2 * i] = rows[i][0], y[2 * i + 1] = rows[i][1], x[i] = rows[i][2];
    double got = ops->gaussian_nll(dy, y, x, N, D, eps, 1.0f);
    double want = 0;
    for (int i = 0; i < N; i++) {
        double dmu, dpre;
        want += nll_ref(rows[i][0], rows[i][1], rows[i][2], eps, &dmu, &dpre);
        // 1e-5 relative: the op computes in double from float32 inputs but rounds std to float32
        CHECK_CLOSE(dy[2 * i], dmu, 1e-5);
        CHECK_CLOSE(dy[2 * i + 1], dpre, 1e-5);
        CHECK(isfinite(dy[2 * i]) && isfinite(dy[2 * i + 1]), "row %d", i);
    }
    CHECK(isfinite(got));
    CHECK_CLOSE(got, want, 1e-6);
    // the clamped rows' dpre is not zero: the clamp passes the gradient straight through
    CHECK(fabs(dy[1]) > 1e-3 && fabs(dy[3]) > 1e-3, "dpre of clamped rows: %g %g", dy[1], dy[3]);
}

// ---- the whole model ----------------------------------------------------------------------
// Random non-zero weights (as scripts/givt_reference.py draws them): norm weights 1 +- 0.2,
// linear weights normal(0, 1/sqrt(fan_in)), the head half that, bos normal(0, 0.5).
static void random_weights(const ParamTable *pt, float *p, Rng *r) {
    for (int i = 0; i < pt->count; i++) {
        const ParamSpec *s = &pt->specs[i];
        for (size_t j = 0; j < s->numel; j++) {
            double v;
            if (s->ndim == 1 && i != pt->bos)
                v = 1.0 + 0.2 * (2 * rng_uniform(r) - 1);
            else if (i == pt->bos)
                v = 0.5 * rng_normal(r);
            else
                v = rng_normal(r) / sqrt((double)s->shape[1]) * (i == pt->head ? 0.5 : 1.0);
            p[s->offset + j] = (float)v;
        }
    }
}

// The model's loss is a mean over B*T*D = 24 O(1) terms computed in float32 (~1e-7 relative);
// h = 1e-2 on O(0.3..1) weights leaves ~1e-5 absolute in each quotient against gradients of
// O(1e-2..1). Compared norm-wise over the sampled elements: 2e-3, as for the ops.
TEST(fd_whole_model) {
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 3, cfg.hidden_dim = 8, cfg.num_heads = 2, cfg.intermediate_dim = 10;
    cfg.num_layers = 2, cfg.block_size = 6, cfg.rope_rotary_percentage = 0.5, cfg.rope_condense_ratio = 2.0;
    cfg.rope_base = 100, cfg.eps = 1e-6;
    const int B = 2, T = 4;
    GivtModel m;
    int rc = model_create(&m, &cfg, ops_cpu());
    CHECK(rc == 0, "%s", givt_last_error());
    if (rc) return;
    model_alloc_acts(&m, B, T, 1, 0);
    model_alloc_grads(&m);
    Rng r;
    rng_seed(&r, 19);
    float *ph = xmalloc(m.table.total * 4);
    random_weights(&m.table, ph, &r);
    m.ops->upload(m.params, ph, m.table.total * 4);
    size_t nx = (size_t)B * T * cfg.input_dim;
    float *xh = xmalloc(nx * 4);
    fill_normal(xh, nx, &r, 1);
    float *xd = m.ops->alloc(nx * 4);
    m.ops->upload(xd, xh, nx * 4);

    model_forward(&m, xd, B, T, 0);
    model_zero_grads(&m);
    model_backward(&m, 1.0f);
    float *g = xmalloc(m.table.total * 4);
    m.ops->download(g, m.grads, m.table.total * 4);

    double dd = 0, aa = 0;
    int sampled = 0;
    for (int i = 0; i < m.table.count; i++) {
        const ParamSpec *s = &m.table.specs[i];
        for (int k = 0; k < 4; k++) {  // 4 random elements of every tensor
            size_t j = s->offset + (size_t)(rng_uniform(&r) * (double)s->numel);
            float save = ph[j], up = (float)(save + FD_H), dn = (float)(save - FD_H);
            m.ops->upload(m.params + j, &up, 4);
            double lp = model_forward(&m, xd, B, T, 0).loss;
            m.ops->upload(m.params + j, &dn, 4);
            double lm = model_forward(&m, xd, B, T, 0).loss;
            m.ops->upload(m.params + j, &save, 4);
            double fd = (lp - lm) / ((double)up - (double)dn);
            dd += (fd - g[j]) * (fd - g[j]);
            aa += (double)g[j] * g[j];
            sampled++;
            if (fabs(fd - g[j]) > 1e-2 * fmax(fabs(fd), 1e-1))
                printf("  note: %s[%zu]: fd %.6g analytic %.6g\n", s->name, j - s->offset, fd, g[j]);
        }
    }
    double ratio = sqrt(dd) / fmax(sqrt(aa), 1e-30);
    printf("  whole model: %d sampled weights, ||fd - analytic|| / ||analytic|| = %.3g\n", sampled, ratio);
    CHECK(ratio <= FD_TOL, "whole model ratio %.3g (tol %g)", ratio, FD_TOL);
    free(g), free(ph), free(xh);
    m.ops->free(xd);
    model_free(&m);
}
