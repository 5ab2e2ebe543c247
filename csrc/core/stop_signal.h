// stop_signal: the stop signals (SIGINT, SIGTERM, SIGHUP, SIGUSR1) taken by one thread of their own
// with sigwait, never by a handler. A handler runs on the stack of whichever thread the kernel picks,
// and one that ran inside oneDNN's sgemm corrupted the heap (a Ctrl-C ended runs in "corrupted size
// vs. prev_size", with no checkpoint); a thread that only waits for signals has nothing to corrupt.
// The programs call stop_signals_init first thing in main, before any other thread exists: every
// thread made after it (OpenMP's, the BLAS's, the watchdog) inherits the blocked mask, and a signal
// that arrives before the receiving thread runs stays pending until it does, so even a SIGTERM in the
// first instant gets the documented stop. The first stop signal sets the request and says so at
// once (stop_signals_notice); a second one ends the process at once, with that signal's default
// action (a second Ctrl-C stops for real), saying so.
#ifndef GIVT_STOP_SIGNAL_H
#define GIVT_STOP_SIGNAL_H

// Blocks the stop signals in the calling thread, ignores SIGPIPE (a closed pipe makes a write fail,
// it never ends the program) and starts the receiving thread. prog names the program in the line
// the second signal prints. Returns 0, or -1 with a message (givt_fail).
int stop_signals_init(const char *prog);

// What the receiving thread prints at once (to stderr, one line "PROG: SIGNAL: TEXT") when the first
// stop signal arrives, and what the second one's line says it does: first NULL prints nothing (the
// default), second NULL says "ending at once". The texts must outlive the program (literals).
// givt-train: "stopping after this micro-batch (press Ctrl-C again to quit without a checkpoint)".
void stop_signals_notice(const char *first, const char *second);
// quiet: print neither line (every rank of a job but rank 0, so that a job says it once).
void stop_signals_quiet(int quiet);

// The first stop signal received (SIGINT, ...), 0 while none: the program stops at its next check.
int stop_requested(void);

// Exit status of a program stopped by a signal: 128 + the signal's number's conventional 2 (130),
// the status givt-train, givt-sample and givt-eval document for every stop signal.
#define STOP_EXIT_STATUS 130

#endif
