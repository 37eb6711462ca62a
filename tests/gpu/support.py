"""Shared machinery of the GPU tests: poisoned outputs, the float64 reference with float64
outputs, the low-precision reference, and FlashAttention's tolerance rule."""

from __future__ import annotations

import zlib

import numpy as np

from attnplan import Plan
from attnplan.accuracy import host_f64, max_abs_error, within_tolerance
from attnplan.arguments import bind_arguments, lse_shape
from attnplan.backends.reference import ReferenceBackend
from attnplan.device import default_device
from attnplan.dtypes import lse_dtype
from attnplan.dtypes import HOST_DTYPES
from attnplan.interop import Tensor, as_tensor, wrap_storage
from attnplan.problems import random_inputs

# Half an ulp at 1.0 of the output dtype: the floor of any rounding comparison.
EPSILON = {"bf16": 2.0**-9, "f16": 2.0**-12, "e4m3": 2.0**-4, "e5m2": 2.0**-3}
LSE_EPSILON = 1e-3
# fp8 kernels sum the softmax denominator from fp8-quantized probabilities (cuDNN's fp8 SDPA: 3 mantissa
# bits for e4m3), so their LSE carries that rounding: a wider floor than the 16-bit kernels' 1e-3.
LSE_EPSILON_FP8 = 4e-3


def seed_for(desc) -> int:
    """A seed fixed by the descriptor's value (Python's hash() of strings changes every process)."""
    return zlib.crc32(repr(desc).encode()) % 1000


def _storage(shape, dtype, xp, fill=np.nan):
    raw = {"bf16": np.uint16}.get(dtype)
    if xp is np:                                                        # host storage is ml_dtypes
        return wrap_storage(np.full(shape, fill, dtype=HOST_DTYPES[dtype]), dtype)
    if dtype in ("e4m3", "e5m2"):
        return wrap_storage(xp.full(shape, 0x7F, dtype=np.uint8), dtype)        # fp8 NaN bits
    if raw is not None:
        return wrap_storage(xp.full(shape, 0x7FC0, dtype=raw), dtype)   # bf16 NaN bits
    return wrap_storage(xp.full(shape, fill, dtype={"f16": np.float16, "f32": np.float32,
                                                    "f64": np.float64}[dtype]), dtype)


def reference_forward(desc, args, compute="f64", emulate=False, out_dtype="f64"):
    """(out, lse) of the reference with outputs kept in `out_dtype` (float64 by default)."""
    exe = ReferenceBackend().build(desc, default_device(), {"compute": compute, "emulate_dtype": emulate})
    bound = bind_arguments(desc, {k: v for k, v in args.items() if k not in ("out", "lse")})
    xp = bound.q.xp
    q = bound.q
    out = _storage(q.shape[:-1] + (desc.head_dim_v,), out_dtype, xp)
    lse = _storage(lse_shape(desc, q.shape[0]), "f64" if out_dtype == "f64" else "f32", xp)
    exe.forward(bound, out, lse)
    return out, lse


def poisoned_outputs(desc, args):
    import cupy
    q = args["q"]
    shape = tuple(q.shape[:-1]) + (desc.head_dim_v,)
    out = _storage(shape, desc.out_dtype, cupy)
    lse = _storage(lse_shape(desc, q.shape[0]), lse_dtype(desc.dtype), cupy)
    return out, lse


def plan_or_skip(desc, backend: str, device=None) -> Plan:
    """`backend`'s plan for `desc` on the GPU (or `device`); a skip with the backend's reasons where it
    declines (a decline is never a pass)."""
    from attnplan.errors import NoPlanError
    import pytest
    device = device or default_device()
    if device.kind != "cuda":
        pytest.skip("needs a GPU")
    try:
        return Plan.select(desc, device, prefer=backend, restrict=True)
    except NoPlanError as exc:
        pytest.skip(f"{backend} declines: {exc.verdicts.of(backend).reasons}")


def check_forward(desc, backend: str, seed: int = 0):
    """Run `backend` on fresh random inputs with poisoned outputs; assert the tolerance rule for
    out and LSE against the float64 reference.  Returns the errors for reporting."""
    device = default_device()
    args = random_inputs(desc, device, seed=seed)
    plan = Plan.select(desc, device, prefer=backend, restrict=True)
    out, lse = poisoned_outputs(desc, args)
    plan.run(out=out, lse=lse, **args)
    exact_out, exact_lse = reference_forward(desc, args)
    low_out, low_lse = reference_forward(desc, args, compute="f32", emulate=True, out_dtype=desc.out_dtype)
    errors = {
        "out": max_abs_error(out, exact_out), "out_lowp_ref": max_abs_error(low_out, exact_out),
        "lse": max_abs_error(lse, exact_lse), "lse_lowp_ref": max_abs_error(low_lse, exact_lse),
    }
    assert within_tolerance(errors["out"], errors["out_lowp_ref"], EPSILON[desc.out_dtype]), (plan.sku.kernel, errors)
    lse_epsilon = LSE_EPSILON_FP8 if desc.is_fp8 else LSE_EPSILON
    assert within_tolerance(errors["lse"], errors["lse_lowp_ref"], lse_epsilon), (plan.sku.kernel, errors)
    return errors


# -- backward ------------------------------------------------------------------------------------

GRADIENTS = ("dq", "dk", "dv")
SINK_RELATIVE = 1e-3


def forward_descriptor(desc):
    return desc.replace(direction="forward", return_lse=True, deterministic=False)


def backward_inputs(desc, seed: int = 0) -> dict:
    """Fresh random q, k, v, dout (and extras) with out / lse from the float64 reference, out rounded
    to the output dtype as a real forward pass would store it."""
    args = random_inputs(desc, default_device(), seed=seed)
    forward_args = {k: v for k, v in args.items() if k != "dout"}
    out, lse = reference_forward(forward_descriptor(desc), forward_args, out_dtype=desc.out_dtype)
    args["out"], args["lse"] = out, lse     # Tensors: bf16 stays raw storage with its logical dtype
    return args


def reference_backward(desc, args, compute="f64", emulate=False, grad_dtype="f64"):
    """{dq, dk, dv[, dsink]} of the reference, gradients kept in `grad_dtype`."""
    exe = ReferenceBackend().build(desc, default_device(), {"compute": compute, "emulate_dtype": emulate})
    bound = bind_arguments(desc, args)
    xp = bound.q.xp
    grads = {"dq": _storage(bound.q.shape, grad_dtype, xp), "dk": _storage(bound.k.shape, grad_dtype, xp),
             "dv": _storage(bound.v.shape, grad_dtype, xp)}
    sink_dtype = "f64" if grad_dtype == "f64" else "f32"
    grads["dsink"] = _storage((desc.heads_q,), sink_dtype, xp) if desc.sink_logits else None
    exe.backward(bound, grads["dq"], grads["dk"], grads["dv"], grads["dsink"])
    return grads


def run_backward_poisoned(plan, args):
    """The plan's backward executable on NaN-filled gradient storage: every element must be written."""
    import cupy
    desc = plan.desc
    bound = plan.can_implement(**args)
    grads = {"dq": _storage(bound.q.shape, desc.dtype, cupy), "dk": _storage(bound.k.shape, desc.dtype, cupy),
             "dv": _storage(bound.v.shape, desc.dtype, cupy)}
    grads["dsink"] = _storage((desc.heads_q,), "f32", cupy) if desc.sink_logits else None
    plan._executable.backward(bound, grads["dq"], grads["dk"], grads["dv"], grads["dsink"])
    cupy.cuda.Device().synchronize()
    return grads


def pinned_plan(desc, backend_name: str, config: dict) -> Plan:
    """A plan of `backend_name` (a backend, or a family such as "nvrtc": its first member that accepts
    `desc`) built with an explicit tile config (bypassing the arch's choice)."""
    from attnplan import explain, registry
    device = default_device()
    members = registry.resolve(backend_name)
    accepting = [b for b in members if explain(desc, device, prefer=b.name, restrict=True).choice == b.name]
    if not accepting:
        raise AssertionError(f"no member of {backend_name!r} accepts {desc}")
    backend = accepting[0]
    return Plan(desc, device, backend, backend.build(desc, device, config))


def check_backward(desc, backend: str, seed: int = 0, plan: Plan | None = None, args: dict | None = None):
    """Run `backend`'s backward (or `plan`) on fresh random inputs (or `args`) with poisoned gradients;
    assert the tolerance rule for dq, dk, dv (and d sink_logits) against the float64 reference.
    Returns the errors."""
    device = default_device()
    args = args if args is not None else backward_inputs(desc, seed)
    plan = plan or Plan.select(desc, device, prefer=backend, restrict=True)
    got = run_backward_poisoned(plan, args)
    exact = reference_backward(desc, args)
    low = reference_backward(desc, args, compute="f32", emulate=True, grad_dtype=desc.dtype)
    errors = {}
    for name in GRADIENTS:
        errors[name] = max_abs_error(got[name], exact[name])
        errors[f"{name}_lowp_ref"] = max_abs_error(low[name], exact[name])
        errors[f"{name}_max"] = max_abs_error(exact[name], _storage(exact[name].shape, "f64", exact[name].xp, 0.0))
    baselines = {name: errors[f"{name}_lowp_ref"] for name in GRADIENTS}
    if desc.group_size > 1 and desc.paged is None:
        for name, error in expanded_group_errors(desc, args, exact).items():
            errors[f"{name}_lowp_expanded"] = error
            baselines[name] = max(baselines[name], error)
    for name in GRADIENTS:
        assert within_tolerance(errors[name], baselines[name], EPSILON[desc.dtype]), (plan.sku.kernel, name, errors)
    if desc.sink_logits:
        # d sink_logits sums delta_i = dot(dout_i, out_i) over every row, and `out` reaches a kernel
        # rounded to the output dtype (the reference recomputes it exactly): the error that rounding
        # alone causes joins the baseline, and the kernel must match the value its inputs define.
        given = sink_gradient_given_out(desc, args)
        size = float(np.abs(host_f64(exact["dsink"])).max())
        errors["dsink"] = max_abs_error(got["dsink"], exact["dsink"])
        errors["dsink_lowp_ref"] = max_abs_error(low["dsink"], exact["dsink"])
        errors["dsink_out_rounding"] = float(np.abs(given - host_f64(exact["dsink"])).max())
        errors["dsink_vs_given_out"] = float(np.abs(host_f64(got["dsink"]) - given).max())
        baseline = max(errors["dsink_lowp_ref"], errors["dsink_out_rounding"])
        assert within_tolerance(errors["dsink"], baseline, SINK_RELATIVE * (1.0 + size)), (plan.sku.kernel, errors)
        assert errors["dsink_vs_given_out"] <= SINK_RELATIVE * (1.0 + size), (plan.sku.kernel, errors)
    return errors


def _head_axis(desc, ndim: int) -> int:
    return 1 if desc.layout == "bhsd" else ndim - 2


def _repeat_heads(value, desc):
    """K or V with every kv head repeated group_size times (consecutive, as heads are grouped)."""
    t = value if isinstance(value, Tensor) else as_tensor(value, "k")
    return wrap_storage(t.xp.repeat(t.data, desc.group_size, axis=_head_axis(desc, t.data.ndim)), t.dtype)


def expanded_group_errors(desc, args, exact) -> dict:
    """dK / dV errors of FlashAttention's own GQA reference in the kernel's dtype: K and V repeated to
    every query head, each query head's gradient rounded to the dtype, then summed over the group and
    rounded once more (what autograd through a repeat computes in bf16 / f16).  A kernel that reduces
    the group from per-head gradients (cuDNN) is held to this baseline too; one that accumulates the
    group in f32 meets the stricter one anyway."""
    mha = desc.replace(heads_kv=desc.heads_q)
    low = reference_backward(mha, dict(args, k=_repeat_heads(args["k"], desc), v=_repeat_heads(args["v"], desc)),
                             compute="f32", emulate=True, grad_dtype=desc.dtype)
    errors = {}
    for name in ("dk", "dv"):
        per_head = host_f64(low[name]).astype(np.float32)
        axis = _head_axis(desc, per_head.ndim)
        grouped = per_head.reshape(per_head.shape[:axis] + (desc.heads_kv, desc.group_size) + per_head.shape[axis + 1:])
        summed = grouped.sum(axis=axis + 1).astype(HOST_DTYPES[desc.dtype])
        errors[name] = max_abs_error(summed, exact[name])
    return errors


def sink_gradient_given_out(desc, args) -> np.ndarray:
    """-sum_{b,i} exp(sink_h - lse) * dot(dout, out) in float64 from the arguments as given."""
    out, dout, lse = (host_f64(args[name]) for name in ("out", "dout", "lse"))
    sink = host_f64(args["sink_logits"])
    delta = (out * dout).sum(axis=-1)               # q-like layout without the last dim
    if desc.layout == "bshd":
        delta = delta.transpose(0, 2, 1)            # [b, s, h] -> [b, h, s] like lse
    elif desc.layout == "thd":
        delta = delta.T                             # [t, h] -> [h, t]
    finite = np.isfinite(lse)
    shaped = sink[:, None] if desc.layout == "thd" else sink[None, :, None]
    weight = np.where(finite, np.exp(shaped - np.where(finite, lse, 0.0)), 0.0)
    axes = (1,) if desc.layout == "thd" else (0, 2)
    return -(weight * delta).sum(axis=axes)
