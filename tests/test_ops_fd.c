// test_ops_fd: every CPU op's backward against central finite differences of its forward (the fused
// residual add + RMSNorm, attention with RoPE inside, ...), the NLL's clamp and softplus threshold,
// and a whole-model finite-difference check through the model API. Each test opens the CPU backend
// (backend_open("cpu", PRECISION_NO)) and closes it at the end; on that backend compute buffers (cval *)
// are float32, so host float arrays are passed to the ops cast to cval *, and a host double serves
// as a backend scalar.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "rng.h"
#include "testutil.h"
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

static Backend *be;         // the CPU backend of the running test
static const GivtOps *ops;  // be->ops

#define CV(p) TU_CV(p)

static void open_cpu(void) {
    be = tu_open_cpu();
    ops = be->ops;
}

static void close_cpu(void) {
    backend_close(be);
    be = NULL, ops = NULL;
}

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
        printf("  %-24s fd ratio %.2e\n", name, r_);                                            \
        CHECK(r_ <= FD_TOL, "%s: ||fd - analytic|| / ||analytic|| = %.3g (tol %g)", name, r_, FD_TOL); \
    } while (0)

// ---- matmul -------------------------------------------------------------------------------
typedef struct {
    float *inp, *w, *out, *proj;
    int N, I, O;
} MatmulCtx;

static double matmul_loss(void *p) {
    MatmulCtx *c = p;
    ops->matmul_fwd(be, CV(c->out), CV(c->inp), CV(c->w), c->N, c->I, c->O);
    return project(c->out, c->proj, (size_t)c->N * c->O);
}

TEST(ops_fd_matmul) {
    open_cpu();
    Rng r;
    rng_seed(&r, 11);
    MatmulCtx c = {.N = 4, .I = 5, .O = 3};
    size_t ni = (size_t)c.N * c.I, nw = (size_t)c.O * c.I, no = (size_t)c.N * c.O;
    c.inp = xmalloc(ni * 4), c.w = xmalloc(nw * 4), c.out = xmalloc(no * 4), c.proj = xmalloc(no * 4);
    fill_normal(c.inp, ni, &r, 1), fill_normal(c.w, nw, &r, 1), fill_normal(c.proj, no, &r, 1);
    float *dinp = xmalloc(ni * 4), *dw = xmalloc(nw * 4), *dw2 = xmalloc(nw * 4);
    for (size_t i = 0; i < nw; i++) dw[i] = dw2[i] = 0.5f;  // dw accumulates
    for (size_t i = 0; i < ni; i++) dinp[i] = 7.0f;         // dinp is overwritten
    ops->matmul_bwd(be, CV(dinp), dw, CV(c.proj), CV(c.inp), CV(c.w), c.N, c.I, c.O);
    double *a_inp = to_double(dinp, ni, 0, 1), *a_w = to_double(dw, nw, 0.5, 1);
    CHECK_FD("matmul dinp", fd_ratio(matmul_loss, &c, c.inp, ni, a_inp));
    CHECK_FD("matmul dw", fd_ratio(matmul_loss, &c, c.w, nw, a_w));
    ops->matmul_bwd(be, NULL, dw2, CV(c.proj), CV(c.inp), CV(c.w), c.N, c.I, c.O);  // dinp may be NULL
    CHECK(memcmp(dw, dw2, nw * 4) == 0, "matmul_bwd with dinp NULL gives a different dw");
    free(a_inp), free(a_w), free(dinp), free(dw), free(dw2);
    free(c.inp), free(c.w), free(c.out), free(c.proj);
    close_cpu();
}

// ---- residual add + rmsnorm ---------------------------------------------------------------
// Plain form (branch NULL, res_out NULL): out = rmsnorm(inp) * w. Fused form: res = inp + branch
// goes to res_out and out = rmsnorm(res) * w; L = proj . out + rproj . res_out, whose gradient with
// respect to inp and to branch is the same: rproj (dres's prefill, the gradient arriving from
// downstream on the residual stream) plus the norm's input gradient the backward adds to it.
typedef struct {
    float *inp, *branch, *w, *out, *res, *rstd, *proj, *rproj;
    int N, C, fused;
} NormCtx;

static double norm_loss(void *p) {
    NormCtx *c = p;
    size_t n = (size_t)c->N * c->C;
    if (!c->fused) {
        ops->residual_rmsnorm_fwd(be, NULL, CV(c->out), c->rstd, CV(c->inp), NULL, CV(c->w), c->N, c->C);
        return project(c->out, c->proj, n);
    }
    ops->residual_rmsnorm_fwd(be, CV(c->res), CV(c->out), c->rstd, CV(c->inp), CV(c->branch), CV(c->w), c->N,
                              c->C);
    return project(c->out, c->proj, n) + project(c->res, c->rproj, n);
}

TEST(ops_fd_residual_rmsnorm) {
    open_cpu();
    Rng r;
    rng_seed(&r, 12);
    NormCtx c = {.N = 3, .C = 6};
    size_t n = (size_t)c.N * c.C;
    c.inp = xmalloc(n * 4), c.branch = xmalloc(n * 4), c.w = xmalloc(c.C * 4), c.out = xmalloc(n * 4);
    c.res = xmalloc(n * 4), c.rstd = xmalloc(c.N * 4), c.proj = xmalloc(n * 4), c.rproj = xmalloc(n * 4);
    fill_normal(c.inp, n, &r, 1), fill_normal(c.branch, n, &r, 0.7), fill_normal(c.proj, n, &r, 1);
    fill_normal(c.rproj, n, &r, 1);
    for (int i = 0; i < c.C; i++) c.w[i] = (float)(1.0 + 0.2 * (2 * rng_uniform(&r) - 1));
    float *dinp = xmalloc(n * 4), *dw = xmalloc(c.C * 4);

    // plain form
    for (size_t i = 0; i < n; i++) c.res[i] = -9.0f;  // res_out NULL: nothing may be written there
    norm_loss(&c);                                     // rstd for the backward
    for (size_t i = 0; i < n; i++) dinp[i] = 0.25f;   // both accumulate
    for (int i = 0; i < c.C; i++) dw[i] = 0.5f;
    ops->residual_rmsnorm_bwd(be, CV(dinp), dw, CV(c.proj), CV(c.inp), CV(c.w), c.rstd, c.N, c.C);
    double *a_inp = to_double(dinp, n, 0.25, 1), *a_w = to_double(dw, c.C, 0.5, 1);
    CHECK_FD("rmsnorm dinp", fd_ratio(norm_loss, &c, c.inp, n, a_inp));
    CHECK_FD("rmsnorm dw", fd_ratio(norm_loss, &c, c.w, c.C, a_w));
    free(a_inp), free(a_w);
    // forward value: x * rsqrt(mean(x^2) + 1e-5) * w, checked in double on every row
    norm_loss(&c);  // fd_ratio left the outputs of its last perturbed evaluation
    for (int row = 0; row < c.N; row++) {
        double ss = 0;
        for (int i = 0; i < c.C; i++) ss += (double)c.inp[row * c.C + i] * c.inp[row * c.C + i];
        double rs = 1.0 / sqrt(ss / c.C + 1e-5);
        CHECK_CLOSE(c.rstd[row], rs, 1e-6);
        for (int i = 0; i < c.C; i++) CHECK_CLOSE(c.out[row * c.C + i], c.inp[row * c.C + i] * rs * c.w[i], 1e-6);
    }
    for (size_t i = 0; i < n; i++) CHECK(c.res[i] == -9.0f, "plain form wrote res_out[%zu]", i);

    // fused form: res_out = inp + branch exactly, and the norm is the plain norm of that sum
    c.fused = 1;
    norm_loss(&c);
    float *out_f = xmalloc(n * 4), *rstd_f = xmalloc(c.N * 4), *out_p = xmalloc(n * 4), *rstd_p = xmalloc(c.N * 4);
    memcpy(out_f, c.out, n * 4), memcpy(rstd_f, c.rstd, c.N * 4);
    for (size_t i = 0; i < n; i++) CHECK(c.res[i] == c.inp[i] + c.branch[i], "res_out[%zu] is not inp + branch", i);
    ops->residual_rmsnorm_fwd(be, NULL, CV(out_p), rstd_p, CV(c.res), NULL, CV(c.w), c.N, c.C);
    CHECK(memcmp(out_f, out_p, n * 4) == 0, "fused norm differs from the norm of res_out");
    CHECK(memcmp(rstd_f, rstd_p, c.N * 4) == 0, "fused rstd differs from the rstd of res_out");
    // backward of the fused form: dres starts as the gradient of res_out (rproj), gets += the norm's
    // input gradient at res = res_out, and is then the gradient w.r.t. both inp and branch
    memcpy(dinp, c.rproj, n * 4);
    for (int i = 0; i < c.C; i++) dw[i] = 0.5f;
    ops->residual_rmsnorm_bwd(be, CV(dinp), dw, CV(c.proj), CV(c.res), CV(c.w), c.rstd, c.N, c.C);
    double *a_res = to_double(dinp, n, 0, 1);
    a_w = to_double(dw, c.C, 0.5, 1);
    CHECK_FD("residual+rmsnorm dinp", fd_ratio(norm_loss, &c, c.inp, n, a_res));
    CHECK_FD("residual+rmsnorm dbranch", fd_ratio(norm_loss, &c, c.branch, n, a_res));
    CHECK_FD("residual+rmsnorm dw", fd_ratio(norm_loss, &c, c.w, c.C, a_w));
    free(a_res), free(a_w), free(out_f), free(rstd_f), free(out_p), free(rstd_p), free(dinp), free(dw);
    free(c.inp), free(c.branch), free(c.w), free(c.out), free(c.res), free(c.rstd), free(c.proj), free(c.rproj);
    close_cpu();
}

// ---- rope + attention ---------------------------------------------------------------------
// qkv (B, T, 3C) in the model's layout (q, k, v views of row stride 3C). The forward rotates q and k
// in place, so every evaluation of L runs on a fresh copy (work) of the unrotated qkv; the backward
// gets the rotated q, k the forward left and returns gradients w.r.t. the unrotated q, k and v.
typedef struct {
    float *qkv, *work, *out, *saved, *proj, *cos, *sin;
    AttnShape s;
} AttnCtx;

static size_t attn_nqkv(const AttnCtx *c) { return (size_t)c->s.B * c->s.Tq * 3 * c->s.H * c->s.hd; }

static double attn_loss(void *p) {
    AttnCtx *c = p;
    size_t C = (size_t)c->s.H * c->s.hd;
    memcpy(c->work, c->qkv, attn_nqkv(c) * 4);
    ops->attention_fwd(be, CV(c->out), c->saved, CV(c->work), CV(c->work + C), CV(c->work + 2 * C), c->cos, c->sin,
                       &c->s);
    return project(c->out, c->proj, (size_t)c->s.B * c->s.Tq * C);
}

// GIVT.md's cache: row t holds the angles (t / condense) * base^(-2i/n), i < n/2, twice
static void rope_tables(float *cs, float *sn, int T, int n, double base, double condense) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n / 2; i++) {
            double ang = (t / condense) / pow(base, 2.0 * i / n);
            cs[t * n + i] = cs[t * n + n / 2 + i] = (float)cos(ang);
            sn[t * n + i] = sn[t * n + n / 2 + i] = (float)sin(ang);
        }
}

TEST(ops_fd_rope_attention) {
    open_cpu();
    // B, T, H, hd, n_rot: a partial rotation (n_rot 4 < hd 6), and a full one
    const int shapes[2][5] = {{2, 5, 2, 6, 4}, {1, 4, 2, 4, 4}};
    for (int tr = 0; tr < 2; tr++) {
        Rng r;
        rng_seed(&r, 13 + 100 * tr);
        int B = shapes[tr][0], T = shapes[tr][1], H = shapes[tr][2], hd = shapes[tr][3], nr = shapes[tr][4];
        int C = H * hd, half = nr / 2;
        AttnCtx c = {.s = {.B = B, .H = H, .hd = hd, .Tq = T, .Tk = T, .pos0 = 0, .n_rot = nr,
                           .q_row = 3 * (size_t)C, .q_batch = (size_t)T * 3 * C, .kv_row = 3 * (size_t)C,
                           .kv_batch = (size_t)T * 3 * C}};
        size_t nq = attn_nqkv(&c), no = (size_t)B * T * C;
        size_t nsaved = ops->attention_saved_bytes(be, &c.s), nscratch = ops->attention_scratch_bytes(be, &c.s);
        c.qkv = xmalloc(nq * 4), c.work = xmalloc(nq * 4), c.out = xmalloc(no * 4), c.proj = xmalloc(no * 4);
        c.saved = xmalloc(nsaved), c.cos = xmalloc((size_t)T * nr * 4), c.sin = xmalloc((size_t)T * nr * 4);
        fill_normal(c.qkv, nq, &r, 1), fill_normal(c.proj, no, &r, 1);
        rope_tables(c.cos, c.sin, T, nr, 100.0, 1.5);  // small base: O(1) angles
        attn_loss(&c);

        // the forward's rotation of q and k: rotate-half on dims < n_rot of each head; the other
        // dims and v unchanged
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int j = 0; j < 3 * C; j++) {
                    size_t row = ((size_t)b * T + t) * 3 * C;
                    int part = j / C, i = (j % C) % hd, base = j - i;
                    double x = c.qkv[row + j], want = x;
                    if (part < 2 && i < nr) {
                        double other = i < half ? -c.qkv[row + base + i + half] : c.qkv[row + base + i - half];
                        want = x * c.cos[t * nr + i] + other * c.sin[t * nr + i];
                    }
                    if (part == 2 || i >= nr)
                        CHECK(c.work[row + j] == c.qkv[row + j], "element (%d,%d,%d) changed", b, t, j);
                    else
                        CHECK_CLOSE(c.work[row + j], want, 1e-6);
                }
        // this backend saves each query row's log-sum-exp L (B, H, T) of the causal scores
        // q_t . k_u / sqrt(hd), u <= t, of the rotated q and k (ops_cpu.c's layout; another backend
        // may save something else)
        CHECK(nsaved == (size_t)B * H * T * sizeof(float), "saved bytes %zu", nsaved);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++) {
                    const float *qt = c.work + ((size_t)b * T + t) * 3 * C + (size_t)h * hd;
                    double sum = 0;
                    for (int u = 0; u <= t; u++) {
                        const float *ku = c.work + ((size_t)b * T + u) * 3 * C + C + (size_t)h * hd;
                        double dot = 0;
                        for (int i = 0; i < hd; i++) dot += (double)qt[i] * ku[i];
                        sum += exp(dot / sqrt((double)hd));
                    }
                    CHECK_CLOSE(c.saved[((size_t)b * H + h) * T + t], log(sum), 1e-5);
                }

        float *dqkv = xmalloc(nq * 4), *scratch = xmalloc(nscratch);
        for (size_t i = 0; i < nq; i++) dqkv[i] = 3.0f;  // overwritten, not accumulated (ops.h)
        ops->attention_bwd(be, CV(dqkv), CV(dqkv + C), CV(dqkv + 2 * C), scratch, CV(c.proj), CV(c.out),
                           CV(c.work), CV(c.work + C), CV(c.work + 2 * C), c.saved, c.cos, c.sin, &c.s);
        double *a = to_double(dqkv, nq, 0, 1);
        CHECK_FD(tr == 0 ? "rope+attention dqkv" : "rope+attention dqkv full", fd_ratio(attn_loss, &c, c.qkv, nq, a));
        free(a), free(dqkv), free(scratch);
        free(c.qkv), free(c.work), free(c.out), free(c.saved), free(c.proj), free(c.cos), free(c.sin);
    }
    close_cpu();
}

// ---- swiglu -------------------------------------------------------------------------------
typedef struct {
    float *h, *out, *proj;
    int N, F;
} SwiCtx;

static double swiglu_loss(void *p) {
    SwiCtx *c = p;
    ops->swiglu_fwd(be, CV(c->out), CV(c->h), c->N, c->F);
    return project(c->out, c->proj, (size_t)c->N * c->F);
}

TEST(ops_fd_swiglu) {
    open_cpu();
    Rng r;
    rng_seed(&r, 15);
    SwiCtx c = {.N = 3, .F = 5};
    size_t nh = (size_t)c.N * 2 * c.F, no = (size_t)c.N * c.F;
    c.h = xmalloc(nh * 4), c.out = xmalloc(no * 4), c.proj = xmalloc(no * 4);
    fill_normal(c.h, nh, &r, 1.5), fill_normal(c.proj, no, &r, 1);
    float *dh = xmalloc(nh * 4);
    for (size_t i = 0; i < nh; i++) dh[i] = 3.0f;  // overwritten
    ops->swiglu_bwd(be, CV(dh), CV(c.proj), CV(c.h), c.N, c.F);
    double *a = to_double(dh, nh, 0, 1);
    CHECK_FD("swiglu dh", fd_ratio(swiglu_loss, &c, c.h, nh, a));
    swiglu_loss(&c);
    double a0 = c.h[0], b0 = c.h[c.F];
    CHECK_CLOSE(c.out[0], a0 / (1 + exp(-a0)) * b0, 1e-6);  // silu(a) * b
    free(a), free(dh), free(c.h), free(c.out), free(c.proj);
    close_cpu();
}

// ---- shift_bos, sumsq ---------------------------------------------------------------------
// (The old separate add op is the fused residual add of ops_fd_residual_rmsnorm.)
typedef struct {
    float *in, *x, *bos, *proj;
    int B, T, D;
} ShiftCtx;

static double shift_loss(void *p) {
    ShiftCtx *c = p;
    ops->shift_bos(be, CV(c->in), c->x, CV(c->bos), c->B, c->T, c->D);
    return project(c->in, c->proj, (size_t)c->B * c->T * c->D);
}

TEST(ops_fd_shift_bos) {
    open_cpu();
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
    ops->shift_bos_bwd(be, dbos, CV(c.proj), c.B, c.T, c.D);
    double *a = to_double(dbos, c.D, 0.5, 1);
    CHECK_FD("shift_bos dbos", fd_ratio(shift_loss, &c, c.bos, c.D, a));
    free(a), free(c.in), free(c.x), free(c.bos), free(c.proj);
    close_cpu();
}

TEST(ops_sumsq) {
    open_cpu();
    Rng r;
    rng_seed(&r, 17);
    size_t n = 1001;
    float *p = xmalloc(n * 4);
    fill_normal(p, n, &r, 1);
    double want = 0;
    for (size_t i = 0; i < n; i++) want += (double)p[i] * p[i];
    double acc = 0.75;  // a backend scalar (host memory on the CPU backend); the op adds to it
    ops->sumsq(be, &acc, p, n);
    CHECK_CLOSE(acc - 0.75, want, 1e-12);
    double acc0 = 2.5;
    ops->sumsq(be, &acc0, p, 0);  // nothing to add
    CHECK(acc0 == 2.5, "sumsq of 0 elements changed the scalar to %.17g", acc0);
    free(p);
    close_cpu();
}

// ---- gaussian nll -------------------------------------------------------------------------
typedef struct {
    float *y, *x;
    int N, D;
    double eps;
} NllCtx;

static double nll_loss(void *p) {
    NllCtx *c = p;
    double acc = 0;
    ops->gaussian_nll(be, NULL, &acc, CV(c->y), c->x, c->N, c->D, c->eps, 1.0f);
    return acc;
}

TEST(ops_fd_gaussian_nll) {
    open_cpu();
    Rng r;
    rng_seed(&r, 18);
    NllCtx c = {.N = 4, .D = 3, .eps = 1e-8};
    size_t ny = (size_t)c.N * 2 * c.D, nx = (size_t)c.N * c.D;
    c.y = xmalloc(ny * 4), c.x = xmalloc(nx * 4);
    fill_normal(c.y, ny, &r, 1), fill_normal(c.x, nx, &r, 1);
    float *dy = xmalloc(ny * 4);
    const float scale = 0.37f;  // dy = scale * d(sum)/dy
    double s = 1.5;             // the loss scalar accumulates
    ops->gaussian_nll(be, CV(dy), &s, CV(c.y), c.x, c.N, c.D, c.eps, scale);
    CHECK_CLOSE(s - 1.5, nll_loss(&c), 1e-12);  // the sum does not depend on dy being asked for
    double *a = to_double(dy, ny, 0, scale);
    CHECK_FD("gaussian_nll dy", fd_ratio(nll_loss, &c, c.y, ny, a));
    free(a), free(dy), free(c.y), free(c.x);
    close_cpu();
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

TEST(ops_gaussian_nll_clamp_and_threshold) {
    open_cpu();
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
    double got = 0;
    ops->gaussian_nll(be, CV(dy), &got, CV(y), x, N, D, eps, 1.0f);
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
    close_cpu();
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
// Everything goes through the model API and the backend's memory ops; a perturbed weight is
// applied by uploading the host copy with model_weights_upload (master and compute copy).
TEST(ops_fd_whole_model) {
    open_cpu();
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 3, cfg.hidden_dim = 8, cfg.num_heads = 2, cfg.intermediate_dim = 10;
    cfg.num_layers = 2, cfg.block_size = 6, cfg.rope_rotary_percentage = 0.5, cfg.rope_condense_ratio = 2.0;
    cfg.rope_base = 100, cfg.eps = 1e-6;
    const int B = 2, T = 4;
    GivtModel m;
    int rc = model_create(&m, &cfg, be);
    CHECK(rc == 0, "%s", givt_last_error());
    if (rc) {
        close_cpu();
        return;
    }
    model_alloc_acts(&m, B, T, 1, 0);
    model_alloc_grads(&m);
    Rng r;
    rng_seed(&r, 19);
    float *ph = xmalloc(m.table.total * 4);
    random_weights(&m.table, ph, &r);
    model_weights_upload(&m, &m.w, ph);
    size_t nx = (size_t)B * T * cfg.input_dim;
    float *xh = xmalloc(nx * 4);
    fill_normal(xh, nx, &r, 1);
    float *xd = ops->alloc(be, nx * 4);
    ops->upload(be, xd, xh, nx * 4);

    double *loss_sum = m.scalars + SCALAR_LOSS_SUM, lsum = 0;
    model_forward(&m, &m.w, xd, B, T);
    ops->zero(be, loss_sum, sizeof(double));
    model_loss(&m, loss_sum, 1.0f);  // also dy, the gradient of the mean loss, for the backward
    model_zero_grads(&m);
    model_backward(&m, &m.w);
    ops->download(be, &lsum, loss_sum, sizeof(double));
    float *g = xmalloc(m.table.total * 4);
    ops->download(be, g, m.grads, m.table.total * 4);
    ModelLoss base = model_eval_loss(&m, &m.w, xd, B, T, 0);
    CHECK(base.count == (long)nx, "count %ld", base.count);
    CHECK_CLOSE(base.loss_sum, lsum, 1e-12);  // model_loss and model_eval_loss sum the same terms
    CHECK_CLOSE(base.loss, lsum / (double)nx, 1e-12);

    double dd = 0, aa = 0;
    int sampled = 0;
    for (int i = 0; i < m.table.count; i++) {
        const ParamSpec *s = &m.table.specs[i];
        for (int k = 0; k < 4; k++) {  // 4 random elements of every tensor
            size_t j = s->offset + (size_t)(rng_uniform(&r) * (double)s->numel);
            float save = ph[j], up = (float)(save + FD_H), dn = (float)(save - FD_H);
            ph[j] = up;
            model_weights_upload(&m, &m.w, ph);
            double lp = model_eval_loss(&m, &m.w, xd, B, T, 0).loss;
            ph[j] = dn;
            model_weights_upload(&m, &m.w, ph);
            double lm = model_eval_loss(&m, &m.w, xd, B, T, 0).loss;
            ph[j] = save;
            model_weights_upload(&m, &m.w, ph);
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
    // the weights were restored: the loss is the one the gradients were taken at
    CHECK(model_eval_loss(&m, &m.w, xd, B, T, 0).loss_sum == base.loss_sum, "weights not restored");
    free(g), free(ph), free(xh);
    ops->free(be, xd);
    model_free(&m);
    close_cpu();
}
