"""Host time per call of the ways the cuDNN frontend can execute one built SDPA graph, each checked
to write the same output bits as the public `graph.execute({uid: address})`:

    python bench/cudnn_execute_paths.py [--output bench/results/cudnn-execute-paths.json]

This is the evidence behind the execute path `backends/cudnn/graphs.py` takes.
"""

from __future__ import annotations

import argparse
import json

import cupy

from attnplan import AttentionDescriptor, Plan
from attnplan.backends.cudnn import graphs
from attnplan.bench.runner import device_description, versions
from attnplan.device import default_device
from attnplan.problems import random_inputs

from plan_overhead import capture_bare_call, host_us_per_call


def paths(built, arrays: dict, workspace, handle) -> dict:
    """name -> zero-argument call executing `built` on `arrays` (role -> CuPy array)."""
    g = built.graph
    ws = int(workspace.data.ptr) if workspace is not None else None
    roles = [r for r in built.uids if r in arrays]
    by_uid_int = {built.uids[r]: int(arrays[r].data.ptr) for r in roles}
    by_uid_array = {built.uids[r]: arrays[r] for r in roles}
    uids = [built.uids[r] for r in roles]
    ints = [int(arrays[r].data.ptr) for r in roles]
    arrs = [arrays[r] for r in roles]
    calls = {
        "execute(uid->int)": lambda: g.execute(by_uid_int, ws, handle=handle),
        "execute(uid->cupy)": lambda: g.execute(by_uid_array, workspace, handle=handle),
        "execute(ints, tensor_uids)": lambda: g.execute(ints, ws, handle=handle, tensor_uids=uids),
        "execute(cupy, tensor_uids)": lambda: g.execute(arrs, workspace, handle=handle, tensor_uids=uids),
    }
    lowered = getattr(g, "_lowered_graph", None)
    if lowered is not None:
        from cudnn._handle import to_backend_handle
        raw = to_backend_handle(handle)
        cfg = g._materialize_backend_plan(g._plan_index) if getattr(g, "_plans", None) else None
        index = cfg.cpp_index if cfg is not None and cfg.cpp_index is not None else 0
        calls["_lowered._execute_plan_at_index"] = \
            lambda: lowered._execute_plan_at_index(by_uid_int, ws or 0, index, raw, None, None, None)
        calls["_lowered._execute"] = lambda: lowered._execute(by_uid_int, ws or 0, raw, None, None, None)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default=None)
    options = parser.parse_args()
    device = default_device()
    desc = AttentionDescriptor(batch=1, seqlen_q=128, seqlen_kv=128, heads_q=8, heads_kv=8, head_dim=64,
                               dtype="bf16", causal=True, return_lse=True)
    args = random_inputs(desc, device, seed=0)
    plan = Plan.select(desc, device, prefer="cudnn", restrict=True)
    first = plan.run(**args)
    captured = {}
    original = graphs.BuiltGraph.run

    def spy(self, pack, workspace, handle):
        captured.update(built=self, handle=handle)
        return original(self, pack, workspace, handle)

    graphs.BuiltGraph.run = spy
    try:
        plan.run(**args)
    finally:
        graphs.BuiltGraph.run = original
    built, handle = captured["built"], captured["handle"]
    workspace = cupy.empty(built.workspace_size, cupy.uint8) if built.workspace_size else None
    out = cupy.empty_like(first.out)
    lse = cupy.empty_like(first.lse)
    arrays = {"q": args["q"], "k": args["k"], "v": args["v"], "o": out, "stats": lse}
    rows = []
    for name, call in paths(built, arrays, workspace, handle).items():
        out.fill(float("nan"))
        lse.fill(float("nan"))
        try:
            call()
            cupy.cuda.Device().synchronize()
        except Exception as exc:
            rows.append({"path": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(rows[-1])
            continue
        same = bool(cupy.array_equal(out.view(cupy.uint16), first.out.view(cupy.uint16))) and \
            bool(cupy.array_equal(lse, first.lse))
        rows.append({"path": name, "same_bits_as_plan_run": same, "host_us": host_us_per_call(call)})
        print(rows[-1])
    bare = capture_bare_call(plan, dict(args, out=first.out, lse=first.lse), graphs.BuiltGraph, "run")
    rows.append({"path": "BuiltGraph.run (as plan.run calls it)", "host_us": host_us_per_call(bare)})
    print(rows[-1])
    if options.output:
        with open(options.output, "w") as f:
            json.dump({"device": device_description(device), "versions": versions(), "problem": desc.to_dict(),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
