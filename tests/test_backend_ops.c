// test_backend_ops: one test of every op of ops.h on every backend, in the pattern of ggml's
// test-backend-ops. For each backend of the registry that backend_available() says can be opened
// here (with precision "no", and again with "bf16" when that gives another compute dtype), and for
// every op, on random inputs (fixed seeds, no all-zero tensors) at several shapes, odd ones included
// (T = 1, T = 37, T = 70 across the CPU backend's 64-row attention blocks and the CUDA kernels' tiles,
// head dims 6 to 128 (40, 48 not multiples of 16), B = 3, N and C not multiples of anything), the op's results are compared
//   - with an independent double-precision computation written here (naive loops: the forward
//     formula of GIVT.md / ops.h, and for backward ops the vector-Jacobian product derived by hand),
//     on every backend, the CPU backend included (comparing it with itself would prove nothing);
//   - with the CPU backend's results on the same inputs (the reference backend), on every other
//     backend.
// Inputs are drawn in float32 and rounded to the backend's compute dtype before both backends and
// the double reference see them, so only the arithmetic differs. All memory traffic goes through the
// backend's own ops (alloc, upload, download, free; a bf16 buffer is converted on the host), so a
// new backend (CUDA) joins these tests by being registered.
//
// Error measure, per output: err = max(||got - want||_2 / ||want||_2, max|got - want| / max|want|),
// the norm-wise relative error and the largest absolute error relative to the largest reference
// value; a non-finite result where a finite one is expected is an infinite error. For accumulating
// outputs (dw, dres, dbos, the loss and sumsq scalars, AdamW's and the EMA's updates) the increment
// (result minus prefill) is compared, so that the prefill's size cannot hide a wrong increment.
// Tolerances (err <= tol):
//   float32 compute: 1e-5 (measured ~1e-7..1e-6 on the CPU backend against double: float32 dot
//     products of up to 288 terms, a float32 softmax; a TF32 matmul would fail it, on purpose);
//   bf16 compute:    1e-2 (bf16 keeps 8 bits: 2^-9 = 2e-3 per rounding, a few roundings deep);
//   ops on float32 data only (AdamW, the EMA, to_compute's float32 path): 1e-5 whatever the compute
//     dtype; sumsq: 1e-12 (ops.h: double accumulation of the exact double squares of float32 values).
// Exact checks besides: a float32 residual add is the float32 sum bit for bit; the bos shift and a
// float32 to_compute are copies; the EMA with decay 0 is a copy (model_weights_copy relies on it);
// every output buffer carries a guard of sentinel elements after it that must stay as they were;
// outputs that ops.h says are overwritten start as NaN (an element the op skips stays NaN and
// fails); strided attention views have NaN padding that must neither be read (it would poison the
// output) nor written.
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "harness.h"
#include "ops.h"
#include "rng.h"
#include "util.h"

#define TOL_F32 1e-5
#define TOL_BF16 1e-2
#define TOL_SUMSQ 1e-12
#define GUARD 17            // sentinel elements after every output buffer
#define SENTINEL -1024.0f   // exact in float32 and bf16

// ---- backends ---------------------------------------------------------------------------------
typedef struct {
    Backend *be;      // under test
    Backend *cpu;     // the reference backend (be itself when be is the CPU backend)
    char label[24];   // "cpu", "cuda", "cuda/bf16"
    double tol;       // for outputs computed from compute-dtype tensors
    int is_cpu;
} Target;

typedef void (*OpTest)(const Target *t);

// Runs fn on every available backend of the registry, once per distinct compute dtype.
static void for_each_backend(OpTest fn) {
    const char *precisions[2] = {"no", "bf16"};
    for (int i = 0; i < backend_registry_count(); i++) {
        const char *name = backend_registry_name(i);
        char why[256] = "";
        if (!backend_available(name, why, sizeof why)) {
            printf("  %-9s not available here: %s\n", name, why);
            continue;
        }
        int seen[2] = {0, 0};
        for (int p = 0; p < 2; p++) {
            Backend *be = backend_open(name, precisions[p]);
            CHECK(be != NULL, "backend_open(%s, %s): %s", name, precisions[p], givt_last_error());
            if (!be) continue;
            int dt = be->compute == DTYPE_BF16;
            if (seen[dt]) {  // e.g. the CPU backend computes in float32 when asked for bf16
                backend_close(be);
                continue;
            }
            seen[dt] = 1;
            Target t = {.be = be, .is_cpu = !strcmp(name, "cpu")};
            t.tol = be->compute == DTYPE_F32 ? TOL_F32 : TOL_BF16;
            snprintf(t.label, sizeof t.label, "%s%s", name, be->compute == DTYPE_F32 ? "" : "/bf16");
            t.cpu = t.is_cpu ? be : backend_open("cpu", "no");
            CHECK(t.cpu != NULL, "backend_open(cpu): %s", givt_last_error());
            if (t.cpu) fn(&t);
            if (!t.is_cpu && t.cpu) backend_close(t.cpu);
            backend_close(be);
        }
    }
}

// ---- memory through the backend's ops ---------------------------------------------------------
static size_t esize(Backend *be) { return dtype_size(be->compute); }

static void *dalloc(Backend *be, size_t bytes) { return be->ops->alloc(be, bytes ? bytes : 16); }
static void dfree(Backend *be, void *p) {
    if (p) be->ops->free(be, p);
}

// n floats (plus the guard) into a new buffer of the compute dtype (compute) or of float32
static void *put(Backend *be, const float *h, size_t n, int compute) {
    if (n > ((size_t)1 << 40)) givt_die("put: %zu elements", n);
    size_t N = n + GUARD, E = compute ? esize(be) : sizeof(float);
    void *d = dalloc(be, N * E);
    float *tmp = xmalloc(N * sizeof(float));
    if (h) memcpy(tmp, h, n * sizeof(float));
    for (size_t i = h ? n : 0; i < N; i++) tmp[i] = i < n ? NAN : SENTINEL;  // h NULL: NaN (overwritten)
    if (E == sizeof(float)) {
        be->ops->upload(be, d, tmp, N * E);
    } else {
        uint16_t *b = xmalloc(N * 2);
        for (size_t i = 0; i < N; i++) b[i] = half_f32_to_bf16(tmp[i]);
        be->ops->upload(be, d, b, N * 2);
        free(b);
    }
    free(tmp);
    return d;
}
static cval *put_c(Backend *be, const float *h, size_t n) { return put(be, h, n, 1); }
static float *put_f(Backend *be, const float *h, size_t n) { return put(be, h, n, 0); }

// n floats back from a buffer made by put; returns the number of guard elements that changed
static int get(Backend *be, float *h, const void *d, size_t n, int compute) {
    if (n > ((size_t)1 << 40)) givt_die("get: %zu elements", n);
    size_t N = n + GUARD, E = compute ? esize(be) : sizeof(float);
    float *tmp = xmalloc(N * sizeof(float));
    if (E == sizeof(float)) {
        be->ops->download(be, tmp, d, N * E);
    } else {
        uint16_t *b = xmalloc(N * 2);
        be->ops->download(be, b, d, N * 2);
        for (size_t i = 0; i < N; i++) tmp[i] = half_bf16_to_f32(b[i]);
        free(b);
    }
    if (h) memcpy(h, tmp, n * sizeof(float));
    int bad = 0;
    for (size_t i = n; i < N; i++) bad += tmp[i] != SENTINEL;
    free(tmp);
    return bad;
}
static int get_c(Backend *be, float *h, const cval *d, size_t n) { return get(be, h, d, n, 1); }
static int get_f(Backend *be, float *h, const float *d, size_t n) { return get(be, h, d, n, 0); }

static double *put_scalar(Backend *be, double v) {
    double *d = dalloc(be, sizeof(double));
    be->ops->upload(be, d, &v, sizeof v);
    return d;
}
static double get_scalar(Backend *be, const double *d) {
    double v;
    be->ops->download(be, &v, d, sizeof v);
    return v;
}

// Element i of a compute buffer.
static cval *cat_c(Backend *be, cval *p, size_t i) { return (cval *)(void *)((char *)p + i * esize(be)); }

// ---- host data --------------------------------------------------------------------------------
static void quantize(DType t, float *p, size_t n) {
    if (t == DTYPE_BF16)
        for (size_t i = 0; i < n; i++) p[i] = half_bf16_to_f32(half_f32_to_bf16(p[i]));
}

// n values N(0, scale^2) in float32, rounded to dtype t
static float *randn(Rng *r, size_t n, double scale, DType t) {
    float *p = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = (float)(scale * rng_normal(r));
    quantize(t, p, n);
    return p;
}

static double *dnew(size_t n) { return xcalloc(n ? n : 1, sizeof(double)); }

// ---- errors and the report line ---------------------------------------------------------------
// max(norm-wise relative, max-abs relative to max |want|); INFINITY when got is not finite
static double rel_err(const double *got, const double *want, size_t n) {
    double dd = 0, ww = 0, md = 0, mw = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        double d = got[i] - want[i];
        dd += d * d, ww += want[i] * want[i];
        md = fmax(md, fabs(d)), mw = fmax(mw, fabs(want[i]));
    }
    if (mw == 0) return md;  // an all-zero reference: absolute
    return fmax(sqrt(dd) / sqrt(ww), md / mw);
}

// got (minus base, when not NULL) widened to double
static double *widen_inc(const float *got, const float *base, size_t n) {
    double *d = dnew(n);
    for (size_t i = 0; i < n; i++) d[i] = (double)got[i] - (base ? (double)base[i] : 0.0);
    return d;
}

typedef struct {
    const Target *t;
    const char *op;
    char shape[64];
    char text[512];
    size_t len;
    double tol;
} Line;

static void line_begin(Line *L, const Target *t, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void line_begin(Line *L, const Target *t, const char *op, const char *fmt, ...) {
    memset(L, 0, sizeof *L);
    L->t = t, L->op = op, L->tol = t->tol;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->shape, sizeof L->shape, fmt, ap);
    va_end(ap);
    L->len = (size_t)snprintf(L->text, sizeof L->text, "  %-9s %-21s %-46s", t->label, op, L->shape);
}

static void line_append(Line *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line_append(Line *L, const char *fmt, ...) {
    if (L->len >= sizeof L->text) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(L->text + L->len, sizeof L->text - L->len, fmt, ap);
    va_end(ap);
    if (k > 0) L->len += (size_t)k;
}

// got (n) against the double reference want, and against the CPU backend's cpu (NULL on the CPU
// backend); base: the prefill of an accumulating output (NULL otherwise): the increments are compared
static void line_cmp(Line *L, const char *what, const float *got, const float *base, const double *want,
                     const float *cpu, const float *cpu_base, size_t n, double tol) {
    double *g = widen_inc(got, base, n);
    double e = rel_err(g, want, n), ec = -1;
    if (cpu && !L->t->is_cpu) {
        double *c = widen_inc(cpu, cpu_base, n);
        ec = rel_err(g, c, n);
        free(c);
    }
    free(g);
    CHECK(e <= tol, "%s %s %s: %s err %.3g against double (tol %g)", L->t->label, L->op, L->shape, what, e, tol);
    if (ec >= 0)
        CHECK(ec <= tol, "%s %s %s: %s err %.3g against the cpu backend (tol %g)", L->t->label, L->op, L->shape,
              what, ec, tol);
    line_append(L, " %s %.1e", what, e);
    if (ec >= 0) line_append(L, " (cpu %.1e)", ec);
    if (tol != L->tol) line_append(L, tol > 0 ? " [tol %.0e]" : " [exact]", tol);
}

// A scalar result (an increment of a prefilled backend scalar).
static void line_cmp_scalar(Line *L, const char *what, double got, double want, double cpu, double tol) {
    double e = isfinite(got) ? fabs(got - want) / fabs(want) : INFINITY;
    double ec = L->t->is_cpu ? -1 : (isfinite(got) ? fabs(got - cpu) / fabs(cpu) : INFINITY);
    CHECK(e <= tol, "%s %s %s: %s = %.17g, double %.17g: err %.3g (tol %g)", L->t->label, L->op, L->shape, what, got,
          want, e, tol);
    if (ec >= 0)
        CHECK(ec <= tol, "%s %s %s: %s = %.17g, cpu %.17g: err %.3g (tol %g)", L->t->label, L->op, L->shape, what,
              got, cpu, ec, tol);
    line_append(L, " %s %.1e", what, e);
    if (ec >= 0) line_append(L, " (cpu %.1e)", ec);
    if (tol != L->tol) line_append(L, tol > 0 ? " [tol %.0e]" : " [exact]", tol);
}

// An exact property: bad must be 0 (guard elements changed, elements that must be copies, ...).
static void line_exact(Line *L, const char *what, int bad) {
    CHECK(bad == 0, "%s %s %s: %s: %d elements wrong", L->t->label, L->op, L->shape, what, bad);
    if (bad) line_append(L, " %s: %d WRONG", what, bad);
}

static void line_end(Line *L) {
    if (L->tol > 0)
        printf("%s  (tol %.0e)\n", L->text, L->tol);
    else
        printf("%s  (exact)\n", L->text);
}

// ---- to_compute ---------------------------------------------------------------------------------
static void t_to_compute(const Target *t) {
    const size_t sizes[] = {1, 37, 4099};
    for (int si = 0; si < 3; si++) {
        size_t n = sizes[si];
        Rng r;
        rng_seed(&r, 1000 + si);
        float *src = randn(&r, n, 3.0, DTYPE_F32), *got = xmalloc(n * 4);  // float32 values, not rounded
        double *want = dnew(n);
        for (size_t i = 0; i < n; i++) want[i] = src[i];
        Backend *be = t->be;
        float *d = put_f(be, src, n);
        cval *c = put_c(be, NULL, n);
        be->ops->to_compute(be, c, d, n);
        int guard = get_c(be, got, c, n);
        Line L;
        line_begin(&L, t, "to_compute", "n=%zu", n);
        if (be->compute == DTYPE_F32) L.tol = 0;  // float32 to float32: a copy
        line_cmp(&L, "dst", got, NULL, want, NULL, NULL, n, be->compute == DTYPE_F32 ? 0.0 : TOL_BF16);
        line_exact(&L, "guard", guard);
        if (be->compute == DTYPE_F32) {
            // the compute copy of float32 weights is the weights themselves: dst == src leaves them
            be->ops->to_compute(be, (cval *)(void *)d, d, n);
            guard = get_f(be, got, d, n);
            int bad = 0;
            for (size_t i = 0; i < n; i++) bad += got[i] != src[i];
            line_exact(&L, "in place", bad + guard);
        }
        line_end(&L);
        dfree(be, d), dfree(be, c);
        free(src), free(got), free(want);
    }
}
TEST(backend_ops_to_compute) { for_each_backend(t_to_compute); }

// ---- memory ops ---------------------------------------------------------------------------------
static void t_memory(const Target *t) {
    Backend *be = t->be;
    const size_t sizes[] = {1, 148, 1u << 20};
    int bad = 0;
    for (int si = 0; si < 3; si++) {
        size_t n = sizes[si];
        unsigned char *h = xmalloc(n), *back = xmalloc(n);
        unsigned char *p = be->ops->alloc(be, n);
        be->ops->download(be, back, p, n);
        for (size_t i = 0; i < n; i++) bad += back[i] != 0;  // alloc zero-fills
        for (size_t i = 0; i < n; i++) h[i] = (unsigned char)(i * 131 + 7 + si);
        be->ops->upload(be, p, h, n);
        be->ops->download(be, back, p, n);
        bad += memcmp(h, back, n) != 0;
        be->ops->zero(be, p + n / 2, n - n / 2);  // zero the second half only
        be->ops->synchronize(be);
        be->ops->download(be, back, p, n);
        for (size_t i = 0; i < n; i++) bad += back[i] != (i < n / 2 ? h[i] : 0);
        unsigned char *q = be->ops->alloc(be, n);  // copy: backend to backend, NaN bit patterns too
        be->ops->upload(be, p, h, n);
        be->ops->copy(be, q, p, n);
        be->ops->download(be, back, q, n);
        bad += memcmp(h, back, n) != 0;
        be->ops->free(be, q);
        be->ops->free(be, p);
        free(h), free(back);
    }
    size_t fb = 0, tb = 0;
    be->ops->mem_info(be, &fb, &tb);
    Line L;
    line_begin(&L, t, "alloc/upload/download/copy", "1 B, 148 B, 1 MiB");
    L.tol = 0;
    line_exact(&L, "alloc zero-fills, round trip, zero, copy", bad);
    line_exact(&L, "mem_info free <= total", tb != 0 && fb > tb);
    line_end(&L);
}
TEST(backend_ops_memory) { for_each_backend(t_memory); }

// copy_rows: the KV cache's append. Rows of width elements from a strided source (qkv-like, row stride
// 3C) into a strided destination (a cache, batch stride L*C) at an offset; the rest of the
// destination is untouched. Values are bf16-exact so any compute dtype copies them exactly.
static void t_copy_rows(const Target *t) {
    Backend *be = t->be;
    const int shapes[][4] = {{1, 1, 5, 9}, {3, 4, 48, 7}, {2, 37, 12, 40}};  // B, rows, width, L
    for (int si = 0; si < 3; si++) {
        int B = shapes[si][0], rows = shapes[si][1], W = shapes[si][2], L = shapes[si][3], pos = L - rows;
        size_t sr = 3 * (size_t)W, sb = (size_t)rows * sr, dr = (size_t)W, db = (size_t)L * W;
        size_t ns = (size_t)B * sb, nd = (size_t)B * db;
        float *src = xmalloc(ns * 4), *dst = xmalloc(nd * 4), *want = xmalloc(nd * 4), *got = xmalloc(nd * 4);
        for (size_t i = 0; i < ns; i++) src[i] = (float)((int)(i % 251) - 125) / 8.0f;
        for (size_t i = 0; i < nd; i++) dst[i] = want[i] = -64.0f - (float)(i % 7);
        for (int b = 0; b < B; b++)
            for (int r = 0; r < rows; r++)
                memcpy(want + b * db + (size_t)(pos + r) * dr, src + b * sb + r * sr + W, (size_t)W * 4);
        cval *ds = put_c(be, src, ns), *dd = put_c(be, dst, nd);
        size_t E = esize(be);
        be->ops->copy_rows(be, (cval *)((char *)dd + (size_t)pos * dr * E), dr, db, (cval *)((char *)ds + (size_t)W * E),
                           sr, sb, B, rows, W);
        int guard = get_c(be, got, dd, nd);
        int diff = memcmp(got, want, nd * 4) != 0;
        Line L_;
        line_begin(&L_, t, "copy_rows", "B=%d rows=%d width=%d L=%d", B, rows, W, L);
        L_.tol = 0;
        line_exact(&L_, "rows copied, the rest untouched", diff);
        line_exact(&L_, "guard", guard);
        line_end(&L_);
        dfree(be, ds), dfree(be, dd);
        free(src), free(dst), free(want), free(got);
    }
}
TEST(backend_ops_copy_rows) { for_each_backend(t_copy_rows); }

// ---- matmul ------------------------------------------------------------------------------------
static const int k_mm_shapes[][3] = {{1, 16, 48}, {111, 96, 288}, {37, 48, 5}, {7, 13, 130}};  // N, K, M
#define N_MM_SHAPES 4

static int run_matmul_fwd(Backend *be, float *out, const float *inp, const float *w, int N, int K, int M) {
    cval *di = put_c(be, inp, (size_t)N * K), *dw = put_c(be, w, (size_t)M * K), *o = put_c(be, NULL, (size_t)N * M);
    be->ops->matmul_fwd(be, o, di, dw, N, K, M);
    int guard = get_c(be, out, o, (size_t)N * M);
    dfree(be, di), dfree(be, dw), dfree(be, o);
    return guard;
}

static void t_matmul_fwd(const Target *t) {
    for (int si = 0; si < N_MM_SHAPES; si++) {
        int N = k_mm_shapes[si][0], K = k_mm_shapes[si][1], M = k_mm_shapes[si][2];
        Rng r;
        rng_seed(&r, 1100 + si);
        float *inp = randn(&r, (size_t)N * K, 1, t->be->compute), *w = randn(&r, (size_t)M * K, 1, t->be->compute);
        float *out = xmalloc((size_t)N * M * 4), *cpu = xmalloc((size_t)N * M * 4);
        double *want = dnew((size_t)N * M);
        for (int n = 0; n < N; n++)
            for (int m = 0; m < M; m++) {
                double s = 0;
                for (int k = 0; k < K; k++) s += (double)inp[n * K + k] * w[m * K + k];
                want[n * M + m] = s;
            }
        int guard = run_matmul_fwd(t->be, out, inp, w, N, K, M);
        if (!t->is_cpu) run_matmul_fwd(t->cpu, cpu, inp, w, N, K, M);
        Line L;
        line_begin(&L, t, "matmul_fwd", "N=%d K=%d M=%d", N, K, M);
        line_cmp(&L, "out", out, NULL, want, cpu, NULL, (size_t)N * M, t->tol);
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(inp), free(w), free(out), free(cpu), free(want);
    }
}
TEST(backend_ops_matmul_fwd) { for_each_backend(t_matmul_fwd); }

// dinp overwritten (NaN before), dw += (prefilled dw0); then again with dinp NULL into dw2
static int run_matmul_bwd(Backend *be, float *dinp, float *dw, float *dw2, const float *dout, const float *inp,
                          const float *w, const float *dw0, int N, int K, int M) {
    size_t ni = (size_t)N * K, nw = (size_t)M * K, no = (size_t)N * M;
    cval *ddo = put_c(be, dout, no), *di = put_c(be, inp, ni), *dwc = put_c(be, w, nw), *dd = put_c(be, NULL, ni);
    float *g = put_f(be, dw0, nw), *g2 = put_f(be, dw0, nw);
    be->ops->matmul_bwd(be, dd, g, ddo, di, dwc, N, K, M);
    be->ops->matmul_bwd(be, NULL, g2, ddo, di, dwc, N, K, M);
    int guard = get_c(be, dinp, dd, ni) + get_f(be, dw, g, nw) + get_f(be, dw2, g2, nw);
    dfree(be, ddo), dfree(be, di), dfree(be, dwc), dfree(be, dd), dfree(be, g), dfree(be, g2);
    return guard;
}

static void t_matmul_bwd(const Target *t) {
    for (int si = 0; si < N_MM_SHAPES; si++) {
        int N = k_mm_shapes[si][0], K = k_mm_shapes[si][1], M = k_mm_shapes[si][2];
        size_t ni = (size_t)N * K, nw = (size_t)M * K, no = (size_t)N * M;
        Rng r;
        rng_seed(&r, 1200 + si);
        DType dt = t->be->compute;
        float *inp = randn(&r, ni, 1, dt), *w = randn(&r, nw, 1, dt), *dout = randn(&r, no, 1, dt);
        float *dw0 = randn(&r, nw, 1, DTYPE_F32);
        float *dinp = xmalloc(ni * 4), *dw = xmalloc(nw * 4), *dw2 = xmalloc(nw * 4);
        float *c_dinp = xmalloc(ni * 4), *c_dw = xmalloc(nw * 4), *c_dw2 = xmalloc(nw * 4);
        double *w_dinp = dnew(ni), *w_dw = dnew(nw);
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) {
                double s = 0;
                for (int m = 0; m < M; m++) s += (double)dout[n * M + m] * w[m * K + k];
                w_dinp[n * K + k] = s;
            }
        for (int m = 0; m < M; m++)
            for (int k = 0; k < K; k++) {
                double s = 0;
                for (int n = 0; n < N; n++) s += (double)dout[n * M + m] * inp[n * K + k];
                w_dw[m * K + k] = s;
            }
        int guard = run_matmul_bwd(t->be, dinp, dw, dw2, dout, inp, w, dw0, N, K, M);
        if (!t->is_cpu) run_matmul_bwd(t->cpu, c_dinp, c_dw, c_dw2, dout, inp, w, dw0, N, K, M);
        const float *cp = t->is_cpu ? NULL : c_dinp;
        Line L;
        line_begin(&L, t, "matmul_bwd", "N=%d K=%d M=%d", N, K, M);
        line_cmp(&L, "dinp", dinp, NULL, w_dinp, cp, NULL, ni, t->tol);
        line_cmp(&L, "dw+=", dw, dw0, w_dw, cp ? c_dw : NULL, dw0, nw, t->tol);
        line_cmp(&L, "dw+=(dinp NULL)", dw2, dw0, w_dw, cp ? c_dw2 : NULL, dw0, nw, t->tol);
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(inp), free(w), free(dout), free(dw0), free(dinp), free(dw), free(dw2), free(c_dinp), free(c_dw);
        free(c_dw2), free(w_dinp), free(w_dw);
    }
}
TEST(backend_ops_matmul_bwd) { for_each_backend(t_matmul_bwd); }

// ---- residual add + rmsnorm ---------------------------------------------------------------------
static const int k_rms_shapes[][2] = {{1, 48}, {111, 96}, {37, 13}, {3, 1}};  // N, C
#define N_RMS_SHAPES 4

// the double forward: x = res_in (+ branch), r = 1/sqrt(mean(x^2) + 1e-5), out = x * r * w
static void rmsnorm_ref(double *out, double *rstd, double *res, const float *in, const float *br, const float *w,
                        int N, int C) {
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)n * C + c;
            res[i] = (double)in[i] + (br ? (double)br[i] : 0.0);
            ss += res[i] * res[i];
        }
        double rs = 1.0 / sqrt(ss / C + 1e-5);
        rstd[n] = rs;
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = res[(size_t)n * C + c] * rs * w[c];
    }
}

static int run_rmsnorm_fwd(Backend *be, float *res_out, float *out, float *rstd, const float *in, const float *br,
                           const float *w, int N, int C) {
    size_t n = (size_t)N * C;
    cval *din = put_c(be, in, n), *dbr = br ? put_c(be, br, n) : NULL, *dw = put_c(be, w, (size_t)C);
    cval *dres = br ? put_c(be, NULL, n) : NULL, *dout = put_c(be, NULL, n);
    float *dr = put_f(be, NULL, (size_t)N);
    be->ops->residual_rmsnorm_fwd(be, dres, dout, dr, din, dbr, dw, N, C);
    int guard = get_c(be, out, dout, n) + get_f(be, rstd, dr, (size_t)N) + (br ? get_c(be, res_out, dres, n) : 0);
    dfree(be, din), dfree(be, dbr), dfree(be, dw), dfree(be, dres), dfree(be, dout), dfree(be, dr);
    return guard;
}

static void t_rmsnorm_fwd(const Target *t) {
    for (int si = 0; si < N_RMS_SHAPES; si++)
        for (int fused = 0; fused < 2; fused++) {
            int N = k_rms_shapes[si][0], C = k_rms_shapes[si][1];
            size_t n = (size_t)N * C;
            Rng r;
            rng_seed(&r, 1300 + 2 * si + fused);
            DType dt = t->be->compute;
            float *in = randn(&r, n, 1, dt), *br = fused ? randn(&r, n, 0.7, dt) : NULL, *w = randn(&r, (size_t)C, 0.3, DTYPE_F32);
            for (int c = 0; c < C; c++) w[c] += 1.0f;
            quantize(dt, w, (size_t)C);
            float *res = xmalloc(n * 4), *out = xmalloc(n * 4), *rstd = xmalloc(N * 4);
            float *c_res = xmalloc(n * 4), *c_out = xmalloc(n * 4), *c_rstd = xmalloc(N * 4);
            double *w_out = dnew(n), *w_rstd = dnew(N), *w_res = dnew(n);
            rmsnorm_ref(w_out, w_rstd, w_res, in, br, w, N, C);
            int guard = run_rmsnorm_fwd(t->be, res, out, rstd, in, br, w, N, C);
            if (!t->is_cpu) run_rmsnorm_fwd(t->cpu, c_res, c_out, c_rstd, in, br, w, N, C);
            const int cp = !t->is_cpu;
            Line L;
            line_begin(&L, t, "residual_rmsnorm_fwd", "N=%d C=%d %s", N, C, fused ? "fused add" : "plain");
            line_cmp(&L, "out", out, NULL, w_out, cp ? c_out : NULL, NULL, n, t->tol);
            line_cmp(&L, "rstd", rstd, NULL, w_rstd, cp ? c_rstd : NULL, NULL, (size_t)N, t->tol);
            if (fused) {
                line_cmp(&L, "res_out", res, NULL, w_res, cp ? c_res : NULL, NULL, n, t->tol);
                if (dt == DTYPE_F32) {  // the float32 sum, bit for bit
                    int bad = 0;
                    for (size_t i = 0; i < n; i++) bad += res[i] != in[i] + br[i];
                    line_exact(&L, "res_out == res_in + branch", bad);
                }
            }
            line_exact(&L, "guard", guard);
            line_end(&L);
            free(in), free(br), free(w), free(res), free(out), free(rstd), free(c_res), free(c_out), free(c_rstd);
            free(w_out), free(w_rstd), free(w_res);
        }
}
TEST(backend_ops_residual_rmsnorm_fwd) { for_each_backend(t_rmsnorm_fwd); }

static int run_rmsnorm_bwd(Backend *be, float *dres, float *dw, const float *dres0, const float *dw0,
                           const float *dnorm, const float *res, const float *w, const float *rstd, int N, int C) {
    size_t n = (size_t)N * C;
    cval *dd = put_c(be, dres0, n), *dg = put_c(be, dnorm, n), *dx = put_c(be, res, n), *dwc = put_c(be, w, (size_t)C);
    float *ddw = put_f(be, dw0, (size_t)C), *dr = put_f(be, rstd, (size_t)N);
    be->ops->residual_rmsnorm_bwd(be, dd, ddw, dg, dx, dwc, dr, N, C);
    int guard = get_c(be, dres, dd, n) + get_f(be, dw, ddw, (size_t)C);
    dfree(be, dd), dfree(be, dg), dfree(be, dx), dfree(be, dwc), dfree(be, ddw), dfree(be, dr);
    return guard;
}

// Not C = 1: there dx = r w g (1 - x^2 r^2) = r w g * 1e-5 / (x^2 + 1e-5), about 1e-5 of either term,
// which float32 cannot resolve (the forward list has C = 1).
static const int k_rms_bwd_shapes[][2] = {{1, 48}, {111, 96}, {37, 13}, {5, 3}};  // N, C

static void t_rmsnorm_bwd(const Target *t) {
    for (int si = 0; si < N_RMS_SHAPES; si++) {
        int N = k_rms_bwd_shapes[si][0], C = k_rms_bwd_shapes[si][1];
        size_t n = (size_t)N * C;
        Rng r;
        rng_seed(&r, 1400 + si);
        DType dt = t->be->compute;
        float *res = randn(&r, n, 1, dt), *dnorm = randn(&r, n, 1, dt), *dres0 = randn(&r, n, 1, dt);
        float *w = randn(&r, (size_t)C, 0.3, DTYPE_F32), *dw0 = randn(&r, (size_t)C, 1, DTYPE_F32);
        for (int c = 0; c < C; c++) w[c] += 1.0f;
        quantize(dt, w, (size_t)C);
        // rstd as the forward saves it (float32), and the vector-Jacobian product in double:
        // dx = r w g - x r^3 / C * sum(w g x), dw = sum over rows of g x r
        float *rstd = xmalloc(N * 4);
        double *w_dres = dnew(n), *w_dw = dnew(C);
        for (int i = 0; i < N; i++) {
            const float *x = res + (size_t)i * C, *g = dnorm + (size_t)i * C;
            double ss = 0, dot = 0;
            for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
            double rs = 1.0 / sqrt(ss / C + 1e-5);
            rstd[i] = (float)rs;
            for (int c = 0; c < C; c++) dot += (double)w[c] * g[c] * x[c];
            for (int c = 0; c < C; c++) {
                w_dres[(size_t)i * C + c] = rs * w[c] * g[c] - x[c] * rs * rs * rs / C * dot;
                w_dw[c] += (double)g[c] * x[c] * rs;
            }
        }
        float *dres = xmalloc(n * 4), *dw = xmalloc(C * 4), *c_dres = xmalloc(n * 4), *c_dw = xmalloc(C * 4);
        int guard = run_rmsnorm_bwd(t->be, dres, dw, dres0, dw0, dnorm, res, w, rstd, N, C);
        if (!t->is_cpu) run_rmsnorm_bwd(t->cpu, c_dres, c_dw, dres0, dw0, dnorm, res, w, rstd, N, C);
        const int cp = !t->is_cpu;
        Line L;
        line_begin(&L, t, "residual_rmsnorm_bwd", "N=%d C=%d", N, C);
        line_cmp(&L, "dres+=", dres, dres0, w_dres, cp ? c_dres : NULL, dres0, n, t->tol);
        line_cmp(&L, "dw+=", dw, dw0, w_dw, cp ? c_dw : NULL, dw0, (size_t)C, t->tol);
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(res), free(dnorm), free(dres0), free(w), free(dw0), free(rstd), free(w_dres), free(w_dw);
        free(dres), free(dw), free(c_dres), free(c_dw);
    }
}
TEST(backend_ops_residual_rmsnorm_bwd) { for_each_backend(t_rmsnorm_bwd); }

// ---- attention (RoPE inside) --------------------------------------------------------------------
// A case: B, H, hd, Tq, pos0, n_rot, and the layout: shared = q, k, v the thirds of one (B, T, 3C)
// buffer (the model's); otherwise three buffers, q of row stride C + qr_pad and batch stride
// Tq * q_row + qb_pad, k and v of row stride C + kr_pad and batch stride (Tk + kcap_pad) * kv_row +
// kb_pad (a KV cache with room to spare). Padding is NaN.
typedef struct {
    int B, H, hd, Tq, pos0, n;
    int shared, qr_pad, qb_pad, kr_pad, kcap_pad, kb_pad;
} AttCase;

static const AttCase k_att_train[] = {
    {1, 1, 48, 1, 0, 48, 1, 0, 0, 0, 0, 0},   // T = 1
    {3, 2, 48, 37, 0, 48, 1, 0, 0, 0, 0, 0},  // B = 3, T = 37, hd 48
    {2, 3, 16, 37, 0, 8, 1, 0, 0, 0, 0, 0},   // partial rotation
    {1, 2, 8, 70, 0, 8, 1, 0, 0, 0, 0, 0},    // T = 70: two 64-row blocks on the CPU backend
    {2, 2, 6, 5, 0, 0, 1, 0, 0, 0, 0, 0},     // no rotation (rope_rotary_percentage 0)
    {3, 2, 48, 37, 0, 16, 0, 3, 5, 7, 2, 1},  // separate, padded q, k, v buffers
    // head dims of real models (the CUDA bf16 kernels' 64 x 64 WMMA tiles, hd padded to 16s):
    {1, 1, 128, 70, 0, 128, 1, 0, 0, 0, 0, 0},  // hd 128, two tiles, the second of 6 rows
    {2, 1, 32, 67, 0, 32, 0, 1, 2, 3, 0, 1},    // hd 32, padded buffers
    {1, 2, 64, 65, 0, 16, 1, 0, 0, 0, 0, 0},    // hd 64, a second tile of one row, partial rotation
    {1, 1, 40, 33, 0, 40, 1, 0, 0, 0, 0, 0},    // hd 40: not a multiple of 16
};
static const AttCase k_att_decode[] = {
    {3, 2, 48, 1, 36, 48, 0, 0, 0, 0, 4, 0},  // one query against a cache of 36: Tk = 37
    {2, 3, 16, 3, 34, 8, 0, 5, 3, 1, 2, 3},   // three queries, Tk = 37, padded strides
    {1, 2, 8, 5, 66, 8, 1, 0, 0, 0, 0, 0},    // Tk = 71, the model's qkv layout
    {1, 1, 128, 66, 10, 128, 0, 0, 0, 0, 3, 0},  // hd 128, two query tiles against Tk = 76
    {2, 1, 40, 7, 60, 40, 1, 0, 0, 0, 0, 0},     // hd 40, Tk = 67
};
#define N_ATT_TRAIN (int)(sizeof k_att_train / sizeof k_att_train[0])
#define N_ATT_DECODE (int)(sizeof k_att_decode / sizeof k_att_decode[0])
#define ATT_MAX_T 80  // rope table rows

typedef struct {
    AttnShape s;
    size_t nq, nkv;           // elements of the q buffer and of each k, v buffer (shared: qkv, 0)
    size_t qoff, koff, voff;  // where the views start
} AttLayout;

static AttLayout att_layout(const AttCase *ac) {
    int C = ac->H * ac->hd, Tk = ac->pos0 + ac->Tq;
    AttLayout L = {.s = {.B = ac->B, .H = ac->H, .hd = ac->hd, .Tq = ac->Tq, .Tk = Tk, .pos0 = ac->pos0,
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

static size_t vix(size_t row, size_t batch, int b, int t, int j) {
    return (size_t)b * batch + (size_t)t * row + (size_t)j;
}

// Host images of the q (or qkv), k and v buffers, and marks of the elements an op may change.
typedef struct {
    float *buf[3];  // q (qkv when shared), k, v (NULL when shared)
    size_t n[3];
    int nbuf;
} AttHost;

static AttHost att_host(const AttLayout *L) {
    AttHost h = {.nbuf = L->nkv ? 3 : 1};
    for (int i = 0; i < h.nbuf; i++) {
        h.n[i] = i == 0 ? L->nq : L->nkv;
        h.buf[i] = xmalloc(h.n[i] * 4);
        for (size_t j = 0; j < h.n[i]; j++) h.buf[i][j] = NAN;
    }
    return h;
}
static void att_host_free(AttHost *h) {
    for (int i = 0; i < h->nbuf; i++) free(h->buf[i]);
}
// the buffer (index) and the offset of element (b, t, j) of view which (0 q, 1 k, 2 v)
static float *att_at(const AttLayout *L, const AttHost *h, int which, int b, int t, int j) {
    if (which == 0) return h->buf[0] + L->qoff + vix(L->s.q_row, L->s.q_batch, b, t, j);
    size_t off = h->nbuf == 1 ? (which == 1 ? L->koff : L->voff) : 0;
    return h->buf[h->nbuf == 1 ? 0 : which] + off + vix(L->s.kv_row, L->s.kv_batch, b, t, j);
}

// rope in double on one token's H heads: y = x * cos + cat(-x2, x1) * sin on the first n dims
static void rope_ref(double *y, const double *x, int H, int hd, int n, const float *cs, const float *sn) {
    int half = n / 2;
    for (int h = 0; h < H; h++)
        for (int i = 0; i < hd; i++) {
            const double *xh = x + (size_t)h * hd;
            if (i >= n) {
                y[(size_t)h * hd + i] = xh[i];
                continue;
            }
            double rot = i < half ? -xh[i + half] : xh[i - half];
            y[(size_t)h * hd + i] = xh[i] * cs[i] + rot * sn[i];
        }
}
// its transpose (the backward): dx_i = dy_i c_i + dy_{i+h} s_{i+h}, dx_{i+h} = dy_{i+h} c_{i+h} - dy_i s_i
static void rope_ref_t(double *dx, const double *dy, int H, int hd, int n, const float *cs, const float *sn) {
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

// The double attention: q (B, Tq, C), k, v (B, Tk, C) dense; k rows < pos0 already rotated. Gives
// the rotated qr, kr and out; with dout (pos0 = 0) also dq, dk, dv w.r.t. the unrotated q, k and v.
typedef struct {
    const AttnShape *s;
    const float *cs, *sn;  // (ATT_MAX_T, n)
    double *q, *k, *v, *qr, *kr, *out;
    const double *dout;
    double *dq, *dk, *dv;
} AttRef;

static void attention_ref(AttRef *a) {
    const AttnShape *s = a->s;
    int B = s->B, H = s->H, hd = s->hd, Tq = s->Tq, Tk = s->Tk, n = s->n_rot, C = H * hd;
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < Tq; t++) {
            size_t o = ((size_t)b * Tq + t) * C, p = (size_t)(s->pos0 + t) * n;
            rope_ref(a->qr + o, a->q + o, H, hd, n, a->cs + p, a->sn + p);
        }
        for (int u = 0; u < Tk; u++) {
            size_t o = ((size_t)b * Tk + u) * C;
            if (u < s->pos0)
                memcpy(a->kr + o, a->k + o, (size_t)C * sizeof(double));
            else
                rope_ref(a->kr + o, a->k + o, H, hd, n, a->cs + (size_t)u * n, a->sn + (size_t)u * n);
        }
    }
    double scale = 1.0 / sqrt((double)hd), *P = dnew((size_t)Tk), *dP = dnew((size_t)Tk);
    double *dqr = a->dout ? dnew((size_t)B * Tq * C) : NULL, *dkr = a->dout ? dnew((size_t)B * Tk * C) : NULL;
    if (a->dout) memset(a->dv, 0, (size_t)B * Tk * C * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < Tq; t++) {
                const double *q = a->qr + ((size_t)b * Tq + t) * C + (size_t)h * hd;
                int last = s->pos0 + t;
                double mx = -INFINITY, sum = 0;
                for (int u = 0; u <= last; u++) {
                    const double *k = a->kr + ((size_t)b * Tk + u) * C + (size_t)h * hd;
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += q[i] * k[i];
                    P[u] = scale * dot;
                    mx = fmax(mx, P[u]);
                }
                for (int u = 0; u <= last; u++) sum += (P[u] = exp(P[u] - mx));
                for (int u = 0; u <= last; u++) P[u] /= sum;
                double *y = a->out + ((size_t)b * Tq + t) * C + (size_t)h * hd;
                for (int i = 0; i < hd; i++) {
                    double acc = 0;
                    for (int u = 0; u <= last; u++) acc += P[u] * a->v[((size_t)b * Tk + u) * C + (size_t)h * hd + i];
                    y[i] = acc;
                }
                if (!a->dout) continue;
                // backward of out = P v, P = softmax(S), S = scale * q k^T
                const double *g = a->dout + ((size_t)b * Tq + t) * C + (size_t)h * hd;
                double dot = 0;
                for (int u = 0; u <= last; u++) {
                    const double *v = a->v + ((size_t)b * Tk + u) * C + (size_t)h * hd;
                    double *dv = a->dv + ((size_t)b * Tk + u) * C + (size_t)h * hd;
                    dP[u] = 0;
                    for (int i = 0; i < hd; i++) dP[u] += g[i] * v[i], dv[i] += P[u] * g[i];
                    dot += dP[u] * P[u];
                }
                double *dq = dqr + ((size_t)b * Tq + t) * C + (size_t)h * hd;
                for (int u = 0; u <= last; u++) {
                    double dS = P[u] * (dP[u] - dot) * scale;
                    const double *k = a->kr + ((size_t)b * Tk + u) * C + (size_t)h * hd;
                    double *dk = dkr + ((size_t)b * Tk + u) * C + (size_t)h * hd;
                    for (int i = 0; i < hd; i++) dq[i] += dS * k[i], dk[i] += dS * q[i];
                }
            }
    if (a->dout) {  // back through RoPE (training: pos0 = 0, every key rotated at its position)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Tq; t++) {
                size_t o = ((size_t)b * Tq + t) * C;
                rope_ref_t(a->dq + o, dqr + o, H, hd, n, a->cs + (size_t)t * n, a->sn + (size_t)t * n);
                rope_ref_t(a->dk + o, dkr + o, H, hd, n, a->cs + (size_t)t * n, a->sn + (size_t)t * n);
            }
    }
    free(P), free(dP), free(dqr), free(dkr);
}

// the rope tables, (ATT_MAX_T, n): angles (t / 2) * 1000^(-2i/n), as GIVT.md's cache
static void rope_tables(float *cs, float *sn, int n) {
    for (int t = 0; t < ATT_MAX_T; t++)
        for (int i = 0; i < n / 2; i++) {
            double ang = (t / 2.0) / pow(1000.0, 2.0 * i / n);
            cs[t * n + i] = cs[t * n + n / 2 + i] = (float)cos(ang);
            sn[t * n + i] = sn[t * n + n / 2 + i] = (float)sin(ang);
        }
}

// Fills the views of h (and the dense copies q, k, v) with random values rounded to dt; the keys
// before pos0 are rotated in double at their positions first (a KV cache), then rounded.
static void att_fill(const AttLayout *L, AttHost *h, double *q, double *k, double *v, const float *cs,
                     const float *sn, Rng *r, DType dt) {
    const AttnShape *s = &L->s;
    int C = s->H * s->hd;
    double *x = dnew((size_t)C), *y = dnew((size_t)C);
    for (int b = 0; b < s->B; b++) {
        for (int t = 0; t < s->Tq; t++)
            for (int j = 0; j < C; j++) {
                float f = (float)rng_normal(r);
                quantize(dt, &f, 1);
                *att_at(L, h, 0, b, t, j) = f, q[((size_t)b * s->Tq + t) * C + j] = f;
            }
        for (int u = 0; u < s->Tk; u++) {
            for (int j = 0; j < C; j++) x[j] = rng_normal(r);
            if (u < s->pos0) rope_ref(y, x, s->H, s->hd, s->n_rot, cs + (size_t)u * s->n_rot, sn + (size_t)u * s->n_rot);
            for (int j = 0; j < C; j++) {
                float fk = (float)(u < s->pos0 ? y[j] : x[j]), fv = (float)rng_normal(r);
                quantize(dt, &fk, 1), quantize(dt, &fv, 1);
                *att_at(L, h, 1, b, u, j) = fk, k[((size_t)b * s->Tk + u) * C + j] = fk;
                *att_at(L, h, 2, b, u, j) = fv, v[((size_t)b * s->Tk + u) * C + j] = fv;
            }
        }
    }
    free(x), free(y);
}

// dense (B, T, C) float from view which of h
static void att_gather(const AttLayout *L, const AttHost *h, int which, float *dense) {
    int C = L->s.H * L->s.hd, T = which == 0 ? L->s.Tq : L->s.Tk;
    for (int b = 0; b < L->s.B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < C; j++) dense[((size_t)b * T + t) * C + j] = *att_at(L, h, which, b, t, j);
}

// Elements of after that differ from before (NaN equal to NaN), skipping those mask marks.
static int att_changed(const AttHost *before, const AttHost *after, uint8_t *const mask[3]) {
    int bad = 0;
    for (int i = 0; i < before->nbuf; i++)
        for (size_t j = 0; j < before->n[i]; j++) {
            if (mask[i] && mask[i][j]) continue;
            float x = before->buf[i][j], y = after->buf[i][j];
            bad += isnan(x) ? !isnan(y) : x != y;
        }
    return bad;
}

// mask of the elements of view which (0 q, 1 k, 2 v), rows [t0, t1), dims with j % hd < dims
static void att_mark(const AttLayout *L, const AttHost *h, uint8_t *mask[3], int which, int t0, int t1, int dims) {
    int C = L->s.H * L->s.hd;
    for (int b = 0; b < L->s.B; b++)
        for (int t = t0; t < t1; t++)
            for (int j = 0; j < C; j++)
                if (j % L->s.hd < dims) {
                    float *p = att_at(L, h, which, b, t, j);
                    int bi = h->nbuf == 1 ? 0 : which;
                    mask[bi][p - h->buf[bi]] = 1;
                }
}

// Device copies of the buffers of h; q, k, v the views.
typedef struct {
    void *buf[3];
    cval *q, *k, *v;
} AttDev;

static AttDev att_put(Backend *be, const AttLayout *L, const AttHost *h) {
    AttDev d;
    memset(&d, 0, sizeof d);
    for (int i = 0; i < h->nbuf; i++) d.buf[i] = put_c(be, h->buf[i], h->n[i]);
    if (h->nbuf == 1) {
        d.q = cat_c(be, d.buf[0], L->qoff), d.k = cat_c(be, d.buf[0], L->koff), d.v = cat_c(be, d.buf[0], L->voff);
    } else {
        d.q = d.buf[0], d.k = d.buf[1], d.v = d.buf[2];
    }
    return d;
}
static int att_get(Backend *be, AttHost *h, const AttDev *d) {
    int guard = 0;
    for (int i = 0; i < h->nbuf; i++) guard += get_c(be, h->buf[i], d->buf[i], h->n[i]);
    return guard;
}
static void att_dfree(Backend *be, AttDev *d) {
    for (int i = 0; i < 3; i++) dfree(be, d->buf[i]);
}

// The forward (and with dout the backward) of one case on backend be. after: the q, k, v buffers
// after the forward; grads: the dq, dk, dv buffers (NaN before) after the backward.
static int run_attention(Backend *be, const AttLayout *L, const AttHost *in, const float *cs, const float *sn,
                         float *out, AttHost *after, const float *dout, AttHost *grads) {
    const AttnShape *s = &L->s;
    size_t no = (size_t)s->B * s->Tq * s->H * s->hd, nt = (size_t)ATT_MAX_T * (s->n_rot ? s->n_rot : 1);
    AttDev d = att_put(be, L, in);
    float *dcs = put_f(be, cs, nt), *dsn = put_f(be, sn, nt);
    cval *dout_ = put_c(be, NULL, no);
    void *saved = dalloc(be, be->ops->attention_saved_bytes(be, s));
    be->ops->attention_fwd(be, dout_, saved, d.q, d.k, d.v, dcs, dsn, s);
    int guard = get_c(be, out, dout_, no) + att_get(be, after, &d);
    if (dout) {
        AttDev g = att_put(be, L, grads);  // NaN everywhere, the guard after each buffer
        cval *dy = put_c(be, dout, no);
        void *scratch = dalloc(be, be->ops->attention_scratch_bytes(be, s));
        be->ops->attention_bwd(be, g.q, g.k, g.v, scratch, dy, d.q, d.k, d.v, saved, dcs, dsn, s);
        guard += att_get(be, grads, &g);
        att_dfree(be, &g);
        dfree(be, dy), dfree(be, scratch);
    }
    att_dfree(be, &d);
    dfree(be, dcs), dfree(be, dsn), dfree(be, dout_), dfree(be, saved);
    return guard;
}

static void attention_case(const Target *t, const AttCase *ac, uint64_t seed, int backward) {
    AttLayout L = att_layout(ac);
    const AttnShape *s = &L.s;
    int B = s->B, Tq = s->Tq, Tk = s->Tk, n = s->n_rot, C = s->H * s->hd;
    size_t nq = (size_t)B * Tq * C, nk = (size_t)B * Tk * C, nt = (size_t)ATT_MAX_T * (n ? n : 1);
    DType dt = t->be->compute;
    Rng r;
    rng_seed(&r, seed);
    float *cs = xcalloc(nt, 4), *sn = xcalloc(nt, 4);
    rope_tables(cs, sn, n);
    AttHost in = att_host(&L);
    AttRef a = {.s = s, .cs = cs, .sn = sn, .q = dnew(nq), .k = dnew(nk), .v = dnew(nk), .qr = dnew(nq),
                .kr = dnew(nk), .out = dnew(nq)};
    att_fill(&L, &in, a.q, a.k, a.v, cs, sn, &r, dt);
    float *dout = backward ? randn(&r, nq, 1, dt) : NULL;
    double *ddout = NULL;
    if (backward) {
        ddout = dnew(nq);
        for (size_t i = 0; i < nq; i++) ddout[i] = dout[i];
        a.dout = ddout, a.dq = dnew(nq), a.dk = dnew(nk), a.dv = dnew(nk);
    }
    attention_ref(&a);

    AttHost after = att_host(&L), grads = att_host(&L), c_after = att_host(&L), c_grads = att_host(&L);
    float *out = xmalloc(nq * 4), *c_out = xmalloc(nq * 4);
    int guard = run_attention(t->be, &L, &in, cs, sn, out, &after, dout, backward ? &grads : NULL);
    if (!t->is_cpu) run_attention(t->cpu, &L, &in, cs, sn, c_out, &c_after, dout, backward ? &c_grads : NULL);
    const int cp = !t->is_cpu;

    Line L1;
    char layout[24];
    if (ac->shared)
        snprintf(layout, sizeof layout, "qkv");
    else
        snprintf(layout, sizeof layout, "q%zu/%zu kv%zu/%zu", s->q_row, s->q_batch, s->kv_row, s->kv_batch);
    if (s->pos0)
        line_begin(&L1, t, backward ? "attention_bwd" : "attention_fwd", "B=%d Tq=%d pos0=%d H=%d hd=%d rot=%d %s", B,
                   Tq, s->pos0, s->H, s->hd, n, layout);
    else
        line_begin(&L1, t, backward ? "attention_bwd" : "attention_fwd", "B=%d T=%d H=%d hd=%d rot=%d %s", B, Tq,
                   s->H, s->hd, n, layout);
    float *g = xmalloc(nk * 4), *c = xmalloc(nk * 4);
    if (!backward) {
        line_cmp(&L1, "out", out, NULL, a.out, cp ? c_out : NULL, NULL, nq, t->tol);
        // the rotation left in q and k
        att_gather(&L, &after, 0, g);
        if (cp) att_gather(&L, &c_after, 0, c);
        line_cmp(&L1, "q", g, NULL, a.qr, cp ? c : NULL, NULL, nq, t->tol);
        att_gather(&L, &after, 1, g);
        if (cp) att_gather(&L, &c_after, 1, c);
        line_cmp(&L1, "k", g, NULL, a.kr, cp ? c : NULL, NULL, nk, t->tol);
        // nothing else changed: v, the padding, dims >= n_rot, the cached keys before pos0
        uint8_t *mask[3] = {0};
        for (int i = 0; i < in.nbuf; i++) mask[i] = xcalloc(in.n[i], 1);
        att_mark(&L, &in, mask, 0, 0, Tq, n);
        att_mark(&L, &in, mask, 1, s->pos0, Tk, n);
        line_exact(&L1, "untouched", att_changed(&in, &after, mask));
        for (int i = 0; i < 3; i++) free(mask[i]);
    } else {
        const char *names[3] = {"dq", "dk", "dv"};
        const double *want[3] = {a.dq, a.dk, a.dv};
        for (int w = 0; w < 3; w++) {
            att_gather(&L, &grads, w, g);
            if (cp) att_gather(&L, &c_grads, w, c);
            line_cmp(&L1, names[w], g, NULL, want[w], cp ? c : NULL, NULL, w ? nk : nq, t->tol);
        }
        // the padding of dq, dk, dv (NaN) written by nobody
        AttHost nan = att_host(&L);
        uint8_t *mask[3] = {0};
        for (int i = 0; i < in.nbuf; i++) mask[i] = xcalloc(in.n[i], 1);
        for (int w = 0; w < 3; w++) att_mark(&L, &in, mask, w, 0, w ? Tk : Tq, s->hd);
        line_exact(&L1, "padding", att_changed(&nan, &grads, mask));
        for (int i = 0; i < 3; i++) free(mask[i]);
        att_host_free(&nan);
    }
    line_exact(&L1, "guard", guard);
    line_end(&L1);
    free(g), free(c), free(out), free(c_out), free(cs), free(sn), free(dout), free(ddout);
    att_host_free(&in), att_host_free(&after), att_host_free(&grads), att_host_free(&c_after), att_host_free(&c_grads);
    free(a.q), free(a.k), free(a.v), free(a.qr), free(a.kr), free(a.out), free(a.dq), free(a.dk), free(a.dv);
}

static void t_attention_fwd(const Target *t) {
    for (int i = 0; i < N_ATT_TRAIN; i++) attention_case(t, &k_att_train[i], 1500 + (uint64_t)i, 0);
    for (int i = 0; i < N_ATT_DECODE; i++) attention_case(t, &k_att_decode[i], 1550 + (uint64_t)i, 0);
}
TEST(backend_ops_attention_fwd) { for_each_backend(t_attention_fwd); }

static void t_attention_bwd(const Target *t) {  // training shapes only (ops.h)
    for (int i = 0; i < N_ATT_TRAIN; i++) attention_case(t, &k_att_train[i], 1600 + (uint64_t)i, 1);
}
TEST(backend_ops_attention_bwd) { for_each_backend(t_attention_bwd); }

// ---- swiglu --------------------------------------------------------------------------------------
static const int k_swi_shapes[][2] = {{1, 1}, {111, 130}, {37, 48}};  // N, F
#define N_SWI_SHAPES 3

static int run_swiglu(Backend *be, float *out, float *dh, const float *h, const float *dout, int N, int F) {
    size_t nh = (size_t)N * 2 * F, no = (size_t)N * F;
    cval *dhh = put_c(be, h, nh), *o = NULL, *g = NULL, *dd = NULL;
    int guard = 0;
    if (!dout) {
        o = put_c(be, NULL, no);
        be->ops->swiglu_fwd(be, o, dhh, N, F);
        guard = get_c(be, out, o, no);
    } else {
        g = put_c(be, dout, no), dd = put_c(be, NULL, nh);
        be->ops->swiglu_bwd(be, dd, g, dhh, N, F);
        guard = get_c(be, dh, dd, nh);
    }
    dfree(be, dhh), dfree(be, o), dfree(be, g), dfree(be, dd);
    return guard;
}

static void t_swiglu(const Target *t, int backward) {
    for (int si = 0; si < N_SWI_SHAPES; si++) {
        int N = k_swi_shapes[si][0], F = k_swi_shapes[si][1];
        size_t nh = (size_t)N * 2 * F, no = (size_t)N * F;
        Rng r;
        rng_seed(&r, 1700 + 10 * backward + si);
        float *h = randn(&r, nh, 3.0, t->be->compute), *dout = randn(&r, no, 1, t->be->compute);  // both tails
        double *want = dnew(backward ? nh : no);
        for (int n = 0; n < N; n++)
            for (int f = 0; f < F; f++) {
                double a = h[(size_t)n * 2 * F + f], b = h[(size_t)n * 2 * F + F + f], s = 1.0 / (1.0 + exp(-a));
                double g = dout[(size_t)n * F + f];
                if (!backward) {
                    want[(size_t)n * F + f] = a * s * b;
                } else {
                    want[(size_t)n * 2 * F + f] = g * b * (s + a * s * (1.0 - s));
                    want[(size_t)n * 2 * F + F + f] = g * a * s;
                }
            }
        size_t nr = backward ? nh : no;
        float *got = xmalloc(nr * 4), *cpu = xmalloc(nr * 4);
        int guard = run_swiglu(t->be, got, got, h, backward ? dout : NULL, N, F);
        if (!t->is_cpu) run_swiglu(t->cpu, cpu, cpu, h, backward ? dout : NULL, N, F);
        Line L;
        line_begin(&L, t, backward ? "swiglu_bwd" : "swiglu_fwd", "N=%d F=%d", N, F);
        line_cmp(&L, backward ? "dh" : "out", got, NULL, want, t->is_cpu ? NULL : cpu, NULL, nr, t->tol);
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(h), free(dout), free(want), free(got), free(cpu);
    }
}
static void t_swiglu_fwd(const Target *t) { t_swiglu(t, 0); }
static void t_swiglu_bwd(const Target *t) { t_swiglu(t, 1); }
TEST(backend_ops_swiglu_fwd) { for_each_backend(t_swiglu_fwd); }
TEST(backend_ops_swiglu_bwd) { for_each_backend(t_swiglu_bwd); }

// ---- shift_bos ------------------------------------------------------------------------------------
static const int k_shift_shapes[][3] = {{1, 1, 3}, {3, 37, 16}, {2, 5, 1}, {4, 2, 7}};  // B, T, D
#define N_SHIFT_SHAPES 4

static int run_shift(Backend *be, float *in, float *dbos, const float *x, const float *bos, const float *din,
                     const float *dbos0, int B, int T, int D) {
    size_t n = (size_t)B * T * D;
    int guard;
    if (!din) {
        float *dx = put_f(be, x, n);
        cval *db = put_c(be, bos, (size_t)D), *di = put_c(be, NULL, n);
        be->ops->shift_bos(be, di, dx, db, B, T, D);
        guard = get_c(be, in, di, n);
        dfree(be, dx), dfree(be, db), dfree(be, di);
    } else {
        cval *di = put_c(be, din, n);
        float *db = put_f(be, dbos0, (size_t)D);
        be->ops->shift_bos_bwd(be, db, di, B, T, D);
        guard = get_f(be, dbos, db, (size_t)D);
        dfree(be, di), dfree(be, db);
    }
    return guard;
}

static void t_shift(const Target *t, int backward) {
    for (int si = 0; si < N_SHIFT_SHAPES; si++) {
        int B = k_shift_shapes[si][0], T = k_shift_shapes[si][1], D = k_shift_shapes[si][2];
        size_t n = (size_t)B * T * D;
        Rng r;
        rng_seed(&r, 1800 + 10 * backward + si);
        DType dt = t->be->compute;
        float *x = randn(&r, n, 1, DTYPE_F32), *bos = randn(&r, (size_t)D, 1, dt), *din = randn(&r, n, 1, dt);
        float *dbos0 = randn(&r, (size_t)D, 1, DTYPE_F32);
        size_t nr = backward ? (size_t)D : n;
        double *want = dnew(nr);
        if (!backward) {
            for (int b = 0; b < B; b++)
                for (int tt = 0; tt < T; tt++)
                    for (int d = 0; d < D; d++)
                        want[((size_t)b * T + tt) * D + d] = tt == 0 ? bos[d] : x[((size_t)b * T + tt - 1) * D + d];
        } else {
            for (int b = 0; b < B; b++)
                for (int d = 0; d < D; d++) want[d] += din[(size_t)b * T * D + d];
        }
        float *got = xmalloc(nr * 4), *cpu = xmalloc(nr * 4);
        int guard = run_shift(t->be, got, got, x, bos, backward ? din : NULL, dbos0, B, T, D);
        if (!t->is_cpu) run_shift(t->cpu, cpu, cpu, x, bos, backward ? din : NULL, dbos0, B, T, D);
        Line L;
        line_begin(&L, t, backward ? "shift_bos_bwd" : "shift_bos", "B=%d T=%d D=%d", B, T, D);
        if (!backward) {
            line_cmp(&L, "in", got, NULL, want, t->is_cpu ? NULL : cpu, NULL, n, t->tol);
            if (dt == DTYPE_F32) {  // a copy
                int bad = 0;
                for (size_t i = 0; i < n; i++) bad += got[i] != (float)want[i];
                line_exact(&L, "copy", bad);
            }
        } else {
            line_cmp(&L, "dbos+=", got, dbos0, want, t->is_cpu ? NULL : cpu, dbos0, (size_t)D, t->tol);
        }
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(x), free(bos), free(din), free(dbos0), free(want), free(got), free(cpu);
    }
}
static void t_shift_fwd(const Target *t) { t_shift(t, 0); }
static void t_shift_bwd(const Target *t) { t_shift(t, 1); }
TEST(backend_ops_shift_bos) { for_each_backend(t_shift_fwd); }
TEST(backend_ops_shift_bos_bwd) { for_each_backend(t_shift_bwd); }

// ---- gaussian nll ----------------------------------------------------------------------------------
// y (N, 2D) = [mu | pre], x (N, D): std = softplus(pre) + eps (pre itself above 20), var =
// max(std^2, eps), l = 0.5 (log var + (x - mu)^2 / var); dy = scale * dl/dy with the clamp passing
// the gradient straight through to std. Some pre are above 20, and with eps 1e-2 some are clamped.
static const int k_nll_shapes[][2] = {{1, 1}, {111, 16}, {37, 5}, {193, 3}};  // N, D
static const double k_nll_eps[] = {1e-8, 1e-2, 1e-2, 1e-8};
#define N_NLL_SHAPES 4

static int run_nll(Backend *be, float *dy, double *loss, const float *y, const float *x, int N, int D, double eps,
                   float scale, int with_dy) {
    size_t ny = (size_t)N * 2 * D, nx = (size_t)N * D;
    cval *dyy = put_c(be, y, ny), *ddy = with_dy ? put_c(be, NULL, ny) : NULL;
    float *dx = put_f(be, x, nx);
    double *acc = put_scalar(be, 1.5);  // accumulates
    be->ops->gaussian_nll(be, ddy, acc, dyy, dx, N, D, eps, scale);
    *loss = get_scalar(be, acc) - 1.5;
    int guard = with_dy ? get_c(be, dy, ddy, ny) : 0;
    dfree(be, dyy), dfree(be, ddy), dfree(be, dx), dfree(be, acc);
    return guard;
}

static void t_nll(const Target *t, int with_dy) {
    for (int si = 0; si < N_NLL_SHAPES; si++) {
        int N = k_nll_shapes[si][0], D = k_nll_shapes[si][1];
        double eps = k_nll_eps[si];
        size_t ny = (size_t)N * 2 * D, nx = (size_t)N * D;
        Rng r;
        rng_seed(&r, 1900 + 10 * with_dy + si);
        DType dt = t->be->compute;
        float *y = randn(&r, ny, 1, DTYPE_F32), *x = randn(&r, nx, 1, DTYPE_F32);
        const float special[] = {20.5f, -4.0f, 27.0f, -6.0f, 60.0f, -3.5f};  // above 20; clamped when eps 1e-2
        for (size_t i = 0; i < nx; i += 3) y[(i / D) * 2 * D + D + i % D] = special[(i / 3) % 6];
        quantize(dt, y, ny);
        const float scale = 0.37f;
        double want = 0, *wdy = dnew(ny);
        for (int n = 0; n < N; n++)
            for (int d = 0; d < D; d++) {
                double mu = y[(size_t)n * 2 * D + d], pre = y[(size_t)n * 2 * D + D + d], xv = x[(size_t)n * D + d];
                double sp = pre > 20 ? pre : log1p(exp(pre)), dsp = pre > 20 ? 1.0 : 1.0 / (1.0 + exp(-pre));
                double sd = sp + eps, var = fmax(sd * sd, eps), e = xv - mu;
                want += 0.5 * (log(var) + e * e / var);
                wdy[(size_t)n * 2 * D + d] = scale * (-e / var);
                wdy[(size_t)n * 2 * D + D + d] = scale * 0.5 * (1.0 / var - e * e / (var * var)) * 2.0 * sd * dsp;
            }
        float *dy = xmalloc(ny * 4), *c_dy = xmalloc(ny * 4);
        double loss = 0, c_loss = 0;
        int guard = run_nll(t->be, dy, &loss, y, x, N, D, eps, scale, with_dy);
        if (!t->is_cpu) run_nll(t->cpu, c_dy, &c_loss, y, x, N, D, eps, scale, with_dy);
        Line L;
        line_begin(&L, t, with_dy ? "gaussian_nll+dy" : "gaussian_nll", "N=%d D=%d eps=%g", N, D, eps);
        line_cmp_scalar(&L, "loss+=", loss, want, c_loss, t->tol);
        if (with_dy) line_cmp(&L, "dy", dy, NULL, wdy, t->is_cpu ? NULL : c_dy, NULL, ny, t->tol);
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(y), free(x), free(wdy), free(dy), free(c_dy);
    }
}
static void t_nll_fwd(const Target *t) { t_nll(t, 0); }
static void t_nll_dy(const Target *t) { t_nll(t, 1); }
TEST(backend_ops_gaussian_nll) { for_each_backend(t_nll_fwd); }
TEST(backend_ops_gaussian_nll_dy) { for_each_backend(t_nll_dy); }

// ---- mixture nll ------------------------------------------------------------------------------------
// y (N, W) = [logits (K) | mu (K, D) | pre (K, D)] (K = 1: [mu | pre]), x (N, D); per row
// l = -logsumexp_k (log_softmax(logits)_k - sum_d 0.5 (log var_kd + (x_d - mu_kd)^2 / var_kd)),
// dy = scale * dl/dy. The double reference here stores every lp_k and shifts by their maximum.
// Shapes: K = 1 (the seed's head through this op), a single row, K = 16; rows 0..2 of each shape
// are hard cases for the log-sum-exp: components 1000 apart (every lp but one near -5e5: exp
// underflows without the shift), one component dominating by its logit (+-40), and pre above 20.
static const int k_mix_shapes[][3] = {{23, 3, 1}, {1, 2, 2}, {37, 5, 3}, {19, 16, 4}, {7, 4, 16}};  // N, D, K
static const double k_mix_eps[] = {1e-8, 1e-2, 1e-8, 1e-2, 1e-8};
#define N_MIX_SHAPES 5

static size_t mix_width(int D, int K) { return K == 1 ? 2 * (size_t)D : (size_t)K + 2 * (size_t)K * D; }

static int run_mix(Backend *be, float *dy, double *loss, const float *y, const float *x, int N, int D, int K,
                   double eps, float scale, int with_dy) {
    size_t ny = (size_t)N * mix_width(D, K), nx = (size_t)N * D;
    cval *dyy = put_c(be, y, ny), *ddy = with_dy ? put_c(be, NULL, ny) : NULL;
    float *dx = put_f(be, x, nx);
    double *acc = put_scalar(be, 1.5);  // accumulates
    be->ops->mixture_nll(be, ddy, acc, dyy, dx, N, D, K, eps, scale);
    *loss = get_scalar(be, acc) - 1.5;
    int guard = with_dy ? get_c(be, dy, ddy, ny) : 0;
    dfree(be, dyy), dfree(be, ddy), dfree(be, dx), dfree(be, acc);
    return guard;
}

// The double reference of one row; returns l, adds scale * dl/dy into wdy (W).
static double mix_ref_row(const float *y, const float *x, int D, int K, double eps, double scale, double *wdy) {
    const float *lg = y, *mu = y + (K > 1 ? K : 0), *pre = mu + (size_t)K * D;
    double *lp = dnew((size_t)K), *logpi = dnew((size_t)K), mx = -INFINITY, lmx = -INFINITY, ls = 0, s = 0;
    for (int k = 0; k < K && K > 1; k++) lmx = fmax(lmx, lg[k]);
    for (int k = 0; k < K && K > 1; k++) ls += exp(lg[k] - lmx);
    for (int k = 0; k < K; k++) {
        logpi[k] = K > 1 ? lg[k] - lmx - log(ls) : 0.0;
        lp[k] = logpi[k];
        for (int d = 0; d < D; d++) {
            double p = pre[k * D + d], sp = p > 20 ? p : log1p(exp(p)), sd = sp + eps, var = fmax(sd * sd, eps);
            double e = x[d] - mu[k * D + d];
            lp[k] -= 0.5 * (log(var) + e * e / var);
        }
        mx = fmax(mx, lp[k]);
    }
    for (int k = 0; k < K; k++) s += exp(lp[k] - mx);
    double l = -(mx + log(s));
    double *dlg = wdy, *dmu = wdy + (K > 1 ? K : 0), *dpre = dmu + (size_t)K * D;
    for (int k = 0; k < K; k++) {
        double r = exp(lp[k] + l);
        if (K > 1) dlg[k] = scale * (exp(logpi[k]) - r);
        for (int d = 0; d < D; d++) {
            double p = pre[k * D + d], sp = p > 20 ? p : log1p(exp(p)), dsp = p > 20 ? 1.0 : 1.0 / (1.0 + exp(-p));
            double sd = sp + eps, var = fmax(sd * sd, eps), e = x[d] - mu[k * D + d];
            dmu[k * D + d] = scale * r * (-e / var);
            dpre[k * D + d] = scale * r * 0.5 * (1.0 / var - e * e / (var * var)) * 2.0 * sd * dsp;
        }
    }
    free(lp), free(logpi);
    return l;
}

// Rows 0..2 made hard (see above), on rows that exist.
static void mix_hard_rows(float *y, float *x, int N, int D, int K) {
    size_t W = mix_width(D, K);
    float *mu0 = y + (K > 1 ? K : 0);
    for (int k = 0; k < K; k++)  // row 0: component k centred 1000 k away from x (k = 0 at x + 0.3)
        for (int d = 0; d < D; d++) mu0[k * D + d] = x[d] + 0.3f + 1000.0f * (float)k;
    if (N > 1 && K > 1)  // row 1: logit 0 is +40, the others -40
        for (int k = 0; k < K; k++) y[W + k] = k == 0 ? 40.0f : -40.0f;
    if (N > 2)  // row 2: pre above 20 (std = pre)
        for (int k = 0; k < K; k++) y[2 * W + (K > 1 ? K : 0) + (size_t)K * D + (size_t)k * D] = 21.5f;
}

static void t_mix(const Target *t, int with_dy) {
    for (int si = 0; si < N_MIX_SHAPES; si++) {
        int N = k_mix_shapes[si][0], D = k_mix_shapes[si][1], K = k_mix_shapes[si][2];
        double eps = k_mix_eps[si];
        size_t W = mix_width(D, K), ny = (size_t)N * W, nx = (size_t)N * D;
        Rng r;
        rng_seed(&r, 2300 + 10 * with_dy + si);
        DType dt = t->be->compute;
        float *y = randn(&r, ny, 1, DTYPE_F32), *x = randn(&r, nx, 1, DTYPE_F32);
        for (size_t i = 0; i < ny; i++) y[i] *= 1.5f;
        mix_hard_rows(y, x, N, D, K);
        quantize(dt, y, ny);
        const float scale = 0.37f;
        double want = 0, *wdy = dnew(ny);
        for (int n = 0; n < N; n++) want += mix_ref_row(y + n * W, x + (size_t)n * D, D, K, eps, scale, wdy + n * W);
        float *dy = xmalloc(ny * 4), *c_dy = xmalloc(ny * 4);
        double loss = 0, c_loss = 0;
        int guard = run_mix(t->be, dy, &loss, y, x, N, D, K, eps, scale, with_dy);
        if (!t->is_cpu) run_mix(t->cpu, c_dy, &c_loss, y, x, N, D, K, eps, scale, with_dy);
        Line L;
        line_begin(&L, t, with_dy ? "mixture_nll+dy" : "mixture_nll", "N=%d D=%d K=%d eps=%g", N, D, K, eps);
        line_cmp_scalar(&L, "loss+=", loss, want, c_loss, t->tol);
        if (with_dy) line_cmp(&L, "dy", dy, NULL, wdy, t->is_cpu ? NULL : c_dy, NULL, ny, t->tol);
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(y), free(x), free(wdy), free(dy), free(c_dy);
    }
}
static void t_mix_fwd(const Target *t) { t_mix(t, 0); }
static void t_mix_dy(const Target *t) { t_mix(t, 1); }
TEST(backend_ops_mixture_nll) { for_each_backend(t_mix_fwd); }
TEST(backend_ops_mixture_nll_dy) { for_each_backend(t_mix_dy); }

// With K = 1 the mixture op is the seed's gaussian_nll summed by rows: the same loss (double sums
// of the same terms, 1e-12) and the same dy (bit for bit in float32: the same formula, r = 1).
static void t_mix_k1(const Target *t) {
    const int N = 41, D = 7;
    Rng r;
    rng_seed(&r, 2399);
    float *y = randn(&r, (size_t)N * 2 * D, 1, t->be->compute), *x = randn(&r, (size_t)N * D, 1, DTYPE_F32);
    float *a = xmalloc((size_t)N * 2 * D * 4), *b = xmalloc((size_t)N * 2 * D * 4);
    double la = 0, lb = 0;
    run_mix(t->be, a, &la, y, x, N, D, 1, 1e-8, 0.5f, 1);
    run_nll(t->be, b, &lb, y, x, N, D, 1e-8, 0.5f, 1);
    CHECK(fabs(la - lb) <= 1e-12 * fabs(lb), "%s: mixture_nll K=1 loss %.17g, gaussian_nll %.17g", t->label, la, lb);
    int diff = 0;
    for (int i = 0; i < N * 2 * D; i++) diff += fabsf(a[i] - b[i]) > (t->be->compute == DTYPE_F32 ? 0.0f : 1e-2f * fabsf(b[i]));
    CHECK(diff == 0, "%s: mixture_nll K=1 dy differs from gaussian_nll's in %d elements", t->label, diff);
    printf("  %-9s mixture_nll K=1 vs gaussian_nll: loss %.17g vs %.17g, dy %d elements differ\n", t->label, la, lb, diff);
    free(y), free(x), free(a), free(b);
}
TEST(backend_ops_mixture_nll_k1_is_gaussian_nll) { for_each_backend(t_mix_k1); }

// ---- class embedding --------------------------------------------------------------------------------
// forward: res[b, 0, :] = table[labels[b], :], the other rows untouched; backward: dtable[labels[b]] +=
// dres[b, 0, :] (labels repeat: the rows add up), then dres[b, 0, :] = 0 and the other rows untouched.
static const int k_ce_shapes[][4] = {{1, 1, 3, 2}, {3, 5, 16, 4}, {6, 2, 37, 3}, {2, 9, 8, 11}};  // B, T, C, rows
#define N_CE_SHAPES 4

static int32_t *put_labels(Backend *be, const int32_t *h, int B) {
    int32_t *d = dalloc(be, (size_t)B * sizeof *d);
    be->ops->upload(be, d, h, (size_t)B * sizeof *d);
    return d;
}

static int run_ce(Backend *be, float *out, float *dres_out, const float *res, const float *table, const float *dt0,
                  const int32_t *labels, int B, int T, int C, int rows, int backward) {
    size_t n = (size_t)B * T * C, nt = (size_t)rows * C;
    int32_t *dl = put_labels(be, labels, B);
    int guard;
    if (!backward) {
        cval *dr = put_c(be, res, n), *dtab = put_c(be, table, nt);
        be->ops->class_embed_fwd(be, dr, dtab, dl, B, T, C);
        guard = get_c(be, out, dr, n);
        dfree(be, dr), dfree(be, dtab);
    } else {
        cval *dr = put_c(be, res, n);
        float *dtab = put_f(be, dt0, nt);
        be->ops->class_embed_bwd(be, dtab, dr, dl, B, T, C);
        guard = get_f(be, out, dtab, nt) + get_c(be, dres_out, dr, n);
        dfree(be, dr), dfree(be, dtab);
    }
    dfree(be, dl);
    return guard;
}

static void t_ce(const Target *t, int backward) {
    for (int si = 0; si < N_CE_SHAPES; si++) {
        int B = k_ce_shapes[si][0], T = k_ce_shapes[si][1], C = k_ce_shapes[si][2], rows = k_ce_shapes[si][3];
        size_t n = (size_t)B * T * C, nt = (size_t)rows * C;
        Rng r;
        rng_seed(&r, 2500 + 10 * backward + si);
        DType dt = t->be->compute;
        float *res = randn(&r, n, 1, dt), *table = randn(&r, nt, 1, dt), *dt0 = randn(&r, nt, 1, DTYPE_F32);
        int32_t labels[16];
        for (int b = 0; b < B; b++) labels[b] = (int32_t)((b * 7 + si) % rows) / (b % 2 ? 1 : 2);  // repeats
        size_t nr = backward ? nt : n;
        double *want = dnew(nr);
        float *want_res = xmalloc(n * 4);  // the rows that must be exact afterwards
        memcpy(want_res, res, n * 4);
        for (int b = 0; b < B; b++)
            for (int c = 0; c < C; c++) {
                size_t i = (size_t)b * T * C + c;
                if (!backward) want_res[i] = table[(size_t)labels[b] * C + c];
                else want[(size_t)labels[b] * C + c] += res[i], want_res[i] = 0.0f;
            }
        if (!backward)
            for (size_t i = 0; i < n; i++) want[i] = want_res[i];
        float *got = xmalloc(nr * 4), *cpu = xmalloc(nr * 4), *gres = xmalloc(n * 4), *cres = xmalloc(n * 4);
        int guard = run_ce(t->be, got, gres, res, table, dt0, labels, B, T, C, rows, backward);
        if (!t->is_cpu) run_ce(t->cpu, cpu, cres, res, table, dt0, labels, B, T, C, rows, backward);
        Line L;
        line_begin(&L, t, backward ? "class_embed_bwd" : "class_embed_fwd", "B=%d T=%d C=%d rows=%d", B, T, C, rows);
        int bad = 0;
        const float *check = backward ? gres : got;  // a copy (forward), or rows zeroed / untouched (backward)
        for (size_t i = 0; i < n; i++) bad += check[i] != want_res[i];
        if (!backward) {
            line_cmp(&L, "res", got, NULL, want, t->is_cpu ? NULL : cpu, NULL, n, t->tol);
        } else {
            line_cmp(&L, "dtable+=", got, dt0, want, t->is_cpu ? NULL : cpu, dt0, nt, t->tol);
        }
        line_exact(&L, backward ? "dres" : "copy", bad);
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(res), free(table), free(dt0), free(want), free(want_res), free(got), free(cpu), free(gres), free(cres);
    }
}
static void t_ce_fwd(const Target *t) { t_ce(t, 0); }
static void t_ce_bwd(const Target *t) { t_ce(t, 1); }
TEST(backend_ops_class_embed_fwd) { for_each_backend(t_ce_fwd); }
TEST(backend_ops_class_embed_bwd) { for_each_backend(t_ce_bwd); }

// ---- sumsq ----------------------------------------------------------------------------------------
static void t_sumsq(const Target *t) {
    const size_t sizes[] = {1, 63, 1001, 100003};
    for (int si = 0; si < 4; si++) {
        size_t n = sizes[si];
        Rng r;
        rng_seed(&r, 2000 + si);
        float *p = randn(&r, n, 2, DTYPE_F32);
        double want = 0;
        for (size_t i = 0; i < n; i++) want += (double)p[i] * p[i];
        double got[2] = {0, 0};
        for (int k = 0; k < (t->is_cpu ? 1 : 2); k++) {
            Backend *be = k ? t->cpu : t->be;
            float *d = put_f(be, p, n);
            double *acc = put_scalar(be, 0.5);  // accumulates
            be->ops->sumsq(be, acc, d, n);
            got[k] = get_scalar(be, acc) - 0.5;
            dfree(be, d), dfree(be, acc);
        }
        Line L;
        line_begin(&L, t, "sumsq", "n=%zu", n);
        L.tol = TOL_SUMSQ;
        line_cmp_scalar(&L, "acc+=", got[0], want, got[1], TOL_SUMSQ);
        line_end(&L);
        free(p);
    }
}
TEST(backend_ops_sumsq) { for_each_backend(t_sumsq); }

// ---- adamw ----------------------------------------------------------------------------------------
// PyTorch's AdamW in double on the same float32 inputs and float32 hyperparameters: g' = g * scale,
// p *= 1 - lr wd, m = b1 m + (1 - b1) g', v = b2 v + (1 - b2) g'^2,
// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). lr is large (0.05) so that the
// update, which is compared, is far above the float32 rounding of p.
static const size_t k_opt_sizes[] = {1, 37, 10007, 4099};
static const int k_opt_t[] = {1, 7, 3, 1};

static int run_adamw(Backend *be, float *p, float *m, float *v, float *pc, const float *g, size_t n, int t,
                     int compute_mode) {
    const float lr = 0.05f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.7f;
    float *dp = put_f(be, p, n), *dg = put_f(be, g, n), *dm = put_f(be, m, n), *dv = put_f(be, v, n);
    // compute copy: float32 compute keeps it in p (NULL, or p itself); otherwise a buffer of its own
    cval *dpc = be->compute == DTYPE_F32 ? (compute_mode ? (cval *)(void *)dp : NULL) : put_c(be, NULL, n);
    be->ops->adamw(be, dp, dpc, dg, dm, dv, n, lr, b1, b2, eps, wd, gs, t);
    int guard = get_f(be, p, dp, n) + get_f(be, m, dm, n) + get_f(be, v, dv, n);
    if (be->compute != DTYPE_F32) guard += get_c(be, pc, dpc, n);
    else memcpy(pc, p, n * sizeof(float));
    dfree(be, dp), dfree(be, dg), dfree(be, dm), dfree(be, dv);
    if (be->compute != DTYPE_F32) dfree(be, dpc);
    return guard;
}

static void t_adamw(const Target *tg) {
    for (int si = 0; si < 4; si++) {
        size_t n = k_opt_sizes[si];
        int t = k_opt_t[si];
        Rng r;
        rng_seed(&r, 2100 + si);
        float *p0 = randn(&r, n, 1, DTYPE_F32), *g = randn(&r, n, 1, DTYPE_F32), *m0 = randn(&r, n, 0.1, DTYPE_F32);
        float *v0 = randn(&r, n, 0.1, DTYPE_F32);
        for (size_t i = 0; i < n; i++) v0[i] = v0[i] * v0[i];  // v >= 0
        if (t == 1)
            for (size_t i = 0; i < n; i++) m0[i] = v0[i] = 0;  // the first step starts from zero moments
        const double lr = 0.05f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.7f;
        double *wdp = dnew(n), *wm = dnew(n), *wv = dnew(n), *wp = dnew(n);
        for (size_t i = 0; i < n; i++) {
            double gi = (double)g[i] * gs, p = p0[i] * (1.0 - lr * wd);
            wm[i] = b1 * m0[i] + (1 - b1) * gi;
            wv[i] = b2 * v0[i] + (1 - b2) * gi * gi;
            p -= lr / (1 - pow(b1, t)) * wm[i] / (sqrt(wv[i]) / sqrt(1 - pow(b2, t)) + eps);
            wp[i] = p, wdp[i] = p - p0[i];
        }
        float *p = xmalloc(n * 4), *m = xmalloc(n * 4), *v = xmalloc(n * 4), *pc = xmalloc(n * 4);
        float *cp_ = xmalloc(n * 4), *cm = xmalloc(n * 4), *cv = xmalloc(n * 4), *cpc = xmalloc(n * 4);
        memcpy(p, p0, n * 4), memcpy(m, m0, n * 4), memcpy(v, v0, n * 4);
        memcpy(cp_, p0, n * 4), memcpy(cm, m0, n * 4), memcpy(cv, v0, n * 4);
        int guard = run_adamw(tg->be, p, m, v, pc, g, n, t, si % 2);
        if (!tg->is_cpu) run_adamw(tg->cpu, cp_, cm, cv, cpc, g, n, t, si % 2);
        const int c = !tg->is_cpu;
        Line L;
        line_begin(&L, tg, "adamw", "n=%zu t=%d%s", n, t,
                   tg->be->compute != DTYPE_F32 ? " p_compute" : si % 2 ? " p_compute=p" : " p_compute=NULL");
        line_cmp(&L, "dp", p, p0, wdp, c ? cp_ : NULL, p0, n, TOL_F32);
        line_cmp(&L, "m", m, NULL, wm, c ? cm : NULL, NULL, n, TOL_F32);
        line_cmp(&L, "v", v, NULL, wv, c ? cv : NULL, NULL, n, TOL_F32);
        if (tg->be->compute != DTYPE_F32) line_cmp(&L, "p_compute", pc, NULL, wp, c ? cpc : NULL, NULL, n, tg->tol);
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(p0), free(g), free(m0), free(v0), free(wdp), free(wm), free(wv), free(wp);
        free(p), free(m), free(v), free(pc), free(cp_), free(cm), free(cv), free(cpc);
    }
}
TEST(backend_ops_adamw) { for_each_backend(t_adamw); }

// ---- ema_update -----------------------------------------------------------------------------------
// ema = decay ema + (1 - decay) p; decay 0 is model_weights_copy's copy and must be exact.
static int run_ema(Backend *be, float *ema, float *ec, const float *p, size_t n, float decay, int compute_mode) {
    float *de = put_f(be, ema, n), *dp = put_f(be, p, n);
    cval *dec = be->compute == DTYPE_F32 ? (compute_mode ? (cval *)(void *)de : NULL) : put_c(be, NULL, n);
    be->ops->ema_update(be, de, dec, dp, n, decay);
    int guard = get_f(be, ema, de, n);
    if (be->compute != DTYPE_F32) guard += get_c(be, ec, dec, n), dfree(be, dec);
    else memcpy(ec, ema, n * sizeof(float));
    dfree(be, de), dfree(be, dp);
    return guard;
}

static void t_ema(const Target *t) {
    const float decays[] = {0.9f, 0.0f, 0.999f, 0.0f};
    for (int si = 0; si < 4; si++) {
        size_t n = k_opt_sizes[si];
        float decay = decays[si];
        Rng r;
        rng_seed(&r, 2200 + si);
        float *e0 = randn(&r, n, 1, DTYPE_F32), *p = randn(&r, n, 1, DTYPE_F32);
        double *wd = dnew(n), *we = dnew(n);
        for (size_t i = 0; i < n; i++) {
            we[i] = (double)decay * e0[i] + (1.0 - (double)decay) * p[i];
            wd[i] = we[i] - e0[i];
        }
        float *e = xmalloc(n * 4), *ec = xmalloc(n * 4), *ce = xmalloc(n * 4), *cec = xmalloc(n * 4);
        memcpy(e, e0, n * 4), memcpy(ce, e0, n * 4);
        int guard = run_ema(t->be, e, ec, p, n, decay, si % 2);
        if (!t->is_cpu) run_ema(t->cpu, ce, cec, p, n, decay, si % 2);
        Line L;
        line_begin(&L, t, "ema_update", "n=%zu decay=%g%s", n, decay,
                   t->be->compute != DTYPE_F32 ? " ema_compute" : si % 2 ? " ema_compute=ema" : " ema_compute=NULL");
        line_cmp(&L, "ema", e, NULL, we, t->is_cpu ? NULL : ce, NULL, n, TOL_F32);
        // the increment (1 - decay)(p - ema) too, where it is large enough against the float32
        // rounding of the result (6e-8 |ema|): at decay 0.999 that rounding is ~6e-5 of it
        if (decay <= 0.9f) line_cmp(&L, "d ema", e, e0, wd, t->is_cpu ? NULL : ce, e0, n, TOL_F32);
        if (t->be->compute != DTYPE_F32) line_cmp(&L, "ema_compute", ec, NULL, we, t->is_cpu ? NULL : cec, NULL, n, t->tol);
        if (decay == 0.0f) {
            int bad = 0;
            for (size_t i = 0; i < n; i++) bad += e[i] != p[i];
            line_exact(&L, "copy", bad);
        }
        line_exact(&L, "guard", guard);
        line_end(&L);
        free(e0), free(p), free(wd), free(we), free(e), free(ec), free(ce), free(cec);
    }
}
TEST(backend_ops_ema_update) { for_each_backend(t_ema); }
