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
./givt-train configs/digits.ini "train.out_dir=runs/digits-$(date +%Y%m%d-%H%M%S)" "$@"
