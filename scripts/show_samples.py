#!/usr/bin/env python3
"""show_samples: a PNG grid of digits from a model trained on the digits set (configs/digits.ini):
one row of real digits from the data file, then one row of givt-sample samples per temperature.

    python3 scripts/show_samples.py runs/digits-.../step_00000900 --out runs/digits-.../samples.png
    python3 scripts/show_samples.py MODEL --out x.png --n 16 --seed 0 --temperatures 0.5,1.0

Python standard library only (no numpy, no matplotlib): a small .npy reader (float32, C order) and a
PNG writer (zlib + struct). Each sequence (T, D) is put back into an image the way
givt-prepare-digits cut it (csrc/io/digits.c): token t is the patch (t // (side/p), t % (side/p)) in
raster order and dim d the pixel (d // p, d % p) inside it, with p = sqrt(D). Values are mapped to
grey with one fixed range for every row, the minimum and maximum of the real data: that is the
de-standardisation x * std + mean back to the dequantized pixel level 0..17, scaled to 0..255 (ink is
dark, as scikit-learn draws the set). Sample values outside the range are clipped.
"""
import argparse
import ast
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from array import array

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- .npy (float32, C order) --------------------------------------------------------------------

def read_npy_f32(path):
    """Returns (shape, flat array('f')) of a little-endian float32 C-order .npy (versions 1 to 3)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not an .npy file")
    major = data[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", data[8:10]), 10
    elif major in (2, 3):
        (hlen,), start = struct.unpack("<I", data[8:12]), 12
    else:
        raise ValueError(f"{path}: .npy version {major} not supported")
    header = ast.literal_eval(data[start:start + hlen].decode("latin1"))
    if header.get("descr") not in ("<f4", "=f4") or header.get("fortran_order"):
        raise ValueError(f"{path}: need little-endian float32 in C order, got {header}")
    shape = tuple(header["shape"])
    count = math.prod(shape)
    body = data[start + hlen:]
    if len(body) < 4 * count:
        raise ValueError(f"{path}: truncated ({len(body)} bytes of data for shape {shape})")
    a = array("f")
    a.frombytes(body[:4 * count])
    if sys.byteorder != "little":
        a.byteswap()
    return shape, a


# ---- PNG (8-bit greyscale) ----------------------------------------------------------------------

def write_png_grey(path, pixels, width, height):
    """pixels: bytearray of height rows of width bytes (0 black .. 255 white). Written atomically."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    raw = bytearray()
    for y in range(height):
        raw.append(0)  # filter: none
        raw += pixels[y * width:(y + 1) * width]
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
           + chunk(b"IEND", b""))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)


# ---- a 3x5 pixel font for the row labels --------------------------------------------------------

FONT = {  # 5 rows of 3 bits each, top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "=": "000111000111000",
    "A": "010101111101101", "D": "110101101101110", "T": "111010010010010", " ": "000000000000000",
}


def draw_text(pixels, width, x0, y0, text, scale, value=0):
    for k, ch in enumerate(text.upper()):
        bits = FONT.get(ch, FONT[" "])
        for r in range(5):
            for c in range(3):
                if bits[r * 3 + c] == "1":
                    for dy in range(scale):
                        for dx in range(scale):
                            pixels[(y0 + r * scale + dy) * width + x0 + (k * 4 + c) * scale + dx] = value


# ---- sequences -> images ------------------------------------------------------------------------

def to_image(seq, T, D):
    """One sequence (T*D floats) -> side x side values in raster order (see the module docstring)."""
    p = math.isqrt(D)
    per_row = math.isqrt(T)
    if p * p != D or per_row * per_row != T:
        raise ValueError(f"T = {T}, D = {D}: need square patches in a square image")
    side = per_row * p
    img = [0.0] * (side * side)
    for t in range(T):
        for d in range(D):
            row = (t // per_row) * p + d // p
            col = (t % per_row) * p + d % p
            img[row * side + col] = seq[t * D + d]
    return side, img


def rows_of(shape, flat, n):
    N, T, D = shape
    return [flat[i * T * D:(i + 1) * T * D] for i in range(min(n, N))]


def run_givt_sample(exe, model, T, n, temperature, seed, ema, tmpdir):
    out = os.path.join(tmpdir, f"samples_t{temperature}.npy")
    cmd = [exe, model, "--max-len", str(T), "--num-samples", str(n), "--temperature", str(temperature),
           "--seed", str(seed), "--out", out]
    if ema:
        cmd.append("--ema")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"show_samples: {' '.join(cmd)} failed:\n{r.stderr.strip()}")
    return read_npy_f32(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a givt-train checkpoint or Hugging Face folder trained on the digits")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--n", type=int, default=16, help="digits per row [16]")
    ap.add_argument("--seed", type=int, default=0, help="givt-sample --seed [0]")
    ap.add_argument("--temperatures", default="0.5,1.0", help="one row of samples each [0.5,1.0]")
    ap.add_argument("--data", default=os.path.join(ROOT, "data/digits/digits_p2.npy"),
                    help="the real digits (first row, and the grey range) [data/digits/digits_p2.npy]")
    ap.add_argument("--givt-sample", default=os.path.join(ROOT, "givt-sample"), help="the program [./givt-sample]")
    ap.add_argument("--ema", action="store_true", help="sample with the checkpoint's EMA weights")
    ap.add_argument("--scale", type=int, default=4, help="pixels per digit pixel [4]")
    a = ap.parse_args()
    if a.n < 1 or a.scale < 1:
        sys.exit("show_samples: --n and --scale must be at least 1")
    temps = [float(t) for t in a.temperatures.split(",") if t.strip()]

    shape, data = read_npy_f32(a.data)
    if len(shape) != 3:
        sys.exit(f"show_samples: {a.data}: expected (N, T, D), got {shape}")
    _, T, D = shape
    lo, hi = min(data), max(data)
    try:
        with open(os.path.join(a.model, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"show_samples: {a.model}: not a model folder ({e})")
    if cfg.get("input_dim") != D or cfg.get("block_size", 0) < T:
        sys.exit(f"show_samples: {a.model}: input_dim {cfg.get('input_dim')}, block_size {cfg.get('block_size')} "
                 f"do not fit the data (T = {T}, D = {D})")

    labelled = [("DATA", rows_of(shape, data, a.n))]
    with tempfile.TemporaryDirectory() as tmp:
        for t in temps:
            s_shape, s = run_givt_sample(a.givt_sample, a.model, T, a.n, t, a.seed, a.ema, tmp)
            if s_shape != (a.n, T, D):
                sys.exit(f"show_samples: givt-sample wrote shape {s_shape}, expected {(a.n, T, D)}")
            labelled.append((f"T={t:g}", rows_of(s_shape, s, a.n)))

    side = math.isqrt(T) * math.isqrt(D)
    cell, gap, font = side * a.scale, max(2, a.scale), 2
    label_w = 6 * 4 * font + 2 * gap  # room for "T=0.5 " and the like
    width = label_w + a.n * (cell + gap) + gap
    height = len(labelled) * (cell + gap) + gap
    bg, sep = 255, 200
    pixels = bytearray([bg]) * (width * height)
    for r, (label, seqs) in enumerate(labelled):
        y0 = gap + r * (cell + gap)
        draw_text(pixels, width, gap, y0 + (cell - 5 * font) // 2, label, font)
        if r == 1:  # a thin line between the data and the samples
            for x in range(gap, width - gap):
                pixels[(y0 - gap // 2 - 1) * width + x] = sep
        for i, seq in enumerate(seqs):
            _, img = to_image(seq, T, D)
            x0 = label_w + i * (cell + gap)
            for yy in range(side):
                for xx in range(side):
                    v = (img[yy * side + xx] - lo) / (hi - lo) if hi > lo else 0.0
                    g = 255 - int(round(255 * min(1.0, max(0.0, v))))  # ink dark
                    for dy in range(a.scale):
                        base = (y0 + yy * a.scale + dy) * width + x0 + xx * a.scale
                        pixels[base:base + a.scale] = bytes([g]) * a.scale
    out_dir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(out_dir, exist_ok=True)
    write_png_grey(a.out, pixels, width, height)
    print(a.out)


if __name__ == "__main__":
    main()
