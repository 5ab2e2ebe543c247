// loader: the training batches read ahead on a thread of its own. The loader opens its own Dataset
// from the caller's DataConfig (nothing is shared with the caller's Dataset, which stays for
// validation) and produces, in order, exactly the batches that data_next_batch_labels would give
// from a start position on, into a ring of `depth` batch buffers.
#ifndef GIVT_LOADER_H
#define GIVT_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"

typedef struct {
    float *x;               // (B, seq_len, D): seq_len the Dataset's (data_seq_len), host memory of the LoaderAlloc
    int32_t *labels;        // (B) when the config names labels (labels_path not empty), else NULL
    DataPos before, after;  // the stream position before this batch and after it (after = before on a failure)
    int64_t seq;            // 0, 1, 2, ...: the batch's number in this loader's stream
    int rc;                 // 0, or -1: the batch could not be read (msg says why; x and labels hold
                            // garbage), and nothing follows it
    const char *msg;        // rc -1: the data's message (NaN/Inf with file and index, a changed file); else NULL
} LoaderBatch;

// Where the batch buffers live (e.g. pinned host memory of a GPU backend, so that uploads can be
// asynchronous). alloc returns `bytes` bytes or NULL; it is called from loader_open's thread only,
// and free from loader_close's. A NULL LoaderAlloc: malloc and free.
typedef struct {
    void *(*alloc)(void *user, size_t bytes);
    void (*free)(void *user, void *p);
    void *user;
} LoaderAlloc;

typedef struct Loader Loader;

// Opens a Dataset from cfg (data_open: the same checks and messages; cfg is read during the call
// only), sets its position to start
// (data_set_pos), allocates depth buffers of B windows (and labels) and starts the thread, which
// reads batches ahead until every buffer holds one. depth >= 2: the number of buffers, those the
// caller holds included (so depth - held batches are read ahead). The thread blocks all signals.
// Returns 0 with *out set, or -1 (givt_fail) with *out NULL: a bad B or depth, data_open's or
// data_set_pos's error, a failed allocation, a thread that cannot start.
int loader_open(Loader **out, const DataConfig *cfg, DataPos start, int B, int depth, const LoaderAlloc *a);

// The next batch of the stream (waits until the thread has read it). Batches come out in order:
// their `before` is the previous one's `after`. The caller owns it until loader_release.
// A failed batch (rc -1) ends the stream: the thread reads nothing after it, and this call, and
// every later one, returns that same batch and repeats its message with givt_fail, so the caller
// can `return -1`. Never NULL. Asking for a batch while the caller holds all depth buffers is a
// programming error (givt_die).
LoaderBatch *loader_next(Loader *l);

// The caller no longer needs b (its x and labels may be overwritten from now on). Batches may be
// released in any order; several (up to depth) may be held at once. Releasing the failed batch
// does nothing (it stays for the later loader_next calls).
void loader_release(Loader *l, LoaderBatch *b);

// Stops the thread (it finishes the batch it is reading, if any; it may be waiting for a free
// buffer), joins it and frees the buffers (held ones included: none may be used after) and the
// Dataset. NULL does nothing.
void loader_close(Loader *l);

#endif
