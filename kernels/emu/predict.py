#!/usr/bin/env python3
"""predict.py: what the emulator's profile says about an H200 (issue 19 item 4). A MODEL, not a
measurement: nothing here runs on a GPU.

Reads the TSV that GIVT_EMU_PROFILE=FILE writes (make emu-profile; kernels/README.md, "The emulator
as a profiler") and prints, per kernel (all its launches together):
  - global loads and stores: sectors per request, against the ideal bytes / 32 per request (the
    request's bytes in whole 32-byte sectors; a request of fewer than 32 bytes, e.g. a few active
    lanes, still needs one sector, so the ideal is a floor that such requests cannot reach);
  - shared memory: wavefronts per request, and the bank conflicts (wavefronts beyond the minimum);
  - a lower bound on the H200 time, labelled as a model:
        time >= max(DRAM bytes / HBM, mma_flop / BF16_TC, float_flop / FP32, fp64_flop / FP64)
    with DRAM bytes approximated by (gld_sectors + gst_sectors) x 32: every sector a request touches
    is counted as one DRAM transfer, i.e. the model assumes NO L2 (or L1) reuse. A kernel that re-reads
    data (the attention tiles: K and V once per query tile) is then charged for every re-read, so its
    memory term can exceed the real DRAM traffic: the bound is a lower bound on the time only under
    that assumption. Not modelled: launch latency (a few us a launch), the SFU work of math_calls,
    integer and address arithmetic, latency and occupancy, the matmuls (cuBLASLt, no row).

The H200 SXM constants (NVIDIA H200 Tensor Core GPU datasheet / product page, the SXM column; the
non-tensor rates are 132 SMs x the per-SM rate of the Hopper whitepaper x the 1.98 GHz boost clock):
  HBM      4.8e12 B/s     HBM3e, 4.8 TB/s (141 GB)
  BF16_TC  989e12 FLOP/s  dense BF16 tensor core (the datasheet's 1,979 TFLOPS is with 2:4 sparsity);
                          the figure kernels/backend_cuda.cu cuda_peak_flops gives an H100/H200 SXM
  FP32     66.9e12 FLOP/s FP32 non-tensor (datasheet 67 TFLOPS; 132 x 128 FMA x 2 x 1.98 GHz)
  FP64     33.5e12 FLOP/s FP64 non-tensor (datasheet 34 TFLOPS; 132 x 64 FMA x 2 x 1.98 GHz)

Usage:
  predict.py PROFILE.tsv                      one table (text)
  predict.py BEFORE.tsv AFTER.tsv             before and after, joined by kernel name (a template
                                              argument list is compared by its first argument, so
                                              f<bf16, unsigned> before meets f<bf16> after)
      [--sass BEFORE.txt --sass AFTER.txt]    add registers and B/ldg from sass_check.sh's table
      [--markdown]                            a markdown table (kernels/README.md)
  predict.py --ncu NCU.csv [PROFILE.tsv]      Nsight Compute's measured counters (ncu --csv, the
                                              metrics of --ncu-metrics, --print-kernel-base demangled)
                                              beside the emulator's: scripts/gpu_check.sh, step ncu;
                                              exit 1 when no kernel is in both
  predict.py --ncu-metrics                    the metric list for ncu --metrics
Python 3 standard library only.
"""
import argparse
import csv
import os
import re
import sys
from collections import OrderedDict

HBM = 4.8e12
BF16_TC = 989e12
FP32 = 66.9e12
FP64 = 33.5e12

# Nsight Compute metrics (Kernel Profiling Guide, "Metrics Reference" / memory tables): global
# requests and sectors at the L1TEX T stage, shared wavefronts and bank conflicts in the data stage,
# and executed shared load/store instructions (the shared "requests": one per warp instruction)
NCU_METRICS = [
    "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum",
    "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
    "l1tex__t_requests_pipe_lsu_mem_global_op_st.sum",
    "l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum",
    "smsp__sass_inst_executed_op_shared_ld.sum",
    "smsp__sass_inst_executed_op_shared_st.sum",
]

try:  # the emulator's kernel names are sass_check.py's short names: one definition
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
    from sass_check import shorten  # noqa: E402
except Exception:  # pragma: no cover - a copy of the script without its repository
    def shorten(d):
        d = re.sub(r"^(void|__global__)\s+", "", d.strip())
        depth = 0
        for i, ch in enumerate(d):
            depth += (ch == "<") - (ch == ">")
            if ch == "(" and depth == 0:
                d = d[:i]
                break
        return d.replace("unsigned int", "unsigned")


def num(s):
    s = (s or "").strip().replace(",", "")
    if s in ("", "NA", "n/a"):
        return None
    try:
        return float(s)
    except ValueError:
        return None


def read_profile(path):
    """The emulator's TSV: {kernel: {column: float or None}}, in file order."""
    out = OrderedDict()
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or not rows[0] or rows[0][0] != "kernel":
        sys.exit(f"predict.py: {path}: not a GIVT_EMU_PROFILE table (no 'kernel' header)")
    head = rows[0]
    for r in rows[1:]:
        if r:
            out[r[0]] = {h: num(v) for h, v in zip(head[1:], r[1:])}
    return out


def v(row, col):
    x = row.get(col)
    return x if x is not None else 0.0


def ratio(a, b):
    return a / b if b else None


def model(row):
    """The per-kernel figures: sectors/request (and ideal), wavefronts/request, the time bound."""
    m = {}
    for k in ("gld", "gst"):
        req, by, sec = v(row, k + "_requests"), v(row, k + "_bytes"), v(row, k + "_sectors")
        m[k + "_spr"] = ratio(sec, req)
        m[k + "_ideal"] = ratio(by / 32.0, req)
    m["wf_pr"] = ratio(v(row, "shared_wavefronts"), v(row, "shared_requests"))
    m["conflicts"] = v(row, "shared_bank_conflicts")
    m["dram_bytes"] = (v(row, "gld_sectors") + v(row, "gst_sectors")) * 32.0
    terms = OrderedDict([
        ("dram", m["dram_bytes"] / HBM),
        ("mma", v(row, "mma_flop") / BF16_TC),
        ("fp32", v(row, "float_flop") / FP32),
        ("fp64", v(row, "fp64_flop") / FP64),
    ])
    m["limiter"] = max(terms, key=terms.get)
    m["t"] = terms[m["limiter"]]
    m["fp_na"] = row.get("float_flop") is None
    return m


def f2(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def us(t):
    return f"{t * 1e6:.2f}"


def table(rows, head, right_from=1):
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(str(c).ljust(w[i]) if i < right_from else str(c).rjust(w[i]) for i, c in enumerate(r))
    return "\n".join([fmt(head)] + [fmt(r) for r in rows])


def markdown(rows, head):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


NOTE = ("H200 bound: a MODEL (lower bound), max(DRAM bytes / 4.8 TB/s, mma_flop / 989 TFLOP/s, "
        "float_flop / 66.9 TFLOP/s, fp64_flop / 33.5 TFLOP/s), DRAM bytes = (gld + gst sectors) x 32 "
        "(no L2 reuse assumed); launch latency, SFU and integer work not modelled. Nothing ran on a GPU.")


def one(path):
    prof = read_profile(path)
    rows, total = [], 0.0
    for name, row in prof.items():
        m = model(row)
        total += m["t"]
        rows.append([name, int(v(row, "launches")),
                     f2(m["gld_spr"]), f2(m["gld_ideal"]), f2(m["gst_spr"]), f2(m["gst_ideal"]),
                     f2(m["wf_pr"]), int(m["conflicts"]),
                     f"{m['dram_bytes'] / 1e6:.3f}", f"{v(row, 'mma_flop') / 1e9:.3f}",
                     f"{v(row, 'float_flop') / 1e9:.3f}" + ("*" if m["fp_na"] else ""),
                     us(m["t"]), m["limiter"]])
    head = ["kernel", "launches", "ld sec/req", "ideal", "st sec/req", "ideal", "shm wf/req", "conflicts",
            "DRAM MB", "mma GFLOP", "fp32 GFLOP", "H200 >= us", "bound by"]
    print(f"== {path}: the emulator's counters and an H200 lower bound (a model)")
    print(table(rows, head))
    print(f"sum of the kernels' bounds: {us(total)} us ({len(rows)} kernels)")
    if any(r[10].endswith("*") for r in rows):
        print("*: float_flop NA (no objdump when profiled): counted as 0")
    print(NOTE)


def key(name):
    """Join key: the name with its template argument list cut to the first argument."""
    i = name.find("<")
    if i < 0:
        return name
    depth, j = 0, i
    for j in range(i, len(name)):
        c = name[j]
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
            if depth == 0:
                break
        elif c == "," and depth == 1:
            return name[:j] + ">"
    return name


def read_sass(path):
    """sass_check.sh's table (its text output, or the copy in kernels/README.md): {kernel: (reg, B/ldg)}."""
    out = {}
    with open(path) as f:
        lines = f.read().splitlines()
    start = None
    for i, ln in enumerate(lines):
        if ln.startswith("kernel") and " file " in ln and "reg" in ln:
            start, col = i, ln.index(" file ")
            break
    if start is None:
        sys.exit(f"predict.py: {path}: no sass_check table (a 'kernel  file  reg ...' header)")
    for ln in lines[start + 1:]:
        if not ln.strip() or ln.startswith("```") or ln.startswith("=="):
            break
        name = ln[:col].strip()
        t = ln[col:].split()
        if len(t) >= 8:  # file reg stack local smem dyn LDG B/ldg ...
            out[name] = (t[1], t[7])
    return out


def compare(before, after, sass, md):
    pb, pa = read_profile(before), read_profile(after)
    sb, sa = (read_sass(sass[0]), read_sass(sass[1])) if sass else ({}, {})
    kb = OrderedDict((key(n), n) for n in pb)
    ka = OrderedDict((key(n), n) for n in pa)
    keys = sorted(set(kb) | set(ka))
    arrow = lambda a, b: f"{a} → {b}" if md else f"{a} -> {b}"
    rows, tb, ta = [], 0.0, 0.0
    for k in keys:
        nb, na = kb.get(k), ka.get(k)
        mb = model(pb[nb]) if nb else None
        ma = model(pa[na]) if na else None
        tb += mb["t"] if mb else 0.0
        ta += ma["t"] if ma else 0.0

        def pair(field, fmt=f2):
            return arrow(fmt(mb[field]) if mb else "-", fmt(ma[field]) if ma else "-")

        def spr(m, k):  # sectors per request / ideal
            return f"{f2(m[k + '_spr'])}/{f2(m[k + '_ideal'])}" if m else "-"

        def reqs(p, n):
            return str(int(v(p[n], "gld_requests") + v(p[n], "gst_requests"))) if n else "-"

        name = k
        if nb and not na:
            name = nb + " (before only)"
        elif na and not nb:
            name = na + " (after only)"
        r = [f"`{name}`" if md else name,
             arrow(spr(mb, "gld"), spr(ma, "gld")), arrow(spr(mb, "gst"), spr(ma, "gst")),
             arrow(reqs(pb, nb), reqs(pa, na)),
             pair("wf_pr"), pair("conflicts", lambda x: str(int(x))),
             arrow(us(mb["t"]) if mb else "-", us(ma["t"]) if ma else "-") + " " + (ma or mb)["limiter"]]
        if sass:
            gb, ga = sb.get(nb, ("-", "-")) if nb else ("-", "-"), sa.get(na, ("-", "-")) if na else ("-", "-")
            r += [arrow(gb[0], ga[0]), arrow(gb[1], ga[1])]
        rows.append(r)
    head = ["kernel", "ld sectors/req / ideal", "st sectors/req / ideal", "ld+st requests", "shm wf/req",
            "bank conflicts", "H200 >= us (model), bound by"]
    if sass:
        head += ["reg", "B/ldg"]
    if md:
        print(markdown(rows, head))
        print()
        print(f"Sum of the kernels' bounds: {us(tb)} us before, {us(ta)} us after.")
    else:
        print(f"== before: {before}\n== after:  {after}")
        print(table(rows, head))
        print(f"sum of the kernels' bounds: {us(tb)} us before, {us(ta)} us after")
        print(NOTE)


# ---- Nsight Compute beside the emulator ---------------------------------------------------------
def read_ncu(path):
    """ncu --csv output (the details page: one row per kernel launch and metric, or the raw page: one
    row per launch, a column per metric); lines that are not CSV rows (==PROF== ...) are skipped.
    Returns ({short kernel name: {metric: sum over launches, '#launches': n}}, [names seen])."""
    with open(path, newline="", errors="replace") as f:
        lines = [ln for ln in f if ln.startswith('"')]
    rows = list(csv.reader(lines))
    out = OrderedDict()
    if not rows:
        return out
    head = rows[0]
    idx = {h: i for i, h in enumerate(head)}
    if "Kernel Name" not in idx:
        sys.exit(f"predict.py: {path}: no 'Kernel Name' column: not ncu --csv output")
    kn, iid = idx["Kernel Name"], idx.get("ID")
    seen = {}
    long_form = "Metric Name" in idx and "Metric Value" in idx
    for r in rows[1:]:
        if len(r) != len(head) or r == head:
            continue
        if iid is not None and not r[iid].strip().isdigit():
            continue  # the raw page's units row
        name = shorten(r[kn])
        d = out.setdefault(name, {"#launches": 0})
        launch = r[iid] if iid is not None else len(seen)
        if (name, launch) not in seen:
            seen[(name, launch)] = True
            d["#launches"] += 1
        if long_form:
            x = num(r[idx["Metric Value"]])
            if x is not None:
                m = r[idx["Metric Name"]]
                d[m] = d.get(m, 0.0) + x
        else:
            for m in NCU_METRICS:
                if m in idx:
                    x = num(r[idx[m]])
                    if x is not None:
                        d[m] = d.get(m, 0.0) + x
    return out


def ncu_compare(ncu_path, prof_path):
    """The measured counters per kernel beside the emulator's (prof_path None: measured only)."""
    meas = read_ncu(ncu_path)
    prof = read_profile(prof_path) if prof_path else {}
    g = lambda d, m: d.get(m, 0.0)
    rows, matched, extra, worst = [], 0, [], None
    for name, d in meas.items():
        row = prof.get(name)
        if row is None and prof:
            extra.append(name)  # a library kernel (cuBLASLt): no emulator row
            continue
        matched += row is not None
        m = model(row) if row is not None else None
        ld = ratio(g(d, NCU_METRICS[1]), g(d, NCU_METRICS[0]))
        st = ratio(g(d, NCU_METRICS[3]), g(d, NCU_METRICS[2]))
        wf = g(d, NCU_METRICS[4]) + g(d, NCU_METRICS[5])
        bc = g(d, NCU_METRICS[6]) + g(d, NCU_METRICS[7])
        sreq = g(d, NCU_METRICS[8]) + g(d, NCU_METRICS[9])
        if m:
            for a, b in ((ld, m["gld_spr"]), (st, m["gst_spr"])):
                if a and b:
                    worst = max(worst or 1.0, a / b, b / a)
        e = lambda k, fmt=f2: fmt(m[k]) if m else "-"
        rows.append([name, f"{d['#launches']}/{int(v(row, 'launches')) if m else '-'}",
                     f"{f2(ld)} / {e('gld_spr')}", f"{f2(st)} / {e('gst_spr')}",
                     f"{f2(ratio(wf, sreq))} / {e('wf_pr')}", f"{int(bc)} / {e('conflicts', lambda x: str(int(x)))}"])
    missing = [n for n in prof if n not in meas]
    head = ["kernel", "launches", "ld sec/req", "st sec/req", "shm wf/req", "bank conflicts"]
    print(f"== measured (ncu: {ncu_path}) / emulated ({prof_path or 'none'}), per kernel, all its launches")
    print(table(rows, head))
    if prof:
        print(f"{matched} kernels in both; largest measured/emulated ratio of sectors per request: "
              + (f"{worst:.2f}" if worst else "-"))
    else:
        print(f"{len(rows)} kernels measured; no emulated profile to compare with")
    if extra:
        print(f"only measured ({len(extra)}: cuBLASLt and other library kernels have no emulator row): "
              + ", ".join(extra[:6]) + (" ..." if len(extra) > 6 else ""))
    if missing:
        print(f"only emulated ({len(missing)}): " + ", ".join(missing))
    print("shm wf/req, measured: shared wavefronts / executed shared load and store instructions; emulated:"
          " wavefronts / requests. Bank conflicts: ncu's counter, wavefronts beyond the minimum, as the"
          " emulator's (Nsight Compute's can also count arbitration the emulator's bank model does not see).")
    return 0 if rows and (matched or not prof) else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("tsv", nargs="*", help="GIVT_EMU_PROFILE tables: one, or BEFORE AFTER")
    ap.add_argument("--sass", action="append", help="sass_check tables, BEFORE then AFTER (with two TSVs)")
    ap.add_argument("--markdown", action="store_true", help="markdown output (two TSVs)")
    ap.add_argument("--ncu", metavar="CSV", help="ncu --csv output to compare with one TSV")
    ap.add_argument("--ncu-metrics", action="store_true", help="print the ncu --metrics list and exit")
    a = ap.parse_args()
    if a.ncu_metrics:
        print(",".join(NCU_METRICS))
        return 0
    if a.ncu:
        if len(a.tsv) > 1:
            ap.error("--ncu takes one TSV (or none: the measured counters alone)")
        return ncu_compare(a.ncu, a.tsv[0] if a.tsv else None)
    if len(a.tsv) == 1:
        one(a.tsv[0])
    elif len(a.tsv) == 2:
        if a.sass and len(a.sass) != 2:
            ap.error("--sass twice: BEFORE then AFTER")
        compare(a.tsv[0], a.tsv[1], a.sass, a.markdown)
    else:
        ap.error("one TSV, or two (BEFORE AFTER)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
