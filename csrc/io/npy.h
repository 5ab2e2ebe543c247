// npy: NumPy .npy files: a validating reader (little-endian float32/float16, C order, rank 2 or 3)
// that reads through pread and notices a file changed under it, a reader of float arrays of any rank,
// dtype (float16/32/64) and order for converters, and an atomic writer (whole, or streamed).
#ifndef GIVT_NPY_H
#define GIVT_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "fs.h"

typedef enum { NPY_F32, NPY_F16, NPY_F64 } NpyDtype;  // npy_open: F32 or F16; npy_array_open: any
const char *npy_dtype_name(NpyDtype t);               // "float32", "float16", "float64"

// An open .npy file. Elements are read with pread(2) through npy_read_f32: the file is never mapped,
// so a file truncated while open is a read error (never a SIGBUS). Every read also checks that the
// open file's size and modification time are those seen at open: a file rewritten in place (even
// with the same size) is an error naming it, not silently new data. A file replaced by rename (as
// atomic writers do) keeps being read as the file that was opened.
typedef struct {
    char *path;                 // as given to npy_open (for error messages)
    int fd;                     // open for reading; -1 when closed
    int64_t data_off;           // byte offset of the first element
    int64_t file_size;          // at open
    int64_t mtime_ns;           // modification time at open
    uint64_t dev, ino;          // which file was opened (one replaced by rename since is another)
    NpyDtype dtype;
    int itemsize;               // 4 or 2
    int ndim;                   // 2 or 3
    int64_t shape[3];           // unused trailing entries are 1
    int64_t numel;              // prod(shape)
} NpyFile;

// Opens and validates path: magic, version 1.0/2.0/3.0, header length within the file, header dict
// ('descr' '<f4' or '<f2', 'fortran_order' False, 'shape' of rank 2 or 3), and a data size of exactly
// prod(shape) * itemsize. Returns 0, or -1 with givt_fail("PATH: problem"). A float array it cannot
// take gets the one-line fix: rank 4 points to `givt-latents to-sequences` (latents (N, C, H, W) or
// (N, H, W, C)); float64 and Fortran order give the numpy line that saves a C-order float32 copy.
int npy_open(NpyFile *f, const char *path);
void npy_close(NpyFile *f);  // safe on a zeroed or already closed NpyFile
// Is fd (a new descriptor of f->path, for a reader that closed f's and opens it again) the file
// npy_open validated: same device, inode, size and modification time? -1 with givt_fail naming it.
int npy_check_same_file(const NpyFile *f, int fd);

static inline int npy_ndim(const NpyFile *f) { return f->ndim; }
static inline int64_t npy_dim(const NpyFile *f, int i) { return f->shape[i]; }

// Copies elements [start, start + count) (flat C-order indices) to dst as float32, converting
// float16. Returns 0, or -1 (givt_fail) when the range is out of bounds, the read fails, or the file
// changed since npy_open (truncated, or written in place).
int npy_read_f32(const NpyFile *f, int64_t start, int64_t count, float *dst);
// Rows along the first axis: row r holds numel / shape[0] elements. dst holds count rows.
int npy_read_rows_f32(const NpyFile *f, int64_t row, int64_t count, float *dst);

// Flat index -> per-axis index (ndim entries of idx are set).
void npy_unravel(const NpyFile *f, int64_t flat, int64_t idx[3]);
// Writes "[i, j, k]" (ndim entries) for a flat index into buf.
void npy_format_index(const NpyFile *f, int64_t flat, char *buf, size_t bufsize);

// Finds the first NaN or Inf among elements [start, start + count). Returns its flat index, -1 when
// all are finite, or -2 when reading failed (givt_fail says why).
int64_t npy_find_nonfinite(const NpyFile *f, int64_t start, int64_t count);
// Scans the whole file. Returns 0 if all values are finite; otherwise -1 with a read error or
// givt_fail("PATH: non-finite value (nan) at index [n, t, d]") and, when idx is not NULL, the
// per-axis index of the first one in idx (for rank 2: [m, d]).
int npy_check_finite(const NpyFile *f, int64_t idx[3]);

// Reads a whole 1-D integer file (little-endian int32 '<i4' or int64 '<i8', shape (n,), C order)
// of labels, e.g. class labels, one per sequence. *labels (caller frees) gets the n values as int32;
// an int64 value outside int32 is an error naming the file and the index. Returns 0, or -1 with
// givt_fail("PATH: problem") (another dtype or rank says which it has and which are accepted).
int npy_read_labels(const char *path, int32_t **labels, int64_t *n);

// ---- float arrays of any rank, for converters (csrc/io/latents.c) ------------------------------
// Rank 1 to 8, little-endian float16, float32 or float64, C or Fortran order; read by rows along the
// first axis, converted to float64 (exactly). Reads check the file is unchanged, as npy_read_f32.
typedef struct {
    NpyFile file;      // path, descriptor, dtype, itemsize, numel (its ndim and shape are unused)
    int ndim;
    int64_t shape[8];
    int fortran;       // 1: Fortran order (the first axis varies fastest)
    int64_t numel;
} NpyArray;
int npy_array_open(NpyArray *a, const char *path);  // -1 (givt_fail naming path) for another dtype
void npy_array_close(NpyArray *a);                  // safe on a zeroed or closed NpyArray
// Rows [row, row + count) along axis 0 into dst (count, shape[1], ..., shape[ndim-1]) in C order,
// whatever the file's order.
int npy_array_read_rows_f64(const NpyArray *a, int64_t row, int64_t count, double *dst);

// Writes a C-order .npy file atomically (temporary file, fsync, rename). descr is the NumPy dtype
// string ("<f4", "<i4", ...) whose size is itemsize; ndim 0..8.
int npy_write(const char *path, const char *descr, size_t itemsize, const void *data, int ndim,
              const int64_t *shape);
// float32 data of the given shape, e.g. (N, T, D).
int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape);
// The same written in pieces (a file larger than memory): open writes the header to a temporary
// file, write appends data bytes (at most what the shape holds), commit checks that all of them came
// and renames the file into place; abort (or a failed commit) removes it. Each returns 0 or -1
// (givt_fail); after a failed open nothing is left to abort.
typedef struct {
    AtomicFile af;
    size_t expect, written;  // data bytes
} NpyWriter;
int npy_writer_open(NpyWriter *w, const char *path, const char *descr, size_t itemsize, int ndim,
                    const int64_t *shape);
int npy_writer_write(NpyWriter *w, const void *data, size_t bytes);
int npy_writer_commit(NpyWriter *w);
void npy_writer_abort(NpyWriter *w);

#endif
