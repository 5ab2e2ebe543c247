// kernels/attention_mma.cuh: the bf16 FlashAttention-2 style attention kernels (mma.sync m16n8k16).
// attention_mma_fwd.cu holds the forward, attention_mma_bwd.cu the backward.
#ifndef GIVT_KERNELS_ATTENTION_MMA_CUH
#define GIVT_KERNELS_ATTENTION_MMA_CUH
#include "launch.cuh"

// forward: out (B, Tq, H*hd) dense bf16, lse (B, H, Tq) float = max + log(sum) per query row (as today's L); q, k already rotated (RoPE ran before); strides in AttnShape (csrc/backend/ops.h)
void cuda_attn_mma_fwd(Backend *be, __nv_bfloat16 *out, float *lse, const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v, const AttnShape *s);
// backward (written by the other helper)
size_t cuda_attn_mma_bwd_scratch_bytes(const AttnShape *s);
void cuda_attn_mma_bwd(Backend *be, __nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv, void *scratch, const __nv_bfloat16 *dout, const __nv_bfloat16 *out, const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v, const float *lse, const float *cos_t, const float *sin_t, const AttnShape *s);

#endif
