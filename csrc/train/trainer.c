// trainer: the training loop (see trainer.h).
#define _GNU_SOURCE
#include "trainer.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data.h"
#include "hf.h"
#include "optim.h"

#define CKPT_PREFIX "step_"
#define STATE_FORMAT "givt-train-state-1"
#define MAX_BAD_STEPS_IN_A_ROW 10

typedef struct {
    TrainConfig cfg;
    GivtModel model;
    AdamW opt;
    float *ema;  // backend memory, or NULL when the EMA is off
    Dataset data;
    float *batch_host, *batch;  // (B, T, D)
    int T;
    long step;                  // optimizer steps completed (skipped ones included)
    long skipped_total, skipped_in_row;
    FILE *metrics;
} Trainer;

static volatile sig_atomic_t g_interrupted;
static void on_signal(int sig) {
    (void)sig;
    g_interrupted = 1;
}


// ---- checkpoints --------------------------------------------------------------------------
static int is_checkpoint_name(const char *name, long *step) {
    size_t np = strlen(CKPT_PREFIX);
    if (strncmp(name, CKPT_PREFIX, np) != 0 || strlen(name) != np + 8) return 0;
    for (const char *c = name + np; *c; c++)
        if (*c < '0' || *c > '9') return 0;
    *step = strtol(name + np, NULL, 10);
    return 1;
}

// Checkpoint steps in out_dir, ascending; *n gets the count. Caller frees.
static long *list_checkpoints(const char *out_dir, int *n) {
    *n = 0;
    DIR *d = opendir(out_dir);
    if (!d) return NULL;
    int cap = 16;
    long *steps = xmalloc(cap * sizeof(long));
    struct dirent *e;
    while ((e = readdir(d))) {
        long s;
        if (!is_checkpoint_name(e->d_name, &s)) continue;
        if (*n == cap) {
            cap *= 2;
            long *ns = realloc(steps, cap * sizeof(long));
            if (!ns) givt_die("out of memory");
            steps = ns;
        }
        steps[(*n)++] = s;
    }
    closedir(d);
    for (int i = 1; i < *n; i++)  // insertion sort: a handful of entries
        for (int j = i; j > 0 && steps[j - 1] > steps[j]; j--) {
            long t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    return steps;
}

static void checkpoint_path(const char *out_dir, long step, char *buf, size_t n) {
    snprintf(buf, n, "%s/" CKPT_PREFIX "%08ld", out_dir, step);
}

int trainer_latest_checkpoint(const char *out_dir, char *buf, size_t n) {
    int count;
    long *steps = list_checkpoints(out_dir, &count);
    int rc = count > 0 ? 0 : givt_fail("%s: no checkpoint (" CKPT_PREFIX "XXXXXXXX folder) to resume from", out_dir);
    if (count > 0) checkpoint_path(out_dir, steps[count - 1], buf, n);
    free(steps);
    return rc;
}

// Removes a folder holding only files (a checkpoint or a leftover temporary one).
static int remove_folder(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : givt_fail("%s: cannot open: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = path_join(dir, e->d_name);
        if (unlink(p) != 0) rc = givt_fail("%s: cannot remove: %s", p, strerror(errno));
        free(p);
    }
    closedir(d);
    if (rc == 0 && rmdir(dir) != 0) rc = givt_fail("%s: cannot remove: %s", dir, strerror(errno));
    return rc;
}

// A temporary file of AtomicFile: "<name>.tmp.<pid>".
static int is_atomic_temporary(const char *name) {
    const char *t = strstr(name, ".tmp.");
    if (!t || !t[5]) return 0;
    for (t += 5; *t; t++)
        if (*t < '0' || *t > '9') return 0;
    return 1;
}

// Removes what a killed run can leave in out_dir: ".tmp-step_*" folders (checkpoints being written
// or removed) and temporary files of atomic writes. One trainer runs per out_dir.
static int remove_stale_temporaries(const char *out_dir) {
    DIR *d = opendir(out_dir);
    if (!d) return givt_fail("%s: cannot open: %s", out_dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        int folder = !strncmp(e->d_name, ".tmp-" CKPT_PREFIX, strlen(".tmp-" CKPT_PREFIX));
        if (!folder && !is_atomic_temporary(e->d_name)) continue;
        char *p = path_join(out_dir, e->d_name);
        if (folder) rc = remove_folder(p);
        else if (unlink(p) != 0) rc = givt_fail("%s: cannot remove: %s", p, strerror(errno));
        free(p);
    }
    closedir(d);
    return rc;
}

// Removes checkpoint folder `step` as a whole: it is first renamed to a temporary name, so that a
// kill in the middle never leaves a partial step_ folder behind.
static int remove_checkpoint(const char *out_dir, long step) {
    char dir[TRAIN_CONFIG_STR_MAX + 32], doomed[TRAIN_CONFIG_STR_MAX + 64];
    checkpoint_path(out_dir, step, dir, sizeof dir);
    snprintf(doomed, sizeof doomed, "%s/.tmp-" CKPT_PREFIX "%08ld-old-%ld", out_dir, step, (long)getpid());
    if (rename(dir, doomed) != 0) return givt_fail("%s: cannot rename to %s: %s", dir, doomed, strerror(errno));
    return remove_folder(doomed);
}

static void download_params(const GivtModel *m, const float *src, float *host) {
    m->ops->download(host, src, m->table.total * sizeof(float));
}

// optimizer.safetensors: "exp_avg.<name>" and "exp_avg_sq.<name>" per parameter, and the training
// state in __metadata__.
static int save_train_state(Trainer *tr, const char *path) {
    const ParamTable *pt = &tr->model.table;
    size_t total = pt->total;
    float *mh = xmalloc(total * sizeof(float)), *vh = xmalloc(total * sizeof(float));
    download_params(&tr->model, tr->opt.m, mh);
    download_params(&tr->model, tr->opt.v, vh);
    StWriteTensor *ts = xcalloc((size_t)pt->count * 2, sizeof *ts);
    char (*names)[96] = xcalloc((size_t)pt->count * 2, sizeof *names);
    for (int i = 0; i < pt->count; i++)
        for (int k = 0; k < 2; k++) {
            const ParamSpec *s = &pt->specs[i];
            StWriteTensor *t = &ts[2 * i + k];
            snprintf(names[2 * i + k], sizeof names[0], "%s.%s", k ? "exp_avg_sq" : "exp_avg", s->name);
            t->name = names[2 * i + k];
            t->ndim = s->ndim;
            t->shape[0] = s->shape[0];
            t->shape[1] = s->shape[1];
            t->data = (k ? vh : mh) + s->offset;
        }
    DataPos pos = data_get_pos(&tr->data);
    char step[32], adam_t[32], epoch[32], index[32], skipped[32];
    snprintf(step, sizeof step, "%ld", tr->step);
    snprintf(adam_t, sizeof adam_t, "%ld", tr->opt.t);
    snprintf(epoch, sizeof epoch, "%" PRId64, pos.epoch);
    snprintf(index, sizeof index, "%" PRId64, pos.index);
    snprintf(skipped, sizeof skipped, "%ld", tr->skipped_total);
    StMeta meta[] = {{"givt_state", STATE_FORMAT}, {"step", step},          {"adamw_t", adam_t},
                     {"data_epoch", epoch},        {"data_index", index},   {"skipped_steps", skipped}};
    int rc = st_write(path, ts, pt->count * 2, meta, (int)(sizeof meta / sizeof meta[0]));
    free(names);
    free(ts);
    free(mh);
    free(vh);
    return rc;
}

static int meta_long(const StFile *f, const char *key, long *out) {
    const char *v = st_metadata(f, key);
    char *end = NULL;
    if (!v) return givt_fail("%s: training state has no \"%s\"", f->path, key);
    *out = strtol(v, &end, 10);
    if (*end || end == v) return givt_fail("%s: training state \"%s\" = \"%s\" is not a whole number", f->path, key, v);
    return 0;
}

static int load_train_state(Trainer *tr, const char *path) {
    StFile f;
    if (st_open(&f, path) != 0) return -1;
    const ParamTable *pt = &tr->model.table;
    size_t total = pt->total;
    float *mh = xmalloc(total * sizeof(float)), *vh = xmalloc(total * sizeof(float));
    int rc = 0;
    const char *fmt = st_metadata(&f, "givt_state");
    if (!fmt || strcmp(fmt, STATE_FORMAT) != 0)
        rc = givt_fail("%s: not a givt training state (expected \"givt_state\": \"" STATE_FORMAT "\")", path);
    for (int i = 0; rc == 0 && i < pt->count; i++) {
        const ParamSpec *s = &pt->specs[i];
        int64_t shape[2] = {s->shape[0], s->shape[1]};
        char name[96];
        snprintf(name, sizeof name, "exp_avg.%s", s->name);
        rc = st_load_f32(&f, name, s->ndim, shape, mh + s->offset);
        snprintf(name, sizeof name, "exp_avg_sq.%s", s->name);
        if (rc == 0) rc = st_load_f32(&f, name, s->ndim, shape, vh + s->offset);
    }
    long epoch = 0, index = 0;
    if (rc == 0) rc = meta_long(&f, "step", &tr->step);
    if (rc == 0) rc = meta_long(&f, "adamw_t", &tr->opt.t);
    if (rc == 0) rc = meta_long(&f, "data_epoch", &epoch);
    if (rc == 0) rc = meta_long(&f, "data_index", &index);
    if (rc == 0) rc = meta_long(&f, "skipped_steps", &tr->skipped_total);
    if (rc == 0) rc = data_set_pos(&tr->data, (DataPos){epoch, index});
    if (rc == 0) {
        tr->model.ops->upload(tr->opt.m, mh, total * sizeof(float));
        tr->model.ops->upload(tr->opt.v, vh, total * sizeof(float));
    }
    free(mh);
    free(vh);
    st_close(&f);
    return rc;
}

static int params_finite(const GivtModel *m, const float *p) { return isfinite(m->ops->sumsq(p, m->table.total)); }

// Writes out_dir/step_XXXXXXXX as a whole: files go to a temporary folder that is renamed into
// place, so a checkpoint folder is complete or absent. Then keeps the newest keep_checkpoints.
static int save_checkpoint(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    GivtModel *m = &tr->model;
    if (!params_finite(m, m->params) || (tr->ema && !params_finite(m, tr->ema)))
        return givt_fail("step %ld: the weights are not finite; no checkpoint written", tr->step);
    char final_dir[TRAIN_CONFIG_STR_MAX + 32], tmp_dir[TRAIN_CONFIG_STR_MAX + 64];
    checkpoint_path(ts->out_dir, tr->step, final_dir, sizeof final_dir);
    snprintf(tmp_dir, sizeof tmp_dir, "%s/.tmp-" CKPT_PREFIX "%08ld-%ld", ts->out_dir, tr->step, (long)getpid());
    if (remove_folder(tmp_dir) != 0 || hf_mkdir_p(tmp_dir) != 0) return -1;
    float *host = xmalloc(m->table.total * sizeof(float));
    download_params(m, m->params, host);
    int rc = hf_save(tmp_dir, &tr->cfg.model, &m->table, host);
    if (rc == 0 && tr->ema) {
        char *p = path_join(tmp_dir, "ema.safetensors");
        download_params(m, tr->ema, host);
        rc = hf_save_tensors(p, &m->table, host, NULL, 0);
        free(p);
    }
    free(host);
    char *p = path_join(tmp_dir, "optimizer.safetensors");
    if (rc == 0) rc = save_train_state(tr, p);
    free(p);
    p = path_join(tmp_dir, "train.ini");
    if (rc == 0) rc = train_config_save(&tr->cfg, p);
    free(p);
    if (rc == 0 && path_exists(final_dir)) rc = remove_checkpoint(ts->out_dir, tr->step);  // saved again
    if (rc == 0 && rename(tmp_dir, final_dir) != 0)
        rc = givt_fail("%s: cannot rename to %s: %s", tmp_dir, final_dir, strerror(errno));
    if (rc == 0) rc = fsync_dir_of(final_dir);
    if (rc != 0) {
        remove_folder(tmp_dir);
        return -1;
    }
    int n;
    long *steps = list_checkpoints(ts->out_dir, &n);
    for (int i = 0; ts->keep_checkpoints > 0 && i < n - ts->keep_checkpoints; i++)
        if (remove_checkpoint(ts->out_dir, steps[i]) != 0) fprintf(stderr, "givt-train: warning: %s\n", givt_last_error());
    free(steps);
    return 0;
}

// Loads config.json + model.safetensors of folder into the model, after checking that the folder's
// [model] matches the configured one.
static int load_weights_from(Trainer *tr, const char *folder, const char *what) {
    GivtConfig saved;
    if (hf_read_config(folder, &saved) != 0) return -1;
    char va[64], vb[64];
    const char *key = givt_config_diff(&tr->cfg.model, &saved, va, vb, sizeof va);
    if (key)
        return givt_fail("%s %s: [model] %s = %s, but the folder's config.json has %s = %s", what, folder, key, va,
                         key, vb);
    float *host = xmalloc(tr->model.table.total * sizeof(float));
    int rc = hf_load_weights(folder, &tr->model.table, host);
    if (rc == 0) tr->model.ops->upload(tr->model.params, host, tr->model.table.total * sizeof(float));
    free(host);
    return rc;
}

// Restores weights, EMA, optimizer and data position from the checkpoint folder dir.
static int resume(Trainer *tr, const char *dir) {
    if (load_weights_from(tr, dir, "resume_from_ckpt") != 0) return -1;
    if (tr->ema) {
        char *p = path_join(dir, "ema.safetensors");
        float *host = xmalloc(tr->model.table.total * sizeof(float));
        int rc = path_exists(p) ? hf_load_tensors(p, &tr->model.table, host)
                                : givt_fail("%s: missing, but [train] ema is on", p);
        if (rc == 0) tr->model.ops->upload(tr->ema, host, tr->model.table.total * sizeof(float));
        free(host);
        free(p);
        if (rc != 0) return -1;
    }
    char *p = path_join(dir, "optimizer.safetensors");
    int rc = load_train_state(tr, p);
    free(p);
    if (rc == 0) fprintf(stderr, "givt-train: resumed from %s at step %ld\n", dir, tr->step);
    return rc;
}

// ---- metrics ------------------------------------------------------------------------------
// Keeps the lines of metrics.jsonl whose "step" is <= step (a resumed run rewrites what followed).
static int metrics_truncate(const char *path, long step) {
    if (!path_exists(path)) return 0;
    char *text = read_file_text(path, NULL);
    if (!text) return -1;
    AtomicFile af;
    if (atomic_open(&af, path) != 0) {
        free(text);
        return -1;
    }
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        const char *s = strstr(line, "\"step\":");
        size_t len = strlen(line);
        if (!s || len == 0 || line[len - 1] != '}' || strtol(s + 7, NULL, 10) > step) continue;  // cut or later
        atomic_write(&af, line, strlen(line));
        atomic_write(&af, "\n", 1);
    }
    free(text);
    return atomic_commit(&af);
}

static int metrics_open(Trainer *tr) {
    char *p = path_join(tr->cfg.train.out_dir, "metrics.jsonl");
    int rc = metrics_truncate(p, tr->step);
    if (rc == 0) {
        tr->metrics = fopen(p, "a");
        if (!tr->metrics) rc = givt_fail("%s: cannot open for appending: %s", p, strerror(errno));
    }
    free(p);
    return rc;
}

// x with 9 significant digits, or null when it is not finite (JSON has no NaN or Inf); buf[32].
static const char *json_number(char *buf, double x) {
    if (isfinite(x)) snprintf(buf, 32, "%.9g", x);
    else snprintf(buf, 32, "null");
    return buf;
}

static void metrics_write(Trainer *tr, double loss, double lr, double gnorm, double tok_s, double val_loss) {
    FILE *f = tr->metrics;
    char l[32], g[32], v[32];
    fprintf(f, "{\"step\": %ld, \"loss\": %s, \"lr\": %.9g, \"grad_norm\": %s, \"tokens_per_s\": %.1f", tr->step,
            json_number(l, loss), lr, json_number(g, gnorm), tok_s);
    if (!isnan(val_loss)) fprintf(f, ", \"val_loss\": %s", json_number(v, val_loss));
    fprintf(f, "}\n");
    fflush(f);
}

// ---- the loop -----------------------------------------------------------------------------
// Mean loss over the validation windows into *loss, with the EMA weights when the EMA is on.
// -1 on a data error (NaN or Inf in the validation data).
static int validate(Trainer *tr, double *loss) {
    GivtModel *m = &tr->model;
    int B = tr->cfg.train.batch_size, D = m->cfg.input_dim, got;
    float *saved = m->params;
    if (tr->ema) m->params = tr->ema;
    double sum = 0.0;
    long count = 0;
    for (int64_t k = 0; (got = data_val_batch(&tr->data, k, B, tr->batch_host)) > 0; k++) {
        m->ops->upload(tr->batch, tr->batch_host, (size_t)got * tr->T * D * sizeof(float));
        ModelLoss l = model_forward(m, tr->batch, got, tr->T, 0);
        sum += l.loss_sum;
        count += l.count;
    }
    m->params = saved;
    *loss = count ? sum / (double)count : NAN;
    return got < 0 ? -1 : 0;
}

// Forward and backward over grad_accum_steps batches; returns the mean loss (NaN on a data error).
static double accumulate_gradients(Trainer *tr, int *data_error) {
    GivtModel *m = &tr->model;
    int B = tr->cfg.train.batch_size, D = m->cfg.input_dim, accum = tr->cfg.train.grad_accum_steps;
    double loss = 0.0;
    model_zero_grads(m);
    for (int k = 0; k < accum; k++) {
        if (data_next_batch(&tr->data, B, tr->batch_host) != 0) {
            *data_error = 1;
            return NAN;
        }
        m->ops->upload(tr->batch, tr->batch_host, (size_t)B * tr->T * D * sizeof(float));
        ModelLoss l = model_forward(m, tr->batch, B, tr->T, 0);
        model_backward(m, 1.0f / (float)accum);
        loss += l.loss / accum;
    }
    return loss;
}

static void format_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)s;
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static void progress(Trainer *tr, int tty, double loss, double lr, double gnorm, double tok_s, double eta_s,
                     double val_loss) {
    char eta[32];
    format_eta(eta_s, eta, sizeof eta);
    fprintf(stderr, "%sstep %ld/%ld | loss %.5f | lr %.3e | grad norm %.4f | %.0f tok/s | ETA %s", tty ? "\r\033[K" : "",
            tr->step, (long)tr->cfg.train.max_steps, loss, lr, gnorm, tok_s, eta);
    if (!isnan(val_loss)) fprintf(stderr, " | val %.5f", val_loss);
    if (!tty || !isnan(val_loss)) fputc('\n', stderr);
    fflush(stderr);
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
        .warmup_steps = ts->warmup_steps,
        .timescale = ts->timescale,
        .max_steps = ts->max_steps,
        .min_lr_ratio = ts->min_lr_ratio,
    };
    return oc;
}

static int open_data(Trainer *tr) {
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
    if (data_open(&tr->data, &dc) != 0) return -1;
    if (data_num_train(&tr->data) < 1) return givt_fail("[data]: no training windows after the validation split");
    tr->T = data_seq_len(&tr->data);
    return 0;
}

// MemAvailable of /proc/meminfo in bytes, or 0 when unknown.
static double memory_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb * 1024.0;
}

// "1.25 GiB" or "12.3 MiB" into buf[32].
static const char *human_bytes(char *buf, double bytes) {
    if (bytes >= 1024.0 * 1024.0 * 1024.0) snprintf(buf, 32, "%.2f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
    else snprintf(buf, 32, "%.1f MiB", bytes / (1024.0 * 1024.0));
    return buf;
}

// Says what training will hold in memory, and refuses to start what cannot fit, before allocating it.
static int check_memory(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    const double GiB = 1024.0 * 1024.0 * 1024.0;
    double state = (double)tr->model.table.total * sizeof(float) * (4 + (ts->ema > 0));  // w, grad, m, v, ema
    double acts = (double)model_acts_bytes(&tr->cfg.model, ts->batch_size, tr->T, 1, ts->gradient_checkpointing);
    double acts_ckpt = (double)model_acts_bytes(&tr->cfg.model, ts->batch_size, tr->T, 1, 1);
    double avail = memory_available();
    char st[32], ac[32];
    fprintf(stderr, "givt-train: memory: %s of weights, gradients and optimizer state, %s of activations\n",
            human_bytes(st, state), human_bytes(ac, acts));
    if (avail > 0 && state + acts > avail)
    {
        char hint[160] = "";
        if (!ts->gradient_checkpointing && state + acts_ckpt <= avail)
            snprintf(hint, sizeof hint, ", or set [train] gradient_checkpointing = true (activations: %.2f GiB)",
                     acts_ckpt / GiB);
        return givt_fail("training needs %.2f GiB but %.2f GiB are available: lower [train] batch_size%s",
                         (state + acts) / GiB, avail / GiB, hint);
    }
    return 0;
}

static int setup(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    if (ts->device == DEVICE_CUDA)
        return givt_fail("[train] device = cuda: this build has no CUDA backend yet (use cpu or auto)");
    if (ts->mixed_precision == MIXED_PRECISION_BF16)
        fprintf(stderr, "givt-train: note: mixed_precision = bf16 is for GPU training; the CPU backend trains in float32\n");
    if (hf_mkdir_p(ts->out_dir) != 0 || remove_stale_temporaries(ts->out_dir) != 0) return -1;
    if (open_data(tr) != 0) return -1;
    if (model_create(&tr->model, &tr->cfg.model, ops_cpu()) != 0 || check_memory(tr) != 0) return -1;
    GivtModel *m = &tr->model;
    model_alloc_acts(m, ts->batch_size, tr->T, 1, ts->gradient_checkpointing);
    model_alloc_grads(m);
    OptimConfig oc = optim_config(ts);
    adamw_create(&tr->opt, m, &oc);
    if (ts->ema > 0) tr->ema = m->ops->alloc(m->table.total * sizeof(float));
    size_t batch_floats = (size_t)ts->batch_size * tr->T * m->cfg.input_dim;
    tr->batch_host = xmalloc(batch_floats * sizeof(float));
    tr->batch = m->ops->alloc(batch_floats * sizeof(float));
    char ckpt[TRAIN_CONFIG_STR_MAX + 32] = "";
    if (!strcmp(ts->resume_from_ckpt, "latest")) {
        if (trainer_latest_checkpoint(ts->out_dir, ckpt, sizeof ckpt) != 0) {
            fprintf(stderr, "givt-train: resume_from_ckpt = latest: no checkpoint in %s yet; starting fresh\n",
                    ts->out_dir);
            ckpt[0] = '\0';
        }
    } else if (ts->resume_from_ckpt[0]) {
        snprintf(ckpt, sizeof ckpt, "%s", ts->resume_from_ckpt);
    }
    if (ckpt[0]) return resume(tr, ckpt);
    char existing[TRAIN_CONFIG_STR_MAX + 32];
    if (trainer_latest_checkpoint(ts->out_dir, existing, sizeof existing) == 0)
        return givt_fail("[train] out_dir = %s already holds checkpoints of a run (newest: %s): continue it with "
                         "train.resume_from_ckpt=latest, or choose another out_dir (nothing was changed)",
                         ts->out_dir, existing);
    if (ts->init_from[0]) {
        if (load_weights_from(tr, ts->init_from, "init_from") != 0) return -1;
    } else {
        Rng rng;
        rng_seed(&rng, ts->seed);
        model_init_params(m, &rng);
    }
    if (tr->ema) m->ops->ema_update(tr->ema, m->params, m->table.total, 0.0f);  // the EMA starts as a copy
    return 0;
}

static void teardown(Trainer *tr) {
    GivtModel *m = &tr->model;
    if (tr->metrics) fclose(tr->metrics);
    if (tr->batch) m->ops->free(tr->batch);
    if (tr->ema) m->ops->free(tr->ema);
    free(tr->batch_host);
    if (m->params) adamw_free(&tr->opt, m);
    model_free(m);
    data_close(&tr->data);
}

// One optimizer step: gradients, the finiteness check, clipping, AdamW and the EMA.
// Returns 0, 1 when the step was skipped, -1 on a data error or too many skipped steps.
static int train_step(Trainer *tr, double *loss, double *lr, double *gnorm) {
    GivtModel *m = &tr->model;
    int data_error = 0;
    *loss = accumulate_gradients(tr, &data_error);
    if (data_error) return -1;
    *gnorm = grad_global_norm(m);
    *lr = tr->cfg.train.lr * lr_factor(&tr->opt.cfg, tr->step);
    tr->step++;
    if (!isfinite(*loss) || !isfinite(*gnorm)) {
        tr->skipped_total++;
        fprintf(stderr, "\ngivt-train: step %ld: loss %g, gradient norm %g: not finite, update skipped\n", tr->step,
                *loss, *gnorm);
        if (++tr->skipped_in_row >= MAX_BAD_STEPS_IN_A_ROW)
            return givt_fail("%d steps in a row with a non-finite loss or gradient (last: step %ld); stopping",
                             MAX_BAD_STEPS_IN_A_ROW, tr->step);
        return 1;
    }
    tr->skipped_in_row = 0;
    adamw_step(&tr->opt, m, *lr, *gnorm);
    if (tr->ema) m->ops->ema_update(tr->ema, m->params, m->table.total, (float)ema_decay(tr->cfg.train.ema, tr->opt.t));
    return 0;
}

static int loop(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    int tty = isatty(fileno(stderr));
    long tokens_per_step = (long)ts->batch_size * tr->T * ts->grad_accum_steps;
    double t_window = time_now_s(), t_start = t_window;
    long steps_window = 0, start_step = tr->step;
    if (tr->step >= ts->max_steps)
        fprintf(stderr, "givt-train: step %ld already reaches max_steps = %ld: nothing to do\n", tr->step,
                (long)ts->max_steps);
    while (tr->step < ts->max_steps) {
        double loss, lr, gnorm;
        int rc = train_step(tr, &loss, &lr, &gnorm);
        if (rc < 0) return -1;
        steps_window++;
        int last = tr->step == ts->max_steps;
        double val_loss = NAN;
        if (ts->val_every > 0 && data_num_val(&tr->data) > 0 && (tr->step % ts->val_every == 0 || last) &&
            validate(tr, &val_loss) != 0)
            return -1;
        if (tr->step % ts->log_every == 0 || last || !isnan(val_loss)) {
            double now = time_now_s();
            double tok_s = (double)(steps_window * tokens_per_step) / (now - t_window);
            double eta = (now - t_start) / (double)(tr->step - start_step) * (double)(ts->max_steps - tr->step);
            metrics_write(tr, loss, lr, gnorm, tok_s, val_loss);
            progress(tr, tty, loss, lr, gnorm, tok_s, eta, val_loss);
            t_window = now;
            steps_window = 0;
        }
        if ((ts->save_every > 0 && tr->step % ts->save_every == 0) || last || g_interrupted) {
            if (save_checkpoint(tr) != 0) return -1;
            if (g_interrupted) {
                fprintf(stderr, "\ngivt-train: interrupted; checkpoint of step %ld written\n", tr->step);
                return 130;
            }
        }
    }
    if (tty) fputc('\n', stderr);
    return 0;
}

int trainer_run(const TrainConfig *cfg) {
    Trainer *tr = xcalloc(1, sizeof *tr);
    tr->cfg = *cfg;
    int rc = setup(tr);
    if (rc == 0) {
        char *p = path_join(cfg->train.out_dir, "train.ini");
        rc = train_config_save(&tr->cfg, p);
        free(p);
    }
    if (rc == 0) rc = metrics_open(tr);
    if (rc == 0) {
        fprintf(stderr, "givt-train: %zu parameters, %lld training / %lld validation sequences of T = %d, backend %s\n",
                tr->model.table.total, (long long)data_num_train(&tr->data), (long long)data_num_val(&tr->data),
                tr->T, tr->model.ops->name);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C stops at once
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        rc = loop(tr);
    }
    teardown(tr);
    free(tr);
    return rc;
}
