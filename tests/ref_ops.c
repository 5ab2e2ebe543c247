// ref_ops: the double-precision reference ops (ref_ops.h). Straight loops, one formula each; speed
// does not matter (the test shapes are small), clarity does.
#include "ref_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

double *refop_widen(const float *f, size_t n) {
    double *d = xmalloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = f[i];
    return d;
}

double *refop_zeros(size_t n) { return xcalloc(n ? n : 1, sizeof(double)); }

// ---- matmul ----------------------------------------------------------------------------------------
void refop_matmul_fwd(double *out, const double *inp, const double *w, int N, int K, int M) {
    for (int n = 0; n < N; n++)
        for (int m = 0; m < M; m++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += inp[(size_t)n * K + k] * w[(size_t)m * K + k];
            out[(size_t)n * M + m] = s;
        }
}

void refop_matmul_bwd(double *dinp, double *dw, const double *dout, const double *inp, const double *w, int N, int K,
                      int M) {
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int m = 0; m < M; m++) s += dout[(size_t)n * M + m] * w[(size_t)m * K + k];
            dinp[(size_t)n * K + k] = s;
        }
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * M + m] * inp[(size_t)n * K + k];
            dw[(size_t)m * K + k] = s;
        }
}

// ---- residual add + RMSNorm ------------------------------------------------------------------------
static double rms_rstd(const double *x, int C) {
    double ss = 0;
    for (int c = 0; c < C; c++) ss += x[c] * x[c];
    return 1.0 / sqrt(ss / C + REFOP_RMSNORM_EPS);
}

void refop_rmsnorm_fwd(double *out, double *rstd, double *res, const double *in, const double *branch,
                       const double *w, int N, int C) {
    double *x = refop_zeros((size_t)C);
    for (int n = 0; n < N; n++) {
        size_t o = (size_t)n * C;
        for (int c = 0; c < C; c++) x[c] = in[o + c] + (branch ? branch[o + c] : 0.0);
        if (res) memcpy(res + o, x, (size_t)C * sizeof(double));
        double rs = rms_rstd(x, C);
        if (rstd) rstd[n] = rs;
        for (int c = 0; c < C; c++) out[o + c] = x[c] * rs * w[c];
    }
    free(x);
}

void refop_rmsnorm_bwd(double *dx, double *dw, const double *g, const double *x, const double *w, int N, int C) {
    memset(dw, 0, (size_t)C * sizeof(double));
    for (int n = 0; n < N; n++) {
        const double *xr = x + (size_t)n * C, *gr = g + (size_t)n * C;
        double rs = rms_rstd(xr, C), dot = 0;
        for (int c = 0; c < C; c++) dot += w[c] * gr[c] * xr[c];
        for (int c = 0; c < C; c++) {
            dx[(size_t)n * C + c] = rs * w[c] * gr[c] - xr[c] * rs * rs * rs / C * dot;
            dw[c] += gr[c] * xr[c] * rs;
        }
    }
}

// ---- RoPE ------------------------------------------------------------------------------------------
void refop_rope_row(double *y, const double *x, int H, int hd, int n, const float *cs, const float *sn) {
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

// dx_i = dy_i c_i + dy_{i+h} s_{i+h}, dx_{i+h} = dy_{i+h} c_{i+h} - dy_i s_i (h = n/2); dims >= n copied
void refop_rope_row_t(double *dx, const double *dy, int H, int hd, int n, const float *cs, const float *sn) {
    int half = n / 2;
    for (int h = 0; h < H; h++) {
        const double *g = dy + (size_t)h * hd;
        double *o = dx + (size_t)h * hd;
        for (int i = 0; i < hd; i++) o[i] = g[i];
        for (int i = 0; i < half; i++) {
            o[i] = g[i] * cs[i] + g[i + half] * sn[i + half];
            o[i + half] = g[i + half] * cs[i + half] - g[i] * sn[i];
        }
    }
}

void refop_rope_tables(float *cs, float *sn, int rows, int n, double base, double condense) {
    for (int t = 0; t < rows; t++)
        for (int i = 0; i < n / 2; i++) {
            double ang = (t / condense) / pow(base, 2.0 * i / n);
            cs[t * n + i] = cs[t * n + n / 2 + i] = (float)cos(ang);
            sn[t * n + i] = sn[t * n + n / 2 + i] = (float)sin(ang);
        }
}

// ---- attention -------------------------------------------------------------------------------------
// Offset of head h of token t of sequence b in a dense (B, T, C) array.
static size_t att_at(const AttnShape *s, int T, int b, int t, int h) {
    return ((size_t)b * T + t) * (size_t)(s->H * s->hd) + (size_t)h * s->hd;
}

// qr = rope(q) at positions pos0 + t; kr = rope(k) at positions u >= pos0, k's earlier rows copied.
static void att_rotate(const RefOpAttn *a) {
    const AttnShape *s = a->s;
    int n = s->n_rot;
    size_t C = (size_t)s->H * s->hd;
    for (int b = 0; b < s->B; b++) {
        for (int t = 0; t < s->Tq; t++) {
            size_t o = att_at(s, s->Tq, b, t, 0), p = (size_t)(s->pos0 + t) * n;
            refop_rope_row(a->qr + o, a->q + o, s->H, s->hd, n, a->cos + p, a->sin + p);
        }
        for (int u = 0; u < s->Tk; u++) {
            size_t o = att_at(s, s->Tk, b, u, 0), p = (size_t)u * n;
            if (u < s->pos0)
                memcpy(a->kr + o, a->k + o, C * sizeof(double));
            else
                refop_rope_row(a->kr + o, a->k + o, s->H, s->hd, n, a->cos + p, a->sin + p);
        }
    }
}

// Query t of head h of sequence b: P (pos0 + t + 1) = softmax(scale qr kr^T) over the keys it sees
// (shifted by the largest score), out = P v.
static void att_row_fwd(const RefOpAttn *a, int b, int h, int t, double *P) {
    const AttnShape *s = a->s;
    int last = s->pos0 + t, hd = s->hd;
    const double *q = a->qr + att_at(s, s->Tq, b, t, h);
    double scale = 1.0 / sqrt((double)hd), mx = -INFINITY, sum = 0;
    for (int u = 0; u <= last; u++) {
        const double *k = a->kr + att_at(s, s->Tk, b, u, h);
        double dot = 0;
        for (int i = 0; i < hd; i++) dot += q[i] * k[i];
        P[u] = scale * dot;
        mx = fmax(mx, P[u]);
    }
    for (int u = 0; u <= last; u++) sum += (P[u] = exp(P[u] - mx));
    for (int u = 0; u <= last; u++) P[u] /= sum;
    double *y = a->out + att_at(s, s->Tq, b, t, h);
    for (int i = 0; i < hd; i++) {
        double acc = 0;
        for (int u = 0; u <= last; u++) acc += P[u] * a->v[att_at(s, s->Tk, b, u, h) + i];
        y[i] = acc;
    }
}

// The backward of that row (out = P v, P = softmax(S), S = scale qr kr^T) for its dout g: dv += P^T g,
// dP = g v^T, dS = P (dP - sum(dP P)) scale, dqr += dS kr, dkr += dS^T qr.
static void att_row_bwd(const RefOpAttn *a, int b, int h, int t, const double *P, double *dP, double *dqr,
                        double *dkr) {
    const AttnShape *s = a->s;
    int last = s->pos0 + t, hd = s->hd;
    const double *g = a->dout + att_at(s, s->Tq, b, t, h), *q = a->qr + att_at(s, s->Tq, b, t, h);
    double scale = 1.0 / sqrt((double)hd), dot = 0;
    for (int u = 0; u <= last; u++) {
        const double *v = a->v + att_at(s, s->Tk, b, u, h);
        double *dv = a->dv + att_at(s, s->Tk, b, u, h);
        dP[u] = 0;
        for (int i = 0; i < hd; i++) dP[u] += g[i] * v[i], dv[i] += P[u] * g[i];
        dot += dP[u] * P[u];
    }
    double *dq = dqr + att_at(s, s->Tq, b, t, h);
    for (int u = 0; u <= last; u++) {
        double dS = P[u] * (dP[u] - dot) * scale;
        const double *k = a->kr + att_at(s, s->Tk, b, u, h);
        double *dk = dkr + att_at(s, s->Tk, b, u, h);
        for (int i = 0; i < hd; i++) dq[i] += dS * k[i], dk[i] += dS * q[i];
    }
}

// dq, dk = rope^T of dqr, dkr (training: pos0 = 0, every key rotated at its position)
static void att_unrotate(const RefOpAttn *a, const double *dqr, const double *dkr) {
    const AttnShape *s = a->s;
    int n = s->n_rot;
    for (int b = 0; b < s->B; b++) {
        for (int t = 0; t < s->Tq; t++) {
            size_t o = att_at(s, s->Tq, b, t, 0), p = (size_t)t * n;
            refop_rope_row_t(a->dq + o, dqr + o, s->H, s->hd, n, a->cos + p, a->sin + p);
        }
        for (int u = 0; u < s->Tk; u++) {
            size_t o = att_at(s, s->Tk, b, u, 0), p = (size_t)u * n;
            refop_rope_row_t(a->dk + o, dkr + o, s->H, s->hd, n, a->cos + p, a->sin + p);
        }
    }
}

void refop_attention(const RefOpAttn *a) {
    const AttnShape *s = a->s;
    size_t C = (size_t)s->H * s->hd, nq = (size_t)s->B * s->Tq * C, nk = (size_t)s->B * s->Tk * C;
    if (a->dout && s->pos0 != 0) givt_die("refop_attention: the backward is for training shapes (pos0 = 0)");
    att_rotate(a);
    double *P = refop_zeros((size_t)s->Tk), *dP = refop_zeros((size_t)s->Tk);
    double *dqr = a->dout ? refop_zeros(nq) : NULL, *dkr = a->dout ? refop_zeros(nk) : NULL;
    if (a->dout) memset(a->dv, 0, nk * sizeof(double));
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int t = 0; t < s->Tq; t++) {
                att_row_fwd(a, b, h, t, P);
                if (a->dout) att_row_bwd(a, b, h, t, P, dP, dqr, dkr);
            }
    if (a->dout) att_unrotate(a, dqr, dkr);
    free(P), free(dP), free(dqr), free(dkr);
}

// ---- SwiGLU ----------------------------------------------------------------------------------------
static double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

void refop_swiglu_fwd(double *out, const double *h, int N, int F) {
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            double a = h[(size_t)n * 2 * F + f], b = h[(size_t)n * 2 * F + F + f];
            out[(size_t)n * F + f] = a * sigmoid(a) * b;
        }
}

void refop_swiglu_bwd(double *dh, const double *dout, const double *h, int N, int F) {
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            double a = h[(size_t)n * 2 * F + f], b = h[(size_t)n * 2 * F + F + f], s = sigmoid(a);
            double g = dout[(size_t)n * F + f];
            dh[(size_t)n * 2 * F + f] = g * b * (s + a * s * (1.0 - s));
            dh[(size_t)n * 2 * F + F + f] = g * a * s;
        }
}

// ---- input shift and class embedding ---------------------------------------------------------------
void refop_shift_bos(double *out, const double *x, const double *bos, int B, int T, int D) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++)
                out[((size_t)b * T + t) * D + d] = t == 0 ? bos[d] : x[((size_t)b * T + t - 1) * D + d];
}

void refop_shift_bos_bwd(double *dbos, const double *din, int B, int T, int D) {
    memset(dbos, 0, (size_t)D * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++) dbos[d] += din[(size_t)b * T * D + d];
}

void refop_class_embed_fwd(double *res, const double *table, const int32_t *labels, int B, int T, int C) {
    for (int b = 0; b < B; b++)
        memcpy(res + (size_t)b * T * C, table + (size_t)labels[b] * C, (size_t)C * sizeof(double));
}

void refop_class_embed_bwd(double *dtable, double *dres, const int32_t *labels, int B, int T, int C, int rows) {
    memset(dtable, 0, (size_t)rows * C * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            double *g = dres + (size_t)b * T * C + c;
            dtable[(size_t)labels[b] * C + c] += *g;
            *g = 0.0;
        }
}

// ---- the heads' losses -----------------------------------------------------------------------------
double refop_softplus(double z) { return z > REFOP_SOFTPLUS_THRESHOLD ? z : log1p(exp(z)); }
static double softplus_grad(double z) { return z > REFOP_SOFTPLUS_THRESHOLD ? 1.0 : sigmoid(z); }

// One element: l = 0.5 (log var + e^2 / var), e = x - mu; its gradients (scaled by scale) into *dmu,
// *dpre when dmu is not NULL (straight through the clamp var = max(std^2, eps)).
static double nll_elem(double mu, double pre, double x, double eps, double scale, double *dmu, double *dpre) {
    double sd = refop_softplus(pre) + eps, var = fmax(sd * sd, eps), e = x - mu;
    if (dmu) {
        *dmu = scale * (-e / var);
        *dpre = scale * 0.5 * (1.0 / var - e * e / (var * var)) * 2.0 * sd * softplus_grad(pre);
    }
    return 0.5 * (log(var) + e * e / var);
}

double refop_gaussian_nll(double *dy, const double *y, const double *x, int N, int D, double eps, double scale) {
    double sum = 0;
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            size_t im = (size_t)n * 2 * D + d, ip = im + D;
            sum += nll_elem(y[im], y[ip], x[(size_t)n * D + d], eps, scale, dy ? dy + im : NULL, dy ? dy + ip : NULL);
        }
    return sum;
}

size_t refop_mixture_width(int D, int K) { return K == 1 ? 2 * (size_t)D : (size_t)K + 2 * (size_t)K * D; }

// log_softmax of the K logits (K = 1: log pi = 0)
static void log_softmax(double *logpi, const double *lg, int K) {
    if (K == 1) {
        logpi[0] = 0.0;
        return;
    }
    double mx = -INFINITY, s = 0;
    for (int k = 0; k < K; k++) mx = fmax(mx, lg[k]);
    for (int k = 0; k < K; k++) s += exp(lg[k] - mx);
    for (int k = 0; k < K; k++) logpi[k] = lg[k] - mx - log(s);
}

// One row (y (W), x (D)): returns l; dy (W) = scale * dl/dy when not NULL. With r_k = exp(lp_k + l)
// (the posterior of component k): dlogit_k = pi_k - r_k, component k's mu and pre get r_k times the
// Gaussian's gradients.
static double mixture_row(double *dy, const double *y, const double *x, int D, int K, double eps, double scale) {
    const double *lg = y, *mu = y + (K > 1 ? K : 0), *pre = mu + (size_t)K * D;
    double *lp = refop_zeros((size_t)K), *logpi = refop_zeros((size_t)K), mx = -INFINITY, s = 0;
    log_softmax(logpi, lg, K);
    for (int k = 0; k < K; k++) {
        lp[k] = logpi[k];
        for (int d = 0; d < D; d++) lp[k] -= nll_elem(mu[k * D + d], pre[k * D + d], x[d], eps, 0, NULL, NULL);
        mx = fmax(mx, lp[k]);
    }
    for (int k = 0; k < K; k++) s += exp(lp[k] - mx);
    double l = -(mx + log(s));
    if (dy) {
        double *dlg = dy, *dmu = dy + (K > 1 ? K : 0), *dpre = dmu + (size_t)K * D;
        for (int k = 0; k < K; k++) {
            double r = exp(lp[k] + l);
            if (K > 1) dlg[k] = scale * (exp(logpi[k]) - r);
            for (int d = 0; d < D; d++)
                nll_elem(mu[k * D + d], pre[k * D + d], x[d], eps, scale * r, dmu + k * D + d, dpre + k * D + d);
        }
    }
    free(lp), free(logpi);
    return l;
}

double refop_mixture_nll(double *dy, const double *y, const double *x, int N, int D, int K, double eps, double scale) {
    size_t W = refop_mixture_width(D, K);
    double sum = 0;
    for (int n = 0; n < N; n++)
        sum += mixture_row(dy ? dy + n * W : NULL, y + n * W, x + (size_t)n * D, D, K, eps, scale);
    return sum;
}

// ---- optimizer ops ---------------------------------------------------------------------------------
double refop_sumsq(const double *p, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += p[i] * p[i];
    return s;
}

void refop_adamw(double *p, double *m, double *v, double *ema, const double *g, size_t n, const RefOpAdamW *h) {
    double c1 = 1 - pow(h->beta1, h->t), c2 = 1 - pow(h->beta2, h->t);
    for (size_t i = 0; i < n; i++) {
        double gi = g[i] * h->grad_scale;
        p[i] *= 1.0 - h->lr * h->weight_decay;
        m[i] = h->beta1 * m[i] + (1 - h->beta1) * gi;
        v[i] = h->beta2 * v[i] + (1 - h->beta2) * gi * gi;
        p[i] -= h->lr / c1 * m[i] / (sqrt(v[i]) / sqrt(c2) + h->eps);
    }
    if (ema) refop_ema_update(ema, p, n, h->ema_decay);
}

void refop_ema_update(double *ema, const double *p, size_t n, double decay) {
    for (size_t i = 0; i < n; i++) ema[i] = decay * ema[i] + (1.0 - decay) * p[i];
}

// ---- strided copies ----------------------------------------------------------------------------------
void refop_copy_rows(double *dst, size_t dst_row, size_t dst_batch, const double *src, size_t src_row,
                     size_t src_batch, int B, int rows, int width) {
    for (int b = 0; b < B; b++)
        for (int r = 0; r < rows; r++)
            memcpy(dst + b * dst_batch + r * dst_row, src + b * src_batch + r * src_row,
                   (size_t)width * sizeof(double));
}

// ---- the attention tests' layouts ------------------------------------------------------------------
RefOpAttLayout refop_att_layout(const RefOpAttCase *ac) {
    int C = ac->H * ac->hd, Tk = ac->pos0 + ac->Tq;
    RefOpAttLayout L = {.s = {.B = ac->B, .H = ac->H, .hd = ac->hd, .Tq = ac->Tq, .Tk = Tk, .pos0 = ac->pos0,
                              .n_rot = ac->n}};
    if (ac->shared) {  // one (B, Tk, 3C) buffer; with pos0 > 0 the queries are its last Tq rows
        L.s.q_row = L.s.kv_row = 3 * (size_t)C;
        L.s.q_batch = L.s.kv_batch = (size_t)Tk * 3 * C;
        L.nq = (size_t)ac->B * L.s.q_batch, L.nkv = 0;
        L.qoff = (size_t)ac->pos0 * 3 * C, L.koff = (size_t)C, L.voff = 2 * (size_t)C;
    } else {
        L.s.q_row = (size_t)C + ac->qr_pad, L.s.q_batch = (size_t)ac->Tq * L.s.q_row + ac->qb_pad;
        L.s.kv_row = (size_t)C + ac->kr_pad, L.s.kv_batch = (size_t)(Tk + ac->kcap_pad) * L.s.kv_row + ac->kb_pad;
        L.nq = (size_t)ac->B * L.s.q_batch, L.nkv = (size_t)ac->B * L.s.kv_batch;
    }
    return L;
}
