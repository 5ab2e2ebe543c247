// test_cuda_emu: the CPU emulation of CUDA (kernels/emu/) on small kernels: a block reduction with
// barriers is right in every fiber order, and the same kernel without them is wrong in at least one
// (the order detector works); shuffles and votes; poisoned shared memory read before it is written;
// the errors it must report (a divergent __syncthreads, a collective outside its mask or waiting for
// an exited lane, an invalid launch configuration); WMMA products in every layout, a kernel that
// assumes a fragment mapping coming out wrong, a WMMA load missing its barrier wrong in some order,
// and WMMA misuse reported; bf16 conversions as half.c rounds; CUDA graphs captured from a stream
// (nothing runs during the capture, replays equal the eager run, arguments frozen and memory read at
// replay, the calls a capture refuses, the counts, a cuBLASLt GEMM and cudaMallocAsync in a graph).
// Built only under emulation (g++ -x c++ -DGIVT_CUDA_EMU), into the test runner.
#include "launch.cuh"

#include <cublasLt.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <string>

extern "C" {
#include "half.h"
#include "harness.h"
}

using givt_emu::Order;

static const Order k_orders[3] = {givt_emu::ORDER_FORWARD, givt_emu::ORDER_REVERSE, givt_emu::ORDER_RANDOM};

// host <-> device helpers
static float *dev_floats(const float *h, size_t n) {
    float *d;
    CUDA_CHECK(cudaMalloc((void **)&d, n * sizeof(float)));
    if (h) CUDA_CHECK(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}
static void host_floats(float *h, const float *d, size_t n) {
    CUDA_CHECK(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost));
}

// ---- block reduction: 256 threads, static shared memory -----------------------------------------
template <bool kSync>
__global__ void block_sum(float *out, const float *in) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = in[blockIdx.x * 256 + t];
    if (kSync) __syncthreads();
    for (int stride = 128; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        if (kSync) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// returns the number of wrong block sums
static int run_block_sum(bool sync, Order order) {
    enum { B = 3 };
    float h[B * 256], want[B] = {0}, got[B];
    for (int i = 0; i < B * 256; i++) h[i] = (float)(i % 17), want[i / 256] += h[i];
    float *in = dev_floats(h, B * 256), *out = dev_floats(NULL, B);
    givt_emu::set_order(order, 7);
    if (sync) {
        auto *k = block_sum<true>;
        GIVT_LAUNCH(k, B, 256, 0, 0, out, in);
    } else {
        auto *k = block_sum<false>;
        GIVT_LAUNCH(k, B, 256, 0, 0, out, in);
    }
    host_floats(got, out, B);
    cudaFree(in), cudaFree(out);
    int bad = 0;
    for (int b = 0; b < B; b++) bad += !(got[b] == want[b]);
    return bad;
}

TEST(cuda_emu_block_reduction_orders) {
    Order saved = givt_emu::get_order();
    for (int o = 0; o < 3; o++)
        CHECK(run_block_sum(true, k_orders[o]) == 0, "order %s", givt_emu::order_name(k_orders[o]));
    int wrong_orders = 0;
    for (int o = 0; o < 3; o++) wrong_orders += run_block_sum(false, k_orders[o]) > 0;
    // the detector: without its barriers the reduction must come out wrong in some order
    CHECK(wrong_orders >= 1, "the reduction without __syncthreads was right in every order");
    printf("  cuda_emu: the reduction without barriers is wrong in %d of 3 orders\n", wrong_orders);
    givt_emu::set_order(saved, 12345);
}

// ---- warp shuffles and votes --------------------------------------------------------------------
__global__ void warp_ops(int *out, const float *in) {
    int t = threadIdx.x, lane = t % 32;
    float v = in[t];
    float x = v;  // butterfly sum
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    float d = v;  // tree sum into lane 0
    for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
    d = __shfl_sync(0xffffffffu, d, 0);
    int up = __shfl_up_sync(0xffffffffu, lane, 1);  // lane - 1; lane 0 keeps its own
    unsigned ballot = __ballot_sync(0xffffffffu, lane % 3 == 0);
    int any = __any_sync(0xffffffffu, lane == 31), all = __all_sync(0xffffffffu, lane < 31);
    // half-warp groups with their own masks, and width 16
    unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    int hs = __shfl_sync(half, lane, 3, 16);  // lane 3 of each 16-lane segment
    int *o = out + t * 8;
    o[0] = (int)x, o[1] = (int)d, o[2] = up, o[3] = (int)ballot, o[4] = any, o[5] = all, o[6] = hs, o[7] = 0;
}

TEST(cuda_emu_shuffles_and_votes) {
    enum { N = 64 };
    float h[N];
    for (int i = 0; i < N; i++) h[i] = (float)(i * 3 % 11);
    float *in = dev_floats(h, N);
    int *out;
    CUDA_CHECK(cudaMalloc((void **)&out, N * 8 * sizeof(int)));
    for (int o = 0; o < 3; o++) {
        givt_emu::set_order(k_orders[o], 3);
        GIVT_LAUNCH(warp_ops, 1, N, 0, 0, out, in);
        int got[N * 8];
        CUDA_CHECK(cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost));
        unsigned ballot = 0;
        for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
        int bad = 0;
        for (int t = 0; t < N; t++) {
            int w = t / 32, lane = t % 32, sum = 0;
            for (int l = 0; l < 32; l++) sum += (int)h[w * 32 + l];
            const int *g = got + t * 8;
            bad += g[0] != sum || g[1] != sum || g[2] != (lane ? lane - 1 : 0) || (unsigned)g[3] != ballot ||
                   g[4] != 1 || g[5] != 0 || g[6] != (lane < 16 ? 3 : 19);
        }
        CHECK(bad == 0, "%d threads wrong in order %s", bad, givt_emu::order_name(k_orders[o]));
    }
    givt_emu::set_order(givt_emu::ORDER_CYCLE, 12345);
    cudaFree(in), cudaFree(out);
}

// ---- poisoned shared memory ---------------------------------------------------------------------
__global__ void read_before_write(float *out, int n) {
    GIVT_DYNAMIC_SMEM(float, dyn);
    __shared__ float st[8];
    int t = threadIdx.x;
    out[blockIdx.x * 2 * n + t] = dyn[t];        // never written: poison
    out[blockIdx.x * 2 * n + n + t] = st[t % 8];  // never written in this block: poison
    __syncthreads();
    dyn[t] = 1.0f, st[t % 8] = 2.0f;            // the next block must not see these
}

TEST(cuda_emu_shared_memory_poisoned) {
    enum { N = 32, B = 2 };
    float *out = dev_floats(NULL, B * 2 * N);
    GIVT_LAUNCH(read_before_write, B, N, N * sizeof(float), 0, out, (int)N);
    float got[B * 2 * N];
    host_floats(got, out, B * 2 * N);
    int dyn_ok = 0, st_ok = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < N; t++) dyn_ok += isnan(got[b * 2 * N + t]), st_ok += isnan(got[b * 2 * N + N + t]);
    CHECK(dyn_ok == B * N, "dynamic shared memory read before written: %d of %d NaN", dyn_ok, B * N);
    CHECK(st_ok == B * N, "static __shared__ read before written: %d of %d NaN (is the executable stripped?)", st_ok,
          B * N);
    cudaFree(out);
}

// ---- errors that must be reported -------------------------------------------------------------
__global__ void divergent_barrier(float *out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1.0f;
}
__global__ void two_barriers(float *out) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}
__global__ void shfl_outside_mask(float *out) {
    float v = __shfl_sync(0x1u, 1.0f, 0);  // every lane calls it; only lane 0 is in the mask
    out[threadIdx.x] = v;
}
__global__ void shfl_lane_exited(float *out) {
    if (threadIdx.x >= 8) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
__global__ void shfl_partial_warp(float *out) { out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1); }
__global__ void shfl_reads_outside(float *out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, 2.0f, 20);
}

// Launches k under record mode; returns the recorded message (empty: none) after checking that the
// launch set cudaErrorLaunchFailure exactly when a message was recorded.
template <typename K>
static std::string expect_error(K *k, const char *name, int threads) {
    float *out = dev_floats(NULL, 64);
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

static int has(const std::string &s, const char *what) { return s.find(what) != std::string::npos; }

// One misuse the emulator must report: the kernel (launched as one block of `threads`), and the words
// its message must hold; no words: a correct launch, which must record nothing.
struct ErrorCase {
    void (*kernel)(float *);
    const char *name;
    int threads;
    const char *words[3];
};
static void check_error_cases(const ErrorCase *cases, int n) {
    for (int i = 0; i < n; i++) {
        const ErrorCase &c = cases[i];
        std::string m = expect_error(c.kernel, c.name, c.threads);
        if (!c.words[0]) CHECK(m.empty(), "%s: got \"%s\"", c.name, m.c_str());
        for (const char *w : c.words)
            if (w) CHECK(has(m, w), "%s: got \"%s\", without \"%s\"", c.name, m.c_str(), w);
    }
    printf("  cuda_emu: e.g. %s\n", expect_error(cases[0].kernel, cases[0].name, cases[0].threads).c_str());
}

TEST(cuda_emu_errors_reported) {
    static const ErrorCase cases[] = {
        {divergent_barrier, "divergent_barrier", 32, {"divergent __syncthreads", "divergent_barrier"}},
        {two_barriers, "two_barriers", 32, {"divergent __syncthreads", "two_barriers"}},
        {shfl_outside_mask, "shfl_outside_mask", 32, {"excludes it", "shfl_outside_mask"}},
        {shfl_lane_exited, "shfl_lane_exited", 32, {"has exited"}},
        {shfl_partial_warp, "shfl_partial_warp", 40, {"does not exist"}},  // the second warp has 8 lanes
        {shfl_reads_outside, "shfl_reads_outside", 32, {"not in the mask"}},
        {shfl_partial_warp, "shfl_partial_warp", 64, {}},  // a correct kernel records nothing afterwards
    };
    check_error_cases(cases, (int)(sizeof cases / sizeof cases[0]));
}

TEST(cuda_emu_launch_configuration) {
    float *out = dev_floats(NULL, 64);
    givt_emu::set_record_errors(1);  // quiet
    givt_emu::launch("shfl_partial_warp", __FILE__, __LINE__, dim3(1), dim3(2048), 0, 0, shfl_partial_warp, out);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    givt_emu::launch("shfl_partial_warp", __FILE__, __LINE__, dim3(0), dim3(32), 0, 0, shfl_partial_warp, out);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    givt_emu::launch("read_before_write", __FILE__, __LINE__, dim3(1), dim3(32), 64 * 1024, 0, read_before_write, out,
                     32);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "64 KiB of dynamic shared memory without the attribute");
    CHECK(cudaGetLastError() == cudaSuccess, "cudaGetLastError resets");
    // memory outside an allocation is refused
    float h[4];
    CHECK(cudaMemcpy(h, out + 60, 8 * sizeof(float), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    cudaGetLastError();
    givt_emu::set_record_errors(0);
    cudaFree(out);
}

// ---- WMMA (nvcuda::wmma, m16n16k16 bf16 -> float) ----------------------------------------------
namespace wmma = nvcuda::wmma;

// out = A B + 0.5 C0 in both warps of a 64-thread block (warp w writes rows at out + w * 16 * 24):
// A (16 x 32) and B (32 x 16) stored in the layouts of their fragments, two k steps; C0 loaded with
// layout c_col, scaled through x[] (layout-agnostic), out stored with layout o_col and ldm 24.
template <typename LA, typename LB>
__global__ void wmma_product(float *out, const __nv_bfloat16 *A, const __nv_bfloat16 *B, const float *C0, int c_col,
                             int o_col) {
    const bool acol = std::is_same<LA, wmma::col_major>::value, bcol = std::is_same<LB, wmma::col_major>::value;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LA> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LB> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::load_matrix_sync(c, C0, 16, c_col ? wmma::mem_col_major : wmma::mem_row_major);
    for (int i = 0; i < c.num_elements; i++) c.x[i] *= 0.5f;
    for (int kk = 0; kk < 2; kk++) {
        wmma::load_matrix_sync(a, A + (acol ? kk * 16 * 16 : kk * 16), acol ? 16 : 32);
        wmma::load_matrix_sync(b, B + (bcol ? kk * 16 : kk * 16 * 16), bcol ? 32 : 16);
        wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(out + threadIdx.x / 32 * 16 * 24, c, 24, o_col ? wmma::mem_col_major : wmma::mem_row_major);
}

// The same product with a's x[] filled as if lane l held row l / 2, columns (l % 2) * 8 + i: an
// assumed mapping, which the emulation must turn into a wrong result.
__global__ void wmma_assumes_mapping(float *out, const __nv_bfloat16 *A, const __nv_bfloat16 *B) {
    int lane = threadIdx.x % 32;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 0.0f);
    for (int kk = 0; kk < 2; kk++) {
        for (int i = 0; i < a.num_elements; i++) a.x[i] = A[(lane / 2) * 32 + kk * 16 + (lane % 2) * 8 + i];
        wmma::load_matrix_sync(b, B + kk * 16 * 16, 16);
        wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(out, c, 24, wmma::mem_row_major);
}

static __nv_bfloat16 *dev_bf16(const float *h, size_t n) {
    __nv_bfloat16 *d, *t = (__nv_bfloat16 *)malloc(n * sizeof *t);
    for (size_t i = 0; i < n; i++) t[i] = __float2bfloat16(h[i]);
    CUDA_CHECK(cudaMalloc((void **)&d, n * sizeof *d));
    CUDA_CHECK(cudaMemcpy(d, t, n * sizeof *d, cudaMemcpyHostToDevice));
    free(t);
    return d;
}

// Runs one layout combination; returns the largest error relative to the largest reference value.
template <typename LA, typename LB>
static double run_wmma_product(const float *Am, const float *Bm, const float *C0m, int c_col, int o_col, int assume) {
    const bool acol = std::is_same<LA, wmma::col_major>::value, bcol = std::is_same<LB, wmma::col_major>::value;
    float As[16 * 32], Bs[32 * 16], Cs[256];  // stored in the fragments' layouts
    for (int m = 0; m < 16; m++)
        for (int k = 0; k < 32; k++) As[acol ? k * 16 + m : m * 32 + k] = Am[m * 32 + k];
    for (int k = 0; k < 32; k++)
        for (int n = 0; n < 16; n++) Bs[bcol ? n * 32 + k : k * 16 + n] = Bm[k * 16 + n];
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) Cs[c_col ? c * 16 + r : r * 16 + c] = C0m[r * 16 + c];
    __nv_bfloat16 *dA = dev_bf16(As, 16 * 32), *dB = dev_bf16(Bs, 32 * 16);
    float *dC = dev_floats(Cs, 256), *dO = dev_floats(NULL, 2 * 16 * 24), got[2 * 16 * 24];
    if (assume) {
        GIVT_LAUNCH(wmma_assumes_mapping, 1, 32, 0, 0, dO, (const __nv_bfloat16 *)dA, (const __nv_bfloat16 *)dB);
    } else {
        auto *k = wmma_product<LA, LB>;
        GIVT_LAUNCH(k, 1, 64, 0, 0, dO, (const __nv_bfloat16 *)dA, (const __nv_bfloat16 *)dB, (const float *)dC, c_col,
                    o_col);
    }
    host_floats(got, dO, 2 * 16 * 24);
    cudaFree(dA), cudaFree(dB), cudaFree(dC), cudaFree(dO);
    double err = 0, big = 0;
    for (int w = 0; w < (assume ? 1 : 2); w++)
        for (int r = 0; r < 16; r++)
            for (int c = 0; c < 16; c++) {
                float want = assume ? 0.0f : 0.5f * C0m[r * 16 + c];
                for (int k = 0; k < 32; k++)
                    want += __bfloat162float(__float2bfloat16(Am[r * 32 + k])) *
                            __bfloat162float(__float2bfloat16(Bm[k * 16 + c]));
                float g = got[w * 16 * 24 + (o_col ? c * 24 + r : r * 24 + c)];
                err = fmax(err, isnan(g) ? INFINITY : fabs((double)g - want)), big = fmax(big, fabs(want));
            }
    return err / big;
}

TEST(cuda_emu_wmma_product) {
    float A[16 * 32], B[32 * 16], C0[256];
    uint64_t x = 99;
    auto rnd = [&x]() {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        return (float)((int)(x >> 40) % 2001 - 1000) / 250.0f;
    };
    for (float &v : A) v = rnd();
    for (float &v : B) v = rnd();
    for (float &v : C0) v = rnd();
    double worst = 0;
    for (int o = 0; o < 3; o++) {
        givt_emu::set_order(k_orders[o], 11);
        for (int cc = 0; cc < 2; cc++) {
            int oc = (cc + o) % 2;
            double e[4] = {run_wmma_product<wmma::row_major, wmma::row_major>(A, B, C0, cc, oc, 0),
                           run_wmma_product<wmma::row_major, wmma::col_major>(A, B, C0, cc, oc, 0),
                           run_wmma_product<wmma::col_major, wmma::row_major>(A, B, C0, cc, oc, 0),
                           run_wmma_product<wmma::col_major, wmma::col_major>(A, B, C0, cc, oc, 0)};
            for (int i = 0; i < 4; i++) {
                CHECK(e[i] <= 1e-6, "a %s, b %s, c %s, out %s, order %s: error %.3g", i / 2 ? "col" : "row",
                      i % 2 ? "col" : "row", cc ? "col" : "row", oc ? "col" : "row",
                      givt_emu::order_name(k_orders[o]), e[i]);
                worst = fmax(worst, e[i]);
            }
        }
    }
    // a kernel that assumes where the elements are comes out wrong (here in every launch)
    int wrong = 0;
    for (int i = 0; i < 4; i++) wrong += run_wmma_product<wmma::row_major, wmma::row_major>(A, B, C0, 0, 0, 1) > 1e-2;
    CHECK(wrong == 4, "the kernel assuming a fragment mapping was right in %d of 4 launches", 4 - wrong);
    givt_emu::set_order(givt_emu::ORDER_CYCLE, 12345);
    printf("  cuda_emu: WMMA 16x16x16 bf16 products, a/b row/col x accumulator row/col, 3 orders: error %.1e\n",
           worst);
}

// Warp 1 writes A and B (= I) to shared memory, warp 0 multiplies them: right in every order with the
// barrier; without it, wrong in some (a collective runs as soon as its warp has arrived).
template <bool kSync>
__global__ void wmma_cross_warp(float *out) {
    __shared__ __align__(32) __nv_bfloat16 sa[256];
    __shared__ __align__(32) __nv_bfloat16 sb[256];
    int t = threadIdx.x;
    if (t >= 32)
        for (int i = t - 32; i < 256; i += 32)
            sa[i] = __float2bfloat16((float)(i % 7)), sb[i] = __float2bfloat16(i % 16 == i / 16 ? 1.0f : 0.0f);
    if (kSync) __syncthreads();
    if (t < 32) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
        wmma::fill_fragment(c, 0.0f);
        wmma::load_matrix_sync(a, sa, 16);
        wmma::load_matrix_sync(b, sb, 16);
        wmma::mma_sync(c, a, b, c);
        wmma::store_matrix_sync(out, c, 16, wmma::mem_row_major);
    }
}

static int run_wmma_cross_warp(bool sync, Order order) {  // wrong elements
    float *d = dev_floats(NULL, 256), got[256];
    givt_emu::set_order(order, 5);
    if (sync) {
        auto *k = wmma_cross_warp<true>;
        GIVT_LAUNCH(k, 1, 64, 0, 0, d);
    } else {
        auto *k = wmma_cross_warp<false>;
        GIVT_LAUNCH(k, 1, 64, 0, 0, d);
    }
    host_floats(got, d, 256);
    cudaFree(d);
    int bad = 0;
    for (int i = 0; i < 256; i++) bad += !(got[i] == (float)(i % 7));
    return bad;
}

TEST(cuda_emu_wmma_needs_barrier) {
    int wrong_orders = 0;
    for (int o = 0; o < 3; o++) {
        CHECK(run_wmma_cross_warp(true, k_orders[o]) == 0, "order %s", givt_emu::order_name(k_orders[o]));
        wrong_orders += run_wmma_cross_warp(false, k_orders[o]) > 0;
    }
    CHECK(wrong_orders >= 1, "the WMMA load without __syncthreads was right in every order");
    printf("  cuda_emu: the WMMA load without a barrier is wrong in %d of 3 orders\n", wrong_orders);
    givt_emu::set_order(givt_emu::ORDER_CYCLE, 12345);
}

// WMMA misuse that must be reported
__global__ void wmma_lane_exited(float *out) {
    __shared__ __align__(32) float st[256];
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 1.0f);
    if (threadIdx.x == 5) return;
    wmma::store_matrix_sync(st, c, 16, wmma::mem_row_major);
    out[threadIdx.x] = 1.0f;
}
__global__ void wmma_divergent(float *out) {
    __shared__ __align__(32) __nv_bfloat16 sa[256];
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    if (threadIdx.x < 16) {
        wmma::load_matrix_sync(a, sa, 16);
    } else {
        wmma::load_matrix_sync(a, sa, 16);
    }
    out[threadIdx.x] = 1.0f;
}
__global__ void wmma_misaligned(float *out) {
    __shared__ __align__(32) __nv_bfloat16 sa[512];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
    wmma::load_matrix_sync(b, sa + 8, 16);  // 16 bytes past a 32-byte boundary
    out[threadIdx.x] = 1.0f;
}
__global__ void wmma_bad_ldm(float *out) {
    __shared__ __align__(32) float st[512];
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 0.0f);
    wmma::store_matrix_sync(st, c, 18, wmma::mem_col_major);  // 72 bytes: not a multiple of 16
    out[threadIdx.x] = 1.0f;
}
__global__ void wmma_lanes_disagree(float *out) {
    __shared__ __align__(32) __nv_bfloat16 sa[512];
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::load_matrix_sync(a, sa + (threadIdx.x / 16) * 16, 16);
    out[threadIdx.x] = 1.0f;
}
__global__ void wmma_partial_warp(float *out) {
    __shared__ __align__(32) float st[256];
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::load_matrix_sync(c, st, 16, wmma::mem_row_major);
    out[threadIdx.x] = c.x[0] * 0.0f;
}

TEST(cuda_emu_wmma_errors_reported) {
    static const ErrorCase cases[] = {
        {wmma_lane_exited, "wmma_lane_exited", 32, {"wmma::store_matrix_sync", "lane 5", "has exited"}},
        {wmma_divergent, "wmma_divergent", 32, {"wmma::load_matrix_sync", "waits in wmma::load_matrix_sync"}},
        {wmma_misaligned, "wmma_misaligned", 32, {"not 32-byte", "wmma_misaligned"}},
        {wmma_bad_ldm, "wmma_bad_ldm", 32, {"ldm 18"}},
        {wmma_lanes_disagree, "wmma_lanes_disagree", 32, {"must agree", "lane 16"}},
        {wmma_partial_warp, "wmma_partial_warp", 48, {"does not exist"}},
        {wmma_partial_warp, "wmma_partial_warp", 64, {}},  // whole warps: fine
    };
    check_error_cases(cases, (int)(sizeof cases / sizeof cases[0]));
}

// ---- bf16 on the host rounds as half.c's half_f32_to_bf16 (round to nearest even) ------------------
TEST(cuda_emu_bf16_conversions) {
    uint64_t x = 1;
    int bad = 0;
    for (int i = 0; i < 100000; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t bits = (uint32_t)(x >> 32);
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f)) continue;
        __nv_bfloat16 b = __float2bfloat16(f), r = __float2bfloat16_rn(f);
        uint16_t bb, rb;
        memcpy(&bb, &b, 2), memcpy(&rb, &r, 2);
        bad += bb != half_f32_to_bf16(f) || rb != bb || __bfloat162float(b) != half_bf16_to_f32(bb);
    }
    CHECK(bad == 0, "%d conversions differ from half.c", bad);
}

// ---- the emulated backend is in the registry: the op tests (test_backend_ops.c) run every kernel ----
TEST(cuda_emu_backend_registered) {
    char why[256] = "";
    int ok = backend_available("cuda", why, sizeof why);
    CHECK(ok == 2, "backend_available(cuda) = %d (%s): want 2, emulated", ok, why);
    Backend *be = backend_open("cuda", PRECISION_BF16);
    CHECK(be != NULL, "%s", givt_last_error());
    if (!be) return;
    CHECK(!strcmp(be->device, "emulated CUDA (CPU)") && be->compute == DTYPE_BF16 && cuda_ctx(be)->emulated == 1);
    printf("  cuda backend: %s (kernels/*.cu under kernels/emu; fiber order %s)\n", be->device,
           givt_emu::order_name(givt_emu::get_order()));
    backend_close(be);
}

// ---- the counts: kernel launches, host synchronisations (drains) and fence waits ----------------
__global__ void add_one(float *p) { p[threadIdx.x] += 1.0f; }

// The counts since s0, as launches / host syncs / fence waits
static void stats_since(const givt_emu::Stats &s0, unsigned long long *l, unsigned long long *h,
                        unsigned long long *f) {
    const givt_emu::Stats s = givt_emu::stats();
    *l = s.launches - s0.launches, *h = s.host_syncs - s0.host_syncs, *f = s.fence_waits - s0.fence_waits;
}

// A wait counts once, as a host synchronisation when nothing is queued after what it waits for (a
// GPU would idle), as a fence wait when later work is; a copy from the device into pageable memory
// is synchronous, into cudaMallocHost's memory not; the backend's readback waits for its event only.
TEST(cuda_emu_counts_launches_and_host_waits) {
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float *d = dev_floats(NULL, 32), h[32], *pinned = NULL;
    CUDA_CHECK(cudaMemsetAsync(d, 0, 32 * sizeof(float), st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    CUDA_CHECK(cudaMallocHost(&pinned, 32 * sizeof(float)));
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    unsigned long long l, hs, f;

    givt_emu::Stats s0 = givt_emu::stats();
    GIVT_LAUNCH(add_one, 1, 32, 0, st, d);
    GIVT_LAUNCH(add_one, 1, 32, 0, st, d);
    CUDA_CHECK(cudaStreamSynchronize(st));  // a drain
    CUDA_CHECK(cudaStreamSynchronize(st));  // nothing new: nothing
    stats_since(s0, &l, &hs, &f);
    CHECK(l == 2 && hs == 1 && f == 0, "launches %llu, host syncs %llu, fence waits %llu", l, hs, f);

    s0 = givt_emu::stats();
    GIVT_LAUNCH(add_one, 1, 32, 0, st, d);
    CUDA_CHECK(cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, st));  // pageable: synchronous
    CUDA_CHECK(cudaStreamSynchronize(st));                                    // waited for already
    stats_since(s0, &l, &hs, &f);
    CHECK(l == 1 && hs == 1 && f == 0 && h[0] == 3.0f, "launches %llu, host syncs %llu, fence waits %llu, %g", l, hs,
          f, h[0]);

    s0 = givt_emu::stats();
    GIVT_LAUNCH(add_one, 1, 32, 0, st, d);
    CUDA_CHECK(cudaMemcpyAsync(pinned, d, 32 * sizeof(float), cudaMemcpyDeviceToHost, st));  // pinned: async
    CUDA_CHECK(cudaEventRecord(ev, st));
    GIVT_LAUNCH(add_one, 1, 32, 0, st, d);  // queued after the event
    CUDA_CHECK(cudaEventSynchronize(ev));    // a fence wait: the launch above keeps a GPU busy
    stats_since(s0, &l, &hs, &f);
    CHECK(l == 2 && hs == 0 && f == 1 && pinned[0] == 4.0f, "launches %llu, host syncs %llu, fence waits %llu, %g", l,
          hs, f, pinned[0]);
    CUDA_CHECK(cudaEventRecord(ev, st));
    CUDA_CHECK(cudaEventSynchronize(ev));  // nothing after it: a drain
    CUDA_CHECK(cudaFree(d));               // synchronizes the device: nothing new to wait for
    stats_since(s0, &l, &hs, &f);
    CHECK(l == 2 && hs == 1 && f == 1, "launches %llu, host syncs %llu, fence waits %llu", l, hs, f);

    CUDA_CHECK(cudaEventDestroy(ev));
    CUDA_CHECK(cudaFreeHost(pinned));
    CUDA_CHECK(cudaStreamDestroy(st));

    // the backend: download drains; readback_wait with work queued after readback_start is a fence
    // wait; backend_stats reports the counts (the CPU backend counts nothing)
    Backend *be = backend_open("cuda", PRECISION_NO), *cpu = backend_open("cpu", PRECISION_NO);
    CHECK(be && cpu, "%s", givt_last_error());
    if (!be || !cpu) return;
    BackendStats b0, b1, c;
    backend_stats(cpu, &c);
    CHECK(c.counted == 0 && c.launches == 0 && c.host_syncs == 0);
    float *x = (float *)be->ops->alloc(be, 32 * sizeof(float)), one = 1.0f, back = 0;
    BackendReadback *rb = be->ops->readback_create(be, sizeof(float));
    backend_stats(be, &b0);
    be->ops->upload(be, x, &one, sizeof one);
    be->ops->readback_start(be, rb, x, sizeof(float));
    be->ops->zero(be, x, 32 * sizeof(float));  // queued after the readback
    memcpy(&back, be->ops->readback_wait(be, rb), sizeof back);
    be->ops->download(be, h, x, sizeof(float));
    backend_stats(be, &b1);
    CHECK(b1.counted == 1 && b1.host_syncs - b0.host_syncs == 1 && b1.fence_waits - b0.fence_waits == 1 &&
              back == 1.0f && h[0] == 0.0f,
          "host syncs %llu, fence waits %llu, readback %g, download %g", b1.host_syncs - b0.host_syncs,
          b1.fence_waits - b0.fence_waits, back, h[0]);
    be->ops->readback_free(be, rb);
    be->ops->free(be, x);
    backend_close(be);
    backend_close(cpu);
}

// ---- CUDA graphs captured from a stream ----------------------------------------------------------
__global__ void axpb(float *p, float a, float b, int n) {  // p = a p + b
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = a * p[i] + b;
}
__global__ void add_into(float *dst, const float *src, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += src[i];
}

enum { GN = 40 };

// The sequence captured: a memset, a pinned host-to-device copy, kernels (one with an argument read
// from *scale), a device-to-device copy. x, y: GN floats.
static void graph_sequence(cudaStream_t st, float *x, float *y, const float *pinned, const float *scale) {
    CUDA_CHECK(cudaMemsetAsync(y, 0, GN * sizeof(float), st));
    CUDA_CHECK(cudaMemcpyAsync(x, pinned, GN * sizeof(float), cudaMemcpyHostToDevice, st));
    GIVT_LAUNCH(axpb, 2, 32, 0, st, x, *scale, 1.0f, (int)GN);
    GIVT_LAUNCH(add_into, 2, 32, 0, st, y, x, (int)GN);
    CUDA_CHECK(cudaMemcpyAsync(x, y, GN / 2 * sizeof(float), cudaMemcpyDeviceToDevice, st));
    GIVT_LAUNCH(axpb, 2, 32, 0, st, y, 0.5f, *scale, (int)GN);
}

static void want_sequence(float *x, float *y, const float *src, float scale) {
    for (int i = 0; i < GN; i++) x[i] = scale * src[i] + 1.0f, y[i] = x[i];
    for (int i = 0; i < GN / 2; i++) x[i] = y[i];
    for (int i = 0; i < GN; i++) y[i] = 0.5f * y[i] + scale;
}

static bool same_floats(const float *a, const float *b, int n) { return !memcmp(a, b, (size_t)n * sizeof(float)); }

// Nothing runs while the stream captures; a replay equals the eager run; replays read the memory as
// it is when they run (the pinned source) and the kernel arguments as they were at the capture.
TEST(cuda_emu_graph_capture_and_replay) {
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float *x = dev_floats(NULL, GN), *y = dev_floats(NULL, GN), *pinned = NULL;
    CUDA_CHECK(cudaMallocHost(&pinned, GN * sizeof(float)));
    float scale = 2.0f, hx[GN], hy[GN], wx[GN], wy[GN], src[GN], before_x[GN], before_y[GN];
    for (int i = 0; i < GN; i++) pinned[i] = src[i] = (float)(i % 7) - 2.0f;

    // eager
    graph_sequence(st, x, y, pinned, &scale);
    host_floats(hx, x, GN), host_floats(hy, y, GN);
    want_sequence(wx, wy, src, scale);
    CHECK(same_floats(hx, wx, GN) && same_floats(hy, wy, GN), "eager run: x[0] %g (want %g), y[0] %g (want %g)", hx[0],
          wx[0], hy[0], wy[0]);

    // captured: nothing runs
    CUDA_CHECK(cudaMemsetAsync(x, 0x7F, GN * sizeof(float), st));
    CUDA_CHECK(cudaMemsetAsync(y, 0x7E, GN * sizeof(float), st));
    host_floats(before_x, x, GN), host_floats(before_y, y, GN);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusActive;
    CUDA_CHECK(cudaStreamIsCapturing(st, &status));
    CHECK(status == cudaStreamCaptureStatusNone);
    givt_emu::Stats s0 = givt_emu::stats();
    CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    CUDA_CHECK(cudaStreamIsCapturing(st, &status));
    CHECK(status == cudaStreamCaptureStatusActive);
    graph_sequence(st, x, y, pinned, &scale);
    cudaGraph_t graph = NULL;
    CUDA_CHECK(cudaStreamEndCapture(st, &graph));
    CHECK(graph != NULL);
    givt_emu::Stats s1 = givt_emu::stats();
    CHECK(s1.launches == s0.launches && s1.graph_nodes == s0.graph_nodes, "the capture launched %llu kernels",
          s1.launches - s0.launches);
    host_floats(hx, x, GN), host_floats(hy, y, GN);
    CHECK(same_floats(hx, before_x, GN) && same_floats(hy, before_y, GN), "memory changed during the capture");
    size_t nodes = 0;
    CUDA_CHECK(cudaGraphGetNodes(graph, NULL, &nodes));
    CHECK(nodes == 6, "%zu nodes, want 6 (memset, 2 copies, 3 kernels)", nodes);

    // replay: the eager bytes; kernel arguments frozen at the capture
    scale = 3.0f;  // not seen by the graph
    cudaGraphExec_t exec = NULL;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    s0 = givt_emu::stats();
    CUDA_CHECK(cudaGraphLaunch(exec, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    s1 = givt_emu::stats();
    CHECK(s1.launches - s0.launches == 1 && s1.graph_launches - s0.graph_launches == 1 &&
              s1.graph_nodes - s0.graph_nodes == 6 && s1.graph_kernels - s0.graph_kernels == 3 &&
              s1.host_syncs - s0.host_syncs == 1 && s1.fence_waits == s0.fence_waits,
          "launches %llu, graph launches %llu, nodes %llu, kernels %llu, host syncs %llu", s1.launches - s0.launches,
          s1.graph_launches - s0.graph_launches, s1.graph_nodes - s0.graph_nodes, s1.graph_kernels - s0.graph_kernels,
          s1.host_syncs - s0.host_syncs);
    host_floats(hx, x, GN), host_floats(hy, y, GN);
    CHECK(same_floats(hx, wx, GN) && same_floats(hy, wy, GN), "replay: x[0] %g (want %g), y[0] %g (want %g)", hx[0],
          wx[0], hy[0], wy[0]);

    // the pinned source changed: two replays copy what it holds when they run (scale still 2)
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < GN; i++) pinned[i] = src[i] = (float)(i * (round + 2)) * 0.25f;
        CUDA_CHECK(cudaGraphLaunch(exec, st));
        host_floats(hx, x, GN), host_floats(hy, y, GN);
        want_sequence(wx, wy, src, 2.0f);
        CHECK(same_floats(hx, wx, GN) && same_floats(hy, wy, GN), "replay %d: x[1] %g (want %g), y[1] %g (want %g)",
              round, hx[1], wx[1], hy[1], wy[1]);
    }
    // an event recorded after a replay with later work queued: a fence wait, as for eager work
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    s0 = givt_emu::stats();
    CUDA_CHECK(cudaGraphLaunch(exec, st));
    CUDA_CHECK(cudaEventRecord(ev, st));
    CUDA_CHECK(cudaGraphLaunch(exec, st));
    CUDA_CHECK(cudaEventSynchronize(ev));
    CUDA_CHECK(cudaStreamSynchronize(st));
    s1 = givt_emu::stats();
    CHECK(s1.launches - s0.launches == 2 && s1.fence_waits - s0.fence_waits == 1 && s1.host_syncs - s0.host_syncs == 1,
          "launches %llu, fence waits %llu, host syncs %llu", s1.launches - s0.launches, s1.fence_waits - s0.fence_waits,
          s1.host_syncs - s0.host_syncs);
    CUDA_CHECK(cudaEventDestroy(ev));

    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
    CUDA_CHECK(cudaFreeHost(pinned));
    CUDA_CHECK(cudaFree(x));
    CUDA_CHECK(cudaFree(y));
    CUDA_CHECK(cudaStreamDestroy(st));
}

// Begin a capture on st, do what breaks it (expecting error want), check that it is invalidated and
// that cudaStreamEndCapture gives no graph.
template <typename F>
static void check_refused(cudaStream_t st, const char *what, cudaError_t want, F breaks) {
    float *d = dev_floats(NULL, 32);
    CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    GIVT_LAUNCH(add_one, 1, 32, 0, st, d);
    cudaError_t e = breaks(d);
    CHECK(e == want, "%s: %s, want %s", what, cudaGetErrorName(e), cudaGetErrorName(want));
    CHECK(cudaGetLastError() == want, "%s: the last error", what);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(st, &status));
    CHECK(status == cudaStreamCaptureStatusInvalidated, "%s: capture status %d", what, (int)status);
    CHECK(cudaMemsetAsync(d, 0, 4, st) == cudaErrorStreamCaptureInvalidated, "%s: work after it", what);
    cudaGetLastError();
    cudaGraph_t g = (cudaGraph_t)(void *)&st;
    CHECK(cudaStreamEndCapture(st, &g) == cudaErrorStreamCaptureInvalidated && g == NULL, "%s: end capture", what);
    cudaGetLastError();
    CUDA_CHECK(cudaStreamIsCapturing(st, &status));
    CHECK(status == cudaStreamCaptureStatusNone);
    CUDA_CHECK(cudaFree(d));
}

// What a GPU refuses during a capture fails the same way and invalidates it.
TEST(cuda_emu_graph_capture_refusals) {
    givt_emu::set_record_errors(1);  // no messages on stderr for the refusals
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float h[8] = {0}, *pinned = NULL;
    CUDA_CHECK(cudaMallocHost(&pinned, sizeof h));
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreate(&ev));
    const cudaError_t unsupported = cudaErrorStreamCaptureUnsupported;
    check_refused(st, "cudaStreamSynchronize", unsupported, [&](float *) { return cudaStreamSynchronize(st); });
    check_refused(st, "cudaDeviceSynchronize", unsupported, [&](float *) { return cudaDeviceSynchronize(); });
    check_refused(st, "cudaMemcpy", unsupported,
                  [&](float *d) { return cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost); });
    check_refused(st, "cudaMalloc", unsupported, [&](float *) {
        void *p = NULL;
        return cudaMalloc(&p, 64);
    });
    check_refused(st, "cudaFree", unsupported, [&](float *d) { return cudaFree(d); });
    check_refused(st, "cudaMallocHost", unsupported, [&](float *) {
        void *p = NULL;
        return cudaMallocHost(&p, 64);
    });
    check_refused(st, "pageable cudaMemcpyAsync", unsupported,
                  [&](float *d) { return cudaMemcpyAsync(d, h, sizeof h, cudaMemcpyHostToDevice, st); });
    check_refused(st, "cudaEventSynchronize of an event recorded in the capture", cudaErrorCapturedEvent, [&](float *) {
        CUDA_CHECK(cudaEventRecord(ev, st));
        return cudaEventSynchronize(ev);
    });
    check_refused(st, "a launch on the legacy stream", cudaErrorStreamCaptureImplicit, [&](float *d) {
        givt_emu::launch("add_one", __FILE__, __LINE__, 1, 32, 0, 0, add_one, d);
        return cudaPeekAtLastError();
    });
    CUDA_CHECK(cudaEventRecord(ev, st));  // an event recorded outside a capture: waiting for it is fine again
    CUDA_CHECK(cudaEventSynchronize(ev));
    check_refused(st, "cudaEventQuery", unsupported, [&](float *) { return cudaEventQuery(ev); });
    check_refused(st, "waiting for an event from outside the capture", cudaErrorStreamCaptureIsolation,
                  [&](float *) { return cudaStreamWaitEvent(st, ev, 0); });

    // relaxed mode allows cudaMalloc (not a synchronisation); a pinned copy is captured, not run
    float *d = dev_floats(NULL, 8), *m = NULL;
    CUDA_CHECK(cudaMemset(d, 0, 8 * sizeof(float)));
    for (int i = 0; i < 8; i++) pinned[i] = (float)i;
    CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
    CUDA_CHECK(cudaMalloc(&m, 64));
    CUDA_CHECK(cudaMemcpyAsync(d, pinned, 8 * sizeof(float), cudaMemcpyHostToDevice, st));
    cudaGraph_t g = NULL;
    CUDA_CHECK(cudaStreamEndCapture(st, &g));
    host_floats(h, d, 8);
    CHECK(h[7] == 0.0f);
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiateWithFlags(&exec, g, 0));
    CUDA_CHECK(cudaGraphLaunch(exec, st));
    host_floats(h, d, 8);
    CHECK(h[7] == 7.0f, "relaxed-mode replay: %g", h[7]);
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(g));
    CUDA_CHECK(cudaFree(m));
    CUDA_CHECK(cudaFree(d));

    CUDA_CHECK(cudaEventDestroy(ev));
    CUDA_CHECK(cudaFreeHost(pinned));
    CUDA_CHECK(cudaStreamDestroy(st));
    CHECK(cudaGetLastError() == cudaSuccess);
    givt_emu::set_record_errors(0);
}

// Work forked onto another stream through an event and joined back is part of the graph; a fork
// not joined back fails cudaStreamEndCapture.
TEST(cuda_emu_graph_fork_join) {
    cudaStream_t st, side;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    cudaEvent_t fork, join;
    CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
    float *d = dev_floats(NULL, 32), h[32];
    CUDA_CHECK(cudaMemset(d, 0, 32 * sizeof(float)));
    for (int joined = 1; joined >= 0; joined--) {
        CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        GIVT_LAUNCH(add_one, 1, 32, 0, st, d);
        CUDA_CHECK(cudaEventRecord(fork, st));
        CUDA_CHECK(cudaStreamWaitEvent(side, fork, 0));
        cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
        CUDA_CHECK(cudaStreamIsCapturing(side, &status));
        CHECK(status == cudaStreamCaptureStatusActive);
        GIVT_LAUNCH(add_one, 1, 32, 0, side, d);
        CUDA_CHECK(cudaEventRecord(join, side));
        if (joined) CUDA_CHECK(cudaStreamWaitEvent(st, join, 0));
        cudaGraph_t g = NULL;
        cudaError_t e = cudaStreamEndCapture(st, &g);
        host_floats(h, d, 32);
        CHECK(h[0] == 0.0f, "ran during the capture: %g", h[0]);
        if (!joined) {
            CHECK(e == cudaErrorStreamCaptureUnjoined && g == NULL, "unjoined fork: %s", cudaGetErrorName(e));
            CHECK(cudaGetLastError() == cudaErrorStreamCaptureUnjoined);
            continue;
        }
        CUDA_CHECK(e);
        size_t n = 0;
        CUDA_CHECK(cudaGraphGetNodes(g, NULL, &n));
        CHECK(n == 2, "%zu nodes", n);
        cudaGraphExec_t exec;
        CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
        CUDA_CHECK(cudaGraphLaunch(exec, st));
        host_floats(h, d, 32);
        CHECK(h[0] == 2.0f && h[31] == 2.0f, "replay: %g", h[0]);
        CUDA_CHECK(cudaGraphExecDestroy(exec));
        CUDA_CHECK(cudaGraphDestroy(g));
        CUDA_CHECK(cudaMemset(d, 0, 32 * sizeof(float)));
    }
    CUDA_CHECK(cudaFree(d));
    CUDA_CHECK(cudaEventDestroy(fork));
    CUDA_CHECK(cudaEventDestroy(join));
    CUDA_CHECK(cudaStreamDestroy(side));
    CUDA_CHECK(cudaStreamDestroy(st));
}

// cudaMallocAsync in a capture: the graph's memory, at one address for the graph's life, poisoned at
// every replay of the allocation, freed by cudaGraphDestroy (ASan/LSan see a leak otherwise).
__global__ void fill_then_sum(float *tmp, float *out, float v) {
    tmp[threadIdx.x] = v + (float)threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < 32; i++) s += tmp[i];
        out[0] = s;
    }
}
TEST(cuda_emu_graph_malloc_async) {
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float *out = dev_floats(NULL, 1), *tmp = NULL, got = 0;
    CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    CUDA_CHECK(cudaMallocAsync(&tmp, 32 * sizeof(float), st));
    GIVT_LAUNCH(fill_then_sum, 1, 32, 0, st, tmp, out, 1.0f);
    CUDA_CHECK(cudaFreeAsync(tmp, st));
    cudaGraph_t g = NULL;
    CUDA_CHECK(cudaStreamEndCapture(st, &g));
    CHECK(tmp != NULL);
    givt_emu::set_record_errors(1);
    CHECK(cudaFree(tmp) == cudaErrorInvalidValue, "the graph's memory freed by cudaFree");
    cudaGetLastError();
    givt_emu::set_record_errors(0);
    size_t n = 0;
    CUDA_CHECK(cudaGraphGetNodes(g, NULL, &n));
    CHECK(n == 3, "%zu nodes (alloc, kernel, free)", n);
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    CUDA_CHECK(cudaGraphDestroy(g));  // the exec keeps the graph's nodes and memory
    for (int r = 0; r < 2; r++) {
        CUDA_CHECK(cudaGraphLaunch(exec, st));
        host_floats(&got, out, 1);
        CHECK(got == 32.0f + 496.0f, "replay %d: %g", r, got);
    }
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaFree(out));
    CUDA_CHECK(cudaStreamDestroy(st));
}

// A cuBLASLt GEMM captured then replayed equals the eager one; the descriptor, the layouts and alpha
// and beta are read at the capture (destroyed or changed afterwards).
TEST(cuda_emu_graph_cublaslt_matmul) {
    enum { M = 5, N = 3, K = 4 };
    cublasLtHandle_t h;
    CHECK(cublasLtCreate(&h) == CUBLAS_STATUS_SUCCESS);
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float ha[M * K], hb[K * N], hc[M * N], eager[M * N], replayed[M * N];
    for (int i = 0; i < M * K; i++) ha[i] = (float)(i % 5) - 1.5f;
    for (int i = 0; i < K * N; i++) hb[i] = (float)(i % 3) * 0.5f + 0.25f;
    for (int i = 0; i < M * N; i++) hc[i] = (float)i;
    float *A = dev_floats(ha, M * K), *B = dev_floats(hb, K * N), *D = dev_floats(hc, M * N);
    auto gemm = [&](float alpha, float *beta_out) {  // D = alpha op(A) B + beta D, A stored K x M (transposed)
        cublasLtMatmulDesc_t op;
        CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
        cublasOperation_t t = CUBLAS_OP_T;
        CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t) == CUBLAS_STATUS_SUCCESS);
        cublasLtMatrixLayout_t la, lb, ld;
        CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, K, M, K) == CUBLAS_STATUS_SUCCESS);
        CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, K, N, K) == CUBLAS_STATUS_SUCCESS);
        CHECK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, M, N, M) == CUBLAS_STATUS_SUCCESS);
        float beta = 0.5f;
        CHECK(cublasLtMatmul(h, op, &alpha, A, la, B, lb, &beta, D, ld, D, ld, NULL, NULL, 0, st) ==
              CUBLAS_STATUS_SUCCESS);
        beta = 100.0f, alpha = 100.0f;  // changed after the call: not seen
        if (beta_out) *beta_out = beta;
        cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
        cublasLtMatmulDescDestroy(op);
    };
    gemm(1.5f, NULL);
    host_floats(eager, D, M * N);
    CUDA_CHECK(cudaMemcpy(D, hc, sizeof hc, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    givt_emu::Stats s0 = givt_emu::stats();
    gemm(1.5f, NULL);
    cudaGraph_t g = NULL;
    CUDA_CHECK(cudaStreamEndCapture(st, &g));
    givt_emu::Stats s1 = givt_emu::stats();
    host_floats(replayed, D, M * N);
    CHECK(same_floats(replayed, hc, M * N) && s1.launches == s0.launches, "the GEMM ran during the capture");
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    CUDA_CHECK(cudaGraphLaunch(exec, st));
    host_floats(replayed, D, M * N);
    CHECK(same_floats(replayed, eager, M * N), "replayed GEMM: D[7] %g, eager %g", replayed[7], eager[7]);
    s0 = givt_emu::stats();
    CUDA_CHECK(cudaGraphLaunch(exec, st));  // beta = 0.5 again on the new D: the GEMM reads D at replay
    s1 = givt_emu::stats();
    host_floats(replayed, D, M * N);
    float want7 = 0.5f * eager[7] + (eager[7] - 0.5f * hc[7]);
    CHECK_CLOSE(replayed[7], want7, 1e-6);
    CHECK(s1.launches - s0.launches == 1 && s1.graph_kernels - s0.graph_kernels == 1);
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(g));
    cudaFree(A), cudaFree(B), cudaFree(D);
    CUDA_CHECK(cudaStreamDestroy(st));
    CHECK(cublasLtDestroy(h) == CUBLAS_STATUS_SUCCESS);
}
