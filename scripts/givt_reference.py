"""givt_reference: the one PyTorch definition of the GIVT model of shared/GIVT.md in scripts/: an nn.Module (Givt) for any dtype and device, with a KV-cache decode; in float64 the independent reference (forward, loss, AdamW step); plus HF-folder and .npy helpers."""
# Written from GIVT.md alone (the seed package is not used). Weights are a dict of tensors named
# like the seed's state_dict ("model.embed.weight", "model.blocks.0.attn.qkv_proj.weight", ...).
# The reference functions (forward_head, forward, forward_backward, Trainer, ...) compute everything in
# float64 so that they can serve as the reference for the float32 engine; bench_torch.py and
# bench_sample.py run the same Givt in float32 / bf16 autocast with scaled_dot_product_attention.

import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
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


# ---- the model: one definition, any dtype and device --------------------------------------------
# Givt below is the only model definition of scripts/: in float64 with the attention written out it is
# the reference (forward_head, forward, forward_backward, Trainer below wrap it); in float32 / bf16
# autocast with F.scaled_dot_product_attention and torch.compile it is bench_torch.py's PyTorch peer;
# its decode / generate (a KV cache) is bench_sample.py's. The parameter-holding modules only name the
# tensors as the seed's state_dict does; the arithmetic is in Givt.decode, on the tensors themselves
# (no per-layer module calls or attribute look-ups: cheaper per decoded vector). In float64 its ops,
# in their order, are those tests/reference.bin was made with: make_reference.py reproduces it bit
# for bit (with the same PyTorch on the same machine; another BLAS moves the last bits).

def rmsnorm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMSNORM_EPS) * weight


def rope_cache(T, n_elem, base, condense_ratio):
    """cos, sin (T, n_elem), float64: each row is the n_elem/2 angles twice."""
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
    out = xr * cos + rotated * sin
    return out if n_elem == x.shape[-1] else torch.cat([out, xpass], dim=-1)


def attend(q, k, v, attention):
    """Softmax attention of q (B, H, Tq, hd) over k, v (B, H, Tk, hd), Tk >= Tq: query i sits at
    position Tk - Tq + i and sees keys 0 .. Tk - Tq + i. attention "math": the masked softmax written
    out (the reference); "sdpa": F.scaled_dot_product_attention (is_causal when Tq == Tk)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    if attention == "sdpa":
        if Tq == 1 or Tq == Tk:  # a one-vector decode step sees the whole cache
            return F.scaled_dot_product_attention(q, k, v, is_causal=Tq > 1)
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def split_head(y, cfg):
    """A head output y (..., head_out) as (logits (..., K), or None for K = 1; mu, pre (..., K, D))."""
    K, D = cfg["num_mixtures"], cfg["input_dim"]
    logits, rest = (None, y) if K == 1 else (y[..., :K], y[..., K:])
    shape = y.shape[:-1] + (K, D)
    return logits, rest[..., :K * D].reshape(shape), rest[..., K * D:].reshape(shape)


class Weight(nn.Module):
    """Holds one tensor named `weight` (a linear map's [out, in], a norm's [C], an embedding table)."""

    def __init__(self, *shape, dtype=None, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape, dtype=dtype, device=device))


class Attention(nn.Module):
    def __init__(self, C, dtype=None, device=None):
        super().__init__()
        self.norm = Weight(C, dtype=dtype, device=device)
        self.qkv_proj = Weight(3 * C, C, dtype=dtype, device=device)
        self.o_proj = Weight(C, C, dtype=dtype, device=device)


class Mlp(nn.Module):
    def __init__(self, C, Fd, dtype=None, device=None):
        super().__init__()
        self.norm = Weight(C, dtype=dtype, device=device)
        self.fc1 = Weight(Fd, C, dtype=dtype, device=device)
        self.fc2 = Weight(Fd, C, dtype=dtype, device=device)
        self.fc3 = Weight(C, Fd, dtype=dtype, device=device)


class Block(nn.Module):
    def __init__(self, C, Fd, dtype=None, device=None):
        super().__init__()
        self.attn = Attention(C, dtype, device)
        self.mlp = Mlp(C, Fd, dtype, device)


class Transformer(nn.Module):
    """The parameters, under the seed's names (less "model.")."""

    def __init__(self, cfg, dtype=None, device=None):
        super().__init__()
        D, C, Fd = cfg["input_dim"], cfg["hidden_dim"], cfg["intermediate_dim"]
        kw = dict(dtype=dtype, device=device)
        self.embed = Weight(C, D, **kw)
        self.bos = nn.Parameter(torch.empty(D, **kw))
        self.class_embed = Weight(cfg["num_classes"] + 1, C, **kw) if cfg["num_classes"] > 0 else None
        self.blocks = nn.ModuleList(Block(C, Fd, **kw) for _ in range(cfg["num_layers"]))
        self.norm = Weight(C, **kw)
        self.head = Weight(head_out(cfg), C, **kw)


class Givt(nn.Module):
    """GIVT.md's model (mixture head and class embedding included) as an nn.Module whose state_dict
    names are the seed's ("model.embed.weight", "model.blocks.0.attn.qkv_proj.weight", ...).

    Givt(cfg, dtype, device, attention): parameters uninitialised (from_weights, load_state_dict or
    reset_parameters fill them); attention "math" (the reference) or "sdpa" (falls back to "math" on a
    PyTorch without F.scaled_dot_product_attention). The RoPE tables (block_size rows, computed in
    float64 by rope_cache, then cast to dtype) are non-persistent buffers.
      forward(x, labels) -> y (B, T, head_out), teacher-forced (input [bos, x_0 .. x_{T-2}])
      loss(x, labels, full) -> the seed's Gaussian NLL (k = 1, no classes) or the mixture loss
      new_cache(B, L), decode(inp, pos0, cache, labels, tensors) -> y: incremental, with a KV cache
      generate(B, max_len, temperature, prompt, gen, labels) -> (B, max_len, D): the seed's generate
    """

    def __init__(self, cfg, dtype=DTYPE, device=None, attention="math"):
        super().__init__()
        if attention not in ("math", "sdpa"):
            raise ValueError(f"attention {attention!r}: math or sdpa")
        if attention == "sdpa" and not hasattr(F, "scaled_dot_product_attention"):  # PyTorch < 2
            attention = "math"
        self.cfg, self.attention = dict(cfg), attention
        self.model = Transformer(cfg, dtype, device)
        cos, sin = rope_cache(cfg["block_size"], rope_n_elem(cfg), cfg["rope_base"], cfg["rope_condense_ratio"])
        self.register_buffer("cos", cos.to(dtype=dtype, device=device), persistent=False)
        self.register_buffer("sin", sin.to(dtype=dtype, device=device), persistent=False)

    @classmethod
    def from_weights(cls, cfg, w, dtype=DTYPE, device=None, attention="math"):
        """A Givt holding copies of the tensors of w (name -> tensor, the seed's names, all of them)."""
        model = cls(cfg, dtype, device, attention)
        model.load_state_dict({k: v.detach() for k, v in w.items()}, strict=True)
        return model

    def weights(self):
        """name -> detached copy of each parameter, in param_shapes' order (named_parameters() and
        state_dict() list model.bos first: nn.Module puts a module's own parameters before its
        submodules')."""
        named = dict(self.named_parameters())
        return {k: named[k].detach().clone() for k, _ in param_shapes(self.cfg)}

    @torch.no_grad()
    def reset_parameters(self, zero_std=0.0):
        """GIVT.md's initialisation from the global RNG: xavier uniform, norms ones, bos and class_embed
        normal(0, 0.02); o_proj, fc3 and head zeros, or normal(0, zero_std) when zero_std > 0."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("bos", "class_embed.weight")):
                p.normal_(0.0, 0.02)
            elif name.endswith(("o_proj.weight", "fc3.weight", "head.weight")):
                if zero_std > 0:
                    p.normal_(0.0, zero_std)
                else:
                    p.zero_()
            else:
                nn.init.xavier_uniform_(p)
        return self

    def forward(self, x, labels=None):
        """x (B, T, D) the targets; labels (B) ints in [0, num_classes] (num_classes: "no label"; None:
        all "no label") for a class-conditional model. Returns the head output y (B, T, head_out)."""
        B, T, D = x.shape
        assert T <= self.cfg["block_size"], "T exceeds block_size"
        bos = self.model.bos.reshape(1, 1, D).expand(B, 1, D)
        return self.decode(torch.cat([bos, x[:, :-1, :]], dim=1), 0, None, labels)  # [bos, x_0 .. x_{T-2}]

    def loss(self, x, labels=None, full=False):
        y = self(x, labels)
        if self.cfg["num_mixtures"] == 1 and self.cfg["num_classes"] == 0:  # the seed's model and loss
            mu, std = gaussian_head(y, self.cfg)
            # loss_fn's expression, written here: torch.compile (2.15) breaks the graph when
            # gaussian_nll_loss is called from a function called by the compiled one
            return F.gaussian_nll_loss(mu, x, std ** 2, eps=self.cfg["eps"], full=full, reduction="mean")
        return mixture_loss(y, x, self.cfg, full)

    def new_cache(self, B, L):
        """Keys and values of every layer for L positions: two (num_layers, B, H, L, hd) tensors."""
        H = self.cfg["num_heads"]
        shape = (self.cfg["num_layers"], B, H, L, self.cfg["hidden_dim"] // H)
        return (torch.empty(shape, dtype=self.cos.dtype, device=self.cos.device),
                torch.empty(shape, dtype=self.cos.dtype, device=self.cos.device))

    def tensors(self):
        """The parameters, looked up once (a decode step then needs no nn.Module attribute lookups):
        (embed, class_embed or None, [(attn.norm, qkv_proj, o_proj, mlp.norm, fc1, fc2, fc3) per
        block], norm, head), each the parameter itself (so, valid until a parameter is replaced)."""
        m = self.model
        layers = [(b.attn.norm.weight, b.attn.qkv_proj.weight, b.attn.o_proj.weight, b.mlp.norm.weight,
                   b.mlp.fc1.weight, b.mlp.fc2.weight, b.mlp.fc3.weight) for b in m.blocks]
        ce = m.class_embed
        return m.embed.weight, None if ce is None else ce.weight, layers, m.norm.weight, m.head.weight

    def decode(self, inp, pos0=0, cache=None, labels=None, tensors=None):
        """inp (B, Tq, D): the inputs at positions pos0 .. pos0 + Tq - 1 (bos in place at position 0).
        With a cache (new_cache) the keys and values of these positions are stored in it and the
        queries see those of positions 0 .. their own; without one pos0 must be 0. At position 0 of a
        class-conditional model the class embedding takes the place of the embedded bos. tensors: what
        self.tensors() returns (generate passes it, looked up once). Returns y (B, Tq, head_out)."""
        cfg = self.cfg
        embed, class_embed, layers, norm, head = self.tensors() if tensors is None else tensors
        B, T, _ = inp.shape
        C, H = cfg["hidden_dim"], cfg["num_heads"]
        hd, n_elem, end = C // H, rope_n_elem(cfg), pos0 + T
        assert cache is not None or pos0 == 0, "decode: pos0 > 0 needs the cache of positions 0 .. pos0 - 1"
        h = F.linear(inp, embed)
        if class_embed is not None and pos0 == 0:
            if labels is None:
                labels = torch.full((B,), cfg["num_classes"], dtype=torch.long, device=h.device)
            h = torch.cat([class_embed[labels].reshape(B, 1, -1), h[:, 1:, :]], dim=1)
        cos, sin = self.cos[pos0:end], self.sin[pos0:end]
        for i, (attn_norm, qkv_proj, o_proj, mlp_norm, fc1, fc2, fc3) in enumerate(layers):
            a = rmsnorm(h, attn_norm)
            q, k, v = F.linear(a, qkv_proj).split(C, dim=-1)
            q = q.reshape(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
            k = k.reshape(B, T, H, hd).transpose(1, 2)
            v = v.reshape(B, T, H, hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin, n_elem), apply_rope(k, cos, sin, n_elem)
            if q.dtype != v.dtype:  # under autocast the float32 RoPE tables promote q and k
                q, k = q.to(v.dtype), k.to(v.dtype)
            if cache is not None:
                cache[0][i, :, :, pos0:end] = k
                cache[1][i, :, :, pos0:end] = v
                k, v = cache[0][i, :, :, :end], cache[1][i, :, :, :end]
            y = attend(q, k, v, self.attention).transpose(1, 2).reshape(B, T, C)  # heads in head order
            h = h + F.linear(y, o_proj)
            m = rmsnorm(h, mlp_norm)
            h = h + F.linear(F.silu(F.linear(m, fc1)) * F.linear(m, fc2), fc3)
        return F.linear(rmsnorm(h, norm), head)

    def sample(self, y, temperature, gen=None):
        """One vector per row of y (B, head_out): the component (k > 1) drawn from softmax(logits), or
        the most probable one at temperature 0, then mu + temperature * std * N(0, 1) (mu at 0)."""
        logits, mu, pre = split_head(y, self.cfg)
        B = y.shape[0]
        if logits is None:
            mu, pre = mu[:, 0], pre[:, 0]
        else:
            if temperature > 0:
                k = torch.multinomial(torch.softmax(logits.double(), dim=-1), 1, generator=gen)[:, 0]
            else:
                k = logits.argmax(dim=-1)
            rows = torch.arange(B, device=y.device)
            mu, pre = mu[rows, k], pre[rows, k]
        if temperature == 0:
            return mu
        std = F.softplus(pre) + self.cfg["eps"]
        return mu + temperature * std * torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=gen)

    @torch.no_grad()
    def generate(self, B, max_len, temperature, prompt=None, gen=None, labels=None):
        """The seed's generate, batched: bos (and the prompt (B, s, D)) run once filling a KV cache, then
        one vector at a time. Returns (B, max_len, D), the prompt included. No guidance."""
        D = self.cfg["input_dim"]
        dtype, device = self.cos.dtype, self.cos.device
        s = 0 if prompt is None else prompt.shape[1]
        out = torch.empty(B, max_len, D, dtype=dtype, device=device)
        inp = self.model.bos.view(1, 1, D).expand(B, 1, D)
        if s:
            out[:, :s] = prompt
            inp = torch.cat([inp, prompt.to(dtype=dtype, device=device)], dim=1)
        cache, tensors = self.new_cache(B, max_len), self.tensors()
        y = self.decode(inp, 0, cache, labels, tensors)[:, -1]
        for pos in range(s, max_len):
            x = self.sample(y, temperature, gen)
            out[:, pos] = x
            if pos + 1 == max_len:
                break
            y = self.decode(x.view(B, 1, D), pos + 1, cache, None, tensors)[:, -1]
        return out


# ---- the float64 reference, as functions of a weight dict ----------------------------------------

def _functional_call(model, w, args):
    """model's forward with the tensors of w in place of its parameters (autograd flows to w)."""
    missing = set(n for n, _ in model.named_parameters()) ^ set(w)
    if missing:
        raise KeyError(f"weights: missing or unexpected {sorted(missing)}")
    try:
        from torch.func import functional_call
    except ImportError:  # PyTorch < 2
        from torch.nn.utils.stateless import functional_call
    return functional_call(model, w, args)


def forward_head(w, x, cfg, labels=None):
    """w: dict name -> float64 tensor; x (B, T, D) targets; labels (B) ints in [0, num_classes]
    (num_classes = "no label"; None: all "no label") for a class-conditional model. Returns the head
    output y (B, T, head_out), differentiable with respect to the tensors of w."""
    return _functional_call(Givt(cfg, DTYPE, x.device), w, (x, labels))


def gaussian_head(y, cfg):
    """mu, std (B, T, D) of a single-Gaussian head output y (B, T, 2D)."""
    D = cfg["input_dim"]
    mu = y[..., :D]
    std = F.softplus(y[..., D:]) + cfg["eps"]  # PyTorch softplus: identity above threshold 20
    return mu, std


def forward(w, x, cfg):
    """The seed's single-Gaussian model: mu, std (B, T, D)."""
    return gaussian_head(forward_head(w, x, cfg), cfg)


def loss_fn(mu, std, x, cfg, full=False):
    return F.gaussian_nll_loss(mu, x, std ** 2, eps=cfg["eps"], full=full, reduction="mean")


def mixture_loss(y, x, cfg, full=False):
    """GIVT.md's mixture loss, written from its definition: per position -log sum_k pi_k prod_d
    N(x_d; mu_kd, var_kd) (the full densities, torch.logsumexp over k), averaged over positions and
    divided by D, minus 0.5*log(2*pi) unless full. var = max(std^2, eps) with the clamp passing the
    gradient straight through (as gaussian_nll_loss's in-place clamp under no_grad)."""
    B, T, D = x.shape
    logits, mu, pre = split_head(y, cfg)
    if logits is None:
        logits = torch.zeros(B, T, 1, dtype=y.dtype, device=y.device)
    std = F.softplus(pre) + cfg["eps"]
    var = std ** 2
    var = var + (var.clamp(min=cfg["eps"]) - var).detach()
    xk = x.unsqueeze(2)  # (B, T, 1, D)
    log_n = -0.5 * (torch.log(2 * math.pi * var) + (xk - mu) ** 2 / var)  # (B, T, K, D)
    log_p = torch.logsumexp(torch.log_softmax(logits, dim=-1) + log_n.sum(-1), dim=-1)  # (B, T)
    loss = -log_p.mean() / D
    return loss if full else loss - 0.5 * math.log(2 * math.pi)


def forward_backward_head(w, x, cfg, labels=None, full=False):
    """Mixture / class-conditional model: returns (loss, y, grads), float64."""
    model = Givt.from_weights(cfg, w)
    x = x.to(DTYPE)
    y = model(x, labels)
    loss = mixture_loss(y, x, cfg, full)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    return loss.item(), y.detach(), {k: grads[k] for k in w}


def forward_backward(w, x, cfg, full=False):
    """Returns (loss, mu, std, grads) with grads a dict name -> tensor, all float64."""
    model = Givt.from_weights(cfg, w)
    x = x.to(DTYPE)
    mu, std = gaussian_head(model(x), cfg)
    loss = loss_fn(mu, std, x, cfg, full)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    return loss.item(), mu.detach(), std.detach(), {k: grads[k] for k in w}


# ---- training: AdamW with the seed's decay groups, clipping and schedule -------------------------

def inverse_sqrt_factor(step, warmup, timescale):
    """Hugging Face get_inverse_sqrt_schedule: the lr factor of 0-based update number `step`."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return 1.0 / math.sqrt((step + timescale - warmup) / timescale)


class Trainer:
    """A float64 Givt trained by torch.optim.AdamW (decay on tensors with > 1 dim), global grad-norm
    clip, LambdaLR schedule stepped after each optimizer step (so update s uses factor(s); update 0 has
    lr 0 in warmup). params: name -> the model's parameter, in the order of w."""

    def __init__(self, w, cfg, lr=1e-4, betas=(0.9, 0.99), adam_eps=1e-8, weight_decay=0.1,
                 clip=1.0, warmup=1000, timescale=1e8, labels=None):
        self.cfg = cfg
        self.labels = labels  # (B) class of each sequence of the batch, for a class-conditional model
        self.clip = clip
        self.model = Givt.from_weights(cfg, w)
        named = dict(self.model.named_parameters())
        self.params = {k: named[k] for k in w}
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
        loss = self.model.loss(x.to(DTYPE), self.labels, full)
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
