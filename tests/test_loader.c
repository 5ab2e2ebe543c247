// test_loader: the prefetching batch loader: the same batches as data_next_batch_labels (dummy and
// npy data, with and without labels, any rank), resuming at a position, a data error ending the
// stream, closing while the thread waits or reads, the caller's allocator.
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data.h"
#include "harness.h"
#include "loader.h"
#include "npy.h"
#include "testutil.h"
#include "util.h"

static char g_dir[256];

static const char *tpath(const char *name) { return tu_path(g_dir, name); }

// (N=7, T=7, D=3) float32, every value distinct, and labels (7) in [0, 5): with seq_len 3 that is 2
// windows per sequence, 14 windows. nan_at >= 0 plants a NaN at that flat index.
static void write_seqs(const char *path, const char *labels_path, int64_t nan_at) {
    int64_t s[3] = {7, 7, 3}, n = 7 * 7 * 3;
    float x[7 * 7 * 3];
    for (int64_t i = 0; i < n; i++) x[i] = (float)i * 0.25f - 7.0f;
    if (nan_at >= 0) x[nan_at] = NAN;
    CHECK(npy_write_f32(path, x, 3, s) == 0, "%s", givt_last_error());
    if (labels_path) {
        int32_t lab[7] = {3, 0, 4, 1, 1, 2, 0};
        int64_t n7 = 7;
        CHECK(npy_write(labels_path, "<i4", 4, lab, 1, &n7) == 0, "%s", givt_last_error());
    }
}

enum { CASE_DUMMY, CASE_NPY, CASE_NPY_LABELS };

static DataConfig case_cfg(int which, int rank, int world_size) {
    DataConfig c;
    data_config_default(&c);
    c.seed = 9;
    c.val_size = 2;
    c.rank = rank;
    c.world_size = world_size;
    if (which == CASE_DUMMY) {
        c.seq_len = 5;
        c.input_dim = 3;
        c.dummy_count = 13;
    } else {
        c.kind = DATA_NPY;
        c.path = tpath("s.npy");
        c.seq_len = 3;
        c.input_dim = 3;
        if (which == CASE_NPY_LABELS) {
            c.labels_path = tpath("l.npy");
            c.num_classes = 5;
        }
    }
    return c;
}

static int same_pos(DataPos a, DataPos b) { return a.epoch == b.epoch && a.index == b.index; }

// Compares nb batches of loader l with direct reads of ds (at the same position), holding up to two
// batches at once and releasing them in either order. Returns the number that matched.
static int compare_stream(Loader *l, Dataset *ds, int B, int nb, int tag) {
    size_t n = (size_t)B * (size_t)data_seq_len(ds) * (size_t)ds->cfg.input_dim;
    float *want = xmalloc(n * sizeof *want);
    int32_t want_lab[64];
    LoaderBatch *held = NULL;
    int ok = 0;
    for (int k = 0; k < nb; k++) {
        DataPos before = data_get_pos(ds);
        CHECK(data_next_batch_labels(ds, B, want, ds->labels ? want_lab : NULL) == 0, "%s", givt_last_error());
        LoaderBatch *b = loader_next(l);
        int good = b->rc == 0 && b->msg == NULL && b->seq == k && memcmp(b->x, want, n * sizeof *want) == 0 &&
                   same_pos(b->before, before) && same_pos(b->after, data_get_pos(ds));
        if (ds->labels) good &= b->labels && memcmp(b->labels, want_lab, (size_t)B * sizeof *want_lab) == 0;
        else good &= b->labels == NULL;
        CHECK(good, "case %d: batch %d differs from data_next_batch_labels", tag, k);
        ok += good;
        // hold two at once: every third batch releases the newer first
        if (held) {
            if (k % 3 == 0) {
                loader_release(l, b);
                loader_release(l, held);
            } else {
                loader_release(l, held);
                loader_release(l, b);
            }
            held = NULL;
        } else if (k % 2 == 0) {
            held = b;
        } else {
            loader_release(l, b);
        }
    }
    if (held) loader_release(l, held);
    free(want);
    return ok;
}

TEST(loader_matches_direct_batches) {
    tu_mkdtemp(g_dir, "loader");
    write_seqs(tpath("s.npy"), tpath("l.npy"), -1);
    // 12 (npy) or 11 (dummy) training windows; B 4 (x world) straddles epochs; 15 batches: 5+ epochs
    const int ranks[][2] = {{0, 1}, {1, 3}, {2, 3}};
    int tag = 0;
    for (int which = CASE_DUMMY; which <= CASE_NPY_LABELS; which++)
        for (int r = 0; r < 3; r++)
            for (int depth = 2; depth <= 4; depth += 2, tag++) {
                DataConfig c = case_cfg(which, ranks[r][0], ranks[r][1]);
                int B = ranks[r][1] == 1 ? 4 : 3;
                Dataset ds;
                Loader *l;
                CHECK(data_open(&ds, &c) == 0, "%s", givt_last_error());
                CHECK(loader_open(&l, &c, data_get_pos(&ds), B, depth, NULL) == 0, "%s", givt_last_error());
                if (t_failed()) return;
                CHECK(compare_stream(l, &ds, B, 15, tag) == 15);
                CHECK(data_get_pos(&ds).epoch >= 4, "the test covers several epochs");
                loader_close(l);
                data_close(&ds);
            }
    tu_rmtree(g_dir);
}

TEST(loader_resumes_at_a_position) {
    tu_mkdtemp(g_dir, "loader");
    write_seqs(tpath("s.npy"), tpath("l.npy"), -1);
    for (int which = CASE_DUMMY; which <= CASE_NPY_LABELS; which++) {
        DataConfig c = case_cfg(which, 1, 2);
        // a loader from 0, 7 batches skipped: its `after` is where a checkpoint would resume
        Loader *l0, *l1;
        CHECK(loader_open(&l0, &c, (DataPos){0, 0}, 2, 3, NULL) == 0, "%s", givt_last_error());
        DataPos p = {0, 0};
        for (int k = 0; k < 7; k++) {
            LoaderBatch *b = loader_next(l0);
            CHECK(b->rc == 0 && same_pos(b->before, p), "batch %d", k);
            p = b->after;
            loader_release(l0, b);
        }
        CHECK(p.epoch == 2, "7 batches of 2 x 2 over %s training windows: epoch 2, got %lld", which ? "12" : "11",
              (long long)p.epoch);
        // a loader opened at p gives the same batches as the first one from there
        CHECK(loader_open(&l1, &c, p, 2, 2, NULL) == 0, "%s", givt_last_error());
        Dataset ds;
        CHECK(data_open(&ds, &c) == 0 && data_set_pos(&ds, p) == 0);
        size_t n = (size_t)2 * data_seq_len(&ds) * 3;
        for (int k = 0; k < 9; k++) {
            LoaderBatch *a = loader_next(l0), *b = loader_next(l1);
            CHECK(a->rc == 0 && b->rc == 0 && same_pos(a->before, b->before) && same_pos(a->after, b->after));
            CHECK(b->seq == k && a->seq == k + 7);
            CHECK(memcmp(a->x, b->x, n * sizeof(float)) == 0, "case %d batch %d after resuming", which, k);
            if (which == CASE_NPY_LABELS) CHECK(memcmp(a->labels, b->labels, 2 * sizeof(int32_t)) == 0);
            loader_release(l0, a);
            loader_release(l1, b);
        }
        loader_close(l0);
        loader_close(l1);
        // and at any valid position, as data_set_pos on a fresh Dataset
        p = (DataPos){3, 5};
        CHECK(loader_open(&l1, &c, p, 2, 2, NULL) == 0 && data_set_pos(&ds, p) == 0);
        CHECK(compare_stream(l1, &ds, 2, 6, 100 + which) == 6);
        loader_close(l1);
        data_close(&ds);
    }
    tu_rmtree(g_dir);
}

TEST(loader_data_error_ends_the_stream) {
    tu_mkdtemp(g_dir, "loader");
    write_seqs(tpath("s.npy"), NULL, (4 * 7 + 4) * 3 + 2);  // sequence 4, t 4 (its window 1), d 2
    DataConfig c = case_cfg(CASE_NPY, 0, 1);
    Dataset ds;
    CHECK(data_open(&ds, &c) == 0, "%s", givt_last_error());
    float buf[3 * 3 * 3];
    int fail_at = -1;
    DataPos fail_pos = {0, 0};
    for (int k = 0; k < 20 && fail_at < 0; k++) {
        fail_pos = data_get_pos(&ds);
        if (data_next_batch(&ds, 3, buf) != 0) fail_at = k;
    }
    CHECK(fail_at > 0, "the NaN window comes up within 20 batches, not first (got %d)", fail_at);
    data_close(&ds);
    if (t_failed()) return;
    for (int depth = 2; depth <= 5; depth += 3) {
        Loader *l;
        CHECK(loader_open(&l, &c, (DataPos){0, 0}, 3, depth, NULL) == 0, "%s", givt_last_error());
        for (int k = 0; k < fail_at; k++) {
            LoaderBatch *b = loader_next(l);
            CHECK(b->rc == 0 && b->seq == k);
            loader_release(l, b);
        }
        usleep(20000);  // let the thread run ahead if it would
        givt_fail("stale");
        LoaderBatch *f = loader_next(l);
        CHECK(f->rc == -1 && f->seq == fail_at && f->msg);
        CHECK(f->msg && strstr(f->msg, tpath("s.npy")) && strstr(f->msg, "(nan) at index [4, 4, 2]"), "%s",
              f->msg ? f->msg : "(null)");
        CHECK(tu_error_has("(nan) at index [4, 4, 2]", NULL), "loader_next sets the error: %s", givt_last_error());
        CHECK(same_pos(f->before, fail_pos) && same_pos(f->after, fail_pos), "a failed batch does not advance");
        // released or not, every later call gives the same failed batch: nothing was read after it
        loader_release(l, f);
        for (int k = 0; k < 3; k++) {
            givt_fail("stale");
            LoaderBatch *g = loader_next(l);
            CHECK(g == f && g->rc == -1 && g->seq == fail_at && tu_error_has("(nan) at index [4, 4, 2]", NULL));
        }
        loader_close(l);
    }
    tu_rmtree(g_dir);
}

TEST(loader_close_while_waiting_or_reading) {
    DataConfig c = case_cfg(CASE_DUMMY, 0, 1);
    c.seq_len = 64;
    c.input_dim = 16;
    c.dummy_count = 500;
    Loader *l;
    // at once: the thread is reading its first batch, or has not started
    CHECK(loader_open(&l, &c, (DataPos){0, 0}, 32, 2, NULL) == 0, "%s", givt_last_error());
    loader_close(l);
    // the ring full (the thread waits for a free buffer), one batch held by the caller
    CHECK(loader_open(&l, &c, (DataPos){0, 0}, 32, 3, NULL) == 0, "%s", givt_last_error());
    LoaderBatch *b = loader_next(l);
    CHECK(b->rc == 0);
    usleep(30000);
    loader_close(l);
    // in the middle of a stream, all buffers held
    CHECK(loader_open(&l, &c, (DataPos){1, 7}, 16, 2, NULL) == 0, "%s", givt_last_error());
    for (int k = 0; k < 5; k++) loader_release(l, loader_next(l));
    LoaderBatch *a = loader_next(l);
    b = loader_next(l);
    CHECK(a->seq == 5 && b->seq == 6);
    loader_close(l);
    loader_close(NULL);
}

TEST(loader_open_rejects_bad_arguments) {
    DataConfig c = case_cfg(CASE_DUMMY, 0, 1);
    Loader *l = (Loader *)&c;
    CHECK(loader_open(&l, &c, (DataPos){0, 0}, 0, 2, NULL) == -1 && l == NULL && tu_error_has("batch size 0", NULL));
    CHECK(loader_open(&l, &c, (DataPos){0, 0}, 2, 1, NULL) == -1 && tu_error_has("depth 1", NULL));
    CHECK(loader_open(&l, &c, (DataPos){0, 11}, 2, 2, NULL) == -1 && l == NULL &&
              tu_error_has("data position (epoch 0, index 11) out of range", NULL),
          "%s", givt_last_error());
    c.kind = DATA_NPY;
    c.path = "/nonexistent/givt-loader.npy";
    CHECK(loader_open(&l, &c, (DataPos){0, 0}, 2, 2, NULL) == -1 && l == NULL &&
              tu_error_has("/nonexistent/givt-loader.npy", NULL),
          "%s", givt_last_error());
}

// An allocator that counts, and refuses after `limit` allocations.
typedef struct {
    int allocs, frees, limit;
} CountAlloc;

static void *count_alloc(void *user, size_t bytes) {
    CountAlloc *a = user;
    if (a->allocs == a->limit) return NULL;
    a->allocs++;
    return malloc(bytes);
}

static void count_free(void *user, void *p) {
    CountAlloc *a = user;
    a->frees++;
    free(p);
}

TEST(loader_uses_the_callers_allocator) {
    tu_mkdtemp(g_dir, "loader");
    write_seqs(tpath("s.npy"), tpath("l.npy"), -1);
    DataConfig c = case_cfg(CASE_NPY_LABELS, 0, 1);
    CountAlloc ca = {0, 0, -1};
    LoaderAlloc a = {count_alloc, count_free, &ca};
    Loader *l;
    CHECK(loader_open(&l, &c, (DataPos){0, 0}, 4, 3, &a) == 0, "%s", givt_last_error());
    CHECK(ca.allocs == 6, "x and labels of 3 buffers: %d", ca.allocs);
    LoaderBatch *b = loader_next(l);
    CHECK(b->rc == 0 && b->labels);
    loader_close(l);
    CHECK(ca.frees == 6);
    // a refused allocation fails the open, and what was allocated is freed
    ca = (CountAlloc){0, 0, 3};
    CHECK(loader_open(&l, &c, (DataPos){0, 0}, 4, 3, &a) == -1 && l == NULL && tu_error_has("cannot allocate", NULL),
          "%s", givt_last_error());
    CHECK(ca.allocs == 3 && ca.frees == 3);
    a.free = NULL;
    CHECK(loader_open(&l, &c, (DataPos){0, 0}, 4, 3, &a) == -1 && l == NULL);
    tu_rmtree(g_dir);
}
