"""The launch-only `run` on the GPU (README "What run does per call"): index values checked on the
device and reported by plan.check(); no allocation once warm when the caller gives outputs and the
workspace; a run captured in a CUDA graph replays to the eager result; cuDNN's kept dropout seed."""

from __future__ import annotations

import numpy as np
import pytest

from attnplan import AttentionDescriptor, PagedKV
from attnplan.device import default_device
from attnplan.errors import InvalidArguments
from attnplan.problems import random_inputs
from support import plan_or_skip, poisoned_outputs

pytestmark = pytest.mark.gpu

BACKENDS = ("nvrtc.sm80", "nvrtc.sm90a", "cudnn")
VARLEN = AttentionDescriptor(batch=3, seqlen_q=200, seqlen_kv=300, heads_q=4, heads_kv=2, head_dim=128,
                             dtype="bf16", causal=True, layout="thd")
PAGED = AttentionDescriptor(batch=3, seqlen_q=64, seqlen_kv=512, heads_q=4, heads_kv=2, head_dim=128,
                            dtype="bf16", paged=PagedKV(64, 8))
DENSE = AttentionDescriptor(batch=2, seqlen_q=300, seqlen_kv=300, heads_q=4, heads_kv=4, head_dim=128,
                            dtype="bf16", causal=True)


def _plan(desc, backend):
    return plan_or_skip(desc, backend), default_device()


def _bits(t):
    import cupy
    return cupy.asnumpy(t.data.view(cupy.uint8) if hasattr(t, "data") else t.view(cupy.uint8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_broken_cu_seqlens_is_found_on_the_device_and_reported(backend):
    import cupy
    plan, device = _plan(VARLEN, backend)
    assert plan.device_check_reason == ""
    args = random_inputs(VARLEN, device, seed=3)
    out, lse = poisoned_outputs(VARLEN, args)
    plan.run(out=out, lse=lse, **args)
    plan.check()                                              # good values: nothing to report
    broken = cupy.array(cupy.asarray(args["cu_seqlens_q"]))
    broken[1] = broken[2] + 5                                 # decreases
    plan.run(out=out, lse=lse, **{**args, "cu_seqlens_q": broken})   # launches; no host copy, no raise
    with pytest.raises(InvalidArguments, match="cu_seqlens_q.*device-side check"):
        plan.check()
    plan.run(out=out, lse=lse, **args)
    plan.check()                                              # reported once


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_out_of_range_page_is_reported_and_never_read(backend):
    import cupy
    plan, device = _plan(PAGED, backend)
    args = random_inputs(PAGED, device, seed=4)
    table = cupy.array(cupy.asarray(args["block_table"]))
    table[1, 0] = 1 << 28                                     # far past the cache
    out, lse = poisoned_outputs(PAGED, args)
    plan.run(out=out, lse=lse, **{**args, "block_table": table})
    cupy.cuda.runtime.deviceSynchronize()                     # an out-of-bounds read would fault here
    with pytest.raises(InvalidArguments, match="block_table"):
        plan.check()


def _count_allocations(run):
    import cupy
    pool, calls = cupy.get_default_memory_pool(), []

    def counting(nbytes):
        calls.append(nbytes)
        return pool.malloc(nbytes)
    cupy.cuda.set_allocator(counting)
    try:
        run()
    finally:
        cupy.cuda.set_allocator(pool.malloc)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("desc", [DENSE, VARLEN.replace(return_lse=False), PAGED], ids=["dense", "varlen", "paged"])
def test_a_warm_run_allocates_nothing_with_the_callers_outputs_and_workspace(backend, desc):
    import cupy
    plan, device = _plan(desc, backend)
    args = random_inputs(desc, device, seed=5)
    out, lse = poisoned_outputs(desc, args)
    outputs = {"out": out, **({"lse": lse} if desc.return_lse else {})}
    workspace = cupy.empty(max(plan.workspace_size, 1), dtype=cupy.uint8)
    plan.run(workspace=workspace, **outputs, **args)
    calls = _count_allocations(lambda: [plan.run(workspace=workspace, **outputs, **args) for _ in range(3)])
    assert calls == [], f"{plan.sku.kernel} allocated {calls}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("desc", [DENSE, VARLEN, PAGED], ids=["dense", "varlen", "paged"])
def test_a_captured_run_replays_to_the_eager_result(backend, desc):
    import cupy
    plan, device = _plan(desc, backend)
    args = random_inputs(desc, device, seed=6)
    eager_out, eager_lse = poisoned_outputs(desc, args)
    graph_out, graph_lse = poisoned_outputs(desc, args)
    workspace = cupy.empty(max(plan.workspace_size, 1), dtype=cupy.uint8)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        plan.run(out=eager_out, lse=eager_lse, workspace=workspace, **args)      # the warm-up, on this stream
        stream.synchronize()
        stream.begin_capture()
        try:
            plan.run(out=graph_out, lse=graph_lse, workspace=workspace, **args)
        finally:
            graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
    assert (_bits(graph_out) == _bits(eager_out)).all() and (_bits(graph_lse) == _bits(eager_lse)).all()
    plan.check()


def test_cudnn_keeps_its_dropout_seed_on_the_device():
    desc = DENSE.replace(dropout_p=0.2, causal=False)
    plan, device = _plan(desc, "cudnn")
    args = random_inputs(desc, device, seed=7)
    del args["dropout_seed"]
    results = []
    for seed in (11, 12, 11):
        out, lse = poisoned_outputs(desc, args)
        plan.run(out=out, lse=lse, dropout_seed=seed, **args)
        results.append(_bits(out))
    assert (results[0] == results[2]).all() and not (results[0] == results[1]).all()
    out, lse = poisoned_outputs(desc, args)
    calls = _count_allocations(lambda: plan.run(out=out, lse=lse, dropout_seed=11, **args))
    assert calls == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("empty", ["q", "kv"])
def test_empty_packed_totals(backend, empty):
    """The GPU fuzz's first failures (2026-12-02): varlen with no query rows, or no key rows."""
    import cupy
    desc = AttentionDescriptor(batch=1, seqlen_q=1, seqlen_kv=1, heads_q=1, heads_kv=1, head_dim=64, dtype="f16",
                               layout="thd", return_lse=True)
    plan, device = _plan(desc, backend)
    rows_q, rows_kv = (0, 1) if empty == "q" else (1, 0)
    q, kv = cupy.ones((rows_q, 1, 64), cupy.float16), cupy.ones((rows_kv, 1, 64), cupy.float16)
    args = {"q": q, "k": kv, "v": kv.copy(),
            "cu_seqlens_q": cupy.array([0, rows_q], cupy.int32), "cu_seqlens_kv": cupy.array([0, rows_kv], cupy.int32)}
    result = plan.run(**args)
    out, lse = result.out, result.lse
    assert out.shape == (rows_q, 1, 64) and lse.shape == (1, rows_q)
    if rows_q:
        assert bool((out == 0).all()) and bool(cupy.isneginf(lse).all())
    plan.check()


# -- the backward ----------------------------------------------------------------------------------

BACKWARD = DENSE.replace(direction="backward", heads_kv=2)
BACKWARD_BACKENDS = ("nvrtc.sm80", "cudnn")


def _gradient_storage(plan, args):
    """NaN-filled dq, dk, dv of the plan's dtype (every element must be written)."""
    from support import _storage
    import cupy
    dtype = plan.desc.dtype
    return {name: _storage(args[role].shape, dtype, cupy) for name, role in (("dq", "q"), ("dk", "k"), ("dv", "v"))}


@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_a_warm_backward_allocates_nothing_with_the_callers_gradients_and_workspace(backend, deterministic):
    import cupy
    from support import backward_inputs
    desc = BACKWARD.replace(deterministic=deterministic)
    plan, device = _plan(desc, backend)
    args = backward_inputs(desc, seed=8)
    grads = _gradient_storage(plan, args)
    workspace = cupy.empty(max(plan.workspace_size, 1), dtype=cupy.uint8)
    plan.run(workspace=workspace, **grads, **args)
    calls = _count_allocations(lambda: [plan.run(workspace=workspace, **grads, **args) for _ in range(3)])
    assert calls == [], f"{plan.sku.kernel} allocated {calls}"


@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_a_captured_backward_replays_to_the_eager_result(backend, deterministic):
    """Bits equal where the plan is deterministic; where dQ is summed by atomics (the order of
    float additions varies run to run), equal up to that rounding."""
    import cupy
    from attnplan.accuracy import host_f64
    from support import backward_inputs
    desc = BACKWARD.replace(deterministic=deterministic)
    plan, device = _plan(desc, backend)
    args = backward_inputs(desc, seed=9)
    eager, graphed = _gradient_storage(plan, args), _gradient_storage(plan, args)
    workspace = cupy.empty(max(plan.workspace_size, 1), dtype=cupy.uint8)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        plan.run(workspace=workspace, **eager, **args)
        stream.synchronize()
        stream.begin_capture()
        try:
            plan.run(workspace=workspace, **graphed, **args)
        finally:
            graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
    for name in ("dq", "dk", "dv"):
        got, want = host_f64(graphed[name]), host_f64(eager[name])
        assert np.isfinite(got).all(), name
        if plan.sku.precision.deterministic:
            assert (_bits(graphed[name]) == _bits(eager[name])).all(), name
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=2.0**-7 * max(1.0, np.abs(want).max()), err_msg=name)
    plan.check()
