"""64-bit offsets: tensors of more than 2^31 (and 2^32) elements give correct results, forward and
backward, through varlen (thd) and paged KV.

Cheap in compute, big in offsets.  The attention that runs is small (256 queries x 1024 keys, or two
paged sequences of 1000 and 700 keys), but its rows sit past element 2^31 (2^32) of a tensor whose
other rows are padding that nothing reads:
  - varlen keys: sequence 0 has no queries and ~2^31 elements of keys, sequence 1 the small problem;
  - varlen queries: sequence 0 has ~2^31 elements of queries and no keys (its output must be exactly 0
    and its LSE -inf, docs/semantics.md: rows with no visible key), sequence 1 the small problem;
  - paged KV: a pool whose pages below the boundary are never named; the block table uses the top ones.
Each result is held to the float64 reference of the same small problem without the padding by the
2x rule of support.check_forward / check_backward.  The outputs (gradients) of the padding rows are
poisoned first and must come back exactly 0, checked on the device: no big array is copied to the
host.  bf16, 16 query heads, head dim 128: 2048 elements a token with 16 kv heads.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from attnplan import AttentionDescriptor, PagedKV
from attnplan.accuracy import max_abs_error, within_tolerance
from attnplan.device import default_device
from attnplan.errors import InvalidArguments
from attnplan.interop import as_tensor, wrap_storage
from attnplan.problems import random_inputs
from support import (EPSILON, GRADIENTS, LSE_EPSILON, _storage, backward_inputs, expanded_group_errors,
                     plan_or_skip, poisoned_outputs, reference_backward, reference_forward)

pytestmark = pytest.mark.gpu

FORWARD_BACKENDS = ("nvrtc.sm80", "nvrtc.sm90a", "cudnn")
BACKWARD_BACKENDS = ("nvrtc.sm80", "cudnn")
# cuDNN's ragged (thd) offsets are int32: it refuses larger packed tensors with InvalidArguments
# (backends/cudnn/runner.py _check_layout), a stated limit, not a wrong result: skipped with its words.
REFUSES_LARGE_PACKED = ("cudnn",)
BOUNDARIES = pytest.mark.parametrize("boundary", [2**31, 2**32], ids=["2^31", "2^32"])
HEADS, DIM, PAGE = 16, 128, 256
Q_ROWS, KV_ROWS = 256, 1024                   # the small problem (sequence 1 of the varlen cases)
GIB = 2**30
MIN_FREE = 40 * GIB

VARLEN = AttentionDescriptor(batch=1, seqlen_q=Q_ROWS, seqlen_kv=KV_ROWS, heads_q=HEADS, heads_kv=HEADS,
                             head_dim=DIM, dtype="bf16", layout="thd", causal=True, return_lse=True)
PAGED = AttentionDescriptor(batch=2, seqlen_q=128, seqlen_kv=1024, heads_q=HEADS, heads_kv=HEADS, head_dim=DIM,
                            dtype="bf16", paged=PagedKV(PAGE, 4), return_lse=True)
PAGED_LENGTHS = (1000, 700)


@pytest.fixture(scope="module", autouse=True)
def _room_on_the_gpu():
    import cupy
    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < MIN_FREE:
        pytest.skip(f"needs {MIN_FREE // GIB} GiB of free GPU memory, {free / GIB:.1f} GiB free")


@pytest.fixture(autouse=True)
def _free_after():
    yield
    import cupy
    gc.collect()
    cupy.get_default_memory_pool().free_all_blocks()


def _require(nbytes: int) -> None:
    """Skip unless `nbytes` (plus 2 GiB of slack) of GPU memory are free."""
    import cupy
    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < nbytes + 2 * GIB:
        pytest.skip(f"needs {(nbytes + 2 * GIB) / GIB:.0f} GiB of free GPU memory, {free / GIB:.0f} GiB free")


def _plan(desc, backend):
    return plan_or_skip(desc, backend)


def _run(plan, backend, **args):
    """plan.run, waited for; a backend of REFUSES_LARGE_PACKED that refuses the arrays is skipped."""
    import cupy
    try:
        result = plan.run(**args)
    except InvalidArguments as exc:
        if backend in REFUSES_LARGE_PACKED:
            pytest.skip(f"{backend} refuses: {exc}")
        raise
    cupy.cuda.Device().synchronize()
    plan.check()                     # the device-side index check found nothing wrong
    return result


def _pad_rows(boundary: int) -> int:
    """Padding rows of HEADS x DIM elements that put the next row past element `boundary`."""
    return boundary // (HEADS * DIM) + 1000


def _bf16_bytes(rows: int) -> int:
    return rows * HEADS * DIM * 2


def _cu(*lengths):
    import cupy
    return cupy.asarray(np.cumsum((0,) + lengths).astype(np.int32))


def _embed(small, rows_before: int):
    """`small` (rows first) after `rows_before` rows of zeros, as a new device Tensor."""
    import cupy
    t = as_tensor(small, "small")
    big = cupy.zeros((rows_before + t.shape[0],) + t.shape[1:], t.data.dtype)
    big[rows_before:] = t.data
    return wrap_storage(big, t.dtype)


def _rows(t, start: int):
    """Rows `start`.. of a device Tensor (a view)."""
    return wrap_storage(t.data[start:], t.dtype)


def _nonzero(raw) -> int:
    """Elements of 16-bit float storage `raw` (device) that are not +-0 (NaN counts), counted on the
    device in chunks (no temporary as big as `raw`)."""
    import cupy
    flat, chunk = raw.view(cupy.uint16).reshape(-1), 1 << 28
    return sum(int(cupy.count_nonzero(flat[i:i + chunk] & 0x7FFF)) for i in range(0, flat.size, chunk))


def _poisoned_gradients(desc, args) -> dict:
    import cupy
    return {name: _storage(as_tensor(args[role], role).shape, desc.dtype, cupy)
            for name, role in (("dq", "q"), ("dk", "k"), ("dv", "v"))}


def _check_forward(small, args, out, lse) -> None:
    """support.check_forward's rule for (out, lse) given, against the reference of `small` on `args`."""
    exact_out, exact_lse = reference_forward(small, args)
    low_out, low_lse = reference_forward(small, args, compute="f32", emulate=True, out_dtype=small.out_dtype)
    for name, got, exact, low, epsilon in (("out", out, exact_out, low_out, EPSILON[small.out_dtype]),
                                           ("lse", lse, exact_lse, low_lse, LSE_EPSILON)):
        error, baseline = max_abs_error(got, exact), max_abs_error(low, exact)
        assert within_tolerance(error, baseline, epsilon), (name, error, baseline)


def _check_backward(small, args, got: dict) -> None:
    """support.check_backward's rule for the gradients given, against the reference of `small` on `args`."""
    exact = reference_backward(small, args)
    low = reference_backward(small, args, compute="f32", emulate=True, grad_dtype=small.dtype)
    baselines = {name: max_abs_error(low[name], exact[name]) for name in GRADIENTS}
    if small.group_size > 1:
        for name, error in expanded_group_errors(small, args, exact).items():
            baselines[name] = max(baselines[name], error)
    for name in GRADIENTS:
        error = max_abs_error(got[name], exact[name])
        assert within_tolerance(error, baselines[name], EPSILON[small.dtype]), (name, error, baselines[name])


# -- varlen: sequence 1's keys past the boundary ------------------------------------------------------

@BOUNDARIES
@pytest.mark.parametrize("backend", FORWARD_BACKENDS)
def test_varlen_keys_past_the_boundary_forward(backend, boundary):
    pad = _pad_rows(boundary)                  # key rows of sequence 0, which has no queries
    _require(2 * _bf16_bytes(pad))             # k, v
    desc = VARLEN.replace(batch=2, seqlen_kv=max(pad, KV_ROWS))
    plan = _plan(desc, backend)
    args = random_inputs(VARLEN, default_device(), seed=1)
    big = dict(args, k=_embed(args["k"], pad), v=_embed(args["v"], pad),
               cu_seqlens_q=_cu(0, Q_ROWS), cu_seqlens_kv=_cu(pad, KV_ROWS))
    out, lse = poisoned_outputs(desc, big)     # only sequence 1's rows: the small problem's shapes
    _run(plan, backend, out=out, lse=lse, **big)
    _check_forward(VARLEN, args, out, lse)


@BOUNDARIES
@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
def test_varlen_keys_past_the_boundary_backward(backend, boundary):
    pad = _pad_rows(boundary)
    _require(4 * _bf16_bytes(pad))             # k, v, dk, dv
    small = VARLEN.replace(direction="backward", return_lse=False)
    desc = small.replace(batch=2, seqlen_kv=max(pad, KV_ROWS))
    plan = _plan(desc, backend)
    args = backward_inputs(small, seed=2)
    big = dict(args, k=_embed(args["k"], pad), v=_embed(args["v"], pad),
               cu_seqlens_q=_cu(0, Q_ROWS), cu_seqlens_kv=_cu(pad, KV_ROWS))
    grads = _poisoned_gradients(desc, big)
    _run(plan, backend, **grads, **big)
    for name in ("dk", "dv"):
        assert _nonzero(grads[name].data[:pad]) == 0, f"{name} of keys that no query sees must be exactly 0"
    _check_backward(small, args, {"dq": grads["dq"], "dk": _rows(grads["dk"], pad), "dv": _rows(grads["dv"], pad)})


# -- varlen: sequence 1's queries (and outputs, LSE, dO, dQ) past the boundary ------------------------

@BOUNDARIES
@pytest.mark.parametrize("backend", FORWARD_BACKENDS)
def test_varlen_queries_past_the_boundary_forward(backend, boundary):
    import cupy
    pad = _pad_rows(boundary)                  # query rows of sequence 0, which has no keys
    _require(2 * _bf16_bytes(pad))             # q, out
    small = VARLEN.replace(heads_kv=4)
    desc = small.replace(batch=2, seqlen_q=max(pad, Q_ROWS))
    plan = _plan(desc, backend)
    args = random_inputs(small, default_device(), seed=3)
    big = dict(args, q=_embed(args["q"], pad), cu_seqlens_q=_cu(pad, Q_ROWS), cu_seqlens_kv=_cu(0, KV_ROWS))
    out, lse = poisoned_outputs(desc, big)
    _run(plan, backend, out=out, lse=lse, **big)
    assert _nonzero(out.data[:pad]) == 0, "rows with no visible key must be exactly 0"
    assert bool(cupy.isneginf(lse.data[:, :pad]).all()), "rows with no visible key must have LSE -inf"
    _check_forward(small, args, _rows(out, pad), wrap_storage(lse.data[:, pad:], lse.dtype))


@BOUNDARIES
@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
def test_varlen_queries_past_the_boundary_backward(backend, boundary):
    import cupy
    pad = _pad_rows(boundary)
    _require(8 * _bf16_bytes(pad))             # q, out, dout, dq and sm80's fp32 dQ accumulator
    small = VARLEN.replace(heads_kv=4, direction="backward", return_lse=False)
    desc = small.replace(batch=2, seqlen_q=max(pad, Q_ROWS))
    plan = _plan(desc, backend)
    args = backward_inputs(small, seed=4)
    small_lse = as_tensor(args["lse"], "lse")
    lse = cupy.full((HEADS, pad + Q_ROWS), -np.inf, dtype=small_lse.data.dtype)   # sequence 0: no visible key
    lse[:, pad:] = small_lse.data
    big = dict(args, q=_embed(args["q"], pad), out=_embed(args["out"], pad), dout=_embed(args["dout"], pad),
               lse=wrap_storage(lse, small_lse.dtype), cu_seqlens_q=_cu(pad, Q_ROWS), cu_seqlens_kv=_cu(0, KV_ROWS))
    grads = _poisoned_gradients(desc, big)
    _run(plan, backend, **grads, **big)
    assert _nonzero(grads["dq"].data[:pad]) == 0, "rows with no visible key get dQ = 0"
    _check_backward(small, args, {"dq": _rows(grads["dq"], pad), "dk": grads["dk"], "dv": grads["dv"]})


# -- paged KV: every page the block table names lies past the boundary --------------------------------

@BOUNDARIES
@pytest.mark.parametrize("backend", FORWARD_BACKENDS)
def test_paged_kv_past_the_boundary_forward(backend, boundary):
    import cupy
    page_elements = PAGE * HEADS * DIM
    first = -(-boundary // page_elements)      # the first page at or past element `boundary`
    used = PAGED.batch * PAGED.paged.max_pages_per_seq
    _require(2 * (first + used) * page_elements * 2)     # the k and v pools
    plan = _plan(PAGED, backend)
    args = random_inputs(PAGED, default_device(), seed=5)          # a pool of the `used` pages only
    args["seqlens_kv"] = cupy.asarray(np.array(PAGED_LENGTHS, dtype=np.int32))
    table = (cupy.asarray(args["block_table"]) + first).astype(cupy.int32)
    big = dict(args, k=_embed(args["k"], first), v=_embed(args["v"], first), block_table=table)
    out, lse = poisoned_outputs(PAGED, big)
    _run(plan, backend, out=out, lse=lse, **big)
    _check_forward(PAGED, args, out, lse)
