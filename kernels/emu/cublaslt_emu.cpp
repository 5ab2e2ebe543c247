// cublaslt_emu: the parts of cuBLASLt that need a GPU, on the CPU: the handle, the algorithm
// heuristic (one algorithm, no workspace) and cublasLtMatmul, a plain GEMM that reads the operation
// descriptor and the matrix layouts back from the real library (cublasLtMatmulDescGetAttribute,
// cublasLtMatrixLayoutGetAttribute), so the descriptor and layout code of kernels/matmul.cu is what
// gets tested. Supported: column-major, no batches, no epilogue, host scalars, CUBLAS_COMPUTE_32F(_PEDANTIC)
// with float scale, A and B both bf16 or both fp32, C = D of bf16 or fp32. Accumulates in float, k in order.
// On a capturing stream (cuda_emu.h: graphs) the product is a node: the descriptor, the layouts and
// alpha and beta are read at the call, as the real library bakes them into its kernel's parameters
// (they may be destroyed or changed after it); the matrices are read when the node runs.
#include "cuda_emu.h"

#include <cublasLt.h>
#include <stdio.h>

namespace {
char g_handle_token;

float load(const void *p, cudaDataType_t t, size_t i) {
    return t == CUDA_R_16BF ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
void store(void *p, cudaDataType_t t, size_t i, float v) {
    if (t == CUDA_R_16BF) ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v);
    else ((float *)p)[i] = v;
}

struct Layout {
    cudaDataType_t type;
    int32_t order, batch;
    uint64_t rows, cols;
    int64_t ld;
};

// one product, as read from the call (everything but the matrices' contents)
struct Gemm {
    const void *A, *B, *C;
    void *D;
    Layout a, b, c, d;
    float alpha, beta;
    uint64_t m, n, k;
    size_t sa_i, sa_p, sb_p, sb_j;  // op(A)(i, p) at A[i * sa_i + p * sa_p]; op(B)(p, j) at B[p * sb_p + j * sb_j]
};

void run_gemm(const Gemm &g) {
    for (uint64_t j = 0; j < g.n; j++)
        for (uint64_t i = 0; i < g.m; i++) {
            float acc = 0.0f;
            for (uint64_t p = 0; p < g.k; p++)
                acc += load(g.A, g.a.type, i * g.sa_i + p * g.sa_p) * load(g.B, g.b.type, p * g.sb_p + j * g.sb_j);
            float v = g.alpha * acc;
            if (g.beta != 0.0f) v += g.beta * load(g.C, g.c.type, i + j * (size_t)g.c.ld);  // beta = 0: C is not read (may be NaN)
            store(g.D, g.d.type, i + j * (size_t)g.d.ld, v);
        }
}

cublasStatus_t bad(const char *why) {
    fprintf(stderr, "cuda_emu: cublasLtMatmul: %s\n", why);
    return CUBLAS_STATUS_INVALID_VALUE;
}

template <typename T>
bool get_layout_attr(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a, T *v) {
    size_t written = 0;
    return cublasLtMatrixLayoutGetAttribute(l, a, v, sizeof *v, &written) == CUBLAS_STATUS_SUCCESS &&
           written == sizeof *v;
}
template <typename T>
bool get_desc_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, T *v) {
    size_t written = 0;
    return cublasLtMatmulDescGetAttribute(d, a, v, sizeof *v, &written) == CUBLAS_STATUS_SUCCESS &&
           written == sizeof *v;
}

bool read_layout(cublasLtMatrixLayout_t l, Layout *o) {
    uint32_t type = 0;
    o->order = CUBLASLT_ORDER_COL, o->batch = 1;
    if (!l || !get_layout_attr(l, CUBLASLT_MATRIX_LAYOUT_TYPE, &type) ||
        !get_layout_attr(l, CUBLASLT_MATRIX_LAYOUT_ROWS, &o->rows) ||
        !get_layout_attr(l, CUBLASLT_MATRIX_LAYOUT_COLS, &o->cols) ||
        !get_layout_attr(l, CUBLASLT_MATRIX_LAYOUT_LD, &o->ld) ||
        !get_layout_attr(l, CUBLASLT_MATRIX_LAYOUT_ORDER, &o->order) ||
        !get_layout_attr(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &o->batch))
        return false;
    o->type = (cudaDataType_t)type;
    return true;
}
}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    *h = (cublasLtHandle_t)(void *)&g_handle_token;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    return h == (cublasLtHandle_t)(void *)&g_handle_token ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *count) {
    if (h != (cublasLtHandle_t)(void *)&g_handle_token) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!op || !a || !b || !c || !d || !pref || requested < 1 || !results || !count) return CUBLAS_STATUS_INVALID_VALUE;
    memset(&results[0], 0, sizeof results[0]);
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *count = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t op, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *, void *, size_t,
                              cudaStream_t stream) {
    if (h != (cublasLtHandle_t)(void *)&g_handle_token) return CUBLAS_STATUS_NOT_INITIALIZED;
    bool capture = false;
    if (givt_emu::capture_any() && givt_emu::capture_enqueue(stream, "cublasLtMatmul", &capture) != cudaSuccess)
        return CUBLAS_STATUS_EXECUTION_FAILED;  // the runtime's error is the last error
    int32_t compute = 0, scale = 0, ta = 0, tb = 0, pmode = 0;
    uint32_t epilogue = 0;
    if (!op || !get_desc_attr(op, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, &compute) ||
        !get_desc_attr(op, CUBLASLT_MATMUL_DESC_SCALE_TYPE, &scale) ||
        !get_desc_attr(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta) || !get_desc_attr(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb) ||
        !get_desc_attr(op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pmode) ||
        !get_desc_attr(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue))
        return bad("cannot read the operation descriptor");
    if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC)
        return bad("compute type other than CUBLAS_COMPUTE_32F (TF32 or half accumulation are not emulated)");
    if (scale != CUDA_R_32F) return bad("scale type other than CUDA_R_32F");
    if (pmode != CUBLASLT_POINTER_MODE_HOST) return bad("alpha and beta must be host pointers");
    if (epilogue != CUBLASLT_EPILOGUE_DEFAULT) return bad("epilogues are not emulated");
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
        return bad("transposes other than N and T");
    Layout a, b, c, d;
    if (!read_layout(Adesc, &a) || !read_layout(Bdesc, &b) || !read_layout(Cdesc, &c) || !read_layout(Ddesc, &d))
        return bad("cannot read a matrix layout");
    const Layout *all[4] = {&a, &b, &c, &d};
    for (const Layout *l : all) {
        if (l->order != CUBLASLT_ORDER_COL || l->batch != 1) return bad("only column-major, unbatched layouts");
        if (l->ld < (int64_t)l->rows || l->ld < 1) return bad("a leading dimension below the row count");
    }
    if (a.type != b.type || (a.type != CUDA_R_16BF && a.type != CUDA_R_32F)) return bad("A and B: both bf16 or both fp32");
    if (c.type != d.type || (d.type != CUDA_R_16BF && d.type != CUDA_R_32F)) return bad("C and D: both bf16 or both fp32");
    uint64_t m = ta == CUBLAS_OP_T ? a.cols : a.rows, k = ta == CUBLAS_OP_T ? a.rows : a.cols;
    uint64_t kb = tb == CUBLAS_OP_T ? b.cols : b.rows, n = tb == CUBLAS_OP_T ? b.rows : b.cols;
    if (kb != k || d.rows != m || d.cols != n || c.rows != m || c.cols != n) {
        char why[200];
        snprintf(why, sizeof why, "shapes do not match: op(A) %llux%llu, op(B) %llux%llu, C %llux%llu, D %llux%llu",
                 (unsigned long long)m, (unsigned long long)k, (unsigned long long)kb, (unsigned long long)n,
                 (unsigned long long)c.rows, (unsigned long long)c.cols, (unsigned long long)d.rows,
                 (unsigned long long)d.cols);
        return bad(why);
    }
    Gemm g;
    g.A = A, g.B = B, g.C = C, g.D = D, g.a = a, g.b = b, g.c = c, g.d = d, g.m = m, g.n = n, g.k = k;
    g.alpha = *(const float *)alpha, g.beta = *(const float *)beta;  // host pointer mode: read now
    g.sa_i = ta == CUBLAS_OP_T ? (size_t)a.ld : 1, g.sa_p = ta == CUBLAS_OP_T ? 1 : (size_t)a.ld;
    g.sb_p = tb == CUBLAS_OP_T ? (size_t)b.ld : 1, g.sb_j = tb == CUBLAS_OP_T ? 1 : (size_t)b.ld;
    if (capture) {
        givt_emu::capture_work(stream, "cublasLtMatmul", true, [g] { run_gemm(g); });
        return CUBLAS_STATUS_SUCCESS;
    }
    givt_emu::note_gemm();
    run_gemm(g);
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
