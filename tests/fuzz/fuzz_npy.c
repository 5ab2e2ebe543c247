// fuzz_npy: the .npy reader (npy_open validates the header; npy_read_f32 / npy_read_rows_f32 read,
// converting float16; npy_find_nonfinite / npy_check_finite scan) and, for files it accepts, the
// writer (npy_write_f32).
//
// Input: a .npy file (written to the scratch folder: npy_open maps a path).
// Properties checked beyond "no crash, no sanitizer report, no exit":
//   - numel is the product of the shape and the data is exactly numel * itemsize bytes;
//   - reads in bounds succeed and reads out of bounds fail; rows read the same as elements;
//   - npy_check_finite agrees with npy_find_nonfinite and names an index inside the shape;
//   - an array of at most 1 MiB as float32, written back with npy_write_f32, reads back bit for bit.
#include "fuzz_util.h"

#include "npy.h"
#include "util.h"

#define MAX_FLOATS ((int64_t)1 << 18)  // 1 MiB of float32

static void check_round_trip(const NpyFile *f, const float *all) {
    const char *out = fuzz_path("written.npy");
    FUZZ_CHECK(npy_write_f32(out, all, f->ndim, f->shape) == 0, "npy_write_f32: %s", givt_last_error());
    NpyFile g;
    FUZZ_CHECK(npy_open(&g, out) == 0, "the written file does not open: %s", givt_last_error());
    FUZZ_CHECK(g.dtype == NPY_F32 && g.ndim == f->ndim && g.numel == f->numel, "header changed");
    for (int i = 0; i < 3; i++) FUZZ_CHECK(g.shape[i] == f->shape[i], "shape[%d] changed", i);
    float *back = malloc((size_t)f->numel * sizeof(float) + 1);
    FUZZ_CHECK(npy_read_f32(&g, 0, g.numel, back) == 0, "%s", givt_last_error());
    FUZZ_CHECK(memcmp(back, all, (size_t)f->numel * sizeof(float)) == 0, "data changed");
    free(back);
    npy_close(&g);
}

static void check_file(const NpyFile *f) {
    FUZZ_CHECK(f->ndim == 2 || f->ndim == 3, "ndim %d", f->ndim);
    FUZZ_MAGNITUDE(f->shape[0]);
    FUZZ_MAGNITUDE(f->shape[1]);
    FUZZ_MAGNITUDE(f->shape[2]);
    FUZZ_CHECK(f->itemsize == (f->dtype == NPY_F32 ? 4 : 2), "itemsize %d", f->itemsize);
    int64_t numel = 1;
    for (int i = 0; i < 3; i++) {
        FUZZ_CHECK(f->shape[i] >= 0 && (i < f->ndim || f->shape[i] == 1), "shape[%d] = %lld", i,
                   (long long)f->shape[i]);
        numel *= f->shape[i];  // cannot overflow when numel is 0 or the data is in the file
        if (numel == 0) break;
    }
    FUZZ_CHECK(numel == f->numel, "numel %lld, shape product %lld", (long long)f->numel, (long long)numel);
    FUZZ_CHECK(f->data_off + f->numel * f->itemsize == f->file_size, "data size");

    // elements: the first few, the last one, and out of bounds
    float buf[64];
    int64_t n = f->numel < 64 ? f->numel : 64;
    FUZZ_CHECK(npy_read_f32(f, 0, n, buf) == 0, "%s", givt_last_error());
    if (f->numel > 0) FUZZ_CHECK(npy_read_f32(f, f->numel - 1, 1, buf) == 0, "%s", givt_last_error());
    FUZZ_CHECK(npy_read_f32(f, f->numel, 1, buf) != 0, "read past the end accepted");
    FUZZ_CHECK(npy_read_f32(f, -1, 1, buf) != 0, "negative start accepted");
    FUZZ_CHECK(npy_read_f32(f, 1, f->numel, buf) != 0, "read of numel elements from 1 accepted");

    // rows along the first axis: the first row, as elements and as a row
    int64_t rows = f->shape[0], per_row = rows ? f->numel / rows : 0;
    float *row = NULL, *elems = NULL;
    if (rows > 0 && per_row <= MAX_FLOATS) {
        row = malloc((size_t)per_row * sizeof(float) + 1);
        elems = malloc((size_t)per_row * sizeof(float) + 1);
        FUZZ_CHECK(npy_read_rows_f32(f, rows - 1, 1, row) == 0, "%s", givt_last_error());
        FUZZ_CHECK(npy_read_f32(f, (rows - 1) * per_row, per_row, elems) == 0, "%s", givt_last_error());
        FUZZ_CHECK(memcmp(row, elems, (size_t)per_row * sizeof(float)) == 0, "the last row differs");
    }
    FUZZ_CHECK(npy_read_rows_f32(f, 0, 0, buf) == 0, "reading 0 rows: %s", givt_last_error());
    FUZZ_CHECK(npy_read_rows_f32(f, rows, 1, buf) != 0, "read of a row past the end accepted");
    free(row);
    free(elems);

    // finiteness
    int64_t at = npy_find_nonfinite(f, 0, f->numel), idx[3] = {-1, -1, -1};
    int rc = npy_check_finite(f, idx);
    FUZZ_CHECK((rc == 0) == (at < 0), "npy_check_finite %d, npy_find_nonfinite %lld", rc, (long long)at);
    if (at >= 0) {
        FUZZ_CHECK(at < f->numel, "index %lld of %lld", (long long)at, (long long)f->numel);
        int64_t flat = 0;
        for (int i = 0; i < f->ndim; i++) {
            FUZZ_CHECK(idx[i] >= 0 && idx[i] < f->shape[i], "index[%d] = %lld", i, (long long)idx[i]);
            flat = flat * f->shape[i] + idx[i];
        }
        FUZZ_CHECK(flat == at, "index ravels to %lld, not %lld", (long long)flat, (long long)at);
        FUZZ_CHECK(npy_find_nonfinite(f, at + 1, f->numel) != at, "found twice");
    }
    char ib[96];
    if (f->numel > 0) npy_format_index(f, f->numel - 1, ib, sizeof ib);

    if (f->numel <= MAX_FLOATS) {
        float *all = malloc((size_t)f->numel * sizeof(float) + 1);
        FUZZ_CHECK(npy_read_f32(f, 0, f->numel, all) == 0, "%s", givt_last_error());
        check_round_trip(f, all);
        free(all);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("input.npy");
    fuzz_write_file(path, data, size);
    NpyFile f;
    if (npy_open(&f, path) == 0) {
        check_file(&f);
        npy_close(&f);
    }
    return 0;
}
