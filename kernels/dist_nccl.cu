// dist_nccl: the NCCL communicator (the contract of csrc/backend/comm.h) for gradients in GPU memory. One NCCL
// communicator per job, its unique id broadcast by the parent communicator (MPI, or the single
// process for one rank); the parent keeps serving the control collectives (max, broadcast, gather,
// barrier). Gradient buckets handed over by grads_ready are all-reduced (ncclAvg) on a stream of
// their own as soon as the compute stream has finished them, so that the reduction of layer l
// overlaps the backward of the layers before it; allreduce_mean then reduces what was not handed
// over and makes the compute stream wait for the communication stream.
// Built only for the GPU (nvcc, with NCCL found beside it); the CPU emulation has no NCCL.
#include "launch.cuh"

#include <nccl.h>
#include <string.h>

#include "comm.h"

#if NCCL_VERSION_CODE < 21000
#error "NCCL 2.10 or newer is needed (ncclAvg)"
#endif

namespace {

#define NCCL_CHECK(call)                                                                            \
    do {                                                                                            \
        ncclResult_t nccl_rc_ = (call);                                                             \
        if (nccl_rc_ != ncclSuccess) nccl_failed(#call, nccl_rc_, __FILE__, __LINE__);              \
    } while (0)

struct NcclCtx {
    Dist *parent;             // control collectives (mpi or single)
    ncclComm_t comm;
    cudaStream_t comm_stream; // the buckets' reductions
    cudaEvent_t *events;      // one per bucket of a step: "the compute stream finished this bucket"
    int nevents, cap;
    size_t *first, *count;    // the buckets handed over since the last allreduce_mean
};

Dist *g_dist;  // for the failure message

void nccl_failed(const char *call, ncclResult_t rc, const char *file, int line) {
    int rank = g_dist ? g_dist->rank : -1;
    fprintf(stderr, "givt-train: rank %d: %s failed at %s:%d: %s (%s)\n", rank, call, file, line,
            ncclGetErrorString(rc), ncclGetLastError(NULL));
    if (rc == ncclSystemError || rc == ncclRemoteError)
        fprintf(stderr, "---> HINT: a peer rank may have died, or the network between the nodes failed; NCCL_DEBUG=WARN "
                        "says more\n");
    if (g_dist) g_dist->ops->abort(g_dist, 1);
    exit(1);
}

NcclCtx *nctx(Dist *d) { return (NcclCtx *)d->ctx; }

void bucket_launch(Dist *d, Backend *be, float *buf, size_t first, size_t count) {
    NcclCtx *c = nctx(d);
    if (c->nevents == c->cap) {
        int cap = c->cap ? 2 * c->cap : 64;
        c->events = (cudaEvent_t *)xrealloc(c->events, (size_t)cap * sizeof *c->events);
        c->first = (size_t *)xrealloc(c->first, (size_t)cap * sizeof(size_t));
        c->count = (size_t *)xrealloc(c->count, (size_t)cap * sizeof(size_t));
        for (int i = c->cap; i < cap; i++) CUDA_CHECK(cudaEventCreateWithFlags(&c->events[i], cudaEventDisableTiming));
        c->cap = cap;
    }
    int i = c->nevents++;
    c->first[i] = first;
    c->count[i] = count;
    CUDA_CHECK(cudaEventRecord(c->events[i], cuda_stream(be)));
    CUDA_CHECK(cudaStreamWaitEvent(c->comm_stream, c->events[i], 0));
    NCCL_CHECK(ncclAllReduce(buf + first, buf + first, count, ncclFloat, ncclAvg, c->comm, c->comm_stream));
}

void nccl_grads_ready(Dist *d, Backend *be, float *buf, size_t first, size_t count) {
    if (count) bucket_launch(d, be, buf, first, count);
}

// buf = the mean over ranks: the parts no bucket covered are reduced now (all of it when nothing
// was handed over), then the compute stream waits for every reduction.
void nccl_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n) {
    NcclCtx *c = nctx(d);
    if (n == 0 && c->nevents == 0) return;
    int launched = c->nevents;
    for (int i = 1; i < launched; i++)  // sort the buckets by first (insertion: tens of them)
        for (int j = i; j > 0 && c->first[j - 1] > c->first[j]; j--) {
            size_t f = c->first[j], k = c->count[j];
            c->first[j] = c->first[j - 1], c->count[j] = c->count[j - 1];
            c->first[j - 1] = f, c->count[j - 1] = k;
        }
    size_t at = 0;
    for (int i = 0; i <= launched; i++) {
        size_t next = i < launched ? c->first[i] : n;
        if (next > at) bucket_launch(d, be, buf, at, next - at);  // a gap: not handed over
        if (i < launched && c->first[i] + c->count[i] > at) at = c->first[i] + c->count[i];
    }
    cudaEvent_t done = c->events[0];  // reused: every bucket's wait was enqueued already
    CUDA_CHECK(cudaEventRecord(done, c->comm_stream));
    CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(be), done, 0));
    c->nevents = 0;
}

void nccl_allreduce_sum_scalars(Dist *d, Backend *be, double *buf, size_t n) {
    NCCL_CHECK(ncclAllReduce(buf, buf, n, ncclDouble, ncclSum, nctx(d)->comm, cuda_stream(be)));
}

// ZeRO-1: rank r's part reduced to r (ncclReduce per part, grouped: parts may differ in size)
void nccl_reduce_scatter_mean(Dist *d, Backend *be, const float *full, float *part, size_t total) {
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < d->world_size; r++) {
        DistPart p = dist_part(total, d->world_size, r);
        if (p.count)
            NCCL_CHECK(ncclReduce(full + p.first, r == d->rank ? part : NULL, p.count, ncclFloat, ncclAvg, r,
                                  nctx(d)->comm, cuda_stream(be)));
    }
    NCCL_CHECK(ncclGroupEnd());
}

void nccl_allgather(Dist *d, Backend *be, float *full, size_t total) {
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < d->world_size; r++) {
        DistPart p = dist_part(total, d->world_size, r);
        if (p.count)
            NCCL_CHECK(ncclBroadcast(full + p.first, full + p.first, p.count, ncclFloat, r, nctx(d)->comm,
                                     cuda_stream(be)));
    }
    NCCL_CHECK(ncclGroupEnd());
}

long nccl_max(Dist *d, long v) { return nctx(d)->parent->ops->max(nctx(d)->parent, v); }
void nccl_broadcast(Dist *d, void *buf, size_t n) { nctx(d)->parent->ops->broadcast(nctx(d)->parent, buf, n); }
void nccl_gather(Dist *d, const float *part, float *full, size_t total) {
    nctx(d)->parent->ops->gather(nctx(d)->parent, part, full, total);
}
void nccl_barrier(Dist *d) { nctx(d)->parent->ops->barrier(nctx(d)->parent); }

void nccl_abort(Dist *d, int code) {
    ncclCommAbort(nctx(d)->comm);  // unblocks this rank's pending NCCL work; the parent ends the job
    nctx(d)->parent->ops->abort(nctx(d)->parent, code);
    exit(code);
}

void nccl_close(Dist *d) {
    NcclCtx *c = nctx(d);
    CUDA_CHECK(cudaStreamSynchronize(c->comm_stream));
    NCCL_CHECK(ncclCommDestroy(c->comm));
    for (int i = 0; i < c->cap; i++) CUDA_CHECK(cudaEventDestroy(c->events[i]));
    CUDA_CHECK(cudaStreamDestroy(c->comm_stream));
    free(c->events);
    free(c->first);
    free(c->count);
    dist_close(c->parent);
    free(c);
    g_dist = NULL;
}

const DistOps k_nccl = {
    nccl_allreduce_mean, nccl_allreduce_sum_scalars, nccl_grads_ready, nccl_reduce_scatter_mean, nccl_allgather,
    nccl_max,            nccl_broadcast,             nccl_gather,      nccl_barrier,             nccl_abort,
    nccl_close,
};

}  // namespace

extern "C" const char *dist_nccl_version(void) {
    static char text[32];
    int v = 0;
    ncclGetVersion(&v);
    snprintf(text, sizeof text, "%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    return text;
}

extern "C" Dist *dist_open_nccl(Dist *parent, Backend *be) {
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    Dist *d = (Dist *)xcalloc(1, sizeof *d);
    NcclCtx *c = (NcclCtx *)xcalloc(1, sizeof *c);
    *d = *parent;  // rank, world, local rank, launcher
    d->name = "nccl";
    d->ops = &k_nccl;
    d->ctx = c;
    c->parent = parent;
    g_dist = d;
    if (parent->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    parent->ops->broadcast(parent, &id, sizeof id);
    CUDA_CHECK(cudaSetDevice(cuda_ctx(be)->device));
    int least = 0, greatest = 0;  // the highest priority: reductions go ahead of queued compute
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CUDA_CHECK(cudaStreamCreateWithPriority(&c->comm_stream, cudaStreamNonBlocking, greatest));
    NCCL_CHECK(ncclCommInitRank(&c->comm, parent->world_size, id, parent->rank));
    return d;
}
