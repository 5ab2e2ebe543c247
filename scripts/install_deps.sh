#!/usr/bin/env bash
# Installs what givt needs to build and test from Debian's packages (as root; uses sudo otherwise).
# Idempotent: installs only what is missing. Set GIVT_WITH_TORCH=1 to add PyTorch (reference
# generation and the benchmark's comparison only; the tests do not need it), GIVT_WITH_FUZZ=1 to add
# clang and libFuzzer (scripts/fuzz.sh).
set -euo pipefail
# oneDNN: the CPU backend's matrix products (make's default BLAS=dnnl, the fastest measured; OpenBLAS
# for make BLAS=openblas, which scripts/bench_blas.sh compares); OpenMPI: data-parallel training on
# CPUs (make finds mpicc) and the mpirun tests; iproute2: the network namespaces of
# scripts/check_multinode.sh (util-linux's unshare and nsenter are in every Debian)
pkgs=(build-essential pkg-config libdnnl-dev libopenblas-openmp-dev libopenmpi-dev openmpi-bin iproute2)
[[ "${GIVT_WITH_TORCH:-0}" == 1 ]] && pkgs+=(python3-numpy python3-torch python3-sklearn python3-matplotlib)
# GIVT_WITH_FUZZ=1: clang with libFuzzer and its sanitizer runtimes, and LLVM's OpenMP (make fuzz)
[[ "${GIVT_WITH_FUZZ:-0}" == 1 ]] && pkgs+=(clang libclang-rt-14-dev libomp-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "install_deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
