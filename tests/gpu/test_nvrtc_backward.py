"""The NVRTC sm80 backward kernels against the float64 reference, FlashAttention's rule; the
deterministic mode is bit-identical run to run."""

import numpy as np
import pytest

from attnplan import AttentionDescriptor, Plan
from attnplan.accuracy import host_f64
from attnplan.device import default_device

from cases import backward_cases, benchmark_cases, deterministic_cases, pinned_backward_cases
from support import backward_inputs, check_backward, pinned_plan, run_backward_poisoned, seed_for

CASES = backward_cases()
DETERMINISTIC = deterministic_cases()


@pytest.mark.parametrize("desc", [d for _, d in CASES], ids=[n for n, _ in CASES])
def test_backward_matches_reference(desc):
    errors = check_backward(desc, "nvrtc", seed=seed_for(desc))
    for name in ("dq", "dk", "dv"):
        assert errors[name] < 0.1 * max(1.0, errors[f"{name}_max"]), (name, errors)   # never wildly off


def _bits(t):
    import cupy
    return cupy.asnumpy(t.data.view(np.uint16))


@pytest.mark.parametrize("desc", [d for _, d in DETERMINISTIC], ids=[n for n, _ in DETERMINISTIC])
def test_deterministic_is_bit_identical(desc):
    args = backward_inputs(desc, seed=7)
    plan = Plan.select(desc, default_device(), prefer="nvrtc", restrict=True)
    assert plan.sku.precision.deterministic and plan.sku.precision.bit_stable
    first = run_backward_poisoned(plan, args)
    for _ in range(2):
        again = run_backward_poisoned(plan, args)
        for name in ("dq", "dk", "dv"):
            assert np.array_equal(_bits(first[name]), _bits(again[name])), name


def test_plan_run_returns_gradients_and_honours_a_workspace():
    import cupy
    desc = AttentionDescriptor(batch=2, seqlen_q=130, seqlen_kv=200, heads_q=4, heads_kv=2, head_dim=64,
                               dtype="bf16", causal=True, sink_logits=True, direction="backward")
    plan = Plan.select(desc, default_device(), prefer="nvrtc", restrict=True)
    assert plan.sku.backend.startswith("nvrtc.") and not plan.sku.precision.deterministic
    assert plan.workspace_size == plan.sku.workspace_bytes > 0
    args = backward_inputs(desc, seed=3)
    dq, dk, dv, dsink = plan.run(**args)
    workspace = cupy.empty(plan.workspace_size, dtype=cupy.uint8)
    again = plan.run(workspace=workspace, **args)
    assert dq.shape == args["q"].shape and dk.shape == args["k"].shape and dv.shape == args["v"].shape
    assert dsink.shape == (4,) and dsink.dtype == np.float32
    for a, b in zip((dq, dk, dv, dsink), again):   # atomics may reorder sums: equal up to rounding
        np.testing.assert_allclose(host_f64(a), host_f64(b), rtol=2e-2, atol=2e-2)
    assert np.isfinite(host_f64(dq)).all() and np.abs(host_f64(dk)).max() > 0


def test_paged_backward_is_rejected_with_a_reason():
    from attnplan import PagedKV, explain
    from attnplan.errors import InvalidDescriptor
    with pytest.raises(InvalidDescriptor):
        AttentionDescriptor(batch=1, seqlen_q=16, seqlen_kv=64, heads_q=2, heads_kv=2, head_dim=64,
                            paged=PagedKV(16, 4), direction="backward")
    desc = AttentionDescriptor(batch=1, seqlen_q=16, seqlen_kv=64, heads_q=2, heads_kv=2, head_dim=64,
                               direction="backward")
    assert explain(desc, default_device())[0].accepted


BENCH = benchmark_cases()
PINNED = pinned_backward_cases()


@pytest.mark.parametrize("desc, config", [(d, c) for _, d, c in PINNED], ids=[n for n, _, _ in PINNED])
def test_pinned_fallback_tiles_match_reference(desc, config):
    plan = pinned_plan(desc, "nvrtc", config)
    assert all(plan.sku.config_dict[k] == v for k, v in config.items())
    check_backward(desc, "nvrtc", seed=11, plan=plan)


def _time_ms(fn, repeats: int = 5) -> float:
    import cupy
    fn()
    cupy.cuda.Device().synchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / repeats


def test_backward_throughput_report():
    """Times the backward on long sequences (FLOPs by the usual convention, 2.5x the forward's);
    writes a table to $OUT/bench_backward.txt when OUT is set.  Checks only that the gradients are finite."""
    import os

    lines = ["case  kernel  ms  TFLOP/s"]
    for name, desc in BENCH:
        args = _bench_inputs(desc)
        plan = Plan.select(desc, default_device(), prefer="nvrtc", restrict=True)
        grads = plan.run(**args)
        assert np.isfinite(host_f64(grads[0])).all() and np.isfinite(host_f64(grads[1])).all()
        ms = _time_ms(lambda: plan.run(check_values=False, **args))
        lines.append(f"{name}  {plan.sku.kernel}  {ms:.3f}  {desc.flops() / ms / 1e9:.1f}")
    report = "\n".join(lines) + "\n"
    print(report)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_backward.txt"), "w") as f:
            f.write(report)


def _bench_inputs(desc):
    """Random q, k, v, dout with out / lse from the nvrtc forward kernel (no reference: too slow)."""
    from attnplan.problems import random_inputs
    args = random_inputs(desc, default_device(), seed=1)
    forward = desc.replace(direction="forward", return_lse=True)
    fwd_args = {k: v for k, v in args.items() if k != "dout"}
    out, lse = Plan.select(forward, default_device(), prefer="nvrtc", restrict=True).run(**fwd_args)
    args["out"], args["lse"] = out, lse
    return args


def test_packed_qkv_views():
    """q, k, v as strided views of one packed [batch, seqlen, 3, heads, dim] buffer (outer strides
    that are not those of a contiguous tensor)."""
    import cupy
    desc = AttentionDescriptor(batch=2, seqlen_q=150, seqlen_kv=150, heads_q=4, heads_kv=4, head_dim=64,
                               dtype="f16", causal=True, direction="backward")
    args = backward_inputs(desc, seed=5)
    packed = cupy.empty((2, 150, 3, 4, 64), dtype=cupy.float16)
    for i, name in enumerate("qkv"):
        packed[:, :, i] = args[name]
        args[name] = packed[:, :, i]
    assert args["q"].strides[1] == 3 * 4 * 64 * 2
    check_backward(desc, "nvrtc", plan=Plan.select(desc, default_device(), prefer="nvrtc", restrict=True),
                   args=args)
