// metrics: what the trainer reports: metrics.jsonl and its TensorBoard events, the progress line, the start-up
// line and the end-of-run summary (see trainer_internal.h).
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "trainer_internal.h"

// A kept line's val_loss (if it has one, not null) into the run's validation record.
static void note_val_loss(Trainer *tr, const char *line, long step) {
    const char *v = strstr(line, "\"val_loss\": ");
    if (!v) return;
    char *end;
    double x = strtod(v + strlen("\"val_loss\": "), &end);
    if (end == v + strlen("\"val_loss\": ") || !isfinite(x)) return;
    tr->last_val = x;
    tr->last_val_step = step;
    if (isnan(tr->best_val) || x < tr->best_val) {
        tr->best_val = x;
        tr->best_step = step;
    }
}

// Keeps the lines of metrics.jsonl whose "step" is <= tr->step (a resumed run rewrites what followed),
// noting their validation losses.
static int metrics_truncate(Trainer *tr, const char *path) {
    if (!fs_path_exists(path)) return 0;
    char *text = fs_read_text(path, NULL);
    if (!text) return -1;
    AtomicFile af;
    if (fs_atomic_open(&af, path) != 0) {
        free(text);
        return -1;
    }
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        const char *s = strstr(line, "\"step\":");
        size_t len = strlen(line);
        long step = s ? strtol(s + 7, NULL, 10) : 0;
        if (!s || len == 0 || line[len - 1] != '}' || step > tr->step) continue;  // cut or later
        note_val_loss(tr, line, step);
        fs_atomic_write(&af, line, strlen(line));
        fs_atomic_write(&af, "\n", 1);
    }
    free(text);
    return fs_atomic_commit(&af);
}

int metrics_open(Trainer *tr) {
    tr->best_val = tr->last_val = NAN;
    tr->best_step = tr->last_val_step = 0;
    char *p = fs_path_join(tr->cfg.train.out_dir, "metrics.jsonl");
    int rc = metrics_truncate(tr, p);
    if (rc == 0) {
        tr->metrics = fopen(p, "a");
        if (!tr->metrics) rc = givt_fail("%s: cannot open for appending: %s", p, strerror(errno));
    }
    free(p);
    if (rc == 0 && tr->cfg.train.tensorboard) rc = tb_open(&tr->tb, tr->cfg.train.out_dir, tr->step + 1);
    return rc;
}

// x with 9 significant digits, or null when it is not finite (JSON has no NaN or Inf); buf[32].
static const char *json_number(char *buf, double x) {
    if (isfinite(x)) snprintf(buf, 32, "%.9g", x);
    else snprintf(buf, 32, "null");
    return buf;
}

// The scalars of a log as one TensorBoard event (the names of metrics.jsonl); a failed write is said
// once and ends the event file, not the run.
static void metrics_tensorboard(Trainer *tr, const double *values) {
    static const char *const tags[] = {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss"};
    if (!tr->tb.f || tb_write_scalars(&tr->tb, tr->step, 6, tags, values) == 0) return;
    train_log_say(&tr->log, "givt-train: warning: %s; no more TensorBoard events this run", givt_last_error());
    tb_close(&tr->tb);
}

void metrics_write(Trainer *tr, double loss, double lr, double gnorm, double tok_s, double mfu,
                   double val_loss, int val_interrupted) {
    FILE *f = tr->metrics;
    char l[32], g[32], v[32], u[32];
    fprintf(f, "{\"step\": %ld, \"loss\": %s, \"lr\": %.9g, \"grad_norm\": %s, \"tokens_per_s\": %.1f", tr->step,
            json_number(l, loss), lr, json_number(g, gnorm), tok_s);
    if (!isnan(mfu)) fprintf(f, ", \"mfu\": %s", json_number(u, mfu));
    if (!isnan(val_loss)) fprintf(f, ", \"val_loss\": %s", json_number(v, val_loss));
    if (val_interrupted) fprintf(f, ", \"val_interrupted\": true");
    fprintf(f, "}\n");
    fflush(f);
    metrics_tensorboard(tr, (const double[]){loss, lr, gnorm, tok_s, mfu, val_loss});
}

static void format_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)s;
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

void metrics_progress(Trainer *tr, double loss, double lr, double gnorm, double tok_s, double mfu, double eta_s,
                      double val_loss) {
    char eta[32], mfu_text[32] = "", val[48] = "", line[512];
    format_eta(eta_s, eta, sizeof eta);
    if (!isnan(mfu)) snprintf(mfu_text, sizeof mfu_text, " | MFU %.1f%%", 100.0 * mfu);
    if (!isnan(val_loss)) snprintf(val, sizeof val, " | val %.5f", val_loss);
    snprintf(line, sizeof line, "step %ld/%ld | loss %.5f | lr %.3e | grad norm %.4f | %.0f tok/s%s | ETA %s%s",
             tr->step, (long)tr->cfg.train.max_steps, loss, lr, gnorm, tok_s, mfu_text, eta, val);
    train_log_progress(&tr->log, line, !isnan(val_loss));
}

void metrics_say_start(Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    const Dist *d = tr->dist;
    char comm[160] = "";
    train_log_say(&tr->log,
                  "givt-train: %zu parameters, %lld training / %lld validation sequences of T = %d, backend %s (%s, "
                  "%s compute)",
                  tr->model.table.params, (long long)data_num_train(&tr->data), (long long)data_num_val(&tr->data),
                  tr->T, tr->be->name, tr->be->device, dtype_name(tr->be->compute));
    if (strcmp(d->name, "single") != 0)
        snprintf(comm, sizeof comm, " (%s communicator, started by %s%s)", d->name, d->launcher,
                 tr->zero ? ", ZeRO-1" : "");
    train_log_say(&tr->log, "givt-train: global batch %ld sequences = batch_size %d x grad_accum_steps %d x %d rank%s%s",
                  (long)ts->batch_size * ts->grad_accum_steps * d->world_size, ts->batch_size, ts->grad_accum_steps,
                  d->world_size, d->world_size == 1 ? "" : "s", comm);
}

static void format_duration(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) s = 0;
    if (s < 60) snprintf(buf, n, "%.1f s", s);
    else format_eta(s, buf, n);
}

void metrics_say_summary(Trainer *tr, const char *final, const char *best) {
    long steps = tr->step - tr->start_step;
    double took = util_time_now_s() - tr->t_start;
    double tokens = (double)steps * (double)global_batch(tr) * tr->T;
    char dur[32], skipped[48] = "";
    format_duration(took, dur, sizeof dur);
    if (tr->skipped_total) snprintf(skipped, sizeof skipped, "; %ld skipped in all", tr->skipped_total);
    train_log_say(&tr->log, "givt-train: summary: at step %ld of max_steps %ld; this run: %ld step%s in %s, %.0f tokens "
                            "(%.0f tok/s)%s",
                  tr->step, (long)tr->cfg.train.max_steps, steps, steps == 1 ? "" : "s", dur, tokens,
                  took > 0 ? tokens / took : 0.0, skipped);
    if (isnan(tr->best_val))
        train_log_say(&tr->log, "givt-train: summary: no validation loss yet (val_every = %ld, val_size = %ld)",
                      (long)tr->cfg.train.val_every, (long)tr->cfg.train.val_size);
    else
        train_log_say(&tr->log, "givt-train: summary: best val_loss %.6f at step %ld (latest %.6f at step %ld)",
                      tr->best_val, tr->best_step, tr->last_val, tr->last_val_step);
    train_log_say(&tr->log, "givt-train: summary: final checkpoint %s; best checkpoint %s", final[0] ? final : "none",
                  best[0] ? best
                  : isnan(tr->best_val) ? "none"
                                        : "not kept (its step was not saved or was rotated out: [train] keep_best = true "
                                          "keeps it)");
}
