// evaluate: a model's mean loss over the windows of a data set or of one part of a run's split.
#define _POSIX_C_SOURCE 200809L
#include "evaluate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "npy.h"
#include "stop_signal.h"
#include "util.h"

void evaluate_data_config(const TrainConfig *c, DataConfig *dc) {
    data_config_default(dc);
    dc->kind = c->data.kind == DATA_KIND_DUMMY ? DATA_DUMMY : DATA_NPY;
    dc->path = c->data.path;
    dc->seq_len = c->data.seq_len;
    dc->input_dim = c->model.input_dim;
    dc->dummy_count = c->data.dummy_size;
    dc->seed = c->train.seed;
    dc->val_size = c->train.val_size;
    dc->labels_path = c->data.labels;
    dc->num_classes = c->model.num_classes;
}

int evaluate_default_seq_len(const char *spec, int block_size, int *seq_len, char *note, size_t n) {
    char **paths;
    int np;
    note[0] = '\0';
    if (data_expand_paths(spec, &paths, &np)) return -1;
    NpyFile f;
    int rc = npy_open(&f, paths[0]);
    if (rc == 0) {
        int64_t T = f.ndim == 3 ? f.shape[1] : 0;
        *seq_len = T >= 1 && T <= block_size ? (int)T : block_size;
        if (f.ndim == 2)
            snprintf(note, n, "%s is an (M, D) stream: windows of block_size = %d vectors (--seq-len to choose)",
                     paths[0], block_size);
        else if (T > block_size)
            snprintf(note, n, "%s has sequences of T = %lld > block_size = %d: each is cut into %lld windows of %d "
                     "vectors%s (--seq-len to choose)",
                     paths[0], (long long)T, block_size, (long long)(T / block_size), block_size,
                     T % block_size ? ", the rest unused" : "");
        npy_close(&f);
    }
    data_free_paths(paths, np);
    return rc;
}

// Activations of B windows of T must fit in what the backend has free.
static int check_memory(GivtModel *m, int B, int T) {
    size_t acts = model_acts_bytes(&m->cfg, m->be, B, T, 0, 0), free_bytes, total_bytes;
    backend_mem_info(m->be, &free_bytes, &total_bytes);
    double avail = (double)free_bytes;
    if (acts != SIZE_MAX && !(avail > 0 && (double)acts > avail)) return 0;
    char ab[32], av[32];
    return givt_fail("a batch of %d windows of T = %d needs %s of activations but %s are available: lower the batch "
                     "size",
                     B, T, util_human_bytes(ab, (double)acts), util_human_bytes(av, avail));
}

// The batches of split s: forward and loss of each, the sums in r; -1 on a data error.
static int run_batches(GivtModel *m, const Weights *w, Dataset *ds, DataSplit s, int B, int progress, EvalResult *r,
                       float *host, float *x, int32_t *labels) {
    Backend *be = m->be;
    int T = data_seq_len(ds), D = m->cfg.input_dim, tty = progress && isatty(fileno(stderr));
    int64_t nbatches = (r->total + B - 1) / B;
    double t0 = util_time_now_s();
    for (int64_t k = 0; k < nbatches; k++) {
        if (stop_requested()) {
            r->stopped = 1;
            break;
        }
        int got = data_split_batch(ds, s, k, B, host, labels);
        if (got < 0) {
            if (tty) fputc('\n', stderr);
            return -1;
        }
        be->ops->upload(be, x, host, (size_t)got * T * D * sizeof(float));
        ModelLoss l = model_eval_loss_cond(m, w, x, labels, got, T, 0);
        r->loss_sum += l.loss_sum;
        r->count += l.count;
        r->windows += got;
        if (tty && (k % 16 == 15 || k + 1 == nbatches))
            fprintf(stderr, "\reval %lld/%lld windows, %.1f s", (long long)r->windows, (long long)r->total,
                    util_time_now_s() - t0);
    }
    if (tty) fputc('\n', stderr);
    return 0;
}

int evaluate_loss(GivtModel *m, const Weights *w, Dataset *ds, DataSplit s, int B, int progress, EvalResult *r) {
    memset(r, 0, sizeof *r);
    r->total = data_split_size(ds, s);
    int T = data_seq_len(ds), D = m->cfg.input_dim;
    if (r->total < 1) return givt_fail("the %s split holds no windows", data_split_name(s));
    if (T > m->cfg.block_size)
        return givt_fail("windows of T = %d are longer than the model's block_size = %d", T, m->cfg.block_size);
    if (B > r->total) B = (int)r->total;
    if (check_memory(m, B, T)) return -1;
    Backend *be = m->be;
    model_alloc_acts(m, B, T, 0, 0);
    float *host = xmalloc((size_t)B * T * D * sizeof(float));
    float *x = be->ops->alloc(be, (size_t)B * T * D * sizeof(float));
    int32_t *labels = ds->labels ? xmalloc((size_t)B * sizeof *labels) : NULL;
    int rc = run_batches(m, w, ds, s, B, progress, r, host, x, labels);
    be->ops->free(be, x);
    free(host);
    free(labels);
    return rc;
}
