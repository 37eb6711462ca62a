"""Shared machinery of the GPU tests: poisoned outputs, the float64 reference with float64
outputs, the low-precision reference, and FlashAttention's tolerance rule."""

from __future__ import annotations

import numpy as np

from attnplan import Plan
from attnplan.accuracy import max_abs_error, within_tolerance
from attnplan.arguments import bind_arguments
from attnplan.backends.reference import ReferenceBackend
from attnplan.device import default_device
from attnplan.dtypes import lse_dtype, output_dtype
from attnplan.interop import wrap_storage
from attnplan.problems import random_inputs

# Half an ulp at 1.0 of the output dtype: the floor of any rounding comparison.
EPSILON = {"bf16": 2.0**-9, "f16": 2.0**-12}
LSE_EPSILON = 1e-3


def _storage(shape, dtype, xp, fill=np.nan):
    raw = {"bf16": np.uint16}.get(dtype)
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
    lse_shape = (desc.heads_q, q.shape[0]) if desc.layout == "thd" else (desc.batch, desc.heads_q, desc.seqlen_q)
    lse = _storage(lse_shape, "f64" if out_dtype == "f64" else "f32", xp)
    exe.forward(bound, out, lse)
    return out, lse


def poisoned_outputs(desc, args):
    import cupy
    q = args["q"]
    shape = tuple(q.shape[:-1]) + (desc.head_dim_v,)
    out = _storage(shape, output_dtype(desc.dtype), cupy)
    lse_shape = (desc.heads_q, q.shape[0]) if desc.layout == "thd" else (desc.batch, desc.heads_q, desc.seqlen_q)
    lse = _storage(lse_shape, lse_dtype(desc.dtype), cupy)
    return out, lse


def check_forward(desc, backend: str, seed: int = 0):
    """Run `backend` on fresh random inputs with poisoned outputs; assert the tolerance rule for
    out and LSE against the float64 reference.  Returns the errors for reporting."""
    device = default_device()
    args = random_inputs(desc, device, seed=seed)
    plan = Plan.select(desc, device, prefer=backend, restrict=True)
    out, lse = poisoned_outputs(desc, args)
    plan.run(out=out, lse=lse, **args)
    exact_out, exact_lse = reference_forward(desc, args)
    low_out, low_lse = reference_forward(desc, args, compute="f32", emulate=True, out_dtype=output_dtype(desc.dtype))
    errors = {
        "out": max_abs_error(out, exact_out), "out_lowp_ref": max_abs_error(low_out, exact_out),
        "lse": max_abs_error(lse, exact_lse), "lse_lowp_ref": max_abs_error(low_lse, exact_lse),
    }
    assert within_tolerance(errors["out"], errors["out_lowp_ref"], EPSILON[desc.dtype]), (plan.sku.kernel, errors)
    assert within_tolerance(errors["lse"], errors["lse_lowp_ref"], LSE_EPSILON), (plan.sku.kernel, errors)
    return errors
