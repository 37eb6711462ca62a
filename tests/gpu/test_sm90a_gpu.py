"""The sm90a forward kernels (nvrtc.sm90a, opted in by name) against the float64 reference on an
sm_90 GPU: NaN-poisoned outputs, FlashAttention's 2x rule for out and LSE (tests/gpu/support.py).
The cases are tests/gpu/sm90a_cases.py; tests/gpu/sm90a_ladder.sh runs them with -x (stop at the
first failure) and $SM90A_RESULTS set, where every case's errors are appended as JSON lines."""

from __future__ import annotations

import json
import os

import pytest

from attnplan import Plan, explain
from attnplan.accuracy import max_abs_error, within_tolerance
from attnplan.device import default_device
from attnplan.interop import Tensor
from attnplan.problems import random_inputs
from sm90a_cases import forward_cases
from support import EPSILON, LSE_EPSILON, poisoned_outputs, reference_forward, seed_for

BACKEND = "nvrtc.sm90a"
CASES = forward_cases()


@pytest.fixture(scope="module")
def hopper():
    device = default_device()
    if device.kind != "cuda" or device.arch != 90:
        pytest.skip("needs an sm_90 GPU")
    return device


def _record(entry: dict) -> None:
    path = os.environ.get("SM90A_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _every_other_head(x):
    """The same values as a view of an array with twice the heads (axis 2 of bshd): strides a TMA map
    must follow, not a dense copy; the heads in between are NaN."""
    raw = x.data if isinstance(x, Tensor) else x
    import cupy
    shape = raw.shape[:2] + (2 * raw.shape[2],) + raw.shape[3:]
    wide = cupy.empty(shape, dtype=raw.dtype)
    wide.view(cupy.uint16).fill(0x7FFF)              # NaN in f16 and bf16: the heads between must not be read
    wide.view(cupy.uint16)[:, :, ::2] = raw.view(cupy.uint16)     # bits, whatever CuPy makes of the dtype
    view = wide[:, :, ::2]
    return Tensor(view, x.dtype, x.origin, None) if isinstance(x, Tensor) else view


def _nan_neighbour(args: dict) -> dict:
    """Varlen inputs whose last sequence has no query rows and NaN keys and values: every other
    sequence's last key tile runs into them, and its output must not see them."""
    import cupy
    cu_q, cu_kv = (cupy.asarray(args[name]) for name in ("cu_seqlens_q", "cu_seqlens_kv"))
    last_q, first_kv = int(cu_q[-2]), int(cu_kv[-2])
    q = args["q"].data if isinstance(args["q"], Tensor) else args["q"]
    trimmed = cupy.ascontiguousarray(q[:last_q])
    args["q"] = Tensor(trimmed, args["q"].dtype, args["q"].origin, None) if isinstance(args["q"], Tensor) else trimmed
    cu_q[-1] = last_q
    args["cu_seqlens_q"] = cu_q
    for name in ("k", "v"):
        raw = args[name].data if isinstance(args[name], Tensor) else args[name]
        raw.view(cupy.uint16)[first_kv:] = 0x7FFF             # NaN in f16 and bf16
    return args


def _nan_pages(args: dict) -> dict:
    """Paged inputs whose cache rows outside every sequence (the last page's rows past the sequence's
    end, and pages no sequence reaches) are NaN: the kernel's last key tile of each sequence reads
    some of them, and its output must not see them."""
    import cupy
    import numpy as np
    table, lengths = (cupy.asnumpy(cupy.asarray(args[name])) for name in ("block_table", "seqlens_kv"))
    for name in ("k", "v"):
        raw = args[name].data if isinstance(args[name], Tensor) else args[name]
        page_size = raw.shape[1]
        held = np.zeros(raw.shape[:2], dtype=bool)
        for b, n in enumerate(lengths):
            keys = np.arange(int(n))
            held[table[b, keys // page_size], keys % page_size] = True
        raw.view(cupy.uint16)[cupy.asarray(~held)] = 0x7FFF        # NaN in f16 and bf16
    return args


def inputs(desc, device, variant: str) -> dict:
    args = random_inputs(desc, device, seed=seed_for(desc))
    if variant == "strided":
        args.update({name: _every_other_head(args[name]) for name in ("q", "k", "v")})
    if variant == "nan_neighbour":
        args = _nan_neighbour(args)
    if variant == "nan_pages":
        args = _nan_pages(args)
    return args


def check(desc, device, variant: str) -> dict:
    """The kernel on poisoned outputs against the float64 reference; the errors (asserted)."""
    args = inputs(desc, device, variant)
    plan = Plan.select(desc, device, prefer=BACKEND, restrict=True)
    assert plan.sku.backend == BACKEND
    out, lse = poisoned_outputs(desc, args)
    plan.run(out=out, lse=lse, **args)
    exact_out, exact_lse = reference_forward(desc, args)
    low_out, low_lse = reference_forward(desc, args, compute="f32", emulate=True, out_dtype=desc.out_dtype)
    errors = {"out": max_abs_error(out, exact_out), "out_lowp_ref": max_abs_error(low_out, exact_out),
              "lse": max_abs_error(lse, exact_lse), "lse_lowp_ref": max_abs_error(low_lse, exact_lse)}
    errors = {"kernel": plan.sku.kernel, **{name: float(value) for name, value in errors.items()}}
    errors["out_ok"] = bool(within_tolerance(errors["out"], errors["out_lowp_ref"], EPSILON[desc.out_dtype]))
    errors["lse_ok"] = bool(within_tolerance(errors["lse"], errors["lse_lowp_ref"], LSE_EPSILON))
    return errors


@pytest.mark.parametrize("name, desc, variant", CASES, ids=[name for name, _, _ in CASES])
def test_sm90a_forward_matches_reference(hopper, name, desc, variant):
    entry = {"case": name, "variant": variant, "descriptor": repr(desc)}
    verdict = explain(desc, hopper, prefer=BACKEND).of(BACKEND)
    declined = [r for r in verdict.reasons if "rung 'wgmma' copies K and V by cp.async" in r]
    if declined:                         # the one decline the ladder expects (paged KV under rung wgmma)
        _record({**entry, "skipped": declined[0]})
        pytest.skip(declined[0])
    try:
        errors = check(desc, hopper, variant)
    except Exception as exc:
        _record({**entry, "passed": False, "error": f"{type(exc).__name__}: {exc}"})
        raise
    passed = errors["out_ok"] and errors["lse_ok"] and errors["out"] < 0.05
    _record({**entry, **errors, "passed": passed})
    assert passed, (name, errors)
