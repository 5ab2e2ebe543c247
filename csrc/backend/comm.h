// comm: the communicator contract of data-parallel training: the Dist instance and the collectives
// (DistOps) every communicator implements. csrc/train/dist.c holds the single-process one and
// chooses among them (dist.h); csrc/train/dist_mpi.c implements it over MPI; a backend whose memory
// is its own provides one that reduces that memory (kernels/dist_nccl.cu: NCCL). A communicator's
// code includes this header, not the trainer's dist.h.
#ifndef GIVT_COMM_H
#define GIVT_COMM_H

#include <stddef.h>
#include <stdlib.h>

#include "ops.h"  // Backend

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Dist Dist;

// Rank r's part of a flat buffer of `total` floats split across the ranks for ZeRO-1: parts of
// ceil(total / world_size) floats, the last ones shorter (possibly empty).
typedef struct {
    size_t first, count;
} DistPart;
static inline DistPart dist_part(size_t total, int world_size, int rank) {
    size_t per = world_size > 0 ? (total + (size_t)world_size - 1) / (size_t)world_size : total;
    size_t first = per * (size_t)rank;
    if (first > total) first = total;
    size_t end = first + per < total ? first + per : total;
    return (DistPart){first, end - first};
}

// The overlap of the range [first, first + count) with part p (count 0: none).
static inline DistPart dist_overlap(DistPart p, size_t first, size_t count) {
    size_t lo = first > p.first ? first : p.first;
    size_t hi = first + count < p.first + p.count ? first + count : p.first + p.count;
    return (DistPart){lo, hi > lo ? hi - lo : 0};
}

// The ranges of gradients handed over during backward (first[i], count[i]; n of them), sorted by
// first (insertion: tens of them).
static inline void dist_sort_ranges(size_t *first, size_t *count, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && first[j - 1] > first[j]; j--) {
            size_t f = first[j], k = count[j];
            first[j] = first[j - 1], count[j] = count[j - 1];
            first[j - 1] = f, count[j - 1] = k;
        }
}

// The gaps that n sorted ranges leave in [0, total), one per call, in order: 1 with the next one in
// *gap, 0 after the last. *i (the next range) and *at (where the walk stands) start at 0. first and
// count are passed at every call, so that the caller may append ranges to them (and move them)
// between calls; only the n given are walked.
static inline int dist_next_gap(const size_t *first, const size_t *count, int n, size_t total, int *i, size_t *at,
                                DistPart *gap) {
    for (; *i <= n; (*i)++) {
        size_t from = *at, next = *i < n ? first[*i] : total;
        if (*i < n && first[*i] + count[*i] > *at) *at = first[*i] + count[*i];
        if (next > from) {
            *gap = (DistPart){from, next - from};
            (*i)++;
            return 1;
        }
    }
    return 0;
}

// The dtype of the gradients between ranks (Dist.grad_dtype; the values of [train] grad_reduce_dtype,
// GradReduceDtype). DIST_GRAD_BF16: each communicator rounds the float32 gradients to bfloat16
// (nearest even) before sending, adds bf16 values in float32 and rounds each partial sum to bf16
// (every reduction hop, as NCCL's bf16 sums do), and writes the mean back as float32: half the bytes.
// Buffers handed to the communicator stay float32 either way.
enum { DIST_GRAD_F32 = 0, DIST_GRAD_BF16 = 1 };

typedef struct {
    // ---- data: backend memory ----
    // buf (n floats) = the mean over ranks, in place
    void (*allreduce_mean)(Dist *d, Backend *be, float *buf, size_t n);
    // buf (n doubles, backend scalars) = the sum over ranks, in place
    void (*allreduce_sum_scalars)(Dist *d, Backend *be, double *buf, size_t n);
    // grads [first, first + count) of buf are final on this rank; the communicator may start their
    // reduction (the allreduce_mean of the whole buffer that follows completes it). NULL: no overlap.
    void (*grads_ready)(Dist *d, Backend *be, float *buf, size_t first, size_t count);
    // ZeRO-1: part (this rank's dist_part of total) = the mean over ranks of that part of full;
    // completes what grads_ready_part started (reduces the rest, and waits for it all)
    void (*reduce_scatter_mean)(Dist *d, Backend *be, const float *full, float *part, size_t total);
    // ZeRO-1: every rank's part of full (total floats, each rank's own part in place) to every rank
    void (*allgather)(Dist *d, Backend *be, float *full, size_t total);
    // ---- control: host memory ----
    long (*max)(Dist *d, long v);                      // the largest v over ranks, on every rank
    void (*broadcast)(Dist *d, void *buf, size_t n);   // rank 0's n bytes to every rank
    // rank 0 gets every rank's part (dist_part of total) of a float buffer into full (total floats,
    // rank 0 only; NULL elsewhere); part is this rank's part in host memory
    void (*gather)(Dist *d, const float *part, float *full, size_t total);
    void (*barrier)(Dist *d);
    void (*abort)(Dist *d, int code);  // ends every rank of the job; does not return
    void (*close)(Dist *d);            // collective: every rank closes
    // ---- data, ZeRO-1 (after close: the positional tables of C++ communicators) ----
    // ZeRO-1's grads_ready: grads [first, first + count) of full (total floats) are final on this
    // rank; the communicator may start reducing the overlap of that range with each rank's
    // dist_part to its owner (into part on this rank); the reduce_scatter_mean of the whole buffer
    // that follows completes it. NULL: no overlap (reduce_scatter_mean does it all).
    void (*grads_ready_part)(Dist *d, Backend *be, const float *full, float *part, size_t total, size_t first,
                             size_t count);
} DistOps;

struct Dist {
    const char *name;     // "single", "mpi", "nccl"
    char launcher[64];    // how the ranks were started: "none", "mpirun (Open MPI)", "srun", ...
    int rank, world_size, local_rank;
    int grad_dtype;       // DIST_GRAD_F32 (the default) or DIST_GRAD_BF16: dist_set_grad_dtype
    const DistOps *ops;
    void *ctx;
};

// Closes a communicator (collective: every rank closes) and frees it.
static inline void dist_close(Dist *d) {
    if (!d) return;
    d->ops->close(d);
    free(d);
}

// The CUDA backend's communicator (kernels/dist_nccl.cu, in GPU builds when nvcc has NCCL beside
// it; weak here, so that a build without it links and says so): one NCCL communicator over the
// ranks of parent (whose unique id it broadcasts through parent), on the backend's GPU; parent then
// serves the control collectives and is closed with it.
Dist *dist_open_nccl(Dist *parent, Backend *be) __attribute__((weak));
const char *dist_nccl_version(void) __attribute__((weak));

#ifdef __cplusplus
}
#endif

#endif
