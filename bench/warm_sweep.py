"""Compile, in parallel, every nvrtc kernel that an `attnplan bench` sweep will launch, so the
sweep itself spends no time in NVRTC.  Takes the sweep's own problem flags:

    python bench/warm_sweep.py --dtypes bf16 --head-dims 64,128,256 --features window [--arch 90]
"""

from __future__ import annotations

import argparse
import sys

from attnplan.backends.nvrtc.warmup import compile_all, keys_for
from attnplan.bench.problems import sweep

GPU_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)


def _list(text: str, kind=str) -> list:
    return [kind(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", type=_list, default=["bf16"])
    p.add_argument("--head-dims", type=lambda t: _list(t, int), default=[64, 128])
    p.add_argument("--seqlens", type=lambda t: _list(t, int), default=list(GPU_SEQLENS))
    p.add_argument("--features", type=_list, default=[])
    p.add_argument("--directions", type=_list, default=["forward", "backward"])
    p.add_argument("--arch", type=int, default=90)
    args = p.parse_args(argv)
    problems = sweep(args.dtypes, args.head_dims, args.seqlens, (False, True), args.directions, args.features)
    keys = keys_for([problem.descriptor() for problem in problems], args.arch)
    print(f"{len(keys)} kernels for {len(problems)} problems")
    return 1 if compile_all(keys) else 0


if __name__ == "__main__":
    sys.exit(main())
