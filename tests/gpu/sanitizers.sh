#!/usr/bin/env bash
# compute-sanitizer memcheck, racecheck, synccheck and initcheck over the small sweep of every bespoke
# kernel (tests/gpu/sanitizer_sweep.py: sm80 forward, sm80 backward and its deterministic dQ, sm90a
# forward, and the device-side index check of varlen / paged runs), one sanitizer run per tool.
# Assumes the package is installed (e.g. pip install -e . as tests/gpu/device_session.sh does).
#
#   OUT=dir bash tests/gpu/sanitizers.sh
#
#   1. find compute-sanitizer (PATH, else the newest /usr/local/cuda*/bin); the device, date, versions;
#   2. the warm pass without a sanitizer: compile every kernel in parallel into $ATTNPLAN_CACHE_DIR, then
#      run every case once (sanitizer-warm.log), so that nothing compiles under a sanitizer;
#   3. for each tool of $TOOLS: compute-sanitizer --tool T --error-exitcode 3 --report-api-errors no
#      --kernel-name kns=attn_ python3 tests/gpu/sanitizer_sweep.py  (sanitizer-T.log, sanitizer-T.status),
#      then the tool's planted fault (--canary T, a kernel named attn_sanitizer_canary: proof that the
#      filter and the tool see kernels loaded the way ours are; sanitizer-T-canary.log);
#   4. $OUT/sanitizer.json ({"device", "date", "tools": {T: {"kernels", "errors", ...}}}, made by
#      sanitizer_sweep.py --summarise), to be kept as tests/results/<date>-<device>-sanitizer.json.
#      A timeout or a log without a summary is recorded as errors null with a note, never as 0.
#
# Why the flags: --report-api-errors no: cuda-bindings probes driver entry points with cuGetProcAddress
# at cuInit, and each miss is a host API error, not a kernel's access (tests/gpu/sm90a_ladder.sh).
# --kernel-name kns=attn_ (a substring of the mangled name): every kernel of ours is extern "C" attn_*
# (kernels/sm80/fwd.cu attn_fwd_kernel; kernels/sm80/bwd.cu attn_bwd_preprocess_kernel, attn_bwd_kernel,
# attn_bwd_dq_kernel, attn_bwd_dq_convert_kernel; kernels/sm90a/fwd.cu attn_fwd_kernel;
# kernels/common/index_check.cu attn_index_check), CuPy's are cupy_*: the tools instrument and report
# ours only (initcheck would otherwise flag CuPy's kernels reading pool memory they never wrote).  The
# filter does not reach host API copies, so the sweep copies back only memory it initialised (poisoned
# outputs), and runs no CuPy kernel at all (host-made inputs and poison, copies and memsets only).
# memcheck --padding 512: each array is its own cudaMalloc (the sweep turns CuPy's pool off), and the
# padding makes a read past one array's end an error even where the next allocation follows it.
# memcheck and synccheck --destroy-on-device-error kernel: a fault ends its kernel, not the context, so
# the later cases still run and the log names every failing case.
#
# Environment: OUT (default /tmp/out); TOOLS (default "memcheck racecheck synccheck initcheck");
# SANITIZER_TIMEOUT (seconds per tool, default 150) and MEMCHECK_TIMEOUT / RACECHECK_TIMEOUT /
# SYNCCHECK_TIMEOUT / INITCHECK_TIMEOUT for one tool; WARM_TIMEOUT (300); CANARY=0 leaves out the
# planted faults, CANARY_TIMEOUT (60); SKIP_WARM=1; SANITIZER_FILTER (default kns=attn_; empty: check
# every kernel); MEMCHECK_ARGS, RACECHECK_ARGS, SYNCCHECK_ARGS, INITCHECK_ARGS replace a tool's extra
# flags (e.g. RACECHECK_ARGS="--racecheck-report all", INITCHECK_ARGS="--initcheck-address-space all");
# MEMCHECK_FILTER .. INITCHECK_FILTER replace SANITIZER_FILTER for one tool (initcheck with the filter
# counts memory that CuPy's uninstrumented kernels wrote -- the sm80 backward's d sink_logits sum -- as
# uninitialised when a copy reads it: INITCHECK_FILTER="" instruments every kernel);
# SWEEP_ARGS are passed to the sweep (e.g. "--families sm90a-fwd", "-k paged", "--sm90a-rungs
# default,persistent"); SANITIZER (the compute-sanitizer binary).  Exit status 0 only if every tool of
# $TOOLS passed (0 errors, every case's outputs written, the planted fault seen).
#
# In two device calls (each at most 10 minutes): TOOLS="memcheck synccheck initcheck" and TOOLS=racecheck,
# then merge: python3 tests/gpu/sanitizer_sweep.py --summarise DIR1 DIR2 --output FILE (device, date and
# versions come from each DIR's sanitizer-meta.json).
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export ATTNPLAN_CACHE_DIR="${ATTNPLAN_CACHE_DIR:-/tmp/attnplan-cache}" PYTHONUNBUFFERED=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SWEEP="$HERE/sanitizer_sweep.py"
TOOLS="${TOOLS:-memcheck racecheck synccheck initcheck}"
FILTER="${SANITIZER_FILTER-kns=attn_}"
read -r -a SWEEP_EXTRA <<< "${SWEEP_ARGS:-}"
began=$(date +%s)
say() { echo "$*" | tee -a "$OUT/sanitizers.log"; }
: > "$OUT/sanitizers.log"

SANITIZER="${SANITIZER:-$(command -v compute-sanitizer || ls -d /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | sort -V | tail -1)}"
if [ -z "$SANITIZER" ] || [ ! -x "$SANITIZER" ]; then
  say "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"; exit 2
fi
version=$("$SANITIZER" --version 2>&1 | grep -m 1 -o 'Version [0-9][0-9.]*' | cut -d' ' -f2)
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 \
         | awk -F', ' '{ printf "%s (driver %s)", $1, $2 }')
date=$(date -u +%F)
slug=$(echo "${device:-unknown}" | sed -e 's/ (driver.*//' -e 's/^NVIDIA //' | awk '{ print tolower($1) }')
filter_args=(); [ -n "$FILTER" ] && filter_args=(--kernel-name "$FILTER")
say "device: ${device:-unknown}; compute-sanitizer $version ($SANITIZER); tools: $TOOLS; filter: ${FILTER:-none}"

# The versions and the command, for --summarise (also when the logs of several calls are merged).
SANITIZER_VERSION="$version" DEVICE="${device:-unknown}" DATE="$date" FILTER="$FILTER" TOOLS="$TOOLS" \
SWEEP_ARGS="${SWEEP_ARGS:-}" SANITIZER_PATH="$SANITIZER" python3 - "$OUT/sanitizer-meta.json" <<'EOF'
import json, os, sys
versions = {"compute_sanitizer": os.environ["SANITIZER_VERSION"]}
try:
    import attnplan
    versions["attnplan"] = attnplan.__version__
    from attnplan.backends.nvrtc import compiler
    versions["nvrtc"] = compiler.nvrtc_version()
    versions["kernels_tree"] = compiler._tree_hash(str(compiler.kernels_dir()))[:16]
    import cupy
    versions["cupy"] = cupy.__version__
    versions["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
except Exception as exc:                       # recorded, not fatal: the runs below say more
    versions["error"] = f"{type(exc).__name__}: {exc}"
filter_ = os.environ["FILTER"]
sweep = " ".join(["python3 tests/gpu/sanitizer_sweep.py", os.environ["SWEEP_ARGS"]]).strip()
meta = {"device": os.environ["DEVICE"], "date": os.environ["DATE"], "versions": versions,
        "command": f"compute-sanitizer --tool T --error-exitcode 3 --report-api-errors no"
                   f"{' --kernel-name ' + filter_ if filter_ else ''} [tool flags] {sweep}",
        "filter": filter_, "sanitizer": os.environ["SANITIZER_PATH"]}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=1)
print("versions:", json.dumps(versions))
EOF

if [ "${SKIP_WARM:-0}" != 1 ]; then
  timeout -k 10 "${WARM_TIMEOUT:-300}" python3 "$SWEEP" --warm ${SWEEP_EXTRA[@]+"${SWEEP_EXTRA[@]}"} > "$OUT/sanitizer-warm.log" 2>&1
  warm=$?
  say "warm rc=$warm: $(grep -m 1 '^compiled' "$OUT/sanitizer-warm.log") $(grep '^SWEEP' "$OUT/sanitizer-warm.log" | tail -1 | cut -c1-100) ($(( $(date +%s) - began )) s)"
  if [ $warm -ne 0 ]; then grep -E "FAILED|NOT ALL WRITTEN|failed|Error" "$OUT/sanitizer-warm.log" | head -20 | tee -a "$OUT/sanitizers.log"; fi
fi

for tool in $TOOLS; do
  upper=$(echo "$tool" | tr '[:lower:]' '[:upper:]')
  limit_var="${upper}_TIMEOUT"; limit="${!limit_var:-${SANITIZER_TIMEOUT:-150}}"
  case $tool in
    memcheck)  defaults="--padding 512 --destroy-on-device-error kernel" ;;
    synccheck) defaults="--destroy-on-device-error kernel" ;;
    racecheck|initcheck) defaults="" ;;
    *) say "unknown tool $tool (memcheck racecheck synccheck initcheck)"; continue ;;
  esac
  args_var="${upper}_ARGS"; read -r -a tool_args <<< "${!args_var-$defaults}"
  filter_var="${upper}_FILTER"; tool_filter="${!filter_var-$FILTER}"   # e.g. INITCHECK_FILTER="" (every kernel)
  filter_args=(); [ -n "$tool_filter" ] && filter_args=(--kernel-name "$tool_filter")
  log="$OUT/sanitizer-$tool.log"
  start=$(date +%s)
  timeout -k 15 "$limit" "$SANITIZER" --tool "$tool" --error-exitcode 3 --report-api-errors no \
    ${filter_args[@]+"${filter_args[@]}"} ${tool_args[@]+"${tool_args[@]}"} python3 "$SWEEP" ${SWEEP_EXTRA[@]+"${SWEEP_EXTRA[@]}"} > "$log" 2>&1
  rc=$?
  echo "rc=$rc seconds=$(( $(date +%s) - start )) timeout=$limit" > "$OUT/sanitizer-$tool.status"
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1 | sed 's/^=* *//')
  say "$tool rc=$rc in $(( $(date +%s) - start )) s (limit $limit): ${summary:-no summary} | $(grep '^SWEEP' "$log" | tail -1 | cut -c1-120)"
  grep -E "FAILED|NOT ALL WRITTEN" "$log" | head -10 | tee -a "$OUT/sanitizers.log"
  if [ "${CANARY:-1}" = 1 ]; then
    canary="$OUT/sanitizer-$tool-canary.log"
    start=$(date +%s)
    timeout -k 15 "${CANARY_TIMEOUT:-60}" "$SANITIZER" --tool "$tool" --error-exitcode 3 --report-api-errors no \
      ${filter_args[@]+"${filter_args[@]}"} ${tool_args[@]+"${tool_args[@]}"} python3 "$SWEEP" --canary "$tool" > "$canary" 2>&1
    rc=$?
    echo "rc=$rc seconds=$(( $(date +%s) - start )) timeout=${CANARY_TIMEOUT:-60}" > "$OUT/sanitizer-$tool-canary.status"
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$canary" | tail -1 | sed 's/^=* *//')
    say "$tool canary rc=$rc: ${summary:-no summary} (the planted fault must be reported)"
  fi
done

python3 "$SWEEP" --summarise "$OUT" --output "$OUT/sanitizer.json" --tools "$TOOLS" 2>&1 | tee -a "$OUT/sanitizers.log"
passed=${PIPESTATUS[0]}
say "$(( $(date +%s) - began )) s in all; keep it as tests/results/$date-${slug:-unknown}-sanitizer.json (with the logs)"
exit "$passed"
