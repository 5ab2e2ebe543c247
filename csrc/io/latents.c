// latents: image-like arrays as (N, H*W, C) sequences, per-channel standardisation, and the inverse.
#include "latents.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "half.h"
#include "json.h"
#include "rng.h"
#include "util.h"

#define LATENTS_STATS_FORMAT "givt-latents-stats"
#define LATENTS_STATS_VERSION 1
#define LATENTS_BLOCK_ELEMS ((int64_t)1 << 21)  // values per block of samples (16 MiB of float64)

static const char *const k_layouts[] = {"nchw", "nhwc"};

const char *latents_layout_name(LatentsLayout l) { return l == LATENTS_NHWC ? k_layouts[1] : k_layouts[0]; }

int latents_layout_parse(const char *s, LatentsLayout *out) {
    for (int i = 0; i < 2; i++)
        if (s && !strcmp(s, k_layouts[i])) {
            *out = (LatentsLayout)i;
            return 0;
        }
    return givt_fail("layout \"%s\": expected nchw (N, C, H, W) or nhwc (N, H, W, C)", s ? s : "");
}

// ---- geometry ---------------------------------------------------------------------------------
// A latents array: n samples of c channels on an h x w grid, stored in layout.
typedef struct {
    LatentsLayout layout;
    int64_t n, c, h, w;
} Geom;

static int64_t geom_hw(const Geom *g) { return g->h * g->w; }
static int64_t geom_per(const Geom *g) { return g->c * g->h * g->w; }

// Offset of channel ch at raster position s (= y * w + x) inside one sample.
static inline int64_t geom_at(const Geom *g, int64_t ch, int64_t s) {
    return g->layout == LATENTS_NCHW ? ch * geom_hw(g) + s : s * g->c + ch;
}

// Samples per block: at least one.
static int64_t geom_block_rows(const Geom *g) {
    int64_t per = geom_per(g), rows = per > 0 ? LATENTS_BLOCK_ELEMS / per : 1;
    return rows < 1 ? 1 : rows;
}

// "[n, c, h, w] = [3, 1, 0, 2]" of value off (in sample n) into buf.
static void geom_index_text(const Geom *g, int64_t n, int64_t off, char *buf, size_t size) {
    int64_t hw = geom_hw(g);
    if (g->layout == LATENTS_NCHW) {
        int64_t ch = off / hw, s = off % hw;
        snprintf(buf, size, "[n, c, h, w] = [%lld, %lld, %lld, %lld]", (long long)n, (long long)ch,
                 (long long)(s / g->w), (long long)(s % g->w));
    } else {
        int64_t s = off / g->c, ch = off % g->c;
        snprintf(buf, size, "[n, h, w, c] = [%lld, %lld, %lld, %lld]", (long long)n, (long long)(s / g->w),
                 (long long)(s % g->w), (long long)ch);
    }
}

// ---- statistics ---------------------------------------------------------------------------------
void latents_stats_free(LatentsStats *s) {
    free(s->mean);
    free(s->std);
    free(s->constant);
    memset(s, 0, sizeof *s);
}

static void stats_alloc(LatentsStats *s, int64_t channels) {
    s->channels = channels;
    s->mean = xcalloc((size_t)channels, sizeof *s->mean);
    s->std = xcalloc((size_t)channels, sizeof *s->std);
    s->constant = xcalloc((size_t)channels, 1);
}

void latents_stats_identity(LatentsStats *s, LatentsLayout layout, int64_t channels, int64_t height, int64_t width) {
    memset(s, 0, sizeof *s);
    stats_alloc(s, channels);
    s->layout = layout;
    s->height = height;
    s->width = width;
    s->dtype = NPY_F32;
    for (int64_t c = 0; c < channels; c++) s->std[c] = 1.0;
}

int64_t latents_stats_num_constant(const LatentsStats *s) {
    int64_t k = 0;
    for (int64_t c = 0; c < s->channels; c++) k += s->constant[c] != 0;
    return k;
}

char *latents_default_stats_path(const char *out) {
    size_t n = strlen(out);
    size_t stem = n >= 4 && !strcmp(out + n - 4, ".npy") ? n - 4 : n;
    char *p = xmalloc(stem + sizeof ".stats.json");
    memcpy(p, out, stem);
    memcpy(p + stem, ".stats.json", sizeof ".stats.json");
    return p;
}

// Running per-channel moments (Chan et al.'s merge of blocks, each block's own in two passes).
typedef struct {
    double *count, *mean, *m2, *lo, *hi;
} Moments;

static void moments_init(Moments *m, int64_t channels) {
    double **v[] = {&m->count, &m->mean, &m->m2, &m->lo, &m->hi};
    for (int i = 0; i < 5; i++) *v[i] = xcalloc((size_t)channels, sizeof(double));
    for (int64_t c = 0; c < channels; c++) m->lo[c] = INFINITY, m->hi[c] = -INFINITY;
}

static void moments_free(Moments *m) {
    free(m->count), free(m->mean), free(m->m2), free(m->lo), free(m->hi);
}

// Adds channel ch of rows samples at x (the block, in g's layout).
static void moments_add(Moments *mo, const Geom *g, const double *x, int64_t rows, int64_t ch) {
    int64_t hw = geom_hw(g), per = geom_per(g);
    double sum = 0.0, lo = mo->lo[ch], hi = mo->hi[ch];
    for (int64_t m = 0; m < rows; m++)
        for (int64_t s = 0; s < hw; s++) {
            double v = x[m * per + geom_at(g, ch, s)];
            sum += v;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    double nb = (double)(rows * hw), mb = sum / nb, m2b = 0.0;
    for (int64_t m = 0; m < rows; m++)
        for (int64_t s = 0; s < hw; s++) {
            double d = x[m * per + geom_at(g, ch, s)] - mb;
            m2b += d * d;
        }
    double na = mo->count[ch], n = na + nb, delta = mb - mo->mean[ch];
    mo->mean[ch] += delta * nb / n;
    mo->m2[ch] += m2b + delta * delta * na * nb / n;
    mo->count[ch] = n;
    mo->lo[ch] = lo, mo->hi[ch] = hi;
}

// mean and population std per channel; a constant channel (one value) gets that value and std 1.
static void moments_finish(const Moments *mo, LatentsStats *st) {
    for (int64_t c = 0; c < st->channels; c++) {
        st->constant[c] = mo->lo[c] == mo->hi[c];
        st->mean[c] = st->constant[c] ? mo->lo[c] : mo->mean[c];
        st->std[c] = st->constant[c] ? 1.0 : sqrt(mo->m2[c] / mo->count[c]);
        if (!(st->std[c] > 0)) st->constant[c] = 1, st->std[c] = 1.0;  // underflow of a tiny spread
    }
}

// ---- the statistics file --------------------------------------------------------------------
static void json_doubles(JsonBuf *b, const char *key, const double *v, int64_t n) {
    json_buf_printf(b, "  \"%s\": [", key);
    for (int64_t i = 0; i < n; i++) {
        if (i) json_buf_puts(b, ", ");
        json_buf_double(b, v[i]);
    }
    json_buf_puts(b, "],\n");
}

int latents_stats_write(const char *path, const LatentsStats *s) {
    JsonBuf b;
    json_buf_init(&b);
    json_buf_printf(&b, "{\n  \"format\": \"%s\",\n  \"version\": %d,\n", LATENTS_STATS_FORMAT, LATENTS_STATS_VERSION);
    json_buf_printf(&b, "  \"layout\": \"%s\",\n", latents_layout_name(s->layout));
    if (s->layout == LATENTS_NCHW)
        json_buf_printf(&b, "  \"shape\": [%lld, %lld, %lld, %lld],\n", (long long)s->n, (long long)s->channels,
                        (long long)s->height, (long long)s->width);
    else
        json_buf_printf(&b, "  \"shape\": [%lld, %lld, %lld, %lld],\n", (long long)s->n, (long long)s->height,
                        (long long)s->width, (long long)s->channels);
    json_buf_printf(&b, "  \"dtype\": \"%s\",\n", npy_dtype_name(s->dtype));
    json_buf_printf(&b, "  \"sequences\": [%lld, %lld, %lld],\n", (long long)s->n, (long long)(s->height * s->width),
                    (long long)s->channels);
    json_buf_puts(&b, "  \"order\": \"raster: token t = h * width + w holds the channels of position (h, w)\",\n");
    json_buf_printf(&b, "  \"height\": %lld,\n  \"width\": %lld,\n  \"channels\": %lld,\n", (long long)s->height,
                    (long long)s->width, (long long)s->channels);
    json_buf_printf(&b, "  \"standardized\": %s,\n", s->standardized ? "true" : "false");
    json_doubles(&b, "mean", s->mean, s->channels);
    json_doubles(&b, "std", s->std, s->channels);
    json_buf_puts(&b, "  \"constant_channels\": [");
    for (int64_t c = 0, k = 0; c < s->channels; c++)
        if (s->constant[c]) json_buf_printf(&b, k++ ? ", %lld" : "%lld", (long long)c);
    json_buf_puts(&b, "]\n}\n");
    AtomicFile af;
    int rc = fs_atomic_open(&af, path);
    if (rc == 0) {
        fs_atomic_write(&af, b.data, b.len);
        rc = fs_atomic_commit(&af);
    }
    json_buf_free(&b);
    return rc;
}

// Member key of the statistics object as a whole number in [1, 2^31), into *out.
static int stats_dim(const JsonValue *root, const char *path, const char *key, int64_t *out) {
    const JsonValue *v = json_get(root, key);
    if (!v || v->type != JSON_NUMBER || !v->is_int || v->integer < 1 || v->integer > INT32_MAX)
        return givt_fail("%s: key \"%s\": expected a whole number >= 1%s", path, key, v ? "" : " (missing)");
    *out = v->integer;
    return 0;
}

// Member key as an array of n finite numbers (std: each > 0) into dst.
static int stats_numbers(const JsonValue *root, const char *path, const char *key, int64_t n, double *dst) {
    const JsonValue *v = json_get(root, key);
    if (!v || v->type != JSON_ARRAY || v->count != n)
        return givt_fail("%s: key \"%s\": expected an array of %lld numbers (\"channels\" = %lld)%s", path, key,
                         (long long)n, (long long)n, v ? "" : " (missing)");
    for (int64_t i = 0; i < n; i++) {
        const JsonValue *e = &v->items[i];
        int bad = e->type != JSON_NUMBER || !isfinite(e->number) || (!strcmp(key, "std") && !(e->number > 0));
        if (bad)
            return givt_fail("%s: key \"%s\", element %lld: expected a finite number%s", path, key, (long long)i,
                             strcmp(key, "std") ? "" : " > 0");
        dst[i] = e->number;
    }
    return 0;
}

static int stats_from_json(const JsonValue *root, const char *path, LatentsStats *s) {
    const char *fmt = NULL;
    const JsonValue *f = json_get(root, "format"), *ver = json_get(root, "version");
    if (root->type != JSON_OBJECT || !f || json_as_string(f, &fmt, "format") || strcmp(fmt, LATENTS_STATS_FORMAT))
        return givt_fail("%s: not a statistics file of givt-latents (no \"format\": \"%s\"): give the .stats.json that "
                         "givt-latents to-sequences wrote",
                         path, LATENTS_STATS_FORMAT);
    if (!ver || !ver->is_int || ver->integer != LATENTS_STATS_VERSION)
        return givt_fail("%s: key \"version\": expected %d", path, LATENTS_STATS_VERSION);
    const JsonValue *l = json_get(root, "layout"), *st = json_get(root, "standardized");
    if (!l || l->type != JSON_STRING || latents_layout_parse(l->str, &s->layout))
        return givt_fail("%s: key \"layout\": expected \"nchw\" or \"nhwc\"", path);
    if (!st || st->type != JSON_BOOL) return givt_fail("%s: key \"standardized\": expected true or false", path);
    int64_t channels = 0, n = 0;
    if (stats_dim(root, path, "height", &s->height) || stats_dim(root, path, "width", &s->width) ||
        stats_dim(root, path, "channels", &channels))
        return -1;
    const JsonValue *shape = json_get(root, "shape");
    if (shape && shape->type == JSON_ARRAY && shape->count == 4 && shape->items[0].is_int) n = shape->items[0].integer;
    stats_alloc(s, channels);
    s->n = n;
    s->standardized = st->boolean;
    if (stats_numbers(root, path, "mean", channels, s->mean) || stats_numbers(root, path, "std", channels, s->std))
        return -1;
    const JsonValue *cc = json_get(root, "constant_channels");
    for (int i = 0; cc && cc->type == JSON_ARRAY && i < cc->count; i++)
        if (cc->items[i].is_int && cc->items[i].integer >= 0 && cc->items[i].integer < channels)
            s->constant[cc->items[i].integer] = 1;
    return 0;
}

int latents_stats_read(const char *path, LatentsStats *s) {
    memset(s, 0, sizeof *s);
    size_t len;
    char *text = fs_read_text_max(path, GIVT_TEXT_MAX_BYTES, &len);
    if (!text) return -1;
    JsonValue *root = json_parse(text, len, path);
    free(text);
    if (!root) return givt_fail("%s (the statistics are the .stats.json that givt-latents to-sequences wrote)",
                                givt_last_error());
    int rc = stats_from_json(root, path, s);
    json_free(root);
    if (rc) latents_stats_free(s);
    return rc;
}

// ---- to sequences -------------------------------------------------------------------------------
// The array's geometry for layout; rank 4 with no empty axis and H*W, C below 2^31.
static int geom_of_array(const NpyArray *a, const char *path, LatentsLayout layout, Geom *g) {
    const int64_t *d = a->shape;
    if (a->ndim == 3)
        return givt_fail("%s: array has rank 3, shape (%lld, %lld, %lld): it already is (N, T, D) sequences, which "
                         "givt-train and givt-eval read as they are; to-sequences takes latents of rank 4, (N, C, H, W) "
                         "or (N, H, W, C)",
                         path, (long long)d[0], (long long)d[1], (long long)d[2]);
    if (a->ndim != 4)
        return givt_fail("%s: array has rank %d: to-sequences takes latents of rank 4, (N, C, H, W) (--layout nchw) or "
                         "(N, H, W, C) (--layout nhwc)",
                         path, a->ndim);
    *g = (Geom){.layout = layout, .n = d[0]};
    if (layout == LATENTS_NCHW) g->c = d[1], g->h = d[2], g->w = d[3];
    else g->h = d[1], g->w = d[2], g->c = d[3];
    const char *axes = layout == LATENTS_NCHW ? "(N, C, H, W)" : "(N, H, W, C)";
    if (g->n < 1 || g->c < 1 || g->h < 1 || g->w < 1)
        return givt_fail("%s: shape %s = (%lld, %lld, %lld, %lld) has an empty axis", path, axes, (long long)d[0],
                         (long long)d[1], (long long)d[2], (long long)d[3]);
    if (g->h * g->w > INT32_MAX || g->c > INT32_MAX)
        return givt_fail("%s: shape %s = (%lld, %lld, %lld, %lld): H*W = %lld vectors of C = %lld are too many", path,
                         axes, (long long)d[0], (long long)d[1], (long long)d[2], (long long)d[3],
                         (long long)(g->h * g->w), (long long)g->c);
    return 0;
}

// Reads samples [row, row + rows) into x (g's layout) and checks each value: finite, and within
// float32's range (float64 files).
static int read_block(const NpyArray *a, const Geom *g, int64_t row, int64_t rows, double *x) {
    if (npy_array_read_rows_f64(a, row, rows, x)) return -1;
    int64_t per = geom_per(g);
    for (int64_t i = 0; i < rows * per; i++) {
        if (isfinite(x[i]) && fabs(x[i]) <= FLT_MAX) continue;
        char at[160];
        geom_index_text(g, row + i / per, i % per, at, sizeof at);
        if (!isfinite(x[i]))
            return givt_fail("%s: non-finite value (%s) at index %s", a->file.path,
                             isnan(x[i]) ? "nan" : x[i] > 0 ? "inf" : "-inf", at);
        return givt_fail("%s: value %g at index %s does not fit in float32 (|x| <= %g)", a->file.path, x[i], at,
                         (double)FLT_MAX);
    }
    return 0;
}

// The first pass: every channel's moments over all samples.
static int measure(const NpyArray *a, const Geom *g, LatentsStats *st) {
    Moments mo;
    moments_init(&mo, g->c);
    int64_t rows = geom_block_rows(g);
    double *x = xmalloc((size_t)(rows * geom_per(g)) * sizeof *x);
    int rc = 0;
    for (int64_t r = 0; r < g->n && rc == 0; r += rows) {
        int64_t k = g->n - r < rows ? g->n - r : rows;
        rc = read_block(a, g, r, k, x);
        for (int64_t c = 0; rc == 0 && c < g->c; c++) moments_add(&mo, g, x, k, c);
    }
    if (rc == 0) moments_finish(&mo, st);
    free(x);
    moments_free(&mo);
    return rc;
}

// The second pass: y[m, s, c] = (x[m, c at s] - mean_c) / std_c as float32, block by block into w.
static int write_sequences(const NpyArray *a, const Geom *g, const LatentsStats *st, NpyWriter *w) {
    int64_t rows = geom_block_rows(g), per = geom_per(g), hw = geom_hw(g);
    double *x = xmalloc((size_t)(rows * per) * sizeof *x);
    float *y = xmalloc((size_t)(rows * per) * sizeof *y);
    int rc = 0;
    for (int64_t r = 0; r < g->n && rc == 0; r += rows) {
        int64_t k = g->n - r < rows ? g->n - r : rows;
        rc = read_block(a, g, r, k, x);
        for (int64_t m = 0; rc == 0 && m < k; m++)
            for (int64_t s = 0; s < hw; s++)
                for (int64_t c = 0; c < g->c; c++)
                    y[(m * hw + s) * g->c + c] = (float)((x[m * per + geom_at(g, c, s)] - st->mean[c]) / st->std[c]);
        if (rc == 0) rc = npy_writer_write(w, y, (size_t)(k * per) * sizeof *y);
    }
    free(x);
    free(y);
    return rc;
}

int latents_to_sequences(const char *in, const char *out, const char *stats_path, LatentsLayout layout,
                         int standardize, LatentsStats *st) {
    memset(st, 0, sizeof *st);
    NpyArray a;
    Geom g = {0};
    if (npy_array_open(&a, in)) return -1;
    int rc = geom_of_array(&a, in, layout, &g);
    if (rc == 0) {
        latents_stats_identity(st, layout, g.c, g.h, g.w);
        st->n = g.n;
        st->dtype = a.file.dtype;
        st->standardized = standardize;
        if (standardize) rc = measure(&a, &g, st);
    }
    NpyWriter w;
    int64_t shape[3] = {g.n, g.h * g.w, g.c};
    if (rc == 0 && (rc = npy_writer_open(&w, out, "<f4", 4, 3, shape)) == 0) {
        rc = write_sequences(&a, &g, st, &w);
        if (rc == 0) rc = npy_writer_commit(&w);
        else npy_writer_abort(&w);
    }
    npy_array_close(&a);
    if (rc == 0) rc = latents_stats_write(stats_path, st);
    if (rc) latents_stats_free(st);
    return rc;
}

// ---- to latents ---------------------------------------------------------------------------------
// The samples file against the statistics: rank 3, T = height * width, D = channels.
static int check_samples(const NpyFile *f, const char *path, const LatentsStats *st) {
    if (f->ndim != 3)
        return givt_fail("%s: array has rank %d; need (N, T, D) sequences (givt-sample's output)", path, f->ndim);
    int64_t T = f->shape[1], D = f->shape[2], hw = st->height * st->width;
    if (D != st->channels)
        return givt_fail("%s: vectors have D = %lld but the latents have %lld channels: the statistics and --height/"
                         "--width must be those of the data the model was trained on",
                         path, (long long)D, (long long)st->channels);
    if (T != hw)
        return givt_fail("%s: sequences have T = %lld vectors but height x width = %lld x %lld = %lld (sample with "
                         "--max-len %lld)",
                         path, (long long)T, (long long)st->height, (long long)st->width, (long long)hw, (long long)hw);
    return 0;
}

// x[m, c at s] = y[m, s, c] * std_c + mean_c for a block of rows samples; -1 on a non-finite sample or
// a result beyond float32.
static int unstandardize(const NpyFile *f, const Geom *g, const LatentsStats *st, int64_t row, int64_t rows,
                         const float *y, float *x) {
    int64_t hw = geom_hw(g), per = geom_per(g);
    for (int64_t m = 0; m < rows; m++)
        for (int64_t s = 0; s < hw; s++)
            for (int64_t c = 0; c < g->c; c++) {
                float v = y[(m * hw + s) * g->c + c];
                float r = (float)((double)v * st->std[c] + st->mean[c]);
                if (isfinite(r)) {
                    x[m * per + geom_at(g, c, s)] = r;
                    continue;
                }
                return givt_fail("%s: %s value at index [n, t, d] = [%lld, %lld, %lld]%s", f->path,
                                 isfinite(v) ? "a too large" : "non-finite", (long long)(row + m), (long long)s,
                                 (long long)c, isfinite(v) ? ": its latent is beyond float32" : "");
            }
    return 0;
}

int latents_to_latents(const char *samples, const char *out, const LatentsStats *stats, int64_t height,
                       int64_t width, LatentsLayout layout) {
    NpyFile f;
    if (npy_open(&f, samples)) return -1;
    LatentsStats ident = {0};
    const LatentsStats *st = stats;
    if (!st) {  // nothing to undo: mean 0, std 1 for the samples' D channels
        latents_stats_identity(&ident, layout, f.ndim == 3 ? f.shape[2] : 1, height, width);
        st = &ident;
    }
    int rc = height < 0 || width < 0 || (!stats && (height < 1 || width < 1))
                 ? givt_fail("%s: the latents' height and width are needed (from the statistics, or given)", samples)
                 : check_samples(&f, samples, st);
    Geom g = {.layout = layout, .n = f.shape[0], .c = st->channels, .h = st->height, .w = st->width};
    int64_t shape[4] = {g.n, g.c, g.h, g.w};
    if (layout == LATENTS_NHWC) shape[1] = g.h, shape[2] = g.w, shape[3] = g.c;
    NpyWriter w;
    if (rc == 0 && (rc = npy_writer_open(&w, out, "<f4", 4, 4, shape)) == 0) {
        int64_t rows = geom_block_rows(&g), per = geom_per(&g);
        float *y = xmalloc((size_t)(rows * per) * sizeof *y), *x = xmalloc((size_t)(rows * per) * sizeof *x);
        for (int64_t r = 0; r < g.n && rc == 0; r += rows) {
            int64_t k = g.n - r < rows ? g.n - r : rows;
            rc = npy_read_rows_f32(&f, r, k, y);
            if (rc == 0) rc = unstandardize(&f, &g, st, r, k, y, x);
            if (rc == 0) rc = npy_writer_write(&w, x, (size_t)(k * per) * sizeof *x);
        }
        free(y);
        free(x);
        if (rc == 0) rc = npy_writer_commit(&w);
        else npy_writer_abort(&w);
    }
    latents_stats_free(&ident);
    npy_close(&f);
    return rc;
}

// ---- synthetic latents ----------------------------------------------------------------------------
// Sample m of g into x (g's layout, float64).
static void synthetic_sample(const Geom *g, Rng *r, double *x) {
    const double two_pi = 6.283185307179586;
    double phi = two_pi * rng_uniform(r), psi = two_pi * rng_uniform(r), amp = 0.5 + rng_uniform(r);
    for (int64_t c = 0; c < g->c; c++) {
        double off = 2.0 * (double)c - 1.0, scale = 0.5 * (double)(c % 3 + 1);
        for (int64_t h = 0; h < g->h; h++)
            for (int64_t w = 0; w < g->w; w++) {
                double wave = sin(two_pi * (double)h / (double)g->h + phi + (double)c) *
                              cos(two_pi * (double)w / (double)g->w + psi);
                x[geom_at(g, c, h * g->w + w)] = off + scale * (amp * wave + 0.1 * rng_normal(r));
            }
    }
}

// x (n values) as dtype into raw.
static void pack(NpyDtype dtype, const double *x, int64_t n, void *raw) {
    for (int64_t i = 0; i < n; i++) {
        if (dtype == NPY_F64) ((double *)raw)[i] = x[i];
        else if (dtype == NPY_F32) ((float *)raw)[i] = (float)x[i];
        else ((uint16_t *)raw)[i] = half_f32_to_f16((float)x[i]);
    }
}

int latents_write_synthetic(const char *path, int64_t n, int64_t c, int64_t h, int64_t w, LatentsLayout layout,
                            NpyDtype dtype, uint64_t seed) {
    if (n < 1 || c < 1 || h < 1 || w < 1 || c * h * w > ((int64_t)1 << 30))
        return givt_fail("%s: synthetic shape (%lld, %lld, %lld, %lld): every axis >= 1 and C*H*W <= 2^30", path,
                         (long long)n, (long long)c, (long long)h, (long long)w);
    Geom g = {.layout = layout, .n = n, .c = c, .h = h, .w = w};
    int64_t shape[4] = {n, c, h, w};
    if (layout == LATENTS_NHWC) shape[1] = h, shape[2] = w, shape[3] = c;
    size_t itemsize = dtype == NPY_F64 ? 8 : dtype == NPY_F32 ? 4 : 2;
    const char *descr = dtype == NPY_F64 ? "<f8" : dtype == NPY_F32 ? "<f4" : "<f2";
    NpyWriter wr;
    if (npy_writer_open(&wr, path, descr, itemsize, 4, shape)) return -1;
    int64_t per = geom_per(&g);
    double *x = xmalloc((size_t)per * sizeof *x);
    void *raw = xmalloc((size_t)per * itemsize);
    Rng r;
    rng_seed(&r, seed);
    int rc = 0;
    for (int64_t m = 0; m < n && rc == 0; m++) {
        synthetic_sample(&g, &r, x);
        pack(dtype, x, per, raw);
        rc = npy_writer_write(&wr, raw, (size_t)per * itemsize);
    }
    free(x);
    free(raw);
    if (rc == 0) return npy_writer_commit(&wr);
    npy_writer_abort(&wr);
    return rc;
}
