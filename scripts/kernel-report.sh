#!/usr/bin/env bash
# Compile every kernels/*.cu offline with nvcc (no GPU needed) and report per-kernel
# resource usage from ptxas: registers, static shared memory, stack frame, spills.
#
# Usage: scripts/kernel-report.sh [--out FILE] [--kernels-dir DIR] [-j N] [-q] [FILE.cu ...]
#   --out FILE         report path (default <repo>/target/kernel-report.txt)
#   --kernels-dir DIR  where the .cu files are (default <repo>/kernels)
#   -j N               parallel nvcc jobs (default 2)
#   -q                 don't echo the report to stdout
#   FILE.cu ...        report on these files instead of <kernels-dir>/*.cu
#
# Each file is compiled to cubin for sm_80 and sm_90a
#   nvcc -cubin -arch=<arch> -Xptxas -v -O3 --std=c++17 -lineinfo -I<kernels-dir>
# and to PTX for sm_80 and sm_90 (-ptx) to check the PTX path too.
#
# Fails (exit 1, one line per offender on stderr) if a file does not compile or a kernel
# spills (spill stores or loads > 0). A deliberate spill is allowed by a line in that
# kernel's .cu file (name as ptxas prints it: the extern "C" name, or the mangled one):
#   // foil: allow-spill <kernel_name> <reason...>
# Allowed spills and their reasons are listed in the report.
#
# nvcc: $NVCC, else $CUDA_HOME/bin/nvcc, else <repo>/.cuda-toolchain/nvidia/cu13/bin/nvcc
# (scripts/install-cuda-toolchain.sh), else nvcc on PATH.
# Extra nvcc flags: $KERNEL_REPORT_NVCC_FLAGS (whitespace-separated).
# Exit: 0 clean, 1 compile errors / unallowed spills / bad markers, 2 usage or setup error.
set -euo pipefail

CUBIN_ARCHS=(sm_80 sm_90a)
PTX_ARCHS=(sm_80 sm_90)
BASE_FLAGS=(-Xptxas -v -O3 --std=c++17 -lineinfo)

die() { echo "kernel-report: error: $*" >&2; exit 2; }

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "$script_dir/.." && pwd -P)"

out="$repo_root/target/kernel-report.txt"
kernels_dir="$repo_root/kernels"
jobs=2
quiet=0
files=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) [[ $# -ge 2 ]] || die "--out needs a file"; out="$2"; shift ;;
    --out=*) out="${1#--out=}" ;;
    --kernels-dir) [[ $# -ge 2 ]] || die "--kernels-dir needs a folder"; kernels_dir="$2"; shift ;;
    --kernels-dir=*) kernels_dir="${1#--kernels-dir=}" ;;
    -j) [[ $# -ge 2 ]] || die "-j needs a number"; jobs="$2"; shift ;;
    -j*) jobs="${1#-j}" ;;
    -q|--quiet) quiet=1 ;;
    -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) files+=("$1") ;;
  esac
  shift
done
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "-j wants a positive integer, got '$jobs'"

# ---- find nvcc -------------------------------------------------------------------------
nvcc=""
if [[ -n "${NVCC:-}" ]]; then
  nvcc="$(command -v -- "$NVCC" 2>/dev/null || true)"
  [[ -n "$nvcc" && -x "$nvcc" ]] || die "NVCC='$NVCC' is not an executable"
elif [[ -n "${CUDA_HOME:-}" && -x "${CUDA_HOME}/bin/nvcc" ]]; then
  nvcc="$CUDA_HOME/bin/nvcc"
elif [[ -x "$repo_root/.cuda-toolchain/nvidia/cu13/bin/nvcc" ]]; then
  nvcc="$repo_root/.cuda-toolchain/nvidia/cu13/bin/nvcc"
elif command -v nvcc >/dev/null 2>&1; then
  nvcc="$(command -v nvcc)"
else
  die "no nvcc found (\$NVCC, \$CUDA_HOME/bin, .cuda-toolchain, PATH); run scripts/install-cuda-toolchain.sh"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed to parse ptxas output"

# ---- collect sources -------------------------------------------------------------------
if [[ ${#files[@]} -eq 0 ]]; then
  [[ -d "$kernels_dir" ]] || die "kernels folder '$kernels_dir' does not exist"
  shopt -s nullglob
  files=("$kernels_dir"/*.cu)
  shopt -u nullglob
fi
for f in "${files[@]}"; do
  [[ -f "$f" ]] || die "no such file: $f"
done

extra_flags=()
if [[ -n "${KERNEL_REPORT_NVCC_FLAGS:-}" ]]; then
  read -r -a extra_flags <<<"$KERNEL_REPORT_NVCC_FLAGS"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kernel-report.XXXXXX")"
trap 'rm -rf -- "$tmp"' EXIT

# ---- compile (in parallel) -------------------------------------------------------------
# compile_one IDX MODE ARCH SRC: writes $tmp/IDX.ARCH.MODE.{log,rc}; always returns 0.
compile_one() {
  local idx="$1" mode="$2" arch="$3" src="$4" base rc=0
  base="$tmp/$idx.$arch.$mode"
  "$nvcc" "-$mode" "-arch=$arch" "${BASE_FLAGS[@]}" -I "$(dirname -- "$src")" \
    ${extra_flags[@]+"${extra_flags[@]}"} -o "$base.out" "$src" >"$base.log" 2>&1 || rc=$?
  echo "$rc" >"$base.rc"
}

manifest="$tmp/manifest.tsv"
: >"$manifest"
running=0
idx=0
for src in ${files[@]+"${files[@]}"}; do
  display="$src"
  abs="$(cd -- "$(dirname -- "$src")" && pwd -P)/$(basename -- "$src")"
  if [[ "$abs" == "$repo_root/"* ]]; then display="${abs#"$repo_root/"}"; fi
  for mode_arch in "${CUBIN_ARCHS[@]/#/cubin:}" "${PTX_ARCHS[@]/#/ptx:}"; do
    mode="${mode_arch%%:*}"; arch="${mode_arch#*:}"
    printf '%s\t%s\t%s\t%s\t%s\n' "$display" "$abs" "$mode" "$arch" "$tmp/$idx.$arch.$mode" >>"$manifest"
    compile_one "$idx" "$mode" "$arch" "$abs" &
    running=$((running + 1))
    if [[ $running -ge $jobs ]]; then
      wait -n || true
      running=$((running - 1))
    fi
  done
  idx=$((idx + 1))
done
wait

mkdir -p "$(dirname -- "$out")"
nvcc_version="$("$nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*, V[0-9.]*' || echo unknown)"

# ---- parse and report ------------------------------------------------------------------
set +e
python3 - "$manifest" "$out" "$nvcc" "$nvcc_version" "${BASE_FLAGS[*]} ${extra_flags[*]:-}" <<'PY'
import re
import sys
import datetime

manifest, out_path, nvcc, nvcc_version, flags = sys.argv[1:6]

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
PROPS = re.compile(r"Function properties for (\S+)")
STACK = re.compile(r"(\d+) bytes stack frame")
SPILL_ST = re.compile(r"(\d+) bytes spill stores")
SPILL_LD = re.compile(r"(\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")
SMEM = re.compile(r"(\d+) bytes smem")
MARKER = re.compile(r"^\s*//\s*foil:\s*allow-spill\b(.*)$")


def parse_ptxas(text):
    """Return an ordered list of dicts, one per function ptxas reported on.

    Entry functions ('Compiling entry function') get registers/smem from their 'Used'
    line; non-inlined device functions only have a 'Function properties' block."""
    funcs = {}
    order = []
    entry = None      # entry function currently being compiled
    props_for = None  # function the next 'N bytes stack frame' line belongs to

    def get(name, kind):
        if name not in funcs:
            funcs[name] = dict(name=name, kind=kind, regs=None, smem=0, stack=0,
                               spill_st=0, spill_ld=0)
            order.append(name)
        return funcs[name]

    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            entry = m.group(1)
            get(entry, "entry")
            props_for = None
            continue
        m = PROPS.search(line)
        if m:
            props_for = m.group(1)
            get(props_for, "entry" if props_for == entry else "device fn")
            continue
        if props_for and STACK.search(line):
            f = funcs[props_for]
            f["stack"] = int(STACK.search(line).group(1))
            if SPILL_ST.search(line):
                f["spill_st"] = int(SPILL_ST.search(line).group(1))
            if SPILL_LD.search(line):
                f["spill_ld"] = int(SPILL_LD.search(line).group(1))
            props_for = None
            continue
        m = REGS.search(line)
        if m and entry:
            f = funcs[entry]
            f["regs"] = int(m.group(1))
            sm = SMEM.search(line)
            f["smem"] = int(sm.group(1)) if sm else 0
    return [funcs[n] for n in order]


def read(path):
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def compiler_errors(log):
    """Compiler output minus ptxas's -v chatter."""
    keep = [l for l in log.splitlines()
            if not l.startswith("ptxas info") and not STACK.search(l)]
    return "\n".join(keep).strip() or log.strip() or "(no output)"


jobs = []
with open(manifest) as fh:
    for line in fh:
        display, src, mode, arch, base = line.rstrip("\n").split("\t")
        jobs.append(dict(display=display, src=src, mode=mode, arch=arch,
                         log=read(base + ".log"), rc=int(read(base + ".rc").strip() or 1)))

# allow-spill markers, per source file
allow = {}         # (display, kernel) -> reason
marker_errors = []
for display, src in sorted({(j["display"], j["src"]) for j in jobs}):
    for lineno, line in enumerate(read(src).splitlines(), 1):
        m = MARKER.match(line)
        if not m:
            continue
        parts = m.group(1).split(None, 1)
        if len(parts) < 2 or not parts[1].strip():
            marker_errors.append(f"{display}:{lineno}: allow-spill marker needs a kernel name "
                                 f"and a reason: '// foil: allow-spill <kernel_name> <reason...>'")
            continue
        allow[(display, parts[0])] = (parts[1].strip(), lineno)

rows, compile_fail, ptx_rows, spills, allowed, warnings = [], [], [], [], [], []
seen = set()
for j in jobs:
    if j["rc"] != 0:
        compile_fail.append(j)
        if j["mode"] == "ptx":
            ptx_rows.append((j["arch"], j["display"], "FAILED"))
        continue
    if j["mode"] == "ptx":
        ptx_rows.append((j["arch"], j["display"], "ok"))
        continue
    for l in j["log"].splitlines():
        if "warning" in l.lower():
            warnings.append(f"{j['arch']} {j['display']}: {l.strip()}")
    for f in parse_ptxas(j["log"]):
        seen.add((j["display"], f["name"]))
        status = "ok"
        if f["spill_st"] or f["spill_ld"]:
            key = (j["display"], f["name"])
            if key in allow:
                status = "allowed-spill"
                allowed.append((j, f, allow[key][0]))
            else:
                status = "SPILL"
                spills.append((j, f))
        rows.append([j["arch"], j["display"], f["name"] + ("" if f["kind"] == "entry" else " (device fn)"),
                     "-" if f["regs"] is None else str(f["regs"]), str(f["smem"]), str(f["stack"]),
                     str(f["spill_st"]), str(f["spill_ld"]), status])

stale = [f"{d}:{ln}: allow-spill marker names '{k}', which ptxas did not report in this file"
         for (d, k), (_, ln) in sorted(allow.items()) if (d, k) not in seen
         and not any(j["display"] == d and j["rc"] != 0 for j in jobs)]


def table(header, body):
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    numeric = {i for i, h in enumerate(header) if h.endswith(")") or h == "REGS"}
    def fmt(r):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]


files = sorted({j["display"] for j in jobs})
L = []
L.append("foil kernel report")
L.append(f"generated : {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
L.append(f"nvcc      : {nvcc} ({nvcc_version})")
L.append(f"flags     : -cubin -arch=<arch> {flags.strip()}")
L.append(f"files     : {len(files)}" + (f"  ({', '.join(files)})" if files else ""))
L.append("")
if not jobs:
    L.append("no .cu files found; nothing to compile")
else:
    L.append("Resource usage (bytes; SMEM = static shared memory, dynamic smem is not included)")
    L.append("")
    rows.sort(key=lambda r: (r[0], r[1], r[2]))  # arch, file, kernel: stable diffs
    L += table(["ARCH", "FILE", "KERNEL", "REGS", "SMEM(B)", "STACK(B)",
                "SPILL_ST(B)", "SPILL_LD(B)", "STATUS"], rows) if rows else ["(no kernels)"]
    L.append("")
    L.append("PTX path (-ptx)")
    width = max(len(d) for d in files)
    for display in files:
        st = "  ".join(f"{a} {s}" for a, d, s in sorted(ptx_rows) if d == display)
        L.append(f"  {display:<{width}}  {st}")
L.append("")
L.append("Allowed spills")
if allowed:
    for j, f, reason in allowed:
        L.append(f"  {j['arch']:<7} {j['display']}: {f['name']} ({f['spill_st']} B stores, "
                 f"{f['spill_ld']} B loads): {reason}")
else:
    L.append("  none")
if warnings or stale:
    L.append("")
    L.append("Warnings")
    L += [f"  {w}" for w in warnings + stale]

problems = []  # one line per offending file / kernel / marker, also printed to stderr
failed_files = {}
for j in compile_fail:
    failed_files.setdefault(j["display"], []).append(f"{j['mode']} {j['arch']}")
for display, what in failed_files.items():
    problems.append(f"COMPILE ERROR {display} ({', '.join(what)})")
spilled = {}
for j, f in spills:
    spilled.setdefault((j["display"], f["name"]), []).append(
        f"{j['arch']}: {f['spill_st']} B spill stores, {f['spill_ld']} B spill loads")
for (display, name), what in spilled.items():
    problems.append(f"SPILL {display}: {name} ({'; '.join(what)}); fix it or mark it "
                    f"'// foil: allow-spill {name} <reason>'")
problems += [f"BAD MARKER {e}" for e in marker_errors]

L.append("")
if problems:
    L.append(f"RESULT: FAIL ({len(problems)} problem(s))")
    L += [f"  {p}" for p in problems]
    shown = set()
    for j in compile_fail:  # same error on every arch: show it once
        err = compiler_errors(j["log"])
        if (j["display"], err) not in shown:
            shown.add((j["display"], err))
            L.append("")
            L.append(f"--- compiler output: {j['display']} ({j['mode']} {j['arch']}) ---")
            L.append(err)
else:
    L.append("RESULT: OK")

with open(out_path, "w") as fh:
    fh.write("\n".join(L) + "\n")

# stderr: one line per offender, then the compiler's errors (deduplicated across archs)
shown = set()
for p in problems:
    print(f"kernel-report: {p}", file=sys.stderr)
for j in compile_fail:
    err = compiler_errors(j["log"])
    if (j["display"], err) in shown:
        continue
    shown.add((j["display"], err))
    print(f"--- {j['display']} ({j['mode']} {j['arch']}):", file=sys.stderr)
    lines = err.splitlines()
    print("\n".join(lines[:40] + (["... (see report)"] if len(lines) > 40 else [])), file=sys.stderr)
sys.exit(1 if problems else 0)
PY
rc=$?
set -e

if [[ $quiet -eq 0 ]]; then cat -- "$out"; fi
echo "kernel-report: wrote $out" >&2
exit "$rc"
