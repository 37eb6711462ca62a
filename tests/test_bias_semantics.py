"""The additive score bias (`bias=True`, a `[batch or 1, heads_q or 1, seqlen_q, seqlen_kv]` array
added to the scores before masking) on the reference: it reproduces ALiBi when it holds ALiBi's
distance term, broadcasts over dims of size 1, masks with -inf, and is checked like any argument."""

from __future__ import annotations

import numpy as np
import pytest

from attnplan import AttentionDescriptor, InvalidArguments, InvalidDescriptor, Plan, explain
from attnplan.accuracy import host_f64
from attnplan.device import as_device
from attnplan.masking import alignment_offset
from attnplan.problems import random_inputs

CPU = as_device("cpu")


def _desc(**fields):
    base = dict(batch=2, seqlen_q=7, seqlen_kv=11, heads_q=4, heads_kv=2, head_dim=16, dtype="f64", causal=True,
                return_lse=True)
    return AttentionDescriptor(**{**base, **fields})


def _plan(desc):
    return Plan.select(desc, CPU, prefer="reference", restrict=True)


def _alibi_as_bias(desc, slopes):
    rows, cols = np.arange(desc.seqlen_q)[:, None], np.arange(desc.seqlen_kv)[None, :]
    distance = np.abs(rows + alignment_offset(desc, desc.seqlen_q, desc.seqlen_kv) - cols)
    return np.broadcast_to(-slopes[None, :, None, None] * distance, (desc.batch, desc.heads_q) + distance.shape).copy()


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_bias_holding_alibis_distance_term_is_alibi(direction):
    alibi = _desc(alibi=True, direction=direction, return_lse=direction == "forward")
    args = random_inputs(alibi, CPU, seed=2)
    if direction == "backward":
        forward = _plan(alibi.replace(direction="forward", return_lse=True)).run(
            **{k: v for k, v in args.items() if k != "dout"})
        args.update(out=forward.out, lse=forward.lse)
    with_bias = alibi.replace(alibi=False, bias=True)
    bias_args = {k: v for k, v in args.items() if k != "alibi_slopes"}
    bias_args["bias"] = _alibi_as_bias(alibi, args["alibi_slopes"].astype(np.float64))
    for want, got in zip(_plan(alibi).run(**args), _plan(with_bias).run(**bias_args)):
        np.testing.assert_allclose(host_f64(got), host_f64(want), rtol=1e-12, atol=1e-12)


def test_bias_broadcasts_over_batch_and_heads():
    desc = _desc(bias=True)
    args = random_inputs(desc, CPU, seed=3)
    for shape in ((1, desc.heads_q), (desc.batch, 1), (1, 1)):
        small = np.random.default_rng(4).standard_normal(shape + (desc.seqlen_q, desc.seqlen_kv))
        full = np.broadcast_to(small, args["bias"].shape).copy()
        got = _plan(desc).run(**dict(args, bias=small))
        want = _plan(desc).run(**dict(args, bias=full))
        np.testing.assert_array_equal(host_f64(got.out), host_f64(want.out))


def test_minus_infinity_in_the_bias_masks():
    desc = _desc(bias=True, causal=False)
    args = random_inputs(desc, CPU, seed=5)
    rows, cols = np.arange(desc.seqlen_q)[:, None], np.arange(desc.seqlen_kv)[None, :]
    causal_bias = np.where(cols <= rows + desc.seqlen_kv - desc.seqlen_q, 0.0, -np.inf)
    got = _plan(desc).run(**dict(args, bias=np.broadcast_to(causal_bias, args["bias"].shape).copy()))
    plain = _desc(causal=True)
    want = _plan(plain).run(**{k: v for k, v in args.items() if k != "bias"})
    np.testing.assert_allclose(host_f64(got.out), host_f64(want.out), rtol=1e-12, atol=1e-12)


def test_bias_arguments_are_checked():
    desc = _desc(bias=True)
    args = random_inputs(desc, CPU, seed=6)
    plan = _plan(desc)
    with pytest.raises(InvalidArguments, match="bias.*required"):
        plan.run(**{k: v for k, v in args.items() if k != "bias"})
    with pytest.raises(InvalidArguments, match="bias.*shape"):
        plan.run(**dict(args, bias=args["bias"][:, :, :-1]))
    with pytest.raises(InvalidArguments, match="bias.*shape"):
        plan.run(**dict(args, bias=args["bias"][:, :3]))                     # 3 heads: neither 1 nor 4
    with pytest.raises(InvalidArguments, match="bias.*dtype"):
        plan.run(**dict(args, bias=args["bias"].astype(np.float32)))
    no_bias = _desc()
    with pytest.raises(InvalidArguments, match="bias.*does not use it"):
        _plan(no_bias).run(**random_inputs(no_bias, CPU, seed=6), bias=args["bias"])


@pytest.mark.parametrize("fields", [dict(layout="thd"), dict(dtype="e4m3")])
def test_bias_with_per_sequence_layouts_or_fp8_is_an_invalid_descriptor(fields):
    with pytest.raises(InvalidDescriptor, match="bias"):
        _desc(bias=True, **fields)


def test_our_kernels_say_they_have_no_bias():
    verdict = next(v for v in explain(_desc(bias=True, dtype="bf16"), "sm_90") if v.backend == "nvrtc.sm80")
    assert not verdict.accepted and any("additive bias" in r for r in verdict.reasons)
