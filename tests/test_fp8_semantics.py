"""fp8 semantics on the reference: per-tensor descales of q, k, v, an fp8 `out` stored as O * scale_o
and saturated to the format's range, amax_o = max|O|, and the argument rules around them."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from attnplan import AttentionDescriptor, InvalidArguments, InvalidDescriptor, Plan
from attnplan.accuracy import host_f64
from attnplan.device import as_device
from attnplan.problems import random_inputs

CPU = as_device("cpu")


def _desc(**fields):
    base = dict(batch=2, seqlen_q=9, seqlen_kv=13, heads_q=4, heads_kv=2, head_dim=16, dtype="e4m3", causal=True,
                return_lse=True)
    return AttentionDescriptor(**{**base, **fields})


def _scalar(value):
    return np.array([value], np.float32)


def _run(desc, **extra):
    args = random_inputs(desc, CPU, seed=3)
    plan = Plan.select(desc, "cpu", prefer="reference", restrict=True)
    result = plan.run(**args, **extra)
    return host_f64(result.out), host_f64(result.lse), args


def test_out_dtype_defaults_and_choices():
    assert _desc().out_dtype == "bf16" and _desc(dtype="f16").out_dtype == "f16"
    assert _desc(out_dtype="e4m3").out_dtype == "e4m3"
    assert _desc(out_dtype="e4m3").replace(dtype="e5m2", out_dtype="e5m2").out_dtype == "e5m2"
    assert _desc().replace(dtype="f16").out_dtype == "f16"          # a derived default follows dtype
    for bad in (dict(out_dtype="e5m2"), dict(dtype="bf16", out_dtype="e4m3"), dict(out_dtype="f32")):
        with pytest.raises(InvalidDescriptor, match="out_dtype"):
            _desc(**bad)


def test_descales_are_the_input_scales():
    out, lse, args = _run(_desc())
    scaled_v, _, _ = _run(_desc(), descale_v=_scalar(2.0))
    np.testing.assert_allclose(scaled_v, 2 * out, rtol=2**-7)       # bf16 output rounding
    # descale_q * descale_k multiplies the scores: the same as a larger softmax scale
    by_descale, lse_descale, _ = _run(_desc(), descale_q=_scalar(0.5), descale_k=_scalar(3.0))
    by_scale, lse_scale, _ = _run(_desc(scale=1.5 / 4))
    np.testing.assert_allclose(by_descale, by_scale, atol=1e-6)
    np.testing.assert_allclose(lse_descale, lse_scale, rtol=1e-6)


def test_fp8_out_is_scaled_rounded_and_saturated_and_amax_is_max_abs_o():
    exact, _, _ = _run(_desc(out_dtype="bf16"))
    amax = np.zeros(1, np.float32)
    out, _, _ = _run(_desc(out_dtype="e4m3"), scale_o=_scalar(4.0), amax_o=amax)
    expected = (np.clip(exact * 4.0, -448, 448)).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    assert np.abs(out - expected).max() <= np.abs(expected).max() * 2**-3   # bf16 vs exact O, then fp8 rounding
    assert abs(float(amax[0]) - np.abs(exact).max()) <= np.abs(exact).max() * 2**-7
    huge, _, _ = _run(_desc(out_dtype="e4m3"), scale_o=_scalar(1e6))
    assert np.isfinite(huge).all() and np.abs(huge).max() == 448.0


@pytest.mark.parametrize("desc, name, message", [
    (_desc(dtype="bf16"), "descale_q", "dtype='bf16' is not fp8"),
    (_desc(), "scale_o", "out_dtype='bf16' is not fp8"),
    (_desc(), "amax_o", "out_dtype='bf16' is not fp8"),
])
def test_scales_where_the_descriptor_has_no_use_for_them_are_rejected(desc, name, message):
    args = random_inputs(desc, CPU, seed=1)
    with pytest.raises(InvalidArguments, match=message):
        Plan.select(desc, "cpu", prefer="reference", restrict=True).run(**args, **{name: _scalar(1.0)})


def test_scale_shape_and_dtype_are_checked():
    desc = _desc(out_dtype="e4m3")
    args = random_inputs(desc, CPU, seed=1)
    plan = Plan.select(desc, "cpu", prefer="reference", restrict=True)
    with pytest.raises(InvalidArguments, match="descale_k.*shape"):
        plan.run(**args, descale_k=np.ones(2, np.float32))
    with pytest.raises(InvalidArguments, match="scale_o.*dtype"):
        plan.run(**args, scale_o=np.ones(1, np.float64))
    read_only = np.zeros(1, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(InvalidArguments, match="amax_o.*read-only"):
        plan.run(**args, amax_o=read_only)


def test_the_one_call_api_takes_out_dtype_and_the_scales():
    import attnplan
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 16, 2, 32)).astype(ml_dtypes.float8_e4m3fn) for _ in range(3))
    amax = np.zeros(1, np.float32)
    out = attnplan.attention(q, k, v, out_dtype="e4m3", descale_v=_scalar(0.5), scale_o=_scalar(2.0), amax_o=amax)
    plain = attnplan.attention(q, k, v)                     # bf16 out, unit scales
    assert out.dtype == ml_dtypes.float8_e4m3fn and plain.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(out.astype(np.float64), plain.astype(np.float64), atol=2**-3)   # 0.5 * 2 = 1
    assert abs(float(amax[0]) - 0.5 * np.abs(plain.astype(np.float64)).max()) < 2**-6
