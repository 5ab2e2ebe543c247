// backend: a compute backend as an instance: its op table (ops.h), its context, its compute dtype and
// its memory, opened by name through one registry. givt-train, givt-eval, givt-bench and the tests all
// get their backend here.
#ifndef GIVT_BACKEND_H
#define GIVT_BACKEND_H

#include <stddef.h>

// Element types. Master weights, AdamW moments, weight gradients, norm statistics and the loss are
// always float32 (or double for the loss scalars); activations and the compute copy of the weights
// are in the backend's compute dtype.
typedef enum { DTYPE_F32, DTYPE_BF16 } DType;
size_t dtype_size(DType t);
const char *dtype_name(DType t);

// An element in the backend's compute dtype: pointers to it are backend memory that only the
// backend's ops read or write (float on the CPU backend, bf16 or float on the CUDA backend). The
// type is never defined, so the compiler keeps compute buffers and float32 buffers apart.
typedef struct cval cval;

typedef struct GivtOps GivtOps;
typedef struct Backend Backend;

struct Backend {
    const char *name;       // the registry name: "cpu", "cuda"
    char device[128];       // what it runs on, for the start-up line
    DType compute;          // dtype of activations and of the compute copy of the weights
    const GivtOps *ops;     // every op receives this Backend
    void *ctx;              // the backend's own state (handles, streams, workspaces)
    double peak_flops;      // the device's peak in the compute dtype (FLOP/s); 0 = unknown
    struct BackendProfile *profile;  // per-op timing, when backend_profile_start was called
};

// Opens a backend: device "auto" (the first available of the registry's preferred order: cuda,
// then cpu), "cpu" or "cuda"; precision "no" (float32 compute) or "bf16" (bfloat16 compute with
// float32 master weights where the backend supports it; the CPU backend computes in float32 and
// says so through ->compute). NULL with givt_fail naming the device when it is unknown or unavailable.
Backend *backend_open(const char *device, const char *precision);
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

// The registry's entries, one per backend folder: csrc/cpu/ (float32 compute, BLAS + OpenMP) and,
// in builds with nvcc, kernels/ (backend_cuda.cu). Called through backend_open only.
Backend *backend_cpu_open(const char *precision);

// Memory the backend can still allocate and its total, in bytes (0 when unknown).
void backend_mem_info(Backend *be, size_t *free_bytes, size_t *total_bytes);
void backend_synchronize(Backend *be);

// ---- per-op profile (givt-bench --profile) -----------------------------------------------------
// Between start and stop, every op the model calls through MODEL_OP is timed (synchronously).
void backend_profile_start(Backend *be);
void backend_profile_print(Backend *be, int steps, double seconds_per_step);
void backend_profile_stop(Backend *be);
// Called around each op by the model (see model.c): no-ops unless profiling. flops and bytes are
// the call's work (floating-point operations; bytes read and written, at the least): the profile
// prints the GFLOP/s of ops that compute (flops > 0) and the GB/s of those that move data.
double backend_op_begin(Backend *be, const char *name);
void backend_op_end(Backend *be, const char *name, double t0, double flops, double bytes);
// A named range around a phase (a training step's forward, backward, loss, gradient reduction,
// optimizer; a layer): an NVTX range on a GPU, so that an Nsight Systems timeline reads like the
// model; nothing on the CPU. Not timed by the profile (ops are).
void backend_range_push(Backend *be, const char *name);
void backend_range_pop(Backend *be);

#endif
