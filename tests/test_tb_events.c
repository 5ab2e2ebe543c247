// test_tb_events: the TensorBoard event files ([train] tensorboard): CRC-32C against the RFC 3720
// vectors, the records byte for byte against those the PyPI tensorboard package writes, and the files
// of a training run (and of its resume) read back by that package (scripts/check_tensorboard.py), when a
// python3 with it is found.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "harness.h"
#include "tb_events.h"
#include "testutil.h"
#include "train_config.h"
#include "trainer.h"

TEST(tb_crc32c_matches_the_known_vectors) {
    uint8_t zeros[32] = {0}, ones[32], up[32], down[32];
    for (int i = 0; i < 32; i++) ones[i] = 0xff, up[i] = (uint8_t)i, down[i] = (uint8_t)(31 - i);
    CHECK(tb_crc32c("123456789", 9) == 0xe3069283u, "%#x", tb_crc32c("123456789", 9));
    CHECK(tb_crc32c(zeros, 32) == 0x8a9136aau);  // RFC 3720, B.4
    CHECK(tb_crc32c(ones, 32) == 0x62a8ab43u);
    CHECK(tb_crc32c(up, 32) == 0x46dd794eu);
    CHECK(tb_crc32c(down, 32) == 0x113fdb5cu);
    CHECK(tb_crc32c("", 0) == 0);
    // the masked form, as tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c gives it
    CHECK(tb_masked_crc32c("123456789", 9) == 0xc78ab0e5u, "%#x", tb_masked_crc32c("123456789", 9));
}

// Hex text to bytes; the count.
static size_t unhex(const char *hex, uint8_t *out) {
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

// One record of an event framed to memory, compared with the bytes expected (hex).
static void check_record(const uint8_t *ev, size_t n, const char *want_hex, const char *what) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f && tb_write_record(f, ev, n) == 0);
    if (f) fclose(f);
    uint8_t want[512];
    size_t wn = unhex(want_hex, want);
    CHECK(len == wn && buf && !memcmp(buf, want, wn), "%s: the record differs from tensorboard's (%zu vs %zu bytes)",
          what, len, wn);
    free(buf);
}

// The expected bytes come from the tensorboard package (2.21): event_pb2.Event(...).SerializeToString()
// framed by tensorboard.summary.writer.record_writer.RecordWriter.
TEST(tb_records_match_the_tensorboard_writer_byte_for_byte) {
    uint8_t ev[512];
    size_t n = tb_encode_version_event(ev, sizeof ev, 1.5);  // Event(wall_time=1.5, file_version="brain.Event:2")
    check_record(ev, n, "1800000000000000a37f4b2209000000000000f83f1a0d627261696e2e4576656e743a322a28646c", "version");
    // Event(wall_time=1700000000.25, step=12, summary=Summary(value=[(tag "loss", 1.25), (tag "lr", 0.001)]))
    const char *tags[] = {"loss", "lr"};
    const float values[] = {1.25f, 0.001f};
    n = tb_encode_scalars_event(ev, sizeof ev, 1700000000.25, 12, 2, tags, values);
    uint8_t want[256];
    size_t wn = unhex("0900001040fc54d941100c2a180a0b0a046c6f7373150000a03f0a090a026c72156f12833a", want);
    CHECK(n == wn && !memcmp(ev, want, wn), "the serialized Event differs from tensorboard's");
    check_record(ev, n,
                 "2500000000000000eabc36f30900001040fc54d941100c2a180a0b0a046c6f7373150000a03f0a090a026c72156f12833aa041d5"
                 "7f",
                 "scalars");
    CHECK(tb_encode_scalars_event(ev, 16, 1.0, 1, 2, tags, values) == 0, "a buffer too small must give 0");
    // Event(wall_time=2.0, step=5, session_log=SessionLog(status=START))
    n = tb_encode_start_event(ev, sizeof ev, 2.0, 5);
    check_record(ev, n, "0f000000000000006d532b0909000000000000004010053a0208019451ed38", "session start");
}

// A python3 that imports tensorboard into py (an argv prefix: "/usr/bin/env python3" or a path): the
// one GIVT_TB_PYTHON names, else python3 on PATH, else the venv the README suggests.
static int find_tensorboard_python(char *py, size_t n) {
    const char *env = getenv("GIVT_TB_PYTHON");
    const char *cands[] = {env && *env ? env : NULL, "python3", "/tmp/tbvenv/bin/python"};
    char d[256];
    tu_mkdtemp(d, "tb_py");
    int found = 0;
    for (int i = 0; i < 3 && !found; i++) {
        if (!cands[i]) continue;
        char *argv[] = {"/usr/bin/env", (char *)cands[i], "-c", "import tensorboard", NULL};
        pid_t pid = tu_spawn_logged(argv, tu_path(d, "log"), 1, NULL);
        if (pid > 0 && tu_wait_exit(pid, 120) == 0) {
            snprintf(py, n, "%s", cands[i]);
            found = 1;
        }
    }
    tu_rmtree(d);
    return found;
}

static int train(const char *out_dir, const char *extra) {
    const char *ini =
        "[model]\ninput_dim = 3\nhidden_dim = 12\nintermediate_dim = 20\nnum_heads = 2\nnum_layers = 2\nblock_size = 8\n"
        "[train]\nbatch_size = 3\nlr = 3e-3\nwarmup_steps = 2\nmax_steps = 12\nlog_every = 2\nval_every = 3\n"
        "val_size = 4\nsave_every = 4\nseed = 7\ntensorboard = true\npeak_tflops = 0.001\n"
        "[data]\nkind = dummy\nseq_len = 6\ndummy_size = 40\n";
    char out[600], more[200];
    snprintf(out, sizeof out, "train.out_dir=%s", out_dir);
    snprintf(more, sizeof more, "%s", extra);
    char *ov[3] = {out, more, NULL};
    TrainConfig *c = malloc(sizeof *c);
    int rc = train_config_load_string(c, ini, "tb.ini", extra[0] ? 2 : 1, ov);
    if (rc == 0) rc = trainer_run(c);
    free(c);
    return rc;
}

// A run stopped at step 7 (after its checkpoint of step 4: the steps past it are logged twice, as after
// a kill) and resumed: two event files whose scalars, once TensorBoard has replaced the steps the
// resumed run logged again, equal metrics.jsonl's.
TEST(tb_events_of_a_run_and_its_resume_read_back_by_tensorboard) {
    char py[600], d[256];
    if (!find_tensorboard_python(py, sizeof py)) {
        t_skip("no python3 with the tensorboard package (python3 -m venv /tmp/tbvenv && /tmp/tbvenv/bin/pip install "
               "tensorboard, or set GIVT_TB_PYTHON)");
        return;
    }
    CHECK(fs_path_exists("scripts/check_tensorboard.py"), "run the tests from the repository root");
    tu_mkdtemp(d, "tb_run");
    char run[300];
    snprintf(run, sizeof run, "%s/run", d);
    CHECK(train(run, "train.max_steps=7") == 0, "%s", givt_last_error());
    // as if killed after step 7: the newest checkpoint is step 4's (step 7's removed)
    tu_rmtree(tu_path(run, "step_00000007"));
    CHECK(train(run, "train.resume_from_ckpt=latest") == 0, "%s", givt_last_error());
    char *argv[] = {"/usr/bin/env", py, "scripts/check_tensorboard.py", run, "--runs", "2", NULL};
    const char *log = tu_path(d, "check.txt");
    pid_t pid = tu_spawn_logged(argv, log, 1, NULL);
    int rc = pid > 0 ? tu_wait_exit(pid, 300) : -1;
    char *text = fs_read_text(log, NULL);
    CHECK(rc == 0, "scripts/check_tensorboard.py exited %d:\n%s", rc, text ? text : "");
    if (text && rc == 0) printf("  %s", strstr(text, "scalars") ? strstr(text, "ok: ") : text);
    free(text);
    tu_rmtree(d);
}
