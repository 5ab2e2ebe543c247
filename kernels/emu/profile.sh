#!/usr/bin/env bash
# kernels/emu/profile.sh [BUILD] [-- givt-bench options]: the CUDA kernels profiled under the
# emulation (kernels/README.md, "The emulator as a profiler"). Builds the instrumented programs
# (make emu-profile, into $BUILD/emu-prof/; BUILD default build), runs one givt-bench training step
# (forward, backward, AdamW) on the emulated cuda backend in fp32 and in bf16 at a stated tiny size,
# with GIVT_EMU_PROFILE, and prints the two tables (also kept as $OUT/profile_fp32.tsv and
# profile_bf16.tsv; OUT default $BUILD/emu-prof). Fails when a table is missing or shows that the
# profiler saw nothing (no rows, no global traffic, no floating-point or shared-memory counts, no
# tensor-core work in bf16). CI runs it (.ci/run); about 30 s from a built tree
# on 2 cores, most of it compiling the instrumented kernels.
# Size (givt-bench options): --hidden 128 --intermediate 352 --heads 2 (head dim 64) --layers 1
# --seq 128 --batch 2 --input-dim 16; options after -- are appended (a later one wins).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=build
if [[ $# -gt 0 && "$1" != "--" ]]; then BUILD=$1; shift; fi
[[ $# -gt 0 && "$1" == "--" ]] && shift
OUT=${OUT:-$BUILD/emu-prof}
die() { echo "profile.sh: $*" >&2; exit 1; }

make -j"$(nproc)" BUILD="$BUILD" emu-profile >/dev/null
bench=$BUILD/emu-prof/givt-bench
[[ -x "$bench" ]] || die "$bench was not built (make emu-profile needs nvcc's CUDA headers)"
mkdir -p "$OUT"

SIZE=(--hidden 128 --intermediate 352 --heads 2 --layers 1 --seq 128 --batch 2 --input-dim 16 --steps 1 --warmup 0)
for prec in fp32 bf16; do
    tsv=$OUT/profile_$prec.tsv
    rm -f "$tsv"
    p=no; [[ $prec == bf16 ]] && p=bf16
    echo "== emulated CUDA kernels, one training step in $prec: ${SIZE[*]} $*"
    GIVT_EMU_PROFILE=$tsv "$bench" --device cuda --precision "$p" "${SIZE[@]}" "$@" >"$OUT/bench_$prec.log" 2>&1 ||
        { cat "$OUT/bench_$prec.log" >&2; die "givt-bench failed ($prec)"; }
    [[ -s "$tsv" ]] || die "no profile written to $tsv (see $OUT/bench_$prec.log)"
    # aligned columns (awk: no dependency on column(1))
    awk -F'\t' '{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } if (NF > nf) nf = NF }
        END { for (r = 1; r <= NR; r++) { s = ""; for (i = 1; i <= nf; i++) s = s sprintf(i == 1 ? "%-" w[i] "s" : "  %" w[i] "s", c[r, i]); print s } }' "$tsv"
    # the profiler saw the step: kernel rows, global loads and stores, floating-point counts, shared
    # memory (the fp32 attention kernels stage tiles there) and tensor-core work in bf16
    awk -F'\t' -v prec="$prec" '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { rows++; gld += $col["gld_sectors"]; gst += $col["gst_sectors"]; sh += $col["shared_wavefronts"]
          mma += $col["mma_flop"]; if ($col["float_flop"] == "NA") na = 1; else fl += $col["float_flop"] }
        END {
            if (!rows) { print "no kernel rows"; exit 1 }
            if (!gld || !gst) { print "no global loads or stores counted"; exit 1 }
            if (na || !fl) { print "no floating-point counts"; exit 1 }
            if (!sh) { print "no shared memory counted"; exit 1 }
            if (prec == "bf16" && !mma) { print "no tensor-core (WMMA) work counted"; exit 1 }
        }' "$tsv" >"$OUT/check_$prec.txt" || die "$tsv: $(cat "$OUT/check_$prec.txt")"
done
