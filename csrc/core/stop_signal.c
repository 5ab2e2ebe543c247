// stop_signal: stop signals received by a sigwait thread (see stop_signal.h).
#define _GNU_SOURCE
#include "stop_signal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static _Atomic int g_stop_signal;
static const char *g_prog = "givt";
static const char *_Atomic g_first_notice;   // NULL: the first signal prints nothing
static const char *_Atomic g_second_notice;  // NULL: "ending at once"
static _Atomic int g_quiet;

void stop_signals_notice(const char *first, const char *second) {
    atomic_store(&g_first_notice, first);
    atomic_store(&g_second_notice, second);
}

void stop_signals_quiet(int quiet) { atomic_store(&g_quiet, quiet); }

// "\nPROG: WHAT: TEXT\n" on stderr with one write (the receiving thread prints while others may).
static void say(const char *what, const char *text) {
    if (!text || atomic_load(&g_quiet)) return;
    char line[320];
    int n = snprintf(line, sizeof line, "\n%s: %s: %s\n", g_prog, what, text);
    if (n > (int)sizeof line - 1) n = (int)sizeof line - 1;
    if (n > 0 && write(STDERR_FILENO, line, (size_t)n) < 0) { /* nothing more to say */ }
}

static void stop_set(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGHUP);   // a closed terminal stops the run as Ctrl-C does
    sigaddset(set, SIGUSR1);  // mpirun forwards it to every rank: the graceful stop of a job
}

// A second signal ends the process with that signal's default action: unblocked in this thread
// alone and raised here.
static void end_at_once(int sig) {
    char what[96];
    snprintf(what, sizeof what, "second stop signal (%s)", strsignal(sig));
    const char *second = atomic_load(&g_second_notice);
    say(what, second ? second : "ending at once");
    signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    raise(sig);
    _exit(128 + sig);  // not reached: the default action of every stop signal ends the process
}

static void *receive(void *arg) {
    (void)arg;
    sigset_t set;
    stop_set(&set);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        int first = 0;
        if (!atomic_compare_exchange_strong(&g_stop_signal, &first, sig)) end_at_once(sig);
        say(strsignal(sig), atomic_load(&g_first_notice));
    }
    return NULL;
}

int stop_signals_init(const char *prog) {
    g_prog = prog;
    sigset_t set;
    stop_set(&set);
    int e = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (e != 0) return givt_fail("cannot block the stop signals: %s", strerror(e));
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    // the default stack size: a smaller one is refused (EINVAL) when the libraries' static TLS
    // (cudart, oneDNN) does not fit in it
    pthread_t t;
    e = pthread_create(&t, &attr, receive, NULL);
    pthread_attr_destroy(&attr);
    if (e != 0) return givt_fail("cannot start the thread that receives stop signals: %s", strerror(e));
    return 0;
}

int stop_requested(void) { return atomic_load(&g_stop_signal); }
