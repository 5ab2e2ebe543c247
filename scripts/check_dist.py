"""check_dist: acceptance check of data-parallel training: mpirun -np N with batch B per rank against one process with batch N*B, on a random configuration and random data (seeded by the command line)."""
# Usage: python3 scripts/check_dist.py [SEED] [--np N] [--bin DIR] [--keep]
# Needs only the Python standard library, mpirun (Open MPI) and a givt-train built with MPI.
# Draws a random model (input_dim, heads, head dim, layers, SwiGLU width, block size), a random
# training set of (S, T, D) float32 sequences written as .npy, a random batch, grad accumulation,
# validation split, learning rate and EMA, then trains it three times:
#   one process with batch_size = N*B, N ranks with batch_size = B, N ranks with B and [train] zero = 1.
# Compares every logged training loss and validation loss (relative difference), and every tensor of
# the final model.safetensors, ema.safetensors and optimizer.safetensors (the AdamW moments):
# ||a - b|| / ||b|| per tensor; all <= 1e-5. The runs differ by float32 sums in another order (the
# ranks' gradients are added by MPI instead of inside one batch), and AdamW turns a rounding
# difference in a gradient element near 0 into a difference of up to lr in that weight's step
# (m / sqrt(v) is about +-1 whatever |g| is): single elements then differ by more than the
# tensor's norm does (seen: 3e-7 on a weight of 4e-3, 2.6e-5 of the tensor's largest element,
# 3.2e-6 of its norm), which is why the comparison is per tensor norm. Those weight differences then
# move the next gradients a little, and the moments, which accumulate gradients, show it most: they
# are compared within 1e-4 (seen: up to 1.2e-5 in 10 seeds), the weights and the EMA within 1e-5.
# A fourth run, N ranks with zero = 1 and GIVT_DIST_OVERLAP=0 (the reduce-scatter after backward instead
# of each range's reduction started as backward finishes it), is compared the same way, and with
# N = 2 must give the same bytes as the overlapped ZeRO-1 run (a + b is b + a whatever order MPI
# adds in; with more ranks MPI_Ireduce and MPI_Reduce may add in different orders).
# --grad-reduce-dtype bf16: the N-rank runs send bf16 gradients; the losses must then be within
# 1e-3 of the one process's (TOL_BF16), and the weights are compared but only reported.
# Prints PASS or FAIL; exits 0 on PASS, 1 on FAIL, 2 when a run failed.

import argparse
import array
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile

TOL = 1e-5          # losses, weights, EMA
TOL_MOMENTS = 1e-4  # the AdamW moments: see above
TOL_BF16 = 1e-3     # losses with --grad-reduce-dtype bf16 (seen: 6e-5 over 12 steps)


def write_npy(path, values, shape):
    """values: flat list of floats -> float32 little-endian C-order .npy (format 1.0)."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % "".join(f"{s}, " for s in shape)
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(array.array("f", values).tobytes())


def read_safetensors(path):
    """-> {name: array('f')} for the F32 tensors of a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (path, name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = array.array("f", data[a:b])
    return out


def losses(out_dir):
    """[(step, loss, val_loss or None)] from metrics.jsonl."""
    rows = []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            rows.append((m["step"], m["loss"], m.get("val_loss")))
    return rows


def random_setup(rnd, nranks):
    H = rnd.choice([1, 2, 3])
    hd = rnd.choice([4, 6, 8])
    T = rnd.randint(3, 14)
    D = rnd.randint(1, 8)
    B = rnd.randint(1, 3)
    accum = rnd.randint(1, 3)
    steps = rnd.randint(5, 12)
    S = rnd.randint(nranks * B * accum + 2, 3 * nranks * B * accum + 8)  # one epoch or a few per run
    val = rnd.randint(0, 4)
    ema = rnd.choice(["", "0.6667"])
    ini = f"""[model]
input_dim = {D}
hidden_dim = {H * hd}
intermediate_dim = {rnd.randint(4, 40)}
num_heads = {H}
num_layers = {rnd.randint(1, 3)}
block_size = {T + rnd.randint(0, 3)}
[train]
batch_size = {B}
grad_accum_steps = {accum}
lr = {rnd.choice(["1e-3", "3e-3", "5e-4"])}
warmup_steps = {rnd.randint(0, 3)}
max_steps = {steps}
log_every = 1
val_every = {rnd.randint(2, 4) if val else 0}
val_size = {val}
save_every = 0
ema = {ema}
weight_decay = {rnd.choice(["0", "0.1"])}
seed = {rnd.randint(1, 10**6)}
device = cpu
[data]
kind = npy
seq_len = {T}
"""
    data = [rnd.gauss(0.0, 1.0) for _ in range(S * T * D)]
    return ini, data, (S, T, D), B, steps


def run(cmd, log):
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=600).returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("seed", nargs="?", type=int, default=1)
    ap.add_argument("--np", type=int, default=2, dest="nranks")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--grad-reduce-dtype", choices=["fp32", "bf16"], default="fp32", dest="dtype")
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    ini, data, shape, B, steps = random_setup(rnd, args.nranks)
    tmp = tempfile.mkdtemp(prefix=f"givt_check_dist_{args.seed}_")
    cfg, npy = os.path.join(tmp, "c.ini"), os.path.join(tmp, "x.npy")
    with open(cfg, "w") as f:
        f.write(ini + f'path = "{npy}"\n')
    write_npy(npy, data, shape)
    train = os.path.join(args.bin, "givt-train")
    env_omp = ["-x", "OMP_NUM_THREADS=1"]
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(args.nranks)] + env_omp
    dtype = [f"train.grad_reduce_dtype={args.dtype}"]
    runs = {
        "one": ["env", "OMP_NUM_THREADS=1", train, cfg, f"train.batch_size={args.nranks * B}"],
        "ranks": mpirun + [train, cfg] + dtype,
        "zero": mpirun + [train, cfg, "train.zero=1"] + dtype,
        "zero_after": mpirun[:1] + ["-x", "GIVT_DIST_OVERLAP=0"] + mpirun[1:] + [train, cfg, "train.zero=1"] + dtype,
    }
    print(f"check_dist seed {args.seed}: data {shape}, batch {B} x {args.nranks} ranks, {steps} steps, "
          f"gradients in {args.dtype}; in {tmp}")
    for name, cmd in runs.items():
        rc = run(cmd + [f"train.out_dir={os.path.join(tmp, name)}"], os.path.join(tmp, name + ".log"))
        if rc != 0:
            print(f"run {name} failed ({rc}); see {tmp}/{name}.log")
            print(open(os.path.join(tmp, name + ".log")).read()[-2000:])
            sys.exit(2)
    worst, what = 0.0, ""

    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-30)

    bf16 = args.dtype == "bf16"
    loss_tol = TOL_BF16 if bf16 else TOL
    weights_worst, weights_what = 0.0, ""  # bf16: reported only
    ref = losses(os.path.join(tmp, "one"))
    for name in ("ranks", "zero", "zero_after"):
        got = losses(os.path.join(tmp, name))
        if [r[0] for r in got] != [r[0] for r in ref]:
            print(f"FAIL: {name}: logged steps differ")
            sys.exit(1)
        for (s, l, v), (_, l0, v0) in zip(got, ref):
            for x, x0, kind in ((l, l0, "loss"), (v, v0, "val_loss")):
                if x0 is not None and rel(x, x0) * TOL / loss_tol > worst:  # in units of TOL
                    worst, what = rel(x, x0) * TOL / loss_tol, f"{name} step {s} {kind} ({rel(x, x0):.3g})"
        ckpt = f"step_{steps:08d}"
        files = ["model.safetensors", "optimizer.safetensors"]
        if os.path.exists(os.path.join(tmp, "one", ckpt, "ema.safetensors")):
            files.append("ema.safetensors")
        for fn in files:
            a = read_safetensors(os.path.join(tmp, name, ckpt, fn))
            b = read_safetensors(os.path.join(tmp, "one", ckpt, fn))
            if sorted(a) != sorted(b):
                print(f"FAIL: {name} {fn}: tensor names differ")
                sys.exit(1)
            for t in b:
                diff = sum((x - y) ** 2 for x, y in zip(a[t], b[t])) ** 0.5
                d = diff / max(sum(y * y for y in b[t]) ** 0.5, 1e-30)
                tol = TOL_MOMENTS if fn == "optimizer.safetensors" else TOL
                if bf16:
                    if d > weights_worst:
                        weights_worst, weights_what = d, f"{name} {fn} {t}"
                elif d / tol > worst / TOL:  # the worst relative to its tolerance, in units of TOL
                    worst, what = d * TOL / tol, f"{name} {fn} {t} ({d:.3g} of tolerance {tol:g})"
            if args.nranks == 2:  # ZeRO-1 overlapped per range: the same bytes as after backward
                za, zb = (os.path.join(tmp, z, ckpt, fn) for z in ("zero", "zero_after"))
                if name == "zero" and open(za, "rb").read() != open(zb, "rb").read():
                    print(f"FAIL: ZeRO-1 overlapped per range and after backward differ: {fn}")
                    sys.exit(1)
    if bf16:
        print(f"bf16: the weights' largest relative difference (reported, not checked): {weights_worst:.3g} "
              f"({weights_what or 'none'})")
    ok = worst <= TOL
    print(f"{'PASS' if ok else 'FAIL'}: worst {worst / TOL:.3g} of its tolerance: {what or 'none'}")
    if not args.keep:
        shutil.rmtree(tmp)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
