// npy: NumPy .npy files: a validating reader (pread, never mapped) and an atomic writer.
#define _GNU_SOURCE
#include "npy.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "half.h"
#include "util.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "npy: little-endian hosts only");

static const unsigned char NPY_MAGIC[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
#define NPY_MAX_DIM ((int64_t)1 << 48)

// ---- header dict parser --------------------------------------------------------------------
// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
typedef struct {
    const char *s, *end;
    const char *path;
    char descr[32];
    int fortran;  // 0/1
    int ndim;
    int64_t shape[8];
    int have_descr, have_fortran, have_shape;
} HeaderParser;

static void hp_ws(HeaderParser *p) {
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')) p->s++;
}

static int hp_expect(HeaderParser *p, char c, const char *what) {
    hp_ws(p);
    if (p->s >= p->end || *p->s != c)
        return givt_fail("%s: bad .npy header: expected '%c' %s", p->path, c, what);
    p->s++;
    return 0;
}

// A quoted Python string (no escapes needed for the keys and dtypes we accept).
static int hp_string(HeaderParser *p, char *out, size_t outsize, const char *what) {
    hp_ws(p);
    if (p->s >= p->end || (*p->s != '\'' && *p->s != '"'))
        return givt_fail("%s: bad .npy header: expected a quoted string %s", p->path, what);
    char q = *p->s++;
    size_t n = 0;
    while (p->s < p->end && *p->s != q) {
        if (*p->s == '\\' || n + 1 >= outsize)
            return givt_fail("%s: bad .npy header: unsupported or too long string %s", p->path, what);
        out[n++] = *p->s++;
    }
    if (p->s >= p->end) return givt_fail("%s: bad .npy header: unterminated string %s", p->path, what);
    p->s++;
    out[n] = '\0';
    return 0;
}

static int hp_word(HeaderParser *p, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(p->end - p->s) >= n && memcmp(p->s, w, n) == 0) {
        p->s += n;
        return 1;
    }
    return 0;
}

static int hp_bool(HeaderParser *p, int *out) {
    hp_ws(p);
    if (hp_word(p, "True")) *out = 1;
    else if (hp_word(p, "False")) *out = 0;
    else return givt_fail("%s: bad .npy header: 'fortran_order' must be True or False", p->path);
    return 0;
}

static int hp_shape(HeaderParser *p) {
    if (hp_expect(p, '(', "to open 'shape'")) return -1;
    p->ndim = 0;
    for (;;) {
        hp_ws(p);
        if (p->s < p->end && *p->s == ')') {
            p->s++;
            return 0;
        }
        if (p->s >= p->end || *p->s < '0' || *p->s > '9')
            return givt_fail("%s: bad .npy header: 'shape' must be a tuple of non-negative integers",
                             p->path);
        int64_t v = 0;
        while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
            v = v * 10 + (*p->s++ - '0');
            if (v > NPY_MAX_DIM) return givt_fail("%s: bad .npy header: a dimension of 'shape' is too large", p->path);
        }
        if (p->s < p->end && *p->s == 'L') p->s++;  // Python 2 long
        if (p->ndim == 8) return givt_fail("%s: bad .npy header: 'shape' has more than 8 dimensions", p->path);
        p->shape[p->ndim++] = v;
        hp_ws(p);
        if (p->s < p->end && *p->s == ',') {
            p->s++;
        } else if (p->s >= p->end || *p->s != ')') {
            return givt_fail("%s: bad .npy header: expected ',' or ')' in 'shape'", p->path);
        }
    }
}

static int hp_parse(HeaderParser *p) {
    if (hp_expect(p, '{', "at the start of the header dict")) return -1;
    for (;;) {
        hp_ws(p);
        if (p->s < p->end && *p->s == '}') {
            p->s++;
            break;
        }
        char key[32];
        if (hp_string(p, key, sizeof key, "(a key of the header dict)")) return -1;
        if (hp_expect(p, ':', "after a key of the header dict")) return -1;
        if (strcmp(key, "descr") == 0 && !p->have_descr) {
            if (hp_string(p, p->descr, sizeof p->descr, "for 'descr'")) return -1;
            p->have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !p->have_fortran) {
            if (hp_bool(p, &p->fortran)) return -1;
            p->have_fortran = 1;
        } else if (strcmp(key, "shape") == 0 && !p->have_shape) {
            if (hp_shape(p)) return -1;
            p->have_shape = 1;
        } else {
            return givt_fail("%s: bad .npy header: unexpected or repeated key '%s'", p->path, key);
        }
        hp_ws(p);
        if (p->s < p->end && *p->s == ',') {
            p->s++;
        } else if (p->s >= p->end || *p->s != '}') {
            return givt_fail("%s: bad .npy header: expected ',' or '}' in the header dict", p->path);
        }
    }
    hp_ws(p);
    if (p->s != p->end) return givt_fail("%s: bad .npy header: unexpected text after the header dict", p->path);
    if (!p->have_descr || !p->have_fortran || !p->have_shape)
        return givt_fail("%s: bad .npy header: missing key '%s'", p->path,
                         !p->have_descr ? "descr" : !p->have_fortran ? "fortran_order" : "shape");
    return 0;
}

// ---- reader ---------------------------------------------------------------------------------
#define NPY_MAX_HEADER ((size_t)1 << 24)  // NumPy writes headers of a few hundred bytes

static int open_fail(NpyFile *f) {
    npy_close(f);
    return -1;
}

static int64_t mtime_ns_of(const struct stat *st) {
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

// Reads exactly n bytes at offset off; a short read means the file ended early.
static int pread_exact(const NpyFile *f, void *dst, size_t n, int64_t off) {
    return fs_pread_full(f->fd, f->path, dst, n, off);
}

// The file must be as it was at npy_open: same size and modification time.
static int check_unchanged(const NpyFile *f) {
    struct stat st;
    if (fstat(f->fd, &st) != 0) return givt_fail("%s: cannot stat: %s", f->path, strerror(errno));
    if ((int64_t)st.st_size != f->file_size)
        return givt_fail("%s: the file changed while in use (%lld bytes at open, now %lld): data files must not be "
                         "modified during a run (replace them by rename instead)",
                         f->path, (long long)f->file_size, (long long)st.st_size);
    if (mtime_ns_of(&st) != f->mtime_ns)
        return givt_fail("%s: the file was modified while in use (its modification time changed): data files must "
                         "not be written in place during a run (replace them by rename instead)",
                         f->path);
    return 0;
}

int npy_check_same_file(const NpyFile *f, int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return givt_fail("%s: cannot reopen: %s", f->path, strerror(errno));
    int other = (uint64_t)st.st_dev != f->dev || (uint64_t)st.st_ino != f->ino;
    if ((int64_t)st.st_size == f->file_size && !other && mtime_ns_of(&st) == f->mtime_ns) return 0;
    return givt_fail("%s: the file changed since the data were opened (%s): data files must not be modified or "
                     "replaced during a run",
                     f->path,
                     (int64_t)st.st_size != f->file_size ? "another size"
                     : other                             ? "another file by that name"
                                                         : "another modification time");
}

// What npy_open_as accepts: float32/float16 of rank 2 or 3 (the data), or int32/int64 of rank 1
// (labels; itemsize 4 or 8, dtype left NPY_F32 and never read as floats).
enum { OPEN_FLOATS, OPEN_INT_VECTOR };

static int npy_open_as(NpyFile *f, const char *path, int kind);

int npy_open(NpyFile *f, const char *path) { return npy_open_as(f, path, OPEN_FLOATS); }

// Opens path into f (descriptor, size, modification time, identity) and parses its header into p;
// f->data_off is set to the first byte after the header. -1 (givt_fail) with f closed on failure.
static int open_header(NpyFile *f, const char *path, HeaderParser *p) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->path = xstrdup(path);
    f->fd = fs_open_regular_file(path);  // a FIFO or device is refused, never waited on
    if (f->fd < 0) return open_fail(f);
    struct stat st;
    if (fstat(f->fd, &st) != 0) {
        givt_fail("%s: cannot stat: %s", path, strerror(errno));
        return open_fail(f);
    }
    size_t size = (size_t)st.st_size;
    f->file_size = (int64_t)st.st_size;
    f->mtime_ns = mtime_ns_of(&st);
    f->dev = (uint64_t)st.st_dev;
    f->ino = (uint64_t)st.st_ino;
    if (size < 10) {
        givt_fail("%s: not a .npy file (only %zu bytes)", path, size);
        return open_fail(f);
    }
    unsigned char b[12];
    if (pread_exact(f, b, size < 12 ? 10 : 12, 0)) return open_fail(f);

    if (memcmp(b, NPY_MAGIC, 6) != 0) {
        givt_fail("%s: not a .npy file (bad magic)", path);
        return open_fail(f);
    }
    int major = b[6], minor = b[7];
    size_t prefix, hlen;
    if (major == 1 && minor == 0) {
        prefix = 10;
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
    } else if ((major == 2 || major == 3) && minor == 0) {
        prefix = 12;
        if (size < prefix) {
            givt_fail("%s: truncated .npy header", path);
            return open_fail(f);
        }
        hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    } else {
        givt_fail("%s: unsupported .npy format version %d.%d (need 1.0, 2.0 or 3.0)", path, major, minor);
        return open_fail(f);
    }
    if (hlen > size - prefix) {
        givt_fail("%s: .npy header length %zu runs past the end of the file (%zu bytes)", path, hlen, size);
        return open_fail(f);
    }
    if (hlen > NPY_MAX_HEADER) {
        givt_fail("%s: .npy header length %zu is implausibly large (at most %zu)", path, hlen, NPY_MAX_HEADER);
        return open_fail(f);
    }
    char *header = xmalloc(hlen ? hlen : 1);
    if (pread_exact(f, header, hlen, (int64_t)prefix)) {
        free(header);
        return open_fail(f);
    }
    *p = (HeaderParser){.s = header, .end = header + hlen, .path = path};
    int bad = hp_parse(p);
    free(header);
    p->s = p->end = NULL;
    if (bad) return open_fail(f);
    f->data_off = (int64_t)(prefix + hlen);
    return 0;
}

// Sets f->numel from the shape and checks that the file holds exactly numel * itemsize data bytes.
// -1 (givt_fail) with f closed otherwise.
static int check_data_size(NpyFile *f, const char *path, int ndim, const int64_t *shape) {
    // numel, and the product of the nonzero dims (row sizes are products of trailing dims: they must
    // fit too when another dim is 0 and the file holds no data)
    int64_t numel = 1, nonzero = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] != 0 && nonzero > INT64_MAX / 8 / shape[i]) {
            givt_fail("%s: shape is too large", path);
            return open_fail(f);
        }
        numel *= shape[i];
        nonzero *= shape[i] ? shape[i] : 1;
    }
    f->numel = numel;
    size_t want = (size_t)numel * (size_t)f->itemsize, have = (size_t)f->file_size - (size_t)f->data_off;
    if (have < want) {
        givt_fail("%s: truncated: shape needs %zu data bytes but the file has %zu", path, want, have);
        return open_fail(f);
    }
    if (have > want) {
        givt_fail("%s: %zu unexpected bytes after the data (shape needs %zu)", path, have - want, want);
        return open_fail(f);
    }
    return 0;
}

// "(8, 4, 6, 5)" into buf.
static void format_shape(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, ndim == 1 ? ",)" : ")");
}

#define NPY_LATENTS_HINT "README, \"Train on your own latents\""

// Why a float array givt-train and givt-eval cannot read is not (N, T, D) or (M, D) float32/float16
// in C order, with the one-line fix: rank 4 (latents) first, as the converter also fixes the dtype and
// the order; then float64, Fortran order and other ranks.
static int float_layout_error(const char *path, const HeaderParser *p) {
    char shape[160];
    format_shape(p->shape, p->ndim, shape, sizeof shape);
    if (p->ndim == 4)
        return givt_fail("%s: array has rank 4, shape %s; need rank 2 (M, D) or 3 (N, T, D): for latents (N, C, H, W) "
                         "or (N, H, W, C), run `givt-latents to-sequences %s OUT.npy` (--layout nhwc for the "
                         "second) to get (N, H*W, C) sequences (" NPY_LATENTS_HINT ")",
                         path, shape, path);
    // np.ascontiguousarray(..., dtype=np.float32) fixes both (astype alone keeps a Fortran order)
    char fix[2 * 1024];
    snprintf(fix, sizeof fix, "python3 -c \"import numpy as np; np.save('%s', np.ascontiguousarray(np.load('%s'), "
             "dtype=np.float32))\"", path, path);
    if (!strcmp(p->descr, "<f8"))
        return givt_fail("%s: dtype '<f8' not supported (float64; need little-endian float32 '<f4' or float16 '<f2'): "
                         "save it as float32 with %s",
                         path, fix);
    if (p->fortran)
        return givt_fail("%s: Fortran-order arrays are not supported (need C order): save it in C order with %s", path,
                         fix);
    return givt_fail("%s: array has rank %d, shape %s; need rank 2 (M, D) or 3 (N, T, D)", path, p->ndim, shape);
}

static int npy_open_as(NpyFile *f, const char *path, int kind) {
    HeaderParser p;
    if (open_header(f, path, &p)) return -1;
    if (kind == OPEN_INT_VECTOR) {
        f->itemsize = !strcmp(p.descr, "<i4") ? 4 : !strcmp(p.descr, "<i8") ? 8 : 0;
        if (!f->itemsize) {
            givt_fail("%s: dtype '%s' not supported for labels (need little-endian int32 '<i4' or int64 '<i8')",
                      path, p.descr);
            return open_fail(f);
        }
        if (p.ndim != 1) {
            givt_fail("%s: labels have rank %d; need rank 1, shape (N,): one label per sequence", path, p.ndim);
            return open_fail(f);
        }
        if (p.fortran) {
            givt_fail("%s: Fortran-order arrays are not supported (save a C-order array: np.ascontiguousarray)", path);
            return open_fail(f);
        }
        p.ndim = 2, p.shape[1] = 1;  // (N, 1) below: the same size checks
    } else {
        int f4 = !strcmp(p.descr, "<f4"), f2 = !strcmp(p.descr, "<f2"), f8 = !strcmp(p.descr, "<f8");
        if (!f4 && !f2 && !f8) {
            givt_fail("%s: dtype '%s' not supported (need little-endian float32 '<f4' or float16 '<f2')", path,
                      p.descr);
            return open_fail(f);
        }
        if (f8 || p.fortran || (p.ndim != 2 && p.ndim != 3)) {
            float_layout_error(path, &p);
            return open_fail(f);
        }
        f->dtype = f4 ? NPY_F32 : NPY_F16;
        f->itemsize = f4 ? 4 : 2;
    }
    f->ndim = p.ndim;
    f->shape[0] = f->shape[1] = f->shape[2] = 1;
    for (int i = 0; i < p.ndim; i++) f->shape[i] = p.shape[i];
    return check_data_size(f, path, p.ndim, p.shape);
}

void npy_close(NpyFile *f) {
    if (f->path && f->fd >= 0) close(f->fd);  // a path means npy_open set fd
    free(f->path);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

int npy_read_labels(const char *path, int32_t **labels, int64_t *n) {
    NpyFile f;
    *labels = NULL;
    *n = 0;
    if (npy_open_as(&f, path, OPEN_INT_VECTOR)) return -1;
    int64_t count = f.shape[0];
    int rc = 0;
    if (count > ((int64_t)1 << 40)) rc = givt_fail("%s: %lld labels: too many", path, (long long)count);
    void *raw = rc ? NULL : xmalloc((size_t)(count ? count : 1) * (size_t)f.itemsize);
    if (rc == 0) rc = pread_exact(&f, raw, (size_t)count * (size_t)f.itemsize, f.data_off);
    int32_t *out = rc ? NULL : xmalloc((size_t)(count ? count : 1) * sizeof *out);
    for (int64_t i = 0; rc == 0 && i < count; i++) {
        int64_t v = f.itemsize == 4 ? ((const int32_t *)raw)[i] : ((const int64_t *)raw)[i];
        if (v < INT32_MIN || v > INT32_MAX)
            rc = givt_fail("%s: label %lld at index %lld does not fit in int32", path, (long long)v, (long long)i);
        else
            out[i] = (int32_t)v;
    }
    free(raw);
    npy_close(&f);
    if (rc) {
        free(out);
        return -1;
    }
    *labels = out;
    *n = count;
    return 0;
}

// ---- arrays of any rank (converters) ----------------------------------------------------------
int npy_array_open(NpyArray *a, const char *path) {
    memset(a, 0, sizeof *a);
    HeaderParser p;
    if (open_header(&a->file, path, &p)) return -1;
    NpyFile *f = &a->file;
    int f4 = !strcmp(p.descr, "<f4"), f2 = !strcmp(p.descr, "<f2"), f8 = !strcmp(p.descr, "<f8");
    if (!f4 && !f2 && !f8) {
        givt_fail("%s: dtype '%s' not supported (need little-endian float16 '<f2', float32 '<f4' or float64 '<f8')",
                  path, p.descr);
        return open_fail(f);
    }
    f->dtype = f4 ? NPY_F32 : f2 ? NPY_F16 : NPY_F64;
    f->itemsize = f4 ? 4 : f2 ? 2 : 8;
    f->ndim = 0;  // the shape is a's (any rank); f->shape stays unused
    a->ndim = p.ndim;
    a->fortran = p.fortran;
    memcpy(a->shape, p.shape, sizeof a->shape);
    if (check_data_size(f, path, p.ndim, p.shape)) return -1;
    a->numel = f->numel;
    return 0;
}

void npy_array_close(NpyArray *a) {
    npy_close(&a->file);
    memset(a, 0, sizeof *a);
    a->file.fd = -1;
}

const char *npy_dtype_name(NpyDtype t) { return t == NPY_F16 ? "float16" : t == NPY_F64 ? "float64" : "float32"; }

// n elements of dtype t at src as float64 (exact for all three dtypes).
static void raw_to_f64(NpyDtype t, const void *src, int64_t n, double *dst) {
    if (t == NPY_F64) memcpy(dst, src, (size_t)n * sizeof *dst);
    else if (t == NPY_F32)
        for (int64_t i = 0; i < n; i++) dst[i] = ((const float *)src)[i];
    else
        for (int64_t i = 0; i < n; i++) dst[i] = half_f16_to_f32(((const uint16_t *)src)[i]);
}

// count elements at flat (storage order) index start into dst as float64, in chunks through raw.
static int read_raw_f64(const NpyFile *f, int64_t start, int64_t count, double *dst, void *raw, int64_t raw_elems) {
    for (int64_t done = 0; done < count;) {
        int64_t n = count - done < raw_elems ? count - done : raw_elems;
        if (pread_exact(f, raw, (size_t)n * (size_t)f->itemsize, f->data_off + (start + done) * f->itemsize))
            return -1;
        raw_to_f64(f->dtype, raw, n, dst + done);
        done += n;
    }
    return 0;
}

// Fortran order: element (r, i1, ..., ik) lies at r + N * (i1 + s1 * (i2 + ...)); for each index j of a
// row (C order over (i1, ..., ik)) the count values of rows [row, row + count) are contiguous.
static int read_rows_fortran(const NpyArray *a, int64_t row, int64_t count, int64_t per, double *dst, void *raw,
                             double *col, int64_t raw_elems) {
    for (int64_t j = 0; j < per; j++) {
        int64_t rest = j, off = 0, stride = 1;  // off: the Fortran offset of (i1, ..., ik) in units of N
        for (int d = a->ndim - 1; d >= 1; d--) stride *= a->shape[d];
        for (int d = 1; d < a->ndim; d++) {
            stride /= a->shape[d];
            int64_t i = rest / stride;
            rest %= stride;
            int64_t fs = 1;
            for (int e = 1; e < d; e++) fs *= a->shape[e];
            off += i * fs;
        }
        if (read_raw_f64(&a->file, row + a->shape[0] * off, count, col, raw, raw_elems)) return -1;
        for (int64_t m = 0; m < count; m++) dst[m * per + j] = col[m];
    }
    return 0;
}

int npy_array_read_rows_f64(const NpyArray *a, int64_t row, int64_t count, double *dst) {
    const NpyFile *f = &a->file;
    if (a->ndim < 1 || row < 0 || count < 0 || row > a->shape[0] || count > a->shape[0] - row)
        return givt_fail("%s: read of %lld rows from row %lld is out of bounds (%lld rows)", f->path, (long long)count,
                         (long long)row, (long long)(a->ndim ? a->shape[0] : 0));
    if (f->fd < 0) return givt_fail("%s: read from a closed file", f->path ? f->path : "npy");
    if (check_unchanged(f)) return -1;
    int64_t per = a->shape[0] ? a->numel / a->shape[0] : 0;
    if (count == 0 || per == 0) return 0;
    enum { RAW_ELEMS = 1 << 15 };
    void *raw = xmalloc((size_t)RAW_ELEMS * 8);
    int rc;
    if (!a->fortran || a->ndim == 1) {
        rc = read_raw_f64(f, row * per, count * per, dst, raw, RAW_ELEMS);
    } else {
        double *col = xmalloc((size_t)count * sizeof *col);
        rc = read_rows_fortran(a, row, count, per, dst, raw, col, RAW_ELEMS);
        free(col);
    }
    free(raw);
    return rc;
}

// float16 values are read in chunks of this many elements and converted.
#define NPY_F16_CHUNK 4096

int npy_read_f32(const NpyFile *f, int64_t start, int64_t count, float *dst) {
    if (start < 0 || count < 0 || start > f->numel || count > f->numel - start)
        return givt_fail("%s: read of %lld elements from element %lld is out of bounds (%lld elements)", f->path,
                         (long long)count, (long long)start, (long long)f->numel);
    if (f->fd < 0) return givt_fail("%s: read from a closed file", f->path ? f->path : "npy");
    if (check_unchanged(f)) return -1;
    int64_t off = f->data_off + start * f->itemsize;
    if (f->dtype == NPY_F32) return pread_exact(f, dst, (size_t)count * 4, off);
    uint16_t h[NPY_F16_CHUNK];
    for (int64_t done = 0; done < count;) {
        int64_t n = count - done < NPY_F16_CHUNK ? count - done : NPY_F16_CHUNK;
        if (pread_exact(f, h, (size_t)n * 2, off + done * 2)) return -1;
        for (int64_t i = 0; i < n; i++) dst[done + i] = half_f16_to_f32(h[i]);
        done += n;
    }
    return 0;
}

int npy_read_rows_f32(const NpyFile *f, int64_t row, int64_t count, float *dst) {
    int64_t per_row = f->shape[1] * f->shape[2];
    if (row < 0 || count < 0 || row > f->shape[0] || count > f->shape[0] - row)
        return givt_fail("%s: read of %lld rows from row %lld is out of bounds (%lld rows)", f->path, (long long)count,
                         (long long)row, (long long)f->shape[0]);
    return npy_read_f32(f, row * per_row, count * per_row, dst);
}

void npy_unravel(const NpyFile *f, int64_t flat, int64_t idx[3]) {
    for (int i = f->ndim - 1; i >= 0; i--) {
        int64_t d = f->shape[i] > 0 ? f->shape[i] : 1;
        idx[i] = flat % d;
        flat /= d;
    }
}

void npy_format_index(const NpyFile *f, int64_t flat, char *buf, size_t bufsize) {
    int64_t idx[3];
    npy_unravel(f, flat, idx);
    if (f->ndim == 3)
        snprintf(buf, bufsize, "[%lld, %lld, %lld]", (long long)idx[0], (long long)idx[1], (long long)idx[2]);
    else
        snprintf(buf, bufsize, "[%lld, %lld]", (long long)idx[0], (long long)idx[1]);
}

int64_t npy_find_nonfinite(const NpyFile *f, int64_t start, int64_t count) {
    if (start < 0) start = 0;
    if (count > f->numel - start) count = f->numel - start;
    enum { CHUNK = 1 << 16 };
    float *buf = xmalloc(CHUNK * sizeof(float));
    int64_t found = -1;
    for (int64_t done = 0; done < count && found == -1;) {
        int64_t n = count - done < CHUNK ? count - done : CHUNK;
        if (npy_read_f32(f, start + done, n, buf)) {
            found = -2;
            break;
        }
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(buf[i])) {
                found = start + done + i;
                break;
            }
        done += n;
    }
    free(buf);
    return found;
}

int npy_check_finite(const NpyFile *f, int64_t idx[3]) {
    int64_t at = npy_find_nonfinite(f, 0, f->numel);
    if (at == -2) return -1;
    if (at < 0) return 0;
    float v;
    npy_read_f32(f, at, 1, &v);
    char ib[96];
    npy_format_index(f, at, ib, sizeof ib);
    if (idx) npy_unravel(f, at, idx);
    return givt_fail("%s: non-finite value (%s) at index %s", f->path, isnan(v) ? "nan" : v > 0 ? "inf" : "-inf", ib);
}

// ---- writer ---------------------------------------------------------------------------------
// The header of a C-order array: magic, version, dict padded with spaces and a final newline so that
// the data start at a multiple of 64 bytes. Returns it (malloc'd; *total bytes) and *numel, or NULL
// (givt_fail) for a bad rank or dimension.
static unsigned char *make_header(const char *path, const char *descr, int ndim, const int64_t *shape, size_t *total,
                                  size_t *numel) {
    if (ndim < 0 || ndim > 8) {
        givt_fail("%s: cannot write an array of rank %d", path, ndim);
        return NULL;
    }
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    *numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            givt_fail("%s: negative dimension %lld", path, (long long)shape[i]);
            return NULL;
        }
        n += snprintf(dict + n, sizeof dict - (size_t)n, i ? ", %lld" : "%lld", (long long)shape[i]);
        *numel *= (size_t)shape[i];
    }
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%s), }", ndim == 1 ? "," : "");
    size_t hlen = (size_t)n + 1;
    int v2 = 10 + hlen > 65535;
    size_t prefix = v2 ? 12 : 10;
    *total = (prefix + hlen + 63) / 64 * 64;
    hlen = *total - prefix;
    unsigned char *hdr = xmalloc(*total);
    memcpy(hdr, NPY_MAGIC, 6);
    hdr[6] = v2 ? 2 : 1;
    hdr[7] = 0;
    if (v2) {
        for (int i = 0; i < 4; i++) hdr[8 + i] = (unsigned char)(hlen >> (8 * i));
    } else {
        hdr[8] = (unsigned char)(hlen & 0xff);
        hdr[9] = (unsigned char)(hlen >> 8);
    }
    memcpy(hdr + prefix, dict, (size_t)n);
    memset(hdr + prefix + n, ' ', hlen - (size_t)n - 1);
    hdr[*total - 1] = '\n';
    return hdr;
}

int npy_write(const char *path, const char *descr, size_t itemsize, const void *data, int ndim,
              const int64_t *shape) {
    NpyWriter w;
    if (npy_writer_open(&w, path, descr, itemsize, ndim, shape)) return -1;
    npy_writer_write(&w, data, w.expect);
    return npy_writer_commit(&w);
}

int npy_writer_open(NpyWriter *w, const char *path, const char *descr, size_t itemsize, int ndim,
                    const int64_t *shape) {
    memset(w, 0, sizeof *w);
    size_t total, numel;
    unsigned char *hdr = make_header(path, descr, ndim, shape, &total, &numel);
    if (!hdr) return -1;
    if (fs_atomic_open(&w->af, path)) {
        free(hdr);
        return -1;
    }
    w->expect = numel * itemsize;
    int rc = fs_atomic_write(&w->af, hdr, total);
    free(hdr);
    if (rc) fs_atomic_abort(&w->af);
    return rc;
}

int npy_writer_write(NpyWriter *w, const void *data, size_t bytes) {
    if (bytes > w->expect - w->written) {
        w->af.failed = 1;
        return givt_fail("%s: %zu more data bytes than the shape holds", w->af.final_path, bytes - (w->expect - w->written));
    }
    w->written += bytes;
    return fs_atomic_write(&w->af, data, bytes);
}

int npy_writer_commit(NpyWriter *w) {
    if (w->written != w->expect) {
        int rc = givt_fail("%s: %zu of the shape's %zu data bytes written", w->af.final_path, w->written, w->expect);
        fs_atomic_abort(&w->af);
        return rc;
    }
    return fs_atomic_commit(&w->af);
}

void npy_writer_abort(NpyWriter *w) { fs_atomic_abort(&w->af); }

int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape) {
    return npy_write(path, "<f4", 4, data, ndim, shape);
}
