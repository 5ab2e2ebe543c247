// checkpoint: the trainer's checkpoints: out_dir's lock, stale temporaries, and writing, keeping and resuming
// checkpoint folders (see trainer_internal.h).
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>  // kill(pid, 0): is a temporary's owner alive
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "hf.h"
#include "train_state.h"
#include "trainer_internal.h"

#define CKPT_PREFIX "step_"
#define LOCK_NAME ".givt-train.lock"

// "step_" and the step in at least 8 digits (ckpt_path's %08ld: zero-padded to 8, more digits
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

void ckpt_path(const char *out_dir, long step, char *buf, size_t n) {
    snprintf(buf, n, "%s/" CKPT_PREFIX "%08ld", out_dir, step);
}

int trainer_latest_checkpoint(const char *out_dir, char *buf, size_t n) {
    int count;
    long *steps = list_checkpoints(out_dir, &count);
    int rc = count > 0 ? 0 : givt_fail("%s: no checkpoint (" CKPT_PREFIX "XXXXXXXX folder) to resume from", out_dir);
    if (count > 0) ckpt_path(out_dir, steps[count - 1], buf, n);
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
        char *p = fs_path_join(dir, e->d_name);
        if (unlink(p) != 0) rc = givt_fail("%s: cannot remove: %s", p, strerror(errno));
        free(p);
    }
    closedir(d);
    if (rc == 0 && rmdir(dir) != 0) rc = givt_fail("%s: cannot remove: %s", dir, strerror(errno));
    return rc;
}

// The pid a temporary's name carries: AtomicFile's (fs.h's fs_atomic_temp_owner) or the "...-<pid>"
// that ends a checkpoint folder being written or removed; 0 when the name has none.
static long temporary_owner(const char *name, int folder) {
    if (!folder) return fs_atomic_temp_owner(name);
    const char *t = strrchr(name, '-');
    return t ? fs_parse_pid(t + 1, t + 1 + strlen(t + 1)) : 0;
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
        char *p = fs_path_join(out_dir, e->d_name);
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
    ckpt_path(out_dir, step, dir, sizeof dir);
    snprintf(doomed, sizeof doomed, "%s/.tmp-" CKPT_PREFIX "%08ld-old-%ld", out_dir, step, (long)getpid());
    if (rename(dir, doomed) != 0) return givt_fail("%s: cannot rename to %s: %s", dir, doomed, strerror(errno));
    return remove_folder(doomed);
}

int ckpt_set_aside_newer(Trainer *tr) {
    const char *out_dir = tr->cfg.train.out_dir;
    long step = tr->step;
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
        ckpt_path(out_dir, steps[i], from, sizeof from);
        char *to = fs_path_join(aside, strrchr(from, '/') + 1);
        if (rename(from, to) != 0) rc = givt_fail("%s: cannot move to %s: %s", from, to, strerror(errno));
        free(to);
    }
    char *metrics = fs_path_join(out_dir, "metrics.jsonl"), *kept = fs_path_join(aside, "metrics.jsonl");
    if (rc == 0 && fs_path_exists(metrics) && link(metrics, kept) != 0)
        train_log_say(&tr->log, "givt-train: warning: %s: cannot keep a copy in %s: %s", metrics, aside, strerror(errno));
    if (rc == 0) rc = fs_fsync_dir_of(from);
    if (rc == 0)
        train_log_say(&tr->log,
                      "givt-train: note: resuming at step %ld, older than the newest checkpoint in %s (step %ld): the %d "
                      "newer checkpoint%s and that run's metrics.jsonl were moved to %s (move them back to return to "
                      "that run)",
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
        train_log_say(&tr->log,
                      "givt-train: note: %s was written by %ld process%s, this run has %d: the global batch is now %ld "
                      "sequences%s; the data stream goes on from the same position",
                      path, (long)s.world_size, s.world_size == 1 ? "" : "es", tr->dist->world_size, global_batch(tr),
                      was);
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
    grad_sumsq_buffer(be, acc, p, m->table.total);
    be->ops->download(be, &ss, acc, sizeof(double));
    return isfinite(ss);
}

void ckpt_rotate(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    int n;
    long *steps = list_checkpoints(ts->out_dir, &n);
    int exempt = ts->keep_best && tr->best_step > 0;
    for (int i = n - 1, kept = 0; ts->keep_checkpoints > 0 && i >= 0; i--) {
        if (exempt && steps[i] == tr->best_step) continue;
        if (++kept > ts->keep_checkpoints && remove_checkpoint(ts->out_dir, steps[i]) != 0)
            train_log_say(&tr->log, "givt-train: warning: %s", givt_last_error());
    }
    free(steps);
}

#define BEST_NAME "best"

// Is path a symbolic link (dangling or not)?
static int is_symlink(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 && S_ISLNK(st.st_mode);
}

void ckpt_point_best(Trainer *tr) {
    const char *out = tr->cfg.train.out_dir;
    char dir[TRAIN_CONFIG_STR_MAX + 32], target[32], tmp[64];
    char *link_path = fs_path_join(out, BEST_NAME);
    int have = tr->cfg.train.keep_best && tr->best_step > 0;
    if (have) ckpt_path(out, tr->best_step, dir, sizeof dir);
    if (!have || !fs_path_exists(dir)) {  // nothing to point to: no stale link either
        if (is_symlink(link_path) && unlink(link_path) != 0)
            train_log_say(&tr->log, "givt-train: warning: %s: cannot remove: %s", link_path, strerror(errno));
        free(link_path);
        return;
    }
    snprintf(target, sizeof target, CKPT_PREFIX "%08ld", tr->best_step);  // relative: out_dir may move
    snprintf(tmp, sizeof tmp, BEST_NAME ".tmp.%ld", (long)getpid());  // a temporary name cleanup knows
    char *tmp_path = fs_path_join(out, tmp);
    unlink(tmp_path);
    if (symlink(target, tmp_path) != 0 || rename(tmp_path, link_path) != 0) {
        train_log_say(&tr->log, "givt-train: warning: %s: cannot link to %s: %s", link_path, target, strerror(errno));
        unlink(tmp_path);
    } else {
        fs_fsync_dir_of(link_path);
    }
    free(tmp_path);
    free(link_path);
}

// Rank 0 writes out_dir/step_XXXXXXXX as a whole (mh, vh: the moments of the whole table): files go
// to a temporary folder that is renamed into place, so a checkpoint folder is complete or absent.
// Then keeps the newest keep_checkpoints.
static int write_checkpoint(Trainer *tr, float *mh, float *vh) {
    const TrainSettings *ts = &tr->cfg.train;
    GivtModel *m = &tr->model;
    char final_dir[TRAIN_CONFIG_STR_MAX + 32], tmp_dir[TRAIN_CONFIG_STR_MAX + 64];
    ckpt_path(ts->out_dir, tr->step, final_dir, sizeof final_dir);
    snprintf(tmp_dir, sizeof tmp_dir, "%s/.tmp-" CKPT_PREFIX "%08ld-%ld", ts->out_dir, tr->step, (long)getpid());
    if (remove_folder(tmp_dir) != 0 || fs_mkdir_p(tmp_dir) != 0) return -1;
    int rc = hf_model_save(m, tmp_dir, &m->w);
    if (rc == 0 && tr->has_ema) {
        char *p = fs_path_join(tmp_dir, "ema.safetensors");
        rc = hf_model_save_tensors(m, p, &tr->ema);
        free(p);
    }
    char *p = fs_path_join(tmp_dir, "optimizer.safetensors");
    if (rc == 0) rc = save_train_state(tr, p, mh, vh);
    free(p);
    p = fs_path_join(tmp_dir, "train.ini");
    if (rc == 0) rc = train_config_save(&tr->cfg, p);
    free(p);
    if (rc == 0 && fs_path_exists(final_dir)) rc = remove_checkpoint(ts->out_dir, tr->step);  // saved again
    if (rc == 0 && rename(tmp_dir, final_dir) != 0)
        rc = givt_fail("%s: cannot rename to %s: %s", tmp_dir, final_dir, strerror(errno));
    if (rc == 0) rc = fs_fsync_dir_of(final_dir);
    if (rc != 0) {
        remove_folder(tmp_dir);
        return -1;
    }
    if (ts->keep_best && tr->step == tr->best_step) ckpt_point_best(tr);
    ckpt_rotate(tr);
    return 0;
}

int ckpt_save(Trainer *tr) {
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
    guard_note_progress();
    return 0;
}

int ckpt_load_weights_from(Trainer *tr, const char *folder, const char *what) {
    GivtConfig saved;
    if (hf_read_config(folder, &saved) != 0) return -1;
    char va[64], vb[64];
    const char *key = givt_config_diff(&tr->cfg.model, &saved, va, vb, sizeof va);
    if (key)
        return givt_fail("%s %s: [model] %s = %s, but the folder's config.json has %s = %s", what, folder, key, va,
                         key, vb);
    return hf_model_load_weights(&tr->model, folder, &tr->model.w);
}

int ckpt_resume(Trainer *tr, const char *dir) {
    if (ckpt_load_weights_from(tr, dir, "resume_from_ckpt") != 0) return -1;
    if (tr->has_ema) {
        char *p = fs_path_join(dir, "ema.safetensors");
        int rc = fs_path_exists(p) ? hf_model_load_tensors(&tr->model, p, &tr->ema)
                                : givt_fail("%s: missing, but [train] ema is on", p);
        free(p);
        if (rc != 0) return -1;
    }
    char *p = fs_path_join(dir, "optimizer.safetensors");
    int rc = load_train_state(tr, p);
    free(p);
    if (rc == 0 && root(tr)) train_log_say(&tr->log, "givt-train: resumed from %s at step %ld", dir, tr->step);
    tr->saved_step = tr->step;
    return rc;
}

// One trainer per out_dir: an advisory lock (flock) on the out_dir folder itself, held until the
// process ends. The kernel releases it however the process ends, so a killed run never leaves a lock
// behind, and nothing in the folder can be deleted to let a second trainer in. out_dir/.givt-train.lock
// holds the holder's PID, for the message a second trainer gets (information only). Where a folder
// cannot be locked (flock emulated over NFS wants a file open for writing), the PID file is locked.
static int lock_out_dir(Trainer *tr) {
    const char *out = tr->cfg.train.out_dir;
    char *p = fs_path_join(out, LOCK_NAME);
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
            train_log_say(&tr->log, "givt-train: warning: %s: cannot write the PID: %s", p, strerror(errno));
        tr->lock_fd = lock_fd;
    }
    if (dir_fd >= 0 && (rc != 0 || lock_fd != dir_fd)) close(dir_fd);
    if (pid_fd >= 0 && (rc != 0 || lock_fd != pid_fd)) close(pid_fd);
    free(p);
    return rc;
}

int ckpt_choose(Trainer *tr, char *ckpt, size_t n) {
    const TrainSettings *ts = &tr->cfg.train;
    ckpt[0] = '\0';
    if (root(tr)) {
        if (!strcmp(ts->resume_from_ckpt, "latest")) {
            if (trainer_latest_checkpoint(ts->out_dir, ckpt, n) != 0) {
                train_log_say(&tr->log, "givt-train: resume_from_ckpt = latest: no checkpoint in %s yet; starting fresh",
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

int ckpt_claim_out_dir(Trainer *tr) {
    const char *out = tr->cfg.train.out_dir;
    if (!root(tr)) return 0;
    return fs_mkdir_p(out) != 0 || lock_out_dir(tr) != 0 || remove_stale_temporaries(out) != 0 ||
                   train_log_open(&tr->log, out) != 0
               ? -1
               : 0;
}
