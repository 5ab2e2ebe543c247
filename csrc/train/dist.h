// dist: the communicator of data-parallel training, the seam between the trainer and MPI / NCCL.
// Every rank holds the whole model; each trains on its own slice of every global batch, and the
// gradients are averaged over ranks before the optimizer step, so that every rank applies the same
// update. The trainer all-reduces the gradients and the loss through this interface, hands it each
// range of gradients as backward finishes it (so that NCCL can overlap reduction with the rest of
// the backward pass), agrees on stopping through it, and lets only rank 0 print and write files.
//
// Three communicators:
//  - single: one process (no launcher, or a build without MPI); every reduction is the identity;
//  - mpi:    MPI_COMM_WORLD; buffers are host memory (the CPU backend);
//  - nccl:   gradients in GPU memory through NCCL on its own stream, control through the MPI (or
//            single) communicator it was opened over (the CUDA backend).
#ifndef GIVT_DIST_H
#define GIVT_DIST_H

#include <stddef.h>

#include "backend.h"
#include "comm.h"  // Dist, DistOps, DistPart: the communicator contract

#ifdef __cplusplus
extern "C" {
#endif

// The communicator of this process. Under a launcher (mpirun, mpiexec, srun: found from the
// environment it sets) it initialises MPI: rank and world size from MPI_COMM_WORLD, the local rank
// (which GPU) from MPI's shared-memory split. Without a launcher, or in a build without MPI, the
// single-process communicator. NULL with givt_fail when MPI is needed but cannot start (e.g. a
// launcher with several ranks and a build without MPI).
Dist *dist_open(void);
// The single-process communicator: rank 0 of 1.
Dist *dist_open_single(void);
// For a backend that computes in device memory (cuda): the NCCL communicator over d (which it
// takes over; its world and ranks). d itself when the backend's memory is host memory and d can
// reduce it. NULL with givt_fail when no communicator of this build can reduce that backend's memory.
Dist *dist_for_backend(Dist *d, Backend *be);

// What this build can do: "MPI (Open MPI 4.1.4), NCCL 2.x" or "none"; for --version.
const char *dist_build_info(void);

// [train] grad_reduce_dtype (DIST_GRAD_F32 or DIST_GRAD_BF16, comm.h: the values of GradReduceDtype)
// for the gradient reductions of d (allreduce_mean, grads_ready, reduce_scatter_mean and
// grads_ready_part); the loss, the norms and the control collectives stay as they are. 0, or -1
// with givt_fail naming the key. The single process has nothing to exchange: bf16 is accepted there
// and changes nothing.
int dist_set_grad_dtype(Dist *d, int dtype);

static inline int dist_is_root(const Dist *d) { return d->rank == 0; }
void dist_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n);
void dist_allreduce_sum_scalars(Dist *d, Backend *be, double *buf, size_t n);
void dist_grads_ready(Dist *d, Backend *be, float *buf, size_t first, size_t count);
void dist_reduce_scatter_mean(Dist *d, Backend *be, const float *full, float *part, size_t total);
// ZeRO-1: [first, first + count) of full is final; its reduction to the parts' owners may start
// (comm.h's grads_ready_part); dist_reduce_scatter_mean completes it.
// GIVT_DIST_OVERLAP=0 in the environment turns dist_grads_ready and dist_grads_ready_part into no-ops
// (everything is reduced after backward in one call: for comparisons, tests/test_mpi.c).
void dist_grads_ready_part(Dist *d, Backend *be, const float *full, float *part, size_t total, size_t first,
                           size_t count);
void dist_allgather(Dist *d, Backend *be, float *full, size_t total);
long dist_max(Dist *d, long v);
int dist_any(Dist *d, int flag);  // 1 on every rank when flag is set on any rank
void dist_broadcast(Dist *d, void *buf, size_t n);
void dist_gather(Dist *d, const float *part, float *full, size_t total);
void dist_barrier(Dist *d);
void dist_abort(Dist *d, int code);

// Checks that every rank holds the same n bytes as rank 0 (a configuration, a binary's hash).
// Returns 0, or -1 on every rank when any differs; *first_bad gets the lowest differing rank. With
// root_copy, *root_copy gets rank 0's bytes, NUL-terminated (to be freed), for saying what differs.
int dist_check_same(Dist *d, const void *bytes, size_t n, int *first_bad, char **root_copy);

#ifdef __cplusplus
}
#endif

#endif
