// cuda_emu: a small emulation of CUDA's execution model on the CPU, so that the hand-written kernels
// of kernels/*.cu run in the tests on machines without a GPU (g++ -x c++ -DGIVT_CUDA_EMU, included
// through kernels/launch.cuh; see that header for what kernel code may use).
//
// How it runs a launch: on the calling OS thread, block after block (blockIdx in x, y, z order); the
// threads of a block are ucontext fibers that run until they reach a barrier (__syncthreads), a warp
// collective (__shfl_*_sync, __ballot_sync, __any_sync, __all_sync, WMMA) or their end; a collective
// runs as soon as the last of its lanes arrives (before the fibers after that one in the order go
// on), and a barrier opens when every thread of the block waits at it. Between those points the fibers run in forward, reverse or a seeded random order
// (set_order, or GIVT_EMU_ORDER=forward|reverse|random|cycle and GIVT_EMU_SEED; "cycle", the default,
// takes the three in turn, launch after launch), so a missing __syncthreads gives wrong results.
// Errors that abort with a message naming the kernel, its launch site, the block and the thread: a
// divergent barrier (threads at different __syncthreads, or some exited), a collective called by a
// lane outside its mask or a mask naming a lane that does not exist, a lane of the mask that never
// comes (a deadlock), a shuffle reading a lane outside the mask. WMMA (nvcuda::wmma, m16n16k16 bf16 ->
// float) runs as warp collectives with a random element-to-lane mapping per launch (see its section).
// Memory: `__shared__` is `thread_local` (one OS thread runs one block at a time and fibers never
// change threads); the static __shared__ arrays are found in the executable's symbol table and
// poisoned (0xFF bytes: NaN as float or bf16) before each block; the dynamic shared memory is an
// exact-size allocation poisoned before each block; cudaMalloc is an exact-size malloc, poisoned,
// so AddressSanitizer reports an out-of-bounds access with its source line. Streams are synchronous.
// Counted (givt_emu::stats, the CUDA backend's stats op): kernel launches (cuBLASLt GEMMs included)
// and the host's waits for the device. The device work enqueued so far is numbered (launches, async
// copies and memsets, GEMMs); a wait for work up to number k (stream or device synchronize, a
// synchronous copy: cudaMemcpy, or cudaMemcpyAsync from the device into memory that is not
// cudaMallocHost's, which a GPU does synchronously; cudaEventSynchronize of an event recorded after
// op k; cudaFree, which synchronizes the device) is a host synchronisation when k is the newest op,
// leaving a GPU with nothing queued (a drain), and a fence wait when later work is queued behind it
// (a GPU stays busy); a wait for work already waited for counts nothing.
// CUDA graphs captured from a stream (cudaStreamBeginCapture in global, thread-local or relaxed mode,
// cudaStreamEndCapture, cudaStreamIsCapturing, cudaGraphInstantiate(WithFlags), cudaGraphLaunch,
// cudaGraphGetNodes, cudaGraphExecDestroy, cudaGraphDestroy, cudaStreamWaitEvent), as on a GPU:
// nothing enqueued on a capturing stream runs; each call becomes a node of the graph, in order:
// kernel launches (their arguments copied at the capture: a replay uses those, whatever the
// variables passed hold later), cudaMemsetAsync, cudaMemcpyAsync (device memory, or host memory of
// cudaMallocHost's), cuBLASLt GEMMs (descriptor, layouts, alpha and beta read at the capture),
// cudaMallocAsync (the graph's own memory, at one address for its life: allocated at the capture,
// poisoned at every replay of the node, freed by cudaGraphDestroy and the last exec's destroy) and
// cudaFreeAsync of it (poisons it again). cudaEventRecord makes no node (a dependency within the
// capture: the event cannot be waited for by the host until recorded again outside one). Memory is
// read when a node runs (a copy from pinned memory copies what it holds at the replay).
// cudaGraphLaunch replays the nodes in capture order, kernels through run_grid as any launch (fiber
// orders, poisoning, the profiler); it counts as one launch (Stats.launches and graph_launches), the
// nodes as graph_nodes (graph_kernels: kernels and GEMMs), each numbered device work as above, so a
// later wait for it is a host synchronisation or a fence wait as for eager work.
// Refused during a capture as on a GPU, the capture then invalidated (cudaStreamEndCapture returns
// cudaErrorStreamCaptureInvalidated and no graph; work enqueued on the stream meanwhile returns it
// too): cudaStreamSynchronize of a capturing stream, cudaDeviceSynchronize, a launch into the graph
// of cudaGraphLaunch (cudaErrorStreamCaptureUnsupported); in global mode (thread-local: from the
// capturing thread; relaxed: allowed) cudaMalloc, cudaFree, cudaMallocHost, cudaFreeHost, cudaMemcpy,
// cudaEventSynchronize and cudaEventQuery (cudaErrorStreamCaptureUnsupported); cudaMemcpyAsync with
// pageable host memory (Unsupported); waiting for (cudaEventSynchronize, cudaEventQuery) an event
// recorded in a capture (cudaErrorCapturedEvent); cudaStreamWaitEvent on a capturing stream for an
// event recorded outside the capture (cudaErrorStreamCaptureIsolation); any work on the legacy
// default stream 0, cudaMemcpy and cudaMemset included (cudaErrorStreamCaptureImplicit: stricter than
// a GPU, which refuses it only when the capturing stream is a blocking one). Work on other streams
// runs at once, unless the stream joined the capture: cudaStreamWaitEvent for an event recorded in
// the capture forks it into the capture (its work becomes nodes, in issue order), and the capture's
// origin stream must wait for an event recorded on it after its last work (the join), else
// cudaStreamEndCapture returns cudaErrorStreamCaptureUnjoined. Limits: one capture at a time (a
// second cudaStreamBeginCapture on another stream returns cudaErrorNotSupported); joins are
// recognised directly into the origin stream only; cudaFreeAsync in a capture only of memory the
// capture allocated (other memory: cudaErrorStreamCaptureUnsupported).
#ifndef GIVT_CUDA_EMU_H
#define GIVT_CUDA_EMU_H

#if defined(__CUDACC__) || defined(__CUDA_ARCH__)
#error "kernels/emu/cuda_emu.h is for the CPU emulation (g++), not for nvcc"
#endif

// before any CUDA header (host_defines.h keeps a __shared__ that is already defined)
#define __shared__ thread_local
#define __launch_bounds__(...)

#include <cuda_runtime_api.h>
#include <cuda_bf16.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

// A later #include <cuda_runtime.h> adds nothing (its templates and <<<>>> support are nvcc's).
#define __CUDA_RUNTIME_H__

// ---- the runtime API: the emulated functions take the real names' places ----------------------
#define cudaMalloc givt_emu_cudaMalloc
#define cudaFree givt_emu_cudaFree
#define cudaMallocAsync givt_emu_cudaMallocAsync
#define cudaFreeAsync givt_emu_cudaFreeAsync
#define cudaMemcpy givt_emu_cudaMemcpy
#define cudaMemcpyAsync givt_emu_cudaMemcpyAsync
#define cudaMemset givt_emu_cudaMemset
#define cudaMemsetAsync givt_emu_cudaMemsetAsync
#define cudaStreamCreate givt_emu_cudaStreamCreate
#define cudaStreamCreateWithFlags givt_emu_cudaStreamCreateWithFlags
#define cudaStreamDestroy givt_emu_cudaStreamDestroy
#define cudaStreamSynchronize givt_emu_cudaStreamSynchronize
#define cudaDeviceSynchronize givt_emu_cudaDeviceSynchronize
#define cudaGetDeviceCount givt_emu_cudaGetDeviceCount
#define cudaGetDevice givt_emu_cudaGetDevice
#define cudaSetDevice givt_emu_cudaSetDevice
#define cudaGetDeviceProperties givt_emu_cudaGetDeviceProperties
#define cudaDeviceGetAttribute givt_emu_cudaDeviceGetAttribute
#define cudaMemGetInfo givt_emu_cudaMemGetInfo
#define cudaGetLastError givt_emu_cudaGetLastError
#define cudaPeekAtLastError givt_emu_cudaPeekAtLastError
#define cudaGetErrorString givt_emu_cudaGetErrorString
#define cudaGetErrorName givt_emu_cudaGetErrorName
#define cudaDriverGetVersion givt_emu_cudaDriverGetVersion
#define cudaRuntimeGetVersion givt_emu_cudaRuntimeGetVersion
#define cudaEventCreate givt_emu_cudaEventCreate
#define cudaEventDestroy givt_emu_cudaEventDestroy
#define cudaEventRecord givt_emu_cudaEventRecord
#define cudaEventSynchronize givt_emu_cudaEventSynchronize
#define cudaEventCreateWithFlags givt_emu_cudaEventCreateWithFlags
#define cudaEventQuery givt_emu_cudaEventQuery
#define cudaMallocHost givt_emu_cudaMallocHost
#define cudaFreeHost givt_emu_cudaFreeHost
#define cudaEventElapsedTime givt_emu_cudaEventElapsedTime
#define cudaFuncSetAttribute givt_emu_cudaFuncSetAttribute
#define cudaStreamWaitEvent givt_emu_cudaStreamWaitEvent
#define cudaStreamBeginCapture givt_emu_cudaStreamBeginCapture
#define cudaStreamEndCapture givt_emu_cudaStreamEndCapture
#define cudaStreamIsCapturing givt_emu_cudaStreamIsCapturing
#define cudaGraphInstantiate givt_emu_cudaGraphInstantiate
#define cudaGraphInstantiateWithFlags givt_emu_cudaGraphInstantiateWithFlags
#define cudaGraphLaunch givt_emu_cudaGraphLaunch
#define cudaGraphExecDestroy givt_emu_cudaGraphExecDestroy
#define cudaGraphDestroy givt_emu_cudaGraphDestroy
#define cudaGraphGetNodes givt_emu_cudaGraphGetNodes
// cuBLASLt: the descriptors and layouts are the real library's; only the handle and the product
// and the calls that need it (the heuristic) are emulated (kernels/emu/cublaslt_emu.cpp: a CPU GEMM
// that reads the descriptors and layouts back).
#define cublasLtCreate givt_emu_cublasLtCreate
#define cublasLtMatmulAlgoGetHeuristic givt_emu_cublasLtMatmulAlgoGetHeuristic
#define cublasLtDestroy givt_emu_cublasLtDestroy
#define cublasLtMatmul givt_emu_cublasLtMatmul

extern "C" {
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void *p, cudaStream_t stream);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream = 0);
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t stream = 0);
cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags);
cudaError_t cudaEventQuery(cudaEvent_t e);  // cudaSuccess: the emulated work is done when enqueued
cudaError_t cudaMallocHost(void **p, size_t bytes);  // "pinned" host memory: an async copy into it is async
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);
// CUDA graphs captured from a stream (see the header's first comment)
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags = 0);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *count);
}
cudaError_t givt_emu_func_set_attribute(const void *fn, enum cudaFuncAttribute attr, int value);
template <typename F>
static inline cudaError_t cudaFuncSetAttribute(F *fn, enum cudaFuncAttribute attr, int value) {
    return givt_emu_func_set_attribute((const void *)fn, attr, value);
}
template <typename T>
static inline cudaError_t cudaMallocHost(T **p, size_t bytes) {
    return cudaMallocHost((void **)p, bytes);
}
template <typename T>
static inline cudaError_t cudaMalloc(T **p, size_t bytes) {
    return cudaMalloc((void **)p, bytes);
}
template <typename T>
static inline cudaError_t cudaMallocAsync(T **p, size_t bytes, cudaStream_t stream) {
    return cudaMallocAsync((void **)p, bytes, stream);
}

// ---- device-side names -----------------------------------------------------------------------
namespace givt_emu {

enum Order { ORDER_CYCLE, ORDER_FORWARD, ORDER_REVERSE, ORDER_RANDOM };
// The order fibers run in between barriers (default: GIVT_EMU_ORDER, else cycle) and the random seed.
void set_order(Order o, uint64_t seed);
Order get_order(void);
const char *order_name(Order o);
// Errors found in a kernel: abort with the message (default), or (record = 1, for the emulator's own
// tests) record it, abandon the launch and make cudaGetLastError return cudaErrorLaunchFailure.
void set_record_errors(int record);
const char *last_kernel_error(void);  // the recorded message ("" if none); cleared by clear_kernel_error
void clear_kernel_error(void);
// Emulated threads run so far (for reports).
unsigned long long threads_run(void);
// What the emulation counted since the process started (see the header's first comment): kernel
// launches (cuBLASLt GEMMs included), host synchronisations (waits that drain the device's queue)
// and fence waits (waits for work with later work queued behind it).
// Graphs: a cudaGraphLaunch is one launch (launches) and one graph launch (graph_launches); the
// nodes it replays are counted in graph_nodes (all: kernels, GEMMs, copies, memsets, allocations)
// and graph_kernels (the kernels and GEMMs among them), never in launches.
struct Stats {
    unsigned long long launches, host_syncs, fence_waits;
    unsigned long long graph_launches, graph_nodes, graph_kernels;
};
Stats stats(void);
// A cuBLASLt GEMM (kernels/emu/cublaslt_emu.cpp): one launch of device work.
void note_gemm(void);

extern thread_local const uint3 *t_tid;  // threadIdx of the running fiber
extern thread_local uint3 t_blockIdx;
extern thread_local dim3 t_blockDim, t_gridDim;
void *dynamic_smem(void);
void syncthreads(const char *file, int line);

enum WarpOp { W_IDX, W_XOR, W_DOWN, W_UP, W_BALLOT, W_ANY, W_ALL, W_COLLECTIVE };
uint64_t warp_op(WarpOp op, const char *name, const char *file, int line, unsigned mask, uint64_t bits, int arg,
                 int width);
// A whole-warp collective that is not a value exchange (the WMMA operations): every lane of the warp
// arrives with its own arg, all 32 at the same call (same fn, same file:line: a lane elsewhere, or one
// that has exited, is reported as for the shuffles); then fn runs once, on the scheduler, with the
// 32 lanes' args (lanes[l] = lane l's arg), and the lanes go on.
typedef void (*CollectiveFn)(void *const lanes[32]);
void warp_collective(const char *name, const char *file, int line, CollectiveFn fn, void *arg);
// An error found inside a CollectiveFn (names the kernel, its launch and the collective's call site):
// aborts, or records it and abandons the launch (fn must then return).
__attribute__((format(printf, 1, 2))) void collective_error(const char *fmt, ...);
// The WMMA element-to-lane mapping of this launch, for use 0 (matrix_a), 1 (matrix_b), 2
// (accumulator): map[8 * lane + i] = the row-major index (16 * row + col) of the element that lane's
// x[i] holds. A seeded random permutation, drawn again at every launch (see the WMMA section below).
const unsigned char *wmma_map(int use);

template <typename T>
static inline T shfl(WarpOp op, const char *name, const char *file, int line, unsigned mask, T v, int arg,
                     int width = 32) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a type over 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    b = warp_op(op, name, file, line, mask, b, arg, width);
    T r;
    memcpy(&r, &b, sizeof r);
    return r;
}

typedef void (*BlockFn)(void *ctx);
void run_grid(const char *kernel, const char *file, int line, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
              const void *fn_id, BlockFn fn, void *ctx);

// ---- stream capture (the emulated enqueue functions) ----
// Is any stream capturing? (a cheap test before capture_enqueue)
bool capture_any(void);
// Work (what: its name, for messages) is being enqueued on stream s: cudaSuccess and *capture = true
// when s captures (the caller records a node), false when it runs now; or the error to return (the
// capture it breaks is invalidated), also set as the last error (cudaGetLastError).
cudaError_t capture_enqueue(cudaStream_t s, const char *what, bool *capture);
// Record a kernel node on the capturing stream s (after capture_enqueue said so): run_grid's
// arguments; owner (freed by destroy(owner) with the graph) keeps ctx, the launch's copy of its
// arguments, alive as long as the graph. (A plain pointer and function: this header is compiled into
// make emu-profile's instrumented kernels, where a shared_ptr's atomic count would need TSan's runtime.)
void capture_kernel(const char *kernel, const char *file, int line, dim3 grid, dim3 block, size_t smem,
                    cudaStream_t s, const void *fn_id, BlockFn fn, void *ctx, void *owner, void (*destroy)(void *));
// Record another node of device work (a cuBLASLt GEMM: launch = true); run does it on replay.
void capture_work(cudaStream_t s, const char *what, bool launch, std::function<void()> run);

template <typename Tuple, typename... P>
struct LaunchCtx {
    void (*k)(P...);
    Tuple *args;
    static void run(void *p) {
        LaunchCtx *c = (LaunchCtx *)p;
        std::apply(c->k, *c->args);  // every thread gets its own copies of the parameters
    }
};

// GIVT_LAUNCH(kernel, grid, block, smem, stream, args...) under emulation
template <typename... P, typename... A>
void launch(const char *name, const char *file, int line, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
            void (*k)(P...), A &&...a) {
    static_assert(sizeof...(P) == sizeof...(A), "GIVT_LAUNCH: wrong number of kernel arguments");
    typedef std::tuple<typename std::decay<P>::type...> Tuple;
    bool capture = false;
    if (capture_any() && capture_enqueue(s, name, &capture) != cudaSuccess) return;  // the last error is set
    if (capture) {  // the graph keeps its own copy of the arguments, converted now, for every replay
        struct Held {
            Tuple args;
            LaunchCtx<Tuple, P...> c;
            Held(void (*kf)(P...), A &&...av) : args(std::forward<A>(av)...), c{kf, &args} {}
            static void destroy(void *p) { delete (Held *)p; }
        };
        Held *held = new Held(k, std::forward<A>(a)...);
        capture_kernel(name, file, line, grid, block, smem, s, (const void *)k, LaunchCtx<Tuple, P...>::run, &held->c,
                       held, Held::destroy);
        return;
    }
    Tuple args(std::forward<A>(a)...);  // converted to the parameter types once, as CUDA does
    LaunchCtx<Tuple, P...> c = {k, &args};
    run_grid(name, file, line, grid, block, smem, s, (const void *)k, LaunchCtx<Tuple, P...>::run, &c);
}

}  // namespace givt_emu

#define threadIdx (*givt_emu::t_tid)
#define blockIdx (static_cast<const uint3 &>(givt_emu::t_blockIdx))
#define blockDim (static_cast<const dim3 &>(givt_emu::t_blockDim))
#define gridDim (static_cast<const dim3 &>(givt_emu::t_gridDim))
static constexpr int warpSize = 32;

#define __syncthreads() givt_emu::syncthreads(__FILE__, __LINE__)
#define __shfl_sync(mask, v, ...) givt_emu::shfl(givt_emu::W_IDX, "__shfl_sync", __FILE__, __LINE__, mask, v, __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) \
    givt_emu::shfl(givt_emu::W_XOR, "__shfl_xor_sync", __FILE__, __LINE__, mask, v, __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) \
    givt_emu::shfl(givt_emu::W_DOWN, "__shfl_down_sync", __FILE__, __LINE__, mask, v, __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) \
    givt_emu::shfl(givt_emu::W_UP, "__shfl_up_sync", __FILE__, __LINE__, mask, v, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
    ((unsigned)givt_emu::warp_op(givt_emu::W_BALLOT, "__ballot_sync", __FILE__, __LINE__, mask, (pred) != 0, 0, 32))
#define __any_sync(mask, pred) \
    ((int)givt_emu::warp_op(givt_emu::W_ANY, "__any_sync", __FILE__, __LINE__, mask, (pred) != 0, 0, 32))
#define __all_sync(mask, pred) \
    ((int)givt_emu::warp_op(givt_emu::W_ALL, "__all_sync", __FILE__, __LINE__, mask, (pred) != 0, 0, 32))

// ---- WMMA (nvcuda::wmma of <mma.h>): m16n16k16, bf16 x bf16 -> float ------------------------------
// The documented API, for the shapes and types the kernels use: fragment<matrix_a | matrix_b, 16, 16,
// 16, __nv_bfloat16, row_major | col_major> and fragment<accumulator, 16, 16, 16, float> (8 elements
// x[] per lane), fill_fragment, load_matrix_sync (the accumulator's with a layout_t), store_matrix_sync
// (float accumulator) and mma_sync (d = a b + c, fp32 accumulation in k order; d may be c). Anything
// else (other shapes, half, tf32, integer types) does not compile here.
// load/store/mma_sync are warp collectives (warp_collective): all 32 lanes of a warp call them at the
// same site, with the same pointer, ldm and layout (checked), the pointer 32-byte (256-bit) aligned
// and ldm a multiple of 16 bytes (8 bf16, 4 floats), as the CUDA documentation requires; mma_sync
// reads every lane's fragments. fill_fragment is per lane (as on the GPU, where the same value in
// every lane is what makes it meaningful).
// Which lane holds which element is unspecified by CUDA; here it is a random permutation per launch
// and per use (wmma_map), never a row-major split, so a kernel that assumes a mapping (reads x[i] as
// a given row or column, or passes an accumulator's x[] as a matrix_a's) gives wrong results under
// emulation. Elementwise work on x[] that needs no mapping (scaling, a conversion applied to every
// element) is right in any mapping.
namespace nvcuda {
namespace wmma {
struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
class fragment {
    static_assert(m == 16 && n == 16 && k == 16, "cuda_emu: WMMA is emulated for m16n16k16 only");
    static_assert(std::is_same<Use, accumulator>::value
                      ? std::is_same<T, float>::value && std::is_void<Layout>::value
                      : (std::is_same<Use, matrix_a>::value || std::is_same<Use, matrix_b>::value) &&
                            std::is_same<T, __nv_bfloat16>::value &&
                            (std::is_same<Layout, row_major>::value || std::is_same<Layout, col_major>::value),
                  "cuda_emu: WMMA is emulated for bf16 matrix_a/matrix_b (row_major or col_major) and float "
                  "accumulators only");

  public:
    enum { num_elements = 8, num_storage_elements = 8 };
    typedef T element_type;
    typedef T storage_element_type;
    T x[8];
};

}  // namespace wmma
}  // namespace nvcuda

namespace givt_emu {
struct WmmaMem {  // one lane's part of load_matrix_sync / store_matrix_sync
    void *frag;   // its x[] (8 elements)
    void *p;
    unsigned ldm;
    int col_major, use, elem_bytes, store;
};
struct WmmaMma {  // one lane's part of mma_sync
    float *d;
    const __nv_bfloat16 *a, *b;
    const float *c;
};
void wmma_mem(void *const lanes[32]);
void wmma_mma(void *const lanes[32]);
template <typename L>
constexpr int wmma_col() {
    return std::is_same<L, nvcuda::wmma::col_major>::value;
}
template <typename T>
struct wmma_id {
    typedef T type;
};
}  // namespace givt_emu

namespace nvcuda {
namespace wmma {
// (file, line: the caller's, for the emulator's messages; kernels never pass them)
template <typename Use, int m, int n, int k, typename T, typename Layout>
static inline void fill_fragment(fragment<Use, m, n, k, T, Layout> &f, const typename givt_emu::wmma_id<T>::type &v) {
    for (int i = 0; i < 8; i++) f.x[i] = v;
}
template <typename Use, typename Layout>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout> &f, const __nv_bfloat16 *p,
                                    unsigned ldm, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    givt_emu::WmmaMem a = {f.x, (void *)p, ldm, givt_emu::wmma_col<Layout>(),
                           std::is_same<Use, matrix_a>::value ? 0 : 1, 2, 0};
    givt_emu::warp_collective("wmma::load_matrix_sync", file, line, givt_emu::wmma_mem, &a);
}
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm,
                                    layout_t layout, const char *file = __builtin_FILE(),
                                    int line = __builtin_LINE()) {
    givt_emu::WmmaMem a = {f.x, (void *)p, ldm, layout == mem_col_major, 2, 4, 0};
    givt_emu::warp_collective("wmma::load_matrix_sync", file, line, givt_emu::wmma_mem, &a);
}
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                                     layout_t layout, const char *file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    givt_emu::WmmaMem a = {(void *)f.x, p, ldm, layout == mem_col_major, 2, 4, 1};
    givt_emu::warp_collective("wmma::store_matrix_sync", file, line, givt_emu::wmma_mem, &a);
}
template <typename LA, typename LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                            const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c, const char *file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
    givt_emu::WmmaMma m = {d.x, a.x, b.x, c.x};
    givt_emu::warp_collective("wmma::mma_sync", file, line, givt_emu::wmma_mma, &m);
}
}  // namespace wmma
}  // namespace nvcuda

// ---- PTX warp-level matrix instructions (kernels/ptx.cuh): mma.sync m16n8k16 bf16, ldmatrix,
// cp.async. mma and ldmatrix are warp collectives (warp_collective: all 32 lanes at the same call);
// their fragments are the PTX ISA's (ptx.cuh lists them). cp.async is per thread: each copy is kept
// pending in its thread's open group and lands (the 16 bytes are copied) at the wait that covers it,
// or in the random fiber order earlier, at a scheduling point of its thread drawn by the launch's
// seed (a barrier, a collective, another cp.async); a thread's pending copies land when it exits.
namespace givt_emu {
struct PtxMma {  // one lane's part of mma_m16n8k16_bf16
    float *d;
    const unsigned *a, *b;
    const float *c;
};
struct PtxLdmatrix {  // one lane's part of ldmatrix
    unsigned *r;
    const void *p;
    int num, trans;
};
void ptx_mma(void *const lanes[32]);
void ptx_ldmatrix(void *const lanes[32]);
// cp.async.cg.shared.global (16 bytes); n < 0: cp.async.wait_all, else cp.async.wait_group n
void cp_async(void *dst, const void *src, const char *file, int line);
void cp_async_commit(void);
void cp_async_wait(int n);
}  // namespace givt_emu

// ---- device-only functions of the allowed list, on the host -----------------------------------
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// (glibc declares __expf and __logf itself: the emulated ones take other names)
static inline float givt_emu_expf(float x) { return expf(x); }
static inline float givt_emu_logf(float x) { return logf(x); }
static inline float givt_emu_fdividef(float a, float b) { return a / b; }
#define __expf givt_emu_expf
#define __logf givt_emu_logf
#define __fdividef givt_emu_fdividef
// One OS thread runs everything: plain read-modify-write is atomic here. Integers only (no
// floating-point atomics: reductions must be deterministic).
static inline int atomicAdd(int *p, int v) {
    int o = *p;
    *p = o + v;
    return o;
}
static inline unsigned atomicAdd(unsigned *p, unsigned v) {
    unsigned o = *p;
    *p = o + v;
    return o;
}
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    unsigned long long o = *p;
    *p = o + v;
    return o;
}

#endif
