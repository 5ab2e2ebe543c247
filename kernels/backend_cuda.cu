// backend_cuda: the CUDA backend's host side: the registry's entry (backend_cuda_available,
// backend_cuda_open), the context (device, stream, cuBLASLt handle and workspace, scratch), the
// memory ops and the op table, whose compute ops are the kernel groups' entry points
// (kernels/cuda_backend.h). Every op is enqueued on the context's one stream, in order; download and
// synchronize wait for it; readback_wait waits for its event only (the work enqueued after goes on). Profile ranges: NVTX (nvtxRangePushA/Pop) on a GPU, nothing under emulation.
#include "launch.cuh"

#include "cublaslt_check.cuh"
#include <string.h>
#ifndef GIVT_CUDA_EMU
#include <nvtx3/nvToolsExt.h>
#endif


namespace {

#ifdef GIVT_CUDA_EMU
const size_t kWorkspaceBytes = (size_t)64 << 10;  // the emulated GEMM needs none
#else
const size_t kWorkspaceBytes = (size_t)32 << 20;  // cuBLASLt's workspace
#endif
const size_t kScratchBytes = (size_t)4 << 20;     // the ops' partial sums (common.cuh: cm_scratch_get)

void *cu_alloc(Backend *be, size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        size_t free_b = 0, total_b = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
        givt_die("out of GPU memory allocating %zu bytes (%.2f GiB free of %.2f GiB)", bytes, free_b / 1073741824.0,
                 total_b / 1073741824.0);
    }
    CUDA_CHECK(e);
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_stream(be)));
    return p;
}

void cu_free(Backend *be, void *p) {
    if (!p) return;
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream(be)));  // no kernel still uses it
    CUDA_CHECK(cudaFree(p));
}

void cu_upload(Backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    // from pageable memory the copy has read src when the call returns: the caller may reuse it
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda_stream(be)));
}

void cu_download(Backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cuda_stream(be)));
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream(be)));
}

void cu_zero(Backend *be, void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_stream(be)));
}

void cu_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda_stream(be)));
}

void cu_mem_info(Backend *be, size_t *free_bytes, size_t *total_bytes) {
    CUDA_CHECK(cudaSetDevice(cuda_ctx(be)->device));
    CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

void cu_synchronize(Backend *be) { CUDA_CHECK(cudaStreamSynchronize(cuda_stream(be))); }

// A readback slot: pinned host memory (a copy into it is asynchronous) and the event after its copy.
struct CudaReadback {
    void *host;
    size_t bytes;
    cudaEvent_t done;
};

BackendReadback *cu_readback_create(Backend *be, size_t bytes) {
    (void)be;
    CudaReadback *r = (CudaReadback *)xcalloc(1, sizeof *r);
    CUDA_CHECK(cudaMallocHost(&r->host, bytes ? bytes : 1));
    r->bytes = bytes;
    CUDA_CHECK(cudaEventCreateWithFlags(&r->done, cudaEventDisableTiming));
    return (BackendReadback *)r;
}

void cu_readback_start(Backend *be, BackendReadback *rb, const void *src, size_t bytes) {
    CudaReadback *r = (CudaReadback *)rb;
    if (bytes > r->bytes) givt_die("cuda readback_start: %zu bytes into a slot of %zu", bytes, r->bytes);
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(r->host, src, bytes, cudaMemcpyDeviceToHost, cuda_stream(be)));
    CUDA_CHECK(cudaEventRecord(r->done, cuda_stream(be)));
}

// waits for the event alone: the work enqueued after readback_start goes on
const void *cu_readback_wait(Backend *be, BackendReadback *rb) {
    (void)be;
    CudaReadback *r = (CudaReadback *)rb;
    CUDA_CHECK(cudaEventSynchronize(r->done));
    return r->host;
}

void cu_readback_free(Backend *be, BackendReadback *rb) {
    (void)be;
    CudaReadback *r = (CudaReadback *)rb;
    if (!r) return;
    CUDA_CHECK(cudaEventSynchronize(r->done));  // no copy into the memory freed
    CUDA_CHECK(cudaEventDestroy(r->done));
    CUDA_CHECK(cudaFreeHost(r->host));
    free(r);
}

// Pinned host memory: the copy engine reads it directly, so that upload_async never waits.
void *cu_host_alloc(Backend *be, size_t bytes) {
    (void)be;
    void *p = NULL;
    CUDA_CHECK(cudaMallocHost(&p, bytes ? bytes : 1));
    memset(p, 0, bytes);
    return p;
}

void cu_host_free(Backend *be, void *p) {
    if (!p) return;
    // no copy still reads it (the copy stream's: the compute stream waits for each of them)
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream(be)));
    CUDA_CHECK(cudaFreeHost(p));
}

// upload_async: the host-to-device copy runs on a copy stream of its own, into a device staging
// buffer of a small ring, so that it overlaps the compute stream's work (the copy engine and the SMs
// work at once); the compute stream waits for it (an event), then copies the staging buffer to dst
// in its own order (device to device: about 1 us for base.ini's batch of 1 MiB) and records that the
// staging buffer may be written again (an event the copy stream waits for before its next copy into
// it). dst is written in the compute stream's order, as an upload on it would be (and no graph
// records a pointer to the ring: dst is what the ops read).
const int kUploadSlots = 4;
struct CudaUploads {
    cudaStream_t stream;
    void *staging[kUploadSlots];
    size_t bytes[kUploadSlots];
    cudaEvent_t uploaded[kUploadSlots], consumed[kUploadSlots];
    int next;
};

CudaUploads *cu_uploads(Backend *be) {
    CudaCtx *c = cuda_ctx(be);
    if (c->upload) return (CudaUploads *)c->upload;
    CudaUploads *u = (CudaUploads *)xcalloc(1, sizeof *u);
    CUDA_CHECK(cudaStreamCreateWithFlags(&u->stream, cudaStreamNonBlocking));
    for (int i = 0; i < kUploadSlots; i++) {
        CUDA_CHECK(cudaEventCreateWithFlags(&u->uploaded[i], cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&u->consumed[i], cudaEventDisableTiming));
    }
    c->upload = u;
    return u;
}

void cu_upload_async(Backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CudaUploads *u = cu_uploads(be);
    const int i = u->next;
    u->next = (i + 1) % kUploadSlots;
    if (u->bytes[i] < bytes) {  // (the first uploads of a run: nothing in flight uses slot i then)
        CUDA_CHECK(cudaStreamSynchronize(cuda_stream(be)));
        if (u->staging[i]) CUDA_CHECK(cudaFree(u->staging[i]));
        CUDA_CHECK(cudaMalloc(&u->staging[i], bytes));
        u->bytes[i] = bytes;
    }
    CUDA_CHECK(cudaStreamWaitEvent(u->stream, u->consumed[i], 0));  // its last D2D copy has read it
    CUDA_CHECK(cudaMemcpyAsync(u->staging[i], src, bytes, cudaMemcpyHostToDevice, u->stream));
    CUDA_CHECK(cudaEventRecord(u->uploaded[i], u->stream));
    CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(be), u->uploaded[i], 0));
    CUDA_CHECK(cudaMemcpyAsync(dst, u->staging[i], bytes, cudaMemcpyDeviceToDevice, cuda_stream(be)));
    CUDA_CHECK(cudaEventRecord(u->consumed[i], cuda_stream(be)));
}

void cu_uploads_free(CudaCtx *c) {
    CudaUploads *u = (CudaUploads *)c->upload;
    if (!u) return;
    CUDA_CHECK(cudaStreamSynchronize(u->stream));
    for (int i = 0; i < kUploadSlots; i++) {
        if (u->staging[i]) CUDA_CHECK(cudaFree(u->staging[i]));
        CUDA_CHECK(cudaEventDestroy(u->uploaded[i]));
        CUDA_CHECK(cudaEventDestroy(u->consumed[i]));
    }
    CUDA_CHECK(cudaStreamDestroy(u->stream));
    free(u);
    c->upload = NULL;
}

// ---- graphs: the stream's work captured (cudaStreamBeginCapture) and replayed (cudaGraphLaunch) ----
struct CudaGraph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
};

// Global capture mode: a call that would wait for the device or allocate, from any thread, fails
// the capture instead of running (the step must not contain one).
int cu_graph_begin(Backend *be) {
    cudaError_t e = cudaStreamBeginCapture(cuda_stream(be), cudaStreamCaptureModeGlobal);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return givt_fail("CUDA graph capture could not start: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
    }
    return 0;
}

BackendGraph *cu_graph_end(Backend *be) {
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(cuda_stream(be), &graph);
    if (e != cudaSuccess || !graph) {
        cudaGetLastError();
        givt_fail("CUDA graph capture failed: %s (%s): the step holds a call that cannot be recorded (a wait "
                  "for the device, an allocation, a copy from ordinary host memory)",
                  cudaGetErrorString(e), cudaGetErrorName(e));
        return NULL;
    }
    CudaGraph *g = (CudaGraph *)xcalloc(1, sizeof *g);
    g->graph = graph;
    e = cudaGraphInstantiate(&g->exec, graph, 0);
    if (e != cudaSuccess) {
        cudaGetLastError();
        CUDA_CHECK(cudaGraphDestroy(graph));
        free(g);
        givt_fail("CUDA graph instantiation failed: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
        return NULL;
    }
    return (BackendGraph *)g;
}

void cu_graph_launch(Backend *be, BackendGraph *bg) {
    CUDA_CHECK(cudaGraphLaunch(((CudaGraph *)bg)->exec, cuda_stream(be)));
}

void cu_graph_free(Backend *be, BackendGraph *bg) {
    CudaGraph *g = (CudaGraph *)bg;
    if (!g) return;
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream(be)));  // no replay still running
    CUDA_CHECK(cudaGraphExecDestroy(g->exec));
    CUDA_CHECK(cudaGraphDestroy(g->graph));
    free(g);
}

#ifdef GIVT_CUDA_EMU
// the emulation's counts (kernels/emu/cuda_emu.h); on a GPU nothing is counted (no stats op)
void cu_stats(Backend *be, BackendStats *out) {
    (void)be;
    const givt_emu::Stats s = givt_emu::stats();
    out->counted = 1;
    out->launches = s.launches;
    out->host_syncs = s.host_syncs;
    out->fence_waits = s.fence_waits;
}
#endif

void cu_close(Backend *be) {
    CudaCtx *c = cuda_ctx(be);
    if (!c) return;
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream(be)));
    cu_uploads_free(c);
    CUBLAS_CHECK(cublasLtDestroy((cublasLtHandle_t)c->cublaslt));
    CUDA_CHECK(cudaFree(c->workspace));
    CUDA_CHECK(cudaFree(c->scratch));
    CUDA_CHECK(cudaStreamDestroy((cudaStream_t)c->stream));
    free(c);
    be->ctx = NULL;
}

void cu_range_push(Backend *be, const char *name) {
    (void)be;
#ifdef GIVT_CUDA_EMU
    (void)name;
#else
    nvtxRangePushA(name);
#endif
}

void cu_range_pop(Backend *be) {
    (void)be;
#ifndef GIVT_CUDA_EMU
    nvtxRangePop();
#endif
}

GivtOps make_ops() {
    GivtOps o;
    memset(&o, 0, sizeof o);
    o.alloc = cu_alloc;
    o.free = cu_free;
    o.upload = cu_upload;
    o.download = cu_download;
    o.zero = cu_zero;
    o.copy = cu_copy;
    o.copy_rows = cuda_copy_rows;
    o.mem_info = cu_mem_info;
    o.synchronize = cu_synchronize;
    o.close = cu_close;
    o.readback_create = cu_readback_create;
    o.readback_start = cu_readback_start;
    o.readback_wait = cu_readback_wait;
    o.readback_free = cu_readback_free;
    o.host_alloc = cu_host_alloc;
    o.host_free = cu_host_free;
    o.upload_async = cu_upload_async;
    o.graph_begin = cu_graph_begin;
    o.graph_end = cu_graph_end;
    o.graph_launch = cu_graph_launch;
    o.graph_free = cu_graph_free;
    o.to_compute = cuda_to_compute;
    o.matmul_fwd = cuda_matmul_fwd;
    o.matmul_bwd = cuda_matmul_bwd;
    o.residual_rmsnorm_fwd = cuda_residual_rmsnorm_fwd;
    o.residual_rmsnorm_bwd = cuda_residual_rmsnorm_bwd;
    o.attention_saved_bytes = cuda_attention_saved_bytes;
    o.attention_fwd = cuda_attention_fwd;
    o.attention_scratch_bytes = cuda_attention_scratch_bytes;
    o.attention_bwd = cuda_attention_bwd;
    o.swiglu_fwd = cuda_swiglu_fwd;
    o.swiglu_bwd = cuda_swiglu_bwd;
    o.shift_bos = cuda_shift_bos;
    o.shift_bos_bwd = cuda_shift_bos_bwd;
    o.class_embed_fwd = cuda_class_embed_fwd;
    o.class_embed_bwd = cuda_class_embed_bwd;
    o.gaussian_nll = cuda_gaussian_nll;
    o.mixture_nll = cuda_mixture_nll;
    o.sumsq = cuda_sumsq;
    o.step_check = cuda_step_check;
    o.adamw = cuda_adamw;
    o.ema_update = cuda_ema_update;
    o.range_push = cu_range_push;
    o.range_pop = cu_range_pop;
#ifdef GIVT_CUDA_EMU
    o.stats = cu_stats;
#endif
    return o;
}

const GivtOps g_cuda_ops = make_ops();

}  // namespace

// 1: a GPU is there; 2 (under emulation): the emulated device, which device = auto does not pick;
// 0: not available, with the reason in why (one line).
extern "C" int backend_cuda_available(char *why, size_t n) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();  // not sticky: clear it
        const char *hint = givt_cuda_hint(e);
        snprintf(why, n, "%s (%s)", *hint ? hint : cudaGetErrorString(e), cudaGetErrorName(e));
        return 0;
    }
    if (count < 1) {
        snprintf(why, n, "no CUDA device visible (cudaGetDeviceCount = 0)");
        return 0;
    }
#ifdef GIVT_CUDA_EMU
    snprintf(why, n, "emulated CUDA on the CPU (kernels/emu): device = cuda only, never auto");
    return 2;
#else
    snprintf(why, n, "%d device%s", count, count > 1 ? "s" : "");
    return 1;
#endif
}

// ---- the device's peak ---------------------------------------------------------------------------
// Dense FLOP/s of a GPU in the compute dtype, for MFU: SMs x clock x the architecture's dense rate per
// SM and clock. sm_90 (Hopper): bf16 with fp32 accumulation on the tensor cores, 4096 FLOP/clk/SM
// (1024 FMA per SM and clock, dense); float32 compute (no TF32: the matmuls are cuBLASLt's FFMA and
// the kernels FMA), 256 FLOP/clk/SM (128 FP32 lanes x FMA).
// The clock, chosen deliberately: cudaDevAttrClockRate is the maximum boost clock (1980 MHz on an
// H100/H200 SXM, 1755 PCIe, 1785 NVL), which a tensor-core load does not hold under the power limit;
// NVIDIA's datasheet tensor figures use a lower clock per product, so the bf16 peak of the known
// parts comes from a table of those clocks by SM count and name: 132 SMs 1830 MHz (H100 SXM, H200
// SXM, H800, GH200: 989.4 TFLOP/s), 132 SMs with "NVL" in the name 1545 MHz (H100 NVL, H200 NVL:
// 835.3), 114 SMs 1620 MHz (H100 PCIe, H800 PCIe: 756.4). Any other sm_90 part: the formula at the
// device's boost clock (an upper bound; [train] peak_tflops or --peak-tflops override it). Float32:
// the formula at the boost clock, which is what the datasheets' FP32 figures use (67 TFLOP/s SXM, 51
// PCIe, 60 NVL). Other architectures (this binary is built for sm_90): 0, unknown.
// name may be NULL (no name-specific entry matches); clock_khz as cudaDevAttrClockRate reports it.
extern "C" double cuda_peak_flops(int major, int minor, int sms, int clock_khz, const char *name, DType dtype) {
    if (major != 9 || minor != 0 || sms <= 0) return 0;
    if (dtype == DTYPE_F32) return clock_khz > 0 ? (double)sms * 256.0 * clock_khz * 1e3 : 0;
    static const struct {
        int sms;
        const char *in_name;  // "" for any name
        int mhz;              // the datasheet's tensor-core clock
    } known[] = {
        {132, "NVL", 1545},  // H100 NVL, H200 NVL
        {132, "", 1830},     // H100 SXM5, H200 SXM, H800 SXM, GH200
        {114, "", 1620},     // H100 PCIe, H800 PCIe
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (known[i].sms == sms && (!known[i].in_name[0] || (name && strstr(name, known[i].in_name))))
            return (double)sms * 4096.0 * known[i].mhz * 1e6;
    return clock_khz > 0 ? (double)sms * 4096.0 * clock_khz * 1e3 : 0;
}

extern "C" Backend *backend_cuda_open(Precision p) {
    int count = 0;
    CUDA_CHECK(cudaGetDeviceCount(&count));
    const int device = count > 0 ? backend_device_ordinal() % count : 0;  // data parallel: the local rank's GPU
    CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    Backend *be = (Backend *)xcalloc(1, sizeof *be);
    CudaCtx *c = (CudaCtx *)xcalloc(1, sizeof *c);
    be->name = "cuda";
    be->caps = BACKEND_CAP_DEVICE_MEMORY;  // device memory (emulated: the emulator's), its own mem_info
    be->ops = &g_cuda_ops;
    be->ctx = c;
    be->compute = p == PRECISION_BF16 ? DTYPE_BF16 : DTYPE_F32;
#ifdef GIVT_CUDA_EMU
    c->emulated = 1;
    snprintf(be->device, sizeof be->device, "emulated CUDA (CPU)");
    be->peak_flops = 0;
#else
    snprintf(be->device, sizeof be->device, "%.100s, %.0f GiB, GPU %d", prop.name, prop.totalGlobalMem / 1073741824.0,
             device);
    // the device's dense peak in the compute dtype (cuda_peak_flops: a table of datasheet clocks, or
    // SMs x boost clock x rate); [train] peak_tflops overrides it
    int clock_khz = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device));
    be->peak_flops =
        cuda_peak_flops(prop.major, prop.minor, prop.multiProcessorCount, clock_khz, prop.name, be->compute);
#endif
    c->device = device;
    c->dtype = be->compute;
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    c->stream = (void *)s;
    cublasLtHandle_t h;
    CUBLAS_CHECK(cublasLtCreate(&h));
    c->cublaslt = (void *)h;
    c->workspace_bytes = kWorkspaceBytes;
    CUDA_CHECK(cudaMalloc(&c->workspace, c->workspace_bytes));
    c->scratch_bytes = kScratchBytes;
    CUDA_CHECK(cudaMalloc(&c->scratch, c->scratch_bytes));
    return be;
}
