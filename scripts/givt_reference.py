"""givt_reference: an independent float64 PyTorch reference of the GIVT model of shared/GIVT.md (forward, loss, AdamW step) plus HF-folder and .npy helpers."""
# Written from GIVT.md alone (the seed package is not used). Weights are a dict of tensors named
# like the seed's state_dict ("model.embed.weight", "model.blocks.0.attn.qkv_proj.weight", ...).
# Everything is computed in float64 so that it can serve as the reference for the float32 engine.

import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

DTYPE = torch.float64

CONFIG_DEFAULTS = {
    "input_dim": 16,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "num_heads": 4,
    "num_layers": 2,
    "block_size": 512,
    "eps": 1e-8,
    "rope_base": 1000000,
    "rope_rotary_percentage": 1.0,
    "rope_condense_ratio": 4.0,
    "num_mixtures": 1,  # beyond the seed: GIVT.md, "What the paper has that the seed dropped"
    "num_classes": 0,
}
# The order in which tests/reference.bin stores the config (6 ints, then 4 doubles).
CONFIG_INT_KEYS = ["input_dim", "hidden_dim", "intermediate_dim", "num_heads", "num_layers", "block_size"]
CONFIG_FLOAT_KEYS = ["eps", "rope_base", "rope_rotary_percentage", "rope_condense_ratio"]

RMSNORM_EPS = 1e-5  # RMSNorm's own eps (not the config's eps)


def make_config(**overrides):
    cfg = dict(CONFIG_DEFAULTS)
    for k, v in overrides.items():
        if k not in cfg:
            raise KeyError(k)
        cfg[k] = v
    return cfg


def head_dim(cfg):
    return cfg["hidden_dim"] // cfg["num_heads"]


def rope_n_elem(cfg):
    return int(cfg["rope_rotary_percentage"] * head_dim(cfg))


def head_out(cfg):
    """Width of a head row: 2D for one Gaussian, k + 2kD for a mixture of k."""
    K, D = cfg["num_mixtures"], cfg["input_dim"]
    return 2 * D if K == 1 else K + 2 * K * D


def param_shapes(cfg):
    """Names and shapes of the parameters, in the order of GIVT.md's table (class_embed after bos)."""
    D, C, Fd = cfg["input_dim"], cfg["hidden_dim"], cfg["intermediate_dim"]
    shapes = [("model.embed.weight", (C, D)), ("model.bos", (D,))]
    if cfg["num_classes"] > 0:
        shapes.append(("model.class_embed.weight", (cfg["num_classes"] + 1, C)))
    for i in range(cfg["num_layers"]):
        p = f"model.blocks.{i}."
        shapes += [
            (p + "attn.norm.weight", (C,)),
            (p + "attn.qkv_proj.weight", (3 * C, C)),
            (p + "attn.o_proj.weight", (C, C)),
            (p + "mlp.norm.weight", (C,)),
            (p + "mlp.fc1.weight", (Fd, C)),
            (p + "mlp.fc2.weight", (Fd, C)),
            (p + "mlp.fc3.weight", (C, Fd)),
        ]
    shapes += [("model.norm.weight", (C,)), ("model.head.weight", (head_out(cfg), C))]
    return shapes


def random_weights(cfg, gen, head_scale=0.5):
    """Random, non-zero weights that keep activations O(1): norm weights 1 +- 0.2 (uniform), linear
    weights normal(0, 1/sqrt(fan_in)) (the head head_scale times that, so that mu and std stay moderate),
    bos normal(0, 0.5). Values are rounded to float32 so that the
    float32 engine sees exactly the weights the float64 reference uses."""
    w = {}
    for name, shape in param_shapes(cfg):
        if len(shape) == 1 and name.endswith("norm.weight"):
            t = 1.0 + 0.2 * (2.0 * torch.rand(shape, generator=gen, dtype=DTYPE) - 1.0)
        elif name == "model.bos":
            t = 0.5 * torch.randn(shape, generator=gen, dtype=DTYPE)
        elif name == "model.class_embed.weight":  # rows of the size of an embedded input
            t = torch.randn(shape, generator=gen, dtype=DTYPE)
        else:
            fan_in = shape[1]
            t = torch.randn(shape, generator=gen, dtype=DTYPE) / math.sqrt(fan_in)
            if name == "model.head.weight":
                t = head_scale * t
        w[name] = t.float().double()
    return w


# ---- the model ---------------------------------------------------------------------------------

def rmsnorm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMSNORM_EPS) * weight


def rope_cache(T, n_elem, base, condense_ratio):
    """cos, sin (T, n_elem): each row is the n_elem/2 angles twice."""
    i = torch.arange(0, n_elem, 2, dtype=DTYPE)  # 2i for i = 0..n/2-1
    theta = 1.0 / (float(base) ** (i / n_elem))
    pos = torch.arange(T, dtype=DTYPE) / condense_ratio
    angle = torch.outer(pos, theta)
    angle = torch.cat([angle, angle], dim=-1)
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x, cos, sin, n_elem):
    """x (B, H, T, hd): rotate-half RoPE on the first n_elem dims; the rest pass unchanged."""
    if n_elem == 0:
        return x
    half = n_elem // 2
    xr, xpass = x[..., :n_elem], x[..., n_elem:]
    rotated = torch.cat([-xr[..., half:n_elem], xr[..., :half]], dim=-1)
    return torch.cat([xr * cos + rotated * sin, xpass], dim=-1)


def attention_block(h, w, prefix, cfg, cos, sin):
    B, T, C = h.shape
    H = cfg["num_heads"]
    hd = C // H
    n_elem = rope_n_elem(cfg)
    a = rmsnorm(h, w[prefix + "attn.norm.weight"])
    qkv = a @ w[prefix + "attn.qkv_proj.weight"].T  # (B, T, 3C)
    q, k, v = qkv.split(C, dim=-1)
    q = q.reshape(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
    k = k.reshape(B, T, H, hd).transpose(1, 2)
    v = v.reshape(B, T, H, hd).transpose(1, 2)
    q = apply_rope(q, cos, sin, n_elem)
    k = apply_rope(k, cos, sin, n_elem)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    att = torch.softmax(scores, dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)  # heads concatenated in head order
    return h + y @ w[prefix + "attn.o_proj.weight"].T


def mlp_block(h, w, prefix):
    m = rmsnorm(h, w[prefix + "mlp.norm.weight"])
    a = m @ w[prefix + "mlp.fc1.weight"].T
    b = m @ w[prefix + "mlp.fc2.weight"].T
    return h + (F.silu(a) * b) @ w[prefix + "mlp.fc3.weight"].T


def forward_head(w, x, cfg, labels=None):
    """w: dict name -> float64 tensor; x (B, T, D) targets; labels (B) ints in [0, num_classes]
    (num_classes = "no label"; None: all "no label") for a class-conditional model. Returns the head
    output y (B, T, head_out)."""
    B, T, D = x.shape
    assert T <= cfg["block_size"], "T exceeds block_size"
    bos = w["model.bos"].reshape(1, 1, D).expand(B, 1, D)
    inp = torch.cat([bos, x[:, :-1, :]], dim=1)  # [bos, x_0 .. x_{T-2}]
    h = inp @ w["model.embed.weight"].T
    if cfg["num_classes"] > 0:  # the class embedding takes the place of the embedded bos
        if labels is None:
            labels = torch.full((B,), cfg["num_classes"], dtype=torch.long)
        h = torch.cat([w["model.class_embed.weight"][labels].reshape(B, 1, -1), h[:, 1:, :]], dim=1)
    cos, sin = rope_cache(T, rope_n_elem(cfg), cfg["rope_base"], cfg["rope_condense_ratio"])
    for i in range(cfg["num_layers"]):
        p = f"model.blocks.{i}."
        h = attention_block(h, w, p, cfg, cos, sin)
        h = mlp_block(h, w, p)
    return rmsnorm(h, w["model.norm.weight"]) @ w["model.head.weight"].T


def forward(w, x, cfg):
    """The seed's single-Gaussian model: mu, std (B, T, D)."""
    D = x.shape[-1]
    y = forward_head(w, x, cfg)  # (B, T, 2D)
    mu = y[..., :D]
    std = F.softplus(y[..., D:]) + cfg["eps"]  # PyTorch softplus: identity above threshold 20
    return mu, std


def loss_fn(mu, std, x, cfg, full=False):
    return F.gaussian_nll_loss(mu, x, std ** 2, eps=cfg["eps"], full=full, reduction="mean")


def mixture_loss(y, x, cfg, full=False):
    """GIVT.md's mixture loss, written from its definition: per position -log sum_k pi_k prod_d
    N(x_d; mu_kd, var_kd) (the full densities, torch.logsumexp over k), averaged over positions and
    divided by D, minus 0.5*log(2*pi) unless full. var = max(std^2, eps) with the clamp passing the
    gradient straight through (as gaussian_nll_loss's in-place clamp under no_grad)."""
    B, T, D = x.shape
    K = cfg["num_mixtures"]
    if K == 1:
        logits, rest = torch.zeros(B, T, 1, dtype=y.dtype), y
    else:
        logits, rest = y[..., :K], y[..., K:]
    mu = rest[..., :K * D].reshape(B, T, K, D)
    std = F.softplus(rest[..., K * D:].reshape(B, T, K, D)) + cfg["eps"]
    var = std ** 2
    var = var + (var.clamp(min=cfg["eps"]) - var).detach()
    xk = x.unsqueeze(2)  # (B, T, 1, D)
    log_n = -0.5 * (torch.log(2 * math.pi * var) + (xk - mu) ** 2 / var)  # (B, T, K, D)
    log_p = torch.logsumexp(torch.log_softmax(logits, dim=-1) + log_n.sum(-1), dim=-1)  # (B, T)
    loss = -log_p.mean() / D
    return loss if full else loss - 0.5 * math.log(2 * math.pi)


def forward_backward_head(w, x, cfg, labels=None, full=False):
    """Mixture / class-conditional model: returns (loss, y, grads), float64."""
    params = {k: v.detach().clone().to(DTYPE).requires_grad_(True) for k, v in w.items()}
    x = x.to(DTYPE)
    y = forward_head(params, x, cfg, labels)
    loss = mixture_loss(y, x, cfg, full)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in params.items()}
    return loss.item(), y.detach(), grads


def forward_backward(w, x, cfg, full=False):
    """Returns (loss, mu, std, grads) with grads a dict name -> tensor, all float64."""
    params = {k: v.detach().clone().to(DTYPE).requires_grad_(True) for k, v in w.items()}
    x = x.to(DTYPE)
    mu, std = forward(params, x, cfg)
    loss = loss_fn(mu, std, x, cfg, full)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in params.items()}
    return loss.item(), mu.detach(), std.detach(), grads


# ---- training: AdamW with the seed's decay groups, clipping and schedule -------------------------

def inverse_sqrt_factor(step, warmup, timescale):
    """Hugging Face get_inverse_sqrt_schedule: the lr factor of 0-based update number `step`."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return 1.0 / math.sqrt((step + timescale - warmup) / timescale)


class Trainer:
    """torch.optim.AdamW (decay on tensors with > 1 dim), global grad-norm clip, LambdaLR schedule
    stepped after each optimizer step (so update s uses factor(s); update 0 has lr 0 in warmup)."""

    def __init__(self, w, cfg, lr=1e-4, betas=(0.9, 0.99), adam_eps=1e-8, weight_decay=0.1,
                 clip=1.0, warmup=1000, timescale=1e8, labels=None):
        self.cfg = cfg
        self.labels = labels  # (B) class of each sequence of the batch, for a class-conditional model
        self.clip = clip
        self.params = {k: v.detach().clone().to(DTYPE).requires_grad_(True) for k, v in w.items()}
        decay = [p for p in self.params.values() if p.dim() > 1]
        no_decay = [p for p in self.params.values() if p.dim() <= 1]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=betas, eps=adam_eps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: inverse_sqrt_factor(s, warmup, timescale))

    def step(self, x, full=False):
        """One training step on batch x. Returns (loss before the step, grad norm before clipping, lr used)."""
        self.opt.zero_grad(set_to_none=True)
        if self.cfg["num_mixtures"] == 1 and self.cfg["num_classes"] == 0:  # the seed's model and loss
            mu, std = forward(self.params, x.to(DTYPE), self.cfg)
            loss = loss_fn(mu, std, x.to(DTYPE), self.cfg, full)
        else:
            y = forward_head(self.params, x.to(DTYPE), self.cfg, self.labels)
            loss = mixture_loss(y, x.to(DTYPE), self.cfg, full)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.clip)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        return loss.item(), norm.item(), lr

    def weights(self):
        return {k: p.detach().clone() for k, p in self.params.items()}


# ---- files: HF folder (config.json + model.safetensors) and .npy ---------------------------------

def save_safetensors(path, tensors):
    """Writes float32 safetensors by hand: u64 LE header length, JSON header, raw little-endian data."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    header["__metadata__"] = {"format": "pt"}
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)  # pad the header to a multiple of 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    """Reads a safetensors file (F32/F64/F16/BF16) into a dict of float64 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        raw = data[base + s:base + e]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dt == "F64":
            a = np.frombuffer(raw, dtype="<f8")
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2")
        elif dt == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            a = u.view(np.float32)
        else:
            raise ValueError(f"{path}: {name}: unsupported dtype {dt}")
        out[name] = torch.from_numpy(a.astype(np.float64).reshape(info["shape"]))
    return out


def save_hf_folder(folder, cfg, w):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(folder, "model.safetensors"), w)


def load_hf_folder(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = make_config(**{k: v for k, v in json.load(f).items() if k in CONFIG_DEFAULTS})
    return cfg, load_safetensors(os.path.join(folder, "model.safetensors"))


def save_npy(path, array):
    np.save(path, np.ascontiguousarray(array, dtype=np.float32))


def load_npy(path):
    return np.load(path)
