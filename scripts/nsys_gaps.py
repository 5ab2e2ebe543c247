#!/usr/bin/env python3
"""nsys_gaps: how busy the GPU was over one training step of a Nsight Systems report, and where it waited.

scripts/gpu_check.sh records givt-bench under `nsys profile` (eagerly and with --cuda-graphs) and runs
this on each report: the GPU trace (`nsys stats --report cuda_gpu_trace`, CSV: one row per kernel, copy
and memset with its start and duration in ns) is cut at the step_check kernels (one per training step),
and for the span between the last two of them (one whole steady-state step: the end of one step's
update, the next step's forward and backward) it prints the GPU's busy share, the idle time and the
largest gaps between consecutive GPU operations with the operations around them. The last line is the
one-line summary gpu_check.sh puts in its table.

usage: nsys_gaps.py REPORT.nsys-rep [--nsys PATH]     (runs nsys stats)
       nsys_gaps.py --csv TRACE.csv                   (a trace already exported, e.g. for a dry run)
"""
import argparse
import csv
import io
import subprocess
import sys


def read_trace(text):
    """Rows (start_ns, end_ns, name) of a cuda_gpu_trace CSV, sorted by start."""
    lines = text.splitlines()
    head = next((i for i, l in enumerate(lines) if "Start (ns)" in l and "Duration (ns)" in l), None)
    if head is None:
        raise SystemExit("nsys_gaps: no cuda_gpu_trace header (Start (ns), Duration (ns)) in the report's output")
    rows = []
    for r in csv.DictReader(io.StringIO("\n".join(lines[head:]))):
        try:
            start, dur = int(float(r["Start (ns)"])), int(float(r["Duration (ns)"]))
        except (KeyError, TypeError, ValueError):
            continue
        rows.append((start, start + dur, r.get("Name", "?") or "?"))
    rows.sort()
    return rows


def one_step(rows):
    """The rows from the second-to-last step_check kernel to the last one (one steady-state step)."""
    marks = [i for i, r in enumerate(rows) if "step_check" in r[2]]
    if len(marks) < 2:
        raise SystemExit("nsys_gaps: fewer than two step_check kernels in the trace: no whole step to measure")
    return rows[marks[-2]:marks[-1] + 1]


def short(name, n=48):
    name = name.split("(")[0]
    return name if len(name) <= n else name[: n - 3] + "..."


def report(rows, top=5):
    span = rows[-1][1] - rows[0][0]
    busy, end, gaps = 0, rows[0][0], []
    for prev, cur in zip([None] + rows[:-1], rows):
        s, e, _ = cur
        if s > end and prev is not None:
            gaps.append((s - end, prev[2], cur[2]))
        busy += max(0, e - max(s, end))
        end = max(end, e)
    gaps.sort(reverse=True)
    print(f"one step: {len(rows)} GPU operations over {span / 1e3:.1f} us; busy {busy / 1e3:.1f} us "
          f"({100 * busy / span:.1f}%), idle {(span - busy) / 1e3:.1f} us in {len(gaps)} gaps")
    for g, a, b in gaps[:top]:
        print(f"  gap {g / 1e3:8.1f} us after {short(a)} before {short(b)}")
    largest = gaps[0][0] / 1e3 if gaps else 0.0
    print(f"busy {100 * busy / span:.1f}% of a {span / 1e3:.0f} us step, {len(gaps)} gaps, "
          f"idle {(span - busy) / 1e3:.0f} us, largest {largest:.1f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report", nargs="?", help="a .nsys-rep file")
    ap.add_argument("--nsys", default="nsys", help="the nsys to run (default: nsys on PATH)")
    ap.add_argument("--csv", help="read this cuda_gpu_trace CSV instead of running nsys")
    a = ap.parse_args()
    if a.csv:
        with open(a.csv) as f:
            text = f.read()
    elif a.report:
        cmd = [a.nsys, "stats", "--report", "cuda_gpu_trace", "--format", "csv", "--output", "-", a.report]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stderr)
            raise SystemExit(f"nsys_gaps: {' '.join(cmd)}: exit {p.returncode}")
        text = p.stdout
    else:
        ap.error("a report, or --csv")
    report(one_step(read_trace(text)))


if __name__ == "__main__":
    main()
