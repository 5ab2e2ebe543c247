// train_state: a checkpoint's optimizer.safetensors (see train_state.h).
#include "train_state.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "util.h"

enum { MOMENT_AVG, MOMENT_AVG_SQ };

// "exp_avg.<param>" or "exp_avg_sq.<param>" into buf[96].
static const char *moment_name(char *buf, int which, const char *param) {
    snprintf(buf, 96, "%s.%s", which == MOMENT_AVG_SQ ? "exp_avg_sq" : "exp_avg", param);
    return buf;
}

int train_state_write(const char *path, const ParamTable *pt, const float *mh, const float *vh, const TrainState *s) {
    StWriteTensor *ts = xcalloc((size_t)pt->count * 2, sizeof *ts);
    char (*names)[96] = xcalloc((size_t)pt->count * 2, sizeof *names);
    for (int i = 0; i < pt->count; i++)
        for (int k = MOMENT_AVG; k <= MOMENT_AVG_SQ; k++) {
            const ParamSpec *p = &pt->specs[i];
            StWriteTensor *t = &ts[2 * i + k];
            t->name = moment_name(names[2 * i + k], k, p->name);
            t->ndim = p->ndim;
            t->shape[0] = p->shape[0];
            t->shape[1] = p->shape[1];
            t->data = (k == MOMENT_AVG_SQ ? vh : mh) + p->offset;
        }
    char v[7][32];
    const int64_t vals[7] = {s->step,          s->adamw_t,    s->data_epoch,  s->data_index,
                             s->skipped_steps, s->world_size, s->global_batch};
    for (int i = 0; i < 7; i++) snprintf(v[i], sizeof v[i], "%" PRId64, vals[i]);
    StMeta meta[] = {{"givt_state", TRAIN_STATE_FORMAT}, {"step", v[0]},          {"adamw_t", v[1]},
                     {"data_epoch", v[2]},               {"data_index", v[3]},    {"skipped_steps", v[4]},
                     {"world_size", v[5]},               {"global_batch", v[6]}};
    int n_meta = (int)(sizeof meta / sizeof meta[0]) - (s->global_batch == 0);  // 0: unknown, not written
    int rc = st_write(path, ts, pt->count * 2, meta, n_meta);
    free(names);
    free(ts);
    return rc;
}

// Metadata key as a whole number in [lo, hi] into *out; absent gives *out = dflt when dflt_ok.
static int meta_int(const StFile *f, const char *key, int64_t lo, int64_t hi, int dflt_ok, int64_t dflt,
                    int64_t *out) {
    const char *v = st_metadata(f, key);
    if (!v) {
        *out = dflt;
        return dflt_ok ? 0 : givt_fail("%s: training state has no \"%s\"", f->path, key);
    }
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (end == v || *end || errno == ERANGE || x < lo || x > hi)
        return givt_fail("%s: training state \"%s\" = \"%s\": expected a whole number in [%" PRId64 ", %" PRId64
                         "] (the file is damaged or not from givt-train; resume from another checkpoint)",
                         f->path, key, v, lo, hi);
    *out = x;
    return 0;
}

static int read_meta(const StFile *f, TrainState *s) {
    const char *fmt = st_metadata(f, "givt_state");
    if (!fmt || strcmp(fmt, TRAIN_STATE_FORMAT) != 0)
        return givt_fail("%s: not a givt training state (expected \"givt_state\": \"" TRAIN_STATE_FORMAT "\")",
                         f->path);
    if (meta_int(f, "step", 0, TRAIN_STATE_MAX_STEP, 0, 0, &s->step) ||
        meta_int(f, "skipped_steps", 0, s->step, 0, 0, &s->skipped_steps) ||
        meta_int(f, "adamw_t", 0, TRAIN_STATE_MAX_STEP, 0, 0, &s->adamw_t) ||
        meta_int(f, "data_epoch", 0, TRAIN_STATE_MAX_EPOCH, 0, 0, &s->data_epoch) ||
        meta_int(f, "data_index", 0, INT64_MAX, 0, 0, &s->data_index) ||
        meta_int(f, "world_size", 1, TRAIN_STATE_MAX_WORLD, 1, 1, &s->world_size) ||
        meta_int(f, "global_batch", 1, INT32_MAX, 1, 0, &s->global_batch))
        return -1;
    if (s->adamw_t != s->step - s->skipped_steps)
        return givt_fail("%s: training state \"adamw_t\" = %" PRId64 ", but \"step\" = %" PRId64
                         " with \"skipped_steps\" = %" PRId64 " gives %" PRId64
                         " updates (the file is damaged or not from givt-train; resume from another checkpoint)",
                         f->path, s->adamw_t, s->step, s->skipped_steps, s->step - s->skipped_steps);
    return 0;
}

// Moments of one parameter: finite, and the second ones non-negative (AdamW takes their root).
static int check_moments(const StFile *f, const char *name, const float *x, size_t n, int squares) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]) || (squares && x[i] < 0.0f))
            return givt_fail("%s: \"%s\" element %zu is %g: %s; the checkpoint is damaged, resume from an earlier one",
                             f->path, name, i, (double)x[i], squares ? "AdamW's second moments are finite and >= 0"
                                                                    : "AdamW's moments are finite");
    return 0;
}

int train_state_read(const char *path, const ParamTable *pt, float *mh, float *vh, TrainState *s) {
    StFile f;
    if (st_open(&f, path) != 0) return -1;
    memset(s, 0, sizeof *s);
    int rc = read_meta(&f, s);
    param_table_zero_padding(pt, mh);  // the file holds the tensors only: the padding is zero
    param_table_zero_padding(pt, vh);
    for (int i = 0; rc == 0 && i < pt->count; i++)
        for (int k = MOMENT_AVG; rc == 0 && k <= MOMENT_AVG_SQ; k++) {
            const ParamSpec *p = &pt->specs[i];
            int64_t shape[2] = {p->shape[0], p->shape[1]};
            float *dst = (k == MOMENT_AVG_SQ ? vh : mh) + p->offset;
            char name[96];
            moment_name(name, k, p->name);
            rc = st_load_f32(&f, name, p->ndim, shape, dst);
            if (rc == 0) rc = check_moments(&f, name, dst, p->numel, k == MOMENT_AVG_SQ);
        }
    st_close(&f);
    return rc;
}
