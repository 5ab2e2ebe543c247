// trainer: the training loop (see trainer.h): set-up, the optimizer step, validation and teardown; the
// checkpoints, the run guard and the metrics are in checkpoint.c, run_guard.c and metrics.c.
#define _GNU_SOURCE
#include "trainer.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"
#include "rng.h"
#include "stop_signal.h"
#include "trainer_internal.h"

#define MAX_BAD_STEPS_IN_A_ROW 10

// Mean loss over the validation windows into *loss, with the EMA weights when the EMA is on; rank
// r takes validation batches r, r + world_size, ... and the sums meet in one all-reduce.
// -1 on a data error on any rank (NaN or Inf in the validation data); 1, with *loss NaN, when
// interrupted on any rank. Every rank returns the same.
static int validate(Trainer *tr, double *loss) {
    GivtModel *m = &tr->model;
    Backend *be = tr->be;
    Dist *d = tr->dist;
    const Weights *w = tr->has_ema ? &tr->ema : &m->w;
    int B = tr->cfg.train.batch_size, D = m->cfg.input_dim, got = 0;
    double *acc = m->scalars + SCALAR_EVAL_SUM, sum = 0.0;
    be->ops->zero(be, acc, sizeof(double));
    for (int64_t k = d->rank;
         !stop_requested() && (got = data_val_batch_labels(&tr->data, k, B, tr->batch_host, tr->labels)) > 0;
         k += d->world_size) {
        be->ops->upload(be, tr->batch, tr->batch_host, (size_t)got * tr->T * D * sizeof(float));
        model_forward_cond(m, w, tr->batch, tr->labels, got, tr->T);
        model_loss(m, acc, 0.0f);
        guard_note_progress();
    }
    tr->local_error = got < 0;
    long status = dist_max(d, got < 0 ? 2 : stop_requested() ? 1 : 0);
    if (status == 2 && got >= 0) givt_fail("another rank could not read a validation batch (its message above)");
    dist_allreduce_sum_scalars(d, be, acc, 1);
    be->ops->download(be, &sum, acc, sizeof(double));  // the host reads the sum once
    double count = (double)data_num_val(&tr->data) * tr->T * D;
    *loss = count > 0 && status == 0 ? sum / count : NAN;
    return status == 2 ? -1 : status == 1 ? 1 : 0;
}

// What an optimizer step came to.
typedef enum {
    STEP_DONE,         // the weights were updated
    STEP_SKIPPED,      // non-finite loss or gradient: no update (the step still counts)
    STEP_DIVERGED,     // MAX_BAD_STEPS_IN_A_ROW skipped in a row: the run stops (givt_fail)
    STEP_DATA_ERROR,   // a batch could not be read (givt_fail); no step taken
    STEP_INTERRUPTED,  // SIGINT/SIGTERM/SIGHUP between micro-batches; no step taken
    STEP_GRAPH_ERROR,  // the step could not be recorded as a CUDA graph (givt_fail); no step taken
} StepResult;

// Called by model_backward for each range of gradients it has finished: on the last micro-batch of
// a step they are final, and the communicator may start reducing them (under ZeRO-1 each overlap
// with a rank's part to that rank, into grad_part here).
static void on_grads_ready(void *user, size_t first, size_t count) {
    Trainer *tr = user;
    if (tr->zero)
        dist_grads_ready_part(tr->dist, tr->be, tr->model.grads, tr->grad_part, tr->model.table.total, first, count);
    else
        dist_grads_ready(tr->dist, tr->be, tr->model.grads, first, count);
}

// Label dropout of micro-batch k of this step, on its labels (B): each label becomes "no label"
// (num_classes) with probability label_drop, decided by (seed, step, slot) with the slot global over
// micro-batches and ranks, so that a resumed run (or another world size with the same global batch)
// drops the same ones.
static void drop_labels(Trainer *tr, int k, int32_t *labels) {
    int B = tr->cfg.train.batch_size;
    for (int j = 0; j < B; j++) {
        int64_t slot = ((int64_t)k * tr->dist->world_size + tr->dist->rank) * B + j;
        if (data_label_dropped(tr->cfg.train.seed, tr->step, slot, tr->cfg.train.label_drop))
            labels[j] = tr->cfg.model.num_classes;
    }
}

// The reduction over ranks after backward: the gradients of the global mean loss (under ZeRO-1 only
// this rank's part, in grad_part), the global loss sum in SCALAR_LOSS_SUM and the global squared
// gradient norm in SCALAR_GRAD_SUMSQ (adjacent backend scalars). The gradient reduction completes
// what on_grads_ready started during the last micro-batch's backward.
static void reduce_gradients(Trainer *tr) {
    GivtModel *m = &tr->model;
    Backend *be = tr->be;
    size_t total = m->table.total;
    _Static_assert(SCALAR_GRAD_SUMSQ == SCALAR_LOSS_SUM + 1, "one all-reduce and one read of both scalars");
    if (tr->zero) {
        dist_reduce_scatter_mean(tr->dist, be, m->grads, tr->grad_part, total);
        grad_sumsq_buffer(be, m->scalars + SCALAR_GRAD_SUMSQ, tr->grad_part, tr->opt.count);
        dist_allreduce_sum_scalars(tr->dist, be, m->scalars + SCALAR_LOSS_SUM, 2);
    } else {
        dist_allreduce_mean(tr->dist, be, m->grads, total);
        dist_allreduce_sum_scalars(tr->dist, be, m->scalars + SCALAR_LOSS_SUM, 1);
        grad_sumsq(m, m->scalars + SCALAR_GRAD_SUMSQ);
    }
}

// Why the ranks stop before a micro-batch, agreed by all: 0 none, 1 an interrupt on some rank,
// 2 + r a data error on rank r (the highest such rank). The rank whose data failed keeps its message;
// the others get one naming it.
static long agree_on_stop(Trainer *tr, int data_error) {
    long stop = dist_max(tr->dist, data_error ? 2 + tr->dist->rank : stop_requested() ? 1 : 0);
    tr->local_error = data_error;
    if (stop >= 2 && !data_error)
        givt_fail("rank %ld could not read its part of the batch (its message above)", stop - 2);
    return stop;
}

// The loader's batches, in host memory of the backend's (pinned: its uploads do not wait).
static void *loader_host_alloc(void *user, size_t bytes) {
    Backend *be = user;
    return be->ops->host_alloc(be, bytes);
}
static void loader_host_free(void *user, void *p) {
    Backend *be = user;
    be->ops->host_free(be, p);
}

static DataConfig data_config(const Trainer *tr);

// At most this many batches are held for their uploads (see open_loader).
#define TRAIN_HELD_BATCHES_MAX 16

// Starts the loader at the data position training goes on from (after a resume): it reads the
// training batches ahead on its own thread. Its ring holds two steps' micro-batches (the step in
// flight's are held until its record is read: settle_step), at most TRAIN_HELD_BATCHES_MAX (with
// more than 8 micro-batches a step, stage_batch waits for the backend when they are all held), and
// two more read ahead.
static int open_loader(Trainer *tr) {
    int accum = tr->cfg.train.grad_accum_steps;
    tr->held_max = accum <= TRAIN_HELD_BATCHES_MAX / 2 ? 2 * accum : TRAIN_HELD_BATCHES_MAX;
    tr->held = xcalloc((size_t)tr->held_max, sizeof *tr->held);
    tr->held_step = xcalloc((size_t)tr->held_max, sizeof *tr->held_step);
    LoaderAlloc alloc = {loader_host_alloc, loader_host_free, tr->be};
    DataConfig dc = data_config(tr);
    return loader_open(&tr->loader, &dc, data_get_pos(&tr->data), tr->cfg.train.batch_size, tr->held_max + 2, &alloc);
}

// The held batches of steps up to `step` go back to the loader: a wait has covered their uploads.
static void release_batches(Trainer *tr, long step) {
    int keep = 0;
    for (int i = 0; i < tr->nheld; i++) {
        if (tr->held_step[i] <= step) {
            loader_release(tr->loader, tr->held[i]);
        } else {
            tr->held[keep] = tr->held[i];
            tr->held_step[keep++] = tr->held_step[i];
        }
    }
    tr->nheld = keep;
}

// Micro-batch k of the step into backend memory: the loader's next batch, agreed on by every rank
// (agree_on_stop: 0, or why the step stops: an interrupt, or a batch the loader could not read, its
// message kept), then uploaded without a wait with its labels (label dropout applied) into the
// model's buffer (model_forward_staged reads them there). The data position is the batch's end.
static long stage_batch(Trainer *tr, int k) {
    GivtModel *m = &tr->model;
    Backend *be = tr->be;
    int B = tr->cfg.train.batch_size, D = m->cfg.input_dim;
    LoaderBatch *b = stop_requested() ? NULL : loader_next(tr->loader);
    long stop = agree_on_stop(tr, b && b->rc != 0);
    guard_note_progress();
    if (stop != 0) return stop;
    if (tr->nheld == tr->held_max) {  // (more than 8 micro-batches a step) every held upload is done then
        be->ops->synchronize(be);
        release_batches(tr, LONG_MAX);
    }
    tr->held[tr->nheld] = b;
    tr->held_step[tr->nheld++] = tr->step + 1;
    be->ops->upload_async(be, tr->batch, b->x, (size_t)B * tr->T * D * sizeof(float));
    if (tr->labels) {
        if (!b->labels) givt_die("internal: a class-conditional model's batch without labels");
        drop_labels(tr, k, b->labels);
        model_check_labels(m, b->labels, B, b->labels);
        be->ops->upload_async(be, model_labels_buffer(m), b->labels, (size_t)B * sizeof *b->labels);
    }
    tr->data.pos = b->after;
    return 0;
}

// The step's ops before its first micro-batch: the loss and norm scalars and the gradients cleared.
static void enqueue_step_begin(Trainer *tr) {
    Backend *be = tr->be;
    be->ops->zero(be, tr->model.scalars, MODEL_NUM_SCALARS * sizeof(double));
    model_zero_grads(&tr->model);
}

// Forward, loss and backward of micro-batch k (staged by stage_batch); on the last one, the
// communicator is handed each range of gradients as backward finishes it.
static void enqueue_micro_batch(Trainer *tr, int k) {
    GivtModel *m = &tr->model;
    Backend *be = tr->be;
    int B = tr->cfg.train.batch_size, accum = tr->cfg.train.grad_accum_steps;
    backend_range_push(be, "forward");
    model_forward_staged(m, &m->w, tr->batch, B, tr->T);
    backend_range_pop(be);
    backend_range_push(be, "loss");
    model_loss(m, m->scalars + SCALAR_LOSS_SUM, 1.0f / (float)accum);
    backend_range_pop(be);
    m->grads_ready = k == accum - 1 ? on_grads_ready : NULL;
    backend_range_push(be, "backward");
    model_backward(m, &m->w);
    backend_range_pop(be);
}

static void update_weights(Trainer *tr);
static void check_step(Trainer *tr);

// The step's ops after its last micro-batch: the reduction over ranks (reduce_gradients), the
// step's decision (check_step) and the update (update_weights). Nothing here depends on the host's
// view of the step: the same ops every step, so that they can be recorded once (a CUDA graph).
static void enqueue_step_end(Trainer *tr) {
    Backend *be = tr->be;
    backend_range_push(be, "gradient reduction");
    reduce_gradients(tr);
    backend_range_pop(be);
    check_step(tr);
    backend_range_push(be, "optimizer");
    update_weights(tr);
    backend_range_pop(be);
}

// The whole step's ops (one micro-batch: graphs_decide), for its graph (backend_graph_launch).
static void record_step(void *user) {
    Trainer *tr = user;
    enqueue_step_begin(tr);
    enqueue_micro_batch(tr, 0);
    enqueue_step_end(tr);
}

// Forward and backward over grad_accum_steps batches, the reduction over ranks, the step's decision
// and the update, all enqueued with no wait for the backend: eagerly, or (tr->graphs, after the run's
// first step, which warms up the libraries and memory pools) as one graph launch. A data error or an
// interrupt on any rank abandons the step on every rank before its update and puts the data position
// back where the step began, so that the checkpoint written next resumes exactly at this step.
static StepResult enqueue_step(Trainer *tr) {
    int accum = tr->cfg.train.grad_accum_steps, graph = tr->graphs && tr->step > tr->start_step;
    DataPos start = data_get_pos(&tr->data);
    if (!graph) enqueue_step_begin(tr);
    for (int k = 0; k < accum; k++) {
        long stop = stage_batch(tr, k);
        if (stop != 0) {
            tr->data.pos = start;
            return stop == 1 ? STEP_INTERRUPTED : STEP_DATA_ERROR;
        }
        if (!graph) enqueue_micro_batch(tr, k);
    }
    if (!graph) {
        enqueue_step_end(tr);
    } else if (backend_graph_launch(tr->be, &tr->graph, record_step, tr) != 0) {  // recorded at its first use
        tr->data.pos = start;
        tr->local_error = 1;
        return STEP_GRAPH_ERROR;
    }
    return STEP_DONE;
}

// A cosine schedule needs its warmup to end before max_steps: a longer warmup (a smoke test with
// max_steps = 1 on a config that warms up for 100) is cut to max_steps - 1, which setup notes.
static long warmup_for_run(const TrainSettings *ts) {
    int cut = ts->lr_schedule == LR_SCHEDULE_COSINE && ts->warmup_steps >= ts->max_steps;
    return cut ? ts->max_steps - 1 : ts->warmup_steps;
}

static OptimConfig optim_config(const TrainSettings *ts) {
    OptimConfig oc = {
        .lr = ts->lr,
        .beta1 = ts->lr_betas[0],
        .beta2 = ts->lr_betas[1],
        .eps = ts->lr_eps,
        .weight_decay = ts->weight_decay,
        .grad_norm = ts->grad_norm,
        .schedule = (LrSchedule)ts->lr_schedule,
        .warmup_steps = warmup_for_run(ts),
        .timescale = ts->timescale,
        .max_steps = ts->max_steps,
        .min_lr_ratio = ts->min_lr_ratio,
    };
    return oc;
}

// The data of the run's [data] (and seed, val_size, labels) for this rank: the trainer's Dataset
// (validation) and the loader's (training) open the same.
static DataConfig data_config(const Trainer *tr) {
    const TrainConfig *c = &tr->cfg;
    DataConfig dc;
    data_config_default(&dc);
    dc.kind = c->data.kind == DATA_KIND_DUMMY ? DATA_DUMMY : DATA_NPY;
    dc.path = c->data.path;
    dc.seq_len = c->data.seq_len;
    dc.input_dim = c->model.input_dim;
    dc.dummy_count = c->data.dummy_size;
    dc.seed = c->train.seed;
    dc.val_size = c->train.val_size;
    dc.labels_path = c->data.labels;
    dc.num_classes = c->model.num_classes;
    dc.rank = tr->dist->rank;  // each rank reads its slice of every global batch
    dc.world_size = tr->dist->world_size;
    return dc;
}

static int open_data(Trainer *tr) {
    const TrainConfig *c = &tr->cfg;
    DataConfig dc = data_config(tr);
    if (data_open(&tr->data, &dc) != 0) return -1;
    if (c->model.num_classes > 0) tr->labels = xmalloc((size_t)c->train.batch_size * sizeof *tr->labels);
    if (data_num_train(&tr->data) < 1) return givt_fail("[data]: no training windows after the validation split");
    tr->T = data_seq_len(&tr->data);
    return 0;
}

// What training holds in memory, by what drives it; sizes saturate (size_mul), so no size wraps.
typedef struct {
    size_t model;      // weights and RoPE tables, gradients, AdamW moments, EMA, checkpoint staging
    size_t acts;       // activations (as configured) and the batch buffers
    size_t acts_ckpt;  // the same with gradient checkpointing
    size_t data;       // the split and the permutation of the dummy set
} MemoryPlan;

// The float32 AdamW moments one rank holds: m and v of the whole table, or under ZeRO-1 of its part
// (and the mean gradient of that part).
static size_t moments_bytes(const TrainConfig *c, int world_size) {
    size_t P = param_table_total(&c->model), part = (P + (size_t)world_size - 1) / (size_t)world_size;
    return c->train.zero ? size_mul3(part, 3, sizeof(float)) : size_mul3(P, 2, sizeof(float));
}

static MemoryPlan memory_plan(const TrainConfig *c, Backend *be, int world_size) {
    const TrainSettings *ts = &c->train;
    size_t P = param_table_total(&c->model), f32 = sizeof(float), T = (size_t)c->data.seq_len;  // padded
    // float32 gradients and two host copies while a checkpoint is written or read (on the CPU
    // backend, host and device memory are the same), the moments, plus the EMA (a whole weight set)
    size_t batch = size_mul3(size_mul((size_t)ts->batch_size, T), (size_t)c->model.input_dim, 2 * f32);
    size_t weights = size_mul(model_weights_bytes(&c->model, be), 1 + (ts->ema > 0));
    MemoryPlan p = {
        .model = size_add(size_add(weights, size_mul3(P, 3, f32)), moments_bytes(c, world_size)),
        .acts = size_add(model_acts_bytes(&c->model, be, ts->batch_size, (int)T, 1, ts->gradient_checkpointing), batch),
        .acts_ckpt = size_add(model_acts_bytes(&c->model, be, ts->batch_size, (int)T, 1, 1), batch),
        // window ids, permutation and flags while the split is made: 25 bytes a window
        .data = c->data.kind == DATA_KIND_DUMMY ? size_mul((size_t)c->data.dummy_size, 25) : 0,
    };
    return p;
}

// Says what training will hold in memory, and refuses to start what cannot fit, before any work,
// naming the keys that drive the largest part.
static int check_memory(const TrainConfig *c, Backend *be, int world_size, TrainLog *log, int verbose) {
    const TrainSettings *ts = &c->train;
    const GivtConfig *m = &c->model;
    MemoryPlan p = memory_plan(c, be, world_size);
    size_t need = size_add(size_add(p.model, p.acts), p.data), free_bytes, total_bytes;
    backend_mem_info(be, &free_bytes, &total_bytes);
    double avail = (double)free_bytes;
    char st[32], ac[32], da[32], nb[32], av[32];
    if (verbose) {
        char index[64] = "";
        if (p.data) snprintf(index, sizeof index, ", %s of data index", util_human_bytes(da, (double)p.data));
        train_log_say(log, "givt-train: memory: %s of weights, gradients and optimizer state, %s of activations%s",
                      util_human_bytes(st, (double)p.model), util_human_bytes(ac, (double)p.acts), index);
        if (ts->zero) {
            TrainConfig whole = *c;
            whole.train.zero = 0;
            double full = (double)moments_bytes(&whole, world_size), mine = (double)moments_bytes(c, world_size);
            train_log_say(log,
                          "givt-train: ZeRO-1: the AdamW moments are split over %d ranks: %s on each instead of %s (%s "
                          "saved per rank)",
                          world_size, util_human_bytes(st, mine), util_human_bytes(ac, full),
                          util_human_bytes(da, full - mine));
        }
    }
    if (need != SIZE_MAX && (avail <= 0 || (double)need <= avail)) return 0;
    char keys[512], hint[160] = "";
    if (p.model >= p.acts && p.model >= p.data)
        snprintf(keys, sizeof keys,
                 "the model's %zu parameters, set by [model] hidden_dim = %d, intermediate_dim = %d, num_layers = %d, "
                 "input_dim = %d and block_size = %d (RoPE tables): lower them",
                 givt_config_num_params(m), m->hidden_dim, m->intermediate_dim, m->num_layers, m->input_dim,
                 m->block_size);
    else if (p.acts >= p.data)
        snprintf(keys, sizeof keys,
                 "the activations, set by [train] batch_size = %d x [data] seq_len = %d: lower [train] batch_size "
                 "(grad_accum_steps keeps the batch per step)",
                 ts->batch_size, c->data.seq_len);
    else
        snprintf(keys, sizeof keys, "the data index of [data] dummy_size = %lld sequences: lower it",
                 (long long)c->data.dummy_size);
    if (!ts->gradient_checkpointing && p.acts >= p.model && p.acts >= p.data &&
        (double)size_add(size_add(p.model, p.acts_ckpt), p.data) <= avail)
        snprintf(hint, sizeof hint, ", or set [train] gradient_checkpointing = true (activations: %s)",
                 util_human_bytes(da, (double)p.acts_ckpt));
    return givt_fail("training needs %s but %s are available; the largest part is %s%s", util_human_bytes(nb, (double)need),
                     util_human_bytes(av, avail), keys, hint);
}

// What a change of the schedule's keys on resume does to the learning rate from `step` on, into buf
// ("" when the schedule is the same).
static void schedule_effect(const TrainSettings *was, const TrainSettings *now, long step, char *buf, size_t n) {
    int cosine = was->lr_schedule == LR_SCHEDULE_COSINE || now->lr_schedule == LR_SCHEDULE_COSINE;
    int shape = was->lr != now->lr || was->lr_schedule != now->lr_schedule || was->warmup_steps != now->warmup_steps ||
                was->timescale != now->timescale || was->min_lr_ratio != now->min_lr_ratio;
    int end = was->max_steps != now->max_steps;
    buf[0] = '\0';
    if (!shape && !end) return;
    if (!shape && !cosine) {
        snprintf(buf, n, "schedule: max_steps only moves the end of the run (the %s schedule does not depend on it)",
                 lr_schedule_name(now->lr_schedule));
        return;
    }
    OptimConfig a = optim_config(was), b = optim_config(now);
    double lr_was = was->lr * lr_factor(&a, step), lr_now = now->lr * lr_factor(&b, step);
    char what[160];
    if (end && now->lr_schedule == LR_SCHEDULE_COSINE)
        snprintf(what, sizeof what, "cosine, its decay reshaped to end at step %ld instead of %ld", (long)now->max_steps,
                 (long)was->max_steps);
    else
        snprintf(what, sizeof what, "%s", lr_schedule_name(now->lr_schedule));
    snprintf(buf, n, "schedule: %s; the lr of step %ld is now %.4g (it was to be %.4g)", what, step + 1, lr_now, lr_was);
}

// What changed keys of the data or of the batch do to the stream the run goes on with, into buf ("" when
// nothing).
static void data_effect(const TrainConfig *was, const TrainConfig *now, char *buf, size_t n) {
    const DataSettings *a = &was->data, *b = &now->data;
    int stream = was->train.seed != now->train.seed || was->train.val_size != now->train.val_size || a->kind != b->kind ||
                 strcmp(a->path, b->path) || a->seq_len != b->seq_len || a->dummy_size != b->dummy_size ||
                 strcmp(a->labels, b->labels);
    long gb_was = (long)was->train.batch_size * was->train.grad_accum_steps,
         gb_now = (long)now->train.batch_size * now->train.grad_accum_steps;
    buf[0] = '\0';
    if (stream)
        snprintf(buf, n, "data: the split and the order of the windows are made again from [data], seed and val_size: "
                         "the run goes on at the same position of another stream (no longer the one an uninterrupted "
                         "run would read; windows validated before may now be trained on)");
    else if (gb_was != gb_now)
        snprintf(buf, n, "batch: batch_size x grad_accum_steps is %ld sequences (per rank) instead of %ld; the data "
                         "stream goes on from the same position", gb_now, gb_was);
}

// Resuming with [train] or [data] values other than the checkpoint's train.ini: one note that lists each
// changed key (old -> new) and what the change does to the schedule and the data (rank 0).
static void say_resume_changes(Trainer *tr, const char *dir) {
    char *path = fs_path_join(dir, "train.ini");
    TrainConfig *was = xmalloc(sizeof *was);
    int count = 0;
    char *list = NULL;
    if (!fs_path_exists(path))
        train_log_say(&tr->log, "givt-train: note: %s: missing, so the settings cannot be compared", path);
    else if (train_config_read_unchecked(was, path) != 0)
        train_log_say(&tr->log, "givt-train: note: %s cannot be read (%s), so the settings cannot be compared", path,
                      givt_last_error());
    else
        list = train_config_changes(was, &tr->cfg, "  ", &count);
    if (list) {
        char effect[2][400];
        schedule_effect(&was->train, &tr->cfg.train, tr->step, effect[0], sizeof effect[0]);
        data_effect(was, &tr->cfg, effect[1], sizeof effect[1]);
        list = xrealloc(list, strlen(list) + sizeof effect + 8);
        for (int i = 0; i < 2; i++)
            if (effect[i][0]) strcat(strcat(strcat(list, "  "), effect[i]), "\n");
        train_log_say(&tr->log, "givt-train: note: resuming with %d setting%s other than %s (checkpoint -> now):\n%s",
                      count, count == 1 ? "" : "s", path, list);
    }
    free(list);
    free(was);
    free(path);
}

// The one line of init_from: the weights and, when the configuration left [model] keys out, the model
// read from the folder's config.json (rank 0).
static void say_init_from(Trainer *tr) {
    const GivtConfig *m = &tr->cfg.model;
    char from[200] = "";
    int k = tr->cfg.model_keys_from_init;
    if (k > 0)
        snprintf(from, sizeof from, "; [model] from its config.json (%d of %d keys, those the configuration leaves out): "
                                    "input_dim %d, hidden_dim %d, intermediate_dim %d, num_heads %d, num_layers %d, "
                                    "block_size %d",
                 k, GIVT_CONFIG_NKEYS, m->input_dim, m->hidden_dim, m->intermediate_dim, m->num_heads, m->num_layers,
                 m->block_size);
    train_log_say(&tr->log, "givt-train: init_from = %s: loaded its weights (%zu parameters)%s", tr->cfg.train.init_from,
                  tr->model.table.params, from);
}

// [train] cuda_graphs: whether this run replays its steps as one graph. auto: where it can; on: the
// same, and an error naming the reason where it cannot; off: never.
static int graphs_decide(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    const char *why = NULL;
    if (ts->cuda_graphs == CUDA_GRAPHS_OFF) return 0;
    if (!tr->be->ops->graph_begin)
        why = "the backend has no graphs (CUDA only)";
    else if (ts->grad_accum_steps > 1)
        why = "grad_accum_steps > 1 (each micro-batch would need a graph of its own; the steps run eagerly)";
    else if (tr->dist->world_size > 1)
        why = "data parallel (NCCL inside a graph is not done yet; the steps run eagerly)";
    if (!why) {
        tr->graphs = 1;
        return 0;
    }
    if (ts->cuda_graphs == CUDA_GRAPHS_ON) return givt_fail("[train] cuda_graphs = on: %s on device %s", why, tr->be->name);
    return 0;
}

static int setup(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    backend_set_device_ordinal(tr->dist->local_rank);  // one GPU per rank of a node
    tr->be = backend_open(ts->device, (Precision)ts->mixed_precision);
    if (!tr->be) return givt_fail("[train] device = %s: %s", ts->device, givt_last_error());
    Dist *d = dist_for_backend(tr->dist, tr->be);
    if (!d) return -1;
    tr->dist = d;
    if (dist_set_grad_dtype(d, ts->grad_reduce_dtype) != 0) return -1;
    if (guard_check_ranks_agree(tr) != 0) return -1;
    char note[128];
    if (backend_precision_note(tr->be, note, sizeof note) && root(tr))
        train_log_say(&tr->log, "givt-train: note: mixed_precision = %s: %s",
                      backend_precision_name(tr->be->precision), note);
    if (graphs_decide(tr) != 0 || check_memory(&tr->cfg, tr->be, d->world_size, &tr->log, root(tr)) != 0) return -1;
    if (ckpt_claim_out_dir(tr) != 0 || open_data(tr) != 0 || guard_check_same_data(tr) != 0) return -1;
    if (model_create(&tr->model, &tr->cfg.model, tr->be) != 0) return -1;
    GivtModel *m = &tr->model;
    model_alloc_acts(m, ts->batch_size, tr->T, 1, ts->gradient_checkpointing);
    model_alloc_grads(m);
    OptimConfig oc = optim_config(ts);
    if (oc.warmup_steps != ts->warmup_steps && root(tr))
        train_log_say(&tr->log, "givt-train: note: [train] warmup_steps = %ld is not below max_steps = %ld: the cosine "
                      "schedule's warmup is cut to %ld step%s for this run", (long)ts->warmup_steps,
                      (long)ts->max_steps, (long)oc.warmup_steps, oc.warmup_steps == 1 ? "" : "s");
    tr->zero = ts->zero == 1;
    DistPart part = tr->zero ? dist_part(m->table.total, d->world_size, d->rank) : (DistPart){0, m->table.total};
    adamw_create_part(&tr->opt, m, &oc, part.first, part.count);
    if (tr->zero) tr->grad_part = tr->be->ops->alloc(tr->be, (part.count ? part.count : 1) * sizeof(float));
    tr->rec = tr->be->ops->alloc(tr->be, sizeof(StepRecord));
    tr->rec_back = tr->be->ops->readback_create(tr->be, sizeof(StepRecord));
    tr->has_ema = ts->ema > 0;
    if (tr->has_ema) model_weights_alloc(m, &tr->ema);
    m->grads_ready_user = tr;
    size_t batch_floats = (size_t)ts->batch_size * tr->T * m->cfg.input_dim;
    tr->batch_host = xmalloc(batch_floats * sizeof(float));
    tr->batch = tr->be->ops->alloc(tr->be, batch_floats * sizeof(float));
    char ckpt[TRAIN_CONFIG_STR_MAX + 32];
    if (ckpt_choose(tr, ckpt, sizeof ckpt) != 0) return -1;
    if (ckpt[0]) {
        if (ckpt_resume(tr, ckpt) != 0) return -1;
        if (root(tr)) say_resume_changes(tr, ckpt);
        return (root(tr) && ckpt_set_aside_newer(tr) != 0) || guard_check_same_weights(tr) != 0 ? -1 : 0;
    }
    if (ts->init_from[0]) {
        if (ckpt_load_weights_from(tr, ts->init_from, "init_from") != 0) return -1;
        if (root(tr)) say_init_from(tr);
    } else {
        Rng rng;
        rng_seed(&rng, ts->seed);
        model_init_params(m, &rng);
    }
    if (tr->has_ema) model_weights_copy(m, &tr->ema, &m->w);  // the EMA starts as a copy
    return guard_check_same_weights(tr);
}

static void teardown(Trainer *tr) {
    GivtModel *m = &tr->model;
    if (tr->lock_fd >= 0) close(tr->lock_fd);
    if (tr->metrics) fclose(tr->metrics);
    tb_close(&tr->tb);
    train_log_close(&tr->log);
    loader_close(tr->loader);  // (host_free waits for the backend: no upload still reads its batches)
    free(tr->held);
    free(tr->held_step);
    if (tr->graph) tr->be->ops->graph_free(tr->be, tr->graph);
    if (tr->batch) tr->be->ops->free(tr->be, tr->batch);
    if (tr->grad_part) tr->be->ops->free(tr->be, tr->grad_part);
    if (tr->rec_back) tr->be->ops->readback_free(tr->be, tr->rec_back);
    if (tr->rec) tr->be->ops->free(tr->be, tr->rec);
    if (tr->has_ema) model_weights_free(m, &tr->ema);
    free(tr->batch_host);
    free(tr->labels);
    if (m->w.master) adamw_free(&tr->opt, m);
    model_free(m);
    data_close(&tr->data);
}

// ema = decay * ema + (1 - decay) * weights, master and compute copy, as a pass of its own (ZeRO-1);
// nothing on a step the record skips
// (the decay is the record's: rec->ema_decay)
static void ema_step(Trainer *tr) {
    GivtModel *m = &tr->model;
    cval *compute = (void *)tr->ema.compute == (void *)tr->ema.master ? NULL : tr->ema.compute;
    ema_update_weights(tr->be, tr->ema.master, compute, m->w.master, m->table.total, 0.0f, tr->rec);
}

// ZeRO-1: each rank updated its part of the master weights; every rank gets all of them, and the
// compute copy (when separate) is made again from them.
static void gather_weights(Trainer *tr) {
    GivtModel *m = &tr->model;
    dist_allgather(tr->dist, tr->be, m->w.master, m->table.total);
    size_t n = m->table.total;
    OpCost cost = {0, (double)n * (double)(sizeof(float) + dtype_size(tr->be->compute))};  // read f32, write compute
    if ((void *)m->w.compute != (void *)m->w.master)
        BACKEND_OPC(tr->be, cost, to_compute, m->w.compute, m->w.master, n);
}

// The step's decision on the backend (step_check into tr->rec): the mean loss, the global gradient
// norm, the clipping scale and the skip of a non-finite step, from the global loss sum and squared
// norm that reduce_gradients left in the backend scalars. Nothing waits for it on the host.
static void check_step(Trainer *tr) {
    GivtModel *m = &tr->model;
    double count = (double)tr->cfg.train.batch_size * tr->T * m->cfg.input_dim * tr->cfg.train.grad_accum_steps;
    adamw_check_step(&tr->opt, tr->be, tr->rec, m->scalars + SCALAR_LOSS_SUM, count * tr->dist->world_size,
                     tr->has_ema ? tr->cfg.train.ema : 0.0);
}

// AdamW (the clipping scale and the skip read from tr->rec on the backend) and the EMA, once the
// gradients are reduced. The EMA is updated on every step AdamW is (after the last micro-batch; a
// skipped step updates neither), in AdamW's pass over the weights - except under ZeRO-1, where this
// rank updates its part only and the EMA of every weight needs them all: there it stays a pass of
// its own after the gather (every rank keeps the whole EMA; a skipped step gathers the weights
// unchanged, the same bits). The learning rate, the update's count t (its bias corrections) and the
// EMA's decay are the record's (step_check's): nothing here changes from step to step, so that the
// step can be captured once and replayed. opt.t counts the update when its record is read.
static void update_weights(Trainer *tr) {
    GivtModel *m = &tr->model;
    if (!tr->zero) {
        adamw_update(&tr->opt, m, m->grads, tr->rec, tr->has_ema ? &tr->ema : NULL);
        return;
    }
    adamw_update(&tr->opt, m, tr->grad_part, tr->rec, NULL);
    gather_weights(tr);
    if (tr->has_ema) ema_step(tr);
}

// What the loop measures between two logs.
typedef struct {
    long tokens_per_step, steps;  // steps since the last log
    double flops_per_token, peak, t_last;
} LogWindow;

static LogWindow log_window(const Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    LogWindow w = {
        .tokens_per_step = (long)ts->batch_size * tr->T * ts->grad_accum_steps * tr->dist->world_size,
        .flops_per_token = givt_config_flops_per_token(&tr->cfg.model, tr->T, NULL),
        // the MFU's peak: [train] peak_tflops, else the backend's own figure (the CPU backend has none),
        // per device, times the devices (tok/s is of all of them)
        .peak = (ts->peak_tflops > 0 ? ts->peak_tflops * 1e12 : tr->be->peak_flops) * tr->dist->world_size,
        .t_last = util_time_now_s(),
    };
    return w;
}

// The log of a step: metrics.jsonl (and TensorBoard) and the progress line, on rank 0; now: the
// time the step's window ends (tok/s and the ETA).
static void log_step(Trainer *tr, LogWindow *w, double now, double loss, double lr, double gnorm, double val_loss,
                     int val) {
    double tok_s = (double)(w->steps * w->tokens_per_step) / (now - w->t_last);
    double mfu = w->peak > 0 ? tok_s * w->flops_per_token / w->peak : NAN;
    double eta = (now - tr->t_start) / (double)(tr->step - tr->start_step) * (double)(tr->cfg.train.max_steps - tr->step);
    if (root(tr)) {
        metrics_write(tr, loss, lr, gnorm, tok_s, mfu, val_loss, val == 1);
        metrics_progress(tr, loss, lr, gnorm, tok_s, mfu, eta, val_loss);
    }
    w->t_last = now;
    w->steps = 0;
}

// The step in flight (tr->pending), read one step late: waits for its record (its update, and all
// the work before it, is then done on the backend; the work enqueued since goes on), counts the
// update or the skip - a non-finite step is said here, and MAX_BAD_STEPS_IN_A_ROW skipped in a row
// stop the run - and keeps its loss, lr and norm for its log (log_settled). Every rank reads the
// same record (the loss and the norm are global), so every rank decides the same.
static StepResult settle_step(Trainer *tr) {
    if (!tr->pending) return STEP_DONE;
    StepRecord r;
    memcpy(&r, tr->be->ops->readback_wait(tr->be, tr->rec_back), sizeof r);
    release_batches(tr, tr->step);  // their uploads came before this record
    tr->pending = 0;
    tr->unlogged = 1;
    tr->step_loss = r.loss, tr->step_gnorm = r.norm, tr->step_lr = tr->pending_lr, tr->step_t = tr->pending_t;
    adamw_note_step(&tr->opt, &r);
    if (r.step != tr->step || r.t != tr->opt.t)
        givt_die("internal: the step record counts step %lld, update %lld; the host step %ld, update %ld",
                 (long long)r.step, (long long)r.t, tr->step, tr->opt.t);
    if (!r.skip) {
        tr->skipped_in_row = 0;
        return STEP_DONE;
    }
    tr->skipped_total++;
    train_log_say(&tr->log, "givt-train: step %ld: loss %g, gradient norm %g: not finite, update skipped", tr->step,
                  r.loss, r.norm);
    if (++tr->skipped_in_row >= MAX_BAD_STEPS_IN_A_ROW) {
        givt_fail("%d steps in a row with a non-finite loss or gradient (last: step %ld); stopping",
                  MAX_BAD_STEPS_IN_A_ROW, tr->step);
        tr->agreed = 1;  // the loss and the norm are global: every rank stops here
        tr->unlogged = 0;  // the step the run stops at has no line
        return STEP_DIVERGED;
    }
    return STEP_SKIPPED;
}

// The settled step's log when it is due (every log_every steps, the last step, a step with a
// validation) and not written yet. deferred: logged one step late, from the next step, whose work
// since must not count in this step's time: its window ends when its train_step did (tr->step_t);
// otherwise now, as in the loop's iteration of the step (a validation's time included).
static void log_settled(Trainer *tr, LogWindow *w, double val_loss, int val, int deferred) {
    if (!tr->unlogged) return;
    tr->unlogged = 0;
    if (tr->step % tr->cfg.train.log_every == 0 || tr->step == tr->cfg.train.max_steps || !isnan(val_loss) || val == 1)
        log_step(tr, w, deferred ? tr->step_t : util_time_now_s(), tr->step_loss, tr->step_lr, tr->step_gnorm,
                 val_loss, val);
}

// One optimizer step: the whole step enqueued with no wait for the backend (enqueue_step: gradients,
// the step's decision, AdamW and the EMA), then the previous step settled (settle_step, and logged)
// and this step's record started on its way back to the host: the host waits for the backend only
// there, one step behind, so that the backend always has queued work.
static StepResult train_step(Trainer *tr, LogWindow *w) {
    StepResult r = enqueue_step(tr);
    if (r != STEP_DONE) return r;
    if (tr->pending) {  // the previous step (a fence wait: this step's work is queued behind its record)
        if (settle_step(tr) == STEP_DIVERGED) return STEP_DIVERGED;
        log_settled(tr, w, NAN, 0, 1);
    }
    double lr = tr->cfg.train.lr * lr_factor(&tr->opt.cfg, tr->step);  // the record's, for the log
    tr->step++;
    tr->be->ops->readback_start(tr->be, tr->rec_back, tr->rec, sizeof(StepRecord));
    tr->pending = 1;
    tr->pending_lr = lr;
    tr->pending_t = util_time_now_s();
    return STEP_DONE;
}

// Ends the run before max_steps, after an interrupt (returns 130) or a data error (returns -1, the
// error's message kept): the step in flight is settled and logged first, then a checkpoint of the
// last completed step is written, unless the newest checkpoint already holds it, and the run says
// which. Every rank calls it at the same step (the reasons are agreed).
static int stop_early(Trainer *tr, LogWindow *w, int interrupted) {
    tr->agreed = 1;
    char *why = interrupted ? NULL : xstrdup(givt_last_error());
    if (tr->pending) {
        if (settle_step(tr) == STEP_DIVERGED) {
            free(why);
            return -1;  // settle_step's message
        }
        log_settled(tr, w, NAN, 0, 0);
    }
    char where[TRAIN_CONFIG_STR_MAX + 64];
    int rc = 0;
    if (tr->step > tr->saved_step) {
        rc = ckpt_save(tr);
        ckpt_path(tr->cfg.train.out_dir, tr->step, where, sizeof where);
    } else if (tr->saved_step > 0) {
        ckpt_path(tr->cfg.train.out_dir, tr->saved_step, where, sizeof where);
    } else {
        snprintf(where, sizeof where, "none: no step was completed");
    }
    if (rc != 0) {
        train_log_say(&tr->log, "givt-train: %s", why ? why : "interrupted");
        free(why);
        return -1;  // save_checkpoint's message
    }
    if (interrupted) {
        if (root(tr)) train_log_say(&tr->log, "givt-train: interrupted at step %ld; checkpoint: %s", tr->step, where);
        return 130;
    }
    if (root(tr))
        givt_fail("%s; the run stopped after step %ld; checkpoint of the last good step: %s", why ? why : "data error",
                  tr->step, where);
    else
        givt_fail("%s", why ? why : "data error");  // rank 0 says where the run stopped
    free(why);
    return -1;
}

// A step's validation loss against the best so far (rank 0 keeps the record). With [train] keep_best,
// whether it is a new best, agreed by every rank (the step's checkpoint is then written at once).
static int note_validation(Trainer *tr, double val_loss) {
    int better = 0;
    if (root(tr)) {
        better = isnan(tr->best_val) || val_loss < tr->best_val;
        if (better) tr->best_val = val_loss, tr->best_step = tr->step;
        tr->last_val = val_loss;
        tr->last_val_step = tr->step;
    }
    return tr->cfg.train.keep_best && dist_any(tr->dist, better);
}

// The loop. A step's record is read one step late (train_step), except where the step must be
// complete first: a validation, a checkpoint, the last step, a stop (stop_early) - there it is
// settled at once, so that what is logged and saved is whole and a resumed run goes on bit for bit.
static int loop(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    LogWindow w = log_window(tr);
    adamw_record_start(&tr->opt, tr->be, tr->rec, tr->step);  // the record's counts go on from here
    tr->t_start = w.t_last;
    tr->start_step = tr->step;
    if (tr->step >= ts->max_steps && root(tr))
        train_log_say(&tr->log, "givt-train: step %ld already reaches max_steps = %ld: nothing to do", tr->step,
                      (long)ts->max_steps);
    while (tr->step < ts->max_steps) {
        StepResult r = train_step(tr, &w);
        if (r == STEP_DIVERGED) return -1;
        if (r == STEP_DATA_ERROR || r == STEP_INTERRUPTED || r == STEP_GRAPH_ERROR)
            return stop_early(tr, &w, r == STEP_INTERRUPTED);
        w.steps++;
        int last = tr->step == ts->max_steps, new_best = 0;
        int val_due = ts->val_every > 0 && data_num_val(&tr->data) > 0 && (tr->step % ts->val_every == 0 || last);
        int save_due = (ts->save_every > 0 && tr->step % ts->save_every == 0) || last;
        if ((val_due || save_due) && settle_step(tr) == STEP_DIVERGED) return -1;
        double val_loss = NAN;
        int val = 0;  // validate's result: 1 when a stop signal cut it short (nothing measured is kept)
        if (val_due && (val = validate(tr, &val_loss)) < 0) return stop_early(tr, &w, 0);
        if (val == 1 && root(tr))
            train_log_say(&tr->log, "givt-train: the validation of step %ld was cut short by the stop: no val_loss for "
                                    "this step (metrics.jsonl says \"val_interrupted\": true)", tr->step);
        if (!isnan(val_loss)) new_best = note_validation(tr, val_loss);
        if (!tr->pending) log_settled(tr, &w, val_loss, val, 0);
        if (dist_any(tr->dist, stop_requested())) return stop_early(tr, &w, 1);
        if (save_due || new_best) {
            if (ckpt_save(tr) != 0) return -1;
        }
    }
    return 0;
}

// The end-of-run summary with the checkpoint folders (rank 0).
static void say_summary(Trainer *tr) {
    const char *out = tr->cfg.train.out_dir;
    char final[TRAIN_CONFIG_STR_MAX + 32] = "", best[TRAIN_CONFIG_STR_MAX + 32] = "";
    if (tr->saved_step > 0) ckpt_path(out, tr->saved_step, final, sizeof final);
    if (tr->best_step > 0) {
        ckpt_path(out, tr->best_step, best, sizeof best);
        if (!fs_path_exists(best)) best[0] = '\0';
    }
    metrics_say_summary(tr, final, best);
}

// The files of a run, after set-up (rank 0): train.ini, metrics.jsonl (the validation record) and the
// TensorBoard events, the rotation of the checkpoints a killed run may have left, out_dir/best.
static int open_run_files(Trainer *tr) {
    char *p = fs_path_join(tr->cfg.train.out_dir, "train.ini");
    int rc = train_config_save(&tr->cfg, p);
    free(p);
    if (rc == 0) rc = metrics_open(tr);
    if (rc == 0) ckpt_rotate(tr);  // (after metrics_open: keep_best's best step is known)
    if (rc == 0) ckpt_point_best(tr);
    return rc;
}

int trainer_run(const TrainConfig *cfg) {
    Dist *d = dist_open();
    if (!d) return -1;
    Trainer *tr = xcalloc(1, sizeof *tr);
    tr->cfg = *cfg;
    tr->dist = d;
    tr->lock_fd = -1;
    tr->best_val = tr->last_val = NAN;
    train_log_init(&tr->log, root(tr));
    stop_signals_quiet(!root(tr));  // a job says "stopping after this micro-batch" once, from rank 0
    int rc = setup(tr);
    if (rc == 0) rc = open_loader(tr);
    if (rc == 0 && root(tr)) rc = open_run_files(tr);
    if (rc == 0) {
        if (root(tr)) metrics_say_start(tr);
        guard_start_watchdog(tr);
        rc = loop(tr);
        if (rc >= 0 && root(tr)) say_summary(tr);
    }
    if (rc < 0 && tr->dist->world_size > 1) rc = guard_end_failed_job(tr, rc);
    if (rc < 0 && root(tr)) train_log_file_only(&tr->log, "givt-train: %s", givt_last_error());  // main prints it
    Backend *be = tr->be;
    guard_watchdog_leaves_the_log();
    teardown(tr);
    dist_close(tr->dist);  // before the backend: NCCL still uses its GPU
    backend_close(be);
    free(tr);
    return rc;
}
