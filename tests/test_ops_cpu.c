// test_ops_cpu: value checks of CPU ops beyond the reference models: SwiGLU (its vectorised exp)
// over the whole float range, and NaN propagation.
#include <math.h>
#include <stdlib.h>

#include "harness.h"
#include "ops.h"

// silu(a) * b against double precision for a in [-100, 100]: error <= 1e-6 of |out| plus 1e-30
// (far in the negative tail the clamped exp gives ~1e-38 * a instead of exp(a) * a). The derivative
// s + a s (1 - s) crosses zero near a = -1.28, where float32 cancellation leaves an absolute error
// of a few 1e-8: its bound is 1e-6 relative plus 1e-7 absolute.
TEST(swiglu_matches_double_precision_over_the_range) {
    enum { N = 1, F = 20001 };
    float *h = malloc(2 * F * sizeof(float)), *out = malloc(F * sizeof(float));
    float *dh = malloc(2 * F * sizeof(float)), *g = malloc(F * sizeof(float));
    for (int f = 0; f < F; f++) {
        h[f] = -100.0f + 0.01f * (float)f;
        h[F + f] = 0.75f;
        g[f] = 1.0f;
    }
    ops_cpu()->swiglu_fwd(out, h, N, F);
    ops_cpu()->swiglu_bwd(dh, g, h, N, F);
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
}

TEST(swiglu_propagates_nan_and_inf) {
    float h[6] = {NAN, INFINITY, 1.0f, 2.0f, 2.0f, NAN}, out[3], dh[6], g[3] = {1, 1, 1};
    ops_cpu()->swiglu_fwd(out, h, 1, 3);
    ops_cpu()->swiglu_bwd(dh, g, h, 1, 3);
    CHECK(isnan(out[0]) && isnan(dh[0]) && isnan(dh[3]), "NaN in a must give NaN");
    CHECK(!isfinite(out[1]), "a = inf gives %g", out[1]);
    CHECK(isnan(out[2]) && isnan(dh[2]), "NaN in b must give NaN");
}
