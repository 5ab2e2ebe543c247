// test_signals: the stop signals (SIGINT, SIGTERM, SIGHUP, SIGUSR1) as a user sends them to the
// programs. Each is received by a sigwait thread, never by a handler on a compute thread's stack: a
// handler that ran inside oneDNN's sgemm corrupted the heap (a 19M-parameter run stopped at a random
// moment ended in "corrupted size vs. prev_size", exit 134 and no checkpoint, in 5 of 6 tries).
//  - givt-train, its steps spent in the BLAS, stopped at random moments many times: exit 130 with a
//    checkpoint every time;
//  - givt-train stopped within its first tenth of a second: the same stop (130), not exit 143;
//  - givt-sample and givt-eval stopped in the middle: exit 130, saying what was (not) done, nothing
//    half-written.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"
#include "harness.h"
#include "npy.h"
#include "rng.h"
#include "testutil.h"
#include "util.h"

// "<GIVT_BIN_DIR>/prog" into exe; 0 when it is missing (a failed check).
static int program_path(char *exe, size_t n, const char *prog) {
    int ok = tu_program_path(exe, n, prog);
    CHECK(ok, "%s not found: build it (make all) and run the tests from the repository root", exe);
    return ok;
}

// tu_spawn_logged, a failure to start being a failed check.
static pid_t spawn_logged(char *const argv[], const char *log, int threads) {
    int err = 0;
    pid_t pid = tu_spawn_logged(argv, log, threads, &err);
    CHECK(pid > 0, "posix_spawn %s: %s", argv[0], strerror(err));
    return pid;
}

// Waits up to timeout_s for text to appear in the file at log; 1 when it did.
static int wait_for_text(const char *log, const char *text, double timeout_s) {
    for (double t0 = util_time_now_s(); util_time_now_s() - t0 < timeout_s; usleep(20000)) {
        char *s = fs_read_text(log, NULL);
        int found = s && strstr(s, text);
        free(s);
        if (found) return 1;
    }
    return 0;
}

// Has the process blocked SIGTERM yet (SigBlk of /proc/pid/status)?
static int blocks_sigterm(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    unsigned long long mask = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "SigBlk: %llx", &mask) == 1) break;
    if (f) fclose(f);
    return (mask >> (SIGTERM - 1)) & 1;
}

static const int k_stop_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1};

// The run of the report: a 19M-parameter model (hidden 512, 6 layers, T 64) on dummy data, whose
// steps are matrix products in the BLAS, one checkpoint at the stop only.
static char *const *blas_bound_args(char *exe, char *out_arg) {
    static char *argv[24];
    char *const rest[] = {"configs/tiny.ini", out_arg, "model.hidden_dim=512", "model.intermediate_dim=1024",
                          "model.num_heads=8", "model.num_layers=6", "model.block_size=64", "model.input_dim=16",
                          "data.seq_len=64", "data.dummy_size=1000", "train.batch_size=8", "train.max_steps=100000",
                          "train.log_every=1", "train.val_every=0", "train.save_every=0", "train.warmup_steps=5", NULL};
    argv[0] = exe;
    int i = 0;
    for (; rest[i]; i++) argv[i + 1] = rest[i];
    argv[i + 1] = NULL;
    return argv;
}

TEST(signals_stop_in_blas_always_checkpoints) {
    char exe[600];
    if (!program_path(exe, sizeof exe, "givt-train")) return;
    // fewer tries under the sanitizers (every step several times slower); GIVT_SIGNAL_TRIES for more
    const char *env = getenv("GIVT_SIGNAL_TRIES");
    int tries = env && atoi(env) > 0 ? atoi(env) : getenv("ASAN_OPTIONS") ? 3 : 8;
    uint64_t seed = (uint64_t)util_time_now_s() ^ (uint64_t)getpid();
    Rng rng;
    rng_seed(&rng, seed);
    printf("  %d tries, delays drawn with seed %llu\n", tries, (unsigned long long)seed);
    for (int i = 0; i < tries && !t_failed(); i++) {
        char d[256], out_arg[512], run[400];
        tu_mkdtemp(d, "sig_blas");
        snprintf(run, sizeof run, "%s/run", d);
        snprintf(out_arg, sizeof out_arg, "train.out_dir=%s", run);
        const char *log = tu_path(d, "log.txt");
        int sig = k_stop_signals[i % 4], threads = 1 + i % 2;
        pid_t pid = spawn_logged(blas_bound_args(exe, out_arg), log, threads);
        if (pid < 0) break;
        CHECK(wait_for_text(log, "step 1/", 120), "try %d: no first step within 120 s", i);
        double delay = rng_uniform(&rng);  // somewhere in the next steps (about 0.3 s each here)
        usleep((useconds_t)(delay * 1e6));
        kill(pid, sig);
        int rc = tu_wait_exit(pid, 180);
        char *text = fs_read_text(log, NULL);
        CHECK(rc == 130, "try %d (%s after %.2f s, %d threads): exit %d, want 130; log: %s", i, strsignal(sig), delay,
              threads, rc, text ? text : "(none)");
        CHECK(tu_count_prefix(run, "step_") == 1, "try %d (%s): no checkpoint", i, strsignal(sig));
        CHECK(text && strstr(text, "interrupted at step"), "try %d: no stop line", i);
        free(text);
        tu_rmtree(d);
    }
}

// A stop signal that arrives while the program starts (today: before anything could receive it).
TEST(signals_sigterm_at_start_is_the_same_stop) {
    char exe[600];
    if (!program_path(exe, sizeof exe, "givt-train")) return;
    char d[256], out_arg[400];
    tu_mkdtemp(d, "sig_start");
    snprintf(out_arg, sizeof out_arg, "train.out_dir=%s/run", d);
    const char *log = tu_path(d, "log.txt");
    char *argv[] = {exe, "configs/tiny.ini", out_arg, NULL};
    // as soon as main has blocked the signals (the first thing it does: 13 ms after the start on a
    // quiet machine, about 120 ms under the sanitizers, more on a loaded one). A signal before that
    // arrives while the dynamic loader maps the libraries and gets the default action, which nothing
    // in the program can change; so the test waits for the block (10 s at most) and prints when.
    double t0 = util_time_now_s();
    pid_t pid = spawn_logged(argv, log, 1);
    if (pid < 0) return;
    while (util_time_now_s() - t0 < 10.0 && !blocks_sigterm(pid)) usleep(500);
    double at = util_time_now_s() - t0;
    kill(pid, SIGTERM);
    int rc = tu_wait_exit(pid, 120);
    char *text = fs_read_text(log, NULL);
    printf("  SIGTERM %.1f ms after the start: exit %d\n", 1e3 * at, rc);
    CHECK(rc == 130, "exit %d, want 130; log: %s", rc, text ? text : "(none)");
    CHECK(text && strstr(text, "interrupted at step 0"), "log: %s", text ? text : "(none)");
    free(text);
    tu_rmtree(d);
}

// A model folder (a checkpoint of a 2-step run of configs/tiny.ini, 0.6M parameters) under d, for
// sample and eval.
static int tiny_checkpoint(const char *d, char *ckpt, size_t n) {
    char exe[600], out_arg[400];
    if (!program_path(exe, sizeof exe, "givt-train")) return 0;
    snprintf(out_arg, sizeof out_arg, "train.out_dir=%s/run", d);
    // big enough that evaluating the data set below takes a minute, not a second
    char *argv[] = {exe, "configs/tiny.ini", out_arg, "train.max_steps=2", "model.block_size=64", "data.seq_len=64",
                    "model.hidden_dim=128", "model.intermediate_dim=256", "model.num_heads=4", "model.num_layers=4",
                    NULL};
    pid_t pid = spawn_logged(argv, tu_path(d, "train.txt"), 1);
    int rc = pid < 0 ? -1 : tu_wait_exit(pid, 120);
    CHECK(rc == 0, "givt-train for the model: exit %d", rc);
    snprintf(ckpt, n, "%s/run/step_00000002", d);
    return rc == 0;
}

TEST(signals_stop_sample_and_eval) {
    char d[256], ckpt[400], sample[600], eval[600];
    tu_mkdtemp(d, "sig_prog");
    if (!tiny_checkpoint(d, ckpt, sizeof ckpt) || !program_path(sample, sizeof sample, "givt-sample") ||
        !program_path(eval, sizeof eval, "givt-eval")) {
        tu_rmtree(d);
        return;
    }
    // givt-sample: far more samples than it makes before the signal
    char out[400];
    snprintf(out, sizeof out, "%s", tu_path(d, "samples.npy"));
    char *sargv[] = {sample, ckpt, "--max-len", "64", "--num-samples", "200000", "--batch-size", "8", "--out", out, NULL};
    const char *slog = tu_path(d, "sample.txt");
    pid_t pid = spawn_logged(sargv, slog, 1);
    if (pid < 0) return;
    CHECK(wait_for_text(slog, "vectors/s", 120), "no progress line from givt-sample");
    kill(pid, SIGINT);
    int rc = tu_wait_exit(pid, 60);
    char *text = fs_read_text(slog, NULL);
    CHECK(rc == 130, "givt-sample: exit %d, want 130; log: %s", rc, text ? text : "");
    CHECK(text && strstr(text, "nothing written"), "givt-sample log: %s", text ? text : "");
    CHECK(!fs_path_exists(out) && tu_count_prefix(d, ".givt-tmp") <= 0 && tu_count_prefix(d, "samples.npy.") <= 0,
          "givt-sample left a file behind");
    free(text);
    // givt-eval: a data set it takes a while to go through
    int64_t shape[3] = {20000, 64, 4};
    size_t count = (size_t)shape[0] * shape[1] * shape[2];
    float *x = xmalloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    const char *data = tu_path(d, "data.npy");
    CHECK(npy_write_f32(data, x, 3, shape) == 0, "%s", givt_last_error());
    free(x);
    char *eargv[] = {eval, ckpt, (char *)data, "--batch-size", "1", NULL};
    const char *elog = tu_path(d, "eval.txt");
    pid = spawn_logged(eargv, elog, 1);
    if (pid < 0) return;
    usleep(1500000);  // the model is loaded and batches are being measured
    kill(pid, SIGTERM);
    rc = tu_wait_exit(pid, 60);
    text = fs_read_text(elog, NULL);
    CHECK(rc == 130, "givt-eval: exit %d, want 130; log: %s", rc, text ? text : "");
    CHECK(text && strstr(text, "givt-eval: stopped by") && !strstr(text, "loss = "), "givt-eval log: %s",
          text ? text : "");
    free(text);
    tu_rmtree(d);
}

// A stop while validation runs: the step's line in metrics.jsonl says the validation was cut short
// (no val_loss from part of the set), and the run stops with its checkpoint as after any stop.
TEST(signals_stop_during_validation_is_recorded) {
    char exe[600];
    if (!program_path(exe, sizeof exe, "givt-train")) return;
    char d[256], out_arg[512], run[400];
    tu_mkdtemp(d, "sig_val");
    snprintf(run, sizeof run, "%s/run", d);
    snprintf(out_arg, sizeof out_arg, "train.out_dir=%s", run);
    const char *log = tu_path(d, "log.txt");
    // steps of one batch of 1, validation over 12000 sequences (1 at a time): 2 s per step, nearly
    // all of them validating
    char *argv[] = {exe, "configs/tiny.ini", out_arg, "model.hidden_dim=64", "model.intermediate_dim=128",
                    "model.block_size=64", "data.seq_len=64", "train.batch_size=1", "train.val_every=1",
                    "train.val_size=12000", "data.dummy_size=12100", "train.log_every=1", "train.max_steps=1000",
                    "train.save_every=0", NULL};
    pid_t pid = spawn_logged(argv, log, 1);
    if (pid < 0) return;
    CHECK(wait_for_text(log, "step 1/", 120), "no first step within 120 s");
    usleep(300000);  // step 2 took milliseconds; its validation takes seconds
    kill(pid, SIGINT);
    int rc = tu_wait_exit(pid, 120);
    char *text = fs_read_text(log, NULL), *metrics = fs_read_text(tu_path(run, "metrics.jsonl"), NULL);
    CHECK(rc == 130, "exit %d; log: %s", rc, text ? text : "");
    CHECK(text && strstr(text, "validation of step 2 was cut short"), "log: %s", text ? text : "");
    CHECK(metrics && strstr(metrics, "\"step\": 2,") && strstr(metrics, "\"val_interrupted\": true"), "metrics: %s",
          metrics ? metrics : "");
    CHECK(tu_count_prefix(run, "step_00000002") == 1, "the stop's checkpoint");
    free(text);
    free(metrics);
    tu_rmtree(d);
}

// A step that takes seconds (the 19M-parameter run with 128 sequences a batch on 1 thread): the first
// Ctrl-C says at once that the run stops after this micro-batch and how to quit without a
// checkpoint, long before the stop itself; a second one says it quits, and does, with no checkpoint.
// The report: a 4-minute step, no word after the first Ctrl-C, a second one that killed the run
// silently.
static char *const *slow_step_args(char *exe, char *out_arg) {
    char *const *base = blas_bound_args(exe, out_arg);
    static char *argv[32];
    int i = 0;
    for (; base[i]; i++) argv[i] = base[i];
    // about 2 s a step here (the sanitized build is several times slower: half the batch there)
    argv[i++] = getenv("ASAN_OPTIONS") ? "train.batch_size=64" : "train.batch_size=128";
    argv[i] = NULL;
    return argv;
}

static const char k_first_notice[] = "stopping after this micro-batch (press Ctrl-C again to quit without a checkpoint)";

TEST(signals_first_stop_says_so_at_once) {
    char exe[600];
    if (!program_path(exe, sizeof exe, "givt-train")) return;
    char d[256], out_arg[512], run[400];
    tu_mkdtemp(d, "sig_notice");
    snprintf(run, sizeof run, "%s/run", d);
    snprintf(out_arg, sizeof out_arg, "train.out_dir=%s", run);
    const char *log = tu_path(d, "log.txt");
    pid_t pid = spawn_logged(slow_step_args(exe, out_arg), log, 1);
    if (pid < 0) return;
    CHECK(wait_for_text(log, "step 1/", 300), "no first step within 300 s");
    double t0 = util_time_now_s();
    kill(pid, SIGINT);
    int said = wait_for_text(log, k_first_notice, 2.0);
    double after = util_time_now_s() - t0;
    char *early = fs_read_text(log, NULL);
    CHECK(said, "no notice within 2 s of the first SIGINT; log: %s", early ? early : "");
    CHECK(early && !strstr(early, "interrupted at step"), "the run had already stopped: the step is too short");
    free(early);
    int rc = tu_wait_exit(pid, 300);
    char *text = fs_read_text(log, NULL);
    printf("  notice %.0f ms after SIGINT; the stop itself %.1f s after\n", 1e3 * after, util_time_now_s() - t0);
    CHECK(rc == 130 && tu_count_prefix(run, "step_") == 1, "exit %d, %d checkpoints; log: %s", rc,
          tu_count_prefix(run, "step_"), text ? text : "");
    CHECK(text && strstr(text, "givt-train: Interrupt: stopping after this micro-batch"), "log: %s", text ? text : "");
    free(text);
    tu_rmtree(d);
}

TEST(signals_second_stop_says_it_quits) {
    char exe[600];
    if (!program_path(exe, sizeof exe, "givt-train")) return;
    char d[256], out_arg[512], run[400];
    tu_mkdtemp(d, "sig_second");
    snprintf(run, sizeof run, "%s/run", d);
    snprintf(out_arg, sizeof out_arg, "train.out_dir=%s", run);
    const char *log = tu_path(d, "log.txt");
    pid_t pid = spawn_logged(slow_step_args(exe, out_arg), log, 1);
    if (pid < 0) return;
    CHECK(wait_for_text(log, "step 1/", 300), "no first step within 300 s");
    kill(pid, SIGINT);
    CHECK(wait_for_text(log, k_first_notice, 2.0), "no notice after the first SIGINT");
    kill(pid, SIGINT);
    int rc = tu_wait_exit(pid, 60);
    char *text = fs_read_text(log, NULL);
    CHECK(rc == 130, "exit %d (want 130: ended by SIGINT); log: %s", rc, text ? text : "");
    CHECK(text && strstr(text, "second stop signal (Interrupt): quitting at once, without a checkpoint"), "log: %s",
          text ? text : "");
    CHECK(text && !strstr(text, "interrupted at step") && tu_count_prefix(run, "step_") == 0,
          "a checkpoint was written after the second signal; log: %s", text ? text : "");
    free(text);
    tu_rmtree(d);
}
