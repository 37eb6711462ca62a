#!/usr/bin/env bash
# The sm90a generation's varlen and paged forward against sm80, cuDNN and PyTorch SDPA, one run per
# layout feature (the planner table's varlen / paged cells), on the lent H200 after the ladder's
# install (tests/gpu/sm90a_ladder.sh puts the wheels in /tmp/site): results $OUT/varlen.json,
# $OUT/paged.json, logs appended to $OUT/rungs.log.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export ATTNPLAN_CACHE_DIR="${ATTNPLAN_CACHE_DIR:-/tmp/attnplan-cache}" PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
status=0
for feature in ${FEATURES:-varlen paged}; do
  timeout "${LAYOUT_TIMEOUT:-120}" python3 -m attnplan.cli bench --directions forward --dtypes bf16 --head-dims 128 \
    --seqlens "${LAYOUT_SEQLENS:-1024,4096,16384}" --causal both --features "$feature" --backends nvrtc,cudnn \
    --peers torch.flash,torch.cudnn --repeats 10 --output "$OUT/$feature.json" --plot "/tmp/$feature.png" \
    >> "$OUT/rungs.log" 2>&1
  rc=$?; echo "$feature bench rc=$rc" | tee -a "$OUT/ladder.log"; [ $rc -eq 0 ] || status=1
  grep "TFLOP/s" "$OUT/rungs.log" | grep -i "$feature\|thd\|paged" | tail -30 >> "$OUT/ladder.log"
done
exit $status
