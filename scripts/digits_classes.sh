#!/usr/bin/env bash
# The class-conditional digits showcase (README, "Mixtures, classes and guidance"): prepares the
# digits with their labels, trains configs/digits_cond.ini twice (num_mixtures 4 and 1, 900 steps
# each, about 10 s each on one core) into runs/digits-cond-k4 and runs/digits-cond-k1, prints
# both validation losses, and draws docs/classes.png (one row per class at cfg scale 0 and 2) and the
# class-accuracy table from the k = 4 model (scripts/show_classes.py). Extra arguments go to both
# givt-train runs as overrides. Needs a built tree (make) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f data/digits/digits_labels.npy && -f data/digits/digits_p2.npy ]] ||
    ./givt-prepare-digits data/digits/digits.bin data/digits/digits_p2.npy --labels data/digits/digits_labels.npy
for k in 4 1; do
    out=runs/digits-cond-k$k
    [[ -d $out ]] && { echo "$out exists: remove it first" >&2; exit 1; }
    ./givt-train configs/digits_cond.ini "model.num_mixtures=$k" "train.out_dir=$out" "$@"
done
for k in 4 1; do
    echo "k = $k: validation loss $(grep -o '"val_loss": [-0-9.e]*' runs/digits-cond-k$k/metrics.jsonl | tail -1 | cut -d" " -f2)"
done
python3 scripts/show_classes.py "$(ls -d runs/digits-cond-k4/step_* | sort | tail -1)" --out docs/classes.png
