// dist_nccl: the NCCL communicator (the contract of csrc/backend/comm.h) for gradients in GPU memory. One NCCL
// communicator per job, its unique id broadcast by the parent communicator (MPI, or the single
// process for one rank); the parent keeps serving the control collectives (max, broadcast, gather,
// barrier). Gradient buckets handed over by grads_ready are all-reduced (ncclAvg) on a stream of
// their own as soon as the compute stream has finished them, so that the reduction of layer l
// overlaps the backward of the layers before it; allreduce_mean then reduces what was not handed
// over and makes the compute stream wait for the communication stream. Under ZeRO-1 grads_ready_part
// likewise starts, per range, the reduction of its overlap with each rank's part to that rank
// (ncclReduce, grouped), and reduce_scatter_mean reduces the rest and waits.
// [train] grad_reduce_dtype = bf16 (Dist.grad_dtype): each range is rounded to bf16 into a staging
// buffer (kernels/reduce_convert.cu, on the communication stream), reduced there in place with
// ncclBfloat16 / ncclSum (NCCL rounds every partial sum to bf16: per hop), and its mean written back
// as float32 (a second kernel: float(sum) * 1 / world_size) into the gradients (ZeRO-1: this rank's
// part of it into part). Float32 ranges use ncclFloat / ncclAvg in place, as before.
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
    size_t *first, *count;    // the buckets handed over since the last allreduce_mean / reduce_scatter_mean
    void *stage;              // bf16: the gradients' bf16 copy (the whole buffer's positions), device memory
    size_t stage_cap;         // its elements
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

// The bf16 staging buffer, n elements at least (sized to the whole gradient buffer at the first
// range of the first step: the head, handed over first, ends the buffer). Growing it later waits for
// the device first, so that no pending reduction loses its memory.
__nv_bfloat16 *stage_for(NcclCtx *c, size_t n) {
    if (n > c->stage_cap) {
        if (c->stage) {
            CUDA_CHECK(cudaDeviceSynchronize());
            CUDA_CHECK(cudaFree(c->stage));
            c->stage = NULL;
        }
        CUDA_CHECK(cudaMalloc(&c->stage, (n ? n : 1) * sizeof(__nv_bfloat16)));
        c->stage_cap = n;
    }
    return (__nv_bfloat16 *)c->stage;
}

// The communication stream waits for what the compute stream has enqueued so far (the range's
// gradients); the range is noted as handed over.
void comm_after_compute(Dist *d, Backend *be, size_t first, size_t count) {
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
}

// One bucket of the all-reduce: buf[first, first + count) = the mean over ranks, on the comm stream.
void bucket_launch(Dist *d, Backend *be, float *buf, size_t first, size_t count) {
    NcclCtx *c = nctx(d);
    comm_after_compute(d, be, first, count);
    if (d->grad_dtype != DIST_GRAD_BF16) {
        NCCL_CHECK(ncclAllReduce(buf + first, buf + first, count, ncclFloat, ncclAvg, c->comm, c->comm_stream));
        return;
    }
    __nv_bfloat16 *s = stage_for(c, first + count) + first;
    cuda_grads_to_bf16(be, c->comm_stream, s, buf + first, count);
    NCCL_CHECK(ncclAllReduce(s, s, count, ncclBfloat16, ncclSum, c->comm, c->comm_stream));
    cuda_grads_from_bf16(be, c->comm_stream, buf + first, s, count, 1.0f / (float)d->world_size);
}

// ZeRO-1, one range [first, first + count) of full: its overlap with each rank r's part reduced to r
// (ncclReduce per overlap, grouped), on the comm stream; float32 from full into part (ncclAvg), or
// bf16 in place in the staging buffer (ncclSum), this rank's overlap then converted into part.
void part_launch(Dist *d, Backend *be, const float *full, float *part, size_t total, size_t first, size_t count) {
    NcclCtx *c = nctx(d);
    comm_after_compute(d, be, first, count);
    const int bf16 = d->grad_dtype == DIST_GRAD_BF16;
    __nv_bfloat16 *s = bf16 ? stage_for(c, total) : NULL;
    if (bf16) cuda_grads_to_bf16(be, c->comm_stream, s + first, full + first, count);
    const DistPart mine = dist_part(total, d->world_size, d->rank);
    size_t my_lo = 0, my_hi = 0;
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < d->world_size; r++) {
        const DistPart o = dist_overlap(dist_part(total, d->world_size, r), first, count);
        const size_t lo = o.first, hi = o.first + o.count;
        if (o.count == 0) continue;
        const int me = r == d->rank;
        if (me) my_lo = lo, my_hi = hi;
        if (bf16)
            NCCL_CHECK(ncclReduce(s + lo, me ? s + lo : NULL, hi - lo, ncclBfloat16, ncclSum, r, c->comm,
                                  c->comm_stream));
        else
            NCCL_CHECK(ncclReduce(full + lo, me ? part + (lo - mine.first) : NULL, hi - lo, ncclFloat, ncclAvg, r,
                                  c->comm, c->comm_stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    if (bf16 && my_hi > my_lo)
        cuda_grads_from_bf16(be, c->comm_stream, part + (my_lo - mine.first), s + my_lo, my_hi - my_lo,
                             1.0f / (float)d->world_size);
}

// The compute stream waits for every reduction enqueued on the comm stream; the ranges are forgotten.
void compute_after_comm(Dist *d, Backend *be) {
    NcclCtx *c = nctx(d);
    cudaEvent_t done = c->events[0];  // reused: every range's wait was enqueued already
    CUDA_CHECK(cudaEventRecord(done, c->comm_stream));
    CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(be), done, 0));
    c->nevents = 0;
}

// The ranges of [0, total) that no range handed over covered (all of it when none was) are launched
// now (launch(first, count): their waits on the compute stream and reductions are appended after the
// ranges walked), then the compute stream waits for every reduction.
template <typename Launch>
void launch_gaps(Dist *d, Backend *be, size_t total, Launch launch) {
    NcclCtx *c = nctx(d);
    const int launched = c->nevents;
    dist_sort_ranges(c->first, c->count, launched);
    int i = 0;
    size_t at = 0;
    DistPart gap;
    while (dist_next_gap(c->first, c->count, launched, total, &i, &at, &gap)) launch(gap.first, gap.count);
    compute_after_comm(d, be);
}

void nccl_grads_ready(Dist *d, Backend *be, float *buf, size_t first, size_t count) {
    if (count) bucket_launch(d, be, buf, first, count);
}

// buf = the mean over ranks: the parts no bucket covered are reduced now (all of it when nothing
// was handed over), then the compute stream waits for every reduction.
void nccl_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n) {
    NcclCtx *c = nctx(d);
    if (n == 0 && c->nevents == 0) return;
    launch_gaps(d, be, n, [&](size_t first, size_t count) { bucket_launch(d, be, buf, first, count); });
}

void nccl_allreduce_sum_scalars(Dist *d, Backend *be, double *buf, size_t n) {
    NCCL_CHECK(ncclAllReduce(buf, buf, n, ncclDouble, ncclSum, nctx(d)->comm, cuda_stream(be)));
}

void nccl_grads_ready_part(Dist *d, Backend *be, const float *full, float *part, size_t total, size_t first,
                           size_t count) {
    if (count) part_launch(d, be, full, part, total, first, count);
}

// ZeRO-1: rank r's part reduced to r. Nothing handed over, float32: ncclReduce per part, grouped
// (parts may differ in size), on the compute stream. Otherwise the gaps between the ranges handed
// over (all of it when none was) as ranges of their own on the comm stream, which the compute
// stream then waits for. Per element the same reduction either way (an ncclReduce to the same root,
// only cut into other pieces): the same bits as long as NCCL picks the same algorithm and order for
// the smaller pieces (not promised by NCCL).
void nccl_reduce_scatter_mean(Dist *d, Backend *be, const float *full, float *part, size_t total) {
    NcclCtx *c = nctx(d);
    if (c->nevents || d->grad_dtype == DIST_GRAD_BF16) {
        if (total == 0 && c->nevents == 0) return;
        launch_gaps(d, be, total,
                    [&](size_t first, size_t count) { part_launch(d, be, full, part, total, first, count); });
        return;
    }
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
    if (c->stage) CUDA_CHECK(cudaFree(c->stage));
    dist_close(c->parent);
    free(c);
    g_dist = NULL;
}

const DistOps k_nccl = {
    nccl_allreduce_mean, nccl_allreduce_sum_scalars, nccl_grads_ready, nccl_reduce_scatter_mean, nccl_allgather,
    nccl_max,            nccl_broadcast,             nccl_gather,      nccl_barrier,             nccl_abort,
    nccl_close,          nccl_grads_ready_part,
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
