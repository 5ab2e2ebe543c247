// test_cuda_kernels: what the op table of test_backend_ops.c does not reach in the bandwidth-bound
// CUDA kernels (norm.cu, elementwise.cu, loss.cu, optim.cu), and the device peak:
//   - cuda_peak_flops (backend_cuda.cu), a pure function: 989 TFLOP/s dense bf16 on an H100 or H200
//     SXM (132 SMs), 756 on an H100 PCIe (114), 835 on the NVL parts, the formula elsewhere;
//   - RMSNorm rows longer than the kernels keep in registers (C = 8256: 16-byte units, C = 301:
//     single elements) and more than one dw chunk (N = 75), float32 against the CPU backend;
//   - every kernel on buffers one element off their alignment (the scalar path, or for flat
//     streams a scalar head before the 16-byte units): elementwise ops give the same bits as on
//     aligned buffers, the sums agree to float rounding;
//   - the same bits in every fiber order (deterministic sums);
//   - adamw with the EMA in its pass: the bits of adamw followed by ema_update.
// Built only under emulation (g++ -x c++ -DGIVT_CUDA_EMU), into the test runner.
#include "launch.cuh"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <vector>

extern "C" {
#include "half.h"
#include "harness.h"
}

// ---- the peak -----------------------------------------------------------------------------------
TEST(cuda_peak_flops_from_the_device) {
    const double T = 1e12;
    struct {
        int major, minor, sms, clock_khz;
        const char *name;
        DType dtype;
        double want_tflops;  // rounded to 0.1
    } cases[] = {
        {9, 0, 132, 1980000, "NVIDIA H100 80GB HBM3", DTYPE_BF16, 989.4},  // 132 x 4096 x 1830 MHz
        {9, 0, 132, 1980000, "NVIDIA H200", DTYPE_BF16, 989.4},
        {9, 0, 132, 1980000, "NVIDIA GH200 480GB", DTYPE_BF16, 989.4},
        {9, 0, 132, 1980000, NULL, DTYPE_BF16, 989.4},                     // by the SM count
        {9, 0, 114, 1755000, "NVIDIA H100 PCIe", DTYPE_BF16, 756.4},        // 114 x 4096 x 1620 MHz
        {9, 0, 132, 1785000, "NVIDIA H100 NVL", DTYPE_BF16, 835.3},         // 132 x 4096 x 1545 MHz
        {9, 0, 132, 1785000, "NVIDIA H200 NVL", DTYPE_BF16, 835.3},
        {9, 0, 78, 1980000, "NVIDIA H-unknown", DTYPE_BF16, 632.6},         // formula: 78 x 4096 x 1980
        {9, 0, 132, 1980000, "NVIDIA H100 80GB HBM3", DTYPE_F32, 66.9},     // 132 x 256 x 1980 MHz
        {9, 0, 114, 1755000, "NVIDIA H100 PCIe", DTYPE_F32, 51.2},          // 114 x 256 x 1755 MHz
        {9, 0, 132, 1785000, "NVIDIA H100 NVL", DTYPE_F32, 60.3},
        {8, 0, 108, 1410000, "NVIDIA A100-SXM4-80GB", DTYPE_BF16, 0},       // not sm_90: unknown
        {8, 9, 142, 2520000, "NVIDIA GeForce RTX 4090", DTYPE_BF16, 0},
        {10, 0, 148, 1965000, "NVIDIA B200", DTYPE_BF16, 0},
        {9, 0, 0, 1980000, "NVIDIA H100", DTYPE_BF16, 0},                   // no SMs
        {9, 0, 78, 0, "NVIDIA H-unknown", DTYPE_BF16, 0},                   // no clock, not in the table
        {9, 0, 132, 0, "NVIDIA H100 80GB HBM3", DTYPE_BF16, 989.4},         // the table needs no clock
        {9, 0, 132, 0, "NVIDIA H100 80GB HBM3", DTYPE_F32, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const double got = cuda_peak_flops(cases[i].major, cases[i].minor, cases[i].sms, cases[i].clock_khz,
                                           cases[i].name, cases[i].dtype) / T;
        CHECK(fabs(got - cases[i].want_tflops) < 0.05, "sm_%d%d, %d SMs, %d kHz, %s, %s: %.2f TFLOP/s, want %.1f",
              cases[i].major, cases[i].minor, cases[i].sms, cases[i].clock_khz,
              cases[i].name ? cases[i].name : "(no name)", cases[i].dtype == DTYPE_BF16 ? "bf16" : "fp32", got,
              cases[i].want_tflops);
    }
    // the figures that the datasheets print, rounded
    CHECK(lround(cuda_peak_flops(9, 0, 132, 1980000, "NVIDIA H100 80GB HBM3", DTYPE_BF16) / T) == 989);
    CHECK(lround(cuda_peak_flops(9, 0, 114, 1755000, "NVIDIA H100 PCIe", DTYPE_BF16) / T) == 756);
}

// ---- helpers: buffers through the backend's ops ---------------------------------------------------
namespace {

struct Lcg {
    uint64_t s;
    float next() {  // uniform in [-1, 1)
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return (float)((s >> 40) * (2.0 / 16777216.0)) - 1.0f;
    }
};

std::vector<float> rnd(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
    Lcg g{seed * 2654435761ull + 1};
    std::vector<float> v(n);
    for (auto &x : v) x = lo + (g.next() + 1.0f) * 0.5f * (hi - lo);
    return v;
}

// A device buffer of n elements of the compute dtype (or float32: f32) starting `off` elements into
// its allocation (off 1: one element off 16-byte alignment), uploaded from v (rounded to bf16 for a
// bf16 buffer; v is rounded in place so that both sides see the same values).
struct Buf {
    Backend *be;
    void *base;
    size_t n, off, es;
    Buf(Backend *b, std::vector<float> &v, size_t off_, bool f32 = false)
        : be(b), n(v.size()), off(off_), es(f32 ? 4 : dtype_size(b->compute)) {
        base = be->ops->alloc(be, (n + off + 1) * es);
        set(v);
    }
    ~Buf() { be->ops->free(be, base); }
    void *p() const { return (char *)base + off * es; }
    void set(std::vector<float> &v) {
        if (es == 4) {
            be->ops->upload(be, p(), v.data(), n * 4);
        } else {
            std::vector<uint16_t> h(n);
            for (size_t i = 0; i < n; i++) h[i] = half_f32_to_bf16(v[i]), v[i] = half_bf16_to_f32(h[i]);
            be->ops->upload(be, p(), h.data(), n * 2);
        }
    }
    std::vector<float> get() const {
        std::vector<float> v(n);
        if (es == 4) {
            be->ops->download(be, v.data(), p(), n * 4);
        } else {
            std::vector<uint16_t> h(n);
            be->ops->download(be, h.data(), p(), n * 2);
            for (size_t i = 0; i < n; i++) v[i] = half_bf16_to_f32(h[i]);
        }
        return v;
    }
};

// max |a - b| / max |b| (1 when b is all zeros and a is not); NaN anywhere: infinite
double rel_err(const std::vector<float> &a, const std::vector<float> &b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) {
        if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0 ? num / den : (num > 0 ? 1 : 0);
}

// The outputs of one run of an op, as floats (doubles' accumulators as one element each)
typedef std::vector<std::vector<float>> Outs;

// The bandwidth-bound ops of a backend on inputs from a seed, the buffers `off` elements off their
// alignment (off_b for the second buffer of a flat op: another misalignment). Sizes: multiples of 8
// (16-byte units) unless odd.
Outs run_ops(Backend *be, size_t off, size_t off_b, bool odd) {
    Outs o;
    const int N = odd ? 13 : 16, F = odd ? 44 : 48, C = odd ? 44 : 64, D = odd ? 5 : 16, B = 2, T = 5;
    {  // swiglu fwd and bwd
        auto h = rnd((size_t)N * 2 * F, 1), g = rnd((size_t)N * F, 2), z = rnd((size_t)N * F, 3),
             z2 = rnd((size_t)N * 2 * F, 4);
        Buf bh(be, h, off), bg(be, g, off_b), bo(be, z, off), bd(be, z2, off_b);
        be->ops->swiglu_fwd(be, (cval *)bo.p(), (const cval *)bh.p(), N, F);
        be->ops->swiglu_bwd(be, (cval *)bd.p(), (const cval *)bg.p(), (const cval *)bh.p(), N, F);
        o.push_back(bo.get());
        o.push_back(bd.get());
    }
    {  // shift_bos, copy_rows, to_compute
        auto x = rnd((size_t)B * T * D, 5), bos = rnd((size_t)D, 6), in = rnd((size_t)B * T * D, 7);
        Buf bx(be, x, off_b, true), bb(be, bos, off), bi(be, in, off);
        be->ops->shift_bos(be, (cval *)bi.p(), (const float *)bx.p(), (const cval *)bb.p(), B, T, D);
        o.push_back(bi.get());
        auto src = rnd((size_t)B * 3 * T * C, 8), dst = rnd((size_t)B * 4 * T * C, 9);
        Buf bs(be, src, off), bt(be, dst, off);
        be->ops->copy_rows(be, (cval *)bt.p(), C, (size_t)4 * T * C, (const cval *)bs.p(), 3 * (size_t)C,
                           (size_t)3 * T * C, B, T, C);
        o.push_back(bt.get());
        auto f = rnd(1003, 10), c = rnd(1003, 11);
        Buf bf(be, f, off_b, true), bc(be, c, off);
        be->ops->to_compute(be, (cval *)bc.p(), (const float *)bf.p(), 1003);
        o.push_back(bc.get());
    }
    {  // rmsnorm fwd (with and without a branch) and bwd; N = 75: three dw chunks
        const int Nn = 75;
        auto ri = rnd((size_t)Nn * C, 12), br = rnd((size_t)Nn * C, 13), w = rnd((size_t)C, 14, 0.5f, 1.5f),
             ro = rnd((size_t)Nn * C, 15), no = rnd((size_t)Nn * C, 16), rs = rnd((size_t)Nn, 17),
             dn = rnd((size_t)Nn * C, 18), dr = rnd((size_t)Nn * C, 19), dw = rnd((size_t)C, 20);
        Buf bri(be, ri, off), bbr(be, br, off), bw(be, w, off), bro(be, ro, off), bno(be, no, off),
            brs(be, rs, 0, true), bdn(be, dn, off), bdr(be, dr, off), bdw(be, dw, off_b, true);
        be->ops->residual_rmsnorm_fwd(be, (cval *)bro.p(), (cval *)bno.p(), (float *)brs.p(), (const cval *)bri.p(),
                                      (const cval *)bbr.p(), (const cval *)bw.p(), Nn, C);
        o.push_back(bro.get());
        o.push_back(bno.get());
        o.push_back(brs.get());
        be->ops->residual_rmsnorm_bwd(be, (cval *)bdr.p(), (float *)bdw.p(), (const cval *)bdn.p(),
                                      (const cval *)bro.p(), (const cval *)bw.p(), (const float *)brs.p(), Nn, C);
        o.push_back(bdr.get());
        o.push_back(bdw.get());
        be->ops->residual_rmsnorm_fwd(be, NULL, (cval *)bno.p(), (float *)brs.p(), (const cval *)bri.p(), NULL,
                                      (const cval *)bw.p(), Nn, C);
        o.push_back(bno.get());
    }
    {  // gaussian nll (loss and dy), sumsq
        auto y = rnd((size_t)N * 2 * D, 21), x = rnd((size_t)N * D, 22), dy = rnd((size_t)N * 2 * D, 23);
        Buf by(be, y, off), bx(be, x, off_b, true), bdy(be, dy, off);
        double *acc = (double *)be->ops->alloc(be, 2 * sizeof(double));
        be->ops->gaussian_nll(be, (cval *)bdy.p(), acc, (const cval *)by.p(), (const float *)bx.p(), N, D, 1e-2, 0.5f);
        auto p = rnd(10007, 24);
        Buf bp(be, p, off_b, true);
        be->ops->sumsq(be, acc + 1, (const float *)bp.p(), 10007);
        double h[2];
        be->ops->download(be, h, acc, sizeof h);
        be->ops->free(be, acc);
        o.push_back(bdy.get());
        // each double as two floats: its leading bits and the rest (the bits compare exactly)
        o.push_back({(float)h[0], (float)(h[0] - (double)(float)h[0]), (float)h[1],
                     (float)(h[1] - (double)(float)h[1])});
    }
    // adamw (with the compute copy) and then the EMA's pass, and adamw with the EMA in its pass on the
    // same inputs (n odd): the second's results are the first's, bit for bit
    for (int fused = 0; fused < 2; fused++) {
        const size_t n = 1001;
        auto p = rnd(n, 25), g = rnd(n, 26), m = rnd(n, 27), v = rnd(n, 28, 0.0f, 1.0f), pc = rnd(n, 29),
             e = rnd(n, 30), ec = rnd(n, 31);
        Buf bp(be, p, off, true), bg(be, g, off_b, true), bm(be, m, off, true), bv(be, v, off, true),
            bpc(be, pc, off), be_(be, e, off, true), bec(be, ec, off);
        be->ops->adamw(be, (float *)bp.p(), (cval *)bpc.p(), (const float *)bg.p(), (float *)bm.p(), (float *)bv.p(),
                       fused ? (float *)be_.p() : NULL, fused ? (cval *)bec.p() : NULL, n, 1e-3f, 0.9f, 0.99f, 1e-8f,
                       0.1f, 0.7f, 3, fused ? 0.9f : 0.0f, NULL);
        if (!fused) be->ops->ema_update(be, (float *)be_.p(), (cval *)bec.p(), (const float *)bp.p(), n, 0.9f, NULL);
        for (const Buf *b : {&bp, &bm, &bv, &bpc, &be_, &bec}) o.push_back(b->get());
    }
    return o;
}

const char *k_out_names[] = {"swiglu_fwd", "swiglu_bwd", "shift_bos", "copy_rows", "to_compute",
                             "rmsnorm res_out", "rmsnorm norm_out", "rmsnorm rstd", "rmsnorm dres", "rmsnorm dw",
                             "rmsnorm (no branch) norm_out", "nll dy", "nll loss, sumsq", "adamw p", "adamw m",
                             "adamw v", "adamw p_compute", "ema", "ema_compute", "adamw+ema p", "adamw+ema m",
                             "adamw+ema v", "adamw+ema p_compute", "adamw+ema ema", "adamw+ema ema_compute"};
// outputs that depend on sums (whose order differs between the 16-byte and the scalar path)
bool is_sum(int i) { return (i >= 6 && i <= 10) || i == 12; }

}  // namespace

// Every kernel gives the same bits in every fiber order (fixed reduction orders), and on buffers off
// their alignment the same bits (elementwise ops) or the same sums to float rounding (sums).
TEST(cuda_kernels_aligned_misaligned_orders) {
    const givt_emu::Order saved = givt_emu::get_order();
    const givt_emu::Order orders[3] = {givt_emu::ORDER_FORWARD, givt_emu::ORDER_REVERSE, givt_emu::ORDER_RANDOM};
    for (Precision prec : {PRECISION_NO, PRECISION_BF16}) {
        Backend *be = backend_open("cuda", prec);
        CHECK(be != NULL, "%s", givt_last_error());
        if (!be) return;
        const char *label = prec == PRECISION_BF16 ? "cuda/bf16" : "cuda";
        const double tol = prec == PRECISION_BF16 ? 1e-2 : 1e-5;
        for (bool odd : {false, true}) {
            givt_emu::set_order(orders[0], 5);
            const Outs ref = run_ops(be, 0, 0, odd);
            for (int i = 0; i < 6; i++)  // adamw with its EMA: the bits of adamw, then ema_update
                CHECK(ref[19 + i] == ref[13 + i], "%s %s: not the bits of %s", label, k_out_names[19 + i],
                      k_out_names[13 + i]);
            for (int k = 1; k < 3; k++) {
                givt_emu::set_order(orders[k], 5 + k);
                const Outs o = run_ops(be, 0, 0, odd);
                for (size_t i = 0; i < ref.size(); i++)
                    CHECK(o[i] == ref[i], "%s %s (%s): differs between fiber orders %s and %s", label, k_out_names[i],
                          odd ? "odd sizes" : "aligned", givt_emu::order_name(orders[0]),
                          givt_emu::order_name(orders[k]));
            }
            // one element off (all buffers alike: a scalar head then units for the flat streams), and
            // the second buffers two off (incongruent: scalar throughout)
            for (size_t off_b : {1, 2}) {
                const Outs o = run_ops(be, 1, off_b, odd);
                for (size_t i = 0; i < ref.size(); i++) {
                    const double err = rel_err(o[i], ref[i]);
                    if (is_sum((int)i))
                        CHECK(err <= tol, "%s %s (%s), buffers off by 1 and %zu: %.3g from aligned (tol %g)", label,
                              k_out_names[i], odd ? "odd sizes" : "even sizes", off_b, err, tol);
                    else
                        CHECK(o[i] == ref[i], "%s %s (%s), buffers off by 1 and %zu: not the aligned run's bits (%.3g)",
                              label, k_out_names[i], odd ? "odd sizes" : "even sizes", off_b, err);
                }
            }
        }
        backend_close(be);
    }
    givt_emu::set_order(saved, 12345);
}

// RMSNorm rows past the registers (C = 8256 with 16-byte units, C = 301 single elements) and several
// dw chunks, float32 against the CPU backend (1e-5), and bf16 in every fiber order alike
TEST(cuda_rmsnorm_long_rows) {
    Backend *cpu = backend_open("cpu", PRECISION_NO), *f32 = backend_open("cuda", PRECISION_NO),
            *b16 = backend_open("cuda", PRECISION_BF16);
    CHECK(cpu && f32 && b16, "%s", givt_last_error());
    const struct {
        int N, C;
    } shapes[] = {{3, 8256}, {5, 301}, {70, 8}};
    for (auto s : shapes) {
        const size_t NC = (size_t)s.N * s.C;
        auto run = [&](Backend *be, std::vector<Outs> *out) {
            auto ri = rnd(NC, 40), br = rnd(NC, 41), w = rnd((size_t)s.C, 42, 0.5f, 1.5f), ro = rnd(NC, 43),
                 no = rnd(NC, 44), rs = rnd((size_t)s.N, 45), dn = rnd(NC, 46), dr = rnd(NC, 47),
                 dw = rnd((size_t)s.C, 48);
            Buf bri(be, ri, 0), bbr(be, br, 0), bw(be, w, 0), bro(be, ro, 0), bno(be, no, 0), brs(be, rs, 0, true),
                bdn(be, dn, 0), bdr(be, dr, 0), bdw(be, dw, 0, true);
            be->ops->residual_rmsnorm_fwd(be, (cval *)bro.p(), (cval *)bno.p(), (float *)brs.p(),
                                          (const cval *)bri.p(), (const cval *)bbr.p(), (const cval *)bw.p(), s.N, s.C);
            Outs o = {bro.get(), bno.get(), brs.get()};
            be->ops->residual_rmsnorm_bwd(be, (cval *)bdr.p(), (float *)bdw.p(), (const cval *)bdn.p(),
                                          (const cval *)bro.p(), (const cval *)bw.p(), (const float *)brs.p(), s.N,
                                          s.C);
            auto d = bdr.get(), g = bdw.get();
            for (size_t i = 0; i < d.size(); i++) d[i] -= dr[i];  // the increments
            for (size_t i = 0; i < g.size(); i++) g[i] -= dw[i];
            o.push_back(d);
            o.push_back(g);
            be->ops->residual_rmsnorm_fwd(be, NULL, (cval *)bno.p(), (float *)brs.p(), (const cval *)bri.p(), NULL,
                                          (const cval *)bw.p(), s.N, s.C);
            o.push_back(bno.get());
            out->push_back(o);
        };
        std::vector<Outs> rc, rf, rb;
        run(cpu, &rc);
        run(f32, &rf);
        const char *names[] = {"res_out", "norm_out", "rstd", "dres increment", "dw increment", "norm_out (no branch)"};
        for (size_t i = 0; i < rc[0].size(); i++) {
            const double err = rel_err(rf[0][i], rc[0][i]);
            CHECK(err <= 1e-5, "N %d C %d %s: cuda %.3g from cpu (tol 1e-5)", s.N, s.C, names[i], err);
        }
        const givt_emu::Order saved = givt_emu::get_order();
        for (givt_emu::Order o : {givt_emu::ORDER_FORWARD, givt_emu::ORDER_REVERSE, givt_emu::ORDER_RANDOM}) {
            givt_emu::set_order(o, 9);
            run(b16, &rb);
        }
        givt_emu::set_order(saved, 12345);
        for (size_t k = 1; k < rb.size(); k++)
            for (size_t i = 0; i < rb[0].size(); i++)
                CHECK(rb[k][i] == rb[0][i], "N %d C %d bf16 %s: differs between fiber orders", s.N, s.C, names[i]);
        // bf16 against the CPU on the bf16-rounded inputs: the dw increment, a float32 sum of N
        // products of bf16 values, to bf16's tolerance
        CHECK(rel_err(rb[0][4], rc[0][4]) <= 2e-2, "N %d C %d bf16 dw: %.3g from cpu", s.N, s.C,
              rel_err(rb[0][4], rc[0][4]));
    }
    if (cpu) backend_close(cpu);
    if (f32) backend_close(f32);
    if (b16) backend_close(b16);
}
