// test_ops_cpu: value checks of CPU ops beyond the reference models: SwiGLU (its vectorised exp)
// over the whole float range, and NaN propagation. The CPU backend is opened with
// backend_open("cpu", PRECISION_NO) and closed at the end of each test; its compute buffers (cval *) are
// float32, so host float arrays are passed cast to cval *.
#include <math.h>
#include <stdlib.h>

#include "harness.h"
#include "backend.h"
#include "ops.h"
#include "util.h"

#define CV(p) ((cval *)(void *)(p))

static Backend *open_cpu(void) {
    Backend *be = backend_open("cpu", PRECISION_NO);
    if (!be) givt_die("backend_open(cpu): %s", givt_last_error());
    if (be->compute != DTYPE_F32) givt_die("the CPU backend computes in %s, not float32", dtype_name(be->compute));
    return be;
}

// silu(a) * b against double precision for a in [-100, 100]: error <= 1e-6 of |out| plus 1e-30
// (far in the negative tail the clamped exp gives ~1e-38 * a instead of exp(a) * a). The derivative
// s + a s (1 - s) crosses zero near a = -1.28, where float32 cancellation leaves an absolute error
// of a few 1e-8: its bound is 1e-6 relative plus 1e-7 absolute.
TEST(ops_cpu_swiglu_matches_double_precision_over_the_range) {
    Backend *be = open_cpu();
    enum { N = 1, F = 20001 };
    float *h = malloc(2 * F * sizeof(float)), *out = malloc(F * sizeof(float));
    float *dh = malloc(2 * F * sizeof(float)), *g = malloc(F * sizeof(float));
    for (int f = 0; f < F; f++) {
        h[f] = -100.0f + 0.01f * (float)f;
        h[F + f] = 0.75f;
        g[f] = 1.0f;
    }
    be->ops->swiglu_fwd(be, CV(out), CV(h), N, F);
    be->ops->swiglu_bwd(be, CV(dh), CV(g), CV(h), N, F);
    double worst = 0, worst_d = 0;
    for (int f = 0; f < F; f++) {
        double a = h[f], s = 1.0 / (1.0 + exp(-a)), want = a * s * 0.75;
        double dwant = 0.75 * (s + a * s * (1.0 - s));
        double e = fabs(out[f] - want) / (fabs(want) + 1e-30 / 1e-6);
        double ed = fabs(dh[f] - dwant) / (fabs(dwant) + 1e-7 / 1e-6);
        worst = fmax(worst, e);
        worst_d = fmax(worst_d, ed);
    }
    CHECK(worst <= 1e-6, "forward worst relative error %.3g", worst);
    CHECK(worst_d <= 1e-6, "backward worst relative error %.3g", worst_d);
    printf("  swiglu over [-100, 100]: forward %.2e, backward %.2e relative\n", worst, worst_d);
    free(h), free(out), free(dh), free(g);
    backend_close(be);
}

TEST(ops_cpu_swiglu_propagates_nan_and_inf) {
    Backend *be = open_cpu();
    float h[6] = {NAN, INFINITY, 1.0f, 2.0f, 2.0f, NAN}, out[3], dh[6], g[3] = {1, 1, 1};
    be->ops->swiglu_fwd(be, CV(out), CV(h), 1, 3);
    be->ops->swiglu_bwd(be, CV(dh), CV(g), CV(h), 1, 3);
    CHECK(isnan(out[0]) && isnan(dh[0]) && isnan(dh[3]), "NaN in a must give NaN");
    CHECK(!isfinite(out[1]), "a = inf gives %g", out[1]);
    CHECK(isnan(out[2]) && isnan(dh[2]), "NaN in b must give NaN");
    backend_close(be);
}
