// loader: a thread that reads the training batches ahead into a ring of buffers, from a Dataset of
// its own. Every slot is FREE, FILLING (the thread reads into it, without the lock), READY (read,
// waiting for loader_next) or HELD (the caller's); batches carry their number in the stream, so
// slots may be released in any order and loader_next still hands them out in order.
#define _GNU_SOURCE
#include "loader.h"

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

enum { SLOT_FREE, SLOT_FILLING, SLOT_READY, SLOT_HELD };

typedef struct {
    LoaderBatch b;  // first: a LoaderBatch pointer is its slot's
    int state;
} LoaderSlot;

struct Loader {
    Dataset ds;  // the thread's own; touched by the thread only once it runs
    int B, depth;
    LoaderAlloc alloc;
    LoaderSlot *slots;        // (depth)
    pthread_mutex_t mu;
    pthread_cond_t can_fill;  // a slot became free, or stop
    pthread_cond_t ready;     // a slot became ready
    int64_t produced;         // the number the thread gives its next batch
    int64_t consumed;         // the number loader_next hands out next
    int stop;                 // loader_close: the thread ends
    LoaderBatch *failed;      // the failed batch once loader_next has handed it out, else NULL
    int thread_started;
    pthread_t thread;
};

// util keeps each thread's last error message in thread-local memory, freed by that thread's next
// givt_fail only: the loader thread frees its own (givt_error_clear) before it ends.

static void *malloc_alloc(void *user, size_t bytes) {
    (void)user;
    return malloc(bytes ? bytes : 1);
}

static void malloc_free(void *user, void *p) {
    (void)user;
    free(p);
}

// Waits for a free slot, reads the next batch into it outside the lock, publishes it; ends on stop
// or after a failed batch.
static void *loader_thread(void *arg) {
    Loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        LoaderSlot *s = NULL;
        while (!l->stop) {
            for (int i = 0; i < l->depth && !s; i++)
                if (l->slots[i].state == SLOT_FREE) s = &l->slots[i];
            if (s) break;
            pthread_cond_wait(&l->can_fill, &l->mu);
        }
        if (l->stop) break;
        s->state = SLOT_FILLING;
        int64_t seq = l->produced++;
        pthread_mutex_unlock(&l->mu);

        LoaderBatch *b = &s->b;
        b->before = data_get_pos(&l->ds);
        b->rc = data_next_batch_labels(&l->ds, l->B, b->x, b->labels);
        b->after = data_get_pos(&l->ds);
        b->seq = seq;
        b->msg = b->rc ? xstrdup(givt_last_error()) : NULL;

        pthread_mutex_lock(&l->mu);
        s->state = SLOT_READY;
        pthread_cond_broadcast(&l->ready);
        if (b->rc) break;  // nothing is read after a failed batch
    }
    pthread_mutex_unlock(&l->mu);
    givt_error_clear();
    return NULL;
}

// Frees what loader_open made (the thread already joined or never started).
static void loader_free(Loader *l) {
    if (l->slots) {
        for (int i = 0; i < l->depth; i++) {
            LoaderBatch *b = &l->slots[i].b;
            if (b->x) l->alloc.free(l->alloc.user, b->x);
            if (b->labels) l->alloc.free(l->alloc.user, b->labels);
            free((char *)b->msg);
        }
        free(l->slots);
    }
    data_close(&l->ds);
    pthread_cond_destroy(&l->ready);
    pthread_cond_destroy(&l->can_fill);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

int loader_open(Loader **out, const DataConfig *cfg, DataPos start, int B, int depth, const LoaderAlloc *a) {
    *out = NULL;
    if (B < 1) return givt_fail("loader: batch size %d: must be at least 1", B);
    if (depth < 2 || depth > 1024) return givt_fail("loader: depth %d: must be in [2, 1024]", depth);
    if (a && (!a->alloc || !a->free)) return givt_fail("loader: the allocator needs both alloc and free");
    Loader *l = xcalloc(1, sizeof *l);
    l->B = B;
    l->depth = depth;
    l->alloc = a ? *a : (LoaderAlloc){malloc_alloc, malloc_free, NULL};
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->can_fill, NULL);
    pthread_cond_init(&l->ready, NULL);
    if (data_open(&l->ds, cfg) != 0) {
        loader_free(l);
        return -1;
    }
    if (data_set_pos(&l->ds, start) != 0) {
        int rc = givt_fail("loader: %s", givt_last_error());
        loader_free(l);
        return rc;
    }
    size_t floats = size_mul3((size_t)B, (size_t)data_seq_len(&l->ds), (size_t)cfg->input_dim);
    size_t x_bytes = size_mul(floats, sizeof(float));
    size_t lab_bytes = size_mul((size_t)B, sizeof(int32_t));
    l->slots = xcalloc((size_t)depth, sizeof *l->slots);
    for (int i = 0; i < depth; i++) {
        LoaderBatch *b = &l->slots[i].b;
        b->x = x_bytes == SIZE_MAX ? NULL : l->alloc.alloc(l->alloc.user, x_bytes);
        if (b->x && l->ds.labels) b->labels = l->alloc.alloc(l->alloc.user, lab_bytes);
        if (!b->x || (l->ds.labels && !b->labels)) {
            int rc = givt_fail("loader: cannot allocate batch buffer %d of %d (%zu bytes of B %d x %d x %d floats)",
                               i + 1, depth, x_bytes, B, data_seq_len(&l->ds), cfg->input_dim);
            loader_free(l);
            return rc;
        }
    }
    // the thread takes no signals (they belong to the thread that waits for them: stop_signal)
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&l->thread, NULL, loader_thread, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        int rc = givt_fail("loader: cannot start the loader thread: %s", strerror(e));
        loader_free(l);
        return rc;
    }
    l->thread_started = 1;
    *out = l;
    return 0;
}

LoaderBatch *loader_next(Loader *l) {
    pthread_mutex_lock(&l->mu);
    LoaderSlot *s = NULL;
    while (!l->failed) {
        int held = 0;
        for (int i = 0; i < l->depth && !s; i++) {
            LoaderSlot *t = &l->slots[i];
            if (t->state == SLOT_READY && t->b.seq == l->consumed) s = t;
            held += t->state == SLOT_HELD;
        }
        if (s) break;
        if (held == l->depth)
            givt_die("loader_next: the caller holds all %d batch buffers; release one first", l->depth);
        pthread_cond_wait(&l->ready, &l->mu);
    }
    LoaderBatch *b;
    if (s) {
        s->state = SLOT_HELD;
        l->consumed++;
        b = &s->b;
        if (b->rc) l->failed = b;
    } else {
        b = l->failed;
    }
    pthread_mutex_unlock(&l->mu);
    if (b->rc) givt_fail("%s", b->msg);
    return b;
}

void loader_release(Loader *l, LoaderBatch *b) {
    uintptr_t off = (uintptr_t)b - (uintptr_t)l->slots;
    if ((uintptr_t)b < (uintptr_t)l->slots || off % sizeof(LoaderSlot) || off / sizeof(LoaderSlot) >= (size_t)l->depth)
        givt_die("loader_release: %p is not a batch of this loader", (void *)b);
    LoaderSlot *s = &l->slots[off / sizeof(LoaderSlot)];
    pthread_mutex_lock(&l->mu);
    if (s->state != SLOT_HELD) givt_die("loader_release: batch %lld is not held by the caller", (long long)b->seq);
    if (b != l->failed) {
        s->state = SLOT_FREE;
        pthread_cond_signal(&l->can_fill);
    }
    pthread_mutex_unlock(&l->mu);
}

void loader_close(Loader *l) {
    if (!l) return;
    if (l->thread_started) {
        pthread_mutex_lock(&l->mu);
        l->stop = 1;
        pthread_cond_broadcast(&l->can_fill);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
    }
    loader_free(l);
}
