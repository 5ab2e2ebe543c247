#!/usr/bin/python3
"""Writes data/digits/digits.bin from the copy of the UCI "Optical Recognition of Handwritten
Digits" set bundled with scikit-learn (sklearn.datasets.load_digits(); no network needed).

Layout of digits.bin (all integers little-endian; see data/digits/README.md):
  bytes  0..7   magic b"GIVTDIG1"
  bytes  8..11  uint32 n       number of images (1797)
  bytes 12..15  uint32 height  (8)
  bytes 16..19  uint32 width   (8)
  bytes 20..23  uint32 maxval  largest grey level (16)
  then n*height*width uint8 pixels, image by image, each image row by row (0..maxval)
  then n uint8 labels (0..9), in the same order as the images

Run once with Debian's python3-sklearn:  /usr/bin/python3 scripts/make_digits.py [OUT]
"""
import os
import struct
import sys

import numpy as np
from sklearn.datasets import load_digits


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "data", "digits", "digits.bin")
    d = load_digits()
    images = d.images  # (1797, 8, 8) float64 holding integers 0..16
    labels = d.target  # (1797,) int
    n, h, w = images.shape
    pix = images.astype(np.int64)
    if not np.array_equal(pix, images) or pix.min() < 0 or pix.max() > 16:
        sys.exit("unexpected pixel values")
    if labels.min() < 0 or labels.max() > 9:
        sys.exit("unexpected labels")
    header = b"GIVTDIG1" + struct.pack("<4I", n, h, w, 16)
    body = pix.astype(np.uint8).tobytes(order="C") + labels.astype(np.uint8).tobytes()
    tmp = out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(header + body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    print(f"{out}: {n} images {h}x{w}, {len(header) + len(body)} bytes")


if __name__ == "__main__":
    main()
