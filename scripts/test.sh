#!/usr/bin/env bash
# The test command: installs the dependencies, builds, and runs every test. Exits non-zero on any
# failure; the last line is "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
make -j"$(nproc)" all
make test
