// data: the training data: windows of seq_len vectors from .npy files read with pread (or seeded
// dummy noise), a seeded validation split, and per-epoch shuffling into batches with a resumable
// position.
#ifndef GIVT_DATA_H
#define GIVT_DATA_H

#include <stdint.h>

#include "npy.h"

typedef enum { DATA_NPY, DATA_DUMMY } DataKind;

typedef struct {
    DataKind kind;
    // DATA_NPY: one file, a comma-separated list, or glob(3) patterns ("shards/*.npy"); each pattern
    // matches in sorted order and must match at least one file. Files are (N, T, D) float32/float16
    // sequences, T >= seq_len, each giving floor(T / seq_len) windows per sequence; or (M, D) streams
    // giving floor(M / seq_len) windows. Windows are numbered in file order.
    const char *path;
    int seq_len;            // T of a window; 0 with DATA_NPY: the T of the first file (rank 3)
    int input_dim;          // D; every file must have it
    int64_t dummy_count;    // DATA_DUMMY: number of sequences (the seed's 10000)
    uint64_t seed;          // split, shuffling and dummy values
    int64_t val_size;       // windows held out for validation (0 allowed; must be < the window count)
    int rank, world_size;   // rank r of world_size takes every world_size-th batch slot (0, 1)
    // Class labels (optional): an int32/int64 .npy of shape (N,), one label per sequence of the files
    // (all (N, T, D), their sequences in file order); every window of a sequence has its label.
    const char *labels_path;  // NULL or "": none
    int num_classes;          // labels must be in [0, num_classes)
} DataConfig;

// "a.npy, dir/*.npy" -> the files it names: items trimmed, each glob pattern's matches sorted.
// -1 (givt_fail) when a pattern matches nothing or the list names no file; literal paths are not
// checked here (opening them is). Free with data_free_paths.
int data_expand_paths(const char *spec, char ***paths, int *n);
void data_free_paths(char **paths, int n);

void data_config_default(DataConfig *cfg);  // dummy, seq_len 512, input_dim 16, 10000, seed 0, val 0, 0/1

// Where training stands in the stream of batches: the next batch starts at entry `index` of the
// permutation of epoch `epoch`. Saved in checkpoints; restoring it reproduces the following batches.
typedef struct {
    int64_t epoch;
    int64_t index;  // 0 <= index < num_train
} DataPos;

// At most this many data files are open at once: a glob of thousands of files must not run out of
// descriptors (a soft limit of 1024 is common). The others keep their validated header (path,
// shape, size, modification time) with fd -1 and are reopened when a window needs them, the least
// recently used open file closed first; a reopened file must be the one validated at data_open
// (same device, inode, size and modification time), else the read is an error naming it.
#define DATA_MAX_OPEN 64

typedef struct {
    DataConfig cfg;        // path points to a copy owned by the dataset
    int nfiles;
    NpyFile *files;        // (nfiles) validated headers; fd >= 0 only for the open ones
    uint64_t *file_used;   // (nfiles) use_clock at the file's last read (least recently used closes first)
    uint64_t use_clock;
    int open_idx[DATA_MAX_OPEN];  // indices of the open files (nopen of them)
    int nopen;
    int64_t *file_win0;    // (nfiles + 1): window ids of file i are [file_win0[i], file_win0[i+1])
    int64_t num_windows;   // all windows
    int64_t num_train, num_val;
    int64_t *train_ids;    // (num_train) window ids, ascending
    int64_t *val_ids;      // (num_val) window ids, ascending
    int64_t *perm;         // (num_train) permutation of train_ids indices for epoch perm_epoch
    int64_t perm_epoch;    // -1: none yet
    DataPos pos;
    int32_t *labels;       // (sequences of all files) with labels_path, else NULL
    int64_t *file_seq0;    // (nfiles) index in labels of each file's first sequence, with labels
} Dataset;

// Opens the files (their headers: no data are read; at most DATA_MAX_OPEN stay open), checks their
// shapes against seq_len and input_dim, reads and checks the labels (count = the files' sequences,
// values in [0, num_classes)), numbers the windows and makes the validation split: the first val_size
// entries of a permutation seeded by seed are validation, the rest training. Returns 0 or -1 with
// givt_fail naming the file or key.
int data_open(Dataset *ds, const DataConfig *cfg);
void data_close(Dataset *ds);

int data_seq_len(const Dataset *ds);
int64_t data_num_windows(const Dataset *ds);
int64_t data_num_train(const Dataset *ds);
int64_t data_num_val(const Dataset *ds);

// Window `id` (0 <= id < num_windows, file order) into dst (seq_len, D). Returns 0, or -1 when a
// value is NaN or Inf (givt_fail names the file and the index [n, t, d]) or id is out of range.
int data_read_window(Dataset *ds, int64_t id, float *dst);
// Which file and where in it window `id` starts: file index, row n and position t (for (M, D)
// files n is the row of the first vector and t is 0).
void data_window_origin(const Dataset *ds, int64_t id, int *file, int64_t *n, int64_t *t);

// The training stream is the concatenation of one permutation of the training windows per epoch
// (Fisher-Yates, seeded from (seed, epoch)), so every training window appears exactly once per epoch.
// Each call takes the next world_size * B windows of the stream; rank r copies windows
// [r*B, (r+1)*B) of them into buf (B, seq_len, D), and the position advances past all of them
// (all ranks keep the same position). Returns 0, or -1 on a NaN/Inf (the position is unchanged).
int data_next_batch(Dataset *ds, int B, float *buf);
// The same, and labels (B) gets the windows' labels when not NULL (the dataset must have labels).
int data_next_batch_labels(Dataset *ds, int B, float *buf, int32_t *labels);
// The label of window id (a dataset with labels).
int32_t data_window_label(const Dataset *ds, int64_t id);
// Label dropout of classifier-free guidance: 1 when the label of batch slot `slot` of optimizer step
// `step` is replaced by "no label", with probability rate. A pure function of (seed, step, slot), so
// that a resumed run drops the same labels as an uninterrupted one.
int data_label_dropped(uint64_t seed, int64_t step, int64_t slot, double rate);
DataPos data_get_pos(const Dataset *ds);
int data_set_pos(Dataset *ds, DataPos pos);  // -1 (givt_fail) when pos is out of range

// Validation batch k: validation windows [k*B, k*B + B) in ascending window order into buf
// (B, seq_len, D). Returns the number copied (B, fewer for the last batch, 0 past the end) or -1.
int data_val_batch(Dataset *ds, int64_t k, int B, float *buf);
int data_val_batch_labels(Dataset *ds, int64_t k, int B, float *buf, int32_t *labels);  // and their labels
// All windows in file order (ignoring the split), batch k, same contract: for evaluating a file.
int data_all_batch(Dataset *ds, int64_t k, int B, float *buf);

// Which windows an evaluation reads: all of them (file order), or the training or validation part
// of the split (ascending window order: validation batch k is data_val_batch's batch k).
typedef enum { DATA_SPLIT_ALL, DATA_SPLIT_TRAIN, DATA_SPLIT_VAL } DataSplit;
const char *data_split_name(DataSplit s);               // "all", "train", "val"
int data_split_parse(const char *s, DataSplit *out);    // -1 (givt_fail) for another name
int64_t data_split_size(const Dataset *ds, DataSplit s);  // windows in it
// Batch k of split s, as data_val_batch_labels (labels NULL: not wanted).
int data_split_batch(Dataset *ds, DataSplit s, int64_t k, int B, float *buf, int32_t *labels);

// Scans every file for NaN/Inf. Returns 0, or -1 naming the file and the index of the first one.
int data_check_finite(const Dataset *ds);

// A fingerprint of what was opened, for checking that every rank of a job reads the same data: a
// hash, in a fixed order, of the kind, seq_len, input_dim and seed (the split and the shuffling),
// the number of files and each file's shape (N, T, D) (or (M, D)), dtype and byte size, the number
// of labels (or none) and num_classes, the counts of windows, training and validation windows, and
// for dummy data its count. Not the paths (they may differ between nodes), the rank or world size,
// nor the contents (too slow to read).
uint64_t data_fingerprint(const Dataset *ds);
// A one-line human description of the same things into buf (n bytes, truncated to fit), e.g.
// "npy: 3 files, 12000 sequences of 64 x 16 (float32, 49152384 bytes), labels 12000 of 10 classes,
// seq_len 64, seed 0, windows 12000 (train 11000, val 1000)".
void data_describe(const Dataset *ds, char *buf, size_t n);

#endif
