#!/usr/bin/env python3
"""show_classes: class-conditional samples of a model trained on the digits set with labels
(configs/digits_cond.ini): a PNG grid with one row per digit class for each guidance scale, side by
side, and the share of samples that a nearest-centroid classifier fitted on the real digits assigns
to the requested class, per guidance scale.

    python3 scripts/show_classes.py runs/digits-cond/step_00000900 --out docs/classes.png
    python3 scripts/show_classes.py MODEL --out x.png --scales 0,2 --accuracy-scales 0,0.5,1,2 --accuracy-n 200

The classifier: the mean of each class's real digits (data/digits/digits_p2.npy with the labels of
data/digits/digits_labels.npy, all 1797, in the standardised units the model sees, each image a
vector of 64 values); a sample gets the class of the nearest mean (Euclidean). Its accuracy on the
real digits themselves is printed beside the table as a yardstick. Python standard library only.
"""
import argparse
import ast
import math
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import show_samples as ss  # noqa: E402  (the .npy reader, PNG writer, font and image layout)

ROOT = ss.ROOT
ss.FONT.update({"C": "111100100100111", "F": "111100110100100", "G": "111100101101111"})


def read_npy_int(path):
    """A little-endian int32 or int64 (N,) .npy -> list of ints."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not an .npy file")
    (hlen,), start = (struct.unpack("<H", data[8:10]), 10) if data[6] == 1 else (struct.unpack("<I", data[8:12]), 12)
    header = ast.literal_eval(data[start:start + hlen].decode("latin1"))
    fmt = {"<i4": "i", "<i8": "q"}.get(header.get("descr"))
    if not fmt or len(header["shape"]) != 1:
        raise ValueError(f"{path}: need int32/int64 of shape (N,), got {header}")
    n = header["shape"][0]
    return list(struct.unpack(f"<{n}{fmt}", data[start + hlen:start + hlen + n * struct.calcsize(fmt)]))


def write_npy_int32(path, values):
    header = "{'descr': '<i4', 'fortran_order': False, 'shape': (%d,), }" % len(values)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(struct.pack(f"<{len(values)}i", *values))


def sample(exe, model, T, labels, scale, temperature, seed, tmpdir):
    """givt-sample with one label per sample; returns (shape, flat floats) and the DB-CFG line."""
    lab = os.path.join(tmpdir, "labels.npy")
    out = os.path.join(tmpdir, f"samples_w{scale}.npy")
    write_npy_int32(lab, labels)
    cmd = [exe, model, "--max-len", str(T), "--labels", lab, "--cfg-scale", str(scale), "--temperature",
           str(temperature), "--seed", str(seed), "--out", out]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"show_classes: {' '.join(cmd)} failed:\n{r.stderr.strip()}")
    cfg_line = next((ln for ln in r.stderr.splitlines() if "acceptance rate" in ln), "")
    return ss.read_npy_f32(out), cfg_line


def centroids(shape, data, labels, classes):
    N, T, D = shape
    width = T * D
    sums = [[0.0] * width for _ in range(classes)]
    counts = [0] * classes
    for i in range(N):
        c = labels[i]
        counts[c] += 1
        row = data[i * width:(i + 1) * width]
        s = sums[c]
        for j in range(width):
            s[j] += row[j]
    return [[v / max(1, counts[c]) for v in sums[c]] for c in range(classes)]


def nearest(cents, row):
    best, bd = 0, math.inf
    for c, m in enumerate(cents):
        d = sum((a - b) * (a - b) for a, b in zip(row, m))
        if d < bd:
            best, bd = c, d
    return best


def accuracy(cents, flat, width, labels):
    ok = sum(nearest(cents, flat[i * width:(i + 1) * width]) == labels[i] for i in range(len(labels)))
    return ok / len(labels)


def draw_grid(path, panels, T, D, classes, n, lo, hi, scale_px):
    """panels: [(title, flat samples of classes * n sequences, class-major)], side by side."""
    side = math.isqrt(T) * math.isqrt(D)
    cell, gap, font = side * scale_px, max(2, scale_px), 2
    label_w = 3 * 4 * font + 2 * gap
    panel_w = n * (cell + gap) + 3 * gap
    title_h = 5 * font + 2 * gap
    width = label_w + len(panels) * panel_w
    height = title_h + classes * (cell + gap) + gap
    pixels = bytearray([255]) * (width * height)
    for p, (title, flat) in enumerate(panels):
        x_panel = label_w + p * panel_w
        ss.draw_text(pixels, width, x_panel, gap, title, font)
        for c in range(classes):
            y0 = title_h + c * (cell + gap)
            if p == 0:
                ss.draw_text(pixels, width, gap, y0 + (cell - 5 * font) // 2, str(c), font)
            for i in range(n):
                seq = flat[(c * n + i) * T * D:(c * n + i + 1) * T * D]
                _, img = ss.to_image(seq, T, D)
                x0 = x_panel + i * (cell + gap)
                for yy in range(side):
                    for xx in range(side):
                        v = (img[yy * side + xx] - lo) / (hi - lo) if hi > lo else 0.0
                        g = 255 - int(round(255 * min(1.0, max(0.0, v))))
                        for dy in range(scale_px):
                            base = (y0 + yy * scale_px + dy) * width + x0 + xx * scale_px
                            pixels[base:base + scale_px] = bytes([g]) * scale_px
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ss.write_png_grey(path, pixels, width, height)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a class-conditional checkpoint trained on the digits (num_classes = 10)")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--n", type=int, default=10, help="samples per class in the picture [10]")
    ap.add_argument("--scales", default="0,2", help="guidance scales of the picture, one panel each [0,2]")
    ap.add_argument("--accuracy-scales", default="0,0.5,1,2", help="guidance scales of the table [0,0.5,1,2]")
    ap.add_argument("--accuracy-n", type=int, default=100, help="samples per class for the table [100]")
    ap.add_argument("--temperature", type=float, default=1.0, help="givt-sample --temperature [1]")
    ap.add_argument("--seed", type=int, default=0, help="givt-sample --seed [0]")
    ap.add_argument("--data", default=os.path.join(ROOT, "data/digits/digits_p2.npy"))
    ap.add_argument("--labels", default=os.path.join(ROOT, "data/digits/digits_labels.npy"))
    ap.add_argument("--givt-sample", default=os.path.join(ROOT, "givt-sample"), help="the program [./givt-sample]")
    ap.add_argument("--scale", type=int, default=4, help="pixels per digit pixel [4]")
    a = ap.parse_args()

    shape, data = ss.read_npy_f32(a.data)
    labels = read_npy_int(a.labels)
    N, T, D = shape
    if len(labels) != N:
        sys.exit(f"show_classes: {a.labels}: {len(labels)} labels for {N} digits")
    classes = max(labels) + 1
    lo, hi = min(data), max(data)
    cents = centroids(shape, data, labels, classes)
    real_acc = accuracy(cents, data, T * D, labels)

    with tempfile.TemporaryDirectory() as tmp:
        panels = []
        for w in [float(s) for s in a.scales.split(",")]:
            want = [c for c in range(classes) for _ in range(a.n)]
            (s_shape, flat), _ = sample(a.givt_sample, a.model, T, want, w, a.temperature, a.seed, tmp)
            panels.append((f"CFG {w:g}", flat))
        draw_grid(a.out, panels, T, D, classes, a.n, lo, hi, a.scale)
        print(f"wrote {a.out}")
        print(f"nearest-centroid classifier on the {N} real digits: {100 * real_acc:.1f}% correct")
        print(f"| cfg scale | samples assigned to the requested class ({a.accuracy_n} per class, t = "
              f"{a.temperature:g}) | DB-CFG acceptance rate, fallbacks |")
        print("|---|---|---|")
        for w in [float(s) for s in a.accuracy_scales.split(",")]:
            want = [c for c in range(classes) for _ in range(a.accuracy_n)]
            (s_shape, flat), line = sample(a.givt_sample, a.model, T, want, w, a.temperature, a.seed + 1, tmp)
            acc = accuracy(cents, flat, T * D, want)
            if "acceptance rate" in line:  # "... N dimensions sampled, ..., acceptance rate R%, F fallbacks ..."
                dims = int(line.split(" dimensions sampled")[0].split()[-1])
                fb = int(line.split("%, ")[1].split(" fallbacks")[0])
                guided = f"{line.split('acceptance rate ')[1].split(',')[0]}, {fb} of {dims} dims ({100 * fb / dims:.1f}%)"
            else:
                guided = "- (no guidance)"
            print(f"| {w:g} | {100 * acc:.1f}% | {guided} |")


if __name__ == "__main__":
    main()
