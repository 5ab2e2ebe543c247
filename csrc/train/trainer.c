// trainer: the training loop (see trainer.h).
#define _GNU_SOURCE
#include "trainer.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>  // kill(pid, 0): is a temporary's owner alive
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data.h"
#include "dist.h"
#include "hf.h"
#include "optim.h"
#include "stop_signal.h"
#include "train_state.h"

#define CKPT_PREFIX "step_"
#define MAX_BAD_STEPS_IN_A_ROW 10
#define LOCK_NAME ".givt-train.lock"

typedef struct {
    TrainConfig cfg;
    Backend *be;
    Dist *dist;
    GivtModel model;
    AdamW opt;
    Weights ema;     // the EMA of the weights: a second weight set (master NULL when the EMA is off)
    int has_ema;
    Dataset data;
    int zero;                   // ZeRO-1: opt holds this rank's part of the moments (dist_part)
    float *grad_part;           // ZeRO-1: the mean gradient of that part (opt.count floats)
    float *batch_host, *batch;  // (B, T, D)
    int32_t *labels;            // (B) class labels of the batch (class-conditional models), host
    int T;
    long step;                  // optimizer steps completed (skipped ones included)
    long saved_step;            // step of the newest checkpoint this run wrote or resumed from (0: none)
    int lock_fd;                // out_dir's lock (the folder, open), held for the whole run; -1 when not held
    long skipped_total, skipped_in_row;
    int agreed;                 // the run stopped where every rank stopped (nothing to abort)
    int local_error;            // this rank's own error caused the stop (it prints its message)
    FILE *metrics;
} Trainer;

// Only rank 0 prints and writes files.
static int root(const Trainer *tr) { return dist_is_root(tr->dist); }

// ---- the watchdog of a multi-rank job -----------------------------------------------------
// A rank that hangs (a stuck file system, a peer that stopped answering inside a collective) would
// hold every other rank in its next collective forever. A thread watches the time of the last
// progress (a micro-batch, a validation batch, a checkpoint) and, after [train] hang_timeout seconds
// without any, ends this rank; the launcher then ends the job, as for a rank that died.
static _Atomic long long g_progress_ms;
static double g_hang_timeout_s;
static int g_watch_rank;

static long long now_ms(void) { return (long long)(time_now_s() * 1000.0); }
static void note_progress(void) { atomic_store(&g_progress_ms, now_ms()); }

// Between two of its one-second ticks the watchdog sees more than WATCHDOG_GAP_S pass only when this
// process did not run (SIGSTOP or Ctrl-Z of the job, a suspended machine): that time is not the others'
// hang, so the wait starts again from the wake-up. (A tick taken late on a loaded machine only delays
// the hang's detection by that much.)
#define WATCHDOG_GAP_S 3.0

static void *watchdog(void *arg) {
    (void)arg;
    long long tick = now_ms();
    for (;;) {
        sleep(1);
        long long now = now_ms();
        if ((double)(now - tick) / 1000.0 > WATCHDOG_GAP_S) {
            fprintf(stderr, "\ngivt-train: rank %d: this process did not run for %.0f s (stopped or suspended); "
                            "the hang timeout counts again from now\n",
                    g_watch_rank, (double)(now - tick) / 1000.0);
            note_progress();
        }
        tick = now;
        double idle = (double)(now - atomic_load(&g_progress_ms)) / 1000.0;
        if (idle <= g_hang_timeout_s) continue;
        fprintf(stderr,
                "\ngivt-train: rank %d: no progress for %.0f s ([train] hang_timeout = %g): another rank or the file "
                "system hangs; ending this rank, and with it the job\n",
                g_watch_rank, idle, g_hang_timeout_s);
        fflush(stderr);
        _exit(1);
    }
    return NULL;
}

static void start_watchdog(const Trainer *tr) {
    if (tr->dist->world_size < 2 || tr->cfg.train.hang_timeout <= 0) return;
    g_hang_timeout_s = tr->cfg.train.hang_timeout;
    g_watch_rank = tr->dist->rank;
    note_progress();
    pthread_t t;
    if (pthread_create(&t, NULL, watchdog, NULL) == 0) pthread_detach(t);
    else fprintf(stderr, "givt-train: rank %d: warning: no watchdog thread: %s\n", g_watch_rank, strerror(errno));
}


// ---- checkpoints --------------------------------------------------------------------------
// "step_" and the step in at least 8 digits (checkpoint_path's %08ld: zero-padded to 8, more digits
// past step 99,999,999, never with a leading zero there).
static int is_checkpoint_name(const char *name, long *step) {
    size_t np = strlen(CKPT_PREFIX), nd = strlen(name) - np;
    if (strncmp(name, CKPT_PREFIX, np) != 0 || nd < 8 || nd > 18 || (nd > 8 && name[np] == '0')) return 0;
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
            steps = xrealloc(steps, cap * sizeof(long));
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

// The pid a temporary's name carries: AtomicFile's (util.h's atomic_temp_owner) or the "...-<pid>"
// that ends a checkpoint folder being written or removed; 0 when the name has none.
static long temporary_owner(const char *name, int folder) {
    if (!folder) return atomic_temp_owner(name);
    const char *t = strrchr(name, '-');
    if (!t || !*++t) return 0;
    for (const char *c = t; *c; c++)
        if (*c < '0' || *c > '9') return 0;
    return strtol(t, NULL, 10);
}

// Is process pid alive (and not this one)?
static int other_process_alive(long pid) {
    if (pid <= 0 || pid == (long)getpid()) return 0;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

// Removes what a killed run can leave in out_dir: ".tmp-step_*" folders (checkpoints being written
// or removed) and temporary files of atomic writes, except those of a process still alive.
static int remove_stale_temporaries(const char *out_dir) {
    DIR *d = opendir(out_dir);
    if (!d) return givt_fail("%s: cannot open: %s", out_dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        int folder = !strncmp(e->d_name, ".tmp-" CKPT_PREFIX, strlen(".tmp-" CKPT_PREFIX));
        long owner = temporary_owner(e->d_name, folder);
        if (owner == 0 || other_process_alive(owner)) continue;
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

// Resuming at `step` from a checkpoint older than the newest in out_dir: the newer checkpoints belong
// to the run that went on from there, and the resumed run would overwrite them one by one (a later
// `latest` then mixing the two runs). Rank 0 moves them, whole, with that run's metrics.jsonl (a hard
// link: the resumed run rewrites its own), into out_dir/set-aside-<time>-<pid>/ and says where.
static int set_aside_newer(const char *out_dir, long step) {
    int n;
    long *steps = list_checkpoints(out_dir, &n);
    int first = 0;  // 1 + the index of the oldest newer checkpoint
    for (int i = 0; i < n && !first; i++)
        if (steps[i] > step) first = i + 1;
    if (!first) {
        free(steps);
        return 0;
    }
    char stamp[32], aside[TRAIN_CONFIG_STR_MAX + 64], from[TRAIN_CONFIG_STR_MAX + 32];
    time_t now = time(NULL);
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
    snprintf(aside, sizeof aside, "%s/set-aside-%s-%ld", out_dir, stamp, (long)getpid());
    int rc = mkdir(aside, 0777) != 0 ? givt_fail("%s: cannot create: %s", aside, strerror(errno)) : 0;
    for (int i = first - 1; rc == 0 && i < n; i++) {
        checkpoint_path(out_dir, steps[i], from, sizeof from);
        char *to = path_join(aside, strrchr(from, '/') + 1);
        if (rename(from, to) != 0) rc = givt_fail("%s: cannot move to %s: %s", from, to, strerror(errno));
        free(to);
    }
    char *metrics = path_join(out_dir, "metrics.jsonl"), *kept = path_join(aside, "metrics.jsonl");
    if (rc == 0 && path_exists(metrics) && link(metrics, kept) != 0)
        fprintf(stderr, "givt-train: warning: %s: cannot keep a copy in %s: %s\n", metrics, aside, strerror(errno));
    if (rc == 0) rc = fsync_dir_of(from);
    if (rc == 0)
        fprintf(stderr,
                "givt-train: note: resuming at step %ld, older than the newest checkpoint in %s (step %ld): the %d newer "
                "checkpoint%s and that run's metrics.jsonl were moved to %s (move them back to return to that run)\n",
                step, out_dir, steps[n - 1], n - first + 1, n - first + 1 == 1 ? "" : "s", aside);
    free(metrics);
    free(kept);
    free(steps);
    return rc;
}

// The AdamW moments of the whole table into mh and vh (table.total floats each) on rank 0, NULL on
// the other ranks. Under ZeRO-1 every rank's part is gathered there (a collective: every rank calls it).
static void moments_to_root(Trainer *tr, float *mh, float *vh) {
    Backend *be = tr->be;
    const AdamW *o = &tr->opt;
    if (!tr->zero) {
        if (root(tr)) {
            be->ops->download(be, mh, o->m, o->count * sizeof(float));
            be->ops->download(be, vh, o->v, o->count * sizeof(float));
        }
        return;
    }
    float *part = xmalloc((o->count ? o->count : 1) * sizeof(float));
    be->ops->download(be, part, o->m, o->count * sizeof(float));
    dist_gather(tr->dist, part, mh, tr->model.table.total);
    be->ops->download(be, part, o->v, o->count * sizeof(float));
    dist_gather(tr->dist, part, vh, tr->model.table.total);
    free(part);
}

// Sequences per optimizer step over all ranks.
static long global_batch(const Trainer *tr) {
    return (long)tr->cfg.train.batch_size * tr->cfg.train.grad_accum_steps * tr->dist->world_size;
}

// optimizer.safetensors (train_state.h): the moments of the whole table (mh, vh, whatever the ZeRO
// sharding) and where training stands.
static int save_train_state(Trainer *tr, const char *path, float *mh, float *vh) {
    DataPos pos = data_get_pos(&tr->data);
    // the data position is that of the global stream, the same on every rank (data.h)
    TrainState s = {.step = tr->step, .adamw_t = tr->opt.t, .skipped_steps = tr->skipped_total,
                    .data_epoch = pos.epoch, .data_index = pos.index, .world_size = tr->dist->world_size,
                    .global_batch = global_batch(tr)};
    return train_state_write(path, &tr->model.table, mh, vh, &s);
}

// Every rank reads the whole state and keeps its part of the moments (ZeRO-1 re-shards a state
// saved with any world size).
static int load_train_state(Trainer *tr, const char *path) {
    size_t total = tr->model.table.total;
    float *mh = xmalloc(total * sizeof(float)), *vh = xmalloc(total * sizeof(float));
    TrainState s;
    int rc = train_state_read(path, &tr->model.table, mh, vh, &s);
    if (rc == 0 && data_set_pos(&tr->data, (DataPos){s.data_epoch, s.data_index}) != 0)
        rc = givt_fail("%s: %s", path, givt_last_error());
    if (rc == 0) {
        tr->step = (long)s.step;
        tr->opt.t = (long)s.adamw_t;
        tr->skipped_total = (long)s.skipped_steps;
    }
    if (rc == 0 && s.world_size != tr->dist->world_size && root(tr)) {
        char was[64] = "";
        if (s.global_batch) snprintf(was, sizeof was, " (was %" PRId64 ")", s.global_batch);
        fprintf(stderr,
                "givt-train: note: %s was written by %ld process%s, this run has %d: the global batch is now %ld "
                "sequences%s; the data stream goes on from the same position\n",
                path, (long)s.world_size, s.world_size == 1 ? "" : "es", tr->dist->world_size, global_batch(tr), was);
    }
    if (rc == 0) {
        const AdamW *o = &tr->opt;
        tr->be->ops->upload(tr->be, o->m, mh + o->first, o->count * sizeof(float));
        tr->be->ops->upload(tr->be, o->v, vh + o->first, o->count * sizeof(float));
    }
    free(mh);
    free(vh);
    return rc;
}

// Are the n float32 weights at p (backend memory) all finite? (Their sum of squares is.)
static int params_finite(GivtModel *m, const float *p) {
    Backend *be = m->be;
    double *acc = m->scalars + SCALAR_EVAL_SUM, ss = 0.0;
    be->ops->zero(be, acc, sizeof(double));
    be->ops->sumsq(be, acc, p, m->table.total);
    be->ops->download(be, &ss, acc, sizeof(double));
    return isfinite(ss);
}

// Rank 0 writes out_dir/step_XXXXXXXX as a whole (mh, vh: the moments of the whole table): files go
// to a temporary folder that is renamed into place, so a checkpoint folder is complete or absent.
// Then keeps the newest keep_checkpoints.
static int write_checkpoint(Trainer *tr, float *mh, float *vh) {
    const TrainSettings *ts = &tr->cfg.train;
    GivtModel *m = &tr->model;
    char final_dir[TRAIN_CONFIG_STR_MAX + 32], tmp_dir[TRAIN_CONFIG_STR_MAX + 64];
    checkpoint_path(ts->out_dir, tr->step, final_dir, sizeof final_dir);
    snprintf(tmp_dir, sizeof tmp_dir, "%s/.tmp-" CKPT_PREFIX "%08ld-%ld", ts->out_dir, tr->step, (long)getpid());
    if (remove_folder(tmp_dir) != 0 || mkdir_p(tmp_dir) != 0) return -1;
    int rc = hf_model_save(m, tmp_dir, &m->w);
    if (rc == 0 && tr->has_ema) {
        char *p = path_join(tmp_dir, "ema.safetensors");
        rc = hf_model_save_tensors(m, p, &tr->ema);
        free(p);
    }
    char *p = path_join(tmp_dir, "optimizer.safetensors");
    if (rc == 0) rc = save_train_state(tr, p, mh, vh);
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

// The checkpoint of the current step, on every rank together: the moments are brought to rank 0,
// which writes the folder; every rank learns whether it was written. Every rank holds the same
// weights, so the finiteness check agrees everywhere.
static int save_checkpoint(Trainer *tr) {
    GivtModel *m = &tr->model;
    if (!params_finite(m, m->w.master) || (tr->has_ema && !params_finite(m, tr->ema.master))) {
        tr->agreed = 1;
        return givt_fail("step %ld: the weights are not finite; no checkpoint written", tr->step);
    }
    size_t bytes = m->table.total * sizeof(float);
    float *mh = root(tr) ? xmalloc(bytes) : NULL, *vh = root(tr) ? xmalloc(bytes) : NULL;
    moments_to_root(tr, mh, vh);
    int rc = root(tr) ? write_checkpoint(tr, mh, vh) : 0;
    free(mh);
    free(vh);
    if (dist_any(tr->dist, rc != 0)) {
        tr->agreed = 1;
        tr->local_error = rc != 0;
        if (rc == 0) givt_fail("rank 0 could not write the checkpoint of step %ld (its message above)", tr->step);
        return -1;
    }
    tr->saved_step = tr->step;
    note_progress();
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
    return hf_model_load_weights(&tr->model, folder, &tr->model.w);
}

// Restores weights, EMA, optimizer and data position from the checkpoint folder dir.
static int resume(Trainer *tr, const char *dir) {
    if (load_weights_from(tr, dir, "resume_from_ckpt") != 0) return -1;
    if (tr->has_ema) {
        char *p = path_join(dir, "ema.safetensors");
        int rc = path_exists(p) ? hf_model_load_tensors(&tr->model, p, &tr->ema)
                                : givt_fail("%s: missing, but [train] ema is on", p);
        free(p);
        if (rc != 0) return -1;
    }
    char *p = path_join(dir, "optimizer.safetensors");
    int rc = load_train_state(tr, p);
    free(p);
    if (rc == 0) fprintf(stderr, "givt-train: resumed from %s at step %ld\n", dir, tr->step);
    tr->saved_step = tr->step;
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

// mfu: the model FLOPs utilisation (a fraction), NaN when no peak is known (not written).
// val_interrupted: the step's validation was cut short by a stop signal (no val_loss).
static void metrics_write(Trainer *tr, double loss, double lr, double gnorm, double tok_s, double mfu,
                          double val_loss, int val_interrupted) {
    FILE *f = tr->metrics;
    char l[32], g[32], v[32], u[32];
    fprintf(f, "{\"step\": %ld, \"loss\": %s, \"lr\": %.9g, \"grad_norm\": %s, \"tokens_per_s\": %.1f", tr->step,
            json_number(l, loss), lr, json_number(g, gnorm), tok_s);
    if (!isnan(mfu)) fprintf(f, ", \"mfu\": %s", json_number(u, mfu));
    if (!isnan(val_loss)) fprintf(f, ", \"val_loss\": %s", json_number(v, val_loss));
    if (val_interrupted) fprintf(f, ", \"val_interrupted\": true");
    fprintf(f, "}\n");
    fflush(f);
}

// ---- the loop -----------------------------------------------------------------------------
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
        note_progress();
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
} StepResult;

// Called by model_backward for each range of gradients it has finished: on the last micro-batch of
// a step they are final, and the communicator may start reducing them.
static void on_grads_ready(void *user, size_t first, size_t count) {
    Trainer *tr = user;
    dist_grads_ready(tr->dist, tr->be, tr->model.grads, first, count);
}

// Label dropout of micro-batch k of this step: each label becomes "no label" (num_classes) with
// probability label_drop, decided by (seed, step, slot) with the slot global over micro-batches and
// ranks, so that a resumed run (or another world size with the same global batch) drops the same ones.
static void drop_labels(Trainer *tr, int k) {
    int B = tr->cfg.train.batch_size;
    for (int j = 0; j < B; j++) {
        int64_t slot = ((int64_t)k * tr->dist->world_size + tr->dist->rank) * B + j;
        if (data_label_dropped(tr->cfg.train.seed, tr->step, slot, tr->cfg.train.label_drop))
            tr->labels[j] = tr->cfg.model.num_classes;
    }
}

// The reduction over ranks after backward: the gradients of the global mean loss (under ZeRO-1 only
// this rank's part, in grad_part), the global loss sum in SCALAR_LOSS_SUM and the global squared
// gradient norm in SCALAR_GRAD_SUMSQ (adjacent backend scalars).
static void reduce_gradients(Trainer *tr) {
    GivtModel *m = &tr->model;
    Backend *be = tr->be;
    size_t total = m->table.total;
    _Static_assert(SCALAR_GRAD_SUMSQ == SCALAR_LOSS_SUM + 1, "one all-reduce and one read of both scalars");
    if (tr->zero) {
        dist_reduce_scatter_mean(tr->dist, be, m->grads, tr->grad_part, total);
        be->ops->sumsq(be, m->scalars + SCALAR_GRAD_SUMSQ, tr->grad_part, tr->opt.count);
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

// Forward and backward over grad_accum_steps batches, then the reduction over ranks (see
// reduce_gradients). A data error or an interrupt on any rank abandons the step on every rank and
// puts the data position back where the step began, so that the checkpoint written next resumes
// exactly at this step.
static StepResult accumulate_gradients(Trainer *tr) {
    GivtModel *m = &tr->model;
    Backend *be = tr->be;
    int B = tr->cfg.train.batch_size, D = m->cfg.input_dim, accum = tr->cfg.train.grad_accum_steps;
    DataPos start = data_get_pos(&tr->data);
    be->ops->zero(be, m->scalars, MODEL_NUM_SCALARS * sizeof(double));
    model_zero_grads(m);
    for (int k = 0; k < accum; k++) {
        int data_error = !stop_requested() && data_next_batch_labels(&tr->data, B, tr->batch_host, tr->labels) != 0;
        long stop = agree_on_stop(tr, data_error);
        note_progress();
        if (stop != 0) {
            tr->data.pos = start;
            return stop == 1 ? STEP_INTERRUPTED : STEP_DATA_ERROR;
        }
        be->ops->upload(be, tr->batch, tr->batch_host, (size_t)B * tr->T * D * sizeof(float));
        if (tr->labels) drop_labels(tr, k);
        backend_range_push(be, "forward");
        model_forward_cond(m, &m->w, tr->batch, tr->labels, B, tr->T);
        backend_range_pop(be);
        backend_range_push(be, "loss");
        model_loss(m, m->scalars + SCALAR_LOSS_SUM, 1.0f / (float)accum);
        backend_range_pop(be);
        m->grads_ready = k == accum - 1 && !tr->zero ? on_grads_ready : NULL;
        backend_range_push(be, "backward");
        model_backward(m, &m->w);
        backend_range_pop(be);
    }
    backend_range_push(be, "gradient reduction");
    reduce_gradients(tr);
    backend_range_pop(be);
    return STEP_DONE;
}

static void format_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)s;
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static void progress(Trainer *tr, int tty, double loss, double lr, double gnorm, double tok_s, double mfu,
                     double eta_s, double val_loss) {
    char eta[32], mfu_text[32] = "";
    format_eta(eta_s, eta, sizeof eta);
    if (!isnan(mfu)) snprintf(mfu_text, sizeof mfu_text, " | MFU %.1f%%", 100.0 * mfu);
    fprintf(stderr, "%sstep %ld/%ld | loss %.5f | lr %.3e | grad norm %.4f | %.0f tok/s%s | ETA %s",
            tty ? "\r\033[K" : "", tr->step, (long)tr->cfg.train.max_steps, loss, lr, gnorm, tok_s, mfu_text, eta);
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
    dc.labels_path = c->data.labels;
    dc.num_classes = c->model.num_classes;
    dc.rank = tr->dist->rank;  // each rank reads its slice of every global batch
    dc.world_size = tr->dist->world_size;
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
    size_t P = givt_config_num_params(&c->model), part = (P + (size_t)world_size - 1) / (size_t)world_size;
    return c->train.zero ? size_mul3(part, 3, sizeof(float)) : size_mul3(P, 2, sizeof(float));
}

static MemoryPlan memory_plan(const TrainConfig *c, Backend *be, int world_size) {
    const TrainSettings *ts = &c->train;
    size_t P = givt_config_num_params(&c->model), f32 = sizeof(float), T = (size_t)c->data.seq_len;
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
static int check_memory(const TrainConfig *c, Backend *be, int world_size, int verbose) {
    const TrainSettings *ts = &c->train;
    const GivtConfig *m = &c->model;
    MemoryPlan p = memory_plan(c, be, world_size);
    size_t need = size_add(size_add(p.model, p.acts), p.data), free_bytes, total_bytes;
    backend_mem_info(be, &free_bytes, &total_bytes);
    double avail = (double)free_bytes;
    char st[32], ac[32], da[32], nb[32], av[32];
    if (verbose) {
        fprintf(stderr, "givt-train: memory: %s of weights, gradients and optimizer state, %s of activations",
                human_bytes(st, (double)p.model), human_bytes(ac, (double)p.acts));
        if (p.data) fprintf(stderr, ", %s of data index", human_bytes(da, (double)p.data));
        fputc('\n', stderr);
        if (ts->zero) {
            TrainConfig whole = *c;
            whole.train.zero = 0;
            double full = (double)moments_bytes(&whole, world_size), mine = (double)moments_bytes(c, world_size);
            fprintf(stderr,
                    "givt-train: ZeRO-1: the AdamW moments are split over %d ranks: %s on each instead of %s (%s saved "
                    "per rank)\n",
                    world_size, human_bytes(st, mine), human_bytes(ac, full), human_bytes(da, full - mine));
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
                 human_bytes(da, (double)p.acts_ckpt));
    return givt_fail("training needs %s but %s are available; the largest part is %s%s", human_bytes(nb, (double)need),
                     human_bytes(av, avail), keys, hint);
}

// One trainer per out_dir: an advisory lock (flock) on the out_dir folder itself, held until the
// process ends. The kernel releases it however the process ends, so a killed run never leaves a lock
// behind, and nothing in the folder can be deleted to let a second trainer in. out_dir/.givt-train.lock
// holds the holder's PID, for the message a second trainer gets (information only). Where a folder
// cannot be locked (flock emulated over NFS wants a file open for writing), the PID file is locked.
static int lock_out_dir(Trainer *tr) {
    const char *out = tr->cfg.train.out_dir;
    char *p = path_join(out, LOCK_NAME);
    int dir_fd = open(out, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int pid_fd = open(p, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644), rc = 0;
    int lock_fd = dir_fd, e = 0;
    if (dir_fd < 0) rc = givt_fail("%s: cannot open to lock: %s", out, strerror(errno));
    else if (pid_fd < 0) rc = givt_fail("%s: cannot create the lock file: %s", p, strerror(errno));
    else if (flock(dir_fd, LOCK_EX | LOCK_NB) != 0 && (e = errno) != EWOULDBLOCK) {
        lock_fd = pid_fd;  // no folder locks on this file system
        e = flock(pid_fd, LOCK_EX | LOCK_NB) != 0 ? errno : 0;
    }
    if (rc == 0 && e != 0) {
        char pid[32] = "";
        ssize_t got = pread(pid_fd, pid, sizeof pid - 1, 0);
        pid[got > 0 ? got : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            rc = givt_fail("[train] out_dir = %s is in use by another givt-train (PID %s): let it finish or stop it, "
                           "or choose another out_dir (nothing was changed)",
                           out, pid[0] ? pid : "unknown");
        else
            rc = givt_fail("%s: cannot lock: %s", out, strerror(e));
    }
    if (rc == 0) {
        char pid[32];
        int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
        if (ftruncate(pid_fd, 0) != 0 || pwrite(pid_fd, pid, (size_t)n, 0) != n)
            fprintf(stderr, "givt-train: warning: %s: cannot write the PID: %s\n", p, strerror(errno));
        tr->lock_fd = lock_fd;
    }
    if (dir_fd >= 0 && (rc != 0 || lock_fd != dir_fd)) close(dir_fd);
    if (pid_fd >= 0 && (rc != 0 || lock_fd != pid_fd)) close(pid_fd);
    free(p);
    return rc;
}

// FNV-1a over n bytes: a fingerprint that ranks compare (configuration, binary, weights).
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

// The fingerprint of this process's executable (/proc/self/exe); 0 when it cannot be read.
static uint64_t binary_fingerprint(void) {
    FILE *f = fopen("/proc/self/exe", "rb");
    if (!f) return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) h = fnv1a(h, buf, got);
    fclose(f);
    return h;
}

// One INI line as "key = value": spaces collapsed, the comment dropped (into buf of n bytes).
static const char *ini_line_text(const char *line, char *buf, size_t n) {
    size_t len = strcspn(line, "\n#"), k = 0;
    for (size_t i = 0; i < len && k + 1 < n; i++)
        if (line[i] != ' ' || (k > 0 && buf[k - 1] != ' ')) buf[k++] = line[i];
    while (k > 0 && buf[k - 1] == ' ') k--;
    buf[k] = '\0';
    return buf;
}

// Prints the first line where configuration text `mine` differs from rank 0's `r0`, and its section.
static void say_first_difference(int rank, const char *r0, const char *mine) {
    const char *a = r0, *b = mine, *section = "";
    size_t section_len = 0;
    while (*a && *b && strcspn(a, "\n") == strcspn(b, "\n") && !strncmp(a, b, strcspn(a, "\n"))) {
        if (*a == '[') section = a, section_len = strcspn(a, "]\n") + 1;
        a += strcspn(a, "\n") + (a[strcspn(a, "\n")] != 0);
        b += strcspn(b, "\n") + (b[strcspn(b, "\n")] != 0);
    }
    char la[256], lb[256];
    fprintf(stderr, "givt-train: rank %d: configuration differs from rank 0's: %.*s rank 0 has \"%s\", rank %d has \"%s\"\n",
            rank, (int)section_len, section, ini_line_text(a, la, sizeof la), rank, ini_line_text(b, lb, sizeof lb));
}

// Every rank must run the same binary with the same configuration: checked before any work, and the
// rank that differs is named (with the first line of its configuration that differs from rank 0's).
static int check_ranks_agree(Trainer *tr) {
    Dist *d = tr->dist;
    if (d->world_size == 1) return 0;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f || train_config_write_ini(f, &tr->cfg) != 0 || fclose(f) != 0)
        return givt_fail("cannot write the configuration to memory");
    int bad = -1;
    char *r0 = NULL;  // rank 0's text, for the rank that differs to say where
    int rc = dist_check_same(d, text, len, &bad, &r0);
    if (rc != 0 && d->rank == bad) say_first_difference(d->rank, r0, text);
    free(r0);
    free(text);
    if (rc != 0) {
        tr->agreed = 1;
        return givt_fail("rank %d was given another configuration than rank 0 (every rank must load the same INI and "
                         "overrides; the difference is printed above)",
                         bad);
    }
    uint64_t exe = binary_fingerprint();
    if (dist_check_same(d, &exe, sizeof exe, &bad, NULL) != 0) {
        tr->agreed = 1;
        return givt_fail("rank %d runs another givt-train binary than rank 0 (it differs from rank 0's, byte for "
                         "byte): install the same build on every node",
                         bad);
    }
    return 0;
}

// Every rank reads the same data (the same files' shapes and sizes, labels and split; data.h's
// data_fingerprint): a node with another copy of the data set would train on other batches.
static int check_same_data(Trainer *tr) {
    Dist *d = tr->dist;
    if (d->world_size == 1) return 0;
    struct {
        uint64_t fingerprint;
        char what[256];
    } mine;
    memset(&mine, 0, sizeof mine);
    mine.fingerprint = data_fingerprint(&tr->data);
    data_describe(&tr->data, mine.what, sizeof mine.what);
    int bad = -1;
    char *r0 = NULL;
    if (dist_check_same(d, &mine, sizeof mine, &bad, &r0) == 0) return 0;
    if (d->rank == bad)
        fprintf(stderr, "givt-train: rank %d reads %s\ngivt-train: rank 0 reads %s\n", d->rank, mine.what,
                r0 ? r0 + sizeof mine.fingerprint : "?");
    free(r0);
    tr->agreed = 1;
    return givt_fail("rank %d reads other data than rank 0 (the files' shapes or sizes, the labels or the split "
                     "differ; printed above): give every node the same copy of [data] path",
                     bad);
}

// Every rank starts from the same weights (the same seed or the same checkpoint): checked, since a
// rank that did not would train another model from then on.
static int check_same_weights(Trainer *tr) {
    Dist *d = tr->dist;
    if (d->world_size == 1) return 0;
    size_t n = tr->model.table.total;
    float *host = xmalloc(n * sizeof(float));
    tr->be->ops->download(tr->be, host, tr->model.w.master, n * sizeof(float));
    uint64_t h = fnv1a(0xcbf29ce484222325ull, host, n * sizeof(float));
    free(host);
    int bad = -1;
    if (dist_check_same(d, &h, sizeof h, &bad, NULL) == 0) return 0;
    tr->agreed = 1;
    return givt_fail("rank %d starts from other weights than rank 0 (is [train] out_dir on a filesystem every node "
                     "sees, with the same checkpoints?)",
                     bad);
}

// Which checkpoint to resume from, decided by rank 0 (which owns out_dir) and sent to every rank:
// ckpt gets the folder, "" to start fresh. -1 on rank 0 when out_dir holds a run it must not touch.
static int choose_checkpoint(Trainer *tr, char *ckpt, size_t n) {
    const TrainSettings *ts = &tr->cfg.train;
    ckpt[0] = '\0';
    if (root(tr)) {
        if (!strcmp(ts->resume_from_ckpt, "latest")) {
            if (trainer_latest_checkpoint(ts->out_dir, ckpt, n) != 0) {
                fprintf(stderr, "givt-train: resume_from_ckpt = latest: no checkpoint in %s yet; starting fresh\n",
                        ts->out_dir);
                ckpt[0] = '\0';
            }
        } else if (ts->resume_from_ckpt[0]) {
            snprintf(ckpt, n, "%s", ts->resume_from_ckpt);
        } else {
            char existing[TRAIN_CONFIG_STR_MAX + 32];
            if (trainer_latest_checkpoint(ts->out_dir, existing, sizeof existing) == 0)
                return givt_fail("[train] out_dir = %s already holds checkpoints of a run (newest: %s): continue it "
                                 "with train.resume_from_ckpt=latest, or choose another out_dir (nothing was changed)",
                                 ts->out_dir, existing);
        }
    }
    dist_broadcast(tr->dist, ckpt, n);
    return 0;
}

// Rank 0 alone owns out_dir: creates it, locks it and clears what a killed run left there.
static int claim_out_dir(Trainer *tr) {
    const char *out = tr->cfg.train.out_dir;
    if (!root(tr)) return 0;
    return mkdir_p(out) != 0 || lock_out_dir(tr) != 0 || remove_stale_temporaries(out) != 0 ? -1 : 0;
}

static int setup(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    backend_set_device_ordinal(tr->dist->local_rank);  // one GPU per rank of a node
    tr->be = backend_open(device_kind_name(ts->device), ts->mixed_precision == MIXED_PRECISION_BF16 ? "bf16" : "no");
    if (!tr->be) return givt_fail("[train] device = %s: %s", device_kind_name(ts->device), givt_last_error());
    Dist *d = dist_for_backend(tr->dist, tr->be);
    if (!d) return -1;
    tr->dist = d;
    if (check_ranks_agree(tr) != 0) return -1;
    if (ts->mixed_precision == MIXED_PRECISION_BF16 && tr->be->compute != DTYPE_BF16 && root(tr))
        fprintf(stderr, "givt-train: note: mixed_precision = bf16: the %s backend computes in %s\n", tr->be->name,
                dtype_name(tr->be->compute));
    if (check_memory(&tr->cfg, tr->be, d->world_size, root(tr)) != 0) return -1;
    if (claim_out_dir(tr) != 0 || open_data(tr) != 0 || check_same_data(tr) != 0) return -1;
    if (model_create(&tr->model, &tr->cfg.model, tr->be) != 0) return -1;
    GivtModel *m = &tr->model;
    model_alloc_acts(m, ts->batch_size, tr->T, 1, ts->gradient_checkpointing);
    model_alloc_grads(m);
    OptimConfig oc = optim_config(ts);
    tr->zero = ts->zero == 1;
    DistPart part = tr->zero ? dist_part(m->table.total, d->world_size, d->rank) : (DistPart){0, m->table.total};
    adamw_create_part(&tr->opt, m, &oc, part.first, part.count);
    if (tr->zero) tr->grad_part = tr->be->ops->alloc(tr->be, (part.count ? part.count : 1) * sizeof(float));
    tr->has_ema = ts->ema > 0;
    if (tr->has_ema) model_weights_alloc(m, &tr->ema);
    m->grads_ready_user = tr;
    size_t batch_floats = (size_t)ts->batch_size * tr->T * m->cfg.input_dim;
    tr->batch_host = xmalloc(batch_floats * sizeof(float));
    tr->batch = tr->be->ops->alloc(tr->be, batch_floats * sizeof(float));
    char ckpt[TRAIN_CONFIG_STR_MAX + 32];
    if (choose_checkpoint(tr, ckpt, sizeof ckpt) != 0) return -1;
    if (ckpt[0])
        return resume(tr, ckpt) != 0 || (root(tr) && set_aside_newer(ts->out_dir, tr->step) != 0) ||
                       check_same_weights(tr) != 0
                   ? -1
                   : 0;
    if (ts->init_from[0]) {
        if (load_weights_from(tr, ts->init_from, "init_from") != 0) return -1;
    } else {
        Rng rng;
        rng_seed(&rng, ts->seed);
        model_init_params(m, &rng);
    }
    if (tr->has_ema) model_weights_copy(m, &tr->ema, &m->w);  // the EMA starts as a copy
    return check_same_weights(tr);
}

static void teardown(Trainer *tr) {
    GivtModel *m = &tr->model;
    if (tr->lock_fd >= 0) close(tr->lock_fd);
    if (tr->metrics) fclose(tr->metrics);
    if (tr->batch) tr->be->ops->free(tr->be, tr->batch);
    if (tr->grad_part) tr->be->ops->free(tr->be, tr->grad_part);
    if (tr->has_ema) model_weights_free(m, &tr->ema);
    free(tr->batch_host);
    free(tr->labels);
    if (m->w.master) adamw_free(&tr->opt, m);
    model_free(m);
    data_close(&tr->data);
}

// ema = decay * ema + (1 - decay) * weights, master and compute copy
static void ema_step(Trainer *tr, float decay) {
    GivtModel *m = &tr->model;
    cval *compute = (void *)tr->ema.compute == (void *)tr->ema.master ? NULL : tr->ema.compute;
    tr->be->ops->ema_update(tr->be, tr->ema.master, compute, m->w.master, m->table.total, decay);
}

// ZeRO-1: each rank updated its part of the master weights; every rank gets all of them, and the
// compute copy (when separate) is made again from them.
static void gather_weights(Trainer *tr) {
    GivtModel *m = &tr->model;
    dist_allgather(tr->dist, tr->be, m->w.master, m->table.total);
    if ((void *)m->w.compute != (void *)m->w.master) tr->be->ops->to_compute(tr->be, m->w.compute, m->w.master, m->table.total);
}

// One optimizer step: gradients, the finiteness check, clipping, AdamW and the EMA.
static StepResult train_step(Trainer *tr, double *loss, double *lr, double *gnorm) {
    GivtModel *m = &tr->model;
    StepResult r = accumulate_gradients(tr);
    if (r != STEP_DONE) return r;
    double sc[2];  // the host reads the loss and the squared gradient norm once per step
    tr->be->ops->download(tr->be, sc, m->scalars + SCALAR_LOSS_SUM, sizeof sc);
    double count = (double)tr->cfg.train.batch_size * tr->T * m->cfg.input_dim * tr->cfg.train.grad_accum_steps;
    *loss = sc[0] / (count * tr->dist->world_size);
    *gnorm = sqrt(sc[1]);
    *lr = tr->cfg.train.lr * lr_factor(&tr->opt.cfg, tr->step);
    tr->step++;
    if (!isfinite(*loss) || !isfinite(*gnorm)) {
        tr->skipped_total++;
        fprintf(stderr, "\ngivt-train: step %ld: loss %g, gradient norm %g: not finite, update skipped\n", tr->step,
                *loss, *gnorm);
        if (++tr->skipped_in_row >= MAX_BAD_STEPS_IN_A_ROW) {
            givt_fail("%d steps in a row with a non-finite loss or gradient (last: step %ld); stopping",
                      MAX_BAD_STEPS_IN_A_ROW, tr->step);
            tr->agreed = 1;  // the loss and the norm are global: every rank stops here
            return STEP_DIVERGED;
        }
        return STEP_SKIPPED;
    }
    tr->skipped_in_row = 0;
    backend_range_push(tr->be, "optimizer");
    adamw_step(&tr->opt, m, tr->zero ? tr->grad_part : m->grads, *lr, *gnorm);
    if (tr->zero) gather_weights(tr);
    if (tr->has_ema) ema_step(tr, (float)ema_decay(tr->cfg.train.ema, tr->opt.t));
    backend_range_pop(tr->be);
    return STEP_DONE;
}

// Ends the run before max_steps, after an interrupt (returns 130) or a data error (returns -1, the
// error's message kept): a checkpoint of the last completed step is written first, unless the newest
// checkpoint already holds it, and the run says which.
// Every rank calls it at the same step (the reasons are agreed).
static int stop_early(Trainer *tr, int interrupted) {
    tr->agreed = 1;
    char *why = interrupted ? NULL : xstrdup(givt_last_error());
    char where[TRAIN_CONFIG_STR_MAX + 64];
    int rc = 0;
    if (tr->step > tr->saved_step) {
        rc = save_checkpoint(tr);
        checkpoint_path(tr->cfg.train.out_dir, tr->step, where, sizeof where);
    } else if (tr->saved_step > 0) {
        checkpoint_path(tr->cfg.train.out_dir, tr->saved_step, where, sizeof where);
    } else {
        snprintf(where, sizeof where, "none: no step was completed");
    }
    if (rc != 0) {
        fprintf(stderr, "\ngivt-train: %s\n", why ? why : "interrupted");
        free(why);
        return -1;  // save_checkpoint's message
    }
    if (interrupted) {
        if (root(tr)) fprintf(stderr, "\ngivt-train: interrupted at step %ld; checkpoint: %s\n", tr->step, where);
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

static int loop(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    int tty = isatty(fileno(stderr));
    long tokens_per_step = (long)ts->batch_size * tr->T * ts->grad_accum_steps * tr->dist->world_size;
    double flops_per_token = givt_config_flops_per_token(&tr->cfg.model, tr->T, NULL);
    // the MFU's peak: [train] peak_tflops, else the backend's own figure (the CPU backend has none), per
    // device, times the devices (tok/s is of all of them)
    double peak = (ts->peak_tflops > 0 ? ts->peak_tflops * 1e12 : tr->be->peak_flops) * tr->dist->world_size;
    double t_window = time_now_s(), t_start = t_window;
    long steps_window = 0, start_step = tr->step;
    if (tr->step >= ts->max_steps)
        fprintf(stderr, "givt-train: step %ld already reaches max_steps = %ld: nothing to do\n", tr->step,
                (long)ts->max_steps);
    while (tr->step < ts->max_steps) {
        double loss, lr, gnorm;
        StepResult r = train_step(tr, &loss, &lr, &gnorm);
        if (r == STEP_DIVERGED) return -1;
        if (r == STEP_DATA_ERROR || r == STEP_INTERRUPTED) return stop_early(tr, r == STEP_INTERRUPTED);
        steps_window++;
        int last = tr->step == ts->max_steps;
        double val_loss = NAN;
        int val = 0;  // validate's result: 1 when a stop signal cut it short (nothing measured is kept)
        if (ts->val_every > 0 && data_num_val(&tr->data) > 0 && (tr->step % ts->val_every == 0 || last) &&
            (val = validate(tr, &val_loss)) < 0)
            return stop_early(tr, 0);
        if (val == 1 && root(tr))
            fprintf(stderr, "\ngivt-train: the validation of step %ld was cut short by the stop: no val_loss for this "
                            "step (metrics.jsonl says \"val_interrupted\": true)\n", tr->step);
        if (tr->step % ts->log_every == 0 || last || !isnan(val_loss) || val == 1) {
            double now = time_now_s();
            double tok_s = (double)(steps_window * tokens_per_step) / (now - t_window);
            double mfu = peak > 0 ? tok_s * flops_per_token / peak : NAN;
            double eta = (now - t_start) / (double)(tr->step - start_step) * (double)(ts->max_steps - tr->step);
            if (root(tr)) {
                metrics_write(tr, loss, lr, gnorm, tok_s, mfu, val_loss, val == 1);
                progress(tr, tty, loss, lr, gnorm, tok_s, mfu, eta, val_loss);
            }
            t_window = now;
            steps_window = 0;
        }
        if (dist_any(tr->dist, stop_requested())) return stop_early(tr, 1);
        if ((ts->save_every > 0 && tr->step % ts->save_every == 0) || last) {
            if (save_checkpoint(tr) != 0) return -1;
        }
    }
    if (tty) fputc('\n', stderr);
    return 0;
}

// The start-up line (rank 0): the model, the data, the backend, the ranks and the global batch.
static void say_start(const Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    const Dist *d = tr->dist;
    fprintf(stderr,
            "givt-train: %zu parameters, %lld training / %lld validation sequences of T = %d, backend %s (%s, %s "
            "compute)\n",
            tr->model.table.total, (long long)data_num_train(&tr->data), (long long)data_num_val(&tr->data), tr->T,
            tr->be->name, tr->be->device, dtype_name(tr->be->compute));
    fprintf(stderr, "givt-train: global batch %ld sequences = batch_size %d x grad_accum_steps %d x %d rank%s",
            (long)ts->batch_size * ts->grad_accum_steps * d->world_size, ts->batch_size, ts->grad_accum_steps,
            d->world_size, d->world_size == 1 ? "" : "s");
    if (strcmp(d->name, "single") != 0)
        fprintf(stderr, " (%s communicator, started by %s%s)", d->name, d->launcher, tr->zero ? ", ZeRO-1" : "");
    fputc('\n', stderr);
}

// After a failure with several ranks: a failure every rank reached together ends the run normally,
// rank 0 (and the rank whose error it was) saying why; a failure of this rank alone ends the whole
// job at once, naming the rank, since the others would wait for it forever.
static int end_failed_job(Trainer *tr, int rc) {
    Dist *d = tr->dist;
    char *why = xstrdup(givt_last_error());
    if (!tr->agreed) {
        fprintf(stderr, "givt-train: rank %d of %d: %s\ngivt-train: rank %d failed alone: ending the whole job\n",
                d->rank, d->world_size, why, d->rank);
        dist_abort(d, 1);
    }
    if (!root(tr) && !tr->local_error) rc = 1;  // rank 0 says why
    else if (!root(tr)) givt_fail("rank %d: %s", d->rank, why);
    free(why);
    return rc;
}

int trainer_run(const TrainConfig *cfg) {
    Dist *d = dist_open();
    if (!d) return -1;
    Trainer *tr = xcalloc(1, sizeof *tr);
    tr->cfg = *cfg;
    tr->dist = d;
    tr->lock_fd = -1;
    int rc = setup(tr);
    if (rc == 0 && root(tr)) {
        char *p = path_join(cfg->train.out_dir, "train.ini");
        rc = train_config_save(&tr->cfg, p);
        free(p);
        if (rc == 0) rc = metrics_open(tr);
    }
    if (rc == 0) {
        if (root(tr)) say_start(tr);
        start_watchdog(tr);
        rc = loop(tr);
    }
    if (rc < 0 && tr->dist->world_size > 1) rc = end_failed_job(tr, rc);
    Backend *be = tr->be;
    teardown(tr);
    dist_close(tr->dist);  // before the backend: NCCL still uses its GPU
    backend_close(be);
    free(tr);
    return rc;
}
