// test_ptx_emu: the PTX instructions of kernels/ptx.cuh under the CPU emulation (kernels/emu/):
// ldmatrix x1/x2/x4 and .trans lane by lane against the PTX ISA's distribution (tiles whose elements
// encode their row and column); mma.sync m16n8k16 bf16 with fragments built from the ISA's table,
// exact on inputs whose sums are exact and within tolerance of a double reference on random ones,
// and fed by ldmatrix (A by x4, B by x2 from B^T and by x2.trans from B); cp.async groups (right in
// every fiber order after the wait, wrong in some order when the destination is read before the
// wait that covers it); and the misuse the emulator must report (a lane exited or diverged, a
// partial warp, misaligned or non-shared ldmatrix rows, bad cp.async addresses).
// Built only under emulation (g++ -x c++ -DGIVT_CUDA_EMU), into the test runner.
#include "launch.cuh"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <string>

extern "C" {
#include "harness.h"
}

using givt_emu::Order;

static const Order k_ptx_orders[3] = {givt_emu::ORDER_FORWARD, givt_emu::ORDER_REVERSE, givt_emu::ORDER_RANDOM};

template <typename T>
static T *ptx_dev(const T *h, size_t n) {
    T *d;
    CUDA_CHECK(cudaMalloc((void **)&d, n * sizeof(T)));
    if (h) CUDA_CHECK(cudaMemcpy(d, h, n * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <typename T>
static void ptx_host(T *h, const T *d, size_t n) {
    CUDA_CHECK(cudaMemcpy(h, d, n * sizeof(T), cudaMemcpyDeviceToHost));
}
static float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }

// ---- ldmatrix: lane by lane -----------------------------------------------------------------------
// A 16 x 16 tile of 16-bit values T[R][C] = 1000 + 16 R + C in shared memory, rows 24 elements (48
// bytes) apart. Lane l points at row l % 16, column 8 (l / 16) (matrix i = rows 8 (i % 2), cols
// 8 (i / 2)); for x1 and x2 the lanes past 8 num point at a misaligned address, which must be ignored.
// out[lane * 14 + j]: x1, x2, x4, x1.trans, x2.trans, x4.trans registers in that order.
__global__ void ptx_ldmatrix_layout(unsigned *out) {
    __shared__ __align__(16) unsigned short tile[16 * 24];
    int lane = threadIdx.x;
    for (int i = lane; i < 16 * 24; i += 32) tile[i] = (unsigned short)(1000 + 16 * (i / 24) + i % 24);
    __syncthreads();
    const unsigned short *row = tile + (lane % 16) * 24 + 8 * (lane / 16);
    const unsigned short *bad = tile + 1;  // not 16-byte aligned
    unsigned r1[1], r2[2], r4[4], t1[1], t2[2], t4[4];
    ldmatrix_x1(r1, lane < 8 ? row : bad);
    ldmatrix_x2(r2, lane < 16 ? row : bad);
    ldmatrix_x4(r4, row);
    ldmatrix_x1_trans(t1, lane < 8 ? row : bad);
    ldmatrix_x2_trans(t2, lane < 16 ? row : bad);
    ldmatrix_x4_trans(t4, row);
    unsigned *o = out + lane * 14;
    o[0] = r1[0], o[1] = r2[0], o[2] = r2[1];
    for (int i = 0; i < 4; i++) o[3 + i] = r4[i];
    o[7] = t1[0], o[8] = t2[0], o[9] = t2[1];
    for (int i = 0; i < 4; i++) o[10 + i] = t4[i];
}

TEST(ptx_emu_ldmatrix_layout) {
    unsigned *d = ptx_dev<unsigned>(NULL, 32 * 14), got[32 * 14];
    auto T = [](int r, int c) { return 1000u + 16u * (unsigned)r + (unsigned)c; };
    int bad = 0;
    for (int o = 0; o < 3; o++) {
        givt_emu::set_order(k_ptx_orders[o], 21);
        GIVT_LAUNCH(ptx_ldmatrix_layout, 1, 32, 0, 0, d);
        ptx_host(got, d, 32 * 14);
        for (int l = 0; l < 32; l++) {
            const unsigned *g = got + l * 14;
            // the PTX ISA: lane l holds, of matrix i, row l / 4, cols 2 (l % 4) and + 1; .trans: the transpose
            unsigned want[4], wantt[4];
            for (int i = 0; i < 4; i++) {
                int r0 = 8 * (i % 2), c0 = 8 * (i / 2), q = l / 4, p = 2 * (l % 4);
                want[i] = T(r0 + q, c0 + p) | T(r0 + q, c0 + p + 1) << 16;
                wantt[i] = T(r0 + p, c0 + q) | T(r0 + p + 1, c0 + q) << 16;
            }
            int b = g[0] != want[0] || g[1] != want[0] || g[2] != want[1] || g[7] != wantt[0] || g[8] != wantt[0] ||
                    g[9] != wantt[1];
            for (int i = 0; i < 4; i++) b |= g[3 + i] != want[i] || g[10 + i] != wantt[i];
            if (b && bad < 3)
                printf("  lane %d order %s: x4 %08x %08x %08x %08x, want %08x %08x %08x %08x\n", l,
                       givt_emu::order_name(k_ptx_orders[o]), g[3], g[4], g[5], g[6], want[0], want[1], want[2],
                       want[3]);
            bad += b;
        }
    }
    CHECK(bad == 0, "%d lanes hold the wrong elements", bad);
    givt_emu::set_order(givt_emu::ORDER_CYCLE, 12345);
    cudaFree(d);
}

// ---- mma.sync m16n8k16: fragments from the PTX ISA's table ---------------------------------------
// A (16 x 16, row-major bf16), B (16 x 8, B[k][n], bf16), C (16 x 8 float) in global memory; each lane
// builds its registers by the table (g = lane >> 2, t = lane % 4), runs D = A B + C, then D = A B + D
// in place when twice, and writes D by the table.
__global__ void ptx_mma_table(float *D, const __nv_bfloat16 *A, const __nv_bfloat16 *B, const float *C, int twice) {
    int lane = threadIdx.x % 32, g = lane >> 2, t = lane % 4;
    unsigned a[4], b[2];
    float c[4], d[4];
    for (int i = 0; i < 4; i++) {
        int r = g + 8 * (i & 1), k = 2 * t + 8 * (i >> 1);
        a[i] = pack_bf16x2(A[r * 16 + k], A[r * 16 + k + 1]);
        c[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    }
    for (int i = 0; i < 2; i++) {
        int k = 2 * t + 8 * i;
        b[i] = pack_bf16x2(B[k * 8 + g], B[(k + 1) * 8 + g]);
    }
    mma_m16n8k16_bf16(d, a, b, c);
    if (twice) mma_m16n8k16_bf16(d, a, b, d);
    float *out = D + threadIdx.x / 32 * 128;
    for (int i = 0; i < 4; i++) out[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
}

// The same product with the operands loaded by ldmatrix from shared memory: A by x4 (lane l: row
// l % 16, col 8 (l / 16)); B by x2 from B^T (8 x 16, row n: lane l < 16 points at row l % 8, col
// 8 (l / 8)) when bt, else by x2.trans from B (16 x 8, lane l < 16 points at row l).
__global__ void ptx_mma_ldmatrix(float *D, const __nv_bfloat16 *A, const __nv_bfloat16 *B, const float *C, int bt) {
    __shared__ __align__(16) __nv_bfloat16 sa[16 * 16];
    __shared__ __align__(16) __nv_bfloat16 sb[16 * 8];
    int lane = threadIdx.x, g = lane >> 2, t = lane % 4;
    for (int i = lane; i < 256; i += 32) sa[i] = A[i];
    for (int i = lane; i < 128; i += 32) {
        int k = i / 8, n = i % 8;
        if (bt) sb[n * 16 + k] = B[i];
        else sb[i] = B[i];
    }
    __syncthreads();
    unsigned a[4], b[2];
    ldmatrix_x4(a, sa + (lane % 16) * 16 + 8 * (lane / 16));
    if (bt) ldmatrix_x2(b, sb + (lane % 8) * 16 + 8 * (lane / 8 % 2));
    else ldmatrix_x2_trans(b, sb + (lane % 16) * 8);
    float c[4], d[4];
    for (int i = 0; i < 4; i++) c[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    mma_m16n8k16_bf16(d, a, b, c);
    for (int i = 0; i < 4; i++) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
}

// Runs the product (how: 0 the table, 1 the table twice in place, 2 ldmatrix with B^T, 3 ldmatrix.trans
// with B); returns the largest |D - reference| / (sum of |terms|) over the elements, and sets *exact
// to whether every element equals the reference exactly.
static double run_mma(const float *Am, const float *Bm, const float *Cm, int how, int *exact) {
    __nv_bfloat16 hA[256], hB[128];
    for (int i = 0; i < 256; i++) hA[i] = __float2bfloat16(Am[i]);
    for (int i = 0; i < 128; i++) hB[i] = __float2bfloat16(Bm[i]);
    __nv_bfloat16 *dA = ptx_dev(hA, 256), *dB = ptx_dev(hB, 128);
    float *dC = ptx_dev(Cm, 128), *dD = ptx_dev<float>(NULL, 2 * 128), got[2 * 128];
    int warps = how < 2 ? 2 : 1;
    if (how < 2) {
        GIVT_LAUNCH(ptx_mma_table, 1, 64, 0, 0, dD, (const __nv_bfloat16 *)dA, (const __nv_bfloat16 *)dB,
                    (const float *)dC, how);
    } else {
        GIVT_LAUNCH(ptx_mma_ldmatrix, 1, 32, 0, 0, dD, (const __nv_bfloat16 *)dA, (const __nv_bfloat16 *)dB,
                    (const float *)dC, how == 2);
    }
    ptx_host(got, dD, (size_t)warps * 128);
    cudaFree(dA), cudaFree(dB), cudaFree(dC), cudaFree(dD);
    double worst = 0;
    *exact = 1;
    for (int w = 0; w < warps; w++)
        for (int r = 0; r < 16; r++)
            for (int n = 0; n < 8; n++) {
                double ab = 0, mag = 0;
                for (int k = 0; k < 16; k++) {
                    double p = (double)bf16_round(Am[r * 16 + k]) * bf16_round(Bm[k * 8 + n]);
                    ab += p, mag += fabs(p);
                }
                double want = ab + Cm[r * 8 + n];
                mag += fabs(Cm[r * 8 + n]);
                if (how == 1) want += ab, mag *= 2;
                double g = got[w * 128 + r * 8 + n];
                *exact &= g == want;
                worst = fmax(worst, isnan(g) ? INFINITY : fabs(g - want) / fmax(mag, 1e-30));
            }
    return worst;
}

TEST(ptx_emu_mma_m16n8k16) {
    float A[256], B[128], C[128];
    // small integers: every sum is exact in float, so the result must be exact whatever the order
    for (int r = 0; r < 16; r++)
        for (int k = 0; k < 16; k++) A[r * 16 + k] = (float)((r * 3 + k * 5) % 7 - 3);
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 8; n++) B[k * 8 + n] = (float)((k * 2 + n * 7 + k * n) % 5 - 2);
    for (int i = 0; i < 128; i++) C[i] = (float)(i % 13) - 6.0f;
    for (int o = 0; o < 3; o++) {
        givt_emu::set_order(k_ptx_orders[o], 9);
        for (int how = 0; how < 4; how++) {
            int exact;
            double e = run_mma(A, B, C, how, &exact);
            CHECK(exact, "integer inputs, way %d, order %s: not exact (error %.3g)", how,
                  givt_emu::order_name(k_ptx_orders[o]), e);
        }
    }
    // random values against double: float accumulation of exact products
    uint64_t x = 4242;
    auto rnd = [&x]() {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        return (float)((int)(x >> 40) % 20001 - 10000) / 3000.0f;
    };
    for (float &v : A) v = rnd();
    for (float &v : B) v = rnd();
    for (float &v : C) v = rnd();
    double worst = 0;
    for (int how = 0; how < 4; how++) {
        givt_emu::set_order(k_ptx_orders[how % 3], 9);
        int exact;
        double e = run_mma(A, B, C, how, &exact);
        CHECK(e <= 1e-6, "random inputs, way %d: error %.3g of the sum of |terms|", how, e);
        worst = fmax(worst, e);
    }
    givt_emu::set_order(givt_emu::ORDER_CYCLE, 12345);
    printf("  ptx: mma.m16n8k16 bf16 exact on integers (table, in place, ldmatrix A + B^T / B.trans), random "
           "inputs error %.1e of sum |terms|\n", worst);
}

// ---- cp.async: groups, waits, and a read before the wait ------------------------------------------
// 64 threads copy 2 x 64 x 16 bytes (two groups) from src to shared memory; thread t then reads the
// chunk of thread t ^ 1 (so a __syncthreads is needed after the wait) from the first group, then from
// the second. mode 0: wait_group<1> before the first read, wait_group<0> before the second (right);
// mode 1: the first read before any wait (wrong in some order); mode 2: the second read after
// wait_group<1> only (its group not covered: wrong in some order); mode 3: wait_all before both.
__global__ void ptx_cp_async(float *out, const float *src, int mode) {
    __shared__ __align__(16) float s0[64 * 4];
    __shared__ __align__(16) float s1[64 * 4];
    int t = threadIdx.x, u = t ^ 1;
    cp_async_16(s0 + 4 * t, src + 4 * t);
    cp_async_commit();
    cp_async_16(s1 + 4 * t, src + 256 + 4 * t);
    cp_async_commit();
    if (mode == 0 || mode == 2) cp_async_wait_group<1>();
    if (mode == 3) cp_async_wait_all();
    __syncthreads();
    for (int i = 0; i < 4; i++) out[4 * t + i] = s0[4 * u + i];
    if (mode == 0) cp_async_wait_group<0>();
    __syncthreads();
    for (int i = 0; i < 4; i++) out[256 + 4 * t + i] = s1[4 * u + i];
}

static int run_cp_async(int mode, Order order) {  // wrong elements
    float h[512], got[512];
    for (int i = 0; i < 512; i++) h[i] = (float)i * 0.5f;
    float *src = ptx_dev(h, 512), *out = ptx_dev<float>(NULL, 512);
    givt_emu::set_order(order, 77);
    GIVT_LAUNCH(ptx_cp_async, 1, 64, 0, 0, out, (const float *)src, mode);
    ptx_host(got, out, 512);
    cudaFree(src), cudaFree(out);
    int bad = 0;
    for (int t = 0; t < 64; t++)
        for (int i = 0; i < 4; i++) {
            int u = t ^ 1;
            bad += !(got[4 * t + i] == h[4 * u + i]) + !(got[256 + 4 * t + i] == h[256 + 4 * u + i]);
        }
    return bad;
}

TEST(ptx_emu_cp_async) {
    int wrong_early = 0, wrong_uncovered = 0;
    for (int o = 0; o < 3; o++) {
        CHECK(run_cp_async(0, k_ptx_orders[o]) == 0, "wait_group<1> / <0>, order %s",
              givt_emu::order_name(k_ptx_orders[o]));
        CHECK(run_cp_async(3, k_ptx_orders[o]) == 0, "wait_all, order %s", givt_emu::order_name(k_ptx_orders[o]));
        wrong_early += run_cp_async(1, k_ptx_orders[o]) > 0;
        wrong_uncovered += run_cp_async(2, k_ptx_orders[o]) > 0;
    }
    CHECK(wrong_early >= 1, "reading a cp.async destination before any wait was right in every order");
    CHECK(wrong_uncovered >= 1, "reading a group that wait_group<1> does not cover was right in every order");
    // in the random order some copies land before their wait, some at it
    int partial = run_cp_async(1, givt_emu::ORDER_RANDOM);
    printf("  ptx: cp.async read before its wait wrong in %d of 3 orders (random order: %d of 512 wrong), "
           "uncovered group wrong in %d of 3\n", wrong_early, partial, wrong_uncovered);
    givt_emu::set_order(givt_emu::ORDER_CYCLE, 12345);
}

// ---- misuse the emulator must report ----------------------------------------------------------------
__global__ void ptx_mma_lane_exited(float *out) {
    unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    if (threadIdx.x == 5) return;
    mma_m16n8k16_bf16(c, a, b, c);
    out[threadIdx.x] = c[0];
}
__global__ void ptx_mma_divergent(float *out) {
    unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    if (threadIdx.x < 16) {
        mma_m16n8k16_bf16(c, a, b, c);
    } else {
        mma_m16n8k16_bf16(c, a, b, c);
    }
    out[threadIdx.x] = c[0];
}
__global__ void ptx_mma_partial_warp(float *out) {
    unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {1, 1, 1, 1};
    mma_m16n8k16_bf16(c, a, b, c);
    out[threadIdx.x % 64] = c[0];
}
__global__ void ptx_ldmatrix_misaligned(float *out) {
    __shared__ __align__(16) __nv_bfloat16 s[64 * 8];
    unsigned r[4];
    ldmatrix_x4(r, s + threadIdx.x * 8 + (threadIdx.x == 3 ? 4 : 0));  // lane 3: 8 bytes off
    out[threadIdx.x] = (float)r[0];
}
__global__ void ptx_ldmatrix_global(float *out) {
    unsigned r[2];
    ldmatrix_x2(r, out + threadIdx.x % 16 * 4);  // global memory, 16-byte aligned rows
    out[threadIdx.x] = (float)r[0];
}
__global__ void ptx_ldmatrix_x2_ignores(float *out) {
    __shared__ __align__(16) __nv_bfloat16 s[16 * 8];
    for (int i = threadIdx.x; i < 128; i += 32) s[i] = __float2bfloat16(1.0f);
    __syncthreads();
    unsigned r[2];
    ldmatrix_x2(r, threadIdx.x < 16 ? (const void *)(s + threadIdx.x * 8) : (const void *)(out + 1));
    out[threadIdx.x] = (float)(r[0] & 1);
}
__global__ void ptx_cp_async_misaligned(float *out) {
    __shared__ __align__(16) float s[4];
    if (threadIdx.x == 0) cp_async_16(s, out + 2);  // source 8 bytes off
    cp_async_wait_all();
    out[threadIdx.x] = 0.0f;
}
__global__ void ptx_cp_async_from_shared(float *out) {
    __shared__ __align__(16) float s[8];
    if (threadIdx.x == 0) cp_async_16(s, s + 4);
    cp_async_wait_all();
    out[threadIdx.x] = 0.0f;
}
__global__ void ptx_cp_async_to_global(float *out) {
    if (threadIdx.x == 0) cp_async_16(out + 8, out);
    cp_async_wait_all();
    out[threadIdx.x] = 0.0f;
}

template <typename K>
static std::string ptx_expect_error(K *k, const char *name, int threads) {
    float *out = ptx_dev<float>(NULL, 64);
    givt_emu::set_record_errors(1);
    givt_emu::clear_kernel_error();
    givt_emu::launch(name, __FILE__, __LINE__, dim3(1), dim3(threads), 0, 0, k, out);
    std::string msg = givt_emu::last_kernel_error();
    cudaError_t e = cudaGetLastError();
    givt_emu::clear_kernel_error();
    givt_emu::set_record_errors(0);
    CHECK((e == cudaErrorLaunchFailure) == !msg.empty(), "%s: cudaGetLastError %s with message \"%s\"", name,
          cudaGetErrorName(e), msg.c_str());
    cudaFree(out);
    return msg;
}

TEST(ptx_emu_errors_reported) {
    struct Case {
        void (*kernel)(float *);
        const char *name;
        int threads;
        const char *words[3];
    };
    static const Case cases[] = {
        {ptx_mma_lane_exited, "ptx_mma_lane_exited", 32, {"mma.sync.m16n8k16", "lane 5", "has exited"}},
        {ptx_mma_divergent, "ptx_mma_divergent", 32, {"waits in mma.sync.m16n8k16"}},
        {ptx_mma_partial_warp, "ptx_mma_partial_warp", 48, {"does not exist"}},
        {ptx_mma_partial_warp, "ptx_mma_partial_warp", 64, {}},  // whole warps: fine
        {ptx_ldmatrix_misaligned, "ptx_ldmatrix_misaligned", 32, {"ldmatrix.x4", "lane 3", "not 16-byte aligned"}},
        {ptx_ldmatrix_global, "ptx_ldmatrix_global", 32, {"ldmatrix.x2", "lane 0", "not in shared memory"}},
        {ptx_ldmatrix_x2_ignores, "ptx_ldmatrix_x2_ignores", 32, {}},  // lanes 16-31's addresses unused
        {ptx_cp_async_misaligned, "ptx_cp_async_misaligned", 32, {"cp.async", "source", "not 16-byte aligned"}},
        {ptx_cp_async_from_shared, "ptx_cp_async_from_shared", 32, {"cp.async", "not in global memory"}},
        {ptx_cp_async_to_global, "ptx_cp_async_to_global", 32, {"cp.async", "destination", "not in shared memory"}},
    };
    for (const Case &c : cases) {
        std::string m = ptx_expect_error(c.kernel, c.name, c.threads);
        if (!c.words[0]) CHECK(m.empty(), "%s: got \"%s\"", c.name, m.c_str());
        for (const char *w : c.words)
            if (w) CHECK(m.find(w) != std::string::npos, "%s: got \"%s\", without \"%s\"", c.name, m.c_str(), w);
    }
    printf("  ptx: e.g. %s\n", ptx_expect_error(cases[4].kernel, cases[4].name, cases[4].threads).c_str());
}
