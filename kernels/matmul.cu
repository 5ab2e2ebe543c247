// matmul: the linear layers through cuBLASLt, behind one wrapper (lt_matmul).
// Row-major contract of ops.h:  out (N, M) = inp (N, K) @ w^T,  w (M, K)
//                               dinp (N, K) = dout (N, M) @ w
//                               dw (M, K) += dout^T @ inp         (float32, whatever the compute dtype)
// cuBLASLt is column-major: a row-major (r, c) matrix is a column-major (c, r) one with ld = c, so
//   out^T (M x N) = op_T(w as K x M) * inp^T (K x N)
//   dinp^T (K x N) = w^T (K x M) * dout^T (M x N)
//   dw^T (K x M)  += inp^T (K x N) * op_T(dout^T as M x N)
// Types: bf16 compute: A, B bf16, CUBLAS_COMPUTE_32F (fp32 accumulation), D bf16 (out, dinp) or fp32
// (dw, beta = 1); fp32 compute: everything fp32 with CUBLAS_COMPUTE_32F, which never uses TF32 (only
// CUBLAS_COMPUTE_32F_FAST_TF32 would). The algorithm comes from cuBLASLt's heuristic for the shape,
// the pointers' alignment and the workspace, once per distinct case (cached), so the same call always
// runs the same algorithm and gives the same bits.
// Under the emulation (GIVT_CUDA_EMU) the descriptors, layouts and preferences are the real library's;
// the handle, the heuristic and cublasLtMatmul itself are kernels/emu/cublaslt_emu.cpp (a CPU GEMM
// that reads the descriptors and layouts back).
#include "launch.cuh"

#include "cublaslt_check.cuh"
#include <stdint.h>


namespace {

// the largest power of two (up to 256) that divides the address: what the heuristic may assume
uint32_t alignment_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && (a & (al - 1))) al >>= 1;
    return al;
}

struct AlgoKey {
    void *handle;
    int ta, tb, m, n, k;
    cudaDataType_t ab, cd;
    float beta;
    uint32_t align[3];  // A, B, C/D
    bool operator==(const AlgoKey &o) const { return !memcmp(this, &o, sizeof o); }
};

struct AlgoEntry {
    AlgoKey key;
    cublasLtMatmulAlgo_t algo;
    size_t workspace;
};

enum { kCache = 128 };
AlgoEntry g_cache[kCache];
int g_ncache, g_next;

// D (m x n, column-major) = alpha * op(A) op(B) + beta * C with C = D; A and B of type ab, D of type cd;
// op(A) m x k, op(B) k x n.
void lt_matmul(Backend *be, bool ta, bool tb, int m, int n, int k, const void *A, int lda, const void *B, int ldb,
               void *D, int ldd, cudaDataType_t ab, cudaDataType_t cd, float beta) {
    if (m <= 0 || n <= 0) return;
    CudaCtx *c = cuda_ctx(be);
    cublasLtHandle_t h = (cublasLtHandle_t)c->cublaslt;
    float alpha = 1.0f;
    if (k <= 0) {  // an empty sum: D = beta * D
        if (beta == 0.0f) CUDA_CHECK(cudaMemsetAsync(D, 0, (size_t)ldd * n * (cd == CUDA_R_32F ? 4 : 2), cuda_stream(be)));
        return;
    }
    cublasLtMatmulDesc_t op;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    cublasLtMatrixLayout_t la, lb, ld;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, ab, ta ? k : m, ta ? m : k, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, ab, tb ? n : k, tb ? k : n, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, cd, m, n, ldd));

    AlgoKey key;
    memset(&key, 0, sizeof key);  // padding too: the key is compared bytewise
    key.handle = h, key.ta = ta, key.tb = tb, key.m = m, key.n = n, key.k = k, key.ab = ab, key.cd = cd;
    key.beta = beta;
    key.align[0] = alignment_of(A), key.align[1] = alignment_of(B), key.align[2] = alignment_of(D);
    AlgoEntry *e = NULL;
    for (int i = 0; i < g_ncache && !e; i++)
        if (g_cache[i].key == key) e = &g_cache[i];
    if (!e) {
        cublasLtMatmulPreference_t pref;
        CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        size_t ws = c->workspace_bytes;
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align[0],
                                                          sizeof key.align[0]));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align[1],
                                                          sizeof key.align[1]));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align[2],
                                                          sizeof key.align[2]));
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align[2],
                                                          sizeof key.align[2]));
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, ld, ld, pref, 1, &res, &found));
        CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
        if (found < 1)
            givt_die("cuBLASLt: no algorithm for a %s x %s GEMM m=%d n=%d k=%d (%s inputs, %s output)", ta ? "T" : "N",
                     tb ? "T" : "N", m, n, k, ab == CUDA_R_16BF ? "bf16" : "fp32", cd == CUDA_R_16BF ? "bf16" : "fp32");
        if (g_ncache < kCache) e = &g_cache[g_ncache++];
        else e = &g_cache[g_next++ % kCache];
        e->key = key, e->algo = res.algo, e->workspace = res.workspaceSize;
    }
    CUBLAS_CHECK(cublasLtMatmul(h, op, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &e->algo, c->workspace,
                                e->workspace, cuda_stream(be)));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(ld));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(op));
}

cudaDataType_t compute_type(Backend *be) { return cuda_ctx(be)->dtype == DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

}  // namespace

extern "C" void cuda_matmul_fwd(Backend *be, cval *out, const cval *inp, const cval *w, int N, int K, int M) {
    cudaDataType_t t = compute_type(be);
    // out^T (M x N) = op_T(w: K x M, ld K) * inp^T (K x N, ld K)
    lt_matmul(be, true, false, M, N, K, w, K, inp, K, out, M, t, t, 0.0f);
}

extern "C" void cuda_matmul_bwd(Backend *be, cval *dinp, float *dw, const cval *dout, const cval *inp, const cval *w,
                                int N, int K, int M) {
    cudaDataType_t t = compute_type(be);
    // dinp^T (K x N) = w^T (K x M, ld K) * dout^T (M x N, ld M)
    if (dinp) lt_matmul(be, false, false, K, N, M, w, K, dout, M, dinp, K, t, t, 0.0f);
    // dw^T (K x M) += inp^T (K x N, ld K) * op_T(dout^T: M x N, ld M), accumulated in fp32
    lt_matmul(be, false, true, K, M, N, inp, K, dout, M, dw, K, t, CUDA_R_32F, 1.0f);
}
