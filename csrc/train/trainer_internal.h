// trainer_internal: private to csrc/train/, not installed API: what the trainer's compile units share.
// The trainer lives in four rooms: trainer.c (the loop), checkpoint.c, run_guard.c and metrics.c. They
// call only downwards: trainer.c calls the other three; checkpoint.c calls guard_note_progress (a
// checkpoint is progress); run_guard.c and metrics.c call no other room. All four say their lines
// through the trainer's log (train_log.h: the terminal, and out_dir/train.log on rank 0).
#ifndef GIVT_TRAINER_INTERNAL_H
#define GIVT_TRAINER_INTERNAL_H

#include <stdio.h>

#include "data.h"
#include "dist.h"
#include "loader.h"
#include "optim.h"
#include "tb_events.h"
#include "train_log.h"
#include "trainer.h"

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
    // The newest step's decision (step_check), made and applied on the backend, read back one step
    // late (trainer.c: settle_step): while `pending`, its loss, norm and skip are not known to the
    // host (opt.t, skipped_total and skipped_in_row count the steps before it).
    StepRecord *rec;            // backend memory
    BackendReadback *rec_back;  // its copy for the host
    int pending;                // tr->step's record is in flight
    int unlogged;               // tr->step is settled and its log (if due) not written yet
    double pending_lr, pending_t;  // the learning rate of the step in flight; when its train_step ended
    double step_loss, step_lr, step_gnorm, step_t;  // the settled step's, for its log
    int graphs;                 // [train] cuda_graphs in effect: the steps after the run's first replay one graph
    BackendGraph *graph;        // the step's graph, recorded at its first use (NULL until then)
    // The training batches, read ahead by the loader's thread into host memory the backend uploads
    // from without waiting (host_alloc); each is held until a wait covers its upload (settle_step).
    Loader *loader;
    LoaderBatch **held;         // (held_max) batches whose upload may still be in flight
    long *held_step;            // (held_max) the step each belongs to (tr->step + 1 when staged)
    int nheld, held_max;
    float *batch_host, *batch;  // (B, T, D): batch_host for validation
    int32_t *labels;            // (B) class labels of the batch (class-conditional models), host
    int T;
    long step;                  // optimizer steps completed (skipped ones included)
    long saved_step;            // step of the newest checkpoint this run wrote or resumed from (0: none)
    int lock_fd;                // out_dir's lock (the folder, open), held for the whole run; -1 when not held
    long skipped_total, skipped_in_row;
    int agreed;                 // the run stopped where every rank stopped (nothing to abort)
    int local_error;            // this rank's own error caused the stop (it prints its message)
    FILE *metrics;
    TrainLog log;               // every line the trainer says: the terminal and out_dir/train.log (rank 0)
    TbWriter tb;                // [train] tensorboard: the event file (rank 0); tb.f NULL when not written
    // validation over the whole run, a resumed one included (metrics.jsonl is read back on resume); rank 0
    double best_val, last_val;  // the lowest val_loss and the latest one; NaN: none yet
    long best_step, last_val_step;
    long start_step;            // the step this run started at (the summary)
    double t_start;             // when its loop started (util_time_now_s)
} Trainer;

// Only rank 0 prints and writes files.
static inline int root(const Trainer *tr) { return dist_is_root(tr->dist); }

// Sequences per optimizer step over all ranks.
static inline long global_batch(const Trainer *tr) {
    return (long)tr->cfg.train.batch_size * tr->cfg.train.grad_accum_steps * tr->dist->world_size;
}

// ---- checkpoint.c: checkpoints ------------------------------------------------------------
// The folder of the checkpoint of `step`, "out_dir/step_XXXXXXXX", into buf of n bytes.
void ckpt_path(const char *out_dir, long step, char *buf, size_t n);

// Resuming at tr->step from a checkpoint older than the newest in out_dir: the newer checkpoints belong
// to the run that went on from there, and the resumed run would overwrite them one by one (a later
// `latest` then mixing the two runs). Rank 0 moves them, whole, with that run's metrics.jsonl (a hard
// link: the resumed run rewrites its own), into out_dir/set-aside-<time>-<pid>/ and says where.
int ckpt_set_aside_newer(Trainer *tr);

// [train] keep_best (rank 0): out_dir/best, a symbolic link to the folder of the best checkpoint
// (step_XXXXXXXX of tr->best_step), is made or moved there atomically; without keep_best, or when that
// folder does not exist, a link left by an earlier run is removed. Its failure is only a warning.
void ckpt_point_best(Trainer *tr);

// The checkpoint of the current step, on every rank together: the moments are brought to rank 0,
// which writes the folder; every rank learns whether it was written. Every rank holds the same
// weights, so the finiteness check agrees everywhere.
int ckpt_save(Trainer *tr);

// Rank 0: keeps the newest keep_checkpoints checkpoint folders of out_dir (0: all), and with keep_best
// the best one besides; after each checkpoint, and at the start of a run (a run killed while it
// removed the old ones leaves one more, and a resumed run with nothing left to do writes none).
void ckpt_rotate(Trainer *tr);

// Loads config.json + model.safetensors of folder into the model, after checking that the folder's
// [model] matches the configured one.
int ckpt_load_weights_from(Trainer *tr, const char *folder, const char *what);

// Restores weights, EMA, optimizer and data position from the checkpoint folder dir.
int ckpt_resume(Trainer *tr, const char *dir);

// Which checkpoint to resume from, decided by rank 0 (which owns out_dir) and sent to every rank:
// ckpt gets the folder, "" to start fresh. -1 on rank 0 when out_dir holds a run it must not touch.
int ckpt_choose(Trainer *tr, char *ckpt, size_t n);

// Rank 0 alone owns out_dir: creates it, locks it and clears what a killed run left there.
int ckpt_claim_out_dir(Trainer *tr);

// ---- run_guard.c: the run guard -----------------------------------------------------------
// Notes progress (a micro-batch, a validation batch, a checkpoint) for the watchdog.
void guard_note_progress(void);

// Starts the watchdog thread of a multi-rank job with [train] hang_timeout > 0 (nothing otherwise).
void guard_start_watchdog(Trainer *tr);

// From now on the watchdog says its lines on stderr alone (the trainer's log is about to close).
void guard_watchdog_leaves_the_log(void);

// Every rank must run the same binary with the same configuration: checked before any work, and the
// rank that differs is named (with the first line of its configuration that differs from rank 0's).
int guard_check_ranks_agree(Trainer *tr);

// Every rank reads the same data (the same files' shapes and sizes, labels and split; data.h's
// data_fingerprint): a node with another copy of the data set would train on other batches.
int guard_check_same_data(Trainer *tr);

// Every rank starts from the same weights (the same seed or the same checkpoint): checked, since a
// rank that did not would train another model from then on.
int guard_check_same_weights(Trainer *tr);

// After a failure with several ranks: a failure every rank reached together ends the run normally,
// rank 0 (and the rank whose error it was) saying why; a failure of this rank alone ends the whole
// job at once, naming the rank, since the others would wait for it forever.
int guard_end_failed_job(Trainer *tr, int rc);

// ---- metrics.c: metrics -------------------------------------------------------------------
// Opens out_dir/metrics.jsonl for appending (rank 0), first dropping its lines past the current step;
// the val_loss lines kept give tr->best_val / best_step and last_val / last_val_step. With [train]
// tensorboard, also opens a new TensorBoard event file in out_dir.
int metrics_open(Trainer *tr);

// One line of metrics.jsonl for the current step (rank 0), and the same scalars as one TensorBoard
// event when its file is open (flushed).
// mfu: the model FLOPs utilisation (a fraction), NaN when no peak is known (not written).
// val_interrupted: the step's validation was cut short by a stop signal (no val_loss).
void metrics_write(Trainer *tr, double loss, double lr, double gnorm, double tok_s, double mfu, double val_loss,
                   int val_interrupted);

// The progress line (rank 0), through the log: redrawn in place on a terminal, a line per report
// otherwise and in train.log.
void metrics_progress(Trainer *tr, double loss, double lr, double gnorm, double tok_s, double mfu, double eta_s,
                      double val_loss);

// The start-up line (rank 0): the model, the data, the backend, the ranks and the global batch.
void metrics_say_start(Trainer *tr);

// The end-of-run summary (rank 0): steps, time and tokens of this run, the best validation loss and
// its step, the final checkpoint folder (final: "" when none) and that of the best (best: "" when
// none was kept).
void metrics_say_summary(Trainer *tr, const char *final, const char *best);

#endif
