#!/usr/bin/env bash
# The sm90a forward's GPU ladder, in one call on the lent H200 (from the repository root):
#   1. install (the carried .whl wheels, the package editable), the device and NVRTC versions;
#   2. compile every kernel of the ladder in parallel (tests/gpu/sm90a_warm.py);
#   3. the correctness ladder, simplest case first, against the float64 reference with NaN-poisoned
#      outputs and the 2x rule (tests/gpu/test_sm90a_gpu.py, cases in sm90a_cases.py), stopping at
#      the first failing case and printing it;
#   4. if every case passed: compute-sanitizer memcheck on the small cases (tests/gpu/sm90a_memcheck.py);
#   5. if every case passed: timing against cuDNN and PyTorch SDPA flash
#      (attnplan bench, ATTNPLAN_UNVERIFIED=nvrtc.sm90a).
# Logs under $OUT (7 files): ladder.log (summary), pytest.log, cases.jsonl (one line per case),
# memcheck.log, bench.log, bench.json, bench.png.  Stage limits keep the whole under ~3 minutes:
# LADDER_TIMEOUT, MEMCHECK_TIMEOUT, BENCH_TIMEOUT (seconds); BENCH_HEAD_DIMS, BENCH_SEQLENS.  Exit status: 0 only if every stage passed.
#
#   bash tests/gpu/sm90a_ladder.sh            (the device tool: carry .whl)
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export ATTNPLAN_CACHE_DIR="${ATTNPLAN_CACHE_DIR:-/tmp/attnplan-cache}" PYTHONUNBUFFERED=1
LOG="$OUT/ladder.log"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
began=$(date +%s)
elapsed() { echo "$(( $(date +%s) - began )) s"; }

{
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-deps --no-build-isolation --no-compile -e .
} > "$OUT/install.tmp" 2>&1 || { say "install failed:"; tail -20 "$OUT/install.tmp" | tee -a "$LOG"; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
say "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
say "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
python3 -c "import attnplan, cupy; from attnplan.backends.nvrtc import compiler; \
print('attnplan', attnplan.__version__, 'cupy', cupy.__version__, 'nvrtc', compiler.nvrtc_version(), \
'kernels tree', compiler._tree_hash(str(compiler.kernels_dir()))[:16])" 2>&1 | tee -a "$LOG"
say "installed: $(elapsed)"

(cd tests/gpu && timeout 90 python3 sm90a_warm.py 90) > "$OUT/warm.tmp" 2>&1
warm=$?
tail -3 "$OUT/warm.tmp" | tee -a "$LOG"
say "warm rc=$warm: $(elapsed)"
if [ $warm -ne 0 ]; then grep -i -m 20 "failed\|error" "$OUT/warm.tmp" | tee -a "$LOG"; fi

# A hung kernel (a barrier that never completes) ends its case after CASE_TIMEOUT, not the whole budget.
per_case=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout ${CASE_TIMEOUT:-30} --timeout-method thread")
SM90A_RESULTS="$OUT/cases.jsonl" timeout "${LADDER_TIMEOUT:-110}" python3 -m pytest -x -q -p no:cacheprovider \
  --tb=short -rA $per_case tests/gpu/test_sm90a_gpu.py > "$OUT/pytest.log" 2>&1
ladder=$?
total=$(python3 -c "import sys; sys.path.insert(0, 'tests/gpu'); from sm90a_cases import forward_cases; print(len(forward_cases()))")
passed=$(grep -c '"passed": true' "$OUT/cases.jsonl" 2>/dev/null || echo 0)
say "ladder rc=$ladder: $passed of $total cases passed: $(elapsed)"
if [ $ladder -ne 0 ]; then
  say "first failing case:"
  grep -m 1 '"passed": false' "$OUT/cases.jsonl" 2>/dev/null | tee -a "$LOG"
  grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/pytest.log" | head -20 | tee -a "$LOG"
  tail -25 "$OUT/pytest.log"
  rm -f "$OUT"/*.tmp
  exit 1
fi
tail -3 "$OUT/pytest.log" | tee -a "$LOG"

SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
# --report-api-errors no: cuda-bindings' cuInit probes driver entry points with cuGetProcAddress, and each
# probe that misses is a host API error (34 on the 2026-12-01 run), not a kernel's memory access.
timeout "${MEMCHECK_TIMEOUT:-50}" "${SANITIZER:-compute-sanitizer}" --tool memcheck --report-api-errors no \
  --error-exitcode 3 \
  python3 tests/gpu/sm90a_memcheck.py > "$OUT/memcheck.log" 2>&1
memcheck=$?
say "memcheck rc=$memcheck: $(tail -2 "$OUT/memcheck.log" | tr '\n' ' ') $(elapsed)"

ATTNPLAN_UNVERIFIED=nvrtc.sm90a timeout "${BENCH_TIMEOUT:-60}" python3 -m attnplan.cli bench --directions forward \
  --dtypes bf16 --head-dims "${BENCH_HEAD_DIMS:-64,128,256}" --seqlens "${BENCH_SEQLENS:-1024,4096}" --causal both \
  --backends nvrtc.sm90a,cudnn --peers torch.flash --repeats 10 \
  --output "$OUT/bench.json" --plot "$OUT/bench.png" > "$OUT/bench.log" 2>&1
bench=$?
say "bench rc=$bench: $(elapsed)"
grep -E "TFLOP/s" "$OUT/bench.log" | tee -a "$LOG" | tail -30
rm -f "$OUT"/*.tmp
[ $ladder -eq 0 ] && [ $memcheck -eq 0 ] && [ $bench -eq 0 ]
