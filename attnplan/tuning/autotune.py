"""The "autotune" policy: every accepting plan timed on the real shapes through the `attnplan bench`
harness (fresh random inputs, the output checked against the reference before its time counts,
warm-up excluded, device events, median), the winner remembered in the on-disk tuning cache.

The cache key holds the device name, the driver, every backend's library versions, the attnplan
version, the descriptor and the candidates timed: any of them changing means tuning again.
"""

from __future__ import annotations

import datetime
import json
from typing import Optional

import attnplan

from .. import registry
from ..descriptor import AttentionDescriptor
from ..device import Device
from . import autotune_cache
from .autotune_cache import TuningEntry, TuningKey

REPEATS = {"cuda": 20, "cpu": 3}
WARMUP = {"cuda": 3, "cpu": 1}


def _driver(device: Device) -> str:
    if device.kind != "cuda":
        return "none"
    try:
        import cupy
        return str(cupy.cuda.runtime.driverGetVersion())
    except Exception:  # no CuPy or no driver: the key still separates machines by the other fields
        return "unknown"


def _library_versions() -> dict:
    versions = {}
    for backend in registry.backends():
        versions.update(backend.library_versions())
    return versions


def timed_names(accepted: list, by_name: dict, device: Device) -> list[str]:
    """What autotune times: every accepting backend; the reference only where nothing else accepts
    (on a GPU it is the checker, never the winner)."""
    names = [v.backend for v in accepted if not by_name[v.backend].last_resort]
    return names or [v.backend for v in accepted]


def tuning_key(desc: AttentionDescriptor, device: Device, names: list[str]) -> TuningKey:
    return TuningKey(device_name=device.name, driver=_driver(device), versions=_library_versions(),
                     attnplan_version=attnplan.__version__,
                     descriptor=json.dumps(desc.to_dict(), sort_keys=True, default=str), candidates=tuple(names))


def measure(desc: AttentionDescriptor, device: Device, names: list[str], seed: int = 0,
            repeats: Optional[int] = None, warmup: Optional[int] = None) -> TuningEntry:
    """Time `names` on `desc` and pick the winner (the planner's near-tie rule on measured times)."""
    from attnplan.bench.contenders import prepare_plan
    from attnplan.bench.runner import input_sets, measure_contenders, reference_targets

    from ..plan import Plan
    from ..policy import Candidate, order_by_time

    sets = input_sets(desc, device, seed)
    fixed, want, select = reference_targets(desc, sets)

    def contender(name):
        def prepare():
            plan = Plan.select(desc, device, prefer=name, restrict=True, policy="first")
            return prepare_plan(name, desc, sets, fixed, plan=plan)
        return name, prepare

    rows = measure_contenders({"descriptor": desc.to_dict()}, desc, [contender(n) for n in names], len(sets), want,
                              select, repeats or REPEATS[device.kind], warmup or WARMUP[device.kind],
                              device.kind == "cuda")
    timed = [r for r in rows if r.get("ms")]
    if not timed:
        failures = "; ".join(f"{r['backend']}: {r.get('error') or 'wrong answer'}" for r in rows)
        raise RuntimeError(f"autotune: no candidate ran correctly ({failures})")
    candidates = [Candidate(r["backend"], i, registry.get(r["backend"]).precision(desc, device),
                            expected_us=r["ms"] * 1e3) for i, r in enumerate(timed)]
    winner = order_by_time(candidates, lambda c: c.expected_us)[0].name
    row = next(r for r in timed if r["backend"] == winner)
    return TuningEntry(key=tuning_key(desc, device, names), winner=winner, winner_sku=row["sku"],
                       timings_ms={r["backend"]: r["ms"] for r in timed},
                       tflops={r["backend"]: r["tflops"] for r in timed},
                       date=datetime.datetime.now(datetime.timezone.utc).isoformat())


def ranking_times(desc: AttentionDescriptor, device: Device, accepted: list, by_name: dict,
                  run: bool, retune: bool = False) -> tuple[Optional[dict], str]:
    """({backend: (median ms, TFLOP/s)} or None, the basis text) for the autotune policy: from the
    cache, or measured now when `run` (Plan.select) and the cache has no valid answer."""
    if not device.present:
        return None, f"the table (autotune needs a present device; {device} is described)"
    names = timed_names(accepted, by_name, device)
    if not names:
        return None, "the table (nothing to tune)"
    key = tuning_key(desc, device, names)
    still_accepted = set(names)

    def accept(entry: TuningEntry) -> bool:
        return entry.winner in still_accepted and not retune

    if run:
        entry, cached = autotune_cache.get_or_tune(key, lambda: measure(desc, device, names), accept)
        how = "the autotune cache" if cached else "autotune, measured now"
    else:
        entry = autotune_cache.load(key)
        if entry is None or not accept(entry):
            return None, "the table (not autotuned yet: Plan.select with policy='autotune' measures)"
        how = "the autotune cache"
    tflops = dict(entry.tflops)
    return {name: (ms, tflops.get(name)) for name, ms in entry.timings_ms}, f"{how} ({device.name})"
