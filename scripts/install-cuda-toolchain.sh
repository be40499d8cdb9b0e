#!/usr/bin/env bash
# Install the pinned CUDA 13.0 *compile* toolchain (nvcc, ptxas, cicc, NVRTC, headers)
# from NVIDIA's PyPI wheels into <repo>/.cuda-toolchain/. No GPU, driver or system CUDA
# install is needed. Idempotent: a stamp file records what is installed, and a rerun with
# the same pins returns immediately. Wheels are kept in <pip cache>/foil-cuda-wheels
# (pip cache = $PIP_CACHE_DIR, else ~/.cache/pip), so CI reruns on one machine install
# offline without downloading again.
#
# Usage: scripts/install-cuda-toolchain.sh [--with-cuobjdump] [--with-sanitizer] [--force]
#   --with-cuobjdump  also install cuobjdump (13.2.x; the 13.0 wheel does not exist)
#   --with-sanitizer  also install compute-sanitizer 13.0 (for GPU machines without a toolkit)
#   --force           reinstall even if the stamp says it is up to date
#
# The last line printed on stdout is the CUDA_HOME path (everything else goes to stderr):
#   export CUDA_HOME="$(scripts/install-cuda-toolchain.sh)"
#
# Env: PYTHON (default python3), PIP_CACHE_DIR (default ~/.cache/pip).
set -euo pipefail

# ---- pins ------------------------------------------------------------------------------
BASE_PKGS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
)
CUOBJDUMP_PKG=nvidia-cuda-cuobjdump==13.2.86     # only ships as 13.2+; reads 13.0 cubins
SANITIZER_PKG=nvidia-cuda-sanitizer-api==13.0.85 # compute-sanitizer, for GPU machines
# ----------------------------------------------------------------------------------------

die() { echo "install-cuda-toolchain: error: $*" >&2; exit 1; }
log() { echo "install-cuda-toolchain: $*" >&2; }

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

with_cuobjdump=0
with_sanitizer=0
force=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --with-cuobjdump) with_cuobjdump=1 ;;
    --with-sanitizer) with_sanitizer=1 ;;
    --force) force=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "$script_dir/.." && pwd -P)"
dest="$repo_root/.cuda-toolchain"
cuda_home="$dest/nvidia/cu13"
stamp="$dest/.foil-toolchain-stamp"

wanted=("${BASE_PKGS[@]}")
if [[ $with_cuobjdump -eq 1 ]]; then wanted+=("$CUOBJDUMP_PKG"); fi
if [[ $with_sanitizer -eq 1 ]]; then wanted+=("$SANITIZER_PKG"); fi

# Fast path: nvcc present and the stamp lists every wanted pin (a superset is fine, so a
# plain rerun after --with-cuobjdump does not reinstall).
installed_ok() {
  [[ -x "$cuda_home/bin/nvcc" && -f "$stamp" ]] || return 1
  local p
  for p in "${wanted[@]}"; do
    grep -qxF -- "$p" "$stamp" || return 1
  done
  if [[ $with_cuobjdump -eq 1 ]]; then [[ -x "$cuda_home/bin/cuobjdump" ]] || return 1; fi
  if [[ $with_sanitizer -eq 1 ]]; then [[ -x "$cuda_home/bin/compute-sanitizer" ]] || return 1; fi
  return 0
}

if [[ $force -eq 0 ]] && installed_ok; then
  log "up to date ($dest)"
  echo "$cuda_home"
  exit 0
fi

python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || die "'$python' not found; install Python 3 (or set PYTHON=/path/to/python3)"
"$python" -m pip --version >/dev/null 2>&1 || die "'$python -m pip' does not work; install pip for $python"

# Keep whatever extras an earlier install had (so a later run without flags that had to
# reinstall for a version bump doesn't silently drop cuobjdump/compute-sanitizer).
if [[ -f "$stamp" && $with_cuobjdump -eq 0 ]] && grep -q '^nvidia-cuda-cuobjdump==' "$stamp"; then
  wanted+=("$CUOBJDUMP_PKG")
fi
if [[ -f "$stamp" && $with_sanitizer -eq 0 ]] && grep -q '^nvidia-cuda-sanitizer-api==' "$stamp"; then
  wanted+=("$SANITIZER_PKG")
fi

cache_dir="${PIP_CACHE_DIR:-$HOME/.cache/pip}"
mkdir -p "$cache_dir" "$dest"

# Serialise concurrent runs (two CI jobs on one checkout) when flock is available.
# Everything we create lives inside .cuda-toolchain/, which is git-ignored.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dest/.lock"
  flock 9
  if [[ $force -eq 0 ]] && installed_ok; then   # another run finished it while we waited
    log "up to date ($dest)"
    echo "$cuda_home"
    exit 0
  fi
fi

# pip --target does not merge into an existing nvidia/ folder, so install everything into
# a fresh staging folder and swap it in only once it is complete and works.
staging="$(mktemp -d "$dest/.staging.XXXXXX")"
trap 'rm -rf -- "$staging"' EXIT
pip_log="$dest/.pip-install.log"

# Wheel cache: pip's own HTTP cache is not reliable for this (it stores nothing when the
# index or a proxy sends no-store headers), so keep the pinned wheels themselves in
# <pip cache>/foil-cuda-wheels and only ask the index for wheels not there yet.
wheel_dir="$cache_dir/foil-cuda-wheels"
mkdir -p "$wheel_dir"
arch="$(uname -m)"
missing=()
for p in "${wanted[@]}"; do
  name="${p%%==*}"; ver="${p#*==}"
  compgen -G "$wheel_dir/${name//-/_}-$ver-*_$arch.whl" >/dev/null || missing+=("$p")
done

: >"$pip_log"
if [[ ${#missing[@]} -gt 0 ]]; then
  log "downloading ${missing[*]} into $wheel_dir"
  if ! env -u PIP_NO_CACHE_DIR PIP_DISABLE_PIP_VERSION_CHECK=1 \
      "$python" -m pip download --no-deps --no-input --only-binary=:all: \
        --cache-dir "$cache_dir" -d "$wheel_dir" "${missing[@]}" >>"$pip_log" 2>&1; then
    tail -n 20 "$pip_log" >&2
    die "pip download failed (output above, full log in $pip_log); is the Python package index reachable?"
  fi
else
  log "all wheels cached in $wheel_dir"
fi

log "installing ${wanted[*]}"
if ! env -u PIP_NO_CACHE_DIR PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$python" -m pip install --no-deps --no-input --no-index --find-links "$wheel_dir" \
      --target "$staging" "${wanted[@]}" >>"$pip_log" 2>&1; then
  tail -n 20 "$pip_log" >&2
  die "pip install from $wheel_dir failed (output above, full log in $pip_log)"
fi

staged_home="$staging/nvidia/cu13"
for f in bin/nvcc bin/ptxas nvvm/bin/cicc include/cuda_fp16.h include/cuda_bf16.h \
         lib/libnvrtc.so.13; do
  [[ -e "$staged_home/$f" ]] || die "wheel layout changed: $staged_home/$f missing after install"
done
[[ $with_cuobjdump -eq 0 || -x "$staged_home/bin/cuobjdump" ]] \
  || die "cuobjdump missing from $staged_home/bin after installing $CUOBJDUMP_PKG"
[[ $with_sanitizer -eq 0 || -x "$staged_home/bin/compute-sanitizer" ]] \
  || die "compute-sanitizer missing from $staged_home/bin after installing $SANITIZER_PKG"
"$staged_home/bin/nvcc" --version >/dev/null 2>&1 \
  || die "installed nvcc does not run: $staged_home/bin/nvcc --version failed"

# Swap in: drop the stamp first so an interrupted swap is never taken for a complete
# install, replace the old contents, write the stamp last. nvcc has no absolute paths
# baked in (nvcc.profile uses $(_HERE_)), so moving the tree after installing is fine.
rm -f -- "$stamp"
staging_name="$(basename -- "$staging")"
find "$dest" -mindepth 1 -maxdepth 1 ! -name .lock ! -name .pip-install.log \
  ! -name "$staging_name" -exec rm -rf -- {} +
find "$staging" -mindepth 1 -maxdepth 1 -exec mv -- {} "$dest/" \;
printf '%s\n' "${wanted[@]}" >"$stamp"

log "installed: $("$cuda_home/bin/nvcc" --version | grep -o 'release [0-9.]*, V[0-9.]*')"
echo "$cuda_home"
