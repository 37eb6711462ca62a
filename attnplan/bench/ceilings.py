"""The machine's own ceilings, measured in the same run: dense bf16 matmul TFLOP/s and device
copy bandwidth, so every benchmark number is also a fraction of the machine."""

from __future__ import annotations

import statistics


def measure_ceilings(repeats: int = 10) -> dict:
    try:
        import cupy
    except ImportError:
        return {}
    ceilings = {}
    n = 8192
    try:
        import torch
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        matmul, label = (lambda: torch.matmul(a, b)), "bf16_matmul_tflops"
    except Exception:
        a = cupy.random.standard_normal((n, n), dtype=cupy.float32).astype(cupy.float16)
        b = cupy.random.standard_normal((n, n), dtype=cupy.float32).astype(cupy.float16)
        matmul, label = (lambda: cupy.matmul(a, b)), "f16_matmul_tflops"
    ceilings[label] = 2 * n**3 / (_median_ms(matmul, repeats) * 1e-3) / 1e12
    src = cupy.empty(1 << 30, dtype=cupy.uint8)
    dst = cupy.empty_like(src)
    ceilings["copy_gb_per_s"] = 2 * src.nbytes / (_median_ms(lambda: dst.__setitem__(Ellipsis, src), repeats)
                                                  * 1e-3) / 1e9
    return {k: round(v, 1) for k, v in ceilings.items()}


def _median_ms(fn, repeats: int) -> float:
    import cupy
    for _ in range(3):
        fn()
    stream = cupy.cuda.get_current_stream()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn()
        stop.record(stream)
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)
