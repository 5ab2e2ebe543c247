// cuda_backend: the CUDA backend's shared declarations: its context and the op entry points that the
// kernel groups (kernels/*.cu) define and the backend host code (kernels/backend_cuda.cu) puts into
// the op table. The same source builds for a GPU (nvcc) and for the CPU emulation (g++ with
// GIVT_CUDA_EMU, see kernels/emu/): kernels/launch.cuh picks the one or the other.
// Each entry point has exactly the signature of its GivtOps member (csrc/backend/ops.h) and the
// semantics of the CPU reference (csrc/cpu/ops_cpu.c); compute buffers (cval *) hold bf16 when
// CudaCtx.dtype is DTYPE_BF16 and float when it is DTYPE_F32.
#ifndef GIVT_CUDA_BACKEND_H
#define GIVT_CUDA_BACKEND_H

#include <stddef.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

// Backend.ctx of the CUDA backend. The stream type is kept opaque here so that C code can include
// this header; .cu files cast it with cuda_stream(be) (launch.cuh).
typedef struct {
    int device;               // CUDA device ordinal
    DType dtype;              // compute dtype (== Backend.compute)
    void *stream;             // cudaStream_t: every op is enqueued on it, in order
    void *cublaslt;           // cublasLtHandle_t
    void *workspace;          // cuBLASLt workspace (device memory)
    size_t workspace_bytes;
    void *scratch;            // device scratch for the ops' own partial sums (deterministic reductions)
    size_t scratch_bytes;
    int emulated;             // 1 in the CPU emulation build
    void *upload;             // CudaUploads: the copy stream of upload_async and its staging ring (backend_cuda.cu)
} CudaCtx;

// ---- kernels/norm.cu ----
void cuda_residual_rmsnorm_fwd(Backend *be, cval *res_out, cval *norm_out, float *rstd, const cval *res_in,
                               const cval *branch, const cval *w, int N, int C);
void cuda_residual_rmsnorm_bwd(Backend *be, cval *dres, float *dw, const cval *dnorm, const cval *res,
                               const cval *w, const float *rstd, int N, int C);
// ---- kernels/elementwise.cu ----
void cuda_swiglu_fwd(Backend *be, cval *out, const cval *h, int N, int F);
void cuda_swiglu_bwd(Backend *be, cval *dh, const cval *dout, const cval *h, int N, int F);
void cuda_shift_bos(Backend *be, cval *in, const float *x, const cval *bos, int B, int T, int D);
void cuda_shift_bos_bwd(Backend *be, float *dbos, const cval *din, int B, int T, int D);
void cuda_class_embed_fwd(Backend *be, cval *res, const cval *table, const int32_t *labels, int B, int T, int C);
void cuda_class_embed_bwd(Backend *be, float *dtable, cval *dres, const int32_t *labels, int B, int T, int C);
void cuda_to_compute(Backend *be, cval *dst, const float *src, size_t n);
void cuda_copy_rows(Backend *be, cval *dst, size_t dst_row, size_t dst_batch, const cval *src, size_t src_row,
                    size_t src_batch, int B, int rows, int width);
// ---- kernels/loss.cu ----
void cuda_gaussian_nll(Backend *be, cval *dy, double *loss_sum, const cval *y, const float *x, int N, int D,
                       double eps, float scale);
void cuda_mixture_nll(Backend *be, cval *dy, double *loss_sum, const cval *y, const float *x, int N, int D, int K,
                      double eps, float scale);
void cuda_sumsq(Backend *be, double *acc, const float *p, size_t n);
// ---- kernels/optim.cu ----
void cuda_step_check(Backend *be, StepRecord *rec, const double *loss_norm, double loss_count,
                     const StepSchedule *sched);
void cuda_adamw(Backend *be, float *p, cval *p_compute, const float *g, float *m, float *v, float *ema,
                cval *ema_compute, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                float grad_scale, int t, float ema_decay, const StepRecord *rec);
void cuda_ema_update(Backend *be, float *ema, cval *ema_compute, const float *p, size_t n, float decay,
                     const StepRecord *rec);
// ---- kernels/attention.cu ----
size_t cuda_attention_saved_bytes(Backend *be, const AttnShape *s);
void cuda_attention_fwd(Backend *be, cval *out, void *saved, cval *q, cval *k, const cval *v, const float *cos,
                        const float *sin, const AttnShape *s);
size_t cuda_attention_scratch_bytes(Backend *be, const AttnShape *s);
void cuda_attention_bwd(Backend *be, cval *dq, cval *dk, cval *dv, void *scratch, const cval *dout, const cval *out,
                        const cval *q, const cval *k, const cval *v, const void *saved, const float *cos,
                        const float *sin, const AttnShape *s);
// ---- kernels/matmul.cu (cuBLASLt) ----
void cuda_matmul_fwd(Backend *be, cval *out, const cval *inp, const cval *w, int N, int K, int M);
void cuda_matmul_bwd(Backend *be, cval *dinp, float *dw, const cval *dout, const cval *inp, const cval *w, int N,
                     int K, int M);

// ---- kernels/backend_cuda.cu: the registry's entry (csrc/backend/backend.c) ----
int backend_cuda_available(char *why, size_t n);
Backend *backend_cuda_open(Precision p);
// The dense peak FLOP/s of a GPU of compute capability major.minor with sms SMs at clock_khz (the
// maximum boost clock, cudaDevAttrClockRate) named name (NULL: unknown) in compute dtype dtype; 0
// when unknown. Backend.peak_flops of the CUDA backend. A pure function (tests/test_cuda_emu.cu).
double cuda_peak_flops(int major, int minor, int sms, int clock_khz, const char *name, DType dtype);
// ---- kernels/reduce_convert.cu: gradients between ranks in bf16 (kernels/dist_nccl.cu) ----
// On stream (a cudaStream_t): dst (n bf16) = src (n floats) rounded to nearest even; and
// dst (n floats) = float(src (n bf16)) * scale. Not in the op table (tests/test_reduce_convert.cu).
void cuda_grads_to_bf16(Backend *be, void *stream, void *dst, const float *src, size_t n);
void cuda_grads_from_bf16(Backend *be, void *stream, float *dst, const void *src, size_t n, float scale);

#ifdef __cplusplus
}
#endif

#endif
