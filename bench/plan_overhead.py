"""Host time per call of `plan.run` on a tiny problem, against the bare launch underneath it
(cuDNN: the graph's execute with the same pointers; nvrtc: the driver launch), on the GPU:

    python bench/plan_overhead.py [--output bench/results/plan-overhead.json]

The overhead is what `plan.run` adds on top: binding and checking the arguments, choosing the
graph / kernel, stream and workspace handling.  Calls are issued in batches of 100 (few enough that
the GPU queue never fills and stalls the host) and the median batch is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

try:            # PyTorch first: imported after the cuDNN frontend has run graphs, torch 2.x fails to
    import torch  # noqa: F401   register one of its own custom ops (seen with frontend 1.32)
except ImportError:
    pass
import cupy

from attnplan import AttentionDescriptor, Plan
from attnplan.arguments import bind_arguments
from attnplan.bench.runner import device_description, versions
from attnplan.problems import random_inputs
from attnplan.device import default_device

BATCH = 100
ROUNDS = 25


def _batch_us(fn) -> float:
    start = time.perf_counter()
    for _ in range(BATCH):
        fn()
    elapsed = (time.perf_counter() - start) / BATCH * 1e6
    cupy.cuda.get_current_stream().synchronize()
    return elapsed


def host_us_per_call(fn) -> float:
    return host_us_interleaved({"fn": fn})["fn"]


def host_us_interleaved(fns: dict) -> dict:
    """Median host microseconds per call of each function, batches taken in alternating turns so
    that clock changes of the host hit every function alike."""
    for fn in fns.values():
        for _ in range(20):
            fn()
    cupy.cuda.get_current_stream().synchronize()
    batches: dict = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            batches[name].append(_batch_us(fn))
    return {name: statistics.median(values) for name, values in batches.items()}


def write_profile(path: str, fn, title: str, calls: int = 3000) -> None:
    """cProfile of `calls` calls of fn, sorted by own time, for finding where host time goes."""
    import cProfile
    import io
    import os
    import pstats

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(calls):
        fn()
        if i % BATCH == 0:
            cupy.cuda.get_current_stream().synchronize()
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(45)
    with open(path, "a") as f:
        f.write(f"==== {title}\n{text.getvalue()}")


def capture_bare_call(plan, args, module, attribute):
    """Run plan once with `module.attribute` wrapped; return a zero-argument bare re-launch."""
    original = getattr(module, attribute)
    captured = {}

    def spy(*a, **k):
        captured["call"] = (a, k)
        return original(*a, **k)

    setattr(module, attribute, spy)
    try:
        plan.run(**args)
    finally:
        setattr(module, attribute, original)
    a, k = captured["call"]
    return lambda: original(*a, **k)


def torch_sdpa_host_time(desc) -> dict:
    """Host time per call of PyTorch SDPA on the same problem, for scale (no bare launch known)."""
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return {}
    shape = (desc.batch, desc.heads_q, desc.seqlen_q, desc.head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    rows = {}
    for name, kind in (("torch.cudnn", SDPBackend.CUDNN_ATTENTION), ("torch.flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(kind):
                call = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=desc.causal)
                call()
                rows[name] = host_us_per_call(call)
        except Exception as exc:
            rows[name] = f"unavailable: {type(exc).__name__}"
    return {"backend": "torch_sdpa_host_us", **rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default=None)
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="also write a cProfile report of plan.run per backend into DIR")
    options = parser.parse_args()
    device = default_device()
    desc = AttentionDescriptor(batch=1, seqlen_q=128, seqlen_kv=128, heads_q=8, heads_kv=8, head_dim=64,
                               dtype="bf16", causal=True, return_lse=True)
    args = random_inputs(desc, device, seed=0)
    rows = []
    for backend in ("cudnn", "nvrtc"):
        try:
            plan = Plan.select(desc, device, prefer=backend, restrict=True)
        except Exception as exc:
            print(backend, "unavailable:", exc)
            continue
        out = plan.run(**args)
        run_args = dict(args, out=out.out, lse=out.lse)
        if backend == "cudnn":
            from attnplan.backends.cudnn import graphs
            bare = capture_bare_call(plan, run_args, graphs.BuiltGraph, "run")
        else:
            from attnplan.backends.nvrtc import launcher
            bare = capture_bare_call(plan, run_args, launcher, "launch")
        bound = plan.can_implement(**run_args)
        us = host_us_interleaved({
            "plan_run_us": lambda: plan.run(**run_args),
            "plan_run_unchecked_us": lambda: plan.run(check_values=False, **run_args),
            "bare_launch_us": bare,
            # where the host time goes, innermost first
            "bind_us": lambda: bind_arguments(desc, run_args),
            "can_implement_us": lambda: plan.can_implement(**run_args),
            "backend_call_us": lambda: plan._executable.forward(bound, bound.out, bound.lse),
        })
        if options.profile:
            write_profile(f"{options.profile}/profile.txt", lambda: plan.run(**run_args), backend)
        row = {"backend": backend, "sku": plan.sku.kernel, **us,
               "overhead_us": us["plan_run_us"] - us["bare_launch_us"],
               "overhead_unchecked_us": us["plan_run_unchecked_us"] - us["bare_launch_us"]}
        rows.append(row)
        print(json.dumps(row))
    torch_row = torch_sdpa_host_time(desc)
    if torch_row:
        rows.append(torch_row)
        print(json.dumps(torch_row))
    if options.output:
        with open(options.output, "w") as f:
            json.dump({"device": device_description(device), "versions": versions(), "problem": desc.to_dict(),
                       "batch_calls": BATCH, "rounds": ROUNDS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
