#!/usr/bin/env bash
# bench_blas.sh: which BLAS should the CPU backend use? Builds givt-bench once per library (make
# BLAS=openblas|blis|dnnl|mkl, each in build-blas-NAME/, CPU only) and times, interleaved over rounds,
# at 1 and 2 threads: sgemm on the models' own matrix shapes (givt-bench --sgemm) and full training
# steps of sizes S and M (the attention's per-head products run inside OpenMP regions, where each
# library behaves differently). Prints a markdown table of medians. A benchmark, not a test.
#   scripts/bench_blas.sh                       # openblas, blis, dnnl (+ mkl when MKLROOT is set)
#   MKLROOT=/path/to/venv scripts/bench_blas.sh # with pip's mkl-devel in that venv
# Env: LIBS ("openblas blis dnnl" [+ mkl]), THREADS ("1 2"), ROUNDS (2), SIZES ("S M"),
#      LOG (build/bench_blas.log). Needs libblis-openmp-dev and libdnnl-dev (Debian) for those two.
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE  # they slow OpenBLAS on these machines (benchmark only)

LIBS=${LIBS:-openblas blis dnnl${MKLROOT:+ mkl}}
THREADS=${THREADS:-1 2}
ROUNDS=${ROUNDS:-2}
SIZES=${SIZES:-S M}
LOG=${LOG:-build/bench_blas.log}
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
source scripts/bench_common.sh  # SIZE_ARGS, say, field, median

declare -A BIN DESC
for lib in $LIBS; do
    dir=build-blas-$lib
    if make -s -j"$(nproc)" NVCC= MPI=0 BLAS="$lib" BUILD="$dir" BIN_PREFIX="$dir/" "$dir/givt-bench" >>"$LOG" 2>&1; then
        BIN[$lib]=$dir/givt-bench
        DESC[$lib]=$(OMP_NUM_THREADS=1 "${BIN[$lib]}" --sgemm 8 8 8 --reps 1 | sed -n 's/^threads: [^;]*; BLAS: //p')
        say "$lib: ${DESC[$lib]}"
    else
        say "$lib: does not build here (see $LOG); skipped"
    fi
done

declare -A STEPS
STEPS[S]="--steps 6 --warmup 2"
STEPS[M]="--steps 3 --warmup 1"
# the models' products: fc1|fc2, fc3 and qkv forward (B*T rows), the attention's per-head
# Q K^T block (64 rows x T keys x head dim) for M, and a square one
SHAPES="2048,1376,256 2048,256,688 2048,768,256 2048,2752,512 2048,512,1376 2048,1536,512 64,512,64 1024,1024,1024"

declare -A R  # "what|threads|lib" -> list of values
for r in $(seq 1 "$ROUNDS"); do
    for t in $THREADS; do
        for lib in "${!BIN[@]}"; do
            for shape in $SHAPES; do
                out=$(OMP_NUM_THREADS=$t "${BIN[$lib]}" --sgemm ${shape//,/ } --reps 10 2>&1 | grep '^RESULT') || continue
                R["sgemm ${shape//,/x}|$t|$lib"]+="$(field "$out" gflops) "
            done
            for s in $SIZES; do
                out=$(OMP_NUM_THREADS=$t "${BIN[$lib]}" ${SIZE_ARGS[$s]} ${STEPS[$s]} 2>&1 | tee -a "$LOG" | grep '^RESULT') || continue
                R["step $s|$t|$lib"]+="$(field "$out" tokens_per_s) "
                say "round $r, $t thread(s), $lib, $s: $(field "$out" tokens_per_s) tok/s"
            done
        done
    done
done

{
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(date +%F)."
    for lib in "${!BIN[@]}"; do echo "- $lib: ${DESC[$lib]}"; done
    echo
    echo "Medians of $ROUNDS interleaved rounds: sgemm in GFLOP/s (best of 10 calls), training steps in tokens/s."
    echo
    header="| what | threads |"
    sep="|---|---|"
    for lib in "${!BIN[@]}"; do header+=" $lib |"; sep+="---|"; done
    echo "$header"
    echo "$sep"
    for what in $(for s in $SHAPES; do echo "sgemm_${s//,/x}"; done) $(for s in $SIZES; do echo "step_$s"; done); do
        for t in $THREADS; do
            row="| ${what/_/ } | $t |"
            for lib in "${!BIN[@]}"; do row+=" $(median "${R["${what/_/ }|$t|$lib"]:-}") |"; done
            echo "$row"
        done
    done
} | tee -a "$LOG"
