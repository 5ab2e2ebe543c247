#!/usr/bin/env bash
# bench_cpu.sh: the CPU benchmark, givt against PyTorch on the same model, batch and machine, in the
# same run. Builds givt-bench, runs sizes S and M with OMP_NUM_THREADS=$THREADS (default 2) and
# PyTorch with 1 and $THREADS threads (its best is reported), measures the sgemm ceiling, and prints
# a markdown table. A benchmark, not a test: it never fails on a slow result.
#   scripts/bench_cpu.sh                 # about 4 minutes on a 2-core machine
#   SIZES="S" scripts/bench_cpu.sh       # only size S
# Env: THREADS (2), PYTHON (/usr/bin/python3, with torch), BUILD (build), LOG (build/bench_cpu.log),
#      SIZES ("S M"). The full output of every run goes to $LOG. Other variables pass through to both
#      sides; on a machine shared with other jobs, OMP_WAIT_POLICY=passive keeps the OpenMP threads of
#      both from spinning against them (it roughly doubled both sides' throughput under a load of 3).
set -euo pipefail
cd "$(dirname "$0")/.."

# These machines set them and they slow OpenBLAS down; the benchmark alone unsets them, for both sides.
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE

THREADS=${THREADS:-2}
PYTHON=${PYTHON:-/usr/bin/python3}
BUILD=${BUILD:-build}
LOG=${LOG:-$BUILD/bench_cpu.log}
SIZES=${SIZES:-S M}
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
say() { echo "$@" | tee -a "$LOG" >&2; }

# ---- build ----------------------------------------------------------------------------------
BENCH=./givt-bench
make -s BUILD="$BUILD" givt-bench >>"$LOG" 2>&1 || { echo "make givt-bench failed: see $LOG" >&2; exit 1; }

# ---- what each side loads -------------------------------------------------------------------
{
    echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "== givt-bench links:"
    ldd "$BENCH" | grep -E 'blas|omp|lapack' || true
    echo "== torch:"
    OMP_NUM_THREADS=1 "$PYTHON" scripts/bench_torch.py --show-config || echo "(torch not available)"
} >>"$LOG" 2>&1
say "givt-bench: $(ldd "$BENCH" | grep -o '/[^ ]*openblas[^ ]*' | xargs -r readlink -f | head -1)"
say "torch:      $(OMP_NUM_THREADS=1 "$PYTHON" scripts/bench_torch.py --show-config 2>/dev/null | grep '^loaded:' \
    | tr ' ' '\n' | grep -m1 libopenblas || echo 'not available')"
read -r load1 _ </proc/loadavg
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
    say "warning: load average $load1 before the benchmark: other processes share these cores and the numbers will be low and noisy"
fi

# field LINE KEY: the value of KEY=value in a RESULT line
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
# run LABEL CMD...: runs one benchmark, logs all of it, prints its RESULT line
run() {
    local label=$1
    shift
    echo "== $label: $*" >>"$LOG"
    local out
    out=$("$@" 2>&1) || { echo "$out" >>"$LOG"; say "$label failed (see $LOG)"; return 1; }
    echo "$out" >>"$LOG"
    grep '^RESULT' <<<"$out" | tail -1
}

declare -A ARGS STEPS
ARGS[S]="--input-dim 16 --hidden 256 --intermediate 688 --heads 4 --layers 4 --seq 256 --batch 8"
ARGS[M]="--input-dim 32 --hidden 512 --intermediate 1376 --heads 8 --layers 8 --seq 512 --batch 4"
STEPS[S]="--steps 8 --warmup 2"
STEPS[M]="--steps 3 --warmup 1"
declare -A BIGGEST  # the model's largest matmul, fc1|fc2 forward: (B*T, C) @ (2F, C)^T
BIGGEST[S]="2048 1376 256"
BIGGEST[M]="2048 2752 512"

# ---- sgemm ceiling --------------------------------------------------------------------------
ceiling=0
sgemm_rows=""
for shape in "1024 1024 1024" $(for s in $SIZES; do echo "${BIGGEST[$s]// /,}"; done); do
    shape=${shape//,/ }
    r=$(OMP_NUM_THREADS=$THREADS run "sgemm $shape" "$BENCH" --sgemm $shape --reps 10) || continue
    g=$(field "$r" gflops)
    sgemm_rows+="| ${shape// /x} | $g |"$'\n'
    ceiling=$(awk -v a="$ceiling" -v b="$g" 'BEGIN { print (b > a) ? b : a }')
    say "sgemm ${shape// /x}: $g GFLOP/s"
done

# ---- the models -----------------------------------------------------------------------------
rows=""
for s in $SIZES; do
    g=$(OMP_NUM_THREADS=$THREADS run "givt $s" "$BENCH" ${ARGS[$s]} ${STEPS[$s]}) || continue
    say "givt  $s: $(field "$g" tokens_per_s) tok/s, $(field "$g" ms_per_step) ms/step"
    best_t="" best_tps=0 best_ms=""
    for t in 1 "$THREADS"; do
        r=$(OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t run "torch $s threads $t" \
            "$PYTHON" scripts/bench_torch.py --threads "$t" ${ARGS[$s]} ${STEPS[$s]}) || continue
        tps=$(field "$r" tokens_per_s)
        say "torch $s threads $t: $tps tok/s, $(field "$r" ms_per_step) ms/step"
        if awk -v a="$tps" -v b="$best_tps" 'BEGIN { exit !(a > b) }'; then
            best_t=$t best_tps=$tps best_ms=$(field "$r" ms_per_step)
        fi
        [ "$THREADS" = 1 ] && break
    done
    gtps=$(field "$g" tokens_per_s) ggf=$(field "$g" gflops)
    ratio=$(awk -v a="$gtps" -v b="$best_tps" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    pct=$(awk -v a="$ggf" -v b="$ceiling" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }')
    torch_cell="-"
    [ -n "$best_t" ] && torch_cell="$best_tps ($best_t)"
    rows+="| $s | $gtps | $torch_cell | $ratio | $ggf | $pct | $(field "$g" ms_per_step) / ${best_ms:--} |"$'\n'
done

echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$LOG"
{
    echo
    echo "S: D 16, C 256, F 688, H 4, L 4, T 256, B 8.  M: D 32, C 512, F 1376, H 8, L 8, T 512, B 4."
    echo "givt with OMP_NUM_THREADS=$THREADS; torch's best of 1 and $THREADS threads. A step: zero_grad, forward,"
    echo "backward, grad-norm clip, AdamW. FLOPs/token = 6 * matmul params + 12 * L * T * C (dense attention)."
    echo "Median step time over the timed steps. Load average now: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "| size | givt tok/s | torch tok/s (best, threads) | ratio givt/torch | givt GFLOP/s | % of sgemm ceiling ($ceiling) | ms/step givt / torch |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s' "$rows"
    echo
    echo "| sgemm M x N x K (OMP_NUM_THREADS=$THREADS) | GFLOP/s (best of 10) |"
    echo "|---|---|"
    printf '%s' "$sgemm_rows"
} | tee -a "$LOG"
