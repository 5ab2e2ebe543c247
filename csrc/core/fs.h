// fs: files the user names or the trainer writes: checked opening and reading, atomic
// writes (a crash leaves the old file or the new one, never half), paths.
#ifndef GIVT_FS_H
#define GIVT_FS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// Opens a file the user named, for reading: O_NONBLOCK for the open itself (so a FIFO cannot block
// it), then anything but a regular file is refused ("PATH: not a regular file (a FIFO)"), and the
// descriptor is made blocking again. Returns the descriptor (O_CLOEXEC), or -1 with givt_fail.
int fs_open_regular_file(const char *path);
// Reads exactly n bytes at byte offset off of fd (pread, resuming short reads). A file that ends
// first is an error naming path ("...: it was truncated or rewritten while in use"), never a crash.
int fs_pread_full(int fd, const char *path, void *buf, size_t n, int64_t off);
// Configuration text (INI files, config.json) is read with this limit: real ones are a few KiB.
#define GIVT_TEXT_MAX_BYTES ((size_t)16 << 20)
// What fs_read_text allows: whole-file reads of anything else (metrics.jsonl on resume, test data).
#define GIVT_READ_FILE_MAX_BYTES ((size_t)1 << 30)
// Reads a whole regular file (fs_open_regular_file) into a NUL-terminated buffer; NULL (with givt_fail)
// on error. A file of more than max_bytes is an error naming the limit, found from its size before
// anything is allocated and while reading (for a file that grows).
char *fs_read_text_max(const char *path, size_t max_bytes, size_t *len_out);
char *fs_read_text(const char *path, size_t *len_out);  // limit GIVT_READ_FILE_MAX_BYTES
// Atomic write of path.
// - path absent, or a regular file (or a symlink, dangling or to a regular file: the link itself is
//   then replaced by the new file): data goes to a new temporary "<dir of path>/.givt-tmp-<pid>-XXXXXX",
//   created exclusively (O_EXCL | O_NOFOLLOW: a file or symlink planted at that name is never written
//   through), is flushed and fsync'd, then renamed over path, and the directory is fsync'd. A crash
//   leaves either the old file or the new one, never half; the short temporary name works for any
//   legal path.
// - path a character device or a FIFO (/dev/null, /dev/stdout on a pipe), or any path whose folder
//   is /dev or in /proc (/dev/stdout redirected to a file, /dev/fd/N: nothing is ever created or
//   renamed there): written through directly, no temporary, no rename (opening a FIFO waits for
//   its reader; a regular file there is truncated); commit flushes and closes.
// - path a directory or anything else: refused (-1, givt_fail) before any temporary is made.
typedef struct {
    FILE *fp;
    char *final_path;
    char *tmp_path;  // NULL when writing through to a device or FIFO
    int failed;
} AtomicFile;
int fs_atomic_open(AtomicFile *af, const char *path);
int fs_atomic_write(AtomicFile *af, const void *data, size_t n);
int fs_atomic_commit(AtomicFile *af);  // flush, fsync, rename; frees af
void fs_atomic_abort(AtomicFile *af);  // removes the temporary file; frees af
// The pid in the file name of an fs_atomic_open temporary: ".givt-tmp-<pid>-XXXXXX", and the
// "<name>.tmp.<pid>" of earlier versions (so their leftovers are recognised too); 0 when name (a file
// name or a path) is not one of these. Lets a cleanup remove the temporaries of dead processes only.
long fs_atomic_temp_owner(const char *name);
// The process id written in [s, end) as decimal digits (no sign, no leading zero, at most
// INT32_MAX): the pids that temporary names carry. 0 when [s, end) is anything else.
long fs_parse_pid(const char *s, const char *end);
int fs_fsync_dir_of(const char *path);
int fs_path_exists(const char *path);
// mkdir -p: creates path and its missing parents (0 if it already is a directory).
int fs_mkdir_p(const char *path);
// "<dir>/<name>" (no doubled slash), malloc'd.
char *fs_path_join(const char *dir, const char *name);

#endif
