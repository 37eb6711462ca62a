"""A/B the sm80 forward tile configs (and the query-tile launch order) on chosen problems, each
checked against the reference before its time counts.  Run on the GPU:

    python bench/tile_sweep.py --head-dims 64,128 --seqlens 4096 --output bench/results/tiles.json
"""

from __future__ import annotations

import argparse
import json

from attnplan.backends.nvrtc import compiler
from attnplan.backends.nvrtc.backend import NvrtcBackend
from attnplan.bench.contenders import prepare_plan
from attnplan.bench.measure import is_correct, median, relative_error, time_launches
from attnplan.bench.problems import standard_problem
from attnplan.bench.runner import _input_sets, _reference, device_description
from attnplan.device import default_device
from attnplan.plan import Plan

CONFIGS = [(128, 128, 4), (128, 64, 4), (64, 128, 4), (64, 64, 4), (128, 128, 8), (128, 64, 8)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--seqlens", default="4096")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    device = default_device()
    rows = []
    for head_dim in map(int, args.head_dims.split(",")):
        for seqlen in map(int, args.seqlens.split(",")):
            for causal in (False, True):
                problem = standard_problem("bf16", head_dim, seqlen, causal, "forward")
                desc = problem.descriptor()
                sets = _input_sets(desc, device, 0)
                want = {"out": _reference(desc, sets[0], "f32")[0]}
                for order in ("descending", "ascending"):
                    extra = ("-DATTN_M_ORDER_ASCENDING=1",) if order == "ascending" else ()
                    for cfg in CONFIGS:
                        config = dict(zip(("block_m", "block_n", "num_warps"), cfg))
                        saved = compiler.BASE_OPTIONS
                        compiler.BASE_OPTIONS = saved + extra
                        try:
                            backend = NvrtcBackend()
                            executable = backend.build(desc, device, config)
                        except Exception as exc:
                            print(problem.label, cfg, order, "build failed:", str(exc)[:200])
                            continue
                        finally:
                            compiler.BASE_OPTIONS = saved
                        plan = Plan(desc, device, backend, executable)
                        prepared = prepare_plan("nvrtc", desc, sets, [{} for _ in sets], plan=plan)
                        error = relative_error(prepared.outputs(0), want, desc.dtype)
                        row = {"problem": problem.as_dict(), "config": config, "order": order, "error": error}
                        if is_correct(error, desc.dtype):
                            ms = median(time_launches(prepared, len(sets), 30, 3, True))
                            row.update(ms=ms, tflops=desc.flops() / ms / 1e9)
                        rows.append(row)
                        print(f"{problem.label:40s} {str(cfg):16s} {order:10s} err={error:.2e} "
                              f"{row.get('tflops', float('nan')):7.1f} TFLOP/s", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"device": device_description(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
