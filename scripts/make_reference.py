"""make_reference: writes tests/reference.bin and tests/reference_mix.bin, the float64 PyTorch reference (scripts/givt_reference.py) that tests/test_reference.c compares the C engine against."""
# Usage: python3 scripts/make_reference.py [OUT [OUT_MIX]]
#   (defaults tests/reference.bin, tests/reference_mix.bin)
#
# File format, version 1 (all little-endian; read by tests/refdata.c):
#   header:  char magic[8] = "GIVTREF1"; u32 version = 1; u32 ncases
#   string:  u32 length, then that many bytes (no NUL)
#   tensor:  string name; u32 dtype (4 = float32, 8 = float64); u32 ndim (1..4); u32 shape[ndim];
#            prod(shape) values of that dtype, row-major
#   case:    string label
#            i32 input_dim, hidden_dim, intermediate_dim, num_heads, num_layers, block_size
#            f64 eps, rope_base, rope_rotary_percentage, rope_condense_ratio
#            i32 B, T, full
#            u32 nparams, nparams tensors   the weights, state_dict names (float32: exactly what the
#                                           float64 reference used, they are float32-representable)
#            tensor "x" (B, T, D) float32 (again exact), tensor "mu", tensor "std" (B, T, D) float64
#            f64 loss                       mean NLL; includes 0.5*log(2*pi) iff full
#            u32 ngrads, ngrads tensors     d loss / d weight, float64, same names as the weights
#            u32 has_train                  optional AdamW section (0 or 1):
#              f64 lr, beta1, beta2, adam_eps, weight_decay, grad_clip, timescale
#              u32 warmup_steps, u32 nsteps
#              nsteps x (f64 lr_used, f64 loss_before_step, f64 grad_norm_before_clip)
#              u32 nfinal, nfinal tensors   the weights after nsteps updates, computed in float64 and
#                                           stored rounded to float32 (6e-8 relative, far below any
#                                           float32 trainer's tolerance; keeps the file small)
#            Training: every step uses the case's x as its batch and the case's full flag;
#            torch.optim.AdamW with decay on tensors of > 1 dim, clip_grad_norm_(clip), and the
#            inverse-sqrt LambdaLR stepped after each update, so update s uses
#            lr * factor(s), factor(s) = s / warmup for s < warmup (update 0 has lr 0).
#   trailer: char magic[8] = "GIVTEND1"
#
# tests/reference_mix.bin: version 2, the cases of MIX_CASES (mixture heads, class conditioning).
# A case differs from version 1 in:
#   after rope_condense_ratio: i32 num_mixtures, num_classes
#   instead of "mu" and "std": tensor "labels" (B) float32 (only when num_classes > 0; each in
#   [0, num_classes], num_classes being "no label"), then tensor "y" (B, T, head_out) float64, the head
#   output [logits (k) | mu (k x D) | pre (k x D)] (k = 1: [mu | pre])
#   loss: GIVT.md's mixture loss (mean over positions of -log p, divided by D, minus 0.5*log(2*pi)
#   unless full); has_train is always 0.

import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import givt_reference as ref  # noqa: E402

VERSION = 1


def w_u32(f, v):
    f.write(struct.pack("<I", v))


def w_i32(f, v):
    f.write(struct.pack("<i", v))


def w_f64(f, v):
    f.write(struct.pack("<d", float(v)))


def w_str(f, s):
    b = s.encode("utf-8")
    w_u32(f, len(b))
    f.write(b)


def w_tensor(f, name, t, dtype):
    a = t.detach().cpu().numpy()
    w_str(f, name)
    w_u32(f, 4 if dtype == "f4" else 8)
    w_u32(f, a.ndim)
    for s in a.shape:
        w_u32(f, s)
    if dtype == "f4":
        a32 = a.astype("<f4")
        assert np.array_equal(a32.astype(np.float64), a.astype(np.float64)), name + " is not float32-exact"
        f.write(a32.tobytes())
    else:
        f.write(np.ascontiguousarray(a, dtype="<f8").tobytes())


CASES = [
    # (a) GIVT.md defaults, small T
    dict(label="a_defaults_T7", cfg=ref.make_config(), B=2, T=7, full=False, seed=101, train=True),
    # (b) partial rotary, condense ratio != 1, C not a power of two (3 heads, hd 12, n_elem 6)
    dict(label="b_rope_half_C36", cfg=ref.make_config(
        input_dim=10, hidden_dim=36, intermediate_dim=50, num_heads=3, num_layers=2, block_size=16,
        rope_rotary_percentage=0.5, rope_condense_ratio=2.5, rope_base=10000),
        B=3, T=9, full=True, seed=202, train=False),
    # (c) T = 1: the input is bos alone
    dict(label="c_T1", cfg=ref.make_config(
        input_dim=4, hidden_dim=8, intermediate_dim=12, num_heads=2, num_layers=2, block_size=4),
        B=2, T=1, full=False, seed=303, train=False),
    # (d) T == block_size; a large eps (0.25) and a larger head so that the variance clamp
    # (std^2 < eps, gradient passed straight through) is active on some elements
    dict(label="d_T_eq_block_eps_clamp", cfg=ref.make_config(
        input_dim=5, hidden_dim=16, intermediate_dim=24, num_heads=4, num_layers=2, block_size=8,
        rope_condense_ratio=1.0, rope_base=500, eps=0.25),
        B=2, T=8, full=False, seed=404, train=False, head_scale=2.0),
]

# Mixture heads and class conditioning (version 2 file). Labels include the "no label" class.
MIX_CASES = [
    # (e) k = 3 components, 4 classes: the class embedding replaces bos at position 0
    dict(label="e_k3_classes4", cfg=ref.make_config(
        input_dim=6, hidden_dim=24, intermediate_dim=40, num_heads=3, num_layers=2, block_size=8,
        rope_condense_ratio=2.0, num_mixtures=3, num_classes=4),
        B=3, T=6, full=False, seed=505, labels=[1, 4, 1], head_scale=1.0),
    # (f) k = 3, unconditional, full likelihood, T = 1 (the input is bos alone), a large eps so that
    # the clamp is active
    dict(label="f_k3_T1_full_clamp", cfg=ref.make_config(
        input_dim=4, hidden_dim=16, intermediate_dim=24, num_heads=2, num_layers=2, block_size=4,
        num_mixtures=3, eps=0.25), B=4, T=1, full=True, seed=606, head_scale=2.0),
    # (g) k = 1 with classes: the seed's head, conditioned
    dict(label="g_k1_classes2", cfg=ref.make_config(
        input_dim=5, hidden_dim=16, intermediate_dim=24, num_heads=4, num_layers=1, block_size=8,
        num_classes=2), B=3, T=5, full=False, seed=707, labels=[0, 2, 1]),
]

TRAIN = dict(lr=1e-3, betas=(0.9, 0.99), adam_eps=1e-8, weight_decay=0.1, clip=1.0, warmup=2,
             timescale=1e8, nsteps=3)


def draw_case(c):
    """The case's configuration, shape, random weights and input x (B, T, D), from its seed."""
    cfg, B, T, full = c["cfg"], c["B"], c["T"], c["full"]
    gen = torch.Generator().manual_seed(c["seed"])
    w = ref.random_weights(cfg, gen, c.get("head_scale", 0.5))
    x = torch.randn(B, T, cfg["input_dim"], generator=gen, dtype=torch.float64).float().double()
    return cfg, B, T, full, w, x


def write_inputs(f, c, cfg, B, T, full, w, x, extra_ints=()):
    """What both files start a case with: label, configuration (extra_ints after its float keys),
    shape, the weights and x."""
    w_str(f, c["label"])
    for k in ref.CONFIG_INT_KEYS:
        w_i32(f, int(cfg[k]))
    for k in ref.CONFIG_FLOAT_KEYS:
        w_f64(f, cfg[k])
    for v in extra_ints:
        w_i32(f, v)
    w_i32(f, B)
    w_i32(f, T)
    w_i32(f, 1 if full else 0)
    w_u32(f, len(w))
    for name, t in w.items():
        w_tensor(f, name, t, "f4")
    w_tensor(f, "x", x, "f4")


def write_loss_grads(f, loss, grads):
    w_f64(f, loss)
    w_u32(f, len(grads))
    for name, g in grads.items():
        w_tensor(f, name, g, "f8")


def write_case(f, c):
    cfg, B, T, full, w, x = draw_case(c)
    loss, mu, std, grads = ref.forward_backward(w, x, cfg, full)

    write_inputs(f, c, cfg, B, T, full, w, x)
    w_tensor(f, "mu", mu, "f8")
    w_tensor(f, "std", std, "f8")
    write_loss_grads(f, loss, grads)

    clamped = int((std ** 2 < cfg["eps"]).sum())
    gnorm = float(torch.sqrt(sum((g ** 2).sum() for g in grads.values())))
    print(f"{c['label']}: loss {loss:.10f}  grad norm {gnorm:.4f}  std in [{std.min():.4g}, {std.max():.4g}]"
          f"  clamped {clamped}")

    if not c["train"]:
        w_u32(f, 0)
        return
    t = TRAIN
    w_u32(f, 1)
    for v in (t["lr"], t["betas"][0], t["betas"][1], t["adam_eps"], t["weight_decay"], t["clip"],
              t["timescale"]):
        w_f64(f, v)
    w_u32(f, t["warmup"])
    w_u32(f, t["nsteps"])
    tr = ref.Trainer(w, cfg, lr=t["lr"], betas=t["betas"], adam_eps=t["adam_eps"],
                     weight_decay=t["weight_decay"], clip=t["clip"], warmup=t["warmup"],
                     timescale=t["timescale"])
    for s in range(t["nsteps"]):
        l, n, lr = tr.step(x, full)
        print(f"  train step {s}: lr {lr:.3g}  loss {l:.10f}  grad norm {n:.6f}")
        w_f64(f, lr)
        w_f64(f, l)
        w_f64(f, n)
    final = tr.weights()
    w_u32(f, len(final))
    for name, p in final.items():
        w_tensor(f, name, p.float().double(), "f4")


def write_mix_case(f, c):
    cfg, B, T, full, w, x = draw_case(c)
    labels = torch.tensor(c["labels"], dtype=torch.long) if cfg["num_classes"] > 0 else None
    loss, y, grads = ref.forward_backward_head(w, x, cfg, labels, full)
    if cfg["num_mixtures"] == 1 and cfg["num_classes"] == 0:  # the mixture loss is the seed's loss for k = 1
        mu, std = ref.forward(w, x, cfg)
        assert abs(ref.loss_fn(mu, std, x, cfg, full).item() - loss) <= 1e-12 * abs(loss)

    write_inputs(f, c, cfg, B, T, full, w, x, extra_ints=(cfg["num_mixtures"], cfg["num_classes"]))
    if labels is not None:
        w_tensor(f, "labels", labels.double(), "f4")
    w_tensor(f, "y", y, "f8")
    write_loss_grads(f, loss, grads)
    w_u32(f, 0)
    gnorm = float(torch.sqrt(sum((g ** 2).sum() for g in grads.values())))
    print(f"{c['label']}: loss {loss:.10f}  grad norm {gnorm:.4f}")


def write_file(out, version, cases, write):
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"GIVTREF1")
        w_u32(f, version)
        w_u32(f, len(cases))
        for c in cases:
            write(f, c)
        f.write(b"GIVTEND1")
    os.replace(tmp, out)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


def main():
    torch.set_default_dtype(torch.float64)
    tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tests, "reference.bin")
    out_mix = sys.argv[2] if len(sys.argv) > 2 else os.path.join(tests, "reference_mix.bin")
    write_file(out, VERSION, CASES, write_case)
    write_file(out_mix, 2, MIX_CASES, write_mix_case)


if __name__ == "__main__":
    main()
