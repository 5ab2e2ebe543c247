#!/usr/bin/env python3
"""check_tensorboard: reads a givt-train run's TensorBoard event files back with the PyPI `tensorboard`
package and checks them against the run's metrics.jsonl.

    python3 scripts/check_tensorboard.py OUT_DIR [--runs N]

Checks, for OUT_DIR (a run folder written with `[train] tensorboard = true`):
  - every event file's records: the TFRecord framing (length, masked CRC-32C of the length, data,
    masked CRC-32C of the data), each record an Event, the first one with file_version "brain.Event:2";
  - --runs N: there are N event files (one per run: a resumed run adds one);
  - EventAccumulator (what `tensorboard --logdir` uses) reads file version 2 and, for every line of
    metrics.jsonl and every scalar in it (loss, lr, grad_norm, tokens_per_s, mfu, val_loss), the same
    value at the same step (float32), and no step that metrics.jsonl lacks;
  - EventMultiplexer over OUT_DIR's parent (as `tensorboard --logdir runs/`) lists OUT_DIR as a run.
Prints one line per check; exits 0 when all pass, 1 on a failure, 2 without the tensorboard package.
"""
import argparse
import glob
import json
import math
import os
import struct
import sys

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
except ImportError as e:
    print(f"check_tensorboard: needs the tensorboard package ({e}): pip install tensorboard", file=sys.stderr)
    sys.exit(2)

SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss")


def fail(msg):
    print(f"check_tensorboard: FAIL: {msg}")
    sys.exit(1)


def read_records(path):
    """The Events of one file, checking the framing of every record."""
    data = open(path, "rb").read()
    events, off = [], 0
    while off < len(data):
        if len(data) - off < 12:
            fail(f"{path}: {len(data) - off} stray bytes at offset {off}")
        head = data[off:off + 8]
        (n,) = struct.unpack("<Q", head)
        (crc_len,) = struct.unpack("<I", data[off + 8:off + 12])
        if crc_len != masked_crc32c(head):
            fail(f"{path}: record at {off}: length CRC {crc_len:#x}, want {masked_crc32c(head):#x}")
        body = data[off + 12:off + 12 + n]
        if len(body) != n or len(data) < off + 16 + n:
            fail(f"{path}: record at {off}: truncated")
        (crc_data,) = struct.unpack("<I", data[off + 12 + n:off + 16 + n])
        if crc_data != masked_crc32c(body):
            fail(f"{path}: record at {off}: data CRC {crc_data:#x}, want {masked_crc32c(body):#x}")
        events.append(event_pb2.Event.FromString(body))
        off += 16 + n
    if not events or events[0].file_version != "brain.Event:2":
        fail(f"{path}: the first event is not file_version brain.Event:2")
    return events


def metrics_lines(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_scalars(out_dir, lines):
    acc = EventAccumulator(out_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if acc.file_version != 2.0:
        fail(f"EventAccumulator reads file version {acc.file_version}, want 2")
    tags = set(acc.Tags()["scalars"])
    got = {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags}
    compared = 0
    for line in lines:
        for key in SCALARS:
            want = line.get(key)
            if want is None:
                continue
            have = got.get(key, {}).get(line["step"])
            if have is None:
                fail(f"step {line['step']}: {key} = {want} in metrics.jsonl, none in TensorBoard")
            # float32 in the event; metrics.jsonl writes 9 digits, tokens_per_s one decimal
            if not math.isclose(have, want, rel_tol=1e-6, abs_tol=0.051 if key == "tokens_per_s" else 1e-30):
                fail(f"step {line['step']}: {key}: TensorBoard {have}, metrics.jsonl {want}")
            compared += 1
    steps = {line["step"] for line in lines}
    for t, values in got.items():
        extra = sorted(set(values) - steps)
        if extra:
            fail(f"{t}: steps {extra} in TensorBoard, not in metrics.jsonl")
    print(f"check_tensorboard: ok: {compared} scalars of {len(lines)} logged steps read back equal, tags {sorted(tags)}")


def check_multiplexer(out_dir):
    parent, name = os.path.split(os.path.abspath(out_dir))
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(parent)
    mux.Reload()
    runs = mux.Runs()
    if name not in runs or "loss" not in runs[name].get("scalars", []):
        fail(f"tensorboard --logdir {parent} would not show run {name} with its loss: runs {sorted(runs)}")
    print(f"check_tensorboard: ok: --logdir {parent} shows run {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--runs", type=int, help="the number of event files expected (one per run)")
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.out_dir, "events.out.tfevents.*")))
    if not files:
        fail(f"{a.out_dir}: no events.out.tfevents.* file")
    if a.runs is not None and len(files) != a.runs:
        fail(f"{a.out_dir}: {len(files)} event files, want {a.runs}")
    records = sum(len(read_records(p)) for p in files)
    print(f"check_tensorboard: ok: {len(files)} event file(s), {records} records, framing and CRCs correct")
    check_scalars(a.out_dir, metrics_lines(a.out_dir))
    check_multiplexer(a.out_dir)


if __name__ == "__main__":
    main()
