// trainer: the training loop of givt-train: data, AdamW, schedules, EMA, validation, metrics,
// checkpoints (atomic folders, keep-N, bit-exact resume) and the progress line. Its body: trainer.c (the
// loop), checkpoint.c, run_guard.c (watchdog, rank agreement) and metrics.c; see trainer_internal.h.
#ifndef GIVT_TRAINER_H
#define GIVT_TRAINER_H

#include "train_config.h"

// Runs training as configured. Returns 0 when max_steps is reached, 130 after an interrupt (a
// checkpoint of the last completed step is written first), or -1 with a message (givt_fail).
int trainer_run(const TrainConfig *cfg);

// The newest complete checkpoint folder "out_dir/step_XXXXXXXX" into buf; -1 if there is none.
int trainer_latest_checkpoint(const char *out_dir, char *buf, size_t n);

#endif
