// dist: the communicator interface and its single-process implementation.
#include "dist.h"

#include <stdlib.h>

#include "util.h"

static void single_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n) { (void)d, (void)be, (void)buf, (void)n; }
static void single_allreduce_sum_scalars(Dist *d, Backend *be, double *buf, size_t n) {
    (void)d, (void)be, (void)buf, (void)n;
}
static int single_any(Dist *d, int flag) {
    (void)d;
    return flag != 0;
}
static void single_barrier(Dist *d) { (void)d; }
static void single_close(Dist *d) { (void)d; }

static const DistOps k_single = {
    .allreduce_mean = single_allreduce_mean,
    .allreduce_sum_scalars = single_allreduce_sum_scalars,
    .grads_ready = NULL,
    .any = single_any,
    .barrier = single_barrier,
    .close = single_close,
};

Dist *dist_open_single(void) {
    Dist *d = xcalloc(1, sizeof *d);
    d->name = "single";
    d->rank = 0;
    d->world_size = 1;
    d->local_rank = 0;
    d->ops = &k_single;
    return d;
}

void dist_close(Dist *d) {
    if (!d) return;
    d->ops->close(d);
    free(d);
}

void dist_allreduce_mean(Dist *d, Backend *be, float *buf, size_t n) { d->ops->allreduce_mean(d, be, buf, n); }
void dist_allreduce_sum_scalars(Dist *d, Backend *be, double *buf, size_t n) {
    d->ops->allreduce_sum_scalars(d, be, buf, n);
}
void dist_grads_ready(Dist *d, Backend *be, float *buf, size_t first, size_t count) {
    if (d->ops->grads_ready) d->ops->grads_ready(d, be, buf, first, count);
}
int dist_any(Dist *d, int flag) { return d->ops->any(d, flag); }
void dist_barrier(Dist *d) { d->ops->barrier(d); }
