// dist_mpi: the MPI communicator (MPI_COMM_WORLD) for buffers in host memory (the CPU backend), and
// the control collectives of every multi-process job. Built when make finds mpicc (GIVT_WITH_MPI).
// Gradients travel as float32 (MPI_SUM), or with [train] grad_reduce_dtype = bf16 as bfloat16
// (MPI_UINT16_T) through a commutative user-defined MPI_Op that adds two bf16 values in float32 and
// rounds the sum to bf16 (nearest even): the rounding happens at every reduction hop (each time MPI
// applies the op to two partial sums), as NCCL's bf16 sums do, so that the result depends (in its
// last bf16 bits) on the order MPI adds the ranks in; the mean (times 1 / world_size) is then taken
// in float32 back into the float32 gradients. Under ZeRO-1 the reduction of each range of gradients
// that backward finishes starts at once (grads_ready_part: MPI_Ireduce of its overlap with each
// rank's part to that rank); reduce_scatter_mean reduces the rest and waits for all of it.
#ifdef GIVT_WITH_MPI
#define _GNU_SOURCE
#include <limits.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <stdlib.h>
#include <string.h>

#include "dist_mpi.h"
#include "half.h"
#include "util.h"

// One MPI call's count at most: MPI counts are int; larger buffers go in pieces.
#define MPI_PIECE ((size_t)1 << 30)

// Every MPI call is checked (errors return rather than abort: MPI_ERRORS_RETURN on the
// communicators); a failure names the call and ends the job, since the other ranks would wait for
// this one forever.
#define MPI_CHECK(call)                                                                   \
    do {                                                                                  \
        int mpi_rc_ = (call);                                                             \
        if (mpi_rc_ != MPI_SUCCESS) mpi_failed(#call, mpi_rc_, __FILE__, __LINE__);       \
    } while (0)

static int g_rank = -1;

static void mpi_failed(const char *call, int code, const char *file, int line) {
    char text[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(code, text, &len);
    fprintf(stderr, "givt-train: rank %d: %s failed at %s:%d: %s; ending the job\n", g_rank, call, file, line, text);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

// The MPI communicator's own state (Dist.ctx): the bf16 payloads and ZeRO-1's pending reductions.
typedef struct {
    MPI_Op bf16_sum;         // commutative: two bf16 added in float32, the sum rounded to bf16
    uint16_t *stage;         // the bf16 copy of the gradients sent (and, in place, the sums received)
    size_t stage_cap;
    MPI_Request *reqs;       // ZeRO-1: the MPI_Ireduce started since the last reduce_scatter_mean
    int nreqs, reqs_cap;
    size_t *first, *count;   // ZeRO-1: the ranges handed over since the last reduce_scatter_mean
    int nranges, ranges_cap;
} MpiCtx;

static MpiCtx *mctx(Dist *d) { return (MpiCtx *)d->ctx; }

static void mpi_scale(float *buf, size_t n, float s) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) buf[i] *= s;
}

// The MPI_Op of bf16 payloads: inout[i] = bf16(float(in[i]) + float(inout[i])), rounded to nearest
// even at every application (every hop of the reduction).
static void bf16_sum(void *in, void *inout, int *len, MPI_Datatype *type) {
    (void)type;
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (int i = 0; i < *len; i++) b[i] = half_f32_to_bf16(half_bf16_to_f32(a[i]) + half_bf16_to_f32(b[i]));
}

static void to_bf16(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = half_f32_to_bf16(src[i]);
}

// dst = float(src) * s: the mean of the bf16 sums, in float32
static void from_bf16_scaled(float *dst, const uint16_t *src, size_t n, float s) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = half_bf16_to_f32(src[i]) * s;
}

// The bf16 staging buffer, n elements at least. It never moves under a pending MPI_Ireduce: ZeRO-1
// sizes it to the whole buffer at the first range of a step (nothing pending then).
static uint16_t *stage_for(MpiCtx *c, size_t n) {
    if (n > c->stage_cap) {
        if (c->nreqs) givt_die("dist_mpi: the bf16 buffer would move under %d pending reductions", c->nreqs);
        free(c->stage);
        c->stage = xmalloc((n ? n : 1) * sizeof(uint16_t));
        c->stage_cap = n;
    }
    return c->stage;
}

static void mpi_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n) {
    (void)be;  // host memory (dist_for_backend keeps device memory away)
    if (d->grad_dtype == DIST_GRAD_BF16) {
        MpiCtx *c = mctx(d);
        uint16_t *s = stage_for(c, n);
        to_bf16(s, buf, n);
        for (size_t off = 0; off < n; off += MPI_PIECE) {
            size_t k = n - off < MPI_PIECE ? n - off : MPI_PIECE;
            MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, s + off, (int)k, MPI_UINT16_T, c->bf16_sum, MPI_COMM_WORLD));
        }
        from_bf16_scaled(buf, s, n, 1.0f / (float)d->world_size);
        return;
    }
    for (size_t off = 0; off < n; off += MPI_PIECE) {
        size_t c = n - off < MPI_PIECE ? n - off : MPI_PIECE;
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
    }
    mpi_scale(buf, n, 1.0f / (float)d->world_size);
}

static void mpi_allreduce_sum_scalars(Dist *d, Backend *be, double *buf, size_t n) {
    (void)d, (void)be;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
}

// ZeRO-1, one range [first, first + count) of full: its overlap with each rank r's part reduced to r
// (MPI_Ireduce per overlap and piece: float32 from full into part, or bf16 in place in the staging
// buffer, which holds the whole buffer's positions). The requests are completed by reduce_scatter_mean.
static void start_range(Dist *d, const float *full, float *part, size_t total, size_t first, size_t count) {
    MpiCtx *c = mctx(d);
    int bf16 = d->grad_dtype == DIST_GRAD_BF16;
    uint16_t *s = bf16 ? stage_for(c, total) : NULL;
    if (bf16) to_bf16(s + first, full + first, count);
    for (int r = 0; r < d->world_size; r++) {
        DistPart p = dist_part(total, d->world_size, r), o = dist_overlap(p, first, count);
        size_t hi = o.first + o.count;
        for (size_t off = o.first; off < hi; off += MPI_PIECE) {
            size_t k = hi - off < MPI_PIECE ? hi - off : MPI_PIECE;
            if (c->nreqs == c->reqs_cap) {
                c->reqs_cap = c->reqs_cap ? 2 * c->reqs_cap : 64;
                c->reqs = xrealloc(c->reqs, (size_t)c->reqs_cap * sizeof *c->reqs);
            }
            MPI_Request *req = &c->reqs[c->nreqs++];
            int mine = r == d->rank;
            if (bf16)
                MPI_CHECK(MPI_Ireduce(mine ? MPI_IN_PLACE : s + off, mine ? s + off : NULL, (int)k, MPI_UINT16_T,
                                      c->bf16_sum, r, MPI_COMM_WORLD, req));
            else
                MPI_CHECK(MPI_Ireduce(full + off, mine ? part + (off - p.first) : NULL, (int)k, MPI_FLOAT, MPI_SUM, r,
                                      MPI_COMM_WORLD, req));
        }
    }
}

static void mpi_grads_ready_part(Dist *d, Backend *be, const float *full, float *part, size_t total, size_t first,
                                 size_t count) {
    (void)be;
    MpiCtx *c = mctx(d);
    if (!count) return;
    if (c->nranges == c->ranges_cap) {
        c->ranges_cap = c->ranges_cap ? 2 * c->ranges_cap : 64;
        c->first = xrealloc(c->first, (size_t)c->ranges_cap * sizeof(size_t));
        c->count = xrealloc(c->count, (size_t)c->ranges_cap * sizeof(size_t));
    }
    c->first[c->nranges] = first;
    c->count[c->nranges++] = count;
    start_range(d, full, part, total, first, count);
}

// Rank r's part of full, reduced to r. Without ranges handed over (and in float32): one MPI_Reduce
// per part and piece. Reduce-scatter with unequal parts is MPI_Reduce_scatter's job, but its counts
// are int; this keeps one path for any size. Otherwise the gaps between the ranges handed over (all
// of it when none was) start as ranges of their own, and every pending reduction is waited for. In
// float32 with 2 ranks both give the same bits (a + b is b + a); with more ranks MPI_Ireduce may add
// the ranks in another order than MPI_Reduce (the last bits of a sum may differ).
static void mpi_reduce_scatter_mean(Dist *d, Backend *be, const float *full, float *part, size_t total) {
    (void)be;
    MpiCtx *c = mctx(d);
    DistPart mine = dist_part(total, d->world_size, d->rank);
    if (c->nranges || d->grad_dtype == DIST_GRAD_BF16) {
        dist_sort_ranges(c->first, c->count, c->nranges);
        int i = 0;
        size_t at = 0;
        DistPart gap;  // not handed over: its reductions start now
        while (dist_next_gap(c->first, c->count, c->nranges, total, &i, &at, &gap))
            start_range(d, full, part, total, gap.first, gap.count);
        if (c->nreqs) MPI_CHECK(MPI_Waitall(c->nreqs, c->reqs, MPI_STATUSES_IGNORE));
        c->nreqs = c->nranges = 0;
        if (d->grad_dtype == DIST_GRAD_BF16)
            from_bf16_scaled(part, stage_for(c, total) + mine.first, mine.count, 1.0f / (float)d->world_size);
        else
            mpi_scale(part, mine.count, 1.0f / (float)d->world_size);
        return;
    }
    for (int r = 0; r < d->world_size; r++) {
        DistPart p = dist_part(total, d->world_size, r);
        for (size_t off = 0; off < p.count; off += MPI_PIECE) {
            size_t c = p.count - off < MPI_PIECE ? p.count - off : MPI_PIECE;
            MPI_CHECK(MPI_Reduce(full + p.first + off, r == d->rank ? part + off : NULL, (int)c, MPI_FLOAT, MPI_SUM, r,
                                 MPI_COMM_WORLD));
        }
    }
    mpi_scale(part, mine.count, 1.0f / (float)d->world_size);
}

static void mpi_allgather(Dist *d, Backend *be, float *full, size_t total) {
    (void)be;
    for (int r = 0; r < d->world_size; r++) {
        DistPart p = dist_part(total, d->world_size, r);
        for (size_t off = 0; off < p.count; off += MPI_PIECE) {
            size_t c = p.count - off < MPI_PIECE ? p.count - off : MPI_PIECE;
            MPI_CHECK(MPI_Bcast(full + p.first + off, (int)c, MPI_FLOAT, r, MPI_COMM_WORLD));
        }
    }
}

static long mpi_max(Dist *d, long v) {
    (void)d;
    long out = v;
    MPI_CHECK(MPI_Allreduce(&v, &out, 1, MPI_LONG, MPI_MAX, MPI_COMM_WORLD));
    return out;
}

static void mpi_broadcast(Dist *d, void *buf, size_t n) {
    (void)d;
    for (size_t off = 0; off < n; off += MPI_PIECE) {
        size_t c = n - off < MPI_PIECE ? n - off : MPI_PIECE;
        MPI_CHECK(MPI_Bcast((char *)buf + off, (int)c, MPI_BYTE, 0, MPI_COMM_WORLD));
    }
}

// Rank 0 receives each other rank's part in turn (point to point: any size, no int displacements).
static void mpi_gather(Dist *d, const float *part, float *full, size_t total) {
    for (int r = 0; r < d->world_size; r++) {
        DistPart p = dist_part(total, d->world_size, r);
        for (size_t off = 0; off < p.count; off += MPI_PIECE) {
            size_t c = p.count - off < MPI_PIECE ? p.count - off : MPI_PIECE;
            if (d->rank == 0 && r == 0) memcpy(full + p.first + off, part + off, c * sizeof(float));
            else if (d->rank == 0)
                MPI_CHECK(MPI_Recv(full + p.first + off, (int)c, MPI_FLOAT, r, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
            else if (d->rank == r) MPI_CHECK(MPI_Send(part + off, (int)c, MPI_FLOAT, 0, 7, MPI_COMM_WORLD));
        }
    }
}

static void mpi_barrier(Dist *d) {
    (void)d;
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
}

static void mpi_abort(Dist *d, int code) {
    (void)d;
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

static void mpi_close(Dist *d) {
    MpiCtx *c = mctx(d);
    if (c) {
        MPI_Op_free(&c->bf16_sum);
        free(c->stage);
        free(c->reqs);
        free(c->first);
        free(c->count);
        free(c);
        d->ctx = NULL;
    }
    MPI_Finalize();
}

static const DistOps k_mpi = {
    .allreduce_mean = mpi_allreduce_mean,
    .allreduce_sum_scalars = mpi_allreduce_sum_scalars,
    .grads_ready = NULL,  // host memory: one blocking all-reduce after backward (ZeRO-1 overlaps: below)
    .reduce_scatter_mean = mpi_reduce_scatter_mean,
    .allgather = mpi_allgather,
    .max = mpi_max,
    .broadcast = mpi_broadcast,
    .gather = mpi_gather,
    .barrier = mpi_barrier,
    .abort = mpi_abort,
    .close = mpi_close,
    .grads_ready_part = mpi_grads_ready_part,
};

const char *dist_mpi_version(void) {
    static char text[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(text, &len);
    text[strcspn(text, ",\n")] = '\0';  // "Open MPI v4.1.4, package: ..." -> "Open MPI v4.1.4"
    return text;
}

Dist *dist_open_mpi(const char *launcher) {
    int provided = 0;
    // FUNNELED: OpenMP threads compute, only the main thread calls MPI
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        givt_fail("MPI_Init_thread failed (started by %s)", launcher);
        return NULL;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    // when the launcher that started this rank (mpirun, orted, slurmstepd) dies, this rank gets
    // SIGTERM: it stops with the others at the next agreed step instead of training on alone
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    Dist *d = xcalloc(1, sizeof *d);
    d->name = "mpi";
    snprintf(d->launcher, sizeof d->launcher, "%s", launcher);
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &d->rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &d->world_size));
    g_rank = d->rank;
    MPI_Comm node;  // the ranks sharing this node's memory: the local rank picks the GPU
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &d->local_rank));
    MPI_CHECK(MPI_Comm_free(&node));
    MpiCtx *c = xcalloc(1, sizeof *c);
    MPI_CHECK(MPI_Op_create(bf16_sum, 1, &c->bf16_sum));
    d->ctx = c;
    d->ops = &k_mpi;
    return d;
}

#else
// A build without MPI: nothing here (dist.c opens the single-process communicator).
typedef int dist_mpi_not_built;
#endif
