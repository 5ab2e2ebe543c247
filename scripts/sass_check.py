#!/usr/bin/env python3
"""sass_check.py: the SASS rules of the CUDA kernels (issue 19 item 1), run by scripts/sass_check.sh.

Reads what nvcc made of kernels/*.cu (every $BUILD/kernels/*.o: cuobjdump -res-usage -sass, and -ptx
for dynamic shared memory), prints one row per kernel (a template instantiation is a kernel of its
own) and checks the rules of RULES below. Fails (exit 1) on a violation that RULES does not list,
and on a listed "known" violation that no longer occurs (the table must follow the code: fix a kernel,
delete its line). Static analysis only: nothing here runs on a GPU.

    python3 scripts/sass_check.py --cuobjdump PATH [--demangler c++filt] [BUILD]
"""
import argparse
import fnmatch
import glob
import os
import re
import signal
import subprocess
import sys
from collections import Counter, OrderedDict


# ---- the rules ---------------------------------------------------------------------------------
# ONE table: each rule says what it checks, where (kernel name patterns, fnmatch on the short names of
# the table, e.g. "swiglu_fwd_kernel<*>"), why, and which kernels are exempt and why. An exemption is
#   ("n/a", reason):   the rule does not apply to these kernels (by design; stays);
#   ("known", reason): a violation found in today's SASS, to be fixed (issue 19 item 3); the check
#                      fails when a kernel it names no longer breaks the rule (or no longer exists),
#                      so the line must go when the kernel is fixed: a ratchet that cannot go stale.
# A violation in a kernel that no line names fails the check.


def _no_generic(k):
    n = k.c["LD"] + k.c["ST"] + k.c["ATOM"]
    return n == 0, f"{k.c['LD']} generic LD, {k.c['ST']} generic ST" + (f", {k.c['ATOM']} ATOM" if k.c["ATOM"] else "")


def _no_local(k):
    ok = k.stack == 0 and k.local == 0 and k.c["LDL"] == 0 and k.c["STL"] == 0
    return ok, f"stack {k.stack} B, local {k.local} B, {k.c['LDL']} LDL, {k.c['STL']} STL"


def _wide_loads(k):
    # LDGSTS (cp.async.cg: global to shared, 16 bytes a thread) counts as a 16-byte global load
    n, cp = sum(k.ldg.values()), k.c["LDGSTS"]
    if n + cp == 0:
        return True, "no global loads"
    mean = (k.ldg_bytes_mean() * n + 16.0 * cp) / (n + cp)
    return mean >= 8.0, (f"{mean:.1f} B per global load instruction (LDG by width {k.width_str(k.ldg)}"
                         + (f", {cp} LDGSTS.128" if cp else "") + ")")


def _ldsm_hmma(k):
    return k.c["LDSM"] > 0 and k.c["HMMA"] > 0, f"{k.c['LDSM']} LDSM, {k.c['HMMA']} HMMA"


RULES = [
    dict(
        name="no-generic-ldst",
        check=_no_generic,
        applies=["*"],
        why="A generic LD/ST (not LDG/LDS/LDL) means the compiler lost the address space: the access "
            "goes through the generic window (extra latency, no LDS/LDSM forms), and because a generic "
            "store may alias any global load, loads cannot be hoisted past it (one load in flight).",
        exempt=[]),
    dict(
        name="no-local-memory",
        check=_no_local,
        applies=["*"],
        why="Local memory (a stack frame, register spills, LDL/STL) lives in DRAM behind L1: each "
            "spill is a memory round trip in the kernel's inner loop. Size the tiles and unrolling so "
            "that everything fits in registers.",
        exempt=[
            (["step_check_kernel"], "n/a",
             "one thread, one launch a step, no loop: its 40-byte stack frame is CUDA's double cos() "
             "(the cosine schedule), the array of the Payne-Hanek reduction of huge arguments, which "
             "the schedule's argument (in [0, pi]) never takes (checked: a kernel of cos(x) alone has "
             "the same frame; pow has none)"),
        ]),
    dict(
        name="wide-global-loads",
        check=_wide_loads,
        applies=["*"],
        why="A kernel that streams memory (and attention's tile loads) needs at least 8 bytes per thread "
            "per global load instruction "
            "(LDG.E.64 / LDG.E.128 / LDGSTS; the mean over the kernel's LDG and LDGSTS instructions, so a short scalar "
            "tail is allowed beside a vectorized main loop) to keep enough bytes in flight to "
            "saturate HBM: 2-byte loads need 4-8x the instructions and load slots for the same bytes.",
        exempt=[
            # not bandwidth-bound, or data that do not allow wide loads
            (["attn_fwd_kernel<float>", "attn_bwd_dkdv_kernel<float>", "attn_bwd_dq_kernel<float>"], "n/a",
             "fp32 attention (mixed_precision = no): the accuracy mode that matches the CPU to 1e-5, "
             "not the fast path; compute-bound FMA tiles (each element staged in shared memory feeds "
             "the dot products of 32 rows)"),
            (["mixture_kernel<*>"], "n/a",
             "one thread per row of W = K + 2KD elements (W odd for odd K: rows not 8-byte aligned), "
             "double-precision exp/log per element: compute-bound (its grid: one row a thread, N/64 "
             "blocks of 64, since issue 19 item 3)"),
            (["attn_mma_bwd_d_kernel<false>"], "n/a",
             "the fallback of D = rowsum(dO * O) for hd % 8 != 0 or dO / O rows not 16-byte aligned; "
             "the model's shapes take attn_mma_bwd_d_kernel<true> (16-byte loads)"),
            (["red_final_kernel"], "n/a",
             "one block summing at most 1024 double partials (8-byte loads already)"),
            (["class_embed_fwd_kernel<*>", "class_embed_bwd_kernel<*>", "shift_bos_bwd_kernel<*>"], "n/a",
             "position 0 only: B x C (B x D) elements a step, 1/T of one pass over the activations; "
             "not on the bandwidth path"),
        ]),
    dict(
        name="attention-ldsm-hmma",
        check=_ldsm_hmma,
        applies=["attn_*"],
        why="Tensor-core attention must feed the tensor cores from shared memory with LDSM (ldmatrix: "
            "one instruction loads up to four 8x8 16-bit matrices for the whole warp, straight into "
            "the fragment registers, with .trans for the transposed operand; conflict-free with padded "
            "rows) and run its products as HMMA; 32-bit loads per fragment register cost up to 4x the "
            "shared-memory instructions.",
        exempt=[
            (["attn_mma_bwd_d_kernel<*>", "attn_mma_bwd_dq_kernel<*>"], "n/a",
             "the bf16 backward's bandwidth-bound helpers, no matrix product: D = rowsum(dO * O) per "
             "row, and the fixed-order sum of the key-tile groups' fp32 dQ partials (with the RoPE "
             "transpose); they are held to wide-global-loads instead"),
            (["attn_fwd_kernel<float>", "attn_bwd_dkdv_kernel<float>", "attn_bwd_dq_kernel<float>"], "n/a",
             "fp32 attention (mixed_precision = no): FMA kernels by design, the mode that matches the "
             "CPU to 1e-5; tensor cores would round the operands to bf16/tf32"),
            (["attn_rope_kernel<*>"], "n/a", "RoPE in place on q and k: elementwise, no matrix product"),
        ]),
]

# ---- reading the objects ---------------------------------------------------------------------
# SASS instruction classes counted per kernel (opcode = the mnemonic before the first '.')
COUNTED = ("LDG", "STG", "LDS", "STS", "LDSM", "LD", "ST", "ATOM", "ATOMG", "RED", "ATOMS", "LDGSTS",
           "LDGDEPBAR", "HMMA", "BAR", "SHFL", "LDL", "STL", "MOVM")
WIDTHS = (1, 2, 4, 8, 16)  # bytes per thread of one load/store instruction
SM90_RESERVED_SMEM = 1024  # sm_90: 1 KiB of shared memory per block reserved by the system, which
# ptxas adds to the SHARED figure of every kernel of a module that uses shared memory


def width_of(opcode):
    mods = opcode.split(".")[1:]
    for m in mods:
        if m in ("U8", "S8"):
            return 1
        if m in ("U16", "S16"):
            return 2
        if m == "64":
            return 8
        if m == "128":
            return 16
    return 4


class Kernel:
    def __init__(self, mangled, obj, arch):
        self.mangled, self.obj, self.arch = mangled, obj, arch
        self.name = mangled
        self.reg = self.stack = self.local = self.shared = 0
        self.dyn = None  # True/False from the PTX, None when the object has no PTX
        self.c = Counter()
        self.ldg = Counter()
        self.stg = Counter()
        self.ninstr = 0

    def ldg_bytes_mean(self):
        n = sum(self.ldg.values())
        return sum(w * c for w, c in self.ldg.items()) / n if n else 0.0

    @staticmethod
    def width_str(cnt):
        return "/".join(str(cnt.get(w, 0)) for w in WIDTHS)

    def static_smem(self):
        return self.shared - SM90_RESERVED_SMEM if self.shared >= SM90_RESERVED_SMEM else self.shared


def run(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"sass_check: cannot run {cmd[0]}: {e}")
    if p.returncode != 0 and "does not contain device code" in p.stderr:
        return ""
    if p.returncode != 0:
        sys.exit(f"sass_check: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[:2000]}")
    return p.stdout


INSTR = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")


def read_object(cuobjdump, path):
    kernels = OrderedDict()
    arch = None
    out = run([cuobjdump, "-res-usage", "-sass", path])
    cur = None
    for line in out.splitlines():
        m = re.match(r"^arch = (\S+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"^\s*Function (\S+):$", line)  # -res-usage
        if m:
            cur = kernels.setdefault((m.group(1), arch), Kernel(m.group(1), path, arch))
            continue
        m = re.match(r"^\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and cur is not None:
            cur.reg, cur.stack, cur.shared, cur.local = map(int, m.groups())
            continue
        m = re.match(r"^\s*Function : (\S+)$", line)  # -sass
        if m:
            cur = kernels.setdefault((m.group(1), arch), Kernel(m.group(1), path, arch))
            continue
        m = INSTR.match(line)
        if m and cur is not None:
            op = m.group(1)
            base = op.split(".")[0]
            cur.ninstr += 1
            if base in COUNTED:
                cur.c[base] += 1
            if base == "I2F" and ".RP" in op:  # the reciprocal that starts an integer division
                cur.c["IDIV"] += 1
            if base == "LDG":
                cur.ldg[width_of(op)] += 1
            elif base == "STG":
                cur.stg[width_of(op)] += 1
    # dynamic shared memory: an entry of the PTX that refers to an .extern .shared array
    ptx = run([cuobjdump, "-ptx", path])
    if ".entry" in ptx:
        externs = re.findall(r"^\s*\.extern \.shared [^;]*?\s([A-Za-z_$][\w$]*)\[\]", ptx, re.M)
        entries = re.split(r"^\s*(?:\.visible\s+|\.weak\s+)?\.entry\s+", ptx, flags=re.M)[1:]
        body = {}
        for e in entries:
            name = re.match(r"([\w$]+)", e).group(1)
            body[name] = any(x in e for x in externs)
        for k in kernels.values():
            k.dyn = body.get(k.mangled)
    return list(kernels.values())


def short_names(kernels, demangler):
    names = [k.mangled for k in kernels]
    if not names:
        return
    try:
        p = subprocess.run([demangler], input="\n".join(names) + "\n", capture_output=True, text=True)
        dem = p.stdout.splitlines() if p.returncode == 0 else []
    except OSError:
        dem = []
    if len(dem) != len(names):
        print(f"sass_check: warning: {demangler} failed; showing mangled names", file=sys.stderr)
        dem = names
    for k, d in zip(kernels, dem):
        k.full = d
        k.name = shorten(d)
    seen = Counter(k.name for k in kernels)
    for k in kernels:  # overloads: keep the parameters to tell them apart
        if seen[k.name] > 1:
            k.name = k.full


def shorten(d):
    """'void (anonymous namespace)::f<float, unsigned int>(float*, ...)' -> 'f<float, unsigned>'."""
    # the name ends at the '(' of the parameter list: the first '(' at template depth 0 that does not
    # open "(anonymous namespace)"
    depth, i, end = 0, 0, len(d)
    while i < len(d):
        ch = d[i]
        if d.startswith("(anonymous namespace)", i):
            i += len("(anonymous namespace)")
            continue
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            end = i
            break
        i += 1
    s = d[:end]
    # a template's return type comes first ("void f<...>"): drop everything before the name
    depth, start = 0, 0
    for i, ch in enumerate(s):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == " " and depth == 0:
            start = i + 1
    s = s[start:]
    # namespaces at depth 0
    depth, cut = 0, 0
    for i, ch in enumerate(s):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0 and s.startswith("::", i):
            cut = i + 2
    s = s[cut:]
    s = s.replace("(anonymous namespace)::", "").replace("unsigned int", "unsigned").replace("unsigned long", "size_t")
    return s


# ---- the table and the checks ----------------------------------------------------------------
COLS = [
    ("kernel", lambda k: k.name),
    ("file", lambda k: os.path.basename(k.obj)[:-2] + ".cu"),
    ("reg", lambda k: k.reg),
    ("stack", lambda k: k.stack),
    ("local", lambda k: k.local),
    ("smem", lambda k: k.static_smem()),
    ("dyn", lambda k: {True: "dyn", False: "-", None: "?"}[k.dyn]),
    ("LDG 1/2/4/8/16", lambda k: k.width_str(k.ldg)),
    ("B/ldg", lambda k: f"{k.ldg_bytes_mean():.1f}" if sum(k.ldg.values()) else "-"),
    ("STG 1/2/4/8/16", lambda k: k.width_str(k.stg)),
    ("LDS", lambda k: k.c["LDS"]),
    ("STS", lambda k: k.c["STS"]),
    ("LDSM", lambda k: k.c["LDSM"]),
    ("LD", lambda k: k.c["LD"]),
    ("ST", lambda k: k.c["ST"]),
    ("LDGSTS", lambda k: k.c["LDGSTS"]),
    ("HMMA", lambda k: k.c["HMMA"]),
    ("BAR", lambda k: k.c["BAR"]),
    ("SHFL", lambda k: k.c["SHFL"]),
    ("LDL/STL", lambda k: f"{k.c['LDL']}/{k.c['STL']}"),
    ("idiv", lambda k: k.c["IDIV"]),
]


def print_table(kernels):
    rows = [[str(f(k)) for _, f in COLS] for k in kernels]
    heads = [h for h, _ in COLS]
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    fmt = lambda r: "  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r)).rstrip()
    print(fmt(heads))
    for r in rows:
        print(fmt(r))


def matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def check(kernels):
    """Checks every rule on the kernels it applies to. Returns (failures, report, checks, in_force):
    report holds, per rule, each exemption line with the kernels it covers today."""
    failures, report, checks, in_force = [], [], 0, 0
    for rule in RULES:
        scope = [k for k in kernels if matches(k.name, rule["applies"])]
        covered = [[] for _ in rule["exempt"]]
        for k in scope:
            ex = next((i for i, (pats, _, _) in enumerate(rule["exempt"]) if matches(k.name, pats)), None)
            kind = rule["exempt"][ex][1] if ex is not None else None
            if kind == "n/a":
                covered[ex].append((k.name, ""))
                continue
            checks += 1
            ok, detail = rule["check"](k)
            if kind == "known":
                if ok:
                    failures.append(f"{rule['name']}: {k.name} passes now ({detail}): take it out of the rule's "
                                    "known violations in scripts/sass_check.py (and its line in kernels/README.md)")
                else:
                    covered[ex].append((k.name, detail))
                    in_force += 1
            elif not ok:
                failures.append(f"{rule['name']}: {k.name}: {detail}. The rule: {rule['why']}")
        for pats, _, _ in rule["exempt"]:
            for p in pats:
                if not any(fnmatch.fnmatchcase(k.name, p) for k in scope):
                    failures.append(f"{rule['name']}: the exemption for '{p}' names no kernel of this build: "
                                    "delete or rename it in scripts/sass_check.py")
        report.append((rule, covered))
    return failures, report, checks, in_force


def print_report(report):
    for rule, covered in report:
        print(f"rule {rule['name']} (applies to {', '.join(rule['applies'])}): {rule['why']}")
        for (pats, kind, why), ks in zip(rule["exempt"], covered):
            print(f"  {kind:5s}  {', '.join(pats)}: {why}")
            for name, detail in ks:
                if detail:
                    print(f"           {name}: {detail}")
        if not rule["exempt"]:
            print("  (no exemptions)")


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under | head
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", nargs="?", default="build", help="the build folder (default build)")
    ap.add_argument("--cuobjdump", required=True, help="cuobjdump, with nvdisasm beside it or on PATH")
    ap.add_argument("--demangler", default="c++filt", help="cu++filt or c++filt")
    a = ap.parse_args()
    objs = sorted(glob.glob(os.path.join(a.build, "kernels", "*.o")))
    if not objs:
        sys.exit(f"sass_check: no {a.build}/kernels/*.o: build the CUDA kernels first (make -j all, with nvcc)")
    kernels = []
    for o in objs:
        kernels += read_object(a.cuobjdump, o)
    if not kernels:
        sys.exit(f"sass_check: no kernel in {a.build}/kernels/*.o (no SASS: was it built for a real sm_ arch?)")
    short_names(kernels, a.demangler)
    archs = sorted({k.arch for k in kernels})
    if len(archs) > 1:
        for k in kernels:
            k.name += f" [{k.arch}]"
    kernels.sort(key=lambda k: (os.path.basename(k.obj), k.name))
    print(f"== SASS of {len(kernels)} kernels in {len(objs)} objects ({a.build}/kernels/*.o, {', '.join(archs)})")
    print("   reg: registers a thread; stack, local: bytes a thread (spills); smem: static shared bytes a block,")
    print("   without the 1 KiB sm_90 reserves; dyn: dynamic shared memory, sized at launch; LDG/STG 1/2/4/8/16:")
    print("   global loads/stores by bytes a thread; B/ldg: their mean; LD/ST: generic; counts are instructions")
    print("   in the code (static), not executed ones; idiv: integer divisions by a runtime value (I2F.RP")
    print("   sequences; a 64-bit one counts twice: its 32-bit fast path and the called 64-bit routine)")
    print_table(kernels)
    failures, report, checks, in_force = check(kernels)
    print()
    print_report(report)
    if failures:
        print()
        for f in failures:
            print(f"FAIL {f}")
    n_entries = sum(len(p) for r in RULES for p, _, _ in r["exempt"])
    print()
    print(f"sass_check: {len(kernels)} kernels, {len(RULES)} rules ({checks} kernel checks), "
          f"{in_force} known violations in force ({n_entries} exemption patterns), "
          f"{len(failures)} failures: {'FAILED' if failures else 'ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
