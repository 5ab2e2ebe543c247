#!/usr/bin/env python3
"""Draws the curves of a givt-train run (out_dir/metrics.jsonl) to a PNG.

usage: python3 scripts/plot_metrics.py RUN_DIR_OR_METRICS.jsonl [-o OUT.png] [--baseline VALUE]

Panels: training and validation loss against step (with an optional horizontal baseline), the
learning rate, the gradient norm before clipping, and tokens/s. Needs matplotlib (Debian:
python3-matplotlib).
"""
import argparse
import json
import os
import sys


def read_metrics(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not a JSON object: {e}")
    if not rows:
        sys.exit(f"{path}: no metrics yet")
    return rows


def series(rows, key):
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run's out_dir, or its metrics.jsonl")
    ap.add_argument("-o", "--out", help="PNG to write (default: RUN_DIR/metrics.png)")
    ap.add_argument("--baseline", type=float, help="draw a reference loss as a horizontal line")
    args = ap.parse_args()
    path = os.path.join(args.run, "metrics.jsonl") if os.path.isdir(args.run) else args.run
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.png")
    rows = read_metrics(path)

    try:
        import matplotlib
    except ImportError:
        sys.exit("plot_metrics.py needs matplotlib: apt-get install python3-matplotlib (Debian) "
                 "or pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0][0]
    ax.plot(*series(rows, "loss"), label="train loss", lw=1)
    vx, vy = series(rows, "val_loss")
    if vx:
        ax.plot(vx, vy, "o-", label="validation loss", ms=3)
    if args.baseline is not None:
        ax.axhline(args.baseline, color="gray", ls="--", label=f"baseline {args.baseline:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("Gaussian NLL per dim")
    ax.legend()
    for ax, key, label in ((axes[0][1], "lr", "learning rate"), (axes[1][0], "grad_norm", "gradient norm"),
                           (axes[1][1], "tokens_per_s", "tokens/s")):
        ax.plot(*series(rows, key), lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    fig.suptitle(os.path.dirname(os.path.abspath(path)))
    fig.tight_layout()
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
