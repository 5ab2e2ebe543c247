// cuda_emu: the CPU emulation of CUDA (see cuda_emu.h): the launch scheduler (blocks one at a time on
// the calling OS thread, the threads of a block as ucontext fibers), barriers, warp collectives,
// shared memory poisoning and the runtime API's memory, stream, event and device functions. When the
// profiler is on (emu_profile.h: GIVT_EMU_PROFILE with instrumented kernels) it tells it where each
// launch's memory lies and when blocks, barriers, warp collectives and WMMA operations happen.
#include "cuda_emu.h"
#include "elf_symbols.h"
#include "emu_profile.h"

#include <elf.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

// the cudaMalloc allocations, sorted (for the profiler; defined with the runtime API below)
static void snapshot_allocations(std::vector<givt_emu::prof::Range> &out);
// is [p, p + n) inside one cudaMalloc allocation? (cp.async's source; defined with the runtime API)
static bool emu_in_device_memory(const void *p, size_t n);

namespace givt_emu {

thread_local const uint3 *t_tid;
thread_local uint3 t_blockIdx;
thread_local dim3 t_blockDim, t_gridDim;

namespace {

enum State { RUN, AT_BARRIER, AT_WARP, DONE };

struct CpPending {  // a cp.async not yet landed
    void *dst;
    const void *src;
    unsigned group;  // the group it belongs to (the thread's open group when issued)
};

struct Fiber {
    uint3 tid;
    int index, lane;
    State state;
    ucontext_t ctx;
    void *stack;
    void *fake_stack;  // ASan's
    const char *file;  // where it waits
    int line;
    // a warp collective
    WarpOp op;
    const char *op_name;
    unsigned mask;
    uint64_t bits, result;
    int arg, width;
    CollectiveFn coll;  // W_COLLECTIVE: the operation and this lane's part of it
    void *coll_arg;
    // cp.async: the pending copies, the groups committed so far, the landing moments' random state
    std::vector<CpPending> cp;
    unsigned cp_groups;
    uint64_t cp_rng;
};

struct Launch {
    const char *kernel, *file;
    int line;
    BlockFn fn;
    void *ctx;
    unsigned char *smem;
    size_t smem_bytes;
    int nthreads;
    Order order;
    uint64_t seed;
    unsigned phase;
    unsigned char wmma_map[3][256];  // matrix_a, matrix_b, accumulator: lane * 8 + i -> 16 * row + col
};

// state of the calling OS thread (launches on several OS threads at once are serialised)
std::mutex g_launch_mutex;
thread_local Launch *t_launch;
thread_local Fiber *t_cur;
thread_local std::vector<Fiber> *t_fibers;
thread_local ucontext_t t_sched;
[[maybe_unused]] thread_local void *t_sched_fake_stack;
[[maybe_unused]] thread_local const void *t_sched_stack_bottom;
[[maybe_unused]] thread_local size_t t_sched_stack_size;
thread_local bool t_abandon;
thread_local bool t_in_fiber;  // running on a fiber's stack (not the scheduler's)

Order g_order = ORDER_CYCLE;
bool g_order_set = false;
uint64_t g_seed = 12345;
unsigned long long g_launches, g_threads;
int g_record;
std::string g_error;
cudaError_t g_last_error = cudaSuccess;

// fiber stacks: one mapping, a PROT_NONE guard page below each stack
size_t g_stack_bytes;
unsigned char *g_stacks;
int g_nstacks;

void init_order_from_env() {
    if (g_order_set) return;
    g_order_set = true;
    const char *o = getenv("GIVT_EMU_ORDER"), *s = getenv("GIVT_EMU_SEED");
    if (s && *s) g_seed = strtoull(s, NULL, 0);
    if (!o || !*o || !strcmp(o, "cycle")) return;
    if (!strcmp(o, "forward")) g_order = ORDER_FORWARD;
    else if (!strcmp(o, "reverse")) g_order = ORDER_REVERSE;
    else if (!strcmp(o, "random")) g_order = ORDER_RANDOM;
    else {
        fprintf(stderr, "cuda_emu: GIVT_EMU_ORDER=%s: expected forward, reverse, random or cycle\n", o);
        exit(2);
    }
}

uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void switch_to_scheduler_forever();
void cp_land_random(struct Fiber *f);
void cp_land(struct Fiber *f, unsigned below_group, bool all);

// An error in a kernel: the message names the kernel, its launch site, the block and (in a fiber)
// the thread. Aborts, or records and abandons the launch.
__attribute__((format(printf, 1, 2))) void kernel_error(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char full[1600];
    Launch *L = t_launch;
    int n = snprintf(full, sizeof full, "cuda_emu: kernel %s (launched at %s:%d), block (%u,%u,%u)",
                     L ? L->kernel : "?", L ? L->file : "?", L ? L->line : 0, t_blockIdx.x, t_blockIdx.y,
                     t_blockIdx.z);
    if (t_cur && n > 0 && (size_t)n < sizeof full)
        n += snprintf(full + n, sizeof full - n, ", thread (%u,%u,%u)", t_cur->tid.x, t_cur->tid.y, t_cur->tid.z);
    if (n > 0 && (size_t)n < sizeof full) snprintf(full + n, sizeof full - n, ": %s", msg);
    if (!g_record) {
        fprintf(stderr, "%s\n", full);
        fflush(stderr);
        abort();
    }
    if (g_error.empty()) g_error = full;
    t_abandon = true;
    if (t_in_fiber) switch_to_scheduler_forever();
}

// ---- fibers ----------------------------------------------------------------------------------
void ensure_stacks(int n) {
    if (n <= g_nstacks) return;
    if (g_stacks) munmap(g_stacks, (size_t)g_nstacks * (g_stack_bytes + 4096));
    if (!g_stack_bytes) {
        const char *kb = getenv("GIVT_EMU_STACK_KB");
        g_stack_bytes = (size_t)(kb && atoi(kb) > 0 ? atoi(kb) : EMU_ASAN ? 512 : 128) * 1024;
    }
    size_t total = (size_t)n * (g_stack_bytes + 4096);
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "cuda_emu: cannot map %zu bytes of fiber stacks\n", total);
        abort();
    }
    g_stacks = (unsigned char *)p;
    g_nstacks = n;
    for (int i = 0; i < n; i++) mprotect(g_stacks + (size_t)i * (g_stack_bytes + 4096), 4096, PROT_NONE);
}

void *stack_of(int i) { return g_stacks + (size_t)i * (g_stack_bytes + 4096) + 4096; }

// scheduler -> fiber f
void enter(Fiber *f) {
    t_cur = f;
    t_tid = &f->tid;
    t_in_fiber = true;
    if (prof::g_on) prof::t_fiber = f->index;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(&t_sched_fake_stack, f->stack, g_stack_bytes);
#endif
    swapcontext(&t_sched, &f->ctx);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(t_sched_fake_stack, NULL, NULL);
#endif
    prof::t_fiber = -1;
    t_in_fiber = false;
    t_cur = NULL;
}

// fiber -> scheduler (returns when the scheduler resumes it)
void yield() {
    Fiber *f = t_cur;
    if (!f->cp.empty()) cp_land_random(f);  // a scheduling point: pending cp.async may land here
#if EMU_ASAN
    __sanitizer_start_switch_fiber(&f->fake_stack, t_sched_stack_bottom, t_sched_stack_size);
#endif
    swapcontext(&f->ctx, &t_sched);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, NULL, NULL);
#endif
}

void switch_to_scheduler_forever() {
    Fiber *f = t_cur;
    f->state = DONE;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(NULL, t_sched_stack_bottom, t_sched_stack_size);
#endif
    setcontext(&t_sched);
    abort();
}

void fiber_main() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(NULL, &t_sched_stack_bottom, &t_sched_stack_size);
#endif
    t_launch->fn(t_launch->ctx);
    cp_land(t_cur, 0, true);  // a thread's outstanding cp.async complete after it exits
    g_threads++;
    switch_to_scheduler_forever();  // DONE
}

// ---- static __shared__ arrays: function-local thread_local symbols of the executable --------
struct Range {
    size_t offset, size;
};
std::vector<Range> g_shared;
bool g_shared_found;

void find_shared_arrays() {
    if (g_shared_found) return;
    g_shared_found = true;
    elf_for_each_symbol([](const Elf64_Sym &sym, const char *name) {
        if (ELF64_ST_TYPE(sym.st_info) != STT_TLS || sym.st_size == 0) return;
        // a function-local static (C++ mangling _ZZ...): in kernel code only __shared__ arrays are
        if (strncmp(name, "_ZZ", 3) != 0 || strstr(name, "givt_emu")) return;
        g_shared.push_back({(size_t)sym.st_value, (size_t)sym.st_size});
    });
}

int tls_cb(struct dl_phdr_info *info, size_t, void *out) {
    *(void **)out = info->dlpi_tls_data;  // the first module is the executable
    return 1;
}

void poison_static_shared() {
    find_shared_arrays();
    if (g_shared.empty()) return;
    void *tls = NULL;
    dl_iterate_phdr(tls_cb, &tls);
    if (!tls) return;
    for (const Range &r : g_shared) memset((unsigned char *)tls + r.offset, 0xFF, r.size);
}

// For the profiler: this OS thread's static __shared__ arrays and its copy of the executable's TLS
// block (where they lie, beside the emulator's own thread_local variables).
int tls_block_cb(struct dl_phdr_info *info, size_t, void *out) {
    prof::Range *r = (prof::Range *)out;
    r->lo = (uintptr_t)info->dlpi_tls_data;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_TLS) r->size = info->dlpi_phdr[i].p_memsz;
    return 1;
}
void profile_memory_map(std::vector<prof::Range> &shared, prof::Range *tls) {
    find_shared_arrays();
    *tls = prof::Range{0, 0};
    dl_iterate_phdr(tls_block_cb, tls);
    shared.clear();
    if (!tls->lo) return;
    for (const Range &r : g_shared) shared.push_back(prof::Range{tls->lo + r.offset, r.size});
}

// ---- the scheduler ---------------------------------------------------------------------------
const char *describe(const Fiber &f, char *buf, size_t n) {
    switch (f.state) {
    case DONE: snprintf(buf, n, "has exited"); break;
    case AT_BARRIER: snprintf(buf, n, "waits at __syncthreads (%s:%d)", f.file, f.line); break;
    case AT_WARP: snprintf(buf, n, "waits in %s with mask 0x%08x (%s:%d)", f.op_name, f.mask, f.file, f.line); break;
    default: snprintf(buf, n, "runs"); break;
    }
    return buf;
}

// Do f and g wait in the same collective? (the same op and mask; a W_COLLECTIVE also the same
// operation at the same call site)
bool same_collective(const Fiber &f, const Fiber &g) {
    if (g.state != AT_WARP || g.mask != f.mask || g.op != f.op) return false;
    return f.op != W_COLLECTIVE || (g.coll == f.coll && g.line == f.line && !strcmp(g.file, f.file));
}

// The collectives whose lanes have all arrived exchange their values (in warp only_warp, or in all
// warps when it is -1). Returns whether any did.
bool resolve_warps(std::vector<Fiber> &fs, int only_warp = -1) {
    bool progress = false;
    int n = (int)fs.size();
    for (int w = 0; w * 32 < n; w++) {
        if (only_warp >= 0 && w != only_warp) continue;
        for (int l = 0; l < 32 && w * 32 + l < n; l++) {
            Fiber &f = fs[w * 32 + l];
            if (f.state != AT_WARP) continue;
            bool ready = true;
            for (int j = 0; j < 32 && ready; j++) {
                if (!(f.mask >> j & 1)) continue;
                ready = same_collective(f, fs[w * 32 + j]);
            }
            if (!ready) continue;
            if (f.op == W_COLLECTIVE) {  // mask: the whole warp (warp_collective)
                void *lanes[32];
                for (int j = 0; j < 32; j++) lanes[j] = fs[w * 32 + j].coll_arg;
                t_cur = &f;  // errors name lane 0's thread and the call site
                f.coll(lanes);
                t_cur = NULL;
                if (t_abandon) return false;
                if (prof::g_on) prof::warp_sync(w, false);
                for (int j = 0; j < 32; j++) fs[w * 32 + j].state = RUN;
                progress = true;
                continue;
            }
            uint64_t vote = 0;
            int any = 0, all = 1;
            for (int j = 0; j < 32; j++)
                if (f.mask >> j & 1) {
                    int p = fs[w * 32 + j].bits != 0;
                    vote |= (uint64_t)p << j, any |= p, all &= p;
                }
            for (int j = 0; j < 32; j++) {
                if (!(f.mask >> j & 1)) continue;
                Fiber &g = fs[w * 32 + j];
                int width = g.width, base = j & ~(width - 1), src = j;
                switch (g.op) {
                case W_IDX: src = base + (g.arg & (width - 1)); break;
                case W_XOR: src = j ^ g.arg; if (src < base || src >= base + width) src = j; break;
                case W_DOWN: src = j + g.arg; if (src >= base + width) src = j; break;
                case W_UP: src = j - g.arg; if (src < base) src = j; break;
                default: break;
                }
                if (g.op == W_BALLOT) g.result = vote;
                else if (g.op == W_ANY) g.result = (uint64_t)any;
                else if (g.op == W_ALL) g.result = (uint64_t)all;
                else {
                    if (src < 0 || src > 31 || !(f.mask >> src & 1)) {
                        t_cur = &g;
                        kernel_error("%s (%s:%d) reads lane %d, which is not in the mask 0x%08x", g.op_name, g.file,
                                     g.line, src, g.mask);
                        t_cur = NULL;
                        return false;
                    }
                    g.result = fs[w * 32 + src].bits;
                }
            }
            if (prof::g_on) prof::warp_sync(w, true);
            for (int j = 0; j < 32; j++)
                if (f.mask >> j & 1) fs[w * 32 + j].state = RUN;
            progress = true;
        }
    }
    return progress;
}

void make_order(std::vector<int> &ord, Launch &L) {
    int n = (int)ord.size();
    for (int i = 0; i < n; i++) ord[i] = i;
    if (L.order == ORDER_REVERSE) {
        for (int i = 0; i < n; i++) ord[i] = n - 1 - i;
    } else if (L.order == ORDER_RANDOM) {
        uint64_t x = L.seed ^ ((uint64_t)L.phase * 0x2545F4914F6CDD1Dull) ^
                     ((uint64_t)(t_blockIdx.x + 131u * t_blockIdx.y + 8191u * t_blockIdx.z) << 20);
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(splitmix(&x) % (uint64_t)(i + 1));
            int t = ord[i];
            ord[i] = ord[j], ord[j] = t;
        }
    }
    L.phase++;
}

void run_block(Launch &L, std::vector<Fiber> &fs, std::vector<int> &ord) {
    int n = L.nthreads;
    poison_static_shared();
    if (L.smem_bytes) memset(L.smem, 0xFF, L.smem_bytes);
    for (int i = 0; i < n; i++) {
        Fiber &f = fs[i];
        f = Fiber();
        f.index = i, f.lane = i % 32, f.state = RUN;
        f.tid.x = (unsigned)i % t_blockDim.x;
        f.tid.y = (unsigned)i / t_blockDim.x % t_blockDim.y;
        f.tid.z = (unsigned)i / (t_blockDim.x * t_blockDim.y);
        f.stack = stack_of(i);
        f.cp_rng = L.seed ^ 0xC0A5F1B3ull ^ ((uint64_t)i << 32) ^
                   ((uint64_t)(t_blockIdx.x + 131u * t_blockIdx.y + 8191u * t_blockIdx.z) << 44) ^ L.phase;
#if EMU_ASAN
        ASAN_UNPOISON_MEMORY_REGION(f.stack, g_stack_bytes);  // frames left by an abandoned launch
#endif
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = g_stack_bytes;
        f.ctx.uc_link = NULL;
        makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {
        make_order(ord, L);
        for (int k = 0; k < n; k++) {
            Fiber &f = fs[ord[k]];
            if (f.state == RUN) enter(&f);
            if (t_abandon) return;
            // A collective runs as soon as its last lane arrives, and its warp runs on at once (to its
            // next barrier, or a collective that cannot complete), before the fibers after it in this
            // order: a warp runs ahead of the others as far as the barriers let it, so a WMMA load
            // (store) of shared memory that other warps write (read) without a __syncthreads between
            // sees the wrong data in some order.
            if (f.state != AT_WARP) continue;
            const int w = f.index / 32;
            while (resolve_warps(fs, w)) {
                for (int i = 0; i < n; i++) {
                    Fiber &g = fs[ord[i]];
                    if (g.index / 32 == w && g.state == RUN) enter(&g);
                    if (t_abandon) return;
                }
            }
            if (t_abandon) return;
        }
        int ndone = 0, nbar = 0, nwarp = 0;
        for (int i = 0; i < n; i++) {
            ndone += fs[i].state == DONE;
            nbar += fs[i].state == AT_BARRIER;
            nwarp += fs[i].state == AT_WARP;
        }
        if (ndone == n) return;
        if (ndone + nbar + nwarp < n) continue;  // lanes that a collective above released
        if (nwarp && resolve_warps(fs)) continue;
        if (t_abandon) return;
        char a[256], b[256];
        if (nwarp) {  // a collective that cannot complete: name a missing lane
            for (int i = 0; i < n; i++) {
                Fiber &f = fs[i];
                if (f.state != AT_WARP) continue;
                for (int j = 0; j < 32; j++) {
                    if (!(f.mask >> j & 1)) continue;
                    Fiber &g = fs[i / 32 * 32 + j];
                    if (same_collective(f, g)) continue;
                    t_cur = &f;
                    kernel_error("%s with mask 0x%08x (%s:%d) waits for lane %d of its mask, which %s", f.op_name,
                                 f.mask, f.file, f.line, j, describe(g, b, sizeof b));
                    t_cur = NULL;
                    return;
                }
            }
        }
        // every thread left waits at a barrier
        Fiber *first = NULL;
        for (int i = 0; i < n; i++) {
            Fiber &f = fs[i];
            if (f.state == DONE) continue;
            if (!first) first = &f;
            else if (f.line != first->line || strcmp(f.file, first->file)) {
                kernel_error("divergent __syncthreads: thread (%u,%u,%u) %s, thread (%u,%u,%u) %s", first->tid.x,
                             first->tid.y, first->tid.z, describe(*first, a, sizeof a), f.tid.x, f.tid.y, f.tid.z,
                             describe(f, b, sizeof b));
                return;
            }
        }
        if (ndone) {
            const Fiber *gone = NULL;
            for (int i = 0; i < n && !gone; i++)
                if (fs[i].state == DONE) gone = &fs[i];
            kernel_error("divergent __syncthreads: %d threads wait at %s:%d while %d have exited (e.g. thread (%u,%u,%u))",
                         nbar, first->file, first->line, ndone, gone->tid.x, gone->tid.y, gone->tid.z);
            return;
        }
        if (prof::g_on) prof::barrier();
        for (int i = 0; i < n; i++) fs[i].state = RUN;
    }
}

}  // namespace

void syncthreads(const char *file, int line) {
    Fiber *f = t_cur;
    if (!f) {
        fprintf(stderr, "cuda_emu: __syncthreads (%s:%d) called outside a kernel\n", file, line);
        abort();
    }
    f->state = AT_BARRIER, f->file = file, f->line = line;
    yield();
}

namespace {
Fiber *arrive(WarpOp op, const char *name, const char *file, int line, unsigned mask, int width) {
    Fiber *f = t_cur;
    if (!f) {
        fprintf(stderr, "cuda_emu: %s (%s:%d) called outside a kernel\n", name, file, line);
        abort();
    }
    if (!(mask >> f->lane & 1))
        kernel_error("%s (%s:%d) called by lane %d with mask 0x%08x, which excludes it", name, file, line, f->lane,
                     mask);
    int nthreads = t_launch->nthreads, warp0 = f->index / 32 * 32;
    for (int j = 0; j < 32; j++)
        if ((mask >> j & 1) && warp0 + j >= nthreads)
            kernel_error("%s (%s:%d) with mask 0x%08x names lane %d, which does not exist (a block of %d threads)",
                         name, file, line, mask, j, nthreads);
    if (width < 1 || width > 32 || (width & (width - 1)))
        kernel_error("%s (%s:%d): width %d is not a power of two up to 32", name, file, line, width);
    f->state = AT_WARP, f->op = op, f->op_name = name, f->file = file, f->line = line;
    f->mask = mask, f->width = width;
    return f;
}
}  // namespace

uint64_t warp_op(WarpOp op, const char *name, const char *file, int line, unsigned mask, uint64_t bits, int arg,
                 int width) {
    Fiber *f = arrive(op, name, file, line, mask, width);
    f->bits = bits, f->arg = arg, f->coll = NULL, f->coll_arg = NULL;
    yield();
    return f->result;
}

void warp_collective(const char *name, const char *file, int line, CollectiveFn fn, void *arg) {
    Fiber *f = arrive(W_COLLECTIVE, name, file, line, 0xffffffffu, 32);
    f->bits = 0, f->arg = 0, f->coll = fn, f->coll_arg = arg;
    yield();
}

void collective_error(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const Fiber *f = t_cur;
    if (f) kernel_error("%s (%s:%d): %s", f->op_name, f->file, f->line, msg);
    else kernel_error("%s", msg);
}

const unsigned char *wmma_map(int use) {
    if (!t_launch || use < 0 || use > 2) {
        fprintf(stderr, "cuda_emu: WMMA used outside a kernel\n");
        abort();
    }
    return t_launch->wmma_map[use];
}

// ---- WMMA (m16n16k16, bf16 x bf16 -> float) ----------------------------------------------------
namespace {
// The lanes of a load/store must agree on the memory operand; it must be 32-byte aligned, ldm a
// multiple of 16 bytes. Returns false after reporting.
bool wmma_check_mem(const WmmaMem *a, void *const lanes[32]) {
    for (int l = 1; l < 32; l++) {
        const WmmaMem *b = (const WmmaMem *)lanes[l];
        if (b->p != a->p || b->ldm != a->ldm || b->col_major != a->col_major) {
            collective_error("lane %d passes pointer %p, ldm %u, %s; lane 0 %p, ldm %u, %s (the lanes must agree)", l,
                             b->p, b->ldm, b->col_major ? "col_major" : "row_major", a->p, a->ldm,
                             a->col_major ? "col_major" : "row_major");
            return false;
        }
    }
    if ((uintptr_t)a->p % 32) {
        collective_error("pointer %p is not 32-byte (256-bit) aligned", a->p);
        return false;
    }
    if ((a->ldm * (unsigned)a->elem_bytes) % 16 || a->ldm < 16) {
        collective_error("ldm %u is not a multiple of %d elements (16 bytes) of at least 16", a->ldm,
                         16 / a->elem_bytes);
        return false;
    }
    return true;
}
}  // namespace

void wmma_mem(void *const lanes[32]) {
    const WmmaMem *a = (const WmmaMem *)lanes[0];
    if (!wmma_check_mem(a, lanes)) return;
    if (prof::g_on) prof::wmma_mem(a->p, a->ldm, a->col_major, a->elem_bytes, a->store);
    const unsigned char *map = wmma_map(a->use);
    for (int l = 0; l < 32; l++) {
        const WmmaMem *m = (const WmmaMem *)lanes[l];
        for (int i = 0; i < 8; i++) {
            int e = map[8 * l + i], r = e / 16, c = e % 16;
            size_t off = a->col_major ? (size_t)c * a->ldm + r : (size_t)r * a->ldm + c;
            if (a->elem_bytes == 2) {  // bf16 (matrix_a, matrix_b): loads only
                ((__nv_bfloat16 *)m->frag)[i] = ((const __nv_bfloat16 *)a->p)[off];
            } else if (a->store) {
                ((float *)a->p)[off] = ((const float *)m->frag)[i];
            } else {
                ((float *)m->frag)[i] = ((const float *)a->p)[off];
            }
        }
    }
}

void wmma_mma(void *const lanes[32]) {
    if (prof::g_on) prof::wmma_mma();
    const unsigned char *ma = wmma_map(0), *mb = wmma_map(1), *mc = wmma_map(2);
    float A[256], B[256], C[256];
    for (int l = 0; l < 32; l++) {  // every lane's fragments, read before any d is written (d may be c)
        const WmmaMma *m = (const WmmaMma *)lanes[l];
        for (int i = 0; i < 8; i++) {
            A[ma[8 * l + i]] = __bfloat162float(m->a[i]);
            B[mb[8 * l + i]] = __bfloat162float(m->b[i]);
            C[mc[8 * l + i]] = m->c[i];
        }
    }
    float D[256];
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) {
            float acc = C[16 * r + c];
            for (int k = 0; k < 16; k++) acc += A[16 * r + k] * B[16 * k + c];  // bf16 products are exact in float
            D[16 * r + c] = acc;
        }
    for (int l = 0; l < 32; l++) {
        const WmmaMma *m = (const WmmaMma *)lanes[l];
        for (int i = 0; i < 8; i++) m->d[i] = D[mc[8 * l + i]];
    }
}

// ---- PTX: mma.sync m16n8k16 bf16, ldmatrix, cp.async (kernels/ptx.cuh) --------------------------
namespace {
thread_local uintptr_t t_tls_base;  // this OS thread's copy of the executable's TLS block

// Is [p, p + n) inside the running block's shared memory (the dynamic shared memory, or one static
// __shared__ array)?
bool in_shared(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    Launch *L = t_launch;
    if (L && L->smem_bytes && a >= (uintptr_t)L->smem && a - (uintptr_t)L->smem + n <= L->smem_bytes) return true;
    find_shared_arrays();
    if (!t_tls_base) {
        void *tls = NULL;
        dl_iterate_phdr(tls_cb, &tls);
        t_tls_base = (uintptr_t)tls;
    }
    if (!t_tls_base) return false;
    for (const Range &r : g_shared) {
        uintptr_t lo = t_tls_base + r.offset;
        if (a >= lo && a - lo + n <= r.size) return true;
    }
    return false;
}

float bf16_value(unsigned short u) {  // a bf16 is the upper half of a float
    uint32_t v = (uint32_t)u << 16;
    float f;
    memcpy(&f, &v, 4);
    return f;
}
}  // namespace

void ptx_mma(void *const lanes[32]) {
    if (prof::g_on) prof::ptx_mma();
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; l++) {  // every lane's fragments, read before any d is written (d may be c)
        const PtxMma *m = (const PtxMma *)lanes[l];
        int g = l >> 2, t = l % 4;
        for (int i = 0; i < 4; i++) {
            // a[i]: rows g (i even) or g + 8 (i odd), cols 2t, 2t + 1 (+ 8 for i >= 2)
            int r = g + 8 * (i & 1), c = 2 * t + 8 * (i >> 1);
            A[r][c] = bf16_value((unsigned short)(m->a[i] & 0xffffu));
            A[r][c + 1] = bf16_value((unsigned short)(m->a[i] >> 16));
        }
        for (int i = 0; i < 2; i++) {  // b[i]: rows 2t, 2t + 1 (+ 8 for i = 1), col g
            int r = 2 * t + 8 * i;
            B[r][g] = bf16_value((unsigned short)(m->b[i] & 0xffffu));
            B[r + 1][g] = bf16_value((unsigned short)(m->b[i] >> 16));
        }
        for (int i = 0; i < 4; i++) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = m->c[i];  // c[i]
    }
    float D[16][8];
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 8; c++) {
            float acc = C[r][c];
            for (int k = 0; k < 16; k++) acc += A[r][k] * B[k][c];  // bf16 products are exact in float
            D[r][c] = acc;
        }
    for (int l = 0; l < 32; l++) {
        const PtxMma *m = (const PtxMma *)lanes[l];
        int g = l >> 2, t = l % 4;
        for (int i = 0; i < 4; i++) m->d[i] = D[g + 8 * (i >> 1)][2 * t + (i & 1)];
    }
}

void ptx_ldmatrix(void *const lanes[32]) {
    const PtxLdmatrix *m0 = (const PtxLdmatrix *)lanes[0];
    const int num = m0->num;
    for (int l = 1; l < 32; l++) {
        const PtxLdmatrix *m = (const PtxLdmatrix *)lanes[l];
        if (m->num != num || m->trans != m0->trans) {
            collective_error("lane %d runs x%d%s, lane 0 x%d%s (the lanes must agree)", l, m->num,
                             m->trans ? ".trans" : "", num, m0->trans ? ".trans" : "");
            return;
        }
    }
    unsigned short M[4][8][8];  // the matrices, rows from lanes 8i..8i+7's addresses
    for (int l = 0; l < 8 * num; l++) {
        const PtxLdmatrix *m = (const PtxLdmatrix *)lanes[l];
        if ((uintptr_t)m->p % 16) {
            collective_error("lane %d's row address %p is not 16-byte aligned", l, m->p);
            return;
        }
        if (!in_shared(m->p, 16)) {
            collective_error("lane %d's row address %p is not in shared memory (16 bytes inside the dynamic "
                             "shared memory or one __shared__ array)", l, m->p);
            return;
        }
        memcpy(M[l / 8][l % 8], m->p, 16);
    }
    if (prof::g_on) {
        const void *rows[32];
        for (int l = 0; l < 8 * num; l++) rows[l] = ((const PtxLdmatrix *)lanes[l])->p;
        prof::ptx_ldmatrix(rows, num);
    }
    for (int l = 0; l < 32; l++) {
        const PtxLdmatrix *m = (const PtxLdmatrix *)lanes[l];
        int row = l / 4, col = 2 * (l % 4);
        for (int i = 0; i < num; i++) {
            unsigned lo = m0->trans ? M[i][col][row] : M[i][row][col];
            unsigned hi = m0->trans ? M[i][col + 1][row] : M[i][row][col + 1];
            m->r[i] = lo | hi << 16;
        }
    }
}

namespace {
// Lands f's pending copies of the groups below below_group (all: every pending copy).
void cp_land(Fiber *f, unsigned below_group, bool all) {
    if (!f || f->cp.empty()) return;
    size_t k = 0;
    for (size_t i = 0; i < f->cp.size(); i++) {
        CpPending &c = f->cp[i];
        if (all || c.group < below_group) memcpy(c.dst, c.src, 16);
        else f->cp[k++] = c;
    }
    f->cp.resize(k);
}
// A scheduling point of f: in the random order, each pending copy lands here with probability 1/2
// (the others stay pending until a later point or their wait); in forward and reverse order none
// does (they land as late as allowed: at the wait).
void cp_land_random(Fiber *f) {
    if (!t_launch || t_launch->order != ORDER_RANDOM) return;
    size_t k = 0;
    for (size_t i = 0; i < f->cp.size(); i++) {
        CpPending &c = f->cp[i];
        if (splitmix(&f->cp_rng) & 1) memcpy(c.dst, c.src, 16);
        else f->cp[k++] = c;
    }
    f->cp.resize(k);
}
}  // namespace

void cp_async(void *dst, const void *src, const char *file, int line) {
    Fiber *f = t_cur;
    if (!f) {
        fprintf(stderr, "cuda_emu: cp.async (%s:%d) called outside a kernel\n", file, line);
        abort();
    }
    if ((uintptr_t)dst % 16 || (uintptr_t)src % 16)
        kernel_error("cp.async (%s:%d): %s address %p is not 16-byte aligned", file, line,
                     (uintptr_t)dst % 16 ? "destination" : "source", (uintptr_t)dst % 16 ? dst : src);
    if (!in_shared(dst, 16))
        kernel_error("cp.async (%s:%d): destination %p is not in shared memory", file, line, dst);
    if (!emu_in_device_memory(src, 16))
        kernel_error("cp.async (%s:%d): source %p is not in global memory (16 bytes inside one cudaMalloc "
                     "allocation)", file, line, src);
    if (prof::g_on) prof::ptx_cp_async(dst, src, file, line);  // counted at issue
    cp_land_random(f);  // earlier copies may land now
    f->cp.push_back(CpPending{dst, src, f->cp_groups});
}

void cp_async_commit(void) {
    Fiber *f = t_cur;
    if (f) f->cp_groups++;
}

void cp_async_wait(int n) {
    Fiber *f = t_cur;
    if (!f) return;
    if (n < 0) {  // wait_all: every copy, committed or not
        cp_land(f, 0, true);
        f->cp_groups++;  // (= commit_group; wait_group 0)
        return;
    }
    // every committed group but the n most recent (copies of the open group are not covered)
    if (f->cp_groups > (unsigned)n) cp_land(f, f->cp_groups - (unsigned)n, false);
}

void *dynamic_smem(void) {
    if (!t_launch) {
        fprintf(stderr, "cuda_emu: dynamic shared memory used outside a kernel\n");
        abort();
    }
    return t_launch->smem;
}

// per kernel: the dynamic shared memory it may use (cudaFuncSetAttribute)
static std::map<const void *, int> g_max_dyn_smem;

// ---- the counts (cuda_emu.h: Stats) ----------------------------------------------------------
// Device work is numbered in the order it is enqueued (the emulated streams are one order); the
// host's waits are classified by how much of it they wait for.
static std::mutex g_stat_mutex;
static unsigned long long g_work_seq, g_waited_seq;  // the newest op; the newest op waited for
static Stats g_stats;

// set while cudaGraphLaunch replays a graph's nodes (on the calling thread)
static thread_local bool t_replaying;

// One op of device work enqueued (launch: a kernel or a GEMM); its number. A node replayed by a graph
// is counted as one (graph_nodes, graph_kernels), never as a launch: the graph launch is the launch.
static unsigned long long note_work(bool launch) {
    std::lock_guard<std::mutex> lock(g_stat_mutex);
    if (t_replaying) {
        g_stats.graph_nodes++;
        if (launch) g_stats.graph_kernels++;
    } else if (launch) {
        g_stats.launches++;
    }
    return ++g_work_seq;
}
// cudaGraphLaunch: one launch by the host
static void note_graph_launch(void) {
    std::lock_guard<std::mutex> lock(g_stat_mutex);
    g_stats.launches++;
    g_stats.graph_launches++;
}
static unsigned long long work_seq(void) {
    std::lock_guard<std::mutex> lock(g_stat_mutex);
    return g_work_seq;
}
// The host waits for the work up to op upto: a drain (host synchronisation) when nothing is queued
// after it, a fence wait otherwise; nothing when it was waited for already.
static void host_wait(unsigned long long upto) {
    std::lock_guard<std::mutex> lock(g_stat_mutex);
    if (upto <= g_waited_seq) return;
    if (upto == g_work_seq) g_stats.host_syncs++;
    else g_stats.fence_waits++;
    g_waited_seq = upto;
}
static void host_wait_all(void) { host_wait(work_seq()); }

Stats stats(void) {
    std::lock_guard<std::mutex> lock(g_stat_mutex);
    return g_stats;
}
void note_gemm(void) { note_work(true); }

// Is a launch's configuration valid? If not: the last error, a message (g_launch_mutex held).
static bool launch_config_ok(const char *kernel, const char *file, int line, dim3 grid, dim3 block, size_t smem,
                             const void *fn_id) {
    unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    size_t smem_max = 48 * 1024;
    auto it = g_max_dyn_smem.find(fn_id);
    if (it != g_max_dyn_smem.end()) smem_max = (size_t)it->second;
    if (nthreads == 0 || nthreads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 || smem > smem_max) {
        if (g_last_error == cudaSuccess) g_last_error = cudaErrorInvalidConfiguration;
        if (!g_record)
            fprintf(stderr, "cuda_emu: kernel %s (%s:%d): invalid configuration grid (%u,%u,%u) block (%u,%u,%u) "
                "dynamic shared memory %zu (at most %zu)\n", kernel, file, line, grid.x, grid.y, grid.z, block.x,
                block.y, block.z, smem, smem_max);
        return false;
    }
    return true;
}

void run_grid(const char *kernel, const char *file, int line, dim3 grid, dim3 block, size_t smem, cudaStream_t,
              const void *fn_id, BlockFn fn, void *ctx) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    init_order_from_env();
    prof::init_from_env();
    if (!launch_config_ok(kernel, file, line, grid, block, smem, fn_id)) return;
    unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    note_work(true);
    Launch L = {};
    L.kernel = kernel, L.file = file, L.line = line, L.fn = fn, L.ctx = ctx;
    L.nthreads = (int)nthreads;
    L.smem_bytes = smem;
    // exact size (ASan sees an overrun), and 16-byte aligned but never 32 (GIVT_DYNAMIC_SMEM promises
    // 16: a kernel that needs more, e.g. for WMMA, must round up itself)
    void *smem_block = NULL;
    if (posix_memalign(&smem_block, 32, smem + 16)) {
        fprintf(stderr, "cuda_emu: cannot allocate %zu bytes of dynamic shared memory\n", smem);
        abort();
    }
    L.smem = (unsigned char *)smem_block + 16;
    L.order = g_order == ORDER_CYCLE ? (Order)(ORDER_FORWARD + g_launches % 3) : g_order;
    L.seed = g_seed + g_launches * 0x9E3779B97F4A7C15ull;
    g_launches++;
    {  // this launch's WMMA element-to-lane mappings: random permutations (never assume one)
        uint64_t x = L.seed ^ 0x5741A3C1F00Dull;
        for (int u = 0; u < 3; u++) {
            for (int i = 0; i < 256; i++) L.wmma_map[u][i] = (unsigned char)i;
            for (int i = 255; i > 0; i--) {
                int j = (int)(splitmix(&x) % (uint64_t)(i + 1));
                unsigned char t = L.wmma_map[u][i];
                L.wmma_map[u][i] = L.wmma_map[u][j], L.wmma_map[u][j] = t;
            }
        }
    }
    ensure_stacks(L.nthreads);
    std::vector<Fiber> fs((size_t)L.nthreads);
    std::vector<int> ord((size_t)L.nthreads);
    t_launch = &L;
    t_fibers = &fs;
    t_abandon = false;
    t_blockDim = block, t_gridDim = grid;
    const bool profiling = prof::g_on;
    if (profiling) {  // the memory map the profiler classifies addresses by
        std::vector<prof::Range> shared, globals;
        prof::Range tls;
        profile_memory_map(shared, &tls);
        snapshot_allocations(globals);
        prof::Range skip[3] = {{(uintptr_t)g_stacks, (uintptr_t)g_nstacks * (g_stack_bytes + 4096)},
                               {(uintptr_t)fs.data(), fs.size() * sizeof(Fiber)},
                               tls};
        prof::LaunchInfo info = {kernel, fn_id, L.nthreads, (unsigned long long)grid.x * grid.y * grid.z,
                                 prof::Range{(uintptr_t)L.smem, smem}, shared.data(), (int)shared.size(),
                                 globals.data(), globals.size(), skip, 3};
        prof::launch_begin(info);
    }
    for (unsigned z = 0; z < grid.z && !t_abandon; z++)
        for (unsigned y = 0; y < grid.y && !t_abandon; y++)
            for (unsigned x = 0; x < grid.x && !t_abandon; x++) {
                t_blockIdx.x = x, t_blockIdx.y = y, t_blockIdx.z = z;
                run_block(L, fs, ord);
                if (profiling) prof::block_end();
            }
    if (profiling) prof::launch_end(t_abandon);
    if (t_abandon && g_last_error == cudaSuccess) g_last_error = cudaErrorLaunchFailure;
    free(smem_block);
    t_launch = NULL;
    t_fibers = NULL;
    t_cur = NULL;
    t_tid = NULL;
    t_abandon = false;
}

void set_order(Order o, uint64_t seed) {
    g_order_set = true;
    g_order = o;
    g_seed = seed;
}
Order get_order(void) {
    init_order_from_env();
    return g_order;
}
const char *order_name(Order o) {
    static const char *const names[] = {"cycle", "forward", "reverse", "random"};
    return names[o];
}
void set_record_errors(int record) { g_record = record; }
const char *last_kernel_error(void) { return g_error.c_str(); }
void clear_kernel_error(void) { g_error.clear(); }
unsigned long long threads_run(void) { return g_threads; }

}  // namespace givt_emu

using namespace givt_emu;

// ---- the runtime API ----------------------------------------------------------------------------
namespace {
std::mutex g_mem_mutex;
std::map<uintptr_t, size_t> g_allocs;  // device allocations: address -> bytes
std::map<uintptr_t, size_t> g_host_allocs;  // cudaMallocHost's: address -> bytes
size_t g_alloc_bytes;
int g_event_count;

size_t phys_bytes(int avail) {
    long pages = sysconf(avail ? _SC_AVPHYS_PAGES : _SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : (size_t)16 << 30;
}

cudaError_t set_error(cudaError_t e) {
    if (e != cudaSuccess && g_last_error == cudaSuccess) g_last_error = e;
    return e;
}

// Is [p, p + n) inside one allocation of allocs (address -> bytes)?
bool in_one_allocation(const std::map<uintptr_t, size_t> &allocs, const void *p, size_t n) {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    auto it = allocs.upper_bound((uintptr_t)p);
    if (it == allocs.begin()) return false;
    --it;
    return (uintptr_t)p >= it->first && (uintptr_t)p - it->first + n <= it->second;
}

// Is [p, p + n) inside one device allocation? (device pointers passed to memcpy and memset)
bool in_device_memory(const void *p, size_t n) { return in_one_allocation(g_allocs, p, n); }

cudaError_t check_range(const void *p, size_t n, const char *what) {
    if (n == 0 || in_device_memory(p, n)) return cudaSuccess;
    if (!g_record) fprintf(stderr, "cuda_emu: %s: %zu bytes at %p are not inside one cudaMalloc allocation\n", what, n, p);
    return set_error(cudaErrorInvalidValue);
}
}  // namespace

static bool emu_in_device_memory(const void *p, size_t n) { return in_device_memory(p, n); }

namespace {
// Is [p, p + n) inside one cudaMallocHost allocation? (a GPU copies into it asynchronously)
bool in_pinned_memory(const void *p, size_t n) { return in_one_allocation(g_host_allocs, p, n); }

std::set<void *> g_graph_allocs;  // cudaMallocAsync's made in a capture: the graph's until it is destroyed

// cudaMalloc's work: exact size, 256-byte aligned, poisoned
cudaError_t alloc_device(void **p, size_t bytes) {
    // 256-byte aligned, as cudaMalloc's (WMMA's 32-byte rule holds at a buffer's start); exact size
    if (posix_memalign(p, 256, bytes ? bytes : 1)) *p = NULL;
    if (!*p) return set_error(cudaErrorMemoryAllocation);
    memset(*p, 0xFF, bytes);  // poison: NaN as float and bf16
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    g_allocs[(uintptr_t)*p] = bytes;
    g_alloc_bytes += bytes;
    return cudaSuccess;
}

// cudaFree's work, without its synchronisation (cudaFreeAsync's); graph: a graph's own allocation
cudaError_t free_device(void *p, bool graph = false) {
    if (!p) return cudaSuccess;
    {
        std::lock_guard<std::mutex> lock(g_mem_mutex);
        auto it = g_allocs.find((uintptr_t)p);
        if (it == g_allocs.end()) {
            fprintf(stderr, "cuda_emu: cudaFree(%p): not a pointer from cudaMalloc\n", p);
            return set_error(cudaErrorInvalidValue);
        }
        if (!graph && g_graph_allocs.count(p)) {
            if (!g_record)
                fprintf(stderr, "cuda_emu: cudaFree(%p): memory a graph allocated (cudaMallocAsync during a capture): "
                            "it is the graph's until cudaGraphDestroy\n", p);
            return set_error(cudaErrorInvalidValue);
        }
        g_graph_allocs.erase(p);
        g_alloc_bytes -= it->second;
        g_allocs.erase(it);
    }
    free(p);
    return cudaSuccess;
}

// the checks of a copy: the device sides inside one allocation
cudaError_t check_copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    cudaError_t e = cudaSuccess;
    if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice) e = check_range(dst, bytes, "cudaMemcpy destination");
    if (e == cudaSuccess && (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice))
        e = check_range(src, bytes, "cudaMemcpy source");
    return e;
}

// the copy of cudaMemcpy and cudaMemcpyAsync
cudaError_t copy_bytes(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    cudaError_t e = check_copy(dst, src, bytes, kind);
    if (e != cudaSuccess) return e;
    if (bytes) memmove(dst, src, bytes);
    return cudaSuccess;
}

// An event: when it was recorded (host time) and the op it follows; or, when its last record was in a
// capture, that capture (capture_id, 0 if none), the stream and the node count at the record.
struct EmuEvent {
    double t;
    unsigned long long seq;
    unsigned long long capture_id;
    cudaStream_t cap_stream;
    size_t cap_point;
};

// A stream (cudaStreamCreate*); the legacy default stream is 0 (or cudaStreamLegacy).
struct EmuStream {
    unsigned flags;
};
bool is_legacy(cudaStream_t s) { return s == 0 || s == cudaStreamLegacy; }

// ---- graphs captured from a stream ----
struct Node {
    enum Kind { KERNEL, MEMCPY, MEMSET, WORK, ALLOC, FREE } kind;
    const char *what;  // the kernel's name, or the call's
    // KERNEL: run_grid's arguments; owner holds ctx (the launch's copy of its arguments)
    const char *file;
    int line;
    dim3 grid, block;
    size_t smem;
    const void *fn_id;
    BlockFn fn;
    void *ctx;
    std::shared_ptr<void> owner;
    // MEMCPY, MEMSET, ALLOC (poisons), FREE (poisons)
    void *dst;
    const void *src;
    size_t bytes;
    int value;
    // WORK (a GEMM: launch)
    std::function<void()> run;
    bool launch;
};

// A captured graph: its nodes in capture order and the memory it allocated (its own until destroyed).
// cudaGraph_t and cudaGraphExec_t both hold one (an exec is the graph's nodes, shared).
struct GraphData {
    std::vector<Node> nodes;
    std::vector<void *> allocs;
    ~GraphData() {
        for (void *p : allocs) free_device(p, true);
    }
};
struct EmuGraph {
    std::shared_ptr<GraphData> g;
};
struct EmuGraphExec {
    std::shared_ptr<GraphData> g;
};

// The capture in progress (one at a time): the stream it began on, the streams that joined it
// through cudaStreamWaitEvent (forks: node count after their last work, and up to where the origin
// stream has joined them back), its graph.
struct Fork {
    size_t last, joined;
};
struct Capture {
    bool invalid;
    cudaStreamCaptureMode mode;
    cudaStream_t origin;
    std::thread::id thread;
    std::map<cudaStream_t, Fork> forks;
    std::shared_ptr<GraphData> g;
    unsigned long long id;
};
std::recursive_mutex g_cap_mutex;
std::atomic<bool> g_cap_active;
Capture g_cap;
unsigned long long g_cap_ids;

bool in_capture(cudaStream_t s) { return g_cap_active && (s == g_cap.origin || g_cap.forks.count(s)); }

// A call that breaks the capture: the error, set as the last error; the capture is invalidated.
cudaError_t refuse(cudaError_t e, const char *what) {
    std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
    if (g_cap_active) g_cap.invalid = true;
    if (!g_record)
        fprintf(stderr, "cuda_emu: %s during a stream capture: %s (the capture is invalidated)\n", what,
                cudaGetErrorName(e));
    return set_error(e);
}

// A call that CUDA calls potentially unsafe during a capture (cudaMalloc, cudaFree, cudaMallocHost,
// a synchronous copy, an event query): refused while a capture in global mode is in progress, or
// one in thread-local mode on this thread; allowed in relaxed mode.
cudaError_t unsafe_call(const char *what) {
    std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
    if (!g_cap_active || g_cap.mode == cudaStreamCaptureModeRelaxed ||
        (g_cap.mode == cudaStreamCaptureModeThreadLocal && std::this_thread::get_id() != g_cap.thread))
        return cudaSuccess;
    return refuse(cudaErrorStreamCaptureUnsupported, what);
}

// Work on the legacy default stream while a capture is in progress: it would depend on the capture
// (on a GPU when the capturing stream is a blocking one; the emulation refuses it for any).
cudaError_t legacy_conflict(const char *what) {
    if (!g_cap_active) return cudaSuccess;
    return refuse(cudaErrorStreamCaptureImplicit, what);
}

// Add a node to the capture in progress on s (a stream of it).
void add_node(cudaStream_t s, Node &&n) {
    std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
    g_cap.g->nodes.push_back(std::move(n));
    auto f = g_cap.forks.find(s);
    if (f != g_cap.forks.end()) f->second.last = g_cap.g->nodes.size();
}
}  // namespace

bool givt_emu::capture_any(void) { return g_cap_active; }

cudaError_t givt_emu::capture_enqueue(cudaStream_t s, const char *what, bool *capture) {
    *capture = false;
    if (!g_cap_active) return cudaSuccess;
    std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
    if (!g_cap_active) return cudaSuccess;
    if (is_legacy(s)) return legacy_conflict(what);
    if (!in_capture(s)) return cudaSuccess;  // another stream: runs now
    if (g_cap.invalid) return set_error(cudaErrorStreamCaptureInvalidated);
    *capture = true;
    return cudaSuccess;
}

void givt_emu::capture_kernel(const char *kernel, const char *file, int line, dim3 grid, dim3 block, size_t smem,
                              cudaStream_t s, const void *fn_id, BlockFn fn, void *ctx, void *held,
                              void (*destroy)(void *)) {
    std::shared_ptr<void> owner(held, destroy);
    {
        std::lock_guard<std::mutex> lock(g_launch_mutex);
        if (!launch_config_ok(kernel, file, line, grid, block, smem, fn_id)) {
            std::lock_guard<std::recursive_mutex> cap_lock(g_cap_mutex);
            g_cap.invalid = true;
            return;
        }
    }
    Node n = {};
    n.kind = Node::KERNEL, n.what = kernel, n.file = file, n.line = line, n.grid = grid, n.block = block;
    n.smem = smem, n.fn_id = fn_id, n.fn = fn, n.ctx = ctx, n.owner = std::move(owner);
    add_node(s, std::move(n));
}

void givt_emu::capture_work(cudaStream_t s, const char *what, bool launch, std::function<void()> run) {
    Node n = {};
    n.kind = Node::WORK, n.what = what, n.launch = launch, n.run = std::move(run);
    add_node(s, std::move(n));
}

namespace {
// Replay a graph's nodes in capture order (the emulated streams are synchronous), each counted as a
// node of the graph launch (note_work under t_replaying).
void replay(const GraphData &g, cudaStream_t s) {
    t_replaying = true;
    for (const Node &n : g.nodes) switch (n.kind) {
        case Node::KERNEL: run_grid(n.what, n.file, n.line, n.grid, n.block, n.smem, s, n.fn_id, n.fn, n.ctx); break;
        case Node::MEMCPY:
            if (n.bytes) memmove(n.dst, n.src, n.bytes);  // what the source holds now
            note_work(false);
            break;
        case Node::MEMSET: memset(n.dst, n.value, n.bytes), note_work(false); break;
        case Node::ALLOC:  // undefined contents at every launch: poisoned
        case Node::FREE:   // freed: poisoned for any node that still reads it
            memset(n.dst, 0xFF, n.bytes), note_work(false);
            break;
        case Node::WORK: note_work(n.launch), n.run(); break;
        }
    t_replaying = false;
}

size_t alloc_bytes_of(void *p) {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    auto it = g_allocs.find((uintptr_t)p);
    return it == g_allocs.end() ? 0 : it->second;
}
}  // namespace

static void snapshot_allocations(std::vector<givt_emu::prof::Range> &out) {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    out.clear();
    for (const auto &a : g_allocs) out.push_back(givt_emu::prof::Range{a.first, a.second});
}

extern "C" {

cudaError_t cudaMalloc(void **p, size_t bytes) {
    if (!p) return set_error(cudaErrorInvalidValue);
    if (cudaError_t e = unsafe_call("cudaMalloc")) return e;
    return alloc_device(p, bytes);
}

cudaError_t cudaFree(void *p) {
    if (cudaError_t e = unsafe_call("cudaFree")) return e;
    if (p) host_wait_all();  // cudaFree synchronizes the device
    return free_device(p);
}

// streams are synchronous: stream-ordered allocation is plain allocation (without cudaFree's wait);
// in a capture, the graph's own memory: allocated now (a fixed address for the graph's life), freed
// by cudaGraphDestroy (and the last exec's destroy), poisoned at every replay of the allocation
cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t s) {
    if (!p) return set_error(cudaErrorInvalidValue);
    bool capture;
    if (cudaError_t e = capture_enqueue(s, "cudaMallocAsync", &capture)) return e;
    if (cudaError_t e = alloc_device(p, bytes)) return e;
    if (capture) {
        {
            std::lock_guard<std::mutex> lock(g_mem_mutex);
            g_graph_allocs.insert(*p);
        }
        std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
        g_cap.g->allocs.push_back(*p);
        Node n = {};
        n.kind = Node::ALLOC, n.what = "cudaMallocAsync", n.dst = *p, n.bytes = bytes;
        add_node(s, std::move(n));
    }
    return cudaSuccess;
}
cudaError_t cudaFreeAsync(void *p, cudaStream_t s) {
    bool capture;
    if (cudaError_t e = capture_enqueue(s, "cudaFreeAsync", &capture)) return e;
    if (!capture) return free_device(p);
    if (!p) return cudaSuccess;
    std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
    bool own = false;
    for (void *a : g_cap.g->allocs) own |= a == p;
    if (!own) return refuse(cudaErrorStreamCaptureUnsupported, "cudaFreeAsync of memory not allocated in the capture");
    Node n = {};
    n.kind = Node::FREE, n.what = "cudaFreeAsync", n.dst = p, n.bytes = alloc_bytes_of(p);
    add_node(s, std::move(n));
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) {
    if (!p) return set_error(cudaErrorInvalidValue);
    if (cudaError_t e = unsafe_call("cudaMallocHost")) return e;
    if (posix_memalign(p, 256, bytes ? bytes : 1)) *p = NULL;
    if (!*p) return set_error(cudaErrorMemoryAllocation);
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    g_host_allocs[(uintptr_t)*p] = bytes ? bytes : 1;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p) {
    if (!p) return cudaSuccess;
    if (cudaError_t e = unsafe_call("cudaFreeHost")) return e;
    host_wait_all();  // as cudaFree
    {
        std::lock_guard<std::mutex> lock(g_mem_mutex);
        auto it = g_host_allocs.find((uintptr_t)p);
        if (it == g_host_allocs.end()) {
            fprintf(stderr, "cuda_emu: cudaFreeHost(%p): not a pointer from cudaMallocHost\n", p);
            return set_error(cudaErrorInvalidValue);
        }
        g_host_allocs.erase(it);
    }
    free(p);
    return cudaSuccess;
}

// synchronous: the host waits for it (and for all work before it)
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    if (cudaError_t e = unsafe_call("cudaMemcpy")) return e;
    if (cudaError_t e = legacy_conflict("cudaMemcpy (on the legacy default stream)")) return e;
    cudaError_t e = copy_bytes(dst, src, bytes, kind);
    if (e == cudaSuccess && bytes) host_wait(note_work(false));
    return e;
}

// a copy from the device into memory that is not pinned (cudaMallocHost) is synchronous on a GPU
// In a capture: a node that copies what the source holds when it runs; host memory must be pinned.
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t s) {
    bool capture;
    if (cudaError_t e = capture_enqueue(s, "cudaMemcpyAsync", &capture)) return e;
    if (capture) {
        if (cudaError_t e = check_copy(dst, src, bytes, kind)) return e;
        bool host_dst = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToHost ||
                        (kind == cudaMemcpyDefault && !in_device_memory(dst, bytes));
        bool host_src = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyHostToHost ||
                        (kind == cudaMemcpyDefault && !in_device_memory(src, bytes));
        if (bytes && ((host_dst && !in_pinned_memory(dst, bytes)) || (host_src && !in_pinned_memory(src, bytes))))
            return refuse(cudaErrorStreamCaptureUnsupported, "cudaMemcpyAsync with pageable host memory (not cudaMallocHost's)");
        Node n = {};
        n.kind = Node::MEMCPY, n.what = "cudaMemcpyAsync", n.dst = dst, n.src = src, n.bytes = bytes;
        add_node(s, std::move(n));
        return cudaSuccess;
    }
    cudaError_t e = copy_bytes(dst, src, bytes, kind);
    if (e != cudaSuccess || !bytes) return e;
    unsigned long long op = note_work(false);
    if (kind == cudaMemcpyDeviceToHost && !in_pinned_memory(dst, bytes)) host_wait(op);
    return e;
}

static cudaError_t memset_bytes(void *p, int value, size_t bytes) {
    cudaError_t e = check_range(p, bytes, "cudaMemset");
    if (e != cudaSuccess) return e;
    if (bytes) memset(p, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    if (cudaError_t e = legacy_conflict("cudaMemset (on the legacy default stream)")) return e;
    return memset_bytes(p, value, bytes);
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s) {
    bool capture;
    if (cudaError_t e = capture_enqueue(s, "cudaMemsetAsync", &capture)) return e;
    if (capture) {
        if (cudaError_t e = check_range(p, bytes, "cudaMemset")) return e;
        Node n = {};
        n.kind = Node::MEMSET, n.what = "cudaMemsetAsync", n.dst = p, n.value = value, n.bytes = bytes;
        add_node(s, std::move(n));
        return cudaSuccess;
    }
    cudaError_t e = memset_bytes(p, value, bytes);
    if (e == cudaSuccess && bytes) note_work(false);
    return e;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    if (!s) return set_error(cudaErrorInvalidValue);
    EmuStream *st = new EmuStream{flags};
    *s = (cudaStream_t)(void *)st;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (is_legacy(s) || s == cudaStreamPerThread) return set_error(cudaErrorInvalidResourceHandle);
    {
        std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
        if (in_capture(s)) refuse(cudaErrorStreamCaptureInvalidated, "cudaStreamDestroy of a capturing stream");
        g_cap.forks.erase(s);
    }
    delete (EmuStream *)(void *)s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    {
        std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
        if (in_capture(s)) return refuse(cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize of the capturing stream");
        if (is_legacy(s)) {
            if (cudaError_t e = legacy_conflict("cudaStreamSynchronize of the legacy default stream")) return e;
        }
    }
    host_wait_all();
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    if (g_cap_active) return refuse(cudaErrorStreamCaptureUnsupported, "cudaDeviceSynchronize");
    host_wait_all();
    return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : set_error(cudaErrorInvalidDevice); }

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
    if (device != 0) return set_error(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "emulated CUDA (CPU)");
    prop->totalGlobalMem = phys_bytes(0);
    prop->sharedMemPerBlock = 48 * 1024;
    prop->sharedMemPerBlockOptin = 227 * 1024;
    prop->sharedMemPerMultiprocessor = 228 * 1024;
    prop->regsPerBlock = 65536;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = 1024, prop->maxThreadsDim[1] = 1024, prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff, prop->maxGridSize[1] = 65535, prop->maxGridSize[2] = 65535;
    prop->major = 0, prop->minor = 0;  // not a real architecture: code keyed to sm_90 must not think it has one
    prop->multiProcessorCount = 1;
    prop->maxThreadsPerMultiProcessor = 2048;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
    if (device != 0) return set_error(cudaErrorInvalidDevice);
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; break;
    case cudaDevAttrMultiProcessorCount: *value = 1; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 0; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    default: *value = 0; return set_error(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    *total_bytes = phys_bytes(0);
    *free_bytes = phys_bytes(1);
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_last_error; }

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureUnmatched: return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureUnjoined: return "cudaErrorStreamCaptureUnjoined";
    case cudaErrorStreamCaptureIsolation: return "cudaErrorStreamCaptureIsolation";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorCapturedEvent: return "cudaErrorCapturedEvent";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    default: return "cudaErrorUnknown";
    }
}
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (cuda_emu: see the message above)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorNotSupported: return "operation not supported (cuda_emu: see the message above)";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "capture was not ended in the same stream as it began";
    case cudaErrorStreamCaptureUnjoined: return "capturing stream has unjoined work";
    case cudaErrorStreamCaptureIsolation: return "dependency created on uncaptured work in another stream";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorCapturedEvent: return "operation not permitted on an event last recorded in a capturing stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
    default: return "unknown error";
    }
}

cudaError_t cudaDriverGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}

// events: host time stamps and the op they follow (streams are synchronous)
cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = (cudaEvent_t)calloc(1, sizeof(EmuEvent));
    g_event_count++;
    return *e ? cudaSuccess : set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    free((void *)e);
    g_event_count--;
    return cudaSuccess;
}
// In a capture: no node (as on a GPU, a dependency for cudaStreamWaitEvent within the capture); the
// event is then a captured one until recorded again outside a capture.
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return set_error(cudaErrorInvalidResourceHandle);
    EmuEvent *ev = (EmuEvent *)(void *)e;
    bool capture;
    if (cudaError_t err = capture_enqueue(s, "cudaEventRecord", &capture)) return err;
    if (capture) {
        std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
        ev->capture_id = g_cap.id, ev->cap_stream = s, ev->cap_point = g_cap.g->nodes.size();
        return cudaSuccess;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ev->t = ts.tv_sec + 1e-9 * ts.tv_nsec;
    ev->seq = work_seq();
    ev->capture_id = 0;
    return cudaSuccess;
}
// a host wait for an event: refused for an event recorded in a capture, and (unsafe) during one
static cudaError_t event_wait_check(cudaEvent_t e, const char *what) {
    if (!e) return set_error(cudaErrorInvalidResourceHandle);
    if (((EmuEvent *)(void *)e)->capture_id) {
        if (g_cap_active) return refuse(cudaErrorCapturedEvent, what);
        return set_error(cudaErrorCapturedEvent);
    }
    return unsafe_call(what);
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (cudaError_t err = event_wait_check(e, "cudaEventSynchronize")) return err;
    host_wait(((EmuEvent *)(void *)e)->seq);
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return event_wait_check(e, "cudaEventQuery"); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    *ms = (float)(1e3 * (((EmuEvent *)(void *)end)->t - ((EmuEvent *)(void *)start)->t));
    return cudaSuccess;
}

// ---- graphs captured from a stream ----
// The emulated streams are synchronous: outside a capture, a wait for an event is a no-op. In a
// capture: waiting for an event recorded in the capture joins the waiting stream to it (a fork), or,
// on the capture's origin stream, joins the fork that recorded it back; waiting for an event
// recorded outside the capture crosses its boundary (an error).
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int) {
    if (!e) return set_error(cudaErrorInvalidResourceHandle);
    EmuEvent *ev = (EmuEvent *)(void *)e;
    std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
    if (!g_cap_active) return ev->capture_id ? set_error(cudaErrorStreamCaptureIsolation) : cudaSuccess;
    if (is_legacy(s)) return legacy_conflict("cudaStreamWaitEvent on the legacy default stream");
    bool captured = ev->capture_id && ev->capture_id == g_cap.id;
    if (!in_capture(s)) {
        if (!captured) return ev->capture_id ? set_error(cudaErrorStreamCaptureIsolation) : cudaSuccess;
        g_cap.forks[s] = Fork{g_cap.g->nodes.size(), g_cap.g->nodes.size()};  // s joins the capture
        return cudaSuccess;
    }
    if (g_cap.invalid) return set_error(cudaErrorStreamCaptureInvalidated);
    if (!captured) return refuse(cudaErrorStreamCaptureIsolation, "cudaStreamWaitEvent for an event recorded outside the capture");
    if (s == g_cap.origin && ev->cap_stream != g_cap.origin) {
        auto f = g_cap.forks.find(ev->cap_stream);
        if (f != g_cap.forks.end() && ev->cap_point > f->second.joined) f->second.joined = ev->cap_point;
    }
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) {
    if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
        mode != cudaStreamCaptureModeRelaxed)
        return set_error(cudaErrorInvalidValue);
    if (is_legacy(s)) return set_error(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot capture
    std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
    if (g_cap_active) {
        if (in_capture(s)) return set_error(cudaErrorIllegalState);
        fprintf(stderr, "cuda_emu: cudaStreamBeginCapture: one capture at a time is emulated\n");
        return set_error(cudaErrorNotSupported);
    }
    g_cap = Capture();
    g_cap.mode = mode, g_cap.origin = s, g_cap.thread = std::this_thread::get_id();
    g_cap.g = std::make_shared<GraphData>();
    g_cap.id = ++g_cap_ids;
    g_cap_active = true;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph) {
    if (!graph) return set_error(cudaErrorInvalidValue);
    std::shared_ptr<GraphData> g;
    cudaError_t e = cudaSuccess;
    {
        std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
        if (!in_capture(s)) return set_error(cudaErrorIllegalState);
        if (s != g_cap.origin) return refuse(cudaErrorStreamCaptureUnmatched, "cudaStreamEndCapture on a forked stream");
        if (g_cap.mode != cudaStreamCaptureModeRelaxed && std::this_thread::get_id() != g_cap.thread)
            return set_error(cudaErrorStreamCaptureWrongThread);
        for (const auto &f : g_cap.forks)
            if (f.second.last > f.second.joined) e = cudaErrorStreamCaptureUnjoined;
        if (g_cap.invalid) e = cudaErrorStreamCaptureInvalidated;
        g.swap(g_cap.g);  // freed below (and its memory) when the capture failed
        g_cap = Capture();
        g_cap_active = false;
    }
    *graph = NULL;
    if (e != cudaSuccess) return set_error(e);
    *graph = (cudaGraph_t)(void *)new EmuGraph{std::move(g)};
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status) {
    if (!status) return set_error(cudaErrorInvalidValue);
    std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
    *status = cudaStreamCaptureStatusNone;
    if (is_legacy(s) && g_cap_active) return set_error(cudaErrorStreamCaptureImplicit);
    if (in_capture(s)) *status = g_cap.invalid ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long) {
    if (!exec || !graph) return set_error(cudaErrorInvalidValue);
    *exec = (cudaGraphExec_t)(void *)new EmuGraphExec{((EmuGraph *)(void *)graph)->g};
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    return cudaGraphInstantiate(exec, graph, flags);
}

// one launch by the host; the nodes replay in capture order, as device work enqueued on s
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    if (!exec) return set_error(cudaErrorInvalidValue);
    {
        std::lock_guard<std::recursive_mutex> lock(g_cap_mutex);
        if (g_cap_active) {
            if (is_legacy(s)) return legacy_conflict("cudaGraphLaunch on the legacy default stream");
            if (in_capture(s)) {
                fprintf(stderr, "cuda_emu: cudaGraphLaunch into a capture (a child graph) is not emulated\n");
                return refuse(cudaErrorStreamCaptureUnsupported, "cudaGraphLaunch");
            }
        }
    }
    cudaError_t before = g_last_error;
    note_graph_launch();
    replay(*((EmuGraphExec *)(void *)exec)->g, s);
    return before == cudaSuccess && g_last_error != cudaSuccess ? g_last_error : cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    if (!exec) return set_error(cudaErrorInvalidValue);
    delete (EmuGraphExec *)(void *)exec;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    if (!graph) return set_error(cudaErrorInvalidValue);
    delete (EmuGraph *)(void *)graph;
    return cudaSuccess;
}

// the nodes in capture order (handles for counting: nothing else takes them)
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *count) {
    if (!graph || !count) return set_error(cudaErrorInvalidValue);
    GraphData &g = *((EmuGraph *)(void *)graph)->g;
    if (!nodes) {
        *count = g.nodes.size();
        return cudaSuccess;
    }
    for (size_t i = 0; i < *count; i++) nodes[i] = i < g.nodes.size() ? (cudaGraphNode_t)(void *)&g.nodes[i] : NULL;
    if (*count > g.nodes.size()) *count = g.nodes.size();
    return cudaSuccess;
}

}  // extern "C"

cudaError_t givt_emu_func_set_attribute(const void *fn, enum cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;  // hints: nothing to emulate
    if (value < 0 || value > 227 * 1024) return set_error(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    g_max_dyn_smem[fn] = value;
    return cudaSuccess;
}
