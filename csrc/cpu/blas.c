// blas: which matrix-product library the CPU backend was built with (see blas.h).
#define _POSIX_C_SOURCE 200809L  // setenv
#include "blas.h"

#include <stdio.h>
#include <stdlib.h>

#if defined(GIVT_BLAS_MKL)
#include <mkl_service.h>
#elif defined(GIVT_BLAS_BLIS)
// blis.h cannot be compiled with this project's warnings and defines the CBLAS enums again: the
// four functions used here, as BLIS declares them (arch_t an enum, dim_t a 64-bit integer).
const char *bli_info_get_version_str(void);
int bli_arch_query_id(void);
const char *bli_arch_string(int id);
void bli_thread_set_num_threads(long long n_threads);
#endif  // OpenBLAS: its cblas.h (through blas.h) declares openblas_get_config / _corename

const char *blas_description(void) {
    static char text[160];
#if defined(GIVT_BLAS_MKL)
    char v[128];
    mkl_get_version_string(v, (int)sizeof v);
    snprintf(text, sizeof text, "%s", v);
#elif defined(GIVT_BLAS_BLIS)
    snprintf(text, sizeof text, "BLIS %s (%s)", bli_info_get_version_str(), bli_arch_string(bli_arch_query_id()));
#elif defined(GIVT_BLAS_DNNL)
    const dnnl_version_t *v = dnnl_version();
    snprintf(text, sizeof text, "oneDNN %d.%d.%d (dnnl_sgemm)", v->major, v->minor, v->patch);
#else
    snprintf(text, sizeof text, "%s (core %s)", openblas_get_config(), openblas_get_corename());
#endif
    return text;
}

void blas_init_threads(int threads) {
#if defined(GIVT_BLAS_BLIS)
    // Debian's BLIS 0.9 does not recognise recent AVX-512 CPUs (an AMD EPYC Zen 4 here) and falls
    // back to its generic kernels, 5x slower (87 against 484 GFLOP/s measured); its Skylake-X
    // kernels run there. BLIS_ARCH_TYPE set by the user wins.
    if (!getenv("BLIS_ARCH_TYPE") && __builtin_cpu_supports("avx512f")) setenv("BLIS_ARCH_TYPE", "skx", 0);
    bli_thread_set_num_threads(threads);
#else
    (void)threads;  // OpenBLAS (OpenMP build), MKL and oneDNN follow OpenMP's thread count
#endif
}
