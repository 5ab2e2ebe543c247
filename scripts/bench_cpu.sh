#!/usr/bin/env bash
# bench_cpu.sh: the CPU benchmark, givt against the PyTorch a user installs today (PyTorch 2 from
# PyPI: MKL, oneDNN, scaled_dot_product_attention, torch.compile) on the same model, batch and
# machine, interleaved in one run. A benchmark, not a test: it never fails on a slow result.
#
#   scripts/bench_cpu.sh                     # sizes S and M, 1 and 2 threads, 2 rounds
#   SIZES=S ROUNDS=3 scripts/bench_cpu.sh
#
# For each round, size and thread count, in this order: givt (givt-bench), PyTorch eager with the
# attention written out (math), eager with SDPA, torch.compile (math), torch.compile with SDPA, and
# Debian's PyTorch 1.13 when /usr/bin/python3 has it. Then a markdown table: the median and the range
# of tokens/s over the rounds, ms/step, GFLOP/s and the share of the sgemm ceiling, the ceiling being
# the best GFLOP/s of any BLAS in play at that thread count (givt's, oneDNN by default, through
# givt-bench --sgemm; PyTorch's MKL through torch.mm) on the models' own matrix shapes; and the versions
# (torch.__config__.show()'s BLAS, MKL and oneDNN lines).
#
# PyTorch 2 comes from PyPI into a virtual environment that the script creates once and keeps
# ($TORCH_VENV, default ~/.cache/givt/torch-venv; the wheel is large). PYTHON=... uses another one.
# Env: SIZES ("S M"), THREADS ("1 2"), ROUNDS (2), BUILD (build), LOG ($BUILD/bench_cpu.log). On a
# machine shared with other jobs, OMP_WAIT_POLICY=passive keeps both sides' OpenMP threads from
# spinning against them.
set -euo pipefail
cd "$(dirname "$0")/.."

# These machines set them and they slow OpenBLAS down; the benchmark alone unsets them, for both sides.
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE

SIZES=${SIZES:-S M}
THREADS=${THREADS:-1 2}
ROUNDS=${ROUNDS:-2}
BUILD=${BUILD:-build}
LOG=${LOG:-$BUILD/bench_cpu.log}
TORCH_VENV=${TORCH_VENV:-$HOME/.cache/givt/torch-venv}
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
source scripts/bench_common.sh  # SIZE_ARGS, say, field, median, range

# ---- PyTorch 2 from PyPI, in a cached virtual environment -----------------------------------
if [ -z "${PYTHON:-}" ]; then
    PYTHON=$TORCH_VENV/bin/python
    if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
        say "creating $TORCH_VENV with PyTorch from PyPI (once; the wheel is large)"
        python3 -m venv "$TORCH_VENV" >>"$LOG" 2>&1 || { say "python3 -m venv failed (Debian: apt-get install python3-venv)"; exit 1; }
        "$TORCH_VENV/bin/pip" install -q --upgrade pip >>"$LOG" 2>&1
        "$TORCH_VENV/bin/pip" install -q torch numpy >>"$LOG" 2>&1 || { say "pip install torch failed: see $LOG"; exit 1; }
    fi
fi
DEBIAN_TORCH=""
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import torch" >/dev/null 2>&1 && DEBIAN_TORCH=/usr/bin/python3

# ---- build ----------------------------------------------------------------------------------
BENCH=./givt-bench
make -s BUILD="$BUILD" givt-bench >>"$LOG" 2>&1 || { echo "make givt-bench failed: see $LOG" >&2; exit 1; }

# ---- what each side runs on -----------------------------------------------------------------
{
    echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "== givt-bench links:"
    ldd "$BENCH" | grep -E 'blas|omp|lapack' || true
    echo "== torch ($PYTHON):"
    OMP_NUM_THREADS=1 "$PYTHON" scripts/bench_torch.py --show-config
} >>"$LOG" 2>&1
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
TORCH_VERSION=$(OMP_NUM_THREADS=1 "$PYTHON" -c "import torch; print(torch.__version__)")
TORCH_LIBS=$(OMP_NUM_THREADS=1 "$PYTHON" scripts/bench_torch.py --show-config 2>/dev/null |
    grep -iE 'math kernel|mkl-dnn|blas_info' | grep -oE '(Math Kernel Library Version [0-9.]+|MKL-DNN v[0-9.]+|BLAS_INFO=[a-z]+)' |
    sort -u | tr '\n' ';' | sed 's/;$//; s/;/; /g')
GIVT_BLAS=$(OMP_NUM_THREADS=1 "$BENCH" --sgemm 8 8 8 --reps 1 | sed -n 's/^threads: [^;]*; BLAS: //p')
say "machine: $(nproc) cores, $CPU"
say "givt:    $GIVT_BLAS"
say "torch:   $TORCH_VERSION ($PYTHON): $TORCH_LIBS"
[ -n "$DEBIAN_TORCH" ] && say "also:    Debian's PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)')"
read -r load1 _ </proc/loadavg
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
    say "warning: load average $load1 before the benchmark: other processes share these cores and the numbers will be low and noisy"
fi

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

declare -A STEPS SHAPES
STEPS[S]="--steps 8 --warmup 2"
STEPS[M]="--steps 3 --warmup 2"
# the models' matrix products: fc1|fc2 forward (B*T, C) x (2F, C)^T, fc3 forward, qkv forward
SHAPES[S]="2048,1376,256 2048,256,688 2048,768,256"
SHAPES[M]="2048,2752,512 2048,512,1376 2048,1536,512"
IMPLS="givt torch-eager-math torch-eager-sdpa torch-compile-math torch-compile-sdpa"
[ -n "$DEBIAN_TORCH" ] && IMPLS+=" torch1.13"

# ---- sgemm ceiling per thread count, every BLAS in play ---------------------------------------
declare -A CEIL
sgemm_rows=""
for t in $THREADS; do
    CEIL[$t]=0
    for s in $SIZES; do
        for shape in ${SHAPES[$s]}; do
            sh=${shape//,/ }
            g1=$(field "$(OMP_NUM_THREADS=$t run "givt sgemm $sh threads $t" "$BENCH" --sgemm $sh --reps 10)" gflops) || g1=0
            g2=$(field "$(OMP_NUM_THREADS=$t run "torch sgemm $sh threads $t" "$PYTHON" scripts/bench_torch.py \
                --threads "$t" --sgemm $sh --reps 10)" gflops) || g2=0
            sgemm_rows+="| ${sh// /x} | $t | $g1 | $g2 |"$'\n'
            CEIL[$t]=$(awk -v a="${CEIL[$t]}" -v b="$g1" -v c="$g2" 'BEGIN { m = a; if (b > m) m = b; if (c > m) m = c; print m }')
            say "sgemm ${sh// /x}, $t thread(s): givt's BLAS $g1, PyTorch (MKL) $g2 GFLOP/s"
        done
    done
done

# ---- the models, interleaved: round after round, each implementation in turn ------------------
declare -A TPS MS GF
impl_cmd() {  # IMPL SIZE THREADS -> the command line
    local impl=$1 s=$2 t=$3
    case $impl in
    givt) echo "$BENCH ${SIZE_ARGS[$s]} ${STEPS[$s]}" ;;
    torch-eager-math) echo "$PYTHON scripts/bench_torch.py --threads $t --attention math ${SIZE_ARGS[$s]} ${STEPS[$s]}" ;;
    torch-eager-sdpa) echo "$PYTHON scripts/bench_torch.py --threads $t --attention sdpa ${SIZE_ARGS[$s]} ${STEPS[$s]}" ;;
    torch-compile-math) echo "$PYTHON scripts/bench_torch.py --threads $t --compile --attention math ${SIZE_ARGS[$s]} ${STEPS[$s]}" ;;
    torch-compile-sdpa) echo "$PYTHON scripts/bench_torch.py --threads $t --compile --attention sdpa ${SIZE_ARGS[$s]} ${STEPS[$s]}" ;;
    torch1.13) echo "$DEBIAN_TORCH scripts/bench_torch.py --threads $t ${SIZE_ARGS[$s]} ${STEPS[$s]}" ;;
    esac
}
for r in $(seq 1 "$ROUNDS"); do
    for s in $SIZES; do
        for t in $THREADS; do
            for impl in $IMPLS; do
                # shellcheck disable=SC2046
                out=$(OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t run "round $r $s $impl threads $t" $(impl_cmd "$impl" "$s" "$t")) || continue
                key="$s|$t|$impl"
                TPS[$key]+="$(field "$out" tokens_per_s) "
                MS[$key]+="$(field "$out" ms_per_step) "
                GF[$key]+="$(field "$out" gflops) "
                say "round $r: $s, $t thread(s), $impl: $(field "$out" tokens_per_s) tok/s"
            done
        done
    done
done


echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$LOG"
{
    echo
    echo "Machine: $(nproc) cores, $CPU. givt: $GIVT_BLAS. PyTorch $TORCH_VERSION: $TORCH_LIBS."
    echo "S: D 16, C 256, F 688, H 4, L 4, T 256, B 8.  M: D 32, C 512, F 1376, H 8, L 8, T 512, B 4."
    echo "A step: zero_grad, forward, backward, grad-norm clip, AdamW. FLOPs/token = 6 x matmul params +"
    echo "12 x L x T x C (dense attention). $ROUNDS interleaved rounds; each round's figure is the median step."
    echo "Ceiling: the best sgemm GFLOP/s of either BLAS at that thread count on the models' shapes."
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "| size | threads | implementation | tok/s median (range) | ms/step | GFLOP/s | % of ceiling | givt / this |"
    echo "|---|---|---|---|---|---|---|---|"
    for s in $SIZES; do
        for t in $THREADS; do
            gk="$s|$t|givt"
            gmed=$(median "${TPS[$gk]:-}")
            for impl in $IMPLS; do
                key="$s|$t|$impl"
                [ -n "${TPS[$key]:-}" ] || continue
                med=$(median "${TPS[$key]}")
                gf=$(median "${GF[$key]}")
                pct=$(awk -v a="$gf" -v b="${CEIL[$t]}" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }')
                ratio=$(awk -v a="$gmed" -v b="$med" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }')
                printf '| %s | %s | %s | %.0f (%s) | %.0f | %.1f | %s | %s |\n' "$s" "$t" "$impl" "$med" \
                    "$(range "${TPS[$key]}")" "$(median "${MS[$key]}")" "$gf" "$pct" "$ratio"
            done
        done
    done
    echo
    echo "Best of each side (any thread count; PyTorch: any of its configurations):"
    echo
    echo "| size | givt tok/s (threads) | best PyTorch tok/s (configuration, threads) | givt / best PyTorch |"
    echo "|---|---|---|---|"
    for s in $SIZES; do
        best_g=0 best_gt="" best_p=0 best_pc=""
        for t in $THREADS; do
            for impl in $IMPLS; do
                key="$s|$t|$impl"
                [ -n "${TPS[$key]:-}" ] || continue
                med=$(median "${TPS[$key]}")
                if [ "$impl" = givt ]; then
                    awk -v a="$med" -v b="$best_g" 'BEGIN { exit !(a > b) }' && best_g=$med best_gt=$t
                else
                    awk -v a="$med" -v b="$best_p" 'BEGIN { exit !(a > b) }' && best_p=$med best_pc="$impl, $t"
                fi
            done
        done
        printf '| %s | %.0f (%s) | %.0f (%s) | %s |\n' "$s" "$best_g" "$best_gt" "$best_p" "$best_pc" \
            "$(awk -v a="$best_g" -v b="$best_p" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
    done
    echo
    echo "| sgemm M x N x K | threads | givt's BLAS GFLOP/s | MKL (PyTorch) GFLOP/s |"
    echo "|---|---|---|---|"
    printf '%s' "$sgemm_rows"
} | tee -a "$LOG"
