"""Timing that tells the truth: device events on the GPU, warm-up first, medians."""

from __future__ import annotations

import statistics
import time
from typing import Callable

from .device import Device


def time_ms(fn: Callable[[], object], device: Device, repeats: int = 20, warmup: int = 3) -> list[float]:
    """Milliseconds of each of `repeats` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    if device.kind != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    import cupy
    stream = cupy.cuda.get_current_stream()
    events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(repeats)]
    for start, stop in events:
        start.record(stream)
        fn()
        stop.record(stream)
    stream.synchronize()
    return [cupy.cuda.get_elapsed_time(start, stop) for start, stop in events]


def median(values: list[float]) -> float:
    return statistics.median(values)
