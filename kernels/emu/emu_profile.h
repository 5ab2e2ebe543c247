// emu_profile: the CUDA emulation as a profiler (kernels/README.md, "The emulator as a profiler").
// For every kernel launch it counts floating-point work, global and shared memory traffic the way
// the GPU's memory pipelines see it (requests, 32-byte sectors, shared-memory wavefronts) and
// barriers. The memory counters need kernels compiled with the instrumentation of `make
// emu-profile` (g++ -fsanitize=thread without its runtime: emu_prof_hooks.cpp defines the __tsan_*
// callbacks; -fsanitize-coverage=trace-pc for the floating-point counts); the ordinary emulated
// build has the profiler and the hooks too, but nothing calls them, so it stays off there.
//
// GIVT_EMU_PROFILE=FILE (in a program built with the instrumented kernels) profiles every launch
// and writes FILE at exit: one TSV row per kernel name, summed over its launches. Tests drive it
// through the functions below.
#ifndef GIVT_EMU_PROFILE_H
#define GIVT_EMU_PROFILE_H

#include <stddef.h>
#include <stdint.h>

namespace givt_emu {

// The columns of the TSV, in order (kernels/README.md documents each).
struct ProfileCounters {
    unsigned long long launches, blocks, threads;
    unsigned long long mma_flop;                 // WMMA mma_sync: 2 * 16 * 16 * 16 per warp and call;
                                                 // PTX mma.sync m16n8k16: 2 * 16 * 8 * 16
    unsigned long long float_flop, fp64_flop;    // host FP instructions of the kernel code (see README)
    unsigned long long math_calls;               // calls of libm transcendental functions (expf, logf...)
    unsigned long long gld_requests, gld_bytes, gld_sectors;
    unsigned long long gst_requests, gst_bytes, gst_sectors;
    unsigned long long shared_requests, shared_bytes, shared_wavefronts, shared_bank_conflicts;
    unsigned long long barriers;          // a block's __syncthreads opening, summed over blocks
    unsigned long long warp_collectives;  // shuffles and votes, one per warp and call
    int flop_counted;                     // 0 when the FP instruction table could not be built (no objdump)
};

// Were this program's kernels compiled with the instrumentation (make emu-profile)?
bool profile_instrumented(void);
// Profiling on or off (GIVT_EMU_PROFILE turns it on at the first launch). Enabling it without the
// instrumentation counts only what the emulator sees itself (launches, WMMA, barriers, collectives).
void profile_enable(bool on);
bool profile_enabled(void);
void profile_reset(void);  // forget every kernel's sums
// The counters of the last profiled launch (NULL before any) and its kernel's name.
const ProfileCounters *profile_last_launch(void);
const char *profile_last_kernel(void);
// A kernel's sums over its profiled launches; false if it has none. Names as in the TSV:
// "swiglu_fwd_kernel<float, unsigned>" (sass_check.py's short names).
bool profile_kernel(const char *name, ProfileCounters *out);
// Writes the TSV (header line, then one row per kernel name, sorted). Returns false on an I/O error.
bool profile_write(const char *path);

// ---- internal: called by the emulator (cuda_emu.cpp) and the instrumentation hooks --------------
namespace prof {
extern bool g_on;                 // profiling this process
extern bool g_instrumented;       // set (emu_prof_hooks.cpp) when instrumented code starts up
extern __thread int t_fiber;       // the running fiber's index in a profiled launch, else -1

struct Range {
    uintptr_t lo, size;
};
struct LaunchInfo {
    const char *name;  // GIVT_LAUNCH's text (fallback when the symbol table does not name fn)
    const void *fn;
    int nthreads;
    unsigned long long nblocks;
    Range smem;                         // the dynamic shared memory
    const Range *static_shared;         // the static __shared__ arrays (this OS thread's copies)
    int nstatic;
    const Range *globals;               // the cudaMalloc allocations, sorted by address
    size_t nglobals;
    const Range *skip;                  // memory that is neither (fiber stacks, the fibers, TLS)
    int nskip;
};
void init_from_env(void);  // GIVT_EMU_PROFILE, once
void launch_begin(const LaunchInfo &info);
void launch_end(bool abandoned);
void block_end(void);                    // every warp's pending requests are complete
void barrier(void);                      // a __syncthreads opened in the running block
void warp_sync(int warp, bool exchange);  // a collective of that warp completed (exchange: a shuffle or vote)
void access(uintptr_t pc, uintptr_t addr, unsigned size, bool store);  // from the hooks (in a fiber)
void basic_block(uintptr_t pc);                                        // from the hooks (in a fiber)
void wmma_mem(const void *p, unsigned ldm, int col_major, int elem_bytes, int store);
void wmma_mma(void);
// The PTX instructions of kernels/ptx.cuh (cuda_emu.cpp's PTX section), counted as issued:
void ptx_mma(void);                                    // mma.sync m16n8k16: 2 * 16 * 8 * 16 per warp
void ptx_ldmatrix(const void *const rows[32], int num);  // lanes 0..8 num - 1's row addresses (16 bytes)
void ptx_cp_async(const void *dst, const void *src, const char *file, int line);  // one lane's, in a fiber
}  // namespace prof

}  // namespace givt_emu

#endif
