// train_log: givt-train's log lines, on the terminal (stderr) and in out_dir/train.log.
//
// The trainer says every line through here. On the process that keeps the log (rank 0) each line
// also goes to out_dir/train.log, stamped with the local time ("2025-06-01 14:03:12 givt-train: ...");
// lines said before the file can be opened (out_dir is created and locked first) are kept and written
// when it is. A run appends to the file, after a separator line when it already has lines (a resumed
// run). The progress line that a terminal redraws in place ("\r" and erase) is a plain line in the file
// each time it is said; a line said after it starts on a line of its own on the terminal.
#ifndef GIVT_TRAIN_LOG_H
#define GIVT_TRAIN_LOG_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    FILE *term;         // the terminal side: stderr
    int tty;            // term is a terminal: the progress line is redrawn in place
    int keep;           // this process keeps train.log (rank 0)
    int open_line;      // the terminal shows a progress line without its newline
    FILE *file;         // out_dir/train.log once opened
    char *path;
    char *pending;      // stamped lines said before the file was opened
    size_t pending_len;
} TrainLog;

// keep: this process writes train.log (rank 0). The terminal is stderr.
void train_log_init(TrainLog *log, int keep);

// Opens out_dir/train.log for appending (when log->keep), writes the separator when the file already
// has lines, then the lines said so far. 0, or -1 with givt_fail.
int train_log_open(TrainLog *log, const char *out_dir);

// Says text (printf-style; one line or several; a trailing newline is added when missing): on the
// terminal and in the file. The file is flushed at once.
void train_log_say(TrainLog *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// The same, in the file only (what another part prints on the terminal itself: the error main prints).
void train_log_file_only(TrainLog *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// The progress line: redrawn in place on a terminal (stays: ended there too, so that it stays on
// screen, as a validation line does), a line otherwise; always a line in the file.
void train_log_progress(TrainLog *log, const char *line, int stays);

// Ends the terminal's open progress line, closes the file (lines still pending are dropped).
void train_log_close(TrainLog *log);

#endif
