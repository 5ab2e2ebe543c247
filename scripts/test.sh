#!/usr/bin/env bash
# The test command: installs the dependencies, builds, and runs every test. Exits non-zero on any
# failure; the last line is "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
make -j"$(nproc)" all
make -j"$(nproc)" build/run_tests
# The CUDA kernels under the emulation, each of the three orders in which it runs a block's threads
# between barriers (the main run below takes them in turn, launch after launch): a kernel missing a
# barrier fails in at least one. (Without nvcc the build has no CUDA backend: these run the CPU only.)
for order in forward reverse random; do
  echo "== backend op tests, CUDA kernels emulated in thread order: $order"
  GIVT_EMU_ORDER=$order build/run_tests backend_ops_ | tail -1
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "backend op tests failed in thread order $order" >&2; exit 1; }
done
# the architecture's rules (who includes whom, no include circle, module prefixes on every global
# symbol) and make install as a user's program sees it
python3 scripts/check_layout.py build
bash scripts/check_install.sh build
# SIGKILLs at many points of a run whose steps replay a CUDA graph, on the emulated CUDA backend (make
# emu's givt-train; a small model, one micro-batch a step, cuda_graphs = on): the resumed runs end with
# the bits of an uninterrupted one (about 20 s). Needs nvcc, as the emulated kernels do.
if command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  make -j"$(nproc)" emu
  echo "== kill and resume with CUDA graphs, emulated (scripts/check_kill_resume.sh)"
  kr_log=$(mktemp)
  if GIVT_TRAIN=build/emu/givt-train DEVICE=cuda MAX_STEPS=40 EXTRA_ARGS="model.hidden_dim=16 model.intermediate_dim=32 \
model.num_heads=2 model.block_size=8 data.seq_len=8 train.batch_size=2 train.grad_accum_steps=1 train.cuda_graphs=on \
train.mixed_precision=bf16" bash scripts/check_kill_resume.sh >"$kr_log" 2>&1; then
    tail -2 "$kr_log"
    rm -f "$kr_log"
  else
    cat "$kr_log"
    echo "kill and resume with CUDA graphs (emulated) failed" >&2
    exit 1
  fi
fi
make test
