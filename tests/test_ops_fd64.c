// test_ops_fd64: every op's float32 CPU backward against central finite differences, in double, of
// an independent double-precision forward of the op written out here from GIVT.md and ops.h (plain
// loops; nothing from ops_cpu.c but the op under test). test_ops_fd.c differences the float32 ops
// themselves, which float32 rounding limits to ~1e-3; here the differencing is ~1e-9 accurate, so
// the comparison is limited only by the float32 rounding of the analytic gradient.
//
// For each op: inputs are random O(1) values drawn in float32 and widened to double (so both sides
// see exactly the same numbers), L = sum_i w_i * out_i with random float32 weights w, and
//   - the double forward must agree with the float32 forward of the CPU backend (norm-wise relative
//     1e-5): the double forward is then known to be the function the backward differentiates;
//   - the float32 backward (dout = w) must agree with dL/dinput by central differences of the double
//     forward: ||analytic - fd|| / ||fd|| <= 1e-5.
// Error budget: the central difference with step h = 1e-6 in double has truncation error
// h^2/6 * |f'''| ~ 1e-13 and rounding error ~ 1e-16 * |L| / h ~ 1e-10 * |L| (|L| is O(10) here),
// so fd is good to ~1e-9. The analytic gradient is computed in float32 (unit roundoff 6e-8) through
// a few dozen operations at most on these tiny shapes, and from float32 intermediates the forward
// saved (rstd, the attention state); its relative error is ~1e-7..1e-6. The 1e-5 bound is therefore
// set by float32 rounding of the analytic gradient, not by the differencing; a wrong backward (a
// missing term, a flipped sign, a transposed index, a wrong threshold) is off by O(1e-2..1).
//
// Attention (RoPE inside) is also checked on the shapes training never makes: a KV-cache decode
// (pos0 > 0, Tq = 1 or 3 queries against Tk = pos0 + Tq keys whose first pos0 rows were rotated
// already) and q, k, v in separate buffers with padded row and batch strides.
//
// Every test opens the CPU backend (backend_open("cpu", "no")) and closes it at the end; its compute
// buffers are float32, so host float arrays are passed cast to cval *, and a host double serves as
// a backend scalar.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "rng.h"
#include "testutil.h"
#include "ops.h"
#include "util.h"

#define FD64_H 1e-6     // central-difference step, in double
#define FD64_TOL 1e-5   // ||analytic - fd|| / ||fd||, and the forward's relative agreement
#define NTRIALS 3       // shapes / seeds per op; the worst ratio is reported

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

// n float32 values from N(0, scale^2), and their exact widening to double
static void draw(float *f, double *d, size_t n, Rng *r, double scale) {
    for (size_t i = 0; i < n; i++) {
        f[i] = (float)(scale * rng_normal(r));
        d[i] = f[i];
    }
}

static double *widen(const float *f, size_t n) {
    double *d = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = f[i];
    return d;
}

// sum_i w_i * out_i, with w float32 (the same dout the float32 backward gets)
static double proj64(const double *out, const float *w, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)w[i] * out[i];
    return s;
}

// ||a - b|| / ||b||
static double rel_diff(const double *a, const double *b, size_t n) {
    double dd = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        dd += (a[i] - b[i]) * (a[i] - b[i]);
        bb += b[i] * b[i];
    }
    return sqrt(dd) / fmax(sqrt(bb), 1e-300);
}

// ||f32 - f64|| / ||f64||: the float32 forward of the CPU backend against the double forward
static double fwd_diff(const float *f32, const double *f64, size_t n) {
    double *w = widen(f32, n);
    double r = rel_diff(w, f64, n);
    free(w);
    return r;
}

// Evaluates L with the double forward at the current contents of the inputs that ctx points to.
typedef double (*Loss64)(void *ctx);

// g[i] = dL/dp[i] by central differences in double; p is restored. up - dn is exact (Sterbenz).
static void fd64(Loss64 f, void *ctx, double *p, size_t n, double *g) {
    for (size_t i = 0; i < n; i++) {
        double save = p[i], up = save + FD64_H, dn = save - FD64_H;
        p[i] = up;
        double lp = f(ctx);
        p[i] = dn;
        double lm = f(ctx);
        p[i] = save;
        g[i] = (lp - lm) / (up - dn);
    }
}

// The ratio of the float32 analytic gradient (an32, n) to fd of L in the double inputs p (n).
static double grad_ratio(Loss64 f, void *ctx, double *p, size_t n, const float *an32) {
    double *fd = xmalloc(n * sizeof(double)), *an = widen(an32, n);
    fd64(f, ctx, p, n, fd);
    double r = rel_diff(an, fd, n);
    free(fd), free(an);
    return r;
}

// Checks a ratio, keeps the worst one per quantity for the report line.
#define CHECK_RATIO(what, ratio, worst)                                                            \
    do {                                                                                           \
        double r_ = (ratio);                                                                       \
        CHECK(r_ <= FD64_TOL, "%s: ratio %.3g (tol %g)", what, r_, FD64_TOL);                      \
        if (!(r_ <= (worst))) (worst) = r_;                                                        \
    } while (0)

// ---- matmul: out (N, M) = inp (N, K) @ w^T, w (M, K) ---------------------------------------
typedef struct {
    double *inp, *w, *out;
    const float *proj;
    int N, K, M;
} Mm64;

static void matmul64(Mm64 *c) {
    for (int n = 0; n < c->N; n++)
        for (int m = 0; m < c->M; m++) {
            double s = 0;
            for (int k = 0; k < c->K; k++) s += c->inp[n * c->K + k] * c->w[m * c->K + k];
            c->out[n * c->M + m] = s;
        }
}

static double matmul64_loss(void *p) {
    Mm64 *c = p;
    matmul64(c);
    return proj64(c->out, c->proj, (size_t)c->N * c->M);
}

TEST(ops_fd64_matmul) {
    open_cpu();
    const int shapes[NTRIALS][3] = {{4, 5, 3}, {3, 8, 6}, {5, 7, 5}};  // N, K, M
    double w_fwd = 0, w_inp = 0, w_w = 0;
    for (int tr = 0; tr < NTRIALS; tr++) {
        Rng r;
        rng_seed(&r, 101 + tr);
        int N = shapes[tr][0], K = shapes[tr][1], M = shapes[tr][2];
        size_t ni = (size_t)N * K, nw = (size_t)M * K, no = (size_t)N * M;
        float *inp = xmalloc(ni * 4), *w = xmalloc(nw * 4), *proj = xmalloc(no * 4), *out = xmalloc(no * 4);
        float *dinp = xmalloc(ni * 4), *dw = xmalloc(nw * 4);
        Mm64 c = {xmalloc(ni * 8), xmalloc(nw * 8), xmalloc(no * 8), proj, N, K, M};
        draw(inp, c.inp, ni, &r, 1), draw(w, c.w, nw, &r, 1);
        for (size_t i = 0; i < no; i++) proj[i] = (float)rng_normal(&r);

        ops->matmul_fwd(be, CV(out), CV(inp), CV(w), N, K, M);
        matmul64(&c);
        CHECK_RATIO("matmul forward", fwd_diff(out, c.out, no), w_fwd);

        memset(dw, 0, nw * 4);  // dw accumulates
        ops->matmul_bwd(be, CV(dinp), dw, CV(proj), CV(inp), CV(w), N, K, M);
        CHECK_RATIO("matmul dinp", grad_ratio(matmul64_loss, &c, c.inp, ni, dinp), w_inp);
        CHECK_RATIO("matmul dw", grad_ratio(matmul64_loss, &c, c.w, nw, dw), w_w);
        free(inp), free(w), free(proj), free(out), free(dinp), free(dw), free(c.inp), free(c.w), free(c.out);
    }
    printf("  fd64 matmul      worst ratio %.2e (dinp %.2e, dw %.2e; forward %.2e)\n", fmax(w_inp, w_w), w_inp,
           w_w, w_fwd);
    close_cpu();
}

// ---- residual add + rmsnorm: res = inp (+ branch); out (N, C) = res * rsqrt(mean(res^2) + 1e-5) * w
// Plain form (branch NULL): L = proj . out. Fused form: L = proj . out + rproj . res, res being
// res_out, which flows on down the residual stream (rproj is the gradient arriving there).
typedef struct {
    double *inp, *branch, *w, *out, *rstd;  // branch NULL: the plain form
    const float *proj, *rproj;
    int N, C;
} Rms64;

static void rmsnorm64(Rms64 *c) {
    double *x = xmalloc((size_t)c->C * sizeof(double));
    for (int n = 0; n < c->N; n++) {
        for (int i = 0; i < c->C; i++)
            x[i] = c->inp[(size_t)n * c->C + i] + (c->branch ? c->branch[(size_t)n * c->C + i] : 0.0);
        double ss = 0;
        for (int i = 0; i < c->C; i++) ss += x[i] * x[i];
        double rs = 1.0 / sqrt(ss / c->C + 1e-5);
        c->rstd[n] = rs;
        for (int i = 0; i < c->C; i++) c->out[(size_t)n * c->C + i] = x[i] * rs * c->w[i];
    }
    free(x);
}

static double rmsnorm64_loss(void *p) {
    Rms64 *c = p;
    size_t n = (size_t)c->N * c->C;
    rmsnorm64(c);
    double l = proj64(c->out, c->proj, n);
    if (c->branch)
        for (size_t i = 0; i < n; i++) l += (double)c->rproj[i] * (c->inp[i] + c->branch[i]);
    return l;
}

TEST(ops_fd64_residual_rmsnorm) {
    open_cpu();
    const int shapes[NTRIALS][2] = {{3, 6}, {4, 5}, {2, 8}};  // N, C
    double w_fwd = 0, w_inp = 0, w_w = 0, wf_fwd = 0, wf_inp = 0, wf_br = 0, wf_w = 0;
    for (int tr = 0; tr < NTRIALS; tr++) {
        Rng r;
        rng_seed(&r, 201 + tr);
        int N = shapes[tr][0], C = shapes[tr][1];
        size_t n = (size_t)N * C;
        float *inp = xmalloc(n * 4), *br = xmalloc(n * 4), *w = xmalloc(C * 4), *proj = xmalloc(n * 4);
        float *rproj = xmalloc(n * 4), *out = xmalloc(n * 4), *res = xmalloc(n * 4), *rstd = xmalloc(N * 4);
        float *dinp = xmalloc(n * 4), *dw = xmalloc(C * 4);
        Rms64 c = {xmalloc(n * 8), NULL, xmalloc(C * 8), xmalloc(n * 8), xmalloc(N * 8), proj, rproj, N, C};
        double *cbr = xmalloc(n * 8);
        draw(inp, c.inp, n, &r, 1), draw(br, cbr, n, &r, 0.7);
        for (int i = 0; i < C; i++) w[i] = (float)(1.0 + 0.3 * rng_normal(&r)), c.w[i] = w[i];
        for (size_t i = 0; i < n; i++) proj[i] = (float)rng_normal(&r), rproj[i] = (float)rng_normal(&r);

        // plain: the forward (out and rstd), then the backward (dinp and dw accumulate)
        ops->residual_rmsnorm_fwd(be, NULL, CV(out), rstd, CV(inp), NULL, CV(w), N, C);
        rmsnorm64(&c);
        CHECK_RATIO("rmsnorm forward", fwd_diff(out, c.out, n), w_fwd);
        CHECK_RATIO("rmsnorm rstd", fwd_diff(rstd, c.rstd, N), w_fwd);
        memset(dinp, 0, n * 4), memset(dw, 0, C * 4);
        ops->residual_rmsnorm_bwd(be, CV(dinp), dw, CV(proj), CV(inp), CV(w), rstd, N, C);
        CHECK_RATIO("rmsnorm dinp", grad_ratio(rmsnorm64_loss, &c, c.inp, n, dinp), w_inp);
        CHECK_RATIO("rmsnorm dw", grad_ratio(rmsnorm64_loss, &c, c.w, C, dw), w_w);

        // fused: res_out = inp + branch (the float32 sum, exactly), the norm of it; the backward at
        // res = res_out adds the norm's input gradient to dres = rproj, which is then dL/dinp and
        // dL/dbranch
        c.branch = cbr;
        ops->residual_rmsnorm_fwd(be, CV(res), CV(out), rstd, CV(inp), CV(br), CV(w), N, C);
        rmsnorm64(&c);
        for (size_t i = 0; i < n; i++) CHECK(res[i] == inp[i] + br[i], "res_out[%zu] is not inp + branch", i);
        CHECK_RATIO("residual+rmsnorm forward", fwd_diff(out, c.out, n), wf_fwd);
        CHECK_RATIO("residual+rmsnorm rstd", fwd_diff(rstd, c.rstd, N), wf_fwd);
        memcpy(dinp, rproj, n * 4), memset(dw, 0, C * 4);
        ops->residual_rmsnorm_bwd(be, CV(dinp), dw, CV(proj), CV(res), CV(w), rstd, N, C);
        CHECK_RATIO("residual+rmsnorm dinp", grad_ratio(rmsnorm64_loss, &c, c.inp, n, dinp), wf_inp);
        CHECK_RATIO("residual+rmsnorm dbranch", grad_ratio(rmsnorm64_loss, &c, c.branch, n, dinp), wf_br);
        CHECK_RATIO("residual+rmsnorm dw", grad_ratio(rmsnorm64_loss, &c, c.w, C, dw), wf_w);
        free(inp), free(br), free(w), free(proj), free(rproj), free(out), free(res), free(rstd), free(dinp), free(dw);
        free(c.inp), free(cbr), free(c.w), free(c.out), free(c.rstd);
    }
    printf("  fd64 rmsnorm     worst ratio %.2e (dinp %.2e, dw %.2e; forward %.2e)\n", fmax(w_inp, w_w), w_inp,
           w_w, w_fwd);
    printf("  fd64 residual+rmsnorm worst ratio %.2e (dinp %.2e, dbranch %.2e, dw %.2e; forward %.2e)\n",
           fmax(fmax(wf_inp, wf_br), wf_w), wf_inp, wf_br, wf_w, wf_fwd);
    close_cpu();
}

// ---- rope + attention ------------------------------------------------------------------------
// Queries at positions pos0 .. pos0 + Tq - 1, keys and values at 0 .. Tk - 1 (Tk = pos0 + Tq);
// query t sees keys 0 .. pos0 + t. RoPE (rotate-half on the first n dims of every head):
// rope(x) = x * cos + cat(-x[n/2:n], x[0:n/2]) * sin at the token's position, on q and on the keys
// at positions >= pos0 (the first pos0 keys, a KV cache, were rotated when they were computed).
// The cos/sin tables are inputs of the op (not differentiated): they are built from GIVT.md's cache
// formula in double, rounded to float32 for the op, and the double forward uses those same values.
typedef struct {
    int B, H, hd, Tq, Tk, pos0, n;
    double *q, *k, *v;    // dense (B, Tq, C), (B, Tk, C), (B, Tk, C); k rows < pos0 already rotated
    double *qr, *kr;      // the rotated q and k (B, Tq, C), (B, Tk, C), written by attention64
    double *out;          // (B, Tq, C)
    const double *cos, *sin;
    const float *proj;    // (B, Tq, C)
} Att64;

// y (one token's H heads) = rope(x) at the table row cs, sn
static void rope64_row(double *y, const double *x, int H, int hd, int n, const double *cs, const double *sn) {
    int half = n / 2;
    for (int h = 0; h < H; h++) {
        const double *xh = x + (size_t)h * hd;
        double *yh = y + (size_t)h * hd;
        for (int i = 0; i < hd; i++) {
            if (i >= n) {
                yh[i] = xh[i];
                continue;
            }
            double rot = i < half ? -xh[i + half] : xh[i - half];
            yh[i] = xh[i] * cs[i] + rot * sn[i];
        }
    }
}

#define ATT64_MAX_TK 256

static void attention64(Att64 *c) {
    int B = c->B, H = c->H, hd = c->hd, Tq = c->Tq, Tk = c->Tk, C = H * hd;
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < Tq; t++) {
            size_t o = ((size_t)b * Tq + t) * C;
            rope64_row(c->qr + o, c->q + o, H, hd, c->n, c->cos + (size_t)(c->pos0 + t) * c->n,
                       c->sin + (size_t)(c->pos0 + t) * c->n);
        }
        for (int u = 0; u < Tk; u++) {
            size_t o = ((size_t)b * Tk + u) * C;
            if (u < c->pos0)
                memcpy(c->kr + o, c->k + o, (size_t)C * sizeof(double));
            else
                rope64_row(c->kr + o, c->k + o, H, hd, c->n, c->cos + (size_t)u * c->n, c->sin + (size_t)u * c->n);
        }
    }
    double scale = 1.0 / sqrt((double)hd), s[ATT64_MAX_TK];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < Tq; t++) {
                const double *q = c->qr + ((size_t)b * Tq + t) * C + (size_t)h * hd;
                int last = c->pos0 + t;
                double mx = -INFINITY, sum = 0;
                for (int u = 0; u <= last; u++) {
                    const double *k = c->kr + ((size_t)b * Tk + u) * C + (size_t)h * hd;
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += q[i] * k[i];
                    s[u] = scale * dot;
                    mx = fmax(mx, s[u]);
                }
                for (int u = 0; u <= last; u++) sum += (s[u] = exp(s[u] - mx));
                double *y = c->out + ((size_t)b * Tq + t) * C + (size_t)h * hd;
                for (int i = 0; i < hd; i++) {
                    double acc = 0;
                    for (int u = 0; u <= last; u++) acc += s[u] / sum * c->v[((size_t)b * Tk + u) * C + (size_t)h * hd + i];
                    y[i] = acc;
                }
            }
}

static double attention64_loss(void *p) {
    Att64 *c = p;
    attention64(c);
    return proj64(c->out, c->proj, (size_t)c->B * c->Tq * c->H * c->hd);
}

// One attention case and the layout of q, k, v. shared: the model's layout, q, k, v the three
// thirds of one (B, T, 3C) buffer (pos0 = 0). Otherwise three buffers: q of row stride C + qr_pad and
// batch stride Tq * q_row + qb_pad, k and v of row stride C + kr_pad and batch stride
// (Tk + kcap_pad) * kv_row + kb_pad (a KV cache with room for more tokens). Padding holds NaN: an op
// that reads it poisons its output, and one that writes it is caught by the bitwise check.
typedef struct {
    int B, H, hd, Tq, pos0, n;
    int shared, qr_pad, qb_pad, kr_pad, kcap_pad, kb_pad;
} AttCase;

typedef struct {
    AttnShape s;
    size_t nqbuf, nkvbuf;  // floats in the q buffer and in each of the k, v buffers (shared: the qkv buffer, 0)
    size_t qoff, koff, voff;  // where q, k, v start in their buffers
} AttLayout;

static AttLayout att_layout(const AttCase *ac) {
    int C = ac->H * ac->hd, Tk = ac->pos0 + ac->Tq;
    AttLayout L = {.s = {.B = ac->B, .H = ac->H, .hd = ac->hd, .Tq = ac->Tq, .Tk = Tk, .pos0 = ac->pos0,
                         .n_rot = ac->n}};
    if (ac->shared) {
        L.s.q_row = L.s.kv_row = 3 * (size_t)C;
        L.s.q_batch = L.s.kv_batch = (size_t)ac->Tq * 3 * C;
        L.nqbuf = (size_t)ac->B * L.s.q_batch, L.nkvbuf = 0;
        L.qoff = 0, L.koff = (size_t)C, L.voff = 2 * (size_t)C;
    } else {
        L.s.q_row = (size_t)C + ac->qr_pad, L.s.q_batch = (size_t)ac->Tq * L.s.q_row + ac->qb_pad;
        L.s.kv_row = (size_t)C + ac->kr_pad, L.s.kv_batch = (size_t)(Tk + ac->kcap_pad) * L.s.kv_row + ac->kb_pad;
        L.nqbuf = (size_t)ac->B * L.s.q_batch, L.nkvbuf = (size_t)ac->B * L.s.kv_batch;
        L.qoff = L.koff = L.voff = 0;
    }
    return L;
}

// The host buffers of one case: q, k, v point into qbuf (shared) or into their own buffers.
typedef struct {
    float *qbuf, *kbuf, *vbuf;  // kbuf, vbuf NULL when shared
    float *q, *k, *v;
    size_t nq, nk, nv;          // floats in the buffers q, k, v live in
} AttBufs;

static AttBufs att_bufs(const AttLayout *L, float fill) {
    AttBufs a = {0};
    a.qbuf = xmalloc(L->nqbuf * 4);
    for (size_t i = 0; i < L->nqbuf; i++) a.qbuf[i] = fill;
    if (L->nkvbuf) {
        a.kbuf = xmalloc(L->nkvbuf * 4), a.vbuf = xmalloc(L->nkvbuf * 4);
        for (size_t i = 0; i < L->nkvbuf; i++) a.kbuf[i] = a.vbuf[i] = fill;
    }
    a.q = a.qbuf + L->qoff;
    a.k = (a.kbuf ? a.kbuf : a.qbuf) + L->koff;
    a.v = (a.vbuf ? a.vbuf : a.qbuf) + L->voff;
    a.nq = L->nqbuf, a.nk = a.nv = L->nkvbuf ? L->nkvbuf : L->nqbuf;
    return a;
}

static AttBufs att_copy(const AttLayout *L, const AttBufs *src) {
    AttBufs a = att_bufs(L, 0.0f);
    memcpy(a.qbuf, src->qbuf, L->nqbuf * 4);
    if (L->nkvbuf) memcpy(a.kbuf, src->kbuf, L->nkvbuf * 4), memcpy(a.vbuf, src->vbuf, L->nkvbuf * 4);
    return a;
}

static void att_free(AttBufs *a) { free(a->qbuf), free(a->kbuf), free(a->vbuf); }

// Element (b, t, j) of a strided view.
static size_t vix(size_t row, size_t batch, int b, int t, int j) { return (size_t)b * batch + (size_t)t * row + (size_t)j; }

// dense (B, T, C) float <-> a strided view
static void gather(float *dense, const float *view, size_t row, size_t batch, int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < C; j++) dense[((size_t)b * T + t) * C + j] = view[vix(row, batch, b, t, j)];
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

// Elements of the buffers of b that differ bitwise from a, skipping the (b, t, j) elements of q and
// k that the forward rotates (dims < n of each head; k rows from pos0 on) when skip_rotated is set.
// Counts the padding and everything else the op must leave as it was.
static int att_changed(const AttLayout *L, const AttBufs *a, const AttBufs *b, int skip_rotated) {
    size_t nbuf = L->nkvbuf ? 3 : 1;
    int changed = 0, C = L->s.H * L->s.hd;
    for (size_t which = 0; which < nbuf; which++) {
        const float *x = which == 0 ? a->qbuf : which == 1 ? a->kbuf : a->vbuf;
        const float *y = which == 0 ? b->qbuf : which == 1 ? b->kbuf : b->vbuf;
        size_t n = which == 0 ? L->nqbuf : L->nkvbuf;
        uint8_t *rot = xcalloc(n, 1);
        if (skip_rotated)
            for (int part = 0; part < 2; part++) {  // q, k
                if (L->nkvbuf && (size_t)part != which) continue;
                size_t row = part ? L->s.kv_row : L->s.q_row, batch = part ? L->s.kv_batch : L->s.q_batch;
                size_t off = part ? L->koff : L->qoff;
                int t0 = part ? L->s.pos0 : 0, t1 = part ? L->s.Tk : L->s.Tq;
                for (int bb = 0; bb < L->s.B; bb++)
                    for (int t = t0; t < t1; t++)
                        for (int j = 0; j < C; j++)
                            if (j % L->s.hd < L->s.n_rot) rot[off + vix(row, batch, bb, t, j)] = 1;
            }
        for (size_t i = 0; i < n; i++)
            if (!rot[i] && !same_bits(x[i], y[i])) changed++;
        free(rot);
    }
    return changed;
}

// Runs one case: the forward against the double one (out, and the rotated q and k the op leaves in
// place), everything else in the buffers unchanged; for training shapes (pos0 = 0) the backward
// against central differences of the double forward in the unrotated q, k and v, with the padding
// of dq, dk, dv untouched. Keeps the worst ratios: forward (w_fwd), rotated q and k (w_rope), dq, dk
// and dv (w_grad).
static void attention_case(const AttCase *ac, uint64_t seed, double *w_fwd, double *w_rope, double *w_grad) {
    AttLayout L = att_layout(ac);
    const AttnShape *s = &L.s;
    int B = s->B, H = s->H, hd = s->hd, Tq = s->Tq, Tk = s->Tk, n = s->n_rot, C = H * hd;
    if (Tk > ATT64_MAX_TK) givt_die("attention case: Tk %d > %d", Tk, ATT64_MAX_TK);
    Rng r;
    rng_seed(&r, seed);
    size_t nqd = (size_t)B * Tq * C, nkd = (size_t)B * Tk * C, nt = (size_t)Tk * (n ? n : 1);
    float *cs = xcalloc(nt, 4), *sn = xcalloc(nt, 4), *proj = xmalloc(nqd * 4);
    double *dcs = xcalloc(nt, 8), *dsn = xcalloc(nt, 8);
    const double base = 100.0, condense = 1.5;  // small base so the angles are O(1)
    for (int t = 0; t < Tk; t++)
        for (int i = 0; i < n / 2; i++) {
            double ang = (t / condense) / pow(base, 2.0 * i / n);
            cs[t * n + i] = cs[t * n + n / 2 + i] = (float)cos(ang);
            sn[t * n + i] = sn[t * n + n / 2 + i] = (float)sin(ang);
        }
    for (size_t i = 0; i < nt; i++) dcs[i] = cs[i], dsn[i] = sn[i];
    Att64 c = {B, H, hd, Tq, Tk, s->pos0, n, xmalloc(nqd * 8), xmalloc(nkd * 8), xmalloc(nkd * 8), xmalloc(nqd * 8),
               xmalloc(nkd * 8), xmalloc(nqd * 8), dcs, dsn, proj};

    // inputs: the views random, the padding NaN; the first pos0 keys rotated (in double, then
    // rounded to float32 like a cache the op filled) at their positions
    AttBufs in = att_bufs(&L, NAN);
    double *tmp = xmalloc((size_t)C * 8), *rot = xmalloc((size_t)C * 8);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < Tq; t++)
            for (int j = 0; j < C; j++) {
                float f = (float)rng_normal(&r);
                in.q[vix(s->q_row, s->q_batch, b, t, j)] = f, c.q[((size_t)b * Tq + t) * C + j] = f;
            }
        for (int u = 0; u < Tk; u++) {
            for (int j = 0; j < C; j++) tmp[j] = (float)rng_normal(&r);
            if (u < s->pos0) rope64_row(rot, tmp, H, hd, n, dcs + (size_t)u * n, dsn + (size_t)u * n);
            for (int j = 0; j < C; j++) {
                float f = (float)(u < s->pos0 ? rot[j] : tmp[j]), fv = (float)rng_normal(&r);
                in.k[vix(s->kv_row, s->kv_batch, b, u, j)] = f, c.k[((size_t)b * Tk + u) * C + j] = f;
                in.v[vix(s->kv_row, s->kv_batch, b, u, j)] = fv, c.v[((size_t)b * Tk + u) * C + j] = fv;
            }
        }
    }
    for (size_t i = 0; i < nqd; i++) proj[i] = (float)rng_normal(&r);
    free(tmp), free(rot);

    // forward on a copy (it rotates q and k in place)
    AttBufs work = att_copy(&L, &in);
    float *out = xmalloc(nqd * 4), *got = xmalloc(nkd * 4);
    for (size_t i = 0; i < nqd; i++) out[i] = NAN;  // overwritten
    void *saved = xmalloc(ops->attention_saved_bytes(be, s));
    ops->attention_fwd(be, CV(out), saved, CV(work.q), CV(work.k), CV(work.v), cs, sn, s);
    attention64(&c);
    double e = fwd_diff(out, c.out, nqd);
    CHECK(e <= FD64_TOL, "attention forward: ratio %.3g (tol %g)", e, FD64_TOL);
    *w_fwd = fmax(*w_fwd, e);
    if (isnan(e)) *w_fwd = e;
    gather(got, work.q, s->q_row, s->q_batch, B, Tq, C);
    double eq = fwd_diff(got, c.qr, nqd);
    gather(got, work.k, s->kv_row, s->kv_batch, B, Tk, C);
    double ek = fwd_diff(got, c.kr, nkd);
    CHECK(eq <= FD64_TOL && ek <= FD64_TOL, "rotated q %.3g, k %.3g (tol %g)", eq, ek, FD64_TOL);
    *w_rope = fmax(*w_rope, fmax(eq, ek));
    int changed = att_changed(&L, &in, &work, 1);
    CHECK(changed == 0, "the forward changed %d elements besides the rotated q and k (v, padding, dims >= n_rot, "
                        "k rows < pos0)", changed);

    if (s->pos0 == 0) {  // the backward: training shapes only
        AttBufs d = att_bufs(&L, NAN), d0 = att_bufs(&L, NAN);  // dq, dk, dv overwritten; padding kept
        void *scratch = xmalloc(ops->attention_scratch_bytes(be, s));
        ops->attention_bwd(be, CV(d.q), CV(d.k), CV(d.v), scratch, CV(proj), CV(work.q), CV(work.k), CV(work.v),
                           saved, cs, sn, s);
        float *g = xmalloc(nkd * 4);
        gather(g, d.q, s->q_row, s->q_batch, B, Tq, C);
        double gq = grad_ratio(attention64_loss, &c, c.q, nqd, g);
        gather(g, d.k, s->kv_row, s->kv_batch, B, Tk, C);
        double gk = grad_ratio(attention64_loss, &c, c.k, nkd, g);
        gather(g, d.v, s->kv_row, s->kv_batch, B, Tk, C);
        double gv = grad_ratio(attention64_loss, &c, c.v, nkd, g);
        CHECK(gq <= FD64_TOL && gk <= FD64_TOL && gv <= FD64_TOL, "attention dq %.3g, dk %.3g, dv %.3g (tol %g)",
              gq, gk, gv, FD64_TOL);
        double gw = fmax(gq, fmax(gk, gv));
        *w_grad = isnan(gq + gk + gv) ? NAN : fmax(*w_grad, gw);
        // the padding of the gradient buffers: every element outside the views still NaN
        int touched = 0;
        if (L.nkvbuf) {
            // fill the views of d0 with d's values: then d0 and d must agree bit for bit
            for (int b = 0; b < B; b++)
                for (int j = 0; j < C; j++) {
                    for (int t = 0; t < Tq; t++) d0.q[vix(s->q_row, s->q_batch, b, t, j)] = d.q[vix(s->q_row, s->q_batch, b, t, j)];
                    for (int t = 0; t < Tk; t++) {
                        size_t i = vix(s->kv_row, s->kv_batch, b, t, j);
                        d0.k[i] = d.k[i], d0.v[i] = d.v[i];
                    }
                }
            touched = att_changed(&L, &d0, &d, 0);
        }
        CHECK(touched == 0, "the backward wrote %d elements of the padding of dq, dk, dv", touched);
        free(scratch), free(g);
        att_free(&d), att_free(&d0);
    }
    free(saved), free(out), free(got);
    att_free(&in), att_free(&work);
    free(cs), free(sn), free(proj), free(dcs), free(dsn);
    free(c.q), free(c.k), free(c.v), free(c.qr), free(c.kr), free(c.out);
}

// Training shapes in the model's layout (q, k, v thirds of one (B, T, 3C) buffer): the forward, the
// rotation it leaves in q and k, and the backward through RoPE and attention.
TEST(ops_fd64_rope_attention) {
    open_cpu();
    // B, H, hd, Tq, pos0, n_rot: full rotation; partial (2 of hd 3, an odd head dim); none
    // (rope_rotary_percentage 0); partial 4 of 6
    const AttCase cases[] = {{2, 2, 4, 5, 0, 4, 1, 0, 0, 0, 0, 0},
                             {1, 2, 3, 3, 0, 2, 1, 0, 0, 0, 0, 0},
                             {2, 2, 6, 4, 0, 0, 1, 0, 0, 0, 0, 0},
                             {2, 3, 6, 4, 0, 4, 1, 0, 0, 0, 0, 0}};
    double w_fwd = 0, w_rope = 0, w_grad = 0;
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        attention_case(&cases[i], 401 + (uint64_t)i, &w_fwd, &w_rope, &w_grad);
    printf("  fd64 attention   worst ratio %.2e (dq, dk, dv; forward %.2e, rotated q and k %.2e)\n", w_grad, w_fwd,
           w_rope);
    close_cpu();
}

// q, k, v in three buffers with row and batch strides other than 3C (padding NaN), T = 1 included.
TEST(ops_fd64_attention_strided) {
    open_cpu();
    const AttCase cases[] = {{2, 2, 6, 6, 0, 4, 0, 3, 5, 7, 0, 2},
                             {3, 1, 4, 1, 0, 4, 0, 1, 0, 2, 1, 3},
                             {1, 3, 2, 5, 0, 2, 0, 9, 4, 0, 2, 0}};
    double w_fwd = 0, w_rope = 0, w_grad = 0;
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        attention_case(&cases[i], 451 + (uint64_t)i, &w_fwd, &w_rope, &w_grad);
    printf("  fd64 attention strided worst ratio %.2e (dq, dk, dv; forward %.2e, rotated q and k %.2e)\n", w_grad,
           w_fwd, w_rope);
    close_cpu();
}

// A KV-cache decode: Tq = 1 or 3 queries at positions pos0 .. pos0 + Tq - 1 against Tk = pos0 + Tq
// keys, the first pos0 already rotated, in a cache with room for more tokens; forward only (the
// backward is for training shapes). Tolerance: the forward's 1e-5 norm-wise (a float32 softmax over
// up to 73 keys and hd-long dot products: ~1e-7 measured). The last case (Tk 73) crosses the CPU
// backend's 64-row blocks.
TEST(ops_fd64_attention_decode) {
    open_cpu();
    const AttCase cases[] = {{2, 2, 6, 1, 5, 4, 0, 0, 0, 0, 3, 0},  {2, 2, 4, 3, 4, 4, 0, 3, 2, 1, 2, 5},
                             {1, 3, 4, 1, 8, 2, 0, 0, 0, 0, 0, 0},  {3, 2, 8, 3, 70, 8, 0, 2, 0, 4, 1, 0},
                             {2, 1, 6, 1, 1, 6, 0, 0, 1, 0, 1, 0}};
    double w_fwd = 0, w_rope = 0, w_grad = 0;
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        attention_case(&cases[i], 481 + (uint64_t)i, &w_fwd, &w_rope, &w_grad);
    printf("  fd64 attention decode (pos0 > 0, Tq < Tk) forward worst ratio %.2e (tol %g), rotated q and k %.2e\n",
           w_fwd, FD64_TOL, w_rope);
    close_cpu();
}

// ---- swiglu: h (N, 2F) = [a | b] -> out (N, F) = silu(a) * b, silu(z) = z * sigmoid(z) -----
typedef struct {
    double *h, *out;
    const float *proj;
    int N, F;
} Swi64;

static void swiglu64(Swi64 *c) {
    for (int n = 0; n < c->N; n++)
        for (int f = 0; f < c->F; f++) {
            double a = c->h[(size_t)n * 2 * c->F + f], b = c->h[(size_t)n * 2 * c->F + c->F + f];
            c->out[(size_t)n * c->F + f] = a / (1.0 + exp(-a)) * b;
        }
}

static double swiglu64_loss(void *p) {
    Swi64 *c = p;
    swiglu64(c);
    return proj64(c->out, c->proj, (size_t)c->N * c->F);
}

TEST(ops_fd64_swiglu) {
    open_cpu();
    const int shapes[NTRIALS][2] = {{3, 5}, {2, 8}, {4, 6}};  // N, F
    double w_fwd = 0, w_h = 0;
    for (int tr = 0; tr < NTRIALS; tr++) {
        Rng r;
        rng_seed(&r, 501 + tr);
        int N = shapes[tr][0], F = shapes[tr][1];
        size_t nh = (size_t)N * 2 * F, no = (size_t)N * F;
        float *h = xmalloc(nh * 4), *proj = xmalloc(no * 4), *out = xmalloc(no * 4), *dh = xmalloc(nh * 4);
        Swi64 c = {xmalloc(nh * 8), xmalloc(no * 8), proj, N, F};
        draw(h, c.h, nh, &r, 2);  // wide enough to reach both tails of the sigmoid
        for (size_t i = 0; i < no; i++) proj[i] = (float)rng_normal(&r);

        ops->swiglu_fwd(be, CV(out), CV(h), N, F);
        swiglu64(&c);
        CHECK_RATIO("swiglu forward", fwd_diff(out, c.out, no), w_fwd);

        ops->swiglu_bwd(be, CV(dh), CV(proj), CV(h), N, F);
        CHECK_RATIO("swiglu dh", grad_ratio(swiglu64_loss, &c, c.h, nh, dh), w_h);
        free(h), free(proj), free(out), free(dh), free(c.h), free(c.out);
    }
    printf("  fd64 swiglu      worst ratio %.2e (dh; forward %.2e)\n", w_h, w_fwd);
    close_cpu();
}

// ---- shift_bos: in (B, T, D) = [bos, x_0 .. x_{T-2}] per sequence; backward gives dbos --------
typedef struct {
    double *x, *bos, *out;
    const float *proj;
    int B, T, D;
} Shift64;

static void shift64(Shift64 *c) {
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int d = 0; d < c->D; d++)
                c->out[((size_t)b * c->T + t) * c->D + d] =
                    t == 0 ? c->bos[d] : c->x[((size_t)b * c->T + t - 1) * c->D + d];
}

static double shift64_loss(void *p) {
    Shift64 *c = p;
    shift64(c);
    return proj64(c->out, c->proj, (size_t)c->B * c->T * c->D);
}

TEST(ops_fd64_shift_bos) {
    open_cpu();
    const int shapes[NTRIALS][3] = {{2, 4, 3}, {3, 3, 3}, {1, 5, 3}};  // B, T, D
    double w_fwd = 0, w_b = 0;
    for (int tr = 0; tr < NTRIALS; tr++) {
        Rng r;
        rng_seed(&r, 601 + tr);
        int B = shapes[tr][0], T = shapes[tr][1], D = shapes[tr][2];
        size_t n = (size_t)B * T * D;
        float *x = xmalloc(n * 4), *bos = xmalloc(D * 4), *proj = xmalloc(n * 4), *in = xmalloc(n * 4);
        float *dbos = xmalloc(D * 4);
        Shift64 c = {xmalloc(n * 8), xmalloc(D * 8), xmalloc(n * 8), proj, B, T, D};
        draw(x, c.x, n, &r, 1), draw(bos, c.bos, D, &r, 1);
        for (size_t i = 0; i < n; i++) proj[i] = (float)rng_normal(&r);

        ops->shift_bos(be, CV(in), x, CV(bos), B, T, D);
        shift64(&c);
        CHECK_RATIO("shift_bos forward", fwd_diff(in, c.out, n), w_fwd);

        memset(dbos, 0, D * 4);  // accumulates
        ops->shift_bos_bwd(be, dbos, CV(proj), B, T, D);
        CHECK_RATIO("shift_bos dbos", grad_ratio(shift64_loss, &c, c.bos, D, dbos), w_b);
        free(x), free(bos), free(proj), free(in), free(dbos), free(c.x), free(c.bos), free(c.out);
    }
    printf("  fd64 shift_bos   worst ratio %.2e (dbos; forward %.2e)\n", w_b, w_fwd);
    close_cpu();
}

// ---- gaussian nll: y (N, 2D) = [mu | pre], x (N, D) -> sum of 0.5*(log var + (x - mu)^2 / var) --
// std = softplus(pre) + eps (PyTorch's softplus: pre itself above the threshold 20),
// var = max(std^2, eps). The op's output is one number, so L = s * sum with a random float32 s,
// which is the dout (the op's scale argument).
typedef struct {
    double *y, *x;
    double eps, s;
    int N, D;
} Nll64;

static double softplus64(double z) { return z > 20.0 ? z : log1p(exp(z)); }

static double nll64_loss(void *p) {
    Nll64 *c = p;
    double sum = 0;
    for (int n = 0; n < c->N; n++)
        for (int d = 0; d < c->D; d++) {
            double mu = c->y[(size_t)n * 2 * c->D + d], pre = c->y[(size_t)n * 2 * c->D + c->D + d];
            double sd = softplus64(pre) + c->eps, var = fmax(sd * sd, c->eps), e = c->x[(size_t)n * c->D + d] - mu;
            sum += 0.5 * (log(var) + e * e / var);
        }
    return c->s * sum;
}

// Is element (n, d) clamped (std^2 < eps)?
static int nll64_clamped(const Nll64 *c, int n, int d) {
    double sd = softplus64(c->y[(size_t)n * 2 * c->D + c->D + d]) + c->eps;
    return sd * sd < c->eps;
}

TEST(ops_fd64_gaussian_nll) {
    open_cpu();
    // Trial 0: the default eps 1e-8, random (mu, pre, x), and pre above the threshold 20 in some
    // elements. Trials 1, 2: eps 1e-2 (std^2 < eps when softplus(pre) < 0.09, i.e. pre < -2.4), with
    // clamped elements (pre -3.5 .. -6) and pre > 20 (20.5, 27, 60) mixed into random ones. No pre is
    // within 1e-6 of 20 or of the clamp boundary, so no difference quotient straddles a kink.
    const int Ns[NTRIALS] = {4, 5, 4};
    const double epss[NTRIALS] = {1e-8, 1e-2, 1e-2};
    const float special_pre[] = {20.5f, -4.0f, 27.0f, -6.0f, 60.0f, -3.5f, 21.0f};
    const int D = 3;
    double w_fwd = 0, w_mu = 0, w_pre = 0, w_st = 0;
    int n_clamped = 0, n_thresh = 0;
    for (int tr = 0; tr < NTRIALS; tr++) {
        Rng r;
        rng_seed(&r, 701 + tr);
        int N = Ns[tr];
        size_t ny = (size_t)N * 2 * D, nx = (size_t)N * D;
        float *y = xmalloc(ny * 4), *x = xmalloc(nx * 4), *dy = xmalloc(ny * 4);
        Nll64 c = {xmalloc(ny * 8), xmalloc(nx * 8), epss[tr], 0, N, D};
        draw(y, c.y, ny, &r, 1), draw(x, c.x, nx, &r, 1);
        // every other element of trials 1, 2 (and two of trial 0) gets a special pre: clamped or > 20
        int k = 0;
        for (int n = 0; n < N; n++)
            for (int d = 0; d < D; d++) {
                int i = n * D + d;
                if (tr == 0 ? (i == 1 || i == 7) : (i % 2 == 0)) {
                    float pre = special_pre[k++ % (int)(sizeof special_pre / sizeof special_pre[0])];
                    if (tr == 0 && pre < 0) pre = 25.0f;  // with eps 1e-8 a clamp needs std < 1e-4
                    y[(size_t)n * 2 * D + D + d] = pre, c.y[(size_t)n * 2 * D + D + d] = pre;
                }
            }
        float s = (float)(0.5 + rng_uniform(&r));  // dout of the scalar sum
        c.s = s;

        double got = -2.0;  // the loss scalar accumulates: -2 + the sum
        ops->gaussian_nll(be, CV(dy), &got, CV(y), x, N, D, c.eps, s);
        got += 2.0;
        double want = nll64_loss(&c) / c.s;
        double fr = fabs(got - want) / fabs(want);  // std is rounded to float32 in the op: ~1e-7
        CHECK(fr <= FD64_TOL, "gaussian_nll forward: %.10g vs double %.10g", got, want);
        if (fr > w_fwd) w_fwd = fr;
        // and element by element (N = D = 1 calls), so that no term hides in the sum
        for (int n = 0; n < N; n++)
            for (int d = 0; d < D; d++) {
                float y1[2] = {y[(size_t)n * 2 * D + d], y[(size_t)n * 2 * D + D + d]}, x1 = x[(size_t)n * D + d];
                Nll64 c1 = {(double[2]){y1[0], y1[1]}, (double[1]){x1}, c.eps, 1.0, 1, 1};
                double g1 = 0, w1 = nll64_loss(&c1);
                ops->gaussian_nll(be, NULL, &g1, CV(y1), &x1, 1, 1, c.eps, 1.0f);
                double e1 = fabs(g1 - w1) / fmax(1.0, fabs(w1));
                CHECK(e1 <= FD64_TOL, "gaussian_nll forward of element (%d,%d): %.10g vs double %.10g", n, d, g1, w1);
                if (e1 > w_fwd) w_fwd = e1;
            }

        double *fd = xmalloc(ny * 8), *an = widen(dy, ny);
        fd64(nll64_loss, &c, c.y, ny, fd);
        // Norm-wise over the dmu entries (fd is exact for those, clamped or not: var does not depend
        // on mu) and over the dpre entries of unclamped elements.
        double dd_mu = 0, ff_mu = 0, dd_pre = 0, ff_pre = 0, dd_st = 0, ff_st = 0;
        for (int n = 0; n < N; n++)
            for (int d = 0; d < D; d++) {
                size_t im = (size_t)n * 2 * D + d, ip = im + D;
                dd_mu += (an[im] - fd[im]) * (an[im] - fd[im]), ff_mu += fd[im] * fd[im];
                double pre = c.y[ip];
                if (pre > 20.0) n_thresh++;
                if (!nll64_clamped(&c, n, d)) {
                    dd_pre += (an[ip] - fd[ip]) * (an[ip] - fd[ip]), ff_pre += fd[ip] * fd[ip];
                    continue;
                }
                // Clamped: PyTorch's clamp passes the gradient straight through to std (and so does
                // the float32 op), whereas our double forward really is flat in pre there (var = eps),
                // so its fd is 0. Check that, and compare dpre against the straight-through formula
                // d/dpre = s * 0.5 * (1/var - e^2/var^2) * 2 * std * sigmoid(pre) with var = eps.
                n_clamped++;
                CHECK(fabs(fd[ip]) <= 1e-6, "clamped element (%d,%d): fd %.3g, want 0", n, d, fd[ip]);
                double sd = softplus64(pre) + c.eps, e = c.x[(size_t)n * D + d] - c.y[im];
                double st = c.s * 0.5 * (1.0 / c.eps - e * e / (c.eps * c.eps)) * 2.0 * sd / (1.0 + exp(-pre));
                dd_st += (an[ip] - st) * (an[ip] - st), ff_st += st * st;
            }
        CHECK_RATIO("gaussian_nll dmu", sqrt(dd_mu) / sqrt(ff_mu), w_mu);
        CHECK_RATIO("gaussian_nll dpre", sqrt(dd_pre) / sqrt(ff_pre), w_pre);
        if (ff_st > 0) CHECK_RATIO("gaussian_nll dpre (clamped, straight-through)", sqrt(dd_st) / sqrt(ff_st), w_st);
        free(fd), free(an), free(y), free(x), free(dy), free(c.y), free(c.x);
    }
    CHECK(n_clamped >= 4 && n_thresh >= 4, "clamped %d, above threshold %d", n_clamped, n_thresh);
    printf("  fd64 gaussian_nll worst ratio %.2e (dmu %.2e, dpre %.2e, dpre clamped vs straight-through %.2e; "
           "forward %.2e; %d clamped, %d with pre > 20)\n",
           fmax(fmax(w_mu, w_pre), w_st), w_mu, w_pre, w_st, w_fwd, n_clamped, n_thresh);
    close_cpu();
}
