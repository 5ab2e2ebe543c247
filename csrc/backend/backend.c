// backend: the registry of backends, and what every backend shares (memory info, the op profile).
#define _POSIX_C_SOURCE 200809L
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "util.h"

size_t dtype_size(DType t) { return t == DTYPE_BF16 ? 2 : 4; }
const char *dtype_name(DType t) { return t == DTYPE_BF16 ? "bf16" : "float32"; }

static int g_device_ordinal;
void backend_set_device_ordinal(int ordinal) { g_device_ordinal = ordinal < 0 ? 0 : ordinal; }
int backend_device_ordinal(void) { return g_device_ordinal; }

// ---- the registry ---------------------------------------------------------------------------
// In the order "auto" tries them. A backend whose code is not built in says why it is unavailable.
typedef struct {
    const char *name;
    int (*available)(char *why, size_t n);
    Backend *(*open)(const char *precision);
} BackendEntry;

static int cpu_available(char *why, size_t n) {
    (void)why, (void)n;
    return 1;
}

#ifdef GIVT_WITH_CUDA
int backend_cuda_available(char *why, size_t n);
Backend *backend_cuda_open(const char *precision);
#else
static int backend_cuda_available(char *why, size_t n) {
    snprintf(why, n, "this build has no CUDA backend");
    return 0;
}
static Backend *backend_cuda_open(const char *precision) {
    (void)precision;
    return NULL;
}
#endif

static const BackendEntry k_backends[] = {
    {"cuda", backend_cuda_available, backend_cuda_open},
    {"cpu", cpu_available, backend_cpu_open},
};
#define NBACKENDS ((int)(sizeof k_backends / sizeof k_backends[0]))

int backend_registry_count(void) { return NBACKENDS; }
const char *backend_registry_name(int i) { return i >= 0 && i < NBACKENDS ? k_backends[i].name : NULL; }

static const BackendEntry *find_backend(const char *name) {
    for (int i = 0; i < NBACKENDS; i++)
        if (!strcmp(k_backends[i].name, name)) return &k_backends[i];
    return NULL;
}

int backend_available(const char *name, char *why, size_t n) {
    const BackendEntry *e = find_backend(name);
    if (!e) {
        snprintf(why, n, "no such backend");
        return 0;
    }
    return e->available(why, n);
}

Backend *backend_open(const char *device, const char *precision) {
    if (!precision) precision = "no";
    if (strcmp(precision, "no") != 0 && strcmp(precision, "bf16") != 0) {
        givt_fail("precision \"%s\": expected no or bf16", precision);
        return NULL;
    }
    char why[256];
    if (!strcmp(device, "auto")) {
        // available() == 2: an emulated device (the CUDA emulation of the tests), which auto skips
        for (int i = 0; i < NBACKENDS; i++) {
            int ok = k_backends[i].available(why, sizeof why);
            if (ok == 1) return k_backends[i].open(precision);
#ifdef GIVT_WITH_CUDA
            if (!ok && i + 1 < NBACKENDS)  // one line: what auto skipped and why
                fprintf(stderr, "note: device auto: %s not available: %s; trying %s\n", k_backends[i].name, why,
                        k_backends[i + 1].name);
#endif
        }
        givt_fail("device auto: no backend is available");
        return NULL;
    }
    const BackendEntry *e = find_backend(device);
    if (!e) {
        char names[128] = "";
        for (int i = 0; i < NBACKENDS; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", k_backends[i].name);
        givt_fail("device \"%s\": unknown (known: auto, %s)", device, names);
        return NULL;
    }
    if (!e->available(why, sizeof why)) {
        givt_fail("device %s: not available: %s", device, why);
        return NULL;
    }
    return e->open(precision);
}

void backend_close(Backend *be) {
    if (!be) return;
    backend_profile_stop(be);
    be->ops->close(be);
    free(be);
}

void backend_mem_info(Backend *be, size_t *free_bytes, size_t *total_bytes) {
    be->ops->mem_info(be, free_bytes, total_bytes);
}

void backend_synchronize(Backend *be) { be->ops->synchronize(be); }

// ---- per-op profile -----------------------------------------------------------------------------
#define PROF_MAX 64
typedef struct {
    const char *name;  // an op name (a string literal of the model code)
    double seconds;
    long calls;
    double flops, bytes;  // the work of all its calls
} ProfEntry;

struct BackendProfile {
    ProfEntry e[PROF_MAX];
    int n;
};

void backend_profile_start(Backend *be) {
    if (!be->profile) be->profile = xcalloc(1, sizeof *be->profile);
}

void backend_profile_stop(Backend *be) {
    free(be->profile);
    be->profile = NULL;
}

void backend_range_push(Backend *be, const char *name) {
    if (be->ops->range_push) be->ops->range_push(be, name);
}

void backend_range_pop(Backend *be) {
    if (be->ops->range_pop) be->ops->range_pop(be);
}

double backend_op_begin(Backend *be, const char *name) {
    if (be->ops->range_push) be->ops->range_push(be, name);
    if (!be->profile) return 0.0;
    backend_synchronize(be);
    return util_time_now_s();
}

void backend_op_end(Backend *be, const char *name, double t0, double flops, double bytes) {
    struct BackendProfile *p = be->profile;
    if (p) backend_synchronize(be);
    if (be->ops->range_pop) be->ops->range_pop(be);
    if (!p) return;
    double dt = util_time_now_s() - t0;
    int i = 0;
    while (i < p->n && strcmp(p->e[i].name, name) != 0) i++;
    if (i == p->n) {
        if (p->n == PROF_MAX) return;
        p->e[p->n++].name = name;
    }
    p->e[i].seconds += dt;
    p->e[i].calls++;
    p->e[i].flops += flops;
    p->e[i].bytes += bytes;
}

static int prof_cmp(const void *a, const void *b) {
    double x = ((const ProfEntry *)a)->seconds, y = ((const ProfEntry *)b)->seconds;
    return (x < y) - (x > y);
}

void backend_profile_print(Backend *be, int steps, double seconds_per_step) {
    struct BackendProfile *p = be->profile;
    if (!p || steps < 1) return;
    qsort(p->e, (size_t)p->n, sizeof p->e[0], prof_cmp);
    double total = 0;
    for (int i = 0; i < p->n; i++) total += p->e[i].seconds;
    printf("%-28s %10s %8s %7s %12s\n", "op (per step)", "ms", "calls", "share", "rate");
    for (int i = 0; i < p->n; i++) {
        const ProfEntry *e = &p->e[i];
        char rate[32] = "";
        double s = e->seconds > 0 ? e->seconds : 1e-30;
        if (e->flops > 0) snprintf(rate, sizeof rate, "%.1f GFLOP/s", e->flops / s / 1e9);
        else if (e->bytes > 0) snprintf(rate, sizeof rate, "%.1f GB/s", e->bytes / s / 1e9);
        printf("%-28s %10.3f %8ld %6.1f%% %12s\n", e->name, 1e3 * e->seconds / steps, e->calls / steps,
               100.0 * e->seconds / (total > 0 ? total : 1), rate);
    }
    printf("%-28s %10.3f (step %.3f ms; the rest is outside the ops)\n", "sum of ops", 1e3 * total / steps,
           1e3 * seconds_per_step);
}
