"""A/B the kernel configs of a generation on chosen problems -- the sm80 forward's tiles and K
buffers, the backward's tiles, the sm90a forward's rungs and K/V stages or (--vary tiles) its tiles -- each checked against the
reference before its time counts, all timed in interleaved rounds (the same clocks), with
`--with` contenders (cudnn, torch.flash, ...) in the same rounds.  Run on the GPU:

    python bench/tile_sweep.py --head-dims 64,128 --seqlens 4096 --output bench/results/tiles.json
    python bench/tile_sweep.py --direction backward --output bench/results/bwd-tiles.json
    python bench/tile_sweep.py --generation sm90a --head-dims 64,128,256 --seqlens 4096,16384 \
        --with cudnn,torch.flash --output bench/results/sm90a-rungs.json

A kernel change against the code before it, in the same rounds: `--baseline DIR` builds every candidate
a second time from the CUDA sources under DIR (e.g. `git archive HEAD kernels | tar -x -C /tmp/base`,
then `--baseline /tmp/base/kernels`; the host code must launch both alike), named
`<generation>@baseline[...]`; `--vary default` times the generation's own choice for each problem,
`--vary order` the sm90a launch orders (tiles.ORDERS) on it:

    python bench/tile_sweep.py --generation sm90a --vary default --baseline /tmp/base/kernels \
        --head-dims 64,128,256 --seqlens 2048 --with cudnn --output bench/results/sm90a-order.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import attrs

from attnplan.backends.nvrtc import sm80, sm90a
from attnplan.backends.nvrtc.backend import NvrtcBackend
from attnplan.bench import peers
from attnplan.bench.contenders import prepare_plan
from attnplan.bench.measure import is_correct, median, relative_error, time_interleaved
from attnplan.bench.problems import standard_problem
from attnplan.bench.results import PEER_PREFIXES
from attnplan.bench.runner import device_description, input_sets, reference_targets, versions
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


# The sm90a forward, `--vary rungs`: (rung, K/V stages) on the generation's own tile per head dim;
# three stages fit 227 KB up to d=128 (tiles.shared_memory_bytes), not at d=256.
SM90A_CONFIGS = {128: [(rung, 2) for rung in sm90a.RUNGS], 256: [(rung, 2) for rung in sm90a.RUNGS]}
# `--vary tiles`: (block_m, block_n[, options]) under the default rung (options may name another
# "rung", "stages" (default 2), or "causal": False for a non-causal-only candidate), the tiles whose
# kernels do not spill there (tests/test_sm90a_forward.py); block_m 192 is three consumer warpgroups.
SM90A_TILES = {64: [(128, 128), (128, 160), (128, 192), (128, 224), (192, 128), (192, 128, {"stages": 3}),
                    (192, 112), (192, 96), (192, 80), (128, 128, {"rung": "persistent"}),
                    (128, 160, {"rung": "persistent"}), (192, 128, {"rung": "persistent"})],
               128: [(128, 128), (128, 144), (128, 160), (128, 176), (128, 192, {"causal": False}), (192, 64),
                     (192, 80), (128, 176, {"rung": "pingpong"}), (128, 128, {"rung": "pingpong"}),
                     (128, 128, {"rung": "persistent"}), (128, 160, {"rung": "persistent"}),
                     (128, 176, {"rung": "persistent"})],
               256: [(128, 64), (128, 80), (128, 80, {"rung": "pingpong"}), (128, 64, {"rung": "persistent"}),
                     (128, 80, {"rung": "persistent"})]}
GENERATIONS = {"sm80": sm80.GENERATION, "sm90a": sm90a.GENERATION}


def candidates(generation: str, direction: str, head_dim: int, vary: str = "rungs", causal: bool = False
               ) -> list[dict]:
    """The configs to compare, as the pinned-config dicts NvrtcBackend.build takes (None: the
    generation's own choice)."""
    if vary == "default":
        return [None]
    if vary == "order":
        return [{"order": order} for order in sm90a.tiles.ORDERS]
    if generation == "sm90a" and vary == "tiles":
        cfgs = next(c for limit, c in sorted(SM90A_TILES.items()) if head_dim <= limit)
        out = []
        for bm, bn, *rest in cfgs:
            options = rest[0] if rest else {}
            if causal and options.get("causal", True) is False:
                continue
            out.append({"rung": options.get("rung", sm90a.RUNG), "block_m": bm, "block_n": bn,
                        "num_warps": sm90a.tiles.num_warps(bm, options.get("rung", sm90a.RUNG)),
                        "stages": options.get("stages", 2)})
        return out
    if generation == "sm90a":
        cfgs = next(c for limit, c in sorted(SM90A_CONFIGS.items()) if head_dim <= limit)
        return [{"rung": rung, "stages": stages} for rung, stages in cfgs]
    cfgs = next(c for limit, c in sorted(CONFIGS[direction].items()) if head_dim <= limit)
    return [dict(zip(("block_m", "block_n", "num_warps", "stages"), cfg)) for cfg in cfgs]


def _build(backend, desc, device, config):
    """A plan of `config`; an "order" entry (--vary order) is the sm90a launch order, set through
    $ATTNPLAN_SM90A_ORDER while the runner is made."""
    if config and "order" in config:
        saved = os.environ.get(sm90a.tiles.ORDER_VARIABLE)
        os.environ[sm90a.tiles.ORDER_VARIABLE] = config["order"]
        try:
            return Plan(desc, device, backend, backend.build(desc, device, None))
        finally:
            if saved is None:
                del os.environ[sm90a.tiles.ORDER_VARIABLE]
            else:
                os.environ[sm90a.tiles.ORDER_VARIABLE] = saved
    return Plan(desc, device, backend, backend.build(desc, device, config))


def _check(problem, desc, prepared, want, select, name: str, rows: list, timed: list) -> None:
    error = relative_error(select(prepared.outputs(0)), want, desc.dtype)
    row = {"problem": problem.as_dict(), "contender": name, "sku": prepared.sku, "error": error}
    rows.append(row)
    if is_correct(error, desc.dtype):
        timed.append((row, prepared))
    else:
        print(problem.label, name, "WRONG", error, flush=True)


def sweep(generation: str, direction: str, head_dims, seqlens, device, rows: list, others=(), repeats: int = 20,
          dtype: str = "bf16", vary: str = "rungs", causal_modes=(False, True), baseline: Path | None = None) -> None:
    """Every candidate config (built from the package's kernels and, with `baseline`, from the CUDA
    sources there too; and each of `others`: a backend name or a peer) on each problem, checked
    against the reference, the correct ones timed in interleaved rounds."""
    sources = [("", GENERATIONS[generation])]
    if baseline is not None:
        sources.append(("@baseline", attrs.evolve(GENERATIONS[generation], kernels_dir=baseline)))
    for head_dim in head_dims:
        for seqlen in seqlens:
            for causal in causal_modes:
                problem = standard_problem(dtype, head_dim, seqlen, causal, direction)
                desc = problem.descriptor()
                sets = input_sets(desc, device, 0)
                fixed, want, select = reference_targets(desc, sets)
                timed = []
                for config in candidates(generation, direction, head_dim, vary, causal):
                    name = ",".join(f"{k}={v}" for k, v in config.items()) if config else "default"
                    for suffix, source in sources:
                        try:
                            backend = NvrtcBackend(source)
                            plan = _build(backend, desc, device, config)
                            prepared = prepare_plan(backend.name, desc, sets, fixed, plan=plan)
                        except Exception as exc:
                            print(problem.label, name + suffix, "build failed:", str(exc)[:300], flush=True)
                            continue
                        _check(problem, desc, prepared, want, select, f"{generation}{suffix}[{name}]", rows, timed)
                for other in others:
                    try:
                        if other.startswith(PEER_PREFIXES):
                            reason = peers.peer_reason(other, desc)
                            if reason:
                                print(problem.label, other, "skipped:", reason, flush=True)
                                continue
                            prepared = peers.prepare(other, desc, sets, fixed)
                        else:
                            prepared = prepare_plan(other, desc, sets, fixed)
                    except Exception as exc:
                        print(problem.label, other, "failed:", str(exc)[:300], flush=True)
                        continue
                    _check(problem, desc, prepared, want, select, other, rows, timed)
                times = time_interleaved([p for _, p in timed], len(sets), repeats, 3, True)
                for (row, _), t in zip(timed, times):
                    row.update(ms=median(t), tflops=desc.flops() / median(t) / 1e9)
                    print(f"{problem.label:40s} {row['contender']:34s} err={row['error']:.2e} "
                          f"{row['tflops']:7.1f} TFLOP/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--seqlens", default="4096")
    parser.add_argument("--direction", default="forward", choices=("forward", "backward"))
    parser.add_argument("--generation", default="sm80", choices=sorted(GENERATIONS))
    parser.add_argument("--with", dest="others", default="", help="backends or peers timed in the same rounds")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--vary", default="rungs", choices=("rungs", "tiles", "default", "order"),
                        help="sm90a: A/B the rungs (on the default tile) or the tiles (under the default rung); "
                             "default: the generation's own choice per problem; order: its launch orders")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a kernels dir (CUDA sources) to build every candidate from a second time")
    parser.add_argument("--causal", default="both", choices=("both", "yes", "no"))
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    device = default_device()
    rows: list = []
    started = datetime.datetime.now(datetime.timezone.utc).isoformat()
    try:
        sweep(args.generation, args.direction, [int(d) for d in args.head_dims.split(",")],
              [int(s) for s in args.seqlens.split(",")], device, rows, [o for o in args.others.split(",") if o],
              args.repeats, vary=args.vary,
              causal_modes={"both": (False, True), "yes": (True,), "no": (False,)}[args.causal],
              baseline=args.baseline)
    finally:
        if args.output:
            with open(args.output, "w") as f:
                json.dump({"device": device_description(device), "date": started, "versions": versions(),
                           "command": " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
