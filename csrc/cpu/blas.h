// blas: the matrix-product library of the CPU backend, chosen at build time (make BLAS=...): dnnl
// (oneDNN, the default: the fastest for training here, docs/benchmarks.md "Which BLAS"), openblas (the faster for
// batched decoding, README "Sampling"), blis or mkl. The CPU backend calls cblas_sgemm / cblas_sgemv
// and nothing else of it; for oneDNN, which has no CBLAS interface, this header maps the two onto
// dnnl_sgemm.
#ifndef GIVT_BLAS_H
#define GIVT_BLAS_H

#if defined(GIVT_BLAS_MKL)
#include <mkl_cblas.h>
#elif defined(GIVT_BLAS_DNNL)
#include <dnnl.h>
#include <stdlib.h>
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };
// Row-major only (all this code uses); dnnl_sgemm is row-major with 'N' / 'T' flags.
static inline void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N,
                               int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                               float *C, int ldc) {
    if (order != CblasRowMajor) abort();
    if (dnnl_sgemm(ta == CblasTrans ? 'T' : 'N', tb == CblasTrans ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C,
                   ldc) != dnnl_success)
        abort();
}
// y (M) = alpha A (M, N) x + beta y, row-major A, unit strides: a (M, N) x (N, 1) product
static inline void cblas_sgemv(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, int M, int N, float alpha,
                               const float *A, int lda, const float *x, int incx, float beta, float *y, int incy) {
    if (order != CblasRowMajor || ta != CblasNoTrans || incx != 1 || incy != 1) abort();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, 1, N, alpha, A, lda, x, 1, beta, y, 1);
}
#elif defined(GIVT_BLAS_BLIS)
// BLIS's cblas.h pulls in the whole of blis.h (POSIX feature macros, static functions that -Werror
// rejects as unused); the two CBLAS entry points it exports are declared here as CBLAS defines them
// (Debian's libblis: 32-bit integers).
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };
void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K,
                 float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
void cblas_sgemv(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, int M, int N, float alpha, const float *A, int lda,
                 const float *x, int incx, float beta, float *y, int incy);
#else  // OpenBLAS: its cblas.h
#include <cblas.h>
#endif

// "OpenBLAS 0.3.21 (Haswell kernels)", "BLIS 0.9.0", "MKL 2025.x", "oneDNN 3.0.0": which library
// and version the CPU backend runs on, for the start-up line and the benchmark.
const char *blas_description(void);
// Called once by the CPU backend when it opens: lets the library use omp_get_max_threads() threads
// outside our OpenMP regions (BLIS starts single-threaded unless told).
void blas_init_threads(int threads);

#endif
