#!/usr/bin/env bash
# check_kill_resume.sh: acceptance check "a run killed with SIGKILL at several points of progress,
# resumed each time with train.resume_from_ckpt=latest, ends with the same weights as an
# uninterrupted run, bit for bit".
#
# Run A: configs/tiny.ini with a bigger model (dummy data, ema on, grad_accum_steps 2, validation,
# log_every 3, save_every 5, keep_checkpoints 3), uninterrupted.
# Run B: the same configuration with train.resume_from_ckpt=latest, started and killed with SIGKILL
# again and again, at these points:
#   early        as soon as the run has printed its start line (before the first step)
#   first-log    as soon as metrics.jsonl has a line (still before the first checkpoint)
#   mid-write    as soon as a .tmp-step_* folder appears (the checkpoint is being written), with
#                delays of 0 / 2 / 10 ms after seeing it
#   after-save   as soon as a new step_* folder appears (rename done; fsync / pruning under way)
#   random       0 .. 90 ms after it logs a random step 1 .. 25 past where it started
# then it runs to the end, and once more after the end (a finished run resumed must change nothing).
# Checks: every kept checkpoint folder of A and B holds the same model / optimizer / ema safetensors
# and config.json (cmp), the same folders are kept, metrics.jsonl of B has exactly the lines of A (one
# per logged step, same step/loss/lr/grad_norm/val_loss; tokens_per_s ignored), no .tmp-* folder is
# left, and every resumed run resumed from the newest checkpoint present when it started.
# Prints PASS / FAIL; exits 1 on failure. Usage (from anywhere): bash scripts/check_kill_resume.sh
# KEEP=1 keeps the work folder. DEVICE=cuda (default cpu) runs both on the GPU and GIVT_TRAIN=path
# checks another build of givt-train (scripts/gpu_check.sh). MAX_STEPS (default 120) and EXTRA_ARGS
# (more key=value overrides, after the ones below) shrink or change the run: CI runs it on the
# emulated CUDA backend (make emu's givt-train) with a smaller model, one micro-batch a step and
# train.cuda_graphs=on, so that the steps replayed as a CUDA graph are killed and resumed too.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SRC_EXE=${GIVT_TRAIN:-givt-train}
if [ ! -x "$SRC_EXE" ]; then
    make -j2 >/dev/null || { echo "FAIL: make failed"; exit 1; }
fi
WORK=$(mktemp -d /tmp/givt-kill-resume.XXXXXX)
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "(kept $WORK)"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
# a private copy of the binary: a rebuild in the repo during the check must not change it under us
EXE=$WORK/givt-train
cp "$SRC_EXE" "$EXE" && "$EXE" --version >/dev/null 2>&1 || { echo "FAIL: cannot copy and run $SRC_EXE"; exit 1; }
# bit-for-bit needs the same thread count in A and B; 1 keeps the timing steady on a busy machine
export OMP_NUM_THREADS=${THREADS:-1} OPENBLAS_NUM_THREADS=${THREADS:-1}
A=$WORK/A
B=$WORK/B
MAX_STEPS=${MAX_STEPS:-120}
SAVE_EVERY=5
ARGS=(configs/tiny.ini
      model.input_dim=8 model.hidden_dim=64 model.intermediate_dim=128 model.num_heads=4 model.num_layers=2
      model.block_size=32 data.kind=dummy data.seq_len=32 data.dummy_size=256
      train.batch_size=8 train.grad_accum_steps=2 train.val_size=16 train.val_every=10 train.log_every=3
      train.save_every=$SAVE_EVERY train.keep_checkpoints=3 train.ema=0.6667 train.warmup_steps=10
      train.max_steps=$MAX_STEPS train.seed=7 train.device=${DEVICE:-cpu})
read -r -a EXTRA <<<"${EXTRA_ARGS:-}"
ARGS+=("${EXTRA[@]}")
FAILS=0
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }

now() { echo "${EPOCHREALTIME}"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# ---- A: uninterrupted
t0=$(now)
"$EXE" "${ARGS[@]}" train.out_dir="$A" >"$WORK/A.log" 2>&1
rc=$?
t1=$(now)
if [ $rc -ne 0 ]; then
    tail -5 "$WORK/A.log"
    echo "FAIL: the uninterrupted run exited with $rc"
    exit 1
fi
echo "A: uninterrupted run of $MAX_STEPS steps: $(elapsed "$t0" "$t1") s"

# ---- B: killed and resumed
latest_step() {  # newest complete step_* folder name in $B, or "none"
    local d best=none
    for d in "$B"/step_*; do [ -d "$d" ] && best=${d##*/}; done
    echo "$best"
}
tmp_present() { compgen -G "$B/.tmp-*" >/dev/null; }

PID=
start_b() {  # $1: attempt number
    LOG=$WORK/B.$1.log
    BEFORE=$(latest_step)
    : >"$LOG"
    "$EXE" "${ARGS[@]}" train.out_dir="$B" train.resume_from_ckpt=latest >"$LOG" 2>&1 &
    PID=$!
}
alive() { kill -0 "$PID" 2>/dev/null; }
kill_b() {
    kill -9 "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
}
# checks that the run of attempt $1 resumed from $BEFORE (or started fresh when there was none); a run
# killed before it got that far says neither
check_resumed_from() {
    local said
    said=$(grep -m1 -E "resumed from|starting fresh" "$LOG")
    [ -n "$said" ] || return 0
    if [ "$BEFORE" = none ]; then
        [[ $said == *"starting fresh"* ]] || fail "attempt $1: no checkpoint, but: $said"
    else
        [[ $said == *"resumed from $B/$BEFORE at step $((10#${BEFORE#step_}))" ]] \
            || fail "attempt $1: expected to resume from $BEFORE, got: $said"
    fi
}

deadline_wait() {  # busy-waits until "$@" succeeds, the run ends, or 30 s pass; returns 0 when "$@" succeeded
    local end=$((SECONDS + 30))
    while alive && [ $SECONDS -lt $end ]; do
        "$@" && return 0
    done
    return 1
}
# a line of this run in metrics.jsonl (the run truncates it at its start, after printing nothing yet)
has_log_line() { grep -q "parameters," "$LOG" && [ -s "$B/metrics.jsonl" ]; }
NEXT_STEP_DIR=
new_step_dir() { [ -d "$NEXT_STEP_DIR" ]; }
started() { grep -q "parameters," "$LOG"; }
TARGET=0
logged_target() {  # this run has logged a step >= TARGET
    local last
    started || return 1
    last=$(tail -n1 "$B/metrics.jsonl" 2>/dev/null | sed -nE 's/^\{"step": ([0-9]+),.*/\1/p')
    [ -n "$last" ] && [ "$last" -ge "$TARGET" ] && return 0
    sleep 0.005
    return 1
}
# every step_* folder is complete (the checkpoint is renamed into place whole), except that a kill
# while old checkpoints are being pruned may leave the oldest one partly removed
check_complete() {
    local d f first=1 missing
    for d in "$B"/step_*; do
        [ -d "$d" ] || continue
        missing=
        for f in config.json model.safetensors optimizer.safetensors ema.safetensors train.ini; do
            [ -f "$d/$f" ] || missing="$missing $f"
        done
        if [ -n "$missing" ]; then
            if [ $first = 1 ]; then
                echo "  (attempt $1: the oldest checkpoint ${d##*/} was being pruned: lacks$missing)"
            else
                fail "attempt $1: checkpoint ${d##*/} is incomplete: lacks$missing"
            fi
        fi
        first=0
    done
}

MODES=(early first-log mid-write:0 random mid-write:0.002 after-save random mid-write:0.01 random after-save mid-write:0 random random)
n_mid_write=0 n_before_ckpt=0
attempt=0
for mode in "${MODES[@]}"; do
    attempt=$((attempt + 1))
    start_b $attempt
    case $mode in
    early) deadline_wait started ;;
    first-log) deadline_wait has_log_line ;;
    mid-write:*) deadline_wait started && deadline_wait tmp_present && [ "${mode#mid-write:}" != 0 ] && sleep "${mode#mid-write:}" ;;
    after-save)
        cur=$(latest_step)
        if [ "$cur" = none ]; then nxt=$SAVE_EVERY; else nxt=$((10#${cur#step_} + SAVE_EVERY)); fi
        NEXT_STEP_DIR=$(printf "%s/step_%08d" "$B" "$nxt")
        deadline_wait new_step_dir ;;
    random)
        if [ "$BEFORE" = none ]; then TARGET=1; else TARGET=$((10#${BEFORE#step_} + 1)); fi
        TARGET=$((TARGET + RANDOM % 25))
        deadline_wait logged_target && sleep "0.0$((RANDOM % 10))" ;;
    esac
    if ! alive; then
        wait "$PID"
        echo "B attempt $attempt ($mode): the run ended (rc $?) before the kill"
        check_resumed_from $attempt
        break
    fi
    kill_b
    tmp=no; tmp_present && tmp=yes
    after=$(latest_step)
    [ "$after" = none ] && n_before_ckpt=$((n_before_ckpt + 1))
    [ $tmp = yes ] && n_mid_write=$((n_mid_write + 1))
    lines=0; [ -f "$B/metrics.jsonl" ] && lines=$(wc -l <"$B/metrics.jsonl")
    echo "B attempt $attempt ($mode): started at ${BEFORE}, SIGKILL; newest checkpoint ${after}, .tmp-* folder left: $tmp, metrics lines $lines"
    check_resumed_from $attempt
    check_complete $attempt
done
attempt=$((attempt + 1))
start_b $attempt
wait "$PID"
rc=$?
check_resumed_from $attempt
echo "B attempt $attempt: runs to the end from ${BEFORE}: rc $rc"
[ $rc -eq 0 ] || { tail -5 "$LOG"; fail "the last resumed run exited with $rc"; }
[ $n_before_ckpt -ge 1 ] || fail "no kill landed before the first checkpoint"
echo "B: $n_before_ckpt kill(s) before the first checkpoint, $n_mid_write kill(s) left a half-written checkpoint (.tmp-*)"
[ $n_mid_write -ge 1 ] || echo "note: no kill landed mid-checkpoint-write this time"

# a finished run, resumed, must change nothing
cp "$B/metrics.jsonl" "$WORK/metrics.before-rerun"
sha_before=$(cat "$B"/step_*/*.safetensors | sha1sum)
attempt=$((attempt + 1))
start_b $attempt
wait "$PID"
rc=$?
check_resumed_from $attempt
[ $rc -eq 0 ] || fail "resuming the finished run exited with $rc"
cmp -s "$WORK/metrics.before-rerun" "$B/metrics.jsonl" || fail "resuming the finished run changed metrics.jsonl"
[ "$sha_before" = "$(cat "$B"/step_*/*.safetensors | sha1sum)" ] || fail "resuming the finished run changed a checkpoint"

# ---- compare
ls_steps() { (cd "$1" && ls -d step_* 2>/dev/null | tr '\n' ' '); }
echo "checkpoints kept: A: $(ls_steps "$A"); B: $(ls_steps "$B")"
[ "$(ls_steps "$A")" = "$(ls_steps "$B")" ] || fail "A and B keep different checkpoint folders"
final=$(printf "step_%08d" $MAX_STEPS)
[ -d "$B/$final" ] || fail "B has no $final"
for d in "$A"/step_*; do
    s=${d##*/}
    for f in model.safetensors optimizer.safetensors ema.safetensors config.json; do
        if [ ! -f "$A/$s/$f" ] || [ ! -f "$B/$s/$f" ]; then
            fail "$s/$f missing in A or B"
        elif cmp -s "$A/$s/$f" "$B/$s/$f"; then
            [ "$s" = "$final" ] && echo "  $s/$f: identical ($(stat -c %s "$A/$s/$f") bytes)"
        else
            fail "$s/$f differs between A and B: $(cmp "$A/$s/$f" "$B/$s/$f" 2>&1 | head -1)"
        fi
    done
done

strip() { sed -E 's/, "tokens_per_s": [^,}]*//' "$1"; }
strip "$A/metrics.jsonl" >"$WORK/A.metrics"
strip "$B/metrics.jsonl" >"$WORK/B.metrics"
nA=$(wc -l <"$WORK/A.metrics")
nB=$(wc -l <"$WORK/B.metrics")
dups=$(sed -E 's/^\{"step": ([0-9]+),.*/\1/' "$WORK/B.metrics" | sort -n | uniq -d | tr '\n' ' ')
[ -z "$dups" ] || fail "metrics.jsonl of B repeats steps: $dups"
if cmp -s "$WORK/A.metrics" "$WORK/B.metrics"; then
    echo "metrics.jsonl: A $nA lines, B $nB lines: identical step/loss/lr/grad_norm/val_loss"
else
    fail "metrics.jsonl: A $nA lines, B $nB lines differ:"
    diff "$WORK/A.metrics" "$WORK/B.metrics" | head -10
fi

left=$(cd "$B" && ls -A | grep -E '^\.tmp-' | tr '\n' ' ')
[ -z "$left" ] || fail "temporary folders left in B: $left"
stray=$(cd "$B" && find . \( -name '*.tmp.*' -o -name '.givt-tmp-*' \) | tr '\n' ' ')
[ -z "$stray" ] || echo "warning: stray temporary files in B (not folders): $stray"

if [ $FAILS -eq 0 ]; then
    echo "PASS"
    exit 0
fi
echo "FAIL ($FAILS problem(s))"
exit 1
