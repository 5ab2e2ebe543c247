# bench_common.sh: what the CPU benchmarks share (sourced by bench_cpu.sh and bench_blas.sh): the
# model sizes S and M, and small helpers over givt-bench / bench_torch.py output.
# shellcheck shell=bash

# givt-bench and bench_torch.py arguments of the benchmark's two model sizes
declare -A SIZE_ARGS
SIZE_ARGS[S]="--input-dim 16 --hidden 256 --intermediate 688 --heads 4 --layers 4 --seq 256 --batch 8"
SIZE_ARGS[M]="--input-dim 32 --hidden 512 --intermediate 1376 --heads 8 --layers 8 --seq 512 --batch 4"

# say TEXT: to stderr and to $LOG
say() { echo "$@" | tee -a "$LOG" >&2; }
# field LINE KEY: the value of KEY=value in a RESULT line
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | tail -1; }
# median / range of a space-separated list of numbers ("-" / nothing for an empty list)
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f-%.0f", lo, hi }'; }
