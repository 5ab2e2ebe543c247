// test_train_logs: what a run leaves a researcher: train.log (the terminal's lines, the progress line as
// plain lines, appended on resume after a separator, the final error), the end-of-run summary,
// [train] keep_best (the best checkpoint out of the rotation, out_dir/best, known again on resume), the
// note of a resume with changed settings, and init_from taking [model] from the folder's config.json.
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"
#include "harness.h"
#include "hf.h"
#include "testutil.h"
#include "train_config.h"
#include "train_log.h"
#include "trainer.h"

// A tiny run on dummy data: validation every 2 steps, a checkpoint every 4.
static const char *k_ini =
    "[model]\ninput_dim = 3\nhidden_dim = 12\nintermediate_dim = 20\nnum_heads = 2\nnum_layers = 2\nblock_size = 8\n"
    "[train]\nbatch_size = 3\nlr = 3e-3\nwarmup_steps = 2\nlr_schedule = cosine\nmax_steps = 8\nlog_every = 1\n"
    "val_every = 2\nval_size = 4\nsave_every = 4\nkeep_checkpoints = 1\nseed = 7\n"
    "[data]\nkind = dummy\nseq_len = 6\ndummy_size = 40\n";

// trainer_run on ini (k_ini when NULL) with out_dir and up to 6 overrides.
static int run(const char *ini, const char *out_dir, int n, const char *const *extra) {
    char out[600];
    snprintf(out, sizeof out, "train.out_dir=%s", out_dir);
    char *ov[8] = {out};
    for (int i = 0; i < n && i < 6; i++) ov[1 + i] = (char *)extra[i];
    TrainConfig *c = malloc(sizeof *c);
    int rc = train_config_load_string(c, ini ? ini : k_ini, "logs.ini", 1 + (n < 6 ? n : 6), ov);
    if (rc == 0) rc = trainer_run(c);
    free(c);
    return rc;
}

static int count_of(const char *text, const char *what) {
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, what)); p += strlen(what)) n++;
    return n;
}

static char *read_log(const char *dir) { return fs_read_text(tu_path(dir, "train.log"), NULL); }

// text without the stamps that start its lines (in place); text.
static char *unstamp(char *text) {
    char *out = text;
    for (char *line = text; text && *line;) {
        size_t len = strcspn(line, "\n") + (line[strcspn(line, "\n")] == '\n');
        int st = len > 20 && line[4] == '-' && line[13] == ':' && line[19] == ' ';
        memmove(out, line + (st ? 20 : 0), len - (st ? 20 : 0));
        out += len - (st ? 20 : 0);
        line += len;
    }
    if (text) *out = '\0';
    return text;
}

// Does hit (inside text) start just after a line's "YYYY-MM-DD HH:MM:SS " stamp?
static int stamped(const char *text, const char *hit) {
    if (!hit || hit - text < 20) return 0;
    const char *s = hit - 20;
    return (s == text || s[-1] == '\n') && s[4] == '-' && s[7] == '-' && s[10] == ' ' && s[13] == ':' && s[16] == ':' &&
           s[19] == ' ';
}

// The TrainLog on a terminal: the progress line redrawn in place there and a plain stamped line in
// the file; a line said after it starts on a new line; lines said before the file opens are kept;
// a second opening appends after a separator.
TEST(train_log_progress_is_redrawn_on_a_terminal_and_a_line_in_the_file) {
    char d[256];
    tu_mkdtemp(d, "log_unit");
    char *term_text = NULL;
    size_t term_len = 0;
    TrainLog log;
    train_log_init(&log, 1);
    log.term = open_memstream(&term_text, &term_len);
    log.tty = 1;
    train_log_say(&log, "givt-train: before the file %d", 1);
    CHECK(train_log_open(&log, d) == 0, "%s", givt_last_error());
    train_log_progress(&log, "step 1/3 | loss 1", 0);
    train_log_progress(&log, "step 2/3 | loss 2", 0);
    train_log_say(&log, "\ngivt-train: a note\n");
    train_log_progress(&log, "step 3/3 | loss 3 | val 4", 1);
    train_log_file_only(&log, "givt-train: only in the file");
    FILE *term = log.term;
    train_log_close(&log);
    fclose(term);
    CHECK(term_text && !strcmp(term_text, "givt-train: before the file 1\n\r\033[Kstep 1/3 | loss 1\r\033[Kstep 2/3 | loss 2\n"
                                          "givt-train: a note\n\r\033[Kstep 3/3 | loss 3 | val 4\n"),
          "terminal: [%s]", term_text ? term_text : "");
    char *text = read_log(d);
    CHECK(text && !strchr(text, '\r') && !strchr(text, '\033'), "escapes in the file: %s", text ? text : "");
    const char *want[] = {"givt-train: before the file 1\n", "step 1/3 | loss 1\n", "step 2/3 | loss 2\n",
                          "givt-train: a note\n", "step 3/3 | loss 3 | val 4\n", "givt-train: only in the file\n"};
    const char *at = text;
    for (int i = 0; i < 6 && at; i++) {  // in order, each on a line of its own after "YYYY-MM-DD HH:MM:SS "
        const char *hit = strstr(at, want[i]);
        CHECK(stamped(text, hit), "line %d missing or not stamped: %s", i, text ? text : "");
        at = hit ? hit + strlen(want[i]) : NULL;
    }
    free(text);
    train_log_init(&log, 1);
    log.term = fopen("/dev/null", "w");
    CHECK(train_log_open(&log, d) == 0);
    train_log_say(&log, "givt-train: second run");
    term = log.term;
    train_log_close(&log);
    fclose(term);
    text = read_log(d);
    CHECK(text && count_of(text, "======== givt-train: a new run in this out_dir") == 1 &&
              strstr(text, "a new run") < strstr(text, "second run"),
          "%s", text ? text : "");
    free(text);
    free(term_text);
    tu_rmtree(d);
}

// Steps 1..8 logged one by one, validation every 2 steps, the summary; the resumed run appends after a
// separator; a failed start (another [model]) leaves its error in the file.
TEST(train_log_keeps_the_lines_of_each_run_and_the_summary) {
    char d[256];
    tu_mkdtemp(d, "log_run");
    const char *first[] = {"train.max_steps=6"};
    CHECK(run(NULL, d, 1, first) == 0, "%s", givt_last_error());
    const char *resume[] = {"train.resume_from_ckpt=latest", "train.max_steps=6"};
    CHECK(run(NULL, d, 2, resume) == 0, "%s", givt_last_error());  // nothing to do: one more summary
    const char *more[] = {"train.resume_from_ckpt=latest"};
    CHECK(run(NULL, d, 1, more) == 0, "%s", givt_last_error());
    const char *other[] = {"train.resume_from_ckpt=latest", "model.hidden_dim=16"};
    CHECK(run(NULL, d, 2, other) == -1);
    char *text = read_log(d);
    CHECK(text != NULL);
    if (!text) return;
    for (int s = 1; s <= 8; s++) {
        char want[32];
        snprintf(want, sizeof want, " step %d/%d | loss ", s, s <= 6 ? 6 : 8);
        CHECK(count_of(text, want) == 1, "%s: %d times", want, count_of(text, want));
    }
    CHECK(count_of(text, "| val ") == 4, "validation lines: %d", count_of(text, "| val "));
    CHECK(count_of(text, "======== givt-train: a new run") == 3, "separators: %d",
          count_of(text, "======== givt-train: a new run"));
    CHECK(count_of(text, "givt-train: summary: ") == 9, "summaries: %d", count_of(text, "givt-train: summary: "));
    CHECK(strstr(text, " parameters, 36 training / 4 validation sequences of T = 6"), "%s", text);
    CHECK(strstr(text, "givt-train: summary: at step 6 of max_steps 6; this run: 6 steps in "), "%s", text);
    CHECK(strstr(text, ", 108 tokens ("), "6 steps x 3 sequences x 6 vectors: %s", text);  // T counts vectors
    CHECK(strstr(text, "givt-train: summary: at step 8 of max_steps 8; this run: 2 steps in "), "%s", text);
    CHECK(strstr(text, "givt-train: step 6 already reaches max_steps = 6: nothing to do"), "%s", text);
    char final[400];
    snprintf(final, sizeof final, "givt-train: summary: final checkpoint %s/step_00000008; best checkpoint ", d);
    CHECK(strstr(text, final), "%s", text);
    CHECK(strstr(text, "givt-train: summary: best val_loss "), "%s", text);
    const char *err = strstr(text, "givt-train: resume_from_ckpt ");  // the error main prints, at the end
    CHECK(err && strstr(err, "hidden_dim = 16") && !strchr(err, '\n')[1], "the failed start's error: %s", text);
    free(text);
    tu_rmtree(d);
}

// metrics.jsonl's lowest val_loss and its step; 0 when none.
static long best_in_metrics(const char *dir, double *best) {
    char *text = fs_read_text(tu_path(dir, "metrics.jsonl"), NULL);
    long step = 0;
    *best = INFINITY;
    for (char *line = text; line && *line;) {
        char *v = strstr(line, "\"val_loss\": "), *nl = strchr(line, '\n');
        if (v && (!nl || v < nl) && strtod(v + 12, NULL) < *best) {
            *best = strtod(v + 12, NULL);
            step = strtol(line + strlen("{\"step\": "), NULL, 10);
        }
        line = nl ? nl + 1 : line + strlen(line);
    }
    free(text);
    return step;
}

// keep_best: a new best is checkpointed at once (step 2, between the checkpoints of every 4 steps), and
// the weights are those of the same run without keep_best, bit for bit. A resumed run with a learning
// rate that makes the validation loss worse knows the best from metrics.jsonl and keeps it out of the
// keep_checkpoints = 1 rotation; out_dir/best links to it; without keep_best the link goes.
TEST(trainer_keep_best_keeps_the_best_checkpoint_out_of_the_rotation) {
    char d[256], plain[256];
    tu_mkdtemp(d, "keep_best");
    tu_mkdtemp(plain, "keep_best_plain");
    const char *first[] = {"train.keep_best=true", "train.max_steps=6", "train.keep_checkpoints=0"};
    CHECK(run(NULL, d, 3, first) == 0, "%s", givt_last_error());
    CHECK(run(NULL, plain, 2, first + 1) == 0, "%s", givt_last_error());
    CHECK(fs_path_exists(tu_path(d, "step_00000002")), "the first best (step 2) was not checkpointed");
    CHECK(!fs_path_exists(tu_path(plain, "step_00000002")));
    CHECK(tu_same_file(tu_path(d, "step_00000006/model.safetensors"), tu_path(plain, "step_00000006/model.safetensors")) &&
              tu_same_file(tu_path(d, "step_00000006/optimizer.safetensors"),
                           tu_path(plain, "step_00000006/optimizer.safetensors")),
          "keep_best's extra checkpoints changed the training");
    double best_before;
    long best_step = best_in_metrics(d, &best_before);
    CHECK(best_step > 0);
    // a learning rate far too high: every later validation is worse than the best so far
    const char *worse[] = {"train.keep_best=true",       "train.max_steps=12", "train.resume_from_ckpt=latest",
                           "train.lr_schedule=constant", "train.lr=0.5",       "train.warmup_steps=0"};
    CHECK(run(NULL, d, 6, worse) == 0, "%s", givt_last_error());
    double best;
    CHECK(best_in_metrics(d, &best) == best_step && best == best_before, "the high lr did not make validation worse");
    char best_dir[32], link[64] = "";
    snprintf(best_dir, sizeof best_dir, "step_%08ld", best_step);
    CHECK(fs_path_exists(tu_path(d, best_dir)), "the best checkpoint %s was rotated out", best_dir);
    CHECK(fs_path_exists(tu_path(d, "step_00000012")));
    CHECK(tu_count_prefix(d, "step_") == 2, "%d checkpoints: want the newest and the best", tu_count_prefix(d, "step_"));
    ssize_t n = readlink(tu_path(d, "best"), link, sizeof link - 1);
    link[n > 0 ? n : 0] = '\0';
    CHECK(!strcmp(link, best_dir), "out_dir/best -> \"%s\", want %s", link, best_dir);
    char *text = read_log(d), want[400];
    snprintf(want, sizeof want, "best checkpoint %s/%s\n", d, best_dir);
    CHECK(text && count_of(text, want) == 2, "the summaries name the best: %s", text ? text : "");
    free(text);
    // without keep_best, the link goes and the rotation takes the old best like any other
    const char *off[] = {"train.max_steps=14", "train.resume_from_ckpt=latest"};
    CHECK(run(NULL, d, 2, off) == 0, "%s", givt_last_error());
    CHECK(!fs_path_exists(tu_path(d, "best")) && tu_count_prefix(d, "step_") == 1, "%d checkpoints",
          tu_count_prefix(d, "step_"));
    tu_rmtree(d);
    tu_rmtree(plain);
}

TEST(config_keep_best_needs_validation) {
    TrainConfig *c = malloc(sizeof *c);
    char *ov[] = {"train.keep_best=true", "train.val_every=0"};
    CHECK(train_config_load_string(c, k_ini, "x.ini", 2, ov) == -1);
    CHECK(tu_error_has("keep_best = true needs validation", "val_every = 0"), "%s", givt_last_error());
    free(c);
}

// One note lists each changed [train] / [data] key and what it does to the schedule and the data;
// nothing when the settings are the checkpoint's.
TEST(trainer_resume_note_lists_the_changed_keys_and_the_schedule) {
    char d[256];
    tu_mkdtemp(d, "resume_note");
    const char *first[] = {"train.max_steps=8", "train.keep_checkpoints=2"};
    CHECK(run(NULL, d, 2, first) == 0, "%s", givt_last_error());
    tu_rmtree(tu_path(d, "step_00000008"));  // resume at step 4
    const char *same[] = {"train.max_steps=8", "train.keep_checkpoints=2", "train.resume_from_ckpt=latest"};
    CHECK(run(NULL, d, 3, same) == 0, "%s", givt_last_error());
    char *text = read_log(d);
    CHECK(text && !strstr(text, "settings other than") && !strstr(text, "setting other than"), "%s", text ? text : "");
    free(text);
    tu_rmtree(tu_path(d, "step_00000008"));
    const char *changed[] = {"train.max_steps=20", "train.keep_checkpoints=2", "train.resume_from_ckpt=latest",
                             "train.seed=8", "train.tensorboard=true"};
    CHECK(run(NULL, d, 5, changed) == 0, "%s", givt_last_error());
    text = read_log(d);
    char head[400];
    snprintf(head, sizeof head, "givt-train: note: resuming with 3 settings other than %s/step_00000004/train.ini "
                                "(checkpoint -> now):\n", d);
    const char *note = text ? strstr(text, head) : NULL;
    CHECK(note, "no note: %s", text ? text : "");
    if (note) {
        const char *lines[] = {"  [train] max_steps: 8 -> 20\n", "  [train] tensorboard: false -> true\n",
                               "  [train] seed: 7 -> 8\n",
                               "  schedule: cosine, its decay reshaped to end at step 20 instead of 8; the lr of step 5 "
                               "is now ",
                               "  data: the split and the order of the windows are made again"};
        for (int i = 0; i < 5; i++) CHECK(strstr(note, lines[i]), "note lacks \"%s\": %s", lines[i], note);
        CHECK(!strstr(note, "resume_from_ckpt:"), "%s", note);
    }
    free(text);
    tu_rmtree(d);
}

// The schedule part of the note for each kind of change.
TEST(trainer_resume_note_says_what_max_steps_does_to_each_schedule) {
    char d[256];
    tu_mkdtemp(d, "resume_sched");
    const char *first[] = {"train.max_steps=4", "train.lr_schedule=inverse_sqrt"};
    CHECK(run(NULL, d, 2, first) == 0, "%s", givt_last_error());
    const char *longer[] = {"train.max_steps=6", "train.lr_schedule=inverse_sqrt", "train.resume_from_ckpt=latest"};
    CHECK(run(NULL, d, 3, longer) == 0, "%s", givt_last_error());
    const char *lr[] = {"train.max_steps=8", "train.lr_schedule=inverse_sqrt", "train.resume_from_ckpt=latest",
                        "train.lr=6e-3"};
    CHECK(run(NULL, d, 4, lr) == 0, "%s", givt_last_error());
    char *text = unstamp(read_log(d));
    CHECK(text && strstr(text, "  [train] max_steps: 4 -> 6\n  schedule: max_steps only moves the end of the run (the "
                               "inverse_sqrt schedule does not depend on it)\n"),
          "%s", text ? text : "");
    CHECK(text && strstr(text, "  [train] lr: 0.003 -> 0.006\n  [train] max_steps: 6 -> 8\n  schedule: inverse_sqrt; "
                               "the lr of step 7 is now "),
          "%s", text ? text : "");
    free(text);
    tu_rmtree(d);
}

// init_from: the [model] keys the INI leaves out come from the folder's config.json; those it sets stay
// (and are checked against the folder when the weights load).
TEST(config_init_from_takes_model_from_config_json) {
    char d[256];
    tu_mkdtemp(d, "init_cfg");
    GivtConfig g;
    tu_tiny_config(&g);
    g.num_mixtures = 3;
    ParamTable pt;
    param_table_build(&pt, &g);
    float *p = xcalloc(pt.total, sizeof(float));
    CHECK(hf_save(tu_path(d, "hf"), &g, &pt, p) == 0, "%s", givt_last_error());
    free(p);
    param_table_free(&pt);
    char ini[1200];
    snprintf(ini, sizeof ini, "[train]\ninit_from = %s\n[data]\nkind = dummy\nseq_len = 8\n", tu_path(d, "hf"));
    TrainConfig *c = malloc(sizeof *c);
    CHECK(train_config_load_string(c, ini, "x.ini", 0, NULL) == 0, "%s", givt_last_error());
    CHECK(!memcmp(&c->model, &g, sizeof g), "[model] differs from config.json");
    CHECK(c->model_keys_from_init == GIVT_CONFIG_NKEYS, "%d keys taken", c->model_keys_from_init);
    snprintf(ini, sizeof ini, "[model]\nnum_layers = 3\n[train]\ninit_from = %s\n[data]\nkind = dummy\nseq_len = 8\n",
             tu_path(d, "hf"));
    CHECK(train_config_load_string(c, ini, "x.ini", 0, NULL) == 0, "%s", givt_last_error());
    CHECK(c->model.num_layers == 3 && c->model.hidden_dim == g.hidden_dim && c->model.num_mixtures == 3);
    CHECK(c->model_keys_from_init == GIVT_CONFIG_NKEYS - 1, "%d keys taken", c->model_keys_from_init);
    // a broken config.json is an error naming init_from
    tu_put_text(tu_path(d, "hf/config.json"), "{\"hidden_dim\": \"wide\"}");
    CHECK(train_config_load_string(c, ini, "x.ini", 0, NULL) == -1);
    CHECK(tu_error_has("x.ini:4: [train] init_from = ", "config.json"), "%s", givt_last_error());
    free(c);
    tu_rmtree(d);
}

// A run started from another run's checkpoint with no [model] in its INI says on one line what it loaded.
TEST(trainer_init_from_without_model_says_what_it_loaded) {
    char d[256];
    tu_mkdtemp(d, "init_run");
    const char *first[] = {"train.max_steps=3"};
    CHECK(run(NULL, tu_path(d, "a"), 1, first) == 0, "%s", givt_last_error());
    char ini[1200];
    snprintf(ini, sizeof ini,
             "[train]\ninit_from = %s/a/step_00000003\nbatch_size = 3\nmax_steps = 2\nval_size = 4\n"
             "[data]\nkind = dummy\nseq_len = 6\ndummy_size = 40\n", d);
    CHECK(run(ini, tu_path(d, "b"), 0, NULL) == 0, "%s", givt_last_error());
    char *text = read_log(tu_path(d, "b"));
    char want[600], tail[300];
    snprintf(want, sizeof want, "givt-train: init_from = %s/a/step_00000003: loaded its weights (", d);
    snprintf(tail, sizeof tail,
             " parameters); [model] from its config.json (%d of %d keys, those the configuration leaves out): "
             "input_dim 3, hidden_dim 12, intermediate_dim 20, num_heads 2, num_layers 2, block_size 8\n",
             GIVT_CONFIG_NKEYS, GIVT_CONFIG_NKEYS);
    const char *line = text ? strstr(text, want) : NULL;
    CHECK(line && strstr(line, tail) && strstr(line, tail) < strchr(line, '\n') + 1, "%s", text ? text : "");
    free(text);
    tu_rmtree(d);
}

// givt-train as a user runs it: train.log holds, unstamped, exactly the lines the terminal showed
// (stderr not a terminal: the progress line is a line there too), the summary last.
TEST(givt_train_terminal_lines_and_train_log_are_the_same) {
    char exe[600], d[256];
    if (!tu_program_path(exe, sizeof exe, "givt-train")) {
        CHECK(0, "%s not found: build it (make all) and run the tests from the repository root", exe);
        return;
    }
    tu_mkdtemp(d, "log_prog");
    char out[400];
    snprintf(out, sizeof out, "train.out_dir=%s/run", d);
    char *argv[] = {exe, "configs/tiny.ini", out, "train.log_every=2", "train.tensorboard=true", NULL};
    const char *log = tu_path(d, "terminal.txt");
    pid_t pid = tu_spawn_logged(argv, log, 1, NULL);
    CHECK(pid > 0 && tu_wait_exit(pid, 300) == 0, "givt-train failed");
    char *term = fs_read_text(log, NULL), run_dir[300];
    snprintf(run_dir, sizeof run_dir, "%s/run", d);
    char *file = unstamp(read_log(run_dir));
    CHECK(term && file && !strcmp(term, file), "terminal:\n%s\ntrain.log:\n%s", term ? term : "", file ? file : "");
    CHECK(file && count_of(file, "step ") >= 10 && strstr(file, "givt-train: summary: final checkpoint ") &&
              !strchr(strstr(file, "givt-train: summary: final checkpoint "), '\n')[1],
          "%s", file ? file : "");
    CHECK(tu_count_prefix(run_dir, "events.out.tfevents.") == 1);
    free(term);
    free(file);
    tu_rmtree(d);
}

// train_config_changes: the [train] and [data] keys that differ, as INI text, strings quoted; a train.ini
// read back unchecked (its data path need not exist any more) compares equal to what wrote it.
TEST(config_changes_list_each_differing_key) {
    char d[256];
    tu_mkdtemp(d, "cfg_changes");
    TrainConfig *a = malloc(sizeof *a), *b = malloc(sizeof *b), *r = malloc(sizeof *r);
    CHECK(train_config_load_string(a, k_ini, "a.ini", 0, NULL) == 0, "%s", givt_last_error());
    *b = *a;
    b->train.ema = 0.67;
    snprintf(b->train.out_dir, sizeof b->train.out_dir, "runs/other");
    b->data.seq_len = 5;
    b->model.hidden_dim = 16;  // [model] is not listed: it is an error of its own
    snprintf(b->train.resume_from_ckpt, sizeof b->train.resume_from_ckpt, "latest");
    int n = -1;
    char *text = train_config_changes(a, b, "> ", &n);
    CHECK(n == 3 && text && !strcmp(text, "> [train] ema: \"\" -> \"0.67\"\n> [train] out_dir: \"runs/default\" -> "
                                          "\"runs/other\"\n> [data] seq_len: 6 -> 5\n"),
          "%d: [%s]", n, text ? text : "");
    free(text);
    CHECK(train_config_changes(a, a, "", &n) == NULL && n == 0);
    snprintf(a->data.path, sizeof a->data.path, "/nonexistent/x.npy");
    a->data.kind = DATA_KIND_NPY;
    CHECK(train_config_save(a, tu_path(d, "train.ini")) == 0);
    CHECK(train_config_read_unchecked(r, tu_path(d, "train.ini")) == 0, "%s", givt_last_error());
    text = train_config_changes(a, r, "", &n);
    CHECK(n == 0 && !text, "%s", text ? text : "");
    free(text);
    CHECK(train_config_read_unchecked(r, tu_path(d, "absent.ini")) == -1);
    free(a);
    free(b);
    free(r);
    tu_rmtree(d);
}
