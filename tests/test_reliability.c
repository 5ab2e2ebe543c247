// test_reliability: sizes that would overflow or cannot fit are refused naming the key, data files
// changed under a run, one trainer per out_dir, checkpoint names past 8 digits, and stopping between
// micro-batches on SIGTERM.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "data.h"
#include "fs.h"
#include "harness.h"
#include "hf.h"
#include "model.h"
#include "npy.h"
#include "safetensors.h"
#include "testutil.h"
#include "trainer.h"

extern char **environ;

static const char *k_small_ini =
    "[model]\ninput_dim = 3\nhidden_dim = 12\nintermediate_dim = 20\nnum_heads = 2\nnum_layers = 1\n"
    "block_size = 8\n"
    "[train]\nbatch_size = 2\nlr = 3e-3\nwarmup_steps = 2\nmax_steps = 40\ngrad_accum_steps = 2\n"
    "log_every = 100\nval_every = 0\nval_size = 0\nsave_every = 0\nkeep_checkpoints = 0\nseed = 3\n"
    "[data]\nkind = dummy\nseq_len = 4\ndummy_size = 64\n";

// Loads ini with out_dir and the overrides; runs it when run is set. Returns the load's or run's rc.
static int load_and_run(const char *ini, const char *out_dir, int n, const char *const *extra, int run) {
    char out[600];
    snprintf(out, sizeof out, "train.out_dir=%s", out_dir);
    char *ov[12] = {out};
    for (int i = 0; i < n && i < 11; i++) ov[1 + i] = (char *)extra[i];
    TrainConfig *c = malloc(sizeof *c);
    int rc = train_config_load_string(c, ini, "test.ini", 1 + n, ov);
    if (rc == 0 && run) rc = trainer_run(c);
    free(c);
    return rc;
}

// ---- sizes ----------------------------------------------------------------------------------
TEST(reliability_huge_sizes_are_refused_naming_the_key) {
    const struct {
        const char *override, *want;
    } cases[] = {
        {"model.num_layers=613566757", "[model] num_layers = \"613566757\": must be in [1, 4096]"},
        {"model.hidden_dim=1073741824", "[model] hidden_dim"},
        {"model.input_dim=1073741824", "[model] input_dim"},
        {"model.intermediate_dim=1073741824", "[model] intermediate_dim"},
        {"model.block_size=2147483647", "[model] block_size"},
        {"data.dummy_size=2305843009213693952", "[data] dummy_size"},
        {"train.grad_accum_steps=2147483647", "[train] grad_accum_steps = \"2147483647\": must be in [1, 65536]"},
        {"train.batch_size=2147483647", "[train] batch_size"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *ov[] = {cases[i].override};
        CHECK(load_and_run(k_small_ini, "/nonexistent", 1, ov, 0) == -1, "%s accepted", cases[i].override);
        CHECK(tu_error_has(cases[i].want, NULL), "%s: got: %s", cases[i].override, givt_last_error());
    }
    // rows of a micro-batch are an int in the ops: B * T past 2^31 is refused before any work
    const char *rows[] = {"model.block_size=1048576", "data.seq_len=1048576", "train.batch_size=4096"};
    CHECK(load_and_run(k_small_ini, "/nonexistent", 3, rows, 0) == -1);
    CHECK(tu_error_has("batch_size = 4096 x [data] seq_len = 1048576", NULL), "got: %s", givt_last_error());
}

TEST(reliability_config_json_with_huge_sizes_is_refused) {
    char d[256];
    tu_mkdtemp(d, "rel_json");
    tu_put_text(tu_path(d, "config.json"),
                "{\"input_dim\": 4, \"hidden_dim\": 8, \"intermediate_dim\": 16, \"num_heads\": 2, "
                "\"num_layers\": 613566757, \"block_size\": 8}");
    GivtConfig cfg;
    CHECK(hf_read_config(d, &cfg) == -1);
    CHECK(tu_error_has("num_layers", NULL), "got: %s", givt_last_error());
    tu_rmtree(d);
}

TEST(reliability_param_count_matches_the_table) {
    GivtConfig cfg;
    givt_config_default(&cfg);
    cfg.input_dim = 5, cfg.hidden_dim = 12, cfg.intermediate_dim = 7, cfg.num_heads = 3, cfg.num_layers = 3;
    ParamTable pt;
    param_table_build(&pt, &cfg);
    CHECK(givt_config_num_params(&cfg) == pt.params, "%zu vs %zu", givt_config_num_params(&cfg), pt.params);
    // the slots: tensors at multiples of PARAM_ALIGN (fc2 right after fc1), tiling the buffer
    size_t at = 0, bad = 0;
    for (int i = 0; i < pt.count; i++) {
        const ParamSpec *s = &pt.specs[i];
        int fc2 = i >= pt.layer0 + P_FC2 && (i - pt.layer0) % P_PER_LAYER == P_FC2 && i < pt.norm;
        bad += s->offset != at || (!fc2 && s->offset % PARAM_ALIGN) || s->slot < s->numel;
        at = s->offset + s->slot;
    }
    CHECK(bad == 0 && at == pt.total && pt.total % PARAM_ALIGN == 0, "%zu tensors misplaced; slots end at %zu of %zu",
          bad, at, pt.total);
    param_table_free(&pt);
    // at the limits the counts stay exact (no wrap): L * (4C^2 + 3FC + 2C) + 3CD + D + C
    cfg.input_dim = GIVT_MAX_INPUT_DIM, cfg.hidden_dim = GIVT_MAX_HIDDEN_DIM, cfg.num_heads = 1;
    cfg.intermediate_dim = GIVT_MAX_INTERMEDIATE_DIM, cfg.num_layers = GIVT_MAX_NUM_LAYERS;
    double C = cfg.hidden_dim, F = cfg.intermediate_dim, D = cfg.input_dim, L = cfg.num_layers;
    double want = L * (4 * C * C + 3 * F * C + 2 * C) + 3 * C * D + D + C;
    CHECK((double)givt_config_num_params(&cfg) == want);
    Backend *be = backend_open("cpu", PRECISION_NO);
    CHECK(model_acts_bytes(&cfg, be, 1 << 20, 1 << 20, 1, 0) == SIZE_MAX, "saturates instead of wrapping");
    backend_close(be);
}

// Sizes inside the limits that cannot fit are refused before any work, naming what drives them.
TEST(reliability_impossible_memory_is_refused_before_work) {
    char d[256];
    tu_mkdtemp(d, "rel_mem");
    const char *where = tu_path(d, "out");
    const struct {
        const char *ov[3];
        const char *want;
    } cases[] = {
        {{"model.hidden_dim=65536", "model.intermediate_dim=1048576", "model.num_layers=64"},
         "[model] hidden_dim = 65536, intermediate_dim = 1048576, num_layers = 64"},
        {{"data.dummy_size=1099511627776", NULL, NULL}, "[data] dummy_size = 1099511627776"},
        {{"train.batch_size=1048576", "data.dummy_size=2000000", "model.hidden_dim=1024"}, "[train] batch_size = 1048576"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = cases[i].ov[2] ? 3 : cases[i].ov[1] ? 2 : 1;
        CHECK(load_and_run(k_small_ini, where, n, cases[i].ov, 1) == -1, "case %zu ran", i);
        CHECK(tu_error_has("training needs", cases[i].want), "case %zu: got: %s", i, givt_last_error());
        CHECK(!fs_path_exists(where), "case %zu: out_dir was created: work began", i);
    }
    tu_rmtree(d);
}

// ---- data that changes under a run ----------------------------------------------------------
// n >= 4 sequences of (T, D); element 1 of sequence 3 is value_at_3.
static void write_npy(const char *path, int n, int T, int D, float value_at_3) {
    float *x = xmalloc((size_t)n * T * D * sizeof(float));
    for (int i = 0; i < n * T * D; i++) x[i] = sinf(0.37f * (float)i);
    x[3 * T * D + 1] = value_at_3;  // in sequence 3
    int64_t shape[3] = {n, T, D};
    if (npy_write_f32(path, x, 3, shape) != 0) givt_die("%s", givt_last_error());
    free(x);
}

TEST(reliability_npy_truncated_or_rewritten_while_open_is_an_error) {
    char d[256];
    tu_mkdtemp(d, "rel_npy");
    const char *p = tu_path(d, "x.npy");
    write_npy(p, 8, 4, 3, 0.5f);
    NpyFile f;
    CHECK(npy_open(&f, p) == 0, "%s", givt_last_error());
    float buf[12];
    CHECK(npy_read_f32(&f, 12, 12, buf) == 0, "%s", givt_last_error());
    CHECK(truncate(p, 200) == 0);  // shorter than the data: mmap would SIGBUS here
    CHECK(npy_read_f32(&f, 84, 12, buf) == -1);
    CHECK(tu_error_has(p, "changed while in use"), "got: %s", givt_last_error());
    npy_close(&f);

    // written in place with the same size: a new modification time is noticed
    write_npy(p, 8, 4, 3, 0.5f);
    CHECK(npy_open(&f, p) == 0, "%s", givt_last_error());
    int fd = open(p, O_WRONLY);
    float v = 7.0f;
    CHECK(fd >= 0 && pwrite(fd, &v, 4, (off_t)f.data_off) == 4);
    struct timespec later[2] = {{0, UTIME_OMIT}, {time(NULL) + 5, 0}};
    CHECK(futimens(fd, later) == 0);  // coarse file-system clocks: make the change visible for sure
    close(fd);
    CHECK(npy_read_f32(&f, 0, 12, buf) == -1);
    CHECK(tu_error_has(p, "modified while in use"), "got: %s", givt_last_error());
    npy_close(&f);

    // replaced by rename: the open file keeps reading what it opened
    write_npy(p, 8, 4, 3, 0.5f);
    CHECK(npy_open(&f, p) == 0, "%s", givt_last_error());
    write_npy(p, 8, 4, 3, 9.0f);  // npy_write renames a temporary over p
    CHECK(npy_read_f32(&f, 3 * 12, 12, buf) == 0, "%s", givt_last_error());
    CHECK(buf[1] == 0.5f, "read %g: the old file's value", buf[1]);
    npy_close(&f);
    tu_rmtree(d);
}

// A data error mid-run (here NaN; a truncated file takes the same path) stops the run with a
// checkpoint of the last good step; resumed on repaired data, the run ends bit-identical to one that
// never stopped.
TEST(reliability_data_error_checkpoints_the_last_good_step) {
    char d[256];
    tu_mkdtemp(d, "rel_dataerr");
    const char *clean = tu_path(d, "clean.npy"), *bad = tu_path(d, "bad.npy");
    write_npy(clean, 24, 4, 3, 0.5f);
    write_npy(bad, 24, 4, 3, NAN);
    char path_clean[400], path_bad[400];
    snprintf(path_clean, sizeof path_clean, "data.path=%s", clean);
    snprintf(path_bad, sizeof path_bad, "data.path=%s", bad);
    const char *straight[] = {"data.kind=npy", path_clean, "train.max_steps=12"};
    CHECK(load_and_run(k_small_ini, tu_path(d, "a"), 3, straight, 1) == 0, "%s", givt_last_error());

    const char *broken[] = {"data.kind=npy", path_bad, "train.max_steps=12"};
    CHECK(load_and_run(k_small_ini, tu_path(d, "b"), 3, broken, 1) == -1);
    const char *msg = givt_last_error(), *at = strstr(msg, "stopped after step ");
    CHECK(strstr(msg, bad) && strstr(msg, "non-finite") && at, "got: %s", msg);
    long stopped = at ? strtol(at + strlen("stopped after step "), NULL, 10) : -1;
    CHECK(stopped >= 1 && stopped < 12, "the NaN window should come mid-run (stopped after %ld)", stopped);
    char ckpt[64];
    snprintf(ckpt, sizeof ckpt, "step_%08ld", stopped);
    CHECK(strstr(msg, ckpt) != NULL, "the message names the checkpoint %s: %s", ckpt, msg);
    CHECK(fs_path_exists(tu_path(tu_path(d, "b"), ckpt)));

    write_npy(bad, 24, 4, 3, 0.5f);  // repaired (by rename)
    const char *resume[] = {"data.kind=npy", path_bad, "train.max_steps=12", "train.resume_from_ckpt=latest"};
    CHECK(load_and_run(k_small_ini, tu_path(d, "b"), 4, resume, 1) == 0, "%s", givt_last_error());
    char a_model[400], b_model[400];
    snprintf(a_model, sizeof a_model, "%s/a/step_00000012/model.safetensors", d);
    snprintf(b_model, sizeof b_model, "%s/b/step_00000012/model.safetensors", d);
    CHECK(tu_same_file(a_model, b_model), "resumed run differs from the straight one");
    snprintf(a_model, sizeof a_model, "%s/a/step_00000012/optimizer.safetensors", d);
    snprintf(b_model, sizeof b_model, "%s/b/step_00000012/optimizer.safetensors", d);
    CHECK(tu_same_file(a_model, b_model), "optimizer state differs");
    tu_rmtree(d);
}

// ---- one trainer per out_dir -------------------------------------------------------------------
TEST(reliability_out_dir_lock_refuses_a_second_trainer) {
    char d[256];
    tu_mkdtemp(d, "rel_lock");
    const char *out = tu_path(d, "run");
    CHECK(mkdir(out, 0755) == 0);
    // another trainer: the folder locked through another open file description, its PID in the file
    int fd = open(out, O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0);
    tu_put_text(tu_path(out, ".givt-train.lock"), "4242\n");
    const char *ov[] = {"train.max_steps=2"};
    CHECK(load_and_run(k_small_ini, out, 1, ov, 1) == -1);
    CHECK(tu_error_has("in use by another givt-train (PID 4242", NULL), "got: %s", givt_last_error());
    const char *resume[] = {"train.max_steps=2", "train.resume_from_ckpt=latest"};
    CHECK(load_and_run(k_small_ini, out, 2, resume, 1) == -1, "a resume is refused too");
    CHECK(tu_count_prefix(out, "step_") == 0 && tu_count_prefix(out, "metrics") == 0, "nothing was written");
    close(fd);  // released, as when the holder dies
    CHECK(load_and_run(k_small_ini, out, 1, ov, 1) == 0, "%s", givt_last_error());
    tu_rmtree(d);
}

// The lock is the folder itself: deleting .givt-train.lock under a running trainer (or the folder's
// lock file never having been there) lets no second trainer in.
TEST(reliability_deleted_lock_file_lets_no_second_trainer_in) {
    char d[256];
    tu_mkdtemp(d, "rel_lock2");
    const char *out = tu_path(d, "run");
    CHECK(mkdir(out, 0755) == 0);
    int fd = open(out, O_RDONLY | O_DIRECTORY);  // the running trainer's hold, as givt-train takes it
    CHECK(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0);
    unlink(tu_path(out, ".givt-train.lock"));
    const char *ov[] = {"train.max_steps=2"};
    CHECK(load_and_run(k_small_ini, out, 1, ov, 1) == -1, "a second trainer ran in a locked out_dir");
    CHECK(tu_error_has("in use by another givt-train", NULL), "got: %s", givt_last_error());
    CHECK(tu_count_prefix(out, "step_") == 0, "nothing was written");
    close(fd);
    tu_rmtree(d);
}

TEST(reliability_startup_keeps_temporaries_of_live_processes) {
    char d[256];
    tu_mkdtemp(d, "rel_tmp");
    const char *out = tu_path(d, "run");
    CHECK(mkdir(out, 0755) == 0);
    long live = (long)getppid(), dead = 999999999;  // the parent (make) is alive; no pid is that large
    char name[400];
    snprintf(name, sizeof name, "%s/.tmp-step_00000004-%ld", out, live);
    CHECK(mkdir(name, 0755) == 0);
    snprintf(name, sizeof name, "%s/.tmp-step_00000006-%ld", out, dead);
    CHECK(mkdir(name, 0755) == 0);
    snprintf(name, sizeof name, "%s/metrics.jsonl.tmp.%ld", out, live);
    tu_put_text(name, "x");
    snprintf(name, sizeof name, "%s/metrics.jsonl.tmp.%ld", out, dead);
    tu_put_text(name, "x");
    const char *ov[] = {"train.max_steps=2"};
    CHECK(load_and_run(k_small_ini, out, 1, ov, 1) == 0, "%s", givt_last_error());
    CHECK(tu_count_prefix(out, ".tmp-step_00000004-") == 1, "a live process's folder was removed");
    CHECK(tu_count_prefix(out, ".tmp-step_00000006-") == 0, "a dead process's folder was kept");
    snprintf(name, sizeof name, "metrics.jsonl.tmp.%ld", live);
    CHECK(tu_count_prefix(out, name) == 1);
    snprintf(name, sizeof name, "metrics.jsonl.tmp.%ld", dead);
    CHECK(tu_count_prefix(out, name) == 0);
    tu_rmtree(d);
}

// ---- checkpoint names -------------------------------------------------------------------------
TEST(reliability_checkpoints_past_step_99999999) {
    char d[256], latest[600];
    tu_mkdtemp(d, "rel_names");
    CHECK(mkdir(tu_path(d, "step_99999999"), 0755) == 0);
    CHECK(mkdir(tu_path(d, "step_100000000"), 0755) == 0);
    CHECK(mkdir(tu_path(d, "step_099999999"), 0755) == 0);  // not a name checkpoint_path writes
    CHECK(trainer_latest_checkpoint(d, latest, sizeof latest) == 0);
    CHECK(strstr(latest, "/step_100000000") != NULL, "latest = %s", latest);
    tu_rmtree(d);
}

// A run killed after its last checkpoint was renamed into place, before it removed the old ones past
// keep_checkpoints, leaves one too many; the next run (here with nothing left to do: a resumed run at
// max_steps writes no checkpoint) finishes the rotation at its start. Found by check_kill_resume.sh
// with a SIGKILL right after the last checkpoint.
TEST(reliability_a_resumed_run_finishes_the_checkpoint_rotation) {
    char d[256];
    tu_mkdtemp(d, "rel_rotate");
    const char *first[3] = {"train.max_steps=8", "train.save_every=2", "train.keep_checkpoints=0"};
    CHECK(load_and_run(k_small_ini, d, 3, first, 1) == 0, "%s", givt_last_error());
    CHECK(tu_count_prefix(d, "step_") == 4, "%d checkpoints", tu_count_prefix(d, "step_"));
    const char *again[4] = {"train.max_steps=8", "train.save_every=2", "train.keep_checkpoints=2",
                            "train.resume_from_ckpt=latest"};
    CHECK(load_and_run(k_small_ini, d, 4, again, 1) == 0, "%s", givt_last_error());
    CHECK(tu_count_prefix(d, "step_") == 2, "%d checkpoints after the resumed run", tu_count_prefix(d, "step_"));
    CHECK(fs_path_exists(tu_path(d, "step_00000008")) && fs_path_exists(tu_path(d, "step_00000006")));
    tu_rmtree(d);
}

// ---- SIGTERM between micro-batches --------------------------------------------------------------
// givt-train (the program) with a long optimizer step: SIGTERM in the middle of a step ends the run
// within a micro-batch, with a checkpoint of the last completed step, and exit code 130.
TEST(reliability_sigterm_stops_between_micro_batches) {
    char exe[600];
    int found = tu_program_path(exe, sizeof exe, "givt-train");
    CHECK(found, "%s not found: build it (make all) and run the tests from the repository root", exe);
    if (!found) return;
    char d[256];
    tu_mkdtemp(d, "rel_term");
    const char *ini = tu_path(d, "t.ini");
    tu_put_text(ini, k_small_ini);
    char out[400];
    snprintf(out, sizeof out, "train.out_dir=%s/run", d);
    char *argv[] = {exe, (char *)ini, out, "train.grad_accum_steps=65536", "train.save_every=1",
                    "train.max_steps=1000", NULL};
    // one OpenMP thread: a step's time then does not depend on what else loads the machine's cores
    pid_t pid = tu_spawn_logged(argv, tu_path(d, "log.txt"), 1, NULL);
    CHECK(pid > 0);
    char step1[400];
    snprintf(step1, sizeof step1, "%s/run/step_00000001", d);
    double t0 = util_time_now_s(), t_step1 = 0;
    while (util_time_now_s() - t0 < 120 && !fs_path_exists(step1)) usleep(2000);
    t_step1 = util_time_now_s();
    CHECK(fs_path_exists(step1), "no first checkpoint within 120 s");
    usleep(100000);  // well inside step 2, which takes as long as step 1
    CHECK(kill(pid, SIGTERM) == 0);
    double t_kill = util_time_now_s();
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    double stop_s = util_time_now_s() - t_kill, step_s = t_step1 - t0;
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 130, "status %d", status);
    printf("  SIGTERM: stopped in %.3f s; one optimizer step took about %.2f s\n", stop_s, step_s);
    CHECK(stop_s < 0.5 * step_s || stop_s < 0.25, "stopped after %.2f s, a step takes %.2f s", stop_s, step_s);
    char run_dir[400];
    snprintf(run_dir, sizeof run_dir, "%s/run", d);
    CHECK(tu_count_prefix(run_dir, "step_") >= 1);
    char *err = fs_read_text(tu_path(d, "log.txt"), NULL);
    CHECK(err && strstr(err, "interrupted at step"), "stderr: %s", err ? err : "(none)");
    free(err);
    tu_rmtree(d);
}

// Found by fuzz_npy: a shape with a zero dim and huge others holds no data, but its row size
// (shape[1] * shape[2]) overflowed; and an out-of-range read's message overflowed start + count.
TEST(reliability_npy_shapes_whose_products_overflow) {
    char d[256];
    tu_mkdtemp(d, "rel_npyshape");
    const char *p = tu_path(d, "z.npy");
    int64_t shape[3] = {0, 990460460, 99046046046};
    CHECK(npy_write(p, "<f4", 4, NULL, 3, shape) == 0, "%s", givt_last_error());
    NpyFile f;
    CHECK(npy_open(&f, p) == -1);
    CHECK(tu_error_has(p, "shape is too large"), "got: %s", givt_last_error());
    write_npy(p, 4, 4, 3, 0.5f);
    CHECK(npy_open(&f, p) == 0, "%s", givt_last_error());
    float buf[4];
    CHECK(npy_read_f32(&f, 1, INT64_MAX, buf) == -1);
    CHECK(tu_error_has("out of bounds", NULL), "got: %s", givt_last_error());
    CHECK(npy_read_rows_f32(&f, 1, INT64_MAX, buf) == -1);
    npy_close(&f);
    tu_rmtree(d);
}

// ---- the training state is an input like any other -----------------------------------------------
// optimizer.safetensors of a 4-step run with one metadata value (or a second moment) forged: the
// resume is a one-line error naming the file and the key, and the checkpoint stays as it was.
static void forge_state(const char *path, const char *key, const char *value, int negative_moment) {
    StFile f;
    CHECK(st_open(&f, path) == 0, "%s", givt_last_error());
    StWriteTensor *ts = xcalloc((size_t)f.count, sizeof *ts);
    float **data = xcalloc((size_t)f.count, sizeof *data);
    for (int i = 0; i < f.count; i++) {
        data[i] = xmalloc(f.tensors[i].numel * sizeof(float));
        CHECK(st_read_f32(&f, i, data[i]) == 0);
        if (negative_moment && strstr(f.tensors[i].name, "exp_avg_sq.")) data[i][0] = -1e-8f;
        ts[i] = (StWriteTensor){.name = f.tensors[i].name, .ndim = f.tensors[i].ndim, .data = data[i]};
        memcpy(ts[i].shape, f.tensors[i].shape, sizeof ts[i].shape);
    }
    StMeta meta[16];
    int n = 0;
    for (int i = 0; i < f.n_meta && n < 16; i++)
        if (strcmp(f.meta_keys[i], "format") != 0)
            meta[n++] = (StMeta){f.meta_keys[i], !strcmp(f.meta_keys[i], key) ? value : f.meta_values[i]};
    CHECK(st_write(path, ts, f.count, meta, n) == 0, "%s", givt_last_error());
    for (int i = 0; i < f.count; i++) free(data[i]);
    free(data);
    free(ts);
    st_close(&f);
}

TEST(reliability_forged_training_state_is_refused) {
    char d[256];
    tu_mkdtemp(d, "rel_state");
    const char *out = tu_path(d, "run");
    const char *first[] = {"train.max_steps=4", "train.save_every=4"};
    CHECK(load_and_run(k_small_ini, out, 2, first, 1) == 0, "%s", givt_last_error());
    char ckpt[400], state[500], keep[500];
    snprintf(ckpt, sizeof ckpt, "%s/step_00000004", out);
    snprintf(state, sizeof state, "%s/optimizer.safetensors", ckpt);
    snprintf(keep, sizeof keep, "%s", tu_path(d, "good.safetensors"));
    tu_copy_file(state, keep);
    const struct {
        const char *key, *value, *want;
        int negative_moment;
    } cases[] = {
        {"step", "-5", "\"step\" = \"-5\"", 0},
        {"step", "abc", "\"step\" = \"abc\"", 0},
        {"adamw_t", "9223372036854775807", "\"adamw_t\" = \"9223372036854775807\"", 0},
        {"adamw_t", "3", "\"adamw_t\" = 3", 0},  // 4 steps, none skipped: 4 updates
        {"data_epoch", "9223372036854775807", "\"data_epoch\"", 0},
        {"data_index", "99999999999999999999", "\"data_index\"", 0},
        {"world_size", "0", "\"world_size\" = \"0\"", 0},
        {"skipped_steps", "-1", "\"skipped_steps\" = \"-1\"", 0},
        {"skipped_steps", "5", "\"skipped_steps\" = \"5\"", 0},  // more than the steps
        {"step", NULL, "exp_avg_sq.", 1},
    };
    const char *resume[] = {"train.max_steps=8", "train.resume_from_ckpt=latest"};
    char forged[500];
    snprintf(forged, sizeof forged, "%s", tu_path(d, "forged.safetensors"));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tu_copy_file(keep, state);  // each case forged from the state as written
        forge_state(state, cases[i].key, cases[i].value ? cases[i].value : "4", cases[i].negative_moment);
        tu_copy_file(state, forged);
        CHECK(load_and_run(k_small_ini, out, 2, resume, 1) == -1, "case %zu (%s) resumed", i, cases[i].want);
        CHECK(tu_error_has(state, cases[i].want), "case %zu: got: %s", i, givt_last_error());
        CHECK(tu_same_file(state, forged), "case %zu: the checkpoint was replaced", i);
        CHECK(tu_count_prefix(out, "step_") == 1, "case %zu: a checkpoint was written", i);
    }
    tu_rmtree(d);
}

// Resuming from a checkpoint older than the newest: the newer ones (and their run's metrics) are set
// aside whole, never overwritten, and `latest` then finds the resumed run's own.
TEST(reliability_resume_from_an_older_checkpoint_sets_newer_aside) {
    char d[256];
    tu_mkdtemp(d, "rel_aside");
    const char *out = tu_path(d, "run");
    const char *first[] = {"train.max_steps=8", "train.save_every=2", "train.keep_checkpoints=0", "train.log_every=1"};
    CHECK(load_and_run(k_small_ini, out, 4, first, 1) == 0, "%s", givt_last_error());
    char copy[400], a[600], b[PATH_MAX + 400];
    snprintf(copy, sizeof copy, "%s", tu_path(d, "step8.safetensors"));
    snprintf(a, sizeof a, "%s/step_00000008/model.safetensors", out);
    tu_copy_file(a, copy);
    // another run from step 4, with another learning rate
    char from[500];
    snprintf(from, sizeof from, "train.resume_from_ckpt=%s/step_00000004", out);
    const char *second[] = {"train.max_steps=6", "train.save_every=2", "train.keep_checkpoints=0", from,
                            "train.lr=1e-3"};
    CHECK(load_and_run(k_small_ini, out, 5, second, 1) == 0, "%s", givt_last_error());
    CHECK(tu_count_prefix(out, "set-aside-") == 1, "the newer checkpoints were not set aside");
    DIR *dd = opendir(out);
    char aside[PATH_MAX + 300] = "";
    for (struct dirent *e; dd && (e = readdir(dd));)
        if (!strncmp(e->d_name, "set-aside-", 10)) snprintf(aside, sizeof aside, "%s/%s", out, e->d_name);
    if (dd) closedir(dd);
    CHECK(tu_count_prefix(aside, "step_") == 2, "step 6 and 8 in %s", aside);
    snprintf(b, sizeof b, "%s/step_00000008/model.safetensors", aside);
    CHECK(tu_same_file(copy, b), "the other run's step 8 changed");
    char *m = fs_read_text(tu_path(aside, "metrics.jsonl"), NULL);
    CHECK(m && strstr(m, "\"step\": 8"), "that run's metrics were kept");
    free(m);
    CHECK(tu_count_prefix(out, "step_") == 3, "steps 2, 4 and the new 6");
    char latest[600];
    CHECK(trainer_latest_checkpoint(out, latest, sizeof latest) == 0 && strstr(latest, "/step_00000006"));
    tu_rmtree(d);
}
