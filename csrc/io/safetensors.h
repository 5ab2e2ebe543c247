// safetensors: a validating reader (pread, any dtype listed, F32/F16/BF16 read as float32) and an
// atomic float32 writer of the safetensors format (8-byte LE header length, JSON header, data).
#ifndef GIVT_SAFETENSORS_H
#define GIVT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER 100000000  // bytes, as the reference implementation

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_F8_E5M2, ST_F8_E4M3, ST_F8_E8M0, ST_I16, ST_U16, ST_F16, ST_BF16,
    ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64, ST_C64, ST_NUM_DTYPES
} StDtype;

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    size_t begin, end;  // byte offsets into the data buffer
} StTensor;

// An open safetensors file. The header is read at st_open; tensor data is read with pread(2) by
// st_read_f32, never mapped, so a file truncated while open is an error naming it (never a SIGBUS).
typedef struct {
    char *path;
    int fd;              // open for reading while path is set (st_open), else unused
    unsigned char *header;  // the file's first data_offset bytes (header length, JSON header), read at open
    size_t file_size;       // at open
    size_t data_offset;  // where the data buffer begins in the file (8 + header length)
    size_t data_size;    // bytes of the data buffer (file_size - data_offset at open)
    StTensor *tensors;  // in header order
    int count;
    char **meta_keys, **meta_values;  // "__metadata__"
    int n_meta;
} StFile;

const char *st_dtype_name(StDtype t);
size_t st_dtype_size(StDtype t);

// Opens and validates the whole file (header length, JSON, dtypes, shapes against offsets,
// offsets inside the buffer, contiguous and not overlapping, buffer fully covered). On error
// returns -1 with a one-line message naming the file (and tensor), having freed everything (f is
// left zeroed). st_close frees an opened file and is safe on a zeroed one, so it may be called
// either way.
int st_open(StFile *f, const char *path);
void st_close(StFile *f);
int st_find(const StFile *f, const char *name);  // index into f->tensors, or -1
const char *st_metadata(const StFile *f, const char *key);  // NULL when absent
// "[32, 16]" for messages (into buf of n bytes; returns buf).
char *st_shape_str(const int64_t *shape, int ndim, char *buf, size_t n);

// Reads tensor i (F32, F16 or BF16) as float32 into dst (numel floats); -1 (givt_fail) when the file
// now ends before the tensor (truncated since st_open) or the read fails.
int st_read_f32(const StFile *f, int i, float *dst);
// Finds the tensor by name, checks it has exactly the shape given, converts it into dst.
int st_load_f32(const StFile *f, const char *name, int ndim, const int64_t *shape, float *dst);

// ---- writing ------------------------------------------------------------------------------
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float *data;  // numel floats, host memory
} StWriteTensor;

typedef struct {
    const char *key, *value;
} StMeta;

// Writes float32 tensors (sorted by name, as PyTorch's save_file lays them out) with __metadata__
// {"format": "pt", meta...} atomically (temporary file, fsync, rename). Names must be unique.
int st_write(const char *path, const StWriteTensor *tensors, int count, const StMeta *meta, int n_meta);

#endif
