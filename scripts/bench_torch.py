#!/usr/bin/python3
"""PyTorch side of the CPU benchmark (scripts/bench_cpu.sh) and of the GPU one (scripts/gpu_check.sh):
the GIVT model of shared/GIVT.md (scripts/givt_reference.py's Givt, in float32), timed over full
training steps (zero_grad, forward, backward, clip_grad_norm_, AdamW step) with the same sizes,
initialisation rule and timing loop as givt-bench.
Prints one line "RESULT impl=torch threads=N tokens_per_s=... ms_per_step=... gflops=... params=..."
(the FLOP count is givt-bench's: 6 * matmul params + 12 * L * T * C per token, dense attention).

CPU (float32): /usr/bin/python3 scripts/bench_torch.py --threads 2 [sizes as givt-bench]
GPU: --device cuda [--bf16] [--compile]: --bf16 runs the forward under torch.autocast(bfloat16) with
float32 master weights (AdamW fused when available); --compile wraps the model's loss (forward and
Gaussian NLL) in torch.compile (the warmup steps, at least 2, absorb the compilation). The clock is
read after torch.cuda.synchronize(); the RESULT line adds peak_mem_bytes
(torch.cuda.max_memory_allocated) and, with --peak-tflops, mfu.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.dont_write_bytecode = True  # no scripts/__pycache__ from the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import givt_reference as ref  # noqa: E402  (the model: ref.Givt, also the float64 reference)


def time_sgemm(a):
    """torch.mm of float32 (M, K) @ (K, N): the best of a.reps, as givt-bench --sgemm."""
    M, N, K = a.sgemm
    x, w = torch.randn(M, K), torch.randn(K, N)
    out = torch.empty(M, N)
    for _ in range(2):
        torch.mm(x, w, out=out)
    best = float("inf")
    for _ in range(a.reps):
        t0 = time.perf_counter()
        torch.mm(x, w, out=out)
        best = min(best, time.perf_counter() - t0)
    gflops = 2.0 * M * N * K / best / 1e9
    print(f"RESULT impl=torch-sgemm threads={a.threads} m={M} n={N} k={K} gflops={gflops:.2f} ms={1e3 * best:.3f}")


def time_attention_op(a):
    """F.scaled_dot_product_attention alone (causal, (B, H, T, hd)), as givt-bench --attention: the median
    of a.steps calls of the forward and of the backward (out.backward(dout), the graph kept), and
    TFLOP/s counting the causal pairs only (forward 4 hd pairs, backward 10 hd pairs). On cuda with
    --bf16 the FlashAttention backend is required (SDPBackend.FLASH_ATTENTION); otherwise the default."""
    import contextlib
    B, H, T, hd = a.attention_op
    dev, dt = a.device, (torch.bfloat16 if a.bf16 else torch.float32)
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v, dout = (torch.randn(B, H, T, hd, generator=g).to(dev, dt) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    ctx = contextlib.nullcontext()
    if dev == "cuda" and a.bf16:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx = sdpa_kernel(SDPBackend.FLASH_ATTENTION)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def median_time(fn):
        ts = []
        for i in range(a.warmup + a.steps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= a.warmup:
                ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    with ctx:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        tf = median_time(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
        tb = median_time(lambda: out.backward(dout, retain_graph=True))
    pairs = B * H * T * (T + 1) / 2
    ff, fb = 4 * hd * pairs, 10 * hd * pairs
    print(f"sdpa B {B} H {H} T {T} hd {hd} (causal, {dt}): forward {1e3 * tf:.3f} ms {ff / tf / 1e12:.2f} TFLOP/s, "
          f"backward {1e3 * tb:.3f} ms {fb / tb / 1e12:.2f} TFLOP/s (median of {a.steps})")
    print(f"RESULT impl=torch-sdpa B={B} H={H} T={T} hd={hd} fwd_ms={1e3 * tf:.4f} bwd_ms={1e3 * tb:.4f} "
          f"fwd_tflops={ff / tf / 1e12:.3f} bwd_tflops={fb / tb / 1e12:.3f} torch={torch.__version__}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-dim", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-adamw", action="store_true", help="time forward + backward only")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--show-config", action="store_true", help="print torch.__config__.show() and exit")
    ap.add_argument("--profile", action="store_true", help="print the autograd profiler's top ops")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true", help="autocast bfloat16 compute, float32 master weights")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (compiled during warmup)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak, for the MFU field")
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "math"],
                    help="sdpa: F.scaled_dot_product_attention (PyTorch >= 2); math: the masked softmax written out")
    ap.add_argument("--sgemm", type=int, nargs=3, metavar=("M", "N", "K"),
                    help="time torch.mm of (M, K) @ (K, N) float32 instead (this PyTorch's BLAS ceiling)")
    ap.add_argument("--reps", type=int, default=10, help="--sgemm: timed repetitions (the best is reported)")
    ap.add_argument("--attention-op", type=int, nargs=4, metavar=("B", "H", "T", "HD"),
                    help="time F.scaled_dot_product_attention alone (forward, backward), as givt-bench --attention")
    a = ap.parse_args()
    if a.show_config:
        print(torch.__version__)
        print(torch.__config__.show())
        print(torch.__config__.parallel_info())
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "blas" in line or "omp" in line or "dnnl" in line})
        print("loaded:", " ".join(libs))
        return

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.sgemm:
        return time_sgemm(a)
    if a.attention_op:
        return time_attention_op(a)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_torch.py: --device cuda: CUDA is not available")
    if a.compile:
        a.warmup = max(a.warmup, 2)  # the first steps compile (forward, then backward)
    D, C, F, H, L, T, B = a.input_dim, a.hidden, a.intermediate, a.heads, a.layers, a.seq, a.batch
    cfg = ref.make_config(input_dim=D, hidden_dim=C, intermediate_dim=F, num_heads=H, num_layers=L, block_size=T)
    model = ref.Givt(cfg, dtype=torch.float32, attention=a.attention)
    # GIVT.md's init (xavier uniform, bos normal(0, 0.02), norms ones), the zero-initialised weights
    # (o_proj, fc3, head) given small values
    model.reset_parameters(zero_std=0.02)
    model.to(dev)
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    fused = False
    if cuda:
        try:
            opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.99), eps=1e-8, fused=True)
            fused = True
        except (TypeError, RuntimeError):  # a PyTorch without fused AdamW
            opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    else:
        opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    x = torch.randn(B, T, D).to(dev)
    # the loss is part of what is timed (and compiled): Givt.loss = forward + the seed's Gaussian NLL
    fwd = torch.compile(model.loss) if a.compile else model.loss

    def forward():
        if a.bf16:
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                return fwd(x)
        return fwd(x)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    n_params = sum(p.numel() for p in model.parameters())
    n_mm = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    fpt = 6.0 * n_mm + 12.0 * L * T * C  # as givt-bench: dense attention, forward + backward
    tokens = B * T

    def step():
        opt.zero_grad()
        loss = forward()
        loss.backward()
        if not a.no_adamw:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return loss.item()

    t_warm = time.perf_counter()
    for _ in range(a.warmup):
        step()
    sync()
    t_warm = time.perf_counter() - t_warm
    times = []
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    peak_mem = torch.cuda.max_memory_allocated(dev) if cuda else 0
    if a.profile:
        with torch.autograd.profiler.profile() as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    per_step = statistics.median(times)  # as givt-bench: robust to a step slowed by another process
    gflops = fpt * tokens / per_step / 1e9
    what = f"{a.device}{' bf16 autocast' if a.bf16 else ' float32'}{' compiled' if a.compile else ' eager'}"
    what += f", attention {a.attention}"
    if cuda:
        what += f" ({torch.cuda.get_device_name(dev)}{', fused AdamW' if fused else ''})"
    print(f"torch {torch.__version__}: {what}; warmup {t_warm:.1f} s")
    print(f"torch {torch.__version__}: {a.steps} steps (+{a.warmup} warmup), {a.threads} threads: "
          f"median {1e3 * per_step:.1f} ms/step (best {1e3 * min(times):.1f}, mean {1e3 * sum(times) / len(times):.1f}), {tokens / per_step:.0f} tokens/s, "
          f"{gflops:.2f} GFLOP/s, loss {loss:.4f}")
    print(f"RESULT impl=torch threads={a.threads} tokens_per_s={tokens / per_step:.1f} "
          f"ms_per_step={1e3 * per_step:.2f} best_ms={1e3 * min(times):.2f} gflops={gflops:.2f} "
          f"params={n_params} flops_per_token={fpt:.0f} loss={loss:.5f} compile={int(a.compile)} "
          f"attention={model.attention}"
          + (f" device={a.device} dtype={'bf16' if a.bf16 else 'float32'}"
             f" peak_mem_bytes={peak_mem} warmup_s={t_warm:.1f}" if cuda else "")
          + (f" mfu={fpt * tokens / per_step / (a.peak_tflops * 1e12):.4f}" if a.peak_tflops > 0 else ""))


if __name__ == "__main__":
    main()
