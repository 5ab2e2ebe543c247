// dist_mpi: the MPI communicator (MPI_COMM_WORLD) for buffers in host memory (the CPU backend), and
// the control collectives of every multi-process job. Built when make finds mpicc (GIVT_WITH_MPI).
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

static void mpi_scale(float *buf, size_t n, float s) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) buf[i] *= s;
}

static void mpi_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n) {
    (void)be;  // host memory (dist_for_backend keeps device memory away)
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

// Rank r's part of full, reduced to r: one MPI_Reduce per part and piece. Reduce-scatter with
// unequal parts is MPI_Reduce_scatter's job, but its counts are int; this keeps one path for any size.
static void mpi_reduce_scatter_mean(Dist *d, Backend *be, const float *full, float *part, size_t total) {
    (void)be;
    for (int r = 0; r < d->world_size; r++) {
        DistPart p = dist_part(total, d->world_size, r);
        for (size_t off = 0; off < p.count; off += MPI_PIECE) {
            size_t c = p.count - off < MPI_PIECE ? p.count - off : MPI_PIECE;
            MPI_CHECK(MPI_Reduce(full + p.first + off, r == d->rank ? part + off : NULL, (int)c, MPI_FLOAT, MPI_SUM, r,
                                 MPI_COMM_WORLD));
        }
    }
    DistPart mine = dist_part(total, d->world_size, d->rank);
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
    (void)d;
    MPI_Finalize();
}

static const DistOps k_mpi = {
    .allreduce_mean = mpi_allreduce_mean,
    .allreduce_sum_scalars = mpi_allreduce_sum_scalars,
    .grads_ready = NULL,  // host memory: one blocking all-reduce after backward
    .reduce_scatter_mean = mpi_reduce_scatter_mean,
    .allgather = mpi_allgather,
    .max = mpi_max,
    .broadcast = mpi_broadcast,
    .gather = mpi_gather,
    .barrier = mpi_barrier,
    .abort = mpi_abort,
    .close = mpi_close,
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
    d->ops = &k_mpi;
    return d;
}

#else
// A build without MPI: nothing here (dist.c opens the single-process communicator).
typedef int dist_mpi_not_built;
#endif
