// safetensors: validating reader and atomic float32 writer of the safetensors format.
#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "half.h"
#include "json.h"
#include "util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (safetensors data is little-endian)"
#endif

static const struct {
    const char *name;
    size_t size;
} g_dtypes[ST_NUM_DTYPES] = {
    [ST_BOOL] = {"BOOL", 1},        [ST_U8] = {"U8", 1},     [ST_I8] = {"I8", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1},  [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_F8_E8M0] = {"F8_E8M0", 1},  [ST_I16] = {"I16", 2},   [ST_U16] = {"U16", 2},
    [ST_F16] = {"F16", 2},          [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4},
    [ST_U32] = {"U32", 4},          [ST_F32] = {"F32", 4},   [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8},          [ST_U64] = {"U64", 8},   [ST_C64] = {"C64", 8},
};

const char *st_dtype_name(StDtype t) { return (unsigned)t < ST_NUM_DTYPES ? g_dtypes[t].name : "?"; }
size_t st_dtype_size(StDtype t) { return (unsigned)t < ST_NUM_DTYPES ? g_dtypes[t].size : 0; }

static int dtype_from_name(const char *s) {
    for (int i = 0; i < ST_NUM_DTYPES; i++)
        if (strcmp(g_dtypes[i].name, s) == 0) return i;
    return -1;
}

char *st_shape_str(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    used += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

// ---- reading: the header ------------------------------------------------------------------
// Context for messages: "<path>: tensor "<name>": <field>".
static const char *ctx(char *buf, size_t n, const char *path, const char *name, const char *field) {
    snprintf(buf, n, "%s: tensor \"%.200s\": %s", path, name, field);
    return buf;
}

static int parse_dtype(const StFile *f, StTensor *t, const JsonValue *v) {
    char what[512];
    const char *s;
    if (json_as_string(v, &s, ctx(what, sizeof what, f->path, t->name, "\"dtype\""))) return -1;
    int d = dtype_from_name(s);
    if (d < 0) return givt_fail("%s: tensor \"%.200s\": unknown dtype \"%.40s\"", f->path, t->name, s);
    t->dtype = (StDtype)d;
    return 0;
}

static int parse_shape(const StFile *f, StTensor *t, const JsonValue *v) {
    char what[512];
    ctx(what, sizeof what, f->path, t->name, "\"shape\"");
    if (json_expect(v, JSON_ARRAY, what)) return -1;
    if (v->count > ST_MAX_DIMS)
        return givt_fail("%s: %d dimensions, at most %d supported", what, v->count, ST_MAX_DIMS);
    t->ndim = v->count;
    t->numel = 1;
    for (int i = 0; i < v->count; i++) {
        int64_t d;
        if (json_as_int64(&v->items[i], &d, what)) return -1;
        if (d < 0) return givt_fail("%s: negative dimension %lld", what, (long long)d);
        if (d > 0 && t->numel > SIZE_MAX / 8 / (uint64_t)d) return givt_fail("%s: too many elements", what);
        t->shape[i] = d;
        t->numel *= (size_t)d;
    }
    return 0;
}

static int parse_offsets(const StFile *f, StTensor *t, const JsonValue *v) {
    char what[512];
    int64_t b, e;
    ctx(what, sizeof what, f->path, t->name, "\"data_offsets\"");
    if (json_expect(v, JSON_ARRAY, what)) return -1;
    if (v->count != 2) return givt_fail("%s: expected [begin, end], got %d numbers", what, v->count);
    if (json_as_int64(&v->items[0], &b, what) || json_as_int64(&v->items[1], &e, what)) return -1;
    if (b < 0 || e < b)
        return givt_fail("%s: [%lld, %lld] is not a valid range", what, (long long)b, (long long)e);
    if ((uint64_t)e > f->data_size)
        return givt_fail("%s: [%lld, %lld] extends past the end of the data buffer (%zu bytes): "
                         "truncated file?", what, (long long)b, (long long)e, f->data_size);
    t->begin = (size_t)b;
    t->end = (size_t)e;
    return 0;
}

static int check_entry_keys(const StFile *f, const StTensor *t, const JsonValue *entry) {
    static const char *const known[] = {"dtype", "shape", "data_offsets"};
    for (int i = 0; i < entry->count; i++) {
        int ok = 0;
        for (int k = 0; k < 3; k++) ok |= strcmp(entry->keys[i], known[k]) == 0;
        if (!ok) return givt_fail("%s: tensor \"%.200s\": unexpected key \"%.40s\"", f->path, t->name, entry->keys[i]);
    }
    return 0;
}

static int parse_tensor(const StFile *f, StTensor *t, const JsonValue *entry) {
    char what[512];
    if (json_expect(entry, JSON_OBJECT, ctx(what, sizeof what, f->path, t->name, "entry"))) return -1;
    if (check_entry_keys(f, t, entry)) return -1;
    if (parse_dtype(f, t, json_get(entry, "dtype")) || parse_shape(f, t, json_get(entry, "shape")) ||
        parse_offsets(f, t, json_get(entry, "data_offsets")))
        return -1;
    size_t bytes = t->numel * st_dtype_size(t->dtype);
    if (bytes != t->end - t->begin) {
        char s[160];
        return givt_fail("%s: tensor \"%.200s\": shape %s of dtype %s needs %zu bytes, but data_offsets "
                         "[%zu, %zu] hold %zu", f->path, t->name, st_shape_str(t->shape, t->ndim, s, sizeof s),
                         st_dtype_name(t->dtype), bytes, t->begin, t->end, t->end - t->begin);
    }
    return 0;
}

static int parse_metadata(StFile *f, const JsonValue *m) {
    char what[512];
    snprintf(what, sizeof what, "%s: \"__metadata__\"", f->path);
    if (m->type == JSON_NULL) return 0;
    if (json_expect(m, JSON_OBJECT, what)) return -1;
    f->meta_keys = xcalloc((size_t)m->count, sizeof(char *));
    f->meta_values = xcalloc((size_t)m->count, sizeof(char *));
    for (int i = 0; i < m->count; i++) {
        const char *s;
        snprintf(what, sizeof what, "%s: \"__metadata__\" key \"%.200s\"", f->path, m->keys[i]);
        if (json_as_string(&m->items[i], &s, what)) return -1;
        f->meta_keys[f->n_meta] = xstrdup(m->keys[i]);
        f->meta_values[f->n_meta++] = xstrdup(s);
    }
    return 0;
}

static int cmp_by_offsets(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

// The tensors, in offset order, must tile the data buffer exactly: no overlap, no gap, no tail.
static int check_coverage(const StFile *f) {
    const StTensor **order = xmalloc((size_t)(f->count ? f->count : 1) * sizeof *order);
    for (int i = 0; i < f->count; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->count, sizeof *order, cmp_by_offsets);
    size_t cursor = 0;
    int rc = 0;
    for (int k = 0; k < f->count && rc == 0; k++) {
        const StTensor *t = order[k], *prev = k ? order[k - 1] : NULL;
        if (t->begin < cursor)
            rc = givt_fail("%s: tensor \"%.200s\": data_offsets [%zu, %zu] overlap tensor \"%.200s\" "
                           "[%zu, %zu]", f->path, t->name, t->begin, t->end, prev->name, prev->begin, prev->end);
        else if (t->begin > cursor)
            rc = givt_fail("%s: tensor \"%.200s\": data_offsets [%zu, %zu] leave a gap: bytes [%zu, %zu) "
                           "of the data buffer belong to no tensor", f->path, t->name, t->begin, t->end,
                           cursor, t->begin);
        cursor = t->end;
    }
    free(order);
    if (rc == 0 && cursor != f->data_size)
        rc = givt_fail("%s: the data buffer has %zu bytes but the tensors cover %zu: trailing data or a "
                       "damaged header", f->path, f->data_size, cursor);
    return rc;
}

static int parse_header(StFile *f, const JsonValue *h) {
    char what[512];
    snprintf(what, sizeof what, "%s: header", f->path);
    if (json_expect(h, JSON_OBJECT, what)) return -1;
    f->tensors = xcalloc((size_t)(h->count ? h->count : 1), sizeof *f->tensors);
    for (int i = 0; i < h->count; i++) {
        if (strcmp(h->keys[i], "__metadata__") == 0) {
            if (parse_metadata(f, &h->items[i])) return -1;
            continue;
        }
        StTensor *t = &f->tensors[f->count++];
        t->name = xstrdup(h->keys[i]);
        if (parse_tensor(f, t, &h->items[i])) return -1;
    }
    return check_coverage(f);
}

// ---- reading: the file --------------------------------------------------------------------
// Opens f->path (a regular file, or -1), its size into f->file_size.
static int open_fd(StFile *f) {
    f->fd = fs_open_regular_file(f->path);
    if (f->fd < 0) return -1;
    struct stat st;
    if (fstat(f->fd, &st) != 0) return givt_fail("%s: cannot stat: %s", f->path, strerror(errno));
    if (st.st_size < 8)
        return givt_fail("%s: file is %lld bytes, too short for a safetensors file (the header length alone "
                         "takes 8 bytes)", f->path, (long long)st.st_size);
    f->file_size = (size_t)st.st_size;
    return 0;
}

// Reads the header length and the header into f->header, sets the data buffer's place.
static int read_header_bytes(StFile *f) {
    unsigned char len8[8];
    if (fs_pread_full(f->fd, f->path, len8, 8, 0)) return -1;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | len8[i];
    if (n > ST_MAX_HEADER)
        return givt_fail("%s: header length %llu is larger than the limit of %d bytes: not a safetensors "
                         "file?", f->path, (unsigned long long)n, ST_MAX_HEADER);
    if (n > f->file_size - 8)  // n <= ST_MAX_HEADER here, so 8 + n does not overflow
        return givt_fail("%s: file is %zu bytes, but its header length %llu needs at least %llu (8 + %llu): "
                         "truncated, or not a safetensors file", f->path, f->file_size, (unsigned long long)n,
                         (unsigned long long)n + 8, (unsigned long long)n);
    f->data_offset = 8 + (size_t)n;
    f->data_size = f->file_size - f->data_offset;
    f->header = xmalloc(f->data_offset);
    memcpy(f->header, len8, 8);
    return fs_pread_full(f->fd, f->path, f->header + 8, (size_t)n, 8);
}

static int open_file(StFile *f, const char *path) {
    f->path = xstrdup(path);
    if (open_fd(f) || read_header_bytes(f)) return -1;
    char what[512];
    snprintf(what, sizeof what, "%s: header", path);
    JsonValue *h = json_parse((const char *)f->header + 8, f->data_offset - 8, what);
    if (!h) return -1;
    int rc = parse_header(f, h);
    json_free(h);
    return rc;
}

int st_open(StFile *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (open_file(f, path) == 0) return 0;
    st_close(f);  // a caller that returns at once on failure (without st_close) leaks nothing
    return -1;
}

void st_close(StFile *f) {
    if (f->path && f->fd >= 0) close(f->fd);  // a path means st_open set fd
    free(f->header);
    for (int i = 0; i < f->count; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
    memset(f, 0, sizeof *f);
}

int st_find(const StFile *f, const char *name) {
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return i;
    return -1;
}

const char *st_metadata(const StFile *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

// float16 / bfloat16 values are read in chunks of this many and converted.
#define ST_HALF_CHUNK 4096

int st_read_f32(const StFile *f, int i, float *dst) {
    const StTensor *t = &f->tensors[i];
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return givt_fail("%s: tensor \"%.200s\": dtype %s is not supported (expected F32, F16 or BF16)",
                         f->path, t->name, st_dtype_name(t->dtype));
    char what[512];  // names the tensor in a read error
    snprintf(what, sizeof what, "%s: tensor \"%.200s\"", f->path, t->name);
    int64_t off = (int64_t)(f->data_offset + t->begin);
    if (t->dtype == ST_F32) return fs_pread_full(f->fd, what, dst, t->numel * 4, off);
    uint16_t h[ST_HALF_CHUNK];
    for (size_t done = 0; done < t->numel; done += ST_HALF_CHUNK) {
        size_t n = t->numel - done < ST_HALF_CHUNK ? t->numel - done : ST_HALF_CHUNK;
        if (fs_pread_full(f->fd, what, h, n * 2, off + (int64_t)(done * 2))) return -1;
        for (size_t k = 0; k < n; k++) dst[done + k] = t->dtype == ST_F16 ? half_f16_to_f32(h[k]) : half_bf16_to_f32(h[k]);
    }
    return 0;
}

int st_load_f32(const StFile *f, const char *name, int ndim, const int64_t *shape, float *dst) {
    int i = st_find(f, name);
    if (i < 0) return givt_fail("%s: tensor \"%.200s\" is missing", f->path, name);
    const StTensor *t = &f->tensors[i];
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char got[160], want[160];
        return givt_fail("%s: tensor \"%.200s\": shape %s, expected %s", f->path, name,
                         st_shape_str(t->shape, t->ndim, got, sizeof got), st_shape_str(shape, ndim, want, sizeof want));
    }
    return st_read_f32(f, i, dst);
}

// ---- writing ------------------------------------------------------------------------------
static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(const StWriteTensor *const *)a)->name, (*(const StWriteTensor *const *)b)->name);
}

static size_t write_numel(const StWriteTensor *t) {
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
    return numel;
}

static int check_write_tensor(const char *path, const StWriteTensor *t) {
    if (!t->name) return givt_fail("%s: a tensor has no name", path);
    if (strcmp(t->name, "__metadata__") == 0) return givt_fail("%s: a tensor cannot be named \"__metadata__\"", path);
    if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return givt_fail("%s: tensor \"%.200s\": %d dimensions (0..%d supported)", path, t->name, t->ndim, ST_MAX_DIMS);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0) return givt_fail("%s: tensor \"%.200s\": negative dimension", path, t->name);
    if (write_numel(t) && !t->data) return givt_fail("%s: tensor \"%.200s\": no data", path, t->name);
    return 0;
}

static int header_meta(const char *path, JsonBuf *h, const StMeta *meta, int n_meta) {
    int has_format = 0;
    for (int i = 0; i < n_meta; i++) {
        if (!meta[i].key || !meta[i].value) return givt_fail("%s: __metadata__ entry %d is incomplete", path, i);
        has_format |= strcmp(meta[i].key, "format") == 0;
        for (int j = 0; j < i; j++)
            if (strcmp(meta[i].key, meta[j].key) == 0)
                return givt_fail("%s: __metadata__ key \"%.200s\" given twice", path, meta[i].key);
    }
    json_buf_puts(h, "\"__metadata__\":{");
    if (!has_format) json_buf_puts(h, "\"format\":\"pt\"");
    for (int i = 0; i < n_meta; i++) {
        if (i || !has_format) json_buf_puts(h, ",");
        if (json_buf_string(h, meta[i].key))
            return givt_fail("%s: __metadata__ key: %s", path, givt_last_error());
        json_buf_puts(h, ":");
        if (json_buf_string(h, meta[i].value))
            return givt_fail("%s: __metadata__ \"%.200s\": %s", path, meta[i].key, givt_last_error());
    }
    json_buf_puts(h, "}");
    return 0;
}

// Builds the header into h, and in order the tensors as they follow in the data buffer.
static int build_header(const char *path, const StWriteTensor *ts, int count, const StMeta *meta,
                        int n_meta, JsonBuf *h, const StWriteTensor **order) {
    for (int i = 0; i < count; i++) {
        if (check_write_tensor(path, &ts[i])) return -1;
        order[i] = &ts[i];
    }
    qsort(order, (size_t)count, sizeof *order, cmp_by_name);
    json_buf_puts(h, "{");
    if (header_meta(path, h, meta, n_meta)) return -1;
    size_t offset = 0;
    for (int k = 0; k < count; k++) {
        const StWriteTensor *t = order[k];
        if (k > 0 && strcmp(order[k - 1]->name, t->name) == 0)
            return givt_fail("%s: tensor \"%.200s\" given twice", path, t->name);
        json_buf_puts(h, ",");
        if (json_buf_string(h, t->name)) return givt_fail("%s: tensor name: %s", path, givt_last_error());
        json_buf_puts(h, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) json_buf_printf(h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        size_t bytes = 4 * write_numel(t);
        json_buf_printf(h, "],\"data_offsets\":[%zu,%zu]}", offset, offset + bytes);
        offset += bytes;
    }
    json_buf_puts(h, "}");
    while (h->len % 8) json_buf_puts(h, " ");  // pad as the reference does, so the data starts aligned
    return 0;
}

static int write_body(AtomicFile *af, const JsonBuf *h, const StWriteTensor *const *order, int count) {
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h->len >> (8 * i));
    if (fs_atomic_write(af, len8, 8) || fs_atomic_write(af, h->data, h->len)) return -1;
    for (int k = 0; k < count; k++)
        if (fs_atomic_write(af, order[k]->data, 4 * write_numel(order[k]))) return -1;
    return 0;
}

int st_write(const char *path, const StWriteTensor *tensors, int count, const StMeta *meta, int n_meta) {
    JsonBuf h;
    json_buf_init(&h);
    const StWriteTensor **order = xmalloc((size_t)(count > 0 ? count : 1) * sizeof *order);
    int rc = count < 0 ? givt_fail("%s: negative tensor count", path) : 0;
    if (rc == 0) rc = build_header(path, tensors, count, meta, n_meta, &h, order);
    AtomicFile af;
    if (rc == 0) rc = fs_atomic_open(&af, path);
    if (rc == 0) {
        if (write_body(&af, &h, order, count) == 0) {
            rc = fs_atomic_commit(&af);
        } else {
            rc = -1;
            fs_atomic_abort(&af);
        }
    }
    free(order);
    json_buf_free(&h);
    return rc;
}
