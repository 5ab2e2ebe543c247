// train_state: optimizer.safetensors, a checkpoint's training state: the AdamW moments of every
// parameter and, in __metadata__, where training stands (steps, AdamW's update count, the data
// position, the ranks of the run). Read back like any other input: every value range-checked, and
// the counts checked against each other, so a damaged or forged state is a one-line error naming the
// file and the key, never a run at a negative learning rate or an overflow.
#ifndef GIVT_TRAIN_STATE_H
#define GIVT_TRAIN_STATE_H

#include <stdint.h>

#include "model.h"

#define TRAIN_STATE_FORMAT "givt-train-state-1"
// The largest step a state may hold: AdamW's kernels take the update count as an int.
#define TRAIN_STATE_MAX_STEP ((int64_t)INT32_MAX)
// The largest data epoch (far beyond any run: 2^40 passes) and world size a state may hold; the
// epoch bound keeps the data position's arithmetic (epoch + index / n) from overflowing.
#define TRAIN_STATE_MAX_EPOCH ((int64_t)1 << 40)
#define TRAIN_STATE_MAX_WORLD (1 << 20)

typedef struct {
    int64_t step;           // optimizer steps completed, skipped ones included
    int64_t adamw_t;        // updates applied: step - skipped_steps
    int64_t skipped_steps;  // steps skipped for a non-finite loss or gradient
    int64_t data_epoch;     // the global data stream's position: epoch and
    int64_t data_index;     //   index in that epoch's order (checked against the data by data_set_pos)
    int64_t world_size;     // ranks of the run that wrote it (1 when absent: older states)
    int64_t global_batch;   // sequences per step of the run that wrote it (0 when absent: older states)
} TrainState;

// Writes path atomically: "exp_avg.<name>" and "exp_avg_sq.<name>" for every parameter of pt (mh,
// vh: the moments of the whole table, pt->total floats each; the tensors only, not the padding
// between them: the file is the same whatever PARAM_ALIGN) and the state in __metadata__.
int train_state_write(const char *path, const ParamTable *pt, const float *mh, const float *vh, const TrainState *s);

// Reads path into mh, vh (pt->total floats each, the tensors' padding zeroed) and *s, checking the
// format, every tensor's shape, finite first moments, finite non-negative second moments, and each
// metadata value's range:
// step in [0, TRAIN_STATE_MAX_STEP], skipped_steps in [0, step], adamw_t = step - skipped_steps,
// data_epoch in [0, TRAIN_STATE_MAX_EPOCH], data_index >= 0, world_size in [1, TRAIN_STATE_MAX_WORLD],
// global_batch in [1, INT32_MAX] when present.
int train_state_read(const char *path, const ParamTable *pt, float *mh, float *vh, TrainState *s);

#endif
