// test_emu_profile: the emulator as a profiler (kernels/emu/emu_profile.h) on planted kernels whose
// counts are known exactly: a 4-way shared bank conflict, broadcasts, stride-2 global and shared
// accesses, coalesced and conflicting 16-byte accesses, misaligned 4-, 8- and 16-byte loads, a
// divergent branch, requests split at warp collectives, several warps and blocks with barriers,
// WMMA fragments (ldmatrix model: ldm 16, 24, 64 bf16; accumulators in the mma C layout), the PTX
// instructions of kernels/ptx.cuh (mma.sync m16n8k16, ldmatrix on padded and unpadded tiles, cp.async),
// floating-point counts, local memory not counted, the same counts in every fiber order, and the
// TSV. Built only in the profiled build (make emu-profile: this file and the kernels instrumented;
// $(BUILD)/run_tests_prof, which make test runs), never in the ordinary runner (tests/prof/ is
// outside the tests/*.cu the Makefile compiles).
// Every launch is one block of one warp (32 threads) unless it says otherwise; cudaMalloc buffers
// are 256-byte aligned, so a warp's 128 contiguous bytes are 4 sectors.
#include "launch.cuh"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <initializer_list>
#include <string>

#include "emu/emu_profile.h"

extern "C" {
#include "harness.h"
}

using givt_emu::ProfileCounters;

namespace {

// ---- expected counts ---------------------------------------------------------------------------------
struct Field {
    const char *name;
    unsigned long long ProfileCounters::*p;
};
// the fields every check compares (0 unless the expectation names them)
const Field k_fields[] = {
    {"gld_requests", &ProfileCounters::gld_requests},
    {"gld_bytes", &ProfileCounters::gld_bytes},
    {"gld_sectors", &ProfileCounters::gld_sectors},
    {"gst_requests", &ProfileCounters::gst_requests},
    {"gst_bytes", &ProfileCounters::gst_bytes},
    {"gst_sectors", &ProfileCounters::gst_sectors},
    {"shared_requests", &ProfileCounters::shared_requests},
    {"shared_bytes", &ProfileCounters::shared_bytes},
    {"shared_wavefronts", &ProfileCounters::shared_wavefronts},
    {"shared_bank_conflicts", &ProfileCounters::shared_bank_conflicts},
    {"barriers", &ProfileCounters::barriers},
    {"warp_collectives", &ProfileCounters::warp_collectives},
    {"mma_flop", &ProfileCounters::mma_flop},
};
// compared only when named
const Field k_optional[] = {
    {"launches", &ProfileCounters::launches},     {"blocks", &ProfileCounters::blocks},
    {"threads", &ProfileCounters::threads},       {"float_flop", &ProfileCounters::float_flop},
    {"fp64_flop", &ProfileCounters::fp64_flop},   {"math_calls", &ProfileCounters::math_calls},
};

struct Want {
    const char *field;
    unsigned long long value;
};

void expect(const char *what, const ProfileCounters &c, std::initializer_list<Want> want) {
    for (const Want &w : want) {
        bool known = false;
        for (const Field &f : k_fields) known |= !strcmp(f.name, w.field);
        for (const Field &f : k_optional) known |= !strcmp(f.name, w.field);
        CHECK(known, "%s: no field %s", what, w.field);
    }
    for (const Field &f : k_fields) {
        unsigned long long v = 0;
        for (const Want &w : want)
            if (!strcmp(w.field, f.name)) v = w.value;
        CHECK(c.*f.p == v, "%s: %s = %llu, want %llu", what, f.name, c.*f.p, v);
    }
    for (const Field &f : k_optional)
        for (const Want &w : want)
            if (!strcmp(w.field, f.name)) CHECK(c.*f.p == w.value, "%s: %s = %llu, want %llu", what, f.name, c.*f.p, w.value);
}

// the last launch's counters (zeros, and a failure, when there is none)
ProfileCounters last(void) {
    const ProfileCounters *c = givt_emu::profile_last_launch();
    CHECK(c != NULL, "no profiled launch");
    return c ? *c : ProfileCounters();
}

bool ready(void) {
    if (!givt_emu::profile_instrumented()) {
        CHECK(0, "the kernels of this binary are not instrumented (it must be built by make emu-profile's rules)");
        return false;
    }
    givt_emu::profile_enable(true);
    givt_emu::set_order(givt_emu::ORDER_FORWARD, 1);
    return true;
}

float *dev_floats(size_t n) {
    float *d;
    CUDA_CHECK(cudaMalloc((void **)&d, n * sizeof(float)));
    CUDA_CHECK(cudaMemset(d, 0, n * sizeof(float)));
    return d;
}

}  // namespace

// ---- the planted kernels -------------------------------------------------------------------------------
// 4 conflict-free stores (a loop: one site, four requests), then a load of s[4 lane]: lanes 0, 8, 16
// and 24 hit bank 0 at four different words, and so on: 4 wavefronts, 3 of them conflicts.
__global__ void bank4_kernel(float *out) {
    __shared__ float s[128];
    int lane = threadIdx.x;
    for (int i = lane; i < 128; i += 32) s[i] = (float)i;
    __syncthreads();
    out[lane] = s[(lane * 4) % 128];
}

// a global broadcast (every lane reads in[0]: 1 sector), a shared broadcast (s[0]) and a multicast
// (s[lane / 2]: two lanes a word): one wavefront each
__global__ void broadcast_kernel(float *out, const float *in) {
    __shared__ float s[32];
    int lane = threadIdx.x;
    s[lane] = in[0];
    __syncthreads();
    out[lane] = s[0] + s[lane / 2];
}

// a stride-2 global load (128 bytes over 256: 8 sectors) and a stride-2 shared store (2-way conflict)
__global__ void stride2_kernel(float *out, const float *in) {
    __shared__ float s[64];
    int lane = threadIdx.x;
    s[2 * lane] = in[2 * lane];
    __syncthreads();
    out[lane] = s[2 * lane];
}

// 16-byte accesses: a coalesced global load and store (512 bytes, 16 sectors each), a coalesced shared
// store and a reversed load (4 quarter-warp wavefronts each), and a shared load at a 32-byte stride
// (two lanes of a quarter-warp on the same banks: 8 wavefronts)
__global__ void vec16_kernel(float4 *out, const float4 *in) {
    __shared__ float4 s[64];
    int lane = threadIdx.x;
    float4 v = in[lane];
    s[lane] = v;
    __syncthreads();
    float4 r = s[31 - lane];
    float4 q = s[2 * lane];
    out[lane] = r;
    out[32 + lane] = q;
}

// misaligned: 4-byte loads one element off (5 sectors), 8-byte loads 8 bytes off (9), 16-byte loads
// 16 bytes off (17)
__global__ void misaligned_kernel(float *out, const float *in) {
    int lane = threadIdx.x;
    float a = in[lane + 1];
    float2 b = ((const float2 *)(in + 2))[lane];
    float4 c = ((const float4 *)(in + 4))[lane];
    out[lane] = a;
    ((float2 *)(out + 64))[lane] = b;
    ((float4 *)(out + 256))[lane] = c;
}

// bf16 stores of a conversion's result (GCC does not instrument `*p = f(x)` when f is not inlined,
// and -O1 alone does not inline a __float2bfloat16 called from two places: the profiled build
// inlines more) and a 2-byte load: 64 bytes, 2 sectors each
__global__ void bf16_kernel(__nv_bfloat16 *out, const __nv_bfloat16 *in) {
    int lane = threadIdx.x;
    float x = __bfloat162float(in[lane]);
    out[lane] = __float2bfloat16(x * 2.0f);
    out[32 + lane] = __float2bfloat16(x + 1.0f);
}

// a divergent branch: 8 lanes, one request of 32 bytes (1 sector) each way
__global__ void divergent_kernel(float *out, const float *in) {
    int lane = threadIdx.x;
    if (lane < 8) out[lane] = in[lane];
}

// a load in a loop with a shuffle in it: one site, one request per iteration (each between other sync
// points), four shuffles
__global__ void shuffle_loop_kernel(float *out, const float *in) {
    int lane = threadIdx.x;
    float v = 0.0f;
    for (int k = 0; k < 4; k++) {
        v += in[k * 32 + lane];
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    out[lane] = v;
}

// two blocks of two warps, three barriers each
__global__ void blocks_kernel(float *out, const float *in) {
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = in[blockIdx.x * 64 + t];
    __syncthreads();
    s[t] += 1.0f;
    __syncthreads();
    out[blockIdx.x * 64 + t] = s[63 - t];
    __syncthreads();
}

// local memory (an array indexed at run time) is not counted: 8 broadcast loads and 1 store remain
__global__ void local_kernel(float *out, const float *in, int k0) {
    float loc[8];
    int lane = threadIdx.x;
    for (int k = 0; k < 8; k++) loc[k] = in[k];
    out[lane] = loc[(lane + k0) % 8];
}

// WMMA: a 16 x LDA bf16 tile filled from global (LDA / 2 requests of 64 bytes), loaded as matrix_a
// (row-major) and matrix_b (col-major), one product, the accumulator stored to shared (row-major, LDC)
namespace wmma = nvcuda::wmma;
template <int LDA, int LDC>
__global__ void wmma_kernel(const __nv_bfloat16 *in) {
    __shared__ __align__(32) __nv_bfloat16 tile[16 * LDA];
    __shared__ __align__(32) float c[16 * LDC];
    int lane = threadIdx.x;
    for (int i = lane; i < 16 * LDA; i += 32) tile[i] = in[i];
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(a, tile, LDA);
    wmma::load_matrix_sync(b, tile, LDA);
    wmma::mma_sync(acc, a, b, acc);
    wmma::store_matrix_sync(c, acc, LDC, wmma::mem_row_major);
}

// the accumulator stored to global, row-major, ldm 16: 4 requests of 256 bytes, 8 sectors each
__global__ void wmma_store_global_kernel(float *out) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 1.0f);
    wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
}

// PTX (kernels/ptx.cuh): NMMA warps of one mma.sync m16n8k16 each (2 * 16 * 8 * 16 = 4096 mma_flop a
// warp, fragments in registers: no memory), then d[0] to global (one request of 128 bytes a warp)
template <int NMMA>
__global__ void ptx_mma_kernel(float *out) {
    int t = threadIdx.x;
    unsigned a[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u}, b[2] = {0x3f803f80u, 0x3f803f80u};
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < NMMA; i++) mma_m16n8k16_bf16(d, a, b, d);
    out[t] = d[0];
}

// ldmatrix on a 16 x 16 bf16 tile whose rows are LD elements apart, lane l -> row l % 16, col 8 (l / 16)
// (the A fragment of mma_m16n8k16_bf16): an x4 (matrix i = rows 8 (i % 2).., cols 8 (i / 2)..), an
// x2.trans (lanes 0-15: matrices 0 and 1) and an x1 (lanes 0-7: matrix 0); the tile is not filled (no
// other shared traffic), the registers go to global (one request of 128 bytes)
template <int LD>
__global__ void ptx_ldmatrix_kernel(unsigned *out) {
    __shared__ __align__(16) __nv_bfloat16 tile[16 * LD];
    int lane = threadIdx.x;
    const __nv_bfloat16 *row = tile + (lane % 16) * LD + 8 * (lane / 16);
    unsigned r4[4], r2[2], r1[1];
    ldmatrix_x4(r4, row);
    ldmatrix_x2_trans(r2, row);
    ldmatrix_x1(r1, row);
    out[lane] = r4[0] ^ r4[1] ^ r4[2] ^ r4[3] ^ r2[0] ^ r2[1] ^ r1[0];
}

// cp.async: every lane copies 16 bytes from in[STRIDE lane] to s[STRIDE lane] (float4 elements), then
// waits; STRIDE 1: the warp's 512 contiguous bytes
template <int STRIDE>
__global__ void ptx_cp_async_kernel(const float4 *in) {
    __shared__ __align__(16) float4 s[64 * STRIDE];
    int t = threadIdx.x;
    cp_async_16(&s[STRIDE * t], &in[STRIDE * t]);
    cp_async_commit();
    cp_async_wait_all();
}

// floating point: a * x + y (2: an FMA or a multiply and an add), a division (1), expf (a libm call)
// and a double d * 2 + 1 (2) per thread
__global__ void flops_kernel(float *y, const float *x, double *dy, const double *dx, float a) {
    int i = threadIdx.x;
    y[i] = a * x[i] + y[i];
    y[32 + i] = x[i] / a;
    y[64 + i] = expf(x[i]);
    dy[i] = dx[i] * 2.0 + 1.0;
}

// ---- the tests ------------------------------------------------------------------------------------------
TEST(emu_profile_bank_conflict_and_broadcast) {
    if (!ready()) return;
    float *out = dev_floats(64), *in = dev_floats(64);
    GIVT_LAUNCH(bank4_kernel, 1, 32, 0, 0, out);
    CHECK(!strcmp(givt_emu::profile_last_kernel(), "bank4_kernel"), "kernel name %s", givt_emu::profile_last_kernel());
    expect("4-way bank conflict", last(),
           {{"launches", 1}, {"blocks", 1}, {"threads", 32}, {"shared_requests", 5}, {"shared_bytes", 640},
            {"shared_wavefronts", 8}, {"shared_bank_conflicts", 3}, {"gst_requests", 1}, {"gst_bytes", 128},
            {"gst_sectors", 4}, {"barriers", 1}});
    GIVT_LAUNCH(broadcast_kernel, 1, 32, 0, 0, out, (const float *)in);
    expect("broadcast", last(),
           {{"gld_requests", 1}, {"gld_bytes", 128}, {"gld_sectors", 1}, {"shared_requests", 3}, {"shared_bytes", 384},
            {"shared_wavefronts", 3}, {"gst_requests", 1}, {"gst_bytes", 128}, {"gst_sectors", 4}, {"barriers", 1},
            {"float_flop", 32}});
    cudaFree(out), cudaFree(in);
}

TEST(emu_profile_stride_vector_misaligned) {
    if (!ready()) return;
    float *out = dev_floats(512), *in = dev_floats(512);
    GIVT_LAUNCH(stride2_kernel, 1, 32, 0, 0, out, (const float *)in);
    expect("stride 2", last(),
           {{"gld_requests", 1}, {"gld_bytes", 128}, {"gld_sectors", 8}, {"shared_requests", 2}, {"shared_bytes", 256},
            {"shared_wavefronts", 4}, {"shared_bank_conflicts", 2}, {"gst_requests", 1}, {"gst_bytes", 128},
            {"gst_sectors", 4}, {"barriers", 1}});
    GIVT_LAUNCH(vec16_kernel, 1, 32, 0, 0, (float4 *)out, (const float4 *)in);
    expect("16-byte", last(),
           {{"gld_requests", 1}, {"gld_bytes", 512}, {"gld_sectors", 16}, {"shared_requests", 3},
            {"shared_bytes", 1536}, {"shared_wavefronts", 16}, {"shared_bank_conflicts", 4}, {"gst_requests", 2},
            {"gst_bytes", 1024}, {"gst_sectors", 32}, {"barriers", 1}});
    GIVT_LAUNCH(misaligned_kernel, 1, 32, 0, 0, out, (const float *)in);
    expect("misaligned", last(),
           {{"gld_requests", 3}, {"gld_bytes", 128 + 256 + 512}, {"gld_sectors", 5 + 9 + 17}, {"gst_requests", 3},
            {"gst_bytes", 128 + 256 + 512}, {"gst_sectors", 4 + 8 + 16}});
    GIVT_LAUNCH(bf16_kernel, 1, 32, 0, 0, (__nv_bfloat16 *)out, (const __nv_bfloat16 *)in);
    expect("bf16", last(),
           {{"gld_requests", 1}, {"gld_bytes", 64}, {"gld_sectors", 2}, {"gst_requests", 2}, {"gst_bytes", 128},
            {"gst_sectors", 4}, {"float_flop", 64}});
    GIVT_LAUNCH(divergent_kernel, 1, 32, 0, 0, out, (const float *)in);
    expect("divergent", last(),
           {{"gld_requests", 1}, {"gld_bytes", 32}, {"gld_sectors", 1}, {"gst_requests", 1}, {"gst_bytes", 32},
            {"gst_sectors", 1}});
    cudaFree(out), cudaFree(in);
}

TEST(emu_profile_sync_points_blocks_local) {
    if (!ready()) return;
    float *out = dev_floats(256), *in = dev_floats(256);
    GIVT_LAUNCH(shuffle_loop_kernel, 1, 32, 0, 0, out, (const float *)in);
    expect("shuffle loop", last(),
           {{"gld_requests", 4}, {"gld_bytes", 512}, {"gld_sectors", 16}, {"gst_requests", 1}, {"gst_bytes", 128},
            {"gst_sectors", 4}, {"warp_collectives", 4}, {"float_flop", 4 * 32}});
    GIVT_LAUNCH(blocks_kernel, 2, 64, 0, 0, out, (const float *)in);
    expect("2 blocks x 2 warps", last(),
           {{"blocks", 2}, {"threads", 128}, {"gld_requests", 4}, {"gld_bytes", 512}, {"gld_sectors", 16},
            {"shared_requests", 16}, {"shared_bytes", 2048}, {"shared_wavefronts", 16}, {"gst_requests", 4},
            {"gst_bytes", 512}, {"gst_sectors", 16}, {"barriers", 6}});
    GIVT_LAUNCH(local_kernel, 1, 32, 0, 0, out, (const float *)in, 3);
    expect("local memory", last(),
           {{"gld_requests", 8}, {"gld_bytes", 8 * 128}, {"gld_sectors", 8}, {"gst_requests", 1}, {"gst_bytes", 128},
            {"gst_sectors", 4}});
    cudaFree(out), cudaFree(in);
}

TEST(emu_profile_wmma) {
    if (!ready()) return;
    __nv_bfloat16 *in;
    CUDA_CHECK(cudaMalloc((void **)&in, 16 * 64 * sizeof(__nv_bfloat16)));
    CUDA_CHECK(cudaMemset(in, 0, 16 * 64 * sizeof(__nv_bfloat16)));
    // per LDA: fill LDA / 2 requests (64 bytes, 2 sectors, 1 wavefront each); each fragment load one
    // request of 512 bytes in W wavefronts: lines 32 bytes apart put lines r and r + 4 of a phase on the
    // same banks (W = 2 x 4), 48 bytes apart none (4), 128 bytes apart all eight (8 x 4). The
    // accumulator: 4 requests of 256 bytes, 2 half-warp phases each: rows 64 bytes apart put rows r and
    // r + 2 on the same banks (4 wavefronts a request), 96 bytes apart none (2).
    {
        auto *k = wmma_kernel<16, 16>;
        GIVT_LAUNCH(k, 1, 32, 0, 0, (const __nv_bfloat16 *)in);
        CHECK(!strcmp(givt_emu::profile_last_kernel(), "wmma_kernel<16, 16>"), "kernel name %s",
              givt_emu::profile_last_kernel());
        expect("wmma ldm 16 / 16", last(),
               {{"gld_requests", 8}, {"gld_bytes", 512}, {"gld_sectors", 16}, {"shared_requests", 8 + 2 + 4},
                {"shared_bytes", 512 + 1024 + 1024}, {"shared_wavefronts", 8 + 2 * 8 + 16},
                {"shared_bank_conflicts", 2 * 4 + 8}, {"barriers", 1}, {"mma_flop", 8192}});
    }
    {
        auto *k = wmma_kernel<24, 24>;
        GIVT_LAUNCH(k, 1, 32, 0, 0, (const __nv_bfloat16 *)in);
        expect("wmma ldm 24 / 24", last(),
               {{"gld_requests", 12}, {"gld_bytes", 768}, {"gld_sectors", 24}, {"shared_requests", 12 + 2 + 4},
                {"shared_bytes", 768 + 1024 + 1024}, {"shared_wavefronts", 12 + 2 * 4 + 8},
                {"shared_bank_conflicts", 0}, {"barriers", 1}, {"mma_flop", 8192}});
    }
    {
        auto *k = wmma_kernel<64, 24>;
        GIVT_LAUNCH(k, 1, 32, 0, 0, (const __nv_bfloat16 *)in);
        expect("wmma ldm 64 / 24", last(),
               {{"gld_requests", 32}, {"gld_bytes", 2048}, {"gld_sectors", 64}, {"shared_requests", 32 + 2 + 4},
                {"shared_bytes", 2048 + 1024 + 1024}, {"shared_wavefronts", 32 + 2 * 32 + 8},
                {"shared_bank_conflicts", 2 * 28}, {"barriers", 1}, {"mma_flop", 8192}});
    }
    float *out = dev_floats(256);
    GIVT_LAUNCH(wmma_store_global_kernel, 1, 32, 0, 0, out);
    expect("wmma accumulator to global", last(), {{"gst_requests", 4}, {"gst_bytes", 1024}, {"gst_sectors", 32}});
    cudaFree(in), cudaFree(out);
}

TEST(emu_profile_ptx) {
    if (!ready()) return;
    float *out = dev_floats(256);
    // mma.sync m16n8k16: 2 * 16 * 8 * 16 = 4096 per warp and mma
    {
        auto *k = ptx_mma_kernel<1>;
        GIVT_LAUNCH(k, 1, 32, 0, 0, out);
        expect("mma.sync: 1 warp x 1", last(),
               {{"mma_flop", 4096}, {"gst_requests", 1}, {"gst_bytes", 128}, {"gst_sectors", 4}});
    }
    {
        auto *k = ptx_mma_kernel<3>;
        GIVT_LAUNCH(k, 1, 64, 0, 0, out);
        expect("mma.sync: 2 warps x 3", last(),
               {{"mma_flop", 6 * 4096}, {"gst_requests", 2}, {"gst_bytes", 256}, {"gst_sectors", 8}});
    }
    // ldmatrix: one request per instruction, 16 bytes a used lane (x4 512, x2 256, x1 128 bytes), one
    // phase (the hardware's wavefront when conflict-free) per 8 x 8 matrix: its 8 rows of 16 bytes =
    // 4 words each, in banks (row start / 4) % 32 + 0..3.
    // Padded: rows 40 bf16 = 80 bytes = 20 words apart: row r of a matrix starts at bank 20 r % 32 =
    // 0, 20, 8, 28, 16, 4, 24, 12 (+ 4 for the matrices at col 8; rows 8.. start at 160 % 32 = 0 again):
    // 8 disjoint groups of 4 banks, 1 wavefront a matrix: x4 4, x2 2, x1 1; no conflicts.
    {
        auto *k = ptx_ldmatrix_kernel<40>;
        GIVT_LAUNCH(k, 1, 32, 0, 0, (unsigned *)out);
        expect("ldmatrix, rows 80 bytes apart", last(),
               {{"shared_requests", 3}, {"shared_bytes", 512 + 256 + 128}, {"shared_wavefronts", 4 + 2 + 1},
                {"shared_bank_conflicts", 0}, {"gst_requests", 1}, {"gst_bytes", 128}, {"gst_sectors", 4}});
    }
    // Unpadded: rows 32 bf16 = 64 bytes = 16 words apart: row r starts at bank 16 r % 32 = 0, 16, 0,
    // 16...: rows 0, 2, 4, 6 on banks 0-3 at 4 different words, rows 1, 3, 5, 7 on 16-19 (+ 4 at
    // col 8): 4 wavefronts a matrix, 3 of them conflicts: x4 16 (12 conflicts), x2 8 (6), x1 4 (3).
    {
        auto *k = ptx_ldmatrix_kernel<32>;
        GIVT_LAUNCH(k, 1, 32, 0, 0, (unsigned *)out);
        expect("ldmatrix, rows 64 bytes apart", last(),
               {{"shared_requests", 3}, {"shared_bytes", 512 + 256 + 128}, {"shared_wavefronts", 16 + 8 + 4},
                {"shared_bank_conflicts", 12 + 6 + 3}, {"gst_requests", 1}, {"gst_bytes", 128},
                {"gst_sectors", 4}});
    }
    // cp.async, counted at issue: per warp a global load request (32 x 16 bytes) and a shared store
    // request (16-byte accesses: quarter-warp phases). Coalesced: 512 contiguous bytes = 16 sectors; 8
    // lanes x 16 bytes = 32 words on 32 banks: 1 wavefront a phase, 4. Stride 2 (32 bytes): 512 bytes
    // over 1024 = 32 sectors; lanes t and t + 4 of a phase on the same banks: 2 a phase, 8 (4 conflicts).
    float4 *in;
    CUDA_CHECK(cudaMalloc((void **)&in, 128 * sizeof(float4)));
    CUDA_CHECK(cudaMemset(in, 0, 128 * sizeof(float4)));
    const givt_emu::Order orders[3] = {givt_emu::ORDER_FORWARD, givt_emu::ORDER_REVERSE, givt_emu::ORDER_RANDOM};
    for (int o = 0; o < 3; o++) {  // the same counts whenever the copies land
        givt_emu::set_order(orders[o], 7);
        {
            auto *k = ptx_cp_async_kernel<1>;
            GIVT_LAUNCH(k, 1, 32, 0, 0, (const float4 *)in);
            expect("cp.async, coalesced", last(),
                   {{"gld_requests", 1}, {"gld_bytes", 512}, {"gld_sectors", 16}, {"shared_requests", 1},
                    {"shared_bytes", 512}, {"shared_wavefronts", 4}, {"shared_bank_conflicts", 0}});
            GIVT_LAUNCH(k, 1, 64, 0, 0, (const float4 *)in);
            expect("cp.async, coalesced, 2 warps", last(),
                   {{"gld_requests", 2}, {"gld_bytes", 1024}, {"gld_sectors", 32}, {"shared_requests", 2},
                    {"shared_bytes", 1024}, {"shared_wavefronts", 8}, {"shared_bank_conflicts", 0}});
        }
        {
            auto *k = ptx_cp_async_kernel<2>;
            GIVT_LAUNCH(k, 1, 32, 0, 0, (const float4 *)in);
            expect("cp.async, stride 32 bytes", last(),
                   {{"gld_requests", 1}, {"gld_bytes", 512}, {"gld_sectors", 32}, {"shared_requests", 1},
                    {"shared_bytes", 512}, {"shared_wavefronts", 8}, {"shared_bank_conflicts", 4}});
        }
    }
    givt_emu::set_order(givt_emu::ORDER_FORWARD, 1);
    cudaFree(out), cudaFree(in);
}

TEST(emu_profile_flops) {
    if (!ready()) return;
    float *y = dev_floats(96), *x = dev_floats(32);
    double *dy, *dx;
    CUDA_CHECK(cudaMalloc((void **)&dy, 32 * sizeof(double)));
    CUDA_CHECK(cudaMalloc((void **)&dx, 32 * sizeof(double)));
    CUDA_CHECK(cudaMemset(dx, 0, 32 * sizeof(double)));
    GIVT_LAUNCH(flops_kernel, 1, 32, 0, 0, y, (const float *)x, dy, (const double *)dx, 2.0f);
    ProfileCounters c = last();
    CHECK(c.flop_counted, "no floating-point counts (objdump missing?)");
    expect("flops", c,
           {{"float_flop", 3 * 32}, {"fp64_flop", 2 * 32}, {"math_calls", 32}, {"gld_requests", 5},
            {"gld_bytes", 4 * 128 + 256}, {"gld_sectors", 4 * 4 + 8}, {"gst_requests", 4},
            {"gst_bytes", 3 * 128 + 256}, {"gst_sectors", 3 * 4 + 8}});
    cudaFree(y), cudaFree(x), cudaFree(dy), cudaFree(dx);
}

// the counts do not depend on the order the fibers run in
TEST(emu_profile_fiber_orders) {
    if (!ready()) return;
    float *out = dev_floats(256), *in = dev_floats(256);
    const givt_emu::Order orders[3] = {givt_emu::ORDER_FORWARD, givt_emu::ORDER_REVERSE, givt_emu::ORDER_RANDOM};
    ProfileCounters first = ProfileCounters();
    for (int o = 0; o < 3; o++) {
        givt_emu::set_order(orders[o], 5);
        GIVT_LAUNCH(blocks_kernel, 2, 64, 0, 0, out, (const float *)in);
        ProfileCounters c = last();
        if (o == 0) first = c;
        else CHECK(!memcmp(&c, &first, sizeof c), "order %s counts differ", givt_emu::order_name(orders[o]));
    }
    givt_emu::set_order(givt_emu::ORDER_FORWARD, 1);
    cudaFree(out), cudaFree(in);
}

// the TSV: header, one row per kernel summed over its launches
TEST(emu_profile_tsv) {
    if (!ready()) return;
    givt_emu::profile_reset();
    float *out = dev_floats(64);
    GIVT_LAUNCH(bank4_kernel, 1, 32, 0, 0, out);
    GIVT_LAUNCH(bank4_kernel, 1, 32, 0, 0, out);
    ProfileCounters sum;
    CHECK(givt_emu::profile_kernel("bank4_kernel", &sum) && sum.launches == 2 && sum.shared_wavefronts == 16,
          "bank4_kernel summed over 2 launches");
    char path[] = "/tmp/givt_emu_profile_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return;
    close(fd);
    CHECK(givt_emu::profile_write(path), "profile_write");
    FILE *f = fopen(path, "r");
    char header[1024] = "", row[1024] = "";
    if (f) {
        if (!fgets(header, sizeof header, f)) header[0] = 0;
        if (!fgets(row, sizeof row, f)) row[0] = 0;
        fclose(f);
    }
    unlink(path);
    const char *cols[] = {"kernel",         "launches",          "mma_flop",     "float_flop", "gld_requests",
                          "gld_bytes",      "gld_sectors",       "gst_requests", "gst_bytes",  "gst_sectors",
                          "shared_requests", "shared_wavefronts", "barriers"};
    for (const char *col : cols) {
        std::string h = std::string("\t") + header, want = std::string("\t") + col + "\t";
        CHECK(h.find(want) != std::string::npos || h.find(std::string("\t") + col + "\n") != std::string::npos,
              "column %s missing from the header: %s", col, header);
    }
    const char *want = "bank4_kernel\t2\t2\t64\t0\t";  // kernel, launches, blocks, threads, mma_flop
    CHECK(!strncmp(row, want, strlen(want)), "row: %s", row);
    cudaFree(out);
    givt_emu::profile_reset();
}
