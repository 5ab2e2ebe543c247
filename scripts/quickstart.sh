#!/usr/bin/env bash
# The main job on a fresh machine: installs the dependencies, builds, turns the bundled digits set
# into training data, and trains configs/digits.ini (about 30 s on 2 cores) into a new folder
# runs/digits-YYYYmmdd-HHMMSS. Extra arguments are passed to givt-train as overrides, e.g.
# train.max_steps=300.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
make -j"$(nproc)" all
[[ -f data/digits/digits_p2.npy ]] || ./givt-prepare-digits data/digits/digits.bin data/digits/digits_p2.npy
# this run's folder (a train.out_dir=... among the arguments comes later and wins, as in givt-train)
out_dir=runs/digits-$(date +%Y%m%d-%H%M%S)
./givt-train configs/digits.ini "train.out_dir=$out_dir" "$@"

# The picture: a row of real digits, then rows of samples at temperatures 0.5 and 1 from the last
# checkpoint of this run (givt-sample), drawn by scripts/show_samples.py (Python standard library only).
for arg in "$@"; do [[ $arg == train.out_dir=* ]] && out_dir=${arg#train.out_dir=}; done
out_dir=${out_dir%/}
ckpt=$(ls -d "$out_dir"/step_* | sort | tail -1)
if command -v python3 >/dev/null; then
    python3 scripts/show_samples.py "$ckpt" --out "$out_dir/samples.png" >/dev/null
    echo "samples of $ckpt: $out_dir/samples.png"
else
    echo "python3 not found: no picture (python3 scripts/show_samples.py $ckpt --out $out_dir/samples.png)"
fi
