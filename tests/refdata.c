// refdata: reader of tests/reference.bin (format in refdata.h), with bounds checks on every field.
#include "refdata.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "util.h"

typedef struct {
    const unsigned char *p;
    size_t len, pos;
    const char *path;
    int bad;
} Cursor;

static int cur_fail(Cursor *c, const char *what) {
    if (!c->bad) givt_fail("%s: malformed reference file at byte %zu: %s", c->path, c->pos, what);
    c->bad = 1;
    return -1;
}

static int take(Cursor *c, void *dst, size_t n, const char *what) {
    if (c->bad) return -1;
    if (n > c->len - c->pos) return cur_fail(c, what);
    memcpy(dst, c->p + c->pos, n);
    c->pos += n;
    return 0;
}

// The file is little-endian; so is every machine this project targets (x86-64, aarch64).
static uint32_t rd_u32(Cursor *c, const char *what) {
    uint32_t v = 0;
    take(c, &v, 4, what);
    return v;
}

static int32_t rd_i32(Cursor *c, const char *what) {
    int32_t v = 0;
    take(c, &v, 4, what);
    return v;
}

static double rd_f64(Cursor *c, const char *what) {
    double v = 0;
    take(c, &v, 8, what);
    return v;
}

static void rd_str(Cursor *c, char *dst, size_t cap, const char *what) {
    uint32_t n = rd_u32(c, what);
    dst[0] = '\0';
    if (c->bad) return;
    if (n >= cap) {
        cur_fail(c, what);
        return;
    }
    if (take(c, dst, n, what) == 0) dst[n] = '\0';
}

static void rd_tensor(Cursor *c, RefTensor *t, const char *what) {
    memset(t, 0, sizeof *t);
    rd_str(c, t->name, sizeof t->name, what);
    uint32_t dtype = rd_u32(c, what);
    uint32_t ndim = rd_u32(c, what);
    if (c->bad) return;
    if ((dtype != 4 && dtype != 8) || ndim < 1 || ndim > 4) {
        cur_fail(c, "bad tensor dtype or ndim");
        return;
    }
    t->ndim = (int)ndim;
    t->numel = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        uint32_t s = rd_u32(c, what);
        if (s == 0 || s > (1u << 24)) {
            cur_fail(c, "bad tensor shape");
            return;
        }
        t->shape[i] = (int)s;
        t->numel *= s;
    }
    if (c->bad) return;
    if (t->numel > (c->len - c->pos) / dtype) {
        cur_fail(c, "tensor data past the end of the file");
        return;
    }
    t->data = xmalloc(t->numel * sizeof(double));
    for (size_t i = 0; i < t->numel; i++) {
        if (dtype == 4) {
            float f;
            take(c, &f, 4, what);
            t->data[i] = f;
        } else {
            take(c, &t->data[i], 8, what);
        }
    }
}

static RefTensor *rd_tensors(Cursor *c, int *n_out, const char *what) {
    uint32_t n = rd_u32(c, what);
    *n_out = 0;
    if (c->bad) return NULL;
    if (n > 4096) {
        cur_fail(c, "too many tensors");
        return NULL;
    }
    RefTensor *ts = xcalloc(n, sizeof *ts);
    for (uint32_t i = 0; i < n && !c->bad; i++) {
        rd_tensor(c, &ts[i], what);
        *n_out = (int)i + 1;
    }
    return ts;
}

static void free_tensors(RefTensor *ts, int n) {
    if (!ts) return;
    for (int i = 0; i < n; i++) free(ts[i].data);
    free(ts);
}

static void rd_case(Cursor *c, RefCase *rc, int version) {
    rd_str(c, rc->label, sizeof rc->label, "case label");
    GivtConfig *g = &rc->cfg;
    givt_config_default(g);
    g->input_dim = rd_i32(c, "config");
    g->hidden_dim = rd_i32(c, "config");
    g->intermediate_dim = rd_i32(c, "config");
    g->num_heads = rd_i32(c, "config");
    g->num_layers = rd_i32(c, "config");
    g->block_size = rd_i32(c, "config");
    g->eps = rd_f64(c, "config");
    g->rope_base = rd_f64(c, "config");
    g->rope_rotary_percentage = rd_f64(c, "config");
    g->rope_condense_ratio = rd_f64(c, "config");
    if (version >= 2) {
        g->num_mixtures = rd_i32(c, "config");
        g->num_classes = rd_i32(c, "config");
    }
    rc->B = rd_i32(c, "B");
    rc->T = rd_i32(c, "T");
    rc->full = rd_i32(c, "full");
    if (!c->bad && (rc->B < 1 || rc->T < 1 || rc->T > g->block_size)) cur_fail(c, "bad B or T");
    rc->params = rd_tensors(c, &rc->nparams, "weights");
    rd_tensor(c, &rc->x, "x");
    if (version >= 2) {
        if (g->num_classes > 0) rd_tensor(c, &rc->labels, "labels");
        rd_tensor(c, &rc->y, "y");
    } else {
        rd_tensor(c, &rc->mu, "mu");
        rd_tensor(c, &rc->std, "std");
    }
    rc->loss = rd_f64(c, "loss");
    rc->grads = rd_tensors(c, &rc->ngrads, "gradients");
    size_t btd = (size_t)rc->B * rc->T * g->input_dim;
    if (!c->bad && rc->x.numel != btd) cur_fail(c, "x is not (B, T, input_dim)");
    if (!c->bad && version == 1 && (rc->mu.numel != btd || rc->std.numel != btd))
        cur_fail(c, "mu or std is not (B, T, input_dim)");
    if (!c->bad && version >= 2) {
        int ok = g->num_mixtures >= 1 && g->num_mixtures <= GIVT_MAX_MIXTURES && g->num_classes >= 0 &&
                 g->num_classes <= GIVT_MAX_CLASSES;
        if (!ok) cur_fail(c, "bad num_mixtures or num_classes");
        else if (rc->y.numel != (size_t)rc->B * rc->T * givt_config_head_out(g)) cur_fail(c, "y is not (B, T, head_out)");
        else if (g->num_classes > 0 && rc->labels.numel != (size_t)rc->B) cur_fail(c, "labels is not (B)");
    }
    rc->has_train = (int)rd_u32(c, "has_train");
    if (c->bad || !rc->has_train) return;
    RefTrain *t = &rc->train;
    t->lr = rd_f64(c, "train");
    t->beta1 = rd_f64(c, "train");
    t->beta2 = rd_f64(c, "train");
    t->adam_eps = rd_f64(c, "train");
    t->weight_decay = rd_f64(c, "train");
    t->grad_clip = rd_f64(c, "train");
    t->timescale = rd_f64(c, "train");
    t->warmup_steps = (int)rd_u32(c, "train");
    uint32_t ns = rd_u32(c, "train");
    if (c->bad) return;
    if (ns > 100000) {
        cur_fail(c, "too many training steps");
        return;
    }
    t->nsteps = (int)ns;
    t->lr_used = xcalloc(ns, sizeof(double));
    t->losses = xcalloc(ns, sizeof(double));
    t->grad_norm = xcalloc(ns, sizeof(double));
    for (uint32_t s = 0; s < ns; s++) {
        t->lr_used[s] = rd_f64(c, "train step");
        t->losses[s] = rd_f64(c, "train step");
        t->grad_norm[s] = rd_f64(c, "train step");
    }
    t->final_params = rd_tensors(c, &t->nfinal, "final weights");
}

const char *refdata_default_path(void) {
    const char *p = getenv("GIVT_TEST_DATA");
    return (p && *p) ? p : "tests/reference.bin";
}

const char *refdata_mix_path(void) {
    const char *p = getenv("GIVT_TEST_DATA_MIX");
    return (p && *p) ? p : "tests/reference_mix.bin";
}

int refdata_load(RefData *rd, const char *path) {
    memset(rd, 0, sizeof *rd);
    size_t len = 0;
    char *buf = fs_read_text(path, &len);  // binary-safe: returns the length read
    if (!buf) {
        char why[512];  // givt_fail must not read the buffer it writes
        snprintf(why, sizeof why, "%s", givt_last_error());
        return givt_fail("%s (the reference file; regenerate it with scripts/make_reference.py or set "
                         "GIVT_TEST_DATA)", why);
    }
    Cursor c = {(const unsigned char *)buf, len, 0, path, 0};
    char magic[8];
    if (take(&c, magic, 8, "magic") == 0 && memcmp(magic, "GIVTREF1", 8) != 0)
        cur_fail(&c, "not a GIVT reference file (magic is not GIVTREF1)");
    uint32_t version = rd_u32(&c, "version");
    if (!c.bad && version != 1 && version != 2) {
        givt_fail("%s: reference file version %u, this reader knows versions 1 and 2", path, version);
        c.bad = 1;
    }
    uint32_t n = rd_u32(&c, "ncases");
    if (!c.bad && (n == 0 || n > 1000)) cur_fail(&c, "bad number of cases");
    if (!c.bad) {
        rd->version = (int)version;
        rd->cases = xcalloc(n, sizeof *rd->cases);
        for (uint32_t i = 0; i < n && !c.bad; i++) {
            rd_case(&c, &rd->cases[i], (int)version);
            rd->ncases = (int)i + 1;
        }
    }
    if (!c.bad && (take(&c, magic, 8, "trailer") != 0 || memcmp(magic, "GIVTEND1", 8) != 0))
        cur_fail(&c, "missing trailer GIVTEND1 (truncated file?)");
    if (!c.bad && c.pos != c.len) cur_fail(&c, "trailing bytes after GIVTEND1");
    free(buf);
    if (c.bad) {
        refdata_free(rd);
        return -1;
    }
    return 0;
}

void refdata_free(RefData *rd) {
    for (int i = 0; i < rd->ncases; i++) {
        RefCase *rc = &rd->cases[i];
        free_tensors(rc->params, rc->nparams);
        free(rc->x.data);
        free(rc->mu.data);
        free(rc->std.data);
        free(rc->labels.data);
        free(rc->y.data);
        free_tensors(rc->grads, rc->ngrads);
        free(rc->train.lr_used);
        free(rc->train.losses);
        free(rc->train.grad_norm);
        free_tensors(rc->train.final_params, rc->train.nfinal);
    }
    free(rd->cases);
    memset(rd, 0, sizeof *rd);
}

const RefTensor *ref_find(const RefTensor *ts, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(ts[i].name, name) == 0) return &ts[i];
    return NULL;
}
