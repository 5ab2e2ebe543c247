// fuzz_labels: the data loader's class labels (data_open with labels_path: npy_read_labels, then the
// count and range checks of load_labels) over fixed data written once per process: two files,
// (4, 4, 2) and (2, 8, 2) float32, seq_len 4, so 6 sequences and 8 windows (one per sequence of the
// first file, two per sequence of the second), num_classes 5, 2 windows held out for validation.
//
// Input: the labels .npy file (int32 or int64, shape (6,) to be accepted).
// Properties checked beyond "no crash, no sanitizer report, no exit":
//   - on success every window's label (data_window_label) is in [0, num_classes) and is the label of
//     its sequence (window w of the second file: sequence 4 + w / 2); the training batch and the
//     validation batch carry the same labels as their windows;
//   - on failure, the message (givt_last_error) is one line; data_close always.
#include "fuzz_util.h"

#include "data.h"
#include "npy.h"
#include "util.h"

#define SEQ_LEN 4
#define DIM 2
#define NUM_CLASSES 5
#define NUM_SEQS 6
#define NUM_WINDOWS 8
#define VAL_SIZE 2

static char g_paths[2200];

// The two data files, written on first use.
static const char *data_paths(void) {
    if (!g_paths[0]) {
        const int64_t s0[3] = {4, 4, DIM}, s1[3] = {2, 8, DIM};
        float x[32];
        for (int i = 0; i < 32; i++) x[i] = (float)i * 0.25f - 4.0f;
        const char *p0 = fuzz_path("data0.npy"), *p1 = fuzz_path("data1.npy");
        FUZZ_CHECK(npy_write_f32(p0, x, 3, s0) == 0, "npy_write_f32: %s", givt_last_error());
        FUZZ_CHECK(npy_write_f32(p1, x, 3, s1) == 0, "npy_write_f32: %s", givt_last_error());
        snprintf(g_paths, sizeof g_paths, "%s, %s", p0, p1);
    }
    return g_paths;
}

// The sequence (index into the labels) of window id.
static int seq_of_window(int64_t id) { return id < 4 ? (int)id : 4 + (int)(id - 4) / 2; }

static void check_dataset(Dataset *ds) {
    FUZZ_CHECK(data_num_windows(ds) == NUM_WINDOWS, "%lld windows", (long long)data_num_windows(ds));
    FUZZ_CHECK(ds->labels != NULL, "opened with labels_path, but no labels");
    int32_t label[NUM_WINDOWS];
    for (int64_t id = 0; id < NUM_WINDOWS; id++) {
        label[id] = data_window_label(ds, id);
        FUZZ_CHECK(label[id] >= 0 && label[id] < NUM_CLASSES, "window %lld: label %d", (long long)id, label[id]);
        FUZZ_CHECK(label[id] == ds->labels[seq_of_window(id)], "window %lld: label %d, its sequence %d has %d",
                   (long long)id, label[id], seq_of_window(id), ds->labels[seq_of_window(id)]);
    }
    float buf[NUM_WINDOWS * SEQ_LEN * DIM];
    int32_t got[NUM_WINDOWS];
    int B = NUM_WINDOWS - VAL_SIZE;  // one epoch of training windows in one batch
    FUZZ_CHECK(data_next_batch_labels(ds, B, buf, got) == 0, "data_next_batch_labels: %s", givt_last_error());
    int64_t seen = 0;  // each training window once: their labels are the training ids' labels
    for (int b = 0; b < B; b++) {
        FUZZ_CHECK(got[b] >= 0 && got[b] < NUM_CLASSES, "batch slot %d: label %d", b, got[b]);
        int found = 0;
        for (int64_t i = 0; i < ds->num_train && !found; i++)
            if (!(seen >> i & 1) && label[ds->train_ids[i]] == got[b]) {
                seen |= (int64_t)1 << i;
                found = 1;
            }
        FUZZ_CHECK(found, "batch slot %d: label %d is no training window's", b, got[b]);
    }
    int n = data_val_batch_labels(ds, 0, VAL_SIZE, buf, got);
    FUZZ_CHECK(n == VAL_SIZE, "data_val_batch_labels gave %d: %s", n, givt_last_error());
    for (int i = 0; i < VAL_SIZE; i++)
        FUZZ_CHECK(got[i] == label[ds->val_ids[i]], "validation slot %d: label %d, window %lld has %d", i, got[i],
                   (long long)ds->val_ids[i], label[ds->val_ids[i]]);
    char desc[512];
    data_describe(ds, desc, sizeof desc);
    (void)data_fingerprint(ds);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    DataConfig cfg;
    data_config_default(&cfg);
    cfg.kind = DATA_NPY;
    cfg.path = data_paths();
    cfg.seq_len = SEQ_LEN;
    cfg.input_dim = DIM;
    cfg.val_size = VAL_SIZE;
    cfg.num_classes = NUM_CLASSES;
    const char *labels = fuzz_path("labels.npy");
    fuzz_write_file(labels, data, size);
    cfg.labels_path = labels;
    Dataset ds;
    if (data_open(&ds, &cfg) == 0) {
        check_dataset(&ds);
    } else {
        const char *msg = givt_last_error();
        FUZZ_CHECK(strchr(msg, '\n') == NULL, "the message is not one line: \"%s\"", msg);
    }
    data_close(&ds);
    return 0;
}
