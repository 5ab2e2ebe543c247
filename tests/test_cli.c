// test_cli: small promises of the programs' command lines: --help exits 0 with the usage on
// stdout, an unknown option says so (and suggests the nearest one where the program knows its
// options), and util_nearest_name behind those suggestions.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "harness.h"
#include "testutil.h"
#include "util.h"

// Runs GIVT_BIN_DIR/prog with args (NULL-terminated, at most 6), stdout and stderr into one log under
// dir; returns the exit status and the log's text in *text (to be freed), or -1.
static int run_logged(const char *dir, const char *prog, const char *const *args, char **text) {
    char exe[600];
    *text = NULL;
    if (!tu_program_path(exe, sizeof exe, prog)) {
        CHECK(0, "%s not found: build it (make all)", exe);
        return -1;
    }
    char *argv[8] = {exe};
    for (int i = 0; args[i] && i < 6; i++) argv[i + 1] = (char *)args[i];
    const char *log = tu_path(dir, "log.txt");
    int err = 0;
    pid_t pid = tu_spawn_logged(argv, log, 1, &err);
    CHECK(pid > 0, "spawn %s: %s", exe, strerror(err));
    int rc = pid > 0 ? tu_wait_exit(pid, 60) : -1;
    *text = fs_read_text(log, NULL);
    return rc;
}

TEST(cli_nearest_name) {
    const char *const names[] = {"--temperature", "--num-samples", "--seed", "--out"};
    CHECK(!strcmp(util_nearest_name("--temprature", names, 4, 3), "--temperature"));
    CHECK(!strcmp(util_nearest_name("--nsamples", names, 4, 3), "--num-samples"));
    CHECK(util_nearest_name("--completely-different", names, 4, 3) == NULL);
    const char *const keys[] = {"learning_rate", "warmup_steps"};
    CHECK(util_name_distance("lr", "learning_rate") == 1, "initials count as near");
    CHECK(!strcmp(util_nearest_name("warmup", keys, 2, 3), "warmup_steps"));
}

TEST(cli_prepare_digits_help_and_unknown_option) {
    char d[256], *text = NULL;
    tu_mkdtemp(d, "cli_digits");
    const char *help[] = {"--help", NULL};
    int rc = run_logged(d, "givt-prepare-digits", help, &text);
    CHECK(rc == 0 && text && strstr(text, "usage: "), "--help: exit %d, %s", rc, text ? text : "");
    free(text);
    const char *bad[] = {"--pach", "2", NULL};
    rc = run_logged(d, "givt-prepare-digits", bad, &text);
    CHECK(rc == 2 && text && strstr(text, "--pach: unknown option"), "unknown option: exit %d, %s", rc,
          text ? text : "");
    free(text);
    tu_rmtree(d);
}

TEST(cli_sample_suggests_the_nearest_option) {
    char d[256], *text = NULL;
    tu_mkdtemp(d, "cli_sample");
    const char *typo[] = {"folder", "--temprature", "0.5", NULL};
    int rc = run_logged(d, "givt-sample", typo, &text);
    CHECK(rc != 0 && text && strstr(text, "unknown option --temprature (did you mean --temperature?)"),
          "exit %d, %s", rc, text ? text : "");
    free(text);
    const char *far[] = {"folder", "--zzzzzzzzzz", NULL};
    rc = run_logged(d, "givt-sample", far, &text);
    CHECK(rc != 0 && text && strstr(text, "unknown option --zzzzzzzzzz (see --help)"), "exit %d, %s", rc,
          text ? text : "");
    free(text);
    tu_rmtree(d);
}

// givt-train train.max_steps=1 on a config whose cosine warmup is longer: one step, a checkpoint and
// a note that the warmup was cut (the step trains at the full rate), not an error.
TEST(cli_train_max_steps_1_is_a_smoke_test) {
    char d[256], out_arg[400], *text = NULL;
    tu_mkdtemp(d, "cli_smoke");
    snprintf(out_arg, sizeof out_arg, "train.out_dir=%s/run", d);
    const char *args[] = {"configs/tiny.ini", out_arg, "train.lr_schedule=cosine", "train.warmup_steps=100",
                          "train.max_steps=1", NULL};
    int rc = run_logged(d, "givt-train", args, &text);
    char run[400];
    snprintf(run, sizeof run, "%s/run", d);
    CHECK(rc == 0 && tu_count_prefix(run, "step_00000001") == 1, "exit %d; log: %s", rc, text ? text : "");
    CHECK(text && strstr(text, "warmup_steps = 100 is not below max_steps = 1: the cosine schedule's warmup is cut "
                               "to 0 steps"),
          "log: %s", text ? text : "");
    free(text);
    tu_rmtree(d);
}

// scripts/plot_metrics.py without matplotlib: one line saying what to install, no traceback (skipped
// where python3 has matplotlib, or there is no python3).
TEST(cli_plot_metrics_without_matplotlib_says_so) {
    if (system("python3 -c 'import matplotlib' >/dev/null 2>&1") == 0) {
        t_skip("python3 has matplotlib here");
        return;
    }
    if (system("python3 -c '' >/dev/null 2>&1") != 0) {
        t_skip("no python3");
        return;
    }
    char d[256], cmd[900];
    tu_mkdtemp(d, "cli_plot");
    FILE *f = fopen(tu_path(d, "metrics.jsonl"), "w");
    CHECK(f != NULL, "cannot write metrics.jsonl");
    if (!f) return;
    fputs("{\"step\": 1, \"loss\": 0.5, \"lr\": 0.001}\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "python3 scripts/plot_metrics.py '%s' >'%s' 2>&1", d, tu_path(d, "out.txt"));
    int st = system(cmd);
    char *text = fs_read_text(tu_path(d, "out.txt"), NULL);
    CHECK(st != 0 && text && strstr(text, "plot_metrics.py needs matplotlib: apt-get install python3-matplotlib") &&
              !strstr(text, "Traceback"),
          "status %d: %s", st, text ? text : "");
    free(text);
    tu_rmtree(d);
}
