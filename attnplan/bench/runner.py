"""One sweep: for every problem, every registered backend that accepts it and every installed
peer, each checked against the reference before its time counts."""

from __future__ import annotations

import datetime
import math
import platform
from typing import Callable, Iterable, Optional

import attnplan
from attnplan import registry
from attnplan.arguments import BACKWARD_ARGUMENTS, FORWARD_ARGUMENTS, bind_arguments, lse_shape
from attnplan.backends.reference import ReferenceBackend
from attnplan.device import Device, default_device
from attnplan.dtypes import lse_dtype
from attnplan.interop import as_tensor, empty, wrap_storage
from attnplan.plan import explain
from attnplan.problems import random_inputs

from . import peers
from .ceilings import measure_ceilings
from .contenders import prepare_plan
from .measure import is_correct, median, relative_error, time_interleaved
from .problems import BenchProblem

MAX_INPUT_SETS = 4


def input_sets(desc, device: Device, seed: int = 0) -> list[dict]:
    """Fresh random inputs for `desc`: enough sets that rotating them defeats the L2 cache."""
    first = random_inputs(desc, device, seed=seed, vary_lengths=False)
    nbytes = sum(as_tensor(first[n], n).data.nbytes for n in ("q", "k", "v"))
    l2 = _l2_bytes(device)
    count = min(MAX_INPUT_SETS, max(1, math.ceil(2 * l2 / max(nbytes, 1)))) if device.kind == "cuda" else 1
    return [first] + [random_inputs(desc, device, seed=seed + i, vary_lengths=False) for i in range(1, count)]


def _l2_bytes(device: Device) -> int:
    if device.kind != "cuda":
        return 0
    import cupy
    return int(cupy.cuda.runtime.getDeviceProperties(device.index)["l2CacheSize"])


def _reference(desc, args: dict, out_dtype: str, compute: str = "f32"):
    """(out, lse) storages of the reference forward of `desc` (direction forward)."""
    fwd = desc.replace(direction="forward")
    exe = ReferenceBackend().build(fwd, default_device(), {"compute": compute})
    bound = bind_arguments(fwd, _run_inputs(args, FORWARD_ARGUMENTS), check_values=False)
    q = bound.q
    out = wrap_storage(empty(q.shape[:-1] + (desc.head_dim_v,), out_dtype, q), out_dtype)
    lse = wrap_storage(empty(lse_shape(desc, q.shape[0]), lse_dtype(desc.dtype), q), lse_dtype(desc.dtype))
    exe.forward(bound, out, lse)
    return out, lse


def _run_inputs(args: dict, allowed: tuple) -> dict:
    """The arguments of an input set that a plan binds (`allowed`: the forward's or the backward's),
    less the out and lse that the reference is given here (fresh, or the forward's)."""
    return {k: v for k, v in args.items() if k in allowed and k not in ("out", "lse")}


def _reference_grads(desc, args: dict, fixed: dict) -> dict:
    exe = ReferenceBackend().build(desc, default_device(), {"compute": "f32"})
    bound = bind_arguments(desc, {**_run_inputs(args, BACKWARD_ARGUMENTS), **fixed}, check_values=False)
    grads = {}
    for name, t in (("dq", bound.q), ("dk", bound.k), ("dv", bound.v)):
        grads[name] = wrap_storage(empty(t.shape, "f32", t), "f32")
    dsink = wrap_storage(empty((desc.heads_q,), "f32", bound.q), "f32") if desc.sink_logits else None
    exe.backward(bound, grads["dq"], grads["dk"], grads["dv"], dsink)
    return grads


def _take(x, index):
    """x[index] for NumPy / CuPy / torch arrays and for attnplan Tensors (raw bf16 storage)."""
    from attnplan.interop import Tensor
    if isinstance(x, Tensor):
        return wrap_storage(x.data[index], x.dtype)
    return x[index]


def spot_check(desc):
    """(sub-descriptor, input slicer, output slicer) that check batch 0 and the first (at most two)
    kv-head groups only -- exact, since batches and kv-head groups are independent -- so the
    float32 reference stays cheap at 16k tokens.  None for layouts where slicing is not exact."""
    if desc.layout != "bshd" or desc.paged is not None or (desc.batch == 1 and desc.heads_kv <= 2):
        return None
    heads_kv = min(2, desc.heads_kv)
    heads_q = heads_kv * desc.group_size
    sub = desc.replace(batch=1, heads_q=heads_q, heads_kv=heads_kv)
    rows_q, rows_kv = (slice(0, 1), slice(None), slice(0, heads_q)), (slice(0, 1), slice(None), slice(0, heads_kv))
    per_argument = {"q": rows_q, "k": rows_kv, "v": rows_kv, "dout": rows_q, "out": rows_q,
                    "lse": (slice(0, 1), slice(0, heads_q)), "bias": (slice(0, 1), slice(0, heads_q)),
                    "alibi_slopes": (slice(0, heads_q),),
                    "sink_logits": (slice(0, heads_q),), "dq": rows_q, "dk": rows_kv, "dv": rows_kv}

    def select(values: dict) -> dict:
        return {name: _take(value, per_argument[name]) if name in per_argument and value is not None else value
                for name, value in values.items()}
    return sub, select


def reference_targets(desc, sets: list[dict]):
    """(fixed, want, select) of a problem's input sets: per set the backward's out / lse / dout from
    the reference (taken out of the sets; empty for the forward), the float32 reference answer on the
    checked slice, and the function that cuts that slice from a contender's outputs."""
    spot = spot_check(desc)
    check_desc, select = spot if spot else (desc, lambda values: values)
    if desc.direction == "forward":
        return [{} for _ in sets], {"out": _reference(check_desc, select(sets[0]), "f32")[0]}, select
    fixed = []
    for s in sets:
        out, lse = _reference(desc, s, desc.out_dtype)
        fixed.append({"out": out, "lse": lse, "dout": s.pop("dout")})
    return fixed, _reference_grads(check_desc, select(sets[0]), select(fixed[0])), select


def run_sweep(problems: Iterable[BenchProblem], backends: Optional[list[str]] = None, peer_names=None,
              repeats: int = 20, warmup: int = 3, seed: int = 0, include_reference: bool = False,
              on_row: Optional[Callable[[dict], None]] = None,
              on_problem: Optional[Callable[[BenchProblem, dict], None]] = None) -> dict:
    """The results (schema of results.py).  `on_problem(problem, results_so_far)` runs after each
    problem, so a long sweep can save partial results as it goes."""
    device = default_device()
    on_gpu = device.kind == "cuda"
    peer_names = peers.available_peers() if peer_names is None else list(peer_names)
    rows, skipped = [], []
    results = {"device": device_description(device),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "versions": versions(), "ceilings": measure_ceilings() if on_gpu else {},
               "settings": {"repeats": repeats, "warmup": warmup, "max_input_sets": MAX_INPUT_SETS,
                            "checked_slice": "batch 0 and the first two kv-head groups of bshd problems",
                            "timing": "CUDA events per call, median; inputs rotated over sets so L2 does not flatter; "
                                      "contenders interleaved in rounds, so that all see the same clocks",
                            "correctness": "max|err|/max|ref| against the float32 reference within "
                                           "bf16 2^-5, f16 2^-8 before the time counts"},
               "rows": rows, "skipped": skipped}
    for problem in problems:
        desc = problem.descriptor()
        sets = input_sets(desc, device, seed)
        fixed, want, select = reference_targets(desc, sets)
        contenders = []
        for verdict in explain(desc, device):
            if backends is not None and not registry.matches(verdict.backend, backends):
                continue
            if verdict.backend == "reference" and not (include_reference or not on_gpu):
                continue
            if not verdict.accepted:
                skipped.append({"problem": problem.as_dict(), "backend": verdict.backend,
                                "reason": "; ".join(verdict.reasons)})
                continue
            contenders.append((verdict.backend, lambda b=verdict.backend: prepare_plan(b, desc, sets, fixed)))
        for name in peer_names:
            reason = peers.peer_reason(name, desc)
            if reason:
                skipped.append({"problem": problem.as_dict(), "backend": name, "reason": reason})
                continue
            contenders.append((name, lambda n=name: peers.prepare(n, desc, sets, fixed)))
        for row in measure_contenders(problem.as_dict(), desc, contenders, len(sets), want, select, repeats, warmup,
                                      on_gpu):
            rows.append(row)
            if on_row:
                on_row(row)
        if on_problem:
            on_problem(problem, results)
    return results


def measure_contenders(problem: dict, desc, contenders, sets: int, want, select, repeats: int, warmup: int,
                       on_gpu: bool) -> list[dict]:
    """One results row per (name, prepare) contender: prepared, checked against `want`, and only if
    correct timed (events, interleaved rounds, median)."""
    checked = [_prepare_checked(problem, desc, name, prepare, want, select) for name, prepare in contenders]
    timed = [(row, prepared) for row, prepared in checked if prepared is not None]
    all_times = time_interleaved([prepared for _, prepared in timed], sets, repeats, warmup, on_gpu)
    for (row, _), times in zip(timed, all_times):
        row["ms"] = median(times)
        row["tflops"] = desc.flops() / (row["ms"] * 1e-3) / 1e12
        row["times_ms"] = [round(t, 5) for t in times]
    return [row for row, _ in checked]


def _prepare_checked(problem: dict, desc, name, prepare, want, select):
    """(row, prepared): the contender prepared and checked against the reference; prepared is None
    when it failed or answered wrong (the row says which), so that it is not timed."""
    row = {"problem": {**problem, "flops": desc.flops()}, "backend": name, "sku": None, "ms": None,
           "tflops": None, "correct": False}
    try:
        prepared = prepare()
    except Exception as exc:  # a peer or plan that fails to run is reported, not timed
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        return row, None
    row["sku"], row["first_call_ms"] = prepared.sku, round(prepared.first_call_ms, 3)
    error = relative_error(select(prepared.outputs(0)), want, desc.dtype)
    row["max_relative_error"] = error
    row["correct"] = is_correct(error, desc.dtype)
    return row, prepared if row["correct"] else None


def device_description(device: Device) -> dict:
    info = {"name": str(device), "kind": device.kind, "arch": device.arch_name}
    if device.kind == "cuda":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(device.index)
        info.update({"name": props["name"].decode(), "sm_count": props["multiProcessorCount"],
                     "driver": cupy.cuda.runtime.driverGetVersion(), "runtime": cupy.cuda.runtime.runtimeGetVersion()})
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def versions() -> dict:
    out = {"attnplan": attnplan.__version__, "python": platform.python_version()}
    for backend in registry.ordered(None, False):
        try:
            out.update(backend.library_versions())
        except Exception:
            pass
    try:
        import torch
        out["torch"] = torch.__version__
        out["torch_cudnn"] = torch.backends.cudnn.version()
    except Exception:
        pass
    return out
