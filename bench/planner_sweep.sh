#!/usr/bin/env bash
# The measurements behind the planner's tables (attnplan/tuning/): our backends and PyTorch SDPA in one
# run per group, results under $OUT.  Usage on the GPU machine:  bash bench/planner_sweep.sh plain|extra
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export ATTNPLAN_CACHE_DIR="${ATTNPLAN_CACHE_DIR:-/tmp/attnplan-cache}" PYTHONUNBUFFERED=1
{
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-deps --no-build-isolation -e .
} > "$OUT/install.log" 2>&1 || tail -30 "$OUT/install.log"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/device.txt" 2>&1
bench() {   # name, then attnplan bench flags
  local name=$1; shift
  python3 bench/warm_sweep.py "$@" >> "$OUT/warm.log" 2>&1
  python3 -m attnplan.cli bench "$@" --repeats 10 --peers torch.flash,torch.cudnn \
    --output "$OUT/$name.json" --plot "/tmp/$name.png" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?"; tail -3 "$OUT/$name.log"
}
case "${1:-plain}" in
  plain) bench plain --dtypes bf16 --head-dims 64,128,256 ;;
  extra)
    bench f16 --dtypes f16 --head-dims 64,128 --seqlens 1024,4096,16384
    for feature in window gqa varlen; do
      bench "$feature" --dtypes bf16 --head-dims 128 --seqlens 1024,4096,16384 --features "$feature"
    done
    bench paged --dtypes bf16 --head-dims 128 --seqlens 1024,4096,16384 --features paged --directions forward ;;
esac
