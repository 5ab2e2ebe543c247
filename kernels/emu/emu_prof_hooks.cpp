// The instrumentation callbacks of the profiled emulation (make emu-profile; see emu_profile.h):
// the kernel objects of $(BUILD)/kernels-prof/ are compiled by g++ with -fsanitize=thread (for its
// instrumentation only: no ThreadSanitizer runtime is linked, these definitions take its place)
// and -fsanitize-coverage=trace-pc. Every load and store of the kernel code calls __tsan_readN /
// __tsan_writeN (N = 1, 2, 4, 8, 16; _range for other sizes, unaligned_ variants where the compiler
// cannot prove alignment) with the address; every basic block calls __sanitizer_cov_trace_pc. The
// return address identifies the access (or block) site. Outside a fiber of a profiled launch (the
// host code of the .cu files, or profiling off) they return at once.
// Every emulated build links this file, but only the instrumented objects call these functions: in
// the ordinary build nothing does, __tsan_init is never called, and the profiler stays off.
#include <stddef.h>
#include <stdint.h>

#include "emu_profile.h"

using givt_emu::prof::t_fiber;

#define GIVT_PROF_PC ((uintptr_t)__builtin_return_address(0))
#define GIVT_PROF_RW(N)                                                                              \
    void __tsan_read##N(void *p) {                                                                   \
        if (t_fiber >= 0) givt_emu::prof::access(GIVT_PROF_PC, (uintptr_t)p, N, false);             \
    }                                                                                                \
    void __tsan_write##N(void *p) {                                                                  \
        if (t_fiber >= 0) givt_emu::prof::access(GIVT_PROF_PC, (uintptr_t)p, N, true);              \
    }                                                                                                \
    void __tsan_unaligned_read##N(void *p) {                                                         \
        if (t_fiber >= 0) givt_emu::prof::access(GIVT_PROF_PC, (uintptr_t)p, N, false);             \
    }                                                                                                \
    void __tsan_unaligned_write##N(void *p) {                                                        \
        if (t_fiber >= 0) givt_emu::prof::access(GIVT_PROF_PC, (uintptr_t)p, N, true);              \
    }                                                                                                \
    void __tsan_volatile_read##N(void *p) {                                                          \
        if (t_fiber >= 0) givt_emu::prof::access(GIVT_PROF_PC, (uintptr_t)p, N, false);             \
    }                                                                                                \
    void __tsan_volatile_write##N(void *p) {                                                         \
        if (t_fiber >= 0) givt_emu::prof::access(GIVT_PROF_PC, (uintptr_t)p, N, true);              \
    }

extern "C" {
GIVT_PROF_RW(1)
GIVT_PROF_RW(2)
GIVT_PROF_RW(4)
GIVT_PROF_RW(8)
GIVT_PROF_RW(16)

void __tsan_read_range(void *p, unsigned long size) {
    if (t_fiber >= 0) givt_emu::prof::access(GIVT_PROF_PC, (uintptr_t)p, (unsigned)size, false);
}
void __tsan_write_range(void *p, unsigned long size) {
    if (t_fiber >= 0) givt_emu::prof::access(GIVT_PROF_PC, (uintptr_t)p, (unsigned)size, true);
}

// Called by the instrumented objects' constructors: the profiler can count memory in this program.
void __tsan_init(void) { givt_emu::prof::g_instrumented = true; }
// Not emitted (--param tsan-instrument-func-entry-exit=0; no virtual calls in kernels) but defined,
// so that a kernel that brings them still links.
void __tsan_func_entry(void *) {}
void __tsan_func_exit(void) {}
void __tsan_vptr_update(void **, void *) {}
void __tsan_vptr_read(void **) {}

void __sanitizer_cov_trace_pc(void) {
    if (t_fiber >= 0) givt_emu::prof::basic_block(GIVT_PROF_PC);
}
}
