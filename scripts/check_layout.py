#!/usr/bin/env python3
"""check_layout: the architecture's rules, checked on the tree and on the built library.

  python3 scripts/check_layout.py [BUILD]      (BUILD: the build folder, default build)

1. Who may include whom: each folder's quoted #includes may only reach the folders its row of
   FOLDER_DEPS names (docs/architecture.md draws the same layers).
2. No include circle between modules (a module is x.c + x.h; a private x_internal.h belongs to x).
3. Every global symbol of BUILD/libgivt.a (and the C symbols of the CUDA objects, when built)
   starts with a prefix of its module (SYMBOL_PREFIXES), so that the library cannot collide with a
   user's own util.c or rng_seed.
Prints what breaks a rule, and exits 1 if anything does; 0 and one summary line otherwise.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# folder -> the folders its files may include (besides itself), with the reason
FOLDER_DEPS = {
    "csrc/core": ([], "errors, memory, files, numbers: the floor everything stands on"),
    "csrc/io": (["csrc/core"], "file formats know nothing of models or backends"),
    "csrc/backend": (["csrc/core"], "the op contract and registry: no model, no file format"),
    "csrc/cpu": (["csrc/core", "csrc/backend"], "a backend implements the contract, not the model"),
    "csrc/model": (["csrc/core", "csrc/io", "csrc/backend"], "the model is written against the contract"),
    "csrc/sample": (["csrc/core", "csrc/backend", "csrc/model"], "sampling drives the model"),
    "csrc/train": (["csrc/core", "csrc/io", "csrc/backend", "csrc/model"], "training drives the model"),
    "csrc/programs": (["csrc/core", "csrc/io", "csrc/backend", "csrc/cpu", "csrc/model", "csrc/sample",
                       "csrc/train"], "thin programs on top of the library"),
    "kernels": (["csrc/core", "csrc/backend", "kernels/emu"], "the CUDA backend implements the contract"),
    "kernels/emu": (["csrc/core", "kernels"], "the CPU emulation of CUDA (launch.cuh is its entry)"),
}

# object file of libgivt.a (or of the CUDA build) -> the prefixes its global symbols may carry
SYMBOL_PREFIXES = {
    "util.o": ["givt_", "util_"],
    "fs.o": ["fs_"],
    "half.o": ["half_"],
    "rng.o": ["rng_"],
    "stop_signal.o": ["stop_"],
    "ini.o": ["ini_"],
    "json.o": ["json_"],
    "npy.o": ["npy_"],
    "safetensors.o": ["st_"],
    "digits.o": ["digits_"],
    "latents.o": ["latents_"],
    "backend.o": ["backend_"],
    "ops_cpu.o": ["backend_cpu_"],
    "blas.o": ["blas_"],
    "model.o": ["model_", "givt_config_", "givt_model_", "param_table_"],
    "hf.o": ["hf_"],
    "sample.o": ["sample_"],
    "data.o": ["data_"],
    "loader.o": ["loader_"],
    "dist.o": ["dist_"],
    "dist_mpi.o": ["dist_mpi_", "dist_open_mpi"],
    "optim.o": ["adamw_", "grad_", "ema_", "lr_"],   # the optimizer module: AdamW, gradients, EMA, lr
    "train_config.o": ["train_config_", "train_", "data_config_", "lr_schedule_"],
    "train_state.o": ["train_state_"],
    "trainer.o": ["trainer_"],
    "checkpoint.o": ["ckpt_", "trainer_"],
    "run_guard.o": ["guard_"],
    "metrics.o": ["metrics_"],
    "evaluate.o": ["evaluate_"],
    "train_log.o": ["train_log_"],
    "tb_events.o": ["tb_"],
    # the CUDA backend (kernels/*.cu): its C entry points; C++ names live in anonymous namespaces
    "kernels/*.o": ["cuda_", "backend_cuda_", "dist_open_nccl", "dist_nccl_",
                    "nvtx", "InitializeInjectionNvtx"],  # defined by NVIDIA's NVTX v3 header itself
}

INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources():
    for top in ("csrc", "kernels"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in sorted(files):
                if f.endswith((".c", ".h", ".cu", ".cuh", ".cpp")):
                    yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def header_index(paths):
    index = {}
    for p in paths:
        if p.endswith((".h", ".cuh")):
            index.setdefault(os.path.basename(p), []).append(p)
            index.setdefault(os.path.relpath(p, os.path.dirname(os.path.dirname(p))), []).append(p)
    return index


def resolve(src, name, index):
    local = os.path.normpath(os.path.join(os.path.dirname(src), name))
    if os.path.exists(os.path.join(ROOT, local)):
        return local
    hits = index.get(name) or index.get(os.path.basename(name)) or []
    return hits[0] if len(hits) == 1 else None


def module_of(path):
    base = os.path.splitext(os.path.basename(path))[0]
    return os.path.dirname(path) + "/" + re.sub(r"_internal$", "", base)


def check_includes(paths):
    index = header_index(paths)
    errors, edges = [], {}
    for src in paths:
        folder = os.path.dirname(src)
        allowed = set(FOLDER_DEPS.get(folder, ([], ""))[0]) | {folder}
        if folder not in FOLDER_DEPS:
            errors.append(f"{src}: folder {folder} has no row in check_layout.py's FOLDER_DEPS")
        with open(os.path.join(ROOT, src), encoding="utf-8") as f:
            text = f.read()
        for name in INCLUDE_RE.findall(text):
            target = resolve(src, name, index)
            if target is None:
                if not name.startswith(("tests/", "harness")):
                    errors.append(f'{src}: #include "{name}": not found in csrc/ or kernels/')
                continue
            tfolder = os.path.dirname(target)
            if tfolder not in allowed:
                errors.append(f'{src}: #include "{name}" reaches {tfolder}/, which {folder}/ may not use '
                              f'({folder}: {FOLDER_DEPS.get(folder, ([], "?"))[1]})')
            a, b = module_of(src), module_of(target)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return errors, edges


def find_cycle(edges):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def global_symbols(obj_or_lib):
    out = subprocess.run(["nm", "-g", "--defined-only", obj_or_lib], capture_output=True, text=True, check=True)
    member, syms = os.path.basename(obj_or_lib), []
    for line in out.stdout.splitlines():
        if line.endswith(":"):
            member = line[:-1]
            continue
        parts = line.split()
        if len(parts) == 3:  # address, type, name (nm -g: external symbols only)
            syms.append((member, parts[2]))
    return syms


def check_symbols(build):
    lib = os.path.join(ROOT, build, "libgivt.a")
    if not os.path.exists(lib):
        return [f"{lib}: not built (make first)"], 0
    syms = global_symbols(lib)
    kdir = os.path.join(ROOT, build, "kernels")
    if os.path.isdir(kdir):
        for f in sorted(os.listdir(kdir)):
            if f.endswith(".o"):
                syms += [("kernels/*.o", s) for _, s in global_symbols(os.path.join(kdir, f))]
    errors = []
    for member, sym in syms:
        if sym.startswith(("_Z", "DW.ref.")):  # C++ names (namespaced) and the unwinder's references
            continue
        prefixes = SYMBOL_PREFIXES.get(member)
        if prefixes is None:
            errors.append(f"{member}: no row in check_layout.py's SYMBOL_PREFIXES (symbol {sym})")
        elif not sym.startswith(tuple(prefixes)):
            errors.append(f"{member}: global symbol {sym} lacks its module's prefix ({', '.join(prefixes)})")
    return errors, len(syms)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    paths = list(sources())
    errors, edges = check_includes(paths)
    cycle = find_cycle(edges)
    if cycle:
        errors.append("include circle between modules: " + " -> ".join(cycle))
    sym_errors, nsyms = check_symbols(build)
    errors += sym_errors
    for e in errors:
        print("check_layout: " + e)
    if errors:
        print(f"check_layout: {len(errors)} rule(s) broken")
        return 1
    nedges = sum(len(v) for v in edges.values())
    print(f"check_layout: ok ({len(paths)} files, {len(edges)} modules with {nedges} include edges, no circle; "
          f"{nsyms} global symbols, each with its module's prefix)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
