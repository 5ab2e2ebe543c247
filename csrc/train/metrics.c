// metrics: what the trainer reports: metrics.jsonl, the progress line and the start-up line (see trainer_internal.h).
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "trainer_internal.h"

// Keeps the lines of metrics.jsonl whose "step" is <= step (a resumed run rewrites what followed).
static int metrics_truncate(const char *path, long step) {
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
        if (!s || len == 0 || line[len - 1] != '}' || strtol(s + 7, NULL, 10) > step) continue;  // cut or later
        fs_atomic_write(&af, line, strlen(line));
        fs_atomic_write(&af, "\n", 1);
    }
    free(text);
    return fs_atomic_commit(&af);
}

int metrics_open(Trainer *tr) {
    char *p = fs_path_join(tr->cfg.train.out_dir, "metrics.jsonl");
    int rc = metrics_truncate(p, tr->step);
    if (rc == 0) {
        tr->metrics = fopen(p, "a");
        if (!tr->metrics) rc = givt_fail("%s: cannot open for appending: %s", p, strerror(errno));
    }
    free(p);
    return rc;
}

// x with 9 significant digits, or null when it is not finite (JSON has no NaN or Inf); buf[32].
static const char *json_number(char *buf, double x) {
    if (isfinite(x)) snprintf(buf, 32, "%.9g", x);
    else snprintf(buf, 32, "null");
    return buf;
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
}

static void format_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)s;
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

void metrics_progress(Trainer *tr, int tty, double loss, double lr, double gnorm, double tok_s, double mfu,
                      double eta_s, double val_loss) {
    char eta[32], mfu_text[32] = "";
    format_eta(eta_s, eta, sizeof eta);
    if (!isnan(mfu)) snprintf(mfu_text, sizeof mfu_text, " | MFU %.1f%%", 100.0 * mfu);
    fprintf(stderr, "%sstep %ld/%ld | loss %.5f | lr %.3e | grad norm %.4f | %.0f tok/s%s | ETA %s",
            tty ? "\r\033[K" : "", tr->step, (long)tr->cfg.train.max_steps, loss, lr, gnorm, tok_s, mfu_text, eta);
    if (!isnan(val_loss)) fprintf(stderr, " | val %.5f", val_loss);
    if (!tty || !isnan(val_loss)) fputc('\n', stderr);
    fflush(stderr);
}

void metrics_say_start(const Trainer *tr) {
    const TrainSettings *ts = &tr->cfg.train;
    const Dist *d = tr->dist;
    fprintf(stderr,
            "givt-train: %zu parameters, %lld training / %lld validation sequences of T = %d, backend %s (%s, %s "
            "compute)\n",
            tr->model.table.total, (long long)data_num_train(&tr->data), (long long)data_num_val(&tr->data), tr->T,
            tr->be->name, tr->be->device, dtype_name(tr->be->compute));
    fprintf(stderr, "givt-train: global batch %ld sequences = batch_size %d x grad_accum_steps %d x %d rank%s",
            (long)ts->batch_size * ts->grad_accum_steps * d->world_size, ts->batch_size, ts->grad_accum_steps,
            d->world_size, d->world_size == 1 ? "" : "s");
    if (strcmp(d->name, "single") != 0)
        fprintf(stderr, " (%s communicator, started by %s%s)", d->name, d->launcher, tr->zero ? ", ZeRO-1" : "");
    fputc('\n', stderr);
}
