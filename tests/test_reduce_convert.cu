// test_reduce_convert: the conversion kernels of the bf16 gradient exchange (kernels/reduce_convert.cu,
// used by kernels/dist_nccl.cu under [train] grad_reduce_dtype = bf16) against the CPU's half.c, bit
// for bit: float32 -> bf16 rounds to nearest even (ties, carries into the exponent, overflow to
// infinity, subnormals, signed zeros; NaN stays NaN), and bf16 -> float32 times the mean's scale over
// every bf16 value; on more elements than the grid covers at once (the grid-stride loop), at an odd
// offset, and n = 0 writes nothing.
// Built only under emulation (g++ -x c++ -DGIVT_CUDA_EMU), into the test runner.
#include "launch.cuh"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

extern "C" {
#include "half.h"
#include "harness.h"
}

namespace {

uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

}  // namespace

TEST(reduce_convert_f32_to_bf16_rounds_as_the_cpu) {
    Backend *be = backend_open("cuda", PRECISION_NO);
    if (!be) {
        t_skip("no CUDA backend (emulated) in this build");
        return;
    }
    std::vector<float> x;
    const uint32_t special[] = {
        0x00000000u, 0x80000000u,              // +-0
        0x3F808000u, 0x3F818000u,              // ties: to even (down), to even (up)
        0x3F808001u, 0x3F807FFFu,              // just above and below a tie
        0x3FFF8000u, 0x7F7FFFFFu, 0xFF7FFFFFu, // carry into the exponent; the largest floats: to infinity
        0x7F7F7FFFu,                           // the largest that stays finite
        0x00000001u, 0x00008000u, 0x00018000u, 0x807FFFFFu,  // subnormals (ties among them)
        0x7F800000u, 0xFF800000u,              // infinities
    };
    for (uint32_t u : special) x.push_back(bits_f32(u));
    uint64_t s = 12345;
    while (x.size() < 8 * 256 * 3 + 17) {  // more than 8 blocks of 256 (the emulation's grid) cover at once
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t u = (uint32_t)(s >> 32);
        if ((u & 0x7F800000u) == 0x7F800000u) u &= 0xBFFFFFFFu;  // no NaN / Inf among the random ones
        x.push_back(bits_f32(u));
    }
    x.push_back(NAN);
    const size_t n = x.size(), off = 1;  // one element into the allocations: no alignment assumed
    float *src = (float *)be->ops->alloc(be, (n + off) * sizeof(float));
    uint16_t *dst = (uint16_t *)be->ops->alloc(be, (n + off + 1) * sizeof(uint16_t));
    be->ops->upload(be, src + off, x.data(), n * sizeof(float));
    std::vector<uint16_t> guard(n + off + 1, 0xABCDu), got(n + off + 1);
    be->ops->upload(be, dst, guard.data(), guard.size() * sizeof(uint16_t));
    cuda_grads_to_bf16(be, cuda_ctx(be)->stream, dst + off, src + off, 0);  // n = 0: nothing
    be->ops->download(be, got.data(), dst, got.size() * sizeof(uint16_t));
    CHECK(got == guard, "n = 0 wrote something");
    cuda_grads_to_bf16(be, cuda_ctx(be)->stream, dst + off, src + off, n);
    be->ops->download(be, got.data(), dst, got.size() * sizeof(uint16_t));
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const uint16_t want = half_f32_to_bf16(x[i]), have = got[i + off];
        const bool nan = isnan(x[i]);
        const bool ok = nan ? isnan(half_bf16_to_f32(have)) : have == want;
        if (!ok && bad++ < 5)
            CHECK(ok, "element %zu: float 0x%08x -> bf16 0x%04x, the CPU 0x%04x", i, f32_bits(x[i]), have, want);
    }
    CHECK(bad == 0, "%d of %zu elements differ", bad, n);
    CHECK(got[0] == 0xABCDu && got[n + off] == 0xABCDu, "written outside [0, n)");
    be->ops->free(be, src);
    be->ops->free(be, dst);
    backend_close(be);
}

TEST(reduce_convert_bf16_to_f32_mean_as_the_cpu) {
    Backend *be = backend_open("cuda", PRECISION_NO);
    if (!be) {
        t_skip("no CUDA backend (emulated) in this build");
        return;
    }
    const size_t n = 65536, off = 1;  // every bf16 value
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; i++) h[i] = (uint16_t)i;
    uint16_t *src = (uint16_t *)be->ops->alloc(be, (n + off) * sizeof(uint16_t));
    float *dst = (float *)be->ops->alloc(be, (n + off + 1) * sizeof(float));
    be->ops->upload(be, src + off, h.data(), n * sizeof(uint16_t));
    const float scales[] = {1.0f, 0.5f, 1.0f / 3.0f, 1.0f / 7.0f};  // 1, 2, 3 and 7 ranks
    std::vector<float> got(n + off + 1), guard(n + off + 1, -1.5f);
    for (float scale : scales) {
        be->ops->upload(be, dst, guard.data(), guard.size() * sizeof(float));
        cuda_grads_from_bf16(be, cuda_ctx(be)->stream, dst + off, src + off, n, scale);
        be->ops->download(be, got.data(), dst, got.size() * sizeof(float));
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            const float want = half_bf16_to_f32(h[i]) * scale, have = got[i + off];
            const bool ok = isnan(want) ? isnan(have) : f32_bits(have) == f32_bits(want);
            if (!ok && bad++ < 5)
                CHECK(ok, "scale %g: bf16 0x%04zx -> %a, the CPU %a", (double)scale, i, (double)have, (double)want);
        }
        CHECK(bad == 0, "scale %g: %d of %zu elements differ", (double)scale, bad, n);
        CHECK(got[0] == -1.5f && got[n + off] == -1.5f, "written outside [0, n)");
    }
    be->ops->free(be, src);
    be->ops->free(be, dst);
    backend_close(be);
}
