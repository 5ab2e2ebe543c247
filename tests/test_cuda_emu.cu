// test_cuda_emu: the CPU emulation of CUDA (kernels/emu/) on small kernels: a block reduction with
// barriers is right in every fiber order, and the same kernel without them is wrong in at least one
// (the order detector works); shuffles and votes; poisoned shared memory read before it is written;
// the errors it must report (a divergent __syncthreads, a collective outside its mask or waiting for
// an exited lane, an invalid launch configuration); bf16 conversions as util.c rounds.
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

TEST(cuda_emu_errors_reported) {
    std::string m = expect_error(divergent_barrier, "divergent_barrier", 32);
    CHECK(has(m, "divergent __syncthreads") && has(m, "divergent_barrier"), "got \"%s\"", m.c_str());
    m = expect_error(two_barriers, "two_barriers", 32);
    CHECK(has(m, "divergent __syncthreads") && has(m, "two_barriers"), "got \"%s\"", m.c_str());
    m = expect_error(shfl_outside_mask, "shfl_outside_mask", 32);
    CHECK(has(m, "excludes it") && has(m, "shfl_outside_mask"), "got \"%s\"", m.c_str());
    m = expect_error(shfl_lane_exited, "shfl_lane_exited", 32);
    CHECK(has(m, "has exited"), "got \"%s\"", m.c_str());
    m = expect_error(shfl_partial_warp, "shfl_partial_warp", 40);  // the second warp has 8 lanes
    CHECK(has(m, "does not exist"), "got \"%s\"", m.c_str());
    m = expect_error(shfl_reads_outside, "shfl_reads_outside", 32);
    CHECK(has(m, "not in the mask"), "got \"%s\"", m.c_str());
    // a correct kernel records nothing afterwards
    m = expect_error(shfl_partial_warp, "shfl_partial_warp", 64);
    CHECK(m.empty(), "got \"%s\"", m.c_str());
    printf("  cuda_emu: e.g. %s\n", expect_error(divergent_barrier, "divergent_barrier", 32).c_str());
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

// ---- bf16 on the host rounds as util.c's f32_to_bf16 (round to nearest even) ------------------
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
        bad += bb != f32_to_bf16(f) || rb != bb || __bfloat162float(b) != bf16_to_f32(bb);
    }
    CHECK(bad == 0, "%d conversions differ from util.c", bad);
}

// ---- the emulated backend is in the registry: the op tests (test_backend_ops.c) run every kernel ----
TEST(cuda_emu_backend_registered) {
    char why[256] = "";
    int ok = backend_available("cuda", why, sizeof why);
    CHECK(ok == 2, "backend_available(cuda) = %d (%s): want 2, emulated", ok, why);
    Backend *be = backend_open("cuda", "bf16");
    CHECK(be != NULL, "%s", givt_last_error());
    if (!be) return;
    CHECK(!strcmp(be->device, "emulated CUDA (CPU)") && be->compute == DTYPE_BF16 && cuda_ctx(be)->emulated == 1);
    printf("  cuda backend: %s (kernels/*.cu under kernels/emu; fiber order %s)\n", be->device,
           givt_emu::order_name(givt_emu::get_order()));
    backend_close(be);
}
