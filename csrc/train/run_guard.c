// run_guard: what guards a multi-rank run: the watchdog of a hung rank, the ranks' agreement on binary,
// configuration, data and weights, and the end of a failed job (see trainer_internal.h).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer_internal.h"

// ---- the watchdog of a multi-rank job -----------------------------------------------------
// A rank that hangs (a stuck file system, a peer that stopped answering inside a collective) would
// hold every other rank in its next collective forever. A thread watches the time of the last
// progress (a micro-batch, a validation batch, a checkpoint) and, after [train] hang_timeout seconds
// without any, ends this rank; the launcher then ends the job, as for a rank that died.
static _Atomic long long g_progress_ms;
static double g_hang_timeout_s;
static int g_watch_rank;
static TrainLog *_Atomic g_log;  // the trainer's, while it is open: rank 0's watchdog says its line in train.log too
static TrainLog g_stderr_log;     // stderr alone, after it closes

static long long now_ms(void) { return (long long)(util_time_now_s() * 1000.0); }

void guard_note_progress(void) { atomic_store(&g_progress_ms, now_ms()); }

// Between two of its one-second ticks the watchdog sees more than WATCHDOG_GAP_S pass only when this
// process did not run (SIGSTOP or Ctrl-Z of the job, a suspended machine): that time is not the others'
// hang, so the wait starts again from the wake-up. (A tick taken late on a loaded machine only delays
// the hang's detection by that much.)
#define WATCHDOG_GAP_S 3.0

void guard_watchdog_leaves_the_log(void) { atomic_store(&g_log, &g_stderr_log); }

static void *watchdog(void *arg) {
    (void)arg;
    long long tick = now_ms();
    for (;;) {
        sleep(1);
        TrainLog *log = atomic_load(&g_log);
        long long now = now_ms();
        if ((double)(now - tick) / 1000.0 > WATCHDOG_GAP_S) {
            train_log_say(log, "givt-train: rank %d: this process did not run for %.0f s (stopped or suspended); "
                                 "the hang timeout counts again from now",
                          g_watch_rank, (double)(now - tick) / 1000.0);
            guard_note_progress();
        }
        tick = now;
        double idle = (double)(now - atomic_load(&g_progress_ms)) / 1000.0;
        if (idle <= g_hang_timeout_s) continue;
        train_log_say(log,
                      "givt-train: rank %d: no progress for %.0f s ([train] hang_timeout = %g): another rank or the "
                      "file system hangs; ending this rank, and with it the job",
                      g_watch_rank, idle, g_hang_timeout_s);
        _exit(1);
    }
    return NULL;
}

void guard_start_watchdog(Trainer *tr) {
    if (tr->dist->world_size < 2 || tr->cfg.train.hang_timeout <= 0) return;
    g_hang_timeout_s = tr->cfg.train.hang_timeout;
    g_watch_rank = tr->dist->rank;
    train_log_init(&g_stderr_log, 0);
    atomic_store(&g_log, &tr->log);
    guard_note_progress();
    pthread_t t;
    if (pthread_create(&t, NULL, watchdog, NULL) == 0) pthread_detach(t);
    else train_log_say(&tr->log, "givt-train: rank %d: warning: no watchdog thread: %s", g_watch_rank, strerror(errno));
}

// ---- the ranks agree ----------------------------------------------------------------------
// FNV-1a over n bytes: a fingerprint that ranks compare (configuration, binary, weights).
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

// The fingerprint of this process's executable (/proc/self/exe); 0 when it cannot be read.
static uint64_t binary_fingerprint(void) {
    FILE *f = fopen("/proc/self/exe", "rb");
    if (!f) return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) h = fnv1a(h, buf, got);
    fclose(f);
    return h;
}

// One INI line as "key = value": spaces collapsed, the comment dropped (into buf of n bytes).
static const char *ini_line_text(const char *line, char *buf, size_t n) {
    size_t len = strcspn(line, "\n#"), k = 0;
    for (size_t i = 0; i < len && k + 1 < n; i++)
        if (line[i] != ' ' || (k > 0 && buf[k - 1] != ' ')) buf[k++] = line[i];
    while (k > 0 && buf[k - 1] == ' ') k--;
    buf[k] = '\0';
    return buf;
}

// Prints the first line where configuration text `mine` differs from rank 0's `r0`, and its section.
static void say_first_difference(TrainLog *log, int rank, const char *r0, const char *mine) {
    const char *a = r0, *b = mine, *section = "";
    size_t section_len = 0;
    while (*a && *b && strcspn(a, "\n") == strcspn(b, "\n") && !strncmp(a, b, strcspn(a, "\n"))) {
        if (*a == '[') section = a, section_len = strcspn(a, "]\n") + 1;
        a += strcspn(a, "\n") + (a[strcspn(a, "\n")] != 0);
        b += strcspn(b, "\n") + (b[strcspn(b, "\n")] != 0);
    }
    char la[256], lb[256];
    train_log_say(log, "givt-train: rank %d: configuration differs from rank 0's: %.*s rank 0 has \"%s\", rank %d has \"%s\"",
                  rank, (int)section_len, section, ini_line_text(a, la, sizeof la), rank, ini_line_text(b, lb, sizeof lb));
}

int guard_check_ranks_agree(Trainer *tr) {
    Dist *d = tr->dist;
    if (d->world_size == 1) return 0;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f || train_config_write_ini(f, &tr->cfg) != 0 || fclose(f) != 0)
        return givt_fail("cannot write the configuration to memory");
    int bad = -1;
    char *r0 = NULL;  // rank 0's text, for the rank that differs to say where
    int rc = dist_check_same(d, text, len, &bad, &r0);
    if (rc != 0 && d->rank == bad) say_first_difference(&tr->log, d->rank, r0, text);
    free(r0);
    free(text);
    if (rc != 0) {
        tr->agreed = 1;
        return givt_fail("rank %d was given another configuration than rank 0 (every rank must load the same INI and "
                         "overrides; the difference is printed above)",
                         bad);
    }
    uint64_t exe = binary_fingerprint();
    if (dist_check_same(d, &exe, sizeof exe, &bad, NULL) != 0) {
        tr->agreed = 1;
        return givt_fail("rank %d runs another givt-train binary than rank 0 (it differs from rank 0's, byte for "
                         "byte): install the same build on every node",
                         bad);
    }
    return 0;
}

int guard_check_same_data(Trainer *tr) {
    Dist *d = tr->dist;
    if (d->world_size == 1) return 0;
    struct {
        uint64_t fingerprint;
        char what[256];
    } mine;
    memset(&mine, 0, sizeof mine);
    mine.fingerprint = data_fingerprint(&tr->data);
    data_describe(&tr->data, mine.what, sizeof mine.what);
    int bad = -1;
    char *r0 = NULL;
    if (dist_check_same(d, &mine, sizeof mine, &bad, &r0) == 0) return 0;
    if (d->rank == bad)
        train_log_say(&tr->log, "givt-train: rank %d reads %s\ngivt-train: rank 0 reads %s", d->rank, mine.what,
                      r0 ? r0 + sizeof mine.fingerprint : "?");
    free(r0);
    tr->agreed = 1;
    return givt_fail("rank %d reads other data than rank 0 (the files' shapes or sizes, the labels or the split "
                     "differ; printed above): give every node the same copy of [data] path",
                     bad);
}

int guard_check_same_weights(Trainer *tr) {
    Dist *d = tr->dist;
    if (d->world_size == 1) return 0;
    size_t n = tr->model.table.total;
    float *host = xmalloc(n * sizeof(float));
    tr->be->ops->download(tr->be, host, tr->model.w.master, n * sizeof(float));
    uint64_t h = fnv1a(0xcbf29ce484222325ull, host, n * sizeof(float));
    free(host);
    int bad = -1;
    if (dist_check_same(d, &h, sizeof h, &bad, NULL) == 0) return 0;
    tr->agreed = 1;
    return givt_fail("rank %d starts from other weights than rank 0 (is [train] out_dir on a filesystem every node "
                     "sees, with the same checkpoints?)",
                     bad);
}

// ---- the end of a failed job --------------------------------------------------------------
int guard_end_failed_job(Trainer *tr, int rc) {
    Dist *d = tr->dist;
    char *why = xstrdup(givt_last_error());
    if (!tr->agreed) {
        train_log_say(&tr->log, "givt-train: rank %d of %d: %s\ngivt-train: rank %d failed alone: ending the whole job",
                      d->rank, d->world_size, why, d->rank);
        dist_abort(d, 1);
    }
    if (!root(tr) && !tr->local_error) rc = 1;  // rank 0 says why
    else if (!root(tr)) givt_fail("rank %d: %s", d->rank, why);
    free(why);
    return rc;
}
