// fuzz_train_state: the training-state reader (train_state_read: a checkpoint's optimizer.safetensors,
// the AdamW moments of every parameter and the training position in __metadata__, range-checked)
// for the parameter table of a fixed tiny model (D 2, C 4, F 4, H 1, L 1, block 4: 11 tensors, 150
// floats), and for states it accepts, the writer (train_state_write).
//
// Input: an optimizer.safetensors file (written to the scratch folder: the reader maps a path).
// Properties checked beyond "no crash, no sanitizer report, no exit":
//   - on success every value is in its documented range: step in [0, TRAIN_STATE_MAX_STEP],
//     skipped_steps in [0, step], adamw_t = step - skipped_steps, data_epoch in
//     [0, TRAIN_STATE_MAX_EPOCH], data_index >= 0, world_size in [1, TRAIN_STATE_MAX_WORLD],
//     global_batch 0 (absent) or in [1, INT32_MAX]; every first moment finite, every second moment
//     finite and >= 0;
//   - on success, the state written back with train_state_write reads back the same, bit for bit
//     (global_batch 0, unknown, is written as absent);
//   - on failure, the message (givt_last_error) is one line.
#include "fuzz_util.h"

#include <math.h>

#include "model.h"
#include "train_state.h"
#include "util.h"

static const ParamTable *table(void) {
    static ParamTable pt;
    if (!pt.specs) {
        GivtConfig cfg;
        givt_config_default(&cfg);
        cfg.input_dim = 2;
        cfg.hidden_dim = 4;
        cfg.intermediate_dim = 4;
        cfg.num_heads = 1;
        cfg.num_layers = 1;
        cfg.block_size = 4;
        param_table_build(&pt, &cfg);
    }
    return &pt;
}

static void check_ranges(const TrainState *s) {
    FUZZ_CHECK(s->step >= 0 && s->step <= TRAIN_STATE_MAX_STEP, "step %lld", (long long)s->step);
    FUZZ_CHECK(s->skipped_steps >= 0 && s->skipped_steps <= s->step, "skipped_steps %lld of step %lld",
               (long long)s->skipped_steps, (long long)s->step);
    FUZZ_CHECK(s->adamw_t == s->step - s->skipped_steps, "adamw_t %lld, step %lld, skipped_steps %lld",
               (long long)s->adamw_t, (long long)s->step, (long long)s->skipped_steps);
    FUZZ_CHECK(s->data_epoch >= 0 && s->data_epoch <= TRAIN_STATE_MAX_EPOCH, "data_epoch %lld",
               (long long)s->data_epoch);
    FUZZ_CHECK(s->data_index >= 0, "data_index %lld", (long long)s->data_index);
    FUZZ_CHECK(s->world_size >= 1 && s->world_size <= TRAIN_STATE_MAX_WORLD, "world_size %lld",
               (long long)s->world_size);
    FUZZ_CHECK(s->global_batch == 0 || (s->global_batch >= 1 && s->global_batch <= INT32_MAX), "global_batch %lld",
               (long long)s->global_batch);
    FUZZ_MAGNITUDE(s->step);
    FUZZ_MAGNITUDE(s->data_epoch);
    FUZZ_MAGNITUDE(s->data_index);
}

static void check_moments(const ParamTable *pt, const float *mh, const float *vh) {
    for (size_t i = 0; i < pt->total; i++) {
        FUZZ_CHECK(isfinite(mh[i]), "exp_avg element %zu is %g", i, (double)mh[i]);
        FUZZ_CHECK(isfinite(vh[i]) && vh[i] >= 0.0f, "exp_avg_sq element %zu is %g", i, (double)vh[i]);
    }
}

// train_state_write's file reads back to the same moments and state.
static void check_round_trip(const ParamTable *pt, const float *mh, const float *vh, const TrainState *s) {
    const char *out = fuzz_path("written.safetensors");
    FUZZ_CHECK(train_state_write(out, pt, mh, vh, s) == 0, "train_state_write: %s", givt_last_error());
    float *mh2 = malloc(pt->total * sizeof(float)), *vh2 = malloc(pt->total * sizeof(float));
    TrainState s2;
    FUZZ_CHECK(train_state_read(out, pt, mh2, vh2, &s2) == 0, "the written state does not read back: %s",
               givt_last_error());
    FUZZ_CHECK(memcmp(mh, mh2, pt->total * sizeof(float)) == 0, "exp_avg changed");
    FUZZ_CHECK(memcmp(vh, vh2, pt->total * sizeof(float)) == 0, "exp_avg_sq changed");
    FUZZ_CHECK(s2.step == s->step && s2.adamw_t == s->adamw_t && s2.skipped_steps == s->skipped_steps &&
                   s2.data_epoch == s->data_epoch && s2.data_index == s->data_index &&
                   s2.world_size == s->world_size && s2.global_batch == s->global_batch,
               "the state changed");
    free(mh2);
    free(vh2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const ParamTable *pt = table();
    const char *path = fuzz_path("optimizer.safetensors");
    fuzz_write_file(path, data, size);
    float *mh = malloc(pt->total * sizeof(float)), *vh = malloc(pt->total * sizeof(float));
    TrainState s;
    if (train_state_read(path, pt, mh, vh, &s) == 0) {
        check_ranges(&s);
        check_moments(pt, mh, vh);
        check_round_trip(pt, mh, vh, &s);
    } else {
        const char *msg = givt_last_error();
        FUZZ_CHECK(strchr(msg, '\n') == NULL, "the message is not one line: \"%s\"", msg);
    }
    free(mh);
    free(vh);
    return 0;
}
