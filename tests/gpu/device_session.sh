#!/usr/bin/env bash
# One batched session on the lent GPU machine: install, warm the kernel cache in parallel, run the
# GPU tests, log everything under $OUT.  Usage: bash tests/gpu/device_session.sh [pytest args...]
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export ATTNPLAN_CACHE_DIR="${ATTNPLAN_CACHE_DIR:-/tmp/attnplan-cache}"
{
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-deps --no-build-isolation -e . 
} > "$OUT/install.log" 2>&1 || { tail -30 "$OUT/install.log"; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/device.txt" 2>&1
python3 -m attnplan.cli info > "$OUT/info.txt" 2>&1; cat "$OUT/info.txt"
if [ "${WARM:-1}" = 1 ]; then
  (cd tests/gpu && timeout 300 python3 warm_cache.py 90) > "$OUT/warm.log" 2>&1; echo "warm rc=$? $(tail -1 "$OUT/warm.log")"
fi
timeout "${PYTEST_TIMEOUT:-400}" python3 -m pytest -q -p no:cacheprovider --tb=short "$@" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"; tail -40 "$OUT/pytest.log"
