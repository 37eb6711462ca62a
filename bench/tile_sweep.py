"""A/B the sm80 forward tile configs (tiles, K buffers), or the backward's tile
configs, on chosen problems, each checked against the reference before its time counts.  Run on
the GPU:

    python bench/tile_sweep.py --head-dims 64,128 --seqlens 4096 --output bench/results/tiles.json
    python bench/tile_sweep.py --direction backward --output bench/results/bwd-tiles.json
"""

from __future__ import annotations

import argparse
import json

from attnplan.backends.nvrtc import sm80
from attnplan.backends.nvrtc.backend import NvrtcBackend
from attnplan.bench.contenders import prepare_plan
from attnplan.bench.measure import is_correct, median, relative_error, time_interleaved
from attnplan.bench.problems import standard_problem
from attnplan.bench.runner import device_description, input_sets, reference_targets
from attnplan.device import default_device
from attnplan.plan import Plan

# Candidate (block_m, block_n, num_warps, stages) by direction and the largest head dim they serve.
# Forward stages: K tile buffers; backward: block_n / (num_warps / 2) keys (16 or 32) per warp pair.
CONFIGS = {
    "forward": {64: [(128, 64, 4, 1), (128, 64, 4, 2), (128, 128, 4, 2)],
                128: [(128, 64, 4, 1), (128, 64, 4, 2), (128, 128, 4, 2)],
                256: [(128, 64, 8, 1), (128, 64, 8, 2), (64, 64, 4, 1), (64, 64, 4, 2)]},
    "backward": {64: [(128, 128, 8, 2), (128, 128, 8, 1), (64, 128, 8, 2), (64, 64, 4, 2)],
                 128: [(64, 128, 8, 2), (128, 128, 8, 1), (128, 64, 8, 2), (64, 64, 4, 2)],
                 256: [(64, 64, 8, 2), (64, 64, 8, 1), (32, 64, 4, 2)]},
}


def candidates(direction: str, head_dim: int) -> list[tuple]:
    return next(cfgs for limit, cfgs in sorted(CONFIGS[direction].items()) if head_dim <= limit)


def sweep(direction: str, head_dims, seqlens, device, rows: list) -> None:
    """Every candidate config on each problem, checked against the reference, the correct ones timed
    in interleaved rounds (the same clocks for all)."""
    for head_dim in head_dims:
        for seqlen in seqlens:
            for causal in (False, True):
                problem = standard_problem("bf16", head_dim, seqlen, causal, direction)
                desc = problem.descriptor()
                sets = input_sets(desc, device, 0)
                fixed, want, select = reference_targets(desc, sets)
                timed = []
                for cfg in candidates(direction, head_dim):
                    config = dict(zip(("block_m", "block_n", "num_warps", "stages"), cfg))
                    try:
                        backend = NvrtcBackend(sm80.GENERATION)
                        plan = Plan(desc, device, backend, backend.build(desc, device, config))
                        prepared = prepare_plan("nvrtc", desc, sets, fixed, plan=plan)
                    except Exception as exc:
                        print(problem.label, cfg, "build failed:", str(exc)[:200])
                        continue
                    error = relative_error(select(prepared.outputs(0)), want, desc.dtype)
                    row = {"problem": problem.as_dict(), "config": config, "error": error}
                    rows.append(row)
                    if is_correct(error, desc.dtype):
                        timed.append((row, prepared))
                    else:
                        print(problem.label, cfg, "WRONG", error)
                times = time_interleaved([p for _, p in timed], len(sets), 20, 3, True)
                for (row, _), t in zip(timed, times):
                    row.update(ms=median(t), tflops=desc.flops() / median(t) / 1e9)
                    print(f"{problem.label:40s} {str(tuple(row['config'].values())):18s} err={row['error']:.2e} "
                          f"{row['tflops']:7.1f} TFLOP/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--seqlens", default="4096")
    parser.add_argument("--direction", default="forward", choices=("forward", "backward"))
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    device = default_device()
    rows: list = []
    sweep(args.direction, [int(d) for d in args.head_dims.split(",")], [int(s) for s in args.seqlens.split(",")],
          device, rows)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"device": device_description(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
