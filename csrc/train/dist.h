// dist: the communicator of data-parallel training, the seam between the trainer and MPI / NCCL.
// The trainer all-reduces the gradients and the loss through it after accumulation, hands it each
// range of gradients as backward finishes it (so that an NCCL communicator can overlap reduction
// with the rest of the backward pass), agrees on the stop flag through it, and lets only rank 0
// print and write files. This build has the single-process communicator, with which nothing
// changes: every reduction of one rank is the identity.
#ifndef GIVT_DIST_H
#define GIVT_DIST_H

#include <stddef.h>

#include "backend.h"

typedef struct Dist Dist;

typedef struct {
    // buf (n floats, backend memory) = the mean over ranks, in place
    void (*allreduce_mean)(Dist *d, Backend *be, float *buf, size_t n);
    // buf (n doubles, backend scalars) = the sum over ranks, in place
    void (*allreduce_sum_scalars)(Dist *d, Backend *be, double *buf, size_t n);
    // grads [first, first + count) of buf are final on this rank (may start their reduction; the
    // allreduce_mean of the whole buffer that follows completes it); NULL: nothing to overlap
    void (*grads_ready)(Dist *d, Backend *be, float *buf, size_t first, size_t count);
    // 1 on every rank when flag is set on any rank
    int (*any)(Dist *d, int flag);
    void (*barrier)(Dist *d);
    void (*close)(Dist *d);
} DistOps;

struct Dist {
    const char *name;  // "single", "mpi", "nccl"
    int rank, world_size, local_rank;
    const DistOps *ops;
    void *ctx;
};

// The single-process communicator: rank 0 of 1.
Dist *dist_open_single(void);
void dist_close(Dist *d);

static inline int dist_is_root(const Dist *d) { return d->rank == 0; }
void dist_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n);
void dist_allreduce_sum_scalars(Dist *d, Backend *be, double *buf, size_t n);
void dist_grads_ready(Dist *d, Backend *be, float *buf, size_t first, size_t count);
int dist_any(Dist *d, int flag);
void dist_barrier(Dist *d);

#endif
