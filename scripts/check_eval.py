"""check_eval: acceptance check of givt-eval against the float64 PyTorch reference on a random model (with or without a mixture head and class embedding) and data set (seeded by the command line)."""
# Usage: /usr/bin/python3 scripts/check_eval.py [SEED] [--eval PATH_TO_GIVT_EVAL] [--device D] [--precision P] [--keep]
# (--device/--precision go to givt-eval: e.g. the emulated CUDA build, `--eval build/emu/givt-eval
# --device cuda --precision bf16`; bf16's tolerance is 2e-2, the issue's for bf16 losses)
# Draws a random configuration and random weights (never the ones in tests/reference.bin), writes
# an HF folder (config.json + model.safetensors, float32) and a data set (N, T, D) float32 .npy
# in a temporary directory, runs `givt-eval FOLDER DATA.npy --batch-size 3`, reads its line
# `loss = <value>` and compares it with the mean Gaussian NLL over all N*T*D elements (without
# the 0.5*log(2*pi) constant) computed here in float64.
# Tolerance (float32 compute): relative 1e-5 -- the engine computes in float32 (1e-7 per rounding, a few hundred
# roundings per output through the layers) and sums the loss in double.
# Prints PASS or FAIL; exits 0 on PASS, 1 on FAIL, 2 when givt-eval could not be run.

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import givt_reference as ref  # noqa: E402

TOL = 1e-5
TOL_BF16 = 2e-2


def random_config(rnd):
    """A random valid configuration: C = H * hd, with int(pct * hd) even."""
    H = rnd.choice([1, 2, 3, 4])
    hd = rnd.choice([4, 6, 8, 10, 12])
    pcts = [p for p in (1.0, 0.5, 0.75, 0.25) if int(p * hd) % 2 == 0]
    return ref.make_config(
        input_dim=rnd.randint(1, 12),
        hidden_dim=H * hd,
        intermediate_dim=rnd.randint(4, 48),
        num_heads=H,
        num_layers=rnd.randint(1, 3),
        block_size=rnd.randint(4, 24),
        eps=rnd.choice([1e-8, 1e-6, 1e-3, 0.05]),
        rope_base=rnd.choice([10000, 1000000, 500.0]),
        rope_rotary_percentage=rnd.choice(pcts),
        rope_condense_ratio=rnd.choice([1.0, 2.5, 4.0]),
        # beyond the seed (GIVT.md): a mixture head, a class embedding (givt-eval scores with "no label")
        num_mixtures=rnd.choice([1, 1, 2, 3, 5]),
        num_classes=rnd.choice([0, 0, 3]),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("seed", nargs="?", type=int, default=1)
    ap.add_argument("--eval", default="./givt-eval", help="path of the givt-eval program")
    ap.add_argument("--device", help="givt-eval --device (auto, cpu, cuda)")
    ap.add_argument("--precision", choices=["no", "bf16"], help="givt-eval --precision")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    tol = TOL_BF16 if args.precision == "bf16" else TOL

    rnd = random.Random(args.seed)
    cfg = random_config(rnd)
    N = rnd.randint(4, 11)  # usually not a multiple of the batch size 3
    T = rnd.randint(1, cfg["block_size"])
    gen = torch.Generator().manual_seed(1000003 * args.seed + 17)  # not make_reference's seeds
    w = ref.random_weights(cfg, gen, head_scale=rnd.choice([0.5, 1.0]))
    data = torch.randn(N, T, cfg["input_dim"], generator=gen, dtype=torch.float64).float().double()

    with torch.no_grad():
        total, count = 0.0, 0
        for i in range(0, N, 3):
            x = data[i:i + 3]
            y = ref.forward_head(w, x, cfg)  # a class-conditional model: "no label", as givt-eval
            total += ref.mixture_loss(y, x, cfg, full=False).item() * x.numel()
            count += x.numel()
        want = total / count

    tmp = tempfile.mkdtemp(prefix="givt_check_eval_")
    try:
        folder = os.path.join(tmp, "model")
        ref.save_hf_folder(folder, cfg, w)
        npy = os.path.join(tmp, "data.npy")
        ref.save_npy(npy, data.numpy())
        cmd = [args.eval, folder, npy, "--batch-size", "3"]
        cmd += ["--device", args.device] if args.device else []
        cmd += ["--precision", args.precision] if args.precision else []
        print(f"seed {args.seed}: config {cfg}, data ({N}, {T}, {cfg['input_dim']})")
        print("running:", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"FAIL: could not run {args.eval}: {e}")
            return 2
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            print(out)
            print(f"FAIL: {args.eval} exited with status {proc.returncode}")
            return 1
        m = re.search(r"^\s*loss\s*=\s*([-+0-9.eEinfINFaN]+)", proc.stdout, re.MULTILINE)
        if not m:
            print(out)
            print("FAIL: no line 'loss = <value>' in the output")
            return 1
        got = float(m.group(1))
        rel = abs(got - want) / abs(want)
        ok = rel <= tol
        print(f"givt-eval loss = {got:.10g}, reference (float64) = {want:.10g}, relative error {rel:.3g} "
              f"(tolerance {tol:g})")
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
