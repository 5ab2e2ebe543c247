// test_backend_ops: every op of ops.h on every backend, as data, in the manner of ggml's
// tests/test-backend-ops.cpp. One table of cases (k_cases below: the op, its shape, the seed of its
// inputs and its tolerances) is run on every backend of the registry that backend_available() says
// can be opened here, with precision "no" and again with "bf16" when that gives another compute dtype
// (in the test runner: the CPU backend, and the CUDA kernels emulated on the CPU as "cuda" and
// "cuda/bf16"; in make test-gpu's runner the real GPU). Each case's results are compared
//   - with the double-precision reference op of tests/ref_ops.c that the op's row of k_ops names
//     (plain loops: the forward formula of GIVT.md / ops.h, and for backward ops the vector-Jacobian
//     product derived by hand), on every backend, the CPU backend included (comparing it with itself
//     would prove nothing);
//   - with the CPU backend's results on the same inputs (the reference backend), on every other
//     backend.
// The shapes include odd ones (T = 1, T = 37, T = 70 across the CPU backend's 64-row attention
// blocks and the CUDA kernels' tiles, head dims 6 to 128 (40, 48 not multiples of 16), B = 3, N and C
// not multiples of anything); inputs are random (fixed seeds, no all-zero tensors), drawn in float32
// and rounded to the backend's compute dtype before both backends and the double reference see them,
// so only the arithmetic differs. All memory traffic goes through the backend's own ops (alloc,
// upload, download, free; a bf16 buffer is converted on the host), so a new backend joins these tests
// by being registered. Each op is one test, backend_ops_<op> (scripts/test.sh runs backend_ops_ in
// the emulator's three thread orders), and prints one line per (case, backend).
//
// Error measure, per output: err = max(||got - want||_2 / ||want||_2, max|got - want| / max|want|),
// the norm-wise relative error and the largest absolute error relative to the largest reference
// value; a non-finite result where a finite one is expected is an infinite error. For accumulating
// outputs (dw, dres, dbos, the loss and sumsq scalars, AdamW's and the EMA's updates) the increment
// (result minus prefill) is compared, so that the prefill's size cannot hide a wrong increment.
// Tolerances (err <= tol), per case (Tol: by the backend's compute dtype, and for float32 data):
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
//
// Perf mode (not part of the pass/fail run): GIVT_OPS_PERF=1 build/run_tests backend_ops_ runs the
// same cases and then times each one on each backend: the op is called again and again on the same
// buffers (after its checked call, which warms it up) until GIVT_OPS_PERF_MS milliseconds (default
// 100) have passed, synchronizing only at the end of each batch, and one row per (case, backend)
// says its time per call and its GFLOP/s (ops that compute: matmul, attention) or GB/s (the rest;
// bytes read + written at the least). GIVT_OPS_PERF=cpu (or cuda) times that backend only: the
// emulated CUDA backend of build/run_tests is slow and its times mean nothing; make test-gpu's
// build/run_tests_gpu times the real GPU. A filter picks the ops: build/run_tests backend_ops_matmul.
// The shapes are the small ones of the checks (launch overhead dominates on a GPU).
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "half.h"
#include "harness.h"
#include "ops.h"
#include "ref_ops.h"
#include "rng.h"
#include "util.h"

#define TOL_F32 1e-5
#define TOL_BF16 1e-2
#define TOL_SUMSQ 1e-12
#define GUARD 17            // sentinel elements after every output buffer
#define SENTINEL -1024.0f   // exact in float32 and bf16
#define SHAPE_MAX 160       // a case's shape as text

// ---- the ops and their cases ---------------------------------------------------------------------
// The tolerances of a case: of its outputs computed from compute-dtype tensors, by the backend's
// compute dtype (f32, bf16), and of its outputs computed from float32 data only (data).
typedef struct {
    double f32, bf16, data;
} Tol;
#define TOL_STD {TOL_F32, TOL_BF16, TOL_F32}  // the usual (see the header)
#define TOL_COPY {0, TOL_BF16, TOL_F32}       // float32 to the compute dtype: a copy in float32
#define TOL_EXACT {0, 0, 0}                   // copies of bytes or of bf16-exact values
#define TOL_SUM {TOL_SUMSQ, TOL_SUMSQ, TOL_SUMSQ}

// The ops, X(name, dims, param, runner, cost, reference), one row each: name is the op's and the
// test's (backend_ops_NAME); dims name the entries of a case's shape (OpCase.d, in order; NULL: the
// attention layout, att_describe) and param its x (NULL: none); the runner draws a case's inputs,
// runs the op on the backend (and on the CPU backend) and compares; cost is a call's work for perf
// mode; reference is what the results are checked against (besides the CPU backend's results).
#define OPS(X)                                                                                              \
    X(to_compute, "n", NULL, case_to_compute, cost_to_compute, "the float32 input itself (a conversion)")   \
    X(memory, "bytes", NULL, case_memory, cost_memory, "the bytes uploaded (alloc zero-fills)")             \
    X(copy_rows, "B rows width L", NULL, case_copy_rows, cost_copy_rows, "refop_copy_rows")                 \
    X(matmul_fwd, "N K M", NULL, case_matmul_fwd, cost_matmul_fwd, "refop_matmul_fwd")                      \
    X(matmul_bwd, "N K M", NULL, case_matmul_bwd, cost_matmul_bwd, "refop_matmul_bwd")                      \
    X(residual_rmsnorm_fwd, "N C fused", NULL, case_rmsnorm_fwd, cost_rmsnorm_fwd, "refop_rmsnorm_fwd")     \
    X(residual_rmsnorm_bwd, "N C", NULL, case_rmsnorm_bwd, cost_rmsnorm_bwd, "refop_rmsnorm_bwd")           \
    X(attention_fwd, NULL, NULL, case_attention_fwd, cost_attention_fwd, "refop_attention")                 \
    X(attention_bwd, NULL, NULL, case_attention_bwd, cost_attention_bwd, "refop_attention with dout")       \
    X(swiglu_fwd, "N F", NULL, case_swiglu_fwd, cost_swiglu_fwd, "refop_swiglu_fwd")                        \
    X(swiglu_bwd, "N F", NULL, case_swiglu_bwd, cost_swiglu_bwd, "refop_swiglu_bwd")                        \
    X(shift_bos, "B T D", NULL, case_shift_bos, cost_shift_bos, "refop_shift_bos")                          \
    X(shift_bos_bwd, "B T D", NULL, case_shift_bos_bwd, cost_shift_bos_bwd, "refop_shift_bos_bwd")          \
    X(gaussian_nll, "N D", "eps", case_nll, cost_nll, "refop_gaussian_nll")                                 \
    X(gaussian_nll_dy, "N D", "eps", case_nll_dy, cost_nll_dy, "refop_gaussian_nll with dy")                \
    X(mixture_nll, "N D K", "eps", case_mix, cost_mix, "refop_mixture_nll")                                 \
    X(mixture_nll_dy, "N D K", "eps", case_mix_dy, cost_mix_dy, "refop_mixture_nll with dy")                \
    X(mixture_nll_k1_is_gaussian_nll, "N D", "eps", case_mix_k1, cost_mix_dy, "gaussian_nll, same backend") \
    X(class_embed_fwd, "B T C rows", NULL, case_ce_fwd, cost_ce_fwd, "refop_class_embed_fwd")               \
    X(class_embed_bwd, "B T C rows", NULL, case_ce_bwd, cost_ce_bwd, "refop_class_embed_bwd")               \
    X(sumsq, "n", NULL, case_sumsq, cost_sumsq, "refop_sumsq")                                              \
    X(step_check, "inputs", "max_norm", case_step_check, cost_step_check, "the host's formula, in double")   \
    X(adamw, "n t alias ema", "decay", case_adamw, cost_adamw, "refop_adamw (with its EMA)")                 \
    X(ema_update, "n alias", "decay", case_ema, cost_ema, "refop_ema_update")

#define OP_ENUM(name, dims, param, run, cost, ref) OP_##name,
typedef enum { OPS(OP_ENUM) N_OPS } OpId;

// A case: d is the shape, its entries named by the op's dims (the runner says what they mean);
// x the op's parameter when it has one (the NLLs' eps, the EMA's decay (ema_update, adamw's EMA)).
typedef struct {
    OpId op;
    int d[12];
    double x;
    uint64_t seed;  // of the inputs
    Tol tol;
} OpCase;

// Attention cases: d = the 12 fields of RefOpAttCase (ref_ops.h): B, H, hd, Tq, pos0, n_rot, shared,
// qr_pad, qb_pad, kr_pad, kcap_pad, kb_pad.
#define ATT(...) {__VA_ARGS__}

// The cases. Seeds are those of the inputs each case has always had.
static const OpCase k_cases[] = {
    // op                  shape                    x      seed  tolerances
    {OP_to_compute,        {1},                     0,     1000, TOL_COPY},
    {OP_to_compute,        {37},                    0,     1001, TOL_COPY},
    {OP_to_compute,        {4099},                  0,     1002, TOL_COPY},
    {OP_memory,            {1},                     0,     0,    TOL_EXACT},  // seed: the bytes' pattern
    {OP_memory,            {148},                   0,     1,    TOL_EXACT},
    {OP_memory,            {1 << 20},               0,     2,    TOL_EXACT},
    {OP_copy_rows,         {1, 1, 5, 9},            0,     0,    TOL_EXACT},
    {OP_copy_rows,         {3, 4, 48, 7},           0,     0,    TOL_EXACT},
    {OP_copy_rows,         {2, 37, 12, 40},         0,     0,    TOL_EXACT},
    {OP_matmul_fwd,        {1, 16, 48},             0,     1100, TOL_STD},
    {OP_matmul_fwd,        {111, 96, 288},          0,     1101, TOL_STD},
    {OP_matmul_fwd,        {37, 48, 5},             0,     1102, TOL_STD},
    {OP_matmul_fwd,        {7, 13, 130},            0,     1103, TOL_STD},
    {OP_matmul_bwd,        {1, 16, 48},             0,     1200, TOL_STD},
    {OP_matmul_bwd,        {111, 96, 288},          0,     1201, TOL_STD},
    {OP_matmul_bwd,        {37, 48, 5},             0,     1202, TOL_STD},
    {OP_matmul_bwd,        {7, 13, 130},            0,     1203, TOL_STD},
    {OP_residual_rmsnorm_fwd, {1, 48, 0},           0,     1300, TOL_STD},
    {OP_residual_rmsnorm_fwd, {1, 48, 1},           0,     1301, TOL_STD},
    {OP_residual_rmsnorm_fwd, {111, 96, 0},         0,     1302, TOL_STD},
    {OP_residual_rmsnorm_fwd, {111, 96, 1},         0,     1303, TOL_STD},
    {OP_residual_rmsnorm_fwd, {37, 13, 0},          0,     1304, TOL_STD},
    {OP_residual_rmsnorm_fwd, {37, 13, 1},          0,     1305, TOL_STD},
    {OP_residual_rmsnorm_fwd, {3, 1, 0},            0,     1306, TOL_STD},
    {OP_residual_rmsnorm_fwd, {3, 1, 1},            0,     1307, TOL_STD},
    // not C = 1 backward: there dx = r w g (1 - x^2 r^2) = r w g * 1e-5 / (x^2 + 1e-5), about 1e-5 of
    // either term, which float32 cannot resolve (the forward has C = 1)
    {OP_residual_rmsnorm_bwd, {1, 48},              0,     1400, TOL_STD},
    {OP_residual_rmsnorm_bwd, {111, 96},            0,     1401, TOL_STD},
    {OP_residual_rmsnorm_bwd, {37, 13},             0,     1402, TOL_STD},
    {OP_residual_rmsnorm_bwd, {5, 3},               0,     1403, TOL_STD},
    // attention, training shapes (forward and backward): B H hd Tq pos0 rot | shared qr qb kr kcap kb
    {OP_attention_fwd, ATT(1, 1, 48, 1, 0, 48, 1, 0, 0, 0, 0, 0), 0, 1500, TOL_STD},  // T = 1
    {OP_attention_fwd, ATT(3, 2, 48, 37, 0, 48, 1, 0, 0, 0, 0, 0), 0, 1501, TOL_STD}, // B = 3, T = 37
    {OP_attention_fwd, ATT(2, 3, 16, 37, 0, 8, 1, 0, 0, 0, 0, 0), 0, 1502, TOL_STD},  // partial rotation
    {OP_attention_fwd, ATT(1, 2, 8, 70, 0, 8, 1, 0, 0, 0, 0, 0), 0, 1503, TOL_STD},   // two 64-row CPU blocks
    {OP_attention_fwd, ATT(2, 2, 6, 5, 0, 0, 1, 0, 0, 0, 0, 0), 0, 1504, TOL_STD},    // no rotation
    {OP_attention_fwd, ATT(3, 2, 48, 37, 0, 16, 0, 3, 5, 7, 2, 1), 0, 1505, TOL_STD}, // separate, padded
    // head dims of real models (the CUDA bf16 kernels' 64 x 64 WMMA tiles, hd padded to 16s)
    {OP_attention_fwd, ATT(1, 1, 128, 70, 0, 128, 1, 0, 0, 0, 0, 0), 0, 1506, TOL_STD}, // hd 128, 2 tiles
    {OP_attention_fwd, ATT(2, 1, 32, 67, 0, 32, 0, 1, 2, 3, 0, 1), 0, 1507, TOL_STD},   // hd 32, padded
    {OP_attention_fwd, ATT(1, 2, 64, 65, 0, 16, 1, 0, 0, 0, 0, 0), 0, 1508, TOL_STD},   // a 1-row 2nd tile
    {OP_attention_fwd, ATT(1, 1, 40, 33, 0, 40, 1, 0, 0, 0, 0, 0), 0, 1509, TOL_STD},   // hd 40
    // four 64-key tiles: the bf16 forward's double-buffered K/V tiles are each reused
    {OP_attention_fwd, ATT(1, 1, 64, 200, 0, 64, 1, 0, 0, 0, 0, 0), 0, 1510, TOL_STD},
    // attention, KV-cache decode (forward only)
    {OP_attention_fwd, ATT(3, 2, 48, 1, 36, 48, 0, 0, 0, 0, 4, 0), 0, 1550, TOL_STD},   // 1 query, Tk 37
    {OP_attention_fwd, ATT(2, 3, 16, 3, 34, 8, 0, 5, 3, 1, 2, 3), 0, 1551, TOL_STD},    // padded strides
    {OP_attention_fwd, ATT(1, 2, 8, 5, 66, 8, 1, 0, 0, 0, 0, 0), 0, 1552, TOL_STD},     // Tk 71, qkv layout
    {OP_attention_fwd, ATT(1, 1, 128, 66, 10, 128, 0, 0, 0, 0, 3, 0), 0, 1553, TOL_STD}, // hd 128, Tk 76
    {OP_attention_fwd, ATT(2, 1, 40, 7, 60, 40, 1, 0, 0, 0, 0, 0), 0, 1554, TOL_STD},   // hd 40, Tk 67
    {OP_attention_fwd, ATT(1, 2, 64, 2, 298, 64, 1, 0, 0, 0, 0, 0), 0, 1555, TOL_STD},  // Tk 300: five key tiles
    {OP_attention_bwd, ATT(1, 1, 48, 1, 0, 48, 1, 0, 0, 0, 0, 0), 0, 1600, TOL_STD},
    {OP_attention_bwd, ATT(3, 2, 48, 37, 0, 48, 1, 0, 0, 0, 0, 0), 0, 1601, TOL_STD},
    {OP_attention_bwd, ATT(2, 3, 16, 37, 0, 8, 1, 0, 0, 0, 0, 0), 0, 1602, TOL_STD},
    {OP_attention_bwd, ATT(1, 2, 8, 70, 0, 8, 1, 0, 0, 0, 0, 0), 0, 1603, TOL_STD},
    {OP_attention_bwd, ATT(2, 2, 6, 5, 0, 0, 1, 0, 0, 0, 0, 0), 0, 1604, TOL_STD},
    {OP_attention_bwd, ATT(3, 2, 48, 37, 0, 16, 0, 3, 5, 7, 2, 1), 0, 1605, TOL_STD},
    {OP_attention_bwd, ATT(1, 1, 128, 70, 0, 128, 1, 0, 0, 0, 0, 0), 0, 1606, TOL_STD},
    {OP_attention_bwd, ATT(2, 1, 32, 67, 0, 32, 0, 1, 2, 3, 0, 1), 0, 1607, TOL_STD},
    {OP_attention_bwd, ATT(1, 2, 64, 65, 0, 16, 1, 0, 0, 0, 0, 0), 0, 1608, TOL_STD},
    {OP_attention_bwd, ATT(1, 1, 40, 33, 0, 40, 1, 0, 0, 0, 0, 0), 0, 1609, TOL_STD},
    {OP_attention_bwd, ATT(1, 1, 64, 200, 0, 64, 1, 0, 0, 0, 0, 0), 0, 1610, TOL_STD},  // four tiles
    {OP_attention_bwd, ATT(1, 1, 128, 136, 0, 128, 0, 1, 2, 3, 0, 1), 0, 1611, TOL_STD}, // hd 128, padded
    {OP_swiglu_fwd,        {1, 1},                  0,     1700, TOL_STD},
    {OP_swiglu_fwd,        {111, 130},              0,     1701, TOL_STD},
    {OP_swiglu_fwd,        {37, 48},                0,     1702, TOL_STD},
    {OP_swiglu_bwd,        {1, 1},                  0,     1710, TOL_STD},
    {OP_swiglu_bwd,        {111, 130},              0,     1711, TOL_STD},
    {OP_swiglu_bwd,        {37, 48},                0,     1712, TOL_STD},
    {OP_shift_bos,         {1, 1, 3},               0,     1800, TOL_STD},
    {OP_shift_bos,         {3, 37, 16},             0,     1801, TOL_STD},
    {OP_shift_bos,         {2, 5, 1},               0,     1802, TOL_STD},
    {OP_shift_bos,         {4, 2, 7},               0,     1803, TOL_STD},
    {OP_shift_bos_bwd,     {1, 1, 3},               0,     1810, TOL_STD},
    {OP_shift_bos_bwd,     {3, 37, 16},             0,     1811, TOL_STD},
    {OP_shift_bos_bwd,     {2, 5, 1},               0,     1812, TOL_STD},
    {OP_shift_bos_bwd,     {4, 2, 7},               0,     1813, TOL_STD},
    // some pre above 20, and with eps 1e-2 some clamped (case_nll)
    {OP_gaussian_nll,      {1, 1},                  1e-8,  1900, TOL_STD},
    {OP_gaussian_nll,      {111, 16},               1e-2,  1901, TOL_STD},
    {OP_gaussian_nll,      {37, 5},                 1e-2,  1902, TOL_STD},
    {OP_gaussian_nll,      {193, 3},                1e-8,  1903, TOL_STD},
    {OP_gaussian_nll_dy,   {1, 1},                  1e-8,  1910, TOL_STD},
    {OP_gaussian_nll_dy,   {111, 16},               1e-2,  1911, TOL_STD},
    {OP_gaussian_nll_dy,   {37, 5},                 1e-2,  1912, TOL_STD},
    {OP_gaussian_nll_dy,   {193, 3},                1e-8,  1913, TOL_STD},
    // K = 1 (the seed's head through this op), a single row, K = 16; rows 0..2 hard (mix_hard_rows)
    {OP_mixture_nll,       {23, 3, 1},              1e-8,  2300, TOL_STD},
    {OP_mixture_nll,       {1, 2, 2},               1e-2,  2301, TOL_STD},
    {OP_mixture_nll,       {37, 5, 3},              1e-8,  2302, TOL_STD},
    {OP_mixture_nll,       {19, 16, 4},             1e-2,  2303, TOL_STD},
    {OP_mixture_nll,       {7, 4, 16},              1e-8,  2304, TOL_STD},
    {OP_mixture_nll_dy,    {23, 3, 1},              1e-8,  2310, TOL_STD},
    {OP_mixture_nll_dy,    {1, 2, 2},               1e-2,  2311, TOL_STD},
    {OP_mixture_nll_dy,    {37, 5, 3},              1e-8,  2312, TOL_STD},
    {OP_mixture_nll_dy,    {19, 16, 4},             1e-2,  2313, TOL_STD},
    {OP_mixture_nll_dy,    {7, 4, 16},              1e-8,  2314, TOL_STD},
    // dy exact in float32, 1e-2 elementwise in bf16; the loss (data) 1e-12: double sums of the same terms
    {OP_mixture_nll_k1_is_gaussian_nll, {41, 7},    1e-8,  2399, {0, TOL_BF16, 1e-12}},
    // labels repeat (case_ce); d[4] = the case's index, which the labels' pattern depends on
    {OP_class_embed_fwd,   {1, 1, 3, 2, 0},         0,     2500, TOL_STD},
    {OP_class_embed_fwd,   {3, 5, 16, 4, 1},        0,     2501, TOL_STD},
    {OP_class_embed_fwd,   {6, 2, 37, 3, 2},        0,     2502, TOL_STD},
    {OP_class_embed_fwd,   {2, 9, 8, 11, 3},        0,     2503, TOL_STD},
    {OP_class_embed_bwd,   {1, 1, 3, 2, 0},         0,     2510, TOL_STD},
    {OP_class_embed_bwd,   {3, 5, 16, 4, 1},        0,     2511, TOL_STD},
    {OP_class_embed_bwd,   {6, 2, 37, 3, 2},        0,     2512, TOL_STD},
    {OP_class_embed_bwd,   {2, 9, 8, 11, 3},        0,     2513, TOL_STD},
    {OP_sumsq,             {1},                     0,     2000, TOL_SUM},
    {OP_sumsq,             {63},                    0,     2001, TOL_SUM},
    {OP_sumsq,             {1001},                  0,     2002, TOL_SUM},
    {OP_sumsq,             {100003},                0,     2003, TOL_SUM},
    // inputs: 0 finite (clipped), 1 a small norm (scale 1), 2 NaN loss, 3 infinite squared norm,
    // 4 -inf loss and NaN squared norm; max_norm 0: no clipping
    {OP_step_check,        {0},                     1.0f,  2050, TOL_EXACT},
    {OP_step_check,        {0},                     0,     2051, TOL_EXACT},
    {OP_step_check,        {1},                     1.0f,  2052, TOL_EXACT},
    {OP_step_check,        {2},                     1.0f,  2053, TOL_EXACT},
    {OP_step_check,        {3},                     1.0f,  2054, TOL_EXACT},
    {OP_step_check,        {4},                     0.5f,  2055, TOL_EXACT},
    {OP_adamw,             {1, 1, 0, 0},            0,     2100, TOL_STD},
    {OP_adamw,             {37, 7, 1, 0},           0,     2101, TOL_STD},
    {OP_adamw,             {10007, 3, 0, 0},        0,     2102, TOL_STD},
    {OP_adamw,             {4099, 1, 1, 0},         0,     2103, TOL_STD},
    // with the EMA in the same pass (decay 0: the EMA's first updates, a copy of the new weights)
    {OP_adamw,             {1, 1, 1, 1},            0,     2110, TOL_STD},
    {OP_adamw,             {37, 7, 0, 1},           0.9f,  2111, TOL_STD},
    {OP_adamw,             {10007, 3, 1, 1},        0.999f, 2112, TOL_STD},
    {OP_adamw,             {4099, 2, 0, 1},         0.5f,  2113, TOL_STD},
    {OP_ema_update,        {1, 0},                  0.9f,  2200, TOL_STD},
    {OP_ema_update,        {37, 1},                 0,     2201, TOL_STD},
    {OP_ema_update,        {10007, 0},              0.999f, 2202, TOL_STD},
    {OP_ema_update,        {4099, 1},               0,     2203, TOL_STD},
};
#define N_CASES (int)(sizeof k_cases / sizeof k_cases[0])

// ---- backends ---------------------------------------------------------------------------------
typedef struct {
    Backend *be;      // under test
    Backend *cpu;     // the reference backend (be itself when be is the CPU backend)
    char label[24];   // "cpu", "cuda", "cuda/bf16"
    int is_cpu;
} Target;

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

static float *fnew(size_t n) { return xmalloc((n ? n : 1) * sizeof(float)); }

// ---- perf mode --------------------------------------------------------------------------------
// GIVT_OPS_PERF (see the header): which backends to time, and for how long per case. While a case
// runs on a timed backend, be is that backend; the first PERF loop of the case records its result.
typedef struct {
    int on;
    char only[BACKEND_NAME_MAX];  // a registry name to time alone, or "" (every backend)
    double min_s;                 // GIVT_OPS_PERF_MS / 1000
    Backend *be;
    double s_per_call;
    long calls;                   // 0: nothing recorded yet
} Perf;
static Perf g_perf;

static void perf_config(void) {
    const char *v = getenv("GIVT_OPS_PERF"), *ms = getenv("GIVT_OPS_PERF_MS");
    g_perf.on = v && *v && strcmp(v, "0") != 0;
    snprintf(g_perf.only, sizeof g_perf.only, "%s", g_perf.on && strcmp(v, "1") && strcmp(v, "all") ? v : "");
    g_perf.min_s = (ms && atof(ms) > 0 ? atof(ms) : 100.0) / 1000.0;
}

// Arms the timing of the next case on t (in perf mode, when t's backend is one to time).
static void perf_arm(const Target *t) {
    g_perf.be = g_perf.on && (!g_perf.only[0] || !strcmp(g_perf.only, t->be->name)) ? t->be : NULL;
    g_perf.calls = 0;
}

static int perf_wants(Backend *be) { return be == g_perf.be && g_perf.calls == 0; }

// A timing loop: batches of calls doubling in size until min_s have passed (synchronized at the end
// of each batch only).
typedef struct {
    Backend *be;
    double t0;
    long batch, left, calls;
} PerfLoop;

static void perf_start(PerfLoop *p, Backend *be) {
    backend_synchronize(be);
    *p = (PerfLoop){.be = be, .t0 = util_time_now_s(), .batch = 1, .left = 1, .calls = 0};
}

static int perf_more(PerfLoop *p) {
    if (p->left == 0) {
        backend_synchronize(p->be);
        double el = util_time_now_s() - p->t0;
        if (el >= g_perf.min_s) {
            g_perf.s_per_call = el / (double)p->calls, g_perf.calls = p->calls;
            return 0;
        }
        p->batch *= 2, p->left = p->batch;
    }
    p->left--, p->calls++;
    return 1;
}

// In perf mode, on the backend under test: calls `call` (an op call on the case's buffers, after the
// checked one) again and again and records its time per call.
#define PERF(be, call)                                                   \
    do {                                                                 \
        if (perf_wants(be)) {                                            \
            PerfLoop pl_;                                                \
            for (perf_start(&pl_, (be)); perf_more(&pl_);) call;         \
        }                                                                \
    } while (0)

static void perf_row(const Target *t, const char *op, const char *shape, OpCost cost) {
    if (!g_perf.calls) return;
    double s = g_perf.s_per_call;
    if (cost.flops > 0)
        printf("  perf %-9s %-22s %-46s %10.2f us/call %9.3f GFLOP/s  (%ld calls)\n", t->label, op, shape, s * 1e6,
               cost.flops / s * 1e-9, g_perf.calls);
    else
        printf("  perf %-9s %-22s %-46s %10.2f us/call %9.3f GB/s     (%ld calls)\n", t->label, op, shape, s * 1e6,
               cost.bytes / s * 1e-9, g_perf.calls);
}

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
    double *d = refop_zeros(n);
    for (size_t i = 0; i < n; i++) d[i] = (double)got[i] - (base ? (double)base[i] : 0.0);
    return d;
}

// One report line: a case on a target. tol: the case's tolerance for the target's compute dtype.
typedef struct {
    const Target *t;
    const char *op;
    char shape[SHAPE_MAX];
    char text[512];
    size_t len;
    double tol;
} Line;

static void line_begin(Line *L, const Target *t, const char *op, const char *shape, double tol) {
    memset(L, 0, sizeof *L);
    L->t = t, L->op = op, L->tol = tol;
    snprintf(L->shape, sizeof L->shape, "%s", shape);
    L->len = (size_t)snprintf(L->text, sizeof L->text, "  %-9s %-22s %-46s", t->label, op, L->shape);
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

// ---- the runners: one per op, (target, case, report line) --------------------------------------
// Each draws the case's inputs (from its seed), computes the reference, runs the op on the backend
// under test (and on the CPU backend when that is another), and compares; the tolerance of outputs
// in the compute dtype is L->tol, of outputs from float32 data only c->tol.data.

// to_compute: dst = src (n) in the compute dtype; float32 to float32 is a copy, also in place
static void case_to_compute(const Target *t, const OpCase *c, Line *L) {
    size_t n = (size_t)c->d[0];
    Rng r;
    rng_seed(&r, c->seed);
    float *src = randn(&r, n, 3.0, DTYPE_F32), *got = fnew(n);  // float32 values, not rounded
    double *want = refop_widen(src, n);
    Backend *be = t->be;
    float *d = put_f(be, src, n);
    cval *cv = put_c(be, NULL, n);
    be->ops->to_compute(be, cv, d, n);
    int guard = get_c(be, got, cv, n);
    PERF(be, be->ops->to_compute(be, cv, d, n));
    line_cmp(L, "dst", got, NULL, want, NULL, NULL, n, L->tol);
    line_exact(L, "guard", guard);
    if (be->compute == DTYPE_F32) {
        // the compute copy of float32 weights is the weights themselves: dst == src leaves them
        be->ops->to_compute(be, (cval *)(void *)d, d, n);
        guard = get_f(be, got, d, n);
        int bad = 0;
        for (size_t i = 0; i < n; i++) bad += got[i] != src[i];
        line_exact(L, "in place", bad + guard);
    }
    dfree(be, d), dfree(be, cv);
    free(src), free(got), free(want);
}

// memory: alloc zero-fills, upload/download round trip, zero of the second half, copy backend to
// backend (NaN bit patterns too: raw bytes, seed = the pattern's offset); mem_info free <= total
static void case_memory(const Target *t, const OpCase *c, Line *L) {
    Backend *be = t->be;
    size_t n = (size_t)c->d[0];
    int bad = 0;
    unsigned char *h = xmalloc(n), *back = xmalloc(n);
    unsigned char *p = be->ops->alloc(be, n);
    be->ops->download(be, back, p, n);
    for (size_t i = 0; i < n; i++) bad += back[i] != 0;  // alloc zero-fills
    for (size_t i = 0; i < n; i++) h[i] = (unsigned char)(i * 131 + 7 + c->seed);
    be->ops->upload(be, p, h, n);
    be->ops->download(be, back, p, n);
    bad += memcmp(h, back, n) != 0;
    be->ops->zero(be, p + n / 2, n - n / 2);  // zero the second half only
    be->ops->synchronize(be);
    be->ops->download(be, back, p, n);
    for (size_t i = 0; i < n; i++) bad += back[i] != (i < n / 2 ? h[i] : 0);
    unsigned char *q = be->ops->alloc(be, n);
    be->ops->upload(be, p, h, n);
    be->ops->copy(be, q, p, n);
    be->ops->download(be, back, q, n);
    bad += memcmp(h, back, n) != 0;
    PERF(be, be->ops->copy(be, q, p, n));
    be->ops->free(be, q);
    be->ops->free(be, p);
    free(h), free(back);
    size_t fb = 0, tb = 0;
    be->ops->mem_info(be, &fb, &tb);
    line_exact(L, "alloc zero-fills, round trip, zero, copy", bad);
    line_exact(L, "mem_info free <= total", tb != 0 && fb > tb);
}

// copy_rows: the KV cache's append. d = B, rows, width, L: rows of width elements from a strided
// source (qkv-like, row stride 3 width, the middle third) into a strided destination (a cache, batch
// stride L * width) at row L - rows; the rest of the destination untouched. Values are bf16-exact so
// any compute dtype copies them exactly: the result is compared bit for bit.
static void case_copy_rows(const Target *t, const OpCase *c, Line *L) {
    Backend *be = t->be;
    int B = c->d[0], rows = c->d[1], W = c->d[2], Lc = c->d[3], pos = Lc - rows;
    size_t sr = 3 * (size_t)W, sb = (size_t)rows * sr, dr = (size_t)W, db = (size_t)Lc * W;
    size_t ns = (size_t)B * sb, nd = (size_t)B * db;
    float *src = fnew(ns), *dst = fnew(nd), *got = fnew(nd), *wantf = fnew(nd);
    for (size_t i = 0; i < ns; i++) src[i] = (float)((int)(i % 251) - 125) / 8.0f;
    for (size_t i = 0; i < nd; i++) dst[i] = -64.0f - (float)(i % 7);
    double *want = refop_widen(dst, nd), *dsrc = refop_widen(src, ns);
    refop_copy_rows(want + (size_t)pos * dr, dr, db, dsrc + W, sr, sb, B, rows, W);
    for (size_t i = 0; i < nd; i++) wantf[i] = (float)want[i];  // exact: float32 values
    cval *ds = put_c(be, src, ns), *dd = put_c(be, dst, nd);
    cval *to = cat_c(be, dd, (size_t)pos * dr), *from = cat_c(be, ds, (size_t)W);
    be->ops->copy_rows(be, to, dr, db, from, sr, sb, B, rows, W);
    int guard = get_c(be, got, dd, nd);
    PERF(be, be->ops->copy_rows(be, to, dr, db, from, sr, sb, B, rows, W));
    line_exact(L, "rows copied, the rest untouched", memcmp(got, wantf, nd * 4) != 0);
    line_exact(L, "guard", guard);
    dfree(be, ds), dfree(be, dd);
    free(src), free(dst), free(got), free(wantf), free(want), free(dsrc);
}

// ---- matmul ------------------------------------------------------------------------------------
// d = N, K, M: out (N, M) = inp (N, K) @ w^T
static int run_matmul_fwd(Backend *be, float *out, const float *inp, const float *w, int N, int K, int M) {
    cval *di = put_c(be, inp, (size_t)N * K), *dw = put_c(be, w, (size_t)M * K), *o = put_c(be, NULL, (size_t)N * M);
    be->ops->matmul_fwd(be, o, di, dw, N, K, M);
    int guard = get_c(be, out, o, (size_t)N * M);
    PERF(be, be->ops->matmul_fwd(be, o, di, dw, N, K, M));
    dfree(be, di), dfree(be, dw), dfree(be, o);
    return guard;
}

static void case_matmul_fwd(const Target *t, const OpCase *c, Line *L) {
    int N = c->d[0], K = c->d[1], M = c->d[2];
    size_t ni = (size_t)N * K, nw = (size_t)M * K, no = (size_t)N * M;
    Rng r;
    rng_seed(&r, c->seed);
    float *inp = randn(&r, ni, 1, t->be->compute), *w = randn(&r, nw, 1, t->be->compute);
    float *out = fnew(no), *cpu = fnew(no);
    double *di = refop_widen(inp, ni), *dw = refop_widen(w, nw), *want = refop_zeros(no);
    refop_matmul_fwd(want, di, dw, N, K, M);
    int guard = run_matmul_fwd(t->be, out, inp, w, N, K, M);
    if (!t->is_cpu) run_matmul_fwd(t->cpu, cpu, inp, w, N, K, M);
    line_cmp(L, "out", out, NULL, want, cpu, NULL, no, L->tol);
    line_exact(L, "guard", guard);
    free(inp), free(w), free(out), free(cpu), free(di), free(dw), free(want);
}

// dinp overwritten (NaN before), dw += (prefilled dw0); then again with dinp NULL into dw2
static int run_matmul_bwd(Backend *be, float *dinp, float *dw, float *dw2, const float *dout, const float *inp,
                          const float *w, const float *dw0, int N, int K, int M) {
    size_t ni = (size_t)N * K, nw = (size_t)M * K, no = (size_t)N * M;
    cval *ddo = put_c(be, dout, no), *di = put_c(be, inp, ni), *dwc = put_c(be, w, nw), *dd = put_c(be, NULL, ni);
    float *g = put_f(be, dw0, nw), *g2 = put_f(be, dw0, nw);
    be->ops->matmul_bwd(be, dd, g, ddo, di, dwc, N, K, M);
    be->ops->matmul_bwd(be, NULL, g2, ddo, di, dwc, N, K, M);
    int guard = get_c(be, dinp, dd, ni) + get_f(be, dw, g, nw) + get_f(be, dw2, g2, nw);
    PERF(be, be->ops->matmul_bwd(be, dd, g, ddo, di, dwc, N, K, M));
    dfree(be, ddo), dfree(be, di), dfree(be, dwc), dfree(be, dd), dfree(be, g), dfree(be, g2);
    return guard;
}

// d = N, K, M: dinp (N, K) = dout @ w, dw (M, K) += dout^T @ inp (and with dinp NULL)
static void case_matmul_bwd(const Target *t, const OpCase *c, Line *L) {
    int N = c->d[0], K = c->d[1], M = c->d[2];
    size_t ni = (size_t)N * K, nw = (size_t)M * K, no = (size_t)N * M;
    Rng r;
    rng_seed(&r, c->seed);
    DType dt = t->be->compute;
    float *inp = randn(&r, ni, 1, dt), *w = randn(&r, nw, 1, dt), *dout = randn(&r, no, 1, dt);
    float *dw0 = randn(&r, nw, 1, DTYPE_F32);
    float *dinp = fnew(ni), *dw = fnew(nw), *dw2 = fnew(nw), *c_dinp = fnew(ni), *c_dw = fnew(nw), *c_dw2 = fnew(nw);
    double *d_inp = refop_widen(inp, ni), *d_w = refop_widen(w, nw), *d_out = refop_widen(dout, no);
    double *w_dinp = refop_zeros(ni), *w_dw = refop_zeros(nw);
    refop_matmul_bwd(w_dinp, w_dw, d_out, d_inp, d_w, N, K, M);
    int guard = run_matmul_bwd(t->be, dinp, dw, dw2, dout, inp, w, dw0, N, K, M);
    if (!t->is_cpu) run_matmul_bwd(t->cpu, c_dinp, c_dw, c_dw2, dout, inp, w, dw0, N, K, M);
    int cp = !t->is_cpu;
    line_cmp(L, "dinp", dinp, NULL, w_dinp, cp ? c_dinp : NULL, NULL, ni, L->tol);
    line_cmp(L, "dw+=", dw, dw0, w_dw, cp ? c_dw : NULL, dw0, nw, L->tol);
    line_cmp(L, "dw+=(dinp NULL)", dw2, dw0, w_dw, cp ? c_dw2 : NULL, dw0, nw, L->tol);
    line_exact(L, "guard", guard);
    free(inp), free(w), free(dout), free(dw0), free(dinp), free(dw), free(dw2), free(c_dinp), free(c_dw);
    free(c_dw2), free(d_inp), free(d_w), free(d_out), free(w_dinp), free(w_dw);
}

// ---- residual add + rmsnorm ---------------------------------------------------------------------
static int run_rmsnorm_fwd(Backend *be, float *res_out, float *out, float *rstd, const float *in, const float *br,
                           const float *w, int N, int C) {
    size_t n = (size_t)N * C;
    cval *din = put_c(be, in, n), *dbr = br ? put_c(be, br, n) : NULL, *dw = put_c(be, w, (size_t)C);
    cval *dres = br ? put_c(be, NULL, n) : NULL, *dout = put_c(be, NULL, n);
    float *dr = put_f(be, NULL, (size_t)N);
    be->ops->residual_rmsnorm_fwd(be, dres, dout, dr, din, dbr, dw, N, C);
    int guard = get_c(be, out, dout, n) + get_f(be, rstd, dr, (size_t)N) + (br ? get_c(be, res_out, dres, n) : 0);
    PERF(be, be->ops->residual_rmsnorm_fwd(be, dres, dout, dr, din, dbr, dw, N, C));
    dfree(be, din), dfree(be, dbr), dfree(be, dw), dfree(be, dres), dfree(be, dout), dfree(be, dr);
    return guard;
}

// the norm's weight: 1 + N(0, 0.3^2), rounded to dt
static float *norm_weight(Rng *r, int C, DType dt) {
    float *w = randn(r, (size_t)C, 0.3, DTYPE_F32);
    for (int c = 0; c < C; c++) w[c] += 1.0f;
    quantize(dt, w, (size_t)C);
    return w;
}

// d = N, C, fused: out (N, C) = rmsnorm(res_in (+ branch when fused)) * w, rstd (N), res_out (fused)
static void case_rmsnorm_fwd(const Target *t, const OpCase *c, Line *L) {
    int N = c->d[0], C = c->d[1], fused = c->d[2];
    size_t n = (size_t)N * C;
    Rng r;
    rng_seed(&r, c->seed);
    DType dt = t->be->compute;
    float *in = randn(&r, n, 1, dt), *br = fused ? randn(&r, n, 0.7, dt) : NULL, *w = norm_weight(&r, C, dt);
    float *res = fnew(n), *out = fnew(n), *rstd = fnew((size_t)N);
    float *c_res = fnew(n), *c_out = fnew(n), *c_rstd = fnew((size_t)N);
    double *d_in = refop_widen(in, n), *d_br = fused ? refop_widen(br, n) : NULL, *d_w = refop_widen(w, (size_t)C);
    double *w_out = refop_zeros(n), *w_rstd = refop_zeros((size_t)N), *w_res = refop_zeros(n);
    refop_rmsnorm_fwd(w_out, w_rstd, w_res, d_in, d_br, d_w, N, C);
    int guard = run_rmsnorm_fwd(t->be, res, out, rstd, in, br, w, N, C);
    if (!t->is_cpu) run_rmsnorm_fwd(t->cpu, c_res, c_out, c_rstd, in, br, w, N, C);
    int cp = !t->is_cpu;
    line_cmp(L, "out", out, NULL, w_out, cp ? c_out : NULL, NULL, n, L->tol);
    line_cmp(L, "rstd", rstd, NULL, w_rstd, cp ? c_rstd : NULL, NULL, (size_t)N, L->tol);
    if (fused) {
        line_cmp(L, "res_out", res, NULL, w_res, cp ? c_res : NULL, NULL, n, L->tol);
        if (dt == DTYPE_F32) {  // the float32 sum, bit for bit
            int bad = 0;
            for (size_t i = 0; i < n; i++) bad += res[i] != in[i] + br[i];
            line_exact(L, "res_out == res_in + branch", bad);
        }
    }
    line_exact(L, "guard", guard);
    free(in), free(br), free(w), free(res), free(out), free(rstd), free(c_res), free(c_out), free(c_rstd);
    free(d_in), free(d_br), free(d_w), free(w_out), free(w_rstd), free(w_res);
}

static int run_rmsnorm_bwd(Backend *be, float *dres, float *dw, const float *dres0, const float *dw0,
                           const float *dnorm, const float *res, const float *w, const float *rstd, int N, int C) {
    size_t n = (size_t)N * C;
    cval *dd = put_c(be, dres0, n), *dg = put_c(be, dnorm, n), *dx = put_c(be, res, n), *dwc = put_c(be, w, (size_t)C);
    float *ddw = put_f(be, dw0, (size_t)C), *dr = put_f(be, rstd, (size_t)N);
    be->ops->residual_rmsnorm_bwd(be, dd, ddw, dg, dx, dwc, dr, N, C);
    int guard = get_c(be, dres, dd, n) + get_f(be, dw, ddw, (size_t)C);
    PERF(be, be->ops->residual_rmsnorm_bwd(be, dd, ddw, dg, dx, dwc, dr, N, C));
    dfree(be, dd), dfree(be, dg), dfree(be, dx), dfree(be, dwc), dfree(be, ddw), dfree(be, dr);
    return guard;
}

// d = N, C: dres (N, C) += the norm's input gradient for dnorm, dw (C) += d/dw; rstd as the forward
// saves it (float32 of the double one)
static void case_rmsnorm_bwd(const Target *t, const OpCase *c, Line *L) {
    int N = c->d[0], C = c->d[1];
    size_t n = (size_t)N * C;
    Rng r;
    rng_seed(&r, c->seed);
    DType dt = t->be->compute;
    float *res = randn(&r, n, 1, dt), *dnorm = randn(&r, n, 1, dt), *dres0 = randn(&r, n, 1, dt);
    float *w = norm_weight(&r, C, dt), *dw0 = randn(&r, (size_t)C, 1, DTYPE_F32);
    double *d_res = refop_widen(res, n), *d_g = refop_widen(dnorm, n), *d_w = refop_widen(w, (size_t)C);
    double *tmp = refop_zeros(n), *d_rstd = refop_zeros((size_t)N), *w_dres = refop_zeros(n), *w_dw = refop_zeros(C);
    refop_rmsnorm_fwd(tmp, d_rstd, NULL, d_res, NULL, d_w, N, C);
    refop_rmsnorm_bwd(w_dres, w_dw, d_g, d_res, d_w, N, C);
    float *rstd = fnew((size_t)N);
    for (int i = 0; i < N; i++) rstd[i] = (float)d_rstd[i];
    float *dres = fnew(n), *dw = fnew((size_t)C), *c_dres = fnew(n), *c_dw = fnew((size_t)C);
    int guard = run_rmsnorm_bwd(t->be, dres, dw, dres0, dw0, dnorm, res, w, rstd, N, C);
    if (!t->is_cpu) run_rmsnorm_bwd(t->cpu, c_dres, c_dw, dres0, dw0, dnorm, res, w, rstd, N, C);
    int cp = !t->is_cpu;
    line_cmp(L, "dres+=", dres, dres0, w_dres, cp ? c_dres : NULL, dres0, n, L->tol);
    line_cmp(L, "dw+=", dw, dw0, w_dw, cp ? c_dw : NULL, dw0, (size_t)C, L->tol);
    line_exact(L, "guard", guard);
    free(res), free(dnorm), free(dres0), free(w), free(dw0), free(rstd), free(dres), free(dw), free(c_dres);
    free(c_dw), free(d_res), free(d_g), free(d_w), free(tmp), free(d_rstd), free(w_dres), free(w_dw);
}

// ---- attention (RoPE inside) --------------------------------------------------------------------
// d = the fields of RefOpAttCase: B, H, hd, Tq, pos0, n_rot, and the layout (refop_att_layout: shared
// = q, k, v the thirds of one (B, Tk, 3C) buffer, the model's; otherwise three padded buffers).
// Padding is NaN.
#define ATT_MAX_T 320  // rope table rows

static RefOpAttCase att_case(const OpCase *c) {
    const int *d = c->d;
    return (RefOpAttCase){d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11]};
}

static void att_describe(const OpCase *c, char *buf, size_t n) {
    RefOpAttCase ac = att_case(c);
    RefOpAttLayout L = refop_att_layout(&ac);
    const AttnShape *s = &L.s;
    char layout[40];
    if (ac.shared)
        snprintf(layout, sizeof layout, "qkv");
    else
        snprintf(layout, sizeof layout, "q%zu/%zu kv%zu/%zu", s->q_row, s->q_batch, s->kv_row, s->kv_batch);
    if (s->pos0)
        snprintf(buf, n, "B=%d Tq=%d pos0=%d H=%d hd=%d rot=%d %s", s->B, s->Tq, s->pos0, s->H, s->hd, s->n_rot,
                 layout);
    else
        snprintf(buf, n, "B=%d T=%d H=%d hd=%d rot=%d %s", s->B, s->Tq, s->H, s->hd, s->n_rot, layout);
}

// Host images of the q (or qkv), k and v buffers.
typedef struct {
    float *buf[3];  // q (qkv when shared), k, v (NULL when shared)
    size_t n[3];
    int nbuf;
} AttHost;

static AttHost att_host(const RefOpAttLayout *L) {
    AttHost h = {.nbuf = L->nkv ? 3 : 1};
    for (int i = 0; i < h.nbuf; i++) {
        h.n[i] = i == 0 ? L->nq : L->nkv;
        h.buf[i] = fnew(h.n[i]);
        for (size_t j = 0; j < h.n[i]; j++) h.buf[i][j] = NAN;
    }
    return h;
}
static void att_host_free(AttHost *h) {
    for (int i = 0; i < h->nbuf; i++) free(h->buf[i]);
}
// element (b, t, j) of view which (0 q, 1 k, 2 v)
static float *att_at(const RefOpAttLayout *L, const AttHost *h, int which, int b, int t, int j) {
    if (which == 0) return h->buf[0] + L->qoff + refop_vix(L->s.q_row, L->s.q_batch, b, t, j);
    size_t off = h->nbuf == 1 ? (which == 1 ? L->koff : L->voff) : 0;
    return h->buf[h->nbuf == 1 ? 0 : which] + off + refop_vix(L->s.kv_row, L->s.kv_batch, b, t, j);
}

// Fills the views of h (and the dense copies q, k, v) with random values rounded to dt; the keys
// before pos0 are rotated in double at their positions first (a KV cache), then rounded.
static void att_fill(const RefOpAttLayout *L, AttHost *h, double *q, double *k, double *v, const float *cs,
                     const float *sn, Rng *r, DType dt) {
    const AttnShape *s = &L->s;
    int C = s->H * s->hd, n = s->n_rot;
    double *x = refop_zeros((size_t)C), *y = refop_zeros((size_t)C);
    for (int b = 0; b < s->B; b++) {
        for (int t = 0; t < s->Tq; t++)
            for (int j = 0; j < C; j++) {
                float f = (float)rng_normal(r);
                quantize(dt, &f, 1);
                *att_at(L, h, 0, b, t, j) = f, q[((size_t)b * s->Tq + t) * C + j] = f;
            }
        for (int u = 0; u < s->Tk; u++) {
            for (int j = 0; j < C; j++) x[j] = rng_normal(r);
            if (u < s->pos0) refop_rope_row(y, x, s->H, s->hd, n, cs + (size_t)u * n, sn + (size_t)u * n);
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
static void att_gather(const RefOpAttLayout *L, const AttHost *h, int which, float *dense) {
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

// marks the elements of view which (0 q, 1 k, 2 v), rows [t0, t1), dims with j % hd < dims
static void att_mark(const RefOpAttLayout *L, const AttHost *h, uint8_t *mask[3], int which, int t0, int t1,
                     int dims) {
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

static void att_masks(const AttHost *h, uint8_t *mask[3]) {
    for (int i = 0; i < 3; i++) mask[i] = i < h->nbuf ? xcalloc(h->n[i], 1) : NULL;
}
static void att_masks_free(uint8_t *mask[3]) {
    for (int i = 0; i < 3; i++) free(mask[i]);
}

// Device copies of the buffers of h; q, k, v the views.
typedef struct {
    void *buf[3];
    cval *q, *k, *v;
} AttDev;

static AttDev att_put(Backend *be, const RefOpAttLayout *L, const AttHost *h) {
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

// The backward on be, after the forward left the rotated q, k in d and its output in o: dq, dk, dv
// into grads (NaN before). Returns the changed guard elements.
static int run_attention_bwd(Backend *be, const RefOpAttLayout *L, const AttDev *d, const cval *o, const void *saved,
                             const float *dcs, const float *dsn, const float *dout, AttHost *grads) {
    const AttnShape *s = &L->s;
    size_t no = (size_t)s->B * s->Tq * s->H * s->hd;
    AttDev g = att_put(be, L, grads);  // NaN everywhere, the guard after each buffer
    cval *dy = put_c(be, dout, no);
    void *scratch = dalloc(be, be->ops->attention_scratch_bytes(be, s));
    be->ops->attention_bwd(be, g.q, g.k, g.v, scratch, dy, o, d->q, d->k, d->v, saved, dcs, dsn, s);
    int guard = att_get(be, grads, &g);
    PERF(be, be->ops->attention_bwd(be, g.q, g.k, g.v, scratch, dy, o, d->q, d->k, d->v, saved, dcs, dsn, s));
    att_dfree(be, &g);
    dfree(be, dy), dfree(be, scratch);
    return guard;
}

// The forward (and with dout the backward) of one case on backend be. after: the q, k, v buffers
// after the forward; grads: the dq, dk, dv buffers (NaN before) after the backward.
static int run_attention(Backend *be, const RefOpAttLayout *L, const AttHost *in, const float *cs, const float *sn,
                         float *out, AttHost *after, const float *dout, AttHost *grads) {
    const AttnShape *s = &L->s;
    size_t no = (size_t)s->B * s->Tq * s->H * s->hd, nt = (size_t)ATT_MAX_T * (s->n_rot ? s->n_rot : 1);
    AttDev d = att_put(be, L, in);
    float *dcs = put_f(be, cs, nt), *dsn = put_f(be, sn, nt);
    cval *o = put_c(be, NULL, no);
    void *saved = dalloc(be, be->ops->attention_saved_bytes(be, s));
    be->ops->attention_fwd(be, o, saved, d.q, d.k, d.v, dcs, dsn, s);
    int guard = get_c(be, out, o, no) + att_get(be, after, &d);
    if (dout)
        guard += run_attention_bwd(be, L, &d, o, saved, dcs, dsn, dout, grads);
    else
        PERF(be, be->ops->attention_fwd(be, o, saved, d.q, d.k, d.v, dcs, dsn, s));
    att_dfree(be, &d);
    dfree(be, dcs), dfree(be, dsn), dfree(be, o), dfree(be, saved);
    return guard;
}

// A case's data: its layout, the rope tables, the inputs, the reference, and the results on the
// backend under test and on the CPU backend.
typedef struct {
    RefOpAttLayout L;
    float *cs, *sn, *dout, *out, *c_out;
    double *q, *k, *v, *qr, *kr, *ref_out, *ddout, *dq, *dk, *dv;
    AttHost in, after, grads, c_after, c_grads;
} AttRun;

static void att_run(AttRun *a, const Target *t, const OpCase *c, int backward) {
    RefOpAttCase ac = att_case(c);
    a->L = refop_att_layout(&ac);
    const AttnShape *s = &a->L.s;
    int n = s->n_rot, C = s->H * s->hd;
    size_t nq = (size_t)s->B * s->Tq * C, nk = (size_t)s->B * s->Tk * C, nt = (size_t)ATT_MAX_T * (n ? n : 1);
    Rng r;
    rng_seed(&r, c->seed);
    a->cs = xcalloc(nt, 4), a->sn = xcalloc(nt, 4);
    refop_rope_tables(a->cs, a->sn, ATT_MAX_T, n, 1000.0, 2.0);  // GIVT.md's cache: angle (t / 2) 1000^(-2i/n)
    a->in = att_host(&a->L);
    a->q = refop_zeros(nq), a->k = refop_zeros(nk), a->v = refop_zeros(nk);
    att_fill(&a->L, &a->in, a->q, a->k, a->v, a->cs, a->sn, &r, t->be->compute);
    a->dout = backward ? randn(&r, nq, 1, t->be->compute) : NULL;
    a->ddout = backward ? refop_widen(a->dout, nq) : NULL;
    a->qr = refop_zeros(nq), a->kr = refop_zeros(nk), a->ref_out = refop_zeros(nq);
    a->dq = refop_zeros(nq), a->dk = refop_zeros(nk), a->dv = refop_zeros(nk);
    RefOpAttn ref = {.s = s, .cos = a->cs, .sin = a->sn, .q = a->q, .k = a->k, .v = a->v, .qr = a->qr, .kr = a->kr,
                     .out = a->ref_out, .dout = a->ddout, .dq = a->dq, .dk = a->dk, .dv = a->dv};
    refop_attention(&ref);
    a->after = att_host(&a->L), a->grads = att_host(&a->L), a->c_after = att_host(&a->L);
    a->c_grads = att_host(&a->L);
    a->out = fnew(nq), a->c_out = fnew(nq);
}

static void att_run_free(AttRun *a) {
    free(a->cs), free(a->sn), free(a->dout), free(a->out), free(a->c_out);
    free(a->q), free(a->k), free(a->v), free(a->qr), free(a->kr), free(a->ref_out), free(a->ddout);
    free(a->dq), free(a->dk), free(a->dv);
    att_host_free(&a->in), att_host_free(&a->after), att_host_free(&a->grads), att_host_free(&a->c_after);
    att_host_free(&a->c_grads);
}

// The forward's checks: out, the rotation left in q and k, and nothing else changed (v, the padding,
// dims >= n_rot, the cached keys before pos0).
static void att_check_fwd(const Target *t, const AttRun *a, Line *L) {
    const AttnShape *s = &a->L.s;
    size_t nq = (size_t)s->B * s->Tq * s->H * s->hd, nk = (size_t)s->B * s->Tk * s->H * s->hd;
    int cp = !t->is_cpu;
    float *g = fnew(nk), *c = fnew(nk);
    line_cmp(L, "out", a->out, NULL, a->ref_out, cp ? a->c_out : NULL, NULL, nq, L->tol);
    att_gather(&a->L, &a->after, 0, g);
    if (cp) att_gather(&a->L, &a->c_after, 0, c);
    line_cmp(L, "q", g, NULL, a->qr, cp ? c : NULL, NULL, nq, L->tol);
    att_gather(&a->L, &a->after, 1, g);
    if (cp) att_gather(&a->L, &a->c_after, 1, c);
    line_cmp(L, "k", g, NULL, a->kr, cp ? c : NULL, NULL, nk, L->tol);
    uint8_t *mask[3];
    att_masks(&a->in, mask);
    att_mark(&a->L, &a->in, mask, 0, 0, s->Tq, s->n_rot);
    att_mark(&a->L, &a->in, mask, 1, s->pos0, s->Tk, s->n_rot);
    line_exact(L, "untouched", att_changed(&a->in, &a->after, mask));
    att_masks_free(mask);
    free(g), free(c);
}

// The backward's checks: dq, dk, dv, and the padding of their buffers (NaN) written by nobody.
static void att_check_bwd(const Target *t, const AttRun *a, Line *L) {
    const AttnShape *s = &a->L.s;
    size_t nq = (size_t)s->B * s->Tq * s->H * s->hd, nk = (size_t)s->B * s->Tk * s->H * s->hd;
    int cp = !t->is_cpu;
    float *g = fnew(nk), *c = fnew(nk);
    const char *names[3] = {"dq", "dk", "dv"};
    const double *want[3] = {a->dq, a->dk, a->dv};
    for (int w = 0; w < 3; w++) {
        att_gather(&a->L, &a->grads, w, g);
        if (cp) att_gather(&a->L, &a->c_grads, w, c);
        line_cmp(L, names[w], g, NULL, want[w], cp ? c : NULL, NULL, w ? nk : nq, L->tol);
    }
    AttHost nan = att_host(&a->L);
    uint8_t *mask[3];
    att_masks(&a->in, mask);
    for (int w = 0; w < 3; w++) att_mark(&a->L, &a->in, mask, w, 0, w ? s->Tk : s->Tq, s->hd);
    line_exact(L, "padding", att_changed(&nan, &a->grads, mask));
    att_masks_free(mask);
    att_host_free(&nan);
    free(g), free(c);
}

static void attention(const Target *t, const OpCase *c, Line *L, int backward) {
    AttRun a;
    att_run(&a, t, c, backward);
    AttHost *grads = backward ? &a.grads : NULL, *c_grads = backward ? &a.c_grads : NULL;
    int guard = run_attention(t->be, &a.L, &a.in, a.cs, a.sn, a.out, &a.after, a.dout, grads);
    if (!t->is_cpu) run_attention(t->cpu, &a.L, &a.in, a.cs, a.sn, a.c_out, &a.c_after, a.dout, c_grads);
    if (backward)
        att_check_bwd(t, &a, L);
    else
        att_check_fwd(t, &a, L);
    line_exact(L, "guard", guard);
    att_run_free(&a);
}
static void case_attention_fwd(const Target *t, const OpCase *c, Line *L) { attention(t, c, L, 0); }
// training shapes only (ops.h)
static void case_attention_bwd(const Target *t, const OpCase *c, Line *L) { attention(t, c, L, 1); }

// ---- swiglu --------------------------------------------------------------------------------------
static int run_swiglu(Backend *be, float *out, float *dh, const float *h, const float *dout, int N, int F) {
    size_t nh = (size_t)N * 2 * F, no = (size_t)N * F;
    cval *dhh = put_c(be, h, nh), *o = NULL, *g = NULL, *dd = NULL;
    int guard = 0;
    if (!dout) {
        o = put_c(be, NULL, no);
        be->ops->swiglu_fwd(be, o, dhh, N, F);
        guard = get_c(be, out, o, no);
        PERF(be, be->ops->swiglu_fwd(be, o, dhh, N, F));
    } else {
        g = put_c(be, dout, no), dd = put_c(be, NULL, nh);
        be->ops->swiglu_bwd(be, dd, g, dhh, N, F);
        guard = get_c(be, dh, dd, nh);
        PERF(be, be->ops->swiglu_bwd(be, dd, g, dhh, N, F));
    }
    dfree(be, dhh), dfree(be, o), dfree(be, g), dfree(be, dd);
    return guard;
}

// d = N, F: out (N, F) = silu(a) * b of h (N, 2F) = [a | b]; backward dh (N, 2F). h has both tails.
static void swiglu(const Target *t, const OpCase *c, Line *L, int backward) {
    int N = c->d[0], F = c->d[1];
    size_t nh = (size_t)N * 2 * F, no = (size_t)N * F, nr = backward ? nh : no;
    Rng r;
    rng_seed(&r, c->seed);
    float *h = randn(&r, nh, 3.0, t->be->compute), *dout = randn(&r, no, 1, t->be->compute);
    double *d_h = refop_widen(h, nh), *d_out = refop_widen(dout, no), *want = refop_zeros(nr);
    if (backward)
        refop_swiglu_bwd(want, d_out, d_h, N, F);
    else
        refop_swiglu_fwd(want, d_h, N, F);
    float *got = fnew(nr), *cpu = fnew(nr);
    int guard = run_swiglu(t->be, got, got, h, backward ? dout : NULL, N, F);
    if (!t->is_cpu) run_swiglu(t->cpu, cpu, cpu, h, backward ? dout : NULL, N, F);
    line_cmp(L, backward ? "dh" : "out", got, NULL, want, t->is_cpu ? NULL : cpu, NULL, nr, L->tol);
    line_exact(L, "guard", guard);
    free(h), free(dout), free(d_h), free(d_out), free(want), free(got), free(cpu);
}
static void case_swiglu_fwd(const Target *t, const OpCase *c, Line *L) { swiglu(t, c, L, 0); }
static void case_swiglu_bwd(const Target *t, const OpCase *c, Line *L) { swiglu(t, c, L, 1); }

// ---- shift_bos ------------------------------------------------------------------------------------
static int run_shift(Backend *be, float *in, float *dbos, const float *x, const float *bos, const float *din,
                     const float *dbos0, int B, int T, int D) {
    size_t n = (size_t)B * T * D;
    int guard;
    if (!din) {
        float *dx = put_f(be, x, n);
        cval *db = put_c(be, bos, (size_t)D), *di = put_c(be, NULL, n);
        be->ops->shift_bos(be, di, dx, db, B, T, D);
        guard = get_c(be, in, di, n);
        PERF(be, be->ops->shift_bos(be, di, dx, db, B, T, D));
        dfree(be, dx), dfree(be, db), dfree(be, di);
    } else {
        cval *di = put_c(be, din, n);
        float *db = put_f(be, dbos0, (size_t)D);
        be->ops->shift_bos_bwd(be, db, di, B, T, D);
        guard = get_f(be, dbos, db, (size_t)D);
        PERF(be, be->ops->shift_bos_bwd(be, db, di, B, T, D));
        dfree(be, di), dfree(be, db);
    }
    return guard;
}

// d = B, T, D: in (B, T, D) = [bos, x_0 .. x_{T-2}] (float32 compute: a copy, exact); backward
// dbos (D) += the t = 0 rows of din
static void shift(const Target *t, const OpCase *c, Line *L, int backward) {
    int B = c->d[0], T = c->d[1], D = c->d[2];
    size_t n = (size_t)B * T * D, nr = backward ? (size_t)D : n;
    Rng r;
    rng_seed(&r, c->seed);
    DType dt = t->be->compute;
    float *x = randn(&r, n, 1, DTYPE_F32), *bos = randn(&r, (size_t)D, 1, dt), *din = randn(&r, n, 1, dt);
    float *dbos0 = randn(&r, (size_t)D, 1, DTYPE_F32);
    double *d_x = refop_widen(x, n), *d_bos = refop_widen(bos, (size_t)D), *d_din = refop_widen(din, n);
    double *want = refop_zeros(nr);
    if (backward)
        refop_shift_bos_bwd(want, d_din, B, T, D);
    else
        refop_shift_bos(want, d_x, d_bos, B, T, D);
    float *got = fnew(nr), *cpu = fnew(nr);
    int guard = run_shift(t->be, got, got, x, bos, backward ? din : NULL, dbos0, B, T, D);
    if (!t->is_cpu) run_shift(t->cpu, cpu, cpu, x, bos, backward ? din : NULL, dbos0, B, T, D);
    if (!backward) {
        line_cmp(L, "in", got, NULL, want, t->is_cpu ? NULL : cpu, NULL, n, L->tol);
        if (dt == DTYPE_F32) {  // a copy
            int bad = 0;
            for (size_t i = 0; i < n; i++) bad += got[i] != (float)want[i];
            line_exact(L, "copy", bad);
        }
    } else {
        line_cmp(L, "dbos+=", got, dbos0, want, t->is_cpu ? NULL : cpu, dbos0, (size_t)D, L->tol);
    }
    line_exact(L, "guard", guard);
    free(x), free(bos), free(din), free(dbos0), free(d_x), free(d_bos), free(d_din), free(want), free(got), free(cpu);
}
static void case_shift_bos(const Target *t, const OpCase *c, Line *L) { shift(t, c, L, 0); }
static void case_shift_bos_bwd(const Target *t, const OpCase *c, Line *L) { shift(t, c, L, 1); }

// ---- gaussian nll ----------------------------------------------------------------------------------
// d = N, D, x = eps: y (N, 2D) = [mu | pre], x (N, D); the loss (a backend scalar, prefilled: the
// increment is compared) and with dy, dy = scale * dl/dy. Some pre are above 20, and with eps 1e-2
// some are clamped.
#define NLL_SCALE 0.37f

static int run_nll(Backend *be, float *dy, double *loss, const float *y, const float *x, int N, int D, double eps,
                   float scale, int with_dy) {
    size_t ny = (size_t)N * 2 * D, nx = (size_t)N * D;
    cval *dyy = put_c(be, y, ny), *ddy = with_dy ? put_c(be, NULL, ny) : NULL;
    float *dx = put_f(be, x, nx);
    double *acc = put_scalar(be, 1.5);  // accumulates
    be->ops->gaussian_nll(be, ddy, acc, dyy, dx, N, D, eps, scale);
    *loss = get_scalar(be, acc) - 1.5;
    int guard = with_dy ? get_c(be, dy, ddy, ny) : 0;
    PERF(be, be->ops->gaussian_nll(be, ddy, acc, dyy, dx, N, D, eps, scale));
    dfree(be, dyy), dfree(be, ddy), dfree(be, dx), dfree(be, acc);
    return guard;
}

static void nll(const Target *t, const OpCase *c, Line *L, int with_dy) {
    int N = c->d[0], D = c->d[1];
    double eps = c->x;
    size_t ny = (size_t)N * 2 * D, nx = (size_t)N * D;
    Rng r;
    rng_seed(&r, c->seed);
    float *y = randn(&r, ny, 1, DTYPE_F32), *x = randn(&r, nx, 1, DTYPE_F32);
    const float special[] = {20.5f, -4.0f, 27.0f, -6.0f, 60.0f, -3.5f};  // above 20; clamped when eps 1e-2
    for (size_t i = 0; i < nx; i += 3) y[(i / D) * 2 * D + D + i % D] = special[(i / 3) % 6];
    quantize(t->be->compute, y, ny);
    double *d_y = refop_widen(y, ny), *d_x = refop_widen(x, nx), *wdy = refop_zeros(ny);
    double want = refop_gaussian_nll(wdy, d_y, d_x, N, D, eps, NLL_SCALE);
    float *dy = fnew(ny), *c_dy = fnew(ny);
    double loss = 0, c_loss = 0;
    int guard = run_nll(t->be, dy, &loss, y, x, N, D, eps, NLL_SCALE, with_dy);
    if (!t->is_cpu) run_nll(t->cpu, c_dy, &c_loss, y, x, N, D, eps, NLL_SCALE, with_dy);
    line_cmp_scalar(L, "loss+=", loss, want, c_loss, L->tol);
    if (with_dy) line_cmp(L, "dy", dy, NULL, wdy, t->is_cpu ? NULL : c_dy, NULL, ny, L->tol);
    line_exact(L, "guard", guard);
    free(y), free(x), free(d_y), free(d_x), free(wdy), free(dy), free(c_dy);
}
static void case_nll(const Target *t, const OpCase *c, Line *L) { nll(t, c, L, 0); }
static void case_nll_dy(const Target *t, const OpCase *c, Line *L) { nll(t, c, L, 1); }

// ---- mixture nll ------------------------------------------------------------------------------------
// d = N, D, K, x = eps: y (N, W) = [logits (K) | mu (K, D) | pre (K, D)] (K = 1: [mu | pre]), x (N, D);
// the loss and with dy, dy = scale * dl/dy. Rows 0..2 of each case are hard for the log-sum-exp
// (mix_hard_rows).
static int run_mix(Backend *be, float *dy, double *loss, const float *y, const float *x, int N, int D, int K,
                   double eps, float scale, int with_dy) {
    size_t ny = (size_t)N * refop_mixture_width(D, K), nx = (size_t)N * D;
    cval *dyy = put_c(be, y, ny), *ddy = with_dy ? put_c(be, NULL, ny) : NULL;
    float *dx = put_f(be, x, nx);
    double *acc = put_scalar(be, 1.5);  // accumulates
    be->ops->mixture_nll(be, ddy, acc, dyy, dx, N, D, K, eps, scale);
    *loss = get_scalar(be, acc) - 1.5;
    int guard = with_dy ? get_c(be, dy, ddy, ny) : 0;
    PERF(be, be->ops->mixture_nll(be, ddy, acc, dyy, dx, N, D, K, eps, scale));
    dfree(be, dyy), dfree(be, ddy), dfree(be, dx), dfree(be, acc);
    return guard;
}

// Rows 0..2 made hard, on rows that exist: components 1000 apart (every lp but one near -5e5: exp
// underflows without the shift), one component dominating by its logit (+-40), and pre above 20.
static void mix_hard_rows(float *y, float *x, int N, int D, int K) {
    size_t W = refop_mixture_width(D, K);
    float *mu0 = y + (K > 1 ? K : 0);
    for (int k = 0; k < K; k++)  // row 0: component k centred 1000 k away from x (k = 0 at x + 0.3)
        for (int d = 0; d < D; d++) mu0[k * D + d] = x[d] + 0.3f + 1000.0f * (float)k;
    if (N > 1 && K > 1)  // row 1: logit 0 is +40, the others -40
        for (int k = 0; k < K; k++) y[W + k] = k == 0 ? 40.0f : -40.0f;
    if (N > 2)  // row 2: pre above 20 (std = pre)
        for (int k = 0; k < K; k++) y[2 * W + (K > 1 ? K : 0) + (size_t)K * D + (size_t)k * D] = 21.5f;
}

static void mix(const Target *t, const OpCase *c, Line *L, int with_dy) {
    int N = c->d[0], D = c->d[1], K = c->d[2];
    double eps = c->x;
    size_t ny = (size_t)N * refop_mixture_width(D, K), nx = (size_t)N * D;
    Rng r;
    rng_seed(&r, c->seed);
    float *y = randn(&r, ny, 1, DTYPE_F32), *x = randn(&r, nx, 1, DTYPE_F32);
    for (size_t i = 0; i < ny; i++) y[i] *= 1.5f;
    mix_hard_rows(y, x, N, D, K);
    quantize(t->be->compute, y, ny);
    double *d_y = refop_widen(y, ny), *d_x = refop_widen(x, nx), *wdy = refop_zeros(ny);
    double want = refop_mixture_nll(wdy, d_y, d_x, N, D, K, eps, NLL_SCALE);
    float *dy = fnew(ny), *c_dy = fnew(ny);
    double loss = 0, c_loss = 0;
    int guard = run_mix(t->be, dy, &loss, y, x, N, D, K, eps, NLL_SCALE, with_dy);
    if (!t->is_cpu) run_mix(t->cpu, c_dy, &c_loss, y, x, N, D, K, eps, NLL_SCALE, with_dy);
    line_cmp_scalar(L, "loss+=", loss, want, c_loss, L->tol);
    if (with_dy) line_cmp(L, "dy", dy, NULL, wdy, t->is_cpu ? NULL : c_dy, NULL, ny, L->tol);
    line_exact(L, "guard", guard);
    free(y), free(x), free(d_y), free(d_x), free(wdy), free(dy), free(c_dy);
}
static void case_mix(const Target *t, const OpCase *c, Line *L) { mix(t, c, L, 0); }
static void case_mix_dy(const Target *t, const OpCase *c, Line *L) { mix(t, c, L, 1); }

// d = N, D, x = eps: with K = 1 the mixture op is gaussian_nll summed by rows: on the same backend the
// same loss (c->tol.data: double sums of the same terms) and the same dy (L->tol elementwise relative:
// bit for bit in float32, the same formula with r = 1).
static void case_mix_k1(const Target *t, const OpCase *c, Line *L) {
    int N = c->d[0], D = c->d[1];
    size_t ny = (size_t)N * 2 * D;
    Rng r;
    rng_seed(&r, c->seed);
    float *y = randn(&r, ny, 1, t->be->compute), *x = randn(&r, (size_t)N * D, 1, DTYPE_F32);
    float *a = fnew(ny), *b = fnew(ny);
    double la = 0, lb = 0;
    run_mix(t->be, a, &la, y, x, N, D, 1, c->x, 0.5f, 1);
    run_nll(t->be, b, &lb, y, x, N, D, c->x, 0.5f, 1);
    double e = fabs(la - lb) / fabs(lb);
    CHECK(e <= c->tol.data, "%s: mixture_nll K=1 loss %.17g, gaussian_nll %.17g (tol %g)", t->label, la, lb,
          c->tol.data);
    line_append(L, " loss %.17g vs %.17g: err %.1e [tol %.0e]", la, lb, e, c->tol.data);
    int diff = 0;
    for (size_t i = 0; i < ny; i++) diff += !(fabsf(a[i] - b[i]) <= (float)L->tol * fabsf(b[i]));  // NaN: differs
    line_exact(L, "dy differs from gaussian_nll's", diff);
    free(y), free(x), free(a), free(b);
}

// ---- class embedding --------------------------------------------------------------------------------
// d = B, T, C, rows, i (the labels' pattern: labels[b] = ((7 b + i) % rows) / (b odd ? 1 : 2), so
// that they repeat). Forward: res[b, 0, :] = table[labels[b], :], the other rows untouched (a copy:
// exact). Backward: dtable[labels[b]] += dres[b, 0, :] (repeated labels add up), then dres[b, 0, :] = 0
// and the other rows untouched (exact).
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
    cval *dr = put_c(be, res, n);
    if (!backward) {
        cval *dtab = put_c(be, table, nt);
        be->ops->class_embed_fwd(be, dr, dtab, dl, B, T, C);
        guard = get_c(be, out, dr, n);
        PERF(be, be->ops->class_embed_fwd(be, dr, dtab, dl, B, T, C));
        dfree(be, dtab);
    } else {
        float *dtab = put_f(be, dt0, nt);
        be->ops->class_embed_bwd(be, dtab, dr, dl, B, T, C);
        guard = get_f(be, out, dtab, nt) + get_c(be, dres_out, dr, n);
        PERF(be, be->ops->class_embed_bwd(be, dtab, dr, dl, B, T, C));
        dfree(be, dtab);
    }
    dfree(be, dr), dfree(be, dl);
    return guard;
}

static void class_embed(const Target *t, const OpCase *c, Line *L, int backward) {
    int B = c->d[0], T = c->d[1], C = c->d[2], rows = c->d[3], si = c->d[4];
    size_t n = (size_t)B * T * C, nt = (size_t)rows * C, nr = backward ? nt : n;
    Rng r;
    rng_seed(&r, c->seed);
    DType dt = t->be->compute;
    float *res = randn(&r, n, 1, dt), *table = randn(&r, nt, 1, dt), *dt0 = randn(&r, nt, 1, DTYPE_F32);
    int32_t labels[16];
    if (B > 16) givt_die("class_embed case: B %d > 16", B);
    for (int b = 0; b < B; b++) labels[b] = (int32_t)((b * 7 + si) % rows) / (b % 2 ? 1 : 2);
    double *want_res = refop_widen(res, n), *d_table = refop_widen(table, nt), *wtab = refop_zeros(nt);
    if (backward)
        refop_class_embed_bwd(wtab, want_res, labels, B, T, C, rows);
    else
        refop_class_embed_fwd(want_res, d_table, labels, B, T, C);
    float *got = fnew(nr), *cpu = fnew(nr), *gres = fnew(n), *cres = fnew(n);
    int guard = run_ce(t->be, got, gres, res, table, dt0, labels, B, T, C, rows, backward);
    if (!t->is_cpu) run_ce(t->cpu, cpu, cres, res, table, dt0, labels, B, T, C, rows, backward);
    int bad = 0;
    const float *check = backward ? gres : got;  // a copy (forward), or rows zeroed / untouched (backward)
    for (size_t i = 0; i < n; i++) bad += check[i] != (float)want_res[i];
    if (!backward)
        line_cmp(L, "res", got, NULL, want_res, t->is_cpu ? NULL : cpu, NULL, n, L->tol);
    else
        line_cmp(L, "dtable+=", got, dt0, wtab, t->is_cpu ? NULL : cpu, dt0, nt, L->tol);
    line_exact(L, backward ? "dres" : "copy", bad);
    line_exact(L, "guard", guard);
    free(res), free(table), free(dt0), free(want_res), free(d_table), free(wtab), free(got), free(cpu), free(gres);
    free(cres);
}
static void case_ce_fwd(const Target *t, const OpCase *c, Line *L) { class_embed(t, c, L, 0); }
static void case_ce_bwd(const Target *t, const OpCase *c, Line *L) { class_embed(t, c, L, 1); }

// ---- sumsq ----------------------------------------------------------------------------------------
// d = n: acc (a backend scalar, prefilled) += the sum of squares of p (n), float32 data
static double run_sumsq(Backend *be, const float *p, size_t n) {
    float *d = put_f(be, p, n);
    double *acc = put_scalar(be, 0.5);  // accumulates
    be->ops->sumsq(be, acc, d, n);
    double got = get_scalar(be, acc) - 0.5;
    PERF(be, be->ops->sumsq(be, acc, d, n));
    dfree(be, d), dfree(be, acc);
    return got;
}

static void case_sumsq(const Target *t, const OpCase *c, Line *L) {
    size_t n = (size_t)c->d[0];
    Rng r;
    rng_seed(&r, c->seed);
    float *p = randn(&r, n, 2, DTYPE_F32);
    double *dp = refop_widen(p, n), want = refop_sumsq(dp, n);
    double got = run_sumsq(t->be, p, n), cpu = t->is_cpu ? 0 : run_sumsq(t->cpu, p, n);
    line_cmp_scalar(L, "acc+=", got, want, cpu, c->tol.data);
    free(p), free(dp);
}

// ---- step_check ------------------------------------------------------------------------------------
// d = inputs (the loss sum and squared norm: see k_cases), x = max_norm: the record must be the bits
// the host computed before the decision moved to the backend (trainer.c, optim.c's clipping): the
// loss sum / count, sqrt of the squared norm, (float)min(1, max_norm / (norm + 1e-6)) (1 for
// max_norm 0), skip when the loss or the norm is not finite; and going on from the previous record
// (step 41, t 37 here) the counts, the schedule's learning rate for step 41 (cosine, past its warmup),
// AdamW's bias corrections as adamw computes them from float arguments, the EMA's decay. Exact on
// every backend.
static StepSchedule step_check_schedule(double max_norm) {
    StepSchedule s = {.lr = 3e-4, .beta1 = 0.9f, .beta2 = 0.95f, .schedule = GIVT_LR_COSINE, .warmup_steps = 10,
                      .max_steps = 100, .min_lr_ratio = 0.1, .max_norm = max_norm, .ema_power = 2.0 / 3.0};
    return s;
}
static StepRecord step_check_host(const double *ln, double count, double max_norm) {
    StepRecord r = {.loss = ln[0] / count, .norm = sqrt(ln[1]), .grad_scale = 1.0f};
    if (max_norm > 0) {
        double coef = max_norm / (r.norm + 1e-6);
        r.grad_scale = (float)(coef < 1.0 ? coef : 1.0);
    }
    r.skip = !isfinite(r.loss) || !isfinite(r.norm);
    r.step = 42, r.t = 37 + !r.skip;
    double progress = (41.0 - 10.0) / 90.0, f = 0.1 + (1.0 - 0.1) * 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    r.lr = (float)(3e-4 * f);
    r.step_size = (float)((double)r.lr / (1.0 - pow(0.9f, (double)r.t)));
    r.bc2_sqrt = (float)sqrt(1.0 - pow(0.95f, (double)r.t));
    r.ema_decay = (float)fmin(0.9999, 1.0 - pow((double)(r.t - 1), -2.0 / 3.0));
    return r;
}

static StepRecord run_step_check(Backend *be, const double *ln, double count, double max_norm) {
    double *d = dalloc(be, 2 * sizeof(double));
    StepRecord *rec = dalloc(be, sizeof(StepRecord)), got, prev = {.step = 41, .t = 37};
    StepSchedule sched = step_check_schedule(max_norm);
    be->ops->upload(be, d, ln, 2 * sizeof(double));
    be->ops->upload(be, rec, &prev, sizeof prev);
    be->ops->step_check(be, rec, d, count, &sched);
    be->ops->download(be, &got, rec, sizeof got);
    dfree(be, d), dfree(be, rec);
    return got;
}

static int step_record_differs(const StepRecord *a, const StepRecord *b) {
    return memcmp(&a->loss, &b->loss, 8) || memcmp(&a->norm, &b->norm, 8) || memcmp(&a->grad_scale, &b->grad_scale, 4) ||
           a->skip != b->skip || a->step != b->step || a->t != b->t || memcmp(&a->lr, &b->lr, 4) ||
           memcmp(&a->step_size, &b->step_size, 4) || memcmp(&a->bc2_sqrt, &b->bc2_sqrt, 4) ||
           memcmp(&a->ema_decay, &b->ema_decay, 4);
}

static void case_step_check(const Target *t, const OpCase *c, Line *L) {
    Rng r;
    rng_seed(&r, c->seed);
    double ln[2] = {1e3 * (1 + rng_uniform(&r)), 4.0 + 40 * rng_uniform(&r)}, count = 4099.0 * (1 + rng_uniform(&r));
    if (c->d[0] == 1) ln[1] = 1e-3 * rng_uniform(&r);
    if (c->d[0] == 2) ln[0] = NAN;
    if (c->d[0] == 3) ln[1] = INFINITY;
    if (c->d[0] == 4) ln[0] = -INFINITY, ln[1] = NAN;
    StepRecord want = step_check_host(ln, count, c->x), got = run_step_check(t->be, ln, count, c->x);
    line_exact(L, "record", step_record_differs(&got, &want));
    line_append(L, " skip %d scale %.6g t %lld lr %.6g", (int)got.skip, (double)got.grad_scale, (long long)got.t,
                (double)got.lr);
}

// ---- adamw ----------------------------------------------------------------------------------------
// d = n, t, alias, ema; x = the EMA's decay (ema 1): PyTorch's AdamW (refop_adamw) in double on the
// same float32 inputs and float32 hyperparameters, and with ema 1 the EMA of the updated weights in
// the same call (refop_adamw's ema: decay ema + (1 - decay) p'). lr is large (0.05) so that the
// update, which is compared, is far above the float32 rounding of p. The compute copies: on a float32
// backend the float32 buffers themselves (alias 1) or NULL (alias 0), otherwise buffers of their own,
// compared with L->tol; p, m, v, ema are float32 data (c->tol.data). The fused EMA must be the bits
// of ema_update on the same backend applied to the updated p (what givt-train did in two passes).
static const RefOpAdamW k_adamw = {.lr = 0.05f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                                   .grad_scale = 0.7f};

// One backend's state, host copies (n floats each): in before the call, out after it. e, ec: the
// EMA and its compute copy (ema cases); sep, sepc: ema_update's on the updated p (the two-pass EMA).
// rec_bad: adamw_with_record's count (run_adamw sets it; -1: not run, on the CPU backend's reference
// run of another target); p0..e0: the inputs.
typedef struct {
    float *p, *m, *v, *pc, *e, *ec, *sep, *sepc;
    const float *p0, *m0, *v0, *e0;
    int rec_bad;
} AdamwHost;

static AdamwHost adamw_host(size_t n, const float *p0, const float *m0, const float *v0, const float *e0) {
    AdamwHost h = {fnew(n), fnew(n), fnew(n), fnew(n), fnew(n), fnew(n), fnew(n), fnew(n), p0, m0, v0, e0, 0};
    memcpy(h.p, p0, n * 4), memcpy(h.m, m0, n * 4), memcpy(h.v, v0, n * 4), memcpy(h.e, e0, n * 4);
    return h;
}

// A step record in backend memory with grad_scale scale and skip skip (ops.h: step_check's), and the
// learning rate, bias corrections of update t and EMA decay that the host's arguments of k_adamw give
static StepRecord *put_record(Backend *be, float scale, int skip, int t, float ema_decay) {
    const RefOpAdamW *k = &k_adamw;
    float lr = (float)k->lr;
    StepRecord r = {.loss = 1.0, .norm = 1.0, .grad_scale = scale, .skip = skip, .step = t, .t = t, .lr = lr,
                    .step_size = (float)(lr / (1.0 - pow((float)k->beta1, t))),
                    .bc2_sqrt = (float)sqrt(1.0 - pow((float)k->beta2, t)), .ema_decay = ema_decay},
               *d = dalloc(be, sizeof r);
    be->ops->upload(be, d, &r, sizeof r);
    return d;
}
static void adamw_host_free(AdamwHost *h) {
    free(h->p), free(h->m), free(h->v), free(h->pc), free(h->e), free(h->ec), free(h->sep), free(h->sepc);
}

// The compute copy of float32 buffer d (n): its own buffer, or on a float32 backend d (alias) or NULL
static cval *adamw_copy(Backend *be, float *d, size_t n, int alias) {
    return be->compute == DTYPE_F32 ? (alias ? (cval *)(void *)d : NULL) : put_c(be, NULL, n);
}
// Downloads the compute copy c of d (n) into h (on a float32 backend: d's values, in f)
static int adamw_get_copy(Backend *be, float *h, const cval *c, const float *f, size_t n) {
    if (be->compute != DTYPE_F32) return get_c(be, h, c, n);
    memcpy(h, f, n * sizeof(float));
    return 0;
}

// ema_update on a fresh copy of e0 (n) with the updated weights dp: h->sep, h->sepc
static int adamw_two_pass_ema(Backend *be, AdamwHost *h, const float *e0, const float *dp, size_t n, float decay,
                              int alias) {
    float *de = put_f(be, e0, n);
    cval *dec = adamw_copy(be, de, n, alias);
    be->ops->ema_update(be, de, dec, dp, n, decay, NULL);
    int guard = get_f(be, h->sep, de, n);
    guard += adamw_get_copy(be, h->sepc, dec, h->sep, n);
    if (be->compute != DTYPE_F32) dfree(be, dec);
    dfree(be, de);
    return guard;
}

// adamw given a step record, from h's inputs: with rec's grad_scale (the case's, skip 0) the bits of
// the call with grad_scale (h's results; grad_scale 0 passed, which rec replaces); with skip 1 nothing
// written (the inputs' bits; the compute copies left as they were: NaN). The elements wrong.
static int adamw_with_record(Backend *be, const AdamwHost *h, const float *g, size_t n, int t, int alias, int ema,
                             float decay) {
    const RefOpAdamW *k = &k_adamw;
    int bad = 0;
    for (int skip = 0; skip < 2; skip++) {
        float *dp = put_f(be, h->p0, n), *dg = put_f(be, g, n), *dm = put_f(be, h->m0, n), *dv = put_f(be, h->v0, n);
        float *de = ema ? put_f(be, h->e0, n) : NULL;
        cval *dpc = adamw_copy(be, dp, n, alias), *dec = ema ? adamw_copy(be, de, n, alias) : NULL;
        StepRecord *rec = put_record(be, (float)k->grad_scale, skip, t, decay);
        // the arguments the record replaces are wrong on purpose (lr, grad_scale, t, the EMA's decay)
        be->ops->adamw(be, dp, dpc, dg, dm, dv, de, dec, n, 9.0f, (float)k->beta1, (float)k->beta2,
                       (float)k->eps, (float)k->weight_decay, 0.0f, t + 5, 0.123f, rec);
        float *got = fnew(n), *gotc = fnew(n);
        const float *want[4] = {skip ? h->p0 : h->p, skip ? h->m0 : h->m, skip ? h->v0 : h->v, skip ? h->e0 : h->e};
        float *bufs[4] = {dp, dm, dv, de};
        for (int b = 0; b < (ema ? 4 : 3); b++) {
            bad += get_f(be, got, bufs[b], n);
            for (size_t i = 0; i < n; i++) bad += memcmp(&got[i], &want[b][i], 4) != 0;
        }
        cval *copies[2] = {dpc, dec};
        const float *wantc[2] = {h->pc, h->ec};
        for (int b = 0; b < 2 && be->compute != DTYPE_F32; b++) {
            if (!copies[b]) continue;
            bad += get_c(be, gotc, copies[b], n);
            for (size_t i = 0; i < n; i++) bad += skip ? !isnan(gotc[i]) : memcmp(&gotc[i], &wantc[b][i], 4) != 0;
        }
        free(got), free(gotc);
        dfree(be, rec), dfree(be, dp), dfree(be, dg), dfree(be, dm), dfree(be, dv), dfree(be, de);
        if (be->compute != DTYPE_F32) dfree(be, dpc), dfree(be, dec);
    }
    return bad;
}

// The op on be from h's inputs (with the EMA when ema), the results into h; the guards' count
static int run_adamw(Backend *be, AdamwHost *h, const float *g, size_t n, int t, int alias, int ema, float decay) {
    const RefOpAdamW *k = &k_adamw;
    float *dp = put_f(be, h->p, n), *dg = put_f(be, g, n), *dm = put_f(be, h->m, n), *dv = put_f(be, h->v, n);
    float *de = ema ? put_f(be, h->e, n) : NULL;
    cval *dpc = adamw_copy(be, dp, n, alias), *dec = ema ? adamw_copy(be, de, n, alias) : NULL;
    float *e0 = fnew(n);
    memcpy(e0, h->e, n * 4);
    be->ops->adamw(be, dp, dpc, dg, dm, dv, de, dec, n, (float)k->lr, (float)k->beta1, (float)k->beta2, (float)k->eps,
                   (float)k->weight_decay, (float)k->grad_scale, t, decay, NULL);
    int guard = get_f(be, h->p, dp, n) + get_f(be, h->m, dm, n) + get_f(be, h->v, dv, n);
    guard += adamw_get_copy(be, h->pc, dpc, h->p, n);
    if (ema) {
        guard += get_f(be, h->e, de, n) + adamw_get_copy(be, h->ec, dec, h->e, n);
        guard += adamw_two_pass_ema(be, h, e0, dp, n, decay, alias);
    }
    PERF(be, be->ops->adamw(be, dp, dpc, dg, dm, dv, de, dec, n, (float)k->lr, (float)k->beta1, (float)k->beta2,
                            (float)k->eps, (float)k->weight_decay, (float)k->grad_scale, t, decay, NULL));
    if (h->rec_bad >= 0) {  // the same update with the scale from a step record, then a skipped one
        h->rec_bad = adamw_with_record(be, h, g, n, t, alias, ema, decay);
    }
    dfree(be, dp), dfree(be, dg), dfree(be, dm), dfree(be, dv), dfree(be, de);
    if (be->compute != DTYPE_F32) dfree(be, dpc), dfree(be, dec);
    free(e0);
    return guard;
}

// The float32 state: p0, g, and moments m0, v0 (zero at t = 1, the first step; v >= 0), the EMA e0
static void adamw_inputs(Rng *r, size_t n, int t, float **p0, float **g, float **m0, float **v0, float **e0) {
    *p0 = randn(r, n, 1, DTYPE_F32), *g = randn(r, n, 1, DTYPE_F32), *m0 = randn(r, n, 0.1, DTYPE_F32);
    *v0 = randn(r, n, 0.1, DTYPE_F32);
    for (size_t i = 0; i < n; i++) (*v0)[i] = (*v0)[i] * (*v0)[i];
    if (t == 1)
        for (size_t i = 0; i < n; i++) (*m0)[i] = (*v0)[i] = 0;
    *e0 = fnew(n);  // near p0 (an EMA of the weights), drawn after the others: their seeds' inputs kept
    for (size_t i = 0; i < n; i++) (*e0)[i] = (*p0)[i] + (float)(0.1 * rng_normal(r));
}

// The bits of the fused EMA against the two-pass one on the same backend (and their compute copies)
static int adamw_ema_bits(const AdamwHost *h, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&h->e[i], &h->sep[i], 4) != 0 || memcmp(&h->ec[i], &h->sepc[i], 4);
    return bad;
}

// The EMA's lines: ema against double, its increment where it resolves (as case_ema), the compute
// copy, decay 0 a copy of the updated p, and the bits of the two passes
static void adamw_ema_lines(const Target *tg, const OpCase *c, Line *L, const AdamwHost *h, const AdamwHost *ch,
                            const float *e0, const double *we, size_t n) {
    float decay = (float)c->x;
    const float *cpu = tg->is_cpu ? NULL : ch->e;
    double *wd = refop_zeros(n);
    for (size_t i = 0; i < n; i++) wd[i] = we[i] - e0[i];
    line_cmp(L, "ema", h->e, NULL, we, cpu, NULL, n, c->tol.data);
    if (decay <= 0.9f) line_cmp(L, "d ema", h->e, e0, wd, cpu, e0, n, c->tol.data);
    if (tg->be->compute != DTYPE_F32) line_cmp(L, "ema_compute", h->ec, NULL, we, tg->is_cpu ? NULL : ch->ec, NULL, n, L->tol);
    if (decay == 0.0f) {
        int bad = 0;
        for (size_t i = 0; i < n; i++) bad += h->e[i] != h->p[i];
        line_exact(L, "ema copy", bad);
    }
    line_exact(L, "ema = ema_update", adamw_ema_bits(h, n));
    free(wd);
}

static void case_adamw(const Target *tg, const OpCase *c, Line *L) {
    size_t n = (size_t)c->d[0];
    int t = c->d[1], alias = c->d[2], ema = c->d[3];
    Rng r;
    rng_seed(&r, c->seed);
    float *p0, *g, *m0, *v0, *e0;
    adamw_inputs(&r, n, t, &p0, &g, &m0, &v0, &e0);
    double *wp = refop_widen(p0, n), *wm = refop_widen(m0, n), *wv = refop_widen(v0, n), *dg = refop_widen(g, n);
    double *we = refop_widen(e0, n);
    RefOpAdamW k = k_adamw;
    k.t = t, k.ema_decay = (float)c->x;
    refop_adamw(wp, wm, wv, ema ? we : NULL, dg, n, &k);
    double *wdp = refop_zeros(n);
    for (size_t i = 0; i < n; i++) wdp[i] = wp[i] - p0[i];
    AdamwHost h = adamw_host(n, p0, m0, v0, e0), ch = adamw_host(n, p0, m0, v0, e0);
    ch.rec_bad = -1;
    int guard = run_adamw(tg->be, &h, g, n, t, alias, ema, (float)c->x);
    if (!tg->is_cpu) run_adamw(tg->cpu, &ch, g, n, t, alias, ema, (float)c->x);
    int cpu = !tg->is_cpu;
    line_cmp(L, "dp", h.p, p0, wdp, cpu ? ch.p : NULL, p0, n, c->tol.data);
    line_cmp(L, "m", h.m, NULL, wm, cpu ? ch.m : NULL, NULL, n, c->tol.data);
    line_cmp(L, "v", h.v, NULL, wv, cpu ? ch.v : NULL, NULL, n, c->tol.data);
    if (tg->be->compute != DTYPE_F32) line_cmp(L, "p_compute", h.pc, NULL, wp, cpu ? ch.pc : NULL, NULL, n, L->tol);
    if (ema) adamw_ema_lines(tg, c, L, &h, &ch, e0, we, n);
    line_exact(L, "step record (scale, skip)", h.rec_bad);
    line_exact(L, "guard", guard);
    free(p0), free(g), free(m0), free(v0), free(e0), free(wp), free(wm), free(wv), free(dg), free(we), free(wdp);
    adamw_host_free(&h), adamw_host_free(&ch);
}

// ---- ema_update -----------------------------------------------------------------------------------
// d = n, alias, x = decay: ema = decay ema + (1 - decay) p (float32 data: c->tol.data); decay 0 is
// model_weights_copy's copy and must be exact. The compute copy as adamw's (alias).
// Besides: with a step record, skip 0 gives the same bits and skip 1 writes nothing (the elements
// wrong into *rec_bad).
static int run_ema(Backend *be, float *ema, float *ec, const float *p, size_t n, float decay, int alias,
                   int *rec_bad) {
    float *e0 = fnew(n), *got = fnew(n);
    memcpy(e0, ema, n * sizeof(float));
    float *de = put_f(be, ema, n), *dp = put_f(be, p, n);
    cval *dec = be->compute == DTYPE_F32 ? (alias ? (cval *)(void *)de : NULL) : put_c(be, NULL, n);
    be->ops->ema_update(be, de, dec, dp, n, decay, NULL);
    int guard = get_f(be, ema, de, n);
    if (be->compute != DTYPE_F32) guard += get_c(be, ec, dec, n);
    else memcpy(ec, ema, n * sizeof(float));
    *rec_bad = 0;
    for (int skip = 0; skip < 2; skip++) {
        float *de2 = put_f(be, e0, n);
        StepRecord *rec = put_record(be, 1.0f, skip, 1, decay);
        be->ops->ema_update(be, de2, NULL, dp, n, 0.123f, rec);  // the record's decay, not the argument
        *rec_bad += get_f(be, got, de2, n);
        for (size_t i = 0; i < n; i++) *rec_bad += memcmp(&got[i], skip ? &e0[i] : &ema[i], 4) != 0;
        dfree(be, rec), dfree(be, de2);
    }
    free(e0), free(got);
    PERF(be, be->ops->ema_update(be, de, dec, dp, n, decay, NULL));
    if (be->compute != DTYPE_F32) dfree(be, dec);
    dfree(be, de), dfree(be, dp);
    return guard;
}

static void case_ema(const Target *t, const OpCase *c, Line *L) {
    size_t n = (size_t)c->d[0];
    int alias = c->d[1];
    float decay = (float)c->x;
    Rng r;
    rng_seed(&r, c->seed);
    float *e0 = randn(&r, n, 1, DTYPE_F32), *p = randn(&r, n, 1, DTYPE_F32);
    double *we = refop_widen(e0, n), *dp = refop_widen(p, n), *wd = refop_zeros(n);
    refop_ema_update(we, dp, n, decay);
    for (size_t i = 0; i < n; i++) wd[i] = we[i] - e0[i];
    float *e = fnew(n), *ec = fnew(n), *ce = fnew(n), *cec = fnew(n);
    memcpy(e, e0, n * 4), memcpy(ce, e0, n * 4);
    int rec_bad, cpu_rec_bad;
    int guard = run_ema(t->be, e, ec, p, n, decay, alias, &rec_bad);
    if (!t->is_cpu) run_ema(t->cpu, ce, cec, p, n, decay, alias, &cpu_rec_bad);
    const float *cpu = t->is_cpu ? NULL : ce;
    line_cmp(L, "ema", e, NULL, we, cpu, NULL, n, c->tol.data);
    // the increment (1 - decay)(p - ema) too, where it is large enough against the float32
    // rounding of the result (6e-8 |ema|): at decay 0.999 that rounding is ~6e-5 of it
    if (decay <= 0.9f) line_cmp(L, "d ema", e, e0, wd, cpu, e0, n, c->tol.data);
    if (t->be->compute != DTYPE_F32) line_cmp(L, "ema_compute", ec, NULL, we, t->is_cpu ? NULL : cec, NULL, n, L->tol);
    if (decay == 0.0f) {
        int bad = 0;
        for (size_t i = 0; i < n; i++) bad += e[i] != p[i];
        line_exact(L, "copy", bad);
    }
    line_exact(L, "step record (skip)", rec_bad);
    line_exact(L, "guard", guard);
    free(e0), free(p), free(we), free(dp), free(wd), free(e), free(ec), free(ce), free(cec);
}

// ---- the work of a case, for perf mode ------------------------------------------------------------
// As the model's profile counts it (model.c, optim.c): matmul 2NKM FLOPs (backward 4NKM), attention
// 2 hd FLOPs per (query, key) pair and product (forward QK^T and PV, backward 4 products); the rest
// bytes read + written (e: the compute dtype's element size).
static OpCost bytes(double b) { return (OpCost){0, b}; }
static OpCost mm(const OpCase *c, size_t e, int backward) {
    double n = c->d[0], k = c->d[1], m = c->d[2];
    return (OpCost){(backward ? 4.0 : 2.0) * n * k * m,
                    (double)e * (backward ? 2 * (n * k + k * m) + n * m : n * k + k * m + n * m)};
}
static OpCost att(const OpCase *c, int backward) {
    RefOpAttCase ac = att_case(c);
    double pairs = (double)ac.Tq * ac.pos0 + (double)ac.Tq * (ac.Tq + 1) / 2.0;
    return (OpCost){(backward ? 8.0 : 4.0) * ac.B * ac.H * ac.hd * pairs, 0};
}
static double n2(const OpCase *c) { return (double)c->d[0] * c->d[1]; }
static double n3(const OpCase *c) { return (double)c->d[0] * c->d[1] * c->d[2]; }

static OpCost cost_to_compute(const OpCase *c, size_t e) { return bytes(c->d[0] * (4.0 + e)); }
static OpCost cost_memory(const OpCase *c, size_t e) { return (void)e, bytes(2.0 * c->d[0]); }  // the copy
static OpCost cost_copy_rows(const OpCase *c, size_t e) { return bytes(2.0 * e * n3(c)); }
static OpCost cost_matmul_fwd(const OpCase *c, size_t e) { return mm(c, e, 0); }
static OpCost cost_matmul_bwd(const OpCase *c, size_t e) { return mm(c, e, 1); }
static OpCost cost_rmsnorm_fwd(const OpCase *c, size_t e) { return bytes(n2(c) * (c->d[2] ? 4 : 2) * e); }
static OpCost cost_rmsnorm_bwd(const OpCase *c, size_t e) { return bytes(n2(c) * 4 * e); }
static OpCost cost_attention_fwd(const OpCase *c, size_t e) { return (void)e, att(c, 0); }
static OpCost cost_attention_bwd(const OpCase *c, size_t e) { return (void)e, att(c, 1); }
static OpCost cost_swiglu_fwd(const OpCase *c, size_t e) { return bytes(n2(c) * 3 * e); }
static OpCost cost_swiglu_bwd(const OpCase *c, size_t e) { return bytes(n2(c) * 5 * e); }
static OpCost cost_shift_bos(const OpCase *c, size_t e) { return bytes(n3(c) * (4.0 + e)); }
static OpCost cost_shift_bos_bwd(const OpCase *c, size_t e) {
    return bytes((double)c->d[0] * c->d[2] * e + 8.0 * c->d[2]);  // din's t = 0 rows, dbos read and written
}
static OpCost cost_nll(const OpCase *c, size_t e) { return bytes(n2(c) * (2.0 * e + 4)); }
static OpCost cost_nll_dy(const OpCase *c, size_t e) { return bytes(n2(c) * (4.0 * e + 4)); }
// y (N, W) read (and dy written), x (N, D) float32; d[2] = K (0 in the K = 1 check's case: 1)
static OpCost mix_cost(const OpCase *c, size_t e, int with_dy) {
    double W = (double)refop_mixture_width(c->d[1], c->d[2] ? c->d[2] : 1);
    return bytes((double)c->d[0] * (W * e * (with_dy ? 2 : 1) + 4.0 * c->d[1]));
}
static OpCost cost_mix(const OpCase *c, size_t e) { return mix_cost(c, e, 0); }
static OpCost cost_mix_dy(const OpCase *c, size_t e) { return mix_cost(c, e, 1); }
static OpCost cost_ce_fwd(const OpCase *c, size_t e) { return bytes(2.0 * c->d[0] * c->d[2] * e); }
static OpCost cost_ce_bwd(const OpCase *c, size_t e) { return bytes(c->d[0] * c->d[2] * (2.0 * e + 8)); }
static OpCost cost_sumsq(const OpCase *c, size_t e) { return (void)e, bytes(4.0 * c->d[0]); }
static OpCost cost_step_check(const OpCase *c, size_t e) { return (void)c, (void)e, bytes(16.0 + sizeof(StepRecord)); }
static OpCost cost_adamw(const OpCase *c, size_t e) { return bytes(c->d[0] * (c->d[3] ? 9.0 * 4 + 2 * e : 7.0 * 4 + e)); }
static OpCost cost_ema(const OpCase *c, size_t e) { return bytes(c->d[0] * (3.0 * 4 + e)); }

// ---- the op table and the driver --------------------------------------------------------------------
typedef struct {
    const char *name, *dims, *param;
    void (*run)(const Target *t, const OpCase *c, Line *L);
    OpCost (*cost)(const OpCase *c, size_t esize);
    const char *ref;
} OpDef;

#define OP_DEF(name, dims, param, run, cost, ref) [OP_##name] = {#name, dims, param, run, cost, ref},
static const OpDef k_ops[N_OPS] = {OPS(OP_DEF)};

// The shape of a case as text: "N=111 K=96 M=288" from the op's dims (and x: "eps=0.01").
static void describe(const OpCase *c, char *buf, size_t n) {
    const OpDef *op = &k_ops[c->op];
    if (!op->dims) {
        att_describe(c, buf, n);
        return;
    }
    char names[64];
    snprintf(names, sizeof names, "%s", op->dims);
    size_t len = 0;
    int i = 0;
    buf[0] = '\0';
    for (char *tok = strtok(names, " "); tok && len < n; tok = strtok(NULL, " "), i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%s=%d", i ? " " : "", tok, c->d[i]);
    if (op->param && len < n) snprintf(buf + len, n - len, " %s=%g", op->param, c->x);
}

// One case on one target: its report line (and in perf mode its perf row).
static void run_case(const Target *t, const OpCase *c) {
    const OpDef *op = &k_ops[c->op];
    char shape[SHAPE_MAX];
    describe(c, shape, sizeof shape);
    Line L;
    line_begin(&L, t, op->name, shape, t->be->compute == DTYPE_F32 ? c->tol.f32 : c->tol.bf16);
    perf_arm(t);
    op->run(t, c, &L);
    line_end(&L);
    perf_row(t, op->name, shape, op->cost(c, esize(t->be)));
    g_perf.be = NULL;
}

static void run_cases(const Target *t, OpId op) {
    for (int i = 0; i < N_CASES; i++)
        if (k_cases[i].op == op) run_case(t, &k_cases[i]);
}

// Opens the target of backend name with precision prec; 0 when it computes in a dtype seen already
// (e.g. the CPU backend computes in float32 when asked for bf16).
static int target_open(Target *t, const char *name, Precision prec, int seen[2]) {
    memset(t, 0, sizeof *t);
    t->be = backend_open(name, prec);
    CHECK(t->be != NULL, "backend_open(%s, %s): %s", name, backend_precision_name(prec), givt_last_error());
    if (!t->be) return 0;
    int dt = t->be->compute == DTYPE_BF16;
    if (seen[dt]) {
        backend_close(t->be);
        return 0;
    }
    seen[dt] = 1;
    t->is_cpu = !strcmp(name, "cpu");
    snprintf(t->label, sizeof t->label, "%s%s", name, dt ? "/bf16" : "");
    t->cpu = t->is_cpu ? t->be : backend_open("cpu", PRECISION_NO);
    CHECK(t->cpu != NULL, "backend_open(cpu): %s", givt_last_error());
    if (!t->cpu) backend_close(t->be);
    return t->cpu != NULL;
}

static void target_close(Target *t) {
    if (!t->is_cpu) backend_close(t->cpu);
    backend_close(t->be);
}

// Runs the cases of op on every available backend of the registry, once per distinct compute dtype.
static void run_op(OpId op) {
    perf_config();
    printf("  %s: reference %s\n", k_ops[op].name, k_ops[op].ref);
    for (int i = 0; i < backend_registry_count(); i++) {
        const char *name = backend_registry_name(i);
        char why[256] = "";
        if (!backend_available(name, why, sizeof why)) {
            printf("  %-9s not available here: %s\n", name, why);
            continue;
        }
        int seen[2] = {0, 0};
        for (int p = 0; p < 2; p++) {
            Target t;
            if (!target_open(&t, name, (Precision)p, seen)) continue;
            run_cases(&t, op);
            target_close(&t);
        }
    }
}

#define OP_TEST(name, dims, param, run, cost, ref) \
    TEST(backend_ops_##name) { run_op(OP_##name); }
OPS(OP_TEST)
