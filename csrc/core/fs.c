// fs: files the user names or the trainer writes: checked opening and reading, atomic writes, paths.
#define _GNU_SOURCE
#include "fs.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rng.h"
#include "util.h"

// "a FIFO", "a directory", ... for messages about a file of this st_mode.
static const char *file_kind(mode_t m) {
    return S_ISREG(m) ? "a regular file" : S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO"
         : S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket"
         : S_ISLNK(m) ? "a symbolic link" : "of an unknown type";
}

int fs_open_regular_file(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return givt_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc = 0, flags;
    if (fstat(fd, &st) != 0) rc = givt_fail("%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode)) rc = givt_fail("%s: not a regular file (%s)", path, file_kind(st.st_mode));
    else if ((flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
        rc = givt_fail("%s: cannot make the descriptor blocking: %s", path, strerror(errno));
    if (rc == 0) return fd;
    close(fd);
    return -1;
}

int fs_pread_full(int fd, const char *path, void *buf, size_t n, int64_t off) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return givt_fail("%s: read failed at byte %lld: %s", path, (long long)off, strerror(errno));
        if (got == 0)
            return givt_fail("%s: the file ends at byte %lld, before the %zu bytes needed there: it was truncated or "
                             "rewritten while in use", path, (long long)off, n);
        p += got;
        n -= (size_t)got;
        off += got;
    }
    return 0;
}

static int too_large(const char *path, size_t max_bytes) {
    char h[32];
    return givt_fail("%s: larger than the limit of %s (%zu bytes) for this file: not the file meant?", path,
                     util_human_bytes(h, (double)max_bytes), max_bytes);
}

// All of fd (at most max_bytes) into a NUL-terminated buffer grown as it fills, starting at cap.
static char *read_all(int fd, const char *path, size_t max_bytes, size_t cap, size_t *len_out) {
    size_t len = 0, limit = size_add(max_bytes, 2);  // room for one byte too many and the NUL
    char *buf = xmalloc(cap);
    for (;;) {
        if (len + 1 == cap) {
            cap = size_mul(cap, 2) < limit ? cap * 2 : limit;
            buf = xrealloc(buf, cap);
        }
        ssize_t got = read(fd, buf + len, cap - 1 - len);
        if (got < 0 && errno == EINTR) continue;
        if (got == 0) break;
        int bad = got < 0 ? givt_fail("%s: read failed: %s", path, strerror(errno))
                : (len += (size_t)got) > max_bytes ? too_large(path, max_bytes) : 0;
        if (bad) {
            free(buf);
            return NULL;
        }
    }
    buf[len] = '\0';
    *len_out = len;
    return buf;
}

char *fs_read_text_max(const char *path, size_t max_bytes, size_t *len_out) {
    int fd = fs_open_regular_file(path);
    if (fd < 0) return NULL;
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    if (fstat(fd, &st) != 0) givt_fail("%s: cannot stat: %s", path, strerror(errno));
    else if ((uint64_t)st.st_size > max_bytes) too_large(path, max_bytes);
    else buf = read_all(fd, path, max_bytes, (size_t)st.st_size + 64, &len);
    close(fd);
    if (buf && len_out) *len_out = len;
    return buf;
}

char *fs_read_text(const char *path, size_t *len_out) {
    return fs_read_text_max(path, GIVT_READ_FILE_MAX_BYTES, len_out);
}

int fs_mkdir_p(const char *path) {
    if (!path[0]) return givt_fail("cannot create a directory with an empty name");
    char *p = xstrdup(path);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0') continue;
        char saved = *s;
        *s = '\0';
        struct stat st;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) rc = givt_fail("%s: cannot create directory: %s", p, strerror(errno));
        else if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) rc = givt_fail("%s: exists and is not a directory", p);
        *s = saved;
        if (rc || saved == '\0') break;
    }
    free(p);
    return rc;
}

int fs_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

char *fs_path_join(const char *dir, const char *name) {
    size_t n = strlen(dir);
    char *p = xmalloc(n + strlen(name) + 2);
    sprintf(p, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", name);
    return p;
}

int fs_fsync_dir_of(const char *path) {
    char *copy = xstrdup(path);
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        int rc = givt_fail("%s: cannot open directory to fsync: %s", dir, strerror(errno));
        free(copy);
        return rc;
    }
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL) rc = givt_fail("%s: fsync failed: %s", dir, strerror(errno));
    close(fd);
    free(copy);
    return rc;
}

// ---- atomic writes ------------------------------------------------------------------------
#define ATOMIC_TMP_PREFIX ".givt-tmp-"
#define ATOMIC_TMP_SUFFIX_LEN 6

// Writes through to path: a device or FIFO (fs_atomic_open checked its type; the open file is checked
// again, so a swap in between is refused rather than written into), or, when in_system (a path of
// /dev or /proc: /dev/stdout redirected to a file), a regular file too, truncated first.
static int open_direct(AtomicFile *af, const char *path, int in_system) {
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | (in_system ? O_TRUNC : 0));
    if (fd < 0) return givt_fail("%s: cannot open for writing: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !(S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode) || (in_system && S_ISREG(st.st_mode)))) {
        close(fd);
        return givt_fail("%s: not a regular file, a character device or a FIFO: will not write into it", path);
    }
    af->fp = fdopen(fd, "wb");
    if (!af->fp) {
        int rc = givt_fail("%s: cannot open for writing: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    af->final_path = xstrdup(path);
    return 0;
}

// Is path's folder, symlinks resolved, /dev itself or in /proc (/dev/stdout, /dev/fd/N,
// /proc/self/fd/N)? No file is ever created or renamed there.
static int in_system_folder(const char *path) {
    char *copy = xstrdup(path), *dir = realpath(dirname(copy), NULL);
    int sys = dir && (!strcmp(dir, "/dev") || !strcmp(dir, "/proc") || !strncmp(dir, "/proc/", 6));
    free(dir);
    free(copy);
    return sys;
}

// A new "<dir of path>/.givt-tmp-<pid>-XXXXXX", created exclusively: a name that exists (a file, or a
// symlink planted there) is never opened, another suffix is tried.
static int open_temp(AtomicFile *af, const char *path) {
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static _Atomic unsigned long counter;
    char *copy = xstrdup(path), name[64], *tmp = NULL;
    const char *dir = dirname(copy);
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 100; attempt++) {
        uint64_t r = rng_mix64((uint64_t)(util_time_now_s() * 1e9) ^ ((uint64_t)getpid() << 40) ^ counter++);
        char suffix[ATOMIC_TMP_SUFFIX_LEN + 1];
        for (int i = 0; i < ATOMIC_TMP_SUFFIX_LEN; i++, r /= 62) suffix[i] = alnum[r % 62];
        suffix[ATOMIC_TMP_SUFFIX_LEN] = '\0';
        snprintf(name, sizeof name, ATOMIC_TMP_PREFIX "%ld-%s", (long)getpid(), suffix);
        free(tmp);
        tmp = fs_path_join(dir, name);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EEXIST) break;
    }
    int rc = fd < 0 ? givt_fail("%s: cannot create a temporary file in %s: %s", path, dir, strerror(errno)) : 0;
    free(copy);
    if (rc == 0 && !(af->fp = fdopen(fd, "wb"))) {
        rc = givt_fail("%s: cannot open %s: %s", path, tmp, strerror(errno));
        close(fd);
        unlink(tmp);
    }
    if (rc != 0) {
        free(tmp);
        return rc;
    }
    af->final_path = xstrdup(path);
    af->tmp_path = tmp;
    return 0;
}

int fs_atomic_open(AtomicFile *af, const char *path) {
    memset(af, 0, sizeof *af);
    if (in_system_folder(path)) return open_direct(af, path, 1);
    struct stat st;
    if (stat(path, &st) != 0) {  // absent (or a dangling symlink, which the rename replaces)
        if (errno != ENOENT) return givt_fail("%s: cannot write: %s", path, strerror(errno));
        return open_temp(af, path);
    }
    if (S_ISREG(st.st_mode)) return open_temp(af, path);
    if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) return open_direct(af, path, 0);
    return givt_fail("%s: is %s, not a regular file: will not write over it", path, file_kind(st.st_mode));
}

// The name written to: the temporary, or path itself when writing through.
static const char *atomic_name(const AtomicFile *af) { return af->tmp_path ? af->tmp_path : af->final_path; }

int fs_atomic_write(AtomicFile *af, const void *data, size_t n) {
    if (af->failed) return -1;
    if (n && fwrite(data, 1, n, af->fp) != n) {
        af->failed = 1;
        return givt_fail("%s: write failed: %s", atomic_name(af), strerror(errno));
    }
    return 0;
}

static void atomic_free(AtomicFile *af) {
    free(af->final_path);
    free(af->tmp_path);
    af->final_path = af->tmp_path = NULL;
    af->fp = NULL;
}

void fs_atomic_abort(AtomicFile *af) {
    if (af->fp) fclose(af->fp);
    if (af->tmp_path) unlink(af->tmp_path);
    atomic_free(af);
}

int fs_atomic_commit(AtomicFile *af) {
    const char *name = atomic_name(af);
    int rc = af->failed ? -1 : 0;
    if (rc == 0 && fflush(af->fp) != 0) rc = givt_fail("%s: flush failed: %s", name, strerror(errno));
    if (rc == 0 && af->tmp_path && fsync(fileno(af->fp)) != 0)
        rc = givt_fail("%s: fsync failed: %s", name, strerror(errno));
    if (fclose(af->fp) != 0 && rc == 0) rc = givt_fail("%s: close failed: %s", name, strerror(errno));
    af->fp = NULL;
    if (af->tmp_path) {
        if (rc == 0 && rename(af->tmp_path, af->final_path) != 0)
            rc = givt_fail("%s: rename to %s failed: %s", af->tmp_path, af->final_path, strerror(errno));
        if (rc == 0) rc = fs_fsync_dir_of(af->final_path);
        if (rc != 0) unlink(af->tmp_path);
    }
    atomic_free(af);
    return rc;
}

// "<digits>" that ends at end, without leading zeros, as a pid (0 when not one).
long fs_parse_pid(const char *s, const char *end) {
    long pid = 0;
    if (s == end || *s == '0' || end - s > 10) return 0;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9') return 0;
        pid = pid * 10 + (*s - '0');
    }
    return pid <= INT32_MAX ? pid : 0;
}

long fs_atomic_temp_owner(const char *name) {
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    size_t n = strlen(base), plen = strlen(ATOMIC_TMP_PREFIX);
    if (strncmp(base, ATOMIC_TMP_PREFIX, plen) == 0) {  // ".givt-tmp-<pid>-XXXXXX"
        if (n < plen + ATOMIC_TMP_SUFFIX_LEN + 2) return 0;
        const char *dash = base + n - ATOMIC_TMP_SUFFIX_LEN - 1;
        for (const char *c = dash + 1; *c; c++)
            if (!isalnum((unsigned char)*c)) return 0;
        return *dash == '-' ? fs_parse_pid(base + plen, dash) : 0;
    }
    const char *legacy = NULL;  // "<name>.tmp.<pid>": the last ".tmp."
    for (const char *t = strstr(base, ".tmp."); t; t = strstr(t + 1, ".tmp.")) legacy = t;
    return legacy && legacy > base ? fs_parse_pid(legacy + 5, base + n) : 0;
}
