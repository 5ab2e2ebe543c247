// fuzz_safetensors: the safetensors reader (st_open validates the whole header; st_read_f32 and
// st_load_f32 convert F32/F16/BF16 tensors) and, for files it accepts, the writer (st_write).
//
// Input: a safetensors file (written to the scratch folder: st_open maps a path).
// Properties checked beyond "no crash, no sanitizer report, no exit":
//   - every tensor lies inside the data buffer with end - begin = numel * dtype size, is found by
//     name, and reads (float dtypes) or is refused (others);
//   - the float tensors (each at most 1 MiB as float32) written back with st_write read back bit for
//     bit, with the same names, shapes and metadata.
#include "fuzz_util.h"

#include "safetensors.h"
#include "util.h"

#define MAX_TENSOR_BYTES ((size_t)1 << 20)

static int is_float(StDtype t) { return t == ST_F32 || t == ST_F16 || t == ST_BF16; }

// Writes the tensors as float32 (with the file's metadata) and checks what reads back.
static void check_round_trip(const StFile *f, float **vals) {
    StWriteTensor *ts = calloc((size_t)f->count + 1, sizeof *ts);
    StMeta *meta = calloc((size_t)f->n_meta + 1, sizeof *meta);
    for (int i = 0; i < f->count; i++) {
        const StTensor *t = &f->tensors[i];
        ts[i].name = t->name;
        ts[i].ndim = t->ndim;
        memcpy(ts[i].shape, t->shape, sizeof t->shape);
        ts[i].data = vals[i];
    }
    int has_format = 0;
    for (int i = 0; i < f->n_meta; i++) {
        meta[i] = (StMeta){f->meta_keys[i], f->meta_values[i]};
        has_format |= strcmp(f->meta_keys[i], "format") == 0;
    }
    const char *out = fuzz_path("written.safetensors");
    FUZZ_CHECK(st_write(out, ts, f->count, meta, f->n_meta) == 0, "st_write: %s", givt_last_error());
    StFile g;
    FUZZ_CHECK(st_open(&g, out) == 0, "the written file does not open: %s", givt_last_error());
    FUZZ_CHECK(g.count == f->count, "%d tensors written, %d read back", f->count, g.count);
    FUZZ_CHECK(g.n_meta == f->n_meta + !has_format, "%d metadata keys written, %d read back", f->n_meta, g.n_meta);
    for (int i = 0; i < f->n_meta; i++) {
        const char *v = st_metadata(&g, f->meta_keys[i]);
        FUZZ_CHECK(v && strcmp(v, f->meta_values[i]) == 0, "metadata \"%s\"", f->meta_keys[i]);
    }
    for (int i = 0; i < f->count; i++) {
        const StTensor *t = &f->tensors[i];
        int j = st_find(&g, t->name);
        FUZZ_CHECK(j >= 0, "tensor \"%s\" missing after the round trip", t->name);
        const StTensor *u = &g.tensors[j];
        FUZZ_CHECK(u->dtype == ST_F32 && u->ndim == t->ndim && u->numel == t->numel, "tensor \"%s\"", t->name);
        float *back = malloc(t->numel * sizeof(float) + 1);
        FUZZ_CHECK(st_load_f32(&g, t->name, t->ndim, t->shape, back) == 0, "%s", givt_last_error());
        FUZZ_CHECK(memcmp(back, vals[i], t->numel * sizeof(float)) == 0, "tensor \"%s\" changed", t->name);
        free(back);
    }
    st_close(&g);
    free(ts);
    free(meta);
}

static void check_file(const StFile *f) {
    FUZZ_CHECK(f->data_size <= f->file_size && f->data_offset + f->data_size == f->file_size, "data buffer");
    float **vals = calloc((size_t)f->count + 1, sizeof *vals);
    int all_read = 1;
    char shape[160];
    for (int i = 0; i < f->count; i++) {
        const StTensor *t = &f->tensors[i];
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS, "ndim %d", t->ndim);
        for (int d = 0; d < t->ndim; d++) FUZZ_MAGNITUDE(t->shape[d]);
        FUZZ_MAGNITUDE(t->numel);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        FUZZ_CHECK(numel == t->numel, "tensor \"%s\": numel %zu, shape product %zu", t->name, t->numel, numel);
        FUZZ_CHECK(t->begin <= t->end && t->end <= f->data_size && t->end - t->begin == numel * st_dtype_size(t->dtype),
                   "tensor \"%s\": data_offsets [%zu, %zu] of %zu bytes", t->name, t->begin, t->end, f->data_size);
        FUZZ_CHECK(st_find(f, t->name) == i, "tensor \"%s\" not found by name", t->name);
        st_shape_str(t->shape, t->ndim, shape, sizeof shape);
        (void)st_dtype_name(t->dtype);
        if (!is_float(t->dtype)) {
            float dummy;
            FUZZ_CHECK(st_read_f32(f, i, &dummy) != 0, "tensor \"%s\": dtype %s read as float32", t->name,
                       st_dtype_name(t->dtype));
            all_read = 0;
            continue;
        }
        if (t->numel > MAX_TENSOR_BYTES / sizeof(float)) {
            all_read = 0;
            continue;
        }
        vals[i] = malloc(t->numel * sizeof(float) + 1);
        FUZZ_CHECK(st_read_f32(f, i, vals[i]) == 0, "st_read_f32: %s", givt_last_error());
        FUZZ_CHECK(st_load_f32(f, t->name, t->ndim, t->shape, vals[i]) == 0, "st_load_f32: %s", givt_last_error());
        int64_t wrong[ST_MAX_DIMS + 1] = {0};
        memcpy(wrong, t->shape, sizeof t->shape);
        wrong[t->ndim] = 1;  // one dimension more: must be refused
        if (t->ndim < ST_MAX_DIMS)
            FUZZ_CHECK(st_load_f32(f, t->name, t->ndim + 1, wrong, vals[i]) != 0, "wrong shape accepted");
    }
    for (int i = 0; i < f->n_meta; i++)
        FUZZ_CHECK(st_metadata(f, f->meta_keys[i]) != NULL, "metadata \"%s\" not found", f->meta_keys[i]);
    if (all_read) check_round_trip(f, vals);
    for (int i = 0; i < f->count; i++) free(vals[i]);
    free(vals);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("input.safetensors");
    fuzz_write_file(path, data, size);
    StFile f;
    if (st_open(&f, path) == 0) check_file(&f);
    st_close(&f);
    return 0;
}
