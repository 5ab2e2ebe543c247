#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/ (standard library only).

Each seed is small (well under 4 KB); the set is a handful of valid inputs, each exercising a
different feature, and a few broken ones. Re-run after changing this file and commit the result:
    python3 tests/fuzz/make_corpus.py
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 4096, (target, name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- fuzz_ini: INI text, then NUL-separated "section.key=value" overrides ----------------------
TINY = """[model]
input_dim = 4
hidden_dim = 12
intermediate_dim = 32
num_heads = 2               # head dim 6
num_layers = 1
block_size = 8

[train]
batch_size = 4
lr = 1e-3
warmup_steps = 5
max_steps = 20
log_every = 5
val_every = 10
val_size = 8
save_every = 10
keep_checkpoints = 2
seed = 1
out_dir = "runs/tiny"
device = cpu

[data]
kind = dummy
seq_len = 8
dummy_size = 64
"""

FULL = """\ufeff; every kind of value, CRLF line ends
[model]
input_dim = 16
hidden_dim = 32
intermediate_dim = 64
num_heads = 4
num_layers = 2
block_size = 16
eps = 1e-8
rope_base = 1000000
rope_rotary_percentage = 0.5
rope_condense_ratio = 4.0

[train]
batch_size = 2
lr = 3e-4
weight_decay = 0.01
lr_eps = 1e-8
lr_betas = 0.9, 0.95
grad_norm = 1.0
warmup_steps = 10
timescale = 100
lr_schedule = cosine
min_lr_ratio = 0.1
max_steps = 100
grad_accum_steps = 2
ema = 6.94
mixed_precision = no
gradient_checkpointing = yes
log_every = 1
val_every = 0
val_size = 0
save_every = 0
keep_checkpoints = 0
seed = 18446744073709551615
out_dir = "runs/with \\"quotes\\" and \\\\ # not a comment"
resume_from_ckpt = latest
init_from =
device = auto

[data]
kind = dummy
path = ""
seq_len = 16
dummy_size = 10
""".replace("\n", "\r\n")

put("fuzz_ini", "tiny.ini", TINY)
# configs/base.ini as it is (GPU size: the large end of the sizes, where overflows would hide)
with open(os.path.join(HERE, "..", "..", "configs", "base.ini")) as f:
    put("fuzz_ini", "base.ini", f.read())
put("fuzz_ini", "tiny_overrides.ini",
    TINY + "\0train.lr=3e-4\0model.num_layers=3\0train.out_dir=\"/tmp/x y\"\0data.dummy_size = 100")
put("fuzz_ini", "full_crlf.ini", FULL)
put("fuzz_ini", "minimal.ini", "[data]\nkind = dummy\n")
put("fuzz_ini", "overrides_only.ini", "\0data.kind=dummy\0model.block_size=8\0data.seq_len=8\0train.lr_schedule=constant")
put("fuzz_ini", "npy_paths.ini",
    "[data]\nkind = npy\npath = /nonexistent/a.npy, /nonexistent/*.npy\nseq_len = 8\n[model]\nblock_size = 8\n")
put("fuzz_ini", "npy_devnull.ini", "[data]\nkind = npy\npath = /dev/null\nseq_len = 8\n[model]\nblock_size = 8\n")
put("fuzz_ini", "typos.ini",
    "[modle]\nnum_layer = 2\n[train]\nlearning_rate = 1\n[data]\nkind = dumy\n# comment\n; comment\n")
put("fuzz_ini", "bad_lines.ini",
    "key = outside\n[model\n[model] extra\nno equals sign\n[model]\ninput_dim = \"unterminated\n"
    "input_dim = 1\ninput_dim = 2\n")

# ---- fuzz_json: JSON text; config.json as hf_write_config_json writes it ------------------------
CONFIG = {"architectures": ["GIVT"], "block_size": 512, "eps": 1e-08, "hidden_dim": 32, "input_dim": 16,
          "intermediate_dim": 64, "model_type": "givt", "num_heads": 4, "num_layers": 2, "rope_base": 1000000,
          "rope_condense_ratio": 4.0, "rope_rotary_percentage": 1.0}
put("fuzz_json", "config.json", json.dumps(CONFIG, indent=2, sort_keys=True) + "\n")
put("fuzz_json", "config_transformers.json", json.dumps(dict(
    CONFIG, torch_dtype="float32", transformers_version="4.40.0", num_layers=1, hidden_dim=12, num_heads=2,
    input_dim=4, intermediate_dim=32, block_size=8, rope_rotary_percentage=0.3333333333333333), indent=2))
put("fuzz_json", "config_partial.json", '{"num_layers": 4, "eps": 1e-6, "rope_base": 10000.5}')
put("fuzz_json", "config_bad_types.json", '{"num_layers": 2.5, "hidden_dim": "32", "eps": -1}')
put("fuzz_json", "all_types.json",
    '{"a": [1, -2, 3.5, 1e3, 9223372036854775807, 9223372036854775808, -0, 1E-400],\n'
    ' "s": "q\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\u0000x \xc3\xa9 \xf0\x9f\x98\x80",'
    ' "t": true, "f": false, "n": null, "o": {"x": {"y": [[], {}]}}, "e": []}')
put("fuzz_json", "st_header.json",
    '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}')
put("fuzz_json", "deep.json", "[" * 64 + "]" * 64)
put("fuzz_json", "bad.json", '{"a": [1, 2,], "b": 01, "c": "\\ud800", "a": nul}')

# ---- fuzz_safetensors: safetensors files --------------------------------------------------------
def st(header, data, pad=True, length=None):
    h = json.dumps(header, separators=(",", ":")).encode() if not isinstance(header, bytes) else header
    if pad:
        h += b" " * (-len(h) % 8)
    n = len(h) if length is None else length
    return struct.pack("<Q", n) + h + data


def f32(vals):
    return struct.pack("<%df" % len(vals), *vals)


def f16(vals):
    return struct.pack("<%de" % len(vals), *vals)


def bf16(vals):
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


put("fuzz_safetensors", "f32.safetensors", st(
    {"__metadata__": {"format": "pt", "step": "3"}, "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}},
    f32([1, -2, 3.5, 0, float("inf"), float("nan")])))
put("fuzz_safetensors", "f16_bf16.safetensors", st(
    {"b.half": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]},
     "c.bf16": {"dtype": "BF16", "shape": [3], "data_offsets": [8, 14]},
     "d.scalar": {"dtype": "F32", "shape": [], "data_offsets": [14, 18]},
     "e.empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [18, 18]}},
    f16([1, -0.5, 65504, 6e-8]) + bf16([1, -3, 1e30]) + f32([7])))
put("fuzz_safetensors", "model_table.safetensors", st(
    {"__metadata__": {"format": "pt"},
     "model.bos": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
     "model.blocks.0.attn.norm.weight": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
     "model.head.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [24, 40]}},
    f32([0.1, 0.2, 0.3, 0.4, 1, 1, 0, 0, 0, 0])))
put("fuzz_safetensors", "int_dtypes.safetensors", st(
    {"i": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]},
     "u": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]},
     "x": {"dtype": "F64", "shape": [1], "data_offsets": [11, 19]}},
    struct.pack("<ii", 1, -1) + b"\x01\x02\x03" + struct.pack("<d", 2.5)))
put("fuzz_safetensors", "empty.safetensors", st({}, b""))
put("fuzz_safetensors", "bad_truncated.safetensors", st(
    {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, f32([1, 2, 3])))
put("fuzz_safetensors", "bad_overlap.safetensors", st(
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, f32([1, 2, 3])))
put("fuzz_safetensors", "bad_header_length.safetensors", st(
    {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, f32([1]), length=1 << 40))
put("fuzz_safetensors", "bad_entry.safetensors", st(
    b'{"a":{"dtype":"F99","shape":[-1,2],"data_offsets":[8,4],"extra":1},"__metadata__":{"k":1}}', b"\0" * 8))

# ---- fuzz_npy: .npy files -----------------------------------------------------------------------
def npy(descr, shape, data, fortran=False, version=(1, 0), header=None):
    if header is None:
        sh = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, sh)
    h = header.encode()
    prefix = 10 if version[0] == 1 else 12
    h += b" " * (-(prefix + len(h) + 1) % 64) + b"\n"
    lenfield = struct.pack("<H", len(h)) if version[0] == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes(version) + lenfield + h + data


put("fuzz_npy", "f32_rank2.npy", npy("<f4", (2, 3), f32([1, 2, 3, -4, 5.5, 6])))
put("fuzz_npy", "f16_rank3.npy", npy("<f2", (2, 2, 2), f16([1, -1, 0.5, 65504, 6e-8, 0, -0.0, 2])))
put("fuzz_npy", "f32_v2_nan.npy", npy("<f4", (1, 2, 3), f32([0, 1, 2, float("nan"), 4, 5]), version=(2, 0)))
put("fuzz_npy", "f16_inf_v3.npy", npy("<f2", (3, 1), f16([1, float("-inf"), 2]), version=(3, 0)))
put("fuzz_npy", "empty_rows.npy", npy("<f4", (0, 4), b""))
put("fuzz_npy", "empty_wide.npy", npy("<f2", (0, 4096, 4096), b""))
put("fuzz_npy", "python2_long.npy", npy("<f4", (1, 2), f32([1, 2]), header="{'descr':'<f4','fortran_order':False,'shape':(1L, 2L)}"))
put("fuzz_npy", "bad_fortran.npy", npy("<f4", (2, 2), f32([1, 2, 3, 4]), fortran=True))
put("fuzz_npy", "bad_rank1.npy", npy("<f4", (4,), f32([1, 2, 3, 4])))
put("fuzz_npy", "bad_dtype.npy", npy(">f8", (1, 1), b"\0" * 8))
put("fuzz_npy", "bad_truncated.npy", npy("<f4", (2, 3), f32([1, 2, 3])))
put("fuzz_npy", "bad_magic.npy", b"\x93NUMPX\x01\x00\x10\x00{'descr': '<f4'}")

# ---- fuzz_train_state: optimizer.safetensors of fuzz_train_state.c's tiny model ----------------
# (D 2, C 4, F 4, H 1, L 1: param_table_build's table, as train_state_write writes it)
PARAMS = [("model.embed.weight", [4, 2]), ("model.bos", [2]), ("model.blocks.0.attn.norm.weight", [4]),
          ("model.blocks.0.attn.qkv_proj.weight", [12, 4]), ("model.blocks.0.attn.o_proj.weight", [4, 4]),
          ("model.blocks.0.mlp.norm.weight", [4]), ("model.blocks.0.mlp.fc1.weight", [4, 4]),
          ("model.blocks.0.mlp.fc2.weight", [4, 4]), ("model.blocks.0.mlp.fc3.weight", [4, 4]),
          ("model.norm.weight", [4]), ("model.head.weight", [4, 4])]


def train_state(meta, avg=None, avg_sq=None, drop=None):
    tensors = {}
    for name, shape in PARAMS:
        n = 1
        for d in shape:
            n *= d
        tensors["exp_avg." + name] = (shape, [avg if avg is not None else 0.01 * ((i % 7) - 3) for i in range(n)])
        tensors["exp_avg_sq." + name] = (shape, [avg_sq if avg_sq is not None else 1e-4 * (i % 5) for i in range(n)])
    if drop:
        del tensors[drop]
    header, data = {"__metadata__": dict(meta, format="pt")}, b""
    for name in sorted(tensors):
        shape, vals = tensors[name]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 4 * len(vals)]}
        data += f32(vals)
    return st(header, data)


STATE = {"givt_state": "givt-train-state-1", "step": "4", "adamw_t": "4", "data_epoch": "0", "data_index": "8",
         "skipped_steps": "0", "world_size": "1"}
put("fuzz_train_state", "valid.safetensors", train_state(STATE))
put("fuzz_train_state", "valid_global_batch.safetensors", train_state(dict(
    STATE, step="10", adamw_t="7", skipped_steps="3", data_epoch="2", data_index="5", world_size="4",
    global_batch="16")))
put("fuzz_train_state", "older_no_world.safetensors", train_state(
    {k: v for k, v in STATE.items() if k != "world_size"}, avg=0.0, avg_sq=0.0))
put("fuzz_train_state", "bad_negative_step.safetensors", train_state(dict(STATE, step="-1")))
put("fuzz_train_state", "bad_huge_adamw_t.safetensors", train_state(dict(STATE, adamw_t="99999999999999999999")))
put("fuzz_train_state", "bad_adamw_t_mismatch.safetensors", train_state(dict(STATE, adamw_t="3")))
put("fuzz_train_state", "bad_negative_moment.safetensors", train_state(STATE, avg_sq=-1.0))
put("fuzz_train_state", "bad_missing_tensor.safetensors",
    train_state(STATE, drop="exp_avg_sq.model.head.weight"))
put("fuzz_train_state", "bad_format.safetensors", train_state(dict(STATE, givt_state="givt-train-state-0")))

# ---- fuzz_labels: label .npy files for fuzz_labels.c's data (6 sequences, 5 classes) ------------
def ints(fmt, vals):
    return struct.pack("<%d%s" % (len(vals), fmt), *vals)


put("fuzz_labels", "i4.npy", npy("<i4", (6,), ints("i", [0, 1, 2, 3, 4, 0])))
put("fuzz_labels", "i8.npy", npy("<i8", (6,), ints("q", [4, 4, 3, 0, 1, 2])))
put("fuzz_labels", "i4_v2.npy", npy("<i4", (6,), ints("i", [2, 2, 2, 2, 2, 2]), version=(2, 0)))
put("fuzz_labels", "bad_count.npy", npy("<i4", (4,), ints("i", [0, 1, 2, 3])))
put("fuzz_labels", "bad_range.npy", npy("<i4", (6,), ints("i", [0, 1, 5, 3, -1, 0])))
put("fuzz_labels", "bad_int32_overflow.npy", npy("<i8", (6,), ints("q", [0, 1, 2, 1 << 32, 4, 0])))
put("fuzz_labels", "bad_float.npy", npy("<f4", (6,), f32([0, 1, 2, 3, 4, 0])))
put("fuzz_labels", "bad_rank2.npy", npy("<i4", (2, 3), ints("i", [0, 1, 2, 3, 4, 0])))

# ---- fuzz_digits: digits.bin files (data/digits/README.md); the last byte picks the options -----
with open(os.path.join(HERE, "..", "..", "data", "digits", "digits.bin"), "rb") as f:
    DIGITS = f.read()
DIGITS_N = struct.unpack("<I", DIGITS[8:12])[0]


def digits(k):
    """The first k images of data/digits/digits.bin, with their labels."""
    return (DIGITS[:8] + struct.pack("<I", k) + DIGITS[12:24] + DIGITS[24:24 + 64 * k]
            + DIGITS[24 + 64 * DIGITS_N:24 + 64 * DIGITS_N + k])


def digits_file(n, h, w, maxval, pixels, labels):
    return b"GIVTDIG1" + struct.pack("<4I", n, h, w, maxval) + bytes(pixels) + bytes(labels)


# the real labels run 0..9: the last (k - 1) % 10 sets patch 2 or 4, dequantization or none
for k in (3, 4, 5, 6):
    put("fuzz_digits", "real_%d.bin" % k, digits(k))
put("fuzz_digits", "tiny_4x4.bin", digits_file(2, 4, 4, 3, [i % 4 for i in range(32)], [1, 3]))
put("fuzz_digits", "constant.bin", digits_file(2, 8, 8, 16, [0] * 128, [0, 0]))
put("fuzz_digits", "header_only.bin", DIGITS[:24])
put("fuzz_digits", "bad_lying_header.bin", digits_file(1 << 24, 4096, 4096, 16, [0] * 64, [0]))
put("fuzz_digits", "bad_pixel.bin", digits_file(1, 8, 8, 16, [17] * 64, [3]))
put("fuzz_digits", "bad_patch.bin", digits_file(1, 6, 6, 16, [1] * 36, [1]))  # label 1: patch 4

# ---- fuzz_overrides: "section.key=value" overrides separated by NUL bytes, over tiny.ini --------
put("fuzz_overrides", "valid.txt", "train.lr=3e-4\0model.num_layers=2\0train.out_dir=\"/tmp/x y\"\0data.dummy_size = 100")
put("fuzz_overrides", "valid_every_type.txt",
    "model.hidden_dim=16\0model.num_heads=4\0train.lr_schedule=COSINE\0train.min_lr_ratio=0.1\0"
    "train.lr_betas=0.9, 0.95\0train.ema=6.94\0train.gradient_checkpointing=yes\0train.seed=18446744073709551615")
put("fuzz_overrides", "valid_model.txt",
    "model.eps=1e-6\0model.rope_rotary_percentage=0.34\0model.num_mixtures=3\0model.block_size=16\0data.seq_len=16")
put("fuzz_overrides", "duplicates.txt", "train.lr=1e-3\0train.lr=2e-3\0 train . lr = \"3e-3\"\0train.ema=1\0train.ema=")
put("fuzz_overrides", "empty.txt", "\0\0")
put("fuzz_overrides", "bad_keys.txt", "train.lrr=1\0modle.num_layers=2\0num_layers=2\0.lr=1\0train.=1")
put("fuzz_overrides", "bad_values.txt", "model.num_heads=5\0train.lr=-1\0train.lr_betas=0.9\0train.device=tpu")
put("fuzz_overrides", "bad_cross.txt", "data.seq_len=16\0train.max_steps=3\0train.lr_schedule=cosine")
put("fuzz_overrides", "bad_needs.txt", "model.num_classes=3\0data.kind=npy\0data.labels=\"/nonexistent.npy\"")
put("fuzz_overrides", "bad_quotes.txt", "train.out_dir=\"unterminated\0train.out_dir=\"a\" b\0train.out_dir=")

if __name__ == "__main__":
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(CORPUS) for f in fs)
    print("corpus: %d bytes in %s" % (total, CORPUS))
