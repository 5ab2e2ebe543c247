// test_dist: the communicator seam: the single-process communicator is the identity (in either
// gradient dtype), model_backward reports every gradient as ready exactly once, in the order a
// data-parallel trainer can start reducing them (head and final norm, the layers from the last, then
// embedding and bos), and [train] grad_reduce_dtype reads fp32 and bf16 and refuses anything else,
// naming the key.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist.h"
#include "harness.h"
#include "model.h"
#include "rng.h"
#include "train_config.h"

TEST(dist_single_process_is_the_identity) {
    Dist *d = dist_open_single();
    Backend *be = backend_open("cpu", PRECISION_NO);
    CHECK(d->rank == 0 && d->world_size == 1 && dist_is_root(d));
    float *g = be->ops->alloc(be, 5 * sizeof(float)), host[5] = {1, -2, 3.5f, 0, 7}, back[5];
    be->ops->upload(be, g, host, sizeof host);
    dist_allreduce_mean(d, be, g, 5);
    be->ops->download(be, back, g, sizeof back);
    CHECK(memcmp(host, back, sizeof host) == 0);
    double *s = be->ops->alloc(be, sizeof(double)), v = 2.5, w = 0;
    be->ops->upload(be, s, &v, sizeof v);
    dist_allreduce_sum_scalars(d, be, s, 1);
    be->ops->download(be, &w, s, sizeof w);
    CHECK(w == 2.5);
    CHECK(dist_any(d, 0) == 0 && dist_any(d, 1) == 1);
    dist_barrier(d);
    be->ops->free(be, g);
    be->ops->free(be, s);
    backend_close(be);
    dist_close(d);
}

typedef struct {
    int calls;
    size_t first[64], count[64];
} ReadyLog;

static void log_ready(void *user, size_t first, size_t count) {
    ReadyLog *r = user;
    if (r->calls < 64) {
        r->first[r->calls] = first;
        r->count[r->calls] = count;
    }
    r->calls++;
}

TEST(dist_backward_reports_each_gradient_once_in_order) {
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 3, cfg.hidden_dim = 8, cfg.intermediate_dim = 12, cfg.num_heads = 2, cfg.num_layers = 3;
    cfg.block_size = 5;
    Backend *be = backend_open("cpu", PRECISION_NO);
    GivtModel m;
    CHECK(model_create(&m, &cfg, be) == 0, "%s", givt_last_error());
    Rng rng;
    rng_seed(&rng, 5);
    model_init_params(&m, &rng);
    model_alloc_acts(&m, 2, 5, 1, 0);
    model_alloc_grads(&m);
    float x[2 * 5 * 3];
    for (int i = 0; i < 30; i++) x[i] = (float)rng_normal(&rng);
    float *xd = be->ops->alloc(be, sizeof x);
    be->ops->upload(be, xd, x, sizeof x);
    ReadyLog log = {0};
    m.grads_ready = log_ready;
    m.grads_ready_user = &log;
    model_zero_grads(&m);
    model_forward(&m, &m.w, xd, 2, 5);
    model_loss(&m, m.scalars + SCALAR_LOSS_SUM, 1.0f);
    model_backward(&m, &m.w);
    CHECK(log.calls == cfg.num_layers + 2, "%d reports", log.calls);
    // the ranges tile [0, total) exactly: no parameter twice, none missing
    unsigned char *seen = calloc(m.table.total, 1);
    for (int c = 0; c < log.calls && c < 64; c++)
        for (size_t i = log.first[c]; i < log.first[c] + log.count[c] && i < m.table.total; i++) seen[i]++;
    size_t once = 0;
    for (size_t i = 0; i < m.table.total; i++) once += seen[i] == 1;
    CHECK(once == m.table.total, "%zu of %zu parameters reported exactly once", once, m.table.total);
    free(seen);
    // order: head + final norm first (the end of the table), then layers L-1 .. 0, then embed + bos
    CHECK(log.first[0] == m.table.specs[m.table.norm].offset);
    for (int l = cfg.num_layers - 1, c = 1; l >= 0; l--, c++)
        CHECK(log.first[c] == m.table.specs[m.table.layer0 + l * P_PER_LAYER].offset, "report %d is layer %d", c, l);
    CHECK(log.first[log.calls - 1] == 0);
    be->ops->free(be, xd);
    model_free(&m);
    backend_close(be);
}

TEST(dist_parts_tile_the_buffer_in_rank_order) {
    size_t totals[] = {0, 1, 5, 7, 1000, 1001};
    for (size_t t = 0; t < sizeof totals / sizeof totals[0]; t++)
        for (int world = 1; world <= 9; world++) {
            size_t next = 0;
            for (int r = 0; r < world; r++) {
                DistPart p = dist_part(totals[t], world, r);
                CHECK(p.first == next || p.count == 0, "total %zu world %d rank %d: first %zu, want %zu", totals[t],
                      world, r, p.first, next);
                CHECK(p.count <= (totals[t] + (size_t)world - 1) / (size_t)world);
                next += p.count;
            }
            CHECK(next == totals[t], "total %zu world %d: parts cover %zu", totals[t], world, next);
        }
}

TEST(dist_single_process_parts_gather_and_checks) {
    Dist *d = dist_open_single();
    Backend *be = backend_open("cpu", PRECISION_NO);
    float host[7] = {1, 2, 3, 4, 5, 6, 7}, part[7] = {0}, full[7] = {0};
    float *g = be->ops->alloc(be, sizeof host), *p = be->ops->alloc(be, sizeof host);
    be->ops->upload(be, g, host, sizeof host);
    dist_reduce_scatter_mean(d, be, g, p, 7);  // one rank: its part is everything
    be->ops->download(be, part, p, sizeof part);
    CHECK(memcmp(part, host, sizeof host) == 0);
    dist_allgather(d, be, g, 7);
    dist_gather(d, host, full, 7);
    CHECK(memcmp(full, host, sizeof host) == 0);
    CHECK(dist_max(d, -3) == -3);
    int bad = 7;
    char *r0 = NULL;
    CHECK(dist_check_same(d, "abc", 3, &bad, &r0) == 0 && bad == -1);
    CHECK(r0 && !strcmp(r0, "abc"), "rank 0's copy");
    free(r0);
    CHECK(strstr(d->launcher, "none") != NULL);
    be->ops->free(be, g);
    be->ops->free(be, p);
    backend_close(be);
    dist_close(d);
}

TEST(dist_open_without_a_launcher_is_the_single_process) {
    // the variables a launcher sets are absent in the test runner (it is never started by mpirun)
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_SIZE") || getenv("SLURM_STEP_ID")) {
        t_skip("the test runner was started by a launcher");
        return;
    }
    Dist *d = dist_open();
    CHECK(d && !strcmp(d->name, "single") && d->world_size == 1);
    Backend *be = backend_open("cpu", PRECISION_NO);
    CHECK(dist_for_backend(d, be) == d, "the CPU backend's memory is host memory: the communicator itself");
    backend_close(be);
    dist_close(d);
}

TEST(dist_grad_reduce_dtype_key_and_the_single_process) {
    TrainConfig c;
    const char *data = "[data]\nkind = dummy\n";
    char text[256];
    snprintf(text, sizeof text, "[train]\ngrad_reduce_dtype = bf16\n%s", data);
    CHECK(train_config_load_string(&c, text, "t.ini", 0, NULL) == 0, "%s", givt_last_error());
    CHECK(c.train.grad_reduce_dtype == GRAD_REDUCE_BF16);
    CHECK(train_config_load_string(&c, data, "t.ini", 0, NULL) == 0, "%s", givt_last_error());
    CHECK(c.train.grad_reduce_dtype == GRAD_REDUCE_FP32, "fp32 by default");
    snprintf(text, sizeof text, "[train]\ngrad_reduce_dtype = fp16\n%s", data);
    CHECK(train_config_load_string(&c, text, "t.ini", 0, NULL) != 0);
    CHECK(strstr(givt_last_error(), "grad_reduce_dtype") && strstr(givt_last_error(), "fp16"), "%s",
          givt_last_error());
    char *bad[] = {"train.grad_reduce_dtype=float32"};
    CHECK(train_config_load_string(&c, data, "t.ini", 1, bad) != 0);
    CHECK(strstr(givt_last_error(), "grad_reduce_dtype"), "%s", givt_last_error());
    // one process: nothing to exchange; bf16 is accepted and changes nothing
    Dist *d = dist_open_single();
    Backend *be = backend_open("cpu", PRECISION_NO);
    CHECK(dist_set_grad_dtype(d, GRAD_REDUCE_BF16) == 0 && d->grad_dtype == DIST_GRAD_BF16);
    CHECK(dist_set_grad_dtype(d, 7) != 0 && strstr(givt_last_error(), "grad_reduce_dtype"), "%s", givt_last_error());
    float host[5] = {1.001f, -2.3f, 3.5e-9f, 0, 7.77f}, back[5], part[5];
    float *g = be->ops->alloc(be, sizeof host), *p = be->ops->alloc(be, sizeof host);
    be->ops->upload(be, g, host, sizeof host);
    dist_grads_ready(d, be, g, 0, 5);
    dist_allreduce_mean(d, be, g, 5);
    be->ops->download(be, back, g, sizeof back);
    CHECK(memcmp(host, back, sizeof host) == 0, "float32 values, not rounded to bf16");
    dist_grads_ready_part(d, be, g, p, 5, 2, 3);
    dist_reduce_scatter_mean(d, be, g, p, 5);
    be->ops->download(be, part, p, sizeof part);
    CHECK(memcmp(host, part, sizeof host) == 0);
    be->ops->free(be, g);
    be->ops->free(be, p);
    backend_close(be);
    dist_close(d);
}
