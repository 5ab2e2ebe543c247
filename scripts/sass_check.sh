#!/usr/bin/env bash
# sass_check.sh [BUILD]: the SASS rules of the CUDA kernels (issue 19 item 1). Reads what nvcc made of
# kernels/*.cu ($BUILD/kernels/*.o, BUILD default build: run `make -j all` first, with nvcc), prints
# one row per kernel (registers, spills, shared memory, counts of instruction classes) and fails
# when a rule of the table in scripts/sass_check.py is broken: no generic LD/ST, no local memory,
# wide global loads, LDSM and HMMA in tensor-core attention. Known violations are listed there, each
# with its reason, and fail the check once they no longer occur. No GPU needed: static analysis.
#
# Tools: cuobjdump and nvdisasm of the toolkit's major version (nvcc --version). Used from beside nvcc
# or PATH when there; otherwise installed once from PyPI (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm)
# with pip --target into $GIVT_CUDA_TOOLS (default ~/.cache/givt/cuda-tools/cuMAJOR) and kept.
# Env: NVCC (the nvcc whose version counts; default: PATH, then /usr/local/cuda/bin/nvcc),
# PYTHON (python3), GIVT_CUDA_TOOLS.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-${BUILD:-build}}
PYTHON=${PYTHON:-python3}
say() { echo "sass_check: $*"; }
die() { echo "sass_check: $*" >&2; exit 1; }

shopt -s nullglob
objs=("$BUILD"/kernels/*.o)
shopt -u nullglob
((${#objs[@]})) || die "no $BUILD/kernels/*.o: the GPU objects of kernels/*.cu are built by make when nvcc is found (make -j\"\$(nproc)\" all; make info says whether it found nvcc). Nothing to check."

NVCC=${NVCC:-$(command -v nvcc || true)}
[[ -n "$NVCC" ]] || NVCC=/usr/local/cuda/bin/nvcc
[[ -x "$NVCC" ]] || die "nvcc not found (PATH, /usr/local/cuda/bin; or set NVCC): its version says which cuobjdump to use"
major=$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p')
[[ -n "$major" ]] || die "cannot read the CUDA version from $NVCC --version"

# tools_in DIR: DIR has both cuobjdump and nvdisasm of CUDA $major
tools_in() {
    [[ -x "$1/cuobjdump" && -x "$1/nvdisasm" ]] || return 1
    [[ "$("$1/cuobjdump" --version 2>/dev/null)" == *"release $major."* ]]
}
TOOLS=""
for d in "$(dirname "$NVCC")" "$(dirname "$(command -v cuobjdump || echo /nonexistent/x)")"; do
    if tools_in "$d"; then TOOLS=$d; break; fi
done
CACHE=${GIVT_CUDA_TOOLS:-$HOME/.cache/givt/cuda-tools/cu$major}
find_cached() {
    local f
    f=$(find "$CACHE" -type f -name cuobjdump -path '*/bin/*' 2>/dev/null | head -1)
    [[ -n "$f" ]] && tools_in "$(dirname "$f")" && TOOLS=$(dirname "$f")
}
if [[ -z "$TOOLS" ]] && ! find_cached; then
    pkgs=("nvidia-cuda-cuobjdump==$major.*" "nvidia-cuda-nvdisasm==$major.*")
    say "installing cuobjdump and nvdisasm for CUDA $major from PyPI (${pkgs[*]}) into $CACHE (once)"
    "$PYTHON" -m pip --version >/dev/null 2>&1 ||
        die "$PYTHON has no pip, which installs cuobjdump and nvdisasm (Debian: apt-get install python3-pip)"
    mkdir -p "$(dirname "$CACHE")"
    tmp=$(mktemp -d "$CACHE.tmp.XXXXXX")
    log=$CACHE.pip.log
    if ! "$PYTHON" -m pip install -q --disable-pip-version-check --no-warn-script-location \
        --target "$tmp" "${pkgs[@]}" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -rf "$tmp"
        die "pip install ${pkgs[*]} failed (the output above; all of it in $log)"
    fi
    rm -f "$log"
    rm -rf "$CACHE"
    mv "$tmp" "$CACHE"
    find_cached || die "pip installed ${pkgs[*]} into $CACHE, but no cuobjdump and nvdisasm of CUDA $major are in it"
fi
DEMANGLER=c++filt
[[ -x "$(dirname "$NVCC")/cu++filt" ]] && DEMANGLER=$(dirname "$NVCC")/cu++filt
command -v "$DEMANGLER" >/dev/null || say "warning: no c++filt (binutils): kernel names stay mangled"

say "$("$TOOLS/cuobjdump" --version | sed -n 's/^Cuda compilation tools, //p') cuobjdump and nvdisasm in $TOOLS; nvcc $major ($NVCC)"
# cuobjdump -sass runs nvdisasm: the one beside it
PATH="$TOOLS:$PATH" exec "$PYTHON" scripts/sass_check.py --cuobjdump "$TOOLS/cuobjdump" --demangler "$DEMANGLER" "$BUILD"
