// test_io_hardening: regressions of an attack campaign on file handling (the programs run as root):
// atomic writes that a planted symlink, a device, a FIFO or a directory cannot redirect; readers that
// refuse FIFOs instead of blocking and cap text sizes; safetensors truncated while open; eps that
// overflows the loss; a digits header that lies about its size; control bytes in error messages.
// Calls that could hang or crash on a regression run in a child process with a time limit.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "digits.h"
#include "fs.h"
#include "harness.h"
#include "hf.h"
#include "ini.h"
#include "npy.h"
#include "safetensors.h"
#include "testutil.h"
#include "train_config.h"
#include "util.h"

// ---- running a call in a child with a time limit ----------------------------------------------
typedef int (*BoundedFn)(const void *arg);

// Runs fn(arg) in a child process that is killed after limit_s seconds. Returns fn's result (0 or
// -1, its givt_last_error() into msg), or -2 when the child hung, died by a signal or exited without
// a result (msg says which), so that a hang or a crash fails the test instead of the test run.
static int run_bounded(BoundedFn fn, const void *arg, unsigned limit_s, char *msg, size_t n) {
    int p[2];
    if (pipe(p) != 0) givt_die("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) givt_die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(p[0]);
        alarm(limit_s);
        int rc = fn(arg);
        char out[4096];
        snprintf(out, sizeof out, "%c%s", rc == 0 ? '0' : '1', rc == 0 ? "" : givt_last_error());
        ssize_t w = write(p[1], out, strlen(out));
        _exit(w > 0 ? 0 : 3);
    }
    close(p[1]);
    char buf[4096];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof buf - 1 && ((r = read(p[0], buf + got, sizeof buf - 1 - got)) > 0 || (r < 0 && errno == EINTR)))
        if (r > 0) got += (size_t)r;
    buf[got] = '\0';
    close(p[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (got > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        snprintf(msg, n, "%s", buf + 1);
        return buf[0] == '0' ? 0 : -1;
    }
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) snprintf(msg, n, "hung: still running after %u s", limit_s);
    else if (WIFSIGNALED(st)) snprintf(msg, n, "crashed: killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(msg, n, "exited with status %d without a result", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return -2;
}

// Every byte of s printable (no control characters, 0x7f included).
static int printable(const char *s) {
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c < 0x20 || *c == 0x7f) return 0;
    return 1;
}

static void put_text_file(const char *path, const char *text) { tu_put_text(path, text); }

// ---- 1. atomic writes --------------------------------------------------------------------------
static int write_text_atomically(const char *path, const char *text) {
    AtomicFile af;
    if (fs_atomic_open(&af, path)) return -1;
    fs_atomic_write(&af, text, strlen(text));
    return fs_atomic_commit(&af);
}

// A symlink planted at the temporary name (the old "<path>.tmp.<pid>", and the new pattern's prefix
// with this pid) is never written through: its target keeps its bytes and the link stays a link.
TEST(atomic_write_never_follows_a_planted_symlink) {
    char d[256];
    tu_mkdtemp(d, "ioh_link");
    char victim[512], target[512], old_tmp[600], new_tmp[600];
    snprintf(victim, sizeof victim, "%s/victim", d);
    snprintf(target, sizeof target, "%s/out.npy", d);
    snprintf(old_tmp, sizeof old_tmp, "%s.tmp.%ld", target, (long)getpid());
    snprintf(new_tmp, sizeof new_tmp, "%s/.givt-tmp-%ld-", d, (long)getpid());
    put_text_file(victim, "precious");
    CHECK(symlink(victim, old_tmp) == 0 && symlink(victim, new_tmp) == 0, "%s", strerror(errno));
    float x[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    CHECK(npy_write_f32(target, x, 2, shape) == 0, "%s", givt_last_error());
    size_t n = 0;
    char *v = fs_read_text(victim, &n);
    CHECK(v && n == 8 && memcmp(v, "precious", 8) == 0, "the symlink's target was overwritten");
    free(v);
    struct stat st;
    CHECK(lstat(old_tmp, &st) == 0 && S_ISLNK(st.st_mode), "the planted link was replaced");
    CHECK(lstat(new_tmp, &st) == 0 && S_ISLNK(st.st_mode), "the planted link was replaced");
    NpyFile f;
    float back[6];
    CHECK(npy_open(&f, target) == 0 && npy_read_f32(&f, 0, 6, back) == 0 && memcmp(back, x, sizeof x) == 0, "%s",
          givt_last_error());
    npy_close(&f);
    CHECK(tu_count_prefix(d, ".givt-tmp-") == 1, "a temporary was left behind");  // the planted link only
    tu_rmtree(d);
}

// The temporary is a fresh regular file in the target's folder, named ".givt-tmp-<pid>-XXXXXX";
// fs_atomic_temp_owner reads the pid back (and that of the older "<name>.tmp.<pid>"), 0 for other names.
TEST(atomic_temp_names_carry_the_pid) {
    char d[256];
    tu_mkdtemp(d, "ioh_tmpname");
    AtomicFile af;
    CHECK(fs_atomic_open(&af, tu_path(d, "m.safetensors")) == 0, "%s", givt_last_error());
    if (af.fp) {
        const char *base = strrchr(af.tmp_path, '/');
        base = base ? base + 1 : af.tmp_path;
        CHECK(strncmp(base, ".givt-tmp-", 10) == 0 && strlen(base) < 40, "temporary %s", af.tmp_path);
        CHECK(strncmp(af.tmp_path, d, strlen(d)) == 0, "temporary %s is not in %s", af.tmp_path, d);
        CHECK(fs_atomic_temp_owner(af.tmp_path) == (long)getpid() && fs_atomic_temp_owner(base) == (long)getpid());
        struct stat st;
        CHECK(lstat(af.tmp_path, &st) == 0 && S_ISREG(st.st_mode));
        fs_atomic_abort(&af);
    }
    CHECK(tu_count_prefix(d, ".givt-tmp-") == 0, "fs_atomic_abort left the temporary");
    CHECK(fs_atomic_temp_owner(".givt-tmp-4242-aB3xYz") == 4242);
    CHECK(fs_atomic_temp_owner("dir/.givt-tmp-7-000000") == 7);
    CHECK(fs_atomic_temp_owner("metrics.jsonl.tmp.12345") == 12345);
    CHECK(fs_atomic_temp_owner("a/b.npy.tmp.99") == 99);
    const char *not_ours[] = {"metrics.jsonl", ".givt-tmp-", ".givt-tmp--abcdef", ".givt-tmp-12-abc", ".givt-tmp-12-abcdefg",
                              ".givt-tmp-x1-abcdef", ".givt-tmp-12-ab/def", "x.tmp.", "x.tmp.12a", ".tmp.5", "step_00000004",
                              ".givt-tmp-99999999999-abcdef"};
    for (size_t i = 0; i < sizeof not_ours / sizeof *not_ours; i++)
        CHECK(fs_atomic_temp_owner(not_ours[i]) == 0, "\"%s\" read as pid %ld", not_ours[i], fs_atomic_temp_owner(not_ours[i]));
    tu_rmtree(d);
}

// A FIFO (as /dev/stdout on a pipe) is written through: the reader gets the bytes, and the path is
// still the FIFO afterwards (no temporary renamed over it).
TEST(atomic_write_to_a_fifo_writes_through) {
    char d[256];
    tu_mkdtemp(d, "ioh_fifo");
    const char *fifo = tu_path(d, "pipe");
    CHECK(mkfifo(fifo, 0600) == 0, "%s", strerror(errno));
    int rd = open(fifo, O_RDONLY | O_NONBLOCK);  // a reader, so that opening for writing does not wait
    CHECK(rd >= 0, "%s", strerror(errno));
    CHECK(write_text_atomically(fifo, "hello fifo") == 0, "%s", givt_last_error());
    char buf[64] = {0};
    ssize_t n = rd >= 0 ? read(rd, buf, sizeof buf - 1) : -1;
    CHECK(n == 10 && memcmp(buf, "hello fifo", 10) == 0, "the reader got %zd bytes \"%s\"", n, buf);
    if (rd >= 0) close(rd);
    struct stat st;
    CHECK(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode), "the FIFO was replaced");
    CHECK(tu_count_prefix(d, ".givt-tmp-") == 0 && tu_count_prefix(d, "pipe.") == 0, "a temporary was made");
    tu_rmtree(d);
}

// A character device (a /dev/null made with mknod, so a regression cannot replace the real one) is
// written through and stays a device.
TEST(atomic_write_to_a_character_device_writes_through) {
    char d[256];
    tu_mkdtemp(d, "ioh_chr");
    const char *dev = tu_path(d, "null");
    if (mknod(dev, S_IFCHR | 0666, makedev(1, 3)) != 0) {
        tu_rmtree(d);
        t_skip("mknod of a null device failed (not root, or no CAP_MKNOD): the FIFO test covers write-through");
        return;
    }
    int fd = open(dev, O_WRONLY);
    if (fd < 0) {  // a nodev mount: the device cannot be opened at all
        tu_rmtree(d);
        t_skip("devices cannot be opened on this temporary folder's file system (nodev)");
        return;
    }
    close(fd);
    CHECK(write_text_atomically(dev, "into the void") == 0, "%s", givt_last_error());
    float x[2] = {1, 2};
    int64_t shape[2] = {1, 2};
    CHECK(npy_write_f32(dev, x, 2, shape) == 0, "%s", givt_last_error());
    struct stat st;
    CHECK(lstat(dev, &st) == 0 && S_ISCHR(st.st_mode), "the device was replaced by a regular file");
    CHECK(tu_count_prefix(d, ".givt-tmp-") == 0 && tu_count_prefix(d, "null.") == 0, "a temporary was made");
    tu_rmtree(d);
}

// /dev/fd/N and /proc/self/fd/N (as /dev/stdout redirected to a file) are written through into the
// open file, truncated first; nothing is created in /dev (a missing /dev path is an error).
TEST(atomic_write_through_dev_fd_and_never_into_dev) {
    char d[256];
    tu_mkdtemp(d, "ioh_devfd");
    const char *file = tu_path(d, "redirected");
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0 && write(fd, "old old old", 11) == 11);
    char p[64];
    snprintf(p, sizeof p, "/dev/fd/%d", fd);
    CHECK(write_text_atomically(p, "new") == 0, "%s", givt_last_error());
    size_t n = 0;
    char *t = fs_read_text(file, &n);
    CHECK(t && n == 3 && memcmp(t, "new", 3) == 0, "%s: got %zu bytes", p, n);
    free(t);
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    CHECK(write_text_atomically(p, "newer") == 0, "%s", givt_last_error());
    t = fs_read_text(file, &n);
    CHECK(t && n == 5 && memcmp(t, "newer", 5) == 0, "%s: got %zu bytes", p, n);
    free(t);
    if (fd >= 0) close(fd);
    CHECK(tu_count_prefix(d, ".givt-tmp-") == 0);
    snprintf(p, sizeof p, "/dev/givt-test-absent-%ld", (long)getpid());
    CHECK(write_text_atomically(p, "x") == -1 && tu_error_has(p, "cannot open for writing"), "%s", givt_last_error());
    CHECK(!fs_path_exists(p), "%s was created", p);
    unlink(p);
    tu_rmtree(d);
}

// A directory as the target is refused at open, before any temporary is made.
TEST(atomic_write_refuses_a_directory) {
    char d[256];
    tu_mkdtemp(d, "ioh_dir");
    const char *sub = tu_path(d, "sub");
    CHECK(mkdir(sub, 0755) == 0);
    AtomicFile af;
    int rc = fs_atomic_open(&af, sub);
    if (rc == 0) fs_atomic_abort(&af);
    CHECK(rc == -1 && tu_error_has(sub, "a directory"), "%s", givt_last_error());
    CHECK(tu_count_prefix(d, ".givt-tmp-") == 0 && tu_count_prefix(d, "sub.") == 0, "a temporary was made");
    struct stat st;
    CHECK(stat(sub, &st) == 0 && S_ISDIR(st.st_mode));
    tu_rmtree(d);
}

// A legal 250-character file name works: the temporary's name is short whatever the target's.
TEST(atomic_write_of_a_250_character_name) {
    char d[256];
    tu_mkdtemp(d, "ioh_long");
    char name[251];
    memset(name, 'n', 246);
    memcpy(name + 246, ".npy", 5);
    const char *path = tu_path(d, name);
    float x[4] = {1, -2, 3, -4};
    int64_t shape[2] = {2, 2};
    CHECK(npy_write_f32(path, x, 2, shape) == 0, "%s", givt_last_error());
    NpyFile f;
    float back[4];
    CHECK(npy_open(&f, path) == 0 && npy_read_f32(&f, 0, 4, back) == 0 && memcmp(back, x, sizeof x) == 0, "%s",
          givt_last_error());
    npy_close(&f);
    tu_rmtree(d);
}

// A symlink as the final path to a regular file: the link itself is replaced (documented), the file
// it pointed to keeps its bytes.
TEST(atomic_write_replaces_a_symlink_at_the_final_path) {
    char d[256];
    tu_mkdtemp(d, "ioh_final_link");
    char victim[512];
    snprintf(victim, sizeof victim, "%s/victim", d);
    put_text_file(victim, "precious");
    const char *link = tu_path(d, "out.txt");
    CHECK(symlink(victim, link) == 0);
    CHECK(write_text_atomically(link, "new") == 0, "%s", givt_last_error());
    struct stat st;
    CHECK(lstat(link, &st) == 0 && S_ISREG(st.st_mode));
    size_t n = 0;
    char *v = fs_read_text(victim, &n);
    CHECK(v && n == 8 && memcmp(v, "precious", 8) == 0);
    free(v);
    tu_rmtree(d);
}

// ---- 2. readers refuse FIFOs and cap text -----------------------------------------------------
static int read_ini(const void *path) {
    IniFile ini;
    ini_init(&ini);
    int rc = ini_load(&ini, path);
    ini_free(&ini);
    return rc;
}
static int read_config_json(const void *path) {
    GivtConfig c;
    return hf_read_config_json(path, &c);
}
static int read_npy(const void *path) {
    NpyFile f;
    int rc = npy_open(&f, path);
    npy_close(&f);
    return rc;
}
static int read_labels(const void *path) {
    int32_t *labels = NULL;
    int64_t n;
    int rc = npy_read_labels(path, &labels, &n);
    free(labels);
    return rc;
}
static int read_safetensors(const void *path) {
    StFile f;
    int rc = st_open(&f, path);
    st_close(&f);
    return rc;
}
static int read_digits(const void *path) {
    char out[4200];
    snprintf(out, sizeof out, "%s.out.npy", (const char *)path);
    return digits_to_npy(path, out, NULL, 2, -1, NULL);
}
static int read_text(const void *path) {
    char *t = fs_read_text(path, NULL);
    free(t);
    return t ? 0 : -1;
}

static const struct {
    const char *what;
    BoundedFn fn;
} k_readers[] = {
    {"INI config", read_ini},       {"config.json", read_config_json}, {".npy data", read_npy},
    {".npy labels", read_labels},   {"safetensors", read_safetensors}, {"digits.bin", read_digits},
    {"fs_read_text", read_text},
};

// A FIFO with no writer given as any input is refused at once ("not a regular file"), not waited on.
TEST(readers_refuse_a_fifo_without_blocking) {
    char d[256];
    tu_mkdtemp(d, "ioh_rfifo");
    const char *fifo = tu_path(d, "input");
    CHECK(mkfifo(fifo, 0600) == 0, "%s", strerror(errno));
    for (size_t i = 0; i < sizeof k_readers / sizeof *k_readers; i++) {
        char msg[4096];
        int rc = run_bounded(k_readers[i].fn, fifo, 5, msg, sizeof msg);
        CHECK(rc == -1 && strstr(msg, fifo) && strstr(msg, "not a regular file (a FIFO)"), "%s on a FIFO: %s",
              k_readers[i].what, msg);
    }
    struct stat st;
    CHECK(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode));
    tu_rmtree(d);
}

// Character devices (/dev/zero: endless) and directories are refused the same way.
TEST(readers_refuse_devices_and_directories) {
    const char *paths[] = {"/dev/zero", "/dev/null", "/"};
    for (size_t p = 0; p < 3; p++) {
        if (!fs_path_exists(paths[p])) continue;
        for (size_t i = 0; i < sizeof k_readers / sizeof *k_readers; i++) {
            char msg[4096];
            int rc = run_bounded(k_readers[i].fn, paths[p], 5, msg, sizeof msg);
            CHECK(rc == -1 && strstr(msg, "not a regular file"), "%s on %s: %s", k_readers[i].what, paths[p], msg);
        }
    }
}

// A huge INI or config.json (here 100 MiB, sparse) is refused from its size, naming the limit,
// without reading or allocating it; the limit holds exactly at its boundary.
TEST(text_reads_have_a_size_limit) {
    char d[256];
    tu_mkdtemp(d, "ioh_big");
    const char *big = tu_path(d, "huge.ini");
    int fd = open(big, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0 && ftruncate(fd, (off_t)100 << 20) == 0, "%s", strerror(errno));
    if (fd >= 0) close(fd);
    char msg[4096];
    CHECK(run_bounded(read_ini, big, 20, msg, sizeof msg) == -1 && strstr(msg, big) && strstr(msg, "16.0 MiB"),
          "INI of 100 MiB: %s", msg);
    CHECK(run_bounded(read_config_json, big, 20, msg, sizeof msg) == -1 && strstr(msg, "16.0 MiB"),
          "config.json of 100 MiB: %s", msg);
    const char *small = tu_path(d, "ten.txt");
    put_text_file(small, "0123456789");
    size_t n = 0;
    char *t = fs_read_text_max(small, 10, &n);
    CHECK(t && n == 10 && t[10] == '\0' && memcmp(t, "0123456789", 10) == 0, "%s", givt_last_error());
    free(t);
    CHECK(fs_read_text_max(small, 9, &n) == NULL && tu_error_has(small, "limit"), "%s", givt_last_error());
    const char *empty = tu_path(d, "empty.txt");
    put_text_file(empty, "");
    t = fs_read_text_max(empty, 0, &n);
    CHECK(t && n == 0 && t[0] == '\0', "%s", givt_last_error());
    free(t);
    tu_rmtree(d);
}

// ---- 3. safetensors read with pread -----------------------------------------------------------
typedef struct {
    const char *path;
    off_t cut_to;  // truncate the file to this size after st_open (-1: no cut)
    const char *tensor;
    int64_t numel;
    int32_t dtype_check;  // the dtype st_open must report (ST_F32, ST_F16)
} CutCase;

// st_open, then the file is truncated, then the tensor is loaded: must fail with a message.
static int open_cut_load(const void *arg) {
    const CutCase *c = arg;
    StFile f;
    if (st_open(&f, c->path)) return -1;
    int i = st_find(&f, c->tensor);
    if (i < 0 || (int32_t)f.tensors[i].dtype != c->dtype_check) {
        st_close(&f);
        return givt_fail("setup: tensor %s missing or of another dtype", c->tensor);
    }
    if (c->cut_to >= 0 && truncate(c->path, c->cut_to) != 0) {
        st_close(&f);
        return givt_fail("setup: truncate: %s", strerror(errno));
    }
    float *dst = xmalloc((size_t)c->numel * sizeof(float));
    int64_t shape[1] = {c->numel};
    int rc = st_load_f32(&f, c->tensor, 1, shape, dst);
    free(dst);
    st_close(&f);
    return rc;
}

// A file truncated between st_open and st_load_f32 (float32 and float16 data) is a one-line error
// naming the file and the tensor, never a SIGBUS.
TEST(safetensors_truncated_while_open_is_an_error) {
    char d[256];
    tu_mkdtemp(d, "ioh_st");
    const char *path = tu_path(d, "m.safetensors");
    enum { N = 1 << 16 };  // 256 KiB of data: the cut leaves whole pages past the end of the file
    float *a = xmalloc(N * sizeof(float));
    for (int i = 0; i < N; i++) a[i] = (float)i;
    StWriteTensor ts[] = {{"w", 1, {N}, a}};
    CHECK(st_write(path, ts, 1, NULL, 0) == 0, "%s", givt_last_error());
    char msg[4096];
    CutCase ok = {path, -1, "w", N, ST_F32};
    CHECK(run_bounded(open_cut_load, &ok, 10, msg, sizeof msg) == 0, "uncut: %s", msg);
    CutCase cut = {path, 4096, "w", N, ST_F32};
    int rc = run_bounded(open_cut_load, &cut, 10, msg, sizeof msg);
    CHECK(rc == -1 && strstr(msg, path) && strstr(msg, "tensor \"w\"") && strstr(msg, "truncated"), "F32: %s", msg);
    CHECK(printable(msg), "%s", msg);

    // float16: the header written by hand, the data read in chunks
    char header[128];
    int hl = snprintf(header, sizeof header, "{\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%d]}}", N,
                      2 * N);
    size_t total = 8 + (size_t)hl + 2 * (size_t)N;
    unsigned char *raw = xcalloc(total, 1);
    for (int i = 0; i < 8; i++) raw[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(raw + 8, header, (size_t)hl);
    const char *p16 = tu_path(d, "h.safetensors");
    tu_put_bytes(p16, raw, total);
    free(raw);
    CutCase ok16 = {p16, -1, "h", N, ST_F16};
    CHECK(run_bounded(open_cut_load, &ok16, 10, msg, sizeof msg) == 0, "uncut F16: %s", msg);
    CutCase cut16 = {p16, 8192, "h", N, ST_F16};
    rc = run_bounded(open_cut_load, &cut16, 10, msg, sizeof msg);
    CHECK(rc == -1 && strstr(msg, p16) && strstr(msg, "tensor \"h\"") && strstr(msg, "truncated"), "F16: %s", msg);
    free(a);
    tu_rmtree(d);
}

// A file whose header is valid but whose data is cut short is refused at st_open.
TEST(safetensors_data_cut_short_is_an_error) {
    char d[256];
    tu_mkdtemp(d, "ioh_st_short");
    const char *path = tu_path(d, "m.safetensors");
    float a[64] = {0};
    StWriteTensor ts[] = {{"w", 1, {64}, a}};
    CHECK(st_write(path, ts, 1, NULL, 0) == 0, "%s", givt_last_error());
    struct stat st;
    CHECK(stat(path, &st) == 0 && truncate(path, st.st_size - 100) == 0);
    char msg[4096];
    CutCase c = {path, -1, "w", 64, ST_F32};
    CHECK(run_bounded(open_cut_load, &c, 10, msg, sizeof msg) == -1 && strstr(msg, path) && strstr(msg, "truncated"),
          "%s", msg);
    tu_rmtree(d);
}

// ---- 4. eps range ------------------------------------------------------------------------------
// eps = 1e300 overflows float32 (the std, the variance, every loss): refused by config.json and INI.
TEST(config_eps_has_an_upper_bound) {
    char d[256];
    tu_mkdtemp(d, "ioh_eps");
    const char *path = tu_path(d, "config.json");
    GivtConfig c;
    put_text_file(path, "{\"eps\": 1e300}");
    CHECK(hf_read_config(d, &c) == -1 && tu_error_has(path, "eps") && tu_error_has("in (0, 1]", NULL), "%s",
          givt_last_error());
    put_text_file(path, "{\"eps\": 1}");
    CHECK(hf_read_config(d, &c) == 0 && c.eps == 1.0, "%s", givt_last_error());
    put_text_file(path, "{\"eps\": 1e-8}");
    CHECK(hf_read_config(d, &c) == 0, "%s", givt_last_error());
    TrainConfig tc;
    CHECK(train_config_load_string(&tc, "[model]\neps = 1e300\n", "x.ini", 0, NULL) == -1 &&
              tu_error_has("x.ini:2: [model] eps", "in (0, 1]"),
          "%s", givt_last_error());
    tu_rmtree(d);
}

// ---- 5. digits header ---------------------------------------------------------------------------
static int convert_digits(const void *path) {
#if !defined(__SANITIZE_ADDRESS__)
    // A regression would allocate what the header asks (GiB): let the child fail at that instead.
    struct rlimit rl = {(rlim_t)4 << 30, (rlim_t)4 << 30};
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f && fscanf(f, "%lu", &pages) == 1) rl.rlim_cur = rl.rlim_max = (rlim_t)pages * 4096 + ((rlim_t)1 << 30);
    if (f) fclose(f);
    setrlimit(RLIMIT_AS, &rl);
#endif
    char out[4200];
    snprintf(out, sizeof out, "%s.npy", (const char *)path);
    return digits_to_npy(path, out, NULL, 2, -1, NULL);
}

// A 221-byte file whose header claims 2^24 images of 24x24 (9.7 GB) is an error from the file's size,
// before anything is allocated.
TEST(digits_lying_header_fails_before_allocating) {
    char d[256];
    tu_mkdtemp(d, "ioh_digits");
    unsigned char b[221] = "GIVTDIG1";
    uint32_t hdr[4] = {1u << 24, 24, 24, 16};
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 4; i++) b[8 + 4 * k + i] = (unsigned char)(hdr[k] >> (8 * i));
    const char *path = tu_path(d, "lying.bin");
    tu_put_bytes(path, b, sizeof b);
    char msg[4096];
    int rc = run_bounded(convert_digits, path, 20, msg, sizeof msg);
    CHECK(rc == -1 && strstr(msg, path) && strstr(msg, "truncated") && strstr(msg, "the file has 197"), "%s", msg);
    b[8] = 1, b[9] = b[10] = b[11] = 0;  // 1 image of 24x24 + its label: 577 bytes, the file has 197
    tu_put_bytes(path, b, sizeof b);
    CHECK(run_bounded(convert_digits, path, 20, msg, sizeof msg) == -1 && strstr(msg, "needs 577 bytes"), "%s", msg);
    tu_rmtree(d);
}

// ---- 6. control bytes in messages -------------------------------------------------------------
TEST(givt_fail_escapes_control_bytes) {
    givt_fail("a\nb\tc\rd\x1b[31me\x7f\x01 caf\xc3\xa9 back\\slash");
    CHECK(strcmp(givt_last_error(), "a\\nb\\tc\\rd\\x1b[31me\\x7f\\x01 caf\xc3\xa9 back\\slash") == 0, "%s",
          givt_last_error());
    char copy[256];
    snprintf(copy, sizeof copy, "%s", givt_last_error());
    givt_fail("%s", givt_last_error());  // an escaped message passes through unchanged
    CHECK(strcmp(givt_last_error(), copy) == 0, "%s", givt_last_error());
    givt_fail("plain: %d", 7);
    CHECK(strcmp(givt_last_error(), "plain: 7") == 0);
}

// A newline and an ESC byte reaching an error message from a safetensors header, a config.json and
// an INI file come out escaped: the message is one printable line.
TEST(file_bytes_in_error_messages_are_escaped) {
    char d[256];
    tu_mkdtemp(d, "ioh_esc");
    const char *st = tu_path(d, "x.safetensors");
    const char *h = "{\"a\\nb\\u001b[2J\":{\"dtype\":\"Q\\n\\u001b\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t hl = strlen(h);
    unsigned char *raw = xcalloc(8 + hl + 4, 1);
    raw[0] = (unsigned char)hl;
    memcpy(raw + 8, h, hl);
    tu_put_bytes(st, raw, 8 + hl + 4);
    free(raw);
    StFile f;
    CHECK(st_open(&f, st) == -1 && tu_error_has(st, "unknown dtype") && printable(givt_last_error()) &&
              strstr(givt_last_error(), "a\\nb\\x1b[2J"),
          "%s", givt_last_error());
    st_close(&f);

    const char *cj = tu_path(d, "config.json");
    put_text_file(cj, "{\"eps\": \"1\\n\\u001b[2Jx\"}");
    GivtConfig c;
    CHECK(hf_read_config_json(cj, &c) == -1 && tu_error_has(cj, "eps") && printable(givt_last_error()), "%s",
          givt_last_error());

    const char *ini = tu_path(d, "x.ini");
    put_text_file(ini, "[model]\nhidden\x1b[2J_dim = 8\n");
    IniFile in;
    ini_init(&in);
    CHECK(ini_load(&in, ini) == -1 && tu_error_has(ini, NULL) && printable(givt_last_error()), "%s",
          givt_last_error());
    ini_free(&in);
    put_text_file(ini, "[model]\neps = \"1\x1b[2J\r\"\n");
    TrainConfig tc;
    CHECK(train_config_load(&tc, ini, 0, NULL) == -1 && tu_error_has(ini, "eps") && printable(givt_last_error()),
          "%s", givt_last_error());
    tu_rmtree(d);
}
