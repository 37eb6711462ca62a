"""Keys, entries and the worker process for tests/test_tuning_cache.py.  The worker lives in an
importable module because "spawn" children import their target by name."""

from __future__ import annotations

import os
import time

from attnplan import AttentionDescriptor, KernelSku, PrecisionGuarantee
from attnplan.tuning.autotune_cache import TuningEntry, TuningKey, get_or_tune

CANDIDATES = ("nvrtc", "cudnn", "reference")
TUNE_SECONDS = 0.2          # long enough that every racer misses before the first one writes


def make_key(seqlen_q: int = 128, **changes) -> TuningKey:
    desc = AttentionDescriptor(batch=2, seqlen_q=seqlen_q, seqlen_kv=256, heads_q=8, heads_kv=2, head_dim=64,
                               causal=True)
    fields = dict(device_name="NVIDIA H200", driver="13.0", versions={"cupy": "14.0", "cudnn": "9.13"},
                  attnplan_version="0.1.0", descriptor=desc, candidates=list(CANDIDATES))
    return TuningKey(**{**fields, **changes})


def make_entry(key: TuningKey, winner: str = "nvrtc", base_ms: float = 1.0) -> TuningEntry:
    sku = KernelSku(backend=winner, kernel=f"{winner}_fwd_d64", arch="sm_90", dtype="bf16",
                    precision=PrecisionGuarantee("bf16", "f32", deterministic=True, bit_stable=True))
    timings = {name: base_ms * (1 + rank) for rank, name in enumerate([winner] + [c for c in CANDIDATES if c != winner])}
    return TuningEntry(key=key, winner=winner, winner_sku=sku.to_dict(), timings_ms=timings,
                       tflops={name: 100.0 / ms for name, ms in timings.items()})


def race(tuning_dir: str, counter: str, index: int, seqlen_q: int, barrier, queue) -> None:
    """get_or_tune from one process, all racers released together; each would tune a different
    winner, so equal answers mean one tuned and the rest read its file."""
    os.environ["ATTNPLAN_TUNING_DIR"] = tuning_dir
    key = make_key(seqlen_q=seqlen_q)

    def tune() -> TuningEntry:
        with open(counter, "a") as handle:
            handle.write(f"{index}\n")
        time.sleep(TUNE_SECONDS)
        return make_entry(key, winner=CANDIDATES[index % len(CANDIDATES)], base_ms=1.0 + index)

    barrier.wait(timeout=60)
    entry, cached = get_or_tune(key, tune)
    queue.put((index, entry.to_dict(), cached))
