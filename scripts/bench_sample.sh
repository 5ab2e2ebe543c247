#!/usr/bin/env bash
# bench_sample.sh: builds givt-sample and runs scripts/bench_sample.py (decode speed of givt-sample
# against a PyTorch KV-cache rollout at B = 1 and 64 on sizes S and M, and the temperature-0 agreement
# check), with the full output in $LOG. Arguments go to bench_sample.py, e.g.
#   scripts/bench_sample.sh --sizes S --reps 1
#   scripts/bench_sample.sh --check-only --model runs/digits-.../step_00000900
# Env: PYTHON (a python with torch >= 2 and numpy, e.g. a venv with `pip install torch numpy`;
#      default python3), LOG (build/bench_sample.log). About 5 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE  # slow OpenBLAS down on these machines; for both sides
PYTHON=${PYTHON:-python3}
LOG=${LOG:-build/bench_sample.log}
mkdir -p "$(dirname "$LOG")"
make -s givt-sample
"$PYTHON" -c 'import torch, numpy' 2>/dev/null ||
    { echo "bench_sample.sh: $PYTHON has no torch/numpy (set PYTHON=...)" >&2; exit 1; }
"$PYTHON" scripts/bench_sample.py "$@" 2>&1 | tee "$LOG"
