// test_attn_mma_bwd: the tensor-core attention backward (kernels/attention_mma_bwd.cu,
// cuda_attn_mma_bwd) under the emulation, on its own (no forward kernel): the inputs are drawn in
// float32 and rounded to bf16; refop_attention (tests/ref_ops.c, float64) gives the rotated q and k,
// the output O and the gradients dq, dk, dv with respect to the unrotated q, k and v; the kernel gets
// bf16 copies of the rotated q, k, of v, O and dO, and L = log sum exp per query row computed here in
// float64 from the bf16 rotated q and k (what an exact forward would save).
// Checked per case: each gradient within 1e-2 of the float64 one (test_backend_ops.c's measure:
// max(||got - want||_2 / ||want||_2, max|got - want| / max|want|)); every element of dq, dk, dv
// written (they start as NaN) and finite; the padding of strided views (NaN) neither read nor
// written; the same bits in another fiber order. Shapes: T 1 .. 130 (partial last tiles, one and
// three key tiles), hd 6 .. 128 (every hdp / 16 from 1 to 8; hd % 8 != 0), n_rot 0, partial (half
// of it odd and even) and full, dense and padded strides (16-byte aligned and odd), and key-tile
// groups of 1 to 4 tiles (cuda_attn_mma_bwd_set_blocks: as many heads would give).
#include "launch.cuh"

#include "attention_mma.cuh"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

extern "C" {
#include "half.h"
#include "harness.h"
#include "ref_ops.h"
}

void cuda_attn_mma_bwd_set_blocks(int n);  // attention_mma_bwd.cu, for tests

namespace {

struct AmCase {
    int B, H, hd, T, n_rot;
    int qpad, kvpad, bpad;  // extra elements per row (q; k and v) and per sequence
    int blocks;             // cuda_attn_mma_bwd_set_blocks (0: the default)
};

struct AmLcg {
    uint64_t s;
    float next() {  // uniform in [-1, 1)
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return (float)((s >> 40) * (2.0 / 16777216.0)) - 1.0f;
    }
};

const uint16_t AM_NAN = 0x7fc1;  // the padding and the outputs' initial value

uint16_t am_bf(double x) { return half_f32_to_bf16((float)x); }
double am_f(uint16_t h) { return (double)half_bf16_to_f32(h); }

// A strided view (B, T, C) with row stride row and batch stride batch, as bf16 host memory
struct AmView {
    int B, T, C;
    size_t row, batch;
    size_t n() const { return (size_t)(B - 1) * batch + (size_t)(T - 1) * row + C; }
    size_t at(int b, int t, int c) const { return (size_t)b * batch + (size_t)t * row + c; }
};

void *am_upload(const void *h, size_t bytes) {
    void *d = NULL;
    CUDA_CHECK(cudaMalloc(&d, bytes));
    CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

double am_err(const std::vector<double> &got, const std::vector<double> &want) {
    double d2 = 0, w2 = 0, dm = 0, wm = 0;
    for (size_t i = 0; i < got.size(); i++) {
        if (!std::isfinite(got[i])) return INFINITY;
        const double d = got[i] - want[i];
        d2 += d * d, w2 += want[i] * want[i];
        dm = fmax(dm, fabs(d)), wm = fmax(wm, fabs(want[i]));
    }
    return fmax(w2 > 0 ? sqrt(d2 / w2) : sqrt(d2), wm > 0 ? dm / wm : dm);
}

// The outputs of one run: dq, dk, dv as their raw bf16 views
struct AmOut {
    std::vector<uint16_t> dq, dk, dv;
};

struct AmRun {
    AttnShape s;
    AmView vq, vkv, vo;
    std::vector<double> q, k, v, dout, qr, kr, out, dq, dk, dv;  // dense (B, T, C) doubles
    std::vector<float> cs, sn, lse;

    explicit AmRun(const AmCase &c, uint64_t seed) {
        const int C = c.H * c.hd;
        memset(&s, 0, sizeof s);
        s.B = c.B, s.H = c.H, s.hd = c.hd, s.Tq = s.Tk = c.T, s.pos0 = 0, s.n_rot = c.n_rot;
        s.q_row = (size_t)C + c.qpad, s.q_batch = (size_t)c.T * s.q_row + c.bpad;
        s.kv_row = (size_t)C + c.kvpad, s.kv_batch = (size_t)c.T * s.kv_row + c.bpad;
        vq = {c.B, c.T, C, s.q_row, s.q_batch};
        vkv = {c.B, c.T, C, s.kv_row, s.kv_batch};
        vo = {c.B, c.T, C, (size_t)C, (size_t)c.T * C};
        const size_t n = (size_t)c.B * c.T * C;
        AmLcg g{seed * 2654435761ull + 7};
        auto draw = [&](std::vector<double> &x, float amp) {
            x.resize(n);
            for (auto &e : x) e = am_f(am_bf(amp * g.next()));
        };
        draw(q, 1.5f), draw(k, 1.5f), draw(v, 1.0f), draw(dout, 1.0f);
        const int rows = c.T, nr = c.n_rot > 0 ? c.n_rot : 2;
        cs.assign((size_t)rows * nr, 0.0f), sn.assign((size_t)rows * nr, 0.0f);
        if (c.n_rot > 0) refop_rope_tables(cs.data(), sn.data(), rows, c.n_rot, 10000.0, 1.0);
        qr.resize(n), kr.resize(n), out.resize(n), dq.resize(n), dk.resize(n), dv.resize(n);
        RefOpAttn a;
        memset(&a, 0, sizeof a);
        a.s = &s, a.cos = cs.data(), a.sin = sn.data(), a.q = q.data(), a.k = k.data(), a.v = v.data();
        a.qr = qr.data(), a.kr = kr.data(), a.out = out.data(), a.dout = dout.data();
        a.dq = dq.data(), a.dk = dk.data(), a.dv = dv.data();
        refop_attention(&a);
        // L from the bf16 rotated q and k (the kernel's inputs), in float64
        lse.assign((size_t)c.B * c.H * c.T, 0.0f);
        const double scale = 1.0 / sqrt((double)c.hd);
        std::vector<double> sc((size_t)c.T);
        for (int b = 0; b < c.B; b++)
            for (int h = 0; h < c.H; h++)
                for (int t = 0; t < c.T; t++) {
                    double mx = -INFINITY;
                    for (int u = 0; u <= t; u++) {
                        double d = 0;
                        for (int e = 0; e < c.hd; e++) {
                            const size_t iq = ((size_t)b * c.T + t) * C + h * c.hd + e,
                                         ik = ((size_t)b * c.T + u) * C + h * c.hd + e;
                            d += am_f(am_bf(qr[iq])) * am_f(am_bf(kr[ik]));
                        }
                        sc[u] = d * scale;
                        mx = fmax(mx, sc[u]);
                    }
                    double sum = 0;
                    for (int u = 0; u <= t; u++) sum += exp(sc[u] - mx);
                    lse[((size_t)b * c.H + h) * c.T + t] = (float)(mx + log(sum));
                }
    }

    // dense doubles -> a view's bf16 host image (padding NaN)
    std::vector<uint16_t> image(const AmView &w, const std::vector<double> &x) const {
        std::vector<uint16_t> r(w.n(), AM_NAN);
        for (int b = 0; b < w.B; b++)
            for (int t = 0; t < w.T; t++)
                for (int c = 0; c < w.C; c++) r[w.at(b, t, c)] = am_bf(x[((size_t)b * w.T + t) * w.C + c]);
        return r;
    }

    AmOut run(Backend *be) const {
        std::vector<uint16_t> hq = image(vq, qr), hk = image(vkv, kr), hv = image(vkv, v), ho = image(vo, out),
                              hdo = image(vo, dout);
        void *dq_ = am_upload(hq.data(), hq.size() * 2), *dk_ = am_upload(hk.data(), hk.size() * 2),
             *dv_ = am_upload(hv.data(), hv.size() * 2), *dO = am_upload(ho.data(), ho.size() * 2),
             *ddo = am_upload(hdo.data(), hdo.size() * 2);
        void *dl = am_upload(lse.data(), lse.size() * 4), *dc = am_upload(cs.data(), cs.size() * 4),
             *ds = am_upload(sn.data(), sn.size() * 4);
        std::vector<uint16_t> nq(vq.n(), AM_NAN), nkv(vkv.n(), AM_NAN);
        void *gq = am_upload(nq.data(), nq.size() * 2), *gk = am_upload(nkv.data(), nkv.size() * 2),
             *gv = am_upload(nkv.data(), nkv.size() * 2);
        const size_t sb = cuda_attn_mma_bwd_scratch_bytes(&s);
        void *scratch = NULL;
        CUDA_CHECK(cudaMalloc(&scratch, sb));
        typedef __nv_bfloat16 bf;
        cuda_attn_mma_bwd(be, (bf *)gq, (bf *)gk, (bf *)gv, scratch, (const bf *)ddo, (const bf *)dO,
                          (const bf *)dq_, (const bf *)dk_, (const bf *)dv_, (const float *)dl, (const float *)dc,
                          (const float *)ds, &s);
        AmOut o;
        o.dq.resize(vq.n()), o.dk.resize(vkv.n()), o.dv.resize(vkv.n());
        CUDA_CHECK(cudaMemcpy(o.dq.data(), gq, o.dq.size() * 2, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(o.dk.data(), gk, o.dk.size() * 2, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(o.dv.data(), gv, o.dv.size() * 2, cudaMemcpyDeviceToHost));
        for (void *p : {dq_, dk_, dv_, dO, ddo, dl, dc, ds, gq, gk, gv, scratch}) CUDA_CHECK(cudaFree(p));
        return o;
    }

    // one gradient against the reference: its error, and whether the padding kept its NaN
    double check(const AmView &w, const std::vector<uint16_t> &got, const std::vector<double> &want,
                 bool *pad_ok) const {
        std::vector<bool> real(w.n(), false);
        std::vector<double> g((size_t)w.B * w.T * w.C);
        for (int b = 0; b < w.B; b++)
            for (int t = 0; t < w.T; t++)
                for (int c = 0; c < w.C; c++) {
                    const size_t i = w.at(b, t, c);
                    real[i] = true;
                    g[((size_t)b * w.T + t) * w.C + c] = am_f(got[i]);
                }
        *pad_ok = true;
        for (size_t i = 0; i < w.n(); i++)
            if (!real[i] && got[i] != AM_NAN) *pad_ok = false;
        return am_err(g, want);
    }
};

const AmCase k_cases[] = {
    // B H  hd   T  rot  qpad kvpad bpad blocks
    {1, 1, 48, 1, 48, 0, 0, 0, 0},        // T 1, full rotation
    {3, 2, 48, 37, 16, 3, 5, 7, 0},       // partial rotation, odd padding (elementwise paths)
    {1, 2, 64, 64, 64, 0, 0, 0, 0},       // one whole tile
    {1, 2, 64, 65, 16, 0, 0, 0, 0},       // a 1-row second tile
    {1, 2, 8, 70, 8, 0, 0, 0, 0},         // hd 8
    {1, 1, 128, 130, 128, 0, 0, 0, 0},    // hd 128, three tiles
    {2, 1, 40, 130, 40, 8, 16, 8, 0},     // hd 40 (hdp 48), padded, aligned (16-byte paths)
    {1, 2, 16, 70, 6, 8, 8, 0, 0},        // n_rot / 2 odd: scalar RoPE
    {1, 1, 128, 37, 0, 0, 0, 0, 0},       // no rotation
    {1, 2, 40, 65, 0, 1, 2, 3, 0},        // odd padding, hd 40
    {2, 1, 16, 64, 16, 0, 0, 0, 0},       // hd 16
    {1, 1, 48, 130, 0, 0, 0, 0, 0},       // hd 48, three tiles
    {2, 2, 6, 5, 0, 0, 0, 0, 0},          // hd 6 (hd % 8 != 0)
    {1, 1, 96, 70, 32, 0, 0, 0, 0},       // hdp 96: K / V strips from shared memory
    {1, 1, 80, 67, 80, 0, 8, 0, 0},       // hdp 80
    {1, 1, 112, 66, 56, 0, 0, 0, 0},      // hdp 112
    {1, 1, 24, 129, 24, 0, 0, 0, 0},      // hdp 32, T 129
    {1, 1, 12, 40, 4, 0, 0, 0, 0},        // hd 12
    // fewer key-tile groups than key tiles (as with many heads: the main kernel's blocks take several)
    {1, 2, 64, 130, 64, 0, 0, 0, 4},      // 2 groups of 2 and 1 key tiles: tile 2 summed over both
    {1, 1, 40, 300, 8, 0, 8, 0, 2},       // 2 groups of 3 and 2
    {2, 1, 16, 200, 16, 0, 0, 0, 1},      // 1 group: every dQ finished by the main kernel
    {1, 1, 128, 129, 128, 0, 0, 0, 1},    // 1 group of 3 at hd 128
};

struct AmBackend {
    CudaCtx ctx;
    Backend be;
    AmBackend() {
        memset(&ctx, 0, sizeof ctx);
        memset(&be, 0, sizeof be);
        ctx.dtype = DTYPE_BF16;
        ctx.emulated = 1;
        be.name = "cuda";
        be.compute = DTYPE_BF16;
        be.ctx = &ctx;
    }
};

}  // namespace

TEST(attn_mma_bwd_against_float64) {
    AmBackend ab;
    const givt_emu::Order saved = givt_emu::get_order();
    int idx = 0;
    for (const AmCase &c : k_cases) {
        AmRun r(c, 100 + idx);
        cuda_attn_mma_bwd_set_blocks(c.blocks);
        givt_emu::set_order(givt_emu::ORDER_FORWARD, 1);
        const AmOut o = r.run(&ab.be);
        bool pq, pk, pv;
        const double eq = r.check(r.vq, o.dq, r.dq, &pq), ek = r.check(r.vkv, o.dk, r.dk, &pk),
                     ev = r.check(r.vkv, o.dv, r.dv, &pv);
        printf("  attn_mma_bwd B %d H %d hd %3d T %3d n_rot %3d pad %d/%d/%d blocks %d: err dq %.2e dk %.2e dv %.2e\n",
               c.B, c.H, c.hd, c.T, c.n_rot, c.qpad, c.kvpad, c.bpad, c.blocks, eq, ek, ev);
        CHECK(eq <= 1e-2 && ek <= 1e-2 && ev <= 1e-2, "case %d (hd %d, T %d, n_rot %d): dq %.3g dk %.3g dv %.3g", idx,
              c.hd, c.T, c.n_rot, eq, ek, ev);
        CHECK(pq && pk && pv, "case %d: the padding of dq / dk / dv was written (%d %d %d)", idx, pq, pk, pv);
        // another fiber order, the same bits (cp.async lands at random points in the random order);
        idx++;
        givt_emu::set_order(idx % 2 ? givt_emu::ORDER_REVERSE : givt_emu::ORDER_RANDOM, 77 + idx);
        const AmOut o2 = r.run(&ab.be);
        CHECK(o2.dq == o.dq && o2.dk == o.dk && o2.dv == o.dv, "case %d: other bits in another fiber order", idx - 1);
    }
    cuda_attn_mma_bwd_set_blocks(0);
    givt_emu::set_order(saved, 12345);
}
