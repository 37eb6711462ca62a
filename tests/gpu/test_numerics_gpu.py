"""Numerics at the edges, on every GPU backend (the issue "NaN / Inf / huge scores / empty rows"):

- a NaN or Inf input reaches only the rows that see it (docs/semantics.md defines which keys a row
  sees) and never hangs: every other row keeps the bits of a clean run of the same plan;
- scores with |q.k| * scale around 1e4 stay finite in the f16 / bf16 kernels and meet the tolerance
  rule (docs/testing.md), softcap included;
- a row with no visible key gives out = 0 and LSE = -inf (the sink logit with sink_logits) in every
  backend, and in the backward dq = 0 for it and no NaN anywhere.

Outputs are poisoned with NaN first, so a row a kernel leaves unwritten fails.  A backend that
declines a case is a skip with its reasons.  Each test has a timeout (pytest-timeout, thread method:
a kernel that never returns blocks inside a CUDA call, where a signal cannot interrupt it)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from attnplan import AttentionDescriptor, PagedKV, Plan
from attnplan.accuracy import host_f64, max_abs_error, within_tolerance
from attnplan.arguments import lse_shape
from attnplan.device import Device, default_device
from attnplan.dtypes import HOST_DTYPES, lse_dtype
from attnplan.masking import visible
from attnplan.problems import _to_device, random_inputs
from attnplan.sequences import q_view, spans
from support import (EPSILON, LSE_EPSILON, _storage, check_backward, forward_descriptor, plan_or_skip,
                     reference_forward, run_backward_poisoned)

pytestmark = pytest.mark.gpu

BACKENDS = ("nvrtc.sm80", "nvrtc.sm90a", "cudnn", "reference")
BACKWARD_BACKENDS = ("nvrtc.sm80", "cudnn")
CPU = Device.cpu()
TIMEOUT_S = 120


def _timeout(test):
    """pytest-timeout's mark where the plugin is installed (the GPU machine); nothing otherwise."""
    if importlib.util.find_spec("pytest_timeout") is None:
        return test
    return pytest.mark.timeout(TIMEOUT_S, method="thread")(test)


# -- shared machinery (device-agnostic: the CPU reference runs it too) --------------------------

def _gpu() -> Device:
    device = default_device()
    if device.kind != "cuda":
        pytest.skip("needs a GPU")
    return device


def _plan(desc, backend, device) -> Plan:
    return plan_or_skip(desc, backend, device)


def _xp(device):
    if device.kind == "cuda":
        import cupy
        return cupy
    return np


def _on(device, host_args: dict) -> dict:
    """Host arguments (NumPy / ml_dtypes) moved to `device` (CuPy, raw storage for bf16 where needed)."""
    if device.kind != "cuda":
        return dict(host_args)
    import cupy
    with cupy.cuda.Device(device.index):
        return {name: _to_device(value, cupy) for name, value in host_args.items()}


def _sync(device):
    if device.kind == "cuda":
        import cupy
        cupy.cuda.Device(device.index).synchronize()


def _host(t) -> np.ndarray:
    """A Tensor's storage as a host array (its storage dtype: uint16 for raw bf16 on CuPy)."""
    data = t.data
    return data.get() if hasattr(data, "get") and not isinstance(data, np.ndarray) else np.asarray(data)


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.dtype(f"u{array.dtype.itemsize}"))


def _lse_rows(desc, lse: np.ndarray) -> np.ndarray:
    """The LSE laid out like q's rows without the last dim: [b, s, h] (bshd) or [t, h] (thd)."""
    return lse.T if desc.layout == "thd" else lse.transpose(0, 2, 1)


def _spans(desc, host_args) -> list:
    index = {name: np.asarray(host_args[name]) for name in ("cu_seqlens_q", "cu_seqlens_kv", "seqlens_kv",
                                                           "block_table") if name in host_args}
    total_kv = host_args["k"].shape[0]
    return list(spans(desc, host_args["q"].shape[0], total_kv, **index))


def _run_forward(plan, args) -> dict:
    """One forward of `plan` on fresh NaN-poisoned out / lse: host bits and float64 values, both in
    q's row layout ([..., h, d] and [..., h])."""
    desc, xp = plan.desc, _xp(plan.device)
    rows = tuple(args["q"].shape[:-1])
    out = _storage(rows + (desc.head_dim_v,), desc.out_dtype, xp)
    lse = _storage(lse_shape(desc, rows[0]), lse_dtype(desc.dtype), xp)
    plan.run(out=out, lse=lse, **args)
    _sync(plan.device)
    return {"out_bits": _bits(_host(out)), "out": host_f64(out),
            "lse_bits": _lse_rows(desc, _bits(_host(lse))), "lse": _lse_rows(desc, host_f64(lse))}


def _varlen_host_inputs(desc, lengths_q, lengths_kv, seed: int) -> dict:
    """random_inputs' arguments with the given per-sequence lengths (thd)."""
    args = random_inputs(desc, CPU, seed=seed)
    rng = np.random.default_rng(seed + 1)
    lengths_q, lengths_kv = np.asarray(lengths_q), np.asarray(lengths_kv)
    args["cu_seqlens_q"] = np.concatenate([[0], np.cumsum(lengths_q)]).astype(np.int32)
    args["cu_seqlens_kv"] = np.concatenate([[0], np.cumsum(lengths_kv)]).astype(np.int32)
    total_q, total_kv = int(lengths_q.sum()), int(lengths_kv.sum())

    def tensor(shape, dtype):
        return rng.standard_normal(shape, dtype=np.float32).astype(HOST_DTYPES[dtype])
    args["q"] = tensor((total_q, desc.heads_q, desc.head_dim), desc.dtype)
    args["k"] = tensor((total_kv, desc.heads_kv, desc.head_dim), desc.dtype)
    args["v"] = tensor((total_kv, desc.heads_kv, desc.head_dim_v), desc.dtype)
    if "dout" in args:
        args["dout"] = tensor((total_q, desc.heads_q, desc.head_dim_v), desc.out_dtype)
    return args


def _host_inputs(desc, seed: int, lengths=None) -> dict:
    """Host arguments: random_inputs, with `lengths` = (lengths_q, lengths_kv) for thd or
    {"seqlens_kv": [...]} for paged KV."""
    if lengths is None:
        return random_inputs(desc, CPU, seed=seed)
    if desc.paged is not None:
        args = random_inputs(desc, CPU, seed=seed)
        args["seqlens_kv"] = np.asarray(lengths["seqlens_kv"], dtype=np.int32)
        return args
    return _varlen_host_inputs(desc, *lengths, seed=seed)


def _row_mask(desc, host_args) -> np.ndarray:
    return np.zeros(tuple(host_args["q"].shape[:-1]), dtype=bool)


def _visible(desc, span) -> np.ndarray:
    """[seqlen_q, seqlen_kv] of one sequence: may row i see key j?"""
    mask = visible(desc, np.arange(span.seqlen_q), np.arange(span.seqlen_kv), span.seqlen_q, span.seqlen_kv, np)
    return np.broadcast_to(mask, (span.seqlen_q, span.seqlen_kv))        # [1, skv] where no rule bounds rows


# -- a. NaN and Inf containment ----------------------------------------------------------------

NAN_DENSE = AttentionDescriptor(batch=2, seqlen_q=300, seqlen_kv=300, heads_q=4, heads_kv=2, head_dim=128,
                                dtype="bf16", return_lse=True)
NAN_MASKS = {
    "full": {},
    "causal": dict(causal=True),
    "causal_q_shorter": dict(causal=True, seqlen_q=260),        # bottom-right: row i sees j <= i + 40
}
# (tensor, sequence, row or key position, head (kv head for k / v), column, value)
NAN_PLACES_DENSE = {
    "q_nan": ("q", 1, 37, 2, 5, np.nan),
    "k_nan": ("k", 0, 50, 1, 7, np.nan),
    "v_inf": ("v", 0, 50, 1, 7, np.inf),
    "v_nan": ("v", 0, 50, 1, 7, np.nan),
}
# Varlen: lengths that are no tile's multiple, so a sequence's last tiles overlap its neighbour's
# rows (a kernel must not let them in); the poison sits in the middle sequence's first key / row,
# which sequence 0's last key tile overhangs.
NAN_VARLEN = AttentionDescriptor(batch=3, seqlen_q=130, seqlen_kv=140, heads_q=4, heads_kv=2, head_dim=128,
                                 dtype="bf16", layout="thd", causal=True, return_lse=True)
NAN_VARLEN_LENGTHS = ([77, 130, 95], [83, 140, 101])
NAN_PLACES_VARLEN = {
    "q_nan": ("q", 1, 0, 2, 5, np.nan),
    "k_nan_first": ("k", 1, 0, 1, 7, np.nan),
    "k_nan_last": ("k", 1, 139, 1, 7, np.nan),
    "v_nan_first": ("v", 1, 0, 1, 7, np.nan),
    "v_inf_first": ("v", 1, 0, 1, 7, np.inf),
}


def _poisoned_copy(desc, host_args, spans_, place) -> dict:
    name, seq, pos, head, col, value = place
    bad = dict(host_args)
    bad[name] = np.array(host_args[name], copy=True)
    span = spans_[seq]
    if name == "q":
        q_view(desc, bad[name], span)[pos, head, col] = value
    elif desc.layout == "thd":
        bad[name][span.kv_start + pos, head, col] = value
    else:
        bad[name][span.index, pos, head, col] = value
    return bad


def _reach(desc, host_args, spans_, place):
    """(reached, group): q-like row masks [..., h].  reached: the rows whose result the poisoned
    element enters (a q row that sees any key; for k / v, the rows of the kv head's query heads that
    see the key).  group: for k / v, every row of that sequence and those query heads."""
    name, seq, pos, head, _, _ = place
    span = spans_[seq]
    reached, group = _row_mask(desc, host_args), _row_mask(desc, host_args)
    mask = _visible(desc, span)
    if name == "q":
        q_view(desc, reached, span)[pos, head] = bool(mask[pos].any())
        q_view(desc, group, span)[pos, head] = True
        return reached, group
    for h in range(desc.heads_q):
        if h // desc.group_size == head:
            q_view(desc, reached, span)[:, h] = mask[:, pos]
            q_view(desc, group, span)[:, h] = True
    return reached, group


def check_containment(plan, host_args, place) -> dict:
    """The clean run and the poisoned run of `plan`; assert the containment rules.  Returns counts
    for reporting.

    - The clean run is finite everywhere (nothing left unwritten).
    - q or k poisoned: the reached rows are non-finite in every column and in the LSE; every other
      row has the clean run's bits (out and LSE).
    - v poisoned (column c): the LSE has the clean bits everywhere (it does not depend on v); every
      column but c has the clean bits everywhere; column c is non-finite in the reached rows and has
      the clean bits outside the kv head's group.  Rows of the group that cannot see the key may be
      NaN in column c: there P = 0 meets the Inf / NaN in the P V product (0 * Inf = NaN), which the
      reference (docs/semantics.md's executable form) does too; their other columns keep the bits."""
    desc, device = plan.desc, plan.device
    spans_ = _spans(desc, host_args)
    clean = _run_forward(plan, _on(device, host_args))
    bad = _run_forward(plan, _on(device, _poisoned_copy(desc, host_args, spans_, place)))
    assert np.isfinite(clean["out"]).all() and np.isfinite(clean["lse"]).all(), \
        (plan.sku.kernel, "the clean run is not finite")
    reached, group = _reach(desc, host_args, spans_, place)
    assert reached.any(), "the case reaches no row: the test's own index logic is wrong"
    kernel = plan.sku.kernel
    name, col = place[0], place[4]
    out_same = bad["out_bits"] == clean["out_bits"]                  # [..., h, d]
    lse_same = bad["lse_bits"] == clean["lse_bits"]                  # [..., h]
    if name in ("q", "k"):
        assert not np.isfinite(bad["out"][reached]).any(), (kernel, "a reached row has finite outputs")
        assert not np.isfinite(bad["lse"][reached]).any(), (kernel, "a reached row has a finite LSE")
        leaked = ~reached & ~(out_same.all(axis=-1) & lse_same)
        assert not leaked.any(), (kernel, f"{int(leaked.sum())} rows that cannot see the poison changed, "
                                          f"first at {np.argwhere(leaked)[0].tolist()}")
    else:
        assert lse_same.all(), (kernel, "a poisoned v changed the LSE")
        others = np.delete(out_same, col, axis=-1)
        assert others.all(), (kernel, f"columns other than {col} changed at rows "
                                      f"{np.argwhere(~others.all(axis=-1))[:4].tolist()}")
        column_bad = bad["out"][..., col]
        assert not np.isfinite(column_bad[reached]).any(), (kernel, f"a reached row is finite in column {col}")
        same_column = out_same[..., col]
        assert same_column[~group].all(), (kernel, f"column {col} changed outside the kv head's rows at "
                                                   f"{np.argwhere(~same_column & ~group)[:4].tolist()}")
        unreached = group & ~reached
        assert (same_column | np.isnan(column_bad))[unreached].all(), \
            (kernel, "a row of the group that cannot see the key changed to a non-NaN value")
    return {"reached": int(reached.sum()), "rows": int(reached.size),
            "group_rows_nan": int((group & ~reached & np.isnan(bad["out"][..., col])).sum())}


@_timeout
@pytest.mark.parametrize("place", list(NAN_PLACES_DENSE), ids=list(NAN_PLACES_DENSE))
@pytest.mark.parametrize("mask", list(NAN_MASKS), ids=list(NAN_MASKS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_or_inf_reaches_only_the_rows_that_see_it(backend, mask, place):
    device = _gpu()
    desc = NAN_DENSE.replace(**NAN_MASKS[mask])
    plan = _plan(desc, backend, device)
    assert plan.sku.precision.deterministic, (plan.sku.kernel, "the bit comparison needs a deterministic forward")
    check_containment(plan, random_inputs(desc, CPU, seed=21), NAN_PLACES_DENSE[place])


@_timeout
@pytest.mark.parametrize("place", list(NAN_PLACES_VARLEN), ids=list(NAN_PLACES_VARLEN))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_in_one_varlen_sequence_leaves_the_others_alone(backend, place):
    device = _gpu()
    plan = _plan(NAN_VARLEN, backend, device)
    assert plan.sku.precision.deterministic, (plan.sku.kernel, "the bit comparison needs a deterministic forward")
    check_containment(plan, _varlen_host_inputs(NAN_VARLEN, *NAN_VARLEN_LENGTHS, seed=22), NAN_PLACES_VARLEN[place])


# -- b. large scores ----------------------------------------------------------------------------

LARGE = AttentionDescriptor(batch=2, seqlen_q=300, seqlen_kv=300, heads_q=4, heads_kv=4, head_dim=128,
                            dtype="bf16", return_lse=True)
# one_hot: q, k = 100 * randn, so scale * q.k ~ N(0, 1e4^2); rows whose two largest visible scores
# lie within ONE_HOT_GAP are drawn again, so softmax is one-hot to far below any rounding.
# offset: two columns of q and k hold +-256, the rest multiples of 1/8 (|x| <= 4), so every raw dot
# product is a multiple of 2^-6 below 2^18, exact in float32 in any summation order; scale * q.k =
# +-11585 + O(1): a non-trivial softmax on top of a huge common score (negative in batch 1).
# softcap: the one_hot inputs under softcap 10; rows with a visible key whose tanh argument lies in
# the unsaturated band are drawn again (there a fast tanh's 2^-11 error would move the scores).
LARGE_CASES = {
    "one_hot": dict(kind="one_hot"),
    "one_hot_causal": dict(kind="one_hot", causal=True),
    "offset": dict(kind="offset"),
    "offset_causal": dict(kind="offset", causal=True),
    "softcap": dict(kind="softcap", softcap=10.0),
}
LARGE_SCALE = 100.0
ONE_HOT_GAP = 64.0
# tanh arguments x redrawn: above the band tanh(x) rounds to 1 in float32, below it the score
# (<= -9.87) weighs at most e^-19.8 of a saturated one.
SOFTCAP_BAND = (-2.5, 9.5)
OFFSET = 256.0
LSE_RTOL = 2.0**-20                 # 8 float32 ulps of the LSE itself


def _host_scores(desc, q, k) -> np.ndarray:
    """float64 scale * q.k of the values as stored, masked with -inf: [b, h, sq, skv]."""
    q64 = q.astype(np.float64)
    k64 = np.repeat(k.astype(np.float64), desc.group_size, axis=2)
    scores = np.einsum("bihd,bjhd->bhij", q64, k64) * desc.scale
    mask = visible(desc, np.arange(desc.seqlen_q), np.arange(desc.seqlen_kv), desc.seqlen_q, desc.seqlen_kv, np)
    mask = np.broadcast_to(mask, (desc.seqlen_q, desc.seqlen_kv))
    return np.where(mask, scores, -np.inf), mask


def _redraw_until(desc, rng, q32, k, bad_rows, limit=400):
    """Draw the q rows `bad_rows(scores, mask)` ([b, h, sq] bool) names again until none is left."""
    dtype = HOST_DTYPES[desc.dtype]
    for _ in range(limit):
        q = q32.astype(dtype)
        scores, mask = _host_scores(desc, q, k)
        bad = bad_rows(scores, mask)
        if not bad.any():
            return q
        b, h, i = np.nonzero(bad)
        q32[b, i, h] = LARGE_SCALE * rng.standard_normal((len(b), desc.head_dim), dtype=np.float32)
    raise AssertionError("could not draw well-separated large scores")


def large_score_inputs(desc, kind: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    args = random_inputs(desc, CPU, seed=seed)
    dtype = HOST_DTYPES[desc.dtype]
    shape_q, shape_k = args["q"].shape, args["k"].shape
    if kind == "offset":
        def small(shape):
            return np.clip(np.round(rng.standard_normal(shape) * 8) / 8, -4, 4).astype(np.float32)
        q32, k32 = small(shape_q), small(shape_k)
        q32[..., :2] = OFFSET
        k32[..., :2] = OFFSET
        k32[1, ..., :2] = -OFFSET
        args["q"], args["k"] = q32.astype(dtype), k32.astype(dtype)
        return args
    q32 = LARGE_SCALE * rng.standard_normal(shape_q, dtype=np.float32)
    k = (LARGE_SCALE * rng.standard_normal(shape_k, dtype=np.float32)).astype(dtype)
    if kind == "one_hot":
        def near_tie(scores, mask):
            top = np.sort(scores, axis=-1)[..., -2:]
            return (mask.sum(axis=-1) >= 2)[None, None] & (top[..., 1] - top[..., 0] < ONE_HOT_GAP)
        args["q"] = _redraw_until(desc, rng, q32, k, near_tie)
    else:
        low, high = SOFTCAP_BAND

        def unsaturated(scores, mask):
            x = scores / desc.softcap
            return ((x > low) & (x < high) & mask).any(axis=-1)
        args["q"] = _redraw_until(desc, rng, q32, k, unsaturated)
    args["k"] = k
    return args


def _f32_ulp(x: float) -> float:
    return 2.0 ** (math.frexp(max(abs(x), 1e-30))[1] - 24)


def check_large_scores(plan, host_args) -> dict:
    desc, device = plan.desc, plan.device
    args = _on(device, host_args)
    got = _run_forward(plan, args)
    kernel = plan.sku.kernel
    assert np.isfinite(got["out"]).all(), (kernel, f"{int((~np.isfinite(got['out'])).sum())} non-finite outputs")
    assert np.isfinite(got["lse"]).all(), (kernel, "non-finite LSE")
    exact_out, exact_lse = reference_forward(desc, args)
    low_out, low_lse = reference_forward(desc, args, compute="f32", emulate=True, out_dtype=desc.out_dtype)
    exact_lse_rows = _lse_rows(desc, host_f64(exact_lse))
    scores, _ = _host_scores(desc, np.asarray(host_args["q"]), np.asarray(host_args["k"]))
    if desc.softcap > 0:
        scores = desc.softcap * np.tanh(scores / desc.softcap)
    largest = float(np.abs(scores[np.isfinite(scores)]).max())
    # The resolution of a float32 score of that size (in log2 units, as the kernels exponentiate):
    # the probabilities of a row carry a relative error of about that, the output that times 2 max|v|.
    v_max = float(np.abs(host_f64(args["v"])).max())
    score_floor = 2.0 * v_max * math.log(2.0) * _f32_ulp(largest * math.log2(math.e))
    errors = {"largest_score": largest, "out": max_abs_error(got["out"], exact_out),
              "out_lowp_ref": max_abs_error(low_out, exact_out), "score_floor": score_floor}
    assert within_tolerance(errors["out"], errors["out_lowp_ref"], EPSILON[desc.out_dtype] + score_floor), \
        (kernel, errors)
    lse_error = np.abs(got["lse"] - exact_lse_rows)
    lse_lowp = max_abs_error(low_lse, exact_lse)
    bound = 2.0 * lse_lowp + LSE_EPSILON + LSE_RTOL * np.abs(exact_lse_rows)
    errors.update(lse=float(lse_error.max()), lse_lowp_ref=lse_lowp)
    assert (lse_error <= bound).all(), (kernel, errors)
    return errors


@_timeout
@pytest.mark.parametrize("case", list(LARGE_CASES), ids=list(LARGE_CASES))
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_scores_stay_finite_and_accurate(backend, dtype, case):
    device = _gpu()
    fields = dict(LARGE_CASES[case])
    kind = fields.pop("kind")
    desc = LARGE.replace(dtype=dtype, **fields)
    plan = _plan(desc, backend, device)
    check_large_scores(plan, large_score_inputs(desc, kind, seed=31))


# -- c. rows with no visible key ----------------------------------------------------------------

_EMPTY = dict(batch=2, seqlen_q=300, seqlen_kv=200, heads_q=4, heads_kv=2, head_dim=128, dtype="bf16",
              return_lse=True)
# (descriptor, lengths): lengths for thd = (lengths_q, lengths_kv), for paged = {"seqlens_kv": ...}.
EMPTY_CASES = {
    # bottom-right causal, seqlen_q > seqlen_kv: rows 0..99 see no key
    "causal_q_longer": (AttentionDescriptor(causal=True, **_EMPTY), None),
    # window (0, 0): rows 0..99 see nothing, the others exactly one key
    "window_zero_causal": (AttentionDescriptor(causal=True, window=(0, 0), **_EMPTY), None),
    # top-left two-sided window: row i sees [i - 16, i + 16] of 200 keys, rows >= 216 nothing
    "window_top_left_gap": (AttentionDescriptor(causal_alignment="top_left", window=(16, 16), **_EMPTY), None),
    # bottom-right two-sided window: row i sees [i - 116, i - 84], rows < 84 nothing
    "window_bottom_right_gap": (AttentionDescriptor(window=(16, 16), **_EMPTY), None),
    # with sink logits an empty row's LSE is the sink logit (docs/semantics.md)
    "causal_q_longer_sink_logits": (AttentionDescriptor(causal=True, sink_logits=True, **_EMPTY), None),
    # varlen: the middle sequence has 90 queries and no key
    "varlen_empty_kv": (AttentionDescriptor(batch=3, seqlen_q=120, seqlen_kv=150, heads_q=4, heads_kv=2,
                                            head_dim=128, dtype="bf16", layout="thd", return_lse=True),
                        ([120, 90, 60], [150, 0, 80])),
    # varlen causal: no key in the middle sequence, and the first 20 rows of the others see nothing
    "varlen_empty_kv_causal": (AttentionDescriptor(batch=3, seqlen_q=120, seqlen_kv=150, heads_q=4, heads_kv=2,
                                                   head_dim=128, dtype="bf16", layout="thd", causal=True,
                                                   return_lse=True),
                               ([120, 90, 60], [100, 0, 40])),
    # paged KV: the middle sequence has seqlens_kv = 0
    "paged_empty_seq": (AttentionDescriptor(batch=3, seqlen_q=64, seqlen_kv=512, heads_q=4, heads_kv=2,
                                            head_dim=128, dtype="bf16", paged=PagedKV(64, 8), return_lse=True),
                        {"seqlens_kv": [300, 0, 512]}),
    "paged_empty_seq_causal": (AttentionDescriptor(batch=3, seqlen_q=64, seqlen_kv=512, heads_q=4, heads_kv=2,
                                                   head_dim=128, dtype="bf16", paged=PagedKV(64, 8), causal=True,
                                                   return_lse=True),
                               {"seqlens_kv": [300, 0, 40]}),
}
EMPTY_BACKWARD = ("causal_q_longer", "window_zero_causal", "window_top_left_gap", "window_bottom_right_gap",
                  "varlen_empty_kv_causal")
SINK_LSE_TOLERANCE = 1e-5


def empty_rows(desc, host_args) -> np.ndarray:
    """q-like [..., h] mask of the rows that see no key."""
    rows = _row_mask(desc, host_args)
    for span in _spans(desc, host_args):
        q_view(desc, rows, span)[...] = ~_visible(desc, span).any(axis=1)[:, None]
    return rows


def unseen_keys(desc, host_args) -> np.ndarray:
    """kv-like [..., h_kv] mask of the keys no row sees (dense and thd only)."""
    keys = np.zeros(tuple(host_args["k"].shape[:-1]), dtype=bool)
    for span in _spans(desc, host_args):
        seen = _visible(desc, span).any(axis=0)[:, None]
        if desc.layout == "thd":
            keys[span.kv_start: span.kv_start + span.seqlen_kv] = ~seen
        else:
            keys[span.index] = ~seen
    return keys


def check_empty_rows(plan, host_args) -> dict:
    desc, device = plan.desc, plan.device
    args = _on(device, host_args)
    got = _run_forward(plan, args)
    empty = empty_rows(desc, host_args)
    kernel = plan.sku.kernel
    assert empty.any() and not empty.all(), "the case must have empty and non-empty rows"
    assert (got["out"][empty] == 0).all(), (kernel, f"{int((got['out'][empty] != 0).sum())} outputs of empty rows "
                                                    "are not 0 (NaN: unwritten)")
    if desc.sink_logits:
        sinks = np.broadcast_to(np.asarray(host_args["sink_logits"], dtype=np.float64), empty.shape)[empty]
        np.testing.assert_allclose(got["lse"][empty], sinks, rtol=SINK_LSE_TOLERANCE, atol=SINK_LSE_TOLERANCE,
                                   err_msg=f"{kernel}: an empty row's LSE is its head's sink logit")
    else:
        assert np.isneginf(got["lse"][empty]).all(), (kernel, "an empty row's LSE is not -inf")
    assert np.isfinite(got["out"][~empty]).all() and np.isfinite(got["lse"][~empty]).all(), \
        (kernel, "a row that sees keys is not finite")
    exact_out, exact_lse = reference_forward(desc, args)
    low_out, low_lse = reference_forward(desc, args, compute="f32", emulate=True, out_dtype=desc.out_dtype)
    errors = {"out": max_abs_error(got["out"], exact_out), "out_lowp_ref": max_abs_error(low_out, exact_out),
              "lse": max_abs_error(got["lse"], _lse_rows(desc, host_f64(exact_lse))),
              "lse_lowp_ref": max_abs_error(low_lse, exact_lse), "empty_rows": int(empty.sum())}
    assert within_tolerance(errors["out"], errors["out_lowp_ref"], EPSILON[desc.out_dtype]), (kernel, errors)
    assert within_tolerance(errors["lse"], errors["lse_lowp_ref"], LSE_EPSILON), (kernel, errors)
    return errors


@_timeout
@pytest.mark.parametrize("case", list(EMPTY_CASES), ids=list(EMPTY_CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_with_no_visible_key_give_zero_and_minus_inf(backend, case):
    device = _gpu()
    desc, lengths = EMPTY_CASES[case]
    plan = _plan(desc, backend, device)
    check_empty_rows(plan, _host_inputs(desc, seed=41, lengths=lengths))


@_timeout
@pytest.mark.parametrize("case", EMPTY_BACKWARD)
@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
def test_rows_with_no_visible_key_get_zero_gradients(backend, case):
    """dq of an empty row is exactly 0 (poisoned first), nothing is NaN, keys no row sees get dk = dv
    = 0, and the gradients meet the tolerance rule (support.check_backward)."""
    device = _gpu()
    forward, lengths = EMPTY_CASES[case]
    desc = forward.replace(direction="backward", return_lse=False)
    plan = _plan(desc, backend, device)
    host_args = _host_inputs(desc, seed=42, lengths=lengths)
    args = _on(device, host_args)
    forward_args = {k: v for k, v in args.items() if k != "dout"}
    out, lse = reference_forward(forward_descriptor(desc), forward_args, out_dtype=desc.out_dtype)
    args["out"], args["lse"] = out, lse
    assert np.isneginf(_lse_rows(desc, host_f64(lse))[empty_rows(desc, host_args)]).all()
    grads = {name: host_f64(t) for name, t in run_backward_poisoned(plan, args).items() if t is not None}
    kernel = plan.sku.kernel
    for name, values in grads.items():
        assert np.isfinite(values).all(), (kernel, name, f"{int((~np.isfinite(values)).sum())} non-finite")
    empty = empty_rows(desc, host_args)
    assert (grads["dq"][empty] == 0).all(), (kernel, "dq of a row with no visible key is not 0")
    unseen = unseen_keys(desc, host_args)
    assert (grads["dk"][unseen] == 0).all() and (grads["dv"][unseen] == 0).all(), \
        (kernel, "dk / dv of a key no row sees is not 0")
    check_backward(desc, backend, plan=plan, args=args)
