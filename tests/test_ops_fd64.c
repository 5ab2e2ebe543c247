// test_ops_fd64: every op's float32 CPU backward against central finite differences, in double, of
// the op's independent double-precision forward: the reference ops of tests/ref_ops.c (plain loops
// from GIVT.md and ops.h, shared with test_backend_ops.c; nothing from ops_cpu.c but the op under
// test). test_ops_fd.c differences the float32 ops themselves, which float32 rounding limits to
// ~1e-3; here the differencing is ~1e-9 accurate, so the comparison is limited only by the float32
// rounding of the analytic gradient.
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
// Every test opens the CPU backend (backend_open("cpu", PRECISION_NO)) and closes it at the end; its compute
// buffers are float32, so host float arrays are passed cast to cval *, and a host double serves as
// a backend scalar.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ref_ops.h"
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
    double *w = refop_widen(f32, n);
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
    double *fd = xmalloc(n * sizeof(double)), *an = refop_widen(an32, n);
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

static void matmul64(Mm64 *c) { refop_matmul_fwd(c->out, c->inp, c->w, c->N, c->K, c->M); }

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

static void rmsnorm64(Rms64 *c) { refop_rmsnorm_fwd(c->out, c->rstd, NULL, c->inp, c->branch, c->w, c->N, c->C); }

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
// query t sees keys 0 .. pos0 + t. RoPE (rotate-half on the first n dims of every head) on q and on
// the keys at positions >= pos0 (the first pos0 keys, a KV cache, were rotated when they were
// computed). The cos/sin tables are inputs of the op (not differentiated): built from GIVT.md's cache
// formula in double and rounded to float32; the op and the double forward (refop_attention) read the
// same values. L = proj . out.
typedef struct {
    RefOpAttn a;          // the double forward: reads q, k, v below, writes qr, kr and out
    double *q, *k, *v;    // dense (B, Tq, C), (B, Tk, C), (B, Tk, C): the inputs differenced
    const float *proj;    // (B, Tq, C)
} Att64;

static double attention64_loss(void *p) {
    Att64 *c = p;
    refop_attention(&c->a);
    return proj64(c->a.out, c->proj, (size_t)c->a.s->B * c->a.s->Tq * c->a.s->H * c->a.s->hd);
}

// One case (refop_att_layout: shared = the model's layout, q, k, v the three thirds of one
// (B, T, 3C) buffer; otherwise three buffers with padded row and batch strides). Padding holds NaN:
// an op that reads it poisons its output, and one that writes it is caught by the bitwise check.

// The host buffers of one case: q, k, v point into qbuf (shared) or into their own buffers.
typedef struct {
    float *qbuf, *kbuf, *vbuf;  // kbuf, vbuf NULL when shared
    float *q, *k, *v;
} AttBufs;

static AttBufs att_bufs(const RefOpAttLayout *L, float fill) {
    AttBufs a = {0};
    a.qbuf = xmalloc(L->nq * 4);
    for (size_t i = 0; i < L->nq; i++) a.qbuf[i] = fill;
    if (L->nkv) {
        a.kbuf = xmalloc(L->nkv * 4), a.vbuf = xmalloc(L->nkv * 4);
        for (size_t i = 0; i < L->nkv; i++) a.kbuf[i] = a.vbuf[i] = fill;
    }
    a.q = a.qbuf + L->qoff;
    a.k = (a.kbuf ? a.kbuf : a.qbuf) + L->koff;
    a.v = (a.vbuf ? a.vbuf : a.qbuf) + L->voff;
    return a;
}

static AttBufs att_copy(const RefOpAttLayout *L, const AttBufs *src) {
    AttBufs a = att_bufs(L, 0.0f);
    memcpy(a.qbuf, src->qbuf, L->nq * 4);
    if (L->nkv) memcpy(a.kbuf, src->kbuf, L->nkv * 4), memcpy(a.vbuf, src->vbuf, L->nkv * 4);
    return a;
}

static void att_free(AttBufs *a) { free(a->qbuf), free(a->kbuf), free(a->vbuf); }

// dense (B, T, C) float <-> a strided view
static void gather(float *dense, const float *view, size_t row, size_t batch, int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < C; j++) dense[((size_t)b * T + t) * C + j] = view[refop_vix(row, batch, b, t, j)];
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

// Elements of the buffers of b that differ bitwise from a, skipping the (b, t, j) elements of q and
// k that the forward rotates (dims < n of each head; k rows from pos0 on) when skip_rotated is set.
// Counts the padding and everything else the op must leave as it was.
static int att_changed(const RefOpAttLayout *L, const AttBufs *a, const AttBufs *b, int skip_rotated) {
    size_t nbuf = L->nkv ? 3 : 1;
    int changed = 0, C = L->s.H * L->s.hd;
    for (size_t which = 0; which < nbuf; which++) {
        const float *x = which == 0 ? a->qbuf : which == 1 ? a->kbuf : a->vbuf;
        const float *y = which == 0 ? b->qbuf : which == 1 ? b->kbuf : b->vbuf;
        size_t n = which == 0 ? L->nq : L->nkv;
        uint8_t *rot = xcalloc(n, 1);
        if (skip_rotated)
            for (int part = 0; part < 2; part++) {  // q, k
                if (L->nkv && (size_t)part != which) continue;
                size_t row = part ? L->s.kv_row : L->s.q_row, batch = part ? L->s.kv_batch : L->s.q_batch;
                size_t off = part ? L->koff : L->qoff;
                int t0 = part ? L->s.pos0 : 0, t1 = part ? L->s.Tk : L->s.Tq;
                for (int bb = 0; bb < L->s.B; bb++)
                    for (int t = t0; t < t1; t++)
                        for (int j = 0; j < C; j++)
                            if (j % L->s.hd < L->s.n_rot) rot[off + refop_vix(row, batch, bb, t, j)] = 1;
            }
        for (size_t i = 0; i < n; i++)
            if (!rot[i] && !same_bits(x[i], y[i])) changed++;
        free(rot);
    }
    return changed;
}

// A case's inputs: the views random, the padding NaN; the first pos0 keys rotated (in double, then
// rounded to float32 like a cache the op filled) at their positions; the same values dense in c.
static AttBufs att_fill(const RefOpAttLayout *L, Att64 *c, const float *cs, const float *sn, Rng *r) {
    const AttnShape *s = &L->s;
    int B = s->B, H = s->H, hd = s->hd, Tq = s->Tq, Tk = s->Tk, n = s->n_rot, C = H * hd;
    double *q = c->q, *k = c->k, *v = c->v;
    AttBufs in = att_bufs(L, NAN);
    double *tmp = xmalloc((size_t)C * 8), *rot = xmalloc((size_t)C * 8);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < Tq; t++)
            for (int j = 0; j < C; j++) {
                float f = (float)rng_normal(r);
                in.q[refop_vix(s->q_row, s->q_batch, b, t, j)] = f, q[((size_t)b * Tq + t) * C + j] = f;
            }
        for (int u = 0; u < Tk; u++) {
            for (int j = 0; j < C; j++) tmp[j] = (float)rng_normal(r);
            if (u < s->pos0) refop_rope_row(rot, tmp, H, hd, n, cs + (size_t)u * n, sn + (size_t)u * n);
            for (int j = 0; j < C; j++) {
                float f = (float)(u < s->pos0 ? rot[j] : tmp[j]), fv = (float)rng_normal(r);
                in.k[refop_vix(s->kv_row, s->kv_batch, b, u, j)] = f, k[((size_t)b * Tk + u) * C + j] = f;
                in.v[refop_vix(s->kv_row, s->kv_batch, b, u, j)] = fv, v[((size_t)b * Tk + u) * C + j] = fv;
            }
        }
    }
    free(tmp), free(rot);
    return in;
}

// The forward's checks: out against the double forward, the rotated q and k it leaves in work
// against qr, kr (1e-5 norm-wise: float32 dot products and softmax), and nothing else in the buffers
// changed (bitwise). Keeps the worst ratios (forward in w_fwd, rotated q and k in w_rope).
static void att_check_fwd(const RefOpAttLayout *L, const Att64 *c, const AttBufs *in, const AttBufs *work,
                          const float *out, double *w_fwd, double *w_rope) {
    const AttnShape *s = &L->s;
    int C = s->H * s->hd;
    size_t nqd = (size_t)s->B * s->Tq * C, nkd = (size_t)s->B * s->Tk * C;
    float *got = xmalloc(nkd * 4);
    double e = fwd_diff(out, c->a.out, nqd);
    CHECK(e <= FD64_TOL, "attention forward: ratio %.3g (tol %g)", e, FD64_TOL);
    *w_fwd = fmax(*w_fwd, e);
    if (isnan(e)) *w_fwd = e;
    gather(got, work->q, s->q_row, s->q_batch, s->B, s->Tq, C);
    double eq = fwd_diff(got, c->a.qr, nqd);
    gather(got, work->k, s->kv_row, s->kv_batch, s->B, s->Tk, C);
    double ek = fwd_diff(got, c->a.kr, nkd);
    CHECK(eq <= FD64_TOL && ek <= FD64_TOL, "rotated q %.3g, k %.3g (tol %g)", eq, ek, FD64_TOL);
    *w_rope = fmax(*w_rope, fmax(eq, ek));
    int changed = att_changed(L, in, work, 1);
    CHECK(changed == 0, "the forward changed %d elements besides the rotated q and k (v, padding, dims >= n_rot, "
                        "k rows < pos0)", changed);
    free(got);
}

// Elements of the padding of the gradient buffers d that the backward wrote: every element outside
// the views must still be NaN (d0, all NaN, gets d's views copied: then d0 and d agree bit for bit).
static int att_padding_written(const RefOpAttLayout *L, const AttBufs *d) {
    const AttnShape *s = &L->s;
    if (!L->nkv) return 0;  // the shared layout has no padding
    AttBufs d0 = att_bufs(L, NAN);
    for (int b = 0; b < s->B; b++)
        for (int j = 0; j < s->H * s->hd; j++) {
            for (int t = 0; t < s->Tq; t++) {
                size_t i = refop_vix(s->q_row, s->q_batch, b, t, j);
                d0.q[i] = d->q[i];
            }
            for (int t = 0; t < s->Tk; t++) {
                size_t i = refop_vix(s->kv_row, s->kv_batch, b, t, j);
                d0.k[i] = d->k[i], d0.v[i] = d->v[i];
            }
        }
    int touched = att_changed(L, &d0, d, 0);
    att_free(&d0);
    return touched;
}

// The backward (dout = proj) at the rotated q, k in work: dq, dk, dv against central differences of
// the double forward in the unrotated q, k and v (FD64_TOL norm-wise), the padding of dq, dk, dv
// untouched. Keeps the worst ratio in w_grad.
static void att_check_bwd(const RefOpAttLayout *L, Att64 *c, const AttBufs *work, const float *out, const void *saved,
                          const float *cs, const float *sn, double *w_grad) {
    const AttnShape *s = &L->s;
    int C = s->H * s->hd;
    size_t nqd = (size_t)s->B * s->Tq * C, nkd = (size_t)s->B * s->Tk * C;
    AttBufs d = att_bufs(L, NAN);  // dq, dk, dv overwritten; padding kept
    void *scratch = xmalloc(ops->attention_scratch_bytes(be, s));
    ops->attention_bwd(be, CV(d.q), CV(d.k), CV(d.v), scratch, CV(c->proj), CV(out), CV(work->q), CV(work->k),
                       CV(work->v), saved, cs, sn, s);
    float *g = xmalloc(nkd * 4);
    gather(g, d.q, s->q_row, s->q_batch, s->B, s->Tq, C);
    double gq = grad_ratio(attention64_loss, c, c->q, nqd, g);
    gather(g, d.k, s->kv_row, s->kv_batch, s->B, s->Tk, C);
    double gk = grad_ratio(attention64_loss, c, c->k, nkd, g);
    gather(g, d.v, s->kv_row, s->kv_batch, s->B, s->Tk, C);
    double gv = grad_ratio(attention64_loss, c, c->v, nkd, g);
    CHECK(gq <= FD64_TOL && gk <= FD64_TOL && gv <= FD64_TOL, "attention dq %.3g, dk %.3g, dv %.3g (tol %g)", gq, gk,
          gv, FD64_TOL);
    *w_grad = isnan(gq + gk + gv) ? NAN : fmax(*w_grad, fmax(gq, fmax(gk, gv)));
    int touched = att_padding_written(L, &d);
    CHECK(touched == 0, "the backward wrote %d elements of the padding of dq, dk, dv", touched);
    free(scratch), free(g);
    att_free(&d);
}

// Runs one case: the forward (att_check_fwd), and for training shapes (pos0 = 0) the backward
// (att_check_bwd). The rope tables use a small base (100, condense 1.5) so the angles are O(1).
static void attention_case(const RefOpAttCase *ac, uint64_t seed, double *w_fwd, double *w_rope, double *w_grad) {
    RefOpAttLayout L = refop_att_layout(ac);
    const AttnShape *s = &L.s;
    int n = s->n_rot, C = s->H * s->hd;
    size_t nqd = (size_t)s->B * s->Tq * C, nkd = (size_t)s->B * s->Tk * C, nt = (size_t)s->Tk * (n ? n : 1);
    Rng r;
    rng_seed(&r, seed);
    float *cs = xcalloc(nt, 4), *sn = xcalloc(nt, 4), *proj = xmalloc(nqd * 4);
    refop_rope_tables(cs, sn, s->Tk, n, 100.0, 1.5);
    Att64 c = {.q = refop_zeros(nqd), .k = refop_zeros(nkd), .v = refop_zeros(nkd), .proj = proj};
    c.a = (RefOpAttn){.s = s, .cos = cs, .sin = sn, .q = c.q, .k = c.k, .v = c.v, .qr = refop_zeros(nqd),
                      .kr = refop_zeros(nkd), .out = refop_zeros(nqd)};
    AttBufs in = att_fill(&L, &c, cs, sn, &r);
    for (size_t i = 0; i < nqd; i++) proj[i] = (float)rng_normal(&r);

    // the forward on a copy (it rotates q and k in place)
    AttBufs work = att_copy(&L, &in);
    float *out = xmalloc(nqd * 4);
    for (size_t i = 0; i < nqd; i++) out[i] = NAN;  // overwritten
    void *saved = xmalloc(ops->attention_saved_bytes(be, s));
    ops->attention_fwd(be, CV(out), saved, CV(work.q), CV(work.k), CV(work.v), cs, sn, s);
    refop_attention(&c.a);
    att_check_fwd(&L, &c, &in, &work, out, w_fwd, w_rope);
    if (s->pos0 == 0) att_check_bwd(&L, &c, &work, out, saved, cs, sn, w_grad);  // training shapes only
    free(saved), free(out);
    att_free(&in), att_free(&work);
    free(cs), free(sn), free(proj);
    free(c.q), free(c.k), free(c.v), free(c.a.qr), free(c.a.kr), free(c.a.out);
}

// Training shapes in the model's layout (q, k, v thirds of one (B, T, 3C) buffer): the forward, the
// rotation it leaves in q and k, and the backward through RoPE and attention.
TEST(ops_fd64_rope_attention) {
    open_cpu();
    // B, H, hd, Tq, pos0, n_rot: full rotation; partial (2 of hd 3, an odd head dim); none
    // (rope_rotary_percentage 0); partial 4 of 6
    const RefOpAttCase cases[] = {{2, 2, 4, 5, 0, 4, 1, 0, 0, 0, 0, 0},
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
    const RefOpAttCase cases[] = {{2, 2, 6, 6, 0, 4, 0, 3, 5, 7, 0, 2},
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
    const RefOpAttCase cases[] = {{2, 2, 6, 1, 5, 4, 0, 0, 0, 0, 3, 0},  {2, 2, 4, 3, 4, 4, 0, 3, 2, 1, 2, 5},
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

static void swiglu64(Swi64 *c) { refop_swiglu_fwd(c->out, c->h, c->N, c->F); }

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

static void shift64(Shift64 *c) { refop_shift_bos(c->out, c->x, c->bos, c->B, c->T, c->D); }

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

static double nll64_loss(void *p) {
    Nll64 *c = p;
    return c->s * refop_gaussian_nll(NULL, c->y, c->x, c->N, c->D, c->eps, 1.0);
}

// Is element (n, d) clamped (std^2 < eps)?
static int nll64_clamped(const Nll64 *c, int n, int d) {
    double sd = refop_softplus(c->y[(size_t)n * 2 * c->D + c->D + d]) + c->eps;
    return sd * sd < c->eps;
}

// Every other element of trials 1, 2 (and two of trial 0) gets a special pre: clamped or > 20.
static void nll64_special_pre(float *y, Nll64 *c, int tr) {
    const float special_pre[] = {20.5f, -4.0f, 27.0f, -6.0f, 60.0f, -3.5f, 21.0f};
    int k = 0, D = c->D;
    for (int n = 0; n < c->N; n++)
        for (int d = 0; d < D; d++) {
            int i = n * D + d;
            if (tr == 0 ? (i == 1 || i == 7) : (i % 2 == 0)) {
                float pre = special_pre[k++ % (int)(sizeof special_pre / sizeof special_pre[0])];
                if (tr == 0 && pre < 0) pre = 25.0f;  // with eps 1e-8 a clamp needs std < 1e-4
                y[(size_t)n * 2 * D + D + d] = pre, c->y[(size_t)n * 2 * D + D + d] = pre;
            }
        }
}

// The forward: the op's sum got against the double one (relative 1e-5: std is rounded to float32 in
// the op, ~1e-7), and element by element (N = D = 1 calls, so that no term hides in the sum; relative
// to max(1, |l|)). Returns the worst error.
static double nll64_check_fwd(Nll64 *c, double got, const float *y, const float *x) {
    int N = c->N, D = c->D;
    double want = nll64_loss(c) / c->s, worst = fabs(got - want) / fabs(want);
    CHECK(worst <= FD64_TOL, "gaussian_nll forward: %.10g vs double %.10g", got, want);
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            float y1[2] = {y[(size_t)n * 2 * D + d], y[(size_t)n * 2 * D + D + d]}, x1 = x[(size_t)n * D + d];
            double yd[2] = {y1[0], y1[1]}, xd = x1, g1 = 0;
            double w1 = refop_gaussian_nll(NULL, yd, &xd, 1, 1, c->eps, 1.0);
            ops->gaussian_nll(be, NULL, &g1, CV(y1), &x1, 1, 1, c->eps, 1.0f);
            double e1 = fabs(g1 - w1) / fmax(1.0, fabs(w1));
            CHECK(e1 <= FD64_TOL, "gaussian_nll forward of element (%d,%d): %.10g vs double %.10g", n, d, g1, w1);
            worst = fmax(worst, e1);
        }
    return worst;
}

// Sums of squared differences and of squared references, for the norm-wise ratios.
typedef struct {
    double dd, ff;
} Norm2;
static void norm2_add(Norm2 *s, double an, double ref) { s->dd += (an - ref) * (an - ref), s->ff += ref * ref; }
static double norm2_ratio(const Norm2 *s) { return sqrt(s->dd) / sqrt(s->ff); }

// The worst ratios of the gradient over the trials, and the special elements seen.
typedef struct {
    double mu, pre, st;
    int clamped, thresh;
} Nll64Worst;

// The gradient dy (the op's, float32, scale c->s) against fd of the double forward: norm-wise over the
// dmu entries (fd is exact for those, clamped or not: var does not depend on mu) and over the dpre
// entries of unclamped elements. Clamped: PyTorch's clamp passes the gradient straight through to
// std (and so does the float32 op), whereas the double forward really is flat in pre there
// (var = eps), so its fd is 0: that is checked, and dpre is compared with the straight-through
// gradient of refop_gaussian_nll, s * 0.5 (1/var - e^2/var^2) * 2 std sigmoid(pre) with var = eps.
static void nll64_check_grad(Nll64 *c, const float *dy, Nll64Worst *w) {
    int N = c->N, D = c->D;
    size_t ny = (size_t)N * 2 * D;
    double *fd = xmalloc(ny * 8), *an = refop_widen(dy, ny), *st = refop_zeros(ny);
    fd64(nll64_loss, c, c->y, ny, fd);
    refop_gaussian_nll(st, c->y, c->x, N, D, c->eps, c->s);
    Norm2 mu = {0, 0}, pre = {0, 0}, str = {0, 0};
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            size_t im = (size_t)n * 2 * D + d, ip = im + D;
            norm2_add(&mu, an[im], fd[im]);
            if (c->y[ip] > REFOP_SOFTPLUS_THRESHOLD) w->thresh++;
            if (!nll64_clamped(c, n, d)) {
                norm2_add(&pre, an[ip], fd[ip]);
                continue;
            }
            w->clamped++;
            CHECK(fabs(fd[ip]) <= 1e-6, "clamped element (%d,%d): fd %.3g, want 0", n, d, fd[ip]);
            norm2_add(&str, an[ip], st[ip]);
        }
    CHECK_RATIO("gaussian_nll dmu", norm2_ratio(&mu), w->mu);
    CHECK_RATIO("gaussian_nll dpre", norm2_ratio(&pre), w->pre);
    if (str.ff > 0) CHECK_RATIO("gaussian_nll dpre (clamped, straight-through)", norm2_ratio(&str), w->st);
    free(fd), free(an), free(st);
}

TEST(ops_fd64_gaussian_nll) {
    open_cpu();
    // Trial 0: the default eps 1e-8, random (mu, pre, x), and pre above the threshold 20 in some
    // elements. Trials 1, 2: eps 1e-2 (std^2 < eps when softplus(pre) < 0.09, i.e. pre < -2.4), with
    // clamped elements (pre -3.5 .. -6) and pre > 20 (20.5, 27, 60) mixed into random ones. No pre is
    // within 1e-6 of 20 or of the clamp boundary, so no difference quotient straddles a kink.
    const int Ns[NTRIALS] = {4, 5, 4};
    const double epss[NTRIALS] = {1e-8, 1e-2, 1e-2};
    const int D = 3;
    double w_fwd = 0;
    Nll64Worst w = {0, 0, 0, 0, 0};
    for (int tr = 0; tr < NTRIALS; tr++) {
        Rng r;
        rng_seed(&r, 701 + tr);
        int N = Ns[tr];
        size_t ny = (size_t)N * 2 * D, nx = (size_t)N * D;
        float *y = xmalloc(ny * 4), *x = xmalloc(nx * 4), *dy = xmalloc(ny * 4);
        Nll64 c = {xmalloc(ny * 8), xmalloc(nx * 8), epss[tr], 0, N, D};
        draw(y, c.y, ny, &r, 1), draw(x, c.x, nx, &r, 1);
        nll64_special_pre(y, &c, tr);
        float s = (float)(0.5 + rng_uniform(&r));  // dout of the scalar sum
        c.s = s;
        double got = -2.0;  // the loss scalar accumulates: -2 + the sum
        ops->gaussian_nll(be, CV(dy), &got, CV(y), x, N, D, c.eps, s);
        w_fwd = fmax(w_fwd, nll64_check_fwd(&c, got + 2.0, y, x));
        nll64_check_grad(&c, dy, &w);
        free(y), free(x), free(dy), free(c.y), free(c.x);
    }
    CHECK(w.clamped >= 4 && w.thresh >= 4, "clamped %d, above threshold %d", w.clamped, w.thresh);
    printf("  fd64 gaussian_nll worst ratio %.2e (dmu %.2e, dpre %.2e, dpre clamped vs straight-through %.2e; "
           "forward %.2e; %d clamped, %d with pre > 20)\n",
           fmax(fmax(w.mu, w.pre), w.st), w.mu, w.pre, w.st, w_fwd, w.clamped, w.thresh);
    close_cpu();
}
