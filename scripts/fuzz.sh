#!/usr/bin/env bash
# Fuzzing: builds the libFuzzer targets (make fuzz) and runs each for SECONDS (default 60).
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 60, scripts/fuzz.sh 3600 fuzz_npy
# TARGET is fuzz_ini, fuzz_json, fuzz_safetensors, fuzz_npy, fuzz_train_state, fuzz_labels, fuzz_digits
# or fuzz_overrides (default: all of tests/fuzz/fuzz_*.c).
# Each run starts from a scratch copy of the committed seeds (tests/fuzz/corpus/<target>/, never
# written to) in build-fuzz/corpus/<target>/; crashing inputs go to build-fuzz/artifacts/ and are
# printed (hex and base64) to the log; logs are in build-fuzz/logs/. The last line is
# "N passed, N failed" (N counts targets); the exit status is non-zero when any target failed.
# Reproduce a crash: build-fuzz/<target> build-fuzz/artifacts/<target>-crash-...
set -uo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-60}
[[ $# -gt 0 ]] && shift
if ! [[ $SECS =~ ^[0-9]+$ ]] || [[ $SECS -lt 1 ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi
if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    TARGETS=()
    for f in tests/fuzz/fuzz_*.c; do TARGETS+=("$(basename "$f" .c)"); done
fi
for t in "${TARGETS[@]}"; do
    if [[ ! -f tests/fuzz/$t.c ]]; then
        echo "fuzz.sh: unknown target $t (have: $(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$//' | tr '\n' ' '))" >&2
        exit 2
    fi
done

OUT=build-fuzz
START=$(date +%s)
echo "== make fuzz"
if ! make -j"$(nproc)" fuzz; then
    echo "fuzz.sh: make fuzz failed (needs clang with libFuzzer: apt-get install clang)" >&2
    echo "0 passed, ${#TARGETS[@]} failed"
    exit 1
fi
echo "== built in $(( $(date +%s) - START )) s"

# The targets write their inputs to files under $TMPDIR (a folder per process): a tmpfs when there
# is one, where the writers' fsync costs nothing; removed at the end.
if [[ -d /dev/shm && -w /dev/shm ]]; then SCRATCH=$(mktemp -d /dev/shm/givt-fuzz.XXXXXX)
else mkdir -p "$OUT" && SCRATCH=$(mktemp -d "$PWD/$OUT/tmp.XXXXXX"); fi
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$OUT/artifacts" "$OUT/logs" "$OUT/corpus"
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

max_len() {
    case $1 in
    fuzz_safetensors | fuzz_npy | fuzz_train_state) echo 65536 ;;
    *) echo 4096 ;;
    esac
}

passed=0
failed=0
summary=()
for t in "${TARGETS[@]}"; do
    corpus=$OUT/corpus/$t
    log=$OUT/logs/$t.log
    rm -rf "$corpus"
    mkdir -p "$corpus"
    cp tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null
    rm -f "$OUT/artifacts/$t"-*
    dict=()
    [[ -f tests/fuzz/$t.dict ]] && dict=(-dict="tests/fuzz/$t.dict")
    echo "== $t: ${SECS} s (log: $log)"
    # the outer timeout only guards against a hang libFuzzer itself does not catch
    TMPDIR=$SCRATCH timeout -k 10 $((SECS + 120)) "$OUT/$t" "$corpus" "${dict[@]}" \
        -max_total_time="$SECS" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$OUT/artifacts/$t-" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+).*/cov \1, ft \2/')
    if [[ $rc -eq 0 ]]; then
        passed=$((passed + 1))
        summary+=("$t: passed (${execs:-?} execs in ${SECS} s, ${cov:-?})")
        continue
    fi
    failed=$((failed + 1))
    artifact=$(ls -t "$OUT/artifacts/$t"-* 2>/dev/null | grep -v '/.*-slow-unit-' | head -1)
    summary+=("$t: FAILED (exit $rc; ${artifact:-no artifact}; log $log)")
    echo "---- $t failed (exit $rc); the end of its log:"
    grep -vE '^(0x[0-9a-f]+,)+$' "$log" | tail -60
    if [[ -n $artifact ]]; then
        echo "---- crashing input $artifact ($(wc -c <"$artifact") bytes), first 512 bytes:"
        head -c 512 "$artifact" | od -A d -t x1z -v
        echo "---- base64 (first 3072 bytes):"
        head -c 3072 "$artifact" | base64 -w 76
    fi
    echo "---- reproduce: $OUT/$t $artifact"
done

echo "== fuzzing done in $(( $(date +%s) - START )) s"
for line in "${summary[@]}"; do echo "$line"; done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
