// data: windows of seq_len vectors from .npy files (at most DATA_MAX_OPEN open at once) or seeded
// noise; split, shuffling, batches with a resumable position.
#define _GNU_SOURCE
#include "data.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rng.h"
#include "util.h"

// Salts that separate the random streams derived from the one seed.
enum { SALT_SPLIT = 1, SALT_SHUFFLE = 2, SALT_DUMMY = 3, SALT_LABEL_DROP = 4 };

// A 64-bit hash of (seed, salt, index) with util's rng_mix64: seeds the Rng of one permutation or one
// dummy sequence.
static uint64_t hash3(uint64_t seed, uint64_t salt, uint64_t index) {
    uint64_t h = rng_mix64(seed + 0x9e3779b97f4a7c15ull);
    h = rng_mix64(h ^ (salt * 0xd1b54a32d192ed03ull));
    return rng_mix64(h ^ (index + 0x8cb92ba72f3d8dd7ull));
}

// Uniform integer in [0, bound), without modulo bias.
static uint64_t rng_below(Rng *r, uint64_t bound) {
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t x = rng_next(r);
        if (x >= threshold) return x % bound;
    }
}

void data_config_default(DataConfig *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->kind = DATA_DUMMY;
    cfg->seq_len = 512;
    cfg->input_dim = 16;
    cfg->dummy_count = 10000;
    cfg->seed = 0;
    cfg->val_size = 0;
    cfg->rank = 0;
    cfg->world_size = 1;
}

// ---- file list ------------------------------------------------------------------------------
typedef struct {
    char **v;
    int n, cap;
} StrList;

static void sl_push(StrList *l, const char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 8;
        l->v = xrealloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n++] = xstrdup(s);
}

static void sl_free(StrList *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

// "a.npy,dir/*.npy" -> the files, each glob pattern's matches sorted.
static int expand_paths(const char *spec, StrList *out) {
    char *copy = xstrdup(spec);
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t') tok++;
        char *e = tok + strlen(tok);
        while (e > tok && (e[-1] == ' ' || e[-1] == '\t')) *--e = '\0';
        if (!*tok) continue;
        if (strpbrk(tok, "*?[")) {
            glob_t g;
            int gr = glob(tok, GLOB_ERR, NULL, &g);
            if (gr == GLOB_NOMATCH) rc = givt_fail("%s: no files match this pattern", tok);
            else if (gr != 0) rc = givt_fail("%s: glob failed (%s)", tok, gr == GLOB_ABORTED ? "read error" : "out of memory");
            else
                for (size_t i = 0; i < g.gl_pathc; i++) sl_push(out, g.gl_pathv[i]);
            if (gr == 0 || gr == GLOB_NOMATCH) globfree(&g);
        } else {
            sl_push(out, tok);
        }
    }
    free(copy);
    if (rc == 0 && out->n == 0) rc = givt_fail("data path \"%s\" names no files", spec);
    return rc;
}

int data_expand_paths(const char *spec, char ***paths, int *n) {
    StrList l = {0};
    if (expand_paths(spec, &l) != 0) {
        sl_free(&l);
        return -1;
    }
    *paths = l.v;
    *n = l.n;
    return 0;
}

void data_free_paths(char **paths, int n) {
    StrList l = {.v = paths, .n = n};
    sl_free(&l);
}

// ---- the open descriptors (at most DATA_MAX_OPEN) ---------------------------------------------
// Closes the least recently used open file (its header stays; fd -1). Needs nopen > 0.
static void evict_lru(Dataset *ds) {
    int j = 0;
    for (int k = 1; k < ds->nopen; k++)
        if (ds->file_used[ds->open_idx[k]] < ds->file_used[ds->open_idx[j]]) j = k;
    NpyFile *f = &ds->files[ds->open_idx[j]];
    close(f->fd);
    f->fd = -1;
    ds->open_idx[j] = ds->open_idx[--ds->nopen];
}

// Counts file i (just opened, fd >= 0) among the open ones and marks it used now.
static void track_open(Dataset *ds, int i) {
    ds->open_idx[ds->nopen++] = i;
    ds->file_used[i] = ++ds->use_clock;
}

// A new descriptor of file i, checked to be the file validated at data_open: same device, inode,
// size and modification time (O_NONBLOCK while opening: a FIFO put in its place cannot block).
// -1 with givt_fail naming the file. When the process is out of descriptors, ds (when not NULL)
// closes its least recently used files and tries again.
static int reopen_fd(Dataset *ds, const Dataset *cds, int i) {
    const NpyFile *f = &cds->files[i];
    int fd;
    while ((fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0 && (errno == EMFILE || errno == ENFILE) &&
           ds && ds->nopen > 0)
        evict_lru(ds);
    if (fd < 0) return givt_fail("%s: cannot reopen: %s", f->path, strerror(errno));
    int rc = npy_check_same_file(f, fd);
    if (rc == 0 && fcntl(fd, F_SETFL, 0) != 0) rc = givt_fail("%s: cannot reopen: %s", f->path, strerror(errno));
    if (rc == 0) return fd;
    close(fd);
    return rc;
}

// File i, open for reading (reopened if it was closed; the least recently used one closed first
// when DATA_MAX_OPEN are open), marked used now. NULL with givt_fail naming the file.
static const NpyFile *file_acquire(Dataset *ds, int i) {
    NpyFile *f = &ds->files[i];
    if (f->fd >= 0) {
        ds->file_used[i] = ++ds->use_clock;
        return f;
    }
    if (ds->nopen == DATA_MAX_OPEN) evict_lru(ds);
    int fd = reopen_fd(ds, ds, i);
    if (fd < 0) return NULL;
    f->fd = fd;
    track_open(ds, i);
    return f;
}

// npy_open of file i of the list, room made first; once more after closing every open file when it
// fails while some are open (the process may be out of descriptors).
static int open_one(Dataset *ds, int i, const char *path) {
    if (ds->nopen == DATA_MAX_OPEN) evict_lru(ds);
    NpyFile *f = &ds->files[i];
    int rc = npy_open(f, path);
    if (rc != 0 && ds->nopen > 0) {
        while (ds->nopen > 0) evict_lru(ds);
        rc = npy_open(f, path);
    }
    if (rc != 0) return -1;
    track_open(ds, i);
    return 0;
}

// ---- open / close ---------------------------------------------------------------------------
static int open_files(Dataset *ds) {
    StrList paths = {0};
    if (expand_paths(ds->cfg.path, &paths)) {
        sl_free(&paths);
        return -1;
    }
    ds->files = xcalloc((size_t)paths.n, sizeof *ds->files);
    ds->file_used = xcalloc((size_t)paths.n, sizeof *ds->file_used);
    ds->file_win0 = xcalloc((size_t)paths.n + 1, sizeof *ds->file_win0);
    int rc = 0;
    for (int i = 0; i < paths.n && rc == 0; i++) {
        NpyFile *f = &ds->files[i];
        if (open_one(ds, i, paths.v[i])) {
            rc = -1;
            break;
        }
        ds->nfiles = i + 1;
        int64_t D = f->ndim == 3 ? f->shape[2] : f->shape[1];
        if (D != ds->cfg.input_dim) {
            rc = givt_fail("%s: vectors have D = %lld but input_dim is %d", f->path, (long long)D,
                           ds->cfg.input_dim);
            break;
        }
        if (ds->cfg.seq_len == 0) {  // take T from the first file
            if (f->ndim != 3) {
                rc = givt_fail("%s: seq_len 0 (the files' own T) needs an (N, T, D) file", f->path);
                break;
            }
            if (f->shape[1] < 1 || f->shape[1] > 1 << 30) {
                rc = givt_fail("%s: T = %lld is not a usable sequence length", f->path, (long long)f->shape[1]);
                break;
            }
            ds->cfg.seq_len = (int)f->shape[1];
        }
        int64_t L = ds->cfg.seq_len, w;
        if (f->ndim == 3) {
            if (f->shape[1] < L) {
                rc = givt_fail("%s: sequences have T = %lld, shorter than seq_len = %lld", f->path,
                               (long long)f->shape[1], (long long)L);
                break;
            }
            w = f->shape[0] * (f->shape[1] / L);
        } else {
            if (f->shape[0] < L) {
                rc = givt_fail("%s: the (M, D) stream has M = %lld vectors, fewer than seq_len = %lld", f->path,
                               (long long)f->shape[0], (long long)L);
                break;
            }
            w = f->shape[0] / L;
        }
        ds->file_win0[i + 1] = ds->file_win0[i] + w;
    }
    if (rc == 0) ds->num_windows = ds->file_win0[ds->nfiles];
    sl_free(&paths);
    return rc;
}

// The labels file: one label per sequence of the (N, T, D) files, in file order, each in
// [0, num_classes).
static int load_labels(Dataset *ds, const char *path) {
    if (ds->cfg.kind != DATA_NPY) return givt_fail("labels %s: labels need .npy data (kind npy), not dummy data", path);
    int64_t seqs = 0;
    ds->file_seq0 = xcalloc((size_t)ds->nfiles, sizeof *ds->file_seq0);
    for (int i = 0; i < ds->nfiles; i++) {
        if (ds->files[i].ndim != 3)
            return givt_fail("labels %s: %s is an (M, D) stream; labels need (N, T, D) files (one label per sequence)",
                             path, ds->files[i].path);
        ds->file_seq0[i] = seqs;
        seqs += ds->files[i].shape[0];
    }
    int64_t n;
    if (npy_read_labels(path, &ds->labels, &n)) return -1;
    if (n != seqs)
        return givt_fail("%s: %lld labels, but the data hold %lld sequences (%s%s): one label per sequence", path,
                         (long long)n, (long long)seqs, ds->files[0].path, ds->nfiles > 1 ? ", ..." : "");
    for (int64_t i = 0; i < n; i++)
        if (ds->labels[i] < 0 || ds->labels[i] >= ds->cfg.num_classes)
            return givt_fail("%s: label %d at index %lld is not in [0, num_classes = %d)", path, ds->labels[i],
                             (long long)i, ds->cfg.num_classes);
    return 0;
}

static int make_split(Dataset *ds) {
    int64_t n = ds->num_windows, nv = ds->cfg.val_size;
    if (nv >= n)
        return givt_fail("val_size = %lld but the data have %lld windows (need val_size < windows)", (long long)nv,
                         (long long)n);
    // The first nv entries of a forward Fisher-Yates permutation of all windows are validation.
    int64_t *a = xmalloc((size_t)n * sizeof *a);
    for (int64_t i = 0; i < n; i++) a[i] = i;
    Rng r;
    rng_seed(&r, hash3(ds->cfg.seed, SALT_SPLIT, 0));
    for (int64_t i = 0; i < nv; i++) {
        int64_t j = i + (int64_t)rng_below(&r, (uint64_t)(n - i));
        int64_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
    unsigned char *is_val = xcalloc((size_t)n, 1);
    for (int64_t i = 0; i < nv; i++) is_val[a[i]] = 1;
    free(a);
    ds->num_val = nv;
    ds->num_train = n - nv;
    ds->val_ids = xmalloc((size_t)(nv ? nv : 1) * sizeof *ds->val_ids);
    ds->train_ids = xmalloc((size_t)ds->num_train * sizeof *ds->train_ids);
    int64_t kv = 0, kt = 0;
    for (int64_t i = 0; i < n; i++) {
        if (is_val[i]) ds->val_ids[kv++] = i;
        else ds->train_ids[kt++] = i;
    }
    free(is_val);
    return 0;
}

int data_open(Dataset *ds, const DataConfig *cfg) {
    memset(ds, 0, sizeof *ds);
    ds->cfg = *cfg;
    ds->cfg.path = NULL;
    ds->perm_epoch = -1;
    if (cfg->input_dim < 1) return givt_fail("input_dim = %d: must be at least 1", cfg->input_dim);
    if (cfg->seq_len < 0 || (cfg->seq_len == 0 && cfg->kind != DATA_NPY))
        return givt_fail("seq_len = %d: must be at least 1", cfg->seq_len);
    if (cfg->world_size < 1 || cfg->rank < 0 || cfg->rank >= cfg->world_size)
        return givt_fail("rank %d of world_size %d: need 0 <= rank < world_size", cfg->rank, cfg->world_size);
    if (cfg->val_size < 0) return givt_fail("val_size = %lld: must be >= 0", (long long)cfg->val_size);
    if (cfg->kind == DATA_NPY) {
        if (!cfg->path || !*cfg->path) return givt_fail("data kind npy needs a path");
        ds->cfg.path = xstrdup(cfg->path);
        if (open_files(ds)) {
            data_close(ds);
            return -1;
        }
    } else if (cfg->kind == DATA_DUMMY) {
        if (cfg->dummy_count < 1)
            return givt_fail("dummy data: count = %lld: must be at least 1", (long long)cfg->dummy_count);
        ds->num_windows = cfg->dummy_count;
    } else {
        return givt_fail("unknown data kind %d", (int)cfg->kind);
    }
    if (ds->num_windows < 1) {
        int rc = givt_fail("%s: the data hold no windows of seq_len = %d", cfg->path, ds->cfg.seq_len);
        data_close(ds);
        return rc;
    }
    ds->cfg.labels_path = NULL;  // used here only
    if (cfg->labels_path && *cfg->labels_path && load_labels(ds, cfg->labels_path)) {
        data_close(ds);
        return -1;
    }
    if (make_split(ds)) {
        data_close(ds);
        return -1;
    }
    ds->perm = xmalloc((size_t)ds->num_train * sizeof *ds->perm);
    return 0;
}

void data_close(Dataset *ds) {
    for (int i = 0; i < ds->nfiles; i++) npy_close(&ds->files[i]);  // closes fd only when open
    free(ds->files);
    free(ds->file_used);
    free(ds->file_win0);
    free(ds->train_ids);
    free(ds->val_ids);
    free(ds->perm);
    free(ds->labels);
    free(ds->file_seq0);
    free((char *)ds->cfg.path);
    memset(ds, 0, sizeof *ds);
}

int data_seq_len(const Dataset *ds) { return ds->cfg.seq_len; }
int64_t data_num_windows(const Dataset *ds) { return ds->num_windows; }
int64_t data_num_train(const Dataset *ds) { return ds->num_train; }
int64_t data_num_val(const Dataset *ds) { return ds->num_val; }

// ---- windows --------------------------------------------------------------------------------
// File of window id (binary search over file_win0) and the flat element offset of its first value.
static int locate(const Dataset *ds, int64_t id, int64_t *flat) {
    int lo = 0, hi = ds->nfiles - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (ds->file_win0[mid] <= id) lo = mid;
        else hi = mid - 1;
    }
    const NpyFile *f = &ds->files[lo];
    int64_t w = id - ds->file_win0[lo], L = ds->cfg.seq_len, D = ds->cfg.input_dim;
    if (f->ndim == 3) {
        int64_t per = f->shape[1] / L;
        *flat = ((w / per) * f->shape[1] + (w % per) * L) * D;
    } else {
        *flat = w * L * D;
    }
    return lo;
}

void data_window_origin(const Dataset *ds, int64_t id, int *file, int64_t *n, int64_t *t) {
    if (ds->cfg.kind == DATA_DUMMY) {
        *file = 0;
        *n = id;
        *t = 0;
        return;
    }
    int64_t flat, idx[3];
    int fi = locate(ds, id, &flat);
    npy_unravel(&ds->files[fi], flat, idx);
    *file = fi;
    *n = idx[0];
    *t = ds->files[fi].ndim == 3 ? idx[1] : 0;
}

int data_read_window(Dataset *ds, int64_t id, float *dst) {
    int64_t L = ds->cfg.seq_len, D = ds->cfg.input_dim, count = L * D;
    if (id < 0 || id >= ds->num_windows)
        return givt_fail("window %lld out of range (%lld windows)", (long long)id, (long long)ds->num_windows);
    if (ds->cfg.kind == DATA_DUMMY) {
        Rng r;
        rng_seed(&r, hash3(ds->cfg.seed, SALT_DUMMY, (uint64_t)id));
        for (int64_t i = 0; i < count; i++) dst[i] = (float)rng_normal(&r);
        return 0;
    }
    int64_t flat;
    const NpyFile *f = file_acquire(ds, locate(ds, id, &flat));
    if (!f || npy_read_f32(f, flat, count, dst)) return -1;
    for (int64_t i = 0; i < count; i++) {
        if (!isfinite(dst[i])) {
            char ib[96];
            npy_format_index(f, flat + i, ib, sizeof ib);
            return givt_fail("%s: non-finite value (%s) at index %s", f->path, isnan(dst[i]) ? "nan" : dst[i] > 0 ? "inf" : "-inf", ib);
        }
    }
    return 0;
}

// ---- training stream ------------------------------------------------------------------------
static const int64_t *perm_of_epoch(Dataset *ds, int64_t epoch) {
    if (ds->perm_epoch != epoch) {
        int64_t n = ds->num_train, *p = ds->perm;
        for (int64_t i = 0; i < n; i++) p[i] = i;
        Rng r;
        rng_seed(&r, hash3(ds->cfg.seed, SALT_SHUFFLE, (uint64_t)epoch));
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)rng_below(&r, (uint64_t)i + 1);
            int64_t t = p[i];
            p[i] = p[j];
            p[j] = t;
        }
        ds->perm_epoch = epoch;
    }
    return ds->perm;
}

static DataPos pos_advance(DataPos p, int64_t k, int64_t n) {
    p.index += k;
    p.epoch += p.index / n;
    p.index %= n;
    return p;
}

int32_t data_window_label(const Dataset *ds, int64_t id) {
    int64_t flat;
    int fi = locate(ds, id, &flat);
    const NpyFile *f = &ds->files[fi];
    int64_t w = id - ds->file_win0[fi], per = f->shape[1] / ds->cfg.seq_len;
    return ds->labels[ds->file_seq0[fi] + w / per];
}

int data_label_dropped(uint64_t seed, int64_t step, int64_t slot, double rate) {
    uint64_t h = rng_mix64(hash3(seed, SALT_LABEL_DROP, (uint64_t)step) ^ ((uint64_t)slot * 0x9e3779b97f4a7c15ull));
    return (double)(h >> 11) * 0x1.0p-53 < rate;
}

// Windows' labels into labels (NULL: not wanted); the dataset must have them.
static int want_labels(const Dataset *ds, const int32_t *labels) {
    if (labels && !ds->labels) givt_die("data: labels asked of a dataset without labels");
    return labels != NULL;
}

int data_next_batch(Dataset *ds, int B, float *buf) { return data_next_batch_labels(ds, B, buf, NULL); }

int data_next_batch_labels(Dataset *ds, int B, float *buf, int32_t *labels) {
    if (B < 1) return givt_fail("batch size %d: must be at least 1", B);
    size_t stride = (size_t)ds->cfg.seq_len * (size_t)ds->cfg.input_dim;
    DataPos p = pos_advance(ds->pos, (int64_t)ds->cfg.rank * B, ds->num_train);
    int with = want_labels(ds, labels);
    for (int b = 0; b < B; b++) {
        const int64_t *perm = perm_of_epoch(ds, p.epoch);
        int64_t id = ds->train_ids[perm[p.index]];
        if (data_read_window(ds, id, buf + (size_t)b * stride)) return -1;
        if (with) labels[b] = data_window_label(ds, id);
        p = pos_advance(p, 1, ds->num_train);
    }
    ds->pos = pos_advance(ds->pos, (int64_t)ds->cfg.world_size * B, ds->num_train);
    return 0;
}

DataPos data_get_pos(const Dataset *ds) { return ds->pos; }

int data_set_pos(Dataset *ds, DataPos pos) {
    if (pos.epoch < 0 || pos.index < 0 || pos.index >= ds->num_train)
        return givt_fail("data position (epoch %lld, index %lld) out of range (%lld training windows)",
                         (long long)pos.epoch, (long long)pos.index, (long long)ds->num_train);
    ds->pos = pos;
    return 0;
}

// ---- in-order batches -----------------------------------------------------------------------
static int ordered_batch(Dataset *ds, const int64_t *ids, int64_t n, int64_t k, int B, float *buf, int32_t *labels) {
    if (B < 1) return givt_fail("batch size %d: must be at least 1", B);
    if (k < 0 || k > n / B + 1) return 0;
    int64_t start = k * B;
    if (start >= n) return 0;
    int64_t cnt = n - start < B ? n - start : B;
    size_t stride = (size_t)ds->cfg.seq_len * (size_t)ds->cfg.input_dim;
    int with = want_labels(ds, labels);
    for (int64_t i = 0; i < cnt; i++) {
        int64_t id = ids ? ids[start + i] : start + i;
        if (data_read_window(ds, id, buf + (size_t)i * stride)) return -1;
        if (with) labels[i] = data_window_label(ds, id);
    }
    return (int)cnt;
}

int data_val_batch(Dataset *ds, int64_t k, int B, float *buf) {
    return ordered_batch(ds, ds->val_ids, ds->num_val, k, B, buf, NULL);
}

int data_val_batch_labels(Dataset *ds, int64_t k, int B, float *buf, int32_t *labels) {
    return ordered_batch(ds, ds->val_ids, ds->num_val, k, B, buf, labels);
}

int data_all_batch(Dataset *ds, int64_t k, int B, float *buf) {
    return ordered_batch(ds, NULL, ds->num_windows, k, B, buf, NULL);
}

static const char *const k_split_names[] = {"all", "train", "val"};

const char *data_split_name(DataSplit s) { return s >= DATA_SPLIT_ALL && s <= DATA_SPLIT_VAL ? k_split_names[s] : "?"; }

int data_split_parse(const char *s, DataSplit *out) {
    for (int i = 0; i < 3; i++)
        if (s && !strcmp(s, k_split_names[i])) {
            *out = (DataSplit)i;
            return 0;
        }
    return givt_fail("split \"%s\": expected all, train or val", s ? s : "");
}

int64_t data_split_size(const Dataset *ds, DataSplit s) {
    return s == DATA_SPLIT_TRAIN ? ds->num_train : s == DATA_SPLIT_VAL ? ds->num_val : ds->num_windows;
}

int data_split_batch(Dataset *ds, DataSplit s, int64_t k, int B, float *buf, int32_t *labels) {
    const int64_t *ids = s == DATA_SPLIT_TRAIN ? ds->train_ids : s == DATA_SPLIT_VAL ? ds->val_ids : NULL;
    return ordered_batch(ds, ids, data_split_size(ds, s), k, B, buf, labels);
}

// A closed file is scanned through a descriptor of its own, closed after (ds stays as it is).
int data_check_finite(const Dataset *ds) {
    for (int i = 0; i < ds->nfiles; i++) {
        NpyFile f = ds->files[i];
        int own = f.fd < 0;
        if (own && (f.fd = reopen_fd(NULL, ds, i)) < 0) return -1;
        int rc = npy_check_finite(&f, NULL);
        if (own) close(f.fd);
        if (rc) return -1;
    }
    return 0;
}

// ---- fingerprint and description ----------------------------------------------------------
// Labels of a dataset with labels: one per sequence of its files.
static int64_t num_labels(const Dataset *ds) {
    return ds->file_seq0[ds->nfiles - 1] + ds->files[ds->nfiles - 1].shape[0];
}

static uint64_t fp_add(uint64_t h, uint64_t v) { return rng_mix64(h ^ rng_mix64(v + 0x9e3779b97f4a7c15ull)); }

uint64_t data_fingerprint(const Dataset *ds) {
    uint64_t h = fp_add(0x67697674u, (uint64_t)ds->cfg.kind);  // "givt"
    h = fp_add(h, (uint64_t)ds->cfg.seq_len);
    h = fp_add(h, (uint64_t)ds->cfg.input_dim);
    h = fp_add(h, ds->cfg.seed);
    h = fp_add(h, (uint64_t)ds->nfiles);
    for (int i = 0; i < ds->nfiles; i++) {
        const NpyFile *f = &ds->files[i];
        h = fp_add(h, (uint64_t)f->ndim);
        for (int k = 0; k < f->ndim; k++) h = fp_add(h, (uint64_t)f->shape[k]);
        h = fp_add(h, (uint64_t)f->dtype);
        h = fp_add(h, (uint64_t)f->file_size);
    }
    h = fp_add(h, ds->labels ? (uint64_t)num_labels(ds) : UINT64_MAX);
    h = fp_add(h, (uint64_t)ds->cfg.num_classes);
    if (ds->cfg.kind == DATA_DUMMY) h = fp_add(h, (uint64_t)ds->cfg.dummy_count);
    h = fp_add(h, (uint64_t)ds->num_windows);
    h = fp_add(h, (uint64_t)ds->num_train);
    return fp_add(h, (uint64_t)ds->num_val);
}

// The sizes of the files summed: sequences of (N, T, D) files (T from tmin to tmax), vectors of
// (M, D) streams, bytes, and which dtypes (bit 0: float32, bit 1: float16).
typedef struct {
    int64_t seqs, tmin, tmax, stream_vecs, bytes;
    int dtypes;
} FileTotals;

static FileTotals file_totals(const Dataset *ds) {
    FileTotals t = {.tmin = INT64_MAX};
    for (int i = 0; i < ds->nfiles; i++) {
        const NpyFile *f = &ds->files[i];
        if (f->ndim == 3) {
            t.seqs += f->shape[0];
            t.tmin = f->shape[1] < t.tmin ? f->shape[1] : t.tmin;
            t.tmax = f->shape[1] > t.tmax ? f->shape[1] : t.tmax;
        } else {
            t.stream_vecs += f->shape[0];
        }
        t.bytes += f->file_size;
        t.dtypes |= f->dtype == NPY_F16 ? 2 : 1;
    }
    return t;
}

// printf onto the end of buf (n bytes, *k of them used): truncated, and always terminated, when full.
__attribute__((format(printf, 4, 5))) static void appendf(char *buf, size_t n, size_t *k, const char *fmt, ...) {
    if (*k + 1 >= n) return;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(buf + *k, n - *k, fmt, ap);
    va_end(ap);
    *k = r < 0 ? n : *k + (size_t)r;
}

void data_describe(const Dataset *ds, char *buf, size_t n) {
    if (n == 0) return;
    buf[0] = '\0';
    const DataConfig *c = &ds->cfg;
    size_t k = 0;
    if (c->kind == DATA_DUMMY) {
        appendf(buf, n, &k, "dummy: %lld sequences of %d x %d, seed %" PRIu64, (long long)c->dummy_count, c->seq_len,
                c->input_dim, c->seed);
    } else {
        FileTotals t = file_totals(ds);
        appendf(buf, n, &k, "npy: %d file%s", ds->nfiles, ds->nfiles == 1 ? "" : "s");
        if (t.tmax > 0 && t.tmin == t.tmax)
            appendf(buf, n, &k, ", %lld sequences of %lld x %d", (long long)t.seqs, (long long)t.tmax, c->input_dim);
        else if (t.tmax > 0)
            appendf(buf, n, &k, ", %lld sequences of %lld..%lld x %d", (long long)t.seqs, (long long)t.tmin,
                    (long long)t.tmax, c->input_dim);
        if (t.stream_vecs > 0)
            appendf(buf, n, &k, ", streams of %lld vectors of %d", (long long)t.stream_vecs, c->input_dim);
        appendf(buf, n, &k, " (%s, %lld bytes)",
                t.dtypes == 3 ? "float32 and float16" : t.dtypes == 2 ? "float16" : "float32", (long long)t.bytes);
        if (ds->labels) appendf(buf, n, &k, ", labels %lld of %d classes", (long long)num_labels(ds), c->num_classes);
        appendf(buf, n, &k, ", seq_len %d, seed %" PRIu64, c->seq_len, c->seed);
    }
    appendf(buf, n, &k, ", windows %lld (train %lld, val %lld)", (long long)ds->num_windows, (long long)ds->num_train,
            (long long)ds->num_val);
}
