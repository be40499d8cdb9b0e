#!/usr/bin/env bash
# One-shot GPU validation for a machine WITH an NVIDIA GPU (and ideally the CUDA toolkit).
# Runs every stage even when earlier ones fail, writes one Markdown report plus a log per
# stage, and exits non-zero if any stage failed.
#
# Stages:
#   gpu        nvidia-smi summary
#   build      cargo build --release --all-targets
#   test       cargo test --release --no-fail-fast -- --include-ignored
#   test-bins  locate the test binaries of $TEST_TARGETS (cargo test --no-run, JSON)
#   memcheck   compute-sanitizer --tool memcheck  --error-exitcode 1 <bin> --include-ignored
#   racecheck  compute-sanitizer --tool racecheck --error-exitcode 1 <bin> --include-ignored
#   bench      cargo bench --bench ops --bench models (ops and whole models, f16 and f32)
#   torch      scripts/bench_torch.py --device cuda --dtype f16: PyTorch + diffusers at the
#              models benchmark's shapes, in the same run, and its training steps (--train,
#              AMP bf16, channels_last) (SKIP without torch and diffusers)
#
# Usage: scripts/gpu-check.sh [--out DIR] [--test-target NAME]... [--bench NAME]
#                             [--skip STAGE[,STAGE]] [--timeout SECS] [-v]
#   --out DIR          report folder (default <repo>/target/gpu-check); if $OUT is set the
#                      report folder is also copied to $OUT/gpu-check
#   --test-target NAME test target(s) to run under compute-sanitizer (repeatable;
#                      default $GPU_CHECK_TEST_TARGETS or the CUDA op and model tests)
#   --bench NAMES      bench targets, space-separated (default $GPU_CHECK_BENCH or "ops models")
#   --skip STAGES      comma-separated stages to skip (reported as SKIP)
#   --timeout SECS     per-command time limit (default $GPU_CHECK_TIMEOUT or none)
#   -v, --verbose      stream every command's output to the console too
#
# compute-sanitizer is looked up on PATH, then $CUDA_HOME/bin, /usr/local/cuda/bin and
# <repo>/.cuda-toolchain/nvidia/cu13/bin (install-cuda-toolchain.sh --with-sanitizer).
# If it is missing the sanitizer stages are reported as SKIP and the rest still runs.
# Extra sanitizer flags: $GPU_CHECK_SANITIZER_FLAGS (e.g. "--leak-check full").
set -uo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "$script_dir/.." && pwd -P)"

die() { echo "gpu-check: error: $*" >&2; exit 2; }

out_dir="$repo_root/target/gpu-check"
read -r -a test_targets <<<"${GPU_CHECK_TEST_TARGETS:-cuda_ops cuda_grad_conv_pool cuda_grad_norm_loss cuda_grad_attention grad_elementwise optim training_fixtures schedulers clip_text resnet unet vae}"
read -r -a benches <<<"${GPU_CHECK_BENCH:-ops models}"
stage_timeout="${GPU_CHECK_TIMEOUT:-0}"
verbose=0
skip=","
custom_targets=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) [[ $# -ge 2 ]] || die "--out needs a folder"; out_dir="$2"; shift ;;
    --out=*) out_dir="${1#--out=}" ;;
    --test-target) [[ $# -ge 2 ]] || die "--test-target needs a name"
      [[ $custom_targets -eq 1 ]] || test_targets=()
      custom_targets=1; test_targets+=("$2"); shift ;;
    --bench) [[ $# -ge 2 ]] || die "--bench needs names"; read -r -a benches <<<"$2"; shift ;;
    --skip) [[ $# -ge 2 ]] || die "--skip needs stage names"; skip+="$2,"; shift ;;
    --timeout) [[ $# -ge 2 ]] || die "--timeout needs seconds"; stage_timeout="$2"; shift ;;
    -v|--verbose) verbose=1 ;;
    -h|--help) sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ "$stage_timeout" =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds, got '$stage_timeout'"
[[ ${#test_targets[@]} -gt 0 ]] || die "no test targets given"
for s in ${skip//,/ }; do
  case "$s" in gpu|build|test|test-bins|memcheck|racecheck|bench|torch) ;;
    *) die "unknown stage '$s' in --skip" ;; esac
done

mkdir -p "$out_dir" || die "cannot create $out_dir"
out_dir="$(cd -- "$out_dir" && pwd -P)"
stages=(gpu build test test-bins memcheck racecheck bench torch)
for s in "${stages[@]}"; do rm -f -- "$out_dir/$s.log"; done
rm -f -- "$out_dir/report.md" "$out_dir/test-bins.txt" "$out_dir/test-bins.json"
cd -- "$repo_root" || die "cannot cd to $repo_root"

# ---- environment -----------------------------------------------------------------------
find_tool() { # find_tool NAME: PATH, $CUDA_HOME/bin, /usr/local/cuda/bin, repo toolchain
  local c
  c="$(command -v "$1" 2>/dev/null)" && [[ -x "$c" ]] && { echo "$c"; return 0; }
  for c in ${CUDA_HOME:+"$CUDA_HOME/bin/$1"} ${CUDA_PATH:+"$CUDA_PATH/bin/$1"} \
           "/usr/local/cuda/bin/$1" "$repo_root/.cuda-toolchain/nvidia/cu13/bin/$1"; do
    [[ -x "$c" ]] && { echo "$c"; return 0; }
  done
  return 1
}
sanitizer="$(find_tool compute-sanitizer || true)"
nvcc="$(find_tool nvcc || true)"

# Let the crate's run-time loading of NVRTC/cuBLAS find the toolkit's libraries.
if [[ -z "${CUDA_HOME:-}" ]]; then
  for c in /usr/local/cuda "$repo_root/.cuda-toolchain/nvidia/cu13"; do
    if [[ -d "$c/lib64" || -d "$c/lib" ]]; then export CUDA_HOME="$c"; break; fi
  done
fi
if [[ -n "${CUDA_HOME:-}" ]]; then
  for d in "$CUDA_HOME/lib" "$CUDA_HOME/lib64"; do
    [[ -d "$d" ]] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
fi

# ---- stage bookkeeping -----------------------------------------------------------------
S_NAME=(); S_STATUS=(); S_SECS=(); S_CMD=(); S_NOTE=()
record() { # record NAME STATUS SECS CMD NOTE
  S_NAME+=("$1"); S_STATUS+=("$2"); S_SECS+=("$3"); S_CMD+=("$4"); S_NOTE+=("$5")
  local line="    $2 ($3s)${5:+: $5}"
  echo "$line"
  if [[ "$2" == FAIL && $verbose -eq 0 && -s "$out_dir/$1.log" ]]; then
    echo "    last lines of $out_dir/$1.log:"
    tail -n 15 "$out_dir/$1.log" | sed 's/^/      | /'
  fi
}
skipped() { [[ "$skip" == *",$1,"* ]]; }

# run_cmd CMD...: run with the optional time limit (not for shell functions)
run_cmd() {
  if [[ "$stage_timeout" -gt 0 && "$(type -t "$1")" != function ]]; then
    timeout -k 30 "$stage_timeout" "$@"
  else
    "$@"
  fi
}

# run_stage NAME CMD...: run CMD with output to NAME.log and record PASS/FAIL.
run_stage() {
  local name="$1"; shift
  local log="$out_dir/$name.log" start=$SECONDS rc note="" desc="${DESC:-$*}"
  echo "==> [$name] $desc"
  if skipped "$name"; then record "$name" SKIP 0 "$desc" "skipped by --skip"; return 0; fi
  printf '$ %s\n\n' "$desc" >"$log"
  if [[ $verbose -eq 1 || "${TEE:-0}" -eq 1 ]]; then
    run_cmd "$@" </dev/null 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
  else
    run_cmd "$@" </dev/null >>"$log" 2>&1
    rc=$?
  fi
  if [[ $rc -eq 0 ]]; then
    record "$name" PASS $((SECONDS - start)) "$desc" ""
  else
    note="exit $rc"
    if [[ $rc -eq 124 && "$stage_timeout" -gt 0 ]]; then
      note="timed out after ${stage_timeout}s"
    elif [[ $name == memcheck || $name == racecheck ]]; then
      [[ $rc -eq 1 ]] && note="compute-sanitizer reported errors" \
        || note="tests failed or crashed under compute-sanitizer (exit $rc)"
    fi
    record "$name" FAIL $((SECONDS - start)) "$desc" "$note"
  fi
}

# ---- stages ----------------------------------------------------------------------------
gpu_summary() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "nvidia-smi not found on PATH: no NVIDIA driver on this machine?"
    return 127
  fi
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,utilization.gpu,compute_cap \
    --format=csv 2>/dev/null || nvidia-smi -L || return $?
  echo
  nvidia-smi
}

# Test binaries of the wanted targets, as "NAME<TAB>PATH" lines in test-bins.txt.
find_test_bins() {
  local json="$out_dir/test-bins.json"
  echo "targets wanted: ${test_targets[*]}"
  cargo test --release --no-run --message-format=json >"$json" || return $?
  python3 - "$json" "${test_targets[@]}" >"$out_dir/test-bins.txt" <<'PY' || return $?
import json
import sys

path, wanted = sys.argv[1], set(sys.argv[2:])
found = {}
with open(path) as fh:
    for line in fh:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not (msg.get("profile") or {}).get("test"):
            continue
        name = (msg.get("target") or {}).get("name")
        if name in wanted:
            found.setdefault(name, msg["executable"])
for name in sorted(found):
    print(f"{name}\t{found[name]}")
missing = sorted(wanted - set(found))
if missing:
    print("no test binary for target(s): " + ", ".join(missing)
          + " (is there a tests/<name>.rs?)", file=sys.stderr)
    sys.exit(1)
PY
  echo "test binaries:"
  cat "$out_dir/test-bins.txt"
}

# sanitize TOOL: run every located test binary under compute-sanitizer --tool TOOL.
sanitize() {
  local tool="$1" name bin rc=0 r extra=()
  read -r -a extra <<<"${GPU_CHECK_SANITIZER_FLAGS:-}"
  while IFS=$'\t' read -r name bin; do
    [[ -n "$bin" ]] || continue
    echo "===== $tool: $name ($bin)"
    # cargo test runs test binaries from the package root with CARGO_MANIFEST_DIR set.
    CARGO_MANIFEST_DIR="$repo_root" run_cmd "$sanitizer" --tool "$tool" --error-exitcode 1 \
      ${extra[@]+"${extra[@]}"} "$bin" --include-ignored --test-threads=1
    r=$?
    case $r in
      0) echo "===== $tool: $name: clean" ;;
      1) echo "===== $tool: $name: exit 1: compute-sanitizer reported errors" ;;
      *) echo "===== $tool: $name: exit $r: the tests failed or crashed under compute-sanitizer" ;;
    esac
    if [[ $r -eq 1 || $rc -eq 0 ]]; then rc=$r; fi  # sanitizer errors win
  done <"$out_dir/test-bins.txt"
  return $rc
}

sanitizer_stage() {
  local tool="$1"
  if skipped "$tool"; then
    echo "==> [$tool] compute-sanitizer --tool $tool"
    record "$tool" SKIP 0 "compute-sanitizer --tool $tool" "skipped by --skip"
  elif [[ -z "$sanitizer" ]]; then
    echo "==> [$tool] compute-sanitizer --tool $tool"
    record "$tool" SKIP 0 "compute-sanitizer --tool $tool" \
      "compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin, .cuda-toolchain); NOT checked"
  elif [[ ! -s "$out_dir/test-bins.txt" ]]; then
    echo "==> [$tool] compute-sanitizer --tool $tool"
    record "$tool" FAIL 0 "compute-sanitizer --tool $tool" "no test binaries (see test-bins stage)"
  else
    DESC="compute-sanitizer --tool $tool --error-exitcode 1 <${test_targets[*]}> --include-ignored --test-threads=1" \
      run_stage "$tool" sanitize "$tool"
  fi
}

started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
t0=$SECONDS
echo "gpu-check: repo $repo_root, report in $out_dir"
: >"$out_dir/test-bins.txt"
TEE=1 DESC="nvidia-smi" run_stage gpu gpu_summary
run_stage build cargo build --release --all-targets
run_stage test cargo test --release --no-fail-fast -- --include-ignored
DESC="cargo test --release --no-run --message-format=json (targets: ${test_targets[*]})" \
  run_stage test-bins find_test_bins
sanitizer_stage memcheck
sanitizer_stage racecheck
bench_args=()
for b in "${benches[@]}"; do bench_args+=(--bench "$b"); done
run_stage bench cargo bench "${bench_args[@]}"
torch_bench() {
  if ! python3 -c "import torch, diffusers, transformers, torchvision" 2>/dev/null; then
    echo "python3 with torch, diffusers, transformers and torchvision not found: PyTorch rows not measured"
    return 0
  fi
  python3 scripts/bench_torch.py --device cuda --dtype f16 && python3 scripts/bench_torch.py --device cuda --dtype f32 \
    && python3 scripts/bench_torch.py --device cuda --train --dtype bf16
}
DESC="scripts/bench_torch.py --device cuda (f16, f32, --train bf16)" run_stage torch torch_bench

# ---- report ----------------------------------------------------------------------------
failed=()
for i in "${!S_NAME[@]}"; do
  [[ "${S_STATUS[$i]}" == FAIL ]] && failed+=("${S_NAME[$i]}")
done
overall=PASS
[[ ${#failed[@]} -gt 0 ]] && overall=FAIL

# Lines worth seeing before the tail, per stage.
key_lines() {
  local pat
  case "$1" in
    test) pat='^ +(Running|Doc-tests) |^test result:|^test .* FAILED$|panicked at|^error(\[|:)' ;;
    memcheck|racecheck) pat='ERROR SUMMARY|RACECHECK SUMMARY|^===== |^=+ (Invalid|Race|Error|Program hit)' ;;
    build|test-bins) pat='^(error|warning: unused)' ;;
    bench) pat='^error|panicked at' ;;
    *) return 0 ;;
  esac
  grep -E "$pat" "$out_dir/$1.log" 2>/dev/null | head -n 40
}

version_of() { "$@" 2>/dev/null | grep -m1 -E '[0-9]+\.[0-9]+' || echo "not found"; }

report="$out_dir/report.md"
{
  echo "# foil GPU check: $overall"
  echo
  echo "- started: $started, took $((SECONDS - t0))s"
  echo "- host: $(hostname 2>/dev/null || echo unknown)"
  echo "- repo: \`$repo_root\`"
  echo "- cargo: $(version_of cargo --version)"
  echo "- nvcc: ${nvcc:-not found}${nvcc:+ ($(version_of "$nvcc" --version | sed 's/^.*release/release/'))}"
  echo "- compute-sanitizer: ${sanitizer:-**not found** (memcheck/racecheck not run)}"
  echo "- CUDA_HOME: ${CUDA_HOME:-unset}"
  echo "- sanitizer test targets: ${test_targets[*]}"
  echo
  echo "## GPU"
  echo
  echo '````'
  if [[ -s "$out_dir/gpu.log" ]]; then
    sed -n '3,/^$/p' "$out_dir/gpu.log" | sed '/^$/d'
  else
    echo "(gpu stage skipped)"
  fi
  echo '````'
  echo
  echo "## Stages"
  echo
  echo "| stage | result | time | command | note | log |"
  echo "|---|---|---|---|---|---|"
  for i in "${!S_NAME[@]}"; do
    n="${S_NAME[$i]}"
    log="-"; [[ -f "$out_dir/$n.log" ]] && log="[$n.log]($n.log)"
    echo "| $n | **${S_STATUS[$i]}** | ${S_SECS[$i]}s | \`${S_CMD[$i]//|/\\|}\` | ${S_NOTE[$i]//|/\\|} | $log |"
  done
  echo
  if [[ $overall == PASS ]]; then
    echo "All stages passed (SKIP is not a pass: check the notes)."
  else
    echo "**Failed stages: ${failed[*]}**"
  fi
  for i in "${!S_NAME[@]}"; do
    n="${S_NAME[$i]}"
    echo
    echo "## $n: ${S_STATUS[$i]}"
    echo
    echo "\`${S_CMD[$i]}\`${S_NOTE[$i]:+ (${S_NOTE[$i]})}"
    [[ -f "$out_dir/$n.log" ]] || continue
    keys="$(key_lines "$n")"
    if [[ -n "$keys" ]]; then
      echo
      echo "Key lines:"
      echo
      echo '````'
      echo "$keys"
      echo '````'
    fi
    echo
    echo "Last 40 lines of \`$n.log\`:"
    echo
    echo '````'
    tail -n 40 "$out_dir/$n.log"
    echo '````'
  done
} >"$report"

if [[ -n "${OUT:-}" ]] && mkdir -p "$OUT/gpu-check" \
   && [[ "$(cd -- "$OUT/gpu-check" && pwd -P)" != "$out_dir" ]]; then
  if cp -- "$out_dir"/report.md "$out_dir"/*.log "$out_dir"/test-bins.txt "$OUT/gpu-check/" 2>/dev/null; then
    echo "gpu-check: copied report to $OUT/gpu-check/"
  else
    echo "gpu-check: warning: could not copy the report to \$OUT=$OUT" >&2
  fi
fi

echo
echo "gpu-check: $overall${failed[*]:+ (failed: ${failed[*]})}; report: $report"
[[ $overall == PASS ]]
