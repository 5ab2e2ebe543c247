#!/usr/bin/env python3
"""bench_sample: decode speed of givt-sample against PyTorch running the seed's generation algorithm
(prepend bos, run the prompt once filling a KV cache, then one vector at a time), on the same weights,
plus an independent check of givt-sample's KV-cache rollout.

    scripts/bench_sample.sh                      # builds givt-sample, runs this: S and M, B = 1 and 64, L = 256
    PYTHON scripts/bench_sample.py --sizes S --reps 1
    PYTHON scripts/bench_sample.py --check-only --model runs/digits-.../step_00000900

Needs a Python with torch >= 2 and numpy (PyTorch from PyPI: its CPU BLAS is MKL + oneDNN) and a built
./givt-sample (make givt-sample). For each size it writes random float32 weights (non-zero everywhere,
scripts/givt_reference.py's random_weights, seeded) as a Hugging Face folder under --work, then:

* Agreement at temperature 0 (both sides return the means, so they must produce the same sequences):
  givt-sample against the PyTorch rollout (scripts/givt_reference.py's Givt.generate: KV cache,
  scaled_dot_product_attention) in float32, without a prompt and with a per-sample prompt;
  rel = ||givt - torch|| / ||torch|| over the whole (N, L, D) output, must be <= 1e-4. A float64
  PyTorch rollout is printed too, to show which side the difference comes from.
* Distribution at temperature 1: givt-sample's sampled sequences are run through the plain (uncached,
  full-sequence) PyTorch forward of GIVT.md; z = (x - mu) / std of every generated value must be
  standard normal (mean ~ 0, std ~ 1): checks the draw and that each vector was conditioned on the
  ones before it.
* Speed: vectors generated per second (= tokens/s) at batch 1 and 64, --len vectors and no prompt,
  temperature 1. givt-sample with OMP_NUM_THREADS=--threads; its rate is the one its last progress
  line reports (generation only: after loading, before writing). PyTorch eager float32 under
  inference_mode, torch.set_num_threads(1) and (--threads), the better is reported; the timed region
  is the generate() call (the weights are loaded before). Best of --reps runs on each side, the two
  sides interleaved; before each timed run the script waits (up to --max-wait s) for the cores to be
  idle, since on a shared 2-core machine a second busy process slows 2-thread runs several times.
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the environment of both sides (before torch is
imported). A benchmark, not a test: it exits non-zero only when the agreement check fails.
"""
import os

for _v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_v, None)

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no scripts/__pycache__ from the import below
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import givt_reference as ref  # noqa: E402


def torch_model(cfg, w, dtype):
    """The PyTorch side: givt_reference's Givt on these weights, scaled_dot_product_attention, whose
    generate() is the seed's generation with a KV cache (bos and the prompt in one pass, then one
    vector at a time)."""
    return ref.Givt.from_weights(cfg, w, dtype, attention="sdpa")


SIZES = {
    "S": dict(input_dim=16, hidden_dim=256, intermediate_dim=688, num_heads=4, num_layers=4),
    "M": dict(input_dim=32, hidden_dim=512, intermediate_dim=1376, num_heads=8, num_layers=8),
}


# ---- givt-sample ---------------------------------------------------------------------------------

def givt_sample(exe, folder, out, threads, max_len, n, batch, temperature, seed=0, prompt=None):
    """Runs givt-sample; returns (output array, vectors/s from its last progress line, wall s)."""
    cmd = [exe, folder, "--max-len", str(max_len), "--num-samples", str(n), "--batch-size", str(batch),
           "--temperature", str(temperature), "--seed", str(seed), "--out", out]
    if prompt:
        cmd += ["--prompt", prompt]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"bench_sample: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    rates = re.findall(r"sample: (\d+)/(\d+) vectors \| (\d+) vectors/s", r.stderr)
    if not rates or rates[-1][0] != rates[-1][1]:
        sys.exit(f"bench_sample: no final progress line in givt-sample's output:\n{r.stderr}")
    return np.load(out), float(rates[-1][2]), wall


# ---- checks --------------------------------------------------------------------------------------

def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)), float(np.abs(a - b).max())


def agreement(a, exe, folder, cfg, w, tag):
    """Temperature 0: givt-sample against the float32 and float64 PyTorch rollouts. Returns the worst rel."""
    D = cfg["input_dim"]
    L = min(a.len, cfg["block_size"])
    n = a.check_n
    t32, t64 = torch_model(cfg, w, torch.float32), torch_model(cfg, w, torch.float64)
    rng = np.random.default_rng(7)
    s = min(7, L - 1)
    prompt = rng.standard_normal((n, s, D)).astype(np.float32)
    ppath = os.path.join(a.work, f"prompt_{tag}.npy")
    np.save(ppath, prompt)
    worst = 0.0
    for label, p in (("no prompt", None), (f"prompt of {s}", ppath)):
        outs = {}
        for b in sorted({1, n}):
            outs[b], _, _ = givt_sample(exe, folder, os.path.join(a.work, f"t0_{tag}.npy"), a.threads, L, n, b, 0,
                                        prompt=p)
        g = outs[n]
        pt = None if p is None else torch.from_numpy(prompt)
        with torch.inference_mode():
            r32 = t32.generate(n, L, 0.0, pt).numpy()
            r64 = t64.generate(n, L, 0.0, None if pt is None else pt.double()).numpy()
        e32, m32 = rel(g, r32)
        e64, _ = rel(g, r64)
        e3264, _ = rel(r32, r64)
        same_b = np.array_equal(outs[1], outs[n])
        worst = max(worst, e32)
        print(f"  t=0 {tag} {label}: N={n} L={L}: givt vs torch f32 rel {e32:.2e} (max abs {m32:.2e}); "
              f"vs torch f64 rel {e64:.2e}; torch f32 vs f64 rel {e3264:.2e}; "
              f"givt batch 1 == batch {n}: {'bitwise' if same_b else 'rel %.1e' % rel(outs[1], g)[0]}",
              flush=True)
    return worst


def distribution(a, exe, folder, cfg, w, tag):
    """Temperature 1: z of givt-sample's draws under the full-sequence PyTorch forward."""
    if cfg["num_mixtures"] > 1:
        print(f"  t=1 {tag}: skipped (a mixture head: z would need the component each vector was drawn from)",
              flush=True)
        return None
    L = min(a.len, cfg["block_size"])
    n = a.check_n * 4
    x, _, _ = givt_sample(exe, folder, os.path.join(a.work, f"t1_{tag}.npy"), a.threads, L, n, n, 1.0, seed=3)
    with torch.inference_mode():
        mu, std = ref.forward({k: v.double() for k, v in w.items()}, torch.from_numpy(x).double(), cfg)
    z = ((torch.from_numpy(x).double() - mu) / std).numpy()
    print(f"  t=1 {tag}: N={n} L={L}: z = (x - mu) / std under the full forward: mean {z.mean():+.4f}, "
          f"std {z.std():.4f}, max |z| {np.abs(z).max():.2f} ({z.size} values)", flush=True)
    return z


# ---- speed ---------------------------------------------------------------------------------------

def bench_torch(model, B, n_seq, L, threads, gen):
    """Vectors/s of one PyTorch run generating n_seq sequences of L, B at a time."""
    torch.set_num_threads(threads)
    with torch.inference_mode():
        model.generate(B, min(8, L), 1.0, gen=gen)  # warm-up (and the new thread count)
        t0 = time.perf_counter()
        for _ in range(n_seq // B):
            model.generate(B, L, 1.0, gen=gen)
        return n_seq * L / (time.perf_counter() - t0)


def cpu_busy(interval=1.0):
    """Share of all cores busy over interval seconds (from /proc/stat), this process's idle wait included."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait):
    """Waits (up to max_wait s) until the cores are nearly idle, so that a timed run starts on a quiet
    machine; returns the busy share seen last."""
    t_end = time.time() + max_wait
    busy = cpu_busy()
    while busy > 0.1 and time.time() < t_end:
        busy = cpu_busy(2.0)
    return busy


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def make_weights(a, name):
    cfg = ref.make_config(**SIZES[name], block_size=max(a.len, 16))
    folder = os.path.join(a.work, f"model_{name}")
    g = torch.Generator().manual_seed(1234)
    w = ref.random_weights(cfg, g)
    ref.save_hf_folder(folder, dict(cfg, model_type="givt"), w)
    return cfg, folder, w


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="S,M")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--len", type=int, default=256, help="vectors per sequence, no prompt [256]")
    ap.add_argument("--seqs-b1", type=int, default=2, help="sequences generated one at a time for B = 1 [2]")
    ap.add_argument("--threads", type=int, default=2, help="givt's OMP_NUM_THREADS and torch's larger count [2]")
    ap.add_argument("--reps", type=int, default=3, help="runs per measurement, the best counts [3]")
    ap.add_argument("--max-wait", type=float, default=120,
                    help="before each timed run, wait up to this many s for the cores to be idle [120]")
    ap.add_argument("--check-n", type=int, default=4, help="sequences in the agreement check [4]")
    ap.add_argument("--check-only", action="store_true", help="the checks, no timing")
    ap.add_argument("--model", action="append", default=[],
                    help="also check this Hugging Face / checkpoint folder (repeatable)")
    ap.add_argument("--work", default=os.path.join(ROOT, "build/bench_sample"))
    ap.add_argument("--givt-sample", default=os.path.join(ROOT, "givt-sample"))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    exe = a.givt_sample

    cpu = platform.machine()
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    print(f"date {datetime.date.today()}, {os.cpu_count()} cores ({cpu}), load average {loadavg()}")
    if float(loadavg().split()[0]) > 0.5:
        print("warning: other processes share these cores: the timings will be low and noisy "
              "(the best of --reps interleaved runs is reported)")
    print(f"torch {torch.__version__} (BLAS: {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}), "
          f"numpy {np.__version__}; givt-sample OMP_NUM_THREADS={a.threads}", flush=True)

    worst = 0.0
    for folder in a.model:
        cfg, w = ref.load_hf_folder(folder)
        worst = max(worst, agreement(a, exe, folder, cfg, w, os.path.basename(folder.rstrip("/"))))
        distribution(a, exe, folder, cfg, w, os.path.basename(folder.rstrip("/")))

    rows, busy = [], []
    for name in a.sizes.split(","):
        cfg, folder, w = make_weights(a, name)
        print(f"size {name}: {SIZES[name]}, weights in {folder}, load average {loadavg()}", flush=True)
        worst = max(worst, agreement(a, exe, folder, cfg, w, name))
        distribution(a, exe, folder, cfg, w, name)
        if a.check_only:
            continue
        tmodel = torch_model(cfg, w, torch.float32)
        for B in (int(b) for b in a.batches.split(",")):
            n_seq = a.seqs_b1 if B == 1 else B
            # the runs of both sides are interleaved, so that a burst of load elsewhere hits both
            g_rate, t_rates = 0.0, {th: 0.0 for th in sorted({1, a.threads})}
            gen = torch.Generator().manual_seed(0)
            for _ in range(a.reps):
                busy.append(wait_quiet(a.max_wait))
                _, r, _ = givt_sample(exe, folder, os.path.join(a.work, "speed.npy"), a.threads, a.len, n_seq, B, 1.0)
                g_rate = max(g_rate, r)
                for th in t_rates:
                    busy.append(wait_quiet(a.max_wait))
                    t_rates[th] = max(t_rates[th], bench_torch(tmodel, B, n_seq, a.len, th, gen))
            t_thr = max(t_rates, key=t_rates.get)
            t_best = t_rates[t_thr]
            t_all = [f"{th}: {r:.0f}" for th, r in t_rates.items()]
            ratio = g_rate / t_best if t_best else math.nan
            print(f"  {name} B={B}: givt {g_rate:.0f} vectors/s; torch {', '.join(t_all)} vectors/s (threads: rate); "
                  f"ratio {ratio:.2f}", flush=True)
            rows.append((name, B, g_rate, t_best, t_thr, ratio))

    if rows:
        print()
        print(f"L = {a.len} vectors, no prompt, temperature 1; B = 1: {a.seqs_b1} sequences one at a time; "
              f"best of {a.reps}. Load average now {loadavg()}; cores busy before the timed runs: "
              f"median {100 * sorted(busy)[len(busy) // 2]:.0f}%, max {100 * max(busy):.0f}%.")
        print()
        print(f"| size | B | givt vectors/s ({a.threads} threads) | PyTorch vectors/s (best, threads) | givt / PyTorch |")
        print("|---|---|---|---|---|")
        for name, B, g, t, th, ratio in rows:
            print(f"| {name} | {B} | {g:.0f} | {t:.0f} ({th}) | {ratio:.2f} |")
    print()
    ok = worst <= 1e-4
    print(f"temperature-0 agreement: worst rel {worst:.2e} (tolerance 1e-4): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
