// cublaslt_check: CUBLAS_CHECK(call), the check of every cuBLASLt call: a failure names the call, its
// status and file:line, and stops (as CUDA_CHECK does for the runtime, launch.cuh).
#ifndef GIVT_CUBLASLT_CHECK_CUH
#define GIVT_CUBLASLT_CHECK_CUH

#include <cublasLt.h>

#include "util.h"

#define CUBLAS_CHECK(call)                                                                              \
    do {                                                                                                \
        cublasStatus_t givt_cublas_st_ = (call);                                                        \
        if (givt_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                                   \
            givt_die_at(__FILE__, __LINE__, "cuBLASLt error: %s: %s (%d)", #call,                       \
                        cublasLtGetStatusName(givt_cublas_st_), (int)givt_cublas_st_);                  \
    } while (0)

#endif
