// testutil: helpers shared by the tests (see testutil.h).
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs.h"
#include "rng.h"
#include "util.h"

void tu_mkdtemp(char *dir, const char *tag) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, 256, "%s/givt_%s_XXXXXX", base && *base ? base : "/tmp", tag);
    if (!mkdtemp(dir)) givt_die("mkdtemp %s failed", dir);
}

void tu_rmtree(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p;
        if (asprintf(&p, "%s/%s", path, e->d_name) < 0) givt_die("out of memory");
        tu_rmtree(p);
        free(p);
    }
    closedir(d);
    rmdir(path);
}

const char *tu_path(const char *dir, const char *name) {
    static char buf[8][PATH_MAX];
    static int k;
    k = (k + 1) % 8;
    int n = snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof buf[k]) givt_die("path %s/%s is too long", dir, name);
    return buf[k];
}

void tu_put_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fputs(text, fp) < 0 || fclose(fp) != 0) givt_die("cannot write %s", path);
}

void tu_put_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, n, fp) != n || fclose(fp) != 0) givt_die("cannot write %s", path);
}

void tu_copy_file(const char *src, const char *dst) {
    size_t n;
    char *bytes = fs_read_text(src, &n);
    if (!bytes) givt_die("cannot read %s: %s", src, givt_last_error());
    tu_put_bytes(dst, bytes, n);
    free(bytes);
}

int tu_same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = fs_read_text(a, &na), *y = fs_read_text(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

int tu_count_prefix(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix))) n++;
    closedir(d);
    return n;
}

int tu_error_has(const char *a, const char *b) {
    const char *m = givt_last_error();
    return strstr(m, a) && (!b || strstr(m, b)) && !strchr(m, '\n');
}

Backend *tu_open_cpu(void) {
    Backend *be = backend_open("cpu", PRECISION_NO);
    if (!be) givt_die("backend_open(cpu): %s", givt_last_error());
    if (be->compute != DTYPE_F32) givt_die("the CPU backend computes in %s, not float32", dtype_name(be->compute));
    return be;
}

void tu_tiny_config(GivtConfig *c) {
    givt_config_default(c);
    c->input_dim = 4;
    c->hidden_dim = 8;
    c->intermediate_dim = 12;
    c->num_heads = 2;
    c->num_layers = 2;
    c->block_size = 16;
}

void tu_random_model(GivtModel *m, const GivtConfig *cfg, Backend *be, uint64_t seed) {
    if (model_create(m, cfg, be) != 0) givt_die("%s", givt_last_error());
    Rng r;
    rng_seed(&r, seed);
    float *h = xmalloc(m->table.total * sizeof(float));
    for (size_t i = 0; i < m->table.total; i++) h[i] = (float)(0.3 * rng_normal(&r));
    model_weights_upload(m, &m->w, h);
    free(h);
}

int tu_program_path(char *exe, size_t n, const char *prog) {
    const char *bin = getenv("GIVT_BIN_DIR");
    snprintf(exe, n, "%s/%s", bin && *bin ? bin : ".", prog);
    return fs_path_exists(exe);
}

pid_t tu_spawn_logged(char *const argv[], const char *log, int threads, int *err) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int n_env = 0;
    while (environ[n_env]) n_env++;
    char **envp = xcalloc((size_t)n_env + 2, sizeof *envp), omp[32];
    int k = 0;
    for (int i = 0; i < n_env; i++)
        if (strncmp(environ[i], "OMP_NUM_THREADS=", 16) != 0) envp[k++] = environ[i];
    snprintf(omp, sizeof omp, "OMP_NUM_THREADS=%d", threads);
    envp[k] = omp;
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, envp);
    free(envp);
    posix_spawn_file_actions_destroy(&fa);
    if (err) *err = rc;
    return rc == 0 ? pid : -1;
}

int tu_wait_exit_timed(pid_t pid, double timeout_s, double *took) {
    int status = 0;
    double t0 = util_time_now_s();
    for (; util_time_now_s() - t0 < timeout_s; usleep(10000)) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (took) *took = util_time_now_s() - t0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (r < 0) return -1;
    }
    kill(-pid, SIGKILL);  // its process group, when it leads one (an mpirun job and its ranks)
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    if (took) *took = timeout_s;
    return -2;
}

int tu_wait_exit(pid_t pid, double timeout_s) { return tu_wait_exit_timed(pid, timeout_s, NULL); }
