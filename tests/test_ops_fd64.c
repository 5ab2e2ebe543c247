// test_ops_fd64: every op's float32 CPU backward against central finite differences, in double, of
// an independent double-precision forward of the op written out here from GIVT.md and ops.h (plain
// loops; nothing from ops_cpu.c but the op under test). test_ops_fd.c differences the float32 ops
// themselves, which float32 rounding limits to ~1e-3; here the differencing is ~1e-9 accurate, so
// the comparison is limited only by the float32 rounding of the analytic gradient.
//
// For each op: inputs are random O(1) values drawn in float32 and widened to double (so both sides
// see exactly the same numbers), L = sum_i w_i * out_i with random float32 weights w, and
//   - the double forward must agree with the float32 forward of ops_cpu (norm-wise relative 1e-5):
//     the double forward is then known to be the function the backward differentiates;
//   - the float32 backward (dout = w) must agree with dL/dinput by central differences of the double
//     forward: ||analytic - fd|| / ||fd|| <= 1e-5.
// Error budget: the central difference with step h = 1e-6 in double has truncation error
// h^2/6 * |f'''| ~ 1e-13 and rounding error ~ 1e-16 * |L| / h ~ 1e-10 * |L| (|L| is O(10) here),
// so fd is good to ~1e-9. The analytic gradient is computed in float32 (unit roundoff 6e-8) through
// a few dozen operations at most on these tiny shapes, and from float32 intermediates the forward
// saved (rstd, att); its relative error is ~1e-7..1e-6. The 1e-5 bound is therefore set by float32
// rounding of the analytic gradient, not by the differencing; a wrong backward (a missing term, a
// flipped sign, a transposed index, a wrong threshold) is off by O(1e-2..1) in the ratio.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ops.h"
#include "util.h"

#define FD64_H 1e-6     // central-difference step, in double
#define FD64_TOL 1e-5   // ||analytic - fd|| / ||fd||, and the forward's relative agreement
#define NTRIALS 3       // shapes / seeds per op; the worst ratio is reported

static const GivtOps *ops;

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

// ||f32 - f64|| / ||f64||: the float32 forward of ops_cpu against the double forward
static double fwd_diff(const float *f32, const double *f64, size_t n) {
    double *w = widen(f32, n);
    double r = rel_diff(w, f64, n);
    free(w);
    return r;
}

// Evaluates L with the double forward at the current contents of the inputs ctx points to.
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

TEST(fd64_matmul) {
    ops = ops_cpu();
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

        ops->matmul_fwd(out, inp, w, N, K, M);
        matmul64(&c);
        CHECK_RATIO("matmul forward", fwd_diff(out, c.out, no), w_fwd);

        memset(dw, 0, nw * 4);  // dw accumulates
        ops->matmul_bwd(dinp, dw, proj, inp, w, N, K, M);
        CHECK_RATIO("matmul dinp", grad_ratio(matmul64_loss, &c, c.inp, ni, dinp), w_inp);
        CHECK_RATIO("matmul dw", grad_ratio(matmul64_loss, &c, c.w, nw, dw), w_w);
        free(inp), free(w), free(proj), free(out), free(dinp), free(dw), free(c.inp), free(c.w), free(c.out);
    }
    printf("  fd64 matmul      worst ratio %.2e (dinp %.2e, dw %.2e; forward %.2e)\n", fmax(w_inp, w_w), w_inp,
           w_w, w_fwd);
}

// ---- rmsnorm: out (N, C) = x * rsqrt(mean(x^2) + 1e-5) * w --------------------------------
typedef struct {
    double *inp, *w, *out;
    const float *proj;
    int N, C;
} Rms64;

static void rmsnorm64(Rms64 *c) {
    for (int n = 0; n < c->N; n++) {
        const double *x = c->inp + (size_t)n * c->C;
        double ss = 0;
        for (int i = 0; i < c->C; i++) ss += x[i] * x[i];
        double rs = 1.0 / sqrt(ss / c->C + 1e-5);
        for (int i = 0; i < c->C; i++) c->out[(size_t)n * c->C + i] = x[i] * rs * c->w[i];
    }
}

static double rmsnorm64_loss(void *p) {
    Rms64 *c = p;
    rmsnorm64(c);
    return proj64(c->out, c->proj, (size_t)c->N * c->C);
}

TEST(fd64_rmsnorm) {
    ops = ops_cpu();
    const int shapes[NTRIALS][2] = {{3, 6}, {4, 5}, {2, 8}};  // N, C
    double w_fwd = 0, w_inp = 0, w_w = 0;
    for (int tr = 0; tr < NTRIALS; tr++) {
        Rng r;
        rng_seed(&r, 201 + tr);
        int N = shapes[tr][0], C = shapes[tr][1];
        size_t n = (size_t)N * C;
        float *inp = xmalloc(n * 4), *w = xmalloc(C * 4), *proj = xmalloc(n * 4), *out = xmalloc(n * 4);
        float *rstd = xmalloc(N * 4), *dinp = xmalloc(n * 4), *dw = xmalloc(C * 4);
        Rms64 c = {xmalloc(n * 8), xmalloc(C * 8), xmalloc(n * 8), proj, N, C};
        draw(inp, c.inp, n, &r, 1);
        for (int i = 0; i < C; i++) w[i] = (float)(1.0 + 0.3 * rng_normal(&r)), c.w[i] = w[i];
        for (size_t i = 0; i < n; i++) proj[i] = (float)rng_normal(&r);

        ops->rmsnorm_fwd(out, rstd, inp, w, N, C);
        rmsnorm64(&c);
        CHECK_RATIO("rmsnorm forward", fwd_diff(out, c.out, n), w_fwd);

        memset(dinp, 0, n * 4), memset(dw, 0, C * 4);  // both accumulate
        ops->rmsnorm_bwd(dinp, dw, proj, inp, w, rstd, N, C);
        CHECK_RATIO("rmsnorm dinp", grad_ratio(rmsnorm64_loss, &c, c.inp, n, dinp), w_inp);
        CHECK_RATIO("rmsnorm dw", grad_ratio(rmsnorm64_loss, &c, c.w, C, dw), w_w);
        free(inp), free(w), free(proj), free(out), free(rstd), free(dinp), free(dw);
        free(c.inp), free(c.w), free(c.out);
    }
    printf("  fd64 rmsnorm     worst ratio %.2e (dinp %.2e, dw %.2e; forward %.2e)\n", fmax(w_inp, w_w), w_inp,
           w_w, w_fwd);
}

// ---- rope: rotate-half on the first n dims of every q and k head of qkv (B, T, 3C) ----------
// The cos/sin tables are inputs of the op (not differentiated): they are built from GIVT.md's cache
// formula in double, rounded to float32 for the op, and the double forward uses those same values.
typedef struct {
    double *qkv, *out, *cos, *sin;
    const float *proj;
    int B, T, C, H, n;
} Rope64;

static void rope64(Rope64 *c) {
    int hd = c->C / c->H, half = c->n / 2;
    size_t row = 3 * (size_t)c->C;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++) {
            const double *x = c->qkv + ((size_t)b * c->T + t) * row;
            double *y = c->out + ((size_t)b * c->T + t) * row;
            const double *cs = c->cos + (size_t)t * c->n, *sn = c->sin + (size_t)t * c->n;
            for (size_t j = 0; j < row; j++) y[j] = x[j];  // v and the dims >= n pass unchanged
            for (int part = 0; part < 2; part++)             // q, k
                for (int h = 0; h < c->H; h++) {
                    int o = part * c->C + h * hd;
                    for (int i = 0; i < c->n; i++) {
                        // rope(x) = x * cos + cat(-x[n/2:n], x[0:n/2]) * sin
                        double rot = i < half ? -x[o + i + half] : x[o + i - half];
                        y[o + i] = x[o + i] * cs[i] + rot * sn[i];
                    }
                }
        }
}

static double rope64_loss(void *p) {
    Rope64 *c = p;
    rope64(c);
    return proj64(c->out, c->proj, (size_t)c->B * c->T * 3 * c->C);
}

TEST(fd64_rope) {
    ops = ops_cpu();
    // B, T, C, H, n_elem: hd 6 with n 4 (partial rotation), hd 4 with n 2, hd 4 with n 4 (full)
    const int shapes[NTRIALS][5] = {{2, 4, 12, 2, 4}, {1, 5, 8, 2, 2}, {2, 3, 8, 2, 4}};
    double w_fwd = 0, w_q = 0;
    for (int tr = 0; tr < NTRIALS; tr++) {
        Rng r;
        rng_seed(&r, 301 + tr);
        int B = shapes[tr][0], T = shapes[tr][1], C = shapes[tr][2], H = shapes[tr][3], n = shapes[tr][4];
        size_t nq = (size_t)B * T * 3 * C, nt = (size_t)T * n;
        float *qkv = xmalloc(nq * 4), *proj = xmalloc(nq * 4), *cs = xmalloc(nt * 4), *sn = xmalloc(nt * 4);
        float *d = xmalloc(nq * 4);
        Rope64 c = {xmalloc(nq * 8), xmalloc(nq * 8), xmalloc(nt * 8), xmalloc(nt * 8), proj, B, T, C, H, n};
        draw(qkv, c.qkv, nq, &r, 1);
        for (size_t i = 0; i < nq; i++) proj[i] = (float)rng_normal(&r);
        const double base = 100.0, condense = 1.5;  // small base so the angles are O(1)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < n / 2; i++) {
                double ang = (t / condense) / pow(base, 2.0 * i / n);
                cs[t * n + i] = cs[t * n + n / 2 + i] = (float)cos(ang);
                sn[t * n + i] = sn[t * n + n / 2 + i] = (float)sin(ang);
            }
        for (size_t i = 0; i < nt; i++) c.cos[i] = cs[i], c.sin[i] = sn[i];

        memcpy(d, qkv, nq * 4);
        ops->rope_fwd(d, cs, sn, B, T, C, H, n);
        rope64(&c);
        CHECK_RATIO("rope forward", fwd_diff(d, c.out, nq), w_fwd);

        memcpy(d, proj, nq * 4);  // in place: dqkv starts as dout
        ops->rope_bwd(d, cs, sn, B, T, C, H, n);
        CHECK_RATIO("rope dqkv", grad_ratio(rope64_loss, &c, c.qkv, nq, d), w_q);
        free(qkv), free(proj), free(cs), free(sn), free(d), free(c.qkv), free(c.out), free(c.cos), free(c.sin);
    }
    printf("  fd64 rope        worst ratio %.2e (dqkv; forward %.2e)\n", w_q, w_fwd);
}

// ---- attention: causal softmax attention, qkv (B, T, 3C) -> out (B, T, C) ------------------
typedef struct {
    double *qkv, *out;
    const float *proj;
    int B, T, C, H;
} Att64;

static void attention64(Att64 *c) {
    int T = c->T, C = c->C, hd = C / c->H;
    double scale = 1.0 / sqrt((double)hd), s[16];
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int t = 0; t < T; t++) {
                const double *q = c->qkv + ((size_t)b * T + t) * 3 * C + h * hd;
                double mx = -INFINITY, sum = 0;
                for (int u = 0; u <= t; u++) {  // position t sees 0..t
                    const double *k = c->qkv + ((size_t)b * T + u) * 3 * C + C + h * hd;
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += q[i] * k[i];
                    s[u] = scale * dot;
                    mx = fmax(mx, s[u]);
                }
                for (int u = 0; u <= t; u++) sum += (s[u] = exp(s[u] - mx));
                double *y = c->out + ((size_t)b * T + t) * C + h * hd;
                for (int i = 0; i < hd; i++) {
                    double acc = 0;
                    for (int u = 0; u <= t; u++)
                        acc += s[u] / sum * c->qkv[((size_t)b * T + u) * 3 * C + 2 * C + h * hd + i];
                    y[i] = acc;
                }
            }
}

static double attention64_loss(void *p) {
    Att64 *c = p;
    attention64(c);
    return proj64(c->out, c->proj, (size_t)c->B * c->T * c->C);
}

TEST(fd64_attention) {
    ops = ops_cpu();
    const int shapes[NTRIALS][4] = {{2, 5, 8, 2}, {1, 3, 6, 2}, {2, 4, 12, 2}};  // B, T, C, H
    double w_fwd = 0, w_q = 0;
    for (int tr = 0; tr < NTRIALS; tr++) {
        Rng r;
        rng_seed(&r, 401 + tr);
        int B = shapes[tr][0], T = shapes[tr][1], C = shapes[tr][2], H = shapes[tr][3];
        size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * H * T * T;
        float *qkv = xmalloc(nq * 4), *proj = xmalloc(no * 4), *out = xmalloc(no * 4), *att = xmalloc(na * 4);
        float *scratch = xmalloc(na * 4), *dqkv = xmalloc(nq * 4);
        Att64 c = {xmalloc(nq * 8), xmalloc(no * 8), proj, B, T, C, H};
        draw(qkv, c.qkv, nq, &r, 1);
        for (size_t i = 0; i < no; i++) proj[i] = (float)rng_normal(&r);

        ops->attention_fwd(out, att, qkv, B, T, C, H);
        attention64(&c);
        CHECK_RATIO("attention forward", fwd_diff(out, c.out, no), w_fwd);

        ops->attention_bwd(dqkv, scratch, proj, qkv, att, B, T, C, H);
        CHECK_RATIO("attention dqkv", grad_ratio(attention64_loss, &c, c.qkv, nq, dqkv), w_q);
        free(qkv), free(proj), free(out), free(att), free(scratch), free(dqkv), free(c.qkv), free(c.out);
    }
    printf("  fd64 attention   worst ratio %.2e (dqkv; forward %.2e)\n", w_q, w_fwd);
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

TEST(fd64_swiglu) {
    ops = ops_cpu();
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

        ops->swiglu_fwd(out, h, N, F);
        swiglu64(&c);
        CHECK_RATIO("swiglu forward", fwd_diff(out, c.out, no), w_fwd);

        ops->swiglu_bwd(dh, proj, h, N, F);
        CHECK_RATIO("swiglu dh", grad_ratio(swiglu64_loss, &c, c.h, nh, dh), w_h);
        free(h), free(proj), free(out), free(dh), free(c.h), free(c.out);
    }
    printf("  fd64 swiglu      worst ratio %.2e (dh; forward %.2e)\n", w_h, w_fwd);
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

TEST(fd64_shift_bos) {
    ops = ops_cpu();
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

        ops->shift_bos(in, x, bos, B, T, D);
        shift64(&c);
        CHECK_RATIO("shift_bos forward", fwd_diff(in, c.out, n), w_fwd);

        memset(dbos, 0, D * 4);  // accumulates
        ops->shift_bos_bwd(dbos, proj, B, T, D);
        CHECK_RATIO("shift_bos dbos", grad_ratio(shift64_loss, &c, c.bos, D, dbos), w_b);
        free(x), free(bos), free(proj), free(in), free(dbos), free(c.x), free(c.bos), free(c.out);
    }
    printf("  fd64 shift_bos   worst ratio %.2e (dbos; forward %.2e)\n", w_b, w_fwd);
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

TEST(fd64_gaussian_nll) {
    ops = ops_cpu();
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

        double got = ops->gaussian_nll(dy, y, x, N, D, c.eps, s);
        double want = nll64_loss(&c) / c.s;
        double fr = fabs(got - want) / fabs(want);  // std is rounded to float32 in the op: ~1e-7
        CHECK(fr <= FD64_TOL, "gaussian_nll forward: %.10g vs double %.10g", got, want);
        if (fr > w_fwd) w_fwd = fr;
        // and element by element (N = D = 1 calls), so that no term hides in the sum
        for (int n = 0; n < N; n++)
            for (int d = 0; d < D; d++) {
                float y1[2] = {y[(size_t)n * 2 * D + d], y[(size_t)n * 2 * D + D + d]}, x1 = x[(size_t)n * D + d];
                Nll64 c1 = {(double[2]){y1[0], y1[1]}, (double[1]){x1}, c.eps, 1.0, 1, 1};
                double g1 = ops->gaussian_nll(NULL, y1, &x1, 1, 1, c.eps, 1.0f), w1 = nll64_loss(&c1);
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
}
