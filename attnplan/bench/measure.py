"""Timing and checking one prepared contender: a correct answer first, then device-event times
over rotated input sets (median reported, raw times kept)."""

from __future__ import annotations

import statistics

import numpy as np

from attnplan.accuracy import host_f64
from attnplan.interop import Tensor, wrap_storage

from .contenders import Prepared

# Sanity bound of the benchmark's correctness check: max |error| / max |reference| against the
# float32 reference.  (The strict FlashAttention-rule checks live in the GPU test suite.)
RELATIVE_TOLERANCE = {"bf16": 2.0**-5, "f16": 2.0**-8, "f32": 1e-4, "f64": 1e-10, "e4m3": 2.0**-2,
                      "e5m2": 2.0**-2}


def _values(x, dtype: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return host_f64(x)
    if type(x).__module__.startswith("torch"):
        return x.detach().double().cpu().numpy()
    if type(x).__module__.startswith("cupy") and x.dtype in (np.uint16, np.uint8) and dtype in ("bf16", "e4m3",
                                                                                                 "e5m2"):
        return host_f64(wrap_storage(x, dtype))
    return host_f64(x)


def relative_error(got: dict, want: dict, dtype: str) -> float:
    worst = 0.0
    for name, reference in want.items():
        if name not in got:
            continue
        a, b = _values(got[name], dtype), _values(reference, "f64")
        if a.shape != b.shape:
            return float("inf")
        finite = np.isfinite(b)
        if not np.array_equal(np.isfinite(a), finite):
            return float("inf")
        scale = max(float(np.abs(b[finite]).max(initial=0.0)), 1e-6)
        worst = max(worst, float(np.abs(a[finite] - b[finite]).max(initial=0.0)) / scale)
    return worst


def is_correct(error: float, dtype: str) -> bool:
    return error <= RELATIVE_TOLERANCE[dtype]


def time_launches(prepared: Prepared, sets: int, repeats: int, warmup: int, on_gpu: bool) -> list[float]:
    """Milliseconds per launch, input set rotating every call."""
    for i in range(warmup):
        prepared.launch(i % sets)
    if not on_gpu:
        import time
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            prepared.launch(i % sets)
            times.append((time.perf_counter() - start) * 1e3)
        return times
    import cupy
    stream = cupy.cuda.get_current_stream()
    events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(repeats)]
    for i, (start, stop) in enumerate(events):
        start.record(stream)
        prepared.launch(i % sets)
        stop.record(stream)
    stream.synchronize()
    return [cupy.cuda.get_elapsed_time(start, stop) for start, stop in events]


def time_interleaved(prepared: list, sets: int, repeats: int, warmup: int, on_gpu: bool,
                     rounds: int = 5) -> list[list[float]]:
    """time_launches for several contenders of one problem, `repeats` each, taken in `rounds`
    alternating turns: a GPU that heats up and lowers its clocks during the problem slows every
    contender alike instead of whichever ran last."""
    for p in prepared:
        time_launches(p, sets, 0, warmup, on_gpu)
    times: list[list[float]] = [[] for _ in prepared]
    rounds = max(1, min(rounds, repeats))
    for r in range(rounds):
        count = repeats // rounds + (1 if r < repeats % rounds else 0)
        for p, into in zip(prepared, times):
            into.extend(time_launches(p, sets, count, 0, on_gpu))
    return times


def median(times: list[float]) -> float:
    return float(statistics.median(times))
