// train_log: the trainer's log lines on the terminal and in out_dir/train.log (see train_log.h).
#define _POSIX_C_SOURCE 200809L
#include "train_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs.h"
#include "util.h"

#define LOG_NAME "train.log"

void train_log_init(TrainLog *log, int keep) {
    memset(log, 0, sizeof *log);
    log->term = stderr;
    log->tty = isatty(fileno(stderr));
    log->keep = keep;
}

// "YYYY-MM-DD HH:MM:SS " (local time) into buf[32].
static const char *stamp(char *buf) {
    time_t now = time(NULL);
    struct tm tm;
    if (!localtime_r(&now, &tm) || !strftime(buf, 32, "%Y-%m-%d %H:%M:%S ", &tm)) snprintf(buf, 32, "? ");
    return buf;
}

// Appends n bytes to the file, or to the lines pending until it is opened.
static void file_put(TrainLog *log, const char *s, size_t n) {
    if (log->file) {
        fwrite(s, 1, n, log->file);
        return;
    }
    log->pending = xrealloc(log->pending, log->pending_len + n + 1);
    memcpy(log->pending + log->pending_len, s, n);
    log->pending_len += n;
}

// Each line of text, stamped, into the file (flushed).
static void file_lines(TrainLog *log, const char *text) {
    if (!log->keep) return;
    char ts[32];
    stamp(ts);
    for (const char *line = text; *line;) {
        size_t len = strcspn(line, "\n");
        file_put(log, ts, strlen(ts));
        file_put(log, line, len);
        file_put(log, "\n", 1);
        line += len + (line[len] == '\n');
    }
    if (log->file) fflush(log->file);
}

// The formatted text without its leading and trailing newlines (which the log places itself); malloc'd.
static char *format_text(const char *fmt, va_list ap) {
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    char *s = xmalloc(n > 0 ? (size_t)n + 1 : 1);
    vsnprintf(s, n > 0 ? (size_t)n + 1 : 1, fmt, again);
    va_end(again);
    size_t len = strlen(s), skip = strspn(s, "\n");
    while (len > skip && s[len - 1] == '\n') s[--len] = '\0';
    memmove(s, s + skip, len - skip + 1);
    return s;
}

// A line said after the terminal's open progress line starts on a line of its own.
static void end_open_line(TrainLog *log) {
    if (log->open_line) fputc('\n', log->term);
    log->open_line = 0;
}

void train_log_say(TrainLog *log, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *text = format_text(fmt, ap);
    va_end(ap);
    end_open_line(log);
    fprintf(log->term, "%s\n", text);
    fflush(log->term);
    file_lines(log, text);
    free(text);
}

void train_log_file_only(TrainLog *log, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *text = format_text(fmt, ap);
    va_end(ap);
    file_lines(log, text);
    free(text);
}

void train_log_progress(TrainLog *log, const char *line, int stays) {
    if (log->tty) {
        fprintf(log->term, "\r\033[K%s%s", line, stays ? "\n" : "");
        log->open_line = !stays;
    } else {
        end_open_line(log);
        fprintf(log->term, "%s\n", line);
    }
    fflush(log->term);
    file_lines(log, line);
}

int train_log_open(TrainLog *log, const char *out_dir) {
    if (!log->keep) return 0;
    free(log->path);
    log->path = fs_path_join(out_dir, LOG_NAME);
    log->file = fopen(log->path, "a");
    if (!log->file) return givt_fail("%s: cannot open for appending: %s", log->path, strerror(errno));
    if (fseek(log->file, 0, SEEK_END) == 0 && ftell(log->file) > 0) {  // a run wrote here before
        char ts[32];
        fprintf(log->file, "\n%s======== givt-train: a new run in this out_dir (PID %ld) ========\n", stamp(ts),
                (long)getpid());
    }
    if (log->pending_len) fwrite(log->pending, 1, log->pending_len, log->file);
    free(log->pending);
    log->pending = NULL;
    log->pending_len = 0;
    if (fflush(log->file) != 0) return givt_fail("%s: cannot write: %s", log->path, strerror(errno));
    return 0;
}

void train_log_close(TrainLog *log) {
    end_open_line(log);
    fflush(log->term);
    if (log->file) fclose(log->file);
    free(log->path);
    free(log->pending);
    log->file = NULL;
    log->path = NULL;
    log->pending = NULL;
    log->pending_len = 0;
}
