"""deterministic=True on every GPU backend (the issue "deterministic plans are bit-identical"):
the plan's SKU promises it (precision.deterministic), ten runs on fresh NaN-poisoned outputs give the
same bytes, and two CUDA streams running the plan at once (interleaved launches, each stream its own
outputs, its own workspace or the plan's per-stream kept one) give the single-stream bytes.

Forward and backward, on dense causal, GQA 8/2, varlen thd, head dims 64 and 128, seqlen 1023.  The
forward takes deterministic=True as well (the descriptor allows it; the forward SKUs promise
determinism either way).  A backend that declines a case is a skip with its reasons."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from attnplan import AttentionDescriptor
from attnplan.accuracy import host_f64
from attnplan.device import default_device
from attnplan.problems import random_inputs
from support import _storage, backward_inputs, plan_or_skip, poisoned_outputs

pytestmark = pytest.mark.gpu

BACKENDS = ("nvrtc.sm80", "cudnn", "nvrtc.sm90a", "reference")
DIRECTIONS = ("forward", "backward")
RUNS = 10
ROUNDS = 3              # interleaved launches per stream
TIMEOUT_S = 120

CASES = {
    "causal-d64-s1023": dict(batch=2, seqlen_q=1023, seqlen_kv=1023, heads_q=4, heads_kv=4, head_dim=64,
                             causal=True),
    "gqa8x2-d128-s1023": dict(batch=2, seqlen_q=1023, seqlen_kv=1023, heads_q=8, heads_kv=2, head_dim=128),
    "gqa8x2-causal-d128-q300-kv1023": dict(batch=2, seqlen_q=300, seqlen_kv=1023, heads_q=8, heads_kv=2,
                                           head_dim=128, causal=True),
    "varlen-gqa8x2-causal-d128": dict(layout="thd", batch=4, seqlen_q=300, seqlen_kv=517, heads_q=8, heads_kv=2,
                                      head_dim=128, causal=True),
    "varlen-d64-f16-s1023": dict(layout="thd", batch=3, seqlen_q=1023, seqlen_kv=1023, heads_q=4, heads_kv=4,
                                 head_dim=64, dtype="f16"),
}


def _timeout(test):
    """pytest-timeout's mark where the plugin is installed (the GPU machine); nothing otherwise."""
    if importlib.util.find_spec("pytest_timeout") is None:
        return test
    return pytest.mark.timeout(TIMEOUT_S, method="thread")(test)


def _descriptor(case: str, direction: str) -> AttentionDescriptor:
    fields = dict(dtype="bf16", deterministic=True, direction=direction, return_lse=direction == "forward")
    fields.update(CASES[case])
    return AttentionDescriptor(**fields)


def _plan(desc, backend):
    device = default_device()
    plan = plan_or_skip(desc, backend, device)
    assert plan.sku.precision.deterministic, (plan.sku.backend, plan.sku.kernel, "accepts deterministic=True but "
                                              "its SKU does not promise it", plan.sku.precision)
    return plan, device


def _inputs(desc, device) -> dict:
    if desc.direction == "backward":
        return backward_inputs(desc, seed=5)
    return random_inputs(desc, device, seed=5)


def _fresh_outputs(plan, args) -> dict:
    """NaN-poisoned outputs for one run: out / lse, or dq / dk / dv."""
    import cupy
    desc = plan.desc
    if desc.direction == "forward":
        out, lse = poisoned_outputs(desc, args)
        return {"out": out, "lse": lse}
    shapes = {"dq": args["q"].shape, "dk": args["k"].shape, "dv": args["v"].shape}
    return {name: _storage(tuple(shape), desc.dtype, cupy) for name, shape in shapes.items()}


def _bytes(outputs: dict) -> dict:
    """Each output as raw bytes on the host."""
    import cupy
    return {name: cupy.asnumpy(t.data.view(cupy.uint8)) for name, t in outputs.items()}


def _differences(got: dict, want: dict) -> dict:
    """{name: number of bytes that differ} for the outputs that differ."""
    return {name: int(np.count_nonzero(got[name] != want[name])) if got[name].shape == want[name].shape
            else f"{got[name].shape} bytes, want {want[name].shape}"
            for name in want if not np.array_equal(got[name], want[name])}


def _single_stream(plan, args) -> dict:
    import cupy
    outputs = _fresh_outputs(plan, args)
    plan.run(**outputs, **args)
    cupy.cuda.Device().synchronize()
    result = _bytes(outputs)
    for name, t in outputs.items():
        unwritten = int(np.isnan(host_f64(t)).sum())
        assert not unwritten, (plan.sku.kernel, name, f"{unwritten} elements still NaN (unwritten?)")
    return result


@_timeout
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_runs_are_bit_identical(backend, direction, case):
    desc = _descriptor(case, direction)
    plan, device = _plan(desc, backend)
    args = _inputs(desc, device)
    first = _single_stream(plan, args)
    for run in range(1, RUNS):
        again = _single_stream(plan, args)
        assert not _differences(again, first), (plan.sku.kernel, f"run {run}", _differences(again, first))
    plan.check()


@_timeout
@pytest.mark.parametrize("workspace", ["kept", "given"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_streams_at_once_give_the_single_stream_bits(backend, direction, case, workspace):
    """Launches alternate between two non-blocking streams, ROUNDS each, every launch with its own
    outputs; "kept": the plan's per-stream workspace, "given": each stream its own workspace=."""
    import cupy
    desc = _descriptor(case, direction)
    plan, device = _plan(desc, backend)
    args = _inputs(desc, device)
    want = _single_stream(plan, args)
    streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(2)]
    extra = [{} for _ in streams]
    if workspace == "given":
        if plan.workspace_size == 0:
            pytest.skip(f"{plan.sku.kernel} takes no workspace")
        extra = [{"workspace": cupy.empty(plan.workspace_size, dtype=cupy.uint8)} for _ in streams]
    outputs = [[_fresh_outputs(plan, args) for _ in range(ROUNDS)] for _ in streams]
    cupy.cuda.Device().synchronize()         # inputs and poison were written on the legacy default stream
    for launch in range(ROUNDS):
        for stream, outs, more in zip(streams, outputs, extra):
            with stream:                      # CuPy work (the reference, allocations) on it too
                plan.run(stream=stream, **outs[launch], **more, **args)
    for stream in streams:
        stream.synchronize()
    plan.check()
    for index, outs in enumerate(outputs):
        for launch, result in enumerate(outs):
            got = _bytes(result)
            assert not _differences(got, want), (plan.sku.kernel, f"stream {index} launch {launch}",
                                                 _differences(got, want))
