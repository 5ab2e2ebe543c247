// dist_impl: what the communicators of dist.c are built from (private to dist*.c and kernels/dist_nccl.cu).
#ifndef GIVT_DIST_IMPL_H
#define GIVT_DIST_IMPL_H

#include "dist.h"

#ifdef __cplusplus
extern "C" {
#endif

// csrc/train/dist_mpi.c (builds with MPI only): MPI_Init, MPI_COMM_WORLD; launcher names the
// launcher found in the environment.
Dist *dist_open_mpi(const char *launcher);
const char *dist_mpi_version(void);

// kernels/dist_nccl.cu (in GPU builds when nvcc has NCCL beside it; weak here, so that a build
// without it links and says so): one NCCL communicator over the ranks of parent (whose unique id
// it broadcasts through parent), on the backend's GPU; parent then serves the control collectives
// and is closed with it.
Dist *dist_open_nccl(Dist *parent, Backend *be) __attribute__((weak));
const char *dist_nccl_version(void) __attribute__((weak));

#ifdef __cplusplus
}
#endif

#endif
