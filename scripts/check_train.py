#!/usr/bin/python3
"""check_train.py [SEED ...]: acceptance check of givt-train against a float64 PyTorch AdamW run.

From each SEED it draws a small model configuration, random non-zero float32 weights (an HF folder
given to givt-train as [train] init_from), a data set of N sequences of T vectors (one .npy file) and
AdamW / clipping / inverse-sqrt schedule hyperparameters, none of which the tests have seen. One batch
holds the whole set (batch_size = N, val_size = 0), so every step sees the same batch in some order and
its mean loss does not depend on that order. It runs ./givt-train, then the same training in float64
PyTorch (scripts/givt_reference.py's Trainer: torch.optim.AdamW with decay on tensors of more than one
dim, clip_grad_norm_, LambdaLR with the Hugging Face inverse-sqrt factor, update s uses factor(s)), and
compares:
  - metrics.jsonl: exactly one line per step 1..S; loss (rel <= 1e-4), lr (rel <= 1e-6; abs 1e-12 when
    the reference lr is 0), grad_norm before clipping (rel <= 1e-4);
  - step_SSSSSSSS/model.safetensors tensor by tensor: ||engine - ref|| / ||ref|| <= 1e-4;
  - step_SSSSSSSS/optimizer.safetensors: exp_avg.* and exp_avg_sq.* against torch's AdamW state, same
    bound, and its metadata step / adamw_t = S.
A draw whose float64 run is itself ill-conditioned (perturbing the init by float32 rounding moves the
losses / grad norms / weights / moments by more than 1e-5 relative: chaotic Adam dynamics that no float32
engine can track to 1e-4) is replaced by the next draw of the same seed, and the script says so.
Prints a table per seed and PASS/FAIL; exits 1 when any seed fails. Default seeds: 1 2 3 4 5.
Run from anywhere: /usr/bin/python3 scripts/check_train.py [SEED ...]  (set GIVT_KEEP=1 to keep the temp dirs)
Another build or backend: GIVT_TRAIN=path of givt-train (default ./givt-train, built if missing),
GIVT_DEVICE=cpu|cuda ([train] device, default cpu), GIVT_PRECISION=no|bf16 ([train] mixed_precision,
default no), e.g. the emulated CUDA backend: GIVT_TRAIN=build/emu/givt-train GIVT_DEVICE=cuda. In bf16
(every activation rounded to 8 bits of mantissa) the loss is held to the issue's 2e-2; the grad
norm and weights to 1e-1 and the moments to 2.5e-1 are bounds for gross errors only (measured over 8
seeds: loss <= 8.9e-3, grad norm <= 3.2e-2, weights <= 4.9e-3, moments <= 9.7e-2, the worst on the
moments of norm weights, whose small gradients bf16 rounds most).
"""

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import givt_reference as ref  # noqa: E402

DEVICE = os.environ.get("GIVT_DEVICE", "cpu")
PRECISION = os.environ.get("GIVT_PRECISION", "no")
BF16 = PRECISION == "bf16"
TOL_LOSS = 2e-2 if BF16 else 1e-4
TOL_LR = 1e-6
TOL_GNORM = 1e-1 if BF16 else 1e-4
TOL_WEIGHTS = 1e-1 if BF16 else 1e-4
TOL_MOMENTS = 2.5e-1 if BF16 else 1e-4


def draw_setup(seed, attempt=0):
    """Everything random about one check, from (seed, attempt) alone."""
    r = random.Random(1000003 * seed + 17 + 7919 * attempt)
    heads = r.randint(1, 4)
    pct = r.choice([0.5, 1.0])
    hd = r.choice([4, 8] if pct == 0.5 else [2, 4, 6, 8])  # n_elem = int(pct * hd) is even
    T = r.randint(3, 10)
    cfg = ref.make_config(
        input_dim=r.randint(2, 8),
        hidden_dim=heads * hd,
        intermediate_dim=r.randint(3, 40),
        num_heads=heads,
        num_layers=r.randint(1, 3),
        block_size=T + r.randint(0, 5),
        eps=r.choice([1e-8, 1e-6, 1e-5]),
        rope_base=float(round(10 ** r.uniform(2.0, 6.0), 3)),
        rope_rotary_percentage=pct,
        rope_condense_ratio=round(r.uniform(1.0, 4.0), 4),
    )
    assert ref.rope_n_elem(cfg) % 2 == 0
    hp = dict(
        lr=round(r.uniform(1e-3, 3e-3), 6),
        betas=(round(r.uniform(0.8, 0.95), 4), round(r.uniform(0.95, 0.999), 4)),
        adam_eps=r.choice([1e-8, 1e-7, 1e-6]),
        weight_decay=round(r.uniform(0.0, 0.3), 4),
        clip=round(r.uniform(0.2, 2.0), 3),
        warmup=r.randint(2, 5),
        timescale=float(round(10 ** r.uniform(1.0, 3.0), 2)),
    )
    steps = r.randint(8, 15)
    N = r.randint(2, 6)
    data_scale = r.uniform(0.5, 2.0)
    data_shift = r.uniform(-0.5, 0.5)
    # beyond the seed (GIVT.md): a mixture head and class conditioning (label_drop 0: every label used)
    cfg["num_mixtures"] = r.choice([1, 1, 2, 3, 4])
    cfg["num_classes"] = r.choice([0, 0, 3, 5])
    return cfg, hp, steps, N, T, data_scale, data_shift


def make_problem(seed, attempt):
    cfg, hp, steps, N, T, data_scale, data_shift = draw_setup(seed, attempt)
    gen = torch.Generator().manual_seed(seed + 100003 * attempt)
    w0 = ref.random_weights(cfg, gen)
    x = (data_shift + data_scale * torch.randn(N, T, cfg["input_dim"], generator=gen, dtype=torch.float64))
    x = x.float().double()  # exactly the float32 values the engine reads
    if cfg["num_classes"] > 0:
        hp["labels"] = torch.randint(0, cfg["num_classes"], (N,), generator=gen)
    return cfg, hp, steps, N, T, w0, x


def reference_run(cfg, hp, steps, w0, x):
    tr = ref.Trainer(w0, cfg, lr=hp["lr"], betas=hp["betas"], adam_eps=hp["adam_eps"],
                     weight_decay=hp["weight_decay"], clip=hp["clip"], warmup=hp["warmup"],
                     timescale=hp["timescale"], labels=hp.get("labels"))
    rows = [tr.step(x) for _ in range(steps)]  # (loss, grad norm, lr) of steps 1..S
    return rows, tr


def sensitivity(cfg, hp, steps, w0, x, rows, tr, trials=2):
    """How much the float64 run itself moves when the initial weights move by float32 rounding
    (relative 2^-24 noise): the worst relative change of the losses, grad norms, final weights and
    Adam moments over a few perturbed runs. A problem where this is not far below the tolerances is
    ill-conditioned (the float32 engine cannot be expected to track it) and is redrawn."""
    g = torch.Generator().manual_seed(12345)
    worst = 0.0
    for _ in range(trials):
        wp = {k: v * (1 + 2.0 ** -24 * torch.randn(v.shape, generator=g, dtype=torch.float64)) for k, v in w0.items()}
        prow, ptr = reference_run(cfg, hp, steps, wp, x)
        for (l, gn, _), (pl, pg, _) in zip(rows, prow):
            worst = max(worst, rel(pl, l), rel(pg, gn))
        for name, p in tr.params.items():
            q = ptr.params[name]
            worst = max(worst, tensor_rel(q.detach(), p.detach()))
            for key in ("exp_avg", "exp_avg_sq"):
                worst = max(worst, tensor_rel(ptr.opt.state[q][key], tr.opt.state[p][key]))
    return worst


SENSITIVITY_MAX = 1e-5  # a tenth of the tolerances
MAX_ATTEMPTS = 10


def fmt(x):
    return repr(float(x)) if isinstance(x, float) else str(x)


def write_ini(path, cfg, hp, steps, N, T, data_path, init_from, out_dir, seed):
    m = cfg
    lines = [
        "[model]",
        f"input_dim = {m['input_dim']}",
        f"hidden_dim = {m['hidden_dim']}",
        f"intermediate_dim = {m['intermediate_dim']}",
        f"num_heads = {m['num_heads']}",
        f"num_layers = {m['num_layers']}",
        f"block_size = {m['block_size']}",
        f"eps = {fmt(m['eps'])}",
        f"rope_base = {fmt(m['rope_base'])}",
        f"rope_rotary_percentage = {fmt(m['rope_rotary_percentage'])}",
        f"rope_condense_ratio = {fmt(m['rope_condense_ratio'])}",
        f"num_mixtures = {m['num_mixtures']}",
        f"num_classes = {m['num_classes']}",
        "",
        "[train]",
        f"batch_size = {N}",
        f"lr = {fmt(hp['lr'])}",
        f"weight_decay = {fmt(hp['weight_decay'])}",
        f"lr_eps = {fmt(hp['adam_eps'])}",
        f"lr_betas = {fmt(hp['betas'][0])}, {fmt(hp['betas'][1])}",
        f"grad_norm = {fmt(hp['clip'])}",
        f"warmup_steps = {hp['warmup']}",
        f"timescale = {fmt(hp['timescale'])}",
        "lr_schedule = inverse_sqrt",
        f"max_steps = {steps}",
        "grad_accum_steps = 1",
        "log_every = 1",
        "val_every = 0",
        "val_size = 0",
        "save_every = 0",
        "keep_checkpoints = 0",
        f"seed = {seed}",
        f'out_dir = "{out_dir}"',
        f'init_from = "{init_from}"',
        f"device = {DEVICE}",
        f"mixed_precision = {PRECISION}",
        "",
        "[data]",
        "kind = npy",
        f'path = "{data_path}"',
        f"seq_len = {T}",
        "",
    ]
    if "labels" in hp:  # the classes of the N sequences, every label used (no drop)
        lines[lines.index("[data]") + 1:lines.index("[data]") + 1] = [f'labels = "{hp["labels_path"]}"']
        lines[lines.index("[data]"):lines.index("[data]")] = ["label_drop = 0", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def rel(a, b):
    """|a - b| / |b| (absolute difference when b is 0)."""
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


def tensor_rel(a, b):
    nb = torch.linalg.norm(b).item()
    nd = torch.linalg.norm(a - b).item()
    return nd / nb if nb > 0 else nd


def run_seed(seed, exe, keep):
    for attempt in range(MAX_ATTEMPTS):
        cfg, hp, steps, N, T, w0, x = make_problem(seed, attempt)
        ref_rows, tr = reference_run(cfg, hp, steps, w0, x)
        sens = sensitivity(cfg, hp, steps, w0, x, ref_rows, tr)
        if sens <= SENSITIVITY_MAX:
            break
        print(f"== seed {seed}: draw {attempt} is ill-conditioned (float32-sized perturbations of the init move "
              f"the float64 run by {sens:.1e} > {SENSITIVITY_MAX:.0e}); redrawing")
    else:
        print(f"   FAIL: seed {seed}: no well-conditioned draw in {MAX_ATTEMPTS} attempts")
        return False
    tmp = tempfile.mkdtemp(prefix=f"givt-check-train-{seed}-")
    ok = True
    try:
        init_dir = os.path.join(tmp, "init")
        ref.save_hf_folder(init_dir, cfg, w0)
        data_path = os.path.join(tmp, "data.npy")
        ref.save_npy(data_path, x.numpy())
        if "labels" in hp:
            hp["labels_path"] = os.path.join(tmp, "labels.npy")
            np.save(hp["labels_path"], hp["labels"].numpy().astype(np.int32))
        out_dir = os.path.join(tmp, "out")
        ini = os.path.join(tmp, "train.ini")
        write_ini(ini, cfg, hp, steps, N, T, data_path, init_dir, out_dir, seed)

        print(f"== seed {seed} (draw {attempt}): D={cfg['input_dim']} C={cfg['hidden_dim']} H={cfg['num_heads']} "
              f"F={cfg['intermediate_dim']} L={cfg['num_layers']} block={cfg['block_size']} "
              f"eps={cfg['eps']:g} rope(base={cfg['rope_base']:g}, pct={cfg['rope_rotary_percentage']}, "
              f"n_elem={ref.rope_n_elem(cfg)}, condense={cfg['rope_condense_ratio']}) "
              f"mixtures={cfg['num_mixtures']} classes={cfg['num_classes']}")
        print(f"   data N={N} T={T}; lr={hp['lr']} betas={hp['betas']} eps={hp['adam_eps']:g} "
              f"wd={hp['weight_decay']} clip={hp['clip']} warmup={hp['warmup']} timescale={hp['timescale']} "
              f"steps={steps}; float64 self-sensitivity {sens:.1e}")

        p = subprocess.run([exe, ini], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            print(p.stdout)
            print(f"   FAIL: givt-train exited with {p.returncode}")
            return False

        # ---- metrics.jsonl
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        got_steps = [r["step"] for r in rows]
        if got_steps != list(range(1, steps + 1)):
            print(f"   FAIL: metrics.jsonl steps {got_steps}, expected 1..{steps}")
            ok = False
        print(f"   {'step':>4} {'loss engine':>14} {'loss torch':>14} {'rel':>9} {'lr engine':>12} "
              f"{'rel':>9} {'gnorm engine':>13} {'gnorm torch':>13} {'rel':>9} clip")
        worst = {"loss": 0.0, "lr": 0.0, "gnorm": 0.0}
        for row, (rl, rg, rlr) in zip(rows, ref_rows):
            el, elr, eg = row["loss"], row["lr"], row["grad_norm"]
            dl, dlr, dg = rel(el, rl), rel(elr, rlr), rel(eg, rg)
            worst["loss"] = max(worst["loss"], dl)
            worst["lr"] = max(worst["lr"], dlr)
            worst["gnorm"] = max(worst["gnorm"], dg)
            bad = dl > TOL_LOSS or (dlr > TOL_LR if rlr != 0 else dlr > 1e-12) or dg > TOL_GNORM
            ok = ok and not bad
            print(f"   {row['step']:>4} {el:>14.8f} {rl:>14.8f} {dl:>9.2e} {elr:>12.5e} {dlr:>9.2e} "
                  f"{eg:>13.6f} {rg:>13.6f} {dg:>9.2e} {'yes' if rg > hp['clip'] else 'no '}"
                  f"{'  <-- FAIL' if bad else ''}")
        lrs = [r[2] for r in ref_rows]
        decays = lrs[-1] < max(lrs) * (1 - 1e-3)
        print(f"   lr after warmup decays: {lrs[hp['warmup']]:.4e} -> {lrs[-1]:.4e} "
              f"({'visible' if decays else 'NOT visible'})")

        # ---- final weights and optimizer state
        ck = os.path.join(out_dir, f"step_{steps:08d}")
        got_w = ref.load_safetensors(os.path.join(ck, "model.safetensors"))
        ref_w = tr.weights()
        if set(got_w) != set(ref_w):
            print(f"   FAIL: model.safetensors names differ: {sorted(set(got_w) ^ set(ref_w))}")
            return False
        worst_w, worst_name = 0.0, ""
        for name in ref_w:
            if tuple(got_w[name].shape) != tuple(ref_w[name].shape):
                print(f"   FAIL: {name}: shape {tuple(got_w[name].shape)}, expected {tuple(ref_w[name].shape)}")
                ok = False
                continue
            d = tensor_rel(got_w[name], ref_w[name])
            moved = tensor_rel(ref_w[name], w0[name])  # how far training moved it (relative)
            if d > worst_w:
                worst_w, worst_name = d, name
            if d > TOL_WEIGHTS:
                print(f"   FAIL: {name}: ||diff||/||ref|| = {d:.3e} (moved {moved:.3e})")
                ok = False
        print(f"   model.safetensors: {len(ref_w)} tensors, worst ||diff||/||ref|| = {worst_w:.3e} ({worst_name})")

        opt = ref.load_safetensors(os.path.join(ck, "optimizer.safetensors"))
        worst_o, worst_oname = 0.0, ""
        for name, p in tr.params.items():
            st = tr.opt.state[p]
            for key in ("exp_avg", "exp_avg_sq"):
                k = f"{key}.{name}"
                if k not in opt:
                    print(f"   FAIL: optimizer.safetensors has no {k}")
                    ok = False
                    continue
                d = tensor_rel(opt[k], st[key].detach())
                if d > worst_o:
                    worst_o, worst_oname = d, k
                if d > TOL_MOMENTS:
                    print(f"   FAIL: {k}: ||diff||/||ref|| = {d:.3e}")
                    ok = False
        with open(os.path.join(ck, "optimizer.safetensors"), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n)).get("__metadata__", {})
        if meta.get("step") != str(steps) or meta.get("adamw_t") != str(steps):
            print(f"   FAIL: optimizer.safetensors metadata step={meta.get('step')} adamw_t={meta.get('adamw_t')}, "
                  f"expected {steps}")
            ok = False
        print(f"   optimizer.safetensors: worst ||diff||/||ref|| = {worst_o:.3e} ({worst_oname})")
        print(f"   worst: loss {worst['loss']:.2e}, lr {worst['lr']:.2e}, grad_norm {worst['gnorm']:.2e}, "
              f"weights {worst_w:.2e}, moments {worst_o:.2e}")
        print(f"   seed {seed}: {'PASS' if ok else 'FAIL'}")
        return ok
    finally:
        if keep:
            print(f"   (kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    seeds = [int(a) for a in sys.argv[1:]] or [1, 2, 3, 4, 5]
    src = os.path.abspath(os.environ.get("GIVT_TRAIN", os.path.join(REPO, "givt-train")))
    if not os.path.exists(src) and "GIVT_TRAIN" not in os.environ:
        subprocess.run(["make", "-j2"], cwd=REPO, check=True)
    # a private copy: a rebuild in the repo while the check runs must not swap the binary under it
    bindir = tempfile.mkdtemp(prefix="givt-check-train-bin-")
    exe = os.path.join(bindir, "givt-train")
    shutil.copy2(src, exe)
    print(f"check_train: {src}, device {DEVICE}, mixed_precision {PRECISION}")
    torch.set_num_threads(1)
    keep = os.environ.get("GIVT_KEEP") == "1"
    try:
        results = {s: run_seed(s, exe, keep) for s in seeds}
    finally:
        shutil.rmtree(bindir, ignore_errors=True)
    failed = [s for s, r in results.items() if not r]
    print(f"check_train: {len(seeds) - len(failed)}/{len(seeds)} seeds passed"
          + (f"; failed: {failed}" if failed else ""))
    print("PASS" if not failed else "FAIL")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
