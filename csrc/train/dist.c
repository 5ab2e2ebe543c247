// dist: the communicator interface, the single-process communicator and the choice of communicator.
#define _GNU_SOURCE
#include "dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist_mpi.h"
#include "ops.h"
#include "train_config.h"  // GradReduceDtype
#include "util.h"

_Static_assert((int)DIST_GRAD_F32 == (int)GRAD_REDUCE_FP32 && (int)DIST_GRAD_BF16 == (int)GRAD_REDUCE_BF16,
               "comm.h's gradient dtypes are the values of [train] grad_reduce_dtype");

// ---- single process: every collective is the identity ----------------------------------------
static void single_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n) { (void)d, (void)be, (void)buf, (void)n; }
static void single_allreduce_sum_scalars(Dist *d, Backend *be, double *buf, size_t n) {
    (void)d, (void)be, (void)buf, (void)n;
}
// part = full[first, first + count): the one rank's part is the whole buffer
static void single_reduce_scatter_mean(Dist *d, Backend *be, const float *full, float *part, size_t total) {
    (void)d;
    if (part != full) be->ops->copy(be, part, full, total * sizeof(float));
}
static void single_allgather(Dist *d, Backend *be, float *full, size_t total) { (void)d, (void)be, (void)full, (void)total; }
static long single_max(Dist *d, long v) {
    (void)d;
    return v;
}
static void single_broadcast(Dist *d, void *buf, size_t n) { (void)d, (void)buf, (void)n; }
static void single_gather(Dist *d, const float *part, float *full, size_t total) {
    (void)d;
    if (full != part) memcpy(full, part, total * sizeof(float));
}
static void single_barrier(Dist *d) { (void)d; }
static void single_abort(Dist *d, int code) {
    (void)d;
    exit(code);
}
static void single_close(Dist *d) { (void)d; }
// grads_ready and grads_ready_part are NULL: one process has nothing to exchange, in any dtype

static const DistOps k_single = {
    .allreduce_mean = single_allreduce_mean,
    .allreduce_sum_scalars = single_allreduce_sum_scalars,
    .grads_ready = NULL,
    .reduce_scatter_mean = single_reduce_scatter_mean,
    .allgather = single_allgather,
    .max = single_max,
    .broadcast = single_broadcast,
    .gather = single_gather,
    .barrier = single_barrier,
    .abort = single_abort,
    .close = single_close,
    .grads_ready_part = NULL,
};

Dist *dist_open_single(void) {
    Dist *d = xcalloc(1, sizeof *d);
    d->name = "single";
    snprintf(d->launcher, sizeof d->launcher, "none");
    d->rank = 0;
    d->world_size = 1;
    d->local_rank = 0;
    d->ops = &k_single;
    return d;
}

// ---- choosing the communicator ---------------------------------------------------------------
// The launcher that started this process, from the variables it sets; "" when none. *ranks gets
// the world size it announces (0 when it does not say).
static const char *detect_launcher(long *ranks) {
    static const struct {
        const char *size_var, *name;
    } k[] = {
        {"OMPI_COMM_WORLD_SIZE", "mpirun (Open MPI)"},
        {"PMI_SIZE", "mpiexec (PMI)"},
        {"PMIX_SIZE", "a PMIx launcher"},
        {"SLURM_NTASKS", "srun"},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        const char *v = getenv(k[i].size_var);
        // SLURM_NTASKS is also set inside an sbatch script; only a task of srun has SLURM_STEP_ID
        if (!v || (!strcmp(k[i].size_var, "SLURM_NTASKS") && !getenv("SLURM_STEP_ID"))) continue;
        *ranks = strtol(v, NULL, 10);
        return k[i].name;
    }
    *ranks = 0;
    return "";
}

Dist *dist_open(void) {
    long ranks;
    const char *launcher = detect_launcher(&ranks);
    if (!launcher[0]) return dist_open_single();
#ifdef GIVT_WITH_MPI
    return dist_open_mpi(launcher);
#else
    if (ranks > 1) {
        givt_fail("started by %s with %ld ranks, but this build has no MPI: install MPI (Debian: libopenmpi-dev "
                  "openmpi-bin) and rebuild (make finds mpicc); givt-train --version says what is built in",
                  launcher, ranks);
        return NULL;
    }
    return dist_open_single();
#endif
}

Dist *dist_for_backend(Dist *d, Backend *be) {
    int host_memory = (be->caps & BACKEND_CAP_HOST_MEMORY) != 0;
    const char *force = getenv("GIVT_DIST");  // "nccl": NCCL even for one rank (scripts/gpu_check.sh)
    int want_nccl = !host_memory && (d->world_size > 1 || (force && !strcmp(force, "nccl")));
    if (!want_nccl) return d;  // host memory, or one rank: nothing to reduce on the device
    if (dist_open_nccl) return dist_open_nccl(d, be);
    givt_fail("%d ranks on the %s backend need NCCL, and this build has none (nccl.h was not found beside nvcc); "
              "givt-train --version says what is built in",
              d->world_size, be->name);
    return NULL;
}

const char *dist_build_info(void) {
    static char buf[160];
    buf[0] = '\0';
#ifdef GIVT_WITH_MPI
    snprintf(buf, sizeof buf, "MPI (%s)", dist_mpi_version());
#endif
    if (dist_nccl_version) {
        size_t n = strlen(buf);
        snprintf(buf + n, sizeof buf - n, "%sNCCL %s", n ? ", " : "", dist_nccl_version());
    }
    return buf[0] ? buf : "none (single process only)";
}

// ---- dispatch --------------------------------------------------------------------------------
int dist_set_grad_dtype(Dist *d, int dtype) {
    if (dtype != DIST_GRAD_F32 && dtype != DIST_GRAD_BF16)
        return givt_fail("[train] grad_reduce_dtype: unknown dtype %d (fp32 or bf16)", dtype);
    d->grad_dtype = dtype;
    return 0;
}

// GIVT_DIST_OVERLAP=0: no reduction starts during backward (dist.h)
static int overlap_off(void) {
    static int off = -1;
    if (off < 0) {
        const char *v = getenv("GIVT_DIST_OVERLAP");
        off = v && !strcmp(v, "0");
    }
    return off;
}

void dist_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n) { d->ops->allreduce_mean(d, be, buf, n); }
void dist_allreduce_sum_scalars(Dist *d, Backend *be, double *buf, size_t n) {
    d->ops->allreduce_sum_scalars(d, be, buf, n);
}
void dist_grads_ready(Dist *d, Backend *be, float *buf, size_t first, size_t count) {
    if (d->ops->grads_ready && !overlap_off()) d->ops->grads_ready(d, be, buf, first, count);
}
void dist_grads_ready_part(Dist *d, Backend *be, const float *full, float *part, size_t total, size_t first,
                           size_t count) {
    if (d->ops->grads_ready_part && !overlap_off()) d->ops->grads_ready_part(d, be, full, part, total, first, count);
}
void dist_reduce_scatter_mean(Dist *d, Backend *be, const float *full, float *part, size_t total) {
    d->ops->reduce_scatter_mean(d, be, full, part, total);
}
void dist_allgather(Dist *d, Backend *be, float *full, size_t total) { d->ops->allgather(d, be, full, total); }
long dist_max(Dist *d, long v) { return d->ops->max(d, v); }
int dist_any(Dist *d, int flag) { return d->ops->max(d, flag != 0) != 0; }
void dist_broadcast(Dist *d, void *buf, size_t n) { d->ops->broadcast(d, buf, n); }
void dist_gather(Dist *d, const float *part, float *full, size_t total) { d->ops->gather(d, part, full, total); }
void dist_barrier(Dist *d) { d->ops->barrier(d); }
void dist_abort(Dist *d, int code) { d->ops->abort(d, code); }

int dist_check_same(Dist *d, const void *bytes, size_t n, int *first_bad, char **root_copy) {
    unsigned long long len = n;
    dist_broadcast(d, &len, sizeof len);
    char *root = xcalloc(len + 1, 1);
    if (d->rank == 0) memcpy(root, bytes, n);
    dist_broadcast(d, root, len);
    int differs = len != n || memcmp(root, bytes, n) != 0;
    if (root_copy) *root_copy = root;
    else free(root);
    // the lowest differing rank r as the largest world_size - r
    long worst = dist_max(d, differs ? (long)(d->world_size - d->rank) : 0);
    *first_bad = worst ? d->world_size - (int)worst : -1;
    return worst ? -1 : 0;
}
