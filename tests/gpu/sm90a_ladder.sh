#!/usr/bin/env bash
# The sm90a forward's GPU ladder, in one call on the lent H200 (from the repository root):
#   1. install (the carried .whl wheels, the package editable), the device and NVRTC versions;
#   then for each rung of $RUNGS (default "wgmma tma overlap pingpong persistent", simplest first; $ATTNPLAN_SM90A_RUNG
#   selects it), stopping at the first rung that fails:
#   2. compile every kernel of the ladder in parallel (tests/gpu/sm90a_warm.py);
#   3. the correctness ladder, simplest case first, against the float64 reference with NaN-poisoned
#      outputs and the 2x rule (tests/gpu/test_sm90a_gpu.py, cases in sm90a_cases.py), stopping at
#      the first failing case and printing it;
#   4. compute-sanitizer memcheck and racecheck on the small cases (tests/gpu/sm90a_memcheck.py);
#   then, if every rung passed:
#   5. the rungs and K/V stages (or with SWEEP_VARY=tiles the tiles) against $SWEEP_WITH (e.g. cudnn) in
#      the same rounds (bench/tile_sweep.py --generation sm90a, $SWEEP_HEAD_DIMS, $SWEEP_SEQLENS, $SWEEP_CAUSAL);
#   6. the sweep of `attnplan bench` with the default rung against cuDNN and PyTorch SDPA
#      flash (ATTNPLAN_UNVERIFIED=nvrtc.sm90a; $BENCH_HEAD_DIMS, $BENCH_SEQLENS).
# Logs under $OUT (8 files): ladder.log (summary), pytest.log, cases.jsonl (one line per case, every
# rung), sanitizer.log, rungs.log, rungs.json, bench.log, bench.json.  Stage limits (seconds):
# LADDER_TIMEOUT, SANITIZER_TIMEOUT, SWEEP_TIMEOUT, BENCH_TIMEOUT; SKIP_TIMING=1 stops after the sanitizers,
# SKIP_BENCH=1 after the sweep.
# $ATTNPLAN_SM90A_TILES (backends/nvrtc/sm90a/tiles.py) runs the ladder on other tiles.  SKIP_SWEEP=1 leaves
# out the sweep; LADDER_SELECT (a pytest -k expression over the case names) runs part of the ladder, e.g.
# the cases of a kernel change that leaves every other kernel's SASS unchanged.
# Exit status: 0 only if every stage passed.
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

if [ "${SKIP_INSTALL:-0}" != 1 ]; then    # SKIP_INSTALL=1: a calling script has installed
{
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-deps --no-build-isolation --no-compile -e .
} > "$OUT/install.tmp" 2>&1 || { say "install failed:"; tail -20 "$OUT/install.tmp" | tee -a "$LOG"; }
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
say "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"
say "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
python3 -c "import attnplan, cupy; from attnplan.backends.nvrtc import compiler; \
print('attnplan', attnplan.__version__, 'cupy', cupy.__version__, 'nvrtc', compiler.nvrtc_version(), \
'kernels tree', compiler._tree_hash(str(compiler.kernels_dir()))[:16])" 2>&1 | tee -a "$LOG"
say "installed: $(elapsed)"

RUNGS="${RUNGS:-wgmma tma overlap pingpong persistent}"
say "tiles: ${ATTNPLAN_SM90A_TILES:-the default table}"
per_case=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout ${CASE_TIMEOUT:-30} --timeout-method thread")
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
total=$(python3 -c "import sys; sys.path.insert(0, 'tests/gpu'); from sm90a_cases import forward_cases; print(len(forward_cases()))")
: > "$OUT/pytest.log"; : > "$OUT/sanitizer.log"; : > "$OUT/cases.jsonl"
failed=0
for rung in $RUNGS; do
  export ATTNPLAN_SM90A_RUNG=$rung
  (cd tests/gpu && timeout 90 python3 sm90a_warm.py 90) > "$OUT/warm.tmp" 2>&1
  warm=$?
  say "[$rung] warm rc=$warm: $(tail -1 "$OUT/warm.tmp") $(elapsed)"
  if [ $warm -ne 0 ]; then grep -i -m 20 "failed\|error" "$OUT/warm.tmp" | tee -a "$LOG"; fi

  # A hung kernel (a barrier that never completes) ends its case after CASE_TIMEOUT, not the whole budget.
  before=$(grep -c '"passed": true' "$OUT/cases.jsonl"); skipped_before=$(grep -c '"skipped"' "$OUT/cases.jsonl")
  SM90A_RESULTS="$OUT/cases.jsonl" timeout "${LADDER_TIMEOUT:-110}" python3 -m pytest -x -q -p no:cacheprovider \
    --tb=short -rA $per_case ${LADDER_SELECT:+-k "$LADDER_SELECT"} tests/gpu/test_sm90a_gpu.py > "$OUT/pytest.tmp" 2>&1
  ladder=$?
  cat "$OUT/pytest.tmp" >> "$OUT/pytest.log"
  passed=$(( $(grep -c '"passed": true' "$OUT/cases.jsonl") - before ))
  skipped=$(( $(grep -c '"skipped"' "$OUT/cases.jsonl") - skipped_before ))
  say "[$rung] ladder rc=$ladder: $passed of $total cases passed, $skipped declined by the rung: $(elapsed)"
  if [ $ladder -ne 0 ]; then
    say "[$rung] first failing case:"
    grep -m 1 '"passed": false' "$OUT/cases.jsonl" 2>/dev/null | tee -a "$LOG"
    grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/pytest.tmp" | head -20 | tee -a "$LOG"
    tail -25 "$OUT/pytest.tmp"
    failed=1; break
  fi

  # --report-api-errors no: cuda-bindings' cuInit probes driver entry points with cuGetProcAddress, and each
  # probe that misses is a host API error (34 on the 2026-12-01 run), not a kernel's memory access.
  for tool in memcheck racecheck; do
    echo "== $rung $tool" >> "$OUT/sanitizer.log"
    timeout "${SANITIZER_TIMEOUT:-60}" "${SANITIZER:-compute-sanitizer}" --tool $tool --report-api-errors no \
      --error-exitcode 3 python3 tests/gpu/sm90a_memcheck.py >> "$OUT/sanitizer.log" 2>&1
    rc=$?
    say "[$rung] $tool rc=$rc: $(tail -2 "$OUT/sanitizer.log" | tr '\n' ' ') $(elapsed)"
    [ $rc -eq 0 ] || failed=1
  done
  [ $failed -eq 0 ] || break
done
rm -f "$OUT"/*.tmp
[ $failed -eq 0 ] || exit 1

if [ "${SKIP_TIMING:-0}" = 1 ]; then say "timing skipped (SKIP_TIMING=1)"; exit 0; fi
sweep=0
if [ "${SKIP_SWEEP:-0}" = 1 ]; then say "rung sweep skipped (SKIP_SWEEP=1)"; else
timeout "${SWEEP_TIMEOUT:-150}" python3 bench/tile_sweep.py --generation sm90a --head-dims "${SWEEP_HEAD_DIMS:-64,128,256}" \
  --seqlens "${SWEEP_SEQLENS:-4096}" --with "${SWEEP_WITH:-}" --vary "${SWEEP_VARY:-rungs}" --causal "${SWEEP_CAUSAL:-both}" \
  --repeats 10 --output "$OUT/rungs.json" > "$OUT/rungs.log" 2>&1
sweep=$?
say "rung sweep rc=$sweep: $(elapsed)"
grep "TFLOP/s\|WRONG\|failed" "$OUT/rungs.log" | tee -a "$LOG"
fi

unset ATTNPLAN_SM90A_RUNG
if [ "${SKIP_BENCH:-0}" = 1 ]; then say "bench skipped (SKIP_BENCH=1)"; [ $sweep -eq 0 ]; exit; fi
ATTNPLAN_UNVERIFIED=nvrtc.sm90a timeout "${BENCH_TIMEOUT:-150}" python3 -m attnplan.cli bench --directions forward \
  --dtypes bf16 --head-dims "${BENCH_HEAD_DIMS:-64,128,256}" --seqlens "${BENCH_SEQLENS:-2048,4096,8192,16384}" \
  --causal both --backends nvrtc,cudnn --peers torch.flash,torch.cudnn --repeats 10 \
  --output "$OUT/bench.json" --plot /tmp/bench.png > "$OUT/bench.log" 2>&1
bench=$?
say "bench (default rung) rc=$bench: $(elapsed)"
grep -E "TFLOP/s|sm90a" "$OUT/bench.log" | tee -a "$LOG" | tail -40
[ $sweep -eq 0 ] && [ $bench -eq 0 ]
