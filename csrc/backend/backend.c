// backend: the registry of backends (names, availability, opening with the op table checked), the
// precision names, and what every backend shares (memory info, the op profile).
#define _POSIX_C_SOURCE 200809L
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ops.h"
#include "util.h"


static int g_device_ordinal;
void backend_set_device_ordinal(int ordinal) { g_device_ordinal = ordinal < 0 ? 0 : ordinal; }
int backend_device_ordinal(void) { return g_device_ordinal; }

// ---- precision ------------------------------------------------------------------------------
const char *const backend_precision_names[] = {"no", "bf16", NULL};
_Static_assert(PRECISION_NO == 0 && PRECISION_BF16 == 1, "backend_precision_names follows Precision");

int backend_precision_parse(const char *text, Precision *p) {
    for (int i = 0; backend_precision_names[i]; i++) {
        if (text && !strcmp(text, backend_precision_names[i])) {
            *p = (Precision)i;
            return 0;
        }
    }
    return givt_fail("precision \"%s\": expected no or bf16", text ? text : "");
}

const char *backend_precision_name(Precision p) {
    return p == PRECISION_NO || p == PRECISION_BF16 ? backend_precision_names[p] : "?";
}

int backend_precision_note(const Backend *be, char *buf, size_t n) {
    if (be->precision != PRECISION_BF16 || be->compute == DTYPE_BF16) return 0;
    snprintf(buf, n, "the %s backend computes in %s", be->name, dtype_name(be->compute));
    return 1;
}

// ---- the op table ---------------------------------------------------------------------------
// The lists of ops.h name every member of GivtOps once: as many names as members (all function
// pointers) and their offsets 0, 1, 2, ... pointers in some order (the sum of the offsets).
#define OPS_COUNT(op) +1
#define OPS_OFFSET(op) +offsetof(GivtOps, op)
enum { NUM_OPS = 0 GIVT_OPS_REQUIRED(OPS_COUNT) GIVT_OPS_OPTIONAL(OPS_COUNT) };
_Static_assert(sizeof(GivtOps) == NUM_OPS * sizeof(void (*)(void)), "GIVT_OPS_* lists every member of GivtOps");
_Static_assert(0 GIVT_OPS_REQUIRED(OPS_OFFSET) GIVT_OPS_OPTIONAL(OPS_OFFSET) ==
                   (size_t)NUM_OPS * (NUM_OPS - 1) / 2 * sizeof(void (*)(void)),
               "GIVT_OPS_* name each member of GivtOps once");
#undef OPS_COUNT
#undef OPS_OFFSET

int backend_check_ops(const GivtOps *ops, const char *name) {
#define OPS_CHECK(op) \
    if (!ops->op) return givt_fail("backend %s: op %s is not implemented", name, #op);
    GIVT_OPS_REQUIRED(OPS_CHECK)
#undef OPS_CHECK
    return 0;
}

// ---- the registry ---------------------------------------------------------------------------
// In the order "auto" tries them. A backend whose code is not built in says why it is unavailable.
typedef struct {
    const char *name;
    int (*available)(char *why, size_t n);
    Backend *(*open)(Precision p);
} BackendEntry;

static int cpu_available(char *why, size_t n) {
    (void)why, (void)n;
    return 1;
}

#ifdef GIVT_WITH_CUDA
int backend_cuda_available(char *why, size_t n);
Backend *backend_cuda_open(Precision p);
#else
static int backend_cuda_available(char *why, size_t n) {
    snprintf(why, n, "this build has no CUDA backend");
    return 0;
}
static Backend *backend_cuda_open(Precision p) {
    (void)p;
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

const char *backend_device_lookup(const char *text) {
    if (!strcasecmp(text, "auto")) return "auto";
    for (int i = 0; i < NBACKENDS; i++)
        if (!strcasecmp(text, k_backends[i].name)) return k_backends[i].name;
    return NULL;
}

void backend_device_names(char *buf, size_t n, const char *sep) {
    snprintf(buf, n, "auto");
    for (int i = 0; i < NBACKENDS; i++) {
        size_t len = strlen(buf);
        snprintf(buf + len, n - len, "%s%s", sep, k_backends[i].name);
    }
}

// Opens entry e, records the precision asked and checks its op table.
static Backend *open_entry(const BackendEntry *e, Precision p) {
    Backend *be = e->open(p);
    if (!be) return NULL;
    be->precision = p;
    if (backend_check_ops(be->ops, be->name) == 0) return be;
    if (be->ops->close) be->ops->close(be);
    free(be);
    return NULL;
}

const char *backend_availability_text(const char *name, char *buf, size_t n) {
    char why[256] = "";
    int ok = backend_available(name, why, sizeof why);
    // 2: the CUDA kernels emulated on the CPU (make emu, the tests): correct, and very slow
    if (ok == 2) snprintf(buf, n, "available, emulated on the CPU (tiny models only)");
    else if (ok) snprintf(buf, n, "available");
    else snprintf(buf, n, "unavailable: %s", why);
    return buf;
}

Backend *backend_open(const char *device, Precision p) {
    if (p != PRECISION_NO && p != PRECISION_BF16) {
        givt_fail("precision %d: expected no or bf16", (int)p);
        return NULL;
    }
    char why[256];
    if (!strcmp(device, "auto")) {
        // available() == 2: an emulated device (the CUDA emulation of the tests), which auto skips
        for (int i = 0; i < NBACKENDS; i++) {
            int ok = k_backends[i].available(why, sizeof why);
            if (ok == 1) return open_entry(&k_backends[i], p);
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
        char names[128];
        backend_device_names(names, sizeof names, ", ");
        givt_fail("device \"%s\": unknown (known: %s)", device, names);
        return NULL;
    }
    if (!e->available(why, sizeof why)) {
        givt_fail("device %s: not available: %s", device, why);
        return NULL;
    }
    return open_entry(e, p);
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

void backend_stats(Backend *be, BackendStats *out) {
    memset(out, 0, sizeof *out);
    if (be->ops->stats) be->ops->stats(be, out);
}

int backend_graph_launch(Backend *be, BackendGraph **graph, void (*record)(void *user), void *user) {
    if (!*graph) {
        if (!be->ops->graph_begin) return givt_fail("the %s backend has no graphs (CUDA only)", be->name);
        if (be->ops->graph_begin(be) != 0) return -1;
        record(user);
        *graph = be->ops->graph_end(be);
        if (!*graph) return -1;
    }
    be->ops->graph_launch(be, *graph);
    return 0;
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
