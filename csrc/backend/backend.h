// backend: a compute backend as an instance: its op table (ops.h), its context, its compute dtype and
// its memory, opened by name through one registry. givt-train, givt-eval, givt-bench and the tests all
// get their backend here.
#ifndef GIVT_BACKEND_H
#define GIVT_BACKEND_H

#include <stddef.h>

#include "ops.h"  // Backend, Precision, DType, GivtOps: the contract

// The precision's names and its one parse (Precision: ops.h).
extern const char *const backend_precision_names[];  // "no", "bf16": in enum order, NULL-terminated
// text "no" or "bf16" -> *p: 0, or -1 with givt_fail("precision \"TEXT\": expected no or bf16").
int backend_precision_parse(const char *text, Precision *p);
const char *backend_precision_name(Precision p);

// Opens a backend: device "auto" (the first available of the registry's preferred order: cuda,
// then cpu) or a registry name ("cpu", "cuda"), with precision p. Checks the backend's op table
// (backend_check_ops). NULL with givt_fail naming the device when it is unknown or unavailable, or
// the op a backend lacks.
Backend *backend_open(const char *device, Precision p);
// When be computes in another precision than it was asked for (bf16 asked, float32 computed): 1 and
// "the NAME backend computes in DTYPE" in buf, for the caller's note; else 0.
int backend_precision_note(const Backend *be, char *buf, size_t n);
// Every required slot of ops set (all but range_push and range_pop, ops.h's GIVT_OPS_OPTIONAL):
// 0, or -1 with givt_fail("backend NAME: op OP is not implemented").
int backend_check_ops(const GivtOps *ops, const char *name);
void backend_close(Backend *be);
// Which of several devices a backend opened from now on uses (the CUDA backend: GPU ordinal modulo
// the GPUs visible): the local rank of data-parallel training. 0 unless set.
void backend_set_device_ordinal(int ordinal);
int backend_device_ordinal(void);

// The registry: the names of the backends built in, and whether each can be opened here (a reason
// in why when not): 0 no, 1 yes, 2 yes but emulated (the CUDA backend on the CPU in the tests:
// device = cuda opens it, auto skips it).
int backend_registry_count(void);
const char *backend_registry_name(int i);
int backend_available(const char *name, char *why, size_t n);
// One line for --version: "available", "available, emulated on the CPU (tiny models only)" or
// "unavailable: WHY", into buf.
const char *backend_availability_text(const char *name, char *buf, size_t n);
// Device names: "auto" and the registry's. The name as listed for text that matches one without
// regard to case, else NULL ([train] device).
const char *backend_device_lookup(const char *text);
// The device names "auto, cuda, cpu" (sep between two) into buf, for messages and help.
void backend_device_names(char *buf, size_t n, const char *sep);

// The registry's entries, one per backend folder: csrc/cpu/ (float32 compute, BLAS + OpenMP) and,
// in builds with nvcc, kernels/ (backend_cuda.cu). Called through backend_open only.
Backend *backend_cpu_open(Precision p);

// Memory the backend can still allocate and its total, in bytes (0 when unknown).
void backend_mem_info(Backend *be, size_t *free_bytes, size_t *total_bytes);
void backend_synchronize(Backend *be);
// What the backend counted so far (ops.h's BackendStats: kernel launches, host synchronisations):
// the emulated CUDA backend's counts, all zero (counted 0) on a backend that counts nothing (the
// CPU backend, the CUDA backend on a GPU). givt-bench prints them per step; tests compare them.
void backend_stats(Backend *be, BackendStats *out);
// A sequence of ops run as a graph (ops.h: graph_begin ...): at the first call (*graph NULL) the ops
// that record(user) enqueues are recorded into *graph; then (every call) *graph is launched. 0, or -1
// with givt_fail when the backend has no graphs or the recording fails (*graph stays NULL).
int backend_graph_launch(Backend *be, BackendGraph **graph, void (*record)(void *user), void *user);

// ---- per-op profile (givt-bench --profile) -----------------------------------------------------
// Between start and stop, every op called through BACKEND_OP / BACKEND_OPC (ops.h) is timed
// (synchronously).
void backend_profile_start(Backend *be);
void backend_profile_print(Backend *be, int steps, double seconds_per_step);
void backend_profile_stop(Backend *be);
// Called around each op by BACKEND_OPC (ops.h): no-ops unless profiling. flops and bytes are
// the call's work (floating-point operations; bytes read and written, at the least): the profile
// prints the GFLOP/s of ops that compute (flops > 0) and the GB/s of those that move data.
double backend_op_begin(Backend *be, const char *name);
void backend_op_end(Backend *be, const char *name, double t0, double flops, double bytes);
// ---- calling an op -----------------------------------------------------------------------------
// The work of one op call, for the profile's rates: floating-point operations, and bytes moved
// (read + written). Ops bound by memory give flops 0: the profile then shows their GB/s.
typedef struct {
    double flops, bytes;
} OpCost;

// Calls op `name` of be's table as be->ops->name(be, ...) between backend_op_begin and
// backend_op_end: a profiling run (givt-bench --profile) times it by name, and the CUDA backend
// marks it as an NVTX range of that name. cost (an OpCost) is evaluated only when profiling.
// Every compute op of the model and the optimizer goes through one of these.
#define BACKEND_OPC(be, cost, name, ...)                              \
    do {                                                              \
        Backend *be_op_ = (be);                                       \
        double t0_op_ = backend_op_begin(be_op_, #name);              \
        be_op_->ops->name(be_op_, __VA_ARGS__);                       \
        OpCost c_op_ = be_op_->profile ? (cost) : (OpCost){0, 0};     \
        backend_op_end(be_op_, #name, t0_op_, c_op_.flops, c_op_.bytes); \
    } while (0)
// The same for an op whose rate the profile does not show.
#define BACKEND_OP(be, name, ...) BACKEND_OPC(be, ((OpCost){0, 0}), name, __VA_ARGS__)
// A named range around a phase (a training step's forward, backward, loss, gradient reduction,
// optimizer; a layer): an NVTX range on a GPU, so that an Nsight Systems timeline reads like the
// model; nothing on the CPU. Not timed by the profile (ops are).
void backend_range_push(Backend *be, const char *name);
void backend_range_pop(Backend *be);

#endif
