"""The cuDNN backend on the GPU: every forward-sweep descriptor is either rejected at Plan.select
with a cuDNN reason or matches the float64 reference (FlashAttention's 2x rule); gradients
likewise; dropout (cuDNN's own RNG) by its statistics and by forward/backward mask agreement."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from attnplan import AttentionDescriptor, NoPlanError, Plan, explain
from attnplan.accuracy import host_f64
from attnplan.device import default_device
from attnplan.dtypes import HOST_DTYPES
from attnplan.errors import InvalidArguments
from attnplan.interop import as_tensor, wrap_storage
from attnplan.problems import random_inputs

from cases import backward_cases, forward_cases
from support import (backward_inputs, check_backward, check_forward, reference_forward, run_backward_poisoned,
                     seed_for)

cudnn = pytest.importorskip("cudnn", reason="nvidia-cudnn-frontend is not installed")

FORWARD = forward_cases()
BACKWARD = backward_cases()
# Features whose semantics cuDNN cannot reproduce: rejected by attnplan itself, whatever cuDNN's version.
SEMANTIC_REJECTS = ("alibi", "softcap", "window_sinks", "everything")
# What cuDNN >= 9.19 accepts (checked on sm_90); later versions must keep accepting it.
MUST_ACCEPT = ("bf16-d64-causal0", "bf16-d128-causal1", "f16-d64-causal1", "f16-d128-causal0", "gqa4-d64",
               "mqa8-d128", "bhsd-d64", "top_left-d64", "bottom_right_q_longer-d64", "window_causal-d64",
               "window_two_sided-d64", "sink_logits-d64", "dropout-d64", "varlen", "varlen-causal-gqa",
               "paged16", "len1023x1023-causal1")
# cuDNN 9.19 leaves the rows of a sequence with no keys unwritten (varlen and paged; the GPU fuzz,
# 2026-12-02): the runner defines them after the graph (CudnnRunner._define_rows_without_keys).
ENFORCE_ACCEPT = cudnn.backend_version() >= 91900


def _record(test: str, case: str, status: str, **info) -> None:
    """One JSON line per case under $OUT (the device session's log folder), when set."""
    folder = os.environ.get("OUT")
    if not folder:
        return
    with open(os.path.join(folder, "cudnn_cases.jsonl"), "a") as fh:
        fh.write(json.dumps({"test": test, "case": case, "status": status, **info}, default=str) + "\n")


def _cudnn_verdict(desc):
    return next(v for v in explain(desc, default_device(), prefer="cudnn") if v.backend == "cudnn")


def _assert_rejected_at_select(desc) -> str:
    with pytest.raises(NoPlanError) as info:
        Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    message = str(info.value)
    assert "cudnn" in message
    verdict = info.value.verdicts[0]
    assert verdict.backend == "cudnn" and not verdict.accepted and verdict.reasons and all(verdict.reasons)
    return "; ".join(verdict.reasons)


def _typed(x, dtype: str):
    """A plan's output as an attnplan Tensor of `dtype` (CuPy may hand bf16 back as raw uint16 bits)."""
    t = as_tensor(x, "x")
    return wrap_storage(t.data, dtype) if t.dtype != dtype else t


def _values(x, dtype: str) -> np.ndarray:
    return host_f64(_typed(x, dtype))


def _device_array(host: np.ndarray):
    from attnplan.problems import _to_device
    import cupy
    return _to_device(host, cupy)


def _run_case(direction: str, name: str, desc, check) -> None:
    """The shared verdict of a forward or backward case: a semantic reject must be rejected, a case
    cuDNN must take must be accepted; a rejected case must be refused at Plan.select (recorded with
    the reason); an accepted one is checked by check(desc) -> errors dict, recorded either way."""
    start = time.time()
    verdict = _cudnn_verdict(desc)
    if name.startswith(SEMANTIC_REJECTS):
        assert not verdict.accepted, name
    if name in MUST_ACCEPT and ENFORCE_ACCEPT:
        assert verdict.accepted, verdict.reasons
    if not verdict.accepted:
        reason = _assert_rejected_at_select(desc)
        _record(direction, name, "rejected", reason=reason, seconds=time.time() - start)
        return
    try:
        info = check(desc)
    except BaseException as exc:
        _record(direction, name, "FAILED", error=repr(exc)[:2000], seconds=time.time() - start)
        raise
    plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    extra = {"deterministic": plan.sku.precision.deterministic} if direction == "backward" else {}
    _record(direction, name, "passed", errors=info, plan=plan.sku.config_dict, workspace=plan.workspace_size,
            seconds=time.time() - start, **extra)


def _check_forward_case(desc) -> dict:
    if desc.dropout_p > 0:
        return _check_dropout_forward(desc)
    info = check_forward(desc, "cudnn", seed=seed_for(desc))
    assert info["out"] < 0.05, info
    return info


@pytest.mark.parametrize("name, desc", FORWARD, ids=[n for n, _ in FORWARD])
def test_forward_matches_reference_or_is_rejected_at_select(name, desc):
    _run_case("forward", name, desc, _check_forward_case)


def _check_dropout_forward(desc) -> dict:
    """q = 0 makes P uniform over the visible keys and v = 1 makes out_i the kept fraction / (1 - p):
    its mean is 1, its spread across rows is sqrt(p / ((1 - p) n)), and the LSE is dropout-free."""
    device = default_device()
    args = random_inputs(desc, device, seed=5)
    q_host = np.zeros(tuple(args["q"].shape), dtype=HOST_DTYPES[desc.dtype])
    v_host = np.ones(tuple(args["v"].shape), dtype=HOST_DTYPES[desc.dtype])
    args["q"], args["v"] = _device_array(q_host), _device_array(v_host)
    plan = Plan.select(desc, device, prefer="cudnn", restrict=True)
    assert "Philox" in plan.sku.notes and "NOT" in plan.sku.notes
    out, lse = plan.run(**args)
    out_again, _ = plan.run(**args)
    other = dict(args, dropout_seed=args["dropout_seed"] ^ 0x5DEECE66D)
    out_other, _ = plan.run(**other)
    values = _values(out, desc.dtype)
    assert np.array_equal(values, _values(out_again, desc.dtype)), "same seed, different mask"
    assert not np.array_equal(values, _values(out_other, desc.dtype)), "the seed is ignored"
    rows = values[..., 0].ravel()
    expected_spread = np.sqrt(desc.dropout_p / ((1 - desc.dropout_p) * desc.seqlen_kv))
    info = {"mean": float(rows.mean()), "spread": float(rows.std()), "expected_spread": float(expected_spread)}
    assert abs(rows.mean() - 1.0) < 0.01, info
    if not (desc.causal or desc.has_window or desc.varlen or desc.paged):   # every row sees seqlen_kv keys
        assert 0.7 * expected_spread < rows.std() < 1.3 * expected_spread, info
    _, exact_lse = reference_forward(desc, args)
    info["lse"] = float(np.abs(host_f64(lse) - host_f64(exact_lse)).max())
    assert info["lse"] < 1e-3, info
    return info


def _check_backward_case(desc) -> dict:
    if desc.dropout_p > 0:
        return _check_dropout_backward(desc)
    info = check_backward(desc, "cudnn", seed=seed_for(desc))
    for grad in ("dq", "dk", "dv"):
        assert info[grad] < 0.1 * max(1.0, info[f"{grad}_max"]), (grad, info)
    if desc.deterministic:
        info["bit_identical"] = _check_bit_identical(desc)
    return info


@pytest.mark.parametrize("name, desc", BACKWARD, ids=[n for n, _ in BACKWARD])
def test_backward_matches_reference_or_is_rejected_at_select(name, desc):
    _run_case("backward", name, desc, _check_backward_case)


def _check_bit_identical(desc) -> bool:
    plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    assert plan.sku.precision.deterministic
    args = backward_inputs(desc, seed=7)
    first = run_backward_poisoned(plan, args)
    again = run_backward_poisoned(plan, args)
    for name in ("dq", "dk", "dv"):
        assert np.array_equal(host_f64(first[name]), host_f64(again[name])), name
    return True


def _check_dropout_backward(desc) -> dict:
    """With q = 0 (P uniform) and v = 1, the forward's out_i is the row's kept mass sum_j P_ij Z_ij and
    the backward's sum_j dV_j = sum_i dO_i * (sum_j P_ij Z_ij): equal only if both passes draw the same
    mask.  dO = +-1 per row with zero sum isolates the mask-dependent part; a different seed in the
    forward is the yardstick of disagreement."""
    device = default_device()
    fwd = desc.replace(direction="forward", return_lse=True, deterministic=False)
    args = random_inputs(fwd, device, seed=9)
    shape_q, shape_v = tuple(args["q"].shape), tuple(args["v"].shape)
    args["q"] = _device_array(np.zeros(shape_q, dtype=HOST_DTYPES[desc.dtype]))
    args["v"] = _device_array(np.ones(shape_v, dtype=HOST_DTYPES[desc.dtype]))
    signs = np.where(np.arange(desc.seqlen_q) % 2 == 0, 1.0, -1.0)
    dout_host = np.broadcast_to(signs[None, :, None, None], shape_q[:3] + (desc.head_dim_v,)).astype(HOST_DTYPES[desc.dtype])
    forward_plan = Plan.select(fwd, device, prefer="cudnn", restrict=True)
    backward_plan = Plan.select(desc, device, prefer="cudnn", restrict=True)
    out, lse = forward_plan.run(**args)
    out_other, _ = forward_plan.run(**dict(args, dropout_seed=args["dropout_seed"] ^ 0x9E3779B9))
    bargs = dict(args, out=_typed(out, desc.dtype), lse=lse, dout=_device_array(np.ascontiguousarray(dout_host)))
    _, _, dv = backward_plan.run(**bargs)
    lhs = _values(dv, desc.dtype).sum(axis=1)                           # [b, h, d] (MHA)
    d = host_f64(bargs["dout"])
    same = (_values(out, desc.dtype) * d).sum(axis=1)
    cross = (_values(out_other, desc.dtype) * d).sum(axis=1)
    info = {"same_seed": float(np.abs(lhs - same).max()), "other_seed": float(np.abs(lhs - cross).max())}
    assert info["same_seed"] < 0.2 * info["other_seed"], info
    return info


# -- plans, SKUs, workspace, caching, streams, strides ---------------------------------------------

def _desc(**fields) -> AttentionDescriptor:
    base = dict(batch=2, seqlen_q=200, seqlen_kv=300, heads_q=4, heads_kv=2, head_dim=64, dtype="bf16",
                causal=True, return_lse=True)
    base.update(fields)
    return AttentionDescriptor(**base)


def test_sku_reports_versions_plan_and_precision():
    plan = Plan.select(_desc(), default_device(), prefer="cudnn", restrict=True)
    sku = plan.sku
    assert sku.backend == "cudnn" and sku.kernel == "cudnn_sdpa_fprop"
    versions = sku.versions_dict
    assert versions["cudnn_frontend"] == cudnn.__version__ and versions["cudnn"].startswith("9.")
    assert sku.config_dict["plan"] and sku.config_dict["served_by"]
    assert sku.precision.accumulator == "f32" and sku.precision.math_precision == "bf16"
    assert sku.workspace_bytes == plan.workspace_size
    pinned = Plan.from_sku(_desc(), sku)
    assert pinned.sku.identity() == sku.identity()
    backward = Plan.select(_desc(direction="backward", return_lse=False), default_device(), prefer="cudnn",
                           restrict=True)
    assert backward.sku.kernel == "cudnn_sdpa_bprop" and not backward.sku.precision.deterministic
    _record("api", "sku", "passed", sku=sku.to_dict(), backward=backward.sku.to_dict())


def test_graphs_are_built_once_per_descriptor():
    from attnplan.backends.cudnn.graphs import GRAPHS
    desc = _desc(seqlen_q=77)
    Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    misses = GRAPHS.misses
    for _ in range(3):
        plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
        plan.run(**random_inputs(desc, default_device(), seed=1))
    assert GRAPHS.misses == misses


def test_workspace_is_honoured_and_checked():
    import cupy
    desc = _desc(direction="backward", return_lse=False)
    plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    args = backward_inputs(desc, seed=2)
    first = plan.run(**args)
    if plan.workspace_size == 0:
        pytest.skip("this plan needs no workspace")
    workspace = cupy.empty(plan.workspace_size, dtype=cupy.uint8)
    again = plan.run(workspace=workspace, **args)
    for a, b in zip(first, again):
        np.testing.assert_allclose(_values(a, "bf16"), _values(b, "bf16"), rtol=2e-2, atol=2e-2)
    with pytest.raises(InvalidArguments):
        plan.run(workspace=cupy.empty(plan.workspace_size - 1, dtype=cupy.uint8), **args)


def test_runs_on_the_callers_stream():
    import cupy
    desc = _desc()
    plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    args = random_inputs(desc, default_device(), seed=3)
    expected, _ = plan.run(**args)
    stream = cupy.cuda.Stream(non_blocking=True)
    out, lse = plan.run(stream=stream, **args)
    stream.synchronize()
    np.testing.assert_array_equal(_values(out, "bf16"), _values(expected, "bf16"))


def test_strided_views_get_their_own_graph_and_match():
    """q, k, v as views into one packed qkv buffer (bshd, token stride 3 * h * d)."""
    import cupy
    desc = _desc(heads_kv=4, seqlen_kv=200, dtype="f16")
    device = default_device()
    args = random_inputs(desc, device, seed=4)
    packed = cupy.empty((2, 200, 3, 4, 64), dtype=args["q"].dtype)
    for i, name in enumerate(("q", "k", "v")):
        packed[:, :, i] = args[name]
    views = {name: packed[:, :, i] for i, name in enumerate(("q", "k", "v"))}
    plan = Plan.select(desc, device, prefer="cudnn", restrict=True)
    out, lse = plan.run(**views)
    dense, dense_lse = plan.run(**args)
    np.testing.assert_allclose(host_f64(out), host_f64(dense), atol=2e-3)
    np.testing.assert_allclose(host_f64(lse), host_f64(dense_lse), atol=1e-3)


def test_forward_is_run_to_run_identical():
    desc = _desc(seqlen_q=1, seqlen_kv=4000, causal=False)
    plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    assert plan.sku.precision.deterministic
    args = random_inputs(desc, default_device(), seed=6)
    first, _ = plan.run(**args)
    for _ in range(2):
        again, _ = plan.run(**args)
        assert np.array_equal(_values(first, "bf16"), _values(again, "bf16"))


def test_torch_tensors_through_dlpack():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    desc = _desc(heads_kv=4)
    plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    q = torch.randn(2, 200, 4, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 300, 4, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 300, 4, 64, device="cuda", dtype=torch.bfloat16)
    out, lse = plan.run(q=q, k=k, v=v)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and lse.shape == (2, 4, 200)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(),
        attn_mask=torch.ones(200, 300, device="cuda", dtype=torch.bool).tril(diagonal=100)).transpose(1, 2)
    assert (out.float() - ref).abs().max().item() < 0.03


def test_unaligned_pointer_is_an_argument_error():
    import cupy
    desc = _desc(heads_kv=4, dtype="f16")
    plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    args = random_inputs(desc, default_device(), seed=8)
    flat = cupy.empty(args["q"].size + 1, dtype=args["q"].dtype)
    args["q"] = flat[1:].reshape(args["q"].shape)
    with pytest.raises(InvalidArguments, match="aligned"):
        plan.run(**args)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_direct_execute_matches_the_public_execute_bit_for_bit(direction, monkeypatch):
    """graphs.DirectExecute (the lowered C++ graph) and the frontend's public graph.execute write the
    same bits, and the direct path is the one plan.run takes with this frontend."""
    from attnplan.backends.cudnn.graphs import GRAPHS
    desc = _desc(layout="thd") if direction == "forward" else \
        _desc(direction="backward", return_lse=False, deterministic=True)   # bits comparable run to run
    args = random_inputs(desc, default_device(), seed=9) if direction == "forward" else backward_inputs(desc, seed=9)
    results = {}
    for mode in ("public", "direct"):
        monkeypatch.setenv("ATTNPLAN_CUDNN_EXECUTE", "public" if mode == "public" else "")
        GRAPHS.clear()
        try:
            plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
        except NoPlanError as exc:
            pytest.skip(f"cuDNN rejects the case: {exc}")
        dtypes = ("bf16", "f32") if direction == "forward" else ("bf16",) * 3
        results[mode] = [_values(x, dt) for x, dt in zip(plan.run(**args), dtypes)]
        directs = [entry.direct for entry in GRAPHS._entries.values()]
        if mode == "public":
            assert directs and all(d is None for d in directs)
        else:
            assert directs and all(d is not None and d.enabled for d in directs)
    GRAPHS.clear()
    for a, b in zip(results["public"], results["direct"]):
        assert a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


FP8_CASES = [
    ("e4m3-d128", dict()),
    ("e4m3-d128-causal", dict(causal=True)),
    ("e4m3-d128-causal-bottom-right", dict(causal=True, seqlen_q=200, seqlen_kv=300)),
    ("e4m3-d64", dict(head_dim=64)),
    ("e4m3-d128-gqa", dict(heads_kv=2)),
    ("e5m2-d128", dict(dtype="e5m2", out_dtype="e5m2")),
    ("e4m3-d128-varlen", dict(layout="thd")),
    ("e4m3-d128-window", dict(causal=True, window=(64, 0))),
    ("e4m3-d128-out-bf16", dict(out_dtype="bf16")),
]


# What cuDNN 9.19 serves on sm_90 (the rest may be rejected, with cuDNN's reason).
FP8_MUST_ACCEPT = ("e4m3-d128", "e4m3-d128-causal")


def _fp8_desc(**fields):
    base = dict(batch=2, seqlen_q=256, seqlen_kv=256, heads_q=4, heads_kv=4, head_dim=128, dtype="e4m3",
                out_dtype="e4m3", causal=False, return_lse=True)
    return AttentionDescriptor(**{**base, **fields})


@pytest.mark.parametrize("name, fields", FP8_CASES, ids=[n for n, _ in FP8_CASES])
def test_fp8_matches_reference_or_is_rejected_at_select(name, fields):
    """cuDNN's fp8 SDPA graph (descale / scale / amax tensors wired, unit scales here) against the
    float64 reference under the 2x rule; what cuDNN rejects (bf16 output on Hopper) is a reason."""
    desc = _fp8_desc(**fields)
    verdict = _cudnn_verdict(desc)
    if not verdict.accepted:
        _record("fp8", name, "rejected", reason=_assert_rejected_at_select(desc))
        assert not (ENFORCE_ACCEPT and name in FP8_MUST_ACCEPT), verdict.reasons
        return
    errors = check_forward(desc, "cudnn", seed=seed_for(desc))
    _record("fp8", name, "passed", errors=errors)


def test_fp8_scales_and_amax_follow_the_reference():
    import cupy
    desc = _fp8_desc()
    device = default_device()
    args = random_inputs(desc, device, seed=11)
    scales = {"descale_q": 0.5, "descale_k": 1.5, "descale_v": 2.0, "scale_o": 8.0}
    args.update({name: cupy.array([value], cupy.float32) for name, value in scales.items()})
    plan = Plan.select(desc, device, prefer="cudnn", restrict=True)
    amax = cupy.zeros(1, cupy.float32)
    out, lse = plan.run(amax_o=amax, **args)
    exact_out, exact_lse = reference_forward(desc, args)
    want_amax = cupy.zeros(1, cupy.float32)
    ref_plan = Plan.select(desc, device, prefer="reference", restrict=True)
    low_out, _ = ref_plan.run(amax_o=want_amax, **args)
    out_error = float(np.abs(_values(out, "e4m3") - host_f64(exact_out)).max())
    low_error = float(np.abs(_values(low_out, "e4m3") - host_f64(exact_out)).max())
    info = {"out": out_error, "out_lowp_ref": low_error, "amax": float(amax[0]), "want_amax": float(want_amax[0]),
            "lse": float(np.abs(host_f64(lse) - host_f64(exact_lse)).max())}
    _record("fp8", "scales", "checked", errors=info)
    assert out_error <= 2 * low_error + 2.0**-4, info
    assert abs(info["amax"] - info["want_amax"]) <= 1e-2 * info["want_amax"], info
    assert info["lse"] < 1e-2, info


def test_fp8_output_saturates():
    import cupy
    desc = _fp8_desc()
    args = random_inputs(desc, default_device(), seed=12)
    plan = Plan.select(desc, default_device(), prefer="cudnn", restrict=True)
    out, _ = plan.run(scale_o=cupy.array([1e6], cupy.float32), **args)
    values = _values(out, "e4m3")
    assert np.isfinite(values).all() and np.abs(values).max() == 448.0


BIAS_CASES = [
    ("bias-forward", dict()),
    ("bias-forward-gqa-causal", dict(heads_kv=2, causal=True, seqlen_q=256, seqlen_kv=256)),
    ("bias-forward-f16-d64", dict(dtype="f16", head_dim=64)),
    ("bias-backward", dict(direction="backward", return_lse=False)),
    ("bias-backward-causal-gqa", dict(direction="backward", return_lse=False, causal=True, heads_kv=2,
                                      seqlen_q=256, seqlen_kv=256)),
]


@pytest.mark.parametrize("name, fields", BIAS_CASES, ids=[n for n, _ in BIAS_CASES])
def test_additive_bias_matches_reference(name, fields):
    """A full [batch, heads_q, seqlen_q, seqlen_kv] bias through cuDNN's bias input (forward and
    backward), against the float64 reference under the 2x rule.  (cuDNN 9.19 rejects a bias with a
    bottom-right band of unequal lengths: causal cases here have seqlen_q == seqlen_kv.)"""
    desc = _desc(**{"bias": True, "causal": False, **fields})
    verdict = _cudnn_verdict(desc)
    assert verdict.accepted, verdict.reasons
    check = check_backward if desc.direction == "backward" else check_forward
    _record("bias", name, "passed", errors=check(desc, "cudnn", seed=seed_for(desc)))


@pytest.mark.parametrize("shape", [(1, 4), (2, 1), (1, 1)])
def test_broadcast_bias_gets_its_own_graph_and_matches(shape):
    import cupy
    desc = _desc(bias=True, heads_kv=4, causal=False)
    device = default_device()
    args = random_inputs(desc, device, seed=13)
    small = cupy.asarray(np.random.default_rng(14).standard_normal(shape + (200, 300)).astype(HOST_DTYPES["bf16"])
                         .view(np.uint16))
    full = cupy.ascontiguousarray(cupy.broadcast_to(small, (2, 4, 200, 300)))
    as_bf16 = lambda raw: wrap_storage(raw, "bf16")  # noqa: E731
    plan = Plan.select(desc, device, prefer="cudnn", restrict=True)
    got, _ = plan.run(**dict(args, bias=as_bf16(small)))
    want, _ = plan.run(**dict(args, bias=as_bf16(full)))
    assert np.array_equal(_values(got, "bf16"), _values(want, "bf16"))
